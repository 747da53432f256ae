"""Records' Automerge documents as last committed, kept in memory between batches.

A record's document is stored as bytes (crdt/record.py: a saved document
plus the changes appended since), and ``Document.load`` parses all of it:
its cost grows with the record's history. Loaded anew for every update, a
record written 2,000 times took ~7 ms a write, ~60% of it the load. This
cache keeps the documents that committed batches left, so the next write
of the same record starts from memory.

Safety rests on two rules:

- an entry is the document exactly as its stored bytes say, and is taken
  only while those bytes are unchanged: each entry keeps the stored
  value (a few bytes a change, where the loaded document takes ~1.2 KB),
  and ``take`` compares it with the value read in the
  current transaction (any writer that changed it, a rebuild, an erasure,
  another process, misses the cache and loads);
- ``take`` removes the entry: the document then belongs to the batch that
  edits it, and comes back only when that batch commits (``keep``). A
  refused op or a failed batch drops it, so an edit that never committed
  can't be served from memory.

Bounded by what its documents weigh in memory, least recently kept first
out. Automerge's saved form packs a change into a few bytes, but a loaded
document takes ~10 KB plus ~1.2 KB a change (measured: 2,000 updates of
one field save to 3.6 KB and load into 2.4 MB), so an entry weighs by its
count of changes, not by its stored bytes.

A document heavier than a quarter of the bound used to be left out, so
that one would not crowd out the others; but the heaviest document is the
one whose load costs most (a record written 14,000 times: ~90 ms a load,
so every write of it ran at ~11 a second instead of ~500). Any document
within the bound is kept now, and least-recently-kept order decides: a
hot record stays while it is written, and goes when others are written
more. A record whose history outweighs the whole bound (~55,000 changes at
64 MiB) is loaded at each batch that writes it.
"""

from __future__ import annotations

from collections import OrderedDict

from registrygrid.crdt.record import RecordDoc

Key = tuple[str, str]  # (registry, record id)

# 64 MiB of loaded documents: thousands of records with a few updates each,
# or a few dozen with thousands.
MAX_BYTES = 64 * 1024 * 1024
DOC_BYTES, CHANGE_BYTES = 10_000, 1_200


def weight(doc: RecordDoc) -> int:
    """What a loaded document takes in memory, about."""
    return DOC_BYTES + CHANGE_BYTES * max(doc.changes, 1)


class DocumentCache:
    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, tuple[bytes, int, RecordDoc]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def take(self, key: Key, stored: bytes) -> RecordDoc | None:
        """The document whose stored value is ``stored``, removed from the
        cache; None if the cache holds no document of that value."""
        entry = self._entries.pop(key, None)
        if entry is None:
            self.misses += 1
            return None
        self._bytes -= entry[1]
        # Byte for byte: a memcmp, where a digest of the value (~100 KB at
        # 20,000 changes) cost ~70 us at every take and keep.
        if entry[0] != stored:
            self.misses += 1
            return None
        self.hits += 1
        return entry[2]

    def keep(self, key: Key, stored: bytes, doc: RecordDoc) -> None:
        """``doc`` as its committed stored value ``stored`` says it is."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        size = weight(doc) + len(stored)
        if size > self.max_bytes:
            return
        self._entries[key] = (bytes(stored), size, doc)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, dropped, _) = self._entries.popitem(last=False)
            self._bytes -= dropped

    def discard(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)
