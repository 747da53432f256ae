"""The audit ledger: append-only, hash-chained, with signed Merkle tree heads.

Each entry records who did what to which record and why, with digests of the
record before and after. Entries form a hash chain (each names the hash of
the one before), so changing or removing one breaks every later link. The
entry hashes are also the leaves of an RFC 6962 Merkle tree; the node signs
the tree head (size, root) now and then, so an outsider holding a signed head
can check that the first ``size`` entries were never rewritten, even by
someone who recomputed the whole hash chain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import lmdb

from registrygrid.errors import IntegrityError, SignatureInvalid
from registrygrid.identity.keys import KeyPair, verify_did_signature
from registrygrid.protocol.merkle import MerkleFrontier, leaf_hash, node_hash  # noqa: F401 (re-exported)
from registrygrid.storage.store import Store, from_u64, pack, u64, unpack

ACTIONS = ("create", "update", "delete", "read", "deny", "remote", "merge", "erase")
GENESIS = b"\x00" * 32

# Sign a tree head at least every this many entries (and when the node
# stops): bounds how much history a tamperer could rewrite before a signed
# head pins it, at one signature (~20 us) per thousand entries.
SIGN_EVERY_ENTRIES = 1024


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at_ms: int
    actor: str
    action: str
    target: str
    reason: str
    before: str | None  # sha256 hex of the record before, None if absent
    after: str | None
    change: str | None  # change ID, when the action made one
    prev: bytes
    hash: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at_ms": self.at_ms,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "reason": self.reason,
            "before": self.before,
            "after": self.after,
            "change": self.change,
            "prev": self.prev.hex(),
            "hash": self.hash.hex(),
        }


def _entry_bytes(seq: int, at_ms: int, actor: str, action: str, target: str, reason: str,
                 before: str | None, after: str | None, change: str | None, prev: bytes) -> bytes:
    # Record digests are stored as their 32 bytes, shown as hex.
    return pack([seq, at_ms, actor, action, target, reason, _raw(before), _raw(after), change, prev])


def _raw(digest: str | None) -> bytes | None:
    return None if digest is None else bytes.fromhex(digest)


def _hex(digest: bytes | str | None) -> str | None:
    return digest.hex() if isinstance(digest, bytes) else digest  # a str: an entry of store format 2


def _decode(value: bytes) -> AuditEntry:
    body, digest = unpack(value)
    seq, at_ms, actor, action, target, reason, before, after, change, prev = unpack(body)
    return AuditEntry(seq, at_ms, actor, action, target, reason, _hex(before), _hex(after), change, prev, digest)


class AuditLedger:
    """Appends inside the caller's write transaction; state cached between batches."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.read() as txn:
            self._load(txn)

    def _load(self, txn: lmdb.Transaction) -> None:
        state = self.store.get_meta(txn, "audit.state")
        if state is None:
            self.last_seq, self.last_hash = 0, GENESIS
            self.frontier = MerkleFrontier()
            self.signed_size = 0
        else:
            self.last_seq, self.last_hash, (size, nodes), self.signed_size = state
            self.frontier = MerkleFrontier(size, nodes)

    def reload(self) -> None:
        """Forget unsaved state after an aborted transaction."""
        with self.store.read() as txn:
            self._load(txn)

    def append(self, txn: lmdb.Transaction, *, at_ms: int, actor: str, action: str, target: str,
               reason: str = "", before: str | None = None, after: str | None = None,
               change: str | None = None) -> int:
        seq = self.last_seq + 1
        body = _entry_bytes(seq, at_ms, actor, action, target, reason, before, after, change, self.last_hash)
        digest = hashlib.sha256(body).digest()
        txn.put(u64(seq), self.store.values.pack(txn, "audit", pack([body, digest])), db=self.store.db["audit"])
        self.frontier.append(leaf_hash(digest))
        self.last_seq, self.last_hash = seq, digest
        return seq

    def finish_batch(self, txn: lmdb.Transaction, key: KeyPair, now_ms: int, *, force: bool = False) -> None:
        """Persist the chain state; sign a tree head when enough entries piled up."""
        if self.frontier.size - self.signed_size >= SIGN_EVERY_ENTRIES or (
            force and self.frontier.size > self.signed_size
        ):
            self.sign_head(txn, key, now_ms)
        self.store.put_meta(
            txn, "audit.state", [self.last_seq, self.last_hash, self.frontier.to_state(), self.signed_size]
        )

    def sign_head(self, txn: lmdb.Transaction, key: KeyPair, now_ms: int) -> dict[str, Any]:
        root = self.frontier.root()
        size = self.frontier.size
        signed = pack([size, root, now_ms])
        head = {"size": size, "root": root, "at_ms": now_ms, "signer": key.did, "signature": key.sign(signed)}
        txn.put(u64(size), pack(head), db=self.store.db["audit_heads"])
        self.signed_size = size
        return head

    # ---- reading and verifying (any process, read-only) ----

    @staticmethod
    def entries(store: Store, *, since: int = 0, limit: int = 100, reverse: bool = False,
                target: str | None = None) -> list[AuditEntry]:
        """Up to ``limit`` entries after ``since`` (before or at it, newest
        first, with ``reverse``). ``target`` keeps only the entries about one
        thing ("REGISTRY/ID", "tokens/ID"); entries are not indexed by target,
        so a filtered read walks the ledger until ``limit`` entries match."""
        out: list[AuditEntry] = []
        with store.read() as txn:
            cursor = txn.cursor(db=store.db["audit"])
            if reverse:
                ok = cursor.set_range(u64(since)) if since else cursor.last()
                if since and not ok:
                    ok = cursor.last()
                while ok and len(out) < limit:
                    entry = _decode(store.values.unpack(txn, "audit", cursor.value(), cursor.key()))
                    if (not since or entry.seq <= since) and (target is None or entry.target == target):
                        out.append(entry)
                    ok = cursor.prev()
            else:
                if cursor.set_range(u64(since + 1)):
                    for at, value in cursor:
                        entry = _decode(store.values.unpack(txn, "audit", value, at))
                        if target is not None and entry.target != target:
                            continue
                        out.append(entry)
                        if len(out) >= limit:
                            break
        return out

    @staticmethod
    def heads(store: Store) -> list[dict[str, Any]]:
        with store.read() as txn:
            return [unpack(v) for _, v in txn.cursor(db=store.db["audit_heads"])]

    @staticmethod
    def verify(store: Store) -> dict[str, Any]:
        """Recheck every entry's hash, every chain link and every signed head.

        Raises IntegrityError naming the first bad entry or head."""
        with store.read() as txn:
            heads = {from_u64(k): unpack(v) for k, v in txn.cursor(db=store.db["audit_heads"])}
            frontier = MerkleFrontier()
            prev = GENESIS
            expected_seq = 1
            checked_heads = 0
            for raw_key, value in txn.cursor(db=store.db["audit"]):
                seq = from_u64(raw_key)
                try:
                    body, digest = unpack(store.values.unpack(txn, "audit", value, raw_key))
                    fields = unpack(body)
                except Exception:
                    raise IntegrityError(f"audit entry {seq} is not decodable", details={"entry": seq}) from None
                if seq != expected_seq or fields[0] != seq:
                    raise IntegrityError(f"audit entry {expected_seq} is missing (found {seq})",
                                         details={"entry": expected_seq})
                if hashlib.sha256(body).digest() != digest:
                    raise IntegrityError(f"audit entry {seq} was altered: its hash does not match",
                                         details={"entry": seq})
                if fields[-1] != prev:
                    raise IntegrityError(f"audit entry {seq} does not link to entry {seq - 1}",
                                         details={"entry": seq})
                frontier.append(leaf_hash(digest))
                prev = digest
                expected_seq += 1
                head = heads.get(frontier.size)
                if head is not None:
                    _check_head(head, frontier.root())
                    checked_heads += 1
            entries = expected_seq - 1
            for size, head in heads.items():
                if size > entries:
                    raise IntegrityError(
                        f"a signed tree head covers {size} entries but the ledger holds {entries}: entries were removed",
                        details={"head": size},
                    )
        return {"entries": entries, "signed_heads": checked_heads, "root": frontier.root().hex()}


def _check_head(head: dict[str, Any], root: bytes) -> None:
    size = head["size"]
    if head["root"] != root:
        raise IntegrityError(
            f"signed tree head at size {size} does not match the entries: history was rewritten",
            details={"head": size},
        )
    try:
        verify_did_signature(head["signer"], pack([size, head["root"], head["at_ms"]]), head["signature"])
    except SignatureInvalid:
        raise IntegrityError(f"signed tree head at size {size} has a bad signature", details={"head": size}) from None
