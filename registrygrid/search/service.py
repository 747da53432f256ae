"""Search for users: answering a query with records.

``answer`` runs a query (its JSON form, search/query.py) on an index and
shows each hit as the record the store holds now, with its score and, if
asked, each component of it. No trio here (DESIGN.md layering): the component
that keeps the index caught up runs in node/search.py; the CLI calls
``answer`` directly when no node runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registrygrid.engine import registries as regs
from registrygrid.engine.subjects import SUBJECT_REGISTRIES
from registrygrid.errors import MalformedInput, RegistryError
from registrygrid.protocol import federated_search as wire
from registrygrid.search import query as q
from registrygrid.search.index import SearchIndex
from registrygrid.storage import changes, records


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
    found = index.search(query, registries=registries)
    indexed_through = found["through"]  # the hits reflect at least this much of the feed (a walk's, its first page's)
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


def readable_registries(registry: Any, org: str | None, *, member: bool) -> tuple[str, ...]:
    """The registries a peer may search here: for a member of this node's
    federation (``org``), every registry its org may read (built-ins, shared
    ones, private ones that name it); for anyone else, the public ones."""
    # Not the built-in records that speak of other registries (a private
    # one's equivocation reports, erasure notices: engine/subjects.py): a
    # node holds every one its org may read (sync brings them), so a query
    # of them is answered at home, and a peer's answer or total would tell
    # what a reader's node holds of registries the asker may not read.
    readable = [name for name in regs.BUILTINS if name not in SUBJECT_REGISTRIES] if member else []
    for described in registry.iter_all(regs.REGISTRY_OF_REGISTRIES):
        desc = regs.descriptor_from_record(described)
        if (desc.readable_by(org) if member else desc.replication == "public"):
            readable.append(desc.name)
    return tuple(readable)


def answer_peer(index: SearchIndex, registry: Any, request: wire.SearchRequest, readable: tuple[str, ...]) -> bytes:
    """A peer's federated query, answered from ``index`` over ``readable``:
    one page of hits, each with its record's signed changes (the asker
    rebuilds the record from them: search/proof.py), within the protocol's
    caps. ValidationError names a bad part of the query."""
    try:
        body = json.loads(request.query)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the parser's depth
        raise MalformedInput(f"the query is not JSON: {exc}") from None
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("federated", "cursor")}  # one hop, one page
    query = q.parse_query(body)
    indexed_through = index.cursor
    if not readable:
        return wire.encode_response(wire.SearchResponse([], 0, indexed_through, 0))
    found = index.search(query, registries=readable)
    store = registry.store
    hits: list[wire.Hit] = []
    size, withheld = 0, 0
    with store.read() as txn:
        for hit in found["hits"]:
            cids = [cid for _, cid in records.history(store, txn, hit.registry, hit.id)]
            if len(cids) > wire.MAX_CHANGES_PER_HIT:
                withheld += 1
                continue
            wires = [changes.wire(store, txn, cid) for cid in cids]
            if not wires or any(w is None for w in wires):
                continue  # deleted or rebuilt since it was indexed: the next catch-up drops it
            cost = sum(len(w) for w in wires if w is not None) + 256
            if size + cost > wire.MAX_RESPONSE_BYTES - 64 * 1024:
                withheld += 1
                continue
            size += cost
            sort_value = hit.value if query.sort.field != "relevance" else None
            hits.append(wire.Hit(hit.registry, hit.id, float(hit.score), sort_value,
                                 [w for w in wires if w is not None]))
    return wire.encode_response(wire.SearchResponse(hits, found["total"], indexed_through, withheld))
