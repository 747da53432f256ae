"""`rgrid store compact`: rewrite the store without its free pages.

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
from pathlib import Path

from registrygrid.storage.store import Store

_COPY = "compact.tmp"
_DATA = "data.mdb"


@dataclass(frozen=True)
class CompactReport:
    bytes_before: int
    bytes_after: int

    def to_dict(self) -> dict[str, int]:
        return {"bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "bytes_freed": self.bytes_before - self.bytes_after}


def compact(store_path: Path) -> CompactReport:
    """Compact the store at ``store_path`` in place (its node stopped)."""
    copy_dir = store_path.parent / f"{store_path.name}.{_COPY}"
    shutil.rmtree(copy_dir, ignore_errors=True)  # a copy an interrupted run left
    copy_dir.mkdir()
    before = (store_path / _DATA).stat().st_size
    store = Store(store_path)
    try:
        store.copy_compacted(copy_dir)
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
    return CompactReport(before, (store_path / _DATA).stat().st_size)
