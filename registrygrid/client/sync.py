"""BridgeClient: the blocking client of a running node's HTTP bridge, shaped like the SDK.

    from registrygrid.client import BridgeClient
    with BridgeClient("http://127.0.0.1:8700", token="rgt_...") as grid:
        result = grid.put("grid.functions", "function", {"name": "resize", ...})
        record = grid.get("grid.functions", result.record_id)

Method names, arguments and return types match ``LocalRegistry`` (records,
pages, feed events, write results, audit entries), and errors are the same
typed ``RegistryError`` subclasses, rebuilt from the JSON error code, so
code written against the SDK runs against a node unchanged. The CLI uses
``BridgeClient.for_home(home)`` while a node runs on that home.

Calls are retried by ``RetryPolicy`` (retry.py: 429 always, 503 and lost
answers when the call is replayable, backoff with full jitter, Retry-After
obeyed). Creating writes (``put``, ``create_registry``, ``register_kind``,
``resolve_dispute``) carry an ``Idempotency-Key``, generated unless given,
so the bridge applies a retried one once. ``iter_all``, ``iter_search``,
``iter_view`` and ``iter_changes`` follow cursors page by page;
``subscribe`` follows the changefeed over SSE and resumes after a
disconnect (``Subscription``).

It is synchronous (``http.client``, one keep-alive connection), so it needs
no event loop and starts fast; it is not thread-safe: use one per thread
(a ``Subscription`` has a connection of its own and may run in another).
``actor`` arguments are accepted for signature compatibility but ignored:
the node records the token's holder as the actor, a client cannot claim
another name.
"""

from __future__ import annotations

import http.client
import logging
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from registrygrid.client import calls
from registrygrid.client.calls import (
    DEFAULT_TIMEOUT_S,
    REBUILD_TIMEOUT_S,
    STREAM_IDLE_S,
)
from registrygrid.client.retry import (
    NoAnswer,
    Refused,
    Retrying,
    RetryPolicy,
    parse_retry_after,
    retryable,
)
from registrygrid.client.sse import SseDecoder
from registrygrid.crdt.conflicts import ABSENT
from registrygrid.engine.ops import WriteResult
from registrygrid.errors import RegistryError, Unavailable
from registrygrid.home import Home
from registrygrid.node.bridge.errors import rebuild
from registrygrid.sdk import MAX_PAGE, Page
from registrygrid.storage.audit import AuditEntry
from registrygrid.storage.feed import FeedEvent

log = logging.getLogger("registrygrid.client")

# Bytes per read of an event stream: a read returns what has arrived, up
# to this; 64 KiB holds a hundred feed events, one STREAM_BATCH of the
# bridge (500 events) in a few reads.
STREAM_READ = 64 * 1024


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether a kept-alive connection was closed by the server. An HTTP/1.1
    server sends nothing unasked, so a readable idle socket holds its EOF
    (urllib3's ``is_connection_dropped``). Checked before each reuse, so a
    connection the server closed long ago is never mistaken for a request
    whose answer was lost: that one only a replayable call may send again."""
    sock = conn.sock
    if sock is None:
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


class BridgeClient:
    def __init__(self, url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 retry: RetryPolicy | None = None, on_retry: Callable[[Retrying], None] | None = None,
                 idempotency_keys: bool = True) -> None:
        """``retry`` (default ``RetryPolicy()``; ``NO_RETRY`` for none) and
        ``on_retry``, called before each wait (for an app's metrics or logs).

        ``idempotency_keys``: give every creating write a key when the caller
        gives none. A keyed write costs the bridge two more synchronous LMDB
        commits (reserve, then the answer: storage/idempotency.py), outside
        the group commit: measured here, 2.5 -> 4.8 ms per sequential write
        and 680 -> 360 writes/s from 8 threads. A bulk loader that can tell
        a lost write by itself (it names its ids: a retry answers
        AlreadyExists) may turn them off; its lost answers are then raised."""
        parts = calls.check_url(url)
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.idempotency_keys = idempotency_keys
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._conn: http.client.HTTPConnection | None = None
        self._rng = random.Random()

    @classmethod
    def for_home(cls, home: str | Path | Home | None = None, **kwargs: Any) -> BridgeClient:
        """The client of the node running on ``home`` (URL and token from HOME/bridge.json)."""
        url, token = calls.bridge_file(home)
        return cls(url, token=token, **kwargs)

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _new_connection(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        assert self._host is not None
        return cls(self._host, self._port, timeout=timeout)

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
                body: Any = None, headers: Mapping[str, str] | None = None,
                replayable: bool | None = None) -> tuple[int, dict[str, str], Any]:
        """One call, retried as ``self.retry`` allows; returns (status, headers,
        decoded JSON) or raises the typed error it answered. ``replayable``
        (default: GET, or a request with an Idempotency-Key) says whether it
        may be sent again after a 503 or a lost answer (retry.py)."""
        req = calls.build(method, path, token=self.token, query=query, body=body, headers=headers,
                          replayable=replayable)
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                status, reply_headers, data = self._exchange(req)
            except NoAnswer as failed:
                error, answered, sent = failed.error, None, failed.sent
            else:
                if status < 400:
                    return status, reply_headers, data
                error, answered, sent = rebuild(status, data), status, True
                retry_after = parse_retry_after(reply_headers.get("retry-after"), time.time())
            delay = None
            if retryable(status=answered, code=error.code, sent=sent, replayable=req.replayable,
                         rate_limits_only=self.retry.rate_limits_only):
                delay = self.retry.delay(attempt, self._rng, retry_after=retry_after)
            if delay is None:
                raise error
            log.debug("%s %s: attempt %d failed (%s); retrying in %.2f s", method, path, attempt, error.code, delay)
            if self.on_retry is not None:
                self.on_retry(Retrying(method, path, attempt, delay, error))
            time.sleep(delay)

    def _exchange(self, req: calls.Request) -> tuple[int, dict[str, str], Any]:
        """One attempt. Raises NoAnswer when no answer came (retry.py decides),
        Unavailable on a timeout (never retried: the node may be working on it)."""
        if self._conn is not None and _dropped(self._conn):
            self.close()  # the server closed it while it idled (aiohttp's server: after 75 s)
        conn = self._conn
        if conn is None:
            conn = self._conn = self._new_connection(self.timeout)
            try:
                conn.connect()
            except OSError as exc:  # refused, unreachable, no such host, connect timeout
                self.close()
                raise NoAnswer(Unavailable(f"cannot reach the node's bridge at {self.url}: {exc}"),
                              sent=False) from None
        try:
            conn.request(req.method, req.target, body=req.payload, headers=req.headers)
            response = conn.getresponse()
            raw = response.read()
        except TimeoutError:
            self.close()
            raise Unavailable(f"the bridge at {self.url} did not answer {req.method} {req.path} within "
                              f"{self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as exc:
            self.close()
            raise NoAnswer(Unavailable(f"the bridge at {self.url} closed the connection: {exc!r}"),
                          sent=True) from None
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, reply_headers, calls.decode(raw, reply_headers)

    def _keyed(self, idempotency_key: str | None) -> dict[str, str]:
        return calls.keyed(idempotency_key, self.idempotency_keys)

    def _get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)[2]

    def _write(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None,
               ) -> WriteResult:
        return calls.write_result(self.request(method, path, body=body, headers=headers)[2])

    # ------------------------------------------------------------------ writes (as LocalRegistry)

    def put(self, registry: str, kind: str, fields: Mapping[str, Any], *, id: str | None = None,
            tags: Sequence[str] = (), links: Sequence[Mapping[str, str]] = (), schema: int | None = None,
            actor: str | None = None, idempotency_key: str | None = None) -> WriteResult:
        """Create a record. ``idempotency_key`` (generated if not given) makes
        a retry of this write, by this client or by the caller with the same
        key, get the first answer instead of writing again."""
        body = calls.record_body(kind, fields, id=id, tags=tags, links=links, schema=schema)
        return self._write("POST", calls.records_path(registry), body, self._keyed(idempotency_key))

    def update(self, registry: str, id: str, *, fields: Mapping[str, Any] | None = None,
               patch: Mapping[str, Any] | None = None, tags: Sequence[str] | None = None,
               links: Sequence[Mapping[str, str]] | None = None, schema: int | None = None,
               if_match: str | None = None, actor: str | None = None) -> WriteResult:
        method, body = calls.update_request(fields=fields, patch=patch, tags=tags, links=links, schema=schema)
        return self._write(method, calls.record_path(registry, id), body, calls.if_match(if_match))

    def delete(self, registry: str, id: str, *, if_match: str | None = None, actor: str | None = None) -> WriteResult:
        return self._write("DELETE", calls.record_path(registry, id), headers=calls.if_match(if_match))

    def erase(self, registry: str, id: str, *, reason: str = "", blobs: Sequence[str] = (),
              actor: str | None = None, idempotency_key: str | None = None) -> WriteResult:
        """Erase a record's whole history on the node and ask every node to
        (docs/erasure.md); the result names the erasure notice."""
        return self._write("POST", f"{calls.record_path(registry, id)}/erase",
                           calls.erase_body(reason, blobs), self._keyed(idempotency_key))

    def erasures(self) -> list[dict[str, Any]]:
        """Records erasure notices name on the node, and what became of each."""
        return self._get("/v1/erasures")["items"]  # type: ignore[no-any-return]

    def erased_places(self) -> dict[str, Any]:
        """Places of chains the node holds without their bytes, run by run,
        and the supplements it owes (LocalRegistry.erased_places)."""
        return self._get("/v1/erasures/places")  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ disputes (docs/conflicts.md)

    def disputes(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Field disputes (manual conflict rule) and equivocations the node knows."""
        return self._get("/v1/disputes", status=status)["items"]  # type: ignore[no-any-return]

    def dispute(self, id: str) -> dict[str, Any]:
        """One dispute in full: competing writes or envelopes, a diff, its resolutions."""
        return self._get(f"/v1/disputes/{calls.seg(id)}")  # type: ignore[no-any-return]

    def resolve_dispute(self, id: str, *, value: Any = ABSENT, removed: bool = False, note: str = "",
                        actor: str | None = None, idempotency_key: str | None = None) -> WriteResult:
        """File a resolution signed by the node's key, as ``LocalRegistry.resolve_dispute``
        (``removed`` wins over ``value`` there too)."""
        return self._write("POST", f"/v1/disputes/{calls.seg(id)}/resolve",
                           calls.resolution_body(value=value, removed=removed, note=note),
                           self._keyed(idempotency_key))

    # ------------------------------------------------------------------ reads

    def get(self, registry: str, id: str, *, include_deleted: bool = False) -> dict[str, Any]:
        return self._get(calls.record_path(registry, id),  # type: ignore[no-any-return]
                         include_deleted=include_deleted or None)

    def list(self, registry: str | None = None, *, kind: str | None = None, tag: str | None = None,
             owner: str | None = None, where: Sequence[tuple[str, str, Any]] = (), limit: int = 100,
             cursor: str | None = None, include_deleted: bool = False,
             conflicted: bool = False) -> Page:
        query = calls.list_query(kind=kind, tag=tag, owner=owner, where=where, limit=limit, cursor=cursor,
                                 include_deleted=include_deleted, conflicted=conflicted)
        data = self.request("GET", calls.records_path(registry), query=query)[2]
        return Page(data["items"], data["next_cursor"])

    def iter_all(self, registry: str | None = None, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every record ``list`` would page through, a page of 1,000 at a time
        (filters as ``list``'s); a retried page resumes at its own cursor."""
        cursor = None
        while True:
            page = self.list(registry, cursor=cursor, limit=MAX_PAGE, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def history(self, registry: str, id: str) -> list[dict[str, Any]]:
        return self._get(f"{calls.record_path(registry, id)}/history")["history"]  # type: ignore[no-any-return]

    def changes(self, since: int = 0, *, limit: int = 1000, registry: str | None = None,
                kind: str | None = None, wait: float | None = None) -> list[FeedEvent]:
        while True:  # a filtered page may look at a slice with no match: read on (calls.next_page)
            data = self._get("/v1/changes", **calls.changes_query(since, limit=limit, registry=registry, kind=kind,
                                                                   wait=wait))
            after = calls.next_page(data, since)
            if data["events"] or after is None:
                return [calls.feed_event(e) for e in data["events"]]
            since = after

    def iter_changes(self, since: int = 0, *, registry: str | None = None, kind: str | None = None,
                     limit: int = 1000) -> Iterator[FeedEvent]:
        """The feed after ``since`` up to its current head, page by page
        (``subscribe`` keeps following it after that)."""
        while True:
            data = self._get("/v1/changes", **calls.changes_query(since, limit=limit, registry=registry, kind=kind))
            for event in data["events"]:
                yield calls.feed_event(event)
            after = calls.next_page(data, since)
            if after is None:
                return
            since = after

    def subscribe(self, since: int = 0, *, registry: str | None = None, kind: str | None = None,
                  max_reconnects: int | None = None, idle_timeout: float = STREAM_IDLE_S) -> Subscription:
        """The changefeed after ``since``, live, over SSE: iterate the answer
        for ``FeedEvent``s; it reconnects after any disconnect and resumes
        after the last event it handed out (``Subscription``)."""
        return Subscription(self, since, registry=registry, kind=kind, max_reconnects=max_reconnects,
                            idle_timeout=idle_timeout)

    def feed_head(self) -> int:
        return int(self._get("/v1/changes", since=0, limit=1)["head"])

    # ------------------------------------------------------------------ search (registrygrid/search)

    def search(self, query: Mapping[str, Any]) -> dict[str, Any]:
        """The node's answer to a query in the search language (search/query.py:
        text, filter, registries, sort, facets, limit, cursor, weights,
        boosts, explain, federated): {items: [{registry, id, score, record,
        sort_value?, explain?}], total, facets, next_cursor, indexed_through}.
        Pass an answer's next_cursor as the next query's cursor for the next
        page (``iter_search`` does). A federated query (``"federated": true`` or ``{"deadline_ms":
        N}``) also asks the node's peers: its items name their ``sources``
        and the answer reports each source (``sources``); one page only.
        ValidationError names a malformed part (``details[0]["path"]``);
        Unavailable when the node was started with --no-search."""
        return self.request("POST", "/v1/search", body=dict(query),  # type: ignore[no-any-return]
                            replayable=True)[2]

    def iter_search(self, query: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item of every page of ``query``'s answer, following next_cursor."""
        cursor = query.get("cursor")
        while True:
            answer = self.search({**query, "cursor": cursor} if cursor is not None else query)
            yield from answer["items"]
            if answer.get("next_cursor") in (None, cursor):
                return
            cursor = answer["next_cursor"]

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
        return self._get(f"/v1/views/{calls.seg(name)}", limit=limit, cursor=cursor)  # type: ignore[no-any-return]

    def iter_view(self, name: str, *, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Every result of view ``name``, following next_cursor page by page."""
        cursor = None
        while True:
            answer = self.view(name, limit=limit, cursor=cursor)
            yield from answer["items"]
            if answer.get("next_cursor") in (None, cursor):
                return
            cursor = answer["next_cursor"]

    def put_view(self, name: str, query: Mapping[str, Any], *, description: str = "",
                 title: str | None = None) -> WriteResult:
        """Create or replace view ``name`` (ValidationError names a bad part of
        the query, under /query)."""
        return self._write("PUT", f"/v1/views/{calls.seg(name)}",
                           calls.view_body(query, description=description, title=title))

    def delete_view(self, name: str) -> WriteResult:
        return self._write("DELETE", f"/v1/views/{calls.seg(name)}")

    def view_events(self, name: str, *, after: str | None = None) -> dict[str, Any]:
        """A materialized view's changes after an event id: {events, reset, last_id}."""
        return self._get(f"/v1/views/{calls.seg(name)}/events", after=after)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ registries and kinds

    def registries(self) -> list[dict[str, Any]]:
        return self._get("/v1/registries")["registries"]  # type: ignore[no-any-return]

    def explain(self, subject: str, action: str, registry: str, record_id: str | None = None, *,
                fields: Sequence[str] = (), local_roles: Sequence[str] = ()) -> dict[str, Any]:
        body = calls.explain_body(subject, action, registry, record_id, fields=fields, local_roles=local_roles)
        return self.request("POST", "/v1/policy/explain", body=body,  # type: ignore[no-any-return]
                            replayable=True)[2]  # it writes nothing

    def describe_registry(self, name: str) -> dict[str, Any]:
        return self._get(f"/v1/registries/{calls.seg(name)}")  # type: ignore[no-any-return]

    def resolve_registry(self, name: str, *, fresh: bool = False) -> dict[str, Any]:
        """``name`` in the registry of registries (the node's Kademlia DHT):
        its signed descriptor, verified, and the nodes that host it, with
        ``source`` "dht" or "cache" (the node reuses an answer for a minute;
        ``fresh`` asks the DHT anyway). Only a running node has a DHT, so
        ``LocalRegistry`` has no such method. NotFound when nobody published
        the name; Unavailable when the node runs no DHT or the lookup timed out."""
        return self._get(f"/v1/registries/{calls.seg(name)}/resolve",  # type: ignore[no-any-return]
                         fresh=fresh or None)

    def read_remote(self, name: str, *, record_id: str | None = None) -> dict[str, Any]:
        """A public registry that another federation hosts, read by the node
        from one of its providers and verified change by change (node/remote_read.py):
        {registry, provider, owner, verified, records}, ``records`` all its
        live records or, with ``record_id``, that one. Only a running node
        reaches other federations, so ``LocalRegistry`` has no such method.
        NotFound when nobody published the name (or no such record);
        PolicyDenied when it is not public; Unavailable when the node runs no
        DHT or no provider gave a verifiable answer (``details["refusals"]``)."""
        return self._get(f"/v1/registries/{calls.seg(name)}/remote", record=record_id)  # type: ignore[no-any-return]

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
        # Replayable: following a followed registry syncs it again, nothing more.
        return self.request("PUT", f"/v1/follows/{calls.seg(name)}",  # type: ignore[no-any-return]
                            replayable=True)[2]

    def unfollow(self, name: str) -> dict[str, Any]:
        """Stop following ``name`` and delete the node's copy: {registry,
        unfollowed: True}. NotFound when the node does not follow it."""
        return self.request("DELETE", f"/v1/follows/{calls.seg(name)}")[2]  # type: ignore[no-any-return]

    def follows(self) -> list[dict[str, Any]]:
        """The statuses of the registries the node follows, by name (as ``follow`` returns them)."""
        return self._get("/v1/follows")["follows"]  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ peers (node/federation.py)

    def peers(self) -> dict[str, Any]:
        """The running node's federation peers: {peer_id (its own), connected,
        denied}. Unavailable when it runs no federation (--no-p2p)."""
        return self._get("/v1/peers")  # type: ignore[no-any-return]

    def deny_peers(self, peers: Sequence[str]) -> dict[str, Any]:
        """Cut ``peers`` (libp2p peer IDs) off and refuse them until
        ``allow_peers`` (an admin token): {denied, connected (the peers
        still connected after)}. ValidationError naming a bad ID by JSON
        pointer (``/peers/3``); Unavailable when the node runs no federation."""
        return self.request("POST", "/v1/peers/deny", body={"peers": list(peers)},  # type: ignore[no-any-return]
                            replayable=True)[2]  # denying a denied peer again changes nothing

    def allow_peers(self, peers: Sequence[str]) -> dict[str, Any]:
        """Take denied ``peers`` back; the node dials them at once: {allowed}."""
        return self.request("POST", "/v1/peers/allow", body={"peers": list(peers)},  # type: ignore[no-any-return]
                            replayable=True)[2]

    def create_registry(self, name: str, kinds: Sequence[str], *, description: str = "",
                        write_policy: str = "open", conflict_policy: Any = "last-writer-wins",
                        replication: str = "federation", readers: Sequence[str] = (),
                        write_roles: Sequence[str] = (), limits: Mapping[str, Any] | None = None,
                        actor: str | None = None, idempotency_key: str | None = None) -> WriteResult:
        """``limits``: ``{"max_record_bytes": int, "max_changes_per_second_per_org": float}``,
        either optional (as LocalRegistry.create_registry)."""
        body = calls.registry_body(name, kinds, description=description, write_policy=write_policy,
                                   conflict_policy=conflict_policy, replication=replication, readers=readers,
                                   write_roles=write_roles, limits=limits)
        return self._write("POST", "/v1/registries", body, self._keyed(idempotency_key))

    def kinds(self) -> list[dict[str, Any]]:
        return self._get("/v1/kinds")["kinds"]  # type: ignore[no-any-return]

    def kind(self, name: str, version: int | None = None) -> dict[str, Any]:
        return self._get(f"/v1/kinds/{calls.seg(name)}", version=version)  # type: ignore[no-any-return]

    def register_kind(self, name: str, version: int, schema: Mapping[str, Any], *, registry: str = "",
                      description: str = "", actor: str | None = None,
                      idempotency_key: str | None = None) -> WriteResult:
        body = calls.kind_body(name, version, schema, registry=registry, description=description)
        return self._write("POST", "/v1/kinds", body, self._keyed(idempotency_key))

    # ------------------------------------------------------------------ node

    def audit_log(self, *, since: int = 0, limit: int = 100, reverse: bool = False,
                  target: str | None = None) -> list[AuditEntry]:
        """``target`` (REGISTRY/ID) keeps the entries about one record."""
        data = self._get("/v1/audit", since=since, limit=limit, reverse=reverse or None, target=target)
        return [calls.audit_entry(e) for e in data["entries"]]

    def audit_verify(self) -> dict[str, Any]:
        return self._get("/v1/audit/verify")  # type: ignore[no-any-return]

    def identity(self) -> dict[str, Any]:
        return self._get("/v1/identity")  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return self._get("/v1/stats")  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ tokens (admin)

    def create_token(self, role: str, *, registry: str | None = None, expires_in: int | None = None,
                     name: str | None = None) -> dict[str, Any]:
        """A new token; the answer's ``token`` is its secret, shown this once."""
        body = calls.token_body(role, registry=registry, expires_in=expires_in, name=name)
        return self.request("POST", "/v1/tokens", body=body)[2]  # type: ignore[no-any-return]

    def list_tokens(self) -> list[dict[str, Any]]:
        return self._get("/v1/tokens")["tokens"]  # type: ignore[no-any-return]

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/tokens/{calls.seg(token_id)}")[2]  # type: ignore[no-any-return]


class Subscription:
    """A live changefeed over Server-Sent Events, resumed after every disconnect.

    Iterate it (once) for ``FeedEvent``s in feed order. When the stream
    ends or breaks (the node restarts, a proxy cuts it, nothing arrives for
    ``idle_timeout``), it reconnects with backoff and full jitter (the
    client's ``RetryPolicy``, its base raised to the stream's ``retry:``
    hint) and sends ``Last-Event-ID``: the bridge resumes after the last
    event handed out, and any event it sends again is dropped here, so no
    event is lost or handed out twice (feed sequences are dense and never
    reused: storage/feed.py). It gives up (raising the last error) after
    ``max_reconnects`` failed attempts in a row (None: never, as a browser's
    EventSource); an error no wait can fix (401, 403, 404, 422) is raised at once.

    ``close()``, from any thread, ends the iteration; so does leaving a
    ``with`` block or breaking out of the loop. ``cursor`` is the sequence
    of the last event handed out: keep it to resume in another process.
    """

    def __init__(self, client: BridgeClient, since: int = 0, *, registry: str | None = None,
                 kind: str | None = None, max_reconnects: int | None = None,
                 idle_timeout: float = STREAM_IDLE_S) -> None:
        self.cursor = since
        self.registry = registry
        self.kind = kind
        self.max_reconnects = max_reconnects
        self.idle_timeout = idle_timeout
        self.reconnects = 0  # connection attempts after the first
        self._client = client
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None

    def __iter__(self) -> Iterator[FeedEvent]:
        return self._events()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            try:  # wakes a read blocked on the socket; the reading thread closes it
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _events(self) -> Iterator[FeedEvent]:
        client = self._client
        failures = 0
        hint_s: float | None = None  # the stream's retry: field
        while not self._closed.is_set():
            retry_after = None
            try:
                response = self._open()
                failures = 0
                decoder = SseDecoder()
                while True:
                    chunk = response.read1(STREAM_READ)
                    if not chunk:
                        break
                    for frame in decoder.feed(chunk):
                        event = calls.stream_event(frame.data)
                        if event is None or event.seq <= self.cursor:
                            continue  # not a feed event, or one handed out before a reconnect
                        self.cursor = event.seq
                        yield event
                    if decoder.retry_ms is not None:
                        hint_s = decoder.retry_ms / 1000
                error: RegistryError = Unavailable(f"the node's bridge at {client.url} ended the changefeed stream")
            except NoAnswer as failed:
                error = failed.error
            except Refused as refused:
                if not retryable(status=refused.error.http_status, code=refused.error.code, sent=True,
                                 replayable=True):
                    raise refused.error from None  # 401, 403, 404, 422: no wait fixes it
                error, retry_after = refused.error, refused.retry_after
            except (http.client.HTTPException, OSError, ValueError) as exc:  # cut mid-stream, idle, oversized line
                error = Unavailable(f"the changefeed stream from {client.url} broke: {exc!r}")
            finally:
                self._drop()
            if self._closed.is_set():
                return
            failures += 1
            delay = client.retry.reconnect(failures, client._rng, retry_after=retry_after, hint_s=hint_s,
                                           max_reconnects=self.max_reconnects)
            if delay is None:
                raise error
            log.debug("changefeed stream lost (%s); reconnecting in %.2f s after seq %d", error.code, delay,
                      self.cursor)
            if client.on_retry is not None:
                client.on_retry(Retrying("GET", "/v1/changes", failures, delay, error))
            self._closed.wait(delay)
            self.reconnects += 1

    def _open(self) -> http.client.HTTPResponse:
        client = self._client
        req = calls.build("GET", "/v1/changes", token=client.token, accept=calls.EVENT_STREAM,
                          query={"since": self.cursor, "registry": self.registry, "kind": self.kind},
                          headers={"Last-Event-ID": str(self.cursor)})
        conn = client._new_connection(client.timeout)
        with self._lock:
            self._conn = conn
        try:
            conn.connect()
        except OSError as exc:
            raise NoAnswer(Unavailable(f"cannot reach the node's bridge at {client.url}: {exc}"), sent=False) from None
        if self._closed.is_set():  # closed while connecting: close() found no socket to shut down
            raise NoAnswer(Unavailable("subscription closed"), sent=False)
        conn.request(req.method, req.target, headers=req.headers)
        response = conn.getresponse()
        if response.status >= 400:
            reply_headers = {k.lower(): v for k, v in response.getheaders()}
            raise Refused(rebuild(response.status, calls.decode(response.read(), reply_headers)),
                           parse_retry_after(reply_headers.get("retry-after"), time.time()))
        assert conn.sock is not None
        conn.sock.settimeout(self.idle_timeout)  # from here on, silence means a dead stream
        return response

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
