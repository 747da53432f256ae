"""Semantic and hybrid search (search/semantic.py with search/index.py): the
real embedding model from its package and a real usearch index on disk.
Records are found by meaning as well as by words; filters, updates and
deletes hold for vectors as for text; without the extra, a semantic query
is a typed error and text search works on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registrygrid.errors import FeatureUnavailable
from registrygrid.sdk import LocalRegistry
from registrygrid.search import query as q
from registrygrid.search.index import SearchIndex

pytest.importorskip("wordllama", reason="the semantic extra is part of the test install (pyproject.toml)")

RECORDS = {
    "condense": "condenses long legal agreements into short summaries",
    "translate": "translates spoken german into english text",
    "detect": "detects cars and people in street photos",
    "gpu": "rents out nvidia h100 accelerators by the hour",
    "weather": "forecasts rain and wind for the coming week",
}


@pytest.fixture
def indexed(tmp_path: Path) -> tuple[SearchIndex, LocalRegistry]:
    registry = LocalRegistry.open_path(tmp_path / "store")
    for name in ("acme.tools", "acme.other"):
        registry.create_registry(name, ["tool"])
    for record_id, description in RECORDS.items():
        registry.put("acme.tools", "tool", {"name": record_id, "description": description}, id=record_id)
    registry.put("acme.other", "tool", {"name": "digest", "description": "summarizes contracts for lawyers"},
                 id="digest")
    index = SearchIndex(tmp_path / "index")
    assert index.enable_semantic()
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)
    index.catch_up_vectors(registry)
    return index, registry


def ids(answer: dict) -> list[str]:
    return [h.id for h in answer["hits"]]


def test_a_semantic_query_finds_records_by_meaning_without_their_words(indexed) -> None:
    index, _ = indexed
    words = index.search(q.parse_query({"text": "summarize a contract", "registries": ["acme.tools"]}))
    assert "condense" not in ids(words)  # BM25 shares no word with it
    meaning = index.search(q.parse_query({"text": "summarize a contract", "mode": "semantic",
                                          "registries": ["acme.tools"], "explain": True}))
    assert ids(meaning)[0] == "condense"
    assert meaning["hits"][0].components["vector_rank"] == 1
    assert 0 < meaning["hits"][0].components["similarity"] <= 1


def test_hybrid_fuses_both_rankings_and_says_so(indexed) -> None:
    index, _ = indexed
    answer = index.search(q.parse_query({"text": "summarizes contracts", "mode": "hybrid", "explain": True}))
    first = answer["hits"][0]
    assert first.id == "digest"  # both rankings put it first
    assert {"bm25_rank", "vector_rank", "rrf"} <= set(first.components)
    assert "condense" in ids(answer)  # found by meaning alone


def test_filters_hold_for_semantic_hits(indexed) -> None:
    index, _ = indexed
    answer = index.search(q.parse_query({"text": "summarize contracts", "mode": "semantic",
                                         "filter": {"field": "registry", "eq": "acme.other"}}))
    assert ids(answer) == ["digest"]


def test_updates_and_deletes_reach_the_vectors(indexed) -> None:
    index, registry = indexed
    registry.update("acme.tools", "weather", patch={"description": "summarizes court rulings and contracts"})
    registry.delete("acme.tools", "condense")
    index.catch_up(registry, org_verified=lambda org: False, local_org=None)
    index.catch_up_vectors(registry)
    answer = index.search(q.parse_query({"text": "summarize legal agreements", "mode": "semantic",
                                         "registries": ["acme.tools"]}))
    assert "condense" not in ids(answer)
    assert ids(answer)[0] == "weather"
    assert index.vectors.cursor == registry.feed_head()


def test_vectors_survive_a_reopen(indexed, tmp_path: Path) -> None:
    index, _ = indexed
    reopened = SearchIndex(tmp_path / "index")
    assert reopened.enable_semantic() and reopened.vectors.cursor == index.vectors.cursor
    answer = reopened.search(q.parse_query({"text": "summarize a contract", "mode": "semantic",
                                            "registries": ["acme.tools"]}))
    assert ids(answer)[0] == "condense"


def test_vectors_a_crash_left_unreadable_are_embedded_again(indexed, tmp_path: Path) -> None:
    index, registry = indexed
    (tmp_path / "index" / "vectors" / "vectors.usearch").write_bytes(b"")  # a power cut before the data
    reopened = SearchIndex(tmp_path / "index")
    assert reopened.enable_semantic() and reopened.vectors.cursor == 0
    reopened.catch_up_vectors(registry)
    assert reopened.vectors.cursor == index.vectors.cursor
    answer = reopened.search(q.parse_query({"text": "summarize a contract", "mode": "semantic",
                                            "registries": ["acme.tools"]}))
    assert ids(answer)[0] == "condense"


@pytest.mark.parametrize("damage", [b"\xff\xfe not UTF-8", b'{"version": 1', b'{"version": 1, "cursor": "x"}'])
def test_vectors_whose_cursor_file_is_unreadable_are_embedded_again(indexed, tmp_path: Path, damage: bytes) -> None:
    """vectors.json damaged (a hand edit, a bad disk): the vectors are
    derived, so they are embedded again; before, the node did not start."""
    index, registry = indexed
    (tmp_path / "index" / "vectors" / "vectors.json").write_bytes(damage)
    reopened = SearchIndex(tmp_path / "index")
    assert reopened.enable_semantic() and reopened.vectors.cursor == 0
    reopened.catch_up_vectors(registry)
    assert reopened.vectors.cursor == index.vectors.cursor
    answer = reopened.search(q.parse_query({"text": "summarize a contract", "mode": "semantic",
                                            "registries": ["acme.tools"]}))
    assert ids(answer)[0] == "condense"


def test_semantic_modes_need_text(indexed) -> None:
    with pytest.raises(Exception) as refused:
        q.parse_query({"mode": "semantic"})
    assert refused.value.details[0]["path"] == "/mode"


def test_without_the_extra_a_semantic_query_is_a_typed_error_and_text_search_works(tmp_path: Path) -> None:
    """A Python whose import of the extra fails, as on an installation without it."""
    script = f"""
import json, sys
from pathlib import Path
sys.modules["wordllama"] = None  # import wordllama now raises ImportError
sys.modules["usearch"] = None
from registrygrid.errors import FeatureUnavailable
from registrygrid.sdk import LocalRegistry
from registrygrid.search import query as q
from registrygrid.search.index import SearchIndex
registry = LocalRegistry.open_path({str(tmp_path / "store")!r})
registry.create_registry("acme.tools", ["tool"])
registry.put("acme.tools", "tool", {{"name": "summarizer"}}, id="s")
index = SearchIndex(Path({str(tmp_path / "index")!r}))
out = {{"enabled": index.enable_semantic()}}
index.catch_up(registry, org_verified=lambda org: False, local_org=None)
out["text"] = [h.id for h in index.search(q.parse_query({{"text": "summarizer"}}))["hits"]]
try:
    index.search(q.parse_query({{"text": "summarizer", "mode": "hybrid"}}))
except FeatureUnavailable as exc:
    out["error"] = [exc.code, exc.http_status, exc.message]
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["enabled"] is False and out["text"] == ["s"]
    assert out["error"][:2] == ["feature_unavailable", 501] and "registrygrid[semantic]" in out["error"][2]
    assert FeatureUnavailable.code == "feature_unavailable"


def test_loading_the_semantic_model_leaves_the_root_logger_as_it_was() -> None:
    # wordllama calls logging.basicConfig(level=INFO) when imported: the
    # CLI's one-line warnings ("rgrid: WARNING: ...") came out in logging's
    # default format from then on, and INFO lines leaked to stderr.
    script = ("import logging; from registrygrid.search import semantic; semantic.available(); "
              "root = logging.getLogger(); print(len(root.handlers), root.level)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["0", str(30)], done.stderr  # no handler; WARNING, Python's default
