"""The catalog of record kinds: built-in and user-defined schemas, validation, migration.

A record's ``fields`` are checked against its kind's JSON Schema (Draft
2020-12) on every local write and on every remote change, so two things
matter beyond correctness:

* **Determinism across nodes.** If one node accepts a change that another
  rejects, replication diverges. Which ``format`` keywords jsonschema checks
  depends on which optional packages happen to be installed (``date-time``
  and ``uri`` are silently skipped without ``rfc3339-validator`` and
  ``rfc3987``). So this module never uses jsonschema's default format
  checker: it builds :data:`FORMAT_CHECKER` from the checks below, written
  out here, and the same record gets the same verdict on every node.
* **No I/O.** Without an explicit ``registry=``, jsonschema 4.x still fetches
  an unknown remote ``$ref`` over HTTP (with a DeprecationWarning), which a
  peer could trigger with a user kind. Every validator here gets an explicit
  registry (the JSON Schema meta-schemas plus the built-in kind schemas, all
  in memory) whose retrieval of anything else fails.

Validators are compiled once per (kind, version) and cached: validation is on
the write hot path.

**Two engines, one verdict.** Python jsonschema costs 0.2-2.5 ms a record,
so the verdict comes from jsonschema-rs (20-180 times faster on the built-in
kinds' records, 5-30 us), set up to judge exactly as jsonschema does here
(:class:`CompiledKind`): our format functions replace its own (and its
formats we do not check become annotations), ``pattern`` and ``multipleOf``
run jsonschema's own semantics (``re.search``, float quotients) instead of
ECMA-262 regexes and exact decimals, and ``$ref`` resolution is offline
against the same in-memory documents (the 2020-12 meta-schemas built into
jsonschema-rs 0.61.0 are those of ``jsonschema_specifications``, compared
as JSON). Jsonschema then only *explains* a rejection:
the error list keeps its messages, paths and keyword names. Where jsonschema-rs
cannot take the input as jsonschema does (a value that is not plain JSON:
tuple, NaN, Decimal, bytes, a subclass, a lone surrogate, nesting deeper
than :data:`_RUST_MAX_DEPTH`) or the schema (``patternProperties``, whose
regexes it would run with its own engine; a schema it will not compile),
jsonschema decides, as it always did. Exactly one engine decides each
verdict: if jsonschema finds nothing wrong with a plain-JSON record that
jsonschema-rs rejected, the record stays rejected, with jsonschema-rs's
errors.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import ipaddress
import json
import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any
from urllib.parse import urljoin

import jsonschema
import jsonschema_rs
import re2
import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator
from jsonschema_specifications import REGISTRY as _META_SCHEMAS
from referencing.jsonschema import DRAFT202012

from registrygrid.errors import IntegrityError, SchemaViolation, UnknownKind, ValidationError

from .migrations import Migrations, MigrationStep, builtin_migrations

__all__ = [
    "BUILTIN_REGISTRIES",
    "FORMAT_CHECKER",
    "KIND_NAME_RE",
    "REGISTRY_NAME_RE",
    "SCHEMA_ID_BASE",
    "BuiltinRegistry",
    "CompiledKind",
    "KindSchema",
    "SchemaCatalog",
]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID_BASE = "https://registrygrid.dev/schemas/"

# Names, as the `kind` and `registry` kinds define them (builtin/kind.v1.json,
# builtin/registry.v1.json): short, lowercase, safe in a path, a DHT key and
# an LMDB key without escaping.
KIND_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
REGISTRY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")

# Bounds on a user kind. Kinds arrive from peers as `kind` records, so every
# one is bounded. The largest built-in schema (function) is about 4.5 KiB of
# compact JSON; 64 KiB leaves more than ten times that for user kinds, and
# nesting deeper than 32 levels is a generated or hostile schema, not a
# hand-written one (the built-ins nest at most 10 levels, examples included).
MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_DESCRIPTION_CHARS = 4096  # the `description` bound of builtin/kind.v1.json
MAX_VERSION = 65535  # the `version` bound of builtin/kind.v1.json

# jsonschema messages quote the offending value, which may be a megabyte
# string; error details go back to HTTP clients and peers, so each message is
# cut to a readable length.
MAX_ERROR_MESSAGE_CHARS = 300


# ---------------------------------------------------------------- data types


@dataclass(frozen=True)
class KindSchema:
    """One version of a record kind.

    ``schema`` is the JSON Schema of a record's ``fields``; treat it as
    read-only (the catalog validates with its own copy).
    """

    name: str
    version: int
    registry: str
    schema: Mapping[str, Any]
    description: str = ""
    builtin: bool = False


@dataclass(frozen=True)
class BuiltinRegistry:
    """A registry that every node knows by name, and the kinds it holds."""

    name: str
    kinds: tuple[str, ...]
    description: str


# The home registry of each built-in kind; descriptions follow CATALOGUE.md.
BUILTIN_REGISTRIES: tuple[BuiltinRegistry, ...] = (
    BuiltinRegistry("grid.assets", ("asset",),
                    "Digital assets at runtime (files, datasets, models): metadata, lifecycle and ownership."),
    BuiltinRegistry("grid.blocks", ("block",),
                    "Deployed blocks (AIOS building units) and their runtime states."),
    BuiltinRegistry("grid.clusters", ("cluster",),
                    "Compute clusters, their nodes and GPUs, and scheduling metadata."),
    BuiltinRegistry("grid.components", ("component",),
                    "Modular system components (APIs, controllers, services)."),
    BuiltinRegistry("grid.container-registries", ("container-registry",),
                    "Container image registries and the images deployments use."),
    BuiltinRegistry("grid.networks", ("network",),
                    "Virtual networks, overlays and routing rules."),
    BuiltinRegistry("grid.policies", ("policy",),
                    "Runtime policies (quota, quality, membership, security, ...)."),
    BuiltinRegistry("grid.specs", ("spec",),
                    "Specifications (schemas, protobufs, API descriptions)."),
    BuiltinRegistry("grid.templates", ("template",),
                    "Reusable templates for deployments, jobs and registry configs."),
    BuiltinRegistry("grid.vdags", ("vdag",),
                    "Virtual directed acyclic graphs (vDAGs) for workflow orchestration."),
    BuiltinRegistry("grid.adhoc-servers", ("adhoc-server",),
                    "Temporary servers: dynamic or on-demand compute endpoints."),
    BuiltinRegistry("grid.split-runners", ("split-runner",),
                    "Runtime workers serving split models in distributed execution."),
    BuiltinRegistry("grid.contracts", ("contract",),
                    "Agreements, licenses and governance rules linked to assets and orgs."),
    BuiltinRegistry("grid.dsls", ("dsl",),
                    "Domain-specific languages for workflows, policies and task graphs."),
    BuiltinRegistry("grid.exchanges", ("exchange",),
                    "Exchanges of data, compute and services between agents and orgs."),
    BuiltinRegistry("grid.functions", ("function",),
                    "Reusable serverless-style functions and callable units."),
    BuiltinRegistry("grid.orgs", ("org",),
                    "Organizations: metadata, hierarchies and federation mappings."),
    BuiltinRegistry("grid.org-tasks", ("org-task",),
                    "Organization-level tasks, assignments and workflows."),
    BuiltinRegistry("grid.subjects", ("subject",),
                    "Known subjects (humans, agents, systems) and their identifiers."),
    BuiltinRegistry("grid.tools", ("tool",),
                    "Pluggable tools and executors that agents can use."),
    BuiltinRegistry("grid.registries", ("registry",),
                    "The registry of registries: descriptors that map and resolve every registry."),
    BuiltinRegistry("grid.kinds", ("kind",),
                    "User-defined record kinds and their schemas, replicated like any record."),
    BuiltinRegistry("grid.disputes", ("dispute-resolution", "equivocation-report"),
                    "Disputes that need a human: signed resolutions of manual conflicts, and proofs of "
                    "equivocation with their acknowledgements."),
    BuiltinRegistry("grid.members", ("delegation", "revocation", "federation", "invitation"),
                    "The federation's trust statements: its genesis, invitations of orgs, and orgs' signed "
                    "delegations and revocations of keys."),
    BuiltinRegistry("grid.erasures", ("erasure",),
                    "Erasure notices: signed requests that every node erase a record's whole history and its "
                    "blobs (docs/erasure.md)."),
    BuiltinRegistry("grid.views", ("view",),
                    "Saved searches: named queries whose results nodes keep materialized."),
    BuiltinRegistry("grid.mcp-servers", ("mcp-server",),
                    "Model Context Protocol servers, one record per version, as their server.json describes "
                    "them (the MCP Registry's format: `rgrid import`, `rgrid export --format mcp`)."),
    BuiltinRegistry("grid.agent-cards", ("agent-card",),
                    "A2A agent cards, one record per agent, signatures verified at import (`rgrid import`, "
                    "`rgrid export --format a2a`)."),
    BuiltinRegistry("grid.oasf-records", ("oasf-record",),
                    "AGNTCY OASF records of agentic workloads, one record per version (`rgrid import`, "
                    "`rgrid export --format oasf`)."),
    BuiltinRegistry("grid.ai-catalog-entries", ("ai-catalog-entry",),
                    "Entries of AI Catalogs (ai-catalog.json) with the catalog they came in (`rgrid import`, "
                    "`rgrid export --format ai-catalog`)."),
)

_HOME_REGISTRY: Mapping[str, str] = MappingProxyType(
    {kind: reg.name for reg in BUILTIN_REGISTRIES for kind in reg.kinds}
)


# ---------------------------------------------------------------- formats

FORMAT_CHECKER = jsonschema.FormatChecker(formats=())
"""The ``format`` checks every node applies, independent of installed extras.

Formats not listed here (``duration``, ``uri-template``, ...) are annotations
only, as Draft 2020-12 allows.
"""

# RFC 3339 section 5.6 (`T` and `Z` may be lowercase, section 5.6 NOTE).
_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$", re.ASCII)
_TIME_RE = re.compile(r"^(\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII)
# RFC 3986 section 3: scheme ":" hier-part; no whitespace, controls or the
# characters the RFC excludes everywhere (`<>"{}|\^` and backtick).
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`\x00-\x1f\x7f]*$")
# RFC 1123 section 2.1 host names: labels of letters, digits and hyphens.
_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$", re.ASCII)
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _valid_date(value: str) -> bool:
    m = _DATE_RE.fullmatch(value)
    if not m:
        return False
    try:
        _dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return False
    return True


def _valid_time(value: str) -> bool:
    m = _TIME_RE.fullmatch(value)
    if not m:
        return False
    hour, minute, second = int(m[1]), int(m[2]), int(m[3])
    # Second 60 is a leap second (RFC 3339 section 5.7).
    if hour > 23 or minute > 59 or second > 60:
        return False
    offset = m[5]
    if offset not in ("Z", "z"):
        if int(offset[1:3]) > 23 or int(offset[4:6]) > 59:
            return False
    return True


@FORMAT_CHECKER.checks("date-time")
def _check_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats apply to strings only; `type` catches the rest
    date, sep, time = value.partition("T") if "T" in value else value.partition("t")
    return bool(sep) and _valid_date(date) and _valid_time(time)


@FORMAT_CHECKER.checks("date")
def _check_date(value: object) -> bool:
    return not isinstance(value, str) or _valid_date(value)


@FORMAT_CHECKER.checks("time")
def _check_time(value: object) -> bool:
    return not isinstance(value, str) or _valid_time(value)


@FORMAT_CHECKER.checks("uri")
def _check_uri(value: object) -> bool:
    return not isinstance(value, str) or bool(_URI_RE.fullmatch(value))


@FORMAT_CHECKER.checks("hostname")
def _check_hostname(value: object) -> bool:
    if not isinstance(value, str):
        return True
    name = value[:-1] if value.endswith(".") else value
    return 0 < len(name) <= 253 and all(_LABEL_RE.fullmatch(label) for label in name.split("."))


@FORMAT_CHECKER.checks("email")
def _check_email(value: object) -> bool:
    # Deliberately loose, like jsonschema's own: local@domain, no spaces.
    if not isinstance(value, str):
        return True
    local, at, domain = value.rpartition("@")
    return bool(at and local and domain) and not any(c.isspace() for c in value)


@FORMAT_CHECKER.checks("ipv4")
def _check_ipv4(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


@FORMAT_CHECKER.checks("ipv6")
def _check_ipv6(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


@FORMAT_CHECKER.checks("uuid")
def _check_uuid(value: object) -> bool:
    return not isinstance(value, str) or bool(_UUID_RE.fullmatch(value))


@FORMAT_CHECKER.checks("regex", raises=(re.error, OverflowError))
def _check_regex(value: object) -> bool:
    # Used by the meta-schema for `pattern`, so a kind with a broken regex is
    # refused when it is registered, not when the first record hits it.
    # OverflowError: `re` raises it for repeat counts past 2**32 ("a{4294967296}").
    if isinstance(value, str):
        re.compile(value)
    return True


# ---------------------------------------------------------------- builtin schemas

_BUILTIN_FILE_RE = re.compile(r"^([a-z][a-z0-9-]{0,63})\.v([1-9][0-9]{0,4})\.json$")


@functools.cache
def _builtin_documents() -> tuple[tuple[str, int, str], ...]:
    """``(kind, version, JSON text)`` of every ``builtin/*.json``, read once per process.

    Each catalog parses the text itself, so no two catalogs share mutable
    dicts. Only cheap structural checks run here: checking the 23 files
    against the 2020-12 meta-schema costs about 0.5 s (jsonschema spends
    ~20 ms on each), which every `rgrid` command would pay. The files ship
    with the code, so their meta-schema validity is a property of the release
    and is checked by the tests (tests/test_schemas.py), like the code is.
    """
    found: list[tuple[str, int, str]] = []
    folder = resources.files(__package__).joinpath("builtin")
    for entry in folder.iterdir():
        if not entry.name.endswith(".json"):
            continue
        m = _BUILTIN_FILE_RE.match(entry.name)
        if not m:
            raise IntegrityError(f"built-in schema file {entry.name!r} is not named <kind>.v<N>.json")
        name, version = m[1], int(m[2])
        text = entry.read_text(encoding="utf-8")
        schema = json.loads(text)
        expected_id = f"{SCHEMA_ID_BASE}{name}/v{version}.json"
        problems = []
        if schema.get("$id") != expected_id:
            problems.append(f"$id is {schema.get('$id')!r}, expected {expected_id!r}")
        if schema.get("$schema") != DIALECT:
            problems.append(f"$schema must be {DIALECT!r}")
        for key in ("title", "description"):
            if not isinstance(schema.get(key), str) or not schema[key]:
                problems.append(f"missing {key}")
        if name not in _HOME_REGISTRY:
            problems.append("the kind has no home registry in BUILTIN_REGISTRIES")
        if problems:
            raise IntegrityError(f"built-in schema {entry.name}: " + "; ".join(problems))
        found.append((name, version, text))
    missing = sorted(set(_HOME_REGISTRY) - {name for name, _, _ in found})
    if missing:
        raise IntegrityError(f"built-in kinds without a schema file: {', '.join(missing)}")
    found.sort(key=lambda item: (item[0], item[1]))
    return tuple(found)


@functools.cache
def _reference_registry() -> referencing.Registry:
    # The meta-schemas (so a `kind` record's `schema` field can `$ref` the
    # 2020-12 meta-schema) plus every built-in schema by its `$id` (so a user
    # kind may `$ref` a built-in one). The registry's default `retrieve`
    # raises NoSuchResource: nothing is ever fetched.
    builtins = [
        DRAFT202012.create_resource(json.loads(text)) for _, _, text in _builtin_documents()
    ]
    return _META_SCHEMAS.with_resources((r.id(), r) for r in builtins).crawl()


# ---------------------------------------------------------------- errors


def _json_pointer(path: Iterable[Any]) -> str:
    """RFC 6901 JSON Pointer of an instance path ('' for the document itself)."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _path_sort_key(path: Iterable[Any]) -> tuple[tuple[bool, Any], ...]:
    # Array indexes sort numerically (/nodes/2 before /nodes/10). At one
    # position all parts have the same type, because they index one value.
    return tuple((isinstance(part, str), part) for part in path)


def _clip(message: str) -> str:
    if len(message) <= MAX_ERROR_MESSAGE_CHARS:
        return message
    return message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"


def _error_details(errors: list[jsonschema.ValidationError]) -> list[dict[str, str]]:
    errors.sort(key=lambda e: (_path_sort_key(e.absolute_path), str(e.validator), e.message))
    return [
        {"path": _json_pointer(e.absolute_path), "message": _clip(e.message), "validator": str(e.validator),
         "schema_path": _json_pointer(e.absolute_schema_path)}
        for e in errors
    ]


def _violation(name: str, version: int, details: list[dict[str, str]]) -> SchemaViolation:
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    where = first["path"] or "fields"
    return SchemaViolation(
        f"{name} v{version}: {where}: {first['message']}{more}",
        details=details,
    )


# ---------------------------------------------------------------- user-kind checks


def _schema_depth_ok(node: Any, limit: int) -> bool:
    stack = [(node, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return True


# Keywords whose values are data, not subschemas: a "$ref" key inside an enum
# value or an example is not a reference.
_DATA_KEYWORDS = frozenset({"enum", "const", "examples", "default"})
# Keywords whose values map names to subschemas: there a key named "enum" is
# a property, and its value is a schema.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def _schema_objects(node: Any, base: str = "") -> Iterator[tuple[dict[str, Any], str]]:
    """Every schema object in a schema, with the base URI its ``$id``s give it."""
    if isinstance(node, list):
        for item in node:
            yield from _schema_objects(item, base)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("$id"), str):
        base = urljoin(base, node["$id"])
    yield node, base
    for key, value in node.items():
        if key in _DATA_KEYWORDS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for sub in value.values():
                yield from _schema_objects(sub, base)
        else:
            yield from _schema_objects(value, base)


def _references(schema: dict[str, Any], base: str) -> Iterator[str]:
    """Every ``$ref`` in a schema, made absolute against the ``$id``s above it."""
    for node, node_base in _schema_objects(schema, base):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield urljoin(node_base, ref) if node_base else ref


# A schema's size once its references are followed is what validating a
# value against it costs, and explaining a refusal: a definition referred to
# twice by one referred to twice ... doubles at each level, so a 1.5 KB
# schema of 24 such levels stood for 2^24 schema objects, and one write of
# its kind took a node's memory (8 GB) and every other write with it.
# Counted once per definition (memoized), so counting is linear however
# large the total; the built-in kinds stand for at most a few hundred.
MAX_EXPANDED_SCHEMA_OBJECTS = 50_000


def _expanded_objects(schema: dict[str, Any], resolver: Any) -> int:
    """How many schema objects ``schema`` stands for with every ``$ref``
    followed (a recursion counts once: it goes only as deep as the value
    nests, which is bounded); definitions count where they are used."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any, resolver: Any) -> int:
        if isinstance(node, list):
            return sum(size(item, resolver) for item in node)
        if not isinstance(node, dict):
            return 0
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            return 1
        active.add(key)
        if isinstance(node.get("$id"), str):
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        total = 1
        for name, value in node.items():
            if name in _DATA_KEYWORDS or name in ("$defs", "definitions"):
                continue
            if name in _SCHEMA_MAPS and isinstance(value, dict):
                total += sum(size(sub, resolver) for sub in value.values())
            else:
                total += size(value, resolver)
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                found = resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                pass  # refused by _check_references
            else:
                total += size(found.contents, found.resolver)
        active.discard(key)
        memo[key] = total
        return total

    try:
        return size(schema, resolver)
    except RecursionError:
        raise ValidationError("the schema's $refs chain deeper than a validator can follow") from None


def _plain_json(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A private deep copy of ``schema`` made only of JSON types, size-checked."""
    if not _schema_depth_ok(schema, MAX_SCHEMA_DEPTH):
        raise ValidationError(f"schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    try:
        text = json.dumps(dict(schema), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"schema is not plain JSON: {exc}") from None
    if len(text.encode("utf-8")) > MAX_SCHEMA_BYTES:
        raise ValidationError(f"schema is larger than {MAX_SCHEMA_BYTES} bytes of JSON")
    return json.loads(text)


# ---------------------------------------------------------------- compiling

# Keywords that only annotate: merging them into a referenced subschema
# changes nothing a validator checks.
_ANNOTATIONS = frozenset({"title", "description", "examples", "default", "$comment",
                          "deprecated", "readOnly", "writeOnly"})
# Keywords that change how `$ref`s resolve; a schema using any of them is
# compiled as written.
_RESOLUTION_KEYWORDS = frozenset({"$anchor", "$dynamicAnchor", "$dynamicRef", "$recursiveRef"})
# Inlining copies a definition to every place that uses it; past this growth
# factor the copy costs more memory than the lookups it saves.
_MAX_INLINE_GROWTH = 8


def _inline_local_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with each ``{"$ref": "#/$defs/x"}`` replaced by a copy of ``x``.

    jsonschema resolves a ``$ref`` through ``referencing`` on every visit,
    which is about half the time of validating a record of a built-in kind;
    the kinds' definitions are not recursive, so they can be expanded once at
    compile time. Semantics are kept exactly: a ``$ref`` with only annotations
    beside it becomes the definition (plus the annotations), one with
    validation keywords beside it becomes ``{"allOf": [definition], ...}``
    (the Draft 2020-12 meaning of ``$ref`` beside other keywords).
    Recursive definitions stay references, and a schema that uses nested
    ``$id``s or anchors is returned as it is.
    """
    defs = schema.get("$defs")
    if not isinstance(defs, dict) or not defs:
        return schema

    for node, _ in _schema_objects(schema):
        if any(k in node for k in _RESOLUTION_KEYWORDS) or (node is not schema and "$id" in node):
            return schema

    def expand(node: Any, active: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [expand(v, active) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: (v if k in _DATA_KEYWORDS else expand(v, active)) for k, v in node.items()}
        ref = out.get("$ref")
        if not (isinstance(ref, str) and ref.startswith("#/$defs/")):
            return out
        name = ref[len("#/$defs/"):]
        if "/" in name or "~" in name or "%" in name or name not in defs or name in active:
            return out  # a pointer deeper than one level, or a recursive definition
        target = expand(defs[name], active | {name})
        rest = {k: v for k, v in out.items() if k != "$ref"}
        if not isinstance(target, dict):
            return {"allOf": [target], **rest}  # a boolean schema
        if set(rest) <= _ANNOTATIONS:
            return {**target, **rest}
        return {"allOf": [target], **rest}

    top = {k: v for k, v in schema.items() if k != "$defs"}
    inlined = expand(top, frozenset())
    inlined["$defs"] = defs  # for any reference left as it was
    grown = len(json.dumps(inlined)) > _MAX_INLINE_GROWTH * len(json.dumps(schema))
    return schema if grown else inlined


# ---------------------------------------------------------------- the fast engine

# The formats jsonschema-rs checks by itself (0.61.0). Those not in
# FORMAT_CHECKER become annotations, as they are for jsonschema; so do the
# formats a schema names, in case a later jsonschema-rs learns one.
_RUST_BUILTIN_FORMATS = frozenset({
    "date", "date-time", "duration", "email", "hostname", "idn-email", "idn-hostname", "ipv4", "ipv6",
    "iri", "iri-reference", "json-pointer", "regex", "relative-json-pointer", "time", "uri",
    "uri-reference", "uri-template", "uuid",
})

# Values nested deeper than this are judged by jsonschema (which reports a
# "depth" violation past a few hundred levels, as before). jsonschema-rs
# recurses on the native stack: a recursive schema over a value nested
# ~100,000 levels overflows it, a crash rather than an error. Record fields
# nest at most 32 levels (MAX_NESTING, enforced where records are stored), so
# every storable record stays on the fast path.
_RUST_MAX_DEPTH = 64

# jsonschema-rs 0.60 compares an integer with a float as two floats, so past
# 2**53, where floats skip integers, it disagrees with jsonschema's exact
# comparisons (maximum, const, enum, uniqueItems: 2**63 == 2.0**63 there,
# not here). Integers beyond this bound, in a value or in a schema, are left
# to jsonschema. (0.61 compares exactly, but schemathesis, which the bridge
# tests use, requires jsonschema-rs < 0.61.)
_RUST_EXACT_INT = 2**53  # = protocol.limits.EXACT_FLOAT_INT, which plain_json callers check against (tested)


def _annotation_only(value: str) -> bool:
    return True


def _rust_format(check: Any, raises: Any) -> Any:
    """A FORMAT_CHECKER function as jsonschema-rs calls it: a string in, a bool out.

    jsonschema-rs lets a format function's exception escape; FormatChecker
    turns the ones it was told about (``raises``) into a failed check.
    """
    if not raises:
        return check

    def rust_check(value: str) -> bool:
        try:
            return bool(check(value))
        except raises:
            return False

    return rust_check


def _rust_formats(schema: dict[str, Any]) -> dict[str, Any]:
    named = {node["format"] for node, _ in _schema_objects(schema) if isinstance(node.get("format"), str)}
    formats: dict[str, Any] = dict.fromkeys(_RUST_BUILTIN_FORMATS | named, _annotation_only)
    formats.update({name: _rust_format(check, raises) for name, (check, raises) in FORMAT_CHECKER.checkers.items()})
    return formats


class _Pattern:
    r"""``pattern`` as jsonschema applies it: ``re.search``, Python's regex dialect.

    jsonschema-rs's own (ECMA-262, in Rust) differs on inputs a peer can
    send: its ``$`` does not match before a final newline and its ``\s`` is
    another set of characters, so ``"name\n"`` would pass one engine and
    fail the other.
    """

    __slots__ = ("_pattern", "_search")
    _compile: Any = staticmethod(re.compile)

    def __init__(self, parent_schema: Any, value: Any, schema_path: Any) -> None:
        self._pattern = value
        self._search = self._compile(value).search

    def validate(self, instance: Any) -> None:
        if isinstance(instance, str) and self._search(instance) is None:
            raise ValueError(f"{instance[:MAX_ERROR_MESSAGE_CHARS]!r} does not match {self._pattern!r}")


# ---- user kinds: regular expressions in linear time
#
# A user kind comes from anyone in the federation (a ``grid.kinds`` record),
# and its schema's ``pattern`` runs on every record of that kind on every
# node, on the one writer thread. Python's ``re`` backtracks: ``^(a+)+$``
# against 40 a's and a b never ends, and a peer could freeze every node's
# writes with one kind and one record. So user kinds' patterns run on RE2
# (google-re2), which matches in time linear in the input and refuses the
# constructs that cannot (backreferences, lookaround) when the kind is
# registered. RE2's dialect is also closer to JSON Schema's ECMA-262 one
# (``$`` ends the text; ``\d`` is ASCII). ``patternProperties`` is refused
# in user kinds: jsonschema matches its keys with ``re`` inside keywords
# this module does not own (additionalProperties, unevaluatedProperties);
# ``propertyNames: {"pattern": ...}`` says the same on RE2. Built-in kinds
# ship with the software and keep Python's dialect (every built-in pattern
# also compiles under RE2, so a user kind may $ref them).

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is our ValidationError, not a line on stderr


@functools.lru_cache(maxsize=4096)
def _re2(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


def check_linear_pattern(pattern: str) -> str | None:
    """Why ``pattern`` cannot run in linear time (RE2 refuses it), or None."""
    try:
        _re2(pattern)
    except re2.error as exc:
        return str(exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc)
    return None


class _LinearPattern(_Pattern):
    """``pattern`` on RE2, as jsonschema-rs calls a custom keyword (user kinds)."""

    __slots__ = ()
    _compile = staticmethod(_re2)


def _linear_pattern_keyword(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    """``pattern`` on RE2, as jsonschema calls a keyword (user kinds)."""
    if validator.is_type(instance, "string") and _re2(pattern).search(instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_UserKindValidator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _linear_pattern_keyword})


_PY_MULTIPLE_OF = Draft202012Validator.VALIDATORS["multipleOf"]
_PY_TYPES = Draft202012Validator({})


class _MultipleOf:
    """``multipleOf`` by jsonschema's own function: float quotients, as before.

    jsonschema-rs divides exactly (0.3 is a multiple of 0.1 there, not here).
    """

    __slots__ = ("_schema", "_value")

    def __init__(self, parent_schema: Any, value: Any, schema_path: Any) -> None:
        self._value = value
        self._schema = parent_schema

    def validate(self, instance: Any) -> None:
        for error in _PY_MULTIPLE_OF(_PY_TYPES, self._value, instance, self._schema):
            raise ValueError(error.message)


_RUST_KEYWORDS = {"pattern": _Pattern, "multipleOf": _MultipleOf}
_RUST_USER_KEYWORDS = {"pattern": _LinearPattern, "multipleOf": _MultipleOf}


def _refuse_retrieval(uri: str) -> Any:
    raise LookupError(f"{uri} is not a schema of this node; nothing is fetched")


@functools.cache
def _rust_registry() -> jsonschema_rs.Registry:
    # The built-in kind schemas, as _reference_registry() holds them; the
    # 2020-12 meta-schemas are built into jsonschema-rs (the same documents).
    return jsonschema_rs.Registry(
        [(f"{SCHEMA_ID_BASE}{name}/v{version}.json", json.loads(text)) for name, version, text in _builtin_documents()],
        draft=jsonschema_rs.Draft202012,
        retriever=_refuse_retrieval,
    )


def _compile_rust(schema: dict[str, Any], keywords: dict[str, Any] = _RUST_KEYWORDS) -> jsonschema_rs.Validator | None:
    """A jsonschema-rs validator judging ``schema`` as jsonschema does, or None if it cannot.

    ``offline=True``: a ``$ref`` outside the registry fails to compile
    instead of being fetched over HTTP or read from a file, which
    jsonschema-rs does by default.
    """
    if any("patternProperties" in node for node, _ in _schema_objects(schema)):
        return None  # its keys are regexes jsonschema-rs would run with its own engine (see _Pattern)
    if _has_inexact_int(schema):
        return None
    try:
        return jsonschema_rs.Draft202012Validator(
            schema,
            formats=_rust_formats(schema),
            validate_formats=True,
            ignore_unknown_formats=True,
            keywords=keywords,
            registry=_rust_registry(),
            offline=True,
        )
    except (ValueError, TypeError, re.error, jsonschema_rs.ReferencingError):
        return None  # a schema it refuses or cannot resolve: jsonschema decides, as before


def _has_inexact_int(node: Any) -> bool:
    """Whether a schema holds an integer beyond :data:`_RUST_EXACT_INT` anywhere."""
    if isinstance(node, dict):
        return any(_has_inexact_int(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_inexact_int(v) for v in node)
    return type(node) is int and not -_RUST_EXACT_INT <= node <= _RUST_EXACT_INT


def rust_reads_as_python(value: Any, depth: int = 0) -> bool:
    """Whether jsonschema-rs sees ``value`` as jsonschema does: plain JSON, not too deep.

    Only the exact types dict, list, str, bool, None, finite float and int
    within :data:`_RUST_EXACT_INT` qualify. jsonschema-rs reads a tuple as an
    array (jsonschema: not an array), rejects NaN as a number (jsonschema:
    accepts it), takes a Decimal ``1`` as an integer, and refuses bytes, sets
    and the like with an exception; subclasses go to jsonschema too rather
    than be reasoned about. Object keys are left to jsonschema-rs, which
    raises ValueError on a key that is not a string, as on a lone surrogate
    in a string.
    """
    kind = type(value)
    if kind is dict:
        items: Iterable[Any] = value.values()
    elif kind is list:
        items = value
    elif kind is str or kind is bool or value is None:
        return True
    elif kind is int:
        return -_RUST_EXACT_INT <= value <= _RUST_EXACT_INT
    elif kind is float:
        return math.isfinite(value)
    else:
        return False
    if depth >= _RUST_MAX_DEPTH:
        return False
    for item in items:
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -_RUST_EXACT_INT <= item <= _RUST_EXACT_INT:
                continue
            return False
        if not rust_reads_as_python(item, depth + 1):
            return False
    return True


def closest(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """An anyOf's or oneOf's own report says only that no branch fits ("'strin'
    is not valid under any of the given schemas"); the best of its branches'
    errors (jsonschema's best_match) names the broken rule ("'strin' is not
    one of [...]"): the branches the value's type fits, that is, whose
    error is not a type mismatch, tell what is wrong with it. Where two of
    them tell it equally (an address that is neither an IPv4 nor an IPv6
    one), or none does, the anyOf's own report stays. The deepest error
    comes first: the branch that read furthest into the value is the one
    it was meant for (a policy object's bad member, not "is not one of
    the rule names" from the branch of a plain rule name). Other errors
    as they are."""
    relevance = jsonschema.exceptions.relevance

    def rank(e: jsonschema.ValidationError) -> tuple[int, Any]:
        return len(e.path), relevance(e)

    fitting = sorted((e for e in error.context or () if e.validator != "type"), key=rank, reverse=True)
    if not fitting or (len(fitting) > 1 and rank(fitting[0]) == rank(fitting[1])):
        return error
    return closest(fitting[0])


def _from_rust(error: jsonschema_rs.ValidationError) -> jsonschema.ValidationError:
    last = error.schema_path[-1] if error.schema_path else None
    keyword = last if isinstance(last, str) and last in Draft202012Validator.VALIDATORS else error.kind.name
    return jsonschema.ValidationError(
        error.message, validator=keyword, path=error.instance_path, schema_path=error.schema_path,
    )


class CompiledKind:
    """The compiled validator of one kind version: one engine decides, jsonschema explains.

    ``rust`` (jsonschema-rs, or None where it cannot judge this schema as
    jsonschema does) gives the verdict on every plain-JSON value;
    ``python`` (jsonschema, on the same schema) reports the errors of a
    rejected value, and judges the values jsonschema-rs cannot read as
    jsonschema does (see :func:`rust_reads_as_python`).
    """

    __slots__ = ("python", "rust")

    def __init__(self, python: Draft202012Validator, rust: jsonschema_rs.Validator | None) -> None:
        self.python = python
        self.rust = rust

    @property
    def engine(self) -> str:
        """The engine that judges plain-JSON values: ``"jsonschema-rs"`` or ``"jsonschema"``."""
        return "jsonschema" if self.rust is None else "jsonschema-rs"

    def verdict(self, instance: object, plain_json: bool = False) -> bool | None:
        """jsonschema-rs's verdict on ``instance``, or None where jsonschema
        decides (``plain_json``: the caller vouches that rust_reads_as_python
        holds, so it is not walked again)."""
        rust = self.rust
        if rust is None or not (plain_json or rust_reads_as_python(instance)):
            return None
        try:
            return rust.is_valid(instance)
        except ValueError:  # a lone surrogate, a key that is not a string: not JSON it can read
            return None

    def is_valid(self, instance: object) -> bool:
        verdict = self.verdict(instance)
        return self.python.is_valid(instance) if verdict is None else verdict

    def iter_errors(self, instance: object) -> Iterator[jsonschema.ValidationError]:
        """Every error of ``instance`` as jsonschema reports it; none if the verdict is valid."""
        return iter(self.errors(instance, self.verdict(instance)))

    def errors(self, instance: object, verdict: bool | None) -> list[jsonschema.ValidationError]:
        """The errors of ``instance``, given :meth:`verdict`'s answer on it."""
        if verdict:
            return []
        errors = [closest(e) for e in self.python.iter_errors(instance)]
        if errors or verdict is None:
            return errors
        # jsonschema finds nothing wrong with a value jsonschema-rs rejected.
        # The verdict stands (a record is never accepted by the engine that
        # did not decide); its reasons are jsonschema-rs's.
        assert self.rust is not None
        return [_from_rust(e) for e in self.rust.iter_errors(instance)] or [
            jsonschema.ValidationError("the value does not match the schema", validator="schema")
        ]


# ---------------------------------------------------------------- catalog


class SchemaCatalog:
    """Every kind this node knows, by name and version.

    The built-in kinds are loaded from the package's ``builtin/*.json`` when
    the catalog is made; user kinds (from ``grid.kinds`` records, or code)
    are added with :meth:`register`. Reads take no lock: the kind table is
    replaced, never changed in place, so a reader on another thread (the
    HTTP bridge) always sees a consistent table.
    """

    def __init__(self) -> None:
        kinds: dict[str, dict[int, KindSchema]] = {}
        for name, version, text in _builtin_documents():
            schema = json.loads(text)
            kinds.setdefault(name, {})[version] = KindSchema(
                name=name,
                version=version,
                registry=_HOME_REGISTRY[name],
                schema=schema,
                description=schema["description"],
                builtin=True,
            )
        self._kinds: Mapping[str, Mapping[int, KindSchema]] = kinds
        # (name, version) -> (the definition compiled, its validator): a
        # definition replaced since (register(replace=True)) is compiled anew.
        self._validators: dict[tuple[str, int], tuple[KindSchema, CompiledKind]] = {}
        self._write_lock = threading.Lock()
        self._migrations: Migrations = builtin_migrations()

    # -- lookup

    def get(self, name: str, version: int | None = None) -> KindSchema:
        """The kind ``name`` at ``version`` (its latest when None)."""
        versions = self._versions_of(name)
        if version is None:
            return versions[max(versions)]
        found = versions.get(version) if isinstance(version, int) and not isinstance(version, bool) else None
        if found is None:
            known = sorted(versions)
            raise UnknownKind(
                f"kind {name!r} has no version {version!r}; known versions: {', '.join(map(str, known))}",
                details={"kind": name, "version": version, "known_versions": known},
            )
        return found

    def latest_version(self, name: str) -> int:
        return self.get(name).version

    def versions(self, name: str) -> list[int]:
        return sorted(self._versions_of(name))

    def kinds(self) -> list[KindSchema]:
        """The latest version of every kind, sorted by name."""
        table = self._kinds
        return [table[name][max(table[name])] for name in sorted(table)]

    def _versions_of(self, name: str) -> Mapping[int, KindSchema]:
        table = self._kinds
        versions = table.get(name)
        if versions is None:
            raise UnknownKind(
                f"unknown kind {name!r}; known kinds: {', '.join(sorted(table))}",
                details={"kind": name, "known_kinds": sorted(table)},
            )
        return versions

    # -- registration

    def register(self, kind: KindSchema, *, replace: bool = False) -> bool:
        """Add a user kind version; whether the catalog changed.

        Refused (ValidationError): a malformed name, version or registry; a
        schema that is not a valid Draft 2020-12 schema, is too large, or
        has a ``$ref`` that does not resolve here; any name of a built-in
        kind (new versions of built-ins ship with the software, so a peer's
        ``kind`` record cannot change what ``asset`` means on every node);
        and a different definition of an already registered name and version
        (kinds are immutable once published: make a new version). Registering
        an identical definition again is a no-op, so replaying ``kind``
        records is safe.

        ``replace``: the definition the grid settled on takes the place of
        this node's own. Two creates of one kind version can race (two orgs,
        or two nodes of one, before they meet); every node then shows one of
        them in ``grid.kinds`` (engine/kinds.py), and its catalog follows.
        """
        definition = self.check(kind)
        with self._write_lock:
            existing = self._kinds.get(kind.name, {}).get(kind.version)
            if existing is not None:
                if existing == definition:
                    return False
                if not replace:
                    raise ValidationError(
                        f"kind {kind.name!r} v{kind.version} is already registered with a different definition;"
                        " publish a new version instead",
                        details={"kind": kind.name, "version": kind.version},
                    )
            table = {name: dict(versions) for name, versions in self._kinds.items()}
            table.setdefault(kind.name, {})[kind.version] = definition
            self._kinds = table
            return True

    def check(self, kind: KindSchema) -> KindSchema:
        """``kind`` as register() would hold it, or why it refuses it (a
        malformed name, version, registry or schema, a built-in's name), with
        nothing registered: for a kind that arrives in a change, whose
        definition counts once it is committed (a create race may settle it
        otherwise)."""
        if not isinstance(kind, KindSchema):
            raise ValidationError(f"expected a KindSchema, got {type(kind).__name__}")
        if kind.builtin:
            raise ValidationError("built-in kinds come from the package; register user kinds with builtin=False")
        if not isinstance(kind.name, str) or not KIND_NAME_RE.fullmatch(kind.name):
            raise ValidationError(f"kind name {kind.name!r} must match {KIND_NAME_RE.pattern}")
        if not isinstance(kind.version, int) or isinstance(kind.version, bool) or not 1 <= kind.version <= MAX_VERSION:
            raise ValidationError(f"kind version must be an integer from 1 to {MAX_VERSION}, got {kind.version!r}")
        if not isinstance(kind.registry, str) or not REGISTRY_NAME_RE.fullmatch(kind.registry):
            raise ValidationError(f"registry name {kind.registry!r} must match {REGISTRY_NAME_RE.pattern}")
        if not isinstance(kind.description, str) or len(kind.description) > MAX_DESCRIPTION_CHARS:
            raise ValidationError(f"kind description must be a string of at most {MAX_DESCRIPTION_CHARS} characters")
        if kind.name in _HOME_REGISTRY:
            raise ValidationError(
                f"{kind.name!r} is a built-in kind; user kinds cannot add or replace its versions",
                details={"kind": kind.name},
            )
        if not isinstance(kind.schema, Mapping):
            raise ValidationError("a kind's schema must be a JSON object")

        schema = _plain_json(kind.schema)
        declared = schema.get("$schema", DIALECT)
        if declared != DIALECT:
            raise ValidationError(f"kind schemas are Draft 2020-12: $schema must be absent or {DIALECT!r}")
        try:
            Draft202012Validator.check_schema(schema, format_checker=FORMAT_CHECKER)
        except jsonschema.SchemaError as exc:
            raise ValidationError(
                f"not a valid Draft 2020-12 schema: {_clip(exc.message)}",
                details=[{"path": _json_pointer(exc.absolute_path), "message": _clip(exc.message),
                          "validator": str(exc.validator)}],
            ) from None
        self._check_references(schema)
        self._check_patterns(schema)

        definition = KindSchema(
            name=kind.name,
            version=kind.version,
            registry=kind.registry,
            schema=schema,
            description=kind.description,
            builtin=False,
        )
        return definition

    @staticmethod
    def _check_patterns(schema: dict[str, Any]) -> None:
        """User kinds' regexes must run in linear time (see _LinearPattern)."""
        for node, _ in _schema_objects(schema):
            if "patternProperties" in node:
                raise ValidationError(
                    "patternProperties is not available in user kinds: its keys are matched with Python's "
                    "backtracking regex engine; use propertyNames with a pattern instead",
                    details=[{"path": "patternProperties", "message": "not available in user kinds"}])
            pattern = node.get("pattern")
            if isinstance(pattern, str):
                why = check_linear_pattern(pattern)
                if why is not None:
                    raise ValidationError(
                        f"pattern {pattern[:200]!r} cannot run in linear time ({why}); user kinds' patterns are "
                        "RE2 regular expressions: no backreferences or lookaround",
                        details=[{"path": "pattern", "message": why}])

    @staticmethod
    def _check_references(schema: dict[str, Any]) -> None:
        resource = DRAFT202012.create_resource(schema)
        resolver = _reference_registry().resolver_with_root(resource)
        for ref in _references(schema, resource.id() or ""):
            try:
                resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                raise ValidationError(
                    f"schema $ref {ref!r} does not resolve; a kind schema may refer to itself, the"
                    " JSON Schema meta-schemas and the built-in kinds only (nothing is fetched)",
                    details={"ref": ref},
                ) from None
        objects = _expanded_objects(schema, resolver)
        if objects > MAX_EXPANDED_SCHEMA_OBJECTS:
            raise ValidationError(
                f"the schema stands for {objects} schema objects once its $refs are followed (at most "
                f"{MAX_EXPANDED_SCHEMA_OBJECTS}): every value of the kind would cost that much to check",
                details={"expanded_objects": objects})

    def register_migration(self, name: str, from_version: int, to_version: int, step: MigrationStep) -> None:
        """Add a migration step for a kind (a plugin's user kind, typically)."""
        self._versions_of(name)
        self._migrations.register(name, from_version, to_version, step)

    # -- validation

    def validator(self, name: str, version: int | None = None) -> CompiledKind:
        """The compiled validator of a kind version (latest when None), made once and cached."""
        if version is None:
            version = self.latest_version(name)
        key = (name, version)
        kind = self.get(name, version)
        cached = self._validators.get(key)
        if cached is not None and cached[0] is kind:
            return cached[1]
        schema = _inline_local_refs(copy.deepcopy(dict(kind.schema)))
        if kind.builtin:
            python_class, keywords = Draft202012Validator, _RUST_KEYWORDS
        else:
            python_class, keywords = _UserKindValidator, _RUST_USER_KEYWORDS
        compiled = CompiledKind(
            python_class(schema, registry=_reference_registry(), format_checker=FORMAT_CHECKER),
            _compile_rust(schema, keywords),
        )
        # setdefault: if two threads compile at once, both use the first one.
        kept = self._validators.setdefault(key, (kind, compiled))
        return kept[1] if kept[0] is kind else compiled

    def validate(self, name: str, version: int, fields: object, *, plain_json: bool = False) -> None:
        """Raise SchemaViolation listing every error of ``fields`` against the kind's schema.

        ``plain_json``: the caller has walked ``fields`` already and found
        only dicts, lists, strings, bools, None, finite floats and integers
        within ±2**53 (_RUST_EXACT_INT), nested at most 32
        levels (crdt.snapshot.check_value returned True): the one walk a
        local create makes, instead of two.
        """
        validator = self.validator(name, version)
        if not isinstance(fields, dict):
            raise _violation(name, version, [{
                "path": "",
                "message": f"fields must be a JSON object, got {type(fields).__name__}",
                "validator": "type",
            }])
        try:
            verdict = validator.verdict(fields, plain_json)
            if verdict:
                return  # the hot path: plain JSON, valid by jsonschema-rs
            errors = validator.errors(fields, verdict)
        except RecursionError:
            raise _violation(name, version, [{
                "path": "", "message": "fields nest too deeply to validate", "validator": "depth",
            }]) from None
        except referencing.exceptions.Unresolvable as exc:
            # register() checks every $ref, so this means a schema changed
            # in place after registration; never a fault of the record.
            raise ValidationError(f"{name} v{version}: schema reference does not resolve: {exc}") from None
        if errors:
            raise _violation(name, version, _error_details(errors))

    # -- migration

    def migrate(self, name: str, fields: dict, from_version: int, to_version: int) -> dict:
        """``fields`` carried from one version of a kind to another, along registered steps.

        Raises UnknownKind for an unknown kind or version, ValidationError
        when no chain of steps connects the versions. The input is never
        mutated; the result is not validated (call :meth:`validate`).
        """
        self.get(name, from_version)
        self.get(name, to_version)
        return self._migrations.migrate(name, fields, from_version, to_version)

    def migration_path(self, name: str, from_version: int, to_version: int) -> list[tuple[int, int]]:
        """The version hops :meth:`migrate` would take, e.g. ``[(1, 2), (2, 3)]``."""
        self.get(name, from_version)
        self.get(name, to_version)
        return [(a, b) for a, b, _ in self._migrations.path(name, from_version, to_version)]
