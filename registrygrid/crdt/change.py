"""Reading an Automerge change's header without a document.

A remote envelope's payload claims an author (actor), dependencies and a
hash. We check those claims BEFORE applying the change, from the change's
own bytes, so a lying envelope is refused without loading any document.

Layout of a change chunk (Automerge binary format, "Change chunks"):
    magic 85 6f 4a 83 | checksum (4 bytes) | chunk type (1 = change) |
    length (uLEB128) | contents: deps count (uLEB) + 32-byte hashes,
    actor length (uLEB) + actor bytes, seq (uLEB), ...
The change hash is SHA-256 over chunk type + length + contents; the
checksum is its first 4 bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from registrygrid.errors import MalformedInput

MAGIC = b"\x85\x6f\x4a\x83"
CHUNK_CHANGE = 1
# A compressed change (type 2) is what Automerge writes inside saved
# documents; the raw change bytes it hands out (and we sign) are type 1.


@dataclass(frozen=True)
class ChangeHeader:
    hash: bytes
    deps: tuple[bytes, ...]
    actor: bytes
    seq: int


def _uleb(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise MalformedInput("Automerge change: truncated or oversized integer")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def read_header(raw: bytes) -> ChangeHeader:
    """Parse and checksum one uncompressed change chunk; MalformedInput otherwise."""
    if len(raw) < 10 or raw[:4] != MAGIC:
        raise MalformedInput("payload is not an Automerge chunk")
    if raw[8] != CHUNK_CHANGE:
        raise MalformedInput(f"payload is an Automerge chunk of type {raw[8]}, not a change")
    length, start = _uleb(raw, 9)
    if start + length != len(raw):
        raise MalformedInput("payload length does not match its Automerge chunk length")
    digest = hashlib.sha256(raw[8:]).digest()
    if digest[:4] != raw[4:8]:
        raise MalformedInput("Automerge change checksum mismatch")
    count, i = _uleb(raw, start)
    if i + 32 * count > len(raw):
        raise MalformedInput("Automerge change: truncated dependencies")
    deps = tuple(raw[i + 32 * k:i + 32 * (k + 1)] for k in range(count))
    i += 32 * count
    actor_len, i = _uleb(raw, i)
    if i + actor_len > len(raw):
        raise MalformedInput("Automerge change: truncated actor")
    actor = raw[i:i + actor_len]
    seq, _ = _uleb(raw, i + actor_len)
    return ChangeHeader(hash=digest, deps=deps, actor=actor, seq=seq)
