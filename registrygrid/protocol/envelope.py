"""Signed change envelopes: the unit of replication (wire format 2).

Wire form: a msgpack array ``[body, index, size, path, signature]``. ``body``
is the msgpack encoding of a ``ChangeBody``; the change ID is the CIDv1
(codec ``raw``, sha2-256) of those body bytes alone. An author signs once
per commit batch: ``signature`` is Ed25519 over ``batch_message(root, size)``,
where ``root`` is the RFC 6962 Merkle root of the batch's change IDs, and
``path`` is this change's inclusion path (leaf ``index`` of ``size``). So a
single change is verifiable on its own (body + path + signature) and a
receiver checks each batch's signature once. A lone write is a batch of one
with an empty path. ``docs/formats.md`` gives every byte.

Signing a root over the IDs of bytes, rather than a re-encoding, means a
verifier never has to reproduce an encoder bit for bit; decoding checks that
body and wire are in canonical form, so one change has one body and one ID.
Equal IDs mean equal bodies: duplicates are free to detect, and applying is
idempotent whichever batch proof a copy arrived with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from registrygrid.errors import MalformedInput, SignatureInvalid, TooLarge, ValidationError
from registrygrid.identity.keys import KeyPair, public_key_from_did, verify_signature
from registrygrid.protocol import base32, limits, names
from registrygrid.protocol.hlc import Hlc
from registrygrid.protocol.merkle import MerkleTree, ProvenPaths

PROTOCOL_VERSION = 2
OPS = ("create", "update", "delete")
Op = Literal["create", "update", "delete"]

# CIDv1 prefix: version 1, multicodec raw (0x55), multihash sha2-256 (0x12)
# with a 32-byte digest (0x20). Fixed, so IDs are built with one hashlib call;
# a test checks the result against multiformats.CID.
_CID_PREFIX = b"\x01\x55\x12\x20"
CID_BYTES = len(_CID_PREFIX) + 32
AUTOMERGE_HASH_BYTES = 32


class ChangeBody(msgspec.Struct, array_like=True, frozen=True):
    v: int
    registry: str
    record: str
    op: str
    kind: str
    schema: int
    author: str  # did:key of the signer
    seq: int  # 1, 2, 3 ... per (author, registry): the author's hash chain
    prev: bytes  # change ID of the author's previous change in this registry; b"" for seq 1
    hlc: tuple[int, int]
    deps: list[bytes]  # Automerge hashes the payload depends on ([] for a snapshot)
    change_hash: bytes  # Automerge hash of the payload; b"" for a snapshot
    payload: bytes  # one Automerge change, or a create's snapshot (crdt/snapshot.py)

    @property
    def is_snapshot(self) -> bool:
        return not self.change_hash

    @property
    def is_genesis(self) -> bool:
        """A record's first create: a snapshot (or, in a legacy change, an
        Automerge change with no deps)."""
        return self.op == "create" and not self.deps


class _LegacyWire(msgspec.Struct, array_like=True, frozen=True):
    """Wire format 1: ``[body, signature]``, the signature over the body
    bytes, the ID the CID of the whole wire. Changes a format-2 store holds
    keep it after ``rgrid store migrate`` (their authors signed them so,
    and nobody else can re-sign them), and peers still serve them."""

    body: bytes
    signature: bytes


class _Wire(msgspec.Struct, array_like=True, frozen=True):
    body: bytes
    index: int  # this change's leaf in its batch's Merkle tree
    size: int  # leaves in the batch
    path: list[bytes]  # RFC 6962 inclusion path, bottom first; [] for a batch of one
    signature: bytes  # the author's Ed25519 signature of batch_message(root, size)


_body_encoder = msgspec.msgpack.Encoder()
_body_decoder = msgspec.msgpack.Decoder(ChangeBody)
_wire_decoder = msgspec.msgpack.Decoder(_Wire)
_legacy_decoder = msgspec.msgpack.Decoder(_LegacyWire)
LEGACY_VERSION = 1
_LEGACY_HEADER = b"\x92"  # a msgpack array of 2: wire format 1 (format 2's has 5)

# What an author signs for a batch: a domain tag (so no other signature of
# the key can pass for one), the batch size and the Merkle root of its IDs.
BATCH_DOMAIN = b"registrygrid/batch/v2\x00"
MAX_BATCH = 2**32 - 1


def batch_message(root: bytes, size: int) -> bytes:
    return BATCH_DOMAIN + size.to_bytes(8, "big") + root


def change_id(body: bytes) -> bytes:
    """A change's ID: the CID of its body bytes alone. The batch proof and
    signature travel beside the body, so the Merkle root over IDs is well
    defined and a change has one ID however it was batched."""
    return _CID_PREFIX + hashlib.sha256(body).digest()


def cid_from_sha256(digest: bytes) -> bytes:
    """The CIDv1 (raw, sha2-256) of bytes whose SHA-256 is ``digest``: what
    names a change body and a blob alike, so a digest computed while bytes
    stream gives their CID without a second pass."""
    if len(digest) != 32:
        raise ValueError("a SHA-256 digest has 32 bytes")
    return _CID_PREFIX + digest


def cid_to_str(cid: bytes) -> str:
    """Multibase base32 (lower case, no padding, prefix 'b'): the usual text
    form of a CIDv1. Done here because multiformats' generic encoder costs
    ~8 ms a call, and IDs are printed on every write; a test checks the two
    agree."""
    return "b" + base32.encode_bytes(cid)


def cid_from_str(text: str) -> bytes:
    try:
        if not isinstance(text, str) or not text.startswith("b") or len(text) > 128:
            raise ValueError("not a base32 multibase string")
        body = text[1:].upper()
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (ValueError, binascii.Error) as exc:
        raise ValidationError(f"not a change ID: {text!r} ({exc})") from None
    if len(raw) != CID_BYTES or not raw.startswith(_CID_PREFIX):
        raise ValidationError(f"not a RegistryGrid change ID: {text!r}")
    return raw


class Draft(msgspec.Struct, frozen=True):
    """A change before its batch is signed: its body, and so its ID, are
    final (the next change of the chain names it as ``prev``)."""

    body: ChangeBody
    body_bytes: bytes
    cid: bytes
    id: str

    @property
    def hlc(self) -> Hlc:
        return Hlc(*self.body.hlc)


class SignedRoot(msgspec.Struct, frozen=True):
    """One author's signature over one batch: stored once, however many
    changes it covers."""

    author: str
    root: bytes
    size: int
    signature: bytes


class Envelope(msgspec.Struct, frozen=True):
    """A decoded change with its batch proof, its wire bytes and its ID."""

    body: ChangeBody
    body_bytes: bytes
    wire: bytes
    cid: bytes
    id: str  # cid in text form, computed once
    index: int
    size: int
    path: list[bytes]
    signature: bytes
    root: bytes  # the batch's Merkle root, proven from the path when opened
    legacy: bool = False  # wire format 1 (see _LegacyWire)

    @property
    def hlc(self) -> Hlc:
        return Hlc(*self.body.hlc)

    @property
    def signed_root(self) -> SignedRoot:
        return SignedRoot(self.body.author, self.root, self.size, self.signature)


def draft(
    *,
    author: str,
    registry: str,
    record: str,
    op: Op,
    kind: str,
    schema: int,
    seq: int,
    prev: bytes,
    hlc: Hlc,
    deps: list[bytes],
    change_hash: bytes,
    payload: bytes,
) -> Draft:
    body = ChangeBody(
        v=PROTOCOL_VERSION,
        registry=registry,
        record=record,
        op=op,
        kind=kind,
        schema=schema,
        author=author,
        seq=seq,
        prev=prev,
        hlc=(hlc.wall_ms, hlc.counter),
        deps=deps,
        change_hash=change_hash,
        payload=payload,
    )
    body_bytes = _body_encoder.encode(body)
    # The cap holds for the wire, which adds the proof: leave room for it.
    if len(body_bytes) > limits.MAX_ENVELOPE_BYTES - _PROOF_ROOM:
        raise TooLarge(
            f"change of {len(body_bytes)} bytes exceeds the envelope cap of {limits.MAX_ENVELOPE_BYTES}"
        )
    cid = change_id(body_bytes)
    return Draft(body=body, body_bytes=body_bytes, cid=cid, id=cid_to_str(cid))


# Room the batch proof takes on the wire: a signature, two integers and a
# path of up to 32 hashes (2**32 changes in one batch).
_PROOF_ROOM = 64 + 32 * 34 + 32


def sign_batch(key: KeyPair, drafts: Sequence[Draft]) -> tuple[SignedRoot, MerkleTree]:
    """One signature over the Merkle root of a batch of one author's drafts
    (leaf i is the ID of drafts[i]); the tree gives each change's path."""
    if not drafts:
        raise ValueError("nothing to sign")
    if len(drafts) > MAX_BATCH:
        raise TooLarge(f"{len(drafts)} changes in one batch exceed {MAX_BATCH}")
    tree = MerkleTree([d.cid for d in drafts])
    signature = key.sign(batch_message(tree.root, tree.size))
    _remember_verified(key.did, tree.root, tree.size, signature)
    return SignedRoot(key.did, tree.root, tree.size, signature), tree


def seal_batch(key: KeyPair, drafts: Sequence[Draft]) -> tuple[list[Envelope], SignedRoot]:
    """Sign a batch of one author's drafts with one signature over the
    Merkle root of their IDs; each envelope carries its inclusion path."""
    signed, tree = sign_batch(key, drafts)
    encode = _body_encoder.encode
    out = []
    for index, d in enumerate(drafts):
        path = tree.path(index)
        wire = encode(_Wire(d.body_bytes, index, signed.size, path, signed.signature))
        out.append(Envelope(body=d.body, body_bytes=d.body_bytes, wire=wire, cid=d.cid, id=d.id, index=index,
                            size=signed.size, path=path, signature=signed.signature, root=signed.root))
    return out, signed


def seal(key: KeyPair, **fields: Any) -> Envelope:
    """One change, signed on its own: a batch of one, with an empty path."""
    envelopes, _ = seal_batch(key, [draft(author=key.did, **fields)])
    return envelopes[0]


def wire_of(body_bytes: bytes, index: int, size: int, path: Sequence[bytes], signature: bytes) -> bytes:
    """The wire form of a stored change (storage keeps the signature once
    per batch and rebuilds each change's wire from it)."""
    return _body_encoder.encode(_Wire(body_bytes, index, size, list(path), signature))


def decode_body(body_bytes: bytes) -> ChangeBody:
    """A stored body, decoded without checks (it was checked when stored)."""
    return _body_decoder.decode(body_bytes)


def open_envelope(wire: bytes, *, verify: bool = True) -> Envelope:
    """Decode and check an envelope from anywhere untrusted.

    Raises TooLarge, MalformedInput (not decodable, not canonical, fields out of
    range, a proof that proves nothing) or SignatureInvalid. Never anything
    else, for any input bytes. A batch's signature is checked once: later
    changes of the same batch find its verdict in a cache.
    """
    if len(wire) > limits.MAX_ENVELOPE_BYTES:
        raise TooLarge(f"envelope of {len(wire)} bytes exceeds {limits.MAX_ENVELOPE_BYTES}")
    if wire[:1] == _LEGACY_HEADER:
        return _open_legacy(wire, verify)
    try:
        outer = _wire_decoder.decode(wire)
        body = _body_decoder.decode(outer.body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, ValueError) as exc:
        raise MalformedInput(f"undecodable envelope: {exc}") from None
    if _body_encoder.encode(outer) != wire:
        raise MalformedInput("envelope is not in canonical form")
    if _body_encoder.encode(body) != outer.body:
        raise MalformedInput("envelope body is not in canonical form")
    _check_body(body)
    cid = change_id(outer.body)
    root = _proven_root(cid, outer)
    if verify:
        _check_batch_signature(body.author, root, outer.size, outer.signature)
    return Envelope(body=body, body_bytes=outer.body, wire=wire, cid=cid, id=cid_to_str(cid), index=outer.index,
                    size=outer.size, path=outer.path, signature=outer.signature, root=root)


def is_legacy_wire(wire: bytes) -> bool:
    """Whether a wire is in wire format 1 (by its first byte, nothing checked)."""
    return wire[:1] == _LEGACY_HEADER


def peek(wire: bytes) -> ChangeBody | None:
    """The body a wire carries, decoded without any check (for charging a
    peer's changes against its budgets before the engine opens them);
    None if it does not decode."""
    try:
        decoder = _legacy_decoder if wire[:1] == _LEGACY_HEADER else _wire_decoder
        return _body_decoder.decode(decoder.decode(wire).body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, ValueError, TypeError):
        return None


def _open_legacy(wire: bytes, verify: bool) -> Envelope:
    try:
        outer = _legacy_decoder.decode(wire)
        body = _body_decoder.decode(outer.body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, ValueError) as exc:
        raise MalformedInput(f"undecodable envelope: {exc}") from None
    if _body_encoder.encode(outer) != wire or _body_encoder.encode(body) != outer.body:
        raise MalformedInput("envelope is not in canonical form")
    _check_body(body, legacy=True)
    if len(outer.signature) != 64:
        raise MalformedInput("malformed envelope: a signature is 64 bytes")
    if verify:
        try:
            public_key = public_key_from_did(body.author)
        except ValidationError as exc:
            raise SignatureInvalid(f"author is not a did:key: {exc.message}") from None
        verify_signature(public_key, outer.body, outer.signature)
    cid = change_id(wire)  # format 1 named a change by its whole wire
    return Envelope(body=body, body_bytes=outer.body, wire=wire, cid=cid, id=cid_to_str(cid), index=0, size=1,
                    path=[], signature=outer.signature, root=b"", legacy=True)


# Inclusion paths of the changes opened, the last one remembered: a batch's
# changes arrive together, so each is hashed only up to where its path meets
# the previous one's (protocol/merkle.py).
_proven_paths = ProvenPaths()


def _proven_root(cid: bytes, outer: _Wire) -> bytes:
    if not 1 <= outer.size <= MAX_BATCH or any(len(h) != 32 for h in outer.path):
        raise MalformedInput(f"malformed envelope: batch proof for a batch of {outer.size}")
    root = _proven_paths.root(cid, outer.index, outer.size, outer.path)
    if root is None:
        raise MalformedInput(f"malformed envelope: no inclusion path for leaf {outer.index} of {outer.size}")
    if len(outer.signature) != 64:
        raise MalformedInput("malformed envelope: a signature is 64 bytes")
    return root


# (author, root, size, signature) of batches whose signature held: later
# changes of a batch are checked by a lookup. The signature is part of the
# key, so a wire with any other signature bytes is checked (and refused)
# like any other. Cleared when full: a miss only costs one check.
_VERIFIED_MAX = 1 << 16
_verified: dict[tuple[str, bytes, int, bytes], bool] = {}


def forget_verified() -> None:
    """Empty the cache of verified batches (benchmarks that must time the
    checks; tests)."""
    _verified.clear()


def _remember_verified(author: str, root: bytes, size: int, signature: bytes) -> None:
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[(author, root, size, signature)] = True


def _check_batch_signature(author: str, root: bytes, size: int, signature: bytes) -> None:
    if (author, root, size, signature) in _verified:
        return
    try:
        public_key = public_key_from_did(author)
    except ValidationError as exc:
        raise SignatureInvalid(f"author is not a did:key: {exc.message}") from None
    verify_signature(public_key, batch_message(root, size), signature)
    _remember_verified(author, root, size, signature)


def signatures_hold(wires: Sequence[bytes]) -> list[bool]:
    """For each wire: whether it decodes and carries a valid proof and its
    author's valid signature of the batch. True only when all of that
    holds; for anything else False, and ``open_envelope(wire)`` says what is
    wrong. The Ed25519 check runs in libsodium with the GIL released, so a
    caller may check slices of a batch on several threads at once."""
    out = []
    for wire in wires:
        if wire[:1] == _LEGACY_HEADER:
            try:
                _open_legacy(wire, True)
            except Exception:
                out.append(False)
            else:
                out.append(True)
            continue
        try:
            outer = _wire_decoder.decode(wire)
            author = _author_decoder.decode(outer.body).author
            root = _proven_root(change_id(outer.body), outer)
            _check_batch_signature(author, root, outer.size, outer.signature)
        except Exception:  # any failure is a "no"; open_envelope gives the typed reason
            out.append(False)
        else:
            out.append(True)
    return out


class _Author(msgspec.Struct, array_like=True):
    v: int
    registry: str
    record: str
    op: str
    kind: str
    schema: int
    author: str


_author_decoder = msgspec.msgpack.Decoder(_Author)


def registry_of(wire: bytes) -> str | None:
    """The registry an envelope's body names, without checking anything (a
    peek for routing decisions; None if it does not decode)."""
    try:
        return _author_decoder.decode(_wire_decoder.decode(wire).body).registry
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None


def _check_body(body: ChangeBody, *, legacy: bool = False) -> None:
    def bad(why: str) -> MalformedInput:
        return MalformedInput(f"malformed envelope: {why}")

    version = LEGACY_VERSION if legacy else PROTOCOL_VERSION
    if body.v != version:
        raise bad(f"protocol version {body.v} in a format-{2 if not legacy else 1} wire (expected {version})")
    if body.op not in OPS:
        raise bad(f"op {body.op!r} not one of {OPS}")
    try:
        names.registry_name(body.registry)
        names.record_id(body.record)
        names.kind_name(body.kind)
    except ValidationError as exc:
        raise bad(exc.message) from None
    if not 1 <= body.schema < 2**16:
        raise bad(f"schema version {body.schema}")
    if not 1 <= body.seq < 2**63:
        raise bad(f"sequence number {body.seq}")
    if body.seq == 1 and body.prev != b"":
        raise bad("the first change of a chain has no prev")
    if body.seq > 1 and len(body.prev) != CID_BYTES:
        raise bad("prev must be a change ID")
    wall, counter = body.hlc
    if not (0 <= wall < 2**48 and 0 <= counter < 2**32):
        raise bad(f"clock {body.hlc} out of range")
    if len(body.deps) > limits.MAX_DEPS:
        raise bad(f"{len(body.deps)} deps exceed {limits.MAX_DEPS}")
    if any(len(d) != AUTOMERGE_HASH_BYTES for d in body.deps):
        raise bad("deps must be 32-byte Automerge hashes")
    if legacy:
        if len(body.change_hash) != AUTOMERGE_HASH_BYTES:
            raise bad("change_hash must be a 32-byte Automerge hash")
    elif body.is_snapshot:
        if body.op != "create" or body.deps:
            raise bad("only a create with no deps is a snapshot")
    elif len(body.change_hash) != AUTOMERGE_HASH_BYTES:
        raise bad("change_hash must be a 32-byte Automerge hash")
    elif body.op == "create" and not body.deps:
        raise bad("a record's first create is a snapshot, not an Automerge change")
    if not body.payload:
        raise bad("empty payload")


def id_of(wire: object) -> str | None:
    """The change ID a wire's body gives, without checking anything else
    (for naming a refused change); None if it does not decode."""
    if not isinstance(wire, bytes | bytearray):
        return None
    return cid_to_str(claimed_id(bytes(wire)))


def claimed_id(wire: bytes) -> bytes:
    """The change ID a wire's body gives, checking nothing: for dedupe
    before the costly checks. A wire that does not decode gets the hash of
    its bytes instead, so repeats of it dedupe too (open_envelope refuses
    it later)."""
    try:
        return change_id(_wire_decoder.decode(wire).body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, TypeError):
        return change_id(wire)
