"""The CLI and the Python client against a real `rgrid node start` process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from test_bridge_support import NOTE_SCHEMA, REGISTRY, Served, make_token

from registrygrid.client import BridgeClient
from registrygrid.errors import (
    AlreadyExists,
    Conflict,
    NotFound,
    PolicyDenied,
    SchemaViolation,
    Unauthorized,
)
from registrygrid.ports import unused_ports
from registrygrid.sdk import LocalRegistry

pytest_plugins = ("test_bridge_support",)  # its fixtures: served

pytestmark = pytest.mark.timeout(120)


def rgrid(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "registrygrid", *args, "--home", str(home)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "RGRID_HOME": ""})
    if check:
        assert proc.returncode == 0, f"rgrid {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_cli_goes_through_the_bridge_while_the_node_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rgrid(home, "init", "--org-name", "cli org")
    schema = tmp_path / "note.json"
    schema.write_text(json.dumps(NOTE_SCHEMA))
    port = unused_ports(1)[0]
    node = subprocess.Popen([sys.executable, "-m", "registrygrid", "node", "start", "--no-p2p", "--home", str(home),
                             "--bridge-port", str(port), "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        bridge_file = home / "bridge.json"
        deadline = time.monotonic() + 30
        while not bridge_file.exists():
            assert node.poll() is None, node.communicate()
            assert time.monotonic() < deadline, "the node did not publish bridge.json"
            time.sleep(0.1)
        info = json.loads(bridge_file.read_text())
        assert info["url"] == f"http://127.0.0.1:{port}"
        assert bridge_file.stat().st_mode & 0o777 == 0o600

        rgrid(home, "kind", "register", "note", "--schema", str(schema), "--registry", REGISTRY)
        rgrid(home, "registry", "create", REGISTRY, "--kind", "note", "--max-record-bytes", "4096")
        rgrid(home, "registry", "update", REGISTRY, "--max-changes-per-second-per-org", "50")
        described = json.loads(rgrid(home, "registry", "describe", REGISTRY, "--json").stdout)
        assert described["limits"] == {"max_record_bytes": 4096, "max_changes_per_second_per_org": 50.0}
        gone = rgrid(home, "registry", "update", "acme.nowhere", "--kind", "note", check=False)
        assert gone.returncode == 66 and "error[unknown_registry]" in gone.stderr
        put = json.loads(rgrid(home, "put", REGISTRY, "note", "--id", "hello", "--set", "name=world",
                               "--tag", "cli", "--json").stdout)
        assert put["status"] == "created"
        got = json.loads(rgrid(home, "get", REGISTRY, "hello", "--json").stdout)
        assert got["fields"] == {"name": "world"} and got["tags"] == ["cli"]
        failed = rgrid(home, "put", REGISTRY, "note", "--id", "bad", "--set", "n=1", check=False)
        assert failed.returncode == 65 and "schema_violation" in failed.stderr  # EX_DATAERR, as without a node

        # The running node's own feed shows the write (it went through the node, not around it).
        with BridgeClient(info["url"], token=info["token"]) as client:
            events = client.changes(0, registry=REGISTRY)
            assert [(e.record, e.type) for e in events] == [("hello", "created")]
            audit = client.audit_log(limit=1000)
            assert any(e.target == f"{REGISTRY}/hello" and "token:cli#" in e.reason for e in audit)
        tail = [json.loads(line) for line in rgrid(home, "feed", "tail", "--json", "--from", "0").stdout.splitlines()]
        assert tail[-1]["record"] == "hello"

        created = json.loads(rgrid(home, "token", "create", "--role", "reader", "--name", "ci", "--json").stdout)
        assert created["token"].startswith("rgt_")
        listed = json.loads(rgrid(home, "token", "list", "--json").stdout)
        assert {t["name"] for t in listed} >= {"ci", "cli"}

        (tmp_path / "w.bin").write_bytes(b"w" * 64)
        blob = json.loads(rgrid(home, "asset", "upload", str(tmp_path / "w.bin"), "--json").stdout)
        url = rgrid(home, "asset", "presign", blob["cid"], "--expires-in", "60").stdout.strip()
        signed = json.loads(rgrid(home, "asset", "presign", blob["cid"], "--expires-in", "60", "--json").stdout)
        assert url.startswith(info["url"] + "/") and signed["url"].startswith(info["url"] + "/")
        assert signed["expires_in"] == 60

        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0, node.communicate()
        assert not bridge_file.exists()
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()

    # With the node stopped, the same commands open the store directly.
    got = json.loads(rgrid(home, "get", REGISTRY, "hello", "--json").stdout)
    assert got["fields"] == {"name": "world"}
    listed = {t["name"]: t for t in json.loads(rgrid(home, "token", "list", "--json").stdout)}
    assert listed["cli"]["revoked_at"] is not None  # the CLI's admin token died with the bridge
    rgrid(home, "token", "revoke", created["id"])
    scoped = json.loads(rgrid(home, "token", "create", "--role", "writer", "--registry", REGISTRY,
                              "--expires", "30d", "--json").stdout)
    assert scoped["registry"] == REGISTRY and scoped["expires_at"] > time.time() * 1000 + 29 * 86400_000
    bad = rgrid(home, "token", "create", "--role", "writer", "--expires", "soon", check=False)
    assert bad.returncode == 65 and "bad duration" in bad.stderr
    # An unset shell variable ("--expires $TTL") made a token that never expires.
    empty = rgrid(home, "token", "create", "--role", "reader", "--expires", "", check=False)
    assert empty.returncode == 65 and "bad duration ''" in empty.stderr
    with LocalRegistry.open_home(home) as local:
        actions = [(e.action, e.target) for e in local.audit_log(limit=10_000)]
    assert ("delete", f"tokens/{created['id']}") in actions


async def test_client_matches_the_sdk_shapes_and_typed_errors(served: Served) -> None:
    def work(url: str, admin: str, reader: str) -> None:
        with BridgeClient(url, token=admin) as client:
            result = client.put(REGISTRY, "note", {"name": "c", "n": 1}, id="c1", tags=["t"])
            assert result.status == "created" and result.record and result.record["fields"]["n"] == 1
            assert client.get(REGISTRY, "c1")["tags"] == ["t"]
            with pytest.raises(AlreadyExists):
                client.put(REGISTRY, "note", {"name": "c"}, id="c1")
            with pytest.raises(SchemaViolation) as violation:
                client.put(REGISTRY, "note", {"n": "x"})
            assert {d["path"] for d in violation.value.details} >= {"", "/n"}
            updated = client.update(REGISTRY, "c1", patch={"n": 2}, if_match=result.change_id)
            assert updated.status == "updated"
            with pytest.raises(Exception) as stale:
                client.update(REGISTRY, "c1", fields={"name": "d"}, if_match=result.change_id)
            assert stale.value.code == "precondition_failed"  # type: ignore[attr-defined]
            page = client.list(REGISTRY, where=[("n", "ge", 2)], limit=10)
            assert [r["id"] for r in page.items] == ["c1"] and page.next_cursor is None
            assert [h["op"] for h in client.history(REGISTRY, "c1")] == ["create", "update"]
            head = client.feed_head()
            assert client.changes(head - 1)[0].record == "c1" and client.changes(head) == []
            assert client.delete(REGISTRY, "c1").status == "deleted"
            with pytest.raises(NotFound):
                client.get(REGISTRY, "c1")
            assert client.get(REGISTRY, "c1", include_deleted=True)["deleted"] is True
            assert REGISTRY in {r["name"] for r in client.registries()}
            assert client.describe_registry(REGISTRY)["kinds"] == ["note"]
            assert client.kind("note")["version"] == 1 and client.kinds()
            assert client.identity()["did"].startswith("did:key:")
            assert client.stats()["feed_head"] == head + 1
            assert client.audit_log(limit=3, reverse=True)[0].seq > 3
            made = client.create_token("reader", name="from-client")
            assert made["token"].startswith("rgt_") and any(t["name"] == "from-client" for t in client.list_tokens())
            assert client.revoke_token(made["id"])["revoked_at"] is not None
            capped = client.create_registry("acme.capped", ["note"], limits={"max_record_bytes": 512})
            assert capped.status == "created"
            assert client.describe_registry("acme.capped")["limits"]["max_record_bytes"] == 512
        with BridgeClient(url, token=reader) as client:
            with pytest.raises(PolicyDenied):
                client.put(REGISTRY, "note", {"name": "no"})
        with BridgeClient(url, token="rgt_AAAAAAAAAAAA.nope") as client:
            with pytest.raises(Unauthorized):
                client.identity()

    with trio.fail_after(60):
        reader = await make_token(served, "reader")
        await trio.to_thread.run_sync(work, served.url, served.admin, reader)


@contextlib.contextmanager
def _running_node(home: Path) -> Iterator[dict]:
    """A node on ``home`` for the block (its bridge.json), stopped by
    SIGTERM at its end, where it must exit 0; killed if the block failed."""
    node, info = _start_node(home)
    try:
        yield info
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0, node.communicate()
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()


def _start_node(home: Path, *options: str) -> tuple[subprocess.Popen[str], dict]:
    node = subprocess.Popen([sys.executable, "-m", "registrygrid", "node", "start", "--no-p2p", "--home", str(home),
                             "--bridge-port", str(unused_ports(1)[0]), "--log-level", "WARNING", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (home / "bridge.json").exists():
        assert node.poll() is None and time.monotonic() < deadline, node.communicate()
        time.sleep(0.05)
    return node, json.loads((home / "bridge.json").read_text())


@pytest.mark.slow
def test_sigterm_during_writes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    import threading

    home = tmp_path / "home"
    rgrid(home, "init")
    node, info = _start_node(home)
    acked: list[str] = []
    refused: list[str] = []
    try:
        with BridgeClient(info["url"], token=info["token"]) as client:
            client.register_kind("note", 1, NOTE_SCHEMA, registry=REGISTRY)
            client.create_registry(REGISTRY, ["note"])

        def writer(n: int) -> None:
            with BridgeClient(info["url"], token=info["token"], timeout=20) as client:
                for i in range(10_000):
                    try:
                        acked.append(client.put(REGISTRY, "note", {"name": "w"}, id=f"w{n}-{i}").record_id)
                    except Exception as exc:  # the node is going away: refused or unreachable
                        refused.append(type(exc).__name__)
                        return

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0, node.communicate()
        for thread in threads:
            thread.join(30)
        assert not (home / "bridge.json").exists()
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert len(acked) > 10 and len(refused) == 4
    with LocalRegistry.open_home(home) as local:
        stored = {r["id"] for r in local.iter_all(REGISTRY)}
        assert local.verify().ok
    assert set(acked) <= stored, f"lost {sorted(set(acked) - stored)[:5]}"


@pytest.mark.slow
def test_rgrid_token_revoke_of_the_nodes_own_cli_token_is_refused_and_the_cli_keeps_working(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rgrid(home, "init")
    with _running_node(home) as info:
        cli_id = info["token_id"]
        refused = rgrid(home, "token", "revoke", cli_id, check=False)
        assert refused.returncode == 65, refused.stderr  # Conflict: EX_DATAERR
        assert "error[conflict]" in refused.stderr
        assert "the node's own CLI credential; it is revoked when the node stops" in refused.stderr
        # The CLI still works against the running node, and its listing says which token is the node's.
        listed = json.loads(rgrid(home, "token", "list", "--json").stdout)
        assert [(t["id"], t["revoked_at"]) for t in listed if t["local"]] == [(cli_id, None)]
        table = rgrid(home, "token", "list").stdout
        assert "local" in table and "yes" in table
        # Another admin, through the Python client, is refused the same way; other tokens revoke fine.
        ops = json.loads(rgrid(home, "token", "create", "--role", "admin", "--name", "ops", "--json").stdout)
        with BridgeClient(info["url"], token=ops["token"]) as client:
            with pytest.raises(Conflict, match="node's own CLI credential"):
                client.revoke_token(cli_id)
            spare = client.create_token("reader", name="spare")
            assert spare["local"] is False
            assert client.revoke_token(spare["id"])["revoked_at"] is not None
        revoked = json.loads(rgrid(home, "token", "revoke", ops["id"], "--json").stdout)
        assert revoked["revoked_at"] is not None and revoked["local"] is False
        assert json.loads(rgrid(home, "id", "--json").stdout)["did"].startswith("did:key:")
    # Stopped, the node revoked its own token, and the direct-store listing marks none as local.
    listed = {t["id"]: t for t in json.loads(rgrid(home, "token", "list", "--json").stdout)}
    assert listed[cli_id]["revoked_at"] is not None and not any(t["local"] for t in listed.values())
    with LocalRegistry.open_home(home) as local:
        denials = [e for e in local.audit_log(limit=10_000) if e.action == "deny" and e.target == f"tokens/{cli_id}"]
    assert len(denials) == 2 and all(e.reason.startswith("conflict: ") for e in denials)


@pytest.mark.slow
def test_rgrid_import_through_a_rate_limited_bridge_waits_out_each_429_and_imports_everything(
        tmp_path: Path) -> None:
    # The CLI made one attempt of every request: an import checks each
    # document with a GET before it writes, and the first 429 ended it
    # (1,500 MCP documents against the default 500 requests/s: none imported).
    # Every other error is still one attempt, reported at once.
    home = tmp_path / "home"
    rgrid(home, "init")
    config = json.loads((home / "config.json").read_text())
    config["bridge"] = {**config.get("bridge", {}), "rate_limit": 100, "rate_burst": 5}
    (home / "config.json").write_text(json.dumps(config))
    documents = tmp_path / "servers.json"
    documents.write_text(json.dumps([{"name": f"io.example{i}/srv", "description": "d", "version": "1.0.0"}
                                     for i in range(60)]))
    with _running_node(home):
        imported = rgrid(home, "import", str(documents), "--json", check=False)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["created"] == 60
    with LocalRegistry.open_home(home) as local:
        assert len(list(local.iter_all("grid.mcp-servers"))) == 60
