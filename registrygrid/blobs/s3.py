"""Objects in any S3-compatible service (AWS S3, SeaweedFS, MinIO, Ceph RGW ...).

``S3Objects`` implements ``ObjectStore`` (blobs/objects.py) with obstore's
synchronous API (Rust ``object_store`` under Python bindings): each call
blocks its thread with the GIL released, which suits callers that already
run the store on worker threads. The contract suite
(tests/test_object_stores.py) runs it and ``LocalObjects`` through the same
tests against a real SeaweedFS server.

How the interface maps onto S3:

- ``put``: an object smaller than one part is sent as one PUT (one request,
  atomic). A larger one is a multipart upload fed from the caller's chunks
  with at most ``parallel_parts`` parts in flight, so memory stays near
  ``(parallel_parts + 1) * part_bytes`` whatever the object's size (24 MiB
  with the defaults; the contract suite measures 25 MiB of peak growth
  for a 256 MiB put). The
  object appears only when the upload completes; if the chunks raise,
  obstore aborts the upload (nothing visible, no parts left behind) and the
  caller's own exception propagates. An abort that itself fails (service
  gone at that moment) leaves an incomplete upload on the service: the
  node's lifecycle rules (blobs/lifecycle.py, ``rgrid asset lifecycle``)
  abort those under staging/ and uploads/ after some days.
- ``get``: one streamed GET per call, sent by the call itself (so an
  absent key raises there, as with ``LocalObjects``), in chunks of at
  least ``CHUNK_BYTES`` (except the last) and at most one network read
  more (up to 1.25 MiB seen). The request timeout covers the whole body,
  so a slow reader outlives it: object_store then resumes the body itself
  with a ranged GET (measured: four requests for a 256 MiB read with a
  2 s timeout; a replacement mid-read made it fail, not splice), but each
  resume spends one retry of that request's budget. So this module starts
  a fresh ranged GET, pinned to the first response's ETag, whenever the
  stream fails after progress, and a slow reader of a large object is not
  cut off after ``(retries + 1) * timeout_seconds``. An object replaced or
  deleted mid-read fails the read (``ObjectStoreUnavailable``); it never
  splices two versions. (``LocalObjects`` keeps serving the old file there.)
- ``move``: server-side CopyObject, then DELETE; not atomic (a crash in
  between leaves both keys). CopyObject handles sources up to 5 GiB on AWS
  S3 (its documented limit; object_store has no multipart copy).
- ``delete``: HEAD then DELETE (S3's DELETE answers 204 for absent keys too).
- ``keys``: ListObjectsV2 under the prefix's directory, filtered by the
  string prefix (``LocalObjects`` matches prefixes as strings, S3 listing as
  paths).

Every failure of the service or the network is ``ObjectStoreUnavailable``;
an absent key is ``ObjectMissing`` where the interface says so; no obstore
exception leaves this module (they stay attached as ``__cause__``).

Server-side encryption: ``server_side_encryption=True`` asks for SSE-S3
(``x-amz-server-side-encryption: AES256``) on every PUT, multipart upload
and copy. Measured on SeaweedFS 4.48 (``weed mini``): the chunks are stored
encrypted (AES-256, a data key per object wrapped by the server's key; no
plaintext in the volume files), reads decrypt transparently, ranges
included, and a copy made with the header stays encrypted (one made
without it is written in plaintext, hence the header on copies). Under
``weed mini`` the server's key is generated into ``<dir>/.mini_sse_kek``
beside the data, so it protects volume files that leave the machine
without that directory, not a whole data directory. SSE-S3 is not
client-side encryption: anyone the service lets read the object reads
plaintext.

Object Lock: with ``object_lock="governance"`` or ``"compliance"`` (the
bucket must have been created with Object Lock), ``protect`` sets the
object's retention (PutObjectRetention, that mode, the date rounded up to
the second) and legal hold (PutObjectLegalHold) through the control-plane
client (blobs/s3_control.py: obstore has no such call), so the service
itself refuses to delete a retained or held object version, whoever asks.
Compliance mode cannot be shortened or bypassed by anyone, as the node's
own retention; governance yields to a user with the bypass permission.
Such a bucket is versioned: ``delete`` removes every version of the key
(ListObjectVersions, then a DELETE of each, the current one last), since a
plain DELETE there only adds a delete marker and the bytes would stay,
readable by version id, after a purge or an erasure; the service refuses
while a version is retained or held (``ObjectLocked``), and the current
version is then still in place. A bucket versioned without Object Lock is
treated alike: the first ``delete`` asks the bucket (GetBucketVersioning,
once per process). The delete half of ``move`` (staging to
blobs/) adds a marker only: the lifecycle rules of blobs/lifecycle.py
expire those noncurrent staging versions. Without ``object_lock``,
``protect`` answers False: the node's index alone enforces retention.

    store = S3Objects("assets", "https://s3.example.org", access_key, secret_key,
                      prefix="node-1", server_side_encryption=True)
"""

from __future__ import annotations

import ipaddress
import itertools
import queue
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError as _ObstoreError
from obstore.exceptions import PreconditionError as _Precondition
from obstore.store import S3Store

from registrygrid.blobs.objects import (
    CHUNK_BYTES,
    ObjectMissing,
    ObjectStoreUnavailable,
    _check_range,
    check_key,
)
from registrygrid.blobs.s3_control import LOCK_MODES, ObjectLockMissing, S3Control
from registrygrid.errors import ValidationError

# A multipart upload's part: S3 refuses parts under 5 MiB (except the last)
# and more than 10,000 parts, so 8 MiB parts allow objects up to 78 GiB.
# Measured with 256 MiB puts to SeaweedFS on loopback (2-core VM, single
# runs): 68-108 MB/s with 8 MiB parts, 76-101 with 5 MiB, 75-103 with
# 16 MiB; the server is the limit there, so the size is set by the object
# cap and the memory bound, not by speed.
PART_BYTES = 8 << 20
MIN_PART_BYTES = 5 << 20
# Parts uploading at once: two keep a request busy while the next part
# fills; 4 and 12 were no faster in the runs above, and each one adds a
# part to the memory a put holds.
PARALLEL_PARTS = 2
# Per request: object_store's default overall timeout (connect + body).
TIMEOUT_SECONDS = 30.0
# Retries of one request (5xx, dropped connections, timeouts) with
# exponential backoff from 100 ms: a service restart of a few seconds is
# ridden out; a service that is down fails a call in about half a second
# (0.44-0.49 s measured against a closed port) instead of after
# object_store's default 10 retries (4.9 s there; up to 3 minutes).
RETRIES = 3
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3 bucket naming rules
# What obstore raises: its own hierarchy, OSError (FileNotFoundError for an
# absent object, IOError from the client) and NotImplementedError.
_BACKEND_ERRORS = (_ObstoreError, OSError, NotImplementedError)


class S3Objects:
    """Objects under ``prefix`` in ``bucket`` of an S3-compatible service at ``endpoint``.

    The bucket must exist; it is not created here. obstore, like the AWS
    SDKs, also reads ``AWS_*`` environment variables for settings this
    constructor does not pass (a session token, for example); what it
    passes wins. A plain-HTTP endpoint is accepted on a loopback address;
    elsewhere it needs ``allow_http=True``: requests stay signed (the
    secret never crosses), but the bytes cross the network in clear."""

    name = "s3"

    def __init__(
        self,
        bucket: str,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        region: str = "us-east-1",
        prefix: str = "",
        server_side_encryption: bool = False,
        object_lock: str | None = None,
        allow_http: bool = False,
        part_bytes: int = PART_BYTES,
        parallel_parts: int = PARALLEL_PARTS,
        timeout_seconds: float = TIMEOUT_SECONDS,
        retries: int = RETRIES,
    ) -> None:
        _check_config(bucket, endpoint, access_key, secret_key, region, allow_http,
                      part_bytes, parallel_parts, timeout_seconds, retries)
        self.bucket = bucket
        self.endpoint = endpoint.rstrip("/")
        self.prefix = check_key(prefix.strip("/")) if prefix.strip("/") else ""
        self.server_side_encryption = server_side_encryption
        if object_lock is not None and object_lock not in LOCK_MODES:
            raise ValidationError(f"S3 object_lock is one of {', '.join(LOCK_MODES)} or unset, not {object_lock!r}")
        self.object_lock = object_lock
        self._lock_seen = False
        self._versioned: bool | None = None  # the bucket keeps old versions (see _keeps_versions)
        # Bucket configuration and Object Lock (obstore has no call for them);
        # its client is built at first use.
        self.control = S3Control(bucket, self.endpoint, access_key, secret_key, region=region,
                                 timeout_seconds=timeout_seconds, retries=retries)
        self.part_bytes = part_bytes
        self.parallel_parts = parallel_parts
        self._bucket_seen = False
        config: dict[str, Any] = {
            "endpoint": self.endpoint,
            "access_key_id": access_key,
            "secret_access_key": secret_key,
            "region": region,
            # Pinned so an AWS_* variable in the environment cannot change them.
            "virtual_hosted_style_request": False,  # path style: what every S3-compatible server serves
            "skip_signature": False,
            "unsigned_payload": False,  # over plain HTTP the payload hash is the only integrity check
        }
        if server_side_encryption:
            config["server_side_encryption"] = "AES256"
        timeout = timedelta(seconds=timeout_seconds)
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            config=config,  # type: ignore[arg-type]
            # _check_config has refused plain HTTP that is neither allowed nor loopback.
            client_options={"allow_http": urlsplit(endpoint).scheme == "http", "timeout": timeout},
            retry_config={"max_retries": retries, "retry_timeout": 2 * timeout},
        )

    def __repr__(self) -> str:
        return f"S3Objects(bucket={self.bucket!r}, endpoint={self.endpoint!r}, prefix={self.prefix!r})"

    # ------------------------------------------------------------ put

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        check_key(key)
        self._check_bucket()
        source = _Chunks(chunks)
        # Up to one part buffered first: a smaller object goes as one PUT,
        # which costs one request instead of three.
        head: list[bytes] = []
        buffered = 0
        for chunk in source:
            head.append(chunk)
            buffered += len(chunk)
            if buffered >= self.part_bytes:
                break
        feed: _Prefetched | None = None
        try:
            with self._call(f"put {key}"):
                if buffered < self.part_bytes:
                    obstore.put(self._store, key, b"".join(head), use_multipart=False)
                else:
                    # obstore pulls a multipart upload's chunks from inside its
                    # own runtime, where a chunk source that itself calls
                    # obstore (a blob composed of stored parts) would start a
                    # runtime within a runtime, which panics; a thread of
                    # ours reads the source instead, a part ahead at most.
                    feed = _Prefetched(itertools.chain(head, source), depth=2)
                    obstore.put(self._store, key, feed, use_multipart=True,
                                chunk_size=self.part_bytes, max_concurrency=self.parallel_parts)
        except BaseException:
            if source.error is not None:
                # The caller's chunks failed and obstore aborted the upload:
                # nothing was stored, and the caller sees its own exception.
                raise source.error from None
            raise
        finally:
            if feed is not None:
                feed.close()
        return source.count

    # ------------------------------------------------------------ get

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        check_key(key)
        _check_range(start, end)
        # The GET is sent here, not at the first ``next``, so an absent key
        # raises ObjectMissing from this call as LocalObjects' open() does;
        # callers rely on that (Blobs.read translates it around this call).
        if end == start:
            # S3 has no empty range; only the object's presence is to be told.
            if self.size(key) is None:
                raise ObjectMissing(f"no object {key}")
            return iter(())
        return self._stream(key, start, end, self._open(key, start, end, None))

    def _stream(self, key: str, offset: int, end: int | None,
                opened: tuple[str | None, Iterator[bytes]] | None) -> Iterator[bytes]:
        while opened is not None:
            etag, chunks = opened
            progressed = False
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
                except _BACKEND_ERRORS as exc:
                    # Resume only after progress (else obstore's own retries
                    # are spent), and only pinned to a version.
                    if not progressed or etag is None:
                        raise self._unavailable(f"get {key} (at byte {offset})", exc) from exc
                    break
                offset += len(chunk)
                progressed = True
                yield chunk
            if end is not None and offset >= end:
                return
            opened = self._open(key, offset, end, etag)  # a fresh GET from ``offset``, same version

    def _open(self, key: str, offset: int, end: int | None,
              etag: str | None) -> tuple[str | None, Iterator[bytes]] | None:
        """A streamed GET of [offset, end); None when that range is empty
        because the object ends at or before ``offset``."""
        self._check_bucket()
        options: dict[str, Any] = {}
        if end is not None:
            options["range"] = (offset, end)
        elif offset:
            options["range"] = {"offset": offset}
        if etag is not None:
            options["if_match"] = etag
        try:
            result = obstore.get(self._store, key, options=options)  # type: ignore[arg-type]
        except FileNotFoundError:
            if etag is None:
                raise ObjectMissing(f"no object {key}") from None
            raise ObjectStoreUnavailable(f"S3 object {key} was deleted while being read") from None
        except _Precondition:
            raise ObjectStoreUnavailable(f"S3 object {key} was replaced while being read; read it again") from None
        except _BACKEND_ERRORS as exc:
            if "range" in options:
                # A range starting at or past the end is an error in S3 (416)
                # and an empty read here; anything else is a real failure.
                size = self.size(key)
                if size is None and etag is None:
                    raise ObjectMissing(f"no object {key}") from None
                if size is not None and offset >= size:
                    return None
            raise self._unavailable(f"get {key}", exc) from exc
        return result.meta["e_tag"], iter(result.stream(min_chunk_size=CHUNK_BYTES))

    # ------------------------------------------------------------ the rest

    def size(self, key: str) -> int | None:
        check_key(key)
        self._check_bucket()
        try:
            with self._call(f"size of {key}", if_absent=_Absent()):
                return obstore.head(self._store, key)["size"]
        except _Absent:
            return None

    def move(self, src: str, dst: str) -> None:
        check_key(src)
        check_key(dst)
        if src == dst:
            # S3 refuses to copy an object onto itself; the move is a no-op
            # as os.replace makes it, once the source is known to exist.
            if self.size(src) is None:
                raise ObjectMissing(f"no object {src}")
            return
        self._check_bucket()
        with self._call(f"move {src} to {dst}", if_absent=ObjectMissing(f"no object {src}")):
            obstore.copy(self._store, src, dst)
        with self._call(f"move {src} to {dst} (delete of the source after the copy)"):
            obstore.delete(self._store, src)

    def delete(self, key: str) -> bool:
        existed = self.size(key) is not None
        if self._keeps_versions():
            # A plain DELETE would leave the bytes there, readable by
            # version id, for good.
            self.control.delete_versions(self.full_key(key))
            return existed
        if not existed:
            return False
        with self._call(f"delete {key}"):
            obstore.delete(self._store, key)
        return True

    def _keeps_versions(self) -> bool:
        """Whether the bucket is versioned: always with Object Lock, else as
        the bucket says, asked once per process at the first delete."""
        if self.object_lock is not None:
            return True
        if self._versioned is None:
            self._versioned = self.control.versioned()
        return self._versioned

    def protect(self, key: str, *, retain_until_ms: int | None = None, legal_hold: bool | None = None) -> bool:
        check_key(key)
        if self.object_lock is None:
            return False  # the node's index alone enforces it, as with LocalObjects
        self._check_lock()
        full = self.full_key(key)
        # S3 refuses a retain-until date in the past; one that has passed
        # protects nothing, so there is nothing to set.
        retain = retain_until_ms is not None and retain_until_ms > time.time() * 1000
        if retain:
            self.control.put_retention(full, retain_until_ms, self.object_lock)  # type: ignore[arg-type]
        if legal_hold is not None:
            self.control.put_legal_hold(full, legal_hold)
        if not retain and legal_hold is None and self.size(key) is None:
            raise ObjectMissing(f"no object {key}")
        return True

    def full_key(self, key: str) -> str:
        """The key in the bucket: this store's prefix joined."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def _check_lock(self) -> None:
        """Once per store: Object Lock asked for on a bucket without it is a
        configuration error, told as such before the first object counts on it."""
        if self._lock_seen:
            return
        if not self.control.object_lock_enabled():
            raise ObjectLockMissing(
                f"config.json assets.s3.object_lock is {self.object_lock!r}, but bucket {self.bucket} has no "
                "Object Lock; S3 enables it only when a bucket is created (create one with it, or unset "
                "object_lock to let the node's index alone enforce retention)")
        self._lock_seen = True

    def keys(self, prefix: str = "") -> Iterator[str]:
        # Listing works on whole path segments: list the prefix's directory
        # and keep the keys that start with the prefix as a string.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if directory:
            try:
                check_key(directory)
            except ValidationError:
                return  # no key lives under a directory no key can name
        self._check_bucket()
        action = f"list of {prefix or '(all)'}"
        with self._call(action):
            listing = obstore.list(self._store, prefix=directory or None, chunk_size=1000)
        while True:
            with self._call(action):
                batch = next(listing, None)
            if batch is None:
                return
            for meta in batch:
                if meta["path"].startswith(prefix):
                    yield meta["path"]

    def _check_bucket(self) -> None:
        """Once per store: a missing bucket is a configuration error, but S3
        answers a HEAD of any key in it with the same bodiless 404 as an
        absent key, so without this check every object would read as absent."""
        if self._bucket_seen:
            return
        with self._call(f"check of bucket {self.bucket}"):
            next(obstore.list(self._store, chunk_size=1), None)
        self._bucket_seen = True

    @contextmanager
    def _call(self, action: str, *, if_absent: Exception | None = None) -> Iterator[None]:
        """Backend and network errors become ObjectStoreUnavailable; an absent
        object becomes ``if_absent`` when the caller gives one (what absence
        means is the caller's business), else a failure too."""
        try:
            yield
        except FileNotFoundError as exc:
            if if_absent is not None:
                raise if_absent from None
            raise self._unavailable(action, exc) from exc
        except _BACKEND_ERRORS as exc:
            raise self._unavailable(action, exc) from exc
        except BaseException as exc:
            # A panic inside obstore's Rust code reaches Python as pyo3's
            # PanicException, a BaseException: a backend failure too, not a
            # reason to take the caller's thread (or the bridge's loop) down.
            if type(exc).__name__ == "PanicException":
                raise self._unavailable(action, exc) from exc
            raise

    def _unavailable(self, action: str, exc: BaseException) -> ObjectStoreUnavailable:
        return ObjectStoreUnavailable(
            f"S3 {action} failed ({self.endpoint}, bucket {self.bucket}): {_summary(exc)}",
            details={"endpoint": self.endpoint, "bucket": self.bucket},
        )


class _Absent(Exception):
    """An absent object, inside this module only (``size`` answers None)."""


class _Chunks:
    """The caller's chunks, counted, as immutable bytes, remembering an
    exception they raise so ``put`` can tell it from a backend failure."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.count = 0
        self.error: BaseException | None = None

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            raise
        except BaseException as exc:
            self.error = exc
            raise
        if not isinstance(chunk, bytes):
            # obstore keeps a reference to each chunk until its part is
            # sent; a bytearray the caller refills would change under it.
            if not isinstance(chunk, (bytearray, memoryview)):
                self.error = TypeError(f"object chunks are bytes, not {type(chunk).__name__}")
                raise self.error
            chunk = bytes(chunk)
        self.count += len(chunk)
        return chunk


class _Prefetched:
    """An iterator read by a thread of its own into a bounded queue: the
    consumer never runs the source's code on its own thread."""

    _END = object()

    def __init__(self, source: Iterator[bytes], *, depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), name="rgrid-s3-feed", daemon=True)
        self._thread.start()

    def _run(self, source: Iterator[bytes]) -> None:
        try:
            for chunk in source:
                if not self._offer(chunk):
                    return
            self._offer(self._END)
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which raises it)
            self._offer(exc)

    def _offer(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> _Prefetched:
        return self

    def __next__(self) -> bytes:
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop reading the source (the consumer gave up, or finished)."""
        self._stop.set()
        self._thread.join(timeout=30)


def _summary(exc: BaseException) -> str:
    # obstore's messages carry a multi-line Rust debug dump after the first line.
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_config(bucket: str, endpoint: str, access_key: str, secret_key: str, region: str,
                  allow_http: bool, part_bytes: int, parallel_parts: int,
                  timeout_seconds: float, retries: int) -> None:
    # object_store accepts a malformed endpoint and panics on the first
    # request, and an endpoint with a path turns every key into a 404:
    # both are refused here, before any request.
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
        raise ValidationError(f"not an S3 bucket name: {bucket!r}")
    try:
        url = urlsplit(endpoint)
        port = url.port
    except (ValueError, TypeError):
        raise ValidationError(f"not an S3 endpoint URL: {endpoint!r}") from None
    if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/") \
            or url.query or url.fragment or url.username or url.password or port == 0:
        raise ValidationError(f"not an S3 endpoint URL (want scheme://host[:port]): {endpoint!r}")
    if url.scheme == "http" and not allow_http and not _is_loopback(url.hostname):
        raise ValidationError(f"plain-HTTP S3 endpoint {endpoint!r} off this machine needs allow_http=True: "
                              f"its bytes would cross the network in clear")
    if not access_key or not secret_key:
        raise ValidationError("S3 access key and secret key are required")
    if not region:
        raise ValidationError("S3 region is required (any name for most S3-compatible servers)")
    if not MIN_PART_BYTES <= part_bytes <= 5 << 30:
        raise ValidationError(f"S3 part size must be 5 MiB to 5 GiB, not {part_bytes}")
    if parallel_parts < 1 or timeout_seconds <= 0 or retries < 0:
        raise ValidationError("S3 parallel_parts >= 1, timeout_seconds > 0 and retries >= 0 are required")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
