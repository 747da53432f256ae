"""The record's shape has one definition (registrygrid/record.py): what the
engine stores is exactly what a Record encodes to, its digest content is
``replicated_content``, and the bridge documents it with the generated schema."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from registrygrid.engine import engine
from registrygrid.engine.ops import Remote
from registrygrid.node.bridge.openapi import build_spec, schema_validator
from registrygrid.protocol.envelope import cid_from_str
from registrygrid.record import (
    REPLICATED_FIELDS,
    Link,
    Record,
    record_json_schema,
    replicated_content,
)
from registrygrid.sdk import LocalRegistry
from registrygrid.storage import records

CLUSTERS = "grid.clusters"
LINK = {"rel": "runs-on", "registry": CLUSTERS, "record": "b"}
FIELD_NAMES = Record.__struct_fields__


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[LocalRegistry]:
    registry = LocalRegistry.open_path(tmp_path / "store")
    yield registry
    registry.close()


def stored_bytes(grid: LocalRegistry, registry: str, record_id: str) -> bytes:
    with grid.store.read() as txn:
        raw = txn.get(records.record_key(registry, record_id), db=grid.store.db["records"])
    assert raw is not None
    return bytes(raw)


def records_in_every_state(grid: LocalRegistry) -> list[dict[str, Any]]:
    """A fresh create (a snapshot), an updated record (an Automerge
    document, revision 3) and a tombstone, each with tags and a link."""
    grid.put(CLUSTERS, "cluster", {"name": "a", "region": "us"}, id="a", tags=["gpu", "eu"], links=[LINK])
    grid.put(CLUSTERS, "cluster", {"name": "b"}, id="b", tags=["cpu"], links=[LINK])
    grid.update(CLUSTERS, "b", patch={"region": "eu"})
    grid.update(CLUSTERS, "b", tags=["cpu", "big"], links=[LINK, {**LINK, "rel": "backup"}])
    grid.put(CLUSTERS, "cluster", {"name": "c"}, id="c", tags=["old"], links=[LINK])
    grid.delete(CLUSTERS, "c")
    out = [grid.get(CLUSTERS, rid, include_deleted=True) for rid in ("a", "b", "c")]
    assert [(r["revision"], r["deleted"]) for r in out] == [(1, False), (3, False), (2, True)]
    return out


def test_a_record_the_engine_stores_reads_back_as_a_Record(grid: LocalRegistry) -> None:
    # Stored as a compact row (storage/records.py), read back as Record's dict.
    for stored in records_in_every_state(grid):
        record = msgspec.convert(stored, Record)
        assert msgspec.to_builtins(record) == stored
        row = msgspec.msgpack.decode(stored_bytes(grid, stored["registry"], stored["id"]))
        assert isinstance(row, list) and len(msgspec.msgpack.encode(row)) < len(msgspec.msgpack.encode(record))
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=Record) == record
        assert all(isinstance(link, Link) for link in record.links)


def test_a_record_replicated_from_a_peer_has_the_same_shape(grid: LocalRegistry, tmp_path: Path) -> None:
    originals = records_in_every_state(grid)
    replica = LocalRegistry.open_path(tmp_path / "replica")
    try:
        wires = [grid.change(cid_from_str(event.change)) for event in grid.changes(0, limit=10_000)]
        assert all(r.status == "applied" for r in replica.execute([Remote(w, "p") for w in wires if w]))
        for original in originals:
            copy = replica.get(CLUSTERS, original["id"], include_deleted=True)
            assert msgspec.to_builtins(msgspec.convert(copy, Record)) == copy
            assert replicated_content(copy) == replicated_content(original)
    finally:
        replica.close()


def test_every_key_the_engine_stores_is_a_Record_field_in_the_same_order(grid: LocalRegistry) -> None:
    for stored in records_in_every_state(grid):
        assert tuple(stored) == FIELD_NAMES
    # A key the Struct does not know is refused, not dropped.
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({**stored, "extra": 1}, Record)


def test_replicated_content_is_what_the_engine_digests(grid: LocalRegistry) -> None:
    for stored in records_in_every_state(grid):
        assert hashlib.sha256(engine.canonical(replicated_content(stored))).hexdigest() \
            == engine.record_digest(stored)
        as_tuple = {**stored, "updated_hlc": tuple(stored["updated_hlc"])}  # as fresh from an envelope
        assert replicated_content(as_tuple) == replicated_content(stored)


def test_a_record_digest_is_pinned_so_swapping_the_engine_to_replicated_content_changes_none() -> None:
    # Audit entries on disk hold these digests (before/after): a change of
    # REPLICATED_FIELDS' order or of replicated_content would break them.
    # The hex was taken from engine.record_digest before the engine used
    # registrygrid/record.py.
    record = {"registry": CLUSTERS, "id": "a", "kind": "cluster", "schema": 1, "owner": "did:key:z6Mkowner",
              "tags": ["eu", "gpu"], "links": [LINK], "fields": {"name": "a", "n": 1}, "deleted": False,
              "created_at": 1_764_000_000_000, "created_by": "did:key:z6Mkauthor", "updated_at": 1_764_000_000_000,
              "updated_hlc": [1_764_000_000_000, 0], "updated_by": "did:key:z6Mkauthor",
              "change_id": "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", "revision": 1,
              "conflicts": []}
    assert tuple(record) == FIELD_NAMES
    golden = "67fffbb2f406d021c4bb246a3653065aa79657741603da2df8077021f18371b9"
    assert hashlib.sha256(engine.canonical(replicated_content(record))).hexdigest() == golden
    assert engine.record_digest(record) == golden


def test_every_record_field_is_replicated_but_updated_at_and_the_conflicts_that_explain_the_fields() -> None:
    # updated_at repeats the clock; conflicts explain values the fields
    # already hold (and digests on disk predate them).
    assert set(REPLICATED_FIELDS) <= set(FIELD_NAMES)
    assert set(FIELD_NAMES) - set(REPLICATED_FIELDS) == {"updated_at", "conflicts"}
    assert [f for f in FIELD_NAMES if f in REPLICATED_FIELDS] == list(REPLICATED_FIELDS)


@pytest.mark.parametrize(("change", "path"), [
    ({"revision": 0}, "$.revision"),
    ({"updated_hlc": [1, 2, 3]}, "$.updated_hlc"),
    ({"updated_hlc": [-1, 0]}, "$.updated_hlc[0]"),
    ({"change_id": "not-a-cid"}, "$.change_id"),
    ({"registry": "Bad Name"}, "$.registry"),
    ({"links": [{"rel": "x", "registry": CLUSTERS}]}, "$.links[0]"),
    ({"schema": 0}, "$.schema"),
    ({"created_at": None, "created_by": None}, None),  # a create of unknown origin is allowed
])
def test_converting_to_a_Record_checks_its_constraints(grid: LocalRegistry, change: dict[str, Any],
                                                       path: str | None) -> None:
    grid.put(CLUSTERS, "cluster", {"name": "a"}, id="a")
    stored = {**grid.get(CLUSTERS, "a"), **change}
    if path is None:
        msgspec.convert(stored, Record)
        return
    with pytest.raises(msgspec.ValidationError, match=r"at `\$") as err:
        msgspec.convert(stored, Record)
    assert f"`{path}`" in str(err.value)


def test_the_bridge_documents_the_generated_record_schema(grid: LocalRegistry) -> None:
    components = build_spec()["components"]["schemas"]
    generated = record_json_schema()
    assert components["Record"] == generated["Record"] and components["Link"] == generated["Link"]
    assert components["Record"]["required"] == list(FIELD_NAMES)
    assert components["Record"]["additionalProperties"] is False
    assert components["Link"]["required"] == ["rel", "registry", "record"]
    validator = schema_validator("Record")
    for stored in records_in_every_state(grid):
        assert not list(validator.iter_errors(stored))
        assert not validator.is_valid({**stored, "extra": 1})
        for name in FIELD_NAMES:
            assert not validator.is_valid({k: v for k, v in stored.items() if k != name}), name
