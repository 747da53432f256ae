"""How the CLI shows things: rich tables for people, JSON for programs."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from registrygrid.errors import RegistryError

# emoji=False: "did:key:z6Mk..." must not become a key emoji.
_out = Console(soft_wrap=True, emoji=False, highlight=False)
_err = Console(stderr=True, soft_wrap=True, emoji=False, highlight=False)
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


def error(exc: RegistryError) -> None:
    _err.print(f"[bold red]error\\[{exc.code}][/]: {escape(exc.message)}", highlight=False, markup=True)
    if isinstance(exc.details, list):
        for item in exc.details[:50]:
            if isinstance(item, Mapping) and "path" in item:
                _err.print(f"  at {item['path'] or '(root)'}: {item.get('message', '')}", highlight=False,
                           markup=False)
            else:
                _err.print(f"  {item}", highlight=False, markup=False)
    elif exc.details:
        _err.print(f"  {exc.details}", highlight=False, markup=False)


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def mapping(data: Mapping[str, Any], as_json: bool, *, title: str = "") -> None:
    """A key/value table; a list of strings (multiaddrs, problems) is printed
    after it instead, under its key, one whole item per line: a table cell
    ellipsizes or folds what does not fit the terminal, and a multiaddr cut
    either way no longer dials when copied."""
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
    _out.print(table)
    for key, values in listed.items():
        whole_lines(f"{key}:", values)


def whole_lines(heading: str, lines: Sequence[str]) -> None:
    """``heading``, then each line as is: no wrapping, no cutting, no
    indent, so a copied line is exactly the value (the terminal may soft-wrap
    a long one; copying it back gives the whole line)."""
    _out.print(heading, style="bold cyan", markup=False, highlight=False)
    for line in lines:
        click.echo(line)


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
    for column in ("registry", "id", "kind", "name", "tags", "updated_by"):
        table.add_column(column)
    for item in items:
        name = item["fields"].get("name") if isinstance(item.get("fields"), dict) else None
        table.add_row(item["registry"], item["id"], item["kind"], _cell(name), ",".join(item["tags"]),
                      _cell(item.get("updated_by"))[-12:])
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
