"""The served OpenAPI document tells the truth: real answers validate against it,
fuzzing every operation from it (schemathesis) never gets a 5xx, every request
it calls valid is accepted, and its links walk (schemathesis's stateful tests)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

from registrygrid.identity.keys import did_from_public_key
from registrygrid.node.bridge.openapi import SPEC_URI, build_spec, schema_validator

pytest_plugins = ("test_bridge_support",)  # its fixtures: served

SPEC = build_spec()
PEER = "12D3KooWJ3JXfUDrCk6xSby3wGN3RJAZF1oMzW7ktBCYMTfSL2ki"  # a well-formed peer ID nobody runs


def _route_of(path: str) -> str | None:
    for template in SPEC["paths"]:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
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
    assert "X-Trace-Id" in documented.get("headers", {}) and response.headers.get("X-Trace-Id")
    content = documented.get("content")
    if not content:
        assert response.content == b""
        return
    media = response.headers["Content-Type"].split(";")[0]
    assert media in content, f"{method} {route} {status}: {media} is not documented"
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
            created = [r for r in responses if r.request.url.path == "/v1/tokens" and r.status_code == 201][0]
            responses.append(await c.delete(f"/v1/tokens/{created.json()['id']}"))
        for response in responses:
            _check(response, seen)
    operations = {(m, p) for p, ops in SPEC["paths"].items() for m in ops}
    assert operations - {(m, p) for m, p, _ in seen} == set(), "every documented operation was exercised"
    assert {s for _, _, s in seen} >= {"200", "201", "304", "400", "401", "403", "404", "409", "412", "413", "422"}
    assert ("delete", "/v1/tokens/{token_id}", "409") in seen


# ---------------------------------------------------------------- schemathesis

FUZZ_SCHEMA = schemathesis.openapi.from_dict(build_spec())


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
        and response.json()["error"]["code"] == "unavailable"
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
    path=["/v1/changes/ws", "/v0.1/publish", "/v0.1/servers/{serverName}/versions/{version}"])
ACCEPTANCE_SCHEMA.config.generation.update(modes=[GenerationMode.POSITIVE])

# Refusals of a well-formed request for what the node holds, not for the request's shape: no document can
# state them (as no document says which ids exist: 404). Each: (operation path, or None for any; error code;
# a regular expression its message starts with).
RECORDS = "/v1/registries/{registry}/records"
STATE_REFUSALS = [
    (None, "unknown_kind", ""),  # names a kind this node has not registered (GET /v1/kinds lists them)
    (None, "idempotency_key_reused", ""),  # the key came with another request before (IETF draft: 422)
    ("/v1/kinds", "validation_failed", "kind .* is already registered"),  # that version, defined otherwise
    # The kind's schema must itself be a JSON Schema: its meta-schema is not part of this document.
    ("/v1/kinds", "schema_violation", "kind v1: /schema"),
    # A record's kind must be one its registry holds, and its fields are judged by that kind's JSON Schema:
    # both are data on the node (GET /v1/registries/{registry}, GET /v1/kinds/{name}).
    (RECORDS, "validation_failed", "registry .* holds kinds"), (RECORDS, "schema_violation", ""),
    (RECORDS + "/{id}", "schema_violation", ""),
    # Not state: a did:key must name an Ed25519 key, which the document says with its format
    # (did-key-ed25519, generated above), but schemathesis's coverage phase draws from the pattern alone.
    (None, "validation_failed", "(malformed )?did:key "),
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
    If-Match's precondition (412: the record is at another change, or the tag names none of its own)."""
    if response.status_code == 412 and "If-Match" in (case.headers or {}):
        return None
    error = _error_of(response)
    for path, code, message in STATE_REFUSALS:
        if path in (None, case.operation.path) and error.get("code") == code \
                and re.match(message, str(error.get("message", error.get("error", "")))):
            return None
    return positive_data_acceptance(ctx, response, case)


def _prepare(case: Any) -> None:
    """What a generated request cannot know: a cursor is opaque, valid only as the node issued it (the
    stateful test below follows real ones); a view's filter tree is judged by the query parser, which names
    the bad part (SearchFilter says so); a long-poll or an SSE stream would only make the run slower."""
    for params in (case.query, case.headers):
        if params:
            for name in ("cursor", "Accept", "Last-Event-ID"):
                params.pop(name, None)
    if case.query and "wait" in case.query:
        case.query["wait"] = 0
    query = case.body.get("query") if isinstance(case.body, dict) else None
    if case.operation.path in ("/v1/views/{name}", "/v1/search") and isinstance(query, dict):
        for member in ("filter", "boosts"):
            query.pop(member, None)


@ACCEPTANCE_SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_request_the_document_calls_valid_is_accepted(case: Any, fuzz_target: Served) -> None:
    _prepare(case)
    headers = {**(case.headers or {}), **fuzz_target.headers()}
    response = case.call(base_url=fuzz_target.url, headers=headers, timeout=15)
    case.validate_response(response, checks=[_accepted_as_the_document_says, status_code_conformance,
                                             response_schema_conformance])


# ---------------------------------------------------------------- the document's links walk

STATEFUL_SCHEMA = schemathesis.openapi.from_dict(build_spec()).exclude(
    path=["/v1/changes/ws", "/v0.1/publish", "/v0.1/servers/{serverName}/versions/{version}"])
STATEFUL_SCHEMA.config.generation.update(modes=[GenerationMode.POSITIVE])


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
