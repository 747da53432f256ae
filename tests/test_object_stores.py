"""The ObjectStore contract (blobs/objects.py): every backend passes the same tests.

Each contract test runs against ``LocalObjects`` in a temporary directory
and ``S3Objects`` against a real SeaweedFS S3 server (tests/seaweed_support.py,
one per pytest process: the ``seaweed`` fixture of conftest.py), each test
under a fresh key prefix. Tests that
only make sense for S3 (multipart uploads left behind, an unreachable
service, server-side encryption, the request timeout) follow the contract.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from seaweed_support import SeaweedS3

from registrygrid.blobs.objects import (
    CHUNK_BYTES,
    LocalObjects,
    ObjectMissing,
    ObjectStore,
    ObjectStoreUnavailable,
)
from registrygrid.blobs.s3 import PART_BYTES, S3Objects
from registrygrid.errors import ValidationError

MiB = 1 << 20


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjects(tmp_path / "objects")
    server: SeaweedS3 = request.getfixturevalue("seaweed")
    return server.objects(prefix=f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def s3(seaweed: SeaweedS3) -> S3Objects:
    return seaweed.objects(prefix=f"t-{uuid.uuid4().hex[:12]}")


@functools.lru_cache(maxsize=16)
def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes counting in 8-byte words from ``seed`` << 48: a shifted
    range, a reordered or repeated chunk, another seed's bytes: none can
    pass for the right ones."""
    first = seed << 48
    return b"".join(i.to_bytes(8, "big") for i in range(first, first + (size + 7) // 8))[:size]


def in_chunks(data: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at:at + size]


def read(store: ObjectStore, key: str, **range_: int | None) -> bytes:
    return b"".join(store.get(key, **range_))


# ------------------------------------------------------------------ put and get


@pytest.mark.parametrize("size", [0, 10, 12 * MiB], ids=["empty", "small", "12MiB-in-1MiB-chunks"])
def test_put_then_get_returns_the_same_bytes_and_counts_them(store: ObjectStore, size: int) -> None:
    data = pattern(size)
    assert store.put("blobs/one", in_chunks(data)) == size
    assert store.size("blobs/one") == size
    assert read(store, "blobs/one") == data


def test_get_streams_in_bounded_chunks(store: ObjectStore) -> None:
    store.put("blobs/one", in_chunks(pattern(3 * MiB + 5)))
    sizes = [len(chunk) for chunk in store.get("blobs/one")]
    assert sum(sizes) == 3 * MiB + 5 and len(sizes) >= 3
    # obstore's chunks are "at least" a size, so S3's run past CHUNK_BYTES by
    # part of one network read (1.25 MiB seen).
    assert max(sizes) <= 2 * CHUNK_BYTES


def test_put_replaces_an_existing_object(store: ObjectStore) -> None:
    store.put("blobs/one", [b"first version, longer"])
    store.put("blobs/one", [b"second"])
    assert read(store, "blobs/one") == b"second"


def test_chunks_may_reuse_one_buffer(store: ObjectStore) -> None:
    """A caller filling one bytearray again and again (readinto) stores what
    each chunk held when it was handed over, not what the buffer holds last."""
    buffer = bytearray(3 * MiB)

    def refilled() -> Iterator[bytearray]:
        for i in range(4):  # 12 MiB: more than one S3 part
            buffer[:] = pattern(len(buffer), seed=i)
            yield buffer

    store.put("blobs/reused", refilled())
    assert read(store, "blobs/reused") == b"".join(pattern(3 * MiB, seed=i) for i in range(4))


SIZE = 2 * MiB + 1000


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (1000, None, slice(1000, None)),
        (10, MiB + 3, slice(10, MiB + 3)),
        (SIZE - 10, SIZE + 500, slice(SIZE - 10, None)),
        (5, 5, slice(0, 0)),
        (SIZE, None, slice(0, 0)),
        (SIZE, SIZE + 10, slice(0, 0)),
        (SIZE + 10, None, slice(0, 0)),
    ],
    ids=["start-only", "start-and-end", "end-beyond-size", "empty-range", "start-at-size",
         "start-at-size-with-end", "start-beyond-size"],
)
def test_get_reads_exactly_the_range_end_exclusive(store: ObjectStore, start: int, end: int | None,
                                                   expected: slice) -> None:
    data = pattern(SIZE)
    store.put("blobs/ranged", in_chunks(data))
    assert read(store, "blobs/ranged", start=start, end=end) == data[expected]


def test_ranges_of_an_empty_object_are_empty(store: ObjectStore) -> None:
    store.put("blobs/empty", [])
    assert read(store, "blobs/empty", start=0, end=10) == b""
    assert read(store, "blobs/empty", start=3) == b""


@pytest.mark.parametrize(("start", "end"), [(-1, None), (10, 5)])
def test_a_backwards_or_negative_range_is_refused(store: ObjectStore, start: int, end: int | None) -> None:
    store.put("blobs/one", [b"abc"])
    with pytest.raises(ValidationError):
        next(iter(store.get("blobs/one", start=start, end=end)))


@pytest.mark.parametrize(("start", "end"), [(0, None), (5, None), (2, 9), (4, 4)])
def test_get_of_an_absent_key_raises_object_missing_by_the_first_next(
        store: ObjectStore, start: int, end: int | None) -> None:
    with pytest.raises(ObjectMissing):
        next(iter(store.get("blobs/absent", start=start, end=end)))


def test_get_of_an_absent_key_raises_at_the_call(store: ObjectStore) -> None:
    """Sooner than the interface promises (the first ``next``), as both
    backends do and Blobs.read relies on: it translates ObjectMissing
    around the call alone."""
    with pytest.raises(ObjectMissing):
        store.get("blobs/absent")
    with pytest.raises(ObjectMissing):
        store.get("blobs/absent", start=4, end=4)


# ------------------------------------------------------------------ failed puts


def failing_after(data: bytes) -> Iterator[bytes]:
    yield from in_chunks(data)
    raise ConnectionResetError("client went away")


@pytest.mark.parametrize("size", [10, 12 * MiB], ids=["within-one-part", "past-one-part"])
def test_a_put_whose_chunks_raise_stores_nothing_and_keeps_the_old_object(store: ObjectStore,
                                                                          size: int) -> None:
    store.put("uploads/s1/00001", [b"old bytes"])
    with pytest.raises(ConnectionResetError, match="client went away"):
        store.put("uploads/s1/00001", failing_after(pattern(size)))
    with pytest.raises(ConnectionResetError):
        store.put("uploads/s1/00002", failing_after(pattern(size)))
    assert read(store, "uploads/s1/00001") == b"old bytes"
    assert store.size("uploads/s1/00002") is None
    assert sorted(store.keys("uploads/")) == ["uploads/s1/00001"]


def test_a_failed_multipart_put_leaves_no_upload_behind(seaweed: SeaweedS3, s3: S3Objects) -> None:
    with pytest.raises(ConnectionResetError):
        s3.put("uploads/s1/00001", failing_after(pattern(PART_BYTES * 2 + 1)))
    assert [key for key in seaweed.pending_uploads() if key.startswith(s3.prefix + "/")] == []


# ------------------------------------------------------------------ size, move, delete, keys


def test_a_put_fed_by_reading_other_objects_composes_them(store: ObjectStore) -> None:
    """An upload's finalize: the blob is put from the chunks of its stored
    parts, read from the same store while the put runs (past one S3 part:
    the multipart path, where obstore pulls chunks inside its own runtime)."""
    parts = [os.urandom(5 << 20), os.urandom(4 << 20), os.urandom(123)]
    for n, part in enumerate(parts):
        store.put(f"parts/{n}", [part])

    def composed() -> Iterator[bytes]:
        for n in range(len(parts)):
            yield from store.get(f"parts/{n}")

    assert store.put("whole", composed()) == sum(map(len, parts))
    assert b"".join(store.get("whole")) == b"".join(parts)


def test_size_of_an_absent_key_is_none(store: ObjectStore) -> None:
    assert store.size("blobs/absent") is None


def test_move_replaces_the_destination_and_removes_the_source(store: ObjectStore) -> None:
    data = pattern(12 * MiB)
    store.put("uploads/s1/joined", in_chunks(data))
    store.put("blobs/target", [b"stale"])
    store.move("uploads/s1/joined", "blobs/target")
    assert store.size("uploads/s1/joined") is None
    assert read(store, "blobs/target") == data


def test_move_of_an_absent_source_raises_object_missing_and_keeps_the_destination(store: ObjectStore) -> None:
    store.put("blobs/target", [b"kept"])
    with pytest.raises(ObjectMissing):
        store.move("uploads/absent", "blobs/target")
    assert read(store, "blobs/target") == b"kept"


def test_move_onto_itself_keeps_the_object(store: ObjectStore) -> None:
    store.put("blobs/one", [b"same"])
    store.move("blobs/one", "blobs/one")
    assert read(store, "blobs/one") == b"same"
    with pytest.raises(ObjectMissing):
        store.move("blobs/absent", "blobs/absent")


def test_delete_says_whether_the_key_was_there(store: ObjectStore) -> None:
    store.put("blobs/one", [b"x"])
    assert store.delete("blobs/one") is True
    assert store.delete("blobs/one") is False
    assert store.size("blobs/one") is None


def test_keys_lists_relative_keys_by_string_prefix(store: ObjectStore) -> None:
    for key in ("uploads/s1/00001", "uploads/s1/00002", "uploads/s10/00001", "blobs/abc"):
        store.put(key, [b"x"])
    assert sorted(store.keys()) == ["blobs/abc", "uploads/s1/00001", "uploads/s1/00002", "uploads/s10/00001"]
    assert sorted(store.keys("uploads/s1/")) == ["uploads/s1/00001", "uploads/s1/00002"]
    assert sorted(store.keys("uploads/s1")) == ["uploads/s1/00001", "uploads/s1/00002", "uploads/s10/00001"]
    assert sorted(store.keys("uploads/s1/0000")) == ["uploads/s1/00001", "uploads/s1/00002"]
    assert list(store.keys("nothing/")) == []


def test_a_folder_holds_objects_only_while_it_has_some_and_a_prefix_walks_its_own_folder_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each finished upload left uploads/<id>/ behind, empty, for good; and a
    # look for one session's parts walked every stored blob.
    store = LocalObjects(tmp_path / "objects")
    for key in ("uploads/s1/00001", "uploads/s1/00002", "blobs/abc"):
        store.put(key, [b"x"])
    walked: list[str] = []
    real_walk = os.walk
    monkeypatch.setattr(os, "walk", lambda top, *a, **k: (walked.append(str(top)), real_walk(top, *a, **k))[1])
    assert sorted(store.keys("uploads/s1/")) == ["uploads/s1/00001", "uploads/s1/00002"]
    assert walked == [str(tmp_path / "objects" / "uploads" / "s1")]
    monkeypatch.undo()
    store.delete("uploads/s1/00001")
    assert (tmp_path / "objects" / "uploads" / "s1").is_dir()  # one part still there
    store.delete("uploads/s1/00002")
    assert not (tmp_path / "objects" / "uploads" / "s1").exists()
    store.delete("blobs/abc")
    assert (tmp_path / "objects" / "blobs").is_dir() and (tmp_path / "objects" / "uploads").is_dir()


BAD_KEYS = ["", "/abs", "a//b", "Upper/case", "../up", "a/./b", "a/", "a b", "x" * 129,
            "/".join("a" * 9), "a/\x00"]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_are_refused_by_every_operation(store: ObjectStore, key: str) -> None:
    operations = [
        lambda: store.put(key, [b"x"]),
        lambda: next(iter(store.get(key))),
        lambda: store.size(key),
        lambda: store.move(key, "blobs/ok"),
        lambda: store.move("blobs/ok", key),
        lambda: store.delete(key),
    ]
    store.put("blobs/ok", [b"x"])
    for operation in operations:
        with pytest.raises(ValidationError):
            operation()
    assert list(store.keys()) == ["blobs/ok"]


# ------------------------------------------------------------------ memory


# Measured in a fresh interpreter, from the kernel's high-water mark of its
# resident memory (VmHWM), reset to the current size after a warm-up
# (writing 5 to /proc/self/clear_refs), so neither what ran before in the
# pytest worker nor one-time costs (imports, obstore's runtime and
# connection pool) hide or inflate the growth. Not ru_maxrss: a child's
# ru_maxrss starts at its parent's peak (exec folds the old address
# space's high-water mark into it), so under pytest it reads the worker's
# peak. Not tracemalloc: obstore buffers parts in Rust's heap, which
# tracemalloc does not see.
STREAM_256_MIB = r"""
import hashlib, json, sys
from registrygrid.blobs.objects import LocalObjects
from registrygrid.blobs.s3 import S3Objects

spec = json.loads(sys.argv[1])
store = LocalObjects(spec["root"]) if spec["backend"] == "local" else S3Objects(**spec["s3"])
template = bytearray(range(256)) * 4096  # 1 MiB

def chunks():
    for i in range(256):  # 256 MiB, one fresh 1 MiB bytes object at a time
        template[:8] = i.to_bytes(8, "big")
        yield bytes(template)

def memory_mib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB

store.put("warm/up", [b"x"]); b"".join(store.get("warm/up"))
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # VmHWM := VmRSS
before = memory_mib("VmRSS")
written = store.put("big/object", chunks())
after_put = memory_mib("VmHWM")
digest = hashlib.blake2b()
for chunk in store.get("big/object"):
    digest.update(chunk)
expected = hashlib.blake2b()
for chunk in chunks():
    expected.update(chunk)
print(json.dumps({"written": written, "same": digest.digest() == expected.digest(), "before": before,
                  "after_put": after_put, "after_get": memory_mib("VmHWM")}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_streaming_256_mib_through_put_and_get_grows_the_peak_rss_by_under_64_mib(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if backend == "local":
        spec: dict = {"backend": "local", "root": str(tmp_path / "objects")}
    else:
        server: SeaweedS3 = request.getfixturevalue("seaweed")
        spec = {"backend": "s3", "s3": {
            "bucket": server.bucket, "endpoint": server.endpoint, "access_key": server.access_key,
            "secret_key": server.secret_key, "prefix": f"t-{uuid.uuid4().hex[:12]}", "allow_http": True}}
    done = subprocess.run([sys.executable, "-c", STREAM_256_MIB, json.dumps(spec)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["written"] == 256 * MiB and result["same"]
    growth = max(result["after_put"], result["after_get"]) - result["before"]
    assert growth < 64, f"peak RSS grew {growth:.1f} MiB streaming 256 MiB ({result})"


# ------------------------------------------------------------------ S3: failures of the service


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def every_operation(store: S3Objects) -> list:
    return [
        lambda: store.put("blobs/one", [b"x"]),
        lambda: store.put("blobs/big", in_chunks(pattern(PART_BYTES + 1))),
        lambda: next(iter(store.get("blobs/one"))),
        lambda: store.size("blobs/one"),
        lambda: store.move("blobs/one", "blobs/two"),
        lambda: store.delete("blobs/one"),
        lambda: list(store.keys("blobs/")),
    ]


def test_an_unreachable_service_is_object_store_unavailable_for_every_operation() -> None:
    store = S3Objects("bucket", f"http://127.0.0.1:{closed_port()}", "key", "secret", allow_http=True,
                      retries=1)
    for operation in every_operation(store):
        with pytest.raises(ObjectStoreUnavailable, match=r"S3 .* failed \(http://127\.0\.0\.1:\d+, bucket"):
            operation()


def test_refused_credentials_are_object_store_unavailable(seaweed: SeaweedS3) -> None:
    store = S3Objects(seaweed.bucket, seaweed.endpoint, seaweed.access_key, "wrong-secret", allow_http=True)
    for operation in every_operation(store):
        with pytest.raises(ObjectStoreUnavailable):
            operation()


def test_a_missing_bucket_is_unavailable_not_an_absent_object(seaweed: SeaweedS3) -> None:
    """S3 answers HEAD of a key in a missing bucket with the same bodiless
    404 as an absent key; the store must not report every object absent."""
    store = S3Objects("no-such-bucket", seaweed.endpoint, seaweed.access_key, seaweed.secret_key,
                      allow_http=True)
    with pytest.raises(ObjectStoreUnavailable, match="bucket no-such-bucket"):
        store.size("blobs/one")


@pytest.mark.parametrize("endpoint", ["not a url", "ftp://127.0.0.1:9000", "http://127.0.0.1:9000/some/path",
                                      "http://127.0.0.1:9000?x=1", "http://user:pw@127.0.0.1:9000"])
def test_a_malformed_endpoint_is_refused_before_any_request(endpoint: str) -> None:
    with pytest.raises(ValidationError, match="endpoint"):
        S3Objects("bucket", endpoint, "key", "secret", allow_http=True)


def test_plain_http_off_this_machine_needs_allow_http() -> None:
    with pytest.raises(ValidationError, match="allow_http"):
        S3Objects("bucket", "http://10.0.0.5:9000", "key", "secret")
    S3Objects("bucket", "http://10.0.0.5:9000", "key", "secret", allow_http=True)
    for loopback in ("http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000"):
        S3Objects("bucket", loopback, "key", "secret")


def test_plain_http_on_loopback_works_without_allow_http(seaweed: SeaweedS3) -> None:
    store = S3Objects(seaweed.bucket, seaweed.endpoint, seaweed.access_key, seaweed.secret_key,
                      prefix=f"t-{uuid.uuid4().hex[:12]}")
    store.put("blobs/one", [b"over loopback"])
    assert read(store, "blobs/one") == b"over loopback"


@pytest.mark.parametrize("bucket", ["", "ab", "Upper", "under_score", "-dash", "a" * 64])
def test_a_bad_bucket_name_is_refused(bucket: str) -> None:
    with pytest.raises(ValidationError, match="bucket"):
        S3Objects(bucket, "https://s3.example.org", "key", "secret")


# ------------------------------------------------------------------ S3: reads and encryption


def test_a_slow_reader_outlasts_the_request_timeout(seaweed: SeaweedS3) -> None:
    """A request that outlives its timeout breaks the stream; the store
    resumes from the last byte it handed out, pinned to the same version."""
    store = seaweed.objects(prefix=f"t-{uuid.uuid4().hex[:12]}", timeout_seconds=0.5, retries=0)
    data = pattern(4 * MiB)
    store.put("blobs/slow", in_chunks(data))
    received = []
    for chunk in store.get("blobs/slow"):
        received.append(chunk)
        time.sleep(0.3)  # four chunks: 1.2 s in all, past the 0.5 s request timeout
    assert b"".join(received) == data


def test_an_object_replaced_mid_read_fails_the_read_rather_than_splicing(seaweed: SeaweedS3) -> None:
    store = seaweed.objects(prefix=f"t-{uuid.uuid4().hex[:12]}", timeout_seconds=0.5, retries=0)
    old = pattern(4 * MiB, seed=1)
    store.put("blobs/swapped", in_chunks(old))
    reader = store.get("blobs/swapped")
    first = next(reader)
    assert first == old[:len(first)]
    store.put("blobs/swapped", in_chunks(pattern(4 * MiB, seed=2)))
    time.sleep(0.6)  # the first request times out: the read restarts and finds another version
    with pytest.raises(ObjectStoreUnavailable, match="replaced while being read"):
        for _ in reader:
            pass


def test_server_side_encryption_stores_no_plaintext_and_reads_back_transparently(
        seaweed: SeaweedS3) -> None:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    encrypted = seaweed.objects(prefix=prefix, server_side_encryption=True)
    plain_reader = seaweed.objects(prefix=prefix)
    marker = f"<<sse-marker-{uuid.uuid4().hex}>>".encode()
    # Random bytes around the marker: SeaweedFS compresses compressible
    # data, which would hide plaintext from this search anyway.
    data = b"".join(os.urandom(4096) + marker for _ in range(2600))  # ~10.6 MiB: two parts
    encrypted.put("blobs/secret", in_chunks(data))
    encrypted.put("blobs/small-secret", [data[:100_000]])
    encrypted.move("blobs/secret", "blobs/moved-secret")
    assert read(plain_reader, "blobs/moved-secret") == data
    assert read(plain_reader, "blobs/moved-secret", start=PART_BYTES - 100, end=PART_BYTES + 100) == \
        data[PART_BYTES - 100:PART_BYTES + 100]
    assert read(plain_reader, "blobs/small-secret") == data[:100_000]
    assert not seaweed.volumes_contain(marker)
    # The control: the same search finds plaintext stored without SSE.
    plain_reader.put("blobs/open", [data[:100_000]])
    assert seaweed.volumes_contain(marker)
