"""Resolving a registry through the bridge: `GET /v1/registries/{name}/resolve`,
`BridgeClient.resolve_registry` and `rgrid registry resolve`, against real
nodes, each with its home, LMDB store, py-libp2p host and Kademlia DHT on
127.0.0.1 and its bridge on a free loopback port.

A DHT server node keeps the values it puts (py-libp2p stores locally
first), so one node publishing its org's registries can resolve them
alone; the two-node test shows the lookup reaching another node's record."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from test_bridge_support import (
    NOTE_SCHEMA,
    OTHER,
    REGISTRY,
    UNLIMITED,
    Served,
    make_token,
    setup_notes,
)
from test_federation_support import FAST, LOOPBACK, Cluster, eventually

from registrygrid.cli.node_commands import build_components
from registrygrid.client import BridgeClient
from registrygrid.engine.ops import Put
from registrygrid.errors import (
    EX_DATAERR,
    EX_NOINPUT,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    NotFound,
    ValidationError,
)
from registrygrid.home import Home
from registrygrid.identity.keys import KeyPair
from registrygrid.node.bridge import Bridge, BridgeConfig
from registrygrid.node.bridge.openapi import schema_validator
from registrygrid.node.dht import RegistryDirectory
from registrygrid.node.federation import Federation, FederationConfig
from registrygrid.node.node import Node
from registrygrid.ports import unused_ports
from registrygrid.sdk import LocalRegistry

pytest_plugins = ("test_bridge_support",)

pytestmark = pytest.mark.timeout(120)

UNKNOWN = "nobody.published"


# ---------------------------------------------------------------- helpers


async def start_node(nursery: trio.Nursery, home: Home, *, bootstrap: Sequence[str] = (),
                     config: FederationConfig = FAST) -> Served:
    """A node with its bridge and its federation (whose DHT runs unless the config says not)."""
    bridge = Bridge(port=0, config=BridgeConfig(rate_limit=UNLIMITED))
    fed = Federation(listen=[LOOPBACK], bootstrap=list(bootstrap), federation=home.federation().name, config=config)
    node = Node(home, [bridge, fed])
    await nursery.start(node.run)
    info = json.loads((home.path / "bridge.json").read_text())
    return Served(node, bridge, home, info["url"], info["token"])


def federation_of(served: Served) -> Federation:
    fed = served.node.component("federation")
    assert isinstance(fed, Federation)
    return fed


def directory_of(served: Served) -> RegistryDirectory:
    directory = federation_of(served).directory
    assert directory is not None, "the DHT runs"
    return directory


def new_home(path: Path) -> Home:
    home = Home(path)
    home.init(org_name="test org")
    return home


def assert_resolution(body: dict[str, Any]) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in schema_validator("RegistryResolution").iter_errors(body)]
    assert not errors, errors


def assert_error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert not list(schema_validator("Error").iter_errors(response.json()))
    assert response.json()["error"]["code"] == code
    return str(response.json()["error"]["message"])


def rgrid(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # COLUMNS: wide enough that no table cell folds, so a test reads each fact from one line.
    return subprocess.run([sys.executable, "-m", "registrygrid", *args, "--home", str(home)], check=False,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RGRID_HOME": "", "COLUMNS": "200"})


@pytest.fixture
async def published(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Served]:
    """One node whose org owns test.notes and test.other, published to its DHT."""
    served = await start_node(nursery, new_home(tmp_path / "home"))
    await setup_notes(served)
    with trio.fail_after(30):
        done = await directory_of(served).publish()
    assert done["published"] >= 2, done
    yield served
    served.node.stop()


# ---------------------------------------------------------------- HTTP


async def test_a_published_registry_resolves_over_http_verified_with_its_host_as_provider(published: Served) -> None:
    with trio.fail_after(30):
        async with published.client() as client:
            identity = (await client.get("/v1/identity")).json()
            r = await client.get(f"/v1/registries/{REGISTRY}/resolve")
    assert r.status_code == 200, r.text
    body = r.json()
    assert_resolution(body)
    assert body["name"] == REGISTRY and body["source"] == "dht"
    assert body["descriptor"]["name"] == REGISTRY and body["descriptor"]["kinds"] == ["note"]
    assert body["owner"] == identity["org"]
    federation = published.home.federation()
    assert body["federations"] == [federation.id]
    # The node's key signs for its org, by the org's delegation.
    assert body["verification"] == {"signature": "valid", "signer": identity["did"],
                                    "authority": "delegated by the owner"}
    stored = published.node.registry.get("grid.registries", REGISTRY)
    assert body["change_id"] == stored["change_id"] and body["version"] == list(stored["updated_hlc"])
    me = federation_of(published).host.peer_id
    assert [p["peer_id"] for p in body["providers"]] == [me]
    assert body["providers"][0]["addrs"], "a provider comes with its addresses"


async def test_a_second_resolve_is_answered_from_the_cache_and_fresh_asks_the_dht_again(published: Served) -> None:
    with trio.fail_after(30):
        async with published.client() as client:
            sources = [(await client.get(f"/v1/registries/{REGISTRY}/resolve", params=params)).json()["source"]
                       for params in ({}, {}, {"fresh": "true"}, {"fresh": "false"})]
    assert sources == ["dht", "cache", "dht", "cache"]


async def test_an_unknown_registry_is_404_not_found_and_a_bad_name_422(published: Served) -> None:
    with trio.fail_after(30):
        async with published.client() as client:
            missing = await client.get(f"/v1/registries/{UNKNOWN}/resolve")
            bad_name = await client.get("/v1/registries/Not_A_Name/resolve")
            bad_flag = await client.get(f"/v1/registries/{REGISTRY}/resolve", params={"fresh": "perhaps"})
    assert UNKNOWN in assert_error(missing, 404, "not_found")
    assert_error(bad_name, 422, "validation_failed")
    assert_error(bad_flag, 400, "malformed_input")


async def test_a_token_scoped_to_one_registry_resolves_that_one_only(published: Served) -> None:
    with trio.fail_after(30):
        scoped = await make_token(published, "reader", registry=REGISTRY)
        async with published.client(scoped) as client:
            allowed = await client.get(f"/v1/registries/{REGISTRY}/resolve")
            refused = await client.get(f"/v1/registries/{OTHER}/resolve")
        async with published.client("rgt_AAAAAAAAAAAA.nope") as client:
            anonymous = await client.get(f"/v1/registries/{REGISTRY}/resolve")
    assert allowed.status_code == 200, allowed.text
    assert_error(refused, 403, "policy_denied")
    assert_error(anonymous, 401, "unauthorized")


async def test_a_node_started_without_the_dht_answers_503_unavailable(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(30):
        served = await start_node(nursery, new_home(tmp_path / "home"), config=FederationConfig(dht=False))
        await setup_notes(served)
        async with served.client() as client:
            r = await client.get(f"/v1/registries/{REGISTRY}/resolve")
        served.node.stop()
    assert "--no-dht" in assert_error(r, 503, "disabled")
    assert "Retry-After" not in r.headers  # it lasts until the node restarts: nothing to wait for


async def test_a_registry_another_node_owns_resolves_through_this_nodes_dht(nursery: trio.Nursery,
                                                                            tmp_path: Path) -> None:
    name = "acme.models"
    with trio.fail_after(90):
        nodes = Cluster(nursery, tmp_path, FAST)  # its homes are admitted to one federation
        owner = await start_node(nursery, nodes.home("owner"))
        asker = await start_node(nursery, nodes.home("asker"), bootstrap=federation_of(owner).addrs())
        members = [federation_of(owner), federation_of(asker)]
        owner_peer = members[0].host.peer_id
        await eventually(lambda: all(m.directory is not None and m.directory.dht is not None
                                     and m.directory.dht.get_routing_table_size() > 0 for m in members),
                         20, "both routing tables filled")
        [created] = await owner.node.submit([Put("grid.registries", "registry", {"name": name, "kinds": ["cluster"]},
                                                 record_id=name)])
        await directory_of(owner).publish()
        async with asker.client() as client:
            r = await client.get(f"/v1/registries/{name}/resolve", params={"fresh": "true"})
        for served in (owner, asker):
            served.node.stop()
    assert r.status_code == 200, r.text
    body = r.json()
    assert_resolution(body)
    assert body["owner"] == owner.node.engine.owner != asker.node.engine.owner
    assert body["change_id"] == created.change_id  # type: ignore[union-attr]
    assert owner_peer in {p["peer_id"] for p in body["providers"]}


# ---------------------------------------------------------------- the Python client


async def test_bridge_client_resolves_with_the_same_answer_and_typed_errors(published: Served) -> None:
    def work() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        with BridgeClient(published.url, token=published.admin) as client:
            first = client.resolve_registry(REGISTRY)
            cached = client.resolve_registry(REGISTRY)
            fresh = client.resolve_registry(REGISTRY, fresh=True)
            with pytest.raises(NotFound, match=UNKNOWN):
                client.resolve_registry(UNKNOWN)
            with pytest.raises(ValidationError):
                client.resolve_registry("Not_A_Name")
        return first, cached, fresh

    with trio.fail_after(30):
        first, cached, fresh = await trio.to_thread.run_sync(work)
    assert_resolution(first)
    assert (first["source"], cached["source"], fresh["source"]) == ("dht", "cache", "dht")
    same = {k: v for k, v in first.items() if k != "source"}
    assert {k: v for k, v in cached.items() if k != "source"} == same


# ---------------------------------------------------------------- the CLI


async def test_rgrid_registry_resolve_prints_descriptor_verification_and_providers(published: Served) -> None:
    home = published.home.path
    with trio.fail_after(60):
        shown = await trio.to_thread.run_sync(rgrid, home, "registry", "resolve", REGISTRY)
        again = await trio.to_thread.run_sync(rgrid, home, "registry", "resolve", REGISTRY, "--json")
        fresh = await trio.to_thread.run_sync(rgrid, home, "registry", "resolve", REGISTRY, "--fresh", "--json")
        missing = await trio.to_thread.run_sync(rgrid, home, "registry", "resolve", UNKNOWN)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    identity = published.node.registry.identity()
    described = published.node.registry.describe_registry(REGISTRY)  # as this node's engine reads it
    stored = published.node.registry.get("grid.registries", REGISTRY)
    peer = federation_of(published).host.peer_id
    assert out.startswith(f"{REGISTRY}  resolved from the DHT\n")
    facts = dict(m.groups() for m in re.finditer(r"^ (\w+(?: \w+)?) {2,}(\S.*?) *$", out, re.MULTILINE))
    assert facts == {
        "kinds": "note", "owner": identity["org"], "write policy": described["write_policy"],
        "conflict policy": described["conflict_policy"], "replication": described["replication"],
        "federations": published.home.federation().id, "version": json.dumps(stored["updated_hlc"]),
        "change": stored["change_id"], "claimed": facts["claimed"], "signed": facts["signed"],
        "signature": "valid", "signer": identity["did"], "authority": "delegated by the owner"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", facts["signed"]), facts
    # Each provider: its peer id, then each multiaddr whole on a line of its own, dialable as --bootstrap.
    lines = out.splitlines()
    at = lines.index(f"provider {peer}:")
    addrs = lines[at + 1:]
    assert addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") and a.endswith(f"/p2p/{peer}") for a in addrs), out

    assert again.returncode == 0 and json.loads(again.stdout)["source"] == "cache"
    assert fresh.returncode == 0 and json.loads(fresh.stdout)["source"] == "dht"
    assert_resolution(json.loads(fresh.stdout))
    assert missing.returncode == EX_NOINPUT and "error[not_found]" in missing.stderr


def test_rgrid_registry_resolve_without_a_running_node_says_to_start_it(tmp_path: Path) -> None:
    home = new_home(tmp_path / "home").path
    proc = rgrid(home, "registry", "resolve", REGISTRY)
    assert proc.returncode == EX_TEMPFAIL, proc.stderr
    assert "error[unavailable]" in proc.stderr and "rgrid node start" in proc.stderr
    assert proc.stdout == ""


# ---------------------------------------------------------------- rgrid node start --dht-client / --no-dht


def test_node_start_flags_configure_the_dht(tmp_path: Path) -> None:
    home = new_home(tmp_path / "home")
    [default] = build_components(home, {"bridge": False, "search": False})
    [client] = build_components(home, {"bridge": False, "search": False, "dht_client": True})
    [none] = build_components(home, {"bridge": False, "search": False, "dht": False})
    assert (default.config.dht, default.config.dht_client) == (True, False)
    assert (client.config.dht, client.config.dht_client) == (True, True)
    assert none.config.dht is False
    with pytest.raises(ValidationError, match="--dht-client"):
        build_components(home, {"bridge": False, "dht": False, "dht_client": True})
    with pytest.raises(ValidationError, match="--no-p2p"):
        build_components(home, {"bridge": False, "p2p": False, "dht_client": True})


def _start_process(home: Path, *flags: str) -> subprocess.Popen[str]:
    """`rgrid node start` with p2p on loopback and a bridge, once its bridge.json is there."""
    node = subprocess.Popen([sys.executable, "-m", "registrygrid", "node", "start", "--home", str(home),
                             "--listen", "/ip4/127.0.0.1/tcp/0", "--bridge-port", str(unused_ports(1)[0]),
                             "--log-level", "WARNING", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    bridge_file = home / "bridge.json"
    deadline = time.monotonic() + 30
    while not bridge_file.exists():
        assert node.poll() is None and time.monotonic() < deadline, node.communicate()
        time.sleep(0.05)
    return node


def _stop_process(node: subprocess.Popen[str]) -> None:
    if node.poll() is None:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


@pytest.mark.slow
def test_a_node_started_with_dht_client_publishes_its_orgs_registries_and_resolves_them(tmp_path: Path) -> None:
    home = new_home(tmp_path / "home")
    with LocalRegistry.open_home(home) as grid:  # before the node starts: the store directly
        grid.register_kind("note", 1, NOTE_SCHEMA, registry=REGISTRY)
        grid.create_registry(REGISTRY, ["note"])
    node = _start_process(home.path, "--dht-client")
    try:
        # The node publishes its org's registries as it starts; until then the name is unknown.
        deadline = time.monotonic() + 30
        while (proc := rgrid(home.path, "registry", "resolve", REGISTRY, "--json")).returncode != 0:
            assert proc.returncode == EX_NOINPUT, proc.stderr
            assert time.monotonic() < deadline, "never published"
            time.sleep(0.2)
        answer = json.loads(proc.stdout)
        assert answer["descriptor"]["kinds"] == ["note"] and answer["verification"]["signature"] == "valid"
    finally:
        _stop_process(node)
    assert node.returncode == 0, node.communicate()


@pytest.mark.slow
def test_a_node_started_with_no_dht_cannot_resolve(tmp_path: Path) -> None:
    home = new_home(tmp_path / "home")
    node = _start_process(home.path, "--no-dht")
    try:
        proc = rgrid(home.path, "registry", "resolve", REGISTRY)
    finally:
        _stop_process(node)
    # Lasting (until the node restarts with a DHT): EX_UNAVAILABLE, not "try again".
    assert proc.returncode == EX_UNAVAILABLE and "error[disabled]" in proc.stderr and "--no-dht" in proc.stderr
    assert node.returncode == 0, node.communicate()


async def test_rgrid_registry_transfer_gives_the_name_away_with_the_org_key(published: Served) -> None:
    home = published.home.path
    receiver = KeyPair(b"\x0b" * 32).did
    org = published.node.registry.identity()["org"]
    with trio.fail_after(90):
        given = await trio.to_thread.run_sync(rgrid, home, "registry", "transfer", REGISTRY, "--to", receiver,
                                              "--json")
        assert given.returncode == 0, given.stderr
        assert json.loads(given.stdout)["status"] == "updated"
        descriptor = published.node.registry.get("grid.registries", REGISTRY)["fields"]
        assert descriptor["transfer"]["to"] == receiver  # a signed change of the federation, with the statement
        await directory_of(published).publish()  # the pointer replaces this node's own record
        answer = await directory_of(published).resolve(REGISTRY, fresh=True)
        assert (answer["owner"], answer["holder"]) == (org, receiver)
        assert [(t["from"], t["to"]) for t in answer["transfers"]] == [(org, receiver)]
        shown = await trio.to_thread.run_sync(rgrid, home, "registry", "resolve", REGISTRY, "--fresh")
        again = await trio.to_thread.run_sync(rgrid, home, "registry", "transfer", REGISTRY, "--to", receiver)
        to_itself = await trio.to_thread.run_sync(rgrid, home, "registry", "transfer", OTHER, "--to", org)
        unknown = await trio.to_thread.run_sync(rgrid, home, "registry", "transfer", UNKNOWN, "--to", receiver)
    facts = dict(m.groups() for m in re.finditer(r"^ (\w+(?: \w+)?) {2,}(\S.*?) *$", shown.stdout, re.MULTILINE))
    assert facts["holder"] == f"{receiver} (given the name; has not published it yet)", shown.stdout
    assert facts["transfers"].startswith(f"{org} -> {receiver} at "), shown.stdout
    assert again.returncode == EX_DATAERR and "given to" in again.stderr
    assert to_itself.returncode == EX_DATAERR and "belongs to" in to_itself.stderr
    assert unknown.returncode == EX_NOINPUT


def test_rgrid_registry_transfer_without_a_running_node_says_to_start_it(tmp_path: Path) -> None:
    home = new_home(tmp_path / "home").path
    proc = rgrid(home, "registry", "transfer", REGISTRY, "--to", KeyPair(b"\x0b" * 32).did)
    assert proc.returncode == EX_TEMPFAIL and "rgrid node start" in proc.stderr, proc.stderr
