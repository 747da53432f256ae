"""What the node knows of the blobs it stores and of uploads in progress.

The bytes live in an object store (blobs/objects.py); LMDB keeps the index
beside the node's records, so the quota, the retention rules and the
sessions' progress survive a restart and are written durably, like every
other acknowledged state.

Layout (see ``storage/store.py``):
``blobs``: blob CID -> ``BlobEntry``; meta ``blob_bytes``: the sum of sizes.
``uploads``: session id -> ``UploadSession``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from registrygrid.storage.store import Store, Txn

_BLOB_BYTES = "blob_bytes"


class BlobEntry(msgspec.Struct, frozen=True, kw_only=True):
    size: int
    sha256: str
    md5: str
    content_type: str
    created_ms: int
    # Retention: no deletion before ``retain_until_ms``; a legal hold (by
    # name, with who set it and why) blocks deletion until released.
    retain_until_ms: int = 0
    holds: dict[str, str] = {}
    # What the bytes say of themselves (blobs/metadata.py's normalized
    # fields), and the verdicts of the checks that let them in (blobs/scanners.py).
    meta: dict[str, Any] = {}
    checks: str = ""
    crc32: int = -1  # -1: not known


class Part(msgspec.Struct, frozen=True, array_like=True):
    size: int
    sha256: str
    md5: str


class UploadSession(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    owner: str  # the API token that created it: only it (or an admin) may use it
    size: int
    part_size: int
    content_type: str
    name: str = ""
    sha256: str | None = None  # declared by the client, checked at finalize
    md5: str | None = None
    created_ms: int
    expires_ms: int  # renewed by every part and heartbeat (a TTL key)
    state: str = "open"  # open | complete | cancelled
    parts: dict[int, Part] = {}
    cid: str | None = None  # once complete
    deduplicated: bool = False  # complete without bytes: the blob was stored already

    @property
    def part_count(self) -> int:
        return max(1, -(-self.size // self.part_size))

    def part_length(self, number: int) -> int:
        """Bytes part ``number`` (1-based) must have: all full but the last."""
        if number < self.part_count:
            return self.part_size
        return self.size - (self.part_count - 1) * self.part_size

    @property
    def received(self) -> int:
        return sum(p.size for p in self.parts.values())


_blob_encoder = msgspec.msgpack.Encoder()
_blob_decoder = msgspec.msgpack.Decoder(BlobEntry)
_session_decoder = msgspec.msgpack.Decoder(UploadSession)


# ---- blobs

def get_blob(store: Store, cid: bytes) -> BlobEntry | None:
    with store.read() as txn:
        raw = txn.get(cid, db=store.db["blobs"])
    return None if raw is None else _blob_decoder.decode(raw)


def put_blob(store: Store, cid: bytes, entry: BlobEntry) -> bool:
    """Record a stored blob; False if it was known already (the total is unchanged)."""
    db = store.db["blobs"]

    def record(txn: Txn) -> bool:
        if txn.get(cid, db=db) is not None:
            return False
        txn.put(cid, _blob_encoder.encode(entry), db=db)
        store.put_meta(txn, _BLOB_BYTES, (store.get_meta(txn, _BLOB_BYTES, 0) or 0) + entry.size)
        return True

    return store.transact(record)


def replace_blob(store: Store, cid: bytes, entry: BlobEntry) -> None:
    """Change a known blob's retention or holds (its size never changes)."""
    store.transact(lambda txn: txn.put(cid, _blob_encoder.encode(entry), db=store.db["blobs"]))


def remove_blob(store: Store, cid: bytes) -> BlobEntry | None:
    db = store.db["blobs"]

    def remove(txn: Txn) -> BlobEntry | None:
        raw = txn.get(cid, db=db)
        if raw is None:
            return None
        entry = _blob_decoder.decode(raw)
        txn.delete(cid, db=db)
        store.put_meta(txn, _BLOB_BYTES, max(0, (store.get_meta(txn, _BLOB_BYTES, 0) or 0) - entry.size))
        return entry

    return store.transact(remove)


def blob_bytes(store: Store) -> int:
    with store.read() as txn:
        return int(store.get_meta(txn, _BLOB_BYTES, 0) or 0)


def iter_blobs(store: Store, *, after: bytes | None = None, limit: int = 1000) -> list[tuple[bytes, BlobEntry]]:
    out: list[tuple[bytes, BlobEntry]] = []
    with store.read() as txn:
        cursor = txn.cursor(db=store.db["blobs"])
        found = cursor.set_range(after + b"\x00") if after is not None else cursor.first()
        while found and len(out) < limit:
            out.append((bytes(cursor.key()), _blob_decoder.decode(cursor.value())))
            found = cursor.next()
    return out


# ---- upload sessions

def get_session(store: Store, session_id: str) -> UploadSession | None:
    with store.read() as txn:
        raw = txn.get(session_id.encode(), db=store.db["uploads"])
    return None if raw is None else _session_decoder.decode(raw)


def update_session(store: Store, session_id: str,
                   change: Callable[[UploadSession | None], UploadSession | None]) -> UploadSession | None:
    """Read, change and write one session in one write transaction: parts
    uploaded in parallel each add theirs without losing another's. ``change``
    returns the new session, or None to delete it; it may raise, which
    leaves the session as it was. (On a full map it is called again with
    the session read anew: it must only compute.)"""
    db = store.db["uploads"]

    def write(txn: Txn) -> UploadSession | None:
        raw = txn.get(session_id.encode(), db=db)
        new = change(None if raw is None else _session_decoder.decode(raw))
        if new is None:
            txn.delete(session_id.encode(), db=db)
        else:
            txn.put(session_id.encode(), _blob_encoder.encode(new), db=db)
        return new

    return store.transact(write)


def put_session(store: Store, session: UploadSession) -> None:
    store.transact(lambda txn: txn.put(session.id.encode(), _blob_encoder.encode(session), db=store.db["uploads"]))


def delete_session(store: Store, session_id: str) -> None:
    store.transact(lambda txn: txn.delete(session_id.encode(), db=store.db["uploads"]))


def iter_sessions(store: Store) -> Iterator[UploadSession]:
    with store.read() as txn:
        items = [bytes(v) for _, v in txn.cursor(db=store.db["uploads"])]
    for raw in items:
        yield _session_decoder.decode(raw)
