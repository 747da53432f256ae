"""Request/response for the py-libp2p transport: the P2PHost side of request and handle.

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
"""


from __future__ import annotations

import functools
import logging
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.host.exceptions import StreamFailure
from libp2p.io.exceptions import MessageTooLarge as _Libp2pMessageTooLarge
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import (
    MultiselectClientError,
)
from libp2p.protocol_muxer.exceptions import (
    ProtocolNotSupportedError as _MultiselectProtocolNotSupported,
)
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.utils.varint import (
    encode_varint_prefixed,
    read_varint_prefixed_bytes_limited,
)

from registrygrid.errors import RegistryError
from registrygrid.node.p2p_base import KiB, MiB, _parse_peer_id
from registrygrid.node.transport import (
    P2PError,
    PeerUnreachable,
    ProtocolNotSupported,
    RemoteBusy,
    RemoteError,
    RequestFailed,
    RequestHandler,
    RequestTimeout,
    RequestTooLarge,
    ResponseTooLarge,
)

logger = logging.getLogger("registrygrid.node.p2p")

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
# Of those, one peer holds at most a quarter: 64 streams opened by one peer
# (a non-member's too) that never sent their request held every slot for
# the whole request timeout, and every other peer's hello, sync and read
# was refused as busy. A node's own traffic to a peer stays far below it
# (a sync session, four blob ranges, a read, a search, a hello).
MAX_INBOUND_REQUESTS_PER_PEER = 16
# The request itself (at most max_request_bytes, 1 MiB) must arrive within
# this; the handler's answer still has the whole request timeout.
REQUEST_ARRIVAL_TIMEOUT = 10.0
# Refusal reasons are short human text; the requester reads at most this much.
_MAX_REASON_BYTES = 1 * KiB

_STATUS_OK = 0
_STATUS_HANDLER_ERROR = 1
_STATUS_REQUEST_TOO_LARGE = 2
_STATUS_RESPONSE_TOO_LARGE = 3
_STATUS_BUSY = 4


class RequestResponse:
    """Handlers and requests over one stream each (mixed into P2PHost)."""

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
        held = self._inbound_per_peer.get(peer, 0)
        if held >= MAX_INBOUND_REQUESTS_PER_PEER:
            self.stats["requests_refused_busy_peer"] += 1
            await _refuse_busy(stream, f"busy: {held} of your requests are running here already")
            return
        try:
            self._inbound_limiter.acquire_nowait()
        except trio.WouldBlock:
            self.stats["requests_refused_busy"] += 1
            await _refuse_busy(stream, "busy: too many concurrent requests")
            return
        self._inbound_per_peer[peer] = held + 1
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
            left = self._inbound_per_peer.pop(peer) - 1
            if left:
                self._inbound_per_peer[peer] = left

    async def _serve_one(
        self, protocol_id: str, peer: str, handler: RequestHandler, stream: INetStream
    ) -> None:
        limit = self.request_timeout
        try:
            with trio.move_on_after(min(REQUEST_ARRIVAL_TIMEOUT, limit)) as arrival:
                request = await read_varint_prefixed_bytes_limited(stream, self.max_request_bytes)
            if arrival.cancelled_caught:
                self.stats["requests_inbound_failed"] += 1
                logger.info("p2p: %s from %s: no request within %.0f s; stream reset",
                            protocol_id, peer, min(REQUEST_ARRIVAL_TIMEOUT, limit))
                await _reset(stream)
                return
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


async def _refuse_busy(stream: INetStream, reason: str) -> None:
    try:
        await _refuse(stream, _STATUS_BUSY, reason, 1.0)
        await _close(stream)
    except Exception:
        await _reset(stream)


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


