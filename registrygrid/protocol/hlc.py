"""Hybrid logical clock (Kulkarni et al., 2014): wall time that never runs backwards.

Timestamps are (wall milliseconds, counter). They follow physical time when
clocks agree, stay monotonic when the local clock steps back, and move past
any timestamp we have observed from a peer, so "happened after" survives skew.
Sans-IO: the clock reads time through the function it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

# A peer whose clock runs more than this far ahead would drag every node's
# clock forward with it; we refuse its timestamps instead (CockroachDB uses
# 500 ms for the same guard; a federation across organizations gets more
# slack for unsynchronised hosts).
MAX_DRIFT_MS = 5 * 60 * 1000


class Hlc(NamedTuple):
    wall_ms: int
    counter: int


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    def __init__(self, now_ms: Callable[[], int] = wall_clock_ms, last: Hlc = Hlc(0, 0)) -> None:
        self._now_ms = now_ms
        self.last = last

    def tick(self) -> Hlc:
        """A timestamp for a local event, after every earlier one."""
        now = self._now_ms()
        if now > self.last.wall_ms:
            self.last = Hlc(now, 0)
        else:
            self.last = Hlc(self.last.wall_ms, self.last.counter + 1)
        return self.last

    def observe(self, remote: Hlc) -> bool:
        """Move past a peer's timestamp. False (and no change) if it is too far ahead."""
        now = self._now_ms()
        if remote.wall_ms - now > MAX_DRIFT_MS:
            return False
        if remote > self.last:
            self.last = Hlc(remote.wall_ms, remote.counter)
        return True
