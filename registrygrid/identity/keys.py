"""Ed25519 identities and their public names.

One key has three names: the raw 32-byte public key, its ``did:key`` (the name
RegistryGrid signs changes under) and its libp2p peer ID (the name the node
has on the network). Both derived names are pure functions of the key, so a
peer can check that "the node at this peer ID" and "the author of this
change" are the same key without asking anyone.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.signing
from multiformats import multibase, multicodec, multihash

from registrygrid.errors import SignatureInvalid, ValidationError

DID_KEY_PREFIX = "did:key:"
SEED_BYTES = 32
SIGNATURE_BYTES = 64

# libp2p's PublicKey protobuf for an Ed25519 key is a fixed 4-byte header
# (field 1 KeyType = 1 (Ed25519), field 2 Data of length 32) before the key;
# the peer ID is the identity multihash of that message because it is shorter
# than 42 bytes (libp2p peer-ids spec, "Peer Ids"). Computing it here keeps
# `rgrid id` free of py-libp2p's 1.7 s import; a test checks it against
# libp2p.peer.id.ID.from_pubkey.
_LIBP2P_ED25519_PUBKEY_HEADER = b"\x08\x01\x12\x20"


@functools.lru_cache(maxsize=4096)
def did_from_public_key(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise ValidationError(f"an Ed25519 public key has 32 bytes, not {len(public_key)}")
    wrapped = multicodec.wrap("ed25519-pub", public_key)
    return DID_KEY_PREFIX + multibase.encode(wrapped, "base58btc")


@functools.lru_cache(maxsize=4096)
def did_from_peer_id(peer_id: str) -> str:
    """The did:key of an Ed25519 libp2p peer ID (the inverse of
    peer_id_from_public_key); ValidationError for any other peer ID."""
    try:
        digest = multibase.decode("z" + peer_id)
        raw = bytes(multihash.unwrap(digest))
    except Exception as exc:  # multiformats raises several unrelated types
        raise ValidationError(f"malformed peer ID {peer_id!r}: {exc}") from None
    if len(raw) != 36 or not raw.startswith(_LIBP2P_ED25519_PUBKEY_HEADER):
        raise ValidationError(f"peer ID {peer_id!r} does not name an Ed25519 key")
    return did_from_public_key(raw[4:])


@functools.lru_cache(maxsize=4096)
def public_key_from_did(did: str) -> bytes:
    """The raw Ed25519 key named by a did:key; ValidationError for anything else."""
    if not isinstance(did, str) or not did.startswith(DID_KEY_PREFIX):
        raise ValidationError(f"not a did:key: {did!r}")
    try:
        codec, raw = multicodec.unwrap(multibase.decode(did[len(DID_KEY_PREFIX):]))
    except Exception as exc:  # multiformats raises several unrelated types
        raise ValidationError(f"malformed did:key {did!r}: {exc}") from None
    if codec.name != "ed25519-pub" or len(raw) != 32:
        raise ValidationError(f"did:key {did!r} is not an Ed25519 public key")
    return bytes(raw)


def peer_id_from_public_key(public_key: bytes) -> str:
    digest = multihash.digest(_LIBP2P_ED25519_PUBKEY_HEADER + public_key, "identity")
    # Peer IDs are written as bare base58btc, without the multibase 'z'.
    return multibase.encode(digest, "base58btc")[1:]


@functools.lru_cache(maxsize=4096)
def _verify_key(public_key: bytes) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(public_key)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise SignatureInvalid unless ``signature`` is ``public_key``'s over ``message``."""
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureInvalid(f"signature has {len(signature)} bytes, expected {SIGNATURE_BYTES}")
    try:
        _verify_key(public_key).verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        raise SignatureInvalid("signature does not verify") from None


def verify_did_signature(did: str, message: bytes, signature: bytes) -> None:
    try:
        public_key = public_key_from_did(did)
    except ValidationError as exc:
        raise SignatureInvalid(exc.message) from None
    verify_signature(public_key, message, signature)


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 signing key with its derived names."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_BYTES:
            raise ValidationError(f"an Ed25519 seed has {SEED_BYTES} bytes")

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(os.urandom(SEED_BYTES))

    @functools.cached_property
    def _signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @functools.cached_property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @functools.cached_property
    def did(self) -> str:
        return did_from_public_key(self.public_key)

    @functools.cached_property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    @functools.cached_property
    def _secret_key(self) -> bytes:
        # libsodium's 64-byte secret key (seed + public key), for the direct call below.
        return self._signing_key._signing_key

    def sign(self, message: bytes) -> bytes:
        # The binding directly: SigningKey.sign wraps the result in a
        # SignedMessage object, a few µs on every write.
        return nacl.bindings.crypto_sign(message, self._secret_key)[:SIGNATURE_BYTES]

    def __repr__(self) -> str:  # never print the seed
        return f"KeyPair({self.did})"
