"""The LMDB store: its format check, and chain heads read from the chains themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from registrygrid.storage import chains
from registrygrid.storage.chains import head as chain_head
from registrygrid.sdk import LocalRegistry
from registrygrid.storage.store import STORE_FORMAT, Store, StoreDamaged, StoreFormatError, key, pack


@pytest.mark.parametrize("other", [1, STORE_FORMAT + 1])  # (2 and 3 name `rgrid store migrate`: test_migrate.py)
def test_a_store_of_another_format_is_refused_with_a_clear_error(tmp_path: Path, other: int) -> None:
    store = Store(tmp_path)
    with store.write() as txn:
        txn.put(b"format", pack(other), db=store.db["meta"])
    store.close()
    for readonly in (False, True):
        with pytest.raises(StoreFormatError, match=f"format {other}; this version reads format {STORE_FORMAT}"):
            Store(tmp_path, readonly=readonly)


@pytest.mark.parametrize("damage", ["overwritten", "cut short", "cut short past its metas", "a directory"])
def test_a_damaged_store_is_refused_with_a_typed_error_naming_the_ways_back(tmp_path: Path, damage: str) -> None:
    """Not a traceback from LMDB: the CLI prints it and exits 70. Cut short
    past its two meta pages, LMDB read a page beyond the end of the file
    through its map: SIGBUS, the process gone without a word."""
    grid = LocalRegistry.open_path(tmp_path)
    for i in range(200):
        grid.put("grid.clusters", "cluster", {"name": f"x{i}"}, id=f"x{i}")
    grid.close()
    data = tmp_path / "data.mdb"
    if damage == "overwritten":
        with data.open("r+b") as f:
            f.write(bytes(range(256)) * 32)  # both meta pages
    elif damage == "a directory":
        data.unlink()
        data.mkdir()
    else:
        assert data.stat().st_size > 5 * 4096
        with data.open("r+b") as f:
            f.truncate(100 if damage == "cut short" else 3 * 4096)
    for readonly in (False, True):
        with pytest.raises(StoreDamaged) as refused:
            Store(tmp_path, readonly=readonly)
        assert refused.value.code == "store_damaged" and refused.value.exit_code == 70
        assert "Restore it from a backup, or move it aside" in refused.value.message


def test_a_store_whose_inner_pages_are_damaged_is_store_damaged_for_verify_and_compact(tmp_path: Path) -> None:
    """The store opens (its meta pages hold), but pages inside it were
    written over: `rgrid verify` and `rgrid store compact` crashed with
    LMDB's own BadTxnError / CorruptedError, a traceback and exit 1."""
    import random
    import subprocess
    import sys

    from registrygrid.home import Home

    home = Home(tmp_path / "home")
    home.init(org_name="acme")
    with LocalRegistry.open_home(home) as grid:
        for i in range(20):
            grid.put("grid.tools", "tool", {"name": f"t{i}"}, id=f"t{i}")
    noise = random.Random(7).randbytes(3 * 4096)
    with (home.store_path / "data.mdb").open("r+b") as f:
        f.seek(2 * 4096)
        f.write(noise)
    for command in (["verify"], ["store", "compact"]):
        proc = subprocess.run([sys.executable, "-m", "registrygrid", *command, "--home", str(home.path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 70, (command, proc.stderr)
        assert proc.stderr.startswith("error[store_damaged]: ") and "Traceback" not in proc.stderr
        assert "Restore it from a backup, or move it aside" in proc.stderr
    assert not (tmp_path / "home" / "store.compact.tmp").exists()


def test_compacting_a_home_with_no_store_is_not_found_and_leaves_nothing_behind(tmp_path: Path) -> None:
    # It made HOME/store.compact.tmp, then failed on the missing data.mdb
    # (file_failed, exit 74) and left the directory behind.
    import shutil

    from registrygrid.errors import NotFound
    from registrygrid.home import Home
    from registrygrid.storage.compact import compact

    home = Home(tmp_path / "home")
    home.init(org_name="acme")
    with LocalRegistry.open_home(home) as grid:
        grid.put("grid.tools", "tool", {"name": "a"}, id="a")
    shutil.rmtree(home.store_path)
    before = sorted(p.name for p in home.path.iterdir())
    with pytest.raises(NotFound, match="no store to compact"):
        compact(home.store_path)
    assert sorted(p.name for p in home.path.iterdir()) == before


def test_chain_heads_and_version_vectors_come_from_each_chains_last_link(tmp_path: Path) -> None:
    store = Store(tmp_path)
    # Names that prefix one another must not bleed into each other's chains.
    links = {("r", "did:a"): 3, ("r", "did:ab"): 5, ("r.x", "did:a"): 2, ("s", "did:a"): 1}
    with store.write() as txn:
        for (registry, author), last in links.items():
            for seq in range(1, last + 1):
                chains.link(store, txn, registry, author, seq, f"{registry}/{author}/{seq}".encode())
    with store.read() as txn:
        for (registry, author), last in links.items():
            assert chain_head(store, txn, registry, author) == (last, f"{registry}/{author}/{last}".encode())
        assert chain_head(store, txn, "r", "did:none") == (0, b"")
        assert chain_head(store, txn, "q", "did:a") == (0, b"")
        assert chain_head(store, txn, "zzz", "did:a") == (0, b"")  # past every key
    store.close()
    grid = LocalRegistry.open_path(tmp_path)
    try:
        assert grid.engine.version_vector() == {"r": {"did:a": 3, "did:ab": 5}, "r.x": {"did:a": 2}, "s": {"did:a": 1}}
        assert grid.engine.version_vector("r") == {"r": {"did:a": 3, "did:ab": 5}}
        assert grid.engine.version_vector("nothing") == {}
    finally:
        grid.close()


def test_history_and_automerge_hashes_sit_beside_the_document(tmp_path: Path) -> None:
    grid = LocalRegistry.open_path(tmp_path)
    try:
        grid.put("grid.tools", "tool", {"name": "ocr"}, id="ocr")
        grid.update("grid.tools", "ocr", fields={"name": "ocr-2"})
        assert [h["op"] for h in grid.history("grid.tools", "ocr")] == ["create", "update"]
        with grid.store.read() as txn:
            entries = [k for k, _ in grid.store.iter_prefix(txn, "docs", key("grid.tools", "ocr"))]
        # the document (built from the snapshot create at the first update), the two Automerge hashes
        # ('a': the snapshot's genesis change and the update) and two history links ('h'), adjacent in
        # one B-tree
        assert entries[0] == key("grid.tools", "ocr")
        assert sorted(k[len(key("grid.tools", "ocr")) + 1:][:1] for k in entries[1:]) == [b"a", b"a", b"h", b"h"]
    finally:
        grid.close()


def test_growing_the_map_waits_for_open_reads_and_holds_new_ones_back(tmp_path: Path) -> None:
    # LMDB's set_mapsize needs no transaction open in the process: grow()
    # waits for the open read, and a read begun meanwhile waits for grow().
    import threading
    import time

    store = Store(tmp_path, map_size=2**20)
    events: list[str] = []
    reading = threading.Event()

    def long_read() -> None:
        with store.read() as txn:
            reading.set()
            deadline = time.monotonic() + 5
            while not store._gate._resizing and time.monotonic() < deadline:
                time.sleep(0.005)  # grow() is now waiting for this read
            time.sleep(0.05)  # ...and the late read for grow()
            txn.get(b"format", db=store.db["meta"])
            events.append("first read done")

    def late_read() -> None:
        deadline = time.monotonic() + 5
        while not store._gate._resizing and time.monotonic() < deadline:
            time.sleep(0.005)  # begin only once grow() is waiting for the first read
        with store.read() as txn:
            txn.get(b"format", db=store.db["meta"])
            # It began only after the map had grown:
            events.append(f"late read in a map of {store.env.info()['map_size']}")

    readers = [threading.Thread(target=long_read), threading.Thread(target=late_read)]
    readers[0].start()
    reading.wait(5)
    readers[1].start()
    new_size = store.grow()
    events.append("grown")
    for thread in readers:
        thread.join(5)
    assert new_size == 2**21 == store.env.info()["map_size"]
    assert events[0] == "first read done"  # grow() waited for it
    assert sorted(events[1:]) == ["grown", f"late read in a map of {2**21}"]
    store.close()


def test_growing_the_map_waits_for_an_open_write_of_another_thread(tmp_path: Path) -> None:
    # Token, idempotency and peer-table writes run on threads of their own,
    # beside the engine's writer: grow() must wait for them too, as LMDB
    # forbids set_mapsize with any transaction open in the process.
    import threading
    import time

    store = Store(tmp_path, map_size=2**20)
    events: list[str] = []
    writing = threading.Event()

    def long_write() -> None:
        with store.write() as txn:
            writing.set()
            deadline = time.monotonic() + 5
            while not store._gate._resizing and time.monotonic() < deadline:
                time.sleep(0.005)  # grow() is now waiting for this write
            time.sleep(0.05)
            store.put_meta(txn, "token", "t1")
            events.append("write committed")

    writer = threading.Thread(target=long_write)
    writer.start()
    writing.wait(5)
    new_size = store.grow()
    events.append("grown")
    writer.join(5)
    assert events == ["write committed", "grown"]
    assert new_size == 2**21
    with store.read() as txn:
        assert store.get_meta(txn, "token") == "t1"
    store.close()


def test_a_read_left_open_makes_grow_give_up_with_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from registrygrid.errors import Unavailable
    from registrygrid.storage import store as store_module

    monkeypatch.setattr(store_module, "GROW_WAIT_S", 0.2)
    store = Store(tmp_path, map_size=2**20)
    stuck = store.read()
    stuck.__enter__()  # an abandoned iterator's transaction
    with pytest.raises(Unavailable, match="retry"):
        store.grow()
    stuck.__exit__(None, None, None)
    assert store.grow() == 2**21  # and once it is gone, growing works
    with store.read() as txn:  # readers were never locked out for good
        assert txn.get(b"format", db=store.db["meta"]) is not None
    store.close()


def test_token_ids_never_start_like_a_command_line_option(monkeypatch: pytest.MonkeyPatch) -> None:
    # `rgrid token revoke -YX...` would read the id as an option.
    from registrygrid.storage import tokens

    drawn = iter(["-YXPEBU3CZix", "_abcdefghijk", "Aabcdefghijk"])
    monkeypatch.setattr(tokens.secrets, "token_urlsafe", lambda n: next(drawn))
    assert tokens.new_token_id() == "Aabcdefghijk"
    monkeypatch.undo()
    assert all(tokens.new_token_id()[0].isalnum() for _ in range(2000))


@pytest.mark.parametrize("named", ["", "x" * 600, "short", "../../meta"])
def test_a_token_id_not_made_here_names_no_token_and_is_never_an_lmdb_key(tmp_path: Path, named: str) -> None:
    # `rgrid token revoke ''` crashed with LMDB's MDB_BAD_VALSIZE: an empty
    # (or over 511-byte) key is no key at all to mdb_get.
    from registrygrid.errors import NotFound
    from registrygrid.storage import tokens

    store = Store(tmp_path)
    try:
        made, _ = tokens.create(store, role="reader")
        assert tokens.get(store, named) is None
        with pytest.raises(NotFound, match="no token"):
            tokens.revoke(store, named)
        assert tokens.get(store, made.id) == made  # a real id is found as before
    finally:
        store.close()
