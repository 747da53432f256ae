"""GossipSub as the in-memory network plays it (node/memory_transport.py):
a mesh per topic kept between D_lo and D_hi by heartbeats, messages pushed
along the mesh only, and IHAVE/IWANT pulling what a lost hop missed. The
simulator's figures are only as good as this model, so each part is
specified here against what GossipSub (and the node's GossipConfig) says.

Virtual time: heartbeats and latencies cost nothing but their computation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from registrygrid.node.memory_transport import (
    DEFAULT_DEGREE,
    DEFAULT_GOSSIP_HISTORY,
    DEFAULT_GOSSIP_WINDOW,
    DEFAULT_HEARTBEAT_INITIAL_DELAY_S,
    DEFAULT_HEARTBEAT_S,
    MemoryHost,
    MemoryNetwork,
    mesh_bounds,
)
from registrygrid.node.p2p_pubsub import GossipConfig

TOPIC = "sim/topic"


@pytest.fixture
def virtual_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@asynccontextmanager
async def swarm(n: int, **options: Any) -> AsyncIterator[tuple[MemoryNetwork, list[MemoryHost], list[Any]]]:
    """``n`` hosts, every pair connected, all subscribed to TOPIC, after
    two heartbeats (the mesh is grafted at the first)."""
    async with MemoryNetwork(seed=11, latency=lambda rng: 0.02, **options) as network, AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(network.host()) for _ in range(n)]
        channels = [await h.subscribe(TOPIC) for h in hosts]
        for i, a in enumerate(hosts):
            for b in hosts[i + 1:]:
                await a.connect(b.listen_addrs()[0])
        await trio.sleep(2 * DEFAULT_HEARTBEAT_S)
        yield network, hosts, channels


def drain(channel: Any) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(channel.receive_nowait().data)
        except trio.WouldBlock:
            return out


def test_the_model_runs_gossipsub_with_the_node_s_own_parameters() -> None:
    config = GossipConfig()
    assert DEFAULT_DEGREE == config.degree
    assert mesh_bounds(DEFAULT_DEGREE) == (config.degree_low, config.degree_high)
    assert (DEFAULT_HEARTBEAT_S, DEFAULT_HEARTBEAT_INITIAL_DELAY_S) == (config.heartbeat_interval,
                                                                         config.heartbeat_initial_delay)
    assert (DEFAULT_GOSSIP_WINDOW, DEFAULT_GOSSIP_HISTORY) == (config.gossip_window, config.gossip_history)


async def test_heartbeats_keep_every_mesh_between_d_lo_and_d_hi_and_both_ends_agree(
        virtual_clock: trio.testing.MockClock) -> None:
    async with swarm(30) as (network, hosts, _):
        low, high = mesh_bounds(network.degree)
        for host in hosts:
            mesh = host._mesh[TOPIC]
            assert low <= len(mesh) <= high, len(mesh)
            for peer in mesh:
                assert host.peer_id in network.hosts[peer]._mesh[TOPIC], "a GRAFT joins both ends"
        # A host that loses its mesh peers grafts others at the next heartbeat.
        victim = hosts[0]
        for peer in sorted(victim._mesh[TOPIC]):
            await victim.disconnect(peer)
        assert not victim._mesh[TOPIC]
        await trio.sleep(DEFAULT_HEARTBEAT_S)
        assert low <= len(victim._mesh[TOPIC]) <= high
        assert set(victim._mesh[TOPIC]) <= set(victim.connected_peers())


async def test_a_message_travels_the_mesh_only_and_reaches_everyone(virtual_clock: trio.testing.MockClock) -> None:
    async with swarm(30, lazy_gossip=False) as (network, hosts, channels):
        before = network.stats["gossip_messages"]
        await hosts[0].publish(TOPIC, b"news")
        await trio.sleep(1.0)
        assert all(drain(c) == [b"news"] for c in channels[1:])
        sent = network.stats["gossip_messages"] - before
        mesh_links = sum(len(h._mesh[TOPIC]) for h in hosts)
        # Each host sends once to each mesh peer but the one it heard from:
        # far below a flood's 30 x 29.
        assert sent <= mesh_links < 30 * 29 // 2


async def test_ihave_and_iwant_pull_what_lost_hops_missed(virtual_clock: trio.testing.MockClock) -> None:
    """A fifth of the hops are lost; without lazy gossip some hosts miss
    messages for good (no sync here), with it every host gets every one."""
    received = {}
    for lazy in (False, True):
        async with swarm(20, loss=0.2, lazy_gossip=lazy) as (network, hosts, channels):
            for i in range(40):
                await hosts[i % 4].publish(TOPIC, b"m%d" % i)
                await trio.sleep(0.05)
            await trio.sleep(4 * DEFAULT_HEARTBEAT_S)
            got = [len(set(drain(c))) for c in channels]
            received[lazy] = (sum(got), network.stats["gossip_pulled"], network.stats["gossip_iwant"])
    everything = 40 * 20 - 40  # each host but the publisher
    missed_without, _, _ = received[False]
    with_lazy, pulled, iwants = received[True]
    assert missed_without < everything, "lost hops left holes"
    assert with_lazy == everything and pulled > 0 and iwants > 0


async def test_a_host_restarted_under_its_peer_id_publishes_messages_its_peers_take_as_new(
        virtual_clock: trio.testing.MockClock) -> None:
    # Its sequence numbers started at 0 again: its peers had seen those
    # message ids from its first life and dropped the new messages as
    # duplicates (a restarted writer's gossip was lost in every simulation).
    async with MemoryNetwork(seed=1, latency=lambda rng: 0.02) as network, network.host("B") as b:
        channel = await b.subscribe(TOPIC)
        for life in (b"first life", b"second life"):
            async with network.host("A") as a:
                await a.subscribe(TOPIC)
                await a.connect(b.listen_addrs()[0])
                await trio.sleep(2 * DEFAULT_HEARTBEAT_S)
                await a.publish(TOPIC, life)
                await trio.sleep(1)
        assert drain(channel) == [b"first life", b"second life"]
        assert b.stats["gossip_duplicates"] == 0
