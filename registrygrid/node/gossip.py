"""Gossip: publish this node's changes in batches; validate, queue and ingest peers' batches.

Out: the group committer calls ``on_commit`` after each durable batch; its
``local_envelopes`` (never remote ones: GossipSub forwards those itself) go
to a bounded outbox, and ``publish_loop`` packs them with
``protocol.gossip.Batcher`` (flush at 512 KiB or 5 ms) onto the topic.

In: ``validate`` runs inside py-libp2p's receive path, before a message is
delivered or forwarded: size cap, decoding, dedupe (a bounded seen-set of
change IDs, then the store), every new envelope's signature, then the policy
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
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from registrygrid.engine.ops import Committed, IngestResult, Remote
from registrygrid.errors import RegistryError
from registrygrid.node.guard import PeerGuard
from registrygrid.node.p2p import GossipMessage, P2PError, P2PHost
from registrygrid.protocol.envelope import claimed_id, open_envelope
from registrygrid.storage import changes
from registrygrid.protocol.gossip import Batcher, decode_batch

if TYPE_CHECKING:
    from registrygrid.node.node import Node

log = logging.getLogger("registrygrid.federation.gossip")

MiB = 2**20

# Change IDs remembered as seen (validated or stored). 2**16 IDs cost about
# 8 MB (36-byte CID + dict overhead) and cover the last minute of a busy
# federation at 1k changes/s; older replays are still caught by the store
# lookup that follows a seen-set miss.
SEEN_CAPACITY = 2**16
# Per-origin inbound queue: 8 full gossip batches (512 KiB each). At the
# engine's ingest rate (1-10k changes/s, ~750 B each) that is 0.5-5 s of work
# queued per peer; beyond it the peer's messages are dropped (and synced).
PEER_QUEUE_BYTES = 4 * MiB
# All peers together: 32 MiB of queued gossip, so 64 connected peers that all
# flood cannot hold more than this much of our memory.
TOTAL_QUEUE_BYTES = 32 * MiB
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
# Validation runs on the node's one trio thread (py-libp2p calls validators
# synchronously), at ~50-100 us per new envelope (Ed25519 verify, decode).
# One origin may use at most half of that thread on average, with a burst of
# one second: an honest bulk import (~3k changes/s, ~0.25 s/s) fits, a
# hostile flood of well-signed envelopes cannot stall everyone else. Over
# budget, a message is ignored (not penalised) and the origin is synced
# with instead: anti-entropy pulls at the engine's pace.
VALIDATION_SHARE = 0.5
VALIDATION_BURST_S = 1.0


@dataclass
class _Budget:
    """Token bucket of validation seconds for one origin."""

    tokens: float = VALIDATION_BURST_S
    at: float = 0.0

    def allows(self, now: float) -> bool:
        self.tokens = min(VALIDATION_BURST_S, self.tokens + (now - self.at) * VALIDATION_SHARE)
        self.at = now
        return self.tokens > 0


class SeenSet:
    """A bounded set of change IDs, oldest forgotten first."""

    def __init__(self, capacity: int = SEEN_CAPACITY) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, cid: bytes) -> bool:
        return cid in self._ids

    def add(self, cid: bytes) -> None:
        self._ids[cid] = None
        self._ids.move_to_end(cid)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


@dataclass
class _Inbound:
    """Accepted messages waiting for the engine, one queue per origin peer."""

    queues: dict[str, deque[bytes]] = field(default_factory=dict)
    sizes: Counter[str] = field(default_factory=Counter)
    total: int = 0

    def put(self, peer: str, data: bytes, peer_cap: int, total_cap: int) -> bool:
        if self.sizes[peer] + len(data) > peer_cap or self.total + len(data) > total_cap:
            return False
        self.queues.setdefault(peer, deque()).append(data)
        self.sizes[peer] += len(data)
        self.total += len(data)
        return True

    def take(self, max_bytes: int) -> list[tuple[str, bytes]]:
        """Round-robin: one message per peer per pass, until ``max_bytes`` (at least one message)."""
        out: list[tuple[str, bytes]] = []
        size = 0
        while self.queues and size < max_bytes:
            for peer in list(self.queues):
                queue = self.queues[peer]
                data = queue.popleft()
                self.sizes[peer] -= len(data)
                self.total -= len(data)
                if not queue:
                    del self.queues[peer]
                    del self.sizes[peer]
                out.append((peer, data))
                size += len(data)
                if size >= max_bytes:
                    break
        return out


class GossipService:
    def __init__(self, node: Node, host: P2PHost, topic: str, *, metrics: Counter[str],
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
        self.seen = SeenSet(seen_capacity)
        self._peer_queue_bytes = peer_queue_bytes
        self._total_queue_bytes = total_queue_bytes
        self._inbound = _Inbound()
        self._inbound_ready = trio.Event()
        self._outbox: deque[bytes] = deque()
        self._outbox_bytes = 0
        self._outbox_ready = trio.Event()
        self._budgets: dict[str, _Budget] = {}
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
        budget = self._budgets.get(origin)
        if budget is None:
            if len(self._budgets) >= 4096:  # origins come and go; forget them all now and then
                self._budgets.clear()
            budget = self._budgets[origin] = _Budget(at=started)
        if not budget.allows(started):
            metrics["gossip.throttled"] += 1
            self._on_gap(origin)
            return False
        try:
            return self._check(origin, data)
        finally:
            budget.tokens -= time.perf_counter() - started

    def _check(self, origin: str, data: bytes) -> bool:
        metrics = self.metrics
        try:
            wires = decode_batch(data)
            fresh = [(cid, wire) for wire in wires if (cid := claimed_id(wire)) not in self.seen]
            if fresh:
                fresh = self._not_stored(fresh)
            if not fresh:
                metrics["gossip.duplicate"] += 1
                return False
            envelopes = [open_envelope(wire, verify=True) for _, wire in fresh]
        except RegistryError as exc:
            metrics["gossip.invalid"] += 1
            metrics[f"gossip.invalid.{exc.code}"] += 1
            self._strike(origin, f"gossip: {exc.code}: {exc.message}"[:200])
            return False
        if self._guard is not None:
            verdict = self._guard.gossip(origin, envelopes, trio.current_time())
            if not verdict.accept:
                if verdict.refused:
                    self._on_rejected(origin, verdict.refused)
                if verdict.strike:
                    self._strike(origin, f"gossip: flooding: over its rate budget ({', '.join(verdict.short)})")
                return False
        for cid, _ in fresh:
            self.seen.add(cid)
        metrics["gossip.accepted"] += 1
        return True

    def _not_stored(self, fresh: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Drop changes the store already holds (an LMDB get each: microseconds)."""
        store = self.node.store
        with store.read() as txn:
            kept = []
            for cid, wire in fresh:
                if not changes.has(store, txn, cid):
                    kept.append((cid, wire))
                else:
                    self.seen.add(cid)
            return kept

    # ---- in: drain and ingest ----

    async def drain(self, subscription: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        """Move accepted messages into the per-peer queues. Nothing slow here."""
        async for message in subscription:
            if self._inbound.put(message.from_peer, message.data, self._peer_queue_bytes, self._total_queue_bytes):
                self._inbound_ready.set()
            else:
                self.metrics["gossip.dropped_queue_full"] += 1
                self._on_gap(message.from_peer)

    async def ingest_loop(self) -> None:
        while True:
            if not self._inbound.queues:
                await self._inbound_ready.wait()
                self._inbound_ready = trio.Event()
                continue
            taken = self._inbound.take(INGEST_BATCH_BYTES)
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
        return {"inbound_bytes": self._inbound.total, "outbox_bytes": self._outbox_bytes, "seen": len(self.seen)}
