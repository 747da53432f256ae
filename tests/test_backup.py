"""`rgrid store backup|restore`: a home in one file and back, made while its
node runs, restored only into a new home, and opened recovering so the
restored key never signs a sequence number its peers may hold. Real node
processes, real archives."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from registrygrid.client import BridgeClient
from tests.test_bridge_cli import _start_node, rgrid

pytestmark = pytest.mark.timeout(120)


def test_a_backup_made_while_the_node_writes_restores_into_a_new_home_that_opens_recovering(tmp_path: Path) -> None:
    home, copy = tmp_path / "home", tmp_path / "restored"
    rgrid(home, "init", "--org-name", "acme")
    node, info = _start_node(home, "--no-search")
    try:
        with BridgeClient(info["url"], token=info["token"]) as client:
            for i in range(50):
                client.put("grid.clusters", "cluster", {"name": f"c{i}"}, id=f"c{i}")
            token = client.create_token("reader", name="ci")["token"]
            made = rgrid(home, "store", "backup", str(tmp_path / "acme.rgrid.tar.gz"), "--json")
            client.put("grid.clusters", "cluster", {"name": "after"}, id="after")  # signed after the backup
    finally:
        node.terminate()
        node.wait(30)
    assert json.loads(made.stdout)["objects"] is True
    restored = json.loads(rgrid(copy, "store", "restore", str(tmp_path / "acme.rgrid.tar.gz"), "--json").stdout)
    assert restored["recovering"] is True and restored["key"].startswith("did:key:")

    listed = json.loads(rgrid(copy, "list", "grid.clusters", "--limit", "1000", "--json").stdout)
    assert sorted(r["id"] for r in listed["items"]) == sorted(f"c{i}" for i in range(50))
    assert rgrid(copy, "verify", "--json").returncode == 0
    rgrid(copy, "audit", "verify")
    tokens = json.loads(rgrid(copy, "token", "list", "--json").stdout)
    assert [t["name"] for t in tokens if t["name"] == "ci"] == ["ci"] and token
    # Its key signed "after" past the backup: a write now would take that
    # change's sequence number. It signs nothing until the recovery ends.
    refused = rgrid(copy, "put", "grid.clusters", "cluster", "--id", "x", "--set", "name=x", check=False)
    assert refused.returncode == 69 and "store_recovering" in refused.stderr
    rgrid(copy, "store", "recovered")  # (its peers gave its changes back: here none had them)
    rgrid(copy, "put", "grid.clusters", "cluster", "--id", "x", "--set", "name=x")


def test_a_restore_goes_only_into_a_new_home_and_refuses_what_is_no_whole_backup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rgrid(home, "init")
    rgrid(home, "put", "grid.clusters", "cluster", "--id", "c", "--set", "name=c")
    backup = tmp_path / "home.tar"
    rgrid(home, "store", "backup", str(backup), "--no-objects")
    over = rgrid(home, "store", "restore", str(backup), check=False)  # over a live home: never
    assert over.returncode == 65 and "already_exists" in over.stderr

    cut = tmp_path / "cut.tar"
    cut.write_bytes(backup.read_bytes()[: backup.stat().st_size // 2])
    foreign = tmp_path / "foreign.tar"
    with tarfile.open(foreign, "w") as archive:
        archive.add(home / "config.json", arcname="config.json")
    hostile = tmp_path / "hostile.tar"
    with tarfile.open(backup) as source, tarfile.open(hostile, "w") as archive:
        for member in source.getmembers():
            archive.addfile(member, source.extractfile(member) if member.isfile() else None)
        escape = tarfile.TarInfo("../escaped")
        escape.size = 3
        archive.addfile(escape, io.BytesIO(b"bad"))
    for bad in (cut, foreign, hostile, tmp_path / "missing.tar"):
        target = tmp_path / f"from-{bad.stem}"
        proc = rgrid(target, "store", "restore", str(bad), check=False)
        assert proc.returncode in (65, 66), (bad, proc.stderr)
        assert not target.exists(), bad
    assert not (tmp_path / "escaped").exists()
    assert not [p for p in tmp_path.iterdir() if "restoring" in p.name]  # no half-restored folder left
