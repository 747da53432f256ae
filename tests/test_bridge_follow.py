"""Following another federation's public registry through the bridge:
`PUT`/`DELETE /v1/follows/{name}`, `GET /v1/follows`, the record routes
answering from the followed copy (`X-Registry-Source: followed`),
`BridgeClient.follow`/`unfollow`/`follows`, and `rgrid registry
follow`/`follows`/`unfollow`, against real nodes of two federations, each
with its home, LMDB store, py-libp2p host and Kademlia DHT on 127.0.0.1.

Federation one is a single node (no bridge) whose org owns a public
registry and a federation-scoped one, both published to the DHT; federation
two is the following node, with its bridge on a free loopback port and a
half-second follow interval, so a change at the owner reaches its copy
within about a second. The two share a DHT (the follower bootstraps from
the owner) and nothing else: the copy lives in a store of its own, never
in the follower's."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from test_bridge_support import UNLIMITED, Served, make_token, start_served
from test_federation_support import FAST, LOOPBACK, Cluster, Member, eventually

from registrygrid.cli import main as cli_main
from registrygrid.client import BridgeClient
from registrygrid.engine.ops import Put, Update
from registrygrid.errors import (
    EX_NOINPUT,
    EX_NOPERM,
    EX_TEMPFAIL,
    NotFound,
    PolicyDenied,
    RegistryError,
)
from registrygrid.home import Home
from registrygrid.node.bridge import Bridge, BridgeConfig
from registrygrid.node.bridge.openapi import schema_validator
from registrygrid.node.federation import Federation
from registrygrid.node.follow import FOLLOW_INTERVAL_S
from registrygrid.node.node import Node

pytest_plugins = ("test_bridge_support",)

pytestmark = pytest.mark.timeout(120)

PUBLIC = "acme.models"
PRIVATE = "acme.internal"  # replication scope "federation": held by its federation's members only
UNKNOWN = "nobody.published"
GPUS = [f"gpu-{i}" for i in range(3)]
# Syncs every half second, so a change at the owner shows on the follower in about that.
FOLLOWING = dataclasses.replace(FAST, follow_interval=0.5)
SOURCE = "X-Registry-Source"


# ---------------------------------------------------------------- helpers


@dataclass
class Grids:
    owner: Member  # federation one: owns PUBLIC and PRIVATE, hosts them, published them
    follower: Served  # federation two: follows through its bridge

    @property
    def fed(self) -> Federation:
        fed = self.follower.node.component("federation")
        assert isinstance(fed, Federation)
        return fed

    def copy(self) -> dict[str, dict[str, Any]]:
        """The live records of the follower's copy, by id, read directly."""
        assert self.fed.follows is not None
        mirror = self.fed.follows.mirror(PUBLIC)
        assert mirror is not None
        with mirror.use() as registry:
            return {r["id"]: r for r in registry.iter_all(PUBLIC)}


async def start_follower(nursery: trio.Nursery, home: Home, bootstrap: list[str]) -> Served:
    bridge = Bridge(port=0, config=BridgeConfig(rate_limit=UNLIMITED))
    fed = Federation(listen=[LOOPBACK], bootstrap=bootstrap, federation=home.federation().name, config=FOLLOWING)
    node = Node(home, [bridge, fed])
    await nursery.start(node.run)
    info = json.loads((home.path / "bridge.json").read_text())
    return Served(node, bridge, home, info["url"], info["token"])


def holds(served: Served, registry: str) -> bool:
    """Whether the node's own store holds ``registry`` (a followed copy is not in it)."""
    try:
        served.node.registry.describe_registry(registry)
        return True
    except RegistryError:
        return False


def assert_valid(schema: str, body: Any) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in schema_validator(schema).iter_errors(body)]
    assert not errors, errors


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert_valid("Error", response.json())
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


def copy_dirs(served: Served) -> list[str]:
    """What the follower keeps under HOME/follows (one directory a followed registry)."""
    root = served.home.path / "follows"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def rgrid(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # COLUMNS: wide enough that no table cell folds, so a test reads each fact from one line.
    return subprocess.run([sys.executable, "-m", "registrygrid", *args, "--home", str(home)], check=False,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RGRID_HOME": "", "COLUMNS": "250"})


def _facts(out: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^ ?(\w+(?: \w+)?) {2,}(\S.*?) *$", out, re.MULTILINE))


@pytest.fixture
async def grids(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Grids]:
    one = Cluster(nursery, tmp_path / "one", FAST, name="fed-one")
    two = Cluster(nursery, tmp_path / "two", FOLLOWING, name="fed-two")
    with trio.fail_after(60):
        owner = await one.start("owner")
        follower = await start_follower(nursery, two.home("follower"), owner.fed.addrs())
        await owner.node.submit([Put("grid.registries", "registry",
                                     {"name": PUBLIC, "kinds": ["cluster"], "replication": {"scope": "public"}},
                                     record_id=PUBLIC),
                                 Put("grid.registries", "registry", {"name": PRIVATE, "kinds": ["cluster"]},
                                     record_id=PRIVATE)])
        await owner.node.submit([Put(PUBLIC, "cluster", {"name": gpu}, record_id=gpu) for gpu in GPUS]
                                + [Put(PRIVATE, "cluster", {"name": "secret"}, record_id="secret")])
        await owner.node.submit([Update(PUBLIC, "gpu-0", patch={"region": "eu"})])
        grids = Grids(owner, follower)
        members = [owner.fed, grids.fed]
        await eventually(lambda: all(m.directory is not None and m.directory.dht is not None
                                     and m.directory.dht.get_routing_table_size() > 0 for m in members),
                         20, "both routing tables filled")
        assert owner.fed.directory is not None
        done = await owner.fed.directory.publish()
        assert done["published"] >= 2, done
    yield grids
    follower.node.stop()
    owner.node.stop()


# ---------------------------------------------------------------- HTTP


async def test_put_follows_a_public_registry_and_the_record_routes_answer_from_the_verified_copy(
        grids: Grids) -> None:
    with trio.fail_after(60):
        async with grids.follower.client() as client:
            followed = await client.put(f"/v1/follows/{PUBLIC}")
            listing = await client.get(f"/v1/registries/{PUBLIC}/records")
            one = await client.get(f"/v1/registries/{PUBLIC}/records/gpu-0")
            unchanged = await client.get(f"/v1/registries/{PUBLIC}/records/gpu-0",
                                         headers={"If-None-Match": one.headers.get("ETag", "")})
            described = await client.get(f"/v1/registries/{PUBLIC}")
            history = await client.get(f"/v1/registries/{PUBLIC}/records/gpu-0/history")
            missing = await client.get(f"/v1/registries/{PUBLIC}/records/gpu-9")
            own = await client.get("/v1/registries/grid.kinds/records", params={"limit": 1})
    assert followed.status_code == 200, followed.text
    status = followed.json()
    assert_valid("FollowStatus", status)
    assert status["registry"] == PUBLIC and status["records"] == len(GPUS)
    assert status["owner"] == grids.owner.node.engine.owner != grids.follower.node.engine.owner
    assert status["last_provider"] == grids.owner.peer_id and status["last_error"] is None
    assert status["synced_changes"] >= 5  # the descriptor, three creates, an update: each checked as it applied
    assert status["descriptor"]["name"] == PUBLIC and status["descriptor"]["replication"] == "public"

    assert listing.status_code == 200, listing.text
    assert listing.headers[SOURCE] == "followed"
    assert_valid("Page", listing.json())
    assert [r["id"] for r in listing.json()["items"]] == GPUS
    assert one.status_code == 200, one.text
    assert one.headers[SOURCE] == "followed"
    assert_valid("Record", one.json())
    assert one.json() == grids.owner.registry.get(PUBLIC, "gpu-0")  # the record as its owner's node shows it
    assert one.headers["ETag"] == f'"{one.json()["change_id"]}"'
    assert unchanged.status_code == 304 and unchanged.headers[SOURCE] == "followed"
    assert described.status_code == 200 and described.headers[SOURCE] == "followed"
    assert_valid("Registry", described.json())
    assert described.json()["records"] == len(GPUS) and described.json()["owner"] == status["owner"]
    assert history.status_code == 200 and history.headers[SOURCE] == "followed"
    assert_valid("History", history.json())
    assert [h["op"] for h in history.json()["history"]] == ["create", "update"]
    assert "gpu-9" in assert_error(missing, 404, "not_found")["message"]
    assert own.status_code == 200 and SOURCE not in own.headers  # the node's own registries: no header
    assert not holds(grids.follower, PUBLIC), "the copy is a store of its own, not the follower's"
    assert copy_dirs(grids.follower) == [PUBLIC]
    # Reads of the copy are audited like any read, saying where they were answered from.
    await eventually(lambda: any(e.action == "read" and "followed copy" in e.reason for e in
                                 grids.follower.node.registry.audit_log(target=f"{PUBLIC}/gpu-0")),
                     10, "the read note of the followed copy")
    await eventually(lambda: any(e.action == "create" and e.target == f"follows/{PUBLIC}"
                                 for e in grids.follower.node.registry.audit_log(limit=10_000)),
                     10, "the audit entry of the follow")


async def test_a_write_at_the_owner_reaches_the_follower_by_the_periodic_sync_and_the_list_shows_it(
        grids: Grids) -> None:
    with trio.fail_after(60):
        async with grids.follower.client() as client:
            followed = await client.put(f"/v1/follows/{PUBLIC}")
            assert followed.status_code == 200, followed.text
            await grids.owner.node.submit([Put(PUBLIC, "cluster", {"name": "tpu"}, record_id="tpu"),
                                           Update(PUBLIC, "gpu-1", patch={"region": "us"})])
            await eventually(lambda: "tpu" in grids.copy()
                             and grids.copy()["gpu-1"]["fields"].get("region") == "us",
                             20, "the owner's new changes in the follower's copy")
            tpu = await client.get(f"/v1/registries/{PUBLIC}/records/tpu")
            gpu1 = await client.get(f"/v1/registries/{PUBLIC}/records/gpu-1")
            listed = await client.get("/v1/follows")
    assert tpu.status_code == 200 and tpu.headers[SOURCE] == "followed"
    assert tpu.json() == grids.owner.registry.get(PUBLIC, "tpu")
    assert gpu1.json()["fields"] == {"name": "gpu-1", "region": "us"}
    assert listed.status_code == 200, listed.text
    assert_valid("Follows", listed.json())
    [status] = listed.json()["follows"]
    assert status["registry"] == PUBLIC and status["records"] == len(GPUS) + 1
    assert status["last_sync_at"] >= followed.json()["last_sync_at"] and status["last_error"] is None
    assert status["synced_changes"] >= followed.json()["synced_changes"] + 2


async def test_following_a_registry_that_is_not_public_is_403_and_an_unknown_one_404(grids: Grids) -> None:
    with trio.fail_after(60):
        async with grids.follower.client() as client:
            private = await client.put(f"/v1/follows/{PRIVATE}")
            unknown = await client.put(f"/v1/follows/{UNKNOWN}")
            bad_name = await client.put("/v1/follows/Not_A_Name")
            not_followed = await client.delete(f"/v1/follows/{PUBLIC}")
            listed = await client.get("/v1/follows")
            read = await client.get(f"/v1/registries/{PRIVATE}/records/secret")
    assert "not public" in assert_error(private, 403, "policy_denied")["message"]
    assert UNKNOWN in assert_error(unknown, 404, "not_found")["message"]
    assert_error(bad_name, 422, "validation_failed")
    assert PUBLIC in assert_error(not_followed, 404, "not_found")["message"]
    assert listed.status_code == 200 and listed.json() == {"follows": []}
    assert_error(read, 404, "unknown_registry")
    assert copy_dirs(grids.follower) == [], "a refused follow leaves nothing behind"
    assert not holds(grids.follower, PRIVATE)


async def test_only_an_admin_token_may_follow_or_unfollow_and_a_reader_lists(grids: Grids) -> None:
    with trio.fail_after(60):
        reader = await make_token(grids.follower, "reader")
        writer = await make_token(grids.follower, "writer")
        scoped = await make_token(grids.follower, "reader", registry=PRIVATE)
        async with grids.follower.client(reader) as client:
            refused = await client.put(f"/v1/follows/{PUBLIC}")
        async with grids.follower.client(writer) as client:
            refused_writer = await client.put(f"/v1/follows/{PUBLIC}")
        assert grids.fed.follows is not None and grids.fed.follows.mirror(PUBLIC) is None
        async with grids.follower.client() as client:
            assert (await client.put(f"/v1/follows/{PUBLIC}")).status_code == 200
        async with grids.follower.client(reader) as client:
            listed = await client.get("/v1/follows")
            read = await client.get(f"/v1/registries/{PUBLIC}/records/gpu-2")
            not_unfollowed = await client.delete(f"/v1/follows/{PUBLIC}")
        async with grids.follower.client(scoped) as client:
            scoped_list = await client.get("/v1/follows")
            scoped_read = await client.get(f"/v1/registries/{PUBLIC}/records/gpu-2")
        async with grids.follower.client("rgt_AAAAAAAAAAAA.nope") as client:
            anonymous = await client.put(f"/v1/follows/{PUBLIC}")
    assert "admin" in assert_error(refused, 403, "policy_denied")["message"]
    assert_error(refused_writer, 403, "policy_denied")
    assert_error(not_unfollowed, 403, "policy_denied")
    assert_error(anonymous, 401, "unauthorized")
    assert listed.status_code == 200 and [f["registry"] for f in listed.json()["follows"]] == [PUBLIC]
    assert read.status_code == 200 and read.headers[SOURCE] == "followed"  # reading the copy is a read
    assert scoped_list.status_code == 200 and scoped_list.json() == {"follows": []}  # limited to PRIVATE
    assert_error(scoped_read, 403, "policy_denied")
    assert grids.fed.follows.mirror(PUBLIC) is not None  # the reader's DELETE changed nothing


async def test_delete_unfollows_deletes_the_copy_and_the_record_routes_answer_404(grids: Grids) -> None:
    with trio.fail_after(60):
        async with grids.follower.client() as client:
            assert (await client.put(f"/v1/follows/{PUBLIC}")).status_code == 200
            assert (await client.get(f"/v1/registries/{PUBLIC}/records/gpu-0")).status_code == 200
            unfollowed = await client.delete(f"/v1/follows/{PUBLIC}")
            record = await client.get(f"/v1/registries/{PUBLIC}/records/gpu-0")
            listing = await client.get(f"/v1/registries/{PUBLIC}/records")
            history = await client.get(f"/v1/registries/{PUBLIC}/records/gpu-0/history")
            described = await client.get(f"/v1/registries/{PUBLIC}")
            again = await client.delete(f"/v1/follows/{PUBLIC}")
            listed = await client.get("/v1/follows")
    assert unfollowed.status_code == 200, unfollowed.text
    assert_valid("Unfollowed", unfollowed.json())
    assert unfollowed.json() == {"registry": PUBLIC, "unfollowed": True}
    for response in (record, listing, history, described):
        assert SOURCE not in response.headers
        assert_error(response, 404, "unknown_registry")
    assert_error(again, 404, "not_found")
    assert listed.json() == {"follows": []}
    assert copy_dirs(grids.follower) == []


async def test_a_node_without_a_dht_answers_follows_with_503_naming_why(nursery: trio.Nursery,
                                                                       tmp_path: Path) -> None:
    served = await start_served(nursery, tmp_path / "home")  # a bridge, no federation
    with trio.fail_after(30):
        async with served.client() as client:
            answers = [await client.put(f"/v1/follows/{PUBLIC}"), await client.delete(f"/v1/follows/{PUBLIC}"),
                       await client.get("/v1/follows")]
            record = await client.get(f"/v1/registries/{PUBLIC}/records/gpu-0")
    for answer in answers:  # disabled, as resolve answers: "unavailable" had clients retry for good
        assert "runs no DHT" in assert_error(answer, 503, "disabled")["message"]
        assert "Retry-After" not in answer.headers
    assert_error(record, 404, "unknown_registry")
    served.node.stop()


# ---------------------------------------------------------------- the Python client


async def test_bridge_client_follows_lists_and_unfollows_with_typed_errors(grids: Grids) -> None:
    served = grids.follower

    def work() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        with BridgeClient(served.url, token=served.admin) as client:
            status = client.follow(PUBLIC)
            listed = client.follows()
            record = client.get(PUBLIC, "gpu-1")  # the ordinary read answers from the copy
            with pytest.raises(PolicyDenied, match="not public"):
                client.follow(PRIVATE)
            with pytest.raises(NotFound, match=UNKNOWN):
                client.follow(UNKNOWN)
            unfollowed = client.unfollow(PUBLIC)
            with pytest.raises(NotFound):
                client.unfollow(PUBLIC)
            assert client.follows() == []
        return status, listed, record, unfollowed

    with trio.fail_after(60):
        status, listed, record, unfollowed = await trio.to_thread.run_sync(work)
    assert_valid("FollowStatus", status)
    assert status["records"] == len(GPUS)
    assert [f["registry"] for f in listed] == [PUBLIC]
    assert record == grids.owner.registry.get(PUBLIC, "gpu-1")
    assert unfollowed == {"registry": PUBLIC, "unfollowed": True}


# ---------------------------------------------------------------- the CLI


async def test_rgrid_registry_follow_follows_and_unfollow_against_the_running_node(grids: Grids) -> None:
    home = grids.follower.home.path
    with trio.fail_after(90):
        followed = await trio.to_thread.run_sync(rgrid, home, "registry", "follow", PUBLIC)
        listed = await trio.to_thread.run_sync(rgrid, home, "list", PUBLIC, "--json")
        table = await trio.to_thread.run_sync(rgrid, home, "registry", "follows")
        as_json = await trio.to_thread.run_sync(rgrid, home, "registry", "follows", "--json")
        again = await trio.to_thread.run_sync(rgrid, home, "registry", "follow", PUBLIC, "--json")
        private = await trio.to_thread.run_sync(rgrid, home, "registry", "follow", PRIVATE)
        unfollowed = await trio.to_thread.run_sync(rgrid, home, "registry", "unfollow", PUBLIC, "--json")
        twice = await trio.to_thread.run_sync(rgrid, home, "registry", "unfollow", PUBLIC)
        none = await trio.to_thread.run_sync(rgrid, home, "registry", "follows", "--json")
        gone = await trio.to_thread.run_sync(rgrid, home, "get", PUBLIC, "gpu-0")

    assert followed.returncode == 0, followed.stderr
    out = followed.stdout
    assert out.startswith(f"{PUBLIC}  followed: a verified copy on this node\n"), out
    facts = _facts(out)
    assert facts["owner"] == grids.owner.node.engine.owner
    assert facts["provider"] == grids.owner.peer_id
    assert facts["records"] == str(len(GPUS))
    assert re.fullmatch(r"\d+s ago", facts["last sync"]), facts
    assert f"rgrid list {PUBLIC}" in out  # how to read it

    assert listed.returncode == 0, listed.stderr  # `rgrid list` reads the copy through the node
    assert [r["id"] for r in json.loads(listed.stdout)["items"]] == GPUS

    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if PUBLIC in line]
    assert grids.owner.peer_id in row and grids.owner.node.engine.owner in row
    assert re.search(rf"\b{len(GPUS)}\b", row) and re.search(r"\d+s ago", row)

    assert as_json.returncode == 0, as_json.stderr
    [status] = json.loads(as_json.stdout)
    assert_valid("FollowStatus", status)
    assert status["registry"] == PUBLIC and status["records"] == len(GPUS)

    assert again.returncode == 0, again.stderr  # following again syncs now
    assert json.loads(again.stdout)["last_sync_at"] >= status["last_sync_at"]
    assert private.returncode == EX_NOPERM and "error[policy_denied]" in private.stderr

    assert unfollowed.returncode == 0, unfollowed.stderr
    assert json.loads(unfollowed.stdout) == {"registry": PUBLIC, "unfollowed": True}
    assert twice.returncode == EX_NOINPUT and "error[not_found]" in twice.stderr
    assert none.returncode == 0 and json.loads(none.stdout) == []
    assert gone.returncode == EX_NOINPUT and "error[unknown_registry]" in gone.stderr


def test_rgrid_follow_commands_without_a_running_node_say_to_start_it(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(org_name="test org")
    for args in (("registry", "follow", PUBLIC), ("registry", "unfollow", PUBLIC), ("registry", "follows")):
        proc = rgrid(home.path, *args)
        assert proc.returncode == EX_TEMPFAIL, proc.stderr
        assert "error[unavailable]" in proc.stderr and "rgrid node start" in proc.stderr
        assert proc.stdout == ""


def test_rgrid_follow_help_says_what_happens_with_the_nodes_sync_interval() -> None:
    assert cli_main.FOLLOW_INTERVAL_TEXT == f"{FOLLOW_INTERVAL_S:g} s"
    proc = subprocess.run([sys.executable, "-m", "registrygrid", "registry", "follow", "--help"], check=False,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for said in ("verified copy", f"every {FOLLOW_INTERVAL_S:g} s", "rgrid get NAME ID", "rgrid list NAME",
                 "rgrid node start"):
        assert said in text, (said, text)
