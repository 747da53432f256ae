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
    statement, and records lapse after 48 h, so nothing proves an older
    claim false: an org that backdates a claim can take a name whose
    owner's record it outdates. First-come holds between honest clocks.

Transfers. An owner hands a name to another org by signing a transfer with
its org key (``sign_transfer``: name, from, to, the name's claim time, when).
A record carries the chain of transfers from the name's first claimant
(``transfers``): every link signed by the org that gave the name away, each
given by the one before received it, all with the first claim's time. The
chain's last receiver holds the name; the last giver may still publish its
record with the chain (a pointer, until the receiver publishes its own).
Among records descending from one first claim, the longest chain wins, so
an owner can't take a name back; an owner that signs two transfers of one
name equivocates, and the one it dated first wins.
"""

from __future__ import annotations

import base64
import binascii
import functools
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
_TRANSFER_DOMAIN = b"registrygrid/dht-transfer/v1\0"
# A name changes hands rarely; the chain rides in every copy of its record.
MAX_TRANSFERS = 16
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
    transfers: list[bytes] = []  # signed transfers from the first claimant, in order (module docstring)


class TransferBody(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    name: str
    from_owner: str  # did:key of the org giving the name away: the signer
    to_owner: str  # did:key of the org receiving it
    claimed_at: int  # ms: the name's first claim, carried along every transfer
    at: int  # ms: when it was signed


class SignedTransfer(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    body: bytes  # a TransferBody
    signature: bytes  # by from_owner's org key


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
                issued_at: int, transfers: list[bytes] | None = None) -> bytes:
    body = RecordBody(name=name, owner=owner, claimed_at=claimed_at, version=tuple(version), change_id=change_id,
                      descriptor=dict(descriptor), federations=sorted(federations), issued_at=issued_at,
                      signer=key.did, delegation=delegation.encode() if delegation is not None else b"",
                      transfers=list(transfers or ()))
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
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:  # nested too deep; bad UTF-8
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
        if claims.expires <= now_ms / 1000:
            # And it holds still: the signer picks issued_at, so a key whose
            # delegation lapsed could date a record back into its old
            # window and take the name over for two days. The owner's nodes
            # republish under their current delegation.
            raise PolicyDenied(f"{body.signer}'s delegation expired at {claims.expires}; "
                               f"a record it signed counts no longer")
    # Shaped as every descriptor a node stores (registry.v1.json): one of
    # another shape (kinds: 5) passed on put and get, and every remote read
    # and follow of the name then failed on it with a TypeError.
    _descriptor_schema().validate("registry", 1, body.descriptor)
    if body.issued_at > now_ms + MAX_FUTURE_MS:
        raise ValidationError(f"registry record of {body.name} is dated {body.issued_at - now_ms} ms ahead")
    if now_ms - body.issued_at > RECORD_MAX_AGE_MS:
        raise ValidationError(f"registry record of {body.name} is stale: signed "
                              f"{(now_ms - body.issued_at) // 3_600_000} h ago, republished every "
                              f"{REPUBLISH_SECONDS // 3600} h")
    if body.version[0] > body.issued_at + MAX_FUTURE_MS:
        # The newest version wins within one owner: a version from the far
        # future (2**62) held the name against every later descriptor of
        # its owner for as long as its signer republished it.
        raise ValidationError(f"registry record of {body.name} has a descriptor version dated "
                              f"{body.version[0] - body.issued_at} ms after its own signing")
    if not 0 <= body.claimed_at <= body.issued_at + MAX_FUTURE_MS:  # the claim's clock may be another node's
        raise ValidationError(f"registry record of {body.name} claims the name at {body.claimed_at}, not between "
                              f"the epoch and its own signing ({body.issued_at})")
    _check_chain(body, now_ms)
    return body


@functools.cache
def _descriptor_schema() -> Any:
    from registrygrid.schemas import SchemaCatalog  # the built-in kinds alone; imported late: schemas import protocol

    return SchemaCatalog()


def _check_chain(body: RecordBody, now_ms: int) -> None:
    """The record's transfers form one chain from the name's first claim to
    its owner (or to the org its owner gave the name to)."""
    if len(body.transfers) > MAX_TRANSFERS:
        raise TooLarge(f"a registry record carries at most {MAX_TRANSFERS} transfers")
    previous: TransferBody | None = None
    for signed in body.transfers:
        link = read_transfer(signed)
        if link.name != body.name or link.claimed_at != body.claimed_at:
            raise ValidationError(f"a transfer in the record of {body.name} is of another name or claim")
        if previous is not None and (link.from_owner != previous.to_owner or link.at < previous.at):
            raise ValidationError(f"the transfers in the record of {body.name} don't form a chain")
        if link.at > now_ms + MAX_FUTURE_MS:
            raise ValidationError(f"a transfer of {body.name} is dated {link.at - now_ms} ms ahead")
        previous = link
    if previous is not None and body.owner not in (previous.to_owner, previous.from_owner):
        raise ValidationError(f"{body.owner} publishes {body.name}, which its transfers give to {previous.to_owner}")


def sign_transfer(org_key: KeyPair, *, name: str, to_owner: str, claimed_at: int, at: int) -> bytes:
    """A transfer of ``name`` from ``org_key``'s org to ``to_owner``, signed
    by the org key itself: giving a name away is the org's act, not a node's."""
    if not to_owner.startswith("did:key:"):
        raise ValidationError(f"a name is transferred to an org's did:key, not {to_owner!r}")
    if to_owner == org_key.did:
        raise ValidationError(f"{name} belongs to {to_owner} already")
    body = msgspec.msgpack.encode(TransferBody(names.registry_name(name), org_key.did, to_owner, claimed_at, at))
    return msgspec.msgpack.encode(SignedTransfer(body, org_key.sign(_TRANSFER_DOMAIN + body)))


def read_transfer(data: bytes) -> TransferBody:
    """A transfer, its signature checked against the org that gave the name away."""
    try:
        signed = msgspec.msgpack.decode(data, type=SignedTransfer)
        body = msgspec.msgpack.decode(signed.body, type=TransferBody)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"malformed registry transfer: {exc}") from None
    verify_did_signature(body.from_owner, _TRANSFER_DOMAIN + signed.body, signed.signature)
    return body


def transfer_field(name: str, owner: str, field: Any) -> TransferBody:
    """The ``transfer`` member of a registry's descriptor (registry.v1.json),
    checked: a transfer of this registry's name, signed by its owner, to the
    org the member names. How an owner records a transfer as a signed change
    of its federation, so that every host of the registry publishes it."""
    if not isinstance(field, dict) or not isinstance(field.get("statement"), str):
        raise ValidationError("transfer: an object with to and statement (base64)",
                              details=[{"path": "/transfer", "message": "malformed"}])
    try:
        data = base64.b64decode(field["statement"], validate=True)
    except binascii.Error:
        raise ValidationError("transfer.statement is not base64",
                              details=[{"path": "/transfer/statement", "message": "not base64"}]) from None
    link = read_transfer(data)
    if link.name != name or link.from_owner != owner or link.to_owner != field.get("to"):
        raise ValidationError(f"transfer.statement gives {link.name} from {link.from_owner} to {link.to_owner}; "
                              f"this descriptor needs one of {name} from {owner} to {field.get('to')}",
                              details=[{"path": "/transfer/statement", "message": "names another transfer"}])
    return link


def chain_of(body: RecordBody) -> list[TransferBody]:
    """A record's transfers, decoded (checked already by ``read_record``)."""
    return [msgspec.msgpack.decode(msgspec.msgpack.decode(t, type=SignedTransfer).body, type=TransferBody)
            for t in body.transfers]


def holder(body: RecordBody) -> str:
    """The org that holds the record's name: its chain's last receiver, or its owner."""
    chain = chain_of(body)
    return chain[-1].to_owner if chain else body.owner


def choose(bodies: list[RecordBody]) -> int:
    """Which of several valid records for one name holds: the earliest first
    claim; among its descendants the longest chain of transfers (the one
    dated first if its giver equivocated), the holder's own record before
    its giver's pointer; then the newest descriptor (module docstring)."""
    chains = [chain_of(b) for b in bodies]
    roots = [c[0].from_owner if c else b.owner for b, c in zip(bodies, chains)]
    first_claim: dict[str, int] = {}
    for root, b in zip(roots, bodies):
        first_claim[root] = min(first_claim.get(root, b.claimed_at), b.claimed_at)

    def rank(i: int) -> tuple[Any, ...]:
        b, chain, root = bodies[i], chains[i], roots[i]
        held_by = chain[-1].to_owner if chain else b.owner
        return (first_claim[root], root, -len(chain), [t.at for t in chain], held_by, b.owner != held_by,
                tuple(-v for v in b.version), -b.issued_at, b.change_id)

    return min(range(len(bodies)), key=rank)


def readable(key: str, value: bytes, now_ms: int) -> RecordBody | None:
    """``read_record``, or None when the value is refused."""
    try:
        return read_record(key, value, now_ms=now_ms)
    except RegistryError:
        return None
