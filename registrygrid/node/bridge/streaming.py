"""The changefeed over HTTP: plain pages, long-poll, Server-Sent Events, WebSocket.

Every transport is the same loop: read the feed after a cursor (from LMDB,
on the loop thread, no trio), send what came, and when nothing did, wait
for the node's committer to say the feed moved. The committer calls the
bridge's hook in the trio thread after each commit; the hook does
``loop.call_soon_threadsafe(hub.advance, head)``, which wakes every waiting
stream on this loop (``FeedHub``). One wake per committed batch, not per
event or per stream.

Resuming is the client's cursor: the feed sequence of the last event it
handled (SSE ``id:`` lines and ``Last-Event-ID``, the WebSocket's
``since``). Feed sequences are dense and never reused (``storage/feed.py``),
so a client that reconnects with its cursor misses nothing and sees at most
the events it had not acknowledged again (at-least-once).

A saved view's changes (search/views.py) stream over SSE the same way
(``serve_view_sse``): the views' refresh wakes the streams, and the cursor
is the view's own event id.

Every write of a stream (and of a download, asset_routes.py) goes through
``send``: a client that takes nothing for ``WRITE_TIMEOUT_S`` has its
connection closed, so a client that stopped reading holds neither a stream
slot nor the bytes queued for it for longer. A client that goes away is an
ordinary end of its stream (``ConnectionError``, whatever aiohttp calls it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from registrygrid.errors import NotFound, RegistryError
from registrygrid.storage.feed import FeedEvent

log = logging.getLogger("registrygrid.bridge")

# The request's trace id (set by the app's middleware). Streams prepare their
# response inside the handler, before the middleware sees it, so they add the
# X-Trace-Id header themselves.
TRACE_ID = web.RequestKey("trace_id", str)


def _trace_headers(request: web.Request) -> dict[str, str]:
    trace_id = request.get(TRACE_ID)
    return {"X-Trace-Id": trace_id} if trace_id else {}

# Long-poll waits at most 30 s: below the 60 s idle timeout of common proxies
# and load balancers (nginx proxy_read_timeout, AWS ALB), so a waiting
# request is never cut by a middlebox.
MAX_WAIT_S = 30.0
# SSE comment line this often on an idle stream, for the same middleboxes
# (and so a dead client is noticed at the next write).
HEARTBEAT_S = 15.0
# Tell EventSource clients to reconnect after 1 s (WHATWG HTML 9.2 "retry").
SSE_RETRY_MS = 1000
# Events per feed read while streaming: bounds the memory one slow stream holds.
STREAM_BATCH = 500
# Events one read of the feed looks at, matching or not (~3 us each): a
# filtered read on the loop thread holds it ~15 ms at most.
SCAN_EVENTS = 5000
# A write whose bytes the client takes none of for this long ends its
# answer (connection closed): a client that stopped reading held its stream
# slot and the bytes queued for it (~2 MB a download) for as long as it
# stayed connected, and 20 of them shut every other stream out. 60 s passes
# a 1 MiB download chunk at ~17 KB/s.
WRITE_TIMEOUT_S = 60.0


# Set by the app on a stream's request: whether the token it opened with
# still holds (not revoked, not expired). A stream asks before each write
# and ends when it no longer does.
STILL_ALLOWED = web.RequestKey("still_allowed", object)


def still_allowed(request: web.Request) -> bool:
    check = request.get(STILL_ALLOWED)
    return check is None or bool(check())  # type: ignore[operator]


class SlowClient(ConnectionResetError):
    """The client took nothing of a write for WRITE_TIMEOUT_S: its connection was closed."""


async def send(request: web.Request, write: Awaitable[None]) -> None:
    """``await write`` (a response's or a WebSocket's): SlowClient, with the
    connection closed, if the client does not take the bytes in time."""
    try:
        # asyncio.timeout, not wait_for: no task made per write (one per event on a WebSocket).
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await write
    except TimeoutError:
        transport = request.transport
        if transport is not None:
            transport.abort()  # drops what is queued for it: the memory and the slot go now
        raise SlowClient(f"the client took nothing for {WRITE_TIMEOUT_S:g} s; its connection was closed") from None


class FeedHub:
    """The feed head as seen on the loop thread, and a wake-up for waiters."""

    def __init__(self, head: int) -> None:
        self.head = head
        self._changed = asyncio.Event()
        self.closing = False

    def advance(self, head: int) -> None:
        if head > self.head:
            self.head = head
            self._wake()

    def close(self) -> None:
        self.closing = True
        self._wake()

    def _wake(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_beyond(self, seq: int, timeout: float) -> bool:
        """True once the head passes ``seq``; False on timeout or shutdown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.head <= seq and not self.closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.head > seq


@dataclass
class FeedReader:
    """Reads the feed after a cursor with the request's filters.

    ``read`` is ``feed.read_window`` bound to the store, the filters and
    SCAN_EVENTS; ``head`` reads the store's feed head. A read looks at no
    more than SCAN_EVENTS events: it runs on the bridge's loop, and a
    filter that matched nothing read the whole feed there (40-70 ms for
    18,600 events, growing with the feed), stalling every other request;
    the cursor then moves to the last event looked at, and the caller reads
    on after yielding the loop. After a read that reached the feed's end
    with fewer than ``limit`` matches, the cursor moves to the head read
    *before* it, so a filtered stream does not rescan a long stretch of
    non-matching events.
    """

    read: Callable[[int, int], tuple[list[FeedEvent], int, bool]]  # (since, limit) -> events, last looked at, end
    head: Callable[[], int]

    def next(self, cursor: int, limit: int) -> tuple[list[FeedEvent], int]:
        head = self.head()
        events, looked, at_end = self.read(cursor, limit)
        if len(events) >= limit:
            return events, events[-1].seq
        if not at_end:  # the scan's bound: read on from where it stopped
            return events, looked
        return events, max(cursor, head, looked)


async def long_poll(reader: FeedReader, hub: FeedHub, since: int, limit: int,
                    wait_s: float) -> tuple[list[FeedEvent], int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    cursor = since
    while True:
        events, cursor = reader.next(cursor, limit)
        remaining = deadline - loop.time()
        if events or remaining <= 0 or hub.closing:
            return events, cursor
        await hub.wait_beyond(cursor, remaining)
        await asyncio.sleep(0)  # a long filtered scan goes on in slices, other requests between them


# How often a waiting stream looks whether its client is still there.
GONE_POLL_S = 1.0


async def _until_gone(request: web.Request) -> None:
    """Return once the client's connection is closed. aiohttp does not
    cancel a handler whose client left, and an SSE stream waiting for the
    next event saw it only at its next keepalive write: clients that opened
    and dropped streams held every stream slot for up to 15 s each."""
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(GONE_POLL_S)


def sse_frame(event: FeedEvent) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(),
                                                  msgspec.json.encode(event.to_dict()))


def sse_headers(request: web.Request) -> dict[str, str]:
    """An SSE stream's headers (a HEAD's answer is these alone)."""
    # nginx buffers proxied responses unless told not to.
    return {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
            **_trace_headers(request)}


async def serve_sse(request: web.Request, reader: FeedReader, hub: FeedHub, since: int,
                    heartbeat_s: float = HEARTBEAT_S) -> web.StreamResponse:
    response = web.StreamResponse(headers=sse_headers(request))
    await response.prepare(request)
    gone = asyncio.ensure_future(_until_gone(request))
    try:
        await send(request, response.write(b"retry: %d\n\n" % SSE_RETRY_MS))
        cursor = since
        while not hub.closing and still_allowed(request) and not gone.done():
            events, cursor = reader.next(cursor, STREAM_BATCH)
            if events:
                await send(request, response.write(b"".join(sse_frame(e) for e in events)))
                continue
            if cursor < hub.head:  # a filtered scan stopped at its bound: on after the others had the loop
                await asyncio.sleep(0)
                continue
            waiter = asyncio.ensure_future(hub.wait_beyond(cursor, heartbeat_s))
            await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone.done():
                waiter.cancel()
                break
            if not waiter.result() and not hub.closing and still_allowed(request):
                await send(request, response.write(b": keepalive\n\n"))
    except SlowClient:
        raise  # the middleware counts it
    except ConnectionError:  # the client went away mid-write: an ordinary end of a stream
        log.debug("sse: the client closed its stream")
    finally:
        gone.cancel()
    return response


async def serve_websocket(request: web.Request, reader: FeedReader, hub: FeedHub, since: int,
                          heartbeat_s: float = HEARTBEAT_S) -> web.WebSocketResponse:
    """Each event is one text message (the event's JSON); the client only listens."""
    ws = web.WebSocketResponse(heartbeat=heartbeat_s)
    ws.headers.update(_trace_headers(request))
    await ws.prepare(request)

    async def drain_client() -> None:
        # Reading is how aiohttp notices a close frame or a dead peer.
        async for msg in ws:
            if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                return

    client = asyncio.ensure_future(drain_client())
    cursor = since
    try:
        while not hub.closing and not client.done() and not ws.closed and still_allowed(request):
            events, cursor = reader.next(cursor, STREAM_BATCH)
            for event in events:
                await send(request, ws.send_str(msgspec.json.encode(event.to_dict()).decode()))
            if events:
                continue
            waiter = asyncio.ensure_future(hub.wait_beyond(cursor, heartbeat_s))
            await asyncio.wait({waiter, client}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
    except SlowClient:
        raise  # the middleware counts it
    except ConnectionError:  # the client went away mid-send: an ordinary end of a stream
        log.debug("websocket: the client closed its stream")
    finally:
        client.cancel()
        transport = request.transport
        if not ws.closed and transport is not None and not transport.is_closing():  # else: nobody to tell
            with contextlib.suppress(ConnectionError):
                if still_allowed(request):
                    await ws.close()
                else:
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"the token was revoked or expired")
    return ws


# ---------------------------------------------------------------- saved views (search/views.py)


def sse_event(event_id: str, kind: str, data: Any) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), kind.encode(), msgspec.json.encode(data))


async def serve_view_sse(request: web.Request, changes: Callable[[str | None], dict[str, Any] | None],
                         subscribe: Callable[[Callable[[], None]], Callable[[], None]], hub: FeedHub,
                         after: str | None, heartbeat_s: float = HEARTBEAT_S) -> web.StreamResponse:
    """A saved view's changes as SSE. ``changes(after)`` is the node's
    ``Views.changes`` for this view (events after an event id, or the whole
    member list as ``reset``; None while it waits for its first refresh);
    ``subscribe`` registers a wake-up that the views' refresh calls on the
    indexing thread, which hands it to this loop (``call_soon_threadsafe``),
    as the committer's hook wakes the feed's streams. Ends with ``deleted``
    when the view is deleted, ``error`` when it can no longer be followed
    here, or when the bridge stops."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(changed.set)  # RuntimeError once the loop closed: Views ignores it

    unsubscribe = subscribe(wake)
    gone = asyncio.ensure_future(_until_gone(request))
    response: web.StreamResponse | None = None
    try:
        response = web.StreamResponse(headers=sse_headers(request))
        await response.prepare(request)
        await send(request, response.write(b"retry: %d\n\n" % SSE_RETRY_MS))
        cursor = after
        while not hub.closing and still_allowed(request):
            changed.clear()  # before reading: a refresh after the read wakes the wait below
            try:
                batch = changes(cursor)
            except NotFound:
                await send(request, response.write(b"event: deleted\ndata: {}\n\n"))
                break
            except RegistryError as exc:  # Conflict: edited into a view this node no longer keeps, or refused
                await send(request, response.write(b"event: error\ndata: %s\n\n" % msgspec.json.encode(
                    {"code": exc.code, "message": exc.message})))
                break
            if batch is not None:
                frames = []
                if batch["reset"] is not None:
                    frames.append(sse_event(batch["last_id"], "reset", batch["reset"]))
                frames += [sse_event(e["event_id"], e["type"], {"registry": e["registry"], "id": e["id"],
                                                                "seq": e["seq"]}) for e in batch["events"]]
                cursor = batch["last_id"]
                if frames:
                    await send(request, response.write(b"".join(frames)))
                    continue
            view = asyncio.ensure_future(changed.wait())
            stopping = asyncio.ensure_future(hub.wait_beyond(2**63, heartbeat_s))  # only shutdown or the timeout
            await asyncio.wait({view, stopping, gone}, return_when=asyncio.FIRST_COMPLETED)
            view.cancel()
            stopping.cancel()
            if gone.done():
                break  # the client left: its stream slot is free at once
            if not changed.is_set() and not hub.closing:
                await send(request, response.write(b": keepalive\n\n"))
    except SlowClient:
        raise  # the middleware counts it
    except ConnectionError:  # the client went away mid-write: an ordinary end of a stream
        log.debug("sse: the client closed its view stream")
    finally:
        gone.cancel()
        unsubscribe()
    return response
