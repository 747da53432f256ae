"""Gossip framing (protocol/gossip.py): batches of envelopes, the batcher's flush rules, hostile bytes."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.errors import MalformedInput, RegistryError, TooLarge
from registrygrid.protocol import limits
from registrygrid.protocol.gossip import (
    FLUSH_AFTER_S,
    GOSSIP_VERSION,
    MAX_BATCH_BYTES,
    MAX_BATCH_ENVELOPES,
    Batcher,
    decode_batch,
    encode_batch,
    topic_for,
)

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_topic_is_named_and_versioned_per_federation() -> None:
    assert topic_for("acme-grid") == "/registrygrid/1/acme-grid/changes"


@BOUNDED
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=50))
def test_decode_of_encode_gives_back_the_envelopes_in_order(envelopes: list[bytes]) -> None:
    assert decode_batch(encode_batch(envelopes)) == envelopes


@BOUNDED
@given(st.binary(max_size=4096))
def test_no_bytes_crash_the_batch_decoder(data: bytes) -> None:
    try:
        decode_batch(data)
    except RegistryError:
        pass


@pytest.mark.parametrize("message, error", [
    (msgspec.msgpack.encode([GOSSIP_VERSION, []]), MalformedInput),  # empty batch
    (msgspec.msgpack.encode([GOSSIP_VERSION + 1, [b"x"]]), MalformedInput),
    (msgspec.msgpack.encode([GOSSIP_VERSION, ["text, not bytes"]]), MalformedInput),
    (msgspec.msgpack.encode({"v": GOSSIP_VERSION}), MalformedInput),
    (msgspec.msgpack.encode([GOSSIP_VERSION, [b"x"] * (MAX_BATCH_ENVELOPES + 1)]), MalformedInput),
    (msgspec.msgpack.encode([GOSSIP_VERSION, [b"x" * (limits.MAX_ENVELOPE_BYTES + 1)]]), TooLarge),
    (b"\x00" * (MAX_BATCH_BYTES + 64 * 1024 + 1), TooLarge),
])
def test_bad_batches_are_typed_errors(message: bytes, error: type[RegistryError]) -> None:
    with pytest.raises(error):
        decode_batch(message)


def test_the_batcher_flushes_when_the_next_envelope_would_not_fit() -> None:
    batcher = Batcher(max_bytes=1000)
    assert batcher.add(b"a" * 600, now=0.0) == []
    ready = batcher.add(b"b" * 600, now=0.0)
    assert [decode_batch(m) for m in ready] == [[b"a" * 600]]
    assert decode_batch(batcher.flush() or b"") == [b"b" * 600]
    assert batcher.flush() is None


def test_a_lone_envelope_after_a_quiet_spell_goes_out_at_once() -> None:
    batcher = Batcher()
    assert batcher.add(b"x", now=10.0) == []
    assert batcher.deadline() is not None and batcher.deadline() <= 10.0  # type: ignore[operator]
    assert decode_batch(batcher.due(10.0) or b"") == [b"x"]
    assert batcher.deadline() is None and batcher.due(99.0) is None


def test_a_burst_leaves_as_at_most_one_message_per_flush_delay() -> None:
    batcher = Batcher()
    batcher.add(b"a", now=10.0)
    assert decode_batch(batcher.due(10.0) or b"") == [b"a"]  # the first goes at once
    batcher.add(b"b", now=10.001)
    batcher.add(b"c", now=10.002)
    assert batcher.deadline() == pytest.approx(10.0 + FLUSH_AFTER_S)
    assert batcher.due(10.0 + FLUSH_AFTER_S / 2) is None  # the rest waits for company
    assert decode_batch(batcher.due(10.0 + FLUSH_AFTER_S) or b"") == [b"b", b"c"]
    batcher.add(b"d", now=10.0 + FLUSH_AFTER_S + 0.001)
    assert batcher.due(10.0 + FLUSH_AFTER_S + 0.001) is None


def test_the_batcher_caps_the_envelope_count() -> None:
    batcher = Batcher()
    ready = []
    for i in range(MAX_BATCH_ENVELOPES + 1):
        ready += batcher.add(i.to_bytes(4, "big"), now=0.0)
    assert len(ready) == 1 and len(decode_batch(ready[0])) == MAX_BATCH_ENVELOPES


@BOUNDED
@given(st.lists(st.integers(min_value=1, max_value=limits.MAX_ENVELOPE_BYTES), min_size=1, max_size=40))
def test_every_batch_decodes_within_the_caps_and_keeps_order(sizes: list[int]) -> None:
    batcher = Batcher()
    envelopes = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
    messages = []
    for wire in envelopes:
        messages += batcher.add(wire, now=0.0)
    tail = batcher.flush()
    messages += [tail] if tail else []
    out = []
    for message in messages:
        batch = decode_batch(message)  # under the decoder's cap, so peers accept it
        assert sum(map(len, batch)) <= MAX_BATCH_BYTES or len(batch) == 1
        out += batch
    assert out == envelopes
