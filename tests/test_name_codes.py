"""DIDs in keys as 4-byte codes (storage/codes.py): handed out once, in
order, stable across restarts, and never the code of an aborted write."""

from __future__ import annotations

from pathlib import Path

import pytest

from registrygrid.errors import IntegrityError
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
