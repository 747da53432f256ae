"""A small trio-native wrapper around one py-libp2p 0.8.1 host.

The federation layer moves bytes with it and nothing else: this module knows
nothing about registries, envelopes or sync. It gives

* an identity from a 32-byte Ed25519 seed (the node's own key, so its
  ``did:key`` and its peer ID name one key),
* TCP, Noise, a stream muxer (yamux preferred, mplex as fallback),
* GossipSub (meshsub 1.2 and 1.1, strict signing) with a drained, bounded
  subscription channel per topic,
* one-request/one-response protocols with size caps on both sides,
* connection events, so the federation can sync on connect and redial on
  disconnect.

Choices, checked against py-libp2p 0.8.1 on loopback (see the tests):

Security and muxer.
    ``libp2p.new_host`` offers, by default, Noise, TLS, SECIO *and plaintext*
    security, with yamux then mplex. Offering plaintext lets any peer that
    asks for it talk to us unencrypted and unauthenticated, and SECIO is
    deprecated across libp2p. We pass ``sec_opt`` with Noise alone (what
    go-, js- and rust-libp2p all speak) and ``muxer_opt`` with yamux first and
    mplex second, explicitly, so a change of library defaults cannot change
    what we offer. Yamux has per-stream flow control; mplex (deprecated in
    the libp2p specs) has none, and py-libp2p's mplex stream cannot read and
    write at once, so it is only the fallback for peers that speak nothing
    else (tested against an mplex-only py-libp2p peer).

Request/response.
    py-libp2p 0.8.1 ships ``libp2p.request_response``; we tried it first. Its
    exchanges work up to a few MiB but a response of 8 MiB fails with
    ``RequestTransportError`` caused by ``IncompleteReadError: expected
    8388608 bytes but received 6814492``: it reads a frame with
    ``libp2p.io.utils.read_exactly``, which gives up after 100 partial reads,
    and a yamux stream hands over at most about 64 KiB per read. Sync batches
    must reach 8 MiB, so this module frames its own exchange over a raw stream
    with ``libp2p.utils.varint`` helpers (``read_varint_prefixed_bytes_limited``
    checks the length prefix against the cap before reading the body and loops
    until the body is complete). A bare reset also cannot tell the requester
    *why* the responder refused (its handler failed, the request was too large,
    it was busy), so the response carries a status byte. The wire format, per
    stream (one stream per request):

        requester -> responder:  uvarint(len) request
        responder -> requester:  status(1 byte) uvarint(len) body

    status 0 is OK and the body is the response (at most ``max_response_bytes``
    of the *requester*); any other status is a refusal whose body is a short
    UTF-8 reason (at most ``_MAX_REASON_BYTES``): 1 the handler failed,
    2 the request is over the responder's cap, 3 the response would be over the
    responder's cap, 4 the responder is at its limit of concurrent requests.
    On yamux the requester writes its request and reads the answer
    concurrently, so a responder that refuses an oversized request early is
    heard even while the request is still being written. A requester that
    resets the stream (timeout, cancellation) cancels the responder's handler.
    Any libp2p peer can speak this with a varint reader (see the tests).

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

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
import functools
import logging
import math
import os
import socket
from types import TracebackType
from typing import Any, Literal
import weakref

from multiaddr import Multiaddr
import trio

from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.exceptions import StreamFailure
from libp2p.io.exceptions import MessageTooLarge as _Libp2pMessageTooLarge
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.protocol_muxer.exceptions import (
    MultiselectClientError,
    ProtocolNotSupportedError as _MultiselectProtocolNotSupported,
)
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import DefaultMaxMessageSize
from libp2p.security.noise.transport import (
    PROTOCOL_ID as NOISE_PROTOCOL_ID,
    Transport as NoiseTransport,
)
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID, Yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.address_validation import expand_wildcard_address
from libp2p.utils.varint import (
    encode_varint_prefixed,
    read_varint_prefixed_bytes_limited,
)

from registrygrid.errors import EX_TEMPFAIL, RegistryError

__all__ = [
    "DialFailed",
    "GossipConfig",
    "GossipMessage",
    "MessageRejected",
    "MessageTooLarge",
    "NotRunning",
    "P2PError",
    "P2PHost",
    "PeerEvent",
    "PeerUnreachable",
    "ProtocolNotSupported",
    "PublishFailed",
    "RemoteBusy",
    "RemoteError",
    "RequestFailed",
    "RequestTimeout",
    "RequestTooLarge",
    "ResponseTooLarge",
    "StartFailed",
    "open_p2p_host",
    "peer_id_from_seed",
]

logger = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class P2PError(RegistryError):
    """Base of every error this module raises on purpose."""

    code = "p2p_error"
    http_status = 502
    exit_code = EX_TEMPFAIL


class NotRunning(P2PError):
    """The host is not started yet, or already stopped."""

    code = "p2p_not_running"
    http_status = 503


class StartFailed(P2PError):
    """The host could not start (for example, the listen port is taken)."""

    code = "p2p_start_failed"
    http_status = 503


class DialFailed(P2PError):
    """A connection to a peer could not be made (bad address, refused, timeout, wrong peer)."""

    code = "p2p_dial_failed"


class PublishFailed(P2PError):
    code = "p2p_publish_failed"


class MessageTooLarge(PublishFailed):
    """A gossip payload is over ``GossipConfig.max_message_bytes``."""

    code = "p2p_message_too_large"
    http_status = 413


class MessageRejected(PublishFailed):
    """Our own topic validator rejected a payload we were asked to publish."""

    code = "p2p_message_rejected"
    http_status = 422


class RequestFailed(P2PError):
    """A request got no response. Subclasses say why."""

    code = "p2p_request_failed"


class PeerUnreachable(RequestFailed):
    """No connection to the peer and none could be opened (unknown peer, no address)."""

    code = "p2p_peer_unreachable"


class ProtocolNotSupported(RequestFailed):
    """The peer does not speak the requested protocol."""

    code = "p2p_protocol_not_supported"


class RequestTimeout(RequestFailed):
    code = "p2p_request_timeout"
    http_status = 504


class RemoteError(RequestFailed):
    """The peer answered with a refusal: its handler failed (``reason`` says what it chose to tell)."""

    code = "p2p_remote_error"


class RemoteBusy(RemoteError):
    """The peer is at its limit of concurrent inbound requests; retry later."""

    code = "p2p_remote_busy"
    http_status = 503


class RequestTooLarge(RequestFailed):
    """A request is over a cap: ours (raised before sending) or the peer's (its refusal).

    The responder side counts the refusal in ``stats['requests_refused_too_large']``
    and logs it with this class's name.
    """

    code = "p2p_request_too_large"
    http_status = 413


class ResponseTooLarge(RequestFailed):
    """A response is over a cap: the requester's (it stops reading) or the responder's."""

    code = "p2p_response_too_large"
    http_status = 502


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


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """One gossip message as a subscriber sees it.

    ``from_peer`` is the *origin* (the peer that published and signed it, as
    checked by strict signing), not the neighbour that forwarded it.
    """

    topic: str
    data: bytes
    from_peer: str
    seqno: int


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A peer's first connection opened ("connected") or its last one closed ("disconnected")."""

    kind: Literal["connected", "disconnected"]
    peer_id: str


RequestHandler = Callable[[str, bytes], Awaitable[bytes]]
TopicValidator = Callable[[str, bytes], bool]

# Request/response defaults.
# Requests are small (version vectors, queries): 1 MiB, the same order as
# py-libp2p's RequestResponseConfig.max_request_size (1 MiB).
DEFAULT_MAX_REQUEST_BYTES = 1 * MiB
# Responses carry sync batches of up to 8 MiB (the federation's batch cap);
# py-libp2p's RequestResponseConfig.max_response_size is 10 MiB.
DEFAULT_MAX_RESPONSE_BYTES = 8 * MiB
# 30 s: an 8 MiB response over a 10 Mbit/s link takes ~7 s; py-libp2p's
# RequestResponseConfig uses 10 s for its smaller default exchanges.
DEFAULT_REQUEST_TIMEOUT = 30.0
# Concurrent inbound requests served at once (more are refused as busy).
# py-libp2p's RequestResponseConfig.max_concurrent_inbound is 128 per
# protocol; 64 across all protocols keeps a 2-core node responsive.
DEFAULT_MAX_INBOUND_REQUESTS = 64
# Graceful shutdown budget before we cancel py-libp2p's tasks outright.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
# Per peer_events() subscriber: events are rare (one per connection change);
# 256 outlasts any reconnect storm a consumer is likely to fall behind on.
_PEER_EVENT_CHANNEL_SIZE = 256
# Refusal reasons are short human text; the requester reads at most this much.
_MAX_REASON_BYTES = 1 * KiB

_STATUS_OK = 0
_STATUS_HANDLER_ERROR = 1
_STATUS_REQUEST_TOO_LARGE = 2
_STATUS_RESPONSE_TOO_LARGE = 3
_STATUS_BUSY = 4

_STAT_KEYS = (
    "gossip_published",
    "gossip_received",
    "gossip_own_skipped",
    "gossip_dropped",
    "gossip_dropped_upstream",
    "gossip_rejected",
    "gossip_backpressure_waits",
    "gossip_backpressure_timeouts",
    "requests_sent",
    "requests_failed",
    "requests_served",
    "requests_handler_errors",
    "requests_refused_too_large",
    "requests_refused_busy",
    "requests_inbound_failed",
    "peer_events_dropped",
)


def peer_id_from_seed(seed: bytes) -> str:
    """The peer ID (``12D3KooW...``) of the Ed25519 key with this 32-byte seed."""
    _check_seed(seed)
    return ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58()


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
        raise ValueError("seed must be 32 bytes (an Ed25519 private key seed)")


@functools.lru_cache(maxsize=4096)
def _b58(peer_bytes: bytes) -> str:
    return ID(peer_bytes).to_base58()


def _parse_peer_id(peer_id: str) -> ID:
    try:
        return ID.from_base58(peer_id)
    except Exception as exc:
        raise PeerUnreachable(f"not a peer id: {peer_id!r}") from exc


def _split_errors(
    exc: BaseException,
) -> tuple[BaseException | None, BaseException | None]:
    """Split into (Exception parts, everything else such as Cancelled)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(Exception)
    if isinstance(exc, Exception):
        return exc, None
    return None, exc


# ---------------------------------------------------------------------------
# py-libp2p adapters
# ---------------------------------------------------------------------------


class _Pubsub(Pubsub):
    """py-libp2p's Pubsub with two repairs.

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


class _PeerNotifee(INotifee):
    def __init__(self, owner: P2PHost) -> None:
        self._owner = owner

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._owner._on_conn_opened(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._owner._on_conn_closed(conn.muxed_conn.peer_id, network)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass


class _Topic:
    __slots__ = ("subscription", "senders")

    def __init__(self, subscription: Any) -> None:
        self.subscription = subscription
        self.senders: list[trio.MemorySendChannel[GossipMessage]] = []


# ---------------------------------------------------------------------------
# The host
# ---------------------------------------------------------------------------


class P2PHost:
    """One libp2p host: identity from a 32-byte Ed25519 seed, TCP, Noise,
    yamux (mplex fallback), GossipSub, and request/response protocols.

    Use as ``async with P2PHost(seed, ["/ip4/127.0.0.1/tcp/0"]) as host:``
    (or :func:`open_p2p_host`). A host runs once: it cannot be restarted
    after it has stopped. Handlers and validators may be set before start.
    """

    def __init__(
        self,
        seed: bytes,
        listen: Sequence[str],
        *,
        gossip: GossipConfig = GossipConfig(),
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_inbound_requests: int = DEFAULT_MAX_INBOUND_REQUESTS,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        _check_seed(seed)
        if max_request_bytes <= 0 or max_response_bytes <= 0:
            raise ValueError("size caps must be > 0")
        if request_timeout <= 0 or shutdown_timeout <= 0 or max_inbound_requests <= 0:
            raise ValueError("timeouts and max_inbound_requests must be > 0")
        self._listen = [self._parse_listen_addr(a) for a in listen]
        if not self._listen:
            raise ValueError("listen must name at least one address")

        self.gossip_config = gossip
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self.request_timeout = request_timeout
        self._shutdown_timeout = shutdown_timeout
        self.stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)

        key_pair = create_new_key_pair(bytes(seed))
        self._id = ID.from_pubkey(key_pair.public_key)
        self._id_bytes = self._id.to_bytes()
        self.peer_id: str = self._id.to_base58()

        self._host = new_host(
            key_pair=key_pair,
            # Noise only: new_host's default also offers TLS, SECIO and
            # *plaintext*. The Noise static key is a fresh X25519 key per run;
            # the peer's identity is proven by the libp2p key signing it.
            sec_opt={
                NOISE_PROTOCOL_ID: NoiseTransport(
                    key_pair, noise_privkey=create_new_x25519_key_pair().private_key
                )
            },
            # yamux preferred (flow control, what go/js/rust default to),
            # mplex for peers that only speak it. Dict order is preference.
            muxer_opt={
                TProtocol(YAMUX_PROTOCOL_ID): Yamux,
                TProtocol(MPLEX_PROTOCOL_ID): Mplex,
            },
            listen_addrs=self._listen,
        )

        self._gossipsub = GossipSub(
            protocols=[TProtocol(p) for p in gossip.protocols],
            degree=gossip.degree,
            degree_low=gossip.degree_low,
            degree_high=gossip.degree_high,
            time_to_live=gossip.fanout_ttl,
            gossip_window=gossip.gossip_window,
            gossip_history=gossip.gossip_history,
            heartbeat_initial_delay=gossip.heartbeat_initial_delay,
            heartbeat_interval=gossip.heartbeat_interval,  # type: ignore[arg-type]
            prune_back_off=gossip.prune_back_off,
            unsubscribe_back_off=gossip.unsubscribe_back_off,
            max_messages_per_topic_per_second=gossip.max_messages_per_topic_per_second,
            # "Adaptive gossip" rewrites heartbeat_interval to 30-60 s whenever
            # its health score drops below 0.7, and a mesh smaller than D (any
            # federation of fewer than 7 nodes) scores low: it would undo the
            # 1 s heartbeat (gossipsub.py, _adapt_heartbeat_parameters).
            adaptive_gossip_enabled=False,
        )
        self._pubsub = _Pubsub(
            self._host,
            self._gossipsub,
            # Strict signing (py-libp2p's default, stated so it cannot drift):
            # js-libp2p peers drop unsigned messages, and the origin of every
            # message is authenticated (DESIGN.md).
            strict_signing=True,
            max_inbound_rpc_size=_GOSSIP_FRAME_LIMIT,
            on_drop=self._on_upstream_drop,
        )
        self._host.get_network().register_notifee(_PeerNotifee(self))

        self._handlers: dict[str, RequestHandler] = {}
        self._validators: dict[str, TopicValidator] = {}
        self._topics: dict[str, _Topic] = {}
        self._event_senders: list[trio.MemorySendChannel[PeerEvent]] = []
        self._live_peers: set[ID] = set()
        self._slow_peers: dict[ID, float] = {}
        self._inbound_limiter = trio.Semaphore(max_inbound_requests)
        self._subscribe_lock = trio.Lock()

        self._state: Literal["new", "starting", "running", "failed", "stopping", "stopped"] = "new"
        # Set if py-libp2p stopped under us with an error (it is also logged).
        self.error: BaseException | None = None
        self._nursery: trio.Nursery | None = None  # our tasks (drains), inside libp2p's
        self._outer_cm: Any = None
        self._outer_nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._finished = trio.Event()
        self._start_error: BaseException | None = None

    @property
    def libp2p_host(self) -> Any:
        """The py-libp2p host, for services that share this host and its
        identity (the Kademlia DHT, node/dht.py)."""
        return self._host

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> P2PHost:
        if self._state != "new":
            raise NotRunning("a P2PHost runs once; make a new one")
        self._state = "starting"
        try:
            self._check_ports_free()
        except StartFailed:
            self._state = "stopped"
            raise
        self._outer_cm = trio.open_nursery()
        self._outer_nursery = await self._outer_cm.__aenter__()
        try:
            await self._outer_nursery.start(self._run)
        except BaseException:
            await self._close_outer()
            self._state = "stopped"
            raise
        if self._start_error is not None:
            await self._close_outer()
            self._state = "stopped"
            if isinstance(self._start_error, StartFailed):
                raise self._start_error
            raise StartFailed(
                f"libp2p host failed to start: {self._start_error!r}"
            ) from self._start_error
        logger.info("p2p host %s listening on %s", self.peer_id, self.listen_addrs())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        await self.aclose()
        return False

    async def aclose(self) -> None:
        """Stop the host: close connections and listeners, end every task.

        Bounded by ``shutdown_timeout``: if py-libp2p's graceful stop takes
        longer, its tasks are cancelled. Never raises on a normal shutdown.
        Call it from the task that entered the host (``__aexit__`` does).
        """
        if self._outer_cm is None:
            return
        self._state = "stopping"
        self._stop.set()
        # Shielded (a cancelled caller still gets a clean stop) but bounded.
        # The outer nursery is exited *outside* this scope: a cancel scope
        # must close before the nursery that encloses it.
        with trio.CancelScope(shield=True), trio.move_on_after(self._shutdown_timeout):
            await self._finished.wait()
        if not self._finished.is_set():
            logger.warning(
                "p2p host %s: graceful stop took over %.1f s, cancelling",
                self.peer_id,
                self._shutdown_timeout,
            )
        try:
            await self._close_outer()
        finally:
            self._state = "stopped"

    async def _close_outer(self) -> None:
        assert self._outer_cm is not None and self._outer_nursery is not None
        self._outer_nursery.cancel_scope.cancel()
        try:
            await self._outer_cm.__aexit__(None, None, None)
        except BaseException as exc:
            errors, rest = _split_errors(exc)
            if errors is not None:
                logger.error("p2p host %s: errors at shutdown", self.peer_id, exc_info=errors)
            if rest is not None:
                raise rest
        finally:
            self._outer_cm = None

    async def _run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The host's own task: libp2p's services and our tasks live under it."""
        started = False
        try:
            async with self._host.run(listen_addrs=self._listen):
                # py-libp2p logs a failed listen and carries on without it.
                bound = self._host.get_transport_addrs()
                if len(bound) < len(self._listen):
                    raise StartFailed(
                        f"could listen on only {[str(a) for a in bound]} of "
                        f"{[str(a) for a in self._listen]}"
                    )
                # The federation decides whom to dial and when to redial.
                # py-libp2p's auto-connector dials any peerstore peer with a
                # public address while we hold fewer than 100 connections
                # (its low watermark), which would undo a deliberate
                # disconnect() and dial peers the federation never chose.
                await self._host.get_network().auto_connector.stop()
                async with background_trio_service(self._pubsub):
                    async with background_trio_service(self._gossipsub):
                        await self._pubsub.wait_until_ready()
                        async with trio.open_nursery() as nursery:
                            self._nursery = nursery
                            self._state = "running"
                            started = True
                            task_status.started()
                            await self._stop.wait()
                            nursery.cancel_scope.cancel()
                # Graceful stop: close connections while nothing is cancelled.
                # py-libp2p's own stop path (leaving host.run) closes them in a
                # cancelled `finally`, so the sockets are dropped without a
                # word and peers keep a dead connection until TCP notices.
                await self._close_connections()
                await self._host.close()
        except BaseException as exc:
            errors, rest = _split_errors(exc)
            if errors is not None:
                if started:
                    self.error = errors
                    logger.error(
                        "p2p host %s: libp2p stopped with errors", self.peer_id, exc_info=errors
                    )
                else:
                    self._start_error = errors
            if rest is not None:
                raise rest
        finally:
            self._nursery = None
            if self._state == "running":
                # libp2p stopped under us (not through aclose()): every
                # channel we gave out ends, and calls raise NotRunning.
                self._state = "failed"
            self._close_channels()
            self._finished.set()
            if not started and self._start_error is not None:
                task_status.started()

    def _check_ports_free(self) -> None:
        """Refuse a fixed port that another socket already listens on.

        py-libp2p's TCP listener sets SO_REUSEPORT, so a second host (or
        node) can bind the very same port and the kernel then splits the
        incoming connections between them. A probe bind without
        SO_REUSEPORT fails while any listener holds the port.
        """
        for addr in self._listen:
            family_name = addr.protocols()[0].name
            port = int(addr.value_for_protocol("tcp"))
            if port == 0:
                continue
            family = socket.AF_INET if family_name == "ip4" else socket.AF_INET6
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                if os.name == "posix":
                    # Lets the probe bind over our own TIME_WAIT sockets from a
                    # previous run; it still fails while anything listens.
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((addr.value_for_protocol(family_name), port))
                except OSError as exc:
                    raise StartFailed(f"cannot listen on {addr}: {exc.strerror}") from exc

    async def _close_connections(self) -> None:
        """Close every connection, concurrently: py-libp2p's SwarmConn.close
        sleeps 0.1 s each, and Swarm.close does them one after another."""
        network = self._host.get_network()

        async def close_one(conn: INetConn) -> None:
            try:
                await conn.close()
            except Exception:
                logger.debug("p2p: closing a connection at shutdown failed", exc_info=True)

        async with trio.open_nursery() as nursery:
            for conns in list(network.connections.values()):
                for conn in list(conns):
                    nursery.start_soon(close_one, conn)

    def _close_channels(self) -> None:
        for topic in self._topics.values():
            for sender in topic.senders:
                sender.close()
            topic.senders.clear()
        self._topics.clear()
        for sender in self._event_senders:
            sender.close()
        self._event_senders.clear()

    def _require_running(self) -> trio.Nursery:
        if self._state != "running" or self._nursery is None:
            raise NotRunning(f"p2p host is {self._state}")
        return self._nursery

    @property
    def running(self) -> bool:
        return self._state == "running"

    # -- addresses and connections -----------------------------------------

    @staticmethod
    def _parse_listen_addr(addr: str) -> Multiaddr:
        try:
            maddr = Multiaddr(addr)
        except Exception as exc:
            raise ValueError(f"not a multiaddr: {addr!r}") from exc
        names = [p.name for p in maddr.protocols()]
        if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
            raise ValueError(f"listen addresses must be /ip4|ip6/<addr>/tcp/<port>: {addr!r}")
        return maddr

    def listen_addrs(self) -> list[str]:
        """Dialable multiaddrs with ``/p2p/<peer id>``, with the real port.

        A wildcard listen address (0.0.0.0, ::) is expanded to the machine's
        interface addresses.
        """
        if self._state != "running":
            return []
        suffix = Multiaddr(f"/p2p/{self.peer_id}")
        out: list[str] = []
        for addr in self._host.get_transport_addrs():
            ip_proto = addr.protocols()[0].name  # ip4 or ip6, checked at __init__
            wildcard = addr.value_for_protocol(ip_proto) in ("0.0.0.0", "::")
            expanded = expand_wildcard_address(addr) if wildcard else [addr]
            for concrete in expanded:
                text = str(concrete.encapsulate(suffix))
                if text not in out:
                    out.append(text)
        return out

    async def connect(self, multiaddr: str, timeout: float = 5.0) -> str:
        """Dial a peer at a ``.../p2p/<peer id>`` multiaddr; return its peer ID.

        Returns at once if already connected. Raises :class:`DialFailed`.
        """
        self._require_running()
        try:
            info = info_from_p2p_addr(Multiaddr(multiaddr))
        except Exception as exc:
            raise DialFailed(
                f"not a dialable multiaddr with /p2p/<peer id>: {multiaddr!r}"
            ) from exc
        if info.peer_id == self._id:
            raise DialFailed("refusing to dial ourselves")
        try:
            with trio.fail_after(timeout):
                await self._host.connect(info)
        except trio.TooSlowError as exc:
            raise DialFailed(f"dial {multiaddr} timed out after {timeout} s") from exc
        except Exception as exc:
            raise DialFailed(f"dial {multiaddr} failed: {exc}") from exc
        peer = info.peer_id
        if not self._host.get_network().get_connections(peer):
            raise DialFailed(f"dial {multiaddr}: connection closed right after opening")
        return peer.to_base58()

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to the peer (no-op if none)."""
        self._require_running()
        peer = _parse_peer_id(peer_id)
        try:
            await self._host.disconnect(peer)
        except Exception as exc:
            logger.debug("disconnect %s: %r", peer_id, exc)

    def connected_peers(self) -> list[str]:
        if self._state != "running":
            return []
        return [p.to_base58() for p in self._host.get_connected_peers()]

    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        """A channel of connection events from now on; one per call.

        "connected" when a peer's first connection opens, "disconnected" when
        its last one closes. Bounded: a consumer that falls behind by
        256 events loses the newest ones (``stats['peer_events_dropped']``).
        The channel ends when the host stops.
        """
        self._require_running()
        send, recv = trio.open_memory_channel[PeerEvent](_PEER_EVENT_CHANNEL_SIZE)
        self._event_senders.append(send)
        return recv

    def _emit(self, event: PeerEvent) -> None:
        for sender in list(self._event_senders):
            try:
                sender.send_nowait(event)
            except trio.WouldBlock:
                self.stats["peer_events_dropped"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._event_senders.remove(sender)

    def _on_conn_opened(self, peer: ID) -> None:
        if peer not in self._live_peers:
            self._live_peers.add(peer)
            self._emit(PeerEvent("connected", peer.to_base58()))

    def _on_conn_closed(self, peer: ID, network: INetwork) -> None:
        # A peer may hold several connections (simultaneous dials); report
        # "disconnected" only when the last is gone. The swarm removes a
        # connection from its table before it notifies.
        if peer in self._live_peers and not network.get_connections(peer):
            self._live_peers.discard(peer)
            self._slow_peers.pop(peer, None)
            self._emit(PeerEvent("disconnected", peer.to_base58()))

    # -- gossip -------------------------------------------------------------

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

    def set_handler(self, protocol_id: str, handler: RequestHandler) -> None:
        """Serve ``protocol_id``: ``await handler(peer_id, request) -> response``.

        The request is at most ``max_request_bytes``; a response over
        ``max_response_bytes`` is refused. An exception in the handler is
        logged and the requester gets :class:`RemoteError` (with the error's
        ``code: message`` if it is a ``RegistryError``, else only its class
        name); the host keeps serving. Handlers run concurrently, at most
        ``max_inbound_requests`` at once.
        """
        if not isinstance(protocol_id, str) or not protocol_id.startswith("/"):
            raise ValueError("protocol_id must be a string starting with '/'")
        self._handlers[protocol_id] = handler
        self._host.set_stream_handler(
            TProtocol(protocol_id), functools.partial(self._serve, protocol_id)
        )

    def remove_handler(self, protocol_id: str) -> None:
        self._handlers.pop(protocol_id, None)
        self._host.remove_stream_handler(TProtocol(protocol_id))

    async def _serve(self, protocol_id: str, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        handler = self._handlers.get(protocol_id)
        if handler is None:
            await _reset(stream)
            return
        try:
            self._inbound_limiter.acquire_nowait()
        except trio.WouldBlock:
            self.stats["requests_refused_busy"] += 1
            try:
                await _refuse(stream, _STATUS_BUSY, "busy: too many concurrent requests", 1.0)
                await _close(stream)
            except Exception:
                await _reset(stream)
            return
        try:
            with trio.move_on_after(self.request_timeout) as scope:
                await self._serve_one(protocol_id, peer, handler, stream)
            if scope.cancelled_caught:
                self.stats["requests_inbound_failed"] += 1
                logger.warning(
                    "p2p: request %s from %s timed out after %.1f s",
                    protocol_id,
                    peer,
                    self.request_timeout,
                )
                await _reset(stream)
        except Exception as exc:
            self.stats["requests_inbound_failed"] += 1
            logger.info("p2p: request %s from %s failed: %r", protocol_id, peer, exc)
            await _reset(stream)
        finally:
            self._inbound_limiter.release()

    async def _serve_one(
        self, protocol_id: str, peer: str, handler: RequestHandler, stream: INetStream
    ) -> None:
        limit = self.request_timeout
        try:
            request = await read_varint_prefixed_bytes_limited(stream, self.max_request_bytes)
        except _Libp2pMessageTooLarge:
            self.stats["requests_refused_too_large"] += 1
            error = RequestTooLarge(
                f"request on {protocol_id} from {peer} is over {self.max_request_bytes} bytes"
            )
            logger.warning("p2p: %s: %s", type(error).__name__, error)
            await _refuse(
                stream,
                _STATUS_REQUEST_TOO_LARGE,
                f"request over {self.max_request_bytes} bytes",
                limit,
            )
            # FIN, not reset: the requester must read our refusal. Its
            # unread request bytes stay bounded by the yamux window.
            await _close(stream)
            return
        try:
            response = await self._run_handler(handler, peer, request, stream)
            if response is None:
                self.stats["requests_inbound_failed"] += 1
                logger.info("p2p: %s from %s: the requester gave up; handler cancelled",
                            protocol_id, peer)
                return
            if not isinstance(response, (bytes, bytearray, memoryview)):
                raise TypeError(f"handler returned {type(response).__name__}, not bytes")
        except Exception as exc:
            self.stats["requests_handler_errors"] += 1
            if isinstance(exc, RegistryError):
                # A typed refusal is an answer (a banned or non-member peer,
                # a bad request), not a crash: one line, no traceback.
                logger.info("p2p: %s from %s refused: %s: %s", protocol_id, peer, exc.code, exc.message)
                reason = f"{exc.code}: {exc.message}"
            else:
                logger.exception("p2p: handler for %s failed on a request from %s", protocol_id, peer)
                reason = f"handler error ({type(exc).__name__})"
            await _refuse(stream, _STATUS_HANDLER_ERROR, reason, limit)
            await _close(stream)
            return
        if len(response) > self.max_response_bytes:
            self.stats["requests_handler_errors"] += 1
            logger.error(
                "p2p: handler for %s produced %d bytes, over max_response_bytes=%d",
                protocol_id,
                len(response),
                self.max_response_bytes,
            )
            await _refuse(
                stream,
                _STATUS_RESPONSE_TOO_LARGE,
                f"response over the responder's {self.max_response_bytes}-byte cap",
                limit,
            )
            await _close(stream)
            return
        answer = bytes((_STATUS_OK,)) + encode_varint_prefixed(bytes(response))
        await _write(stream, answer, trio.current_time() + limit)
        await _close(stream)
        self.stats["requests_served"] += 1

    @staticmethod
    async def _run_handler(
        handler: RequestHandler, peer: str, request: bytes, stream: INetStream
    ) -> Any:
        """Run the handler; cancel it if the requester resets the stream or goes away.

        Returns None if it was cancelled that way. A requester that merely
        half-closes its side after the request (StreamEOF) is still waiting.
        """
        gone = False
        response: Any = None

        async def watch(scope: trio.CancelScope) -> None:
            nonlocal gone
            try:
                await stream.read(1)  # nothing more is expected from the requester
                return
            except StreamEOF:
                # py-libp2p's yamux reports a reset stream whose bookkeeping it
                # already dropped as EOF ("Stream closed"): look at the flag.
                if not getattr(stream.muxed_stream, "reset_received", False):
                    return
            except Exception:
                pass
            gone = True
            scope.cancel()

        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            try:
                response = await handler(peer, request)
            except Exception as exc:  # re-raised below, not wrapped in a group
                error = exc
            nursery.cancel_scope.cancel()
        if gone:
            return None
        if error is not None:
            raise error
        return response

    async def request(
        self,
        peer_id: str,
        protocol_id: str,
        data: bytes,
        timeout: float | None = None,
    ) -> bytes:
        """Send one request, return the response bytes.

        Opens a connection first if there is none and the peer's address is
        known. Raises :class:`RequestTooLarge`, :class:`ResponseTooLarge`,
        :class:`PeerUnreachable`, :class:`ProtocolNotSupported`,
        :class:`RequestTimeout`, :class:`RemoteError` (:class:`RemoteBusy`),
        or :class:`RequestFailed` for a broken exchange.
        """
        self._require_running()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("data must be bytes")
        data = bytes(data)
        self.stats["requests_sent"] += 1
        try:
            if len(data) > self.max_request_bytes:
                raise RequestTooLarge(
                    f"request of {len(data)} bytes is over max_request_bytes="
                    f"{self.max_request_bytes}",
                    details={"size": len(data), "limit": self.max_request_bytes},
                )
            peer = _parse_peer_id(peer_id)
            if peer == self._id:
                raise PeerUnreachable("refusing to send a request to ourselves")
            limit = self.request_timeout if timeout is None else timeout
            return await self._request(peer, protocol_id, data, limit)
        except BaseException:
            self.stats["requests_failed"] += 1
            raise

    async def _request(self, peer: ID, protocol_id: str, data: bytes, limit: float) -> bytes:
        stream: INetStream | None = None
        try:
            with trio.fail_after(limit):
                stream = await self._open_stream(peer, protocol_id)
                response = await self._exchange(stream, data, trio.current_time() + limit)
        except trio.TooSlowError as exc:
            await _reset(stream)
            raise RequestTimeout(
                f"request {protocol_id} to {peer.to_base58()} timed out after {limit} s"
            ) from exc
        except P2PError:
            await _reset(stream)
            raise
        except Exception as exc:
            await _reset(stream)
            raise RequestFailed(
                f"request {protocol_id} to {peer.to_base58()} failed: {exc!r}"
            ) from exc
        except BaseException:
            await _reset(stream)
            raise
        await _close(stream)
        return response

    async def _open_stream(self, peer: ID, protocol_id: str) -> INetStream:
        try:
            return await self._host.new_stream(peer, [TProtocol(protocol_id)])
        except StreamFailure as exc:
            cause = exc.__cause__
            if isinstance(cause, _MultiselectProtocolNotSupported) or (
                isinstance(cause, MultiselectClientError) and "not supported" in str(cause)
            ):
                raise ProtocolNotSupported(
                    f"{peer.to_base58()} does not speak {protocol_id}"
                ) from exc
            raise RequestFailed(f"could not open {protocol_id} to {peer.to_base58()}") from exc
        except Exception as exc:
            if not self._host.get_network().get_connections(peer):
                raise PeerUnreachable(
                    f"no connection to {peer.to_base58()} and none could be opened: {exc}"
                ) from exc
            raise RequestFailed(f"could not open a stream to {peer.to_base58()}: {exc}") from exc

    async def _exchange(self, stream: INetStream, data: bytes, deadline: float) -> bytes:
        """Write the request while reading the answer (see the module docstring).

        The writer is never cancelled (see ``_write``): when the answer is a
        refusal, or the request is cancelled or times out, the stream is
        reset, which ends a writer waiting for flow-control credit at the
        next frame boundary.
        """
        frame = encode_varint_prefixed(data)
        if not isinstance(stream.muxed_conn, Yamux):
            # py-libp2p's mplex stream holds a read/write lock whose readers
            # exclude writers, and a read waiting for data holds it: reading
            # while writing can deadlock (seen here: ~20% of requests to an
            # mplex-only peer hung). mplex has no flow control either, so the
            # whole request is written before the answer is read.
            await _write(stream, frame, deadline + _WRITE_GRACE)
            return await self._read_answer(stream)
        write_error: BaseException | None = None
        read_error: BaseException | None = None
        response = b""

        async def write() -> None:
            nonlocal write_error
            try:
                await _write(stream, frame, deadline + _WRITE_GRACE)
            except Exception as exc:
                write_error = exc

        # Errors are carried out of the nursery by hand so that they are not
        # wrapped in an ExceptionGroup.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            try:
                response = await self._read_answer(stream)
            except Exception as exc:
                read_error = exc
                await _reset(stream)
            except BaseException:
                await _reset(stream)
                raise
        if read_error is not None:
            if write_error is not None and not isinstance(read_error, P2PError):
                raise RequestFailed(f"stream broke while sending the request: {write_error!r}") from write_error
            raise read_error
        return response

    async def _read_answer(self, stream: INetStream) -> bytes:
        status = await stream.read(1)
        if not status:
            raise RequestFailed("the peer closed the stream without answering")
        code = status[0]
        if code == _STATUS_OK:
            try:
                return await read_varint_prefixed_bytes_limited(stream, self.max_response_bytes)
            except _Libp2pMessageTooLarge as exc:
                raise ResponseTooLarge(
                    f"response is over max_response_bytes={self.max_response_bytes}"
                ) from exc
        try:
            reason = (await read_varint_prefixed_bytes_limited(stream, _MAX_REASON_BYTES)).decode(
                "utf-8", "replace"
            )
        except Exception:
            reason = "(no reason given)"
        if code == _STATUS_REQUEST_TOO_LARGE:
            raise RequestTooLarge(f"the peer refused the request: {reason}")
        if code == _STATUS_RESPONSE_TOO_LARGE:
            raise ResponseTooLarge(f"the peer refused to answer: {reason}")
        if code == _STATUS_BUSY:
            raise RemoteBusy(f"the peer is busy: {reason}")
        if code == _STATUS_HANDLER_ERROR:
            raise RemoteError(f"the peer's handler failed: {reason}", details={"reason": reason})
        raise RequestFailed(f"the peer answered with unknown status {code}")


# Writes and cancellation. py-libp2p sends a yamux frame as one or more Noise
# messages through the socket's send_all; a cancel scope that fires in the
# middle leaves part of a frame on the wire, and every later frame on that
# connection is misread. Seen in these tests: cancelling a request's writer
# when the responder refused early broke the *next* stream on the connection
# ("handshake read failed"). So no write here is ever cut by a cancel scope:
# writes, closes and resets run shielded, bounded by deadlines of their own.
# Yamux waits for flow-control credit between frames (safe to stop there, and
# a stream reset stops it) and gives up after 5 s of no credit (yamux.py), so
# a write only outlives its request by the time to finish one frame; if its
# own deadline still trips, the connection may hold half a frame and is closed.
_WRITE_GRACE = 5.0
# Closing (FIN) and resetting (RST) a stream each write one 12-byte frame.
_CONTROL_FRAME_LIMIT = 2.0


class _WriteStalled(Exception):
    """A write did not finish by its deadline; its connection was closed."""


async def _write(stream: INetStream, data: bytes, deadline: float) -> None:
    with trio.CancelScope(shield=True, deadline=deadline) as scope:
        await stream.write(data)
    if scope.cancelled_caught:
        await _drop_connection(stream)
        raise _WriteStalled("write stalled; connection closed")


async def _refuse(stream: INetStream, status: int, reason: str, limit: float) -> None:
    body = reason.encode("utf-8")[:_MAX_REASON_BYTES]
    await _write(stream, bytes((status,)) + encode_varint_prefixed(body), trio.current_time() + limit)


async def _drop_connection(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(_CONTROL_FRAME_LIMIT):
        try:
            await stream.muxed_conn.close()
        except Exception:
            logger.debug("p2p: closing a stalled connection failed", exc_info=True)


async def _reset(stream: INetStream | None) -> None:
    if stream is None:
        return
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + _CONTROL_FRAME_LIMIT
        try:
            await stream.reset()
        except Exception:
            logger.debug("p2p: stream reset failed", exc_info=True)
    if scope.cancelled_caught:
        await _drop_connection(stream)


async def _close(stream: INetStream) -> None:
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + _CONTROL_FRAME_LIMIT
        try:
            await stream.close()
        except Exception:
            logger.debug("p2p: stream close failed", exc_info=True)
    if scope.cancelled_caught:
        await _drop_connection(stream)


def open_p2p_host(
    seed: bytes,
    listen: Sequence[str],
    **options: Any,
) -> P2PHost:
    """``async with open_p2p_host(seed, listen, ...) as host:`` — same as ``P2PHost(...)``."""
    return P2PHost(seed, listen, **options)
