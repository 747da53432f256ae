"""Real-node mode: a scenario played on N real nodes (2 to 50), each its own
OS process (`rgrid node start`: py-libp2p on 127.0.0.1, LMDB in a temporary
home, the HTTP bridge), in real time.

``run_real(scenario)`` makes the homes (one federation: the first node's
org founds it and invites the others), starts the processes (each dials
the first node and a seeded choice of others), drives the workload through
the writers' bridges (each write acknowledged by HTTP 201, durable), and
follows every node's changefeed by long polling (`GET /v1/changes?wait=`)
to time when each change reached each node. Faults go through what an
operator has: SIGTERM and restart (``stop``), SIGKILL and restart
(``kill``), and partitions through the nodes' own peer controls (``POST
/v1/peers/deny`` and ``/allow``: each node refuses the peers outside its
region, then allows them again at ``heal``). After the settle time the
safety checker (simulation/checker.py) judges the live nodes: each one's
changefeed must hold every acknowledged write, and their stores (read
through read-only LMDB environments beside the running processes) must
have equal state digests. The summary has the large-scale mode's shape.

No trio here: processes, HTTP (registrygrid/client/) and threads.
Hostile nodes are a large-scale mode fault only (a real node does not
forge envelopes; tests/test_federation_hostile.py covers real ones).
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registrygrid.client import BridgeClient
from registrygrid.errors import RegistryError, Unavailable, ValidationError
from registrygrid.home import Home
from registrygrid.ports import unused_ports
from registrygrid.protocol.envelope import cid_from_str
from registrygrid.sdk import LocalRegistry
from registrygrid.simulation import checker
from registrygrid.simulation.homes import federation_homes
from registrygrid.simulation.scenario import Scenario
from registrygrid.simulation.stats import full_propagation, quantiles
from registrygrid.storage.store import Store

MAX_REAL_NODES = 50
# Real nodes run in real time: a scenario's simulated week would take one.
MAX_REAL_SECONDS = 3600
FEDERATION = "sim-real"
REGISTRY = "grid.clusters"
START_TIMEOUT_S = 60.0
POLL_WAIT_S = 1.0
SAMPLES = 100


@dataclass
class RealNode:
    index: int
    home: Home
    p2p_port: int
    bridge_port: int
    peer_id: str
    bootstrap: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    client: BridgeClient | None = None  # the run's thread's (fault injection); each other thread makes its own
    life: int = 0  # bumped at each start: a thread's client of an earlier life is stale
    seen: dict[str, float] = field(default_factory=dict)  # change id -> first seen (monotonic)
    cursor: int = 0

    @property
    def addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.p2p_port}/p2p/{self.peer_id}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "registrygrid", "node", "start", "--home", str(self.home.path),
               "--listen", f"/ip4/127.0.0.1/tcp/{self.p2p_port}", "--bridge-port", str(self.bridge_port),
               "--no-dht", "--no-search", "--log-level", "WARNING"]
        for addr in self.bootstrap:
            cmd += ["--bootstrap", addr]
        with open(self.log, "ab") as log, _SIGTERM.deferred():
            # A SIGTERM raised inside Popen, after the fork, left a node
            # process no one knew of to stop: it waits for self.proc.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.client = None
        self.life += 1

    def own_client(self, held: tuple[int, BridgeClient | None]) -> tuple[int, BridgeClient | None]:
        """A thread's own client of this node's current life (http.client
        connections are not shared between threads); None while it is down."""
        life, client = held
        if self.client is None:
            return self.life, None
        if client is None or life != self.life:
            info = _bridge_file(self.home)
            return self.life, BridgeClient(info["url"], token=info["token"]) if info else None
        return life, client

    def wait_ready(self, deadline: float) -> BridgeClient:
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise Unavailable(f"node {self.index} exited at start; its log ({self.log}, kept with --keep) ends:\n"
                                  f"{self.log_tail()}")
            info = _bridge_file(self.home)
            if info is not None:
                client = BridgeClient(info["url"], token=info["token"])
                try:
                    client.feed_head()
                    self.client = client
                    return client
                except RegistryError:
                    pass
            time.sleep(0.1)
        # Its log is named with its tail: the run's directory (and the log)
        # is removed when the run ends, unless --keep.
        raise Unavailable(f"node {self.index} did not serve within {START_TIMEOUT_S:g} s; its log ({self.log}, "
                          f"kept with --keep) ends:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(unreadable: {e})"

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc, self.client = None, None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _bridge_file(home: Home) -> dict[str, Any] | None:
    import json

    path = home.path / "bridge.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None  # being written


class RealRun:
    def __init__(self, scenario: Scenario, root: Path, *, progress: Callable[[float, float], None] | None = None):
        if not 2 <= scenario.nodes <= MAX_REAL_NODES:
            raise ValidationError(f"real-node mode runs 2 to {MAX_REAL_NODES} nodes, not {scenario.nodes} "
                                  "(large-scale mode runs more)")
        if scenario.duration_s + scenario.settle_s > MAX_REAL_SECONDS:
            raise ValidationError(f"real-node mode runs in real time, at most {MAX_REAL_SECONDS} s (duration_s + "
                                  f"settle_s), not {scenario.duration_s + scenario.settle_s:g}; large-scale mode "
                                  "simulates longer")
        if any(f.kind == "hostile" for f in scenario.faults):
            raise ValidationError("real-node mode has no hostile nodes (a real node signs honestly); run the "
                                  "scenario in large-scale mode")
        if not (scenario.sync_enabled and scenario.gossip_enabled):
            # As engine mode: it ran them with both on, and reported the
            # "no sync" scenario's 110 sync sessions as its result.
            raise ValidationError("real-node mode runs real nodes, which always gossip and sync: run a scenario "
                                  "that turns either off in large-scale mode")
        self.s = scenario
        self.root = root
        self.progress = progress
        self.rng = random.Random(scenario.seed)
        self.nodes: list[RealNode] = []
        self.writes: list[checker.Write] = []
        self.written_at: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.start_time = 0.0
        self.stats: dict[str, int] = {"stops": 0, "kills": 0, "starts": 0, "write_failures": 0}
        self.fault_failures: list[RegistryError] = []

    # ---- setup

    def make_nodes(self) -> None:
        homes = federation_homes(self.root, self.s.nodes, FEDERATION)
        ports = unused_ports(2 * len(homes))
        for i, home in enumerate(homes):
            self.nodes.append(RealNode(i, home, ports[2 * i], ports[2 * i + 1], home.node_key().peer_id, [],
                                       self.root / f"n{i}.log"))
        for node in self.nodes[1:]:
            others = [n for n in self.nodes[1:] if n is not node]
            node.bootstrap = [self.nodes[0].addr] + [n.addr for n in self.rng.sample(others, min(
                len(others), self.s.peers - 1))]

    # ---- the run

    def run(self) -> dict[str, Any]:
        self.make_nodes()
        for node in self.nodes:
            node.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        for node in self.nodes:
            node.wait_ready(deadline)
        self.start_time = time.monotonic()
        threads = [threading.Thread(target=self._follow, args=(n,), daemon=True) for n in self.nodes]
        threads += [threading.Thread(target=self._writer, args=(n,), daemon=True)
                    for n in self.nodes[:self.s.workload.writers]]
        threads += [threading.Thread(target=self._fault_thread, args=(f,), daemon=True) for f in self.s.faults]
        for thread in threads:
            thread.start()
        end = self.s.duration_s + self.s.settle_s
        samples: list[tuple[float, float]] = []
        for step in range(1, SAMPLES + 1):
            self._sleep_until(step * end / SAMPLES)
            samples.append((round(self.now(), 3), round(self._fraction(), 6)))
            if self.progress is not None:
                self.progress(self.now(), end)
        self.stop_event.set()
        if self.fault_failures:
            raise self.fault_failures[0]  # a fault the run could not play (e.g. a restart failed) voids the run
        return self._summary(samples)

    def close(self) -> None:
        self.stop_event.set()
        for node in self.nodes:
            node.signal(signal.SIGTERM)

    def now(self) -> float:
        return time.monotonic() - self.start_time

    def _sleep_until(self, at: float) -> None:
        delay = at - self.now()
        if delay > 0:
            self.stop_event.wait(delay)

    def _follow(self, node: RealNode) -> None:
        """Long-poll the node's changefeed: when each change reached it."""
        held: tuple[int, BridgeClient | None] = (0, None)
        while not self.stop_event.is_set():
            held = node.own_client(held)
            client = held[1]
            if client is None:
                self.stop_event.wait(0.1)
                continue
            try:
                events = client.changes(node.cursor, limit=1000, wait=POLL_WAIT_S)
            except RegistryError:
                self.stop_event.wait(0.1)
                continue
            now = self.now()
            with self.lock:
                for event in events:
                    node.seen.setdefault(event.change, now)
                    node.cursor = max(node.cursor, event.seq)

    def _writer(self, node: RealNode) -> None:
        share, step = self.s.workload.schedule(node.index, self.s.duration_s)
        self._sleep_until(self.rng.random() * step)
        held: tuple[int, BridgeClient | None] = (0, None)
        for n in range(share):
            if self.stop_event.is_set():
                return
            held = node.own_client(held)
            client = held[1]
            if client is not None:
                try:
                    result = client.put(REGISTRY, "cluster", {"name": f"n{node.index}-{n}"}, id=f"n{node.index}-{n}")
                    at = self.now()
                    with self.lock:
                        self.writes.append(checker.Write(cid_from_str(result.change_id), node.peer_id, at))
                        self.written_at[result.change_id] = at
                except RegistryError:
                    with self.lock:
                        self.stats["write_failures"] += 1  # not acknowledged: not counted against anyone
            self._sleep_until(self.now() + step)

    def _fault_thread(self, fault: Any) -> None:
        try:
            self._fault(fault)
        except RegistryError as e:
            with self.lock:
                self.fault_failures.append(e)

    def _fault(self, fault: Any) -> None:
        self._sleep_until(fault.at_s)
        if self.stop_event.is_set():
            return
        nodes = self.nodes
        if fault.kind == "partition":
            size = -(-len(nodes) // fault.groups)
            regions = [nodes[i:i + size] for i in range(0, len(nodes), size)]
            for region in regions:
                outside = [n.peer_id for n in nodes if n not in region]
                for node in region:
                    if node.client is not None:
                        node.client.deny_peers(outside)
        elif fault.kind == "heal":
            everyone = [n.peer_id for n in nodes]
            for node in nodes:
                if node.client is not None:
                    node.client.allow_peers([p for p in everyone if p != node.peer_id])
        elif fault.kind in ("stop", "kill"):
            chosen = [nodes[i] for i in fault.nodes] or self.rng.sample(
                nodes[self.s.workload.writers:], round(fault.fraction * (len(nodes) - self.s.workload.writers)))
            for node in chosen:
                node.signal(signal.SIGTERM if fault.kind == "stop" else signal.SIGKILL)
                self.stats["stops" if fault.kind == "stop" else "kills"] += 1
            if fault.for_s is not None:
                self._sleep_until(fault.at_s + fault.for_s)
                for node in chosen:
                    node.start()
                    node.wait_ready(time.monotonic() + START_TIMEOUT_S)
                    self.stats["starts"] += 1

    # ---- results

    def _fraction(self) -> float:
        with self.lock:
            written = list(self.written_at)
            expected = len(written) * (len(self.nodes) - 1)
            got = sum(1 for node in self.nodes for c in written if c in node.seen) - len(written)
        return max(0, got) / expected if expected else 1.0

    def _summary(self, samples: list[tuple[float, float]]) -> dict[str, Any]:
        live = [n for n in self.nodes if n.alive]
        held = {n.peer_id: {cid_from_str(c) for c in n.seen} for n in live}
        digests = {n.peer_id: _digest(n.home) for n in live}
        verdict = checker.check(self.writes, held, digests)
        delays = sorted(round((n.seen[c] - at) * 1000, 3) for n in self.nodes for c, at in self.written_at.items()
                        if c in n.seen and n.seen[c] >= at - 0.5 and n.peer_id != self._writer_of(c))
        stats = [self._stats(n) for n in live]
        return {
            "mode": "real", "scenario": self.s.name, "seed": self.s.seed, "nodes": len(self.nodes),
            "live_nodes": len(live), "virtual_seconds": self.s.duration_s + self.s.settle_s,
            "acknowledged_writes": len(self.writes),
            "propagation_ms": quantiles(delays), "converged_fraction": samples[-1][1] if samples else 1.0,
            "full_propagation_at_s": full_propagation(samples, bool(self.writes)),
            "gossip": {"published": int(sum(s.get("gossip_published", 0) for s in stats)),
                       "accepted": int(sum(s.get("gossip_accepted", 0) for s in stats)),
                       "duplicates": int(sum(s.get("gossip_duplicate", 0) for s in stats)),
                       "invalid_rejected": int(sum(s.get("gossip_invalid", 0) for s in stats))},
            "sync": {"sessions": int(sum(s.get("sync_sessions", 0) for s in stats)),
                     "rounds": int(sum(s.get("sync_rounds", 0) for s in stats))},
            "faults": dict(self.stats), "convergence": samples, "propagation_delays_ms": delays,
            "messages_per_node": [int(s.get("gossip_published", 0)) for s in stats],
            "checker": verdict.to_dict(),
        }

    def _writer_of(self, change: str) -> str | None:
        cid = cid_from_str(change)
        return next((w.node for w in self.writes if w.change == cid), None)

    @staticmethod
    def _stats(node: RealNode) -> dict[str, float]:
        """The node's federation counters, from its Prometheus endpoint
        (``federation.gossip.published`` is ``rgrid_federation_gossip_published``)."""
        from prometheus_client.parser import text_string_to_metric_families

        info = _bridge_file(node.home)
        if info is None or not node.alive:
            return {}
        try:
            with urllib.request.urlopen(f"{info['url']}/metrics", timeout=10) as answer:
                text = answer.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name.startswith("rgrid_federation_"):
                key = family.name[len("rgrid_federation_"):]
                out[key] = sum(sample.value for sample in family.samples if sample.name.endswith("_total")
                               or sample.name == family.name)
        return out


def _digest(home: Home) -> str:
    store = Store(home.store_path, readonly=True)
    try:
        return LocalRegistry(store, engine=None).state_digest()  # type: ignore[arg-type]
    finally:
        store.close()


def run_real(scenario: Scenario, *, keep: Path | None = None,
             progress: Callable[[float, float], None] | None = None) -> dict[str, Any]:
    """Play ``scenario`` on real node processes; the summary. The homes live in
    a temporary directory, removed afterwards unless ``keep`` names one."""
    root = keep or Path(tempfile.mkdtemp(prefix="rgrid-sim-real-"))
    run: RealRun | None = None
    with _sigterm_as_exit():
        try:
            root.mkdir(parents=True, exist_ok=True)
            run = RealRun(scenario, root, progress=progress)  # a scenario it refuses leaves no directory
            return run.run()
        finally:
            if run is not None:
                run.close()
            if keep is None:
                shutil.rmtree(root, ignore_errors=True)


class _Sigterm:
    """SIGTERM as an exit the main thread unwinds, held back while it
    starts a node process (``deferred``)."""

    def __init__(self) -> None:
        self.holding = False
        self.pending: int | None = None

    def handle(self, signum: int, _frame: Any) -> None:
        if self.holding:
            self.pending = signum
            return
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the cleanup it starts is not cut short
        raise SystemExit(128 + signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # handlers run on the main thread: nothing to hold back here
            return
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            pending, self.pending = self.pending, None
            if pending is not None:
                self.handle(pending, None)


_SIGTERM = _Sigterm()


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds the run as Ctrl-C does: Python's default handling
    ends the process at once, skipping ``finally``, and every node process
    and the temporary homes outlived it. (The main thread only: a handler
    can be set nowhere else.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _SIGTERM.handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
