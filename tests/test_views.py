"""Saved views (search/views.py) on a real node: `/v1/views`, its SSE stream,
and `rgrid view`.

Each node is the real thing (test_bridge_support, test_bridge_search's
``start_node`` shape): ``Node.run`` with its ``SearchService`` and its bridge
on a loopback port, LMDB and tantivy in a temporary home. Records go in over
HTTP; a test waits until a view reflects the feed past its writes
(``view.through``). A fresh run of a view's query is ``POST /v1/search``,
page after page."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from test_bridge_support import (
    OTHER,
    REGISTRY,
    UNLIMITED,
    Served,
    make_token,
    setup_notes,
)

from registrygrid.home import Home
from registrygrid.node.bridge import Bridge, BridgeConfig
from registrygrid.node.bridge.openapi import schema_validator
from registrygrid.node.node import Node
from registrygrid.node.search import SearchService
from registrygrid.sdk import LocalRegistry
from registrygrid.search import query as q
from registrygrid.search import views as saved_views
from registrygrid.search.index import SearchIndex
from registrygrid.search.service import index_path, verifier

pytest_plugins = ("test_bridge_support",)

pytestmark = pytest.mark.timeout(120)

WORDS = ["gpu", "cluster", "legal", "contracts", "speech", "invoice", "frankfurt", "summarize"]
REGIONS = ["eu-west", "eu-north", "us-east"]
# Three orders: a field (price, ascending), relevance (BM25) and the default (updated_at, newest first).
CHEAP_EU = {"filter": {"and": [{"field": "price", "lt": 5}, {"field": "region", "prefix": "eu-"}]},
            "sort": {"field": "price", "order": "asc"}}
GPU_TEXT = {"text": "gpu cluster", "registries": [REGISTRY]}
HOT = {"filter": {"field": "tags", "eq": "hot"}}


# ---------------------------------------------------------------- helpers


async def start(nursery: trio.Nursery, home_dir: Path) -> Served:
    """A searching node on ``home_dir`` (made at the first start), as `rgrid node start` builds it."""
    home = Home(home_dir)
    if not home.exists():
        home.init(org_name="test org")
    bridge = Bridge(port=0, config=BridgeConfig(rate_limit=UNLIMITED))
    node = Node(home, [SearchService(), bridge])
    await nursery.start(node.run)
    info = json.loads((home.path / "bridge.json").read_text())
    return Served(node, bridge, home, info["url"], info["token"])


@pytest.fixture
async def node(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Served]:
    served = await start(nursery, tmp_path / "home")
    await setup_notes(served)
    yield served
    served.node.stop()


async def put_view(client: httpx.AsyncClient, name: str, query: dict[str, Any], **extra: Any) -> int:
    r = await client.put(f"/v1/views/{name}", json={"query": query, **extra})
    assert r.status_code in (200, 201), r.text
    return int(r.json()["feed_seq"])


async def write(client: httpx.AsyncClient, method: str, registry: str, record_id: str,
                fields: dict[str, Any] | None = None, tags: list[str] | None = None) -> int:
    """A record written over HTTP; its feed sequence."""
    rec = f"/v1/registries/{registry}/records"
    if method == "create":
        r = await client.post(rec, json={"kind": "note", "id": record_id, "fields": fields, "tags": tags or []})
    elif method == "update":
        r = await client.put(f"{rec}/{record_id}", json={"fields": fields, "tags": tags or []})
    else:
        r = await client.delete(f"{rec}/{record_id}")
    assert r.status_code in (200, 201), r.text
    return int(r.json()["feed_seq"])


async def reflected(client: httpx.AsyncClient, name: str, seq: int, timeout: float = 20) -> dict[str, Any]:
    """Poll GET /v1/views/{name} (every member) until the view is
    materialized through feed ``seq``; its answer."""
    answer: dict[str, Any] = {}
    with trio.move_on_after(timeout):
        while True:
            r = await client.get(f"/v1/views/{name}", params={"limit": saved_views.MAX_MEMBERS})
            assert r.status_code == 200, r.text
            answer = r.json()
            view = answer["view"]
            if view["materialized"] and view["through"] >= seq:
                return answer
            await trio.sleep(0.05)
    raise AssertionError(f"view {name} did not reflect feed seq {seq} within {timeout} s (last: {answer})")


async def fresh(client: httpx.AsyncClient, query: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Every match of ``query`` from the search index now, page after page, in its order."""
    out: list[tuple[str, str, Any]] = []
    cursor = None
    while True:
        body = {**query, "limit": 100, **({"cursor": cursor} if cursor else {})}
        r = await client.post("/v1/search", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        out += [(i["registry"], i["id"], i.get("sort_value")) for i in answer["items"]]
        cursor = answer["next_cursor"]
        if cursor is None:
            return out


def assert_valid(schema: str, body: Any) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in schema_validator(schema).iter_errors(body)]
    assert not errors, f"not a {schema}: {errors[:5]}"


def members(answer: dict[str, Any]) -> list[tuple[str, str, Any]]:
    return [(i["registry"], i["id"], i["sort_value"]) for i in answer["items"]]


def replay(start: set[tuple[str, str]], events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """A member set moved by a view's events (added joins, removed leaves)."""
    out = set(start)
    for e in events:
        if e["type"] == "added":
            assert (e["registry"], e["id"]) not in out, f"added twice: {e}"
            out.add((e["registry"], e["id"]))
        elif e["type"] == "removed":
            assert (e["registry"], e["id"]) in out, f"removed a non-member: {e}"
            out.discard((e["registry"], e["id"]))
        else:
            assert e["type"] == "updated" and (e["registry"], e["id"]) in out, e
    return out


async def random_writes(client: httpx.AsyncClient, rnd: random.Random, n: int, live: dict[tuple[str, str], int],
                        prefix: str = "r") -> int:
    """``n`` random creates, updates and deletes of 24 records over two
    registries; the last feed sequence. ``live`` tracks which exist."""
    last = 0
    for _ in range(n):
        key = (rnd.choice([REGISTRY, REGISTRY, OTHER]), f"{prefix}{rnd.randrange(24):02d}")
        fields = {"name": " ".join(rnd.sample(WORDS, 2)), "region": rnd.choice(REGIONS)}
        if rnd.random() < 0.8:
            fields["price"] = rnd.randrange(10)
        tags = ["hot"] if rnd.random() < 0.4 else []
        if key in live and rnd.random() < 0.25:
            last = await write(client, "delete", *key)
            del live[key]
        else:
            last = await write(client, "update" if key in live else "create", *key, fields=fields, tags=tags)
            live[key] = last
    return last


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    # COLUMNS: wide enough that no table cell folds, so a test reads each fact from one line.
    return subprocess.run([sys.executable, "-m", "registrygrid", *args, "--home", str(home)], check=False,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RGRID_HOME": "", "COLUMNS": "200"})


async def next_frame(lines: AsyncIterator[str]) -> dict[str, Any]:
    """The next SSE event of a stream (comments and retry lines skipped)."""
    frame: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if "event" in frame:
                return {"id": frame.get("id"), "event": frame["event"], "data": json.loads(frame["data"])}
            frame = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            frame[key] = value
    raise AssertionError("the stream ended")


# ---------------------------------------------------------------- materialized == a fresh run


async def test_after_random_writes_each_view_holds_exactly_what_a_fresh_run_of_its_query_finds(node: Served) -> None:
    rnd = random.Random(18)
    live: dict[tuple[str, str], int] = {}
    with trio.fail_after(60):
        async with node.client() as client:
            await random_writes(client, rnd, 20, live)
            seq = 0
            for name, query in (("cheap-eu", CHEAP_EU), ("gpu-text", GPU_TEXT), ("hot", HOT)):
                seq = await put_view(client, name, query)
            starts = {}
            for name in ("cheap-eu", "gpu-text", "hot"):
                await reflected(client, name, seq)
                r = await client.get(f"/v1/views/{name}/events")  # no after: the whole list, and where it stands
                starts[name] = r.json()
                assert starts[name]["events"] == [] and starts[name]["reset"] is not None
            last = await random_writes(client, rnd, 60, live)
            for name, query in (("cheap-eu", CHEAP_EU), ("gpu-text", GPU_TEXT), ("hot", HOT)):
                answer = await reflected(client, name, last)
                found = await fresh(client, query)
                if name == "gpu-text":  # relevance: the same records (a live search reranks by freshness and trust)
                    assert {m[:2] for m in members(answer)} == {f[:2] for f in found}
                else:  # a field order: the same records in the same order, with the same values
                    assert members(answer) == found
                assert answer["total"] == len(found) == answer["view"]["members"]
                # The events since the start, replayed on the list then, give the list now.
                r = await client.get(f"/v1/views/{name}/events", params={"after": starts[name]["last_id"]})
                changes = r.json()
                assert_valid("ViewPage", answer)
                assert_valid("ViewChanges", changes)
                assert changes["reset"] is None and changes["events"]
                assert [e["seq"] for e in changes["events"]] == sorted(e["seq"] for e in changes["events"])
                start_set = {(m["registry"], m["id"]) for m in starts[name]["reset"]["members"]}
                assert replay(start_set, changes["events"]) == {m[:2] for m in members(answer)}
            assert any(m for m in members(answer))  # the random writes left something to compare
            listed = (await client.get("/v1/views")).json()
            assert_valid("Views", listed)
            assert [v["name"] for v in listed["views"]] == ["cheap-eu", "gpu-text", "hot"]


# ---------------------------------------------------------------- the SSE stream


async def test_sse_delivers_added_then_removed_for_a_record_that_starts_then_stops_matching(node: Served) -> None:
    headers = {"Accept": "text/event-stream"}
    with trio.fail_after(40):
        async with node.client() as client:
            seq = await write(client, "create", REGISTRY, "n1", {"name": "contract summarizer", "region": "eu-west"})
            seq = await put_view(client, "eu-west", {"filter": {"field": "region", "eq": "eu-west"}})
            await reflected(client, "eu-west", seq)
            async with client.stream("GET", "/v1/views/eu-west/events", headers=headers) as stream:
                assert stream.headers["Content-Type"].startswith("text/event-stream")
                lines = stream.aiter_lines()
                reset = await next_frame(lines)
                assert reset["event"] == "reset"
                assert [(m["registry"], m["id"]) for m in reset["data"]["members"]] == [(REGISTRY, "n1")]
                joined = await write(client, "create", REGISTRY, "s1", {"name": "speech", "region": "eu-west"})
                added = await next_frame(lines)
                left = await write(client, "update", REGISTRY, "s1", {"name": "speech", "region": "us-east"})
                removed = await next_frame(lines)
            assert (added["event"], added["data"]) == ("added", {"registry": REGISTRY, "id": "s1", "seq": joined})
            assert (removed["event"], removed["data"]) == ("removed", {"registry": REGISTRY, "id": "s1", "seq": left})
            generation, _, number = removed["id"].partition(".")
            assert added["id"] == f"{generation}.{int(number) - 1}"

            # Resuming after the added event gives the removal, with no reset; an id of no generation
            # this node knows (or none at all) gives the whole list again.
            async with client.stream("GET", "/v1/views/eu-west/events",
                                     headers={**headers, "Last-Event-ID": added["id"]}) as stream:
                lines = stream.aiter_lines()
                again = await next_frame(lines)
                assert (again["event"], again["id"], again["data"]) == ("removed", removed["id"], removed["data"])
                # The view is deleted while a client follows it: the stream says so and ends.
                r = await client.delete("/v1/views/eu-west")
                assert r.status_code == 200, r.text
                assert (await next_frame(lines))["event"] == "deleted"
            seq = await put_view(client, "eu-west", {"filter": {"field": "region", "eq": "eu-west"}})
            await reflected(client, "eu-west", seq)
            r = await client.get("/v1/views/eu-west/events", params={"after": removed["id"]})
            assert r.json()["reset"]["members"][0]["id"] == "n1"  # a new generation: the list, not old events
            assert r.json()["last_id"].partition(".")[0] != generation


# ---------------------------------------------------------------- refusals


async def test_forged_page_cursors_are_refused_and_unknown_event_ids_get_the_whole_list(node: Served) -> None:
    with trio.fail_after(30):
        async with node.client() as client:
            seq = await write(client, "create", REGISTRY, "c1", {"name": "x", "price": 1})
            seq = await put_view(client, "priced", {"filter": {"field": "price", "exists": True}, "sort": "price"})
            await reflected(client, "priced", seq)
            # The last nests deeper than Python's JSON parser follows: a 500 before.
            deep = base64.urlsafe_b64encode(("[" * 1500 + "]" * 1500).encode()).decode().rstrip("=")
            for cursor in ("%%%", "bm90IGpzb24", "WyJhIiwgMV0", "WzEsIDIsIDNd", "x" * 2000, deep):
                r = await client.get("/v1/views/priced", params={"cursor": cursor})
                assert r.status_code == 422, (cursor, r.text)
            generation = (await client.get("/v1/views/priced/events")).json()["last_id"].partition(".")[0]
            # A digit to str.isdigit(), not to int(): a 500 before.
            for after in ("", "nope", "x.y", "00000000.99999999999999999999", "." * 64, f"{generation}.²",
                          f"{generation}.①"):
                r = await client.get("/v1/views/priced/events", params={"after": after})
                assert r.status_code == 200 and r.json()["reset"]["members"][0]["id"] == "c1", (after, r.text)
            r = await client.get("/v1/views/priced/events", params={"after": "x" * 65})
            assert r.status_code == 422
            for missing in ("/v1/views/none", "/v1/views/none/events"):
                assert (await client.get(missing)).status_code == 404


@pytest.mark.parametrize(("query", "path"), [
    ({"filter": {"and": [{"field": "price", "lt": 1}, {"field": "price", "lt": "x"}]}}, "/query/filter/and/1/lt"),
    ({"filter": {"field": "colour", "eq": "red"}}, "/query/filter/field"),
    ({"text": "gpu", "cursor": "abc"}, "/query/cursor"),
    ({"text": "gpu", "mode": "semantic"}, "/query/mode"),
    ({"sort": "tags"}, "/query/sort"),
])
async def test_a_view_with_a_bad_query_is_refused_naming_its_json_pointer_and_nothing_is_written(
        node: Served, query: dict[str, Any], path: str) -> None:
    with trio.fail_after(30):
        async with node.client() as client:
            r = await client.put("/v1/views/bad", json={"query": query})
            # The bridge's ValidationError status: 422 (400 is for bodies that are no JSON at all).
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["code"] == "validation_failed"
            assert error["details"][0]["path"] == path
            assert (await client.get("/v1/views")).json()["views"] == []
            assert (await client.get("/v1/registries/grid.views/records/bad")).status_code == 404


async def test_a_view_whose_query_arrived_invalid_shows_its_error_and_the_other_views_go_on(node: Served) -> None:
    with trio.fail_after(30):
        async with node.client() as client:
            # Written as a plain record (as a peer's change would arrive): only the schema judged it.
            r = await client.post("/v1/registries/grid.views/records", json={
                "kind": "view", "id": "broken", "fields": {"name": "broken", "query": {"filter": {"not": []}}}})
            assert r.status_code == 201, r.text
            seq = await put_view(client, "fine", {"filter": {"field": "region", "eq": "eu-west"}})
            seq = await write(client, "create", REGISTRY, "e1", {"name": "x", "region": "eu-west"})
            assert [i["id"] for i in (await reflected(client, "fine", seq))["items"]] == ["e1"]
            r = await client.get("/v1/views/broken")
            assert r.status_code == 200, r.text
            assert_valid("ViewPage", r.json())
            assert r.json()["items"] == [] and r.json()["view"]["materialized"] is False
            assert r.json()["view"]["error"]["path"] == "/query/filter/not"
            assert (await client.get("/v1/views/broken/events")).status_code == 409
            listed = {v["name"]: v for v in (await client.get("/v1/views")).json()["views"]}
            assert listed["broken"]["error"]["path"] == "/query/filter/not" and listed["fine"]["members"] == 1


async def test_a_reader_cannot_write_views_and_a_scoped_token_sees_its_registry_only(node: Served) -> None:
    with trio.fail_after(30):
        reader = await make_token(node, "reader")
        scoped = await make_token(node, "reader", registry=OTHER)
        async with node.client() as client, node.client(reader) as rc, node.client(scoped) as sc:
            await write(client, "create", REGISTRY, "a", {"name": "a", "region": "eu-west"})
            seq = await write(client, "create", OTHER, "b", {"name": "b", "region": "eu-west"})
            assert (await rc.put("/v1/views/v", json={"query": {}})).status_code == 403
            seq = max(seq, await put_view(client, "v", {"filter": {"field": "region", "eq": "eu-west"}}))
            assert {i["id"] for i in (await reflected(client, "v", seq))["items"]} == {"a", "b"}
            r = await sc.get("/v1/views/v")
            assert [(i["registry"], i["id"]) for i in r.json()["items"]] == [(OTHER, "b")]
            # Its member count too: it said 2, one of them in a registry it cannot read.
            assert r.json()["view"]["members"] == 1 and r.json()["total"] == 1
            listed = {v["name"]: v for v in (await sc.get("/v1/views")).json()["views"]}
            assert listed["v"]["members"] == 1
            assert {v["name"]: v for v in (await rc.get("/v1/views")).json()["views"]}["v"]["members"] == 2
            # Its events too: before, they named every registry's members and changes.
            events = (await sc.get("/v1/views/v/events")).json()
            assert [(m["registry"], m["id"]) for m in events["reset"]["members"]] == [(OTHER, "b")]
            seq = await write(client, "create", REGISTRY, "c", {"name": "c", "region": "eu-west"})
            seq = await write(client, "create", OTHER, "d", {"name": "d", "region": "eu-west"})
            await reflected(client, "v", seq)
            later = (await sc.get("/v1/views/v/events", params={"after": events["last_id"]})).json()
            assert [(e["registry"], e["id"]) for e in later["events"]] == [(OTHER, "d")], later


# ---------------------------------------------------------------- restart


async def test_a_restart_resumes_from_the_stored_state_without_duplicates_or_losses(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rnd = random.Random(7)
    live: dict[tuple[str, str], int] = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            served = await start(nursery, home)
            await setup_notes(served)
            async with served.client() as client:
                seq = await put_view(client, "cheap-eu", CHEAP_EU)
                seq = max(seq, await random_writes(client, rnd, 30, live))
                before = await reflected(client, "cheap-eu", seq)
                mark = (await client.get("/v1/views/cheap-eu/events")).json()["last_id"]
            served.node.stop()
        state = json.loads(next((home / "index" / "views").glob("cheap-eu*.json")).read_text())
        # Saved with its last event (or every SAVE_EVERY): a last write that
        # moved no member leaves the saved cursor before it (this asserted
        # >= seq, and failed when that write's pass ran alone).
        assert 0 < state["cursor"] <= seq and len(state["members"]) == before["total"]

        # While the node is stopped the store takes more writes (the CLI's way: it opens the store itself).
        changed: list[tuple[str, str, str]] = []
        with LocalRegistry.open_home(Home(home)) as registry:
            for i in range(12):
                key = (REGISTRY, f"r{i:02d}")
                fields = {"name": "offline", "region": "eu-west" if i % 2 else "us-east", "price": i % 7}
                if key in live:
                    registry.update(*key, fields=fields)
                else:
                    registry.put(REGISTRY, "note", fields, id=key[1])
                changed.append(key)
            head = registry.feed_head()

        async with trio.open_nursery() as nursery:
            served = await start(nursery, home)
            async with served.client() as client:
                after = await reflected(client, "cheap-eu", head)
                assert members(after) == await fresh(client, CHEAP_EU)
                r = await client.get("/v1/views/cheap-eu/events", params={"after": mark})
                changes = r.json()
                # The stored state's generation goes on: the client's mark is still good, and what it is
                # told is exactly what the offline writes did to the view, each once.
                assert changes["reset"] is None and changes["events"]
                old = {m[:2] for m in members(before)}
                assert replay(old, changes["events"]) == {m[:2] for m in members(after)}
                touched = [(e["registry"], e["id"]) for e in changes["events"]]
                assert len(touched) == len(set(touched)) and set(touched) <= set(changed)
                assert all(e["seq"] > seq for e in changes["events"])
            served.node.stop()


# ---------------------------------------------------------------- limits, on the views alone


def test_a_node_materializes_its_orgs_oldest_views_only() -> None:
    def view(name: str, owner: str, created_at: int) -> saved_views.Definition:
        return saved_views.Definition.of({"id": name, "owner": owner, "created_at": created_at,
                                          "fields": {"name": name, "query": {}}})

    mine = [view(f"v{i:03d}", "did:key:us", 1000 - i) for i in range(saved_views.MAX_MATERIALIZED + 6)]
    theirs = [view("theirs", "did:key:them", 0)]
    kept = saved_views.materialized_set(mine + theirs, "did:key:us")
    assert len(kept) == saved_views.MAX_MATERIALIZED
    assert [d.name for d in kept] == [d.name for d in sorted(mine, key=lambda d: d.created_at)][:len(kept)]
    assert saved_views.materialized_set(mine, None) == []


def test_a_view_with_more_matches_than_it_keeps_holds_the_first_in_order_and_refills(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(saved_views, "MAX_MEMBERS", 5)
    home = Home(tmp_path / "home")
    home.init(org_name="test org")
    with LocalRegistry.open_home(home) as registry:
        index = SearchIndex(index_path(home.path))
        views = saved_views.Views(index_path(home.path) / "views", index, registry, lambda: registry.engine.owner)

        def refresh() -> None:
            index.catch_up(registry, org_verified=verifier(registry.engine), local_org=registry.engine.owner)
            views.refresh()

        query = {"filter": {"field": "fields.n", "exists": True}, "sort": {"field": "price", "order": "asc"}}
        registry.put(saved_views.VIEWS_REGISTRY, saved_views.VIEW_KIND, saved_views.view_fields("cheap", query),
                     id="cheap")
        for i in range(8):
            registry.put("grid.tools", "tool", {"name": f"t{i}", "n": i, "price": float(i)}, id=f"t{i}")
        refresh()

        def kept() -> list[str]:
            return [i["id"] for i in views.show("cheap", limit=100)["items"]]

        assert kept() == ["t0", "t1", "t2", "t3", "t4"] and views.list()[0]["truncated"]
        mark = views.changes("cheap", None)["last_id"]
        registry.put("grid.tools", "tool", {"name": "cheapest", "n": 9, "price": 0.5}, id="c")  # joins, t4 drops
        registry.delete("grid.tools", "t1")  # leaves: t4 comes back
        refresh()
        assert kept() == ["t0", "c", "t2", "t3", "t4"]
        events = views.changes("cheap", mark)["events"]
        assert [(e["type"], e["id"]) for e in events] == [("added", "c"), ("removed", "t1")]
        # Pages walk the members once, in order.
        first = views.show("cheap", limit=2)
        rest = views.show("cheap", limit=10, cursor=first["next_cursor"])
        assert [i["id"] for i in first["items"] + rest["items"]] == kept() and rest["next_cursor"] is None


def test_a_view_beyond_what_the_node_keeps_is_answered_live_and_has_no_changes_to_follow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from registrygrid.errors import Conflict

    monkeypatch.setattr(saved_views, "MAX_MATERIALIZED", 1)
    home = Home(tmp_path / "home")
    home.init(org_name="test org")
    with LocalRegistry.open_home(home) as registry:
        index = SearchIndex(index_path(home.path))
        views = saved_views.Views(index_path(home.path) / "views", index, registry, lambda: registry.engine.owner)
        for name in ("first", "second"):  # the older one is kept
            registry.put(saved_views.VIEWS_REGISTRY, saved_views.VIEW_KIND,
                         saved_views.view_fields(name, {"filter": {"field": "kind", "eq": "tool"}}), id=name)
        registry.put("grid.tools", "tool", {"name": "ocr"}, id="ocr")
        index.catch_up(registry, org_verified=verifier(registry.engine), local_org=registry.engine.owner)
        views.refresh()
        kept, live = views.show("first"), views.show("second")
        assert kept["view"]["materialized"] and not live["view"]["materialized"]
        assert [i["id"] for i in kept["items"]] == [i["id"] for i in live["items"]] == ["ocr"]
        with pytest.raises(Conflict):
            views.changes("second", None)
        registry.delete(saved_views.VIEWS_REGISTRY, "first")  # the next in line is kept from now on
        index.catch_up(registry, org_verified=verifier(registry.engine), local_org=registry.engine.owner)
        views.refresh()
        assert views.show("second")["view"]["materialized"]
        assert not (index_path(home.path) / "views" / "first.json").exists()


# ---------------------------------------------------------------- the CLI


async def test_rgrid_view_create_show_list_delete_through_the_node_and_offline(node: Served) -> None:
    home = node.home.path

    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(lambda: cli(*args, home=home))

    with trio.fail_after(60):
        async with node.client() as client:
            seq = await write(client, "create", REGISTRY, "g1", {"name": "gpu cluster", "price": 2})
        done = await run("view", "create", "gpus", "--query", json.dumps({"text": "gpu", "sort": "price"}),
                         "--description", "gpus by price", "--json")
        assert done.returncode == 0, done.stderr
        seq = max(seq, json.loads(done.stdout)["feed_seq"])
        bad = await run("view", "create", "nope", "--query", '{"filter": {"field": "price", "lt": "x"}}')
        assert bad.returncode == 65 and "/query/filter/lt" in bad.stderr
        async with node.client() as client:
            await reflected(client, "gpus", seq)
        shown = await run("view", "show", "gpus", "--json")
        assert shown.returncode == 0, shown.stderr
        assert [i["id"] for i in json.loads(shown.stdout)["items"]] == ["g1"]
        table = await run("view", "list")
        assert table.returncode == 0 and "gpus" in table.stdout and "materialized" in table.stdout
        gone = await run("view", "delete", "gpus", "--json")
        assert gone.returncode == 0 and json.loads(gone.stdout)["status"] == "deleted"
        node.node.stop()

    # With the node stopped, the same commands open the home themselves.
    with trio.fail_after(60):
        while Home(home).lock_holder() is not None:  # the node lets the home go as it stops
            await trio.sleep(0.05)
        done = await run("view", "create", "eu", "--query", '{"filter": {"field": "price", "ge": 2}}', "--json")
        assert done.returncode == 0, done.stderr
        listed = await run("view", "list", "--json")
        assert [v["name"] for v in json.loads(listed.stdout)] == ["eu"]
        shown = await run("view", "show", "eu")
        assert shown.returncode == 0, shown.stderr
        assert "g1" in shown.stdout and "node stopped" in shown.stdout
        assert (await run("view", "delete", "eu")).returncode == 0
        assert json.loads((await run("view", "list", "--json")).stdout) == []


# ---------------------------------------------------------------- one view's failure is its own


async def test_a_view_whose_name_is_long_and_quoted_long_is_kept_and_a_damaged_state_file_is_made_anew(
        tmp_path: Path) -> None:
    # A name of 128 characters, 127 of them ':', quotes to a file name longer
    # than the file system takes: the OSError stopped every view (none moved,
    # new ones never materialized, /events 503 for good) and slowed indexing,
    # restart or not. A state file whose members mix value types raised
    # TypeError out of the load, with the same effect.
    home = tmp_path / "home"
    long_name = "a" + ":" * 127
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            served = await start(nursery, home)
            await setup_notes(served)
            async with served.client() as client:
                await put_view(client, long_name, CHEAP_EU)
                seq = await put_view(client, "cheap-eu", CHEAP_EU)
                seq = max(seq, await write(client, "create", REGISTRY, "n1", {"name": "a", "region": "eu-west",
                                                                               "price": 1}))
                for name in (long_name, "cheap-eu"):
                    assert [m[:2] for m in members(await reflected(client, name, seq))] == [(REGISTRY, "n1")]
            served.node.stop()
        state_file = next((home / "index" / "views").glob("cheap-eu*.json"))
        state = json.loads(state_file.read_text())
        state["members"] = [[REGISTRY, "n1", 1], [REGISTRY, "n2", "text"]]
        state_file.write_text(json.dumps(state))
        async with trio.open_nursery() as nursery:
            served = await start(nursery, home)
            async with served.client() as client:
                seq = await write(client, "create", REGISTRY, "n3", {"name": "b", "region": "eu-north", "price": 2})
                for name in (long_name, "cheap-eu"):
                    answer = await reflected(client, name, seq)
                    assert [m[:2] for m in members(answer)] == [(REGISTRY, "n1"), (REGISTRY, "n3")]
            served.node.stop()


def test_after_the_store_is_restored_from_a_backup_search_and_views_follow_its_feed_not_the_old_one(
        tmp_path: Path) -> None:
    # The index took its cursor for granted: restored to an older feed (or
    # made anew), the store's next changes sat at sequence numbers the index
    # had passed, so their records were never indexed (a search found none,
    # and the index said it was up to date), records gone with the old feed
    # were still counted, and views kept members of the old feed.
    import shutil

    home = Home(tmp_path / "home")
    home.init(org_name="test org")
    query = {"filter": {"field": "fields.n", "exists": True}, "sort": {"field": "price", "order": "asc"}}
    backup = tmp_path / "backup"
    backup.mkdir()

    def opened(registry: LocalRegistry) -> tuple[SearchIndex, saved_views.Views]:
        index = SearchIndex(index_path(home.path))
        return index, saved_views.Views(index_path(home.path) / "views", index, registry,
                                        lambda: registry.engine.owner)

    def refresh(registry: LocalRegistry, index: SearchIndex, views: saved_views.Views) -> None:
        index.catch_up(registry, org_verified=verifier(registry.engine), local_org=registry.engine.owner)
        views.refresh()

    with LocalRegistry.open_home(home) as registry:
        index, views = opened(registry)
        registry.put(saved_views.VIEWS_REGISTRY, saved_views.VIEW_KIND, saved_views.view_fields("all", query),
                     id="all")
        for i in range(3):
            registry.put("grid.tools", "tool", {"name": f"old{i}", "n": i, "price": float(i)}, id=f"old{i}")
        registry.store.env.copy(str(backup))  # a consistent backup of the store
        for i in range(3, 8):
            registry.put("grid.tools", "tool", {"name": f"lost{i}", "n": i, "price": float(i)}, id=f"lost{i}")
        refresh(registry, index, views)
        assert len(views.show("all", limit=100)["items"]) == 8
        passed = index.cursor

    shutil.rmtree(home.store_path)
    shutil.copytree(backup, home.store_path)  # restored
    with LocalRegistry.open_home(home) as registry:
        registry.end_recovery(none_kept=True)  # it opens recovering; no peer here to bring "lost" back
        for i in range(10):
            registry.put("grid.tools", "tool", {"name": f"zebra{i}", "n": 100 + i, "price": 100.0 + i},
                         id=f"zebra{i}")
        assert registry.feed_head() > passed  # the new feed passes the old cursor with other changes
        index, views = opened(registry)
        refresh(registry, index, views)
        zebra = index.search(q.parse_query({"text": "zebra7", "limit": 50}))
        lost = index.search(q.parse_query({"text": "lost3", "limit": 50}))
        every = index.search(q.parse_query({"filter": query["filter"], "limit": 50}))
        members = [i["id"] for i in views.show("all", limit=100)["items"]]
        head = registry.feed_head()
    assert zebra["total"] == 1 and lost["total"] == 0 and every["total"] == 13
    assert members == ["old0", "old1", "old2"] + [f"zebra{i}" for i in range(10)]
    assert index.cursor == head
