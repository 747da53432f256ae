"""Blobs: content-addressed bytes in an object store, indexed in LMDB.

    blobs = BlobStore(LocalObjects(home / "objects"), store, BlobLimits())
    entry = blobs.put(chunks, expected=Expected(size=n, sha256=h), content_type="application/zip")
    for chunk in blobs.read(cid, start=0, end=1024): ...

A blob is stored under ``blobs/<CID>``, where the CID is of its SHA-256
(blobs/digest.py), so one set of bytes is stored once however many records
or uploads name it (dedupe by CID), and an asset record that names a CID
signs the bytes. Bytes arrive in a staging object, are digested as they
stream, and are moved under their CID only when every declared checksum
matched: a mismatch or a failure leaves nothing behind. The index entry is
written after the move, so the index never names bytes that are absent (a
crash between the two leaves an unindexed object, which ``reconcile``
indexes again or removes).

Deletion honours retention (no deletion before ``retain_until``) and legal
holds (none while any hold is set); see ``delete``.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from registrygrid.blobs.digest import Expected, StreamDigest, cid_text, parse_cid
from registrygrid.blobs.objects import ObjectMissing, ObjectStore
from registrygrid.errors import (
    EX_UNAVAILABLE,
    Conflict,
    NotFound,
    RegistryError,
    TooLarge,
    ValidationError,
)
from registrygrid.storage import blobs as index
from registrygrid.storage.blobs import BlobEntry
from registrygrid.storage.store import Store

STAGING = "staging"
# (staging key, size, content type, name) -> (metadata, checks' verdict line); raises to refuse.
Vet = Callable[[str, int, str, str], tuple[dict[str, Any], str]]
BLOBS = "blobs"


class QuotaExceeded(RegistryError):
    """Storing this would take the node past its blob quota."""

    code = "quota_exceeded"
    http_status = 507
    exit_code = EX_UNAVAILABLE


class BlobMissing(NotFound):
    code = "blob_missing"


class RetentionHeld(Conflict):
    """A retention period or a legal hold forbids deleting this blob now."""

    code = "retention_held"


@dataclass(frozen=True)
class BlobLimits:
    # The largest blob: S3's own object limit is 5 TiB; 1 TiB is plenty for
    # model weights and keeps a mistaken declaration from reserving a quota.
    max_blob_bytes: int = 1 << 40
    # All blobs together; None: as much as the object store holds.
    quota_bytes: int | None = None


def blob_key(cid: bytes) -> str:
    return f"{BLOBS}/{cid_text(cid)}"


def manifest_key(cid: bytes) -> str:
    """Where a ZIP blob's entry listing is cached (blobs/bundles.py): it
    names the entries (file names can be personal data) and goes with its
    blob."""
    return f"manifests/{cid_text(cid)}"


class BlobStore:
    def __init__(self, objects: ObjectStore, store: Store, limits: BlobLimits | None = None, *,
                 now_ms: object = None) -> None:
        self.objects = objects
        self.store = store
        self.limits = limits or BlobLimits()
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._protecting = threading.Lock()  # see retain
        # A blob's index entry and its object change together, one thread at
        # a time per CID (striped: a lock per CID would have to be forgotten):
        # a delete's removal and a put's move + index of the same bytes.
        self._by_cid = [threading.Lock() for _ in range(64)]
        # Bytes of blobs being committed now (checked against the quota, not
        # indexed yet): commits at once count each other's, so together they
        # never pass the quota that each alone fits.
        self._reserved = 0
        self._reserving = threading.Lock()

    def now_ms(self) -> int:
        return self._now_ms()  # type: ignore[operator,no-any-return]

    def _cid_lock(self, cid: bytes) -> threading.Lock:
        return self._by_cid[cid[-1] % len(self._by_cid)]  # a CID ends in digest bytes

    # ---- reading

    def entry(self, cid: bytes) -> BlobEntry | None:
        return index.get_blob(self.store, cid)

    def require(self, cid: bytes) -> BlobEntry:
        entry = self.entry(cid)
        if entry is None:
            raise BlobMissing(f"no blob {cid_text(cid)} on this node")
        return entry

    def read(self, cid: bytes, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The blob's bytes in [start, end), as chunks."""
        self.require(cid)
        try:
            return self.objects.get(blob_key(cid), start=start, end=end)
        except ObjectMissing:
            raise BlobMissing(f"blob {cid_text(cid)} is indexed but its bytes are gone from the "
                              f"{self.objects.name} object store (run `rgrid asset verify`)") from None

    def used_bytes(self) -> int:
        return index.blob_bytes(self.store)

    # ---- writing

    def check_room(self, size: int, *, staged: int = 0) -> None:
        """Refuse a declared size beyond the limits before any byte moves;
        ``staged``: the bytes open uploads declared (their parts take the
        disk before they are blobs)."""
        if size > self.limits.max_blob_bytes:
            raise TooLarge(f"a blob may have at most {self.limits.max_blob_bytes} bytes, not {size}",
                           details=[{"path": "size", "limit": self.limits.max_blob_bytes}])
        quota = self.limits.quota_bytes
        if quota is not None:
            used = self.used_bytes() + self._reserved + staged
            if used + size > quota:
                raise QuotaExceeded(f"storing {size} bytes would pass the node's blob quota of {quota} bytes "
                                    f"({used} used or being stored)", details=[{"quota": quota, "used": used}])

    @contextlib.contextmanager
    def _room_for(self, size: int) -> Iterator[None]:
        """``size`` bytes of the quota held while a blob is committed, until
        it is indexed (then it counts in ``used_bytes``) or fails."""
        with self._reserving:
            self.check_room(size)
            self._reserved += size
        try:
            yield
        finally:
            with self._reserving:
                self._reserved -= size

    def put(self, chunks: Iterable[bytes], *, expected: Expected | None = None,
            content_type: str = "application/octet-stream", name: str = "",
            vet: Vet | None = None) -> tuple[bytes, BlobEntry, bool]:
        """Store ``chunks`` as a blob; (CID, entry, stored) where ``stored``
        is False if the blob was here already (the bytes were still checked).
        ``vet`` sees the verified bytes before they become a blob (their
        staging key, size and content type) and returns what they say of
        themselves and the checks' verdict line, or raises to refuse them.
        ChecksumMismatch, TooLarge, QuotaExceeded or a refusal leave nothing
        behind."""
        expected = expected or Expected()
        if expected.size is not None:
            self.check_room(expected.size)
        staging = f"{STAGING}/{secrets.token_hex(16)}"
        # MD5 only when it was declared (to check it): it is the costliest
        # digest here (~210 MB/s against SHA-256's ~620 on this machine).
        digest = StreamDigest(md5=expected.md5 is not None)
        try:
            self.objects.put(staging, self._bounded(digest.tee(chunks), expected.size))
        except BaseException:
            self.objects.delete(staging)
            raise
        return self._commit(staging, digest, expected, content_type, name, vet)

    def adopt(self, key: str, *, expected: Expected, content_type: str = "application/octet-stream",
              name: str = "", vet: Vet | None = None,
              reading: Callable[[Iterator[bytes]], Iterator[bytes]] = lambda chunks: chunks,
              ) -> tuple[bytes, BlobEntry, bool]:
        """Make the object at ``key`` (an upload written in place) a blob:
        read once to digest it (through ``reading``, which may check what it
        sees), then moved under its CID, as ``put`` would have stored it,
        without writing its bytes again. On success the object is gone; on a
        failure it stays, for its owner to mend or drop."""
        self.check_room(expected.size or 0)
        digest = StreamDigest(md5=expected.md5 is not None)
        for chunk in reading(self._bounded(self.objects.get(key), expected.size)):
            digest.update(chunk)
        return self._commit(key, digest, expected, content_type, name, vet, discard=False)

    def _commit(self, staging: str, digest: StreamDigest, expected: Expected, content_type: str, name: str,
                vet: Vet | None, *, discard: bool = True) -> tuple[bytes, BlobEntry, bool]:
        """Staged bytes, digested: checked, vetted and moved under their CID;
        on a failure deleted (``discard``) or left where they are."""
        try:
            digest.check(expected, what="the blob")
            cid = digest.cid
            known = self.entry(cid)
            if known is not None:
                self._drop_copy(staging, cid)
                return cid, known, False
            with self._room_for(digest.size):
                meta, checks = vet(staging, digest.size, content_type, name) if vet is not None else ({}, "")
                entry = BlobEntry(size=digest.size, sha256=digest.sha256, md5=digest.md5 or "",
                                  content_type=content_type, created_ms=self.now_ms(), meta=meta, checks=checks,
                                  crc32=digest.crc32)
                with self._cid_lock(cid):
                    # Not while a delete of the same bytes runs: it would take the
                    # object moved here after it dropped the index entry, and the
                    # entry indexed below would name absent bytes.
                    known = self.entry(cid)
                    if known is not None:  # a concurrent put of the same bytes won
                        self._drop_copy(staging, cid)
                        return cid, known, False
                    if staging != blob_key(cid):  # else: adopted where it lies (an object a crash left unindexed)
                        self.objects.move(staging, blob_key(cid))
                    if not index.put_blob(self.store, cid, entry):  # indexed meanwhile by reconcile
                        return cid, self.require(cid), False
        except BaseException:
            if discard:
                self.objects.delete(staging)
            raise
        return cid, entry, True

    def _drop_copy(self, staging: str, cid: bytes) -> None:
        """A second copy of bytes the node holds is dropped; never the blob
        itself (an object adopted where it lies is already under its CID)."""
        if staging != blob_key(cid):
            self.objects.delete(staging)

    def _bounded(self, chunks: Iterator[bytes], declared: int | None) -> Iterator[bytes]:
        """Stop a stream as soon as it passes its declared size or the limit,
        rather than after storing all of it."""
        limit = self.limits.max_blob_bytes if declared is None else declared
        seen = 0
        for chunk in chunks:
            seen += len(chunk)
            if seen > limit:
                raise TooLarge(f"more bytes arrived than the {limit} declared" if declared is not None
                               else f"a blob may have at most {limit} bytes")
            yield chunk

    # ---- retention and deletion

    def delete(self, cid: bytes) -> BlobEntry:
        """Delete a blob's bytes and index entry: refused (RetentionHeld)
        while a legal hold is set or before its retention ends. Judged and
        done as one step against holds and retention set meanwhile (else a
        hold acknowledged between the check and the removal was for bytes
        about to go, and its entry written back named absent bytes)."""
        with self._protecting, self._cid_lock(cid):
            entry = self.require(cid)
            now = self.now_ms()
            if entry.holds:
                raise RetentionHeld(f"blob {cid_text(cid)} is under legal hold "
                                    f"({', '.join(sorted(entry.holds))})", details=[{"holds": dict(entry.holds)}])
            if entry.retain_until_ms > now:
                raise RetentionHeld(f"blob {cid_text(cid)} is retained until {entry.retain_until_ms} (ms since "
                                    "the epoch)", details=[{"retain_until_ms": entry.retain_until_ms}])
            index.remove_blob(self.store, cid)  # first: the index never names absent bytes
            try:
                self.objects.delete(blob_key(cid))
            except ObjectMissing:
                pass  # gone already: what a delete wants
            except RegistryError:
                # Not deleted (the service unreachable, or its Object Lock still
                # protecting the bytes): indexed again, so the blob is neither
                # orphaned nor taken for a stray by reconcile, and a purge that
                # failed is found and tried again (blobs/erasure.py).
                index.put_blob(self.store, cid, entry)
                raise
            # Its cached listing too: it names the archive's entries, which an
            # erasure must not leave behind (it stayed, read by nothing, forever).
            with contextlib.suppress(ObjectMissing):
                self.objects.delete(manifest_key(cid))
            return entry

    # Where the object store can enforce retention itself (S3 Object Lock,
    # ObjectStore.protect), the object is protected before the index
    # records it and unprotected after the index forgets it: at every
    # moment and after any failure, the backend protects at least what the
    # index claims, so a failure can leave a blob safer than recorded, never
    # deletable while the index says it is kept. The lock keeps two
    # retention calls of this process from interleaving those two steps.

    def retain(self, cid: bytes, until_ms: int) -> BlobEntry:
        """Extend retention; it can only grow (as S3 Object Lock's compliance mode)."""
        with self._protecting:
            entry = self.require(cid)
            if until_ms < entry.retain_until_ms:
                raise RetentionHeld(f"retention of {cid_text(cid)} can only be extended",
                                    details=[{"retain_until_ms": entry.retain_until_ms}])
            if until_ms <= self.now_ms():
                # A date already past kept nothing (and said it was done): a
                # typo of the year, most likely.
                raise ValidationError(f"retention until {until_ms} (unix ms) is in the past: it would keep "
                                      "nothing", details=[{"path": "until"}])
            self._protect(cid, retain_until_ms=until_ms)
            new = msgspec.structs.replace(entry, retain_until_ms=until_ms)
            index.replace_blob(self.store, cid, new)
            return new

    def hold(self, cid: bytes, name: str, reason: str) -> BlobEntry:
        check_hold_name(name)  # every path alike: a name the bridge refuses could never be released through it
        with self._protecting:
            entry = self.require(cid)
            self._protect(cid, legal_hold=True)  # ON while any named hold exists
            new = msgspec.structs.replace(entry, holds={**entry.holds, name: reason})
            index.replace_blob(self.store, cid, new)
            return new

    def release(self, cid: bytes, name: str) -> BlobEntry:
        with self._protecting:
            entry = self.require(cid)
            if name not in entry.holds:
                raise NotFound(f"blob {cid_text(cid)} has no hold named {name!r}")
            new = msgspec.structs.replace(entry, holds={k: v for k, v in entry.holds.items() if k != name})
            index.replace_blob(self.store, cid, new)
            if not new.holds:  # the last one: the object's legal hold goes OFF
                try:
                    self._protect(cid, legal_hold=False)
                except BlobMissing:
                    pass  # no current object, nothing for the store to lift: the release stands
                except BaseException:
                    # The object is still held: so is the index again, and
                    # the caller may release once more.
                    index.replace_blob(self.store, cid, entry)
                    raise
            return new

    def _protect(self, cid: bytes, **protection: Any) -> bool:
        try:
            return self.objects.protect(blob_key(cid), **protection)
        except ObjectMissing:
            raise BlobMissing(f"blob {cid_text(cid)} is indexed but its bytes are gone from the "
                              f"{self.objects.name} object store (run `rgrid asset verify`)") from None

    # ---- consistency

    def clear_staging(self) -> int:
        """Remove what puts interrupted by a crash left in staging (run when
        no put can be in progress: at the node's start); how many."""
        removed = 0
        for key in list(self.objects.keys(f"{STAGING}/")):
            self.objects.delete(key)
            removed += 1
        return removed

    def verify(self) -> dict[str, Any]:
        """Read every indexed blob back and check it hashes to its CID; list
        indexed blobs whose bytes are gone and stored blobs nobody indexed.
        Read-only (safe beside a running node)."""
        report: dict[str, Any] = {"checked": 0, "bytes": 0, "corrupt": [], "missing": [], "unindexed": []}
        after: bytes | None = None
        indexed = set()
        while page := index.iter_blobs(self.store, after=after):
            for cid, _entry in page:
                indexed.add(blob_key(cid))
                digest = StreamDigest()
                try:
                    for chunk in self.objects.get(blob_key(cid)):
                        digest.update(chunk)
                except ObjectMissing:
                    report["missing"].append(cid_text(cid))
                    continue
                report["checked"] += 1
                report["bytes"] += digest.size
                if digest.cid != cid:
                    report["corrupt"].append(cid_text(cid))
            after = page[-1][0]
        report["unindexed"] = [k for k in self.objects.keys(f"{BLOBS}/") if k not in indexed]
        report["ok"] = not (report["corrupt"] or report["missing"])
        return report

    def reconcile(self) -> dict[str, int]:
        """Make the index and the object store agree after a crash: stale
        staging objects go, an unindexed blob whose bytes hash to its name is
        indexed again, and one that does not is removed."""
        counts = {"staging_removed": self.clear_staging(), "reindexed": 0, "removed_corrupt": 0}
        for key in list(self.objects.keys(f"{BLOBS}/")):
            cid = parse_cid(key.split("/", 1)[1])
            if self.entry(cid) is not None:
                continue
            digest = StreamDigest(md5=True)
            for chunk in self.objects.get(key):
                digest.update(chunk)
            if digest.cid == cid:
                index.put_blob(self.store, cid, BlobEntry(size=digest.size, sha256=digest.sha256,
                                                          md5=digest.md5 or "", crc32=digest.crc32,
                                                          content_type="application/octet-stream",
                                                          created_ms=self.now_ms()))
                counts["reindexed"] += 1
            else:
                self.objects.delete(key)
                counts["removed_corrupt"] += 1
        return counts


def check_hold_name(name: str) -> str:
    """A legal hold's name: 1 to 64 ASCII letters, digits, '-', '_' or '.'
    (a path segment of the bridge's routes, as it is)."""
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isascii() \
            or not all(c.isalnum() or c in "-_." for c in name):
        raise ValidationError("a hold's name has 1 to 64 letters, digits, '-', '_' or '.'",
                              details=[{"path": "name"}])
    return name


def check_hold_reason(reason: object) -> str:
    """Why a hold is set: 1 to 1,000 characters."""
    if not isinstance(reason, str) or not reason or len(reason) > 1000:
        raise ValidationError("reason: why the hold is set (1 to 1000 characters)", details=[{"path": "/reason"}])
    return reason
