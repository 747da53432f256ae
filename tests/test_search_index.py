"""The search index (search/index.py) against the reference semantics of the
query language (search/query.py ``matches``): random filter trees over
random records, compiled for tantivy, must select exactly the records a
brute-force scan selects; sorted pages walk every match once, in order,
while records are inserted; an index caught up incrementally equals one
rebuilt; a crash between commit and cursor loses and doubles nothing."""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.errors import Unavailable, ValidationError
from registrygrid.sdk import LocalRegistry
from registrygrid.search import query as q
from registrygrid.search.fields import normalize
from registrygrid.search.index import RERANK_WINDOW, WRITER_HEAP, Hit, SearchIndex

REGIONS = ["eu-west", "eu-north", "us-east", "ap-south"]
WORDS = ["summarize", "translate", "legal", "contract", "gpu", "cluster", "vision", "speech", "german", "fast"]
TAGS = ["nlp", "gpu", "eu", "beta", "free"]


def make_records(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        fields: dict[str, Any] = {"name": f"{rng.choice(WORDS)}-{i}",
                                  "description": " ".join(rng.choices(WORDS, k=rng.randint(0, 8))) or None}
        if fields["description"] is None:
            del fields["description"]
        if rng.random() < 0.7:
            fields["region"] = rng.choice(REGIONS)
        if rng.random() < 0.6:
            fields["price"] = rng.choice([0, 0.001, 0.005, 0.01, 0.02, 1, 2.5])
        if rng.random() < 0.5:
            fields["status"] = rng.choice(["up", "down"])
        if rng.random() < 0.5:
            fields["specs"] = {"gpus": rng.choice([1, 2, 4, 8]), "vendor": rng.choice(["nvidia", "amd"]),
                               "list": [rng.choice(["a", "b"]), rng.randint(0, 3)]}
        if rng.random() < 0.4:
            fields["tags"] = rng.sample(TAGS, rng.randint(1, 3))
        if rng.random() < 0.3:
            fields["reputation"] = rng.choice([0.1, 0.5, 0.9])
        out.append({"id": f"r{i:03d}", "fields": fields, "tags": rng.sample(TAGS, rng.randint(0, 2)),
                    "registry": rng.choice(["acme.tools", "acme.clusters"])})
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchIndex, list[dict[str, Any]], LocalRegistry]:
    root = tmp_path_factory.mktemp("search")
    registry = LocalRegistry.open_path(root / "store")
    for name in ("acme.tools", "acme.clusters"):
        registry.create_registry(name, ["tool"])
    for rec in make_records(160, seed=11):
        registry.put(rec["registry"], "tool", rec["fields"], id=rec["id"], tags=rec["tags"])
    index = SearchIndex(root / "index")
    index.catch_up(registry, org_verified=lambda org: False, local_org=registry.engine.owner)
    docs = [normalize(r, org_verified=lambda org: False, local_org=registry.engine.owner)
            for name in ("acme.tools", "acme.clusters", "grid.registries") for r in registry.iter_all(name)]
    return index, docs, registry


KEYWORD_VALUES = {"region": REGIONS, "status": ["up", "down"], "tags": TAGS, "registry": ["acme.tools", "acme.clusters"],
                  "kind": ["tool", "cluster"], "name": [f"{w}-{i}" for w in WORDS[:2] for i in range(3)]}
NUMBERS = {"price": [0, 0.001, 0.005, 0.01, 1, 2.5], "reputation": [0.1, 0.5, 0.9]}
USER = {"fields.specs.gpus": [1, 2, 4, 8], "fields.specs.vendor": ["nvidia", "amd"], "fields.specs.list": ["a", 2]}


def comparisons() -> st.SearchStrategy[dict[str, Any]]:
    keyword = st.sampled_from(sorted(KEYWORD_VALUES)).flatmap(lambda f: st.one_of(
        st.builds(lambda v: {"field": f, "eq": v}, st.sampled_from(KEYWORD_VALUES[f])),
        st.builds(lambda v: {"field": f, "ne": v}, st.sampled_from(KEYWORD_VALUES[f])),
        st.builds(lambda v: {"field": f, "in": v}, st.lists(st.sampled_from(KEYWORD_VALUES[f]), min_size=1,
                                                             max_size=3)),
        st.builds(lambda v: {"field": f, "prefix": v[:2]}, st.sampled_from(KEYWORD_VALUES[f])),
        st.builds(lambda v: {"field": f, "exists": v}, st.booleans())))
    number = st.sampled_from(sorted(NUMBERS)).flatmap(lambda f: st.builds(
        lambda op, v: {"field": f, op: v}, st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge"]),
        st.sampled_from(NUMBERS[f])))
    user = st.sampled_from(sorted(USER)).flatmap(lambda f: st.one_of(
        st.builds(lambda v: {"field": f, "eq": v}, st.sampled_from(USER[f])),
        st.builds(lambda op, v: {"field": f, op: v}, st.sampled_from(["lt", "ge"]),
                  st.sampled_from([v for v in USER[f] if isinstance(v, int)] or [1])),
        st.builds(lambda v: {"field": f, "exists": v}, st.booleans())))
    other = st.sampled_from([{"field": "description", "exists": True}, {"field": "verified", "eq": False},
                             {"field": "local", "eq": True}, {"field": "fields.specs", "exists": True},
                             {"field": "updated_at", "gt": 0}])
    return st.one_of(keyword, number, user, other)


filters = st.recursive(comparisons(), lambda inner: st.one_of(
    st.builds(lambda xs: {"and": xs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda xs: {"or": xs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda x: {"not": x}, inner)), max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=filters)
def test_a_compiled_filter_selects_exactly_what_the_reference_semantics_select(corpus, tree) -> None:
    index, docs, _ = corpus
    query = q.parse_query({"filter": tree, "limit": 100, "sort": "updated_at"})
    expected = {(d["registry"], d["id"]) for d in docs if q.matches(query.filter, d)}
    found = set()
    cursor = None
    while True:
        answer = index.search(q.parse_query({"filter": tree, "limit": 100, "sort": "updated_at",
                                             **({"cursor": cursor} if cursor else {})}))
        found |= {(h.registry, h.id) for h in answer["hits"]}
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    assert found == expected, tree
    assert index.search(query)["total"] == len(expected)


def test_a_sorted_walk_sees_every_record_once_in_order_while_records_are_inserted(tmp_path: Path) -> None:
    registry = LocalRegistry.open_path(tmp_path / "store")
    registry.create_registry("acme.tools", ["tool"])
    rng = random.Random(5)
    for i in range(120):
        registry.put("acme.tools", "tool", {"name": f"t{i}", "price": rng.choice([1, 2, 3, 4])}, id=f"t{i:03d}")
    index = SearchIndex(tmp_path / "index")
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)
    before = {f"t{i:03d}" for i in range(120)}
    seen: list[tuple[float, str]] = []
    cursor = None
    n = 1000
    while True:
        answer = index.search(q.parse_query({"sort": {"field": "price", "order": "asc"}, "limit": 7,
                                             **({"cursor": cursor} if cursor else {})}))
        seen += [(h.value, h.id) for h in answer["hits"]]
        for _ in range(3):  # inserts land before, among and after the walk's position
            registry.put("acme.tools", "tool", {"name": "new", "price": rng.choice([0, 2, 5])}, id=f"n{n}")
            n += 1
        index.catch_up(registry, org_verified=lambda org: False, local_org=None)
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    ids = [i for _, i in seen]
    assert len(ids) == len(set(ids)), "no record twice"
    assert before <= set(ids), "every record that existed when the walk began"
    assert [v for v, _ in seen] == sorted(v for v, _ in seen)


def test_a_cursor_nested_past_the_parsers_depth_is_refused_not_a_crash() -> None:
    """The bridge's document bounds a cursor's length first, but `rgrid
    search --cursor` offline and the SDK hand it to the decoder: a value
    nested 3,000 deep raised RecursionError there before."""
    cursor = base64.urlsafe_b64encode(b"\x93\xa5price" + b"\x91" * 3000 + b"\xc0\xa11").decode()
    with pytest.raises(ValidationError, match="not a cursor this node made"):
        q.decode_cursor(cursor, q.parse_query({"sort": "price"}).sort)


# Names that share long prefixes (beyond the index's 16 prefix bytes), tie
# exactly, differ in case and leave ASCII: a keyword sort's hard cases.
SORT_NAMES = ["gpu-cluster-frankfurt-a", "gpu-cluster-frankfurt-b", "gpu-cluster-frankfurt", "gpu-cluster-fra",
              "gpu", "GPU", "Zeta", "alpha", "alpha", "épée", "gpu-cluster-frankfurt-a", "b\u0000", "b" * 40, "b" * 39]


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("page", [1, 3, 7])
def test_a_walk_sorted_by_a_keyword_sees_every_record_once_in_byte_order_while_records_are_inserted(
        tmp_path: Path, order: str, page: int) -> None:
    registry = LocalRegistry.open_path(tmp_path / "store")
    registry.create_registry("acme.tools", ["tool"])
    rng = random.Random(page)
    for i in range(60):
        registry.put("acme.tools", "tool", {"name": rng.choice(SORT_NAMES)}, id=f"t{i:03d}")
    index = SearchIndex(tmp_path / "index")
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)
    before = {r["id"]: r["fields"]["name"] for r in registry.iter_all("acme.tools")}
    seen: list[tuple[str, str]] = []
    cursor, n = None, 1000
    while True:
        answer = index.search(q.parse_query({"sort": {"field": "name", "order": order}, "limit": page,
                                             "registries": ["acme.tools"], **({"cursor": cursor} if cursor else {})}))
        assert all(isinstance(h.value, str) for h in answer["hits"])
        seen += [(h.value, h.id) for h in answer["hits"]]
        registry.put("acme.tools", "tool", {"name": rng.choice(SORT_NAMES) + rng.choice(["", "-x"])}, id=f"n{n}")
        n += 1
        index.catch_up(registry, org_verified=lambda org: False, local_org=None)
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    ids = [i for _, i in seen]
    assert len(ids) == len(set(ids)), "no record twice"
    assert set(before) <= set(ids), "every record that existed when the walk began"
    assert all(before[i] == v for v, i in seen if i in before)
    values = [v.encode() for v, _ in seen]
    assert values == sorted(values, reverse=order == "desc"), "UTF-8 byte order"
    registry.close()


def test_an_index_caught_up_incrementally_equals_a_rebuilt_one(tmp_path: Path) -> None:
    registry = LocalRegistry.open_path(tmp_path / "store")
    registry.create_registry("acme.tools", ["tool"])
    index = SearchIndex(tmp_path / "index")
    for step in range(5):
        for i in range(20):
            registry.put("acme.tools", "tool", {"name": f"s{step}-{i}", "price": i}, id=f"s{step}-{i}")
        registry.update("acme.tools", f"s{step}-0", patch={"price": 99})
        registry.delete("acme.tools", f"s{step}-1")
        index.catch_up(registry, org_verified=lambda org: False, local_org=None, limit=17)
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)
    everything = q.parse_query({"limit": 100, "sort": "price", "facets": ["registry"]})
    incremental = [(h.id, h.value) for h in _all(index, everything)]
    rebuilt = SearchIndex(tmp_path / "index2")
    rebuilt.rebuild(registry, org_verified=lambda org: False, local_org=None)
    assert incremental == [(h.id, h.value) for h in _all(rebuilt, everything)]
    assert len(incremental) == 5 * 19 and ("s0-0", 99.0) in incremental


def _all(index: SearchIndex, query: q.Query) -> list[Any]:
    out, cursor = [], None
    while True:
        answer = index.search(q.Query(**{**query.__dict__, "cursor": cursor}))
        out += answer["hits"]
        cursor = answer["next_cursor"]
        if cursor is None:
            return out


def _thirty_tools_indexed(tmp_path: Path) -> tuple[LocalRegistry, SearchIndex]:
    registry = LocalRegistry.open_path(tmp_path / "store")
    registry.create_registry("acme.tools", ["tool"])
    for i in range(30):
        registry.put("acme.tools", "tool", {"name": f"c{i}"}, id=f"c{i}")
    index = SearchIndex(tmp_path / "index")
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)
    return registry, index


def test_a_crash_between_commit_and_cursor_replays_without_loss_or_duplicates(tmp_path: Path) -> None:
    registry, index = _thirty_tools_indexed(tmp_path)
    committed_at = index.cursor
    for i in range(30, 40):
        registry.put("acme.tools", "tool", {"name": f"c{i}"}, id=f"c{i}")
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)
    index._save_cursor(committed_at)  # the crash: the commit landed, the cursor did not
    reopened = SearchIndex(tmp_path / "index")
    assert reopened.cursor == committed_at
    reopened.catch_up(registry, org_verified=lambda org: False, local_org=None)
    assert reopened.count() == 41  # the 40 records and the registry's descriptor
    assert reopened.search(q.parse_query({"limit": 100, "registries": ["acme.tools"]}))["total"] == 40


def test_a_crash_inside_a_commit_leaves_files_the_next_commit_does_not_trip_on(tmp_path: Path) -> None:
    """A node killed while tantivy commits leaves the files that commit
    wrote (registered, among them a deletes file named by segment and
    opstamp) beside the last committed meta.json. Reopened, the index
    counts from that meta's opstamp again, so its next commit would write
    the same deletes file: found by a kill -9 search on node processes,
    where the restarted node stopped at its first indexing pass."""
    registry = _crashed_inside_a_commit(tmp_path, registered=True)
    reopened = SearchIndex(tmp_path / "index")
    reopened.catch_up(registry, org_verified=lambda org: False, local_org=None)
    assert reopened.started_over == 0  # the files were tantivy's own to delete
    _holds_the_renamed_records(reopened, registry)


def _crashed_inside_a_commit(tmp_path: Path, *, registered: bool) -> LocalRegistry:
    """A store, and its index as a crash inside the commit of ten updates
    left it: that commit's files on disk (``registered`` or not in
    tantivy's list of the files it manages), the meta.json and cursor of
    the commit before."""
    registry, index = _thirty_tools_indexed(tmp_path)
    committed_at = index.cursor
    folder = tmp_path / "index" / "tantivy"
    before = {name: (folder / name).read_bytes() for name in ("meta.json", ".managed.json")}
    for i in range(10):  # updates: the commit deletes their old documents
        registry.update("acme.tools", f"c{i}", patch={"name": f"renamed-{i}"})
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)
    assert list(folder.glob("*.del"))
    for name, data in before.items():
        if name == "meta.json" or not registered:
            (folder / name).write_bytes(data)
    index._save_cursor(committed_at)
    return registry


def _holds_the_renamed_records(index: SearchIndex, registry: LocalRegistry) -> None:
    assert index.cursor == registry.feed_head()
    assert index.count() == 31  # the 30 records and the registry's descriptor
    names = {h.id for h in index.search(q.parse_query({"text": "renamed", "limit": 100}))["hits"]}
    assert names == {f"c{i}" for i in range(10)}


def test_an_index_whose_commit_fails_on_files_it_does_not_know_starts_over_from_the_feed(tmp_path: Path) -> None:
    """A deletes file tantivy did not register (a disk that kept the file
    but lost the list's rename) makes every commit fail: the index is
    derived, so it starts over from the feed's beginning, once while open
    (what a start over does not mend is raised, not re-indexed at every
    commit)."""
    registry = _crashed_inside_a_commit(tmp_path, registered=False)
    reopened = SearchIndex(tmp_path / "index")
    reopened.catch_up(registry, org_verified=lambda org: False, local_org=None)
    assert reopened.started_over == 1
    _holds_the_renamed_records(reopened, registry)


def test_an_index_another_writer_holds_is_in_use_not_damaged_and_is_left_as_it_is(tmp_path: Path) -> None:
    registry, index = _thirty_tools_indexed(tmp_path)
    holder = index.index.writer(WRITER_HEAP, 1)  # as another process's writer would
    try:
        with pytest.raises(Unavailable, match="being written by another writer"):
            SearchIndex(tmp_path / "index")
    finally:
        del holder
    reopened = SearchIndex(tmp_path / "index")
    assert reopened.started_over == 0 and reopened.cursor == registry.feed_head() and reopened.count() == 31


def test_an_index_tantivy_cannot_open_starts_over_from_the_feed(tmp_path: Path) -> None:
    registry = _crashed_inside_a_commit(tmp_path, registered=True)
    (tmp_path / "index" / "tantivy" / "meta.json").write_text("{not json")
    reopened = SearchIndex(tmp_path / "index")
    assert reopened.started_over == 1 and reopened.cursor == 0
    reopened.catch_up(registry, org_verified=lambda org: False, local_org=None)
    _holds_the_renamed_records(reopened, registry)


@pytest.mark.parametrize("damage", [b"\xff\xfe not UTF-8", b'{"version": 2, "cur', b"[]", b'{"version": 2}'])
def test_an_index_whose_cursor_file_is_unreadable_starts_over_from_the_feed(tmp_path: Path, damage: bytes) -> None:
    """search.json damaged (a hand edit, a bad disk): the index is derived,
    so it starts over from the feed; before, opening it raised and the node
    did not start."""
    registry = _crashed_inside_a_commit(tmp_path, registered=True)
    (tmp_path / "index" / "search.json").write_bytes(damage)
    reopened = SearchIndex(tmp_path / "index")
    assert reopened.started_over == 1 and reopened.cursor == 0
    reopened.catch_up(registry, org_verified=lambda org: False, local_org=None)
    _holds_the_renamed_records(reopened, registry)


def test_full_text_ranks_by_bm25_with_phrases_facets_and_an_explanation(corpus) -> None:
    index, _, _ = corpus
    answer = index.search(q.parse_query({"text": "legal contract", "limit": 5, "facets": ["region", "verified"],
                                         "explain": True}))
    assert answer["hits"] and answer["hits"][0].components["text"] > 0
    scores = [h.score for h in answer["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert sum(b["count"] for b in answer["facets"]["verified"]) == answer["total"]
    phrase = index.search(q.parse_query({"text": '"legal contract"', "limit": 100}))
    words = index.search(q.parse_query({"text": "legal contract", "limit": 100}))
    assert phrase["total"] <= words["total"]
    boosted = index.search(q.parse_query({"text": "legal", "limit": 3,
                                          "boosts": [{"filter": {"field": "region", "eq": "us-east"}, "factor": 50}]}))
    assert all(h.components["boost"] == 50 for h in boosted["hits"])


@pytest.mark.parametrize("bad, path", [
    ({"filter": {"field": "price", "prefix": "1"}}, "/filter/prefix"),
    ({"filter": {"and": [{"field": "kind", "eq": "x"}, {"field": "nope", "eq": 1}]}}, "/filter/and/1/field"),
    ({"filter": {"or": []}}, "/filter/or"),
    ({"filter": {"field": "price", "lt": "cheap"}}, "/filter/lt"),
    ({"sort": "tags"}, "/sort"),
    ({"sort": "description"}, "/sort"),
    ({"limit": 0}, "/limit"),
    ({"facets": ["price"]}, "/facets/0"),
    ({"boosts": [{"filter": {"field": "kind", "eq": "x"}, "factor": -1}]}, "/boosts/0/factor"),
    ({"text": "x", "sort": {"field": "relevance", "order": "asc"}}, "/sort"),
    ({"frobnicate": 1}, "/frobnicate"),
])
def test_a_malformed_query_is_refused_naming_its_bad_part(bad, path) -> None:
    with pytest.raises(ValidationError) as refused:
        q.parse_query(bad)
    assert refused.value.details[0]["path"] == path


def walk(index: SearchIndex, query: dict[str, Any]) -> tuple[list[Hit], int]:
    """Every hit of a relevance-ordered query, page by page, and its total."""
    seen: list[Hit] = []
    cursor = None
    while True:
        answer = index.search(q.parse_query({**query, **({"cursor": cursor} if cursor else {})}))
        seen += answer["hits"]
        cursor = answer["next_cursor"]
        if cursor is None:
            return seen, answer["total"]


@pytest.mark.parametrize("weights", [{"freshness": 0, "trust": 0}, {"freshness": 0.5, "trust": 0.5}])
def test_relevance_pages_walk_every_match_once_best_first(corpus, weights) -> None:
    index, _, _ = corpus
    seen, total = walk(index, {"text": "legal gpu", "limit": 7, "weights": weights})
    assert len({h.key for h in seen}) == len(seen) == total > RERANK_WINDOW
    reranked, rest = (seen[:RERANK_WINDOW], seen[RERANK_WINDOW:]) if weights["freshness"] else ([], seen)
    # Freshness and trust reorder the best text hits; the rest follow in text order.
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
    assert [h.relevance for h in rest] == sorted((h.relevance for h in rest), reverse=True)
    assert min((h.relevance for h in reranked), default=1e9) >= max(h.relevance for h in rest)


@pytest.fixture(scope="module")
def alike(tmp_path_factory: pytest.TempPathFactory) -> SearchIndex:
    """250 records that score the same for "zebra", and 30 that score better."""
    root = tmp_path_factory.mktemp("alike")
    registry = LocalRegistry.open_path(root / "store")
    registry.create_registry("acme.tools", ["tool"])
    index = SearchIndex(root / "index")
    semantic = index.enable_semantic()  # the semantic extra is part of the test install
    for part in range(5):  # five commits: ties span segments
        for i in range(50 * part, 50 * part + 50):
            registry.put("acme.tools", "tool", {"name": "zebra widget", "version": "1"}, id=f"t{i:03}")
        for i in range(6 * part, 6 * part + 6):
            registry.put("acme.tools", "tool", {"name": "zebra zebra", "version": "1"}, id=f"z{i:03}")
        index.catch_up(registry, org_verified=lambda org: False, local_org=registry.engine.owner)
    if semantic:
        index.catch_up_vectors(registry)
    registry.close()
    return index


@pytest.mark.parametrize("query", [
    {"weights": {"text": 1, "freshness": 0, "trust": 0}},
    {},  # freshness and trust rerank the best hundred
    {"mode": "hybrid"},
])
@pytest.mark.parametrize("limit", [50, 7])
def test_a_walk_over_records_that_score_alike_returns_each_once(alike: SearchIndex, query, limit) -> None:
    # tantivy's top n breaks ties by document address, and each page asked
    # for a bigger n: 250 records alike walked in pages of 50 returned 250
    # hits of which 100 were distinct.
    seen, total = walk(alike, {"text": "zebra", "limit": limit, **query})
    assert total == 280
    assert len({h.key for h in seen}) == len(seen) == 280


@pytest.mark.parametrize("field", ["price", "region"])
def test_a_sort_by_a_field_counts_in_its_total_the_records_it_lists(corpus: Any, field: str) -> None:
    # The total counted every match, the records lacking the field too,
    # though no page of the walk ever listed them: a client paging until it
    # had `total` records never got there.
    index, docs, _ = corpus
    listed, cursor = 0, None
    while True:
        body: dict[str, Any] = {"sort": {"field": field, "order": "asc"}, "limit": 100}
        if cursor:
            body["cursor"] = cursor
        found = index.search(q.parse_query(body))
        listed += len(found["hits"])
        cursor = found["next_cursor"]
        if cursor is None:
            break
    lacking = index.search(q.parse_query({"filter": {"not": {"field": field, "exists": True}}, "limit": 1}))
    assert found["total"] == listed and lacking["total"] > 0
    assert index.search(q.parse_query({"limit": 1}))["total"] == found["total"] + lacking["total"]


def test_a_whole_number_bound_compares_exactly_and_one_past_the_indexs_integers_is_refused(tmp_path: Path) -> None:
    # tantivy compared a path of whole numbers with a bound past 64 bits
    # wrongly: `eq 1e19` matched every record, `ne` none; and a bound went
    # through a float, so 2^53 + 1 was 2^53 and 2^63 - 1 was 2^63. A
    # 400-digit bound was a 500 (OverflowError).
    registry = LocalRegistry.open_path(tmp_path / "store")
    registry.create_registry("acme.tools", ["tool"])
    values = [0, 1, 2**53 + 1, 2**63 - 1, -2**63]
    for i, value in enumerate(values):
        registry.put("acme.tools", "tool", {"name": f"t{i}", "n": value}, id=f"t{i}")
    index = SearchIndex(tmp_path / "index")
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)

    def found(op: str, bound: int) -> list[int]:
        query = q.parse_query({"filter": {"and": [{"field": "registry", "eq": "acme.tools"},
                                                  {"field": "fields.n", op: bound}]}, "limit": 100})
        return sorted(values[int(h.id[1:])] for h in _all(index, query))

    for bound in (2**53, 2**53 + 1, 2**63 - 1, -2**63, 1):
        assert found("eq", bound) == [v for v in values if v == bound]
        assert found("ne", bound) == sorted(v for v in values if v != bound)
        assert found("gt", bound) == sorted(v for v in values if v > bound)
        assert found("le", bound) == sorted(v for v in values if v <= bound)
    for bound in (2**63, 1e19, -2**63 - 1, -1e308, 10**400):
        for op in ("eq", "gt", "lt"):
            with pytest.raises(ValidationError) as refused:
                q.parse_query({"filter": {"field": "fields.n", op: bound}})
            assert refused.value.details[0]["path"] == f"/filter/{op}"
    with pytest.raises(ValidationError):
        q.parse_query({"filter": {"field": "price", "lt": 10**400}})  # a built-in number too


def test_a_deleted_registrys_records_are_unknown_to_every_read_and_to_search_until_it_comes_back(
        tmp_path: Path) -> None:
    # Its listing said unknown registry, yet a record read, its history,
    # the listing across registries and search all gave its records.
    from registrygrid.errors import UnknownRegistry

    registry, index = _thirty_tools_indexed(tmp_path)
    registry.create_registry("acme.kept", ["tool"])
    registry.put("acme.kept", "tool", {"name": "k"}, id="k")
    registry.delete("grid.registries", "acme.tools")
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)
    for read in (lambda: registry.get("acme.tools", "c1"), lambda: registry.history("acme.tools", "c1"),
                 lambda: registry.list("acme.tools")):
        with pytest.raises(UnknownRegistry):
            read()
    assert {r["registry"] for r in registry.iter_all()} == {"grid.registries", "acme.kept"}
    assert registry.get("acme.tools", "c1", include_deleted=True)["fields"]["name"] == "c1"  # forensics
    assert len(registry.list("acme.tools", include_deleted=True, limit=100).items) == 30

    def registries_found() -> set[str]:
        return {h.registry for h in _all(index, q.parse_query({"limit": 100}))} - {"grid.registries"}

    assert registries_found() == {"acme.kept"}
    # Back (an update of its descriptor that wins over the delete): its
    # records are found again, though no event of theirs says so.
    registry.put("grid.registries", "registry", {"name": "acme.tools", "kinds": ["tool"]}, id="acme.tools")
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)
    assert len(registry.list("acme.tools", limit=100).items) == 30
    assert registries_found() == {"acme.kept", "acme.tools"}
    assert len([h for h in _all(index, q.parse_query({"limit": 100})) if h.registry == "acme.tools"]) == 30


@pytest.mark.parametrize("weighted", [False, True])  # BM25 alone; reranked by freshness in the head window
def test_a_relevance_walk_sees_every_match_once_while_records_are_inserted_and_deleted(
        tmp_path: Path, weighted: bool) -> None:
    # A page was a position in the list as the index held it then: better
    # matches inserted between pages pushed records already seen onto later
    # pages again, and deletes of seen ones pulled unseen ones before the
    # walk's position, so they never came.
    registry = LocalRegistry.open_path(tmp_path / "store")
    registry.create_registry("acme.tools", ["tool"])
    for i in range(40):
        registry.put("acme.tools", "tool", {"name": "zebra " + "filler " * (i % 7)}, id=f"t{i:03d}")
    index = SearchIndex(tmp_path / "index")
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)
    body: dict[str, Any] = {"text": "zebra", "limit": 10, **({"weights": {"freshness": 1}} if weighted else {})}
    seen: list[str] = []
    cursor, n = None, 0
    while True:
        answer = index.search(q.parse_query({**body, **({"cursor": cursor} if cursor else {})}))
        seen += [h.id for h in answer["hits"]]
        for _ in range(5):  # stronger matches than any seen, and seen ones deleted
            registry.put("acme.tools", "tool", {"name": "zebra zebra zebra"}, id=f"n{n:03d}")
            n += 1
        for gone in seen[-3:]:
            registry.delete("acme.tools", gone)
        index.catch_up(registry, org_verified=lambda org: False, local_org=None)
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "no record twice"
    assert set(seen) == {f"t{i:03d}" for i in range(40)}, "every match of when the walk began, and no other"
    fresh = index.search(q.parse_query(body))  # a new walk reads the index as it is now
    assert all(h.id.startswith("n") for h in fresh["hits"])
