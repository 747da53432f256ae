"""MCP server.json <-> records of ``grid.mcp-servers`` (kind ``mcp-server``).

The MCP Registry describes one version of a Model Context Protocol server
in a ``server.json`` document (name, description, version, packages,
remotes, repository, icons, ``_meta``...). Here one version is one record:

* **fields**: the document itself, every member kept verbatim (members the
  kind's schema does not model included: builtin/mcp-server.v1.json
  allows any), so an export gives back the bytes' meaning unchanged;
* **record id**: ``<namespace>~<name>@<version>`` (the server name's one
  slash becomes ``~``, which names never hold), or, when that is not a
  valid record id (too long, or characters ids do not take),
  ``mcp-<first 40 hex of sha256(name NUL version)>``; either way a pure
  function of (name, version), so importing a document again updates
  its record;
* **tags**: ``mcp``, and each package's registry type and transport
  (``npm``, ``stdio``, ``remote``...), for filtering and facets.

Accepted on import: a bare server.json, or the MCP Registry API's answer
for one version (``{"server": {...}, "_meta": {...}}``), whose registry
metadata (``io.modelcontextprotocol.registry/official``: status,
publishedAt, isLatest...) is the registry's, not the publisher's: it is not
stored in the record (the node's own record metadata says when and by
whom), and the status it names is kept in ``_meta`` only if the publisher
put it there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from registrygrid.errors import ValidationError
from registrygrid.formats.shape import listed, tags_with
from registrygrid.protocol import names

FORMAT = "mcp"
KIND = "mcp-server"
REGISTRY = "grid.mcp-servers"
SCHEMA_HINT = "server.schema.json"
# What the official MCP Registry API nests a version's registry facts under.
OFFICIAL_META = "io.modelcontextprotocol.registry/official"


def looks_like(doc: Any) -> bool:
    """Whether ``doc`` is a server.json (or the MCP Registry API's answer for one)."""
    if not isinstance(doc, Mapping):
        return False
    if isinstance(doc.get("server"), Mapping) and set(doc) <= {"server", "_meta"}:
        doc = doc["server"]
    schema = doc.get("$schema")
    if isinstance(schema, str) and SCHEMA_HINT in schema:
        return True
    name = doc.get("name")
    if "skills" in doc or "supportedInterfaces" in doc:
        return False  # an A2A agent card's own members: its name may hold a slash too
    # Packages or remotes are server.json's own members; a slashed name and a
    # version with a description are its minimal form.
    return isinstance(name, str) and "version" in doc and (
        "packages" in doc or "remotes" in doc or ("/" in name and "description" in doc))


def unwrap(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The server.json in ``doc``: itself, or the ``server`` of an API answer."""
    if isinstance(doc.get("server"), Mapping) and set(doc) <= {"server", "_meta"}:
        return dict(doc["server"])
    return dict(doc)


def record_id(name: str, version: str) -> str:
    readable = f"{name.replace('/', '~')}@{version}"
    # Readable only when it reads back one way: a "~" or "@" in the name
    # (or "@" in the version) would let two servers share an id, the
    # second import overwriting the first.
    if names.RECORD_ID.fullmatch(readable) and not {"~", "@"} & set(name) and "@" not in version:
        return readable
    return "mcp-" + hashlib.sha256(f"{name}\0{version}".encode()).hexdigest()[:40]


def to_record(doc: Mapping[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    """(record id, fields, tags) of a server.json; ValidationError when its
    name or version is missing (the kind's schema judges the rest)."""
    server = unwrap(doc)
    name, version = server.get("name"), server.get("version")
    details = [{"path": f"/{key}", "message": f"{key} is required, a string"}
               for key, value in (("name", name), ("version", version)) if not isinstance(value, str) or not value]
    if details:
        raise ValidationError("not a server.json: " + "; ".join(d["message"] for d in details), details=details)
    return record_id(name, version), server, tags_of(server)  # type: ignore[arg-type]


def tags_of(server: Mapping[str, Any]) -> list[str]:
    found: list[Any] = []
    for package in listed(server, "packages", "/packages"):
        if isinstance(package, Mapping):
            transport = package.get("transport")
            found += [package.get("registryType"), transport.get("type") if isinstance(transport, Mapping) else None]
    return tags_with(["mcp", *(["remote"] if server.get("remotes") else [])], found)


def from_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The server.json a record holds: its fields, as imported."""
    return dict(record["fields"])
