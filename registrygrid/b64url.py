"""Unpadded base64url (RFC 4648 section 5), as cursors and JWS spell bytes: one text per value.

Python's ``urlsafe_b64decode`` skips characters outside the alphabet and
takes any padding, so ``WyJ6Iiw!!!ieiJd`` and ``WyJ6IiwieiJd====`` were the
cursor ``WyJ6IiwieiJd``: a mangled or forged cursor passed for one this
node made. ``decode`` takes the one spelling ``encode`` gives.
"""

from __future__ import annotations

import base64
import re

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode(text: str) -> bytes:
    """The bytes ``text`` spells; ValueError unless ``encode`` gives it back."""
    if not _ALPHABET.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if encode(data) != text:  # stray bits in the last character
        raise ValueError("not unpadded base64url")
    return data
