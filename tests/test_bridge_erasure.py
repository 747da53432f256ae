"""Erasure through the bridge of a real node and through the `rgrid` CLI:
the record answers 410 afterwards, the blobs its notice names leave the
object store (a legal hold keeps one, and says so in the audit ledger),
and `rgrid store compact` takes the freed bytes off the disk."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from test_bridge_support import REGISTRY, Served, make_token

from registrygrid.home import Home

pytest_plugins = ("test_bridge_support",)  # its fixtures: served, threaded_served

SECRET = "bob.private@example.org"


async def _blob(served: Served, data: bytes) -> str:
    async with served.client() as http:
        created = await http.post("/v1/uploads", json={"size": len(data), "part_size": 1 << 20,
                                                       "content_type": "application/x-test",
                                                       "sha256": hashlib.sha256(data).hexdigest()})
        assert created.status_code == 201, created.text
        session = created.json()
        await http.put(f"/v1/uploads/{session['id']}/parts/1", content=data)
        done = await http.post(f"/v1/uploads/{session['id']}/finalize")
        assert done.status_code == 200, done.text
        return done.json()["cid"]  # type: ignore[no-any-return]


async def _audit(served: Served, wanted: Callable[[dict[str, Any]], bool]) -> bool:
    async with served.client() as http:
        for _ in range(100):  # the purge runs after the commit, the audit flusher every ~200 ms
            entries = (await http.get("/v1/audit", params={"limit": 1000})).json()["entries"]
            if any(wanted(e) for e in entries):
                return True
            await trio.sleep(0.1)
    return False


async def test_an_erased_record_answers_410_and_its_blobs_leave_the_object_store(served: Served) -> None:
    kept, held = await _blob(served, os.urandom(3000)), await _blob(served, os.urandom(2000))
    async with served.client() as http:
        made = await http.post(f"/v1/registries/{REGISTRY}/records",
                               json={"kind": "note", "id": "bob", "fields": {"name": SECRET}})
        assert made.status_code == 201, made.text
        await http.put(f"/v1/blobs/{held}/holds/case-9", json={"reason": "litigation"})
        reader = await make_token(served, "reader")
        async with served.client(reader) as read_only:
            forbidden = await read_only.post(f"/v1/registries/{REGISTRY}/records/bob/erase", json={})
        erased = await http.post(f"/v1/registries/{REGISTRY}/records/bob/erase",
                                 json={"reason": "request 2026-7", "blobs": [kept, held]})
        again = await http.post(f"/v1/registries/{REGISTRY}/records/bob/erase", json={})
        gone = await http.get(f"/v1/registries/{REGISTRY}/records/bob")
        history = await http.get(f"/v1/registries/{REGISTRY}/records/bob/history")
        rewrite = await http.post(f"/v1/registries/{REGISTRY}/records",
                                  json={"kind": "note", "id": "bob", "fields": {"name": "again"}})
        listed = (await http.get("/v1/erasures")).json()["items"]
        places = (await http.get("/v1/erasures/places")).json()
        missing = await http.post(f"/v1/registries/{REGISTRY}/records/nobody/erase", json={})
        elsewhere = await make_token(served, "reader", registry="grid.tools")
        async with served.client(elsewhere) as scoped:
            places_elsewhere = (await scoped.get("/v1/erasures/places")).json()
    assert forbidden.status_code == 403
    assert erased.status_code == 201, erased.text
    notice = erased.json()["id"]
    assert erased.json()["registry"] == "grid.erasures" and erased.headers["Location"].endswith(notice)
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "record_erased"
    assert gone.json()["error"]["details"]["notice"] == notice
    assert history.status_code == 410 and rewrite.status_code == 410
    assert listed == [{"registry": REGISTRY, "record": "bob", "notice": notice, "state": "erased"}]
    (run,) = places["items"]  # the place of bob's create in the node's chain of REGISTRY
    assert (run["registry"], run["first"], run["last"], run["warrant"], run["notice"], run["linked"],
            run["asked"]) == (REGISTRY, run["first"], run["first"], "notice", notice, 1, False)
    assert places["owed"] == [] and places_elsewhere == {"items": [], "owed": []}
    assert missing.status_code == 404
    assert await _audit(served, lambda e: e["action"] == "erase" and e["target"] == f"blobs/{kept}"
                        and "purged" in e["reason"])
    assert await _audit(served, lambda e: e["action"] == "erase" and e["target"] == f"blobs/{held}"
                        and "held" in e["reason"])
    async with served.client() as http:
        assert (await http.get(f"/v1/blobs/{kept}")).status_code == 404
        assert (await http.get(f"/v1/blobs/{held}")).status_code == 200


async def test_notices_are_filed_by_the_erase_route_only_never_as_plain_records(served: Served) -> None:
    # A token limited to grid.erasures filed a notice for a registry it
    # could not write, and the record answered 410; a notice's positions
    # were rewritten by a PATCH.
    filer = await make_token(served, "writer", registry="grid.erasures")
    async with served.client() as http:
        made = await http.post(f"/v1/registries/{REGISTRY}/records",
                               json={"kind": "note", "id": "bob", "fields": {"name": SECRET}})
        assert made.status_code == 201, made.text
        me = (await http.get("/v1/identity")).json()
        fields = {"registry": REGISTRY, "record": "bob", "org": me["org"], "positions": []}
        async with served.client(filer) as scoped:
            forged = await scoped.post("/v1/registries/grid.erasures/records", json={"kind": "erasure",
                                                                                   "fields": fields})
            erase = await scoped.post(f"/v1/registries/{REGISTRY}/records/bob/erase", json={})
        assert forged.status_code == 403 and erase.status_code == 403
        assert (await http.get(f"/v1/registries/{REGISTRY}/records/bob")).status_code == 200
        notice = (await http.post(f"/v1/registries/{REGISTRY}/records/bob/erase", json={})).json()["id"]
        head = (await http.get("/v1/stats")).json()["feed_head"]
        at = f"/v1/registries/grid.erasures/records/{notice}"
        edits = [await http.patch(at, json={"patch": {"positions": [{"author": me["did"], "seqs": [[1, 999]]}]}}),
                 await http.put(at, json={"fields": fields}), await http.delete(at)]
        assert [e.status_code for e in edits] == [403, 403, 403]
        assert all("erase" in e.json()["error"]["message"] for e in edits)
        assert (await http.get("/v1/stats")).json()["feed_head"] == head


def test_rgrid_erase_then_compact_takes_the_bytes_off_the_disk(rgrid: Callable[..., Any], tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert rgrid("init", "--org-name", "test org", home=home).returncode == 0
    fields = json.dumps({"name": "bob-tool", "description": f"reach {SECRET}", "category": "testing"})
    made = rgrid("put", "grid.tools", "tool", "--id", "bob-tool", "--file", "-", "--json", input=fields, home=home)
    assert made.returncode == 0, made.stderr
    assert rgrid("update", "grid.tools", "bob-tool", "--set", "category=personal", home=home).returncode == 0
    refused = rgrid("erase", "grid.tools", "bob-tool", home=home, input="n\n")
    assert refused.returncode != 0  # asked, and the answer was no
    erased = rgrid("erase", "grid.tools", "bob-tool", "--yes", "--reason", "request 2026-8", "--json", home=home)
    assert erased.returncode == 0, erased.stderr
    assert json.loads(erased.stdout)["registry"] == "grid.erasures"
    shown = rgrid("get", "grid.tools", "bob-tool", home=home)
    assert shown.returncode != 0 and "erased" in shown.stderr
    listed = json.loads(rgrid("erasures", "--json", home=home).stdout)
    assert [(e["record"], e["state"]) for e in listed] == [("bob-tool", "erased")]
    places = json.loads(rgrid("erasures", "--places", "--json", home=home).stdout)
    assert [(p["registry"], p["last"] - p["first"] + 1, p["warrant"]) for p in places["items"]] == [
        ("grid.tools", 2, "notice")]
    shown = rgrid("erasures", "--places", home=home)
    assert shown.returncode == 0 and "places held without their bytes" in shown.stdout, shown.stderr
    data = Home(home).store_path / "data.mdb"
    compacted = rgrid("store", "compact", "--json", home=home)
    assert compacted.returncode == 0, compacted.stderr
    report = json.loads(compacted.stdout)
    assert report["verified"] is True and report["bytes_after"] <= report["bytes_before"]
    assert SECRET.encode() not in data.read_bytes()
    verified = json.loads(rgrid("verify", "--json", home=home).stdout)
    assert verified["ok"] and verified["erased"] == 2


def test_the_client_sdk_erases_through_a_running_node(threaded_served: Served) -> None:
    from registrygrid.client import BridgeClient
    from registrygrid.errors import RecordErased

    client = BridgeClient(threaded_served.url, token=threaded_served.admin)
    client.put(REGISTRY, "note", {"name": SECRET}, id="carol")
    erased = client.erase(REGISTRY, "carol", reason="request 2026-9")
    assert erased.registry == "grid.erasures" and erased.status == "created"
    assert client.erase(REGISTRY, "carol").status == "unchanged"
    assert [(e["record"], e["state"]) for e in client.erasures()] == [("carol", "erased")]
    assert [p["notice"] for p in client.erased_places()["items"]] == [erased.record_id]
    try:
        client.get(REGISTRY, "carol")
    except RecordErased as gone:
        assert gone.details["notice"] == erased.record_id
    else:
        raise AssertionError("an erased record answers 410")


async def test_an_erasure_forgets_the_idempotent_answers_that_hold_the_record(served: Served) -> None:
    # The answer to a keyed create holds the record as written, and was
    # replayed (201, every field) for a day after the record was erased.
    key = {"Idempotency-Key": "create-bob-1"}
    body = {"kind": "note", "id": "bob", "fields": {"name": SECRET}}
    async with served.client() as http:
        made = await http.post(f"/v1/registries/{REGISTRY}/records", json=body, headers=key)
        carol = {"kind": "note", "id": "carol", "fields": {"name": "carol"}}
        other = await http.post(f"/v1/registries/{REGISTRY}/records", json=carol,
                                headers={"Idempotency-Key": "create-carol-1"})
        assert made.status_code == other.status_code == 201
        assert (await http.post(f"/v1/registries/{REGISTRY}/records/bob/erase", json={})).status_code == 201
        replay = await http.post(f"/v1/registries/{REGISTRY}/records", json=body, headers=key)
        kept = await http.post(f"/v1/registries/{REGISTRY}/records", json=carol,
                               headers={"Idempotency-Key": "create-carol-1"})
    assert replay.status_code == 410 and SECRET not in replay.text
    assert kept.status_code == 201 and kept.headers["Idempotent-Replayed"] == "true"
    assert SECRET.encode() not in _store_bytes(served)


def _store_bytes(served: Served) -> bytes:
    """Every value of the store's idempotency table, as LMDB holds it."""
    store = served.node.registry.store
    with store.read() as txn:
        return b"".join(v for _, v in txn.cursor(db=store.db["idempotency"]))


async def test_an_erasure_naming_what_is_no_blob_cid_is_refused_and_a_stored_one_stops_no_start(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    # The schema's pattern let "baaa...a" through: the notice was signed and
    # kept for good, and every later start of the node stopped on it (exit 65).
    from test_bridge_support import setup_notes, start_served

    from registrygrid.blobs.erasure import still_held
    from registrygrid.engine.ops import Erase, Put
    from registrygrid.sdk import LocalRegistry

    fake = "b" + "a" * 58
    served = await start_served(nursery, tmp_path / "home")
    await setup_notes(served)
    async with served.client() as http:
        await http.post(f"/v1/registries/{REGISTRY}/records", json={"kind": "note", "id": "x", "fields": {"name": "x"}})
        head = served.node.registry.feed_head()  # the store's, not the bridge's hub (it follows commits a moment late)
        refused = await http.post(f"/v1/registries/{REGISTRY}/records/x/erase", json={"blobs": [fake]})
        after = served.node.registry.feed_head()
    assert refused.status_code == 422 and refused.json()["error"]["details"][0]["path"] == "/blobs/0"
    assert after == head
    await served.stop()
    # A notice a peer signed with such a name (one from before this check): stored, then a restart.
    with LocalRegistry.open_home(tmp_path / "home") as grid:
        grid.engine.execute([Put(REGISTRY, "note", {"name": "y"}, "y")])
        erase = Erase(REGISTRY, "y", "", (fake,))
        from registrygrid.engine import erasure as erasure_mod
        real = erasure_mod.parse_cid
        erasure_mod.parse_cid = lambda text: None  # as a node before the check
        try:
            grid.engine.execute([erase])
        finally:
            erasure_mod.parse_cid = real
        assert still_held(served.node.assets.blobs, [fake]) == []
    again = await start_served(nursery, tmp_path / "home")  # it starts
    assert [(e["record"], e["state"]) for e in again.node.registry.erasures()] == [("y", "erased")]
    again.node.stop()
