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
costs two historical walks of the record.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from automerge.core import ROOT, Document, ObjType

from registrygrid.crdt.record import plain

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

    @classmethod
    def of(cls, change: Any) -> ChangeMeta:
        return cls(change.hash, change.actor_id, change.start_op, change.max_op, tuple(change.deps))

    def made(self, op: tuple[bytes, int]) -> bool:
        actor, counter = op
        return actor == self.actor and self.start_op <= counter <= self.max_op


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
    """The plain value at ``path`` (ABSENT when there is none), at ``heads``
    (None: the current state)."""
    got = _get(doc, path, heads)
    if got is None:
        return ABSENT
    value, obj = got
    return _plain(doc, value, obj, heads) if isinstance(value, ObjType) else value[1]


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


def track(doc: Document, heads_before: list[bytes] | None, change: ChangeMeta, frontiers: Frontiers) -> Frontiers:
    """The record's frontiers once ``change`` is applied. ``doc`` holds the
    change; ``heads_before`` are its heads before the change joined it (None:
    the change made the document). Pure: the result depends on the set of
    changes, never on their arrival order."""
    # The changes ``change`` has not seen (binding Change objects: their
    # op ranges are read only when a path's single writer must be found):
    # the document held them and the change itself when it joined.
    unseen = {c.hash: c for c in doc.get_changes(list(change.deps)) if c.hash != change.hash} \
        if heads_before is not None else {}
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
    for path in written_by(doc, change):
        prior = out.get(path)
        if prior is None:
            prior = _single_writer(doc, heads_before, path, unseen) if heads_before is not None else []
        writers = sorted({h for h in prior if h in unseen} | {change.hash})
        if len(writers) > 1:
            out[path] = writers
        else:
            out.pop(path, None)
    return out


def _wrote(doc: Document, change: ChangeMeta, path: Path) -> bool:
    """Did ``change`` write ``path``, by the rules of ``written_by``?"""
    at, deps = [change.hash], list(change.deps)
    for end in range(1, len(path) + 1):
        got = _get(doc, path[:end], at)
        if got is None:
            return _get(doc, path, deps) is not None  # it removed the path
        if change.made(op_of(got[1])):
            return True
    value, obj = got  # type: ignore[misc]
    return value == ObjType.List and _plain(doc, value, obj, at) != value_at(doc, path, deps)


def _single_writer(doc: Document, heads: list[bytes], path: Path, unseen: dict[bytes, Any]) -> list[bytes]:
    """The one maximal writer of a path whose frontier is not stored, among
    the changes a new change has not seen (the others it supersedes), read
    from ``doc`` as it was at ``heads`` (before the new change joined)."""
    if path == DELETED:
        return list(heads)  # every change writes it: its writers are the heads
    got = _get(doc, path, list(heads))
    if got is not None:
        actor, counter = op_of(got[1])
        return [h for h, c in unseen.items() if c.actor_id == actor and c.start_op <= counter <= c.max_op]
    # Removed: by one of the unseen changes, or by none of them. Several
    # may have removed it, one after seeing another's removal: only the
    # removals no other one has seen are maximal.
    removers = [h for h, c in unseen.items()
                if _get(doc, path, [h]) is None and _get(doc, path, list(c.deps)) is not None]
    if len(removers) < 2:
        return removers
    return [h for h in removers if not any(other != h and _has_seen(doc, other, h) for other in removers)]


def _has_seen(doc: Document, later: bytes, earlier: bytes) -> bool:
    """Whether change ``earlier`` is in the history of change ``later``."""
    return all(c.hash != earlier for c in doc.get_changes([later]))
