"""Clients of a running node's HTTP bridge, for apps that talk to a node rather than embed it.

    sync.py    BridgeClient: blocking (http.client), the SDK's methods over HTTP; the CLI uses it
    aio.py     AsyncBridgeClient: the same methods as coroutines, on asyncio (aiohttp)
    calls.py   what both send and how they read the answers (no I/O)
    retry.py   RetryPolicy: which failures are retried, how long to wait (no I/O)
    sse.py     a Server-Sent Events decoder (no I/O)

Both give typed errors (the ``RegistryError`` subclass of each answer's
code: node/bridge/errors.py ``rebuild``), retries with backoff and full
jitter on 429/503 honoring Retry-After, idempotency keys on creating
writes, cursor-following iterators, and a changefeed subscription that
resumes after a disconnect. ``AsyncBridgeClient`` is imported on first
use, so the sync client (and the CLI) does not pay for importing aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from registrygrid.client.retry import NO_RETRY, RATE_LIMITS_ONLY, Retrying, RetryPolicy
from registrygrid.client.sync import BridgeClient, Subscription
from registrygrid.errors import RegistryError

if TYPE_CHECKING:
    from registrygrid.client.aio import AsyncBridgeClient, AsyncSubscription

__all__ = ["NO_RETRY", "RATE_LIMITS_ONLY", "AsyncBridgeClient", "AsyncSubscription", "BridgeClient",
           "RegistryError", "RetryPolicy", "Retrying", "Subscription"]


def __getattr__(name: str) -> Any:
    if name in ("AsyncBridgeClient", "AsyncSubscription"):
        from registrygrid.client import aio

        return getattr(aio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
