"""AGNTCY OASF records as records of grid.oasf-records (formats/oasf.py):
written after the OASF record's published required members; valid ones
import and export unchanged, invalid ones name their failing paths, and a
generated set round-trips import -> export -> import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.formats import importer, oasf
from registrygrid.sdk import LocalRegistry

RECORD: dict[str, Any] = {
    "name": "contract-summarizer", "version": "v1.2.0", "schema_version": "0.8.0",
    "description": "Summarizes legal contracts in German and English",
    "authors": ["Example Legal <oss@example.com>"], "created_at": "2025-11-01T12:00:00Z",
    "skills": [{"name": "natural_language_processing/summarization", "id": 10201},
               {"name": "natural_language_processing/translation", "id": 10202}],
    "domains": [{"name": "legal", "id": 1300}],
    "locators": [{"type": "docker_image", "url": "ghcr.io/example/summarizer:1.2.0"}],
    "modules": [{"name": "integration/a2a", "data": {"card_schema_version": "1.0.0"}}],
    "annotations": {"team": "contracts"},
}


def run(grid: LocalRegistry, tmp_path: Path, docs: list[Any]) -> importer.Report:
    (tmp_path / "in.json").write_text(json.dumps(docs))
    return importer.Importer(grid).run(importer.read_documents(tmp_path / "in.json"))


def test_an_oasf_record_imports_with_its_taxonomy_as_tags_and_exports_unchanged(tmp_path: Path) -> None:
    with LocalRegistry.open_path(tmp_path / "store") as grid:
        report = run(grid, tmp_path, [RECORD])
        stored = grid.get(oasf.REGISTRY, "contract-summarizer@v1.2.0")
        exported = [doc for _, doc in importer.export(grid, oasf.REGISTRY, "oasf")]
    assert report.created == 1 and report.by_format == {"oasf": 1}
    assert {"oasf", "legal", "natural_language_processing/summarization"} <= set(stored["tags"])
    assert exported == [RECORD]


@pytest.mark.parametrize("broken, path", [
    ({"authors": "one string"}, "/authors"),
    ({"created_at": ""}, "/created_at"),
    ({"skills": [{"label": "no name or id"}]}, "/skills/0"),
    ({"description": None}, "/description"),
])
def test_an_invalid_oasf_record_names_its_failing_path(tmp_path: Path, broken: dict[str, Any], path: str) -> None:
    with LocalRegistry.open_path(tmp_path / "store") as grid:
        report = run(grid, tmp_path, [{**RECORD, **broken}])
    assert report.created == 0 and path in {p["path"] for p in report.invalid[0]["paths"]}, report.invalid


_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20).filter(lambda s: s[0] != "-")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.lists(st.builds(lambda name, v, extra: {**RECORD, "name": name, "version": f"v{v}", **extra},
                               _name, st.integers(0, 999),
                               st.dictionaries(_name.map(lambda n: f"x_{n}"),
                                               st.one_of(st.integers(-2**53, 2**53), st.text(max_size=10)),
                                               max_size=2)),
                     min_size=1, max_size=4, unique_by=lambda d: (d["name"], d["version"])))
def test_import_export_import_is_the_identity(tmp_path_factory: pytest.TempPathFactory,
                                              docs: list[dict[str, Any]]) -> None:
    root = tmp_path_factory.mktemp("oasf")
    with LocalRegistry.open_path(root / "a") as first:
        assert run(first, root, docs).created == len(docs)
        exported = [doc for _, doc in importer.export(first, oasf.REGISTRY, "oasf")]
        records = {r["id"]: (r["fields"], r["tags"]) for r in first.iter_all(oasf.REGISTRY)}
    assert sorted(exported, key=json.dumps) == sorted(docs, key=json.dumps)
    with LocalRegistry.open_path(root / "b") as second:
        run(second, root, exported)
        assert {r["id"]: (r["fields"], r["tags"]) for r in second.iter_all(oasf.REGISTRY)} == records
