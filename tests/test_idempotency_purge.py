"""The purge of expired retry answers against a key reused meanwhile.

The purge lists expired keys in one read transaction and deletes them in a
later write. A client that reused an expired key between the two had its
fresh answer deleted, so its retry was made afresh: a second record."""

from __future__ import annotations

from pathlib import Path

import pytest

from registrygrid.storage import idempotency
from registrygrid.storage.store import Store

NOW = 1_000_000_000


def test_an_answer_stored_again_between_the_purges_scan_and_its_delete_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "store")
    try:
        old = idempotency.Entry(expires_at=NOW - 1, request_hash=b"old", status=201, body=b'{"id": "OLD"}')
        store.transact(lambda txn: idempotency.remember(store, txn, "token", "K1", old))
        store.transact(lambda txn: idempotency.remember(store, txn, "token", "K2", old))
        real = store.transact

        def reused_then_purged(work, **options):  # type: ignore[no-untyped-def]
            # Between the scan and the delete: the client retries K1 as a new
            # request (its entry looked expired), which stores a fresh answer.
            monkeypatch.setattr(store, "transact", real)
            fresh = idempotency.Entry(expires_at=NOW + 86_400_000, request_hash=b"new", status=201,
                                      body=b'{"id": "NEW"}')
            real(lambda txn: idempotency.remember(store, txn, "token", "K1", fresh))
            return real(work, **options)

        monkeypatch.setattr(store, "transact", reused_then_purged)
        assert idempotency.purge_expired(store, now_ms=NOW) == 1  # K2 only
        kept = idempotency.lookup(store, "token", "K1", now_ms=NOW + 1)
        assert kept is not None and kept.body == b'{"id": "NEW"}'
        assert idempotency.lookup(store, "token", "K2", now_ms=0) is None
    finally:
        store.close()
