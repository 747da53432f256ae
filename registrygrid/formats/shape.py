"""What the format converters read of a document before its kind's schema
judges it: lists that must be lists, and the record's tags.

A document comes from anyone (a file, a catalog a publisher hosts). The
converters read a few members to make the record's id and tags before the
schema sees the whole: ``"packages": 5`` iterated as a list crashed the
import with a TypeError and lost the valid documents beside it. And tags
are capped (``limits.MAX_TAGS``): the format's marker and an A2A card's
signature status must survive the cap, or a search for
``signature:invalid`` misses a tampered card with many skill tags.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from registrygrid.errors import ValidationError
from registrygrid.protocol import limits, names


def listed(doc: Mapping[str, Any], member: str, path: str) -> list[Any]:
    """``doc[member]`` as a list ([] when absent or null); ValidationError
    naming ``path`` when it is anything else."""
    value = doc.get(member)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(f"{path} must be an array, not {type(value).__name__}",
                              details=[{"path": path, "message": "must be an array"}])
    return value


SIGNATURE_TAG_PREFIX = "signature:"


def tags_with(markers: Iterable[str], content: Iterable[Any]) -> list[str]:
    """A record's tags: every marker, then the content's values that are
    valid tags, in sorted order, as many as the cap leaves room for.
    ``signature:*`` is the importer's verdict on an A2A card, never
    content's: a skill or a catalog entry tagged ``signature:verified`` made
    an unsigned card, or any entry, list among the verified ones."""
    kept = set(markers)
    extra = sorted({t for t in content if isinstance(t, str) and names.TAG.fullmatch(t)
                    and not t.startswith(SIGNATURE_TAG_PREFIX)} - kept)
    return sorted([*kept, *extra[:max(0, limits.MAX_TAGS - len(kept))]])
