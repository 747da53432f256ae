"""Federation of real nodes in one trio process: each has its own home, LMDB
store and py-libp2p host on 127.0.0.1; they meet by bootstrap and peer
exchange, gossip their changes and repair losses with anti-entropy sync. What takes
time (sync periods, backoff, budgets) is tested in virtual time on the
in-memory transport (tests/test_federation_memory.py); these keep what
needs real sockets and py-libp2p's own behaviour."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio
from test_federation_support import (
    CLUSTERS,
    FAST,
    cluster,
    converged,
    eventually,
    full_mesh,
)

from registrygrid.cli.peer_commands import rows_for
from registrygrid.engine.ops import Update
from registrygrid.storage import peers as peer_store

# Gossip alone must do the work: no periodic sync within the test's deadlines.
GOSSIP_ONLY = dataclasses.replace(FAST, sync_interval=120.0)


async def test_a_write_on_any_node_appears_on_all_with_identical_state(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cluster(tmp_path, GOSSIP_ONLY) as nodes:
            first = await nodes.start("n0")
            # Everyone bootstraps from n0 only; peer exchange completes the mesh.
            members = [first] + [await nodes.start(f"n{i}", first.fed.addrs()) for i in (1, 2, 3)]
            await full_mesh(members)
            for i, member in enumerate(members):
                await member.write(f"from-{i}-", 5)
            digest = await converged(members, 15, records=20)
            assert all(m.digest() == digest for m in members)
            # Remote changes are on each node's own feed, naming the peer they came from.
            for member in members:
                origins = {e.origin for e in member.registry.changes(0)}
                others = {o.peer_id for o in members if o is not member}
                # Each names the peer it came from; which peer that is for a
                # third node's change is a race between gossip and the sync
                # session each new connection opens (both relay).
                assert "local" in origins and len(origins) > 1 and origins <= {"local"} | others
                metrics = member.fed.metrics
                # Gossip carried them (the session on a fresh connection may race it to a few).
                assert metrics["gossip.ingest.applied"] >= 5
                assert metrics["gossip.invalid"] == 0


async def test_identity_and_peer_table_are_visible_to_the_cli_while_running(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with cluster(tmp_path) as nodes:
            a = await nodes.start("a")
            b = await nodes.start("b", a.fed.addrs())
            await full_mesh([a, b])
            info = a.home.node_info()
            assert info is not None and info["peer_id"] == a.peer_id and info["addrs"] == a.fed.addrs()
            assert info["addrs"][0].startswith("/ip4/127.0.0.1/tcp/") and "/tcp/0/" not in info["addrs"][0]
            assert a.registry.identity()["addrs"] == info["addrs"]  # what `rgrid id` shows

            def b_is_listed() -> bool:
                # What `rgrid peers` prints (it opens the store read-only from
                # another process; LMDB allows one environment per process).
                rows = rows_for(a.home.node_info(), peer_store.load(a.node.store))
                return any(r["peer"] == b.peer_id and r["state"] == "connected"
                                                   and r["latency_ms"] is not None and r["lag"] == 0
                                                   for r in rows)

            await eventually(b_is_listed, 10, "b connected in a's persisted peer table, with latency and lag")
            await nodes.stop(a)
            assert a.home.node_info() is None and not a.home.node_info_path.exists()


async def test_a_node_stopped_during_1000_writes_catches_up_after_restart(tmp_path: Path) -> None:
    with trio.fail_after(150):
        async with cluster(tmp_path) as nodes:
            a = await nodes.start("a")
            b = await nodes.start("b", a.fed.addrs())
            c = await nodes.start("c", a.fed.addrs())
            await full_mesh([a, b, c])
            acked = await a.write("w", 300, batch=20)
            await nodes.stop(c)
            acked += await a.write("v", 400, batch=20)
            # c comes back on the same home (a new port) while a keeps writing.
            c = await nodes.start("c", a.fed.addrs())
            acked += await a.write("u", 300, batch=20)
            assert len(acked) == 1000
            await converged([a, b, c], 90, records=1000)
            ids = {r.change_id for r in acked}
            for member in (b, c):
                assert ids <= {e.change for e in member.registry.changes(0, limit=10_000)}
            # c's peer table survived the restart.
            assert any(r.peer_id == a.peer_id for r in peer_store.load(c.node.store))


async def test_partition_then_heal_converges_with_no_acknowledged_write_lost(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with cluster(tmp_path) as nodes:
            # Nodes of one org ("a"'s), so both sides may edit one record.
            a = await nodes.start("a")
            members = [a] + [await nodes.start(n, a.fed.addrs(), org="a") for n in ("b", "c", "d")]
            await full_mesh(members)
            a, b, c, d = members
            await a.write("shared", 1)
            await converged(members, 10, records=1)

            left, right = [a, b], [c, d]
            for side, other in ((left, right), (right, left)):
                for m in side:
                    await m.fed.deny([o.peer_id for o in other])
            await eventually(lambda: all(not set(m.fed.host.connected_peers()) & {o.peer_id for o in right}  # type: ignore[union-attr]
                                         for m in left), 10, "the two sides disconnected")

            # Both sides write, including concurrent edits of one record.
            acked = await a.write("left", 30) + await c.write("right", 30)
            edits = [await a.node.submit([Update(CLUSTERS, "shared0", patch={"left": True})]),
                     await d.node.submit([Update(CLUSTERS, "shared0", patch={"right": True})])]
            await converged(left, 10, records=31)
            await converged(right, 10, records=31)
            assert a.digest() != c.digest()
            # Redials (our backoff caps at 1 s here) are refused; a connection
            # py-libp2p's own auto-connector opens is dropped on sight, and
            # nothing crosses: no sync is served, gossip from the other side
            # is rejected by origin.
            await trio.sleep(2.5)
            assert a.records() == b.records() == c.records() == d.records() == 31
            assert a.digest() == b.digest() != c.digest() == d.digest()

            for m in members:
                m.fed.allow([o.peer_id for o in members if o is not m])
            await converged(members, 30, records=61)
            acked_ids = {r.change_id for r in acked} | {e[0].change_id for e in edits}  # type: ignore[union-attr]
            for m in members:
                assert acked_ids <= {e.change for e in m.registry.changes(0, limit=10_000)}
            shared = a.registry.get(CLUSTERS, "shared0")["fields"]
            assert shared["left"] is True and shared["right"] is True  # both sides' edits merged
