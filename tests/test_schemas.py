"""The record kinds: built-in schemas, validation errors, user kinds, migrations.

EXAMPLES holds one realistic record of every built-in kind (both versions of
``asset``). They double as documentation of what each kind looks like.
"""

from __future__ import annotations

import ast
import copy
import functools
import http.server
import pathlib
import re
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrygrid.errors import SchemaViolation, UnknownKind, ValidationError
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.schemas import BUILTIN_REGISTRIES, FORMAT_CHECKER, BuiltinRegistry, KindSchema, SchemaCatalog
from registrygrid.trust.federation import genesis_record, invitation_record, invite, make_genesis
from registrygrid.trust.statements import delegation_record, revocation_record, sign_revocation

SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"

def _signed_statements() -> tuple[dict, dict, dict, dict]:
    org, node, other = KeyPair(b"\x07" * 32), KeyPair(b"\x08" * 32), KeyPair(b"\x09" * 32)
    _, delegation = delegation_record(sign_delegation(org, node.did, ["node", "writer"], now=1_767_225_600))
    _, revocation = revocation_record(sign_revocation(org, node.did, {"grid.tools": 12}, reason="key rotated",
                                                      now=1_798_761_600))
    genesis = make_genesis("open-ai-grid", [org], now=1_767_225_600)
    _, federation = genesis_record(genesis)
    _, invitation = invitation_record(invite(genesis, other.did, org, now=1_767_312_000))
    return delegation, revocation, federation, invitation


_STATEMENTS = _signed_statements()

EXAMPLES: dict[tuple[str, int], dict] = {
    ("asset", 1): {
        "name": "mistral-7b-instruct",
        "uri": "s3://models/mistral-7b-instruct-v0.3.safetensors",
        "asset_type": "model",
        "version": {"version": "0.3.0", "tag": "stable"},
        "public_url": "https://cdn.example.org/mistral-7b-instruct-v0.3.safetensors",
        "metadata": {"parameters": 7_241_732_096, "context_length": 32768},
        "file_info": {"size": 14_483_498_017, "mime_type": "application/octet-stream",
                      "checksums": {"sha256": SHA256, "md5": "098f6bcd4621d373cade4e832627b4f6"}},
        "tags": ["llm", "instruct"],
        "license": "Apache-2.0",
        "status": "active",
    },
    ("asset", 2): {
        "name": "imagenet-1k-val",
        "uri": "file:///srv/assets/imagenet-1k-val.tar",
        "asset_type": "dataset",
        "version": "2012.1.0",
        "release_tag": "validation",
        "urls": ["https://data.example.org/imagenet-1k-val.tar", "https://mirror.example.net/imagenet-1k-val.tar"],
        "file_info": {"size": 6_744_924_160, "mime_type": "application/x-tar", "checksums": {"sha256": SHA256}},
        "tags": ["vision", "benchmark"],
    },
    ("block", 1): {
        "block_id": "blk-0192",
        "name": "embedder-us",
        "component": "grid.components/text-embedder",
        "cluster": "grid.clusters/us-east-a100",
        "status": "running",
        "replicas": 2,
        "resources": {"vcpus": 4, "memory": 16384, "gpus": {"count": 1, "memory": 40960, "model": "NVIDIA A100 40GB"}},
        "endpoints": ["https://embed.us.example.org", "/ip4/198.51.100.4/tcp/4001"],
        "config": {"batch_size": 64},
        "policies": [{"uri": "grid.policies/gpu-quota-per-org", "parameters": {"max_gpus": 4}}],
    },
    ("cluster", 1): {
        "name": "us-east-a100",
        "region": "us-east-1",
        "status": "active",
        "nodes": [
            {"id": "node-1", "hostname": "a100-1.us.example.org",
             "gpus": {"count": 4, "memory": 163840, "model": "NVIDIA A100 40GB"},
             "vcpus": 64, "memory": 524288, "storage": 7_340_032},
            {"id": "node-2", "hostname": "a100-2.us.example.org",
             "gpus": {"count": 4, "memory": 163840}, "vcpus": 64, "memory": 524288, "storage": 7_340_032},
        ],
        "gpus": {"count": 8, "memory": 327680},
        "vcpus": 128, "memory": 1_048_576, "storage": 14_680_064,
        "network": {"bandwidth": 25000, "interconnect": "ethernet-100g", "public_ips": ["198.51.100.4", "2001:db8::4"]},
        "reputation": 0.87,
        "scheduler": "slurm",
    },
    ("component", 1): {
        "name": "text-embedder",
        "version": "1.4.2",
        "component_type": "model-server",
        "description": "Sentence embeddings over HTTP.",
        "image": "ghcr.io/example/text-embedder:1.4.2",
        "interface": {"protocol": "http", "spec": "grid.specs/embedder-openapi", "port": 8000},
        "dependencies": ["grid.components/tokenizer"],
        "config_schema": {"type": "object", "properties": {"batch_size": {"type": "integer"}}},
        "tags": ["embedding"],
    },
    ("container-registry", 1): {
        "name": "acme-harbor",
        "url": "https://harbor.acme.example.org",
        "registry_type": "harbor",
        "auth": {"method": "basic", "credentials_ref": "harbor-robot-pull"},
        "public": False,
        "region": "eu-central-1",
        "mirrors": ["https://harbor-mirror.acme.example.org"],
        "images": [{"repository": "ml/text-embedder", "tag": "1.4.2", "digest": "sha256:" + SHA256}],
    },
    ("network", 1): {
        "name": "federation-mesh",
        "network_type": "libp2p",
        "description": "Overlay between the federation's clusters.",
        "subnets": ["10.60.0.0/14", "fd00:60::/48"],
        "routes": [{"destination": "10.64.0.0/16", "via": "10.60.0.1", "metric": 10}],
        "dns": {"servers": ["10.60.0.53", "fd00:60::53"], "search_domains": ["mesh.internal"]},
        "mtu": 1380,
        "encrypted": True,
        "members": ["grid.clusters/us-east-a100", "grid.clusters/eu-west-gpu-1"],
    },
    ("policy", 1): {
        "name": "eu-data-residency",
        "policy_type": "placement",
        "description": "Personal data stays on EU clusters.",
        "version": "1.0.0",
        "engine": "rego",
        "rule": {"uri": "https://policies.example.org/residency.rego", "parameters": {"regions": ["eu-west-1"]}},
        "enforcement": "enforce",
        "targets": ["grid.blocks", "grid.vdags/rag-pipeline"],
        "tags": ["gdpr"],
    },
    ("spec", 1): {
        "name": "embedder-request",
        "version": "1.0.0",
        "spec_type": "protobuf",
        "media_type": "text/x-protobuf",
        "content": 'syntax = "proto3";\nmessage EmbedRequest { repeated string texts = 1; }\n',
        "checksums": {"sha256": SHA256},
        "tags": ["embedding"],
    },
    ("template", 1): {
        "name": "nightly-eval-job",
        "version": "0.2.0",
        "template_type": "job",
        "engine": "go-template",
        "uri": "https://templates.example.org/nightly-eval.tmpl",
        "parameters_schema": {"type": "object", "required": ["model"], "properties": {"model": {"type": "string"}}},
    },
    ("vdag", 1): {
        "name": "doc-qa",
        "version": "0.9.0",
        "status": "draft",
        "nodes": [
            {"label": "embed", "component": "grid.components/text-embedder",
             "io_map": [{"from": "input.question", "to": "texts"}]},
            {"label": "search", "function": "grid.functions/vector-search",
             "policy_rule": {"uri": "grid.policies/rate-limit-default", "parameters": {"per_minute": 120}},
             "io_map": [{"from": "embed.vectors", "to": "query"}]},
            {"label": "answer", "component": "grid.components/llm-router",
             "io_map": [{"from": "search.documents", "to": "context"}, {"from": "input.question", "to": "prompt"}]},
        ],
        "graph": {"embed": ["search"], "search": ["answer"], "answer": []},
        "policies": [{"uri": "grid.policies/eu-data-residency"}],
    },
    ("adhoc-server", 1): {
        "name": "spot-l4-03",
        "endpoint": "/ip4/203.0.113.30/udp/4001/quic-v1",
        "protocol": "libp2p",
        "status": "busy",
        "capabilities": ["inference", "embedding"],
        "resources": {"vcpus": 8, "memory": 32768, "gpus": {"count": 1, "memory": 24576, "model": "NVIDIA L4"}},
        "region": "ap-south-1",
        "expires_at": "2025-08-14T06:30:00.250+05:30",
        "health_check": {"path": "/healthz", "interval_seconds": 10},
    },
    ("split-runner", 1): {
        "name": "mixtral-shard-0",
        "model": "grid.assets/mixtral-8x7b",
        "shard": {"index": 0, "count": 2, "layer_start": 0, "layer_end": 16},
        "framework": "petals",
        "endpoint": "https://shard0.example.org:9000",
        "cluster": "grid.clusters/us-east-a100",
        "status": "ready",
        "resources": {"gpus": {"count": 2, "memory": 81920}},
        "downstream": "grid.split-runners/mixtral-shard-1",
    },
    ("contract", 1): {
        "name": "gpu-capacity-2025",
        "description": "Reserved GPU capacity for the university lab.",
        "parties": [{"id": "grid.orgs/acme-compute", "role": "provider"},
                    {"id": "grid.orgs/univ-lab", "role": "consumer"}],
        "terms_uri": "https://legal.example.org/gpu-capacity-2025.pdf",
        "terms_sha256": SHA256,
        "valid_from": "2025-01-01T00:00:00Z",
        "valid_until": "2025-12-31T23:59:59Z",
        "status": "active",
        "covers": ["grid.clusters/us-east-a100"],
        "governance": [{"uri": "grid.policies/gpu-quota-per-org", "parameters": {"max_gpus": 8}}],
    },
    ("dsl", 1): {
        "name": "taskgraph",
        "version": "1.0.0",
        "purpose": "task-graph",
        "description": "Declarative task graphs for org tasks.",
        "grammar": {"format": "ebnf", "content": "graph = { edge } ;\nedge = node '->' node ;\n"},
        "media_type": "text/x-taskgraph",
        "file_extensions": [".tg"],
        "interpreter": "grid.tools/taskgraph-runner",
    },
    ("exchange", 1): {
        "name": "imagenet-for-credits",
        "provider": DID,
        "consumer": "grid.orgs/univ-lab",
        "resource_type": "data",
        "resource": "grid.assets/imagenet-1k-val",
        "terms": {"contract": "grid.contracts/data-sharing-7", "price": {"amount": 0, "currency": "USD"}},
        "status": "completed",
        "started_at": "2025-03-01T10:00:00Z",
        "ended_at": "2025-03-01T10:42:13Z",
        "usage": {"egress_bytes": 6744924160},
    },
    ("function", 1): {
        "name": "pdf-to-text",
        "version": "3.1.0",
        "description": "Extract text from a PDF.",
        "executor": {"type": "wasm", "image": "oci://ghcr.io/example/pdf-to-text:3.1.0", "timeout_seconds": 20,
                     "resources": {"vcpus": 1, "memory": 512}},
        "policy_rule": {"uri": "grid.policies/content-scan", "parameters": {"max_bytes": 52428800}},
        "input_schema": "grid.specs/pdf-input",
        "output_schema": "https://schemas.example.org/text-output.json",
        "metadata": {"maintainer": "docs-team"},
        "tags": ["documents"],
    },
    ("org", 1): {
        "name": "univ-lab",
        "display_name": "University ML Lab",
        "domain": "ml.univ.example.edu",
        "did": DID,
        "parent": "grid.orgs/univ",
        "members": [{"id": "grid.subjects/bob", "roles": ["admin", "researcher"]}, {"id": DID}],
        "federations": ["open-ai-grid", "edu-grid"],
        "endpoints": ["/dns4/registry.ml.univ.example.edu/tcp/4001"],
        "contact": "ml-admin@univ.example.edu",
    },
    ("org-task", 1): {
        "name": "rotate-node-keys",
        "org": "grid.orgs/univ-lab",
        "description": "Rotate every node's delegation before it expires.",
        "assignees": ["grid.subjects/bob"],
        "status": "open",
        "priority": "critical",
        "due": "2025-10-01T00:00:00Z",
        "depends_on": ["grid.org-tasks/inventory-nodes"],
    },
    ("subject", 1): {
        "subject_type": "human",
        "display_name": "Bob Researcher",
        "did": DID,
        "identifiers": [{"scheme": "email", "value": "bob@univ.example.edu"},
                        {"scheme": "orcid", "value": "0000-0002-1825-0097"}],
        "org": "grid.orgs/univ-lab",
        "status": "active",
    },
    ("tool", 1): {
        "name": "sql-query",
        "version": "1.2.0",
        "description": "Run a read-only SQL query.",
        "executor": {"type": "container", "image": "ghcr.io/example/sql-query:1.2.0",
                     "entrypoint": ["/bin/sql-query"], "env": {"READ_ONLY": "1"}},
        "interface": {"protocol": "function-call",
                      "input_schema": {"type": "object", "required": ["query"],
                                       "properties": {"query": {"type": "string"}}}},
        "permissions": ["network", "secrets:db-readonly"],
    },
    ("registry", 1): {
        "name": "univ.datasets",
        "description": "Datasets the lab shares with the federation.",
        "kinds": ["asset", "contract"],
        "schema_versions": {"asset": 2},
        "write_policy": "members",
        "conflict_policy": "crdt",
        "replication": {"scope": "federation", "regions": ["us-east-1"]},
        "endpoints": ["https://registry.ml.univ.example.edu", "/ip4/198.51.100.4/tcp/4001"],
    },
    ("kind", 1): {
        "name": "eval-result",
        "version": 1,
        "registry": "univ.evals",
        "description": "One model's score on one benchmark.",
        "schema": {
            "type": "object",
            "required": ["model", "benchmark", "score"],
            "properties": {
                "model": {"type": "string"},
                "benchmark": {"type": "string"},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
            },
        },
    },
    # Trust statements carry an org's signature; these are real ones (see _signed_statements).
    ("delegation", 1): _STATEMENTS[0],
    ("revocation", 1): _STATEMENTS[1],
    ("federation", 1): _STATEMENTS[2],
    ("invitation", 1): _STATEMENTS[3],
    # Disputes (docs/conflicts.md): a resolution of a manual conflict, and
    # an equivocation report (its envelopes are checked by the engine, not
    # by the schema; tests/test_disputes.py uses real ones).
    ("dispute-resolution", 1): {"dispute": "dispute-" + "a" * 32, "outcome": "value", "value": {"eur": 0.01},
                                "note": "agreed with the owner on the 2026-11 price list"},
    ("equivocation-report", 1): {"author": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
                                 "registry": "grid.functions", "seq": 7,
                                 "changes": ["bafyreia", "bafyreib"], "envelopes": ["lQ==", "lg=="]},
    # A saved view (search/views.py): its query is judged by the search parser, not the schema.
    # One version of an MCP server, as its server.json says (formats/mcp.py).
    ("mcp-server", 1): {"$schema": "https://static.modelcontextprotocol.io/schemas/2025-09-29/server.schema.json",
                        "name": "io.github.example/weather", "description": "Weather forecasts over MCP",
                        "version": "1.0.2", "remotes": [{"type": "streamable-http", "url": "https://w.example/mcp"}],
                        "_meta": {"io.modelcontextprotocol.registry/publisher-provided": {"tool": "cli"}}},
    # An A2A agent card (formats/a2a.py), as the agent published it.
    ("agent-card", 1): {"name": "Contract summarizer", "description": "Summarizes legal contracts",
                        "version": "1.2.0", "supportedInterfaces": [{"url": "https://agents.example.com/s",
                                                                     "protocolBinding": "JSONRPC"}],
                        "skills": [{"id": "summarize", "name": "Summarize", "tags": ["legal"]}]},
    # An AGNTCY OASF record (formats/oasf.py).
    ("oasf-record", 1): {"name": "contract-summarizer", "version": "v1.2.0", "schema_version": "0.8.0",
                         "description": "Summarizes legal contracts", "authors": ["Example Legal"],
                         "created_at": "2025-11-01T12:00:00Z",
                         "skills": [{"name": "natural_language_processing/summarization", "id": 10201}],
                         "locators": [{"type": "docker_image", "url": "ghcr.io/example/s:1.2.0"}]},
    # An AI Catalog entry with its catalog (formats/ai_catalog.py).
    ("ai-catalog-entry", 1): {"entry": {"identifier": "urn:air:acme.com:tool:ocr", "displayName": "OCR",
                                        "type": "application/mcp-server+json",
                                        "url": "https://tools.acme.com/ocr/mcp.json"},
                              "catalog": {"specVersion": "1.0", "host": {"displayName": "Acme"}}},
    ("view", 1): {"name": "Cheap EU GPUs", "description": "GPU clusters in the EU under 1 EUR/h",
                  "query": {"text": "gpu", "filter": {"field": "price", "lt": 1}, "sort": "price"}},
    ("erasure", 1): {"registry": "grid.subjects", "record": "alice-smith",
                     "org": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
                     "positions": [{"author": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
                                    "seqs": [[3, 5], [9, 9]]}],
                     "blobs": ["bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"],
                     "reason": "erasure request 2026-118 (art. 17 GDPR)"},
}

KIND_HOMES = {
    "asset": "grid.assets", "block": "grid.blocks", "cluster": "grid.clusters",
    "component": "grid.components", "container-registry": "grid.container-registries",
    "network": "grid.networks", "policy": "grid.policies", "spec": "grid.specs",
    "template": "grid.templates", "vdag": "grid.vdags", "adhoc-server": "grid.adhoc-servers",
    "split-runner": "grid.split-runners", "contract": "grid.contracts", "dsl": "grid.dsls",
    "exchange": "grid.exchanges", "function": "grid.functions", "org": "grid.orgs",
    "org-task": "grid.org-tasks", "subject": "grid.subjects", "tool": "grid.tools",
    "registry": "grid.registries", "kind": "grid.kinds",
    "delegation": "grid.members", "revocation": "grid.members",
    "federation": "grid.members", "invitation": "grid.members",
    "dispute-resolution": "grid.disputes", "equivocation-report": "grid.disputes",
    "view": "grid.views", "erasure": "grid.erasures", "mcp-server": "grid.mcp-servers", "agent-card": "grid.agent-cards",
    "oasf-record": "grid.oasf-records", "ai-catalog-entry": "grid.ai-catalog-entries",
}


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    # Module-scoped for the read-only tests; tests that register kinds make their own.
    return SchemaCatalog()


def violation_of(catalog: SchemaCatalog, kind: str, version: int, fields: object) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as info:
        catalog.validate(kind, version, fields)
    return info.value


def user_kind(name: str = "eval-result", version: int = 1, schema: dict | None = None, **kw) -> KindSchema:
    return KindSchema(
        name=name,
        version=version,
        registry=kw.pop("registry", "univ.evals"),
        schema=schema if schema is not None else copy.deepcopy(EXAMPLES[("kind", 1)]["schema"]),
        description=kw.pop("description", "an eval result"),
        builtin=kw.pop("builtin", False),
    )


# ---------------------------------------------------------------- built-in kinds


def test_every_builtin_kind_loads_with_its_home_registry(catalog):
    kinds = {k.name: k for k in catalog.kinds()}
    assert kinds.keys() == KIND_HOMES.keys()
    for name, home in KIND_HOMES.items():
        kind = kinds[name]
        assert kind.builtin is True
        assert kind.registry == home
        assert kind.description
        for version in catalog.versions(name):
            schema = catalog.get(name, version).schema
            assert schema["$id"] == f"https://registrygrid.dev/schemas/{name}/v{version}.json"
            assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
            assert schema["title"] and schema["description"]


def test_every_builtin_schema_is_a_valid_draft_2020_12_schema(catalog):
    # The catalog does not re-check its own package data at run time (it
    # would cost every CLI command half a second); this test does.
    from jsonschema import Draft202012Validator

    for kind in catalog.kinds():
        for version in catalog.versions(kind.name):
            Draft202012Validator.check_schema(catalog.get(kind.name, version).schema, format_checker=FORMAT_CHECKER)


def test_builtin_registries_are_the_table_of_kinds_and_homes():
    assert all(isinstance(r, BuiltinRegistry) for r in BUILTIN_REGISTRIES)
    assert {kind: r.name for r in BUILTIN_REGISTRIES for kind in r.kinds} == KIND_HOMES
    assert len({r.name for r in BUILTIN_REGISTRIES}) == len(BUILTIN_REGISTRIES) == 30
    assert all(r.description for r in BUILTIN_REGISTRIES)


def test_examples_cover_every_builtin_kind_version(catalog):
    expected = {(k.name, v) for k in catalog.kinds() for v in catalog.versions(k.name)}
    assert set(EXAMPLES) == expected


@pytest.mark.parametrize(("kind", "version"), sorted(EXAMPLES), ids=lambda x: str(x))
def test_realistic_record_of_each_kind_validates(catalog, kind, version):
    catalog.validate(kind, version, EXAMPLES[(kind, version)])


def test_examples_embedded_in_every_schema_validate(catalog):
    for kind in catalog.kinds():
        for version in catalog.versions(kind.name):
            for example in catalog.get(kind.name, version).schema.get("examples", []):
                catalog.validate(kind.name, version, example)


def test_kinds_are_sorted_by_name_and_give_the_latest_version(catalog):
    names = [k.name for k in catalog.kinds()]
    assert names == sorted(names)
    assert catalog.latest_version("asset") == 2
    assert catalog.get("asset").version == 2
    assert catalog.versions("asset") == [1, 2]
    assert next(k for k in catalog.kinds() if k.name == "asset").version == 2


def test_required_fields_are_enforced(catalog):
    err = violation_of(catalog, "asset", 2, {"asset_type": "model"})
    assert [(d["path"], d["validator"]) for d in err.details] == [("", "required"), ("", "required")]
    assert "'name' is a required property" in {d["message"] for d in err.details}


def test_unknown_fields_are_kept_for_forward_compatibility(catalog):
    catalog.validate("cluster", 1, {**EXAMPLES[("cluster", 1)], "carbon_intensity": 120})


def test_a_registry_descriptor_refuses_an_unknown_conflict_policy(catalog):
    record = {**EXAMPLES[("registry", 1)], "conflict_policy": "first-writer-wins", "name": "Bad Name"}
    err = violation_of(catalog, "registry", 1, record)
    assert {(d["path"], d["validator"]) for d in err.details} == {("/conflict_policy", "enum"), ("/name", "pattern")}
    # Of the oneOf's branches (a rule's name, or a table of rules), the one
    # the value's type fits says what is wrong: not "valid under none".
    (policy,) = [d["message"] for d in err.details if d["path"] == "/conflict_policy"]
    assert policy.startswith("'first-writer-wins' is not one of ['crdt', 'last-writer-wins'")


def test_a_kind_whose_schema_misspells_a_type_is_told_the_types(catalog):
    record = {**EXAMPLES[("kind", 1)], "schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}
    err = violation_of(catalog, "kind", 1, record)
    assert [(d["path"], d["validator"]) for d in err.details] == [("/schema/properties/a/type", "enum")]
    assert "'strin' is not one of ['array', 'boolean', 'integer', 'null'" in err.message


def test_a_vdag_node_must_name_exactly_one_component_or_function(catalog):
    record = copy.deepcopy(EXAMPLES[("vdag", 1)])
    record["nodes"][0]["function"] = "grid.functions/also"
    err = violation_of(catalog, "vdag", 1, record)
    assert [(d["path"], d["validator"]) for d in err.details] == [("/nodes/0", "oneOf")]


def test_a_kind_record_with_an_invalid_schema_is_refused_without_fetching_the_meta_schema(catalog):
    record = {**EXAMPLES[("kind", 1)], "schema": {"type": "whatever", "minLength": -1}}
    err = violation_of(catalog, "kind", 1, record)
    assert all(d["path"].startswith("/schema") for d in err.details)


# ---------------------------------------------------------------- error reports


def test_record_with_several_errors_reports_every_failing_path_sorted(catalog):
    record = copy.deepcopy(EXAMPLES[("cluster", 1)])
    record["gpus"]["count"] = "eight"
    record["reputation"] = 87
    record["region"] = ""
    record["nodes"][1]["hostname"] = "not a hostname"
    del record["nodes"][0]["id"]
    record["network"]["public_ips"] = ["999.1.1.1"]
    err = violation_of(catalog, "cluster", 1, record)
    assert [(d["path"], d["validator"]) for d in err.details] == [
        ("/gpus/count", "type"),
        ("/network/public_ips/0", "anyOf"),
        ("/nodes/0", "required"),
        ("/nodes/1/hostname", "format"),
        ("/region", "minLength"),
        ("/reputation", "maximum"),
    ]
    assert all(set(d) == {"path", "message", "validator", "schema_path"} for d in err.details)
    # Where each rule sits in the schema (what the audit ledger keeps).
    assert [d["schema_path"] for d in err.details][2:4] == ["/properties/nodes/items/required",
                                                          "/properties/nodes/items/properties/hostname/format"]
    assert "(and 5 more)" in err.message
    assert err.code == "schema_violation" and err.http_status == 422
    assert isinstance(err, ValidationError)


def test_error_paths_sort_array_indexes_numerically(catalog):
    record = copy.deepcopy(EXAMPLES[("cluster", 1)])
    record["nodes"] = [{"id": f"n{i}"} for i in range(12)]
    record["nodes"][2]["vcpus"] = -1
    record["nodes"][10]["vcpus"] = -1
    err = violation_of(catalog, "cluster", 1, record)
    assert [d["path"] for d in err.details] == ["/nodes/2/vcpus", "/nodes/10/vcpus"]


def test_error_paths_are_json_pointers_with_escapes():
    catalog = SchemaCatalog()
    catalog.register(user_kind("counters", schema={"type": "object", "additionalProperties": {"type": "integer"}}))
    err = violation_of(catalog, "counters", 1, {"a/b~c": "x", "ok": 1})
    assert [d["path"] for d in err.details] == ["/a~1b~0c"]


@pytest.mark.parametrize("fields", [[], "name", 42, None, ("a", 1), 3.5])
def test_fields_that_are_not_an_object_fail_at_the_root(catalog, fields):
    err = violation_of(catalog, "asset", 2, fields)
    assert err.details == [{"path": "", "message": err.details[0]["message"], "validator": "type"}]
    assert type(fields).__name__ in err.details[0]["message"]


def test_huge_offending_values_are_not_echoed_in_full(catalog):
    err = violation_of(catalog, "asset", 2, {"name": "x" * 100_000, "uri": "s3://b/k"})
    assert len(err.details[0]["message"]) <= 300
    assert len(err.message) < 400


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2025-07-01T18:00:00Z", True),
        ("2025-07-01t18:00:00.123456789z", True),
        ("2025-07-01T18:00:00+05:30", True),
        ("2016-12-31T23:59:60Z", True),  # leap second
        ("2025-02-30T00:00:00Z", False),
        ("2025-07-01T24:00:00Z", False),
        ("2025-07-01 18:00:00Z", False),
        ("2025-07-01T18:00:00", False),  # RFC 3339 needs an offset
        ("yesterday", False),
    ],
)
def test_date_time_format_is_rfc_3339(catalog, value, ok):
    record = {**EXAMPLES[("adhoc-server", 1)], "expires_at": value}
    if ok:
        catalog.validate("adhoc-server", 1, record)
    else:
        err = violation_of(catalog, "adhoc-server", 1, record)
        assert err.details[0]["path"] == "/expires_at" and err.details[0]["validator"] == "format"


def test_uri_format_is_checked_on_every_node_whatever_extras_are_installed(catalog):
    # jsonschema skips `uri` and `date-time` unless optional packages are
    # installed; ours must not depend on that, or nodes would disagree.
    assert {"date-time", "uri", "hostname", "email", "ipv4", "ipv6", "regex"} <= set(FORMAT_CHECKER.checkers)
    catalog.validate("asset", 2, {"name": "a", "uri": "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"})
    err = violation_of(catalog, "asset", 2, {"name": "a", "uri": "just some words"})
    assert [(d["path"], d["validator"]) for d in err.details] == [("/uri", "format")]


@pytest.mark.parametrize(("fmt", "value"), [
    ("date", "2026-01-01"), ("date-time", "2026-01-01T00:00:00Z"), ("time", "00:00:00Z"),
    ("uri", "https://example.org/x"), ("hostname", "example.org"), ("uuid", "123e4567-e89b-12d3-a456-426614174000"),
    ("email", "a@example.org"), ("ipv4", "192.0.2.1"), ("ipv6", "2001:db8::1"),
])
def test_a_format_holds_for_the_whole_value_a_trailing_newline_included(fmt, value):
    # A regular expression's `$` matches before a final newline: checked
    # with `match`, "2026-01-01\n" was a date, and a uri, uuid, time or
    # host name with a newline after it passed as one.
    assert FORMAT_CHECKER.conforms(value, fmt)
    assert not FORMAT_CHECKER.conforms(value + "\n", fmt)


# ---------------------------------------------------------------- unknown kinds


def test_unknown_kind_error_names_the_known_kinds(catalog):
    with pytest.raises(UnknownKind) as info:
        catalog.get("gadget")
    assert "gadget" in info.value.message
    assert "asset" in info.value.message and "vdag" in info.value.message
    assert info.value.details["known_kinds"] == sorted(KIND_HOMES)


def test_unknown_version_error_names_the_known_versions(catalog):
    with pytest.raises(UnknownKind) as info:
        catalog.get("asset", 7)
    assert "1, 2" in info.value.message
    assert info.value.details["known_versions"] == [1, 2]


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.validate("gadget", 1, {}),
        lambda c: c.validate("asset", 9, {}),
        lambda c: c.latest_version("gadget"),
        lambda c: c.versions("gadget"),
        lambda c: c.migrate("asset", {}, 1, 9),
        lambda c: c.migrate("gadget", {}, 1, 2),
    ],
)
def test_every_lookup_of_an_unknown_kind_or_version_raises_unknown_kind(catalog, call):
    with pytest.raises(UnknownKind):
        call(catalog)


# ---------------------------------------------------------------- user kinds


def test_user_kind_registers_and_validates():
    catalog = SchemaCatalog()
    catalog.register(user_kind())
    kind = catalog.get("eval-result")
    assert (kind.version, kind.registry, kind.builtin) == (1, "univ.evals", False)
    assert "eval-result" in [k.name for k in catalog.kinds()]
    catalog.validate("eval-result", 1, {"model": "grid.assets/m", "benchmark": "mmlu", "score": 0.71})
    err = violation_of(catalog, "eval-result", 1, {"model": "m", "score": 1.5})
    assert [(d["path"], d["validator"]) for d in err.details] == [("", "required"), ("/score", "maximum")]


def test_reregistering_an_identical_user_kind_is_a_no_op():
    catalog = SchemaCatalog()
    catalog.register(user_kind())
    first = catalog.get("eval-result", 1)
    catalog.register(user_kind())
    assert catalog.get("eval-result", 1) is first
    assert catalog.versions("eval-result") == [1]


def test_a_user_kind_version_is_replaced_only_when_the_grid_settled_on_another_definition():
    """register(replace=True): a create race of the kind settled elsewhere
    (engine/kinds.py). The validator compiled for the old definition is not
    used again."""
    catalog = SchemaCatalog()
    assert catalog.register(user_kind()) is True
    record = {"model": "grid.assets/m", "benchmark": "mmlu", "score": 50}
    with pytest.raises(ValidationError):
        catalog.validate("eval-result", 1, record)  # score at most 1
    changed = copy.deepcopy(EXAMPLES[("kind", 1)]["schema"])
    changed["properties"]["score"]["maximum"] = 100
    assert catalog.register(user_kind(schema=changed), replace=True) is True
    catalog.validate("eval-result", 1, record)
    assert catalog.register(user_kind(schema=changed), replace=True) is False  # the same: no change


def test_user_kind_version_cannot_be_redefined():
    catalog = SchemaCatalog()
    catalog.register(user_kind())
    changed = copy.deepcopy(EXAMPLES[("kind", 1)]["schema"])
    changed["properties"]["score"]["maximum"] = 100
    with pytest.raises(ValidationError, match="already registered"):
        catalog.register(user_kind(schema=changed))
    with pytest.raises(ValidationError, match="already registered"):
        catalog.register(user_kind(registry="other.evals"))
    catalog.register(user_kind(version=2, schema=changed))
    assert catalog.versions("eval-result") == [1, 2]
    assert catalog.get("eval-result").schema["properties"]["score"]["maximum"] == 100


@pytest.mark.parametrize("version", [1, 2, 3])
def test_user_kinds_cannot_take_a_builtin_name(version):
    catalog = SchemaCatalog()
    with pytest.raises(ValidationError, match="built-in"):
        catalog.register(user_kind("asset", version))
    assert catalog.versions("asset") == [1, 2]
    assert catalog.get("asset", 1).builtin


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "nope"}, "Draft 2020-12"),
        ({"type": "object", "properties": {"x": {"minLength": -1}}}, "Draft 2020-12"),
        ({"type": "string", "pattern": "(unclosed"}, "Draft 2020-12"),
        ({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}, "2020-12"),
        ({"$ref": "https://schemas.example.invalid/thing.json"}, "does not resolve"),
        ({"$ref": "#/$defs/missing"}, "does not resolve"),
        ({"properties": {"enum": {"$ref": "#/$defs/missing"}}}, "does not resolve"),
        ({"type": "object", "properties": {"x": {"enum": [{1, 2}]}}}, "plain JSON"),
        ({"type": "number", "maximum": float("nan")}, "plain JSON"),
        ({"description": "x" * 70_000}, "larger than"),
        (functools.reduce(lambda inner, _: {"not": inner}, range(40), {}), "deeper"),
    ],
)
def test_invalid_user_schemas_are_refused(schema, reason):
    catalog = SchemaCatalog()
    with pytest.raises(ValidationError, match=reason):
        catalog.register(user_kind(schema=schema))
    with pytest.raises(UnknownKind):
        catalog.get("eval-result")


def doubling_refs(levels: int) -> dict:
    """Each definition refers to the next twice: 2^levels schema objects in ~70 bytes a level."""
    defs = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
            for i in range(levels)}
    defs[f"d{levels}"] = {"type": "object"}
    return {"type": "object", "properties": {"x": {"$ref": "#/$defs/d0"}}, "$defs": defs}


def test_a_schema_whose_refs_double_at_every_level_is_refused_before_anything_validates_against_it():
    # 24 levels, 1.7 KB, passed every bound (size, depth, refs resolve): one
    # write of its kind took a node to 8.6 GB, and every other write with it,
    # on each node of the federation that it reached.
    import time

    catalog = SchemaCatalog()
    started = time.monotonic()
    with pytest.raises(ValidationError, match="schema objects once its \\$refs are followed") as refused:
        catalog.register(user_kind(schema=doubling_refs(24)))
    assert refused.value.details["expanded_objects"] > 2**24
    assert time.monotonic() - started < 10  # counted once per definition, never expanded
    with pytest.raises(UnknownKind):
        catalog.get("eval-result")
    catalog.register(user_kind(schema=doubling_refs(10)))  # 2^10 objects: a big schema, not a bomb
    catalog.validate("eval-result", 1, {"x": {}})
    with pytest.raises(ValidationError, match="chain deeper"):  # a validator's recursion would break on it
        defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(1500)}
        defs["d1500"] = {"type": "object"}
        catalog.register(user_kind("chain", schema={"$ref": "#/$defs/d0", "$defs": defs}))


@pytest.mark.parametrize(
    "kind",
    [
        user_kind("Eval"),
        user_kind("eval_result"),
        user_kind(version=0),
        user_kind(version=True),
        user_kind(registry="Univ/Evals"),
        user_kind(builtin=True),
        user_kind(description="x" * 5000),
    ],
)
def test_user_kinds_with_bad_names_versions_or_registries_are_refused(kind):
    with pytest.raises(ValidationError):
        SchemaCatalog().register(kind)


def test_user_kind_may_refer_to_builtin_definitions():
    catalog = SchemaCatalog()
    schema = {
        "type": "object",
        "properties": {
            "model": {"$ref": "https://registrygrid.dev/schemas/block/v1.json#/$defs/recordRef"},
            "gpus": {"$ref": "https://registrygrid.dev/schemas/cluster/v1.json#/$defs/gpus"},
        },
    }
    catalog.register(user_kind("gpu-benchmark", schema=schema))
    catalog.validate("gpu-benchmark", 1, {"model": "grid.assets/llama", "gpus": {"count": 8}})
    err = violation_of(catalog, "gpu-benchmark", 1, {"model": "no registry", "gpus": {"count": -1}})
    assert [(d["path"], d["validator"]) for d in err.details] == [("/gpus/count", "minimum"), ("/model", "pattern")]


def test_catalog_keeps_its_own_copy_of_a_registered_schema():
    catalog = SchemaCatalog()
    schema = copy.deepcopy(EXAMPLES[("kind", 1)]["schema"])
    catalog.register(user_kind(schema=schema))
    schema["properties"]["score"]["maximum"] = 100
    violation_of(catalog, "eval-result", 1, {"model": "m", "benchmark": "b", "score": 50})


def test_catalogs_do_not_share_kinds():
    a, b = SchemaCatalog(), SchemaCatalog()
    a.register(user_kind())
    with pytest.raises(UnknownKind):
        b.get("eval-result")


# ---------------------------------------------------------------- validator cache


def test_validators_are_compiled_once_per_kind_version(catalog):
    first = catalog.validator("cluster", 1)
    catalog.validate("cluster", 1, EXAMPLES[("cluster", 1)])
    assert catalog.validator("cluster", 1) is first
    assert catalog.validator("asset", 1) is not catalog.validator("asset", 2)


def test_compiled_validator_judges_like_the_schema_as_written(catalog):
    # The cached validator inlines local $refs for speed; it must agree with
    # an uncompiled validator on good and bad records alike.
    from jsonschema import Draft202012Validator

    from registrygrid.schemas.catalog import _reference_registry

    for (kind, version), record in EXAMPLES.items():
        plain = Draft202012Validator(catalog.get(kind, version).schema, registry=_reference_registry(),
                                     format_checker=FORMAT_CHECKER)
        broken = copy.deepcopy(record)
        for key in list(broken)[:3]:
            broken[key] = [None]
        for fields in (record, broken):
            ours = sorted((e.json_path, e.validator) for e in catalog.validator(kind, version).iter_errors(fields))
            theirs = sorted((e.json_path, e.validator) for e in plain.iter_errors(fields))
            assert ours == theirs, (kind, version)


# ---------------------------------------------------------------- migrations


def test_asset_v1_migrates_to_v2_and_validates():
    catalog = SchemaCatalog()
    v1 = EXAMPLES[("asset", 1)]
    v2 = catalog.migrate("asset", v1, 1, 2)
    assert v2["version"] == "0.3.0"
    assert v2["release_tag"] == "stable"
    assert v2["urls"] == [v1["public_url"]]
    assert "public_url" not in v2
    assert {k: v for k, v in v2.items() if k not in ("version", "release_tag", "urls")} == {
        k: v for k, v in v1.items() if k not in ("version", "public_url")
    }
    catalog.validate("asset", 2, v2)


def test_asset_v1_to_v2_to_v1_round_trips(catalog):
    v1 = EXAMPLES[("asset", 1)]
    back = catalog.migrate("asset", catalog.migrate("asset", v1, 1, 2), 2, 1)
    assert back == v1
    catalog.validate("asset", 1, back)


def test_asset_v2_to_v1_keeps_the_primary_url_and_drops_mirrors(catalog):
    v2 = EXAMPLES[("asset", 2)]
    v1 = catalog.migrate("asset", v2, 2, 1)
    assert v1["public_url"] == v2["urls"][0]
    assert v1["version"] == {"version": "2012.1.0", "tag": "validation"}
    assert "urls" not in v1 and "release_tag" not in v1
    catalog.validate("asset", 1, v1)
    assert catalog.migrate("asset", v1, 1, 2) == {**v2, "urls": v2["urls"][:1]}


def test_migration_never_mutates_its_input(catalog):
    v1 = copy.deepcopy(EXAMPLES[("asset", 1)])
    out = catalog.migrate("asset", v1, 1, 2)
    out["metadata"]["parameters"] = 0
    out["tags"].append("changed")
    assert v1 == EXAMPLES[("asset", 1)]
    same = catalog.migrate("asset", v1, 1, 1)
    assert same == v1 and same is not v1


def test_migration_refuses_to_overwrite_stray_fields(catalog):
    with pytest.raises(ValidationError, match="urls"):
        catalog.migrate("asset", {**EXAMPLES[("asset", 1)], "urls": ["https://x.example/"]}, 1, 2)


def test_migration_without_a_path_is_a_validation_error():
    catalog = SchemaCatalog()
    catalog.register(user_kind())
    catalog.register(user_kind(version=2))
    with pytest.raises(ValidationError, match="no migration path") as info:
        catalog.migrate("eval-result", {"model": "m"}, 1, 2)
    assert not isinstance(info.value, UnknownKind)


def test_registered_steps_chain_up_and_down():
    catalog = SchemaCatalog()
    for v in (1, 2, 3):
        catalog.register(user_kind(version=v))
    catalog.register_migration("eval-result", 1, 2, lambda f: {**f, "v2": True})
    catalog.register_migration("eval-result", 2, 3, lambda f: {**f, "v3": True})
    catalog.register_migration("eval-result", 3, 2, lambda f: {k: v for k, v in f.items() if k != "v3"})
    catalog.register_migration("eval-result", 2, 1, lambda f: {k: v for k, v in f.items() if k != "v2"})
    assert catalog.migration_path("eval-result", 1, 3) == [(1, 2), (2, 3)]
    up = catalog.migrate("eval-result", {"model": "m"}, 1, 3)
    assert up == {"model": "m", "v2": True, "v3": True}
    assert catalog.migrate("eval-result", up, 3, 1) == {"model": "m"}


def test_a_migration_step_cannot_be_replaced():
    catalog = SchemaCatalog()
    with pytest.raises(ValidationError, match="already registered"):
        catalog.register_migration("asset", 1, 2, lambda f: f)


# A valid asset v1 record, field by field.
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
_version_string = st.from_regex(r"\A[0-9A-Za-z][0-9A-Za-z.+_-]{0,20}\Z")
_url = st.builds(lambda host, path: f"https://{host}.example.org/{path}",
                 st.from_regex(r"\A[a-z][a-z0-9]{0,10}\Z"), st.from_regex(r"\A[a-z0-9._-]{0,20}\Z"))
_json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _text
asset_v1_records = st.fixed_dictionaries(
    {"name": _text, "uri": _url},
    optional={
        "version": st.fixed_dictionaries({"version": _version_string},
                                         optional={"tag": st.text(min_size=1, max_size=20)}),
        "public_url": _url,
        "asset_type": st.sampled_from(["model", "dataset", "file", "other"]),
        "tags": st.lists(st.text(min_size=1, max_size=10), max_size=5, unique=True),
        "metadata": st.dictionaries(st.text(max_size=10), _json_leaf, max_size=5),
        "x_extension": _json_leaf,
    },
)


@settings(max_examples=150, deadline=None)
@given(asset_v1_records)
def test_every_valid_asset_v1_record_round_trips_through_v2(record):
    catalog = _shared_catalog()
    catalog.validate("asset", 1, record)
    original = copy.deepcopy(record)
    v2 = catalog.migrate("asset", record, 1, 2)
    catalog.validate("asset", 2, v2)
    assert catalog.migrate("asset", v2, 2, 1) == original
    assert record == original


_json_values = st.recursive(
    _json_leaf | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(EXAMPLES)), st.dictionaries(st.sampled_from(
    ["name", "uri", "nodes", "gpus", "version", "status", "graph", "executor", "parties", "schema", "x"]),
    _json_values, max_size=6))
def test_no_json_value_makes_validation_fail_with_anything_but_a_schema_violation(kind_version, fields):
    kind, version = kind_version
    try:
        _shared_catalog().validate(kind, version, fields)
    except SchemaViolation as err:
        assert err.details and all(isinstance(d["path"], str) for d in err.details)


_CATALOG: list[SchemaCatalog] = []


def _shared_catalog() -> SchemaCatalog:
    # Hypothesis tests cannot take function-scoped fixtures; one read-only catalog serves them.
    if not _CATALOG:
        _CATALOG.append(SchemaCatalog())
    return _CATALOG[0]


# ---------------------------------------------------------------- two engines, one verdict
#
# jsonschema-rs gives the verdict, jsonschema explains rejections and judges
# what jsonschema-rs cannot read as it does. The verdict must be the one
# jsonschema (with FORMAT_CHECKER) gave before, on every input.


@functools.cache
def _python_judge(kind: str, version: int):
    # The reference: jsonschema on the schema as written, as validate() used to run.
    from jsonschema import Draft202012Validator

    from registrygrid.schemas.catalog import _reference_registry

    return Draft202012Validator(_shared_catalog().get(kind, version).schema, registry=_reference_registry(),
                                format_checker=FORMAT_CHECKER)


def _python_rejects(kind: str, version: int, fields: object) -> bool:
    return any(True for _ in _python_judge(kind, version).iter_errors(fields))


def _rejected(catalog: SchemaCatalog, kind: str, version: int, fields: object) -> bool:
    try:
        catalog.validate(kind, version, fields)
    except SchemaViolation:
        return True
    return False


def test_every_builtin_kind_is_judged_by_jsonschema_rs(catalog):
    for kind in catalog.kinds():
        for version in catalog.versions(kind.name):
            assert catalog.validator(kind.name, version).engine == "jsonschema-rs", (kind.name, version)


@pytest.mark.parametrize(("kind", "version"), sorted(EXAMPLES), ids=lambda x: str(x))
def test_fast_path_and_full_report_agree_on_each_kinds_record(catalog, kind, version):
    compiled = catalog.validator(kind, version)
    record = EXAMPLES[(kind, version)]
    assert compiled.verdict(record) is True
    assert list(compiled.python.iter_errors(record)) == []
    broken = copy.deepcopy(record)
    for key in list(broken)[:2]:
        broken[key] = {"not": ["what", "the", "schema", "wants"]}
    assert compiled.verdict(broken) is False
    assert list(compiled.python.iter_errors(broken)), (kind, version)
    assert compiled.is_valid(record) and not compiled.is_valid(broken)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


# Characters on which Python's `re` and ECMA-262 regexes (jsonschema-rs's own)
# disagree: `$` before a final newline, and what `\s` means.
_EDGE_CHARS = ["\n", "\r", " ", "\t", "\x0b", "\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\ufeff", "\u3000", "/",
               ":", ".", "-", "_", "A", "é", "0"]
_mutant_values = (
    _json_values
    | st.sampled_from([float("nan"), float("inf"), -float("inf"), 2**64, -(2**70), 1e300, 0.5, -1, 0, True,
                       ("a", "b"), [], {}, "", "grid.assets/x\n", "2025-01-01T00:00:00Z\n", "198.51.100.4\n",
                       "host.example.org.", "https://x.example/a b", "\ud800", "a" * 400])
    | st.text(st.sampled_from(_EDGE_CHARS), max_size=6)
)


def _mutate(draw, record: dict) -> dict:
    mutant = copy.deepcopy(record)
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        paths = [p for p in _paths(mutant) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = mutant
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        old = parent[key]
        how = draw(st.sampled_from(["remove", "retype", "tweak", "tweak"]))
        if how == "remove":
            del parent[key]
        elif how == "retype" or not isinstance(old, (str, int, float)) or isinstance(old, bool):
            parent[key] = draw(_mutant_values)
        elif isinstance(old, str):
            edge = draw(st.sampled_from(_EDGE_CHARS))
            at = draw(st.integers(0, len(old)))
            parent[key] = draw(st.sampled_from([old + edge, edge + old, old[:at] + edge + old[at:], old[:at],
                                                old.upper(), old * 70]))
        else:
            parent[key] = draw(st.sampled_from([-old, old * 1000, old + 0.5, float(old), 2**70, old - 1]))
    return mutant


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(EXAMPLES)), st.data())
def test_validate_rejects_a_mutated_record_iff_jsonschema_finds_errors(kind_version, data):
    kind, version = kind_version
    mutant = _mutate(data.draw, EXAMPLES[kind_version])
    assert _rejected(_shared_catalog(), kind, version, mutant) == _python_rejects(kind, version, mutant)


def _with(record: dict, path: tuple, value: object) -> dict:
    out = copy.deepcopy(record)
    parent = out
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("kind", "path", "value", "accepted"),
    [
        # pattern: re's `$` matches before a final newline, ECMA-262's (jsonschema-rs's) does not ...
        ("function", ("version",), "3.1.0\n", True),
        ("subject", ("did",), DID + "\n", True),
        # ... and `\s` is another set of characters.
        ("adhoc-server", ("endpoint",), "/ip4/203.0.113.30/udp/4001\x1cquic-v1", False),
        ("adhoc-server", ("endpoint",), "/ip4/203.0.113.30/udp/4001\x85quic-v1", False),
        ("adhoc-server", ("endpoint",), "/ip4/203.0.113.30/udp/4001\ufeffquic-v1", True),
        # format: FORMAT_CHECKER's checks, not jsonschema-rs's own.
        ("adhoc-server", ("expires_at",), "2025-08-14T06:30:60Z", True),
        ("adhoc-server", ("expires_at",), "2025-08-14T06:30:00Z\n", False),  # the whole value is checked (fullmatch)
        ("cluster", ("nodes", 0, "hostname"), "a100-1.us.example.org.", True),
        ("cluster", ("network", "public_ips", 1), "fe80::1%eth0", True),
        ("org", ("contact",), "ml.admin.@univ.example.edu", True),
        ("org", ("contact",), '"ml admin"@univ.example.edu', False),
        ("asset", ("public_url",), "https://cdn.example.org/%zz", True),
        # values jsonschema-rs reads otherwise, or cannot read: jsonschema judges them.
        ("function", ("tags",), ("documents",), False),
        ("function", ("metadata",), {"ratio": float("nan")}, True),
        ("function", ("metadata",), {"blob": b"bytes"}, True),
        ("function", ("metadata",), {"text": "lone \ud800 surrogate"}, True),
        ("function", ("metadata",), {1: "a key that is not a string"}, True),
        ("function", ("executor", "timeout_seconds"), float("nan"), True),
        ("cluster", ("reputation",), float("inf"), False),
    ],
)
def test_inputs_on_which_the_engines_differ_get_jsonschemas_verdict(catalog, kind, path, value, accepted):
    record = _with(EXAMPLES[(kind, 1)], path, value)
    assert _python_rejects(kind, 1, record) is not accepted  # the case is what it says
    assert _rejected(catalog, kind, 1, record) is not accepted


def test_values_nested_deeper_than_the_fast_path_takes_get_jsonschemas_verdict(catalog):
    # jsonschema-rs recurses on the native stack, so deep values go to jsonschema.
    from registrygrid.schemas.catalog import _RUST_MAX_DEPTH

    deep: object = "leaf"
    for _ in range(_RUST_MAX_DEPTH + 1):
        deep = [deep]
    record = {**EXAMPLES[("function", 1)], "metadata": {"deep": deep}}
    assert catalog.validator("function", 1).verdict(record) is None
    catalog.validate("function", 1, record)
    err = violation_of(catalog, "kind", 1, {**EXAMPLES[("kind", 1)], "schema": {"items": deep}})
    assert err.details


def test_user_kind_regexes_are_re2s_and_multiple_of_keeps_jsonschemas_semantics():
    import re2
    from jsonschema import Draft202012Validator

    catalog = SchemaCatalog()
    code, named = r"^[a-z]+\s?\d$", "^(?P<word>[a-z]+)$"
    catalog.register(user_kind("meter", schema={
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": code}, "step": {"multipleOf": 0.1},
                       "named": {"pattern": named}},
    }))
    assert catalog.validator("meter", 1).engine == "jsonschema-rs"
    # RE2's dialect, on both engines: no \x1c in \s, ASCII \d, "$" only at the end.
    for value in ("ab\x1c1", "ab1\n", "ab\u0661", "ab 1", "ab1"):
        expected = re2.search(code, value) is not None
        for extra in ({}, {"big": 2**60}):  # the second goes to jsonschema alone
            assert _rejected(catalog, "meter", 1, {"code": value, **extra}) == (not expected), (value, extra)
    for value in ("abc\n", "ABC", "abc"):
        assert _rejected(catalog, "meter", 1, {"named": value}) == (re2.search(named, value) is None), value
    reference = Draft202012Validator({"properties": {"step": {"multipleOf": 0.1}}})
    for step in (0.3, 0.5, 2**70):
        assert _rejected(catalog, "meter", 1, {"step": step}) == (not reference.is_valid({"step": step})), step


def test_integers_past_2_53_get_jsonschemas_exact_comparisons():
    # jsonschema-rs 0.60 compares an int with a float as floats; jsonschema compares exactly.
    catalog = SchemaCatalog()
    catalog.register(user_kind("big", schema={"type": "object", "properties": {
        "n": {"maximum": 9.223372036854776e18}, "u": {"uniqueItems": True}}}))
    catalog.register(user_kind("big-const", schema={"type": "object", "properties": {"c": {"const": 2**63}}}))
    assert catalog.validator("big", 1).engine == "jsonschema-rs"
    assert catalog.validator("big-const", 1).engine == "jsonschema"  # its schema holds an int past 2**53
    assert catalog.validator("big", 1).verdict({"n": 2**63 + 1}) is None
    assert [d["path"] for d in violation_of(catalog, "big", 1, {"n": 2**63 + 1}).details] == ["/n"]
    assert [d["path"] for d in violation_of(catalog, "big", 1, {"u": [2**63, 2.0**63]}).details] == ["/u"]
    catalog.validate("big", 1, {"n": 2**53, "u": [2**53, 2.0**53 + 2]})
    catalog.validate("big-const", 1, {"c": 2.0**63})
    assert [d["path"] for d in violation_of(catalog, "big-const", 1, {"c": 2**63 + 1}).details] == ["/c"]


def test_user_kinds_name_their_keys_with_property_names_on_re2():
    # patternProperties is refused in user kinds (its keys would meet Python's
    # backtracking re); propertyNames with a pattern says the same, on RE2.
    catalog = SchemaCatalog()
    catalog.register(user_kind("labels", schema={
        "type": "object", "propertyNames": {"pattern": "^[a-z]+$"}, "additionalProperties": {"type": "integer"},
    }))
    assert catalog.validator("labels", 1).engine == "jsonschema-rs"
    catalog.validate("labels", 1, {"abc": 1})
    assert _rejected(catalog, "labels", 1, {"abc\n": 1})
    assert [d["validator"] for d in violation_of(catalog, "labels", 1, {"abc": "x"}).details] == ["type"]


def test_one_engine_decides_and_jsonschema_only_explains():
    # Were the engines ever to disagree on plain JSON, jsonschema-rs's verdict stands both ways.
    import jsonschema_rs
    from jsonschema import Draft202012Validator

    from registrygrid.schemas.catalog import CompiledKind

    catalog = SchemaCatalog()
    catalog.register(user_kind("stricter-rust", schema={"type": "object"}))
    catalog.register(user_kind("stricter-python", schema={"type": "object"}))
    catalog._validators[("stricter-rust", 1)] = (catalog.get("stricter-rust", 1), CompiledKind(
        Draft202012Validator({}), jsonschema_rs.validator_for({"required": ["a"]})))
    catalog._validators[("stricter-python", 1)] = (catalog.get("stricter-python", 1), CompiledKind(
        Draft202012Validator({"required": ["a"]}), jsonschema_rs.validator_for({})))
    err = violation_of(catalog, "stricter-rust", 1, {"b": 1})
    assert [(d["path"], d["validator"]) for d in err.details] == [("", "required")]
    catalog.validate("stricter-python", 1, {"b": 1})


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        type(self).hits.append(self.path)
        body = b'{"type": "string"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/schema+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def schema_server():
    _CountingHandler.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _CountingHandler.hits
    finally:
        server.shutdown()
        server.server_close()


def test_remote_refs_are_refused_and_never_fetched(schema_server, tmp_path, monkeypatch):
    # jsonschema-rs fetches a remote $ref over HTTP, or reads a file:// one, unless told not to.
    from registrygrid.schemas.catalog import _compile_rust

    base, hits = schema_server
    local = tmp_path / "thing.json"
    local.write_text('{"type": "string"}')
    connects: list[object] = []
    real_connect = socket.socket.connect

    def connect(self, address):
        connects.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    catalog = SchemaCatalog()
    for ref in (f"{base}/thing.json", local.as_uri()):
        schema = {"type": "object", "properties": {"x": {"$ref": ref}}}
        with pytest.raises(ValidationError, match="does not resolve"):
            catalog.register(user_kind("remote-ref", schema=schema))
        assert _compile_rust(schema) is None  # jsonschema-rs, offline: no fetch, no file read
    with pytest.raises(UnknownKind):
        catalog.get("remote-ref")
    assert hits == [] and connects == []


# ---------------------------------------------------------------- layering


def test_schemas_package_imports_nothing_of_ours_but_errors():
    package = pathlib.Path(__file__).resolve().parent.parent / "registrygrid" / "schemas"
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                if module.startswith("registrygrid"):
                    assert module == "registrygrid.errors", f"{source.name} imports {module}"


def test_builtin_schema_files_are_named_kind_dot_version():
    folder = pathlib.Path(__file__).resolve().parent.parent / "registrygrid" / "schemas" / "builtin"
    names = sorted(p.name for p in folder.glob("*.json"))
    assert all(re.fullmatch(r"[a-z][a-z0-9-]*\.v[1-9][0-9]*\.json", n) for n in names)
    assert len(names) == len(EXAMPLES)


# ---------------------------------------------------------------- user kinds' regexes (ReDoS)

CATASTROPHIC = {"type": "object", "properties": {"slug": {"type": "string", "pattern": "^(a+)+$"}}}


def test_a_user_kinds_pattern_runs_in_linear_time_on_every_path():
    # ^(a+)+$ against a's and a final b backtracks for ever in Python's re;
    # a user kind is anyone's, so its patterns run on RE2.
    catalog = SchemaCatalog()
    catalog.register(user_kind("slugged", schema=CATASTROPHIC))
    evil = {"slug": "a" * 5000 + "b"}
    err = violation_of(catalog, "slugged", 1, evil)  # jsonschema-rs decides, jsonschema reports
    assert [(d["path"], d["validator"]) for d in err.details] == [("/slug", "pattern")]
    # A value jsonschema-rs cannot read as jsonschema does (an integer past
    # 2**53) goes to jsonschema alone: RE2 there too.
    err = violation_of(catalog, "slugged", 1, {**evil, "big": 2**60})
    assert [(d["path"], d["validator"]) for d in err.details] == [("/slug", "pattern")]
    catalog.validate("slugged", 1, {"slug": "aaaa"})


def test_user_kind_patterns_follow_json_schemas_dialect_not_pythons():
    # ECMA-262, like RE2: "$" ends the text (Python's also matches before a final newline).
    catalog = SchemaCatalog()
    catalog.register(user_kind("tagged", schema={"properties": {"t": {"pattern": "^[a-z]+$"}}}))
    catalog.validate("tagged", 1, {"t": "abc"})
    violation_of(catalog, "tagged", 1, {"t": "abc\n"})


@pytest.mark.parametrize(("schema", "reason"), [
    ({"properties": {"x": {"pattern": "(a)\\1"}}}, "cannot run in linear time"),
    ({"properties": {"x": {"pattern": "^(?=a)"}}}, "cannot run in linear time"),
    ({"$defs": {"d": {"pattern": "(?<!x)y"}}}, "cannot run in linear time"),
    ({"patternProperties": {"^x-": {"type": "string"}}}, "propertyNames"),
])
def test_user_kinds_whose_regexes_could_backtrack_are_refused(schema, reason):
    catalog = SchemaCatalog()
    with pytest.raises(ValidationError, match=reason):
        catalog.register(user_kind(schema={"type": "object", **schema}))
    with pytest.raises(UnknownKind):
        catalog.get("eval-result")
