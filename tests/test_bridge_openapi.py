"""The served OpenAPI document tells the truth: real answers validate against it,
fuzzing every operation from it (schemathesis) never gets a 5xx, every request
it calls valid is accepted, and its links walk (schemathesis's stateful tests)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import httpx
import pytest
import schemathesis
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from test_bridge_support import REGISTRY, Served, ThreadedNode, make_token

from registrygrid.blobs.blobs import BlobLimits
from registrygrid.blobs.presign import PARAMS as PRESIGN_PARAMS
from registrygrid.identity.keys import did_from_public_key
from registrygrid.node.bridge.app import Api
from registrygrid.node.bridge.openapi import (
    BLOB_CID,
    SPEC_URI,
    UPLOAD_ID,
    build_spec,
    integer_members,
    schema_validator,
)

pytest_plugins = ("test_bridge_support",)  # its fixtures: served

SPEC = build_spec()
PEER = "12D3KooWJ3JXfUDrCk6xSby3wGN3RJAZF1oMzW7ktBCYMTfSL2ki"  # a well-formed peer ID nobody runs
ENTRY_ROUTE = "/v1/blobs/{cid}/entries/{name}"
ASSETS = "assets"  # the asset routes' tag
OPERATIONS = {(method, path) for path, ops in SPEC["paths"].items() for method in ops}


def _route_of(path: str) -> str | None:
    for template in SPEC["paths"]:
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if template == ENTRY_ROUTE:
            pattern = pattern.removesuffix("[^/]+") + ".+"  # a ZIP entry's name runs to the end, slashes and all
        if re.fullmatch(pattern, path):
            return template
    return None


def _check(response: httpx.Response, seen: set[tuple[str, str, str]]) -> None:
    # The raw path: an MCP server's name arrives with its slash encoded (%2F), one path segment.
    route = _route_of(response.request.url.raw_path.decode().partition("?")[0])
    method = response.request.method.lower()
    assert route is not None, f"undocumented path {response.request.url.path}"
    operation = SPEC["paths"][route][method]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method} {route} answered undocumented {status}"
    seen.add((method, route, status))
    documented = operation["responses"][status]
    assert "X-Trace-Id" in documented.get("headers", {})
    assert response.headers.get("X-Trace-Id"), (method, route, status)  # streamed answers too
    content = documented.get("content")
    if not content or method == "head":
        assert response.content == b""
        return
    media = response.headers["Content-Type"].split(";")[0]
    assert media in content or "*/*" in content, f"{method} {route} {status}: {media} is not documented"
    if media != "application/json":
        return
    schema = content[media]["schema"]
    if "$ref" in schema:
        validator = schema_validator(schema["$ref"].rsplit("/", 1)[1])
    else:
        validator = Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(response.json())]
    assert not errors, f"{method} {route} {status} does not match the document: {errors[:5]}"


pytestmark = pytest.mark.timeout(120)


def test_document_is_openapi_31_with_valid_schemas() -> None:
    assert SPEC["openapi"] == "3.1.0"
    for schema in SPEC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    refs = set(re.findall(r'"#/components/schemas/([A-Za-z]+)"', json.dumps(SPEC)))
    assert refs <= set(SPEC["components"]["schemas"]), refs - set(SPEC["components"]["schemas"])
    ids = [op["operationId"] for path in SPEC["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    assert SPEC_URI


def test_every_route_the_bridge_serves_is_documented() -> None:
    # A stand-in Api: its route table names the handlers, and none is called.
    routes = Api.routes(MagicMock(agent_card=None))
    served = {(r.method.lower(), re.sub(r"\{(\w+):[^}]+\}", r"{\1}", r.path)) for r in routes}
    assert served - OPERATIONS == set()


async def test_what_the_bridge_answers_before_any_handler_is_declared_on_every_operation(served: Served) -> None:
    # A query parameter given twice is refused (400) on every route; 36
    # operations did not declare 400. Erased views answered an undeclared
    # 410, and explain's body cap an undeclared 413.
    methods = ("get", "put", "post", "delete", "patch", "head")
    undeclared = [(path, method) for path, item in SPEC["paths"].items() for method, op in item.items()
                  if method in methods and "400" not in op["responses"]]
    assert undeclared == []
    for path, method in (("/v1/views/{name}", "get"), ("/v1/views/{name}", "put"), ("/v1/views/{name}", "delete"),
                         ("/v1/views/{name}/events", "get")):
        assert "410" in SPEC["paths"][path][method]["responses"], (path, method)
    assert "413" in SPEC["paths"]["/v1/policy/explain"]["post"]["responses"]
    async with served.client() as http:
        twice = await http.get("/v1/identity", params=[("zz", "1"), ("zz", "2")])
        mcp = await http.get("/v0.1/servers", params=[("limit", "1"), ("limit", "2")])
    assert twice.status_code == 400 and twice.json()["error"]["code"] == "malformed_input"
    assert mcp.status_code == 400 and "error" in mcp.json()
    assert schema_validator("McpError").is_valid(mcp.json())


async def test_real_responses_validate_against_the_document(served: Served) -> None:
    seen: set[tuple[str, str, str]] = set()
    with trio.fail_after(60):
        reader = await make_token(served, "reader")
        async with served.client() as c, served.client(reader) as rc, \
                httpx.AsyncClient(base_url=served.url) as anon:
            rec = f"/v1/registries/{REGISTRY}/records"
            responses = [
                await anon.get("/v1/health/live"), await anon.get("/v1/health/ready"), await anon.get("/metrics"),
                await anon.get("/v1/openapi.json"), await anon.get("/v1/identity"),
                await c.get("/v1/identity"), await c.get("/v1/stats"), await c.get("/v1/registries"),
                await c.post("/v1/registries", json={"name": "test.more", "kinds": ["note"],
                                                     "write_policy": "owner"}),
                await c.post("/v1/registries", json={"name": "test.more", "kinds": ["note"]}),
                await c.get(f"/v1/registries/{REGISTRY}"), await c.get("/v1/registries/nope.none"),
                # No federation here, so no DHT: 503 (tests/test_bridge_dht.py has a node with one).
                await c.get(f"/v1/registries/{REGISTRY}/resolve"),
                await c.get(f"/v1/registries/{REGISTRY}/resolve", params={"fresh": "perhaps"}),
                # No DHT either to find another federation's providers: 503 (tests/test_bridge_remote_read.py
                # reads across two federations).
                await c.get(f"/v1/registries/{REGISTRY}/remote"),
                await c.get(f"/v1/registries/{REGISTRY}/remote", params={"record": "not an id!"}),
                # Nor to follow with: 503 (tests/test_bridge_follow.py follows across two federations).
                await c.get("/v1/follows"), await c.put(f"/v1/follows/{REGISTRY}"),
                await c.delete(f"/v1/follows/{REGISTRY}"), await rc.put(f"/v1/follows/{REGISTRY}"),
                # Nor peers to list, deny or allow: 503 (tests/test_peer_controls.py has a federation).
                await c.get("/v1/peers"), await c.post("/v1/peers/deny", json={"peers": [PEER]}),
                await c.post("/v1/peers/allow", json={"peers": [PEER]}),
                await c.post("/v1/peers/deny", json={"peers": []}),
                await rc.post("/v1/peers/allow", json={"peers": [PEER]}),
                await c.post(rec, json={"kind": "note", "id": "v1", "fields": {"name": "v", "n": 1},
                                        "links": [{"rel": "see", "registry": REGISTRY, "record": "v0"}]}),
                await c.post(rec, json={"kind": "note", "fields": {"name": 1}}),
                await c.post(rec, content=b"[", headers={"Content-Type": "application/json"}),
                await c.post(rec, json={"kind": "note", "fields": {"name": "z" * 200_000}}),
                await rc.post(rec, json={"kind": "note", "fields": {"name": "r"}}),
                await c.get(f"{rec}/v1"), await c.get(f"{rec}/v1", headers={"If-None-Match": "*"}),
                await c.get(f"{rec}/none"),
                await c.put(f"{rec}/v1", json={"fields": {"name": "v2"}}),
                await c.put(f"{rec}/v1", json={"fields": {"name": "v3"}}, headers={"If-Match": '"nope"'}),
                await c.patch(f"{rec}/v1", json={"patch": {"n": 2}}),
                await c.patch(f"{rec}/v1", content=b'{"n": 3}',
                              headers={"Content-Type": "application/merge-patch+json"}),
                await c.get(f"{rec}/v1/history"), await c.get(rec, params={"limit": 1}), await c.get("/v1/records"),
                await c.get(rec, params={"limit": "x"}),
                await c.get("/v1/changes"), await c.get("/v1/changes", params={"since": "x"}),
                await c.get("/v1/audit", params={"limit": 5}), await rc.get("/v1/audit"),
                await c.get("/v1/audit/verify"), await c.get("/v1/kinds"), await c.get("/v1/kinds/note"),
                await c.get("/v1/kinds/note", params={"version": 9}),
                await c.post("/v1/kinds", json={"name": "memo", "version": 1, "schema": {"type": "object"},
                                                "registry": REGISTRY}),
                await c.post("/v1/tokens", json={"role": "reader"}), await c.get("/v1/tokens"),
                await c.delete("/v1/tokens/AAAAAAAAAAAA"), await c.get("/v1/changes/ws"),
                await c.delete(f"/v1/tokens/{served.admin.split('.')[0][len('rgt_'):]}"),  # the CLI's own: 409
                await c.post("/v1/policy/explain", json={"subject": (await c.get("/v1/identity")).json()["did"],
                                                         "action": "update", "registry": REGISTRY, "record": "v1",
                                                         "fields": ["name"]}),
                await c.post("/v1/policy/explain", json={"subject": "x", "action": "read", "registry": REGISTRY}),
                await c.post("/v1/registries", json={"name": "test.priced", "kinds": ["note"],
                                                     "conflict_policy": {"fields": {"n": "manual"}}}),
                await c.get("/v1/registries/test.priced"),
                await c.get("/v1/audit", params={"target": f"{REGISTRY}/v1"}),
                await c.get("/v1/audit", params={"target": "v1"}),
                await c.get("/v1/disputes"), await c.get("/v1/disputes", params={"status": "nope"}),
                await c.get(f"/v1/disputes/dispute-{'a' * 32}"),
                await c.post(f"/v1/disputes/dispute-{'a' * 32}/resolve", json={"value": 1}),
                await rc.post(f"/v1/disputes/dispute-{'a' * 32}/resolve", json={"value": 1}),
                # No search component either: 503 (tests/test_bridge_search.py has a node that searches).
                await c.post("/v1/search", json={"text": "v"}), await c.get("/v1/search/fields"),
                await c.get("/v1/index"), await c.post("/v1/index/rebuild"), await rc.post("/v1/index/rebuild"),
                # Saved views: definitions are records (written and listed without a search index); their
                # results and changes need one: 503 (tests/test_views.py has a node that keeps them).
                await c.put("/v1/views/cheap", json={"query": {"filter": {"field": "price", "lt": 1}}}),
                await c.put("/v1/views/cheap", json={"query": {"text": "gpu"}, "description": "d"}),
                await c.put("/v1/views/cheap", json={"query": {"filter": {"field": "price", "lt": "x"}}}),
                await rc.put("/v1/views/cheap", json={"query": {}}), await c.get("/v1/views"),
                await c.get("/v1/views/cheap"), await c.get("/v1/views/cheap/events"),
                await c.delete("/v1/views/cheap"),
                await c.delete(f"{rec}/v1"),
                # Erasure (tests/test_erasure.py, tests/test_bridge_erasure.py have the rest).
                await c.post(rec, json={"kind": "note", "id": "gone", "fields": {"name": "g"}}),
                await rc.post(f"{rec}/gone/erase", json={}),
                await c.post(f"{rec}/gone/erase", json={"reason": "a request", "blobs": []}),
                await c.post(f"{rec}/gone/erase", json={}),
                await c.post(f"{rec}/gone/erase", json={"blobs": ["not-a-cid"]}),
                await c.get(f"{rec}/gone"), await c.get(f"{rec}/gone/history"),
                await c.put(f"{rec}/gone", json={"fields": {"name": "again"}}),
                await c.get("/v1/erasures"), await c.get("/v1/erasures/places"),
                # The MCP Registry API (tests/test_mcp_registry_api.py checks it against the official document).
                await c.get("/v0.1/servers"), await c.get("/v0.1/servers", params={"limit": "x"}),
                await c.get("/v0.1/servers", params={"limit": 101}),
                await c.get("/v0.1/servers/io.github.example%2Fnone/versions"),
                await c.get("/v0.1/servers/io.github.example%2Fnone/versions/latest"),
                await c.delete("/v0.1/servers/io.github.example%2Fnone/versions/1.0.0"),
                await c.post("/v0.1/publish", json={}), await rc.post("/v0.1/publish", json={}),
                # Discovery (tests/test_discovery.py has the content).
                await c.get("/.well-known/agent-card.json"), await c.get("/.well-known/ai-catalog.json"),
                await c.get("/v1/agent-cards"), await c.get("/v1/agent-cards", params={"limit": 0}),
                await c.post("/search", json={"query": {"text": "weather"}}),
                await c.post("/search", json={"query": {}}),
            ]
            created = next(r for r in responses if r.request.url.path == "/v1/tokens" and r.status_code == 201)
            responses.append(await c.delete(f"/v1/tokens/{created.json()['id']}"))
        for response in responses:
            _check(response, seen)
    operations = {(m, p) for m, p in OPERATIONS if ASSETS not in SPEC["paths"][p][m]["tags"]}  # the next test's
    assert operations - {(m, p) for m, p, _ in seen} == set(), "every documented operation was exercised"
    assert {s for _, _, s in seen} >= {"200", "201", "304", "400", "401", "403", "404", "409", "410", "412", "413",
                                       "422"}
    assert ("delete", "/v1/tokens/{token_id}", "409") in seen


def _link_targets(response: httpx.Response) -> list[tuple[str, str]]:
    """(method, path) of each request the document's links make of ``response`` (their parameters: path
    parameters taken from the answer's body)."""
    route = _route_of(response.request.url.raw_path.decode().partition("?")[0])
    assert route is not None
    links = SPEC["paths"][route][response.request.method.lower()]["responses"][str(response.status_code)]["links"]
    targets = []
    for link in links.values():
        method, path = next((m, p) for m, p in OPERATIONS if SPEC["paths"][p][m]["operationId"] == link["operationId"])
        for name, expression in link["parameters"].items():
            pointer = expression.removeprefix("$response.body#/")
            assert pointer != expression and "{" + name + "}" in path, (name, expression)
            path = path.replace("{" + name + "}", str(response.json()[pointer]))
        targets.append((method.upper(), path))
    return targets


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return out.getvalue()


def _b64_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


async def test_real_asset_responses_validate_against_the_document(served: Served) -> None:
    """Every asset route, answering and refusing, each answer checked against the document
    (tests/test_bridge_assets.py and test_bridge_asset_zip.py pin down what the answers mean)."""
    part = 1 << 20  # the smallest part a session takes
    data = os.urandom(part + 1000)
    archive = _zip({"README.md": b"---\nlicense: mit\n---\n# card\n", "weights/a.bin": os.urandom(5000)})
    missing = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
    seen: set[tuple[str, str, str]] = set()
    responses: list[httpx.Response] = []

    async def call(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
        responses.append(await http.request(method, url, **kwargs))
        return responses[-1]

    with trio.fail_after(60):
        reader = await make_token(served, "reader")
        async with served.client() as c, served.client(reader) as rc, \
                httpx.AsyncClient(base_url=served.url) as anon:
            created = await call(c, "POST", "/v1/uploads", json={
                "size": len(data), "part_size": part, "sha256": hashlib.sha256(data).hexdigest(),
                "content_type": "application/x-test", "name": "data.bin"})
            up = f"/v1/uploads/{created.json()['id']}"
            await call(c, "PUT", f"{up}/parts/2", content=data[part:], headers={"Content-MD5": _b64_md5(data[part:])})
            await call(c, "PUT", f"{up}/parts/1", content=data[:10])  # short: 422, the session as before
            await call(c, "PUT", f"{up}/parts/2", content=data[part:] + b"!")  # long: 413
            await call(c, "PUT", f"{up}/parts/1", content=data[:part], headers={"Content-MD5": "nope"})  # 400
            await call(c, "PUT", f"{up}/parts/3", content=b"x")  # beyond the last part: 422
            await call(c, "GET", up)
            await call(c, "POST", f"{up}/finalize")  # part 1 missing: 409
            await call(c, "PUT", f"{up}/parts/1", content=data[:part],
                       headers={"X-Checksum-Sha256": hashlib.sha256(data[:part]).hexdigest()})
            await call(c, "POST", f"{up}/heartbeat")
            await call(c, "POST", f"{up}/presign", json={"expires_in": 60})
            await call(c, "POST", f"{up}/presign", content=b"")  # the body is required: 400
            done = await call(c, "POST", f"{up}/finalize")
            cid = done.json()["cid"]
            followed = [await call(c, method, url) for method, url in _link_targets(done)]  # the blob, its meta
            await call(c, "POST", f"{up}/finalize")  # idempotent
            await call(c, "DELETE", up)  # complete: 409
            blob = f"/v1/blobs/{cid}"
            etag = f'"{cid}"'
            for headers in ({}, {"Range": "bytes=10-19"}, {"Range": "bytes=0-1,100-102"}, {"If-None-Match": etag},
                            {"Range": f"bytes={len(data)}-"}, {"Range": "bytes=0-0", "If-Range": '"other"'}):
                await call(c, "GET", blob, headers=headers)
                await call(c, "HEAD", blob, headers=headers)
            await call(c, "GET", "/v1/blobs/not-a-cid")
            await call(c, "HEAD", f"/v1/blobs/{missing}")
            await call(anon, "GET", blob)
            await call(c, "GET", f"{blob}/meta")
            await call(c, "GET", f"{blob}/manifest")  # not a ZIP: 422
            url = (await call(rc, "POST", f"{blob}/presign", json={"expires_in": 60, "ip": "127.0.0.1"})).json()["url"]
            await call(anon, "GET", url)
            await call(anon, "HEAD", url)
            await call(anon, "GET", url.replace("rg-sig=", "rg-sig=x"))  # altered: 403
            await call(c, "POST", "/v1/presign/rotate")
            await call(rc, "POST", "/v1/presign/rotate")  # not an admin: 403
            await call(anon, "GET", url)  # signed before the rotation: still good
            # No federation here, so no members to fetch from: 503 (tests/test_blob_exchange.py has one).
            await call(c, "POST", f"/v1/blobs/{missing}/fetch")
            await call(rc, "POST", f"/v1/blobs/{missing}/fetch")  # not a writer: 403
            await call(c, "POST", f"{blob}/presign", json={"expires_in": 0})
            await call(c, "POST", f"/v1/blobs/{missing}/presign", json={})
            await call(c, "PUT", f"{blob}/holds/case-7", json={"reason": "litigation"})
            await call(rc, "PUT", f"{blob}/holds/case-7", json={"reason": "litigation"})  # not an admin: 403
            await call(c, "DELETE", blob)  # held: 409
            await call(c, "DELETE", f"{blob}/holds/case-7")
            await call(c, "DELETE", f"{blob}/holds/case-7")  # no longer held: 404
            await call(c, "PUT", f"{blob}/retention", json={"until_ms": 4_102_444_800_000})
            await call(c, "PUT", f"{blob}/retention", json={"until_ms": 1})  # only extended: 409
            await call(c, "PUT", f"{blob}/retention", json={"until": 1})
            # A ZIP, its manifest and one entry, and bundles of both.
            zipped = (await call(c, "POST", "/v1/uploads", json={
                "size": len(archive), "content_type": "application/zip", "name": "pack.zip", "presign": True})).json()
            await call(anon, "PUT", zipped["part_urls"][0], content=archive)
            zcid = (await call(c, "POST", f"/v1/uploads/{zipped['id']}/finalize")).json()["cid"]
            await call(c, "GET", f"/v1/blobs/{zcid}/manifest")
            await call(c, "GET", f"/v1/blobs/{zcid}/entries/weights/a.bin")
            await call(c, "GET", f"/v1/blobs/{zcid}/entries/none.txt")
            members = [{"name": "data.bin", "cid": cid}, {"name": "docs/README.md", "cid": zcid, "entry": "README.md"}]
            bundle = await call(rc, "POST", "/v1/bundles", json={"name": "model.zip", "members": members})
            await call(rc, "POST", "/v1/bundles", json={"members": members},
                       headers={"If-None-Match": bundle.headers["ETag"]})
            await call(rc, "POST", "/v1/bundles", json={"members": members + members[:1]})  # a name twice: 422
            await call(rc, "POST", "/v1/bundles", json={"members": [{"name": "x", "url": "https://example.org/x"}]})
            await call(rc, "POST", "/v1/bundles", json={"members": [{"name": "x", "cid": missing}]})
            await call(c, "DELETE", f"/v1/blobs/{zcid}")
            await call(c, "GET", f"/v1/blobs/{zcid}/meta")  # purged: 404
            # Refusals at creation, and a cancelled session.
            await call(rc, "POST", "/v1/uploads", json={"size": 1})
            await call(anon, "POST", "/v1/uploads", json={"size": 1})
            await call(c, "POST", "/v1/uploads", json={"size": 1, "colour": "red"})
            await call(c, "POST", "/v1/uploads", json={"size": 2 * BlobLimits().max_blob_bytes})
            await call(c, "POST", "/v1/uploads", content=b"[", headers={"Content-Type": "application/json"})
            doomed = await call(c, "POST", "/v1/uploads", json={"size": 1})
            followed += [await call(c, method, url) for method, url in _link_targets(doomed)]  # read, finalize, cancel
            await call(c, "POST", f"/v1/uploads/{doomed.json()['id']}/finalize")  # cancelled: 409
            await call(c, "GET", "/v1/uploads/up_00")
    for response in responses:
        _check(response, seen)
    assets = {(m, p) for m, p in OPERATIONS if ASSETS in SPEC["paths"][p][m]["tags"]}
    assert assets - {(m, p) for m, p, _ in seen} == set(), "every asset operation was exercised"
    statuses = {s for _, _, s in seen}
    assert statuses >= {"200", "201", "206", "304", "400", "401", "403", "404", "409", "413", "416", "422"}, statuses
    by = {(m, p, s) for m, p, s in seen}
    assert {("get", "/v1/blobs/{cid}", "206"), ("head", "/v1/blobs/{cid}", "416"),
            ("post", "/v1/bundles", "304"), ("get", ENTRY_ROUTE, "200")} <= by
    assert [(r.request.method, r.status_code) for r in followed] == [
        ("GET", 200), ("GET", 200), ("GET", 200), ("POST", 409), ("DELETE", 200)]  # missing part 1: 409
    assert bundle.headers["Content-Type"] == "application/zip"
    assert zipfile.ZipFile(io.BytesIO(bundle.content)).namelist() == ["data.bin", "docs/README.md"]


# ---------------------------------------------------------------- schemathesis

# The asset routes (tag assets) are fuzzed apart, below.
FUZZ_SCHEMA = schemathesis.openapi.from_dict(build_spec()).exclude(tag=ASSETS)


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with ThreadedNode(Path(tmp_path_factory.mktemp("fuzz")) / "home") as served:
        yield served


@FUZZ_SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_fuzzing_every_operation_never_gets_a_server_error(case: Any, fuzz_target: Served) -> None:
    if case.query and "wait" in case.query:
        case.query["wait"] = 0  # a long-poll would only make the run slower, not the server buggier
    headers = {**(case.headers or {}), **fuzz_target.headers()}
    headers.pop("Accept", None)
    response = case.call(base_url=fuzz_target.url, headers=headers, timeout=15)
    # The fuzzed node runs no federation, so it has no DHT to resolve, read remotely or follow with, no peers
    # to control, and no search component (tests/test_bridge_search.py fuzzes a node with one): its documented
    # answer is 503.
    no_component = case.operation.path in ("/v1/registries/{registry}/resolve", "/v1/registries/{registry}/remote",
                                           "/v1/follows", "/v1/follows/{registry}",
                                           "/v1/peers", "/v1/peers/deny", "/v1/peers/allow",
                                           "/v1/search", "/v1/index", "/v1/index/rebuild",
                                           "/v1/views/{name}", "/v1/views/{name}/events", "/search") \
        and response.status_code == 503 \
        and response.json()["error"]["code"] in ("unavailable", "disabled")
    # Publishing and deleting through the MCP Registry API are not offered: 501, as its document allows.
    not_offered = case.operation.path in ("/v0.1/publish", "/v0.1/servers/{serverName}/versions/{version}") \
        and case.method.upper() in ("POST", "DELETE") and response.status_code == 501 \
        and response.json()["code"] == "not_supported"
    assert response.status_code < 500 or no_component or not_offered, (case.method, case.formatted_path,
                                                                        response.status_code, response.text[:500])
    assert response.headers.get("x-trace-id") or response.status_code == 400  # 400: rejected by the HTTP parser


# ---------------------------------------------------------------- schema-valid requests are accepted

# The document's did:keys name Ed25519 keys, a check no short pattern states: the format says so.
schemathesis.openapi.format("did-key-ed25519", st.binary(min_size=32, max_size=32).map(did_from_public_key))
ACCEPTANCE_SCHEMA = schemathesis.openapi.from_dict(build_spec()).exclude(
    # A WebSocket upgrade is no plain request; publishing and deleting through the MCP Registry API are not
    # offered (501, as its document allows).
    path=["/v1/changes/ws", "/v0.1/publish", "/v0.1/servers/{serverName}/versions/{version}"]).exclude(tag=ASSETS)
ACCEPTANCE_SCHEMA.config.generation.update(modes=[GenerationMode.POSITIVE])

# Refusals of a well-formed request for what the node holds, not for the request's shape: no document can
# state them (as no document says which ids exist: 404). Each: (operation path, or None for any; error code;
# a regular expression its message starts with).
RECORDS = "/v1/registries/{registry}/records"
PARTS = "/v1/uploads/{id}/parts/{n}"
ASSET_BODIES = {"createUpload": "UploadCreate", "presignUploadParts": "PresignOptions",
                "presignBlob": "PresignOptions", "setBlobRetention": "RetentionSet"}
STATE_REFUSALS = [
    (None, "unknown_kind", ""),  # names a kind this node has not registered (GET /v1/kinds lists them)
    (None, "idempotency_key_reused", ""),  # the key came with another request before (IETF draft: 422)
    # An erased record's id answers 410 for good: the walk may erase a record (its erase link), then read it.
    (None, "record_erased", ""),
    ("/v1/kinds", "validation_failed", "kind .* is already registered"),  # that version, defined otherwise
    # The kind's schema must itself be a JSON Schema: its meta-schema is not part of this document.
    ("/v1/kinds", "schema_violation", "kind v1: /schema"),
    # A record's kind must be one its registry holds, and its fields are judged by that kind's JSON Schema:
    # both are data on the node (GET /v1/registries/{registry}, GET /v1/kinds/{name}).
    (RECORDS, "validation_failed", "registry .* holds kinds"), (RECORDS, "schema_violation", ""),
    (RECORDS + "/{id}", "schema_violation", ""),
    # A conflict policy's kinds must be among its registry's kinds, which JSON Schema cannot say across
    # members (and which an update's merge patch meets in the stored descriptor).
    (None, "validation_failed", r"/conflict_policy/kinds/\S+: the registry holds no kind"),
    # A registry may cap its records' size below the global cap (its limits.max_record_bytes, data too).
    *[(path, "too_large", r"record fields take \d+ bytes; the cap is \d+ \(the registry's max_record_bytes\)")
      for path in (RECORDS, RECORDS + "/{id}")],
    # Not state: a did:key must name an Ed25519 key, which the document says with its format
    # (did-key-ed25519, generated above), but schemathesis's coverage phase draws from the pattern alone.
    (None, "validation_failed", "(malformed )?did:key "),
    # An upload's session fixes how many parts it has and each one's length, and its declaration the digests
    # the bytes must have: a generated part (or a whole) rarely fits.
    (PARTS, "validation_failed", "part numbers of upload "), (PARTS, "checksum_mismatch", ""),
    (PARTS, "too_large", r"part \d+ must have \d+ bytes"), ("/v1/uploads/{id}/finalize", "checksum_mismatch", ""),
    # Whether a blob's bytes are a ZIP the node reads.
    *[(path, code, "") for path in ("/v1/blobs/{cid}/manifest", ENTRY_ROUTE) for code in ("zip_malformed",
                                                                                             "zip_refused")],
    # A retention must end in the future: the clock is state.
    ("/v1/blobs/{cid}/retention", "validation_failed", "retention until -?\\d+ \\(unix ms\\) is in the past"),
    # A feed cursor must be one this node gave: not beyond its feed head (how far the feed reaches is data).
    *[(path, "validation_failed", r"since \d+ is beyond this node's feed head")
      for path in ("/v1/changes", "/v1/changes/ws")],
]


def _error_of(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return error
    return body if isinstance(body, dict) and "code" in body else {}  # the MCP Registry API's shape


def _accepted_as_the_document_says(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's positive_data_acceptance, but for refusals of state (STATE_REFUSALS) and
    If-Match's precondition (412: the record is at another change, or the tag names none of its own), and
    a Range none of whose ranges overlaps the blob (416: its size is state; a HEAD's answer has no body)."""
    if response.status_code == 412 and "If-Match" in (case.headers or {}):
        return None
    if response.status_code == 416 and response.headers.get("content-range", [""])[0].startswith("bytes */"):
        return None
    error = _error_of(response)
    for path, code, message in STATE_REFUSALS:
        if path in (None, case.operation.path) and error.get("code") == code \
                and re.match(message, str(error.get("message", error.get("error", "")))):
            return None
    return positive_data_acceptance(ctx, response, case)


def _prepare(case: Any) -> None:
    """What a generated request cannot know: a cursor is opaque, valid only as the node issued it (the
    stateful test below follows real ones), and so is a presigned URL's grant (rg-*: the node's signature);
    a view's filter tree is judged by the query parser, which names the bad part (SearchFilter says so); a
    bundle's member names must differ, which JSON Schema cannot say of objects; a long-poll or an SSE stream
    would only make the run slower. And a finding's workaround: the asset routes read their JSON bodies by
    hand (asset_routes.py, Api.body(request, None)), not as the bridge reads its others (with the
    document's schemas, then openapi.integer_members), so a whole number written 5.0, an integer to JSON
    Schema, is refused (422), or stored as an upload's part_size, where it breaks every later upload (see
    ASSET_SCHEMA); such numbers are written 5 here."""
    if isinstance(case.body, dict) and case.operation.definition.raw.get("operationId") in ASSET_BODIES:
        case.body = integer_members(ASSET_BODIES[case.operation.definition.raw["operationId"]], case.body)
    for params in (case.query, case.headers):
        if params:
            for name in ("cursor", "Accept", "Last-Event-ID", *PRESIGN_PARAMS):
                params.pop(name, None)
    if case.query and "wait" in case.query:
        case.query["wait"] = 0
    query = case.body.get("query") if isinstance(case.body, dict) else None
    if case.operation.path in ("/v1/views/{name}", "/v1/search") and isinstance(query, dict):
        for member in ("filter", "boosts"):
            query.pop(member, None)
    members = case.body.get("members") if isinstance(case.body, dict) else None
    if case.operation.path == "/v1/bundles" and isinstance(members, list):
        for i, member in enumerate(members):
            if isinstance(member, dict) and "name" in member:
                member["name"] = f"{i}/{member['name']}"


@ACCEPTANCE_SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_request_the_document_calls_valid_is_accepted(case: Any, fuzz_target: Served) -> None:
    _prepare(case)
    headers = {**(case.headers or {}), **fuzz_target.headers()}
    response = case.call(base_url=fuzz_target.url, headers=headers, timeout=15)
    case.validate_response(response, checks=[_accepted_as_the_document_says, status_code_conformance,
                                             response_schema_conformance])


# ---------------------------------------------------------------- the asset routes

# One run per asset operation does both jobs above: no case, positive or negative, gets a 5xx, and a positive
# one is accepted and answered as documented. Fewer examples than above, and no coverage phase: 20 more
# operations must add seconds, not tens of seconds, to a suite that runs on 2 cores. What a request names is
# made to exist (asset_seed), so the cases reach past the lookup.
ASSET_SCHEMA = schemathesis.openapi.from_dict(build_spec()).include(tag=ASSETS)
ASSET_SCHEMA.config.phases.update(phases=["examples", "fuzzing"])
# createUpload is fuzzed as well: its members of the wrong JSON type once answered 500, and one stored in a
# session broke every later upload of this shared node; the body is read by the document's schema since
# (tests/test_bridge_assets.py names each case).


@dataclass(frozen=True)
class AssetSeed:
    cid: str  # a small ZIP, under a legal hold (a purge is refused: 409)
    upload: str  # an open upload of two parts
    doomed: str  # an open upload that cancelUpload may cancel


@pytest.fixture(scope="module")
def asset_seed(fuzz_target: Served) -> AssetSeed:
    with httpx.Client(base_url=fuzz_target.url, headers=fuzz_target.headers(), timeout=15) as http:
        archive = _zip({"README.md": b"# seed\n", "weights/a.bin": b"a" * 1000})
        zipped = http.post("/v1/uploads", json={"size": len(archive), "content_type": "application/zip",
                                                "name": "seed.zip"}).json()
        assert http.put(f"/v1/uploads/{zipped['id']}/parts/1", content=archive).status_code == 200
        cid = http.post(f"/v1/uploads/{zipped['id']}/finalize").json()["cid"]
        assert http.put(f"/v1/blobs/{cid}/holds/seed", json={"reason": "the fuzzing's blob"}).status_code == 200
        upload, doomed = (http.post("/v1/uploads", json={"size": (1 << 20) + 1, "part_size": 1 << 20}).json()["id"]
                          for _ in range(2))
    return AssetSeed(cid, upload, doomed)


def _seeded(case: Any, seed: AssetSeed) -> None:
    """A well-formed CID or upload id in ``case`` names the seed's instead."""
    path = case.path_parameters or {}
    if re.fullmatch(BLOB_CID["pattern"], str(path.get("cid", ""))):
        path["cid"] = seed.cid
    if re.fullmatch(UPLOAD_ID["pattern"], str(path.get("id", ""))):
        path["id"] = seed.doomed if case.operation.path == "/v1/uploads/{id}" and case.method.upper() == "DELETE" \
            else seed.upload
    members = case.body.get("members") if isinstance(case.body, dict) else None
    for member in members if isinstance(members, list) else ():
        if isinstance(member, dict) and re.fullmatch(BLOB_CID["pattern"], str(member.get("cid", ""))):
            member["cid"] = seed.cid


@ASSET_SCHEMA.parametrize()
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_asset_routes_never_answer_a_server_error_and_accept_every_valid_request(
        case: Any, fuzz_target: Served, asset_seed: AssetSeed) -> None:
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive:
        _prepare(case)
    _seeded(case, asset_seed)
    headers = {**(case.headers or {}), **fuzz_target.headers()}
    response = case.call(base_url=fuzz_target.url, headers=headers, timeout=15)
    # The fuzzed node runs no federation, so it has no members to fetch a blob from: its documented answer is 503.
    no_federation = case.operation.path == "/v1/blobs/{cid}/fetch" and response.status_code == 503 \
        and response.json()["error"]["code"] == "disabled"
    assert response.status_code < 500 or no_federation, (case.method, case.formatted_path, response.status_code,
                                                         response.text[:500])
    assert response.headers.get("x-trace-id") or response.status_code == 400  # 400: rejected by the HTTP parser
    if positive:
        case.validate_response(response, checks=[_accepted_as_the_document_says, status_code_conformance,
                                                 response_schema_conformance])


# ---------------------------------------------------------------- the document's links walk

STATEFUL_SCHEMA = schemathesis.openapi.from_dict(build_spec()).exclude(
    path=["/v1/changes/ws", "/v0.1/publish", "/v0.1/servers/{serverName}/versions/{version}"]).exclude(tag=ASSETS)
STATEFUL_SCHEMA.config.generation.update(modes=[GenerationMode.POSITIVE])
# The asset routes walk apart: in one machine with the rest, the walk's few steps would spread over twice the
# operations and reach neither's links.
ASSET_STATEFUL_SCHEMA = schemathesis.openapi.from_dict(build_spec()).include(tag=ASSETS)
ASSET_STATEFUL_SCHEMA.config.generation.update(modes=[GenerationMode.POSITIVE])


def test_following_the_documents_links_every_answer_is_documented_and_every_valid_request_accepted(
        fuzz_target: Served) -> None:
    base = STATEFUL_SCHEMA.as_state_machine()
    calls: list[tuple[str, int]] = []

    class Workflow(base):  # type: ignore[misc,valid-type]
        def before_call(self, case: Any) -> None:
            _prepare(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": fuzz_target.url, "headers": fuzz_target.headers(), "timeout": 15}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            calls.append((case.operation.label, response.status_code))
            case.validate_response(response, checks=[_accepted_as_the_document_says, status_code_conformance,
                                                     response_schema_conformance])

    Workflow.run(settings=settings(max_examples=10, stateful_step_count=6, deadline=None, derandomize=True,
                                   suppress_health_check=list(HealthCheck)))
    # The walk followed links to answers that worked: a token created, then revoked; a kind registered, then read.
    assert {("DELETE /v1/tokens/{token_id}", 200), ("GET /v1/kinds/{name}", 200)} <= set(calls), sorted(set(calls))


def test_following_the_asset_routes_links(fuzz_target: Served) -> None:
    calls: list[tuple[str, int]] = []

    class Workflow(ASSET_STATEFUL_SCHEMA.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            _prepare(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": fuzz_target.url, "headers": fuzz_target.headers(), "timeout": 15}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            calls.append((case.operation.label, response.status_code))
            case.validate_response(response, checks=[_accepted_as_the_document_says, status_code_conformance,
                                                     response_schema_conformance])

    Workflow.run(settings=settings(max_examples=10, stateful_step_count=6, deadline=None, derandomize=True,
                                   suppress_health_check=list(HealthCheck)))
    # An upload created, then read and cancelled by the id its answer gave. (A finalize that succeeds needs
    # every part's exact bytes, which no generated request has: test_real_asset_responses_... follows the
    # finalize's links to the blob.)
    assert {("GET /v1/uploads/{id}", 200), ("DELETE /v1/uploads/{id}", 200)} <= set(calls), sorted(set(calls))
