"""Large-scale simulation: hundreds or thousands of nodes in one process, in
virtual time, running the protocol code the node runs.

    summary = simulate(scenario.load("simulations/scenarios/steady.toml"))

Each simulated node has a key, a ``MemoryHost`` on one ``MemoryNetwork``
(node/memory_transport.py), a ``Ledger`` (simulation/ledger.py: signed
changes by author chain), and runs what a node runs on the network side:
``GossipIntake`` judges every gossip message in the topic validator
(protocol/gossip_intake.py), ``answer_sync`` serves sync requests from the
ledger and ``SyncSession`` (protocol/sync_session.py) decides every step of
its own sessions: on each new connection, every ``sync.interval_s``
with a random peer, and a second after gossip shows a gap (a change
parked for a predecessor it lacks) with that change's origin, as the
federation does. Writers sign real envelopes
and publish them in gossip batches (protocol/gossip.py). Faults come from
the scenario: partitions into regions and their heal, nodes stopped (and
restarted) at a time, hostile nodes publishing forged envelopes.

Virtual time: the run happens under ``trio.testing.MockClock`` with
autojump, so a simulated hour costs only its computation. Deterministic:
one seeded random source drives keys, connections, latencies, losses and
choices, and trio's own scheduler is seeded too, so a seed gives the same
summary, byte for byte (the tests check it).

What is measured: for every (node, change) pair, when the change reached
the node; convergence over time; gossip messages, bytes, losses and
duplicates per node and per change; IHAVE and IWANT, and the deliveries an
IWANT brought first (GossipSub's lazy repair of lost hops); the links a
message travelled (rounds); sync requests and bytes. After the run the safety checker
(simulation/checker.py) checks that every live node holds every
acknowledged write and that all live nodes hold identical state.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from registrygrid.errors import RegistryError
from registrygrid.identity.keys import KeyPair
from registrygrid.node.memory_transport import (
    MemoryHost,
    MemoryNetwork,
    lognormal_latency,
    no_latency,
)
from registrygrid.node.p2p_base import peer_id_from_seed
from registrygrid.node.transport import P2PError
from registrygrid.protocol.envelope import seal
from registrygrid.protocol.gossip import decode_batch, encode_batch, topic_for
from registrygrid.protocol.gossip_intake import Fresh, GossipIntake, Invalid
from registrygrid.protocol.hlc import Hlc
from registrygrid.protocol.sync import SYNC_PROTOCOL_ID, answer_sync
from registrygrid.protocol.sync_session import (
    GAP_SYNC_DELAY_S,
    Applied,
    Apply,
    EndPass,
    PassApplied,
    Response,
    SendRequest,
    Start,
    SyncSession,
)
from registrygrid.simulation import checker
from registrygrid.simulation.ledger import Ledger
from registrygrid.simulation.scenario import Scenario
from registrygrid.simulation.stats import full_propagation, hop_quantile, quantiles

FEDERATION = "sim"
TOPIC = topic_for(FEDERATION)
REGISTRY = "sim.records"
# What validating one new envelope costs a node, charged to its origin's
# validation budget (measured: ~50-100 us per Ed25519 verify and decode).
VERIFY_COST_S = 60e-6
# A peer table's redial period, and a sync request's timeout.
REDIAL_S = 5.0
REQUEST_TIMEOUT_S = 30.0
# The payload of a simulated change: a typical record's size.
PAYLOAD_BYTES = 400
# Convergence is sampled this many times over a run.
SAMPLES = 100
EPOCH_MS = 1_767_225_600_000  # 2026-01-01: virtual time 0


@dataclass
class SimNode:
    index: int
    key: KeyPair
    peer_id: str
    peers: list[str]
    ledger: Ledger = field(default_factory=Ledger)
    intake: GossipIntake = field(default_factory=GossipIntake)
    host: MemoryHost | None = None
    scope: trio.CancelScope | None = None
    alive: bool = True
    starting: bool = False  # a life is queued in the nursery, not yet begun (_start)
    held: int = 0  # stop faults holding it down now: it starts again when the last one ends
    hostile: bool = False
    syncing: bool = False
    gap_sync_due: bool = False
    totals: Counter[str] = field(default_factory=Counter)  # host stats of past lives (restarts)


class Simulation:
    def __init__(self, scenario: Scenario, *, progress: Callable[[float, float], None] | None = None) -> None:
        self.s = scenario
        self.rng = random.Random(scenario.seed)
        net = scenario.network
        latency = lognormal_latency(net.latency_ms / 1000, net.latency_sigma) if net.latency_ms > 0 else no_latency
        self.network = MemoryNetwork(seed=self.rng.randrange(2**32), latency=latency, loss=net.loss,
                                     degree=net.degree)
        self.progress = progress
        self.nodes: list[SimNode] = []
        for i in range(scenario.nodes):
            key = KeyPair(self.rng.randbytes(32))
            self.nodes.append(SimNode(i, key, peer_id_from_seed(key.seed), []))
        for node in self.nodes:  # a seeded random graph: each node dials `peers` others
            others = [n.peer_id for n in self.nodes if n is not node]
            node.peers = self.rng.sample(others, min(scenario.peers, len(others)))
        self.by_peer = {n.peer_id: n for n in self.nodes}
        self.writes: list[checker.Write] = []
        self.written_at: dict[bytes, float] = {}
        self.delays: list[float] = []
        self.delivered = 0  # (node, acknowledged change) pairs delivered, writers excepted
        self.samples: list[tuple[float, float]] = []
        self.stats: Counter[str] = Counter()
        self._nursery: trio.Nursery | None = None

    # ---- the run

    async def run(self) -> dict[str, Any]:
        s = self.s
        end = s.duration_s + s.settle_s
        async with self.network, trio.open_nursery() as nursery:
            self._nursery = nursery
            for node in self.nodes:
                nursery.start_soon(self._live, node)
            for fault in s.faults:
                nursery.start_soon(self._fault_at, fault)
            for node in self.nodes[:s.workload.writers]:
                nursery.start_soon(self._write_loop, node)
            interval = end / SAMPLES
            for step in range(1, SAMPLES + 1):
                await trio.sleep_until(step * interval)
                self.samples.append((round(trio.current_time(), 3), round(self._fraction(), 6)))
                if self.progress is not None:
                    self.progress(trio.current_time(), end)
            nursery.cancel_scope.cancel()
        return self._summary()

    async def _live(self, node: SimNode) -> None:
        """One life of a node: its host, handlers and loops, until stopped."""
        if node.held:  # a stop came while this life was queued
            node.starting = False
            return
        with trio.CancelScope() as scope:
            node.scope, node.alive, node.starting = scope, True, False
            async with self.network.host(node.peer_id) as host:
                node.host = host
                host.set_handler(SYNC_PROTOCOL_ID, self._serve_sync(node))
                events = host.peer_events()
                async with trio.open_nursery() as loops:
                    if self.s.gossip_enabled:
                        host.set_topic_validator(TOPIC, self._validator(node))
                        loops.start_soon(self._drain, node, await host.subscribe(TOPIC))
                    loops.start_soon(self._dial_loop, node)
                    loops.start_soon(self._on_connect, node, events)
                    if self.s.sync_enabled:
                        loops.start_soon(self._sync_loop, node)
                    if node.hostile:
                        loops.start_soon(self._hostile_loop, node)
        node.totals.update(host.stats)
        node.host, node.alive = None, False

    async def _dial_loop(self, node: SimNode) -> None:
        host = node.host
        assert host is not None
        while True:
            for peer in node.peers:
                if peer not in host.connected_peers() and peer in self.network.hosts \
                        and self.network.reachable(node.peer_id, peer):
                    try:
                        await host.connect(self.network.hosts[peer].listen_addrs()[0])
                    except (P2PError, IndexError):
                        continue
            # Redial no faster than half the sync period: a week-long run must not wake every 5 s.
            await trio.sleep(max(REDIAL_S, self.s.sync_interval_s / 2) * (0.5 + self.rng.random()))

    async def _on_connect(self, node: SimNode, events: trio.MemoryReceiveChannel[Any]) -> None:
        async for event in events:
            if event.kind == "connected" and self.s.sync_enabled:
                assert self._nursery is not None
                self._nursery.start_soon(self._sync_with, node, event.peer_id)

    async def _sync_loop(self, node: SimNode) -> None:
        host = node.host
        assert host is not None
        while True:
            await trio.sleep(self.s.sync_interval_s * (0.5 + self.rng.random()))
            peers = host.connected_peers()
            if peers:
                await self._sync_with(node, self.rng.choice(peers))

    # ---- sync: the node's own session machine, over the memory transport

    def _serve_sync(self, node: SimNode) -> Callable[[str, bytes], Any]:
        async def serve(peer: str, request: bytes) -> bytes:
            return answer_sync(request, node.ledger, federation=FEDERATION)
        return serve

    async def _sync_with(self, node: SimNode, peer: str) -> None:
        host = node.host
        if host is None or node.syncing:
            return
        node.syncing = True
        try:
            session = SyncSession(FEDERATION)
            actions = session.handle(Start(node.ledger.replicated_vector()))
            while actions:
                action, actions = actions[0], actions[1:]
                if isinstance(action, SendRequest):
                    data = await host.request(peer, SYNC_PROTOCOL_ID, action.data, timeout=REQUEST_TIMEOUT_S)
                    actions += session.handle(Response(data))
                elif isinstance(action, Apply):
                    actions += session.handle(self._apply(node, action.envelopes))
                elif isinstance(action, EndPass):
                    actions += session.handle(PassApplied(node.ledger.replicated_vector()))
            self.stats["sync.sessions"] += 1
        except (P2PError, RegistryError):
            self.stats["sync.failed"] += 1
        finally:
            node.syncing = False

    # ---- gossip: the node's own intake, in the topic validator

    def _validator(self, node: SimNode) -> Callable[[str, bytes], bool]:
        def validate(origin: str, data: bytes) -> bool:
            if origin == node.peer_id:
                return True  # our own publish: changes we signed and hold (as node/gossip.py)
            now = trio.current_time()
            verdict = node.intake.check(origin, data, now, node.ledger.has)
            if isinstance(verdict, Fresh):
                node.intake.budget(origin, now).spend(len(verdict.envelopes) * VERIFY_COST_S)
                node.intake.accept(verdict)
                return True
            if isinstance(verdict, Invalid):
                self.stats["gossip.invalid"] += 1
            return False
        return validate

    async def _drain(self, node: SimNode, subscription: trio.MemoryReceiveChannel[Any]) -> None:
        async for message in subscription:
            if self._apply(node, decode_batch(message.data)).pending:
                self._gap(node, message.from_peer)

    def _gap(self, node: SimNode, origin: str) -> None:
        """Gossip showed a gap (a change parked for its predecessor): sync
        soon with the change's origin, or any peer if it is not connected,
        as the node does (node/federation.py ``request_sync``); gaps seen
        while one such sync is due share it. None with sync off: the
        scenario measures gossip alone (it synced 192 times regardless)."""
        if not self.s.sync_enabled or node.gap_sync_due or self._nursery is None:
            return
        node.gap_sync_due = True
        self._nursery.start_soon(self._gap_sync, node, origin)

    async def _gap_sync(self, node: SimNode, origin: str) -> None:
        await trio.sleep(GAP_SYNC_DELAY_S)
        node.gap_sync_due = False
        if node.host is None:
            return
        peers = node.host.connected_peers()
        if origin in peers or peers:
            self.stats["sync.gap"] += 1
            await self._sync_with(node, origin if origin in peers else self.rng.choice(peers))

    def _apply(self, node: SimNode, wires: list[bytes]) -> Applied:
        counts, applied = node.ledger.apply(wires)
        now = trio.current_time()
        for cid in applied:
            written = self.written_at.get(cid)
            if written is not None:
                self.delays.append(now - written)
                self.delivered += 1
        return counts

    # ---- workload and faults

    async def _write_loop(self, node: SimNode) -> None:
        share, step = self.s.workload.schedule(node.index, self.s.duration_s)
        if not share:
            return
        await trio.sleep(self.rng.random() * step)
        for n in range(share):
            if node.alive and node.host is not None:
                await self._write(node, n)
            await trio.sleep(step)

    async def _write(self, node: SimNode, n: int) -> None:
        now = trio.current_time()
        chain = node.ledger.chains.get((REGISTRY, node.key.did), [])
        wire = seal(node.key, registry=REGISTRY, record=f"r{node.index}-{n}", op="create", kind="record", schema=1,
                    seq=len(chain) + 1, prev=chain[-1][0] if chain else b"", hlc=Hlc(EPOCH_MS + int(now * 1000), n),
                    deps=[], change_hash=b"", payload=self.rng.randbytes(PAYLOAD_BYTES)).wire
        _, applied = node.ledger.apply([wire])
        (cid,) = applied
        self.writes.append(checker.Write(cid, node.peer_id, now))  # acknowledged: durable at its writer
        self.written_at[cid] = now
        if self.s.gossip_enabled and node.host is not None:
            try:
                await node.host.publish(TOPIC, encode_batch([wire]))
            except P2PError:
                self.stats["gossip.publish_failed"] += 1

    async def _hostile_loop(self, node: SimNode) -> None:
        """Publish a forged change every second: a real envelope with one signature byte flipped."""
        host = node.host
        assert host is not None
        n = 0
        while True:
            await trio.sleep(1.0)
            n += 1
            wire = bytearray(seal(node.key, registry=REGISTRY, record=f"forged-{n}", op="create", kind="record",
                                  schema=1, seq=1, prev=b"", hlc=Hlc(EPOCH_MS, n), deps=[], change_hash=b"",
                                  payload=b"\x80").wire)
            wire[-3] ^= 0xFF
            self.stats["hostile.sent"] += 1
            try:
                await host.publish(TOPIC, encode_batch([bytes(wire)]))
            except P2PError:
                continue

    async def _fault_at(self, fault: Any) -> None:
        await trio.sleep_until(fault.at_s)
        nodes = self.nodes
        if fault.kind == "partition":
            size = math.ceil(len(nodes) / fault.groups)
            self.network.partition(*[[n.peer_id for n in nodes[i:i + size]] for i in range(0, len(nodes), size)])
        elif fault.kind == "heal":
            self.network.heal()
        elif fault.kind == "hostile":
            for i in fault.nodes:
                target = nodes[i]
                target.hostile = True
                if target.alive:  # restart it with the hostile loop (a stopped node stays down)
                    await self._stop(target)
                    self._start(target)
        elif fault.kind in ("stop", "kill"):  # in memory a kill is a stop: no disk to leave half-written
            chosen = [nodes[i] for i in fault.nodes] or self.rng.sample(
                nodes[self.s.workload.writers:], round(fault.fraction * (len(nodes) - self.s.workload.writers)))
            for target in chosen:
                target.held += 1
                await self._stop(target)
            if fault.for_s is not None:
                await trio.sleep(fault.for_s)
                for target in chosen:
                    target.held -= 1
                    if target.held == 0:  # overlapping stops: up when the last one ends
                        self._start(target)

    async def _stop(self, node: SimNode) -> None:
        if node.scope is not None and node.alive:
            node.scope.cancel()
            while node.alive:
                await trio.lowlevel.checkpoint()
            self.stats["stops"] += 1

    def _start(self, node: SimNode) -> None:
        assert self._nursery is not None
        if not node.alive and not node.starting:  # alive only once _live runs: started twice, it crashed
            node.starting = True
            self._nursery.start_soon(self._live, node)
            self.stats["starts"] += 1

    # ---- results

    def _fraction(self) -> float:
        expected = len(self.writes) * (len(self.nodes) - 1)
        return self.delivered / expected if expected else 1.0

    def _summary(self) -> dict[str, Any]:
        live = [n for n in self.nodes if n.alive]
        verdict = checker.check(self.writes, {n.peer_id: n.ledger.ids for n in live},
                                {n.peer_id: n.ledger.digest() for n in live})
        net = self.network.stats
        per_node: list[Counter[str]] = []
        for n in self.nodes:
            totals = Counter(n.totals)
            if n.host is not None:
                totals.update(n.host.stats)
            per_node.append(totals)
        sent = [c["gossip_sent"] for c in per_node]
        changes = max(1, len(self.writes))
        full = full_propagation(self.samples, bool(self.writes))
        hops = self.network.hops
        return {
            "scenario": self.s.name, "seed": self.s.seed, "nodes": len(self.nodes), "live_nodes": len(live),
            "virtual_seconds": self.s.duration_s + self.s.settle_s,
            "acknowledged_writes": len(self.writes),
            "propagation_ms": quantiles([d * 1000 for d in self.delays]),
            "converged_fraction": self.samples[-1][1] if self.samples else 1.0,
            "full_propagation_at_s": full,
            "gossip": {
                "messages": net["gossip_messages"], "bytes": net["gossip_bytes"], "lost": net["gossip_lost"],
                "duplicates": net["gossip_duplicates"],
                "duplicate_ratio": round(net["gossip_duplicates"] / max(1, net["gossip_messages"]), 4),
                # GossipSub's lazy repair: IHAVE offers, IWANT pulls, and the
                # deliveries that came first through one (memory_transport.py).
                "ihave": net["gossip_ihave"], "iwant": net["gossip_iwant"], "pulled": net["gossip_pulled"],
                "messages_per_node_per_change": round(statistics.fmean(sent) / changes, 3) if sent else 0.0,
                "max_messages_per_node_per_change": round(max(sent, default=0) / changes, 3),
                "invalid_rejected": self.stats["gossip.invalid"],
                # Deliveries a node's full subscription queue dropped (a burst
                # with no latency): a run lost them unseen, no loss counted.
                "dropped_queue_full": sum(c["gossip_dropped"] for c in per_node),
                "rounds": {"p50": hop_quantile(hops, 0.5), "p99": hop_quantile(hops, 0.99),
                           "max": max(hops, default=0),
                           "bound_2log2n": round(2 * math.log2(max(2, len(self.nodes))), 2)},
            },
            "sync": {"requests": net["requests"], "request_bytes": net["request_bytes"],
                     "response_bytes": net["response_bytes"], "sessions": self.stats["sync.sessions"],
                     "after_gaps": self.stats["sync.gap"], "failed": self.stats["sync.failed"]},
            "faults": {"stops": self.stats["stops"], "starts": self.stats["starts"],
                       "hostile_sent": self.stats["hostile.sent"]},
            "convergence": self.samples,
            "messages_per_node": sent,
            "propagation_delays_ms": sorted(round(d * 1000, 3) for d in self.delays),
            "checker": verdict.to_dict(),
        }


def simulate(scenario: Scenario, *, progress: Callable[[float, float], None] | None = None) -> dict[str, Any]:
    """Run ``scenario`` to its end in virtual time; the summary (see the module docstring)."""
    # Seed trio's scheduler too, and let it order each batch of runnable
    # tasks by their creation before it shuffles them (what pytest-trio turns
    # on under Hypothesis): otherwise tasks woken at one instant run in the
    # order their deadlines expired, which trio breaks by memory address, and
    # a seed replayed differently from process to process. With both, a seed
    # decides the whole run.
    trio._core._run._r.seed(scenario.seed)
    deterministic = trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING
    trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING = True
    try:
        summary: dict[str, Any] = trio.run(Simulation(scenario, progress=progress).run,
                                           clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING = deterministic
    return summary
