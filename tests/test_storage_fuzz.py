"""Property-based specification of two parts of store format 4, on real LMDB
stores, under random sequences of committed and aborted write transactions
and restarts (close, then open the same path again):

Values compressed against the store's own dictionaries (storage/compression.py,
``store.values``):
  1. every committed value reads back, through ``unpack``, as exactly the plain
     bytes that were packed, in the writing transaction, after it, and after
     a restart; a value of an aborted transaction is absent (or, if it
     overwrote one, the committed value is still there);
  2. a stored value is either its plain bytes or smaller than them, marked
     0xC1, and names a dictionary generation the store holds: dictionaries
     are generations 1..n of each sub-database, never removed, never one of
     an aborted transaction, and a restart resumes from the newest;
  3. a sub-database has a dictionary once a committed transaction packed
     ``FIRST_AFTER`` values into it; a dictionary is the skeletons of the
     last ``SAMPLES`` values the writer packed into that sub-database; once
     one exists, a value that repeats itself is stored compressed;
  4. damage to a compressed value (any one bit after its mark) unpacks to
     some bytes or raises IntegrityError naming the entry, never another
     exception.

DIDs as 4-byte codes (storage/codes.py, ``store.codes``) and author chains
(storage/chains.py):
  5. a DID's code is handed out once, never changes (across restarts too), and
     ``name(code(d)) == d``; codes are the consecutive numbers 1..n over the
     DIDs of committed transactions; a DID first seen by an aborted
     transaction has no code afterwards, and its number goes to the next DID;
  6. chain heads (``heads``, ``head``, ``at``) are those of the committed links,
     within the writing transaction they include its own links.
"""

from __future__ import annotations

import collections
import random
import shutil
import tempfile
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from registrygrid.errors import IntegrityError
from registrygrid.storage import chains
from registrygrid.storage.codes import CODE_BYTES
from registrygrid.storage.compression import (
    COMPRESSED,
    FIRST_AFTER,
    MARK,
    SAMPLES,
    SECOND_AFTER,
    describe,
    dictionary_key,
    skeleton,
)
from registrygrid.storage.store import Store, u64

# ---------------------------------------------------------------- strategies

WORDS = ("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", "grid.clusters", "cluster", "name",
         "region", "eu-west-1", "us-east-1", "status", "active", "draining", "tool", "ocr")


def _record_row(kind: str, owner: str, fields: dict[str, str], tags: list[str], revision: int) -> bytes:
    # A materialized record as storage/records.py stores it (13 columns), so
    # the records dictionary learns non-empty skeletons.
    return msgspec.msgpack.encode([kind, "schema/v1", owner, tags, [], fields, False, 1_700_000_000_000, owner,
                                   [1_700_000_000_000, 0], owner, "bafy" + "a" * 20, revision])


word_lists = st.lists(st.one_of(st.sampled_from(WORDS), st.integers(-1000, 10**6)), min_size=1,
                      max_size=30).map(msgspec.msgpack.encode)
record_rows = st.builds(_record_row, st.sampled_from(WORDS), st.sampled_from(WORDS),
                        st.dictionaries(st.sampled_from(WORDS), st.sampled_from(WORDS), max_size=6),
                        st.lists(st.sampled_from(WORDS), max_size=3), st.integers(0, 500))
noise = st.binary(max_size=300).map(lambda b: b"\x93" + b)  # msgpack-ish, incompressible
# A value that repeats one short unit: compresses against any dictionary.
repeating = st.builds(lambda unit, times: b"\x93" + unit * times, st.binary(min_size=1, max_size=8),
                      st.integers(30, 60))
plain_values = st.one_of(word_lists, record_rows, noise, repeating)


def is_repeating(plain: bytes) -> bool:
    """A value of ``repeating``: 240+ bytes, a unit of at most 8 repeated.
    Shorter ones are not always compressible: zstd's fast mode leaves some
    short periodic inputs as a raw block (b"\\x93" + b"\\x31\\x7c" * 41, 83
    bytes, comes out 92 even without a dictionary, and at level 1 too), and
    such a value is rightly kept plain; none of 37,000 drawn of 240+ bytes did."""
    body = plain[1:]
    return len(body) >= 240 and any(len(body) % n == 0 and body == body[:n] * (len(body) // n)
                                   for n in range(1, 9))


class Abort(Exception):
    """Raised inside ``store.write()`` to abort the transaction."""


def fresh_dir(root: Path) -> str:
    return tempfile.mkdtemp(dir=root)


# ---------------------------------------------------- 1-3: packing, model-based


class PackingModel(RuleBasedStateMachine):
    """A store whose four compressed sub-databases receive values in random
    transactions that commit or abort, with restarts between them; the model
    is the plain value of every committed key."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.path = fresh_dir(root)
        self.store = Store(self.path)
        self.committed: dict[tuple[str, bytes], bytes] = {}
        self.aborted: set[tuple[str, bytes]] = set()  # fresh keys of aborted transactions
        self.next_key = 0
        # The plain values packed into each sub-database since the store was
        # opened, aborted ones included: what its next dictionary is made of.
        self.recent = {db: collections.deque[bytes](maxlen=SAMPLES) for db in COMPRESSED}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.path, ignore_errors=True)

    @rule(data=st.data(), commit=st.booleans(), read_back=st.booleans())
    def write(self, data: st.DataObject, commit: bool, read_back: bool) -> None:
        """Pack up to 80 drawn values into one or two sub-databases, each
        under a fresh key or over a committed one, then commit or abort."""
        dbs = data.draw(st.lists(st.sampled_from(COMPRESSED), min_size=1, max_size=2, unique=True), label="dbs")
        count = data.draw(st.integers(1, 80), label="count")
        items = data.draw(st.lists(st.tuples(st.sampled_from(dbs), plain_values, st.none() | st.integers(0, 10**6)),
                                   min_size=count, max_size=count), label="items")
        self._transaction(items, commit, read_back)

    @rule(db=st.sampled_from(COMPRESSED), seed=st.integers(0, 2**32),
          count=st.one_of(st.integers(1, 100), st.integers(SECOND_AFTER - 40, SECOND_AFTER + 40)),
          commit=st.booleans())
    def write_many(self, db: str, seed: int, count: int, commit: bool) -> None:
        """Pack many values made from ``seed`` into one sub-database (enough,
        after its first dictionary, for its second), then commit or abort."""
        rng = random.Random(seed)
        items = []
        for i in range(count):
            words = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
            plain = (msgspec.msgpack.encode(words + [i]) if rng.random() < 0.7 else
                     _record_row(words[0], rng.choice(WORDS), dict.fromkeys(words, words[-1]), words[:2], i))
            items.append((db, plain, None))
        self._transaction(items, commit, read_back=False)

    def _transaction(self, items: list[tuple[str, bytes, int | None]], commit: bool, read_back: bool) -> None:
        """Pack ``items`` (db, plain, which committed key of db to overwrite,
        or None for a fresh key) in one write transaction, checking each
        stored value, then commit or abort."""
        store, written, fresh = self.store, {}, set()
        packs = collections.Counter[str]()
        keys: dict[str, list[bytes]] = {}  # the committed keys of each db, sorted, once asked for
        try:
            with store.write() as txn:
                newest = self._stored_generations(txn)  # the dictionaries this transaction sees
                for db, plain, overwrite in items:
                    assert plain[:1] != bytes([MARK])
                    if overwrite is not None and db not in keys:
                        keys[db] = sorted(k for d, k in self.committed if d == db)
                    if overwrite is not None and keys[db]:
                        key = keys[db][overwrite % len(keys[db])]
                    else:
                        key = u64(self.next_key)
                        self.next_key += 1
                        fresh.add((db, key))
                    stored = store.values.pack(txn, db, plain)
                    packs[db] += 1
                    self.recent[db].append(plain)

                    if txn.get(dictionary_key(db, newest[db] + 1), db=store.db["meta"]) is not None:
                        # A dictionary made now, from the last SAMPLES values packed.
                        newest[db] += 1
                        assert len(self.recent[db]) == SAMPLES
                        assert txn.get(dictionary_key(db, newest[db]), db=store.db["meta"]) == b"".join(
                            skeleton(db, value) for value in self.recent[db])
                    after = newest[db]
                    assert store.values.generations()[db] == after
                    if stored != plain:
                        assert stored[0] == MARK and stored[1] == after and len(stored) < len(plain)
                    elif after and is_repeating(plain):
                        raise AssertionError(f"a repeating value was kept plain under generation {after}")
                    if read_back:
                        assert store.values.unpack(txn, db, stored, key) == plain
                    txn.put(key, stored, db=store.db[db])
                    written[(db, key)] = plain
                if not commit:
                    raise Abort
        except Abort:
            assert not commit
            self.aborted |= fresh
            return
        self.committed.update(written)
        with store.read() as txn:
            for db, count in packs.items():
                if count >= FIRST_AFTER:
                    assert txn.get(dictionary_key(db, 1), db=store.db["meta"]) is not None, db

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = Store(self.path)
        self.recent = {db: collections.deque[bytes](maxlen=SAMPLES) for db in COMPRESSED}
        with self.store.read() as txn:
            assert self.store.values.generations() == self._stored_generations(txn)

    def _stored_generations(self, txn: object) -> dict[str, int]:
        found: dict[str, set[int]] = {db: set() for db in COMPRESSED}
        for key, _ in self.store.iter_prefix(txn, "meta", b"zdict\x00"):
            db, _, generation = key[len(b"zdict\x00"):].rpartition(b"\x00")
            found[db.decode()].add(generation[0])
        for db, generations in found.items():  # never a gap, never removed
            assert generations == set(range(1, len(generations) + 1)), (db, generations)
        return {db: len(generations) for db, generations in found.items()}

    @invariant()
    def every_committed_value_reads_back_and_names_a_dictionary_the_store_holds(self) -> None:
        store = self.store
        with store.read() as txn:
            newest = self._stored_generations(txn)
            for db in COMPRESSED:
                held = dict(txn.cursor(db=store.db[db]))
                assert set(held) == {k for d, k in self.committed if d == db}
                for key, stored in held.items():
                    if stored[:1] == bytes([MARK]):
                        assert 1 <= stored[1] <= newest[db]
                    assert store.values.unpack(txn, db, stored, key) == self.committed[(db, key)]
            for db, key in self.aborted:
                assert txn.get(key, db=store.db[db]) is None


def test_packed_values_read_back_exactly_through_aborts_and_restarts(tmp_path: Path) -> None:
    run_state_machine_as_test(
        lambda: PackingModel(tmp_path),
        settings=settings(max_examples=30, stateful_step_count=12, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]))


# ------------------------------------------------- 4: damaged compressed values


def frame_content_size_bytes(descriptor: int) -> int:
    """How many bytes of content size a zstd frame header descriptor announces."""
    flag = descriptor >> 6
    return (1 if descriptor & 0x20 else 0) if flag == 0 else (2, 4, 8)[flag - 1]


@settings(max_examples=120, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(db=st.sampled_from(COMPRESSED),
       before=st.lists(plain_values, min_size=FIRST_AFTER, max_size=FIRST_AFTER + 8),
       target=st.one_of(repeating, st.builds(lambda a, b: a + b, repeating, plain_values)),
       bit=st.integers(min_value=0))
def test_a_damaged_compressed_value_unpacks_to_bytes_or_an_integrity_error_naming_it(
        tmp_path: Path, db: str, before: list[bytes], target: bytes, bit: int) -> None:
    path = fresh_dir(tmp_path)
    store = Store(path)
    try:
        key = u64(len(before))
        with store.write() as txn:
            for i, plain in enumerate(before):  # the FIRST_AFTER-th makes generation 1
                txn.put(u64(i), store.values.pack(txn, db, plain), db=store.db[db])
            stored = store.values.pack(txn, db, target)
            assert stored[0] == MARK  # it repeats itself: compressed
            damaged = bytearray(stored)
            at = 8 + bit % (8 * (len(stored) - 1))  # any bit after the mark
            damaged[at // 8] ^= 1 << (at % 8)
            txn.put(key, bytes(damaged), db=store.db[db])

        with store.read() as txn:
            raw = txn.get(key, db=store.db[db])
            assert raw == bytes(damaged)
            try:
                plain = store.values.unpack(txn, db, raw, key)
            except IntegrityError as e:
                assert e.details == {"where": describe(db, key)}
            except MemoryError:
                # KNOWN BUG (see the xfail test below): a flip that makes the
                # frame header announce an 8-byte content size. Tolerated here
                # only for that flip, so that the property checks every other.
                assert at // 8 == 6 and frame_content_size_bytes(damaged[6]) == 8
            else:
                assert isinstance(plain, bytes)
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)


def test_a_frame_header_damaged_to_announce_a_huge_content_size_is_an_integrity_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    try:
        value = b"\x93" + b"the same words again " * 16  # 337 bytes: a 2-byte content size
        with store.write() as txn:
            for _ in range(FIRST_AFTER):
                stored = store.values.pack(txn, "feed", value)
            # 0xC1, generation, zstd magic (4 bytes), frame header descriptor, ...
            assert stored[0] == MARK and frame_content_size_bytes(stored[6]) == 2
            damaged = bytearray(stored)
            damaged[6] ^= 0x80  # the content size flag: 2 bytes -> 8 bytes
            txn.put(u64(0), bytes(damaged), db=store.db["feed"])
        with store.read() as txn, pytest.raises(IntegrityError) as caught:
            store.values.unpack(txn, "feed", txn.get(u64(0), db=store.db["feed"]), u64(0))
        assert caught.value.details == {"where": "feed event 0"}
    finally:
        store.close()


# ----------------------------------------------- 5-6: codes and chains, model-based

REGISTRIES = ("r", "r.x", "s")
dids = st.builds(lambda n: f"did:key:z{n}", st.integers(0, 12))
seqs = st.one_of(st.integers(1, 20), st.integers(1, 2**64 - 1), st.sampled_from([255, 256, 2**32, 2**64 - 1]))
cids = st.binary(min_size=36, max_size=36)
operations = st.one_of(
    st.tuples(st.just("assign"), dids),
    st.tuples(st.just("link"), st.sampled_from(REGISTRIES), dids, seqs, cids),
)


class CodesModel(RuleBasedStateMachine):
    """A store whose transactions hand out codes and add chain links, and
    commit or abort, with restarts between them; the model is the committed
    DIDs in the order they were first handed out, and the committed links."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.path = fresh_dir(root)
        self.store = Store(self.path)
        self.order: list[str] = []  # committed DIDs; code i+1 is order[i]
        self.links: dict[tuple[str, str], dict[int, bytes]] = {}  # (registry, author) -> seq -> cid
        self.never: set[str] = set()  # DIDs only aborted transactions saw

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def _expected_code(self, did: str, fresh: list[str]) -> bytes:
        """The code ``did`` must get in a transaction that has handed out
        ``fresh`` so far (and appends it there if it is new)."""
        known = self.order + fresh
        if did not in known:
            fresh.append(did)
            known.append(did)
        return (known.index(did) + 1).to_bytes(CODE_BYTES, "big")

    @staticmethod
    def _heads(links: dict[tuple[str, str], dict[int, bytes]]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (registry, author), chain in links.items():
            out.setdefault(registry, {})[author] = max(chain)
        return out

    @rule(ops=st.lists(operations, min_size=1, max_size=12), commit=st.booleans())
    def write(self, ops: list[tuple], commit: bool) -> None:
        store, fresh = self.store, []
        links = {chain: dict(entries) for chain, entries in self.links.items()}
        try:
            with store.write() as txn:
                for op in ops:
                    if op[0] == "assign":
                        did = op[1]
                        code = store.codes.assign(txn, did)
                        assert code == self._expected_code(did, fresh), (did, code)
                    else:
                        _, registry, did, seq, cid = op
                        expected = self._expected_code(did, fresh)
                        chains.link(store, txn, registry, did, seq, cid)
                        links.setdefault((registry, did), {})[seq] = cid
                        code = store.codes.code(txn, did)
                        assert code == expected
                    assert store.codes.name(txn, code) == did
                # The transaction reads its own codes and links.
                assert chains.heads(store, txn) == self._heads(links)
                if not commit:
                    raise Abort
        except Abort:
            assert not commit
            self.never |= set(fresh) - set(self.order)
            return
        self.order += fresh
        self.never -= set(fresh)
        self.links = links

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = Store(self.path)

    @invariant()
    def codes_are_1_to_n_over_committed_dids_and_read_back_both_ways(self) -> None:
        store = self.store
        with store.read() as txn:
            held = dict(txn.cursor(db=store.db["codes"]))
            expected = {}
            for number, did in enumerate(self.order, start=1):
                code = number.to_bytes(CODE_BYTES, "big")
                expected[b"n" + did.encode()], expected[b"c" + code] = code, did.encode()
                assert store.codes.code(txn, did) == code
                assert store.codes.name(txn, code) == did
            assert held == expected
            for did in self.never:
                assert store.codes.code(txn, did) is None

    @invariant()
    def heads_are_those_of_the_committed_links(self) -> None:
        store = self.store
        heads = self._heads(self.links)
        with store.read() as txn:
            assert chains.heads(store, txn) == heads
            for registry in REGISTRIES:
                assert chains.heads(store, txn, registry) == ({registry: heads[registry]} if registry in heads
                                                              else {})
            for (registry, author), chain in self.links.items():
                last = max(chain)
                assert chains.head(store, txn, registry, author) == (last, chain[last])
                for seq, cid in chain.items():
                    assert chains.at(store, txn, registry, author, seq) == cid
            assert sorted(chains.iter_links(store, txn)) == sorted(
                (registry, author, seq, cid) for (registry, author), chain in self.links.items()
                for seq, cid in chain.items())
            for did in self.never:
                for registry in REGISTRIES:
                    assert chains.head(store, txn, registry, did) == (0, b"")


def test_codes_and_chain_heads_follow_committed_transactions_through_aborts_and_restarts(tmp_path: Path) -> None:
    run_state_machine_as_test(
        lambda: CodesModel(tmp_path),
        settings=settings(max_examples=60, stateful_step_count=15, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow]))
