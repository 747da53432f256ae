"""`rgrid import PATH` and `rgrid export REGISTRY --format FORMAT`: the
ecosystem's documents as records (registrygrid/formats/).

Import reads a .json file (one document or a list) or a directory of them,
recognizes each document's format, and creates or updates its record
(nothing when unchanged), through the running node's bridge or, with the
node stopped, in the home's store in batches. A progress bar runs on
stderr; then a summary, and for each invalid document every failing field
path. It exits 65 when any document was invalid (the valid ones are in).
Export writes each record back as its format's document.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from registrygrid.cli import render
from registrygrid.cli.backend import open_backend
from registrygrid.cli.options import home_option, json_option
from registrygrid.cli.values import check_writable
from registrygrid.errors import EX_DATAERR, ValidationError
from registrygrid.files import write_file
from registrygrid.formats import importer
from registrygrid.logs import one_line


def register(cli: click.Group) -> None:

    @cli.command(name="import", epilog="""\b
Examples:
  rgrid import server.json
  rgrid import ./servers/            # every .json below, in name order
  rgrid import servers.json --json   # a list of documents; the report as JSON""")
    @home_option
    @click.argument("path", type=click.Path(exists=True, path_type=Path))
    @click.option("--keys", "keys_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="A JWKS of keys trusted to sign A2A agent cards (a card's jku is never fetched).")
    @json_option
    def import_documents(home: Path | None, path: Path, keys_file: Path | None, as_json: bool) -> None:
        """Import documents of the ecosystem's formats (MCP server.json, A2A agent cards) as records."""
        from registrygrid.cli.values import read_json_file
        from registrygrid.formats import a2a

        keys = None
        if keys_file is not None:
            jwks = read_json_file(keys_file)  # names the file if it is not JSON
            try:
                keys = a2a.load_keys(jwks)
            except ValidationError as exc:  # "not a JWKS" alone did not say which file
                raise ValidationError(f"--keys {keys_file}: {exc.message}", details=exc.details) from None
        documents = importer.read_documents(path)
        with open_backend(home) as backend:
            report = _with_progress(backend, documents, keys, quiet=as_json)
        if as_json:
            render.dump_json(report.to_dict())
        else:
            render.rows(report.table(), False, columns=["format", "documents", "created", "updated", "unchanged",
                                                        "invalid"], title=f"imported {len(documents)} documents")
            click.echo(f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged, "
                       f"{report.invalid_count} invalid")
            for bad in report.invalid:
                # One line each: a file name may hold a newline.
                click.echo(one_line(f"invalid: {bad['source']}: {bad['error']}: {bad['message'][:200]}"), err=True)
                for failing in bad["paths"]:
                    click.echo(one_line(f"  {failing['path'] or '/'}: {failing['message']}"), err=True)
            if report.invalid_count > len(report.invalid):
                click.echo(f"and {report.invalid_count - len(report.invalid)} more invalid documents", err=True)
        if report.invalid_count:
            sys.exit(EX_DATAERR)

    @cli.command(name="export")
    @home_option
    @click.argument("registry")
    @click.option("--format", "fmt", type=click.Choice(sorted(importer.FORMATS)), required=True,
                  help="The documents' format.")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Write one file per record (RECORD_ID.json) here; default: a JSON list on stdout.")
    def export_documents(home: Path | None, registry: str, fmt: str, out: Path | None) -> None:
        """Export a registry's records as documents of FORMAT (mcp: server.json; a2a: agent cards)."""
        with open_backend(home) as backend:
            exported = list(importer.export(backend, registry, fmt))
        if out is None:
            # Readable Unicode, but no C1 control character raw (a terminal may act on one): JSON escapes them.
            click.echo(json.dumps([doc for _, doc in exported], indent=1, ensure_ascii=False).translate(_C1))
            return
        out.mkdir(parents=True, exist_ok=True)
        targets = [(out / f"{record_id}.json", doc) for record_id, doc in exported]
        for target, _ in targets:  # a target no file can be written to: refused before any is written
            check_writable(target)
        for target, doc in targets:
            write_file(target, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        click.echo(f"wrote {len(exported)} documents to {out}")


_C1 = {c: f"\\u{c:04x}" for c in range(0x7F, 0xA0)}


def _with_progress(backend: object, documents: list[importer.Document], keys: object, *,
                   quiet: bool) -> importer.Report:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=quiet or not sys.stderr.isatty(),
                  console=render.stderr_console) as bar:
        task = bar.add_task("import", total=len(documents))
        return importer.Importer(backend, keys=keys).run(iter(documents),
                                                         progress=lambda n: bar.update(task, completed=n))
