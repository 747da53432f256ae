"""The bridge's routes: REST under /v1, the changefeed, health, metrics.

Handlers run on the bridge's asyncio loop thread (see ``runtime.py``).
Reads go straight to LMDB through the node's ``LocalRegistry`` (read
transactions are safe from any thread and cost microseconds, so they run
inline on the loop); writes go through ``Api.submit``, which crosses into
the node's trio committer; a registry resolve goes through ``Api.resolve``,
which runs the DHT lookup in the node's trio world, and a read of another
federation's public registry through ``Api.read_remote``, which runs the
node's ``RemoteReader`` there. A follow and an unfollow of such a registry
cross the same way (``Api.follow``, ``Api.unfollow``); reads of a registry
this node follows (``Api.followed``: a verified copy in a store of its own,
node/follow.py) are answered from that copy by the ordinary record routes,
with ``X-Registry-Source: followed``, when the node's own store does not
hold the registry. Searches ask the node's search component (``Api.search``:
search/service.py) on an executor thread. The operator's peer controls
(deny and allow peers, and the list of connected and denied ones) cross
into trio too (``Api.deny_peers``, ``Api.allow_peers``, ``Api.peer_status``:
node/federation.py). Every handler checks
its token first, parses and validates its input (query parameters by hand,
JSON bodies against the OpenAPI document's own schemas), and lets typed
errors escape: the middleware turns each into the JSON error shape with its
status.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from registrygrid import dispute_views
from registrygrid.blobs.ranges import RangeNotSatisfiable
from registrygrid.crdt.conflicts import ABSENT
from registrygrid.crdt.disputes import DISPUTES_REGISTRY, RESOLUTION_KIND
from registrygrid.engine import registries as regs
from registrygrid.engine.erasure import ERASURES_REGISTRY
from registrygrid.engine.ops import (
    Delete,
    Erase,
    Operation,
    Outcome,
    Put,
    Remembered,
    Update,
    WriteResult,
)
from registrygrid.errors import (
    AlreadyExists,
    Conflict,
    Disabled,
    MalformedInput,
    NotFound,
    PolicyDenied,
    RateLimited,
    RegistryError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnknownRegistry,
    ValidationError,
)
from registrygrid.formats import mcp_registry
from registrygrid.jsonkeys import repeated_name
from registrygrid.node.bridge import openapi, streaming
from registrygrid.node.bridge.audit import AuditBuffer
from registrygrid.node.bridge.auth import ADMIN, READ, WRITE, Authenticator, is_loopback
from registrygrid.node.bridge.conditional import not_modified
from registrygrid.node.bridge.errors import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InternalError,
    MethodNotAllowed,
    PreconditionFailed,
    RouteNotFound,
    error_body,
)
from registrygrid.node.bridge.http_log import AnswerCut
from registrygrid.node.bridge.metrics import BridgeMetrics
from registrygrid.node.bridge.streaming import (
    MAX_WAIT_S,
    STILL_ALLOWED,
    TRACE_ID,
    FeedHub,
    FeedReader,
    SlowClient,
    long_poll,
    serve_sse,
    sse_headers,
    serve_view_sse,
    serve_websocket,
)
from registrygrid.protocol import limits, names
from registrygrid.sdk import LocalRegistry, Page, decode_cursor
from registrygrid.search import views as saved_views
from registrygrid.search.query import describe_fields
from registrygrid.storage import feed, idempotency, tokens
from registrygrid.storage.feed import MAX_SEQ
from registrygrid.storage.tokens import Token

log = logging.getLogger("registrygrid.bridge")
# Trace ids name requests in logs; they need to be unique, not secret, so a
# seeded PRNG serves them without a getrandom() call per request.
_trace_ids = random.Random(secrets.token_bytes(16))

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
# Field filters per listing (openapi.py states them): each is a scan-time
# check on every candidate record, so a handful is plenty and a bound keeps
# one request cheap.
MAX_WHERE = openapi.MAX_WHERE
MAX_WHERE_CHARS = openapi.MAX_WHERE_CHARS
MAX_OWNER_CHARS = openapi.MAX_OWNER_CHARS
# Bodies nest at most this deep: the record nesting cap plus the request
# wrapper's own levels ({"fields": ...}, {"schema": {...}} of a kind).
MAX_BODY_DEPTH = limits.MAX_NESTING + 4
_TRACE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# The status of the answer whose headers went out (aiohttp's
# on_response_prepare): from then on an error can only cut the connection.
ANSWER_BEGUN = web.RequestKey("answer_begun", int)
_WHERE_PATH = re.compile(openapi.WHERE_PATH)
_TOKEN_ID = re.compile(r"^[A-Za-z0-9_-]{12}$")
_DISPUTE_ID = re.compile(openapi.DISPUTE_ID["pattern"])
_WHERE_OPS = openapi.WHERE_OPS
# The header that marks an answer read from a registry this node follows
# (node/follow.py), not from its own store; openapi.py documents it.
SOURCE_HEADER = "X-Registry-Source"
FOLLOWED = {SOURCE_HEADER: "followed"}

T = TypeVar("T")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dumps(value: Any) -> bytes:
    return msgspec.json.encode(value)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(data), status=status, headers=headers, content_type=JSON)


def error_response(exc: RegistryError, trace_id: str, path: str = "") -> web.Response:
    headers: dict[str, str] = {}
    if isinstance(exc.details, dict) and (isinstance(exc, RateLimited) or "retry_after_s" in exc.details):
        # A refusal that clears by itself (a rate limit, an upload part being
        # written) says when to come back. RFC 9110 10.2.3: whole seconds;
        # round up so a client that obeys never comes back early.
        headers["Retry-After"] = str(max(1, int(-(-float(exc.details.get("retry_after_s", 1)) // 1))))
    elif isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="registrygrid"'  # RFC 6750 3
    elif isinstance(exc, Unavailable) and not isinstance(exc, Disabled):  # Disabled lasts: no retry
        headers["Retry-After"] = "1"
    elif isinstance(exc, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.size}"  # RFC 9110 14.4
    # The MCP Registry API's routes answer errors in that API's shape (node/bridge/mcp_routes.py).
    body = (mcp_registry.error_body if path.startswith(mcp_registry.PREFIX) else error_body)(exc, trace_id)
    return json_response(body, exc.http_status, headers)


def write_json(result: WriteResult) -> dict[str, Any]:
    return {**result.to_dict(), "record": result.record}


def local_roles(token: tokens.Token) -> tuple[str, ...]:
    """The local role a bridge write carries into the engine's access
    decision: ``app:<token role>`` (trust/policy.py, local rules)."""
    return (f"app:{token.role}",)


def etag_of(change_id: str | None) -> str:
    return f'"{change_id}"'


def _unquote_etag(value: str | None) -> str | None:
    """If-Match value -> change id; '*' means "any current version" (RFC 9110 13.1.1)."""
    if value is None:
        return None
    value = value.strip()
    if value == "*":
        return None
    if value.startswith("W/"):
        # If-Match compares strongly (RFC 9110 13.1.1): a weak tag matches
        # nothing. Kept whole, it names no change, and the write gets 412.
        return value
    return value.strip('"')


def _shape_problem(value: Any, limit: int) -> str | None:
    """Why a decoded body cannot be stored, or None: too deep, or an empty
    object key, which Automerge refuses ("key must not be an empty string")
    deep inside the write path, where it would fail a whole group-commit batch."""
    stack = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return f"{path or '/'}: nests deeper than {limit} levels"
            for key, child in item.items():
                if key == "":
                    return f"{path or '/'}: object keys must not be empty"
                stack.append((child, depth + 1, f"{path}/{key}"))
        elif isinstance(item, list):
            if depth > limit:
                return f"{path or '/'}: nests deeper than {limit} levels"
            stack.extend((child, depth + 1, f"{path}/{i}") for i, child in enumerate(item))
    return None


def _blamed(error: Any) -> list[list[Any]]:
    """The JSON pointers (as paths) a schema error blames: an unknown member
    is named itself (/frobnicate), as the query parser names it, not the
    object that holds it."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        extra = [key for key in error.instance if key not in known]
        if extra:
            return [[*path, key] for key in extra]
    return [path]


# ------------------------------------------------------------------ query parsing


# An integer as the API documents it: ASCII digits. Python's int() also
# takes "5_0" (50), "+5", " 5 " and other scripts' digits ("٣" is 3).
_INTEGER = re.compile(r"-?[0-9]{1,20}")
# A decimal number, likewise (float() also takes "1_0", "infinity").
_DECIMAL = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?")


def q_int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not _INTEGER.fullmatch(raw):
        raise MalformedInput(f"query parameter {name} must be an integer, not {raw[:40]!r}",
                             details=[{"path": f"query:{name}", "message": "not an integer"}])
    value = int(raw)
    if not lo <= value <= hi:
        raise ValidationError(f"query parameter {name} must be between {lo} and {hi}",
                              details=[{"path": f"query:{name}", "message": f"out of range [{lo}, {hi}]"}])
    return value


def q_float(request: web.Request, name: str, lo: float, hi: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return 0.0
    value = float(raw) if _DECIMAL.fullmatch(raw) else float("nan")
    if not lo <= value <= hi:  # also refuses nan
        raise ValidationError(f"query parameter {name} must be a number between {lo:g} and {hi:g}",
                              details=[{"path": f"query:{name}", "message": f"not a number in [{lo:g}, {hi:g}]"}])
    return value


def q_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").lower()
    if raw in ("", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise MalformedInput(f"query parameter {name} must be true or false",
                         details=[{"path": f"query:{name}", "message": "not a boolean"}])


def q_name(request: web.Request, name: str, check: Callable[[object], str]) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return check(raw)
    except ValidationError as exc:
        raise ValidationError(exc.message, details=[{"path": f"query:{name}", "message": exc.message}]) from None


def record_target(value: object) -> str:
    """An audit target naming a record: REGISTRY/ID, each part checked as names.py checks it."""
    registry, sep, record_id = str(value).partition("/")
    if not sep:
        raise ValidationError(f"expected REGISTRY/ID, not {str(value)[:80]!r}")
    return f"{names.registry_name(registry)}/{names.record_id(record_id)}"


def parse_value(text: str) -> Any:
    """A filter value: JSON when it parses (numbers, true, null), else the plain string (as the CLI's)."""
    try:
        return msgspec.json.decode(text)
    except msgspec.ValidationError:  # decoding untyped, only a number out of range (1e999): a string matched nothing
        raise ValidationError(f"the where value {text[:40]!r} is a number out of range (JSON numbers here are "
                              "finite, at most ~1.8e308 either side of 0); quote it to compare a string",
                              details=[{"path": "query:where", "message": "number out of range"}]) from None
    except (msgspec.MsgspecError, RecursionError, ValueError):
        return text


def parse_where(values: list[str]) -> list[tuple[str, str, Any]]:
    if len(values) > MAX_WHERE:
        raise ValidationError(f"at most {MAX_WHERE} where filters",
                              details=[{"path": "query:where", "message": f"{len(values)} filters"}])
    out = []
    for text in values:
        if len(text) > MAX_WHERE_CHARS:  # as the OpenAPI document says
            raise ValidationError(f"a where filter is at most {MAX_WHERE_CHARS} characters",
                                  details=[{"path": "query:where", "message": f"{len(text)} characters"}])
        path, op, raw = (text.split(":", 2) + ["", ""])[:3]
        if not _WHERE_PATH.fullmatch(path) or op not in _WHERE_OPS:
            raise ValidationError(
                f"bad where filter {text[:80]!r}: expected PATH:OP:VALUE with OP one of {' '.join(_WHERE_OPS)}",
                details=[{"path": "query:where", "message": text[:80]}])
        out.append((path, op, parse_value(raw)))
    return out


@dataclass
class Api:
    """What the handlers need; built by ``runtime.Bridge`` once the node runs."""

    registry: LocalRegistry
    auth: Authenticator
    audit: AuditBuffer
    metrics: BridgeMetrics
    hub: FeedHub
    submit: Callable[[Sequence[Operation]], Awaitable[list[Outcome]]]
    # (name, fresh) -> the DHT's answer (node/dht.py RegistryDirectory.resolve), run on trio (runtime.py).
    resolve: Callable[[str, bool], Awaitable[dict[str, Any]]]
    # (name, record id or None) -> the verified read of a public registry another
    # federation hosts (node/remote_read.py RemoteReader.read), run on trio (runtime.py).
    read_remote: Callable[[str, str | None], Awaitable[dict[str, Any]]]
    # Public registries of other federations this node follows (node/follow.py
    # Follows): follow (the first sync, verified) and unfollow run on trio
    # (runtime.py); follows lists their statuses, blocking (each counts its
    # copy's records); followed(name) is the copy of name (a Mirror) or None.
    follow: Callable[[str], Awaitable[dict[str, Any]]]
    unfollow: Callable[[str], Awaitable[dict[str, Any]]]
    follows: Callable[[], list[dict[str, Any]]]
    followed: Callable[[str], Any]
    # The node's search component (node/search.py SearchService), or None
    # when it runs without one (--no-search). Its methods are thread-safe and
    # block (tantivy, LMDB reads), so handlers call them on an executor thread.
    search: Callable[[], Any]
    # (query, registries scope) -> the merged answer of this node, its peers and
    # its followed registries' providers (node/federated_search.py), run on trio.
    federated_search: Callable[[Any, tuple[str, ...] | None], Awaitable[dict[str, Any]]]
    # The operator's peer controls (node/federation.py Federation.deny and
    # allow, node/peers.py's table), run on trio (runtime.py), which checks
    # each peer ID; Unavailable on a node without a federation (--no-p2p).
    peer_status: Callable[[], Awaitable[dict[str, Any]]]
    deny_peers: Callable[[list[str]], Awaitable[dict[str, Any]]]
    allow_peers: Callable[[list[str]], Awaitable[dict[str, Any]]]
    max_body: int = openapi.MAX_BODY_BYTES
    idempotency_ttl_ms: int = idempotency.DEFAULT_TTL_MS
    max_streams: int = 512
    body_idle_timeout_s: float = 60.0  # BridgeConfig.body_idle_timeout_s
    # The node's asset content (blobs/service.py Assets: blobs, uploads, presigned
    # URLs), or None; its calls block (files, S3, LMDB), so handlers run them on
    # executor threads (node/bridge/asset_routes.py).
    assets: Any = None
    # cid -> the blob fetched from the federation's peers that hold it
    # (node/blob_exchange.py BlobExchange.fetch), run on trio (runtime.py).
    fetch_blob: Callable[[bytes], Awaitable[dict[str, Any]]] | None = None
    # HOME/config.json bridge.agent_card: the card /.well-known/agent-card.json serves when the org has several.
    agent_card: str | None = None
    state: str = "starting"
    base_url: str = ""
    # The id of the admin token this node wrote to HOME/bridge.json for the
    # CLI (runtime.py sets it): the API lists it as "local" and will not revoke it.
    local_token_id: str | None = None
    streams: int = 0
    _inflight: set[tuple[str, str]] = field(default_factory=set)
    # Every request a handler is running, by id() (a Request is a mapping,
    # so unhashable): what the end of the shutdown grace cuts.
    _running: dict[int, web.Request] = field(default_factory=dict)
    # Refusals of the asset routes by code: the engine counts what it
    # refuses, and a checksum mismatch or a missing blob never reaches it.
    asset_refusals: Counter[str] = field(default_factory=Counter)

    # ---------------------------------------------------------------- helpers

    @property
    def store(self) -> Any:
        return self.registry.store

    def require(self, request: web.Request, need: str, *, registry: str | None = None, target: str = "") -> Token:
        return self.auth.require(request.headers.get("Authorization"), request.remote, need,
                                 registry=registry, target=target)

    def require_unlimited(self, request: web.Request, need: str, *, target: str) -> Token:
        """The caller's token for a route whose data no registry holds (asset
        bytes, uploads, bundles): one limited to a registry is refused. Such a
        token read any blob, and shared it by a 7-day presigned link, though
        it got 403 on the asset records that name the blob."""
        token = self.require(request, need, target=target)
        if token.registry is not None:
            raise self.auth.refuse(token.actor, target, PolicyDenied(
                f"this token is limited to registry {token.registry}; asset bytes, uploads and bundles "
                "belong to no registry, so they need a token not limited to one"))
        return token

    def open_on_loopback(self, request: web.Request, target: str) -> None:
        """Health and metrics: no token from this machine, a reader token from elsewhere."""
        if not is_loopback(request.remote):
            self.require(request, READ, target=target)

    def read_note(self, token: Token, target: str, reason: str = "") -> None:
        self.audit.note("read", token.actor, target, reason)

    def from_followed(self, registry: str, unknown: UnknownRegistry, read: Callable[[LocalRegistry], T]) -> T:
        """``read`` the copy of ``registry`` this node follows, the node's own
        store lacking it (``unknown``, raised again when no copy is followed
        either). Called only after a miss, so reads of the node's own
        registries pay nothing for it. Any thread."""
        mirror = self.followed(registry)
        if mirror is None:
            raise unknown
        with mirror.use() as copy:  # NotFound if it is unfollowed meanwhile
            return read(copy)

    async def body(self, request: web.Request, schema: str | None) -> tuple[Any, bytes]:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise TooLarge(f"request body of {length} bytes exceeds the cap of {self.max_body} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise TooLarge(f"request body exceeds the cap of {self.max_body} bytes") from None
        authorization = request.headers.get("Authorization")
        if authorization:  # checked at the headers; revoked or expired while the body came?
            self.auth.recheck(authorization, request.remote, request.path)
        if not raw:
            raise MalformedInput("this request needs a JSON body", details=[{"path": "", "message": "empty body"}])
        try:
            data = msgspec.json.decode(raw)
        except (msgspec.MsgspecError, RecursionError, ValueError) as exc:
            why = _json_refusal(raw, exc)
            raise MalformedInput(f"body is not valid JSON: {why}", details=[{"path": "", "message": why}]) from None
        problem = _shape_problem(data, MAX_BODY_DEPTH)
        if problem is not None:
            path, _, message = problem.partition(": ")
            raise ValidationError(f"body cannot be stored: {problem}", details=[{"path": path, "message": message}])
        twice = repeated_name(raw) if isinstance(data, (dict, list)) else None
        if twice is not None:
            raise MalformedInput(f"body names {twice[:80]!r} twice in one object: which one counts depends on "
                                 "who reads it", details=[{"path": "", "message": f"duplicate member {twice[:80]!r}"}])
        if schema is not None:
            errors = openapi.request_errors(schema, data)
            if errors:
                details = [{"path": "/" + "/".join(str(p) for p in path), "message": e.message[:300],
                            "validator": str(e.validator)} for e in errors[:100] for path in _blamed(e)]
                raise ValidationError(f"request body does not match {schema}: {details[0]['path']}: "
                                      f"{details[0]['message']}", details=details)
            data = openapi.integer_members(schema, data)
        return data, raw

    async def write(self, op: Operation, *, if_match: str | None = None) -> WriteResult:
        outcome = (await self.submit([op]))[0]
        if isinstance(outcome, Conflict) and type(outcome) is Conflict and if_match is not None:
            raise PreconditionFailed(outcome.message, details=outcome.details)
        if isinstance(outcome, RegistryError):
            raise outcome
        assert isinstance(outcome, WriteResult)
        return outcome

    async def in_executor(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Blocking store writes (fsync) off the loop thread."""
        return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args, **kwargs))

    async def idempotent(self, request: web.Request, token: Token, raw: bytes,
                         op_for: Callable[[dict[str, Any]], Put | Update | Delete | Erase],
                         respond: Callable[[WriteResult], web.Response]) -> web.Response:
        """Make the write ``op_for({})`` once per (token, Idempotency-Key) and
        answer ``respond(result)``; a retry replays that answer. The engine
        stores the answer in the write's own commit (storage/idempotency.py)."""
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return respond(await self.write(op_for({})))
        idempotency.check_key(key)
        digest = hashlib.sha256(b"\x00".join([request.method.encode(), request.path_qs.encode(), raw])).digest()
        slot = (token.id, key)
        if slot in self._inflight:
            raise IdempotencyInProgress("a request with this Idempotency-Key is still being answered; retry shortly")
        self._inflight.add(slot)
        try:
            entry = idempotency.lookup(self.store, token.id, key, now_ms=now_ms())
            if entry is not None and entry.request_hash != digest:
                raise IdempotencyKeyReused("this Idempotency-Key was used with a different request",
                                           details=[{"path": "header:Idempotency-Key", "message": "reused"}])
            if entry is not None and entry.done:
                assert entry.body is not None and entry.status is not None
                return web.Response(status=entry.status, body=entry.body, content_type=JSON,
                                    headers={**(entry.headers or {}), "Idempotent-Replayed": "true"})
            # Built on the writer thread as it is stored; once per attempt of
            # the batch (a batch that filled the map is run again), the last
            # being the one committed.
            made: list[web.Response] = []

            def answer(result: WriteResult) -> tuple[int, bytes, dict[str, str]]:
                response = respond(result)
                made.append(response)
                assert isinstance(response.body, bytes)
                return response.status, response.body, {k: v for k, v in response.headers.items()
                                                         if k in ("Location", "ETag")}

            # An entry left reserved by an earlier bridge (no answer) gives
            # the retry the record id it reserved, so it makes no twin.
            reserved = entry.reserved if entry is not None else {}
            result = await self.write(Remembered(op_for(reserved), token.id, key, digest,
                                                 now_ms() + self.idempotency_ttl_ms, answer))
            return made[-1] if made else respond(result)
        finally:
            self._inflight.discard(slot)

    # ---------------------------------------------------------------- health, docs, metrics

    async def live(self, request: web.Request) -> web.Response:
        self.open_on_loopback(request, "health")
        return json_response({"status": "stopping" if self.state == "stopping" else "ok",
                              "feed_head": self.hub.head})

    async def ready(self, request: web.Request) -> web.Response:
        self.open_on_loopback(request, "health")
        if self.state != "ok":
            raise Unavailable(f"the node is {self.state}")
        return json_response({"status": "ok", "feed_head": self.hub.head})

    async def metrics_text(self, request: web.Request) -> web.Response:
        self.open_on_loopback(request, "metrics")
        body = await self.in_executor(self.metrics.render)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def openapi_doc(self, request: web.Request) -> web.Response:
        return json_response(openapi.build_spec(self.base_url or None))

    async def identity(self, request: web.Request) -> web.Response:
        token = self.require(request, READ, target="identity")
        self.read_note(token, "identity", "node identity")
        return json_response(self.registry.identity())

    async def stats(self, request: web.Request) -> web.Response:
        token = self.require(request, READ, target="stats")
        out = await self.in_executor(self.registry.stats)
        out.update({f"assets.rejected.{code}": n for code, n in sorted(self.asset_refusals.items())})
        self.read_note(token, "stats", "store and engine figures")
        return json_response(out)

    # ---------------------------------------------------------------- registries

    async def list_registries(self, request: web.Request) -> web.Response:
        token = self.require(request, READ, target="registries")
        found = self.registry.registries()
        if token.registry is not None:
            found = [r for r in found if r["name"] == token.registry]
        self.read_note(token, "registries", "list registries")
        return json_response({"registries": found})

    async def describe_registry(self, request: web.Request) -> web.Response:
        name = names.registry_name(request.match_info["registry"])
        token = self.require(request, READ, registry=name)
        try:
            desc = await self.in_executor(self.registry.describe_registry, name)  # counts records: a scan
        except UnknownRegistry as exc:
            desc = await self.in_executor(self.from_followed, name, exc, lambda copy: copy.describe_registry(name))
            self.read_note(token, name, "describe registry (followed copy)")
            return json_response(desc, headers=FOLLOWED)
        self.read_note(token, name, "describe registry")
        return json_response(desc)

    async def resolve_registry(self, request: web.Request) -> web.Response:
        """A registry's signed descriptor and its providers, from the registry
        of registries (the DHT), verified; from a short cache unless fresh."""
        name = names.registry_name(request.match_info["registry"])
        token = self.require(request, READ, registry=name)
        fresh = q_bool(request, "fresh")
        answer = await self.resolve(name, fresh)
        self.read_note(token, name, "resolve registry" + (" (fresh)" if fresh else ""))
        return json_response(answer)

    async def read_remote_registry(self, request: web.Request) -> web.Response:
        """A public registry another federation hosts (or one of its records),
        read from one of its providers and verified change by change in a
        scratch store; nothing of it is kept on this node."""
        name = names.registry_name(request.match_info["registry"])
        record_id = q_name(request, "record", names.record_id)
        target = name if record_id is None else f"{name}/{record_id}"
        token = self.require(request, READ, registry=name, target=target)
        answer = await self.read_remote(name, record_id)
        self.read_note(token, target, f"remote read from {answer['provider']}")
        return json_response(answer)

    # ---------------------------------------------------------------- follows (node/follow.py)

    async def list_follows(self, request: web.Request) -> web.Response:
        """The registries of other federations this node keeps a verified copy of, with their sync status."""
        token = self.require(request, READ, target="follows")
        found = await self.in_executor(self.follows)  # each counts its copy's records: a scan
        if token.registry is not None:
            found = [f for f in found if f["registry"] == token.registry]
        self.read_note(token, "follows", "list follows")
        return json_response({"follows": found})

    async def follow_registry(self, request: web.Request) -> web.Response:
        """Follow a public registry another federation hosts: the node stores
        a verified copy (its first sync is done before this answers) and keeps
        it synced; following it again syncs it now. Admin: it makes the node
        store and fetch data on its own from then on."""
        name = names.registry_name(request.match_info["registry"])
        token = self.require(request, ADMIN, registry=name, target=f"follows/{name}")
        status = await self.follow(name)
        self.audit.note("create", token.actor, f"follows/{name}",
                        f"follow {name}: {status['records']} records, last from {status['last_provider']}",
                        required=False)
        return json_response(status)

    async def unfollow_registry(self, request: web.Request) -> web.Response:
        """Stop following a registry and delete this node's copy of it."""
        name = names.registry_name(request.match_info["registry"])
        token = self.require(request, ADMIN, registry=name, target=f"follows/{name}")
        answer = await self.unfollow(name)
        self.audit.note("delete", token.actor, f"follows/{name}", f"unfollow {name}: its copy deleted",
                        required=False)
        return json_response(answer)

    # ---------------------------------------------------------------- peers (node/federation.py)

    async def list_peers(self, request: web.Request) -> web.Response:
        """This node's peer ID, the peers connected to it, the peers an operator denied."""
        token = self.require(request, READ, target="peers")
        answer = await self.peer_status()
        self.read_note(token, "peers", "list peers")
        return json_response(answer)

    async def deny_peer_ids(self, request: web.Request) -> web.Response:
        """Cut these peers off and refuse them until allowed (admin): the
        operator's partition switch. Answers once they are disconnected."""
        token, peers = await self._peer_control(request)
        answer = await self.deny_peers(peers)
        self.audit.note("update", token.actor, "peers", f"deny {len(answer['denied'])} peers: "
                        + " ".join(answer["denied"]), required=False)
        return json_response(answer)

    async def allow_peer_ids(self, request: web.Request) -> web.Response:
        """Take denied peers back (admin): the node dials them again at once."""
        token, peers = await self._peer_control(request)
        answer = await self.allow_peers(peers)
        self.audit.note("update", token.actor, "peers", f"allow {len(answer['allowed'])} peers: "
                        + " ".join(answer["allowed"]), required=False)
        return json_response(answer)

    async def _peer_control(self, request: web.Request) -> tuple[Token, list[str]]:
        """The admin token and the body's peer IDs (shape checked here, each ID on trio: runtime.py)."""
        token = self.require(request, ADMIN, target="peers")  # admin tokens are never limited to a registry
        body, _ = await self.body(request, "PeerIds")
        return token, body["peers"]

    async def create_registry(self, request: web.Request) -> web.Response:
        token = self.require(request, WRITE, registry=regs.REGISTRY_OF_REGISTRIES, target=regs.REGISTRY_OF_REGISTRIES)
        body, raw = await self.body(request, "RegistryCreate")

        fields = {"name": body["name"], "description": body.get("description", ""), "kinds": body["kinds"],
                  "write_policy": body.get("write_policy", "open"),
                  "conflict_policy": body.get("conflict_policy", "crdt"),
                  "replication": {"scope": body.get("replication", "federation"),
                                  **({"readers": body["readers"]} if body.get("readers") else {})},
                  **({"write_roles": body["write_roles"]} if body.get("write_roles") else {}),
                  **({"limits": body["limits"]} if body.get("limits") else {})}
        return await self.idempotent(
            request, token, raw,
            lambda _: Put(regs.REGISTRY_OF_REGISTRIES, "registry", fields, body["name"], actor=token.actor,
                          roles=local_roles(token)),
            lambda result: json_response(write_json(result), 201,
                                         {"Location": f"/v1/registries/{result.record_id}"}))

    # ---------------------------------------------------------------- records

    async def list_records(self, request: web.Request) -> web.Response:
        registry = request.match_info.get("registry")
        if registry is not None:
            names.registry_name(registry)
        token = self.require(request, READ, registry=registry, target=registry or "records")
        if registry is None and token.registry is not None:
            registry = token.registry  # a scoped token sees its registry only
        sort = request.query.get("sort", "id")
        if sort != "id":
            raise ValidationError("sort: only 'id' ((registry, id) order) is supported; it keeps cursors stable "
                                  "under concurrent inserts", details=[{"path": "query:sort", "message": "not 'id'"}])
        owner, cursor = request.query.get("owner") or None, request.query.get("cursor") or None
        if owner is not None and len(owner) > MAX_OWNER_CHARS:  # as the OpenAPI document says
            raise ValidationError(f"owner: an org's did:key, at most {MAX_OWNER_CHARS} characters",
                                  details=[{"path": "query:owner", "message": f"{len(owner)} characters"}])
        if cursor is not None:
            try:
                decode_cursor(cursor)
            except ValidationError as exc:  # it named no part: every other bad parameter does
                raise ValidationError(exc.message, details=[{"path": "query:cursor", "message": "not a cursor "
                                                             "this listing gave"}]) from None
        filters: dict[str, Any] = {
            "kind": q_name(request, "kind", names.kind_name), "tag": q_name(request, "tag", names.tag),
            "owner": owner, "where": parse_where(request.query.getall("where", [])),
            "limit": q_int(request, "limit", 100, 1, 1000) or 100, "cursor": cursor,
            "include_deleted": q_bool(request, "include_deleted"), "conflicted": q_bool(request, "conflicted")}
        headers: dict[str, str] | None = None
        try:
            page: Page = self.registry.list(registry, **filters)
        except UnknownRegistry as exc:
            assert registry is not None  # a listing across registries names none that could be unknown
            page = self.from_followed(registry, exc, lambda copy: copy.list(registry, **filters))
            headers = FOLLOWED
        self.read_note(token, registry or "*", f"list {listing_shape(request.query)}"
                       + (" (followed copy)" if headers else ""))
        return json_response({"items": page.items, "next_cursor": page.next_cursor}, headers=headers)

    async def create_record(self, request: web.Request) -> web.Response:
        registry = names.registry_name(request.match_info["registry"])
        token = self.require_record_write(request, registry, registry)
        body, raw = await self.body(request, "RecordCreate")

        return await self.idempotent(
            request, token, raw,
            lambda reserved: Put(registry, body["kind"], body["fields"], body.get("id") or reserved.get("id"),
                                 body.get("tags", ()), body.get("links", ()), body.get("schema"), token.actor,
                                 local_roles(token)),
            lambda result: json_response(write_json(result), 201, {
                "Location": f"/v1/registries/{registry}/records/{result.record_id}",
                "ETag": etag_of(result.change_id)}))

    def require_record_write(self, request: web.Request, registry: str, target: str) -> Token:
        """A writer's token for a record route, which never writes grid.disputes
        or grid.erasures (each has its own route). For grid.disputes:
        a resolution filed there as a plain record skipped what the resolve
        route checks (the token's registry scope, the record's kind), and a
        resolution changed or deleted would reopen its dispute in silence."""
        token = self.require(request, WRITE, registry=registry, target=target)
        if registry == DISPUTES_REGISTRY:
            raise self.auth.refuse(token.actor, target, PolicyDenied(
                f"{DISPUTES_REGISTRY} takes resolutions through POST /v1/disputes/{{id}}/resolve only, "
                "which checks who may decide them and what they leave"))
        if registry == ERASURES_REGISTRY:
            # A notice filed as a plain record let a token limited to
            # grid.erasures erase any registry's records.
            raise self.auth.refuse(token.actor, target, PolicyDenied(
                f"{ERASURES_REGISTRY} takes notices through POST /v1/registries/{{registry}}/records/{{id}}/erase "
                "only, which checks the token may write the erased record's registry"))
        return token

    def _record_path(self, request: web.Request) -> tuple[str, str]:
        return names.registry_name(request.match_info["registry"]), names.record_id(request.match_info["id"])

    async def get_record(self, request: web.Request) -> web.Response:
        registry, record_id = self._record_path(request)
        target = f"{registry}/{record_id}"
        token = self.require(request, READ, registry=registry, target=target)
        deleted = q_bool(request, "include_deleted")
        headers: dict[str, str]
        try:
            record = self.registry.get(registry, record_id, include_deleted=deleted)
            headers = {}
        except UnknownRegistry as exc:
            record = self.from_followed(registry, exc, lambda copy: copy.get(registry, record_id,
                                                                             include_deleted=deleted))
            headers = dict(FOLLOWED)
        self.read_note(token, target, "followed copy" if headers else "")
        etag = headers["ETag"] = etag_of(record["change_id"])
        if not_modified(request.headers, etag):
            return web.Response(status=304, headers=headers)
        return json_response(record, headers=headers)

    async def replace_record(self, request: web.Request) -> web.Response:
        registry, record_id = self._record_path(request)
        token = self.require_record_write(request, registry, f"{registry}/{record_id}")
        body, _ = await self.body(request, "RecordReplace")
        if_match = _unquote_etag(request.headers.get("If-Match"))
        result = await self.write(Update(registry, record_id, fields=body["fields"], tags=body.get("tags"),
                                         links=body.get("links"), schema=body.get("schema"), if_match=if_match,
                                         actor=token.actor, roles=local_roles(token)), if_match=if_match)
        return json_response(write_json(result), headers={"ETag": etag_of(result.change_id)})

    async def patch_record(self, request: web.Request) -> web.Response:
        registry, record_id = self._record_path(request)
        token = self.require_record_write(request, registry, f"{registry}/{record_id}")
        if request.content_type == MERGE_PATCH:
            patch, _ = await self.body(request, "MergePatch")
            body: dict[str, Any] = {"patch": patch}
        else:
            body, _ = await self.body(request, "RecordPatch")
        if_match = _unquote_etag(request.headers.get("If-Match"))
        result = await self.write(Update(registry, record_id, patch=body.get("patch"), tags=body.get("tags"),
                                         links=body.get("links"), schema=body.get("schema"), if_match=if_match,
                                         actor=token.actor, roles=local_roles(token)), if_match=if_match)
        return json_response(write_json(result), headers={"ETag": etag_of(result.change_id)})

    async def delete_record(self, request: web.Request) -> web.Response:
        registry, record_id = self._record_path(request)
        token = self.require_record_write(request, registry, f"{registry}/{record_id}")
        if_match = _unquote_etag(request.headers.get("If-Match"))
        result = await self.write(Delete(registry, record_id, if_match=if_match, actor=token.actor,
                                         roles=local_roles(token)),
                                  if_match=if_match)
        return json_response(write_json(result))

    async def erase_record(self, request: web.Request) -> web.Response:
        registry, record_id = self._record_path(request)
        token = self.require(request, WRITE, registry=registry, target=f"{registry}/{record_id}")
        body, raw = await self.body(request, "RecordErase")

        def respond(result: WriteResult) -> web.Response:
            if result.status == "unchanged":
                return json_response(write_json(result))
            return json_response(write_json(result), 201, {
                "Location": f"/v1/registries/{result.registry}/records/{result.record_id}"})

        # Signed by this node's key (the notice is its org's word); the token
        # says who asked, and the node purges the blobs named once the
        # erasure is committed (Node._purge_erased_blobs).
        return await self.idempotent(
            request, token, raw,
            lambda _: Erase(registry, record_id, body.get("reason", ""), tuple(body.get("blobs", ())), token.actor,
                            local_roles(token)),
            respond)

    async def list_erasures(self, request: web.Request) -> web.Response:
        token = self.require(request, READ, target="erasures")
        found = await self.in_executor(self.registry.erasures)
        if token.registry is not None:
            found = [e for e in found if e["registry"] == token.registry]
        self.read_note(token, "erasures", "list erasures")
        return json_response({"items": found})

    async def list_erased_places(self, request: web.Request) -> web.Response:
        token = self.require(request, READ, target="erasures")
        found = await self.in_executor(self.registry.erased_places)
        if token.registry is not None:
            # Owed supplements name places of several registries' chains
            # under notices a scoped token may not read: node-wide tokens only.
            found = {"items": [p for p in found["items"] if p["registry"] == token.registry], "owed": []}
        self.read_note(token, "erasures", "list erased places")
        return json_response(found)

    async def record_history(self, request: web.Request) -> web.Response:
        registry, record_id = self._record_path(request)
        target = f"{registry}/{record_id}"
        token = self.require(request, READ, registry=registry, target=target)
        try:
            history = self.registry.history(registry, record_id)
        except UnknownRegistry as exc:  # the store lacks the registry: a copy may be followed
            history = self.from_followed(registry, exc, lambda copy: copy.history(registry, record_id))
            self.read_note(token, target, "history (followed copy)")
            return json_response({"history": history}, headers=FOLLOWED)
        self.read_note(token, target, "history")
        return json_response({"history": history})

    # ---------------------------------------------------------------- changefeed

    def _feed_request(self, request: web.Request) -> tuple[Token, FeedReader, int, str | None, str | None]:
        registry = q_name(request, "registry", names.registry_name)
        kind = q_name(request, "kind", names.kind_name)
        token = self.require(request, READ, registry=registry, target=registry or "changes")
        if registry is None and token.registry is not None:
            registry = token.registry
        since = q_int(request, "since", 0, 0, MAX_SEQ) or 0
        self._check_cursor(since, "query:since")
        reader = FeedReader(read=lambda cursor, limit: feed.read_window(
                                self.store, since=cursor, limit=limit, registry=registry, kind=kind,
                                scan=streaming.SCAN_EVENTS),
                            head=self.registry.feed_head)
        return token, reader, since, registry, kind

    def _check_cursor(self, since: int, where: str) -> None:
        """A cursor past this node's feed head names no event it ever gave:
        a cursor from another node, or from before this store was restored.
        Accepted, it waited in silence until the feed grew past it and then
        skipped every event up to there; refused, the client starts over."""
        head = self.registry.feed_head()
        if since > head:
            raise ValidationError(f"{where.partition(':')[2]} {since} is beyond this node's feed head {head}: a cursor "
                                  "of another node, or of before its store was restored; start again from 0 or the head",
                                  details=[{"path": where, "message": f"beyond the feed head {head}"}])

    async def changes(self, request: web.Request) -> web.StreamResponse:
        token, reader, since, registry, kind = self._feed_request(request)
        limit = q_int(request, "limit", 1000, 1, 10_000) or 1000
        wait = q_float(request, "wait", 0.0, MAX_WAIT_S)
        if "text/event-stream" in request.headers.get("Accept", ""):
            last = request.headers.get("Last-Event-ID")
            if last:
                since = int(last) if _INTEGER.fullmatch(last) else -1
                if not 0 <= since <= MAX_SEQ:
                    raise MalformedInput(f"Last-Event-ID must be a feed sequence number (0 to {MAX_SEQ}), "
                                         f"not {last[:40]!r}")
                self._check_cursor(since, "header:Last-Event-ID")
            self.read_note(token, registry or "*", f"changefeed (sse) from {since}")
            return await self._stream(request, "sse", serve_sse, reader, since, token)
        events, cursor = await long_poll(reader, self.hub, since, limit, wait)
        if wait:  # checked when the poll came in: a token revoked or expired while it waited gets nothing
            self.auth.recheck(request.headers.get("Authorization", ""), request.remote, request.path)
        self.read_note(token, registry or "*", f"changes after {since}" + (f" kind {kind}" if kind else ""))
        # The store's head: the hub's moves on in a commit hook, after the
        # events this page read (``next`` was past ``head``).
        return json_response({"events": [e.to_dict() for e in events], "next": cursor,
                              "head": max(self.hub.head, self.registry.feed_head())})

    async def changes_ws(self, request: web.Request) -> web.StreamResponse:
        token, reader, since, registry, _ = self._feed_request(request)
        self.read_note(token, registry or "*", f"changefeed (websocket) from {since}")
        return await self._stream(request, "websocket", serve_websocket, reader, since, token)

    async def _stream(self, request: web.Request, transport: str, serve: Any, reader: FeedReader | None,
                      since: int, token: Token) -> web.StreamResponse:
        if request.method == "HEAD":
            # The stream's headers alone: its events went out after them as a
            # body (RFC 9110 9.3.2: a client reads them as the next
            # response), and it held a stream's slot for as long.
            return web.Response(headers=sse_headers(request))
        if self.streams >= self.max_streams:
            raise Unavailable(f"{self.max_streams} changefeed streams are open; use long-poll or retry later")
        request[STILL_ALLOWED] = partial(self._still_valid, token.id)
        self.streams += 1
        gauge = self.metrics.streams.labels(transport)
        gauge.inc()
        try:
            return await serve(request, reader, self.hub, since)
        finally:
            self.streams -= 1
            gauge.dec()

    def _still_valid(self, token_id: str) -> bool:
        """Whether the token a stream opened with is neither revoked nor
        expired now (one LMDB read): a stream checks before each write, so
        one whose token is revoked ends, and its reconnect gets the 401. It
        went on streaming for as long as the client stayed connected."""
        token = tokens.get(self.store, token_id)
        return token is not None and token.revoked_at is None and (
            token.expires_at is None or now_ms() < token.expires_at)

    # ---------------------------------------------------------------- audit

    async def audit_log(self, request: web.Request) -> web.Response:
        token = self.require(request, ADMIN, target="audit")
        since = q_int(request, "since", 0, 0, MAX_SEQ) or 0
        limit = q_int(request, "limit", 100, 1, 10_000) or 100
        reverse = q_bool(request, "reverse")
        target = q_name(request, "target", record_target)
        if target is None:
            entries = self.registry.audit_log(since=since, limit=limit, reverse=reverse)
        else:
            # A target filter reads on through the ledger until enough entries match: a scan.
            entries = await self.in_executor(self.registry.audit_log, since=since, limit=limit,
                                             reverse=reverse, target=target)
        self.read_note(token, "audit", "audit log" + (f" of {target}" if target else ""))
        return json_response({"entries": [e.to_dict() for e in entries]})

    async def audit_verify(self, request: web.Request) -> web.Response:
        token = self.require(request, ADMIN, target="audit")
        self.read_note(token, "audit", "audit ledger verified")
        return json_response(await self.in_executor(self.registry.audit_verify))

    # ---------------------------------------------------------------- disputes

    def _dispute_path(self, request: web.Request) -> tuple[str, str]:
        """The dispute id of the path, and the audit target naming it. An id
        that cannot be a dispute's is one this node does not know: 404, as
        revoke_token answers a malformed token id."""
        dispute = request.match_info["id"]
        if not _DISPUTE_ID.fullmatch(dispute):
            raise NotFound(f"no dispute {dispute[:80]!r} on this node; GET /v1/disputes lists them")
        return dispute, f"{DISPUTES_REGISTRY}/{dispute}"

    def _in_scope(self, token: Token, found: dict[str, Any], target: str) -> None:
        """A token limited to one registry reads the disputes of that registry
        only; another's is answered as one this node does not know. (A 403
        said it exists, and named its registry, a private one's included,
        to a token that may not read it.) Audited as a refusal all the same."""
        if token.registry is not None and found["registry"] != token.registry:
            raise self.auth.refuse(token.actor, target, NotFound(  # word for word dispute_views.show_dispute's
                f"no dispute {found['id']!r} on this node; `rgrid disputes list` shows the open ones"))

    async def list_disputes(self, request: web.Request) -> web.Response:
        token = self.require(request, READ, target="disputes")
        status = request.query.get("status") or None
        if status is not None and status not in dispute_views.STATUSES:
            raise ValidationError(f"query parameter status must be one of {list(dispute_views.STATUSES)}",
                                  details=[{"path": "query:status", "message": "unknown status"}])
        # Every disputed record and every report is read: a scan, off the loop.
        found = await self.in_executor(self.registry.disputes, status=status)
        if token.registry is not None:
            found = [d for d in found if d["registry"] == token.registry]
        self.read_note(token, "disputes", "list disputes" + (f" {status}" if status else ""))
        return json_response({"items": found})

    async def get_dispute(self, request: web.Request) -> web.Response:
        token = self.require(request, READ, target="disputes")
        dispute, target = self._dispute_path(request)
        found = self.registry.dispute(dispute)
        self._in_scope(token, found, target)
        self.read_note(token, target, "show dispute")
        return json_response(found)

    async def resolve_dispute(self, request: web.Request) -> web.Response:
        # A resolution is filed in grid.disputes but decides what a record of
        # the disputed registry shows: a token limited to one registry (even
        # to grid.disputes) resolves no other registry's disputes.
        token = self.require(request, WRITE, registry=DISPUTES_REGISTRY, target=DISPUTES_REGISTRY)
        dispute, target = self._dispute_path(request)
        self._in_scope(token, self.registry.dispute(dispute), target)
        body, raw = await self.body(request, "DisputeResolve")
        if "value" in body and body.get("removed"):
            raise ValidationError("give value, or removed: true, not both",
                                  details=[{"path": "/removed", "message": "with value"}])

        def op_for(reserved: dict[str, Any]) -> Put:
            # Signed by this node's key, as the SDK's resolve_dispute: the
            # node's key (its org) is who decides, the token only who asked.
            engine = self.registry.engine
            fields = dispute_views.resolution_fields(
                self.store, engine.trust, engine.catalog, dispute, author=engine.key.did, at_ms=engine.now_ms(),
                value=body.get("value", ABSENT), removed=bool(body.get("removed")), note=body.get("note", ""))
            return Put(DISPUTES_REGISTRY, RESOLUTION_KIND, fields, reserved.get("id"), tags=[dispute],
                       actor=token.actor, roles=local_roles(token))

        return await self.idempotent(request, token, raw, op_for, lambda result: json_response(
            write_json(result), 201, {"Location": f"/v1/registries/{DISPUTES_REGISTRY}/records/{result.record_id}",
                                      "ETag": etag_of(result.change_id)}))

    # ---------------------------------------------------------------- kinds

    async def explain_policy(self, request: web.Request) -> web.Response:
        """What every node would decide for a subject's action, and the rule
        that decides it (the same checks the write path runs; nothing is written)."""
        token = self.require(request, READ, target="policy")
        body, _ = await self.body(request, "PolicyExplain")
        # It reads the registry and the record it names (a 404 says which
        # exist): a token limited to one registry asks about that one only.
        target = f"{body['registry']}/{body['record']}" if body.get("record") else body["registry"]
        if token.registry is not None and body["registry"] != token.registry:
            raise self.auth.refuse(token.actor, target, PolicyDenied(
                f"this token is limited to registry {token.registry}, not {body['registry']}"))
        self.read_note(token, target, f"explain {body['action']}")
        answer = self.registry.explain(body["subject"], body["action"], body["registry"], body.get("record"),
                                       fields=body.get("fields") or (),
                                       local_roles=(f"app:{body['token_role']}",) if body.get("token_role") else ())
        return json_response(answer)

    async def list_kinds(self, request: web.Request) -> web.Response:
        token = self.require(request, READ, target="kinds")
        found = self.registry.kinds()
        held = await self._kinds_in_scope(token)
        if held is not None:
            found = [k for k in found if k["name"] in held]
        self.read_note(token, regs.KINDS_REGISTRY, "list kinds")
        return json_response({"kinds": found})

    async def get_kind(self, request: web.Request) -> web.Response:
        token = self.require(request, READ, target="kinds")
        name = names.kind_name(request.match_info["name"])
        held = await self._kinds_in_scope(token)
        if held is not None and name not in held:
            raise self.auth.refuse(token.actor, f"{regs.KINDS_REGISTRY}/{name}", PolicyDenied(
                f"this token is limited to registry {token.registry}, which holds no records of kind {name}"))
        found = self.registry.kind(name, q_int(request, "version", None, 1, 2**31))
        self.read_note(token, f"{regs.KINDS_REGISTRY}/{name}", "kind schema")
        return json_response(found)

    async def _kinds_in_scope(self, token: Token) -> frozenset[str] | None:
        """The kinds a token limited to one registry may read (those its
        registry holds: what it writes by); None for any kind. A token of
        grid.kinds itself reads every definition, as its records."""
        if token.registry is None or token.registry == regs.KINDS_REGISTRY:
            return None
        def held(name: str) -> frozenset[str]:
            with self.registry.store.read() as txn:
                return frozenset(regs.lookup(self.registry.store, txn, name).kinds)
        try:
            return await self.in_executor(held, token.registry)
        except RegistryError:  # its registry is gone: no kind is in its scope
            return frozenset()

    async def register_kind(self, request: web.Request) -> web.Response:
        token = self.require(request, WRITE, registry=regs.KINDS_REGISTRY, target=regs.KINDS_REGISTRY)
        body, raw = await self.body(request, "KindCreate")

        fields = {"name": body["name"], "version": body["version"], "schema": body["schema"],
                  "description": body.get("description", "")}
        if body.get("registry"):
            fields["registry"] = body["registry"]
        return await self.idempotent(
            request, token, raw,
            lambda _: Put(regs.KINDS_REGISTRY, "kind", fields, f"{body['name']}.v{body['version']}",
                          actor=token.actor, roles=local_roles(token)),
            lambda result: json_response(write_json(result), 201,
                                         {"Location": f"/v1/kinds/{body['name']}?version={body['version']}"}))

    # ---------------------------------------------------------------- search (registrygrid/search)

    def _searcher(self) -> Any:
        service = self.search()
        if service is None:
            raise Disabled("this node keeps no search index: it was started with --no-search (stop it and run "
                              "`rgrid search` to index and search offline, or start it without --no-search)")
        return service

    async def search_records(self, request: web.Request) -> web.Response:
        """Answer a query (search/query.py) from the node's index. A token
        limited to one registry searches that registry only."""
        token = self.require(request, READ, target="search")
        service = self._searcher()
        body, _ = await self.body(request, "SearchQuery")
        named = body.get("registries")
        scope = None
        if token.registry is not None:
            scope = (token.registry,)
            if isinstance(named, list):
                other = next((n for n in named if isinstance(n, str) and n != token.registry), None)
                if other is not None:
                    # As the registry routes answer a registry outside the scope (auth.py require).
                    raise self.auth.refuse(token.actor, "search", PolicyDenied(
                        f"this token is limited to registry {token.registry}, not {str(other)[:80]}"))
        if body.get("federated") not in (None, False):  # also ask peers: trio work (node/federated_search.py)
            answer = await self.federated_search(body, scope)
        else:
            answer = await self.in_executor(service.search, body, scope)
        self.read_note(token, token.registry or "*", f"search {search_shape(body)}")
        return json_response(answer)

    async def search_fields(self, request: web.Request) -> web.Response:
        token = self.require(request, READ, target="search")
        self.read_note(token, "search", "search fields")
        return json_response({"fields": describe_fields()})

    async def index_status(self, request: web.Request) -> web.Response:
        token = self.require(request, READ, target="index")
        self.read_note(token, "index", "search index status")
        return json_response(await self.in_executor(self._searcher().status))  # counts documents: a searcher

    async def rebuild_index(self, request: web.Request) -> web.Response:
        token = self.require(request, ADMIN, target="index")
        service = self._searcher()
        answer = await self.in_executor(service.rebuild)
        self.audit.note("update", token.actor, "index", f"search index rebuilt: {answer['events']} events, "
                        f"{answer['documents']} documents", required=False)
        return json_response(answer)

    # ---------------------------------------------------------------- saved views (search/views.py)

    async def list_views(self, request: web.Request) -> web.Response:
        """Every view this node holds; without a search index, their definitions alone."""
        token = self.require(request, READ, target="views")
        service = self.search()
        if service is None:
            found = [saved_views.describe(saved_views.Definition.of(r), None)
                     for r in self.registry.iter_all(saved_views.VIEWS_REGISTRY)]
        else:
            found = await self.in_executor(service.view_list, (token.registry,) if token.registry else None)
        self.read_note(token, "views", "list views")
        return json_response({"views": found})

    async def get_view(self, request: web.Request) -> web.Response:
        """A view and a page of its results; a token limited to one registry sees that registry's only."""
        name = names.record_id(request.match_info["name"])
        token = self.require(request, READ, target=f"{saved_views.VIEWS_REGISTRY}/{name}")
        service = self._searcher()
        limit = q_int(request, "limit", None, 1, saved_views.MAX_MEMBERS)
        cursor = request.query.get("cursor") or None
        scope = (token.registry,) if token.registry is not None else None
        answer = await self.in_executor(service.view_show, name, limit=limit, cursor=cursor, registries=scope)
        self.read_note(token, f"{saved_views.VIEWS_REGISTRY}/{name}", "show view")
        return json_response(answer)

    async def put_view(self, request: web.Request) -> web.Response:
        """Create or replace a view: a record of grid.views written through the
        node's write path (signed, gossiped), once its query parses."""
        name = names.record_id(request.match_info["name"])
        target = f"{saved_views.VIEWS_REGISTRY}/{name}"
        token = self.require(request, WRITE, registry=saved_views.VIEWS_REGISTRY, target=target)
        body, _ = await self.body(request, "ViewPut")
        fields = saved_views.view_fields(name, body["query"], description=body.get("description", ""),
                                         title=body.get("title"))
        replace = Update(saved_views.VIEWS_REGISTRY, name, fields=fields, actor=token.actor, roles=local_roles(token))
        try:
            self.registry.get(saved_views.VIEWS_REGISTRY, name)
        except NotFound:  # new, or deleted: a put makes it (again)
            try:
                result = await self.write(Put(saved_views.VIEWS_REGISTRY, saved_views.VIEW_KIND, fields, name,
                                              actor=token.actor, roles=local_roles(token)))
            except AlreadyExists:  # made meanwhile by another request
                result = await self.write(replace)
        else:
            result = await self.write(replace)
        return json_response(write_json(result), 201 if result.status == "created" else 200,
                             {"Location": f"/v1/views/{name}", "ETag": etag_of(result.change_id)})

    async def delete_view(self, request: web.Request) -> web.Response:
        name = names.record_id(request.match_info["name"])
        token = self.require(request, WRITE, registry=saved_views.VIEWS_REGISTRY,
                             target=f"{saved_views.VIEWS_REGISTRY}/{name}")
        result = await self.write(Delete(saved_views.VIEWS_REGISTRY, name, actor=token.actor,
                                         roles=local_roles(token)))
        return json_response(write_json(result))

    async def view_events(self, request: web.Request) -> web.StreamResponse:
        """A materialized view's changes after an event id: a JSON page, or SSE
        (Accept: text/event-stream; Last-Event-ID resumes)."""
        name = names.record_id(request.match_info["name"])
        target = f"{saved_views.VIEWS_REGISTRY}/{name}"
        token = self.require(request, READ, target=target)
        service = self._searcher()
        after = request.headers.get("Last-Event-ID") or request.query.get("after") or None
        if after is not None and len(after) > 64:
            raise ValidationError("after: an event id (GENERATION.N) is at most 64 characters",
                                  details=[{"path": "query:after", "message": "too long"}])
        # A token limited to one registry follows that registry's members
        # only, as GET /v1/views/{name} shows them (it read every registry's).
        scope = (token.registry,) if token.registry is not None else None
        first = service.view_changes(name, after, registries=scope)  # NotFound, Conflict before any stream starts
        if "text/event-stream" in request.headers.get("Accept", ""):
            self.read_note(token, target, f"view events (sse) after {after or 'the start'}")

            def serve(req: web.Request, _reader: Any, hub: FeedHub, _since: Any) -> Awaitable[web.StreamResponse]:
                return serve_view_sse(req, lambda last: service.view_changes(name, last, registries=scope),
                                      service.view_subscribe, hub, after)

            return await self._stream(request, "sse", serve, None, 0, token)
        if first is None:
            raise Unavailable(f"view {name} is being materialized on this node; retry shortly")
        self.read_note(token, target, f"view events after {after or 'the start'}")
        return json_response(first)

    # ---------------------------------------------------------------- tokens

    async def create_token(self, request: web.Request) -> web.Response:
        token = self.require(request, ADMIN, target="tokens")
        body, _ = await self.body(request, "TokenCreate")
        expires_in = body.get("expires_in")
        created, secret = await self.in_executor(
            tokens.create, self.store, role=body["role"], name=body.get("name", ""), registry=body.get("registry"),
            expires_at=now_ms() + expires_in * 1000 if expires_in else None, created_by=token.actor)
        self.audit.note("create", token.actor, f"tokens/{created.id}",
                        f"token {created.name} role {created.role}" +
                        (f" registry {created.registry}" if created.registry else ""), required=False)
        return json_response({**created.to_api(), "token": secret}, 201, {"Location": f"/v1/tokens/{created.id}"})

    async def list_tokens(self, request: web.Request) -> web.Response:
        token = self.require(request, ADMIN, target="tokens")
        self.read_note(token, "tokens", "list tokens")
        return json_response({"tokens": [t.to_api(local=t.id == self.local_token_id)
                                         for t in tokens.list_all(self.store)]})

    async def revoke_token(self, request: web.Request) -> web.Response:
        token = self.require(request, ADMIN, target="tokens")
        token_id = request.match_info["token_id"]
        if not _TOKEN_ID.fullmatch(token_id):
            raise NotFound(f"no token {token_id[:40]!r}")
        if token_id == self.local_token_id:
            # Revoking it would lock every `rgrid` command out of the running
            # node until a restart. 409, not 403: the caller is an admin, who
            # may revoke tokens, so no other token would be let through and
            # this is no authorization failure; what conflicts is the target's
            # state, in use by the node until it stops and revokes it itself
            # (RFC 9110 15.5.10; the same reasoning as HomeLocked's 409).
            raise self.auth.refuse(token.actor, f"tokens/{token_id}", Conflict(
                f"token {token_id} is the node's own CLI credential; it is revoked when the node stops"))
        revoked, now = await self.in_executor(tokens.revoke_once, self.store, token_id)
        self.auth.forget(revoked.id)
        if now:
            self.audit.note("delete", token.actor, f"tokens/{revoked.id}", f"token {revoked.name} revoked",
                            required=False)
        else:
            self.read_note(token, f"tokens/{revoked.id}", f"token {revoked.name} revoked already: nothing changed")
        return json_response(revoked.to_api())

    # ---------------------------------------------------------------- the app

    def routes(self) -> list[web.RouteDef]:
        # Imported here: mcp_routes and discovery_routes import this module's helpers.
        from registrygrid.node.bridge.asset_routes import AssetRoutes
        from registrygrid.node.bridge.discovery_routes import DiscoveryRoutes
        from registrygrid.node.bridge.mcp_routes import McpRoutes

        rec = "/v1/registries/{registry}/records"
        # aiohttp tries the routes under one path prefix in registration
        # order, one regex each: the record routes, the hottest, go first.
        return [
            web.get(rec + "/{id}", self.get_record),
            web.put(rec + "/{id}", self.replace_record),
            web.patch(rec + "/{id}", self.patch_record),
            web.delete(rec + "/{id}", self.delete_record),
            web.get(rec, self.list_records),
            web.post(rec, self.create_record),
            web.get("/v1/health/live", self.live),
            web.get("/v1/health/ready", self.ready),
            web.get("/metrics", self.metrics_text),
            web.get("/v1/openapi.json", self.openapi_doc),
            web.get("/v1/identity", self.identity),
            web.get("/v1/stats", self.stats),
            web.get("/v1/registries", self.list_registries),
            web.post("/v1/registries", self.create_registry),
            web.get("/v1/registries/{registry}", self.describe_registry),
            web.get("/v1/registries/{registry}/resolve", self.resolve_registry),
            web.get("/v1/registries/{registry}/remote", self.read_remote_registry),
            web.get("/v1/follows", self.list_follows),
            web.put("/v1/follows/{registry}", self.follow_registry),
            web.delete("/v1/follows/{registry}", self.unfollow_registry),
            web.get("/v1/peers", self.list_peers),
            web.post("/v1/peers/deny", self.deny_peer_ids),
            web.post("/v1/peers/allow", self.allow_peer_ids),
            web.get(rec + "/{id}/history", self.record_history),
            web.post(rec + "/{id}/erase", self.erase_record),
            web.get("/v1/erasures", self.list_erasures),
            web.get("/v1/erasures/places", self.list_erased_places),
            web.get("/v1/records", self.list_records),
            web.get("/v1/changes", self.changes),
            web.get("/v1/changes/ws", self.changes_ws),
            web.get("/v1/audit", self.audit_log),
            web.get("/v1/audit/verify", self.audit_verify),
            web.get("/v1/disputes", self.list_disputes),
            web.get("/v1/disputes/{id}", self.get_dispute),
            web.post("/v1/disputes/{id}/resolve", self.resolve_dispute),
            web.get("/v1/kinds", self.list_kinds),
            web.post("/v1/policy/explain", self.explain_policy),
            web.post("/v1/kinds", self.register_kind),
            web.get("/v1/kinds/{name}", self.get_kind),
            web.post("/v1/search", self.search_records),
            web.get("/v1/search/fields", self.search_fields),
            web.get("/v1/index", self.index_status),
            web.post("/v1/index/rebuild", self.rebuild_index),
            web.get("/v1/views", self.list_views),
            web.get("/v1/views/{name}", self.get_view),
            web.put("/v1/views/{name}", self.put_view),
            web.delete("/v1/views/{name}", self.delete_view),
            web.get("/v1/views/{name}/events", self.view_events),
            web.post("/v1/tokens", self.create_token),
            web.get("/v1/tokens", self.list_tokens),
            web.delete("/v1/tokens/{token_id}", self.revoke_token),
            *AssetRoutes(self).routes(),
            *McpRoutes(self).routes(),
            *DiscoveryRoutes(self, agent_card=self.agent_card).routes(),
        ]

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=self.max_body)
        app.add_routes(self.routes())

        async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
            request[ANSWER_BEGUN] = response.status

        app.on_response_prepare.append(on_response_prepare)

        async def on_shutdown(_: web.Application) -> None:
            self.state = "stopping"
            self.hub.close()  # ends every SSE/WebSocket/long-poll wait

        app.on_shutdown.append(on_shutdown)
        return app

    def _cut(self, request: web.Request, route: str, status: int, exc: Exception, seconds: float) -> AnswerCut:
        """A handler failed after its answer's headers went out (a download
        whose store failed, a bundle whose URL was refused midway): no error
        answer can follow them. The connection is closed instead, so the
        client sees the body end early; the error is logged and counted."""
        code = exc.code if isinstance(exc, RegistryError) else "internal_error"
        trace_id = request.get(TRACE_ID, "")
        if isinstance(exc, RegistryError):
            log.warning("%s %s cut short after its answer began (trace %s): %s: %s", request.method, request.path,
                        trace_id, code, exc.message)
        else:
            log.error("unexpected error after the answer to %s %s began (trace %s)", request.method, request.path,
                      trace_id, exc_info=exc)
        self.metrics.observe_request(route, request.method, status, seconds, code)
        self.metrics.cut.labels(route, code).inc()
        return AnswerCut(f"the answer to {request.method} {request.path} was cut short: {code}")

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        incoming = request.headers.get("X-Trace-Id", "")
        trace_id = incoming if _TRACE.fullmatch(incoming) else f"{_trace_ids.getrandbits(64):016x}"
        request[TRACE_ID] = trace_id
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        started = time.perf_counter()
        code = ""
        self._running[id(request)] = request
        try:
            _refuse_repeated_parameters(request.query)
            response = await handler(request)
        except SlowClient as exc:  # it stopped reading: its connection is closed
            log.info("%s %s: %s (trace %s)", request.method, request.path, exc, trace_id)
            self.metrics.observe_request(route, request.method, request.get(ANSWER_BEGUN, 200),
                                         time.perf_counter() - started, "slow_client")
            self.metrics.cut.labels(route, "slow_client").inc()
            raise
        except (asyncio.CancelledError, ConnectionError):
            # The client went away (or the server stops): nobody to answer.
            # (aiohttp says so as ConnectionResetError, its own subclass of
            # it, or a plain ConnectionError("Connection lost") while a
            # write waits for the socket: the last was taken for a crash.)
            raise
        except Exception as exc:
            begun = request.get(ANSWER_BEGUN)
            if begun is not None:  # only the connection can still say it failed
                raise self._cut(request, route, begun, exc, time.perf_counter() - started) from None
            code, response = _error_answer(exc, request, trace_id)
            if route.startswith(_ASSET_ROUTES) and response.status < 500:
                self.asset_refusals[code] += 1
        finally:
            del self._running[id(request)]
        if not response.prepared:  # streams set it themselves before they prepare
            response.headers["X-Trace-Id"] = trace_id
        self.metrics.observe_request(route, request.method, response.status, time.perf_counter() - started, code)
        return response

    def cut_running(self) -> int:
        """Close the connection of every request still running; how many.

        For the end of the shutdown grace: a handler waiting on a client that
        stopped reading (a download, a WebSocket whose client never answers
        the close) waits until the socket moves, and aiohttp, past its grace,
        only waits a second grace before cancelling it. A closed connection
        ends that wait at once."""
        cut = 0
        for request in list(self._running.values()):
            transport = request.transport
            if transport is not None and not transport.is_closing():
                transport.abort()
                cut += 1
        return cut


_ASSET_ROUTES = ("/v1/blobs", "/v1/uploads", "/v1/bundles")

# Query parameters a request may give more than once (each adds a condition).
_REPEATABLE = frozenset({"where"})


def _refuse_repeated_parameters(query: Mapping[str, str]) -> None:
    """Any other parameter given twice is refused: a handler reads the
    first, so ``?registry=a&registry=b`` answered for ``a`` while a proxy or
    log that reads the last saw ``b``."""
    keys = [name for name, _ in query.items()]  # a MultiDict's keys() names each once
    if len(keys) == len(set(keys)):
        return
    for name in dict.fromkeys(keys):
        if name not in _REPEATABLE and keys.count(name) > 1:
            raise MalformedInput(f"query parameter {name[:40]!r} is given {keys.count(name)} times; give it once",
                                 details=[{"path": f"query:{name[:40]}", "message": "given more than once"}])


# A listing's parameters whose values the audit ledger keeps: none of them
# is a record's content (a where's value and a tag may be: they are named only).
_NOTED_VALUES = ("kind", "owner", "limit", "sort", "include_deleted", "conflicted", "registry")


def listing_shape(query: Mapping[str, str]) -> str:
    """A listing's parameters as an audit note keeps them. The ledger is
    never scrubbed (docs/erasure.md), so it holds no field values: it kept
    the query string whole, a where's value (an email, a name) included."""
    parts = []
    for name, value in query.items():
        if name == "where":
            path, _, rest = value.partition(":")
            parts.append(f"where={path[:100]}:{rest.partition(':')[0][:8]}")
        elif name in _NOTED_VALUES:
            parts.append(f"{name}={value[:100]}")
        else:
            parts.append(name[:40])
    return " ".join(parts)[:400]


def search_shape(body: Mapping[str, Any]) -> str:
    """A search as an audit note keeps it: which parts it used, the fields
    its filter compares and with what, never its text or values."""
    parts = []
    if isinstance(body.get("text"), str):
        parts.append(f"text of {len(body['text'].split())} words")
    compared: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            if isinstance(node.get("field"), str):
                ops = [k for k in node if k != "field"]
                compared.append(f"{node['field'][:100]}:{(ops[0] if ops else '')[:8]}")
            for child in ("and", "or", "not"):
                if child in node:
                    walk(node[child])
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(body.get("filter"))
    if compared:
        parts.append("filter " + ",".join(compared))
    for name in ("registries", "sort", "facets", "mode", "limit", "federated"):
        if name in body:
            parts.append(f"{name}={dumps(body[name]).decode()[:100]}")
    return " ".join(parts)[:400]


def _json_refusal(raw: bytes, exc: Exception) -> str:
    """Why msgspec refused a body, in words that fit it. A high surrogate
    escaped alone (``"\\ud800"``) it calls "Input data was truncated", which
    sent people looking for a cut-off body; the standard library's parser,
    which takes lone surrogates, tells the two apart."""
    why = str(exc)
    if why == "Input data was truncated":
        try:
            json.loads(raw)
        except (ValueError, RecursionError):
            return why
        return "a \\u escape names a lone surrogate, which is no Unicode character"
    return why


def _error_answer(exc: Exception, request: web.Request, trace_id: str) -> tuple[str, web.Response]:
    """The JSON error answer for what a handler raised, and its code."""
    if isinstance(exc, RegistryError):
        return exc.code, error_response(exc, trace_id, request.path)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc  # a redirect: aiohttp sends it as it is
        mapped = _from_http_exception(exc)
        response = error_response(mapped, trace_id, request.path)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return mapped.code, response
    log.error("unexpected error answering %s %s (trace %s)", request.method, request.path, trace_id, exc_info=exc)
    return "internal_error", error_response(InternalError("internal error; the node's log has the details under "
                                                          "this trace id"), trace_id, request.path)


def _from_http_exception(exc: web.HTTPException) -> RegistryError:
    if exc.status == 404:
        return RouteNotFound("no such endpoint; see GET /v1/openapi.json")
    if exc.status == 405:
        return MethodNotAllowed(f"method not allowed here; allowed: {exc.headers.get('Allow', '')}")
    if exc.status == 413:
        return TooLarge(f"request body too large: {exc.text or ''}".strip())
    if 400 <= exc.status < 500:
        err = MalformedInput(exc.text or exc.reason)
        err.http_status = exc.status
        return err
    err = InternalError(exc.text or exc.reason)
    err.http_status = exc.status
    return err
