"""Write and read throughput of the node core, beside the machine's raw limit.

Prints, in one run:
  - the raw limit: msgpack encode + Ed25519 sign + batched durable LMDB put
    of the same records, no registry logic (benchmarks.limits);
  - our SDK writes: one durable transaction per write, and batched
    (``put_many``: one transaction per batch, as group commit does);
  - our read + verify: get a record, fetch its latest envelope, check its
    signature;
  - the design floor: what the libraries alone take to do what one write
    of this design (wire format 2) must do, with no checks and no logic of
    ours: the record's snapshot as canonical msgpack, the change body and
    its CID, one Ed25519 signature per batch over the RFC 6962 root of the
    batch's IDs, and the same LMDB puts per record in one durable
    transaction per batch; it is where "ours" could get to, and its ratio
    to the raw limit is what the design itself costs;
  - one record updated 2,000 times (``--history``), one durable write
    each: the rate of its first 400 updates and of its last 400, and of a
    fresh store taking in the same changes as a peer's, whose ratios show
    whether a write's cost grows with the record's history;
  - the ratios. Goals (wire format 2): batched writes >= 50% of the raw
    limit and >= 80% of the design floor. ``--floors`` also prints the
    floor of the previous design (an Automerge change and a signature per
    write) and the two halves of the change, all with values stored plain,
    and this design's floor with values stored plain (store format 3).

    python -m benchmarks.bench_core [--n 20000] [--batch 1000] [--history 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import msgspec

from benchmarks.limits import Figure, format_table, gc_paused, make_record, raw_read_verify, raw_write_pipeline
from registrygrid.engine.ops import Put, Remote
from registrygrid.protocol.merkle import MerkleTree
from registrygrid.protocol.envelope import cid_from_str, open_envelope
from registrygrid.sdk import LocalRegistry


def _function_fields(i: int, rng: random.Random) -> dict:
    fields = make_record(i, 430, rng)["fields"]
    fields["executor"] = {"type": "container", "image": "ghcr.io/acme/summarize:1.4.2"}
    return fields


def design_floor(n: int, batch: int, *, automerge: bool = False, sign_each: bool = False,
                 compress: bool = True) -> Figure:
    """The bare library calls of one registry write, batched like group commit.

    Per record (wire format 2, the defaults): the record's snapshot as
    canonical msgpack, the msgpack change body around it and its sha256
    CID; per batch, the RFC 6962 Merkle tree of the IDs and one Ed25519
    signature; then the puts our store makes (change with its batch
    reference, chain link, history link beside the record, record, four
    index keys, feed, audit entry; the batch's signature and leaves once) with values of the same sizes,
    the change, record, feed and audit values compressed as store format 4
    does (zstd's fast mode against a raw-content dictionary of such values,
    made before the clock starts). No validation, no clock, no ID text, no
    digests: a floor, not a competitor.

    ``automerge=True`` and ``sign_each=True`` price the previous design
    (``--floors``): an Automerge change of the record instead of a
    snapshot (with its document and Automerge hash stored), and an Ed25519
    signature per change; both with ``compress=False``, as store format 3
    stored values.
    """
    import hashlib
    import os

    import lmdb
    from nacl.bindings import crypto_sign
    from nacl.signing import SigningKey

    rng = random.Random(7)
    fields = [_function_fields(i, rng) for i in range(n)]
    key = SigningKey(bytes(range(32)))
    secret = key._signing_key
    actor = bytes(key.verify_key)
    pack = msgspec.msgpack.encode
    path = tempfile.mkdtemp(prefix="rgrid-bench-floor-")
    env = lmdb.open(path, map_size=1 << 32, max_dbs=16)
    names = ["changes", "roots", "chains", "docs", "records", "indexes", "feed", "audit"]  # store format 3
    dbs = {name: env.open_db(name.encode()) for name in names}
    prev = b""
    leaves: list[bytes] = []
    squeeze = _compressors(fields[:32], pack) if compress else None
    try:
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            with gc_paused(), env.begin(write=True) as txn:
                for i in range(start, min(n, start + batch)):
                    record_id = os.urandom(16).hex()
                    if not automerge:
                        payload = pack({"created": {"at": 1_764_000_000_000 + i, "by": "did:key:z6Mk"},
                                        "fields": fields[i], "kind": "function", "links": [],
                                        "owner": "did:key:z6Mk", "schema": 1, "tags": ["inference", "text"]},
                                       order="sorted")
                        change_hash = b""
                    else:
                        payload, change_hash = _automerge_create(actor, i, fields[i])
                    body = pack([2, "grid.functions", record_id, "create", "function", 1, "did:key:z6Mk", i + 1,
                                 prev, [1_764_000_000_000 + i, 0], [], change_hash, payload])
                    if sign_each:
                        wire = pack([body, crypto_sign(body, secret)[:64]])
                        cid = b"\x01\x55\x12\x20" + hashlib.sha256(wire).digest()
                    else:
                        cid = b"\x01\x55\x12\x20" + hashlib.sha256(body).digest()
                        wire = pack([body, b"\x00" * 32, i - start, []])  # [body, root, index, path]
                        leaves.append(cid)
                    prev = cid
                    rid = record_id.encode()
                    record = pack({"id": record_id, "fields": fields[i], "change_id": cid, "revision": 1})
                    feed = pack(["created", "grid.functions", record_id, cid])
                    entry = pack([i, "create", record_id, prev])
                    audit = pack([entry, hashlib.sha256(entry).digest()])
                    if squeeze is not None:
                        wire, record, feed, audit = (squeeze[0].compress(wire), squeeze[1].compress(record),
                                                     squeeze[2].compress(feed), squeeze[3].compress(audit))
                    txn.put(cid, wire, db=dbs["changes"])
                    txn.put(b"grid.functions\x00did\x00" + i.to_bytes(8, "big"), cid, db=dbs["chains"])
                    doc_key = b"grid.functions\x00" + rid
                    if automerge:  # a snapshot create has no document until its first update
                        txn.put(doc_key, b"\0\0\0\0" + payload, db=dbs["docs"])
                        txn.put(doc_key + b"\x00a" + change_hash, cid, db=dbs["docs"])
                    txn.put(doc_key + b"\x00h" + i.to_bytes(8, "big"), cid, db=dbs["docs"])
                    txn.put(doc_key, record, db=dbs["records"])
                    for prefix in (b"k", b"o", b"tinference", b"ttext"):
                        txn.put(prefix + b"\x00grid.functions\x00" + rid, b"", db=dbs["indexes"])
                    txn.put(i.to_bytes(8, "big"), feed, db=dbs["feed"])
                    txn.put(i.to_bytes(8, "big"), audit, db=dbs["audit"])
                if leaves:
                    root = MerkleTree(leaves).root
                    txn.put(root, pack(["did:key:z6Mk", len(leaves), crypto_sign(root, secret)[:64],
                                        b"".join(leaves)]), db=dbs["roots"])
                    leaves.clear()
        elapsed = time.perf_counter() - t0
    finally:
        env.close()
        shutil.rmtree(path, ignore_errors=True)
    label = "design floor: " + ("Automerge" if automerge else "snapshot") + (
        " + sign each" if sign_each else " + one signature per batch") + (
        " + compressed" if compress else "") + " + puts, no logic"
    return Figure(label, n / elapsed, "records/s", f"n={n}, batch {batch}, durable")


def _compressors(sample_fields: list[dict], pack: Callable[..., bytes]) -> list[Any]:
    """zstd compressors for the change, record, feed and audit values, each
    with a raw-content dictionary of such values (storage/compression.py)."""
    import hashlib

    import zstandard

    samples: list[list[bytes]] = [[], [], [], []]
    for i, fields in enumerate(sample_fields):
        payload = pack({"created": {"at": 1_764_000_000_000 + i, "by": "did:key:z6Mk"}, "fields": fields,
                        "kind": "function", "links": [], "owner": "did:key:z6Mk", "schema": 1,
                        "tags": ["inference", "text"]}, order="sorted")
        cid = b"\x01\x55\x12\x20" + hashlib.sha256(payload).digest()
        body = pack([2, "grid.functions", f"{i:032x}", "create", "function", 1, "did:key:z6Mk", i + 1, cid,
                     [1_764_000_000_000 + i, 0], [], b"", payload])
        entry = pack([i, "create", f"{i:032x}", cid])
        samples[0].append(pack([body, b"\x00" * 32, i, []]))
        samples[1].append(pack({"id": f"{i:032x}", "fields": fields, "change_id": cid, "revision": 1}))
        samples[2].append(pack(["created", "grid.functions", f"{i:032x}", cid]))
        samples[3].append(pack([entry, hashlib.sha256(entry).digest()]))
    out = []
    for values in samples:
        dictionary = zstandard.ZstdCompressionDict(b"".join(values), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        dictionary.precompute_compress(level=-1)
        out.append(zstandard.ZstdCompressor(level=-1, dict_data=dictionary, write_checksum=False,
                                            write_dict_id=False))
    return out


def _automerge_create(actor: bytes, i: int, fields: dict) -> tuple[bytes, bytes]:
    """The Automerge change a create makes for these fields (the record layout of crdt/record.py)."""
    from automerge.core import ROOT, Document, ObjType, ScalarType

    Str, Int, Bool, Map = ScalarType.Str, ScalarType.Int, ScalarType.Boolean, ObjType.Map
    doc = Document(actor_id=actor)
    with doc.transaction() as tx:
        tx.put(ROOT, "kind", Str, "function")
        tx.put(ROOT, "schema", Int, 1)
        tx.put(ROOT, "owner", Str, "did:key:z6Mk")
        created = tx.put_object(ROOT, "created", Map)
        tx.put(created, "at", Int, 1_764_000_000_000 + i)
        tx.put(created, "by", Str, "did:key:z6Mk")
        tags = tx.put_object(ROOT, "tags", Map)
        tx.put(tags, "inference", Bool, True)
        tx.put(tags, "text", Bool, True)
        tx.put_object(ROOT, "links", ObjType.List)
        obj = tx.put_object(ROOT, "fields", Map)
        for k, v in fields.items():
            if isinstance(v, dict):
                sub = tx.put_object(obj, k, Map)
                for k2, v2 in v.items():
                    tx.put(sub, k2, Str, v2)
            else:
                tx.put(obj, k, Str, v)
        tx.put(ROOT, "deleted", Bool, False)
    change = doc.get_changes([])[0]
    return change.raw_bytes, change.hash


def ours_batched(n: int, batch: int) -> Figure:
    rng = random.Random(7)
    ops = [Put("grid.functions", "function", _function_fields(i, rng), tags=["inference", "text"]) for i in range(n)]
    path = tempfile.mkdtemp(prefix="rgrid-bench-")
    try:
        grid = LocalRegistry.open_path(path)
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            outcomes = grid.put_many(ops[start:start + batch])
            assert all(o.status == "created" for o in outcomes), outcomes[:3]
        elapsed = time.perf_counter() - t0
        grid.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return Figure("ours: SDK put_many (batched)", n / elapsed, "records/s", f"n={n}, batch {batch}, durable")


def ours_single(n: int) -> Figure:
    rng = random.Random(8)
    fields = [_function_fields(i, rng) for i in range(n)]
    path = tempfile.mkdtemp(prefix="rgrid-bench-")
    try:
        grid = LocalRegistry.open_path(path)
        t0 = time.perf_counter()
        for f in fields:
            grid.put("grid.functions", "function", f, tags=["inference"])
        elapsed = time.perf_counter() - t0
        grid.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return Figure("ours: SDK put (one durable txn each)", n / elapsed, "records/s", f"n={n}")


def _whole_feed(grid: LocalRegistry, registry: str) -> list:
    """Every feed event of ``registry``, paged (the feed answers at most 10,000 a call)."""
    events, since = [], 0
    while page := grid.changes(since, limit=10_000, registry=registry):
        events += page
        since = page[-1].seq
    return events


def ours_updates_with_history(writes: int, tail: int = 400) -> list[Figure]:
    """One record updated ``writes`` times, one durable transaction each:
    the rate of its first ``tail`` updates and of its last; then a fresh
    store takes in those changes as a peer's, ``tail`` to a transaction:
    the rate of its first and last transaction. An update edits the
    record's Automerge document, whose stored bytes grow with its history;
    the engine keeps documents in memory between batches
    (engine/doc_cache.py) and adds a remote change to one in place, so the
    last ones should cost what the first do."""
    path = tempfile.mkdtemp(prefix="rgrid-bench-")
    try:
        grid = LocalRegistry.open_path(os.path.join(path, "writer"))
        grid.put("grid.functions", "function", _function_fields(0, random.Random(10)), id="hot")
        times = []
        for n in range(writes):
            t0 = time.perf_counter()
            grid.update("grid.functions", "hot", patch={"description": f"revision {n}"})
            times.append(time.perf_counter() - t0)
        wires = [wire for wire in (grid.change(cid_from_str(e.change)) for e in _whole_feed(grid, "grid.functions"))
                 if wire is not None]
        grid.close()
        replica = LocalRegistry.open_path(os.path.join(path, "replica"))
        ingest = []
        # Transactions of ``tail`` changes, the first taking the odd ones (the create).
        starts = [0, *range(tail + len(wires) % tail, len(wires), tail)]
        for start, end in zip(starts, [*starts[1:], len(wires)]):
            t0 = time.perf_counter()
            outcomes = replica.execute([Remote(w, "bench") for w in wires[start:end]])
            ingest.append((time.perf_counter() - t0, len(outcomes)))
            assert all(o.status == "applied" for o in outcomes), outcomes[:2]  # type: ignore[union-attr]
        replica.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    first, last = sum(times[:tail]), sum(times[-tail:])
    return [Figure(f"ours: update one record, its first {tail} updates", tail / first, "updates/s",
                   "one durable txn each"),
            Figure(f"ours: the same record, updates {writes - tail + 1}-{writes}", tail / last, "updates/s",
                   f"history of {writes - tail} updates before them"),
            Figure(f"ours: those changes into a fresh store, first {ingest[0][1]}", ingest[0][1] / ingest[0][0],
                   "changes/s",
                   f"as a peer's, {tail} to a durable txn"),
            Figure(f"ours: the same, last {ingest[-1][1]}", ingest[-1][1] / ingest[-1][0], "changes/s",
                   f"history of {len(wires) - ingest[-1][1]} changes before them")]


def ours_read_verify(n: int) -> Figure:
    rng = random.Random(9)
    path = tempfile.mkdtemp(prefix="rgrid-bench-")
    try:
        grid = LocalRegistry.open_path(path)
        results = grid.put_many([Put("grid.functions", "function", _function_fields(i, rng)) for i in range(n)])
        ids = [r.record_id for r in results]
        rng.shuffle(ids)
        t0 = time.perf_counter()
        for record_id in ids:
            record = grid.get("grid.functions", record_id)
            open_envelope(grid.change(cid_from_str(record["change_id"])))  # decode + verify signature
        elapsed = time.perf_counter() - t0
        grid.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return Figure("ours: get + verify latest change", n / elapsed, "records/s", f"n={n}, random order")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--single", type=int, default=1000)
    parser.add_argument("--history", type=int, default=2000, help="updates of one record (0: skip)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--floors", action="store_true",
                        help="also price the design changes: no Automerge change, one signature per batch, "
                             "compressed values")
    args = parser.parse_args()

    raw = raw_write_pipeline(n=args.n, batch=args.batch, max_seconds=30)
    floor = design_floor(args.n, args.batch)
    batched = ours_batched(args.n, args.batch)
    single = ours_single(args.single)
    raw_read = raw_read_verify(n=args.n, max_seconds=30)
    read = ours_read_verify(min(args.n, 10000))
    figures = [raw, floor, batched, single, raw_read, read]
    history = ours_updates_with_history(args.history) if args.history > 400 else None
    if history:
        figures += history
    if args.floors:
        # Store format 3 stored values plain: the previous design, the two
        # halves of the change, and this design without compression.
        variants = [design_floor(args.n, args.batch, automerge=True, sign_each=True, compress=False),
                    design_floor(args.n, args.batch, automerge=True, compress=False),
                    design_floor(args.n, args.batch, sign_each=True, compress=False),
                    design_floor(args.n, args.batch, compress=False)]
        figures[2:2] = variants
    ratios = {
        "batched / raw write": batched.value / raw.value,
        "design floor / raw write": floor.value / raw.value,
        "batched / design floor": batched.value / floor.value,
        **{f"{f.name.removeprefix('design floor: ').removesuffix(' + puts, no logic')} / raw write":
           f.value / raw.value for f in figures if f.name.startswith("design floor") and f is not floor},
        "single / raw write": single.value / raw.value,
        "read+verify / raw read+verify": read.value / raw_read.value,
        **({"last updates / first updates": history[1].value / history[0].value,
            "last ingest / first ingest": history[3].value / history[2].value} if history else {}),
    }
    if args.json:
        print(json.dumps({"figures": [f.__dict__ for f in figures], "ratios": ratios}, indent=2))
        return
    print(format_table(figures))
    print()
    for name, value in ratios.items():
        print(f"{name:<32} {value:6.1%}")


if __name__ == "__main__":
    main()
