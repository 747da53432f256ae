"""What a node does with a gossip message before its engine sees it (sans-IO).

``GossipIntake`` holds the receiving side's state and rules: a validation
budget per origin (a token bucket of seconds spent validating), a bounded
set of change IDs seen, and per-origin bounded queues taken round-robin.
``check`` judges one message: throttled (its origin spent its budget),
a duplicate (nothing new in it), invalid (it does not decode, or a new
change's signature fails: the typed error says which), or fresh (the new
changes, opened and verified). The caller applies its own policy guard to
a fresh message, then ``accept``s it (its IDs become seen) and ``queue``s
it; ``take`` hands queued messages to the engine, one per origin per turn,
so a flooding origin cannot starve the others.

No clock and no store here: the caller passes the time (trio's, or the
simulator's virtual time), the seconds a check cost, and a function that
says which change IDs its store holds. node/gossip.py runs it inside
py-libp2p's receive path; the simulator runs it over an in-memory network.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from registrygrid.errors import RegistryError
from registrygrid.protocol.envelope import Envelope, claimed_id, open_envelope
from registrygrid.protocol.gossip import decode_batch

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
# Validation runs on the node's one trio thread (py-libp2p calls validators
# synchronously), at ~50-100 us per new envelope (Ed25519 verify, decode).
# One origin may use at most half of that thread on average, with a burst of
# one second: an honest bulk import (~3k changes/s, ~0.25 s/s) fits, a
# hostile flood of well-signed envelopes cannot stall everyone else. Over
# budget, a message is ignored (not penalised) and the origin is synced
# with instead: anti-entropy pulls at the engine's pace.
VALIDATION_SHARE = 0.5
VALIDATION_BURST_S = 1.0
# Origins whose budgets are remembered; past it all are forgotten at once
# (origins come and go; a forgotten one starts with a full bucket).
MAX_BUDGETS = 4096


@dataclass
class ValidationBudget:
    """Token bucket of validation seconds for one origin."""

    tokens: float = VALIDATION_BURST_S
    at: float = 0.0
    share: float = VALIDATION_SHARE
    burst: float = VALIDATION_BURST_S

    def allows(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.share)
        self.at = now
        return self.tokens > 0

    def spend(self, seconds: float) -> None:
        self.tokens -= seconds


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
class InboundQueues:
    """Accepted messages waiting for the engine, one bounded queue per origin."""

    peer_cap: int = PEER_QUEUE_BYTES
    total_cap: int = TOTAL_QUEUE_BYTES
    queues: dict[str, deque[bytes]] = field(default_factory=dict)
    sizes: Counter[str] = field(default_factory=Counter)
    total: int = 0

    def put(self, peer: str, data: bytes) -> bool:
        """Queue ``data``; False (nothing queued) past the origin's or the total cap."""
        if self.sizes[peer] + len(data) > self.peer_cap or self.total + len(data) > self.total_cap:
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


# ---- verdicts of ``check``

@dataclass(frozen=True)
class Throttled:
    """The origin spent its validation budget: ignore it (not its fault) and sync with it instead."""


@dataclass(frozen=True)
class Duplicate:
    """Nothing in the message is new: a replay, not forwarded, held against no one."""


@dataclass(frozen=True)
class Invalid:
    error: RegistryError  # why: it does not decode, or a signature fails (strike the origin)


@dataclass(frozen=True)
class Fresh:
    ids: list[bytes]  # the new changes' IDs, to ``accept`` once the caller's policy lets it in
    envelopes: list[Envelope]  # those changes, opened and their signatures verified


Verdict = Throttled | Duplicate | Invalid | Fresh


class GossipIntake:
    """The receiving side of gossip on one node (see the module docstring)."""

    def __init__(self, *, seen_capacity: int = SEEN_CAPACITY, peer_queue_bytes: int = PEER_QUEUE_BYTES,
                 total_queue_bytes: int = TOTAL_QUEUE_BYTES, share: float = VALIDATION_SHARE,
                 burst: float = VALIDATION_BURST_S) -> None:
        self.seen = SeenSet(seen_capacity)
        self.inbound = InboundQueues(peer_queue_bytes, total_queue_bytes)
        self._share, self._burst = share, burst
        self._budgets: dict[str, ValidationBudget] = {}

    def budget(self, origin: str, now: float) -> ValidationBudget:
        budget = self._budgets.get(origin)
        if budget is None:
            if len(self._budgets) >= MAX_BUDGETS:
                self._budgets.clear()
            budget = self._budgets[origin] = ValidationBudget(self._burst, now, self._share, self._burst)
        return budget

    def check(self, origin: str, data: bytes, now: float,
              stored: Callable[[Sequence[bytes]], set[bytes]]) -> Verdict:
        """Judge one message from ``origin`` at time ``now``. ``stored(ids)``
        names which of ``ids`` the store holds (asked only for IDs the seen-set
        misses). The caller charges what the check cost (``budget().spend``)."""
        if not self.budget(origin, now).allows(now):
            return Throttled()
        try:
            wires = decode_batch(data)
            fresh = [(cid, wire) for wire in wires if (cid := claimed_id(wire)) not in self.seen]
            if fresh:
                held = stored([cid for cid, _ in fresh])
                for cid in held:
                    self.seen.add(cid)
                fresh = [(cid, wire) for cid, wire in fresh if cid not in held]
            if not fresh:
                return Duplicate()
            envelopes = [open_envelope(wire, verify=True) for _, wire in fresh]
        except RegistryError as exc:
            return Invalid(exc)
        return Fresh([cid for cid, _ in fresh], envelopes)

    def accept(self, verdict: Fresh) -> None:
        """The message passed the caller's policy too: its changes are seen."""
        for cid in verdict.ids:
            self.seen.add(cid)

    def queue(self, origin: str, data: bytes) -> bool:
        return self.inbound.put(origin, data)

    def take(self, max_bytes: int) -> list[tuple[str, bytes]]:
        return self.inbound.take(max_bytes)
