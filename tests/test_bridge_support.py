"""Shared parts of the bridge tests: a real node with its bridge on a free loopback port.

Imported by the ``test_bridge_*`` modules (it holds no tests itself). Every
server here is the real thing: ``Node.run`` in the test's trio nursery with
a temporary home, the bridge's aiohttp thread listening on 127.0.0.1:0, and
real HTTP clients (httpx, trio-websocket, the project's BridgeClient).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from registrygrid.home import Home
from registrygrid.node.bridge import Bridge, BridgeConfig
from registrygrid.node.bridge.auth import RateLimit
from registrygrid.node.node import Node

NOTE_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "n": {"type": "integer"}, "region": {"type": "string"},
                   "meta": {"type": "object"}},
    "required": ["name"],
}
REGISTRY = "test.notes"
OTHER = "test.other"
# Tests that do not test the rate limit must never meet it.
UNLIMITED = RateLimit(rate=1e9, burst=1e9)


@dataclass
class Served:
    node: Node
    bridge: Bridge
    home: Home
    url: str
    admin: str  # the CLI's admin token from bridge.json

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin}"}

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers(token), timeout=20, **kwargs)

    async def stop(self) -> None:
        """Stop the node and wait until it let its home go (its store
        closed): stop() only cancels it, and a fixed wait was sometimes too
        short on a loaded machine for the next open of the home."""
        self.node.stop()
        with trio.fail_after(30):
            while self.home.lock_holder() is not None:
                await trio.sleep(0.02)


async def start_served(nursery: trio.Nursery, home_dir: Path, config: BridgeConfig | None = None) -> Served:
    home = Home(home_dir)
    if not home.exists():  # a test may have made it, to set its config.json first
        home.init(org_name="test org")
    bridge = Bridge(port=0, config=config or BridgeConfig(rate_limit=UNLIMITED))
    node = Node(home, [bridge])
    await nursery.start(node.run)
    info = json.loads((home.path / "bridge.json").read_text())
    return Served(node, bridge, home, info["url"], info["token"])


async def raw_request(served: Served, path: str, headers: str = "", *, method: str = "GET") -> trio.socket.SocketType:
    """A request (a GET) sent on a socket that reads only when told, with a
    small receive buffer: the node's writes back up fast. ``headers``: more
    header lines, each ending in CRLF."""
    where = urlsplit(served.url)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((where.hostname, where.port))
    auth = served.headers()["Authorization"]
    await sock.send(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n{headers}\r\n".encode())
    return sock


async def read_to_the_end(sock: trio.socket.SocketType) -> int:
    """Bytes received until the node closes the connection (a reset counts as closed)."""
    received = 0
    try:
        while chunk := await sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return received


async def metrics_text(served: Served) -> str:
    async with served.client() as http:
        return (await http.get("/metrics")).text


async def until_metric(served: Served, line: str) -> None:
    while line not in await metrics_text(served):
        await trio.sleep(0.1)


async def setup_notes(served: Served) -> None:
    """A user kind and two registries holding it, created through the API."""
    async with served.client() as client:
        r = await client.post("/v1/kinds", json={"name": "note", "version": 1, "schema": NOTE_SCHEMA,
                                                      "registry": REGISTRY})
        assert r.status_code == 201, r.text
        for name in (REGISTRY, OTHER):
            r = await client.post("/v1/registries", json={"name": name, "kinds": ["note"]})
            assert r.status_code == 201, r.text


async def make_token(served: Served, role: str, **extra: Any) -> str:
    async with served.client() as client:
        r = await client.post("/v1/tokens", json={"role": role, **extra})
        assert r.status_code == 201, r.text
        return r.json()["token"]


@pytest.fixture
async def served(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Served]:
    s = await start_served(nursery, tmp_path / "home")
    await setup_notes(s)
    yield s
    s.node.stop()


class ThreadedNode:
    """A node and bridge in a thread of their own (own trio.run), for sync tests
    such as schemathesis, which drives its requests from the test's thread."""

    def __init__(self, home_dir: Path, config: BridgeConfig | None = None) -> None:
        self.home_dir = home_dir
        self.config = config
        self.served: Served | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self.served = await start_served(nursery, self.home_dir, self.config)
                await setup_notes(self.served)
                self._ready.set()

        try:
            trio.run(run)
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    def __enter__(self) -> Served:
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None or self.served is None:
            raise RuntimeError(f"node did not start: {self._error!r}")
        return self.served

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self.served is not None:
            self._token.run_sync_soon(self.served.node.stop)
        self._thread.join(30)
        assert not self._thread.is_alive(), "node thread did not stop"


@pytest.fixture
def threaded_served(tmp_path: Path) -> Iterator[Served]:
    with ThreadedNode(tmp_path / "home") as served:
        yield served
