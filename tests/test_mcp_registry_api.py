"""The MCP Registry read API served by the bridge (`GET /v0.1/servers`,
`.../{serverName}/versions[/{version}]`: node/bridge/mcp_routes.py,
formats/mcp_registry.py), against a real node.

Every answer is checked against the official OpenAPI document, vendored
byte for byte in registrygrid/formats/vendor/ (its README names the
source): the schema the document gives for that operation and status, or,
for a status it does not list (400, 401, 403, 422), its error shape
`{"error": string}`. The server.json documents go in as records of
grid.mcp-servers the way `rgrid import` writes them (the Importer through a
BridgeClient), and the document's own examples are replayed: its parameter
examples as requests, its publish examples as documents imported and read
back.

One node (a ThreadedNode: the node and its bridge on a thread of their own)
serves the whole module; tests that write use names of their own.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from test_bridge_support import REGISTRY, Served, ThreadedNode

import registrygrid.formats
from registrygrid.client import BridgeClient
from registrygrid.formats import importer, mcp
from registrygrid.formats.mcp_registry import Catalog, semver_key

pytestmark = pytest.mark.timeout(120)

VENDORED = Path(registrygrid.formats.__file__).parent / "vendor" / "mcp-registry-openapi.yaml"
OFFICIAL = yaml.safe_load(VENDORED.read_text(encoding="utf-8"))
SPECS = Registry().with_resource(OFFICIAL["$id"], Resource(OFFICIAL, DRAFT202012))
FIXTURES = Path(__file__).parent / "fixtures" / "mcp" / "valid"
SCHEMA_URI = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
LIST, VERSIONS, ONE = "/v0.1/servers", "/v0.1/servers/{serverName}/versions", \
    "/v0.1/servers/{serverName}/versions/{version}"

# jsonschema checks "date-time" only with an optional package this
# environment lacks; RFC 3339 section 5.6, checked here instead.
DATES = FormatChecker()
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


@DATES.checks("date-time")
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def conforms(response: httpx.Response, method: str, template: str) -> Any:
    """The answer's body, after checking it against the official document: the
    schema it gives for this operation and status, else its error shape."""
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    assert response.headers.get("X-Trace-Id")
    status = str(response.status_code)
    responses = OFFICIAL["paths"][template][method]["responses"]
    if status in responses:
        pointer = _pointer("paths", template, method, "responses", status, "content", "application/json", "schema")
    else:
        assert response.status_code in (400, 401, 403, 422, 429), f"{method} {template} answered {status}"
        pointer = _pointer("paths", VERSIONS, "get", "responses", "404", "content", "application/json", "schema")
    body = response.json()
    validator = Draft202012Validator({"$ref": OFFICIAL["$id"] + pointer}, registry=SPECS, format_checker=DATES)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, f"{method} {template} {status} breaks the official document: {errors[:5]}"
    if response.status_code >= 400:
        assert isinstance(body["error"], str) and body["code"] and body["trace_id"], body
    return body


def server_json(name: str, version: str, **extra: Any) -> dict[str, Any]:
    return {"$schema": SCHEMA_URI, "name": name, "description": f"{name} for the tests", "version": version, **extra}


def official(item: dict[str, Any]) -> dict[str, Any]:
    return item["_meta"][mcp.OFFICIAL_META]


def keys(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["server"]["name"], s["server"]["version"]) for s in body["servers"]]


def encoded(name: str) -> str:
    return quote(name, safe="")  # com.example/my-server -> com.example%2Fmy-server


# The document's own publish examples (requestBody examples of POST /v0.1/publish): ServerDetail values.
PUBLISH_EXAMPLES = {k: v["value"] for k, v in
                    OFFICIAL["paths"]["/v0.1/publish"]["post"]["requestBody"]["content"]["application/json"]
                    ["examples"].items()}
# Published in this order, so publication time and precedence disagree.
MULTI = ("io.github.example/multi", ["1.0.0", "2.0.0", "1.1.0", "2.0.0-rc.1", "nightly-2025-06-18"])
UNDATED = ("com.example/dated", ["2025-06-18", "2025-07-01", "v1.0"])  # none is a semantic version
PAGED = [f"io.github.page/s-{i:02d}" for i in range(30)]
DEPRECATED = server_json("io.github.example/old", "0.9.0",
                         _meta={mcp.OFFICIAL_META: {"status": "deprecated"}})
# The document's path examples: serverName com.example%2Fmy-server, version 1.0.0%2B20130313144700.
BUILD_META = server_json("com.example/my-server", "1.0.0+20130313144700")


def with_transport(example: dict[str, Any]) -> dict[str, Any]:
    """A publish example with the one member it lacks (see test_the_documents_own_publish_examples_replay)."""
    return {**example, "packages": [{**p, "transport": {"type": "stdio"}} for p in example["packages"]]}


@dataclass
class World:
    served: Served
    reader: str

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {} if token == "" else {"Authorization": f"Bearer {token or self.reader}"}
        return httpx.Client(base_url=self.served.url, headers=headers, timeout=20, **kwargs)

    def admin(self) -> httpx.Client:
        return self.client(self.served.admin)

    def token(self, role: str, **extra: Any) -> str:
        with self.admin() as c:
            r = c.post("/v1/tokens", json={"role": role, **extra})
            assert r.status_code == 201, r.text
            return r.json()["token"]

    def import_docs(self, *docs: dict[str, Any], pause_s: float = 0.0) -> importer.Report:
        """Import as `rgrid import` does with a node running; ``pause_s`` apart so publication times differ."""
        total = importer.Report()
        with BridgeClient(self.served.url, token=self.served.admin) as grid:
            for i, doc in enumerate(docs):
                report = importer.Importer(grid).run(iter([importer.Document(f"doc[{i}]", doc)]))
                total.created += report.created
                total.invalid += report.invalid
                time.sleep(pause_s)
        return total

    def record(self, name: str, version: str) -> dict[str, Any]:
        with self.admin() as c:
            r = c.get(f"/v1/registries/{mcp.REGISTRY}/records/{mcp.record_id(name, version)}",
                      params={"include_deleted": "true"})
            assert r.status_code == 200, r.text
            return r.json()

    def all_versions(self) -> list[tuple[str, str]]:
        with self.client() as c:
            body = conforms(c.get(LIST, params={"limit": 100}), "get", LIST)
        assert "nextCursor" not in body["metadata"], "the test data fits one page of 100"
        return keys(body)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with ThreadedNode(tmp_path_factory.mktemp("mcp") / "home") as served:
        w = World(served, "")
        w.reader = w.token("reader")
        fixtures = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]
        report = w.import_docs(*fixtures, *(server_json(n, "1.0.0") for n in PAGED), DEPRECATED, BUILD_META,
                               *(with_transport(e) for e in PUBLISH_EXAMPLES.values()))
        assert report.invalid == [] and report.created == len(fixtures) + len(PAGED) + 2 + len(PUBLISH_EXAMPLES)
        for name, versions in (MULTI, UNDATED):
            report = w.import_docs(*(server_json(name, v) for v in versions), pause_s=0.005)
            assert report.invalid == [] and report.created == len(versions)
        yield w


# ---------------------------------------------------------------- the official document


def test_the_vendored_document_is_the_official_one() -> None:
    assert OFFICIAL["info"]["title"] == "MCP Server Registry API" and OFFICIAL["info"]["version"] == "2025-12-01"
    assert set(OFFICIAL["paths"]) == {LIST, VERSIONS, ONE, "/v0.1/publish"}
    assert len(VENDORED.read_bytes()) == 31747  # as docs/reference/api/openapi.yaml at the pinned commit
    for schema in OFFICIAL["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_every_answer_validates_against_the_official_document(world: World) -> None:
    multi = encoded(MULTI[0])
    with world.client() as c:
        answers = [
            (c.get(LIST), "get", LIST),
            (c.get(LIST, params={"limit": 5}), "get", LIST),
            (c.get(LIST, params={"version": "latest"}), "get", LIST),
            (c.get(LIST, params={"search": "multi", "include_deleted": "true"}), "get", LIST),
            (c.get(f"/v0.1/servers/{multi}/versions"), "get", VERSIONS),
            (c.get(f"/v0.1/servers/{multi}/versions/latest"), "get", ONE),
            (c.get(f"/v0.1/servers/{multi}/versions/1.1.0"), "get", ONE),
            (c.get(f"/v0.1/servers/{encoded('io.github.example/old')}/versions/0.9.0"), "get", ONE),
            (c.get("/v0.1/servers/io.github.example%2Fnone/versions"), "get", VERSIONS),
            (c.get(f"/v0.1/servers/{multi}/versions/9.9.9"), "get", ONE),
            (c.get(LIST, params={"limit": "many"}), "get", LIST),
            (c.get(LIST, params={"limit": 101}), "get", LIST),
            (c.get(LIST, params={"cursor": "not-a-cursor"}), "get", LIST),
        ]
    with world.admin() as c:
        answers += [(c.delete(f"/v0.1/servers/{multi}/versions/1.0.0"), "delete", ONE),
                    (c.post("/v0.1/publish", json=PUBLISH_EXAMPLES["basic_server"]), "post", "/v0.1/publish")]
    with world.client("") as c:
        answers.append((c.get(LIST), "get", LIST))
    statuses = set()
    for response, method, template in answers:
        conforms(response, method, template)
        statuses.add(response.status_code)
    assert statuses == {200, 400, 401, 404, 422, 501}
    first = answers[0][0].json()["metadata"]
    assert first["count"] == 30 and first["nextCursor"], "30 a page by default, as the official registry"


def test_the_documents_own_parameter_examples_replay(world: World) -> None:
    """Each example value the document gives a parameter, sent as it is."""
    params = {p["name"]: p["schema"]["example"] for p in OFFICIAL["paths"][LIST]["get"]["parameters"]
              if "example" in p["schema"]}
    assert params == {"search": "filesystem", "updated_since": "2025-08-07T13:15:04.280Z", "version": "1.2.3"}
    with world.client() as c:
        found = conforms(c.get(LIST, params={"search": params["search"], "limit": 100}), "get", LIST)
        assert {n for n, _ in keys(found)} == {"io.github.example/filesystem", "io.modelcontextprotocol/filesystem"}
        since = conforms(c.get(LIST, params={"updated_since": params["updated_since"], "limit": 100}), "get", LIST)
        assert len(since["servers"]) == len(world.all_versions()), "every record here is newer than the example"
        assert conforms(c.get(LIST, params={"version": params["version"]}), "get", LIST)["servers"] == []
        # Path examples: com.example%2Fmy-server and 1.0.0%2B20130313144700 (build metadata, its + encoded).
        name = OFFICIAL["paths"][ONE]["get"]["parameters"][0]["schema"]["example"]
        version = "1.0.0%2B20130313144700"
        assert name == "com.example%2Fmy-server" and version in OFFICIAL["paths"][ONE]["get"]["parameters"][1][
            "description"]
        one = conforms(c.get(f"/v0.1/servers/{name}/versions/{version}"), "get", ONE)
        assert one["server"] == BUILD_META
        assert keys(conforms(c.get(f"/v0.1/servers/{name}/versions"), "get", VERSIONS)) == \
            [("com.example/my-server", "1.0.0+20130313144700")]


def test_the_documents_own_publish_examples_replay(world: World) -> None:
    """The publish examples are ServerDetail values, but as published they
    lack `transport`, which the document's own Package schema requires: both
    it and the kind refuse them, at that path. With it they import, and read
    back as they went in."""
    detail = Draft202012Validator({"$ref": OFFICIAL["$id"] + "#/components/schemas/ServerDetail"}, registry=SPECS)
    assert set(PUBLISH_EXAMPLES) == {"basic_server", "example_org_server"}
    for name, example in PUBLISH_EXAMPLES.items():
        missing = [(list(e.absolute_path), e.message) for e in detail.iter_errors(example)]
        assert missing == [(["packages", 0], "'transport' is a required property")], (name, missing)
        as_published = world.import_docs({**example, "version": example["version"] + "-as-published"})
        assert as_published.created == 0
        assert as_published.invalid[0]["paths"] == [{"path": "/packages/0",
                                                      "message": "'transport' is a required property"}]
        fixed = with_transport(example)  # imported so by the fixture
        assert not list(detail.iter_errors(fixed))
        with world.client() as c:
            got = conforms(c.get(f"/v0.1/servers/{encoded(example['name'])}/versions/{example['version']}"),
                           "get", ONE)
        assert got["server"] == fixed
        assert official(got)["isLatest"] and official(got)["status"] == "active"
    with world.admin() as c:
        refused = conforms(c.post("/v0.1/publish", json=PUBLISH_EXAMPLES["example_org_server"]), "post",
                           "/v0.1/publish")
    assert refused["code"] == "not_supported" and "rgrid import" in refused["error"]


# ---------------------------------------------------------------- listings


def test_a_cursor_walk_sees_every_version_once_in_name_version_order(world: World) -> None:
    before = world.all_versions()
    assert before == sorted(before) and len(before) == len(set(before))
    seen: list[tuple[str, str]] = []
    cursor = None
    pages = 0
    with world.client() as c:
        while True:
            body = conforms(c.get(LIST, params={"limit": 7, **({"cursor": cursor} if cursor else {})}), "get", LIST)
            assert body["metadata"]["count"] == len(body["servers"]) <= 7
            seen += keys(body)
            pages += 1
            if pages == 2:  # inserts land behind and ahead of the walk
                world.import_docs(server_json("aaa.walk/behind", "1.0.0"), server_json("zzz.walk/ahead", "1.0.0"))
            cursor = body["metadata"].get("nextCursor")
            if not cursor:
                break
    assert seen == sorted(seen) and len(seen) == len(set(seen)), "each version once, in order"
    assert set(before) <= set(seen)
    assert ("zzz.walk/ahead", "1.0.0") in seen and ("aaa.walk/behind", "1.0.0") not in seen
    assert pages == -(-len(seen) // 7)


def test_search_is_a_case_insensitive_substring_of_the_name(world: World) -> None:
    with world.client() as c:
        found = conforms(c.get(LIST, params={"search": "PAGE/S-1", "limit": 100}), "get", LIST)
        assert [n for n, _ in keys(found)] == [f"io.github.page/s-{i}" for i in range(10, 20)]
        assert conforms(c.get(LIST, params={"search": "no such server"}), "get", LIST) == \
            {"servers": [], "metadata": {"count": 0}}


def test_version_latest_gives_one_version_per_server_by_the_aggregators_rule(world: World) -> None:
    """Semantic versions by precedence, above any other; the others by publication time."""
    with world.client() as c:
        latest = keys(conforms(c.get(LIST, params={"version": "latest", "limit": 100}), "get", LIST))
        exact = keys(conforms(c.get(LIST, params={"version": "1.1.0", "limit": 100}), "get", LIST))
    names = [n for n, _ in latest]
    assert len(names) == len(set(names)) == len({n for n, _ in world.all_versions()})
    assert (MULTI[0], "2.0.0") in latest, "2.0.0 beats 1.1.0 and 2.0.0-rc.1 published later, and any non-semver"
    assert (UNDATED[0], "v1.0") in latest, "no semantic version: the last published"
    assert exact == [(MULTI[0], "1.1.0")]


def test_updated_since_lists_what_changed_at_or_after_it(world: World) -> None:
    time.sleep(0.01)
    t0 = time.time_ns() // 1_000_000
    name = "io.github.page/s-07"
    with world.admin() as c:
        r = c.patch(f"/v1/registries/{mcp.REGISTRY}/records/{mcp.record_id(name, '1.0.0')}",
                    content=b'{"description": "patched"}', headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200, r.text
    stamp = datetime.fromtimestamp(t0 / 1000).astimezone().isoformat(timespec="milliseconds")  # a local offset
    with world.client() as c:
        changed = conforms(c.get(LIST, params={"updated_since": stamp}), "get", LIST)
        assert keys(changed) == [(name, "1.0.0")] and changed["servers"][0]["server"]["description"] == "patched"
        updated = official(changed["servers"][0])["updatedAt"]
        assert updated >= official(changed["servers"][0])["publishedAt"]
        assert keys(conforms(c.get(LIST, params={"updated_since": updated}), "get", LIST)) == [(name, "1.0.0")], \
            "at or after: the updatedAt itself is included"
        assert conforms(c.get(LIST, params={"updated_since": "2999-01-01T00:00:00Z"}), "get", LIST)["servers"] == []


def test_versions_are_listed_newest_publication_first(world: World) -> None:
    name, versions = MULTI
    published = {v: world.record(name, v)["created_at"] for v in versions}
    with world.client() as c:
        body = conforms(c.get(f"/v0.1/servers/{encoded(name)}/versions"), "get", VERSIONS)
    assert [v for _, v in keys(body)] == sorted(versions, key=lambda v: (published[v], v), reverse=True) \
        == list(reversed(versions))
    assert body["metadata"] == {"count": len(versions)}
    assert [s["server"]["version"] for s in body["servers"] if official(s)["isLatest"]] == ["2.0.0"]
    for item in body["servers"]:
        record = world.record(name, item["server"]["version"])
        meta = official(item)
        assert meta["publishedAt"] == _stamp(record["created_at"]) and meta["updatedAt"] == _stamp(record["updated_at"])


def _stamp(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


# ---------------------------------------------------------------- paths, statuses, errors


def test_a_server_name_arrives_url_encoded(world: World) -> None:
    with world.client() as c:
        r = c.get("/v0.1/servers/io.github.example%2Ffilesystem/versions/latest")
        assert b"%2F" in r.request.url.raw_path, "sent encoded, as clients do"
        assert conforms(r, "get", ONE)["server"]["name"] == "io.github.example/filesystem"
        lower = c.get("/v0.1/servers/io.github.example%2ffilesystem/versions")
        assert keys(conforms(lower, "get", VERSIONS)) == [("io.github.example/filesystem", "1.4.0")]
        plain = c.get("/v0.1/servers/io.github.example/filesystem/versions")
        assert plain.status_code == 404 and plain.json()["code"] == "route_not_found", "a bare slash is no name"


def test_unknown_servers_and_versions_answer_404_in_the_official_shape(world: World) -> None:
    with world.client() as c:
        gone = conforms(c.get("/v0.1/servers/io.github.example%2Fnobody/versions"), "get", VERSIONS)
        assert gone["error"] == "Server not found" and gone["code"] == "not_found"
        assert conforms(c.get("/v0.1/servers/io.github.example%2Fnobody/versions/latest"), "get", ONE)["error"] \
            == "Server not found"
        missing = conforms(c.get("/v0.1/servers/io.github.example%2Fmulti/versions/3.0.0"), "get", ONE)
        assert missing["error"] == "Server version not found"


def test_a_deleted_version_is_hidden_unless_asked_and_is_never_latest(world: World) -> None:
    name = "io.github.example/gone"
    assert world.import_docs(server_json(name, "1.0.0"), server_json(name, "1.1.0"), pause_s=0.003).created == 2
    path = f"/v0.1/servers/{encoded(name)}/versions"
    with world.admin() as c:
        r = c.delete(f"/v1/registries/{mcp.REGISTRY}/records/{mcp.record_id(name, '1.1.0')}")
        assert r.status_code == 200, r.text
    with world.client() as c:
        assert keys(conforms(c.get(path), "get", VERSIONS)) == [(name, "1.0.0")]
        assert conforms(c.get(path + "/latest"), "get", ONE)["server"]["version"] == "1.0.0"
        assert (name, "1.1.0") not in keys(conforms(c.get(LIST, params={"search": name}), "get", LIST))
        assert conforms(c.get(path + "/1.1.0"), "get", ONE)["error"] == "Server version not found"
        shown = conforms(c.get(path + "/1.1.0", params={"include_deleted": "true"}), "get", ONE)
        assert official(shown)["status"] == "deleted" and official(shown)["isLatest"] is False
        listed = conforms(c.get(LIST, params={"search": name, "include_deleted": "true"}), "get", LIST)
        assert [(official(s)["status"], official(s)["isLatest"]) for s in listed["servers"]] == \
            [("active", True), ("deleted", False)]
    with world.admin() as c:
        assert c.delete(f"/v1/registries/{mcp.REGISTRY}/records/{mcp.record_id(name, '1.0.0')}").status_code == 200
    with world.client() as c:
        assert conforms(c.get(path), "get", VERSIONS)["error"] == "Server not found"
        assert conforms(c.get(path + "/latest", params={"include_deleted": "true"}), "get", ONE)["error"] == \
            "Server version not found", "a deleted version is never the latest"


def test_deprecated_is_the_publishers_own_word_and_a_later_version_deprecates_nothing(world: World) -> None:
    with world.client() as c:
        old = conforms(c.get("/v0.1/servers/io.github.example%2Fold/versions/0.9.0"), "get", ONE)
        multi = conforms(c.get(f"/v0.1/servers/{encoded(MULTI[0])}/versions"), "get", VERSIONS)
    assert official(old) | {"publishedAt": "", "updatedAt": ""} == \
        {"status": "deprecated", "isLatest": True, "publishedAt": "", "updatedAt": ""}
    assert {official(s)["status"] for s in multi["servers"]} == {"active"}


def test_a_reader_token_reads_and_a_token_of_another_registry_is_refused(world: World) -> None:
    scoped_here = world.token("reader", registry=mcp.REGISTRY)
    scoped_elsewhere = world.token("reader", registry=REGISTRY)
    with world.client(scoped_here) as c:
        assert c.get(LIST).status_code == 200
    with world.client(scoped_elsewhere) as c:
        for path in (LIST, "/v0.1/servers/io.github.example%2Fold/versions",
                     "/v0.1/servers/io.github.example%2Fold/versions/0.9.0"):
            refused = c.get(path)
            assert refused.status_code == 403 and refused.json()["code"] == "policy_denied", path
    with world.client("") as c:
        anonymous = c.get(LIST)
        assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    with world.client() as c:  # a reader may not publish: refused before the 501
        assert c.post("/v0.1/publish", json={}).status_code == 403


@pytest.mark.parametrize("params, status, code", [
    ({"limit": 0}, 422, "validation_failed"),
    ({"limit": 101}, 422, "validation_failed"),
    ({"limit": "x"}, 400, "malformed_input"),
    ({"cursor": "bm90IG91cnM"}, 422, "validation_failed"),
    # The cursor of ("z", "z") mangled: Python's decoder skipped the "!" and the padding, and took it.
    ({"cursor": "WyJ6Iiw!!!ieiJd"}, 422, "validation_failed"),
    ({"cursor": "WyJ6IiwieiJd===="}, 422, "validation_failed"),
    # Nested deeper than the JSON parser follows: a 500 before.
    ({"cursor": base64.urlsafe_b64encode(b"[" * 1500 + b"]" * 1500).decode()}, 422, "validation_failed"),
    ({"updated_since": "yesterday"}, 400, "malformed_input"),
    ({"updated_since": "2025-08-07"}, 400, "malformed_input"),
    ({"updated_since": "2025-02-30T00:00:00Z"}, 400, "malformed_input"),
    ({"include_deleted": "perhaps"}, 400, "malformed_input"),
])
def test_bad_parameters_answer_the_bridges_typed_errors(world: World, params: dict[str, Any], status: int,
                                                        code: str) -> None:
    with world.client() as c:
        response = c.get(LIST, params=params)
    body = conforms(response, "get", LIST)
    assert (response.status_code, body["code"], body["details"][0]["path"]) == \
        (status, code, f"query:{next(iter(params))}")


# ---------------------------------------------------------------- the catalog (no node)


def test_semantic_versions_sort_by_the_precedence_semver_org_gives() -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
               "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "2.0.0"]  # semver.org, rule 11
    assert sorted(ordered, key=semver_key) == ordered  # type: ignore[arg-type, return-value]
    assert semver_key("1.0.0+build.7") == semver_key("1.0.0")
    for other in ("v1.0", "1.0", "2025.06.18", "1.2.3.4", "01.2.3", "latest", ""):
        assert semver_key(other) is None, other


def _record(name: str, version: str, created: int, *, deleted: bool = False) -> dict[str, Any]:
    return {"kind": mcp.KIND, "id": mcp.record_id(name, version), "deleted": deleted, "created_at": created,
            "updated_at": created, "fields": server_json(name, version)}


ROWS = st.lists(st.tuples(st.sampled_from(["1.0.0", "1.2.0", "1.2.0-rc.1", "2.0.0-beta", "v3", "2025-06-18"]),
                          st.integers(0, 5), st.booleans()),
                min_size=1, max_size=6, unique_by=lambda t: t[0])


@settings(max_examples=100, deadline=None)
@given(rows=ROWS, data=st.data())
def test_the_latest_version_does_not_depend_on_arrival_order(rows: list[tuple[str, int, bool]],
                                                              data: st.DataObject) -> None:
    records = [_record("io.example/s", v, created, deleted=deleted) for v, created, deleted in rows]

    def answer(order: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
        return [(v.version, v.status, v.is_latest)
                for v in Catalog.of(order).versions("io.example/s", include_deleted=True)]

    first = answer(records)
    assert answer(data.draw(st.permutations(records))) == first
    live = [(v, created) for v, created, deleted in rows if not deleted]
    assert [v for v, _, latest in first if latest] == ([max(live, key=lambda r: _expected_rank(*r))[0]] if live
                                                        else [])


def _expected_rank(version: str, created: int) -> tuple[Any, ...]:
    """The aggregators' rule, written out for these versions: semver above the rest, by precedence."""
    precedence = ["1.0.0", "1.2.0-rc.1", "1.2.0", "2.0.0-beta"]  # ascending (semver.org, rule 11)
    if version in precedence:
        return (1, precedence.index(version), created, version)
    return (0, 0, created, version)


def test_reads_that_find_the_catalog_stale_share_one_rebuild(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each such read rebuilt it: after one write, 100 concurrent reads of
    # 10,000 versions ran 100 rebuilds (26 s each) on the executor every
    # other route shares (/v1/stats took 11 s meanwhile).
    from concurrent.futures import ThreadPoolExecutor

    builds: list[int] = []
    build = Catalog.of.__func__  # type: ignore[attr-defined]

    def slow_build(cls: type[Catalog], records: Any) -> Catalog:
        builds.append(1)
        time.sleep(0.3)  # as long as ~10,000 versions take: the reads overlap it
        return build(cls, records)  # type: ignore[no-any-return]

    monkeypatch.setattr(Catalog, "of", classmethod(slow_build))
    assert world.import_docs(server_json("io.example.stale/one", "1.0.0")).created == 1

    def read(_: int) -> int:
        with world.client() as c:
            return c.get(LIST, params={"limit": 1}).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(read, range(48))) == {200}
    assert builds == [1]
    assert ("io.example.stale/one", "1.0.0") in world.all_versions()
