"""A create is a signed snapshot; the record's Automerge document is a pure
function of it, built at the record's first update, the same on every node."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrygrid.crdt.record import RecordDoc
from registrygrid.crdt.snapshot import check_value, encode_snapshot, genesis_change, read_snapshot
from registrygrid.engine.ops import Remote
from registrygrid.errors import MalformedInput, ValidationError
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol import limits
from registrygrid.protocol.envelope import open_envelope
from registrygrid.schemas import catalog
from registrygrid.schemas.catalog import rust_reads_as_python
from registrygrid.sdk import LocalRegistry
from registrygrid.storage.store import key

KEY = KeyPair(bytes(range(32)))
GOLDEN_FIELDS = {"name": "eu-1", "region": "eu-west", "gpus": {"count": 8, "memory": 81920}, "price": 0.5,
                 "tags": ["a", None, True]}
GOLDEN_LINKS = [{"rel": "runs-on", "registry": "grid.clusters", "record": "x"}]


def _snapshot(**overrides: Any) -> bytes:
    args: dict[str, Any] = {"kind": "cluster", "schema": 1, "owner": KEY.did, "created_at": 1_764_547_200_000,
                            "created_by": KEY.did, "fields": GOLDEN_FIELDS, "tags": ["eu", "gpu"],
                            "links": GOLDEN_LINKS}
    args.update(overrides)
    return encode_snapshot(**args)


def test_the_genesis_change_of_a_fixed_snapshot_has_a_pinned_hash() -> None:
    # Golden value: every node must build the same genesis change from the
    # same snapshot, or updates (whose deps name it) would never apply across
    # versions. If an automerge upgrade changes this hash, do not update the
    # pin: the upgrade would split the network (see crdt/snapshot.py).
    state = read_snapshot(_snapshot(), kind="cluster", schema=1)
    genesis = genesis_change(state, KEY.did)
    assert genesis.hash.hex() == "ba8b12e60c7eca7097f919b23f0f87f1fb65cdb191f4d4c582072c6fbbf42ee7"
    assert genesis.actor_id == KEY.public_key


def test_the_genesis_does_not_depend_on_the_order_fields_were_given_in() -> None:
    shuffled = dict(reversed(list(GOLDEN_FIELDS.items())))
    a = genesis_change(read_snapshot(_snapshot(), kind="cluster", schema=1), KEY.did)
    b = genesis_change(read_snapshot(_snapshot(fields=shuffled), kind="cluster", schema=1), KEY.did)
    assert _snapshot() == _snapshot(fields=shuffled)  # canonical: keys sorted
    assert a.raw_bytes == b.raw_bytes


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=6))
def test_a_snapshots_state_is_what_its_genesis_document_materializes(fields: dict[str, Any]) -> None:
    state = read_snapshot(_snapshot(fields=fields), kind="cluster", schema=1)
    doc = RecordDoc.apply(None, genesis_change(state, KEY.did).raw_bytes)
    assert doc.materialize() == state


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xc1", "does not decode"),
        (msgspec.msgpack.encode({"kind": "cluster"}), "exactly"),
        (msgspec.msgpack.encode({**msgspec.msgpack.decode(_snapshot()), "tags": ["gpu", "eu"]}), "sorted"),
        (msgspec.msgpack.encode({**msgspec.msgpack.decode(_snapshot()), "schema": 2}, order="sorted"), "schema"),
        (msgspec.msgpack.encode({**msgspec.msgpack.decode(_snapshot()), "fields": {"": 1}}, order="sorted"),
         "non-empty"),
        (msgspec.msgpack.encode({**msgspec.msgpack.decode(_snapshot()), "fields": {"b": b"bytes"}},
                                order="sorted"), "unsupported"),
        (msgspec.msgpack.encode(dict(reversed(list(msgspec.msgpack.decode(_snapshot()).items())))), "canonical"),
        (_snapshot(tags=["bad\x00tag"]), "tags or links"),
        (_snapshot(tags=[f"t{i:03}" for i in range(65)]), "tags or links"),
        (_snapshot(links=[{"rel": "x", "registry": "Not A Registry", "record": "r"}]), "tags or links"),
        (_snapshot(created_at=2**63), "int64"),
    ],
)
def test_a_malformed_snapshot_is_refused_with_the_reason(payload: bytes, why: str) -> None:
    with pytest.raises(MalformedInput, match=why):
        read_snapshot(payload, kind="cluster", schema=1)


@pytest.mark.parametrize("value", [float("nan"), 2**64, {1: "x"}, {"": 1}, object()])
def test_values_automerge_cannot_hold_exactly_are_refused(value: Any) -> None:
    with pytest.raises(ValidationError):
        check_value({"v": value})


def _nested(levels: int, leaf: Any = None) -> Any:
    """A list nested ``levels`` deep below its holder: the innermost holds
    ``leaf``, or nothing."""
    value: Any = [] if leaf is None else [leaf]
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize("value", [
    {}, {"a": [1, 2.5, "s", True, None, {"b": []}]}, {"n": 2**53}, {"n": -(2**53)},
    {"deep": _nested(limits.MAX_NESTING)},
])
def test_plain_json_is_reported_plain_and_agrees_with_the_schema_engines_own_walk(value: Any) -> None:
    assert check_value(value) is True
    assert rust_reads_as_python(value)


@pytest.mark.parametrize("value", [
    {"n": 2**53 + 1}, {"n": -(2**53) - 1}, {"t": (1, 2)}, {"m": types.MappingProxyType({"k": 1})},
    types.MappingProxyType({"k": 1}),
])
def test_values_a_schema_engine_may_read_otherwise_are_stored_but_not_reported_plain(value: Any) -> None:
    """A tuple, a Mapping that is not a dict, an integer a float cannot hold
    exactly: valid record values, which validation walks itself."""
    assert check_value(value) is False
    assert not rust_reads_as_python(value)


def test_nesting_is_refused_exactly_where_it_always_was() -> None:
    check_value({"deep": _nested(limits.MAX_NESTING - 1, leaf=1)})
    check_value({"deep": _nested(limits.MAX_NESTING)})  # an empty container at the last level
    with pytest.raises(ValidationError, match="nested deeper"):
        check_value({"deep": _nested(limits.MAX_NESTING, leaf=1)})
    with pytest.raises(ValidationError, match="nested deeper"):
        check_value({"deep": _nested(limits.MAX_NESTING + 1)})


def test_the_exact_integer_bound_is_the_schema_engines() -> None:
    assert limits.EXACT_FLOAT_INT == catalog._RUST_EXACT_INT


def test_a_create_stores_no_document_until_the_first_update_builds_it(tmp_path: Path) -> None:
    grid = LocalRegistry.open_path(tmp_path)
    try:
        created = grid.put("grid.clusters", "cluster", {"name": "a", "region": "eu"}, id="a")
        with grid.store.read() as txn:
            assert txn.get(key("grid.clusters", "a"), db=grid.store.db["docs"]) is None
        env = open_envelope(grid.change(bytes(_cid(created.change_id))))  # type: ignore[arg-type]
        assert env.body.is_snapshot and env.body.deps == []
        grid.update("grid.clusters", "a", patch={"region": "us"})
        with grid.store.read() as txn:
            assert txn.get(key("grid.clusters", "a"), db=grid.store.db["docs"]) is not None
        assert grid.get("grid.clusters", "a")["fields"] == {"name": "a", "region": "us"}
        assert grid.verify().ok
    finally:
        grid.close()


def test_an_update_replicates_onto_a_record_another_node_holds_only_as_a_snapshot(tmp_path: Path) -> None:
    a = LocalRegistry.open_path(tmp_path / "a")
    b = LocalRegistry.open_path(tmp_path / "b")
    try:
        a.put("grid.clusters", "cluster", {"name": "a", "region": "eu"}, id="a")
        a.update("grid.clusters", "a", patch={"region": "us"})
        wires = a.engine.envelopes_after("grid.clusters", a.engine.key.did, 0)
        assert [r.status for r in b.execute([Remote(wires[0], "a")])] == ["applied"]
        assert [r.status for r in b.execute([Remote(wires[1], "a")])] == ["applied"]
        assert b.get("grid.clusters", "a")["fields"] == a.get("grid.clusters", "a")["fields"]
        assert b.state_digest() == a.state_digest()
        assert b.verify().ok
    finally:
        a.close()
        b.close()


def _cid(text: str) -> bytes:
    from registrygrid.protocol.envelope import cid_from_str

    return cid_from_str(text)


def _signed_by_a_node_without_the_nesting_limit(grid: LocalRegistry, monkeypatch: pytest.MonkeyPatch,
                                                write: Any) -> list[bytes]:
    """The wires of what ``write`` makes on ``grid`` with the nesting limit
    lifted: a hostile member's node, built without it, signs what it likes."""
    import sys

    from registrygrid.crdt import record as record_module

    head = grid.feed_head()
    limit = sys.getrecursionlimit()
    with monkeypatch.context() as lifted:
        lifted.setattr(limits, "MAX_NESTING", 10**6)
        lifted.setattr(record_module, "MAX_OBJECT_DEPTH", 10**6, raising=False)
        sys.setrecursionlimit(20_000)
        try:
            write()
        finally:
            sys.setrecursionlimit(limit)
    return [grid.change(_cid(e.change)) for e in grid.changes(head)]


@pytest.mark.parametrize("op", ["create", "update"])
@pytest.mark.parametrize("depth", [limits.MAX_NESTING, 3_000])
def test_a_signed_change_nested_past_the_limit_is_rejected_and_the_rest_of_its_batch_applies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str, depth: int) -> None:
    """Nesting is held on every path a record can take: a remote create's
    snapshot and a remote update's ops, as a local write's fields. Before,
    an update's nesting was not checked at all, and a change nested
    thousands deep (a snapshot, or an update's flat list of ops that makes
    objects that deep) raised RecursionError out of the whole batch: the
    good changes beside it were lost and every batch holding it failed."""
    hostile, other, node = (LocalRegistry.open_path(tmp_path / n) for n in ("hostile", "other", "node"))
    try:
        hostile.put("grid.clusters", "cluster", {"name": "r"}, id="r")
        node.execute([Remote(hostile.change(_cid(e.change)), "hostile") for e in hostile.changes(0)])
        deep: Any = "x"  # a value ``depth`` maps below the field: one more level than a record may hold
        for _ in range(depth):
            deep = {"k": deep}
        if op == "create":
            write = lambda: hostile.put("grid.clusters", "cluster", {"name": "d", "labels": deep}, id="d")  # noqa: E731
        else:
            write = lambda: hostile.update("grid.clusters", "r", patch={"labels": deep})  # noqa: E731
        wires = _signed_by_a_node_without_the_nesting_limit(hostile, monkeypatch, write)
        good = other.put("grid.clusters", "cluster", {"name": "good"}, id="good")
        batch = [Remote(w, "hostile") for w in wires] + [Remote(other.change(_cid(good.change_id)), "other")]
        results = node.execute(batch)
        assert results[0].status == "rejected" and "nested deeper than 32 levels" in str(results[0].error)
        assert results[-1].status == "applied"
        assert node.get("grid.clusters", "r")["fields"] == {"name": "r"}
        assert node.get("grid.clusters", "good")["fields"] == {"name": "good"}
        assert node.verify().ok
    finally:
        for grid in (hostile, other, node):
            grid.close()


def _a_record_a_node_took_from_a_hostile_member(tmp_path: Path) -> tuple[LocalRegistry, LocalRegistry, int]:
    """grid.clusters/r as the hostile member made it (created, then named
    "r1"), taken by the node; and the member's feed head: its next changes
    come after it."""
    hostile, node = LocalRegistry.open_path(tmp_path / "hostile"), LocalRegistry.open_path(tmp_path / "node")
    hostile.put("grid.clusters", "cluster", {"name": "r"}, id="r")
    hostile.update("grid.clusters", "r", patch={"name": "r1"})
    node.execute([Remote(hostile.change(_cid(e.change)), "hostile") for e in hostile.changes(0)])
    return hostile, node, hostile.feed_head()


@pytest.mark.parametrize("key, value, why", [
    ("deleted", True, "only a delete deletes"),
    ("deleted", "yes", "only a delete deletes"),
    ("stash", "x" * 10_000, "adds ['stash'] to the record's document"),
])
def test_an_update_that_deletes_or_writes_what_no_local_write_makes_is_rejected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: Any, why: str) -> None:
    """Only a delete deletes, and a document holds a record's keys only.
    Before, a hostile member's "update" that also wrote ``deleted`` was
    applied: as true it deleted the record under the update's access rules
    (a policy that refuses its signer deletes let it through), and as "yes"
    the record was stored deleted while its document held "yes", so `rgrid
    verify` failed on every node that took it; a key beside the record's
    stored bytes outside the size cap's count."""
    from automerge.core import ROOT, ScalarType

    from registrygrid.crdt import record as record_module

    hostile, node, head = _a_record_a_node_took_from_a_hostile_member(tmp_path)
    try:
        honest_sync = record_module._sync_map

        def sync_and_delete(tx: Any, obj: bytes, wanted: Any, depth: int, *args: Any) -> None:
            honest_sync(tx, obj, wanted, depth, *args)
            if depth == 1:  # the fields map: once per update
                tx.put(ROOT, key, ScalarType.Boolean if value is True else ScalarType.Str, value)

        with monkeypatch.context() as hostile_build:
            hostile_build.setattr(record_module, "_sync_map", sync_and_delete)
            hostile.update("grid.clusters", "r", patch={"name": "r2"})
        wires = [hostile.change(_cid(e.change)) for e in hostile.changes(head)]
        assert open_envelope(wires[0]).body.op == "update"
        result = node.execute([Remote(w, "hostile") for w in wires])[0]
        assert result.status == "rejected" and why in str(result.error)
        assert node.get("grid.clusters", "r")["fields"] == {"name": "r1"}
        assert node.verify().ok
    finally:
        hostile.close()
        node.close()


def test_a_delete_that_also_edits_the_record_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete changes nothing but the deleted flag, as every local delete.
    Before, a hostile member's delete that also rewrote a field was applied,
    unjudged as an update of that field and beyond any size cap, and its
    edit showed wherever update-wins shows the record live again."""
    from automerge.core import ROOT, ObjType, ScalarType

    from registrygrid.crdt import record as record_module

    hostile, node, head = _a_record_a_node_took_from_a_hostile_member(tmp_path)
    try:
        honest_overwrite = record_module._overwrite_deleted

        def delete_and_edit(tx: Any, value: bool) -> None:
            honest_overwrite(tx, value)
            fields = tx.get(ROOT, "fields")
            assert fields is not None and fields[0] == ObjType.Map
            tx.put(fields[1], "name", ScalarType.Str, "edited by a delete")

        with monkeypatch.context() as hostile_build:
            hostile_build.setattr(record_module, "_overwrite_deleted", delete_and_edit)
            hostile.delete("grid.clusters", "r")
        wires = [hostile.change(_cid(e.change)) for e in hostile.changes(head)]
        assert open_envelope(wires[0]).body.op == "delete"
        result = node.execute([Remote(w, "hostile") for w in wires])[0]
        assert result.status == "rejected" and "a delete changes nothing but the deleted flag" in str(result.error)
        record = node.get("grid.clusters", "r")
        assert record["fields"] == {"name": "r1"} and not record["deleted"]
        assert node.verify().ok
    finally:
        hostile.close()
        node.close()
