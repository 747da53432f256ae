"""The policy guard between peers, sans-IO: rate budgets and per-registry caps.

Every remote change reaches the engine through gossip or sync. Before it is
submitted, the guard asks one question: **is there budget for it now?**
Token buckets, each on changes/s *and* bytes/s with a burst, per peer and per
org (the orgs the change's author speaks for: ``trust.state.TrustState.orgs_of``;
an author with no known delegation is its own org), and per (registry, org)
where a registry names ``limits.max_changes_per_second_per_org``. Over
budget, nothing is refused: gossip drops the whole message (not delivered,
not forwarded; anti-entropy fetches it later, paced by the same budgets) and
sync waits. A rate verdict depends on arrival times, which differ between
nodes, so it may delay a change but never refuse it: a refused change would
stall its author's chain on one node and not on another.

The guard refuses nothing by a registry's rules either (its kinds, its
``max_record_bytes``). Those are the engine's to judge, by the version of the
descriptor in force when a change was made, on what the change made of
what its author saw; a change they refuse is kept in its author's chain as
evidence. Dropped here, it would never be stored, and every later change of
its author in the registry would wait for it forever: its author may simply
not have seen the registry drop the kind or lower the cap yet.

One org budget, shared by gossip and sync. Gossip is lossy by design and
sync repairs every loss, so a gossip-only limit would only move a flood onto
sync: what an org can make a node store per second must be one budget
whatever the path. Peers are budgeted per path, because a gossip origin
publishes its own changes while a sync responder relays everyone's history.
A fresh node's catch-up fits in the org burst (100k changes, the catch-up the
benchmarks measure), so it runs at the engine's pace; only a sustained
stream of one org beyond half the engine's ingest waits.

Strikes: a gossip origin that overflows *its own* budget is flooding (the
budget is twice the fastest honest writer measured) and is struck at most once
per ``flood_strike_interval``, so about 40 s of continued flooding bans it
(``node/peers.py``: 5 strikes). An org budget that runs short strikes nobody:
several honest nodes of one org may share it, and our own catch-up may be
what spent it.

Bounded memory: budgets live in tables of at most ``max_peer_buckets`` /
``max_org_buckets`` entries, least recently used forgotten first. Keys and
orgs cost nothing to mint, so a forgotten bucket comes back full: the tables
bound memory, not a flood of minted identities (admission at the hello is
what bounds those). Per-org and per-peer counters (``guard.org.<did>.*``,
``guard.peer.<id>.*``) exist only for throttled orgs and peers and leave with
their bucket, so a hostile peer cannot grow the metrics either.

No clock and no I/O here: ``now`` (seconds, monotonic) is passed in, so tests
drive it with a fake clock and simulations with virtual time.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass


MiB = 2**20


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's refill rate (per second) and size (its burst)."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.burst > 0 and math.isfinite(self.per_second + self.burst)):
            raise ValueError("a rate needs per_second > 0 and burst > 0")


@dataclass(frozen=True, slots=True)
class Budget:
    """Two buckets that must both have room: a count (changes; requests when
    serving) and bytes. ``bytes`` None: counted only."""

    count: Rate
    bytes: Rate | None = None


# ---- defaults, each with where it comes from ----

# Per gossip origin: 5,000 changes/s and 4 MiB/s, burst 20,000 changes and
# 16 MiB. The fastest honest writer measured here is the SDK's put_many,
# 2,523-2,587 records/s (README), and a node only publishes its own changes,
# so twice that leaves room for a machine twice as fast; the burst is the
# publisher's outbox (node/gossip.py OUTBOX_BYTES: 16 MiB, ~20k changes), the
# most an honest node ever has waiting to go out at once. Bytes: 5,000 changes
# of ~800 B. An origin beyond this floods, and is struck.
GOSSIP_PEER = Budget(Rate(5_000, 20_000), Rate(4 * MiB, 16 * MiB))
# Per org, gossip and sync together: 1,000 changes/s and 1 MiB/s sustained,
# about 40-50% of the engine's measured remote ingest (2,177-2,586 changes/s,
# docs/federation.md), the same share one origin may take of the validation
# thread (node/gossip.py VALIDATION_SHARE = 0.5): one org cannot hold more
# than half of a node's ingest for long. Burst 100,000 changes and 128 MiB: a
# fresh node catching up 100k records of one org (bench_federation's catch-up,
# ~700 B a change) runs at the engine's pace; it is also MAX_PENDING, the
# engine's own bound on changes it holds for later.
ORG = Budget(Rate(1_000, 100_000), Rate(1 * MiB, 128 * MiB))
# Per sync responder we pull from: 5,000 changes/s and 8 MiB/s, burst 100,000
# changes and 128 MiB. What one responder sends costs us a signature check
# each, and each change the engine refuses costs an audit entry on disk; this
# bounds that per peer at twice the engine's measured ingest, so it never
# paces an honest catch-up (the org budget is the one that matters there).
SYNC_PEER = Budget(Rate(5_000, 100_000), Rate(8 * MiB, 128 * MiB))
# What we serve one puller: 10 requests/s (burst 20) and 16 MiB/s (burst
# 64 MiB). An honest puller asks about once a second while it catches up (a
# 2 MiB round is ~1 s of engine work; it holds at most two rounds) and once
# per 10 s when idle; 16 MiB/s is eight times what it can apply. Beyond it a
# request is refused at once (rate_limited), like a busy one: the puller
# retries on its next round. MAX_INBOUND_SYNCS (4) already caps concurrency.
SERVE_PEER = Budget(Rate(10, 20), Rate(16 * MiB, 64 * MiB))
# Budget tables: 1,024 peers (node/peers.py MAX_KNOWN_PEERS) and 1,024 orgs
# ("hundreds of orgs" is the federation protocol/sync.py is sized for), least
# recently used forgotten first. A bucket costs ~200 bytes.
MAX_PEER_BUCKETS = 1024
MAX_ORG_BUCKETS = 1024
# A key delegated by several orgs is charged to each (it must fit every one of
# them). trust.md advises one key per org; 4 bounds the work per change.
MAX_ORGS_PER_CHANGE = 4
# A registry's per-org rate gets a burst of this many seconds of it: a
# minute of writing at the cap passes at once (a small bulk import, a
# reconnect after a short cut); beyond it, arrivals are paced at the cap.
REGISTRY_BURST_S = 60.0
# One strike per this many seconds while an origin keeps overflowing its own
# gossip budget: 5 strikes (node/peers.py BAN_AFTER_INVALID) are ~40 s of
# continued flooding; a brief spike costs one strike, forgiven after 10 min.
FLOOD_STRIKE_INTERVAL_S = 10.0
# Longest a sync session waits for budget before it ends and leaves the rest
# to the next session: the sync interval (node/federation.py SYNC_INTERVAL_S),
# so a session never holds one of the 4 session slots much longer than the
# period at which sessions start anyway.
SYNC_MAX_WAIT_S = 10.0


@dataclass(frozen=True)
class GuardLimits:
    """Every budget and bound of the guard (node/federation.py puts it in FederationConfig)."""

    gossip_peer: Budget = GOSSIP_PEER
    sync_peer: Budget = SYNC_PEER
    org: Budget = ORG
    serve_peer: Budget = SERVE_PEER
    max_peer_buckets: int = MAX_PEER_BUCKETS
    max_org_buckets: int = MAX_ORG_BUCKETS
    max_orgs_per_change: int = MAX_ORGS_PER_CHANGE
    registry_burst_s: float = REGISTRY_BURST_S
    flood_strike_interval: float = FLOOD_STRIKE_INTERVAL_S
    sync_max_wait: float = SYNC_MAX_WAIT_S

    def __post_init__(self) -> None:
        if min(self.max_peer_buckets, self.max_org_buckets, self.max_orgs_per_change) < 1:
            raise ValueError("bucket tables and orgs per change must be >= 1")
        if self.registry_burst_s <= 0 or self.flood_strike_interval < 0 or self.sync_max_wait < 0:
            raise ValueError("registry_burst_s must be > 0; strike interval and max wait >= 0")


# ---- token buckets ----


class TokenBucket:
    """``tokens`` refill at ``rate.per_second`` up to ``rate.burst``.

    ``fits(cost)``: there are ``cost`` tokens. With ``oversized=True`` (sync,
    one change at a time) a cost larger than the whole burst also fits a full
    bucket, which it leaves in debt: a single change bigger than a bytes
    burst must still get through, once nothing else was spent. A gossip
    message never does that: beyond the burst it is dropped, and sync brings
    its changes one by one."""

    __slots__ = ("at", "rate", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = rate.burst
        self.at = now

    def level(self, now: float) -> float:
        if now > self.at:
            self.tokens = min(self.rate.burst, self.tokens + (now - self.at) * self.rate.per_second)
            self.at = now
        return self.tokens

    def fits(self, cost: float, now: float, *, oversized: bool = False) -> bool:
        level = self.level(now)
        return cost <= level or (oversized and cost > self.rate.burst and level >= self.rate.burst)

    def take(self, cost: float, now: float) -> None:
        self.level(now)
        self.tokens -= cost

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` fits (a cost beyond the burst: until full)."""
        need = min(cost, self.rate.burst) - self.level(now)
        return max(0.0, need / self.rate.per_second)


class Meter:
    """The buckets of one budget for one key (a peer, an org, a registry and org)."""

    __slots__ = ("bytes", "count", "last_strike")

    def __init__(self, budget: Budget, now: float) -> None:
        self.count = TokenBucket(budget.count, now)
        self.bytes = TokenBucket(budget.bytes, now) if budget.bytes is not None else None
        self.last_strike = -math.inf

    def fits(self, n: float, size: float, now: float, *, oversized: bool = False) -> bool:
        return self.count.fits(n, now, oversized=oversized) and (
            self.bytes is None or self.bytes.fits(size, now, oversized=oversized))

    def take(self, n: float, size: float, now: float) -> None:
        self.count.take(n, now)
        if self.bytes is not None:
            self.bytes.take(size, now)

    def wait(self, n: float, size: float, now: float) -> float:
        wait = self.count.wait(n, now)
        if self.bytes is not None:
            wait = max(wait, self.bytes.wait(size, now))
        return wait


class MeterTable:
    """Meters by key, at most ``capacity``, least recently used forgotten first
    (``on_evict(key)`` is told). A new meter starts full."""

    def __init__(self, budget: Budget | None, capacity: int,
                 on_evict: Callable[[Hashable], None] | None = None) -> None:
        self.budget = budget
        self.capacity = capacity
        self.on_evict = on_evict
        self._meters: OrderedDict[Hashable, Meter] = OrderedDict()
        self.evicted = 0

    def get(self, key: Hashable, now: float, budget: Budget | None = None) -> Meter:
        meter = self._meters.get(key)
        if meter is not None:
            self._meters.move_to_end(key)
            return meter
        chosen = budget or self.budget
        assert chosen is not None, "a table without a default budget needs one per key"
        meter = self._meters[key] = Meter(chosen, now)
        while len(self._meters) > self.capacity:
            old, _ = self._meters.popitem(last=False)
            self.evicted += 1
            if self.on_evict is not None:
                self.on_evict(old)
        return meter

    def __contains__(self, key: Hashable) -> bool:
        return key in self._meters

    def __len__(self) -> int:
        return len(self._meters)


# ---- what a change costs, and to whom ----


@dataclass(frozen=True, slots=True)
class Charge:
    """One change as the guard sees it: its size, whom it is charged to, and
    its registry's rate per org (if the registry names one)."""

    size: int  # wire bytes
    orgs: tuple[str, ...]  # empty: undecodable; charged to the peer only, the engine refuses it
    registry: str = ""
    registry_rate: float | None = None


def charged_orgs(author: str, orgs: frozenset[str], most: int = MAX_ORGS_PER_CHANGE) -> tuple[str, ...]:
    """The orgs a change is charged to: those its author speaks for other than
    itself, or the author alone when it speaks for no org (an unknown key is
    its own org). At most ``most``, in a fixed order."""
    others = sorted(orgs - {author})
    return tuple(others[:most]) if others else (author,)


# ---- decisions ----


@dataclass(frozen=True, slots=True)
class GossipVerdict:
    accept: bool
    short: tuple[str, ...] = ()  # budgets that ran short: "peer", "org", "registry"
    strike: bool = False  # the origin overflowed its own budget; strike it


ACCEPT = GossipVerdict(True)


@dataclass(frozen=True, slots=True)
class SyncAdmission:
    admitted: list[int]  # indices of the changes to submit now, in order
    wait: float  # seconds until the rest may fit (0 when all were admitted)


_PER_ORG = ("dropped_batches", "throttled_changes", "throttled_bytes", "sync_short")
_PER_PEER = ("dropped_batches", "throttled_changes", "throttled_bytes")


class Guard:
    """Budgets of one node. ``metrics`` is the federation's Counter."""

    def __init__(self, guard_limits: GuardLimits | None = None, metrics: Counter[str] | None = None) -> None:
        self.limits = lim = guard_limits or GuardLimits()
        self.metrics: Counter[str] = metrics if metrics is not None else Counter()
        self.gossip_peers = MeterTable(lim.gossip_peer, lim.max_peer_buckets, self._forget_peer)
        self.sync_peers = MeterTable(lim.sync_peer, lim.max_peer_buckets)
        self.serve_peers = MeterTable(lim.serve_peer, lim.max_peer_buckets)
        self.orgs = MeterTable(lim.org, lim.max_org_buckets, self._forget_org)
        # (registry, org, rate) -> meter with the registry's own budget
        self.registry_orgs = MeterTable(None, lim.max_org_buckets)

    # ---- gossip: the whole message fits, or it is dropped ----

    def admit_gossip(self, peer: str, charges: Sequence[Charge], now: float) -> GossipVerdict:
        metrics = self.metrics
        peer_meter = self.gossip_peers.get(peer, now)
        meters = [("peer", peer, peer_meter, len(charges), sum(c.size for c in charges))]
        meters += [("org", org, self.orgs.get(org, now), n, size)
                   for org, (n, size) in _per_org(charges).items()]
        meters += [("registry", key, self._registry_meter(key, now), n, 0)
                   for key, n in _per_registry_org(charges).items()]
        short = [(kind, key, n, size) for kind, key, meter, n, size in meters if not meter.fits(n, size, now)]
        if not short:
            for _, _, meter, n, size in meters:
                meter.take(n, size, now)
            return ACCEPT
        total = sum(c.size for c in charges)
        metrics["guard.dropped_batches"] += 1
        metrics["guard.throttled_changes"] += len(charges)
        metrics["guard.throttled_bytes"] += total
        for kind in {kind for kind, *_ in short}:
            metrics[f"guard.throttled.{kind}"] += 1
        for kind, key, n, size in short:
            if kind == "org":
                metrics[f"guard.org.{key}.dropped_batches"] += 1
                metrics[f"guard.org.{key}.throttled_changes"] += n
                metrics[f"guard.org.{key}.throttled_bytes"] += size
        metrics[f"guard.peer.{peer}.dropped_batches"] += 1
        metrics[f"guard.peer.{peer}.throttled_changes"] += len(charges)
        metrics[f"guard.peer.{peer}.throttled_bytes"] += total
        strike = False
        if any(kind == "peer" for kind, *_ in short) \
                and now - peer_meter.last_strike >= self.limits.flood_strike_interval:
            peer_meter.last_strike = now
            metrics["guard.strikes"] += 1
            strike = True
        return GossipVerdict(False, short=tuple(sorted({kind for kind, *_ in short})), strike=strike)

    # ---- sync: admit what fits, in order; say how long until the rest fits ----

    def admit_sync(self, peer: str, charges: Sequence[Charge], now: float) -> SyncAdmission:
        """Charge and admit, in order, every change whose budgets have room;
        skip the others, and every later change that shares a budget with a
        skipped one (so one author's changes keep their order). ``wait`` is
        how long until the skipped ones all fit, if nothing else spends the
        budgets meanwhile."""
        peer_key = ("peer", peer)
        admitted: list[int] = []
        closed: dict[tuple[str, Hashable], list[float]] = {}  # meter key -> [changes, bytes] waiting
        meters: dict[tuple[str, Hashable], Meter] = {peer_key: self.sync_peers.get(peer, now)}
        for i, charge in enumerate(charges):
            keys = [peer_key] + [("org", org) for org in charge.orgs]
            if charge.registry_rate is not None:
                keys += [("registry", (charge.registry, org, charge.registry_rate)) for org in charge.orgs]
            for key in keys:
                if key not in meters:
                    meters[key] = (self.orgs.get(key[1], now) if key[0] == "org"
                                   else self._registry_meter(key[1], now))  # type: ignore[arg-type]
            blocked = [k for k in keys if k in closed]
            if not blocked:
                blocked = [k for k in keys
                           if not meters[k].fits(1, charge.size if k[0] != "registry" else 0, now, oversized=True)]
                if not blocked:
                    for key in keys:
                        meters[key].take(1, charge.size if key[0] != "registry" else 0, now)
                    admitted.append(i)
                    continue
            for key in blocked:
                waiting = closed.setdefault(key, [0.0, 0.0])
                waiting[0] += 1
                waiting[1] += charge.size if key[0] != "registry" else 0
        if not closed:
            return SyncAdmission(admitted, 0.0)
        wait = max(meters[key].wait(n, size, now) for key, (n, size) in closed.items())
        metrics = self.metrics
        for kind in {key[0] for key in closed}:
            metrics[f"guard.sync_short.{kind}"] += 1
        for kind, key in closed:
            if kind == "org":
                metrics[f"guard.org.{key}.sync_short"] += 1
        return SyncAdmission(admitted, wait)

    # ---- serving sync requests ----

    def may_serve(self, peer: str, now: float) -> bool:
        """A sync request from ``peer`` may be answered now (one request
        charged); its response's bytes are charged by ``served``."""
        meter = self.serve_peers.get(peer, now)
        if meter.count.level(now) < 1 or (meter.bytes is not None and meter.bytes.level(now) < 0):
            self.metrics["guard.serve_throttled"] += 1
            return False
        meter.count.take(1, now)
        return True

    def served(self, peer: str, size: int, now: float) -> None:
        meter = self.serve_peers.get(peer, now)
        if meter.bytes is not None:
            meter.bytes.take(size, now)  # may go into debt: the next request waits for it

    # ---- bookkeeping ----

    def _registry_meter(self, key: tuple[str, str, float], now: float) -> Meter:
        rate = key[2]
        burst = max(1.0, rate * self.limits.registry_burst_s)
        return self.registry_orgs.get(key, now, Budget(Rate(rate, burst)))

    def _forget_org(self, org: Hashable) -> None:
        self.metrics["guard.evicted.org"] += 1
        for name in _PER_ORG:
            self.metrics.pop(f"guard.org.{org}.{name}", None)

    def _forget_peer(self, peer: Hashable) -> None:
        self.metrics["guard.evicted.peer"] += 1
        for name in _PER_PEER:
            self.metrics.pop(f"guard.peer.{peer}.{name}", None)

    def sizes(self) -> dict[str, int]:
        return {"gossip_peers": len(self.gossip_peers), "sync_peers": len(self.sync_peers),
                "serve_peers": len(self.serve_peers), "orgs": len(self.orgs),
                "registry_orgs": len(self.registry_orgs)}


def _per_org(charges: Sequence[Charge]) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = {}
    for charge in charges:
        for org in charge.orgs:
            entry = out.setdefault(org, [0, 0])
            entry[0] += 1
            entry[1] += charge.size
    return {org: (n, size) for org, (n, size) in out.items()}


def _per_registry_org(charges: Sequence[Charge]) -> dict[tuple[str, str, float], int]:
    out: Counter[tuple[str, str, float]] = Counter()
    for charge in charges:
        if charge.registry_rate is not None:
            for org in charge.orgs:
                out[(charge.registry, org, charge.registry_rate)] += 1
    return dict(out)
