"""A create as a signed snapshot, and the Automerge document it implies.

A record's first create carries the record's content as canonical msgpack
(map keys sorted, so equal content gives equal bytes):

    {"created": {"at": int, "by": did}, "fields": map, "kind": str,
     "links": [{"record", "registry", "rel"}], "owner": did, "schema": int,
     "tags": [str, ...] sorted, unique}

No Automerge change is made for it: most records are never updated, and an
Automerge transaction cost as much as everything else a create does. The
record's Automerge document is a pure function of its snapshot, built only
when the record first needs one (its first update, local or remote): one
transaction under the author's actor id with the puts in a fixed order.
automerge 1.0.0rc1 stamps every change with timestamp 0, so this *genesis
change* hashes the same on every node, and updates name it in their deps.
A golden test pins the genesis hash of a fixed snapshot: a dependency
upgrade that changed it would split the network, so it must fail CI first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from registrygrid.crdt.record import INT64_MAX, INT64_MIN, RecordDoc, actor_for
from registrygrid.errors import MalformedInput, ValidationError
from registrygrid.identity.keys import public_key_from_did
from registrygrid.protocol import limits, names

_KEYS = frozenset({"created", "fields", "kind", "links", "owner", "schema", "tags"})
# What a record's document holds at its root: a snapshot's keys, and the
# deleted flag the genesis change adds (crdt/record.py).
DOCUMENT_KEYS = _KEYS | {"deleted"}
_LINK_KEYS = frozenset({"rel", "registry", "record"})


def encode_snapshot(*, kind: str, schema: int, owner: str, created_at: int, created_by: str,
                    fields: Mapping[str, Any], tags: list[str], links: list[dict[str, str]]) -> bytes:
    """A local create's payload (fields already checked with check_value)."""
    return msgspec.msgpack.encode({"created": {"at": created_at, "by": created_by}, "fields": fields,
                                   "kind": kind, "links": links, "owner": owner, "schema": schema,
                                   "tags": tags}, order="sorted")


def read_snapshot(payload: bytes, *, kind: str, schema: int) -> dict[str, Any]:
    """The record state a snapshot payload creates (``deleted`` false), or
    MalformedInput naming what is wrong. The payload must be canonical, so
    one content has one payload and one change ID."""
    return snapshot_state(payload, kind=kind, schema=schema)[0]


def snapshot_state(payload: bytes, *, kind: str, schema: int) -> tuple[dict[str, Any], bool]:
    """``read_snapshot``, and whether the fields are plain JSON (check_value's
    answer: what schema validation may take without its own walk)."""
    try:
        snap = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError) as exc:
        raise MalformedInput(f"snapshot does not decode: {exc}") from None
    except RecursionError:
        # msgspec recurses per level of nesting: a signed snapshot nested
        # thousands deep raised out of the whole ingest batch before.
        raise MalformedInput(f"snapshot nested deeper than {limits.MAX_NESTING} levels") from None
    if not isinstance(snap, dict) or set(snap) != _KEYS:
        raise MalformedInput(f"a snapshot is a map of exactly {sorted(_KEYS)}")
    created, tags, links = snap["created"], snap["tags"], snap["links"]
    if not (isinstance(created, dict) and set(created) == {"at", "by"} and type(created["at"]) is int
            and 0 <= created["at"] <= INT64_MAX and isinstance(created["by"], str)):
        raise MalformedInput("snapshot 'created' must be {at: int64 >= 0, by: str}")
    if snap["kind"] != kind or snap["schema"] != schema or type(snap["schema"]) is not int:
        raise MalformedInput("the snapshot's kind and schema differ from its envelope's")
    if not isinstance(snap["owner"], str):
        raise MalformedInput("snapshot 'owner' must be a string")
    if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags) and tags == sorted(set(tags))):
        raise MalformedInput("snapshot 'tags' must be sorted, unique strings")
    if not (isinstance(links, list) and all(isinstance(link, dict) and set(link) == _LINK_KEYS
                                            and all(isinstance(v, str) for v in link.values()) for link in links)):
        raise MalformedInput("snapshot 'links' must be {rel, registry, record} maps of strings")
    try:  # the rules a local write's tags and links follow
        if len(tags) > limits.MAX_TAGS or len(links) > limits.MAX_LINKS:
            raise ValidationError(f"at most {limits.MAX_TAGS} tags and {limits.MAX_LINKS} links")
        for tag in tags:
            names.tag(tag)
        for link in links:
            names.tag(link["rel"])
            names.registry_name(link["registry"])
            names.record_id(link["record"])
    except ValidationError as exc:
        raise MalformedInput(f"snapshot tags or links: {exc.message}") from None
    if not isinstance(snap["fields"], dict):
        raise MalformedInput("snapshot 'fields' must be a map")
    try:
        plain_json = check_value(snap["fields"])
    except ValidationError as exc:
        raise MalformedInput(f"snapshot fields: {exc.message}") from None
    if msgspec.msgpack.encode(snap, order="sorted") != payload:
        raise MalformedInput("snapshot is not in canonical form (map keys sorted)")
    return {"kind": kind, "schema": schema, "owner": snap["owner"], "tags": tags, "links": links,
            "fields": snap["fields"], "deleted": False, "created": created}, plain_json


def check_value(value: Any, depth: int = 0) -> bool:
    """What an Automerge document can hold exactly as JSON gave it: a local
    create checks its fields here instead of by writing them to Automerge.

    Returns whether the value is also plain JSON that every schema engine
    reads alike: containers only dicts and lists, integers within
    ±limits.EXACT_FLOAT_INT (catalog.validate's ``plain_json``). Runs on
    every create, so strings and numbers are checked in the loop, not by a
    call each.
    """
    if depth > limits.MAX_NESTING:
        raise ValidationError(f"value nested deeper than {limits.MAX_NESTING} levels")
    kind = type(value)
    if kind is dict:
        for k in value:
            if type(k) is not str or not k:
                raise ValidationError(f"object keys must be non-empty strings, got {_key_shown(k)}")
        items: Any = value.values()
        plain = True
    elif kind is list:
        items, plain = value, True
    elif kind is tuple:
        items, plain = value, False
    elif isinstance(value, Mapping):
        check_value(dict(value), depth)
        return False  # a Mapping that is not a dict: not plain
    else:
        return _check_scalar(value, kind)
    if depth >= limits.MAX_NESTING and value:  # its items would sit one level too deep
        raise ValidationError(f"value nested deeper than {limits.MAX_NESTING} levels")
    for item in items:
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is dict or kind is list or kind is tuple:
            plain = check_value(item, depth + 1) and plain
        elif kind is int or kind is float or not isinstance(item, Mapping):
            plain = _check_scalar(item, kind) and plain
        else:
            plain = check_value(item, depth + 1) and plain
    return plain


def _key_shown(key: object) -> str:
    # Refusals name the kind of a bad key or value, never the value itself:
    # the audit ledger keeps a refused write's message, and no erasure can
    # take it back from there.
    return "an empty string" if key == "" else f"a {type(key).__name__}"


def _check_scalar(value: Any, kind: type) -> bool:
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValidationError(f"an integer of {len(str(abs(value)))} digits does not fit in 64 bits")
        return -limits.EXACT_FLOAT_INT <= value <= limits.EXACT_FLOAT_INT
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValidationError("NaN and infinity are not JSON numbers")
        return True
    raise ValidationError(f"unsupported value type {kind.__name__}")


def genesis_change(state: Mapping[str, Any], author: str) -> Any:
    """The Automerge change a snapshot implies: a pure function of the
    snapshot's state and its author (whose key is the actor id)."""
    doc = RecordDoc.new(actor_for(public_key_from_did(author)))
    created = state["created"]
    return doc.create(kind=state["kind"], schema=state["schema"], owner=state["owner"], created_at=created["at"],
                      created_by=created["by"], fields=state["fields"], tags=state["tags"], links=state["links"])
