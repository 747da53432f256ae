"""Private registries: a replication scope that names the orgs that may read.

Three orgs' nodes in one federation (real libp2p on 127.0.0.1): A owns
``acme.secrets`` and names B as a reader; C is a member too, but not a
reader. B gets every record; C gets none by gossip or sync, even when it
asks for that registry by name. The descriptor itself is public (it is
how B and C learn the registry exists); the records are not."""

from __future__ import annotations

from pathlib import Path

import trio

from registrygrid.engine.ops import Put
from registrygrid.protocol.sync import SYNC_PROTOCOL_ID, SyncPuller, decode_response
from test_federation_support import FAST, cluster, eventually, full_mesh

SECRETS = "acme.secrets"


async def test_a_private_registry_reaches_its_readers_and_nobody_else(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cluster(tmp_path, FAST) as nodes:
            a = await nodes.start("a")
            b = await nodes.start("b", a.fed.addrs())
            c = await nodes.start("c", a.fed.addrs())
            await full_mesh([a, b, c])
            b_org = b.home.org().org  # type: ignore[union-attr]
            a.registry.create_registry(SECRETS, ["tool"], replication="private", readers=[b_org])
            # The registry's descriptor is public: every member learns it exists.
            await eventually(lambda: all(_has(m.registry, "grid.registries", SECRETS) for m in (b, c)), 20,
                             "the descriptor everywhere")
            outcomes = await a.node.submit([Put(SECRETS, "tool", {"name": f"s{i}"}, record_id=f"s{i}")
                                            for i in range(5)])
            assert all(o.status == "created" for o in outcomes)  # type: ignore[union-attr]
            await eventually(lambda: len(b.registry.list(SECRETS).items) == 5, 20, "the reader has all five",
                             interval=0.2)
            assert a.fed.metrics["gossip.private_kept"] >= 5  # never on the federation-wide topic
            # C asks for it by name: the answer offers and sends nothing of it.
            request = SyncPuller("testfed", registries=[SECRETS]).request({})
            answer = decode_response(await c.fed.host.request(a.peer_id, SYNC_PROTOCOL_ID, request,  # type: ignore[union-attr]
                                                              timeout=10))
            assert SECRETS not in answer.vector
            assert all(SECRETS.encode() not in wire for wire in answer.envelopes)
            await trio.sleep(FAST.sync_interval * 1.5)  # a full anti-entropy round and more
            assert c.registry.list(SECRETS).items == []
            assert SECRETS not in c.registry.engine.version_vector()


def _has(grid, registry: str, record_id: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        grid.get(registry, record_id)
    except Exception:  # noqa: BLE001 - NotFound until it arrives
        return False
    return True
