"""Merge throughput with conflict policies, beside plain Automerge on the same changes.

Prints, in one run, for the same signed changes:
  - hot: W writers (nodes of one org) each update ONE record K times without
    seeing each other (every change races the others' on the same fields),
    delivered to a fresh node interleaved writer by writer, as gossip would;
  - cold: the same number of changes, each writer updating records of its
    own (no change races another);
and for each:
  - ours: the engine ingesting the changes (Remote ops, batches of the sync
    path's size, durable): verify, chains, trust, Automerge apply, conflict
    tracking and settling by policy (last-writer-wins, max and union on
    three fields), materialize, commit;
  - Automerge, incremental: the same Automerge changes applied one at a time
    to their record's document in memory as they arrive (a sync message
    carrying the change, ``RecordDoc.add_change``, as our engine does; the
    binding has no other call that takes a change into a document) plus
    one walk of the result, no storage: the cost of merging itself, change
    by change;
  - Automerge, bulk: ``Document.load`` of all of a record's changes at once
    and one walk: the floor of merging when nothing needs to be seen in
    between;
  - raw: decode + verify + durable put of the same envelopes
    (bench_federation.raw_same_envelopes), the machine's limit for taking
    them in at all.

    python -m benchmarks.bench_conflicts [--writers 8] [--changes 2000] [--json]

Goal (issue 16): a README table of these figures; no numeric goal is set.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from automerge.core import ROOT, Document, ObjType

from benchmarks.bench_federation import _forget_verified, raw_same_envelopes
from benchmarks.limits import Figure
from registrygrid.crdt.record import RecordDoc
from registrygrid.engine.ops import Remote
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import open_envelope
from registrygrid.sdk import LocalRegistry

REG = "bench.models"
POLICY = {"default": "last-writer-wins", "fields": {"score": "max", "labels": "union"}}
APPLY_CHUNK = 1000  # the sync path's batch
ORG = KeyPair(b"\x42" * 32)


def _wires(grid: LocalRegistry, since: int = 0) -> list[bytes]:
    out = []
    while True:
        page = grid.changes(since, limit=10_000)
        if not page:
            return out
        out += [grid.change(_cid(e.change)) for e in page]  # type: ignore[misc]
        since = page[-1].seq


def _cid(text: str) -> bytes:
    from registrygrid.protocol.envelope import cid_from_str

    return cid_from_str(text)


def _patch(rng: random.Random, writer: int, i: int) -> dict[str, Any]:
    """An edit of one or two of a few shared fields: most edits race others."""
    choice = rng.randrange(4)
    if choice == 0:
        return {"score": rng.randrange(1000)}
    if choice == 1:
        return {"labels": sorted({f"l{rng.randrange(12)}" for _ in range(3)})}
    if choice == 2:
        return {"region": f"r{rng.randrange(5)}", "note": f"w{writer}-{i}"}
    return {"note": f"w{writer}-{i}"}


def make_changes(root: Path, writers: int, changes: int, *, hot: bool, seed: int = 16) -> tuple[list[bytes], list[bytes]]:
    """(base, updates): the wires that set the scene (delegations, registry,
    records), and ``changes`` updates, interleaved writer by writer."""
    rng = random.Random(seed)
    keys = [KeyPair(bytes([0x10 + w]) * 32) for w in range(writers)]
    grids = [LocalRegistry.open_path(root / f"w{w}", k, delegation=sign_delegation(ORG, k.did, ["node", "writer"]))
             for w, k in enumerate(keys)]
    try:
        first = grids[0]
        first.create_registry(REG, ["cluster"], write_policy="members", conflict_policy=POLICY)
        per_writer = changes // writers
        ids = ["hot"] if hot else [f"w{w}-r{r}" for w in range(writers) for r in range(max(1, per_writer // 10))]
        for record_id in ids:
            first.put(REG, "cluster", {"name": record_id, "score": 0, "labels": []}, id=record_id)
        base: dict[bytes, bytes] = {}
        for grid in grids:
            for wire in _wires(grid):
                base.setdefault(open_envelope(wire, verify=False).cid, wire)
        for grid in grids[1:]:
            grid.execute([Remote(w, "base") for w in _wires(first)])
        heads = [g.feed_head() for g in grids]
        for w, grid in enumerate(grids):
            mine = ["hot"] if hot else [i for i in ids if i.startswith(f"w{w}-")]
            for i in range(per_writer):
                grid.update(REG, mine[i % len(mine)], patch=_patch(rng, w, i))
        streams = [[x for x in _wires(g, heads[w])] for w, g in enumerate(grids)]
        updates = [s[i] for i in range(per_writer) for s in streams if i < len(s)]
        return list(base.values()), updates
    finally:
        for grid in grids:
            grid.close()


def ours(base: list[bytes], updates: list[bytes]) -> tuple[float, dict[str, Any]]:
    path = tempfile.mkdtemp(prefix="rgrid-bench-conflicts-")
    grid = LocalRegistry.open_path(path, KeyPair(b"\x99" * 32))
    try:
        grid.execute([Remote(w, "base") for w in base])
        _forget_verified()
        t0 = time.perf_counter()
        for start in range(0, len(updates), APPLY_CHUNK):
            outcomes = grid.execute([Remote(w, "bench") for w in updates[start:start + APPLY_CHUNK]])
            assert all(o.status == "applied" for o in outcomes), [o.error for o in outcomes[:3]]  # type: ignore[union-attr]
        elapsed = time.perf_counter() - t0
        conflicts = sum(len(r["conflicts"]) for r in grid.iter_all(REG))
        return elapsed, {"conflicts shown": conflicts, "settled": grid.engine.metrics["conflicts.settled"]}
    finally:
        grid.close()
        shutil.rmtree(path, ignore_errors=True)


def _automerge_parts(base: list[bytes], updates: list[bytes]) -> tuple[dict[str, bytes], list[tuple[str, bytes]]]:
    """Each record's starting document (its snapshot's genesis change) and
    the updates' Automerge changes in delivery order."""
    from registrygrid.crdt.snapshot import genesis_change, read_snapshot

    starts = {}
    for wire in base:
        body = open_envelope(wire, verify=False).body
        if body.registry == REG and body.is_snapshot:
            claim = read_snapshot(body.payload, kind=body.kind, schema=body.schema)
            starts[body.record] = genesis_change(claim, body.author).raw_bytes
    ordered = []
    for wire in updates:
        body = open_envelope(wire, verify=False).body
        ordered.append((body.record, body.payload))
    return starts, ordered


def _walk(doc: Document, obj: Any = ROOT, kind: ObjType = ObjType.Map) -> Any:
    if kind == ObjType.Map:
        return {k: (_walk(doc, c, v) if isinstance(v, ObjType) else v[1])
                for k, (v, c) in zip(doc.keys(obj), doc.values(obj))}
    return [(_walk(doc, c, v) if isinstance(v, ObjType) else v[1]) for v, c in doc.values(obj)]


def automerge_incremental(starts: dict[str, bytes], ordered: list[tuple[str, bytes]]) -> float:
    docs = {record: RecordDoc(Document.load(genesis)) for record, genesis in starts.items()}
    t0 = time.perf_counter()
    for record, change in ordered:
        docs[record].add_change(change)
        _walk(docs[record].doc)
    return time.perf_counter() - t0


def automerge_bulk(starts: dict[str, bytes], ordered: list[tuple[str, bytes]]) -> float:
    grouped: dict[str, list[bytes]] = {r: [g] for r, g in starts.items()}
    for record, change in ordered:
        grouped[record].append(change)
    t0 = time.perf_counter()
    for parts in grouped.values():
        _walk(Document.load(b"".join(parts)))
    return time.perf_counter() - t0


def run(writers: int, changes: int) -> tuple[list[Figure], dict[str, float]]:
    figures: list[Figure] = []
    ratios: dict[str, float] = {}
    for hot in (True, False):
        shape = "hot (one record)" if hot else "cold (own records)"
        root = Path(tempfile.mkdtemp(prefix="rgrid-bench-conflicts-src-"))
        try:
            base, updates = make_changes(root, writers, changes, hot=hot)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        n = len(updates)
        ours_s, seen = ours(base, updates)
        starts, ordered = _automerge_parts(base, updates)
        inc_s = automerge_incremental(starts, ordered)
        bulk_s = automerge_bulk(starts, ordered)
        _forget_verified()
        raw = raw_same_envelopes(updates, APPLY_CHUNK)
        detail = f"n={n}, {writers} writers"
        figures += [
            Figure(f"{shape}: ours (engine ingest, policies)", n / ours_s, "changes/s",
                   f"{detail}; {seen['conflicts shown']} conflicts shown, {seen['settled']} settled"),
            Figure(f"{shape}: Automerge, incremental", n / inc_s, "changes/s", detail),
            Figure(f"{shape}: Automerge, bulk load", n / bulk_s, "changes/s", detail),
            Figure(f"{shape}: raw decode+verify+put", raw.value, "changes/s", raw.detail),
        ]
        key = "hot" if hot else "cold"
        ratios[f"{key}: ours / Automerge incremental"] = inc_s / ours_s
        ratios[f"{key}: ours / Automerge bulk"] = bulk_s / ours_s
        ratios[f"{key}: ours / raw"] = (n / ours_s) / raw.value
    return figures, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures, ratios = run(args.writers, args.changes)
    if args.json:
        print(json.dumps({"figures": [f.__dict__ for f in figures], "ratios": ratios}, indent=2))
        return 0
    for f in figures:
        print(f"{f.name:<52} {f.value:>10,.0f} {f.unit:<10} {f.detail}")
    for name, value in ratios.items():
        print(f"{name:<52} {value:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
