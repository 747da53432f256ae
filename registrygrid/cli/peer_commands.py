"""`rgrid peers`: the federation peers this home's node knows.

Reads the peer table straight from LMDB through a read-only environment
(safe while the node writes; no bridge needed) and the running node's
``node.json``. The node persists its table every few seconds, so the view is
at most that stale; with no node running it is the last known state.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from registrygrid.cli import render
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


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="RGRID_HOME", default=None,
                  help="Node home directory (default $RGRID_HOME or ~/.registrygrid).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def peers(home: Path | None, as_json: bool) -> None:
        """Federation peers: state, addresses, last seen, latency, replication lag."""
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
