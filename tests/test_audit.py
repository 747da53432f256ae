"""The audit ledger: hash-chained entries and signed RFC 6962 tree heads.

Tampering is done the way an intruder with file access would: directly in
LMDB, under the ledger's feet.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import registrygrid
from registrygrid.engine.engine import record_digest
from registrygrid.errors import IntegrityError
from registrygrid.home import Home
from registrygrid.identity.keys import KeyPair
from registrygrid.sdk import LocalRegistry
from registrygrid.storage.audit import GENESIS, AuditLedger, MerkleFrontier, leaf_hash, node_hash
from registrygrid.storage.store import Store, pack, u64, unpack

CLUSTERS = "grid.clusters"


def _fill(grid: LocalRegistry, n: int = 6) -> None:
    for i in range(n):
        grid.put(CLUSTERS, "cluster", {"name": f"c{i}"}, id=f"c{i}")


def _signed_store(path: Path, n: int = 6) -> tuple[KeyPair, int]:
    """A store with ``n`` audit entries and a signed head over all of them."""
    key = KeyPair.generate()
    grid = LocalRegistry.open_path(path, key)
    _fill(grid, n)
    size = len(grid.audit_log(limit=10_000))
    grid.close()  # signs a tree head over everything so far
    return key, size


def _raw_entries(store: Store) -> dict[int, tuple[bytes, bytes]]:
    with store.read() as txn:
        return {int.from_bytes(k, "big"): tuple(unpack(v)) for k, v in txn.cursor(db=store.db["audit"])}


def _entry(seq: int, at_ms: int, actor: str, action: str, target: str, reason: str, before: Any, after: Any,
           change: Any, prev: bytes) -> tuple[bytes, bytes]:
    body = pack([seq, at_ms, actor, action, target, reason, before, after, change, prev])
    return body, hashlib.sha256(body).digest()


# ---------------------------------------------------------------- what gets recorded


def test_every_write_adds_an_audit_entry_with_digests_and_change_id(grid: LocalRegistry) -> None:
    created = grid.put(CLUSTERS, "cluster", {"name": "a"}, id="a", actor="alice")
    after_create = grid.get(CLUSTERS, "a")
    updated = grid.update(CLUSTERS, "a", patch={"region": "eu"})
    after_update = grid.get(CLUSTERS, "a")
    deleted = grid.delete(CLUSTERS, "a")
    after_delete = grid.get(CLUSTERS, "a", include_deleted=True)

    log = grid.audit_log()
    assert [e.seq for e in log] == [1, 2, 3]
    assert [e.action for e in log] == ["create", "update", "delete"]
    assert [e.change for e in log] == [created.change_id, updated.change_id, deleted.change_id]
    assert all(e.target == f"{CLUSTERS}/a" for e in log)
    assert all(e.actor == grid.engine.key.did for e in log)
    assert "alice" in log[0].reason
    assert (log[0].before, log[0].after) == (None, record_digest(after_create))
    assert (log[1].before, log[1].after) == (record_digest(after_create), record_digest(after_update))
    assert (log[2].before, log[2].after) == (record_digest(after_update), record_digest(after_delete))
    assert log[0].prev == GENESIS
    assert [e.prev for e in log[1:]] == [e.hash for e in log[:-1]]
    report = grid.audit_verify()
    assert report["entries"] == 3


def test_audit_log_pages_forward_and_backward(grid: LocalRegistry) -> None:
    _fill(grid, 5)
    assert [e.seq for e in grid.audit_log(since=2, limit=2)] == [3, 4]
    assert [e.seq for e in grid.audit_log(reverse=True, limit=3)] == [5, 4, 3]


def test_audit_verify_is_ok_and_checks_signed_heads_after_reopening(tmp_path: Path) -> None:
    key, size = _signed_store(tmp_path)
    grid = LocalRegistry.open_path(tmp_path, key)
    try:
        report = grid.audit_verify()
        assert report["entries"] == size
        assert report["signed_heads"] == 1
        leaves = [e.hash for e in grid.audit_log(limit=10_000)]
        assert report["root"] == naive_mth(leaves).hex()
    finally:
        grid.close()


# ---------------------------------------------------------------- tampering


def test_flipping_a_byte_of_an_audit_entry_is_caught_and_names_the_entry(tmp_path: Path) -> None:
    key, size = _signed_store(tmp_path)
    store = Store(tmp_path)
    try:
        original = {seq: pack(list(value)) for seq, value in _raw_entries(store).items()}

        @settings(max_examples=120, deadline=None, database=None)
        @given(seq=st.integers(1, size), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
        def flip(seq: int, where: float, bit: int) -> None:
            value = bytearray(original[seq])
            index = int(where * len(value))
            value[index] ^= 1 << bit
            with store.env.begin(write=True) as txn:
                txn.put(u64(seq), bytes(value), db=store.db["audit"])
            try:
                with pytest.raises(IntegrityError) as caught:
                    AuditLedger.verify(store, [key.did])
                assert caught.value.details == {"entry": seq}
                assert f"entry {seq}" in caught.value.message
            finally:
                with store.env.begin(write=True) as txn:
                    txn.put(u64(seq), original[seq], db=store.db["audit"])

        flip()
        AuditLedger.verify(store, [key.did])  # every flip was undone
    finally:
        store.close()


def test_removing_entries_covered_by_a_signed_head_is_caught(tmp_path: Path) -> None:
    key, size = _signed_store(tmp_path)
    store = Store(tmp_path)
    try:
        with store.env.begin(write=True) as txn:
            txn.delete(u64(size), db=store.db["audit"])
            txn.delete(u64(size - 1), db=store.db["audit"])
        with pytest.raises(IntegrityError) as caught:
            AuditLedger.verify(store, [key.did])
        assert caught.value.details == {"head": size}
        assert "removed" in caught.value.message
    finally:
        store.close()


def test_removing_an_entry_in_the_middle_is_caught_as_missing(tmp_path: Path) -> None:
    key, size = _signed_store(tmp_path)
    store = Store(tmp_path)
    try:
        with store.env.begin(write=True) as txn:
            txn.delete(u64(3), db=store.db["audit"])
        with pytest.raises(IntegrityError) as caught:
            AuditLedger.verify(store, [key.did])
        assert caught.value.details == {"entry": 3}
    finally:
        store.close()


def test_rewriting_history_with_a_recomputed_hash_chain_is_caught_by_the_signed_head(tmp_path: Path) -> None:
    key, size = _signed_store(tmp_path)
    store = Store(tmp_path)
    try:
        def cover_up(seq: int, fields: list[Any]) -> None:
            if seq == 2:
                fields[5] = "nothing to see here"  # the reason
                fields[2] = "did:key:someone-else"  # the actor
        _rechain(store, cover_up)
        # The chain alone is consistent again: every entry hashes and links.
        with store.read() as txn:
            heads = {k: v for k, v in txn.cursor(db=store.db["audit_heads"])}
        with store.env.begin(write=True) as txn:
            txn.drop(store.db["audit_heads"], delete=False)
        # Without its heads, the ledger's own state of itself still names
        # the last entry as it wrote it.
        with pytest.raises(IntegrityError) as unpinned:
            AuditLedger.verify(store, [key.did])
        assert unpinned.value.details == {"entry": size} and "rewritten" in unpinned.value.message
        with store.env.begin(write=True) as txn:
            for k, v in heads.items():
                txn.put(k, v, db=store.db["audit_heads"])
        # ... but the signed tree head pins the original history.
        with pytest.raises(IntegrityError) as caught:
            AuditLedger.verify(store, [key.did])
        assert caught.value.details == {"head": size}
        assert "rewritten" in caught.value.message
    finally:
        store.close()


def test_a_forged_tree_head_signature_is_caught(tmp_path: Path) -> None:
    key, size = _signed_store(tmp_path)
    store = Store(tmp_path)
    try:
        with store.env.begin(write=True) as txn:
            head = unpack(txn.get(u64(size), db=store.db["audit_heads"]))
            head["at_ms"] += 1
            txn.put(u64(size), pack(head), db=store.db["audit_heads"])
        with pytest.raises(IntegrityError) as caught:
            AuditLedger.verify(store, [key.did])
        assert caught.value.details == {"head": size}
    finally:
        store.close()


def _rechain(store: Store, change: Callable[[int, list[Any]], None]) -> dict[int, tuple[bytes, bytes]]:
    """Every entry rewritten by ``change`` and linked again, as a tamperer
    who recomputes the whole chain would leave it (written back)."""
    entries = _raw_entries(store)
    prev = GENESIS
    rewritten: dict[int, tuple[bytes, bytes]] = {}
    for seq in sorted(entries):
        fields = unpack(entries[seq][0])
        change(seq, fields)
        fields[-1] = prev
        rewritten[seq] = _entry(*fields)
        prev = rewritten[seq][1]
    with store.env.begin(write=True) as txn:
        for seq, value in rewritten.items():
            txn.put(u64(seq), pack(list(value)), db=store.db["audit"])
    return rewritten


def test_a_rewrite_that_re_signs_every_head_with_a_key_of_its_own_is_caught(tmp_path: Path) -> None:
    # verify read the signer from the head itself: a tamperer re-signed the
    # rewritten ledger's heads with a fresh key, and verify said intact.
    key, size = _signed_store(tmp_path)
    store = Store(tmp_path)
    try:
        def blame_someone_else(seq: int, fields: list[Any]) -> None:
            if seq == 2:
                fields[2] = "did:key:someone-else"
        rewritten = _rechain(store, blame_someone_else)
        forger = KeyPair.generate()
        frontier = MerkleFrontier()
        for seq in sorted(rewritten):
            frontier.append(leaf_hash(rewritten[seq][1]))
        root = frontier.root()
        with store.env.begin(write=True) as txn:
            txn.drop(store.db["audit_heads"], delete=False)
            txn.put(u64(size), pack({"size": size, "root": root, "at_ms": 1, "signer": forger.did,
                                     "signature": forger.sign(pack([size, root, 1]))}), db=store.db["audit_heads"])
            state = store.get_meta(txn, "audit.state")
            state[1] = rewritten[size][1]  # its own state of itself rewritten too
            store.put_meta(txn, "audit.state", state)
        with pytest.raises(IntegrityError) as caught:
            AuditLedger.verify(store, [key.did])
        assert caught.value.details == {"head": size}
        assert f"signed by {forger.did!r}, not by this node's key" in caught.value.message
    finally:
        store.close()


def test_entries_cut_from_the_end_are_caught_and_no_head_is_signed_over_what_is_left(tmp_path: Path) -> None:
    # No head covered the last entries (the node was killed before it signed
    # one), and every remaining link held: verify said intact, and the
    # store's next close signed a head over a root it never checked.
    key = KeyPair.generate()
    grid = LocalRegistry.open_path(tmp_path, key)
    _fill(grid, 3)
    grid.close()
    grid = LocalRegistry.open_path(tmp_path, key)
    for i in range(3, 6):
        grid.put(CLUSTERS, "cluster", {"name": f"c{i}"}, id=f"c{i}")
    with grid.store.read() as txn:
        last = grid.store.get_meta(txn, "audit.state")[0]
    with grid.store.write() as txn:  # under the open ledger's feet, as an intruder between batches
        txn.delete(u64(last), db=grid.store.db["audit"])
        txn.delete(u64(last - 1), db=grid.store.db["audit"])
    with pytest.raises(IntegrityError) as caught:
        grid.audit_verify()
    assert caught.value.details == {"entry": last - 1}
    assert f"entries {last - 1}..{last} were removed" in caught.value.message
    heads_before = AuditLedger.heads(grid.store)
    grid.close()  # would sign the cached frontier's root
    store = Store(tmp_path)
    try:
        assert AuditLedger.heads(store) == heads_before
        with pytest.raises(IntegrityError, match="were removed"):
            AuditLedger.verify(store, [key.did])
    finally:
        store.close()


def test_deleted_heads_are_caught_by_the_ledgers_state_of_itself(tmp_path: Path) -> None:
    key, size = _signed_store(tmp_path)
    store = Store(tmp_path)
    try:
        with store.env.begin(write=True) as txn:
            txn.drop(store.db["audit_heads"], delete=False)
        with pytest.raises(IntegrityError) as caught:
            AuditLedger.verify(store, [key.did])
        assert caught.value.details == {"head": size} and "was removed" in caught.value.message
    finally:
        store.close()


@pytest.mark.parametrize("garbage", [pack(7), pack([b"x"]), pack([pack([1, 2]), b"d"]), b"\xc1"])
def test_an_audit_entry_that_is_not_one_is_an_integrity_error_for_verify_and_the_log(tmp_path: Path,
                                                                                   garbage: bytes) -> None:
    # A value of the wrong shape crashed verify and the log with a TypeError
    # (the CLI's traceback, the bridge's 500 internal_error).
    key, size = _signed_store(tmp_path)
    store = Store(tmp_path)
    try:
        with store.env.begin(write=True) as txn:
            txn.put(u64(3), garbage, db=store.db["audit"])
        with pytest.raises(IntegrityError) as verified:
            AuditLedger.verify(store, [key.did])
        with pytest.raises(IntegrityError) as listed:
            AuditLedger.entries(store, limit=100)
        with pytest.raises(IntegrityError):
            AuditLedger.entries(store, limit=100, reverse=True)
        assert verified.value.details == listed.value.details == {"entry": 3}
    finally:
        store.close()


def test_an_entry_moved_to_another_place_is_named_as_moved(tmp_path: Path) -> None:
    key, size = _signed_store(tmp_path)
    store = Store(tmp_path)
    try:
        with store.env.begin(write=True) as txn:
            third, fourth = txn.get(u64(3), db=store.db["audit"]), txn.get(u64(4), db=store.db["audit"])
            txn.put(u64(3), fourth, db=store.db["audit"])
            txn.put(u64(4), third, db=store.db["audit"])
        with pytest.raises(IntegrityError) as caught:
            AuditLedger.verify(store, [key.did])
        assert caught.value.message == "audit entry 3 says it is entry 4: entries were moved"
    finally:
        store.close()


def test_heads_signed_by_a_key_the_node_rotated_away_from_still_verify(tmp_path: Path) -> None:
    from registrygrid.membership import rotate_node_key

    home = Home(tmp_path / "home")
    home.init(org_name="acme")
    with LocalRegistry.open_home(home) as grid:
        _fill(grid, 2)
    old = home.node_key().did
    rotate_node_key(home)
    with LocalRegistry.open_home(home) as grid:
        grid.put(CLUSTERS, "cluster", {"name": "after"}, id="after")
    with LocalRegistry.open_home(home) as grid:
        report = grid.audit_verify()
        signers = {h["signer"] for h in AuditLedger.heads(grid.store)}
    assert report["signed_heads"] >= 2 and signers == {old, home.node_key().did}
    assert home.node_dids() == [home.node_key().did, old]


# ---------------------------------------------------------------- Merkle tree


def naive_mth(entry_hashes: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written as the RFC states it."""
    n = len(entry_hashes)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entry_hashes[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(entry_hashes[:k]) + naive_mth(entry_hashes[k:])).digest()


def test_merkle_frontier_root_equals_the_rfc6962_tree_hash_for_every_size_up_to_70() -> None:
    hashes = [hashlib.sha256(str(i).encode()).digest() for i in range(71)]
    frontier = MerkleFrontier()
    assert frontier.root() == naive_mth([])
    for n in range(1, 71):
        frontier.append(leaf_hash(hashes[n - 1]))
        assert frontier.size == n
        assert frontier.root() == naive_mth(hashes[:n]), n
        # Restoring from saved state continues the same tree.
        restored = MerkleFrontier(*frontier.to_state())
        assert restored.root() == frontier.root()


def test_merkle_helpers_use_rfc6962_domain_separation() -> None:
    a, b = b"\x01" * 32, b"\x02" * 32
    assert leaf_hash(a) == hashlib.sha256(b"\x00" + a).digest()
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()


# ---------------------------------------------------------------- CLI


def test_cli_audit_verify_fails_and_names_the_tampered_entry(tmp_path: Path, rgrid: Any) -> None:
    home = tmp_path / "home"
    Home(home).init(org_name="acme")
    with registrygrid.open(home) as grid:
        _fill(grid, 5)
    ok = rgrid("audit", "verify", "--json", home=home)
    assert ok.returncode == 0, ok.stderr
    store = Store(Home(home).store_path)
    try:
        with store.env.begin(write=True) as txn:
            value = bytearray(txn.get(u64(4), db=store.db["audit"]))
            value[-3] ^= 0xFF  # inside the entry hash
            txn.put(u64(4), bytes(value), db=store.db["audit"])
    finally:
        store.close()
    bad = rgrid("audit", "verify", home=home)
    assert bad.returncode != 0
    assert bad.returncode == IntegrityError.exit_code
    assert "audit entry 4" in bad.stderr


def test_a_refused_writes_deny_entry_names_the_failing_paths_not_the_values(grid: LocalRegistry) -> None:
    """The ledger is never scrubbed, so an erasure cannot reach it: a schema
    refusal is kept as where its rules sit in the schema, without the
    values it quotes to the caller or the map keys on its field paths."""
    from registrygrid.errors import SchemaViolation

    secret, key = "alice.smith@example.org", "contact:bob.jones@example.org"
    with pytest.raises(SchemaViolation) as refused:
        grid.put(CLUSTERS, "cluster", {"name": "a", "memory": secret, "reputation": 5,
                                       "nodes": [{"id": "n1", "labels": {key: 7}}]}, id="a")
    assert secret in refused.value.message  # the caller is told what was wrong
    assert any(key in d["path"] for d in refused.value.details)

    [deny] = [e for e in grid.audit_log() if e.action == "deny"]
    assert deny.target == f"{CLUSTERS}/a"
    assert secret not in deny.reason and "bob.jones" not in deny.reason
    assert deny.reason.startswith("schema_violation: cluster v1: ")
    assert "/properties/memory" in deny.reason and "/properties/reputation/maximum (maximum)" in deny.reason
    assert "/properties/nodes/items/properties/labels/additionalProperties/type (type)" in deny.reason


def test_a_refused_out_of_range_integer_is_not_quoted(grid: LocalRegistry) -> None:
    from registrygrid.errors import ValidationError

    with pytest.raises(ValidationError) as refused:
        grid.put(CLUSTERS, "cluster", {"name": "a", "vcpus": 2**63 + 12345}, id="a")
    assert "does not fit in 64 bits" in refused.value.message
    [deny] = [e for e in grid.audit_log() if e.action == "deny"]
    assert str(2**63 + 12345) not in deny.reason and "19 digits" in deny.reason
