"""`rgrid store migrate`: a format-2 store (written by the previous version,
kept as a fixture) upgrades in place, resumably, and its changes, signed in
wire format 1, still verify, read and replicate."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from registrygrid.engine.ops import Remote
from registrygrid.home import Home
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import open_envelope
from registrygrid.sdk import LocalRegistry
from registrygrid.storage.migrate import migrate
from registrygrid.storage.store import STORE_FORMAT, Store, StoreFormatError

FIXTURE = Path(__file__).parent / "fixtures" / "store-format-2.tar.gz"
# Written by the previous version (commit 4052244): node b (key bytes 1..32)
# made 20 tools and renamed b3; node a (key bytes 0..31) made 30 clusters,
# moved a1 to "us" and deleted a2, and b applied a's 32 changes.
B_KEY = KeyPair(bytes(range(1, 33)))
A_DID = KeyPair(bytes(range(32))).did
DIGEST_BEFORE = "ba0eade67331a52fb89d8e17e887abe0d2d3a117fb0b43ed5b0306dbf2f3251f"


def format2_store(into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(into, filter="data")
    return into


def test_this_version_refuses_a_format_2_store_and_names_the_migration(tmp_path: Path) -> None:
    with pytest.raises(StoreFormatError, match="rgrid store migrate"):
        Store(format2_store(tmp_path / "s"))


def test_a_migrated_store_keeps_every_record_and_change_and_verifies(tmp_path: Path) -> None:
    path = format2_store(tmp_path / "s")
    report = migrate(path)
    assert (report.from_format, report.to_format, report.resumed) == (2, STORE_FORMAT, False)
    grid = LocalRegistry.open_path(path, B_KEY)
    try:
        assert grid.verify().ok
        assert grid.verify().changes == report.changes > 50
        assert grid.state_digest() == DIGEST_BEFORE  # the records are exactly as before
        assert grid.get("grid.clusters", "a1")["fields"] == {"name": "a1", "region": "us"}
        assert [h["op"] for h in grid.history("grid.tools", "b3")] == ["create", "update"]
        # The old changes are read as the format-1 wires their authors signed.
        wire = grid.engine.envelopes_after("grid.tools", B_KEY.did, 0, limit=1)[0]
        assert open_envelope(wire).legacy
        # New writes are wire format 2, on top of legacy history.
        grid.update("grid.tools", "b3", patch={"name": "b3-again"})
        created = grid.put("grid.tools", "tool", {"name": "new"}, id="new")
        newest = grid.engine.envelopes_after("grid.tools", B_KEY.did, 21)
        assert [open_envelope(w).legacy for w in newest] == [False, False]
        assert created.status == "created"
        assert grid.verify().ok
    finally:
        grid.close()


def test_legacy_changes_replicate_to_a_fresh_format_3_node(tmp_path: Path) -> None:
    path = format2_store(tmp_path / "b")
    migrate(path)
    b = LocalRegistry.open_path(path, B_KEY)
    c = LocalRegistry.open_path(tmp_path / "c")
    try:
        b.update("grid.tools", "b0", patch={"name": "b0-v2"})  # a format-2 change after legacy ones
        for registry, authors in b.engine.version_vector().items():
            for author in authors:
                wires = b.engine.envelopes_after(registry, author, 0, limit=10_000)
                assert {r.status for r in c.execute([Remote(w, "b") for w in wires])} == {"applied"}
        assert c.state_digest() == b.state_digest()
        assert c.verify().ok
    finally:
        b.close()
        c.close()


def test_a_stopped_migration_resumes_and_a_half_migrated_store_is_never_opened(tmp_path: Path) -> None:
    path = format2_store(tmp_path / "s")
    calls = []

    def stop_after_two(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migrate(path, progress=stop_after_two, chunk=10)
    with pytest.raises(StoreFormatError):
        Store(path)  # still format 2 on disk: half converted, never read as current
    report = migrate(path, chunk=10)
    assert report.resumed and report.to_format == STORE_FORMAT
    with LocalRegistry.open_path(path, B_KEY) as grid:
        verified = grid.verify()
        assert verified.ok
        assert report.changes == verified.changes - 20  # the stopped run had converted two chunks
        assert grid.state_digest() == DIGEST_BEFORE
    assert migrate(path).changes == 0  # already current: nothing to do


def test_rgrid_store_migrate_upgrades_a_home_and_verifies_it(tmp_path: Path, rgrid) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    Home(home).init(org_name="acme")
    store_path = Home(home).store_path
    shutil.rmtree(store_path, ignore_errors=True)
    format2_store(store_path)
    refused = rgrid("get", "grid.tools", "b3", home=home)
    assert refused.returncode != 0 and "rgrid store migrate" in refused.stderr
    proc = rgrid("store", "migrate", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["from_format"] == 2 and report["to_format"] == STORE_FORMAT and report["verified"] is True
    shown = rgrid("get", "grid.tools", "b3", "--json", home=home)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["fields"] == {"name": "b3-renamed"}
