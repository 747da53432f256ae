"""The bridge's OpenAPI 3.1 document (``GET /v1/openapi.json``).

One source of truth: the request-body schemas below are also what the
bridge validates bodies with (``request_validator``), and the tests check
real responses against the response schemas, so the document cannot drift
from the code without a test failing. Schemas are JSON Schema 2020-12 (the
dialect of OpenAPI 3.1). Name patterns come from ``protocol/names.py``.
"""

from __future__ import annotations

import copy
import json
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import jsonschema
import jsonschema_rs
import msgspec
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from registrygrid.blobs import bundles as asset_bundles
from registrygrid.blobs.blobs import BlobLimits
from registrygrid.blobs.metadata import Extracted
from registrygrid.blobs.presign import MAX_EXPIRES_S
from registrygrid.blobs.presign import PARAMS as PRESIGN_PARAMS
from registrygrid.blobs.ranges import MAX_RANGES
from registrygrid.blobs.uploads import MEDIA_TYPE_PATTERN, UploadLimits
from registrygrid.blobs.zipfiles import DEFAULT_LIMITS as ZIP_LIMITS
from registrygrid.dispute_views import STATUSES as DISPUTE_STATUSES
from registrygrid.engine.registries import WRITE_POLICIES
from registrygrid.formats import ard, mcp, mcp_registry
from registrygrid.node.follow import FOLLOW_INTERVAL_S
from registrygrid.protocol import limits, names
from registrygrid.protocol.blob_exchange import MAX_CHUNK as BLOB_RANGE_BYTES
from registrygrid.record import record_json_schema
from registrygrid.schemas.catalog import closest, rust_reads_as_python
from registrygrid.search import query as search_query
from registrygrid.search import views as saved_views
from registrygrid.storage import idempotency
from registrygrid.storage import tokens as stored_tokens
from registrygrid.storage.tokens import MAX_LIFETIME_S, ROLES

SPEC_URI = "urn:registrygrid:bridge:openapi"
API_VERSION = "1.0.0"
# Bodies are capped at 1 MiB: a record's fields are capped at 128 KiB
# encoded (protocol/limits.py), and a JSON body of such a record, pretty
# printed with tags and links, stays far below 1 MiB; nothing else the API
# takes is bigger. aiohttp's own default client_max_size is also 1 MiB.
MAX_BODY_BYTES = 1024 * 1024


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


STRING = {"type": "string"}
INT = {"type": "integer"}
# Sequences and counts: the bridge reads a since= as a signed 64-bit integer (app.py q_int).
SEQ = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
HLC = {"type": "array", "items": INT, "minItems": 2, "maxItems": 2,
       "description": "hybrid logical clock [wall ms, counter]"}
REGISTRY_NAME = {"type": "string", "pattern": names.REGISTRY_NAME.pattern}
RECORD_ID = {"type": "string", "pattern": names.RECORD_ID.pattern}
KIND_NAME = {"type": "string", "pattern": names.KIND_NAME.pattern}
TAG = {"type": "string", "pattern": names.TAG.pattern}
TAGS = {"type": "array", "items": TAG, "maxItems": limits.MAX_TAGS}
TOKEN_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{12}$"}
# An org's or a node's key: a did:key of an Ed25519 key (identity/keys.py
# public_key_from_did refuses every other codec). Its multibase text is "z"
# and the base58btc of 0xed01 + 32 bytes: always "6Mk" and 44 more characters.
# Not every such text is in range (one below "6MkeTG3b" or above
# "6MkwgaR6" decodes to another codec): the format names that check, which
# no short pattern states.
DID_KEY = {"type": "string", "pattern": "^did:key:z6Mk[1-9A-HJ-NP-Za-km-z]{44}$", "format": "did-key-ed25519",
           "description": "did:key of an Ed25519 public key (multicodec ed25519-pub)"}
# A dispute's id: "dispute-" and the base32 of 20 bytes of a SHA-256
# (crdt/resolver.py dispute_id, crdt/disputes.py equivocation_id); the
# pattern of builtin/dispute-resolution.v1.json.
DISPUTE_ID = {"type": "string", "pattern": "^dispute-[a-z2-7]{32}$"}
# An audit entry's target naming a record, as the engine and the bridge write it.
RECORD_TARGET = {"type": "string", "pattern": "^" + names.REGISTRY_NAME.pattern[1:-1] + "/"
                 + names.RECORD_ID.pattern[1:-1] + "$", "description": "REGISTRY/ID"}
# A libp2p peer ID in base58, the form the peer table keys peers by. The
# libp2p peer-ids spec inlines keys of at most 42 bytes (an identity
# multihash: 12D3KooW... for Ed25519) and hashes longer ones (SHA-256:
# Qm...), so an ID is at most 44 bytes, 61 base58 characters. The pattern
# bounds the text; node/multiaddrs.py peer_id_problem parses it for real.
PEER_ID = {"type": "string", "pattern": "^[1-9A-HJ-NP-Za-km-z]{1,64}$",
           "description": "a libp2p peer ID, like 12D3KooW..."}
# Every cursor the bridge hands out is base64url, unpadded, of what it resumes
# after: the listings' (sdk.py), the MCP Registry API's (mcp_registry.py), a
# search's and a view's pages' (search/query.py). Opaque: only a cursor the
# node issued resumes a walk; any other is refused (422).
CURSOR_PATTERN = "^[A-Za-z0-9_-]+$"
# Peers one deny or allow names. A partition cuts a node off from every node
# of the other side; 256 covers a federation of a few hundred nodes in one
# call (node/peers.py plans for tens to hundreds; the simulator's real-node
# mode runs at most 50), and bounds one request's work (one disconnect each).
MAX_PEER_IDS = 256
LOCAL_TOKEN = {"type": "boolean", "description": "the running node's own CLI credential (the admin token in "
                                                 "HOME/bridge.json): it cannot be revoked through the API (409) "
                                                 "and is revoked when the node stops"}


def _obj(props: dict[str, Any], required: list[str] | None = None, *, closed: bool = True,
         description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props,
                           "required": list(props) if required is None else required}
    if closed:
        out["additionalProperties"] = False
    if description:
        out["description"] = description
    return out


# The components that builtin/registry.v1.json's $defs become here.
_DESCRIPTOR_DEFS = {"conflict_rule": "ConflictRule", "endpoint": "RegistryEndpoint",
                    "description": "RegistryDescriptionText"}


def _descriptor_schemas() -> dict[str, Any]:
    """The registry descriptor (RegistryDescriptor), ConflictPolicy, and the
    $defs they refer to, as OpenAPI components, taken from
    builtin/registry.v1.json, the descriptor's one definition."""
    text = resources.files("registrygrid.schemas").joinpath("builtin/registry.v1.json").read_text("utf-8")
    for name, component in _DESCRIPTOR_DEFS.items():
        text = text.replace(f'"#/$defs/{name}"', f'"#/components/schemas/{component}"')
    descriptor = json.loads(text)
    defs = descriptor.pop("$defs")
    for key in ("$schema", "$id"):
        descriptor.pop(key, None)
    return {"RegistryDescriptor": descriptor, "ConflictPolicy": descriptor["properties"]["conflict_policy"],
            **{component: defs[name] for name, component in _DESCRIPTOR_DEFS.items()}}


def _search_query_schema() -> dict[str, Any]:
    """The query language's JSON form (search/query.py, its one parser).

    Every member states its type and bounds, so that a schema-valid query
    is one the parser takes, with one exception: the filter tree
    (SearchFilter, also in boosts) stays an object checked by the parser,
    which names the bad part with its JSON pointer (``/filter/and/1/lt``);
    a schema of the recursive, field-typed tree could not (a failed oneOf
    points at the whole node). Members the parser takes as null accept null."""
    q = search_query
    sortable = {"enum": list(q.SORTABLE)}
    sort_key = {"anyOf": [sortable, {"type": "object", "required": ["field"], "propertyNames": {"minLength": 1},
                                     "properties": {"field": sortable, "order": {"enum": ["asc", "desc"]}},
                                     "additionalProperties": _ref("JsonValue"),
                                     # relevance: best first only
                                     "if": {"properties": {"field": {"const": "relevance"}}},
                                     "then": {"properties": {"order": {"const": "desc"}}}}]}
    relevance = {"anyOf": [{"const": "relevance"}, {"type": "object", "properties": {"field": {"const": "relevance"}}}]}
    # What ranks by the text needs a text with a word in it (a text without one searches for nothing).
    needs_text = {"anyOf": [
        {"required": ["mode"], "properties": {"mode": {"enum": [m for m in q.MODES if m != "text"]}}},
        {"required": ["sort"], "properties": {"sort": {"anyOf": [relevance, {"type": "array", "items": relevance}]}}}]}
    return {"type": "object", "additionalProperties": False,
            "if": needs_text, "then": {"required": ["text"], "properties": {"text": {"type": "string",
                                                                                      "pattern": "\\w"}}},
            "description": "a search query: every member is optional ({} lists the newest records); unknown "
                           "members are refused (422)", "properties": {
        "text": {"type": ["string", "null"], "maxLength": q.MAX_TEXT, "description": f"full text, at most "
                 f"{q.MAX_TEXT} characters: BM25 over the name (x3), the description (x1.5) and every string of the "
                 "record; \"quoted words\" form a phrase; nothing in it is query syntax"},
        "mode": {"enum": list(q.MODES), "description": "how text is matched: text (BM25, the default), semantic "
                 "(embeddings: records near it in meaning) or hybrid (both, fused by reciprocal rank); semantic and "
                 "hybrid need text with a word in it, and the semantic extra (501 without it)"},
        "filter": {"anyOf": [_ref("SearchFilter"), {"type": "null"}]},
        "registries": {"type": "array", "items": REGISTRY_NAME, "description": "only these registries (default: "
                       "every registry the index holds; a token limited to one registry searches that one only)"},
        "sort": {"anyOf": [{"type": "null"}, sort_key, {"type": "array", "items": sort_key, "minItems": 1,
                                                        "maxItems": 1}],
                 "description": (
            "one key: a field name or {\"field\": F, \"order\": \"asc\"|\"desc\"}, F one of "
            f"{', '.join(q.SORTABLE)} (keywords in UTF-8 byte order, ascending by default); default relevance with "
            "text, else updated_at desc; relevance only with text, desc; ties in a fixed order (a hash of registry "
            "and id)")},
        "facets": {"type": "array", "items": {"enum": list(q.FACETABLE)}, "maxItems": q.MAX_FACETS,
                   "description": "the count of each value over all matches"},
        "limit": {"type": "integer", "minimum": 1, "maximum": q.MAX_LIMIT, "description": "hits per page "
                  "(default 20)"},
        "cursor": {"anyOf": [{"type": "string", "pattern": CURSOR_PATTERN}, {"type": "null"}],
                   "description": "the next_cursor of the previous page of the same query (opaque); "
                                  f"relevance-ordered pages reach {q.MAX_RELEVANCE_WINDOW} hits deep"},
        "weights": {"anyOf": [{"type": "null"}, _obj({
            name: {"type": "number", "minimum": 0, "maximum": 100} for name in ("text", "freshness", "trust")},
            required=[])],
                    "description": f"they weigh a relevance score (default text {q.Weights.text:g}, freshness "
                                   f"{q.Weights.freshness:g}, trust {q.Weights.trust:g})"},
        "boosts": {"type": ["array", "null"], "maxItems": 16, "items": _obj({
            "filter": _ref("SearchFilter"), "factor": {"type": "number", "exclusiveMinimum": 0, "maximum": 100}}),
                   "description": "a hit matching the filter has its relevance score multiplied by the factor"},
        "explain": {"type": "boolean", "description": "each hit says the components of its score"},
        "federated": {"anyOf": [{"type": ["boolean", "null"]}, _obj({
            "deadline_ms": {"type": "integer", "minimum": 1, "maximum": q.MAX_DEADLINE_MS}}, required=[])],
                      "description": (
            f"true or {{\"deadline_ms\": N}} (default {q.DEFAULT_DEADLINE_MS}): ask the federation's connected "
            "peers and a provider of each followed registry too, each over libp2p with that deadline; a peer that "
            "has not answered by then is reported (sources[].status timeout), not waited for. Every remote hit is "
            "rebuilt from its signed changes and judged by this node's trust before it is shown; hits are merged "
            "by record (relevance by reciprocal rank fusion), and the answer is one page (no cursor)")},
    }, "examples": [{"text": "summarize \"legal contracts\"",
                     "filter": {"and": [{"field": "kind", "eq": "function"}, {"field": "price", "lt": 0.01}]},
                     "facets": ["region"], "limit": 20}]}


# ---- asset content (registrygrid/blobs; node/bridge/asset_routes.py serves it)
UPLOAD_LIMITS = UploadLimits()
BLOB_LIMITS = BlobLimits()
# A blob's CID as the bridge writes it (blobs/digest.py cid_text): CIDv1, raw,
# sha2-256, multibase base32 in lower case, so "b" and 58 characters. Its
# prefix (0x01 0x55 0x12 0x20) fixes "afkrei" and the top two bits of the next
# character (a to h); the last character holds 3 bits and 2 zero padding bits.
BLOB_CID = {"type": "string", "pattern": "^bafkrei[a-h][a-z2-7]{50}[aeimquy4]$",
            "description": "a blob's CID: CIDv1 (raw, sha2-256) of its SHA-256, base32 ('bafkrei...')"}
UPLOAD_ID = {"type": "string", "pattern": "^up_[0-9a-f]{32}$", "description": "an upload session's id"}
SHA256_HEX = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "hex SHA-256"}
MD5_HEX = {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "hex MD5"}
# A media type as RFC 9110 8.3.1 writes it (blobs/uploads.py checks the same
# pattern): no control character reaches a header.
MEDIA_TYPE = {"type": "string", "maxLength": 255, "pattern": MEDIA_TYPE_PATTERN}
# An IPv4 address or network (CIDR), or an IPv6 address: what a presigned URL
# may be limited to (blobs/presign.py reads it with ipaddress.ip_network,
# strict=False, which also takes an IPv6 network).
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IP_LIMIT = {"anyOf": [{"type": "string", "pattern": f"^{_OCTET}(\\.{_OCTET}){{3}}(/(3[0-2]|[12]?[0-9]))?$"},
                      {"type": "string", "format": "ipv6"}, {"type": "null"}],
            "description": "only requests from this address or network (10.0.0.0/8) may use the URL"}
EXPIRES_IN = {"type": "integer", "minimum": 1, "maximum": MAX_EXPIRES_S,
              "description": f"seconds the URL lives (default 3600; at most {MAX_EXPIRES_S}, as S3's SigV4)"}
# A path inside a ZIP (blobs/zipfiles.py check_name): relative, no '..', '.'
# or empty segment, no backslash or control character, at most
# max_segment_bytes a segment and max_name_bytes in all, in UTF-8. A schema
# counts characters, not bytes: the bounds below are the characters that
# always fit (4 bytes a character at most), so a name the schema takes is
# one the node takes.
_ZIP_CHAR = "[^/\\\\\\x00-\\x1f\\x7f]"
_ZIP_SEGMENT = f"{_ZIP_CHAR}{{1,{ZIP_LIMITS.max_segment_bytes // 4}}}"
ZIP_PATH = {"type": "string", "maxLength": ZIP_LIMITS.max_name_bytes // 4,
            "pattern": f"^(?![A-Za-z]:)(?!\\.\\.?(/|$))(?!.*/\\.\\.?(/|$)){_ZIP_SEGMENT}(/{_ZIP_SEGMENT})*/?$",
            "description": f"a path inside the archive: relative, '/' between segments (a trailing one names a "
                           f"directory), no '..', '.' or empty segment, no backslash or control character; at "
                           f"most {ZIP_LIMITS.max_segment_bytes} UTF-8 bytes a segment and "
                           f"{ZIP_LIMITS.max_name_bytes} in all"}
# A presigning key's id (blobs/presign.py PresignKeys.rotate: "k" and 4 random bytes in hex).
PRESIGN_KID = {"type": "string", "pattern": "^k[0-9a-f]{8}$"}
# Content-MD5 (RFC 1864): base64 of the 16-byte digest, as S3 clients send it.
CONTENT_MD5 = {"type": "string", "pattern": "^[A-Za-z0-9+/]{21}[AQgw]==$"}


def _asset_metadata_schema() -> dict[str, Any]:
    """What a blob's bytes say of themselves: blobs/metadata.py's Extracted,
    its one definition, less its empty members (blobs/service.py keeps only
    the ones the bytes filled), or why they could not be read."""
    (_, ), components = msgspec.json.schema_components([Extracted], ref_template="#/components/schemas/{name}")
    schema = components["Extracted"]
    schema.pop("title", None)
    for prop in schema["properties"].values():
        prop.pop("default", None)
    schema["properties"]["unreadable"] = {"type": "string", "description": "CODE: message, when a header of "
                                          "the bytes could not be read (the blob is stored all the same)"}
    return {**schema, "additionalProperties": False, "description": (
        "what the bytes say of themselves (safetensors, GGUF, a ZIP's listing, a model card's front matter), "
        "read from their head when they were stored; members the bytes do not fill are absent")}


def _asset_schemas() -> dict[str, Any]:
    up = UPLOAD_LIMITS
    part = {"part": {"type": "integer", "minimum": 1, "maximum": up.max_parts}, "size": SEQ,
            "sha256": SHA256_HEX, "md5": {**_nullable(MD5_HEX), "description": "null unless it came with a "
                                                                            "Content-MD5 (MD5 is computed only to "
                                                                            "check one)"}}
    blob = {
        "cid": BLOB_CID, "size": SEQ, "sha256": SHA256_HEX,
        "md5": {**_nullable(MD5_HEX), "description": "null unless its upload declared one (MD5 is computed only "
                                                     "to check one)"},
        "content_type": STRING, "created_at_ms": INT,
        "retain_until_ms": {**_nullable(INT), "description": "ms: no purge before then (null: none)"},
        "holds": {"type": "object", "additionalProperties": STRING,
                  "description": "legal holds by name, each with its reason and who set it"},
        "meta": _ref("AssetMetadata"),
        "checks": {**STRING, "description": "the asset checks' verdicts when the bytes were stored"},
    }
    session = {
        "id": UPLOAD_ID, "state": {"enum": ["open", "complete", "cancelled"]},
        "size": {**SEQ, "description": "the whole file's bytes, as declared"},
        "part_size": {"type": "integer", "minimum": 1, "description": "bytes of every part but the last"},
        "parts": {"type": "integer", "minimum": 1, "maximum": up.max_parts, "description": "how many parts"},
        "content_type": STRING, "name": STRING, "sha256": {**_nullable(SHA256_HEX), "description": "as declared"},
        "received_bytes": SEQ,
        "received": {"type": "array", "items": _obj(part), "description": "the parts the node holds, by number"},
        "missing": {"type": "array", "items": part["part"], "description": "the parts still to send (an open "
                    "session; empty otherwise): resume from here"},
        "expires_at_ms": {**INT, "description": "ms: an open session untouched until then expires (its parts "
                          "are deleted); every part and heartbeat renews it"},
        "cid": {**_nullable(BLOB_CID), "description": "the blob's CID, once complete"},
        "deduplicated": {"type": "boolean", "description": "complete at creation with no bytes sent: the node "
                         "held a blob of the declared sha256 and size already"},
    }
    return {
        "UploadCreate": _obj({
            "size": {"type": "integer", "minimum": 0, "maximum": BLOB_LIMITS.max_blob_bytes,
                     "description": f"the whole file's bytes (the node's assets.max_blob_bytes caps it: "
                                    f"{BLOB_LIMITS.max_blob_bytes} by default, 413 beyond)"},
            "sha256": {**_nullable(SHA256_HEX), "description": "the whole file's, checked at finalize; a blob "
                       "this node holds with it (and the size) completes the session at once"},
            "md5": {**_nullable(MD5_HEX), "description": "the whole file's, checked at finalize"},
            "content_type": {"anyOf": [MEDIA_TYPE, {"const": ""}, {"type": "null"}],
                             "description": "the blob's media type (default application/octet-stream)"},
            "part_size": {"anyOf": [{"type": "integer", "minimum": up.min_part_bytes,
                                     "maximum": up.max_part_bytes}, {"type": "null"}],
                          "description": f"bytes a part (default: the node's assets.part_bytes, "
                                         f"{up.default_part_bytes}); raised when size would need more "
                                         f"than {up.max_parts} parts"},
            "name": {"type": ["string", "null"], "maxLength": 1024, "pattern": "^[^\\x00-\\x1f\\x7f]*$",
                     "description": "the file's name, no control characters: what reading the bytes' metadata "
                                    "and the asset checks go by (model.safetensors, README.md)"},
            "presign": {"anyOf": [{"type": ["boolean", "null"]}, _ref("PresignOptions")],
                        "description": "true or an object ({}: the defaults): the answer lists a presigned PUT "
                                       "URL for each part (part_urls); false or null: none"},
        }, required=["size"], description="an upload to create: the whole file, declared"),
        "PresignOptions": _obj({"expires_in": EXPIRES_IN, "ip": IP_LIMIT}, required=[]),
        "UploadSession": _obj({**session, "part_urls": {
            "type": "array", "items": STRING, "description": "presigned PUT URLs, one a part in order (creation "
            "with presign only): paths with their query, to resolve against the bridge's URL"}},
            required=list(session), description="an upload session"),
        "UploadFinalized": _obj({**session, "meta": _ref("AssetMetadata"), "checks": {
            **STRING, "description": "the asset checks' verdicts on the bytes, one line ('no checks' when none "
                                     "apply)"}}, description="a complete upload and what its blob's bytes say"),
        "UploadPart": _obj(part, description="a part the node holds now"),
        "PartUrls": _obj({"part_urls": {"type": "array", "items": STRING, "minItems": 1, "description": (
            "presigned PUT URLs, one a part in order: paths with their query, to resolve against the bridge's "
            "URL")}}),
        "PresignedUrl": _obj({"url": {**STRING, "description": "a path with its query (rg-*), to resolve against "
                                                               "the bridge's URL"},
                              "expires_in": EXPIRES_IN}),
        "AssetMetadata": _asset_metadata_schema(),
        "BlobMeta": _obj(blob, description="what the node knows of a blob"),
        "BlobFetched": _obj({
            **blob, "fetched": {"type": "boolean", "description": "false: the node held it already"},
            "providers": {"type": "array", "items": PEER_ID, "description": "the members it came from (fetched "
                                                                           "only)"},
        }, required=[*blob, "fetched"], description="a blob fetched from the federation's members"),
        "PresignKeys": _obj({"kid": {**PRESIGN_KID, "description": "the new signing key's"},
                             "keys": {"type": "array", "items": PRESIGN_KID, "minItems": 1,
                                      "description": "every key the node keeps, newest first"}}),
        "BlobPurged": _obj({"cid": BLOB_CID, "purged": {"const": True}, "size": SEQ}),
        "RetentionSet": _obj({"until_ms": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1,
                                           "description": "ms since the epoch"}}),
        "HoldSet": _obj({"reason": {"type": "string", "minLength": 1, "maxLength": 1000,
                                    "description": "why the blob is held"}}),
        "ZipManifest": _obj({
            "cid": BLOB_CID, "archive_size": {**SEQ, "description": "bytes read, central directory included"},
            "entry_count": SEQ, "total_size": {**SEQ, "description": "every entry expanded"},
            "top_level": {"type": "array", "items": STRING, "description": "the first segment of every name, "
                          "sorted; directories end in '/'"},
            "entries": {"type": "array", "description": "in archive order", "items": _obj({
                "name": STRING, "size": {**SEQ, "description": "expanded"}, "compressed_size": SEQ,
                "crc32": {"type": "string", "pattern": "^[0-9a-f]{8}$"}, "sha256": SHA256_HEX,
                "is_dir": {"type": "boolean"}})},
        }, description="a stored ZIP's listing, checked against its central directory"),
        "BundleRequest": _obj({
            "name": {"anyOf": [{"type": "string", "maxLength": 255,
                                "pattern": '^[^/"\\\\\\x00-\\x1f\\x7f]*\\.zip$'}, {"const": ""}, {"type": "null"}],
                     "description": "the download's file name (Content-Disposition; default bundle.zip)"},
            "members": {"type": "array", "minItems": 1, "maxItems": asset_bundles.MAX_MEMBERS,
                        "items": _ref("BundleMember"),
                        "description": "the archive's files, in order; their names differ (422 otherwise)"},
        }, required=["members"]),
        "BundleMember": {"oneOf": [
            _obj({"name": ZIP_PATH, "cid": BLOB_CID, "entry": {
                "type": "string", "minLength": 1, "maxLength": ZIP_LIMITS.max_name_bytes,
                "description": "an entry of the blob, a stored ZIP: that entry alone"}}, required=["name", "cid"]),
            _obj({"name": ZIP_PATH, "url": {
                "type": "string", "maxLength": 2048, "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][!-~]*)?$",
                "description": "fetched while the bundle is sent, from a host in the node's assets.bundle_hosts "
                               "only (none by default: 403)"}}),
        ], "description": "a blob (cid), an entry of a stored ZIP (cid and entry), or a URL"},
    }


SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({
        "code": {"type": "string", "description": "stable machine-readable code (registrygrid.errors)"},
        "message": STRING,
        "details": {"description": "structured context, e.g. every failing path of a schema violation"},
        "trace_id": {"type": "string", "description": "also in the X-Trace-Id header"},
    })}),
    # "Record" and "Link": generated from registrygrid/record.py, their one definition.
    **record_json_schema(),
    "WriteResult": _obj({
        "status": {"enum": ["created", "updated", "deleted", "unchanged"]},
        "registry": REGISTRY_NAME, "id": RECORD_ID, "change_id": _nullable(STRING), "feed_seq": _nullable(SEQ),
        "record": _nullable(_ref("Record")),
    }),
    "PolicyDecision": _obj({
        "subject": STRING, "action": STRING, "registry": STRING, "record": _nullable(STRING),
        "fields": {"type": "array", "items": STRING}, "allowed": {"type": "boolean"},
        "rule": {**STRING, "description": "the rule that decides: 'builtin:...' or 'POLICY-ID#RULE-ID'"},
        "reason": STRING,
    }, required=["subject", "action", "registry", "record", "fields", "allowed", "rule", "reason"]),
    "Page": _obj({"items": {"type": "array", "items": _ref("Record")}, "next_cursor": _nullable(STRING)}),
    "HistoryEntry": _obj({"feed_seq": SEQ, "change_id": STRING, "op": {"enum": ["create", "update", "delete"]},
                          "author": STRING, "seq": INT, "hlc": HLC, "schema": INT, "size": INT}),
    "History": _obj({"history": {"type": "array", "items": _ref("HistoryEntry")}}),
    "FeedEvent": _obj({"seq": SEQ, "type": {"enum": ["created", "updated", "deleted", "erased"],
                                            "description": "erased: the record's whole history was erased "
                                                           "(change and author are the erasure notice's)"},
                       "registry": REGISTRY_NAME,
                       "record": RECORD_ID, "kind": KIND_NAME, "change": STRING, "author": STRING, "hlc": HLC,
                       "origin": {"type": "string", "description": "'local' or the peer it came from"}}),
    "Changes": _obj({"events": {"type": "array", "items": _ref("FeedEvent")},
                     "next": {**SEQ, "description": "cursor for the next call (since=next)"},
                     "head": {**SEQ, "description": "newest feed sequence of the node"}}),
    "Registry": _obj({
        "name": REGISTRY_NAME, "kinds": {"type": "array", "items": KIND_NAME}, "owner": _nullable(STRING),
        "write_policy": STRING, "conflict_policy": _ref("ConflictPolicy"), "replication": STRING,
        "description": STRING,
        "builtin": {"type": "boolean"}, "records": {**SEQ, "description": "live records (describe only)"},
        "readers": {"type": "array", "items": STRING,
                    "description": "orgs besides the owner that may read a private registry"},
        "limits": _obj({"max_record_bytes": INT, "max_changes_per_second_per_org": _nullable({"type": "number"})},
                       description="caps the node's guard enforces on changes from peers (docs/federation.md)"),
    }, required=["name", "kinds", "owner", "write_policy", "conflict_policy", "replication", "description",
                 "builtin"]),
    "Registries": _obj({"registries": {"type": "array", "items": _ref("Registry")}}),
    "Kind": _obj({"name": KIND_NAME, "version": INT, "registry": STRING, "builtin": {"type": "boolean"},
                  "description": STRING, "schema": {"type": "object"},
                  "versions": {"type": "array", "items": INT}},
                 required=["name", "version", "registry", "builtin", "description", "schema"]),
    "Kinds": _obj({"kinds": {"type": "array", "items": _ref("Kind")}}),
    "AuditEntry": _obj({"seq": SEQ, "at_ms": INT, "actor": STRING, "action": STRING, "target": STRING,
                        "reason": STRING, "before": _nullable(STRING), "after": _nullable(STRING),
                        "change": _nullable(STRING), "prev": STRING, "hash": STRING}),
    "Audit": _obj({"entries": {"type": "array", "items": _ref("AuditEntry")}}),
    "AuditVerify": _obj({"entries": SEQ, "signed_heads": SEQ, "root": STRING}),
    "Identity": _obj({"did": STRING, "peer_id": STRING, "org": _nullable(STRING), "org_name": STRING,
                      "roles": {"type": "array", "items": STRING}, "delegation_expires": _nullable(INT)},
                     required=["did", "peer_id", "org"]),
    "Stats": {"type": "object", "additionalProperties": {"type": ["number", "integer"]},
              "properties": {"federation": {**STRING, "description": "the federation whose members' changes "
                                                                       "this store counts; \"-\" outside any"},
                             "federation_id": STRING},
              "required": ["federation", "federation_id"],
              "description": "store entry counts, sizes, feed head and engine counters, and the store's federation"},
    "Health": _obj({"status": {"enum": ["ok", "starting", "stopping"]}, "feed_head": SEQ}),
    "Token": _obj({"id": TOKEN_ID, "name": STRING, "role": {"enum": list(ROLES)}, "registry": _nullable(STRING),
                   "created_at": INT, "expires_at": _nullable(INT), "revoked_at": _nullable(INT),
                   "created_by": STRING, "local": LOCAL_TOKEN}),
    "TokenCreated": _obj({
        "id": TOKEN_ID, "name": STRING, "role": {"enum": list(ROLES)}, "registry": _nullable(STRING),
        "created_at": INT, "expires_at": _nullable(INT), "revoked_at": _nullable(INT), "created_by": STRING,
        "local": LOCAL_TOKEN,
        "token": {"type": "string", "description": "rgt_<id>.<secret>: shown once, never stored"},
    }),
    "Tokens": _obj({"tokens": {"type": "array", "items": _ref("Token")}}),
    **_descriptor_schemas(),
    # ---- the registry of registries (node/dht.py RegistryDirectory.resolve builds it)
    "RegistryResolution": _obj({
        "name": REGISTRY_NAME,
        "descriptor": {**_ref("RegistryDescriptor"),
                       "description": "the registry's record in grid.registries, as its owner signed it"},
        "owner": {**DID_KEY, "description": "the owner org"},
        "federations": {"type": "array", "items": STRING, "description": "ids of the federations that host it"},
        "version": {**HLC, "description": "clock of the descriptor's latest change"},
        "change_id": STRING,
        "claimed_at": {**INT, "description": "ms: the name's first claim, the registry's signed creation (the "
                                             "first claim holds a name; a received name keeps its giver's)"},
        "issued_at": {**INT, "description": "ms: when this copy was signed (each republish signs anew)"},
        "holder": {**DID_KEY, "description": "the org that holds the name: the owner, or, while the record is "
                                             "its former owner's pointer, the org it was given to"},
        "transfers": {"type": "array", "description": "the signed transfers of the name, from its first "
                                                      "claimant on, each checked",
                      "items": _obj({"from": DID_KEY, "to": DID_KEY, "at": {**INT, "description": "ms"}})},
        "verification": _obj({
            "signature": {"const": "valid", "description": "always: a record that fails its checks is "
                                                           "answered with its typed error instead"},
            "signer": {**DID_KEY, "description": "the key that signed: the owner org's, or one it delegated"},
            "authority": {"enum": ["owner", "delegated by the owner"]},
        }),
        "providers": {"type": "array", "description": "nodes that announced they host it",
                      "items": _obj({"peer_id": STRING, "addrs": {"type": "array", "items": STRING,
                                                                   "description": "libp2p multiaddrs"}})},
        "source": {"enum": ["dht", "cache"], "description": "cache: this node resolved it within the last "
                                                           "minute (fresh=true asks the DHT)"},
    }, description="a registry's descriptor as the DHT holds it, checked as its own evidence, and its providers"),
    # ---- reads across federations (node/remote_read.py RemoteReader.read builds it)
    "RemoteRead": _obj({
        "registry": REGISTRY_NAME,
        "provider": {**STRING, "description": "peer id of the node whose answer passed every check"},
        "owner": {**DID_KEY, "description": "the owner org, as its descriptor in the DHT names it"},
        "verified": _obj({
            "changes": {**SEQ, "description": "changes of the answer that applied in the scratch store"},
            "descriptor": {**STRING, "description": "the descriptor sent is the one its owner signed into the DHT"},
            "signatures": {**STRING, "description": "every change's signature, chain, delegation, ownership "
                                                    "and schema was checked"},
        }),
        "records": {"type": "array", "items": _ref("Record"),
                    "description": "its live records in id order, or the one asked for (record=ID)"},
    }, description="a public registry of another federation, read from one provider and verified in a scratch "
                   "store (nothing of it is kept on this node)"),
    # ---- follows (node/follow.py: FollowStatus and Mirror.describe build it)
    "FollowStatus": _obj({
        "registry": REGISTRY_NAME,
        "owner": {**DID_KEY, "description": "the owner org, as its descriptor in the DHT named it when followed"},
        "followed_at": {**INT, "description": "ms"},
        "last_sync_at": {**_nullable(INT), "description": "ms: the last sync that succeeded (null: none since "
                                                           "the node started)"},
        "last_provider": {**_nullable(STRING), "description": "peer id of the provider of that sync"},
        "last_error": {**_nullable(STRING), "description": "why the last sync failed (null: it succeeded); the "
                                                          "copy keeps what it verified and retries"},
        "synced_changes": {**SEQ, "description": "changes applied since the node started"},
        "lying_providers": {**SEQ, "description": "answers refused since the node started because a change in "
                                                  "them failed its checks"},
        "records": {**SEQ, "description": "live records in the copy"},
        "descriptor": {**_ref("Registry"), "description": "the registry's descriptor, as the copy holds it"},
    }, description="a public registry of another federation that this node keeps a verified copy of"),
    "Follows": _obj({"follows": {"type": "array", "items": _ref("FollowStatus"),
                                 "description": "in registry name order"}}),
    "Unfollowed": _obj({"registry": REGISTRY_NAME, "unfollowed": {"const": True}}),
    # ---- peer controls (node/federation.py deny and allow; runtime.py builds the answers)
    # Any JSON value a body may carry inside an open object: the bridge refuses an
    # empty object key at any depth (app.py _shape_problem: Automerge refuses
    # one deep in the write path), and bodies nest at most MAX_BODY_DEPTH
    # levels (a record's fields, limits.MAX_NESTING, and the request's own).
    "JsonValue": {"type": ["object", "array", "string", "number", "boolean", "null"],
                  "propertyNames": {"minLength": 1}, "additionalProperties": _ref("JsonValue"),
                  "items": _ref("JsonValue"),
                  "description": f"any JSON value whose objects have no empty key, nesting at most "
                                 f"{limits.MAX_NESTING} levels"},
    "JsonObject": {"type": "object", "propertyNames": {"minLength": 1}, "additionalProperties": _ref("JsonValue"),
                   "description": "a JSON object with no empty key at any depth"},
    "PeerIds": _obj({"peers": {"type": "array", "items": PEER_ID, "minItems": 1, "maxItems": MAX_PEER_IDS,
                               "description": "peer IDs (a repeated one counts once)"}}),
    "PeerStatus": _obj({
        "peer_id": {**PEER_ID, "description": "this node's own"},
        "connected": {"type": "array", "items": PEER_ID, "description": "peers with a libp2p connection now"},
        "denied": {"type": "array", "items": PEER_ID,
                   "description": "peers an operator denied (POST /v1/peers/deny) and did not allow again"},
    }),
    "PeersDenied": _obj({
        "denied": {"type": "array", "items": PEER_ID, "description": "the peers denied, each once"},
        "connected": {"type": "array", "items": PEER_ID,
                      "description": "the peers still connected once the denied ones were cut off"},
    }),
    "PeersAllowed": _obj({"allowed": {"type": "array", "items": PEER_ID,
                                      "description": "the peers allowed, each once"}}),
    # ---- disputes (registrygrid/dispute_views.py builds them; docs/conflicts.md)
    "ConflictWrite": _obj({
        "change": _nullable(STRING), "author": _nullable(STRING), "hlc": _nullable(HLC),
        "value": {"description": "the value the change wrote (null when removed)"},
        "removed": {"type": "boolean", "description": "the change removed the field"},
    }, description="one of the concurrent writes of a disputed field"),
    "DisputeResolution": _obj({
        "id": RECORD_ID, "change": STRING, "by": _nullable(STRING), "at": _nullable(INT), "hlc": HLC,
        "outcome": {"enum": ["value", "quarantine"]}, "value": {"description": "the value decided (outcome value)"},
        "removed": {"type": "boolean"}, "note": STRING,
        "counts": {"type": "boolean", "description": "its author may decide the dispute (a federation admin, the "
                                                     "owner org of the registry or of the record, or for an "
                                                     "equivocation the key's own org); the latest that counts "
                                                     "wins"},
    }, description="a signed resolution filed in grid.disputes"),
    "FieldDispute": _obj({
        "id": DISPUTE_ID, "type": {"const": "field"}, "status": {"enum": ["disputed", "resolved"]},
        "registry": REGISTRY_NAME, "record": RECORD_ID,
        "path": {**STRING, "description": "JSON Pointer into the record, e.g. /fields/price"},
        "rule": STRING, "shows": {"description": "what the record shows now (null when removed)"},
        "removed": {"type": "boolean"}, "resolved_by": _nullable(STRING),
        "writes": {"type": "array", "items": _ref("ConflictWrite")},
        "registry_owner": _nullable(STRING), "record_owner": STRING,
        "was": {"description": "the field before the competing writes (detail only)"},
        "diff": {"type": "array", "items": STRING, "description": "was -> each new value, who, when (detail only)"},
        "resolutions": {"type": "array", "items": _ref("DisputeResolution"), "description": "oldest first "
                        "(detail only)"},
    }, required=["id", "type", "status", "registry", "record", "path", "rule", "shows", "removed", "resolved_by",
                 "writes", "registry_owner", "record_owner"],
        description="a field under the manual conflict rule that concurrent writes set differently"),
    "EquivocationChange": _obj({"change": STRING, "author": STRING, "registry": REGISTRY_NAME, "record": RECORD_ID,
                                "op": STRING, "seq": INT, "hlc": HLC, "kind": _nullable(STRING), "size": INT}),
    "Equivocation": _obj({
        "id": DISPUTE_ID, "type": {"const": "equivocation"}, "status": {"enum": ["quarantined", "resolved"]},
        "author": STRING, "author_orgs": {"type": "array", "items": STRING}, "registry": REGISTRY_NAME,
        "seq": INT, "reported_by": _nullable(STRING), "reported_at": _nullable(INT),
        "quarantine": {**STRING, "description": "whose changes no longer count"},
        "changes": {"type": "array", "items": _ref("EquivocationChange"), "description": "the two signed changes: "
                    "both with sequence seq, or one with it and the next, whose prev names another change "
                    "(detail only)"},
        "envelopes": {"type": "array", "items": STRING, "description": "both envelopes, base64 (detail only)"},
        "why": {**STRING, "description": "why the two changes prove an equivocation (detail only)"},
        "error": {**STRING, "description": "why the evidence could not be read back (detail only)"},
        "resolutions": {"type": "array", "items": _ref("DisputeResolution"), "description": "oldest first "
                        "(detail only)"},
    }, required=["id", "type", "status", "author", "author_orgs", "registry", "seq", "reported_by", "reported_at",
                 "quarantine"],
        description="a key that signed two different changes with one (registry, sequence)"),
    "Dispute": {"oneOf": [_ref("FieldDispute"), _ref("Equivocation")]},
    "Disputes": _obj({"items": {"type": "array", "items": _ref("Dispute")}}),
    "Erasures": _obj({"items": {"type": "array", "items": _obj({
        "registry": REGISTRY_NAME, "record": RECORD_ID,
        "notice": {"type": "string", "description": "the erasure notice's id in grid.erasures"},
        "state": {"enum": ["erased", "waiting", "refused", "void"],
                  "description": "erased here; waiting: the record never reached this node (its changes are "
                                 "erased as they arrive); refused: the notice's signer may not erase it; "
                                 "void: erased here, then the notice stopped counting (its signer's key was "
                                 "revoked before it): what it erased is taken again from peers that kept it"},
    }, required=["registry", "record", "notice", "state"])}}, required=["items"]),
    "ErasedPlaces": _obj({
        "items": {"type": "array", "items": _obj({
            "registry": REGISTRY_NAME,
            "author": {"type": "string", "description": "the did:key whose chain holds the places"},
            "first": {"type": "integer", "minimum": 1, "description": "the run's first sequence number"},
            "last": {"type": "integer", "minimum": 1, "description": "the run's last sequence number"},
            "warrant": {"enum": ["notice", "gone-at-peers", "past-revocation-cutoff"],
                        "description": "what vouches for the run: an erasure notice; a sync peer's word that "
                                       "no node kept those bytes; or its author's revocation (places past its "
                                       "cutoff)"},
            "notice": {"type": ["string", "null"], "description": "the notice's id in grid.erasures, when "
                                                                  "warrant is notice"},
            "linked": {"type": "integer", "minimum": 0,
                       "description": "how many of the run's places this node's chain of the author has linked"},
            "asked": {"type": "boolean",
                      "description": "whether this node asks its sync peers for the places' bytes (the notice "
                                     "stopped counting, or a peer said they are gone)"},
        }, required=["registry", "author", "first", "last", "warrant", "notice", "linked", "asked"])},
        "owed": {"type": "array", "description": "supplements this node owes: places it erased under a notice "
                 "but could not list yet (its key's delegation lapsed); empty for a registry-scoped token",
                 "items": _obj({
                     "notice": {"type": "string", "description": "the notice's id in grid.erasures"},
                     "places": {"type": "array", "items": _obj({
                         "author": {"type": "string"}, "seq": {"type": "integer", "minimum": 1},
                     }, required=["author", "seq"])},
                 }, required=["notice", "places"])},
    }, required=["items", "owed"]),
    # ---- search (registrygrid/search: query.py parses a query, service.py answers it)
    "SearchQuery": _search_query_schema(),
    "SearchFilter": {"type": "object", "propertyNames": {"minLength": 1}, "description": (
        "a filter node: {\"and\": [nodes]}, {\"or\": [nodes]} (non-empty lists), {\"not\": node}, or a "
        "comparison {\"field\": F, OP: VALUE} with exactly one OP of "
        f"{', '.join(search_query.OPERATORS)}; which OPs a field takes follows from its type (GET "
        "/v1/search/fields); fields.<path> compares any value of a record's own fields as a keyword or a number; "
        f"a query holds at most {search_query.MAX_NODES} nodes. The bridge checks only that it is an object: "
        "the query parser names any malformed part with its JSON pointer (422, details[0].path, e.g. "
        "/filter/and/1/lt)")},
    "SearchHit": _obj({
        "registry": REGISTRY_NAME, "id": RECORD_ID,
        "score": {"type": "number", "description": "relevance: the weighted text, freshness and trust, times the "
                                                   "boosts it matches; 0 when sorted by a field"},
        "record": {**_ref("Record"), "description": "the record as the node's store holds it now"},
        "sort_value": {"type": ["number", "string"], "description": "the value of the sort field (a sort other "
                       "than relevance): a number, a date in ms, or a keyword (sorted in UTF-8 byte order)"},
        "explain": {"type": "object", "additionalProperties": {"type": "number"},
                    "description": "explain: true: the weighted components text, freshness and trust, the "
                                   "signals the text relevance came from (bm25 and bm25_rank; similarity and "
                                   "vector_rank; rrf, their fusion) and the boost factor"},
        "sources": {"type": "array", "items": STRING, "description": "a federated query: every source that "
                    "returned this record, local or a peer id"},
        "record_from": {**STRING, "description": "a federated query: the source whose copy is shown (the newest "
                        "verified one); a peer's copy is rebuilt here from its signed changes"},
    }, required=["registry", "id", "score", "record"]),
    "SearchSource": _obj({
        "source": {**STRING, "description": "local, or a peer id"},
        "kind": {"enum": ["local", "peer", "provider"], "description": "this node, a member of its federation, or "
                 "a provider of a followed registry"},
        "registry": {**REGISTRY_NAME, "description": "a provider's followed registry"},
        "status": {"enum": ["ok", "timeout", "failed"]},
        "hits": {**SEQ, "description": "its hits shown (verified)"},
        "total": {**SEQ, "description": "matches in its index, over what this node may read there"},
        "unverified": {**SEQ, "description": "its hits dropped: their changes did not verify here, or the "
                       "query did not ask for them (another registry, its filter, a sort value the record does "
                       "not hold, a hit sent twice)"},
        "unchecked": {**SEQ, "description": "its hits left unchecked: the query's checking budget ran out"},
        "withheld": {**SEQ, "description": "hits it left out (a record of too many changes, or its byte cap)"},
        "indexed_through": {**SEQ, "description": "the feed sequence its index had reached"},
        "error": STRING,
    }, required=["source", "kind", "status", "hits"]),
    "SearchResult": _obj({
        "items": {"type": "array", "items": _ref("SearchHit"), "description": "best first, or in sort order"},
        "total": {**SEQ, "description": "records that match, over every page (a sort by a field lists only the "
                                        "records that have it, so its pages may hold fewer)"},
        "facets": {"type": "object", "description": "for each facet asked for: its values over every match, "
                                                    "most frequent first, at most 50 (the counts of the others "
                                                    "are not given)",
                   "additionalProperties": {"type": "array", "items": _obj({
                       "value": {"type": ["string", "boolean"]}, "count": SEQ})}},
        "next_cursor": {**_nullable(STRING), "description": "the cursor of the next page (null: the last page)"},
        "indexed_through": {**SEQ, "description": "the feed sequence the index had reached: a write with a "
                                                  "higher feed_seq is not searchable yet"},
        "sources": {"type": "array", "items": _ref("SearchSource"), "description": "a federated query: how each "
                    "source answered (total and facets above are the local index's)"},
    }, required=["items", "total", "facets", "next_cursor", "indexed_through"]),
    "SearchField": _obj({
        "field": STRING, "type": {"enum": ["keyword", "text", "number", "date", "bool", "keyword or number"]},
        "many": {"type": "boolean", "description": "several values per record"},
        "operators": {"type": "array", "items": {"enum": list(search_query.OPERATORS)}},
        "sortable": {"type": "boolean"}, "facetable": {"type": "boolean"}, "description": STRING,
    }),
    "SearchFields": _obj({"fields": {"type": "array", "items": _ref("SearchField")}}),
    "IndexStatus": _obj({
        "state": {"enum": ["opening", "ready"]},
        "documents": {**SEQ, "description": "records in the index"},
        "indexed_through": {**SEQ, "description": "the feed sequence the index has reached"},
        "feed_head": {**SEQ, "description": "the node's newest feed sequence (the index catches up within a "
                                            "fraction of a second of each commit)"},
        "semantic": {"type": "boolean", "description": "semantic search runs (the semantic extra is installed)"},
        "vectors_through": {"anyOf": [SEQ, {"type": "null"}],
                            "description": "the feed sequence the embeddings have reached (they lag the text)"},
    }, required=["state"]),
    "IndexRebuild": _obj({
        "events": {**SEQ, "description": "feed events read"}, "documents": {**SEQ, "description": "records indexed"},
        "indexed_through": SEQ,
    }),
    # ---- saved views (registrygrid/search/views.py: describe, Views.show and Views.changes build them)
    "View": _obj({
        "name": {**RECORD_ID, "description": "the view's name: its record id in grid.views"},
        "title": STRING, "owner": {**_nullable(STRING), "description": "the org that owns it (did:key)"},
        "description": STRING, "query": {"description": "the view's query (SearchQuery, no cursor)"},
        "materialized": {"type": "boolean", "description": "this node keeps its results and follows their changes "
                         f"(its org's {saved_views.MAX_MATERIALIZED} oldest views); false: answered live, or "
                         "not refreshed yet since it was made or edited, or failed (error)"},
        "members": {**_nullable(SEQ), "description": f"records in its results (at most {saved_views.MAX_MEMBERS}; "
                    "null unless materialized)"},
        "truncated": {"type": "boolean", "description": f"more records match than the {saved_views.MAX_MEMBERS} "
                      "first in the query's order it keeps"},
        "through": {**_nullable(SEQ), "description": "the feed sequence its results reflect (null unless "
                    "materialized): a write with a higher feed_seq is not in them yet"},
        "error": {"anyOf": [_obj({"message": STRING, "path": {**STRING, "description": "JSON pointer into the "
                                                                          "view's fields, e.g. /query/filter/lt"}}),
                            {"type": "null"}],
                  "description": "why the view has no results: its query does not parse (a view may arrive "
                                 "from a peer), or failed on this node's index"},
    }),
    "Views": _obj({"views": {"type": "array", "items": _ref("View"), "description": "in name order"}}),
    "ViewItem": _obj({
        "registry": REGISTRY_NAME, "id": RECORD_ID,
        "sort_value": {"type": ["number", "string", "null"], "description": "what the query orders by: the sort "
                       "field's value, or for a relevance order the record's BM25 text score"},
        "record": {**_ref("Record"), "description": "the record as the node's store holds it now"},
    }),
    "ViewPage": _obj({
        "view": _ref("View"),
        "items": {"type": "array", "items": _ref("ViewItem"), "description": "in the query's order"},
        "total": {**SEQ, "description": "results over every page"},
        "next_cursor": {**_nullable(STRING), "description": "the cursor of the next page (null: the last page)"},
    }),
    "ViewMember": _obj({"registry": REGISTRY_NAME, "id": RECORD_ID,
                        "sort_value": {"type": ["number", "string", "null"]}}),
    "ViewEvent": _obj({
        "event_id": {**STRING, "description": "GENERATION.N: resume after it (after=, Last-Event-ID)"},
        "type": {"enum": ["added", "updated", "removed"]}, "registry": REGISTRY_NAME, "id": RECORD_ID,
        "seq": {**SEQ, "description": "the feed sequence of the change that caused it"},
    }),
    "ViewChanges": _obj({
        "events": {"type": "array", "items": _ref("ViewEvent"), "description": "oldest first"},
        "reset": {"anyOf": [_obj({"members": {"type": "array", "items": _ref("ViewMember"),
                                              "description": "in the query's order"},
                                  "through": {**SEQ, "description": "the feed sequence they reflect"}}),
                            {"type": "null"}],
                  "description": "the whole result list instead of events: no after was given, or it is older "
                                 "than the events this node keeps (or before a node restart or an edit of the "
                                 "view)"},
        "last_id": {**STRING, "description": "pass it as after= next time"},
    }),
    "ViewPut": _obj({
        "query": {"allOf": [_ref("SearchQuery"), {"properties": {
            "mode": {"const": "text"}, "cursor": {"not": {}}, "federated": {"enum": [False, None]}}}],
                  "description": "a query of the search language, without cursor, in text mode, not federated "
                                 "(search/views.py check_query): its every match, in its order, is the view"},
        "description": {"type": "string", "maxLength": 4096},
        "title": {"type": "string", "minLength": 1, "maxLength": 256, "description": "display title (default: "
                  "the name)"},
    }, required=["query"]),
    # ---- request bodies (validated by the bridge with these very schemas)
    "RecordCreate": _obj({
        "kind": KIND_NAME, "fields": _ref("JsonObject"), "id": RECORD_ID, "tags": TAGS,
        "links": {"type": "array", "items": _ref("Link"), "maxItems": limits.MAX_LINKS},
        "schema": {"type": "integer", "minimum": 1},
    }, required=["kind", "fields"]),
    "RecordReplace": _obj({
        "fields": _ref("JsonObject"), "tags": TAGS,
        "links": {"type": "array", "items": _ref("Link"), "maxItems": limits.MAX_LINKS},
        "schema": {"type": "integer", "minimum": 1},
    }, required=["fields"]),
    "RecordPatch": _obj({
        "patch": {**_ref("JsonObject"), "description": "RFC 7386 merge patch on the fields"}, "tags": TAGS,
        "links": {"type": "array", "items": _ref("Link"), "maxItems": limits.MAX_LINKS},
        "schema": {"type": "integer", "minimum": 1},
    }, required=[]),
    "MergePatch": {**_ref("JsonObject"), "description": "RFC 7386 merge patch applied to the record's fields"},
    "RegistryCreate": _obj({
        "name": REGISTRY_NAME, "kinds": {"type": "array", "items": KIND_NAME, "minItems": 1, "maxItems": 64,
                                         "uniqueItems": True, "description": "kinds registered on this node "
                                         "(GET /v1/kinds); another is refused (422 unknown_kind)"},
        "description": {"type": "string", "maxLength": 4096},
        "write_policy": {"enum": list(WRITE_POLICIES)}, "conflict_policy": _ref("ConflictPolicy"),
        "replication": {"enum": ["local", "federation", "public", "private"]},
        "write_roles": {"type": "array", "maxItems": 5, "uniqueItems": True,
                        "items": {"enum": ["node", "writer", "admin", "federation-admin", "member"]}},
        "readers": {"type": "array", "maxItems": 256, "uniqueItems": True,
                    "items": DID_KEY,
                    "description": "a private registry's reader orgs (did:key); its owner org always reads"},
        "limits": _obj(required=[], props={
            "max_record_bytes": {"type": "integer", "minimum": 1, "maximum": limits.MAX_RECORD_BYTES,
                                 "description": "the most a record's fields may take, msgpack-packed"},
            "max_changes_per_second_per_org": {"type": "number", "exclusiveMinimum": 0, "maximum": 100_000,
                                               "description": "how fast one org's changes here are taken in "
                                                              "from peers"},
        }),
    }, required=["name", "kinds"]),
    "PolicyExplain": _obj({
        "subject": {**DID_KEY, "description": "a node's or an org's key"},
        "action": {"enum": ["read", "create", "update", "delete", "admin"]},
        "registry": REGISTRY_NAME,
        "record": {"type": "string", "minLength": 1, "maxLength": 128,
                   "pattern": "^[A-Za-z0-9][A-Za-z0-9._:@~+-]{0,127}$"},
        "fields": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 128}, "maxItems": 64},
        "token_role": {"enum": ["reader", "writer", "admin"],
                       "description": "explain a write made through this bridge with a token of this role"},
    }, required=["subject", "action", "registry"]),
    "KindCreate": _obj({
        # Bounds as builtin/kind.v1.json; without a home registry the engine names it user.<name>.
        "name": KIND_NAME, "version": {"type": "integer", "minimum": 1, "maximum": 65535},
        "schema": _ref("JsonObject"), "registry": {**REGISTRY_NAME, "description": "the kind's home registry"},
        "description": {"type": "string", "maxLength": 4096},
    }, required=["name", "version", "schema"]),
    "RecordErase": _obj({
        "reason": {"type": "string", "maxLength": 512, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
                   "description": "why, for every node's audit ledger (no personal data: the notice is kept); "
                                  "one line, no control characters"},
        "blobs": {"type": "array", "maxItems": 256,
                  "items": BLOB_CID,  # a CID's own shape: "b" and 58 letters let names no CID reads through
                  "description": "CIDs of blobs to purge with the record"},
    }, required=[]),
    "DisputeResolve": _obj({
        "value": {**_ref("JsonValue"), "description": "the value the disputed field takes (any JSON value, null "
                                                      "included)"},
        "removed": {"type": "boolean", "description": "true: the disputed field is removed instead"},
        "note": {"type": "string", "maxLength": 2000, "description": "why, for the people reading the dispute"},
    }, required=[], description="a field dispute takes value or removed: true, not both; an equivocation "
                               "neither ({} or a note alone acknowledges it)")
    | {"dependentSchemas": {"value": {"properties": {"removed": {"const": False}}}}},
    "TokenCreate": _obj({
        "role": {"enum": list(ROLES)},
        "name": {"type": "string", "anyOf": [{"maxLength": 0}, {"pattern": stored_tokens.NAME_PATTERN}],
                 "description": "a label (default token-ID)"},
        "registry": {**REGISTRY_NAME, "description": "limits the token to this registry (not an admin token: an "
                                                     "admin mints tokens for any registry)"},
        "expires_in": {"type": "integer", "minimum": 1, "maximum": MAX_LIFETIME_S,
                       "description": "seconds until the token expires; omit for no expiry"},
    }, required=["role"]) | {"dependentSchemas": {"registry": {"properties": {
        "role": {"enum": [r for r in ROLES if r != "admin"]}}}}},
    # The MCP Registry API's answers (formats/mcp_registry.py builds them). The
    # official document, vendored in formats/vendor/mcp-registry-openapi.yaml,
    # defines them in full (ServerDetail, ServerResponse, ServerList); the
    # tests check every answer against it. Here: their frame, and the server
    # as the record's fields hold it.
    "McpServerResponse": _obj({
        "server": {"type": "object", "required": ["name", "version"],
                   "properties": {"name": STRING, "version": STRING},
                   "description": "the server.json: the record's fields, verbatim (the official document's "
                                  "ServerDetail)"},
        "_meta": _obj({mcp.OFFICIAL_META: _obj({
            "status": {"enum": list(mcp_registry.STATUSES), "description": "deleted: the record is deleted (listed "
                       "only with include_deleted); deprecated: the server.json's own _meta says so; else active"},
            "publishedAt": {"type": "string", "format": "date-time", "description": "the record's created_at"},
            "updatedAt": {"type": "string", "format": "date-time", "description": "the record's updated_at"},
            "isLatest": {"type": "boolean", "description": "the newest live version of the name: semantic versions "
                         "by precedence, above non-semantic ones; otherwise by publication time"},
        })}),
    }, description="one version of an MCP server, as the MCP Registry API answers it"),
    "McpServerList": _obj({
        "servers": {"type": "array", "items": _ref("McpServerResponse")},
        "metadata": _obj({"nextCursor": {"type": "string", "description": "the cursor of the next page; absent on "
                                                                            "the last"},
                          "count": {"type": "integer", "minimum": 0, "description": "servers in this answer"}},
                         required=["count"]),
    }),
    "AgentCardList": _obj({
        "cards": {"type": "array", "items": _obj({
            "id": RECORD_ID, "owner": {"type": "string", "description": "did:key of the org that published it"},
            "name": {"description": "the card's name"},
            "signature": {"enum": ["verified", "self-signed", "unverified", "invalid", "unsigned"],
                          "description": "its JWS signatures as verified at import (formats/a2a.py)"},
            "updated_at": {"type": "integer"},
            "card": {"type": "object", "description": "the card, verbatim (signatures included)"},
        })},
        "next_cursor": {**_nullable(STRING), "description": "the cursor of the next page (null: the last)"},
    }, description="A2A agent cards the federation replicates here"),
    "ArdSearch": {"type": "object", "required": ["query"], "additionalProperties": False, "properties": {
        "query": {"type": "object", "required": ["text"], "propertyNames": {"minLength": 1},
                  "additionalProperties": _ref("JsonValue"), "properties": {
            "text": {"type": "string", "pattern": "\\S", "description": "the task in plain language (not blank)"},
            "filter": {"anyOf": [_obj({key: {"anyOf": [{"type": "string", "minLength": 1},
                                                      {"type": "array", "minItems": 1,
                                                       "items": {"type": "string", "minLength": 1}}]}
                                       for key in ("type", "tags", "capabilities", "publisher")}, required=[]),
                                 {"type": "null"}],
                       "description": "type (media types), tags, capabilities, publisher (did:key): within a key "
                                      "values are OR'd, across keys AND'd"}}},
        "federation": {"enum": list(ard.FEDERATION), "description": "auto: this node's federated query (peers "
                       "and followed registries' providers, remote records verified); none, referrals: this "
                       "node alone (referrals is always empty: its peers are no HTTP discovery services)"},
        "pageSize": {"type": "integer", "minimum": 1, "maximum": ard.MAX_PAGE_SIZE},
        "pageToken": {"type": ["string", "null"], "pattern": CURSOR_PATTERN,
                      "description": "nextPageToken of the previous answer (opaque; not with auto)"},
    }, "dependentSchemas": {"pageToken": {"anyOf": [
        {"properties": {"pageToken": {"type": "null"}}},
        {"properties": {"federation": {"enum": [f for f in ard.FEDERATION if f != "auto"]}}}]}},
        "description": "an ARD (Agentic Resource Discovery) search request"},
    "ArdAnswer": {"type": "object", "required": ["results", "referrals"], "properties": {
        "results": {"type": "array", "items": {"type": "object", "required": ["identifier", "displayName", "type",
                                                                              "score"]},
                    "description": "AI Catalog entries, best first; score 0-100 is relevance within the page, "
                                   "never a trust signal"},
        "referrals": {"type": "array", "items": {"type": "object"}},
        "nextPageToken": {"type": "string"},
    }},
    "AiCatalog": {"type": "object", "required": ["specVersion", "entries"], "properties": {
        "specVersion": {"type": "string"}, "host": {"type": "object"},
        "entries": {"type": "array", "items": {"type": "object", "required": ["identifier", "displayName", "type"]}},
    }, "description": "an AI Catalog (application/ai-catalog+json) of what this org publishes: its agent cards and "
                      "the latest version of each of its MCP servers inline, and the AI Catalog entries it imported"},
    "McpError": _obj({
        "error": {"type": "string", "description": "the message (the official document's error shape)"},
        "code": {"type": "string", "description": "stable machine-readable code (registrygrid.errors)"},
        "details": {"description": "structured context"},
        "trace_id": {"type": "string", "description": "also in the X-Trace-Id header"},
    }, description="an error of the MCP Registry API's routes: {error: message} as the official document has "
                   "it, with the bridge's code, details and trace id beside it"),
    **_asset_schemas(),
}

_ERROR_STATUSES = {
    "400": "Malformed request (bad JSON, bad parameter)",
    "401": "No token or a bad one",
    "403": "The token lacks the role or the registry scope",
    "404": "No such registry, record, kind, token or dispute",
    "409": "Conflict (already exists, in progress, the node's own CLI token; follow: the node hosts the "
           "registry itself, or follows as many as it may)",
    "410": "The record was erased (record_erased; details.notice names the erasure notice): its id is gone for "
           "good (docs/erasure.md)",
    "412": "If-Match names a change the record moved past",
    "413": f"Body over {MAX_BODY_BYTES} bytes, or fields over {limits.MAX_RECORD_BYTES} bytes encoded, or over "
           "the registry's limits.max_record_bytes (resolve: a DHT record over its cap)",
    "422": "Well-formed but invalid (schema violation: details list every failing path)",
    "429": "Rate limited (see Retry-After)",
    "501": "A capability of an optional extra this node was installed without (semantic search: "
           "pip install 'registrygrid[semantic]')",
    "507": "The node's disk refused the write (storage_failed: full, over quota, read-only, failing); nothing was "
           "written. No Retry-After: it fails the same way until the operator makes room",
    "503": "The node is starting, stopping, or its audit ledger is behind (resolve: the node runs no DHT, or "
           "the lookup timed out; remote and follow: no provider gave a verifiable answer; search and index: the "
           "node keeps no search index (--no-search), or it is still opening; peers: the node runs no federation "
           "(--no-p2p)). Code disabled (no Retry-After): the node runs without what was asked (--no-search, "
           "--no-dht, --no-p2p), until it restarts otherwise; unavailable (Retry-After): a moment",
}


def _errors(*statuses: str) -> dict[str, Any]:
    out = {}
    for status in statuses:
        out[status] = {"description": _ERROR_STATUSES[status], "headers": _TRACE_HEADER,
                       "content": {"application/json": {"schema": _ref("Error")}}}
    return out


_TRACE_HEADER = {"X-Trace-Id": {"description": "trace id of this request (also in error bodies)",
                                "schema": STRING}}
READ_ERRORS = ("400", "401", "403", "404", "422", "429", "503")
WRITE_ERRORS = ("400", "401", "403", "404", "409", "413", "422", "429", "503", "507")


def _json(status: str, schema: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {status: {"description": description, "headers": {**_TRACE_HEADER, **(headers or {})},
                     "content": {"application/json": {"schema": _ref(schema)}}}}


def _body(schema: str, media: str = "application/json") -> dict[str, Any]:
    return {"required": True, "content": {media: {"schema": _ref(schema)}}}


def _path(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _query(name: str, schema: dict[str, Any], description: str = "", **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description, **extra}


def _header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema or STRING, "description": description}


P_REGISTRY = _path("registry", REGISTRY_NAME)
P_ID = _path("id", RECORD_ID)
P_DISPUTE = _path("id", DISPUTE_ID, "the dispute's id (rgrid disputes list, GET /v1/disputes)")
P_VIEW = _path("name", RECORD_ID, "the view's name (its record id in grid.views)")
IDEMPOTENCY = _header("Idempotency-Key", "A retry with the same key and body replays the first answer "
                      "(kept 24 h per token); the same key with another body is refused (422).",
                      {"type": "string", "pattern": idempotency.KEY_PATTERN,
                       "description": f"1 to {idempotency.MAX_KEY} visible ASCII characters"})
# If-Match (RFC 9110 13.1.1): "*" or one entity tag, as the ETag of a record
# carries it (its change id, quoted). A tag the record moved past, or never
# had, is refused with 412: whether it matches is the record's state, not
# the request's shape. Lists and weak tags are not taken (a weak tag never
# matches under If-Match's strong comparison).
IF_MATCH = _header("If-Match", "a quoted change id (the ETag of a read or a write), or *: the write applies only "
                   "while the record's current change is that one (412 otherwise)",
                   {"type": "string", "pattern": '^(\\*|"[!#-~]+")$'})
# The listings' cursors (sdk.py encode_cursor: the last (registry, id) listed).
LIST_CURSOR = {"type": "string", "pattern": CURSOR_PATTERN, "maxLength": 1024}
# A field filter of a listing (app.py parse_where): PATH:OP:VALUE.
MAX_WHERE = 16  # each is a scan-time check on every candidate record: a handful is plenty (app.py)
MAX_WHERE_CHARS = 1024
MAX_OWNER_CHARS = 256
WHERE_OPS = ("eq", "ne", "lt", "le", "gt", "ge", "contains")
WHERE_PATH = "^[A-Za-z0-9_.-]{1,256}$"
LOCATION = {"Location": {"description": "URL of what was created", "schema": STRING}}
# app.py SOURCE_HEADER: on reads of a registry this node follows rather than hosts.
SOURCE = {"X-Registry-Source": {
    "description": "followed: answered from the verified copy of a public registry of another federation "
                   "that this node follows (PUT /v1/follows/{registry}), the node's own store not holding it; "
                   "absent on answers from the node's own store",
    "schema": {"enum": ["followed"]}}}
ETAG = {"ETag": {"description": "the record's change id, quoted", "schema": STRING}}
LIST_PARAMS = [
    _query("kind", KIND_NAME), _query("tag", TAG), _query("owner", {"type": "string", "maxLength": MAX_OWNER_CHARS}),
    _query("where", {"type": "array", "maxItems": MAX_WHERE,
                     "items": {"type": "string", "maxLength": MAX_WHERE_CHARS,
                               "pattern": f"{WHERE_PATH[:-1]}:({'|'.join(WHERE_OPS)}):"}},
           "field filter PATH:OP:VALUE, OP one of eq ne lt le gt ge contains; VALUE is JSON or a string; "
           "repeatable (all must hold)", style="form", explode=True),
    _query("sort", {"enum": ["id"]}, "listing order; only (registry, id) order, which keeps cursors stable"),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
    _query("cursor", LIST_CURSOR, "next_cursor of the previous page (opaque)"),
    _query("include_deleted", {"type": "boolean", "default": False}),
    _query("conflicted", {"type": "boolean", "default": False},
           "only records that show conflicts (concurrent writes settled by the registry's conflict rules, or "
           "field disputes); read from an index of them, so cheap on any registry"),
]
OPEN = [{}]  # no token needed (loopback)


def _op(op_id: str, summary: str, responses: dict[str, Any], *, tags: list[str], params: list[Any] | None = None,
        body: dict[str, Any] | None = None, security: list[Any] | None = None, description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": tags, "responses": responses}
    if description:
        out["description"] = description
    if params:
        out["parameters"] = params
    if body:
        out["requestBody"] = body
    if security is not None:
        out["security"] = security
    return out


def _mcp_errors(*statuses: str) -> dict[str, Any]:
    """Error answers of the MCP Registry API's routes, in that API's shape."""
    described = {**_ERROR_STATUSES, "404": "Server not found, or no such version of it",
                 "501": "Not offered by this registry (publish, delete: write records with rgrid import or the "
                        "/v1 record routes)"}
    return {status: {"description": described[status], "headers": _TRACE_HEADER,
                     "content": {"application/json": {"schema": _ref("McpError")}}} for status in statuses}


def _mcp_paths() -> dict[str, Any]:
    """The MCP Registry API's read routes (node/bridge/mcp_routes.py), from grid.mcp-servers."""
    name = _path("serverName", {"type": "string", "minLength": 1}, "the server's name, URL-encoded "
                 "(com.example%2Fmy-server)")
    version = _path("version", {"type": "string", "minLength": 1}, "a version (URL-encoded), or latest")
    deleted = _query("include_deleted", {"type": "boolean", "default": False},
                     "deleted versions too (status deleted); not in the official document")
    tags = ["mcp registry"]
    about = ("The MCP Registry API (the official document, vendored in registrygrid/formats/vendor/): an "
             "unmodified MCP registry client reads grid.mcp-servers here. Errors are {error: message, code, "
             "details, trace_id}. Needs a reader token; one limited to another registry is refused (403).")
    return {
        "/v0.1/servers": {"get": _op(
            "mcpListServers", "MCP servers: a page of versions in (name, version) order",
            {**_json("200", "McpServerList", "a page; metadata.nextCursor names the next"),
             **_mcp_errors("400", "401", "403", "422", "429")},
            tags=tags, description=about,
            params=[_query("cursor", {"type": "string", "pattern": CURSOR_PATTERN,
                                      "maxLength": mcp_registry.MAX_CURSOR},
                           "metadata.nextCursor of the previous page (opaque)"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": mcp_registry.MAX_LIMIT,
                                     "default": mcp_registry.DEFAULT_LIMIT}),
                    _query("search", STRING, "a substring of the server's name, case-insensitive"),
                    _query("updated_since", {"type": "string", "format": "date-time"},
                           "RFC 3339: versions updated at or after it"),
                    _query("version", STRING, "latest: the latest version of each server; else one exact version "
                                              "(default: every version)"),
                    deleted])},
        "/v0.1/servers/{serverName}/versions": {"get": _op(
            "mcpListServerVersions", "Every version of an MCP server, newest publication first",
            {**_json("200", "McpServerList", "the versions"), **_mcp_errors("400", "401", "403", "404", "429")},
            tags=tags, params=[name, deleted])},
        "/v0.1/servers/{serverName}/versions/{version}": {
            "get": _op("mcpGetServerVersion", "One version of an MCP server (latest: the latest)",
                       {**_json("200", "McpServerResponse", "the version"),
                        **_mcp_errors("400", "401", "403", "404", "429")},
                       tags=tags, params=[name, version, deleted]),
            "delete": _op("mcpDeleteServerVersion", "Not offered (501): delete the version's record instead",
                          _mcp_errors("401", "403", "404", "429", "501"), tags=tags, params=[name, version],
                          description="404 route_not_found: a name or version no route reads ('{' or '}')."),
        },
        "/v0.1/publish": {"post": _op(
            "mcpPublish", "Not offered (501): rgrid import writes server.json files as records",
            _mcp_errors("401", "403", "429", "501"), tags=tags)},
    }


def _discovery_paths() -> dict[str, Any]:
    """Well-known discovery documents and the agent card listing (node/bridge/discovery_routes.py)."""
    public = ("Public, as the protocol means it (a client discovers before it holds a credential here); "
              "Cache-Control: public, max-age=60. Each address is held to the anonymous rate limit (429).")
    return {
        "/.well-known/agent-card.json": {"get": _op(
            "wellKnownAgentCard", "The A2A card of the agent this org hosts (as imported, signatures intact)",
            {"200": {"description": "the card", "headers": _TRACE_HEADER,
                     "content": {"application/json": {"schema": {"type": "object"}}}},
             **_errors("404", "409", "429")},
            tags=["discovery"], security=[{}], description=public + " 404: the org hosts none; 409: several, and "
            "bridge.agent_card in HOME/config.json names none of them (details.candidates lists them).")},
        "/.well-known/ai-catalog.json": {"get": _op(
            "wellKnownAiCatalog", "An AI Catalog of what this org publishes",
            {**_json("200", "AiCatalog", "the catalog",
                     {"ETag": {"description": "a hash of the document", "schema": STRING}}),
             "304": {"description": "If-None-Match matched", "headers": _TRACE_HEADER}, **_errors("429")},
            tags=["discovery"], security=[{}], description=public)},
        "/search": {"post": _op(
            "ardSearch", "ARD search over the MCP servers, agent cards and AI Catalog entries held here",
            {**_json("200", "ArdAnswer", "the results"), **_errors("400", "401", "403", "413", "422", "429", "503")},
            tags=["discovery"], body=_body("ArdSearch"),
            description="The Agentic Resource Discovery search API (draft v0.9), answered from this node's search "
                        "index (formats/ard.py maps it). Needs a reader token.")},
        "/v1/agent-cards": {"get": _op(
            "listAgentCards", "Agent cards the federation replicates here, with their signature status",
            {**_json("200", "AgentCardList", "a page"), **_errors("400", "401", "403", "422", "429")},
            tags=["discovery"], params=[_query("limit", {"type": "integer", "minimum": 1, "maximum": 1000,
                                                         "default": 100}),
                                        _query("cursor", LIST_CURSOR, "next_cursor of the previous page "
                                                                      "(opaque)")])},
    }


_ASSET_ERROR_STATUSES = {
    **_ERROR_STATUSES,
    "400": "Malformed request: bad JSON or no body where one is needed, a part number that is no number, a "
           "Content-MD5 or X-Checksum-Sha256 of the wrong form",
    "403": "The token lacks the role (reader; writer to upload; admin for retention, holds and purges), the upload "
           "is another token's, an asset check refused (check_refused: details list every verdict), a presigned "
           "URL does not grant this request (presign_invalid) or expired (presign_expired), or a bundle names a "
           "URL of a host the node may not fetch from",
    "404": "No such upload (or it expired: upload_expired), blob (blob_missing), hold, or ZIP entry "
           "(zip_entry_missing)",
    "408": "The body sent nothing for the bridge's idle timeout (body_timeout; 60 s by default): the part is "
           "not stored, send it again",
    "409": "The upload is not open, or lacks parts (details[0].missing); another request is writing this part, "
           "or (at finalize) any part, now (part_in_progress: Retry-After); a part arrives while the upload is "
           "being finalized; a complete upload cannot be cancelled; retention or a legal hold forbids the purge, "
           "or retention would shorten (retention_held)",
    "413": f"Too large (too_large): a declared size over the node's max_blob_bytes, a part longer than its length, "
           f"a JSON body over {MAX_BODY_BYTES} bytes",
    "412": "If-Match names another entity tag (precondition_failed): another version than this one",
    "416": "No requested range overlaps the blob (range_not_satisfiable); Content-Range: bytes */SIZE",
    "422": "Well-formed but invalid: a member out of its bounds, a part number out of range, bytes that do not "
           "match their declared size or checksum (checksum_mismatch: details name size, sha256 or md5), a bad "
           f"CID, more than {MAX_RANGES} ranges, a ZIP the node will not read (zip_refused), a blob that is no "
           "sound ZIP (zip_malformed)",
    "503": "The node is starting or stopping, stores no asset content, or its object store is unavailable "
           "(object_store_unavailable)",
    "507": "Storing it would pass the node's blob quota (quota_exceeded; details: quota, used), or the node's disk "
           "refused it (storage_failed: full, over quota, failing; nothing was kept)",
}
_RANGE_HEADERS = {"Content-Range": {"description": "bytes */SIZE: the blob's size", "schema": STRING}}
_RETRY_AFTER_HEADERS = {"Retry-After": {"description": "seconds to wait before asking again (RFC 9110 10.2.3)",
                                        "schema": {"type": "integer", "minimum": 1}}}


def _asset_errors(*statuses: str, head: bool = False, retry_after: str | None = None) -> dict[str, Any]:
    """Error answers of the asset routes; a HEAD's carry no body; the
    ``retry_after`` status's answer may carry Retry-After."""
    out: dict[str, Any] = {}
    for status in statuses:
        headers = {**_TRACE_HEADER, **(_RANGE_HEADERS if status == "416" else {}),
                   **(_RETRY_AFTER_HEADERS if status == retry_after else {})}
        out[status] = {"description": _ASSET_ERROR_STATUSES[status], "headers": headers}
        if not head:
            out[status]["content"] = {"application/json": {"schema": _ref("Error")}}
    return out


def _asset_paths() -> dict[str, Any]:
    """Asset content (node/bridge/asset_routes.py): resumable uploads, blobs, ZIPs and bundles."""
    # Imported here: asset_routes imports app, which imports this module.
    from registrygrid.node.bridge.asset_routes import IMMUTABLE_S

    up = UPLOAD_LIMITS
    tags = ["assets"]
    p_upload = _path("id", UPLOAD_ID, "the upload's id (POST /v1/uploads answers it)")
    p_cid = _path("cid", BLOB_CID, "the blob's CID")
    p_hold = _path("name", {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                   "the hold's name: 1 to 64 letters, digits, '-', '_' or '.'")
    presigned = [_query(name, {"type": "string", "maxLength": 256}, f"{name}: part of a presigned URL's grant "
                        "(as the node wrote it: any change fails the signature)") for name in PRESIGN_PARAMS]
    token_or_url = [{"bearer": []}, {}]  # a token, or no token and a presigned URL's rg-* query
    blob_etag = {"ETag": {"description": "the blob's CID, quoted: the bytes under a CID never change",
                          "schema": STRING}}
    blob_headers = {
        **blob_etag, "Accept-Ranges": {"schema": {"const": "bytes"}},
        "Cache-Control": {"description": f"private, max-age={IMMUTABLE_S}, immutable; through a presigned URL "
                                         "public, max-age the seconds it has left", "schema": STRING},
        "X-Content-SHA256": {"description": "the blob's SHA-256", "schema": SHA256_HEX},
        "Content-Length": {"schema": SEQ}}
    any_bytes = {"*/*": {"schema": {"description": "the bytes, of the media type declared at upload"}}}
    session_ok = _json("200", "UploadSession", "the session")
    upload_errors = ("401", "403", "404", "429", "503")
    blob_params = [
        p_cid,
        _header("Range", f"bytes=FIRST-LAST, bytes=FIRST-, bytes=-SUFFIX, or up to {MAX_RANGES} of them separated "
                "by commas (RFC 9110 14.1.2); a value of another form is ignored (200)",
                {"type": "string", "maxLength": 4096,
                 "pattern": f"^bytes= *[0-9]*-[0-9]*( *, *[0-9]*-[0-9]*){{0,{MAX_RANGES - 1}}} *$"}),
        _header("If-Match", "the ETag (or *): 412 precondition_failed unless it matches (strong comparison)"),
        _header("If-None-Match", "the ETag (or *): 304 when it matches"),
        _header("If-Range", "the ETag: Range applies only while it matches, else the whole blob (200)"),
        *presigned]
    return {
        "/v1/uploads": {"post": _op(
            "createUpload", "Start a resumable upload: declare the whole file; send its parts in any order",
            {**_json("201", "UploadSession", "created (complete at once when deduplicated)", LOCATION),
             **_asset_errors("400", "401", "403", "413", "422", "429", "503", "507")},
            tags=tags, body=_body("UploadCreate"),
            description=(
                "The node fixes the parts: every one part_size bytes but the last (min "
                f"{up.min_part_bytes}, max {up.max_part_bytes}, default the node's assets.part_bytes, "
                f"{up.default_part_bytes}; raised when size would need more than {up.max_parts} parts). A declared "
                "sha256 of a blob the node holds, of that size, completes the session at once with no bytes to "
                "send (state complete, deduplicated, cid). The session belongs to the token (an admin may use any "
                f"session); a token has at most {up.max_open_per_owner} open (429). An untouched session expires "
                f"after the node's assets.upload_ttl_s ({up.ttl_s:g} s by default); every part and heartbeat "
                "renews it. 413: size over the node's max_blob_bytes; 507: over its quota; 403: an asset check "
                "refuses what is declared (check_refused). Needs a writer token."))},
        "/v1/uploads/{id}": {
            "get": _op("getUpload", "An upload's state: the parts held and the parts missing (resume from there)",
                       {**session_ok, **_asset_errors(*upload_errors)}, tags=tags, params=[p_upload],
                       description="404 (upload_expired) once it expired; 403: another token's."),
            "delete": _op("cancelUpload", "Cancel an upload: its parts are deleted",
                          {**_json("200", "UploadSession", "cancelled"), **_asset_errors(*upload_errors, "409")},
                          tags=tags, params=[p_upload],
                          description="409: it is complete (purge the blob instead). Needs a writer token."),
        },
        "/v1/uploads/{id}/parts/{n}": {"put": _op(
            "putUploadPart", "Send one part's bytes (any order, in parallel; again to replace it)",
            {**_json("200", "UploadPart", "stored", {"ETag": {"description": "the part's MD5 (as S3's UploadPart) "
                                                                             "when it came with a Content-MD5, else "
                                                                             "its SHA-256, quoted",
                                                              "schema": STRING}}),
             **_asset_errors("400", *upload_errors, "408", "409", "413", "422", retry_after="409")},
            tags=tags, security=token_or_url,
            params=[p_upload, _path("n", {"type": "integer", "minimum": 1, "maximum": up.max_parts},
                                    "the part's number, from 1"),
                    _header("Content-MD5", "base64 of the part's MD5 (RFC 1864): checked as it streams",
                            CONTENT_MD5),
                    _header("X-Checksum-Sha256", "hex SHA-256 of the part: checked as it streams",
                            {"type": "string", "pattern": "^ *[0-9A-Fa-f]{64} *$"}),
                    *presigned],
            body={"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
            description=(
                "The body is the part's bytes: exactly part_size (the last part: the rest), streamed to the "
                f"object store as they arrive (the {MAX_BODY_BYTES}-byte cap of JSON bodies does not apply; a part "
                f"has at most {up.max_part_bytes} bytes). A part that does not match (422 checksum_mismatch: fewer "
                "bytes, or a checksum sent; 413: more bytes) is not recorded (a part held before is then missing: "
                "on the local store parts are written in place). One request writes a part at a time: another "
                "for the same part meanwhile gets 409 part_in_progress with Retry-After (other parts go in "
                "parallel). 409 also: the session is not open; 422: a number outside 1 to parts. Needs a writer token that owns the session, "
                "or none with a presigned URL of this part (part_urls), which allows at most the part's length "
                "(403 presign_invalid, presign_expired)."))},
        "/v1/uploads/{id}/heartbeat": {"post": _op(
            "heartbeatUpload", "Keep a paused upload alive: renew its expiry",
            {**session_ok, **_asset_errors(*upload_errors)}, tags=tags, params=[p_upload],
            description="An open session's expiry moves to now plus the TTL; one that ended is answered as it is. "
                        "Needs a writer token.")},
        "/v1/uploads/{id}/presign": {"post": _op(
            "presignUploadParts", "Presigned PUT URLs of an upload's parts, for a client with no token",
            {**_json("200", "PartUrls", "one URL a part, in order"),
             **_asset_errors("400", *upload_errors, "413", "422")},
            tags=tags, params=[p_upload], body=_body("PresignOptions"),
            description="Each URL grants PUT of its part only, with at most the part's length, until it expires; "
                        "ip limits it to an address or network. The body is required ({}: the defaults). Needs "
                        "a writer token.")},
        "/v1/uploads/{id}/finalize": {"post": _op(
            "finalizeUpload", "Compose the parts into a blob and verify it (idempotent: the blob's CID)",
            {**_json("200", "UploadFinalized", "complete"),
             **_asset_errors(*upload_errors, "409", "413", "422", "507", retry_after="409")},
            tags=tags, params=[p_upload],
            description=(
                "The parts stream in order into the blob, the whole checked against the declared size, sha256 "
                "and md5 (422 checksum_mismatch: nothing is stored), and without a declared sha256 each part "
                "against the digest it had on arrival; "
                "the asset checks judge the bytes and what they say of themselves (403 check_refused), then the "
                "parts are deleted. A second finalize answers the same. 409: parts are missing (details[0].missing "
                "lists up to 100), or the session was cancelled; 507: over the node's quota. Needs a writer "
                "token."))},
        "/v1/blobs/{cid}": {
            "get": _op(
                "getBlob", "A blob's bytes: Range and multi-range, ETag, If-None-Match, If-Range",
                {"200": {"description": "the whole blob", "headers": {**_TRACE_HEADER, **blob_headers},
                         "content": any_bytes},
                 "206": {"description": "one range (Content-Range), or several as multipart/byteranges",
                         "headers": {**_TRACE_HEADER, **blob_headers, "Content-Range": {
                             "description": "bytes FIRST-LAST/SIZE (one range only)", "schema": STRING}},
                         "content": {**any_bytes, "multipart/byteranges": {"schema": {
                             "description": "each range with its Content-Type and Content-Range"}}}},
                 "304": {"description": "If-None-Match matched", "headers": {**_TRACE_HEADER, **blob_headers}},
                 **_asset_errors("401", "403", "404", "412", "416", "422", "429", "503")},
                tags=tags, params=blob_params, security=token_or_url,
                description=(
                    "Streamed, with Content-Length. The ETag is the CID: Cache-Control says immutable, and a CDN "
                    "in front of the bridge may keep answers for a year (private unless presigned). Ranges (RFC "
                    "9110 14): overlapping or touching ones are merged; none overlapping the blob: 416. Needs a "
                    "reader token, or none with a presigned GET URL (POST /v1/blobs/{cid}/presign). 403: the "
                    "download checks refuse (check_refused); 422: a bad CID, or more than "
                    f"{MAX_RANGES} ranges.")),
            "head": _op(
                "headBlob", "A blob's headers (size, ETag, SHA-256) without its bytes",
                {"200": {"description": "the whole blob's headers", "headers": {**_TRACE_HEADER, **blob_headers}},
                 "206": {"description": "a range's headers", "headers": {**_TRACE_HEADER, **blob_headers}},
                 "304": {"description": "If-None-Match matched", "headers": {**_TRACE_HEADER, **blob_headers}},
                 **_asset_errors("401", "403", "404", "412", "416", "422", "429", "503", head=True)},
                tags=tags, params=blob_params, security=token_or_url,
                description="As GET, without a body (a presigned GET URL serves HEAD too)."),
            "delete": _op(
                "deleteBlob", "Purge a blob's bytes and index entry (admin)",
                {**_json("200", "BlobPurged", "purged"), **_asset_errors("401", "403", "404", "409", "422", "429",
                                                                        "503")},
                tags=tags, params=[p_cid],
                description="409 retention_held while it is retained or under a legal hold (audited as a "
                            "denial). The purge is audited."),
        },
        "/v1/blobs/{cid}/meta": {"get": _op(
            "getBlobMeta", "What the node knows of a blob: size, digests, content type, retention, holds, metadata",
            {**_json("200", "BlobMeta", "the blob"), **_asset_errors("401", "403", "404", "422", "429", "503")},
            tags=tags, params=[p_cid])},
        "/v1/blobs/{cid}/manifest": {"get": _op(
            "getBlobManifest", "A stored ZIP's entries: names, sizes, CRC-32s and SHA-256s",
            {**_json("200", "ZipManifest", "the listing", {"ETag": {"description": "\"CID-manifest\"",
                                                                    "schema": STRING}}),
             **_asset_errors("401", "403", "404", "422", "429", "503")},
            tags=tags, params=[p_cid],
            description=(
                "Read in one streaming pass and kept beside the blob. Bounded (blobs/zipfiles.py): at most "
                f"{ZIP_LIMITS.max_entries} entries and {ZIP_LIMITS.max_total_bytes} bytes expanded, an inflation "
                f"ratio of {ZIP_LIMITS.max_ratio}, safe names, no encrypted entry: 422 zip_refused (details.reason "
                "says which); 422 zip_malformed: the blob is no ZIP, or no sound one (truncated, corrupt, or its "
                "central directory contradicts its entries)."))},
        "/v1/blobs/{cid}/entries/{name}": {"get": _op(
            "getBlobEntry", "One entry of a stored ZIP, inflated as it is sent",
            {"200": {"description": "the entry's bytes", "headers": {
                **_TRACE_HEADER, "ETag": {"description": "the entry's SHA-256, quoted", "schema": STRING},
                "X-Content-SHA256": {"description": "the entry's SHA-256", "schema": SHA256_HEX},
                "Cache-Control": {"description": f"private, max-age={IMMUTABLE_S}, immutable", "schema": STRING}},
                "content": {"application/octet-stream": {}}},
             **_asset_errors("401", "403", "404", "422", "429", "503")},
            tags=tags, params=[p_cid, _path("name", {"type": "string", "minLength": 1,
                                                     "maxLength": ZIP_LIMITS.max_name_bytes},
                                            "the entry's path in the archive ('/' as is, or %2F)")],
            description="Read from the entry's offset on (the entries before it are not inflated) and checked "
                        "against the manifest's SHA-256. 404 zip_entry_missing: no such entry; 422: as the "
                        "manifest.")},
        "/v1/blobs/{cid}/presign": {"post": _op(
            "presignBlob", "A presigned GET URL of a blob, for a client with no token",
            {**_json("200", "PresignedUrl", "the URL"),
             **_asset_errors("400", "401", "403", "404", "413", "422", "429", "503")},
            tags=tags, params=[p_cid], body=_body("PresignOptions"),
            description="Whoever holds the URL reads the blob (GET and HEAD) until it expires; ip limits it to an "
                        "address or network. The signing keys rotate without breaking a URL before its time. The "
                        "body is required ({}: the defaults). Needs a reader token.")},
        "/v1/blobs/{cid}/fetch": {"post": _op(
            "fetchBlob", "Fetch a blob this node lacks from the federation's members that hold it",
            {**_json("200", "BlobFetched", "the blob, here now"),
             **_asset_errors("401", "403", "404", "413", "422", "429", "503", "507")},
            tags=tags, params=[p_cid],
            description=(
                "Every connected member is asked whether it holds the blob; then it moves in ranges of "
                f"{BLOB_RANGE_BYTES} bytes, several at once, a range that fails asked again of the next provider "
                "(node/blob_exchange.py). The whole must hash to the CID (422 checksum_mismatch: nothing is "
                "stored), and passes the checks an upload does (403 check_refused). A blob the node holds already "
                "is answered at once (fetched: false). 404: no connected member holds it; 503: the node runs no "
                "federation (--no-p2p), or no provider gave a range; 413, 507: as an upload. Needs a writer "
                "token."))},
        "/v1/presign/rotate": {"post": _op(
            "rotatePresignKeys", "Make a new signing key for presigned URLs (admin)",
            {**_json("200", "PresignKeys", "rotated"), **_asset_errors("401", "403", "429", "503")},
            tags=tags,
            description="New URLs are signed with the new key. URLs signed before keep working until they "
                        f"expire: a retired key is kept for as long as a URL may live ({MAX_EXPIRES_S} s), then "
                        "dropped, so a leaked key stops working one URL lifetime after the rotation that retired "
                        "it.")},
        "/v1/blobs/{cid}/retention": {"put": _op(
            "setBlobRetention", "Retain a blob until a time: no purge before then (admin)",
            {**_json("200", "BlobMeta", "retained"),
             **_asset_errors("400", "401", "403", "404", "409", "413", "422", "429", "503")},
            tags=tags, params=[p_cid], body=_body("RetentionSet"),
            description="Retention only grows (as S3 Object Lock's compliance mode): an earlier until_ms than "
                        "the blob's is refused (409 retention_held), and one already past (422).")},
        "/v1/blobs/{cid}/holds/{name}": {
            "put": _op("setBlobHold", "Set a named legal hold: no purge while any is set (admin)",
                       {**_json("200", "BlobMeta", "held"),
                        **_asset_errors("400", "401", "403", "404", "413", "422", "429", "503")},
                       tags=tags, body=_body("HoldSet"),
                       params=[p_cid, p_hold],
                       description="Setting a hold again replaces its reason; the reason is kept with the token "
                                   "that set it."),
            "delete": _op("releaseBlobHold", "Release a legal hold (admin)",
                          {**_json("200", "BlobMeta", "released"),
                           **_asset_errors("401", "403", "404", "422", "429", "503")},
                          tags=tags, params=[p_cid, p_hold],
                          description="404: the blob has no hold of that name."),
        },
        "/v1/bundles": {"post": _op(
            "createBundle", "A ZIP of blobs, entries of stored ZIPs and allowed URLs, built while it is sent",
            {"200": {"description": "the archive, chunked (its size is known only at the end)", "headers": {
                **_TRACE_HEADER,
                "ETag": {"description": "a hash of the members: the same members give the same bytes",
                         "schema": STRING},
                "Content-Disposition": {"description": "attachment; filename=\"NAME\" (a name beyond ASCII: an ASCII "
                                                "filename beside filename*=UTF-8''NAME percent-encoded, RFC 8187)",
                                "schema": STRING},
                "Cache-Control": {"description": "private, max-age=3600", "schema": STRING}},
                "content": {"application/zip": {}}},
             "304": {"description": "If-None-Match matched", "headers": {
                 **_TRACE_HEADER, "ETag": {"description": "the bundle's", "schema": STRING}}},
             **_asset_errors("400", "401", "403", "404", "412", "413", "422", "429", "503")},
            tags=tags, body=_body("BundleRequest"),
            params=[_header("If-Match", "the bundle's ETag (or *): 412 precondition_failed unless it matches"),
                    _header("If-None-Match", "the ETag of an earlier bundle of the same members: 304")],
            description=(
                "Nothing is staged: members are stored (known size and CRC-32) at a fixed time, so the same "
                "members give the same bytes. Missing blobs and entries are refused (404) before the first byte; "
                "a URL that fails midway ends the archive early (a broken ZIP). A URL member needs its host in "
                "the node's assets.bundle_hosts (none by default: 403; a node that fetched any URL would be an "
                f"open proxy). At most {asset_bundles.MAX_MEMBERS} members, each name once (422). Needs a reader "
                "token."))},
    }


def _paths() -> dict[str, Any]:
    records = "/v1/registries/{registry}/records"
    record = records + "/{id}"
    return {
        "/v1/health/live": {"get": _op("healthLive", "The process answers", _json("200", "Health", "alive"),
                                       tags=["health"], security=OPEN)},
        "/v1/health/ready": {"get": _op("healthReady", "The node serves reads and writes",
                                        {**_json("200", "Health", "ready"), **_errors("503")},
                                        tags=["health"], security=OPEN)},
        "/metrics": {"get": _op("metrics", "Prometheus metrics (text exposition format)",
                                {"200": {"description": "metrics", "headers": _TRACE_HEADER,
                                         "content": {"text/plain": {"schema": STRING}}}},
                                tags=["health"], security=OPEN)},
        "/v1/openapi.json": {"get": _op("openapi", "This document",
                                        {"200": {"description": "OpenAPI 3.1", "headers": _TRACE_HEADER,
                                                 "content": {"application/json": {"schema": {"type": "object"}}}}},
                                        tags=["health"], security=OPEN)},
        "/v1/identity": {"get": _op("identity", "The node's did:key, peer id and org",
                                    {**_json("200", "Identity", "identity"), **_errors("401", "429")},
                                    tags=["node"])},
        "/v1/stats": {"get": _op("stats", "Store sizes, feed head, engine counters",
                                 {**_json("200", "Stats", "stats"), **_errors("401", "429")}, tags=["node"])},
        "/v1/registries": {
            "get": _op("listRegistries", "Every registry this node knows",
                       {**_json("200", "Registries", "registries"), **_errors("401", "429")}, tags=["registries"]),
            "post": _op("createRegistry", "Create a registry (a signed record of grid.registries)",
                        {**_json("201", "WriteResult", "created", LOCATION), **_errors(*WRITE_ERRORS)},
                        tags=["registries"], params=[IDEMPOTENCY], body=_body("RegistryCreate")),
        },
        "/v1/registries/{registry}": {
            "get": _op("describeRegistry", "A registry's descriptor and live record count",
                       {**_json("200", "Registry", "descriptor", SOURCE), **_errors(*READ_ERRORS)},
                       tags=["registries"], params=[P_REGISTRY]),
        },
        "/v1/registries/{registry}/resolve": {
            "get": _op("resolveRegistry", "Look a registry up in the registry of registries (the Kademlia DHT): "
                       "its signed descriptor, verified, and the nodes that host it",
                       {**_json("200", "RegistryResolution", "the verified descriptor and its providers"),
                        **_errors(*READ_ERRORS, "413")},
                       tags=["registries"],
                       params=[P_REGISTRY, _query("fresh", {"type": "boolean", "default": False},
                                                  "ask the DHT even when this node resolved the name within the "
                                                  "last minute")],
                       description="Works for any published registry, known to this node or not. 404: nobody "
                                   "published the name (or its record lapsed). 503: this node runs no DHT "
                                   "(--no-p2p, --no-dht) or the lookup timed out. A record the DHT holds that "
                                   "fails its checks is answered with that check's typed error: "
                                   "signature_invalid (400), policy_denied (403, a delegation that may not "
                                   "publish), too_large (413), validation_failed (422, stale or misplaced)."),
        },
        "/v1/registries/{registry}/remote": {
            "get": _op("readRemoteRegistry", "Read a public registry that another federation hosts (or one of its "
                       "records), from one of its providers, verified",
                       {**_json("200", "RemoteRead", "where the records came from, what was checked, the records"),
                        **_errors(*READ_ERRORS)},
                       tags=["registries"],
                       params=[P_REGISTRY, _query("record", RECORD_ID, "only this record")],
                       description="The node resolves the registry in the DHT, asks its providers one by one "
                                   "and replays each answer into a scratch store that checks every signature, "
                                   "chain, delegation, ownership and schema; an answer that fails is refused "
                                   "and the next provider asked. 404: nobody published the name, or with "
                                   "record no such record. 403: the registry is not public. 503: this node runs "
                                   "no DHT, or no provider gave a verifiable answer (details.refusals says why, "
                                   "one line a provider)."),
        },
        "/v1/follows": {
            "get": _op("listFollows", "The public registries of other federations this node keeps a verified "
                       "copy of, with how each sync went",
                       {**_json("200", "Follows", "the followed registries"), **_errors("401", "403", "429", "503")},
                       tags=["follows"],
                       description="503: this node runs no DHT (--no-p2p, --no-dht), so it follows nothing. A "
                                   "token limited to one registry sees that one only."),
        },
        "/v1/follows/{registry}": {
            "put": _op("followRegistry", "Follow a public registry that another federation hosts: keep a "
                       "verified copy on this node, synced from its providers (admin)",
                       {**_json("200", "FollowStatus", "followed: the first sync passed every check"),
                        **_errors("400", "401", "403", "404", "409", "422", "429", "503")},
                       tags=["follows"], params=[P_REGISTRY],
                       description="The node resolves the registry in the DHT, fetches it from one of its "
                                   "providers into a scratch store that checks every signature, chain, "
                                   "delegation, ownership and schema, and the descriptor against the one its "
                                   "owner signed into the DHT; only then does it keep the copy (in a store of its "
                                   "own: the owner's federation's trust, never this one's, judges it) and "
                                   "answer. From then on it syncs the copy from the providers periodically "
                                   f"(every {FOLLOW_INTERVAL_S:g} s by default), and the record routes (GET "
                                   "/v1/registries/{registry}, .../records, .../records/{id}, .../history) "
                                   "answer from it with X-Registry-Source: followed. Following a registry "
                                   "followed already syncs it now. 404: nobody published the name. 403: not "
                                   "public, or not an admin token. 409: this node hosts the registry itself, "
                                   "follows as many as it may, or is unfollowing it right now. 503: no DHT, or no provider gave a verifiable "
                                   "answer (details.refusals says why)."),
            "delete": _op("unfollowRegistry", "Stop following a registry and delete this node's copy (admin)",
                          {**_json("200", "Unfollowed", "unfollowed: the copy is deleted"),
                           **_errors("400", "401", "403", "404", "409", "422", "429", "503")},
                          tags=["follows"], params=[P_REGISTRY],
                          description="404: this node does not follow it. 409: its first sync is still "
                                      "running. Reads in progress finish first."),
        },
        "/v1/peers": {
            "get": _op("listPeers", "This node's peer ID, the peers connected to it and the peers denied",
                       {**_json("200", "PeerStatus", "the peers"), **_errors("401", "403", "429", "503")},
                       tags=["peers"],
                       description="503: this node runs no federation (--no-p2p), or it is still starting. "
                                   "`rgrid peers` shows the whole peer table (addresses, latency, lag)."),
        },
        "/v1/peers/deny": {
            "post": _op("denyPeers", "Cut peers off and refuse them until they are allowed again (admin)",
                        {**_json("200", "PeersDenied", "denied: the peers are disconnected"),
                         **_errors("400", "401", "403", "413", "422", "429", "503")},
                        tags=["peers"], body=_body("PeerIds"),
                        description="The operator's partition switch: the node disconnects each peer, never "
                                    "dials it, drops a connection it opens, and neither serves it nor takes "
                                    "anything from it, until POST /v1/peers/allow (or the node restarts: a deny "
                                    "is not kept across restarts). A peer not yet known is denied ahead. "
                                    "Denying is one-sided: the peer keeps dialing and is refused each time; deny "
                                    "on both sides for a clean cut. 422: a peer ID that does not parse, or this "
                                    "node's own, named by its JSON pointer in details (/peers/3). 403: not an "
                                    "admin token. 503: no federation (--no-p2p)."),
        },
        "/v1/peers/allow": {
            "post": _op("allowPeers", "Take denied peers back: the node dials them again at once (admin)",
                        {**_json("200", "PeersAllowed", "allowed"),
                         **_errors("400", "401", "403", "413", "422", "429", "503")},
                        tags=["peers"], body=_body("PeerIds"),
                        description="Allowing a peer that is not denied changes nothing. A peer the node knows "
                                    "an address of is dialed at once, its backoff reset. 422: a peer ID that "
                                    "does not parse, named by its JSON pointer in details. 403: not an admin "
                                    "token. 503: no federation (--no-p2p)."),
        },
        records: {
            "get": _op("listRecords", "Records of a registry, filtered, in id order, cursor-paged",
                       {**_json("200", "Page", "a page", SOURCE), **_errors(*READ_ERRORS)},
                       tags=["records"], params=[P_REGISTRY, *LIST_PARAMS]),
            "post": _op("createRecord", "Create a record (id generated when absent)",
                        {**_json("201", "WriteResult", "created", {**LOCATION, **ETAG}),
                         **_errors(*WRITE_ERRORS, "410")},
                        tags=["records"], params=[P_REGISTRY, IDEMPOTENCY], body=_body("RecordCreate")),
        },
        record: {
            "get": _op("getRecord", "One record",
                       {**_json("200", "Record", "the record", {**ETAG, **SOURCE}),
                        "304": {"description": "If-None-Match matched",
                                "headers": {**_TRACE_HEADER, **ETAG, **SOURCE}},
                        **_errors(*READ_ERRORS, "410", "412")},
                       tags=["records"], params=[P_REGISTRY, P_ID, _query("include_deleted", {"type": "boolean"}),
                                                 _header("If-Match", "a quoted change id (or *): 412 unless it is "
                                                         "the record's current one"),
                                                 _header("If-None-Match", "a quoted change id")]),
            "put": _op("replaceRecord", "Replace a record's fields (and tags/links when given)",
                       {**_json("200", "WriteResult", "replaced", ETAG), **_errors(*WRITE_ERRORS, "410", "412")},
                       tags=["records"], params=[P_REGISTRY, P_ID, IF_MATCH],
                       body=_body("RecordReplace")),
            "patch": _op("patchRecord", "Merge-patch a record's fields (RFC 7386)",
                         {**_json("200", "WriteResult", "patched", ETAG), **_errors(*WRITE_ERRORS, "410", "412")},
                         tags=["records"], params=[P_REGISTRY, P_ID, IF_MATCH],
                         body={"required": True, "content": {
                             "application/merge-patch+json": {"schema": _ref("MergePatch")},
                             "application/json": {"schema": _ref("RecordPatch")}}}),
            "delete": _op("deleteRecord", "Delete a record (a signed tombstone; history stays)",
                          {**_json("200", "WriteResult", "deleted"), **_errors(*WRITE_ERRORS, "410", "412")},
                          tags=["records"], params=[P_REGISTRY, P_ID, IF_MATCH]),
        },
        record + "/history": {
            "get": _op("recordHistory", "Every change of a record, in the order this node accepted them",
                       {**_json("200", "History", "history", SOURCE), **_errors(*READ_ERRORS, "410")},
                       tags=["records"], params=[P_REGISTRY, P_ID]),
        },
        record + "/erase": {
            "post": _op("eraseRecord", "Erase a record's whole history here, and ask every node to (an erasure "
                        "notice in grid.erasures, signed by this node's key)",
                        {**_json("201", "WriteResult", "erased: the result names the notice (registry "
                                 "grid.erasures)", LOCATION),
                         **_json("200", "WriteResult", "erased already (status unchanged)"),
                         **_errors(*WRITE_ERRORS)},
                        tags=["records"], params=[P_REGISTRY, P_ID, IDEMPOTENCY], body=_body("RecordErase"),
                        description="Unlike DELETE (a signed tombstone that keeps the history), every change "
                                    "of the record loses its bytes on every node that honours the notice, the "
                                    "record's id is burned, and the blobs named are purged (a legal hold on a "
                                    "node keeps them there). Needs a writer token for the record's registry; "
                                    "the node's key must be allowed to delete the record (its owner org): else "
                                    "403 and nothing is written. Cannot be undone. docs/erasure.md."),
        },
        "/v1/erasures": {
            "get": _op("listErasures", "Records erasure notices name on this node, and what became of each",
                       {**_json("200", "Erasures", "erasures, in (registry, record) order"),
                        **_errors("401", "403", "429")},
                       tags=["records"]),
        },
        "/v1/erasures/places": {
            "get": _op("listErasedPlaces", "Places of chains this node holds without their bytes, run by run, "
                       "and the supplements it owes",
                       {**_json("200", "ErasedPlaces", "runs, in (registry, author, first) order"),
                        **_errors("401", "403", "429")},
                       tags=["records"],
                       description="Why a version vector counts places whose changes no node serves: an "
                                   "erasure notice, a peer's word that they are gone, or a revocation. "
                                   "docs/erasure.md."),
        },
        "/v1/records": {
            "get": _op("listAllRecords", "Records across registries, in (registry, id) order",
                       {**_json("200", "Page", "a page"), **_errors(*READ_ERRORS)},
                       tags=["records"], params=LIST_PARAMS),
        },
        "/v1/changes": {
            "get": _op(
                "changes", "The changefeed after a cursor: a page, a long-poll, or Server-Sent Events",
                {"200": {"description": "events (JSON), or an endless SSE stream with Accept: text/event-stream",
                         "headers": _TRACE_HEADER,
                         "content": {"application/json": {"schema": _ref("Changes")},
                                     "text/event-stream": {"schema": STRING}}},
                 **_errors(*READ_ERRORS)},
                tags=["changes"],
                params=[_query("since", SEQ, "events after this feed sequence"),
                        _query("registry", REGISTRY_NAME), _query("kind", KIND_NAME),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}),
                        _query("wait", {"type": "number", "minimum": 0, "maximum": 30},
                               "long-poll: wait up to this many seconds for an event when there is none"),
                        _header("Last-Event-ID", "SSE resume: the id of the last event received")],
                description="With Accept: text/event-stream the answer is an SSE stream: each event has "
                            "id: <feed seq>, event: <type>, data: <FeedEvent JSON>. Reconnect with Last-Event-ID. "
                            "A page with registry or kind looks at a bounded slice of the feed (5,000 events): "
                            "it may hold no events with next below head; read on from next until next "
                            "reaches head. 422: since (or Last-Event-ID) beyond this node's feed head, a "
                            "cursor of another node or of before its store was restored."),
        },
        "/v1/changes/ws": {
            "get": _op("changesWebSocket", "The changefeed over a WebSocket (one FeedEvent JSON per message)",
                       {"101": {"description": "switching protocols"}, **_errors(*READ_ERRORS)},
                       tags=["changes"],
                       params=[_query("since", SEQ), _query("registry", REGISTRY_NAME), _query("kind", KIND_NAME)]),
        },
        "/v1/audit": {
            "get": _op("auditLog", "Audit ledger entries (admin)",
                       {**_json("200", "Audit", "entries"), **_errors("400", "401", "403", "422", "429")},
                       tags=["audit"],
                       params=[_query("since", SEQ), _query("limit", {"type": "integer", "minimum": 1,
                                                                      "maximum": 10000, "default": 100}),
                               _query("reverse", {"type": "boolean", "default": False}),
                               _query("target", RECORD_TARGET,
                                      "only the entries about this record (REGISTRY/ID): its writes, reads, "
                                      "denials and settled conflicts (action merge)")]),
        },
        "/v1/audit/verify": {
            "get": _op("auditVerify", "Recheck the hash chain and every signed tree head (admin)",
                       {**_json("200", "AuditVerify", "intact"), **_errors("401", "403", "429")}, tags=["audit"]),
        },
        "/v1/disputes": {
            "get": _op("listDisputes", "Field disputes and equivocations this node knows",
                       {**_json("200", "Disputes", "disputes: field disputes, then equivocations, each in id order"),
                        **_errors("400", "401", "403", "422", "429")},
                       tags=["disputes"],
                       params=[_query("status", {"enum": list(DISPUTE_STATUSES)}, "keep one status")],
                       description="A token limited to one registry sees the disputes of that registry only."),
        },
        "/v1/disputes/{id}": {
            "get": _op("getDispute", "One dispute in full: the competing writes and a diff, or both envelopes of "
                       "an equivocation, and every resolution filed with whether it counts",
                       {**_json("200", "Dispute", "the dispute"), **_errors(*READ_ERRORS)},
                       tags=["disputes"], params=[P_DISPUTE]),
        },
        "/v1/disputes/{id}/resolve": {
            "post": _op("resolveDispute", "File a signed resolution (a record of grid.disputes) as this node's key",
                        {**_json("201", "WriteResult", "filed", {**LOCATION, **ETAG}), **_errors(*WRITE_ERRORS)},
                        tags=["disputes"], params=[P_DISPUTE, IDEMPOTENCY], body=_body("DisputeResolve"),
                        description="Needs a writer token not limited to a registry (the record routes never "
                                    "write grid.disputes). The node's key must be "
                                    "allowed to decide (a federation admin, the owner org of the registry or of "
                                    "the record; for an equivocation, the key's own org): else 403 and nothing "
                                    "is filed. A value that would leave the record outside its kind's schema: "
                                    "422 schema_violation."),
        },
        "/v1/policy/explain": {
            "post": _op("explainPolicy", "What every node would decide for a subject's action, and which rule "
                        "decides it (the write path's own checks; nothing is written)",
                        {**_json("200", "PolicyDecision", "the decision"), **_errors(*READ_ERRORS, "413")},
                        tags=["policy"], body=_body("PolicyExplain")),
        },
        "/v1/kinds": {
            "get": _op("listKinds", "Every record kind (built in and registered)",
                       {**_json("200", "Kinds", "kinds"), **_errors("401", "429")}, tags=["kinds"]),
            "post": _op("registerKind", "Register a kind version (a record of grid.kinds)",
                        {**_json("201", "WriteResult", "registered", LOCATION), **_errors(*WRITE_ERRORS)},
                        tags=["kinds"], params=[IDEMPOTENCY], body=_body("KindCreate")),
        },
        "/v1/kinds/{name}": {
            "get": _op("getKind", "A kind's JSON Schema (latest version unless asked)",
                       {**_json("200", "Kind", "kind"), **_errors(*READ_ERRORS)}, tags=["kinds"],
                       params=[_path("name", KIND_NAME),
                               _query("version", {"type": "integer", "minimum": 1, "maximum": 2**31})]),
        },
        "/v1/search": {
            "post": _op("searchRecords", "Search the records this node holds: full text, filters, facets, "
                        "sorting and pages",
                        {**_json("200", "SearchResult", "the matching records, best first or in sort order"),
                         **_errors("400", "401", "403", "413", "422", "429", "501", "503")},
                        tags=["search"], body=_body("SearchQuery"),
                        description="The query language is one JSON object (SearchQuery; GET /v1/search/fields "
                                    "lists the fields a filter, sort or facet may use). A malformed part is "
                                    "refused with 422 and its JSON pointer in details[0].path. The index follows "
                                    "the changefeed within a fraction of a second of each commit: "
                                    "indexed_through says how far it got. A token limited to one registry "
                                    "searches that registry only (403 if the query names another). 503: the node "
                                    "was started with --no-search, or its index is still opening."),
        },
        "/v1/search/fields": {
            "get": _op("searchFields", "The fields a search query may filter, sort and facet by, with their types "
                       "and operators",
                       {**_json("200", "SearchFields", "the fields"), **_errors("401", "429")}, tags=["search"]),
        },
        "/v1/index": {
            "get": _op("indexStatus", "How far the search index has followed the changefeed",
                       {**_json("200", "IndexStatus", "its state"), **_errors("401", "429", "503")},
                       tags=["search"], description="503: the node was started with --no-search."),
        },
        "/v1/index/rebuild": {
            "post": _op("rebuildIndex", "Index the whole changefeed again (admin)",
                        {**_json("200", "IndexRebuild", "rebuilt"), **_errors("401", "403", "429", "503")},
                        tags=["search"],
                        description="A repair: the index is emptied and every record indexed again from the "
                                    "feed; the answer comes when it is done. Searches meanwhile see a partial "
                                    "index. 503: the node was started with --no-search."),
        },
        "/v1/views": {
            "get": _op("listViews", "Every saved view this node holds, and what it keeps of each",
                       {**_json("200", "Views", "the views"), **_errors("401", "429", "503")}, tags=["views"],
                       description="Views are records of grid.views, replicated like any record; this node "
                                   "materializes the oldest views of its own org (materialized: true) and answers "
                                   "the others live."),
        },
        "/v1/views/{name}": {
            "get": _op("getView", "A saved view and a page of its results as records, in the query's order",
                       {**_json("200", "ViewPage", "the view and its results"), **_errors(*READ_ERRORS, "410")},
                       tags=["views"],
                       params=[P_VIEW, _query("limit", {"type": "integer", "minimum": 1,
                                                        "maximum": saved_views.MAX_MEMBERS},
                                              "results per page (default: the query's limit, else "
                                              f"{saved_views.DEFAULT_PAGE}; a view answered live pages at most "
                                              f"{search_query.MAX_LIMIT})"),
                               _query("cursor", LIST_CURSOR,
                                      "next_cursor of the previous page")],
                       description="From the materialized results when this node keeps them, else by running the "
                                   "query now. A view whose query is refused answers 200 with view.error and no "
                                   "items. A token limited to one registry sees that registry's results only. "
                                   "503: the node keeps no search index (--no-search)."),
            "put": _op("putView", "Create or replace a saved view (a signed record of grid.views)",
                       {**_json("201", "WriteResult", "created", {**LOCATION, **ETAG}),
                        **_json("200", "WriteResult", "replaced (or unchanged)", {**LOCATION, **ETAG}),
                        **_errors(*WRITE_ERRORS, "410")},
                       tags=["views"], params=[P_VIEW], body=_body("ViewPut"),
                       description="The query is parsed first: a malformed part is refused with 422 and its JSON "
                                   "pointer under /query in details[0].path. Needs a writer token; only the "
                                   "owner org's nodes replace or delete a view (403)."),
            "delete": _op("deleteView", "Delete a saved view (a signed tombstone)",
                          {**_json("200", "WriteResult", "deleted"), **_errors(*WRITE_ERRORS, "410")},
                          tags=["views"], params=[P_VIEW]),
        },
        "/v1/views/{name}/events": {
            "get": _op(
                "viewEvents", "A materialized view's changes: results added, updated, removed",
                {"200": {"description": "events (JSON), or an endless SSE stream with Accept: text/event-stream",
                         "headers": _TRACE_HEADER,
                         "content": {"application/json": {"schema": _ref("ViewChanges")},
                                     "text/event-stream": {"schema": STRING}}},
                 **_errors(*READ_ERRORS, "409", "410")},
                tags=["views"],
                params=[P_VIEW, _query("after", {"type": "string", "maxLength": 64},
                                       "the event_id (or SSE id) of the last event received"),
                        _header("Last-Event-ID", "SSE resume: the id of the last event received")],
                description="With Accept: text/event-stream the answer is an SSE stream: first, unless it "
                            "resumes, event reset (data: {members, through}); then events added, updated and "
                            "removed (data: {registry, id, seq}), each with id: GENERATION.N; reset again when "
                            "the client is further behind than the events the node keeps, or the view is "
                            "edited; deleted, and the end, when the view is deleted. Reconnect with "
                            "Last-Event-ID. 409: this node answers the view live (another org's, or beyond "
                            "the views it keeps), or its query is refused. 503: the view is being "
                            "materialized (JSON; a stream waits), or the node keeps no search index."),
        },
        "/v1/tokens": {
            "get": _op("listTokens", "Every token (never their secrets) (admin)",
                       {**_json("200", "Tokens", "tokens"), **_errors("401", "403", "429")}, tags=["tokens"]),
            "post": _op("createToken", "Create a token; its secret is in this answer only (admin)",
                        {**_json("201", "TokenCreated", "created", LOCATION), **_errors(*WRITE_ERRORS)},
                        tags=["tokens"], body=_body("TokenCreate")),
        },
        "/v1/tokens/{token_id}": {
            "delete": _op("revokeToken", "Revoke a token (admin)",
                          {**_json("200", "Token", "revoked"), **_errors("401", "403", "404", "409", "429")},
                          tags=["tokens"], params=[_path("token_id", TOKEN_ID)],
                          description="The node's own CLI token (local: true) is refused with 409 (and "
                                      "audited): it is revoked when the node stops."),
        },
        **_mcp_paths(),
        **_discovery_paths(),
        **_asset_paths(),
    }


def _linked(paths: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI links: how an answer's values feed the next request (what a
    client follows, and schemathesis's stateful tests walk)."""
    record = {"registry": "$request.path.registry", "id": "$response.body#/id"}
    follows = {
        ("/v1/registries", "post", "201"): {"DescribeRegistry": ("describeRegistry",
                                                                 {"registry": "$response.body#/id"})},
        ("/v1/registries/{registry}/records", "post", "201"): {
            "GetRecord": ("getRecord", record), "RecordHistory": ("recordHistory", record),
            "PatchRecord": ("patchRecord", {**record, "header.If-Match": "$response.header.ETag"}),
            "DeleteRecord": ("deleteRecord", {**record, "header.If-Match": "$response.header.ETag"})},
        ("/v1/kinds", "post", "201"): {"GetKind": ("getKind", {"name": "$request.body#/name",
                                                              "version": "$request.body#/version"})},
        ("/v1/tokens", "post", "201"): {"RevokeToken": ("revokeToken", {"token_id": "$response.body#/id"})},
        ("/v1/records", "get", "200"): {
            "NextPage": ("listAllRecords", {"cursor": "$response.body#/next_cursor"}),
            "GetFirstRecord": ("getRecord", {"registry": "$response.body#/items/0/registry",
                                             "id": "$response.body#/items/0/id"})},
        **{("/v1/views/{name}", "put", status): {"GetView": ("getView", {"name": "$request.path.name"}),
                                                 "DeleteView": ("deleteView", {"name": "$request.path.name"})}
           for status in ("200", "201")},
        # An upload walks by its id; its blob by the CID finalize answers.
        ("/v1/uploads", "post", "201"): {
            "GetUpload": ("getUpload", {"id": "$response.body#/id"}),
            "FinalizeUpload": ("finalizeUpload", {"id": "$response.body#/id"}),
            "CancelUpload": ("cancelUpload", {"id": "$response.body#/id"})},
        ("/v1/uploads/{id}/finalize", "post", "200"): {
            "GetBlob": ("getBlob", {"cid": "$response.body#/cid"}),
            "GetBlobMeta": ("getBlobMeta", {"cid": "$response.body#/cid"})},
    }
    for (path, method, status), links in follows.items():
        paths[path][method]["responses"][status]["links"] = {
            name: {"operationId": op_id, "parameters": params} for name, (op_id, params) in links.items()}
    return paths


def _every_route_may_refuse(paths: dict[str, Any]) -> dict[str, Any]:
    """What the bridge answers before any route's handler runs, declared on
    every operation: a query parameter given twice is refused, 400
    malformed_input (app.py _refuse_repeated_parameters), in the shape of
    the route's family (the MCP Registry API's under /v0.1; no body to a HEAD)."""
    why = "Malformed request; on every route: a query parameter given twice"
    for path, item in paths.items():
        for method, op in item.items():
            responses = op.get("responses") if isinstance(op, dict) else None
            if responses is None or "400" in responses:
                continue
            if path.startswith("/v0.1"):
                responses["400"] = {**_mcp_errors("400")["400"], "description": why}
            elif method == "head":
                responses["400"] = {"description": why, "headers": _TRACE_HEADER}
            else:
                responses["400"] = {**_errors("400")["400"], "description": why}
    return paths


def build_spec(server_url: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {"title": "RegistryGrid node bridge", "version": API_VERSION,
                 "description": "The local HTTP API of a RegistryGrid node. Every error is "
                                "{error: {code, message, details, trace_id}} (under /v0.1, the MCP Registry "
                                "API's routes: {error: message, code, details, trace_id}, that API's shape); "
                                "every answer carries X-Trace-Id. "
                                f"Request bodies are capped at {MAX_BODY_BYTES} bytes."},
        "paths": _linked(_every_route_may_refuse(_paths())),
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "rgt_<id>.<secret>"}},
        },
        "security": [{"bearer": []}],
    }
    if server_url:
        spec["servers"] = [{"url": server_url}]
    return spec


@lru_cache(maxsize=1)
def _registry() -> Registry:
    resource = Resource(contents=build_spec(), specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


@cache
def schema_validator(name: str) -> Draft202012Validator:
    """A validator for ``#/components/schemas/<name>`` with its $refs resolved in this document."""
    return Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{name}"}, registry=_registry())


def request_validator(name: str) -> Draft202012Validator:
    return schema_validator(name)


@cache
def _fast_request_validator(name: str) -> jsonschema_rs.Validator:
    registry = jsonschema_rs.Registry([(SPEC_URI, build_spec())], draft=jsonschema_rs.Draft202012)
    return jsonschema_rs.Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{name}"},
                                              registry=registry, offline=True)


def _integer_members(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with every member the schema types as an integer made an int.

    JSON has one number type, and JSON Schema counts 3.0 an integer (2020-12,
    validation 6.1.1), so a schema-valid body may carry one where the code
    takes an int; msgspec reads it as a float. Follows properties, items and
    $refs to components; never enters an open object (JsonValue: a record's
    fields keep the numbers they were given)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name in ("JsonValue", "JsonObject"):
            return value
        value = _integer_members(SCHEMAS[name], value)
    for branch in (*schema.get("allOf", ()), *schema.get("anyOf", ())):
        value = _integer_members(branch, value)
    if isinstance(value, float) and value.is_integer() and "integer" in (
            schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]):
        return int(value)
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                value[key] = _integer_members(sub, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [_integer_members(schema["items"], item) for item in value]
    return value


def integer_members(name: str, body: Any) -> Any:
    return _integer_members(SCHEMAS[name], body)


def request_errors(name: str, body: Any) -> list[jsonschema.ValidationError]:
    """Every way ``body`` breaks ``#/components/schemas/<name>``, or [].

    jsonschema (Python) is the reference and writes the error reports, but
    costs ~0.1-0.2 ms a body, a tenth of a lone POST; so jsonschema-rs
    judges first, on bodies it reads exactly as jsonschema does (the
    schema catalog's rule), and a body it passes is done. A body it fails,
    or cannot judge, goes to jsonschema, whose verdict stands.
    """
    if rust_reads_as_python(body) and _fast_request_validator(name).is_valid(body):
        return []
    found = [closest(e) for e in request_validator(name).iter_errors(body)]
    return sorted(found, key=lambda e: list(map(str, e.absolute_path)))
