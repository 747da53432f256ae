"""ARD search (Agentic Resource Discovery, draft v0.9): its request and answer,
mapped onto this node's search language (search/query.py).

    POST /search
    {"query": {"text": "summarize legal contracts",
               "filter": {"type": ["application/mcp-server+json"], "tags": ["legal"]}},
     "federation": "none" | "referrals" | "auto", "pageSize": 5, "pageToken": "..."}

-> ``{"results": [<AI Catalog entry + "score" 0-100>...], "referrals": [...],
"nextPageToken": ...}``.

Mapping: ``query.text`` is the search text; ``filter.type`` (media types)
picks the registries (``application/mcp-server+json`` -> grid.mcp-servers,
``application/a2a-agent-card+json`` -> grid.agent-cards, any other type ->
the AI Catalog entries of that type); ``tags`` and ``capabilities`` match
the records' tags; ``publisher`` the owner org's did:key. Within a key
values are OR'd, across keys AND'd, as ARD says. ``federation: auto`` is
this node's federated query (its peers and followed registries' providers,
every remote record verified); ``none`` and ``referrals`` search this node
alone, and ``referrals`` is always empty: the peers this node federates
with are not HTTP discovery services a client could call. Each result is
an AI Catalog entry: the record's artifact inline (``data``) with its
media type, or, for an imported catalog entry, the entry as it came;
``score`` is the relevance scaled to 0-100 within the page, informational
only (ARD: never a trust signal).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registrygrid.errors import ValidationError
from registrygrid.formats import a2a, ai_catalog, mcp, shape

MEDIA_MCP = "application/mcp-server+json"
MEDIA_A2A = "application/a2a-agent-card+json"
FEDERATION = ("none", "referrals", "auto")
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 10


def _bad(path: str, message: str) -> ValidationError:
    return ValidationError(f"ARD search {path}: {message}", details=[{"path": path, "message": message}])


# Where the parts of the search-language query to_query builds came from
# in the ARD request: a refusal of them names the request's own member.
_REQUEST_PATHS = (("/text", "/query/text"), ("/cursor", "/pageToken"), ("/limit", "/pageSize"),
                  ("/filter", "/query/filter"))


def request_error(exc: ValidationError) -> ValidationError:
    """A refusal of the search language, named by the ARD request's paths
    (it said ``/cursor`` of a ``pageToken``, ``/text`` of ``query.text``)."""
    details = exc.details if isinstance(exc.details, list) else []
    moved = []
    for detail in details:
        path = str(detail.get("path", "")) if isinstance(detail, Mapping) else ""
        for ours, theirs in _REQUEST_PATHS:
            if path == ours or path.startswith(ours + "/"):
                path = theirs  # a filter this module built: the request's filter as a whole
                break
        moved.append({"path": path, "message": str(detail.get("message", "")) if isinstance(detail, Mapping) else ""})
    if not moved:
        return _bad("/", exc.message)
    return ValidationError(f"ARD search {moved[0]['path']}: {moved[0]['message']}", details=moved)


def to_query(body: Any) -> dict[str, Any]:
    """The search-language query for an ARD request; ValidationError naming a bad part."""
    if not isinstance(body, Mapping):
        raise _bad("/", "an object")
    for key in body:
        if key not in ("query", "federation", "pageSize", "pageToken"):
            raise _bad(f"/{key}", "unknown member; ARD search takes query, federation, pageSize, pageToken")
    query = body.get("query")
    if not isinstance(query, Mapping) or not isinstance(query.get("text"), str) or not query["text"].strip():
        raise _bad("/query/text", "required: the task in plain language")
    federation = body.get("federation", "none")
    if federation not in FEDERATION:
        raise _bad("/federation", f"one of {', '.join(FEDERATION)}")
    size = body.get("pageSize", DEFAULT_PAGE_SIZE)
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_PAGE_SIZE:
        raise _bad("/pageSize", f"an integer from 1 to {MAX_PAGE_SIZE}")
    out: dict[str, Any] = {"text": query["text"], "limit": size}
    clauses: list[dict[str, Any]] = []
    registries: set[str] = set()
    raw_filter = query.get("filter") or {}
    if not isinstance(raw_filter, Mapping):
        raise _bad("/query/filter", "an object of field -> values")
    for key, values in raw_filter.items():
        values = values if isinstance(values, list) else [values]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise _bad(f"/query/filter/{key}", "a non-empty string or list of strings")
        if key == "type":
            other = []
            for media in values:
                if media == MEDIA_MCP:
                    registries.add(mcp.REGISTRY)
                elif media == MEDIA_A2A:
                    registries.add(a2a.REGISTRY)
                else:
                    other.append(media)
            if other:
                registries.add(ai_catalog.REGISTRY)
                clauses.append({"or": [{"field": "registry", "ne": ai_catalog.REGISTRY},
                                       {"field": "fields.entry.type", "in": other}]})
        elif key in ("tags", "capabilities"):
            clauses.append({"field": "tags", "in": values})
        elif key == "publisher":
            clauses.append({"field": "owner", "in": values})
        else:
            raise _bad(f"/query/filter/{key}", "this node filters by type, tags, capabilities and publisher")
    out["registries"] = sorted(registries or {mcp.REGISTRY, a2a.REGISTRY, ai_catalog.REGISTRY})
    if clauses:
        out["filter"] = clauses[0] if len(clauses) == 1 else {"and": clauses}
    if body.get("pageToken") is not None:
        if federation == "auto":
            raise _bad("/pageToken", "a federated answer is one page")
        out["cursor"] = body["pageToken"]
    if federation == "auto":
        out["federated"] = True
    return out


def entry_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record of the three registries as an AI Catalog entry."""
    registry, fields = record["registry"], record["fields"]
    if registry == ai_catalog.REGISTRY:
        entry = dict(fields["entry"])
        if isinstance(entry.get("tags"), list):  # the status words are the node's verdicts on A2A cards only
            entry["tags"] = [t for t in entry["tags"]
                             if not (isinstance(t, str) and t.startswith(shape.SIGNATURE_TAG_PREFIX))]
        return entry
    if registry == mcp.REGISTRY:
        server = mcp.from_record(record)
        return {"identifier": f"urn:registrygrid:{registry}:{record['id']}",
                "displayName": str(server.get("title") or server.get("name")), "type": MEDIA_MCP,
                "description": str(server.get("description", "")), "version": str(server.get("version", "")),
                "data": server}
    card = a2a.from_record(record)
    return {"identifier": f"urn:registrygrid:{registry}:{record['id']}", "displayName": str(card.get("name")),
            "type": MEDIA_A2A, "description": str(card.get("description", "")), "data": card,
            "tags": [f"signature:{a2a.shown_status(record)}"]}


def to_answer(answer: Mapping[str, Any]) -> dict[str, Any]:
    """An answer of the search language as ARD's."""
    items = answer.get("items", [])
    top = max((float(i.get("score") or 0) for i in items), default=0.0)
    results = []
    for item in items:
        entry = entry_of(item["record"])
        entry["score"] = round(100 * float(item.get("score") or 0) / top) if top > 0 else 0
        results.append(entry)
    out: dict[str, Any] = {"results": results, "referrals": []}
    if answer.get("next_cursor"):
        out["nextPageToken"] = answer["next_cursor"]
    return out
