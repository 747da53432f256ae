"""Importing documents of the ecosystem's formats as records, and exporting them.

``Importer`` reads JSON documents (a file holding one document or a list
of them, or a directory of such files), recognizes each one's format
(``FORMATS``: the MCP Registry's server.json, A2A agent cards, OASF
records, AI Catalogs), and writes it as its
record: a create when the record is new, an update when its content
changed, nothing when it is the same (so an import runs again safely). It
works through any backend with the SDK's write and read calls: the
embedded ``LocalRegistry`` (batched: one transaction per ``BATCH``
creates) or a running node's bridge (``BridgeClient``). A document that
is not valid is reported with every failing field path (the kind's
schema names them all) and the others go on. ``export`` gives back the
documents a registry's records hold.

No trio, no network of its own: the CLI (cli/import_commands.py) drives it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registrygrid.engine.ops import Put
from registrygrid.engine.values import canonical
from registrygrid.errors import MalformedInput, NotFound, RegistryError, TooLarge, ValidationError
from registrygrid.files import read_bounded
from registrygrid.formats import a2a, ai_catalog, mcp, oasf
from registrygrid.jsonkeys import repeated_name

# An AI Catalog is recognized first (its entries may inline a server.json),
# then an A2A card (its name may hold a slash, as a server.json's does).
FORMATS = {ai_catalog.FORMAT: ai_catalog, a2a.FORMAT: a2a, mcp.FORMAT: mcp, oasf.FORMAT: oasf}
# Creates per transaction when importing into an embedded store: the
# committer's batch size (node/committer.py), one fsync for them all.
BATCH = 2000
# A document file this large is not a registry document (server.json is KiBs).
MAX_FILE_BYTES = 64 * 2**20
# Documents one import takes: each costs ~1-3 KB while it runs, whatever its
# size, so a 2 MB file of a million zeros held gigabytes. (The MCP Registry
# lists a few thousand servers: a whole dump fits many times over.)
MAX_DOCUMENTS = 200_000
# Bytes of document files one import reads: parsed, a file takes several
# times its size, and all of them are held until the import ends (five
# 60 MB files took 1.3 GB). Two files at the per-file cap.
MAX_IMPORT_BYTES = 2 * MAX_FILE_BYTES
# Invalid documents the report names one by one; the count covers them all.
MAX_REPORTED = 1_000


@dataclass(frozen=True)
class Document:
    source: str  # file (and [index] in a list)
    body: Any


@dataclass
class Report:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    # {source, error, paths: [{path, message}]}, the first MAX_REPORTED of them
    invalid: list[dict[str, Any]] = field(default_factory=list)
    invalid_count: int = 0
    by_format: dict[str, int] = field(default_factory=dict)
    # format -> outcome (created, updated, unchanged, invalid) -> records
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, fmt: str, outcome: str) -> None:
        per = self.outcomes.setdefault(fmt, {"created": 0, "updated": 0, "unchanged": 0, "invalid": 0})
        per[outcome] += 1

    def table(self) -> list[dict[str, Any]]:
        """One row per format: its documents and what became of their records."""
        return [{"format": fmt, "documents": self.by_format.get(fmt, 0), **self.outcomes.get(fmt, {})}
                for fmt in sorted(set(self.by_format) | set(self.outcomes))]

    def to_dict(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged,
                "invalid": self.invalid_count, "by_format": self.by_format, "formats": self.table(),
                "errors": self.invalid, "errors_left_out": self.invalid_count - len(self.invalid)}


def read_documents(path: Path) -> list[Document]:
    """Every document in ``path`` (a .json file, or a directory's .json
    files, in name order); TooLarge past MAX_DOCUMENTS (an AI Catalog counts
    each of its entries: each becomes a record) or MAX_IMPORT_BYTES, before
    any is imported."""
    documents = []
    records = 0
    for document in _documents_in(path):
        documents.append(document)
        entries = document.body.get("entries") if isinstance(document.body, dict) else None
        records += max(1, len(entries)) if isinstance(entries, list) else 1
        if records > MAX_DOCUMENTS:
            raise TooLarge(f"{path} holds more than {MAX_DOCUMENTS} documents or catalog entries: "
                           "import it in parts")
    return documents


def _documents_in(path: Path) -> Iterator[Document]:
    # Every *.json that is not a folder: a FIFO, a device or a dangling link
    # is reported as a document that could not be read (it was skipped
    # without a word, and the import looked whole).
    files = sorted(p for p in path.rglob("*.json") if not p.is_dir()) if path.is_dir() else [path]
    if not files:
        raise NotFound(f"no .json files in {path}")
    read = 0
    for file in files:
        try:
            raw = read_bounded(file, MAX_FILE_BYTES)
        except RegistryError as exc:  # not a regular file, over the size, unreadable
            yield Document(str(file), MalformedInput(exc.message))
            continue
        read += len(raw)
        if read > MAX_IMPORT_BYTES:  # the whole import, not this document
            raise TooLarge(f"{path} holds more than {MAX_IMPORT_BYTES} bytes of documents: import it in parts")
        try:
            text = raw.decode("utf-8")
            body = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            yield Document(str(file), MalformedInput(f"{file}: not JSON: {exc}"))
            continue
        twice = repeated_name(text)
        if twice is not None:  # a signed card read one way by its signer and another here
            yield Document(str(file), MalformedInput(f"{file}: names {twice[:80]!r} twice in one object: which "
                                                     "one counts depends on who reads it"))
            continue
        if isinstance(body, list):
            for i, item in enumerate(body):
                yield Document(f"{file}[{i}]", item)
        else:
            yield Document(str(file), body)


def format_of(body: Any) -> str | None:
    return next((name for name, module in FORMATS.items() if module.looks_like(body)), None)


class Importer:
    def __init__(self, backend: Any, *, keys: Any = None) -> None:
        """``backend``: a LocalRegistry or a BridgeClient; either checks each
        record against its kind's schema as it writes it, one by one.
        ``keys``: a JWKS (joserfc KeySet, ``a2a.load_keys``) of keys trusted
        to sign A2A agent cards."""
        self.backend = backend
        self.options: dict[str, dict[str, Any]] = {a2a.FORMAT: {"keys": keys}}
        self._pending: list[tuple[Document, str, str, str, dict[str, Any], list[str]]] = []
        self._taken: dict[tuple[str, str], str] = {}  # (registry, record id) -> the source that made it
        # Later documents of a record already taken, judged once the first is
        # written: when the first fails, the next one makes the record (it was
        # refused as "made by" a document that made nothing).
        self._later: dict[tuple[str, str], list[tuple[Document, str, dict[str, Any], list[str]]]] = {}
        self._failed: set[tuple[str, str]] = set()

    def run(self, documents: Iterable[Document], *, progress: Callable[[int], None] | None = None) -> Report:
        report = Report()
        self._taken.clear()
        self._later.clear()
        self._failed.clear()
        for n, document in enumerate(documents, 1):
            self._take(document, report)
            if len(self._pending) >= BATCH:
                self._flush(report)
            if progress is not None:
                progress(n)
        self._flush(report)
        self._settle_duplicates(report)
        return report

    def _settle_duplicates(self, report: Report) -> None:
        """Each record made twice in this import: while the document that was
        to make it failed, the next one tries; the rest are reported, the same
        way on every run."""
        while retry := [k for k, later in self._later.items() if later and k in self._failed]:
            for k in retry:
                document, name, fields, tags = self._later[k].pop(0)
                self._failed.discard(k)
                self._taken[k] = document.source
                self._pending.append((document, name, k[0], k[1], fields, tags))
            self._flush(report)
        for k, later in self._later.items():
            earlier = self._taken[k]
            for document, name, _, _ in later:
                self._invalid(report, document, ValidationError(
                    f"record {k[1]} is made by {earlier} already in this import",
                    details=[{"path": "/", "message": f"the same record as {earlier}"}]), name)

    def _take(self, document: Document, report: Report) -> None:
        if isinstance(document.body, RegistryError):
            self._invalid(report, document, document.body, "unreadable")
            return
        name = format_of(document.body)
        if name is None:
            self._invalid(report, document, ValidationError(
                f"not a document of a known format ({', '.join(FORMATS)})",
                details=[{"path": "/", "message": "unrecognized format"}]), "unrecognized")
            return
        module = FORMATS[name]
        report.by_format[name] = report.by_format.get(name, 0) + 1
        try:
            if hasattr(module, "to_records"):  # one document, several records (an AI Catalog's entries)
                made = module.to_records(document.body)
            else:
                made = [module.to_record(document.body, **self.options.get(name, {}))]
        except RegistryError as exc:
            self._invalid(report, document, exc, name)
            return
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            # A member of a shape the converter did not expect (each checks
            # what it reads: shape.listed); the document is refused, never
            # the import with the valid ones beside it.
            self._invalid(report, document, ValidationError(f"not a {name} document this importer can read: {exc}"),
                          name)
            return
        for record_id, fields, tags in made:
            # The same record twice in one import: the first stands, the
            # others are reported, the same way on every run (both were
            # created in one batch, the second refused as existing; then
            # each run flipped the record between them).
            earlier = self._taken.setdefault((module.REGISTRY, record_id), document.source)
            if earlier != document.source:
                self._later.setdefault((module.REGISTRY, record_id), []).append((document, name, fields, tags))
                continue
            self._pending.append((document, name, module.REGISTRY, record_id, fields, tags))

    def _flush(self, report: Report) -> None:
        pending, self._pending = self._pending, []
        creates: list[tuple[Document, str, Put]] = []
        for document, fmt, registry, record_id, fields, tags in pending:
            try:
                existing = self.backend.get(registry, record_id)
            except NotFound:
                kind = next(m.KIND for m in FORMATS.values() if m.REGISTRY == registry)
                creates.append((document, fmt, Put(registry, kind, fields, record_id=record_id, tags=tags)))
                continue
            except RegistryError as exc:  # a registry the token may not read: this document, not the import
                self._failed.add((registry, record_id))
                self._invalid(report, document, exc, fmt)
                continue
            # Compared as encoded: Python's == takes 1 for true, 2 for 2.0
            # and 0.0 for -0.0, and a change between them went unwritten.
            if canonical(existing["fields"]) == canonical(fields) and sorted(existing["tags"]) == tags:
                report.unchanged += 1
                report.count(fmt, "unchanged")
                continue
            try:
                self.backend.update(registry, record_id, fields=fields, tags=tags)
                report.updated += 1
                report.count(fmt, "updated")
            except RegistryError as exc:
                self._failed.add((registry, record_id))
                self._invalid(report, document, exc, fmt)
        if not creates:
            return
        if hasattr(self.backend, "put_many"):  # embedded: one transaction for the batch
            outcomes = self.backend.put_many([put for _, _, put in creates])
        else:  # a node's bridge: one request each
            outcomes = []
            for _, _, put in creates:
                try:
                    outcomes.append(self.backend.put(put.registry, put.kind, put.fields, id=put.record_id,
                                                     tags=put.tags))
                except RegistryError as exc:
                    outcomes.append(exc)
        for (document, fmt, put), outcome in zip(creates, outcomes, strict=True):
            if isinstance(outcome, RegistryError):
                self._failed.add((put.registry, put.record_id))
                self._invalid(report, document, outcome, fmt)
            else:
                report.created += 1
                report.count(fmt, "created")

    @staticmethod
    def _invalid(report: Report, document: Document, error: RegistryError, fmt: str) -> None:
        report.count(fmt, "invalid")
        report.invalid_count += 1
        if len(report.invalid) >= MAX_REPORTED:
            return
        details = error.details if isinstance(error.details, list) else []
        paths = [{"path": d.get("path", "/"), "message": d.get("message", "")} for d in details
                 if isinstance(d, Mapping)]
        report.invalid.append({"source": document.source, "error": error.code, "message": error.message,
                               "paths": paths or [{"path": "/", "message": error.message}]})


def export(backend: Any, registry: str, fmt: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(record id, document) for every live record of ``registry`` in ``fmt``."""
    module = FORMATS.get(fmt)
    if module is None:
        raise ValidationError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    held = next((name for name, m in FORMATS.items() if m.REGISTRY == registry and m is not module), None)
    if held is not None:  # it holds another format's records: the export was an empty list, silently
        raise ValidationError(f"{registry} holds {held} documents: export it with --format {held}, or export "
                              f"{module.REGISTRY} as {fmt}", details=[{"path": "--format", "message": "mismatch"}])
    records = [r for r in backend.iter_all(registry) if r["kind"] == module.KIND]
    if hasattr(module, "catalogs"):  # entries go back into the catalogs they came in
        for i, document in enumerate(module.catalogs(records)):
            yield f"catalog-{i}", document
        return
    for record in records:
        yield record["id"], module.from_record(record)
