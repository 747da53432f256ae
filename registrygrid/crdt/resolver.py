"""The policy-guided resolver: what a record shows where writes conflict.

crdt/conflicts.py finds the paths that concurrent changes wrote; this
module settles each one by the registry's conflict policy
(crdt/conflict_policy.py) and says how, so every node, given the same
changes and the same descriptor, shows the same record and the same
explanation. Sans-IO: the engine hands in the document, the frontiers,
what it knows of each writer (author, clock, roles at the change's time)
and the signed resolutions of disputes.

A conflict whose writes all hold the same value is no conflict to show.
Conflicts under a conflicting map are settled with the map (the map's
value is one write). ``manual`` shows the last writer's value, marked
``disputed``, until a valid resolution names the dispute; then it shows
the resolution's value, marked ``resolved``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from automerge.core import Document

from registrygrid.crdt.conflict_policy import ConflictPolicy, ImmutableFields
from registrygrid.crdt.conflicts import ABSENT, DELETED, Frontiers, Path, map_now, map_object, value_at
from registrygrid.protocol import base32


@dataclass(frozen=True)
class Writer:
    """What the resolver knows of a change that wrote a conflicting value."""

    change_id: str
    author: str
    hlc: tuple[int, int]
    roles: frozenset[str] = frozenset()  # verified by the trust layer at the change's time
    for_owner: bool = False  # the author spoke for the record's owner org then

    @property
    def order(self) -> tuple[tuple[int, int], str]:
        """Last-writer-wins order: clock, then change ID (unique, so no ties)."""
        return (self.hlc, self.change_id)


@dataclass(frozen=True)
class Candidate:
    writer: Writer
    value: Any  # ABSENT for a removal


@dataclass(frozen=True)
class Resolution:
    """A signed resolution of a dispute, as the disputes registry holds it."""

    dispute: str
    value: Any  # ABSENT: remove the path
    change_id: str
    author: str


def pointer(path: Path) -> str:
    """A path as a JSON Pointer (RFC 6901) into the record."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in path)


def dispute_id(registry: str, record_id: str, path: Path, change_ids: Sequence[str]) -> str:
    """The id every node gives the dispute over these writes of this path."""
    digest = hashlib.sha256("\0".join([registry, record_id, pointer(path), *sorted(change_ids)]).encode()).digest()
    return "dispute-" + base32.encode_bytes(digest[:20])


class FieldConflict(msgspec.Struct, frozen=True, kw_only=True):
    """One settled (or disputed) conflict, as a record shows it."""

    path: str  # JSON Pointer into the record, e.g. /fields/pricing/amount
    rule: str
    status: str  # settled | disputed | resolved
    value: Any  # what the record shows at path (null with removed)
    removed: bool = False
    chosen: str | None = None  # the change whose value won; None when merged (union) or resolved
    dispute: str | None = None
    resolved_by: str | None = None  # the resolution's change ID
    writes: list[dict[str, Any]] = []  # {change, author, hlc, value, removed}


def settle(doc: Document, frontiers: Frontiers, *, policy: ConflictPolicy, kind: str, registry: str,
           record_id: str, describe: Callable[[bytes], Writer],
           resolutions: Callable[[str], Resolution | None] | None = None,
           created_heads: Callable[[], list[bytes]] | None = None,
           written: dict[Any, Any] | None = None) -> list[FieldConflict]:
    """The record's conflicts, each with the value its rule chose. ``describe``
    names the writer of an Automerge change by its hash; ``created_heads``
    gives the heads of the record's create(s), for immutable fields;
    ``written`` keeps what each change wrote at each path between calls
    (RecordDoc.written)."""
    immutable = policy.immutable_fields(kind)
    settling = _Settling(doc, policy, kind, registry, record_id, describe, resolutions, written, immutable)
    out = settling.paths(frontiers)
    if immutable and created_heads is not None:
        out += _immutable(doc, immutable, created_heads, describe)
    return out


_CREATED = ("created",)


@dataclass
class _Settling:
    """One settle call's inputs, for settling paths and, inside a map that
    a writer replaced, the paths under it."""

    doc: Document
    policy: ConflictPolicy
    kind: str
    registry: str
    record_id: str
    describe: Callable[[bytes], Writer]
    resolutions: Callable[[str], Resolution | None] | None
    written: dict[Any, Any] | None
    immutable: ImmutableFields

    def paths(self, frontiers: Frontiers) -> list[FieldConflict]:
        out: list[FieldConflict] = []
        replaced = _replaced_maps(self.doc, frontiers)
        for path in sorted({*frontiers, *replaced}):
            if any(path[:i] in frontiers or path[:i] in replaced for i in range(1, len(path))):
                continue  # settled with the map above it
            if _is_immutable(path, self.immutable):
                continue  # the create's value stands (below)
            if path in replaced:
                out += self._replaced_map(path, frontiers)
                continue
            if path == _CREATED and _one_content(self.doc, frontiers[path]):
                # One record created twice alike, differing only in who and
                # when: a statement carried by two of its org's nodes (whoever
                # publishes one adds nothing: docs/trust.md), a create retried
                # on another node. Nothing for anyone to settle; every node
                # shows the same `created`, Automerge's own pick.
                continue
            candidates = [Candidate(self.describe(h), _written_at(self.doc, path, h, self.written))
                          for h in frontiers[path]]
            if len({_canonical(c.value) for c in candidates}) == 1:
                continue
            value, chosen, shown = self._decide(path, candidates)
            out.append(shown(value, chosen))
        return out

    def _replaced_map(self, at: Path, frontiers: Frontiers) -> list[FieldConflict]:
        """A map inside ``fields`` that some writers replaced (a number,
        string or list put in its place, or the map removed) while others
        wrote inside it. The replacing writes hold nothing inside the map:
        judged at an inner path, ``max`` compared an inner number with
        nothing and the record showed a map of that one inner write, which
        no one wrote. So the replacements compete with the map, each inside
        writer showing the map as it left it; where the map stands, the
        conflicts among the writers inside it are settled at their own
        paths, without the replacements."""
        under = {p: w for p, w in frontiers.items() if len(p) > len(at) and p[:len(at)] == at}
        writers = sorted({h for w in under.values() for h in w})
        replacers = {h for h in writers if map_object(self.doc, at, h) is None}
        candidates, hashes = [], {}
        for h in writers:
            left = _written_at(self.doc, at, h, self.written) if h in replacers else _left_at(self.doc, at, h,
                                                                                              self.written)
            candidate = Candidate(self.describe(h), left)
            candidates.append(candidate)
            hashes[candidate.writer.change_id] = h
        value, chosen, shown = self._decide(at, candidates)
        replaced = chosen is not None and hashes[chosen.writer.change_id] in replacers
        if not replaced and chosen is not None:
            value = map_now(self.doc, at, hashes[chosen.writer.change_id])  # the map as it is now
        conflict = shown(value, chosen)
        if replaced or conflict.status == "resolved":
            return [conflict]
        inside = {p: kept for p, w in under.items() if len(kept := [h for h in w if h not in replacers]) > 1}
        settled_inside = self.paths(inside)
        if settled_inside and isinstance(conflict.value, dict):
            shows = copy.deepcopy(conflict.value)  # the map as the record shows it: its own conflicts settled
            for inner in settled_inside:
                _set(shows, unpointer(inner.path)[len(at):], ABSENT if inner.removed else inner.value)
            conflict = msgspec.structs.replace(conflict, value=shows)
        return [conflict, *settled_inside]

    def _decide(self, path: Path, candidates: list[Candidate]) -> tuple[Any, Candidate | None,
                                                                         Callable[[Any, Candidate | None],
                                                                                  FieldConflict]]:
        """The rule's pick at ``path``, and how to show it (a ``manual``
        rule's dispute and its resolution, if one counts, decide)."""
        rule = self.policy.rule_for(self.kind, path)
        value, chosen = choose(rule, candidates, self.policy)
        status, dispute, resolved_by = "settled", None, None
        resolution = None
        if rule == "manual":
            dispute = dispute_id(self.registry, self.record_id, path, [c.writer.change_id for c in candidates])
            resolution = self.resolutions(dispute) if self.resolutions is not None else None
            status = "disputed" if resolution is None else "resolved"
            if resolution is not None:
                value, chosen, resolved_by = resolution.value, None, resolution.change_id

        def shown(shown_value: Any, shown_chosen: Candidate | None) -> FieldConflict:
            if resolution is not None:
                shown_value, shown_chosen = resolution.value, None
            return _shown(path, rule, status, shown_value, shown_chosen, candidates, dispute, resolved_by)

        return value, chosen, shown


def _replaced_maps(doc: Document, frontiers: Frontiers) -> set[Path]:
    """The maps inside ``fields`` above a conflicting path that one of its
    writers did not leave as a map (it replaced or removed it), each the
    highest such map of its path (a map that conflicts itself settles what
    is under it)."""
    out: set[Path] = set()
    for path, writers in frontiers.items():
        if path[0] != "fields":
            continue
        for end in range(2, len(path)):
            if path[:end] in frontiers:
                break
            if any(map_object(doc, path[:end], h) is None for h in writers):
                out.add(path[:end])
                break
    return out


def _one_content(doc: Document, creates: Sequence[bytes]) -> bool:
    """Whether raced creates wrote the same record but for ``created``."""
    contents = {_canonical({k: v for k, v in value_at(doc, (), [h]).items() if k != "created"}) for h in creates}
    return len(contents) == 1


# What a document keeps of its changes' writes (RecordDoc.written), at most.
MAX_WRITTEN = 4096


def _written_at(doc: Document, path: Path, change: bytes, written: dict[Any, Any] | None) -> Any:
    """The value at ``path`` as ``change`` left it; a map it made, as that
    map is now (conflicts.map_now: the writes its branch made into it since
    count). A kept list or map is handed out as a copy: it goes into records
    callers may edit."""
    if written is None:
        value = value_at(doc, path, [change])
    else:
        key = (path, change)
        if key not in written:
            if len(written) >= MAX_WRITTEN:  # a record that conflicts without end: start afresh
                written.clear()
            written[key] = value_at(doc, path, [change])
        value = written[key]
    if isinstance(value, dict):
        return map_now(doc, path, change)  # read anew: the document changes between calls
    return copy.deepcopy(value) if isinstance(value, list) else value


def _left_at(doc: Document, path: Path, change: bytes, written: dict[Any, Any] | None) -> Any:
    """The value at ``path`` as ``change`` left it, a map included as it
    was then (what that writer saw and wrote), a copy."""
    if written is None:
        return value_at(doc, path, [change])
    key = (path, change)
    if key not in written:
        if len(written) >= MAX_WRITTEN:
            written.clear()
        written[key] = value_at(doc, path, [change])
    return copy.deepcopy(written[key])


def choose(rule: str, candidates: Sequence[Candidate], policy: ConflictPolicy) -> tuple[Any, Candidate | None]:
    """The value a rule picks among concurrent writes, and whose it is
    (None when the value merges several)."""
    latest = max(candidates, key=lambda c: c.writer.order)
    if rule == "owner-wins":
        owners = [c for c in candidates if c.writer.for_owner]
        return _latest(owners or candidates)
    if rule == "role-priority":
        best = min(_rank(c.writer, policy.roles) for c in candidates)
        return _latest([c for c in candidates if _rank(c.writer, policy.roles) == best])
    if rule in ("max", "min"):
        numbers = [c for c in candidates if _is_number(c.value)]
        if not numbers:
            return latest.value, latest
        pick = (max if rule == "max" else min)(numbers, key=lambda c: (c.value, c.writer.order))
        return pick.value, pick
    if rule == "union":
        return _union(candidates)
    if rule == "immutable":  # two creates raced: the first one's value
        first = min(candidates, key=lambda c: c.writer.order)
        return first.value, first
    if rule in ("delete-wins", "update-wins"):
        wanted = rule == "delete-wins"
        side = [c for c in candidates if c.value is wanted]
        return _latest(side or candidates)
    return latest.value, latest  # last-writer-wins, manual


def apply(state: dict[str, Any], conflicts: Sequence[FieldConflict]) -> dict[str, Any]:
    """The materialized state with each conflict's chosen value in place.
    ``tags`` is a sorted list in the materialized state (a set)."""
    out = {**state, "fields": _copy(state.get("fields") or {})}
    for conflict in conflicts:
        path = tuple(_unpointer(conflict.path))
        value = ABSENT if conflict.removed else conflict.value
        if path[0] == "tags":
            if len(path) == 1:  # two creates' tag maps
                out["tags"] = sorted(value) if isinstance(value, dict) else []
                continue
            tags = set(out.get("tags") or ())
            tags.discard(path[1]) if value is ABSENT else tags.add(path[1])
            out["tags"] = sorted(tags)
        elif len(path) == 1:
            _set(out, path, value)
        else:
            top = out[path[0]] = _copy(out.get(path[0])) if isinstance(out.get(path[0]), dict) else {}
            _set(top, path[1:], value)
    return out


# ---------------------------------------------------------------- helpers


def _latest(candidates: Sequence[Candidate]) -> tuple[Any, Candidate]:
    pick = max(candidates, key=lambda c: c.writer.order)
    return pick.value, pick


def _rank(writer: Writer, order: Sequence[str]) -> int:
    return min((i for i, role in enumerate(order) if role in writer.roles), default=len(order))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _union(candidates: Sequence[Candidate]) -> tuple[Any, Candidate | None]:
    newest_first = sorted(candidates, key=lambda c: c.writer.order, reverse=True)
    present = [c for c in newest_first if c.value is not ABSENT]
    if not present:
        return ABSENT, newest_first[0]
    if len(present) > 1 and all(isinstance(c.value, dict) for c in present):
        # Maps (two creates' tag maps): every key, the latest's value first.
        return {k: v for c in reversed(present) for k, v in c.value.items()}, None
    lists = [c for c in present if isinstance(c.value, list)]
    if len(lists) != len(present):
        return present[0].value, present[0]  # not all lists: a value beats a removal, then the latest
    merged: list[Any] = []
    seen: set[bytes] = set()
    for candidate in lists:
        for item in candidate.value:
            key = _canonical(item)
            if key not in seen:
                seen.add(key)
                merged.append(item)
    return merged, (lists[0] if len(lists) == 1 else None)


def _canonical(value: Any) -> bytes:
    if value is ABSENT:
        return b"\xc1"  # a msgpack byte that no value encodes to
    return msgspec.msgpack.encode(value, order="sorted")


def _is_immutable(path: Path, immutable: ImmutableFields) -> bool:
    return len(path) > 1 and path[0] == "fields" and path[1] in immutable


def _immutable(doc: Document, immutable: ImmutableFields, created_heads: Callable[[], list[bytes]],
               describe: Callable[[bytes], Writer]) -> list[FieldConflict]:
    """Immutable fields whose value is not the create's: the create's value
    stands, and the conflict says which write tried to change it."""
    current = value_at(doc, ("fields",))
    heads = created_heads()
    at_create = value_at(doc, ("fields",), heads)
    names = set(current if isinstance(current, dict) else ()) | set(at_create if isinstance(at_create, dict) else ())
    out = []
    for name in sorted(names):
        if name not in immutable:
            continue
        before = at_create.get(name, ABSENT) if isinstance(at_create, dict) else ABSENT
        now = current.get(name, ABSENT) if isinstance(current, dict) else ABSENT
        if _canonical(before) == _canonical(now):
            continue
        path = ("fields", name)
        created = [Candidate(describe(h), value_at(doc, path, [h])) for h in heads]
        value, chosen = choose("immutable", created, ConflictPolicy())
        out.append(FieldConflict(path=pointer(path), rule="immutable", status="settled",
                                 value=None if value is ABSENT else value, removed=value is ABSENT,
                                 chosen=chosen.writer.change_id if chosen else None,
                                 writes=[*_writes(created), {"change": None, "author": None, "hlc": None,
                                                             "value": None if now is ABSENT else now,
                                                             "removed": now is ABSENT}]))
    return out


def _shown(path: Path, rule: str, status: str, value: Any, chosen: Candidate | None,
           candidates: Sequence[Candidate], dispute: str | None, resolved_by: str | None) -> FieldConflict:
    return FieldConflict(path=pointer(path), rule=rule, status=status, value=None if value is ABSENT else value,
                         removed=value is ABSENT, chosen=chosen.writer.change_id if chosen else None,
                         dispute=dispute, resolved_by=resolved_by, writes=_writes(candidates))


def _writes(candidates: Sequence[Candidate]) -> list[dict[str, Any]]:
    ordered = sorted(candidates, key=lambda c: c.writer.order)
    return [{"change": c.writer.change_id, "author": c.writer.author, "hlc": list(c.writer.hlc),
             "value": None if c.value is ABSENT else c.value, "removed": c.value is ABSENT} for c in ordered]


def unpointer(pointer_text: str) -> list[str]:
    """The path a JSON Pointer names."""
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer_text.split("/")[1:]]


_unpointer = unpointer


def get_in(value: Any, path: Sequence[str]) -> Any:
    """The value at ``path`` inside plain maps (ABSENT when there is none)."""
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return ABSENT
        value = value[key]
    return value


def put_in(target: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """Set (or, with ABSENT, remove) the value at ``path`` inside plain maps."""
    _set(target, path, value)


def same(a: Any, b: Any) -> bool:
    """Equal as stored values (1 and 1.0 and True differ)."""
    return _canonical(a) == _canonical(b)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _set(target: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for key in path[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            if value is ABSENT:
                # Nothing to remove under a value that is no map: made a map
                # here, the removal showed {} where one write had put 0.
                return
            child = {}
            target[key] = child
        target = child
    if value is ABSENT:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = _copy(value)


__all__ = ["DELETED", "Candidate", "FieldConflict", "Resolution", "Writer", "apply", "choose", "dispute_id",
           "pointer", "settle"]
