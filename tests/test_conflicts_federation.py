"""Conflicts and disputes across a real federation: three nodes, each with its
own home, LMDB store and py-libp2p host on 127.0.0.1, in one trio process."""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio
from test_federation_support import (
    CLUSTERS,
    LOOPBACK,
    cluster,
    converged,
    eventually,
    full_mesh,
    make_member,
)

from registrygrid import dispute_views
from registrygrid.crdt.disputes import DISPUTES_REGISTRY, RESOLUTION_KIND
from registrygrid.engine.ops import Put, Remote, Update, WriteResult
from registrygrid.errors import NotFound
from registrygrid.home import read_key_file
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.node.p2p import P2PHost
from registrygrid.protocol.gossip import encode_batch
from registrygrid.sdk import LocalRegistry
from registrygrid.trust.statements import (
    DELEGATION_KIND,
    MEMBERS_REGISTRY,
    delegation_record,
)

REG = "acme.prices"


async def _partitioned(left: list, right: list) -> None:
    for side, other in ((left, right), (right, left)):
        for m in side:
            await m.fed.deny([o.peer_id for o in other])
    await eventually(lambda: all(not set(m.fed.host.connected_peers()) & {o.peer_id for o in right}
                                 for m in left), 10, "the two sides disconnected")


async def _healed(members: list) -> None:
    for m in members:
        m.fed.allow([o.peer_id for o in members if o is not m])


async def test_a_manual_conflict_is_disputed_everywhere_resolved_on_one_node_and_converges(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with cluster(tmp_path) as nodes:
            # Nodes of one org: each may edit the record, and resolve its disputes.
            a = await nodes.start("a")
            members = [a] + [await nodes.start(n, a.fed.addrs(), org="a") for n in ("b", "c")]
            await full_mesh(members)
            a, b, c = members
            fields = {"name": REG, "kinds": ["cluster"], "conflict_policy": {"fields": {"price": "manual"}}}
            await a.node.submit([Put("grid.registries", "registry", fields, record_id=REG)])
            await a.node.submit([Put(REG, "cluster", {"name": "gpu-hour", "price": 10}, record_id="gpu-hour")])
            await eventually(lambda: all(_has(m, "gpu-hour") for m in members), 15, "the record everywhere")

            await _partitioned([a], [b, c])
            await a.node.submit([Update(REG, "gpu-hour", patch={"price": 12})])
            await b.node.submit([Update(REG, "gpu-hour", patch={"price": 9})])
            await _healed(members)
            await converged(members, 30)

            disputes = [m.registry.disputes() for m in members]
            assert disputes[0] == disputes[1] == disputes[2]
            (dispute,) = disputes[0]
            assert dispute["status"] == "disputed" and {w["value"] for w in dispute["writes"]} == {12, 9}

            # Resolved on c, through its node (so it is gossiped).
            resolution = dispute_views.resolution_fields(c.registry.store, c.node.engine.trust, c.node.engine.catalog,
                                                         dispute["id"],
                                                         author=c.node.engine.key.did,
                                                         at_ms=c.node.engine.now_ms(), value=11, note="split")
            (done,) = await c.node.submit([Put(DISPUTES_REGISTRY, RESOLUTION_KIND, resolution,
                                               record_id=None, tags=[dispute["id"]])])
            assert isinstance(done, WriteResult)
            await converged(members, 30)
            for m in members:
                record = m.registry.get(REG, "gpu-hour")
                assert record["fields"]["price"] == 11
                assert record["conflicts"][0]["status"] == "resolved"
                assert m.registry.dispute(dispute["id"])["resolutions"][0]["counts"] is True


def _has(member, record_id: str) -> bool:
    try:
        member.registry.get(REG, record_id)
        return True
    except NotFound:
        return False


async def test_an_equivocating_key_is_detected_disputed_and_quarantined_on_every_node(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with cluster(tmp_path) as nodes, P2PHost(hashlib.sha256(b"relay").digest(), [LOOPBACK]) as relay:
            a = await nodes.start("a")
            members = [a] + [await nodes.start(n, a.fed.addrs()) for n in ("b", "c")]
            await full_mesh(members)
            c = members[2]
            # A key of a's org, delegated and published, then cloned onto two
            # machines that each sign a different change #1 in grid.clusters.
            org = read_key_file(a.home.org_key_path)
            cloned = KeyPair(b"\x5c" * 32)
            delegation = sign_delegation(org, cloned.did, ["node", "writer"])
            record_id, statement = delegation_record(delegation)
            await a.node.submit([Put(MEMBERS_REGISTRY, DELEGATION_KIND, statement, record_id=record_id)])
            await converged(members, 20)
            wires = []
            for n, name in enumerate(("left", "right")):
                with LocalRegistry.open_path(tmp_path / f"clone{n}", cloned, owner=org.did) as clone:
                    clone.execute([Remote(w, "a") for w in a.node.engine.envelopes_after(
                        MEMBERS_REGISTRY, a.node.engine.key.did, 0)])
                    result = clone.put(CLUSTERS, "cluster", {"name": name}, id=name)
                    wires.append(clone.change(_cid(result.change_id)))
            # Both reach the federation over gossip, from a member's relay.
            make_member(nodes, relay)
            await relay.connect(a.fed.addrs()[0])
            await eventually(lambda: relay.peer_id in a.fed.admitted, 10, "the relay admitted")
            await relay.wait_for_mesh_peer(a.fed.topic, a.peer_id, timeout=10)
            for wire in wires:
                await relay.publish(a.fed.topic, encode_batch([wire]))

            def quarantined_everywhere() -> bool:
                for m in members:
                    found = [d for d in m.registry.disputes() if d["type"] == "equivocation"]
                    if not found or found[0]["status"] != "quarantined":
                        return False
                    if any(r["id"] in ("left", "right") for r in m.registry.iter_all(CLUSTERS)):
                        return False
                return True

            await eventually(quarantined_everywhere, 30, "the equivocation disputed and quarantined on all",
                             interval=0.2)
            await converged(members, 30)
            (dispute,) = [d for d in a.registry.disputes() if d["type"] == "equivocation"]
            shown = c.registry.dispute(dispute["id"])
            assert sorted(ch["record"] for ch in shown["changes"]) == ["left", "right"]
            assert shown["author"] == cloned.did


async def test_nodes_that_only_sync_quarantine_a_cloned_key_from_where_its_fork_began(tmp_path: Path) -> None:
    """Two nodes that only sync (the branches reached them while they were
    apart; gossip never replays): a holds one branch of a cloned key's
    chain, b a longer one. a meets b's branch past its own head, so its
    first report pairs changes 3 and 4; reports walk back, and each sync
    asks by ID for what a report names but the node lacks, until both
    quarantine the key from #1, where the fork began."""
    with trio.fail_after(90):
        async with cluster(tmp_path) as nodes:
            a = await nodes.start("a")
            b = await nodes.start("b", a.fed.addrs())
            members = [a, b]
            await full_mesh(members)
            org = read_key_file(a.home.org_key_path)
            cloned = KeyPair(b"\x5d" * 32)
            record_id, statement = delegation_record(sign_delegation(org, cloned.did, ["node", "writer"]))
            await a.node.submit([Put(MEMBERS_REGISTRY, DELEGATION_KIND, statement, record_id=record_id)])
            await converged(members, 20)
            await _partitioned([a], [b])
            for n, (member, length) in enumerate(((a, 3), (b, 4))):
                with LocalRegistry.open_path(tmp_path / f"clone{n}", cloned, owner=org.did) as clone:
                    clone.execute([Remote(w, "a") for w in a.node.engine.envelopes_after(
                        MEMBERS_REGISTRY, a.node.engine.key.did, 0)])
                    for i in range(length):
                        clone.put(CLUSTERS, "cluster", {"name": f"branch {n}, {i}"}, id=f"b{n}-{i}")
                    branch = clone.engine.envelopes_after(CLUSTERS, cloned.did, 0)
                await member.node.submit([Remote(w, "clone") for w in branch])
            await _healed(members)

            def quarantined_from_the_start() -> bool:
                return all(m.node.engine.trust.quarantined_since(cloned.did, CLUSTERS) == 1 for m in members)

            await eventually(quarantined_from_the_start, 45, "the key quarantined from #1 on both", interval=0.2)
            await converged(members, 30)
            assert not [r for r in a.registry.iter_all(CLUSTERS) if r["id"].startswith(("b0-", "b1-"))]


def _cid(text: str) -> bytes:
    from registrygrid.protocol.envelope import cid_from_str

    return cid_from_str(text)
