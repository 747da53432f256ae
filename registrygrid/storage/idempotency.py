"""Idempotency keys of the HTTP bridge: a retried POST gets the first answer.

A client that sends ``Idempotency-Key: K`` with a POST and retries after a
timeout must not create a second record. The bridge keeps, per token and
key, a hash of the request and, once it has one, the response (status, body,
the headers that matter). A retry with the same key and the same request
replays that response; the same key with another request is refused.

Two steps, both durable:

1. ``reserve`` before the write, with anything the write must reuse on a
   retry (the record id the bridge chose for a POST without one);
2. ``complete`` after it, with the response.

If the node dies between the write's commit and step 2, the retry finds a
reservation without a response, redoes the write with the reserved record
id, and the engine answers "already exists" instead of creating a twin.

Layout (sub-database ``idempotency``, see ``storage/store.py``):
``token id \\0 key`` -> msgpack [expires_at_ms, request sha256, reserved map,
status or None, body bytes or None, headers map or None].
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from registrygrid.errors import ValidationError
from registrygrid.storage.store import Store, key, pack, unpack

# 24 hours, as Stripe keeps its idempotency keys: longer than any sane
# client retry loop, short enough that the table stays small.
DEFAULT_TTL_MS = 24 * 3600 * 1000
# The IETF draft (draft-ietf-httpapi-idempotency-key-header) makes the key an
# opaque string; 255 visible ASCII characters cover UUIDs and ULIDs many
# times over and keep the LMDB key (token id + key) under its 511-byte cap.
MAX_KEY = 255
KEY_PATTERN = f"^[!-~]{{1,{MAX_KEY}}}$"  # !-~: 0x21-0x7e
_KEY = re.compile(KEY_PATTERN)


@dataclass
class Entry:
    expires_at: int
    request_hash: bytes
    reserved: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    body: bytes | None = None
    headers: dict[str, str] | None = None

    @property
    def done(self) -> bool:
        return self.status is not None


def check_key(value: str) -> str:
    if not _KEY.fullmatch(value):
        raise ValidationError(f"Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters",
                              details=[{"path": "header:Idempotency-Key", "message": "invalid"}])
    return value


def _key(token_id: str, idem_key: str) -> bytes:
    return key(token_id, idem_key)


def _pack(entry: Entry) -> bytes:
    return pack([entry.expires_at, entry.request_hash, entry.reserved, entry.status, entry.body, entry.headers])


def lookup(store: Store, token_id: str, idem_key: str, *, now_ms: int) -> Entry | None:
    with store.read() as txn:
        raw = txn.get(_key(token_id, idem_key), db=store.db["idempotency"])
    if raw is None:
        return None
    entry = Entry(*unpack(raw))
    return None if entry.expires_at <= now_ms else entry


def reserve(store: Store, token_id: str, idem_key: str, request_hash: bytes, *, now_ms: int,
            ttl_ms: int = DEFAULT_TTL_MS, reserved: dict[str, Any] | None = None) -> Entry:
    entry = Entry(now_ms + ttl_ms, request_hash, dict(reserved or {}))
    with store.write() as txn:
        txn.put(_key(token_id, idem_key), _pack(entry), db=store.db["idempotency"])
    return entry


def complete(store: Store, token_id: str, idem_key: str, entry: Entry, *, status: int, body: bytes,
             headers: dict[str, str]) -> None:
    entry.status, entry.body, entry.headers = status, body, dict(headers)
    with store.write() as txn:
        txn.put(_key(token_id, idem_key), _pack(entry), db=store.db["idempotency"])


def forget(store: Store, token_id: str, idem_key: str) -> None:
    """Drop a reservation whose request failed before it could have written anything."""
    with store.write() as txn:
        txn.delete(_key(token_id, idem_key), db=store.db["idempotency"])


def purge_expired(store: Store, *, now_ms: int, limit: int = 10_000) -> int:
    """Delete up to ``limit`` expired entries (bounded so one purge never holds the writer long)."""
    db = store.db["idempotency"]
    with store.read() as txn:
        stale = [k for k, v in txn.cursor(db=db) if unpack(v)[0] <= now_ms][:limit]
    if stale:
        with store.write() as txn:
            for k in stale:
                txn.delete(k, db=db)
    return len(stale)
