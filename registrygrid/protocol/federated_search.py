"""Federated search between nodes: the messages.

A node asks its federation's peers (and the providers of registries it
follows) ``/registrygrid/search/1.0.0`` with a query in the JSON form of
search/query.py and a deadline. The peer answers from its own index, over
the registries the asker may read, with one page of hits. A hit carries no
record: it carries the record's signed changes, from its create on, so the
asker rebuilds the record itself and shows nothing a peer could have made
up (search/proof.py). A peer can still leave out a record's latest changes
(as any replica can be behind); the answer says how far its index got.

Sans-IO: the request and the response, and their caps.
"""

from __future__ import annotations

from typing import Any

import msgspec

from registrygrid.errors import MalformedInput, TooLarge

SEARCH_PROTOCOL_ID = "/registrygrid/search/1.0.0"
# A query's JSON is at most a few KiB (query.py caps its text, nodes and lists).
MAX_REQUEST_BYTES = 64 * 1024
# One page: the query language's own cap on limit.
MAX_HITS = 100
# A record's changes in one hit: a record edited more often is left out of
# the answer (counted in ``withheld``): the asker could not check it cheaply,
# and a node that holds the registry shows it.
MAX_CHANGES_PER_HIT = 256
# The whole answer, changes included: at ~1 KiB per change, 100 hits of
# tens of changes each.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class SearchRequest(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    query: bytes  # the query's JSON (search/query.py), without cursor or federated
    deadline_ms: int  # the asker stops waiting after this long: work beyond it is wasted


class Hit(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    registry: str
    id: str
    score: float
    sort_value: Any  # the value the query sorts by (None for relevance)
    changes: list[bytes]  # the record's signed envelopes, in the order they applied


class SearchResponse(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    hits: list[Hit]
    total: int  # matches in the peer's index, over what the asker may read
    indexed_through: int  # the peer's feed sequence its index reflects
    withheld: int  # hits left out: too many changes, or the answer's byte cap


def encode_request(query_json: bytes, deadline_ms: int) -> bytes:
    return msgspec.msgpack.encode(SearchRequest(query_json, deadline_ms))


def decode_request(data: bytes) -> SearchRequest:
    if len(data) > MAX_REQUEST_BYTES:
        raise TooLarge(f"a search request of {len(data)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        return msgspec.msgpack.decode(data, type=SearchRequest)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"malformed search request: {exc}") from None


def encode_response(response: SearchResponse) -> bytes:
    return msgspec.msgpack.encode(response)


def decode_response(data: bytes) -> SearchResponse:
    if len(data) > MAX_RESPONSE_BYTES:
        raise TooLarge(f"a search response of {len(data)} bytes exceeds {MAX_RESPONSE_BYTES}")
    try:
        response = msgspec.msgpack.decode(data, type=SearchResponse)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:  # nested too deep; bad UTF-8
        raise MalformedInput(f"malformed search response: {exc}") from None
    if len(response.hits) > MAX_HITS:
        raise TooLarge(f"a search response holds at most {MAX_HITS} hits")
    for hit in response.hits:
        if len(hit.changes) > MAX_CHANGES_PER_HIT:
            raise TooLarge(f"a hit carries at most {MAX_CHANGES_PER_HIT} changes")
    return response
