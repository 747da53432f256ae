"""The peer table: who we know, whom to dial when, who is banned.

Pure bookkeeping, no I/O: the federation's dial loop asks ``due(now)`` whom
to dial and reports back; connection events, hello exchanges and misbehaviour
update it; ``take_dirty()`` hands what changed to ``storage.peers`` for
persistence. ``now`` is the trio clock (seconds, monotonic) for scheduling;
bans are kept in wall-clock milliseconds because they survive a restart.

Redial schedule: exponential backoff with "equal jitter" (Brooker, "Exponential
Backoff And Jitter", AWS Architecture Blog, 2015): after ``n`` failed dials the
next waits a uniform time in [c/2, c], ``c = min(cap, base * 2**n)``. The
jitter spreads the redials of many nodes that lost the same peer (a restart,
a network cut) so they do not arrive in one burst; keeping half of ``c``
fixed keeps the growth exponential.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from registrygrid.protocol.hello import MAX_OWN_ADDRS, is_peer_addr, peer_of
from registrygrid.storage.peers import PeerRecord

# First redial 0.5-1 s after a loss: most cuts are a restart or a blip, and a
# node restarts in a few seconds, so it is back after a few short attempts.
BACKOFF_BASE_S = 1.0
# Cap 60 s. go-libp2p's swarm caps its dial backoff at 5 minutes (BackoffMax)
# for arbitrary internet peers; a federation has tens of known peers that
# are worth more, so a healed peer is found within a minute, at the cost of
# one failed dial per dead peer per 30-60 s.
BACKOFF_CAP_S = 60.0
# A connection that ends sooner than this counts as a failed dial, so a peer
# that accepts connections and drops them at once (it banned us, it is full)
# is redialed with growing backoff, not every second. 10 s is several hello
# and sync round trips: a working connection outlives it.
STABLE_AFTER_S = 10.0
# Honest peers validate before forwarding, so an invalid gossip message
# travels one hop and an honest node sends none; 5 strikes tolerate a brief
# bug or version skew, then the peer is cut off.
BAN_AFTER_INVALID = 5
# Strikes older than this are forgiven (an old blip does not count forever).
STRIKE_WINDOW_S = 600.0
# A ban lasts 10 minutes: long enough that flooding us costs the attacker a
# reconnect per 5 messages every 10 minutes, short enough that a fixed peer
# rejoins without an operator.
BAN_S = 600.0
# Peers remembered (persisted and redialed). A federation has tens to
# hundreds of nodes; 1024 bounds what peer exchange from a hostile peer can
# make us store (16 per hello, evicting never-connected learned peers first).
MAX_KNOWN_PEERS = 1024


def backoff_delay(failures: int, rng: random.Random, base: float = BACKOFF_BASE_S,
                  cap: float = BACKOFF_CAP_S) -> float:
    ceiling = min(cap, base * 2 ** min(failures, 32))
    return ceiling / 2 + rng.random() * ceiling / 2


@dataclass
class Peer:
    record: PeerRecord
    connected: bool = False
    dialing: bool = False
    denied: bool = False  # operator/test deny-list: never dial, drop on connect
    next_dial_at: float = 0.0
    connected_at: float = 0.0
    strikes: int = 0
    last_strike_at: float = 0.0

    @property
    def id(self) -> str:
        return self.record.peer_id


@dataclass
class PeerTable:
    own_id: str
    base: float = BACKOFF_BASE_S
    cap: float = BACKOFF_CAP_S
    ban_after: int = BAN_AFTER_INVALID
    ban_seconds: float = BAN_S
    max_known: int = MAX_KNOWN_PEERS
    rng: random.Random = field(default_factory=random.Random)
    wall_ms: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    peers: dict[str, Peer] = field(default_factory=dict)
    _dirty: set[str] = field(default_factory=set)
    _forget: set[str] = field(default_factory=set)

    # ---- loading and persistence ----

    def load(self, records: Iterable[PeerRecord], now: float) -> None:
        # Denied peers first, and whatever the cap: a deny is the operator's
        # and outlives a restart (forgetting it would lift it).
        for record in sorted(records, key=lambda r: r.state != "denied"):
            denied = record.state == "denied"
            if record.peer_id == self.own_id or (len(self.peers) >= self.max_known and not denied):
                continue
            if not denied:
                record.state = "banned" if record.banned_until_ms > self.wall_ms() else "disconnected"
            self.peers[record.peer_id] = Peer(record, denied=denied, next_dial_at=now)

    def take_dirty(self) -> tuple[list[PeerRecord], list[str]]:
        """Copies of the changed records (a worker thread encodes them while this table moves on)."""
        records = [msgspec.structs.replace(self.peers[p].record) for p in self._dirty if p in self.peers]
        forget = list(self._forget)
        self._dirty.clear()
        self._forget.clear()
        return records, forget

    def requeue(self, records: Iterable[PeerRecord], forget: Iterable[str]) -> None:
        """Mark again what a failed save did not write."""
        self._dirty.update(r.peer_id for r in records)
        self._forget.update(forget)

    def _touch(self, peer: Peer) -> None:
        self._dirty.add(peer.id)

    # ---- learning peers ----

    def add(self, addrs: Iterable[str], source: str, now: float) -> Peer | None:
        """Learn (or refresh) a peer from its dialable addresses (all of one peer)."""
        addrs = [a for a in addrs if is_peer_addr(a)]
        if not addrs:
            return None
        peer_id = peer_of(addrs[0])
        if peer_id == self.own_id or any(peer_of(a) != peer_id for a in addrs):
            return None
        peer = self.peers.get(peer_id) or self._insert(peer_id, source, now)
        if peer is None:
            return None
        record = peer.record
        merged = list(dict.fromkeys([*addrs, *record.addrs]))[:MAX_OWN_ADDRS]
        if source == "bootstrap" and record.source != "bootstrap":
            record.source = "bootstrap"
            self._touch(peer)
        if merged != record.addrs:
            record.addrs = merged
            self._touch(peer)
        return peer

    def _insert(self, peer_id: str, source: str, now: float) -> Peer | None:
        if len(self.peers) >= self.max_known and not self._evict_one():
            return None
        wall = self.wall_ms()
        peer = Peer(PeerRecord(peer_id=peer_id, source=source, first_seen_ms=wall), next_dial_at=now)
        self.peers[peer_id] = peer
        self._forget.discard(peer_id)
        self._touch(peer)
        return peer

    def _evict_one(self) -> bool:
        """Forget the least useful learned peer: never connected, most failed
        dials. Never a denied one: forgetting it would lift the deny."""
        candidates = [p for p in self.peers.values()
                      if p.record.source != "bootstrap" and not p.connected and not p.dialing and not p.denied]
        if not candidates:
            return False
        victim = max(candidates,
                     key=lambda p: (p.record.last_seen_ms == 0, p.record.failures, -p.record.last_seen_ms))
        del self.peers[victim.id]
        self._dirty.discard(victim.id)
        self._forget.add(victim.id)
        return True

    # ---- connection events ----

    def connected(self, peer_id: str, now: float) -> Peer | None:
        peer = self.peers.get(peer_id) or self._insert(peer_id, "inbound", now)
        if peer is None:
            return None
        peer.connected = True
        peer.connected_at = now
        peer.record.state = "connected"
        peer.record.last_seen_ms = self.wall_ms()
        self._touch(peer)
        return peer

    def disconnected(self, peer_id: str, now: float) -> None:
        peer = self.peers.get(peer_id)
        if peer is None:
            return
        if not peer.connected:
            return
        peer.connected = False
        peer.record.last_seen_ms = self.wall_ms()
        if peer.record.state == "connected":
            peer.record.state = "disconnected"
        if now - peer.connected_at >= STABLE_AFTER_S:
            peer.record.failures = 0
        else:
            peer.record.failures += 1
        peer.next_dial_at = now + backoff_delay(peer.record.failures, self.rng, self.base, self.cap)
        self._touch(peer)

    def stopped(self) -> None:
        """The node is stopping: nobody is connected any more."""
        for peer in self.peers.values():
            if peer.connected:
                peer.connected = False
                peer.record.state = "disconnected"
                self._touch(peer)

    def dial_started(self, peer_id: str) -> None:
        self.peers[peer_id].dialing = True

    def dial_failed(self, peer_id: str, now: float, error: str) -> None:
        peer = self.peers.get(peer_id)
        if peer is None:
            return
        peer.dialing = False
        peer.record.failures += 1
        if peer.record.state not in ("banned", "denied"):
            peer.record.state = "backoff"
        peer.record.note = error[:200]
        peer.next_dial_at = now + backoff_delay(peer.record.failures, self.rng, self.base, self.cap)
        self._touch(peer)

    def dial_done(self, peer_id: str) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.dialing = False

    def due(self, now: float) -> list[Peer]:
        """Peers to dial now: known addresses, not connected, not blocked, backoff over."""
        return [p for p in self.peers.values()
                if not p.connected and not p.dialing and p.record.addrs and p.next_dial_at <= now
                and not self.blocked(p.id)]

    def next_due(self) -> float | None:
        times = [p.next_dial_at for p in self.peers.values()
                 if not p.connected and not p.dialing and p.record.addrs and not self.blocked(p.id)]
        return min(times) if times else None

    # ---- behaviour ----

    def blocked(self, peer_id: str) -> bool:
        peer = self.peers.get(peer_id)
        if peer is None:
            return False
        if peer.denied:
            return True
        if peer.record.banned_until_ms:
            if peer.record.banned_until_ms > self.wall_ms():
                return True
            peer.record.banned_until_ms = 0
            peer.record.state = "disconnected"
            self._touch(peer)
        return False

    def strike(self, peer_id: str, now: float, why: str) -> bool:
        """Count one invalid message or request; True if the peer is now banned."""
        peer = self.peers.get(peer_id) or self._insert(peer_id, "inbound", now)
        if peer is None:
            return False
        if now - peer.last_strike_at > STRIKE_WINDOW_S:
            peer.strikes = 0
        peer.strikes += 1
        peer.last_strike_at = now
        peer.record.invalid += 1
        peer.record.note = why[:200]
        self._touch(peer)
        if peer.strikes >= self.ban_after and not self.blocked(peer_id):
            self.ban(peer_id, why)
            return True
        return False

    def ban(self, peer_id: str, why: str, seconds: float | None = None) -> None:
        peer = self.peers.get(peer_id) or self._insert(peer_id, "inbound", 0.0)
        if peer is None:
            return
        duration = seconds if seconds is not None else self.ban_seconds
        peer.record.banned_until_ms = self.wall_ms() + int(1000 * duration)
        peer.record.state = "banned"
        peer.record.note = f"banned: {why}"[:200]
        peer.strikes = 0
        self._touch(peer)

    def deny(self, peer_id: str) -> None:
        peer = self.peers.get(peer_id) or self._insert(peer_id, "inbound", 0.0)
        if peer is not None:
            peer.denied = True
            peer.record.state = "denied"
            self._touch(peer)

    def allow(self, peer_id: str, now: float) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None and peer.denied:
            peer.denied = False
            peer.record.state = "disconnected"
            peer.record.failures = 0
            peer.next_dial_at = now
            self._touch(peer)

    def note_sync(self, peer_id: str, *, lag: int, ahead: int) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.record.lag, peer.record.ahead = lag, ahead
            peer.record.last_sync_ms = self.wall_ms()
            self._touch(peer)

    def note_latency(self, peer_id: str, seconds: float) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.record.latency_ms = round(seconds * 1000, 2)
            self._touch(peer)

    def note_rejected(self, peer_id: str, count: int) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None and count:
            peer.record.rejected += count
            self._touch(peer)

    def share(self, exclude: str, limit: int) -> list[str]:
        """Addresses to offer in peer exchange: connected peers first, one address each."""
        ranked = sorted((p for p in self.peers.values() if p.record.addrs and p.id != exclude
                         and not self.blocked(p.id)),
                        key=lambda p: (not p.connected, -p.record.last_seen_ms))
        return [p.record.addrs[0] for p in ranked[:limit]]

    def connected_ids(self) -> list[str]:
        return [p.id for p in self.peers.values() if p.connected]

    def denied_ids(self) -> list[str]:
        return [p.id for p in self.peers.values() if p.denied]
