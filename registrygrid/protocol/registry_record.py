"""A registry's descriptor as the registry of registries' DHT holds it.

The Kademlia DHT maps ``/rgrid-registry/<name>`` to one signed value: the
registry's descriptor (its record in ``grid.registries``: kinds, write and
conflict policies, replication), who owns it, which federations host it,
and the signature of a key that speaks for the owner org. Any node may
store and serve such values; every node checks each one it is given, on
put and on get (``read_record``), so a forged, stale or oversized value
is refused wherever it lands. Sans-IO: encoding, signing, checking and
choosing; node/dht.py does the networking.

Choosing between valid values for one name (``choose``):
  - one owner: the newest descriptor (its change clock, then the newest
    signature), so an update replaces what it updates;
  - different owners: the earliest claim (the registry's signed creation
    time), so a name is first-come. A claim's time is the owner's own
    statement: an org that backdates a claim can take a name nobody has
    published yet, never one already stored at a node (stored values are
    only replaced by a value ``choose`` prefers: the DHT refuses the rest).
    Transfers are not built yet.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from registrygrid.errors import (
    MalformedInput,
    PolicyDenied,
    RegistryError,
    TooLarge,
    ValidationError,
)
from registrygrid.identity.delegation import (
    Delegation,
    decode_delegation,
    verify_delegation,
)
from registrygrid.identity.keys import KeyPair, verify_did_signature
from registrygrid.protocol import names

NAMESPACE = "rgrid-registry"
# A descriptor is a few hundred bytes to a few KiB (registry.v1.json caps its
# lists); 16 KiB leaves room for them and is far under the 64 KiB that DHT
# implementations accept for a value (go-libp2p-kad-dht's record limit).
MAX_VALUE_BYTES = 16 * 1024
# go-libp2p-kad-dht's defaults, which py-libp2p 0.8.1 does not enforce on
# values: a record lives 48 h and its publisher republishes every 22 h, so a
# live owner's value never lapses and a dead one's does within two days.
RECORD_MAX_AGE_MS = 48 * 3600 * 1000
REPUBLISH_SECONDS = 22 * 3600
# A signature dated this far ahead of the checker's clock is refused (the
# engine's HLC drift bound is the same order of magnitude).
MAX_FUTURE_MS = 5 * 60 * 1000
_DOMAIN = b"registrygrid/dht-descriptor/v1\0"
# Roles of a delegation that may publish its org's registries.
PUBLISHING_ROLES = ("node", "writer", "admin")


class RecordBody(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    name: str
    owner: str  # did:key of the owner org
    claimed_at: int  # ms: the registry's creation (its descriptor's created_at)
    version: tuple[int, int]  # HLC of the descriptor's latest change
    change_id: str  # that change's ID
    descriptor: dict[str, Any]  # the grid.registries record's fields
    federations: list[str]  # federations that host it (ids)
    issued_at: int  # ms: when this copy was signed (each republish signs anew)
    signer: str  # did:key of the signing key: the owner org, or a key it delegated
    delegation: bytes  # the owner org's delegation of the signer; empty when the owner signs


class SignedRecord(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    body: bytes
    signature: bytes


def dht_key(name: str) -> str:
    """The DHT key of a registry's descriptor."""
    return f"/{NAMESPACE}/{names.registry_name(name)}"


def provider_key(name: str) -> str:
    """The key under which the nodes hosting a registry announce themselves:
    the hex of a sha2-256 multihash of the descriptor's key (providers are
    keyed by content-like multihashes in every libp2p DHT)."""
    return (b"\x12\x20" + hashlib.sha256(dht_key(name).encode()).digest()).hex()


def sign_record(key: KeyPair, delegation: Delegation | None, *, name: str, owner: str, claimed_at: int,
                version: tuple[int, int], change_id: str, descriptor: dict[str, Any], federations: list[str],
                issued_at: int) -> bytes:
    body = RecordBody(name=name, owner=owner, claimed_at=claimed_at, version=tuple(version), change_id=change_id,
                      descriptor=dict(descriptor), federations=sorted(federations), issued_at=issued_at,
                      signer=key.did, delegation=delegation.encode() if delegation is not None else b"")
    encoded = msgspec.msgpack.encode(body)
    value = msgspec.msgpack.encode(SignedRecord(encoded, key.sign(_DOMAIN + encoded)))
    if len(value) > MAX_VALUE_BYTES:
        raise TooLarge(f"the descriptor of {name} signs to {len(value)} bytes; the DHT takes {MAX_VALUE_BYTES}")
    return value


def read_record(key: str, value: bytes, *, now_ms: int) -> RecordBody:
    """The record ``value`` holds, checked as its own evidence: size, shape,
    the key it is stored under, the signature, the signer's authority for
    the owner org at signing time, and its age. Typed errors say why not."""
    if len(value) > MAX_VALUE_BYTES:
        raise TooLarge(f"a registry record of {len(value)} bytes exceeds {MAX_VALUE_BYTES}")
    try:
        signed = msgspec.msgpack.decode(value, type=SignedRecord)
        body = msgspec.msgpack.decode(signed.body, type=RecordBody)
    except msgspec.DecodeError as exc:
        raise MalformedInput(f"malformed registry record: {exc}") from None
    if key != dht_key(body.name):
        raise ValidationError(f"a record of {body.name!r} can't be stored under {key!r}")
    if body.descriptor.get("name", body.name) != body.name:
        raise ValidationError("the record's descriptor names another registry")
    verify_did_signature(body.signer, _DOMAIN + signed.body, signed.signature)
    if body.signer != body.owner:
        delegation = decode_delegation(body.delegation)
        claims = verify_delegation(delegation, org=body.owner, subject=body.signer, now=body.issued_at / 1000)
        if not set(PUBLISHING_ROLES) & set(claims.roles):
            raise PolicyDenied(f"{body.signer}'s delegation grants {list(claims.roles)}, no role that publishes")
    if body.issued_at > now_ms + MAX_FUTURE_MS:
        raise ValidationError(f"registry record of {body.name} is dated {body.issued_at - now_ms} ms ahead")
    if now_ms - body.issued_at > RECORD_MAX_AGE_MS:
        raise ValidationError(f"registry record of {body.name} is stale: signed "
                              f"{(now_ms - body.issued_at) // 3_600_000} h ago, republished every "
                              f"{REPUBLISH_SECONDS // 3600} h")
    return body


def choose(bodies: list[RecordBody]) -> int:
    """Which of several valid records for one name holds: the earliest claim
    among owners, then that owner's newest descriptor (module docstring)."""
    def rank(i: int) -> tuple[Any, ...]:
        b = bodies[i]
        first_claim = min(x.claimed_at for x in bodies if x.owner == b.owner)
        return (first_claim, b.owner, tuple(-v for v in b.version), -b.issued_at, b.change_id)

    return min(range(len(bodies)), key=rank)


def readable(key: str, value: bytes, now_ms: int) -> RecordBody | None:
    """``read_record``, or None when the value is refused."""
    try:
        return read_record(key, value, now_ms=now_ms)
    except RegistryError:
        return None
