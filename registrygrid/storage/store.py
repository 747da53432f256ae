"""The LMDB environment: every sub-database, its key layout, and map growth.

This is the only module that opens LMDB, and only this package imports
it: the rest of the code holds transactions (``Txn``) without looking inside
and passes them to the functions of ``storage/*`` (changes, chains, records
and documents, feed, pending, audit, peers, tokens, idempotency), which own
every key layout below. A full map surfaces as ``StoreFull``; a disk that
refuses a write (full, over quota, failing) as ``StorageFailed``.

Key layout (``\\x00`` separates names, which can never contain it; integers
are 8-byte big-endian so byte order is numeric order):

    meta        name                          -> msgpack value
    changes     change id (CID of its body)   -> msgpack [body, batch root, index, path]
    roots       batch Merkle root + u64 size  -> msgpack [author, size, signature, leaves]
                                              (see storage/changes.py)
    chains      registry \\0 code(author) seq   -> change id; an author's last link is the
                                              head of its chain (the version vector);
                                              code: 4 bytes for a DID (storage/codes.py)
    docs        registry \\0 record            -> Automerge document (absent until the record's
                                              first update: a create is a snapshot)
                registry \\0 record \\0 'a' hash -> change id carrying that Automerge change
                                              (a snapshot's genesis change, once built)
                registry \\0 record \\0 'x' hash -> change id refused (kept as evidence)
                registry \\0 record \\0 'h' feedseq -> change id (the record's history)
    records     registry \\0 record            -> msgpack materialized record
    feed        feedseq                       -> msgpack feed event
    indexes     'k' registry \\0 kind \\0 record | 'o' code(owner) registry \\0 record
                | 't' tag \\0 registry \\0 record -> b""
    audit       audit seq                     -> msgpack [entry bytes, entry hash]
    audit_heads tree size                     -> msgpack signed tree head
    pending     change id                     -> envelope waiting for its dependencies
    parked_at   change id                     -> u64 ms it was parked (expired past a TTL), u32 its
                                                 bytes, its share (see storage/pending.py)
    parked_share share                        -> u64 changes, u64 bytes parked under it
    waiting     'r' registry \\0 record \\0 cid      (waits for Automerge deps of its record)
                | 'c' registry \\0 author \\0 u64(seq - 1) \\0 cid   (waits for its own predecessor)
                | 'd' author \\0 cid                 (waits for its signer's delegation) -> change id
    evidence    registry \\0 author \\0 seq \\0 cid -> envelope (equivocation proofs)
    peers       peer id                       -> msgpack peer state (federation)
    tokens      token id                      -> msgpack bridge API token, secret stored as sha256
                                                 (see storage/tokens.py)
    idempotency token id \\0 idempotency key   -> msgpack [expires_at, request sha256, reserved,
                                                 status, body, headers] (see storage/idempotency.py)
    blobs       blob CID                      -> msgpack blob entry (size, digests, holds, retention;
                                                 see storage/blobs.py); meta "blob_bytes" sums sizes
    uploads     session id                    -> msgpack upload session (see storage/blobs.py)
    codes       'n' DID -> u32be code | 'c' u32be code -> DID (storage/codes.py)
    erasures    'r' registry \\0 record | 'c' change id | 'g' registry \\0 author \\0 u64(first)
                                              -> erased records, erased changes, chain positions
                                                 notices vouch for (see storage/erasures.py)
"""

from __future__ import annotations

import collections
import contextlib
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgspec

from registrygrid.errors import IntegrityError, StorageFailed, Unavailable
from registrygrid.storage.compression import ValueCodec
from registrygrid.storage.codes import Codes

SUBDATABASES = (
    "meta",
    "changes",
    "roots",
    "chains",
    "docs",
    "records",
    "feed",
    "indexes",
    "audit",
    "audit_heads",
    "pending",
    "parked_at",
    "parked_share",
    "waiting",
    "evidence",
    "peers",
    "tokens",
    "idempotency",
    "blobs",
    "uploads",
    "erasures",
    "codes",
)

# 2: a record's Automerge hashes and history live beside its document in
# "docs" (format 1 kept them, and chain heads, in sub-databases of their
# own). A write's commit cost is mostly the B-tree pages it dirties (~60 us
# of fsync each here): keys that sit together share leaves, and every
# sub-database a write touches adds a root-to-leaf path of its own. A lone
# write on a 20k-record store touched ~38 pages in format 1.
# 3: wire format 2. A change is stored as its body and batch proof, its
# batch's signature once under the batch root ("roots"); a create is a
# snapshot, so a record has no Automerge document until its first update.
# 4: values of changes, records, feed and audit may be compressed against
# dictionaries of the store's own values (storage/compression.py); the
# author in chain keys and the owner in owner index keys are 4-byte codes
# (storage/codes.py). ~3.3 KB a record at 1M records -> ~2 KB.
STORE_FORMAT = 4
# Formats `rgrid store migrate` upgrades in place (storage/migrate.py).
MIGRATES_FROM = (2, 3)

# LMDB reserves address space, not disk: on Linux the file grows only as
# pages are written, so a generous map costs nothing until used. 64 GiB
# (of 128 TiB of user address space) covers tens of millions of records.
# Past it the map doubles (see ``grow``), but growing is only safe with no
# transaction open anywhere in the process, which a node with reader
# threads (bridge, sync responder) cannot promise at any instant; a map
# this large makes growing a rare event rather than a routine one.
DEFAULT_MAP_SIZE = 64 * 2**30
# Readers: the node's loop, the HTTP bridge threads and CLI processes that
# open the same home. LMDB's default of 126 is plenty; keep it explicit.
MAX_READERS = 126

SEP = b"\x00"


def u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def from_u64(data: bytes) -> int:
    return int.from_bytes(data, "big")


def key(*parts: str | bytes) -> bytes:
    # Keys are built a dozen times per write: all-text keys (the common
    # case) take one join and one encode; a bytes part falls back.
    try:
        return "\x00".join(parts).encode()  # type: ignore[arg-type]
    except TypeError:
        return SEP.join([p.encode() if isinstance(p, str) else p for p in parts])


# msgspec's encoder writes the same msgpack as msgpack.packb(use_bin_type=True)
# (str as str, bytes as bin, tuples as arrays) at a fraction of the cost;
# values are read back with msgspec's decoder (below).
_encoder = msgspec.msgpack.Encoder()
pack = _encoder.encode


# msgspec decodes the same msgpack (str, bin as bytes, arrays as lists) a few
# times faster than msgpack.unpackb; reads of records and tokens are hot.
unpack = msgspec.msgpack.decode


# How long grow() waits for open read transactions to finish: reads take
# microseconds to milliseconds; a reader still open after this is stuck.
GROW_WAIT_S = 10.0


class _ReaderGate:
    """Many readers at once, or one map resize with no reader: LMDB's rule
    for ``set_mapsize``. Readers never wait on each other or on the writer;
    they wait only while a resize is under way (a rare event).

    Reads are the bridge's hot path, so a reader takes no lock: it appends
    to a deque (atomic in CPython), then looks at the resize flag; a resize
    sets the flag, then waits for the deque to empty. Whatever the
    interleaving, either the resize sees the reader's entry and waits, or
    the reader sees the flag, takes its entry back and waits."""

    __slots__ = ("_open", "_resizing", "_cond")

    def __init__(self) -> None:
        self._open: collections.deque[None] = collections.deque()
        self._resizing = False
        self._cond = threading.Condition(threading.Lock())

    def enter(self) -> None:
        while True:
            self._open.append(None)
            if not self._resizing:
                return
            self._open.pop()
            with self._cond:
                self._cond.notify_all()  # the resize may be waiting for this entry to go
                while self._resizing:
                    self._cond.wait()

    def leave(self) -> None:
        self._open.pop()
        if self._resizing:
            with self._cond:
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, timeout: float) -> Iterator[None]:
        with self._cond:
            while self._resizing:  # another resize first
                self._cond.wait()
            self._resizing = True
            try:
                if not self._cond.wait_for(lambda: not self._open, timeout):
                    raise Unavailable(f"the store's map must grow, but a read has been open for {timeout:.0f} s; "
                                      "retry shortly")
                yield
            finally:
                self._resizing = False
                self._cond.notify_all()


class _ReadTxn:
    """``with store.read() as txn``: an LMDB read transaction inside the gate."""

    __slots__ = ("_store", "_txn")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._txn: lmdb.Transaction | None = None

    def __enter__(self) -> lmdb.Transaction:
        store = self._store
        for attempt in range(2):
            store._gate.enter()
            try:
                self._txn = store.env.begin(write=False, buffers=False)
                return self._txn
            except lmdb.MapResizedError:
                store._gate.leave()
                if attempt:
                    raise
                store._adopt_resized_map()
            except BaseException:
                store._gate.leave()
                raise
        raise AssertionError("unreachable")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if self._txn is not None:
                self._txn.abort()  # a read transaction has nothing to commit
        finally:
            self._txn = None
            self._store._gate.leave()
        if isinstance(exc, _PAGE_DAMAGE):
            raise self._store.damaged(exc) from None


# The transaction type callers pass back to this package's functions: they
# hold one, never look inside it.
Txn = lmdb.Transaction

T = TypeVar("T")


class StoreFull(Exception):
    """The map is full: the write was aborted; ``grow()``, then redo it."""


def _disk_trouble(exc: BaseException) -> bool:
    """Whether LMDB failed because the disk refused a write: it passes the
    OS's errno on as a plain lmdb.Error naming it (a short write is EIO)."""
    if isinstance(exc, (lmdb.DiskError, lmdb.PanicError)):
        return True
    return type(exc) is lmdb.Error and any(os.strerror(code) in str(exc) for code in StorageFailed.ERRNOS)


class StoreFormatError(IntegrityError):
    """The store was written by a version with another key layout."""

    code = "store_format"


class StoreDamaged(IntegrityError):
    """LMDB cannot open the store: not an LMDB file, or its pages fail
    LMDB's own checks (a failing disk, a file overwritten or cut short)."""

    code = "store_damaged"


# What LMDB says when the file itself is not a sound store.
_DAMAGE = (lmdb.InvalidError, lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.VersionMismatchError,
           lmdb.BadChecksumError)
# ... and, once open, when a page it reads fails its checks: the page's own
# error, or MDB_BAD_TXN from every later read of the transaction it spoilt.
_PAGE_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadChecksumError, lmdb.BadTxnError)


_META_MAGIC = 0xBEEFC0DE  # LMDB's MDB_MAGIC, at the start of each meta page's MDB_meta


def _check_length(path: Path) -> None:
    """Refuse a data.mdb shorter than its own meta page says it is (a copy
    cut short, a truncate): LMDB maps the file and reads its pages through
    the map, and a page past the end of the file killed the process with
    SIGBUS (exit 135, no message). Read with plain file I/O first: each of
    the two meta pages holds the page size (the free DB's md_pad, at 40),
    its last page number and its transaction id (at 136 and 144); the
    newer meta counts. A file LMDB would refuse anyway is left to it."""
    data = path / "data.mdb"
    if not data.exists():
        return
    if not data.is_file():
        raise lmdb.InvalidError(f"{data} is not a file")
    size = data.stat().st_size
    with open(data, "rb") as f:
        head = f.read(2 * 65536)
    if len(head) < 152 or struct.unpack_from("=I", head, 16)[0] != _META_MAGIC:
        return
    page = struct.unpack_from("=I", head, 40)[0]
    if page < 512 or page & (page - 1) or len(head) < page + 152:
        return
    txnid, last_page = max((struct.unpack_from("=Q", head, m * page + 144)[0],
                            struct.unpack_from("=Q", head, m * page + 136)[0]) for m in (0, 1))
    if size < (last_page + 1) * page:
        raise lmdb.CorruptedError(f"data.mdb is cut short: {size} bytes, where its pages run to "
                                  f"{(last_page + 1) * page} (transaction {txnid})")


class Store:
    """One LMDB environment in ``path`` with the sub-databases above."""

    def __init__(self, path: str | Path, *, map_size: int = DEFAULT_MAP_SIZE, readonly: bool = False,
                 formats: tuple[int, ...] = (STORE_FORMAT,)) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.readonly = readonly
        self.maps_grown = 0  # by transact(); the engine counts its own batches' growth
        try:
            try:
                self._open(map_size, readonly, formats)
            except lmdb.Error:
                if getattr(self, "env", None) is not None:
                    self.env.close()  # opened, then a sub-database or the first read failed
                raise
        except _DAMAGE as exc:
            raise StoreDamaged(
                f"the store in {self.path} cannot be opened: {exc}. Restore it from a backup, or move it aside "
                "and start afresh: the node refills from its federation's peers (a node whose key has signed "
                "changes then opens recovering: docs/trust.md, \"A lost store\")",
                details={"path": str(self.path), "cause": str(exc)}) from None
        except lmdb.Error as exc:
            if not _disk_trouble(exc):
                raise
            raise StorageFailed.at(self.path, exc, fix="free space (or fix the disk), then open it again") from None

    def _open(self, map_size: int, readonly: bool, formats: tuple[int, ...]) -> None:
        _check_length(self.path)
        self.env = lmdb.open(
            str(self.path),
            map_size=map_size,
            max_dbs=len(SUBDATABASES) + 4,
            max_readers=MAX_READERS,
            # Durability: sync and metasync on (the defaults), so a committed
            # transaction survives kill -9 and power loss. No writemap: it
            # would let a stray pointer write corrupt the map.
            sync=True,
            metasync=True,
            readonly=readonly,
            # Records are small and read at random: readahead only evicts
            # useful pages (LMDB docs recommend off for random access).
            readahead=False,
        )
        self.db = {}
        for name in SUBDATABASES:
            try:
                self.db[name] = self.env.open_db(name.encode(), create=not readonly)
            except lmdb.NotFoundError:
                # A read-only open of a store written by an older version
                # lacks the newer sub-databases; they are empty by definition.
                continue
        self._gate = _ReaderGate()
        self.values = ValueCodec(self)
        self.codes = Codes(self)
        with self.env.begin(write=not readonly) as txn:
            fmt = txn.get(b"format", db=self.db["meta"]) if "meta" in self.db else None
            if fmt is None and not readonly:
                txn.put(b"format", pack(STORE_FORMAT), db=self.db["meta"])
            elif fmt is not None and unpack(fmt) not in formats:
                found = unpack(fmt)
                self.env.close()
                if found in MIGRATES_FROM:
                    raise StoreFormatError(
                        f"the store in {self.path} has format {found}; this version reads format {STORE_FORMAT}. "
                        "Upgrade it in place with `rgrid store migrate` (the node must be stopped).")
                raise StoreFormatError(
                    f"the store in {self.path} has format {found}; this version reads format {STORE_FORMAT}. "
                    "Move it aside and start afresh: a node refills from its federation's peers.")
            if "meta" in self.db:
                self.values.load(txn)
        self.format = unpack(fmt) if fmt is not None else STORE_FORMAT

    def close(self) -> None:
        self.env.close()

    def copy_compacted(self, directory: Path) -> None:
        """A consistent copy of the store holding only the pages in use
        (storage/compact.py), into an existing empty ``directory``."""
        try:
            self.env.copy(str(directory), compact=True)
        except lmdb.Error as exc:
            if isinstance(exc, _PAGE_DAMAGE):
                raise self.damaged(exc) from None
            if not _disk_trouble(exc):
                raise
            raise StorageFailed.at(directory, exc, what="the compacted copy", kept="the store",
                                   fix="it needs free space up to the store's size; free some, then run "
                                       "`rgrid store compact` again") from None

    # ---- transactions ----

    def read(self) -> _ReadTxn:
        """A read transaction, as a context manager (``with store.read() as txn``).

        Every read goes through the store's gate so that ``grow()`` can wait
        until no read transaction is open in this process, as LMDB requires
        of ``set_mapsize``; the gate costs two uncontended lock operations.
        A map grown by another process (a node, seen from a CLI) is adopted
        here on the next read."""
        return _ReadTxn(self)

    @contextlib.contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """One durable write transaction. A full map raises StoreFull: the
        caller redoes its whole batch after ``grow()``, since a half-written
        transaction is aborted.

        A write goes through the same gate as reads: besides the engine's
        single writer, the bridge writes tokens and idempotency entries and
        the federation its peer table, on threads of their own, and LMDB
        forbids a resize while any of those is open."""
        gate = self._gate
        gate.enter()
        try:
            txn = self.env.begin(write=True)
            try:
                yield txn
            except BaseException as exc:
                txn.abort()
                self.codes.ended(committed=False)
                if isinstance(exc, lmdb.MapFullError):
                    raise StoreFull(str(exc)) from None
                if _disk_trouble(exc):
                    raise self._storage_failed(exc) from None
                if isinstance(exc, _PAGE_DAMAGE):
                    raise self.damaged(exc) from None
                raise
            else:
                try:
                    txn.commit()
                except lmdb.Error as exc:
                    self.codes.ended(committed=False)
                    if isinstance(exc, lmdb.MapFullError):
                        raise StoreFull(str(exc)) from None
                    if _disk_trouble(exc):
                        raise self._storage_failed(exc) from None
                    raise
                self.codes.ended(committed=True)
        finally:
            gate.leave()

    def transact(self, work: Callable[[lmdb.Transaction], T], *, aborted: Callable[[], None] | None = None) -> T:
        """``work(txn)`` in one durable write transaction, its result. On a
        full map the transaction is aborted, the map grows and ``work`` runs
        again on a fresh one, so ``work`` must keep its effects to the
        transaction it is given (state it computes is returned, not left in
        the caller's variables), or undo the rest in ``aborted``. Every
        writer but the engine's batches (which redo a whole batch
        themselves) writes through here: a token, a peer table, a blob entry
        must not fail for want of map the disk has room for."""
        while True:
            try:
                with self.write() as txn:
                    return work(txn)
            except StoreFull:
                if aborted is not None:
                    aborted()
                self.maps_grown += 1
                self.grow()

    def damaged(self, exc: BaseException) -> StoreDamaged:
        """A page of the open store failed LMDB's checks (a failing disk, a
        file written over): what a read or write met, with the ways back."""
        return StoreDamaged(
            f"the store in {self.path} is damaged: {exc}. Restore it from a backup, or move it aside and start "
            "afresh: the node refills from its federation's peers (a node whose key has signed changes then "
            "opens recovering: docs/trust.md, \"A lost store\")",
            details={"path": str(self.path), "cause": str(exc)})

    def _storage_failed(self, exc: lmdb.Error) -> StorageFailed:
        if isinstance(exc, lmdb.PanicError):
            return StorageFailed.at(self.path, exc, fix="LMDB stopped this store after a failed write: restart "
                                                        "the node once the disk is fixed")
        return StorageFailed.at(self.path, exc)

    def grow(self) -> int:
        """Double the map (called after MDB_MAP_FULL, with the write
        transaction aborted). LMDB requires that no transaction be open in
        this process meanwhile: the caller holds none, and the gate holds
        new readers and writers back and waits for open ones to finish. A reader
        that never finishes (an abandoned iterator) makes this raise
        Unavailable after GROW_WAIT_S rather than hang the writer; the
        batch is answered with it and the next one tries again."""
        with self._gate.exclusive(GROW_WAIT_S):
            new_size = self.env.info()["map_size"] * 2
            self.env.set_mapsize(new_size)
            return new_size

    def _adopt_resized_map(self) -> None:
        with self._gate.exclusive(GROW_WAIT_S):
            self.env.set_mapsize(0)  # 0: take the size another process gave the map

    # ---- small typed helpers ----

    def get_meta(self, txn: lmdb.Transaction, name: str, default: Any = None) -> Any:
        raw = txn.get(name.encode(), db=self.db["meta"])
        return default if raw is None else unpack(raw)

    def put_meta(self, txn: lmdb.Transaction, name: str, value: Any) -> None:
        txn.put(name.encode(), pack(value), db=self.db["meta"])

    def delete_meta(self, txn: lmdb.Transaction, name: str) -> None:
        txn.delete(name.encode(), db=self.db["meta"])

    def stats(self) -> dict[str, Any]:
        info = self.env.info()
        out: dict[str, Any] = {"map_size": info["map_size"], "last_page": info["last_pgno"]}
        with self.read() as txn:
            for name, handle in self.db.items():
                out[f"entries.{name}"] = txn.stat(handle)["entries"]
        out["bytes_used"] = (info["last_pgno"] + 1) * self.env.stat()["psize"]
        return out

    def iter_prefix(self, txn: lmdb.Transaction, db: str, prefix: bytes, *, start: bytes | None = None,
                    reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Items whose key starts with ``prefix``, from ``start`` (inclusive) on."""
        cursor = txn.cursor(db=self.db[db])
        if reverse:
            upper = prefix + b"\xff" * 8
            if not cursor.set_range(upper):
                if not cursor.last():
                    return
            while True:
                k = cursor.key()
                if k.startswith(prefix) and (start is None or k <= start):
                    yield k, cursor.value()
                elif k < prefix:
                    return
                if not cursor.prev():
                    return
        else:
            if not cursor.set_range(start if start is not None and start > prefix else prefix):
                return
            for k, v in cursor:
                if not k.startswith(prefix):
                    return
                yield k, v
