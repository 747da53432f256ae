"""Admission at the handshake: is the peer on the other end a member's node?

Sent inside the hello (protocol/hello.py), both ways, right after a
connection opens. The peer's libp2p identity already proves it holds its
node key (Noise authenticates the peer ID, and the peer ID names the same
Ed25519 key as its did:key), so the hello only has to prove the rest,
from statements anyone can check offline:

* the federation: the id of its genesis (and the genesis itself, when it
  is not an org's implicit one), equal to ours;
* its org: the org's delegation of this node key (signed; an expired one
  still admits the node, so it keeps syncing while its writes are refused);
* its membership: the org is a founder, or the hello carries an invitation
  signed by enough of the genesis admins.

A node whose key or org was revoked is refused too (the trust state knows
the revocations that reached us). Every refusal is a ``NotMember`` that
says why; the federation component bans the peer and disconnects.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec

from registrygrid.errors import MalformedInput, NotMember, RegistryError
from registrygrid.identity.delegation import decode_delegation, verify_delegation
from registrygrid.trust.federation import check_invitation, decode_genesis, decode_invitation
from registrygrid.trust.state import TrustState

# A delegation (<= 4 KiB), an invitation (<= 16 KiB) and a genesis (<= 32 KiB).
MAX_PROOF_BYTES = 56 * 1024


class Proof(msgspec.Struct, array_like=True, frozen=True):
    delegation: bytes  # the org's delegation of the sender's node key
    invitation: bytes  # b"" for a founder's node
    genesis: bytes  # b"" for an org's implicit federation


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Proof)


def encode_proof(delegation: bytes, invitation: bytes | None, genesis: bytes | None) -> bytes:
    return _encoder.encode(Proof(delegation, invitation or b"", genesis or b""))


@dataclass(frozen=True)
class Admitted:
    org: str
    roles: tuple[str, ...]
    did: str = ""  # the node key admitted


def check_admission(trust: TrustState, peer_did: str, federation_id: str, proof_bytes: bytes, *,
                    now: float | None = None) -> Admitted:
    """The peer's org if ``peer_did``'s node is a member of our federation
    (``trust.federation``); NotMember saying why otherwise."""
    genesis = trust.federation
    if genesis is None:
        raise NotMember("this node belongs to no federation")
    if federation_id != trust.federation_id:
        raise NotMember(f"peer is in federation {federation_id}, not {trust.federation_id} ({genesis.name}); "
                        "a federation is its genesis, not its name")
    if len(proof_bytes) > MAX_PROOF_BYTES:
        raise NotMember(f"membership proof of {len(proof_bytes)} bytes exceeds {MAX_PROOF_BYTES}")
    try:
        proof = _decoder.decode(proof_bytes)
        if proof.genesis and decode_genesis(proof.genesis).id != federation_id:
            raise MalformedInput("the genesis in the proof is not the federation's")
        # An expired delegation still admits the node: it keeps syncing (and
        # so receives its renewal) while its new writes are refused everywhere
        # by the delegation's window at their own time (trust/state.py).
        claims = verify_delegation(decode_delegation(proof.delegation), subject=peer_did, role="node",
                                   now=time.time() if now is None else now, check_window=False)
        org = claims.org
        if org not in genesis.founders:
            if not proof.invitation:
                raise NotMember(f"org {org} is not a founder of {genesis.name} and brought no invitation; "
                                "an admin invites it with `rgrid federation invite`")
            invitation = decode_invitation(proof.invitation)
            check_invitation(invitation, genesis, federation_id)
            if invitation.claims.org != org:
                raise NotMember(f"the invitation admits {invitation.claims.org}, not {org}")
    except NotMember:
        raise
    except msgspec.DecodeError as exc:
        raise NotMember(f"undecodable membership proof: {exc}") from None
    except RegistryError as exc:
        raise NotMember(f"membership not proven: {exc.code}: {exc.message}") from None
    refusal = standing_refusal(trust, peer_did, org)
    if refusal is not None:
        raise refusal
    return Admitted(org=org, roles=claims.roles, did=peer_did)


def standing_refusal(trust: TrustState, peer_did: str, org: str) -> NotMember | None:
    """Why a node of ``org`` is not (or no longer) a member, by the
    revocations that reached us: asked at the hello, and again whenever an
    admitted peer is served, since a revocation can arrive after its hello
    and a peer need not say hello again."""
    if trust.org_removed(org):
        # Before (or without) the node's delegation in the trust state: a
        # removed org's key delegated after its removal is named by no
        # revocation, and its changes are cut with the org (trust/state.py).
        name = trust.federation.name if trust.federation is not None else "the federation"
        return NotMember(f"org {org} was revoked from {name}; its nodes are refused")
    revoked = trust.revoked(peer_did) or trust.revoked_for(peer_did, org)
    if revoked is not None:  # cut whole, or by the org it says it speaks for
        return NotMember(f"node key {peer_did} was revoked ({', '.join(revoked.by)})")
    return None
