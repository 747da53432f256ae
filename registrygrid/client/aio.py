"""AsyncBridgeClient: ``BridgeClient``'s methods as coroutines, for asyncio apps.

    from registrygrid.client import AsyncBridgeClient
    async with AsyncBridgeClient("http://127.0.0.1:8700", token="rgt_...") as grid:
        result = await grid.put("grid.tools", "tool", {"name": "ocr"})
        async for record in grid.iter_all("grid.tools"):
            ...
        async with grid.subscribe(since=result.feed_seq) as feed:
            async for event in feed:
                ...

Every method of ``BridgeClient`` is here with the same arguments and the
same answers (tests/test_client_sdk.py checks the signatures); iterators
(``iter_all``, ``iter_search``, ``iter_view``, ``iter_changes``) are async
generators and ``subscribe`` gives an async iterator. Requests, answers,
typed errors and the retry rules are the sync client's (calls.py, retry.py).

It runs on asyncio only: aiohttp needs an asyncio event loop (it is the
bridge's own HTTP library, so apps get no new dependency). Under trio, use
``BridgeClient`` in ``trio.to_thread.run_sync``, or trio-asyncio. One client
holds one ``aiohttp.ClientSession`` (a connection pool), made on first use
in the running loop; use it from that loop only, any number of tasks at
once, and close it (``async with`` or ``await close()``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import aiohttp
from yarl import URL

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


class AsyncBridgeClient:
    def __init__(self, url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 retry: RetryPolicy | None = None, on_retry: Callable[[Retrying], None] | None = None,
                 idempotency_keys: bool = True, session: aiohttp.ClientSession | None = None) -> None:
        """As ``BridgeClient``'s; ``session``, if given, is used (and not closed) instead of one of its own."""
        calls.check_url(url)
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.idempotency_keys = idempotency_keys
        self._session = session
        self._own_session = session is None
        self._rng = random.Random()

    @classmethod
    def for_home(cls, home: str | Path | Home | None = None, **kwargs: Any) -> AsyncBridgeClient:
        """The client of the node running on ``home`` (URL and token from HOME/bridge.json)."""
        url, token = calls.bridge_file(home)
        return cls(url, token=token, **kwargs)

    # ------------------------------------------------------------------ plumbing

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    def _timeout(self, read_s: float) -> aiohttp.ClientTimeout:
        # Per socket operation, as http.client's timeout in the sync client:
        # a long answer that keeps coming is not cut, a silent node is.
        return aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=read_s)

    async def request(self, method: str, path: str, *,
                      query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None, body: Any = None,
                      headers: Mapping[str, str] | None = None,
                      replayable: bool | None = None) -> tuple[int, dict[str, str], Any]:
        """As ``BridgeClient.request``."""
        return await self._request(method, path, query=query, body=body, headers=headers, replayable=replayable)

    async def _request(self, method: str, path: str, *,
                       query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None, body: Any = None,
                       headers: Mapping[str, str] | None = None, replayable: bool | None = None,
                       read_timeout: float | None = None) -> tuple[int, dict[str, str], Any]:
        req = calls.build(method, path, token=self.token, query=query, body=body, headers=headers,
                          replayable=replayable)
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                status, reply_headers, data = await self._exchange(req, read_timeout or self.timeout)
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
            await asyncio.sleep(delay)

    async def _exchange(self, req: calls.Request, read_s: float) -> tuple[int, dict[str, str], Any]:
        # aiohttp itself sends a GET, PUT or DELETE again once when a
        # kept-alive connection turns out closed (RFC 9112 9.3.1.1).
        try:
            async with self._client_session().request(
                    req.method, URL(self.url + req.target, encoded=True), data=req.payload, headers=req.headers,
                    timeout=self._timeout(read_s), allow_redirects=False) as response:
                raw = await response.read()
                reply_headers = {k.lower(): v for k, v in response.headers.items()}
                return response.status, reply_headers, calls.decode(raw, reply_headers)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise NoAnswer(Unavailable(f"cannot reach the node's bridge at {self.url}: {exc}"), sent=False) from None
        except TimeoutError:  # aiohttp's SocketTimeoutError too
            raise Unavailable(f"the bridge at {self.url} did not answer {req.method} {req.path} within "
                              f"{read_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise NoAnswer(Unavailable(f"the bridge at {self.url} closed the connection: {exc!r}"),
                          sent=True) from None

    def _keyed(self, idempotency_key: str | None) -> dict[str, str]:
        return calls.keyed(idempotency_key, self.idempotency_keys)

    async def _get(self, path: str, **query: Any) -> Any:
        return (await self._request("GET", path, query=query))[2]

    async def _write(self, method: str, path: str, body: Any = None,
                     headers: Mapping[str, str] | None = None) -> WriteResult:
        return calls.write_result((await self._request(method, path, body=body, headers=headers))[2])

    # ------------------------------------------------------------------ writes (as LocalRegistry)

    async def put(self, registry: str, kind: str, fields: Mapping[str, Any], *, id: str | None = None,
                  tags: Sequence[str] = (), links: Sequence[Mapping[str, str]] = (), schema: int | None = None,
                  actor: str | None = None, idempotency_key: str | None = None) -> WriteResult:
        body = calls.record_body(kind, fields, id=id, tags=tags, links=links, schema=schema)
        return await self._write("POST", calls.records_path(registry), body, self._keyed(idempotency_key))

    async def update(self, registry: str, id: str, *, fields: Mapping[str, Any] | None = None,
                     patch: Mapping[str, Any] | None = None, tags: Sequence[str] | None = None,
                     links: Sequence[Mapping[str, str]] | None = None, schema: int | None = None,
                     if_match: str | None = None, actor: str | None = None) -> WriteResult:
        method, body = calls.update_request(fields=fields, patch=patch, tags=tags, links=links, schema=schema)
        return await self._write(method, calls.record_path(registry, id), body, calls.if_match(if_match))

    async def delete(self, registry: str, id: str, *, if_match: str | None = None,
                     actor: str | None = None) -> WriteResult:
        return await self._write("DELETE", calls.record_path(registry, id), headers=calls.if_match(if_match))

    async def erase(self, registry: str, id: str, *, reason: str = "", blobs: Sequence[str] = (),
                    actor: str | None = None, idempotency_key: str | None = None) -> WriteResult:
        return await self._write("POST", f"{calls.record_path(registry, id)}/erase",
                                 calls.erase_body(reason, blobs), self._keyed(idempotency_key))

    async def erasures(self) -> list[dict[str, Any]]:
        return (await self._get("/v1/erasures"))["items"]  # type: ignore[no-any-return]

    async def erased_places(self) -> dict[str, Any]:
        return await self._get("/v1/erasures/places")  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ disputes

    async def disputes(self, *, status: str | None = None) -> list[dict[str, Any]]:
        return (await self._get("/v1/disputes", status=status))["items"]  # type: ignore[no-any-return]

    async def dispute(self, id: str) -> dict[str, Any]:
        return await self._get(f"/v1/disputes/{calls.seg(id)}")  # type: ignore[no-any-return]

    async def resolve_dispute(self, id: str, *, value: Any = ABSENT, removed: bool = False, note: str = "",
                              actor: str | None = None, idempotency_key: str | None = None) -> WriteResult:
        return await self._write("POST", f"/v1/disputes/{calls.seg(id)}/resolve",
                                 calls.resolution_body(value=value, removed=removed, note=note),
                                 self._keyed(idempotency_key))

    # ------------------------------------------------------------------ reads

    async def get(self, registry: str, id: str, *, include_deleted: bool = False) -> dict[str, Any]:
        return await self._get(calls.record_path(registry, id),  # type: ignore[no-any-return]
                               include_deleted=include_deleted or None)

    async def list(self, registry: str | None = None, *, kind: str | None = None, tag: str | None = None,
                   owner: str | None = None, where: Sequence[tuple[str, str, Any]] = (), limit: int = 100,
                   cursor: str | None = None, include_deleted: bool = False,
                   conflicted: bool = False) -> Page:
        query = calls.list_query(kind=kind, tag=tag, owner=owner, where=where, limit=limit, cursor=cursor,
                                 include_deleted=include_deleted, conflicted=conflicted)
        data = (await self._request("GET", calls.records_path(registry), query=query))[2]
        return Page(data["items"], data["next_cursor"])

    async def iter_all(self, registry: str | None = None, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        cursor = None
        while True:
            page = await self.list(registry, cursor=cursor, limit=MAX_PAGE, **filters)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def history(self, registry: str, id: str) -> list[dict[str, Any]]:
        return (await self._get(f"{calls.record_path(registry, id)}/history"))["history"]  # type: ignore[no-any-return]

    async def changes(self, since: int = 0, *, limit: int = 1000, registry: str | None = None,
                      kind: str | None = None, wait: float | None = None) -> list[FeedEvent]:
        while True:  # a filtered page may look at a slice with no match: read on (calls.next_page)
            data = await self._get("/v1/changes", **calls.changes_query(since, limit=limit, registry=registry,
                                                                         kind=kind, wait=wait))
            after = calls.next_page(data, since)
            if data["events"] or after is None:
                return [calls.feed_event(e) for e in data["events"]]
            since = after

    async def iter_changes(self, since: int = 0, *, registry: str | None = None, kind: str | None = None,
                           limit: int = 1000) -> AsyncIterator[FeedEvent]:
        while True:
            data = await self._get("/v1/changes", **calls.changes_query(since, limit=limit, registry=registry,
                                                                         kind=kind))
            for event in data["events"]:
                yield calls.feed_event(event)
            after = calls.next_page(data, since)
            if after is None:
                return
            since = after

    def subscribe(self, since: int = 0, *, registry: str | None = None, kind: str | None = None,
                  max_reconnects: int | None = None, idle_timeout: float = STREAM_IDLE_S) -> AsyncSubscription:
        """As ``BridgeClient.subscribe``: ``async for event in client.subscribe(...)``."""
        return AsyncSubscription(self, since, registry=registry, kind=kind, max_reconnects=max_reconnects,
                                 idle_timeout=idle_timeout)

    async def feed_head(self) -> int:
        return int((await self._get("/v1/changes", since=0, limit=1))["head"])

    # ------------------------------------------------------------------ search

    async def search(self, query: Mapping[str, Any]) -> dict[str, Any]:
        return (await self._request("POST", "/v1/search", body=dict(query),  # type: ignore[no-any-return]
                                    replayable=True))[2]

    async def iter_search(self, query: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        cursor = query.get("cursor")
        while True:
            answer = await self.search({**query, "cursor": cursor} if cursor is not None else query)
            for item in answer["items"]:
                yield item
            if answer.get("next_cursor") in (None, cursor):
                return
            cursor = answer["next_cursor"]

    async def search_fields(self) -> list[dict[str, Any]]:
        return (await self._get("/v1/search/fields"))["fields"]  # type: ignore[no-any-return]

    async def index_status(self) -> dict[str, Any]:
        return await self._get("/v1/index")  # type: ignore[no-any-return]

    async def rebuild_index(self, *, timeout: float = REBUILD_TIMEOUT_S) -> dict[str, Any]:
        return (await self._request("POST", "/v1/index/rebuild",  # type: ignore[no-any-return]
                                    read_timeout=max(timeout, self.timeout)))[2]

    # ------------------------------------------------------------------ saved views

    async def views(self) -> list[dict[str, Any]]:
        return (await self._get("/v1/views"))["views"]  # type: ignore[no-any-return]

    async def view(self, name: str, *, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        return await self._get(f"/v1/views/{calls.seg(name)}", limit=limit,  # type: ignore[no-any-return]
                               cursor=cursor)

    async def iter_view(self, name: str, *, limit: int | None = None) -> AsyncIterator[dict[str, Any]]:
        cursor = None
        while True:
            answer = await self.view(name, limit=limit, cursor=cursor)
            for item in answer["items"]:
                yield item
            if answer.get("next_cursor") in (None, cursor):
                return
            cursor = answer["next_cursor"]

    async def put_view(self, name: str, query: Mapping[str, Any], *, description: str = "",
                       title: str | None = None) -> WriteResult:
        return await self._write("PUT", f"/v1/views/{calls.seg(name)}",
                                 calls.view_body(query, description=description, title=title))

    async def delete_view(self, name: str) -> WriteResult:
        return await self._write("DELETE", f"/v1/views/{calls.seg(name)}")

    async def view_events(self, name: str, *, after: str | None = None) -> dict[str, Any]:
        return await self._get(f"/v1/views/{calls.seg(name)}/events", after=after)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ registries and kinds

    async def registries(self) -> list[dict[str, Any]]:
        return (await self._get("/v1/registries"))["registries"]  # type: ignore[no-any-return]

    async def explain(self, subject: str, action: str, registry: str, record_id: str | None = None, *,
                      fields: Sequence[str] = (), local_roles: Sequence[str] = ()) -> dict[str, Any]:
        body = calls.explain_body(subject, action, registry, record_id, fields=fields, local_roles=local_roles)
        return (await self._request("POST", "/v1/policy/explain", body=body,  # type: ignore[no-any-return]
                                    replayable=True))[2]

    async def describe_registry(self, name: str) -> dict[str, Any]:
        return await self._get(f"/v1/registries/{calls.seg(name)}")  # type: ignore[no-any-return]

    async def resolve_registry(self, name: str, *, fresh: bool = False) -> dict[str, Any]:
        return await self._get(f"/v1/registries/{calls.seg(name)}/resolve",  # type: ignore[no-any-return]
                               fresh=fresh or None)

    async def read_remote(self, name: str, *, record_id: str | None = None) -> dict[str, Any]:
        return await self._get(f"/v1/registries/{calls.seg(name)}/remote",  # type: ignore[no-any-return]
                               record=record_id)

    # ------------------------------------------------------------------ follows

    async def follow(self, name: str) -> dict[str, Any]:
        return (await self._request("PUT", f"/v1/follows/{calls.seg(name)}",  # type: ignore[no-any-return]
                                    replayable=True))[2]

    async def unfollow(self, name: str) -> dict[str, Any]:
        return (await self._request("DELETE", f"/v1/follows/{calls.seg(name)}"))[2]  # type: ignore[no-any-return]

    async def follows(self) -> list[dict[str, Any]]:
        return (await self._get("/v1/follows"))["follows"]  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ peers

    async def peers(self) -> dict[str, Any]:
        return await self._get("/v1/peers")  # type: ignore[no-any-return]

    async def deny_peers(self, peers: Sequence[str]) -> dict[str, Any]:
        return (await self._request("POST", "/v1/peers/deny",  # type: ignore[no-any-return]
                                    body={"peers": list(peers)}, replayable=True))[2]

    async def allow_peers(self, peers: Sequence[str]) -> dict[str, Any]:
        return (await self._request("POST", "/v1/peers/allow",  # type: ignore[no-any-return]
                                    body={"peers": list(peers)}, replayable=True))[2]

    async def create_registry(self, name: str, kinds: Sequence[str], *, description: str = "",
                              write_policy: str = "open", conflict_policy: Any = "last-writer-wins",
                              replication: str = "federation", readers: Sequence[str] = (),
                              write_roles: Sequence[str] = (), limits: Mapping[str, Any] | None = None,
                              actor: str | None = None, idempotency_key: str | None = None) -> WriteResult:
        body = calls.registry_body(name, kinds, description=description, write_policy=write_policy,
                                   conflict_policy=conflict_policy, replication=replication, readers=readers,
                                   write_roles=write_roles, limits=limits)
        return await self._write("POST", "/v1/registries", body, self._keyed(idempotency_key))

    async def kinds(self) -> list[dict[str, Any]]:
        return (await self._get("/v1/kinds"))["kinds"]  # type: ignore[no-any-return]

    async def kind(self, name: str, version: int | None = None) -> dict[str, Any]:
        return await self._get(f"/v1/kinds/{calls.seg(name)}", version=version)  # type: ignore[no-any-return]

    async def register_kind(self, name: str, version: int, schema: Mapping[str, Any], *, registry: str = "",
                            description: str = "", actor: str | None = None,
                            idempotency_key: str | None = None) -> WriteResult:
        body = calls.kind_body(name, version, schema, registry=registry, description=description)
        return await self._write("POST", "/v1/kinds", body, self._keyed(idempotency_key))

    # ------------------------------------------------------------------ node

    async def audit_log(self, *, since: int = 0, limit: int = 100, reverse: bool = False,
                        target: str | None = None) -> list[AuditEntry]:
        data = await self._get("/v1/audit", since=since, limit=limit, reverse=reverse or None, target=target)
        return [calls.audit_entry(e) for e in data["entries"]]

    async def audit_verify(self) -> dict[str, Any]:
        return await self._get("/v1/audit/verify")  # type: ignore[no-any-return]

    async def identity(self) -> dict[str, Any]:
        return await self._get("/v1/identity")  # type: ignore[no-any-return]

    async def stats(self) -> dict[str, Any]:
        return await self._get("/v1/stats")  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ tokens (admin)

    async def create_token(self, role: str, *, registry: str | None = None, expires_in: int | None = None,
                           name: str | None = None) -> dict[str, Any]:
        body = calls.token_body(role, registry=registry, expires_in=expires_in, name=name)
        return (await self._request("POST", "/v1/tokens", body=body))[2]  # type: ignore[no-any-return]

    async def list_tokens(self) -> list[dict[str, Any]]:
        return (await self._get("/v1/tokens"))["tokens"]  # type: ignore[no-any-return]

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        return (await self._request("DELETE", f"/v1/tokens/{calls.seg(token_id)}"))[2]  # type: ignore[no-any-return]


class AsyncSubscription:
    """As ``sync.Subscription``, for ``async for``; ``await close()`` (from
    the client's loop) or leaving ``async with`` ends it."""

    def __init__(self, client: AsyncBridgeClient, since: int = 0, *, registry: str | None = None,
                 kind: str | None = None, max_reconnects: int | None = None,
                 idle_timeout: float = STREAM_IDLE_S) -> None:
        self.cursor = since
        self.registry = registry
        self.kind = kind
        self.max_reconnects = max_reconnects
        self.idle_timeout = idle_timeout
        self.reconnects = 0  # connection attempts after the first
        self._client = client
        self._closed = asyncio.Event()
        self._response: aiohttp.ClientResponse | None = None

    def __aiter__(self) -> AsyncIterator[FeedEvent]:
        return self._events()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed.set()
        if self._response is not None:
            self._response.close()  # ends a read waiting on the stream

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def _events(self) -> AsyncIterator[FeedEvent]:
        client = self._client
        failures = 0
        hint_s: float | None = None
        while not self._closed.is_set():
            retry_after = None
            try:
                response = await self._open()
                failures = 0
                decoder = SseDecoder()
                while True:
                    chunk = await response.content.readany()
                    if not chunk:
                        break
                    for frame in decoder.feed(chunk):
                        event = calls.stream_event(frame.data)
                        if event is None or event.seq <= self.cursor:
                            continue
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
                    raise refused.error from None
                error, retry_after = refused.error, refused.retry_after
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                error = Unavailable(f"the changefeed stream from {client.url} broke: {exc!r}")
            finally:
                if self._response is not None:
                    self._response.close()
                    self._response = None
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
            try:
                await asyncio.wait_for(self._closed.wait(), delay)
            except TimeoutError:
                pass
            self.reconnects += 1

    async def _open(self) -> aiohttp.ClientResponse:
        client = self._client
        req = calls.build("GET", "/v1/changes", token=client.token, accept=calls.EVENT_STREAM,
                          query={"since": self.cursor, "registry": self.registry, "kind": self.kind},
                          headers={"Last-Event-ID": str(self.cursor)})
        try:
            response = await client._client_session().get(
                URL(client.url + req.target, encoded=True), headers=req.headers,
                timeout=client._timeout(self.idle_timeout), allow_redirects=False)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise NoAnswer(Unavailable(f"cannot reach the node's bridge at {client.url}: {exc}"), sent=False) from None
        self._response = response
        if response.status >= 400:
            reply_headers = {k.lower(): v for k, v in response.headers.items()}
            raise Refused(rebuild(response.status, calls.decode(await response.read(), reply_headers)),
                           parse_retry_after(reply_headers.get("retry-after"), time.time()))
        return response
