"""The bridge's requests and answers as both clients build and read them. No I/O here.

``BridgeClient`` (sync.py) and ``AsyncBridgeClient`` (aio.py) differ only
in how bytes move; what they send (paths, queries, bodies, headers) and
how they read the answers (records, pages, write results, feed events,
audit entries, typed errors) is written once, here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, quote, urlencode, urlsplit

from registrygrid.crdt.conflicts import ABSENT
from registrygrid.engine.ops import WriteResult
from registrygrid.errors import MalformedInput, NotFound, Unavailable, ValidationError
from registrygrid.files import read_json
from registrygrid.home import Home
from registrygrid.storage.audit import AuditEntry
from registrygrid.storage.feed import FeedEvent

# Long enough for a write waiting behind a 2,000-op group commit and for a
# 30 s long-poll; a request to a hung node still fails instead of blocking forever.
DEFAULT_TIMEOUT_S = 60.0
# A rebuild answers once the whole feed is indexed again. The index builds
# ~8,000 records/s (benchmarks/bench_search.py, 20k records); 30 minutes
# covers a million records even at a tenth of that on a loaded node.
REBUILD_TIMEOUT_S = 30 * 60.0
# An SSE stream that sent nothing for this long is dead (a half-open TCP
# connection after the node's host vanished): three of the bridge's 15 s
# keepalive comments missed (node/bridge/streaming.py HEARTBEAT_S).
STREAM_IDLE_S = 45.0

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
IDEMPOTENCY_KEY = "Idempotency-Key"
# RFC 9110 9.2.1: safe methods change nothing, so sending one twice is harmless.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Request:
    """One call, ready to send: ``target`` is the encoded path and query."""

    method: str
    path: str  # as the caller named it, for messages and the retry hook
    target: str
    payload: bytes | None
    headers: dict[str, str]
    # May it be sent again after an answer was lost or a 503? (retry.py)
    replayable: bool


def build(method: str, path: str, *, token: str | None, query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
          body: Any = None, headers: Mapping[str, str] | None = None, replayable: bool | None = None,
          accept: str = JSON) -> Request:
    """``replayable`` None: a safe method, or a request carrying an Idempotency-Key."""
    target = path
    if query:
        items = query.items() if isinstance(query, Mapping) else query
        pairs = [(k, query_value(v)) for k, v in items if v is not None]
        if pairs:
            target = f"{path}?{urlencode(pairs)}"
    send = {"Accept": accept}
    if token:
        send["Authorization"] = f"Bearer {token}"
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        send["Content-Type"] = JSON
    send.update(headers or {})
    if replayable is None:
        replayable = method in SAFE_METHODS or IDEMPOTENCY_KEY in send
    return Request(method, path, target, payload, send, replayable)


def decode(raw: bytes, headers: Mapping[str, str]) -> Any:
    """An answer's body: decoded JSON, or the bytes (metrics text)."""
    return json.loads(raw) if raw and "json" in headers.get("content-type", "") else raw


def check_url(url: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"bridge URL must be http(s)://host:port, not {url!r}")
    return parts


def bridge_file(home: str | Path | Home | None) -> tuple[str, str]:
    """(URL, token) of the node running on ``home``, from HOME/bridge.json."""
    home = home if isinstance(home, Home) else Home(home)
    path = home.path / "bridge.json"
    try:
        info = read_json(path)
        url, token, pid = str(info["url"]), str(info["token"]), info.get("pid")
    except NotFound:
        raise Unavailable(f"{path} does not exist: no node serves a bridge on this home "
                          "(not started yet, or started with --no-bridge)") from None
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise MalformedInput(f"{path} is not a bridge file: {exc}") from None
    # A file a killed node left names its port, which another process may
    # serve now: the home's admin token went to it. Only the process that
    # holds the home's lock wrote the file that counts.
    holder = home.lock_holder()
    if pid is not None and not (holder or "").startswith(f"pid {pid} ") and holder != f"pid {pid}":
        raise Unavailable(f"{path} was left by a node that no longer runs (pid {pid}); no node serves a bridge "
                          "on this home now" + (f" ({holder} holds it, without one)" if holder else ""))
    return url, token


def seg(value: str) -> str:
    return quote(str(value), safe="")


def query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def new_idempotency_key() -> str:
    """A fresh key for one write: its retries reuse it, so the bridge applies it once."""
    return str(uuid.uuid4())


def keyed(idempotency_key: str | None, generate: bool = True) -> dict[str, str]:
    """The header of a creating write: the caller's key, else a new one (if ``generate``)."""
    if idempotency_key:
        return {IDEMPOTENCY_KEY: idempotency_key}
    return {IDEMPOTENCY_KEY: new_idempotency_key()} if generate else {}


def if_match(change_id: str | None) -> dict[str, str] | None:
    return {"If-Match": f'"{change_id}"'} if change_id else None


# ---------------------------------------------------------------- paths and bodies


def records_path(registry: str | None) -> str:
    return f"/v1/registries/{seg(registry)}/records" if registry is not None else "/v1/records"


def record_path(registry: str, id: str) -> str:
    return f"/v1/registries/{seg(registry)}/records/{seg(id)}"


def record_body(kind: str, fields: Mapping[str, Any], *, id: str | None, tags: Sequence[str],
                links: Sequence[Mapping[str, str]], schema: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "fields": dict(fields), "tags": list(tags), "links": list(links)}
    if id is not None:
        body["id"] = id
    if schema is not None:
        body["schema"] = schema
    return body


def update_request(*, fields: Mapping[str, Any] | None, patch: Mapping[str, Any] | None,
                   tags: Sequence[str] | None, links: Sequence[Mapping[str, str]] | None,
                   schema: int | None) -> tuple[str, dict[str, Any]]:
    """(method, body): PUT replaces the fields, PATCH merges a patch (or only tags, links, schema)."""
    if fields is not None and patch is not None:
        raise ValidationError("give either fields (replace) or patch (merge), not both")
    body: dict[str, Any] = {}
    if tags is not None:
        body["tags"] = list(tags)
    if links is not None:
        body["links"] = list(links)
    if schema is not None:
        body["schema"] = schema
    if fields is not None:
        body["fields"] = dict(fields)
        return "PUT", body
    if patch is not None:
        body["patch"] = dict(patch)
    return "PATCH", body


def list_query(*, kind: str | None, tag: str | None, owner: str | None, where: Sequence[tuple[str, str, Any]],
               limit: int, cursor: str | None, include_deleted: bool,
               conflicted: bool = False) -> list[tuple[str, Any]]:
    query: list[tuple[str, Any]] = [("kind", kind), ("tag", tag), ("owner", owner), ("limit", limit),
                                    ("cursor", cursor), ("include_deleted", include_deleted or None),
                                    ("conflicted", conflicted or None)]
    return query + [("where", f"{path}:{op}:{json.dumps(value)}") for path, op, value in where]


def changes_query(since: int, *, limit: int | None, registry: str | None, kind: str | None,
                  wait: float | None = None) -> dict[str, Any]:
    return {"since": since, "limit": limit, "registry": registry, "kind": kind, "wait": wait}


def next_page(page: Mapping[str, Any], since: int) -> int | None:
    """Where ``iter_changes`` reads on after a page of /v1/changes, or None
    at the feed's head. An empty page is not the end: a filtered read looks
    at a bounded slice of the feed and its ``next`` moves on past what it
    looked at (node/bridge/streaming.py, SCAN_EVENTS)."""
    after = int(page["next"])
    if after <= since or (not page["events"] and after >= int(page["head"])):
        return None
    return after


def resolution_body(*, value: Any, removed: bool, note: str) -> dict[str, Any]:
    """``removed`` wins over ``value``, as in ``LocalRegistry.resolve_dispute``."""
    body: dict[str, Any] = {}
    if removed:
        body["removed"] = True
    elif value is not ABSENT:
        body["value"] = value
    if note:
        body["note"] = note
    return body


def erase_body(reason: str, blobs: Sequence[str]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if reason:
        body["reason"] = reason
    if blobs:
        body["blobs"] = list(blobs)
    return body


def view_body(query: Mapping[str, Any], *, description: str, title: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"query": dict(query)}
    if description:
        body["description"] = description
    if title:
        body["title"] = title
    return body


def explain_body(subject: str, action: str, registry: str, record_id: str | None, *, fields: Sequence[str],
                 local_roles: Sequence[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"subject": subject, "action": action, "registry": registry, "fields": list(fields)}
    if local_roles:
        body["token_role"] = local_roles[0].removeprefix("app:")
    if record_id is not None:
        body["record"] = record_id
    return body


def registry_body(name: str, kinds: Sequence[str], *, description: str, write_policy: str, conflict_policy: Any,
                  replication: str, readers: Sequence[str], write_roles: Sequence[str],
                  limits: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "kinds": list(kinds), "description": description,
                            "write_policy": write_policy, "conflict_policy": conflict_policy,
                            "replication": replication}
    if readers:
        body["readers"] = list(readers)
    if write_roles:
        body["write_roles"] = list(write_roles)
    if limits:
        body["limits"] = dict(limits)
    return body


def kind_body(name: str, version: int, schema: Mapping[str, Any], *, registry: str,
              description: str) -> dict[str, Any]:
    if not isinstance(schema, Mapping):
        raise ValidationError(f"a kind's schema is a JSON object, not {type(schema).__name__}")
    body: dict[str, Any] = {"name": name, "version": version, "schema": dict(schema), "description": description}
    if registry:
        body["registry"] = registry
    return body


def token_body(role: str, *, registry: str | None, expires_in: int | None, name: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"role": role}
    if registry is not None:
        body["registry"] = registry
    if expires_in is not None:
        body["expires_in"] = expires_in
    if name:
        body["name"] = name
    return body


# ---------------------------------------------------------------- answers


def write_result(data: Mapping[str, Any]) -> WriteResult:
    return WriteResult(data["status"], data["registry"], data["id"], data["change_id"], data["feed_seq"],
                       data.get("record"))


def feed_event(data: Mapping[str, Any]) -> FeedEvent:
    return FeedEvent(data["seq"], data["type"], data["registry"], data["record"], data["kind"], data["change"],
                     data["author"], tuple(data["hlc"]), data["origin"])  # type: ignore[arg-type]


def audit_entry(data: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(data["seq"], data["at_ms"], data["actor"], data["action"], data["target"], data["reason"],
                      data["before"], data["after"], data["change"], bytes.fromhex(data["prev"]),
                      bytes.fromhex(data["hash"]))


def stream_event(data: str) -> FeedEvent | None:
    """The feed event an SSE frame's data holds; None for a frame that is
    no feed event (a kind this client does not know: skipped). A frame that
    claims a feed sequence but does not decode is an error, not a skip:
    skipping it would lose that event."""
    try:
        decoded = json.loads(data)
    except ValueError:
        return None
    if not isinstance(decoded, dict) or "seq" not in decoded:
        return None
    try:
        return feed_event(decoded)
    except (KeyError, TypeError) as exc:
        raise MalformedInput(f"the changefeed sent an event this client cannot read: {exc!r}") from None
