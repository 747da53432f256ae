"""A peer's message holding bytes that are no UTF-8 where a string goes.
msgspec says so with UnicodeDecodeError, not DecodeError: the decoders
that caught only the latter let it escape untyped, and a follower's sync
loop, or the DHT's adoption of a registry's records, took the node down
with it. Each decoder answers MalformedInput."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from registrygrid.errors import MalformedInput
from registrygrid.identity import delegation
from registrygrid.protocol import federated_search, registry_record, remote_read

MARK = "zzzzzzzz"


def spoiled(message: bytes) -> bytes:
    """``message`` with the string MARK in it made of bytes that are no UTF-8."""
    assert MARK.encode() in message
    return message.replace(MARK.encode(), b"\xff" * len(MARK))


def _read_response() -> bytes:
    return remote_read.encode_response(remote_read.ReadResponse(f"acme.{MARK}", [], [], [], False))


def _search_response() -> bytes:
    hit = federated_search.Hit(f"acme.{MARK}", "id", 1.0, None, [])
    return federated_search.encode_response(federated_search.SearchResponse([hit], 1, 0, 0))


def _registry_record() -> bytes:
    body = registry_record.RecordBody(name=f"acme.{MARK}", owner="o", claimed_at=0, version=(0, 0), change_id="c",
                                      descriptor={}, federations=[], issued_at=0, signer="s", delegation=b"")
    return msgspec.msgpack.encode(registry_record.SignedRecord(msgspec.msgpack.encode(body), b"signature"))


def _delegation() -> bytes:
    body = delegation.DelegationBody(f"did:key:{MARK}", "did:key:subject", ("writer",), 0, 1)
    return delegation.Delegation(msgspec.msgpack.encode(body), b"signature").encode()


DECODERS: dict[str, tuple[Callable[[], bytes], Callable[[bytes], object]]] = {
    "remote read request": (lambda: remote_read.encode_request(f"acme.{MARK}"), remote_read.decode_request),
    "remote read response": (_read_response, remote_read.decode_response),
    "federated search response": (_search_response, federated_search.decode_response),
    "registry record": (_registry_record, lambda raw: registry_record.read_record("k", raw, now_ms=0)),
    "delegation": (_delegation, delegation.decode_delegation),
}


@pytest.mark.parametrize("name", list(DECODERS))
def test_bytes_that_are_no_utf8_in_a_string_are_malformed_input(name: str) -> None:
    make, decode = DECODERS[name]
    with pytest.raises(MalformedInput):
        decode(spoiled(make()))
