"""The bridge's REST API against a real node: records, registries, kinds, errors, idempotency."""

from __future__ import annotations

import json

import pytest
import trio
from test_bridge_support import OTHER, REGISTRY, Served, make_token

from registrygrid.errors import ValidationError
from registrygrid.node.bridge.openapi import MAX_BODY_BYTES
from registrygrid.storage import tokens

pytest_plugins = ("test_bridge_support",)  # its fixtures: served

pytestmark = pytest.mark.timeout(60)

RECORDS = f"/v1/registries/{REGISTRY}/records"


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"code", "message", "details", "trace_id"}
    assert err["code"] == code, err
    assert err["trace_id"] == response.headers["X-Trace-Id"]
    return err


async def test_record_crud_with_etags_and_history(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client() as client:
            r = await client.post(RECORDS, json={"kind": "note", "id": "n1", "fields": {"name": "one", "n": 1},
                                                 "tags": ["blue"]})
            assert r.status_code == 201, r.text
            created = r.json()
            assert created["status"] == "created" and created["id"] == "n1"
            assert r.headers["Location"] == f"{RECORDS}/n1"
            assert r.headers["X-Trace-Id"]

            r = await client.get(f"{RECORDS}/n1")
            assert r.status_code == 200
            record = r.json()
            assert record["fields"] == {"name": "one", "n": 1} and record["tags"] == ["blue"]
            etag = r.headers["ETag"]
            assert etag == f'"{record["change_id"]}"' == f'"{created["change_id"]}"'

            r = await client.get(f"{RECORDS}/n1", headers={"If-None-Match": etag})
            assert r.status_code == 304 and r.content == b""
            # A read evaluates If-Match too (RFC 9110 13.1.1); before, it was
            # ignored and another version than the one named was answered.
            r = await client.get(f"{RECORDS}/n1", headers={"If-Match": '"an-older-change"'})
            assert_error(r, 412, "precondition_failed")
            r = await client.get(f"{RECORDS}/n1", headers={"If-Match": etag})
            assert r.status_code == 200 and r.json() == record

            # If-Match compares strongly: the current tag made weak matches nothing.
            r = await client.put(f"{RECORDS}/n1", json={"fields": {"name": "weak"}}, headers={"If-Match": "W/" + etag})
            assert_error(r, 412, "precondition_failed")
            r = await client.put(f"{RECORDS}/n1", json={"fields": {"name": "uno"}}, headers={"If-Match": etag})
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "updated" and r.json()["record"]["fields"] == {"name": "uno"}

            # The old ETag no longer matches: 412, and nothing changed.
            r = await client.put(f"{RECORDS}/n1", json={"fields": {"name": "stale"}}, headers={"If-Match": etag})
            assert_error(r, 412, "precondition_failed")
            r = await client.patch(f"{RECORDS}/n1", content=json.dumps({"n": 7, "region": "eu"}),
                                   headers={"Content-Type": "application/merge-patch+json"})
            assert r.status_code == 200, r.text
            assert r.json()["record"]["fields"] == {"name": "uno", "n": 7, "region": "eu"}
            r = await client.patch(f"{RECORDS}/n1", json={"patch": {"region": None}, "tags": ["red", "green"]})
            assert r.status_code == 200, r.text
            assert r.json()["record"]["fields"] == {"name": "uno", "n": 7}
            assert r.json()["record"]["tags"] == ["green", "red"]

            r = await client.get(f"{RECORDS}/n1/history")
            assert [h["op"] for h in r.json()["history"]] == ["create", "update", "update", "update"]

            r = await client.delete(f"{RECORDS}/n1")
            assert r.status_code == 200 and r.json()["status"] == "deleted"
            assert_error(await client.get(f"{RECORDS}/n1"), 404, "not_found")
            r = await client.get(f"{RECORDS}/n1", params={"include_deleted": "true"})
            assert r.status_code == 200 and r.json()["deleted"] is True


async def test_post_without_id_generates_one_and_lists_across_registries(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client() as client:
            r = await client.post(RECORDS, json={"kind": "note", "fields": {"name": "anon"}})
            assert r.status_code == 201
            new_id = r.json()["id"]
            assert len(new_id) == 26  # a ULID
            r = await client.post(f"/v1/registries/{OTHER}/records", json={"kind": "note", "id": "o1",
                                                                           "fields": {"name": "other"}})
            assert r.status_code == 201
            r = await client.get("/v1/records", params={"kind": "note"})
            got = [(i["registry"], i["id"]) for i in r.json()["items"]]
            assert (REGISTRY, new_id) in got and (OTHER, "o1") in got


async def test_list_filters_where_and_cursor_pages(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client() as client:
            for i in range(12):
                r = await client.post(RECORDS, json={"kind": "note", "id": f"r{i:02d}",
                                                     "fields": {"name": f"n{i}", "n": i,
                                                                "region": "eu" if i % 2 else "us"},
                                                     "tags": ["odd" if i % 2 else "even"]})
                assert r.status_code == 201
            r = await client.get(RECORDS, params=[("where", "n:ge:4"), ("where", "region:eq:eu"), ("limit", "2")])
            page = r.json()
            assert [i["id"] for i in page["items"]] == ["r05", "r07"] and page["next_cursor"]
            r = await client.get(RECORDS, params=[("where", "n:ge:4"), ("where", "region:eq:eu"),
                                                  ("cursor", page["next_cursor"])])
            assert [i["id"] for i in r.json()["items"]] == ["r09", "r11"] and r.json()["next_cursor"] is None
            r = await client.get(RECORDS, params={"tag": "even", "limit": 100})
            assert len(r.json()["items"]) == 6
            assert_error(await client.get(RECORDS, params={"sort": "name"}), 422, "validation_failed")
            assert_error(await client.get(RECORDS, params={"where": "n:approx:3"}), 422, "validation_failed")
            assert_error(await client.get(RECORDS, params={"limit": "lots"}), 400, "malformed_input")
            assert_error(await client.get(RECORDS, params={"limit": "0"}), 422, "validation_failed")
            assert_error(await client.get(RECORDS, params={"cursor": "!!"}), 422, "validation_failed")


async def test_a_listing_refuses_what_its_openapi_document_refuses_naming_the_parameter(served: Served) -> None:
    # An owner past the document's 256 characters and a where filter past
    # its 1024 were answered 200; a bad cursor and a 17th filter were 422s
    # that named no part (details null), though the document says 422
    # lists every failing path.
    with trio.fail_after(30):
        async with served.client() as client:
            refused = {"owner": [("owner", "did:key:z" + "a" * 300)],
                       "where": [("where", "name:eq:" + "x" * 1100)],
                       "cursor": [("cursor", "!!")],
                       # a number past a float's range compared as a string and matched nothing
                       "where  ": [("where", "n:lt:1e999")]}
            for name, params in {**refused, "where ": [("where", f"n:ge:{i}") for i in range(17)]}.items():
                err = assert_error(await client.get(RECORDS, params=params), 422, "validation_failed")
                assert [d["path"] for d in err["details"]] == [f"query:{name.strip()}"], err


async def test_a_parameter_given_twice_is_refused_unless_it_adds_a_condition(served: Served) -> None:
    # Handlers read the first of two: ?registry=a&registry=b answered for a
    # while a proxy or a log reading the last saw b.
    with trio.fail_after(30):
        async with served.client() as client:
            r = await client.post(RECORDS, json={"kind": "note", "id": "n1", "fields": {"name": "n1", "n": 1}, "tags": ["t"]})
            assert r.status_code == 201
            for params in ([("tag", "t"), ("tag", "u")], [("limit", "1"), ("limit", "1000")],
                           [("registry", REGISTRY), ("registry", OTHER)]):
                path = "/v1/records" if params[0][0] == "registry" else RECORDS
                err = assert_error(await client.get(path, params=params), 400, "malformed_input")
                name = params[0][0]
                assert f"'{name}' is given 2 times" in err["message"]
                assert err["details"] == [{"path": f"query:{name}", "message": "given more than once"}]
            r = await client.get(RECORDS, params=[("where", "n:ge:1"), ("where", "n:le:1")])
            assert [i["id"] for i in r.json()["items"]] == ["n1"]


async def test_a_body_that_names_a_member_twice_is_refused(served: Served) -> None:
    # Ours kept the last value, a proxy or signer in front may keep the
    # first: {"role": "reader", "role": "admin"} minted an admin token.
    with trio.fail_after(30):
        async with served.client() as client:
            twice = [(RECORDS, b'{"kind": "note", "id": "d", "fields": {"name": "a", "name": "b"}}'),
                     ("/v1/tokens", b'{"role": "reader", "role": "admin"}')]
            for path, body in twice:
                err = assert_error(await client.post(path, content=body, headers={"Content-Type": "application/json"}),
                                   400, "malformed_input")
                assert "twice in one object" in err["message"]
            assert_error(await client.get(f"{RECORDS}/d"), 404, "not_found")
            r = await client.post(RECORDS, json={"kind": "note", "id": "d", "fields": {"name": "a"}})
            assert r.status_code == 201  # the same body, each member once


async def test_pagination_is_stable_under_concurrent_inserts(served: Served) -> None:
    """Every record that existed before the walk is seen exactly once, whatever is inserted meanwhile."""
    with trio.fail_after(60):
        async with served.client() as client:
            before = {f"b{i:03d}" for i in range(0, 120, 2)}
            for rid in sorted(before):
                assert (await client.post(RECORDS, json={"kind": "note", "id": rid,
                                                         "fields": {"name": rid}})).status_code == 201
            seen: list[str] = []
            inserting = True

            async def insert() -> None:
                n = 0
                while inserting:  # ids between and around the existing ones, each new (a slow walk wraps around)
                    r = await client.post(RECORDS, json={"kind": "note", "id": f"b{(2 * n + 1) % 140:03d}x{n // 70}",
                                                         "fields": {"name": "late"}})
                    assert r.status_code == 201
                    n += 1
                    await trio.sleep(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(insert)
                cursor = None
                while True:
                    params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
                    page = (await client.get(RECORDS, params=params)).json()
                    seen += [i["id"] for i in page["items"]]
                    cursor = page["next_cursor"]
                    if cursor is None:
                        break
                    await trio.sleep(0.01)
                inserting = False
            assert len(seen) == len(set(seen)), "an item was seen twice"
            assert before <= set(seen), f"missed {sorted(before - set(seen))}"
            assert seen == sorted(seen)


async def test_registries_and_kinds_endpoints(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client() as client:
            names = [r["name"] for r in (await client.get("/v1/registries")).json()["registries"]]
            assert REGISTRY in names and "grid.functions" in names
            r = await client.get(f"/v1/registries/{REGISTRY}")
            assert r.json()["kinds"] == ["note"] and r.json()["records"] == 0
            assert_error(await client.get("/v1/registries/no.such"), 404, "unknown_registry")
            assert_error(await client.post("/v1/registries", json={"name": REGISTRY, "kinds": ["note"]}),
                         409, "already_exists")
            r = await client.get("/v1/kinds/note")
            assert r.json()["versions"] == [1] and r.json()["builtin"] is False
            assert any(k["name"] == "function" for k in (await client.get("/v1/kinds")).json()["kinds"])
            assert_error(await client.get("/v1/kinds/nosuchkind"), 404, "kind_not_found")
            assert_error(await client.get("/v1/kinds/note?version=9"), 404, "kind_not_found")
            identity = (await client.get("/v1/identity")).json()
            assert identity["did"].startswith("did:key:") and identity["org_name"] == "test org"
            stats = (await client.get("/v1/stats")).json()
            assert stats["feed_head"] >= 3 and "entries.tokens" in stats


async def test_error_shapes_are_typed_4xx_never_5xx(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client() as client:
            assert_error(await client.post(RECORDS, content=b'{"kind": "note", "fields": ',
                                           headers={"Content-Type": "application/json"}), 400, "malformed_input")
            assert_error(await client.post(RECORDS, content=b""), 400, "malformed_input")
            # msgspec calls a lone high surrogate "Input data was truncated": the body is whole.
            surrogate = assert_error(await client.post(RECORDS, content=b'{"kind": "note", "fields": {"name": "\\ud800"}}',
                                                       headers={"Content-Type": "application/json"}),
                                     400, "malformed_input")
            assert "lone surrogate" in surrogate["message"] and "truncated" not in surrogate["message"]
            cut = assert_error(await client.post(RECORDS, content=b'{"kind": "note", "fields": {"name": "x',
                                                 headers={"Content-Type": "application/json"}), 400, "malformed_input")
            assert "truncated" in cut["message"]
            err = assert_error(await client.post(RECORDS, json={"kind": 5, "fields": [], "tags": "x", "extra": 1}),
                               422, "validation_failed")
            # An unknown member is named itself, as the query parser names it.
            assert {d["path"] for d in err["details"]} == {"/extra", "/kind", "/fields", "/tags"}
            big = {"kind": "note", "fields": {"name": "x" * (MAX_BODY_BYTES + 10)}}
            assert_error(await client.post(RECORDS, json=big), 413, "too_large")
            # Under the body cap but over the record cap (128 KiB of fields).
            assert_error(await client.post(RECORDS, json={"kind": "note", "fields": {"name": "y" * 200_000}}),
                         413, "too_large")
            assert_error(await client.post("/v1/registries/no.such/records",
                                           json={"kind": "note", "fields": {"name": "x"}}), 404, "unknown_registry")
            assert_error(await client.get("/v1/registries/Bad Name/records/x"), 422, "validation_failed")
            assert_error(await client.post(RECORDS, json={"kind": "note", "fields": {"name": "x"}, "id": "../x"}),
                         422, "validation_failed")
            deep: dict = {}
            cursor = deep
            for _ in range(60):
                cursor["a"] = {}
                cursor = cursor["a"]
            assert_error(await client.post(RECORDS, json={"kind": "note", "fields": {"name": "x", "meta": deep}}),
                         422, "validation_failed")
            assert_error(await client.delete("/v1/registries"), 405, "method_not_allowed")
            assert_error(await client.get("/v1/nothing/here"), 404, "route_not_found")
            assert_error(await client.get(f"{RECORDS}/missing"), 404, "not_found")
            assert_error(await client.get("/v1/changes", params={"wait": "nan"}), 422, "validation_failed")
            assert_error(await client.get("/v1/changes", params={"since": "-1"}), 422, "validation_failed")


async def test_schema_violation_details_list_every_failing_path(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client() as client:
            r = await client.post(RECORDS, json={"kind": "note", "fields": {"n": "seven", "region": 3,
                                                                            "meta": "flat"}})
            err = assert_error(r, 422, "schema_violation")
            paths = {d["path"] for d in err["details"]}
            assert {"/n", "/region", "/meta"} <= paths and any(d["message"].startswith("'name'")
                                                                 for d in err["details"])


async def test_idempotency_key_replays_the_first_answer_and_creates_nothing_new(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client() as client:
            body = {"kind": "note", "fields": {"name": "once"}}
            key = {"Idempotency-Key": "create-once-1"}
            first = await client.post(RECORDS, json=body, headers=key)
            assert first.status_code == 201
            again = await client.post(RECORDS, json=body, headers=key)
            assert again.status_code == 201 and again.json() == first.json()
            assert again.headers["Idempotent-Replayed"] == "true"
            assert again.headers["Location"] == first.headers["Location"]
            page = (await client.get(RECORDS, params={"where": "name:eq:once"})).json()
            assert len(page["items"]) == 1
            assert_error(await client.post(RECORDS, json={**body, "tags": ["other"]}, headers=key),
                         422, "idempotency_key_reused")
            # Keys are per token: another token's same key is another request.
            writer = await make_token(served, "writer")
            async with served.client(writer) as other:
                r = await other.post(RECORDS, json=body, headers=key)
                assert r.status_code == 201 and r.json()["id"] != first.json()["id"]
            # A refused request frees its key (nothing was written).
            bad = {"kind": "note", "fields": {"n": 1}}
            assert_error(await client.post(RECORDS, json=bad, headers={"Idempotency-Key": "k2"}), 422,
                         "schema_violation")
            assert_error(await client.post(RECORDS, json=bad, headers={"Idempotency-Key": "k2"}), 422,
                         "schema_violation")
            assert_error(await client.post(RECORDS, json=body, headers={"Idempotency-Key": "k" * 300}),
                         422, "validation_failed")


async def test_an_idempotent_write_and_its_answer_commit_together(served: Served) -> None:
    """The engine stores the answer in the write's own transaction: the
    entry is there, complete, the moment the write is, and a retry that
    finds a reservation an earlier bridge left (no answer yet) reuses the
    record id it reserved instead of making a twin."""
    from registrygrid.storage import idempotency

    store = served.node.registry.store
    admin = tokens.authenticate(store, served.admin)
    with trio.fail_after(30):
        async with served.client() as client:
            body = {"kind": "note", "fields": {"name": "paired"}}
            first = await client.post(RECORDS, json=body, headers={"Idempotency-Key": "paired-1"})
            assert first.status_code == 201, first.text
            entry = idempotency.lookup(store, admin.id, "paired-1", now_ms=tokens.now_ms())
            assert entry is not None and entry.done and entry.status == 201
            assert json.loads(entry.body) == first.json()
            assert entry.headers == {"Location": first.headers["Location"], "ETag": first.headers["ETag"]}
            refused = await client.post(RECORDS, json={"kind": "note", "fields": {"n": 1}},
                                        headers={"Idempotency-Key": "paired-2"})
            assert_error(refused, 422, "schema_violation")
            assert idempotency.lookup(store, admin.id, "paired-2", now_ms=tokens.now_ms()) is None

            # A reservation as the bridge before this one wrote it: the
            # request's hash and the record id it chose, no answer.
            legacy = {"kind": "note", "fields": {"name": "reserved"}}
            raw = json.dumps(legacy).encode()
            r = await client.post(RECORDS, content=raw, headers={"Idempotency-Key": "probe",
                                                                  "Content-Type": "application/json"})
            probe = idempotency.lookup(store, admin.id, "probe", now_ms=tokens.now_ms())
            assert r.status_code == 201 and probe is not None
            with store.write() as txn:
                idempotency.remember(store, txn, admin.id, "legacy-1", idempotency.Entry(
                    probe.expires_at, probe.request_hash, {"id": "reserved-id"}))
            r = await client.post(RECORDS, content=raw, headers={"Idempotency-Key": "legacy-1",
                                                                  "Content-Type": "application/json"})
            assert r.status_code == 201 and r.json()["id"] == "reserved-id"
            again = await client.post(RECORDS, content=raw, headers={"Idempotency-Key": "legacy-1",
                                                                      "Content-Type": "application/json"})
            assert again.headers["Idempotent-Replayed"] == "true" and again.json() == r.json()


def reads_counted(entry: dict) -> int:
    """How many reads an audit entry stands for ("... (xN)" when folded)."""
    reason = entry["reason"]
    if reason.endswith(")") and "(x" in reason:
        return int(reason.rsplit("(x", 1)[1][:-1])
    return 1


async def test_reads_through_the_api_are_audited_in_batches(served: Served) -> None:
    with trio.fail_after(30):
        reader = await make_token(served, "reader", name="auditor-app")
        async with served.client() as admin:
            assert (await admin.post(RECORDS, json={"kind": "note", "id": "seen",
                                                    "fields": {"name": "s"}})).status_code == 201
        async with served.client(reader) as client:
            for _ in range(3):
                assert (await client.get(f"{RECORDS}/seen")).status_code == 200
        async with served.client() as admin:
            for _ in range(50):  # the flusher runs every ~200 ms
                entries = (await admin.get("/v1/audit", params={"limit": 1000})).json()["entries"]
                reads = [e for e in entries if e["action"] == "read" and e["target"] == f"{REGISTRY}/seen"]
                if sum(reads_counted(e) for e in reads) == 3:
                    break
                await trio.sleep(0.1)
            # Identical reads in one flush window fold into one counted entry.
            assert sum(reads_counted(e) for e in reads) == 3
            assert all(e["actor"].startswith("token:auditor-app#") for e in reads)
            assert (await admin.get("/v1/audit/verify")).json()["entries"] >= len(entries)


async def test_metrics_count_routes_by_template(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client() as client:
            await client.post(RECORDS, json={"kind": "note", "id": "m1", "fields": {"name": "m"}})
            await client.get(f"{RECORDS}/m1")
            await client.get(f"{RECORDS}/nope")
            text = (await client.get("/metrics")).text
        assert 'route="/v1/registries/{registry}/records/{id}",status="200"' in text
        assert 'rgrid_http_errors_total{code="not_found",route="/v1/registries/{registry}/records/{id}"}' in text
        assert "rgrid_bridge_crossing_seconds_count" in text and "rgrid_feed_head" in text
        latency = 'rgrid_http_request_duration_seconds_count{method="GET",route="/v1/registries/{registry}/records/{id}"}'
        assert f"{latency} 2.0" in text  # the 200 and the 404
        assert 'rgrid_http_request_duration_seconds_bucket{le="+Inf",method="POST"' in text
        assert "rgrid_store_bytes" in text and 'rgrid_engine_rejections_total{reason="already_exists"}' not in text
        assert "/records/m1" not in text  # raw paths never become labels


async def test_health_is_open_on_loopback_and_openapi_is_served(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client("rgt_nope") as client:  # a bad token does not matter here
            client.headers.pop("Authorization")
            assert (await client.get("/v1/health/live")).json()["status"] == "ok"
            assert (await client.get("/v1/health/ready")).status_code == 200
            assert (await client.get("/metrics")).status_code == 200
            doc = (await client.get("/v1/openapi.json")).json()
            assert doc["openapi"] == "3.1.0" and doc["servers"][0]["url"] == served.url


def test_token_secrets_are_stored_as_sha256_only(tmp_path) -> None:
    from registrygrid.storage.store import Store

    store = Store(tmp_path / "s")
    try:
        token, secret = tokens.create(store, role="reader", name="t1")
        with store.read() as txn:
            raw = txn.get(token.id.encode(), db=store.db["tokens"])
        assert secret.split(".")[1].encode() not in raw
        assert tokens.authenticate(store, secret).id == token.id
        tokens.revoke(store, token.id)
        with pytest.raises(Exception, match="revoked"):
            tokens.authenticate(store, secret)
        assert tokens.parse_duration("30d") == 30 * 86400
        with pytest.raises(ValidationError):  # another script's digit: \d took it
            tokens.parse_duration("\u0663d")
    finally:
        store.close()


async def test_policy_explain_names_the_deciding_rule(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client() as client:
            me = (await client.get("/v1/identity")).json()["did"]
            r = await client.post(f"/v1/registries/{REGISTRY}/records", json={"kind": "note", "fields": {"name": "n"},
                                                                             "id": "n1"})
            assert r.status_code == 201, r.text
            answer = (await client.post("/v1/policy/explain", json={
                "subject": me, "action": "update", "registry": REGISTRY, "record": "n1", "fields": ["name"]})).json()
            assert answer["allowed"] is True and answer["rule"] == "builtin:owner"
            stranger = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
            denied = (await client.post("/v1/policy/explain", json={
                "subject": stranger, "action": "delete", "registry": REGISTRY, "record": "n1"})).json()
            assert denied["allowed"] is False and denied["rule"].startswith("builtin:")
            assert_error(await client.post("/v1/policy/explain", json={"subject": me, "action": "fly",
                                                                       "registry": REGISTRY}), 422,
                         "validation_failed")
            assert_error(await client.post("/v1/policy/explain", json={"subject": me, "action": "update",
                                                                       "registry": REGISTRY, "record": "nope"}),
                         404, "not_found")
        # A token limited to another registry learnt which records exist here (404 or 200).
        elsewhere = await make_token(served, "reader", registry=OTHER)
        async with served.client(elsewhere) as scoped:
            assert_error(await scoped.post("/v1/policy/explain", json={
                "subject": me, "action": "update", "registry": REGISTRY, "record": "n1"}), 403, "policy_denied")
            assert (await scoped.post("/v1/policy/explain", json={
                "subject": me, "action": "create", "registry": OTHER})).status_code == 200


async def test_a_local_rule_restricts_what_a_bridge_token_may_write(served: Served) -> None:
    """A forbid that names a token role is this node's admission rule for
    writes through its bridge: here only admin tokens may delete."""
    with trio.fail_after(30):
        writer = await make_token(served, "writer")
        async with served.client() as admin, served.client(writer) as app:
            rec = f"/v1/registries/{REGISTRY}/records"
            assert (await admin.post(rec, json={"kind": "note", "fields": {"name": "a"}, "id": "a"})).status_code == 201
            assert (await admin.post(rec, json={"kind": "note", "fields": {"name": "b"}, "id": "b"})).status_code == 201
            policy = {"kind": "policy", "id": "deletes-by-admins", "fields": {
                "name": "deletes-by-admins", "policy_type": "access", "targets": [REGISTRY],
                "access": {"rules": [{"id": "admins-delete", "effect": "forbid", "actions": ["delete"],
                                      "except": {"roles": ["app:admin"]}}]}}}
            assert (await admin.post("/v1/registries/grid.policies/records", json=policy)).status_code == 201
            err = assert_error(await app.delete(f"{rec}/a"), 403, "policy_denied")
            assert err["details"] == {"rule": "deletes-by-admins#admins-delete"}
            assert (await admin.delete(f"{rec}/b")).status_code == 200
            me = (await admin.get("/v1/identity")).json()["did"]
            explained = (await admin.post("/v1/policy/explain", json={
                "subject": me, "action": "delete", "registry": REGISTRY, "record": "a", "token_role": "writer"})).json()
            assert explained["allowed"] is False and explained["rule"] == "deletes-by-admins#admins-delete"
