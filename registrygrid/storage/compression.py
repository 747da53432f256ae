"""Values compressed against dictionaries made from the store's own values.

A record's bytes repeat across records: the same author and owner DIDs, the
same registry and kind names, the same field names. Each value is small
(100-500 bytes), so compressing one alone gains little; compressing it
against a dictionary of recent values of its sub-database gains 3-5x on
changes and records (measured: a cluster record's change 468 -> ~100 bytes,
its materialized record 326 -> ~90). That is most of a record's footprint.

    compressed value = 0xC1 ‖ u8 generation ‖ zstd frame (content size, no
                       dictionary id, no checksum: what a value holds is
                       checked where it is used, by hash or signature)
    meta "zdict" \\0 sub-database \\0 u8 generation -> the dictionary (raw
                       content: recent plain values of that sub-database,
                       concatenated)

0xC1 is the one byte msgpack never uses, so a value that starts with it is
compressed and any other value is plain msgpack, as format 3 wrote it: a
store holds both, and nothing needs rewriting to read it.

Dictionaries are raw content rather than trained (zstd's trainer takes
30-70 ms and gained ~10% more); a generation is made, inside the write
transaction that first packs with it, from the last ``SAMPLES`` values the
writer packed (for changes and records, their skeletons: see ``skeleton``), first after ``FIRST_AFTER`` values, then after 4x as many
values each time (1,024, 4,096, ... ), so the dictionary follows the
workload as it drifts. Generations are never changed or removed, so every
value stays readable; a value is kept plain where compressing it does not
make it smaller. A reader in another process finds a generation it has not
seen in ``meta``, in the transaction it reads with.

Only the store's writer packs (LMDB runs one write transaction at a time),
so the packing state needs no lock; readers on many threads each get their
own decompressors (zstd contexts are not thread-safe).
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING

import zstandard

from registrygrid.errors import IntegrityError, RegistryError

if TYPE_CHECKING:
    import lmdb

    from registrygrid.storage.store import Store

MARK = 0xC1
COMPRESSED = ("changes", "records", "feed", "audit")
SAMPLES = 32
FIRST_AFTER = 32
SECOND_AFTER = 1_024
GROWTH = 4
LAST_GENERATION = 255
# No stored value comes near this: a change is at most an envelope (256 KiB),
# a record at most 128 KiB (protocol/limits.py).
MAX_VALUE_BYTES = 16 * 2**20
LEVEL = -1  # zstd's fast mode: on record-sized values as small as levels 1 and 3 make them, at a third of the time


def dictionary_key(db: str, generation: int) -> bytes:
    return b"zdict\x00" + db.encode() + b"\x00" + bytes([generation])


def _due(generation: int) -> int:
    """Values to pack under ``generation`` before the next one is made."""
    return FIRST_AFTER if generation == 0 else SECOND_AFTER * GROWTH ** (generation - 1)


class _Lane:
    """The writer's packing state for one sub-database."""

    __slots__ = ("compressor", "due", "generation", "header", "made_in", "samples", "since")

    def __init__(self) -> None:
        self.generation = 0  # the newest dictionary (0: none yet)
        self.header = b""
        self.compressor: zstandard.ZstdCompressor | None = None
        self.since = 0  # values packed since that generation was made (or the store opened)
        self.due = _due(0)
        self.samples = collections.deque[bytes](maxlen=SAMPLES)
        # The transaction that made ``generation``, until another one is
        # seen: if it aborted, the generation never existed.
        self.made_in: lmdb.Transaction | None = None


class ValueCodec:
    """The packing state of one store: its dictionaries, newest per
    sub-database, and the recent plain values the next one is made from."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._contents: dict[tuple[str, int], bytes] = {}  # the dictionaries' bytes
        self._lanes = {db: _Lane() for db in COMPRESSED}
        self._local = threading.local()
        self._epoch = 0  # bumped when a generation is forgotten: readers drop their decompressors

    def load(self, txn: lmdb.Transaction) -> None:
        """Learn the store's dictionaries, and the newest of each sub-database."""
        meta = self._store.db["meta"]
        cursor = txn.cursor(db=meta)
        prefix = b"zdict\x00"
        if cursor.set_range(prefix):
            for k, value in cursor:
                if not k.startswith(prefix):
                    break
                db, _, generation = k[len(prefix):].rpartition(b"\x00")
                name, gen = db.decode(), generation[0]
                self._contents[(name, gen)] = bytes(value)
                if name in self._lanes and gen > self._lanes[name].generation:
                    self._use(self._lanes[name], name, gen)

    # ---- writing

    def pack(self, txn: lmdb.Transaction, db: str, value: bytes) -> bytes:
        """``value`` (plain msgpack) as it is to be stored in ``db``."""
        lane = self._lanes[db]
        if lane.made_in is not None and lane.made_in is not txn:
            self._confirm(txn, db, lane)
        lane.samples.append(value)
        lane.since += 1
        if lane.since >= lane.due and lane.generation < LAST_GENERATION and len(lane.samples) == SAMPLES:
            self._make_generation(txn, db, lane)
        if lane.compressor is None:
            return value
        packed = lane.header + lane.compressor.compress(value)
        return packed if len(packed) < len(value) else value

    def _use(self, lane: _Lane, db: str, generation: int) -> None:
        lane.generation, lane.header, lane.due = generation, bytes((MARK, generation)), _due(generation)
        lane.compressor = None
        if generation:
            dictionary = _dictionary(self._contents[(db, generation)])
            dictionary.precompute_compress(level=LEVEL)  # digested once, not at every value
            lane.compressor = zstandard.ZstdCompressor(level=LEVEL, dict_data=dictionary, write_checksum=False,
                                                       write_content_size=True, write_dict_id=False)

    def _make_generation(self, txn: lmdb.Transaction, db: str, lane: _Lane) -> None:
        generation = lane.generation + 1
        content = b"".join(skeleton(db, value) for value in lane.samples)
        txn.put(dictionary_key(db, generation), content, db=self._store.db["meta"])
        self._contents[(db, generation)] = content
        self._use(lane, db, generation)
        lane.made_in, lane.since = txn, 0

    def _confirm(self, txn: lmdb.Transaction, db: str, lane: _Lane) -> None:
        """The transaction that made the lane's generation has ended (LMDB
        runs one write transaction at a time): it committed, or its
        dictionary is gone and so is every value packed with it."""
        lane.made_in = None
        generation = lane.generation
        # One transaction can make several generations (a big one packs
        # past more than one threshold): every one it made is gone with it.
        while generation and txn.get(dictionary_key(db, generation), db=self._store.db["meta"]) is None:
            self._contents.pop((db, generation), None)
            generation -= 1
        if generation != lane.generation:
            self._epoch += 1
            self._use(lane, db, generation)

    # ---- reading

    def unpack(self, txn: lmdb.Transaction, db: str, raw: bytes, key: bytes) -> bytes:
        """The plain msgpack of the value stored under ``key`` in ``db``. A
        value that does not decompress raises IntegrityError naming it."""
        if not raw or raw[0] != MARK:
            return raw
        if len(raw) < 3:
            where = describe(db, key)
            raise IntegrityError(f"the stored value of {where} is truncated", details={"where": where})
        generation = raw[1]
        local = self._local
        if getattr(local, "epoch", None) != self._epoch:
            local.epoch, local.decompressors = self._epoch, {}
        decompressors: dict[tuple[str, int], zstandard.ZstdDecompressor] = local.decompressors
        decompressor = decompressors.get((db, generation))
        if decompressor is None:  # each thread its own: zstd contexts are not thread-safe
            decompressor = decompressors[(db, generation)] = zstandard.ZstdDecompressor(
                dict_data=_dictionary(self._content(txn, db, generation, key)))
        try:
            # The frame says how big its content is; damage there must not
            # make us allocate gigabytes (a stored value is never that big).
            if not 0 <= zstandard.frame_content_size(raw[2:]) <= MAX_VALUE_BYTES:
                raise zstandard.ZstdError("its frame announces an impossible content size")
            return decompressor.decompress(raw[2:])  # type: ignore[no-any-return]
        except zstandard.ZstdError as e:
            where = describe(db, key)
            raise IntegrityError(f"the stored value of {where} does not decompress ({e})",
                                 details={"where": where}) from None

    def _content(self, txn: lmdb.Transaction, db: str, generation: int, key: bytes) -> bytes:
        found = self._contents.get((db, generation))
        if found is None:  # made since this process loaded them (a node writing beside a reader)
            content = txn.get(dictionary_key(db, generation), db=self._store.db["meta"])
            if content is None:
                where = describe(db, key)
                raise IntegrityError(f"the stored value of {where} names compression dictionary "
                                     f"{generation}, which the store lacks", details={"where": where})
            found = self._contents[(db, generation)] = bytes(content)
        return found

    def generations(self) -> dict[str, int]:
        """The newest dictionary generation of each sub-database (0: none yet)."""
        return {db: lane.generation for db, lane in self._lanes.items()}


def skeleton(db: str, plain: bytes) -> bytes:
    """What a dictionary may learn from a plain value of ``db``. Erasure
    removes a record's change bodies and materialized record, and a
    dictionary is never removed, so changes and records give only their
    shape and names (storage/changes.py, storage/records.py); feed events
    and audit entries are kept through an erasure, so they give themselves."""
    from registrygrid.storage import changes, records

    try:
        if db == "changes":
            return changes.skeleton_value(plain)
        if db == "records":
            return records.skeleton_value(plain)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, RegistryError):  # msgspec errors are ValueErrors
        return b""  # a value we cannot read teaches nothing
    return plain


def describe(db: str, key: bytes) -> str:
    """How verify and errors name the entry ``key`` of ``db``."""
    if db == "changes":
        from registrygrid.protocol.envelope import cid_to_str

        return f"change {cid_to_str(key)}"
    if db == "records":
        return "record " + key.decode(errors="replace").replace("\x00", "/", 1)
    number = int.from_bytes(key, "big")
    return f"feed event {number}" if db == "feed" else f"audit entry {number}"


def _dictionary(content: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(content, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
