"""The operator's peer controls: `POST /v1/peers/deny` and `/allow`, `GET
/v1/peers`, `BridgeClient.deny_peers`/`allow_peers` and `rgrid peers
deny|allow`, against real nodes in one trio process (each its own home,
LMDB store and py-libp2p host on 127.0.0.1), with their bridges on free
loopback ports. A deny is what the network simulator's real-node mode
partitions a federation of node processes with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from test_bridge_support import UNLIMITED, Served
from test_federation_support import Cluster, Member, cluster, eventually, full_mesh

from registrygrid.client import BridgeClient
from registrygrid.errors import EX_TEMPFAIL, PolicyDenied, ValidationError
from registrygrid.home import Home
from registrygrid.identity.keys import KeyPair
from registrygrid.node.bridge import Bridge, BridgeConfig
from registrygrid.node.bridge.openapi import MAX_PEER_IDS, schema_validator
from registrygrid.node.peers import PeerTable

pytest_plugins = ("test_bridge_support",)  # its fixtures: served

pytestmark = pytest.mark.timeout(120)

# A deny has held once it held this long: twice FAST's backoff cap (1 s), so
# a redial the dial loop would make, and the anti-entropy round (2 s) that
# would carry a write across, fall inside the window.
HOLDS_S = 2.0


# ---------------------------------------------------------------- helpers


async def start_with_bridge(nodes: Cluster, name: str, bootstrap: list[str] | None = None) -> Member:
    return await nodes.start(name, bootstrap or [],
                             components=[Bridge(port=0, config=BridgeConfig(rate_limit=UNLIMITED))])


def bridge_of(member: Member) -> Bridge:
    bridge = member.node.component("bridge")
    assert isinstance(bridge, Bridge) and bridge.cli_token is not None
    return bridge


def http(member: Member, token: str | None = None) -> httpx.AsyncClient:
    """An HTTP client of the member's bridge; the node's own admin token by default."""
    bridge = bridge_of(member)
    return httpx.AsyncClient(base_url=bridge.url, timeout=20,
                             headers={"Authorization": f"Bearer {token or bridge.cli_token}"})


async def token(member: Member, role: str, **extra: Any) -> str:
    async with http(member) as client:
        r = await client.post("/v1/tokens", json={"role": role, **extra})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


def connected(a: Member, b: Member) -> bool:
    """A libp2p connection between them, seen from either side."""
    return (b.peer_id in a.fed.host.connected_peers()  # type: ignore[union-attr]
            or a.peer_id in b.fed.host.connected_peers())  # type: ignore[union-attr]


def admitted(a: Member, b: Member) -> bool:
    """Each admitted the other at the hello: gossip and sync flow."""
    return b.peer_id in a.fed.admitted and a.peer_id in b.fed.admitted


def holds(member: Member, record_id: str) -> bool:
    return any(r["id"] == record_id for r in member.registry.iter_all("grid.clusters"))


async def stays(check: Callable[[], bool], seconds: float, what: str) -> None:
    """``check`` holds at every look for ``seconds`` (the absence of an event
    can only be watched for a while); fail at the first look it does not."""
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        assert check(), f"no longer true: {what}"
        await trio.sleep(0.05)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert not list(schema_validator("Error").iter_errors(response.json()))
    assert error["code"] == code, error
    return error


def rgrid(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "registrygrid", *args], check=False, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "RGRID_HOME": "", "COLUMNS": "250"})


# ---------------------------------------------------------------- HTTP


async def test_deny_over_http_cuts_a_peer_off_until_allow_and_a_write_crosses_only_after(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cluster(tmp_path) as nodes:
            a = await start_with_bridge(nodes, "a")
            b = await start_with_bridge(nodes, "b", a.fed.addrs())
            await full_mesh([a, b])
            await eventually(lambda: admitted(a, b), 10, "both admitted at the hello")

            # Both sides deny, as the simulator partitions: a over HTTP, b through BridgeClient.
            async with http(a) as client:
                r = await client.post("/v1/peers/deny", json={"peers": [b.peer_id, b.peer_id]})
            assert r.status_code == 200, r.text
            assert not list(schema_validator("PeersDenied").iter_errors(r.json()))
            assert r.json() == {"denied": [b.peer_id], "connected": []}  # answered once b is cut off
            with BridgeClient(bridge_of(b).url, token=bridge_of(b).cli_token) as b_client:
                denied = await trio.to_thread.run_sync(b_client.deny_peers, [a.peer_id])
                status = await trio.to_thread.run_sync(b_client.peers)
            assert denied["denied"] == [a.peer_id] and a.peer_id not in denied["connected"]
            assert status["peer_id"] == b.peer_id and status["denied"] == [a.peer_id]
            await eventually(lambda: not connected(a, b) and not a.fed.admitted and not b.fed.admitted,
                             10, "the two cut apart")

            await a.write("from-a-", 1)
            await b.write("from-b-", 1)
            # Neither dial loop redials the other, and nothing crosses: no gossip, no sync.
            # (py-libp2p's own auto-connector may open a connection; the node
            # drops it on sight, so a look may catch it for a moment: what
            # must never happen is an admission, or a write crossing.)
            dials = (a.fed.metrics["dial.ok"], b.fed.metrics["dial.ok"])
            await stays(lambda: b.peer_id not in a.fed.admitted and a.peer_id not in b.fed.admitted
                        and not holds(b, "from-a-0") and not holds(a, "from-b-0"),
                        HOLDS_S, "denied peers are never admitted and no write crosses")
            await eventually(lambda: not connected(a, b), 10, "any connection py-libp2p opened dropped")
            assert (a.fed.metrics["dial.ok"], b.fed.metrics["dial.ok"]) == dials
            async with http(a) as client:
                listed = (await client.get("/v1/peers")).json()
            assert not list(schema_validator("PeerStatus").iter_errors(listed))
            assert listed == {"peer_id": a.peer_id, "connected": [], "denied": [b.peer_id]}

            async with http(a) as client:
                r = await client.post("/v1/peers/allow", json={"peers": [b.peer_id]})
            assert r.status_code == 200 and r.json() == {"allowed": [b.peer_id]}, r.text
            with BridgeClient(bridge_of(b).url, token=bridge_of(b).cli_token) as b_client:
                assert await trio.to_thread.run_sync(b_client.allow_peers, [a.peer_id]) == {"allowed": [a.peer_id]}
            await eventually(lambda: admitted(a, b), 10, "reconnected and admitted again")
            await eventually(lambda: holds(b, "from-a-0") and holds(a, "from-b-0"), 10,
                             "each side's write reached the other")
            async with http(a) as client:
                assert (await client.get("/v1/peers")).json()["denied"] == []


async def test_only_an_admin_token_controls_peers_and_a_bad_id_is_422_with_its_pointer(
        tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cluster(tmp_path) as nodes:
            a = await start_with_bridge(nodes, "a")
            writer, reader = await token(a, "writer"), await token(a, "reader")
            others = [KeyPair.generate().peer_id for _ in range(3)]
            body = {"peers": others}

            for who in (writer, reader):
                async with http(a, who) as client:
                    assert_error(await client.post("/v1/peers/deny", json=body), 403, "policy_denied")
                    assert_error(await client.post("/v1/peers/allow", json=body), 403, "policy_denied")
            async with http(a, reader) as client:  # the list is a read
                assert (await client.get("/v1/peers")).status_code == 200

            async with http(a) as client:
                # Shaped like a peer ID (base58) but no multihash: libp2p's parser refuses it, by index.
                bad = assert_error(await client.post("/v1/peers/deny", json={"peers": [*others, "12D3KooWnot"]}),
                                   422, "validation_failed")
                assert bad["details"][0]["path"] == "/peers/3" and "12D3KooWnot" in bad["details"][0]["message"]
                # Not even shaped like one: the body's schema refuses it, by index too.
                bad = assert_error(await client.post("/v1/peers/allow", json={"peers": [others[0], "no peer!"]}),
                                   422, "validation_failed")
                assert bad["details"][0]["path"] == "/peers/1"
                own = assert_error(await client.post("/v1/peers/deny", json={"peers": [a.peer_id]}),
                                   422, "validation_failed")
                assert own["details"][0] == {"path": "/peers/0", "message": "this node's own peer ID"}
                for peers in ([], others * (MAX_PEER_IDS // 3 + 1)):
                    assert_error(await client.post("/v1/peers/deny", json={"peers": peers}), 422,
                                 "validation_failed")
                assert_error(await client.post("/v1/peers/deny", content=b"[", headers={
                    "Content-Type": "application/json"}), 400, "malformed_input")
                assert (await client.get("/v1/peers")).json()["denied"] == []  # no refused call denied anyone

                # Peers not yet known are denied ahead; the call is audited.
                r = await client.post("/v1/peers/deny", json=body)
                assert r.status_code == 200 and r.json()["denied"] == others, r.text
                assert (await client.get("/v1/peers")).json()["denied"] == sorted(others)
            assert all(a.fed.peers.blocked(p) for p in others)  # type: ignore[union-attr]

            def audited() -> bool:
                return any(e.target == "peers" and e.action == "update" and e.reason.startswith("deny 3 peers: ")
                           for e in a.registry.audit_log(reverse=True, limit=50))

            await eventually(audited, 10, "the deny in the audit ledger")


async def test_a_node_without_a_federation_answers_503_naming_why(served: Served) -> None:
    peer = KeyPair.generate().peer_id
    with trio.fail_after(20):
        async with served.client() as client:
            for response in (await client.get("/v1/peers"),
                             await client.post("/v1/peers/deny", json={"peers": [peer]}),
                             await client.post("/v1/peers/allow", json={"peers": [peer]})):
                error = assert_error(response, 503, "disabled")
                assert "no federation" in error["message"] and "--no-p2p" in error["message"]
        with BridgeClient(served.url, token=served.admin) as grid:
            with pytest.raises(ValidationError):
                await trio.to_thread.run_sync(grid.deny_peers, ["nope!"])
            reader = BridgeClient(served.url, token=(await _reader(served)))
            with reader, pytest.raises(PolicyDenied):
                await trio.to_thread.run_sync(reader.deny_peers, [peer])


async def _reader(served: Served) -> str:
    async with served.client() as client:
        return str((await client.post("/v1/tokens", json={"role": "reader"})).json()["token"])


# ---------------------------------------------------------------- the CLI


async def test_rgrid_peers_deny_and_allow_go_through_the_running_nodes_bridge(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with cluster(tmp_path) as nodes:
            a = await start_with_bridge(nodes, "a")
            b = await nodes.start("b", a.fed.addrs())
            await eventually(lambda: admitted(a, b), 15, "both admitted at the hello")
            home = str(a.home.path)

            denied = await trio.to_thread.run_sync(rgrid, "peers", "deny", b.peer_id, "--home", home, "--json")
            assert denied.returncode == 0, denied.stderr
            assert json.loads(denied.stdout) == {"denied": [b.peer_id], "connected": []}
            # One-sided: b keeps dialing and is refused each time, never admitted.
            await stays(lambda: b.peer_id not in a.fed.admitted, HOLDS_S, "a never admits b again")
            # b's redial (after its backoff) may come past that window on a loaded machine.
            await eventually(lambda: a.fed.metrics["peers.refused"] >= 1, 20, "b's redial refused")

            listed: dict[str, Any] = {}
            for _ in range(10):  # the table is persisted every 0.3 s (FAST); the first look nearly always sees it
                listing = await trio.to_thread.run_sync(rgrid, "peers", "--home", home, "--json")
                assert listing.returncode == 0, listing.stderr
                listed = {row["peer"]: row["state"] for row in json.loads(listing.stdout)["peers"]}
                if listed.get(b.peer_id) == "denied":
                    break
            assert listed[b.peer_id] == "denied", listed

            # The group's --home serves its subcommands too.
            allowed = await trio.to_thread.run_sync(rgrid, "peers", "--home", home, "allow", b.peer_id)
            assert allowed.returncode == 0, allowed.stderr
            assert allowed.stdout.splitlines() == ["allowed 1 peers: the node dials them again", b.peer_id]
            await eventually(lambda: admitted(a, b), 15, "b admitted again")

            bad = await trio.to_thread.run_sync(rgrid, "peers", "deny", "12D3KooWnot", "--home", home)
            assert bad.returncode == ValidationError.exit_code, bad.stderr
            assert "error[validation_failed]" in bad.stderr and "/peers/0" in bad.stderr


def test_rgrid_peers_deny_without_a_running_node_says_the_running_node_makes_it(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(org_name="test org")
    for command in ("deny", "allow"):
        proc = rgrid("peers", command, KeyPair.generate().peer_id, "--home", str(home.path))
        assert proc.returncode == EX_TEMPFAIL, proc.stderr
        assert "error[unavailable]" in proc.stderr and "no node runs on this home" in proc.stderr
        assert "rgrid node start" in proc.stderr and proc.stdout == ""
    listed = rgrid("peers", "--home", str(home.path), "--json")  # the listing works as before
    assert listed.returncode == 0 and json.loads(listed.stdout) == {"node": None, "peers": []}


# ---------------------------------------------------------------- the table


def test_a_full_peer_table_never_evicts_a_denied_peer() -> None:
    """Eviction makes room for peers learned by peer exchange; forgetting a
    denied one would lift its deny."""
    peers = PeerTable("me", max_known=2)
    peers.deny("denied")
    peers.add(["/ip4/127.0.0.1/tcp/1/p2p/learned"], "learned", 0.0)
    peers.add(["/ip4/127.0.0.1/tcp/2/p2p/newer"], "learned", 0.0)
    assert set(peers.peers) == {"denied", "newer"} and peers.blocked("denied")
    assert peers.denied_ids() == ["denied"]
