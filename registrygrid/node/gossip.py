"""Gossip: publish this node's changes in batches; validate, queue and ingest peers' batches.

Out: the group committer calls ``on_commit`` after each durable batch; its
``local_envelopes`` (never remote ones: GossipSub forwards those itself) go
to a bounded outbox, and ``publish_loop`` packs them with
``protocol.gossip.Batcher`` (flush at 512 KiB or 5 ms) onto the topic.

In: ``validate`` runs inside py-libp2p's receive path, before a message is
delivered or forwarded: the validation budget of its origin, decoding,
dedupe (a bounded seen-set of change IDs, then the store), every new
envelope's signature (the rules and their state are sans-IO, in
protocol/gossip_intake.py ``GossipIntake``; this module gives them the
time, the store and the libp2p side), then the policy
guard (``node/guard.py``) on the envelopes it just opened: a message holding
a change its registry's caps refuse is rejected (counted against the origin
as refused changes, not struck); a message the origin's, an org's or a
registry's rate budget has no room for is dropped whole (counted; the origin
is struck if it overflowed its own budget; anti-entropy brings the changes
later, paced by the same org budget). Invalid
messages are rejected and strike their origin (``PeerTable.strike``: banned
past a threshold); a message holding only known changes is a replay:
rejected, not forwarded, not held against anyone. ``drain`` only moves
accepted messages into per-peer bounded queues (nothing slow there: py-libp2p
drops what its 32-slot channel cannot hold); ``ingest_loop`` takes from the
queues round-robin, so a flooding peer cannot starve the others, and hands
batches to ``node.submit`` as ``Remote(wire, peer, preverified=True)``.
A change that comes back ``pending`` means gossip lost its predecessor: the
federation syncs with that peer soon. Anything dropped here for lack of room
is counted and also triggers a sync: anti-entropy repairs every loss.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from registrygrid.engine.ops import Committed, IngestResult, Remote
from registrygrid.errors import RegistryError
from registrygrid.node.guard import PeerGuard
from registrygrid.node.transport import GossipMessage, P2PError, Transport
from registrygrid.protocol.gossip import Batcher, decode_batch
from registrygrid.protocol.gossip_intake import (
    PEER_QUEUE_BYTES,
    SEEN_CAPACITY,
    TOTAL_QUEUE_BYTES,
    Duplicate,
    GossipIntake,
    Invalid,
    Throttled,
)
from registrygrid.storage import changes

if TYPE_CHECKING:
    from registrygrid.node.node import Node

log = logging.getLogger("registrygrid.federation.gossip")

MiB = 2**20

# Local envelopes waiting to be published. The committer's hook cannot wait,
# so this is where a stalled publish (py-libp2p backpressure) backs up; 16 MiB
# is ~20k changes, several seconds of the fastest bulk import. Beyond it the
# change is not gossiped; peers get it by anti-entropy.
OUTBOX_BYTES = 16 * MiB
# Envelopes per node.submit from gossip: the committer's own batch cap
# (node/committer.MAX_BATCH_OPS), so a gossip burst is one transaction ...
INGEST_BATCH_OPS = 2000
# ... and queued messages taken per pass: about that many envelopes at
# 750-1000 B each, taken round-robin across origins.
INGEST_BATCH_BYTES = 2 * MiB
class GossipService:
    def __init__(self, node: Node, host: Transport, topic: str, *, metrics: Counter[str],
                 strike: Callable[[str, str], None], blocked: Callable[[str], bool],
                 on_gap: Callable[[str], None], on_rejected: Callable[[str, int], None],
                 seen_capacity: int = SEEN_CAPACITY, peer_queue_bytes: int = PEER_QUEUE_BYTES,
                 total_queue_bytes: int = TOTAL_QUEUE_BYTES, guard: PeerGuard | None = None,
                 broadcast: Callable[[bytes], bool] = lambda wire: True) -> None:
        self.node = node
        # Whether a local change may go on the federation-wide topic: a
        # private registry's changes never do (they travel by sync only, to
        # the orgs that may read them).
        self._broadcast = broadcast
        self.host = host
        self.topic = topic
        self.metrics = metrics
        self._strike = strike
        self._blocked = blocked
        self._on_gap = on_gap
        self._on_rejected = on_rejected
        # The receiving side's rules and state, sans-IO: budgets, seen-set, queues.
        self.intake = GossipIntake(seen_capacity=seen_capacity, peer_queue_bytes=peer_queue_bytes,
                                   total_queue_bytes=total_queue_bytes)
        self._inbound_ready = trio.Event()
        self._outbox: deque[bytes] = deque()
        self._outbox_bytes = 0
        self._outbox_ready = trio.Event()
        self._guard = guard

    # ---- in: validation (py-libp2p's receive path; synchronous, bounded work) ----

    def validate(self, origin: str, data: bytes) -> bool:
        if origin == self.host.peer_id:
            return True  # our own publish: our envelopes, signed by us a moment ago
        metrics = self.metrics
        metrics["gossip.received"] += 1
        if self._blocked(origin):
            metrics["gossip.rejected_blocked"] += 1
            return False
        started = time.perf_counter()
        try:
            return self._check(origin, data, started)
        finally:
            self.intake.budget(origin, started).spend(time.perf_counter() - started)

    def _check(self, origin: str, data: bytes, now: float) -> bool:
        metrics = self.metrics
        verdict = self.intake.check(origin, data, now, self._stored)
        if isinstance(verdict, Throttled):
            metrics["gossip.throttled"] += 1
            self._on_gap(origin)
            return False
        if isinstance(verdict, Duplicate):
            metrics["gossip.duplicate"] += 1
            return False
        if isinstance(verdict, Invalid):
            exc = verdict.error
            metrics["gossip.invalid"] += 1
            metrics[f"gossip.invalid.{exc.code}"] += 1
            self._strike(origin, f"gossip: {exc.code}: {exc.message}"[:200])
            return False
        if self._guard is not None:
            judged = self._guard.gossip(origin, verdict.envelopes, trio.current_time())
            if not judged.accept:
                if judged.strike:
                    self._strike(origin, f"gossip: flooding: over its rate budget ({', '.join(judged.short)})")
                return False
        self.intake.accept(verdict)
        metrics["gossip.accepted"] += 1
        return True

    def _stored(self, ids: Sequence[bytes]) -> set[bytes]:
        """Which of ``ids`` the store holds (an LMDB get each: microseconds)."""
        store = self.node.store
        with store.read() as txn:
            return {cid for cid in ids if changes.has(store, txn, cid)}

    # ---- in: drain and ingest ----

    async def drain(self, subscription: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        """Move accepted messages into the per-peer queues. Nothing slow here."""
        async for message in subscription:
            if self.intake.queue(message.from_peer, message.data):
                self._inbound_ready.set()
            else:
                self.metrics["gossip.dropped_queue_full"] += 1
                self._on_gap(message.from_peer)

    async def ingest_loop(self) -> None:
        while True:
            if not self.intake.inbound.queues:
                await self._inbound_ready.wait()
                self._inbound_ready = trio.Event()
                continue
            taken = self.intake.take(INGEST_BATCH_BYTES)
            ops: list[Remote] = []
            for peer, data in taken:
                try:
                    wires = decode_batch(data)  # validated already: cannot fail, but stay typed
                except RegistryError:
                    continue
                ops.extend(Remote(wire, peer, preverified=True) for wire in wires)
            if ops:
                await self._submit(ops)

    async def _submit(self, ops: list[Remote]) -> None:
        for start in range(0, len(ops), INGEST_BATCH_OPS):
            chunk = ops[start:start + INGEST_BATCH_OPS]
            try:
                outcomes = await self.node.submit(chunk)
            except Exception as exc:  # the node is stopping, or storage failed: sync repairs it later
                self.metrics["gossip.ingest_failed"] += len(chunk)
                log.warning("gossip: could not apply %d changes: %r", len(chunk), exc)
                return
            gaps: set[str] = set()
            rejected: Counter[str] = Counter()
            for op, outcome in zip(chunk, outcomes, strict=True):
                status = outcome.status if isinstance(outcome, IngestResult) else "rejected"
                self.metrics[f"gossip.ingest.{status}"] += 1
                if status == "pending":
                    gaps.add(op.peer)
                elif status == "rejected":
                    rejected[op.peer] += 1
            for peer in gaps:
                self._on_gap(peer)
            for peer, count in rejected.items():
                self._on_rejected(peer, count)

    # ---- out: publish ----

    def on_commit(self, committed: Committed) -> None:
        """Committer hook (trio thread, must not wait): queue this node's own new changes."""
        for wire in committed.local_envelopes:
            if not self._broadcast(wire):
                self.metrics["gossip.private_kept"] += 1
                continue
            if self._outbox_bytes + len(wire) > OUTBOX_BYTES:
                self.metrics["gossip.publish_dropped"] += 1
                continue
            self._outbox.append(wire)
            self._outbox_bytes += len(wire)
        if committed.local_envelopes:
            self._outbox_ready.set()

    async def publish_loop(self) -> None:
        batcher = Batcher()
        while True:
            if not self._outbox:
                deadline = batcher.deadline()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    await self._outbox_ready.wait()
                self._outbox_ready = trio.Event()
            now = trio.current_time()
            ready: list[bytes] = []
            while self._outbox:
                wire = self._outbox.popleft()
                self._outbox_bytes -= len(wire)
                ready += batcher.add(wire, now)
            due = batcher.due(now)
            if due is not None:
                ready.append(due)
            for message in ready:
                await self._publish(message)

    async def _publish(self, message: bytes) -> None:
        try:
            await self.host.publish(self.topic, message)
        except P2PError as exc:
            self.metrics["gossip.publish_failed"] += 1
            log.warning("gossip: publish failed: %s", exc)
            return
        self.metrics["gossip.published"] += 1

    def queued(self) -> dict[str, int]:
        return {"inbound_bytes": self.intake.inbound.total, "outbox_bytes": self._outbox_bytes,
                "seen": len(self.intake.seen)}
