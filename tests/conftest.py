"""Shared fixtures: a store in a temporary directory, the `rgrid` CLI as a subprocess,
and ``seaweed``: one real SeaweedFS S3 server per pytest process (tests/seaweed_support.py),
started the first time a test asks for it. Its module is registered here as a
plugin, once for the whole session, so every module shares that one server (a
module that imported the fixture itself would get a second one)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registrygrid.sdk import LocalRegistry

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
