"""Checksums computed inline while bytes stream: no second pass.

    digest = StreamDigest(md5=True)
    for chunk in chunks:
        digest.update(chunk)      # or: for chunk in digest.tee(chunks): write(chunk)
    digest.check(Expected(size=..., sha256=...))   # ChecksumMismatch, naming what differs
    digest.cid                                     # the CIDv1 of the bytes (raw, sha2-256)

A blob's CID is the CIDv1 of its SHA-256, as a change's ID is of its body
(protocol/envelope.py), so an asset record that names a blob's CID signs
its bytes.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from registrygrid.errors import ValidationError
from registrygrid.protocol.envelope import (
    CID_BYTES,
    cid_from_sha256,
    cid_from_str,
    cid_to_str,
)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class ChecksumMismatch(ValidationError):
    """The bytes that arrived are not the bytes that were declared."""

    code = "checksum_mismatch"


@dataclass(frozen=True)
class Expected:
    """What a client declared of some bytes; None: not declared."""

    size: int | None = None
    sha256: str | None = None  # hex
    md5: str | None = None  # hex

    def __post_init__(self) -> None:
        if self.size is not None and (not isinstance(self.size, int) or self.size < 0):
            raise ValidationError("size must be a whole number of bytes", details=[{"path": "size"}])
        if self.sha256 is not None and not _HEX64.fullmatch(self.sha256):
            raise ValidationError("sha256 must be 64 lower-case hex digits", details=[{"path": "sha256"}])
        if self.md5 is not None and not _HEX32.fullmatch(self.md5):
            raise ValidationError("md5 must be 32 lower-case hex digits", details=[{"path": "md5"}])


class StreamDigest:
    """Size, SHA-256 and (optionally) MD5 of bytes fed in order."""

    def __init__(self, *, md5: bool = False) -> None:
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self.size = 0
        # CRC-32 too (a few % of SHA-256's cost): with it and the size, a ZIP
        # bundle stores the blob without compressing it (blobs/zipfiles.py).
        self.crc32 = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self._sha256.update(chunk)
        if self._md5 is not None:
            self._md5.update(chunk)
        self.crc32 = zlib.crc32(chunk, self.crc32)
        self.size += len(chunk)

    def tee(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks`` unchanged, digested as they pass."""
        for chunk in chunks:
            self.update(chunk)
            yield chunk

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def md5(self) -> str | None:
        return None if self._md5 is None else self._md5.hexdigest()

    @property
    def cid(self) -> bytes:
        return cid_from_sha256(self._sha256.digest())

    def check(self, expected: Expected, *, what: str = "the upload") -> None:
        """Raise ChecksumMismatch naming every declared value that differs."""
        wrong = []
        if expected.size is not None and expected.size != self.size:
            wrong.append({"path": "size", "expected": expected.size, "actual": self.size})
        if expected.sha256 is not None and expected.sha256 != self.sha256:
            wrong.append({"path": "sha256", "expected": expected.sha256, "actual": self.sha256})
        if expected.md5 is not None and self._md5 is not None and expected.md5 != self.md5:
            wrong.append({"path": "md5", "expected": expected.md5, "actual": self.md5})
        if wrong:
            names = ", ".join(w["path"] for w in wrong)
            raise ChecksumMismatch(f"{what} does not match its declared {names}", details=wrong)


def parse_cid(text: str) -> bytes:
    """A blob CID from its text form (``b...``), or a ValidationError."""
    try:
        raw = cid_from_str(text)
    except ValidationError:
        raise ValidationError(f"not a blob CID: {text[:80]!r} (a CIDv1, raw, sha2-256, base32: 'bafkrei...')",
                              details=[{"path": "cid", "message": "invalid"}]) from None
    assert len(raw) == CID_BYTES
    if cid_to_str(raw) != text:  # base32 with stray padding bits: one blob, one spelling
        raise ValidationError(f"not a blob CID in canonical form: {text[:80]!r}",
                              details=[{"path": "cid", "message": "not canonical"}])
    return raw


def cid_text(cid: bytes) -> str:
    return cid_to_str(cid)


def sha256_of(cid: bytes) -> str:
    """The hex SHA-256 a blob CID names."""
    return cid[-32:].hex()
