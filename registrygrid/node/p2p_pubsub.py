"""GossipSub for the py-libp2p transport: the P2PHost side of publish/subscribe.

Gossip delivery.
    py-libp2p hands each subscription's messages to a trio channel of 32
    slots (``SUBSCRIPTION_CHANNEL_SIZE``) with ``send_nowait`` and drops what
    does not fit. We drain that channel in a task of its own that only
    converts and forwards into our own bounded channel (``channel_size``),
    counting our drops in ``stats['gossip_dropped']``; drops inside
    py-libp2p's channel are counted too (``stats['gossip_dropped_upstream']``)
    through a thin ``Pubsub`` subclass that does exactly what py-libp2p does and
    counts. Our own messages come back on that channel too: the drain reads
    them and skips them.

    The larger loss is on the *sending* side: each peer has an outbound RPC
    queue of 32 (``OutBoundQueueSize``) and a full queue silently drops (at
    debug level). Measured here, a loop of 300 ``Pubsub.publish`` calls
    delivered 15-17 of 300 messages to a directly connected peer (527
    RPCs dropped as ``queue_full``; every message also queues an IDONTWANT on
    meshsub 1.2). So :meth:`P2PHost.publish` waits, before handing a message to
    py-libp2p, until the outbound queues of the topic's peers are below
    ``GossipConfig.publish_queue_high_water``; a peer whose queue stays full
    for ``publish_backpressure_timeout`` is skipped for a while (it is slow or
    stuck; anti-entropy repairs what it misses) and counted in
    ``stats['gossip_backpressure_timeouts']``. With that, the 300-message burst
    arrives whole. Messages that *this* node relays for others get no such
    pacing: py-libp2p may still drop them under a burst, and the federation's
    anti-entropy sync is what makes gossip loss harmless.

Topic validators and scores.
    :meth:`P2PHost.set_topic_validator` registers a synchronous validator with
    py-libp2p's ``Pubsub.set_topic_validator``, so a rejected message is
    neither delivered to our subscribers nor forwarded. On rejection
    py-libp2p calls ``PeerScorer.on_invalid_message(forwarder, topic)``, which
    increments the forwarder's P4 counter; with the default ``ScoreParams``
    the P4 weight *and* cap are 0 and every threshold is ``-inf``, so in
    0.8.1 a rejection changes nothing about the sender's score, mesh membership
    or connection. Rejecting a peer for misbehaviour is therefore the
    federation's job (``disconnect``, policy), not gossip scoring's. The
    negative result is cached per message ID (py-libp2p's ``ValidationCache``,
    300 s), so a re-sent copy is not validated twice.

Errors.
    Every failure a caller can cause or meet is a :class:`P2PError`. Exception
    groups from py-libp2p's internals (its services run in nurseries of their
    own) are caught where the host's task ends and logged, never re-raised
    into the caller; ``Cancelled`` and other non-``Exception`` parts still
    propagate, as trio requires. If py-libp2p stops under us, ``error`` holds
    what stopped it, every channel we handed out ends and calls raise
    :class:`NotRunning`.

Other py-libp2p 0.8.1 problems this module works around (each is explained
where it is handled):

* GossipSub's "adaptive gossip" resets a 1 s heartbeat to 30-60 s in small
  meshes: turned off.
* Concurrent writers on one pubsub stream interleave large RPCs and crash the
  receiving swarm (``_Pubsub.write_msg``).
* A cancelled stream write can leave half a yamux frame on the wire and break
  the whole connection (``_write``).
* Leaving ``host.run`` drops connections without closing them, so peers never
  see a disconnect (``_close_connections``).
* A failed listen is only logged, and the TCP listener sets SO_REUSEPORT, so
  a second host can silently share a port (``_check_ports_free``).
* The swarm's auto-connector redials peerstore peers on its own: stopped.
* Yamux reports a reset stream as EOF once it dropped the stream's
  bookkeeping (``_run_handler``); mplex cannot read and write one stream at
  once (``_exchange``).
"""


from __future__ import annotations

import functools
import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import DefaultMaxMessageSize

from registrygrid.node.p2p_base import KiB, _b58, _parse_peer_id
from registrygrid.node.transport import (
    GossipMessage,
    MessageRejected,
    MessageTooLarge,
    PublishFailed,
    TopicValidator,
)

logger = logging.getLogger("registrygrid.node.p2p")

# ---------------------------------------------------------------------------
# Configuration and values
# ---------------------------------------------------------------------------

# py-libp2p's pubsub frames (one RPC, holding a message plus its signature,
# key, origin, seqno, topic and the sender's signed peer record) are capped at
# 1 MiB on the way out: every per-peer ``RpcQueue`` is built with the module
# default ``DefaultMaxMessageSize`` (libp2p/pubsub/rpc_queue.py; the same 1 MiB
# as go-libp2p-pubsub's DefaultMaxMessageSize) and oversized RPCs are dropped
# silently. A payload must leave room for that envelope: 16 KiB is far more
# than it takes (measured: 700 bytes with a 256-byte topic and two listen
# addresses in the signed peer record; topics are capped at _MAX_TOPIC_BYTES).
_GOSSIP_FRAME_LIMIT = DefaultMaxMessageSize
_GOSSIP_ENVELOPE_RESERVE = 16 * KiB
# Topic names are ours to choose ("rgrid/<federation>/feed"); 256 bytes is ample
# and keeps the envelope reserve above honest.
_MAX_TOPIC_BYTES = 256


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """GossipSub parameters. Each default names where its value comes from."""

    # Mesh degree D, D_lo, D_hi: the GossipSub v1.0 spec's defaults (6, 4, 12),
    # also go-libp2p-pubsub's GossipSubD/Dlo/Dhi.
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    # Heartbeat: the spec and go-libp2p-pubsub use 1 s. py-libp2p 0.8.1
    # defaults to 120 s, which makes mesh repair and IHAVE gossip (how a peer
    # that missed a message gets it) take minutes: wrong for a changefeed
    # (DESIGN.md, "Notes on dependencies").
    heartbeat_interval: float = 1.0
    # First heartbeat 100 ms after start: go-libp2p-pubsub's
    # GossipSubHeartbeatInitialDelay (py-libp2p uses the same 0.1 s).
    heartbeat_initial_delay: float = 0.1
    # Message cache: gossip about the last 3 heartbeats, keep 5 (spec
    # mcache_gossip=3, mcache_len=5; py-libp2p's defaults too).
    gossip_window: int = 3
    gossip_history: int = 5
    # Fanout TTL 60 s and PRUNE backoff 60 s: the spec's fanout_ttl and
    # go-libp2p-pubsub's GossipSubPruneBackoff (1 min), both py-libp2p's
    # defaults. Unsubscribe backoff 10 s: go-libp2p-pubsub's
    # GossipSubUnsubscribeBackoff, py-libp2p's default.
    fanout_ttl: int = 60
    prune_back_off: int = 60
    unsubscribe_back_off: int = 10
    # py-libp2p's spam guard counts messages per *forwarder* per topic, and our
    # own publishes count as forwarded by us: its default of 10/s throttles the
    # node's own changefeed (a bulk import publishes far more than 10 batches
    # a second) and silently drops the rest (DESIGN.md). Every message is
    # signed (strict signing) and every payload is a signed envelope checked by
    # policy upstream, so this guard is only a runaway-flood stop: 10_000/s is
    # 20-100x what py-libp2p can carry here at all (DESIGN.md: ~450 small
    # messages/s between two hosts; measured here under load: 90-240/s), so it
    # never bites honest peers.
    max_messages_per_topic_per_second: float = 10_000.0
    # Largest payload publish() accepts and validators let through: the 1 MiB
    # pubsub frame limit (see _GOSSIP_FRAME_LIMIT) less the envelope reserve.
    max_message_bytes: int = _GOSSIP_FRAME_LIMIT - _GOSSIP_ENVELOPE_RESERVE
    # Our own per-subscriber channel: 1024 messages is 32x py-libp2p's 32-slot
    # channel; at ~450 messages/s (the most py-libp2p carries here) a consumer
    # may stall about 2 s before anything is dropped.
    channel_size: int = 1024
    # Publish pacing: wait while any topic peer's outbound RPC queue holds this
    # many RPCs. The queue holds 32 (py-libp2p OutBoundQueueSize) and each
    # message can queue 2 RPCs per peer (message, IDONTWANT), so half leaves
    # room for a few concurrent publishers and the router's control traffic.
    publish_queue_high_water: int = 16
    # How long a publish waits for a peer's queue to drain before it gives up
    # on that peer for `slow_peer_skip_seconds`. A healthy loopback peer drains
    # 16 RPCs in about 0.1 s even on a loaded 2-core machine (measured); py-libp2p
    # itself drops a peer whose yamux window stays shut for 5 s (yamux.py), so
    # 2 s is "slow", not "dead". The skip lasts 10 heartbeats, then it is retried.
    publish_backpressure_timeout: float = 2.0
    slow_peer_skip_seconds: float = 10.0
    # Protocols offered: meshsub 1.1 only. go- and js-libp2p speak it (DESIGN.md:
    # interop checked on 1.1 and 1.2), and 1.2 costs us double: py-libp2p sends
    # an IDONTWANT for *every* message on 1.2 (go only above 1 KiB), measured
    # ~6.8 ms of CPU per message vs ~3.4 ms on 1.1, and 300 messages in ~2.8 s
    # vs ~1.3 s. Offering 1.2 at all would let a peer that prefers it pull us
    # onto it. Our gossip messages are batches, so IDONTWANT would save little.
    # py-libp2p also has 1.3/1.4/2.0 variants no other implementation speaks.
    protocols: tuple[str, ...] = ("/meshsub/1.1.0",)

    def __post_init__(self) -> None:
        if not 0 < self.degree_low <= self.degree <= self.degree_high:
            raise ValueError("need 0 < degree_low <= degree <= degree_high")
        if self.heartbeat_interval <= 0 or self.heartbeat_initial_delay < 0:
            raise ValueError("heartbeat_interval must be > 0, initial delay >= 0")
        if not 0 < self.max_message_bytes <= _GOSSIP_FRAME_LIMIT - _GOSSIP_ENVELOPE_RESERVE:
            raise ValueError(
                "max_message_bytes must be in (0, "
                f"{_GOSSIP_FRAME_LIMIT - _GOSSIP_ENVELOPE_RESERVE}]: py-libp2p drops "
                f"pubsub frames over {_GOSSIP_FRAME_LIMIT} bytes"
            )
        if self.channel_size < 1 or self.publish_queue_high_water < 1:
            raise ValueError("channel_size and publish_queue_high_water must be >= 1")
        if self.max_messages_per_topic_per_second <= 0:
            raise ValueError("max_messages_per_topic_per_second must be > 0")
        if not self.protocols:
            raise ValueError("protocols must not be empty")


class _Pubsub(Pubsub):
    """py-libp2p's Pubsub with three repairs.

    * ``notify_subscriptions`` does what py-libp2p 0.8.1's does
      (``send_nowait`` into each subscribed topic's 32-slot channel; a full
      channel drops) and also counts the drop, so the loss shows in
      ``P2PHost.stats``.
    * ``write_msg`` holds a lock per stream. py-libp2p writes to a peer's
      pubsub stream from its sending loop *and* directly, from the router's
      flush of identify-pending messages and its replay of recent messages to
      a newly subscribed peer. Yamux takes its write lock per frame (at most
      64 KiB, less when the flow-control window is short), so two concurrent
      writes of a large RPC interleave on the wire and the receiver fails with
      ``DecodeError: Error parsing message with type 'pubsub.pb.RPC'`` -- an
      error py-libp2p does not catch, which stops the receiver's whole swarm.
      Seen here with a ~1 MiB message published right after the peer
      subscribed.
    * ``stream_handler`` forgets a peer whose stream failed with an error
      py-libp2p does not catch (that same ``DecodeError``, which a hostile
      peer sends on purpose).
    """

    def __init__(self, *args: Any, on_drop: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_drop = on_drop
        self._write_locks: weakref.WeakKeyDictionary[INetStream, trio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        lock = self._write_locks.get(stream)
        if lock is None:
            lock = self._write_locks[stream] = trio.Lock()
        async with lock:
            return await super().write_msg(stream, rpc_msg)

    async def stream_handler(self, stream: INetStream) -> None:
        """py-libp2p's, and a peer whose stream failed otherwise (a frame
        that is no protobuf RPC: ``DecodeError``, which py-libp2p lets
        escape) is also forgotten as a pubsub peer, as py-libp2p does for
        the errors it catches. The error goes on to the host, which resets
        the stream and counts it against the peer (``P2PHost._contain_stream``)."""
        try:
            await super().stream_handler(stream)
        except Exception:
            self._handle_dead_peer(stream.muxed_conn.peer_id)
            raise

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        for topic in publish_message.topicIDs:
            channel = self.subscribed_topics_send.get(topic)
            if channel is None:
                continue
            try:
                channel.send_nowait(publish_message)
            except trio.WouldBlock:
                self._on_drop(topic)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


class _Topic:
    __slots__ = ("senders", "subscription")

    def __init__(self, subscription: Any) -> None:
        self.subscription = subscription
        self.senders: list[trio.MemorySendChannel[GossipMessage]] = []



class PubsubSide:
    """Topics, validators, publishing with backpressure (mixed into P2PHost)."""

    @staticmethod
    def _check_topic(topic: str) -> None:
        if not isinstance(topic, str) or not topic:
            raise ValueError("topic must be a non-empty string")
        if len(topic.encode("utf-8")) > _MAX_TOPIC_BYTES:
            raise ValueError(f"topic longer than {_MAX_TOPIC_BYTES} bytes")

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[GossipMessage]:
        """Subscribe; return a new bounded channel of other peers' messages.

        Each call returns its own channel (every channel gets every message).
        Our own publishes are not delivered. The channel ends when the host
        stops or :meth:`unsubscribe` is called. Order is not guaranteed:
        py-libp2p handles each received message in a task of its own (use
        ``seqno`` per origin, or the payload's own sequence numbers).
        """
        nursery = self._require_running()
        self._check_topic(topic)
        send, recv = trio.open_memory_channel[GossipMessage](self.gossip_config.channel_size)
        async with self._subscribe_lock:  # one drain per topic, even when racing
            entry = self._topics.get(topic)
            if entry is None:
                self._install_validator(topic)
                subscription = await self._pubsub.subscribe(topic)
                entry = _Topic(subscription)
                self._topics[topic] = entry
                nursery.start_soon(self._drain, topic, entry)
            entry.senders.append(send)
        return recv

    async def unsubscribe(self, topic: str) -> None:
        """Leave the topic; every channel subscribe() gave for it ends."""
        self._require_running()
        async with self._subscribe_lock:
            entry = self._topics.pop(topic, None)
            if entry is None:
                return
            for sender in entry.senders:
                sender.close()
            entry.senders.clear()
            await self._pubsub.unsubscribe(topic)

    async def _drain(self, topic: str, entry: _Topic) -> None:
        """Empty py-libp2p's 32-slot channel as fast as it fills. Nothing slow here."""
        stats = self.stats
        own = self._id_bytes
        async for msg in entry.subscription.receive_channel:
            if msg.from_id == own:
                stats["gossip_own_skipped"] += 1
                continue
            stats["gossip_received"] += 1
            item = GossipMessage(
                topic=topic,
                data=msg.data,
                from_peer=_b58(msg.from_id),
                seqno=int.from_bytes(msg.seqno, "big"),
            )
            for sender in list(entry.senders):
                try:
                    sender.send_nowait(item)
                except trio.WouldBlock:
                    stats["gossip_dropped"] += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    entry.senders.remove(sender)

    def _on_upstream_drop(self, topic: str) -> None:
        self.stats["gossip_dropped_upstream"] += 1
        logger.warning("p2p: py-libp2p subscription channel full, dropped a message on %s", topic)

    def set_topic_validator(self, topic: str, validator: TopicValidator) -> None:
        """Validate every message on ``topic``: ``validator(origin_peer_id, data) -> accept?``.

        Runs inside py-libp2p's receive path (and before our own publishes),
        so it must be quick and must not block; an exception counts as a
        rejection. Rejected messages are neither delivered nor forwarded.
        See the module docstring for what a rejection does to the sender's
        gossip score (nothing, with py-libp2p 0.8.1's defaults).
        """
        self._check_topic(topic)
        self._validators[topic] = validator
        self._install_validator(topic)

    def _install_validator(self, topic: str) -> None:
        self._pubsub.set_topic_validator(
            topic, functools.partial(self._validate, topic), is_async_validator=False
        )

    def _validate(self, topic: str, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        if forwarder == self._id and msg.from_id == self._id_bytes:
            return True  # our own publish, already checked in publish()
        if len(msg.data) > self.gossip_config.max_message_bytes:
            self.stats["gossip_rejected"] += 1
            return False
        validator = self._validators.get(topic)
        if validator is None:
            return True
        if self._run_validator(validator, _b58(msg.from_id), msg.data):
            return True
        self.stats["gossip_rejected"] += 1
        return False

    def _run_validator(self, validator: TopicValidator, origin: str, data: bytes) -> bool:
        try:
            return bool(validator(origin, data))
        except Exception:
            logger.exception("p2p: topic validator raised; rejecting the message")
            return False

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and publish ``data`` on ``topic`` (subscribed or not).

        Waits while the topic peers' outbound queues are full (see the module
        docstring). Raises :class:`MessageTooLarge`, :class:`MessageRejected`
        (our own validator said no) or :class:`PublishFailed`.
        """
        self._require_running()
        self._check_topic(topic)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("data must be bytes")
        data = bytes(data)
        limit = self.gossip_config.max_message_bytes
        if len(data) > limit:
            raise MessageTooLarge(
                f"gossip payload of {len(data)} bytes is over the {limit}-byte limit",
                details={"size": len(data), "limit": limit},
            )
        validator = self._validators.get(topic)
        if validator is not None and not self._run_validator(validator, self.peer_id, data):
            raise MessageRejected(f"our validator for {topic!r} rejects this payload")
        await self._wait_for_outbound_room(topic)
        try:
            await self._pubsub.publish(topic, data)
        except Exception as exc:
            raise PublishFailed(f"publish on {topic!r} failed: {exc}") from exc
        self.stats["gossip_published"] += 1

    async def _wait_for_outbound_room(self, topic: str) -> None:
        cfg = self.gossip_config
        high_water = cfg.publish_queue_high_water
        queues = self._pubsub.peer_queues

        def congested() -> list[ID]:
            now = trio.current_time()
            subscribed = self._pubsub.peer_topics.get(topic)
            if subscribed is None:
                # Not known to anyone yet: fanout/pending picks from all peers.
                candidates = list(queues)
            else:
                candidates = [p for p in subscribed if p in queues]
            out = []
            for peer in candidates:
                queue = queues.get(peer)
                if queue is None or queue.closed or len(queue) < high_water:
                    continue
                until = self._slow_peers.get(peer)
                if until is not None:
                    if until > now:
                        continue
                    del self._slow_peers[peer]
                out.append(peer)
            return out

        if not congested():
            return
        self.stats["gossip_backpressure_waits"] += 1
        deadline = trio.current_time() + cfg.publish_backpressure_timeout
        spins = 0
        while True:
            # The sender tasks need only a few scheduler passes per RPC:
            # yield without sleeping first, then back off to 1 ms naps.
            await trio.sleep(0 if spins < 64 else 0.001)
            spins += 1
            stuck = congested()
            if not stuck:
                return
            if trio.current_time() >= deadline:
                self.stats["gossip_backpressure_timeouts"] += 1
                until = trio.current_time() + cfg.slow_peer_skip_seconds
                for peer in stuck:
                    self._slow_peers[peer] = until
                logger.warning(
                    "p2p: %d peer(s) not draining gossip on %s; skipping them for %.0f s",
                    len(stuck),
                    topic,
                    cfg.slow_peer_skip_seconds,
                )
                return

    def topic_peers(self, topic: str) -> list[str]:
        """Peers known to be subscribed to ``topic``."""
        if self._state != "running":
            return []
        return [p.to_base58() for p in self._pubsub.peer_topics.get(topic, ())]

    async def wait_for_mesh_peer(self, topic: str, peer_id: str, timeout: float = 5.0) -> None:
        """Wait until our publishes on ``topic`` go straight to ``peer_id``.

        That is: the peer has told us it subscribed, and, if we are
        subscribed too, it is in our GossipSub mesh for the topic (if we are
        not, publishes go to it as a fanout peer). Before that a message may
        still reach it, but a heartbeat later by IHAVE/IWANT gossip, or not
        at all if it was published before the peer subscribed.
        Raises ``trio.TooSlowError`` after ``timeout``.
        """
        self._require_running()
        peer = _parse_peer_id(peer_id)
        with trio.fail_after(timeout):
            await self._pubsub.wait_for_subscription(peer, topic, timeout=math.inf)
            if topic in self._topics:
                await self._pubsub.wait_for_mesh(peer, topic, timeout=math.inf)

    # -- request / response -------------------------------------------------

