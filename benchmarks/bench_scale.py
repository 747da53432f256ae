"""Write rate, disk use and random reads of one store as it grows to N records.

Writes N small records (1,000,000 by default) through the SDK into a fresh
home: ``put_many`` in batches of --batch (one durable transaction each), each
a ``cluster`` in ``grid.clusters`` with three fields (name, region, status),
ids made by the engine. Prints, in one run:
  - the write rate of every slice of 100,000 records (of every tenth when N
    is under 1M), as the slice ends: does a write cost more as the trees
    get deeper? The time of a slice is the time spent inside ``put_many``
    (building the batches and measuring the raw limit are not counted);
  - the raw limit of the same work on this machine: msgpack encode +
    Ed25519 sign + batched durable LMDB put of records as big as ours
    (``benchmarks.limits.raw_write_pipeline``, the figure bench_core
    compares with), measured after the first batch (whose records give the
    size) and again after the last, as the machine drifts over a long run;
    and our rates as ratios of it;
  - bytes on disk per record: the size of the LMDB data file over N, and
    the store's used pages (``stats()["bytes_used"]``) over N; both count
    every sub-database a write fills, and LMDB's free pages in the file;
  - random reads: ``get`` by id through the SDK of --gets records drawn at
    random from the whole store, beside bare random LMDB gets of values as
    big as a record (``benchmarks.limits.raw_lmdb_get``, over at most
    500,000 keys, as many as fit its 1 GiB map).

Goals: the last 100k slice writes at >= 80% of the first one's
rate; <= 2 KB on disk per record. On a small shared machine a single slice
swings by +-20%, so read the ratio beside the raw limit measured at each
end. The home lives in a temp dir in ``$RGRID_BENCH_DIR`` (else the system
temp dir) and is removed at the end, or in --dir (a new directory, kept);
a durable figure only means something on a real disk.

    python -m benchmarks.bench_scale [--records 1000000] [--batch 2000]
                                     [--gets 100000] [--dir PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import msgpack

import registrygrid
from benchmarks import limits
from benchmarks.limits import Figure
from registrygrid.home import Home

REGISTRY = "grid.clusters"
KIND = "cluster"
REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-south-1", "ap-northeast-1")
STATUSES = ("active", "maintenance", "draining", "offline")  # the cluster.v1 schema's enum
SLICE = 100_000  # the goal is stated per 100k records
GOAL_LAST_OVER_FIRST = 0.8  # the scale goal: a full store writes nearly as fast as an empty one
GOAL_BYTES_PER_RECORD = 2048  # the scale goal: <= 2 KB on disk per small record
# raw_lmdb_get fills its keys in a temporary LMDB map of 1 GiB
# (limits.MAP_SIZE); half a million ~500-byte values stay well inside it.
RAW_GET_MAX_KEYS = 500_000
RAW_WRITE_N = 20_000  # as bench_core's default --n
RAW_MAX_SECONDS = 30.0  # as bench_core


@dataclass(frozen=True)
class Slice:
    first: int  # index of its first record
    records: int
    seconds: float  # inside put_many
    cpu: float  # this process's CPU seconds over the same calls

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")


def cluster_fields(i: int) -> dict[str, str]:
    """Three small fields that the cluster.v1 schema accepts (only ``name`` is required)."""
    return {"name": f"cluster-{i:07d}", "region": REGIONS[i % len(REGIONS)], "status": STATUSES[i % len(STATUSES)]}


def write_all(grid: registrygrid.LocalRegistry, n: int, batch: int, slice_size: int, keep: set[int],
              after_first_batch: Callable[[registrygrid.WriteResult], None],
              on_slice: Callable[[Slice], None]) -> tuple[list[Slice], dict[int, str]]:
    """Write n records in batches that never cross a slice boundary; return
    the slices and the ids of the records whose index is in ``keep``."""
    slices: list[Slice] = []
    kept: dict[int, str] = {}
    for first in range(0, n, slice_size):
        end = min(n, first + slice_size)
        seconds = cpu = 0.0
        for start in range(first, end, batch):
            puts = [registrygrid.Put(REGISTRY, KIND, cluster_fields(i)) for i in range(start, min(end, start + batch))]
            t0, c0 = time.perf_counter(), time.process_time()
            outcomes = grid.put_many(puts)
            seconds += time.perf_counter() - t0
            cpu += time.process_time() - c0
            for i, outcome in enumerate(outcomes, start):
                if isinstance(outcome, registrygrid.RegistryError):
                    raise outcome
                if i in keep:
                    kept[i] = outcome.record_id
            if start == 0:
                after_first_batch(outcomes[0])
        slices.append(Slice(first, end - first, seconds, cpu))
        on_slice(slices[-1])
    return slices, kept


def random_gets(grid: registrygrid.LocalRegistry, ids: list[str]) -> Figure:
    t0 = time.perf_counter()
    for record_id in ids:
        grid.get(REGISTRY, record_id)
    elapsed = time.perf_counter() - t0
    return Figure("ours: SDK get by id, random", len(ids) / elapsed, "records/s",
                  f"n={len(ids)} distinct ids drawn from the whole store, one read txn each")


def _slice_figure(name: str, s: Slice) -> Figure:
    return Figure(name, s.rate, "records/s", f"records {s.first:,}-{s.first + s.records - 1:,}, "
                                             f"cpu {100 * s.cpu / s.seconds:.0f}%")


def _slice_line(s: Slice) -> str:
    return (f"  records {s.first:>9,} - {s.first + s.records - 1:>9,}  {s.rate:>8,.0f} records/s  "
            f"cpu {100 * s.cpu / s.seconds:3.0f}%")


def run(n: int, batch: int, gets: int, root: Path, *, progress: bool) -> dict:
    slice_size = SLICE if n >= 1_000_000 else max(1, n // 10)
    gets = min(gets, n)
    rng = random.Random(17)
    keep = set(rng.sample(range(n), gets))
    home = Home(root)
    home.init()
    raw: list[Figure] = []
    record_bytes: list[int] = []
    # The raw pipeline's smallest record (its envelope fields alone) is
    # bigger than ours; it is then compared at that size, and says so.
    smallest_raw = len(msgpack.packb(limits.make_record(0, 0)))

    def measure_raw(label: str) -> None:
        size = max(record_bytes[0], smallest_raw)
        fig = limits.raw_write_pipeline(n=RAW_WRITE_N, record_bytes=size, batch=batch, max_seconds=RAW_MAX_SECONDS)
        raw.append(replace(fig, name=f"{fig.name}, {label}"))
        if progress:
            print(f"  raw limit {label}: {fig.value:,.0f} records/s", flush=True)

    def after_first_batch(result: registrygrid.WriteResult) -> None:
        record_bytes.append(len(msgpack.packb(result.record)))
        measure_raw("after the first batch")

    def on_slice(s: Slice) -> None:
        if progress:
            print(_slice_line(s), flush=True)

    if progress:
        print(f"writing {n:,} records in batches of {batch:,} into {root}; rate per slice of {slice_size:,}",
              flush=True)
    with registrygrid.open(home) as grid:
        t0 = time.perf_counter()
        slices, kept = write_all(grid, n, batch, slice_size, keep, after_first_batch, on_slice)
        wall = time.perf_counter() - t0
        measure_raw("after the last batch")
        ids = [kept[i] for i in sorted(kept)]
        rng.shuffle(ids)
        get = random_gets(grid, ids)
        stats = grid.stats()
    data_file = home.store_path / "data.mdb"
    file_bytes = data_file.stat().st_size
    # raw_lmdb_get draws its gets from at most n keys: as many gets as keys, for a tree as deep as it can be.
    raw_keys = min(n, RAW_GET_MAX_KEYS)
    raw_get = limits.raw_lmdb_get(n=max(gets, raw_keys), stored=raw_keys, value_bytes=record_bytes[0])

    write_seconds = sum(s.seconds for s in slices)
    first, last = slices[0], slices[-1]
    raw_first, raw_last = raw
    raw_mean = (raw_first.value + raw_last.value) / 2
    bytes_used = stats.get("bytes_used")
    figures = [
        raw_first,
        _slice_figure("ours: first slice", first),
        raw_last,
        _slice_figure("ours: last slice", last),
        Figure("ours: all writes", n / write_seconds, "records/s",
               f"n={n}, batch {batch}, durable, {record_bytes[0]}-byte record, "
               f"{write_seconds:.1f} s in put_many ({wall:.1f} s wall)"),
        Figure("disk: data file per record", file_bytes / n, "bytes",
               f"{data_file.name} {file_bytes / 2**20:,.1f} MiB over {n:,} records"),
    ]
    if bytes_used is not None:
        figures.append(Figure("disk: used pages per record", bytes_used / n, "bytes",
                              f"stats()['bytes_used'] {bytes_used / 2**20:,.1f} MiB"))
    figures += [raw_get, get]
    last_over_first = last.rate / first.rate
    per_record = file_bytes / n
    ratios = {
        "last slice / first slice": last_over_first,
        "first slice / raw after the first batch": first.rate / raw_first.value,
        "last slice / raw after the last batch": last.rate / raw_last.value,
        "all writes / raw (mean of the two)": (n / write_seconds) / raw_mean,
        "raw after the last / after the first batch": raw_last.value / raw_first.value,
        "random get / raw LMDB random get": get.value / raw_get.value,
    }
    goals = {
        f"last slice >= {GOAL_LAST_OVER_FIRST:.0%} of first": {
            "value": round(last_over_first, 3), "met": last_over_first >= GOAL_LAST_OVER_FIRST},
        f"<= {GOAL_BYTES_PER_RECORD} bytes on disk per record": {
            "value": round(per_record, 1), "met": per_record <= GOAL_BYTES_PER_RECORD},
    }
    return {
        "records": n, "batch": batch, "slice": slice_size, "record_bytes": record_bytes[0],
        "slices": [{**asdict(s), "rate": round(s.rate, 1)} for s in slices],
        "figures": [asdict(f) for f in figures],
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "goals": goals,
        "store": {"data_file_bytes": file_bytes, "bytes_used": bytes_used,
                  **{k: v for k, v in stats.items() if k.startswith("entries.")}},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000, help="records to write (default 1,000,000)")
    ap.add_argument("--batch", type=int, default=2000, help="records per put_many (one durable transaction)")
    ap.add_argument("--gets", type=int, default=100_000, help="random gets by id after the writes")
    ap.add_argument("--dir", type=Path, help="create the home here (a new directory, kept) instead of a temp dir")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.records < 10 or args.batch < 1 or args.gets < 1:
        ap.error("--records must be at least 10 (ten slices), --batch and --gets at least 1")
    if args.dir is not None and args.dir.exists() and any(args.dir.iterdir()):
        ap.error(f"--dir {args.dir} is not empty; give a new directory")
    tmp = None if args.dir else Path(tempfile.mkdtemp(prefix="rgrid-bench-scale-",
                                                      dir=os.environ.get("RGRID_BENCH_DIR") or None))
    load0 = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        result = run(args.records, args.batch, args.gets, args.dir or tmp / "home", progress=not args.json)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    result.update(seconds=round(time.perf_counter() - started, 1), cpus=os.cpu_count(), load_before=load0,
                  load_after=os.getloadavg()[0])
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print()
    print(limits.format_table([Figure(**f) for f in result["figures"]]))
    print()
    for name, value in result["ratios"].items():
        print(f"{name:<44} {value:7.1%}")
    for name, goal in result["goals"].items():
        print(f"goal: {name:<38} {goal['value']:>7}  {'met' if goal['met'] else 'MISSED'}")
    print(f"\n{result['seconds']} s on {result['cpus']} CPUs; 1-min load {load0:.2f} before, "
          f"{result['load_after']:.2f} after (other work on the machine skews every figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
