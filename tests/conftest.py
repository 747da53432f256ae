"""Shared fixtures: a store in a temporary directory, the `rgrid` CLI as a subprocess,
and ``seaweed``: one real SeaweedFS S3 server per pytest process (tests/seaweed_support.py),
started the first time a test asks for it. Its module is registered here as a
plugin, once for the whole session, so every module shares that one server (a
module that imported the fixture itself would get a second one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registrygrid.sdk import LocalRegistry


def _coarse_wall_clock(step_ms: int) -> None:
    """RGRID_CLOCK_STEP_MS=N: the wall clock moves in steps of N ms, so
    writes share a clock far more often than on this disk. A test that
    orders two writes by the wall clock without a sleep between them (the
    later create must win, a write must fall inside a rule's window) fails
    then, where with the real clock it fails only on a faster machine or
    now and then (two such tests were found so, 2026-12-05). Real nodes
    meet shared clocks too: the code under test must not care. Off unless
    asked for; a step longer than the tests' 5 ms sleeps breaks them."""
    step_ns = step_ms * 1_000_000
    real = time.time_ns
    time.time_ns = lambda: real() // step_ns * step_ns


if os.environ.get("RGRID_CLOCK_STEP_MS"):
    _coarse_wall_clock(int(os.environ["RGRID_CLOCK_STEP_MS"]))

pytest_plugins = ("seaweed_support",)  # its fixture: seaweed (a SeaweedS3)


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[LocalRegistry]:
    """A bare store (no home) with a fresh key, closed after the test."""
    registry = LocalRegistry.open_path(tmp_path / "store")
    yield registry
    registry.close()


@pytest.fixture
def rgrid(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python -m registrygrid ARGS --home HOME` in a real process.

    ``home`` defaults to tmp_path/home; ``input`` feeds stdin."""

    def run(*args: str, home: Path | None = None, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # --home belongs to each subcommand, so it goes after the command words.
        cmd = [sys.executable, "-m", "registrygrid", *args, "--home", str(home or tmp_path / "home")]
        return subprocess.run(cmd, check=False, capture_output=True, text=True, input=input, timeout=timeout)

    return run
