"""Which writes of a record's fields are concurrent: conflict detection.

A record's document merges concurrent changes key by key (Automerge); when
two changes that did not see each other write the same key, Automerge keeps
both values and shows one. We need all of them (a policy, not Automerge's
internal order, decides which one the record shows: crdt/resolver.py), and
the Python binding (automerge 1.0.0rc1) has no ``get_all`` and its diff
patches are opaque. So we track them ourselves, exactly, from what the
binding does expose: historical reads (``get``/``values`` at given heads),
the op id of each value, and each change's op range.

For every *path* of the document (a key of the root, a key inside
``fields`` down to scalars and lists, a tag) the **frontier** is the set of
maximal writes of that path: the changes that wrote it and that no later
change writing it has seen. One writer is the normal case; two or more is a
conflict. A change C that arrives updates the frontier of each path it
writes: writers C has seen are superseded, writers C has not seen (the
changes ``doc.get_changes(C.deps)`` returns) stay, and C joins. That rule
gives the same frontiers whatever order the changes arrive in (each change
after its dependencies), so conflicts are a pure function of the set of
changes, like the document.

Only frontiers with two or more writers are stored (``Frontiers``); a path
not stored has one writer, which is found when needed from the op id of its
current value. Every change is also a write of ``deleted`` (the value the
record has in that change's history), so a delete that did not see a
concurrent update shows up as a conflict on ``("deleted",)`` that the
delete rule settles.

Costs: a change that has seen everything (its deps are the document's
heads) on a record without stored conflicts costs nothing here: the common
case of every local write and of in-order replication. Otherwise a change
costs two historical walks of the record. Which changes a change has not
seen is answered by a ``History`` kept beside the document (a clock per
change), not by ``doc.get_changes(deps)``: that call builds an object for
every unseen change, and where writers race without seeing each other
that is most of the record's history at every change.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from automerge.core import ROOT, Document, ObjType

from registrygrid.crdt.record import RecordDoc, plain

Path = tuple[str, ...]
Frontiers = dict[Path, list[bytes]]  # path -> the Automerge hashes of its concurrent writers (two or more)

DELETED: Path = ("deleted",)


class _Absent:
    """The value of a path a write removed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class ChangeMeta:
    """What tracking needs of one Automerge change (a ``Change`` of the
    binding gives all of it)."""

    hash: bytes
    actor: bytes
    start_op: int
    max_op: int
    deps: tuple[bytes, ...]
    seq: int = 0  # the change's number among its actor's, from 1

    @classmethod
    def of(cls, change: Any) -> ChangeMeta:
        return cls(change.hash, change.actor_id, change.start_op, change.max_op, tuple(change.deps), change.seq)

    def made(self, op: tuple[bytes, int]) -> bool:
        actor, counter = op
        return actor == self.actor and self.start_op <= counter <= self.max_op


class History:
    """Which changes of one document each change had seen: a clock per
    change (actor -> the highest sequence number in its history), kept
    beside the document and brought up to date with what it gained since.

    Automerge numbers an actor's changes 1, 2, 3... each built on the one
    before, and its own ``get_changes`` compares clocks the same way, so a
    change has seen another exactly when its clock of the other's actor
    reaches the other's number."""

    __slots__ = ("_actors", "_clocks", "_heads", "_meta")

    def __init__(self) -> None:
        self._heads: list[bytes] = []  # the document's heads it has taken in
        self._meta: dict[bytes, ChangeMeta] = {}
        self._clocks: dict[bytes, dict[bytes, int]] = {}
        # actor -> its changes' (seq, start_op, hash), in sequence order
        self._actors: dict[bytes, list[tuple[int, int, bytes]]] = {}

    def catch_up(self, doc: Document) -> History:
        """Take in the changes ``doc`` gained since the last call (the
        first call: all of them)."""
        heads = doc.get_heads()
        if heads != self._heads:
            for change in doc.get_changes(self._heads):  # in causal order
                self._add(ChangeMeta.of(change))
            self._heads = heads
        return self

    def _add(self, change: ChangeMeta) -> None:
        if change.hash in self._meta:
            return
        clock = self.clock_of(change.deps)
        clock[change.actor] = max(clock.get(change.actor, 0), change.seq)
        self._meta[change.hash] = change
        self._clocks[change.hash] = clock
        mine = self._actors.setdefault(change.actor, [])
        entry = (change.seq, change.start_op, change.hash)
        if not mine or mine[-1] < entry:
            mine.append(entry)
        else:  # not seen so far: Automerge hands an actor's changes out in order
            bisect.insort(mine, entry)

    def clock_of(self, heads: Iterable[bytes]) -> dict[bytes, int]:
        """The clock of the history of ``heads`` (changes it holds)."""
        clock: dict[bytes, int] = {}
        for head in heads:
            for actor, seq in self._clocks[head].items():
                if seq > clock.get(actor, 0):
                    clock[actor] = seq
        return clock

    def has_seen(self, later: bytes, earlier: bytes) -> bool:
        """Whether change ``earlier`` is in the history of change ``later``
        (a change is in its own)."""
        meta = self._meta[earlier]
        return self._clocks[later].get(meta.actor, 0) >= meta.seq

    def unseen_by(self, change: ChangeMeta) -> Unseen:
        """The changes of the document that ``change`` had not seen."""
        return Unseen(self, self._clocks[change.hash])


class Unseen:
    """The changes of a document outside one clock: a set that is never
    built (membership, emptiness and the maker of an op are answered from
    the clock), and listed only where a caller walks it."""

    __slots__ = ("_clock", "_history")

    def __init__(self, history: History, clock: dict[bytes, int]) -> None:
        self._history, self._clock = history, clock

    @property
    def history(self) -> History:
        return self._history

    def __contains__(self, change_hash: object) -> bool:
        meta = self._history._meta.get(change_hash)  # type: ignore[call-overload]
        return meta is not None and self._clock.get(meta.actor, 0) < meta.seq

    def __bool__(self) -> bool:
        return any(mine[-1][0] > self._clock.get(actor, 0) for actor, mine in self._history._actors.items())

    def __iter__(self) -> Iterator[ChangeMeta]:
        meta = self._history._meta
        for actor, mine in self._history._actors.items():
            for _, _, change_hash in mine[bisect.bisect_right(mine, (self._clock.get(actor, 0), 1 << 64)):]:
                yield meta[change_hash]

    def makers(self, op: tuple[bytes, int]) -> list[bytes]:
        """The unseen change that made ``op`` (an empty list: a change seen,
        or none of this document's)."""
        actor, counter = op
        mine = self._history._actors.get(actor)
        if not mine:
            return []
        at = bisect.bisect_right(mine, counter, key=_start_op) - 1
        if at < 0:
            return []
        change_hash = mine[at][2]
        return [change_hash] if change_hash in self and self._history._meta[change_hash].made(op) else []


def _start_op(entry: tuple[int, int, bytes]) -> int:
    return entry[1]


def kept_history(doc: RecordDoc) -> History:
    """The ``History`` kept beside a record's document, made at first use:
    it lives and goes with the document (a document dropped from a batch
    takes it along)."""
    if doc.history is None:
        doc.history = History()
    return doc.history  # type: ignore[no-any-return]


def op_of(exid: bytes) -> tuple[bytes, int]:
    """(actor, counter) of an Automerge op id as the binding hands it out:
    0x10, uleb128 actor length, the actor, uleb128 actor index, uleb128
    counter (automerge's ``ExId::to_bytes``)."""
    if not exid or exid[0] != 0x10:
        return (b"", 0)  # the root object: made by no change
    length, at = _uleb(exid, 1)
    actor = exid[at:at + length]
    _, at = _uleb(exid, at + length)
    counter, _ = _uleb(exid, at)
    return actor, counter


def _uleb(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def value_at(doc: Document, path: Path, heads: list[bytes] | None = None) -> Any:
    """The plain value at ``path`` (ABSENT when there is none; the whole
    record for the empty path), at ``heads`` (None: the current state)."""
    if not path:
        return plain(doc, ROOT, ObjType.Map, heads)
    got = _get(doc, path, heads)
    if got is None:
        return ABSENT
    value, obj = got
    return _plain(doc, value, obj, heads) if isinstance(value, ObjType) else value[1]


def map_object(doc: Document, path: Path, change: bytes) -> bytes | None:
    """The id of the map ``change`` left at ``path`` (None when the value
    there is not a map): the object later writes of its branch go into."""
    got = _get(doc, path, [change])
    return got[1] if got is not None and got[0] == ObjType.Map else None


def map_now(doc: Document, path: Path, change: bytes) -> dict[str, Any] | None:
    """The map ``change`` left at ``path``, as it is now: the same Automerge
    object with every later write into it (None when the value there is not
    a map). Where two changes made a map at one path without seeing each
    other (two creates' ``fields``), Automerge shows one object and later
    writes of the branch that made the other go into that other, out of
    sight: a conflict settled for it must show them."""
    obj = map_object(doc, path, change)
    return None if obj is None else plain(doc, obj, ObjType.Map)  # type: ignore[no-any-return]


def _get(doc: Document, path: Path, heads: list[bytes] | None) -> tuple[Any, bytes] | None:
    obj = ROOT
    got: tuple[Any, bytes] | None = None
    last = len(path) - 1
    for i, key in enumerate(path):
        got = doc.get(obj, key, heads)
        if got is None:
            return None
        value, obj = got
        if i < last and value != ObjType.Map:
            return None
    return got


def _plain(doc: Document, kind: ObjType, obj: bytes, heads: list[bytes] | None) -> Any:
    return plain(doc, obj, kind, heads)


def _leaves(doc: Document, heads: list[bytes]) -> Iterator[tuple[Path, Any, bytes]]:
    """Every path of the document at ``heads`` that a write can target, with
    its value kind and op id: maps are walked into (and listed themselves,
    since a change may replace a whole map), lists and scalars are leaves."""
    stack: list[tuple[Path, bytes]] = [((), ROOT)]
    while stack:
        prefix, obj = stack.pop()
        for key, (value, child) in zip(doc.keys(obj, heads), doc.values(obj, heads)):
            path = (*prefix, key)
            yield path, value, child
            if value == ObjType.Map:
                stack.append((path, child))


def written_by(doc: Document, change: ChangeMeta) -> dict[Path, Any]:
    """The paths ``change`` wrote, with what it wrote (ABSENT: removed), read
    from ``doc``, which holds the change. A map the change made is a write
    of its path and of every path under it; a path the change removed is a
    write of ABSENT (and so is every path that was under it)."""
    at, deps = [change.hash], list(change.deps)
    out: dict[Path, Any] = {}
    made: set[Path] = set()
    present: set[Path] = set()
    for path, value, obj in _leaves(doc, at):
        present.add(path)
        if path[:-1] in made or change.made(op_of(obj)):
            if value == ObjType.Map:
                made.add(path)
            out[path] = _plain(doc, value, obj, at) if isinstance(value, ObjType) else value[1]
        elif value == ObjType.List and _plain(doc, value, obj, at) != value_at(doc, path, deps):
            out[path] = _plain(doc, value, obj, at)  # a list edited in place
    if deps:
        for path, _, _ in _leaves(doc, deps):
            if path not in present:
                out[path] = ABSENT
    out[DELETED] = value_at(doc, DELETED, at)
    return out


def track(doc: Document, heads_before: list[bytes] | None, change: ChangeMeta, frontiers: Frontiers,
          history: History | None = None) -> Frontiers:
    """The record's frontiers once ``change`` is applied. ``doc`` holds the
    change; ``heads_before`` are its heads before the change joined it (None:
    the change made the document). ``history``: the document's, kept
    between calls (None: built here). Pure: the result depends on the set of
    changes, never on their arrival order."""
    if heads_before is None:
        unseen: Unseen | tuple[()] = ()
    else:
        # The changes ``change`` has not seen: the document held them when
        # it joined.
        unseen = (history or History()).catch_up(doc).unseen_by(change)
    if not unseen and not frontiers:
        return {}
    out = {path: list(writers) for path, writers in frontiers.items()}
    if not unseen:
        # The change has seen every write: it supersedes the frontier of
        # each path it writes (and it always writes ``deleted``).
        out.pop(DELETED, None)
        for path in list(out):
            if _wrote(doc, change, path):
                del out[path]
        return out
    written = written_by(doc, change)
    # A path the change's own view lacks, under a path it wrote (a map it
    # made anew, removed, or put a number, string or list in place of),
    # while the record shows it (another writer put it in the map the
    # change replaced), a change it has not seen wrote it, or the record
    # keeps a conflict of it (Automerge's merge no longer shows it): the
    # change wrote it too, as _wrote rules for a change that has seen every
    # write. Else the frontier would depend on whether the change came
    # before or after the other writer (a map turned into a number missed
    # the concurrent write inside it where the number came second).
    replaced = set(written)
    under: list[Path] = []
    if heads_before and replaced and isinstance(unseen, Unseen):
        # The paths under it that the record shows, and those a change it
        # has not seen wrote (a removal the record no longer shows).
        candidates = {path for path, _, _ in _leaves(doc, heads_before)}
        for other in unseen:
            candidates.update(written_by(doc, other))
        under = sorted(path for path in candidates if any(path[:end] in replaced for end in range(1, len(path))))
    for path in [*frontiers, *under]:
        if path not in written and _wrote(doc, change, path):
            written[path] = ABSENT
    for path in written:
        prior = out.get(path)
        if prior is None:
            prior = _single_writer(doc, heads_before, path, unseen) if isinstance(unseen, Unseen) else []
        writers = sorted({h for h in prior if h in unseen} | {change.hash})
        if len(writers) > 1:
            out[path] = writers
        else:
            out.pop(path, None)
    return out


def replayed(changes: Iterable[tuple[bytes, bytes]]) -> tuple[RecordDoc, Frontiers]:
    """A document of ``changes`` ((hash, bytes), in causal order, at least
    one), each added in place, and its frontiers: a record rebuilt from some
    of its changes, or as it stood at some time."""
    frontiers: Frontiers = {}
    doc: RecordDoc | None = None
    for change_hash, change in changes:
        heads_before = doc.heads() if doc is not None else None
        if doc is None:
            doc = RecordDoc.apply(None, change)
        else:
            doc.add_change(change)
        meta = next(ChangeMeta.of(c) for c in doc.doc.get_changes(heads_before or []) if c.hash == change_hash)
        frontiers = track(doc.doc, heads_before, meta, frontiers, kept_history(doc))
    assert doc is not None, "replayed() needs a change"
    return doc, frontiers


def _wrote(doc: Document, change: ChangeMeta, path: Path) -> bool:
    """Did ``change`` write ``path``, by the rules of ``written_by``?"""
    at, deps = [change.hash], list(change.deps)
    for end in range(1, len(path) + 1):
        got = _get(doc, path[:end], at)
        if got is None:
            # It removed the path, or a map above it: then the path too, in
            # whichever of the map's raced versions held it (Automerge shows
            # one, maybe not that one).
            return _get(doc, path[:end], deps) is not None
        if change.made(op_of(got[1])):
            return True
    value, obj = got  # type: ignore[misc]
    return value == ObjType.List and _plain(doc, value, obj, at) != value_at(doc, path, deps)


def _single_writer(doc: Document, heads: list[bytes], path: Path, unseen: Unseen) -> list[bytes]:
    """The one maximal writer of a path whose frontier is not stored, among
    the changes a new change has not seen (the others it supersedes), read
    from ``doc`` as it was at ``heads`` (before the new change joined)."""
    if path == DELETED:
        return list(heads)  # every change writes it: its writers are the heads
    got = _get(doc, path, list(heads))
    if got is not None:
        return unseen.makers(op_of(got[1]))
    # Removed: by one of the unseen changes, or by none of them. Several
    # may have removed it, one after seeing another's removal: only the
    # removals no other one has seen are maximal.
    removers = [c.hash for c in unseen if _get(doc, path, [c.hash]) is None and _wrote(doc, c, path)]
    if len(removers) < 2:
        return removers
    history = unseen.history
    return [h for h in removers if not any(other != h and history.has_seen(other, h) for other in removers)]
