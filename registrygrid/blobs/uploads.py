"""Resumable upload sessions: large files in parts, any order, in parallel.

    session = uploads.create(owner, size=n, sha256=h, content_type="application/zip")
    uploads.put_part(session.id, owner, 3, chunks, Expected(md5=...))   # any order, any time
    uploads.status(session.id, owner).parts                            # what arrived: resume from here
    uploads.finalize(session.id, owner)                                # idempotent: the blob's CID

A session declares the whole file (size, and optionally its SHA-256 and
MD5 and content type); the node fixes the part size and so the parts'
count and lengths: every part is ``part_size`` bytes but the last. Each
part is digested as it streams into the object store (``uploads/<id>/<n>``)
and must match its length and any checksum the client sent with it, or it
is not recorded (a part it replaced on the local store, which writes parts
in place, is then missing). One request writes a part at a time (another
meanwhile gets PartInProgress). The session lives in LMDB with
an expiry that every part and heartbeat renews (a TTL key), so a client or
the node can stop and resume later: ``status`` lists the parts held.

``finalize`` streams the parts in order into a blob (blobs/blobs.py),
checking each part against the digest it had on arrival and the whole
against the declaration, in the one pass that composes them; then the
parts go and the session records the CID. A second finalize answers the
same. If the declared SHA-256 names a blob the node holds already, the
session is complete at creation with no bytes to send (``deduplicated``).
Quotas are checked at creation (the declared size) and at finalize.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import msgspec

from registrygrid.blobs.blobs import BlobStore, Vet, blob_key
from registrygrid.blobs.digest import ChecksumMismatch, Expected, StreamDigest, cid_text
from registrygrid.errors import (
    Conflict,
    NotFound,
    PolicyDenied,
    RateLimited,
    TooLarge,
    ValidationError,
)
from registrygrid.protocol.envelope import cid_from_sha256
from registrygrid.storage import blobs as index
from registrygrid.storage.blobs import Part, UploadSession

UPLOADS = "uploads"
# A media type as RFC 9110 8.3.1 writes it: type/subtype and parameters, each
# a token or a quoted value, so no control character can reach a header.
_TOKEN = "[!#$%&'*+.^_`|~0-9A-Za-z-]+"
MEDIA_TYPE_PATTERN = f'^{_TOKEN}/{_TOKEN}( *; *{_TOKEN}=({_TOKEN}|"[^"\\\\\\x00-\\x1f\\x7f]*"))*$'
_MEDIA_TYPE = re.compile(MEDIA_TYPE_PATTERN)


class UploadExpired(NotFound):
    code = "upload_expired"


class PartInProgress(Conflict):
    """Another request is writing this part of this upload right now: a
    client retrying while its first attempt still streams. The two would
    write the same bytes of the same file at once (the local store writes a
    part in place), so the second is refused before it writes anything;
    ``details["retry_after_s"]`` (the answer's Retry-After) says when to
    ask again."""

    code = "part_in_progress"


# How long a refused writer of a busy part is asked to wait: about what a
# default part (8 MiB) takes at ~10 MB/s, and the bridge's Retry-After on a
# 503 (1 s, node/bridge/app.py); a part still streaming then is refused again.
PART_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class UploadLimits:
    # 8 MiB parts: S3's multipart minimum is 5 MiB, and a lost part costs
    # little to resend; a client may ask for 1 MiB to 256 MiB.
    default_part_bytes: int = 8 << 20
    min_part_bytes: int = 1 << 20
    max_part_bytes: int = 256 << 20
    max_parts: int = 10_000  # as S3
    # A session untouched for this long expires (its parts are deleted).
    ttl_s: float = 24 * 3600.0
    max_open_per_owner: int = 64
    # However often renewed, a session expires this long after its creation
    # (None: never). Set under an S3 lifecycle rule that expires upload
    # objects (blobs/service.py): parts count their age from their own
    # creation, so a session kept alive past the rule would lose them.
    max_age_s: float | None = None


def _session_id() -> str:
    return "up_" + secrets.token_hex(16)


class Uploads:
    def __init__(self, blobs: BlobStore, limits: UploadLimits | None = None, *,
                 now: Callable[[], float] = time.time) -> None:
        self.blobs = blobs
        self.store = blobs.store
        self.objects = blobs.objects
        self.limits = limits or UploadLimits()
        self._now = now
        # Judges what a client declares at create ("declare") and the bytes
        # before they become a blob (blobs/service.py sets both; None: no checks).
        self.declare: Callable[[int, str, str], None] | None = None
        self.vet: Vet | None = None
        self._finalizing: dict[str, threading.Lock] = {}
        # The (session, part) pairs being written now: one writer a part, so
        # two attempts at the same part never write its range at once.
        self._writing: set[tuple[str, int]] = set()
        # Sessions a finalize is reading, or a cancel or the sweep dropping,
        # now -> what ends them ("finalized", "cancelled", "swept (it
        # expired)"): no part may be written meanwhile (it
        # would change bytes the finalize checks or renames), and the other
        # may not start (a cancel would drop the parts a finalize reads, and
        # each would write its own end over the other's).
        self._composing: dict[str, str] = {}
        # A backend that writes at an offset (LocalObjects) takes parts in place.
        self._in_place = callable(getattr(self.objects, "write_at", None))
        self._guard = threading.Lock()
        self._creating = threading.Lock()

    def _now_ms(self) -> int:
        return int(self._now() * 1000)

    def _expiry(self, created_ms: int | None = None) -> int:
        renewed = self._now_ms() + int(self.limits.ttl_s * 1000)
        if created_ms is None or self.limits.max_age_s is None:
            return renewed
        return min(renewed, created_ms + int(self.limits.max_age_s * 1000))

    # ---- create

    def create(self, owner: str, *, size: int, part_size: int | None = None, sha256: str | None = None,
               md5: str | None = None, content_type: str = "application/octet-stream",
               name: str = "") -> UploadSession:
        for path, value in (("sha256", sha256), ("md5", md5)):
            if value is not None and not isinstance(value, str):
                raise ValidationError(f"{path} is a hex string", details=[{"path": path}])
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValidationError("size must be a whole number of bytes", details=[{"path": "size"}])
        if part_size is not None and (not isinstance(part_size, int) or isinstance(part_size, bool)):
            raise ValidationError("part_size is a whole number of bytes", details=[{"path": "part_size"}])
        if not isinstance(name, str) or not isinstance(content_type, str):
            raise ValidationError("name and content_type are strings", details=[{"path": "content_type"}])
        declared = Expected(size=size, sha256=sha256, md5=md5)  # checks their forms
        limits = self.limits
        part = limits.default_part_bytes if part_size is None else part_size
        if not limits.min_part_bytes <= part <= limits.max_part_bytes:
            raise ValidationError(f"part_size must be {limits.min_part_bytes} to {limits.max_part_bytes} bytes",
                                  details=[{"path": "part_size"}])
        if -(-size // part) > limits.max_parts:
            part = -(-size // limits.max_parts)  # the fewest bytes per part that fit the part cap
            if part > limits.max_part_bytes:
                raise TooLarge(f"{size} bytes need more than {limits.max_parts} parts of "
                               f"{limits.max_part_bytes} bytes", details=[{"path": "size"}])
        if len(name) > 1024 or any(ord(c) < 0x20 or c == "\x7f" for c in name):
            raise ValidationError("name has at most 1024 characters and no control characters",
                                  details=[{"path": "name"}])
        if len(content_type) > 255 or not _MEDIA_TYPE.fullmatch(content_type):
            raise ValidationError("content_type is a media type (type/subtype; RFC 9110 tokens)",
                                  details=[{"path": "content_type"}])
        if self.declare is not None:
            self.declare(size, content_type, name)
        with self._creating:  # counted and stored as one step: creates at once can't pass the cap together
            now = self._now_ms()
            live = [s for s in index.iter_sessions(self.store) if s.state == "open" and s.expires_ms > now]
            open_sessions = sum(1 for s in live if s.owner == owner)
            if open_sessions >= limits.max_open_per_owner:
                raise RateLimited(f"at most {limits.max_open_per_owner} open uploads per client: finalize or "
                                  "cancel one first")
            session = UploadSession(id=_session_id(), owner=owner, size=size, part_size=part,
                                    content_type=content_type, name=name, sha256=declared.sha256,
                                    md5=declared.md5, created_ms=now, expires_ms=self._expiry())
            if sha256 is not None:
                cid = cid_from_sha256(bytes.fromhex(sha256))
                known = self.blobs.entry(cid)
                if known is not None and known.size == size:
                    session = msgspec.structs.replace(session, state="complete", cid=cid_text(cid),
                                                      deduplicated=True)
                    index.put_session(self.store, session)
                    return session
            # The open uploads' declared bytes count against the quota too:
            # their parts fill the disk, 64 uploads a client, before any
            # is a blob the quota sees.
            self.blobs.check_room(size, staged=sum(s.size for s in live))
            index.put_session(self.store, session)
            return session

    # ---- parts

    def _open(self, session_id: str, owner: str | None) -> UploadSession:
        session = index.get_session(self.store, session_id)
        if session is None:
            raise NotFound(f"no upload {session_id!r}")
        if owner is not None and session.owner != owner:
            raise PolicyDenied(f"upload {session_id} belongs to another client")
        if session.state == "open" and session.expires_ms <= self._now_ms():
            raise UploadExpired(f"upload {session_id} expired (untouched for {self.limits.ttl_s:g} s); start again")
        return session

    def put_part(self, session_id: str, owner: str | None, number: int, chunks: Iterable[bytes],
                 expected: Expected | None = None, still_allowed: Callable[[], None] = lambda: None) -> Part:
        """Store part ``number`` (1-based). The same part sent twice replaces
        the first; one that fails its length or a checksum is not recorded
        (on the local store, where a part is written in place, a part held
        before is then missing: its bytes were overwritten). One writer a
        part at a time: a second, while the first streams, is refused
        (PartInProgress); other parts go in parallel. ``still_allowed`` runs
        once the part's bytes are all in, before it is recorded, and refuses
        (raises) if its writer lost the right to write meanwhile (a token
        revoked while a slow body came in): the part is then not recorded."""
        session = self._open(session_id, owner)
        if session.state != "open":
            raise Conflict(f"upload {session_id} is {session.state}")
        if not 1 <= number <= session.part_count:
            raise ValidationError(f"part numbers of upload {session_id} run from 1 to {session.part_count}",
                                  details=[{"path": "part", "max": session.part_count}])
        with self._writing_part(session_id, number):
            # Read again under the claim: a writer of this part that just
            # ended may have recorded it since.
            return self._put_part(self._open(session_id, owner), number, chunks, expected, still_allowed)

    @contextlib.contextmanager
    def _writing_part(self, session_id: str, number: int) -> Iterator[None]:
        """Hold part ``number`` of ``session_id`` for one writer (PartInProgress
        to a second); released however the writer ends: done, refused, or its
        body failing because the client went away."""
        claim = (session_id, number)
        with self._guard:
            if session_id in self._composing:
                raise Conflict(f"upload {session_id} is being {self._composing[session_id]}; its parts can no "
                               "longer change")
            if claim in self._writing:
                raise PartInProgress(
                    f"part {number} of upload {session_id} is being written by another request; retry when it "
                    "ends (its answer says whether it was stored)",
                    details={"part": number, "retry_after_s": PART_RETRY_AFTER_S})
            self._writing.add(claim)
        try:
            yield
        finally:
            with self._guard:
                self._writing.discard(claim)

    def _put_part(self, session: UploadSession, number: int, chunks: Iterable[bytes],
                  expected: Expected | None, still_allowed: Callable[[], None]) -> Part:
        session_id = session.id
        length = session.part_length(number)
        # MD5 only when the client sent one to check (S3 clients send
        # Content-MD5): it costs more than SHA-256 and CRC-32 together here.
        digest = StreamDigest(md5=expected is not None and expected.md5 is not None)
        sent = expected or Expected()
        declared = Expected(size=length, sha256=sent.sha256, md5=sent.md5)
        key = part_key(session_id, number)

        def ended(current: UploadSession | None) -> UploadSession:
            if current is None or current.state != "open":
                raise Conflict(f"upload {session_id} ended while part {number} arrived")
            return current

        def forget(current: UploadSession | None) -> UploadSession:
            held = ended(current)
            return msgspec.structs.replace(held, parts={n: p for n, p in held.parts.items() if n != number})

        if self._in_place:
            # Each part straight into its place in the file the blob will be
            # (a local disk): finalize then reads it once and renames it, and
            # never writes the bytes a second time. A part that fails its
            # checks is not recorded; its range is written again by a retry.
            body = digest.tee(_at_most(chunks, length, number))
            if number in session.parts:
                # A part sent again (its first answer lost) rewrites the bytes
                # the session vouches for: it stops vouching before the first
                # of them changes, so a rewrite that fails leaves the part
                # missing (send it again) rather than recorded over bytes that
                # no longer match. Refused before any byte: held as before.
                body = _before_the_first(body, lambda: index.update_session(self.store, session_id, forget))
            self.objects.write_at(data_key(session_id), (number - 1) * session.part_size,  # type: ignore[attr-defined]
                                  body)
            digest.check(declared, what=f"part {number}")
            still_allowed()
        else:
            # A name of its own: never another attempt's, even one a stopped node left behind.
            staged = f"{key}.{secrets.token_hex(4)}"
            try:
                self.objects.put(staged, digest.tee(_at_most(chunks, length, number)))
                digest.check(declared, what=f"part {number}")
                still_allowed()
                self.objects.move(staged, key)
            except BaseException:
                self.objects.delete(staged)
                raise
        part = Part(digest.size, digest.sha256, digest.md5 or "")

        def add(current: UploadSession | None) -> UploadSession:
            held = ended(current)
            return msgspec.structs.replace(held, parts={**held.parts, number: part},
                                           expires_ms=self._expiry(held.created_ms))

        try:
            index.update_session(self.store, session_id, add)
        except Conflict:
            if not self._in_place:
                self.objects.delete(key)
            raise
        return part

    def heartbeat(self, session_id: str, owner: str | None) -> UploadSession:
        self._open(session_id, owner)

        def renew(current: UploadSession | None) -> UploadSession:
            assert current is not None
            return msgspec.structs.replace(current, expires_ms=self._expiry(current.created_ms)) \
                if current.state == "open" else current

        renewed = index.update_session(self.store, session_id, renew)
        assert renewed is not None
        return renewed

    def status(self, session_id: str, owner: str | None) -> UploadSession:
        return self._open(session_id, owner)

    # ---- finalize and cancel

    def finalize(self, session_id: str, owner: str | None) -> UploadSession:
        with self._guard:
            lock = self._finalizing.setdefault(session_id, threading.Lock())
        try:
            with lock:  # one composition per session; a concurrent finalize waits and answers the same
                session = self._open(session_id, owner)
                if session.state == "complete":
                    return session
                with self._composing_parts(session_id, "finalized"):
                    return self._finalize(self._open(session_id, owner))  # as it is now: no cancel can start
        finally:
            with self._guard:
                self._finalizing.pop(session_id, None)

    @contextlib.contextmanager
    def _composing_parts(self, session_id: str, ending: str) -> Iterator[None]:
        """Hold the session's parts still while a finalize reads them, or a
        cancel or the sweep drops them (``ending``: how the session ends):
        PartInProgress if one is being written now, Conflict if the other
        is under way, and no part write starts until this ends, however it
        ends."""
        with self._guard:
            busy = sorted(n for s, n in self._writing if s == session_id)
            if busy:
                raise PartInProgress(f"part {busy[0]} of upload {session_id} is being written; "
                                     f"{_RETRY.get(ending, 'retry')} when it ends",
                                     details={"part": busy[0], "retry_after_s": PART_RETRY_AFTER_S})
            if session_id in self._composing:
                raise Conflict(f"upload {session_id} is being {self._composing[session_id]} now",
                               details={"retry_after_s": PART_RETRY_AFTER_S})
            self._composing[session_id] = ending
        try:
            yield
        finally:
            with self._guard:
                self._composing.pop(session_id, None)

    def _finalize(self, session: UploadSession) -> UploadSession:
        """Check the parts and the whole, and make them one blob (the
        session's parts held still: _composing_parts)."""
        session_id = session.id
        if session.state != "open":
            raise Conflict(f"upload {session_id} is {session.state}")
        missing = [n for n in range(1, session.part_count + 1) if n not in session.parts]
        if missing:
            raise Conflict(f"upload {session_id} lacks {len(missing)} of {session.part_count} parts",
                           details=[{"missing": missing[:100]}])
        whole = Expected(size=session.size, sha256=session.sha256, md5=session.md5)
        if self._in_place:
            if self.objects.size(data_key(session_id)) is None:
                if session.size > 0:
                    return self._after_a_cut_finalize(session, whole)
                self.objects.put(data_key(session_id), [])  # an empty file has no part to write it
            cid, _entry, _stored = self.blobs.adopt(
                data_key(session_id), expected=whole, content_type=session.content_type, name=session.name,
                vet=self.vet, reading=lambda chunks: self._checked_parts(session, chunks))
        else:
            cid, _entry, _stored = self.blobs.put(
                self._composed(session), content_type=session.content_type, name=session.name, vet=self.vet,
                expected=whole)
        return self._completed(session, cid)

    def _completed(self, session: UploadSession, cid: bytes) -> UploadSession:
        done = msgspec.structs.replace(session, state="complete", cid=cid_text(cid))
        index.put_session(self.store, done)
        self._drop_parts(session.id)
        return done

    def _after_a_cut_finalize(self, session: UploadSession, whole: Expected) -> UploadSession:
        """The in-place file of a session that holds every part is gone: a
        finalize that a crash cut short moved it under its CID, and the
        session's completion never committed. Done, if the node holds the
        declared SHA-256: the blob's entry committed, or the crash came
        before it and the file lies under its CID, unindexed (checked,
        vetted and indexed now, as reconcile would). Otherwise the parts'
        bytes are lost to this session, so it stops vouching for them and
        asks for them again (the blob they make is deduplicated)."""
        if session.sha256 is not None:
            cid = cid_from_sha256(bytes.fromhex(session.sha256))
            known = self.blobs.entry(cid)
            if known is None and self.objects.size(blob_key(cid)) == session.size:
                with contextlib.suppress(ChecksumMismatch):  # not its bytes: left for verify to list
                    _cid, known, _stored = self.blobs.adopt(blob_key(cid), expected=whole,
                                                            content_type=session.content_type,
                                                            name=session.name, vet=self.vet)
            if known is not None and known.size == session.size:
                return self._completed(session, cid)

        def forget_all(current: UploadSession | None) -> UploadSession:
            if current is None or current.state != "open":
                raise Conflict(f"upload {session.id} ended while it was finalized")
            return msgspec.structs.replace(current, parts={})

        index.update_session(self.store, session.id, forget_all)
        numbers = list(range(1, session.part_count + 1))
        raise Conflict(f"upload {session.id} lacks the bytes of its parts (a finalize stopped midway, before "
                       f"the blob was recorded): send its {len(numbers)} parts again",
                       details=[{"missing": numbers[:100]}])

    def _composed(self, session: UploadSession) -> Iterator[bytes]:
        """The parts in order. Without a declared SHA-256 for the whole, each
        part is checked against the digest it had on arrival (with one, the
        whole's check covers every part, at half the hashing)."""
        for n in range(1, session.part_count + 1):
            recorded = session.parts[n]
            chunks = self.objects.get(part_key(session.id, n))
            if session.sha256 is not None:
                yield from chunks
                continue
            digest = StreamDigest()
            yield from digest.tee(chunks)
            if digest.sha256 != recorded.sha256 or digest.size != recorded.size:
                raise ChecksumMismatch(f"part {n} of upload {session.id} changed in the object store since it "
                                       "arrived; send it again", details=[{"part": n}])

    def _checked_parts(self, session: UploadSession, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """The in-place file as it is read at finalize; without a declared
        SHA-256 for the whole, each part's range is checked against the
        digest it had on arrival (with one, the whole's check covers them)."""
        if session.sha256 is not None:
            yield from chunks
            return
        number, digest = 1, StreamDigest()
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                room = session.part_length(number) - digest.size
                digest.update(view[:room])
                yield bytes(view[:room])
                view = view[room:]
                if digest.size == session.part_length(number):
                    self._check_part(session, number, digest)
                    number, digest = number + 1, StreamDigest()

    @staticmethod
    def _check_part(session: UploadSession, number: int, digest: StreamDigest) -> None:
        recorded = session.parts[number]
        if digest.sha256 != recorded.sha256 or digest.size != recorded.size:
            raise ChecksumMismatch(f"part {number} of upload {session.id} changed in the object store since it "
                                   "arrived; send it again", details=[{"part": number}])

    def cancel(self, session_id: str, owner: str | None) -> UploadSession:
        self._open(session_id, owner)  # NotFound before any wait
        with self._composing_parts(session_id, "cancelled"):
            session = self._open(session_id, owner)  # as it is now no finalize can start
            if session.state == "complete":
                raise Conflict(f"upload {session_id} is complete; delete the blob instead")
            cancelled = msgspec.structs.replace(session, state="cancelled", parts={})
            index.put_session(self.store, cancelled)
            self._drop_parts(session_id)
        return cancelled

    def _drop_parts(self, session_id: str) -> None:
        for key in list(self.objects.keys(f"{UPLOADS}/{session_id}/")):
            self.objects.delete(key)

    def sweep(self) -> int:
        """Forget sessions that expired or ended a TTL ago, with their parts;
        never one a request works on now (a part being written, a finalize
        reading the parts, a cancel: the next sweep sees it), nor one renewed
        since it was listed."""
        now = self._now_ms()
        gone = 0
        for session in list(index.iter_sessions(self.store)):
            if not self._stale(session, now):
                continue
            try:
                with self._composing_parts(session.id, "swept (it expired)"):
                    if self._forget_if_stale(session.id, now):
                        self._drop_parts(session.id)
                        gone += 1
            except Conflict:  # PartInProgress too: busy now
                continue
        return gone

    def _stale(self, session: UploadSession, now: int) -> bool:
        if session.state == "open":
            return session.expires_ms <= now
        return session.expires_ms + int(self.limits.ttl_s * 1000) <= now

    def _forget_if_stale(self, session_id: str, now: int) -> bool:
        """Delete the session if it is still stale, in one transaction (a
        heartbeat may have renewed it meanwhile); whether it was."""
        forgotten: list[UploadSession] = []

        def forget(current: UploadSession | None) -> UploadSession | None:
            if current is not None and self._stale(current, now):
                forgotten.append(current)
                return None
            return current

        index.update_session(self.store, session_id, forget)
        return bool(forgotten)


# What a request that ends a session retries when a part write holds it.
_RETRY = {"finalized": "finalize", "cancelled": "cancel"}


def part_key(session_id: str, number: int) -> str:
    return f"{UPLOADS}/{session_id}/{number:05d}"


def data_key(session_id: str) -> str:
    """The file an upload's parts are written into, in place (a local object store)."""
    return f"{UPLOADS}/{session_id}/data"


def _before_the_first(chunks: Iterable[bytes], action: Callable[[], object]) -> Iterator[bytes]:
    """``chunks``, with ``action`` run once just before the first is handed on."""
    started = False
    for chunk in chunks:
        if not started:
            action()
            started = True
        yield chunk


def _at_most(chunks: Iterable[bytes], length: int, number: int) -> Iterator[bytes]:
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if seen > length:
            raise TooLarge(f"part {number} must have {length} bytes; more arrived",
                           details=[{"path": "part", "length": length}])
        yield chunk
