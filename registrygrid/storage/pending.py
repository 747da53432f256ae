"""Remote changes that wait: for their chain's previous link, for Automerge
dependencies of their record, for their user kind's definition or their
registry's descriptor, or for their signer's delegation.

    pending  change id -> wire (checked before it was parked)
    waiting  'c' registry \\0 author \\0 u64(seq - 1) \\0 cid   waits for its own predecessor
             'r' registry \\0 record \\0 cid                   waits for deps of its record (under
                                                              grid.kinds \\0 NAME.vN: for its user
                                                              kind; grid.registries \\0 NAME: for
                                                              its registry's descriptor)
             'd' author \\0 cid                                waits for its signer's delegation
             -> change id
    parked_at  change id -> u64(ms since the epoch) it was first parked,
               u32(its wire's bytes), its share (below)
    parked_share  share -> u64(changes) u64(bytes) parked under it

A share is whom the waiting room counts a change against: the org its
signer speaks for (as the engine places it), or one share for every
signer whose delegation is not known yet. No share may hold more than its
part of the caps, so one member that signs changes that never resolve
fills its own share, not the room honest out-of-order deliveries need.

A change is released when what it waits for is stored (``release``), then
judged again from the start; anti-entropy refetches anything refused here.
A change that waits longer than the node's TTL is dropped (``expire``): what
it waits for never came, and sync offers it again if its chain still lacks
it, so nothing parks for good.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

import lmdb

from registrygrid.errors import MissingDependencies
from registrygrid.storage.store import SEP, Store, from_u64, key, u64

_SHARE = struct.Struct(">QQ")  # changes, bytes
_STAMP = struct.Struct(">QI")  # ms parked, wire bytes; the share follows


def for_predecessor(registry: str, author: str, seq: int, cid: bytes) -> bytes:
    """Wait for link ``seq - 1`` of the author's chain: keyed by its own
    predecessor, not the next missing link, so a long gap is released once
    link by link instead of re-parked at every link (quadratic)."""
    return b"c" + key(registry, author, u64(seq - 1), cid)


def for_deps(registry: str, record: str, cid: bytes) -> bytes:
    return b"r" + key(registry, record, cid)


def for_delegation(author: str, cid: bytes) -> bytes:
    return b"d" + key(author, cid)


def after_link(registry: str, author: str, seq: int) -> bytes:
    """What waits for link ``seq`` of the author's chain (a prefix)."""
    return b"c" + key(registry, author, u64(seq)) + SEP


def on_record(registry: str, record: str) -> bytes:
    """What waits for a change of this record (a prefix)."""
    return b"r" + key(registry, record) + SEP


def on_delegation(author: str) -> bytes:
    """What waits for a delegation of this key (a prefix)."""
    return b"d" + key(author) + SEP


def any_waiting(store: Store, txn: lmdb.Transaction) -> bool:
    """Whether any change waits at all (one page read: most batches find none)."""
    return txn.stat(store.db["waiting"])["entries"] > 0


def park(store: Store, txn: lmdb.Transaction, waiting_key: bytes, cid: bytes, wire: bytes, *,
         cap: int, cap_bytes: int, now_ms: int, share: bytes, share_cap: int, share_cap_bytes: int) -> bool:
    """Hold a change until ``waiting_key``'s condition holds; True if it was
    not parked before. MissingDependencies when ``cap`` changes, or about
    ``cap_bytes`` of them (the table's pages: one read of its stat), wait
    already (a count alone let 100,000 changes of 256 KiB each park
    25 GiB), or when ``share`` holds ``share_cap`` changes or
    ``share_cap_bytes`` already."""
    pending = store.db["pending"]
    fresh = txn.get(cid, db=pending) is None
    if fresh:
        stat = txn.stat(pending)
        if stat["entries"] >= cap:
            raise MissingDependencies(f"{cap} changes already wait for dependencies; resend later")
        held = stat["psize"] * (stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"])
        if held + len(wire) > cap_bytes:
            raise MissingDependencies(f"{held} bytes of changes already wait for dependencies (cap {cap_bytes}); "
                                      "resend later")
        count, size = share_of(store, txn, share)
        if count >= share_cap or size + len(wire) > share_cap_bytes:
            raise MissingDependencies(
                f"{count} changes ({size} bytes) signed for {share.decode(errors='replace')} already wait for "
                f"dependencies, its share of the waiting room ({share_cap} changes, {share_cap_bytes} bytes); "
                "resend later", details={"share": share.decode(errors="replace"), "changes": count, "bytes": size})
        txn.put(cid, wire, db=pending)
        txn.put(cid, _STAMP.pack(now_ms, len(wire)) + share, db=store.db["parked_at"])
        _add_to_share(store, txn, share, 1, len(wire))
    txn.put(waiting_key, cid, db=store.db["waiting"])
    return fresh


def share_of(store: Store, txn: lmdb.Transaction, share: bytes) -> tuple[int, int]:
    """(changes, bytes) parked under ``share``."""
    held = txn.get(share, db=store.db["parked_share"])
    return _SHARE.unpack(held) if held is not None else (0, 0)


def _add_to_share(store: Store, txn: lmdb.Transaction, share: bytes, changes: int, size: int) -> None:
    count, held = share_of(store, txn, share)
    count, held = count + changes, held + size
    if count > 0:
        txn.put(share, _SHARE.pack(count, max(held, 0)), db=store.db["parked_share"])
    else:
        txn.delete(share, db=store.db["parked_share"])


def _forget(store: Store, txn: lmdb.Transaction, cid: bytes) -> None:
    """Take a change that leaves the waiting room off its share."""
    stamp = txn.get(cid, db=store.db["parked_at"])
    if stamp is None:
        return
    txn.delete(cid, db=store.db["parked_at"])
    if len(stamp) > _STAMP.size:  # a version before shares stamped the time alone: counted nowhere
        _, size = _STAMP.unpack_from(stamp)
        _add_to_share(store, txn, stamp[_STAMP.size:], -1, -size)


def release(store: Store, txn: lmdb.Transaction, prefixes: Iterable[bytes]) -> list[bytes]:
    """Take every change waiting under any of ``prefixes`` out of the
    waiting room; their wires, in key order."""
    waiting, pending = store.db["waiting"], store.db["pending"]
    keys = [k for prefix in prefixes for k, _ in store.iter_prefix(txn, "waiting", prefix)]
    wires = []
    for wkey in keys:
        cid = txn.get(wkey, db=waiting)
        if cid is None:
            continue
        txn.delete(wkey, db=waiting)
        wire = txn.get(cid, db=pending)
        if wire is None:
            continue
        txn.delete(cid, db=pending)
        _forget(store, txn, cid)
        wires.append(wire)
    return wires


def keep_evidence(store: Store, txn: lmdb.Transaction, registry: str, author: str, seq: int, cid: bytes,
                  wire: bytes) -> None:
    """File a change as evidence against its author (equivocation, a broken
    chain) under its own sequence number: ``evidence`` registry \\0 author
    \\0 u64(seq) \\0 cid -> wire."""
    txn.put(key(registry, author, u64(seq), cid), wire, db=store.db["evidence"])


def parked(store: Store, txn: lmdb.Transaction) -> Iterator[tuple[bytes, bytes]]:
    """Every parked change, (change id, wire), in id order."""
    yield from store.iter_prefix(txn, "pending", b"")


def unpark(store: Store, txn: lmdb.Transaction, cid: bytes) -> None:
    """Drop a parked change; its waiting keys then find nothing and are
    dropped when released."""
    txn.delete(cid, db=store.db["pending"])
    _forget(store, txn, cid)


def expire(store: Store, txn: lmdb.Transaction, *, parked_before_ms: int, now_ms: int) -> int:
    """Drop every change parked before ``parked_before_ms``, and the waiting
    keys no parked change answers any more; how many changes went. A change
    parked by a version that kept no time is stamped ``now_ms``: it gets a
    whole TTL from here (and counts against no share). The shares are
    counted again from what stays, so they never drift from it. Bounded by
    the pending cap: one pass over the parked table, one over the waiting
    keys and one over the stamps."""
    pending, parked_at, waiting = store.db["pending"], store.db["parked_at"], store.db["waiting"]
    shares = store.db["parked_share"]
    if txn.stat(pending)["entries"] == 0 and txn.stat(waiting)["entries"] == 0:
        if txn.stat(shares)["entries"]:
            txn.drop(shares, delete=False)
        return 0
    dropped = 0
    kept: set[bytes] = set()
    for cid in list(txn.cursor(db=pending).iternext(keys=True, values=False)):  # not the wires: up to 1 GiB
        stamp = txn.get(cid, db=parked_at)
        if stamp is None:
            txn.put(cid, u64(now_ms), db=parked_at)
        elif from_u64(stamp[:8]) < parked_before_ms:
            txn.delete(cid, db=pending)
            txn.delete(cid, db=parked_at)
            dropped += 1
            continue
        kept.add(cid)
    for wkey, cid in list(store.iter_prefix(txn, "waiting", b"")):
        if cid not in kept:
            txn.delete(wkey, db=waiting)
    counted: dict[bytes, list[int]] = {}
    for cid, stamp in list(txn.cursor(db=parked_at)):
        if cid not in kept:
            txn.delete(cid, db=parked_at)
        elif len(stamp) > _STAMP.size:
            share = counted.setdefault(stamp[_STAMP.size:], [0, 0])
            share[0] += 1
            share[1] += _STAMP.unpack_from(stamp)[1]
    txn.drop(shares, delete=False)
    for share, (count, size) in counted.items():
        txn.put(share, _SHARE.pack(count, size), db=shares)
    return dropped


def has_evidence(store: Store, txn: lmdb.Transaction, registry: str, author: str, seq: int, cid: bytes) -> bool:
    return evidence_wire(store, txn, registry, author, seq, cid) is not None


def evidence_wire(store: Store, txn: lmdb.Transaction, registry: str, author: str, seq: int,
                  cid: bytes) -> bytes | None:
    """The wire of one change filed as evidence, if it is."""
    return txn.get(key(registry, author, u64(seq), cid), db=store.db["evidence"])


def evidence_of(store: Store, txn: lmdb.Transaction, registry: str, author: str) -> Iterator[bytes]:
    """The wires filed as evidence against ``author`` in ``registry``, in
    sequence order."""
    for _, wire in store.iter_prefix(txn, "evidence", key(registry, author) + SEP):
        yield wire


def waiting_in_chain(store: Store, txn: lmdb.Transaction, registry: str, author: str) -> Iterator[bytes]:
    """The wires of ``author``'s changes in ``registry`` that wait for a
    predecessor, in sequence order."""
    pending = store.db["pending"]
    for _, cid in store.iter_prefix(txn, "waiting", b"c" + key(registry, author) + SEP):
        wire = txn.get(cid, db=pending)
        if wire is not None:
            yield wire


def all_evidence(store: Store, txn: lmdb.Transaction) -> Iterator[tuple[str, str, int, bytes]]:
    """(registry, author, seq, wire) of every change filed as evidence, in
    that order: read from the keys, no envelope decoded."""
    for k, wire in store.iter_prefix(txn, "evidence", b""):
        registry, author, rest = k.split(SEP, 2)
        yield registry.decode(), author.decode(), from_u64(rest[:8]), wire


def evidence_in(store: Store, txn: lmdb.Transaction, registry: str) -> Iterator[tuple[bytes, bytes]]:
    """The evidence filed in ``registry``, (its key, the change's wire)."""
    yield from store.iter_prefix(txn, "evidence", key(registry) + SEP)


def drop_evidence(store: Store, txn: lmdb.Transaction, evidence_key: bytes) -> None:
    txn.delete(evidence_key, db=store.db["evidence"])
