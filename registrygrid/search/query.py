"""The search query language: one JSON object for the SDK, the CLI and HTTP.

    {"text": "summarize \"legal contracts\"",          # full text, BM25; quotes make a phrase
     "mode": "hybrid",                                    # text (BM25, the default), semantic or hybrid
     "filter": {"and": [{"field": "kind", "eq": "function"},
                        {"field": "price", "lt": 0.01},
                        {"not": {"field": "region", "in": ["us-east", "us-west"]}},
                        {"or": [{"field": "tags", "prefix": "summ"}, {"field": "verified", "eq": true}]},
                        {"field": "fields.license", "exists": true}]},
     "registries": ["acme.functions"],                    # default: every registry the index holds
     "sort": [{"field": "price", "order": "asc"}],        # default: relevance with text, else updated_at desc
     "facets": ["kind", "region"],                        # counts of each value over all matches
     "limit": 20, "cursor": "...",                        # pages: next_cursor of the previous answer
     "weights": {"text": 1, "freshness": 0.2, "trust": 0.3},
     "boosts": [{"filter": {"field": "owner", "eq": "did:key:..."}, "factor": 2}],
     "explain": true,
     "federated": {"deadline_ms": 2000}}                 # also ask peers (node/federated_search.py)

A filter is a tree: ``and``/``or`` (non-empty lists), ``not`` (one node),
or a comparison ``{"field": F, OP: VALUE}`` with exactly one operator:
``eq`` ``ne`` ``in`` ``lt`` ``le`` ``gt`` ``ge`` ``prefix`` ``exists``.
Which operators a field takes follows from its type (``FIELDS``); any
``fields.<path>`` of a record's own fields may be compared as a keyword or
a number. Every malformed part is refused with a ValidationError whose
details give its JSON pointer, e.g. ``/filter/and/1/lt``.

``matches`` is the reference semantics of a filter over a normalized
document (search/fields.py): the index compiles filters for tantivy
(search/index.py), and the tests check both agree on random queries.
"""

from __future__ import annotations

import math
import sys
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from registrygrid import b64url
from registrygrid.errors import ValidationError
from registrygrid.protocol import names

KEYWORD, TEXT, NUMBER, DATE, BOOL = "keyword", "text", "number", "date", "bool"


@dataclass(frozen=True)
class FieldSpec:
    type: str
    many: bool = False  # several values per document (tags)
    description: str = ""


# The fields every document of the index has (normalized across kinds,
# search/fields.py says from where), and their types.
FIELDS: dict[str, FieldSpec] = {
    "registry": FieldSpec(KEYWORD, description="the registry that holds the record"),
    "id": FieldSpec(KEYWORD, description="the record id"),
    "kind": FieldSpec(KEYWORD),
    "owner": FieldSpec(KEYWORD, description="did:key of the owner org"),
    "name": FieldSpec(KEYWORD, description="the record's name (also searched as text)"),
    "description": FieldSpec(TEXT, description="searched as text; filters take exists only"),
    "category": FieldSpec(KEYWORD),
    "tags": FieldSpec(KEYWORD, many=True, description="the record's tags and its fields.tags"),
    "region": FieldSpec(KEYWORD),
    "status": FieldSpec(KEYWORD),
    "price": FieldSpec(NUMBER),
    "reputation": FieldSpec(NUMBER),
    "verified": FieldSpec(BOOL, description="the owner org is a verified member of this node's federation"),
    "local": FieldSpec(BOOL, description="written by this node's org"),
    "created_at": FieldSpec(DATE, description="ms since the epoch"),
    "updated_at": FieldSpec(DATE, description="ms since the epoch"),
}
USER_PREFIX = "fields."
OPERATORS = ("eq", "ne", "in", "lt", "le", "gt", "ge", "prefix", "exists")
_OPS_BY_TYPE = {
    KEYWORD: {"eq", "ne", "in", "prefix", "exists"},
    TEXT: {"exists"},
    NUMBER: {"eq", "ne", "in", "lt", "le", "gt", "ge", "exists"},
    DATE: {"eq", "ne", "in", "lt", "le", "gt", "ge", "exists"},
    BOOL: {"eq", "ne", "exists"},
    "user": {"eq", "ne", "in", "lt", "le", "gt", "ge", "exists"},
}
# Any field with one value per record sorts (keywords in UTF-8 byte order:
# "Zeta" before "alpha"); tags, with many, and description, text, do not.
SORTABLE = tuple(f for f, spec in FIELDS.items() if spec.type in (NUMBER, DATE, KEYWORD) and not spec.many) \
    + ("relevance",)
FACETABLE = tuple(f for f, spec in FIELDS.items() if spec.type in (KEYWORD, BOOL))
MAX_LIMIT = 100
# Pages of relevance-ordered results reach this deep at most (as search
# engines bound deep paging: each page ranks everything before it again).
MAX_RELEVANCE_WINDOW = 1000
MAX_TEXT = 1000
MAX_NODES = 64
MAX_IN = 256
MAX_FACETS = 8
# Longer strings are searched as text but not compared by value (a keyword
# index holds whole values; a record's strings may be many KiB).
MAX_VALUE_CHARS = 256
# Dates are 64-bit ms in the index; a bound beyond is refused, not clamped.
MAX_DATE = 2**62
_PATH_PART = re.compile(r"[A-Za-z0-9_]{1,128}")


@dataclass(frozen=True)
class Cmp:
    field: str
    op: str
    value: Any

    @property
    def type(self) -> str:
        return FIELDS[self.field].type if self.field in FIELDS else "user"


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


Node = Cmp | And | Or | Not


@dataclass(frozen=True)
class SortKey:
    field: str
    descending: bool


@dataclass(frozen=True)
class Weights:
    text: float = 1.0
    freshness: float = 0.1
    trust: float = 0.1


@dataclass(frozen=True)
class Boost:
    filter: Node
    factor: float


MODES = ("text", "semantic", "hybrid")
# How long a federated query waits for peers by default, and at most: an
# answer on loopback or a LAN takes milliseconds, across the world ~300 ms;
# a peer slower than the deadline is reported, not waited for.
DEFAULT_DEADLINE_MS = 2000
MAX_DEADLINE_MS = 10_000


@dataclass(frozen=True)
class Federated:
    """Ask the federation's peers (and the providers of followed registries)
    too, waiting at most ``deadline_ms`` for their answers."""

    deadline_ms: int = DEFAULT_DEADLINE_MS


@dataclass(frozen=True)
class Query:
    text: str | None = None
    mode: str = "text"  # how text is matched: BM25, embeddings (search/semantic.py), or both fused
    filter: Node | None = None
    registries: tuple[str, ...] = ()
    sort: SortKey = SortKey("relevance", True)
    facets: tuple[str, ...] = ()
    limit: int = 20
    cursor: str | None = None
    weights: Weights = field(default_factory=Weights)
    boosts: tuple[Boost, ...] = ()
    explain: bool = False
    federated: Federated | None = None


def _error(path: str, message: str) -> ValidationError:
    return ValidationError(f"query{path or ''}: {message}", details=[{"path": path or "/", "message": message}])


def _check_unicode(obj: Any) -> None:
    """Refuse a string holding a lone surrogate, the path naming it. JSON
    from the bridge never does (its decoder refuses them), but a query from
    the SDK or from an argument that is not UTF-8 may, and the index's
    tokenizer failed on one with UnicodeEncodeError."""
    work: list[tuple[str, Any]] = [("", obj)]
    while work:
        path, value = work.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _error(path, f"character {exc.start} is a lone surrogate, not Unicode text") from None
        elif isinstance(value, Mapping):
            for key, item in value.items():
                work.append((f"{path}/{key}", key))
                work.append((f"{path}/{key}", item))
        elif isinstance(value, (list, tuple)):
            work.extend((f"{path}/{i}", item) for i, item in enumerate(value))


def parse_query(obj: Any) -> Query:
    """A Query from its JSON form; ValidationError naming the bad part."""
    if not isinstance(obj, Mapping):
        raise _error("", "a query is a JSON object")
    _check_unicode(obj)
    known = {"text", "mode", "filter", "registries", "sort", "facets", "limit", "cursor", "weights", "boosts",
             "explain", "federated"}
    for key in obj:
        if key not in known:
            raise _error(f"/{key}", f"unknown member; a query has {', '.join(sorted(known))}")
    text = obj.get("text")
    if text is not None:
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise _error("/text", f"a string of at most {MAX_TEXT} characters")
        text = text.strip() if re.search(r"\w", text) else None  # no word at all: no text to search for
    mode = obj.get("mode", "text")
    if mode not in MODES:
        raise _error("/mode", f"one of {', '.join(MODES)}")
    if mode != "text" and text is None:
        raise _error("/mode", f"{mode} search needs text to search for")
    budget = [MAX_NODES]
    node = parse_filter(obj["filter"], "/filter", budget) if obj.get("filter") is not None else None
    registries = obj.get("registries", [])
    if not isinstance(registries, list):
        raise _error("/registries", "a list of registry names")
    for i, name in enumerate(registries):
        try:
            names.registry_name(name)
        except ValidationError as exc:
            raise _error(f"/registries/{i}", exc.message) from None
    sort = _parse_sort(obj.get("sort"), has_text=text is not None)
    facets = obj.get("facets", [])
    if not isinstance(facets, list) or len(facets) > MAX_FACETS:
        raise _error("/facets", f"a list of at most {MAX_FACETS} field names")
    for i, name in enumerate(facets):
        if name not in FACETABLE:
            raise _error(f"/facets/{i}", f"facets are counted for {', '.join(FACETABLE)}")
    limit = obj.get("limit", 20)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise _error("/limit", f"an integer from 1 to {MAX_LIMIT}")
    cursor = obj.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise _error("/cursor", "the next_cursor of a previous answer")
    weights = _parse_weights(obj.get("weights"))
    boosts = _parse_boosts(obj.get("boosts"), budget)
    explain = obj.get("explain", False)
    if not isinstance(explain, bool):
        raise _error("/explain", "true or false")
    federated = _parse_federated(obj.get("federated"))
    if federated is not None and cursor is not None:
        raise _error("/cursor", "a federated answer is one page (its sources' pages do not line up): raise limit "
                                "or narrow the query")
    return Query(text, mode, node, tuple(registries), sort, tuple(dict.fromkeys(facets)), limit, cursor, weights,
                 boosts, explain, federated)


def _parse_federated(given: Any) -> Federated | None:
    if given is None or given is False:
        return None
    if given is True:
        return Federated()
    if not isinstance(given, Mapping) or set(given) - {"deadline_ms"}:
        raise _error("/federated", "true, false, or {\"deadline_ms\": N}")
    deadline = given.get("deadline_ms", DEFAULT_DEADLINE_MS)
    if not isinstance(deadline, int) or isinstance(deadline, bool) or not 1 <= deadline <= MAX_DEADLINE_MS:
        raise _error("/federated/deadline_ms", f"an integer from 1 to {MAX_DEADLINE_MS} (ms)")
    return Federated(deadline)


def parse_filter(obj: Any, path: str, budget: list[int] | None = None) -> Node:
    budget = budget if budget is not None else [MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise _error(path, f"a query holds at most {MAX_NODES} filter nodes")
    if not isinstance(obj, Mapping):
        raise _error(path, "a filter node is an object: and, or, not, or a comparison")
    for combinator in ("and", "or"):
        if combinator in obj:
            if len(obj) != 1:
                raise _error(path, f"{combinator} stands alone in its node")
            items = obj[combinator]
            if not isinstance(items, list) or not items:
                raise _error(f"{path}/{combinator}", "a non-empty list of filter nodes")
            parsed = tuple(parse_filter(item, f"{path}/{combinator}/{i}", budget) for i, item in enumerate(items))
            return And(parsed) if combinator == "and" else Or(parsed)
    if "not" in obj:
        if len(obj) != 1:
            raise _error(path, "not stands alone in its node")
        return Not(parse_filter(obj["not"], f"{path}/not", budget))
    name = obj.get("field")
    if not isinstance(name, str):
        raise _error(f"{path}/field", "a comparison names its field")
    ops = [k for k in obj if k != "field"]
    if len(ops) != 1 or ops[0] not in OPERATORS:
        raise _error(path, f"a comparison has one operator of {', '.join(OPERATORS)}")
    op = ops[0]
    at = f"{path}/{op}"
    if name in FIELDS:
        kind = FIELDS[name].type
    elif name.startswith(USER_PREFIX) and len(name) > len(USER_PREFIX):
        kind = "user"
        for part in name[len(USER_PREFIX):].split("."):
            if not _PATH_PART.fullmatch(part):
                raise _error(f"{path}/field", f"{name!r}: each part of a field path is 1 to 128 letters, "
                                              "digits or _")
    else:
        raise _error(f"{path}/field", f"unknown field {name!r}: one of {', '.join(FIELDS)}, or fields.<path>")
    if op not in _OPS_BY_TYPE[kind]:
        raise _error(at, f"{name} ({kind}) takes {', '.join(sorted(_OPS_BY_TYPE[kind]))}")
    value = obj[op]
    if op == "exists":
        if not isinstance(value, bool):
            raise _error(at, "true or false")
    elif op == "in":
        if not isinstance(value, list) or not value or len(value) > MAX_IN:
            raise _error(at, f"a non-empty list of at most {MAX_IN} values")
        value = tuple(_value(kind, v, f"{at}/{i}") for i, v in enumerate(value))
    elif op == "prefix":
        # Longer than any value the index keeps, it matches nothing; tantivy
        # refused its automaton (a 500) from ~980 characters.
        if not isinstance(value, str) or not value or len(value) > MAX_VALUE_CHARS:
            raise _error(at, f"a non-empty string of at most {MAX_VALUE_CHARS} characters (no longer value "
                             "is indexed)")
    elif op in ("lt", "le", "gt", "ge"):
        if kind == "user" and isinstance(value, str):
            raise _error(at, "a number")
        value = _number(value, at, kind=kind)
    else:
        value = _value(kind, value, at)
    return Cmp(name, op, value)


def _number(value: Any, at: str, *, kind: str = NUMBER) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _error(at, "a finite number")
    if kind == "user" and not _USER_NUMBERS[0] <= value < _USER_NUMBERS[1]:
        # The index keeps a record's whole numbers as 64-bit integers, and
        # tantivy compared such a path with a bound past them wrongly (every
        # record matched `eq 1e19`); a 400-digit one was a 500 (float()).
        raise _error(at, "a number from -2^63 to below 2^63 (the search index's integers; a listing's "
                         "`where` compares any number)")
    if isinstance(value, int) and not -_FLOAT_MAX <= value <= _FLOAT_MAX or not math.isfinite(value):
        raise _error(at, "a finite number")
    if kind == DATE and not -MAX_DATE <= value <= MAX_DATE:
        raise _error(at, f"a date in ms since the epoch, at most {MAX_DATE} either way")
    return value


_USER_NUMBERS = (-2**63, 2**63)
_FLOAT_MAX = int(sys.float_info.max)  # math.isfinite() of a larger int raises OverflowError


def _value(kind: str, value: Any, at: str) -> Any:
    if kind == KEYWORD:
        if not isinstance(value, str):
            raise _error(at, "a string")
        return value
    if kind in (NUMBER, DATE):
        return _number(value, at, kind=kind)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise _error(at, "true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):  # user fields: keyword or number
        raise _error(at, "a string or a number")
    return value if isinstance(value, str) else _number(value, at, kind="user")


def _parse_sort(given: Any, *, has_text: bool) -> SortKey:
    if given is None:
        return SortKey("relevance", True) if has_text else SortKey("updated_at", True)
    keys = given if isinstance(given, list) else [given]
    if len(keys) != 1:
        raise _error("/sort", "one sort key (ties are ordered by registry and id)")
    key = keys[0]
    if isinstance(key, str):
        key = {"field": key}
    if not isinstance(key, Mapping) or key.get("field") not in SORTABLE:
        raise _error("/sort", f"sort by one of {', '.join(SORTABLE)}")
    order = key.get("order", "desc" if key["field"] in ("relevance", "updated_at", "created_at") else "asc")
    if order not in ("asc", "desc"):
        raise _error("/sort/order", "asc or desc")
    if key["field"] == "relevance" and (not has_text or order != "desc"):
        raise _error("/sort", "relevance sorts a text query, best first")
    return SortKey(key["field"], order == "desc")


def _parse_weights(given: Any) -> Weights:
    if given is None:
        return Weights()
    if not isinstance(given, Mapping):
        raise _error("/weights", "an object of text, freshness, trust")
    out = {}
    for name, value in given.items():
        if name not in ("text", "freshness", "trust"):
            raise _error(f"/weights/{name}", "weights are text, freshness and trust")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise _error(f"/weights/{name}", "a number from 0 to 100")
        out[name] = float(value)
    return Weights(**out)


def _parse_boosts(given: Any, budget: list[int]) -> tuple[Boost, ...]:
    if given is None:
        return ()
    if not isinstance(given, list) or len(given) > 16:
        raise _error("/boosts", "a list of at most 16 {filter, factor}")
    out = []
    for i, boost in enumerate(given):
        if not isinstance(boost, Mapping) or set(boost) != {"filter", "factor"}:
            raise _error(f"/boosts/{i}", "an object of filter and factor")
        factor = boost["factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 100:
            raise _error(f"/boosts/{i}/factor", "a number above 0, at most 100")
        out.append(Boost(parse_filter(boost["filter"], f"/boosts/{i}/filter", budget), float(factor)))
    return tuple(out)


# ---------------------------------------------------------------- reference semantics


def lookup(doc: Mapping[str, Any], name: str) -> list[Any]:
    """The values of field ``name`` in a normalized document (a list: empty
    when absent). A ``fields.<path>`` reaches into the record's fields,
    through lists at any level (each element is looked into); booleans,
    objects and strings longer than ``MAX_VALUE_CHARS`` are not values."""
    if name in FIELDS:
        value = doc.get(name)
        if value is None:
            return []
        return list(value) if isinstance(value, (list, tuple)) else [value]
    out: list[Any] = []
    for value in _walk(doc.get("fields"), name[len(USER_PREFIX):].split(".")):
        if isinstance(value, str) and len(value) <= MAX_VALUE_CHARS or isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append(value)
    return out


def _walk(value: Any, parts: list[str]) -> list[Any]:
    """What ``parts`` reaches from ``value``, lists flattened on the way."""
    if isinstance(value, list):
        return [found for item in value for found in _walk(item, parts)]
    if not parts:
        return [value]
    if not isinstance(value, Mapping) or parts[0] not in value:
        return []
    return _walk(value[parts[0]], parts[1:])


def _present(value: Any) -> bool:
    """Whether a JSON value holds anything (null, [] and {} hold nothing)."""
    if value is None:
        return False
    if isinstance(value, list):
        return any(_present(v) for v in value)
    if isinstance(value, Mapping):
        return any(_present(v) for v in value.values())
    return not isinstance(value, str) or len(value) <= MAX_VALUE_CHARS


def matches(node: Node, doc: Mapping[str, Any]) -> bool:
    """Whether ``doc`` (normalized: search/fields.py) passes ``node``."""
    if isinstance(node, And):
        return all(matches(item, doc) for item in node.items)
    if isinstance(node, Or):
        return any(matches(item, doc) for item in node.items)
    if isinstance(node, Not):
        return not matches(node.item, doc)
    op, want = node.op, node.value
    if op == "exists" and node.field not in FIELDS:
        return any(_present(v) for v in _walk(doc.get("fields"), node.field[len(USER_PREFIX):].split("."))) == want
    values = lookup(doc, node.field)
    if op == "exists":
        return bool(values) == want
    if op == "ne":
        return not any(equal(v, want) for v in values)
    if op == "eq":
        return any(equal(v, want) for v in values)
    if op == "in":
        return any(equal(v, w) for v in values for w in want)
    if op == "prefix":
        return any(isinstance(v, str) and v.startswith(want) for v in values)
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if op == "lt":
        return any(v < want for v in numbers)
    if op == "le":
        return any(v <= want for v in numbers)
    if op == "gt":
        return any(v > want for v in numbers)
    return any(v >= want for v in numbers)  # ge


def equal(have: Any, want: Any) -> bool:
    """A filter's equality: booleans, strings and numbers each their own."""
    if isinstance(have, bool) or isinstance(want, bool):
        return isinstance(have, bool) and isinstance(want, bool) and have == want
    if isinstance(have, str) or isinstance(want, str):
        return isinstance(have, str) and isinstance(want, str) and have == want
    return float(have) == float(want)



# ---------------------------------------------------------------- cursors


class Cursor(msgspec.Struct, array_like=True, frozen=True):
    sort: str  # the sort field the cursor belongs to
    value: Any  # the last hit's sort value (relevance: its rank)
    key: str  # the last hit's tie-breaker (search/index.py kid_of), or its key


def encode_cursor(cursor: Cursor) -> str:
    return b64url.encode(msgspec.msgpack.encode(cursor))


def _digits(text: str) -> bool:
    # ASCII: str.isdigit() takes "²", which int() refuses (a 500).
    return text.isascii() and text.isdigit()


def decode_cursor(text: str, sort: SortKey) -> Cursor:
    try:
        cursor = msgspec.msgpack.decode(b64url.decode(text), type=Cursor)
    except (ValueError, msgspec.DecodeError, RecursionError):  # a value nested past the parser's depth
        raise _error("/cursor", "not a cursor this node made") from None
    if cursor.sort != sort.field:
        raise _error("/cursor", f"a cursor of a query sorted by {cursor.sort}, not {sort.field}")
    value = cursor.value
    if sort.field == "relevance":
        valid = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RELEVANCE_WINDOW
    elif FIELDS[sort.field].type == KEYWORD:
        valid = (isinstance(value, str) and len(value) <= MAX_VALUE_CHARS
                 and _digits(cursor.key) and int(cursor.key) < 2**62)
    else:
        valid = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                 and (FIELDS[sort.field].type != DATE or -MAX_DATE <= value <= MAX_DATE)
                 and _digits(cursor.key) and int(cursor.key) < 2**62)
    if not valid:
        raise _error("/cursor", "not a cursor this node made")
    return cursor


def describe_fields() -> list[dict[str, Any]]:
    """The fields a query may use, for docs and `rgrid search --fields`."""
    out = [{"field": name, "type": spec.type, "many": spec.many, "operators": sorted(_OPS_BY_TYPE[spec.type]),
            "sortable": name in SORTABLE, "facetable": name in FACETABLE, "description": spec.description}
           for name, spec in FIELDS.items()]
    out.append({"field": "fields.<path>", "type": "keyword or number", "many": True,
                "operators": sorted(_OPS_BY_TYPE["user"]), "sortable": False, "facetable": False,
                "description": "any value of the record's own fields"})
    return out


def field_names(nodes: Sequence[Node]) -> set[str]:
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, Cmp):
            out.add(node.field)
        elif isinstance(node, Not):
            out |= field_names([node.item])
        else:
            out |= field_names(node.items)
    return out
