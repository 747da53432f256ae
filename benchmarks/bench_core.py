"""Write and read throughput of the node core, beside the machine's raw limit.

Prints, in one run:
  - the raw limit: msgpack encode + Ed25519 sign + batched durable LMDB put
    of the same records, no registry logic (benchmarks.limits);
  - our SDK writes: one durable transaction per write, and batched
    (``put_many``: one transaction per batch, as group commit does);
  - our read + verify: get a record, fetch its latest envelope, check its
    signature;
  - the ratios. The goal of issue 2: batched writes >= 50% of the raw limit.

    python -m benchmarks.bench_core [--n 20000] [--batch 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time

from benchmarks.limits import Figure, format_table, make_record, raw_read_verify, raw_write_pipeline
from registrygrid.engine.ops import Put
from registrygrid.protocol.envelope import cid_from_str, open_envelope
from registrygrid.sdk import LocalRegistry


def _function_fields(i: int, rng: random.Random) -> dict:
    fields = make_record(i, 430, rng)["fields"]
    fields["executor"] = {"type": "container", "image": "ghcr.io/acme/summarize:1.4.2"}
    return fields


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
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    raw = raw_write_pipeline(n=args.n, batch=args.batch, max_seconds=30)
    batched = ours_batched(args.n, args.batch)
    single = ours_single(args.single)
    raw_read = raw_read_verify(n=args.n, max_seconds=30)
    read = ours_read_verify(min(args.n, 10000))
    figures = [raw, batched, single, raw_read, read]
    ratios = {
        "batched / raw write": batched.value / raw.value,
        "single / raw write": single.value / raw.value,
        "read+verify / raw read+verify": read.value / raw_read.value,
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
