"""Materialized records, their secondary indexes, and record history.

A record's Automerge document is the truth; the materialized form (plain
msgpack) is what reads and listings serve, so a read never loads Automerge.
Both are written in the same transaction, so they never disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lmdb

from registrygrid.storage.store import SEP, Store, from_u64, key, pack, u64, unpack


def record_key(registry: str, record_id: str) -> bytes:
    return key(registry, record_id)


# A record is stored as a msgpack array in this order (not a map: the key
# names took ~150 of a small record's ~490 bytes, and LMDB pages hold what a
# record takes about 1.6 times). Its registry and id are in the key, and
# updated_at is updated_hlc's wall time, so none of them is stored again.
# Readers get the dict of registrygrid/record.py's Record, key for key.
_ROW = ("kind", "schema", "owner", "tags", "links", "fields", "deleted", "created_at", "created_by",
        "updated_hlc", "updated_by", "change_id", "revision")


def _encode_record(record: dict[str, Any]) -> bytes:
    row = [record[name] for name in _ROW]
    if record.get("conflicts"):  # rare: only a record whose writes conflict pays for the member
        row.append(record["conflicts"])
    return pack(row)


def skeleton_value(plain: bytes) -> bytes:
    """A stored record's value with its content taken out (tags, links, the
    values of its fields, its change ID): what a compression dictionary may
    learn from it (storage/compression.py). A dictionary is never erased,
    so it must not hold what an erasure removes."""
    row = unpack(plain)
    if not isinstance(row, list) or len(row) < len(_ROW) or not isinstance(row[5], dict):
        return b""  # a format-2 map, or not a record: nothing to learn
    row = row[:len(_ROW)]
    row[3], row[4], row[5], row[11] = [], [], dict.fromkeys(row[5]), ""
    return pack(row)


def _decode_record(registry: str, record_id: str, raw: bytes) -> dict[str, Any]:
    value = unpack(raw)
    if isinstance(value, dict):  # written by store format 2 (a migrated store): a map already
        value.setdefault("conflicts", [])
        return value
    (kind, schema, owner, tags, links, fields, deleted, created_at, created_by, updated_hlc, updated_by, change_id,
     revision) = value[:13]
    return {"registry": registry, "id": record_id, "kind": kind, "schema": schema, "owner": owner, "tags": tags,
            "links": links, "fields": fields, "deleted": deleted, "created_at": created_at,
            "created_by": created_by, "updated_at": updated_hlc[0], "updated_hlc": updated_hlc,
            "updated_by": updated_by, "change_id": change_id, "revision": revision,
            "conflicts": value[13] if len(value) > 13 else []}


def _decode_keyed(k: bytes, raw: bytes) -> dict[str, Any]:
    registry, record_id = k.decode().split("\x00", 1)
    return _decode_record(registry, record_id, raw)


# Records that show conflicts: 'c' registry \0 record. What a trust
# statement settles again (engine/settle.py) and `list --conflicted` reads,
# without a walk of every record. A store written before this index
# existed gets it from `build_conflicted_index`, once (the engine calls it
# as it opens a store); until then readers walk the records instead.
_CONFLICTED = b"c"
CONFLICTED_INDEX = "index.conflicted"  # meta: true once every conflicted record has its entry


def index_keys(store: Store, txn: lmdb.Transaction, record: dict[str, Any]) -> set[bytes]:
    """Every index entry a materialized record should have (its owner as a
    code: storage/codes.py)."""
    registry, record_id = record["registry"], record["id"]
    keys = {b"k" + key(registry, record["kind"], record_id),
            b"o" + store.codes.assign(txn, record["owner"]) + key(registry, record_id)}
    keys.update(b"t" + key(tag, registry, record_id) for tag in record["tags"])
    conflicts = record.get("conflicts") or ()
    if conflicts:
        keys.add(_CONFLICTED + key(registry, record_id))
    # Open (or resolved) field disputes, by dispute id (crdt/disputes.py).
    keys.update(b"d" + key(c["dispute"], registry, record_id) for c in conflicts if c.get("dispute"))
    return keys


def put_record(store: Store, txn: lmdb.Transaction, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    record_at = record_key(new["registry"], new["id"])
    txn.put(record_at, store.values.pack(txn, "records", _encode_record(new)), db=store.db["records"])
    indexes = store.db["indexes"]
    if old is None:  # a create: every key is new (the common case, so no set arithmetic)
        registry, record_id = new["registry"], new["id"]
        txn.put(b"k" + key(registry, new["kind"], record_id), b"", db=indexes)
        txn.put(b"o" + store.codes.assign(txn, new["owner"]) + key(registry, record_id), b"", db=indexes)
        for tag in new["tags"]:
            txn.put(b"t" + key(tag, registry, record_id), b"", db=indexes)
        conflicts = new.get("conflicts") or ()
        if conflicts:
            txn.put(_CONFLICTED + key(registry, record_id), b"", db=indexes)
        for conflict in conflicts:
            if conflict.get("dispute"):
                txn.put(b"d" + key(conflict["dispute"], registry, record_id), b"", db=indexes)
        return
    old_keys = index_keys(store, txn, old)
    new_keys = index_keys(store, txn, new)
    for stale in old_keys - new_keys:
        txn.delete(stale, db=indexes)
    for fresh in new_keys - old_keys:
        txn.put(fresh, b"", db=indexes)


def delete_record(store: Store, txn: lmdb.Transaction, old: dict[str, Any]) -> None:
    """Remove a materialized record and its index entries (a rebuild that
    leaves a record with no valid change)."""
    txn.delete(record_key(old["registry"], old["id"]), db=store.db["records"])
    indexes = store.db["indexes"]
    for stale in index_keys(store, txn, old):
        txn.delete(stale, db=indexes)


def get_record(store: Store, txn: lmdb.Transaction, registry: str, record_id: str) -> dict[str, Any] | None:
    record_at = record_key(registry, record_id)
    raw = txn.get(record_at, db=store.db["records"])
    return None if raw is None else _decode_record(registry, record_id,
                                                   store.values.unpack(txn, "records", raw, record_at))


def iter_records(
    store: Store,
    txn: lmdb.Transaction,
    *,
    registry: str | None = None,
    kind: str | None = None,
    owner: str | None = None,
    tag: str | None = None,
    conflicted: bool = False,
    after: tuple[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Records in (registry, id) order, starting after ``after``; with
    ``conflicted``, only those that show conflicts.

    Uses the most selective index available; the others are checked on the
    materialized record. Deleted records are included; callers filter.
    """
    records = store.db["records"]
    start = None if after is None else key(*after) + b"\x00\x00"  # strictly after
    if conflicted and store.get_meta(txn, CONFLICTED_INDEX, False):
        # Rare by nature, so the most selective of all when asked for.
        if registry is not None:
            prefix = _CONFLICTED + key(registry) + SEP
            source = _index_scan(store, txn, prefix,
                                 start_suffix=None if after is None else key(after[1]) + b"\x00\x00",
                                 registry_of=lambda suffix: (registry, suffix.decode()))
        else:
            source = _index_scan(store, txn, _CONFLICTED, start_suffix=start, registry_of=_split2)
    elif kind is not None and registry is not None:
        prefix = b"k" + key(registry, kind) + SEP
        source = _index_scan(store, txn, prefix, start_suffix=None if after is None else key(after[1]) + b"\x00\x00",
                             registry_of=lambda suffix: (registry, suffix.decode()))
    elif tag is not None:
        prefix = b"t" + key(tag) + SEP
        source = _index_scan(store, txn, prefix, start_suffix=start, registry_of=_split2)
    elif owner is not None:
        code = store.codes.code(txn, owner)
        if code is None:  # no record here has ever had that owner
            return
        source = _index_scan(store, txn, b"o" + code, start_suffix=start, registry_of=_split2)
    else:
        source = None
    if source is None:
        prefix = b"" if registry is None else key(registry) + SEP
        for k, value in store.iter_prefix(txn, "records", prefix, start=start):
            record = _decode_keyed(k, store.values.unpack(txn, "records", value, k))
            if _matches(record, registry, kind, owner, tag, conflicted):
                yield record
        return
    for reg, rec in source:
        record_at = record_key(reg, rec)
        raw = txn.get(record_at, db=records)
        if raw is None:
            continue
        record = _decode_record(reg, rec, store.values.unpack(txn, "records", raw, record_at))
        if _matches(record, registry, kind, owner, tag, conflicted):
            yield record


def build_conflicted_index(store: Store, txn: lmdb.Transaction) -> int:
    """Give every record that shows conflicts its 'c' entry, once per store
    (a store written before the index existed has none): a walk of every
    record, then a mark in "meta" that later calls only read. How many
    entries it wrote."""
    if store.get_meta(txn, CONFLICTED_INDEX, False):
        return 0
    indexes, written = store.db["indexes"], 0
    for record in iter_records(store, txn):
        if record["conflicts"]:
            txn.put(_CONFLICTED + key(record["registry"], record["id"]), b"", db=indexes)
            written += 1
    store.put_meta(txn, CONFLICTED_INDEX, True)
    return written


def records_disputing(store: Store, txn: lmdb.Transaction, dispute: str) -> list[tuple[str, str]]:
    """(registry, id) of the records whose conflicts include ``dispute``."""
    prefix = b"d" + key(dispute) + SEP
    return [_split2(k[len(prefix):]) for k, _ in store.iter_prefix(txn, "indexes", prefix)]


def iter_disputes(store: Store, txn: lmdb.Transaction) -> Iterator[tuple[str, str, str]]:
    """(dispute, registry, id) of every field dispute, in dispute id order."""
    for k, _ in store.iter_prefix(txn, "indexes", b"d"):
        dispute, registry, record_id = k[1:].decode().split("\x00", 2)
        yield dispute, registry, record_id


def _split2(suffix: bytes) -> tuple[str, str]:
    registry, record_id = suffix.split(SEP, 1)
    return registry.decode(), record_id.decode()


def _index_scan(store: Store, txn: lmdb.Transaction, prefix: bytes, *, start_suffix: bytes | None,
                registry_of: Any) -> Iterator[tuple[str, str]]:
    start = None if start_suffix is None else prefix + start_suffix
    for k, _ in store.iter_prefix(txn, "indexes", prefix, start=start):
        suffix = k[len(prefix):]
        yield registry_of(suffix)


def _matches(record: dict[str, Any], registry: str | None, kind: str | None, owner: str | None,
             tag: str | None, conflicted: bool = False) -> bool:
    return (
        (not conflicted or bool(record["conflicts"]))
        and (registry is None or record["registry"] == registry)
        and (kind is None or record["kind"] == kind)
        and (owner is None or record["owner"] == owner)
        and (tag is None or tag in record["tags"])
    )


# A record's history and Automerge hashes are kept beside its document in
# "docs" (store.py explains why): registry \0 record \0 'h' feedseq, and
# registry \0 record \0 'a' hash. Refused changes (stored in their
# author's chain as evidence, never applied: docs/trust.md) are marked
# there too: registry \0 record \0 'x' hash -> change id. A snapshot
# create is in the record's history like any change that counts; its
# genesis change gets an 'a' entry once the record's document is built.
_HISTORY, _AM_HASH, _REFUSED = SEP + b"h", SEP + b"a", SEP + b"x"
# A quarantined key's change that this node holds only as evidence (the
# other branch of its fork: this node's chain holds its own branch, so the
# change never links here, and it counts nowhere): registry \0 record \0
# 'q' hash -> change id. A change that builds on it is refused, as on the
# nodes that hold that branch, instead of waiting for it for ever. Never
# cleared by a rebuild: no rule makes such a change count.
_FORKED = SEP + b"q"
# The record's conflict frontiers (crdt/conflicts.py): registry \0 record
# \0 'c' -> msgpack [[path, [automerge hash, ...]], ...]; absent while no
# path of the record has concurrent writers (nearly always).
_FRONTIERS = SEP + b"c"


def get_frontiers(store: Store, txn: lmdb.Transaction, registry: str, record_id: str) -> dict[tuple[str, ...], list[bytes]]:
    raw = txn.get(key(registry, record_id) + _FRONTIERS, db=store.db["docs"])
    return {} if raw is None else {tuple(path): list(writers) for path, writers in unpack(raw)}


def put_frontiers(store: Store, txn: lmdb.Transaction, registry: str, record_id: str,
                  frontiers: dict[tuple[str, ...], list[bytes]]) -> None:
    k = key(registry, record_id) + _FRONTIERS
    if frontiers:
        txn.put(k, pack(sorted([list(path), sorted(writers)] for path, writers in frontiers.items())),
                db=store.db["docs"])
    else:
        txn.delete(k, db=store.db["docs"])


def counts(store: Store, txn: lmdb.Transaction, registry: str, record_id: str, cid: bytes,
           automerge_hash: bytes) -> bool:
    """Whether the change (a snapshot when ``automerge_hash`` is empty)
    counts for the record: applied, not refused."""
    if automerge_hash:
        return txn.get(am_hash_key(key(registry, record_id), automerge_hash), db=store.db["docs"]) is not None
    return cid in applied_ids(store, txn, registry, record_id)


def applied_ids(store: Store, txn: lmdb.Transaction, registry: str, record_id: str) -> list[bytes]:
    """The IDs of the changes that count for the record, in feed order: its
    history, which a rebuild keeps equal to them. A snapshot create is
    found here (its genesis gets an 'a' marker only once the document is
    built), so it needs no marker of its own."""
    return [cid for _, cid in history(store, txn, registry, record_id)]


def clear_change_index(store: Store, txn: lmdb.Transaction, registry: str, record_id: str) -> None:
    """Drop the record's applied and refused markers (a rebuild writes them
    anew)."""
    docs = store.db["docs"]
    for marker in (_AM_HASH, _REFUSED):
        stale = [k for k, _ in store.iter_prefix(txn, "docs", key(registry, record_id) + marker)]
        for k in stale:
            txn.delete(k, db=docs)


def am_hash_key(record_key: bytes, automerge_hash: bytes) -> bytes:
    return record_key + _AM_HASH + automerge_hash


def refused_key(record_key: bytes, automerge_hash: bytes) -> bytes:
    return record_key + _REFUSED + automerge_hash


def refused_changes(store: Store, txn: lmdb.Transaction, registry: str, record_id: str) -> dict[bytes, bytes]:
    """Automerge hash -> change id of the record's refused changes."""
    prefix = key(registry, record_id) + _REFUSED
    return {k[len(prefix):]: v for k, v in store.iter_prefix(txn, "docs", prefix)}


def refused_record_ids(store: Store, txn: lmdb.Transaction, registry: str) -> list[str]:
    """Ids in ``registry`` that hold refused changes (with or without a
    record): what a change of the rules must re-judge. A scan of the
    registry's part of "docs"; rules change rarely."""
    prefix = registry.encode() + SEP
    out: list[str] = []
    for k, _ in store.iter_prefix(txn, "docs", prefix):
        rest = k[len(prefix):]
        cut = rest.find(SEP)
        if cut > 0 and rest[cut:cut + 2] == _REFUSED:
            record_id = rest[:cut].decode()
            if not out or out[-1] != record_id:
                out.append(record_id)
    return out


def applied_change(store: Store, txn: lmdb.Transaction, registry: str, record_id: str,
                   automerge_hash: bytes) -> bytes | None:
    """The change id whose Automerge change ``automerge_hash`` the record's document holds."""
    return txn.get(am_hash_key(key(registry, record_id), automerge_hash), db=store.db["docs"])


def applied_changes(store: Store, txn: lmdb.Transaction, registry: str, record_id: str) -> dict[bytes, bytes]:
    """Automerge hash -> change id of the changes the record's document holds."""
    prefix = key(registry, record_id) + _AM_HASH
    return {k[len(prefix):]: v for k, v in store.iter_prefix(txn, "docs", prefix)}


def add_history(store: Store, txn: lmdb.Transaction, registry: str, record_id: str, feed_seq: int, cid: bytes) -> None:
    txn.put(key(registry, record_id) + _HISTORY + u64(feed_seq), cid, db=store.db["docs"])


def drop_history(store: Store, txn: lmdb.Transaction, registry: str, record_id: str, feed_seq: int) -> None:
    txn.delete(key(registry, record_id) + _HISTORY + u64(feed_seq), db=store.db["docs"])


def history(store: Store, txn: lmdb.Transaction, registry: str, record_id: str) -> list[tuple[int, bytes]]:
    prefix = key(registry, record_id) + _HISTORY
    return [(from_u64(k[len(prefix):]), v) for k, v in store.iter_prefix(txn, "docs", prefix)]


# ---- a record's Automerge document and its change markers, in "docs" ----


def get_document(store: Store, txn: lmdb.Transaction, registry: str, record_id: str) -> bytes | None:
    """The stored document (crdt/record.py's stored form), None before the
    record's first update."""
    return txn.get(key(registry, record_id), db=store.db["docs"])


def put_document(store: Store, txn: lmdb.Transaction, registry: str, record_id: str, stored: bytes) -> None:
    txn.put(key(registry, record_id), stored, db=store.db["docs"])


def delete_document(store: Store, txn: lmdb.Transaction, registry: str, record_id: str) -> None:
    txn.delete(key(registry, record_id), db=store.db["docs"])


def mark_applied(store: Store, txn: lmdb.Transaction, registry: str, record_id: str, automerge_hash: bytes,
                 cid: bytes) -> None:
    txn.put(am_hash_key(key(registry, record_id), automerge_hash), cid, db=store.db["docs"])


def mark_refused(store: Store, txn: lmdb.Transaction, registry: str, record_id: str, automerge_hash: bytes,
                 cid: bytes) -> None:
    txn.put(refused_key(key(registry, record_id), automerge_hash), cid, db=store.db["docs"])


def unmark_refused(store: Store, txn: lmdb.Transaction, registry: str, record_id: str, automerge_hash: bytes) -> None:
    txn.delete(refused_key(key(registry, record_id), automerge_hash), db=store.db["docs"])


def mark_forked(store: Store, txn: lmdb.Transaction, registry: str, record_id: str, automerge_hash: bytes,
                cid: bytes) -> None:
    txn.put(key(registry, record_id) + _FORKED + automerge_hash, cid, db=store.db["docs"])


def is_forked(store: Store, txn: lmdb.Transaction, registry: str, record_id: str, automerge_hash: bytes) -> bool:
    return txn.get(key(registry, record_id) + _FORKED + automerge_hash, db=store.db["docs"]) is not None


def is_applied(store: Store, txn: lmdb.Transaction, registry: str, record_id: str, automerge_hash: bytes) -> bool:
    return txn.get(am_hash_key(key(registry, record_id), automerge_hash), db=store.db["docs"]) is not None


def is_refused(store: Store, txn: lmdb.Transaction, registry: str, record_id: str, automerge_hash: bytes) -> bool:
    return txn.get(refused_key(key(registry, record_id), automerge_hash), db=store.db["docs"]) is not None


def iter_stored(store: Store, txn: lmdb.Transaction) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Every materialized record with its key (registry \\0 id), in key order."""
    for k, raw in txn.cursor(db=store.db["records"]):
        yield k, _decode_keyed(k, store.values.unpack(txn, "records", raw, k))
