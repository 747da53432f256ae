"""The registry of registries on a Kademlia DHT: real nodes, each with its
own home, LMDB store and py-libp2p host on 127.0.0.1, in one trio process."""

from __future__ import annotations

from pathlib import Path

import trio

from registrygrid.engine.ops import Put
from test_federation_support import cluster, eventually, full_mesh

REG = "acme.models"


async def test_a_registry_published_by_its_owner_resolves_from_every_node_with_its_providers(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with cluster(tmp_path) as nodes:
            first = await nodes.start("n0")
            members = [first] + [await nodes.start(f"n{i}", first.fed.addrs()) for i in range(1, 5)]
            await full_mesh(members)
            owner = members[0]
            await owner.node.submit([Put("grid.registries", "registry", {"name": REG, "kinds": ["cluster"]},
                                         record_id=REG)])
            await eventually(lambda: all(_knows(m) for m in members), 20, "the descriptor everywhere")
            await eventually(lambda: all(m.fed.directory.dht.get_routing_table_size() > 0 for m in members), 20,
                             "routing tables filled")
            for member in members:
                await member.fed.directory.publish()
            for member in members:
                answer = await member.fed.directory.resolve(REG, fresh=True)
                assert answer["owner"] == owner.node.engine.owner
                assert answer["descriptor"]["kinds"] == ["cluster"]
                assert answer["verification"]["signature"] == "valid"
                assert answer["providers"], "hosts announce themselves"
            again = await members[-1].fed.directory.resolve(REG)
            assert again["source"] == "cache"


def _knows(member) -> bool:
    try:
        member.registry.describe_registry(REG)
        return True
    except Exception:
        return False
