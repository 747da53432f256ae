"""HTTP Range requests (RFC 9110, section 14) over a representation of known size.

    parse_ranges("bytes=0-99,-100", size=1000)   # [(0, 100), (900, 1000)]: [start, end) pairs
    parse_ranges(None, size=1000)                # None: the whole representation

A header that is not a byte-range set is ignored (the whole answer, 200),
as the RFC allows; a valid one none of whose ranges overlaps the
representation is ``RangeNotSatisfiable`` (416, with ``Content-Range:
bytes */size``). Overlapping or many small ranges are a known abuse (RFC
9110 section 17.15): ranges are sorted and merged when they overlap or
touch, and more than ``MAX_RANGES`` are refused.
"""

from __future__ import annotations

import re

from registrygrid.errors import ValidationError

MAX_RANGES = 64
_SPEC = re.compile(r"^[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*$")
# Past 19 digits a position lies beyond any blob: read as that, never
# parsed (int() of 5,000 digits raised past Python's limit: a 500).
_BEYOND_ANY_SIZE = 2**63


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else _BEYOND_ANY_SIZE


class RangeNotSatisfiable(ValidationError):
    code = "range_not_satisfiable"
    http_status = 416

    def __init__(self, message: str, *, size: int | None = None, details: object = None) -> None:
        # ``details`` alone: rebuilt by a client from an answer (node/bridge/errors.py rebuild).
        if size is None and isinstance(details, list) and details and isinstance(details[0], dict):
            size = details[0].get("size")
        super().__init__(message, details=[{"size": size}] if details is None else details)
        self.size = size if isinstance(size, int) else 0


def parse_ranges(header: str | None, size: int) -> list[tuple[int, int]] | None:
    if header is None or size == 0:
        return None  # an empty representation has no byte to select: the whole (empty) answer
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    if not specs.replace(",", "").strip():
        return None  # "bytes=" or "bytes=,": no range-spec at all, an invalid header (RFC 9110: ignored)
    ranges: list[tuple[int, int]] = []
    for spec in specs.split(","):
        if not spec.strip():
            continue
        match = _SPEC.fullmatch(spec)
        if match is None:
            return None
        first, last = match.groups()
        if first == "" and last == "":
            return None
        if first == "":  # a suffix: the last N bytes
            n = _position(last)
            if n == 0:
                continue
            ranges.append((max(0, size - n), size))
            continue
        start = _position(first)
        end = size if last == "" else min(size, _position(last) + 1)
        if last != "" and _position(last) < start:
            return None  # invalid: ignore the header
        if start >= size:
            continue  # not satisfiable on its own
        ranges.append((start, end))
        if len(ranges) > MAX_RANGES:
            raise ValidationError(f"at most {MAX_RANGES} ranges in one request")
    if not ranges:
        raise RangeNotSatisfiable(f"no requested range overlaps the {size} bytes", size=size)
    ranges.sort()
    merged = [ranges[0]]
    for start, end in ranges[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return merged
