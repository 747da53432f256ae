"""`rgrid store compact`: compress what is stored plain, then rewrite the
store without its free pages.

Values written before their sub-database had a compression dictionary (a
store upgraded from format 3, or a store's first few dozen values) are
stored plain (storage/compression.py); compaction first packs them, in
write transactions of ``CHUNK`` values, so a stopped run keeps what it did.

LMDB never overwrites a page a reader may still see: a page a transaction
frees goes on its free list, with its old bytes, until a later write reuses
it. So a delete (and an erasure: docs/erasure.md) removes a value from the
B-tree at once, but its bytes may stay in data.mdb for a while. A compacting
copy (``mdb_env_copy2`` with ``MDB_CP_COMPACT``) writes only the pages in
use, renumbered, so freed bytes do not reach the copy; the copy then
replaces data.mdb in one rename.

The node must be stopped (the caller holds the home's lock): the rename
swaps the file under any open environment, so nothing may have it open.
A crash before the rename leaves the old store and a stray copy (removed
at the next run); after it, the compacted store. Needs free disk space for
the copy (at most the store's size).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from registrygrid.errors import NotFound
from registrygrid.storage.compression import COMPRESSED, MARK
from registrygrid.storage.store import Store, Txn

CHUNK = 10_000
_SMALLEST = 16  # shorter values never shrink (and an erased change's marker must stay as it is)
_COPY = "compact.tmp"
_DATA = "data.mdb"


@dataclass(frozen=True)
class CompactReport:
    bytes_before: int
    bytes_after: int
    repacked: int  # values that were stored plain and are now compressed

    def to_dict(self) -> dict[str, int]:
        return {"bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "bytes_freed": self.bytes_before - self.bytes_after, "repacked": self.repacked}


def compact(store_path: Path) -> CompactReport:
    """Compact the store at ``store_path`` in place (its node stopped)."""
    copy_dir = store_path.parent / f"{store_path.name}.{_COPY}"
    shutil.rmtree(copy_dir, ignore_errors=True)  # a copy an interrupted run left
    if not (store_path / _DATA).is_file():  # checked first: a refusal leaves the home as it was
        raise NotFound(f"no store to compact at {store_path} (no {_DATA})")
    before = (store_path / _DATA).stat().st_size
    copy_dir.mkdir()
    store = Store(store_path)
    try:
        repacked = repack(store)
        store.copy_compacted(copy_dir)
    except BaseException:
        shutil.rmtree(copy_dir, ignore_errors=True)  # the store is as it was; a half copy is no use
        raise
    finally:
        store.close()
    fresh = copy_dir / _DATA
    with open(fresh, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(fresh, store_path / _DATA)
    directory = os.open(store_path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    shutil.rmtree(copy_dir, ignore_errors=True)
    return CompactReport(before, (store_path / _DATA).stat().st_size, repacked)


def repack(store: Store, *, chunk: int = CHUNK) -> int:
    """Compress the values of ``store`` that are stored plain, where that
    makes them smaller; the number rewritten."""
    repacked = 0
    for db in COMPRESSED:
        after: bytes | None = None
        more = True
        while more:
            # One transaction a chunk, redone whole after the map grows (Store.transact).
            count, after, more = store.transact(partial(_repack_chunk, store, db, after, chunk))
            repacked += count
    return repacked


def _repack_chunk(store: Store, db: str, after: bytes | None, chunk: int,
                  txn: Txn) -> tuple[int, bytes | None, bool]:
    """Compress up to ``chunk`` values of ``db`` after key ``after``: how
    many were rewritten, the last key looked at, and whether any follow."""
    cursor = txn.cursor(db=store.db[db])
    more = cursor.set_range(after + b"\x00") if after is not None else cursor.first()
    updates = []
    for _ in range(chunk):
        if not more:
            break
        k, value = cursor.item()
        if len(value) >= _SMALLEST and value[0] != MARK:
            packed = store.values.pack(txn, db, value)
            if packed != value:
                updates.append((k, packed))
        after = k
        more = cursor.next()
    for k, packed in updates:
        txn.put(k, packed, db=store.db[db])
    return len(updates), after, more
