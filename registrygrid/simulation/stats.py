"""Figures every simulation mode reports the same way."""

from __future__ import annotations

from collections import Counter


def quantiles(values: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max of ``values`` (nearest rank), rounded to 3 places."""
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 3)}


def full_propagation(samples: list[tuple[float, float]], any_writes: bool) -> float | None:
    """When every node came to hold every acknowledged write for good: the
    time of the sample after the last one that fell short (None if the run
    ended short or wrote nothing). ``samples``: (time, converged fraction)."""
    if not any_writes or not samples or samples[-1][1] < 1.0:
        return None
    short = [i for i, (_, fraction) in enumerate(samples) if fraction < 1.0]
    return samples[short[-1] + 1][0] if short else samples[0][0]


def hop_quantile(hops: Counter[int], q: float) -> int:
    """The ``q`` quantile of gossip deliveries by the links they travelled (rounds)."""
    total = sum(hops.values())
    seen = 0
    for count in sorted(hops):
        seen += hops[count]
        if seen >= q * total:
            return count
    return 0
