"""Conditional reads (RFC 9110 section 13): what ``If-Match`` and
``If-None-Match`` ask of a representation whose entity tag is ``etag``.

    if not_modified(request.headers, etag):   # If-None-Match: 304
        return web.Response(status=304, headers=headers)

``If-Match`` is judged first and compares strongly (a weak tag matches
nothing): a client that names another version than the one it would get
(the bytes it resumes a download of, the record it read before) gets 412
``precondition_failed`` instead of another representation's bytes.
``If-None-Match`` compares weakly. No resource here has a modification
date, so ``If-Modified-Since`` and ``If-Unmodified-Since`` are ignored, as
the RFC asks of such resources.
"""

from __future__ import annotations

from collections.abc import Mapping

from registrygrid.node.bridge.errors import PreconditionFailed


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def not_modified(headers: Mapping[str, str], etag: str) -> bool:
    """True when the answer is 304; PreconditionFailed when If-Match fails."""
    if_match = headers.get("If-Match")
    if if_match is not None:
        tags = _tags(if_match)
        if "*" not in tags and etag not in tags:  # "W/..." never equals a strong tag
            raise PreconditionFailed(f"If-Match names {if_match.strip()[:100]!r}; the current entity tag is {etag}",
                                     details={"etag": etag})
    if_none_match = headers.get("If-None-Match")
    if if_none_match is None:
        return False
    tags = _tags(if_none_match)
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)
