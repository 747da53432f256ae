"""Documents of the ecosystem's formats made to break the importer: members
of the wrong type, changes Python's == cannot see, one record twice in an
import, tags past the cap, ids two documents could share, more documents
than an import can hold, and export targets that are no files. Each is
refused or handled on its own, the valid documents beside it imported,
the same way on every run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_formats_a2a import CARD
from test_formats_ai_catalog import CATALOG
from test_formats_oasf import RECORD as OASF_RECORD

from registrygrid.errors import FileFailed, TooLarge
from registrygrid.formats import a2a, ai_catalog, ard, importer, mcp, oasf
from registrygrid.sdk import LocalRegistry

SERVER = json.loads((Path(__file__).parent / "fixtures" / "mcp" / "valid" / "minimal.json").read_text())


@pytest.fixture
def grid(tmp_path: Path):  # type: ignore[no-untyped-def]
    registry = LocalRegistry.open_path(tmp_path / "store")
    yield registry
    registry.close()


def imported(grid: LocalRegistry, tmp_path: Path, documents: list[Any]) -> importer.Report:
    path = tmp_path / "docs.json"
    path.write_text(json.dumps(documents))
    return importer.Importer(grid).run(importer.read_documents(path))


# A member each converter reads (for the record's id and tags), of a type it is not.
WRONG_TYPES = {
    "mcp packages": {**SERVER, "name": "io.example/broken", "packages": 5},
    "a2a skill tags": {**CARD, "supportedInterfaces": [{"url": "https://x.example/a"}],
                       "skills": [{**CARD["skills"][0], "tags": 7}]},
    "oasf skills": {**OASF_RECORD, "name": "broken", "skills": 5},
    "oasf domains": {**OASF_RECORD, "name": "broken-too", "domains": 3},
    "ai-catalog entry tags": {**CATALOG, "entries": [{**CATALOG["entries"][0], "tags": 5}]},
    "ai-catalog capabilities": {**CATALOG, "entries": [{**CATALOG["entries"][0], "capabilities": 1.5}]},
}


@pytest.mark.parametrize("case", list(WRONG_TYPES))
def test_a_member_of_the_wrong_type_refuses_its_document_and_the_valid_ones_import(
        grid: LocalRegistry, tmp_path: Path, case: str) -> None:
    # Iterated as a list, `"packages": 5` raised TypeError out of the import:
    # a traceback, and the valid documents in the same run were lost.
    report = imported(grid, tmp_path, [SERVER, WRONG_TYPES[case]])
    assert report.created == 1 and report.invalid_count == 1
    assert report.invalid[0]["error"] == "validation_failed" and report.invalid[0]["source"].endswith("[1]")
    assert grid.get(mcp.REGISTRY, mcp.record_id(SERVER["name"], SERVER["version"]))["fields"] == SERVER


def test_a_change_between_values_python_calls_equal_is_written(grid: LocalRegistry, tmp_path: Path) -> None:
    # 1 == True, 2 == 2.0 and 0.0 == -0.0 to Python: the second import was
    # reported unchanged and the record kept the first values.
    first = {**SERVER, "x": 1, "y": 0.0, "z": 2}
    second = {**SERVER, "x": True, "y": -0.0, "z": 2.0}
    assert imported(grid, tmp_path, [first]).created == 1
    again = imported(grid, tmp_path, [second])
    assert (again.updated, again.unchanged) == (1, 0)
    stored = grid.get(mcp.REGISTRY, mcp.record_id(SERVER["name"], SERVER["version"]))["fields"]
    assert stored["x"] is True and isinstance(stored["z"], float) and str(stored["y"]) == "-0.0"
    assert imported(grid, tmp_path, [second]).unchanged == 1  # and then it is unchanged


def test_a_change_between_equal_looking_values_inside_lists_is_written_to_the_signed_document(
        grid: LocalRegistry, tmp_path: Path) -> None:
    # The document skipped [1] -> [true] (Python's == on the list): the
    # record shown took it, the signed change peers rebuild from did not,
    # and every later run reported "updated" again.
    first = {**SERVER, "x": [1], "y": [{"a": 1}], "z": [2]}
    second = {**SERVER, "x": [True], "y": [{"a": True}], "z": [2.0], "description": "changed too"}
    assert imported(grid, tmp_path, [first]).created == 1
    again = imported(grid, tmp_path, [second])
    assert (again.updated, again.unchanged) == (1, 0)
    stored = grid.get(mcp.REGISTRY, mcp.record_id(SERVER["name"], SERVER["version"]))["fields"]
    assert stored["x"] == [True] and stored["x"][0] is True and stored["y"][0]["a"] is True
    assert isinstance(stored["z"][0], float)
    report = grid.verify()  # every record is what its document says, types compared
    assert report.ok, report.problem
    assert imported(grid, tmp_path, [second]).unchanged == 1


def test_a_signature_tag_in_a_documents_content_never_becomes_a_record_tag(grid: LocalRegistry, tmp_path: Path) -> None:
    # signature:* is the importer's verdict on an A2A card: an unsigned card
    # whose skill carried signature:verified, or any catalog entry tagged so,
    # listed among the verified cards.
    card = {**CARD, "supportedInterfaces": [{"url": "https://x.example/claims"}],
            "skills": [{**CARD["skills"][0], "tags": ["legal", "signature:verified"]}]}
    catalog = {**CATALOG, "entries": [{**CATALOG["entries"][0], "tags": ["signature:verified", "nlp"]}]}
    assert imported(grid, tmp_path, [card, catalog]).created == 2
    card_tags = grid.list(a2a.REGISTRY, limit=10).items[0]["tags"]
    assert "signature:verified" not in card_tags and "signature:unsigned" in card_tags and "legal" in card_tags
    entry_tags = grid.list(ai_catalog.REGISTRY, limit=10).items[0]["tags"]
    assert not [t for t in entry_tags if t.startswith("signature:")] and "nlp" in entry_tags
    shown = ard.entry_of(grid.list(ai_catalog.REGISTRY, limit=10).items[0])  # ARD shows no such word either
    assert shown["tags"] == ["nlp"]


def test_a_card_whose_address_holds_a_control_character_is_refused_and_takes_no_ones_record(
        grid: LocalRegistry, tmp_path: Path) -> None:
    # "name\0Foo" as an address hashed as the address-less card named Foo:
    # the second import overwrote the first card.
    unaddressed = {k: v for k, v in CARD.items() if k not in ("url", "supportedInterfaces")}
    impostor = {**CARD, "name": "Mallory", "supportedInterfaces": [{"url": f"name\0{CARD['name']}"}]}
    assert imported(grid, tmp_path, [unaddressed]).created == 1
    report = imported(grid, tmp_path, [impostor])
    assert (report.updated, report.invalid_count) == (0, 1) and "control character" in report.invalid[0]["message"]
    assert grid.get(a2a.REGISTRY, a2a.record_id(unaddressed))["fields"]["name"] == CARD["name"]


def test_one_record_twice_in_an_import_is_reported_the_same_way_on_every_run(
        grid: LocalRegistry, tmp_path: Path) -> None:
    # Both copies went into one batch of creates, the second refused as
    # existing; later runs flipped the record between them (2 updates each).
    copies = [SERVER, {**SERVER, "description": "another description"}]
    runs = [imported(grid, tmp_path, copies) for _ in range(3)]
    assert [(r.created, r.updated, r.unchanged, r.invalid_count) for r in runs] == [
        (1, 0, 0, 1), (0, 0, 1, 1), (0, 0, 1, 1)]
    assert "already in this import" in runs[0].invalid[0]["message"]
    record = grid.get(mcp.REGISTRY, mcp.record_id(SERVER["name"], SERVER["version"]))
    assert record["fields"] == SERVER and record["revision"] == 1  # the first copy stands, never rewritten


def test_the_format_and_signature_tags_survive_the_tag_cap() -> None:
    # sorted(tags)[:64] dropped "signature:invalid" (and "a2a", "oasf",
    # "ai-catalog" when content tags sorted first): a search for tampered
    # cards missed one with many skill tags.
    many = [f"0topic-{i:02}" for i in range(70)]
    tampered = {**CARD, "skills": [{**CARD["skills"][0], "tags": many}],
                "signatures": [{"protected": "e30", "signature": "AAAA"}]}
    _, _, tags = a2a.to_record(tampered)
    assert {"a2a", "signature:invalid"} <= set(tags) and len(tags) == 64 and tags == sorted(tags)
    _, _, tags = oasf.to_record({**OASF_RECORD, "skills": [{"name": f"aaa{i:02}"} for i in range(70)]})
    assert "oasf" in tags and len(tags) == 64
    (_, _, tags), *_ = ai_catalog.to_records({**CATALOG, "entries": [{**CATALOG["entries"][0],
                                                                       "tags": [f"a{i:02}" for i in range(70)]}]})
    assert "ai-catalog" in tags and len(tags) == 64


def test_two_documents_never_share_a_record_id() -> None:
    # The second of each pair overwrote the first on import.
    assert oasf.record_id("summ@v1", "2") != oasf.record_id("summ", "v1@2")
    hashed = ai_catalog.record_id("urn:air:x.example:agent:has space")
    assert hashed.startswith("aic-") and ai_catalog.record_id(hashed) != hashed
    assert mcp.record_id("io.example/a~b", "1") != mcp.record_id("io.example~a/b", "1")
    address = "https://agents.example.com/summarizer"
    unaddressed = {k: v for k, v in CARD.items() if k != "supportedInterfaces"}
    assert a2a.record_id(CARD) != a2a.record_id({**unaddressed, "name": address})
    assert mcp.record_id("io.example/server", "1.0.0") == "io.example~server@1.0.0"  # readable ids stay as they were


def test_when_the_first_document_of_a_record_fails_the_next_one_makes_it(grid: LocalRegistry, tmp_path: Path) -> None:
    # The second was refused as "made by" the first, which made nothing:
    # neither was imported.
    invalid_first = {**SERVER, "packages": [{"registryType": "bogus", "identifier": "x", "version": "1",
                                              "transport": {"type": "stdio"}}]}
    copies = [invalid_first, {**SERVER, "description": "the valid copy"}, {**SERVER, "description": "a third"}]
    runs = [imported(grid, tmp_path, copies) for _ in range(2)]
    assert [(r.created, r.updated, r.unchanged, r.invalid_count) for r in runs] == [(1, 0, 0, 2), (0, 0, 1, 2)]
    assert runs[0].invalid[0]["error"] == "schema_violation" and runs[0].invalid[0]["source"].endswith("[0]")
    assert runs[0].invalid[1]["source"].endswith("[2]") and "made by" in runs[0].invalid[1]["message"]
    assert runs[0].invalid[1]["message"].endswith(f"made by {runs[0].invalid[1]['source'][:-3]}[1] already in this import")
    record = grid.get(mcp.REGISTRY, mcp.record_id(SERVER["name"], SERVER["version"]))
    assert record["fields"]["description"] == "the valid copy" and record["revision"] == 1


def test_an_import_of_more_documents_than_it_holds_is_refused_before_any_is_written(
        grid: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each document costs ~1-3 KB while an import runs, whatever its size: a
    # 2 MB file of a million zeros held 3 GB. (The cap is lowered here.)
    monkeypatch.setattr(importer, "MAX_DOCUMENTS", 10)
    path = tmp_path / "many.json"
    path.write_text(json.dumps([{**SERVER, "version": f"1.0.{i}"} for i in range(11)]))
    with pytest.raises(TooLarge, match="more than 10 documents"):
        importer.read_documents(path)
    path.write_text(json.dumps([{**SERVER, "version": f"1.0.{i}"} for i in range(10)]))
    assert importer.Importer(grid).run(importer.read_documents(path)).created == 10


def test_a_catalogs_entries_count_against_the_cap_and_its_shared_members_are_bounded(
        grid: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One catalog of 400,000 entries passed the 200,000-document cap, and each
    # entry's record kept its own copy of the catalog's collections (284 KB
    # of them over 2,000 entries wrote 480 MB).
    monkeypatch.setattr(importer, "MAX_DOCUMENTS", 10)
    entry = CATALOG["entries"][0]
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({**CATALOG, "entries": [{**entry, "identifier": f"urn:x:{i}"} for i in range(11)]}))
    with pytest.raises(TooLarge, match="more than 10 documents or catalog entries"):
        importer.read_documents(path)
    bloated = {**CATALOG, "collections": [{"name": "c" * 100, "identifier": f"urn:c:{i}"} for i in range(100)]}
    report = imported(grid, tmp_path, [bloated])
    assert report.created == 0 and report.invalid_count == 1
    assert "each entry's record keeps a copy" in report.invalid[0]["message"]


def test_an_import_reads_at_most_its_byte_cap_of_files_before_writing_anything(
        grid: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Five 60 MB files took 1.3 GB: every file is parsed and held until the end.
    monkeypatch.setattr(importer, "MAX_IMPORT_BYTES", 3000)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.json").write_text(json.dumps({**SERVER, "version": f"1.0.{i}", "pad": "x" * 1000}))
    with pytest.raises(TooLarge, match="more than 3000 bytes of documents"):
        importer.read_documents(folder)
    assert grid.list(mcp.REGISTRY, limit=10).items == []


def test_the_report_names_the_first_invalid_documents_and_counts_them_all(
        grid: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "MAX_REPORTED", 3)
    report = imported(grid, tmp_path, [0] * 5)
    assert report.invalid_count == 5 and len(report.invalid) == 3
    assert report.to_dict()["invalid"] == 5 and report.to_dict()["errors_left_out"] == 2


def test_rgrid_export_to_a_fifo_nobody_reads_fails_at_once_and_to_a_folder_before_writing(tmp_path: Path) -> None:
    # It hung until killed on a FIFO (a pipe someone reads is still written
    # to: `--out` may name one); a folder where a file goes failed only
    # after the files before it were written.
    home = tmp_path / "home"
    run = [sys.executable, "-m", "registrygrid"]
    subprocess.run([*run, "init", "--home", str(home)], check=True, capture_output=True, timeout=60)
    (tmp_path / "docs.json").write_text(json.dumps([SERVER, {**SERVER, "version": "9.9.9"}]))
    subprocess.run([*run, "import", str(tmp_path / "docs.json"), "--home", str(home)], check=True,
                   capture_output=True, timeout=60)
    for blocker in ("fifo", "folder"):
        out = tmp_path / f"out-{blocker}"
        out.mkdir()
        target = out / f"{mcp.record_id(SERVER['name'], '9.9.9')}.json"  # the second in id order
        os.mkfifo(target) if blocker == "fifo" else target.mkdir()
        exported = subprocess.run([*run, "export", "grid.mcp-servers", "--format", "mcp", "--out", str(out),
                                   "--home", str(home)], capture_output=True, text=True, timeout=60)
        assert exported.returncode == FileFailed.exit_code, exported.stderr
        assert "error[file_failed]" in exported.stderr and "Traceback" not in exported.stderr
        written = sorted(p.name for p in out.iterdir() if p != target)
        assert written == ([] if blocker == "folder" else [f"{mcp.record_id(SERVER['name'], '0.1.0')}.json"])


def test_an_export_in_another_formats_registry_is_refused_naming_the_right_pair(grid: LocalRegistry) -> None:
    # grid.mcp-servers as A2A cards was an empty list, exit 0: nothing said why.
    from registrygrid.errors import ValidationError

    with pytest.raises(ValidationError, match="holds mcp documents: export it with --format mcp"):
        list(importer.export(grid, mcp.REGISTRY, a2a.FORMAT))
    assert list(importer.export(grid, mcp.REGISTRY, mcp.FORMAT)) == []
