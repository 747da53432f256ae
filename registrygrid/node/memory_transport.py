"""An in-memory transport: many nodes in one process, in trio's (virtual) time.

    async with MemoryNetwork(seed=7, latency=lambda rng: rng.uniform(0.01, 0.05), loss=0.01) as network:
        async with network.host() as a, network.host() as b:
            await a.connect(b.listen_addrs()[0])
            ...

A ``MemoryHost`` keeps the contract of node/transport.py as ``P2PHost``
does (tests/test_transport_contract.py runs one suite against both), so
gossip, sync and the federation run on it unchanged. Under
``trio.testing.MockClock`` every latency is virtual: a run of simulated
minutes takes as long as its computation.

What it models, and what it does not:

* Connections are symmetric and instant to open; ``partition`` splits the
  hosts into groups that cannot reach each other (open connections across
  groups drop, with their peer events), ``heal`` joins them again.
* A request takes one sampled latency each way; its handler runs as the
  remote's (an error it raises reaches the requester as ``RemoteError``
  with ``code: message``, as over libp2p); caps and timeouts raise the same
  errors as ``P2PHost``. Requests are never lost (they run over TCP there).
* Gossip is GossipSub's, as py-libp2p runs it with the node's
  ``GossipConfig`` (node/p2p_pubsub.py): each host keeps a **mesh** per
  topic, joined with up to D of its topic peers when it subscribes and
  kept between D_lo and D_hi at every **heartbeat** (GRAFT and PRUNE,
  both ends at once); a host forwards a message it has not seen and its
  validator accepts to its mesh peers, except the one it came from and
  the origin (a host publishing to a topic it has not joined sends to D
  topic peers: GossipSub's fanout). At each heartbeat a host also sends
  **IHAVE** with the ids of the messages of its last ``gossip_window``
  heartbeats to D topic peers outside its mesh; a peer that has not seen
  one answers **IWANT**, and the message comes from the cache (kept
  ``gossip_history`` heartbeats): how GossipSub repairs a lost hop before
  anti-entropy does (``lazy_gossip=False`` turns it off). Every hop
  (message, IHAVE, IWANT) takes a sampled latency and is lost with
  probability ``loss``. Simplified: all hosts beat together, GRAFT and
  PRUNE take no time and no backoff, and there is no peer scoring.
* Every message and byte is counted, per host and for the network
  (``MemoryNetwork.stats``), for amplification figures.

Deterministic for a seed: one seeded random source decides latencies,
losses and mesh choices, and trio's MockClock orders events by time
(``MockClock(rate=0, autojump_threshold=0)``, and ``trio.run`` with a
fixed scheduler seed for exact replays).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

import trio
import trio.lowlevel

from registrygrid.errors import RegistryError
from registrygrid.node.p2p_base import peer_id_from_seed
from registrygrid.node.transport import (
    DialFailed,
    GossipMessage,
    MessageRejected,
    MessageTooLarge,
    NotRunning,
    PeerEvent,
    PeerUnreachable,
    ProtocolNotSupported,
    RemoteError,
    RequestHandler,
    RequestTimeout,
    RequestTooLarge,
    ResponseTooLarge,
    TopicValidator,
)

# Gossip hops are delivered in ticks of this length (their sampled latency
# rounded up): a millisecond is below any WAN latency's spread, and lets one
# wake-up deliver every hop due in it.
DEFAULT_RESOLUTION_S = 0.001
# GossipSub as the node runs it: node/p2p_pubsub.py's GossipConfig says
# where each value comes from (tests/test_transport_contract.py checks
# they stay equal). The target mesh degree D is 6 in the spec and every
# implementation; D_lo and D_hi follow from it (``mesh_bounds``).
DEFAULT_DEGREE = 6
DEFAULT_HEARTBEAT_S = 1.0
DEFAULT_HEARTBEAT_INITIAL_DELAY_S = 0.1
DEFAULT_GOSSIP_WINDOW = 3
DEFAULT_GOSSIP_HISTORY = 5
# The same caps as P2PHost's defaults (node/p2p_requests.py, node/p2p_pubsub.py).
DEFAULT_MAX_REQUEST_BYTES = 1 * 2**20
DEFAULT_MAX_RESPONSE_BYTES = 8 * 2**20
DEFAULT_MAX_MESSAGE_BYTES = 2**20 - 16 * 1024
DEFAULT_REQUEST_TIMEOUT = 30.0
SUBSCRIPTION_CHANNEL_SIZE = 1024
PEER_EVENT_CHANNEL_SIZE = 256
# Message IDs a host remembers (GossipSub's seen cache holds ~2 minutes).
SEEN_MESSAGES = 2**16


def mesh_bounds(degree: int) -> tuple[int, int]:
    """D_lo and D_hi for a mesh degree D: the spec's 4 and 12 for D = 6,
    in the same proportion for another D."""
    return max(1, round(degree * 2 / 3)), 2 * degree


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    data: bytes
    origin: str
    seqno: int
    hops: int = 0  # links travelled so far
    pulled: bool = False  # this hop answers an IWANT
    id: tuple[str, int] = field(init=False)  # made once: every host reads it at every hop

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", (self.origin, self.seqno))


@dataclass(frozen=True)
class _Control:
    """IHAVE (ids a peer may pull) or IWANT (ids pulled)."""

    kind: str
    topic: str
    ids: tuple[tuple[str, int], ...]


class _Beat:
    """The heap entry of the network's next heartbeat."""


_HEARTBEAT = _Beat()


class MemoryNetwork:
    """The hosts of one simulated network, and what passes between them."""

    def __init__(self, *, seed: int = 0, latency: Callable[[random.Random], float] = lambda rng: 0.0,
                 loss: float = 0.0, degree: int = DEFAULT_DEGREE, resolution: float = DEFAULT_RESOLUTION_S,
                 heartbeat: float = DEFAULT_HEARTBEAT_S, gossip_window: int = DEFAULT_GOSSIP_WINDOW,
                 gossip_history: int = DEFAULT_GOSSIP_HISTORY, lazy_gossip: bool = True) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        if degree < 1 or heartbeat <= 0 or not 1 <= gossip_window <= gossip_history:
            raise ValueError("need degree >= 1, heartbeat > 0 and 1 <= gossip_window <= gossip_history")
        self.rng = random.Random(seed)
        self.latency = latency
        self.loss = loss
        self.degree = degree
        self.degree_low, self.degree_high = mesh_bounds(degree)
        self.heartbeat = heartbeat
        self.gossip_window = gossip_window
        self.gossip_history = gossip_history
        self.lazy_gossip = lazy_gossip
        self.hosts: dict[str, MemoryHost] = {}
        # The last gossip sequence number each peer ID published, across its
        # hosts: a node restarted with seqno 0 again published message ids
        # its peers had seen from its first life, and they dropped them as
        # duplicates (py-libp2p starts the counter at the clock's seconds).
        self.last_seqnos: dict[str, int] = {}
        self.stats: Counter[str] = Counter()
        # Gossip deliveries by the number of links the message travelled to
        # get there (first deliveries only): the propagation rounds.
        self.hops: Counter[int] = Counter()
        self._groups: dict[str, int] | None = None  # peer -> partition group, while partitioned
        self._made = 0
        self.resolution = resolution
        self.running = False
        # Gossip hops in flight and the next heartbeat, by time.
        self._due: list[tuple[float, int, str, _Message | _Control | _Beat, str]] = []
        self._order = 0
        self._wake = trio.Event()
        self._cm: Any = None
        self._dispatcher_scope = trio.CancelScope()

    def host(self, peer_id: str | None = None, **options: Any) -> MemoryHost:
        """A new host (``async with`` it to run it). ``peer_id``: the libp2p
        peer ID of the node's key (``node.p2p.peer_id_from_seed``), so the
        federation's admission reads it as over libp2p; by default one of a
        fresh key. Its address is a synthetic ``/ip4/10.x.y.z/tcp/4001/p2p/<id>``:
        a valid multiaddr for the peer table and hellos, never a socket."""
        self._made += 1
        name = peer_id or peer_id_from_seed(self.rng.randbytes(32))
        if name in self.hosts:
            raise ValueError(f"a host named {name!r} exists already")
        n = self._made
        host = MemoryHost(self, name, address=f"/ip4/10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}/tcp/4001",
                          **options)
        self.hosts[name] = host
        return host

    def factory(self, **options: Any) -> Callable[[bytes], MemoryHost]:
        """What ``Federation(transport=...)`` takes: the node's key seed -> its host here."""
        return lambda seed: self.host(peer_id_from_seed(seed), **options)

    # ---- running: one dispatcher delivers every gossip hop

    async def __aenter__(self) -> Self:
        self._cm = trio.open_nursery()
        nursery = await self._cm.__aenter__()
        nursery.start_soon(self._dispatch)
        self.schedule(DEFAULT_HEARTBEAT_INITIAL_DELAY_S, "", _HEARTBEAT, "")
        self.running = True
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        self.running = False
        self._dispatcher_scope.cancel()
        return await self._cm.__aexit__(exc_type, exc, tb)  # type: ignore[no-any-return]

    def _heartbeats(self) -> None:
        """Every host's GossipSub heartbeat, in the order the hosts were
        made: mesh upkeep, IHAVE gossip, the message cache's shift. Run by
        the dispatcher, in the same heap as the hops: the two interleave by
        time and scheduling order alone, never by which of two trio tasks
        woken at one instant runs first."""
        for host in list(self.hosts.values()):
            if host.running:
                host._heartbeat()
        self.schedule(self.heartbeat, "", _HEARTBEAT, "")

    def schedule(self, delay: float, target: str, message: _Message | _Control | _Beat, sender: str) -> None:
        """Deliver ``message`` from ``sender`` to ``target`` after ``delay``,
        rounded up to the network's resolution. One heap and one task for
        the whole network: deliveries due in the same tick go in one
        wake-up, so a run of millions of hops does not pay a trio wake-up
        (tens of microseconds) for each."""
        at = math.ceil((trio.current_time() + delay) / self.resolution) * self.resolution
        self._order += 1
        heapq.heappush(self._due, (at, self._order, target, message, sender))
        if self._due[0][1] == self._order:
            self._wake.set()  # the dispatcher sleeps until a later time: this one is sooner

    async def _dispatch(self) -> None:
        with trio.CancelScope() as self._dispatcher_scope:
            while True:
                if not self._due:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                at = self._due[0][0]
                if at > trio.current_time():
                    with trio.move_on_at(at):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                now = trio.current_time()
                while self._due and self._due[0][0] <= now:
                    _, _, target, item, sender = heapq.heappop(self._due)
                    if item is _HEARTBEAT:
                        self._heartbeats()
                        continue
                    host = self.hosts.get(target)
                    if host is not None and host.running:
                        if isinstance(item, _Message):
                            host._arrive(item, sender)
                        elif isinstance(item, _Control):
                            host._control(item, sender)
                await trio.lowlevel.checkpoint()

    def reachable(self, a: str, b: str) -> bool:
        return self._groups is None or self._groups.get(a, -1) == self._groups.get(b, -1)

    def partition(self, *groups: list[str] | set[str]) -> None:
        """Split the hosts into ``groups`` (a host in none is alone); connections across groups drop."""
        self._groups = {peer: i for i, group in enumerate(groups) for peer in group}
        for host in self.hosts.values():
            for peer in sorted(host._connected):
                if not self.reachable(host.peer_id, peer):
                    host._drop(peer)

    def heal(self) -> None:
        self._groups = None

    def delay(self) -> float:
        return max(0.0, float(self.latency(self.rng)))


class MemoryHost:
    """One node's transport in a MemoryNetwork (see the module docstring)."""

    def __init__(self, network: MemoryNetwork, peer_id: str, *, address: str = "/ip4/10.0.0.1/tcp/4001",
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        self.network = network
        self._peer_id = peer_id
        self._address = f"{address}/p2p/{peer_id}"
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self.max_message_bytes = max_message_bytes
        self.request_timeout = request_timeout
        self.stats: Counter[str] = Counter()
        self._connected: set[str] = set()
        self._handlers: dict[str, RequestHandler] = {}
        self._subscriptions: dict[str, trio.MemorySendChannel[GossipMessage]] = {}
        self._validators: dict[str, TopicValidator] = {}
        self._event_channels: list[trio.MemorySendChannel[PeerEvent]] = []
        self._seen: dict[tuple[str, int], None] = {}
        self._seqno = network.last_seqnos.get(peer_id, 0)
        # GossipSub's state: the mesh per joined topic, and the message
        # cache (the messages of each of the last heartbeats, newest first).
        self._mesh: dict[str, set[str]] = {}
        self._windows: deque[list[_Message]] = deque([[]])
        self._cached: dict[tuple[str, int], _Message] = {}
        self._nursery: trio.Nursery | None = None
        self._cm: Any = None  # the nursery of deliveries to this host, while it runs

    # ---- lifecycle

    async def __aenter__(self) -> Self:
        if self._nursery is not None:
            raise NotRunning("a MemoryHost runs once")
        self._cm = trio.open_nursery()
        if not self.network.running:
            raise NotRunning("start the network first: async with MemoryNetwork(...) as network")
        self._nursery = await self._cm.__aenter__()  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        for peer in sorted(self._connected):
            self._drop(peer)
        for channel in [*self._subscriptions.values(), *self._event_channels]:
            channel.close()
        assert self._nursery is not None and self._cm is not None
        self._nursery.cancel_scope.cancel()  # deliveries still in flight to us are lost, as at a real shutdown
        self._nursery = None
        self.network.hosts.pop(self._peer_id, None)
        return await self._cm.__aexit__(exc_type, exc, tb)  # type: ignore[attr-defined,no-any-return]

    @property
    def running(self) -> bool:
        return self._nursery is not None

    def _require_running(self) -> trio.Nursery:
        if self._nursery is None:
            raise NotRunning("the host is not running")
        return self._nursery

    # ---- identity and connections

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def listen_addrs(self) -> list[str]:
        return [self._address] if self.running else []

    def connected_peers(self) -> list[str]:
        return sorted(self._connected)

    async def connect(self, multiaddr: str, timeout: float = 5.0) -> str:
        self._require_running()
        peer = multiaddr.rsplit("/p2p/", 1)[-1] if "/p2p/" in multiaddr else ""
        other = self.network.hosts.get(peer)
        if other is None or not other.running or peer == self._peer_id:
            raise DialFailed(f"no host listens at {multiaddr}")
        if not self.network.reachable(self._peer_id, peer):
            raise DialFailed(f"{peer} is unreachable (partitioned)")
        await trio.sleep(self.network.delay())
        if peer not in self._connected and other.running:
            self._connected.add(peer)
            other._connected.add(self._peer_id)
            self._emit(PeerEvent("connected", peer))
            other._emit(PeerEvent("connected", self._peer_id))
        return peer

    async def disconnect(self, peer_id: str) -> None:
        self._drop(peer_id)

    def _drop(self, peer: str) -> None:
        if peer not in self._connected:
            return
        self._connected.discard(peer)
        for mesh in self._mesh.values():
            mesh.discard(peer)
        self._emit(PeerEvent("disconnected", peer))
        other = self.network.hosts.get(peer)
        if other is not None and self._peer_id in other._connected:
            other._connected.discard(self._peer_id)
            for mesh in other._mesh.values():
                mesh.discard(self._peer_id)
            other._emit(PeerEvent("disconnected", self._peer_id))

    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        send, receive = trio.open_memory_channel[PeerEvent](PEER_EVENT_CHANNEL_SIZE)
        self._event_channels.append(send)
        return receive

    def _emit(self, event: PeerEvent) -> None:
        for channel in list(self._event_channels):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.stats["peer_events_dropped"] += 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._event_channels.remove(channel)

    # ---- request/response

    def set_handler(self, protocol_id: str, handler: RequestHandler) -> None:
        self._handlers[protocol_id] = handler

    def remove_handler(self, protocol_id: str) -> None:
        self._handlers.pop(protocol_id, None)

    async def request(self, peer_id: str, protocol_id: str, data: bytes, timeout: float | None = None) -> bytes:
        self._require_running()
        data = bytes(data)
        if len(data) > self.max_request_bytes:
            raise RequestTooLarge(f"request of {len(data)} bytes is over max_request_bytes={self.max_request_bytes}")
        limit = self.request_timeout if timeout is None else timeout
        with trio.move_on_after(limit) as scope:
            answer = await self._exchange(peer_id, protocol_id, data)
        if scope.cancelled_caught:
            self.stats["requests_failed"] += 1
            raise RequestTimeout(f"no answer from {peer_id} within {limit:g} s")
        return answer

    async def _exchange(self, peer_id: str, protocol_id: str, data: bytes) -> bytes:
        network = self.network
        other = network.hosts.get(peer_id)
        if peer_id not in self._connected or other is None or not other.running:
            self.stats["requests_failed"] += 1
            raise PeerUnreachable(f"not connected to {peer_id}")
        self.stats["requests_sent"] += 1
        network.stats["requests"] += 1
        network.stats["request_bytes"] += len(data)
        await trio.sleep(network.delay())
        if len(data) > other.max_request_bytes:
            raise RequestTooLarge(f"the peer refused the request: over its max_request_bytes={other.max_request_bytes}")
        handler = other._handlers.get(protocol_id)
        if handler is None:
            raise ProtocolNotSupported(f"{peer_id} does not speak {protocol_id}")
        try:
            response = bytes(await handler(self._peer_id, data))
        except RegistryError as exc:
            other.stats["requests_handler_errors"] += 1
            reason = f"{exc.code}: {exc.message}"
            raise RemoteError(f"the peer's handler failed: {reason}", details={"reason": reason}) from None
        except Exception as exc:  # noqa: BLE001 - the peer's bug is its refusal, as over libp2p
            other.stats["requests_handler_errors"] += 1
            reason = f"handler error ({type(exc).__name__})"
            raise RemoteError(f"the peer's handler failed: {reason}", details={"reason": reason}) from None
        other.stats["requests_served"] += 1
        if len(response) > other.max_response_bytes:
            raise ResponseTooLarge("the peer refused to answer: over its max_response_bytes")
        network.stats["response_bytes"] += len(response)
        await trio.sleep(network.delay())
        if peer_id not in self._connected:
            raise PeerUnreachable(f"{peer_id} went away before answering")
        if len(response) > self.max_response_bytes:
            raise ResponseTooLarge(f"response is over max_response_bytes={self.max_response_bytes}")
        return response

    # ---- publish/subscribe

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[GossipMessage]:
        self._require_running()
        if topic in self._subscriptions:
            raise ValueError(f"already subscribed to {topic!r}")
        send, receive = trio.open_memory_channel[GossipMessage](SUBSCRIPTION_CHANNEL_SIZE)
        self._subscriptions[topic] = send
        # Joining: a mesh of up to D of the topic's peers, grafted now.
        self._mesh[topic] = set()
        peers = self.topic_peers(topic)
        for peer in self.network.rng.sample(peers, min(len(peers), self.network.degree)):
            self._graft(topic, peer)
        return receive

    async def unsubscribe(self, topic: str) -> None:
        channel = self._subscriptions.pop(topic, None)
        if channel is not None:
            channel.close()
        for peer in sorted(self._mesh.pop(topic, ())):
            other = self.network.hosts.get(peer)
            if other is not None:
                other._mesh.get(topic, set()).discard(self._peer_id)

    def set_topic_validator(self, topic: str, validator: TopicValidator) -> None:
        self._validators[topic] = validator

    def topic_peers(self, topic: str) -> list[str]:
        hosts = self.network.hosts
        return sorted(p for p in self._connected if p in hosts and topic in hosts[p]._subscriptions)

    async def publish(self, topic: str, data: bytes) -> None:
        self._require_running()
        data = bytes(data)
        if len(data) > self.max_message_bytes:
            raise MessageTooLarge(f"gossip payload of {len(data)} bytes is over the {self.max_message_bytes}-byte "
                                  "limit", details={"size": len(data), "limit": self.max_message_bytes})
        validator = self._validators.get(topic)
        if validator is not None and not validator(self._peer_id, data):
            raise MessageRejected(f"our validator for {topic!r} rejects this payload")
        self._seqno += 1
        self.network.last_seqnos[self._peer_id] = self._seqno
        message = _Message(topic, data, self._peer_id, self._seqno)
        self._remember(message.id)
        self._cache(message)
        self.stats["gossip_published"] += 1
        self._forward(message, came_from=None)

    def _forward(self, message: _Message, came_from: str | None) -> None:
        """Push ``message`` to this host's mesh on its topic (GossipSub's
        fanout, D topic peers, on a topic it has not joined)."""
        network = self.network
        message = replace(message, hops=message.hops + 1, pulled=False)
        mesh = self._mesh.get(message.topic)
        if mesh is None:
            peers = self.topic_peers(message.topic)
            candidates = network.rng.sample(peers, min(len(peers), network.degree))
        else:
            candidates = sorted(mesh)
        for peer in candidates:
            if peer not in (came_from, message.origin):
                self._send(peer, message)

    def _send(self, peer: str, message: _Message) -> None:
        """One hop of a message: delayed, and lost with the network's odds."""
        network = self.network
        self.stats["gossip_sent"] += 1
        self.stats["gossip_sent_bytes"] += len(message.data)
        network.stats["gossip_messages"] += 1
        network.stats["gossip_bytes"] += len(message.data)
        if network.loss and network.rng.random() < network.loss:
            network.stats["gossip_lost"] += 1
            return
        target = network.hosts.get(peer)
        if target is not None and target._nursery is not None:
            network.schedule(network.delay(), target.peer_id, message, self._peer_id)

    def _send_control(self, peer: str, control: _Control) -> None:
        network = self.network
        network.stats[f"gossip_{control.kind}"] += 1
        if network.loss and network.rng.random() < network.loss:
            network.stats["gossip_control_lost"] += 1
            return
        network.schedule(network.delay(), peer, control, self._peer_id)

    def _control(self, control: _Control, sender: str) -> None:
        """IHAVE: pull what this host has not seen. IWANT: send what the
        cache still holds."""
        if sender not in self._connected:
            return
        if control.kind == "ihave":
            if control.topic not in self._subscriptions:
                return
            wanted = tuple(i for i in control.ids if i not in self._seen)
            if wanted:
                self._send_control(sender, _Control("iwant", control.topic, wanted))
            return
        for message_id in control.ids:
            message = self._cached.get(message_id)
            if message is not None:
                self._send(sender, replace(message, hops=message.hops + 1, pulled=True))

    # ---- GossipSub's mesh and message cache

    def _graft(self, topic: str, peer: str) -> None:
        """``peer`` joins this host's mesh on ``topic``, and this host its
        (a GRAFT is accepted: no backoff or scores here)."""
        self._mesh[topic].add(peer)
        other = self.network.hosts.get(peer)
        if other is not None and topic in other._mesh:
            other._mesh[topic].add(self._peer_id)
        self.network.stats["gossip_grafts"] += 1

    def _prune(self, topic: str, peer: str) -> None:
        self._mesh[topic].discard(peer)
        other = self.network.hosts.get(peer)
        if other is not None and topic in other._mesh:
            other._mesh[topic].discard(self._peer_id)
        self.network.stats["gossip_prunes"] += 1

    def _cache(self, message: _Message) -> None:
        self._windows[0].append(message)
        self._cached[message.id] = message

    def _heartbeat(self) -> None:
        """Mesh upkeep (up to D when below D_lo, down to D when above D_hi),
        IHAVE to D topic peers outside the mesh, then the cache's shift."""
        network = self.network
        for topic in sorted(self._mesh):
            mesh, peers = self._mesh[topic], self.topic_peers(topic)
            for gone in sorted(mesh.difference(peers)):
                self._prune(topic, gone)
            if len(mesh) < network.degree_low:
                pool = [p for p in peers if p not in mesh]
                for peer in network.rng.sample(pool, min(len(pool), network.degree - len(mesh))):
                    self._graft(topic, peer)
            elif len(mesh) > network.degree_high:
                for peer in network.rng.sample(sorted(mesh), len(mesh) - network.degree):
                    self._prune(topic, peer)
            if not network.lazy_gossip:
                continue
            ids = tuple(m.id for window in itertools.islice(self._windows, network.gossip_window)
                        for m in window if m.topic == topic)
            if ids:
                pool = [p for p in peers if p not in mesh]
                for peer in network.rng.sample(pool, min(len(pool), network.degree)):
                    self._send_control(peer, _Control("ihave", topic, ids))
        if len(self._windows) == network.gossip_history:
            for message in self._windows.pop():
                self._cached.pop(message.id, None)
        self._windows.appendleft([])

    def _arrive(self, message: _Message, sender: str) -> None:
        if sender not in self._connected:
            self.network.stats["gossip_dropped_disconnected"] += 1
            return
        if message.id in self._seen:
            self.stats["gossip_duplicates"] += 1
            self.network.stats["gossip_duplicates"] += 1
            return
        self._remember(message.id)
        self.network.hops[message.hops] += 1
        if message.pulled:
            self.network.stats["gossip_pulled"] += 1  # first heard through IHAVE/IWANT
        validator = self._validators.get(message.topic)
        if validator is not None and not validator(message.origin, message.data):
            self.stats["gossip_rejected"] += 1
            return  # neither delivered nor forwarded
        self._cache(message)
        channel = self._subscriptions.get(message.topic)
        if channel is not None:
            try:
                channel.send_nowait(GossipMessage(message.topic, message.data, message.origin, message.seqno))
                self.stats["gossip_received"] += 1
                self.network.stats["gossip_delivered"] += 1
            except trio.WouldBlock:
                self.stats["gossip_dropped"] += 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        self._forward(message, came_from=sender)

    def _remember(self, message_id: tuple[str, int]) -> None:
        self._seen[message_id] = None
        if len(self._seen) > SEEN_MESSAGES:
            del self._seen[next(iter(self._seen))]


def no_latency(rng: random.Random) -> float:
    return 0.0


def lognormal_latency(median_s: float, sigma: float = 0.5) -> Callable[[random.Random], float]:
    """Latencies whose median is ``median_s`` and whose tail grows with ``sigma``
    (network round trips are roughly log-normal)."""
    mu = math.log(median_s)
    return lambda rng: rng.lognormvariate(mu, sigma)
