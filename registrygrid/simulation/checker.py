"""The safety checker of a simulation run (Jepsen-style, after the fact).

Every write a node acknowledged is recorded as it happens. After the
scenario, two properties must hold: every live node holds every
acknowledged write (no acknowledged write is lost), and all live nodes
hold identical state (equal ledger digests: they converged). A violation
is reported with its evidence: which node lacks which writes (and who
wrote them, when), and which nodes disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from registrygrid.protocol.envelope import cid_to_str


@dataclass(frozen=True)
class Write:
    change: bytes
    node: str
    at_s: float


@dataclass
class Verdict:
    ok: bool
    live_nodes: int
    acknowledged: int
    violations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "live_nodes": self.live_nodes, "acknowledged": self.acknowledged,
                "violations": self.violations}


def check(writes: list[Write], held: Mapping[str, set[bytes]], digests: Mapping[str, str], *,
          evidence: int = 5) -> Verdict:
    """``held``: each live node's change IDs; ``digests``: each live node's state digest."""
    violations: list[dict[str, Any]] = []
    acked = {w.change: w for w in writes}
    if acked and not held:
        # Vacuous otherwise: every node stopped for good, and the run "held
        # every acknowledged write" on none of them.
        violations.append({"property": "a live node is left to hold the acknowledged writes", "node": None,
                           "missing": len(acked), "first_missing": []})
    for node in sorted(held):
        missing = [acked[c] for c in acked if c not in held[node]]
        if missing:
            missing.sort(key=lambda w: (w.at_s, w.node))
            violations.append({"property": "every acknowledged write is held by every live node", "node": node,
                               "missing": len(missing),
                               "first_missing": [{"change": cid_to_str(w.change), "written_by": w.node,
                                                  "at_s": round(w.at_s, 3)} for w in missing[:evidence]]})
    groups: dict[str, list[str]] = {}
    for node, digest in sorted(digests.items()):
        groups.setdefault(digest, []).append(node)
    if len(groups) > 1:
        violations.append({"property": "all live nodes hold identical state", "states": len(groups),
                           "nodes_by_state": [{"digest": d[:16], "nodes": len(ns), "first": ns[:evidence]}
                                              for d, ns in sorted(groups.items(), key=lambda kv: -len(kv[1]))]})
    return Verdict(not violations, len(held), len(acked), violations)
