"""Reading another federation's public registry through the bridge:
`GET /v1/registries/{name}/remote`, `BridgeClient.read_remote`, and
`rgrid list --remote` / `rgrid get --remote`, against real nodes of two
federations, each with its home, LMDB store, py-libp2p host and Kademlia
DHT on 127.0.0.1.

Federation one is a single node (no bridge) whose org owns a public
registry and a federation-scoped one, both published to the DHT; federation
two is the reading node, with its bridge on a free loopback port. The two
share a DHT (the reader bootstraps from the owner) and nothing else: no
change of federation one is ever stored on the reader."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from test_bridge_support import UNLIMITED, Served, make_token
from test_federation_support import FAST, LOOPBACK, Cluster, Member, eventually

from registrygrid.client import BridgeClient
from registrygrid.engine.ops import Put, Update
from registrygrid.errors import (
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_TEMPFAIL,
    NotFound,
    PolicyDenied,
    RegistryError,
    ValidationError,
)
from registrygrid.home import Home
from registrygrid.node.bridge import Bridge, BridgeConfig
from registrygrid.node.bridge.openapi import schema_validator
from registrygrid.node.federation import Federation
from registrygrid.node.node import Node

pytest_plugins = ("test_bridge_support",)

pytestmark = pytest.mark.timeout(120)

PUBLIC = "acme.models"
PRIVATE = "acme.internal"  # replication scope "federation": read by its federation's members only
UNKNOWN = "nobody.published"
GPUS = [f"gpu-{i}" for i in range(3)]


# ---------------------------------------------------------------- helpers


@dataclass
class Grids:
    owner: Member  # federation one: owns PUBLIC and PRIVATE, hosts them, published them
    reader: Served  # federation two: reads through its bridge

    @property
    def remote(self) -> str:
        return f"/v1/registries/{PUBLIC}/remote"


async def start_reader(nursery: trio.Nursery, home: Home, bootstrap: list[str]) -> Served:
    bridge = Bridge(port=0, config=BridgeConfig(rate_limit=UNLIMITED))
    fed = Federation(listen=[LOOPBACK], bootstrap=bootstrap, federation=home.federation().name, config=FAST)
    node = Node(home, [bridge, fed])
    await nursery.start(node.run)
    info = json.loads((home.path / "bridge.json").read_text())
    return Served(node, bridge, home, info["url"], info["token"])


def federation_of(served: Served) -> Federation:
    fed = served.node.component("federation")
    assert isinstance(fed, Federation)
    return fed


def holds(served: Served, registry: str) -> bool:
    try:
        served.node.registry.describe_registry(registry)
        return True
    except RegistryError:
        return False


def assert_remote_read(body: dict[str, Any]) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in schema_validator("RemoteRead").iter_errors(body)]
    assert not errors, errors


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert not list(schema_validator("Error").iter_errors(response.json()))
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


def rgrid(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # COLUMNS: wide enough that no table cell folds, so a test reads each fact from one line.
    return subprocess.run([sys.executable, "-m", "registrygrid", *args, "--home", str(home)], check=False,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RGRID_HOME": "", "COLUMNS": "200"})


@pytest.fixture
async def grids(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Grids]:
    one = Cluster(nursery, tmp_path / "one", FAST, name="fed-one")
    two = Cluster(nursery, tmp_path / "two", FAST, name="fed-two")
    with trio.fail_after(60):
        owner = await one.start("owner")
        reader = await start_reader(nursery, two.home("reader"), owner.fed.addrs())
        await owner.node.submit([Put("grid.registries", "registry",
                                     {"name": PUBLIC, "kinds": ["cluster"], "replication": {"scope": "public"}},
                                     record_id=PUBLIC),
                                 Put("grid.registries", "registry", {"name": PRIVATE, "kinds": ["cluster"]},
                                     record_id=PRIVATE)])
        await owner.node.submit([Put(PUBLIC, "cluster", {"name": gpu}, record_id=gpu) for gpu in GPUS]
                                + [Put(PRIVATE, "cluster", {"name": "secret"}, record_id="secret")])
        await owner.node.submit([Update(PUBLIC, "gpu-0", patch={"region": "eu"})])
        members = [owner.fed, federation_of(reader)]
        await eventually(lambda: all(m.directory is not None and m.directory.dht is not None
                                     and m.directory.dht.get_routing_table_size() > 0 for m in members),
                         20, "both routing tables filled")
        assert owner.fed.directory is not None
        done = await owner.fed.directory.publish()
        assert done["published"] >= 2, done
    yield Grids(owner, reader)
    reader.node.stop()
    owner.node.stop()


# ---------------------------------------------------------------- HTTP


async def test_a_public_registry_of_another_federation_reads_over_http_verified_from_its_host(grids: Grids) -> None:
    with trio.fail_after(60):
        async with grids.reader.client() as client:
            everything = await client.get(grids.remote)
            one = await client.get(grids.remote, params={"record": "gpu-1"})
    assert everything.status_code == 200, everything.text
    body = everything.json()
    assert_remote_read(body)
    assert body["registry"] == PUBLIC
    assert body["provider"] == grids.owner.peer_id
    assert body["owner"] == grids.owner.node.engine.owner != grids.reader.node.engine.owner
    # The descriptor, three creates and one update, each applied (so checked) in the scratch store.
    assert body["verified"]["changes"] >= 5
    assert [r["id"] for r in body["records"]] == GPUS
    gpu0 = body["records"][0]
    assert gpu0["fields"] == {"name": "gpu-0", "region": "eu"}
    assert gpu0 == grids.owner.registry.get(PUBLIC, "gpu-0")  # the record as its host shows it
    assert one.status_code == 200, one.text
    assert_remote_read(one.json())
    assert [r["id"] for r in one.json()["records"]] == ["gpu-1"]
    assert not holds(grids.reader, PUBLIC), "read, not replicated: nothing of it is stored on the reader"


async def test_a_registry_that_is_not_public_is_403_policy_denied(grids: Grids) -> None:
    with trio.fail_after(60):
        async with grids.reader.client() as client:
            r = await client.get(f"/v1/registries/{PRIVATE}/remote")
    assert "not public" in assert_error(r, 403, "policy_denied")["message"]
    assert not holds(grids.reader, PRIVATE)


async def test_an_unknown_registry_or_record_is_404_and_a_bad_record_id_422(grids: Grids) -> None:
    with trio.fail_after(60):
        async with grids.reader.client() as client:
            no_registry = await client.get(f"/v1/registries/{UNKNOWN}/remote")
            no_record = await client.get(grids.remote, params={"record": "gpu-9"})
            bad_record = await client.get(grids.remote, params={"record": "not an id!"})
            bad_name = await client.get("/v1/registries/Not_A_Name/remote")
    assert UNKNOWN in assert_error(no_registry, 404, "not_found")["message"]
    assert "gpu-9" in assert_error(no_record, 404, "not_found")["message"]
    assert_error(bad_record, 422, "validation_failed")
    assert_error(bad_name, 422, "validation_failed")


async def test_a_token_scoped_to_one_registry_reads_that_one_only(grids: Grids) -> None:
    with trio.fail_after(60):
        scoped = await make_token(grids.reader, "reader", registry=PUBLIC)
        elsewhere = await make_token(grids.reader, "reader", registry=PRIVATE)
        async with grids.reader.client(scoped) as client:
            allowed = await client.get(grids.remote, params={"record": "gpu-2"})
        async with grids.reader.client(elsewhere) as client:
            refused = await client.get(grids.remote)
        async with grids.reader.client("rgt_AAAAAAAAAAAA.nope") as client:
            anonymous = await client.get(grids.remote)
    assert allowed.status_code == 200, allowed.text
    assert [r["id"] for r in allowed.json()["records"]] == ["gpu-2"]
    assert_error(refused, 403, "policy_denied")
    assert_error(anonymous, 401, "unauthorized")


# ---------------------------------------------------------------- the Python client


async def test_bridge_client_reads_remote_with_the_http_answer_and_typed_errors(grids: Grids) -> None:
    served = grids.reader

    def work() -> tuple[dict[str, Any], dict[str, Any]]:
        with BridgeClient(served.url, token=served.admin) as client:
            everything = client.read_remote(PUBLIC)
            one = client.read_remote(PUBLIC, record_id="gpu-0")
            with pytest.raises(NotFound, match=UNKNOWN):
                client.read_remote(UNKNOWN)
            with pytest.raises(PolicyDenied, match="not public"):
                client.read_remote(PRIVATE)
            with pytest.raises(ValidationError):
                client.read_remote("Not_A_Name")
        return everything, one

    with trio.fail_after(60):
        everything, one = await trio.to_thread.run_sync(work)
    assert_remote_read(everything)
    assert [r["id"] for r in everything["records"]] == GPUS
    assert everything["provider"] == one["provider"] == grids.owner.peer_id
    assert one["records"] == [everything["records"][0]]


# ---------------------------------------------------------------- the CLI


def _facts(out: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^ ?(\w+(?: \w+)?) {2,}(\S.*?) *$", out, re.MULTILINE))


async def test_rgrid_list_remote_shows_where_the_records_came_from_then_the_records(grids: Grids) -> None:
    home = grids.reader.home.path
    with trio.fail_after(60):
        shown = await trio.to_thread.run_sync(rgrid, home, "list", PUBLIC, "--remote")
        as_json = await trio.to_thread.run_sync(rgrid, home, "list", PUBLIC, "--remote", "--json")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.startswith(f"{PUBLIC}  read from another federation, verified\n"), out
    facts = _facts(out)
    assert facts["provider"] == grids.owner.peer_id
    assert facts["owner"] == grids.owner.node.engine.owner
    assert int(facts["changes verified"]) >= 5
    assert facts["descriptor"] == "the one its owner signed into the DHT"
    assert facts["signatures"] == "every one checked"
    # Then the table `rgrid list` prints: one row a record, its registry, id, kind and name.
    rows = [line for line in out.splitlines() if PUBLIC in line and "gpu-" in line]
    assert [re.findall(r"gpu-\d", row) for row in rows] == [[gpu, gpu] for gpu in GPUS]
    assert all("cluster" in row for row in rows)

    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert_remote_read(answer)  # the node's answer as is
    assert [r["id"] for r in answer["records"]] == GPUS and answer["provider"] == grids.owner.peer_id


async def test_rgrid_get_remote_shows_one_record_as_rgrid_get_does(grids: Grids) -> None:
    home = grids.reader.home.path
    with trio.fail_after(60):
        shown = await trio.to_thread.run_sync(rgrid, home, "get", PUBLIC, "gpu-0", "--remote")
        as_json = await trio.to_thread.run_sync(rgrid, home, "get", PUBLIC, "gpu-0", "--remote", "--json")
        missing = await trio.to_thread.run_sync(rgrid, home, "get", PUBLIC, "gpu-9", "--remote")
        private = await trio.to_thread.run_sync(rgrid, home, "get", PRIVATE, "secret", "--remote")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.startswith(f"{PUBLIC}  read from another federation, verified\n"), out
    assert _facts(out)["provider"] == grids.owner.peer_id
    assert f"{PUBLIC}/gpu-0" in out  # the record's title, as `rgrid get` shows it
    fields_json = out[out.index("{"):]
    assert json.loads(fields_json) == {"name": "gpu-0", "region": "eu"}

    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert_remote_read(answer)
    assert [r["id"] for r in answer["records"]] == ["gpu-0"]
    assert missing.returncode == EX_NOINPUT and "error[not_found]" in missing.stderr
    assert private.returncode == EX_NOPERM and "error[policy_denied]" in private.stderr


def test_rgrid_remote_without_a_running_node_says_to_start_it(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(org_name="test org")
    for args in (("list", PUBLIC, "--remote"), ("get", PUBLIC, "gpu-0", "--remote")):
        proc = rgrid(home.path, *args)
        assert proc.returncode == EX_TEMPFAIL, proc.stderr
        assert "error[unavailable]" in proc.stderr and "rgrid node start" in proc.stderr
        assert proc.stdout == ""


def test_rgrid_remote_refuses_the_filters_it_cannot_honour_naming_them(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(org_name="test org")
    filtered = rgrid(home.path, "list", PUBLIC, "--remote", "--kind", "cluster", "--where", "region=eu",
                     "--limit", "5")
    deleted = rgrid(home.path, "get", PUBLIC, "gpu-0", "--remote", "--deleted")
    nameless = rgrid(home.path, "list", "--remote")
    for proc, flags in ((filtered, ("--kind", "--where", "--limit")), (deleted, ("--deleted",)),
                        (nameless, ("REGISTRY",))):
        assert proc.returncode == EX_DATAERR, proc.stderr
        assert "error[validation_failed]" in proc.stderr and "--remote" in proc.stderr
        assert all(flag in proc.stderr for flag in flags), proc.stderr
