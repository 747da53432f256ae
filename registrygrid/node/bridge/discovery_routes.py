"""Well-known discovery documents on the bridge: A2A and AI Catalog.

* ``GET /.well-known/agent-card.json``: the A2A card of the agent this org
  hosts (a record of grid.agent-cards owned by this node's org): the one
  there is, or, when the org has several, the one ``bridge.agent_card``
  in HOME/config.json names (its record id); 404 when it has none, 409
  naming the candidates when it has several and none is chosen. The card
  is served exactly as imported (its signatures intact).
* ``GET /.well-known/ai-catalog.json``: an AI Catalog (specVersion 1.0) of
  the resources this org publishes: its agent cards and MCP servers (the
  latest version of each, by publication) inline, and the entries of
  AI Catalogs it imported, as they came; the host is the org (its name
  and did:key).
* ``GET /v1/agent-cards``: every agent card the federation replicates here,
  with who owns it and its signature status as verified at import
  (formats/a2a.py), in pages.
* ``POST /search``: ARD search (formats/ard.py maps it onto the node's
  search, ``federation: auto`` onto its federated query), over the MCP
  servers, agent cards and AI Catalog entries the node holds.

The two well-known documents are public, as their protocols mean them to
be (a client discovers an agent before it holds any credential here); they
hold only what this org publishes to its federation anyway. Each caller's
address is rate limited as an anonymous request is, and each document is
built once per change of its registries (feed_cache.py), not per request. The listing
and ARD search need a reader token, as every other read.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from aiohttp import web

from registrygrid.errors import Conflict, NotFound, ValidationError
from registrygrid.formats import a2a, ai_catalog, ard, mcp
from registrygrid.formats.mcp_registry import Catalog
from registrygrid.node.bridge.app import dumps, json_response, q_int, search_shape
from registrygrid.node.bridge.auth import READ
from registrygrid.node.bridge.conditional import not_modified
from registrygrid.node.bridge.feed_cache import FeedCache

if TYPE_CHECKING:
    from registrygrid.node.bridge.app import Api

SPEC_VERSION = "1.0"
MEDIA_A2A = "application/a2a-agent-card+json"
MEDIA_MCP = "application/mcp-server+json"
# Discovery documents change when the org publishes; a minute of caching
# spares the node a crawler's repeated reads and is stale for a minute at most.
CACHE_CONTROL = "public, max-age=60"


class DiscoveryRoutes:
    def __init__(self, api: Api, *, agent_card: str | None = None) -> None:
        self.api = api
        self.agent_card = agent_card  # HOME/config.json bridge.agent_card: the card to serve among several
        # Anyone may ask for these, as often as the rate limit lets them:
        # each was a scan of whole registries per request.
        self._cards = FeedCache(api, (a2a.REGISTRY,), lambda: self._owned(a2a.REGISTRY, a2a.KIND))
        self._catalog_document = FeedCache(api, (a2a.REGISTRY, mcp.REGISTRY, ai_catalog.REGISTRY),
                                           self._encoded_catalog)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/.well-known/agent-card.json", self.agent_card_document),
            web.get("/.well-known/ai-catalog.json", self.ai_catalog_document),
            web.get("/v1/agent-cards", self.list_agent_cards),
            web.post("/search", self.ard_search),
        ]

    def _org(self) -> str | None:
        return self.api.registry.engine.owner

    def _owned(self, registry: str, kind: str) -> list[dict[str, Any]]:
        org = self._org()
        return [r for r in self.api.registry.iter_all(registry, kind=kind) if org is not None and r["owner"] == org]

    async def agent_card_document(self, request: web.Request) -> web.Response:
        self.api.auth.throttle_address(request.remote)
        cards = await self._cards.get()
        if self.agent_card is not None:
            cards = [c for c in cards if c["id"] == self.agent_card]
        if not cards:
            raise NotFound("this org hosts no agent card here: `rgrid import card.json` publishes one"
                           + (f" (bridge.agent_card names {self.agent_card})" if self.agent_card else ""))
        if len(cards) > 1:
            raise Conflict("this org hosts several agent cards: name the one to serve as bridge.agent_card in "
                           "HOME/config.json", details={"candidates": sorted(c["id"] for c in cards)})
        return json_response(a2a.from_record(cards[0]), headers={"Cache-Control": CACHE_CONTROL})

    async def ai_catalog_document(self, request: web.Request) -> web.Response:
        self.api.auth.throttle_address(request.remote)
        body, etag = await self._catalog_document.get()
        headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag}
        if not_modified(request.headers, etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers, content_type="application/json")

    def _encoded_catalog(self) -> tuple[bytes, str]:
        """The document as sent, and its entity tag."""
        body = dumps(self._catalog())
        return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'

    def _catalog(self) -> dict[str, Any]:
        identity = self.api.registry.identity()
        entries: list[dict[str, Any]] = []
        for record in self._owned(a2a.REGISTRY, a2a.KIND):
            card = a2a.from_record(record)
            entries.append({"identifier": f"urn:registrygrid:{a2a.REGISTRY}:{record['id']}",
                            "displayName": str(card.get("name", record["id"])), "type": MEDIA_A2A,
                            "description": str(card.get("description", "")), "data": card,
                            **({"version": card["version"]} if isinstance(card.get("version"), str) else {})})
        # The latest version of each server by the MCP Registry API's rule
        # (isLatest: semver order), not the last one published, so that
        # /v0.1/servers and this document name the same version.
        servers = {r["id"]: r for r in self._owned(mcp.REGISTRY, mcp.KIND)}
        latest = {v.name: servers[v.record_id] for v in Catalog.of(servers.values()).versions_where_latest()}
        for name, record in sorted(latest.items()):
            server = mcp.from_record(record)
            entries.append({"identifier": f"urn:registrygrid:{mcp.REGISTRY}:{name}",
                            "displayName": str(server.get("title") or name), "type": MEDIA_MCP,
                            "description": str(server.get("description", "")), "version": str(server["version"]),
                            "data": server})
        for record in self._owned(ai_catalog.REGISTRY, ai_catalog.KIND):
            entries.append(record["fields"]["entry"])
        org = identity.get("org")
        host = {"displayName": str(identity.get("org_name") or identity.get("name") or org or "registrygrid node"),
                **({"identifier": org} if org else {})}
        return {"specVersion": SPEC_VERSION, "host": host, "entries": entries}

    async def list_agent_cards(self, request: web.Request) -> web.Response:
        token = self.api.require(request, READ, registry=a2a.REGISTRY, target=a2a.REGISTRY)
        page = await self.api.in_executor(self.api.registry.list, a2a.REGISTRY, kind=a2a.KIND,
                                          limit=q_int(request, "limit", 100, 1, 1000) or 100,
                                          cursor=request.query.get("cursor") or None)
        cards = [{"id": r["id"], "owner": r["owner"], "name": r["fields"].get("name"),
                  "signature": a2a.shown_status(r),
                  "updated_at": r["updated_at"], "card": a2a.from_record(r)} for r in page.items]
        self.api.read_note(token, a2a.REGISTRY, "list agent cards")
        return json_response({"cards": cards, "next_cursor": page.next_cursor})

    async def ard_search(self, request: web.Request) -> web.Response:
        token = self.api.require(request, READ, target="search")
        body, _ = await self.api.body(request, "ArdSearch")
        query = ard.to_query(body)
        if token.registry is not None:
            # A token limited to a registry none of ARD's is: nothing to find
            # (it searched its own registry, and answered any record as a card).
            query["registries"] = [r for r in query["registries"] if r == token.registry]
            if not query["registries"]:
                self.api.read_note(token, "search", "ARD search outside the token's registry")
                return json_response(ard.to_answer({"items": []}))
        try:
            if query.get("federated"):
                answer = await self.api.federated_search(query, None)
            else:
                answer = await self.api.in_executor(self.api._searcher().search, query, None)
        except ValidationError as exc:
            raise ard.request_error(exc) from None
        self.api.read_note(token, "search", "ARD " + search_shape(query))
        return json_response(ard.to_answer(answer))
