"""A full LMDB map grows for every writer, not only the engine's batches.

The engine redoes a batch after growing the map (tests/test_doc_cache.py,
tests/test_durability.py). Tokens, the peer table, blob entries, upload
sessions and idempotency entries are written beside it, on threads of their
own: on a full map each must grow it and commit, never fail with LMDB's
MapFullError for want of room the disk has."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from registrygrid.storage import blobs, idempotency, peers, tokens
from registrygrid.storage.store import Store, StoreFull

SMALL_MAP = 2**20
# The sub-databases those writers use, all filled: a write to any of them
# needs pages the map no longer has.
FILLED = ("meta", "tokens", "peers", "blobs", "uploads", "idempotency")


def _fill(store: Store) -> None:
    """Write until no sub-database takes another small key."""
    n = 0
    for size in (8192, 1024, 64):
        for db in FILLED:
            while True:
                try:
                    with store.write() as txn:
                        txn.put(f"~fill-{n}".encode(), b"x" * size, db=store.db[db])
                except StoreFull:
                    break
                n += 1
    for db in FILLED:  # the premise: the map is full for each
        with pytest.raises(StoreFull), store.write() as txn:
            txn.put(b"~one-more", b"x", db=store.db[db])


def _entry(size: int = 10) -> blobs.BlobEntry:
    return blobs.BlobEntry(size=size, sha256="00" * 32, md5="00" * 16, content_type="text/plain", created_ms=1)


def _session(session_id: str = "up1") -> blobs.UploadSession:
    return blobs.UploadSession(id=session_id, owner="t1", size=10, part_size=10, content_type="text/plain",
                               created_ms=1, expires_ms=2)


def _create_token(store: Store) -> Callable[[], None]:
    token, _ = tokens.create(store, role="reader", name="made-on-a-full-map")
    assert tokens.get(store, token.id) == token


def _revoke_token(store: Store) -> Callable[[], None]:
    made, _ = tokens.create(store, role="reader")
    return lambda: _revoked(store, made.id)


def _revoked(store: Store, token_id: str) -> None:
    tokens.revoke(store, token_id, at_ms=5)
    token = tokens.get(store, token_id)
    assert token is not None and token.revoked_at == 5


def _save_peers(store: Store) -> None:
    peers.save(store, [peers.PeerRecord(peer_id=f"12D3KooPeer{i}", addrs=["/ip4/127.0.0.1/tcp/1"]) for i in range(20)])
    assert len(peers.load(store)) == 20


def _put_blob(store: Store) -> None:
    assert blobs.put_blob(store, b"cid-new", _entry(10))
    assert blobs.get_blob(store, b"cid-new") == _entry(10)


def _blob_there(store: Store) -> Callable[[], None]:
    blobs.put_blob(store, b"cid-old", _entry(7))

    def replace_then_remove() -> None:
        held = _entry(7)
        held = blobs.BlobEntry(**{**{f: getattr(held, f) for f in held.__struct_fields__}, "holds": {"legal": "x"}})
        blobs.replace_blob(store, b"cid-old", held)
        assert blobs.get_blob(store, b"cid-old") == held
        assert blobs.remove_blob(store, b"cid-old") == held
        assert blobs.get_blob(store, b"cid-old") is None and blobs.blob_bytes(store) == 0
    return replace_then_remove


def _session_there(store: Store) -> Callable[[], None]:
    blobs.put_session(store, _session("up-old"))

    def update_then_delete() -> None:
        blobs.put_session(store, _session("up-new"))
        updated = blobs.update_session(store, "up-old", lambda s: None if s is None else
                                       blobs.UploadSession(**{**{f: getattr(s, f) for f in s.__struct_fields__},
                                                              "expires_ms": 99}))
        assert updated is not None and blobs.get_session(store, "up-old") == updated
        blobs.delete_session(store, "up-old")
        assert blobs.get_session(store, "up-old") is None and blobs.get_session(store, "up-new") is not None
    return update_then_delete


def _expired_entries(store: Store) -> Callable[[], None]:
    with store.write() as txn:
        for i in range(50):
            idempotency.remember(store, txn, "t1", f"key-{i}", idempotency.Entry(expires_at=1, request_hash=b"h"))

    def purge() -> None:
        assert idempotency.purge_expired(store, now_ms=2) == 50
    return purge


# Each case: a setup on the roomy map that returns the write to try once it
# is full (or None: the setup's own write is the one to try, done after).
WRITERS: dict[str, Callable[[Store], Callable[[], None] | None]] = {
    "a token made": lambda store: lambda: _create_token(store),
    "a token revoked": _revoke_token,
    "the peer table saved": lambda store: lambda: _save_peers(store),
    "a blob recorded": lambda store: lambda: _put_blob(store),
    "a blob's holds changed, then the blob removed": _blob_there,
    "upload sessions made, updated, deleted": _session_there,
    "expired idempotency entries purged": _expired_entries,
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_writer_beside_the_engine_grows_a_full_map_and_commits(tmp_path: Path, writer: str) -> None:
    store = Store(tmp_path, map_size=SMALL_MAP)
    try:
        write = WRITERS[writer](store)
        assert write is not None
        _fill(store)
        write()
        assert store.env.info()["map_size"] > SMALL_MAP and store.maps_grown >= 1
    finally:
        store.close()


def test_transact_redoes_the_work_on_a_fresh_transaction_after_growing(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=SMALL_MAP)
    try:
        _fill(store)
        tries: list[int] = []

        def work(txn: object) -> str:
            tries.append(1)
            store.put_meta(txn, "after-growth", "kept")  # type: ignore[arg-type]
            return "done"

        assert store.transact(work) == "done"
        assert len(tries) == 2 and store.maps_grown == 1  # once on the full map (aborted), once after
        with store.read() as txn:
            assert store.get_meta(txn, "after-growth") == "kept"
    finally:
        store.close()
