"""Signed changes and the batch signatures that cover them.

    changes  change id -> msgpack [body, batch key | signature, index, path],
             compressed (storage/compression.py)
    roots    batch key = Merkle root + u64 size -> msgpack [author, size, signature, leaves]

A batch's signature is stored once, under its root. A batch this node
signed keeps its leaves (the change IDs, in order: 36 bytes a change), so a
change's inclusion path is recomputed when its wire is needed, not stored
(``path`` is empty). A change received from a peer keeps the path it came
with, since only part of its batch may ever arrive here (``leaves`` empty).
Either way ``wire`` gives back exactly the bytes a peer can verify alone.
A batch is keyed by its root *and* size, as the author signs both: one root
signed under two sizes is two batches, each with its own signature. A batch
of one (a lone write) keeps its signature in its change entry instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import lmdb
import msgspec

from registrygrid.errors import IntegrityError
from registrygrid.protocol.envelope import (
    CID_BYTES,
    ChangeBody,
    Draft,
    Envelope,
    SignedRoot,
    cid_to_str,
    decode_body,
    open_envelope,
    wire_of,
)
from registrygrid.protocol.merkle import MerkleTree
from registrygrid.storage.store import Store


class _StoredChange(msgspec.Struct, array_like=True, frozen=True):
    body: bytes  # the body; for a legacy change (wire format 1), its whole wire
    # batch_key(root, size) (40 bytes); a batch of one keeps its signature
    # here (64 bytes): a lone write then touches no "roots" tree, whose
    # root-to-leaf path would cost it a few scattered pages of fsync; b""
    # for a legacy change.
    batch: bytes
    index: int
    path: list[bytes]


def batch_key(root: bytes, size: int) -> bytes:
    return root + size.to_bytes(8, "big")


class _StoredRoot(msgspec.Struct, array_like=True, frozen=True):
    author: str
    size: int
    signature: bytes
    leaves: bytes  # the batch's change IDs concatenated, or b"" when not all are known


_encode = msgspec.msgpack.Encoder().encode
_SIGNATURE_BYTES = 64
_ERASED = _encode(_StoredChange(b"", b"", 0, []))
_change_decoder = msgspec.msgpack.Decoder(_StoredChange)
_root_decoder = msgspec.msgpack.Decoder(_StoredRoot)


def put_batch(store: Store, txn: lmdb.Transaction, drafts: Sequence[Draft], signed: SignedRoot) -> None:
    """A batch this node signed (``drafts[i]`` is leaf i): its signature and
    leaves once, each change without its path."""
    changes = store.db["changes"]
    pack = store.values.pack
    if signed.size == 1:
        txn.put(drafts[0].cid, pack(txn, "changes", _encode(_StoredChange(drafts[0].body_bytes, signed.signature,
                                                                           0, []))), db=changes)
        return
    batch = batch_key(signed.root, signed.size)
    txn.put(batch, _encode(_StoredRoot(signed.author, signed.size, signed.signature,
                                       b"".join(d.cid for d in drafts))), db=store.db["roots"])
    for index, d in enumerate(drafts):
        txn.put(d.cid, pack(txn, "changes", _encode(_StoredChange(d.body_bytes, batch, index, []))), db=changes)


def put_received(store: Store, txn: lmdb.Transaction, env: Envelope) -> None:
    """A change from a peer, with the path it came with."""
    if env.legacy:  # signed alone, in format 1: kept whole
        _put(store, txn, env.cid, _StoredChange(env.wire, b"", 0, []))
        return
    if env.size == 1:
        _put(store, txn, env.cid, _StoredChange(env.body_bytes, env.signature, 0, []))
        return
    batch = batch_key(env.root, env.size)
    roots = store.db["roots"]
    if txn.get(batch, db=roots) is None:
        txn.put(batch, _encode(_StoredRoot(env.body.author, env.size, env.signature, b"")), db=roots)
    _put(store, txn, env.cid, _StoredChange(env.body_bytes, batch, env.index, env.path))


def _put(store: Store, txn: lmdb.Transaction, cid: bytes, stored: _StoredChange) -> None:
    txn.put(cid, store.values.pack(txn, "changes", _encode(stored)), db=store.db["changes"])


def _stored(store: Store, txn: lmdb.Transaction, cid: bytes) -> _StoredChange | None:
    raw = txn.get(cid, db=store.db["changes"])
    return None if raw is None else _change_decoder.decode(store.values.unpack(txn, "changes", raw, cid))


def skeleton_value(plain: bytes) -> bytes:
    """A stored change's value with its content taken out: its body keeps
    registry, op, kind, schema and author, and a snapshot's payload its owner,
    creator and field names, but no record ID, field value, tag, link, hash
    or signature. That is what a compression dictionary may learn from it
    (storage/compression.py): dictionaries are never erased, so they must not
    hold what an erasure removes."""
    stored = _change_decoder.decode(plain)
    if not stored.batch or not stored.body:  # a legacy wire, or erased
        return b""
    body = decode_body(stored.body)
    payload = b""
    if body.is_snapshot:
        snapshot = msgspec.msgpack.decode(body.payload)
        snapshot.update(fields=dict.fromkeys(snapshot.get("fields") or {}), tags=[], links=[])
        payload = _encode_sorted(snapshot)
    bare = ChangeBody(body.v, body.registry, "", body.op, body.kind, body.schema, body.author, 0, b"", (0, 0), [],
                      b"", payload)
    return _encode(_StoredChange(_encode(bare), b"", 0, []))


def _encode_sorted(value: object) -> bytes:
    return msgspec.msgpack.encode(value, order="sorted")


def put_erased(store: Store, txn: lmdb.Transaction, cid: bytes) -> None:
    """Keep change ``cid`` without its bytes (an erasure): the body goes,
    the entry stays."""
    txn.put(cid, _ERASED, db=store.db["changes"])


def is_erased(store: Store, txn: lmdb.Transaction, cid: bytes) -> bool:
    return txn.get(cid, db=store.db["changes"]) == _ERASED


def has(store: Store, txn: lmdb.Transaction, cid: bytes) -> bool:
    return txn.get(cid, db=store.db["changes"]) is not None


def body(store: Store, txn: lmdb.Transaction, cid: bytes) -> ChangeBody | None:
    stored = _stored(store, txn, cid)
    if stored is None:
        return None
    if not stored.body:  # erased
        return None
    return decode_body(stored.body) if stored.batch else open_envelope(stored.body, verify=False).body


def wire(store: Store, txn: lmdb.Transaction, cid: bytes) -> bytes | None:
    """The change's wire bytes: body, inclusion path and its batch's signature."""
    stored = _stored(store, txn, cid)
    if stored is None:
        return None
    if not stored.batch:
        return stored.body or None  # a legacy wire, or b"" when erased
    if len(stored.batch) == _SIGNATURE_BYTES:  # a batch of one
        return wire_of(stored.body, 0, 1, [], stored.batch)
    signed = txn.get(stored.batch, db=store.db["roots"])
    if signed is None:
        raise IntegrityError(f"the batch signature of change {cid_to_str(cid)} is not stored")
    batch = _root_decoder.decode(signed)
    path = stored.path
    if not path and batch.size > 1:
        path = _tree(stored.batch, batch.leaves).path(stored.index)
    return wire_of(stored.body, stored.index, batch.size, path, batch.signature)


def envelope(store: Store, txn: lmdb.Transaction, cid: bytes) -> Envelope | None:
    """The stored change as an Envelope (checked when stored, not again)."""
    raw = wire(store, txn, cid)
    return None if raw is None else open_envelope(raw, verify=False)


def iter_ids(store: Store, txn: lmdb.Transaction) -> Iterator[bytes]:
    """Every stored change ID, in key order."""
    yield from txn.cursor(db=store.db["changes"]).iternext(keys=True, values=False)


# Trees of recently served local batches: sync sends a chain in order, so
# consecutive changes mostly share a batch, and its tree is built once.
_TREES_MAX = 64
_trees: dict[bytes, MerkleTree] = {}


def _tree(batch: bytes, leaves: bytes) -> MerkleTree:
    tree = _trees.get(batch)
    if tree is None:
        tree = MerkleTree([leaves[i:i + CID_BYTES] for i in range(0, len(leaves), CID_BYTES)])
        if len(_trees) >= _TREES_MAX:
            _trees.clear()
        _trees[batch] = tree
    return tree


@dataclass(frozen=True)
class AdoptedBatch:
    seen: int
    converted: int
    last: bytes | None  # the last ID looked at; None when there was nothing left


def adopt_legacy(store: Store, txn: lmdb.Transaction, *, after: bytes | None, limit: int) -> AdoptedBatch:
    """Store format 2 -> 3 (storage/migrate.py): the next ``limit`` changes
    after ID ``after`` that are still bare format-1 wires are stored as
    legacy changes. Ones already converted (a resumed run) are skipped."""
    db = store.db["changes"]
    cursor = txn.cursor(db=db)
    found = cursor.set_range(after + b"\x00") if after is not None else cursor.first()
    seen = converted = 0
    last = None
    updates = []
    while found and seen < limit:
        cid, value = cursor.item()
        if value[:1] == _LEGACY_WIRE:
            updates.append((cid, store.values.pack(txn, "changes", _encode(_StoredChange(value, b"", 0, [])))))
        seen += 1
        last = cid
        found = cursor.next()
    for cid, value in updates:
        txn.put(cid, value, db=db)
        converted += 1
    return AdoptedBatch(seen, converted, last)


_LEGACY_WIRE = b"\x92"  # a format-1 wire: a msgpack array of 2 ([body, signature])


def iter_batches(store: Store, txn: lmdb.Transaction) -> Iterator[tuple[bytes, int, bytes]]:
    """Every stored batch: (root, size, leaves), leaves b"" when not all known."""
    for batch, raw in txn.cursor(db=store.db["roots"]):
        yield batch[:32], int.from_bytes(batch[32:], "big"), _root_decoder.decode(raw).leaves
