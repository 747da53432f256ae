"""A record as an Automerge document.

Layout of the document root (every key is written by the create change, so
concurrent creates of one record id merge key by key):

    kind      str        the record kind ("function")
    schema    int        the kind's schema version the fields follow
    owner     str        did:key of the owning org (or author)
    created   map        {"at": HLC wall ms, "by": did}
    tags      map        tag -> true: a map, not a list, so concurrent adds
                         of tags merge as a set
    links     list       [{"rel", "registry", "record"}]
    fields    map        the record's own fields, checked by the kind schema
    deleted   bool       tombstone: deletes are changes like any other

Scalars map to Automerge scalars; dicts to maps, lists to lists. Strings are
scalars (last writer wins), not Text, because registry fields are values,
not collaboratively edited prose.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from automerge.core import ROOT, Document, Message, ObjType, ScalarType, SyncState

from registrygrid.errors import MalformedInput, RegistryError, ValidationError
from registrygrid.protocol import limits

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_DISTINCT = "~distinct"  # never a record's key: the document's keys are kind, schema, owner, ...


def actor_for(public_key: bytes) -> bytes:
    """An author's Automerge actor id: their public key, so actors never collide
    and a verifier can check that a change's actor is its signer."""
    return public_key


class RecordDoc:
    """One record's Automerge document and the change its last transaction made."""

    __slots__ = ("changes", "doc", "history", "written")

    def __init__(self, doc: Document, changes: int = 0) -> None:
        self.doc = doc
        # How many changes the document holds, where its maker knew (0: not
        # counted): what it weighs in memory (engine/doc_cache.py).
        self.changes = changes
        # What a change wrote at a path, by (path, change hash), as conflict
        # settling reads it again and again (crdt/resolver.py): facts of a
        # change never change, so they stay as long as the document does.
        self.written: dict[Any, Any] = {}
        # Which of its changes each one had seen (crdt/conflicts.py
        # History), kept once conflict tracking needs it.
        self.history: Any = None

    @classmethod
    def new(cls, actor: bytes) -> RecordDoc:
        return cls(Document(actor_id=actor))

    @classmethod
    def load(cls, saved: bytes, actor: bytes | None = None) -> RecordDoc:
        doc = Document.load(saved)
        if actor is not None:
            doc.set_actor(actor)
        return cls(doc)

    def save(self) -> bytes:
        return self.doc.save()

    def heads(self) -> list[bytes]:
        return self.doc.get_heads()

    def fork_with_actor(self, actor: bytes) -> RecordDoc:
        # Documents are loaded with a random actor; local edits must carry ours.
        self.doc.set_actor(actor)
        return self

    # ---- local edits: each returns the one Automerge change it made ----

    def create(
        self,
        *,
        kind: str,
        schema: int,
        owner: str,
        created_at: int,
        created_by: str,
        fields: Mapping[str, Any],
        tags: Sequence[str],
        links: Sequence[Mapping[str, str]],
    ) -> Any:
        doc = self.doc
        before = doc.get_heads()
        # The hot path of every create: one transaction, no helper context
        # manager, each put a direct binding call (~1.3 µs each here).
        try:
            with doc.transaction() as tx:
                put = tx.put
                put(ROOT, "kind", _STR, kind)
                put(ROOT, "schema", _INT, schema)
                put(ROOT, "owner", _STR, owner)
                created = tx.put_object(ROOT, "created", _MAP)
                put(created, "at", _INT, created_at)
                put(created, "by", _STR, created_by)
                tag_map = tx.put_object(ROOT, "tags", _MAP)
                for tag in tags:
                    put(tag_map, tag, _BOOL, True)
                _put_value(tx, ROOT, "links", [dict(link) for link in links], 0)
                _put_value(tx, ROOT, "fields", fields, 0)
                put(ROOT, "deleted", _BOOL, False)
        except RegistryError:
            raise
        except Exception as exc:  # the binding raises bare Exception
            raise ValidationError(f"Automerge refused the edit: {exc}") from None
        self.changes += 1
        return _only_change(doc, before)

    def update(
        self,
        *,
        fields: Mapping[str, Any] | None,
        schema: int | None = None,
        tags: Sequence[str] | None = None,
        links: Sequence[Mapping[str, str]] | None = None,
        undelete: bool = False,
        force_undelete: bool = False,
        settle: Collection[tuple[str, ...]] = (),
        field_objs: Sequence[bytes] = (),
        tag_objs: Sequence[bytes] = (),
        distinct: int | None = None,
    ) -> Any | None:
        """Change the document to hold these values; None when nothing differs.
        ``force_undelete`` writes ``deleted: False`` even where the document's
        pick says so already: a record a conflict rule shows deleted (its
        concurrent delete kept by "delete-wins") comes back only by a write
        that sees, and so supersedes, that delete. ``settle``: paths under
        ``fields``, or ``("links",)``, whose concurrent values this update
        replaces, written even where the new value is the one Automerge
        picked (a conflict the record shows settled another way).
        ``field_objs``, ``tag_objs``: where two creates raced, each made its
        own fields and tags maps, Automerge shows one of each and the record
        the one its conflict rule picks (tags: their union); the update goes
        into every one of them, so that it shows whichever is picked, and
        they agree again (crdt/resolver.py reads them as they are now).
        ``distinct``: see _make_distinct."""
        before = self.doc.get_heads()
        settle = frozenset(settle)
        with _edit(self.doc) as tx:
            if schema is not None and _scalar(tx, ROOT, "schema") != schema:
                tx.put(ROOT, "schema", ScalarType.Int, schema)
            if fields is not None:
                current = tx.get(ROOT, "fields")
                if field_objs:
                    for fields_obj in field_objs:
                        _sync_map(tx, fields_obj, fields, 1, ("fields",), settle)
                elif current is None or current[0] != ObjType.Map:
                    _put_value(tx, ROOT, "fields", dict(fields), 0)
                else:
                    _sync_map(tx, current[1], fields, 1, ("fields",), settle)
            if tags is not None:
                tag_ids = list(tag_objs)
                if not tag_ids:
                    tag_obj = tx.get(ROOT, "tags")
                    tag_ids = [tx.put_object(ROOT, "tags", ObjType.Map) if tag_obj is None or tag_obj[0] != ObjType.Map
                               else tag_obj[1]]
                wanted = set(tags)
                for tag_id in tag_ids:
                    for old in tx.keys(tag_id):
                        if old not in wanted:
                            tx.delete(tag_id, old)
                    existing = set(tx.keys(tag_id))
                    for tag in sorted(wanted - existing):
                        tx.put(tag_id, tag, ScalarType.Boolean, True)
            if links is not None:
                if ("links",) in settle or _materialize_tx(tx, ROOT, "links") != [dict(link) for link in links]:
                    _put_value(tx, ROOT, "links", [dict(link) for link in links], 0)  # a new list: always an op
            if force_undelete or (undelete and _scalar(tx, ROOT, "deleted") is not False):
                _overwrite_deleted(tx, False)
            if distinct is not None:
                _make_distinct(tx, distinct)
        after = self.doc.get_heads()
        if after == before:
            return None
        self.changes += 1
        return _only_change(self.doc, before)

    def delete(self, distinct: int | None = None) -> Any:
        before = self.doc.get_heads()
        with _edit(self.doc) as tx:
            _overwrite_deleted(tx, True)
            if distinct is not None:
                _make_distinct(tx, distinct)
        self.changes += 1
        return _only_change(self.doc, before)

    def rollback(self, heads: list[bytes]) -> None:
        """Forget the local changes made since ``heads`` (a change that was
        never committed), keeping the actor."""
        actor = self.doc.get_actor()
        self.doc = self.doc.fork(heads)
        self.doc.set_actor(actor)
        self.changes = max(0, self.changes - 1)
        self.written = {}
        self.history = None

    # ---- remote changes ----

    @classmethod
    def apply(cls, saved: bytes | None, change_bytes: bytes) -> RecordDoc:
        """The document with one more (remote) change. Automerge checks the
        change's deps are present and raises otherwise; callers check deps
        first so that a failure here means a malformed change."""
        try:
            return cls(Document.load((saved or b"") + change_bytes))
        except Exception as exc:  # the binding raises bare Exception
            raise MalformedInput(f"Automerge refused the change: {exc}") from None

    def add_change(self, change_bytes: bytes) -> None:
        """Apply one change, whose deps this document holds, in place: the
        cost of the change alone, where ``apply`` loads the whole document
        again (at 2,000 changes ~15 ms against ~0.4 ms here). The binding
        has no call that takes a change into a document; its sync protocol
        does, so the change goes in as a sync message that carries it and
        nothing else (``_carrying``). A change whose deps are missing is
        held back by Automerge, not applied: the caller checks the heads.
        The document is then suspect, and must be dropped."""
        try:
            self.doc.receive_sync_message(SyncState(), Message.decode(_carrying(change_bytes)))
        except Exception as exc:  # the binding raises bare Exception
            raise MalformedInput(f"Automerge refused the change: {exc}") from None
        self.changes += 1

    def changes_since(self, heads: list[bytes]) -> list[Any]:
        return self.doc.get_changes(heads)

    # ---- reading ----

    def materialize(self, heads: list[bytes] | None = None) -> dict[str, Any]:
        """The record's state: now, or as it was at ``heads`` (a change's own
        history, for judging what that change did)."""
        root = plain(self.doc, ROOT, _MAP, heads)
        tags = root.get("tags")
        root["tags"] = sorted(tags) if isinstance(tags, dict) else []
        root.setdefault("links", [])
        root.setdefault("fields", {})
        root.setdefault("deleted", False)
        return root


# Objects below the document's root a record may hold: its ``fields`` map,
# and values in it nested at most limits.MAX_NESTING levels (as local
# writes and snapshots nest them).
MAX_OBJECT_DEPTH = limits.MAX_NESTING + 1


def plain(doc: Document, obj: bytes, kind: ObjType, heads: list[bytes] | None = None, depth: int = 0) -> Any:
    """The plain value of an Automerge object, now or at ``heads``: what
    ``automerge.core.extract`` gives, with one ``values()`` call per object
    instead of a ``get()`` per key and an ``object_type()`` per child (~30%
    less on every remote apply).

    ValidationError past MAX_OBJECT_DEPTH: a remote update is a flat list
    of ops, so a signed one can make objects thousands deep, and this walk
    (one Python frame per level) raised RecursionError out of the whole
    ingest batch."""
    if depth > MAX_OBJECT_DEPTH:
        raise ValidationError(f"value nested deeper than {limits.MAX_NESTING} levels")
    if kind == _MAP:
        return {key: (plain(doc, child, value, heads, depth + 1) if isinstance(value, ObjType) else value[1])
                for key, (value, child) in zip(doc.keys(obj, heads), doc.values(obj, heads))}
    if kind == _LIST:
        return [(plain(doc, child, value, heads, depth + 1) if isinstance(value, ObjType) else value[1])
                for value, child in doc.values(obj, heads)]
    return doc.text(obj, heads)


@contextlib.contextmanager
def _edit(doc: Document) -> Iterator[Any]:
    """An Automerge transaction whose failures are typed: the binding raises
    bare Exception for values it refuses, which must not abort a whole
    group-commit batch."""
    try:
        with doc.transaction() as tx:
            yield tx
    except RegistryError:
        raise
    except Exception as exc:
        raise ValidationError(f"Automerge refused the edit: {exc}") from None


def _check_key(key: object) -> None:
    # Automerge map keys are non-empty strings; JSON allows "" but a record
    # field needs a name.
    if not isinstance(key, str):
        raise ValidationError(f"object keys must be strings, got a {type(key).__name__}")
    if not key:
        raise ValidationError("object keys must not be empty")


def _carrying(change_bytes: bytes) -> bytes:
    """An Automerge sync message (version 1, type 0x42: the sender's heads,
    what it needs, what it has, then the changes) whose lists are empty but
    for the one change: what a peer that knows nothing of us sends with a
    change. tests/test_record_doc.py holds the binding to this layout."""
    return b"\x42\x00\x00\x00\x01" + _uleb128(len(change_bytes)) + change_bytes


def _uleb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _make_distinct(tx: Any, value: int) -> None:
    """Two ops that leave the document as it was (a key put, then deleted)
    but make the change another one. Automerge 1.0.0rc1 dates every change
    0, so an author whose change was refused and dropped from its document,
    and who makes the same edit again, would make the same change, with
    the same hash, under a new envelope: a node that holds the first
    rejects it as a second envelope of one change (engine/local.py)."""
    tx.put(ROOT, _DISTINCT, ScalarType.Int, value)
    tx.delete(ROOT, _DISTINCT)


def _only_change(doc: Document, before: list[bytes]) -> Any:
    changes = doc.get_changes(before)
    assert len(changes) == 1, "one transaction makes one change"
    return changes[0]


def _overwrite(tx: Any, obj: bytes, key: str) -> None:
    """Clear ``obj[key]`` before a write that must replace every value the
    key holds. automerge 1.0.0rc1 makes no op for a put of the value it
    shows, even where a concurrent write holds another one: such a put
    would leave the conflict (and, for ``deleted``, the transaction
    empty). A delete first makes the write's change overwrite them all."""
    if tx.get(obj, key) is not None:
        tx.delete(obj, key)


def _overwrite_deleted(tx: Any, value: bool) -> None:
    """Write ``deleted``, over every concurrent value: a record shown live
    while Automerge picks a concurrent delete (update-wins), or shown
    deleted while it picks a live value (delete-wins), gets a change that
    supersedes the other side."""
    if _scalar(tx, ROOT, "deleted") is value:
        _overwrite(tx, ROOT, "deleted")
    tx.put(ROOT, "deleted", ScalarType.Boolean, value)


def _scalar(tx: Any, obj: bytes, key: str) -> Any:
    got = tx.get(obj, key)
    if got is None or isinstance(got[0], ObjType):
        return None
    return got[0][1]


def _materialize_tx(tx: Any, obj: bytes, key: str | int) -> Any:
    return _materialize_got(tx, tx.get(obj, key))


def _materialize_got(tx: Any, got: Any) -> Any:
    """The JSON value of what ``tx.get`` answered (None: nothing there)."""
    if got is None:
        return None
    value, obj_id = got
    if not isinstance(value, ObjType):
        return value[1]
    if value == ObjType.Map:
        return {k: _materialize_tx(tx, obj_id, k) for k in tx.keys(obj_id)}
    if value == ObjType.List:
        return [_materialize_tx(tx, obj_id, i) for i in range(tx.length(obj_id))]
    return tx.text(obj_id)


_STR, _INT, _F64, _BOOL, _NULL = ScalarType.Str, ScalarType.Int, ScalarType.F64, ScalarType.Boolean, ScalarType.Null
_MAP, _LIST = ObjType.Map, ObjType.List
_INFINITIES = (float("inf"), float("-inf"))


def _put_value(tx: Any, obj: bytes, key: str | int, value: Any, depth: int, insert: bool = False) -> None:
    """Write a JSON value at obj[key] (or insert at list index ``key``).

    Runs once per field of every write, so the common types are tested
    first by exact type and the bound methods are looked up once."""
    if depth > limits.MAX_NESTING:
        raise ValidationError(f"value nested deeper than {limits.MAX_NESTING} levels")
    put = tx.insert if insert else tx.put
    kind = type(value)
    if kind is str:
        put(obj, key, _STR, value)
    elif kind is dict or (kind is not list and isinstance(value, Mapping)):
        child = (tx.insert_object if insert else tx.put_object)(obj, key, _MAP)
        for k, v in value.items():
            if type(k) is not str or not k:
                _check_key(k)
            _put_value(tx, child, k, v, depth + 1)
    elif kind is list or kind is tuple:
        child = (tx.insert_object if insert else tx.put_object)(obj, key, _LIST)
        for i, v in enumerate(value):
            _put_value(tx, child, i, v, depth + 1, True)
    elif kind is bool:
        put(obj, key, _BOOL, value)
    elif kind is int or (isinstance(value, int) and not isinstance(value, bool)):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValidationError(f"an integer of {len(str(abs(value)))} digits does not fit in 64 bits")
        put(obj, key, _INT, int(value))
    elif kind is float:
        if value != value or value in _INFINITIES:
            raise ValidationError("NaN and infinity are not JSON numbers")
        put(obj, key, _F64, value)
    elif value is None:
        put(obj, key, _NULL, None)
    elif isinstance(value, str):
        put(obj, key, _STR, str(value))
    elif isinstance(value, bool):
        put(obj, key, _BOOL, bool(value))
    elif isinstance(value, float):
        _put_value(tx, obj, key, float(value), depth, insert)
    elif isinstance(value, (list, tuple)):
        _put_value(tx, obj, key, list(value), depth, insert)
    else:
        raise ValidationError(f"unsupported value type {type(value).__name__}")


def _sync_map(tx: Any, obj: bytes, wanted: Mapping[str, Any], depth: int, path: tuple[str, ...] = (),
              settle: frozenset[tuple[str, ...]] = frozenset()) -> None:
    """Make the Automerge map ``obj`` (at ``path``) equal ``wanted`` with the
    fewest ops, so concurrent edits of different fields merge instead of
    overwriting; a path in ``settle`` is written over whatever it holds."""
    if depth > limits.MAX_NESTING:
        raise ValidationError(f"value nested deeper than {limits.MAX_NESTING} levels")
    for key in tx.keys(obj):
        if key not in wanted:
            tx.delete(obj, key)
    for key, value in wanted.items():
        _check_key(key)
        got = tx.get(obj, key)
        if got is not None and settle and path + (key,) in settle:
            _overwrite(tx, obj, key)
            got = None
        if got is not None:
            current, child = got
            if isinstance(value, Mapping) and current == ObjType.Map:
                _sync_map(tx, child, value, depth + 1, path + (key,), settle)
                continue
            # One read of the key: a key written many times costs Automerge a
            # walk of all its ops at each read (~15 us at 10,000 writes).
            shown = _materialize_got(tx, got)
            if same_value(shown, value):
                continue
        _put_value(tx, obj, key, value, depth)


def same_value(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are the same JSON value, types compared all the way
    down. Python's ``==`` takes ``[1]`` for ``[true]``, ``[2]`` for
    ``[2.0]`` and ``0.0`` for ``-0.0``: such a change was left out of the
    document while the record shown took it, and peers, which rebuild the
    record from the document, showed the old value."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same_value, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(v, b[k]) for k, v in a.items())
    return bool(a == b)


# ---- how a document is stored ----
#
# A stored document is ``u32 compacted length | Automerge bytes``, where the
# bytes are a saved document followed by zero or more raw changes appended
# since. ``Document.load`` accepts exactly that concatenation, so a write
# appends its change (no ``save()`` on the hot path) and the document is
# re-saved only when the appended tail outgrows the compacted part: the
# stored size stays within about twice the compact size.

COMPACT_SLACK = 4096


def stored_doc(compacted: bytes) -> bytes:
    return len(compacted).to_bytes(4, "big") + compacted


def doc_bytes(stored: bytes) -> bytes:
    return stored[4:]


def append_to_stored(stored: bytes | None, change: bytes) -> bytes | None:
    """The stored value with one more change, or None when it is time to compact."""
    if stored is None:
        return stored_doc(b"") + change
    compacted = int.from_bytes(stored[:4], "big")
    if len(stored) - 4 - compacted + len(change) > compacted + COMPACT_SLACK:
        return None
    return stored + change
