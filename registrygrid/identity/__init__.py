"""Keys, their did:key and peer ID names, and org delegations."""

from registrygrid.identity.keys import (
    KeyPair,
    did_from_public_key,
    peer_id_from_public_key,
    public_key_from_did,
    verify_did_signature,
    verify_signature,
)

__all__ = [
    "KeyPair",
    "did_from_public_key",
    "peer_id_from_public_key",
    "public_key_from_did",
    "verify_did_signature",
    "verify_signature",
]
