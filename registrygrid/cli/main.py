"""`rgrid`: the operator's command line.

Every command takes ``--home`` (default ``$RGRID_HOME`` or ``~/.registrygrid``).
With no node running on the home, commands open the store themselves; while
a node runs, they talk to it through its local bridge so that every write is
gossiped (see ``cli/backend.py``). Errors print ``error[CODE]: message`` on
stderr and exit with the error's sysexits code; ``--json`` prints machine
output on stdout.
"""

from __future__ import annotations

import contextlib
import json
import signal
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from registrygrid.cli import render
from registrygrid.cli.backend import open_backend
from registrygrid.cli.options import org_key_option
from registrygrid.cli.values import (
    check_writable,
    loads_json,
    parse_assignments,
    parse_where,
    parse_where_value,
    read_json_file,
    typed_text,
)
from registrygrid.crdt.conflict_policy import NAMES as CONFLICT_RULES
from registrygrid.errors import (
    EX_NOPERM,
    BadUsage,
    Conflict,
    FileFailed,
    NotFound,
    PolicyDenied,
    RegistryError,
    Unavailable,
    ValidationError,
)
from registrygrid.home import Home
from registrygrid.logs import warnings_on_one_line
from registrygrid.engine import registries as regs
from registrygrid.protocol import limits, names
from registrygrid.sdk import home_identity
from registrygrid.search import query as search_query
from registrygrid.storage.feed import MAX_SEQ

F = TypeVar("F", bound=Callable[..., Any])


def home_option(func: F) -> F:
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="RGRID_HOME",
        default=None,
        help="Node home directory (default $RGRID_HOME or ~/.registrygrid).",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")(func)


def _refuse_undecodable(command: click.Command, ctx: click.Context) -> None:
    """Every text value of ``command`` must be UTF-8 (see typed_text); a
    path need not be: Linux file names are bytes."""
    for param in command.params:
        if isinstance(param.type, (click.Path, click.File)) or param.name is None:
            continue
        value = ctx.params.get(param.name)
        named = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, str):
                typed_text(item, named)


class TextCommand(click.Command):
    """A command that refuses text values not typed in UTF-8 before it runs."""

    def invoke(self, ctx: click.Context) -> Any:
        _refuse_undecodable(self, ctx)
        return super().invoke(ctx)


class Cli(click.Group):
    """Turns RegistryError into a clean message and its exit code; and an
    OSError (a file or folder the command was given or writes: missing,
    not permitted, full) into FileFailed, for it is no crash of rgrid.
    Its commands and groups are of its kind: each refuses text that is not
    UTF-8 (TextCommand)."""

    command_class = TextCommand
    group_class = type

    def invoke(self, ctx: click.Context) -> Any:
        try:
            _refuse_undecodable(self, ctx)
            return super().invoke(ctx)
        except click.UsageError as exc:
            # click printed "Error: ..." and exited 2, which a script could
            # not tell from anything else: an error like every other, 64.
            _bad_usage(exc)
        except RegistryError as exc:
            render.error(exc)
            sys.exit(exc.exit_code)
        except BrokenPipeError:
            # The reader went away (`rgrid feed tail --follow | head`): stop
            # quietly, as Unix tools do; stdout goes to /dev/null so that the
            # interpreter's own flush at exit finds no broken pipe either.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as exc:
            failed = FileFailed.of(exc)
            render.error(failed)
            sys.exit(failed.exit_code)


def _bad_usage(exc: click.UsageError) -> NoReturn:
    if isinstance(exc, click.exceptions.NoArgsIsHelpError) and exc.ctx is not None:
        click.echo(exc.ctx.get_help())  # `rgrid` or `rgrid store` alone: the help, not an error about it
        sys.exit(BadUsage.exit_code)
    if isinstance(exc, click.BadParameter) and exc.param is not None and isinstance(exc.param.type, click.Path):
        # An input file that is missing or no file is a bad argument like
        # `--file`'s (validation_failed, 65), not a command line click
        # cannot parse.
        failed = ValidationError(exc.format_message())
        render.error(failed)
        sys.exit(failed.exit_code)
    render.error(BadUsage(exc.format_message()))
    if exc.ctx is not None:
        render.note(f"  see: {exc.ctx.command_path} --help")
    sys.exit(BadUsage.exit_code)


@click.group(cls=Cli)
@click.version_option(package_name="registrygrid")
def cli() -> None:
    """RegistryGrid: a decentralized registry node for the open AI grid."""


# ------------------------------------------------------------------ identity


@cli.command()
@home_option
@click.option("--org-name", default="", help="Human name of the organization.")
@click.option("--org-key", "org_key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Use an existing org key file instead of creating a new org.")
@json_option
def init(home: Path | None, org_name: str, org_key: Path | None, as_json: bool) -> None:
    """Create a node home: node key, org key (or a link to one), config."""
    created = Home(home).init(org_name=org_name, org_key_file=org_key)
    render.mapping(created, as_json, title="initialised")


@cli.command(name="id")
@home_option
@json_option
def show_id(home: Path | None, as_json: bool) -> None:
    """Print this node's did:key, peer ID, org and addresses."""
    # Everything comes from the home's files (and node.json while a node
    # runs), so this works with or without a running node or bridge.
    home_obj = Home(home)
    home_obj.require()
    render.mapping(home_identity(home_obj), as_json, title="node identity")


# ------------------------------------------------------------------ records


REMOTE_HELP = ("Read REGISTRY from another federation that hosts it publicly, through the running node: "
               "resolved in the DHT, asked of its providers and verified change by change; nothing is kept here.")


def _refuse_with_remote(given: dict[str, Any]) -> None:
    used = [flag for flag, value in given.items() if value]
    if used:
        raise ValidationError(f"--remote reads the registry as its provider serves it and does not combine with "
                              f"{', '.join(used)}")


def _read_remote(home: Path | None, registry: str, record_id: str | None) -> dict[str, Any]:
    from registrygrid.client import BridgeClient

    names.registry_name(registry)
    if record_id is not None:
        names.record_id(record_id)
    with open_backend(home) as backend:
        if not isinstance(backend, BridgeClient):
            # The DHT and the libp2p host live in the running node (node/remote_read.py); this process has neither.
            raise Unavailable("reading a registry of another federation goes through the running node's DHT, and "
                              "no node runs on this home: start it with `rgrid node start` (the DHT runs unless "
                              "--no-p2p or --no-dht)")
        answer: dict[str, Any] = backend.read_remote(registry, record_id=record_id)
    return answer


@cli.command()
@home_option
@click.argument("registry")
@click.argument("kind")
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON file with the record's fields ('-' for stdin).")
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE",
              help="Set a field (dotted paths nest; VALUE is JSON or a plain string). Repeatable.")
@click.option("--id", "record_id", help="Record id (default: a new ULID).")
@click.option("--tag", "tags", multiple=True, help="Tag the record. Repeatable.")
@click.option("--schema", type=int, help="Schema version of the kind (default: latest).")
@json_option
def put(home: Path | None, registry: str, kind: str, file: Path | None, sets: tuple[str, ...],
        record_id: str | None, tags: tuple[str, ...], schema: int | None, as_json: bool) -> None:
    """Create a record in REGISTRY of KIND."""
    fields = read_json_file(file) if file else {}
    fields = parse_assignments(sets, base=fields)
    with open_backend(home) as backend:
        result = backend.put(registry, kind, fields, id=record_id, tags=list(tags), schema=schema, actor="cli")
    render.write_result(result, as_json)


@cli.command()
@home_option
@click.argument("registry")
@click.argument("record_id")
@click.option("--deleted", is_flag=True, help="Show the record even if it was deleted.")
@click.option("--conflicts", "show_conflicts", is_flag=True,
              help="Also show its conflicts: each path, its rule, the value shown and every competing write "
                   '(with --json: {"record": ..., "conflicts": [...]}).')
@click.option("--remote", is_flag=True, help=REMOTE_HELP)
@json_option
def get(home: Path | None, registry: str, record_id: str, deleted: bool, show_conflicts: bool, remote: bool,
        as_json: bool) -> None:
    """Show one record."""
    if remote:
        _refuse_with_remote({"--deleted": deleted, "--conflicts": show_conflicts})
        answer = _read_remote(home, registry, record_id)
        render.remote_read(answer, as_json, one=True)
        return
    with open_backend(home) as backend:
        record = backend.get(registry, record_id, include_deleted=deleted)
    if show_conflicts:
        render.conflicts(record, as_json)
    else:
        render.record(record, as_json)


@cli.command()
@home_option
@click.argument("registry")
@click.argument("record_id")
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON file whose fields REPLACE the record's fields.")
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE", help="Set a field (merge). Repeatable.")
@click.option("--unset", "unsets", multiple=True, metavar="PATH", help="Remove a field. Repeatable.")
@click.option("--tag", "tags", multiple=True, help="Replace the tags with these. Repeatable.")
@click.option("--schema", type=int, help="Migrate the record to this schema version.")
@click.option("--if-match", help="Only if the record is still at this change ID.")
@json_option
def update(home: Path | None, registry: str, record_id: str, file: Path | None, sets: tuple[str, ...],
           unsets: tuple[str, ...], tags: tuple[str, ...], schema: int | None, if_match: str | None,
           as_json: bool) -> None:
    """Change a record: --file replaces its fields, --set/--unset merge."""
    if file and (sets or unsets):
        raise ValidationError("use --file (replace) or --set/--unset (merge), not both")
    fields = read_json_file(file) if file else None
    patch = None
    if sets or unsets:
        patch = parse_assignments(sets, base={})
        for path in unsets:
            parse_assignments([f"{path}=null"], base=patch)
    if fields is None and patch is None and not tags and schema is None:
        raise ValidationError("nothing to change: give --file, --set, --unset, --tag or --schema")
    with open_backend(home) as backend:
        result = backend.update(registry, record_id, fields=fields, patch=patch, tags=list(tags) if tags else None,
                                schema=schema, if_match=if_match, actor="cli")
    render.write_result(result, as_json)


@cli.command()
@home_option
@click.argument("registry")
@click.argument("record_id")
@click.option("--if-match", help="Only if the record is still at this change ID.")
@json_option
def delete(home: Path | None, registry: str, record_id: str, if_match: str | None, as_json: bool) -> None:
    """Delete a record (a signed tombstone; history is kept)."""
    with open_backend(home) as backend:
        result = backend.delete(registry, record_id, if_match=if_match, actor="cli")
    render.write_result(result, as_json)


@cli.command(name="list")
@home_option
@click.argument("registry", required=False)
@click.option("--kind")
@click.option("--tag")
@click.option("--owner")
@click.option("--where", "wheres", multiple=True, metavar="PATH OP VALUE",
              help="Field filter, e.g. 'gpus.count>=4', 'region=eu-west'. Ops: = != < <= > >= ~ (contains).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="Resume after the last record of a previous page.")
@click.option("--deleted", is_flag=True, help="Include deleted records.")
@click.option("--conflicted", is_flag=True,
              help="Only records that show conflicts (`rgrid get --conflicts` explains each).")
@click.option("--remote", is_flag=True, help=REMOTE_HELP + " Every live record, in id order; no other filter.")
@json_option
@click.pass_context
def list_records(ctx: click.Context, home: Path | None, registry: str | None, kind: str | None, tag: str | None,
                 owner: str | None, wheres: tuple[str, ...], limit: int, cursor: str | None, deleted: bool,
                 conflicted: bool, remote: bool, as_json: bool) -> None:
    """List records, optionally of one REGISTRY, with filters."""
    if remote:
        # The reader returns the whole verified registry (node/remote_read.py); filtering
        # it here would look like the node's own listing while meaning something else.
        explicit_limit = ctx.get_parameter_source("limit") is not click.core.ParameterSource.DEFAULT
        _refuse_with_remote({"--kind": kind, "--tag": tag, "--owner": owner, "--where": wheres,
                             "--limit": explicit_limit, "--cursor": cursor, "--deleted": deleted,
                             "--conflicted": conflicted})
        if registry is None:
            raise ValidationError("--remote needs REGISTRY: the public registry of another federation to read")
        render.remote_read(_read_remote(home, registry, None), as_json, one=False)
        return
    where = [parse_where(w) for w in wheres]
    with open_backend(home) as backend:
        page = backend.list(registry, kind=kind, tag=tag, owner=owner, where=where, limit=limit, cursor=cursor,
                            include_deleted=deleted, conflicted=conflicted)
    render.page(page, as_json)


@cli.command()
@home_option
@click.argument("registry")
@click.argument("record_id")
@json_option
def history(home: Path | None, registry: str, record_id: str, as_json: bool) -> None:
    """Every change of a record, in the order this node accepted them."""
    with open_backend(home) as backend:
        render.rows(backend.history(registry, record_id), as_json,
                    columns=["feed_seq", "op", "change_id", "author", "seq", "hlc"], title=f"{registry}/{record_id}")


# ------------------------------------------------------------------ search (registrygrid/search)


def _json_or_file(text: str, option: str) -> Any:
    """A JSON value given inline, or @FILE holding one."""
    if text.startswith("@"):
        return read_json_file(text[1:])
    return loads_json(text, option)


def search_comparison(text: str) -> dict[str, Any]:
    """``--where PATH:OP:VALUE`` as a comparison of the query language
    (search/query.py). VALUE is JSON when it parses, else the plain string,
    as `rgrid list --where` reads it (values.parse_where_value: no Infinity,
    NaN or number past the node's parser); for ``in`` a JSON list or values
    separated by commas; ``exists`` alone means true."""
    path, _, rest = text.partition(":")
    op, _, raw = rest.partition(":")
    if not path or op not in search_query.OPERATORS:
        raise ValidationError(f"--where {text!r}: expected PATH:OP:VALUE with OP one of "
                              f"{' '.join(search_query.OPERATORS)}")
    value: Any
    if op == "exists":
        value = True if raw == "" else parse_where_value(raw)
    elif op == "in":
        parsed = parse_where_value(raw)
        value = parsed if isinstance(parsed, list) else [parse_where_value(part) for part in raw.split(",")]
    else:
        value = parse_where_value(raw)
    return {"field": path, op: value}


def search_body(*, text: str | None, query: str | None, wheres: Sequence[str], filter_text: str | None,
                registries: Sequence[str], sort: str | None, facets: Sequence[str], limit: int | None,
                cursor: str | None, explain: bool, weights: Sequence[str], boosts: Sequence[str],
                mode: str | None = None, federated: bool = False, deadline_ms: int | None = None) -> dict[str, Any]:
    """The query object of `rgrid search`'s options: --query is the base,
    --filter and each --where are ANDed with its filter, --weight and
    --boost add to its weights and boosts, the other options replace its
    members. The node's parser (or the offline one) judges the result."""
    body = _json_or_file(query, "--query") if query else {}
    if not isinstance(body, dict):
        raise ValidationError("--query must be a JSON object (the query language: `rgrid search --help`)")
    if text is not None:
        body["text"] = text
    if mode is not None:
        body["mode"] = mode
    filters = [body["filter"]] if body.get("filter") is not None else []
    if filter_text:
        filters.append(_json_or_file(filter_text, "--filter"))
    filters += [search_comparison(w) for w in wheres]
    if filters:
        body["filter"] = filters[0] if len(filters) == 1 else {"and": filters}
    if registries:
        body["registries"] = list(registries)
    if sort:
        field, _, order = sort.partition(":")
        body["sort"] = {"field": field, **({"order": order} if order else {})}
    if facets:
        body["facets"] = list(facets)
    if limit is not None:
        body["limit"] = limit
    if cursor:
        body["cursor"] = cursor
    if explain:
        body["explain"] = True
    if federated or deadline_ms is not None:
        body["federated"] = {"deadline_ms": deadline_ms} if deadline_ms is not None else True
    if weights:
        merged = body.get("weights") or {}
        if not isinstance(merged, dict):
            raise ValidationError("--query's weights must be an object to add --weight to")
        for item in weights:
            name, sep, number = item.partition("=")
            try:
                if not sep:
                    raise ValueError(item)
                merged[name] = float(number)
            except ValueError:
                raise ValidationError(f"--weight {item!r}: expected NAME=NUMBER, NAME one of text freshness "
                                      "trust") from None
        body["weights"] = merged
    if boosts:
        given = body.get("boosts") or []
        if not isinstance(given, list):
            raise ValidationError("--query's boosts must be a list to add --boost to")
        body["boosts"] = [*given, *(_json_or_file(b, "--boost") for b in boosts)]
    return body


@contextlib.contextmanager
def _index_progress(label: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (stdout stays the result) fed by SearchIndex's
    ``progress(done_seq, head)``; none when stderr is no terminal or with --json."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=quiet or not sys.stderr.isatty(),
                  console=render.stderr_console) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, head: bar.update(task, completed=done, total=head)


def _offline_index(registry: Any, *, quiet: bool, rebuild: bool = False) -> tuple[Any, int]:
    """The home's search index (HOME/index), caught up with the store's feed
    (or rebuilt), for commands run while no node runs; and the events read."""
    from registrygrid.search.index import SearchIndex
    from registrygrid.search.service import index_path, verifier

    index = SearchIndex(index_path(registry.home.path))
    index.enable_semantic()  # when the semantic extra is installed
    engine = registry.engine
    with _index_progress("rebuilding the search index" if rebuild else "indexing", quiet) as progress:
        work = index.rebuild if rebuild else index.catch_up
        events = work(registry, org_verified=verifier(engine), local_org=engine.owner, progress=progress)
    index.catch_up_vectors(registry)
    return index, events


def _sort_field(body: dict[str, Any]) -> str:
    """The field a query's hits are ordered by (search/query.py's defaults)."""
    given = body.get("sort")
    given = given[0] if isinstance(given, list) and given else given
    if isinstance(given, dict):
        given = given.get("field")
    if isinstance(given, str):
        return given
    return "relevance" if isinstance(body.get("text"), str) and body["text"].strip() else "updated_at"


@cli.command(epilog="""\b
Examples:
  rgrid search "summarize legal" --where region:in:eu-west,eu-north --where price:lt:0.01 --facet kind
  rgrid search --filter '{"or": [{"field": "tags", "eq": "gpu"}, {"field": "fields.gpus", "ge": 8}]}' --sort price
  rgrid search --fields""")
@home_option
@click.argument("text", required=False)
@click.option("--where", "wheres", multiple=True, metavar="PATH:OP:VALUE",
              help="A comparison, e.g. region:eq:eu-west, price:lt:0.01, tags:in:gpu,nlp, fields.license:exists. "
                   "OP: eq ne in lt le gt ge prefix exists. VALUE is JSON if it parses, else a string "
                   "('name:eq:\"42\"' for the string 42); for in, a JSON list or comma-separated. Repeatable: "
                   "all must hold.")
@click.option("--filter", "filter_text", metavar="JSON|@FILE",
              help="A whole filter tree (and, or, not, comparisons), ANDed with --where.")
@click.option("--registry", "registries", multiple=True, help="Search only this registry. Repeatable.")
@click.option("--sort", metavar="FIELD[:asc|desc]",
              help="relevance (with TEXT, the default), a number or date field: price, reputation, created_at, "
                   "updated_at (the default without TEXT, newest first), or a keyword: name, kind, owner, "
                   "category, region, status, registry, id (UTF-8 byte order, ascending by default).")
@click.option("--facet", "facets", multiple=True, help="Count the matches' values of this field. Repeatable.")
@click.option("--limit", type=int, help=f"Hits per page, 1 to {search_query.MAX_LIMIT} (default 20).")
@click.option("--cursor", help="The next page: the cursor a previous answer printed.")
@click.option("--explain", is_flag=True, help="Show each hit's score components.")
@click.option("--mode", type=click.Choice(list(search_query.MODES)), default=None,
              help="How TEXT is matched: text (BM25, the default), semantic (by meaning: embeddings) or hybrid "
                   "(both, fused). semantic and hybrid need pip install 'registrygrid[semantic]'.")
@click.option("--weight", "weights", multiple=True, metavar="NAME=NUMBER",
              help="Weigh a relevance component: text, freshness or trust (0 to 100). Repeatable.")
@click.option("--boost", "boosts", multiple=True, metavar="JSON",
              help='Multiply the score of hits matching a filter: \'{"filter": {...}, "factor": 2}\'. Repeatable.')
@click.option("--query", "query", metavar="JSON|@FILE",
              help="The whole query object (POST /v1/search's body); the other options refine it.")
@click.option("--federated", is_flag=True,
              help="Ask the federation's peers and the providers of followed registries too (the node must run); "
                   "their hits are verified from their signed changes before they are shown.")
@click.option("--deadline", "deadline_ms", type=int, metavar="MS",
              help=f"With --federated: wait at most MS for peers (default {search_query.DEFAULT_DEADLINE_MS}, "
                   f"at most {search_query.MAX_DEADLINE_MS}); slower ones are reported, not waited for.")
@click.option("--fields", "show_fields", is_flag=True,
              help="Print the fields a query may filter, sort and facet by, and exit.")
@json_option
def search(home: Path | None, text: str | None, wheres: tuple[str, ...], filter_text: str | None,
           registries: tuple[str, ...], sort: str | None, facets: tuple[str, ...], limit: int | None,
           cursor: str | None, explain: bool, mode: str | None, weights: tuple[str, ...], boosts: tuple[str, ...],
           federated: bool, deadline_ms: int | None, query: str | None, show_fields: bool, as_json: bool) -> None:
    """Search the records this node holds: full TEXT (quotes make a phrase),
    filters, facets, a sort and pages.

    While the node runs, its index answers (through the bridge). With the
    node stopped, this command brings the home's index up to date with the
    store first, then answers."""
    if show_fields:
        render.search_fields(search_query.describe_fields(), as_json)
        return
    body = search_body(text=text, query=query, wheres=wheres, filter_text=filter_text, registries=registries,
                       sort=sort, facets=facets, limit=limit, cursor=cursor, explain=explain, weights=weights,
                       boosts=boosts, mode=mode, federated=federated, deadline_ms=deadline_ms)
    from registrygrid.client import BridgeClient

    with open_backend(home) as backend:
        if isinstance(backend, BridgeClient):
            answer = backend.search(body)
        elif body.get("federated") not in (None, False):
            raise Unavailable("a federated search asks the node's peers over libp2p: start the node "
                              "(`rgrid node start`), or search this home alone without --federated")
        else:
            from registrygrid.search.service import answer as answer_query

            search_query.parse_query(body)  # a malformed query is refused before any indexing
            index, _ = _offline_index(backend, quiet=as_json)
            answer = answer_query(index, backend, body)
    render.search_answer(answer, as_json, sort_field=_sort_field(body))


@cli.group(name="index")
def index_group() -> None:
    """The search index (HOME/index): its status, and rebuilding it."""


@index_group.command(name="rebuild")
@home_option
@json_option
def index_rebuild(home: Path | None, as_json: bool) -> None:
    """Index every record again from the changefeed. Through the running
    node (it keeps serving), or, with the node stopped, in this process
    with a progress bar."""
    from registrygrid.client import BridgeClient

    with open_backend(home) as backend:
        if isinstance(backend, BridgeClient):
            report = backend.rebuild_index()
        else:
            index, events = _offline_index(backend, quiet=as_json, rebuild=True)
            report = {"events": events, "documents": index.count(), "indexed_through": index.cursor}
    render.mapping(report, as_json, title="search index rebuilt")


@index_group.command(name="status")
@home_option
@json_option
def index_status(home: Path | None, as_json: bool) -> None:
    """How far the search index has followed the changefeed. With the node
    stopped, state is offline: `rgrid search` or the node's start catches it up."""
    from registrygrid.client import BridgeClient

    with open_backend(home) as backend:
        if isinstance(backend, BridgeClient):
            status = backend.index_status()
        else:
            from registrygrid.search.index import SearchIndex
            from registrygrid.search.service import index_path

            index = SearchIndex(index_path(backend.home.path))
            status = {"state": "offline", "documents": index.count(), "indexed_through": index.cursor,
                      "feed_head": backend.feed_head()}
    render.mapping(status, as_json, title="search index")


@cli.command()
@home_option
@json_option
def verify(home: Path | None, as_json: bool) -> None:
    """Re-verify every change in the store offline; report the first bad one."""
    from registrygrid.home import Home

    the_home = Home(home)
    the_home.require()
    if not (the_home.store_path / "data.mdb").is_file():
        # Opened to verify it, a missing store was made anew, empty, and
        # reported sound: after a lost disk, the one answer that misleads.
        raise NotFound(f"{the_home.store_path} holds no store: nothing to verify (a node started here makes one "
                       "anew and opens it recovering; `rgrid store restore` brings back a backup)")
    with open_backend(home, direct_read=True, reads_only=True) as backend:  # read-only: no lock, nothing made
        report = backend.verify()
        recovering = backend.recovering()
    report = {**(report if isinstance(report, dict) else report.to_dict()), "recovering": recovering}
    render.mapping(report, as_json, title="store verification")
    if not report["ok"]:
        sys.exit(1)


@cli.group()
def store() -> None:
    """The store on disk: format upgrades, compaction, recovery."""


@store.command(name="migrate")
@home_option
@json_option
def store_migrate(home: Path | None, as_json: bool) -> None:
    """Upgrade the home's store (format 2 or 3) to this version's format, in place.

    A stopped run is safe to run again: format 2's step goes on where it
    stopped, format 3's is one transaction. The node must be stopped.
    Verifies the whole store afterwards; `rgrid store compact` then
    compresses the values written before."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from registrygrid.storage.migrate import migrate

    def run(store_path: Path) -> Any:
        columns = (TextColumn("migrating changes and chain keys"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=True, disable=as_json or not sys.stderr.isatty(),
                      console=render.stderr_console) as bar:
            task = bar.add_task("changes", total=None)
            return migrate(store_path, progress=lambda done, total: bar.update(task, completed=done, total=total))

    _offline_store_work(home, "rgrid store migrate", run, as_json, title="store migration")


def _offline_store_work(home: Path | None, what: str, run: Callable[[Path], Any], as_json: bool, *,
                        title: str) -> None:
    """Work on the store of a stopped node (its home's lock held meanwhile),
    then verify the whole store and report both; exit 1 if it fails."""
    from registrygrid.home import Home

    the_home = Home(home)
    the_home.require()
    the_home.lock(what)
    try:
        report = run(the_home.store_path)
    finally:
        the_home.unlock()
    with open_backend(home, direct_read=True) as backend:
        verified = backend.verify()
    verified = verified if isinstance(verified, dict) else verified.to_dict()
    render.mapping({**report.to_dict(), "verified": verified["ok"], "problem": verified["problem"]}, as_json,
                   title=title)
    if not verified["ok"]:
        sys.exit(1)


@store.command(name="recovered")
@home_option
@click.option("--none-kept", is_flag=True,
              help="End it though the store holds none of the key's changes: no peer kept any of them.")
@json_option
def store_recovered(home: Path | None, none_kept: bool, as_json: bool) -> None:
    """End the recovery of a store made anew for a node whose key had signed
    changes (the node must be stopped).

    While it recovers, the node syncs but signs nothing: a write would reuse
    a sequence number its peers hold (equivocation, then quarantine). Run
    this once the node has synced its history back from its peers: writes
    go on after the last change of its key this store holds, listed here."""
    from registrygrid.sdk import LocalRegistry

    with LocalRegistry.open_home(home) as registry:
        report = registry.end_recovery(none_kept=none_kept)
    render.mapping(report, as_json, title="store recovery")


@store.command(name="backup")
@home_option
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-objects", is_flag=True, help="Leave the local asset bytes out (peers that hold them give "
                                                  "them back: `rgrid asset fetch`).")
@json_option
def store_backup(home: Path | None, out: Path, no_objects: bool, as_json: bool) -> None:
    """Write the home to one file: its keys, org, config and a consistent
    copy of its store (made while the node runs or not), and its asset bytes.
    Name it .tar.gz to compress it. Restore it with `rgrid store restore`."""
    from registrygrid.backup import backup
    from registrygrid.home import Home

    check_writable(out, "OUT")
    report = backup(Home(home), out, objects=not no_objects)
    render.mapping(report.to_dict(), as_json, title="backup written")


@store.command(name="restore")
@home_option
@click.argument("backup_file", metavar="BACKUP", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def store_restore(home: Path | None, backup_file: Path, as_json: bool) -> None:
    """Restore a backup into a new (or empty) home. Its store opens
    recovering: the node syncs and signs nothing until its own changes
    are back from its peers (its key may have signed after the backup);
    then stop it and run `rgrid store recovered`."""
    from registrygrid.backup import restore
    from registrygrid.home import Home

    target = Home(home)
    manifest = restore(backup_file, target)
    render.mapping({"home": str(target.path), "key": manifest.get("key"), "made_at_ms": manifest.get("made_at_ms"),
                    "recovering": True,
                    "next": "rgrid node start; once `rgrid feed tail` shows the node's own changes back, stop it "
                            "and run `rgrid store recovered`"}, as_json, title="backup restored")


@store.command(name="compact")
@home_option
@json_option
def store_compact(home: Path | None, as_json: bool) -> None:
    """Compress what is stored plain, then rewrite the store without its
    free pages (the node must be stopped).

    LMDB keeps a deleted value's bytes in free pages until a later write
    reuses them: after an erasure, compact so they leave the disk too. After
    upgrading from store format 3, compact to compress the values written
    before. Needs free space for a copy of the store. Verifies it afterwards."""
    from registrygrid.storage.compact import compact

    _offline_store_work(home, "rgrid store compact", compact, as_json, title="store compaction")


@cli.command()
@home_option
@click.argument("registry")
@click.argument("record_id")
@click.option("--reason", default="", help="Why, for every node's audit ledger (no personal data: it is kept).")
@click.option("--blob", "blobs", multiple=True, metavar="CID", help="A blob to purge with it (repeatable).")
@click.option("--yes", is_flag=True, help="Don't ask for confirmation.")
@json_option
def erase(home: Path | None, registry: str, record_id: str, reason: str, blobs: tuple[str, ...], yes: bool,
          as_json: bool) -> None:
    """Erase a record's whole history, here and on every node that honours it.

    Unlike delete (a signed tombstone that keeps the history), every change
    of the record loses its bytes, its id can never be used again, and an
    erasure notice asks every node of the federation to do the same
    (docs/erasure.md). It cannot be undone. Run `rgrid store compact` on a
    stopped node afterwards to remove the freed bytes from disk."""
    if not yes:
        click.confirm(f"Erase {registry}/{record_id} and its whole history on every node? This cannot be undone",
                      abort=True, err=True)
    with open_backend(home) as backend:
        result = backend.erase(registry, record_id, reason=reason, blobs=list(blobs), actor="cli")
    render.write_result(result, as_json)


@cli.command()
@home_option
@json_option
@click.option("--places", is_flag=True,
              help="Instead: the places of chains held without their bytes, run by run (what vouches for each, "
                   "how many are linked, whether peers are asked for them), and the supplements owed.")
def erasures(home: Path | None, as_json: bool, places: bool) -> None:
    """Records erasure notices name here: erased, waiting for the record, refused, or void (erased, then the notice stopped counting)."""
    with open_backend(home) as backend:
        found = backend.erased_places() if places else backend.erasures()
    if not places:
        render.rows(found, as_json, columns=["registry", "record", "state", "notice"], title="erasures")
    elif as_json:
        render.dump_json(found)
    else:
        render.rows(found["items"], False, title="places held without their bytes", whole=["author", "notice"],
                    columns=["registry", "author", "first", "last", "warrant", "notice", "linked", "asked"])
        owed = [{"notice": o["notice"], "places": ", ".join(f"{p['author']}#{p['seq']}" for p in o["places"])}
                for o in found["owed"]]
        render.rows(owed, False, columns=["notice", "places"], title="supplements owed", whole=["notice"])


@cli.command()
@home_option
@json_option
def stats(home: Path | None, as_json: bool) -> None:
    """Store size, entry counts and write metrics."""
    with open_backend(home) as backend:
        render.mapping(backend.stats(), as_json, title="store")


# ------------------------------------------------------------------ feed


@cli.group()
def feed() -> None:
    """The changefeed: every accepted change, in local order."""


@feed.command()
@home_option
@click.option("--from", "since", type=click.IntRange(0, MAX_SEQ), default=None,
              help="Start after this feed sequence (default: the last 20 events).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until interrupted.")
@click.option("--registry")
@click.option("--kind")
@click.option("--limit", type=click.IntRange(1, 10000), default=1000, show_default=True)
@json_option
def tail(home: Path | None, since: int | None, follow: bool, registry: str | None, kind: str | None, limit: int,
         as_json: bool) -> None:
    """Print feed events (one JSON object a line with --json)."""
    with open_backend(home, reads_only=True) as backend:
        cursor = since if since is not None else max(0, backend.feed_head() - 20)
        try:
            while True:
                events = backend.changes(cursor, limit=limit, registry=registry, kind=kind)
                for event in events:
                    render.event(event, as_json)
                    cursor = event.seq if hasattr(event, "seq") else event["seq"]
                if not follow:
                    return
                if not events:
                    time.sleep(0.25)
        except KeyboardInterrupt:
            return


# ------------------------------------------------------------------ audit


@cli.group()
def audit() -> None:
    """The audit ledger: who did what, hash-chained and signed."""


@audit.command(name="log")
@home_option
@click.option("--since", type=click.IntRange(0, MAX_SEQ), default=0,
              help="Entries after this sequence (with --latest: at or before it, newest first).")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option("--latest", is_flag=True, help="Show the newest entries first.")
@click.option("--record", "record_target", metavar="REGISTRY/ID",
              help="Only the entries about this record: its writes, reads, denials and settled conflicts (merge).")
@json_option
def audit_log(home: Path | None, since: int, limit: int, latest: bool, record_target: str | None,
              as_json: bool) -> None:
    """Show audit entries."""
    target = None
    if record_target is not None:
        registry_name, sep, record_id = record_target.partition("/")
        if not sep:
            raise ValidationError(f"--record expects REGISTRY/ID, not {record_target!r}")
        target = f"{names.registry_name(registry_name)}/{names.record_id(record_id)}"
    with open_backend(home) as backend:
        entries = backend.audit_log(since=since, limit=limit, reverse=latest, target=target)
    render.rows([e if isinstance(e, dict) else e.to_dict() for e in entries], as_json,
                columns=["seq", "action", "actor", "target", "reason", "change"], title="audit")


@audit.command(name="verify")
@home_option
@json_option
def audit_verify(home: Path | None, as_json: bool) -> None:
    """Recheck the hash chain and every signed tree head; name the first bad entry."""
    with open_backend(home, direct_read=True) as backend:
        report = backend.audit_verify()
    render.mapping(report, as_json, title="audit ledger intact")


# ------------------------------------------------------------------ registries and kinds


@cli.group()
def registry() -> None:
    """Registries: list, describe, create, resolve (from the DHT), follow (another federation's public ones)."""


@registry.command(name="list")
@home_option
@json_option
def registry_list(home: Path | None, as_json: bool) -> None:
    with open_backend(home) as backend:
        render.rows(backend.registries(), as_json, columns=["name", "kinds", "write_policy", "owner", "builtin"],
                    title="registries")


@registry.command(name="describe")
@home_option
@click.argument("name")
@json_option
def registry_describe(home: Path | None, name: str, as_json: bool) -> None:
    with open_backend(home) as backend:
        render.mapping(backend.describe_registry(name), as_json, title=name)


@registry.command(name="resolve")
@home_option
@click.argument("name")
@click.option("--fresh", is_flag=True,
              help="Ask the DHT even when the node resolved NAME within the last minute (its cache).")
@json_option
def registry_resolve(home: Path | None, name: str, fresh: bool, as_json: bool) -> None:
    """Look NAME up in the registry of registries (the running node's DHT):
    its descriptor as its owner signed it (kinds, owner, write and conflict
    policy, replication, federations, version), whether the signature
    holds and who signed, and the nodes that host it with their
    multiaddrs. Works for registries this node does not hold. Needs the
    node running (`rgrid node start`, without --no-p2p or --no-dht)."""
    from registrygrid.client import BridgeClient

    names.registry_name(name)
    with open_backend(home) as backend:
        if not isinstance(backend, BridgeClient):
            # The DHT lives in the running node (node/dht.py); this process has none to ask.
            raise Unavailable("resolving a registry asks the running node's DHT, and no node runs on this "
                              "home: start it with `rgrid node start` (the DHT runs unless --no-p2p or --no-dht)")
        answer = backend.resolve_registry(name, fresh=fresh)
    render.resolution(answer, as_json)


@registry.command(name="transfer")
@home_option
@click.argument("name")
@click.option("--to", "to_org", required=True, metavar="DID", help="The org (did:key) that receives the name.")
@org_key_option
@json_option
def registry_transfer(home: Path | None, name: str, to_org: str, org_key_file: Path | None, as_json: bool) -> None:
    """Give the name NAME to another org in the registry of registries (the
    DHT). Signs a transfer with this org's key (the home's keys/org.key, or
    --org-key FILE) and records it in NAME's descriptor, a signed change
    every node of this federation gets: they then publish a pointer to the
    receiver and stop serving the name, and the receiver's nodes, hosting a
    registry of that name in their federation, take it over with this
    org's first claim. It can't be taken back
    (docs/registry-of-registries.md). Needs the node running with its DHT."""
    import base64

    from registrygrid.client import BridgeClient
    from registrygrid.engine.registries import REGISTRY_OF_REGISTRIES
    from registrygrid.membership import org_key
    from registrygrid.protocol import registry_record
    from registrygrid.protocol.hlc import wall_clock_ms

    names.registry_name(name)
    home_obj = Home(home)
    home_obj.require()
    key = org_key(home_obj, org_key_file)
    with open_backend(home) as backend:
        if not isinstance(backend, BridgeClient):
            raise Unavailable("a transfer carries the name's first claim, which the running node's DHT knows, and "
                              "no node runs on this home: start it with `rgrid node start`")
        answer = backend.resolve_registry(name, fresh=True)
        if answer["owner"] != key.did:
            raise PolicyDenied(f"{name} belongs to {answer['owner']} in the DHT, not to this org ({key.did})")
        if answer["holder"] != key.did:
            raise Conflict(f"{name} was given to {answer['holder']} already")
        statement = registry_record.sign_transfer(key, name=name, to_owner=to_org, claimed_at=answer["claimed_at"],
                                                  at=wall_clock_ms())
        result = backend.update(REGISTRY_OF_REGISTRIES, name, actor="cli", patch={
            "transfer": {"to": to_org, "statement": base64.b64encode(statement).decode()}})
    if as_json:
        render.dump_json({**result.to_dict(), "to": to_org, "claimed_at": answer["claimed_at"]})
    else:
        render.write_result(result, False)
        click.echo(f"{name} given to {to_org}: this federation's nodes now point to it and stop serving the name; "
                   "its nodes take it over at their next publish")


# How often the node syncs a followed registry: node/follow.py FOLLOW_INTERVAL_S
# (the help says it; tests/test_bridge_follow.py checks they agree). Not
# imported: node.follow pulls in libp2p, ~0.7 s of every `rgrid` start.
FOLLOW_INTERVAL_TEXT = "30 s"


def _follows_of_running_node(backend: Any) -> Any:
    """The running node's bridge client; Unavailable when no node runs on the home."""
    from registrygrid.client import BridgeClient

    if not isinstance(backend, BridgeClient):
        # Following is the running node's work (node/follow.py): its DHT finds the providers, its tasks sync.
        raise Unavailable("following a registry of another federation is the running node's work (its DHT and "
                          "its syncs), and no node runs on this home: start it with `rgrid node start` (the DHT "
                          "runs unless --no-p2p or --no-dht)")
    return backend


@registry.command(name="follow", help=(
    "Keep a verified copy of NAME, a public registry another federation hosts, on the running node. The node "
    "resolves NAME in the DHT, fetches it from one of its providers and checks every change (signature, chain, "
    "ownership, schema, and the descriptor against the one its owner signed into the DHT) before it keeps "
    f"anything; then it syncs the copy from the providers every {FOLLOW_INTERVAL_TEXT}, each change checked again. "
    "`rgrid get NAME ID`, `rgrid list NAME` and `rgrid history NAME ID` then read the copy. Following NAME again "
    "syncs it now. Needs the node running (`rgrid node start`, without --no-p2p or --no-dht)."))
@home_option
@click.argument("name")
@json_option
def registry_follow(home: Path | None, name: str, as_json: bool) -> None:
    names.registry_name(name)
    with open_backend(home) as backend:
        status = _follows_of_running_node(backend).follow(name)
    render.follow_status(status, as_json)


@registry.command(name="unfollow")
@home_option
@click.argument("name")
@json_option
def registry_unfollow(home: Path | None, name: str, as_json: bool) -> None:
    """Stop following NAME and delete the running node's copy of it (the
    registry itself, at its federation, is untouched)."""
    names.registry_name(name)
    with open_backend(home) as backend:
        answer = _follows_of_running_node(backend).unfollow(name)
    if as_json:
        render.dump_json(answer)
    else:
        click.echo(f"unfollowed {answer['registry']}: its copy is deleted from this node")


@registry.command(name="follows", help=(
    "The registries of other federations the running node follows (`rgrid registry follow`): each one's owner, "
    "the live records of its copy, when its last sync succeeded (syncs run every "
    f"{FOLLOW_INTERVAL_TEXT}), from which provider, and the last sync's error, if any."))
@home_option
@json_option
def registry_follows(home: Path | None, as_json: bool) -> None:
    with open_backend(home) as backend:
        found = _follows_of_running_node(backend).follows()
    render.follows(found, as_json)


_WRITE_POLICY_HELP = "Who may write (docs/trust.md, 'Records belong to orgs')."
_WRITE_ROLE_HELP = "With --write-policy roles: a role that may create records. Repeatable."
_CONFLICT_POLICY_HELP = ("How concurrent writes of a field are settled: one rule for the whole registry "
                         f"({', '.join(CONFLICT_RULES)}), or a JSON object of rules per field and kind, e.g. "
                         """'{"fields": {"price": "manual"}, "delete": "update-wins"}', or @FILE holding one """
                         "(crdt/conflict_policy.py).")
_REPLICATION_HELP = "private: sent by sync only to nodes of the owner org and of the --reader orgs."
_READER_HELP = "An org (did:key) that may read a private registry. Repeatable."
_WRITE_ROLES = click.Choice(["node", "writer", "admin", "federation-admin", "member"])
_REPLICATIONS = click.Choice(["local", "federation", "public", "private"])


def limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """A registry's ``limits`` (registry.v1.json; docs/federation.md, "Policy guard")."""
    command = click.option("--max-changes-per-second-per-org", "max_rate", type=click.FloatRange(min=0, min_open=True,
                                                                                                 max=100_000),
                           help="How fast one org's changes here are taken in from peers.")(command)
    return click.option("--max-record-bytes", type=click.IntRange(1, limits.MAX_RECORD_BYTES),
                        help="The most a record's fields may take, msgpack-packed "
                             f"(default and maximum {limits.MAX_RECORD_BYTES}).")(command)


def registry_limits(max_record_bytes: int | None, max_rate: float | None) -> dict[str, Any]:
    return {**({"max_record_bytes": max_record_bytes} if max_record_bytes is not None else {}),
            **({"max_changes_per_second_per_org": max_rate} if max_rate is not None else {})}


@registry.command(name="create")
@home_option
@click.argument("name")
@click.option("--kind", "kinds", multiple=True, required=True, help="A kind it holds. Repeatable.")
@click.option("--description", default="")
@click.option("--write-policy", type=click.Choice(["open", "owner", "members", "roles"]), default="open",
              show_default=True, help=_WRITE_POLICY_HELP)
@click.option("--write-role", "write_roles", multiple=True, type=_WRITE_ROLES, help=_WRITE_ROLE_HELP)
@click.option("--conflict-policy", "conflict_policy_text", metavar="RULE|JSON|@FILE", default="last-writer-wins",
              show_default=True, help=_CONFLICT_POLICY_HELP)
@click.option("--replication", type=_REPLICATIONS, default="federation", show_default=True, help=_REPLICATION_HELP)
@click.option("--reader", "readers", multiple=True, help=_READER_HELP)
@limit_options
@json_option
def registry_create(home: Path | None, name: str, kinds: tuple[str, ...], description: str, write_policy: str,
                    write_roles: tuple[str, ...], conflict_policy_text: str, replication: str,
                    readers: tuple[str, ...], max_record_bytes: int | None, max_rate: float | None,
                    as_json: bool) -> None:
    """Create a registry (a signed record in grid.registries)."""
    if readers and replication != "private":
        raise ValidationError("--reader names who may read a private registry; add --replication private")
    conflict_policy = parse_conflict_policy(conflict_policy_text)
    with open_backend(home) as backend:
        result = backend.create_registry(name, list(kinds), description=description, write_policy=write_policy,
                                         conflict_policy=conflict_policy, replication=replication,
                                         readers=list(readers), write_roles=list(write_roles),
                                         limits=registry_limits(max_record_bytes, max_rate) or None, actor="cli")
    render.write_result(result, as_json)


@registry.command(name="update")
@home_option
@click.argument("name")
@click.option("--kind", "kinds", multiple=True, help="Hold these kinds (replaces the list). Repeatable.")
@click.option("--description")
@click.option("--write-policy", type=click.Choice(["open", "owner", "members", "roles"]), help=_WRITE_POLICY_HELP)
@click.option("--write-role", "write_roles", multiple=True, type=_WRITE_ROLES,
              help="With --write-policy roles: the roles that may create records (replaces them). Repeatable.")
@click.option("--conflict-policy", "conflict_policy_text", metavar="RULE|JSON|@FILE", help=_CONFLICT_POLICY_HELP)
@click.option("--replication", type=_REPLICATIONS, help=_REPLICATION_HELP)
@click.option("--reader", "readers", multiple=True, help="The orgs (did:key) that may read a private registry "
              "(replaces them). Repeatable.")
@limit_options
@click.option("--if-match", help="Only if the descriptor is still at this change ID.")
@json_option
def registry_update(home: Path | None, name: str, kinds: tuple[str, ...], description: str | None,
                    write_policy: str | None, write_roles: tuple[str, ...], conflict_policy_text: str | None,
                    replication: str | None, readers: tuple[str, ...], max_record_bytes: int | None,
                    max_rate: float | None, if_match: str | None, as_json: bool) -> None:
    """Change a registry's rules: a signed update of its descriptor, which
    every node applies to the changes made from then on (docs/trust.md).
    Only what is given changes."""
    patch: dict[str, Any] = {}
    if kinds:
        patch["kinds"] = list(kinds)
    if description is not None:
        patch["description"] = description
    if write_policy is not None:
        patch["write_policy"] = write_policy
    if write_roles:
        patch["write_roles"] = list(write_roles)
    if conflict_policy_text is not None:
        patch["conflict_policy"] = parse_conflict_policy(conflict_policy_text)
    replication_patch = {**({"scope": replication} if replication else {}),
                         **({"readers": list(readers)} if readers else {})}
    if replication_patch:
        patch["replication"] = replication_patch
    if limits_patch := registry_limits(max_record_bytes, max_rate):
        patch["limits"] = limits_patch
    if not patch:
        raise ValidationError("nothing to change: give --kind, --description, --write-policy, --write-role, "
                              "--conflict-policy, --replication, --reader, --max-record-bytes or "
                              "--max-changes-per-second-per-org")
    names.registry_name(name)
    with open_backend(home) as backend:
        try:
            result = backend.update(regs.REGISTRY_OF_REGISTRIES, name, patch=patch, if_match=if_match, actor="cli")
        except NotFound:  # its descriptor: no such registry (or a deleted one)
            raise regs.unknown_registry(name) from None
    render.write_result(result, as_json)


def parse_conflict_policy(text: str) -> Any:
    """--conflict-policy: a rule name, a JSON object, or @FILE holding one. An
    object is checked where every descriptor is (registry.v1.json, crdt/conflict_policy.py)."""
    if text.startswith("@"):
        return read_json_file(text[1:])
    if text.lstrip().startswith("{"):
        return loads_json(text, "--conflict-policy")
    if text not in CONFLICT_RULES:
        raise ValidationError(f"--conflict-policy {text!r} is no rule; use one of {', '.join(CONFLICT_RULES)}, "
                              "a JSON object or @FILE")
    return text


@cli.group()
def policy() -> None:
    """Access policies: what every node decides, and why."""


@policy.command(name="explain")
@home_option
@click.argument("subject")
@click.argument("action", type=click.Choice(["read", "create", "update", "delete", "admin"]))
@click.argument("target", metavar="REGISTRY[/RECORD]")
@click.option("--field", "fields", multiple=True, help="A top-level field the change would touch. Repeatable.")
@click.option("--token-role", type=click.Choice(["reader", "writer", "admin"]),
              help="Explain a write made through the bridge with a token of this role (local rules).")
@json_option
def policy_explain(home: Path | None, subject: str, action: str, target: str, fields: tuple[str, ...],
                   token_role: str | None, as_json: bool) -> None:
    """Would SUBJECT (a node's or an org's did:key) be allowed ACTION on
    REGISTRY (or one record of it) now, and which rule decides? The write
    path's own checks; nothing is written. Exit 0 if allowed, 77 if not."""
    registry, _, record_id = target.partition("/")
    with open_backend(home) as backend:
        answer = backend.explain(subject, action, registry, record_id or None, fields=list(fields),
                                 local_roles=[f"app:{token_role}"] if token_role else [])
    render.mapping(answer, as_json, title="allowed" if answer["allowed"] else "denied")
    if not answer["allowed"]:
        sys.exit(EX_NOPERM)


@cli.group()
def kind() -> None:
    """Record kinds and their JSON Schemas."""


@kind.command(name="list")
@home_option
@json_option
def kind_list(home: Path | None, as_json: bool) -> None:
    with open_backend(home) as backend:
        rows = [{"name": k["name"], "version": k["version"], "registry": k["registry"], "builtin": k["builtin"],
                 "description": k["description"]} for k in backend.kinds()]
    render.rows(rows, as_json, columns=["name", "version", "registry", "builtin", "description"], title="kinds")


@kind.command(name="show")
@home_option
@click.argument("name")
@click.option("--version", "version", type=int)
def kind_show(home: Path | None, name: str, version: int | None) -> None:
    """Print a kind's JSON Schema."""
    with open_backend(home) as backend:
        found = backend.kind(name, version)
    click.echo(json.dumps(found, indent=2, sort_keys=True))


@kind.command(name="register")
@home_option
@click.argument("name")
@click.option("--version", "version", type=int, default=1, show_default=True)
@click.option("--schema", "schema_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSON Schema (Draft 2020-12) file for the kind's fields.")
@click.option("--registry", "home_registry", default="", help="The kind's home registry.")
@click.option("--description", default="")
@json_option
def kind_register(home: Path | None, name: str, version: int, schema_file: Path, home_registry: str,
                  description: str, as_json: bool) -> None:
    """Register a user-defined kind (replicates as a record of grid.kinds)."""
    schema = read_json_file(schema_file)
    if not isinstance(schema, dict):  # a list of pairs became a schema, other values a traceback
        raise ValidationError(f"{schema_file}: a kind's schema is a JSON object, not {type(schema).__name__}",
                              details=[{"path": str(schema_file), "message": "not a JSON object"}])
    with open_backend(home) as backend:
        result = backend.register_kind(name, version, schema, registry=home_registry, description=description,
                                       actor="cli")
    render.write_result(result, as_json)


def _register_optional_groups() -> None:
    """Command groups that live in their own modules (node, token, peers, org, federation, disputes, view, sim, import, asset)."""
    try:
        from registrygrid.cli import node_commands
    except ImportError:
        pass
    else:
        node_commands.register(cli)
    try:
        from registrygrid.cli import token_commands
    except ImportError:
        pass
    else:
        token_commands.register(cli)
    try:
        from registrygrid.cli import peer_commands
    except ImportError:
        pass
    else:
        peer_commands.register(cli)
    from registrygrid.cli import (
        asset_commands,
        dispute_commands,
        federation_commands,
        import_commands,
        org_commands,
        sim_commands,
        view_commands,
    )

    org_commands.register(cli)
    federation_commands.register(cli)
    dispute_commands.register(cli)
    view_commands.register(cli)
    sim_commands.register(cli)
    import_commands.register(cli)
    asset_commands.register(cli)


_register_optional_groups()


def main() -> None:
    # A write past a file-size limit (``ulimit -f``) kills the process by
    # default (SIGXFSZ); ignored, it fails with EFBIG, which the store turns
    # into StorageFailed: the write is refused, the node goes on serving.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    warnings_on_one_line("rgrid")
    try:
        # Not standalone: click would print its own "Error: ..." and exit 2
        # for a usage error of rgrid's own arguments (an unknown command).
        done = cli.main(prog_name="rgrid", standalone_mode=False)
    except click.UsageError as exc:
        _bad_usage(exc)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except RegistryError as exc:  # raised outside a command (e.g. while parsing)
        render.error(exc)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(done if isinstance(done, int) else 0)  # --help, --version and ctx.exit() give their code
