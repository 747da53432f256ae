"""Names and IDs: what a registry name, record id, kind and tag may be, and
how change and record IDs are written as text."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registrygrid.errors import ValidationError
from registrygrid.protocol import base32, names
from registrygrid.protocol.envelope import cid_from_str, cid_to_str


@pytest.mark.parametrize("check, good", [
    (names.registry_name, "grid.functions"),
    (names.record_id, "model:llama-3@8b"),
    (names.kind_name, "function"),
    (names.tag, "inference"),
])
def test_a_name_with_a_trailing_newline_is_refused(check, good):
    # Python's "$" also matches before a final newline; names become LMDB
    # keys, topics and URL segments, so the whole string must match.
    assert check(good) == good
    with pytest.raises(ValidationError):
        check(good + "\n")


@given(st.binary(max_size=64))
def test_base32_text_equals_the_stdlib_encoding(data):
    assert base32.encode_bytes(data) == base64.b32encode(data).decode().rstrip("=").lower()


def test_change_id_text_round_trips():
    for _ in range(200):
        cid = b"\x01\x55\x12\x20" + os.urandom(32)
        assert cid_from_str(cid_to_str(cid)) == cid


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_ulid_digits_are_crockford_base32_most_significant_first(value):
    text = base32.encode_int(value, 26)
    assert len(text) == 26
    assert int(text.translate(str.maketrans(base32.CROCKFORD, "0123456789abcdefghijklmnopqrstuv")), 32) == value


def test_new_record_ids_are_unique_valid_and_time_sorted():
    ids = [names.new_record_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(names.record_id(i) == i and len(i) == 26 for i in ids)
    # The 10 leading characters are the millisecond clock: never decreasing.
    stamps = [i[:10] for i in ids]
    assert stamps == sorted(stamps)


def test_a_forked_child_draws_different_record_ids():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one id's random part, then leave at once
        os.write(write, names.new_record_id()[10:].encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert child and child != names.new_record_id()[10:]
