"""Records' documents kept in memory between batches (engine/doc_cache.py).

A write of a record with history starts from the document its last
committed batch left, not from parsing the stored bytes again; the cache
never serves a document its stored bytes do not say, whoever changed them.
Real LMDB stores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from registrygrid.crdt.record import RecordDoc
from registrygrid.engine.doc_cache import DocumentCache, weight
from registrygrid.engine.engine import Engine
from registrygrid.engine.ops import Put, Remote, Update, WriteResult
from registrygrid.identity.keys import KeyPair
from registrygrid.sdk import LocalRegistry
from registrygrid.storage import records
from registrygrid.storage.store import Store
from tests.test_engine import wires_in_feed_order

REG = "grid.clusters"


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[LocalRegistry]:
    made = LocalRegistry.open_path(tmp_path / "a", KeyPair(b"\x51" * 32))
    yield made
    made.close()


def stored_doc(grid: LocalRegistry, record_id: str) -> bytes:
    with grid.store.read() as txn:
        stored = records.get_document(grid.store, txn, REG, record_id)
    assert stored is not None
    return bytes(stored)


# ---------------------------------------------------------------- the cache alone


def test_take_gives_a_document_only_for_the_stored_value_it_was_kept_under_and_removes_it() -> None:
    cache, doc = DocumentCache(), RecordDoc.new(b"\x01" * 16)
    cache.keep(("r", "x"), b"value one", doc)
    assert cache.take(("r", "x"), b"value two") is None  # the store moved on: miss
    assert len(cache) == 0  # and the entry is gone
    cache.keep(("r", "x"), b"value one", doc)
    assert cache.take(("r", "x"), b"value one") is doc
    assert cache.take(("r", "x"), b"value one") is None  # taken: the batch owns it now
    assert (cache.hits, cache.misses) == (1, 2)


def test_the_least_recently_kept_documents_go_first_when_what_they_weigh_outgrows_the_bound() -> None:
    """A document weighs by its count of changes (what Automerge takes in
    memory), not by its stored bytes."""
    one = weight(RecordDoc.new(b"\x01" * 16))
    cache = DocumentCache(max_bytes=4 * one + 100)
    for n in range(6):
        cache.keep(("r", str(n)), bytes([n]), RecordDoc.new(b"\x01" * 16))
    assert len(cache) == 4  # six over a bound of four: the first two went
    assert cache.take(("r", "1"), bytes([1])) is None and cache.take(("r", "2"), bytes([2])) is not None
    long_history = RecordDoc(RecordDoc.new(b"\x01" * 16).doc, changes=10_000)
    assert weight(long_history) > 10_000 * 1_000
    cache = DocumentCache(max_bytes=weight(long_history) + one)
    cache.keep(("r", "0"), b"\x00", RecordDoc.new(b"\x01" * 16))
    cache.keep(("r", "long"), b"long", long_history)
    # The heaviest document is the one whose load costs most: kept, however
    # much of the bound it takes, and the others make room.
    assert cache.take(("r", "long"), b"long") is long_history
    cache = DocumentCache(max_bytes=weight(long_history) - 1)
    cache.keep(("r", "long"), b"long", long_history)
    assert cache.take(("r", "long"), b"long") is None  # heavier than the whole bound: never kept


# ---------------------------------------------------------------- in the engine


def test_a_record_written_again_and_again_is_parsed_from_its_bytes_at_most_once(grid: LocalRegistry,
                                                                                 tmp_path: Path) -> None:
    grid.put(REG, "cluster", {"name": "x", "slots": 0}, id="x")
    for n in range(1, 41):
        grid.update(REG, "x", patch={"slots": n})
    metrics = grid.engine.metrics
    assert metrics["docs.built_from_snapshot"] == 1  # the first update builds it from the create
    assert metrics["docs.loaded"] == 0 and metrics["docs.from_cache"] == 39
    assert grid.get(REG, "x")["fields"]["slots"] == 40
    # What the cache held is what the changes say: a replica fed them shows
    # the same record, and the store verifies.
    replica = LocalRegistry.open_path(tmp_path / "replica", KeyPair(b"\x52" * 32))
    try:
        replica.execute([Remote(w, "peer") for w in wires_in_feed_order(grid)])
        assert replica.get(REG, "x")["fields"] == grid.get(REG, "x")["fields"]
    finally:
        replica.close()
    assert grid.verify().ok


def test_a_record_whose_document_takes_most_of_the_bound_stays_in_memory_while_it_is_written(
        grid: LocalRegistry) -> None:
    """The heaviest document is the one whose load costs most: a record with
    a long history stays cached (once, a document over a quarter of the
    bound was dropped at every commit, and each write of a record updated
    14,000 times loaded ~90 ms of history)."""
    grid.put(REG, "cluster", {"name": "x", "slots": 0}, id="x")
    grid.update(REG, "x", patch={"slots": 1})
    grid.engine._doc_cache = DocumentCache(max_bytes=weight(RecordDoc(RecordDoc.new(b"\x01" * 16).doc, 40)) + 4096)
    for n in range(2, 31):
        grid.update(REG, "x", patch={"slots": n})
    assert grid.engine.metrics["docs.loaded"] == 1  # the cache was new: one load, then memory
    assert grid.engine.metrics["docs.from_cache"] == 28


def test_a_stored_document_changed_behind_the_cache_is_loaded_from_the_store_again(grid: LocalRegistry) -> None:
    """Another writer of the store (a rebuild, an erasure, another process)
    changes the bytes: the next write misses the cache and builds on what
    is stored."""
    grid.put(REG, "cluster", {"name": "x", "slots": 0}, id="x")
    grid.update(REG, "x", patch={"slots": 1})
    older = stored_doc(grid, "x")
    grid.update(REG, "x", patch={"slots": 2})  # cached under the newer bytes
    with grid.store.write() as txn:
        records.put_document(grid.store, txn, REG, "x", older)  # behind the engine's back
    loaded = grid.engine.metrics["docs.loaded"]
    grid.update(REG, "x", patch={"slots": 3})
    assert grid.engine.metrics["docs.loaded"] == loaded + 1
    assert RecordDoc.load(stored_doc(grid, "x")[4:]).materialize()["fields"]["slots"] == 3


def test_a_batch_that_fills_the_map_leaves_no_edit_it_made_in_memory(tmp_path: Path) -> None:
    """x's update edits the cached document, then the batch fills the map
    and aborts; it runs again once the map grows. Had the edit stayed in
    memory, the second attempt would find nothing to change ("unchanged")
    and the update would be lost."""
    store = Store(tmp_path, map_size=2**20)
    engine = Engine(store, KeyPair.generate())
    try:
        engine.execute([Put(REG, "cluster", {"name": "x", "slots": 0}, "x")])
        engine.execute([Update(REG, "x", patch={"slots": 1})])  # x's document is cached now
        # Random text: compressed values must still fill the 1 MiB map.
        filler = [Put(REG, "cluster", {"name": f"c{i}", "blob": os.urandom(2000).hex()}, f"c{i}")
                  for i in range(300)]
        outcomes = engine.execute([Update(REG, "x", patch={"slots": 2}), *filler])
        assert engine.metrics["store.map_grown"] >= 1
        assert isinstance(outcomes[0], WriteResult) and outcomes[0].status == "updated"
    finally:
        store.close()
    grid = LocalRegistry.open_path(tmp_path)
    try:
        assert grid.get(REG, "x")["fields"]["slots"] == 2
        assert RecordDoc.load(stored_doc(grid, "x")[4:]).materialize()["fields"]["slots"] == 2
        assert grid.verify().ok
    finally:
        grid.close()


def test_documents_of_many_records_in_one_batch_are_kept_for_the_next(grid: LocalRegistry) -> None:
    grid.put_many([Put(REG, "cluster", {"name": f"c{n}", "slots": 0}, record_id=f"c{n}") for n in range(20)])
    grid.execute([Update(REG, f"c{n}", patch={"slots": 1}) for n in range(20)])
    grid.execute([Update(REG, f"c{n}", patch={"slots": 2}) for n in range(20)])
    assert grid.engine.metrics["docs.from_cache"] == 20 and grid.engine.metrics["docs.loaded"] == 0
    assert {r["fields"]["slots"] for r in grid.iter_all(REG)} == {2}


def test_a_remote_update_that_waits_after_joining_the_document_leaves_it_as_stored(tmp_path: Path) -> None:
    """A remote change goes into its record's document in place before it
    is judged. a2's update waits at c for a2's delegation: c's document
    must not keep it, so a1's later update applies on the document as
    stored, and c shows a1's value until a2's delegation comes."""
    from registrygrid.identity.delegation import sign_delegation
    from registrygrid.protocol.envelope import open_envelope

    org = KeyPair(b"\x53" * 32)

    def node(name: str, seed: bytes) -> LocalRegistry:
        key = KeyPair(seed * 32)
        return LocalRegistry.open_path(tmp_path / name, key, delegation=sign_delegation(org, key.did, ["node", "writer"]))

    a1, a2, c = node("a1", b"\x54"), node("a2", b"\x55"), node("c", b"\x56")
    try:
        a1.put(REG, "cluster", {"name": "x", "slots": 0, "region": "eu"}, id="x")
        a1.update(REG, "x", patch={"slots": 1})
        c.execute([Remote(w, "a1") for w in wires_in_feed_order(a1)])
        c.execute([Remote(w, "a1") for w in wires_in_feed_order(a1)])  # x's document is in c's cache now
        a2.execute([Remote(w, "a1") for w in wires_in_feed_order(a1)])
        a2.update(REG, "x", patch={"region": "us"})
        a2_did = a2.engine.key.did
        of_a2 = [w for w in wires_in_feed_order(a2) if open_envelope(w).body.author == a2_did]
        delegation = [w for w in of_a2 if open_envelope(w).body.registry == "grid.members"]
        update = [w for w in of_a2 if w not in delegation]
        assert [r.status for r in c.execute([Remote(w, "a2") for w in update])] == ["pending"]
        a1.update(REG, "x", patch={"slots": 2})
        c.execute([Remote(w, "a1") for w in wires_in_feed_order(a1)])
        assert c.get(REG, "x")["fields"] == {"name": "x", "slots": 2, "region": "eu"}  # a2's edit waits
        c.execute([Remote(w, "a2") for w in delegation])
        a1.execute([Remote(w, "a2") for w in of_a2])
        assert c.get(REG, "x")["fields"] == a1.get(REG, "x")["fields"] == {"name": "x", "slots": 2, "region": "us"}
        assert c.verify().ok
    finally:
        for grid in (a1, a2, c):
            grid.close()

