"""Base32 text for IDs, fast enough to run twice on every write.

Every write prints a change ID (CIDv1, RFC 4648 base32, lower case) and most
create a record ID (ULID, Crockford base32). The stdlib's ``b32encode`` is a
Python loop over 5-byte chunks plus padding and case fixes (~4 µs for a
36-byte CID here). Here the value is read as one integer and its 5-bit
digits are spread into bytes by a few whole-integer mask-and-shift steps
(log2 of the digit count; each halves the lanes, as bit-interleaving code
does), then ``bytes.translate`` maps each byte to its character: ~1.2 µs,
all in C, with no table bigger than 256 bytes. Lookup tables of character
pairs or triples (1,024 or 32,768 strings) looked as fast in a warm loop
but missed the CPU cache inside a real write: a triple table cost 12-16 µs
a call with the cache cold, against ~3.5 µs for this. Decoding is rare
(IDs typed by users) and stays with the stdlib.
"""

from __future__ import annotations

from functools import cache

RFC4648_LOWER = "abcdefghijklmnopqrstuvwxyz234567"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_TABLES = {alphabet: bytes.maketrans(bytes(range(32)), alphabet.encode()) for alphabet in (RFC4648_LOWER, CROCKFORD)}


@cache
def _spread(chars: int) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """How to put each of ``chars`` 5-bit digits of an integer in a byte of
    its own: the byte count (a power of two) and the steps (high mask, low
    mask, shift). Before each step every lane of ``width`` bits holds
    ``2 * half`` bits of digits at its bottom; the step moves the upper
    ``half`` up by ``width / 2 - half`` bits, so each half-lane holds its
    own. The last step leaves one digit per byte."""
    size = 1
    while size < chars:
        size *= 2
    steps = []
    digits = size  # digits per lane
    while digits > 1:
        width, half = 8 * digits, 5 * (digits // 2)
        low_lane = (1 << half) - 1
        high_lane = ((1 << 2 * half) - 1) ^ low_lane
        lanes = range(size // digits)
        steps.append((sum(high_lane << width * i for i in lanes), sum(low_lane << width * i for i in lanes),
                      width // 2 - half))
        digits //= 2
    return size, tuple(steps)


def _digits(value: int, chars: int, alphabet: str) -> str:
    """The low ``chars`` 5-bit digits of ``value``, most significant first."""
    size, steps = _spread(chars)
    for high, low, shift in steps:
        value = ((value & high) << shift) | (value & low)
    return value.to_bytes(size, "big")[size - chars:].translate(_TABLES[alphabet]).decode("ascii")


def encode_bytes(data: bytes, alphabet: str = RFC4648_LOWER) -> str:
    """RFC 4648 bit order (the first byte's high bits first), no padding."""
    bits = len(data) * 8
    chars = -(-bits // 5)
    return _digits(int.from_bytes(data, "big") << (chars * 5 - bits), chars, alphabet)


def encode_int(value: int, chars: int, alphabet: str = CROCKFORD) -> str:
    """``value`` as exactly ``chars`` digits, most significant first (ULIDs)."""
    return _digits(value & ((1 << 5 * chars) - 1), chars, alphabet)
