"""Saved views: named queries whose results a node keeps materialized.

A view is a record of ``grid.views`` (kind ``view``, schemas/builtin/
view.v1.json): its record id is the view's name; its fields a display
title, a description and a query of the search language (search/query.py)
without a cursor. Views replicate like any record, so an org's views are
shared in its federation, and only the owner org's nodes change them.

Each node materializes the views its own org owns (``engine.owner``), the
``MAX_MATERIALIZED`` oldest of them; any other view is answered live, by
running its query. A materialized view is its member set: (registry, id,
and the value the query orders them by) of up to ``MAX_MEMBERS`` records,
kept in a state file per view (``HOME/index/views/<name>.json``, written
with ``write_json_durably``) with the feed cursor it reflects.

Refresh (``Views.refresh``, on the indexing thread right after each index
catch-up pass, node/search.py) is incremental: the records the feed touched
after a view's cursor are judged by the view's query restricted to them
(``SearchIndex.matching``: its text, filter and registries, one tantivy
query for the whole batch), and each that joins, stays or leaves the
members is an event ``added``, ``updated`` or ``removed`` carrying the feed
sequence of the change that caused it. A new or edited view is materialized
from scratch (an edit emits ``reset``); a deleted one loses its state. A
query that does not parse (a view may arrive from a peer) makes the view
show that error (message and JSON pointer), never stops the others.

Events are numbered per view (``n``, dense) under a ``generation`` that
names one life of the state (a view deleted and made again starts a new
one), so a stream client resumes with ``"<generation>.<n>"``; the last
``RING`` events are kept in memory, and a client further behind (or after a
node restart, or across a reset) gets the whole member list instead.

Why these numbers: 64 materialized views x 1,000 members x ~100 bytes is a
few MiB of state at most, and a refresh pass costs one small query per view
per batch of feed events; 1,000 members is also the deepest page a
relevance-ordered search reaches (query.MAX_RELEVANCE_WINDOW), so a view
holds what one search can list. 10,000 events per ring keep ~1 MiB per view
of history, minutes of changes on a busy node, for reconnecting clients.

No trio here (DESIGN.md layering): node/search.py runs ``refresh`` on its
worker thread and the bridge reads through the thread-safe methods.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from registrygrid import b64url
from registrygrid.errors import Conflict, RegistryError, ValidationError
from registrygrid.home import write_json_durably
from registrygrid.protocol import names
from registrygrid.search import query as q
from registrygrid.search.index import NOT_INDEXED, SearchIndex, doc_key, kid_of

log = logging.getLogger(__name__)

VIEWS_REGISTRY = "grid.views"
_EVENT_NUMBER = re.compile(r"[0-9]{1,20}")
VIEW_KIND = "view"
STATE_VERSION = 1
# See the module docstring for where these come from.
MAX_MATERIALIZED = 64
MAX_MEMBERS = q.MAX_RELEVANCE_WINDOW
RING = 10_000
# Feed events read per step of a refresh (the most LocalRegistry.changes gives).
BATCH = 10_000
# A view's state is written when its members or events change, and at
# least every this many feed events otherwise: a restart replays at most
# that much of the feed (a replay of events that changed nothing changes
# nothing again), without an fsync per view per indexing pass.
SAVE_EVERY = 10_000
# Members per page of GET /v1/views/{name} unless the view's query says.
DEFAULT_PAGE = 20


# ---------------------------------------------------------------- definitions


def _refused(path: str, message: str) -> ValidationError:
    return ValidationError(f"query{path}: {message}", details=[{"path": path, "message": message}])


def check_query(obj: Any) -> q.Query:
    """A view's query, parsed: the search language (search/query.py), in
    text mode (semantic and hybrid rank by meaning and match everything:
    there is no member set to keep), with no cursor (a view is every
    match). ValidationError names the bad part (details[0].path, a JSON
    pointer into the query)."""
    query = q.parse_query(obj)
    if query.cursor is not None:
        raise _refused("/cursor", "a view is every match, in the query's order: no cursor")
    if query.mode != "text":
        raise _refused("/mode", "a view matches records by words and filters (mode text); semantic and hybrid "
                                "rank every record by meaning, which gives no members to keep")
    if isinstance(obj, Mapping) and obj.get("federated") not in (None, False):
        raise _refused("/federated", "a view is materialized from this node's index: not federated")
    return query


def under(prefix: str, exc: ValidationError) -> ValidationError:
    """``exc`` with its JSON pointers moved under ``prefix`` (the query's place in a body)."""
    details = exc.details if isinstance(exc.details, list) else []
    moved = [{**d, "path": prefix + d.get("path", "").rstrip("/")} if isinstance(d, dict) else d for d in details]
    return ValidationError(exc.message, details=moved or [{"path": prefix, "message": exc.message}])


def view_fields(name: str, query: Any, *, description: str = "", title: str | None = None) -> dict[str, Any]:
    """The fields of view ``name``'s record, checked: a bad query is refused
    with pointers under /query (as in a PUT /v1/views/{name} body)."""
    names.record_id(name)
    try:
        check_query(query)
    except ValidationError as exc:
        raise under("/query", exc) from None
    fields: dict[str, Any] = {"name": title or name, "query": query}
    if description:
        fields["description"] = description
    return fields


@dataclass(frozen=True)
class Definition:
    """A view record as the views read it."""

    name: str
    title: str
    description: str
    owner: str | None
    created_at: int
    query_json: Any
    query: q.Query | None  # None when the query is refused (``error``)
    error: dict[str, str] | None
    digest: str  # of the query: an edit of it makes the view anew

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Definition:
        fields = record.get("fields") or {}
        query_json = fields.get("query")
        query: q.Query | None = None
        error = None
        try:
            query = check_query(query_json)
        except ValidationError as exc:
            detail = exc.details[0] if isinstance(exc.details, list) and exc.details else {}
            error = {"message": exc.message, "path": "/query" + str(detail.get("path", "")).rstrip("/")}
        canonical = json.dumps(query_json, sort_keys=True, separators=(",", ":"), default=str)
        return cls(record["id"], str(fields.get("name") or record["id"]), str(fields.get("description") or ""),
                   record.get("owner"), int(record.get("created_at") or 0), query_json, query, error,
                   hashlib.sha256(canonical.encode()).hexdigest())


def materialized_set(definitions: Iterable[Definition], owner: str | None) -> list[Definition]:
    """The views a node of ``owner`` materializes: its org's oldest
    ``MAX_MATERIALIZED`` (creation time, then name), so a new view never
    displaces one already kept."""
    mine = [d for d in definitions if owner is not None and d.owner == owner]
    mine.sort(key=lambda d: (d.created_at, d.name))
    return mine[:MAX_MATERIALIZED]


# ---------------------------------------------------------------- state


@dataclass(frozen=True)
class Member:
    registry: str
    id: str
    value: Any  # the sort field's value (a number, or a keyword's string), or the BM25 score of a relevance order
    kid: int  # the index's tie-breaker (search/index.py kid_of)


@dataclass(frozen=True)
class ViewEvent:
    n: int  # the view's own event number (dense, from 1, per generation)
    type: str  # added | updated | removed | reset
    registry: str = ""
    id: str = ""
    seq: int = 0  # the feed sequence of the change that caused it (reset: the cursor then)

    def to_dict(self, generation: str) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": f"{generation}.{self.n}", "type": self.type, "seq": self.seq}
        if self.type != "reset":
            out.update(registry=self.registry, id=self.id)
        return out


@dataclass
class _State:
    """One materialized view: written by the refresh thread only; readers
    copy what they need under ``Views._lock`` (members and ordered are
    replaced, never changed in place)."""

    definition: Definition
    generation: str
    n: int = 0
    cursor: int = 0
    truncated: bool = False
    members: dict[str, Member] = field(default_factory=dict)
    ordered: list[Member] = field(default_factory=list)
    ring: deque[ViewEvent] = field(default_factory=lambda: deque(maxlen=RING))
    saved_cursor: int = 0
    error: dict[str, str] | None = None  # a failure while materializing (the query itself parsed)
    epoch: str = ""  # the index's feed it was made from (SearchIndex.epoch)

    @property
    def failed(self) -> dict[str, str] | None:
        return self.definition.error or self.error


class _Descending:
    """A value that sorts backwards: numbers and keywords alike (a keyword
    sort orders strings, which cannot be negated)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value

    def __lt__(self, other: _Descending) -> bool:
        return bool(other.value < self.value)

    def __gt__(self, other: _Descending) -> bool:
        return bool(other.value > self.value)

    __hash__ = None  # type: ignore[assignment]


def _order_key(sort: q.SortKey) -> Callable[[Member], tuple[Any, int]]:
    """The index's order (search/index.py): the value in the query's
    direction (BM25 best first for relevance), ties by kid."""
    if sort.descending:
        return lambda m: (_Descending(m.value), m.kid)
    return lambda m: (m.value, m.kid)


# A file name is at most 255 bytes on the usual file systems.
_MAX_FILE_STEM = 160


def _state_file(folder: Path, name: str) -> Path:
    # Record ids may hold ':' (names.RECORD_ID); quoted, every name is a plain
    # file name, but three bytes a ':': a long one made a name the file system
    # refused, and the failure stopped every view. A long name is cut and
    # told apart by its digest (the file holds the whole name).
    stem = quote(name, safe='._-@~+')
    if len(stem) > _MAX_FILE_STEM:
        stem = f"{stem[:100]}~{hashlib.sha256(name.encode()).hexdigest()[:32]}"
    return folder / f"{stem}.json"


def _encode_page(member: Member) -> str:
    raw = json.dumps([member.value, member.kid]).encode()
    return b64url.encode(raw)


def _decode_page(text: str) -> tuple[Any, int]:
    try:
        value, kid = json.loads(b64url.decode(text))
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or type(kid) is not int:
            raise ValueError(text)
    except (ValueError, TypeError, RecursionError):  # RecursionError: nested past the parser's depth
        raise ValidationError("cursor: not a cursor of this view's pages",
                              details=[{"path": "query:cursor", "message": "malformed"}]) from None
    return value, kid


# ---------------------------------------------------------------- the views of one node


class Views:
    """The saved views of one node over its search index (see the module docstring).

    ``registry`` is the node's LocalRegistry; ``owner`` gives the node's org."""

    def __init__(self, path: Path | str, index: SearchIndex, registry: Any, owner: Callable[[], str | None]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.index = index
        self.registry = registry
        self.owner = owner
        self._states: dict[str, _State] = {}
        self._loaded = False
        self._cursor = 0  # the feed sequence the definitions were last read at
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------ refresh (the indexing thread)

    def refresh(self) -> int:
        """Bring the views up to the index's cursor: definitions first (new,
        edited, deleted views), then every materialized view's members.
        Returns the number of events emitted. One caller at a time."""
        emitted = 0
        changed = False
        with self.index.steady():
            through = self.index.cursor
            if not self._loaded or self._views_touched(through):
                emitted += self._sync(through)
                changed = True
            for state in [s for s in self._states.values() if s.epoch != self.index.epoch]:
                # Made from a feed the store no longer has (restored, made
                # anew): its members and cursor name records of that one.
                emitted += self._materialize(state, state.definition, through, reset=True)
                changed = True
            behind = [s for s in self._states.values() if s.failed is None and s.cursor < through]
            if behind:
                emitted += self._advance(behind, through)
            self._cursor = max(self._cursor, through)
        if emitted or changed:
            self._notify()
        return emitted

    def _views_touched(self, through: int) -> bool:
        """Whether a view record changed in the feed since the last read, up to ``through``."""
        if self._cursor >= through:
            return False
        found = self.registry.changes(self._cursor, limit=1, registry=VIEWS_REGISTRY)
        return bool(found) and found[0].seq <= through

    def _sync(self, through: int) -> int:
        definitions = [Definition.of(r) for r in self.registry.iter_all(VIEWS_REGISTRY)]
        wanted = {d.name: d for d in materialized_set(definitions, self.owner())}
        emitted = 0
        for name in [n for n in self._states if n not in wanted]:
            with self._lock:
                del self._states[name]
            _state_file(self.path, name).unlink(missing_ok=True)
        if not self._loaded:  # files of views deleted or given up while the node was stopped
            keep = {_state_file(self.path, name).name for name in wanted}
            for stale in self.path.glob("*.json"):
                if stale.name not in keep:
                    stale.unlink(missing_ok=True)
        for name, definition in wanted.items():
            state = self._states.get(name)
            if state is None and not self._loaded:
                state = self._load(definition)
            if state is None:
                emitted += self._materialize(_State(definition, secrets.token_hex(4)), definition, through,
                                             reset=False)
            elif state.definition.digest != definition.digest:
                emitted += self._materialize(state, definition, through, reset=True)
            else:
                with self._lock:
                    state.definition = definition  # a new title or description
        self._loaded = True
        return emitted

    def _load(self, definition: Definition) -> _State | None:
        """The stored state of ``definition``'s view, if readable and of the
        same query (an edit made while the node was stopped is a reset)."""
        path = _state_file(self.path, definition.name)
        try:
            data = json.loads(path.read_text())
            if data.get("version") != STATE_VERSION or data.get("name") != definition.name:
                return None
            members = {}
            for registry, record_id, value in data["members"]:
                key = doc_key(registry, record_id)
                members[key] = Member(registry, record_id, value, kid_of(key))
            state = _State(definition, str(data["generation"]), int(data["n"]), int(data["cursor"]),
                           bool(data["truncated"]), members, saved_cursor=int(data["cursor"]),
                           epoch=str(data.get("epoch", self.index.epoch)))  # a file from before epochs: this one
            if definition.query is not None:  # values of mixed types don't sort: a damaged file too
                state.ordered = sorted(members.values(), key=_order_key(definition.query.sort))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError) as exc:  # torn by hand or another version: made anew
            log.warning("views: state of %s unreadable (%s); materializing it again", definition.name, exc)
            return None
        if data.get("digest") != definition.digest:
            state.definition = replace(definition, digest=str(data.get("digest")))  # _sync resets it
        with self._lock:
            self._states[definition.name] = state
        return state

    def _scratch(self, query: q.Query) -> tuple[dict[str, Member], bool]:
        """The view's members from a search of the whole index, and whether
        more records match than it keeps."""
        relevance = query.sort.field == "relevance"
        found = self.index.search(replace(query, limit=MAX_MEMBERS if relevance else MAX_MEMBERS + 1, cursor=None,
                                          facets=(), explain=False))
        hits = found["hits"]
        truncated = found["total"] > len(hits) if relevance else len(hits) > MAX_MEMBERS
        members = {}
        for hit in hits[:MAX_MEMBERS]:
            members[hit.key] = Member(hit.registry, hit.id, hit.relevance if relevance else hit.value, hit.kid)
        return members, truncated

    def _materialize(self, state: _State, definition: Definition, through: int, *, reset: bool) -> int:
        """``state`` made anew from ``definition`` at the index's ``through``."""
        members: dict[str, Member] = {}
        truncated = False
        error = None
        if definition.query is not None:
            try:
                members, truncated = self._scratch(definition.query)
            except (RegistryError, ValueError) as exc:  # ValueError: tantivy refused a compiled query
                error = self._failure(definition, exc)
        events = [ViewEvent(state.n + 1, "reset", seq=through)] if reset else []
        state.epoch = self.index.epoch
        self._publish(state, definition=definition, members=members, truncated=truncated, cursor=through,
                      events=events, error=error, save=True)
        with self._lock:
            self._states[definition.name] = state
        return len(events)

    def _failure(self, definition: Definition, exc: Exception) -> dict[str, str]:
        message = exc.message if isinstance(exc, RegistryError) else str(exc)
        log.warning("views: view %s failed: %s", definition.name, message)
        return {"message": f"the query failed on this node's index: {message}"[:500], "path": "/query"}

    def _advance(self, states: list[_State], through: int) -> int:
        """Each of ``states`` moved to ``through``, batch by batch of feed events."""
        emitted = 0
        since = min(s.cursor for s in states)
        while since < through:
            events = [e for e in self.registry.changes(since, limit=BATCH) if e.seq <= through]
            if not events:
                break
            end = events[-1].seq
            for state in states:
                if state.cursor >= end or state.failed is not None:
                    continue
                touched: dict[str, tuple[str, str, int]] = {}
                for e in events:
                    if e.seq > state.cursor and e.registry not in NOT_INDEXED:
                        touched[doc_key(e.registry, e.record)] = (e.registry, e.record, e.seq)
                emitted += self._apply(state, touched, end)
            since = end
        for state in states:
            if state.cursor < through and state.failed is None:
                self._publish(state, cursor=through, events=[], save=through - state.saved_cursor >= SAVE_EVERY)
        return emitted

    def _apply(self, state: _State, touched: dict[str, tuple[str, str, int]], end: int) -> int:
        """The records ``touched`` (key -> registry, id, last feed seq) judged
        again for ``state``'s view, whose cursor moves to ``end``."""
        definition = state.definition
        query = definition.query
        assert query is not None
        if not touched:
            self._publish(state, cursor=end, events=[], save=end - state.saved_cursor >= SAVE_EVERY)
            return 0
        old = state.members
        try:
            if state.truncated:  # who comes next below the cut is unknown: the whole query again
                new, truncated = self._scratch(query)
            else:
                matched = self.index.matching(query, list(touched))
                new = dict(old)
                for key, (registry, record_id, _) in touched.items():
                    if key in matched:
                        new[key] = Member(registry, record_id, matched[key], kid_of(key))
                    else:
                        new.pop(key, None)
                truncated = len(new) > MAX_MEMBERS
                if truncated:
                    new = {doc_key(m.registry, m.id): m
                           for m in sorted(new.values(), key=_order_key(query.sort))[:MAX_MEMBERS]}
        except (RegistryError, ValueError) as exc:
            self._publish(state, cursor=end, events=[], error=self._failure(definition, exc), save=False)
            return 0
        events = []
        for key in set(touched) | (old.keys() ^ new.keys()):
            seq = touched[key][2] if key in touched else end
            if key in new and key not in old:
                events.append((seq, key, "added", new[key]))
            elif key in old and key not in new:
                events.append((seq, key, "removed", old[key]))
            elif key in new:
                events.append((seq, key, "updated", new[key]))
        events.sort(key=lambda e: (e[0], e[1]))
        numbered = [ViewEvent(state.n + i, kind, m.registry, m.id, seq)
                    for i, (seq, _, kind, m) in enumerate(events, 1)]
        if not numbered:  # nobody joined, stayed or left (a truncated view's scores may drift: kept as they were)
            self._publish(state, cursor=end, events=[], save=end - state.saved_cursor >= SAVE_EVERY)
            return 0
        self._publish(state, members=new, truncated=truncated, cursor=end, events=numbered, save=True)
        return len(numbered)

    def _publish(self, state: _State, *, cursor: int, events: list[ViewEvent], save: bool,
                 definition: Definition | None = None, members: dict[str, Member] | None = None,
                 truncated: bool | None = None, error: dict[str, str] | None = None) -> None:
        """Persist, then show readers: the state file first, so no reader
        ever sees an event that a crash could take back."""
        definition = definition or state.definition
        members = state.members if members is None else members
        ordered = state.ordered
        if members is not state.members or definition is not state.definition:
            ordered = sorted(members.values(), key=_order_key(definition.query.sort)) if definition.query else []
        n = events[-1].n if events else state.n
        truncated = state.truncated if truncated is None else truncated
        if save:
            try:
                write_json_durably(_state_file(self.path, definition.name), {
                    "version": STATE_VERSION, "name": definition.name, "digest": definition.digest,
                    "generation": state.generation, "n": n, "cursor": cursor, "truncated": truncated,
                    "epoch": state.epoch,
                    "members": [[m.registry, m.id, m.value] for m in ordered]})
            except OSError as exc:
                # This view fails (shown as its error, events not emitted, so
                # none a crash could take back); the others and the index go on.
                log.warning("views: state of %s could not be saved: %s", definition.name, exc)
                error = {"message": f"its state could not be saved on this node: {exc}"[:500], "path": ""}
                events, save = [], False
                n = state.n
        with self._lock:
            state.definition, state.members, state.ordered = definition, members, ordered
            state.truncated, state.cursor, state.n, state.error = truncated, cursor, n, error
            state.ring.extend(events)
            if save:
                state.saved_cursor = cursor

    # ------------------------------------------------------------ listeners

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` (on the refresh thread: it must only hand off,
        e.g. ``loop.call_soon_threadsafe``) after each refresh that emitted
        events or changed the views; returns the unsubscribe function."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback()
            except RuntimeError:  # the listener's loop closed: it will unsubscribe
                pass

    # ------------------------------------------------------------ reads (any thread)

    def _current(self, definition: Definition) -> _State | None:
        """The materialized state of the view as ``definition`` says it, or
        None (not this node's to keep, or its refresh has not run yet)."""
        with self._lock:
            state = self._states.get(definition.name)
        if state is None or state.definition.digest != definition.digest:
            return None
        return state

    def list(self, registries: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Every view this node holds, in name order, with what it keeps of
        each; ``registries``: its members counted in those only."""
        return [describe(d, self._current(d), registries) for d in (Definition.of(r)
                                                                    for r in self.registry.iter_all(VIEWS_REGISTRY))]

    def show(self, name: str, *, limit: int | None = None, cursor: str | None = None,
             registries: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The view and a page of its results as records, in the query's
        order: from its members when materialized here, else by running the
        query now (``live``). ``registries`` narrows the results (a token
        limited to one registry)."""
        definition = Definition.of(self.registry.get(VIEWS_REGISTRY, name))
        state = self._current(definition)
        out: dict[str, Any] = {"view": describe(definition, state, registries), "items": [], "total": 0,
                               "next_cursor": None}
        if definition.query is None or (state is not None and state.failed is not None):
            return out
        query = definition.query
        asked = limit or (definition.query_json.get("limit") if isinstance(definition.query_json, dict) else None) \
            or DEFAULT_PAGE
        if state is None:
            return {**out, **self._live(definition, min(asked, q.MAX_LIMIT), cursor, registries)}
        with self._lock:
            ordered = state.ordered
        if registries is not None:
            ordered = [m for m in ordered if m.registry in registries]
        start = 0
        if cursor:
            value, kid = _decode_page(cursor)
            order = _order_key(query.sort)
            after = order(Member("", "", value, kid))
            try:
                start = next((i for i, m in enumerate(ordered) if order(m) > after), len(ordered))
            except TypeError:  # a string where the view orders numbers, or the reverse
                raise ValidationError("cursor: not a cursor of this view's pages",
                                      details=[{"path": "query:cursor", "message": "of another order"}]) from None
        items = []
        index = start
        while index < len(ordered) and len(items) < asked:
            member = ordered[index]
            index += 1
            try:
                record = self.registry.get(member.registry, member.id)
            except RegistryError:  # deleted since the last refresh: the next one removes it
                continue
            items.append({"registry": member.registry, "id": member.id, "sort_value": member.value,
                          "record": record})
        more = index < len(ordered)
        return {**out, "items": items, "total": len(ordered),
                "next_cursor": _encode_page(ordered[index - 1]) if more and items else None}

    def _live(self, definition: Definition, limit: int, cursor: str | None,
              registries: tuple[str, ...] | None) -> dict[str, Any]:
        from registrygrid.search.service import answer

        body = {**definition.query_json, "limit": limit}
        if cursor:
            body["cursor"] = cursor
        found = answer(self.index, self.registry, body, registries=registries)
        relevance = definition.query is not None and definition.query.sort.field == "relevance"
        items = [{"registry": i["registry"], "id": i["id"], "record": i["record"],
                  "sort_value": i["score"] if relevance else i.get("sort_value")} for i in found["items"]]
        return {"items": items, "total": found["total"], "next_cursor": found["next_cursor"]}

    def changes(self, name: str, after: str | None, *,
                registries: tuple[str, ...] | None = None) -> dict[str, Any] | None:
        """The view's events after event id ``after`` ("<generation>.<n>"):
        {events, reset, last_id}; ``reset`` is the whole member list (and
        ``events`` empty) when ``after`` is missing, of another generation,
        older than the ring, or before a reset. None while the view waits
        for its first refresh here. NotFound: no such view; Conflict: this
        node does not materialize it (it answers it live). ``registries``
        narrows events and members, as ``show`` does for a token limited
        to one registry (event ids and ``last_id`` stay the view's own)."""
        definition = Definition.of(self.registry.get(VIEWS_REGISTRY, name))
        state = self._current(definition)
        if state is None:
            wanted = materialized_set((Definition.of(r) for r in self.registry.iter_all(VIEWS_REGISTRY)),
                                      self.owner())
            if any(d.name == name for d in wanted):
                return None
            why = (f"it belongs to {definition.owner}, not to this node's org" if definition.owner != self.owner()
                   else f"this node keeps its org's {MAX_MATERIALIZED} oldest views only")
            raise Conflict(f"view {name} is answered live here, with no changes to follow: {why}")
        if state.failed is not None:
            raise Conflict(f"view {name} has no results to follow: {state.failed['message']}",
                           details=[state.failed])
        with self._lock:
            generation, n, ring, ordered, cursor = state.generation, state.n, list(state.ring), state.ordered, \
                state.cursor
        head = f"{generation}.{n}"
        gen, _, number = (after or "").partition(".")
        floor = n - len(ring)
        # ASCII digits only: "²" is a digit to str.isdigit() but not to int().
        if gen == generation and _EVENT_NUMBER.fullmatch(number) and floor <= int(number) <= n:
            events = ring[int(number) - floor:]
            if all(e.type != "reset" for e in events):
                return {"events": [e.to_dict(generation) for e in events
                                   if registries is None or e.registry in registries],
                        "reset": None, "last_id": head}
        return {"events": [], "reset": {"members": [{"registry": m.registry, "id": m.id, "sort_value": m.value}
                                                    for m in ordered
                                                    if registries is None or m.registry in registries],
                                        "through": cursor},
                "last_id": head}


def describe(definition: Definition, state: _State | None,
             registries: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A view as the API shows it (openapi.py ``View``). ``registries``: its
    members counted in those only (a token limited to one registry was told
    how many matched in the others)."""
    failed = definition.error or (state.error if state is not None else None)
    kept = state is not None and failed is None
    members = None
    if kept and state:
        members = len(state.members) if registries is None else \
            sum(1 for m in state.ordered if m.registry in registries)
    return {"name": definition.name, "title": definition.title, "owner": definition.owner,
            "description": definition.description, "query": definition.query_json,
            "materialized": kept, "members": members,
            "truncated": bool(state.truncated) if kept and state else False,
            "through": state.cursor if kept and state else None, "error": failed}


__all__ = ["MAX_MATERIALIZED", "MAX_MEMBERS", "VIEWS_REGISTRY", "VIEW_KIND", "Definition", "ViewEvent", "Views",
           "check_query", "describe", "materialized_set", "view_fields"]
