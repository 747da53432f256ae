"""`rgrid peers`: the federation peers this home's node knows; `rgrid peers
deny|allow`: the operator's peer controls.

`rgrid peers` reads the peer table straight from LMDB through a read-only
environment (safe while the node writes; no bridge needed) and the running
node's ``node.json``. The node persists its table every few seconds, so the
view is at most that stale; with no node running it is the last known state.

`deny` and `allow` act on the running node's connections, so they go
through its bridge (``POST /v1/peers/deny|allow``, with the home's admin
token); with no node running there is nothing to deny.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from registrygrid.cli import render
from registrygrid.cli.backend import open_backend
from registrygrid.cli.options import home_option, json_option
from registrygrid.errors import Unavailable
from registrygrid.home import Home
from registrygrid.storage import peers as peer_store
from registrygrid.storage.store import Store


def _ago(ms: int) -> str:
    if not ms:
        return "never"
    seconds = max(0.0, time.time() - ms / 1000)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


# Ed25519 peer IDs all begin "12D3KooW" (the multihash and key-type
# prefix), so the table names a peer by its last characters, as git names a
# commit by its first; 8 base58 characters tell 2**46 peers apart.
SHORT_PEER_CHARS = 8


def short_peer(peer_id: str) -> str:
    return peer_id if len(peer_id) <= SHORT_PEER_CHARS + 1 else "…" + peer_id[-SHORT_PEER_CHARS:]


def peer_rows(home: Home) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the running node's info or None, one row per known peer)."""
    home.require()
    running = home.node_info()
    if not home.store_path.exists():
        return running, []
    store = Store(home.store_path, readonly=True)
    try:
        records = peer_store.load(store)
    finally:
        store.close()
    return running, rows_for(running, records)


def rows_for(running: dict[str, Any] | None, records: list[peer_store.PeerRecord]) -> list[dict[str, Any]]:
    rows = []
    for record in sorted(records, key=lambda r: (r.state != "connected", -r.last_seen_ms)):
        # With no node running nothing is connected, whatever was last stored.
        state = record.state if running is not None or record.state in ("banned", "denied") else "offline"
        rows.append({
            "peer": record.peer_id,
            "state": state,
            "addrs": record.addrs,
            "source": record.source,
            "last_seen": "now" if state == "connected" else _ago(record.last_seen_ms),
            "last_seen_ms": record.last_seen_ms,
            "latency_ms": record.latency_ms,
            "lag": record.lag,
            "ahead": record.ahead,
            "last_sync": _ago(record.last_sync_ms),
            "invalid": record.invalid,
            "rejected": record.rejected,
            "failures": record.failures,
            "note": record.note,
        })
    return rows


@contextlib.contextmanager
def _running_node(home: Path | None) -> Iterator[Any]:
    """The bridge client of the node running on ``home``; Unavailable when none runs."""
    from registrygrid.client import BridgeClient

    with open_backend(home) as backend:
        if not isinstance(backend, BridgeClient):
            raise Unavailable("no node runs on this home: a deny or allow is made by the running node (it cuts "
                              "its connections, and the node keeps it across restarts); start it with `rgrid "
                              "node start` (without --no-p2p), then deny or allow")
        yield backend


def _given(ctx: click.Context, name: str, value: Any) -> Any:
    """A subcommand's --home or --json, else the group's (`rgrid peers --home H deny ...`)."""
    if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE or ctx.parent is None:
        return value
    return ctx.parent.params.get(name) or value


def register(cli: click.Group) -> None:
    @cli.group(invoke_without_command=True)
    @click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="RGRID_HOME", default=None,
                  help="Node home directory (default $RGRID_HOME or ~/.registrygrid).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.pass_context
    def peers(ctx: click.Context, home: Path | None, as_json: bool) -> None:
        """Federation peers: state, addresses, last seen, latency, replication lag.

        `rgrid peers deny PEER...` cuts peers off until `rgrid peers allow PEER...`."""
        if ctx.invoked_subcommand is not None:
            return
        running, rows = peer_rows(Home(home))
        if as_json:
            render.dump_json({"node": running, "peers": rows})
            return
        if running is None:
            click.echo("no node is running on this home; showing the last known peers")
        else:
            render.whole_lines(f"node {running.get('peer_id')} listens on:", running.get("addrs", []))
        # Peer IDs and addresses are not columns: a cell cuts or folds what
        # does not fit the terminal, and a cut multiaddr does not dial when
        # copied. The table names each peer by the end of its ID; after it,
        # each peer's whole ID heads its addresses, one whole address a line.
        shown = [{**row, "peer": short_peer(row["peer"]),
                  "lag": "" if row["lag"] is None else f"{row['lag']} behind / {row['ahead']} ahead"}
                 for row in rows]
        render.rows(shown, False, columns=["peer", "state", "last_seen", "latency_ms", "lag", "last_sync",
                                           "invalid", "note"], title="peers", whole=["peer"])
        for row in rows:
            render.whole_lines(f"peer {row['peer']}" + (":" if row["addrs"] else " (no address known)"),
                               row["addrs"])

    @peers.command(name="deny")
    @home_option
    @click.argument("peer_ids", nargs=-1, required=True, metavar="PEER...")
    @json_option
    @click.pass_context
    def peers_deny(ctx: click.Context, home: Path | None, peer_ids: tuple[str, ...], as_json: bool) -> None:
        """Cut peers off and refuse them until `rgrid peers allow`.

        PEER... are libp2p peer IDs (12D3KooW...). The running node
        disconnects them, never dials them, drops the connections they open,
        and neither serves them nor takes anything from them. One-sided (they
        keep dialing and are refused: deny on both sides for a clean cut). A
        deny outlives a restart of the node; `rgrid peers allow` lifts it."""
        with _running_node(_given(ctx, "home", home)) as node:
            answer = node.deny_peers(peer_ids)
        if _given(ctx, "as_json", as_json):
            render.dump_json(answer)
            return
        render.whole_lines(f"denied {len(answer['denied'])} peers: cut off and refused until `rgrid peers allow`",
                           answer["denied"])
        render.whole_lines(f"still connected: {len(answer['connected'])} peers", answer["connected"])

    @peers.command(name="allow")
    @home_option
    @click.argument("peer_ids", nargs=-1, required=True, metavar="PEER...")
    @json_option
    @click.pass_context
    def peers_allow(ctx: click.Context, home: Path | None, peer_ids: tuple[str, ...], as_json: bool) -> None:
        """Take denied peers back: the running node dials them again at once.

        PEER... are libp2p peer IDs; allowing one that is not denied changes
        nothing."""
        with _running_node(_given(ctx, "home", home)) as node:
            answer = node.allow_peers(peer_ids)
        if _given(ctx, "as_json", as_json):
            render.dump_json(answer)
            return
        render.whole_lines(f"allowed {len(answer['allowed'])} peers: the node dials them again",
                           answer["allowed"])
