"""The MCP Registry read API's answers, from the records of ``grid.mcp-servers``.

The MCP Registry API (``GET /v0.1/servers``, ``.../{serverName}/versions``
and ``.../versions/{version}``; the document is vendored in
``formats/vendor/mcp-registry-openapi.yaml``, its source in the README
beside it) answers with a ``ServerResponse`` per version: the server.json
(here: the record's fields, verbatim, formats/mcp.py) and the registry's
own facts about it under ``_meta["io.modelcontextprotocol.registry/official"]``:

* **status**: ``deleted`` for a deleted record (a signed tombstone; listed
  only when asked, ``include_deleted``); ``deprecated`` when the server.json
  itself says so (``_meta["io.modelcontextprotocol.registry/official"]
  .status``, or the top-level ``status`` of the 2025-09-16 schema: the only
  places a publisher's own word about it survives an import,
  formats/mcp.py); else ``active``. A later version does not
  deprecate an earlier one: ``isLatest`` says which is newest, as the
  official registry does;
* **publishedAt**: the record's ``created_at``; **updatedAt**: its
  ``updated_at`` (RFC 3339, UTC, milliseconds);
* **isLatest**: the newest live version of that name, by the rule the MCP
  Registry's versioning guide gives aggregators (modelcontextprotocol/registry
  docs/modelcontextprotocol-io/versioning.mdx): two semantic versions (SemVer 2.0.0) compare by
  precedence, a semantic version is later than a non-semantic one, and two
  non-semantic versions (or two of equal precedence) compare by publication
  time, then by the version string. The rule needs no history, so every node
  holding the same records names the same latest version, whatever order
  the records arrived in (the official registry decides at publish time,
  where a non-semantic version published last is latest; a replicated
  registry has no single publish order to go by).

Listings are in (name, version) order (code point order of both strings),
which the opaque cursor resumes after, so a walk is stable under
concurrent inserts, as the bridge's own listings are. No I/O here: the
bridge (node/bridge/mcp_routes.py) reads the records and answers over HTTP.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from registrygrid import b64url
from registrygrid.errors import MalformedInput, NotFound, RegistryError, ValidationError
from registrygrid.formats import mcp

# The official registry's page size: 30 by default, at most 100
# (modelcontextprotocol/registry internal/api/handlers/v0/servers.go,
# ListServersInput: default:"30" maximum:"100").
DEFAULT_LIMIT = 30
MAX_LIMIT = 100
# Where the API's routes live on the bridge; their errors take the API's shape (error_body).
PREFIX = "/v0.1/"
LATEST = "latest"
STATUSES = ("active", "deprecated", "deleted")
# A cursor is base64 of the JSON [name, version]: the name is at most 200
# ASCII characters and the version 255 characters (the server.json schema),
# each at most 6 bytes of JSON (a control character's \u escape), so at most
# ~1,740 bytes, ~2,320 characters of base64; anything longer is not one of ours.
MAX_CURSOR = 4096

# SemVer 2.0.0, the regular expression semver.org recommends (section "Is
# there a suggested regular expression"), without a "v" prefix.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$", re.ASCII)
# RFC 3339 section 5.6 date-time (Go's time.RFC3339, which the official
# registry parses updated_since with, takes the same; "t" and "z" may be lower case).
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def semver_key(version: str) -> tuple[Any, ...] | None:
    """The SemVer 2.0.0 precedence of ``version`` as a sortable tuple, or None
    when it is not a semantic version. A release sorts after its
    pre-releases; pre-release identifiers compare numerically when numeric,
    lexically (ASCII) otherwise, numeric below alphanumeric, and a shorter
    list of equal identifiers first (semver.org, rule 11); build metadata is
    ignored (rule 10)."""
    match = _SEMVER.fullmatch(version)
    if match is None:
        return None
    major, minor, patch, pre, _build = match.groups()
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (int(major), int(minor), int(patch), 0, parts)


def rfc3339(ms: int) -> str:
    """Unix milliseconds as an RFC 3339 UTC timestamp with milliseconds (2025-08-07T13:15:04.280Z)."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_rfc3339(text: str, *, where: str = "query:updated_since") -> int:
    """An RFC 3339 date-time as Unix milliseconds (sub-millisecond digits dropped)."""
    if not _RFC3339.fullmatch(text):
        raise MalformedInput(f"{where.removeprefix('query:')} must be an RFC 3339 date-time such as "
                             f"2025-08-07T13:15:04.280Z, not {text[:64]!r}",
                             details=[{"path": where, "message": "not an RFC 3339 date-time"}])
    try:
        return (datetime.fromisoformat(text.upper()) - _EPOCH) // timedelta(milliseconds=1)
    except (ValueError, OverflowError):  # well-formed, but no such date or time (2025-02-30, 25:00, year 0)
        raise MalformedInput(f"{where.removeprefix('query:')}: no such date-time {text[:64]!r}",
                             details=[{"path": where, "message": "not a valid date-time"}]) from None


def encode_cursor(name: str, version: str) -> str:
    return b64url.encode(msgspec.json.encode([name, version]))


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The (name, version) a cursor resumes after; ValidationError when it is not one of ours."""
    try:
        if len(cursor) > MAX_CURSOR:
            raise ValueError("too long")
        value = msgspec.json.decode(b64url.decode(cursor))
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise ValueError("not a cursor")
    except (ValueError, msgspec.MsgspecError, RecursionError):
        raise ValidationError(f"invalid cursor {cursor[:80]!r}: pass metadata.nextCursor of the previous page "
                              "as it came", details=[{"path": "query:cursor", "message": "not a cursor"}]) from None
    return value[0], value[1]


@dataclass(frozen=True)
class Version:
    """One version of a server, as the API reports it."""

    name: str
    version: str
    server: dict[str, Any]  # the server.json: the record's fields
    record_id: str
    deleted: bool
    published_ms: int
    updated_ms: int
    status: str
    is_latest: bool

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.version

    def response(self) -> dict[str, Any]:
        """The API's ServerResponse."""
        return {"server": self.server, "_meta": {mcp.OFFICIAL_META: {
            "status": self.status, "publishedAt": rfc3339(self.published_ms),
            "updatedAt": rfc3339(self.updated_ms), "isLatest": self.is_latest}}}


@dataclass(frozen=True)
class ListQuery:
    """``GET /v0.1/servers``'s parameters, checked."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    search: str | None = None  # a substring of the name, case-insensitive
    updated_since_ms: int | None = None  # updated at or after
    version: str | None = None  # "latest", or one exact version
    include_deleted: bool = False


def publisher_status(server: Mapping[str, Any]) -> str | None:
    """The status the server.json itself names (``_meta`` under the official
    key), if it is one the API knows; ``deleted`` is not the publisher's to
    declare while the record lives."""
    meta = server.get("_meta")
    official = meta.get(mcp.OFFICIAL_META) if isinstance(meta, Mapping) else None
    status = official.get("status") if isinstance(official, Mapping) else None
    if status is None:
        status = server.get("status")  # schema 2025-09-16 and before kept it at the top level
    return status if status in ("active", "deprecated") else None


def latest_key(version: str, published_ms: int) -> tuple[Any, ...]:
    """Greatest is latest (see the module docstring for the rule)."""
    semver = semver_key(version)
    return (1, semver, published_ms, version) if semver is not None else (0, (), published_ms, version)


class Catalog:
    """Every version of every server in grid.mcp-servers, deleted ones too,
    in (name, version) order, with each one's status and isLatest."""

    def __init__(self, versions: list[Version]) -> None:
        self._versions = sorted(versions, key=lambda v: v.key)
        self._keys = [v.key for v in self._versions]

    @classmethod
    def of(cls, records: Iterable[Mapping[str, Any]]) -> Catalog:
        """From the registry's records (deleted ones included). Two records
        naming the same (name, version), which only a hand-made id allows,
        count once: a live one before a deleted one, then the one under the
        id formats/mcp.py gives that pair, then the smaller id."""
        chosen: dict[tuple[str, str], tuple[tuple[Any, ...], Mapping[str, Any]]] = {}
        for record in records:
            fields = record.get("fields")
            if record.get("kind") != mcp.KIND or not isinstance(fields, Mapping):
                continue
            name, version = fields.get("name"), fields.get("version")
            if not isinstance(name, str) or not isinstance(version, str):
                continue
            rank = (bool(record["deleted"]), record["id"] != mcp.record_id(name, version), record["id"])
            if (name, version) not in chosen or rank < chosen[name, version][0]:
                chosen[name, version] = (rank, record)
        latest: dict[str, tuple[Any, ...]] = {}
        for (name, version), (_, record) in chosen.items():
            if not record["deleted"]:
                key = latest_key(version, _published(record))
                if name not in latest or key > latest[name]:
                    latest[name] = key
        versions = []
        for (name, version), (_, record) in chosen.items():
            published = _published(record)
            deleted = bool(record["deleted"])
            server = dict(record["fields"])
            versions.append(Version(
                name=name, version=version, server=server, record_id=record["id"], deleted=deleted,
                published_ms=published, updated_ms=int(record["updated_at"]),
                status="deleted" if deleted else publisher_status(server) or "active",
                is_latest=not deleted and latest.get(name) == latest_key(version, published)))
        return cls(versions)

    def versions_where_latest(self) -> list[Version]:
        """The latest version of each server (none of a server whose versions are all deleted)."""
        return [v for v in self._versions if v.is_latest]

    def __len__(self) -> int:
        return len(self._versions)

    def page(self, query: ListQuery) -> tuple[list[Version], str | None]:
        """One page of the listing and the cursor of the next (None: the last page)."""
        start = 0
        if query.cursor is not None:
            start = bisect.bisect_right(self._keys, decode_cursor(query.cursor))
        needle = query.search.casefold() if query.search else None
        out: list[Version] = []
        for version in self._versions[start:]:
            if version.deleted and not query.include_deleted:
                continue
            if needle is not None and needle not in version.name.casefold():
                continue
            if query.updated_since_ms is not None and version.updated_ms < query.updated_since_ms:
                continue
            if query.version == LATEST and not version.is_latest:
                continue
            if query.version not in (None, LATEST) and version.version != query.version:
                continue
            if len(out) == query.limit:
                return out, encode_cursor(*out[-1].key)
            out.append(version)
        return out, None

    def versions(self, name: str, *, include_deleted: bool = False) -> list[Version]:
        """Every version of ``name``, newest publication first; NotFound when it has none."""
        lo = hi = bisect.bisect_left(self._keys, (name, ""))
        while hi < len(self._keys) and self._keys[hi][0] == name:
            hi += 1
        found = [v for v in self._versions[lo:hi] if include_deleted or not v.deleted]
        if not found:
            raise NotFound("Server not found", details=[{"path": "serverName", "message": name[:200]}])
        return sorted(found, key=lambda v: (v.published_ms, v.version), reverse=True)

    def get(self, name: str, version: str, *, include_deleted: bool = False) -> Version:
        """One version (``latest``: the latest); NotFound when there is no such one."""
        found = self.versions(name, include_deleted=include_deleted)
        if version == LATEST:
            match = [v for v in found if v.is_latest]
        else:
            match = [v for v in found if v.version == version]
        if not match:
            raise NotFound("Server version not found",
                           details=[{"path": "version", "message": f"{name[:200]}@{version[:255]}"}])
        return match[0]


def _published(record: Mapping[str, Any]) -> int:
    created = record.get("created_at")
    return int(created) if created is not None else int(record["updated_at"])


def server_list(versions: Iterable[Version], next_cursor: str | None = None) -> dict[str, Any]:
    """The API's ServerList; metadata.nextCursor only when there is a next page
    (the official schema types it a string: absent, not null, at the end)."""
    servers = [v.response() for v in versions]
    metadata: dict[str, Any] = {"count": len(servers)}
    if next_cursor is not None:
        metadata["nextCursor"] = next_cursor
    return {"servers": servers, "metadata": metadata}


def error_body(exc: RegistryError, trace_id: str) -> dict[str, Any]:
    """An error in the API's shape: the official document gives every error
    body as ``{"error": "<message>"}``, so ``error`` is the message; the
    bridge's stable code, details and trace id stand beside it (the
    document's error objects allow other members)."""
    details = msgspec.to_builtins(exc.details, enc_hook=str)  # tuples, sets, bytes: JSON values
    return {"error": exc.message, "code": exc.code, "details": details, "trace_id": trace_id}
