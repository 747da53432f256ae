"""Base32 text for IDs, fast enough to run twice on every write.

Every write prints a change ID (CIDv1, RFC 4648 base32, lower case) and most
create a record ID (ULID, Crockford base32). The stdlib's ``b32encode`` is a
Python loop over 5-byte chunks plus padding and case fixes (~6-10 µs for a
36-byte CID here); reading the value as one integer and mapping 10 bits at a
time through a 1024-entry table of character pairs does the same in about
half. Decoding is rare (IDs typed by users) and stays with the stdlib.
"""

from __future__ import annotations

RFC4648_LOWER = "abcdefghijklmnopqrstuvwxyz234567"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _pairs(alphabet: str) -> list[str]:
    return [alphabet[i >> 5] + alphabet[i & 31] for i in range(1024)]


_PAIRS = {RFC4648_LOWER: _pairs(RFC4648_LOWER), CROCKFORD: _pairs(CROCKFORD)}


def encode_bytes(data: bytes, alphabet: str = RFC4648_LOWER) -> str:
    """RFC 4648 bit order (the first byte's high bits first), no padding."""
    bits = len(data) * 8
    chars = -(-bits // 5)
    pairs = -(-chars // 2)
    value = int.from_bytes(data, "big") << (pairs * 10 - bits)
    table = _PAIRS[alphabet]
    text = "".join([table[(value >> shift) & 1023] for shift in range((pairs - 1) * 10, -1, -10)])
    return text[:chars]


def encode_int(value: int, chars: int, alphabet: str = CROCKFORD) -> str:
    """``value`` as exactly ``chars`` digits, most significant first (ULIDs)."""
    table = _PAIRS[alphabet]
    pairs = -(-chars // 2)
    text = "".join([table[(value >> shift) & 1023] for shift in range((pairs - 1) * 10, -1, -10)])
    return text[len(text) - chars:]
