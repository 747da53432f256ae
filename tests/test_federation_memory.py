"""The federation's own code (hellos and admission, gossip, sync, the peer
table, partitions) on the in-memory transport (node/memory_transport.py)
instead of py-libp2p: real nodes with real homes and LMDB stores, whose
hosts are MemoryHosts of one MemoryNetwork. What the simulator builds on:
if this holds, a simulation runs what the node runs.

The federation runs here with its production timings (sync every 10 s,
redials backing off up to 60 s) in virtual time: trio's MockClock jumps
ahead whenever every task waits, once the node's threads (LMDB, the
committer) have been idle for ``IDLE_BEFORE_JUMP_S`` of real time, so a
minute of partition and backoff costs a second or two."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from test_federation_support import cluster, converged, eventually, full_mesh

from registrygrid.errors import ValidationError
from registrygrid.node.federation import Federation, FederationConfig
from registrygrid.node.memory_transport import MemoryNetwork

pytestmark = pytest.mark.timeout(120)

# No DHT: it is py-libp2p's Kademlia, which needs py-libp2p's host. The
# rest is the production configuration: virtual time makes it fast.
MEMORY = FederationConfig(dht=False)
# Real seconds every task must have waited before virtual time jumps: long
# enough for a thread's LMDB work (a commit takes milliseconds), so the
# clock does not run ahead while a node writes.
IDLE_BEFORE_JUMP_S = 0.02


@pytest.fixture
def virtual_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=IDLE_BEFORE_JUMP_S)


async def test_a_federation_on_the_in_memory_network_gossips_syncs_and_heals_a_partition(
        tmp_path: Path, virtual_clock: trio.testing.MockClock) -> None:
    # Virtual seconds: generous, since a deadline costs nothing until it is reached
    # (pytest-timeout bounds the real time).
    with trio.fail_after(1800):
        async with MemoryNetwork(seed=3) as network, cluster(tmp_path, MEMORY) as nodes:
            n0 = await nodes.start("n0", transport=network.factory())
            n1 = await nodes.start("n1", n0.fed.addrs(), transport=network.factory())
            n2 = await nodes.start("n2", n0.fed.addrs(), transport=network.factory())
            await full_mesh([n0, n1, n2])
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


def test_a_federation_on_another_transport_must_not_run_the_dht() -> None:
    with pytest.raises(ValidationError, match="dht=False"):
        Federation(listen=["/ip4/127.0.0.1/tcp/0"], federation="x", transport=MemoryNetwork().factory())
