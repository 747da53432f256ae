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

    assert (copy / "keys").stat().st_mode & 0o777 == 0o700  # as `rgrid init` makes it, not the 0755 tar leaves
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
    # Its mark came with the backup and knows nothing of "after": only a
    # sync with its peers does. Ended at once, its next write took the
    # sequence number "after" holds.
    early = rgrid(copy, "store", "recovered", check=False)
    assert early.returncode == 65 and "restored from a backup" in early.stderr, early.stderr
    rgrid(copy, "store", "recovered", "--none-kept")  # (this node has no peers to give it back)
    rgrid(copy, "put", "grid.clusters", "cluster", "--id", "x", "--set", "name=x")


def test_a_restore_goes_only_into_a_new_home_and_refuses_what_is_no_whole_backup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rgrid(home, "init")  # a home just made backs up too: its keys are what most need it
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
    damaged = tmp_path / "damaged.tar"  # whole, but its store is no LMDB file
    with tarfile.open(backup) as source, tarfile.open(damaged, "w") as archive:
        for member in source.getmembers():
            if member.name == "store/data.mdb":
                member.size = 4096
                archive.addfile(member, io.BytesIO(b"\x00" * 4096))
            else:
                archive.addfile(member, source.extractfile(member) if member.isfile() else None)
    for bad in (cut, foreign, hostile, damaged, tmp_path / "missing.tar", Path("/dev/zero")):
        target = tmp_path / f"from-{bad.stem}"  # (a device was read forever)
        proc = rgrid(target, "store", "restore", str(bad), check=False)
        assert proc.returncode in (65, 66), (bad, proc.stderr)
        assert not target.exists(), bad
    assert not (tmp_path / "escaped").exists()
    assert not [p for p in tmp_path.iterdir() if "restoring" in p.name]  # no half-restored folder left


async def test_a_restored_node_ends_its_recovery_once_it_has_synced_its_later_changes_back(tmp_path: Path) -> None:
    """The backup knows nothing of what the key signed after it: its peers
    do. The restored node syncs them back, notes the sync, and only then may
    its recovery end; its next write then follows them."""
    import trio
    from test_federation_support import cluster, eventually, full_mesh

    from registrygrid.backup import restore
    from registrygrid.home import Home
    from registrygrid.sdk import LocalRegistry

    archive = tmp_path / "a.tar"
    with trio.fail_after(90):
        async with cluster(tmp_path / "fed") as nodes:
            a = await nodes.start("a")
            b = await nodes.start("b", a.fed.addrs())
            await full_mesh([a, b])
            await a.write("before-", 5)
            # From another process, as an operator runs it (LMDB opens a store once per process).
            await trio.to_thread.run_sync(lambda: rgrid(a.home.path, "store", "backup", str(archive)))
            await a.write("after-", 3)  # signed after the backup
            await eventually(lambda: b.records() == 8, 20, "b holds a's eight records")
            await nodes.stop(a)
            await trio.to_thread.run_sync(lambda: restore(archive, Home(tmp_path / "fed" / "a2")))
            a2 = await nodes.start("a2", b.fed.addrs())
            assert a2.node.engine.recovering is not None and a2.records() == 5
            await eventually(lambda: a2.records() == 8 and (a2.node.engine.recovering or {}).get("synced_ms"), 30,
                             "the restored node synced its later changes back")
            await nodes.stop(a2)
        with LocalRegistry.open_home(Home(tmp_path / "fed" / "a2")) as restored:
            assert restored.end_recovery()["last_changes"]["grid.clusters"] == 8
            restored.put("grid.clusters", "cluster", {"name": "next"}, id="next")  # the ninth, not a second fifth


def test_a_backup_of_a_store_that_was_recovering_restores_to_a_recovery_begun_anew(tmp_path: Path) -> None:
    # Its archive carried the sync its first recovery had noted, so the
    # restored node's recovery ended at once, and its next write took a
    # sequence number the key had signed since. Nor does an upload still
    # coming in (objects/staging) go into a backup.
    from registrygrid.backup import backup, restore
    from registrygrid.home import Home
    from registrygrid.sdk import LocalRegistry

    home = Home(tmp_path / "home")
    home.init(org_name="acme")
    with LocalRegistry.open_home(home) as grid:
        grid.put("grid.clusters", "cluster", {"name": "c"}, id="c")
        grid.engine.begin_recovery(restored=True)
        grid.engine.note_recovery_synced()
    staging = home.path / "objects" / "staging"
    staging.mkdir(parents=True)
    (staging / "half-an-upload").write_bytes(b"x" * 100)
    backup(home, tmp_path / "b.tar")
    with tarfile.open(tmp_path / "b.tar") as archive:
        assert not [m.name for m in archive.getmembers() if "staging" in m.name]
    restore(tmp_path / "b.tar", Home(tmp_path / "restored"))
    with LocalRegistry.open_home(Home(tmp_path / "restored")) as restored:
        recovering = restored.engine.recovering
        assert recovering is not None and recovering.get("restored") and not recovering.get("synced_ms")
