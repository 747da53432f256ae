"""Ports for the node processes a machine starts itself: free, distinct, and
outside the range the kernel hands out implicitly (so no other process's
`bind(0)` or outgoing connection can take one while a node restarts)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from registrygrid.ports import DEFAULT_EPHEMERAL, ephemeral_range, unused_ports


def test_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    low, _ = ephemeral_range()
    ports = unused_ports(20)

    assert len(set(ports)) == 20
    assert all(10_000 <= port < low for port in ports)
    for port in ports:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # free: a node can bind it


def test_a_busy_port_is_never_chosen() -> None:
    with socket.socket() as busy:
        port = unused_ports(1, rng=random.Random(7))[0]
        busy.bind(("127.0.0.1", port))
        busy.listen()

        chosen = {p for _ in range(20) for p in unused_ports(5, rng=random.Random(7))}

    assert port not in chosen


def test_the_kernel_range_is_read_and_defaults_where_unreadable(tmp_path: Path) -> None:
    custom = tmp_path / "range"
    custom.write_text("40000\t50000\n")

    assert ephemeral_range(custom) == (40_000, 50_000)
    assert ephemeral_range(tmp_path / "missing") == DEFAULT_EPHEMERAL
