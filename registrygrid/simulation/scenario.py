"""A simulation scenario: what network, what workload, what faults (TOML).

    name = "region-partition"
    description = "two regions lose each other for a minute, then heal"
    seed = 7
    nodes = 200
    duration_s = 120         # virtual seconds of workload
    settle_s = 120           # quiet virtual seconds after it, for convergence
    peers = 8                # connections each node opens at start

    [network]
    latency_ms = 40          # median one-way delay (log-normal)
    latency_sigma = 0.5
    loss = 0.01              # per gossip hop (messages, IHAVE and IWANT alike)
    degree = 6               # GossipSub's mesh degree D (D_lo, D_hi = 2D/3, 2D)

    [workload]
    changes = 2000
    writers = 20             # the first N nodes write
    pattern = "steady"       # steady: spread over duration_s; burst: all in the first second

    [sync]
    enabled = true
    interval_s = 10

    [gossip]
    enabled = true

    [[faults]]
    at_s = 30
    kind = "partition"       # partition (groups = N regions), heal, stop or kill (fraction or nodes, for_s),
                             # hostile (nodes; large-scale mode only)
    groups = 2

Every member is checked; a bad one is a ValidationError naming it
(``faults[1].kind``). Shipped examples: simulations/scenarios/*.toml.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registrygrid.errors import MalformedInput, ValidationError
from registrygrid.files import read_bounded

FAULT_KINDS = ("partition", "heal", "stop", "kill", "hostile")
PATTERNS = ("steady", "burst")
MAX_NODES = 10_000
# The summary keeps the delay of every (node, change) delivery: 10,000
# nodes and 10**7 changes passed, and a run would fill the memory with
# 10**11 of them. 20 million (~0.7 GB) is 50 times the largest shipped
# scenario (steady: 200 nodes x 2,000 changes).
MAX_DELIVERIES = 20_000_000
MAX_SCENARIO_BYTES = 1 << 20  # a scenario is a few lines of TOML
# Simulated time costs a sync session per node per period: a 2-node,
# 1-change scenario of 10**7 s ran ~9 h. 200,000 sessions (about ten
# minutes here at the shipped scenarios' sizes) is ten times offline-week's.
MAX_SYNC_SESSIONS = 200_000


@dataclass(frozen=True)
class Network:
    latency_ms: float = 30.0
    latency_sigma: float = 0.5
    loss: float = 0.0
    degree: int = 6


@dataclass(frozen=True)
class Workload:
    changes: int = 100
    writers: int = 1
    pattern: str = "steady"

    def schedule(self, writer: int, duration_s: float) -> tuple[int, float]:
        """Writer number ``writer``'s share of the changes, and the seconds
        between its writes (steady: spread over the duration; burst: within
        the first second)."""
        share = self.changes // self.writers + (writer < self.changes % self.writers)
        spread = duration_s if self.pattern == "steady" else min(1.0, duration_s)
        return share, spread / max(1, share)


@dataclass(frozen=True)
class Fault:
    at_s: float
    kind: str
    groups: int = 2  # partition: how many regions
    fraction: float = 0.0  # stop, kill: this share of the nodes (writers excepted) ...
    nodes: tuple[int, ...] = ()  # ... or these node numbers
    for_s: float | None = None  # stop: back after this long (None: for good)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    seed: int = 1
    nodes: int = 10
    duration_s: float = 10.0
    settle_s: float = 30.0
    peers: int = 8
    network: Network = field(default_factory=Network)
    workload: Workload = field(default_factory=Workload)
    sync_enabled: bool = True
    sync_interval_s: float = 10.0
    gossip_enabled: bool = True
    faults: tuple[Fault, ...] = ()


def load(path: str | Path) -> Scenario:
    try:
        data = tomllib.loads(read_bounded(path, MAX_SCENARIO_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"cannot read scenario {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MalformedInput(f"scenario {path} is not TOML: {exc}") from None
    except RecursionError:  # nested past the parser's depth: a traceback before
        raise MalformedInput(f"scenario {path} is not TOML this reads: nested too deeply") from None
    return parse(data, default_name=Path(path).stem)


def parse(data: Mapping[str, Any], *, default_name: str = "scenario") -> Scenario:
    _only(data, "", {"name", "description", "seed", "nodes", "duration_s", "settle_s", "peers", "network",
                     "workload", "sync", "gossip", "faults"})
    nodes = _int(data, "nodes", 10, 2, MAX_NODES)
    network = _table(data, "network")
    workload = _table(data, "workload")
    sync = _table(data, "sync")
    gossip = _table(data, "gossip")
    _only(network, "network.", {"latency_ms", "latency_sigma", "loss", "degree"})
    _only(workload, "workload.", {"changes", "writers", "pattern"})
    _only(sync, "sync.", {"enabled", "interval_s"})
    _only(gossip, "gossip.", {"enabled"})
    pattern = workload.get("pattern", "steady")
    if pattern not in PATTERNS:
        raise _bad("workload.pattern", f"one of {', '.join(PATTERNS)}")
    faults = data.get("faults", [])
    if not isinstance(faults, list):
        raise _bad("faults", "a list of [[faults]] tables")
    changes = _int(workload, "changes", 100, 0, 10**7, at="workload.")
    if nodes * changes > MAX_DELIVERIES:
        raise _bad("workload.changes", f"at most {MAX_DELIVERIES:,} deliveries (nodes x changes) in all, "
                                       f"not {nodes * changes:,}: the summary keeps each one's delay")
    scenario = Scenario(
        name=_name(data, default_name),
        description=_str(data, "description", ""),
        seed=_int(data, "seed", 1, 0, 2**63),
        nodes=nodes,
        duration_s=_num(data, "duration_s", 10.0, 0.0, 10**7),
        settle_s=_num(data, "settle_s", 30.0, 0.0, 10**7),
        peers=_int(data, "peers", 8, 1, 64),
        network=Network(latency_ms=_num(network, "latency_ms", 30.0, 0.0, 60_000, at="network."),
                        latency_sigma=_num(network, "latency_sigma", 0.5, 0.0, 3.0, at="network."),
                        loss=_num(network, "loss", 0.0, 0.0, 0.99, at="network."),
                        degree=_int(network, "degree", 6, 1, 64, at="network.")),
        workload=Workload(changes=changes,
                          writers=_int(workload, "writers", 1, 1, nodes, at="workload."), pattern=pattern),
        sync_enabled=_bool(sync, "enabled", True, at="sync."),
        sync_interval_s=_num(sync, "interval_s", 10.0, 0.1, 86_400, at="sync."),
        gossip_enabled=_bool(gossip, "enabled", True, at="gossip."),
        faults=tuple(_fault(f, i, nodes) for i, f in enumerate(faults)),
    )
    if scenario.sync_enabled:
        sessions = nodes * (scenario.duration_s + scenario.settle_s) / scenario.sync_interval_s
        if sessions > MAX_SYNC_SESSIONS:
            raise _bad("sync.interval_s", f"at most {MAX_SYNC_SESSIONS:,} sync sessions (nodes x (duration_s + "
                                          f"settle_s) / interval_s) in all, not {int(sessions):,}: each costs "
                                          "real time; sync less often or simulate less time")
    return scenario


def _fault(data: Any, i: int, nodes: int) -> Fault:
    at = f"faults[{i}]."
    if not isinstance(data, Mapping):
        raise _bad(f"faults[{i}]", "a table")
    _only(data, at, {"at_s", "kind", "groups", "fraction", "nodes", "for_s"})
    kind = data.get("kind")
    if kind not in FAULT_KINDS:
        raise _bad(f"{at}kind", f"one of {', '.join(FAULT_KINDS)}")
    listed = data.get("nodes", [])
    # Each node once (a node listed twice was started twice, and the run
    # crashed); true is no node number, though Python counts it as 1.
    if not isinstance(listed, list) or not all(type(n) is int and 0 <= n < nodes for n in listed) \
            or len(set(listed)) != len(listed):
        raise _bad(f"{at}nodes", f"a list of distinct node numbers from 0 to {nodes - 1}")
    for_s = data.get("for_s")
    return Fault(at_s=_num(data, "at_s", 0.0, 0.0, 10**7, at=at), kind=kind,
                 groups=_int(data, "groups", 2, 2, nodes, at=at),
                 fraction=_num(data, "fraction", 0.0, 0.0, 1.0, at=at), nodes=tuple(listed),
                 for_s=None if for_s is None else _num(data, "for_s", 0.0, 0.0, 10**7, at=at))


# The name is the default output folder (sim-results/<name>): a name that
# was a path wrote the results anywhere ("../../x", "/etc/x").
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _name(data: Mapping[str, Any], default: str) -> str:
    if "name" not in data:  # the file's own name, made one
        return re.sub(r"[^A-Za-z0-9._-]", "-", default).lstrip("._-")[:100] or "scenario"
    value = data["name"]
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _bad("name", "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100")
    return value


def _bad(where: str, what: str) -> ValidationError:
    return ValidationError(f"scenario: {where}: {what}", details=[{"path": where, "message": what}])


def _only(data: Mapping[str, Any], at: str, known: set[str]) -> None:
    for key in data:
        if key not in known:
            raise _bad(f"{at}{key}", f"unknown; this table takes {', '.join(sorted(known))}")


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise _bad(key, "a table")
    return value


def _str(data: Mapping[str, Any], key: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or len(value) > 2000:
        raise _bad(key, "a string")
    return value


def _bool(data: Mapping[str, Any], key: str, default: bool, *, at: str = "") -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise _bad(f"{at}{key}", "true or false")
    return value


def _int(data: Mapping[str, Any], key: str, default: int, low: int, high: int, *, at: str = "") -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(f"{at}{key}", f"an integer from {low} to {high}")
    return value


def _num(data: Mapping[str, Any], key: str, default: float, low: float, high: float, *, at: str = "") -> float:
    value = data.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(f"{at}{key}", f"a number from {low:g} to {high:g}")
    return float(value)
