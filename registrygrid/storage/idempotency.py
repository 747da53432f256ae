"""Idempotency keys of the HTTP bridge: a retried POST gets the first answer.

A client that sends ``Idempotency-Key: K`` with a POST and retries after a
timeout must not create a second record. The bridge keeps, per token and
key, a hash of the request and the response (status, body, the headers that
matter). A retry with the same key and the same request replays that
response; the same key with another request is refused.

The entry is written by the engine in the write's own transaction
(``remember``, engine op ``Remembered``): the write and its entry are
durable together in one commit, or neither is, so a retry after any crash
either replays the answer or makes the write afresh. A request refused
before it wrote anything leaves no entry. (Earlier versions of the bridge
reserved the key in a commit of its own before the write and stored the
answer in a third after it; an entry such a bridge left reserved, without
an answer, still gives a retry the record id it reserved.)

Layout (sub-database ``idempotency``, see ``storage/store.py``):
``token id \\0 key`` -> msgpack [expires_at_ms, request sha256, reserved map,
status or None, body bytes or None, headers map or None].
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registrygrid.errors import ValidationError
from registrygrid.storage.store import Store, key, pack, unpack

if TYPE_CHECKING:
    import lmdb

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


def remember(store: Store, txn: lmdb.Transaction, token_id: str, idem_key: str, entry: Entry) -> None:
    """Keep ``entry`` (with its answer) in the caller's write transaction."""
    txn.put(_key(token_id, idem_key), _pack(entry), db=store.db["idempotency"])


def forget_answers_about(store: Store, txn: lmdb.Transaction, registry: str, record_id: str) -> int:
    """Delete every entry whose answer is a write of ``registry/record_id``
    (the erasure of that record, in its own transaction): the answer holds
    the record as written, which a replay of its key handed out for a day
    after the erasure. A retry of such a key is then made afresh, and is
    refused as the erased id is. A scan of the table (a day of keyed
    writes at most), each answer looked into only if it names the id."""
    db = store.db["idempotency"]
    needle = json.dumps(record_id).encode()
    doomed = []
    for k, v in txn.cursor(db=db):
        body = unpack(v)[4]
        if not body or needle not in body:
            continue
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            continue
        if isinstance(answer, dict) and answer.get("registry") == registry and answer.get("id") == record_id:
            doomed.append(k)
    for k in doomed:
        txn.delete(k, db=db)
    return len(doomed)


def purge_expired(store: Store, *, now_ms: int, limit: int = 10_000) -> int:
    """Delete up to ``limit`` expired entries (bounded so one purge never holds the writer long)."""
    db = store.db["idempotency"]
    with store.read() as txn:
        stale = [k for k, v in txn.cursor(db=db) if unpack(v)[0] <= now_ms][:limit]
    if not stale:
        return 0

    def delete(txn: lmdb.Transaction) -> int:
        # Each looked at again: a key reused since the scan holds a fresh
        # answer now, and deleting it blindly let a retry write twice.
        gone = 0
        for k in stale:
            v = txn.get(k, db=db)
            if v is not None and unpack(v)[0] <= now_ms:
                txn.delete(k, db=db)
                gone += 1
        return gone

    return int(store.transact(delete))
