"""`rgrid store migrate`: upgrade a store to the current format in place.

Format 3 -> 4: chain keys and owner index keys name their DID by a 4-byte
code (storage/codes.py), rewritten in transactions of ``CHUNK`` keys, in
key order, each recording the last old key it rewrote, so a stopped run
resumes there. A rewritten key always sorts before every old key of its
registry (chains) or of the owner index (a code's first byte is below the
'd' of "did:"), so a scan forward from the cursor meets only keys still to
rewrite. Values are not rewritten: format 4 reads the plain values format 3
wrote beside the compressed ones it writes (storage/compression.py);
`rgrid store compact` packs the old ones.

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
from functools import partial
from pathlib import Path

from registrygrid.errors import IntegrityError, NotFound
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
# While format 3 -> 4 runs: [phase, the last old key rewritten]; phase 0
# rewrites chain keys, phase 1 owner index keys.
_REKEY_CURSOR = "migrate.rekey"
_CHAINS, _OWNERS = 0, 1
_OLD_DID = b"did:"


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
    STORE_FORMAT is left as it is (``changes == 0``). A store that is not
    there is refused (NotFound): opening it made an empty one, which the
    home then took for its store."""
    if not (Path(path) / "data.mdb").is_file():
        raise NotFound(f"no store to migrate at {path} (no data.mdb)")
    store = Store(path, formats=(STORE_FORMAT, *MIGRATES_FROM))
    try:
        found = store.format
        if found == STORE_FORMAT:
            return MigrationReport(found, STORE_FORMAT, 0, False)
        if found not in MIGRATES_FROM:
            raise StoreFormatError(f"no migration from store format {found}")
        with store.read() as txn:
            total = txn.stat(store.db["changes"])["entries"] if found == 2 else 0
            # Format 3 -> 4 rewrites every chain link and one owner key per record.
            total += txn.stat(store.db["chains"])["entries"] + txn.stat(store.db["records"])["entries"]
            cursor = store.get_meta(txn, _CURSOR)
            rekey = store.get_meta(txn, _REKEY_CURSOR)
        resumed = cursor is not None or rekey is not None
        done = converted = 0
        while found == 2:
            batch = store.transact(partial(_adopt_chunk, store, cursor, chunk))
            cursor = batch.last
            done += batch.seen
            converted += batch.converted
            if progress is not None:
                progress(min(done, total), total)
            if batch.last is None:
                break
        rekeyed = 0
        phase, after = rekey if rekey is not None else (_CHAINS, None)
        while True:
            count, finished, (phase, after) = store.transact(partial(_rekey_chunk, store, phase, after, chunk))
            rekeyed += count
            done += count
            if progress is not None:
                progress(min(done, total), total)
            if finished:
                break
        if progress is not None:
            progress(total, total)
        return MigrationReport(found, STORE_FORMAT, converted, resumed, rekeyed)
    except IntegrityError:
        raise
    finally:
        store.close()


# Each chunk is one transaction, which Store.transact redoes after growing a
# full map: the cursor moves on only once a chunk committed.

def _adopt_chunk(store: Store, cursor: bytes | None, chunk: int, txn: Txn) -> changes.AdoptedBatch:
    """Convert the next ``chunk`` legacy changes after ``cursor``; the batch."""
    batch = changes.adopt_legacy(store, txn, after=cursor, limit=chunk)
    if batch.last is not None:
        store.put_meta(txn, _CURSOR, batch.last)
    else:  # every change converted: the store is format 3 from this commit on
        store.put_meta(txn, "format", 3)
        txn.delete(_CURSOR.encode(), db=store.db["meta"])
    return batch


def _rekey_chunk(store: Store, phase: int, after: bytes | None, chunk: int,
                 txn: Txn) -> tuple[int, bool, tuple[int, bytes | None]]:
    """Rewrite the next ``chunk`` keys of ``phase``: how many, whether every
    key is done, and where the next chunk starts."""
    count, last = _code_names_in_keys(store, txn, phase, after, chunk)
    finished = count < chunk and phase == _OWNERS
    if count < chunk and phase == _CHAINS:  # every chain key done: the owner keys next
        phase, after = _OWNERS, None
    else:
        after = last
    if finished:  # every key rewritten: the store is format 4 from this commit on
        store.put_meta(txn, "format", STORE_FORMAT)
        txn.delete(_REKEY_CURSOR.encode(), db=store.db["meta"])
    else:
        store.put_meta(txn, _REKEY_CURSOR, [phase, after])
    return count, finished, (phase, after)


def _code_names_in_keys(store: Store, txn: Txn, phase: int, after: bytes | None,
                        limit: int) -> tuple[int, bytes | None]:
    """Format 3 -> 4, one chunk: up to ``limit`` keys after ``after`` of the
    phase's tree rewritten; (how many, the last old key rewritten).

    Chain keys ``registry \\0 author \\0 u64(seq)`` become ``registry \\0
    code(author) u64(seq)``, owner index keys ``'o' owner \\0 registry \\0
    record`` become ``'o' code(owner) registry \\0 record`` (storage/codes.py).
    """
    db = store.db["chains"] if phase == _CHAINS else store.db["indexes"]
    start = after if after is not None else (b"" if phase == _CHAINS else b"o")
    old: list[tuple[bytes, bytes]] = []
    cursor = txn.cursor(db=db)
    if cursor.set_range(start):
        for k, value in cursor:
            if k == after:
                continue
            if phase == _OWNERS and not k.startswith(b"o"):
                break
            old.append((bytes(k), bytes(value)))
            if len(old) == limit:
                break
    for k, value in old:
        if phase == _CHAINS:
            registry, author = k[:-9].split(SEP, 1)
            fresh = registry + SEP + _code(store, txn, author) + k[-8:]
        else:
            owner, rest = k[1:].split(SEP, 1)
            fresh = b"o" + _code(store, txn, owner) + rest
        txn.delete(k, db=db)
        txn.put(fresh, value, db=db)
    return len(old), (old[-1][0] if old else after)


def _code(store: Store, txn: Txn, did: bytes) -> bytes:
    if not did.startswith(_OLD_DID):
        raise IntegrityError(f"a format-3 key names {did[:80]!r}, not a DID", details={"where": "chains"})
    code = store.codes.assign(txn, did.decode())
    # Rewritten keys must sort before the old ones still to rewrite (see
    # the module's docstring); codes this high would take 1.6 billion DIDs.
    if code >= _OLD_DID:
        raise IntegrityError("too many DIDs to migrate this store in chunks")
    return code
