"""Org -> node/member delegations: "this key speaks for org X, in these roles, until then".

An org signs one delegation per node and member. Peers check a delegation
offline: the signature is the org key's, the subject is the key that signed
the change, the role is one the action needs, and now lies inside the
validity window. Delegations are msgpack arrays (msgspec) so their signed
bytes are canonical by construction.
"""

from __future__ import annotations

import time

import msgspec

from registrygrid.errors import MalformedInput, PolicyDenied, SignatureInvalid, ValidationError
from registrygrid.identity.keys import KeyPair, public_key_from_did, verify_did_signature

ROLES = frozenset({"node", "admin", "writer", "reader"})
# A year: long enough that operators renew deliberately, short enough that a
# forgotten node key stops speaking for its org on its own.
DEFAULT_DELEGATION_SECONDS = 365 * 24 * 3600
MAX_DELEGATION_BYTES = 4096


class DelegationBody(msgspec.Struct, array_like=True, frozen=True):
    org: str  # did:key of the org
    subject: str  # did:key of the node or member
    roles: tuple[str, ...]
    not_before: int  # unix seconds
    expires: int  # unix seconds


class Delegation(msgspec.Struct, array_like=True, frozen=True):
    body: bytes
    signature: bytes

    @property
    def claims(self) -> DelegationBody:
        return msgspec.msgpack.decode(self.body, type=DelegationBody)

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self)


def sign_delegation(
    org_key: KeyPair,
    subject_did: str,
    roles: tuple[str, ...] | list[str],
    *,
    now: float | None = None,
    valid_for: int = DEFAULT_DELEGATION_SECONDS,
) -> Delegation:
    unknown = set(roles) - ROLES
    if unknown:
        raise ValidationError(f"unknown roles {sorted(unknown)}; known: {sorted(ROLES)}")
    public_key_from_did(subject_did)  # refuse a malformed subject early
    start = int(time.time() if now is None else now)
    body = DelegationBody(
        org=org_key.did,
        subject=subject_did,
        roles=tuple(sorted(set(roles))),
        not_before=start,
        expires=start + valid_for,
    )
    encoded = msgspec.msgpack.encode(body)
    return Delegation(body=encoded, signature=org_key.sign(encoded))


def decode_delegation(data: bytes) -> Delegation:
    if len(data) > MAX_DELEGATION_BYTES:
        raise MalformedInput(f"delegation of {len(data)} bytes exceeds {MAX_DELEGATION_BYTES}")
    try:
        delegation = msgspec.msgpack.decode(data, type=Delegation)
        delegation.claims  # noqa: B018 - decode the body too, so bad bytes fail here
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 is its own error
        raise MalformedInput(f"malformed delegation: {exc}") from None
    return delegation


def verify_delegation(
    delegation: Delegation,
    *,
    org: str | None = None,
    subject: str | None = None,
    role: str | None = None,
    now: float | None = None,
    check_window: bool = True,
) -> DelegationBody:
    """Check signature, parties, role and (unless ``check_window`` is False)
    validity window; return the claims."""
    claims = delegation.claims
    verify_did_signature(claims.org, delegation.body, delegation.signature)
    if org is not None and claims.org != org:
        raise SignatureInvalid(f"delegation is from {claims.org}, not {org}")
    if subject is not None and claims.subject != subject:
        raise SignatureInvalid(f"delegation is for {claims.subject}, not {subject}")
    moment = time.time() if now is None else now
    if check_window and not claims.not_before <= moment < claims.expires:
        raise PolicyDenied(
            f"delegation valid from {claims.not_before} to {claims.expires}, now is {int(moment)}"
        )
    if role is not None and role not in claims.roles:
        raise PolicyDenied(f"delegation grants {list(claims.roles)}, not {role!r}")
    return claims
