"""A Python client of a running node's HTTP bridge, shaped like the SDK.

    from registrygrid.client import BridgeClient
    with BridgeClient("http://127.0.0.1:8700", token="rgt_...") as grid:
        result = grid.put("grid.functions", "function", {"name": "resize", ...})
        record = grid.get("grid.functions", result.record_id)

Method names, arguments and return types match ``LocalRegistry`` (records,
pages, feed events, write results, audit entries), and errors are the same
typed ``RegistryError`` subclasses, rebuilt from the JSON error code, so
code written against the SDK runs against a node unchanged. The CLI uses
``BridgeClient.for_home(home)`` while a node runs on that home.

It is synchronous (``http.client``, one keep-alive connection), so it needs
no event loop and starts fast; it is not thread-safe: use one per thread.
``actor`` arguments are accepted for signature compatibility but ignored:
the node records the token's holder as the actor, a client cannot claim
another name.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from registrygrid.crdt.conflicts import ABSENT
from registrygrid.engine.ops import WriteResult
from registrygrid.errors import MalformedInput, RegistryError, Unavailable, ValidationError
from registrygrid.home import Home
from registrygrid.node.bridge.errors import rebuild
from registrygrid.sdk import MAX_PAGE, Page
from registrygrid.storage.audit import AuditEntry
from registrygrid.storage.feed import FeedEvent

# Long enough for a write waiting behind a 2,000-op group commit and for a
# 30 s long-poll; a request to a hung node still fails instead of blocking forever.
DEFAULT_TIMEOUT_S = 60.0
# A rebuild answers once the whole feed is indexed again. The index builds
# ~8,000 records/s (benchmarks/bench_search.py, 20k records); 30 minutes
# covers a million records even at a tenth of that on a loaded node.
REBUILD_TIMEOUT_S = 30 * 60.0


def _seg(value: str) -> str:
    return quote(str(value), safe="")


class BridgeClient:
    def __init__(self, url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError(f"bridge URL must be http(s)://host:port, not {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._conn: http.client.HTTPConnection | None = None

    @classmethod
    def for_home(cls, home: str | Path | Home | None = None, **kwargs: Any) -> BridgeClient:
        """The client of the node running on ``home`` (URL and token from HOME/bridge.json)."""
        home = home if isinstance(home, Home) else Home(home)
        path = home.path / "bridge.json"
        try:
            info = json.loads(path.read_text())
            return cls(info["url"], token=info["token"], **kwargs)
        except FileNotFoundError:
            raise Unavailable(f"{path} does not exist: no node serves a bridge on this home "
                              "(not started yet, or started with --no-bridge)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedInput(f"{path} is not a bridge file: {exc}") from None

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> BridgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
                body: Any = None, headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        """One call; returns (status, headers, decoded JSON) or raises the typed error it answered."""
        if query:
            items = query.items() if isinstance(query, Mapping) else query
            pairs = [(k, _query_value(v)) for k, v in items if v is not None]
            if pairs:
                path = f"{path}?{urlencode(pairs)}"
        send_headers = {"Accept": "application/json"}
        if self.token:
            send_headers["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            send_headers["Content-Type"] = "application/json"
        send_headers.update(headers or {})
        # One retry, only when a kept-alive connection turns out closed before
        # anything was sent back (the server may close idle connections);
        # never for a timeout, since a write may then have happened.
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=payload, headers=send_headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 2:
                    raise Unavailable(f"the bridge at {self.url} closed the connection: {exc}") from None
            except (ConnectionRefusedError, socket.gaierror, OSError) as exc:
                self.close()
                raise Unavailable(f"cannot reach the node's bridge at {self.url}: {exc}") from None
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
        data = json.loads(raw) if raw and "json" in reply_headers.get("content-type", "") else raw
        if response.status >= 400:
            raise rebuild(response.status, data)
        return response.status, reply_headers, data

    def _get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)[2]

    # ------------------------------------------------------------------ writes (as LocalRegistry)

    def put(self, registry: str, kind: str, fields: Mapping[str, Any], *, id: str | None = None,
            tags: Sequence[str] = (), links: Sequence[Mapping[str, str]] = (), schema: int | None = None,
            actor: str | None = None, idempotency_key: str | None = None) -> WriteResult:
        body: dict[str, Any] = {"kind": kind, "fields": dict(fields), "tags": list(tags), "links": list(links)}
        if id is not None:
            body["id"] = id
        if schema is not None:
            body["schema"] = schema
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return _write_result(self.request("POST", f"/v1/registries/{_seg(registry)}/records", body=body,
                                          headers=headers)[2])

    def update(self, registry: str, id: str, *, fields: Mapping[str, Any] | None = None,
               patch: Mapping[str, Any] | None = None, tags: Sequence[str] | None = None,
               links: Sequence[Mapping[str, str]] | None = None, schema: int | None = None,
               if_match: str | None = None, actor: str | None = None) -> WriteResult:
        if fields is not None and patch is not None:
            raise ValidationError("give either fields (replace) or patch (merge), not both")
        body: dict[str, Any] = {}
        if tags is not None:
            body["tags"] = list(tags)
        if links is not None:
            body["links"] = list(links)
        if schema is not None:
            body["schema"] = schema
        headers = {"If-Match": f'"{if_match}"'} if if_match else None
        path = f"/v1/registries/{_seg(registry)}/records/{_seg(id)}"
        if fields is not None:
            body["fields"] = dict(fields)
            return _write_result(self.request("PUT", path, body=body, headers=headers)[2])
        if patch is not None:
            body["patch"] = dict(patch)
        return _write_result(self.request("PATCH", path, body=body, headers=headers)[2])

    def delete(self, registry: str, id: str, *, if_match: str | None = None, actor: str | None = None) -> WriteResult:
        headers = {"If-Match": f'"{if_match}"'} if if_match else None
        return _write_result(self.request("DELETE", f"/v1/registries/{_seg(registry)}/records/{_seg(id)}",
                                          headers=headers)[2])

    # ------------------------------------------------------------------ disputes (docs/conflicts.md)

    def disputes(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Field disputes (manual conflict rule) and equivocations the node knows."""
        return self._get("/v1/disputes", status=status)["items"]

    def dispute(self, id: str) -> dict[str, Any]:
        """One dispute in full: competing writes or envelopes, a diff, its resolutions."""
        return self._get(f"/v1/disputes/{_seg(id)}")

    def resolve_dispute(self, id: str, *, value: Any = ABSENT, removed: bool = False, note: str = "",
                        actor: str | None = None) -> WriteResult:
        """File a resolution signed by the node's key, as ``LocalRegistry.resolve_dispute``
        (``removed`` wins over ``value`` there too)."""
        body: dict[str, Any] = {}
        if removed:
            body["removed"] = True
        elif value is not ABSENT:
            body["value"] = value
        if note:
            body["note"] = note
        return _write_result(self.request("POST", f"/v1/disputes/{_seg(id)}/resolve", body=body)[2])

    # ------------------------------------------------------------------ reads

    def get(self, registry: str, id: str, *, include_deleted: bool = False) -> dict[str, Any]:
        return self._get(f"/v1/registries/{_seg(registry)}/records/{_seg(id)}",
                         include_deleted=include_deleted or None)

    def list(self, registry: str | None = None, *, kind: str | None = None, tag: str | None = None,
             owner: str | None = None, where: Sequence[tuple[str, str, Any]] = (), limit: int = 100,
             cursor: str | None = None, include_deleted: bool = False) -> Page:
        query: list[tuple[str, Any]] = [("kind", kind), ("tag", tag), ("owner", owner), ("limit", limit),
                                        ("cursor", cursor), ("include_deleted", include_deleted or None)]
        query += [("where", f"{path}:{op}:{json.dumps(value)}") for path, op, value in where]
        path = f"/v1/registries/{_seg(registry)}/records" if registry is not None else "/v1/records"
        data = self.request("GET", path, query=query)[2]
        return Page(data["items"], data["next_cursor"])

    def iter_all(self, registry: str | None = None, **filters: Any) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            page = self.list(registry, cursor=cursor, limit=MAX_PAGE, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def history(self, registry: str, id: str) -> list[dict[str, Any]]:
        return self._get(f"/v1/registries/{_seg(registry)}/records/{_seg(id)}/history")["history"]

    def changes(self, since: int = 0, *, limit: int = 1000, registry: str | None = None,
                kind: str | None = None, wait: float | None = None) -> list[FeedEvent]:
        data = self._get("/v1/changes", since=since, limit=limit, registry=registry, kind=kind, wait=wait)
        return [_feed_event(e) for e in data["events"]]

    def feed_head(self) -> int:
        return int(self._get("/v1/changes", since=0, limit=1)["head"])

    # ------------------------------------------------------------------ search (registrygrid/search)

    def search(self, query: Mapping[str, Any]) -> dict[str, Any]:
        """The node's answer to a query in the search language (search/query.py:
        text, filter, registries, sort, facets, limit, cursor, weights,
        boosts, explain, federated): {items: [{registry, id, score, record,
        sort_value?, explain?}], total, facets, next_cursor, indexed_through}.
        Pass an answer's next_cursor as the next query's cursor for the next
        page. A federated query (``"federated": true`` or ``{"deadline_ms":
        N}``) also asks the node's peers: its items name their ``sources``
        and the answer reports each source (``sources``); one page only.
        ValidationError names a malformed part (``details[0]["path"]``);
        Unavailable when the node was started with --no-search."""
        return self.request("POST", "/v1/search", body=dict(query))[2]  # type: ignore[no-any-return]

    def search_fields(self) -> list[dict[str, Any]]:
        """The fields a query may filter, sort and facet by: {field, type, many,
        operators, sortable, facetable, description} each."""
        return self._get("/v1/search/fields")["fields"]  # type: ignore[no-any-return]

    def index_status(self) -> dict[str, Any]:
        """{state, documents, indexed_through, feed_head} of the node's search index."""
        return self._get("/v1/index")  # type: ignore[no-any-return]

    def rebuild_index(self, *, timeout: float = REBUILD_TIMEOUT_S) -> dict[str, Any]:
        """Have the node index its whole feed again (admin): {events,
        documents, indexed_through}, once it is done; waits up to ``timeout``."""
        kept = self.timeout
        self.close()  # the connection's socket carries the timeout: a fresh one for this call
        self.timeout = max(timeout, kept)
        try:
            return self.request("POST", "/v1/index/rebuild")[2]  # type: ignore[no-any-return]
        finally:
            self.close()
            self.timeout = kept

    # ------------------------------------------------------------------ saved views (registrygrid/search/views.py)

    def views(self) -> list[dict[str, Any]]:
        """Every saved view the node holds: {name, title, owner, description,
        query, materialized, members, truncated, through, error} each."""
        return self._get("/v1/views")["views"]  # type: ignore[no-any-return]

    def view(self, name: str, *, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """A view and a page of its results: {view, items: [{registry, id,
        sort_value, record}], total, next_cursor}."""
        return self._get(f"/v1/views/{_seg(name)}", limit=limit, cursor=cursor)  # type: ignore[no-any-return]

    def put_view(self, name: str, query: Mapping[str, Any], *, description: str = "",
                 title: str | None = None) -> WriteResult:
        """Create or replace view ``name`` (ValidationError names a bad part of
        the query, under /query)."""
        body: dict[str, Any] = {"query": dict(query)}
        if description:
            body["description"] = description
        if title:
            body["title"] = title
        return _write_result(self.request("PUT", f"/v1/views/{_seg(name)}", body=body)[2])

    def delete_view(self, name: str) -> WriteResult:
        return _write_result(self.request("DELETE", f"/v1/views/{_seg(name)}")[2])

    def view_events(self, name: str, *, after: str | None = None) -> dict[str, Any]:
        """A materialized view's changes after an event id: {events, reset, last_id}."""
        return self._get(f"/v1/views/{_seg(name)}/events", after=after)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ registries and kinds

    def registries(self) -> list[dict[str, Any]]:
        return self._get("/v1/registries")["registries"]

    def explain(self, subject: str, action: str, registry: str, record_id: str | None = None, *,
                fields: Sequence[str] = (), local_roles: Sequence[str] = ()) -> dict[str, Any]:
        body: dict[str, Any] = {"subject": subject, "action": action, "registry": registry, "fields": list(fields)}
        if local_roles:
            body["token_role"] = local_roles[0].removeprefix("app:")
        if record_id is not None:
            body["record"] = record_id
        return self.request("POST", "/v1/policy/explain", body=body)[2]  # type: ignore[no-any-return]

    def describe_registry(self, name: str) -> dict[str, Any]:
        return self._get(f"/v1/registries/{_seg(name)}")

    def resolve_registry(self, name: str, *, fresh: bool = False) -> dict[str, Any]:
        """``name`` in the registry of registries (the node's Kademlia DHT):
        its signed descriptor, verified, and the nodes that host it, with
        ``source`` "dht" or "cache" (the node reuses an answer for a minute;
        ``fresh`` asks the DHT anyway). Only a running node has a DHT, so
        ``LocalRegistry`` has no such method. NotFound when nobody published
        the name; Unavailable when the node runs no DHT or the lookup timed out."""
        return self._get(f"/v1/registries/{_seg(name)}/resolve", fresh=fresh or None)

    def read_remote(self, name: str, *, record_id: str | None = None) -> dict[str, Any]:
        """A public registry that another federation hosts, read by the node
        from one of its providers and verified change by change (node/remote_read.py):
        {registry, provider, owner, verified, records}, ``records`` all its
        live records or, with ``record_id``, that one. Only a running node
        reaches other federations, so ``LocalRegistry`` has no such method.
        NotFound when nobody published the name (or no such record);
        PolicyDenied when it is not public; Unavailable when the node runs no
        DHT or no provider gave a verifiable answer (``details["refusals"]``)."""
        return self._get(f"/v1/registries/{_seg(name)}/remote", record=record_id)

    # ------------------------------------------------------------------ follows (node/follow.py)

    def follow(self, name: str) -> dict[str, Any]:
        """Have the node keep a verified copy of ``name``, a public registry
        another federation hosts, synced from its providers; the ordinary
        reads (``get``, ``list``, ``history``, ``describe_registry``) then
        answer from it. Returns once the first sync passed every check (or,
        if followed already, after a sync now), with its status: {registry,
        owner, followed_at, last_sync_at, last_provider, last_error,
        synced_changes, lying_providers, records, descriptor}. Needs an admin
        token. NotFound when nobody published the name; PolicyDenied when it
        is not public; Conflict when the node hosts it itself or follows as
        many as it may; Unavailable when it runs no DHT or no provider gave a
        verifiable answer. Only a running node follows, so ``LocalRegistry``
        has no such method."""
        return self.request("PUT", f"/v1/follows/{_seg(name)}")[2]

    def unfollow(self, name: str) -> dict[str, Any]:
        """Stop following ``name`` and delete the node's copy: {registry,
        unfollowed: True}. NotFound when the node does not follow it."""
        return self.request("DELETE", f"/v1/follows/{_seg(name)}")[2]

    def follows(self) -> list[dict[str, Any]]:
        """The statuses of the registries the node follows, by name (as ``follow`` returns them)."""
        return self._get("/v1/follows")["follows"]

    # ------------------------------------------------------------------ peers (node/federation.py)

    def peers(self) -> dict[str, Any]:
        """The running node's federation peers: {peer_id (its own), connected,
        denied}. Unavailable when it runs no federation (--no-p2p)."""
        return self._get("/v1/peers")

    def deny_peers(self, peers: Sequence[str]) -> dict[str, Any]:
        """Cut ``peers`` (libp2p peer IDs) off and refuse them until
        ``allow_peers`` (an admin token): {denied, connected (the peers
        still connected after)}. ValidationError naming a bad ID by JSON
        pointer (``/peers/3``); Unavailable when the node runs no federation."""
        return self.request("POST", "/v1/peers/deny", body={"peers": list(peers)})[2]

    def allow_peers(self, peers: Sequence[str]) -> dict[str, Any]:
        """Take denied ``peers`` back; the node dials them at once: {allowed}."""
        return self.request("POST", "/v1/peers/allow", body={"peers": list(peers)})[2]

    def create_registry(self, name: str, kinds: Sequence[str], *, description: str = "",
                        write_policy: str = "open", conflict_policy: Any = "last-writer-wins",
                        replication: str = "federation", readers: Sequence[str] = (),
                        write_roles: Sequence[str] = (), actor: str | None = None) -> WriteResult:
        body: dict[str, Any] = {"name": name, "kinds": list(kinds), "description": description,
                                "write_policy": write_policy, "conflict_policy": conflict_policy,
                                "replication": replication}
        if readers:
            body["readers"] = list(readers)
        if write_roles:
            body["write_roles"] = list(write_roles)
        return _write_result(self.request("POST", "/v1/registries", body=body)[2])

    def kinds(self) -> list[dict[str, Any]]:
        return self._get("/v1/kinds")["kinds"]

    def kind(self, name: str, version: int | None = None) -> dict[str, Any]:
        return self._get(f"/v1/kinds/{_seg(name)}", version=version)

    def register_kind(self, name: str, version: int, schema: Mapping[str, Any], *, registry: str = "",
                      description: str = "", actor: str | None = None) -> WriteResult:
        body: dict[str, Any] = {"name": name, "version": version, "schema": dict(schema), "description": description}
        if registry:
            body["registry"] = registry
        return _write_result(self.request("POST", "/v1/kinds", body=body)[2])

    # ------------------------------------------------------------------ node

    def audit_log(self, *, since: int = 0, limit: int = 100, reverse: bool = False,
                  target: str | None = None) -> list[AuditEntry]:
        """``target`` (REGISTRY/ID) keeps the entries about one record."""
        data = self._get("/v1/audit", since=since, limit=limit, reverse=reverse or None, target=target)
        return [_audit_entry(e) for e in data["entries"]]

    def audit_verify(self) -> dict[str, Any]:
        return self._get("/v1/audit/verify")

    def identity(self) -> dict[str, Any]:
        return self._get("/v1/identity")

    def stats(self) -> dict[str, Any]:
        return self._get("/v1/stats")

    # ------------------------------------------------------------------ tokens (admin)

    def create_token(self, role: str, *, registry: str | None = None, expires_in: int | None = None,
                     name: str | None = None) -> dict[str, Any]:
        """A new token; the answer's ``token`` is its secret, shown this once."""
        body: dict[str, Any] = {"role": role}
        if registry is not None:
            body["registry"] = registry
        if expires_in is not None:
            body["expires_in"] = expires_in
        if name:
            body["name"] = name
        return self.request("POST", "/v1/tokens", body=body)[2]

    def list_tokens(self) -> list[dict[str, Any]]:
        return self._get("/v1/tokens")["tokens"]

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/tokens/{_seg(token_id)}")[2]


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _write_result(data: Mapping[str, Any]) -> WriteResult:
    return WriteResult(data["status"], data["registry"], data["id"], data["change_id"], data["feed_seq"],
                       data.get("record"))


def _feed_event(data: Mapping[str, Any]) -> FeedEvent:
    return FeedEvent(data["seq"], data["type"], data["registry"], data["record"], data["kind"], data["change"],
                     data["author"], tuple(data["hlc"]), data["origin"])  # type: ignore[arg-type]


def _audit_entry(data: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(data["seq"], data["at_ms"], data["actor"], data["action"], data["target"], data["reason"],
                      data["before"], data["after"], data["change"], bytes.fromhex(data["prev"]),
                      bytes.fromhex(data["hash"]))


__all__ = ["BridgeClient", "RegistryError"]
