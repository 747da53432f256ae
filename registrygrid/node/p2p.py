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

The request/response side is node/p2p_requests.py and the gossip side
node/p2p_pubsub.py (each says what it chose and why); node/transport.py
holds the interface this host implements, its errors and its types.
"""


from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal

import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.security.noise.transport import (
    PROTOCOL_ID as NOISE_PROTOCOL_ID,
)
from libp2p.security.noise.transport import (
    Transport as NoiseTransport,
)
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.tools.anyio_service.exceptions import LifecycleError
from libp2p.utils.address_validation import expand_wildcard_address
from multiaddr import Multiaddr

from registrygrid.node.p2p_base import (
    _STAT_KEYS,
    _check_seed,
    _parse_peer_id,
    _split_errors,
    peer_id_from_seed,
)
from registrygrid.node.p2p_pubsub import (
    _GOSSIP_FRAME_LIMIT,
    GossipConfig,
    PubsubSide,
    _Pubsub,
    _Topic,
)
from registrygrid.node.p2p_requests import (
    DEFAULT_MAX_INBOUND_REQUESTS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_REQUEST_TIMEOUT,
    RequestResponse,
    _reset,
)
from registrygrid.node.transport import (
    DialFailed,
    GossipMessage,
    MessageRejected,
    MessageTooLarge,
    NotRunning,
    P2PError,
    PeerEvent,
    PeerUnreachable,
    ProtocolNotSupported,
    PublishFailed,
    RemoteBusy,
    RemoteError,
    RequestFailed,
    RequestHandler,
    RequestTimeout,
    RequestTooLarge,
    ResponseTooLarge,
    StartFailed,
    TopicValidator,
)

logger = logging.getLogger("registrygrid.node.p2p")

# What py-libp2p raises where a connection finishes its upgrade while the
# swarm is stopping (tools/anyio_service ERROR_CANNOT_SCHEDULE_AFTER_STOP).
_STOPPED_SERVICE = "Cannot schedule task after service has stopped"


class _ConnectionAtStop(logging.Filter):
    """py-libp2p's swarm warns "[ADDCONN_FAIL]", with a whole traceback in
    the message, when an inbound connection finishes its upgrade while the
    swarm is stopping (LifecycleError): that is how a stopping node drops a
    peer's last dial, not a fault. Seen as a debug line; any other failure
    to add a connection stays a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.levelno == logging.WARNING and str(record.msg).startswith("[ADDCONN_FAIL]") \
                and len(args) > 1 and isinstance(args[1], LifecycleError) and _STOPPED_SERVICE in str(args[1]):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("libp2p.network.swarm").addFilter(_ConnectionAtStop())

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

# GossipConfig is frozen: one default instance serves every host.
_DEFAULT_GOSSIP = GossipConfig()
# Graceful shutdown budget before we cancel py-libp2p's tasks outright.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
# Per peer_events() subscriber: events are rare (one per connection change);
# 256 outlasts any reconnect storm a consumer is likely to fall behind on.
_PEER_EVENT_CHANNEL_SIZE = 256

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


# ---------------------------------------------------------------------------
# The host
# ---------------------------------------------------------------------------


class P2PHost(PubsubSide, RequestResponse):
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
        gossip: GossipConfig = _DEFAULT_GOSSIP,
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
        # Every inbound stream runs its protocol's handler in the task of its
        # connection, inside the swarm's nursery: an exception a handler of
        # py-libp2p's own does not catch (gossipsub's protobuf DecodeError on
        # one garbage frame) stopped the whole host, for every peer, and any
        # peer could send it. The host's dispatcher is wrapped so that a
        # failure costs only its stream (and counts against its peer).
        self._dispatch_stream = self._host._swarm_stream_handler
        self._host.get_network().set_stream_handler(self._contain_stream)

        self._handlers: dict[str, RequestHandler] = {}
        self._validators: dict[str, TopicValidator] = {}
        self._topics: dict[str, _Topic] = {}
        self._event_senders: list[trio.MemorySendChannel[PeerEvent]] = []
        self._live_peers: set[ID] = set()
        self._slow_peers: dict[ID, float] = {}
        self._inbound_limiter = trio.Semaphore(max_inbound_requests)
        self._inbound_per_peer: dict[str, int] = {}  # requests each peer has running here
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

    async def _contain_stream(self, stream: INetStream) -> None:
        try:
            await self._dispatch_stream(stream)
        except Exception as exc:  # a boundary: see __init__; Cancelled passes
            self.stats["inbound_streams_failed"] += 1
            peer = stream.muxed_conn.peer_id.to_base58()
            why = f"{stream.get_protocol() or 'no protocol'}: {type(exc).__name__}: {str(exc)[:160]}"
            logger.warning("p2p: an inbound stream from %s failed and was reset: %s", peer, why)
            await _reset(stream)
            self._emit(PeerEvent("misbehaved", peer, why))

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

def open_p2p_host(
    seed: bytes,
    listen: Sequence[str],
    **options: Any,
) -> P2PHost:
    """``async with open_p2p_host(seed, listen, ...) as host:`` — same as ``P2PHost(...)``."""
    return P2PHost(seed, listen, **options)
