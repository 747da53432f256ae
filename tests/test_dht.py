"""The registry of registries on a Kademlia DHT: real nodes, each with its
own home, LMDB store and py-libp2p host on 127.0.0.1, in one trio process."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any
from pathlib import Path

import pytest
import trio
from libp2p.peer.id import ID
from test_federation_support import cluster, eventually, full_mesh, serve_forged_reads

from registrygrid.engine.ops import Put, Update
from registrygrid.errors import RegistryError, Unavailable, ValidationError
from registrygrid.identity.keys import KeyPair
from registrygrid.membership import org_key
from registrygrid.protocol import registry_record as rr
from registrygrid.protocol.hlc import wall_clock_ms

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
    except RegistryError:
        return False


async def test_forged_stale_and_oversized_records_are_refused_on_put_and_on_get(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cluster(tmp_path) as nodes:
            a = await nodes.start("a")
            b = await nodes.start("b", a.fed.addrs())
            await full_mesh([a, b])
            await eventually(lambda: b.fed.directory.dht.get_routing_table_size() > 0, 20, "b's routing table")
            key = rr.dht_key(REG)
            stranger = KeyPair(b"\x66" * 32)
            now = wall_clock_ms()
            bad = {
                "forged": rr.sign_record(stranger, None, name=REG, owner=a.node.engine.owner, claimed_at=now,
                                         version=(now, 0), change_id="x", descriptor={"name": REG},
                                         federations=[], issued_at=now),
                "stale": rr.sign_record(stranger, None, name=REG, owner=stranger.did, claimed_at=now,
                                        version=(now, 0), change_id="x", descriptor={"name": REG}, federations=[],
                                        issued_at=now - rr.RECORD_MAX_AGE_MS - 1),
                "oversized": b"\x92" + b"x" * rr.MAX_VALUE_BYTES,
            }
            dht_b = b.fed.directory.dht
            for what, value in bad.items():
                with pytest.raises(RegistryError):  # on put, at the putting node
                    await dht_b.put_value(key, value)
                # Sent straight to a peer, past the sender's own check: the peer refuses it too.
                await dht_b.value_store._store_at_peer(ID.from_base58(a.peer_id), key.encode(), value)
                assert a.fed.directory.dht.value_store.get(key.encode()) is None, what
            assert sum(n for k, n in a.fed.metrics.items() if k.startswith("dht.invalid.")) == len(bad)
            # On get: a value a node holds is checked again before it is shown.
            dht_b.value_store.put(key.encode(), bad["stale"])
            with pytest.raises(RegistryError):
                await b.fed.directory.resolve(REG, fresh=True)


async def test_a_registry_of_one_federation_resolves_from_every_node_of_another(tmp_path: Path) -> None:
    """12 nodes in two federations, joined by one connection between them:
    they never admit each other (no gossip, no sync), but share the DHT."""
    with trio.fail_after(120):
        async with cluster(tmp_path / "a", name="fed-one") as one, cluster(tmp_path / "b", name="fed-two") as two:
            a0 = await one.start("a0")
            side_a = [a0] + [await one.start(f"a{i}", a0.fed.addrs()) for i in range(1, 6)]
            b0 = await two.start("b0", a0.fed.addrs())  # the one link between the federations
            side_b = [b0] + [await two.start(f"b{i}", b0.fed.addrs()) for i in range(1, 6)]
            await full_mesh(side_a)
            await full_mesh(side_b)
            await eventually(lambda: a0.peer_id in b0.fed.foreign, 20, "b0 and a0 connected as foreign peers")
            assert a0.peer_id not in b0.fed.admitted and b0.peer_id not in a0.fed.admitted

            await a0.node.submit([Put("grid.registries", "registry", {"name": REG, "kinds": ["cluster"]},
                                      record_id=REG)])
            await eventually(lambda: all(_knows(m) for m in side_a), 20, "the descriptor across federation one")
            assert not any(_knows(m) for m in side_b)  # nothing replicates across
            await eventually(lambda: all(m.fed.directory.dht.get_routing_table_size() > 0 for m in side_a + side_b),
                             20, "routing tables filled")
            for member in side_a:
                await member.fed.directory.publish()
            hosts = {m.peer_id for m in side_a}
            for member in side_b:
                answer = await member.fed.directory.resolve(REG, fresh=True)
                assert answer["owner"] == a0.node.engine.owner
                assert answer["federations"] == [a0.fed.federation_id]
                assert {p["peer_id"] for p in answer["providers"]} <= hosts and answer["providers"]


async def test_a_provider_that_restarts_announces_itself_again_at_its_new_address(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with cluster(tmp_path) as nodes:
            first = await nodes.start("n0")
            members = [first] + [await nodes.start(f"n{i}", first.fed.addrs()) for i in range(1, 4)]
            await full_mesh(members)
            await first.node.submit([Put("grid.registries", "registry", {"name": REG, "kinds": ["cluster"]},
                                         record_id=REG)])
            await eventually(lambda: all(_knows(m) for m in members), 20, "the descriptor everywhere")
            await first.fed.directory.publish()
            await members[1].fed.directory.resolve(REG, fresh=True)  # found before the restart
            provider = members[3]
            old_addrs = set(provider.fed.addrs())
            await nodes.stop(provider)
            provider = await nodes.start("n3", first.fed.addrs())  # same home, a new port
            await eventually(lambda: provider.fed.directory is not None
                             and provider.fed.directory.dht.get_routing_table_size() > 0, 20, "back in the DHT")
            await provider.fed.directory.publish()  # what its republish loop did at start, made sure of here

            def transport(addrs: Iterable[str]) -> set[str]:
                return {a.split("/p2p/")[0] for a in addrs}

            # Still found, at the address it has now (the peers' connections
            # to its old incarnation may take a round to be noticed as gone).
            for _ in range(10):
                answer = await members[1].fed.directory.resolve(REG, fresh=True)
                announced = transport(a for p in answer["providers"] if p["peer_id"] == provider.peer_id
                                      for a in p["addrs"])
                if announced & transport(provider.fed.addrs()):
                    break
                await trio.sleep(0.5)
                await provider.fed.directory.publish()
            assert announced & transport(provider.fed.addrs()), [p["peer_id"] for p in answer["providers"]]
            assert not announced & transport(old_addrs)


async def test_a_node_reads_a_public_registry_of_another_federation_verified(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with cluster(tmp_path / "a", name="fed-one") as one, cluster(tmp_path / "b", name="fed-two") as two:
            a0 = await one.start("a0")
            a1 = await one.start("a1", a0.fed.addrs())
            b0 = await two.start("b0", a0.fed.addrs())
            b1 = await two.start("b1", b0.fed.addrs())
            await full_mesh([a0, a1])
            await full_mesh([b0, b1])
            descriptor = {"name": REG, "kinds": ["cluster"], "replication": {"scope": "public"}}
            await a0.node.submit([Put("grid.registries", "registry", descriptor, record_id=REG)])
            await a0.node.submit([Put(REG, "cluster", {"name": f"gpu-{i}"}, record_id=f"gpu-{i}") for i in range(5)])
            await a0.node.submit([Update(REG, "gpu-0", patch={"region": "eu"})])
            await eventually(lambda: all(_knows(m) for m in (a0, a1)), 20, "the descriptor in federation one")
            await eventually(lambda: all(m.fed.directory.dht.get_routing_table_size() > 0
                                         for m in (a0, a1, b0, b1)), 20, "routing tables")
            for member in (a0, a1):
                await member.fed.directory.publish()

            read = await b1.fed.reader.read(REG)
            assert sorted(r["id"] for r in read["records"]) == [f"gpu-{i}" for i in range(5)]
            assert read["provider"] in {a0.peer_id, a1.peer_id}
            assert read["owner"] == a0.node.engine.owner
            assert read["verified"]["changes"] >= 6
            assert next(r for r in read["records"] if r["id"] == "gpu-0")["fields"]["region"] == "eu"
            one_record = await b1.fed.reader.read(REG, record_id="gpu-3")
            assert [r["id"] for r in one_record["records"]] == ["gpu-3"]
            assert not _knows(b1)  # read, not replicated: nothing of it is stored on b1
            assert b1.fed.metrics["remote_read.ok"] == 2


async def test_a_registry_that_is_not_public_is_not_served_across_federations(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with cluster(tmp_path / "a", name="fed-one") as one, cluster(tmp_path / "b", name="fed-two") as two:
            a0 = await one.start("a0")
            b0 = await two.start("b0", a0.fed.addrs())
            await a0.node.submit([Put("grid.registries", "registry", {"name": REG, "kinds": ["cluster"]},
                                      record_id=REG)])
            await eventually(lambda: a0.peer_id in b0.fed.foreign, 20, "connected")
            await eventually(lambda: b0.fed.directory.dht.get_routing_table_size() > 0, 20, "routing table")
            await a0.fed.directory.publish()
            with pytest.raises(RegistryError) as refused:
                await b0.fed.reader.read(REG)
            assert "not public" in refused.value.message


async def test_a_provider_that_lies_is_refused_and_reported(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with cluster(tmp_path / "a", name="fed-one") as one, cluster(tmp_path / "b", name="fed-two") as two:
            a0 = await one.start("a0")
            liar = await one.start("a1", a0.fed.addrs())
            b0 = await two.start("b0", a0.fed.addrs())
            await full_mesh([a0, liar])
            descriptor = {"name": REG, "kinds": ["cluster"], "replication": {"scope": "public"}}
            await a0.node.submit([Put("grid.registries", "registry", descriptor, record_id=REG)])
            await a0.node.submit([Put(REG, "cluster", {"name": "gpu"}, record_id="gpu")])
            await eventually(lambda: _has_record(liar), 20, "the record at the liar")
            await liar.fed.host.connect(b0.fed.addrs()[0])
            await eventually(lambda: all(m.fed.directory.dht.get_routing_table_size() > 0 for m in (a0, liar, b0)),
                             20, "routing tables")
            for member in (a0, liar):
                await member.fed.directory.publish()

            serve_forged_reads(liar)
            await one.stop(a0)  # the honest provider is gone: only the liar answers
            with pytest.raises(Unavailable) as refused:
                await b0.fed.reader.read(REG)
            assert any(r.startswith(f"{liar.peer_id}: refused") for r in refused.value.details["refusals"])
            assert b0.fed.metrics["remote_read.lying_provider"] == 1


def _has_record(member) -> bool:
    try:
        member.registry.get(REG, "gpu")
        return True
    except RegistryError:
        return False


async def test_a_restarted_node_reconnects_to_the_other_federation_without_a_bootstrap_address(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with cluster(tmp_path / "a", name="fed-one") as one, cluster(tmp_path / "b", name="fed-two") as two:
            a0 = await one.start("a0")
            b0 = await two.start("b0", a0.fed.addrs())
            await eventually(lambda: a0.peer_id in b0.fed.foreign and b0.peer_id in a0.fed.foreign, 20,
                             "connected as foreign peers")
            await one.stop(a0)
            a0 = await one.start("a0")  # no bootstrap: it remembers b0 from its persisted peer table
            await eventually(lambda: b0.peer_id in a0.fed.foreign, 20, "a0 dialed b0 again")
            await eventually(lambda: a0.fed.directory.dht.get_routing_table_size() > 0, 20,
                             "b0 back in a0's routing table")


async def test_an_owner_transfers_a_name_to_an_org_of_another_federation(tmp_path: Path) -> None:
    """Federation one claims the name first; an org of federation two hosts a
    registry of that name too, but only holds the name once federation one's
    owner signs it over, and the giver can't take it back."""
    with trio.fail_after(120):
        async with cluster(tmp_path / "a", name="fed-one") as one, cluster(tmp_path / "b", name="fed-two") as two:
            a0 = await one.start("a0")
            a1 = await one.start("a1", a0.fed.addrs())
            b0 = await two.start("b0", a0.fed.addrs())
            b1 = await two.start("b1", b0.fed.addrs())
            await full_mesh([a0, a1])
            await full_mesh([b0, b1])
            public = {"name": REG, "kinds": ["cluster"], "replication": {"scope": "public"}}
            await a0.node.submit([Put("grid.registries", "registry", public, record_id=REG)])
            await eventually(lambda: _knows(a1), 20, "the descriptor in federation one")
            await b0.node.submit([Put("grid.registries", "registry", public, record_id=REG)])
            await b0.node.submit([Put(REG, "cluster", {"name": "b-gpu"}, record_id="b-gpu")])
            await eventually(lambda: _knows(b1), 20, "the descriptor in federation two")
            await eventually(lambda: all(m.fed.directory.dht.get_routing_table_size() > 0
                                         for m in (a0, a1, b0, b1)), 20, "routing tables")
            for member in (a0, a1, b0, b1):
                await member.fed.directory.publish()
            giver, receiver = a0.node.engine.owner, b0.node.engine.owner
            before = await a1.fed.directory.resolve(REG, fresh=True)
            assert before["owner"] == giver and before["holder"] == giver  # first come

            # A forged transfer (signed by the receiver, not the owner) is refused as a write.
            forged = rr.sign_transfer(org_key(b0.home), name=REG, to_owner=KeyPair(b"\x09" * 32).did,
                                      claimed_at=before["claimed_at"], at=wall_clock_ms())
            [refused] = await a0.node.submit([Update("grid.registries", REG,
                                                     patch={"transfer": _field(forged, receiver)})])
            assert isinstance(refused, RegistryError) and isinstance(refused, ValidationError), refused
            statement = rr.sign_transfer(org_key(a0.home), name=REG, to_owner=receiver,
                                         claimed_at=before["claimed_at"], at=wall_clock_ms())
            [done] = await a0.node.submit([Update("grid.registries", REG,
                                                  patch={"transfer": _field(statement, receiver)})])
            assert done.status == "updated"
            await eventually(lambda: "transfer" in a1.registry.get("grid.registries", REG)["fields"], 20,
                             "the transfer across federation one")

            async def settled() -> bool:
                for member in (a0, a1, b0, b1):
                    await member.fed.directory.publish()
                await trio.sleep(0.3)  # the receivers look for their chain in the background
                answer = await a1.fed.directory.resolve(REG, fresh=True)
                return answer["owner"] == receiver

            await eventually_async(settled, 40, "the receiver's record everywhere")
            after = await b1.fed.directory.resolve(REG, fresh=True)
            assert after["holder"] == receiver and after["claimed_at"] == before["claimed_at"]
            assert after["transfers"] == [{"from": giver, "to": receiver, "at": after["transfers"][0]["at"]}]
            read = await a1.fed.reader.read(REG)  # now served by federation two
            assert [r["id"] for r in read["records"]] == ["b-gpu"] and read["owner"] == receiver

            # The giver drops the transfer from its descriptor: its old claim comes back, and loses.
            await a0.node.submit([Update("grid.registries", REG, patch={"transfer": None})])
            await a0.fed.directory.publish()
            again = await b1.fed.directory.resolve(REG, fresh=True)
            assert again["owner"] == receiver


def _field(statement: bytes, to: str) -> dict[str, str]:
    return {"to": to, "statement": base64.b64encode(statement).decode()}


async def eventually_async(check, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(0.2)
        return
    raise AssertionError(f"timed out waiting for {what}")


def test_a_peer_closing_its_dht_stream_is_not_a_warning_but_other_read_failures_are() -> None:
    """py-libp2p warns "Failed to read DHT message" when a peer that queried
    this node closes the stream it kept open (StreamEOF): every peer's stop
    did that on the operator's stderr. The DHT's logger, as libp2p writes to it."""
    import logging

    from libp2p.network.stream.exceptions import StreamEOF, StreamReset

    import registrygrid.node.dht  # noqa: F401  (installs the filter)

    logger = logging.getLogger("libp2p.kad_dht.kad_dht")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.warning("Failed to read DHT message from stream: %s", StreamEOF())
        assert seen == []
        logger.warning("Failed to read DHT message from stream: %s", StreamReset("reset by peer"))
        logger.warning("DHT message too large (max %s bytes)", 4096)
        assert [(r.levelname, r.getMessage()) for r in seen] == [
            ("WARNING", "Failed to read DHT message from stream: reset by peer"),
            ("WARNING", "DHT message too large (max 4096 bytes)"),
        ]
    finally:
        logger.removeHandler(handler)


async def test_a_new_descriptor_is_published_by_itself_and_other_writes_publish_nothing(tmp_path: Path) -> None:
    """The owner's node publishes soon after a descriptor is committed, with
    no publish() call; records of other registries never make it publish."""
    with trio.fail_after(90):
        async with cluster(tmp_path) as nodes:
            owner = await nodes.start("n0")
            other = await nodes.start("n1", owner.fed.addrs())
            await full_mesh([owner, other])
            await eventually(lambda: all(m.fed.directory.dht.get_routing_table_size() > 0 for m in (owner, other)),
                             20, "routing tables filled")
            metrics = owner.fed.directory.metrics
            await owner.node.submit([Put("grid.registries", "registry", {"name": REG, "kinds": ["cluster"]},
                                         record_id=REG)])
            await eventually(lambda: metrics["dht.published"] > 0, 20, "a publish after the descriptor")

            async def found() -> bool:
                try:
                    return (await other.fed.directory.resolve(REG, fresh=True))["owner"] == owner.node.engine.owner
                except RegistryError:
                    return False

            with trio.fail_after(20):
                while not await found():
                    await trio.sleep(0.2)

            await trio.sleep(1.5)  # past the debounce of anything committed so far
            before = metrics["dht.published"]
            await owner.node.submit([Put(REG, "cluster", {"name": f"gpu-{i}"}) for i in range(50)])
            await trio.sleep(1.5)
            assert metrics["dht.published"] == before, "records of another registry published nothing"


async def test_a_record_published_with_no_peer_reaches_the_first_peer_that_joins(tmp_path: Path) -> None:
    """Published to an empty routing table, a record stayed on its owner
    alone until the next republish (22 h): stopped before that, the name
    was gone from the DHT."""
    with trio.fail_after(90):
        async with cluster(tmp_path) as nodes:
            owner = await nodes.start("n0")
            await owner.node.submit([Put("grid.registries", "registry", {"name": REG, "kinds": ["cluster"]},
                                         record_id=REG)])
            await eventually(lambda: owner.fed.directory.metrics["dht.published"] > 0, 20, "published alone")
            key = rr.dht_key(REG).encode()
            other = await nodes.start("n1", owner.fed.addrs())
            await eventually(lambda: other.fed.directory.dht.value_store.get(key) is not None, 20,
                             "the first peer holds the owner's record")
            await nodes.stop(owner)
            answer = await other.fed.directory.resolve(REG, fresh=True)
            assert answer["descriptor"]["kinds"] == ["cluster"]


async def test_a_flood_of_valid_records_for_made_up_names_evicts_no_one(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """py-libp2p's store evicted the value it received first once full: a
    peer that put enough records for made-up names (each validly signed by
    a key of its own) took every other name off the node, its own first."""
    from registrygrid.node import dht

    monkeypatch.setattr(dht, "MAX_HELD_VALUES", 4)
    with trio.fail_after(90):
        async with cluster(tmp_path) as nodes:
            a = await nodes.start("a")
            b = await nodes.start("b", a.fed.addrs())
            await full_mesh([a, b])
            await eventually(lambda: b.fed.directory.dht.get_routing_table_size() > 0, 20, "b's routing table")
            await a.node.submit([Put("grid.registries", "registry", {"name": REG, "kinds": ["cluster"]},
                                     record_id=REG)])
            own = rr.dht_key(REG).encode()
            store = a.fed.directory.dht.value_store
            await eventually(lambda: store.get(own) is not None, 20, "a holds its own record")
            now = wall_clock_ms()
            for i in range(8):
                flooder = KeyPair.generate()
                name = f"spam.n{i}"
                value = rr.sign_record(flooder, None, name=name, owner=flooder.did, claimed_at=now,
                                       version=(now, 0), change_id="x", descriptor={"name": name, "kinds": ["cluster"]},
                                       federations=[], issued_at=now)
                await b.fed.directory.dht.value_store._store_at_peer(ID.from_base58(a.peer_id),
                                                                     rr.dht_key(name).encode(), value)
            assert store.get(own) is not None, "a's own record stays"
            assert len(store.store) == 4
            assert a.fed.directory.metrics["dht.refused.full"] >= 5


async def test_one_peers_records_take_no_more_than_its_share_of_what_a_node_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded as a whole only, a node's store was filled by one peer's
    records for made-up names, and every other peer's new names were then
    turned away until those expired (48 h)."""
    from registrygrid.node import dht

    monkeypatch.setattr(dht, "MAX_VALUES_PER_PEER", 3)
    with trio.fail_after(90):
        async with cluster(tmp_path) as nodes:
            a = await nodes.start("a")
            b = await nodes.start("b", a.fed.addrs())
            c = await nodes.start("c", a.fed.addrs())
            await full_mesh([a, b, c])
            store = a.fed.directory.dht.value_store
            now = wall_clock_ms()

            async def put(member: Any, name: str) -> None:
                owner = KeyPair.generate()
                value = rr.sign_record(owner, None, name=name, owner=owner.did, claimed_at=now, version=(now, 0),
                                       change_id="x", descriptor={"name": name, "kinds": ["cluster"]},
                                       federations=[], issued_at=now)
                await member.fed.directory.dht.value_store._store_at_peer(ID.from_base58(a.peer_id),
                                                                          rr.dht_key(name).encode(), value)

            for i in range(6):
                await put(b, f"spam.n{i}")
            await put(c, "honest.name")
            held = {key for key in store.store}
            assert sum(rr.dht_key(f"spam.n{i}").encode() in held for i in range(6)) == 3
            assert rr.dht_key("honest.name").encode() in held, "another peer's name still finds room"
            assert a.fed.directory.metrics["dht.refused.peer_quota"] == 3
