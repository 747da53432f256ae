"""Disputes through the bridge: listed, shown and resolved over HTTP, by
httpx and by the project's BridgeClient, against a real node whose store
met a real conflict (a second node of its org raced it on a field under
the manual rule). Also the audit ledger filtered to one record."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from test_bridge_api import assert_error
from test_bridge_support import Served, make_token

from registrygrid.client import BridgeClient
from registrygrid.engine.ops import Remote
from registrygrid.errors import NotFound, PolicyDenied, SchemaViolation, ValidationError
from registrygrid.home import read_key_file
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.node.bridge.openapi import schema_validator
from registrygrid.sdk import LocalRegistry
from tests.test_engine import wires_in_feed_order as wires

pytest_plugins = ("test_bridge_support",)  # its fixtures: served

pytestmark = pytest.mark.timeout(60)

PRICES = "test.prices"
RECORDS = f"/v1/registries/{PRICES}/records"
NODE_D = KeyPair(b"\xd2" * 32)
UNKNOWN = "dispute-" + "a" * 32


def remote(batch: list[bytes]) -> list[Remote]:
    return [Remote(w, "peer") for w in batch]


@dataclass
class Disputed:
    served: Served
    other: LocalRegistry  # node d, a second node of the served node's org, which raced it
    dispute: str


@pytest.fixture
async def disputed(served: Served, tmp_path: Path) -> AsyncIterator[Disputed]:
    """The served node's org owns test.prices (field n under the manual rule)
    and record n1 (n = 1); the node sets n to 2 while node d, a second node
    of the org that has not seen it, sets n to 3; the node then hears d's change."""
    node = served.node
    org_key = read_key_file(served.home.org_key_path)
    other = LocalRegistry.open_path(tmp_path / "d", NODE_D, delegation=sign_delegation(org_key, NODE_D.did,
                                                                                      ["node", "writer"]))
    try:
        async with served.client() as client:
            r = await client.post("/v1/registries", json={"name": PRICES, "kinds": ["note"], "write_policy": "members",
                                                          "conflict_policy": {"fields": {"n": "manual"}}})
            assert r.status_code == 201, r.text
            r = await client.post(RECORDS, json={"kind": "note", "id": "n1", "fields": {"name": "x", "n": 1}})
            assert r.status_code == 201, r.text
            other.execute(remote(wires(node.registry)))
            await node.submit(remote(wires(other)))  # d's delegation
            r = await client.patch(f"{RECORDS}/n1", json={"patch": {"n": 2}})
            assert r.status_code == 200, r.text
        other.update(PRICES, "n1", patch={"n": 3})
        outcomes = await node.submit(remote(wires(other)))
        assert {o.status for o in outcomes} <= {"applied", "duplicate"}, [(o.status, o.error) for o in outcomes if o.status == "refused"]
        (found,) = node.registry.disputes()
        yield Disputed(served, other, found["id"])
    finally:
        other.close()


def valid(schema: str, body: Any) -> bool:
    errors = list(schema_validator(schema).iter_errors(body))
    assert not errors, [e.message for e in errors[:3]]
    return True


async def test_a_field_dispute_is_listed_and_shown_as_the_sdk_shows_it(disputed: Disputed) -> None:
    with trio.fail_after(30):
        async with disputed.served.client() as client:
            listed = (await client.get("/v1/disputes")).json()
            assert valid("Disputes", listed)
            (item,) = listed["items"]
            assert (item["id"], item["type"], item["status"]) == (disputed.dispute, "field", "disputed")
            assert (item["registry"], item["record"], item["path"]) == (PRICES, "n1", "/fields/n")
            assert {w["value"] for w in item["writes"]} == {2, 3}
            assert listed["items"] == disputed.served.node.registry.disputes()

            assert len((await client.get("/v1/disputes", params={"status": "disputed"})).json()["items"]) == 1
            assert (await client.get("/v1/disputes", params={"status": "resolved"})).json()["items"] == []
            assert_error(await client.get("/v1/disputes", params={"status": "open"}), 422, "validation_failed")

            shown = (await client.get(f"/v1/disputes/{disputed.dispute}")).json()
            assert valid("Dispute", shown)
            assert shown["was"] == 1 and shown["diff"][0] == "was: 1"
            assert shown["resolutions"] == []
            assert shown == disputed.served.node.registry.dispute(disputed.dispute)


async def test_an_unknown_dispute_is_404_whether_or_not_its_id_is_well_formed(disputed: Disputed) -> None:
    with trio.fail_after(30):
        async with disputed.served.client() as client:
            assert_error(await client.get(f"/v1/disputes/{UNKNOWN}"), 404, "not_found")
            assert_error(await client.get("/v1/disputes/not-a-dispute"), 404, "not_found")
            assert_error(await client.post(f"/v1/disputes/{UNKNOWN}/resolve", json={"value": 1}), 404, "not_found")


async def test_resolving_over_http_files_a_signed_resolution_that_the_record_then_shows(disputed: Disputed) -> None:
    with trio.fail_after(30):
        async with disputed.served.client() as client:
            r = await client.post(f"/v1/disputes/{disputed.dispute}/resolve",
                                  json={"value": 7, "note": "the list price"})
            assert r.status_code == 201, r.text
            filed = r.json()
            assert (filed["status"], filed["registry"]) == ("created", "grid.disputes")
            assert filed["record"]["tags"] == [disputed.dispute]
            assert filed["record"]["created_by"] == disputed.served.node.engine.key.did
            assert r.headers["Location"] == f"/v1/registries/grid.disputes/records/{filed['id']}"

            record = (await client.get(f"{RECORDS}/n1")).json()
            assert record["fields"]["n"] == 7
            (conflict,) = record["conflicts"]
            assert (conflict["status"], conflict["resolved_by"]) == ("resolved", filed["change_id"])
            shown = (await client.get(f"/v1/disputes/{disputed.dispute}")).json()
            assert shown["status"] == "resolved"
            assert [(r["value"], r["counts"], r["note"]) for r in shown["resolutions"]] == [(7, True, "the list price")]
            assert (await client.get("/v1/disputes", params={"status": "disputed"})).json()["items"] == []


async def test_a_resolution_needs_a_value_or_removed_but_not_both(disputed: Disputed) -> None:
    with trio.fail_after(30):
        async with disputed.served.client() as client:
            resolve = f"/v1/disputes/{disputed.dispute}/resolve"
            assert_error(await client.post(resolve, json={}), 422, "validation_failed")
            assert_error(await client.post(resolve, json={"value": 1, "removed": True}), 422, "validation_failed")
            assert_error(await client.post(resolve, json={"value": 1, "extra": 2}), 422, "validation_failed")
            r = await client.post(resolve, json={"removed": True})
            assert r.status_code == 201, r.text
            assert "n" not in (await client.get(f"{RECORDS}/n1")).json()["fields"]


async def test_a_resolution_that_would_leave_its_record_outside_its_kind_is_refused_and_nothing_is_filed(
        disputed: Disputed) -> None:
    # It was filed, and the record then showed a value its kind refuses:
    # every later update of it failed with schema_violation.
    served = disputed.served
    with trio.fail_after(30):
        async with served.client() as client:
            head = (await client.get("/v1/stats")).json()["feed_head"]
            resolve = f"/v1/disputes/{disputed.dispute}/resolve"
            refused = await client.post(resolve, json={"value": {"nested": [1, 2, 3]}})
            assert_error(refused, 422, "schema_violation")
            assert "/n" in refused.text
            assert (await client.get("/v1/stats")).json()["feed_head"] == head
            assert (await client.get(f"/v1/disputes/{disputed.dispute}")).json()["resolutions"] == []
    with pytest.raises(SchemaViolation):  # the SDK checks it the same way
        served.node.registry.resolve_dispute(disputed.dispute, value="two")


async def test_a_token_that_may_not_write_grid_disputes_is_refused_and_nothing_is_filed(disputed: Disputed) -> None:
    served = disputed.served
    with trio.fail_after(30):
        reader = await make_token(served, "reader")
        elsewhere = await make_token(served, "writer", registry=PRICES)
        # Limited to grid.disputes, where resolutions are filed: it resolved
        # any registry's disputes, even of a registry it could not read.
        filer = await make_token(served, "writer", registry="grid.disputes")
        resolve = f"/v1/disputes/{disputed.dispute}/resolve"
        for token, status, code in ((reader, 403, "policy_denied"), (elsewhere, 403, "policy_denied"),
                                    (filer, 404, "not_found")):  # another registry's dispute: as unknown to it
            async with served.client(token) as client:
                assert_error(await client.post(resolve, json={"value": 9}), status, code)
        async with served.client(filer) as client:  # nor may it file one as a plain record
            assert_error(await client.post("/v1/registries/grid.disputes/records", json={
                "kind": "dispute-resolution", "fields": {"dispute": disputed.dispute, "outcome": "value", "value": 9},
                "tags": [disputed.dispute]}), 403, "policy_denied")
        async with served.client() as client:
            assert (await client.get(f"{RECORDS}/n1")).json()["fields"]["n"] in (2, 3)
        async with served.client(reader) as client:  # a reader still reads it
            assert (await client.get(f"/v1/disputes/{disputed.dispute}")).json()["resolutions"] == []
        async with served.client(elsewhere) as client:  # scoped to the dispute's registry: sees it too
            assert [d["id"] for d in (await client.get("/v1/disputes")).json()["items"]] == [disputed.dispute]


async def test_a_token_limited_to_another_registry_neither_lists_nor_reads_the_dispute(disputed: Disputed) -> None:
    served = disputed.served
    with trio.fail_after(30):
        scoped = await make_token(served, "reader", registry="test.notes")
        async with served.client(scoped) as client:
            assert (await client.get("/v1/disputes")).json()["items"] == []
            # As an unknown one: a 403 said it exists, and named its registry.
            hidden = assert_error(await client.get(f"/v1/disputes/{disputed.dispute}"), 404, "not_found")
            unknown = assert_error(await client.get(f"/v1/disputes/{UNKNOWN}"), 404, "not_found")
            assert PRICES not in hidden["message"]
            assert hidden["message"].replace(disputed.dispute, UNKNOWN) == unknown["message"]


async def test_the_client_has_the_sdk_dispute_methods_and_errors(disputed: Disputed) -> None:
    served = disputed.served

    def work(url: str, admin: str, reader: str) -> None:
        with BridgeClient(url, token=admin) as client:
            (listed,) = client.disputes()
            assert listed["id"] == disputed.dispute
            assert client.disputes(status="resolved") == []
            with pytest.raises(ValidationError):
                client.disputes(status="open")
            assert client.dispute(disputed.dispute)["was"] == 1
            with pytest.raises(NotFound):
                client.dispute(UNKNOWN)
            with pytest.raises(ValidationError):
                client.resolve_dispute(disputed.dispute)  # a field dispute needs a value
            with pytest.raises(SchemaViolation):  # n is an integer in the note kind
                client.resolve_dispute(disputed.dispute, value={"amount": 5})
            result = client.resolve_dispute(disputed.dispute, value=5, note="from the client")
            assert (result.status, result.registry) == ("created", "grid.disputes")
            assert client.get(PRICES, "n1")["fields"]["n"] == 5
            assert client.dispute(disputed.dispute)["resolutions"][-1]["note"] == "from the client"
        with BridgeClient(url, token=reader) as client, pytest.raises(PolicyDenied):
            client.resolve_dispute(disputed.dispute, removed=True)

    with trio.fail_after(30):
        reader = await make_token(served, "reader")
        await trio.to_thread.run_sync(work, served.url, served.admin, reader)


async def test_records_that_show_conflicts_are_listed_with_conflicted_by_http_and_by_the_client(
        disputed: Disputed) -> None:
    served = disputed.served
    with trio.fail_after(30):
        async with served.client() as client:
            r = await client.post(RECORDS, json={"kind": "note", "id": "n2", "fields": {"name": "calm", "n": 1}})
            assert r.status_code == 201, r.text
            every = (await client.get(RECORDS)).json()["items"]
            assert [i["id"] for i in every] == ["n1", "n2"]
            for path in (RECORDS, "/v1/records"):
                r = await client.get(path, params={"conflicted": "true"})
                assert r.status_code == 200, r.text
                assert [i["id"] for i in r.json()["items"]] == ["n1"]
                assert r.json()["items"][0]["conflicts"][0]["dispute"] == disputed.dispute
            r = await client.get(RECORDS, params={"conflicted": "false"})
            assert [i["id"] for i in r.json()["items"]] == ["n1", "n2"]
            assert_error(await client.get(RECORDS, params={"conflicted": "maybe"}), 400, "malformed_input")

    def work(url: str, admin: str) -> None:
        with BridgeClient(url, token=admin) as client:
            assert [r["id"] for r in client.list(PRICES, conflicted=True).items] == ["n1"]
            assert [r["id"] for r in client.iter_all(PRICES, conflicted=True)] == ["n1"]

    await trio.to_thread.run_sync(work, served.url, served.admin)


async def test_the_audit_log_filtered_to_a_record_shows_its_writes_and_how_its_conflict_was_settled(
        disputed: Disputed) -> None:
    served = disputed.served
    target = f"{PRICES}/n1"
    with trio.fail_after(30):
        async with served.client() as client:
            r = await client.get("/v1/audit", params={"target": target, "limit": 1000})
            assert r.status_code == 200, r.text
            entries = r.json()["entries"]
            assert entries and {e["target"] for e in entries} == {target}
            assert sorted(e["action"] for e in entries) == ["create", "merge", "update", "update"]
            updaters = {e["actor"] for e in entries if e["action"] == "update"}
            assert updaters == {served.node.engine.key.did, NODE_D.did}
            merges = [e["reason"] for e in entries if e["action"] == "merge"]
            assert merges and disputed.dispute in merges[-1]
            everything = (await client.get("/v1/audit", params={"limit": 10_000})).json()["entries"]
            assert [e for e in everything if e["target"] == target] == entries
            newest = (await client.get("/v1/audit", params={"target": target, "limit": 1, "reverse": "true"}))
            assert newest.json()["entries"] == entries[-1:]
            assert_error(await client.get("/v1/audit", params={"target": "no-slash"}), 422, "validation_failed")

    def work(url: str, admin: str) -> None:
        with BridgeClient(url, token=admin) as client:
            assert [e.seq for e in client.audit_log(target=target, limit=1000)] == [e["seq"] for e in entries]

    await trio.to_thread.run_sync(work, served.url, served.admin)
