"""A materialized record: the one definition of its shape.

The engine stores one map per record (msgpack, ``storage/records.py``);
reads, listings, the SDK and the bridge hand that map out as is, and the
bridge's OpenAPI "Record" and "Link" components are generated from the
Structs below.

A map, not an array (``array_like``): everything that reads a stored record
reads it as a dict by key, and existing stores hold maps. The fields are in
the order the engine writes the map's keys, so ``msgspec.msgpack.encode``
of a Record gives the same bytes the engine stores for the same values
(tests/test_record_shape.py checks it against real stored records).

The constraints (``Meta``) are the ones local writes and a create's
snapshot enforce (protocol/names.py, crdt/snapshot.py, envelope.py). They
are checked when a value is decoded or converted into a Record, not when
one is constructed: msgspec checks types on decode only. A remote
Automerge update is not yet checked this far: ``Engine._check_state``
checks its kind, fields and owner but not its links or the type of its
schema, so such a record could fail ``msgspec.convert(..., Record)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from registrygrid.crdt.resolver import FieldConflict
from registrygrid.protocol import envelope, names

# Names, as protocol/names.py checks them on every local write and on a
# create's snapshot (crdt/snapshot.py).
RegistryName = Annotated[str, Meta(pattern=names.REGISTRY_NAME.pattern)]
RecordId = Annotated[str, Meta(pattern=names.RECORD_ID.pattern)]
KindName = Annotated[str, Meta(pattern=names.KIND_NAME.pattern)]
Tag = Annotated[str, Meta(pattern=names.TAG.pattern)]
# A change ID in text form (envelope.cid_to_str): multibase 'b' and the
# lower-case, unpadded base32 of a CID_BYTES-long CIDv1.
_CID_TEXT = len(envelope.cid_to_str(bytes(envelope.CID_BYTES))) - 1
ChangeId = Annotated[str, Meta(pattern=f"^b[a-z2-7]{{{_CID_TEXT}}}$",
                               description="a change ID: the text form of its CIDv1")]
# A hybrid logical clock's parts: envelope.py refuses a change whose wall
# time is not in [0, 2**48) ms or whose counter is not in [0, 2**32); one
# bound serves both, as JSON Schema cannot bound a list's items by position.
WallMs = Annotated[int, Meta(ge=0, lt=2**48)]
# A snapshot's created.at is an int64 >= 0 (crdt/snapshot.py).
CreatedMs = Annotated[int, Meta(ge=0, le=2**63 - 1)]
# A kind version: envelope.py refuses one outside [1, 2**16).
SchemaVersion = Annotated[int, Meta(ge=1, lt=2**16)]


class Link(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A typed pointer from a record to another record."""

    rel: Annotated[Tag, Meta(description="what the target is to this record, a tag-shaped word")]
    registry: Annotated[RegistryName, Meta(description="the target's registry")]
    record: Annotated[RecordId, Meta(description="the target's id")]


class Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A record as this node materialized it from the changes it applied."""

    registry: Annotated[RegistryName, Meta(description="the registry holding the record")]
    id: Annotated[RecordId, Meta(description="the record's id, unique in its registry")]
    kind: Annotated[KindName, Meta(description="the record's kind, fixed at create")]
    schema: Annotated[SchemaVersion, Meta(description="the kind version the fields follow")]
    owner: Annotated[str, Meta(description="did:key of the org (or node) that owns the record")]
    tags: Annotated[list[str], Meta(description="sorted, unique tags (a set: concurrent adds merge)")]
    links: Annotated[list[Link], Meta(description="links to other records, in the order written")]
    fields: Annotated[dict[str, Any], Meta(description="the kind's JSON object, valid against its schema version")]
    deleted: Annotated[bool, Meta(description="a tombstone: deleted records keep their id, kind and history")]
    created_at: Annotated[CreatedMs | None, Meta(description="Unix ms of the create; null if unknown")]
    created_by: Annotated[str | None, Meta(description="did:key of the create's author; null if unknown")]
    updated_at: Annotated[WallMs, Meta(description="updated_hlc[0], for readers that want a plain time")]
    updated_hlc: Annotated[list[WallMs], Meta(min_length=2, max_length=2,
                                                description="hybrid logical clock [wall ms, counter] of the "
                                                            "latest change: the greatest (hlc, change id) wins")]
    updated_by: Annotated[str, Meta(description="did:key of the latest change's author")]
    change_id: Annotated[ChangeId, Meta(description="ID of the latest change (the ETag)")]
    revision: Annotated[int, Meta(ge=1, description="how many changes make the record, 1 after its create")]
    conflicts: Annotated[list[FieldConflict], Meta(
        description="fields that concurrent changes wrote differently, each with the value its conflict rule "
                    "chose and every competing write (empty when none)")]


# The replicated content of a record: what is equal on every node that
# applied the same changes, whatever the order. updated_at is left out
# because it repeats updated_hlc[0]. The order is fixed: record digests
# (engine.record_digest, the audit ledger's before/after) hash this list,
# so reordering it changes every digest.
REPLICATED_FIELDS: tuple[str, ...] = (
    "registry", "id", "kind", "schema", "owner", "tags", "links", "fields", "deleted", "created_at",
    "created_by", "updated_hlc", "updated_by", "change_id", "revision",
)
_HLC_AT = REPLICATED_FIELDS.index("updated_hlc")


def replicated_content(record: Mapping[str, Any]) -> list[Any]:
    """The replicated content of a stored record, as the list its digest hashes."""
    out = [record[name] for name in REPLICATED_FIELDS]
    # A clock may come as a tuple (fresh from an envelope) or a list (read
    # back from msgpack); a digest must not tell the two apart.
    out[_HLC_AT] = list(out[_HLC_AT])
    return out


def record_json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12, OpenAPI 3.1's dialect) of Record and of the
    Link it refers to, as OpenAPI components: ``{"Record": ..., "Link": ...}``
    with references of the form ``#/components/schemas/<name>``."""
    _, components = msgspec.json.schema_components((Record,), ref_template="#/components/schemas/{name}")
    return components
