"""ZIP archives as streams: list one, serve one entry of it, build one.

    listing = manifest(chunks)                  # one pass; ZipRefused / ZipMalformed
    listing.entry("weights/model.safetensors")  # a ZipEntry: size, CRC-32, SHA-256, offset
    for chunk in entry_chunks(chunks, "README.md", manifest=listing): ...
    for chunk in build_zip([ZipMember("a.txt", modified, 5, [b"hello"])]): ...

Bytes move as iterables of chunks, never whole archives: ``manifest`` and
``entry_chunks`` read with stream-unzip (local headers, in order, no
seeking), ``build_zip`` writes with stream-zip. Nothing here does I/O; the
caller brings the chunks (an object store read, an upload) and takes them
away.

Reading in one pass without the central directory first would trust the
local headers alone, while every other reader (Python's zipfile, unzip,
7-Zip) trusts the central directory: an archive whose two listings differ
would show us one set of files and a downloader another. So ``manifest``
also keeps the bytes that follow the last entry, parses the central
directory from them, and refuses an archive whose directory disagrees with
what was streamed (names, order, CRC-32s, sizes). That check also gives the
compressed sizes and local header offsets, which stream-unzip does not
expose. stream-unzip itself checks each entry's CRC-32 and sizes against
its local header or data descriptor as it streams.

Names are decoded as UTF-8 when they are valid UTF-8 and as CP437 (the
format's original code page) otherwise, without regard to the UTF-8 flag:
many writers store UTF-8 without setting it, and a rule that depends only
on the bytes lets ``entry_chunks`` find an entry without the directory.
"""

from __future__ import annotations

import functools

import re
import stat
import struct
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import stream_inflate
import stream_unzip as unzip
import stream_zip as zip_writer

from registrygrid.blobs.digest import ChecksumMismatch, Expected, StreamDigest
from registrygrid.blobs.objects import CHUNK_BYTES
from registrygrid.errors import MalformedInput, NotFound, RegistryError, ValidationError

T = TypeVar("T")


class ZipRefused(ValidationError):
    """A readable archive that breaks a rule of ours: a limit (entries,
    expanded bytes, inflation ratio, name length), an unsafe or duplicate
    name, a symbolic link, an encrypted entry, or a feature streaming cannot
    read. ``details["reason"]`` says which."""

    code = "zip_refused"


class ZipMalformed(MalformedInput):
    """Bytes that are not a well-formed ZIP archive: truncated, corrupt
    compressed data, a CRC-32 or size that does not match, a central
    directory that contradicts the entries, or no ZIP at all.

    422, not MalformedInput's 400: the bytes are a stored blob's, not the
    request's. Asking for the manifest of a blob that is no ZIP is a
    well-formed request about content that cannot be processed (RFC 9110
    15.5.21), as a checksum_mismatch at finalize is."""

    code = "zip_malformed"
    http_status = 422


class ZipEntryMissing(NotFound):
    code = "zip_entry_missing"


@dataclass(frozen=True)
class ZipLimits:
    # Hugging Face asks for fewer than 100k files per repository (Hub docs,
    # "Repository limitations and recommendations"); an asset bundle is one
    # file of a repository, so more entries than a whole repository holds is
    # not a bundle. Above ZIP's classic 65,535 so ZIP64 listings still fit.
    max_entries: int = 100_000
    # All entries expanded. Inflating, hashing and CRC-ing runs at roughly
    # 300-600 MB/s on one core here (64 MiB: 0.1 s stored, 0.2 s deflated),
    # so 64 GiB is a few minutes of work at most; callers with an upload
    # size policy pass their own.
    max_total_bytes: int = 64 << 30
    # Expanded bytes per archive byte read. Apache POI's ZipSecureFile
    # refuses inflation past 100x (MIN_INFLATE_RATIO = 0.01); text datasets
    # deflate 5-20x. Judged over the archive so far, so work stays
    # proportional to the bytes the uploader actually sent; a bzip2 or
    # Deflate64 entry can otherwise expand far beyond deflate's ~1032x.
    max_ratio: int = 100
    # The ratio is judged only once this much has expanded: small files of
    # zeros and padding inflate thousands of times and harm no one.
    ratio_grace_bytes: int = 64 << 20
    # Linux PATH_MAX (4096) for a whole name and NAME_MAX (255) for one
    # segment: a name that cannot be extracted on Linux is refused here.
    max_name_bytes: int = 4096
    max_segment_bytes: int = 255
    # The central directory, held in memory while it is parsed: 46 bytes a
    # record plus name and extras, so 64 MiB lists max_entries with names and
    # extras of ~600 bytes on average.
    max_directory_bytes: int = 64 << 20


DEFAULT_LIMITS = ZipLimits()


@dataclass(frozen=True)
class ZipEntry:
    name: str
    size: int  # expanded
    compressed_size: int  # as stored, from the central directory
    crc32: int  # computed while streaming; equal to the archive's
    sha256: str  # hex, of the expanded content
    is_dir: bool
    # Where the entry's local header starts, as the central directory says:
    # ``entry_chunks`` over the archive's bytes from here on serves the entry
    # without inflating the ones before it (and, given the manifest, checks
    # that what it found there is this entry, by name and SHA-256).
    offset: int


@dataclass(frozen=True)
class ZipManifest:
    entries: tuple[ZipEntry, ...]
    archive_size: int  # bytes read, central directory included

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.entries)

    def entry(self, name: str) -> ZipEntry:
        found = self._by_name.get(name)
        if found is None:
            raise ZipEntryMissing(f"the archive has no entry {name!r}", details=[{"path": "name"}])
        return found

    @functools.cached_property
    def _by_name(self) -> dict[str, ZipEntry]:
        # A scan per lookup made a bundle of 3,000 entries of a 20,000-entry
        # archive cost minutes of a worker thread. The first of a name wins.
        return {e.name: e for e in reversed(self.entries)}

    def top_level(self) -> tuple[str, ...]:
        """The first segment of every name, sorted; directories end in '/'."""
        tops = set()
        for e in self.entries:
            head, sep, _ = e.name.partition("/")
            tops.add(head + sep)
        return tuple(sorted(tops))


# ---- names

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def decode_name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


def check_name(name: str, limits: ZipLimits = DEFAULT_LIMITS) -> None:
    """Refuse a name that could write outside the extraction directory
    (zip-slip: absolute, drive-relative, ``..``), that is ambiguous (empty,
    ``.`` or empty segments name the same file as another spelling), or
    that Linux cannot create."""

    def refuse(why: str) -> ZipRefused:
        return ZipRefused(f"entry name {name[:200]!r} {why}",
                          details={"reason": "unsafe_name", "entry": name[:200]})

    if not name:
        raise refuse("is empty")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise refuse("is not valid Unicode") from None
    if len(encoded) > limits.max_name_bytes:
        raise ZipRefused(f"an entry name is longer than {limits.max_name_bytes} bytes",
                         details={"reason": "name_too_long", "entry": name[:200]})
    if _CONTROL.search(name):
        raise refuse("has control characters")
    # APPNOTE 4.4.17.1: forward slashes only. Windows extractors treat a
    # backslash as a separator, so '..\\x' would escape there.
    if "\\" in name:
        raise refuse("has a backslash")
    if name.startswith("/") or _DRIVE.match(name):
        raise refuse("is absolute")
    segments = name[:-1].split("/") if name.endswith("/") else name.split("/")
    for segment in segments:
        if segment == "..":
            raise refuse("climbs out of the archive ('..')")
        if segment in ("", "."):
            raise refuse("has an empty or '.' segment")
        if len(segment.encode("utf-8")) > limits.max_segment_bytes:
            raise ZipRefused(f"an entry name has a segment longer than {limits.max_segment_bytes} bytes",
                             details={"reason": "name_too_long", "entry": name[:200]})


# ---- reading


def manifest(chunks: Iterable[bytes], *, limits: ZipLimits = DEFAULT_LIMITS) -> ZipManifest:
    """Every entry of the ZIP archive in ``chunks``, read in one pass.

    ZipRefused when a limit or rule is broken (as soon as it is: a zip bomb
    stops at the byte that crosses ``max_total_bytes`` or ``max_ratio``, and
    an entry whose header declares too large a size stops before inflating);
    ZipMalformed when the bytes are not a sound archive. Errors of
    ``chunks`` itself propagate unchanged."""
    tap = _Tap(chunks, limits.max_directory_bytes)
    budget = _Budget(limits, tap)
    streamed: list[_Streamed] = []
    names: set[str] = set()
    entries = unzip.stream_unzip(tap, chunk_size=CHUNK_BYTES)
    try:
        for raw, declared, body in _guarded(entries, tap, None):
            tap.entry_started()
            if len(streamed) >= limits.max_entries:
                raise ZipRefused(f"the archive has more than {limits.max_entries} entries",
                                 details={"reason": "too_many_entries", "limit": limits.max_entries})
            name = decode_name(raw)
            check_name(name, limits)
            if name in names:
                raise ZipRefused(f"the archive holds {name[:200]!r} twice: readers disagree on which one is meant",
                                 details={"reason": "duplicate_name", "entry": name[:200]})
            names.add(name)
            budget.declare(declared, name)
            digest, crc = StreamDigest(), 0
            for piece in _guarded(body, tap, name):
                budget.spend(len(piece), name)
                digest.update(piece)
                crc = zlib.crc32(piece, crc)
            streamed.append(_Streamed(raw, name, digest.size, crc, digest.sha256))
            tap.entry_ended()
    finally:
        entries.close()
        tap.close()
    directory = _central_directory(*tap.tail())
    return ZipManifest(entries=_reconcile(streamed, directory), archive_size=tap.read)


def entry_chunks(chunks: Iterable[bytes], name: str, *, manifest: ZipManifest | None = None,
                 limits: ZipLimits = DEFAULT_LIMITS) -> Iterator[bytes]:
    """The expanded content of entry ``name``, as chunks, streamed out of the
    archive's bytes; reading stops at the end of that entry.

    ``chunks`` may be the whole archive, or the archive from the entry's
    ``offset`` on (a range read), which skips inflating the entries before
    it. With the archive's ``manifest``: an absent name fails here, before
    any byte is read, and the content is checked against the manifest's
    size and SHA-256 (ChecksumMismatch if the stored archive changed).
    ``limits`` bound the inflating as in ``manifest``."""
    expected = manifest.entry(name) if manifest is not None else None
    return _entry_chunks(chunks, name, expected, limits)


def _entry_chunks(chunks: Iterable[bytes], name: str, expected: ZipEntry | None,
                  limits: ZipLimits) -> Iterator[bytes]:
    tap = _Tap(chunks, None)
    budget = _Budget(limits, tap)
    entries = unzip.stream_unzip(tap, chunk_size=CHUNK_BYTES)
    try:
        for raw, declared, body in _guarded(entries, tap, None):
            current = decode_name(raw)
            budget.declare(declared, current)
            wanted = current == name
            digest = StreamDigest()
            for piece in _guarded(body, tap, current):
                budget.spend(len(piece), current)
                if wanted:
                    digest.update(piece)
                    yield piece
            if wanted:
                # stream-unzip has checked the CRC-32 by now: the body is done.
                if expected is not None:
                    digest.check(Expected(size=expected.size, sha256=expected.sha256), what=f"entry {name!r}")
                return
    finally:
        entries.close()
        tap.close()
    raise ZipEntryMissing(f"the archive has no entry {name!r}", details=[{"path": "name"}])


def _guarded(items: Iterator[T], tap: _Tap, entry: str | None) -> Iterator[T]:
    """``items`` from stream-unzip, with whatever it raises made ours.

    Only its own ``next`` is guarded, so a failure of our code is never
    mistaken for a broken archive. Passed through unchanged: our errors
    (the tap's limits) and the caller's source failing."""
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except RegistryError:
            raise
        except Exception as exc:
            if exc is tap.failure:
                raise
            raise _translate(exc, entry) from exc
        yield item


@dataclass(frozen=True)
class _Streamed:
    raw: bytes
    name: str
    size: int
    crc32: int
    sha256: str


class _Budget:
    """Expanded bytes against the limits, as they are produced."""

    def __init__(self, limits: ZipLimits, tap: _Tap) -> None:
        self.limits = limits
        self.tap = tap
        self.total = 0

    def declare(self, declared: int | None, name: str) -> None:
        # A size in the local header is known before inflating: refuse at once.
        if declared is not None and self.total + declared > self.limits.max_total_bytes:
            raise self._too_large(name)

    def spend(self, n: int, name: str) -> None:
        self.total += n
        if self.total > self.limits.max_total_bytes:
            raise self._too_large(name)
        if self.total > self.limits.ratio_grace_bytes and self.total > self.limits.max_ratio * self.tap.read:
            raise ZipRefused(f"the archive expands more than {self.limits.max_ratio} times its size "
                             f"({self.total} bytes from {self.tap.read}): refused as a zip bomb",
                             details={"reason": "ratio", "entry": name[:200], "limit": self.limits.max_ratio})

    def _too_large(self, name: str) -> ZipRefused:
        return ZipRefused(f"the archive expands to more than {self.limits.max_total_bytes} bytes",
                          details={"reason": "too_large", "entry": name[:200],
                                   "limit": self.limits.max_total_bytes})


class _Tap:
    """The archive's bytes on their way into stream-unzip: cut to at most
    CHUNK_BYTES, counted, and the latest kept, so that once the last entry
    ends the bytes after it (the central directory) are at hand.

    While an entry streams only the last chunk and _LOOKBEHIND bytes before
    it are kept; from the end of an entry to the start of the next, all are.
    stream-unzip reads at most 28 bytes past an entry's data (the longest
    data descriptor plus the next signature) before the entry ends, so the
    bytes after the data are always among those kept."""

    _LOOKBEHIND = 64 * 1024

    def __init__(self, chunks: Iterable[bytes], max_held: int | None) -> None:
        self._source = iter(chunks)
        self._max_held = max_held
        self._kept: deque[bytes] = deque()
        self._kept_bytes = 0
        self._kept_start = 0  # archive offset of the first byte kept
        self._holding = True
        self._held_from = 0
        self.read = 0
        self.failure: Exception | None = None

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = next(self._source)
            except StopIteration:
                return
            except Exception as exc:  # the caller's to see as it is: _guarded passes it on
                self.failure = exc
                raise
            for start in range(0, len(chunk), CHUNK_BYTES):
                piece = bytes(chunk[start:start + CHUNK_BYTES])
                self.read += len(piece)
                self._keep(piece)
                yield piece

    def _keep(self, piece: bytes) -> None:
        if self._max_held is None:
            return  # entry_chunks: no directory to read
        self._kept.append(piece)
        self._kept_bytes += len(piece)
        if self._holding:
            if self.read - self._held_from > self._max_held:
                raise ZipRefused(f"the bytes after the entries (the central directory) exceed {self._max_held}",
                                 details={"reason": "directory_too_large", "limit": self._max_held})
        else:
            self._trim()

    def _trim(self) -> None:
        while len(self._kept) > 1 and self._kept_bytes - len(self._kept[0]) - len(self._kept[-1]) >= self._LOOKBEHIND:
            dropped = self._kept.popleft()
            self._kept_bytes -= len(dropped)
            self._kept_start += len(dropped)

    def entry_started(self) -> None:
        self._holding = False
        self._trim()

    def entry_ended(self) -> None:
        self._holding = True
        self._held_from = self.read

    def tail(self) -> tuple[int, bytes]:
        return self._kept_start, b"".join(self._kept)

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


def _translate(exc: Exception, entry: str | None) -> ZipRefused | ZipMalformed:
    """stream-unzip's exception as ours, naming the entry being read. Its
    Deflate64 inflater (stream-inflate) raises its own, unwrapped."""
    where = f" (entry {entry[:200]!r})" if entry else ""
    if isinstance(exc, (unzip.MissingPasswordError, unzip.PasswordError)):
        return ZipRefused("the archive has an encrypted entry: its content cannot be hashed or served; "
                          "upload it unencrypted", details={"reason": "encrypted"})
    if isinstance(exc, unzip.NotStreamUnzippable):
        return ZipRefused(f"an entry is stored uncompressed with its size only after its data{where}: "
                          "its end cannot be found while streaming; re-create the archive",
                          details={"reason": "unsupported"})
    if isinstance(exc, unzip.UnsupportedFeatureError):
        return ZipRefused(f"the archive uses a feature that cannot be streamed "
                          f"(a compression method other than stored, deflate, deflate64, bzip2; "
                          f"or patched/strong-encrypted entries){where}", details={"reason": "unsupported"})
    if isinstance(exc, unzip.TruncatedDataError):
        return ZipMalformed(f"the archive ends early: it is truncated{where}")
    if isinstance(exc, unzip.UnexpectedSignatureError):
        return ZipMalformed(f"not a ZIP archive, or a broken one: unexpected bytes where a header belongs{where}")
    if isinstance(exc, unzip.IntegrityError):
        return ZipMalformed(f"an entry's content does not match its CRC-32 or sizes: the archive is corrupt{where}")
    if isinstance(exc, (unzip.UncompressError, stream_inflate.StreamInflateError)):
        return ZipMalformed(f"an entry's compressed data is corrupt{where}")
    # stream-inflate also fails with bare IndexErrors on some corrupt
    # Deflate64 data: any other failure of the reader is the archive's.
    return ZipMalformed(f"the archive is malformed: the reader failed on it{where}")


# ---- the central directory (APPNOTE 4.3.12-4.3.16)

_EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_ZIP64_EXTRA = 0x0001


@dataclass(frozen=True)
class _Central:
    raw: bytes
    crc32: int
    compressed_size: int
    size: int
    offset: int
    unix_mode: int = 0  # st_mode, as the upper half of the external attributes holds it (0: none)


def _central_directory(start: int, tail: bytes) -> list[_Central]:
    """The central directory records, from the bytes after the last entry
    (``tail``, which begins at archive offset ``start``)."""
    eocd = _find_eocd(tail)
    (_, disk, cd_disk, _on_disk, count, cd_size, cd_offset, _comment) = _EOCD.unpack_from(tail, eocd)
    locator = eocd - _ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
        _, _, record_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator)
        at = record_offset - start
        if at < 0 or at + _ZIP64_EOCD.size > locator or tail[at:at + 4] != b"PK\x06\x06":
            raise ZipMalformed("the ZIP64 end of central directory record is missing or misplaced")
        (_, _, _, _, disk, cd_disk, _on_disk, count, cd_size, cd_offset) = _ZIP64_EOCD.unpack_from(tail, at)
        directory_end = at
    else:
        directory_end = eocd
    if disk != 0 or cd_disk != 0:
        raise ZipRefused("multi-volume (split) archives are not supported", details={"reason": "unsupported"})
    begin = cd_offset - start
    if begin < 0 or begin + cd_size > directory_end:
        raise ZipMalformed("the central directory is not where the archive says it is")
    records = _central_records(tail[begin:begin + cd_size])
    if len(records) != count:
        raise ZipMalformed(f"the archive says it has {count} entries but its central directory lists {len(records)}")
    return records


def _find_eocd(tail: bytes) -> int:
    # The record is 22 bytes plus a comment of up to 65,535: search back
    # for the signature whose comment length reaches exactly the end.
    floor = max(0, len(tail) - _EOCD.size - 0xFFFF)
    at = len(tail)
    while True:
        at = tail.rfind(b"PK\x05\x06", floor, at)
        if at < 0:
            raise ZipMalformed("no end of central directory record: the archive is truncated or not a ZIP")
        if at + _EOCD.size <= len(tail):
            comment = _EOCD.unpack_from(tail, at)[-1]
            if at + _EOCD.size + comment == len(tail):
                return at


def _central_records(data: bytes) -> list[_Central]:
    records = []
    at = 0
    while at < len(data):
        if at + _CENTRAL.size > len(data) or data[at:at + 4] != b"PK\x01\x02":
            raise ZipMalformed("the central directory is corrupt")
        (_, _made_by, _needed, _flags, _method, _time, _date, crc, csize, usize,
         name_len, extra_len, comment_len, _disk, _internal, external, offset) = _CENTRAL.unpack_from(data, at)
        at += _CENTRAL.size
        raw = data[at:at + name_len]
        extra = data[at + name_len:at + name_len + extra_len]
        at += name_len + extra_len + comment_len
        if at > len(data):
            raise ZipMalformed("the central directory is corrupt")
        usize, csize, offset = _zip64_fields(extra, usize, csize, offset)
        # APPNOTE 4.4.2: the upper half of the external attributes holds
        # st_mode where Unix (3) wrote it, and Info-ZIP's unzip reads it so
        # for VMS, Atari, BeOS and AtheOS hosts too: whatever the "made by"
        # host says, a link there is made a link. (DOS and Windows writers
        # leave it 0.)
        records.append(_Central(raw, crc, csize, usize, offset, external >> 16))
    return records


def _zip64_fields(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """APPNOTE 4.5.3: the ZIP64 extra field holds, in this order, each of the
    sizes and offset whose 32-bit field is 0xFFFFFFFF."""
    at = 0
    while at + 4 <= len(extra):
        kind, size = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4:at + 4 + size]
        at += 4 + size
        if kind != _ZIP64_EXTRA:
            continue
        values = []
        for field in range(len(body) // 8):
            values.append(struct.unpack_from("<Q", body, field * 8)[0])
        wanted = [usize == 0xFFFFFFFF, csize == 0xFFFFFFFF, offset == 0xFFFFFFFF]
        if sum(wanted) > len(values):
            raise ZipMalformed("a ZIP64 extra field is too short")
        it = iter(values)
        usize = next(it) if wanted[0] else usize
        csize = next(it) if wanted[1] else csize
        offset = next(it) if wanted[2] else offset
        return usize, csize, offset
    return usize, csize, offset


def _reconcile(streamed: list[_Streamed], directory: list[_Central]) -> tuple[ZipEntry, ...]:
    """The entries, once the central directory agrees with what was streamed."""
    if len(directory) != len(streamed):
        raise ZipMalformed(f"the central directory lists {len(directory)} entries but the archive holds "
                           f"{len(streamed)}: readers would disagree on its content")
    ordered = sorted(directory, key=lambda c: c.offset)
    # The stream starts with the first local header, and each entry starts
    # after the one before: records sharing an offset are the overlapping
    # entries of a "non-recursive" zip bomb (Fifield, 2019).
    if ordered and ordered[0].offset != 0:
        raise ZipMalformed("the central directory does not start its entries at the archive's first byte")
    entries = []
    previous = -1
    for local, central in zip(streamed, ordered, strict=True):
        if central.offset == previous:
            raise ZipMalformed("two central directory records point at one local entry (overlapping entries)")
        previous = central.offset
        if central.raw != local.raw or central.crc32 != local.crc32 or central.size != local.size:
            raise ZipMalformed(f"the central directory disagrees with entry {local.name[:200]!r} "
                               "(name, CRC-32 or size): readers would disagree on its content")
        if stat.S_ISLNK(central.unix_mode):
            # unzip and tar-like extractors make it a link, and a later entry
            # written through the link lands wherever it points: zip-slip by
            # a safe name. (Our bundles write every member as a plain file.)
            raise ZipRefused(f"entry {local.name[:200]!r} is a symbolic link: an extractor that makes it can be "
                             "led to write outside its directory; archive the file it points to instead",
                             details={"reason": "symlink", "entry": local.name[:200]})
        entries.append(ZipEntry(name=local.name, size=local.size, compressed_size=central.compressed_size,
                                crc32=local.crc32, sha256=local.sha256, is_dir=local.name.endswith("/"),
                                offset=central.offset))
    return tuple(entries)


# ---- writing


@dataclass(frozen=True)
class ZipMember:
    """One entry of an archive to build. ``size`` None: unknown until the
    chunks end (written as ZIP64). ``crc32`` with ``size``: the entry is
    stored uncompressed (a manifest has both), much faster for bytes that do
    not compress, like weights."""

    name: str
    modified: datetime  # naive: taken as UTC
    size: int | None
    chunks: Iterable[bytes]
    crc32: int | None = None


# Deflate level. nginx compresses on the fly at level 1 by default
# (gzip_comp_level); measured here, level 1 deflates JSON text at ~330 MB/s
# to 1/9 of its size against ~150 MB/s and 1/11 at level 6, and incompressible
# weights run at ~40 MB/s at any level (so give their CRC-32 to store them).
DEFLATE_LEVEL = 1

# The timestamps both of an entry's times can hold: MS-DOS dates start in
# 1980, and the Unix extended timestamp (extra field 'UT') is a signed
# 32-bit count of seconds.
_EARLIEST = datetime(1980, 1, 1, tzinfo=UTC)
_LATEST = datetime(2038, 1, 19, 3, 14, 6, tzinfo=UTC)

_FILE_MODE = stat.S_IFREG | 0o644
_DIR_MODE = stat.S_IFDIR | 0o755


def build_zip(members: Iterable[ZipMember | tuple], *, level: int = DEFLATE_LEVEL,
              limits: ZipLimits = DEFAULT_LIMITS) -> Iterator[bytes]:
    """A ZIP archive of ``members``, produced as chunks while the members'
    chunks are read (lazily, one member after another; nothing is staged).

    Members are ``ZipMember``s or tuples of their fields. The same members
    give the same bytes (fixed modes; times as given, in UTC; one deflate
    level), so a rebuilt bundle keeps its ETag on one zlib version; stored
    members (size and crc32 given) are byte-stable across zlib versions too.
    ZIP64 is used when a member's size is unknown or large, or offsets pass
    4 GiB. Names are checked as ``check_name`` does; a member whose bytes
    differ from its declared size or CRC-32 fails with ChecksumMismatch."""
    return _build(members, level, limits)


def _build(members: Iterable[ZipMember | tuple], level: int, limits: ZipLimits) -> Iterator[bytes]:
    def compressobj() -> zlib._Compress:
        return zlib.compressobj(level=level, memLevel=8, wbits=-zlib.MAX_WBITS)

    try:
        yield from zip_writer.stream_zip(_writer_members(members, level, limits), chunk_size=CHUNK_BYTES,
                                         get_compressobj=compressobj)
    except zip_writer.ZipIntegrityError as exc:  # a stored member's CRC-32 or size did not match
        raise ChecksumMismatch("a member's bytes do not match its declared size or CRC-32") from exc
    except zip_writer.ZipError as exc:
        raise ZipRefused("the members cannot be written as a ZIP archive", details={"reason": "unsupported"}) from exc


def _writer_members(members: Iterable[ZipMember | tuple], level: int,
                    limits: ZipLimits) -> Iterator[zip_writer.MemberFile]:
    names: set[str] = set()
    for given in members:
        member = given if isinstance(given, ZipMember) else ZipMember(*given)
        check_name(member.name, limits)
        if member.name in names:
            raise ZipRefused(f"two members are named {member.name[:200]!r}",
                             details={"reason": "duplicate_name", "entry": member.name[:200]})
        names.add(member.name)
        mode = _DIR_MODE if member.name.endswith("/") else _FILE_MODE
        if member.size is not None and member.crc32 is not None:
            # Always the ZIP64 layout: the 32-bit one fails once the entry
            # starts past 4 GiB, and stream-zip picks by offset only for deflate.
            method = zip_writer.NO_COMPRESSION_64(member.size, member.crc32)
        elif member.size is not None:
            method = zip_writer.ZIP_AUTO(member.size, level=level)
        else:
            method = zip_writer.ZIP_64
        yield (member.name, _zip_time(member.modified), mode, method,
               _sized(member.chunks, member.size, member.name))


def _zip_time(moment: datetime) -> datetime:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return min(max(moment, _EARLIEST), _LATEST).replace(microsecond=0)


def _sized(chunks: Iterable[bytes], size: int | None, name: str) -> Iterator[bytes]:
    """``chunks``, failing as soon as they pass the declared size (and at the
    end if they fall short): a wrong size would otherwise pick the wrong
    ZIP32/ZIP64 layout or a wrong header."""
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if size is not None and seen > size:
            raise ChecksumMismatch(f"member {name!r} has more than its declared {size} bytes",
                                   details=[{"path": "size", "expected": size, "entry": name}])
        yield chunk
    if size is not None and seen != size:
        raise ChecksumMismatch(f"member {name!r} has {seen} bytes, not its declared {size}",
                               details=[{"path": "size", "expected": size, "actual": seen, "entry": name}])
