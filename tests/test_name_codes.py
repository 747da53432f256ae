"""DIDs in keys as 4-byte codes (storage/codes.py): handed out once, in
order, stable across restarts, and never the code of an aborted write."""

from __future__ import annotations

from pathlib import Path

import pytest

from registrygrid.errors import IntegrityError
from registrygrid.sdk import LocalRegistry
from registrygrid.storage import chains
from registrygrid.storage.codes import CODE_BYTES
from registrygrid.storage.store import Store


def test_codes_are_handed_out_in_order_once_and_survive_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.write() as txn:
        a = store.codes.assign(txn, "did:key:a")
        b = store.codes.assign(txn, "did:key:b")
        assert store.codes.assign(txn, "did:key:a") == a
    assert (len(a), int.from_bytes(a, "big"), int.from_bytes(b, "big")) == (CODE_BYTES, 1, 2)
    store.close()

    reopened = Store(tmp_path)
    with reopened.read() as txn:
        assert reopened.codes.code(txn, "did:key:b") == b
        assert reopened.codes.name(txn, a) == "did:key:a"
        assert reopened.codes.code(txn, "did:key:never") is None
    with reopened.write() as txn:
        assert int.from_bytes(reopened.codes.assign(txn, "did:key:c"), "big") == 3
    reopened.close()


def test_a_code_handed_out_by_an_aborted_write_is_forgotten_and_given_again(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(RuntimeError), store.write() as txn:
        lost = store.codes.assign(txn, "did:key:lost")
        chains.link(store, txn, "grid.tools", "did:key:lost", 1, b"x" * 36)
        raise RuntimeError("the batch failed")

    with store.write() as txn:
        assert store.codes.code(txn, "did:key:lost") is None
        kept = store.codes.assign(txn, "did:key:kept")
        chains.link(store, txn, "grid.tools", "did:key:kept", 1, b"y" * 36)

    assert kept == lost  # the same number, now the DID that committed
    with store.read() as txn:
        assert store.codes.name(txn, kept) == "did:key:kept"
        assert chains.heads(store, txn) == {"grid.tools": {"did:key:kept": 1}}
        assert chains.head(store, txn, "grid.tools", "did:key:lost") == (0, b"")
    store.close()


def test_a_chain_key_naming_a_code_never_handed_out_is_an_integrity_error(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.write() as txn:
        txn.put(b"grid.tools\x00" + (99).to_bytes(CODE_BYTES, "big") + (1).to_bytes(8, "big"), b"z" * 36,
                db=store.db["chains"])
    with store.read() as txn, pytest.raises(IntegrityError, match="never handed out"):
        chains.heads(store, txn)
    store.close()


def test_verify_reports_a_chain_whose_author_code_the_store_lost(tmp_path: Path) -> None:
    grid = LocalRegistry.open_path(tmp_path / "s")
    try:
        grid.put("grid.tools", "tool", {"name": "ocr"}, id="ocr")
        with grid.store.env.begin(write=True) as txn:
            txn.delete(b"c" + grid.store.codes.code(txn, grid.engine.key.did), db=grid.store.db["codes"])
    finally:
        grid.close()

    with LocalRegistry.open_path(tmp_path / "s") as reopened:
        report = reopened.verify()

    assert not report.ok and report.where == "chains" and "never handed out" in (report.problem or "")
