"""API tokens of the HTTP bridge: who may call it, with which role, where.

A token is shown once, at creation, as ``rgt_<id>.<secret>``; the store keeps
only ``sha256(secret)``. The secret is 32 random bytes (256 bits) from
``secrets``, so no slow password KDF (bcrypt, scrypt, argon2) is needed:
those exist to slow the guessing of low-entropy human passwords, and nobody
can enumerate a 2**256 space however fast each guess is. A plain hash keeps
every authenticated request at a few microseconds.

Layout (sub-database ``tokens``, see ``storage/store.py``):
``token id`` -> msgpack map {id, name, role, registry, created_at,
expires_at, revoked_at, created_by, hash}. Times are Unix milliseconds.

Tokens are node-local configuration, not replicated data: they never enter
the feed or gossip. Creation and revocation are audited by the caller (the
bridge or the CLI), which knows who asked.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from registrygrid.errors import NotFound, Unauthorized, ValidationError
from registrygrid.protocol import names
from registrygrid.storage.store import Store, Txn, pack, unpack

ROLES = ("reader", "writer", "admin")
PREFIX = "rgt_"
# 9 random bytes -> 12 base64url characters: ids only need to be unique in
# one home (2**72 makes a collision a non-event) and short enough to type.
_ID_BYTES = 9
# 32 bytes = 256 bits of secret (see the module docstring).
_SECRET_BYTES = 32
_TOKEN = re.compile(r"^rgt_([A-Za-z0-9_-]{12})\.([A-Za-z0-9_-]{43})$")
# A token id as made here: anything else names no token (and an empty or
# long one is no LMDB key: mdb_get failed with MDB_BAD_VALSIZE).
_ID = re.compile(r"[A-Za-z0-9_-]{12}")
# A label for people and the audit log; short enough to stay readable there.
MAX_NAME = 64
NAME_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9 ._:@/+-]{{0,{MAX_NAME - 1}}}$"
_NAME = re.compile(NAME_PATTERN)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Token:
    id: str
    name: str
    role: str
    registry: str | None  # None: every registry
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    created_by: str

    @property
    def actor(self) -> str:
        """How the audit log names this token's holder."""
        return f"token:{self.name}#{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "registry": self.registry,
                "created_at": self.created_at, "expires_at": self.expires_at, "revoked_at": self.revoked_at,
                "created_by": self.created_by}

    def to_api(self, *, local: bool = False) -> dict[str, Any]:
        """The token as the bridge answers and ``rgrid token`` prints it: the
        stored fields (never the hash) and ``local``, true for the running
        node's own CLI credential (the admin token it wrote to bridge.json,
        ``node/bridge/runtime.py``), which the API refuses to revoke. Only a
        running node has one, so a store opened without a node says false."""
        return {**self.to_dict(), "local": local}


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _decode(raw: bytes) -> tuple[Token, bytes]:
    data = unpack(raw)
    digest = data.pop("hash")
    return Token(**data), digest


def new_token_id() -> str:
    """12 URL-safe characters, never starting with "-" or "_": an id is typed
    as a command-line argument (``rgrid token revoke ID``), where a leading
    "-" reads as an option (found by a CI run that drew one)."""
    while True:
        token_id = secrets.token_urlsafe(_ID_BYTES)
        if token_id[0].isalnum():
            return token_id


def create(store: Store, *, role: str, name: str = "", registry: str | None = None,
           expires_at: int | None = None, created_by: str = "", at_ms: int | None = None) -> tuple[Token, str]:
    """Store a new token; return it and its secret form (``rgt_<id>.<secret>``), which is never stored."""
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}, not {role!r}",
                              details=[{"path": "/role", "message": f"not one of {list(ROLES)}"}])
    if registry is not None:
        names.registry_name(registry)
        if role == "admin":
            # An admin can mint tokens for any registry, so a scope on an
            # admin token would promise a confinement it cannot keep.
            raise ValidationError("an admin token cannot be limited to one registry",
                                  details=[{"path": "/registry", "message": "not allowed with role admin"}])
    created = now_ms() if at_ms is None else at_ms
    if expires_at is not None and expires_at <= created:
        raise ValidationError("a token must expire in the future",
                              details=[{"path": "/expires_in", "message": "must be positive"}])
    token_id = new_token_id()
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    if name and not _NAME.fullmatch(name):
        raise ValidationError(f"token name must match {_NAME.pattern}",
                              details=[{"path": "/name", "message": f"must match {_NAME.pattern}"}])
    token = Token(id=token_id, name=name or f"token-{token_id}", role=role, registry=registry,
                  created_at=created, expires_at=expires_at, revoked_at=None, created_by=created_by)
    record = pack({**token.to_dict(), "hash": _hash(secret)})
    store.transact(lambda txn: txn.put(token_id.encode(), record, db=store.db["tokens"], overwrite=False))
    return token, f"{PREFIX}{token_id}.{secret}"


def authenticate(store: Store, presented: str, *, at_ms: int | None = None) -> Token:
    """The live token named by ``presented``, or Unauthorized saying why not."""
    match = _TOKEN.fullmatch(presented)
    if match is None:
        raise Unauthorized("malformed token: expected rgt_<id>.<secret>")
    token_id, secret = match.groups()
    with store.read() as txn:
        raw = txn.get(token_id.encode(), db=store.db["tokens"])
    if raw is None:
        raise Unauthorized("unknown token")
    token, digest = _decode(raw)
    if not hmac.compare_digest(digest, _hash(secret)):
        raise Unauthorized("unknown token")
    if token.revoked_at is not None:
        raise Unauthorized(f"token {token.id} was revoked")
    if token.expires_at is not None and (now_ms() if at_ms is None else at_ms) >= token.expires_at:
        raise Unauthorized(f"token {token.id} expired")
    return token


def live(store: Store, token_id: str, *, at_ms: int | None = None) -> Token | None:
    """The token ``token_id`` if it is neither revoked nor expired."""
    token = get(store, token_id)
    if token is None or token.revoked_at is not None:
        return None
    if token.expires_at is not None and (now_ms() if at_ms is None else at_ms) >= token.expires_at:
        return None
    return token


def get(store: Store, token_id: str) -> Token | None:
    if not _ID.fullmatch(token_id):
        return None
    with store.read() as txn:
        raw = txn.get(token_id.encode(), db=store.db["tokens"])
    return None if raw is None else _decode(raw)[0]


def list_all(store: Store) -> list[Token]:
    with store.read() as txn:
        return sorted((_decode(v)[0] for _, v in txn.cursor(db=store.db["tokens"])),
                      key=lambda t: (t.created_at, t.id))


def revoke(store: Store, token_id: str, *, at_ms: int | None = None) -> Token:
    """Mark a token revoked (kept, so the audit log's names stay resolvable)."""
    return revoke_once(store, token_id, at_ms=at_ms)[0]


def revoke_once(store: Store, token_id: str, *, at_ms: int | None = None) -> tuple[Token, bool]:
    """``revoke``, and whether this call revoked it (False: it was already),
    so the audit log records only the revocation that happened."""
    if not _ID.fullmatch(token_id):
        raise NotFound(f"no token {token_id!r}")
    key = token_id.encode()

    def mark(txn: Txn) -> tuple[Token, bool]:
        raw = txn.get(key, db=store.db["tokens"])
        if raw is None:
            raise NotFound(f"no token {token_id!r}")
        token, digest = _decode(raw)
        if token.revoked_at is not None:
            return token, False
        token = Token(**{**token.to_dict(), "revoked_at": now_ms() if at_ms is None else at_ms})
        txn.put(key, pack({**token.to_dict(), "hash": digest}), db=store.db["tokens"])
        return token, True

    return store.transact(mark)


_DURATION = re.compile(r"^([0-9]{1,6})([smhdw])$")  # ASCII digits: \d takes any script's
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Ten years: a bound that keeps expiry arithmetic sane and still lets an
# operator say "practically forever"; omit the expiry for a token that never expires.
MAX_LIFETIME_S = 10 * 365 * 86400


def parse_duration(text: str) -> int:
    """'30d', '12h', '90m', '3600s', '2w' -> seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValidationError(f"bad duration {text!r}: expected a number and one of s m h d w, e.g. 30d")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not 0 < seconds <= MAX_LIFETIME_S:
        raise ValidationError(f"duration must be between 1 second and {MAX_LIFETIME_S // 86400} days")
    return seconds
