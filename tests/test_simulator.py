"""Large-scale simulation (node/simulator.py): the node's gossip intake and
sync session machines on many simulated nodes over the in-memory
transport, in virtual time. Small scenarios here (tens of nodes, a minute
of virtual time, seconds of wall time); the safety checker passes on a
healthy run, fails a deliberately broken one with its evidence, and a seed
gives the same summary byte for byte. Plus `rgrid sim` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registrygrid.errors import MalformedInput, ValidationError
from registrygrid.home import Home
from registrygrid.node.simulator import simulate
from registrygrid.sdk import LocalRegistry
from registrygrid.simulation import scenario
from registrygrid.storage.store import Store

pytestmark = pytest.mark.timeout(300)

SMALL = """
name = "small"
seed = 5
nodes = 24
duration_s = 20
settle_s = 60
peers = 4

[network]
latency_ms = 30
loss = 0.05

[workload]
changes = 120
writers = 4

[[faults]]
at_s = 5
kind = "partition"
groups = 2

[[faults]]
at_s = 25
kind = "heal"

[[faults]]
at_s = 3
kind = "stop"
fraction = 0.2
for_s = 20

[[faults]]
at_s = 1
kind = "hostile"
nodes = [23]
"""


def small(tmp_path: Path, text: str = SMALL) -> scenario.Scenario:
    path = tmp_path / "small.toml"
    path.write_text(text)
    return scenario.load(path)


def test_a_run_with_a_partition_churn_and_a_hostile_node_converges_and_passes_the_checker(tmp_path: Path) -> None:
    summary = simulate(small(tmp_path))

    assert summary["checker"] == {"ok": True, "live_nodes": 24, "acknowledged": 120, "violations": []}
    assert summary["converged_fraction"] == 1.0 and summary["full_propagation_at_s"] is not None
    gossip = summary["gossip"]
    assert gossip["messages"] > 0 and gossip["lost"] > 0, "5% of hops are lost"
    assert gossip["invalid_rejected"] > 0 and summary["faults"]["hostile_sent"] > 0, "forgeries were refused"
    assert summary["faults"]["stops"] >= 4 and summary["faults"]["starts"] >= 4
    assert summary["sync"]["sessions"] > 0, "sync repaired the partition and the stopped nodes"
    prop = summary["propagation_ms"]
    assert 0 < prop["p50"] <= prop["p90"] <= prop["p99"] <= prop["max"]
    assert len(summary["propagation_delays_ms"]) == 120 * 23, "every (node, change) pair, writers excepted"


def test_a_change_gossip_lost_reaches_every_node_a_second_or_so_later_by_a_sync_after_the_gap(
        tmp_path: Path) -> None:
    """A fifth of the hops are lost, each node forwards to 3 peers, and
    periodic sync is an hour away: a node that misses a change sees the gap
    at its author's next one (parked for its predecessor) and syncs with
    the author a second later, as the node does. Without that, most
    changes after a lost one stayed parked for the rest of the run."""
    summary = simulate(small(tmp_path, """
name = "gaps"
seed = 3
nodes = 12
duration_s = 30
settle_s = 30
peers = 4

[network]
latency_ms = 30
loss = 0.2
degree = 3

[sync]
interval_s = 3600

[workload]
changes = 300
writers = 3
"""))
    assert summary["gossip"]["lost"] > 0 and summary["sync"]["after_gaps"] > 0
    # Every change but the writers' last ones (no successor shows a gap:
    # where lost, they wait for the hour's sync) reaches all 11 other nodes,
    # each within a few seconds.
    delays = summary["propagation_delays_ms"]
    assert len(delays) >= (300 - 3) * 11
    assert max(delays) < 5_000


def test_the_same_seed_gives_the_same_summary_byte_for_byte(tmp_path: Path) -> None:
    spec = small(tmp_path)
    first = json.dumps(simulate(spec), sort_keys=True)
    second = json.dumps(simulate(spec), sort_keys=True)
    assert first == second
    other = json.dumps(simulate(scenario.parse({**json.loads('{"name": "small"}'), "seed": 6, "nodes": 24,
                                                "duration_s": 20, "settle_s": 60, "peers": 4,
                                                "workload": {"changes": 120, "writers": 4}})), sort_keys=True)
    assert other != first


def test_a_seed_replays_exactly_in_another_process_whatever_its_hash_seed(tmp_path: Path) -> None:
    """What a simulation does may not hang on set order (string hashes vary
    by process) or on the order in which trio runs tasks woken at one
    instant (by memory address, unless told to order them: simulate does)."""
    (tmp_path / "small.toml").write_text(SMALL)
    program = ("import json, sys; from registrygrid.node.simulator import simulate; "
               "from registrygrid.simulation import scenario; "
               "print(json.dumps(simulate(scenario.load(sys.argv[1])), sort_keys=True))")
    runs = [subprocess.run([sys.executable, "-c", program, str(tmp_path / "small.toml")], check=True,
                           capture_output=True, text=True, timeout=240,
                           env={**os.environ, "PYTHONHASHSEED": str(hash_seed)}).stdout
            for hash_seed in (1, 2)]
    assert runs[0] and runs[0] == runs[1]


def test_the_checker_fails_a_broken_configuration_and_shows_the_evidence(tmp_path: Path) -> None:
    broken = scenario.load(Path(scenario.__file__).parent / "scenarios" / "broken-partition.toml")
    summary = simulate(broken)

    verdict = summary["checker"]
    assert not verdict["ok"]
    lost = [v for v in verdict["violations"] if v["property"].startswith("every acknowledged write")]
    assert len(lost) == 10, "the half that never heard the writers lacks their writes"
    assert 100 < lost[0]["missing"] < 200, "all written after the split, at 5 s"
    assert lost[0]["first_missing"][0]["change"].startswith("b") and lost[0]["first_missing"][0]["at_s"] >= 5
    split = [v for v in verdict["violations"] if v["property"] == "all live nodes hold identical state"]
    assert split and split[0]["states"] == 2


def test_every_shipped_scenario_parses() -> None:
    folder = Path(scenario.__file__).parent / "scenarios"
    names = {path.stem for path in folder.glob("*.toml")}
    assert {"steady", "flash-crowd", "churn", "region-partition", "hostile-peer", "offline-week"} <= names
    for path in folder.glob("*.toml"):
        assert scenario.load(path).description


@pytest.mark.parametrize("text, where", [
    ("nodes = 1", "nodes"),
    ("[network]\nloss = 1.5", "network.loss"),
    ("[workload]\npattern = 'spiky'", "workload.pattern"),
    ("[[faults]]\nat_s = 1\nkind = 'meteor'", "faults[0].kind"),
    ("[[faults]]\nat_s = 1\nkind = 'stop'\nnodes = [99]", "faults[0].nodes"),
    ("colour = 'blue'", "colour"),
    # The name is the default output folder: a path wrote results anywhere.
    ("nodes = 10000\n[workload]\nchanges = 10000", "workload.changes"),  # 10**8 delays kept: out of memory
    # Two nodes and 10**7 simulated seconds ran ~9 h: sync sessions are bounded.
    ("nodes = 2\nduration_s = 10000000", "sync.interval_s"),
    ("name = '../../escaped'", "name"),
    ("name = '/tmp/escaped'", "name"),
    ("name = 'x[/]'", "name"),  # rich markup, which crashed the progress bar
    # Listed twice, a node was started twice (a crash); true is no number.
    ("[[faults]]\nat_s = 1\nkind = 'stop'\nnodes = [3, 3]", "faults[0].nodes"),
    ("[[faults]]\nat_s = 1\nkind = 'stop'\nnodes = [true]", "faults[0].nodes"),
])
def test_a_bad_scenario_is_refused_naming_its_bad_part(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ValidationError) as refused:
        small(tmp_path, text)
    assert refused.value.details[0]["path"] == where


def test_a_scenario_that_is_not_toml_is_malformed(tmp_path: Path) -> None:
    with pytest.raises(MalformedInput):
        small(tmp_path, "nodes = = 3")
    with pytest.raises(MalformedInput, match="nested too deeply"):  # a RecursionError before
        small(tmp_path, "x = " + "[" * 5000 + "]" * 5000)


def test_a_scenario_named_by_its_file_takes_a_name_that_is_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "my scenario (2).toml"
    path.write_text("nodes = 3")
    assert scenario.load(path).name == "my-scenario--2-"


OVERLAPPING = """
name = "overlap"
seed = 3
nodes = 12
duration_s = 40
settle_s = 40
peers = 4
[sync]
enabled = {sync}
[workload]
changes = 60
writers = 2
[[faults]]
at_s = 5
kind = "stop"
nodes = [0, 5]
for_s = 20
[[faults]]
at_s = 10
kind = "stop"
nodes = [5, 6]
for_s = 15
[[faults]]
at_s = 12
kind = "stop"
nodes = [7]
[[faults]]
at_s = 14
kind = "hostile"
nodes = [7]
"""


def test_overlapping_stops_a_restarted_writer_and_a_node_stopped_for_good_play_as_written(tmp_path: Path) -> None:
    # Two stops ending together started a node twice (a traceback); a
    # hostile fault brought back node 7, stopped for good; the writer
    # restarted at 25 s published message ids its peers had seen from its
    # first life, which they dropped as duplicates
    # (tests/test_memory_gossip.py::test_a_host_restarted_under_its_peer_id_publishes_messages_its_peers_take_as_new).
    summary = simulate(small(tmp_path, OVERLAPPING.format(sync="true")))
    assert summary["checker"]["ok"], summary["checker"]
    assert summary["live_nodes"] == 11
    assert summary["faults"] == {"stops": 4, "starts": 3, "hostile_sent": 0}
    assert summary["gossip"]["dropped_queue_full"] == 0  # reported: a zero-latency burst drops some unseen


def test_with_sync_off_no_node_syncs_even_after_a_gap(tmp_path: Path) -> None:
    summary = simulate(small(tmp_path, OVERLAPPING.format(sync="false").replace("kind = \"hostile\"",
                                                                                   "kind = \"heal\"")))
    assert summary["sync"]["sessions"] == 0


def test_the_checker_fails_a_run_that_left_no_live_node_to_hold_the_writes() -> None:
    from registrygrid.simulation import checker

    verdict = checker.check([checker.Write(b"c", "n0", 1.0)], {}, {})
    assert not verdict.ok and verdict.violations[0]["property"].startswith("a live node is left")


def rgrid(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "registrygrid", *args], check=False, capture_output=True,
                          text=True, timeout=240, cwd=cwd, env={**os.environ, "RGRID_HOME": ""})


def test_rgrid_sim_runs_a_scenario_writes_its_summary_and_plots_and_fails_a_violation(tmp_path: Path) -> None:
    (tmp_path / "small.toml").write_text(SMALL)
    listed = rgrid("sim", "list", cwd=tmp_path)
    ran = rgrid("sim", "run", "small.toml", "--out", "out", cwd=tmp_path)
    broken = rgrid("sim", "run", "broken-partition", "--out", "broken", "--no-plots", cwd=tmp_path)

    assert listed.returncode == 0 and "region-partition" in listed.stdout and "offline-week" in listed.stdout
    assert ran.returncode == 0, ran.stderr
    assert "safety: ok" in ran.stdout and "propagation: p50" in ran.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["checker"]["ok"] and summary["nodes"] == 24
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {
        "propagation-cdf.png", "convergence.png", "messages-per-node.png", "gossip-outcomes.png"}
    assert broken.returncode == 1 and "SAFETY VIOLATED" in broken.stderr and "missing" in broken.stderr
    assert not list((tmp_path / "broken").glob("*.png"))


def test_real_node_mode_plays_a_scenario_on_node_processes_and_checks_it(tmp_path: Path) -> None:
    """`rgrid sim run real-small --real`: 5 `rgrid node start` processes on
    127.0.0.1, writes through their bridges, a partition through their peer
    controls and its heal, one node killed (-9) and restarted, one stopped
    and restarted; every acknowledged write everywhere, equal states."""
    ran = rgrid("sim", "run", "real-small", "--real", "--out", "out", "--no-plots", "--keep", "homes", cwd=tmp_path)

    assert ran.returncode == 0, ran.stdout + ran.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "real" and summary["nodes"] == 5
    assert summary["checker"]["ok"] and summary["checker"]["live_nodes"] == 5
    assert summary["acknowledged_writes"] == 60 and summary["converged_fraction"] == 1.0
    assert summary["faults"] == {"stops": 1, "kills": 1, "starts": 2, "write_failures": 0}
    assert summary["gossip"]["published"] >= 60 and summary["sync"]["sessions"] > 0
    for log in (tmp_path / "homes").glob("n*.log"):
        assert b"Traceback" not in log.read_bytes(), log.read_text()[-2000:]


def test_engine_mode_plays_a_scenario_on_whole_nodes_in_virtual_time_and_checks_it(tmp_path: Path) -> None:
    """`rgrid sim run engine-small --engine`: 6 whole nodes (engine, LMDB
    homes, federation) over the in-memory network in virtual time; a
    partition and its heal, a node stopped and restarted on its home, a
    member forging envelopes that every other node's validator refuses;
    every acknowledged write everywhere, equal states."""
    ran = rgrid("sim", "run", "engine-small", "--engine", "--out", "out", "--no-plots", "--keep", "homes",
                cwd=tmp_path)

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "safety: ok" in ran.stdout
    # The nodes' warnings (each forgery gets its publisher banned) go to a
    # file beside the summary, not between the progress bar and the figures.
    assert "banned" not in ran.stderr
    assert "banned" in (tmp_path / "out" / "nodes.log").read_text()
    assert f"node warnings in {Path('out') / 'nodes.log'}" in ran.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "engine" and summary["nodes"] == 6
    assert summary["checker"]["ok"] and summary["checker"]["live_nodes"] == 5  # the hostile member is not judged
    assert summary["acknowledged_writes"] == 60 and summary["converged_fraction"] == 1.0
    assert summary["faults"]["stops"] == 1 and summary["faults"]["starts"] == 1
    assert summary["faults"]["hostile_sent"] > 0 and summary["gossip"]["invalid_rejected"] > 0
    assert summary["gossip"]["published"] >= 60 and summary["sync"]["sessions"] > 0
    # The homes are real node homes: each honest node's store holds the 60 records, in one state.
    assert sorted(p.name for p in (tmp_path / "homes").iterdir()) == [f"n{i}" for i in range(6)]
    digests = set()
    for i in (0, 1, 2, 3, 5):  # n4 is the hostile member
        store = Store(Home(tmp_path / "homes" / f"n{i}").store_path, readonly=True)
        try:
            registry = LocalRegistry(store, engine=None)  # type: ignore[arg-type]
            assert sum(1 for _ in registry.iter_all("grid.clusters")) == 60
            digests.add(registry.state_digest())
        finally:
            store.close()
    assert len(digests) == 1


@pytest.mark.parametrize(("text", "message"), [
    ('name = "x"\nnodes = 101\n', "engine mode runs 2 to 100 nodes"),
    ('name = "x"\nnodes = 4\n[sync]\nenabled = false\n', "always gossip and sync"),
])
def test_engine_mode_refuses_what_whole_nodes_cannot_play(tmp_path: Path, text: str, message: str) -> None:
    from registrygrid.node.engine_simulator import simulate_engine

    with pytest.raises(ValidationError, match=message):
        simulate_engine(small(tmp_path, text), root=tmp_path / "homes")


def test_real_mode_refuses_more_than_an_hour_of_real_time(tmp_path: Path) -> None:
    from registrygrid.simulation.real import run_real

    with pytest.raises(ValidationError, match="real time, at most 3600 s"):
        run_real(small(tmp_path, 'name = "x"\nnodes = 3\nduration_s = 86400\n'), keep=tmp_path / "homes")
    assert not (tmp_path / "homes").exists() or not any((tmp_path / "homes").iterdir())


def _processes_under(root: Path) -> list[int]:
    """The pids whose command line names a path under ``root``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(root) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_real_mode_run_stopped_with_sigterm_stops_its_nodes_and_removes_its_homes(tmp_path: Path) -> None:
    # SIGTERM ended the run at once: Python skipped its cleanup, and every
    # node process and the temporary homes outlived it. A scenario it
    # refused left an empty temporary directory behind.
    import signal
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "RGRID_HOME": "", "TMPDIR": str(tmp)}
    refused = subprocess.run([sys.executable, "-m", "registrygrid", "sim", "run", "real-small", "--real",
                              "--nodes", "51"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert refused.returncode != 0 and not list(tmp.iterdir())
    # Nor an empty results folder (the mode's own limits were checked after it was made).
    assert not (tmp_path / "sim-results").exists()
    sim = subprocess.Popen([sys.executable, "-m", "registrygrid", "sim", "run", "real-small", "--real",
                            "--no-plots", "--out", "out"], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(_processes_under(tmp)) < 3 and time.monotonic() < deadline:  # its nodes are up
            time.sleep(0.2)
        assert _processes_under(tmp), "the run started no node"
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=90)
        left = _processes_under(tmp)
    finally:
        if sim.poll() is None:
            sim.kill()
        for pid in _processes_under(tmp):  # never leave a node behind, whatever the outcome
            os.kill(pid, signal.SIGKILL)
    assert sim.returncode != 0
    assert left == [] and not list(tmp.iterdir())
