"""ZIP archives as streams (blobs/zipfiles.py): listing an upload in one
pass, serving one entry, rebuilding a bundle; and every way an archive can
be hostile or broken ending in a typed error."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import stream_zip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.blobs.digest import ChecksumMismatch
from registrygrid.blobs.zipfiles import (
    ZipEntryMissing,
    ZipLimits,
    ZipMalformed,
    ZipMember,
    ZipRefused,
    build_zip,
    check_name,
    entry_chunks,
    manifest,
)
from registrygrid.errors import MalformedInput, ValidationError

MIB = 1 << 20
WHEN = datetime(2024, 5, 17, 12, 30, 44, tzinfo=UTC)


def make_zip(files: Iterable[tuple[str, bytes]], *, compression: int = zipfile.ZIP_DEFLATED,
             force_zip64: bool = False) -> bytes:
    """A real archive written by Python's zipfile."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names; some tests want them
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 6))
            info.compress_type = compression
            with archive.open(info, "w", force_zip64=force_zip64) as entry:
                entry.write(data)
    return out.getvalue()


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


class Counting:
    """Chunks that count how many bytes the reader pulled."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size, self.pulled = data, size, 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in chunked(self.data, self.size):
            self.pulled += len(chunk)
            yield chunk


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MIXED = [
    ("README.md", b"# A bundle\n" * 50),
    ("weights/", b""),
    ("weights/model.bin", os.urandom(3000)),
    ("data/train.jsonl", b'{"text": "hello"}\n' * 400),
    ("empty.txt", b""),
]


# ---- listing an upload


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_manifest_lists_every_entry_as_zipfile_reads_it(compression):
    data = make_zip(MIXED, compression=compression)
    listing = manifest([data])
    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    assert [e.name for e in listing.entries] == [i.filename for i in infos]
    for entry, info, (_, content) in zip(listing.entries, infos, MIXED, strict=True):
        assert entry.size == info.file_size == len(content)
        assert entry.compressed_size == info.compress_size
        assert entry.crc32 == info.CRC == zlib.crc32(content)
        assert entry.sha256 == sha256(content)
        assert entry.is_dir == info.is_dir()
        assert entry.offset == info.header_offset
    assert listing.archive_size == len(data)
    assert listing.total_size == sum(len(c) for _, c in MIXED)
    assert listing.top_level() == ("README.md", "data/", "empty.txt", "weights/")


@pytest.mark.parametrize("size", [1, 7, 4096, MIB])
def test_manifest_is_the_same_whatever_the_chunk_sizes(size):
    data = make_zip(MIXED)
    assert manifest(chunked(data, size)) == manifest([data])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=12))
def test_manifest_is_the_same_for_any_split_of_the_bytes(cuts):
    data = make_zip(MIXED)
    pieces, at = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(data[at:cut])
        at = cut
    pieces.append(data[at:])
    assert manifest(pieces) == manifest([data])


def test_zip64_local_headers_are_read():
    data = make_zip(MIXED, force_zip64=True)
    listing = manifest(chunked(data, 7))
    assert [(e.name, e.sha256) for e in listing.entries] == [(n, sha256(c)) for n, c in MIXED]


def test_zip64_central_directory_is_read():
    # Members of unknown size are written as ZIP64: ZIP64 extra fields in the
    # central directory (sizes and offsets of 0xFFFFFFFF) and the ZIP64 end
    # of central directory record and locator.
    data = b"".join(build_zip([ZipMember(n, WHEN, None, [c]) for n, c in MIXED]))
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data
    listing = manifest(chunked(data, 1))
    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    assert [(e.name, e.size, e.compressed_size, e.offset) for e in listing.entries] == \
        [(i.filename, i.file_size, i.compress_size, i.header_offset) for i in infos]


def test_an_empty_archive_has_an_empty_manifest():
    listing = manifest([make_zip([])])
    assert listing.entries == () and listing.total_size == 0


def test_names_are_utf8_as_zipfile_writes_them():
    data = make_zip([("données/modèle.txt", b"x"), ("日本.md", b"y")])
    assert [e.name for e in manifest([data]).entries] == ["données/modèle.txt", "日本.md"]


# ---- hostile archives


def test_a_zip_bomb_stops_at_the_expanded_size_limit_without_reading_on():
    bomb = make_zip([("zeros.bin", bytes(16 * MIB))])
    source = Counting(bomb, 1024)
    with pytest.raises(ZipRefused) as caught:
        manifest(source, limits=ZipLimits(max_total_bytes=MIB))
    assert caught.value.code == "zip_refused" and isinstance(caught.value, ValidationError)
    assert caught.value.details["reason"] == "too_large"
    assert source.pulled < len(bomb) // 2


def test_an_entry_declaring_too_large_a_size_is_refused_before_inflating():
    # zipfile writes the size in the local header when it can seek: known
    # before a byte is inflated.
    bomb = make_zip([("zeros.bin", bytes(4 * MIB))], compression=zipfile.ZIP_STORED)
    source = Counting(bomb, 4096)
    with pytest.raises(ZipRefused) as caught:
        manifest(source, limits=ZipLimits(max_total_bytes=MIB))
    assert caught.value.details["reason"] == "too_large"
    assert source.pulled == 4096


def test_an_archive_that_inflates_beyond_the_ratio_is_refused_as_a_bomb():
    bomb = make_zip([("zeros.bin", bytes(8 * MIB))])  # deflates ~1000x
    with pytest.raises(ZipRefused) as caught:
        manifest([bomb], limits=ZipLimits(ratio_grace_bytes=MIB))
    assert caught.value.details["reason"] == "ratio"


def test_small_highly_compressible_files_pass_under_the_grace():
    listing = manifest([make_zip([("padding.bin", bytes(MIB))])])
    assert listing.entries[0].size == MIB


def test_too_many_entries_are_refused():
    data = make_zip([(f"f{i}", b"") for i in range(4)])
    with pytest.raises(ZipRefused) as caught:
        manifest([data], limits=ZipLimits(max_entries=3))
    assert caught.value.details["reason"] == "too_many_entries"


@pytest.mark.parametrize("name", [
    "../evil.sh", "a/../../evil.sh", "/etc/passwd", "C:/Windows/evil.dll", "a\\..\\..\\evil",
    "a//b", "./a", "a/./b", "tab\there", "..",
])
def test_zip_slip_and_ambiguous_names_are_refused(name):
    with pytest.raises(ZipRefused) as caught:
        manifest([make_zip([("ok.txt", b"fine"), (name, b"payload")])])
    assert caught.value.details["reason"] == "unsafe_name"


@pytest.mark.parametrize("host", [3, 2, 5, 16, 30])  # Unix; and VMS, Atari, BeOS, AtheOS, which unzip reads alike
def test_a_symbolic_link_entry_is_refused_as_zip_slip_by_a_safe_name(host: int) -> None:
    # Listed as sound before: unzip makes "data" a link to /etc, and the
    # entry "data/passwd" after it then writes /etc/passwd.
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        link = zipfile.ZipInfo("data", date_time=(2024, 1, 2, 3, 4, 6))
        link.create_system = host  # st_mode in the external attributes
        link.external_attr = (0o120777) << 16  # S_IFLNK
        archive.writestr(link, "/etc")
        archive.writestr("data/passwd", b"root::0:0::/:/bin/sh\n")
    with pytest.raises(ZipRefused) as caught:
        manifest([out.getvalue()])
    assert caught.value.details == {"reason": "symlink", "entry": "data"}
    # A Unix writer's regular files and directories pass as before.
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as archive:
        info = zipfile.ZipInfo("run.sh", date_time=(2024, 1, 2, 3, 4, 6))
        info.create_system = 3
        info.external_attr = 0o100755 << 16
        archive.writestr(info, b"#!/bin/sh\n")
    assert [e.name for e in manifest([plain.getvalue()]).entries] == ["run.sh"]


def test_names_longer_than_linux_allows_are_refused():
    with pytest.raises(ZipRefused) as caught:
        manifest([make_zip([("x" * 256, b"")])])
    assert caught.value.details["reason"] == "name_too_long"
    with pytest.raises(ZipRefused):
        check_name("/".join(["d" * 200] * 21))  # 4,220 bytes
    check_name("/".join(["d" * 200] * 20))


def test_a_name_held_twice_is_refused():
    with pytest.raises(ZipRefused) as caught:
        manifest([make_zip([("a.txt", b"one"), ("a.txt", b"two")])])
    assert caught.value.details["reason"] == "duplicate_name"


@pytest.mark.filterwarnings("ignore:PBKDF2:DeprecationWarning")  # pycryptodome, inside stream-zip's AES writer
def test_an_aes_encrypted_entry_is_refused_with_a_clear_reason():
    data = b"".join(stream_zip.stream_zip(
        [("secret.txt", WHEN, 0o600, stream_zip.ZIP_32, [b"hidden"])], password="pw"))
    with pytest.raises(ZipRefused) as caught:
        manifest([data])
    assert caught.value.details["reason"] == "encrypted"
    assert "encrypted" in caught.value.message


def test_a_zipcrypto_encrypted_entry_is_refused_with_a_clear_reason():
    # zipfile cannot write traditional PKWARE encryption: set the encrypted
    # flag (general purpose bit 0) on a real archive's headers, as a
    # ZipCrypto writer does; detection happens on the header, before data.
    data = bytearray(make_zip([("secret.txt", b"x" * 100)]))
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature)
        data[at + flag_at] |= 0x01
    assert zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0].flag_bits & 0x1
    with pytest.raises(ZipRefused) as caught:
        manifest([bytes(data)])
    assert caught.value.details["reason"] == "encrypted"


@pytest.mark.parametrize("keep", [0.5, 0.9, -10, -30])
def test_a_truncated_archive_is_malformed(keep):
    data = make_zip(MIXED)
    cut = int(len(data) * keep) if keep > 0 else len(data) + int(keep)
    with pytest.raises(ZipMalformed) as caught:
        manifest([data[:cut]])
    assert caught.value.code == "zip_malformed" and isinstance(caught.value, MalformedInput)


def test_bytes_that_are_not_a_zip_are_malformed():
    for junk in (b"", b"not a zip at all", b"GGUF" + bytes(100)):
        with pytest.raises(ZipMalformed):
            manifest([junk])


def test_content_that_fails_its_crc_is_malformed():
    data = bytearray(make_zip([("a.txt", b"hello world" * 10)], compression=zipfile.ZIP_STORED))
    data[data.index(b"hello") + 3] ^= 0xFF
    with pytest.raises(ZipMalformed) as caught:
        manifest([bytes(data)])
    assert "CRC-32" in caught.value.message


def test_corrupt_compressed_data_is_malformed():
    data = bytearray(make_zip([("a.bin", os.urandom(2000))]))
    start = 30 + len("a.bin")
    data[start:start + 8] = b"\xff" * 8  # invalid deflate block type
    with pytest.raises(ZipMalformed):
        manifest([bytes(data)])


def test_a_central_directory_that_disagrees_with_the_entries_is_malformed():
    # Other readers trust the central directory: a name there that differs
    # from the local header would show a downloader another file.
    data = make_zip([("good.txt", b"content")])
    directory = data.index(b"PK\x01\x02")
    forged = data[:directory] + data[directory:].replace(b"good.txt", b"evil.txt")
    with pytest.raises(ZipMalformed) as caught:
        manifest([forged])
    assert "central directory" in caught.value.message


def test_a_central_directory_too_large_to_hold_is_refused():
    data = make_zip([(f"file-{i:04}.txt", b"") for i in range(200)])
    with pytest.raises(ZipRefused) as caught:
        manifest([data], limits=ZipLimits(max_directory_bytes=4096))
    assert caught.value.details["reason"] == "directory_too_large"


@settings(max_examples=150, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
                      min_size=1, max_size=4))
def test_no_damaged_archive_escapes_as_anything_but_a_typed_error(flips):
    data = bytearray(make_zip(MIXED[:3]))
    for at, mask in flips:
        data[at % len(data)] ^= mask
    try:
        manifest(chunked(bytes(data), 97), limits=ZipLimits(max_total_bytes=MIB))
    except (ZipRefused, ZipMalformed):
        pass


def with_method(data: bytes, method: int) -> bytes:
    """``data`` with every entry's compression method field set to ``method``."""
    out = bytearray(data)
    for signature, method_at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = out.find(signature)
        while at >= 0:
            out[at + method_at] = method
            at = out.find(signature, at + 4)
    return bytes(out)


def test_deflate_data_read_as_deflate64_is_malformed():
    # Deflate64 (method 9) reads length code 285 differently: deflate data
    # relabelled as Deflate64 is corrupt to its inflater, which raises its
    # own exceptions (not stream-unzip's).
    with pytest.raises(ZipMalformed):
        manifest([with_method(make_zip([("a.txt", b"hello world " * 50)]), 9)])


@settings(max_examples=100, deadline=None)
@given(method=st.sampled_from([9, 12]), seed=st.binary(min_size=1, max_size=300),
       flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), max_size=3))
def test_no_damaged_deflate64_or_bzip2_entry_escapes_as_anything_but_a_typed_error(method, seed, flips):
    data = bytearray(with_method(make_zip([("a.bin", seed * 4)]), method))
    for at, mask in flips:
        data[35 + at % (len(data) - 35)] ^= mask
    try:
        manifest([bytes(data)], limits=ZipLimits(max_total_bytes=MIB))
    except (ZipRefused, ZipMalformed):
        pass


def test_errors_of_the_source_pass_through_unchanged():
    class Gone(Exception):
        pass

    def failing() -> Iterator[bytes]:
        yield make_zip(MIXED)[:100]
        raise Gone

    with pytest.raises(Gone):
        manifest(failing())


# ---- serving one entry


def test_one_entry_streams_out_by_name():
    data = make_zip(MIXED)
    assert b"".join(entry_chunks(chunked(data, 7), "data/train.jsonl")) == MIXED[3][1]


def test_one_entry_streams_from_its_offset_without_the_entries_before_it():
    data = make_zip(MIXED)
    listing = manifest([data])
    entry = listing.entry("data/train.jsonl")
    source = Counting(data[entry.offset:], 16)
    assert b"".join(entry_chunks(source, entry.name, manifest=listing)) == MIXED[3][1]
    assert source.pulled < len(data) - entry.offset  # stopped at the entry's end


def test_an_entry_not_in_the_manifest_fails_before_reading():
    data = make_zip(MIXED)
    source = Counting(data, 512)
    with pytest.raises(ZipEntryMissing):
        entry_chunks(source, "nope.txt", manifest=manifest([data]))
    assert source.pulled == 0


def test_an_entry_not_in_the_archive_is_missing():
    with pytest.raises(ZipEntryMissing):
        b"".join(entry_chunks([make_zip(MIXED)], "nope.txt"))


def test_an_entry_that_differs_from_its_manifest_is_a_checksum_mismatch():
    before = manifest([make_zip([("a.txt", b"version one")])])
    after = make_zip([("a.txt", b"version two")])
    with pytest.raises(ChecksumMismatch):
        b"".join(entry_chunks([after], "a.txt", manifest=before))


def test_abandoning_a_served_entry_closes_the_source():
    data = make_zip([("big.bin", os.urandom(200_000))], compression=zipfile.ZIP_STORED)
    source = chunked(data, 4096)
    served = entry_chunks(source, "big.bin")
    next(served)
    served.close()
    assert source.gi_frame is None  # the generator (a file or a connection, in life) was closed


def test_serving_an_entry_is_bounded_like_listing():
    bomb = make_zip([("zeros.bin", bytes(4 * MIB)), ("after.txt", b"x")])
    with pytest.raises(ZipRefused):
        b"".join(entry_chunks([bomb], "after.txt", limits=ZipLimits(max_total_bytes=MIB)))


# ---- rebuilding a bundle


def members_of(files: list[tuple[str, bytes]], *, sized: bool = True) -> list[ZipMember]:
    return [ZipMember(n, WHEN, len(c) if sized else None, chunked(c, 1000)) for n, c in files]


@pytest.mark.parametrize("sized", [True, False])
def test_a_rebuilt_zip_lists_as_its_members_and_zipfile_checks_its_crcs(sized):
    data = b"".join(build_zip(members_of(MIXED, sized=sized)))
    listing = manifest(chunked(data, 7))
    assert [(e.name, e.size, e.sha256) for e in listing.entries] == \
        [(n, len(c), sha256(c)) for n, c in MIXED]
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    assert [archive.read(n) for n, _ in MIXED] == [c for _, c in MIXED]
    assert archive.getinfo("weights/").is_dir()


def test_the_same_members_give_the_same_bytes():
    first = b"".join(build_zip(members_of(MIXED)))
    again = b"".join(build_zip(members_of(MIXED)))
    assert first == again
    later = b"".join(build_zip([ZipMember(n, WHEN + timedelta(seconds=2), len(c), [c]) for n, c in MIXED]))
    assert later != first


def test_times_are_utc_and_clamped_to_what_zip_can_hold():
    eastern = datetime(2024, 5, 17, 14, 30, 44, tzinfo=timezone(timedelta(hours=2)))
    naive = datetime(2024, 5, 17, 12, 30, 44)
    old = datetime(1970, 1, 1, tzinfo=UTC)
    data = b"".join(build_zip([ZipMember("a", eastern, 1, [b"a"]), ZipMember("b", naive, 1, [b"b"]),
                               ZipMember("c", old, 1, [b"c"])]))
    assert data == b"".join(build_zip([ZipMember("a", WHEN, 1, [b"a"]), ZipMember("b", WHEN, 1, [b"b"]),
                                       ZipMember("c", datetime(1980, 1, 1), 1, [b"c"])]))
    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    assert infos[0].date_time == (2024, 5, 17, 12, 30, 44)
    assert infos[2].date_time == (1980, 1, 1, 0, 0, 0)


def test_members_with_a_crc_are_stored_uncompressed():
    weights = os.urandom(50_000)
    data = b"".join(build_zip([ZipMember("w.bin", WHEN, len(weights), chunked(weights, 4096), zlib.crc32(weights))]))
    info = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
    assert info.compress_type == zipfile.ZIP_STORED
    assert manifest([data]).entries[0].sha256 == sha256(weights)


def test_a_member_whose_bytes_differ_from_its_declaration_fails():
    with pytest.raises(ChecksumMismatch):
        b"".join(build_zip([ZipMember("a", WHEN, 10, [b"short"])]))
    with pytest.raises(ChecksumMismatch):
        b"".join(build_zip([ZipMember("a", WHEN, 3, [b"too long"])]))
    with pytest.raises(ChecksumMismatch):
        b"".join(build_zip([ZipMember("a", WHEN, 5, [b"bytes"], crc32=zlib.crc32(b"other"))]))


def test_members_with_unsafe_or_repeated_names_are_refused():
    with pytest.raises(ZipRefused):
        b"".join(build_zip([ZipMember("../x", WHEN, 1, [b"x"])]))
    with pytest.raises(ZipRefused):
        b"".join(build_zip([ZipMember("a", WHEN, 1, [b"x"]), ZipMember("a", WHEN, 1, [b"y"])]))


def test_members_may_be_given_as_tuples():
    data = b"".join(build_zip([("a.txt", WHEN, 2, [b"hi"]), ("b.txt", WHEN, None, iter([b"yo"]))]))
    assert zipfile.ZipFile(io.BytesIO(data)).read("b.txt") == b"yo"


def test_building_streams_without_reading_members_ahead():
    pulled = []

    def member_chunks() -> Iterator[bytes]:
        for i in range(8):
            pulled.append(i)
            yield os.urandom(MIB)  # incompressible: output keeps pace with input

    def members() -> Iterator[ZipMember]:
        yield ZipMember("big.bin", WHEN, 8 * MIB, member_chunks())
        pulled.append("second member")
        yield ZipMember("small.txt", WHEN, 1, [b"x"])

    output = build_zip(members())
    next(output)
    assert len(pulled) < 8 and "second member" not in pulled


def test_zip_auto_writes_a_large_offset_archive_as_zip64_members():
    # A member declared past 4 GiB is written with ZIP64 sizes from the start
    # (not checked by writing 4 GiB here: the layout is stream-zip's ZIP_AUTO).
    first = next(iter(build_zip([ZipMember("huge.bin", WHEN, 5 << 30, iter([b""]))])))
    version_needed = struct.unpack_from("<H", first, 4)[0]
    assert first.startswith(b"PK\x03\x04") and version_needed == 45


_NAMES = st.lists(st.text(alphabet="abcdefghij-_.", min_size=1, max_size=12)
                  .filter(lambda s: s not in (".", "..")), min_size=1, max_size=3).map("/".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.dictionaries(_NAMES, st.binary(max_size=3000), max_size=6),
       sized=st.booleans(), chunk=st.sampled_from([1, 7, 1024, MIB]))
def test_build_then_manifest_round_trips_any_members(files, sized, chunk):
    items = sorted(files.items())
    data = b"".join(build_zip(members_of(items, sized=sized)))
    listing = manifest(chunked(data, chunk))
    assert [(e.name, e.size, e.sha256) for e in listing.entries] == \
        [(n, len(c), sha256(c)) for n, c in items]
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None
