"""Author chains: ``chains`` maps registry \\0 author \\0 seq -> change id.

An author's head in a registry (the version vector entry) is the last link
of its chain, found with one seek; store format 1 kept heads in a
sub-database of their own, one more B-tree for every write to dirty.
"""

from __future__ import annotations

from collections.abc import Iterator

import lmdb

from registrygrid.storage.store import SEP, Store, from_u64, key, u64

# Sorts after "\0" + any 8-byte sequence of a chain's keys, before the next
# chain (names never hold "\0", so the next chain's key differs earlier).
_PAST_ANY_SEQ = SEP + b"\xff" * 9


def _last_link(cursor: lmdb.Cursor, chain: bytes) -> tuple[int, bytes] | None:
    """Position ``cursor`` on ``chain``'s last link; its (seq, change id)."""
    found = cursor.prev() if cursor.set_range(chain + _PAST_ANY_SEQ) else cursor.last()
    if not found:
        return None
    last = cursor.key()
    if len(last) != len(chain) + 9 or not last.startswith(chain + SEP):
        return None
    return from_u64(last[-8:]), cursor.value()


def head(store: Store, txn: lmdb.Transaction, registry: str, author: str) -> tuple[int, bytes]:
    """(seq, change id) of the author's last change in ``registry``, or (0, b"")."""
    return _last_link(txn.cursor(db=store.db["chains"]), key(registry, author)) or (0, b"")


def heads(store: Store, txn: lmdb.Transaction, registry: str | None = None) -> dict[str, dict[str, int]]:
    """registry -> author -> seq of the last link: a skip-scan, one seek per chain."""
    out: dict[str, dict[str, int]] = {}
    prefix = b"" if registry is None else registry.encode() + SEP
    cursor = txn.cursor(db=store.db["chains"])
    found = cursor.set_range(prefix)
    while found and cursor.key().startswith(prefix):
        chain = cursor.key()[:-9]  # registry \0 author, without \0 seq
        link = _last_link(cursor, chain)
        assert link is not None, "a chain seen a moment ago has a last link"
        reg, author = chain.split(SEP, 1)
        out.setdefault(reg.decode(), {})[author.decode()] = link[0]
        found = cursor.set_range(chain + _PAST_ANY_SEQ)
    return out


def link(store: Store, txn: lmdb.Transaction, registry: str, author: str, seq: int, cid: bytes) -> None:
    """Add the author's change ``seq`` (applied or refused) to its chain."""
    txn.put(key(registry, author) + SEP + u64(seq), cid, db=store.db["chains"])


def at(store: Store, txn: lmdb.Transaction, registry: str, author: str, seq: int) -> bytes | None:
    """The change ID at ``seq`` of the author's chain, if held."""
    return txn.get(key(registry, author) + SEP + u64(seq), db=store.db["chains"])


def links_after(store: Store, txn: lmdb.Transaction, registry: str, author: str,
                after_seq: int) -> Iterator[tuple[int, bytes]]:
    """(seq, change ID) of the author's chain past ``after_seq``, in order."""
    prefix = key(registry, author) + SEP
    for k, cid in store.iter_prefix(txn, "chains", prefix, start=prefix + u64(after_seq + 1)):
        yield from_u64(k[len(prefix):]), cid


def iter_links(store: Store, txn: lmdb.Transaction) -> Iterator[tuple[str, str, int, bytes]]:
    """Every link of every chain: (registry, author, seq, change ID), in key order."""
    for k, cid in txn.cursor(db=store.db["chains"]):
        registry, author = k[:-9].split(SEP, 1)
        yield registry.decode(), author.decode(), from_u64(k[-8:]), cid
