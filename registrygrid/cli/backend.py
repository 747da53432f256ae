"""Where a CLI command's work happens: in this process, or in the running node.

With no node on the home, the command opens the store itself (taking the
home's writer lock for the command's duration). While a node holds the lock,
commands go through the node's local HTTP bridge with the home's admin
token, so the node gossips every write and its caches stay right. Read-only
integrity checks (``verify``, ``audit verify``) may read LMDB directly even
then: LMDB readers never block or disturb the writer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from registrygrid.errors import HomeLocked
from registrygrid.home import Home
from registrygrid.sdk import LocalRegistry, StoreChecks


@contextlib.contextmanager
def open_backend(home_path: Path | None, *, direct_read: bool = False, reads_only: bool = False) -> Iterator[Any]:
    """The running node's bridge, or the home's store opened here.
    ``direct_read``: the store read-only even while a node runs (integrity
    checks); ``reads_only``: read-only when no node runs, holding no lock,
    for a command that may read for long (``feed tail --follow`` kept every
    writer and the node itself out of the home while it followed)."""
    home = Home(home_path)
    home.require()
    holder = home.lock_holder()
    if (holder is None and reads_only and home.store_path.exists()) or (holder is not None and direct_read):
        checks = StoreChecks(home)  # LMDB readers never block or disturb the writer
        try:
            yield checks
        finally:
            checks.close()
        return
    if holder is not None:
        bridge = _bridge_client(home)
        if bridge is None:
            raise HomeLocked(f"{home.path} is in use by another process ({holder}) that serves no bridge")
        with bridge:
            yield bridge
        return
    registry = LocalRegistry.open_home(home)
    try:
        yield registry
    finally:
        registry.close()


def publish_statement(home: Home, kind: str, record_id: str, fields: dict[str, Any]) -> str:
    """Put a signed statement into grid.members (through the running node if
    one runs, so it is gossiped at once) unless it is there; its status:
    created, or unchanged."""
    from registrygrid.errors import NotFound
    from registrygrid.trust.statements import MEMBERS_REGISTRY

    with open_backend(home.path) as backend:
        try:
            backend.get(MEMBERS_REGISTRY, record_id)
        except NotFound:
            return str(backend.put(MEMBERS_REGISTRY, kind, fields, id=record_id).status)
        return "unchanged"


def _bridge_client(home: Home) -> Any:
    try:
        from registrygrid.client import RATE_LIMITS_ONLY, BridgeClient
    except ImportError:
        return None
    # A 429 is waited out (an import sends thousands of requests); anything
    # else is one attempt: a command's error goes to a person (or a script)
    # who can run it again at once, rather than wait out a 503 that clears
    # in a moment (a lasting one, 503 disabled, is never retried anyway).
    return BridgeClient.for_home(home, retry=RATE_LIMITS_ONLY)
