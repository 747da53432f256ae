"""Who may do what through the bridge: tokens, roles, scopes, denials, rate limits."""

from __future__ import annotations

import httpx
import pytest
import trio
from test_bridge_support import OTHER, REGISTRY, Served, make_token, start_served

from registrygrid.node.bridge import BridgeConfig
from registrygrid.node.bridge.auth import RateLimit
from registrygrid.storage import tokens

pytest_plugins = ("test_bridge_support",)  # its fixtures: served

pytestmark = pytest.mark.timeout(60)


async def _deny_entries(served: Served) -> int:
    async with served.client() as admin:
        entries = (await admin.get("/v1/audit", params={"limit": 10000})).json()["entries"]
    return sum(1 for e in entries if e["action"] == "deny")


async def test_auth_matrix_roles_scopes_expiry_revocation_and_every_denial_audited(served: Served) -> None:
    with trio.fail_after(45):
        async with served.client() as admin:
            for registry in (REGISTRY, OTHER):
                r = await admin.post(f"/v1/registries/{registry}/records",
                                     json={"kind": "note", "id": "x", "fields": {"name": "x"}})
                assert r.status_code == 201
        reader = await make_token(served, "reader")
        writer = await make_token(served, "writer")
        scoped = await make_token(served, "writer", registry=REGISTRY)
        revoked = await make_token(served, "admin")
        expired = await make_token(served, "admin", expires_in=1)
        async with served.client() as admin:
            revoked_id = revoked.split(".")[0][len("rgt_"):]
            assert (await admin.delete(f"/v1/tokens/{revoked_id}")).status_code == 200
        await trio.sleep(1.1)
        denials_before = await _deny_entries(served)

        counter = iter(range(10_000))
        endpoints = {
            "read": ("GET", f"/v1/registries/{REGISTRY}/records/x", None),
            "read-other": ("GET", f"/v1/registries/{OTHER}/records/x", None),
            "write": ("POST", f"/v1/registries/{REGISTRY}/records", "note"),
            "write-other": ("POST", f"/v1/registries/{OTHER}/records", "note"),
            "admin": ("GET", "/v1/tokens", None),
            "audit": ("GET", "/v1/audit", None),
        }
        ok = {"read": 200, "read-other": 200, "write": 201, "write-other": 201, "admin": 200, "audit": 200}
        expected = {
            None: {k: 401 for k in endpoints},
            "rgt_AAAAAAAAAAAA.bad": {k: 401 for k in endpoints},
            expired: {k: 401 for k in endpoints},
            revoked: {k: 401 for k in endpoints},
            reader: {"read": 200, "read-other": 200, "write": 403, "write-other": 403, "admin": 403, "audit": 403},
            writer: {**ok, "admin": 403, "audit": 403},
            scoped: {"read": 200, "read-other": 403, "write": 201, "write-other": 403, "admin": 403, "audit": 403},
            served.admin: ok,
        }
        denied = 0
        async with httpx.AsyncClient(base_url=served.url, timeout=20) as client:
            for token, answers in expected.items():
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                for name, (method, path, kind) in endpoints.items():
                    body = {"kind": kind, "id": f"m{next(counter)}", "fields": {"name": "m"}} if kind else None
                    r = await client.request(method, path, json=body, headers=headers)
                    assert r.status_code == answers[name], (token, name, r.text)
                    if r.status_code in (401, 403):
                        denied += 1
                        code = r.json()["error"]["code"]
                        assert code == ("unauthorized" if r.status_code == 401 else "policy_denied")
                        if r.status_code == 401:
                            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        for _ in range(50):  # denials are flushed to the ledger in batches
            if await _deny_entries(served) - denials_before >= denied:
                break
            await trio.sleep(0.1)
        assert await _deny_entries(served) - denials_before == denied


async def test_scoped_token_sees_only_its_registry_in_listings_and_the_feed(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client() as admin:
            for registry in (REGISTRY, OTHER):
                await admin.post(f"/v1/registries/{registry}/records", json={"kind": "note", "fields": {"name": "s"}})
        scoped = await make_token(served, "reader", registry=OTHER)
        async with served.client(scoped) as client:
            items = (await client.get("/v1/records")).json()["items"]
            assert items and {i["registry"] for i in items} == {OTHER}
            assert [r["name"] for r in (await client.get("/v1/registries")).json()["registries"]] == [OTHER]
            events = (await client.get("/v1/changes")).json()["events"]
            assert events and {e["registry"] for e in events} == {OTHER}
            assert (await client.get("/v1/changes", params={"registry": REGISTRY})).status_code == 403


async def test_a_token_revoked_while_its_request_body_arrives_writes_nothing(served: Served) -> None:
    # The token was checked at the headers only: a body trickled in after the
    # revocation still wrote (201), audited after the revocation.
    with trio.fail_after(30):
        async with served.client() as admin:
            made = (await admin.post("/v1/tokens", json={"role": "writer", "name": "victim"})).json()
        body = (b'{"kind": "note", "id": "late", "fields": {"name": "late", "n": 1}}')
        where = httpx.URL(served.url)
        sock = trio.socket.socket()
        await sock.connect((where.host, where.port))
        await sock.send(f"POST /v1/registries/{REGISTRY}/records HTTP/1.1\r\nHost: x\r\n"
                        f"Authorization: Bearer {made['token']}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        await trio.sleep(0.3)  # the handler has checked the token and waits for the body
        async with served.client() as admin:
            assert (await admin.delete(f"/v1/tokens/{made['id']}")).status_code == 200
        await sock.send(body[10:])
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += await sock.recv(65536)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        async with served.client() as admin:
            assert (await admin.get(f"/v1/registries/{REGISTRY}/records/late")).status_code == 404


async def test_token_endpoints_create_list_revoke(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client() as admin:
            r = await admin.post("/v1/tokens", json={"role": "reader", "name": "dashboard", "expires_in": 3600})
            assert r.status_code == 201
            created = r.json()
            assert created["token"].startswith(f"rgt_{created['id']}.") and created["expires_at"]
            listed = (await admin.get("/v1/tokens")).json()["tokens"]
            mine = [t for t in listed if t["id"] == created["id"]]
            assert mine and "token" not in mine[0] and "hash" not in mine[0]
            r = await admin.post("/v1/tokens", json={"role": "admin", "registry": REGISTRY})
            assert r.status_code == 422
            r = await admin.post("/v1/tokens", json={"role": "root"})
            assert r.status_code == 422
            assert (await admin.delete("/v1/tokens/AAAAAAAAAAAA")).status_code == 404
            assert (await admin.delete(f"/v1/tokens/{created['id']}")).json()["revoked_at"] is not None
        async with served.client(created["token"]) as client:
            r = await client.get("/v1/identity")
            assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


async def test_revoking_a_revoked_token_answers_it_as_it_is_and_audits_no_second_revocation(
        served: Served) -> None:
    # Each DELETE of a revoked token wrote another "token revoked" entry:
    # the ledger recorded revocations that never happened.
    async def entries(token_id: str) -> list[dict]:
        async with served.client() as admin:
            return (await admin.get("/v1/audit", params={"limit": 10000, "target": f"tokens/{token_id}"})
                    ).json()["entries"]

    with trio.fail_after(30):
        async with served.client() as admin:
            made = (await admin.post("/v1/tokens", json={"role": "reader", "name": "twice"})).json()
            answers = [(await admin.delete(f"/v1/tokens/{made['id']}")).json() for _ in range(3)]
        while not any(e["action"] == "delete" for e in await entries(made["id"])):
            await trio.sleep(0.05)  # notes are flushed in batches
        while not any("revoked already" in e["reason"] for e in await entries(made["id"])):
            await trio.sleep(0.05)
        logged = await entries(made["id"])
    assert len({a["revoked_at"] for a in answers}) == 1
    assert [e["reason"] for e in logged if e["action"] == "delete"] == ["token twice revoked"]


async def test_the_nodes_own_cli_token_is_audited_when_made_and_when_revoked(tmp_path) -> None:
    import json

    from test_bridge_support import ThreadedNode

    from registrygrid.sdk import LocalRegistry

    with ThreadedNode(tmp_path / "home") as served:
        token_id = json.loads((served.home.path / "bridge.json").read_text())["token_id"]
    with LocalRegistry.open_home(tmp_path / "home") as grid:
        logged = [(e.action, e.actor) for e in grid.audit_log(limit=10_000, target=f"tokens/{token_id}")]
    assert logged == [("create", "node"), ("delete", "node")]


async def test_a_token_limited_to_a_registry_reads_the_kinds_it_holds_only(served: Served) -> None:
    # /v1/kinds answered every kind's schema (one bound to another registry
    # too) to a token that got 403 on the same records in grid.kinds.
    async with served.client() as admin:
        r = await admin.post("/v1/kinds", json={"name": "secret", "version": 1, "registry": "acme.secret",
                                                "schema": {"type": "object"}})
        assert r.status_code == 201, r.text
    scoped = await make_token(served, "reader", registry=REGISTRY)
    kinds_reader = await make_token(served, "reader", registry="grid.kinds")
    async with served.client(scoped) as client:
        listed = {k["name"] for k in (await client.get("/v1/kinds")).json()["kinds"]}
        note = await client.get("/v1/kinds/note")
        secret = await client.get("/v1/kinds/secret")
    async with served.client(kinds_reader) as client:
        every = {k["name"] for k in (await client.get("/v1/kinds")).json()["kinds"]}
    assert listed == {"note"} and note.status_code == 200
    assert secret.status_code == 403 and secret.json()["error"]["code"] == "policy_denied"
    assert {"note", "secret", "cluster"} <= every


async def test_reads_of_kinds_identity_stats_and_fields_are_audited(served: Served) -> None:
    # docs/bridge.md: every read through the API is audited; these were not.
    reader = await make_token(served, "reader", name="looker")
    async with served.client(reader) as client:
        for path in ("/v1/kinds", "/v1/kinds/note", "/v1/identity", "/v1/stats", "/v1/search/fields"):
            assert (await client.get(path)).status_code == 200, path
    async with served.client() as admin:
        assert (await admin.get("/v1/audit/verify")).status_code == 200
    wanted = {"grid.kinds", "grid.kinds/note", "identity", "stats", "search"}
    with trio.fail_after(10):
        while True:
            async with served.client() as admin:
                entries = (await admin.get("/v1/audit", params={"limit": 10000})).json()["entries"]
            reads = {e["target"] for e in entries if e["action"] == "read" and e["actor"].startswith("token:looker#")}
            if wanted <= reads and any(e["target"] == "audit" and e["action"] == "read" for e in entries):
                break
            await trio.sleep(0.1)


async def test_rate_limit_answers_429_with_retry_after_then_recovers(nursery: trio.Nursery, tmp_path) -> None:
    with trio.fail_after(30):
        # A token every 2 s: the nine requests below meet an empty bucket
        # even on a loaded machine (at 2/s, a slow run got a token back).
        served = await start_served(nursery, tmp_path / "home",
                                    BridgeConfig(rate_limit=RateLimit(rate=0.5, burst=5.0)))
        try:
            async with served.client() as client:
                statuses = [(await client.get("/v1/identity")).status_code for _ in range(8)]
                assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
                r = await client.get("/v1/identity")
                assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
                retry_after = int(r.headers["Retry-After"])
                assert 1 <= retry_after <= 2
                await trio.sleep(retry_after)
                assert (await client.get("/v1/identity")).status_code == 200
            # Requests without a valid token are limited per client address.
            async with httpx.AsyncClient(base_url=served.url) as anon:
                statuses = [(await anon.get("/v1/identity")).status_code for _ in range(8)]
                assert statuses[:5] == [401] * 5 and 429 in statuses[5:]
            async with served.client() as client:
                metrics = (await client.get("/metrics")).text
            assert "rgrid_http_rate_limited_total" in metrics
        finally:
            served.node.stop()


async def test_bridge_refuses_to_start_on_a_busy_port(nursery: trio.Nursery, tmp_path) -> None:
    from registrygrid.errors import Unavailable
    from registrygrid.home import Home
    from registrygrid.node.bridge import Bridge
    from registrygrid.node.node import Node

    with trio.fail_after(30):
        first = await start_served(nursery, tmp_path / "a")
        try:
            home = Home(tmp_path / "b")
            home.init()
            node = Node(home, [Bridge(port=first.bridge.port)])
            with pytest.raises(BaseException) as caught:
                await node.run()
            flat = caught.value.exceptions if isinstance(caught.value, BaseExceptionGroup) else [caught.value]
            assert any(isinstance(e, Unavailable) and "cannot listen" in e.message for e in flat)
            assert home.lock_holder() is None  # the failed node released its home
        finally:
            first.node.stop()


def test_build_components_refuses_a_public_bridge_without_the_flag(tmp_path) -> None:
    from registrygrid.cli.node_commands import build_components
    from registrygrid.errors import ValidationError
    from registrygrid.home import Home

    home = Home(tmp_path / "h")
    home.init()
    with pytest.raises(ValidationError, match="allow-public-bridge"):
        build_components(home, {"bridge_host": "0.0.0.0", "p2p": False})
    (bridge,) = build_components(home, {"bridge_host": "0.0.0.0", "allow_public": True, "p2p": False, "search": False})
    assert bridge.host == "0.0.0.0" and bridge.port == 8700


async def test_the_nodes_own_cli_token_cannot_be_revoked_over_the_api_and_each_refusal_is_audited(
        served: Served) -> None:
    cli_id = served.admin.split(".")[0][len("rgt_"):]
    target = f"tokens/{cli_id}"

    async def refusals() -> list[dict]:
        async with served.client() as admin:
            entries = (await admin.get("/v1/audit", params={"limit": 10000})).json()["entries"]
        return [e for e in entries if e["action"] == "deny" and e["target"] == target]

    with trio.fail_after(30):
        ops = await make_token(served, "admin", name="ops")
        spare = await make_token(served, "reader", name="spare")
        async with served.client(ops) as client:
            listed = (await client.get("/v1/tokens")).json()["tokens"]
            assert [t["id"] for t in listed if t["local"]] == [cli_id]
            r = await client.delete(f"/v1/tokens/{cli_id}")
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["code"] == "conflict"
        assert "the node's own CLI credential; it is revoked when the node stops" in error["message"]
        # Not even the CLI token itself may do it.
        async with served.client() as cli:
            assert (await cli.delete(f"/v1/tokens/{cli_id}")).status_code == 409
            # It stays valid, in the store and in the bridge's cache...
            assert (await cli.get("/v1/identity")).status_code == 200
            assert tokens.get(served.node.store, cli_id).revoked_at is None
            # ...and every other token still revokes as before, through either admin token.
            spare_id = spare.split(".")[0][len("rgt_"):]
            r = await cli.delete(f"/v1/tokens/{spare_id}")
            assert r.status_code == 200 and r.json()["revoked_at"] is not None and r.json()["local"] is False
            ops_id = ops.split(".")[0][len("rgt_"):]
            assert (await cli.delete(f"/v1/tokens/{ops_id}")).status_code == 200
            metrics = (await cli.get("/metrics")).text
        assert 'rgrid_http_denials_total{status="409"} 2.0' in metrics
        for _ in range(50):  # denials reach the ledger in batches
            found = await refusals()
            if len(found) >= 2:
                break
            await trio.sleep(0.1)
        assert sorted(e["actor"] for e in found) == sorted([f"token:ops#{ops_id}", f"token:cli#{cli_id}"])
        assert all(e["reason"].startswith("conflict: ") for e in found)
