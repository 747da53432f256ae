"""One contract, two transports (node/transport.py): every test here runs
against ``P2PHost`` (py-libp2p on 127.0.0.1) and ``MemoryHost`` (the
in-memory network the simulator uses, node/memory_transport.py), as
automerge-repo's network-adapter tests run against each of its adapters.
What gossip, sync and the federation rely on must hold for both: peer
events, request/response with its typed errors and caps, and
publish/subscribe with origin attribution and validators."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from registrygrid.errors import PolicyDenied
from registrygrid.node.memory_transport import MemoryNetwork
from registrygrid.node.p2p import P2PHost
from registrygrid.node.transport import (
    GossipMessage,
    PeerUnreachable,
    ProtocolNotSupported,
    RemoteError,
    RequestTimeout,
    RequestTooLarge,
    Transport,
)

pytestmark = pytest.mark.timeout(60)

TOPIC = "contract/topic"
PROTOCOL = "/contract/echo/1.0.0"

Hosts = Callable[[int], Any]  # n -> an async context manager of n running, unconnected hosts


@asynccontextmanager
async def libp2p_hosts(n: int, **options: Any) -> AsyncIterator[list[Transport]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(P2PHost(os.urandom(32), ["/ip4/127.0.0.1/tcp/0"], **options))
               for _ in range(n)]


@asynccontextmanager
async def memory_hosts(n: int, **options: Any) -> AsyncIterator[list[Transport]]:
    async with MemoryNetwork(seed=1) as network, AsyncExitStack() as stack:
        yield [await stack.enter_async_context(network.host(**options)) for _ in range(n)]


@pytest.fixture(params=["libp2p", "memory"])
def hosts(request: pytest.FixtureRequest) -> Hosts:
    return libp2p_hosts if request.param == "libp2p" else memory_hosts  # type: ignore[return-value]


async def eventually(check: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    with trio.move_on_after(timeout):
        while not (value := check()):
            await trio.sleep(0.02)
        return value
    raise AssertionError(f"not within {timeout} s: {what}")


async def meshed(*links: tuple[Transport, Transport]) -> None:
    """Each (x, y): x's publishes on TOPIC go straight to y. A GossipSub
    heartbeat builds the mesh: py-libp2p's is waited for (a fixed 1.5 s was
    sometimes short on a loaded machine, and the message was lost); the
    memory transport's heartbeats run on its own clock, past 1.5 s."""
    for x, y in links:
        wait = getattr(x, "wait_for_mesh_peer", None)
        if wait is None:
            await trio.sleep(1.5)
            return
        await wait(TOPIC, y.peer_id, timeout=15)


async def connect(a: Transport, b: Transport) -> None:
    await a.connect(b.listen_addrs()[0])  # a dialable address naming the peer
    await eventually(lambda: b.peer_id in a.connected_peers() and a.peer_id in b.connected_peers(), "connected")


async def test_a_connection_and_its_end_are_peer_events_on_both_sides(hosts: Hosts) -> None:
    async with hosts(2) as (a, b):
        a_events, b_events = a.peer_events(), b.peer_events()
        await connect(a, b)
        with trio.fail_after(10):
            assert (await a_events.receive()).kind == "connected"
            seen = await b_events.receive()
        assert (seen.kind, seen.peer_id) == ("connected", a.peer_id)
        await a.disconnect(b.peer_id)
        with trio.fail_after(10):
            assert (await a_events.receive()).kind == "disconnected"
            assert (await b_events.receive()).kind == "disconnected"
        await eventually(lambda: not a.connected_peers() and not b.connected_peers(), "both disconnected")


async def test_a_request_reaches_the_handler_with_its_peer_and_the_answer_comes_back(hosts: Hosts) -> None:
    async with hosts(2) as (a, b):
        seen: list[tuple[str, bytes]] = []

        async def echo(peer: str, data: bytes) -> bytes:
            seen.append((peer, data))
            return data[::-1]

        b.set_handler(PROTOCOL, echo)
        await connect(a, b)
        assert await a.request(b.peer_id, PROTOCOL, b"hello", timeout=10) == b"olleh"
        big = os.urandom(3 * 2**20)  # a sync batch's size
        assert await a.request(b.peer_id, PROTOCOL, big[:1000], timeout=10) == big[:1000][::-1]
    assert seen[0] == (a.peer_id, b"hello")


async def test_refusals_and_failures_are_the_same_typed_errors(hosts: Hosts) -> None:
    async with hosts(3) as (a, b, stranger):
        async def refuse(peer: str, data: bytes) -> bytes:
            raise PolicyDenied("this node does not serve you")

        async def hang(peer: str, data: bytes) -> bytes:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        b.set_handler(PROTOCOL, refuse)
        b.set_handler("/contract/hang/1.0.0", hang)
        await connect(a, b)
        with pytest.raises(RemoteError) as refused:
            await a.request(b.peer_id, PROTOCOL, b"x", timeout=10)
        assert "policy_denied: this node does not serve you" in refused.value.message
        with pytest.raises(ProtocolNotSupported):
            await a.request(b.peer_id, "/contract/nobody/1.0.0", b"x", timeout=10)
        with pytest.raises(RequestTimeout):
            await a.request(b.peer_id, "/contract/hang/1.0.0", b"x", timeout=0.5)
        with pytest.raises(PeerUnreachable):
            await a.request(stranger.peer_id, PROTOCOL, b"x", timeout=2)


async def test_a_request_over_the_cap_is_refused_before_it_is_sent(hosts: Hosts) -> None:
    async with hosts(2, max_request_bytes=1000) as (a, b):
        async def echo(peer: str, data: bytes) -> bytes:
            return data

        b.set_handler(PROTOCOL, echo)
        await connect(a, b)
        with pytest.raises(RequestTooLarge):
            await a.request(b.peer_id, PROTOCOL, b"x" * 2000, timeout=10)
        assert await a.request(b.peer_id, PROTOCOL, b"x" * 500, timeout=10) == b"x" * 500


async def test_a_published_message_reaches_every_other_subscriber_named_by_its_origin(hosts: Hosts) -> None:
    async with hosts(3) as (a, b, c):
        channels = {h.peer_id: await h.subscribe(TOPIC) for h in (a, b, c)}
        await connect(a, b)
        await connect(b, c)  # c hears a through b
        await eventually(lambda: a.peer_id in b.topic_peers(TOPIC) and b.peer_id in c.topic_peers(TOPIC),
                         "topic peers known")
        await meshed((a, b), (b, c))
        await a.publish(TOPIC, b"news")
        got: dict[str, GossipMessage] = {}
        with trio.fail_after(10):
            for host in (b, c):
                got[host.peer_id] = await channels[host.peer_id].receive()
        assert all(m.data == b"news" and m.from_peer == a.peer_id and m.topic == TOPIC for m in got.values())
        with trio.move_on_after(0.5):
            echoed = await channels[a.peer_id].receive()
            raise AssertionError(f"the publisher got its own message back: {echoed}")


async def test_a_validator_that_says_no_stops_delivery_and_forwarding(hosts: Hosts) -> None:
    async with hosts(3) as (a, b, c):
        b_channel, c_channel = await b.subscribe(TOPIC), await c.subscribe(TOPIC)
        await a.subscribe(TOPIC)
        b.set_topic_validator(TOPIC, lambda origin, data: data != b"bad")
        await connect(a, b)
        await connect(b, c)
        await eventually(lambda: a.peer_id in b.topic_peers(TOPIC) and b.peer_id in c.topic_peers(TOPIC),
                         "topic peers known")
        await meshed((a, b), (b, c))
        await a.publish(TOPIC, b"bad")
        await a.publish(TOPIC, b"good")
        with trio.fail_after(10):
            assert (await b_channel.receive()).data == b"good"
            assert (await c_channel.receive()).data == b"good", "c never sees what b refused to forward"
