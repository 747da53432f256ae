"""Blobs between nodes: the wire messages of ``/registrygrid/blob/1.0.0``.

A node that needs a blob it lacks asks peers for it by CID, a range at a
time: ``BlobRequest(cid, offset, length)`` answered by ``BlobResponse(size,
data)``, where ``size`` is the whole blob's and ``data`` the bytes of
[offset, offset + length) that exist. A request with length 0 asks only
whether the peer holds the blob (and its size). Ranges are at most
``MAX_CHUNK`` bytes, so a transfer of any size moves in bounded pieces and
resumes from the next offset, from the same peer or another, after a cut.

The requester checks what arrives as it goes: every chunk must be exactly
the length asked (short only at the end of the blob), and the whole is
digested while it streams into the object store and must hash to the CID
(blobs/blobs.py ``put``), so a lying peer wastes a transfer but can never
plant bytes. No trust in the provider is needed: the CID is the check.

Why not py-libp2p's bitswap (evaluated): it moves blocks of at most 512 KiB
that form a UnixFS DAG whose root CID is not the SHA-256 of the file, so
it could not fetch a blob named by the CID an asset record signs without
a second, chunked copy of every blob and a DAG to map them.
"""

from __future__ import annotations

import msgspec

from registrygrid.errors import MalformedInput
from registrygrid.protocol.envelope import CID_BYTES

BLOB_PROTOCOL_ID = "/registrygrid/blob/1.0.0"
# 1 MiB a response: under every transport's response cap (8 MiB), large
# enough that a request's fixed cost (a stream each, ~3 ms over py-libp2p
# here) is small beside the bytes it brings.
MAX_CHUNK = 1 << 20
MAX_REQUEST_BYTES = 128


class BlobRequest(msgspec.Struct, array_like=True, frozen=True):
    cid: bytes
    offset: int
    length: int


class BlobResponse(msgspec.Struct, array_like=True, frozen=True):
    size: int  # the whole blob's
    data: bytes


_request_decoder = msgspec.msgpack.Decoder(BlobRequest)
_response_decoder = msgspec.msgpack.Decoder(BlobResponse)
_encoder = msgspec.msgpack.Encoder()


def encode_request(cid: bytes, offset: int, length: int) -> bytes:
    return _encoder.encode(BlobRequest(cid, offset, length))


def decode_request(raw: bytes) -> BlobRequest:
    if len(raw) > MAX_REQUEST_BYTES:
        raise MalformedInput("blob request too large")
    try:
        request = _request_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"malformed blob request: {exc}") from None
    if len(request.cid) != CID_BYTES or request.offset < 0 or not 0 <= request.length <= MAX_CHUNK:
        raise MalformedInput("blob request out of bounds (a 36-byte CID, offset >= 0, length up to 1 MiB)")
    return request


def encode_response(size: int, data: bytes) -> bytes:
    return _encoder.encode(BlobResponse(size, data))


def decode_response(raw: bytes, request: BlobRequest) -> BlobResponse:
    """The answer to ``request``, checked against it (MalformedInput if it does not fit)."""
    try:
        response = _response_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"malformed blob response: {exc}") from None
    expected = max(0, min(request.length, response.size - request.offset))
    if response.size < 0 or len(response.data) != expected:
        raise MalformedInput(f"blob response of {len(response.data)} bytes where {expected} were due")
    return response
