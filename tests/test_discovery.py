"""Discovery documents on the bridge (node/bridge/discovery_routes.py): the
A2A card of the agent this org hosts at /.well-known/agent-card.json, an AI
Catalog of what the org publishes at /.well-known/ai-catalog.json, and the
federated agent cards with their signature status at /v1/agent-cards.
A real node with its bridge; records go in as a user puts them: `rgrid
import`'s importer writing through the bridge's API client."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from test_bridge_support import make_token, start_served

from registrygrid.client import BridgeClient
from registrygrid.formats import importer
from registrygrid.formats.importer import Document
from registrygrid.node.bridge import BridgeConfig
from registrygrid.node.bridge.auth import RateLimit

pytestmark = pytest.mark.timeout(60)

CARD: dict[str, Any] = {
    "name": "Contract summarizer", "description": "Summarizes legal contracts", "version": "1.2.0",
    "supportedInterfaces": [{"url": "https://agents.example.com/summarizer", "protocolBinding": "JSONRPC"}],
    "skills": [{"id": "summarize", "name": "Summarize", "tags": ["legal"]}],
}
SERVER: dict[str, Any] = {"name": "io.github.example/weather", "description": "Weather over MCP", "version": "1.0.0",
                          "remotes": [{"type": "streamable-http", "url": "https://w.example/mcp"}]}
ENTRY: dict[str, Any] = {"identifier": "urn:air:example.com:dataset:contracts", "displayName": "Contracts corpus",
                         "type": "application/json", "url": "https://data.example.com/contracts.json"}


def anonymous_client(served: Any) -> httpx.AsyncClient:
    """A client with no token at all: a crawler discovering the org."""
    return httpx.AsyncClient(base_url=served.url, timeout=20)


def publish(url: str, token: str, documents: list[Any]) -> importer.Report:
    with BridgeClient(url, token=token) as client:
        return importer.Importer(client).run(iter(Document(f"doc{i}", d) for i, d in enumerate(documents)))


async def test_the_well_known_documents_show_what_this_org_publishes(nursery: trio.Nursery, tmp_path: Path) -> None:
    served = await start_served(nursery, tmp_path / "home")
    async with anonymous_client(served) as anonymous:
        none_yet = await anonymous.get("/.well-known/agent-card.json")
        empty = (await anonymous.get("/.well-known/ai-catalog.json")).json()
    newer = {**SERVER, "version": "1.1.0"}
    report = await trio.to_thread.run_sync(publish, served.url, served.admin, [
        CARD, SERVER, newer, {"specVersion": "1.0", "entries": [ENTRY]}])
    assert report.created == 4, report.invalid

    async with anonymous_client(served) as anonymous:
        card = await anonymous.get("/.well-known/agent-card.json")
        catalog = (await anonymous.get("/.well-known/ai-catalog.json")).json()
    assert none_yet.status_code == 404 and empty["entries"] == []
    assert card.status_code == 200 and card.json() == CARD and "max-age" in card.headers["Cache-Control"]
    assert catalog["specVersion"] == "1.0" and catalog["host"]["displayName"] == "test org"
    by_type = {e["type"]: e for e in catalog["entries"]}
    assert by_type["application/a2a-agent-card+json"]["data"] == CARD
    assert by_type["application/mcp-server+json"]["version"] == "1.1.0", "the latest version of each server"
    assert ENTRY in catalog["entries"], "imported catalog entries as they came"

    second = copy.deepcopy(CARD) | {"name": "Translator",
                                    "supportedInterfaces": [{"url": "https://agents.example.com/tr"}]}
    await trio.to_thread.run_sync(publish, served.url, served.admin, [second])
    async with anonymous_client(served) as anonymous:
        several = await anonymous.get("/.well-known/agent-card.json")
    assert several.status_code == 409 and len(several.json()["error"]["details"]["candidates"]) == 2
    served.node.stop()


async def test_federated_agent_cards_are_listed_with_their_signature_status(nursery: trio.Nursery,
                                                                          tmp_path: Path) -> None:
    served = await start_served(nursery, tmp_path / "home")
    signed_badly = {**CARD, "signatures": [{"protected": "eyJhbGciOiJFUzI1NiJ9", "signature": "AAAA"}]}
    await trio.to_thread.run_sync(publish, served.url, served.admin, [signed_badly])
    async with served.client() as client:
        listed = (await client.get("/v1/agent-cards")).json()
    async with anonymous_client(served) as anonymous:
        refused = await anonymous.get("/v1/agent-cards")
    (card,) = listed["cards"]
    assert card["signature"] == "unverified" and card["name"] == CARD["name"] and card["card"] == signed_badly
    assert listed["next_cursor"] is None
    assert refused.status_code == 401
    served.node.stop()


async def test_ard_search_finds_resources_by_words_type_and_tags(nursery: trio.Nursery, tmp_path: Path) -> None:
    from test_bridge_search import indexed, start_node

    served = await start_node(nursery, tmp_path / "searching")
    other_server = {**SERVER, "name": "io.github.example/calendar", "description": "Calendar events over MCP"}
    report = await trio.to_thread.run_sync(publish, served.url, served.admin, [
        CARD, SERVER, other_server, {"specVersion": "1.0", "entries": [ENTRY]}])
    assert report.created == 4
    async with served.client() as client:
        await indexed(client, (await client.get("/v1/index")).json()["feed_head"])
        words = (await client.post("/search", json={"query": {"text": "weather"}})).json()
        agents = (await client.post("/search", json={"query": {"text": "contracts", "filter": {
            "type": ["application/a2a-agent-card+json"]}}})).json()
        tagged = (await client.post("/search", json={"query": {"text": "contracts", "filter": {"tags": "legal"}},
                                                     "pageSize": 5})).json()
        datasets = (await client.post("/search", json={"query": {"text": "contracts", "filter": {
            "type": "application/json"}}})).json()
        federated = await client.post("/search", json={"query": {"text": "weather"}, "federation": "auto"})
        no_text = await client.post("/search", json={"query": {"text": " "}})
        bad_federation = await client.post("/search", json={"query": {"text": "x"}, "federation": "everywhere"})
        # Refused by the search language, named as the request's members (it said /text and /cursor).
        too_long = await client.post("/search", json={"query": {"text": "x" * 1001}})
        forged = await client.post("/search", json={"query": {"text": "x"}, "pageToken": "zzz"})
    assert words["results"][0]["data"]["name"] == SERVER["name"] and words["results"][0]["score"] == 100
    assert words["referrals"] == []
    assert [r["type"] for r in agents["results"]] == ["application/a2a-agent-card+json"]
    assert agents["results"][0]["data"] == CARD
    assert [r["displayName"] for r in tagged["results"]] == [CARD["name"]]
    assert [r["identifier"] for r in datasets["results"]] == [ENTRY["identifier"]]
    assert federated.status_code == 200 and federated.json()["results"][0]["data"]["name"] == SERVER["name"]
    assert no_text.status_code == 422 and no_text.json()["error"]["details"][0]["path"] == "/query/text"
    assert bad_federation.status_code == 422 and "federation" in bad_federation.text
    assert too_long.status_code == 422 and too_long.json()["error"]["details"][0]["path"] == "/query/text"
    assert forged.status_code == 422 and forged.json()["error"]["details"][0]["path"] == "/pageToken"
    served.node.stop()


async def test_the_catalog_names_the_version_the_mcp_api_calls_latest_and_is_sent_again_only_when_changed(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    # It named the version published last (1.0.1 below) where /v0.1/servers
    # calls 2.0.0 latest, by the MCP Registry's semver rule.
    served = await start_served(nursery, tmp_path / "home")
    await trio.to_thread.run_sync(publish, served.url, served.admin, [{**SERVER, "version": "2.0.0"}])
    await trio.to_thread.run_sync(publish, served.url, served.admin, [{**SERVER, "version": "1.0.1"}])
    async with anonymous_client(served) as anonymous:
        first = await anonymous.get("/.well-known/ai-catalog.json")
        again = await anonymous.get("/.well-known/ai-catalog.json", headers={"If-None-Match": first.headers["ETag"]})
    async with served.client() as client:
        latest = (await client.get("/v0.1/servers", params={"version": "latest"})).json()
    (entry,) = first.json()["entries"]
    assert entry["version"] == "2.0.0" == latest["servers"][0]["server"]["version"]
    assert again.status_code == 304 and again.content == b""
    await trio.to_thread.run_sync(publish, served.url, served.admin, [{**SERVER, "version": "3.0.0"}])
    async with anonymous_client(served) as anonymous:
        changed = await anonymous.get("/.well-known/ai-catalog.json", headers={"If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200 and changed.json()["entries"][0]["version"] == "3.0.0"
    served.node.stop()


async def test_the_well_known_documents_are_rate_limited_per_address_as_anonymous_requests_are(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    # Public and built from whole registries, they answered every request
    # unthrottled: 24 crawlers of a 120 MB catalog took the node to 3 GB.
    served = await start_served(nursery, tmp_path / "home", BridgeConfig(rate_limit=RateLimit(rate=0.5, burst=3)))
    async with anonymous_client(served) as anonymous:
        answers = [await anonymous.get(path) for path in ["/.well-known/ai-catalog.json"] * 2
                   + ["/.well-known/agent-card.json"] * 2]
    assert [a.status_code for a in answers] == [200, 200, 404, 429]
    assert answers[-1].json()["error"]["code"] == "rate_limited" and int(answers[-1].headers["Retry-After"]) >= 1
    served.node.stop()


async def test_ard_search_with_a_token_limited_to_another_registry_finds_nothing(nursery: trio.Nursery,
                                                                                 tmp_path: Path) -> None:
    # It searched the token's own registry instead, and answered its tool
    # records as agent cards.
    from test_bridge_search import indexed, start_node

    served = await start_node(nursery, tmp_path / "searching")
    await trio.to_thread.run_sync(publish, served.url, served.admin, [CARD])
    async with served.client() as client:
        assert (await client.post("/v1/registries", json={"name": "acme.private", "kinds": ["tool"]})).status_code == 201
        written = await client.post("/v1/registries/acme.private/records", json={
            "kind": "tool", "id": "p1", "fields": {"name": "contracts helper", "version": "1"}})
        assert written.status_code == 201, written.text
        await indexed(client, (await client.get("/v1/index")).json()["feed_head"])
    scoped = await make_token(served, "reader", registry="acme.private")
    async with served.client(scoped) as client:
        found = await client.post("/search", json={"query": {"text": "contracts", "filter": {
            "type": ["application/a2a-agent-card+json"]}}})
    assert found.status_code == 200 and found.json()["results"] == []
    served.node.stop()


async def test_a_signature_status_tag_a_writer_chose_is_not_shown_when_the_card_contradicts_it(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    # The listing showed the tag as written: an unsigned card tagged
    # signature:verified was "verified", and signature:trust-me broke the
    # AgentCardList schema.
    served = await start_served(nursery, tmp_path / "home")
    records = "/v1/registries/grid.agent-cards/records"
    async with served.client() as client:
        for record_id, tag in (("a2a-claims-verified", "signature:verified"), ("a2a-claims-odd", "signature:trust-me")):
            written = await client.post(records, json={"kind": "agent-card", "id": record_id, "fields": CARD,
                                                       "tags": [tag]})
            assert written.status_code == 201, written.text
        listed = (await client.get("/v1/agent-cards")).json()
    assert {c["id"]: c["signature"] for c in listed["cards"]} == {"a2a-claims-verified": "unsigned",
                                                                  "a2a-claims-odd": "unsigned"}
    served.node.stop()
