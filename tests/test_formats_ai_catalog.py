"""AI Catalog documents (formats/ai_catalog.py): each entry a record of
grid.ai-catalog-entries with the catalog it came in, so an export rebuilds
the catalog; entries that break the draft's rules (no identifier, both or
neither of url and data, no media type) are refused by path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registrygrid.formats import ai_catalog, importer
from registrygrid.sdk import LocalRegistry

CATALOG: dict[str, Any] = {
    "specVersion": "1.0",
    "host": {"displayName": "Acme Systems", "identifier": "did:web:acme.com"},
    "entries": [
        {"identifier": "urn:air:acme.com:tool:ocr", "displayName": "OCR Text Extractor",
         "type": "application/mcp-server+json", "url": "https://tools.acme.com/ocr/server.json",
         "description": "Extracts text and tables from scanned PDFs", "tags": ["ocr", "pdf"],
         "representativeQueries": ["read this invoice", "extract the table on page 3"], "version": "2.1.0"},
        {"identifier": "urn:air:acme.com:agent:assistant", "displayName": "Acme Assistant",
         "type": "application/a2a-agent-card+json",
         "data": {"name": "Acme Assistant", "description": "Answers questions about Acme", "skills": []},
         "capabilities": ["question-answering"], "updatedAt": "2026-11-30T08:00:00Z"},
    ],
    "collections": [{"displayName": "Research", "url": "https://research.acme.com/.well-known/ai-catalog.json"}],
}


def run(tmp_path: Path, grid: LocalRegistry, doc: Any) -> importer.Report:
    (tmp_path / "catalog.json").write_text(json.dumps(doc))
    return importer.Importer(grid).run(importer.read_documents(tmp_path / "catalog.json"))


def test_a_catalog_becomes_one_record_per_entry_and_exports_as_it_came(tmp_path: Path) -> None:
    with LocalRegistry.open_path(tmp_path / "store") as grid:
        report = run(tmp_path, grid, CATALOG)
        ocr = grid.get(ai_catalog.REGISTRY, "urn:air:acme.com:tool:ocr")
        exported = [doc for _, doc in importer.export(grid, ai_catalog.REGISTRY, "ai-catalog")]
        again = run(tmp_path, grid, CATALOG)
    assert report.created == 2 and report.by_format == {"ai-catalog": 1}
    assert {"ai-catalog", "ocr", "pdf"} <= set(ocr["tags"])
    assert ocr["fields"]["catalog"]["host"]["displayName"] == "Acme Systems"
    assert exported == [{**CATALOG, "entries": sorted(CATALOG["entries"], key=lambda e: e["identifier"])}]
    assert again.unchanged == 2


@pytest.mark.parametrize("entry, path", [
    ({"displayName": "x", "type": "text/plain", "url": "https://a"}, "/entries/0/identifier"),
    ({"identifier": "urn:x", "displayName": "x", "type": "text/plain"}, "/entry"),
    ({"identifier": "urn:x", "displayName": "x", "type": "text/plain", "url": "https://a", "data": {}}, "/entry"),
    ({"identifier": "urn:x", "displayName": "x", "type": "not a media type", "url": "https://a"}, "/entry/type"),
])
def test_an_entry_breaking_the_rules_is_refused_by_path(tmp_path: Path, entry: dict[str, Any], path: str) -> None:
    with LocalRegistry.open_path(tmp_path / "store") as grid:
        report = run(tmp_path, grid, {"specVersion": "1.0", "entries": [entry]})
    assert report.created == 0 and path in {p["path"] for p in report.invalid[0]["paths"]}, report.invalid


# ---------------------------------------------------------------- round trip, generated

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)


@st.composite
def catalog(draw: st.DrawFn) -> dict[str, Any]:
    host = draw(_word)
    entries = []
    for n in range(draw(st.integers(1, 4))):
        entry: dict[str, Any] = {"identifier": f"urn:air:{host}.example:tool:{n}-{draw(_word)}",
                                 "displayName": draw(st.text(min_size=1, max_size=30).filter(str.strip)),
                                 "type": draw(st.sampled_from(["application/mcp-server+json", "application/json",
                                                              "application/a2a-agent-card+json"]))}
        if draw(st.booleans()):
            entry["url"] = f"https://{host}.example/{n}.json"
        else:
            entry["data"] = {"name": draw(_word), "n": draw(st.integers(-2**53, 2**53))}
        if draw(st.booleans()):
            entry["tags"] = draw(st.lists(_word, max_size=3))
        entries.append(entry)
    doc: dict[str, Any] = {"specVersion": "1.0", "host": {"displayName": host, "identifier": f"{host}.example"},
                           "entries": entries}
    return doc


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.lists(catalog(), min_size=1, max_size=3, unique_by=lambda d: d["host"]["displayName"]))
def test_import_export_import_is_the_identity(tmp_path_factory: pytest.TempPathFactory,
                                              docs: list[dict[str, Any]]) -> None:
    root = tmp_path_factory.mktemp("aic")
    with LocalRegistry.open_path(root / "a") as first:
        assert run(root, first, docs).created == sum(len(d["entries"]) for d in docs)
        exported = [doc for _, doc in importer.export(first, ai_catalog.REGISTRY, "ai-catalog")]
        records = {r["id"]: (r["fields"], r["tags"]) for r in first.iter_all(ai_catalog.REGISTRY)}

    def canonical(doc: dict[str, Any]) -> str:
        return json.dumps({**doc, "entries": sorted(doc["entries"], key=lambda e: e["identifier"])}, sort_keys=True)

    assert sorted(map(canonical, exported)) == sorted(map(canonical, docs))
    with LocalRegistry.open_path(root / "b") as second:
        run(root, second, exported)
        assert {r["id"]: (r["fields"], r["tags"]) for r in second.iter_all(ai_catalog.REGISTRY)} == records
