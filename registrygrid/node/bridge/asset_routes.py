"""Asset bytes on the bridge: resumable uploads, blob downloads, presigned URLs.

    POST   /v1/uploads                      create a session (size, sha256?, md5?, content_type, part_size?)
    GET    /v1/uploads/{id}                 its state: parts held, parts missing (resume from here)
    PUT    /v1/uploads/{id}/parts/{n}       one part's bytes (any order, in parallel); Content-MD5 and
                                            X-Checksum-Sha256 are checked when sent
    POST   /v1/uploads/{id}/heartbeat       keep a paused session alive
    POST   /v1/uploads/{id}/presign         presigned part URLs (PUT), for a client with no token
    POST   /v1/uploads/{id}/finalize        compose and verify; idempotent: the blob's CID
    DELETE /v1/uploads/{id}                 cancel (its parts are deleted)
    GET    /v1/blobs/{cid}                  the bytes: Range and multi-range, ETag, If-None-Match, If-Range
    HEAD   /v1/blobs/{cid}
    GET    /v1/blobs/{cid}/meta             size, digests, content type, retention, holds
    POST   /v1/blobs/{cid}/presign          a presigned GET URL
    POST   /v1/blobs/{cid}/fetch            fetch a blob this node lacks from the members that hold it
    PUT    /v1/blobs/{cid}/retention        retain until a time (only ever extended; admin)
    PUT    /v1/blobs/{cid}/holds/{name}     a legal hold (admin); DELETE releases it
    DELETE /v1/blobs/{cid}                  purge the bytes (admin; refused under retention or hold)

Bytes never sit whole in memory. An upload's body is read on the loop in
pieces of about a MiB, each handed to a worker thread that digests it and
writes it to the object store, which asks for the next piece only when it
has written the last one (so a slow disk or S3 slows the client, through
TCP, rather than filling memory). A download runs the other way: a thread
reads a chunk, the loop writes it and waits for the socket to drain.

A blob's ETag is its CID: the bytes under a CID never change, so answers
carry ``Cache-Control: ... immutable`` and an edge cache (a CDN in front
of the bridge) may keep them for a year; ``private`` unless the request
came through a presigned URL (docs in the README, "Asset content").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from registrygrid.blobs.blobs import blob_key, check_hold_name, check_hold_reason
from registrygrid.blobs.bundles import Bundle, entry_of, manifest_of, manifest_view
from registrygrid.blobs.digest import Expected, cid_text, parse_cid
from registrygrid.blobs.objects import CHUNK_BYTES
from registrygrid.blobs.presign import MAX_EXPIRES_S, PresignInvalid, is_presigned
from registrygrid.blobs.ranges import parse_ranges
from registrygrid.blobs.scanners import CheckRefused
from registrygrid.errors import (
    BodyTimeout,
    Disabled,
    IntegrityError,
    MalformedInput,
    RegistryError,
    Unavailable,
    ValidationError,
)
from registrygrid.node.bridge.app import json_response
from registrygrid.node.bridge.auth import ADMIN, READ, WRITE
from registrygrid.node.bridge.conditional import not_modified
from registrygrid.node.bridge.streaming import TRACE_ID, send
from registrygrid.storage import tokens
from registrygrid.storage.blobs import BlobEntry, UploadSession
from registrygrid.storage.tokens import Token

if TYPE_CHECKING:
    from registrygrid.blobs.service import Assets
    from registrygrid.node.bridge.app import Api

T = TypeVar("T")
IMMUTABLE_S = 365 * 24 * 3600
# Answers sending a blob's bytes at once (downloads, ZIP entries, bundles):
# each holds a socket, an open object and up to ~2 MB queued for a slow
# client (for at most streaming.WRITE_TIMEOUT_S); without a bound, clients
# that stopped reading held ~400 MB at 150 downloads. Past it: 503, Retry-After.
MAX_DOWNLOADS = 256


class AssetRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.downloads = 0  # answers sending bytes now (on the loop thread)

    @contextlib.contextmanager
    def _download_slot(self, request: web.Request) -> Iterator[None]:
        """One of MAX_DOWNLOADS answers that send bytes (a HEAD sends none)."""
        if request.method == "HEAD":
            yield
            return
        if self.downloads >= MAX_DOWNLOADS:
            raise Unavailable(f"{MAX_DOWNLOADS} downloads are under way on this node; retry shortly")
        self.downloads += 1
        self.api.metrics.downloads.inc()
        try:
            yield
        finally:
            self.downloads -= 1
            self.api.metrics.downloads.dec()

    @property
    def assets(self) -> Assets:
        assets = self.api.assets
        if assets is None:
            raise Disabled("this node stores no asset content")
        return assets  # type: ignore[no-any-return]

    def routes(self) -> list[web.RouteDef]:
        up = "/v1/uploads/{id}"
        blob = "/v1/blobs/{cid}"
        return [
            web.post("/v1/uploads", self.create_upload),
            web.get(up, self.upload_status),
            web.delete(up, self.cancel_upload),
            web.put(up + "/parts/{n}", self.put_part),
            web.post(up + "/heartbeat", self.heartbeat),
            web.post(up + "/presign", self.presign_parts),
            web.post(up + "/finalize", self.finalize_upload),
            web.get(blob, self.get_blob, allow_head=True),
            web.get(blob + "/meta", self.blob_meta),
            web.get(blob + "/manifest", self.blob_manifest),
            web.get(blob + "/entries/{name:.+}", self.blob_entry),
            web.post("/v1/bundles", self.bundle),
            web.post("/v1/presign/rotate", self.rotate_presign_keys),
            web.post(blob + "/presign", self.presign_blob),
            web.post(blob + "/fetch", self.fetch_blob),
            web.put(blob + "/retention", self.retain_blob),
            web.put(blob + "/holds/{name}", self.hold_blob),
            web.delete(blob + "/holds/{name}", self.release_blob),
            web.delete(blob, self.delete_blob),
        ]

    # ------------------------------------------------------------------ helpers

    def _owner(self, request: web.Request, need: str) -> str | None:
        """The token id that owns what this request touches; None for an admin (any session)."""
        token = self.api.require_unlimited(request, need, target="uploads")
        return None if token.role == "admin" else token.id

    def _presigned(self, request: web.Request, content_length: int | None = None) -> str | None:
        """How the audit log names the holder of the request's presigned
        grant, None when it carries none (PresignInvalid if it carries a bad
        one, or one whose token was revoked or expired since)."""
        if not is_presigned(request.query):
            return None
        try:
            token_id = self.assets.presign.verify(request.method, request.path, request.query,
                                                  client_ip=request.remote, content_length=content_length)
            if token_id is None:
                return "presigned"
            token = tokens.live(self.api.auth.store, token_id)
            if token is None:
                raise PresignInvalid(f"the presigned URL was asked for by token {token_id}, which was revoked or "
                                     "has expired since: ask for a new one")
        except RegistryError as exc:
            # Charged to the address, as a bad token is: forged grants would
            # otherwise fill the audit ledger at any rate (429 past it).
            self.api.auth.throttle_address(request.remote)
            raise self.api.auth.refuse("presigned", request.path, exc) from None
        return f"presigned:{token.actor}"

    async def _thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.api.in_executor(fn, *args)  # type: ignore[no-any-return]

    async def _checked(self, actor: str, target: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` on a worker thread; a refusal by the asset checks is audited as a deny."""
        try:
            return await self._thread(fn, *args)
        except CheckRefused as exc:
            raise self.api.auth.refuse(actor, target, exc) from None

    async def _consume_body(self, request: web.Request, consume: Callable[[Iterator[bytes]], T]) -> T:
        """Run ``consume`` on a worker thread over the request body's bytes,
        pulled from the loop a piece at a time (see the module docstring)."""
        loop = asyncio.get_running_loop()
        content = request.content

        idle = self.api.body_idle_timeout_s

        async def piece() -> bytes:
            buf = bytearray()
            while len(buf) < CHUNK_BYTES:
                try:
                    got = await asyncio.wait_for(content.readany(), idle)
                except TimeoutError:
                    # Closed after the answer: aiohttp would otherwise linger
                    # up to 10 s draining a body that never comes.
                    request.protocol.force_close()
                    raise BodyTimeout(f"the request body sent nothing for {idle:g} s; send it again",
                                      details={"idle_s": idle}) from None
                if not got:
                    break
                buf += got
            return bytes(buf)

        def chunks() -> Iterator[bytes]:
            while True:
                data = asyncio.run_coroutine_threadsafe(piece(), loop).result()
                if not data:
                    return
                yield data

        return await loop.run_in_executor(None, lambda: consume(chunks()))

    # ------------------------------------------------------------------ uploads

    async def create_upload(self, request: web.Request) -> web.Response:
        owner_token = self.api.require_unlimited(request, WRITE, target="uploads")
        body, _ = await self.api.body(request, "UploadCreate")  # types and bounds, by the document's schema
        size = body["size"]
        presign = body.get("presign")
        # true or an object ({} included: the defaults, as the presign
        # endpoints read {}) asks for part URLs; false or null for none.
        grant = None if presign is None or presign is False else \
            _presign_options(presign if isinstance(presign, dict) else {})
        session = await self._checked(owner_token.actor, "uploads", lambda: self.assets.uploads.create(
            owner_token.id, size=size, part_size=body.get("part_size"), sha256=body.get("sha256"),
            md5=body.get("md5"), content_type=body.get("content_type") or "application/octet-stream",
            name=body.get("name") or ""))
        answer = self._session(session)
        if grant is not None and session.state == "open":
            answer["part_urls"] = self._part_urls(session, owner_token, *grant)
        self.api.audit.note("create", owner_token.actor, f"upload/{session.id}",
                            f"upload of {size} bytes{' (deduplicated)' if session.deduplicated else ''}")
        return json_response(answer, status=201, headers={"Location": f"/v1/uploads/{session.id}"})

    def _part_urls(self, session: UploadSession, token: Token, expires: int, ip: str | None) -> list[str]:
        return [self.assets.presign.sign("PUT", f"/v1/uploads/{session.id}/parts/{n}", expires_in_s=expires,
                                         max_bytes=session.part_length(n), ip=ip, token=token.id)
                for n in range(1, session.part_count + 1)]

    @staticmethod
    def _session(session: UploadSession) -> dict[str, Any]:
        return {"id": session.id, "state": session.state, "size": session.size, "part_size": session.part_size,
                "parts": session.part_count, "content_type": session.content_type, "name": session.name,
                "sha256": session.sha256, "received_bytes": session.received,
                "received": [{"part": n, "size": p.size, "sha256": p.sha256, "md5": p.md5 or None}
                             for n, p in sorted(session.parts.items())],
                "missing": [n for n in range(1, session.part_count + 1) if n not in session.parts]
                if session.state == "open" else [],
                "expires_at_ms": session.expires_ms, "cid": session.cid, "deduplicated": session.deduplicated}

    async def upload_status(self, request: web.Request) -> web.Response:
        owner = self._owner(request, READ)
        session = await self._thread(self.assets.uploads.status, request.match_info["id"], owner)
        return json_response(self._session(session))

    async def heartbeat(self, request: web.Request) -> web.Response:
        owner = self._owner(request, WRITE)
        session = await self._thread(self.assets.uploads.heartbeat, request.match_info["id"], owner)
        return json_response(self._session(session))

    async def presign_parts(self, request: web.Request) -> web.Response:
        token = self.api.require_unlimited(request, WRITE, target="uploads")
        owner = None if token.role == "admin" else token.id  # as _owner
        body, _ = await self.api.body(request, "PresignOptions")
        grant = _presign_options(body)
        session = await self._thread(self.assets.uploads.status, request.match_info["id"], owner)
        return json_response({"part_urls": self._part_urls(session, token, *grant)})

    async def put_part(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        raw_number = request.match_info["n"]
        if not (raw_number.isascii() and raw_number.isdigit()) or len(raw_number) > 6:
            raise MalformedInput("the part number is a whole number (ASCII digits)")
        number = int(raw_number)
        length = request.content_length
        still_allowed: Callable[[], Any]
        if granted := self._presigned(request, length):
            owner: str | None = None  # the grant names this part of this session: the token's check is done
            actor = granted
            still_allowed = lambda: self._presigned(request, length)  # noqa: E731 (its token still live?)
        else:
            token = self.api.require_unlimited(request, WRITE, target=f"upload/{session_id}")
            owner = None if token.role == "admin" else token.id
            actor = token.actor
            authorization = request.headers.get("Authorization", "")
            still_allowed = lambda: self.api.auth.recheck(authorization, request.remote,  # noqa: E731
                                                          f"upload/{session_id}")
        expected = Expected(md5=_content_md5(request.headers.get("Content-MD5")),
                            sha256=_sha256_header(request.headers.get("X-Checksum-Sha256")))
        # A busy part (PartInProgress) is a 409 with Retry-After: the error
        # middleware adds it for any refusal that says when to come back.
        part = await self._consume_body(
            request, lambda chunks: self.assets.uploads.put_part(session_id, owner, number, chunks, expected,
                                                                 still_allowed))
        self.api.metrics.upload_bytes.inc(part.size)
        self.api.audit.note("update", actor, f"upload/{session_id}", f"part {number}: {part.size} bytes",
                            required=False)
        return json_response({"part": number, "size": part.size, "sha256": part.sha256, "md5": part.md5 or None},
                             headers={"ETag": f'"{part.md5 or part.sha256}"'})

    async def finalize_upload(self, request: web.Request) -> web.Response:
        token = self.api.require_unlimited(request, WRITE, target="uploads")
        owner = None if token.role == "admin" else token.id
        session = await self._checked(token.actor, f"upload/{request.match_info['id']}",
                                      self.assets.uploads.finalize, request.match_info["id"], owner)
        entry = await self._thread(self.assets.blobs.entry, parse_cid(session.cid or ""))
        self.api.audit.note("create", token.actor, f"blob/{session.cid}",
                            f"upload {session.id} finalized; checks: {entry.checks if entry else ''}")
        return json_response({**self._session(session), "meta": entry.meta if entry else {},
                              "checks": entry.checks if entry else ""})

    async def cancel_upload(self, request: web.Request) -> web.Response:
        owner = self._owner(request, WRITE)
        session = await self._thread(self.assets.uploads.cancel, request.match_info["id"], owner)
        return json_response(self._session(session))

    # ------------------------------------------------------------------ blobs

    def _blob_cid(self, request: web.Request) -> bytes:
        return parse_cid(request.match_info["cid"])

    async def get_blob(self, request: web.Request) -> web.StreamResponse:
        cid = self._blob_cid(request)
        presigned = self._presigned(request)
        actor = presigned or ""
        if not presigned:
            token = self.api.require_unlimited(request, READ, target=f"blob/{cid_text(cid)}")
            actor = token.actor
        entry: BlobEntry = await self._thread(self.assets.blobs.require, cid)
        verdicts = await self._checked(actor, f"blob/{cid_text(cid)}", self.assets.may_serve, entry)
        self.api.audit.note("read", actor, f"blob/{cid_text(cid)}", f"download; checks: {verdicts}", required=False)
        etag = f'"{cid_text(cid)}"'
        max_age = IMMUTABLE_S
        if presigned:
            max_age = max(0, min(IMMUTABLE_S, int(request.query["rg-expires"]) - int(time.time())))
        headers = {"ETag": etag, "Accept-Ranges": "bytes",
                   "Cache-Control": f"{'public' if presigned else 'private'}, max-age={max_age}, immutable",
                   "X-Content-SHA256": entry.sha256}
        if not_modified(request.headers, etag):
            return web.Response(status=304, headers=headers)
        ranges = None
        if_range = request.headers.get("If-Range")
        if if_range is None or if_range.strip() == etag:
            ranges = parse_ranges(request.headers.get("Range"), entry.size)  # RangeNotSatisfiable: 416
        if ranges is None:
            return await self._stream(request, cid, [(0, entry.size)], 200, entry, headers)
        if len(ranges) == 1:
            start, end = ranges[0]
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
            return await self._stream(request, cid, ranges, 206, entry, headers)
        with self._download_slot(request):
            return await self._stream_multipart(request, cid, ranges, entry, headers)

    async def _stream(self, request: web.Request, cid: bytes, ranges: list[tuple[int, int]], status: int,
                      entry: BlobEntry, headers: dict[str, str]) -> web.StreamResponse:
        with self._download_slot(request):
            return await self._stream_in_slot(request, cid, ranges, status, entry, headers)

    async def _stream_in_slot(self, request: web.Request, cid: bytes, ranges: list[tuple[int, int]], status: int,
                              entry: BlobEntry, headers: dict[str, str]) -> web.StreamResponse:
        start, end = ranges[0]
        chunks = None
        if request.method != "HEAD":
            # Opened before the status line goes out, so bytes gone from the
            # object store answer 404 rather than a cut-off 200; and on a
            # worker thread: on S3 opening is a request (a slow or failing
            # service must not stall the loop every other request runs on).
            chunks = await self._thread(lambda: self.assets.blobs.read(cid, start=start, end=end))
        response = web.StreamResponse(status=status, headers={**headers, **_trace(request)})
        response.content_type = entry.content_type
        response.content_length = end - start
        try:
            await response.prepare(request)
        except BaseException:
            if chunks is not None:
                await self._thread(_close, chunks)
            raise
        if chunks is not None:
            await self._pump(request, response, chunks, end - start)
        await send(request, response.write_eof())
        return response

    async def _stream_multipart(self, request: web.Request, cid: bytes, ranges: list[tuple[int, int]],
                                entry: BlobEntry, headers: dict[str, str]) -> web.StreamResponse:
        boundary = secrets.token_hex(16)
        heads = [(f"\r\n--{boundary}\r\nContent-Type: {entry.content_type}\r\n"
                  f"Content-Range: bytes {s}-{e - 1}/{entry.size}\r\n\r\n").encode() for s, e in ranges]
        tail = f"\r\n--{boundary}--\r\n".encode()
        response = web.StreamResponse(status=206, headers={**headers, **_trace(request)})
        response.content_type = "multipart/byteranges"
        response.headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
        response.content_length = sum(len(h) for h in heads) + sum(e - s for s, e in ranges) + len(tail)
        await response.prepare(request)
        if request.method != "HEAD":
            for head, (start, end) in zip(heads, ranges, strict=True):
                await send(request, response.write(head))
                await self._pump(request, response, await self._thread(
                    lambda s=start, e=end: self.assets.blobs.read(cid, start=s, end=e)), end - start)  # see _stream
            await send(request, response.write(tail))
        await send(request, response.write_eof())
        return response

    async def _pump(self, request: web.Request, response: web.StreamResponse, chunks: Iterator[bytes],
                    expected: int | None = None) -> None:
        """Send ``chunks``; with ``expected`` (the Content-Length promised),
        IntegrityError if the stored bytes are shorter or longer: a short
        object (truncated where it is stored) left the client waiting for
        the rest for good, the connection open and nothing logged. Raised
        after the headers went out, it cuts the answer (closed, logged,
        counted in rgrid_http_answers_cut_total)."""
        # One thread hop a chunk (1 MiB): reading the next chunk while this
        # one is written (two held) was tried and not kept: on the 2-core VM
        # S3 downloads to a discarding client ran 545-708 MB/s with it and
        # 646-954 without (bare obstore get: 1,000-1,080), within the noise.
        loop = asyncio.get_running_loop()
        sent = 0
        try:
            while True:
                chunk = await loop.run_in_executor(None, next, chunks, None)
                if chunk is None:
                    if expected is not None and sent != expected:
                        raise IntegrityError(f"the stored bytes ended after {sent} of the {expected} promised: "
                                             "the blob is damaged where it is stored (`rgrid asset verify`)")
                    return
                sent += len(chunk)
                if expected is not None and sent > expected:
                    raise IntegrityError(f"the stored bytes run past the {expected} promised: the blob is "
                                         "damaged where it is stored (`rgrid asset verify`)")
                # Waits for the socket to drain (the backpressure), at most
                # streaming.WRITE_TIMEOUT_S: a client that stopped reading
                # held its download and ~2 MB of queued bytes for good.
                await send(request, response.write(chunk))
                self.api.metrics.download_bytes.inc(len(chunk))
        finally:
            await loop.run_in_executor(None, _close, chunks)

    async def _may_serve(self, actor: str, cid: bytes) -> str:
        """The download checks' verdict on blob ``cid`` (CheckRefused, audited,
        if one refuses): for its bytes, and for anything read out of them (a
        ZIP's manifest and entries, a bundle's members), which passed every
        check that refused the blob itself."""
        entry: BlobEntry = await self._thread(self.assets.blobs.require, cid)
        return await self._checked(actor, f"blob/{cid_text(cid)}", self.assets.may_serve, entry)

    async def blob_manifest(self, request: web.Request) -> web.Response:
        cid = self._blob_cid(request)
        token = self.api.require_unlimited(request, READ, target=f"blob/{cid_text(cid)}")
        await self._may_serve(token.actor, cid)
        found = await self._thread(manifest_of, self.assets.blobs, cid)
        self.api.read_note(token, f"blob/{cid_text(cid)}", "zip manifest")
        return json_response(manifest_view(cid, found), headers={"ETag": f'"{cid_text(cid)}-manifest"'})

    async def blob_entry(self, request: web.Request) -> web.StreamResponse:
        """One file of a stored ZIP, inflated as it is sent."""
        cid = self._blob_cid(request)
        name = request.match_info["name"]
        token = self.api.require_unlimited(request, READ, target=f"blob/{cid_text(cid)}")
        await self._may_serve(token.actor, cid)
        with self._download_slot(request):
            return await self._send_entry(request, token, cid, name)

    async def _send_entry(self, request: web.Request, token: Any, cid: bytes, name: str) -> web.StreamResponse:
        entry, chunks = await self._thread(entry_of, self.assets.blobs, cid, name)
        self.api.read_note(token, f"blob/{cid_text(cid)}", f"zip entry {name[:200]}")
        response = web.StreamResponse(headers={"ETag": f'"{entry.sha256}"', "X-Content-SHA256": entry.sha256,
                                               "Cache-Control": f"private, max-age={IMMUTABLE_S}, immutable",
                                               **_trace(request)})
        response.content_type = "application/octet-stream"
        response.content_length = entry.size
        await response.prepare(request)
        if request.method != "HEAD":
            await self._pump(request, response, chunks, entry.size)
        await send(request, response.write_eof())
        return response

    async def bundle(self, request: web.Request) -> web.StreamResponse:
        """A ZIP of blobs, entries of stored ZIPs and allowed URLs, built while it is sent."""
        token = self.api.require_unlimited(request, READ, target="bundles")
        body, _ = await self.api.body(request, "BundleRequest")
        plan = Bundle.parse(body.get("members"), allowed_hosts=self.assets.bundle_hosts)
        await self._thread(plan.check, self.assets.blobs)  # 404 before any byte, not a broken archive
        for cid in dict.fromkeys(m.cid for m in plan.members if m.cid is not None):
            await self._may_serve(token.actor, cid)
        filename = body.get("name") or "bundle.zip"
        if not isinstance(filename, str) or not filename.endswith(".zip") or "/" in filename or '"' in filename \
                or "\\" in filename or any(ord(c) < 0x20 or c == "\x7f" for c in filename):
            raise ValidationError("name: a file name ending in .zip (no '/', '\"', '\\' or control characters)")
        headers = {"ETag": plan.etag, "Content-Disposition": attachment(filename),
                   "Cache-Control": "private, max-age=3600"}
        if not_modified(request.headers, plan.etag):
            return web.Response(status=304, headers=headers)
        self.api.read_note(token, "bundles", f"bundle of {len(plan.members)} members")
        with self._download_slot(request):
            response = web.StreamResponse(headers={**headers, **_trace(request)})
            response.content_type = "application/zip"
            await response.prepare(request)  # chunked: the size is known only at the end
            await self._pump(request, response, plan.chunks(self.assets.blobs))
            await send(request, response.write_eof())
            return response

    async def fetch_blob(self, request: web.Request) -> web.Response:
        """Bring a blob here from the federation's members (node/blob_exchange.py): verified, resumable."""
        cid = self._blob_cid(request)
        token = self.api.require_unlimited(request, WRITE, target=f"blob/{cid_text(cid)}")
        if self.api.fetch_blob is None:
            raise Disabled("this node cannot fetch blobs from peers")
        try:
            answer = await self.api.fetch_blob(cid)
        except CheckRefused as exc:
            raise self.api.auth.refuse(token.actor, f"blob/{cid_text(cid)}", exc) from None
        if answer.get("fetched"):
            self.api.audit.note("create", token.actor, f"blob/{cid_text(cid)}",
                                f"fetched from {', '.join(answer.get('providers', []))[:300]}; "
                                f"checks: {answer.get('checks', '')}")
        return json_response(answer)

    async def rotate_presign_keys(self, request: web.Request) -> web.Response:
        """A new signing key for presigned URLs; URLs signed before keep working until they expire."""
        token = self.api.require(request, ADMIN, target="presign")
        key = await self._thread(self.assets.presign.rotate)
        self.api.audit.note("update", token.actor, "presign", f"signing key rotated to {key.kid}")
        return json_response({"kid": key.kid, "keys": [k.kid for k in self.assets.presign.keys]})

    async def blob_meta(self, request: web.Request) -> web.Response:
        cid = self._blob_cid(request)
        token = self.api.require_unlimited(request, READ, target=f"blob/{cid_text(cid)}")
        entry = await self._thread(self.assets.blobs.require, cid)
        self.api.read_note(token, f"blob/{cid_text(cid)}", "meta")
        return json_response(blob_view(cid, entry))

    async def presign_blob(self, request: web.Request) -> web.Response:
        cid = self._blob_cid(request)
        token = self.api.require_unlimited(request, READ, target=f"blob/{cid_text(cid)}")
        body, _ = await self.api.body(request, "PresignOptions")
        expires, ip = _presign_options(body)
        await self._thread(self.assets.blobs.require, cid)
        url = self.assets.presign.sign("GET", f"/v1/blobs/{cid_text(cid)}", expires_in_s=expires, ip=ip,
                                       token=token.id)
        return json_response({"url": url, "expires_in": expires})

    async def retain_blob(self, request: web.Request) -> web.Response:
        cid = self._blob_cid(request)
        token = self.api.require(request, ADMIN, target=f"blob/{cid_text(cid)}")
        body, _ = await self.api.body(request, "RetentionSet")
        until = body.get("until_ms")
        if not isinstance(until, int) or isinstance(until, bool) or not 0 <= until < 2**63:
            raise ValidationError("until_ms: milliseconds since the epoch", details=[{"path": "/until_ms"}])
        entry = await self._thread(self.assets.blobs.retain, cid, until)
        self.api.audit.note("update", token.actor, f"blob/{cid_text(cid)}", f"retained until {until}")
        return json_response(blob_view(cid, entry))

    async def hold_blob(self, request: web.Request) -> web.Response:
        cid = self._blob_cid(request)
        token = self.api.require(request, ADMIN, target=f"blob/{cid_text(cid)}")
        name = check_hold_name(request.match_info["name"])
        body, _ = await self.api.body(request, "HoldSet")
        reason = check_hold_reason(body.get("reason", ""))
        entry = await self._thread(self.assets.blobs.hold, cid, name, f"{reason} (by {token.actor})")
        self.api.audit.note("update", token.actor, f"blob/{cid_text(cid)}", f"legal hold {name}: {reason}")
        return json_response(blob_view(cid, entry))

    async def release_blob(self, request: web.Request) -> web.Response:
        cid = self._blob_cid(request)
        token = self.api.require(request, ADMIN, target=f"blob/{cid_text(cid)}")
        name = check_hold_name(request.match_info["name"])
        entry = await self._thread(self.assets.blobs.release, cid, name)
        self.api.audit.note("update", token.actor, f"blob/{cid_text(cid)}", f"legal hold {name} released")
        return json_response(blob_view(cid, entry))

    async def delete_blob(self, request: web.Request) -> web.Response:
        cid = self._blob_cid(request)
        token = self.api.require(request, ADMIN, target=f"blob/{cid_text(cid)}")
        try:
            entry = await self._thread(self.assets.blobs.delete, cid)
        except RegistryError as exc:
            raise self.api.auth.refuse(token.actor, f"blob/{cid_text(cid)}", exc) from None
        gone = await self._thread(self.assets.blobs.objects.size, blob_key(cid))
        self.api.audit.note("delete", token.actor, f"blob/{cid_text(cid)}",
                            f"purged {entry.size} bytes; object store holds it: {gone is not None}")
        return json_response({"cid": cid_text(cid), "purged": True, "size": entry.size})


def _close(chunks: Iterator[bytes]) -> None:
    """Let go of what a read holds (a file, an S3 response), if it is a generator."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def _trace(request: web.Request) -> dict[str, str]:
    """A streamed answer is sent before the middleware sees it: it names its trace id itself."""
    trace_id = request.get(TRACE_ID)
    return {"X-Trace-Id": trace_id} if trace_id else {}


def blob_view(cid: bytes, entry: BlobEntry) -> dict[str, Any]:
    return {"cid": cid_text(cid), "size": entry.size, "sha256": entry.sha256, "md5": entry.md5 or None,
            "content_type": entry.content_type, "created_at_ms": entry.created_ms,
            "retain_until_ms": entry.retain_until_ms or None, "holds": dict(entry.holds),
            "meta": dict(entry.meta), "checks": entry.checks}


def _content_md5(value: str | None) -> str | None:
    """Content-MD5 (RFC 1864): base64 of the digest; S3 clients send it."""
    if value is None:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise MalformedInput("Content-MD5 is the base64 of a 16-byte MD5 digest",
                             details=[{"path": "header:Content-MD5"}])
    return raw.hex()


def _sha256_header(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise MalformedInput("X-Checksum-Sha256 is 64 hex digits", details=[{"path": "header:X-Checksum-Sha256"}])
    return value


def _presign_options(options: dict[str, Any]) -> tuple[int, str | None]:
    """(expires_in, ip) of a presign request, checked before anything is created."""
    expires = options.get("expires_in", 3600)
    if not isinstance(expires, int) or isinstance(expires, bool) or not 1 <= expires <= MAX_EXPIRES_S:
        raise ValidationError(f"expires_in: 1 to {MAX_EXPIRES_S} seconds", details=[{"path": "/expires_in"}])
    ip = options.get("ip")
    if ip is not None:
        try:
            ip = str(ipaddress.ip_network(ip, strict=False))
        except (TypeError, ValueError):
            raise ValidationError(f"ip: an IP address or network, not {str(ip)[:60]!r}",
                                  details=[{"path": "/ip"}]) from None
    return expires, ip


def attachment(filename: str) -> str:
    """A Content-Disposition for ``filename`` that every client reads alike:
    a header is ASCII, so a name beyond it goes as RFC 8187's
    ``filename*=UTF-8''...``, with an ASCII ``filename`` beside it for
    clients that know only that one (RFC 6266, section 4.3)."""
    if filename.isascii():
        return f'attachment; filename="{filename}"'
    fallback = "".join(c if c.isascii() else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"
