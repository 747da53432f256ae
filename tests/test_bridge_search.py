"""Search through the bridge and the CLI, against a real node: `POST /v1/search`,
`GET /v1/search/fields`, `GET /v1/index`, `POST /v1/index/rebuild`, and
`rgrid search` / `rgrid index` both through a running node's bridge and
offline (node stopped: the command indexes the home's store itself).

Each node here is the real thing (test_bridge_support): `Node.run` with its
`SearchService` component (before the bridge, as `rgrid node start` builds
it) and its bridge on a loopback port; records go in over HTTP, and a test
waits until the index has followed the feed past them (`GET /v1/index`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import trio
from hypothesis import HealthCheck, settings
from test_bridge_support import (
    OTHER,
    REGISTRY,
    UNLIMITED,
    Served,
    ThreadedNode,
    make_token,
    setup_notes,
)

from registrygrid.home import Home
from registrygrid.node.bridge import Bridge, BridgeConfig
from registrygrid.node.bridge.openapi import build_spec, schema_validator
from registrygrid.node.node import Node
from registrygrid.node.search import SearchService
from registrygrid.sdk import LocalRegistry
from registrygrid.search.service import index_path

pytest_plugins = ("test_bridge_support",)

pytestmark = pytest.mark.timeout(120)

# (registry, id, fields, tags): test.notes holds three, test.other one.
NOTES = [
    (REGISTRY, "n1", {"name": "contract summarizer", "description": "summarize legal contracts in german",
                      "region": "eu-west", "price": 0.005}, ["nlp"]),
    (REGISTRY, "n2", {"name": "invoice reader", "description": "extract the totals of invoices",
                      "region": "us-east", "price": 0.02}, ["ocr"]),
    (REGISTRY, "n3", {"name": "speech to text", "description": "transcribe german speech",
                      "region": "eu-north", "price": 0.001}, ["audio"]),
    (OTHER, "o1", {"name": "gpu cluster", "description": "eight gpus for legal contracts in frankfurt",
                   "region": "eu-west", "price": 2.5}, ["gpu"]),
]


# ---------------------------------------------------------------- helpers


async def start_node(nursery: trio.Nursery, home_dir: Path, *, search: bool = True) -> Served:
    """A node with its bridge and, unless told not to, its search component (first, as build_components)."""
    home = Home(home_dir)
    home.init(org_name="test org")
    bridge = Bridge(port=0, config=BridgeConfig(rate_limit=UNLIMITED))
    node = Node(home, [SearchService(), bridge] if search else [bridge])
    await nursery.start(node.run)
    info = json.loads((home.path / "bridge.json").read_text())
    return Served(node, bridge, home, info["url"], info["token"])


@pytest.fixture
async def searching(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Served]:
    """A searching node holding NOTES, indexed."""
    served = await start_node(nursery, tmp_path / "home")
    await setup_notes(served)
    await write_notes(served, NOTES)
    yield served
    served.node.stop()


async def write_notes(served: Served, notes: list[tuple[str, str, dict[str, Any], list[str]]]) -> int:
    """Write ``notes`` over HTTP and wait until the index has them; the last write's feed sequence."""
    last = 0
    async with served.client() as client:
        for registry, record_id, fields, tags in notes:
            r = await client.post(f"/v1/registries/{registry}/records",
                                  json={"kind": "note", "id": record_id, "fields": fields, "tags": tags})
            assert r.status_code == 201, r.text
            last = r.json()["feed_seq"]
        await indexed(client, last)
    return last


async def indexed(client: httpx.AsyncClient, seq: int, timeout: float = 20) -> dict[str, Any]:
    """Poll GET /v1/index until the index has followed the feed to its head, past ``seq``."""
    status: dict[str, Any] = {}
    with trio.move_on_after(timeout):
        while True:
            r = await client.get("/v1/index")
            assert r.status_code == 200, r.text
            status = r.json()
            if status["state"] == "ready" and status["indexed_through"] >= max(seq, status["feed_head"]):
                return status
            await trio.sleep(0.05)
    raise AssertionError(f"the index did not reach feed seq {seq} within {timeout} s (last: {status})")


async def test_an_indexing_pass_that_fails_unexpectedly_is_tried_again_and_the_node_keeps_running(
        nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With every descriptor held by idle clients, usearch raised RuntimeError
    # ("Too many open files") out of the search task, and the node exited.
    from registrygrid.search.index import SearchIndex
    real, failures = SearchIndex.catch_up, []

    def failing_once(self: SearchIndex, *args: Any, **kwargs: Any) -> int:
        if len(failures) < 1 and self.cursor > 0:
            failures.append(1)
            raise RuntimeError("Too many open files")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SearchIndex, "catch_up", failing_once)
    served = await start_node(nursery, tmp_path / "home")
    await setup_notes(served)
    await write_notes(served, NOTES[:1])
    await write_notes(served, NOTES[1:3])  # the first pass over these fails; the next commit retries it
    assert failures == [1]
    async with served.client() as client:
        found = await client.post("/v1/search", json={"text": "invoice"})
    assert found.status_code == 200 and "n2" in [i["record"]["id"] for i in found.json()["items"]]
    served.node.stop()


def rgrid(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    # COLUMNS: wide enough that no table cell folds, so a test reads each fact from one line.
    return subprocess.run([sys.executable, "-m", "registrygrid", *args, "--home", str(home)], check=False,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RGRID_HOME": "", "COLUMNS": "200"})


def assert_valid(schema: str, body: Any) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in schema_validator(schema).iter_errors(body)]
    assert not errors, f"not a {schema}: {errors[:5]}"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert_valid("Error", response.json())
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


async def search(client: httpx.AsyncClient, query: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/v1/search", json=query)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    assert_valid("SearchResult", answer)
    return answer


def ids(answer: dict[str, Any]) -> list[str]:
    return [item["id"] for item in answer["items"]]


# ---------------------------------------------------------------- HTTP


async def test_records_written_over_http_become_searchable_and_text_ranks_the_match_first(searching: Served) -> None:
    with trio.fail_after(30):
        async with searching.client() as client:
            answer = await search(client, {"text": "summarize legal contracts", "explain": True})
            status = (await client.get("/v1/index")).json()
            assert_valid("IndexStatus", status)
    assert ids(answer)[0] == "n1", answer["items"]
    assert "o1" in ids(answer), "the other registry's record about legal contracts matches too, below"
    first = answer["items"][0]
    assert first["record"]["fields"]["name"] == "contract summarizer" and first["registry"] == REGISTRY
    assert first["explain"]["text"] > 0 and first["score"] >= answer["items"][-1]["score"]
    assert "sort_value" not in first, "a relevance answer has scores, not sort values"
    assert answer["indexed_through"] == status["indexed_through"] == status["feed_head"]
    assert status["documents"] >= len(NOTES)


async def test_a_hybrid_query_fuses_words_and_meaning_and_explains_both(searching: Served) -> None:
    with trio.fail_after(30):
        async with searching.client() as client:
            while True:  # the embeddings follow the text index
                status = (await client.get("/v1/index")).json()
                if status["vectors_through"] == status["feed_head"]:
                    break
                await trio.sleep(0.05)
            assert_valid("IndexStatus", status)
            assert status["semantic"] is True
            answer = await search(client, {"text": "condense agreements", "mode": "hybrid", "explain": True})
            semantic = await search(client, {"text": "condense agreements", "mode": "semantic", "limit": 1})
    assert ids(answer) and {"rrf", "vector_rank"} <= set(answer["items"][0]["explain"])
    assert ids(semantic) == ["n1"], "the contract summarizer, which shares no word with the query"


async def test_a_filter_with_facets_answers_in_the_documented_shape(searching: Served) -> None:
    with trio.fail_after(30):
        async with searching.client() as client:
            answer = await search(client, {
                "filter": {"and": [{"field": "region", "prefix": "eu-"}, {"field": "price", "lt": 1},
                                   {"field": "kind", "eq": "note"}]},
                "facets": ["region", "registry", "verified"], "sort": {"field": "price", "order": "asc"}})
    assert ids(answer) == ["n3", "n1"] and answer["total"] == 2
    assert [item["sort_value"] for item in answer["items"]] == [0.001, 0.005]
    assert sorted(answer["facets"]["region"], key=lambda b: b["value"]) == [
        {"value": "eu-north", "count": 1}, {"value": "eu-west", "count": 1}]
    assert answer["facets"]["registry"] == [{"value": REGISTRY, "count": 2}]
    # The node's own org is a member of its (implicit) federation: its records are verified.
    assert answer["facets"]["verified"] == [{"value": True, "count": 2}]
    assert answer["next_cursor"] is None


async def test_pages_of_a_sorted_query_walk_every_record_once_in_order(searching: Served) -> None:
    more = [(REGISTRY, f"p{i:02d}", {"name": f"priced {i}", "price": i % 5}, []) for i in range(23)]
    with trio.fail_after(60):
        await write_notes(searching, more)
        async with searching.client() as client:
            walked: list[tuple[float, str]] = []
            cursor = None
            for _ in range(20):
                answer = await search(client, {"registries": [REGISTRY], "sort": "price", "limit": 4,
                                               **({"cursor": cursor} if cursor else {})})
                assert answer["total"] == 26
                walked += [(item["sort_value"], item["id"]) for item in answer["items"]]
                cursor = answer["next_cursor"]
                if cursor is None:
                    break
    walked_ids = [i for _, i in walked]
    assert len(walked_ids) == len(set(walked_ids)) == 26, "every record of the registry once"
    assert set(walked_ids) == {"n1", "n2", "n3"} | {f"p{i:02d}" for i in range(23)}
    assert [v for v, _ in walked] == sorted(v for v, _ in walked)


@pytest.mark.parametrize("query, path", [
    ({"filter": {"and": [{"field": "kind", "eq": "note"}, {"field": "price", "lt": "cheap"}]}}, "/filter/and/1/lt"),
    ({"filter": {"field": "nope", "eq": 1}}, "/filter/field"),
    ({"facets": ["price"]}, "/facets/0"),
    ({"sort": "tags"}, "/sort"),
    ({"limit": 1000}, "/limit"),
    ({"frobnicate": 1}, "/frobnicate"),
    ({"sort": "price", "cursor": "not-a-cursor"}, "/cursor"),
    ({"boosts": [{"filter": {"field": "region", "eq": "eu-west"}, "factor": 0}]}, "/boosts/0/factor"),
])
async def test_a_malformed_query_is_422_naming_its_bad_part(searching: Served, query: dict[str, Any],
                                                           path: str) -> None:
    with trio.fail_after(30):
        async with searching.client() as client:
            r = await client.post("/v1/search", json=query)
    error = assert_error(r, 422, "validation_failed")
    assert error["details"][0]["path"] == path, error


def _cursor(sort: str, value: Any, key: str) -> str:
    from registrygrid.search.query import Cursor, encode_cursor

    return encode_cursor(Cursor(sort, value, key))


@pytest.mark.parametrize("query", [
    {"filter": {"field": "created_at", "lt": 1e300}},
    {"filter": {"field": "updated_at", "eq": 2**70}},
    {"sort": "price", "cursor": _cursor("price", "abc", "1")},
    {"sort": "price", "cursor": _cursor("price", 1, str(2**70))},
    {"text": "legal", "cursor": _cursor("relevance", "x", "k")},
], ids=["date-lt-1e300", "date-eq-2**70", "cursor-string-value", "cursor-huge-kid", "cursor-relevance-string"])
async def test_an_out_of_range_bound_or_a_forged_cursor_is_refused_not_a_server_error(
        searching: Served, query: dict[str, Any]) -> None:
    with trio.fail_after(30):
        async with searching.client() as client:
            r = await client.post("/v1/search", json=query)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(("query", "status"), [
    ({"filter": {"field": "name", "prefix": "n" * 1000}}, 422),  # past any indexed value (tantivy: 500)
    ({"boosts": [{"filter": {"field": "name", "prefix": "n" * 1000}, "weight": 2}]}, 422),
    ({"filter": {"field": "fields.n", "lt": -1e16}}, 200),  # written -1e+16 for the query parser: a 500
    ({"filter": {"field": "fields.n", "ge": -1e-05}}, 200),
    ({"sort": "price", "cursor": _cursor("price", 1, "\u00b2")}, 422),  # a Unicode digit: int() refused it
], ids=["long-prefix", "long-prefix-boost", "negative-exponent", "small-negative-exponent", "unicode-digit-kid"])
async def test_queries_that_answered_500_are_answered_or_refused_by_name(
        searching: Served, query: dict[str, Any], status: int) -> None:
    with trio.fail_after(30):
        async with searching.client() as client:
            r = await client.post("/v1/search", json=query)
    assert r.status_code == status, r.text


async def test_a_body_that_is_no_json_object_is_refused_before_the_parser(searching: Served) -> None:
    with trio.fail_after(30):
        async with searching.client() as client:
            not_object = await client.post("/v1/search", json=["text", "legal"])
            not_json = await client.post("/v1/search", content=b"{", headers={"Content-Type": "application/json"})
            empty = await client.post("/v1/search")
    assert_error(not_object, 422, "validation_failed")
    assert_error(not_json, 400, "malformed_input")
    assert_error(empty, 400, "malformed_input")


async def test_a_token_scoped_to_one_registry_never_sees_another_registrys_records(searching: Served) -> None:
    with trio.fail_after(30):
        scoped = await make_token(searching, "reader", registry=REGISTRY)
        async with searching.client(scoped) as client:
            everything = await search(client, {"limit": 100, "facets": ["registry"]})
            text = await search(client, {"text": "gpu cluster legal contracts frankfurt"})
            by_filter = await search(client, {"filter": {"field": "registry", "eq": OTHER}})
            named = await client.post("/v1/search", json={"registries": [OTHER]})
            both = await client.post("/v1/search", json={"registries": [REGISTRY, OTHER]})
            own = await search(client, {"registries": [REGISTRY], "text": "german"})
        async with searching.client() as admin:
            unscoped = await search(admin, {"text": "gpu cluster legal contracts frankfurt"})
    assert {item["registry"] for item in everything["items"]} == {REGISTRY}
    assert set(ids(everything)) == {"n1", "n2", "n3"} and everything["total"] == 3
    assert everything["facets"]["registry"] == [{"value": REGISTRY, "count": 3}], "no counts of other registries"
    assert "o1" not in ids(text) and all(item["registry"] == REGISTRY for item in text["items"])
    assert by_filter["items"] == [] and by_filter["total"] == 0
    assert_error(named, 403, "policy_denied")
    assert_error(both, 403, "policy_denied")
    assert set(ids(own)) == {"n1", "n3"}
    assert ids(unscoped)[0] == "o1", "an unscoped token sees it: the scope, not the query, hid it"


async def test_fields_are_listed_for_any_reader(searching: Served) -> None:
    with trio.fail_after(30):
        reader = await make_token(searching, "reader")
        async with searching.client(reader) as client:
            r = await client.get("/v1/search/fields")
    assert r.status_code == 200, r.text
    assert_valid("SearchFields", r.json())
    by_name = {f["field"]: f for f in r.json()["fields"]}
    assert by_name["price"]["sortable"] and "lt" in by_name["price"]["operators"]
    assert by_name["region"]["facetable"] and "fields.<path>" in by_name


async def test_rebuilding_the_index_needs_an_admin_and_reports_its_counts(searching: Served) -> None:
    with trio.fail_after(60):
        reader = await make_token(searching, "reader")
        writer = await make_token(searching, "writer")
        async with searching.client() as admin, searching.client(reader) as rc, searching.client(writer) as wc:
            before = (await admin.get("/v1/index")).json()
            assert_error(await rc.post("/v1/index/rebuild"), 403, "policy_denied")
            assert_error(await wc.post("/v1/index/rebuild"), 403, "policy_denied")
            r = await admin.post("/v1/index/rebuild")
            assert r.status_code == 200, r.text
            rebuilt = r.json()
            assert_valid("IndexRebuild", rebuilt)
            after = await search(admin, {"text": "summarize legal contracts"})
            audited = False
            for _ in range(100):  # the flusher writes audit notes in batches, every ~200 ms
                entries = (await admin.get("/v1/audit", params={"limit": 10000})).json()["entries"]
                audited = any(e["target"] == "index" and "rebuilt" in e["reason"] for e in entries)
                if audited:
                    break
                await trio.sleep(0.05)
    assert audited, "the rebuild is in the audit ledger"
    assert rebuilt["documents"] == before["documents"] and rebuilt["indexed_through"] == before["feed_head"]
    assert rebuilt["events"] == before["feed_head"], "every event of the feed was read again"
    assert ids(after)[0] == "n1"


async def test_the_audit_notes_of_listings_and_searches_keep_no_value_they_compare_with(searching: Served) -> None:
    # The ledger is never scrubbed, and it kept the query string and the
    # search body whole: an email looked up stayed in it for good.
    secret = "victim.person@private.example"
    with trio.fail_after(60):
        async with searching.client() as client:
            listed = await client.get(f"/v1/registries/{REGISTRY}/records",
                                      params={"where": f"email:eq:{secret}", "tag": "secret-tag", "limit": 5})
            assert listed.status_code == 200, listed.text
            found = await search(client, {"text": f"{secret} phone-5551234", "filter": {
                "and": [{"field": "fields.email", "eq": secret}, {"field": "region", "in": ["eu-west"]}]}})
            assert found["total"] == 0
            listing_note = "list where=email:eq tag limit=5"
            search_note = "search text of 2 words filter fields.email:eq,region:in"
            notes: list[str] = []
            # The flusher writes audit notes in batches, every ~200 ms; other
            # tests of this module leave "search index status" notes, so wait
            # for the two notes themselves, not for any two.
            for _ in range(200):
                entries = (await client.get("/v1/audit", params={"limit": 10000})).json()["entries"]
                notes = [e["reason"] for e in entries if e["action"] == "read"
                         and (e["reason"].startswith("list ") or e["reason"].startswith("search "))]
                if listing_note in notes and search_note in notes:
                    break
                await trio.sleep(0.05)
    assert listing_note in notes
    assert search_note in notes
    assert not [n for n in notes if "private" in n or "5551234" in n or "secret-tag" in n]


async def test_a_node_without_search_answers_503_naming_no_search(nursery: trio.Nursery, tmp_path: Path) -> None:
    served = await start_node(nursery, tmp_path / "home", search=False)
    try:
        with trio.fail_after(30):
            async with served.client() as client:
                found = await client.post("/v1/search", json={"text": "anything"})
                status = await client.get("/v1/index")
                rebuilt = await client.post("/v1/index/rebuild")
                fields = await client.get("/v1/search/fields")
    finally:
        served.node.stop()
    for response in (found, status, rebuilt):
        assert "--no-search" in assert_error(response, 503, "disabled")["message"]
    assert fields.status_code == 200, "the fields are the language's, not the index's"


# ---------------------------------------------------------------- CLI through a running node


async def test_rgrid_search_goes_through_the_running_nodes_bridge(searching: Served) -> None:
    home = searching.home.path

    def run(*args: str) -> Any:
        return trio.to_thread.run_sync(partial(rgrid, *args, home=home))

    with trio.fail_after(90):
        ranked = await run("search", "summarize legal contracts", "--json")
        where = await run("search", "--where", "region:in:eu-west,eu-north", "--where", "price:lt:1",
                          "--facet", "region", "--sort", "price:desc", "--json")
        in_one = await run("search", "german", "--registry", REGISTRY, "--json")
        table = await run("search", "legal", "--explain", "--limit", "1")
        bad = await run("search", "--where", "price:lt:cheap")
        status = await run("index", "status", "--json")
        rebuilt = await run("index", "rebuild", "--json")
    assert ranked.returncode == 0, ranked.stderr
    assert json.loads(ranked.stdout)["items"][0]["id"] == "n1"
    assert where.returncode == 0, where.stderr
    assert [i["id"] for i in json.loads(where.stdout)["items"]] == ["n1", "n3"]
    assert {b["value"] for b in json.loads(where.stdout)["facets"]["region"]} == {"eu-west", "eu-north"}
    assert {i["id"] for i in json.loads(in_one.stdout)["items"]} == {"n1", "n3"}
    assert table.returncode == 0, table.stderr
    assert "n1" in table.stdout and "contract summarizer" in table.stdout and "freshness" in table.stdout
    assert "more: --cursor " in table.stdout, "a second page exists: o1 matches legal too"
    assert bad.returncode == 65 and "/filter/lt" in bad.stderr, bad.stderr
    assert json.loads(status.stdout)["state"] == "ready"
    assert json.loads(rebuilt.stdout)["documents"] == json.loads(status.stdout)["documents"]


async def test_a_federated_query_over_http_and_the_cli_reports_its_sources(searching: Served) -> None:
    """A node without a federation answers a federated query from its own
    index alone and says so; the CLI shows where each hit came from.
    (Peers answering: tests/test_federated_search.py.)"""
    home = searching.home.path
    with trio.fail_after(60):
        async with searching.client() as client:
            answer = await search(client, {"text": "legal contracts", "federated": {"deadline_ms": 500}})
            paged = await client.post("/v1/search", json={"federated": True, "cursor": "x"})
        table = await trio.to_thread.run_sync(partial(rgrid, "search", "legal", "--federated", home=home))
    assert answer["sources"] == [{"source": "local", "kind": "local", "status": "ok", "hits": len(answer["items"]),
                                  "total": answer["total"]}]
    assert answer["items"] and all(i["sources"] == ["local"] and i["record_from"] == "local"
                                   for i in answer["items"])
    assert answer["next_cursor"] is None
    assert assert_error(paged, 422, "validation_failed")["details"][0]["path"] == "/cursor"
    assert table.returncode == 0, table.stderr
    assert "local: local, ok" in table.stdout and "contract summarizer" in table.stdout


# ---------------------------------------------------------------- CLI offline


def test_rgrid_search_offline_indexes_the_store_then_answers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert rgrid("init", home=home).returncode == 0
    with LocalRegistry.open_home(Home(home)) as registry:
        registry.create_registry(REGISTRY, ["tool"])
        registry.put(REGISTRY, "tool", {"name": "contract summarizer", "description": "summarize legal contracts",
                                        "price": 0.005}, id="t1")
        registry.put(REGISTRY, "tool", {"name": "speech to text", "price": 0.001}, id="t2")
        head = registry.feed_head()
    assert not index_path(home).exists()

    found = rgrid("search", "legal contracts", "--json", home=home)
    assert found.returncode == 0, found.stderr
    answer = json.loads(found.stdout)
    assert answer["items"][0]["id"] == "t1" and answer["indexed_through"] == head
    assert index_path(home).exists(), "the offline search built the home's index"

    with LocalRegistry.open_home(Home(home)) as registry:
        registry.put(REGISTRY, "tool", {"name": "legal contract reviewer", "price": 0.01}, id="t3")
        head = registry.feed_head()
    sorted_ = json.loads(rgrid("search", "--registry", REGISTRY, "--sort", "price", "--json", home=home).stdout)
    assert [i["id"] for i in sorted_["items"]] == ["t2", "t1", "t3"], "caught up with the new record first"
    assert sorted_["indexed_through"] == head

    status = json.loads(rgrid("index", "status", "--json", home=home).stdout)
    assert status == {"state": "offline", "documents": status["documents"], "indexed_through": head,
                      "feed_head": head}
    rebuilt = rgrid("index", "rebuild", "--json", home=home)
    assert rebuilt.returncode == 0, rebuilt.stderr
    report = json.loads(rebuilt.stdout)
    assert report["events"] == head and report["indexed_through"] == head
    assert report["documents"] == status["documents"]

    table = rgrid("search", "--fields", home=home)
    assert table.returncode == 0 and "price" in table.stdout and "facetable" in table.stdout
    fields = json.loads(rgrid("search", "--fields", "--json", home=home).stdout)
    assert {f["field"] for f in fields} >= {"price", "region", "fields.<path>"}

    refused = rgrid("search", "--filter", '{"or": []}', home=home)
    assert refused.returncode == 65 and "/filter/or" in refused.stderr


def test_rgrid_search_federated_needs_a_running_node(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert rgrid("init", home=home).returncode == 0
    refused = rgrid("search", "legal", "--federated", home=home)
    assert refused.returncode == 75 and "start the node" in refused.stderr, refused.stderr  # EX_TEMPFAIL


def test_rgrid_search_flags_refine_a_whole_query(tmp_path: Path) -> None:
    from registrygrid.cli.main import search_body

    base = {"text": "legal", "filter": {"field": "kind", "eq": "tool"}, "weights": {"text": 2}, "limit": 5}
    file = tmp_path / "query.json"
    file.write_text(json.dumps(base))
    body = search_body(text=None, query=f"@{file}", wheres=["tags:in:gpu,nlp", "fields.license:exists"],
                       filter_text='{"not": {"field": "region", "eq": "us-east"}}', registries=["a.b"],
                       sort="price:asc", facets=["region"], limit=None, cursor=None, explain=True,
                       weights=["trust=0.5"], boosts=['{"filter": {"field": "verified", "eq": true}, "factor": 2}'])
    assert body == {
        "text": "legal", "limit": 5, "registries": ["a.b"], "sort": {"field": "price", "order": "asc"},
        "facets": ["region"], "explain": True, "weights": {"text": 2, "trust": 0.5},
        "boosts": [{"filter": {"field": "verified", "eq": True}, "factor": 2}],
        "filter": {"and": [{"field": "kind", "eq": "tool"}, {"not": {"field": "region", "eq": "us-east"}},
                           {"field": "tags", "in": ["gpu", "nlp"]}, {"field": "fields.license", "exists": True}]}}


# ---------------------------------------------------------------- fuzzing the search operation

SEARCH_SCHEMA = schemathesis.openapi.from_dict(build_spec()).include(path_regex="^/v1/(search|index)")


class SearchingThreadedNode(ThreadedNode):
    """ThreadedNode (its own thread and trio.run), with the search component."""

    def _main(self) -> None:
        async def run() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self.served = await start_node(nursery, self.home_dir)
                await setup_notes(self.served)
                await write_notes(self.served, NOTES)
                self._ready.set()

        try:
            trio.run(run)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread, as ThreadedNode does
            self._error = exc
            self._ready.set()


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with SearchingThreadedNode(Path(tmp_path_factory.mktemp("fuzz-search")) / "home") as served:
        yield served


@SEARCH_SCHEMA.parametrize()
@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_fuzzing_the_search_operations_never_gets_a_server_error(case: Any, fuzz_target: Served) -> None:
    headers = {**(case.headers or {}), **fuzz_target.headers()}
    headers.pop("Accept", None)
    response = case.call(base_url=fuzz_target.url, headers=headers, timeout=15)
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.status_code,
                                        response.text[:500])
