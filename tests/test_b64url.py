"""Unpadded base64url (registrygrid/b64url.py): the one spelling cursors and JWS use."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registrygrid import b64url


@given(st.binary(max_size=64))
def test_what_encode_spells_decodes_back(data: bytes) -> None:
    text = b64url.encode(data)
    assert "=" not in text and b64url.decode(text) == data


@pytest.mark.parametrize("text", [
    "WyJ6Iiw!!!ieiJd",  # characters outside the alphabet, which Python's decoder skips
    "WyJ6IiwieiJd====",  # padding, which it takes in any amount
    "WyJ6IiwieiJd\n",
    "WyJ6Iiw+ieiJd",  # the other alphabet's characters
    "A",  # no byte ends after one character
    "QR",  # stray bits: "QQ" is the spelling of b"A"
])
def test_any_other_spelling_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        b64url.decode(text)
