"""What a registry name, record id, kind name and tag may look like.

They become LMDB keys, gossip topic segments and URL path segments, so they
are short, ASCII and free of separators we use ('\\x00' in keys, '/' in URLs).
"""

from __future__ import annotations

import os
import random
import re
import time

from registrygrid.errors import ValidationError
from registrygrid.protocol import base32, limits

# Dotted, lower-case namespaces like "grid.functions" or "acme.models-eu".
REGISTRY_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,%d}$" % (limits.MAX_REGISTRY_NAME - 1))
# Record ids are user-chosen slugs or generated ULIDs; ':' and '@' allow
# names like "model:llama-3@8b".
RECORD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@~+-]{0,%d}$" % (limits.MAX_RECORD_ID - 1))
KIND_NAME = re.compile(r"^[a-z][a-z0-9-]{0,%d}$" % (limits.MAX_KIND_NAME - 1))
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/=+-]{0,%d}$" % (limits.MAX_TAG_LENGTH - 1))


def check(pattern: re.Pattern[str], value: object, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValidationError(
            f"invalid {what} {value!r}: must match {pattern.pattern}",
            details=[{"path": what, "message": f"must match {pattern.pattern}"}],
        )
    return value


def registry_name(value: object) -> str:
    return check(REGISTRY_NAME, value, "registry name")


def federation_name(value: object) -> str:
    """A federation's name: spelled as a registry's (lower case), and said so."""
    return check(REGISTRY_NAME, value, "federation name")


def record_id(value: object) -> str:
    return check(RECORD_ID, value, "record id")


def kind_name(value: object) -> str:
    return check(KIND_NAME, value, "kind")


def tag(value: object) -> str:
    return check(TAG, value, "tag")


# Record ids need to be unique, not secret: a PRNG seeded from the OS per
# process gives 80 fresh bits for ~0.1 µs instead of a getrandom() syscall
# on every create. (A forked child reseeds: see below.)
_id_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _id_random.seed(os.urandom(32)))


def new_record_id() -> str:
    """A ULID (48-bit ms time + 80 random bits, Crockford base32): unique and time-sortable.

    Sortable ids keep a registry's default listing in creation order.
    """
    value = (time.time_ns() // 1_000_000) << 80 | _id_random.getrandbits(80)
    return base32.encode_int(value, 26, base32.CROCKFORD)
