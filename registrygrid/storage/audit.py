"""The audit ledger: append-only, hash-chained, with signed Merkle tree heads.

Each entry records who did what to which record and why, with digests of the
record before and after. Entries form a hash chain (each names the hash of
the one before), so changing or removing one breaks every later link. The
entry hashes are also the leaves of an RFC 6962 Merkle tree; the node signs
the tree head (size, root) now and then, so an outsider holding a signed head
can check that the first ``size`` entries were never rewritten, even by
someone who recomputed the whole hash chain.

``verify`` takes the keys whose heads it trusts (the node's own, current
and retired): a head is only as good as its signer, and a rewrite that
re-signed every head with a key of its own passed while the signer was
read from the head itself. It also holds the ledger to the state it keeps
of itself (last entry, its hash, the size last signed), so entries cut
from the end, or heads deleted, are named too. Whoever holds the node's
key can still rewrite what no outside copy of a head pins.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from collections.abc import Collection
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


def _decode(value: bytes, seq: int) -> AuditEntry:
    """The entry stored under ``seq``; IntegrityError if it is not one."""
    try:
        body, digest = unpack(value)
        seq_in, at_ms, actor, action, target, reason, before, after, change, prev = unpack(body)
        entry = AuditEntry(seq_in, at_ms, actor, action, target, reason, _hex(before), _hex(after), change, prev,
                           digest)
        if not (isinstance(seq_in, int) and isinstance(at_ms, int) and all(isinstance(v, str) for v in (
                actor, action, target, reason)) and isinstance(prev, bytes) and isinstance(digest, bytes)):
            raise TypeError("a member of the wrong type")
    except Exception:  # msgspec's, unpacking's or hex's: any way an altered value fails
        raise IntegrityError(f"audit entry {seq} is not decodable: the ledger was altered; `rgrid audit verify` "
                             "names where", details={"entry": seq}) from None
    return entry


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

    def sign_head(self, txn: lmdb.Transaction, key: KeyPair, now_ms: int) -> dict[str, Any] | None:
        """Sign the tree head the cached state describes, unless the ledger's
        last entry is not the one that state names (entries were cut or
        altered while no node ran): a head signed then would vouch for a root
        nobody checked. Verify names the damage instead."""
        if self.last_seq:
            stored = txn.get(u64(self.last_seq), db=self.store.db["audit"])
            after = txn.cursor(db=self.store.db["audit"])
            last_key = after.key() if after.last() else None
            try:
                digest = None if stored is None else unpack(self.store.values.unpack(
                    txn, "audit", stored, u64(self.last_seq)))[1]
            except Exception:
                digest = None
            if digest != self.last_hash or last_key != u64(self.last_seq):
                return None
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
                    entry = _decode(_unpacked(store, txn, cursor.value(), cursor.key()), from_u64(cursor.key()))
                    if (not since or entry.seq <= since) and (target is None or entry.target == target):
                        out.append(entry)
                    ok = cursor.prev()
            else:
                if cursor.set_range(u64(since + 1)):
                    for at, value in cursor:
                        entry = _decode(_unpacked(store, txn, value, at), from_u64(at))
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
    def verify(store: Store, signers: Collection[str]) -> dict[str, Any]:
        """Recheck every entry's hash, every chain link, every signed head
        (signed by one of ``signers``, the node's keys) and the ledger's own
        state of itself.

        Raises IntegrityError naming the first bad entry or head."""
        with store.read() as txn:
            heads = {}
            for k, v in txn.cursor(db=store.db["audit_heads"]):
                try:
                    heads[from_u64(k)] = unpack(v)
                except Exception:
                    raise IntegrityError(f"signed tree head at size {from_u64(k)} is not decodable",
                                         details={"head": from_u64(k)}) from None
            state = store.get_meta(txn, "audit.state")
            frontier = MerkleFrontier()
            prev = GENESIS
            expected_seq = 1
            checked_heads = 0
            for raw_key, value in txn.cursor(db=store.db["audit"]):
                seq = from_u64(raw_key)
                try:
                    body, digest = unpack(_unpacked(store, txn, value, raw_key))
                    fields = unpack(body)
                    claimed = fields[0]
                    if not (isinstance(fields, list) and len(fields) == 10 and isinstance(digest, bytes)):
                        raise TypeError("not an entry")
                except Exception:
                    raise IntegrityError(f"audit entry {seq} is not decodable", details={"entry": seq}) from None
                if seq != expected_seq:
                    raise IntegrityError(f"audit entry {expected_seq} is missing (the next one held is {seq})",
                                         details={"entry": expected_seq})
                if claimed != seq:
                    raise IntegrityError(f"audit entry {seq} says it is entry {claimed!r}: entries were moved",
                                         details={"entry": seq})
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
                    _check_head(head, frontier.size, frontier.root(), signers)
                    checked_heads += 1
            entries = expected_seq - 1
            for size, head in heads.items():
                if size > entries:
                    raise IntegrityError(
                        f"a signed tree head covers {size} entries but the ledger holds {entries}: entries were removed",
                        details={"head": size},
                    )
            _check_state(state, entries, prev, heads)
        return {"entries": entries, "signed_heads": checked_heads, "root": frontier.root().hex()}


def _unpacked(store: Store, txn: lmdb.Transaction, value: bytes, at: bytes) -> bytes:
    try:
        return store.values.unpack(txn, "audit", value, at)  # type: ignore[no-any-return]
    except Exception:  # the codec's IntegrityError too: named by its entry, as the other ways
        seq = from_u64(at)
        raise IntegrityError(f"audit entry {seq} is not decodable", details={"entry": seq}) from None


def _check_state(state: Any, entries: int, last_hash: bytes, heads: dict[int, Any]) -> None:
    """The ledger against what it keeps of itself (written with every
    batch): entries cut from its end, or its heads deleted, leave every
    remaining link intact, and only this state remembers them."""
    if state is None:
        if entries:
            raise IntegrityError(f"the ledger holds {entries} entries but no state of itself: it was altered",
                                 details={"entry": 1})
        return
    try:
        last_seq, kept_hash, _, signed_size = state
    except (TypeError, ValueError):
        raise IntegrityError("the audit ledger's state of itself is not decodable", details={}) from None
    if last_seq > entries:
        raise IntegrityError(f"audit entries {entries + 1}..{last_seq} were removed: the ledger held {last_seq}",
                             details={"entry": entries + 1})
    if last_seq < entries:
        raise IntegrityError(f"audit entries {last_seq + 1}..{entries} were added behind the ledger's back: it "
                             f"wrote {last_seq}", details={"entry": last_seq + 1})
    if kept_hash != last_hash:
        raise IntegrityError(f"audit entry {entries} is not the one the ledger wrote last: history was rewritten",
                             details={"entry": entries})
    if signed_size and signed_size <= entries and signed_size not in heads:
        raise IntegrityError(f"the signed tree head at size {signed_size} was removed", details={"head": signed_size})


def _check_head(head: dict[str, Any], size: int, root: bytes, signers: Collection[str]) -> None:
    if not isinstance(head, dict) or head.get("size") != size:
        raise IntegrityError(f"signed tree head at size {size} is not a head of that size", details={"head": size})
    if head.get("signer") not in signers:
        raise IntegrityError(f"signed tree head at size {size} is signed by {head.get('signer')!r}, not by this "
                             "node's key: the ledger was re-signed", details={"head": size})
    if head.get("root") != root:
        raise IntegrityError(
            f"signed tree head at size {size} does not match the entries: history was rewritten",
            details={"head": size},
        )
    try:
        verify_did_signature(head["signer"], pack([size, head["root"], head["at_ms"]]), head["signature"])
    except (SignatureInvalid, KeyError, TypeError, ValueError):
        raise IntegrityError(f"signed tree head at size {size} has a bad signature", details={"head": size}) from None
