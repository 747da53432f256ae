"""Durability: acknowledged writes survive kill -9, the map grows instead of
failing, and one home has one writer."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import registrygrid
from registrygrid.engine.engine import Engine
from registrygrid.engine.ops import Put, WriteResult
from registrygrid.errors import HomeLocked, NotFound
from registrygrid.home import Home
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import cid_from_str
from registrygrid.sdk import LocalRegistry
from registrygrid.storage.store import Store

# A writer that acknowledges on stdout only after each write returned, which is
# when the SDK promises durability. Singles and batches alternate so the kill
# can land inside either kind of transaction.
WRITER = textwrap.dedent(
    """
    import sys
    from registrygrid.engine.ops import Put
    from registrygrid.identity.keys import KeyPair
    from registrygrid.sdk import LocalRegistry

    path, seed, prefix = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
    grid = LocalRegistry.open_path(path, KeyPair(seed))
    i = 0
    while True:
        if i % 4 == 0:
            puts = [Put("grid.clusters", "cluster", {"name": f"n{i + j}", "gpus": {"count": j}},
                        f"{prefix}-{i + j}", tags=["batch"]) for j in range(7)]
            for result in grid.put_many(puts):
                print(result.record_id, result.change_id, flush=True)
            i += 7
        else:
            result = grid.put("grid.clusters", "cluster", {"name": f"n{i}", "blob": "x" * (i % 300)},
                              id=f"{prefix}-{i}")
            print(result.record_id, result.change_id, flush=True)
            i += 1
    """
)

# Bounds, not measurements: how long to wait for a child before failing.
CHILD_TIMEOUT_S = 60


def _write_until_killed(path: Path, key: KeyPair, prefix: str, acks_wanted: int) -> dict[str, str]:
    """Run WRITER, read ``acks_wanted`` acknowledgements, SIGKILL it; return record id -> change id."""
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), key.seed.hex(), prefix],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    acks: dict[str, str] = {}
    buffer = b""
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    try:
        assert child.stdout is not None
        fd = child.stdout.fileno()
        while len(acks) < acks_wanted:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"writer acknowledged only {len(acks)} writes"
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                child.wait(timeout=5)
                raise AssertionError(f"writer exited early: {child.stderr.read().decode()}")  # type: ignore[union-attr]
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                record_id, change_id = line.decode().split()
                acks[record_id] = change_id
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=CHILD_TIMEOUT_S)
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
    return acks


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    key = KeyPair.generate()
    acks = _write_until_killed(tmp_path, key, "first", 300)
    # A second life on the same store after the crash, killed again.
    acks.update(_write_until_killed(tmp_path, key, "second", 150))
    assert len(acks) >= 450

    grid = LocalRegistry.open_path(tmp_path, key)
    try:
        for record_id, change_id in acks.items():
            record = grid.get("grid.clusters", record_id)
            assert record["change_id"] == change_id, record_id
            assert grid.change(cid_from_str(change_id)) is not None
        report = grid.verify()
        assert report.ok, report
        grid.audit_verify()
        head = grid.feed_head()
        assert head >= len(acks)
        assert [e.seq for e in grid.changes(0, limit=10_000)] == list(range(1, head + 1))
        # The store keeps working after the crashes: the author chain goes on.
        result = grid.put("grid.clusters", "cluster", {"name": "after"}, id="after")
        assert result.feed_seq == head + 1
        assert grid.verify().ok
        grid.audit_verify()
    finally:
        grid.close()


def test_the_store_grows_its_map_instead_of_failing_a_write(tmp_path: Path) -> None:
    start = 1 * 2**20
    store = Store(tmp_path, map_size=start)
    engine = Engine(store, KeyPair.generate())
    try:
        blob = "y" * 4000
        written = 0
        for batch in range(25):
            outcomes = engine.execute([Put("grid.clusters", "cluster", {"name": f"c{batch}-{i}", "blob": blob},
                                           f"c{batch}-{i}") for i in range(40)])
            assert all(isinstance(o, WriteResult) and o.status == "created" for o in outcomes), outcomes
            written += len(outcomes)
        assert store.env.info()["map_size"] > start
        assert engine.metrics["store.map_grown"] >= 1
        assert store.stats()["bytes_used"] > start
    finally:
        store.close()
    grid = LocalRegistry.open_path(tmp_path)
    try:
        assert grid.feed_head() == written
        assert grid.get("grid.clusters", "c24-39")["fields"]["blob"] == blob
        assert grid.verify().ok
        grid.audit_verify()
    finally:
        grid.close()


def test_a_second_open_of_a_home_in_use_is_home_locked(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Home(home).init()
    first = registrygrid.open(home)
    try:
        first.put("grid.clusters", "cluster", {"name": "a"}, id="a")
        with pytest.raises(HomeLocked) as caught:
            registrygrid.open(home)
        assert f"pid {os.getpid()}" in caught.value.message
        assert first.get("grid.clusters", "a")["fields"] == {"name": "a"}
    finally:
        first.close()
    # Released on close: the next opener gets it.
    with registrygrid.open(home) as again:
        assert again.get("grid.clusters", "a")["fields"] == {"name": "a"}


def test_a_home_held_by_another_process_is_home_locked_naming_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Home(home).init()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, registrygrid\n"
         "g = registrygrid.open(sys.argv[1])\n"
         "print('locked', flush=True)\n"
         "sys.stdin.readline()\n"
         "g.close()\n",
         str(home)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(HomeLocked) as caught:
            registrygrid.open(home)
        assert f"pid {holder.pid}" in caught.value.message
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=CHILD_TIMEOUT_S) == 0
        with registrygrid.open(home):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for stream in (holder.stdin, holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()


def test_a_holder_killed_with_sigkill_releases_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Home(home).init()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, registrygrid\n"
         "g = registrygrid.open(sys.argv[1])\n"
         "print('locked', flush=True)\n"
         "time.sleep(600)\n",
         str(home)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(HomeLocked):
            registrygrid.open(home)
        holder.kill()
        holder.wait(timeout=CHILD_TIMEOUT_S)
        with registrygrid.open(home) as grid:
            assert grid.verify().ok
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_an_idempotent_writes_answer_is_the_one_of_the_attempt_that_committed(tmp_path: Path) -> None:
    """A batch that fills the map is run again after the map grows: the
    answer of a Remembered write is made at each attempt, and the one stored
    under its key is the last, which names the record that exists."""
    from registrygrid.engine.ops import Remembered
    from registrygrid.storage import idempotency

    store = Store(tmp_path, map_size=2**20)
    engine = Engine(store, KeyPair.generate())
    answers: list[str] = []

    def answer(result: WriteResult) -> tuple[int, bytes, dict[str, str]]:
        answers.append(result.record_id)
        return 201, result.record_id.encode(), {}

    try:
        # Random text: compressed values must still fill the 1 MiB map.
        filler = [Put("grid.clusters", "cluster", {"name": f"c{i}", "blob": os.urandom(2000).hex()}, f"c{i}")
                  for i in range(300)]
        keyed = Remembered(Put("grid.clusters", "cluster", {"name": "keyed"}), "token-1", "key-1", b"h" * 32,
                           2**62, answer)
        outcomes = engine.execute([*filler, keyed])
        assert engine.metrics["store.map_grown"] >= 1 and len(answers) >= 2
        assert isinstance(outcomes[-1], WriteResult) and outcomes[-1].record_id == answers[-1]
        entry = idempotency.lookup(store, "token-1", "key-1", now_ms=0)
        assert entry is not None and entry.body == answers[-1].encode()
    finally:
        store.close()
    grid = LocalRegistry.open_path(tmp_path)
    try:
        assert grid.get("grid.clusters", answers[-1])["fields"] == {"name": "keyed"}
        for aborted in set(answers[:-1]) - {answers[-1]}:
            with pytest.raises(NotFound):
                grid.get("grid.clusters", aborted)
    finally:
        grid.close()


def test_a_new_home_is_on_disk_before_init_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys and the files naming the org and its delegation are synced,
    and so are the folders their names are in: a power cut right after
    `rgrid init` (or a federation join) must not leave a store of changes
    signed by a key that is gone. Every fsync goes through to the disk; this
    only notes which files and folders it was asked for."""
    synced: list[str] = []
    real_fsync = os.fsync

    def noting(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", noting)
    home = Home(tmp_path / "home")
    home.init(org_name="acme")

    def was_synced(path: Path) -> bool:  # itself, or the temporary file renamed over it
        return str(path) in synced or any(s.startswith(f"{path.parent}/.{path.name}.") for s in synced)

    for path in (home.node_key_path, home.org_key_path, home.path / "org.json", home.path / "config.json",
                 home.node_key_path.parent, home.path):
        assert was_synced(path), (path, synced)
    assert (home.node_key_path.stat().st_mode & 0o777) == 0o600
