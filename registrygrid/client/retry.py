"""When a client asks the bridge again, and how long it waits first. No I/O here.

Both clients (``sync.py``, ``aio.py``) run one loop: send, look at how the
attempt ended, ask ``RetryPolicy.delay`` whether and when to try again.
The rules, by how an attempt ended:

- **429 rate_limited**: always retried. The bridge's rate limiter answers
  before any handler runs (``node/bridge/auth.py``), so nothing was done.
- **503 disabled** (the node runs without what was asked: --no-search,
  --no-dht, --no-p2p) and **503 store_recovering** (a lost store recovers,
  docs/trust.md): never retried, they last until the operator acts.
- **503 unavailable** (the node is stopping or starting, too many streams,
  a view not yet materialized) and **a connection lost after the request
  went out**: retried only when the request is *replayable*: a read
  (GET), a POST the bridge deduplicates by ``Idempotency-Key``, or a call
  the client knows to be harmless twice (a search, a policy explanation,
  a peer deny). Other writes (PUT, PATCH, DELETE, token creation) may have
  been applied, and a replay would answer differently (412 after an
  ``If-Match``, 404 after a delete): the error is raised instead.
- **409 idempotency_in_progress**: retried; only a keyed request gets it,
  while its first attempt is still being answered.
- **a connection that could not be made** (refused, unreachable): always
  retried, nothing reached the node.
- **a timeout**: never retried. A node that did not answer within the
  client's timeout is hung or overloaded, and a write may have happened.

Waits are exponential backoff with full jitter: attempt ``n`` waits a
uniform random time in ``[0, min(cap, base * 2**(n-1))]``. Full jitter,
because of the three schemes the AWS Architecture Blog measured
("Exponential Backoff And Jitter", Marc Brooker, 2015) it did the least
total work and finished first when many clients collide, which is the
case a rate limit creates. A ``Retry-After`` (RFC 9110 10.2.3: seconds or
an HTTP-date) is a floor: the wait is never shorter than the server asked.
A ``Retry-After`` longer than the cap is not waited out: the error is
raised, and the caller, who set the cap, decides.
"""

from __future__ import annotations

import datetime
import email.utils
import random
from dataclasses import dataclass

from registrygrid.errors import RegistryError, ValidationError

# 5 attempts, 0.2 s base: the waits' ceilings are 0.2, 0.4, 0.8 and 1.6 s,
# 3 s in all. That outlasts the bridge's own Retry-After on a 503 (1 s:
# node/bridge/app.py) and a token bucket refilling one request at the
# default 500/s (auth.py), and is short enough that a node that stays down
# is reported within seconds. AWS's SDKs make 3 attempts (standard mode)
# with a 20 s cap; we can afford more, cheaper ones: the bridge is local.
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BASE_S = 0.2
# The longest single wait, and the longest Retry-After the client obeys.
# The rate limiter asks for at most 1/rate seconds (auth.py), so 10 s
# covers limits down to one request per 10 s, and no call blocks for minutes.
DEFAULT_CAP_S = 10.0

RATE_LIMITED = 429
UNAVAILABLE = 503
IN_PROGRESS = "idempotency_in_progress"
# errors.Disabled and its kin: what lasts until the operator acts (the node
# runs without the part asked for; a lost store recovers).
LASTING = frozenset({"disabled", "store_recovering"})


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a call gets and how long it waits between them."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_s: float = DEFAULT_BASE_S
    cap_s: float = DEFAULT_CAP_S
    # True: only what the node refused before doing anything, a 429 or a
    # keyed request still in progress, is sent again; a 503, a lost answer
    # or a connection never made is raised at once (RATE_LIMITS_ONLY).
    rate_limits_only: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValidationError("RetryPolicy needs max_attempts >= 1 and 0 < base_s <= cap_s")

    def backoff(self, failures: int, rng: random.Random, base_s: float | None = None) -> float:
        """Full jitter after ``failures`` consecutive failures (1 or more)."""
        base = self.base_s if base_s is None else base_s
        return rng.uniform(0.0, min(self.cap_s, base * 2 ** min(failures - 1, 62)))

    def delay(self, attempt: int, rng: random.Random, *, retry_after: float | None = None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None: give up."""
        if attempt >= self.max_attempts:
            return None
        return self.wait(attempt, rng, retry_after=retry_after)

    def wait(self, failures: int, rng: random.Random, *, retry_after: float | None = None,
             base_s: float | None = None) -> float | None:
        """The backoff, floored by ``retry_after``; None if that is beyond the cap."""
        if retry_after is not None and retry_after > self.cap_s:
            return None
        jittered = self.backoff(failures, rng, base_s)
        return jittered if retry_after is None else max(retry_after, jittered)

    def reconnect(self, failures: int, rng: random.Random, *, retry_after: float | None = None,
                  hint_s: float | None = None, max_reconnects: int | None = None) -> float | None:
        """Seconds before a stream's next connection after ``failures`` in a
        row, or None: give up. The stream's own ``retry:`` hint (WHATWG HTML
        9.2.6, the bridge's is 1 s) raises the base; ``max_reconnects`` None
        reconnects for as long as the caller waits, as EventSource does."""
        if max_reconnects is not None and failures > max_reconnects:
            return None
        return self.wait(failures, rng, retry_after=retry_after, base_s=max(self.base_s, hint_s or 0.0))


# One attempt, no waiting: what a caller passes to turn retries off.
NO_RETRY = RetryPolicy(max_attempts=1)
# The CLI's: a command's error goes to a person who can run it again at
# once, rather than wait out a 503; but a rate limit is the node pacing a
# command that sends many requests (an import of thousands of documents,
# which failed on its first 429), and is waited out.
RATE_LIMITS_ONLY = RetryPolicy(rate_limits_only=True)


@dataclass(frozen=True)
class Retrying:
    """What a client's ``on_retry`` hook is told before it waits."""

    method: str
    path: str
    attempt: int  # the attempt that failed (1 = the first)
    delay_s: float
    error: RegistryError


class NoAnswer(Exception):
    """An attempt that got no answer: ``sent`` False if nothing reached the node."""

    def __init__(self, error: RegistryError, *, sent: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.sent = sent


class Refused(Exception):
    """An error answer to a stream's request, with its Retry-After in seconds (or None)."""

    def __init__(self, error: RegistryError, retry_after: float | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


def retryable(*, status: int | None, code: str | None, sent: bool, replayable: bool,
              rate_limits_only: bool = False) -> bool:
    """Whether an attempt that ended so may be made again (the module docstring's rules).

    ``status`` is None when no answer came: ``sent`` says whether the
    request may have reached the node (False: the connection was never made)."""
    if status == RATE_LIMITED or code == IN_PROGRESS:
        return True
    if rate_limits_only:
        return False
    if status is None:
        return replayable or not sent
    return status == UNAVAILABLE and code not in LASTING and replayable


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 10.2.3), or
    None if absent or unreadable. ``now`` is the wall clock (``time.time()``)
    an HTTP-date is measured from; a date in the past means no wait."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 9110 5.6.7: HTTP-dates are in GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)
