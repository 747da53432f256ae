"""Search for users: answering a query with records.

``answer`` runs a query (its JSON form, search/query.py) on an index and
shows each hit as the record the store holds now, with its score and, if
asked, each component of it. No trio here (DESIGN.md layering): the component
that keeps the index caught up runs in node/search.py; the CLI calls
``answer`` directly when no node runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from registrygrid.errors import RegistryError
from registrygrid.search import query as q
from registrygrid.search.index import SearchIndex


def index_path(home_path: Path) -> Path:
    return home_path / "index"


def verifier(engine: Any) -> Callable[[str], bool]:
    """Whether an org is a verified member of the node's federation (a node
    outside any federation verifies nobody)."""
    trust = engine.trust
    return lambda org: trust.federation is not None and trust.is_member(org)


def answer(index: SearchIndex, registry: Any, body: Any, *, registries: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The answer to a query: its hits as records (in order), the total,
    facets and the next cursor. ValidationError names a bad part of it."""
    query = q.parse_query(body)
    indexed_through = index.cursor  # read first: the hits reflect at least this much of the feed
    found = index.search(query, registries=registries)
    items = []
    for hit in found["hits"]:
        try:
            record = registry.get(hit.registry, hit.id)
        except RegistryError:  # deleted since it was indexed: the next catch-up drops it
            continue
        item: dict[str, Any] = {"registry": hit.registry, "id": hit.id, "score": round(hit.score, 6),
                                "record": record}
        if query.sort.field != "relevance":
            item["sort_value"] = hit.value
        if query.explain and hit.components is not None:
            item["explain"] = {k: round(v, 6) for k, v in hit.components.items()}
        items.append(item)
    return {"items": items, "total": found["total"], "facets": found["facets"], "next_cursor": found["next_cursor"],
            "indexed_through": indexed_through if query.mode == "text" else min(
                indexed_through, index.vectors.cursor if index.vectors is not None else 0)}
