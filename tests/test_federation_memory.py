"""The federation's own code (hellos and admission, gossip, sync, the peer
table, partitions) on the in-memory transport (node/memory_transport.py)
instead of py-libp2p: real nodes with real homes and LMDB stores, whose
hosts are MemoryHosts of one MemoryNetwork. What the simulator builds on:
if this holds, a simulation runs what the node runs. The federation's
behaviours that take time (anti-entropy periods, redial backoff, the
guard's budgets) are tested here, in virtual time, rather than over
py-libp2p in real time; tests/test_federation.py keeps what needs real
sockets.

The federation runs here with its production timings (sync every 10 s,
redials backing off up to 60 s) in virtual time: trio's MockClock jumps
ahead whenever every task waits, once the node's threads (LMDB, the
committer) have been idle for ``IDLE_BEFORE_JUMP_S`` of real time, so a
minute of partition and backoff costs a second or two."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from test_federation_support import (
    CLUSTERS,
    Member,
    cluster,
    converged,
    eventually,
    full_mesh,
)

from registrygrid.engine.ops import Erase, WriteResult
from registrygrid.errors import RecordErased, UnknownRegistry, ValidationError
from registrygrid.node.federation import SYNC_INTERVAL_S, Federation, FederationConfig
from registrygrid.node.memory_transport import MemoryNetwork
from registrygrid.protocol.guard import Budget, GuardLimits, Rate

pytestmark = pytest.mark.timeout(120)

# No DHT: it is py-libp2p's Kademlia, which needs py-libp2p's host. The
# rest is the production configuration: virtual time makes it fast.
MEMORY = FederationConfig(dht=False)
# Real seconds every task must have waited before virtual time jumps: long
# enough for a thread's LMDB work (a commit takes milliseconds), so the
# clock does not run ahead while a node writes.
IDLE_BEFORE_JUMP_S = 0.02


async def three_members(nodes: Any, network: MemoryNetwork) -> tuple[Member, Member, Member]:
    """n0, and n1 and n2 bootstrapped from it, fully meshed on ``network``."""
    n0 = await nodes.start("n0", transport=network.factory())
    n1 = await nodes.start("n1", n0.fed.addrs(), transport=network.factory())
    n2 = await nodes.start("n2", n0.fed.addrs(), transport=network.factory())
    await full_mesh([n0, n1, n2])
    # GossipSub grafts a mesh at a heartbeat (every second), as over libp2p:
    # until then a publish reaches no one and only sync carries changes.
    await trio.sleep(1.5)
    return n0, n1, n2


@pytest.fixture
def virtual_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=IDLE_BEFORE_JUMP_S)


async def test_a_federation_on_the_in_memory_network_gossips_syncs_and_heals_a_partition(
        tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    # Virtual seconds: generous, since a deadline costs nothing until it is reached
    # (pytest-timeout bounds the real time).
    with trio.fail_after(1800):
        async with MemoryNetwork(seed=3) as network, cluster(tmp_path, MEMORY) as nodes:
            n0, n1, n2 = await three_members(nodes, network)
            assert all(m.fed.admitted for m in (n0, n1, n2)), "hellos proved membership over the memory transport"

            await n0.write("a", 30)
            await converged([n0, n1, n2], 300, records=30)
            gossiped = network.stats["gossip_messages"]
            assert gossiped > 0 and network.stats["requests"] > 0  # hellos and syncs are requests

            network.partition([n0.peer_id, n1.peer_id], [n2.peer_id])
            await eventually(lambda: n2.peer_id not in n0.fed.host.connected_peers(), 120, "n2 cut off")
            await n0.write("b", 20)
            await eventually(lambda: n1.records() == 50, 300, "n1 gets b by gossip")
            assert n2.records() == 30, "nothing crosses a partition"

            await trio.sleep(60)  # a minute of partition: redials back off (virtual time)
            assert n2.records() == 30
            network.heal()  # the peer table redials; sync brings what n2 missed
            await converged([n0, n1, n2], 900, records=50)
    assert network.stats["gossip_bytes"] > 0


async def test_an_erasure_reaches_every_member_by_gossip_and_sync_and_their_chains_go_on(
        tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(1800):
        async with MemoryNetwork(seed=5) as network, cluster(tmp_path, MEMORY) as nodes:
            n0, n1, n2 = await three_members(nodes, network)
            await n0.write("a", 10)
            await converged([n0, n1, n2], 300, records=10)

            network.partition([n0.peer_id, n1.peer_id], [n2.peer_id])
            await eventually(lambda: n2.peer_id not in n0.fed.host.connected_peers(), 120, "n2 cut off")
            [erased] = await n0.node.submit([Erase(CLUSTERS, "a3", "a test request")])
            assert isinstance(erased, WriteResult) and erased.status == "created", erased
            await n0.write("b", 5)  # n0's chain goes on past the erased change
            await eventually(lambda: n1.records() == 14, 300, "n1 erases a3 (gossip) and takes b")
            with pytest.raises(RecordErased):
                n1.registry.get(CLUSTERS, "a3")
            assert n2.registry.get(CLUSTERS, "a3")["fields"]["name"] == "a3", "nothing crosses a partition"

            network.heal()  # sync brings the notice and b; n2 erases a3 and takes b
            await converged([n0, n1, n2], 900, records=14)
            for member in (n1, n2):
                with pytest.raises(RecordErased):
                    member.registry.get(CLUSTERS, "a3")
                assert member.registry.verify().ok
                assert member.registry.erasures()[0]["state"] == "erased"


def count(member: Member, prefix: str) -> int:
    try:
        return sum(1 for r in member.registry.iter_all("grid.clusters") if r["id"].startswith(prefix))
    except UnknownRegistry:  # its descriptor has not arrived yet
        return 0


async def test_anti_entropy_repairs_a_gossip_gap_soon_and_a_lost_last_change_at_the_next_period(
        tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with MemoryNetwork(seed=5) as network, \
                cluster(tmp_path, MEMORY, transport=network.factory()) as nodes:
            a = await nodes.start("a")
            b = await nodes.start("b", a.fed.addrs())
            await full_mesh([a, b])
            await trio.sleep(1)  # the sessions on connect end
            hooks = a.node.committer.on_commit  # type: ignore[union-attr]
            publish = a.fed.gossip.on_commit  # type: ignore[union-attr]

            # Gossip loses x (a is not publishing), then carries y: y's
            # predecessor in a's chain is missing, so b parks y and syncs soon.
            hooks.remove(publish)
            await a.write("x", 1)
            hooks.append(publish)
            started = trio.current_time()
            await a.write("y", 1)
            await converged([a, b], SYNC_INTERVAL_S, records=2)
            assert trio.current_time() - started < SYNC_INTERVAL_S / 2  # the gap's sync, not the period's
            assert b.fed.metrics["gossip.ingest.pending"] >= 1 and b.fed.metrics["sync.requested"] >= 1

            # A lost *last* change shows no gap: the next periodic round finds it.
            hooks.remove(publish)
            await a.write("z", 1)
            hooks.append(publish)
            started = trio.current_time()
            await converged([a, b], 3 * SYNC_INTERVAL_S, records=3)
            assert trio.current_time() - started > 0.1  # not by gossip


async def test_a_member_flooding_beyond_its_org_budget_is_throttled_counted_and_bounded_while_honest_changes_pass(
        tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    rate, burst = 20.0, 300.0
    config = dataclasses.replace(MEMORY, guard=GuardLimits(org=Budget(Rate(rate, burst), None)))
    with trio.fail_after(900):
        async with MemoryNetwork(seed=6) as network, cluster(tmp_path, config, transport=network.factory()) as nodes:
            victim = await nodes.start("victim")
            flooder = await nodes.start("flooder", victim.fed.addrs())
            honest = await nodes.start("honest", victim.fed.addrs())
            members = [victim, flooder, honest]
            await full_mesh(members)
            for member in members:
                await member.write(f"hello-{member.name}-", 1)
            await converged(members, 60, records=3)  # every org's delegation is known everywhere
            flood_org = flooder.node.engine.owner
            assert flood_org in victim.node.engine.trust.orgs_of(flooder.node.engine.key.did, int(time.time() * 1000))

            start = trio.current_time()
            worst = 0.0

            def within_budget() -> None:
                nonlocal worst
                held = count(victim, "flood-")
                allowed = burst + rate * (trio.current_time() - start)
                worst = max(worst, held / allowed)
                assert held <= allowed, f"the victim holds {held} flooded records; the budget allows {allowed:.0f}"

            async def watch() -> None:
                while True:
                    within_budget()
                    await trio.sleep(0.1)

            async with trio.open_nursery() as watching:
                watching.start_soon(watch)
                await flooder.write("flood-", 1500, batch=50)  # as fast as its engine commits
                await honest.write("honest-", 20)
                # The honest org's changes pass while the flood is still throttled.
                await eventually(lambda: count(victim, "honest-") == 20, 15, "the honest changes on the victim")
                assert count(victim, "flood-") < 1500
                # Sync rounds (every 10 s) are paced by the same budget.
                await trio.sleep(2 * SYNC_INTERVAL_S)
                within_budget()
                watching.cancel_scope.cancel()

            assert count(flooder, "flood-") == 1500
            metrics = victim.fed.metrics
            assert metrics["guard.dropped_batches"] > 0 and metrics["guard.throttled_changes"] > 0
            assert metrics[f"guard.org.{flood_org}.throttled_changes"] > 0
            assert metrics[f"guard.peer.{flooder.peer_id}.dropped_batches"] > 0
            assert not any(k.startswith(f"guard.org.{honest.node.engine.owner}.") for k in metrics)
            # Over an org's budget is not flooding one's own: nobody was struck or banned.
            assert metrics["guard.strikes"] == 0 and metrics["peers.banned"] == 0
            assert "federation.guard.dropped_batches" in victim.fed.stats()
            assert worst > 0.5  # the budget was what bounded it


async def test_an_origin_that_keeps_overflowing_its_own_gossip_budget_is_struck_and_banned(
        tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    tiny = GuardLimits(gossip_peer=Budget(Rate(10, 20), None), flood_strike_interval=0.0)
    config = dataclasses.replace(MEMORY, guard=tiny, sync_interval=3600.0)  # gossip alone
    with trio.fail_after(600):
        async with MemoryNetwork(seed=7) as network, cluster(tmp_path, config, transport=network.factory()) as nodes:
            victim = await nodes.start("victim")
            flooder = await nodes.start("flooder", victim.fed.addrs())
            await full_mesh([victim, flooder])
            for start in range(0, 600, 10):  # one commit, so one gossip message, each
                await flooder.write(f"flood-{start}-", 10, batch=10)
                await trio.sleep(0.01)
            assert victim.fed.peers is not None
            await eventually(lambda: victim.fed.peers.blocked(flooder.peer_id), 15, "the flooder banned")
            metrics = victim.fed.metrics
            assert metrics["guard.strikes"] >= 5 and metrics["peers.banned"] >= 1
            assert count(victim, "flood-") < 600


def test_a_federation_on_another_transport_must_not_run_the_dht() -> None:
    with pytest.raises(ValidationError, match="dht=False"):
        Federation(listen=["/ip4/127.0.0.1/tcp/0"], federation="x", transport=MemoryNetwork().factory())
