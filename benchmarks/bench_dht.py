"""Resolve latency of the registry of registries (Kademlia DHT), beside a raw libp2p round trip.

Two federations on loopback in this one process, each node a real node
(its own home, LMDB store, py-libp2p host, DHT in server mode): federation
one (--owners nodes) owns and hosts a registry; federation two (--readers
nodes), joined to it by one connection, hosts nothing of it and resolves it
(``RegistryDirectory.resolve``: the signed descriptor, checked, and its
providers):

  - first: each reader's first resolve (nothing cached): the DHT value
    (from the node's own store when a put reached it, else a lookup), the
    record's checks, and the providers py-libp2p knows;
  - fresh: the same with ``fresh`` (what `--fresh` does): the providers are
    also asked of the peers closest to the key (an iterative lookup);
  - cached: the same resolve again, answered from the node's cache;
  - the library's floor: py-libp2p's own iterative lookup
    (``find_closest_peers_network``) between bare hosts running only
    KadDHT, as many as the network's nodes, in this process: what a lookup
    costs here with none of our code (a fresh resolve makes one);
  - raw: benchmarks.limits.bare_libp2p_roundtrip, a request/response on a
    new stream between two bare hosts, measured in the same run.

All nodes share this one process and its one trio thread (as the test
networks do), so every lookup also waits on the other nodes' work.

    python -m benchmarks.bench_dht [--owners 10] [--readers 20] [--json]

Goal (issue 17): cold p50 < 100 ms in a 20-50 node network.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks.limits import Figure, bare_libp2p_roundtrip
from registrygrid.engine.ops import Put
from registrygrid.errors import RegistryError
from registrygrid.home import Home
from registrygrid.membership import (
    create_federation,
    current_genesis,
    invite_org,
    join_federation,
)
from registrygrid.node.federation import Federation, FederationConfig
from registrygrid.node.node import Node

REG = "bench.models"
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
CONFIG = FederationConfig(sync_interval=30.0, persist_interval=30.0)


class _Federation:
    """Homes of one federation, founded by the first."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        self.founder: Home | None = None

    def home(self, label: str) -> Home:
        home = Home(self.root / label)
        home.init(org_name=label)
        if self.founder is None:
            self.founder = home
            create_federation(home, self.name)
        else:
            genesis = current_genesis(self.founder)
            join_federation(home, genesis, invite_org(self.founder, home.org().org))  # type: ignore[union-attr]
        return home


async def _start(nursery: trio.Nursery, fed: _Federation, label: str, bootstrap: list[str]) -> tuple[Node, Federation]:
    federation = Federation(listen=[LOOPBACK], bootstrap=bootstrap, federation=fed.name, config=CONFIG)
    node = Node(fed.home(label), [federation])
    await nursery.start(node.run)
    return node, federation


async def _wait(check: Any, timeout: float, what: str) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.1)


def _knows(node: Node) -> bool:
    try:
        node.registry.describe_registry(REG)  # type: ignore[union-attr]
        return True
    except RegistryError:
        return False


async def _run(root: Path, owners: int, readers: int) -> dict[str, Any]:
    one, two = _Federation(root / "one", "fed-one"), _Federation(root / "two", "fed-two")
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        first, first_fed = await _start(nursery, one, "o0", [])
        side_a = [(first, first_fed)] + [await _start(nursery, one, f"o{i}", first_fed.addrs())
                                         for i in range(1, owners)]
        link, link_fed = await _start(nursery, two, "r0", first_fed.addrs())
        side_b = [(link, link_fed)] + [await _start(nursery, two, f"r{i}", link_fed.addrs())
                                       for i in range(1, readers)]
        everyone = side_a + side_b
        await _wait(lambda: all(f.directory is not None and f.directory.dht.get_routing_table_size() >= 3
                                for _, f in everyone), 120, "routing tables")
        started = time.perf_counter() - t0
        await first.submit([Put("grid.registries", "registry", {"name": REG, "kinds": ["cluster"]},
                                record_id=REG)])
        await _wait(lambda: all(_knows(n) for n, _ in side_a), 60, "the descriptor in federation one")
        for _, fed in side_a:
            await fed.directory.publish()  # type: ignore[union-attr]
        first_ms, fresh, cached = [], [], []
        for _, fed in side_b:
            directory = fed.directory
            assert directory is not None
            t = time.perf_counter()
            answer = await directory.resolve(REG)
            first_ms.append((time.perf_counter() - t) * 1000)
            assert answer["providers"], "a resolve without providers"
            t = time.perf_counter()
            await directory.resolve(REG, fresh=True)
            fresh.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await directory.resolve(REG)
            cached.append((time.perf_counter() - t) * 1000)
        for node, _ in everyone:
            node.stop()
    return {"first": first_ms, "fresh": fresh, "cached": cached, "startup_s": started}


async def _bare_lookups(n: int, lookups: int) -> list[float]:
    """py-libp2p's iterative lookup among ``n`` bare hosts running only KadDHT."""
    import os

    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.tools.anyio_service import background_trio_service
    from multiaddr import Multiaddr

    hosts = [new_host(key_pair=create_new_key_pair(os.urandom(32))) for _ in range(n)]
    samples: list[float] = []
    async with trio.open_nursery() as nursery:
        stack = []
        for host in hosts:
            cm = host.run(listen_addrs=[Multiaddr(LOOPBACK)])
            await cm.__aenter__()
            stack.append(cm)
        dhts = [KadDHT(h, DHTMode.SERVER) for h in hosts]
        services = [background_trio_service(d) for d in dhts]
        for svc in services:
            await svc.__aenter__()
        # A star through the first host, then each adds whom it is connected to.
        first = hosts[0]
        addr = f"{first.get_addrs()[0]}"
        for host in hosts[1:]:
            await host.connect(info_from_p2p_addr(Multiaddr(addr)))
        for host, dht in zip(hosts, dhts):
            for peer in host.get_connected_peers():
                await dht.add_peer(peer)
        for dht in dhts[1:]:
            await dht.peer_routing.find_closest_peers_network(os.urandom(32))  # fill tables once
        for i in range(lookups):
            dht = dhts[1 + i % (n - 1)]
            t = time.perf_counter()
            await dht.peer_routing.find_closest_peers_network(os.urandom(32))
            samples.append((time.perf_counter() - t) * 1000)
        for svc in reversed(services):
            await svc.__aexit__(None, None, None)
        for cm in reversed(stack):
            await cm.__aexit__(None, None, None)
        nursery.cancel_scope.cancel()
    return samples


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(owners: int, readers: int) -> tuple[list[Figure], dict[str, float]]:
    root = Path(tempfile.mkdtemp(prefix="rgrid-bench-dht-"))
    try:
        got = trio.run(_run, root, owners, readers)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n = owners + readers
    floor = trio.run(_bare_lookups, n, readers)
    raw = bare_libp2p_roundtrip()
    detail = f"{n} nodes ({owners} + {readers} in two federations), {readers} resolves"
    first_p50, fresh_p50 = statistics.median(got["first"]), statistics.median(got["fresh"])
    floor_p50 = statistics.median(floor)
    figures = [
        Figure("resolve, first (cold cache) p50", first_p50, "ms", detail),
        Figure("resolve, first (cold cache) p99", _p(got["first"], 0.99), "ms", detail),
        Figure("resolve, fresh p50", fresh_p50, "ms", detail),
        Figure("resolve, fresh p99", _p(got["fresh"], 0.99), "ms", detail),
        Figure("resolve, cached p50", statistics.median(got["cached"]), "ms", detail),
        Figure("floor: py-libp2p lookup, bare hosts p50", floor_p50, "ms",
               f"{n} bare hosts with KadDHT only, {len(floor)} lookups"),
        Figure("raw libp2p request/response p50", raw.value, "ms", raw.detail),
    ]
    ratios = {"fresh p50 / library lookup floor": fresh_p50 / floor_p50,
              "fresh p50 / raw round trip": fresh_p50 / raw.value, "goal: cold p50 (ms)": 100.0}
    return figures, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owners", type=int, default=10)
    parser.add_argument("--readers", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures, ratios = run(args.owners, args.readers)
    if args.json:
        print(json.dumps({"figures": [f.__dict__ for f in figures], "ratios": ratios}, indent=2))
        return 0
    for f in figures:
        print(f"{f.name:<36} {f.value:>10.2f} {f.unit:<4} {f.detail}")
    for name, value in ratios.items():
        print(f"{name:<36} {value:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
