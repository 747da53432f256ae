"""Node homes for a simulated or benchmarked federation."""

from __future__ import annotations

from pathlib import Path

from registrygrid.home import Home
from registrygrid.membership import (
    create_federation,
    current_genesis,
    invite_org,
    join_federation,
)


def federation_homes(root: Path, count: int, federation: str) -> list[Home]:
    """``count`` fresh homes under ``root`` (n0, n1, ...), each its own org,
    all members of one federation: the first org founds it and invites each
    other org."""
    homes: list[Home] = []
    for i in range(count):
        home = Home(root / f"n{i}")
        home.init(org_name=f"n{i}")
        if not homes:
            create_federation(home, federation)
        else:
            join_federation(home, current_genesis(homes[0]), invite_org(homes[0], home.org().org))  # type: ignore[union-attr]
        homes.append(home)
    return homes
