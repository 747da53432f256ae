"""The node's local HTTP bridge (aiohttp), for apps and the CLI.

    runtime.py    Bridge: aiohttp on its own thread and loop, beside the trio node
    app.py        the routes (REST under /v1, changefeed, health, metrics)
    auth.py       bearer tokens, roles, registry scopes, rate limits
    audit.py      batched audit notes for reads and denials
    errors.py     error classes of the HTTP edge and the JSON error shape
    streaming.py  long-poll, Server-Sent Events, WebSocket
    openapi.py    the OpenAPI 3.1 document (also the request validator)
    metrics.py    Prometheus metrics

``Bridge`` and ``BridgeConfig`` are imported on first use, so that the
client (which needs only ``errors``) does not pay for importing aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registrygrid.node.bridge.runtime import Bridge, BridgeConfig

__all__ = ["Bridge", "BridgeConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from registrygrid.node.bridge import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
