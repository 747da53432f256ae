"""Signed trust statements and the ``grid.members`` records that carry them.

A statement is signed by an org key and stands on its own: whoever
publishes it (any node, the org's own or another) adds nothing to its
authority, so an org key can stay offline while one of its nodes, or an
operator's laptop, publishes what it signed (``rgrid org delegate
--org-key FILE``).

Two statements exist today:

* **delegation** (``identity/delegation.py``): org -> key, roles, validity
  window in Unix seconds;
* **revocation**: org -> key it delegated, and per registry the sequence
  number of the key's last change that stays valid (its *cutoffs*); every
  later change of that key is refused wherever it arrives.

A statement's record id is its content address (``st-`` and 32 base32
characters of the SHA-256 of its signed bytes), so publishing the same
statement twice is the same record, and records in ``grid.members`` are
never updated or deleted: a renewal is a new delegation, an end is a
revocation. The record's readable fields repeat the signed claims so
listings and queries need no decoding; ``read_statement`` checks that they
agree, byte for byte, with what the org signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from registrygrid.errors import MalformedInput, ValidationError
from registrygrid.identity.delegation import (
    MAX_DELEGATION_BYTES,
    Delegation,
    DelegationBody,
    decode_delegation,
)
from registrygrid.identity.keys import KeyPair, public_key_from_did, verify_did_signature
from registrygrid.protocol import base32, names

MEMBERS_REGISTRY = "grid.members"
DELEGATION_KIND = "delegation"
REVOCATION_KIND = "revocation"
FEDERATION_KIND = "federation"  # a federation's genesis (trust/federation.py)
INVITATION_KIND = "invitation"  # an org admitted to a federation (trust/federation.py)
STATEMENT_KINDS = (DELEGATION_KIND, REVOCATION_KIND, FEDERATION_KIND, INVITATION_KIND)

# A revocation names one cutoff per registry the key wrote to. 4,096
# registries is far beyond what one node writes (the grid ships 23), and
# bounds what a statement can make every node hold.
MAX_CUTOFFS = 4096
MAX_REASON_CHARS = 512
# The signed bytes of a revocation: 4,096 cutoffs of ~140 bytes each.
MAX_REVOCATION_BYTES = 640 * 1024


class RevocationBody(msgspec.Struct, array_like=True, frozen=True):
    org: str  # did:key of the org that delegated the key
    subject: str  # did:key of the revoked key
    cutoffs: dict[str, int]  # registry -> last valid sequence number (0: none)
    at: int  # unix seconds, informational (validity is by chain position)
    reason: str


class _Signed(msgspec.Struct, array_like=True, frozen=True):
    body: bytes
    signature: bytes


_encoder = msgspec.msgpack.Encoder()
_signed_decoder = msgspec.msgpack.Decoder(_Signed)
_revocation_decoder = msgspec.msgpack.Decoder(RevocationBody)


@dataclass(frozen=True)
class Revocation:
    body: bytes
    signature: bytes

    @property
    def claims(self) -> RevocationBody:
        return _revocation_decoder.decode(self.body)

    def encode(self) -> bytes:
        return _encoder.encode(_Signed(self.body, self.signature))


@dataclass(frozen=True)
class Statement:
    """A verified statement, as the trust state takes it."""

    kind: str  # one of STATEMENT_KINDS
    record_id: str
    org: str  # who it is by (delegation, revocation) or about (invitation); a founder (genesis)
    subject: str  # the key it is about; the invited org; the federation id (genesis)
    delegation: DelegationBody | None = None
    revocation: RevocationBody | None = None
    genesis: Any = None  # trust.federation.Genesis
    invitation: Any = None  # trust.federation.Invitation


def statement_id(signed: bytes) -> str:
    return "st-" + base32.encode_bytes(hashlib.sha256(signed).digest()[:20])


def sign_revocation(org_key: KeyPair, subject: str, cutoffs: Mapping[str, int], *, reason: str = "",
                    now: float | None = None) -> Revocation:
    public_key_from_did(subject)
    body = RevocationBody(org=org_key.did, subject=subject, cutoffs=_checked_cutoffs(cutoffs),
                          at=int(time.time() if now is None else now), reason=reason[:MAX_REASON_CHARS])
    encoded = _encoder.encode(body)
    return Revocation(body=encoded, signature=org_key.sign(encoded))


def _checked_cutoffs(cutoffs: Mapping[str, int]) -> dict[str, int]:
    if len(cutoffs) > MAX_CUTOFFS:
        raise ValidationError(f"a revocation names at most {MAX_CUTOFFS} registries, not {len(cutoffs)}")
    out = {}
    for registry, seq in sorted(cutoffs.items()):
        names.registry_name(registry)
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
            raise ValidationError(f"cutoff of {registry} must be a sequence number, not {seq!r}")
        out[registry] = seq
    return out


# ---------------------------------------------------------------- records


def delegation_record(delegation: Delegation) -> tuple[str, dict[str, Any]]:
    """(record id, fields) of the grid.members record carrying ``delegation``."""
    signed = delegation.encode()
    claims = delegation.claims
    return statement_id(signed), {
        "org": claims.org,
        "subject": claims.subject,
        "roles": list(claims.roles),
        "not_before": claims.not_before,
        "expires": claims.expires,
        "statement": base64.b64encode(signed).decode(),
    }


def revocation_record(revocation: Revocation) -> tuple[str, dict[str, Any]]:
    signed = revocation.encode()
    claims = revocation.claims
    return statement_id(signed), {
        "org": claims.org,
        "subject": claims.subject,
        "cutoffs": dict(claims.cutoffs),
        "at": claims.at,
        "reason": claims.reason,
        "statement": base64.b64encode(signed).decode(),
    }


def read_statement(kind: str, record_id: str, fields: Mapping[str, Any]) -> Statement:
    """Check a grid.members record and return its statement.

    Raises MalformedInput (undecodable, fields that differ from the signed
    claims, a record id that is not the statement's address) or
    SignatureInvalid (not signed by the org it names). No clock is read:
    whether a delegation covers a change is the trust state's question,
    asked at the change's time, so every node reaches the same verdict."""
    text = fields.get("statement")
    if not isinstance(text, str):
        raise MalformedInput("a grid.members record carries its signed statement in 'statement' (base64)")
    try:
        signed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedInput("'statement' is not base64") from None
    if record_id != statement_id(signed):
        raise MalformedInput(f"a statement's record id is its address {statement_id(signed)!r}, not {record_id!r}")
    if kind == DELEGATION_KIND:
        return _read_delegation(record_id, signed, fields)
    if kind == REVOCATION_KIND:
        return _read_revocation(record_id, signed, fields)
    if kind == FEDERATION_KIND:
        from registrygrid.trust.federation import decode_genesis, genesis_record

        genesis = decode_genesis(signed)
        _same_fields(genesis_record(genesis)[1], fields)
        return Statement(FEDERATION_KIND, record_id, genesis.claims.founders[0], genesis.id, genesis=genesis)
    if kind == INVITATION_KIND:
        from registrygrid.trust.federation import decode_invitation, invitation_record

        invitation = decode_invitation(signed)  # its quorum is the trust state's question (it has the genesis)
        _same_fields(invitation_record(invitation)[1], fields)
        org = invitation.claims.org
        return Statement(INVITATION_KIND, record_id, org, org, invitation=invitation)
    raise MalformedInput(f"grid.members holds {list(STATEMENT_KINDS)}, not {kind!r}")


def _read_delegation(record_id: str, signed: bytes, fields: Mapping[str, Any]) -> Statement:
    if len(signed) > MAX_DELEGATION_BYTES:
        raise MalformedInput(f"delegation of {len(signed)} bytes exceeds {MAX_DELEGATION_BYTES}")
    delegation = decode_delegation(signed)
    claims = delegation.claims
    verify_did_signature(claims.org, delegation.body, delegation.signature)
    public_key_from_did(claims.subject)
    if claims.expires <= claims.not_before:
        raise MalformedInput("a delegation must end after it starts")
    _id, expected = delegation_record(delegation)
    _same_fields(expected, fields)
    return Statement(DELEGATION_KIND, record_id, claims.org, claims.subject, delegation=claims)


def _read_revocation(record_id: str, signed: bytes, fields: Mapping[str, Any]) -> Statement:
    if len(signed) > MAX_REVOCATION_BYTES:
        raise MalformedInput(f"revocation of {len(signed)} bytes exceeds {MAX_REVOCATION_BYTES}")
    try:
        outer = _signed_decoder.decode(signed)
        claims = _revocation_decoder.decode(outer.body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"malformed revocation: {exc}") from None
    verify_did_signature(claims.org, outer.body, outer.signature)
    try:
        public_key_from_did(claims.subject)
        _checked_cutoffs(claims.cutoffs)
    except ValidationError as exc:
        raise MalformedInput(f"malformed revocation: {exc.message}") from None
    _id, expected = revocation_record(Revocation(outer.body, outer.signature))
    _same_fields(expected, fields)
    return Statement(REVOCATION_KIND, record_id, claims.org, claims.subject, revocation=claims)


def _same_fields(expected: Mapping[str, Any], fields: Mapping[str, Any]) -> None:
    if dict(fields) != expected:
        differing = sorted(k for k in set(expected) | set(fields) if expected.get(k) != fields.get(k))
        raise MalformedInput(f"the record's fields {differing} differ from the statement its org signed")

