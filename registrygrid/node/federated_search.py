"""Federated queries: one query asked of this node, its federation's peers and
the providers of the registries it follows, answered with what verifies.

    {"text": "summarize", "federated": {"deadline_ms": 2000}}

``federated_search`` answers the query from the local index and, at the
same time, asks ``/registrygrid/search/1.0.0`` (protocol/federated_search.py)
of every connected member of the federation (at most ``MAX_PEERS``) and,
for each followed registry the query may reach, of one of its providers
(found in the DHT). Each source gets the same deadline; a source that has
not answered by then is reported as ``timeout``, never waited for. Every
remote hit is rebuilt from its signed changes before it is shown
(search/proof.py), judged by this node's own trust state for the
federation's registries and by the followed copy's for a followed one; a
hit that does not verify is dropped and counted against its source.

Merging: hits are deduplicated by (registry, id), each item names every
source that returned it, and shows the newest verified copy (by its latest
change). Relevance is merged by reciprocal rank fusion (a BM25 score means
nothing on another node's index, whose term statistics differ: only ranks
compare); a field sort merges by the field's value. The answer is one page
(its sources' cursors do not line up); facets and total are the local
index's, and each source reports its own total.

Serving (``serve_search``): a peer's query is answered from the node's
index over the registries the peer may read: every registry its org may
read if it is a member of this federation, the public ones otherwise.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from registrygrid.errors import Disabled, RegistryError, Unavailable, Unverifiable
from registrygrid.node.remote_read import dial
from registrygrid.node.transport import P2PError
from registrygrid.protocol import federated_search as wire
from registrygrid.search import query as q
from registrygrid.search.fields import normalize
from registrygrid.search.index import doc_key, kid_of
from registrygrid.search.proof import rebuild_record
from registrygrid.search.service import answer_peer, readable_registries, verifier

log = logging.getLogger(__name__)

# Peers asked at once: each is one request and one answer of up to 8 MiB;
# 32 covers a federation's connected members (the node keeps at most 64).
MAX_PEERS = 32
# What checking the peers' hits of one query may take: changes replayed, and
# at least this long past the query's deadline (one peer sent one record
# of 256 changes 72 times: 20 s for a query of 500 ms).
MAX_CHECKED_CHANGES = 20_000
MIN_CHECK_S = 1.0
# Followed registries asked at once (a node follows at most 64).
MAX_FOLLOWED = 16
# Rank fusion's constant (Cormack et al. 2009): rank r counts 1 / (K + r).
RRF_K = 60
LOCAL = "local"


def serve_search(service: Any, data: bytes, org: str | None, member: bool) -> bytes:
    """A peer's query, answered from ``service``'s index (a worker thread)."""
    request = wire.decode_request(data)
    if service is None or service.index is None:
        raise Unavailable("this node keeps no search index")
    readable = readable_registries(service.node.registry, org, member=member)
    return answer_peer(service.index, service.node.registry, request, readable)


@dataclass
class _Source:
    """One source's part of the answer."""

    name: str  # "local" or a peer id
    kind: str  # local, peer (a member of the federation) or provider (of a followed registry)
    registry: str | None = None  # a provider's followed registry
    status: str = "pending"  # ok, timeout, failed
    error: str | None = None
    response: wire.SearchResponse | None = None
    hits: list[dict[str, Any]] = field(default_factory=list)  # verified: registry, id, record, rank, sort_value
    unverified: int = 0
    unchecked: int = 0  # hits left unchecked: the query's checking budget ran out
    total: int = 0
    failure: RegistryError | None = None  # the local index's refusal (a bad query): the caller's error
    answer: dict[str, Any] = field(default_factory=dict)  # the local index's whole answer (facets, total)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.name, "kind": self.kind, "status": self.status,
                               "hits": len(self.hits)}
        if self.registry is not None:
            out["registry"] = self.registry
        if self.status == "ok":
            out["total"] = self.total
            if self.response is not None:
                out.update(unverified=self.unverified, unchecked=self.unchecked, withheld=self.response.withheld,
                           indexed_through=self.response.indexed_through)
        if self.error is not None:
            out["error"] = self.error
        return out


async def federated_search(node: Any, body: Any, scope: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The merged, verified answer to ``body`` (a query with ``federated``)."""
    query = q.parse_query(body)
    assert query.federated is not None, "a federated query names federated"
    service = node.component("search")
    if service is None:
        raise Disabled("this node keeps no search index: it was started with --no-search")
    federation = node.component("federation")
    metrics = federation.metrics if federation is not None else None
    if metrics is not None:
        metrics["search.federated"] += 1
    local_body = {k: v for k, v in body.items() if k != "federated"}
    remote_body = {k: v for k, v in local_body.items() if k != "explain"}
    if scope is not None:
        remote_body["registries"] = list(scope)
    deadline_s = query.federated.deadline_ms / 1000

    local = _Source(LOCAL, "local")
    sources = [local]
    remote: list[tuple[_Source, str, list[str], bytes]] = []  # source, peer, its addresses, the request
    if federation is not None and federation.host is not None:
        request = wire.encode_request(json.dumps(remote_body).encode(), query.federated.deadline_ms)
        connected = set(federation.host.connected_peers())
        # Members that still stand: one revoked since its hello is expelled
        # here, not sent the query (it may name private registries).
        members = [p for p in sorted(federation.admitted) if p in connected and federation.member(p) is not None]
        for peer in members[:MAX_PEERS]:
            remote.append((_Source(peer, "peer"), peer, [], request))
        remote += await _providers(federation, query, remote_body, scope, deadline_s)
    sources += [source for source, *_ in remote]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_ask_local, service, local, local_body, scope)
        for source, peer, addrs, request in remote:
            nursery.start_soon(_ask_peer, federation, source, peer, addrs, request, deadline_s)
    if metrics is not None:
        metrics["search.peer_timeouts"] += sum(s.status == "timeout" for s in sources)
    if local.status != "ok":  # the local index's own error (a bad query, no semantic extra): the caller's
        assert local.failure is not None
        raise local.failure
    await trio.to_thread.run_sync(_verify_all, node, federation, sources, query, scope)
    if metrics is not None:
        metrics["search.unverified"] += sum(s.unverified for s in sources)
    return _merge(query, sources, local)


async def _providers(federation: Any, query: q.Query, remote_body: dict[str, Any], scope: tuple[str, ...] | None,
                     deadline_s: float) -> list[tuple[_Source, str, list[str], bytes]]:
    """For each followed registry the query reaches, one provider to ask
    (the first the DHT names that is not this node) and its request."""
    follows, directory = federation.follows, federation.directory
    if follows is None or directory is None:
        return []
    wanted = set(scope or ()) | set(query.registries)
    names = sorted(n for n in dict(follows.mirrors) if not wanted or n in wanted)[:MAX_FOLLOWED]
    found: list[tuple[_Source, str, list[str], bytes]] = []

    async def resolve(name: str) -> None:
        try:
            with trio.fail_after(deadline_s):
                resolution = await directory.resolve(name)
        except (RegistryError, trio.TooSlowError):
            return  # no provider known in time: the followed copy is still searched by `rgrid registry` reads
        for provider in resolution.get("providers", []):
            if provider["peer_id"] != federation.host.peer_id:
                request = wire.encode_request(json.dumps({**remote_body, "registries": [name]}).encode(),
                                              int(deadline_s * 1000))
                found.append((_Source(provider["peer_id"], "provider", registry=name), provider["peer_id"],
                              list(provider.get("addrs", [])), request))
                return

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(resolve, name)
    return found


async def _ask_local(service: Any, source: _Source, body: dict[str, Any], scope: tuple[str, ...] | None) -> None:
    try:
        answer = await trio.to_thread.run_sync(service.search, body, scope)
    except RegistryError as exc:
        source.status, source.error = "failed", f"{exc.code}: {exc.message}"
        source.failure = exc
        return
    source.status, source.total = "ok", answer["total"]
    source.answer = answer
    for rank, item in enumerate(answer["items"]):
        source.hits.append({"registry": item["registry"], "id": item["id"], "record": item["record"],
                            "rank": rank, "sort_value": item.get("sort_value"), "explain": item.get("explain")})


async def _ask_peer(federation: Any, source: _Source, peer: str, addrs: list[str], request: bytes,
                    deadline_s: float) -> None:
    with trio.move_on_after(deadline_s) as scope:
        try:
            if addrs:
                await dial(federation.host, peer, addrs)
            data = await federation.host.request(peer, wire.SEARCH_PROTOCOL_ID, request, timeout=deadline_s + 1)
            source.response = wire.decode_response(data)
        except (P2PError, RegistryError) as exc:
            source.status, source.error = "failed", exc.message[:300]
            return
    if scope.cancelled_caught:
        source.status, source.error = "timeout", f"no answer within {int(deadline_s * 1000)} ms"
        return
    source.status = "ok"


def _verify_all(node: Any, federation: Any, sources: list[_Source], query: q.Query,
                scope: tuple[str, ...] | None) -> None:
    """Rebuild every remote hit from its changes (a worker thread): the
    federation's registries by this node's engine, a followed registry's by
    its copy's. A hit counts only if it is one the query asked for: in the
    token's registries and the query's, passing its filter, its sort value
    one the record holds, once per source. (A peer's hits were taken as
    authentic records alone: a token limited to one registry was shown
    another's, and a forged sort value or a hit sent a hundred times put a
    record first.) Checking stops at the query's deadline or
    MAX_CHECKED_CHANGES changes: the rest are counted ``unchecked``."""
    allowed = set(scope) if scope is not None else None
    asked = set(query.registries) or None
    org_verified, local_org = verifier(node.engine), node.engine.owner
    stop = time.monotonic() + max(query.federated.deadline_ms / 1000 if query.federated else 0, MIN_CHECK_S)
    changes = 0
    for source in sources:
        if source.kind == LOCAL or source.response is None:
            continue
        source.total = source.response.total
        mirror = federation.follows.mirror(source.registry) \
            if source.kind == "provider" and federation.follows is not None else None
        seen: set[tuple[str, str]] = set()
        for rank, hit in enumerate(source.response.hits):
            if time.monotonic() > stop or changes + len(hit.changes) > MAX_CHECKED_CHANGES:
                source.unchecked = len(source.response.hits) - rank
                break
            try:
                if (hit.registry, hit.id) in seen:
                    raise Unverifiable("it sent this hit twice")
                seen.add((hit.registry, hit.id))
                if (allowed is not None and hit.registry not in allowed) or (asked and hit.registry not in asked):
                    raise Unverifiable(f"the query did not ask for {hit.registry}")
                changes += len(hit.changes)
                if source.kind == "provider":
                    if mirror is None or hit.registry != source.registry:
                        raise Unverifiable(f"it answered for {hit.registry}, not the followed {source.registry}")
                    with mirror.use() as copy:
                        record = rebuild_record(copy.engine, hit.registry, hit.id, hit.changes)
                else:
                    record = rebuild_record(node.engine, hit.registry, hit.id, hit.changes)
                sort_value = _checked(query, record, hit.sort_value, org_verified, local_org)
            except RegistryError as exc:
                source.unverified += 1
                log.warning("search: dropped %s/%s from %s: %s", hit.registry, hit.id, source.name, exc.message)
                continue
            source.hits.append({"registry": hit.registry, "id": hit.id, "record": record, "rank": rank,
                                "sort_value": sort_value})


def _checked(query: q.Query, record: dict[str, Any], sort_value: Any, org_verified: Any,
             local_org: str | None) -> Any:
    """``sort_value`` if the rebuilt ``record`` passes the query's filter and
    holds that value in the sorted field; Unverifiable otherwise. (Its text
    is not scored again: a peer's relevance is its own index's.)"""
    doc = normalize(record, org_verified=org_verified, local_org=local_org)
    if query.filter is not None and not q.matches(query.filter, doc):
        raise Unverifiable("the record does not pass the query's filter")
    if query.sort.field == "relevance":
        return None
    if not isinstance(sort_value, (int, float, str)) or isinstance(sort_value, bool) \
            or not any(q.equal(v, sort_value) for v in q.lookup(doc, query.sort.field)):
        raise Unverifiable(f"its {query.sort.field} is not the sort value it gave ({str(sort_value)[:40]})")
    return sort_value


def _sort_key(value: Any) -> tuple[int, Any]:
    # Numbers before strings: a field may hold either (fields.<path>), and
    # comparing them raised TypeError (a 500).
    return (0, float(value)) if isinstance(value, (int, float)) else (1, str(value))


def _merge(query: q.Query, sources: list[_Source], local: _Source) -> dict[str, Any]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for source in sources:
        for hit in source.hits:
            key = (hit["registry"], hit["id"])
            item = merged.get(key)
            if item is None:
                item = merged[key] = {"registry": hit["registry"], "id": hit["id"], "score": 0.0,
                                      "record": hit["record"], "record_from": source.name, "sources": [],
                                      "sort_value": hit["sort_value"]}
            elif _newer(hit["record"], item["record"]):
                item.update(record=hit["record"], record_from=source.name)
            item["sources"].append(source.name)
            item["score"] += 1.0 / (RRF_K + hit["rank"] + 1)
            if source is local and hit.get("explain") is not None:
                item["explain"] = hit["explain"]
    # Ties in the local index's fixed order (search/index.py kid_of).
    items = sorted(merged.values(), key=lambda i: kid_of(doc_key(i["registry"], i["id"])))
    if query.sort.field == "relevance":
        items.sort(key=lambda i: -i["score"])
        for item in items:
            item.pop("sort_value")
    else:
        present = [i for i in items if i["sort_value"] is not None]
        present.sort(key=lambda i: _sort_key(i["sort_value"]), reverse=query.sort.descending)
        items = present + [i for i in items if i["sort_value"] is None]
    for item in items:
        item["score"] = round(item["score"], 6)
    answer = local.answer
    return {"items": items[:query.limit], "total": answer.get("total", 0), "facets": answer.get("facets", {}),
            "next_cursor": None, "indexed_through": answer.get("indexed_through", 0),
            "sources": [s.describe() for s in sources]}


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (tuple(a["updated_hlc"]), a["change_id"]) > (tuple(b["updated_hlc"]), b["change_id"])
