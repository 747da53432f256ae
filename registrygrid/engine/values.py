"""Pure helpers of the write path: merge patches, canonical digests, input
checks, and the Automerge change a stored change stands for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from registrygrid.crdt.record import INT64_MAX, INT64_MIN
from registrygrid.crdt.snapshot import (
    check_value,
    genesis_change,
    read_snapshot,
)
from registrygrid.errors import (
    TooLarge,
    ValidationError,
)
from registrygrid.protocol import limits, names
from registrygrid.protocol.envelope import (
    Draft,
    Envelope,
)
from registrygrid.record import replicated_content
from registrygrid.storage.store import pack


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def canonical(value: Any) -> bytes:
    """msgpack with map keys sorted: equal values give equal bytes, whatever
    order a JSON object's keys arrived in."""
    return msgspec.msgpack.encode(value, order="sorted")


def record_digest(record: Mapping[str, Any] | None) -> str | None:
    if record is None:
        return None
    return hashlib.sha256(canonical(replicated_content(record))).hexdigest()


def automerge_of(env: Envelope | Draft) -> tuple[bytes, bytes]:
    """The (hash, bytes) of the Automerge change a change stands for: its
    payload, or for a snapshot the genesis change it implies."""
    return automerge_of_body(env.body)


def automerge_of_body(body: Any) -> tuple[bytes, bytes]:
    """automerge_of, from the change's body (an envelope's or a draft's)."""
    if not body.is_snapshot:
        return body.change_hash, body.payload
    genesis = genesis_change(read_snapshot(body.payload, kind=body.kind, schema=body.schema), body.author)
    return genesis.hash, genesis.raw_bytes


def state_after_edit(old: Mapping[str, Any], *, schema: int | None = None, fields: Mapping[str, Any] | None = None,
              tags: list[str] | None = None, links: list[dict[str, str]] | None = None,
              deleted: bool | None = None) -> dict[str, Any]:
    """The document state after a local edit, computed from the state before
    it and the edit, so local writes never re-read the Automerge document.
    (A test checks it equals the document's own materialization.)"""
    return {
        "kind": old["kind"],
        "schema": old["schema"] if schema is None else schema,
        "owner": old["owner"],
        "tags": old["tags"] if tags is None else tags,
        "links": old["links"] if links is None else links,
        "fields": old["fields"] if fields is None else fields,
        "deleted": old["deleted"] if deleted is None else deleted,
        "created": {"at": old["created_at"], "by": old["created_by"]},
    }


# ------------------------------------------------------------ input checks


def fields_size(fields: Any) -> int:
    """The bytes a record's fields take packed, which every size cap counts."""
    if not isinstance(fields, Mapping):
        raise ValidationError("record fields must be a JSON object",
                              details=[{"path": "", "message": "not an object"}])
    try:
        return len(pack(fields))
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        message = f"record fields are not JSON values: {exc}"
        raise ValidationError(message, details=[{"path": where_invalid(fields), "message": message}]) from None


def checked_json(fields: Mapping[str, Any]) -> bool:
    """``check_value`` of a write's fields (what Automerge can hold; whether
    they are plain JSON), its refusal naming the path of the value at fault
    as schema refusals do (it said only "/", whichever field it was)."""
    try:
        return check_value(fields)
    except ValidationError as exc:
        if exc.details:
            raise
        raise ValidationError(exc.message, details=[{"path": where_invalid(fields), "message": exc.message}]) from None


_INFINITIES = (float("inf"), float("-inf"))


def where_invalid(fields: Any) -> str:
    """The JSON pointer of the first value in ``fields`` (document order)
    that a record cannot hold: an integer beyond 64 bits, NaN or infinity,
    an empty or non-string key, another type, nesting past the cap; ""
    when none is found. Only on a refusal's path: a walk of its own."""
    work: list[tuple[str, Any, int]] = [("", fields, 0)]
    while work:
        at, value, depth = work.pop()
        if depth > limits.MAX_NESTING:
            return at
        if isinstance(value, Mapping):
            found = []
            for key, item in value.items():
                if type(key) is not str or not key:
                    return f"{at}/{_pointer_part(str(key))}"
                found.append((f"{at}/{_pointer_part(key)}", item, depth + 1))
            work.extend(reversed(found))
        elif isinstance(value, (list, tuple)):
            work.extend(reversed([(f"{at}/{i}", item, depth + 1) for i, item in enumerate(value)]))
        elif value is None or isinstance(value, (str, bool)):
            continue
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                return at
        elif isinstance(value, float):
            if value != value or value in _INFINITIES:
                return at
        else:
            return at
    return ""


def _pointer_part(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")  # RFC 6901


def checked_fields(fields: Any, cap: int = limits.MAX_RECORD_BYTES) -> dict[str, Any]:
    size = fields_size(fields)
    if size > cap:
        raise TooLarge(f"record fields take {size} bytes; the cap is {cap}"
                       + ("" if cap == limits.MAX_RECORD_BYTES else " (the registry's max_record_bytes)"))
    return dict(fields)


def checked_tags(tags: Iterable[str]) -> list[str]:
    out = sorted({names.tag(t) for t in tags})
    if len(out) > limits.MAX_TAGS:
        raise ValidationError(f"{len(out)} tags exceed the cap of {limits.MAX_TAGS}")
    return out


def checked_links(links: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    out = []
    for link in links:
        if not isinstance(link, Mapping) or set(link) != {"rel", "registry", "record"}:
            raise ValidationError("a link is {rel, registry, record}")
        names.tag(link["rel"])
        names.registry_name(link["registry"])
        names.record_id(link["record"])
        out.append({"rel": link["rel"], "registry": link["registry"], "record": link["record"]})
    if len(out) > limits.MAX_LINKS:
        raise ValidationError(f"{len(out)} links exceed the cap of {limits.MAX_LINKS}")
    return out
