"""Author chains: ``chains`` maps registry \\0 code(author) seq -> change id.

The author is its 4-byte code (storage/codes.py): a DID would be 56 bytes
of every link's key. An author's head in a registry (the version vector
entry) is the last link of its chain, found with one seek; store format 1
kept heads in a sub-database of their own, one more B-tree for every write
to dirty.
"""

from __future__ import annotations

from collections.abc import Iterator

import lmdb

from registrygrid.storage.codes import CODE_BYTES
from registrygrid.storage.store import SEP, Store, from_u64, u64

# Sorts after every link of a chain (its keys are the chain's prefix and 8
# bytes of seq), before the next chain (whose code, or registry, differs).
_PAST_ANY_SEQ = b"\xff" * 9
_TAIL = 1 + CODE_BYTES + 8  # \0, code, seq: what follows the registry in a key


def _chain(store: Store, txn: lmdb.Transaction, registry: str, author: str, *, assign: bool = False) -> bytes | None:
    """The key prefix of the author's chain in ``registry`` (None: the store
    has never seen the author, so it has no chain)."""
    code = store.codes.assign(txn, author) if assign else store.codes.code(txn, author)
    return None if code is None else registry.encode() + SEP + code


def _last_link(cursor: lmdb.Cursor, chain: bytes) -> tuple[int, bytes] | None:
    """Position ``cursor`` on ``chain``'s last link; its (seq, change id)."""
    found = cursor.prev() if cursor.set_range(chain + _PAST_ANY_SEQ) else cursor.last()
    if not found:
        return None
    last = cursor.key()
    if len(last) != len(chain) + 8 or not last.startswith(chain):
        return None
    return from_u64(last[-8:]), cursor.value()


def head(store: Store, txn: lmdb.Transaction, registry: str, author: str) -> tuple[int, bytes]:
    """(seq, change id) of the author's last change in ``registry``, or (0, b"")."""
    chain = _chain(store, txn, registry, author)
    if chain is None:
        return 0, b""
    return _last_link(txn.cursor(db=store.db["chains"]), chain) or (0, b"")


def heads(store: Store, txn: lmdb.Transaction, registry: str | None = None) -> dict[str, dict[str, int]]:
    """registry -> author -> seq of the last link: a skip-scan, one seek per chain."""
    return {reg: {author: seq for author, (seq, _) in authors.items()}
            for reg, authors in head_links(store, txn, registry).items()}


def head_links(store: Store, txn: lmdb.Transaction,
               registry: str | None = None) -> dict[str, dict[str, tuple[int, bytes]]]:
    """registry -> author -> (seq, ID) of the last link: a skip-scan, one
    seek per chain."""
    out: dict[str, dict[str, tuple[int, bytes]]] = {}
    prefix = b"" if registry is None else registry.encode() + SEP
    cursor = txn.cursor(db=store.db["chains"])
    found = cursor.set_range(prefix)
    while found and cursor.key().startswith(prefix):
        chain = cursor.key()[:-8]  # registry \0 code, without the seq
        link = _last_link(cursor, chain)
        assert link is not None, "a chain seen a moment ago has a last link"
        author = store.codes.name(txn, chain[-CODE_BYTES:])
        out.setdefault(chain[:-CODE_BYTES - 1].decode(), {})[author] = link
        found = cursor.set_range(chain + _PAST_ANY_SEQ)
    return out


def link(store: Store, txn: lmdb.Transaction, registry: str, author: str, seq: int, cid: bytes) -> None:
    """Add the author's change ``seq`` (applied or refused) to its chain."""
    chain = _chain(store, txn, registry, author, assign=True)
    assert chain is not None
    txn.put(chain + u64(seq), cid, db=store.db["chains"])


def at(store: Store, txn: lmdb.Transaction, registry: str, author: str, seq: int) -> bytes | None:
    """The change ID at ``seq`` of the author's chain, if held."""
    chain = _chain(store, txn, registry, author)
    return None if chain is None else txn.get(chain + u64(seq), db=store.db["chains"])


def links_after(store: Store, txn: lmdb.Transaction, registry: str, author: str,
                after_seq: int) -> Iterator[tuple[int, bytes]]:
    """(seq, change ID) of the author's chain past ``after_seq``, in order."""
    chain = _chain(store, txn, registry, author)
    if chain is None:
        return
    for k, cid in store.iter_prefix(txn, "chains", chain, start=chain + u64(after_seq + 1)):
        yield from_u64(k[len(chain):]), cid


def iter_links(store: Store, txn: lmdb.Transaction) -> Iterator[tuple[str, str, int, bytes]]:
    """Every link of every chain: (registry, author, seq, change ID), in key order."""
    for k, cid in txn.cursor(db=store.db["chains"]):
        yield (k[:-_TAIL].decode(), store.codes.name(txn, k[-_TAIL + 1:-8]), from_u64(k[-8:]), cid)
