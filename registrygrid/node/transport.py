"""What gossip, sync and the federation need from a network: the transport interface.

    transport.peer_id, .listen_addrs(), .connected_peers()
    await transport.connect(addr), .disconnect(peer), .peer_events()
    transport.set_handler(protocol, handler); await transport.request(peer, protocol, data, timeout=)
    await transport.subscribe(topic), .publish(topic, data); .set_topic_validator(topic, fn), .topic_peers(topic)

Two implementations keep this contract (tests/transport_contract.py runs
one suite against both): ``P2PHost`` (node/p2p.py: py-libp2p, TCP, Noise,
GossipSub) and ``MemoryHost`` (node/memory_transport.py: an in-memory
network with latency, loss, partitions and accounting, in trio's virtual
time for simulations). The errors, message and event types are shared, so
code above the transport handles both the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import trio

from registrygrid.errors import EX_TEMPFAIL, RegistryError

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class P2PError(RegistryError):
    """Base of every error a transport raises on purpose."""

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
# Messages, events, callbacks
# ---------------------------------------------------------------------------


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
    """A peer's first connection opened ("connected") or its last one closed
    ("disconnected"), or one of its streams broke the protocol it named
    ("misbehaved", ``why`` says how): the host reset that stream and kept
    serving; the federation counts it against the peer."""

    kind: Literal["connected", "disconnected", "misbehaved"]
    peer_id: str
    why: str = ""


RequestHandler = Callable[[str, bytes], Awaitable[bytes]]
TopicValidator = Callable[[str, bytes], bool]


class Transport(Protocol):
    """A node's connection to its peers (see the module docstring). It runs
    while its ``async with`` block does; ``stats`` counts what it did."""

    stats: Mapping[str, int]

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> Any: ...

    @property
    def peer_id(self) -> str: ...

    def listen_addrs(self) -> list[str]: ...

    def connected_peers(self) -> list[str]: ...

    async def connect(self, multiaddr: str, timeout: float = 5.0) -> str: ...

    async def disconnect(self, peer_id: str) -> None: ...

    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]: ...

    def set_handler(self, protocol_id: str, handler: RequestHandler) -> None: ...

    async def request(self, peer_id: str, protocol_id: str, data: bytes, timeout: float | None = None) -> bytes: ...

    async def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[GossipMessage]: ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    def set_topic_validator(self, topic: str, validator: TopicValidator) -> None: ...

    def topic_peers(self, topic: str) -> list[str]: ...
