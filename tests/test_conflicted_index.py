"""The index of records that show conflicts: `list(conflicted=True)` and
what a trust statement settles again read it instead of every record.

Real LMDB stores exchanging real envelopes (tests/test_conflicts.py's Pair:
nodes a and b of two orgs race on a record, c only replicates). The index
is derived data, so every test compares it with the truth: a walk of the
records for those whose ``conflicts`` is not empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registrygrid.sdk import LocalRegistry
from registrygrid.storage import records
from registrygrid.storage.store import SEP, Store
from tests.test_conflicts import NODE_C, REG, Pair, exchange

OTHER = "test.other"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    made = Pair(tmp_path, "last-writer-wins")
    yield made
    made.close()


def ids(grid: LocalRegistry, registry: str | None = REG, **filters: Any) -> list[tuple[str, str]]:
    return [(r["registry"], r["id"]) for r in grid.iter_all(registry, conflicted=True, **filters)]


def truth(grid: LocalRegistry, registry: str | None = REG) -> list[tuple[str, str]]:
    """The live records that show conflicts, by a walk of every record."""
    return [(r["registry"], r["id"]) for r in grid.iter_all(registry) if r["conflicts"]]


def index_entries(grid: LocalRegistry) -> list[bytes]:
    with grid.store.read() as txn:
        return [k for k, _ in grid.store.iter_prefix(txn, "indexes", b"c")]


def race_on(pair: Pair, record_id: str, registry: str = REG) -> None:
    """a and b set the region of ``record_id`` without seeing each other's write."""
    pair.a.put(registry, "cluster", {"name": record_id, "region": "eu"}, id=record_id)
    exchange(pair.a, pair.b, pair.c)
    pair.a.update(registry, record_id, patch={"region": "us"})
    pair.b.update(registry, record_id, patch={"region": "apac"})
    exchange(pair.a, pair.b, pair.c)


def test_a_record_that_comes_to_show_a_conflict_is_listed_on_every_node(pair: Pair) -> None:
    race_on(pair, "x")
    pair.a.put(REG, "cluster", {"name": "calm", "region": "eu"}, id="calm")
    exchange(pair.a, pair.b, pair.c)
    for grid in (pair.a, pair.b, pair.c):
        assert ids(grid) == truth(grid) == [(REG, "x")]


def test_a_write_that_ends_the_conflict_takes_the_record_off_the_listing(pair: Pair) -> None:
    race_on(pair, "x")
    pair.b.update(REG, "x", patch={"region": "emea"})  # has seen both writes
    exchange(pair.a, pair.b, pair.c)
    for grid in (pair.a, pair.b, pair.c):
        assert grid.get(REG, "x")["conflicts"] == []
        assert ids(grid) == truth(grid) == []
        assert index_entries(grid) == []


def test_the_listing_pages_across_registries_and_combines_with_other_filters(pair: Pair) -> None:
    pair.a.create_registry(OTHER, ["cluster"], write_policy="members")
    exchange(pair.a, pair.b, pair.c)
    for n in range(5):
        race_on(pair, f"r{n}")
    race_on(pair, "o1", OTHER)
    for n in range(3):
        pair.a.put(REG, "cluster", {"name": f"calm{n}"}, id=f"calm{n}")
    exchange(pair.a, pair.b, pair.c)
    grid = pair.c
    assert ids(grid) == truth(grid) == [(REG, f"r{n}") for n in range(5)]
    assert ids(grid, OTHER) == [(OTHER, "o1")]
    everywhere = ids(grid, None)
    assert everywhere == truth(grid, None) and (OTHER, "o1") in everywhere and len(everywhere) == 6
    first = grid.list(REG, conflicted=True, limit=2)
    second = grid.list(REG, conflicted=True, limit=2, cursor=first.next_cursor)
    assert [r["id"] for r in first.items + second.items] == ["r0", "r1", "r2", "r3"]
    assert [r["id"] for r in grid.list(None, conflicted=True, limit=6).items] == ["r0", "r1", "r2", "r3", "r4", "o1"]
    assert ids(grid, kind="cluster") == truth(grid)
    assert ids(grid, where=[("region", "eq", "nowhere")]) == []


def test_a_deleted_record_that_shows_conflicts_is_listed_only_with_the_deleted(pair: Pair) -> None:
    race_on(pair, "x")
    pair.a.delete(REG, "x")
    exchange(pair.a, pair.b, pair.c)
    for grid in (pair.a, pair.b, pair.c):
        shown = grid.get(REG, "x", include_deleted=True)
        assert shown["deleted"] and shown["conflicts"]  # the race stays visible on the tombstone
        assert ids(grid) == []
        assert ids(grid, include_deleted=True) == [(REG, "x")]


def test_a_store_written_before_the_index_is_listed_by_a_walk_then_indexed_once_as_it_opens(
        pair: Pair, tmp_path: Path) -> None:
    race_on(pair, "x")
    race_on(pair, "y")
    expected = truth(pair.c)
    pair.c.close()
    # What a store of the version before the index looks like: the same
    # records, no 'c' entries, no mark.
    store = Store(tmp_path / "c")
    with store.write() as txn:
        for k in [k for k, _ in store.iter_prefix(txn, "indexes", b"c")]:
            txn.delete(k, db=store.db["indexes"])
        txn.delete(records.CONFLICTED_INDEX.encode(), db=store.db["meta"])
    with store.read() as txn:  # not indexed yet: a reader walks the records
        walked = [(r["registry"], r["id"]) for r in records.iter_records(store, txn, conflicted=True)]
    store.close()
    assert walked == expected
    pair.c = LocalRegistry.open_path(tmp_path / "c", NODE_C)
    assert pair.c.engine.metrics["store.conflicted_indexed"] == 2
    assert index_entries(pair.c) == [b"c" + REG.encode() + SEP + name for name in (b"x", b"y")]
    assert ids(pair.c) == expected
    pair.c.close()
    pair.c = LocalRegistry.open_path(tmp_path / "c", NODE_C)  # built once: the next open only reads the mark
    assert pair.c.engine.metrics["store.conflicted_indexed"] == 0
    assert ids(pair.c) == expected
