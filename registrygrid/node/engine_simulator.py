"""Engine mode: a scenario played on whole nodes in one process, in virtual time.

    summary = simulate_engine(scenario.load("simulations/scenarios/steady.toml").with_nodes(20))

Large-scale mode (node/simulator.py) runs the node's protocol machines
(gossip intake, sync sessions) over thousands of light nodes whose state is
a ledger of signed changes: it shows how the protocol scales, but its
nodes have no engine. Real-node mode (simulation/real.py) runs the whole
node as OS processes on py-libp2p, in real time. Engine mode sits between:
every simulated node is the node itself (``Node`` with its home, LMDB
store, group committer, engine with Automerge, trust and conflict
policies, and ``Federation`` with its hellos and admission, peer table,
guard, gossip and sync), talking over a ``MemoryNetwork``
(node/memory_transport.py) instead of py-libp2p, under trio's MockClock:
minutes of a federation's life cost seconds of computation, and a
partition, a stopped node or a hostile member meets the production code.

What it costs: a node is a store and a writer thread, so engine mode runs
2 to ``MAX_ENGINE_NODES`` nodes. It is not deterministic byte for byte
(LMDB work happens on threads, and the clock jumps only once they are
idle), so a seed decides the network, workload and faults, not every
interleaving. Faults: partitions and heals on the network, ``stop`` and
``kill`` (in one process both end the node's task: its committed writes
are durable in LMDB either way, as tests/test_durability.py proves for a
real kill -9), and ``hostile`` members that publish forged envelopes on
the federation's topic, which the others' validators must refuse.
Gossip and sync cannot be switched off: a node always runs both.

The summary has the other modes' shape, with ``mode: "engine"``; the
safety checker (simulation/checker.py) judges each live honest node's
store (a hostile member is banned by its peers, so it may miss writes).
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from registrygrid.engine.ops import Put, WriteResult
from registrygrid.errors import RegistryError, ValidationError
from registrygrid.home import Home
from registrygrid.node.federation import Federation, FederationConfig
from registrygrid.node.memory_transport import (
    MemoryNetwork,
    lognormal_latency,
    no_latency,
)
from registrygrid.node.node import Node
from registrygrid.node.transport import P2PError
from registrygrid.protocol.envelope import cid_from_str, cid_to_str, seal
from registrygrid.protocol.gossip import encode_batch
from registrygrid.protocol.hlc import Hlc
from registrygrid.simulation import checker
from registrygrid.simulation.homes import federation_homes
from registrygrid.simulation.scenario import Scenario
from registrygrid.simulation.stats import full_propagation, hop_quantile, quantiles

MAX_ENGINE_NODES = 100
FEDERATION = "sim-engine"
REGISTRY = "grid.clusters"
SAMPLES = 100
# Real seconds every task must have waited before virtual time jumps:
# longer than a commit on the writer thread, so the clock never runs ahead
# of a node that is still writing (tests/test_federation_memory.py).
IDLE_BEFORE_JUMP_S = 0.005
STOP_TIMEOUT_S = 60.0
EPOCH_MS = 1_767_225_600_000  # 2026-01-01


@dataclass
class EngineNode:
    index: int
    home: Home
    peer_id: str
    node: Node | None = None
    fed: Federation | None = None
    stopped: trio.Event = field(default_factory=trio.Event)
    hostile: bool = False
    held: int = 0  # stop faults holding it down now: it starts again when the last one ends
    seen: dict[str, float] = field(default_factory=dict)  # change id -> when it was committed here
    cursor: int = 0  # the last feed seq read into ``seen``
    totals: Counter[str] = field(default_factory=Counter)  # federation metrics of past lives
    hosts: list[Any] = field(default_factory=list)  # the MemoryHost of each life (its traffic counters)

    @property
    def alive(self) -> bool:
        return self.node is not None


class EngineRun:
    def __init__(self, scenario: Scenario, root: Path, *,
                 progress: Callable[[float, float], None] | None = None) -> None:
        if not 2 <= scenario.nodes <= MAX_ENGINE_NODES:
            raise ValidationError(f"engine mode runs 2 to {MAX_ENGINE_NODES} nodes, not {scenario.nodes} "
                                  "(large-scale mode runs more)")
        if not (scenario.sync_enabled and scenario.gossip_enabled):
            raise ValidationError("engine mode runs whole nodes, which always gossip and sync: run a scenario "
                                  "that turns either off in large-scale mode")
        self.s = scenario
        self.root = root
        self.progress = progress
        self.rng = random.Random(scenario.seed)
        net = scenario.network
        latency = lognormal_latency(net.latency_ms / 1000, net.latency_sigma) if net.latency_ms > 0 else no_latency
        self.network = MemoryNetwork(seed=self.rng.randrange(2**32), latency=latency, loss=net.loss,
                                     degree=net.degree)
        # The production configuration but the DHT (py-libp2p's, which needs
        # its host) and the scenario's sync period.
        self.config = FederationConfig(dht=False, sync_interval=scenario.sync_interval_s)
        self.nodes: list[EngineNode] = []
        self.writes: list[checker.Write] = []
        self.written_at: dict[str, float] = {}
        self.stats: Counter[str] = Counter()
        self.samples: list[tuple[float, float]] = []  # (virtual s since the workload began, converged fraction)
        self.begin = 0.0  # when the workload began (every node started), in trio's clock
        self._nursery: trio.Nursery | None = None

    # ---- setup

    def make_homes(self) -> None:
        """One federation: the first node's org founds it and invites each other org."""
        for i, home in enumerate(federation_homes(self.root, self.s.nodes, FEDERATION)):
            self.nodes.append(EngineNode(i, home, home.node_key().peer_id))

    # ---- the run

    async def run(self) -> dict[str, Any]:
        s = self.s
        end = s.duration_s + s.settle_s
        async with self.network, trio.open_nursery() as nursery:
            self._nursery = nursery
            # Each node bootstraps from the ones started before it (a seeded
            # choice of up to ``peers``); the peer table does the rest.
            for node in self.nodes:
                started = [n for n in self.nodes[:node.index] if n.fed is not None]
                bootstrap = self.rng.sample(started, min(len(started), s.peers))
                await self._start(node, [a for n in bootstrap for a in n.fed.addrs()])  # type: ignore[union-attr]
            self.begin = trio.current_time()
            for fault in s.faults:
                nursery.start_soon(self._fault_at, fault)
            for node in self.nodes[:s.workload.writers]:
                nursery.start_soon(self._write_loop, node)
            for step in range(1, SAMPLES + 1):
                await trio.sleep_until(self.begin + step * end / SAMPLES)
                self.samples.append((round(self.now(), 3), round(self._fraction(), 6)))
                if self.progress is not None:
                    self.progress(self.now(), end)
            summary = self._summary()
            for node in self.nodes:
                await self._stop(node)
            nursery.cancel_scope.cancel()
        return summary

    async def _start(self, node: EngineNode, bootstrap: list[str]) -> None:
        assert self._nursery is not None
        fed = Federation(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=bootstrap, federation=FEDERATION,
                         config=self.config, transport=self.network.factory())
        whole = Node(node.home, [fed])
        node.stopped = trio.Event()

        async def live(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await whole.run(task_status=task_status)
            finally:
                node.stopped.set()

        await self._nursery.start(live)
        node.node, node.fed = whole, fed
        node.hosts.append(fed.host)
        whole.committer.on_commit.append(lambda _committed, n=node: self._arrived(n))  # type: ignore[union-attr]
        self._arrived(node)  # what it held before (a restart)
        if node.hostile:
            self._nursery.start_soon(self._hostile_loop, node, whole)
        self.stats["starts"] += 1

    async def _stop(self, node: EngineNode) -> None:
        if node.node is None:
            return
        assert node.fed is not None
        node.totals.update(node.fed.metrics)
        node.node.stop()
        node.node, node.fed = None, None
        with trio.fail_after(STOP_TIMEOUT_S):
            await node.stopped.wait()

    def _arrived(self, node: EngineNode) -> None:
        """Read what the node's feed gained since last time: each change's arrival."""
        if node.node is None or node.node.registry is None:
            return
        now = self.now()
        while True:
            events = node.node.registry.changes(node.cursor, limit=10_000, registry=None)
            for event in events:
                node.seen.setdefault(event.change, now)
                node.cursor = max(node.cursor, event.seq)
            if len(events) < 10_000:
                return

    def now(self) -> float:
        """Virtual seconds since the workload began."""
        return trio.current_time() - self.begin

    # ---- workload and faults

    async def _write_loop(self, node: EngineNode) -> None:
        share, step = self.s.workload.schedule(node.index, self.s.duration_s)
        if not share:
            return
        await trio.sleep(self.rng.random() * step)
        for n in range(share):
            whole = node.node
            if whole is not None:
                try:
                    (outcome,) = await whole.submit([Put(REGISTRY, "cluster", {"name": f"n{node.index}-{n}"},
                                                         record_id=f"n{node.index}-{n}")])
                except RegistryError:
                    outcome = None
                if isinstance(outcome, WriteResult):
                    at = self.now()
                    self.writes.append(checker.Write(cid_from_str(outcome.change_id), node.peer_id, at))
                    self.written_at[outcome.change_id] = at
                else:
                    self.stats["write_failures"] += 1  # not acknowledged: counted against no one
            await trio.sleep(step)

    async def _hostile_loop(self, node: EngineNode, whole: Node) -> None:
        """While this life lasts: publish a forged change every second on the
        federation's topic (signed by the member's node key, one signature
        byte flipped), as a compromised member would."""
        key = node.home.node_key()
        n = 0
        while node.node is whole and node.fed is not None and node.fed.host is not None:
            await trio.sleep(1.0)
            n += 1
            wire = bytearray(seal(key, registry=REGISTRY, record=f"forged-{node.index}-{n}", op="create",
                                  kind="cluster", schema=1, seq=1, prev=b"", hlc=Hlc(EPOCH_MS, n), deps=[],
                                  change_hash=b"", payload=b"\x80").wire)
            wire[-3] ^= 0xFF
            self.stats["hostile_sent"] += 1
            try:
                await node.fed.host.publish(node.fed.topic, encode_batch([bytes(wire)]))
            except (P2PError, AttributeError):
                return  # stopped meanwhile

    async def _fault_at(self, fault: Any) -> None:
        await trio.sleep_until(self.begin + fault.at_s)
        nodes = self.nodes
        if fault.kind == "partition":
            size = math.ceil(len(nodes) / fault.groups)
            self.network.partition(*[[n.peer_id for n in nodes[i:i + size]] for i in range(0, len(nodes), size)])
        elif fault.kind == "heal":
            self.network.heal()
        elif fault.kind == "hostile":
            for i in fault.nodes:
                nodes[i].hostile = True
                if nodes[i].node is not None:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._hostile_loop, nodes[i], nodes[i].node)
        elif fault.kind in ("stop", "kill"):
            chosen = [nodes[i] for i in fault.nodes] or self.rng.sample(
                nodes[self.s.workload.writers:], round(fault.fraction * (len(nodes) - self.s.workload.writers)))
            for target in chosen:
                target.held += 1
                if target.alive:
                    await self._stop(target)
                    self.stats["stops"] += 1
            if fault.for_s is not None:
                await trio.sleep(fault.for_s)
                for target in chosen:
                    target.held -= 1
                    if target.held or target.alive:  # another stop still holds it (restarted, it was HomeLocked)
                        continue
                    others = [n for n in nodes if n.fed is not None]
                    peers = self.rng.sample(others, min(len(others), self.s.peers))
                    await self._start(target, [a for n in peers for a in n.fed.addrs()])  # type: ignore[union-attr]

    # ---- results

    def _fraction(self) -> float:
        """Of the (honest node, write by another node) pairs, the share delivered."""
        writer = {cid_to_str(w.change): w.node for w in self.writes}
        honest = [n for n in self.nodes if not n.hostile]
        pairs = [(n, c) for n in honest for c in self.written_at if writer.get(c) != n.peer_id]
        return sum(1 for n, c in pairs if c in n.seen) / len(pairs) if pairs else 1.0

    def _summary(self) -> dict[str, Any]:
        live = [n for n in self.nodes if n.node is not None]
        for node in live:
            self._arrived(node)
        # A hostile member is not judged: its peers' guards ban it for what it
        # sends (10 minutes), so it may rightly miss what they wrote meanwhile.
        judged = [n for n in live if not n.hostile]
        held = {n.peer_id: {cid_from_str(c) for c in n.seen} for n in judged}
        digests = {n.peer_id: n.node.registry.state_digest() for n in judged}  # type: ignore[union-attr]
        verdict = checker.check(self.writes, held, digests)
        writer_of = {cid_to_str(w.change): w.node for w in self.writes}
        delays = sorted(round((n.seen[c] - at) * 1000, 3) for n in self.nodes for c, at in self.written_at.items()
                        if c in n.seen and n.peer_id != writer_of.get(c))
        metrics = []
        for n in self.nodes:
            totals = Counter(n.totals)
            if n.fed is not None:
                totals.update(n.fed.metrics)
            metrics.append(totals)
        net = self.network.stats
        changes = max(1, len(self.writes))
        sent = [sum(h.stats["gossip_sent"] for h in n.hosts) for n in self.nodes]
        hops = self.network.hops
        return {
            "mode": "engine", "scenario": self.s.name, "seed": self.s.seed, "nodes": len(self.nodes),
            "live_nodes": len(live), "virtual_seconds": self.s.duration_s + self.s.settle_s,
            "acknowledged_writes": len(self.writes),
            "propagation_ms": quantiles(delays), "converged_fraction": self.samples[-1][1] if self.samples else 1.0,
            "full_propagation_at_s": full_propagation(self.samples, bool(self.writes)),
            "gossip": {
                "messages": net["gossip_messages"], "bytes": net["gossip_bytes"], "lost": net["gossip_lost"],
                "duplicates": net["gossip_duplicates"],
                "duplicate_ratio": round(net["gossip_duplicates"] / max(1, net["gossip_messages"]), 4),
                # GossipSub's lazy repair: IHAVE offers, IWANT pulls, and the
                # deliveries that came first through one (memory_transport.py).
                "ihave": net["gossip_ihave"], "iwant": net["gossip_iwant"], "pulled": net["gossip_pulled"],
                "messages_per_node_per_change": round(sum(sent) / len(sent) / changes, 3),
                "max_messages_per_node_per_change": round(max(sent, default=0) / changes, 3),
                "rounds": {"p50": hop_quantile(hops, 0.5), "p99": hop_quantile(hops, 0.99),
                           "max": max(hops, default=0),
                           "bound_2log2n": round(2 * math.log2(max(2, len(self.nodes))), 2)},
                "published": sum(m["gossip.published"] for m in metrics),
                "accepted": sum(m["gossip.accepted"] for m in metrics),
                "invalid_rejected": sum(m["gossip.invalid"] for m in metrics),
            },
            "sync": {"requests": net["requests"], "request_bytes": net["request_bytes"],
                     "response_bytes": net["response_bytes"],
                     "sessions": sum(m["sync.sessions"] for m in metrics),
                     "rounds": sum(m["sync.rounds"] for m in metrics),
                     "failed": sum(m["sync.failed"] for m in metrics)},
            "faults": {"stops": self.stats["stops"], "starts": self.stats["starts"] - len(self.nodes),
                       "hostile_sent": self.stats["hostile_sent"], "write_failures": self.stats["write_failures"]},
            "convergence": self.samples,
            "messages_per_node": sent,
            "propagation_delays_ms": delays,
            "checker": verdict.to_dict(),
        }


def simulate_engine(scenario: Scenario, *, root: Path | None = None,
                    progress: Callable[[float, float], None] | None = None) -> dict[str, Any]:
    """Play ``scenario`` on whole nodes in virtual time; the summary. The
    homes live in a temporary directory, removed afterwards unless ``root``
    names one to keep."""
    where = root or Path(tempfile.mkdtemp(prefix="rgrid-sim-engine-"))
    where.mkdir(parents=True, exist_ok=True)
    try:
        run = EngineRun(scenario, where, progress=progress)
        run.make_homes()
        summary: dict[str, Any] = trio.run(run.run,
                                           clock=trio.testing.MockClock(autojump_threshold=IDLE_BEFORE_JUMP_S))
        return summary
    finally:
        if root is None:
            shutil.rmtree(where, ignore_errors=True)
