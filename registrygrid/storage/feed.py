"""The changefeed: every accepted change, local or remote, in local order.

Feed sequence numbers are this node's own (1, 2, 3 ...), dense and never
reused, so a subscriber's cursor is one integer: "give me what came after N".
Delivery is at-least-once: a subscriber that saves its cursor after handling
an event may see that event again after a crash, never miss one.
"""

from __future__ import annotations

from typing import Any

import lmdb
import msgspec

from registrygrid.storage.store import Store, u64, unpack, pack

# The largest feed or audit sequence a caller may name (a signed 64-bit
# integer, as JSON clients can hold it): the SDK, the bridge and the CLI
# refuse larger ones with a typed error (keys are unsigned 64-bit).
MAX_SEQ = 2**63 - 1

EVENT_TYPES = {"create": "created", "update": "updated", "delete": "deleted"}


class FeedEvent(msgspec.Struct, frozen=True):
    """One event of the feed (a Struct: one is built for every change committed)."""

    seq: int
    type: str  # created | updated | deleted
    registry: str
    record: str
    kind: str
    change: str  # change ID
    author: str  # did:key
    hlc: tuple[int, int]
    origin: str  # "local" or the peer ID it came from

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type,
            "registry": self.registry,
            "record": self.record,
            "kind": self.kind,
            "change": self.change,
            "author": self.author,
            "hlc": list(self.hlc),
            "origin": self.origin,
        }


def last_seq(store: Store, txn: lmdb.Transaction) -> int:
    cursor = txn.cursor(db=store.db["feed"])
    if not cursor.last():
        return 0
    return int.from_bytes(cursor.key(), "big")


def append(store: Store, txn: lmdb.Transaction, event: FeedEvent) -> None:
    value = pack([event.type, event.registry, event.record, event.kind, event.change, event.author,
                  list(event.hlc), event.origin])
    txn.put(u64(event.seq), store.values.pack(txn, "feed", value), db=store.db["feed"])


def read(store: Store, *, since: int = 0, limit: int = 1000, registry: str | None = None,
         kind: str | None = None) -> list[FeedEvent]:
    """Events with seq > since, oldest first, at most ``limit`` (after filtering)."""
    return read_window(store, since=since, limit=limit, registry=registry, kind=kind)[0]


def read_window(store: Store, *, since: int = 0, limit: int = 1000, registry: str | None = None,
                kind: str | None = None, scan: int | None = None) -> tuple[list[FeedEvent], int, bool]:
    """``read``, looking at no more than ``scan`` events: (the matches, the
    last seq looked at, whether the feed's end was reached). A filter that
    matches little reads on through the feed: bounded, a caller that must
    not block (the bridge's loop) reads it in slices."""
    out: list[FeedEvent] = []
    last = since
    with store.read() as txn:
        cursor = txn.cursor(db=store.db["feed"])
        if not cursor.set_range(u64(since + 1)):
            return out, last, True
        looked = 0
        for raw_key, value in cursor:
            if scan is not None and looked >= scan:
                return out, last, False
            looked += 1
            last = int.from_bytes(raw_key, "big")
            etype, reg, rec, knd, change, author, hlc, origin = unpack(store.values.unpack(txn, "feed", value, raw_key))
            if (registry is not None and reg != registry) or (kind is not None and knd != kind):
                continue
            out.append(FeedEvent(last, etype, reg, rec, knd, change, author, tuple(hlc), origin))
            if len(out) >= limit:
                return out, last, False
    return out, last, True


def head(store: Store) -> int:
    with store.read() as txn:
        return last_seq(store, txn)
