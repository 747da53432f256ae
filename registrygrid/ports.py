"""Loopback ports for node processes that this machine starts itself
(real-node simulations, multi-process tests).

Why not just ask the kernel (bind port 0, close, hand the number on)? A port
chosen that way comes from the ephemeral range, the same range the kernel
draws from for every other ``bind(0)`` and for the local side of every
outgoing connection. Between the probe and the node's own bind, or while a
node is down for a restart, any busy process on the machine can be given
that very port, and the node then fails to start. Ports chosen *below* the
ephemeral range are never handed out implicitly, so only another explicit
chooser could take one, and the bind probe below sees those.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10_000  # clear of well-known and registered service ports most machines run
DEFAULT_EPHEMERAL = (32_768, 60_999)  # Linux's default net.ipv4.ip_local_port_range


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The kernel's range for implicit ports (Linux's default elsewhere)."""
    try:
        low, high = (int(part) for part in path.read_text().split())
        return low, high
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL


def _bind(port: int) -> socket.socket | None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port in TIME_WAIT counts as busy
        return probe
    except OSError:
        probe.close()
        return None


def unused_ports(count: int, *, rng: random.Random | None = None) -> list[int]:
    """``count`` distinct loopback TCP ports that are free now and outside
    the ephemeral range (falling back to kernel-chosen ports when that range
    leaves no room below it)."""
    rng = rng or random.Random()
    low, _ = ephemeral_range()
    held: list[socket.socket] = []
    try:
        if low - LOWEST >= 1_000:
            for port in rng.sample(range(LOWEST, low), min(low - LOWEST, count * 20)):
                if len(held) == count:
                    break
                if (probe := _bind(port)) is not None:
                    held.append(probe)
        while len(held) < count:  # no room below the range, or it is crowded: let the kernel choose
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind(("127.0.0.1", 0))
            held.append(probe)
        return [int(probe.getsockname()[1]) for probe in held]
    finally:
        for probe in held:  # all held until every one is chosen, so they differ
            probe.close()
