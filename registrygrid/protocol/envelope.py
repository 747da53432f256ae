"""Signed change envelopes: the unit of replication.

Wire form: a msgpack array ``[body, signature]`` where ``body`` is the msgpack
encoding of a ``ChangeBody`` and ``signature`` is the author's Ed25519
signature over exactly those bytes. Signing bytes rather than a re-encoding
means a verifier never has to reproduce an encoder bit for bit; decoding then
checks that the body is in canonical form (re-encoding gives the same bytes),
so one change has one byte string and one ID.

The change ID is a CIDv1 (codec ``raw``, sha2-256) of the wire bytes: equal
bytes give equal IDs, so duplicates are free to detect and apply is idempotent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import Literal

import msgspec

from registrygrid.errors import MalformedInput, SignatureInvalid, TooLarge, ValidationError
from registrygrid.identity.keys import KeyPair, public_key_from_did, verify_signature
from registrygrid.protocol import base32, limits, names
from registrygrid.protocol.hlc import Hlc

PROTOCOL_VERSION = 1
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
    prev: bytes  # change ID of the author's previous envelope in this registry; b"" for seq 1
    hlc: tuple[int, int]
    deps: list[bytes]  # Automerge hashes the payload depends on
    change_hash: bytes  # Automerge hash of the payload
    payload: bytes  # one Automerge change


class _Wire(msgspec.Struct, array_like=True, frozen=True):
    body: bytes
    signature: bytes


_body_encoder = msgspec.msgpack.Encoder()
_body_decoder = msgspec.msgpack.Decoder(ChangeBody)
_wire_decoder = msgspec.msgpack.Decoder(_Wire)


def change_id(wire: bytes) -> bytes:
    return _CID_PREFIX + hashlib.sha256(wire).digest()


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


class Envelope(msgspec.Struct, frozen=True):
    """A decoded, signature-checked change together with its wire bytes and ID."""

    body: ChangeBody
    wire: bytes
    cid: bytes
    id: str  # cid in text form, computed once

    @classmethod
    def of(cls, body: ChangeBody, wire: bytes) -> Envelope:
        cid = change_id(wire)
        return cls(body=body, wire=wire, cid=cid, id=cid_to_str(cid))

    @property
    def hlc(self) -> Hlc:
        return Hlc(*self.body.hlc)


def seal(
    key: KeyPair,
    *,
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
) -> Envelope:
    body = ChangeBody(
        v=PROTOCOL_VERSION,
        registry=registry,
        record=record,
        op=op,
        kind=kind,
        schema=schema,
        author=key.did,
        seq=seq,
        prev=prev,
        hlc=(hlc.wall_ms, hlc.counter),
        deps=deps,
        change_hash=change_hash,
        payload=payload,
    )
    body_bytes = _body_encoder.encode(body)
    wire = _body_encoder.encode(_Wire(body_bytes, key.sign(body_bytes)))
    if len(wire) > limits.MAX_ENVELOPE_BYTES:
        raise TooLarge(
            f"change of {len(wire)} bytes exceeds the envelope cap of {limits.MAX_ENVELOPE_BYTES}"
        )
    return Envelope.of(body, wire)


def open_envelope(wire: bytes, *, verify: bool = True) -> Envelope:
    """Decode and check an envelope from anywhere untrusted.

    Raises TooLarge, MalformedInput (not decodable, not canonical, fields out of
    range) or SignatureInvalid. Never anything else, for any input bytes.
    """
    if len(wire) > limits.MAX_ENVELOPE_BYTES:
        raise TooLarge(f"envelope of {len(wire)} bytes exceeds {limits.MAX_ENVELOPE_BYTES}")
    try:
        outer = _wire_decoder.decode(wire)
        body = _body_decoder.decode(outer.body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, ValueError) as exc:
        raise MalformedInput(f"undecodable envelope: {exc}") from None
    if _body_encoder.encode(_Wire(outer.body, outer.signature)) != wire:
        raise MalformedInput("envelope is not in canonical form")
    if _body_encoder.encode(body) != outer.body:
        raise MalformedInput("envelope body is not in canonical form")
    _check_body(body)
    if verify:
        try:
            public_key = public_key_from_did(body.author)
        except ValidationError as exc:
            raise SignatureInvalid(f"author is not a did:key: {exc.message}") from None
        verify_signature(public_key, outer.body, outer.signature)
    return Envelope.of(body, wire)


def signatures_hold(wires: Sequence[bytes]) -> list[bool]:
    """For each wire: whether it decodes and carries its author's valid
    signature over its body. True only when all of that holds; for anything
    else False, and ``open_envelope(wire)`` says what is wrong. The Ed25519
    check runs in libsodium with the GIL released, so a caller may check
    slices of a batch on several threads at once (the engine does, for
    remote changes: verification is a fifth of applying one)."""
    out = []
    for wire in wires:
        try:
            outer = _wire_decoder.decode(wire)
            author = _author_decoder.decode(outer.body).author
            verify_signature(public_key_from_did(author), outer.body, outer.signature)
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


def _check_body(body: ChangeBody) -> None:
    def bad(why: str) -> MalformedInput:
        return MalformedInput(f"malformed envelope: {why}")

    if body.v != PROTOCOL_VERSION:
        raise bad(f"protocol version {body.v}, this node speaks {PROTOCOL_VERSION}")
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
    if len(body.change_hash) != AUTOMERGE_HASH_BYTES:
        raise bad("change_hash must be a 32-byte Automerge hash")
    if not body.payload:
        raise bad("empty payload")
