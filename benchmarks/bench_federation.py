"""Federation figures on loopback, beside the raw limits measured in the same run.

Prints, in one run:
  - propagation latency p50/p99 of a write on one node of a 5-node federation
    (and of a 2-node one, the shape of OrbitDB's one-peer figure)
    until all four others have committed it (5 nodes in this one process, full
    mesh, one write at a time), beside bare GossipSub publish->deliver latency
    between two hosts (P2PHost, no registry logic);
  - ingest throughput: a fresh node (this process) syncs N pre-made changes
    from a peer that runs as a separate `rgrid node start` process, beside the
    same envelopes through the engine alone (no network), beside the raw limit
    (decode + Ed25519 verify + batched durable LMDB put of the same envelopes)
    and benchmarks.limits.raw_verify_pipeline;
  - catch-up: the same with --records changes (100k by default), the time
    from starting the fresh node until it holds everything.

    python -m benchmarks.bench_federation [--records 100000] [--ingest 20000]
                                           [--writes 200] [--json] [--profile]

Goals (issue 4): ingest >= 10,000 changes/s; catch-up of 100k < 20 s;
5-node propagation p50 < 50 ms. --profile prints where the engine-alone
ingest spends its time (cProfile; the engine runs on one thread).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import trio
from nacl.signing import VerifyKey

from benchmarks.limits import Figure, format_table, make_record, raw_verify_pipeline
from registrygrid.engine.ops import Put, Remote
from registrygrid.home import Home
from registrygrid.identity.keys import public_key_from_did
from registrygrid.node.federation import Federation, FederationConfig
from registrygrid.node.node import Node
from registrygrid.node.p2p import P2PHost
from registrygrid.protocol.envelope import change_id
from registrygrid.sdk import LocalRegistry

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
FED = "bench"
REGISTRY = "grid.functions"


def _fields(i: int, rng: random.Random) -> dict[str, Any]:
    fields = make_record(i, 430, rng)["fields"]
    fields["executor"] = {"type": "container", "image": "ghcr.io/acme/summarize:1.4.2"}
    return fields


def _new_home(root: Path, name: str) -> Home:
    home = Home(root / name)
    home.init(org_name=name)
    config = json.loads((home.path / "config.json").read_text())
    (home.path / "config.json").write_text(json.dumps({**config, "federation": FED}))
    return home


def _preload(home: Home, n: int, batch: int = 2000) -> list[bytes]:
    """n records written through the SDK (signed by the home's node key); their envelopes."""
    rng = random.Random(11)
    with LocalRegistry.open_home(home) as grid:
        for start in range(0, n, batch):
            grid.put_many([Put(REGISTRY, "function", _fields(i, rng)) for i in range(start, min(n, start + batch))])
        return grid.engine.envelopes_after(REGISTRY, grid.engine.key.did, 0, limit=n, max_bytes=2**40)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------ raw limits of the same envelopes


def raw_same_envelopes(wires: list[bytes], batch: int = 1000) -> Figure:
    """Decode, Ed25519-verify and durably put (batched) exactly the envelopes a peer sends."""
    author = msgpack.unpackb(msgpack.unpackb(wires[0])[0])[6]
    verify = VerifyKey(public_key_from_did(author)).verify
    path = tempfile.mkdtemp(prefix="rgrid-bench-raw-")
    env = lmdb.open(path, map_size=2**32, sync=True, metasync=True)
    try:
        t0 = time.perf_counter()
        for start in range(0, len(wires), batch):
            with env.begin(write=True) as txn:
                for wire in wires[start:start + batch]:
                    body, signature = msgpack.unpackb(wire)
                    verify(body, signature)
                    msgpack.unpackb(body)
                    txn.put(change_id(wire), wire)
        elapsed = time.perf_counter() - t0
    finally:
        env.close()
        shutil.rmtree(path, ignore_errors=True)
    size = sum(map(len, wires)) // len(wires)
    return Figure("raw: decode+verify+LMDB put, same envelopes", len(wires) / elapsed, "changes/s",
                  f"n={len(wires)}, {size} B each, batch {batch}, durable")


def engine_alone(wires: list[bytes], batch: int = 2000, profile: bool = False) -> Figure:
    """The same envelopes straight into a fresh engine (no network, no trio): the node core's ingest limit."""
    path = tempfile.mkdtemp(prefix="rgrid-bench-engine-")
    grid = LocalRegistry.open_path(path)
    profiler = cProfile.Profile() if profile else None
    try:
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        for start in range(0, len(wires), batch):
            outcomes = grid.execute([Remote(w, "bench") for w in wires[start:start + batch]])
            assert all(o.status == "applied" for o in outcomes), outcomes[:2]  # type: ignore[union-attr]
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - t0
    finally:
        grid.close()
        shutil.rmtree(path, ignore_errors=True)
    if profiler:
        print("\n--- engine-alone ingest profile (cProfile, top 25 by own time) ---", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return Figure("engine alone: Remote ops, same envelopes", len(wires) / elapsed, "changes/s",
                  f"n={len(wires)}, batches of {batch}, durable, verify on" + (" (profiled)" if profile else ""))


# ------------------------------------------------------------------ sync from a peer process


class PeerProcess:
    """`python -m registrygrid node start` serving a preloaded home."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.port = _free_port()
        self.addr = f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{home.node_key().peer_id}"
        self.log = open(home.path / "node.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "registrygrid", "node", "start", "--home",
                                      str(home.path), "--listen", f"/ip4/127.0.0.1/tcp/{self.port}", "--no-bridge",
                                      "--log-level", "WARNING"], stdout=self.log, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 60) -> None:
        with trio.fail_after(timeout):
            while self.home.node_info() is None:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"peer process exited with {self.proc.returncode}")
                await trio.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def _catch_up(root: Path, source: Home, n: int, label: str) -> tuple[Figure, dict[str, Any]]:
    peer = PeerProcess(source)
    try:
        await peer.wait_ready()
        home = _new_home(root, f"fresh-{label}")
        config = FederationConfig(sync_interval=3600)  # one session on connect does it all
        fed = Federation(listen=[LOOPBACK], bootstrap=[peer.addr], federation=FED, config=config)
        node = Node(home, [fed])
        async with trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            c0 = time.process_time()
            await nursery.start(node.run)
            first: tuple[float, int] | None = None  # the first commit of remote changes
            while node.feed.head < n:
                await node.feed.wait_beyond(node.feed.head)
                first = first or (time.perf_counter(), node.feed.head)
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - c0
            report = fed.last_session
            node.stop()
    finally:
        peer.stop()
    assert first is not None
    steady = (n - first[1]) / (t0 + elapsed - first[0])
    details = {"rounds": sum(r.rounds for r in report.values()), "cpu_s": round(cpu, 1),
               "startup_s": round(first[0] - t0, 2), "steady_changes_per_s": round(steady)}
    return Figure(label, steady, "changes/s",
                  f"n={n}: {elapsed:.1f} s from node start, of which {first[0] - t0:.1f} s until the first "
                  f"commit; rate from first to last commit; peer in another process, this process cpu "
                  f"{100 * cpu / elapsed:.0f}%"), {"seconds": elapsed, **details}


# ------------------------------------------------------------------ propagation


async def _propagation(root: Path, writes: int, size: int = 5) -> tuple[Figure, Figure]:
    config = FederationConfig(sync_interval=3600)  # gossip alone
    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        feds: list[Federation] = []
        for i in range(size):
            fed = Federation(listen=[LOOPBACK], bootstrap=feds[0].addrs() if feds else [], federation=FED,
                             config=config)
            node = await nursery.start(Node(_new_home(root, f"p{size}-{i}"), [fed]).run)
            nodes.append(node)
            feds.append(fed)
        with trio.fail_after(30):  # full mesh by bootstrap + peer exchange
            while not all(len(set(f.host.topic_peers(f.topic))) == size - 1 for f in feds):  # type: ignore[union-attr]
                await trio.sleep(0.05)
        await trio.sleep(2)  # a few heartbeats: GossipSub meshes settle
        rng = random.Random(5)
        writer, followers = nodes[0], nodes[1:]
        latencies, commits = [], []
        for i in range(writes):
            heads = [f.feed.head for f in followers]
            arrived: list[float] = []
            t0 = time.perf_counter()
            async with trio.open_nursery() as waiters:
                for follower, head in zip(followers, heads, strict=True):
                    waiters.start_soon(_arrival, follower, head, arrived)
                with trio.fail_after(30):
                    await writer.submit([Put(REGISTRY, "function", _fields(i, rng))])
                commits.append(time.perf_counter() - t0)
            latencies.append(max(arrived) - t0)
            await trio.sleep(0.02)
        for node in nodes:
            node.stop()
    ms = sorted(x * 1000 for x in latencies)
    p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    commit_p50 = statistics.median(commits) * 1000
    return (Figure(f"ours: {size}-node propagation p50", p50, "ms",
                   f"{len(ms)} writes one at a time on node 0, until all {size - 1} others committed it; "
                   f"{size} nodes in one process (one GIL); includes the local commit (p50 {commit_p50:.1f} ms)"),
            Figure(f"ours: {size}-node propagation p99", p99, "ms", f"max {ms[-1]:.1f} ms"))


async def _arrival(follower: Node, head: int, arrived: list[float]) -> None:
    await follower.feed.wait_beyond(head)
    arrived.append(time.perf_counter())


async def _bare_gossip(messages: int) -> Figure:
    """Publish -> deliver between two P2PHosts (py-libp2p GossipSub, no registry logic)."""
    async with P2PHost(hashlib.sha256(b"bench-a").digest(), [LOOPBACK]) as a, \
            P2PHost(hashlib.sha256(b"bench-b").digest(), [LOOPBACK]) as b:
        topic = "/bench/raw"
        channel = await b.subscribe(topic)
        await a.subscribe(topic)
        await a.connect(b.listen_addrs()[0])
        await a.wait_for_mesh_peer(topic, b.peer_id, timeout=15)
        lat = []
        payload = os.urandom(800)  # about one envelope
        for _ in range(messages):
            t0 = time.perf_counter()
            await a.publish(topic, payload)
            await channel.receive()
            lat.append((time.perf_counter() - t0) * 1000)
            await trio.sleep(0.005)
    return Figure("raw: GossipSub publish->deliver, 2 hosts", statistics.median(sorted(lat)), "ms",
                  f"p50 of {messages}, 800 B payload, one hop, P2PHost (py-libp2p 0.8.1)")


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="catch-up size (default 100k)")
    parser.add_argument("--ingest", type=int, default=20_000, help="changes for the ingest figure")
    parser.add_argument("--writes", type=int, default=200, help="writes for the propagation figure")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", action="store_true", help="profile the engine-alone ingest")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="rgrid-bench-fed-"))
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    figures: list[Figure] = []
    extra: dict[str, Any] = {}

    def step(what: str) -> None:
        print(f"  {time.perf_counter() - started:6.0f} s  {what}", file=sys.stderr, flush=True)

    try:
        step("propagation: 5 nodes")
        figures += trio.run(_propagation, root / "prop", args.writes)
        step("propagation: 2 nodes (OrbitDB's figure is to one peer)")
        figures += trio.run(_propagation, root / "prop", args.writes, 2)
        figures.append(trio.run(_bare_gossip, 200))

        step(f"ingest: preloading {args.ingest} changes")
        source = _new_home(root, "source-ingest")
        wires = _preload(source, args.ingest)
        step("ingest: raw limits")
        figures.append(raw_verify_pipeline(n=min(args.ingest, 20_000), max_seconds=30))
        figures.append(raw_same_envelopes(wires))
        step("ingest: engine alone")
        figures.append(engine_alone(wires, profile=args.profile))
        step("ingest: sync from a peer process")
        ingest, extra["ingest"] = trio.run(_catch_up, root, source, args.ingest, "ours: ingest by sync from a peer")
        figures.append(ingest)

        if args.records:
            step(f"catch-up: preloading {args.records} changes")
            big = _new_home(root, "source-catchup")
            _preload(big, args.records)
            step(f"catch-up: {args.records} changes")
            catch_up, extra["catch_up"] = trio.run(_catch_up, root, big, args.records,
                                                   f"ours: catch-up of {args.records} records")
            figures.append(replace(catch_up, name=f"ours: catch-up of {args.records:,} records",
                                   value=extra["catch_up"]["seconds"], unit="s",
                                   detail=catch_up.detail + f" ({catch_up.value:,.0f} changes/s steady)"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - started
    by_name = {f.name: f for f in figures}
    ratios = {
        "ingest / engine alone": ingest.value / by_name["engine alone: Remote ops, same envelopes"].value,
        "ingest / raw same envelopes": ingest.value / by_name["raw: decode+verify+LMDB put, same envelopes"].value,
    }
    if args.json:
        print(json.dumps({"figures": [asdict(f) for f in figures], "ratios": ratios, "details": extra,
                          "seconds": round(total, 1), "loadavg_1min": [load0, os.getloadavg()[0]]}, indent=2))
        return 0
    print(format_table(figures))
    print()
    for name, value in ratios.items():
        print(f"{name:<32} {value:6.1%}")
    print(f"\n{total:.0f} s on {os.cpu_count()} CPUs; 1-min load average {load0:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (other work on the machine skews every figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
