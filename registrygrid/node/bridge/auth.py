"""Who may call the bridge: bearer tokens, roles, registry scopes, rate limits.

A request names its token in ``Authorization: Bearer rgt_<id>.<secret>``
(RFC 6750). Roles nest: a reader may read, a writer may also write records,
registries and kinds, an admin may also manage tokens and read the audit
ledger. A token limited to one registry reads and writes only there
(cross-registry listings and the changefeed are narrowed to it).

No token or a bad one -> 401 (with ``WWW-Authenticate``); a good token
without the role or scope -> 403. Both are audited as ``deny`` entries (the
bridge batches them, see ``audit.py``), and so is an attempt to revoke the
node's own CLI token (409, ``Authenticator.refuse``). A 429 is counted in
metrics but not audited: auditing every throttled request would let a
client fill the ledger at exactly the rate it is being held back.

Rate limits are token buckets, one per token, plus one per client address
for requests without a valid token (so a flood of bad tokens cannot flood
the audit ledger either). The defaults suit a local app: 500 requests/s
sustained with bursts of 1,000. That is a fifth of the fsync-bound durable
write rate of this machine class (~2.5k commits/s, DESIGN.md), so one busy
token cannot starve the others, while a paging sweep of 1,000-record pages
still moves half a million records a second. ``BridgeConfig`` changes them.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from registrygrid.errors import PolicyDenied, RateLimited, RegistryError, Unauthorized
from registrygrid.node.bridge.audit import AuditBuffer
from registrygrid.storage import tokens
from registrygrid.storage.store import Store
from registrygrid.storage.tokens import Token

READ, WRITE, ADMIN = "read", "write", "admin"
GRANTS = {"reader": frozenset({READ}), "writer": frozenset({READ, WRITE}), "admin": frozenset({READ, WRITE, ADMIN})}

DEFAULT_RATE = 500.0  # requests/s sustained per token (see the module docstring)
DEFAULT_BURST = 1000.0
# Buckets kept in memory; past this the idle (full) ones are dropped. A full
# bucket carries no information, so dropping it changes no answer.
MAX_BUCKETS = 10_000
# Verified tokens are remembered this long: a revocation made by another
# process while the node runs takes effect within a second (one made through
# the bridge at once), and a busy token costs one LMDB lookup a second.
TOKEN_CACHE_S = 1.0
# Distinct presented tokens remembered; past it the cache starts over, so
# clients cycling through bad or many tokens cannot grow it without bound.
TOKEN_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class RateLimit:
    rate: float = DEFAULT_RATE
    burst: float = DEFAULT_BURST


class RateLimiter:
    """Token buckets keyed by token id or client address. Used from the bridge's loop thread only."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    def take(self, key: str) -> float:
        """0.0 if the request may go now, else the seconds until it may."""
        now = self.clock()
        rate, burst = self.limit.rate, self.limit.burst
        level, last = self._buckets.get(key, (burst, now))
        level = min(burst, level + (now - last) * rate)
        if level >= 1.0:
            self._buckets[key] = (level - 1.0, now)
            if len(self._buckets) > MAX_BUCKETS:
                self._forget_idle(now)
            return 0.0
        self._buckets[key] = (level, now)
        return (1.0 - level) / rate

    def _forget_idle(self, now: float) -> None:
        rate, burst = self.limit.rate, self.limit.burst
        for key, (level, last) in list(self._buckets.items()):
            if level + (now - last) * rate >= burst:
                del self._buckets[key]


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return remote == "localhost"


class Authenticator:
    """Answers "who is this and may they do that?" for one request."""

    def __init__(self, store: Store, limiter: RateLimiter, audit: AuditBuffer,
                 on_deny: Callable[[int], None] = lambda status: None,
                 on_throttle: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self._cache: dict[str, tuple[Token, float]] = {}
        self.limiter = limiter
        self.audit = audit
        self.on_deny = on_deny
        self.on_throttle = on_throttle

    def authenticate(self, authorization: str | None, remote: str | None, target: str) -> Token:
        if not authorization:
            self._throttle(f"addr:{remote}")
            raise self._deny(401, f"anonymous@{remote}", target,
                             Unauthorized("this endpoint needs a token: send Authorization: Bearer rgt_..."))
        scheme, _, presented = authorization.partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise Unauthorized("use the Bearer scheme: Authorization: Bearer rgt_...")
            token = self._verified(presented.strip())
        except Unauthorized as exc:
            self._throttle(f"addr:{remote}")
            raise self._deny(401, f"anonymous@{remote}", target, exc) from None
        self._throttle(f"token:{token.id}")
        return token

    def recheck(self, authorization: str, remote: str | None, target: str) -> None:
        """The token that passed ``require`` is still good (not revoked, not
        expired) once a request's body has arrived: the check was made at the
        headers, and a body trickled in at up to a minute a gap kept a
        revoked token writing for as long as it took."""
        _, _, presented = authorization.partition(" ")
        try:
            self._verified(presented.strip())
        except Unauthorized as exc:
            raise self._deny(401, f"anonymous@{remote}", target, exc) from None

    def _verified(self, presented: str) -> Token:
        """``tokens.authenticate`` (an LMDB read, a decode and a SHA-256: ~13%
        of a GET) at most once a second per presented token. Expiry is still
        checked on every request; a revocation through this bridge drops the
        token at once (``forget``), one made by another process while the
        node runs takes effect within ``TOKEN_CACHE_S``."""
        now = time.monotonic()
        cached = self._cache.get(presented)
        if cached is not None and now - cached[1] < TOKEN_CACHE_S:
            token = cached[0]
            if token.expires_at is not None and tokens.now_ms() >= token.expires_at:
                raise Unauthorized(f"token {token.id} expired")
            return token
        token = tokens.authenticate(self.store, presented)
        if len(self._cache) >= TOKEN_CACHE_ENTRIES:
            self._cache.clear()
        self._cache[presented] = (token, now)
        return token

    def forget(self, token_id: str) -> None:
        """Drop a token from the cache (it was revoked)."""
        for presented, (token, _) in list(self._cache.items()):
            if token.id == token_id:
                self._cache.pop(presented, None)

    def require(self, authorization: str | None, remote: str | None, need: str, *,
                registry: str | None = None, target: str = "") -> Token:
        """The caller's token, if it grants ``need`` on ``registry`` (None: not registry-bound)."""
        target = target or registry or ""
        token = self.authenticate(authorization, remote, target)
        if need not in GRANTS[token.role]:
            raise self._deny(403, token.actor, target, PolicyDenied(
                f"a {token.role} token cannot {need} here; it needs "
                f"{'a writer or admin' if need == WRITE else 'an admin'} token"))
        if registry is not None and token.registry is not None and registry != token.registry:
            raise self._deny(403, token.actor, target, PolicyDenied(
                f"this token is limited to registry {token.registry}, not {registry}"))
        return token

    def throttle_address(self, remote: str | None) -> None:
        """The rate limit of a request without a token, for a route that asks
        none (the well-known discovery documents): RateLimited past it."""
        self._throttle(f"addr:{remote}")

    def _throttle(self, key: str) -> None:
        wait = self.limiter.take(key)
        if wait > 0:
            self.on_throttle()
            raise RateLimited(f"rate limit of {self.limiter.limit.rate:g} requests/s exceeded; retry later",
                              details={"retry_after_s": round(wait, 3)})

    def refuse(self, actor: str, target: str, exc: RegistryError) -> RegistryError:
        """A refusal a handler decides after authentication (the node's own
        CLI token, which no API call may revoke): audited as a ``deny`` entry
        and counted like a 401/403, so the ledger shows who tried."""
        return self._deny(exc.http_status, actor, target, exc)

    def _deny(self, status: int, actor: str, target: str, exc: RegistryError) -> RegistryError:
        self.audit.note("deny", actor, target, exc.audit_reason(), required=False)
        self.on_deny(status)
        return exc
