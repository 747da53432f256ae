"""`rgrid store migrate`: upgrade a store to the current format in place.

Format 3 -> 4 rewrites nothing (format 4 only adds compressed values beside
plain ones: storage/compression.py); opening a format-3 store for writing
upgrades it, and so does this command.

Format 2 -> 3 changes one thing on disk: how a change is stored. A format-2
store holds wire-format-1 changes (``[body, signature]``, one signature per
change, the ID the hash of the whole wire). Nobody but their authors could
re-sign them in format 2, so they stay exactly as signed: each is stored as
a *legacy* change (``storage/changes.py``), keeps its ID, and still verifies
and replicates (``protocol/envelope.py`` reads wire format 1). Chains,
documents, records, feed and audit are unchanged: format 2 built a document
for every record, which format 3 reads as it is.

The upgrade runs in transactions of ``CHUNK`` changes and records how far it
got, so a run that is stopped (Ctrl-C, kill -9, power) resumes where it
stopped; the format is set to 3 only when every change is converted, so a
half-migrated store is never opened as format 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from registrygrid.errors import IntegrityError
from registrygrid.storage import changes
from registrygrid.storage.store import (
    MIGRATES_FROM,
    STORE_FORMAT,
    Store,
    StoreFormatError,
)

CHUNK = 10_000
_CURSOR = "migrate.cursor"  # the last change ID converted, while a migration runs


@dataclass(frozen=True)
class MigrationReport:
    from_format: int
    to_format: int
    changes: int  # changes converted by this run
    resumed: bool  # an earlier run had converted part of the store

    def to_dict(self) -> dict[str, int | bool]:
        return {"from_format": self.from_format, "to_format": self.to_format, "changes": self.changes,
                "resumed": self.resumed}


def migrate(path: str | Path, *, progress: Callable[[int, int], None] | None = None,
            chunk: int = CHUNK) -> MigrationReport:
    """Upgrade the store in ``path`` to STORE_FORMAT. ``progress(done,
    total)`` is called after each transaction. A store already at
    STORE_FORMAT is left as it is (``changes == 0``)."""
    store = Store(path, formats=(STORE_FORMAT, *MIGRATES_FROM))
    try:
        found = store.found_format
        if store.format == STORE_FORMAT:  # current, or adopted as it stands (format 3: see ADOPTS)
            return MigrationReport(found, STORE_FORMAT, 0, False)
        if found != 2:
            raise StoreFormatError(f"no migration from store format {found}")
        with store.read() as txn:
            total = txn.stat(store.db["changes"])["entries"]
            cursor = store.get_meta(txn, _CURSOR)
        resumed = cursor is not None
        done = converted = 0
        while True:
            with store.write() as txn:
                batch = changes.adopt_legacy(store, txn, after=cursor, limit=chunk)
                if batch.last is not None:
                    cursor = batch.last
                    store.put_meta(txn, _CURSOR, cursor)
                else:  # every change converted: the store is current from this commit on
                    store.put_meta(txn, "format", STORE_FORMAT)
                    txn.delete(_CURSOR.encode(), db=store.db["meta"])
            done += batch.seen
            converted += batch.converted
            if progress is not None:
                progress(min(done, total), total)
            if batch.last is None:
                break
        return MigrationReport(found, STORE_FORMAT, converted, resumed)
    except IntegrityError:
        raise
    finally:
        store.close()
