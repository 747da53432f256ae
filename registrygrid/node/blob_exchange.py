"""Blobs between nodes: serve what this node holds, fetch what it lacks.

    view = await federation.blobs.fetch(cid)      # from the members that hold it; verified; resumable

Serving: a member of the federation (admitted at the hello, not banned)
may ask for any range of a blob this node holds (protocol/blob_exchange.py),
at most ``SERVE_CONCURRENCY`` ranges at once; each is read on a worker
thread from the object store.

Fetching: ask every connected member whether it holds the blob (a range of
length 0), then move it in 1 MiB ranges, ``WINDOW`` in flight at once
(py-libp2p opens a stream per request, so one range at a time would spend
most of the transfer waiting on round trips). Ranges arrive in order into a
bounded channel that a worker thread drains into the object store
(``BlobStore.put``, digesting as it writes), so memory stays at a few
ranges whatever the size. A range that fails (the provider went away,
answered wrongly, timed out) is asked again of the next provider, from the
same offset: a cut costs one range, not the transfer. The whole must hash
to the CID, or nothing is stored. The fetched blob goes through the same
checks as an upload (blobs/scanners.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import trio

from registrygrid.blobs.digest import Expected, cid_text, sha256_of
from registrygrid.errors import (
    MalformedInput,
    NotFound,
    PolicyDenied,
    RegistryError,
    Unavailable,
)
from registrygrid.node.transport import P2PError, Transport
from registrygrid.protocol.blob_exchange import (
    BLOB_PROTOCOL_ID,
    MAX_CHUNK,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

log = logging.getLogger(__name__)

WINDOW = 4
SERVE_CONCURRENCY = 8
REQUEST_TIMEOUT_S = 30.0
HAVE_TIMEOUT_S = 5.0


class BlobExchange:
    def __init__(self, host: Transport, assets: Any, metrics: Counter[str], *,
                 members: Callable[[], list[str]], may_serve: Callable[[str], bool]) -> None:
        self.host = host
        self.assets = assets
        self.metrics = metrics
        self.members = members  # connected members, the candidates to fetch from
        self.may_serve = may_serve
        self._serving = trio.CapacityLimiter(SERVE_CONCURRENCY)

    # ---- serving

    async def handle(self, peer_id: str, request: bytes) -> bytes:
        if not self.may_serve(peer_id):
            self.metrics["blobs.refused"] += 1
            raise PolicyDenied("this node serves blobs to members of its federation")
        asked = decode_request(request)
        answer = await trio.to_thread.run_sync(self._answer, asked.cid, asked.offset, asked.length,
                                               limiter=self._serving)
        self.metrics["blobs.served_ranges"] += 1
        self.metrics["blobs.served_bytes"] += asked.length
        return answer

    def _answer(self, cid: bytes, offset: int, length: int) -> bytes:
        entry = self.assets.blobs.entry(cid)
        if entry is None:
            raise NotFound(f"no blob {cid_text(cid)} here")
        end = min(entry.size, offset + length)
        data = b"".join(self.assets.blobs.read(cid, start=offset, end=end)) if length and offset < end else b""
        return encode_response(entry.size, data)

    # ---- fetching

    async def fetch(self, cid: bytes, *, providers: list[str] | None = None) -> dict[str, Any]:
        """Fetch blob ``cid`` from the peers that hold it; its view (as GET
        /v1/blobs/{cid}/meta). NotFound if no connected member holds it."""
        from registrygrid.node.bridge.asset_routes import blob_view

        known = await trio.to_thread.run_sync(self.assets.blobs.entry, cid)
        if known is not None:
            return {**blob_view(cid, known), "fetched": False}
        holders = await self._holders(cid, providers if providers is not None else self.members())
        if not holders:
            raise NotFound(f"no connected member holds blob {cid_text(cid)}")
        size = Counter(holders.values()).most_common(1)[0][0]  # a liar's size loses to the others'
        order = [p for p, s in holders.items() if s == size]
        # A size this node could never keep (past its largest blob or its
        # quota) is refused before any range moves: what a provider claims
        # costs nothing to claim.
        try:
            await trio.to_thread.run_sync(self.assets.blobs.check_room, size)
        except RegistryError as exc:
            self.metrics["blobs.fetch_failed"] += 1
            raise type(exc)(f"{', '.join(order[:3])} say blob {cid_text(cid)} has {size} bytes: {exc.message}",
                            details=exc.details) from None
        send, receive = trio.open_memory_channel[bytes](WINDOW)
        failure: list[BaseException] = []

        async def produce() -> None:
            try:
                async with send:
                    await self._ranges(cid, size, order, send)
            except (RegistryError, P2PError) as exc:
                failure.append(exc)

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    data = trio.from_thread.run(receive.receive)
                except trio.EndOfChannel:
                    if failure:
                        raise failure[0] from None
                    return
                yield data

        def store() -> Any:
            return self.assets.blobs.put(chunks(), expected=Expected(size=size, sha256=sha256_of(cid)),
                                         vet=self.assets.vet)

        refused: RegistryError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            try:
                _cid, entry, _stored = await trio.to_thread.run_sync(store)
            except RegistryError as exc:  # raised here, not wrapped in the nursery's exception group
                refused = exc
            finally:
                nursery.cancel_scope.cancel()  # a refused or failed store stops the transfer
        if refused is not None:
            self.metrics["blobs.fetch_failed"] += 1
            raise refused
        self.metrics["blobs.fetched"] += 1
        self.metrics["blobs.fetched_bytes"] += entry.size
        return {**blob_view(cid, entry), "fetched": True, "providers": order}

    async def _holders(self, cid: bytes, peers: list[str]) -> dict[str, int]:
        """Which of ``peers`` hold the blob, and the size each says it has."""
        found: dict[str, int] = {}

        async def ask(peer: str) -> None:
            request = encode_request(cid, 0, 0)
            try:
                raw = await self.host.request(peer, BLOB_PROTOCOL_ID, request, timeout=HAVE_TIMEOUT_S)
                found[peer] = decode_response(raw, decode_request(request)).size
            except (P2PError, RegistryError):
                return

        async with trio.open_nursery() as nursery:
            for peer in peers[:64]:
                nursery.start_soon(ask, peer)
        return found

    async def _ranges(self, cid: bytes, size: int, providers: list[str],
                      send: trio.MemorySendChannel[bytes]) -> None:
        """Every range of the blob, in order, into ``send``; WINDOW fetched
        at once. Only the ranges in flight are held (their offsets come from
        a lazy range): memory is the window's, whatever the size."""
        done: dict[int, bytes] = {}
        window = trio.Semaphore(WINDOW)
        turn = [0]  # which provider to ask first next: spread ranges over them
        started_send, started = trio.open_memory_channel[tuple[int, trio.Event]](WINDOW)

        async def one(offset: int, ready: trio.Event) -> None:
            done[offset] = await self._range(cid, offset, min(MAX_CHUNK, size - offset), providers, turn)
            ready.set()

        async with trio.open_nursery() as nursery:
            async def start_all() -> None:
                async with started_send:
                    for offset in range(0, size, MAX_CHUNK):
                        await window.acquire()
                        ready = trio.Event()
                        nursery.start_soon(one, offset, ready)
                        await started_send.send((offset, ready))

            nursery.start_soon(start_all)
            async with started:
                async for offset, ready in started:  # in the order they started: the blob's
                    await ready.wait()
                    await send.send(done.pop(offset))
                    window.release()

    async def _range(self, cid: bytes, offset: int, length: int, providers: list[str], turn: list[int]) -> bytes:
        """One range, from the first provider that answers it rightly."""
        first = turn[0] % len(providers)
        turn[0] += 1
        errors = []
        for i in range(len(providers)):
            peer = providers[(first + i) % len(providers)]
            request = encode_request(cid, offset, length)
            try:
                raw = await self.host.request(peer, BLOB_PROTOCOL_ID, request, timeout=REQUEST_TIMEOUT_S)
                data = decode_response(raw, decode_request(request)).data
            except (P2PError, MalformedInput, NotFound) as exc:
                self.metrics["blobs.range_retries"] += 1
                errors.append(f"{peer}: {exc}")
                continue
            if len(data) != length:
                self.metrics["blobs.range_retries"] += 1
                errors.append(f"{peer}: {len(data)} bytes of {length}")
                continue
            return data
        raise Unavailable(f"no provider gave bytes {offset}-{offset + length - 1} of {cid_text(cid)}: "
                          + "; ".join(errors[:4]))
