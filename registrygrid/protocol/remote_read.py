"""Reading a public registry from a node of another federation: the messages.

A node that hosts a registry whose replication scope is ``public`` answers
``/registrygrid/read/1.0.0`` for anyone it talks to, member or not: the
signed changes of the registry's descriptor (with the rest of their
authors' chains in ``grid.registries``, which each change's chain link
needs), the federation's trust statements (which vouch for the authors),
and the registry's own changes, in their authors' chain order, bounded,
with a cursor. The reader trusts none of it: it replays everything into a
scratch store that checks every signature, chain, ownership and schema as
its own store would (node/remote_read.py), and refuses the answer whole if
anything fails.

Sans-IO: the request and the response, and their caps.
"""

from __future__ import annotations

import msgspec

from registrygrid.errors import MalformedInput, TooLarge
from registrygrid.protocol import names
from registrygrid.protocol.sync import GonePlace, check_gone

READ_PROTOCOL_ID = "/registrygrid/read/1.0.0"
# A request is a registry name and a cursor (author -> sequence held).
MAX_REQUEST_BYTES = 64 * 1024
MAX_CURSOR_AUTHORS = 1024
# The registry's own envelopes in one answer: the sync path's bound
# (protocol/sync.py); more come with the cursor.
MAX_RESPONSE_ENVELOPE_BYTES = 4 * 1024 * 1024
MAX_RESPONSE_ENVELOPES = 2000
# Plus the descriptor's chains and the statements.
MAX_RESPONSE_BYTES = MAX_RESPONSE_ENVELOPE_BYTES + 4 * 1024 * 1024


class ReadRequest(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    registry: str
    after: dict[str, int] = {}  # author did -> highest sequence of the registry the reader holds
    # What a follower holds already of the context (node/follow.py): the
    # statements (grid.members) and the descriptor's chains (grid.registries),
    # author -> highest sequence; a one-off read sends neither and gets all.
    statements_after: dict[str, int] = {}
    descriptor_after: dict[str, int] = {}


class ReadResponse(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    registry: str
    descriptor: list[bytes]  # grid.registries changes: the descriptor's, with their chains
    statements: list[bytes]  # grid.members changes: the trust statements
    envelopes: list[bytes]  # the registry's changes after the cursor, in causal order
    more: bool  # the answer was cut: ask again with the cursor moved on
    # Places of the registry's chains the reader lacks that the provider
    # holds without their bytes (erased), as a sync answer names them
    # (protocol/sync.py GonePlace): the reader links past them, or the
    # author's next change would wait for them for good. Last and left out
    # when there are none, so an answer without them reads as before.
    gone: list[GonePlace] | None = None


def encode_request(registry: str, after: dict[str, int] | None = None, *,
                   statements_after: dict[str, int] | None = None,
                   descriptor_after: dict[str, int] | None = None) -> bytes:
    return msgspec.msgpack.encode(ReadRequest(names.registry_name(registry), dict(after or {}),
                                              dict(statements_after or {}), dict(descriptor_after or {})))


def decode_request(data: bytes) -> ReadRequest:
    if len(data) > MAX_REQUEST_BYTES:
        raise TooLarge(f"a read request of {len(data)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        request = msgspec.msgpack.decode(data, type=ReadRequest)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 is its own error
        raise MalformedInput(f"malformed read request: {exc}") from None
    names.registry_name(request.registry)
    for cursor in (request.after, request.statements_after, request.descriptor_after):
        if len(cursor) > MAX_CURSOR_AUTHORS:
            raise TooLarge(f"a read cursor names at most {MAX_CURSOR_AUTHORS} authors")
        for author, seq in cursor.items():
            # Checked here as sync checks its vectors: a negative sequence
            # reached the store's u64 key and failed as an OverflowError
            # traceback, logged at ERROR as often as any peer sent it.
            if not author.startswith("did:key:") or len(author) > 128 or not 0 <= seq < 2**63:
                raise MalformedInput(f"a read cursor holds a bad entry: {author[:80]!r} -> {seq}")
    return request


def encode_response(response: ReadResponse) -> bytes:
    if response.gone is None:
        # Without gone places, as before they existed: a reader that predates
        # them refuses an array with an item more (msgspec writes trailing
        # defaults of an array-like struct).
        return msgspec.msgpack.encode((response.registry, response.descriptor, response.statements,
                                       response.envelopes, response.more))
    return msgspec.msgpack.encode(response)


def decode_response(data: bytes) -> ReadResponse:
    if len(data) > MAX_RESPONSE_BYTES:
        raise TooLarge(f"a read response of {len(data)} bytes exceeds {MAX_RESPONSE_BYTES}")
    try:
        response = msgspec.msgpack.decode(data, type=ReadResponse)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 is its own error
        raise MalformedInput(f"malformed read response: {exc}") from None
    if response.gone is not None:
        check_gone(response.gone)
    return response
