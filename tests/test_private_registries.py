"""Private registries: a replication scope that names the orgs that may read.

Three orgs' nodes in one federation (real libp2p on 127.0.0.1): A owns
``acme.secrets`` and names B as a reader; C is a member too, but not a
reader. B gets every record; C gets none by gossip or sync, even when it
asks for that registry by name. The descriptor itself is public (it is
how B and C learn the registry exists); the records are not."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from registrygrid.engine.ops import Put
from registrygrid.errors import Unavailable
from registrygrid.identity.keys import did_from_peer_id
from registrygrid.membership import org_key
from registrygrid.node.federated_search import federated_search
from registrygrid.node.search import SearchService
from registrygrid.node.transport import P2PError
from registrygrid.protocol.federated_search import SEARCH_PROTOCOL_ID
from registrygrid.protocol.hello import HELLO_PROTOCOL_ID
from registrygrid.protocol.sync import SYNC_PROTOCOL_ID, SyncPuller, decode_response
from registrygrid.trust.statements import MEMBERS_REGISTRY, REVOCATION_KIND, revocation_record, sign_revocation
from test_federation_support import FAST, cluster, eventually, full_mesh

SECRETS = "acme.secrets"


async def test_a_private_registry_reaches_its_readers_and_nobody_else(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cluster(tmp_path, FAST) as nodes:
            a, b, c = await _owner_reader_and_other(nodes)
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


async def _owner_reader_and_other(nodes):  # type: ignore[no-untyped-def]
    """Three meshed members, each of its own org: a (to own SECRETS), b (to
    read it) and c."""
    a = await nodes.start("a")
    b = await nodes.start("b", a.fed.addrs())
    c = await nodes.start("c", a.fed.addrs())
    await full_mesh([a, b, c])
    return a, b, c


def _org(member) -> str:  # type: ignore[no-untyped-def]
    return member.home.org().org


def _has(grid, registry: str, record_id: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        grid.get(registry, record_id)
    except Exception:  # noqa: BLE001 - NotFound until it arrives
        return False
    return True


async def test_a_reader_revoked_after_its_hello_is_served_nothing_more_though_it_says_no_more_hellos(
        tmp_path: Path) -> None:
    # Admission was checked at the hello only: a node that stopped saying
    # hello (and refused ours) once its org was revoked kept pulling every
    # change of the private registry written after the revocation.
    with trio.fail_after(90):
        async with cluster(tmp_path, FAST) as nodes:
            a = await nodes.start("a", components=[SearchService()])
            c = await nodes.start("c", a.fed.addrs())
            await full_mesh([a, c])
            c_org = c.home.org().org  # type: ignore[union-attr]
            a.registry.create_registry(SECRETS, ["tool"], replication="private", readers=[c_org])
            await _put(a, "before", 3)
            await eventually(lambda: _ids(c) == ["before0", "before1", "before2"], 20, "the reader has all three",
                             interval=0.2)

            async def says_no_hello(peer_id: str) -> bool:
                return True

            async def refuses_hellos(peer_id: str, request: bytes) -> bytes:
                raise Unavailable("busy")

            c.fed._hello = says_no_hello  # type: ignore[method-assign]
            c.fed.host.set_handler(HELLO_PROTOCOL_ID, refuses_hellos)  # type: ignore[union-attr]
            admin = org_key(a.home)
            vector = a.registry.engine.version_vector()
            for subject in (c_org, did_from_peer_id(c.peer_id)):
                cutoffs = {reg: authors[subject] for reg, authors in vector.items() if subject in authors}
                record_id, fields = revocation_record(sign_revocation(admin, subject, cutoffs, reason="test"))
                a.registry.put(MEMBERS_REGISTRY, REVOCATION_KIND, fields, id=record_id)
            await _put(a, "after", 3)
            asked: list[str] = []

            async def answers_searches(peer_id: str, request: bytes) -> bytes:
                asked.append(peer_id)
                raise Unavailable("busy")

            c.fed.host.set_handler(SEARCH_PROTOCOL_ID, answers_searches)  # type: ignore[union-attr]
            await federated_search(a.node, {"text": "after", "federated": True})
            assert asked == [], "a revoked member is not sent queries (they may name private registries)"
            request = SyncPuller("testfed", registries=[SECRETS]).request({})
            with pytest.raises(P2PError, match="does not serve you"):  # expelled by the search already
                await c.fed.host.request(a.peer_id, SYNC_PROTOCOL_ID, request, timeout=10)  # type: ignore[union-attr]
            assert a.fed.metrics["peers.expelled"] == 1 and a.fed.peers.blocked(c.peer_id)  # type: ignore[union-attr]
            await trio.sleep(FAST.sync_interval * 2)  # its own sync rounds, had it any left
            assert _ids(c) == ["before0", "before1", "before2"]


async def _put(member, prefix: str, count: int) -> None:  # type: ignore[no-untyped-def]
    outcomes = await member.node.submit([Put(SECRETS, "tool", {"name": f"{prefix}{i}"}, record_id=f"{prefix}{i}")
                                         for i in range(count)])
    assert all(o.status == "created" for o in outcomes)


def _ids(member) -> list[str]:  # type: ignore[no-untyped-def]
    try:
        return sorted(r["id"] for r in member.registry.list(SECRETS).items)
    except Exception:  # noqa: BLE001 - UnknownRegistry until its descriptor arrives
        return []


def _held(member, registry: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return list(member.registry.iter_all(registry, include_deleted=True))


async def test_an_erasure_notice_of_a_private_record_reaches_its_readers_and_nobody_else(tmp_path: Path) -> None:
    # Built-in registries go to every member: the notice of a private
    # record's erasure (its id, the reason, its authors' places) went to
    # every member too, nodes that never hold the registry.
    with trio.fail_after(90):
        async with cluster(tmp_path, FAST) as nodes:
            a, b, c = await _owner_reader_and_other(nodes)
            a.registry.create_registry(SECRETS, ["tool"], replication="private", readers=[_org(b)])
            a.registry.create_registry("acme.shared", ["tool"])
            await _put(a, "deal", 1)
            a.registry.put("acme.shared", "tool", {"name": "old"}, id="old")
            await eventually(lambda: _ids(b) == ["deal0"], 20, "the reader has the record", interval=0.2)
            a.registry.erase(SECRETS, "deal0", reason="CONFIDENTIAL: the Globex deal is off")
            # The same author's next notice, of a shared registry's record,
            # goes to everyone: c's chain of a's notices goes on past the
            # place kept from it.
            await eventually(lambda: _has(c.registry, "acme.shared", "old"), 20, "the shared record at c")
            a.registry.erase("acme.shared", "old", reason="public clean-up")
            await eventually(lambda: len(_held(b, "grid.erasures")) == 2, 20, "both notices at the reader",
                             interval=0.2)
            await eventually(lambda: len(_held(c, "grid.erasures")) == 1, 20, "the shared notice at c",
                             interval=0.2)
            await trio.sleep(FAST.sync_interval * 1.5)  # a full anti-entropy round and more
            (notice,) = _held(c, "grid.erasures")
            assert notice["fields"]["registry"] == "acme.shared"
            assert not _has(c.registry, "acme.shared", "old")  # honoured there
            wires = [c.registry.change(cid) for cid in _change_ids(c)]
            assert not any(b"Globex" in wire or b"deal0" in wire for wire in wires if wire is not None)
            assert a.registry.engine.metrics["sync.subject_withheld"] >= 1


def _change_ids(member) -> list[bytes]:  # type: ignore[no-untyped-def]
    from registrygrid.storage import changes

    store = member.registry.store
    with store.read() as txn:
        return list(changes.iter_ids(store, txn))


async def test_an_equivocation_in_a_private_registry_is_reported_to_its_readers_and_nobody_else(
        tmp_path: Path) -> None:
    # The report carries both of the forked author's signed changes, the
    # private records' content: it went to every member.
    from registrygrid.engine.ops import Remote
    from registrygrid.sdk import LocalRegistry
    from test_engine import wires_in_feed_order

    with trio.fail_after(90):
        async with cluster(tmp_path, FAST) as nodes:
            a, b, c = await _owner_reader_and_other(nodes)
            a.registry.create_registry(SECRETS, ["tool"], replication="private", readers=[_org(b)])
            await _put(a, "real", 1)
            # A clone of a's node key, with a's history, signs its next place otherwise.
            twin = LocalRegistry.open_path(tmp_path / "twin", a.home.node_key(), owner=a.home.org().org)  # type: ignore[union-attr]
            twin.execute([Remote(wire, "a") for wire in wires_in_feed_order(a.registry)])
            twin.put(SECRETS, "tool", {"name": "TWIN-SECRET"}, id="twin")
            forked = wires_in_feed_order(twin)[-1]
            twin.close()
            await _put(a, "again", 1)
            await a.node.submit([Remote(forked, "twin")])
            assert [d["registry"] for d in a.registry.disputes()] == [SECRETS]

            def reports(member) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
                return [r for r in _held(member, "grid.disputes") if r["kind"] == "equivocation-report"]

            await eventually(lambda: len(reports(b)) == 1, 20, "the report at the reader", interval=0.2)
            await trio.sleep(FAST.sync_interval * 1.5)  # a full anti-entropy round and more
            assert reports(c) == []
            wires = [c.registry.change(cid) for cid in _change_ids(c)]
            assert not any(b"TWIN-SECRET" in wire for wire in wires if wire is not None)
