"""Object stores: where asset bytes live, behind one small interface.

Two backends implement ``ObjectStore``: ``LocalObjects`` (a directory; the
embedded default, no service needed) and ``S3Objects`` (blobs/s3.py: any
S3-compatible service). One contract suite (tests/test_object_stores.py)
runs against both. The interface is synchronous and streaming: callers run
it on a worker thread (the bridge's executor, trio's ``to_thread``), and
bytes move as bounded chunks, never whole objects, so a multi-GB object
costs a few MB of memory.

Keys are relative paths of lower-case segments (``blobs/bafkrei...``,
``uploads/<session>/00001``); content addressing, parts and sessions are
the blob layer's business (blobs/blobs.py), not the backend's.

Memory per call: LocalObjects holds a chunk (1 MiB); S3Objects holds the
parts of a multipart put in flight (two of 8 MiB: S3's parts must be at
least 5 MiB), ~25 MiB measured for a 256 MiB put (tests/test_object_stores.py).

    store.put("uploads/s1/00001", chunks)     # atomic: the whole object or nothing
    for chunk in store.get(key, start=0, end=1024): ...   # end exclusive
    store.size(key)                            # None when absent
    store.move(src, dst)                       # replaces dst; src is gone after
    store.delete(key)                          # True if it was there
    list(store.keys("uploads/s1/"))
    store.protect(key, retain_until_ms=t)      # True if the backend itself enforces it
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from registrygrid.errors import NotFound, StorageFailed, Unavailable, ValidationError
from registrygrid.home import sync_folder

# Bytes read or written at a time: large enough that per-call overhead
# vanishes (syscalls, S3 requests), small enough that many concurrent
# transfers stay within a few MB each.
CHUNK_BYTES = 1 << 20

_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}(/[a-z0-9][a-z0-9._-]{0,127}){0,7}$")


class ObjectMissing(NotFound):
    code = "object_missing"


class ObjectStoreUnavailable(Unavailable):
    """The backend failed (disk, network, service): nothing was changed by the failed call."""

    code = "object_store_unavailable"


def check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValidationError(f"not an object key: {key!r}")
    return key


class ObjectStore(Protocol):
    name: str  # "local", "s3"

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store ``chunks`` under ``key`` atomically (replacing it); the byte count.
        If ``chunks`` raises, nothing is stored and the error propagates."""
        ...

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes in [start, end) (end None: to the end), as chunks.
        ObjectMissing if absent, raised by this call (not by the first
        ``next``), so a caller can tell an absent object before it answers."""
        ...

    def size(self, key: str) -> int | None: ...

    def move(self, src: str, dst: str) -> None: ...

    def delete(self, key: str) -> bool: ...

    def keys(self, prefix: str = "") -> Iterator[str]: ...

    def protect(self, key: str, *, retain_until_ms: int | None = None, legal_hold: bool | None = None) -> bool:
        """Have the backend itself refuse to delete the object: retained until
        ``retain_until_ms`` (ms since the epoch; extended only), under a legal
        hold while ``legal_hold`` (None: that one unchanged). True if the
        backend enforces it (S3 Object Lock), False if it cannot and only the
        node's index does (blobs/blobs.py): then nothing is asked of the
        backend. ObjectMissing if it enforces and the object is absent.

        A caller that strengthens protection calls this before recording it
        in its own index, and one that weakens it records first and calls
        this after, so the backend never protects less than the index claims
        (a failure in between leaves the object safer than recorded, never
        less safe)."""
        ...


class LocalObjects:
    """Objects as files under ``root``: written to a temporary file in the
    same directory, fsynced, then renamed into place (atomic on POSIX), so a
    crash leaves either the old object or the new one, never half of one."""

    name = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            sync_folder(path.parent)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(exc, OSError) and exc.errno in StorageFailed.ERRNOS:
                raise StorageFailed.at(self.root, exc, what="the object store") from None
            raise
        return written

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        _check_range(start, end)
        try:
            handle = open(path, "rb")  # noqa: SIM115 (closed by the generator)
        except FileNotFoundError:
            raise ObjectMissing(f"no object {key}") from None
        return self._read(handle, start, end)

    @staticmethod
    def _read(handle: object, start: int, end: int | None) -> Iterator[bytes]:
        with handle as f:  # type: ignore[attr-defined]
            f.seek(start)
            left = None if end is None else max(0, end - start)
            while left is None or left > 0:
                chunk = f.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def write_at(self, key: str, offset: int, chunks: Iterable[bytes]) -> int:
        """Write ``chunks`` into the object at ``offset`` (creating it, sparse,
        if absent), durably; the byte count. Not atomic, and not part of
        ObjectStore: an upload writes its parts in place with it, each at its
        own offset, in parallel (blobs/uploads.py), so the composed file is
        never written twice."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        written = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = os.pwrite(fd, view, offset + written)
                    written += n
                    view = view[n:]
            os.fsync(fd)
        except OSError as exc:
            if exc.errno in StorageFailed.ERRNOS:
                raise StorageFailed.at(self.root, exc, what="the object store") from None
            raise
        finally:
            os.close(fd)
        return written

    def truncate(self, key: str, size: int) -> None:
        """Cut (or extend, sparse) the object to ``size`` bytes."""
        os.truncate(self._path(key), size)

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def move(self, src: str, dst: str) -> None:
        source, target = self._path(src), self._path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except FileNotFoundError:
            raise ObjectMissing(f"no object {src}") from None
        sync_folder(target.parent)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        sync_folder(path.parent)
        if key.count("/") >= 2:
            # An upload's folder (uploads/<id>/) goes with its last part: each
            # session left an empty one behind, for good, and every keys()
            # walk read them. Top-level folders (blobs/, uploads/) stay.
            with contextlib.suppress(OSError):  # not empty: another object lives there
                path.parent.rmdir()
        return True

    def protect(self, key: str, *, retain_until_ms: int | None = None, legal_hold: bool | None = None) -> bool:
        """A directory has no retention of its own: the node's index alone
        enforces it (BlobStore.delete refuses), and anyone who can write the
        directory can delete the file. False."""
        check_key(key)
        return False

    def keys(self, prefix: str = "") -> Iterator[str]:
        # From the deepest folder the prefix names, not the whole root: a
        # finalize's look for its own parts walked every stored blob
        # (~0.3 s a finalize at 60,000 blobs).
        base = self.root
        folder = prefix.rpartition("/")[0]
        start = self._path(folder) if folder else base
        for dirpath, _dirs, files in os.walk(start):
            for name in sorted(files):
                if name.startswith(".part-"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), base).replace(os.sep, "/")
                if rel.startswith(prefix):
                    yield rel


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValidationError(f"bad byte range [{start}, {end})")
