"""A record as the search index sees it: the common fields every kind is
searched by, normalized, plus its own fields and one text of everything.

Kinds name things differently; one query spans kinds because each common
field is read from the first of its candidate paths that holds a value:

    name         fields.name, fields.title, the record id
    description  fields.description, fields.summary
    category     fields.category, fields.type, fields.task
    tags         the record's tags and fields.tags, fields.keywords
    region       fields.region, fields.location.region, fields.regions (each)
    status       fields.status
    price        fields.price, fields.pricing.price, fields.pricing.per_call, fields.cost
    reputation   fields.reputation, fields.reputation.score
    owner, kind, registry, id, created_at, updated_at: the record's own

``verified`` and ``local`` come from the node (``org_verified``, its org).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from registrygrid.search.query import MAX_VALUE_CHARS

_CANDIDATES: dict[str, tuple[tuple[str, ...], ...]] = {
    "name": (("name",), ("title",)),
    "description": (("description",), ("summary",)),
    "category": (("category",), ("type",), ("task",)),
    "status": (("status",),),
    "price": (("price",), ("pricing", "price"), ("pricing", "per_call"), ("cost",)),
    "reputation": (("reputation",), ("reputation", "score")),
}
# The longest text of a record that full-text search reads: enough for any
# description; a record is at most 128 KiB anyway.
MAX_TEXT_CHARS = 32 * 1024


def _at(fields: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = fields
    for part in path:
        if type(value) is not dict:
            return None
        value = value.get(part)
    return value


def _first(fields: Mapping[str, Any], name: str, want: type | tuple[type, ...]) -> Any:
    for path in _CANDIDATES[name]:
        value = _at(fields, path)
        if isinstance(value, want) and not isinstance(value, bool) and value != "":
            if isinstance(value, float) and not math.isfinite(value):
                continue
            return value
    return None


def _strings(value: Any) -> list[str]:
    """The keyword values of a field: a string or a list of them, each at
    most MAX_VALUE_CHARS (longer ones are text only)."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and len(v) <= MAX_VALUE_CHARS]
    return []


def _keyword(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) <= MAX_VALUE_CHARS else None


def texts(value: Any) -> Iterator[str]:
    """Every string in a JSON value (decoded: plain dicts and lists), depth first."""
    kind = type(value)
    if kind is str:
        yield value
    elif kind is dict:
        for v in value.values():
            yield from texts(v)
    elif kind is list:
        for v in value:
            yield from texts(v)


def normalize(record: Mapping[str, Any], *, org_verified: Callable[[str], bool], local_org: str | None) -> dict[str, Any]:
    """The document of a live record (as ``LocalRegistry.get`` returns it)."""
    fields = record.get("fields") or {}
    tags = list(dict.fromkeys([*_strings(record.get("tags") or []), *_strings(fields.get("tags")),
                               *_strings(fields.get("keywords"))]))
    regions = _strings(fields.get("region")) or _strings(_at(fields, ("location", "region"))) \
        or _strings(fields.get("regions"))
    title = _first(fields, "name", str) or record["id"]
    text = " ".join(texts(fields))[:MAX_TEXT_CHARS]
    return {
        "registry": record["registry"], "id": record["id"], "kind": record["kind"], "owner": record["owner"],
        "name": _keyword(title), "title": title, "description": _first(fields, "description", str),
        "category": _keyword(_first(fields, "category", str)), "tags": tags,
        "region": regions[0] if regions else None, "status": _keyword(_first(fields, "status", str)),
        "price": _first(fields, "price", (int, float)), "reputation": _first(fields, "reputation", (int, float)),
        "verified": org_verified(record["owner"]), "local": local_org is not None and record["owner"] == local_org,
        "created_at": record.get("created_at") or 0, "updated_at": record.get("updated_at") or 0,
        "fields": fields, "text": text,
    }
