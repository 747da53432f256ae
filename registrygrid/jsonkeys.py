"""Objects that name one member twice: refused wherever JSON comes in.

RFC 8259 leaves such an object's meaning to the parser: ours keep the last
value, a proxy or a signer in front of them may keep the first, so
``{"role": "reader", "role": "admin"}`` reads as two different requests.
The decoders that build the value (msgspec, json) cannot tell, so the text
is read again here, by the standard library with a hook on every object.
"""

from __future__ import annotations

import json
from typing import Any


class _Twice(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise _Twice(name)
        seen.add(name)
    return {}  # the values are not kept: only the names are checked


def repeated_name(text: str | bytes) -> str | None:
    """The first member name some object in ``text`` (valid JSON) holds
    twice, or None."""
    try:
        json.loads(text, object_pairs_hook=_pairs)
    except _Twice as twice:
        return twice.name
    except (ValueError, RecursionError):
        return None  # not this check's to refuse: the decoder that builds the value says why
    return None
