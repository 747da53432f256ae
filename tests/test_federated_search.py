"""Federated search: one query answered by this node, its federation's peers
and the providers of the registries it follows, merged by record, every
remote hit rebuilt from its signed changes before it is shown, and a slow
peer reported rather than waited for.

Real nodes (home, LMDB store, search index, py-libp2p host and DHT on
127.0.0.1) in one trio process. A slow or lying peer is a real node whose
handler of ``/registrygrid/search/1.0.0`` is replaced: the slow one holds
the request until the test ends, the liar alters a change's bytes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
from test_federation_support import FAST, Member, cluster, eventually, full_mesh
from test_follow import FOLLOWING, REG, _published

from registrygrid.engine.ops import Put
from registrygrid.errors import ValidationError
from registrygrid.node import federated_search as node_search
from registrygrid.node.federated_search import federated_search
from registrygrid.node.search import SearchService
from registrygrid.protocol import federated_search as wire

pytestmark = pytest.mark.timeout(150)

PUBLIC = {"name": REG, "kinds": ["cluster"], "replication": {"scope": "public"}}
LOCAL = "grid.clusters"


def _search(member: Member) -> SearchService:
    service = member.node.component("search")
    assert service is not None
    return service


async def _indexed(*members: Member) -> None:
    def caught_up() -> bool:
        return all(_search(m).index is not None and _search(m).index.cursor >= m.node.feed.head for m in members)

    await eventually(caught_up, 20, "every index caught up with its feed")


def _by_source(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["source"]: s for s in answer["sources"]}


async def test_a_query_merges_the_local_index_and_a_followed_registrys_provider_and_reports_a_slow_peer(
        tmp_path: Any) -> None:
    with trio.fail_after(120):
        async with cluster(tmp_path / "a", name="fed-one") as one, \
                cluster(tmp_path / "b", FOLLOWING, name="fed-two") as two:
            a0 = await one.start("a0", components=[SearchService()])
            b0 = await two.start("b0", a0.fed.addrs(), components=[SearchService()])
            b1 = await two.start("b1", b0.fed.addrs())  # the slow peer: a member of b0's federation
            await full_mesh([b0, b1])
            await _published(a0, [], [b0], PUBLIC)
            await a0.node.submit([Put(REG, "cluster", {"name": f"gpu-{i}", "description": "runs legal contract "
                                                       "summarizers on eight H100"}, record_id=f"gpu-{i}")
                                  for i in range(3)])
            await b0.node.submit([Put(LOCAL, "cluster", {"name": "home-gpu", "description": "summarizes legal "
                                                         "contracts at home"}, record_id="home-gpu")])
            await b0.fed.follows.follow(REG)
            await _indexed(a0, b0)

            asked, release = trio.Event(), trio.Event()

            async def slow(peer_id: str, request: bytes) -> bytes:
                asked.set()
                await release.wait()
                return await b1.fed._answer_search(peer_id, request)

            b1.fed.host.set_handler(wire.SEARCH_PROTOCOL_ID, slow)
            try:
                answer = await federated_search(b0.node, {"text": "legal contract summarizers",
                                                          "federated": {"deadline_ms": 1500}})
                assert asked.is_set() and not release.is_set(), "answered while the slow peer still held the query"
            finally:
                release.set()
            owners = {f"gpu-{i}": a0.registry.get(REG, f"gpu-{i}") for i in range(3)}

    sources = _by_source(answer)
    assert sources["local"]["status"] == "ok" and sources["local"]["hits"] == 1
    assert sources[b1.peer_id]["kind"] == "peer" and sources[b1.peer_id]["status"] == "timeout"
    provider = sources[a0.peer_id]
    assert provider["kind"] == "provider" and provider["registry"] == REG
    assert provider["status"] == "ok" and provider["hits"] == 3 and provider["unverified"] == 0

    items = {(i["registry"], i["id"]): i for i in answer["items"]}
    assert set(items) == {(LOCAL, "home-gpu"), *((REG, f"gpu-{i}") for i in range(3))}
    assert items[(LOCAL, "home-gpu")]["sources"] == ["local"]
    for i in range(3):
        item = items[(REG, f"gpu-{i}")]
        assert item["sources"] == [a0.peer_id] and item["record_from"] == a0.peer_id
        # Rebuilt on b0 from the owner's signed changes: exactly the record its owner stores.
        assert item["record"] == owners[f"gpu-{i}"]
    assert answer["next_cursor"] is None


async def test_peers_of_the_federation_answer_verified_deduplicated_and_a_liars_hit_is_dropped(tmp_path: Any) -> None:
    with trio.fail_after(120):
        async with cluster(tmp_path, FAST) as nodes:
            a0 = await nodes.start("a0", components=[SearchService()])
            a1 = await nodes.start("a1", a0.fed.addrs(), components=[SearchService()])
            await full_mesh([a0, a1])
            await a1.node.submit([Put(LOCAL, "cluster", {"name": f"tpu-{i}", "description": "trains speech "
                                                         "models"}, record_id=f"tpu-{i}") for i in range(4)])
            await eventually(lambda: a0.records() == 4, 20, "a1's records on a0")
            await _indexed(a0, a1)
            query = {"text": "speech models", "sort": "created_at", "federated": True}

            honest = await federated_search(a0.node, query)
            alone = await trio.to_thread.run_sync(_search(a0).search, {k: v for k, v in query.items()
                                                                       if k != "federated"})

            serve = a1.fed._answer_search
            forged_ids: list[str] = []

            async def lie(peer_id: str, request: bytes) -> bytes:
                answer = wire.decode_response(await serve(peer_id, request))
                first = answer.hits[0]
                forged_ids.append(first.id)
                forged = bytearray(first.changes[0])
                forged[len(forged) // 2] ^= 0xFF
                hits = [msgspec.structs.replace(first, changes=[bytes(forged)]), *answer.hits[1:]]
                return wire.encode_response(msgspec.structs.replace(answer, hits=hits))

            a1.fed.host.set_handler(wire.SEARCH_PROTOCOL_ID, lie)
            lied = await federated_search(a0.node, query)
            shown = {i: a0.registry.get(LOCAL, f"tpu-{i}") for i in range(4)}
            served = a1.fed.metrics["search.served"]
            dropped = a0.fed.metrics["search.unverified"]

    # Both hold every record: one item each, naming both sources, in the order a0's index alone gives.
    assert [i["id"] for i in honest["items"]] == [i["id"] for i in alone["items"]]
    assert len(honest["items"]) == 4
    assert all(i["sources"] == ["local", a1.peer_id] for i in honest["items"])
    assert all(i["record"] == shown[int(i["id"][-1])] for i in honest["items"])
    assert _by_source(honest)[a1.peer_id] | {"unverified": 0} == _by_source(honest)[a1.peer_id]

    liar = _by_source(lied)[a1.peer_id]
    assert liar["status"] == "ok" and liar["unverified"] == 1 and liar["hits"] == 3
    assert [i["id"] for i in lied["items"] if i["sources"] == ["local"]] == forged_ids, "the forged copy is not shown"
    assert all(i["sources"] == ["local", a1.peer_id] for i in lied["items"] if i["id"] not in forged_ids)
    assert served == 2 and dropped == 1


async def test_a_federated_query_refuses_a_cursor_and_a_bad_deadline_naming_them(tmp_path: Any) -> None:
    with trio.fail_after(60):
        async with cluster(tmp_path, FAST) as nodes:
            a0 = await nodes.start("a0", components=[SearchService()])
            for query, pointer in (({"federated": True, "cursor": "abc"}, "/cursor"),
                                   ({"federated": {"deadline_ms": 0}}, "/federated/deadline_ms"),
                                   ({"federated": {"wait": 5}}, "/federated")):
                with pytest.raises(ValidationError) as refused:
                    await federated_search(a0.node, query)
                assert refused.value.details[0]["path"] == pointer
            # A node alone answers from its own index, and says so.
            alone = await federated_search(a0.node, {"federated": True})
    assert [s["source"] for s in alone["sources"]] == ["local"]


def test_a_peer_that_is_no_member_searches_public_registries_only(tmp_path: Any) -> None:
    """The registries a peer may search here (node/federated_search.py serve_search)."""
    from registrygrid.identity.keys import KeyPair
    from registrygrid.sdk import LocalRegistry
    from registrygrid.search.service import readable_registries

    grid = LocalRegistry.open_path(tmp_path / "store")
    try:
        friend_org = KeyPair.generate().did
        grid.create_registry("acme.public", ["cluster"], replication="public")
        grid.create_registry("acme.shared", ["cluster"])
        grid.create_registry("acme.private", ["cluster"], replication="private", readers=[friend_org])
        grid.create_registry("acme.local", ["cluster"], replication="local")
        member = set(readable_registries(grid, KeyPair.generate().did, member=True))
        friend = set(readable_registries(grid, friend_org, member=True))
        foreign = set(readable_registries(grid, None, member=False))
    finally:
        grid.close()
    assert foreign == {"acme.public"}
    assert {"acme.public", "acme.shared", "grid.clusters"} <= member and not {"acme.private", "acme.local"} & member
    assert "acme.private" in friend and "acme.local" not in friend
    assert node_search.MAX_PEERS >= 1


def test_a_query_or_an_answer_nested_past_the_parsers_depth_is_malformed_not_a_crash(tmp_path: Any) -> None:
    """A peer's query JSON and a peer's hit's sort value are parsed by
    recursive decoders: nested thousands deep, each raised RecursionError
    (a handler traceback, not a typed refusal) before."""
    from registrygrid.errors import MalformedInput
    from registrygrid.sdk import LocalRegistry
    from registrygrid.search.index import SearchIndex
    from registrygrid.search.service import answer_peer

    marker = msgspec.msgpack.encode("@@deep@@")
    answer = wire.encode_response(wire.SearchResponse([wire.Hit("acme.x", "r", 1.0, "@@deep@@", [])], 1, 1, 0))
    with pytest.raises(MalformedInput, match="malformed search response"):
        wire.decode_response(answer.replace(marker, b"\x91" * 5_000 + b"\xc0"))

    grid = LocalRegistry.open_path(tmp_path / "store")
    try:
        request = wire.decode_request(wire.encode_request(b"[" * 5_000 + b"]" * 5_000, 1000))
        with pytest.raises(MalformedInput, match="the query is not JSON"):
            answer_peer(SearchIndex(tmp_path / "index"), grid, request, ("grid.clusters",))
    finally:
        grid.close()


async def test_a_peers_hits_count_only_as_the_query_asked_for_them(tmp_path: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A peer's hits were taken as authentic records alone: a token limited to
    # one registry was shown another registry's record, a forged sort value
    # put a record first (and a string among numbers answered 500), and a
    # hit sent a hundred times was scored a hundred times.
    import json

    networks = "grid.networks"
    with trio.fail_after(120):
        async with cluster(tmp_path) as nodes:
            a0 = await nodes.start("a0", components=[SearchService()])
            a1 = await nodes.start("a1", a0.fed.addrs(), components=[SearchService()])
            await full_mesh([a0, a1])
            await a1.node.submit([Put(LOCAL, "cluster", {"name": f"c{i}", "description": "speech", "price": i},
                                      record_id=f"c{i}") for i in range(3)])
            await a1.node.submit([Put(networks, "network", {"name": "secretnet", "description": "speech"},
                                      record_id="net1")])
            await eventually(lambda: len(list(a0.registry.iter_all(LOCAL))) == 3
                             and len(list(a0.registry.iter_all(networks))) == 1, 30, "both registries on a0")
            await _indexed(a0, a1)
            serve = a1.fed._answer_search
            lie: dict[str, Any] = {}

            async def hostile(peer_id: str, request: bytes) -> bytes:
                real = wire.decode_response(await serve(peer_id, request))
                everything = wire.encode_request(json.dumps({"text": "speech", "limit": 100}).encode(), 2000)
                hits = list(wire.decode_response(await serve(peer_id, everything)).hits)
                by_id = {h.id: h for h in hits}
                if lie["kind"] == "scope":
                    hits = [by_id["net1"]]
                elif lie["kind"] == "sort":
                    hits = [msgspec.structs.replace(by_id["c2"], sort_value=-1e300),
                            msgspec.structs.replace(by_id["c1"], sort_value="zzz")]
                elif lie["kind"] == "repeat":
                    hits = [by_id["c2"]] * 100
                else:  # honest
                    hits = [by_id[f"c{i}"] for i in range(3)]
                return wire.encode_response(msgspec.structs.replace(real, hits=hits))

            assert a1.fed.host is not None
            a1.fed.host.set_handler(wire.SEARCH_PROTOCOL_ID, hostile)
            lie["kind"] = "scope"
            answer = await federated_search(a0.node, {"text": "speech", "federated": True}, (LOCAL,))
            assert {i["registry"] for i in answer["items"]} == {LOCAL}
            assert _by_source(answer)[a1.peer_id]["unverified"] == 1
            lie["kind"] = "sort"
            answer = await federated_search(a0.node, {"text": "speech", "sort": {"field": "price", "order": "asc"},
                                                      "federated": True})
            assert [(i["id"], i["sort_value"]) for i in answer["items"]] == [("c0", 0), ("c1", 1), ("c2", 2)]
            assert _by_source(answer)[a1.peer_id]["unverified"] == 2
            lie["kind"] = "repeat"
            answer = await federated_search(a0.node, {"text": "speech", "federated": True})
            (c2,) = [i for i in answer["items"] if i["id"] == "c2"]
            assert c2["sources"].count(a1.peer_id) == 1 and _by_source(answer)[a1.peer_id]["unverified"] == 99
            # Checking is bounded (one peer's 72 copies of a record of 256 changes took 20 s): what is
            # past the budget is counted, not checked.
            lie["kind"] = "honest"
            monkeypatch.setattr(node_search, "MAX_CHECKED_CHANGES", 1)
            answer = await federated_search(a0.node, {"text": "speech", "federated": True})
            assert _by_source(answer)[a1.peer_id]["unchecked"] == 2
