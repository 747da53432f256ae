"""Options that many `rgrid` commands share, defined once."""

from __future__ import annotations

from pathlib import Path

import click

home_option = click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), envvar="RGRID_HOME", default=None,
    help="Node home directory (default $RGRID_HOME or ~/.registrygrid).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
org_key_option = click.option("--org-key", "org_key_file", type=click.Path(dir_okay=False, path_type=Path),
                              help="The org key file, when it is not kept in this home.")
