"""AGNTCY OASF records <-> records of ``grid.oasf-records`` (kind ``oasf-record``).

An OASF record (the Open Agentic Schema Framework's core object, as the
AGNTCY directory stores it) describes one version of an agentic workload:
its name, version, ``schema_version``, description, authors, creation time,
skills and domains (taxonomy entries by name and id), modules, locators
(where its artifacts live) and annotations. Here one version is one record:

* **fields**: the OASF record itself, every member verbatim;
* **record id**: ``<name>@<version>`` when that is a valid record id,
  else ``oasf-`` and 40 hex of sha256(name NUL version): importing the
  same version again updates its record;
* **tags**: ``oasf``, and its skills' and domains' names (taxonomy paths
  such as ``natural_language_processing/summarization``) where a tag can
  hold them, for filters and facets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from registrygrid.errors import ValidationError
from registrygrid.formats.shape import listed, tags_with
from registrygrid.protocol import names

FORMAT = "oasf"
KIND = "oasf-record"
REGISTRY = "grid.oasf-records"
REQUIRED = ("name", "version", "schema_version", "description", "authors", "created_at", "skills")


def looks_like(doc: Any) -> bool:
    return isinstance(doc, Mapping) and "schema_version" in doc and "skills" in doc and (
        "authors" in doc or "locators" in doc)


def record_id(name: str, version: str) -> str:
    readable = f"{name}@{version}"
    # Readable only when it splits back one way: "summ@v1" version "2" and
    # "summ" version "v1@2" would share an id, the second overwriting the first.
    if names.RECORD_ID.fullmatch(readable) and "@" not in name:
        return readable
    return "oasf-" + hashlib.sha256(f"{name}\0{version}".encode()).hexdigest()[:40]


def to_record(doc: Mapping[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    record = dict(doc)
    name, version = record.get("name"), record.get("version")
    if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
        details = [{"path": f"/{k}", "message": f"{k} is required, a string"} for k in ("name", "version")
                   if not isinstance(record.get(k), str) or not record.get(k)]
        raise ValidationError("not an OASF record: name and version are required", details=details)
    labels = [entry.get("name") for member in ("skills", "domains")
              for entry in listed(record, member, f"/{member}") if isinstance(entry, Mapping)]
    return record_id(name, version), record, tags_with(["oasf"], labels)


def from_record(record: Mapping[str, Any]) -> dict[str, Any]:
    return dict(record["fields"])
