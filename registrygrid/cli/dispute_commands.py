"""`rgrid disputes list|show|resolve`: what the conflict policy leaves to people.

Two kinds (docs/conflicts.md): a field dispute, a field under the
``manual`` conflict rule that concurrent writes set differently; and an
equivocation, a key that signed two different changes with one sequence.
Like every command these go through the running node's bridge when a node
holds the home, and open the store otherwise; both backends
(``LocalRegistry``, ``BridgeClient``) have the same three methods. A
resolution is a record of grid.disputes signed by this node's key, so it
counts only where that key's org may decide.
"""

from __future__ import annotations

from pathlib import Path

import click

from registrygrid.cli import render
from registrygrid.cli.backend import open_backend
from registrygrid.cli.options import home_option, json_option
from registrygrid.cli.values import parse_value
from registrygrid.crdt.conflicts import ABSENT
from registrygrid.dispute_views import STATUSES
from registrygrid.errors import ValidationError


def register(cli: click.Group) -> None:

    @cli.group()
    def disputes() -> None:
        """Disputes: manual conflicts and equivocations, and their resolutions."""

    @disputes.command(name="list")
    @home_option
    @click.option("--status", type=click.Choice(STATUSES), help="Only the disputes in this status.")
    @json_option
    def disputes_list(home: Path | None, status: str | None, as_json: bool) -> None:
        """Every dispute this node knows: field disputes, then equivocations."""
        with open_backend(home) as backend:
            found = backend.disputes(status=status)
        render.disputes(found, as_json)

    @disputes.command(name="show")
    @home_option
    @click.argument("dispute_id")
    @json_option
    def disputes_show(home: Path | None, dispute_id: str, as_json: bool) -> None:
        """One dispute: the competing writes and their diff, or the two changes
        of an equivocation, and every resolution with whether it counts."""
        with open_backend(home) as backend:
            found = backend.dispute(dispute_id)
        render.dispute(found, as_json)

    @disputes.command(name="resolve")
    @home_option
    @click.argument("dispute_id")
    @click.option("--value", metavar="JSON", help="The value the field takes: JSON, or else a plain string.")
    @click.option("--remove", is_flag=True, help="The field is removed instead.")
    @click.option("--note", default="", help="Why, for the people reading the dispute.")
    @json_option
    def disputes_resolve(home: Path | None, dispute_id: str, value: str | None, remove: bool, note: str,
                         as_json: bool) -> None:
        """File a resolution signed by this node's key: the value a disputed
        field takes (--value or --remove), or, with neither, the
        acknowledgement of an equivocation (its key stays quarantined)."""
        if value is not None and remove:
            raise ValidationError("give --value or --remove, not both")
        with open_backend(home) as backend:
            result = backend.resolve_dispute(dispute_id, value=ABSENT if value is None else parse_value(value),
                                             removed=remove, note=note, actor="cli")
        render.write_result(result, as_json)
