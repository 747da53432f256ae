"""What this node erased, and what erasure notices vouch for (docs/erasure.md).

    erasures  'r' registry \\0 record              -> msgpack [notice id, state(, owner, hlc, create id)]
                                                   state: "erased" (honoured here), "waiting" (the
                                                   notice is held, its record not yet), "refused"
                                                   (its signer may not erase the record as held here),
                                                   "void" (it erased the record here, then stopped
                                                   counting: its signer's key was revoked before it);
                                                   once erased, the erased record's owner and its
                                                   winning create (a create race's yardstick)
              'c' change id                        -> msgpack [registry, record, author, seq, notice id]
                                                   (a change whose body was erased)
              'g' registry \\0 author \\0 u64(first) -> msgpack [last, notice id, record]
                                                   (chain positions a notice vouches were the erased
                                                   record's: a gap there is filled without the body;
                                                   under PAST_CUTOFF, places past the author's
                                                   revocation cutoff, where nothing counts; under
                                                   GONE, places a peer said are gone)
              'h' registry \\0 record \\0 Automerge hash -> notice id
                                                   (the Automerge changes of erased changes of a
                                                   record another org's create still holds: a change
                                                   built on one is erased on arrival too)
              'v' notice id                        -> b"" (a notice that no longer counts: what it
                                                   erased is taken again from a peer that kept it)
              'o' notice id                        -> msgpack [[author, seq], ...] (places of its
                                                   org's chains this node erased under the notice
                                                   but could not list: its key could not write
                                                   then; listed once its delegation is renewed)

An erased change keeps its place in its author's chain (``chains`` still
maps its sequence number to its ID) and an entry in ``changes`` without a
body (storage/changes.py ``put_erased``), so the chain, the version vector
and dedupe hold; only the bytes are gone. A position a notice vouches for
whose change this node never saw is linked to ``UNSEEN``: the ID is learned
from the author's next change (its ``prev``), the only party that can
vouch for it, and the link is then rewritten.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lmdb

from registrygrid.storage.store import SEP, Store, from_u64, key, pack, u64, unpack

# A chain link whose change this node never saw (36 bytes, as a change ID;
# never a real one: a CID starts with its version byte, 0x01).
UNSEEN = b"\x00" * 36

ERASED, WAITING, REFUSED, VOID = "erased", "waiting", "refused", "void"
# The notice id that chain positions past their author's revocation cutoff
# are vouched under: no change there counts anywhere, so a gap there (bytes
# no node has: an erased change whose notice stopped counting) is linked
# past without them, the revocation its warrant (never a notice's id).
PAST_CUTOFF = "past-revocation-cutoff"
# The notice id that chain places are vouched under on a peer's word that
# they are gone where it was (a sync answer: protocol/sync.py GonePlace):
# erased there by a notice that no longer counts, their bytes kept nowhere
# it knows. Held as void, so each such change is asked for by ID on every
# sync (engine/gone.py) and taken in if its bytes come (never a notice's id).
GONE = "gone-at-peers"


def burned(state: str) -> bool:
    """Whether a record in this state answers 410 and its id takes no
    write: erased here, or waiting to be (its notice is held, the record
    not yet). A refused notice, or one that no longer counts, burns nothing."""
    return state in (ERASED, WAITING)


def any_held(store: Store, txn: lmdb.Transaction) -> bool:
    """Whether this store holds any erasure at all (one page read)."""
    # A read-only open of a store from before erasures has no such sub-database.
    return "erasures" in store.db and txn.stat(store.db["erasures"])["entries"] > 0


def mark(store: Store, txn: lmdb.Transaction, registry: str, record: str) -> tuple[str, str] | None:
    """(notice id, state) of the record's erasure notice, if one is held."""
    if "erasures" not in store.db:
        return None
    raw = txn.get(b"r" + key(registry, record), db=store.db["erasures"])
    if raw is None:
        return None
    notice, state = unpack(raw)[:2]
    return notice, state


def erased_create(store: Store, txn: lmdb.Transaction, registry: str,
                  record: str) -> tuple[str, tuple[int, int], bytes] | None:
    """(owner, hlc, change id) of the erased record's winning create, if kept."""
    if "erasures" not in store.db:
        return None
    raw = txn.get(b"r" + key(registry, record), db=store.db["erasures"])
    value = unpack(raw) if raw is not None else []
    if len(value) < 5:
        return None
    return value[2], (value[3][0], value[3][1]), value[4]


def set_mark(store: Store, txn: lmdb.Transaction, registry: str, record: str, notice: str, state: str,
             winner: tuple[str, tuple[int, int], bytes] | None = None) -> None:
    row: list[object] = [notice, state]
    if winner is not None:
        row += [winner[0], list(winner[1]), winner[2]]
    txn.put(b"r" + key(registry, record), pack(row), db=store.db["erasures"])


def put_change(store: Store, txn: lmdb.Transaction, cid: bytes, registry: str, record: str, author: str,
               seq: int, notice: str) -> None:
    txn.put(b"c" + cid, pack([registry, record, author, seq, notice]), db=store.db["erasures"])


def change(store: Store, txn: lmdb.Transaction, cid: bytes) -> dict[str, Any] | None:
    """What is known of an erased change: registry, record, author, seq, notice."""
    if "erasures" not in store.db:
        return None
    raw = txn.get(b"c" + cid, db=store.db["erasures"])
    if raw is None:
        return None
    registry, record, author, seq, notice = unpack(raw)
    return {"registry": registry, "record": record, "author": author, "seq": seq, "notice": notice}


def drop_change(store: Store, txn: lmdb.Transaction, cid: bytes) -> None:
    """A change erased here is held again (its notice no longer counts)."""
    txn.delete(b"c" + cid, db=store.db["erasures"])


def restorable(store: Store, txn: lmdb.Transaction) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(change id, what is known of it) of every change erased here by a
    notice that no longer counts: its bytes may be taken again."""
    if "erasures" not in store.db or not any_void(store, txn):
        return
    void: dict[str, bool] = {}
    for k, raw in store.iter_prefix(txn, "erasures", b"c"):
        registry, record, author, seq, notice = unpack(raw)
        if void.setdefault(notice, is_void(store, txn, notice)):
            yield k[1:], {"registry": registry, "record": record, "author": author, "seq": seq, "notice": notice}


def put_void(store: Store, txn: lmdb.Transaction, notice: str) -> None:
    txn.put(b"v" + notice.encode(), b"", db=store.db["erasures"])


def is_void(store: Store, txn: lmdb.Transaction, notice: str) -> bool:
    """Whether ``notice`` erased something here and then stopped counting."""
    return "erasures" in store.db and txn.get(b"v" + notice.encode(), db=store.db["erasures"]) is not None


def any_void(store: Store, txn: lmdb.Transaction) -> bool:
    return next(iter(store.iter_prefix(txn, "erasures", b"v")), None) is not None


def owe(store: Store, txn: lmdb.Transaction, notice: str, places: list[tuple[str, int]]) -> None:
    """Keep the places this node erased under ``notice`` but could not list."""
    k = b"o" + notice.encode()
    held = txn.get(k, db=store.db["erasures"])
    known = {(author, seq) for author, seq in unpack(held)} if held is not None else set()
    txn.put(k, pack([list(place) for place in sorted(known | set(places))]), db=store.db["erasures"])


def owed(store: Store, txn: lmdb.Transaction) -> list[tuple[str, list[tuple[str, int]]]]:
    """(notice id, places) of every supplement this node still owes."""
    if "erasures" not in store.db:
        return []
    return [(k[1:].decode(), [(author, seq) for author, seq in unpack(raw)])
            for k, raw in store.iter_prefix(txn, "erasures", b"o")]


def paid(store: Store, txn: lmdb.Transaction, notice: str) -> None:
    txn.delete(b"o" + notice.encode(), db=store.db["erasures"])


def put_hash(store: Store, txn: lmdb.Transaction, registry: str, record: str, automerge_hash: bytes,
             notice: str) -> None:
    txn.put(b"h" + key(registry, record) + SEP + automerge_hash, notice.encode(), db=store.db["erasures"])


def drop_hash(store: Store, txn: lmdb.Transaction, registry: str, record: str, automerge_hash: bytes) -> None:
    txn.delete(b"h" + key(registry, record) + SEP + automerge_hash, db=store.db["erasures"])


def is_erased_hash(store: Store, txn: lmdb.Transaction, registry: str, record: str, automerge_hash: bytes) -> bool:
    """Whether this node erased the change whose Automerge hash this is."""
    return txn.get(b"h" + key(registry, record) + SEP + automerge_hash, db=store.db["erasures"]) is not None


def vouch(store: Store, txn: lmdb.Transaction, registry: str, author: str, first: int, last: int,
          notice: str, record: str) -> None:
    """Record that ``notice`` (erasing ``record``) vouches for positions
    first..last of the chain (a range that starts where another does keeps
    the longer of the two)."""
    k = b"g" + key(registry, author) + SEP + u64(first)
    held = txn.get(k, db=store.db["erasures"])
    if held is not None and unpack(held)[0] >= last:
        return
    txn.put(k, pack([last, notice, record]), db=store.db["erasures"])


def vouched(store: Store, txn: lmdb.Transaction, registry: str, author: str, seq: int) -> tuple[str, str] | None:
    """(notice id, record) of the notice that vouches for position ``seq`` of
    the chain, if any: a range starting at or before ``seq`` that reaches it."""
    if "erasures" not in store.db:
        return None
    chain = b"g" + key(registry, author) + SEP
    cursor = txn.cursor(db=store.db["erasures"])
    if cursor.set_range(chain + u64(seq + 1)):
        found = cursor.prev()
    else:
        found = cursor.last()
    while found and cursor.key().startswith(chain):
        last, notice, record = unpack(cursor.value())
        if last >= seq:
            return notice, record
        found = cursor.prev()  # an earlier range may be wider (ranges of several notices overlap)
    return None


def vouched_ranges(store: Store, txn: lmdb.Transaction) -> Iterator[tuple[str, str, int, int, str]]:
    """(registry, author, first, last, notice id) of every range of chain
    places a notice (or a warrant: PAST_CUTOFF, GONE) vouches for."""
    if "erasures" not in store.db:
        return
    for k, raw in store.iter_prefix(txn, "erasures", b"g"):
        registry, author, first = k[1:].split(SEP, 2)
        last, notice, _ = unpack(raw)
        yield registry.decode(), author.decode(), from_u64(first), last, notice


def iter_marks(store: Store, txn: lmdb.Transaction) -> Iterator[tuple[str, str, str, str]]:
    """(registry, record, notice id, state) of every record a notice names."""
    if "erasures" not in store.db:
        return
    for k, value in store.iter_prefix(txn, "erasures", b"r"):
        registry, record = k[1:].split(SEP, 1)
        notice, state = unpack(value)[:2]
        yield registry.decode(), record.decode(), notice, state


def counts(store: Store, txn: lmdb.Transaction) -> dict[str, int]:
    """How many records are erased (or waiting, or refused) and changes erased here."""
    out = {ERASED: 0, WAITING: 0, REFUSED: 0, VOID: 0, "changes": 0}
    if "erasures" not in store.db:
        return out
    for k, value in store.iter_prefix(txn, "erasures", b""):
        if k[:1] == b"r":
            out[unpack(value)[1]] += 1
        elif k[:1] == b"c":
            out["changes"] += 1
    return out
