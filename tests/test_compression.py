"""Stored values compressed against dictionaries of the store's own values
(storage/compression.py): smaller, read back exactly, readable by any
process, never referring to a dictionary the store lacks, and damage to
them is named by verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from registrygrid.engine.ops import Put
from registrygrid.errors import IntegrityError
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import cid_from_str
from registrygrid.sdk import LocalRegistry
from registrygrid.storage import records as stored_records
from registrygrid.storage.compact import compact
from registrygrid.storage.compression import FIRST_AFTER, MARK, SECOND_AFTER, dictionary_key
from registrygrid.storage.migrate import migrate
from registrygrid.storage.store import STORE_FORMAT, Store, StoreFormatError, u64

CLUSTERS = "grid.clusters"


def cluster(i: int) -> dict[str, str]:
    return {"name": f"cluster-{i:07d}", "region": ("eu-west-1", "us-east-1")[i % 2], "status": "active"}


def fill(grid: LocalRegistry, count: int, *, start: int = 0) -> list[str]:
    return [r.record_id for r in grid.put_many([Put(CLUSTERS, "cluster", cluster(i), record_id=f"c{i:06d}")
                                                for i in range(start, start + count)])]


def stored(store: Store, db: str) -> dict[bytes, bytes]:
    with store.read() as txn:
        return dict(txn.cursor(db=store.db[db]))


def test_values_are_stored_compressed_once_a_dictionary_exists_and_read_back_exactly(
        grid: LocalRegistry) -> None:
    ids = fill(grid, 2 * FIRST_AFTER)

    changes = stored(grid.store, "changes")
    compressed = [v for v in changes.values() if v[0] == MARK]
    assert compressed and len(compressed) < len(changes)  # the first values were written before any dictionary
    records = stored(grid.store, "records")
    with grid.store.read() as txn:
        plain = {k: grid.store.values.unpack(txn, "records", v, k) for k, v in records.items()}
    assert sum(len(v) for v in records.values()) < 0.75 * sum(len(v) for v in plain.values())
    for i, record_id in enumerate(ids):
        assert grid.get(CLUSTERS, record_id)["fields"] == cluster(i)
    assert grid.verify().ok
    assert grid.store.values.generations() == {"changes": 1, "records": 1, "feed": 1, "audit": 1}


def test_a_new_generation_follows_the_workload_and_old_values_stay_readable(grid: LocalRegistry) -> None:
    ids = fill(grid, FIRST_AFTER + SECOND_AFTER + 10)

    assert grid.store.values.generations()["records"] == 2
    with grid.store.read() as txn:
        generations = {v[1] for v in txn.cursor(db=grid.store.db["records"]).iternext(keys=False) if v[0] == MARK}
    assert generations == {1, 2}
    assert [grid.get(CLUSTERS, i)["fields"]["name"] for i in ids[::97]] == [cluster(i)["name"]
                                                                             for i in range(0, len(ids), 97)]
    assert grid.verify().ok


def test_a_dictionary_made_in_an_aborted_transaction_is_never_referred_to(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    # Stored values are msgpack, which never starts with the compression mark (0xC1).
    plain = [b"\x92" + os.urandom(8) + b"the same words again and again " * 4 for _ in range(FIRST_AFTER)]

    class Abort(Exception):
        pass

    with pytest.raises(Abort), store.write() as txn:
        for i, value in enumerate(plain):  # the last one makes generation 1, in this transaction
            txn.put(u64(i), store.values.pack(txn, "feed", value), db=store.db["feed"])
        assert store.values.generations()["feed"] == 1
        raise Abort
    with store.write() as txn:
        packed = store.values.pack(txn, "feed", plain[0])
        assert txn.get(dictionary_key("feed", 1), db=store.db["meta"]) is None
        assert packed == plain[0]  # no dictionary: kept plain
        txn.put(u64(0), packed, db=store.db["feed"])
    assert store.values.generations()["feed"] == 0
    store.close()
    reopened = Store(tmp_path / "s")
    with reopened.read() as txn:
        assert reopened.values.unpack(txn, "feed", txn.get(u64(0), db=reopened.db["feed"]), u64(0)) == plain[0]
    reopened.close()


READER = """
import sys, json
from registrygrid.storage.store import Store
from registrygrid.storage import records
store = Store(sys.argv[1], readonly=True)
print("open", flush=True)
sys.stdin.readline()
with store.read() as txn:
    print(json.dumps(records.get_record(store, txn, "grid.clusters", sys.argv[2])["fields"]), flush=True)
"""


def test_every_generation_an_aborted_transaction_made_is_forgotten(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    plain = [b"\x92" + os.urandom(4) + b"a feed event like the others" * 3 for _ in range(FIRST_AFTER + SECOND_AFTER)]

    class Abort(Exception):
        pass

    with pytest.raises(Abort), store.write() as txn:  # one big transaction past two thresholds
        for i, value in enumerate(plain):
            txn.put(u64(i), store.values.pack(txn, "feed", value), db=store.db["feed"])
        assert store.values.generations()["feed"] == 2
        raise Abort
    with store.write() as txn:
        packed = store.values.pack(txn, "feed", plain[0])
        txn.put(u64(0), packed, db=store.db["feed"])
    assert store.values.generations()["feed"] == 0 and packed == plain[0]
    store.close()


def test_a_reader_process_opened_before_a_dictionary_was_made_finds_it_in_the_store(tmp_path: Path) -> None:
    writer = LocalRegistry.open_path(tmp_path / "s")
    fill(writer, 1)  # no dictionary yet
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "s"), "c000095"], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "open\n"
        fill(writer, 3 * FIRST_AFTER, start=1)
        assert writer.store.values.generations()["records"] == 1

        out, _ = reader.communicate("go\n", timeout=60)
        assert json.loads(out) == cluster(95)
    finally:
        reader.kill()
        writer.close()


def test_a_value_compression_would_not_shrink_is_kept_plain(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    with store.write() as txn:
        for i in range(FIRST_AFTER):
            txn.put(u64(i), store.values.pack(txn, "feed", b"a feed event like the others %d" % i),
                    db=store.db["feed"])
        assert store.values.generations()["feed"] == 1
        noise = os.urandom(300)
        assert store.values.pack(txn, "feed", noise) == noise
        assert store.values.pack(txn, "feed", b"a feed event like the others 7")[0] == MARK
    store.close()


def test_readers_on_many_threads_decompress_while_the_writer_writes(grid: LocalRegistry) -> None:
    ids = fill(grid, 4 * FIRST_AFTER)
    wrong: list[str] = []
    done = threading.Event()

    def read_all() -> None:
        while not done.is_set():
            for i, record_id in enumerate(ids):
                if grid.get(CLUSTERS, record_id)["fields"] != cluster(i):
                    wrong.append(record_id)

    readers = [threading.Thread(target=read_all) for _ in range(4)]
    for thread in readers:
        thread.start()
    try:
        for round_ in range(5):
            fill(grid, 300, start=10_000 + 300 * round_)
    finally:
        done.set()
        for thread in readers:
            thread.join()
    assert wrong == []
    assert grid.verify().ok


def _flip(store: Store, db: str, key: bytes, at: int) -> None:
    with store.env.begin(write=True) as txn:
        value = bytearray(txn.get(key, db=store.db[db]))
        assert value[0] == MARK
        value[at] ^= 0xFF
        txn.put(key, bytes(value), db=store.db[db])


@pytest.mark.parametrize("at", [1, 2, 3, 8, -1])
def test_verify_names_a_change_whose_compressed_bytes_were_damaged(grid: LocalRegistry, at: int) -> None:
    fill(grid, 2 * FIRST_AFTER)
    target = grid.put(CLUSTERS, "cluster", cluster(1), id="target")
    cid = cid_from_str(target.change_id)

    _flip(grid.store, "changes", cid, at)

    report = grid.verify()
    assert not report.ok
    assert report.where == f"change {target.change_id}"


@pytest.mark.parametrize("at", [1, 2, 3, -1])
def test_verify_names_a_record_whose_compressed_bytes_were_damaged(grid: LocalRegistry, at: int) -> None:
    fill(grid, 2 * FIRST_AFTER)
    grid.put(CLUSTERS, "cluster", cluster(1), id="target")

    _flip(grid.store, "records", stored_records.record_key(CLUSTERS, "target"), at)

    report = grid.verify()
    assert not report.ok
    assert report.where == f"record {CLUSTERS}/target"


def test_audit_verify_names_an_entry_whose_compressed_bytes_were_damaged(grid: LocalRegistry) -> None:
    fill(grid, 2 * FIRST_AFTER)
    with grid.store.read() as txn:
        last = txn.cursor(db=grid.store.db["audit"])
        last.last()
        seq = int.from_bytes(last.key(), "big")

    _flip(grid.store, "audit", u64(seq), 2)

    with pytest.raises(IntegrityError) as caught:
        grid.audit_verify()
    assert caught.value.details == {"entry": seq}


def test_dictionaries_learn_no_record_content_so_an_erasure_leaves_none_in_them(grid: LocalRegistry) -> None:
    """A dictionary is never removed, and an erasure removes a record's
    change bodies and materialized record: what the changes' and records'
    dictionaries learn is their shape and names, never ids, values, tags or
    links."""
    secret = "patient-4471-ssn-078051120"
    grid.put_many([Put(CLUSTERS, "cluster", {"name": f"{secret}-{i}", "region": secret}, tags=[secret],
                       record_id=f"{secret}-{i}") for i in range(3 * FIRST_AFTER)])

    with grid.store.read() as txn:
        dictionaries = {k: v for k, v in txn.cursor(db=grid.store.db["meta"]) if k.startswith(b"zdict")}
    assert {k.split(b"\x00")[1] for k in dictionaries} == {b"changes", b"records", b"feed", b"audit"}
    for k, content in dictionaries.items():
        if k.split(b"\x00")[1] in (b"changes", b"records"):
            assert secret.encode() not in content, k
            assert b"region" in content and b"did:key:" in content  # names and identities are what repeats


FORMAT_3 = Path(__file__).parent / "fixtures" / "store-format-3.tar.gz"
# Written by the version before store format 4 (commit 649c54a): key bytes
# 1..32 made 200 clusters c000..c199 in one batch, set c003 draining and
# deleted c004.
FORMAT_3_KEY = KeyPair(bytes(range(1, 33)))
FORMAT_3_DIGEST = "dbc6c95f49008843b932571067827a6ce99c2cbd4d78424010cc7bc67bc7a0a1"


def format3_store(into: Path) -> Path:
    into.mkdir(parents=True)
    with tarfile.open(FORMAT_3) as archive:
        archive.extractall(into, filter="data")
    return into


def test_a_format_3_store_migrates_and_compaction_then_packs_its_plain_values(tmp_path: Path) -> None:
    path = format3_store(tmp_path / "s")
    with pytest.raises(StoreFormatError, match="rgrid store migrate"):
        Store(path)

    report = migrate(path)

    assert (report.from_format, report.to_format, report.changes) == (3, STORE_FORMAT, 0)
    assert report.rekeyed >= 202 + 200  # every chain link (200 creates, an update, a delete) and owner index entry
    with LocalRegistry.open_path(path, FORMAT_3_KEY) as grid:
        assert grid.verify().ok and grid.state_digest() == FORMAT_3_DIGEST
        assert grid.get(CLUSTERS, "c003")["fields"]["status"] == "draining"
        assert grid.engine.version_vector(CLUSTERS) == {CLUSTERS: {FORMAT_3_KEY.did: 202}}
        owner = grid.get(CLUSTERS, "c000")["owner"]
        assert len(grid.list(CLUSTERS, owner=owner, limit=1000).items) == 199
        assert all(v[0] != MARK for v in stored(grid.store, "records").values())  # format 3's values, as written
        fill(grid, FIRST_AFTER + 1, start=500)  # new values compress
        assert any(v[0] == MARK for v in stored(grid.store, "records").values())
        digest = grid.state_digest()

    compacted = compact(path)

    assert compacted.repacked > 3 * 200  # changes, records, feed and audit entries of the 200 clusters
    assert compacted.bytes_after <= compacted.bytes_before
    with LocalRegistry.open_path(path, FORMAT_3_KEY) as grid:
        assert grid.state_digest() == digest and grid.verify().ok
        assert [k for k, v in stored(grid.store, "records").items() if v[0] != MARK] == []
        assert grid.get(CLUSTERS, "c199")["fields"]["name"] == "cluster-199"


def test_a_stopped_format_3_migration_resumes_where_it_stopped_and_ends_the_same(tmp_path: Path) -> None:
    """Format 3 -> 4 rewrites its keys in chunks, each with a cursor: a run
    stopped after some of the chain keys, and one stopped among the owner
    keys, leave a store still refused as format 3, and the next run ends
    with the store a run never stopped makes."""
    whole = migrate(format3_store(tmp_path / "whole"), chunk=50)
    for stop_at in (2, 6):  # among the chain links (202 of them); among the owner keys (200)
        path = format3_store(tmp_path / f"stopped-{stop_at}")
        calls: list[int] = []

        def stop(done: int, total: int) -> None:
            calls.append(done)
            if len(calls) == stop_at:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            migrate(path, progress=stop, chunk=50)
        with pytest.raises(StoreFormatError):
            Store(path)  # half rewritten: never opened as current
        report = migrate(path, chunk=50)
        assert report.resumed and report.to_format == STORE_FORMAT
        assert report.rekeyed + calls[-1] == whole.rekeyed == 202 + 200  # nothing rewritten twice
        with LocalRegistry.open_path(path, FORMAT_3_KEY) as grid:
            assert grid.verify().ok and grid.state_digest() == FORMAT_3_DIGEST
            assert grid.engine.version_vector(CLUSTERS) == {CLUSTERS: {FORMAT_3_KEY.did: 202}}
            owner = grid.get(CLUSTERS, "c000")["owner"]
            assert len(grid.list(CLUSTERS, owner=owner, limit=1000).items) == 199
            grid.put(CLUSTERS, "cluster", {"name": "after", "region": "eu"}, id="after")  # the chain goes on
            assert grid.engine.version_vector(CLUSTERS)[CLUSTERS][FORMAT_3_KEY.did] == 203

