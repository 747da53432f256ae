"""AI Catalog documents <-> records of ``grid.ai-catalog-entries`` (kind ``ai-catalog-entry``).

An AI Catalog (``application/ai-catalog+json``, the static
``/.well-known/ai-catalog.json`` a publisher hosts) lists heterogeneous AI
artifacts: ``{"specVersion", "host", "entries": [...], "collections"}``,
each entry an ``identifier`` (a domain-anchored URN), a ``displayName``, a
media ``type``, and exactly one of ``url`` (where the artifact is) or
``data`` (the artifact inline), with optional description, tags,
capabilities, representative queries, version, ``updatedAt`` and a trust
manifest. Here one entry is one record:

* **fields**: ``{"entry": <the entry, verbatim>, "catalog": {"specVersion",
  "host", "collections"}}``: the entry and the catalog it came in, so an
  export rebuilds each catalog with its entries unchanged;
* **record id**: the entry's identifier when it is a valid record id
  (``urn:air:acme.com:agent:assistant`` is), else ``aic-`` and 40 hex of
  its sha256;
* **tags**: ``ai-catalog``, and the entry's own tags and capabilities
  where a tag can hold them.

An entry whose artifact is inline and of a format imported natively (an
MCP server.json, an A2A card) is kept here as it is: the catalog is the
publisher's statement; ``rgrid import`` of the artifact itself files it in
its own registry too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from registrygrid.errors import ValidationError
from registrygrid.formats.shape import listed, tags_with
from registrygrid.protocol import names

FORMAT = "ai-catalog"
KIND = "ai-catalog-entry"
REGISTRY = "grid.ai-catalog-entries"
CATALOG_MEMBERS = ("specVersion", "host", "collections")
# Every entry's record keeps a copy of those members: 284 KB of collections
# over 2,000 entries wrote 480 MB. A catalog's own description fits many times.
MAX_SHARED_BYTES = 8 * 1024
_HASHED = re.compile(r"aic-[0-9a-f]{40}")


def looks_like(doc: Any) -> bool:
    return isinstance(doc, Mapping) and "specVersion" in doc and isinstance(doc.get("entries"), list)


def record_id(identifier: str) -> str:
    # An identifier shaped like a hashed id is hashed too: taken as it is,
    # it would be another entry's id, and its import would overwrite that one.
    if names.RECORD_ID.fullmatch(identifier) and not _HASHED.fullmatch(identifier):
        return identifier
    return "aic-" + hashlib.sha256(identifier.encode()).hexdigest()[:40]


def to_records(doc: Mapping[str, Any]) -> list[tuple[str, dict[str, Any], list[str]]]:
    """One (record id, fields, tags) per entry; ValidationError naming the
    first entry without an identifier (the kind's schema judges the rest)."""
    catalog = {k: doc[k] for k in CATALOG_MEMBERS if k in doc}
    shared = len(json.dumps(catalog, ensure_ascii=False).encode())
    if shared > MAX_SHARED_BYTES:
        raise ValidationError(
            f"the catalog's {', '.join(CATALOG_MEMBERS)} take {shared} bytes, over {MAX_SHARED_BYTES}: "
            "each entry's record keeps a copy", details=[{"path": "/", "message": f"over {MAX_SHARED_BYTES} bytes"}])
    out = []
    seen: set[str] = set()
    for i, entry in enumerate(doc.get("entries") or []):
        identifier = entry.get("identifier") if isinstance(entry, Mapping) else None
        if not isinstance(identifier, str) or not identifier:
            raise ValidationError(f"entry {i} has no identifier",
                                  details=[{"path": f"/entries/{i}/identifier", "message": "required, a string"}])
        if identifier in seen:
            raise ValidationError(f"entry {i} repeats identifier {identifier!r}",
                                  details=[{"path": f"/entries/{i}/identifier", "message": "already listed"}])
        seen.add(identifier)
        content = [tag for member in ("tags", "capabilities")
                   for tag in listed(entry, member, f"/entries/{i}/{member}")]
        out.append((record_id(identifier), {"entry": dict(entry), "catalog": catalog},
                    tags_with(["ai-catalog"], content)))
    return out


def to_record(doc: Mapping[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    """A catalog of exactly one entry (the importer takes ``to_records``)."""
    (one,) = to_records(doc)
    return one


def catalogs(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The catalog documents records came from, each with its entries in id order."""
    grouped: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r["id"]):
        catalog = record["fields"].get("catalog") or {}
        key = repr(sorted(catalog.items()))
        document = grouped.setdefault(key, {**catalog, "entries": []})
        document["entries"].append(record["fields"]["entry"])
    return list(grouped.values())
