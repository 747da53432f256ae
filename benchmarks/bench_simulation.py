"""Large-scale simulation: propagation rounds and message amplification vs N.

Runs the steady-state scenario (node/simulator.py: the node's own gossip
intake and sync session machines, in-memory transport, virtual time) at
N = 10, 100 and 1,000 nodes with the same workload (1,000 changes from
min(N, 50) writers over 60 virtual seconds, then 60 s to settle; 40 ms
median latency, no loss, mesh degree D = 6), and prints for each N:

  - gossip rounds (links a message travelled to reach a node): p50, p99 and
    max, beside 2 log2 N (the issue's goal) and log_D N (the depth of a
    D-ary tree over N nodes: no push protocol does better);
  - messages per node per change, mean and max, beside D and the goal of
    8 (GossipSub pushes a new message to its mesh peers but the sender, and
    a mesh holds D_lo..D_hi = 4..12 peers: a node the others grafted onto
    sends more than D, a node at D_lo fewer);
  - the duplicate ratio, and the wall time of the run;
  - the machine's floor beside it: the same number of hops through a bare
    heap and one trio wake-up per 1 ms tick (no validation, no ledger), so
    the ratio says what the protocol code costs over bare event dispatch.

    python -m benchmarks.bench_simulation [--sizes 10,100,1000] [--changes 1000] [--json]

Goals (issue 19): full propagation within 2 log2 N rounds, at most 8
messages per node per change, and a 1,000-node, 1,000-change run in under
5 minutes on this machine.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import time

import trio
import trio.testing

from registrygrid.node.simulator import simulate
from registrygrid.simulation.scenario import parse


def scenario(n: int, changes: int) -> dict[str, object]:
    return {"name": f"steady-{n}", "seed": 1, "nodes": n, "duration_s": 60, "settle_s": 60, "peers": 8,
            "network": {"latency_ms": 40, "latency_sigma": 0.5, "loss": 0.0, "degree": 6},
            "workload": {"changes": changes, "writers": min(n, 50), "pattern": "steady"}}


def floor_seconds(hops: int, virtual_s: float) -> float:
    """Bare dispatch of ``hops`` deliveries spread over ``virtual_s`` in 1 ms ticks."""
    async def run() -> None:
        due: list[tuple[float, int]] = []
        ticks = max(1, int(virtual_s * 1000))
        for i in range(hops):
            heapq.heappush(due, ((i % ticks) / 1000, i))
        while due:
            at = due[0][0]
            await trio.sleep_until(at)
            while due and due[0][0] <= at:
                heapq.heappop(due)

    started = time.perf_counter()
    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        started = time.perf_counter()
        summary = simulate(parse(scenario(n, args.changes)))
        wall = time.perf_counter() - started
        gossip = summary["gossip"]
        floor = floor_seconds(gossip["messages"], summary["virtual_seconds"])
        row = {"nodes": n, "changes": summary["acknowledged_writes"], "wall_s": round(wall, 1),
               "floor_s": round(floor, 1), "rounds": gossip["rounds"],
               "log_d_n": round(math.log(n, 6), 2), "per_node_per_change": gossip["messages_per_node_per_change"],
               "max_per_node_per_change": gossip["max_messages_per_node_per_change"],
               "duplicate_ratio": gossip["duplicate_ratio"], "propagation_ms": summary["propagation_ms"],
               "safety_ok": summary["checker"]["ok"], "messages": gossip["messages"]}
        rows.append(row)
        if not args.json:
            r = row["rounds"]
            print(f"N={n:5}: rounds p50 {r['p50']} p99 {r['p99']} max {r['max']} (2 log2 N = {r['bound_2log2n']}, "
                  f"log_6 N = {row['log_d_n']}); messages per node per change {row['per_node_per_change']} "
                  f"(max {row['max_per_node_per_change']}, D = 6, goal 8); duplicates {row['duplicate_ratio']}; "
                  f"propagation p50 {row['propagation_ms']['p50']:.0f} ms p99 {row['propagation_ms']['p99']:.0f} ms; "
                  f"safety {'ok' if row['safety_ok'] else 'VIOLATED'}; {row['messages']} hops in {wall:.1f} s, "
                  f"bare dispatch {floor:.1f} s ({wall / max(floor, 1e-9):.1f}x)", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
