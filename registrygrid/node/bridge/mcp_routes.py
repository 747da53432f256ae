"""The MCP Registry read API on the bridge (``/v0.1/servers``), from grid.mcp-servers.

``GET /v0.1/servers`` (cursor pages, ``search``, ``updated_since``,
``version``), ``GET /v0.1/servers/{serverName}/versions`` and
``.../versions/{version}`` answer as the MCP Registry API does (the
official document is vendored in ``formats/vendor/``; the tests validate
every answer against it), so an unmodified MCP registry client reads the
MCP servers this node's federation replicates. formats/mcp_registry.py
builds the answers; this module checks the token and the parameters and
reads the records. Errors on these routes take the API's shape
(``{"error": "<message>", "code", "details", "trace_id"}``:
mcp_registry.error_body, chosen by app.py's error_response for paths under
``/v0.1/``). Publishing and deleting through this API (the document's
optional endpoints) answer 501: records of grid.mcp-servers are written by
``rgrid import`` and the ``/v1`` record routes, which sign, audit and
gossip them like any record.

A reader token is needed, as for every read of the bridge; a token limited
to another registry is refused (403). The handlers read the registry
through a ``Catalog`` of every version, rebuilt off the loop, one build at
a time, when the registry changed (the node's feed says so) and otherwise
shared (feed_cache.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from registrygrid.errors import EX_UNAVAILABLE, RegistryError
from registrygrid.formats import mcp
from registrygrid.formats.mcp_registry import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Catalog,
    ListQuery,
    parse_rfc3339,
    server_list,
)
from registrygrid.node.bridge.app import json_response, q_bool, q_int
from registrygrid.node.bridge.auth import READ, WRITE
from registrygrid.node.bridge.feed_cache import FeedCache

if TYPE_CHECKING:
    from registrygrid.node.bridge.app import Api

BASE = "/v0.1/servers"


class NotSupported(RegistryError):
    """An optional operation of a foreign API this node does not offer."""

    code = "not_supported"
    http_status = 501
    exit_code = EX_UNAVAILABLE


class McpRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api
        self._catalog = FeedCache(api, (mcp.REGISTRY,), lambda: Catalog.of(
            api.registry.iter_all(mcp.REGISTRY, kind=mcp.KIND, include_deleted=True)))

    def routes(self) -> list[web.RouteDef]:
        # aiohttp matches a path with its %2F still encoded and decodes each
        # matched part, so {serverName} takes "com.example%2Fmy-server" whole.
        one = BASE + "/{serverName}/versions/{version}"
        return [
            web.get(BASE, self.list_servers),
            web.get(BASE + "/{serverName}/versions", self.list_versions),
            web.get(one, self.get_version),
            web.delete(one, self.delete_version),
            web.post("/v0.1/publish", self.publish),
        ]

    # ------------------------------------------------------------------ the catalog

    async def catalog(self) -> Catalog:
        return await self._catalog.get()

    # ------------------------------------------------------------------ reads

    async def list_servers(self, request: web.Request) -> web.Response:
        token = self.api.require(request, READ, registry=mcp.REGISTRY, target=mcp.REGISTRY)
        since = request.query.get("updated_since") or None
        query = ListQuery(limit=q_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT,
                          cursor=request.query.get("cursor") or None,
                          search=request.query.get("search") or None,
                          updated_since_ms=None if since is None else parse_rfc3339(since),
                          version=request.query.get("version") or None,
                          include_deleted=q_bool(request, "include_deleted"))
        versions, next_cursor = (await self.catalog()).page(query)
        self.api.read_note(token, mcp.REGISTRY, f"mcp registry list {request.query_string[:400]}")
        return json_response(server_list(versions, next_cursor))

    async def list_versions(self, request: web.Request) -> web.Response:
        token = self.api.require(request, READ, registry=mcp.REGISTRY, target=mcp.REGISTRY)
        name = request.match_info["serverName"]
        found = (await self.catalog()).versions(name, include_deleted=q_bool(request, "include_deleted"))
        self.api.read_note(token, mcp.REGISTRY, f"mcp registry versions of {name[:200]}")
        return json_response(server_list(found))

    async def get_version(self, request: web.Request) -> web.Response:
        token = self.api.require(request, READ, registry=mcp.REGISTRY, target=mcp.REGISTRY)
        name, version = request.match_info["serverName"], request.match_info["version"]
        found = (await self.catalog()).get(name, version, include_deleted=q_bool(request, "include_deleted"))
        self.api.read_note(token, f"{mcp.REGISTRY}/{found.record_id}", f"mcp registry version {version[:255]}")
        return json_response(found.response())

    # ------------------------------------------------------------------ the optional writes: not offered

    async def delete_version(self, request: web.Request) -> web.Response:
        self.api.require(request, WRITE, registry=mcp.REGISTRY, target=mcp.REGISTRY)
        raise NotSupported("Deletion is not supported by this registry: delete the version's record "
                           f"(DELETE /v1/registries/{mcp.REGISTRY}/records/{{id}}, or rgrid delete)")

    async def publish(self, request: web.Request) -> web.Response:
        self.api.require(request, WRITE, registry=mcp.REGISTRY, target=mcp.REGISTRY)
        raise NotSupported("Publishing is not supported by this registry: use `rgrid import` (server.json "
                           f"files become signed records of {mcp.REGISTRY})")
