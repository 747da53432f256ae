"""`rgrid store migrate`: upgrade a store to the current format in place.

Format 3 -> 4: chain keys and owner index keys name their DID by a 4-byte
code (storage/codes.py), rewritten in one transaction (all of it or none,
so a stopped run starts over; it holds the keys of every chain link in
memory, ~150 bytes each). Values are not rewritten: format 4 reads the
plain values format 3 wrote beside the compressed ones it writes
(storage/compression.py); `rgrid store compact` packs the old ones.

Format 2 -> 3 changes how a change is stored. A format-2 store holds
wire-format-1 changes (``[body, signature]``, one signature per change, the
ID the hash of the whole wire). Nobody but their authors could re-sign them
in format 2, so they stay exactly as signed: each is stored as a *legacy*
change (``storage/changes.py``), keeps its ID, and still verifies and
replicates (``protocol/envelope.py`` reads wire format 1). Documents,
records, feed and audit are unchanged: format 2 built a document for every
record, which format 3 reads as it is. That step runs in transactions of
``CHUNK`` changes and records how far it got, so a run that is stopped
(Ctrl-C, kill -9, power) resumes where it stopped; the format is set to 3
only when every change is converted, and to 4 only by the last step, so a
half-migrated store is never opened as current.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from registrygrid.errors import IntegrityError
from registrygrid.storage import changes
from registrygrid.storage.store import (
    MIGRATES_FROM,
    SEP,
    STORE_FORMAT,
    Store,
    StoreFormatError,
    Txn,
)

CHUNK = 10_000
_CURSOR = "migrate.cursor"  # the last change ID converted, while a migration runs


@dataclass(frozen=True)
class MigrationReport:
    from_format: int
    to_format: int
    changes: int  # changes converted by this run
    resumed: bool  # an earlier run had converted part of the store
    rekeyed: int = 0  # chain links and owner index entries whose key now codes its DID

    def to_dict(self) -> dict[str, int | bool]:
        return {"from_format": self.from_format, "to_format": self.to_format, "changes": self.changes,
                "resumed": self.resumed, "rekeyed": self.rekeyed}


def migrate(path: str | Path, *, progress: Callable[[int, int], None] | None = None,
            chunk: int = CHUNK) -> MigrationReport:
    """Upgrade the store in ``path`` to STORE_FORMAT. ``progress(done,
    total)`` is called after each transaction. A store already at
    STORE_FORMAT is left as it is (``changes == 0``)."""
    store = Store(path, formats=(STORE_FORMAT, *MIGRATES_FROM))
    try:
        found = store.format
        if found == STORE_FORMAT:
            return MigrationReport(found, STORE_FORMAT, 0, False)
        if found not in MIGRATES_FROM:
            raise StoreFormatError(f"no migration from store format {found}")
        with store.read() as txn:
            total = txn.stat(store.db["changes"])["entries"] if found == 2 else 0
            total += txn.stat(store.db["chains"])["entries"]
            cursor = store.get_meta(txn, _CURSOR)
        resumed = cursor is not None
        done = converted = 0
        while found == 2:
            with store.write() as txn:
                batch = changes.adopt_legacy(store, txn, after=cursor, limit=chunk)
                if batch.last is not None:
                    cursor = batch.last
                    store.put_meta(txn, _CURSOR, cursor)
                else:  # every change converted: the store is format 3 from this commit on
                    store.put_meta(txn, "format", 3)
                    txn.delete(_CURSOR.encode(), db=store.db["meta"])
            done += batch.seen
            converted += batch.converted
            if progress is not None:
                progress(min(done, total), total)
            if batch.last is None:
                break
        with store.write() as txn:  # format 3 -> 4 in one transaction: all of it, or none
            rekeyed = _code_names_in_keys(store, txn)
            store.put_meta(txn, "format", STORE_FORMAT)
        if progress is not None:
            progress(total, total)
        return MigrationReport(found, STORE_FORMAT, converted, resumed, rekeyed)
    except IntegrityError:
        raise
    finally:
        store.close()


def _code_names_in_keys(store: Store, txn: Txn) -> int:
    """Format 3 -> 4: chain keys ``registry \\0 author \\0 u64(seq)`` become
    ``registry \\0 code(author) u64(seq)`` and owner index keys ``'o' owner
    \\0 registry \\0 record`` become ``'o' code(owner) registry \\0 record``
    (storage/codes.py). Every chain key is rewritten, in key order, so the
    new tree is written densely; the number of keys rewritten."""
    chains_db, indexes_db = store.db["chains"], store.db["indexes"]
    links = []
    for k, cid in txn.cursor(db=chains_db):
        registry, author = k[:-9].split(SEP, 1)
        links.append((registry + SEP + store.codes.assign(txn, author.decode()) + k[-8:], cid))
    links.sort()
    txn.drop(chains_db, delete=False)
    for k, cid in links:
        txn.put(k, cid, db=chains_db, append=True)
    owned = [k for k, _ in store.iter_prefix(txn, "indexes", b"o")]
    for k in owned:
        owner, rest = k[1:].split(SEP, 1)
        txn.delete(k, db=indexes_db)
        txn.put(b"o" + store.codes.assign(txn, owner.decode()) + rest, b"", db=indexes_db)
    return len(links) + len(owned)
