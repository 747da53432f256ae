"""The write path: every local and remote change goes through ``Engine.execute``.

Real LMDB in temporary directories; replication is exercised by moving
envelope bytes from one store to another, exactly what gossip and sync do.
"""

from __future__ import annotations

import dataclasses
import gc
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from registrygrid.crdt.record import RecordDoc
from registrygrid.crdt.snapshot import encode_snapshot, genesis_change, read_snapshot
from registrygrid.engine.engine import cyclic_gc_paused
from registrygrid.engine.ops import Delete, IngestResult, Put, Remote, Update, WriteResult
from registrygrid.errors import (
    AlreadyExists,
    Conflict,
    Equivocation,
    KindNotFound,
    NotFound,
    PolicyDenied,
    RegistryError,
    SchemaViolation,
    SignatureInvalid,
    TooLarge,
    UnknownKind,
    UnknownRegistry,
    ValidationError,
)
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol import limits
from registrygrid.protocol.envelope import cid_from_str, cid_to_str, open_envelope, seal
from registrygrid.protocol.hlc import Hlc
from registrygrid.sdk import LocalRegistry
from registrygrid.storage.feed import MAX_SEQ
from registrygrid.trust.statements import DELEGATION_KIND, MEMBERS_REGISTRY, delegation_record
from tests.doc_checks import assert_documents_in_memory_are_as_stored

CLUSTERS = "grid.clusters"


def cluster(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, **extra}


def entries(grid: LocalRegistry, db: str) -> int:
    with grid.store.read() as txn:
        return txn.stat(grid.store.db[db])["entries"]


def snapshot(grid: LocalRegistry) -> tuple[str, int, int, int]:
    """What a refused operation must leave exactly as it was."""
    return (grid.state_digest(), grid.feed_head(), entries(grid, "changes"), entries(grid, "records"))


def audit_entries(grid: LocalRegistry) -> list[Any]:
    return grid.audit_log(limit=10_000)


def assert_refused(grid: LocalRegistry, call: Callable[[], Any], error: type[RegistryError]) -> RegistryError:
    """``call`` raises ``error``, changes nothing, and leaves one ``deny`` audit entry naming why."""
    before = snapshot(grid)
    audit_before = audit_entries(grid)
    with pytest.raises(error) as caught:
        call()
    assert snapshot(grid) == before
    added = audit_entries(grid)[len(audit_before):]
    assert [e.action for e in added] == ["deny"]
    assert added[0].reason.startswith(caught.value.code + ":")
    assert grid.verify().ok
    grid.audit_verify()
    return caught.value


def wires_in_feed_order(grid: LocalRegistry) -> list[bytes]:
    out = []
    for feed_event in grid.changes(0, limit=10_000):
        wire = grid.change(cid_from_str(feed_event.change))
        assert wire is not None
        out.append(wire)
    return out


def all_records(grid: LocalRegistry) -> list[dict[str, Any]]:
    return list(grid.iter_all(include_deleted=True))


def open_store(path: Path, key: KeyPair | None = None) -> LocalRegistry:
    return LocalRegistry.open_path(path, key)


ORG = KeyPair(b"\x63" * 32)


def org_node(path: Path, key: KeyPair, org: KeyPair = ORG) -> LocalRegistry:
    """A store whose key is a node of ``org``, its delegation published."""
    grid = LocalRegistry.open_path(path, key, owner=org.did)
    record_id, fields = delegation_record(sign_delegation(org, key.did, ["node", "writer"]))
    grid.put(MEMBERS_REGISTRY, DELEGATION_KIND, fields, id=record_id)
    return grid


# ================================================================ put / get / update / delete


def test_put_then_get_returns_the_record_with_its_metadata(grid: LocalRegistry) -> None:
    result = grid.put(CLUSTERS, "cluster", cluster("eu-1", region="eu-west-1", gpus={"count": 8}),
                      id="eu-1", tags=["gpu", "eu"])
    assert result.status == "created"
    assert result.feed_seq == 1
    record = grid.get(CLUSTERS, "eu-1")
    assert record["fields"] == {"name": "eu-1", "region": "eu-west-1", "gpus": {"count": 8}}
    assert record["kind"] == "cluster"
    assert record["schema"] == 1
    assert record["tags"] == ["eu", "gpu"]
    assert record["owner"] == grid.engine.key.did
    assert record["created_by"] == grid.engine.key.did
    assert record["change_id"] == result.change_id
    assert record["deleted"] is False
    assert record["revision"] == 1


def test_put_without_an_id_generates_a_sortable_unique_id(grid: LocalRegistry) -> None:
    ids = [grid.put(CLUSTERS, "cluster", cluster(f"c{i}")).record_id for i in range(5)]
    assert len(set(ids)) == 5
    assert all(len(i) == 26 for i in ids)
    assert [r["id"] for r in grid.list(CLUSTERS).items] == sorted(ids)


def test_update_with_a_patch_merges_fields_and_null_removes_one(grid: LocalRegistry) -> None:
    grid.put(CLUSTERS, "cluster", cluster("a", region="eu", gpus={"count": 2, "model": "A100"}), id="a")
    result = grid.update(CLUSTERS, "a", patch={"gpus": {"count": 4}, "region": None, "scheduler": "slurm"})
    assert result.status == "updated"
    assert grid.get(CLUSTERS, "a")["fields"] == {
        "name": "a", "gpus": {"count": 4, "model": "A100"}, "scheduler": "slurm"}


def test_update_with_fields_replaces_all_fields(grid: LocalRegistry) -> None:
    grid.put(CLUSTERS, "cluster", cluster("a", region="eu", gpus={"count": 2}), id="a")
    grid.update(CLUSTERS, "a", fields={"name": "a2"})
    assert grid.get(CLUSTERS, "a")["fields"] == {"name": "a2"}


def test_update_with_tags_replaces_the_tags_and_their_index(grid: LocalRegistry) -> None:
    grid.put(CLUSTERS, "cluster", cluster("a"), id="a", tags=["old", "keep"])
    grid.update(CLUSTERS, "a", tags=["keep", "new"])
    assert grid.get(CLUSTERS, "a")["tags"] == ["keep", "new"]
    assert [r["id"] for r in grid.list(tag="new").items] == ["a"]
    assert grid.list(tag="old").items == []


def test_update_that_changes_nothing_is_unchanged_and_writes_no_change(grid: LocalRegistry) -> None:
    first = grid.put(CLUSTERS, "cluster", cluster("a", region="eu"), id="a", tags=["x"])
    before = snapshot(grid)
    for kwargs in ({"patch": {"region": "eu"}}, {"fields": {"name": "a", "region": "eu"}}, {"tags": ["x"]}):
        result = grid.update(CLUSTERS, "a", **kwargs)
        assert result.status == "unchanged"
        assert result.change_id == first.change_id
        assert result.feed_seq is None
    assert snapshot(grid) == before


def test_delete_is_a_tombstone_that_keeps_history(grid: LocalRegistry) -> None:
    created = grid.put(CLUSTERS, "cluster", cluster("a"), id="a")
    updated = grid.update(CLUSTERS, "a", patch={"region": "eu"})
    deleted = grid.delete(CLUSTERS, "a")
    assert deleted.status == "deleted"
    with pytest.raises(NotFound):
        grid.get(CLUSTERS, "a")
    tombstone = grid.get(CLUSTERS, "a", include_deleted=True)
    assert tombstone["deleted"] is True
    assert tombstone["fields"] == {"name": "a", "region": "eu"}
    assert [h["op"] for h in grid.history(CLUSTERS, "a")] == ["create", "update", "delete"]
    assert [h["change_id"] for h in grid.history(CLUSTERS, "a")] == [
        created.change_id, updated.change_id, deleted.change_id]
    assert grid.list(CLUSTERS).items == []
    assert [r["id"] for r in grid.list(CLUSTERS, include_deleted=True).items] == ["a"]
    with pytest.raises(NotFound):
        grid.update(CLUSTERS, "a", patch={"region": "us"})
    with pytest.raises(NotFound):
        grid.delete(CLUSTERS, "a")


def test_a_deleted_record_can_be_created_again(grid: LocalRegistry) -> None:
    grid.put(CLUSTERS, "cluster", cluster("a", region="eu"), id="a", tags=["old"])
    grid.delete(CLUSTERS, "a")
    again = grid.put(CLUSTERS, "cluster", cluster("a-again"), id="a", tags=["new"])
    assert again.status == "created"
    record = grid.get(CLUSTERS, "a")
    assert record["deleted"] is False
    assert record["fields"] == {"name": "a-again"}
    assert record["tags"] == ["new"]
    assert record["revision"] == 3
    assert [h["op"] for h in grid.history(CLUSTERS, "a")] == ["create", "delete", "create"]
    assert grid.verify().ok


def test_a_deleted_record_keeps_its_kind(grid: LocalRegistry) -> None:
    grid.create_registry("acme.mixed", ["cluster", "tool"])
    grid.put("acme.mixed", "cluster", cluster("a"), id="a")
    grid.delete("acme.mixed", "a")
    assert_refused(grid, lambda: grid.put("acme.mixed", "tool", {"name": "t"}, id="a"), Conflict)


def test_put_of_an_existing_id_is_already_exists_and_changes_nothing(grid: LocalRegistry) -> None:
    grid.put(CLUSTERS, "cluster", cluster("a"), id="a")
    assert_refused(grid, lambda: grid.put(CLUSTERS, "cluster", cluster("b"), id="a"), AlreadyExists)
    assert grid.get(CLUSTERS, "a")["fields"] == {"name": "a"}


def test_update_with_a_stale_if_match_is_a_conflict_naming_the_current_change(grid: LocalRegistry) -> None:
    first = grid.put(CLUSTERS, "cluster", cluster("a"), id="a")
    second = grid.update(CLUSTERS, "a", patch={"region": "eu"})
    error = assert_refused(
        grid, lambda: grid.update(CLUSTERS, "a", patch={"region": "us"}, if_match=first.change_id), Conflict)
    assert error.details == {"current": second.change_id}
    assert_refused(grid, lambda: grid.delete(CLUSTERS, "a", if_match=first.change_id), Conflict)
    assert grid.update(CLUSTERS, "a", patch={"region": "us"}, if_match=second.change_id).status == "updated"


# ================================================================ refusals


def test_schema_violation_reports_every_failing_field_path(grid: LocalRegistry) -> None:
    grid.put(CLUSTERS, "cluster", cluster("ok"), id="ok")
    bad = {"name": "", "reputation": 5, "gpus": {"count": -1, "vendor": "x"},
           "nodes": [{"id": "n1"}, {"hostname": "h"}]}
    error = assert_refused(grid, lambda: grid.put(CLUSTERS, "cluster", bad, id="bad"), SchemaViolation)
    paths = {d["path"] for d in error.details}
    assert paths == {"/name", "/reputation", "/gpus/count", "/gpus", "/nodes/1"}
    assert all(d["message"] for d in error.details)


def test_schema_violation_on_update_reports_every_path_and_keeps_the_record(grid: LocalRegistry) -> None:
    grid.put(CLUSTERS, "cluster", cluster("ok"), id="ok")
    error = assert_refused(
        grid, lambda: grid.update(CLUSTERS, "ok", patch={"reputation": -1, "memory": "lots"}), SchemaViolation)
    assert {d["path"] for d in error.details} == {"/reputation", "/memory"}
    assert grid.get(CLUSTERS, "ok")["fields"] == {"name": "ok"}


def test_unknown_kind_is_refused(grid: LocalRegistry) -> None:
    grid.put(CLUSTERS, "cluster", cluster("ok"))
    assert_refused(grid, lambda: grid.put(CLUSTERS, "no-such-kind", {"name": "x"}), ValidationError)
    assert_refused(grid, lambda: grid.put(CLUSTERS, "Not A Kind", {"name": "x"}), ValidationError)


def test_unknown_schema_version_of_a_kind_is_unknown_kind(grid: LocalRegistry) -> None:
    assert_refused(grid, lambda: grid.put(CLUSTERS, "cluster", cluster("x"), schema=99), UnknownKind)


def test_kind_not_held_by_the_registry_is_refused(grid: LocalRegistry) -> None:
    error = assert_refused(
        grid, lambda: grid.put(CLUSTERS, "function", {"name": "f", "executor": {"type": "wasm"}}), ValidationError)
    assert "cluster" in error.message


def test_unknown_registry_is_refused_with_a_hint(grid: LocalRegistry) -> None:
    error = assert_refused(grid, lambda: grid.put("acme.nowhere", "cluster", cluster("x")), UnknownRegistry)
    assert "rgrid registry create" in error.message
    with pytest.raises(UnknownRegistry):
        grid.get("acme.nowhere", "x")
    with pytest.raises(UnknownRegistry):
        grid.list("acme.nowhere")


def test_record_fields_over_the_size_cap_are_too_large(grid: LocalRegistry) -> None:
    big = cluster("big", blob="x" * (limits.MAX_RECORD_BYTES + 1))
    assert_refused(grid, lambda: grid.put(CLUSTERS, "cluster", big, id="big"), TooLarge)
    grid.put(CLUSTERS, "cluster", cluster("small"), id="small")
    assert_refused(grid, lambda: grid.update(CLUSTERS, "small", patch={"blob": big["blob"]}), TooLarge)


@pytest.mark.parametrize("record_id", ["", "a/b", "-leading-dash", "with space", "x" * 129, "é"])
def test_bad_record_id_is_a_validation_error(grid: LocalRegistry, record_id: str) -> None:
    assert_refused(grid, lambda: grid.put(CLUSTERS, "cluster", cluster("x"), id=record_id), ValidationError)


@pytest.mark.parametrize("tags", [["bad tag"], [""], ["x" * 65], [f"t{i}" for i in range(limits.MAX_TAGS + 1)]])
def test_bad_tags_are_a_validation_error(grid: LocalRegistry, tags: list[str]) -> None:
    assert_refused(grid, lambda: grid.put(CLUSTERS, "cluster", cluster("x"), tags=tags), ValidationError)


def test_values_that_are_not_json_are_refused(grid: LocalRegistry) -> None:
    assert_refused(grid, lambda: grid.put(CLUSTERS, "cluster", cluster("x", when=object())), ValidationError)
    assert_refused(grid, lambda: grid.put(CLUSTERS, "cluster", cluster("x", n=2**70)), ValidationError)
    assert_refused(grid, lambda: grid.put(CLUSTERS, "cluster", cluster("x", f=float("nan"))), ValidationError)


@pytest.mark.parametrize(("extra", "path"), [
    ({"labels": {"a": [1, 2**64 + 5]}}, "/labels/a/1"),      # past what msgpack packs
    ({"labels": {"a": 2**63 + 1}}, "/labels/a"),            # packs, but no int64
    ({"labels": [0, float("nan")]}, "/labels/1"),
    ({"labels": {"a/b~": {"": 1}}}, "/labels/a~1b~0/"),     # RFC 6901: "/" is ~1, "~" is ~0
])
def test_a_value_no_record_can_hold_is_refused_naming_its_path(grid: LocalRegistry, extra: dict[str, Any],
                                                               path: str) -> None:
    # They named "/" whichever field held it; schema refusals name theirs.
    with pytest.raises(ValidationError) as refused:
        grid.put(CLUSTERS, "cluster", {**cluster("x"), **extra})
    assert [d["path"] for d in refused.value.details] == [path]
    grid.put(CLUSTERS, "cluster", cluster("y"), id="y")
    with pytest.raises(ValidationError) as refused:
        grid.update(CLUSTERS, "y", patch=extra)
    assert [d["path"] for d in refused.value.details] == [path]


def test_a_batch_commits_the_good_operations_and_answers_each_in_order(grid: LocalRegistry) -> None:
    grid.put(CLUSTERS, "cluster", cluster("existing"), id="existing")
    head = grid.feed_head()
    outcomes = grid.execute([
        Put(CLUSTERS, "cluster", cluster("one"), "one"),
        Put(CLUSTERS, "cluster", {"name": 7}, "bad"),
        Put(CLUSTERS, "cluster", cluster("two"), "two"),
        Update(CLUSTERS, "one", patch={"region": "eu"}),
        Delete(CLUSTERS, "missing"),
        Put(CLUSTERS, "cluster", cluster("dup"), "existing"),
        Delete(CLUSTERS, "two"),
    ])
    assert len(outcomes) == 7
    assert isinstance(outcomes[0], WriteResult) and outcomes[0].status == "created"
    assert isinstance(outcomes[1], SchemaViolation)
    assert isinstance(outcomes[2], WriteResult) and outcomes[2].record_id == "two"
    assert isinstance(outcomes[3], WriteResult) and outcomes[3].status == "updated"
    assert isinstance(outcomes[4], NotFound)
    assert isinstance(outcomes[5], AlreadyExists)
    assert isinstance(outcomes[6], WriteResult) and outcomes[6].status == "deleted"
    assert [o.feed_seq for o in outcomes if isinstance(o, WriteResult)] == [head + 1, head + 2, head + 3, head + 4]
    assert grid.feed_head() == head + 4
    assert grid.get(CLUSTERS, "one")["fields"] == {"name": "one", "region": "eu"}
    with pytest.raises(NotFound):
        grid.get(CLUSTERS, "bad")
    assert grid.get(CLUSTERS, "existing")["fields"] == {"name": "existing"}
    assert [e.action for e in audit_entries(grid)[-7:]] == [
        "create", "deny", "create", "update", "deny", "deny", "delete"]
    assert grid.verify().ok


def test_several_changes_to_one_record_in_one_batch_chain_correctly(grid: LocalRegistry) -> None:
    outcomes = grid.execute([
        Put(CLUSTERS, "cluster", cluster("a"), "a"),
        Update(CLUSTERS, "a", patch={"region": "eu"}),
        Update(CLUSTERS, "a", patch={"region": 5}),  # refused mid-batch
        Update(CLUSTERS, "a", patch={"scheduler": "slurm"}),
    ])
    assert isinstance(outcomes[2], SchemaViolation)
    assert grid.get(CLUSTERS, "a")["fields"] == {"name": "a", "region": "eu", "scheduler": "slurm"}
    assert grid.verify().ok
    # What was committed replicates: the refused change left nothing in the document.
    with tempfile.TemporaryDirectory() as other:
        replica = open_store(Path(other))
        try:
            results = replica.execute([Remote(w, "p") for w in wires_in_feed_order(grid)])
            assert [r.status for r in results] == ["applied"] * 3
            assert replica.state_digest() == grid.state_digest()
        finally:
            replica.close()


# ================================================================ registries and kinds


def test_a_created_registry_accepts_its_kinds_and_refuses_others(grid: LocalRegistry) -> None:
    created = grid.create_registry("acme.models", ["asset"], description="our models")
    assert created.status == "created"
    assert "acme.models" in [r["name"] for r in grid.registries()]
    put = grid.put("acme.models", "asset", {"name": "m", "uri": "s3://b/m"}, id="m")
    assert put.status == "created"
    assert grid.get("acme.models", "m")["fields"]["uri"] == "s3://b/m"
    assert grid.describe_registry("acme.models")["records"] == 1
    assert_refused(grid, lambda: grid.put("acme.models", "cluster", cluster("c")), ValidationError)


def test_a_registry_cannot_be_created_twice_or_shadow_a_builtin(grid: LocalRegistry) -> None:
    grid.create_registry("acme.models", ["asset"])
    assert_refused(grid, lambda: grid.create_registry("acme.models", ["asset"]), AlreadyExists)
    assert_refused(grid, lambda: grid.create_registry(CLUSTERS, ["cluster"]), ValidationError)
    # Nor take a name a later version's built-in may have: grid.* is theirs.
    refused = assert_refused(grid, lambda: grid.create_registry("grid.mine", ["tool"]), ValidationError)
    assert "kept for the built-in registries" in refused.message
    assert_refused(grid, lambda: grid.create_registry("acme.empty", []), ValidationError)
    assert_refused(grid, lambda: grid.create_registry("acme.odd", ["no-such-kind"]), ValidationError)


BENCH_SCHEMA = {
    "type": "object",
    "required": ["gpu", "tflops"],
    "properties": {"gpu": {"type": "string"}, "tflops": {"type": "number", "minimum": 0}},
}


def test_a_user_kind_validates_records_of_it(grid: LocalRegistry) -> None:
    grid.register_kind("gpu-bench", 1, BENCH_SCHEMA, registry="acme.bench")
    assert grid.kind("gpu-bench")["schema"] == BENCH_SCHEMA
    grid.create_registry("acme.bench", ["gpu-bench"])
    assert grid.put("acme.bench", "gpu-bench", {"gpu": "H100", "tflops": 989.5}, id="run-1").status == "created"
    error = assert_refused(grid, lambda: grid.put("acme.bench", "gpu-bench", {"gpu": 1, "tflops": -1}),
                           SchemaViolation)
    assert {d["path"] for d in error.details} == {"/gpu", "/tflops"}


def test_a_user_kind_without_a_home_registry_can_be_registered(grid: LocalRegistry) -> None:
    # kind.v1.json makes `registry` optional, and register_kind defaults it to "".
    result = grid.register_kind("gpu-bench", 1, BENCH_SCHEMA)
    assert result.status == "created"
    grid.create_registry("acme.bench", ["gpu-bench"])
    assert grid.put("acme.bench", "gpu-bench", {"gpu": "H100", "tflops": 1.0}).status == "created"


def test_an_invalid_json_schema_is_refused_as_a_kind(grid: LocalRegistry) -> None:
    assert_refused(grid, lambda: grid.register_kind("broken", 1, {"type": "nope"}, registry="acme.x"),
                   ValidationError)
    assert_refused(grid, lambda: grid.register_kind("broken", 1, {"type": "string", "pattern": "("},
                                                    registry="acme.x"), ValidationError)
    with pytest.raises(KindNotFound):  # a read of a kind the node lacks: 404 over the bridge
        grid.kind("broken")


def test_a_builtin_kind_cannot_be_redefined(grid: LocalRegistry) -> None:
    assert_refused(grid, lambda: grid.register_kind("asset", 1, {"type": "object"}, registry="grid.assets"),
                   ValidationError)


def test_a_builtin_kind_cannot_get_a_new_version_from_a_user(grid: LocalRegistry) -> None:
    # New versions of built-in kinds ship with the software; a refused
    # registration must leave no kind record behind.
    assert_refused(grid, lambda: grid.register_kind("asset", 3, {"type": "object"}, registry="grid.assets"),
                   ValidationError)
    assert grid.kind("asset")["version"] == 2


def test_a_kind_id_must_be_name_dot_version(grid: LocalRegistry) -> None:
    fields = {"name": "gpu-bench", "version": 1, "schema": BENCH_SCHEMA, "registry": "acme.bench"}
    assert_refused(grid, lambda: grid.put("grid.kinds", "kind", fields, id="gpu-bench.v2"), ValidationError)


def test_user_kinds_and_registries_survive_reopening_the_store(tmp_path: Path) -> None:
    key = KeyPair.generate()
    first = open_store(tmp_path, key)
    first.register_kind("gpu-bench", 1, BENCH_SCHEMA, registry="acme.bench")
    first.create_registry("acme.bench", ["gpu-bench"])
    first.put("acme.bench", "gpu-bench", {"gpu": "H100", "tflops": 1.0}, id="run-1")
    first.close()

    second = open_store(tmp_path, key)
    try:
        assert second.kind("gpu-bench")["schema"] == BENCH_SCHEMA
        assert second.put("acme.bench", "gpu-bench", {"gpu": "A100", "tflops": 2.0}, id="run-2").status == "created"
        assert_refused(second, lambda: second.put("acme.bench", "gpu-bench", {"gpu": "A100"}), SchemaViolation)
        assert [r["id"] for r in second.list("acme.bench").items] == ["run-1", "run-2"]
        assert second.verify().ok
        second.audit_verify()
    finally:
        second.close()


def test_updating_an_asset_to_schema_2_migrates_its_fields(grid: LocalRegistry) -> None:
    v1 = {"name": "llama", "uri": "s3://models/llama", "version": {"version": "1.4.0", "tag": "stable"},
          "public_url": "https://cdn.example.org/llama"}
    grid.put("grid.assets", "asset", v1, id="llama", schema=1)
    assert grid.get("grid.assets", "llama")["schema"] == 1
    result = grid.update("grid.assets", "llama", schema=2)
    assert result.status == "updated"
    record = grid.get("grid.assets", "llama")
    assert record["schema"] == 2
    assert record["fields"] == {"name": "llama", "uri": "s3://models/llama", "version": "1.4.0",
                                "release_tag": "stable", "urls": ["https://cdn.example.org/llama"]}
    assert open_envelope(grid.change(cid_from_str(result.change_id))).body.schema == 2
    assert grid.verify().ok


def test_a_new_asset_defaults_to_the_latest_schema(grid: LocalRegistry) -> None:
    grid.put("grid.assets", "asset", {"name": "x", "uri": "s3://b/x", "version": "1.0.0"}, id="x")
    assert grid.get("grid.assets", "x")["schema"] == 2


# ================================================================ changefeed


def test_feed_events_are_typed_and_name_registry_record_change_and_author(grid: LocalRegistry) -> None:
    a = grid.put(CLUSTERS, "cluster", cluster("a"), id="a")
    b = grid.update(CLUSTERS, "a", patch={"region": "eu"})
    c = grid.delete(CLUSTERS, "a")
    events = grid.changes(0)
    assert [(e.seq, e.type) for e in events] == [(1, "created"), (2, "updated"), (3, "deleted")]
    assert [e.change for e in events] == [a.change_id, b.change_id, c.change_id]
    for feed_event in events:
        assert feed_event.registry == CLUSTERS
        assert feed_event.record == "a"
        assert feed_event.kind == "cluster"
        assert feed_event.author == grid.engine.key.did
        assert feed_event.origin == "local"


def test_changes_since_n_resumes_exactly_after_n(grid: LocalRegistry) -> None:
    grid.put_many([Put(CLUSTERS, "cluster", cluster(f"c{i}"), f"c{i}") for i in range(10)])
    head = grid.feed_head()
    assert head == 10
    for since in range(0, head + 1):
        assert [e.seq for e in grid.changes(since)] == list(range(since + 1, head + 1))
    assert [e.seq for e in grid.changes(3, limit=4)] == [4, 5, 6, 7]
    assert grid.changes(head) == []
    assert grid.changes(MAX_SEQ) == []
    # Beyond a signed 64-bit sequence: a typed refusal (before, an
    # OverflowError packing the feed key, and a traceback in `rgrid feed tail`).
    for since in (-1, MAX_SEQ + 1, 10**20):
        with pytest.raises(ValidationError, match="since must be between 0 and"):
            grid.changes(since)
        with pytest.raises(ValidationError, match="since must be between 0 and"):
            grid.audit_log(since=since)


def test_changes_filter_by_registry_and_kind(grid: LocalRegistry) -> None:
    grid.put(CLUSTERS, "cluster", cluster("a"))
    grid.put("grid.assets", "asset", {"name": "m", "uri": "s3://b/m"})
    grid.put(CLUSTERS, "cluster", cluster("b"))
    grid.create_registry("acme.mixed", ["cluster", "tool"])
    grid.put("acme.mixed", "tool", {"name": "t"})
    grid.put("acme.mixed", "cluster", cluster("c"))
    assert [e.seq for e in grid.changes(0, registry=CLUSTERS)] == [1, 3]
    assert [e.seq for e in grid.changes(0, kind="cluster")] == [1, 3, 6]
    assert [e.seq for e in grid.changes(0, registry="acme.mixed", kind="tool")] == [5]
    assert [e.seq for e in grid.changes(1, registry=CLUSTERS, limit=1)] == [3]


def test_list_filters_and_pages_are_stable(grid: LocalRegistry) -> None:
    for i in range(7):
        grid.put(CLUSTERS, "cluster", cluster(f"c{i}", gpus={"count": i}), id=f"c{i}", tags=["even" if i % 2 == 0
                                                                                           else "odd"])
    page = grid.list(CLUSTERS, where=[("gpus.count", "ge", 4)])
    assert [r["id"] for r in page.items] == ["c4", "c5", "c6"]
    assert [r["id"] for r in grid.list(tag="odd").items] == ["c1", "c3", "c5"]
    seen, cursor = [], None
    while True:
        page = grid.list(CLUSTERS, limit=3, cursor=cursor)
        seen += [r["id"] for r in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"c{i}" for i in range(7)]


# ================================================================ replication


def test_changes_replayed_on_another_store_give_identical_records(tmp_path: Path) -> None:
    a = open_store(tmp_path / "a")
    b = open_store(tmp_path / "b")
    try:
        a.put(CLUSTERS, "cluster", cluster("x", gpus={"count": 2}), id="x", tags=["gpu"])
        a.update(CLUSTERS, "x", patch={"gpus": {"count": 4}, "region": "eu"})
        a.update(CLUSTERS, "x", tags=["gpu", "eu"])
        a.put(CLUSTERS, "cluster", cluster("y"), id="y")
        a.delete(CLUSTERS, "y")
        for record_id in ("x", "y"):
            for change in a.history(CLUSTERS, record_id):
                wire = a.change(cid_from_str(change["change_id"]))
                result = b.execute([Remote(wire, a.engine.key.peer_id)])[0]
                assert isinstance(result, IngestResult)
                assert result.status == "applied", result.error
                assert result.change_id == change["change_id"]
        assert b.get(CLUSTERS, "x") == a.get(CLUSTERS, "x")
        assert b.get(CLUSTERS, "y", include_deleted=True) == a.get(CLUSTERS, "y", include_deleted=True)
        assert b.state_digest() == a.state_digest()
        assert [e.origin for e in b.changes(0)] == [a.engine.key.peer_id] * 5
        assert b.verify().ok
        b.audit_verify()
    finally:
        a.close()
        b.close()


def test_a_duplicate_remote_change_is_reported_and_changes_nothing(tmp_path: Path) -> None:
    a = open_store(tmp_path / "a")
    b = open_store(tmp_path / "b")
    try:
        a.put(CLUSTERS, "cluster", cluster("x"), id="x")
        wire = wires_in_feed_order(a)[0]
        assert b.execute([Remote(wire, "p")])[0].status == "applied"
        before = snapshot(b)
        again = b.execute([Remote(wire, "p"), Remote(wire, "q")])
        assert [r.status for r in again] == ["duplicate", "duplicate"]
        assert snapshot(b) == before
        # Echo of a node's own change is a duplicate too.
        assert a.execute([Remote(wire, "p")])[0].status == "duplicate"
    finally:
        a.close()
        b.close()


def test_a_change_arriving_before_its_dependencies_waits_and_is_released(tmp_path: Path) -> None:
    a = open_store(tmp_path / "a")
    b = open_store(tmp_path / "b")
    try:
        a.put(CLUSTERS, "cluster", cluster("x"), id="x")
        a.update(CLUSTERS, "x", patch={"region": "eu"})
        a.update(CLUSTERS, "x", patch={"region": "us"})
        first, second, third = wires_in_feed_order(a)
        assert [r.status for r in b.execute([Remote(third, "p"), Remote(second, "p")])] == ["pending", "pending"]
        assert b.feed_head() == 0
        result = b.execute([Remote(first, "p")])[0]
        assert result.status == "applied"
        assert len(result.released) == 2
        assert b.get(CLUSTERS, "x") == a.get(CLUSTERS, "x")
        assert entries(b, "pending") == 0
        assert entries(b, "waiting") == 0
    finally:
        a.close()
        b.close()


def _author_step(n_authors: int) -> st.SearchStrategy[tuple[Any, ...]]:
    """One author's action: mostly writes (create, or update when the record
    exists), some syncs to another author, some deletes."""

    def decode(draw: tuple[int, int, int, int, int, str]) -> tuple[Any, ...]:
        action, who, other, record, value, tag = draw
        if action < 6:
            return ("write", who, f"r{record}", value, tag)
        if action < 8:
            return ("sync", who, other)
        return ("delete", who, f"r{record}")

    author = st.integers(0, n_authors - 1)
    return st.tuples(st.integers(0, 9), author, author, st.integers(0, 2), st.integers(0, 3),
                     st.sampled_from(["a", "b", "c"])).map(decode)


def _do_step(stores: list[LocalRegistry], step: tuple[Any, ...]) -> None:
    kind, who = step[0], step[1]
    grid = stores[who]
    if kind == "sync":
        target = stores[step[2]]
        if target is grid:
            return
        results = target.execute([Remote(w, f"peer{who}") for w in wires_in_feed_order(grid)])
        assert {r.status for r in results} <= {"applied", "duplicate"}, [r.error for r in results]
        return
    record_id = step[2]
    try:
        current = grid.get(CLUSTERS, record_id, include_deleted=True)
    except NotFound:
        current = None
    if kind == "delete":
        if current is not None and not current["deleted"]:
            grid.delete(CLUSTERS, record_id)
        return
    value, tag = step[3], step[4]
    if current is None or current["deleted"]:
        grid.put(CLUSTERS, "cluster", cluster(record_id, **{f"by{who}": value}), id=record_id, tags=[tag])
    elif value % 2:
        grid.update(CLUSTERS, record_id, patch={f"by{who}": value, "gpus": {"count": value}})
    else:
        grid.update(CLUSTERS, record_id, patch={"region": f"r{value}"}, tags=sorted({tag, "t"}))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), n_authors=st.integers(2, 3))
def test_any_delivery_order_of_concurrent_changes_yields_the_same_records(data: st.DataObject,
                                                                           n_authors: int) -> None:
    steps = data.draw(st.lists(_author_step(n_authors), min_size=6, max_size=14), label="steps")
    with tempfile.TemporaryDirectory() as root:
        # The authors are nodes of one org, so each may edit what another
        # created (ownership is per org); their delegations travel as
        # grid.members records among the changes.
        stores = [org_node(Path(root) / f"author{i}", KeyPair(bytes([i + 1]) * 32)) for i in range(n_authors)]
        replicas: list[LocalRegistry] = []
        try:
            for step in steps:
                _do_step(stores, step)
            everything: dict[bytes, bytes] = {}
            for grid in stores:
                for wire in wires_in_feed_order(grid):
                    everything.setdefault(open_envelope(wire).cid, wire)
            wires = list(everything.values())
            bodies = [open_envelope(w).body for w in wires]
            creates = Counter(b.record for b in bodies if b.op == "create")
            author_of = {b.change_hash: b.author for b in bodies}
            event(f"envelopes: {min(len(wires) // 5 * 5, 20)}+")
            event(f"concurrent creates of one record: {any(n > 1 for n in creates.values())}")
            event("a change depends on another author's change: "
                  f"{any(author_of.get(d, b.author) != b.author for b in bodies for d in b.deps)}")
            # One seeded Random per order: a fixed number of draws whatever
            # the count of changes (which the clock can sway), as Hypothesis
            # requires of draws that replay.
            rnds = [data.draw(st.randoms(use_true_random=True), label=f"order{i}") for i in range(2)]
            orders = [wires] + [rnd.sample(wires, len(wires)) for rnd in rnds]
            digests, contents = [], []
            for i, order in enumerate(orders):
                replica = open_store(Path(root) / f"replica{i}")
                replicas.append(replica)
                # Deliver in batches of varying size: within one transaction
                # and across transactions.
                rnd = rnds[i - 1] if i else rnds[0]
                cuts = sorted({rnd.randint(0, len(order)) for _ in range(rnd.randint(0, 4))})
                bounds = [0, *cuts, len(order)]
                for start, end in zip(bounds, bounds[1:]):
                    if start < end:
                        results = replica.execute([Remote(w, "p") for w in order[start:end]])
                        assert all(r.status != "rejected" for r in results), [r.error for r in results]
                assert entries(replica, "pending") == 0
                assert entries(replica, "waiting") == 0
                assert replica.feed_head() == len(wires)
                digests.append(replica.state_digest())
                contents.append(all_records(replica))
            assert len(set(digests)) == 1
            assert all(c == contents[0] for c in contents)
            # The authors converge too once each has every change.
            for grid in stores:
                grid.execute([Remote(w, "p") for w in wires])
                assert grid.state_digest() == digests[0]
            for grid in stores + replicas:
                assert_documents_in_memory_are_as_stored(grid)
        finally:
            for grid in stores + replicas:
                grid.close()


# ================================================================ hostile changes


def test_equivocation_is_rejected_kept_as_evidence_and_reported(tmp_path: Path) -> None:
    twin = KeyPair.generate()
    a = open_store(tmp_path / "a", twin)
    b = open_store(tmp_path / "b", twin)
    try:
        a.put(CLUSTERS, "cluster", cluster("from-a"), id="x")
        b.put(CLUSTERS, "cluster", cluster("from-b"), id="y")
        wire_a = wires_in_feed_order(a)[0]
        wire_b = wires_in_feed_order(b)[0]
        assert open_envelope(wire_a).body.seq == open_envelope(wire_b).body.seq == 1
        audit_before = len(audit_entries(b))
        result = b.execute([Remote(wire_a, "mallory")])[0]
        assert result.status == "rejected"
        assert isinstance(result.error, Equivocation)
        assert result.change_id == open_envelope(wire_a).id
        assert entries(b, "evidence") == 2
        with b.store.read() as txn:
            kept = {v for _, v in txn.cursor(db=b.store.db["evidence"])}
        assert kept == {wire_a, wire_b}
        # The change itself is not stored; the proof is filed as a report
        # (tests/test_disputes.py follows it), which quarantines the key.
        (report,) = b.list("grid.disputes").items
        assert report["kind"] == "equivocation-report"
        assert sorted(report["fields"]["changes"]) == sorted([open_envelope(wire_a).id, open_envelope(wire_b).id])
        denial = [e for e in audit_entries(b)[audit_before:] if e.action == "deny"]
        assert denial[0].reason.startswith("equivocation:")
        assert denial[0].actor == "peer:mallory"
        assert b.engine.metrics["rejected.equivocation"] == 1
        assert b.engine.metrics["equivocation.reported"] == 1
        b.audit_verify()
    finally:
        a.close()
        b.close()


def snapshot_create(author: KeyPair, record: str, fields: dict[str, Any], *, registry: str = CLUSTERS,
                    kind: str = "cluster", owner: str | None = None, hlc: Hlc = Hlc(1, 0)) -> Any:
    """A remote create as any author may craft one: a signed snapshot."""
    payload = encode_snapshot(kind=kind, schema=1, owner=owner or author.did, created_at=hlc.wall_ms,
                              created_by=author.did, fields=fields, tags=[], links=[])
    return seal(author, registry=registry, record=record, op="create", kind=kind, schema=1, seq=1, prev=b"",
                hlc=hlc, deps=[], change_hash=b"", payload=payload)


def test_a_change_whose_automerge_actor_is_not_its_signer_is_refused(grid: LocalRegistry) -> None:
    signer, impostor = KeyPair.generate(), KeyPair.generate()
    create = snapshot_create(signer, "x", cluster("x"))
    assert grid.execute([Remote(create.wire, "alice")])[0].status == "applied"

    def update_under(actor: KeyPair) -> Any:
        doc = RecordDoc.apply(None, genesis_change(read_snapshot(create.body.payload, kind="cluster", schema=1),
                                                   signer.did).raw_bytes)
        change = doc.fork_with_actor(actor.public_key).update(fields={**cluster("x"), "region": "eu"})
        return seal(signer, registry=CLUSTERS, record="x", op="update", kind="cluster", schema=1, seq=2,
                    prev=create.cid, hlc=Hlc(2, 0), deps=list(change.deps), change_hash=change.hash,
                    payload=change.raw_bytes)

    before = snapshot(grid)
    result = grid.execute([Remote(update_under(impostor).wire, "mallory")])[0]
    assert result.status == "rejected"
    assert isinstance(result.error, PolicyDenied)
    assert snapshot(grid) == before
    # The same change under the signer's own actor is accepted: only the actor was wrong.
    assert grid.execute([Remote(update_under(signer).wire, "alice")])[0].status == "applied"
    assert grid.get(CLUSTERS, "x")["fields"]["region"] == "eu"


def test_a_peers_descriptor_is_held_to_the_rules_of_a_local_one_and_refused_as_evidence(
        grid: LocalRegistry) -> None:
    # A node refuses its own user a grid.* name, a built-in's name or a
    # descriptor whose name is not its id; a peer's signed descriptor that
    # breaks those rules counted, listed beside (or as) the built-ins.
    peer = KeyPair.generate()

    def descriptor(name: str) -> dict[str, Any]:
        return {"name": name, "description": "", "kinds": ["cluster"], "write_policy": "open",
                "conflict_policy": "last-writer-wins", "replication": {"scope": "federation"}}

    def create(record: str, fields: dict[str, Any], seq: int, prev: bytes) -> Any:
        payload = encode_snapshot(kind="registry", schema=1, owner=peer.did, created_at=seq, created_by=peer.did,
                                  fields=fields, tags=[], links=[])
        return seal(peer, registry="grid.registries", record=record, op="create", kind="registry", schema=1,
                    seq=seq, prev=prev, hlc=Hlc(seq, 0), deps=[], change_hash=b"", payload=payload)

    bad = [("grid.mine", descriptor("grid.mine"), "kept for the built-in registries"),
           (CLUSTERS, descriptor(CLUSTERS), "is a built-in registry"),
           ("acme.a", descriptor("acme.b"), "must equal its record id")]
    prev = b""
    for seq, (record, fields, why) in enumerate(bad, start=1):
        env = create(record, fields, seq, prev)
        result = grid.execute([Remote(env.wire, "mallory")])[0]
        assert result.status == "refused", record
        assert isinstance(result.error, PolicyDenied) and why in result.error.message
        with pytest.raises(NotFound):
            grid.get("grid.registries", record)
        prev = env.cid
    listed = [r["name"] for r in grid.registries()]
    assert listed.count(CLUSTERS) == 1 and "grid.mine" not in listed and "acme.a" not in listed
    assert grid.engine.metrics["rejected.policy_denied"] == len(bad)
    # Kept as evidence, so its author's chain goes on: its next descriptor counts.
    good = create("acme.good", descriptor("acme.good"), len(bad) + 1, prev)
    assert grid.execute([Remote(good.wire, "alice")])[0].status == "applied"
    assert grid.get("grid.registries", "acme.good")["fields"]["name"] == "acme.good"
    assert grid.verify().ok


def test_an_envelope_signed_by_another_key_than_its_author_is_rejected(tmp_path: Path) -> None:
    a = open_store(tmp_path / "a")
    b = open_store(tmp_path / "b")
    try:
        a.put(CLUSTERS, "cluster", cluster("x"), id="x")
        genuine = wires_in_feed_order(a)[0]
        *proof, _signature = msgspec.msgpack.decode(genuine)
        forged = msgspec.msgpack.encode([*proof, KeyPair.generate().sign(b"any root")])
        before = snapshot(b)
        result = b.execute([Remote(forged, "mallory")])[0]
        assert result.status == "rejected"
        assert isinstance(result.error, SignatureInvalid)
        assert snapshot(b) == before
        assert b.execute([Remote(genuine, "alice")])[0].status == "applied"
    finally:
        a.close()
        b.close()


def test_in_a_large_remote_batch_checked_on_several_threads_only_the_forged_changes_are_refused(
        tmp_path: Path) -> None:
    # Batches of PARALLEL_VERIFY_MIN_OPS+ remote changes have their
    # signatures checked on a thread pool before they are applied; the
    # verdicts must be exactly those of checking one by one.
    from registrygrid.engine.engine import PARALLEL_VERIFY_MIN_OPS

    a = open_store(tmp_path / "a")
    b = open_store(tmp_path / "b")
    try:
        n = PARALLEL_VERIFY_MIN_OPS * 2
        for i in range(n):
            a.put(CLUSTERS, "cluster", cluster(f"c{i}"), id=f"c{i}")
        wires = wires_in_feed_order(a)
        forged_at = {5, 17, n - 1}  # chains break after a refusal, so forge the tail of one...
        batch = []
        for i, wire in enumerate(wires):
            *proof, _signature = msgspec.msgpack.decode(wire)
            batch.append(msgspec.msgpack.encode([*proof, KeyPair.generate().sign(b"root")]) if i in forged_at
                         else wire)
        results = b.execute([Remote(w, "mallory") for w in batch])
        assert [type(r.error) for r in results if r.status == "rejected"][:1] == [SignatureInvalid]
        assert results[5].status == "rejected" and isinstance(results[5].error, SignatureInvalid)
        assert [r.status for r in results[:5]] == ["applied"] * 5
        # ...and every change after the first forgery waits for the missing link, none is applied out of order.
        assert all(r.status in ("pending", "rejected") for r in results[6:])
        assert b.engine.metrics["rejected.signature_invalid"] == len(forged_at)
        # The genuine changes complete the chain; nothing forged ever landed.
        assert all(r.status in ("applied", "duplicate") for r in b.execute([Remote(w, "alice") for w in wires]))
        assert b.state_digest() == a.state_digest()
    finally:
        a.close()
        b.close()


def test_a_remote_kind_definition_the_catalog_refuses_leaves_the_store_unchanged(grid: LocalRegistry) -> None:
    # A peer publishes a `kind` record that is valid against kind.v1.json but
    # that the catalog refuses (a new version of the built-in `asset`). The
    # change must be rejected as a whole, not half-applied.
    author = KeyPair.generate()
    fields = {"name": "asset", "version": 3, "registry": "grid.assets", "schema": {"type": "object"}}
    env = snapshot_create(author, "asset.v3", fields, registry="grid.kinds", kind="kind")
    before = snapshot(grid)
    result = grid.execute([Remote(env.wire, "mallory")])[0]
    assert result.status == "rejected"
    assert type(result.error) is ValidationError
    assert snapshot(grid) == before
    assert grid.engine.version_vector("grid.kinds") == {}
    assert grid.verify().ok


def test_a_remote_change_that_breaks_its_kind_schema_is_rejected(grid: LocalRegistry) -> None:
    author = KeyPair.generate()
    env = snapshot_create(author, "x", {"reputation": 9})
    before = snapshot(grid)
    result = grid.execute([Remote(env.wire, "mallory")])[0]
    assert result.status == "rejected"
    assert isinstance(result.error, SchemaViolation)
    assert snapshot(grid) == before


# ================================================================ verify


def test_verify_is_ok_on_a_healthy_store(grid: LocalRegistry) -> None:
    grid.put(CLUSTERS, "cluster", cluster("a"), id="a")
    grid.update(CLUSTERS, "a", patch={"region": "eu"})
    grid.put(CLUSTERS, "cluster", cluster("b"), id="b")
    grid.delete(CLUSTERS, "b")
    report = grid.verify()
    assert report.ok, report
    assert (report.changes, report.chains, report.records) == (4, 1, 2)


@pytest.mark.parametrize("where", ["signature", "payload", "text-field"])
def test_verify_names_a_change_whose_stored_bytes_were_altered(grid: LocalRegistry, where: str) -> None:
    grid.put(CLUSTERS, "cluster", cluster("a", blob="z" * 200), id="a")
    target = grid.put(CLUSTERS, "cluster", cluster("b", blob="z" * 200), id="b")
    grid.put(CLUSTERS, "cluster", cluster("c", blob="z" * 200), id="c")
    cid = cid_from_str(target.change_id)
    with grid.store.env.begin(write=True) as txn:
        value = bytearray(txn.get(cid, db=grid.store.db["changes"]))
        if where == "signature":  # each put is a batch of one: its signature sits in the change entry
            assert value[-(2 + 64 + 2):-(2 + 64)] == b"\xc4\x40"  # [body, signature, 0, []]
            value[len(value) - 2 - 64 + 10] ^= 0x01
        elif where == "payload":
            value[value.index(b"z" * 200) + 100] ^= 0x01
        else:  # a byte of the registry name, made invalid UTF-8
            value[value.index(CLUSTERS.encode())] = 0xFF
        txn.put(cid, bytes(value), db=grid.store.db["changes"])
    report = grid.verify()
    assert not report.ok
    assert report.where == f"change {target.change_id}"
    assert report.problem


def test_verify_notices_a_record_that_disagrees_with_its_document(grid: LocalRegistry) -> None:
    from registrygrid.storage import records

    grid.put(CLUSTERS, "cluster", cluster("a"), id="a")
    with grid.store.write() as txn:
        record = records.get_record(grid.store, txn, CLUSTERS, "a")
        forged = {**record, "fields": {**record["fields"], "name": "forged"}}
        records.put_record(grid.store, txn, record, forged)
    report = grid.verify()
    assert not report.ok
    assert report.where == f"record {CLUSTERS}/a"


def test_change_ids_in_results_name_the_stored_bytes(grid: LocalRegistry) -> None:
    result = grid.put(CLUSTERS, "cluster", cluster("a"), id="a")
    wire = grid.change(cid_from_str(result.change_id))
    env = open_envelope(wire)
    assert env.id == result.change_id == cid_to_str(env.cid)
    assert env.body.author == grid.engine.key.did
    assert (env.body.registry, env.body.record, env.body.op, env.body.seq) == (CLUSTERS, "a", "create", 1)


def test_a_remote_change_from_a_clock_far_ahead_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    from registrygrid.engine.engine import Engine
    from registrygrid.protocol.hlc import MAX_DRIFT_MS, wall_clock_ms
    from registrygrid.schemas import SchemaCatalog
    from registrygrid.storage.store import Store

    store = Store(tmp_path / "ahead")
    ahead = LocalRegistry(store, Engine(store, KeyPair.generate(), SchemaCatalog(),
                                        now_ms=lambda: wall_clock_ms() + 2 * MAX_DRIFT_MS))
    written = ahead.put("grid.clusters", "cluster", cluster("future"))
    wire = ahead.change(cid_from_str(written.change_id))
    local = open_store(tmp_path / "local")
    before = snapshot(local)
    [result] = local.execute([Remote(wire, "peer-with-a-fast-clock")])
    assert result.status == "rejected" and isinstance(result.error, ValidationError)
    assert "ahead" in result.error.message
    assert snapshot(local) == before


def test_an_empty_object_key_is_refused_without_spoiling_its_batch(grid: LocalRegistry) -> None:
    outcomes = grid.execute([
        Put(CLUSTERS, "cluster", cluster("bad", labels={"": "x"})),
        Put(CLUSTERS, "cluster", cluster("good"), record_id="good"),
    ])
    assert isinstance(outcomes[0], ValidationError) and "empty" in outcomes[0].message
    assert isinstance(outcomes[1], WriteResult) and grid.get(CLUSTERS, "good")["fields"]["name"] == "good"


def test_a_long_chain_delivered_backwards_parks_each_change_once(tmp_path: Path) -> None:
    """Each parked change waits for its own predecessor, so a gap of n changes
    costs n parks, not one re-park per change per link applied."""
    author = open_store(tmp_path / "author", KeyPair.generate())
    replica = open_store(tmp_path / "replica")
    try:
        author.put_many([Put(CLUSTERS, "cluster", cluster(f"c{i}"), f"c{i}") for i in range(300)])
        wires = wires_in_feed_order(author)
        for wire in reversed(wires):  # one transaction each: the worst order
            replica.execute([Remote(wire, "p")])
        assert replica.engine.metrics["remote.parked"] == len(wires) - 1
        assert replica.engine.metrics["remote.applied"] == 1  # the first; the rest were released by it
        assert replica.state_digest() == author.state_digest()
    finally:
        author.close()
        replica.close()


def test_parked_changes_are_capped_in_bytes_as_well_as_in_count(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A count alone let 100,000 parked changes of 256 KiB each hold 25 GiB.
    import secrets

    from registrygrid.engine import ingest
    from registrygrid.errors import MissingDependencies
    monkeypatch.setattr(ingest, "MAX_PENDING_BYTES", 64 * 1024)
    author = open_store(tmp_path / "author", KeyPair.generate())
    replica = open_store(tmp_path / "replica")
    try:
        author.put_many([Put(CLUSTERS, "cluster", cluster(f"c{i}", notes=secrets.token_hex(2000)), f"c{i}") for i in range(40)])
        wires = wires_in_feed_order(author)
        outcomes = replica.execute([Remote(w, "p") for w in wires[1:]])  # all wait for the first
        parked = [o for o in outcomes if o.status == "pending"]
        refused = [o for o in outcomes if o.status == "rejected"]
        assert parked and refused and len(parked) + len(refused) == len(wires) - 1
        assert isinstance(refused[0].error, MissingDependencies)
        assert "bytes of changes already wait" in refused[0].error.message
        assert len(parked) * 4000 <= 64 * 1024
        replica.execute([Remote(wires[0], "p")])  # the first arrives: what waited applies
        replica.execute([Remote(w, "p") for w in wires])  # anti-entropy resends the refused ones
        assert replica.state_digest() == author.state_digest()
    finally:
        author.close()
        replica.close()


def test_one_signer_fills_only_its_own_share_of_the_waiting_room(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The caps were the room's alone: a member that signed changes that
    # never resolve filled it for an hour at a time, and every honest
    # out-of-order delivery was refused meanwhile.
    from registrygrid.engine import ingest
    from registrygrid.engine.ops import ExpireParked
    from registrygrid.errors import MissingDependencies
    from registrygrid.storage import pending
    monkeypatch.setattr(ingest, "MAX_PENDING_SHARE", 5)
    flooder, honest = KeyPair.generate(), KeyPair.generate()
    stores = [open_store(tmp_path / "flooder", flooder), open_store(tmp_path / "honest", honest),
              open_store(tmp_path / "replica")]
    flooding, writing, replica = stores
    try:
        flooding.put_many([Put(CLUSTERS, "cluster", cluster(f"f{i}"), f"f{i}") for i in range(10)])
        writing.put_many([Put(CLUSTERS, "cluster", cluster(f"h{i}"), f"h{i}") for i in range(4)])
        flood, honest_wires = wires_in_feed_order(flooding), wires_in_feed_order(writing)
        outcomes = replica.execute([Remote(w, "p") for w in flood[1:]])  # all wait for the first, which never comes
        assert [o.status for o in outcomes] == ["pending"] * 5 + ["rejected"] * 4
        assert isinstance(outcomes[-1].error, MissingDependencies)
        assert "its share of the waiting room" in outcomes[-1].error.message
        assert replica.engine.metrics["remote.parking_full"] == 4
        with replica.store.read() as txn:
            assert pending.share_of(replica.store, txn, flooder.did.encode()) == (5, sum(map(len, flood[1:6])))
        # Another signer's out-of-order changes still wait, and count when their first comes.
        assert {o.status for o in replica.execute([Remote(w, "p") for w in honest_wires[1:]])} == {"pending"}
        replica.execute([Remote(honest_wires[0], "p")])
        assert len(all_records(replica)) == 4
        with replica.store.read() as txn:
            assert pending.share_of(replica.store, txn, honest.did.encode()) == (0, 0)  # released, off its share
        # A sweep counts the shares again from what stays, and what expires leaves its share.
        assert replica.execute([ExpireParked(ingest_ttl())]) == [0]
        with replica.store.read() as txn:
            assert pending.share_of(replica.store, txn, flooder.did.encode())[0] == 5
        later = replica.engine.now_ms() + ingest_ttl() + 1
        replica.engine.now_ms = lambda: later
        assert replica.execute([ExpireParked(ingest_ttl())]) == [5]
        assert entries(replica, "parked_share") == 0
    finally:
        for store in stores:
            store.close()


def test_keys_whose_delegation_is_not_known_share_one_part_of_the_waiting_room(tmp_path: Path) -> None:
    # Fresh keys cost nothing: each with a share of its own, a member could
    # fill the room with changes of keys no org ever delegates.
    from registrygrid.trust.state import UNPLACED, TrustState
    from tests.test_policy import ADMIN_ORG, MEMBER_ORG, node
    member = node(tmp_path / "m", MEMBER_ORG)
    try:
        trust = member.engine.trust
        assert trust.parking_share(KeyPair.generate().did) == trust.parking_share(KeyPair.generate().did) == UNPLACED
        assert trust.parking_share(member.engine.key.did) == MEMBER_ORG.did  # a delegated key: its org
        assert trust.parking_share(ADMIN_ORG.did) == ADMIN_ORG.did  # a member org's own key
    finally:
        member.close()
    assert TrustState().parking_share(ORG.did) == ORG.did  # no federation: every key is its own


def test_a_change_parked_past_its_ttl_is_dropped_and_taken_again_when_resent(tmp_path: Path) -> None:
    # Nothing expired a parked change: one whose dependency never came (a
    # predecessor no peer holds, a registry whose create was refused) held
    # its place against the pending caps for good.
    from registrygrid.engine.ops import ExpireParked
    author = open_store(tmp_path / "author", KeyPair.generate())
    replica = open_store(tmp_path / "replica")
    try:
        author.put_many([Put(CLUSTERS, "cluster", cluster(f"c{i}"), f"c{i}") for i in range(3)])
        wires = wires_in_feed_order(author)
        clock = [1_000_000_000_000]
        replica.engine.now_ms = lambda: clock[0]
        replica.execute([Remote(w, "p") for w in wires[1:]])  # both wait for the first
        assert (entries(replica, "pending"), entries(replica, "waiting")) == (2, 2)
        clock[0] += ingest_ttl() - 1
        assert replica.execute([ExpireParked(ingest_ttl())]) == [0]  # not yet
        clock[0] += 2
        before = snapshot(replica)
        assert replica.execute([ExpireParked(ingest_ttl())]) == [2]
        assert (entries(replica, "pending"), entries(replica, "waiting"), entries(replica, "parked_at")) == (0, 0, 0)
        assert replica.engine.metrics["remote.parked_expired"] == 2
        assert snapshot(replica) == before  # nothing it held counted: records, feed, audit as they were
        replica.execute([Remote(wires[0], "p")])  # what they waited for comes at last: nothing is left to release
        assert len(all_records(replica)) == 1
        replica.execute([Remote(w, "p") for w in wires])  # sync sends what the chain lacks again
        assert replica.state_digest() == author.state_digest()
    finally:
        author.close()
        replica.close()


def test_a_change_parked_with_no_time_gets_a_whole_ttl_from_the_first_sweep(tmp_path: Path) -> None:
    # Stores parked changes before they kept the time they parked them at.
    from registrygrid.engine.ops import ExpireParked
    author = open_store(tmp_path / "author", KeyPair.generate())
    replica = open_store(tmp_path / "replica")
    try:
        author.put_many([Put(CLUSTERS, "cluster", cluster(f"c{i}"), f"c{i}") for i in range(2)])
        wires = wires_in_feed_order(author)
        clock = [1_000_000_000_000]
        replica.engine.now_ms = lambda: clock[0]
        replica.execute([Remote(wires[1], "p")])
        with replica.store.write() as txn:
            txn.drop(replica.store.db["parked_at"], delete=False)
        clock[0] += 10 * ingest_ttl()
        assert replica.execute([ExpireParked(ingest_ttl())]) == [0]  # stamped now
        assert entries(replica, "parked_at") == 1
        clock[0] += ingest_ttl() + 1
        assert replica.execute([ExpireParked(ingest_ttl())]) == [1]
        assert (entries(replica, "pending"), entries(replica, "waiting")) == (0, 0)
    finally:
        author.close()
        replica.close()


def ingest_ttl() -> int:
    from registrygrid.engine.ingest import PARKED_TTL_MS
    return PARKED_TTL_MS


def test_a_registrys_record_size_cap_holds_for_local_writes_and_remote_updates(tmp_path: Path) -> None:
    author = open_store(tmp_path / "author", KeyPair.generate())
    replica = open_store(tmp_path / "replica")
    try:
        author.put("grid.registries", "registry", {"name": "acme.small", "kinds": ["cluster"],
                                                   "limits": {"max_record_bytes": 200}}, id="acme.small")
        with pytest.raises(TooLarge, match="max_record_bytes"):
            author.put("acme.small", "cluster", cluster("big", notes="x" * 300))
        author.put("acme.small", "cluster", cluster("small"), id="s")
        replica.execute([Remote(w, "p") for w in wires_in_feed_order(author)])
        # The author's node forgets the cap (as a node that runs other code,
        # or has not seen the cap lowered, might) and grows the record past
        # it: the replica refuses the update, and keeps it as evidence so
        # that the author's next change still follows its chain.
        cached = author.engine._registry_cache["acme.small"]
        author.engine._registry_cache["acme.small"] = dataclasses.replace(cached, max_record_bytes=10**6)
        author.update("acme.small", "s", patch={"notes": "x" * 300})
        author.put("acme.small", "cluster", cluster("next"), id="next")
        outcomes = replica.execute([Remote(w, "p") for w in wires_in_feed_order(author)[-2:]])
        assert [o.status for o in outcomes] == ["refused", "applied"]
        assert isinstance(outcomes[0].error, PolicyDenied) and "max_record_bytes is 200" in outcomes[0].error.message
        assert "notes" not in replica.get("acme.small", "s")["fields"]
        assert replica.get("acme.small", "next")["fields"]["name"] == "next"
        assert replica.engine.metrics["rejected.policy_denied"] == 1
    finally:
        author.close()
        replica.close()


def test_a_registrys_record_size_cap_holds_for_remote_creates_on_the_fields_not_the_payload(tmp_path: Path) -> None:
    """A create past the cap is refused; one whose fields fit, in a payload
    that does not (a snapshot also carries its owner, tags and links), is
    taken: the cap is on the fields, as for a local write."""
    author = open_store(tmp_path / "author", KeyPair.generate())
    replica = open_store(tmp_path / "replica")
    try:
        author.put("grid.registries", "registry", {"name": "acme.small", "kinds": ["cluster"],
                                                   "limits": {"max_record_bytes": 200}}, id="acme.small")
        author.put("acme.small", "cluster", cluster("small"), id="s")
        # The author's node forgets the cap (as a node that runs other code might).
        cached = author.engine._registry_cache["acme.small"]
        author.engine._registry_cache["acme.small"] = dataclasses.replace(cached, max_record_bytes=10**6)
        fits = author.put("acme.small", "cluster", cluster("fits", notes="x" * 170), id="fits")
        author.put("acme.small", "cluster", cluster("big", notes="x" * 300), id="big")
        assert 150 < len(msgspec.msgpack.encode(fits.record["fields"])) <= 200
        fitting = wires_in_feed_order(author)[-2]
        assert len(open_envelope(fitting).body.payload) > 200
        outcomes = replica.execute([Remote(w, "p") for w in wires_in_feed_order(author)])
        assert [o.status for o in outcomes[-2:]] == ["applied", "refused"]
        assert "max_record_bytes" in outcomes[-1].error.message
        assert replica.list("acme.small").items and "big" not in {r["id"] for r in replica.list("acme.small").items}
    finally:
        author.close()
        replica.close()


def test_a_batch_is_signed_once_and_a_lone_write_keeps_its_signature_beside_its_change(grid: LocalRegistry) -> None:
    def roots() -> int:
        with grid.store.read() as txn:
            return txn.stat(grid.store.db["roots"])["entries"]

    lone = grid.put(CLUSTERS, "cluster", cluster("lone"), id="lone")
    assert roots() == 0  # a batch of one touches no "roots" tree
    many = grid.put_many([Put(CLUSTERS, "cluster", cluster(f"b{i}"), f"b{i}") for i in range(5)])
    assert roots() == 1  # five changes, one signature
    envelopes = [open_envelope(grid.change(cid_from_str(r.change_id))) for r in [lone, *many]]  # type: ignore[union-attr,arg-type]
    assert [env.size for env in envelopes] == [1, 5, 5, 5, 5, 5]
    assert len({env.signature for env in envelopes[1:]}) == 1
    assert grid.verify().ok


def test_cyclic_gc_is_paused_during_a_batch_and_back_after_it_even_when_it_fails(grid: LocalRegistry) -> None:
    seen: list[bool] = []
    saved = grid.engine._execute_once

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return saved(*args, **kwargs)

    grid.engine._execute_once = spy  # type: ignore[method-assign]
    assert gc.isenabled()
    grid.put(CLUSTERS, "cluster", cluster("a"), id="a")
    assert seen == [False] and gc.isenabled()
    grid.engine._execute_once = lambda *a, **k: 1 / 0  # type: ignore[method-assign,assignment]
    with pytest.raises(ZeroDivisionError):
        grid.put(CLUSTERS, "cluster", cluster("b"), id="b")
    assert gc.isenabled()


def test_overlapping_pauses_switch_the_collector_back_on_only_at_the_last_end() -> None:
    first, second = cyclic_gc_paused(), cyclic_gc_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second batch still runs
    second.__exit__(None, None, None)
    assert gc.isenabled()
    gc.disable()  # a process that runs without the collector keeps it off
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
