"""A federation as a trust domain: its signed genesis, and invitations that admit orgs.

* **Genesis.** A federation is named by the SHA-256 of its genesis body
  (``fed-`` + 32 base32 characters), so two federations that share a name
  never mix: name, founding orgs, admin orgs, the number of distinct admin
  signatures an invitation needs (k of n), and when it was made. Every
  founder signs it. A home that never created or joined a federation has
  the *implicit* genesis of its own org (sole founder and admin, made at
  time 0), which is the same for every node of that org, so an org's
  nodes federate with one another and with nobody else until they join a
  federation on purpose.
* **Invitation.** Admits one org to a federation, as a member or an admin,
  signed by at least ``quorum`` of the genesis admins (each signature over
  the same body). An operator collects signatures with ``rgrid federation
  invite`` then ``rgrid federation sign`` on each admin's machine; the
  result, with the genesis, is the file the invited org joins with.

Both travel as records of ``grid.members`` (kinds ``federation`` and
``invitation``; ids are content addresses, as for every statement there)
and inside the hello of the handshake, so a peer can check admission
before it has synced anything. Wire forms are msgpack arrays (msgspec
Structs), canonical by construction.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from registrygrid.errors import MalformedInput, PolicyDenied, SignatureInvalid, ValidationError
from registrygrid.identity.keys import KeyPair, public_key_from_did, verify_did_signature
from registrygrid.protocol import base32, names

FEDERATION_KIND = "federation"
INVITATION_KIND = "invitation"
MEMBER_ROLES = ("member", "admin")

# A federation of orgs, not of nodes: 64 founders or admins is more than
# any consortium we know signs a charter with, and bounds what a genesis can
# make every node verify (64 signatures, ~3 ms).
MAX_FOUNDERS = 64
MAX_GENESIS_BYTES = 32 * 1024
MAX_INVITATION_BYTES = 16 * 1024


class GenesisBody(msgspec.Struct, array_like=True, frozen=True):
    name: str  # the federation's name: its gossip topic segment
    founders: tuple[str, ...]  # org dids, sorted
    admins: tuple[str, ...]  # org dids, sorted; a subset of the founders
    quorum: int  # distinct admin signatures an invitation needs
    created: int  # unix seconds; 0 for an org's implicit federation


class InvitationBody(msgspec.Struct, array_like=True, frozen=True):
    federation: str  # the federation id
    org: str  # the invited org's did
    roles: tuple[str, ...]  # "member", optionally "admin"
    issued: int  # unix seconds
    # What the admins vouch for about the org (e.g. {"jurisdiction": "eu"}),
    # for access policies to match: signed, so not self-declared.
    attributes: dict[str, str] = {}


class _MultiSigned(msgspec.Struct, array_like=True, frozen=True):
    body: bytes
    signatures: list[tuple[str, bytes]]  # (signer org did, signature over body), sorted by did


_encoder = msgspec.msgpack.Encoder()
_multi_decoder = msgspec.msgpack.Decoder(_MultiSigned)
_genesis_decoder = msgspec.msgpack.Decoder(GenesisBody)
_invitation_decoder = msgspec.msgpack.Decoder(InvitationBody)


@dataclass(frozen=True)
class Genesis:
    body: bytes
    signatures: tuple[tuple[str, bytes], ...]

    @property
    def claims(self) -> GenesisBody:
        return _genesis_decoder.decode(self.body)

    @property
    def id(self) -> str:
        return federation_id(self.body)

    @property
    def name(self) -> str:
        return self.claims.name

    def encode(self) -> bytes:
        return _encoder.encode(_MultiSigned(self.body, list(self.signatures)))


@dataclass(frozen=True)
class Invitation:
    body: bytes
    signatures: tuple[tuple[str, bytes], ...]

    @property
    def claims(self) -> InvitationBody:
        return _invitation_decoder.decode(self.body)

    def encode(self) -> bytes:
        return _encoder.encode(_MultiSigned(self.body, list(self.signatures)))


def federation_id(genesis_body: bytes) -> str:
    return "fed-" + base32.encode_bytes(hashlib.sha256(genesis_body).digest()[:20])


# ---------------------------------------------------------------- making them


def make_genesis(name: str, founder_keys: Sequence[KeyPair], *, admins: Sequence[str] | None = None,
                 quorum: int = 1, now: float | None = None) -> Genesis:
    """A genesis signed by every founder. Admins default to all founders."""
    names.federation_name(name)  # "invalid registry name 'fedA'" before
    founders = tuple(sorted({k.did for k in founder_keys}))
    if not founders or len(founders) > MAX_FOUNDERS:
        raise ValidationError(f"a federation has 1 to {MAX_FOUNDERS} founders, not {len(founders)}")
    chosen = tuple(sorted(set(admins))) if admins is not None else founders
    body = GenesisBody(name=name, founders=founders, admins=chosen, quorum=quorum,
                       created=int(time.time() if now is None else now))
    _check_genesis_claims(body)
    encoded = _encoder.encode(body)
    signatures = tuple(sorted((k.did, k.sign(encoded)) for k in founder_keys))
    return Genesis(encoded, signatures)


def implicit_genesis(name: str, org_key: KeyPair | None = None, *, org: str | None = None) -> GenesisBody:
    """The claims of an org's own federation (it is never signed: every node
    of the org computes the same one, and it admits only that org)."""
    return GenesisBody(name=name, founders=(org or org_key.did,), admins=(org or org_key.did,),  # type: ignore[union-attr]
                       quorum=1, created=0)


def invite(genesis: Genesis, org: str, admin_key: KeyPair, *, admin: bool = False,
           attributes: Mapping[str, str] | None = None, now: float | None = None) -> Invitation:
    """A new invitation of ``org``, with its first admin signature."""
    public_key_from_did(org)
    if admin_key.did not in genesis.claims.admins:
        raise PolicyDenied(f"{admin_key.did} is not an admin of federation {genesis.name} ({genesis.id})")
    body = InvitationBody(federation=genesis.id, org=org, roles=("admin", "member") if admin else ("member",),
                          issued=int(time.time() if now is None else now),
                          attributes=_checked_attributes(attributes or {}))
    encoded = _encoder.encode(body)
    return Invitation(encoded, ((admin_key.did, admin_key.sign(encoded)),))


def cosign(invitation: Invitation, genesis: Genesis, admin_key: KeyPair) -> Invitation:
    """Add an admin's signature (k of n)."""
    if admin_key.did not in genesis.claims.admins:
        raise PolicyDenied(f"{admin_key.did} is not an admin of federation {genesis.name} ({genesis.id})")
    if invitation.claims.federation != genesis.id:
        raise ValidationError("this invitation is for another federation")
    signatures = dict(invitation.signatures)
    signatures[admin_key.did] = admin_key.sign(invitation.body)
    return Invitation(invitation.body, tuple(sorted(signatures.items())))


# ---------------------------------------------------------------- reading them


def decode_genesis(data: bytes) -> Genesis:
    """A genesis every founder signed; MalformedInput or SignatureInvalid otherwise."""
    if len(data) > MAX_GENESIS_BYTES:
        raise MalformedInput(f"genesis of {len(data)} bytes exceeds {MAX_GENESIS_BYTES}")
    outer, body = _decode(data, _genesis_decoder, "genesis")
    try:
        _check_genesis_claims(body)
    except ValidationError as exc:
        raise MalformedInput(f"malformed genesis: {exc.message}") from None
    signed = _verified_signers(outer)
    missing = set(body.founders) - signed
    if missing:
        raise SignatureInvalid(f"genesis lacks the signatures of founders {sorted(missing)}")
    return Genesis(outer.body, tuple(outer.signatures))


def decode_invitation(data: bytes, genesis: GenesisBody | None = None, genesis_id: str | None = None) -> Invitation:
    """An invitation whose signatures verify. With the federation's genesis,
    also: it is for this federation and at least ``quorum`` distinct admins
    signed it (PolicyDenied names how many are missing)."""
    if len(data) > MAX_INVITATION_BYTES:
        raise MalformedInput(f"invitation of {len(data)} bytes exceeds {MAX_INVITATION_BYTES}")
    outer, body = _decode(data, _invitation_decoder, "invitation")
    try:
        public_key_from_did(body.org)
    except ValidationError as exc:
        raise MalformedInput(f"malformed invitation: {exc.message}") from None
    if not set(body.roles) <= set(MEMBER_ROLES) or "member" not in body.roles:
        raise MalformedInput(f"an invitation grants {MEMBER_ROLES}, not {list(body.roles)}")
    try:
        _checked_attributes(body.attributes)
    except ValidationError as exc:
        raise MalformedInput(f"malformed invitation: {exc.message}") from None
    signed = _verified_signers(outer)
    invitation = Invitation(outer.body, tuple(outer.signatures))
    if genesis is not None:
        check_invitation(invitation, genesis, genesis_id or "", signed=signed)
    return invitation


def check_invitation(invitation: Invitation, genesis: GenesisBody, genesis_id: str, *,
                     signed: set[str] | None = None) -> None:
    claims = invitation.claims
    if claims.federation != genesis_id:
        raise PolicyDenied(f"invitation is for federation {claims.federation}, not {genesis_id}")
    if signed is None:
        signed = _verified_signers(_MultiSigned(invitation.body, list(invitation.signatures)))
    admins = signed & set(genesis.admins)
    if len(admins) < genesis.quorum:
        raise PolicyDenied(f"invitation of {claims.org} carries {len(admins)} admin signature(s); "
                           f"federation {genesis.name} needs {genesis.quorum}")


# An invitation vouches for a few short facts about an org (jurisdiction,
# sector, ...): 16 of 64 characters each bound what policies match on.
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_CHARS = 64


def _checked_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValidationError(f"an invitation carries at most {MAX_ATTRIBUTES} attributes")
    out = {}
    for name, value in sorted(attributes.items()):
        if not (isinstance(name, str) and isinstance(value, str) and names.KIND_NAME.fullmatch(name)
                and 0 < len(value) <= MAX_ATTRIBUTE_CHARS):
            raise ValidationError(f"attribute {name!r}={value!r}: a lower-case name and 1-{MAX_ATTRIBUTE_CHARS} "
                                  "characters of value")
        out[name] = value
    return out


def _decode(data: bytes, decoder: Any, what: str) -> tuple[_MultiSigned, Any]:
    try:
        outer = _multi_decoder.decode(data)
        body = decoder.decode(outer.body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"malformed {what}: {exc}") from None
    if _encoder.encode(body) != outer.body:
        raise MalformedInput(f"{what} body is not in canonical form")
    if len(outer.signatures) > MAX_FOUNDERS:
        raise MalformedInput(f"{what} carries more than {MAX_FOUNDERS} signatures")
    return outer, body


def _verified_signers(outer: _MultiSigned) -> set[str]:
    signers = set()
    for did, signature in outer.signatures:
        verify_did_signature(did, outer.body, signature)
        signers.add(did)
    return signers


def _check_genesis_claims(body: GenesisBody) -> None:
    names.federation_name(body.name)
    if not 0 < len(body.founders) <= MAX_FOUNDERS or list(body.founders) != sorted(set(body.founders)):
        raise ValidationError(f"founders must be 1 to {MAX_FOUNDERS} distinct org dids, sorted")
    for did in body.founders:
        public_key_from_did(did)
    if not body.admins or list(body.admins) != sorted(set(body.admins)) or not set(body.admins) <= set(body.founders):
        raise ValidationError("admins must be founders (at least one), distinct and sorted")
    if not 1 <= body.quorum <= len(body.admins):
        raise ValidationError(f"quorum must be 1 to {len(body.admins)} (the number of admins), not {body.quorum}")


# ---------------------------------------------------------------- as grid.members records


def genesis_record(genesis: Genesis) -> tuple[str, dict[str, Any]]:
    from registrygrid.trust.statements import statement_id

    claims = genesis.claims
    signed = genesis.encode()
    return statement_id(signed), {
        "federation": genesis.id,
        "name": claims.name,
        "founders": list(claims.founders),
        "admins": list(claims.admins),
        "quorum": claims.quorum,
        "created": claims.created,
        "statement": base64.b64encode(signed).decode(),
    }


def invitation_record(invitation: Invitation) -> tuple[str, dict[str, Any]]:
    from registrygrid.trust.statements import statement_id

    claims = invitation.claims
    signed = invitation.encode()
    return statement_id(signed), {
        "federation": claims.federation,
        "org": claims.org,
        "roles": list(claims.roles),
        "issued": claims.issued,
        "attributes": dict(claims.attributes),
        "signers": [did for did, _ in invitation.signatures],
        "statement": base64.b64encode(signed).decode(),
    }


def statement_bytes(fields: Mapping[str, Any]) -> bytes:
    text = fields.get("statement")
    if not isinstance(text, str):
        raise MalformedInput("a grid.members record carries its signed statement in 'statement' (base64)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedInput("'statement' is not base64") from None
