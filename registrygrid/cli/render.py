"""How the CLI shows things: rich tables for people, JSON for programs."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console, ConsoleOptions, ConsoleRenderable, RenderHook
from rich.markup import escape
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from registrygrid.engine.registries import descriptor_from_record
from registrygrid.errors import RegistryError
from registrygrid.logs import CONTROL_CHARACTERS

# Control characters (C0 and C1 but newline and tab, and DEL) are what a
# terminal acts on: ESC starts a sequence that can retitle the window,
# recolour or hide text, on some terminals write the clipboard. Records,
# peers' names and their errors come from other orgs, so their text is
# shown, never obeyed: ESC prints as "\x1b". (JSON output escapes them
# already: json.dumps keeps to ASCII.)
_CONTROLS = {c: text for c, text in CONTROL_CHARACTERS.items() if chr(c) not in "\n\t"}


def visible(text: str) -> str:
    """``text`` with every control character a terminal would act on written out."""
    return text.translate(_CONTROLS)


class _Shown:
    """A renderable as rich draws it, its text's control characters written
    out; rich's own codes (styles, cursor moves) are left as they are."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        for segment in console.render(self.inner, options):
            yield segment if segment.control else Segment(visible(segment.text), segment.style)


class _ShowControlCharacters(RenderHook):
    def process_renderables(self, renderables: list[ConsoleRenderable]) -> list[ConsoleRenderable]:
        return [_Shown(r) for r in renderables]  # type: ignore[misc]


# emoji=False: "did:key:z6Mk..." must not become a key emoji.
_out = Console(soft_wrap=True, emoji=False, highlight=False)
_err = Console(stderr=True, soft_wrap=True, emoji=False, highlight=False)
for _console in (_out, _err):
    _console.push_render_hook(_ShowControlCharacters())
stderr_console = _err  # progress bars go here, so stdout stays the result


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_json(value: Any) -> None:
    click.echo(json.dumps(_plain(value), indent=2, sort_keys=True, default=str))


def note(text: str) -> None:
    """A line of help on stderr, after an error."""
    _err.print(text, highlight=False, markup=False)


def error(exc: RegistryError) -> None:
    _err.print(f"[bold red]error\\[{exc.code}][/]: {escape(exc.message)}", highlight=False, markup=True)
    if isinstance(exc.details, list):
        for item in exc.details[:50]:
            if isinstance(item, Mapping) and "path" in item:
                _err.print(f"  at {item['path'] or '(root)'}: {item.get('message', '')}", highlight=False,
                           markup=False)
            else:
                _err.print(f"  {item}", highlight=False, markup=False)
    elif isinstance(exc.details, Mapping):  # one line each, not a Python dict's repr
        for key, value in exc.details.items():
            shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            _err.print(f"  {key}: {shown}", highlight=False, markup=False)
    elif exc.details:
        _err.print(f"  {exc.details}", highlight=False, markup=False)


def _cell(value: Any) -> str:
    """A table cell's text, control characters written out before the
    table is laid out, so the columns are as wide as what is shown (the
    render hook alone wrote them out after: rows came out wider)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else visible(str(value))


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def mapping(data: Mapping[str, Any], as_json: bool, *, title: str = "", to_stderr: bool = False) -> None:
    """A key/value table; a list of strings (multiaddrs, problems) is printed
    after it instead, under its key, one whole item per line: a table cell
    ellipsizes or folds what does not fit the terminal, and a multiaddr cut
    either way no longer dials when copied. ``to_stderr``: the table goes
    to stderr, where stdout carries a file's text."""
    if as_json:
        dump_json(data)
        return
    table = Table(title=title or None, show_header=False, box=None)
    table.add_column(style="bold cyan")
    table.add_column(overflow="fold")  # a narrow terminal folds a did or peer ID; it never cuts one
    listed: dict[str, list[str]] = {}
    for k, v in _plain(data).items():
        if _is_text_list(v):
            listed[str(k)] = v
        else:
            table.add_row(str(k), _cell(v))
    (_err if to_stderr else _out).print(table)
    for key, values in listed.items():
        whole_lines(f"{key}:", values, to_stderr=to_stderr)


def whole_lines(heading: str, lines: Sequence[str], *, to_stderr: bool = False) -> None:
    """``heading``, then each line as is: no wrapping, no cutting, no
    indent, so a copied line is exactly the value (the terminal may soft-wrap
    a long one; copying it back gives the whole line)."""
    (_err if to_stderr else _out).print(heading, style="bold cyan", markup=False, highlight=False)
    for line in lines:
        click.echo(line, err=to_stderr)


def rows(items: Sequence[Any], as_json: bool, *, columns: list[str], title: str = "",
         whole: Sequence[str] = ()) -> None:
    """A table; the ``whole`` columns, for values someone copies (ids), are
    the last to shrink when the terminal is narrow (rich narrows wrapping
    columns first) and then fold inside the cell instead of ending in "…"."""
    items = [_plain(i) for i in items]
    if as_json:
        dump_json(items)
        return
    table = Table(title=title or None)
    for column in columns:
        if column in whole:
            table.add_column(column, no_wrap=True, overflow="fold")
        else:
            table.add_column(column)
    for item in items:
        table.add_row(*(_cell(item.get(c)) for c in columns))
    _out.print(table)


def write_result(result: Any, as_json: bool) -> None:
    data = _plain(result)
    data.pop("record", None)
    if as_json:
        dump_json(data)
    else:
        _out.print(f"{data['status']} {data['registry']}/{data['id']}  change {data['change_id']}"
                   + (f"  feed {data['feed_seq']}" if data.get("feed_seq") else ""), highlight=False)


def record(data: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        dump_json(data)
        return
    meta = {k: v for k, v in data.items() if k != "fields"}
    mapping(meta, False, title=f"{data['registry']}/{data['id']}")
    _out.print_json(json.dumps(data["fields"], sort_keys=True))


def page(result: Any, as_json: bool) -> None:
    items = result.items if hasattr(result, "items") and not isinstance(result, dict) else result["items"]
    cursor = result.next_cursor if hasattr(result, "next_cursor") else result.get("next_cursor")
    if as_json:
        dump_json({"items": items, "next_cursor": cursor})
        return
    table = Table()
    # Paths that show conflicts, when any listed record has some (`rgrid
    # list --conflicted`; `rgrid get --conflicts` explains each).
    conflicted = any(item.get("conflicts") for item in items)
    for column in ("registry", "id", "kind", "name", "tags", "updated_by", *(["conflicts"] if conflicted else [])):
        if column == "id":  # copied into the next command: folded in a narrow terminal, never cut with "…"
            table.add_column(column, no_wrap=True, overflow="fold")
        else:
            table.add_column(column)
    for item in items:
        name = item["fields"].get("name") if isinstance(item.get("fields"), dict) else None
        row = [item["registry"], item["id"], item["kind"], _cell(name), ",".join(item["tags"]),
               _cell(item.get("updated_by"))[-12:]]
        if conflicted:
            row.append(" ".join(c["path"] for c in item.get("conflicts") or ()))
        table.add_row(*row)
    _out.print(table)
    if cursor:
        _out.print(f"more: --cursor {cursor}", highlight=False)


def event(data: Any, as_json: bool) -> None:
    plain = _plain(data)
    if as_json:
        click.echo(json.dumps(plain, sort_keys=True))
    else:
        click.echo(f"{plain['seq']:>8} {plain['type']:<8} {plain['registry']}/{plain['record']} "
                   f"{plain['kind']} {plain['change']} by {plain['author'][-12:]} ({plain['origin']})")


# ---------------------------------------------------------------- search (registrygrid/search)

# The components of a score `rgrid search --explain` shows, in this order
# (search/index.py rank: the weighted parts, the raw BM25, the boost factor).
EXPLAIN_COLUMNS = ("text", "freshness", "trust", "bm25", "boost")
_DATE_FIELDS = ("created_at", "updated_at")


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _cell(value)


def search_answer(data: Mapping[str, Any], as_json: bool, *, sort_field: str) -> None:
    """Hits ranked: registry, id, kind, name (fields.name, else the id) and
    the score, or the sort field's value (dates as UTC times); with explain,
    each component of the score. Then the facets, one line each, and the
    next page's cursor. Cells are data, never markup (anyone writes names).
    With --json, the answer as is."""
    if as_json:
        dump_json(data)
        return
    items = data["items"]
    explained = any("explain" in item for item in items)
    by_value = sort_field != "relevance"
    table = Table(title=f"{data['total']} match{'es' if data['total'] != 1 else ''}")
    table.add_column("rank", justify="right")
    table.add_column("registry", no_wrap=True, overflow="fold")
    table.add_column("id", no_wrap=True, overflow="fold")
    table.add_column("kind")
    table.add_column("name", overflow="fold")
    table.add_column(sort_field if by_value else "score", justify="right")
    for column in EXPLAIN_COLUMNS if explained else ():
        table.add_column(column, justify="right")
    federated = "sources" in data
    if federated:
        table.add_column("from", overflow="fold")
    for rank, item in enumerate(items, 1):
        record = item["record"]
        fields = record.get("fields") if isinstance(record.get("fields"), dict) else {}
        name = fields.get("name") if isinstance(fields.get("name"), str) else item["id"]
        if by_value:
            value = item.get("sort_value")
            shown = _when(value) if sort_field in _DATE_FIELDS and isinstance(value, int) else _number(value)
        else:
            shown = _number(item["score"])
        cells = [str(rank), item["registry"], item["id"], record.get("kind"), name, shown]
        cells += [_number((item.get("explain") or {}).get(c)) for c in EXPLAIN_COLUMNS] if explained else []
        cells += [", ".join(_short(s) for s in item.get("sources", []))] if federated else []
        table.add_row(*(Text(_cell(c)) for c in cells))
    _out.print(table)
    for field, buckets in data["facets"].items():
        counts = ", ".join(f"{json.dumps(b['value']) if isinstance(b['value'], bool) else b['value']} "
                           f"({b['count']})" for b in buckets)
        _out.print(Text.assemble((f"{field}: ", "bold cyan"), counts or "(none)"))
    if data.get("next_cursor"):
        click.echo(f"more: --cursor {data['next_cursor']}")
    for source in data.get("sources") or ():  # a federated query: how each source answered
        facts = [source["kind"] + (f" of {source['registry']}" if source.get("registry") else ""), source["status"],
                 f"{source['hits']} shown"]
        facts += [f"{source[k]} {k}" for k in ("unverified", "withheld") if source.get(k)]
        if source.get("error"):
            facts.append(source["error"])
        _out.print(Text.assemble((f"{source['source']}: ", "bold cyan"), _cell(", ".join(facts))))


def _short(source: str) -> str:
    """A source as a table shows it: local, or a peer id's last 8 characters."""
    return source if source == "local" else f"…{source[-8:]}"


def search_fields(fields: Sequence[Mapping[str, Any]], as_json: bool) -> None:
    """What a query may filter, sort and facet by (search/query.py describe_fields)."""
    if as_json:
        dump_json(fields)
        return
    rows([{**f, "operators": " ".join(f["operators"])} for f in fields], False,
         columns=["field", "type", "operators", "sortable", "facetable", "description"], title="search fields")


# ---------------------------------------------------------------- conflicts and disputes


def _shown(value: Any, removed: bool = False) -> str:
    """A field value on one line, as JSON (the diff's notation)."""
    return "(removed)" if removed else json.dumps(value, sort_keys=True)


def conflicts(data: Mapping[str, Any], as_json: bool) -> None:
    """A record, then each of its conflicts: the path, the rule, what the
    record shows, and every competing write, one whole line each (a did or
    change ID cut short can no longer be looked up). With --json,
    {"record", "conflicts"}."""
    found = list(data.get("conflicts") or [])
    if as_json:
        dump_json({"record": data, "conflicts": found})
        return
    record({k: v for k, v in data.items() if k != "conflicts"}, False)
    if not found:
        _out.print("no conflicts", highlight=False, markup=False)
    for conflict in found:
        status = conflict["status"] + (f" ({conflict['dispute']})" if conflict.get("dispute") else "")
        _out.print(Text.assemble(("conflict ", "bold"), (conflict["path"], "bold cyan"),
                                 f"  rule {conflict['rule']}  {status}  shows ",
                                 _shown(conflict["value"], conflict.get("removed", False))))
        for write in conflict.get("writes") or []:
            by = f"by {write['author']} at hlc {write['hlc']}" if write.get("author") else "as created"
            click.echo(f"  {_shown(write.get('value'), bool(write.get('removed')))}  {by}")


def disputes(items: Sequence[Mapping[str, Any]], as_json: bool) -> None:
    """One row a dispute: a field dispute names its record and path, an
    equivocation the key and the sequence it signed twice. Cells are data,
    never markup (a path names anyone's field); on a narrow terminal they
    fold rather than end in "…", the id last (it is copied into `show`)."""
    if as_json:
        dump_json(items)
        return
    table = Table(title="disputes")
    table.add_column("id", no_wrap=True, overflow="fold")
    for column in ("type", "status", "registry", "record/author", "path/seq"):
        table.add_column(column, overflow="fold")
    for item in items:
        field = item["type"] == "field"
        # An author is a did:key, too wide for a row: its tail tells keys
        # apart (as `rgrid list` shows updated_by); `show` gives it whole.
        table.add_row(*(Text(_cell(v)) for v in (
            item["id"], item["type"], item["status"], item["registry"],
            item["record"] if field else "…" + item["author"][-12:], item["path"] if field else f"#{item['seq']}")))
    _out.print(table)


def dispute(data: Mapping[str, Any], as_json: bool) -> None:
    """One dispute for a person to decide: a field dispute's diff, rule and
    shown value; an equivocation's two changes side by side, why they prove
    it, and what is quarantined; then every resolution and whether it counts."""
    if as_json:
        dump_json(data)
        return
    _out.print(Text.assemble((data["id"], "bold"), f"  {data['type']}  ", (data["status"], "bold")))
    if data["type"] == "field":
        _facts({"registry": data["registry"], "record": data["record"], "path": data["path"],
                "rule": data["rule"], "shows": _shown(data["shows"], data["removed"]),
                "resolved by": data.get("resolved_by")})
        whole_lines("diff:", data.get("diff") or [])
    else:
        _facts({"author": data["author"], "author orgs": ", ".join(data["author_orgs"]),
                "registry": data["registry"], "seq": data["seq"], "reported by": data["reported_by"]})
        _changes_side_by_side(data.get("changes") or [])
        if data.get("error"):
            whole_lines("evidence unreadable:", [data["error"]])
        if data.get("why"):
            whole_lines("why:", [data["why"]])
        whole_lines("quarantine:", [data["quarantine"]])
    resolutions = data.get("resolutions") or []
    whole_lines("resolutions:", [_resolution_line(r) for r in resolutions] or ["(none)"])


def _facts(pairs: Mapping[str, Any]) -> None:
    """Key/value lines whose values are data, never markup (a field's value is anyone's text)."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold cyan")
    table.add_column(overflow="fold")
    for key, value in pairs.items():
        table.add_row(key, Text(_cell(value)))
    _out.print(table)


def _changes_side_by_side(changes: Sequence[Mapping[str, Any]]) -> None:
    if not changes:
        return
    table = Table(title="the two changes")
    table.add_column("", style="bold cyan")
    for i, _ in enumerate(changes, 1):
        table.add_column(f"change {i}", overflow="fold")
    for key in ("change", "author", "registry", "record", "op", "seq", "hlc", "kind", "size"):
        table.add_row(key, *(Text(_cell(change.get(key))) for change in changes))
    _out.print(table)


def _resolution_line(resolution: Mapping[str, Any]) -> str:
    if resolution["outcome"] == "quarantine":
        decided = "acknowledged (quarantine stays)"
    else:
        decided = "value " + _shown(resolution.get("value"), resolution.get("removed", False))
    counts = "counts" if resolution["counts"] else "does not count (its author may not decide)"
    note = f"  note: {resolution['note']}" if resolution.get("note") else ""
    return f"{decided}  by {resolution['by']} at hlc {resolution['hlc']}  {counts}  (change {resolution['change']}){note}"


# ---------------------------------------------------------------- the registry of registries


def resolution(data: Mapping[str, Any], as_json: bool) -> None:
    """A registry as the DHT answered for it: where the answer came from,
    the descriptor (with the defaults its fields leave out, read as the
    engine reads them), its verification, then each provider and its
    multiaddrs, one whole line each in the dialable form (with
    /p2p/<peer id>), so a copied line is a --bootstrap value as is."""
    if as_json:
        dump_json(data)
        return
    source = "the DHT" if data["source"] == "dht" else "this node's cache (--fresh asks the DHT)"
    _out.print(Text.assemble((data["name"], "bold"), f"  resolved from {source}"))
    desc = descriptor_from_record({"id": data["name"], "owner": data["owner"], "fields": data["descriptor"]})
    replication = desc.replication + (f", readers {', '.join(desc.readers)}" if desc.readers else "")
    write_policy = desc.write_policy + (f", roles {', '.join(desc.write_roles)}" if desc.write_roles else "")
    facts = {"kinds": ", ".join(desc.kinds), "owner": data["owner"], "write policy": write_policy,
             "conflict policy": desc.conflict_policy, "replication": replication,
             "federations": ", ".join(data["federations"]) or "(none)",
             "version": list(data["version"]), "change": data["change_id"],
             "claimed": _when(data["claimed_at"]), "signed": _when(data["issued_at"])}
    if desc.description:
        facts["description"] = desc.description
    transfers = data.get("transfers") or []
    if transfers:
        facts["holder"] = data["holder"] + ("" if data["holder"] == data["owner"]
                                            else " (given the name; has not published it yet)")
        facts["transfers"] = "; ".join(f"{t['from']} -> {t['to']} at {_when(t['at'])}" for t in transfers)
    _facts(facts)
    verification = data["verification"]
    _out.print("verification", style="bold cyan", markup=False, highlight=False)
    _facts({"signature": verification["signature"], "signer": verification["signer"],
            "authority": verification["authority"]})
    providers = data["providers"]
    if not providers:
        whole_lines("providers:", ["(none found: no node announced that it hosts this registry)"])
    for provider in providers:
        peer = provider["peer_id"]
        addrs = [a if a.endswith(f"/p2p/{peer}") else f"{a}/p2p/{peer}" for a in provider["addrs"]]
        whole_lines(f"provider {peer}:", addrs or ["(no addresses known)"])


def remote_read(data: Mapping[str, Any], as_json: bool, *, one: bool) -> None:
    """A read of another federation's public registry: where the records came
    from (the provider's peer id and the owner org, whole on their lines so
    either can be copied) and what was verified, then the records as `rgrid
    get` (``one``) or `rgrid list` show them. With --json, the node's answer
    as is."""
    if as_json:
        dump_json(data)
        return
    _out.print(Text.assemble((data["registry"], "bold"), "  read from another federation, verified"))
    verified = data["verified"]
    _facts({"provider": data["provider"], "owner": data["owner"], "changes verified": verified["changes"],
            "descriptor": verified["descriptor"], "signatures": verified["signatures"]})
    records = data["records"]
    if one:
        for found in records:
            record(found, False)
    else:
        page({"items": records, "next_cursor": None}, False)


# ---------------------------------------------------------------- follows (node/follow.py)


def follow_status(data: Mapping[str, Any], as_json: bool) -> None:
    """A followed registry's status: whose it is, what the copy holds, how
    its last sync went (the owner and provider whole on their lines, to be
    copied), then how to read it. With --json, the node's answer as is."""
    if as_json:
        dump_json(data)
        return
    _out.print(Text.assemble((data["registry"], "bold"), "  followed: a verified copy on this node"))
    facts = {"owner": data["owner"], "records": data["records"], "followed": _when(data["followed_at"]),
             "last sync": _sync_age(data["last_sync_at"]), "provider": data["last_provider"] or "",
             "synced changes": data["synced_changes"], "lying providers": data["lying_providers"]}
    if data.get("last_error"):
        facts["error"] = data["last_error"]
    _facts(facts)
    whole_lines("read it with:", [f"rgrid list {data['registry']}", f"rgrid get {data['registry']} ID"])


def follows(items: Sequence[Mapping[str, Any]], as_json: bool) -> None:
    """One row a followed registry: its owner, its copy's live records, the
    age of its last good sync, the provider of it and the last sync's error.
    Cells are data, never markup (an error quotes what a provider sent)."""
    if as_json:
        dump_json(items)
        return
    if not items:
        _out.print("no followed registries (rgrid registry follow NAME follows one)", markup=False,
                   highlight=False)
        return
    table = Table(title="followed registries")
    table.add_column("registry", no_wrap=True, overflow="fold")
    for column in ("owner", "records", "last sync", "provider", "error"):
        table.add_column(column, overflow="fold")
    for item in items:
        table.add_row(*(Text(_cell(v)) for v in (
            item["registry"], item["owner"], item["records"], _sync_age(item["last_sync_at"]),
            item["last_provider"], item["last_error"])))
    _out.print(table)


def _sync_age(ms: int | None, now_ms: int | None = None) -> str:
    """How long ago a sync succeeded, coarsely ("12s ago", "3m ago"); a node
    keeps no sync times across restarts, so None is "none since the node started"."""
    if ms is None:
        return "none since the node started"
    now = now_ms if now_ms is not None else int(datetime.now(UTC).timestamp() * 1000)
    seconds = max(0, (now - ms) // 1000)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _view_state(view: Mapping[str, Any], offline: bool) -> str:
    if view.get("error"):
        return "error"
    if view.get("materialized"):
        return "materialized" + (" (truncated)" if view.get("truncated") else "")
    return "node stopped" if offline else "live"


def views(items: Sequence[Mapping[str, Any]], as_json: bool, *, offline: bool = False) -> None:
    """One row a saved view: its owner, whether this node keeps its results
    (materialized, live, error), how many and through which feed sequence."""
    if as_json:
        dump_json(items)
        return
    if not items:
        _out.print("no saved views (rgrid view create NAME --query JSON makes one)", markup=False, highlight=False)
        return
    table = Table(title="saved views")
    table.add_column("name", no_wrap=True, overflow="fold")
    for column in ("title", "owner", "state", "members", "through", "query"):
        table.add_column(column, overflow="fold")
    for item in items:
        table.add_row(*(Text(_cell(v)) for v in (
            item["name"], item["title"], item["owner"], _view_state(item, offline), item["members"],
            item["through"], item["error"]["message"] if item.get("error") else item["query"])))
    _out.print(table)


def view(data: Mapping[str, Any], as_json: bool, *, sort_field: str, offline: bool = False) -> None:
    """A saved view's facts, then its results as `rgrid search` shows hits."""
    if as_json:
        dump_json(data)
        return
    facts = data["view"]
    _facts({"view": facts["name"], "title": facts["title"], "owner": facts["owner"],
            "description": facts["description"], "query": facts["query"], "state": _view_state(facts, offline),
            "members": facts["members"], "through": facts["through"]})
    if facts.get("error"):
        whole_lines("error:", [f"{facts['error']['path']}: {facts['error']['message']}"])
        return
    relevance = sort_field == "relevance"
    search_answer({"total": data["total"], "facets": {}, "next_cursor": data["next_cursor"],
                   "items": [{**item, "score": item.get("sort_value") or 0.0} if relevance else item
                             for item in data["items"]]}, False, sort_field=sort_field)
