"""`rgrid view create|show|list|delete`: saved views (search/views.py).

A view is a record of grid.views (its name is the record id) holding a
query of the search language; the running node keeps the results of its
org's views materialized and streams their changes (GET
/v1/views/{name}/events). Like every command these go through the running
node's bridge when a node holds the home. With the node stopped, create,
list and delete work on the store itself (the node materializes the view
when it starts), and show runs the view's query on the home's search index,
brought up to date first, as `rgrid search` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from registrygrid.cli import render
from registrygrid.cli.backend import open_backend
from registrygrid.cli.options import home_option, json_option
from registrygrid.cli.values import loads_json, read_json_file
from registrygrid.errors import NotFound, ValidationError
from registrygrid.search import views as saved_views


def _query_option(text: str) -> Any:
    """--query: a JSON object given inline, or @FILE holding one."""
    if text.startswith("@"):
        query = read_json_file(text[1:])
    else:
        query = loads_json(text, "--query")
    if not isinstance(query, dict):
        raise ValidationError("--query must be a JSON object: a query of the search language (`rgrid search --help`)")
    return query


def _sort_field(query: Any) -> str:
    try:
        return saved_views.check_query(query).sort.field
    except ValidationError:
        return "relevance"  # the view shows its error instead of results


def _bridge(backend: Any) -> bool:
    from registrygrid.client import BridgeClient

    return isinstance(backend, BridgeClient)


def register(cli: click.Group) -> None:

    @cli.group(name="view")
    def view_group() -> None:
        """Saved views: named queries whose results the node keeps materialized."""

    @view_group.command(name="create", epilog="""\b
Examples:
  rgrid view create cheap-eu-gpus --query '{"text": "gpu", "filter": {"field": "price", "lt": 1}, "sort": "price"}'
  rgrid view create audits --query @audits.json --description "every audit task, newest first\"""")
    @home_option
    @click.argument("name")
    @click.option("--query", "query_text", required=True, metavar="JSON|@FILE",
                  help="The query (`rgrid search --help`): text mode, no cursor.")
    @click.option("--description", default="", help="What the view is for.")
    @click.option("--title", default=None, help="Display title (default: the name).")
    @json_option
    def view_create(home: Path | None, name: str, query_text: str, description: str, title: str | None,
                    as_json: bool) -> None:
        """Create view NAME, or replace its query, description and title.
        A malformed query is refused naming its bad part (/query/...)."""
        query = _query_option(query_text)
        with open_backend(home) as backend:
            if _bridge(backend):
                result = backend.put_view(name, query, description=description, title=title)
            else:
                fields = saved_views.view_fields(name, query, description=description, title=title)
                try:
                    backend.get(saved_views.VIEWS_REGISTRY, name)
                except NotFound:
                    result = backend.put(saved_views.VIEWS_REGISTRY, saved_views.VIEW_KIND, fields, id=name,
                                         actor="cli")
                else:
                    result = backend.update(saved_views.VIEWS_REGISTRY, name, fields=fields, actor="cli")
        render.write_result(result, as_json)

    @view_group.command(name="list")
    @home_option
    @json_option
    def view_list(home: Path | None, as_json: bool) -> None:
        """Every saved view this node holds, and whether it keeps its results
        (materialized: its org's oldest views; live: answered by running the query)."""
        with open_backend(home) as backend:
            offline = not _bridge(backend)
            if offline:
                found = [saved_views.describe(saved_views.Definition.of(r), None)
                         for r in backend.iter_all(saved_views.VIEWS_REGISTRY)]
            else:
                found = backend.views()
        render.views(found, as_json, offline=offline)

    @view_group.command(name="show")
    @home_option
    @click.argument("name")
    @click.option("--limit", type=click.IntRange(1, saved_views.MAX_MEMBERS),
                  help="Results per page (default: the query's limit, else 20).")
    @click.option("--cursor", help="The next page: the cursor a previous answer printed.")
    @json_option
    def view_show(home: Path | None, name: str, limit: int | None, cursor: str | None, as_json: bool) -> None:
        """View NAME and its results as records, in the query's order."""
        with open_backend(home) as backend:
            offline = not _bridge(backend)
            if offline:
                from registrygrid.cli.main import _offline_index
                from registrygrid.search.service import index_path

                index, _ = _offline_index(backend, quiet=as_json)
                views = saved_views.Views(index_path(backend.home.path) / "views", index, backend,
                                          lambda: backend.engine.owner)
                answer = views.show(name, limit=limit, cursor=cursor)
            else:
                answer = backend.view(name, limit=limit, cursor=cursor)
        render.view(answer, as_json, sort_field=_sort_field(answer["view"]["query"]), offline=offline)

    @view_group.command(name="delete")
    @home_option
    @click.argument("name")
    @json_option
    def view_delete(home: Path | None, name: str, as_json: bool) -> None:
        """Delete view NAME (a signed tombstone; nodes drop its results)."""
        with open_backend(home) as backend:
            if _bridge(backend):
                result = backend.delete_view(name)
            else:
                result = backend.delete(saved_views.VIEWS_REGISTRY, name, actor="cli")
        render.write_result(result, as_json)
