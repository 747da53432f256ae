"""The raw limits of this machine, measured beside every RegistryGrid figure.

Each benchmark of ours prints its own figure next to the bare limit of the
same machine in the same run (DESIGN.md, "Non-negotiables"), as a ratio:
"our write path does X records/s = 0.6 x the bare sign+LMDB pipeline". The
functions here measure those bare limits with the same libraries our node
uses (PyNaCl, msgpack, lmdb, aiohttp, py-libp2p), none of our code.

Every function is pure in the sense that matters for a benchmark: it takes
sizes, builds what it needs in a temporary place, removes it, and returns a
``Figure``. Each measurement is bounded (a few seconds; loops stop early at
``max_seconds`` and report the count they reached in ``detail``). Setup
(building records, signing the inputs of a verify test, filling a store) is
not timed.

    python -m benchmarks.limits           # table
    python -m benchmarks.limits --json    # {"figures": [...], "seconds", ...}
    python -m benchmarks.limits --quick   # smaller sizes, for a smoke test

Record model: a realistic registry record (registry, id, kind, schema,
owner DID, author sequence, previous-envelope hash, HLC, tags, links and a
few fields), padded so its msgpack encoding is ``record_bytes`` long. The
signed form stored and "sent" is ``msgpack([body, signature])`` with a
detached 64-byte Ed25519 signature over ``body``. Keys are
``registry/record-id`` with a random component, so LMDB puts land in random
B-tree positions as record ids do.

LMDB temporary directories are created in ``$RGRID_BENCH_DIR`` if set, else
the system temp dir; a durable figure is only meaningful on a real disk
(``detail`` names the file system; on tmpfs fsync costs nothing).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import lmdb
import msgpack
from nacl.signing import SigningKey, VerifyKey

__all__ = [
    "Figure",
    "all_figures",
    "bare_aiohttp_lone_post",
    "bare_aiohttp_rps",
    "bare_libp2p_roundtrip",
    "bare_libp2p_stream",
    "cpu_python_loop",
    "disk_sync_after_writes",
    "lmdb_lone_write_shape",
    "make_record",
    "raw_lmdb_batched_put",
    "raw_lmdb_get",
    "raw_read_verify",
    "raw_sign",
    "raw_verify",
    "raw_verify_pipeline",
    "raw_write_pipeline",
    "raw_write_single_durable",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAP_SIZE = 1 << 30  # sparse file; far more than any run here writes
SEED = bytes(range(32))  # fixed signing seed: runs are comparable


@dataclass(frozen=True)
class Figure:
    name: str  # "raw sign+LMDB batched put"
    value: float
    unit: str  # "records/s", "req/s", "MB/s", "ms"
    detail: str = ""  # e.g. "n=20000, 430-byte record, batch 1000"


# ----------------------------------------------------------------- records


def _record_skeleton(i: int, rng: random.Random, description: str) -> dict:
    # Random part first: record ids are not in insertion order, so puts land
    # at random B-tree positions (an append-only key pattern would be faster).
    rid = f"fn-{rng.getrandbits(64):016x}-{i}"
    return {
        "registry": "grid.functions",
        "id": rid,
        "kind": "function",
        "schema": "grid.function/1.2.0",
        "owner": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
        "author_seq": i + 1,
        "prev": rng.getrandbits(256).to_bytes(32, "big"),
        "hlc": [1_764_000_000_000 + i, i % 16],
        "tags": ["inference", "text", "gpu"],
        "links": [{"rel": "runs-on", "to": "grid.compute/cluster-7"}],
        "fields": {
            "name": f"summarize-{i}",
            "version": "1.4.2",
            "endpoint": "https://fn.example.org/v1/summarize",
            "description": description,
        },
    }


@lru_cache(maxsize=8)
def _description_len(record_bytes: int) -> int:
    """Padding length that makes a typical record encode to record_bytes."""
    rng = random.Random(0)
    base = len(msgpack.packb(_record_skeleton(50_000, rng, "")))
    pad = max(0, record_bytes - base)
    # The str header grows by 1-2 bytes past 31/255 chars; settle it.
    for _ in range(4):
        rng = random.Random(0)
        size = len(msgpack.packb(_record_skeleton(50_000, rng, "x" * pad)))
        if size == record_bytes or pad == 0:
            break
        pad = max(0, pad + record_bytes - size)
    return pad


_WORDS = (
    "summarizes long documents into short abstracts with citations "
    "for the open grid, runs on shared gpu clusters under org policy "
).split()


def make_record(i: int, record_bytes: int = 430, rng: random.Random | None = None) -> dict:
    """A realistic registry record whose msgpack encoding is ~record_bytes."""
    rng = rng or random.Random(i)
    n = _description_len(record_bytes)
    words: list[str] = []
    length = 0
    while length < n:
        w = _WORDS[rng.randrange(len(_WORDS))]
        words.append(w)
        length += len(w) + 1
    desc = " ".join(words)[:n].ljust(n)
    return _record_skeleton(i, rng, desc)


def _key(rec: dict) -> bytes:
    return f"{rec['registry']}/{rec['id']}".encode()


def _records(n: int, record_bytes: int) -> list[dict]:
    rng = random.Random(1234)
    return [make_record(i, record_bytes, rng) for i in range(n)]


def _signed(n: int, record_bytes: int) -> tuple[list[bytes], list[bytes], bytes]:
    """(keys, wire envelopes msgpack([body, sig]), verify-key bytes)."""
    sk = SigningKey(SEED)
    keys, wires = [], []
    for rec in _records(n, record_bytes):
        body = msgpack.packb(rec)
        keys.append(_key(rec))
        wires.append(msgpack.packb([body, sk.sign(body).signature]))
    return keys, wires, bytes(sk.verify_key)


# -------------------------------------------------------------------- LMDB


def _bench_dir() -> str | None:
    return os.environ.get("RGRID_BENCH_DIR") or None


def _fs_type(path: str) -> str:
    """File system type of path, from /proc/mounts (longest mount prefix)."""
    best, fstype = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    mnt = parts[1]
                    if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                        best, fstype = mnt, parts[2]
    except OSError:
        pass
    return fstype


@contextmanager
def _temp_env(durable: bool) -> Iterator[tuple[lmdb.Environment, str]]:
    d = tempfile.mkdtemp(prefix="rgrid-limits-", dir=_bench_dir())
    env = lmdb.open(d, map_size=MAP_SIZE, sync=durable, metasync=durable, max_dbs=0)
    try:
        yield env, _fs_type(os.path.realpath(d))
    finally:
        env.close()
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for one timed batch, as the engine
    runs each of its batches (registrygrid.engine.engine.cyclic_gc_paused):
    a limit measured with the collector's heap walks in it would be one
    that ours does not pay, and the ratios would flatter ours."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _fill(env: lmdb.Environment, keys: list[bytes], values: list[bytes], batch: int = 5000) -> None:
    for s in range(0, len(keys), batch):
        with env.begin(write=True) as txn:
            for k, v in zip(keys[s : s + batch], values[s : s + batch]):
                txn.put(k, v)


def _rate(count: int, elapsed: float) -> float:
    return round(count / elapsed, 1) if elapsed > 0 else float("inf")


def _cpu_note(c0: float, elapsed: float) -> str:
    """", cpu NN%": this process's CPU time over wall time while measured.

    Near 100% for a CPU-bound loop on an idle core; clearly less means the
    figure waited on the disk (fsync) or other work on the machine took the
    CPU (then the figure is low and should be re-run).
    """
    if elapsed <= 0:
        return ""
    return f", cpu {100 * (time.process_time() - c0) / elapsed:.0f}%"


def _done_note(done: int, n: int) -> str:
    return f"n={done}" if done == n else f"n={done} of {n} (time cap)"


# ------------------------------------------------------- local pipelines


def raw_write_pipeline(
    n: int = 20000,
    record_bytes: int = 430,
    batch: int = 1000,
    durable: bool = True,
    max_seconds: float = 5.0,
) -> Figure:
    """msgpack-encode + Ed25519-sign + LMDB put, `batch` records a transaction.

    Each transaction is committed durably (LMDB sync=True: one fsync per
    commit) unless durable=False. This is the bare pipeline the node's write
    path (group commit) is compared with.
    """
    sk = SigningKey(SEED)
    recs = _records(n, record_bytes)
    pack = msgpack.packb
    sign = sk.sign
    done = 0
    with _temp_env(durable) as (env, fs):
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            with gc_paused(), env.begin(write=True) as txn:
                put = txn.put
                for rec in recs[s : s + batch]:
                    body = pack(rec)
                    put(f"{rec['registry']}/{rec['id']}".encode(), pack([body, sign(body).signature]))
            done = min(n, s + batch)
            if time.perf_counter() - t0 > max_seconds:
                break
        elapsed = time.perf_counter() - t0
        cpu = _cpu_note(c0, elapsed)
    return Figure(
        "raw msgpack+sign+LMDB batched put",
        _rate(done, elapsed),
        "records/s",
        f"{_done_note(done, n)}, {record_bytes}-byte record, batch {batch}, "
        f"{'durable (sync) commit' if durable else 'no sync'}, {fs}" + cpu,
    )


def raw_write_single_durable(n: int = 2000, record_bytes: int = 430, max_seconds: float = 5.0) -> Figure:
    """One sign + one durable LMDB transaction per record: the fsync-bound rate."""
    sk = SigningKey(SEED)
    recs = _records(n, record_bytes)
    done = 0
    with _temp_env(True) as (env, fs):
        t0, c0 = time.perf_counter(), time.process_time()
        for rec in recs:
            body = msgpack.packb(rec)
            wire = msgpack.packb([body, sk.sign(body).signature])
            with env.begin(write=True) as txn:
                txn.put(_key(rec), wire)
            done += 1
            if (done & 63) == 0 and time.perf_counter() - t0 > max_seconds:
                break
        elapsed = time.perf_counter() - t0
        cpu = _cpu_note(c0, elapsed)
    return Figure(
        "raw sign+LMDB single durable txn",
        _rate(done, elapsed),
        "records/s",
        f"{_done_note(done, n)}, {record_bytes}-byte record, 1 record per sync commit, {fs}" + cpu,
    )


PAGE = 4096


def disk_sync_after_writes(pages: int, *, contiguous: bool, n: int = 150, file_mb: int = 64) -> Figure:
    """p50 of ``fdatasync`` after writing ``pages`` 4 KiB pages to a file,
    either at scattered offsets or as one contiguous run.

    LMDB's durable commit is exactly this: copy-on-write puts each page a
    transaction changes at a free place of its file, then one fdatasync.
    On a disk that pays per I/O request (this VM's virtio disk does, ~70 us
    a page), a commit costs by the number of scattered pages it dirties,
    not by its bytes, which is why the store's layout counts pages.
    """
    d = tempfile.mkdtemp(prefix="rgrid-limits-", dir=_bench_dir())
    path = os.path.join(d, "pages.bin")
    rng = random.Random(11)
    slots = file_mb * 2**20 // PAGE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            chunk = b"\0" * 2**20
            for off in range(0, file_mb * 2**20, len(chunk)):  # a real, allocated file, like a grown LMDB map
                os.pwrite(fd, chunk, off)
            os.fsync(fd)
            page = b"\1" * PAGE
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                if contiguous:
                    os.pwrite(fd, page * pages, rng.randrange(slots - pages) * PAGE)
                else:
                    for slot in rng.sample(range(slots), pages):
                        os.pwrite(fd, page, slot * PAGE)
                os.fdatasync(fd)
                times.append(time.perf_counter() - t0)
        finally:
            os.close(fd)
        fs = _fs_type(os.path.realpath(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    layout = "contiguous" if contiguous else "scattered"
    return Figure(f"disk: fdatasync after {pages} {layout} 4 KiB page writes, p50",
                  round(statistics.median(times) * 1000, 3), "ms", f"n={n}, {file_mb} MiB file, {fs}")


# Trees a lone write touches, as (keys each record adds, puts one write
# makes): ours, and the fewest the design allows.
_OUR_WRITE_SHAPE = (
    (1, 1),  # changes, by CID
    (1, 1),  # chain links
    (3, 1),  # Automerge docs (with hash and history keys beside each)
    (1, 1),  # materialized records
    (1, 1),  # feed
    (1, 1),  # audit
    (4, 4),  # secondary indexes: kind, owner and two tags, four places in one tree
)
# One tree for everything, and only the places DESIGN.md's write needs:
# the change as the feed's entry, a CID lookup, the author's chain link,
# document and record as one value, four index keys, the audit entry.
_MINIMAL_WRITE_SHAPE = ((11, 9),)


def lmdb_lone_write_shape(n: int = 300, entries: int = 20000, max_seconds: float = 5.0, *,
                          minimal: bool = False) -> Figure:
    """p50 of a durable LMDB commit shaped like one lone write, with no CPU
    work. ``minimal=False``: ours, one put in each of six trees (changes,
    chain links, Automerge docs, records, feed, audit), four in a seventh
    (the secondary indexes: kind, owner and two tags land in different
    parts of it) and one in a small meta tree. ``minimal=True``: the fewest
    places the design's one-transaction write can touch (9, all in one
    tree, no meta). The trees are filled first as a store of ``entries``
    records fills them, so they have its depth. An approximation (random
    keys, 300-byte values) of the I/O a lone write pays; what it takes
    beyond this is the CPU of the write itself."""
    rng = random.Random(5)
    shape = _MINIMAL_WRITE_SHAPE if minimal else _OUR_WRITE_SHAPE
    d = tempfile.mkdtemp(prefix="rgrid-limits-", dir=_bench_dir())
    env = lmdb.open(d, map_size=MAP_SIZE, max_dbs=8)
    try:
        trees = [env.open_db(f"tree{i}".encode()) for i in range(len(shape))]
        meta = None if minimal else env.open_db(b"meta")
        for db, (keys_per_record, _) in zip(trees, shape):
            with env.begin(write=True) as txn:
                for _ in range(entries * keys_per_record):
                    txn.put(rng.randbytes(16), rng.randbytes(300), db=db)
        puts = [db for db, (_, count) in zip(trees, shape) for _ in range(count)]
        times = []
        deadline = time.perf_counter() + max_seconds
        for _ in range(n):
            t0 = time.perf_counter()
            with env.begin(write=True) as txn:
                for db in puts:
                    txn.put(rng.randbytes(16), rng.randbytes(300), db=db)
                if meta is not None:
                    txn.put(b"state", rng.randbytes(200), db=meta)
            times.append(time.perf_counter() - t0)
            if t0 > deadline:
                break
        fs = _fs_type(os.path.realpath(d))
    finally:
        env.close()
        shutil.rmtree(d, ignore_errors=True)
    label = ("the fewest places the design allows (9 puts, 1 tree)" if minimal
             else "a lone write of ours (11 puts, 8 trees)")
    return Figure(f"LMDB durable commit shaped like {label}, p50",
                  round(statistics.median(times) * 1000, 3), "ms",
                  f"n={len(times)}, trees as a store of {entries} records fills them, random keys, "
                  f"no CPU work, {fs}")


def raw_verify_pipeline(
    n: int = 20000, record_bytes: int = 430, batch: int = 1000, max_seconds: float = 5.0
) -> Figure:
    """Remote ingest: decode envelope, verify, decode body, durable batched put."""
    keys, wires, vk_bytes = _signed(n, record_bytes)
    verify = VerifyKey(vk_bytes).verify
    unpack = msgpack.unpackb
    done = 0
    with _temp_env(True) as (env, fs):
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            with gc_paused(), env.begin(write=True) as txn:
                put = txn.put
                for wire in wires[s : s + batch]:
                    body, sig = unpack(wire)
                    verify(body, sig)
                    rec = unpack(body)
                    put(f"{rec['registry']}/{rec['id']}".encode(), wire)
            done = min(n, s + batch)
            if time.perf_counter() - t0 > max_seconds:
                break
        elapsed = time.perf_counter() - t0
        cpu = _cpu_note(c0, elapsed)
    return Figure(
        "raw decode+verify+LMDB batched put",
        _rate(done, elapsed),
        "records/s",
        f"{_done_note(done, n)}, {record_bytes}-byte record, batch {batch}, durable commit, {fs}" + cpu,
    )


def raw_read_verify(n: int = 20000, record_bytes: int = 430, max_seconds: float = 5.0) -> Figure:
    """LMDB get (random order, one read txn) + decode + verify of stored records."""
    keys, wires, vk_bytes = _signed(n, record_bytes)
    verify = VerifyKey(vk_bytes).verify
    unpack = msgpack.unpackb
    order = list(range(n))
    random.Random(7).shuffle(order)
    done = 0
    with _temp_env(False) as (env, fs):
        _fill(env, keys, wires)
        t0, c0 = time.perf_counter(), time.process_time()
        j = 0
        with env.begin() as txn:
            get = txn.get
            for j, i in enumerate(order, 1):
                body, sig = unpack(get(keys[i]))
                verify(body, sig)
                unpack(body)
                if (j & 1023) == 0 and time.perf_counter() - t0 > max_seconds:
                    break
            done = j
        elapsed = time.perf_counter() - t0
        cpu = _cpu_note(c0, elapsed)
    return Figure(
        "raw LMDB get+decode+verify",
        _rate(done, elapsed),
        "records/s",
        f"{_done_note(done, n)}, {record_bytes}-byte record, random order, one read txn" + cpu,
    )


def raw_lmdb_get(n: int = 100000, stored: int = 50000, value_bytes: int = 500, max_seconds: float = 5.0) -> Figure:
    """Random LMDB gets (value copied to bytes) in one read transaction."""
    stored = max(1, min(stored, n))
    rng = random.Random(11)
    keys = [f"grid.functions/fn-{rng.getrandbits(64):016x}-{i}".encode() for i in range(stored)]
    blob = rng.randbytes(value_bytes + stored)
    values = [blob[i : i + value_bytes] for i in range(stored)]
    order = [rng.randrange(stored) for _ in range(n)]
    done = 0
    with _temp_env(False) as (env, fs):
        _fill(env, keys, values, batch=stored)
        t0, c0 = time.perf_counter(), time.process_time()
        j = 0
        with env.begin() as txn:
            get = txn.get
            for j, i in enumerate(order, 1):
                get(keys[i])
                if (j & 8191) == 0 and time.perf_counter() - t0 > max_seconds:
                    break
            done = j
        elapsed = time.perf_counter() - t0
        cpu = _cpu_note(c0, elapsed)
    return Figure(
        "raw LMDB random get",
        _rate(done, elapsed),
        "gets/s",
        f"{_done_note(done, n)} gets over {stored} keys, {value_bytes}-byte values, one read txn" + cpu,
    )


# Components: they explain the pipelines above (which part is the limit).


def raw_sign(n: int = 20000, record_bytes: int = 430) -> Figure:
    sk = SigningKey(SEED)
    bodies = [msgpack.packb(r) for r in _records(min(n, 1000), record_bytes)]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        sk.sign(bodies[i % len(bodies)])
    elapsed = time.perf_counter() - t0
    cpu = _cpu_note(c0, elapsed)
    return Figure("Ed25519 sign (PyNaCl)", _rate(n, elapsed), "ops/s", f"n={n}, {record_bytes}-byte message" + cpu)


def raw_verify(n: int = 10000, record_bytes: int = 430) -> Figure:
    _, wires, vk_bytes = _signed(min(n, 1000), record_bytes)
    pairs = [msgpack.unpackb(w) for w in wires]
    verify = VerifyKey(vk_bytes).verify
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        body, sig = pairs[i % len(pairs)]
        verify(body, sig)
    elapsed = time.perf_counter() - t0
    cpu = _cpu_note(c0, elapsed)
    return Figure("Ed25519 verify (PyNaCl)", _rate(n, elapsed), "ops/s", f"n={n}, {record_bytes}-byte message" + cpu)


def raw_lmdb_batched_put(n: int = 50000, value_bytes: int = 500, batch: int = 1000) -> Figure:
    """LMDB put alone (random keys), batches of `batch`, durable commit each."""
    rng = random.Random(5)
    keys = [f"grid.functions/fn-{rng.getrandbits(64):016x}-{i}".encode() for i in range(n)]
    blob = rng.randbytes(value_bytes + n)
    values = [blob[i : i + value_bytes] for i in range(n)]
    with _temp_env(True) as (env, fs):
        t0, c0 = time.perf_counter(), time.process_time()
        _fill(env, keys, values, batch=batch)
        elapsed = time.perf_counter() - t0
        cpu = _cpu_note(c0, elapsed)
    return Figure(
        "LMDB batched put",
        _rate(n, elapsed),
        "records/s",
        f"n={n}, {value_bytes}-byte values, random keys, batch {batch}, durable commit, {fs}" + cpu,
    )


def cpu_python_loop(n: int = 5_000_000) -> Figure:
    """Calibration: a pure-Python integer loop (how fast this CPU+interpreter is).

    Not a limit of ours; it explains why figures differ between machines
    (e.g. an interpreter built without PGO/LTO, or a slow or shared vCPU).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    s = 0
    for i in range(n):
        s += i
    elapsed = time.perf_counter() - t0
    cpu = _cpu_note(c0, elapsed)
    return Figure(
        "calibration: pure-Python loop",
        round(n / elapsed / 1e6, 2),
        "M iter/s",
        f"n={n}, `s += i`, Python {sys.version.split()[0]}" + cpu,
    )


# ------------------------------------------------------------ bare aiohttp


def _serve_bare_aiohttp() -> None:
    """Child process: a bare aiohttp app with one tiny JSON endpoint.

    Binds 127.0.0.1 on a free port, prints "PORT <n>" on stdout, and serves
    until its stdin closes (the parent holds the pipe, so the server dies
    with the parent even on kill -9) or 300 s pass.
    """
    import asyncio
    import socket

    from aiohttp import web

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def echo(request: web.Request) -> web.Response:
        # A POST that parses its JSON body: the least any write endpoint does.
        body = await request.json()
        return web.json_response({"ok": True, "fields": len(body)}, status=201)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/ping", ping)
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(sys.stdin.fileno(), 1) else None)
        try:
            await asyncio.wait_for(stop.wait(), timeout=300)
        except asyncio.TimeoutError:
            pass
        loop.remove_reader(sys.stdin.fileno())
        await runner.cleanup()

    asyncio.run(main())


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


@contextmanager
def _bare_aiohttp_server(start_timeout: float = 20.0) -> Iterator[tuple[int, int]]:
    """Start the bare server subprocess; yield (port, pid); always stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.limits", "--serve-bare-aiohttp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=PROJECT_ROOT,
        env=_child_env(),
    )
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=start_timeout):
            raise RuntimeError("bare aiohttp server did not start in time")
        line = proc.stdout.readline().decode().strip()
        sel.close()
        if not line.startswith("PORT "):
            raise RuntimeError(f"bare aiohttp server failed to start: {line!r}")
        yield int(line.split()[1]), proc.pid
    finally:
        try:
            proc.stdin.close()  # the server's signal to stop
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            proc.stdout.close()


def _proc_cpu_seconds(pid: int) -> float | None:
    """utime+stime of a (child) process, from /proc (Linux only)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _wrk_version(path: str) -> str:
    try:
        out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=5)
        first = (out.stdout or out.stderr).split()
        return " ".join(first[:2]) if first else "wrk"
    except (OSError, subprocess.TimeoutExpired):
        return "wrk"


def bare_aiohttp_rps(duration: float = 3.0, connections: int = 16, generator: str = "auto") -> Figure:
    """Requests/s of a bare aiohttp server (subprocess) with one tiny JSON endpoint.

    generator: "wrk" (the binary, 1 thread), "python" (benchmarks.loadgen in
    another subprocess) or "auto" (wrk if it is on PATH, else python). On 2
    cores the Python generator takes CPU from the server, so its figure is
    lower; compare our figures with the raw one from the same generator.
    """
    from benchmarks import loadgen
    import aiohttp

    wrk_path = shutil.which("wrk") if generator in ("auto", "wrk") else None
    if generator == "wrk" and wrk_path is None:
        raise RuntimeError("wrk not found on PATH")
    with _bare_aiohttp_server() as (port, pid):
        url = f"http://127.0.0.1:{port}/ping"
        cpu0 = _proc_cpu_seconds(pid)
        if wrk_path:
            res = loadgen.run_wrk(url, wrk=wrk_path, duration=duration, connections=connections, threads=1)
            gen = f"{_wrk_version(wrk_path)}, 1 thread"
        else:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.loadgen", url, "--duration", str(duration),
                 "--connections", str(connections), "--json"],
                capture_output=True, text=True, timeout=duration + 60, cwd=PROJECT_ROOT, env=_child_env(),
            )
            if out.returncode != 0:
                raise RuntimeError(f"loadgen failed: {out.stderr.strip()}")
            res = json.loads(out.stdout)
            gen = "python benchmarks.loadgen (shares the 2 cores with the server)"
        cpu1 = _proc_cpu_seconds(pid)
    # Near 100%: the server process was the bottleneck (one core saturated).
    server_cpu = (
        f", server cpu {100 * (cpu1 - cpu0) / res['duration']:.0f}%"
        if cpu0 is not None and cpu1 is not None and res["duration"] else ""
    )
    return Figure(
        f"bare aiohttp GET tiny JSON ({'wrk' if wrk_path else 'python loadgen'})",
        float(res["rps"]),
        "req/s",
        f"{gen}, {connections} conns, {res['duration']} s, {res['requests']} ok, "
        f"{res['errors']} errors, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, "
        f"aiohttp {aiohttp.__version__}, 1 server process, access log off" + server_cpu,
    )


def bare_aiohttp_lone_post(body: bytes, duration: float = 2.0) -> Figure:
    """p50 of a lone POST (one connection, one request at a time, wrk) to a
    bare aiohttp endpoint that parses its JSON body: the HTTP share of a
    lone write, the floor under any bridge's lone POST on this machine."""
    from benchmarks import loadgen

    with _bare_aiohttp_server() as (port, _pid):
        res = loadgen.run_wrk(f"http://127.0.0.1:{port}/echo", method="POST", body=body,
                              headers={"Content-Type": "application/json"}, duration=duration,
                              connections=1, threads=1)
    return Figure("bare aiohttp lone POST (JSON body, 1 conn) p50", float(res["p50_ms"]), "ms",
                  f"wrk 1 thread, 1 conn, {res['duration']} s, {res['requests']} ok, {res['errors']} errors, "
                  f"p99 {res['p99_ms']} ms")


# ------------------------------------------------------------- bare libp2p

_PROTO_SINK = "/rgrid-bench/sink/1.0.0"
_PROTO_ECHO = "/rgrid-bench/rr/1.0.0"


async def _read_to_eof(stream, limit: int, chunk: int = 65536) -> int:
    """Read until EOF (or limit bytes); return the count."""
    from libp2p.network.stream.exceptions import StreamEOF

    total = 0
    while total < limit:
        try:
            data = await stream.read(chunk)
        except StreamEOF:
            break
        if not data:
            break
        total += len(data)
    return total


async def _read_all(stream, limit: int) -> bytes:
    from libp2p.network.stream.exceptions import StreamEOF

    buf = bytearray()
    while len(buf) < limit:
        try:
            data = await stream.read(limit - len(buf))
        except StreamEOF:
            break
        if not data:
            break
        buf += data
    return bytes(buf)


def _run_two_hosts(body: Callable, handlers: dict, timeout: float):
    """Run ``await body(client_host, server_peer_id)`` with two loopback hosts.

    Both hosts listen on 127.0.0.1 free ports inside one trio run; the
    server host has ``handlers`` installed and the client is connected to it
    before ``body`` starts. Hosts are shut down when ``body`` returns, fails
    or exceeds ``timeout``.
    """
    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr

    async def main():
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
        client = new_host(key_pair=create_new_key_pair())
        server = new_host(key_pair=create_new_key_pair())
        with trio.fail_after(timeout):
            async with server.run(listen_addrs=listen), client.run(listen_addrs=listen):
                for proto, handler in handlers.items():
                    server.set_stream_handler(proto, handler)
                addr = next(a for a in server.get_addrs() if "/ip4/127.0.0.1/" in str(a))
                await client.connect(info_from_p2p_addr(addr))
                return await body(client, server.get_id())

    return trio.run(main)


def bare_libp2p_stream(total_bytes: int = 64 * 2**20, chunk: int = 65536, timeout: float = 30.0) -> Figure:
    """One py-libp2p stream between two loopback hosts, `chunk`-sized writes."""
    import libp2p  # noqa: F401  (version check below)
    from libp2p.custom_types import TProtocol

    received = {}

    async def sink(stream) -> None:
        received["n"] = await _read_to_eof(stream, limit=total_bytes + chunk)
        await stream.write(received["n"].to_bytes(8, "big"))
        await stream.close()

    async def body(client, peer):
        buf = os.urandom(chunk)
        s = await client.new_stream(peer, [TProtocol(_PROTO_SINK)])
        t0, c0 = time.perf_counter(), time.process_time()
        sent = 0
        while sent < total_bytes:
            part = buf if total_bytes - sent >= chunk else buf[: total_bytes - sent]
            await s.write(part)
            sent += len(part)
        await s.close_write()
        ack = await _read_all(s, 8)
        elapsed = time.perf_counter() - t0
        cpu = _cpu_note(c0, elapsed)
        await s.close()
        if int.from_bytes(ack, "big") != sent:
            raise RuntimeError(f"libp2p sink got {int.from_bytes(ack, 'big')} of {sent} bytes")
        return sent, elapsed, cpu

    sent, elapsed, cpu = _run_two_hosts(body, {TProtocol(_PROTO_SINK): sink}, timeout)
    return Figure(
        "bare py-libp2p one stream",
        round(sent / elapsed / 1e6, 1),
        "MB/s",
        f"{sent // 2**20} MiB in {chunk}-byte writes, {elapsed:.2f} s, until the receiver's ack; "
        f"TCP+noise+yamux defaults, 2 hosts in 1 trio process (MB = 10^6 B)" + cpu,
    )


def bare_libp2p_roundtrip(n: int = 300, request_bytes: int = 200, response_bytes: int = 1000,
                          timeout: float = 30.0, max_seconds: float = 5.0) -> Figure:
    """Request/response on raw streams, one new stream per request: p50 ms.

    Client: open stream (multistream-select), write request, half-close,
    read the response to EOF. Server: read to EOF, write response, close.
    """
    from libp2p.custom_types import TProtocol

    response = os.urandom(response_bytes)

    async def echo(stream) -> None:
        await _read_to_eof(stream, limit=request_bytes + 1)
        await stream.write(response)
        await stream.close()

    async def one(client, peer, req) -> None:
        s = await client.new_stream(peer, [TProtocol(_PROTO_ECHO)])
        await s.write(req)
        await s.close_write()
        got = await _read_all(s, response_bytes + 1)
        await s.close()
        if len(got) != response_bytes:
            raise RuntimeError(f"libp2p response of {len(got)} bytes, expected {response_bytes}")

    async def body(client, peer):
        req = os.urandom(request_bytes)
        for _ in range(10):  # warm-up: first streams pay identify, window growth
            await one(client, peer, req)
        lat = []
        t_start, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            t0 = time.perf_counter()
            await one(client, peer, req)
            lat.append(time.perf_counter() - t0)
            if time.perf_counter() - t_start > max_seconds:
                break
        return lat, _cpu_note(c0, time.perf_counter() - t_start)

    lat, cpu = _run_two_hosts(body, {TProtocol(_PROTO_ECHO): echo}, timeout)
    lat_ms = sorted(x * 1000 for x in lat)
    p50 = statistics.median(lat_ms)
    p90 = lat_ms[min(len(lat_ms) - 1, int(0.9 * len(lat_ms)))]
    return Figure(
        "bare py-libp2p request/response",
        round(p50, 3),
        "ms",
        f"p50 of {_done_note(len(lat_ms), n)} sequential, new stream each, "
        f"{request_bytes} B request / {response_bytes} B response; "
        f"p90 {p90:.2f} ms, mean {statistics.fmean(lat_ms):.2f} ms "
        f"(= {1000 / statistics.fmean(lat_ms):.0f} req/s)" + cpu,
    )


# -------------------------------------------------------------------- main


def all_figures(quick: bool = False, generators: tuple[str, ...] | None = None,
                on_figure: Callable[[Figure], None] | None = None) -> list[Figure]:
    """Measure every limit (quick=True: smaller sizes, for a smoke test)."""
    q = quick
    if generators is None:
        generators = ("wrk", "python") if shutil.which("wrk") else ("python",)
    runs: list[Callable[[], Figure]] = [
        lambda: cpu_python_loop(n=1_000_000 if q else 5_000_000),
        lambda: raw_write_pipeline(n=2000 if q else 20000),
        lambda: raw_write_single_durable(n=200 if q else 2000),
        lambda: raw_verify_pipeline(n=2000 if q else 20000),
        lambda: raw_read_verify(n=2000 if q else 20000),
        lambda: raw_lmdb_get(n=10000 if q else 100000),
        lambda: raw_sign(n=2000 if q else 20000),
        lambda: raw_verify(n=1000 if q else 10000),
        lambda: raw_lmdb_batched_put(n=5000 if q else 50000),
    ]
    for g in generators:
        runs.append(lambda g=g: bare_aiohttp_rps(duration=1.0 if q else 3.0, generator=g))
    runs += [
        lambda: bare_libp2p_stream(total_bytes=(8 if q else 64) * 2**20),
        lambda: bare_libp2p_roundtrip(n=50 if q else 300),
    ]
    figs = []
    for run in runs:
        fig = run()
        figs.append(fig)
        if on_figure:
            on_figure(fig)
    return figs


def _fmt_value(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"


def format_table(figs: list[Figure]) -> str:
    rows = [(f.name, _fmt_value(f.value), f.unit, f.detail) for f in figs]
    w0 = max(len("limit"), *(len(r[0]) for r in rows))
    w1 = max(len("value"), *(len(r[1]) for r in rows))
    w2 = max(len("unit"), *(len(r[2]) for r in rows))
    lines = [f"{'limit':<{w0}}  {'value':>{w1}}  {'unit':<{w2}}  detail",
             f"{'-' * w0}  {'-' * w1}  {'-' * w2}  ------"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c:<{w2}}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.limits",
                                 description="Measure the raw limits of this machine.")
    ap.add_argument("--json", action="store_true", help="print a JSON list of figures")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    ap.add_argument("--serve-bare-aiohttp", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_bare_aiohttp:
        _serve_bare_aiohttp()
        return 0
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    progress = None if args.json else (lambda f: print(f"  measured: {f.name}", file=sys.stderr, flush=True))
    figs = all_figures(quick=args.quick, on_figure=progress)
    total = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    if args.json:
        print(json.dumps({
            "figures": [asdict(f) for f in figs],
            "seconds": round(total, 1),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_1min": [load0, load1],
        }, indent=2))
    else:
        print(format_table(figs))
        print(f"\n{len(figs)} figures in {total:.1f} s on {os.cpu_count()} CPUs, "
              f"Python {sys.version.split()[0]}; 1-min load average {load0:.2f} before, "
              f"{load1:.2f} after (other work on the machine skews every figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
