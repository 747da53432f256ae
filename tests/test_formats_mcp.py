"""MCP server.json documents as records of grid.mcp-servers (formats/mcp.py,
formats/importer.py, `rgrid import` / `rgrid export`).

The fixtures (tests/fixtures/mcp) are written after the MCP Registry's
published server.json examples and rules, valid and invalid: every valid
one imports and exports unchanged, every invalid one is refused with the
paths that fail, and an import that runs again changes nothing. A
property test generates documents with members of its own (which the kind
does not model) and checks import -> export -> import is the identity."""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.formats import importer, mcp
from registrygrid.sdk import LocalRegistry

FIXTURES = Path(__file__).parent / "fixtures" / "mcp"
VALID = sorted((FIXTURES / "valid").glob("*.json"))
INVALID = sorted((FIXTURES / "invalid").glob("*.json"))


@pytest.fixture
def grid(tmp_path: Path):  # type: ignore[no-untyped-def]
    registry = LocalRegistry.open_path(tmp_path / "store")
    yield registry
    registry.close()


def load(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_a_valid_server_json_imports_and_exports_unchanged(grid: LocalRegistry, path: Path) -> None:
    doc = load(path)
    report = importer.Importer(grid).run(importer.read_documents(path))
    assert (report.created, report.invalid) == (1, [])
    record = grid.get(mcp.REGISTRY, mcp.record_id(doc["name"], doc["version"]))
    assert record["kind"] == "mcp-server" and "mcp" in record["tags"]
    assert [d for _, d in importer.export(grid, mcp.REGISTRY, "mcp")] == [doc]

    again = importer.Importer(grid).run(importer.read_documents(path))
    assert (again.created, again.updated, again.unchanged) == (0, 0, 1), "an import runs again safely"


@pytest.mark.parametrize("path, paths", [
    ("bad-name-pattern", {"/name"}),
    ("description-too-long", {"/description"}),
    ("missing-name", {"/name"}),
    ("package-version-latest", {"/packages/0/version"}),
    ("positional-argument-missing-value", {"/packages/0/packageArguments/0"}),
    ("version-range", {"/version"}),
])
def test_an_invalid_server_json_is_refused_naming_every_failing_path(grid: LocalRegistry, path: str,
                                                                       paths: set[str]) -> None:
    report = importer.Importer(grid).run(importer.read_documents(FIXTURES / "invalid" / f"{path}.json"))
    assert report.created == 0 and len(report.invalid) == 1
    found = {p["path"] for p in report.invalid[0]["paths"]}
    assert paths <= found, report.invalid[0]
    assert list(grid.iter_all(mcp.REGISTRY)) == [], "nothing of an invalid document is written"


def test_a_file_nested_past_the_parsers_depth_is_reported_unreadable_not_a_crash(grid: LocalRegistry,
                                                                                   tmp_path: Path) -> None:
    """Before, `rgrid import` of such a file stopped with RecursionError."""
    (tmp_path / "deep.json").write_text("[" * 3000 + "]" * 3000)
    report = importer.Importer(grid).run(importer.read_documents(tmp_path / "deep.json"))
    assert report.created == 0 and len(report.invalid) == 1
    assert "not JSON" in str(report.invalid[0]) and "recursion" in str(report.invalid[0])


def test_a_directory_imports_what_is_valid_and_reports_the_rest(grid: LocalRegistry) -> None:
    report = importer.Importer(grid).run(importer.read_documents(FIXTURES))
    assert report.created == len(VALID) and len(report.invalid) == len(INVALID)
    assert report.by_format == {"mcp": len(VALID) + len(INVALID)}


def test_a_json_entry_of_a_directory_that_is_not_a_regular_file_is_reported_not_skipped(
        grid: LocalRegistry, tmp_path: Path) -> None:
    # A FIFO or a dangling link named *.json was left out without a word, and the import looked whole.
    import os

    shutil.copy(FIXTURES / "valid" / "minimal.json", tmp_path / "good.json")
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "gone.json").symlink_to(tmp_path / "nowhere")
    report = importer.Importer(grid).run(importer.read_documents(tmp_path))
    assert report.created == 1 and len(report.invalid) == 2
    assert "not a regular file" in str(report.invalid) and "no such file" in str(report.invalid)


def test_a_new_version_is_a_new_record_and_a_changed_one_is_updated(grid: LocalRegistry, tmp_path: Path) -> None:
    doc = load(FIXTURES / "valid" / "minimal.json")
    newer = {**doc, "version": "0.2.0"}
    changed = {**doc, "description": "Now with a better description"}
    (tmp_path / "docs.json").write_text(json.dumps([doc, newer]))
    first = importer.Importer(grid).run(importer.read_documents(tmp_path / "docs.json"))
    (tmp_path / "docs.json").write_text(json.dumps([changed]))
    second = importer.Importer(grid).run(importer.read_documents(tmp_path / "docs.json"))
    assert (first.created, second.updated) == (2, 1)
    assert grid.get(mcp.REGISTRY, mcp.record_id(doc["name"], "0.1.0"))["fields"]["description"].startswith("Now")


def test_the_registry_api_answer_for_a_version_is_unwrapped(grid: LocalRegistry, tmp_path: Path) -> None:
    server = load(FIXTURES / "valid" / "remote-http.json")
    answer = {"server": server, "_meta": {mcp.OFFICIAL_META: {"status": "active", "isLatest": True,
                                                              "publishedAt": "2025-11-01T12:00:00Z"}}}
    (tmp_path / "answer.json").write_text(json.dumps(answer))
    report = importer.Importer(grid).run(importer.read_documents(tmp_path / "answer.json"))
    assert report.created == 1
    assert [d for _, d in importer.export(grid, mcp.REGISTRY, "mcp")] == [server]


def test_record_ids_are_readable_and_fall_back_to_a_hash_when_they_cannot_be() -> None:
    assert mcp.record_id("io.github.example/weather", "1.0.2") == "io.github.example~weather@1.0.2"
    long_name = "io.github." + "x" * 150 + "/server"
    hashed = mcp.record_id(long_name, "1.0.0")
    assert hashed.startswith("mcp-") and hashed == mcp.record_id(long_name, "1.0.0")
    assert mcp.record_id("io.github.example/weather", "1.0 beta").startswith("mcp-")  # a space: no id takes it


# ---------------------------------------------------------------- round trip, generated

_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
_json = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_word, inner, max_size=4),
                     max_leaves=12)


@st.composite
def server_json(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": f"io.{draw(_word)}/{draw(_word)}",
        "description": draw(st.text(min_size=1, max_size=100).filter(str.strip)),
        "version": f"{draw(st.integers(0, 99))}.{draw(st.integers(0, 99))}.{draw(st.integers(0, 99))}",
    }
    if draw(st.booleans()):
        doc["packages"] = [{"registryType": "npm", "identifier": f"@{draw(_word)}/{draw(_word)}",
                            "version": doc["version"], "transport": {"type": "stdio"}}]
    if draw(st.booleans()):
        doc["remotes"] = [{"type": "streamable-http", "url": f"https://{draw(_word)}.example/mcp"}]
    for key in draw(st.lists(_word.map(lambda w: f"x-{w}"), max_size=3, unique=True)):
        doc[key] = draw(_json)  # members the kind does not model: kept verbatim
    doc["_meta"] = {"io.modelcontextprotocol.registry/publisher-provided": draw(st.dictionaries(_word, _json,
                                                                                                max_size=3))}
    return doc


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.lists(server_json(), min_size=1, max_size=5, unique_by=lambda d: (d["name"], d["version"])))
def test_import_export_import_is_the_identity(tmp_path_factory: pytest.TempPathFactory,
                                              docs: list[dict[str, Any]]) -> None:
    root = tmp_path_factory.mktemp("roundtrip")
    (root / "in.json").write_text(json.dumps(docs))
    with LocalRegistry.open_path(root / "store") as first:
        report = importer.Importer(first).run(importer.read_documents(root / "in.json"))
        assert report.created == len(docs), report.invalid
        exported = dict(importer.export(first, mcp.REGISTRY, "mcp"))
        records = {r["id"]: (r["fields"], r["tags"]) for r in first.iter_all(mcp.REGISTRY)}
    assert sorted(exported.values(), key=json.dumps) == sorted(docs, key=json.dumps)
    (root / "out.json").write_text(json.dumps(list(exported.values())))
    with LocalRegistry.open_path(root / "store2") as second:
        importer.Importer(second).run(importer.read_documents(root / "out.json"))
        assert {r["id"]: (r["fields"], r["tags"]) for r in second.iter_all(mcp.REGISTRY)} == records


# ---------------------------------------------------------------- the CLI

def rgrid(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "registrygrid", *args, "--home", str(home)], check=False,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "RGRID_HOME": ""})


def test_rgrid_import_and_export_offline(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert rgrid("init", home=home).returncode == 0
    imported = rgrid("import", str(FIXTURES), "--json", home=home)
    exported = rgrid("export", "grid.mcp-servers", "--format", "mcp", "--out", str(tmp_path / "out"), home=home)
    table = rgrid("import", str(FIXTURES / "invalid" / "package-version-latest.json"), home=home)

    assert imported.returncode == 65, imported.stderr  # some were invalid; the valid ones are in
    report = json.loads(imported.stdout)
    assert report["created"] == len(VALID) and report["invalid"] == len(INVALID)
    assert exported.returncode == 0, exported.stderr
    written = {json.loads(p.read_text())["name"] for p in (tmp_path / "out").glob("*.json")}
    assert written == {load(p)["name"] for p in VALID}
    assert table.returncode == 65 and "/packages/0/version" in table.stderr


def test_a_server_json_of_the_previous_schema_reads_with_its_own_status() -> None:
    """Schema 2025-09-16 kept a top-level status (2025-09-29 moved it to the
    registry): such a document imports as it is, and the MCP Registry API
    reads its status from it (formats/mcp_registry.py)."""
    from registrygrid.formats import mcp_registry

    doc = load(FIXTURES / "valid" / "previous-schema-2025-09-16.json")
    assert mcp.looks_like(doc)
    assert mcp_registry.publisher_status(doc) == "deprecated"
    assert mcp_registry.publisher_status({k: v for k, v in doc.items() if k != "_meta"}) == "deprecated"
