"""Anti-entropy over libp2p request/response: the IO side of ``protocol.sync``.

Responder: ``handle`` decodes nothing itself; it runs ``answer_sync`` (which
reads LMDB) on a worker thread, at most ``max_inbound`` at once. A request
beyond that is refused at once as busy rather than queued: a queued request
would hold a stream and a host slot for nothing, and the puller retries on
its next round anyway.

Puller: ``pull(peer)`` runs one session: send our version vector, apply the
envelopes that come back through ``node.submit`` (the engine's one write
path), ask again until the responder has nothing more. Rounds are pipelined:
the next is asked for while this one is verified and committed. The store's
vector is the cursor, so a session cut at any point (timeout, disconnect,
shutdown) resumes from what was durably applied, with no state kept on either
side. A pass that applies nothing new ends the session (a change the engine
keeps refusing must not make us ask forever); the next scheduled session
tries again.

Policy guard (``node/guard.py``): before a response's envelopes are
submitted, changes a registry's caps refuse are dropped (counted as refused),
and the rest wait for room in the responder's and their orgs' budgets: the
puller asked for them, so it slows down rather than dropping. Envelopes whose
budgets have room go first (one author's changes keep their order); a
response that would wait more than ``GuardLimits.sync_max_wait`` in all ends
the session, and the next one resumes from the store's vector. The responder
answers a peer at most at its serve budget (requests and bytes per second);
beyond it a request is refused at once as rate-limited, like a busy one.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from registrygrid.engine.ops import IngestResult, LinkPastGone, Remote
from registrygrid.engine.subjects import ServedTo
from registrygrid.errors import (
    MalformedInput,
    PolicyDenied,
    RateLimited,
    RegistryError,
    TooLarge,
    Unavailable,
)
from registrygrid.node.guard import PeerGuard
from registrygrid.node.transport import P2PError, Transport
from registrygrid.protocol.sync import SYNC_PROTOCOL_ID, answer_sync
from registrygrid.protocol.sync_session import (
    Action,
    Applied,
    Apply,
    Finish,
    LinkGone,
    PassApplied,
    Response,
    SendRequest,
    SessionReport,
    Start,
    SyncSession,
)

if TYPE_CHECKING:
    from registrygrid.node.node import Node

log = logging.getLogger("registrygrid.federation.sync")

# Concurrent sync requests we answer. Each holds a worker thread reading LMDB
# and builds a response of up to 2 MiB (8 MiB if asked); 4 keeps a 2-core node
# serving its own writers while peers catch up, and bounds response memory to
# 4 x 8 MiB. trio's default thread limit is 40, shared with the committer.
MAX_INBOUND_SYNCS = 4
# Envelopes per node.submit: the committer's batch cap (node/committer.py), so
# a 2 MiB response (~2,700 envelopes of ~750 B) is two transactions and a
# local write never waits behind a huge one. (Verifying the next chunk on a
# worker thread while this one commits was tried: no measurable gain here,
# the GIL is the shared resource.)
APPLY_CHUNK = 2000
# One sync round trip: an 8 MiB response at 10 Mbit/s is ~7 s; p2p's request
# timeout default is 30 s for the same reason.
REQUEST_TIMEOUT_S = 30.0
class SyncFailed(Exception):
    """A session ended early (the peer misbehaved, went away or refused)."""


class SyncService:
    def __init__(self, node: Node, host: Transport, federation: str, *, metrics: Counter[str],
                 strike: Callable[[str, str], None], blocked: Callable[[str], bool],
                 on_rejected: Callable[[str, int], None], max_inbound: int = MAX_INBOUND_SYNCS,
                 request_timeout: float = REQUEST_TIMEOUT_S, guard: PeerGuard | None = None,
                 org_of: Callable[[str], str | None] = lambda peer: None) -> None:
        self.node = node
        # The org a peer's node speaks for (admitted at the hello): private
        # registries are served only to the orgs that may read them.
        self._org_of = org_of
        self.host = host
        self.federation = federation
        self.metrics = metrics
        self._strike = strike
        self._blocked = blocked
        self._on_rejected = on_rejected
        self._inbound = trio.CapacityLimiter(max_inbound)
        self.request_timeout = request_timeout
        self._guard = guard

    # ---- responder ----

    async def handle(self, peer: str, request: bytes) -> bytes:
        if self._blocked(peer):
            self.metrics["sync.refused_blocked"] += 1
            raise PolicyDenied("this node does not serve you")
        if self._inbound.available_tokens < 1:
            self.metrics["sync.refused_busy"] += 1
            raise Unavailable("busy: too many sync requests; retry later")
        guard = self._guard
        if guard is not None and not guard.may_serve(peer, trio.current_time()):
            raise RateLimited("over this node's sync budget for your peer; retry later")
        reader = self._org_of(peer)
        if reader is None:  # not admitted: _blocked refused it above; never serve private data regardless
            raise PolicyDenied("this node does not serve you")
        # Built-in records that speak of a registry the reader's org may not
        # read (a private one's equivocation reports, erasure notices) are
        # kept from it: engine/subjects.py.
        answer = functools.partial(answer_sync, request, ServedTo(self.node.engine, reader),
                                   federation=self.federation, reader=reader)
        try:
            response = await trio.to_thread.run_sync(answer, limiter=self._inbound)
        except (MalformedInput, TooLarge) as exc:
            self.metrics["sync.invalid_request"] += 1
            self._strike(peer, f"sync request: {exc.code}: {exc.message}"[:200])
            raise
        except RegistryError:
            self.metrics["sync.refused"] += 1
            raise
        self.metrics["sync.served"] += 1
        if guard is not None:
            guard.served(peer, len(response), trio.current_time())
        return response

    # ---- puller ----

    async def pull(self, peer: str) -> SessionReport:
        """One session with ``peer`` (protocol/sync_session.py decides every
        step; this executes them); raises SyncFailed if it could not finish.

        Each pass is pipelined: the next request goes out while the batch
        before it is verified and committed, so the responder's work and the
        transfer overlap the engine's. Between passes the store's vector is
        read again, and the session decides whether to go on.
        """
        engine = self.node.engine
        self.metrics["sync.sessions"] += 1
        session = SyncSession(self.federation)
        vector = await trio.to_thread.run_sync(engine.replicated_vector)
        # Head tags with the first request: a peer holding another branch of
        # a forked chain of the same length answers with its change there.
        # And the other branch's changes this node's evidence names but
        # lacks, by ID: its vector can't ask for them.
        heads = await trio.to_thread.run_sync(engine.head_tags, vector)
        actions = session.handle(Start(vector, heads, await trio.to_thread.run_sync(engine.wanted)))
        while True:
            await self._pass(peer, session, actions)
            actions = session.handle(PassApplied(await trio.to_thread.run_sync(engine.replicated_vector)))
            if isinstance(actions[-1], Finish):
                break
        if session.report.stalled:
            self.metrics["sync.stalled"] += 1
        self.metrics["sync.completed"] += 1
        if engine.recovering is not None and not engine.recovering.get("synced_ms"):
            await trio.to_thread.run_sync(engine.note_recovery_synced)
        return session.report

    async def _pass(self, peer: str, session: SyncSession, first: list[Action]) -> None:
        """Execute one pass's actions: requests on one task, batches applied
        on this one, until the session ends the pass and every batch is in."""
        # Unbuffered: at most one response waits while one is applied, so a
        # session holds two responses (<= 2 x 9 MiB, P2PHost's cap) at most.
        batches: trio.MemorySendChannel[list[bytes] | LinkGone]
        batches, to_apply = trio.open_memory_channel[list[bytes] | LinkGone](0)
        failure: SyncFailed | None = None

        async def fetch() -> None:
            nonlocal failure
            actions = first
            async with batches:
                while actions:
                    action, actions = actions[0], actions[1:]
                    if isinstance(action, Apply):
                        await batches.send(action.envelopes)
                    elif isinstance(action, LinkGone):  # after the batch before it, on the same queue
                        await batches.send(action)
                    elif isinstance(action, SendRequest):
                        try:
                            actions = [*actions, *await self._round(peer, session, action)]
                        except SyncFailed as exc:
                            failure = exc
                            return
                    # EndPass: nothing more to send; the batches drain below

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            async for item in to_apply:
                try:
                    if isinstance(item, LinkGone):
                        session.handle(await self._link_gone(peer, item))
                    else:
                        session.handle(await self._apply(peer, item))
                except SyncFailed as exc:
                    failure = exc
                    nursery.cancel_scope.cancel()
                    break
        if failure is not None:  # raised out here, not wrapped in the nursery's exception group
            raise failure

    async def _round(self, peer: str, session: SyncSession, request: SendRequest) -> list[Action]:
        try:
            data = await self.host.request(peer, SYNC_PROTOCOL_ID, request.data, timeout=self.request_timeout)
        except P2PError as exc:
            self.metrics["sync.failed"] += 1
            raise SyncFailed(f"sync with {peer}: {exc.code}: {exc.message}") from exc
        try:
            actions = session.handle(Response(data))
        except RegistryError as exc:
            self.metrics["sync.invalid_response"] += 1
            self._strike(peer, f"sync response: {exc.code}: {exc.message}"[:200])
            raise SyncFailed(f"sync with {peer}: bad response: {exc.message}") from exc
        self.metrics["sync.rounds"] += 1
        return actions

    async def _apply(self, peer: str, envelopes: list[bytes]) -> Applied:
        """Apply a batch through the policy guard and the committer; its outcomes."""
        counts: Counter[str] = Counter()
        guard = self._guard
        if guard is None:
            await self._submit(peer, envelopes, counts)
            return _applied(counts)
        charges = guard.charges(envelopes, trio.current_time())
        pending = list(zip(envelopes, charges, strict=True))
        waited = 0.0
        while pending:
            asked = trio.current_time()
            admission = guard.admit_sync(peer, [charge for _, charge in pending], asked)
            if admission.admitted:
                chosen = set(admission.admitted)
                await self._submit(peer, [pending[i][0] for i in admission.admitted], counts)
                pending = [item for i, item in enumerate(pending) if i not in chosen]
            if not pending:
                return _applied(counts)
            # Wait until the rest fits (or a burst of it does), not just the
            # few changes that trickled in meanwhile: throttled changes go
            # in batches, each one transaction, not one commit per refill.
            wait = admission.wait - (trio.current_time() - asked)
            if wait <= 0 and admission.admitted:
                continue
            if waited + wait > guard.limits.sync_max_wait:
                self.metrics["guard.sync_deferred"] += 1
                raise SyncFailed(f"sync with {peer}: {len(pending)} changes wait for rate budget; "
                                 f"the next session takes them")
            wait = max(wait, 0.001)  # float rounding must not spin
            self.metrics["guard.sync_waits"] += 1
            self.metrics["guard.sync_wait_ms"] += round(wait * 1000)
            await trio.sleep(wait)
            waited += wait
        return _applied(counts)

    async def _link_gone(self, peer: str, gone: LinkGone) -> Applied:
        """Link past the places ``peer`` says are gone where it is, where
        this node's chains stop inside them (engine/gone.py); what that
        lets go on counts as applied. Not rate-charged: a run is a few key
        writes a place, and a response names at most MAX_GONE runs."""
        try:
            outcomes = await self.node.submit([LinkPastGone(place, peer) for place in gone.places])
        except RegistryError as exc:  # the node is stopping, or storage failed
            raise SyncFailed(f"could not link past what {peer} says is gone: {exc.message}") from exc
        for outcome in outcomes:
            self.metrics[f"sync.gone.{getattr(outcome, 'status', 'rejected')}"] += 1
        return Applied.of(outcomes)

    async def _submit(self, peer: str, envelopes: list[bytes], counts: Counter[str]) -> None:
        for start in range(0, len(envelopes), APPLY_CHUNK):
            chunk = envelopes[start:start + APPLY_CHUNK]
            try:
                outcomes = await self.node.submit([Remote(wire, peer) for wire in chunk])
            except RegistryError as exc:  # the node is stopping, or storage failed
                raise SyncFailed(f"could not apply changes from {peer}: {exc.message}") from exc
            self._count(peer, outcomes, counts)

    def _count(self, peer: str, outcomes: list[Any], counts: Counter[str]) -> None:
        for outcome in outcomes:
            self.metrics[f"sync.ingest.{outcome.status if isinstance(outcome, IngestResult) else 'rejected'}"] += 1
        applied = Applied.of(outcomes)
        counts.update(applied=applied.applied, duplicate=applied.duplicate, pending=applied.pending,
                      rejected=applied.rejected)
        self._on_rejected(peer, applied.rejected)


def _applied(counts: Counter[str]) -> Applied:
    return Applied(counts["applied"], counts["duplicate"], counts["pending"], counts["rejected"])
