"""The LMDB store: its format check, and chain heads read from the chains themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from registrygrid.engine.engine import chain_head
from registrygrid.sdk import LocalRegistry
from registrygrid.storage.store import STORE_FORMAT, Store, StoreFormatError, key, pack, u64


def test_a_store_of_another_format_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.write() as txn:
        txn.put(b"format", pack(STORE_FORMAT - 1), db=store.db["meta"])
    store.close()
    for readonly in (False, True):
        with pytest.raises(StoreFormatError, match=f"format {STORE_FORMAT - 1}; this version reads format"):
            Store(tmp_path, readonly=readonly)


def test_chain_heads_and_version_vectors_come_from_each_chains_last_link(tmp_path: Path) -> None:
    store = Store(tmp_path)
    # Names that prefix one another must not bleed into each other's chains.
    links = {("r", "did:a"): 3, ("r", "did:ab"): 5, ("r.x", "did:a"): 2, ("s", "did:a"): 1}
    with store.write() as txn:
        for (registry, author), last in links.items():
            for seq in range(1, last + 1):
                txn.put(key(registry, author) + b"\x00" + u64(seq), f"{registry}/{author}/{seq}".encode(),
                        db=store.db["chains"])
    with store.read() as txn:
        for (registry, author), last in links.items():
            assert chain_head(store, txn, registry, author) == (last, f"{registry}/{author}/{last}".encode())
        assert chain_head(store, txn, "r", "did:none") == (0, b"")
        assert chain_head(store, txn, "q", "did:a") == (0, b"")
        assert chain_head(store, txn, "zzz", "did:a") == (0, b"")  # past every key
    store.close()
    grid = LocalRegistry.open_path(tmp_path)
    try:
        assert grid.engine.version_vector() == {"r": {"did:a": 3, "did:ab": 5}, "r.x": {"did:a": 2}, "s": {"did:a": 1}}
        assert grid.engine.version_vector("r") == {"r": {"did:a": 3, "did:ab": 5}}
        assert grid.engine.version_vector("nothing") == {}
    finally:
        grid.close()


def test_history_and_automerge_hashes_sit_beside_the_document(tmp_path: Path) -> None:
    grid = LocalRegistry.open_path(tmp_path)
    try:
        grid.put("grid.tools", "tool", {"name": "ocr"}, id="ocr")
        grid.update("grid.tools", "ocr", fields={"name": "ocr-2"})
        assert [h["op"] for h in grid.history("grid.tools", "ocr")] == ["create", "update"]
        with grid.store.read() as txn:
            entries = [k for k, _ in grid.store.iter_prefix(txn, "docs", key("grid.tools", "ocr"))]
        # the document, two Automerge hashes ('a') and two history links ('h'), adjacent in one B-tree
        assert entries[0] == key("grid.tools", "ocr")
        assert sorted(k[len(key("grid.tools", "ocr")) + 1:][:1] for k in entries[1:]) == [b"a", b"a", b"h", b"h"]
    finally:
        grid.close()
