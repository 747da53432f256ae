"""How the bridge stops: running requests get the grace, then their connections close.

A real node and bridge in the test's nursery, stopped by cancelling it (as
Ctrl-C does), with clients on raw loopback sockets that misbehave on purpose.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
from test_bridge_assets import PART, upload
from test_bridge_support import UNLIMITED, raw_request, read_to_the_end, start_served, until_metric

from registrygrid.node.bridge import BridgeConfig

GRACE_S = 1.0
WEBSOCKET_UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


@contextmanager
def bridge_log() -> Iterator[list[str]]:
    """The messages the bridge logs meanwhile, INFO and up."""
    messages: list[str] = []

    class Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("registrygrid.bridge"), Kept(logging.INFO)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_a_stop_closes_the_connections_still_answering_once_its_grace_is_over(tmp_path: Path) -> None:
    # A handler blocked on a client that reads nothing ends only when its
    # socket moves: aiohttp, past the grace, waits a second grace before it
    # cancels such a handler, so a stop took twice its grace, and a
    # WebSocket whose client ignores the close held it for ten seconds.
    config = BridgeConfig(rate_limit=UNLIMITED, shutdown_grace_s=GRACE_S)
    data = os.urandom(24 * PART)  # more than loopback's socket buffers hold
    with bridge_log() as logged, trio.fail_after(60):
        async with trio.open_nursery() as running:
            served = await start_served(running, tmp_path / "home", config)
            cid = (await upload(served, data))["cid"]
            download = await raw_request(served, f"/v1/blobs/{cid}")
            await until_metric(served, "rgrid_bridge_downloads 1.0")
            websocket = await raw_request(served, "/v1/changes/ws", WEBSOCKET_UPGRADE)
            assert (await websocket.recv(4096)).startswith(b"HTTP/1.1 101")
            running.cancel_scope.cancel()  # the node stops, as on Ctrl-C
        assert await read_to_the_end(download) < len(data)
        await read_to_the_end(websocket)  # its close frame came, then the connection closed
    assert f"closed 2 connection(s) still answering after the {GRACE_S:.1f} s shutdown grace" in logged
