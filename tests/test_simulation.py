"""The sans-IO protocol, driven by an in-memory simulation (no sockets, no trio)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.anti_entropy import run


@pytest.mark.parametrize("loss", [0.0, 0.5, 1.0])
def test_nodes_converge_after_lossy_gossip_through_anti_entropy_alone(tmp_path: Path, loss: float) -> None:
    report = run(nodes=5, rounds=4, writes_per_round=2, loss=loss, seed=7, workdir=tmp_path)
    assert report.digests_equal
    assert report.converged_at is not None
    # 5 nodes x 4 rounds x 2 fresh records, plus the 4 shared ones every node edits
    assert report.records == 5 * 4 * 2 + 4
    if loss == 1.0:
        assert report.gossip_lost == report.gossip_sent  # everything arrived by anti-entropy
