"""PNG plots of a simulation summary (node/simulator.py), with matplotlib.

Four figures people read faster than the JSON: the propagation-time CDF,
convergence over time, gossip messages per node, and where the gossip went
(delivered, duplicate, lost). matplotlib comes with the ``sim`` extra
(``pip install 'registrygrid[sim]'``); without it ``draw`` raises
FeatureUnavailable and the summary is still written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registrygrid.errors import FeatureUnavailable

EXTRA_HINT = "simulation plots need matplotlib: pip install 'registrygrid[sim]' (the JSON summary is written anyway)"


def draw(summary: dict[str, Any], out: Path) -> list[Path]:
    """Draw the four plots into ``out``; their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a server
        import matplotlib.pyplot as plt
    except ImportError:
        raise FeatureUnavailable(EXTRA_HINT) from None
    out.mkdir(parents=True, exist_ok=True)
    title = f"{summary['scenario']}: {summary['nodes']} nodes, {summary['acknowledged_writes']} changes"
    paths = []

    def save(fig: Any, name: str) -> None:
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    delays = summary["propagation_delays_ms"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if delays:
        ax.plot(delays, [(i + 1) / len(delays) for i in range(len(delays))])
        ax.set_xscale("log" if delays[-1] > 100 * max(delays[0], 1e-3) else "linear")
    ax.set(xlabel="time from write to a node (ms, virtual)", ylabel="share of (node, change) pairs",
           title="propagation time, CDF")
    ax.grid(alpha=0.3)
    save(fig, "propagation-cdf.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    times = [t for t, _ in summary["convergence"]]
    ax.plot(times, [f for _, f in summary["convergence"]])
    ax.set(xlabel="virtual time (s)", ylabel="share of (node, change) pairs delivered", ylim=(0, 1.02),
           title="convergence over time")
    ax.grid(alpha=0.3)
    save(fig, "convergence.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    per_change = [m / max(1, summary["acknowledged_writes"]) for m in summary["messages_per_node"]]
    ax.hist(per_change, bins=min(40, max(5, len(per_change) // 5)))
    ax.set(xlabel="gossip messages sent per change" if summary.get("mode") != "real"
           else "gossip messages published per change", ylabel="nodes", title="messages per node")
    ax.grid(alpha=0.3)
    save(fig, "messages-per-node.png")

    gossip = summary["gossip"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if "messages" in gossip:  # large-scale mode counts every hop
        sent = max(1, gossip["messages"])
        shares = {"lost": gossip["lost"] / sent, "duplicate": gossip["duplicates"] / sent,
                  "new to its receiver": max(0.0, 1 - (gossip["lost"] + gossip["duplicates"]) / sent)}
        title = f"duplicate ratio {gossip['duplicate_ratio']:.2f}"
    else:  # real nodes count what their validators saw
        seen = max(1, gossip["accepted"] + gossip["duplicates"] + gossip["invalid_rejected"])
        shares = {"invalid": gossip["invalid_rejected"] / seen, "duplicate": gossip["duplicates"] / seen,
                  "new to its receiver": gossip["accepted"] / seen}
        title = "gossip messages as the nodes' validators saw them"
    ax.bar(list(shares), list(shares.values()), color=["#c44", "#e90", "#4a4"])
    ax.set(ylabel="share of gossip messages", ylim=(0, 1), title=title)
    save(fig, "gossip-outcomes.png")
    return paths
