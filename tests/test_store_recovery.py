"""A lost store: a home whose node key signed changes gets a new, empty
store (a failed disk, a deleted directory). Its chains would restart at
sequence 1, so any change it signed would take a (registry, sequence) its
peers already hold: equivocation, which every peer reports and answers by
quarantining the key. Instead the node recovers: it syncs but signs
nothing until its operator says its history is back (`rgrid store
recovered`), and then writes go on after its last change.

Real homes and LMDB stores; the peer is a second store that holds the
node's history, as any federation member would.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from registrygrid.engine.ops import Remote
from registrygrid.errors import EX_UNAVAILABLE, Conflict, StoreRecovering
from registrygrid.home import Home
from registrygrid.identity.keys import KeyPair
from registrygrid.sdk import LocalRegistry
from tests.test_engine import wires_in_feed_order

Run = Callable[..., Any]


def deliver(source: LocalRegistry, target: LocalRegistry) -> list[str]:
    return [r.status for r in target.execute([Remote(w, "peer") for w in wires_in_feed_order(source)])]


@pytest.fixture
def lost(tmp_path: Path) -> tuple[Home, LocalRegistry]:
    """A home that wrote two records, all held by a peer; then its store is gone."""
    home = Home(tmp_path / "home")
    home.init(org_name="acme")
    peer = LocalRegistry.open_path(tmp_path / "peer", KeyPair(b"\x77" * 32))
    with LocalRegistry.open_home(home) as grid:
        assert grid.engine.recovering is None, "a home that never signed opens as usual"
        grid.put("grid.clusters", "cluster", {"name": "a"}, id="a")
        grid.put("grid.clusters", "cluster", {"name": "b"}, id="b")
        assert set(deliver(grid, peer)) == {"applied"}
    shutil.rmtree(home.store_path)
    return home, peer


def test_a_lost_store_reopens_recovering_signs_nothing_and_gives_its_peers_no_equivocation(
        lost: tuple[Home, LocalRegistry]) -> None:
    home, peer = lost
    try:
        with LocalRegistry.open_home(home) as grid:
            assert grid.engine.recovering is not None and grid.stats()["recovering"] == 1
            assert wires_in_feed_order(grid) == [], "not even its delegation is published again"
            with pytest.raises(StoreRecovering, match="rgrid store recovered"):
                grid.put("grid.clusters", "cluster", {"name": "c"}, id="c")
        with LocalRegistry.open_home(home) as grid:  # it stays so across opens
            assert grid.engine.recovering is not None
        assert peer.engine.metrics["equivocation.reported"] == 0
    finally:
        peer.close()


@pytest.mark.parametrize("loss", ["emptied", "migrated"])
def test_a_store_emptied_or_made_anew_by_a_migration_reopens_recovering_too(lost: tuple[Home, LocalRegistry],
                                                                            loss: str) -> None:
    # Only a missing data.mdb counted as lost: an emptied one, or the one
    # `rgrid store migrate` made where none was, opened as usual, and the
    # key signed its delegation as sequence 1 of grid.members again.
    from registrygrid.errors import NotFound
    from registrygrid.storage.migrate import migrate

    home, peer = lost
    try:
        if loss == "emptied":
            home.store_path.mkdir()
            (home.store_path / "data.mdb").write_bytes(b"")
        else:
            with pytest.raises(NotFound, match="no store to migrate"):
                migrate(home.store_path)
            LocalRegistry.open_path(home.store_path, KeyPair(b"\x78" * 32)).close()  # a store, made empty
        with LocalRegistry.open_home(home) as grid:
            assert grid.engine.recovering is not None
            assert wires_in_feed_order(grid) == []
    finally:
        peer.close()


def test_rotating_the_key_of_a_home_whose_store_is_lost_is_refused_and_revokes_nothing(
        lost: tuple[Home, LocalRegistry]) -> None:
    # Its revocation named no cutoffs: every node dropped all the old key signed.
    from registrygrid.errors import Conflict
    from registrygrid.membership import rotate_node_key

    home, peer = lost
    try:
        key = home.node_key()
        with pytest.raises(Conflict, match="signed changes"):
            rotate_node_key(home)
        assert home.node_key() == key and not (home.path / "rotation.json").exists()
        with LocalRegistry.open_home(home) as grid:  # recovering now (the open above made the store anew)
            assert grid.engine.recovering is not None
        with pytest.raises(Conflict, match="still recovering"):
            rotate_node_key(home)
    finally:
        peer.close()


def test_once_its_history_is_back_writes_go_on_after_its_last_change(lost: tuple[Home, LocalRegistry]) -> None:
    home, peer = lost
    try:
        with LocalRegistry.open_home(home) as grid:
            assert set(deliver(peer, grid)) == {"applied"}  # sync brings its own changes back
            report = grid.end_recovery()
            assert report["was_recovering"] and report["key"] == grid.engine.key.did
            assert report["last_changes"]["grid.clusters"] == 2
            assert grid.put("grid.clusters", "cluster", {"name": "c"}, id="c").status == "created"
            assert set(deliver(grid, peer)) <= {"applied", "duplicate"}
        assert peer.get("grid.clusters", "c")["fields"] == {"name": "c"}
        assert peer.engine.metrics["equivocation.reported"] == 0
        with LocalRegistry.open_home(home) as grid:
            assert grid.engine.recovering is None and grid.stats()["recovering"] == 0
    finally:
        peer.close()


def test_without_the_guard_the_same_loss_is_an_equivocation_its_peers_quarantine(
        lost: tuple[Home, LocalRegistry]) -> None:
    """What the guard prevents, shown: the node's fresh store signs again
    from sequence 1, and the peer files the proof."""
    home, peer = lost
    try:
        with LocalRegistry.open_home(home) as grid:
            grid.end_recovery(none_kept=True)  # at once, its history not back: as before the guard existed
            grid.put("grid.clusters", "cluster", {"name": "c"}, id="c")
            statuses = deliver(grid, peer)
        assert "rejected" in statuses
        assert peer.engine.metrics["equivocation.quarantined"] >= 1
    finally:
        peer.close()


def test_the_bridge_answers_a_write_while_recovering_503_without_retry_after() -> None:
    """Recovery lasts until the operator ends it: nothing tells a client
    to come back in a second (clients do not retry it: test_client_sdk.py)."""
    from registrygrid.node.bridge.app import error_response

    answer = error_response(StoreRecovering("recovering"), "trace")
    assert answer.status == 503 and "Retry-After" not in answer.headers


def test_rgrid_store_recovered_reports_the_last_changes_and_ends_the_recovery(
        lost: tuple[Home, LocalRegistry], rgrid: Run) -> None:
    home, peer = lost
    try:
        with LocalRegistry.open_home(home) as grid:
            deliver(peer, grid)
        proc = rgrid("put", "grid.clusters", "cluster", "--id", "c", "--set", "name=c", home=home.path)
        assert proc.returncode == EX_UNAVAILABLE and "error[store_recovering]" in proc.stderr
        proc = rgrid("store", "recovered", "--json", home=home.path)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["was_recovering"] and report["last_changes"]["grid.clusters"] == 2
        proc = rgrid("put", "grid.clusters", "cluster", "--id", "c", "--set", "name=c", "--json", home=home.path)
        assert proc.returncode == 0, proc.stderr
        again = json.loads(rgrid("store", "recovered", "--json", home=home.path).stdout)
        assert again["was_recovering"] is False
    finally:
        peer.close()


def test_ending_a_recovery_before_any_of_the_keys_changes_is_back_is_refused_unless_none_were_kept(
        lost: tuple[Home, LocalRegistry], rgrid: Run) -> None:
    # `rgrid store recovered` run at once ended it with nothing back: the
    # key signed from sequence 1 again, the equivocation the recovery exists
    # to prevent. And each open before anything synced moved since_ms.
    home, peer = lost
    try:
        with LocalRegistry.open_home(home) as grid:
            since = grid.engine.recovering["since_ms"]
        time.sleep(0.01)
        with LocalRegistry.open_home(home) as grid:
            assert grid.engine.recovering["since_ms"] == since
        proc = rgrid("store", "recovered", home=home.path)
        assert proc.returncode == 65 and "error[conflict]" in proc.stderr and "--none-kept" in proc.stderr
        with LocalRegistry.open_home(home) as grid:
            assert grid.engine.recovering is not None and grid.stats()["recovering"] == 1
        proc = rgrid("store", "recovered", "--none-kept", "--json", home=home.path)
        assert proc.returncode == 0 and json.loads(proc.stdout)["was_recovering"] is True
    finally:
        peer.close()


def test_a_store_restored_from_an_older_backup_reopens_recovering_until_its_later_changes_are_back(
        tmp_path: Path) -> None:
    """A backup taken before the key's last changes, restored: the store's
    chains stopped short of what the peers hold, and the next write signed
    a sequence number they held already (equivocation, then quarantine):
    nothing noticed, where a lost store opens recovering."""
    home = Home(tmp_path / "home")
    home.init(org_name="acme")
    peer = LocalRegistry.open_path(tmp_path / "peer", KeyPair(b"\x77" * 32))
    backup = tmp_path / "backup"
    try:
        with LocalRegistry.open_home(home) as grid:
            grid.put("grid.clusters", "cluster", {"name": "a"}, id="a")
            deliver(grid, peer)
        shutil.copytree(home.store_path, backup)  # (taken with the node stopped)
        with LocalRegistry.open_home(home) as grid:
            grid.put("grid.clusters", "cluster", {"name": "b"}, id="b")
            grid.put("grid.clusters", "cluster", {"name": "c"}, id="c")
            deliver(grid, peer)
        shutil.rmtree(home.store_path)
        shutil.copytree(backup, home.store_path)  # restored
        with LocalRegistry.open_home(home) as grid:
            assert grid.engine.recovering is not None
            with pytest.raises(StoreRecovering):
                grid.put("grid.clusters", "cluster", {"name": "d"}, id="d")
            with pytest.raises(Conflict, match="holds 1 of the changes .* in grid.clusters, where it held 3"):
                grid.end_recovery()
            deliver(peer, grid)  # sync brings b and c back
            assert grid.end_recovery()["last_changes"]["grid.clusters"] == 3
            grid.put("grid.clusters", "cluster", {"name": "d"}, id="d")
            assert set(deliver(grid, peer)) <= {"applied", "duplicate"}
        assert peer.engine.metrics["equivocation.reported"] == 0
        assert peer.get("grid.clusters", "d")["fields"] == {"name": "d"}
    finally:
        peer.close()


def test_a_key_is_not_rotated_from_a_store_restored_from_an_older_backup_before_anything_opened_it(
        tmp_path: Path) -> None:
    # Nothing had opened the restored store, so it was not marked recovering:
    # the rotation's revocation took its cutoffs from it and cut the key's
    # later changes on every node.
    from registrygrid.membership import rotate_node_key

    home = Home(tmp_path / "home")
    home.init(org_name="acme")
    backup = tmp_path / "backup"
    with LocalRegistry.open_home(home) as grid:
        grid.put("grid.clusters", "cluster", {"name": "a"}, id="a")
    shutil.copytree(home.store_path, backup)
    with LocalRegistry.open_home(home) as grid:
        grid.put("grid.clusters", "cluster", {"name": "b"}, id="b")
    shutil.rmtree(home.store_path)
    shutil.copytree(backup, home.store_path)
    key = home.node_key()
    with pytest.raises(Conflict, match="holds 1 of the changes .* where it held 2 when it last closed"):
        rotate_node_key(home)
    assert home.node_key() == key and not (home.path / "rotation.json").exists()
