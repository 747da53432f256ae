"""Tests of registrygrid.node.p2p: real py-libp2p hosts on 127.0.0.1, one trio process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
import hashlib
import socket
import time
from typing import Any

import nacl.signing
import pytest
import trio

from libp2p import new_host
from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited
import multiaddr

from registrygrid.errors import NotFound
from registrygrid.node.p2p_requests import MAX_INBOUND_REQUESTS_PER_PEER
from registrygrid.node.p2p import (
    DialFailed,
    GossipConfig,
    GossipMessage,
    MessageRejected,
    MessageTooLarge,
    NotRunning,
    P2PHost,
    PeerEvent,
    PeerUnreachable,
    ProtocolNotSupported,
    RemoteBusy,
    RemoteError,
    RequestTimeout,
    RequestTooLarge,
    ResponseTooLarge,
    StartFailed,
    open_p2p_host,
    peer_id_from_seed,
)

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
MiB = 1024 * 1024


def seed_for(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


@asynccontextmanager
async def running_hosts(n: int, tag: str, **options: Any) -> AsyncIterator[list[P2PHost]]:
    async with AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(P2PHost(seed_for(f"{tag}-{i}"), [LOOPBACK], **options))
            for i in range(n)
        ]
        yield hosts


async def link(a: P2PHost, b: P2PHost) -> None:
    assert await a.connect(b.listen_addrs()[0]) == b.peer_id


async def receive_n(channel: trio.MemoryReceiveChannel[GossipMessage], n: int) -> list[GossipMessage]:
    return [await channel.receive() for _ in range(n)]


async def assert_quiet(channel: trio.MemoryReceiveChannel[GossipMessage], seconds: float) -> None:
    """Nothing more arrives for `seconds` (longer than a heartbeat, so IHAVE gossip had its chance)."""
    with trio.move_on_after(seconds):
        extra = await channel.receive()
        pytest.fail(f"unexpected extra message: {extra!r}")


# -- identity and addresses ---------------------------------------------------


async def test_peer_id_is_derived_from_seed_and_addrs_are_dialable() -> None:
    with trio.fail_after(15):
        seed = seed_for("identity")
        expected = ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58()
        # The same seed in PyNaCl (the node's signing key) names the same peer.
        nacl_pub = nacl.signing.SigningKey(seed).verify_key.encode()
        assert ID.from_pubkey(Ed25519PublicKey.from_bytes(nacl_pub)).to_base58() == expected
        assert peer_id_from_seed(seed) == expected
        assert expected.startswith("12D3KooW")

        host = P2PHost(seed, [LOOPBACK])
        assert host.peer_id == expected
        assert host.listen_addrs() == []  # not started
        async with host, P2PHost(seed_for("identity-dialer"), [LOOPBACK]) as dialer:
            addrs = host.listen_addrs()
            assert addrs and all(a.endswith(f"/p2p/{expected}") for a in addrs)
            assert all("/tcp/0/" not in a for a in addrs)  # the real port
            assert await dialer.connect(addrs[0]) == expected
            assert expected in dialer.connected_peers()
            # Connecting again is a no-op that still names the peer.
            assert await dialer.connect(addrs[0]) == expected


async def test_bad_dials_raise_dial_failed() -> None:
    with trio.fail_after(15):
        async with running_hosts(2, "dial") as (a, b):
            with pytest.raises(DialFailed):
                await a.connect("not a multiaddr")
            with pytest.raises(DialFailed):  # no /p2p/ part
                await a.connect("/ip4/127.0.0.1/tcp/1")
            with pytest.raises(DialFailed):
                await a.connect(a.listen_addrs()[0])  # ourselves
            # A closed port.
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            with pytest.raises(DialFailed):
                await a.connect(f"/ip4/127.0.0.1/tcp/{port}/p2p/{b.peer_id}", timeout=3)
            # The right address but the wrong peer ID: Noise proves who answers.
            wrong = peer_id_from_seed(seed_for("somebody-else"))
            addr = b.listen_addrs()[0].replace(b.peer_id, wrong)
            with pytest.raises(DialFailed):
                await a.connect(addr, timeout=3)
            assert b.peer_id not in a.connected_peers()


async def test_listen_port_in_use_is_start_failed() -> None:
    with trio.fail_after(15):
        async with P2PHost(seed_for("port-a"), [LOOPBACK]) as a:
            port = a.listen_addrs()[0].split("/")[4]
            with pytest.raises(StartFailed):
                async with P2PHost(seed_for("port-b"), [f"/ip4/127.0.0.1/tcp/{port}"]):
                    pass


# -- gossip --------------------------------------------------------------------


async def test_gossip_is_forwarded_along_a_line_exactly_once_and_not_echoed() -> None:
    with trio.fail_after(25):
        async with running_hosts(3, "line") as (a, b, c):
            await link(a, b)
            await link(b, c)
            topic = "rgrid/test/feed"
            sub_a, sub_b, sub_c = [await h.subscribe(topic) for h in (a, b, c)]
            await a.wait_for_mesh_peer(topic, b.peer_id)
            await b.wait_for_mesh_peer(topic, c.peer_id)
            assert c.peer_id not in a.connected_peers()  # C is two hops away

            await a.publish(topic, b"change-batch-1")
            (at_c,) = await receive_n(sub_c, 1)
            assert at_c.data == b"change-batch-1"
            assert at_c.topic == topic
            assert at_c.from_peer == a.peer_id  # the origin, not B that forwarded it
            (at_b,) = await receive_n(sub_b, 1)
            assert at_b.data == b"change-batch-1" and at_b.seqno == at_c.seqno

            await assert_quiet(sub_c, 1.5)  # exactly once at C
            assert sub_a.statistics().current_buffer_used == 0  # never echoed to A
            assert sub_b.statistics().current_buffer_used == 0
            assert a.stats["gossip_own_skipped"] == 1  # the drain did read it
            assert a.stats["gossip_received"] == 0
            assert a.stats["gossip_published"] == 1


async def test_burst_of_300_messages_all_arrive() -> None:
    with trio.fail_after(30):
        async with running_hosts(2, "burst") as (a, b):
            await link(a, b)
            topic = "rgrid/test/burst"
            await a.subscribe(topic)  # A also reads its own echo: must not choke
            sub_b = await b.subscribe(topic)
            await a.wait_for_mesh_peer(topic, b.peer_id)

            n = 300
            for i in range(n):
                await a.publish(topic, i.to_bytes(4, "big"))
            got = await receive_n(sub_b, n)
            assert sorted(int.from_bytes(m.data, "big") for m in got) == list(range(n))
            assert b.stats["gossip_received"] == n
            assert b.stats["gossip_dropped"] == 0
            assert b.stats["gossip_dropped_upstream"] == 0
            assert a.stats["gossip_own_skipped"] == n
            assert a.stats["gossip_dropped_upstream"] == 0
            assert a.stats["gossip_backpressure_timeouts"] == 0


async def test_our_channel_overflow_is_counted_not_blocking() -> None:
    with trio.fail_after(20):
        config = GossipConfig(channel_size=5)
        async with running_hosts(2, "overflow", gossip=config) as (a, b):
            await link(a, b)
            topic = "rgrid/test/overflow"
            sub_b = await b.subscribe(topic)  # nobody reads it during the burst
            await a.wait_for_mesh_peer(topic, b.peer_id)
            for i in range(20):
                await a.publish(topic, bytes([i]))
            with trio.fail_after(5):
                while b.stats["gossip_received"] < 20:
                    await trio.sleep(0.01)
            assert b.stats["gossip_dropped"] == 15
            kept = {m.data for m in await receive_n(sub_b, 5)}
            assert len(kept) == 5 and kept <= {bytes([i]) for i in range(20)}
            assert sub_b.statistics().current_buffer_used == 0


async def test_every_subscriber_gets_every_message_and_unsubscribe_ends_them() -> None:
    with trio.fail_after(15):
        async with running_hosts(2, "fanout") as (a, b):
            await link(a, b)
            topic = "rgrid/test/fanout"
            channels: list[trio.MemoryReceiveChannel[GossipMessage]] = []

            async def sub() -> None:
                channels.append(await b.subscribe(topic))

            async with trio.open_nursery() as nursery:  # racing subscribes share one drain
                nursery.start_soon(sub)
                nursery.start_soon(sub)
            first, second = channels
            await a.wait_for_mesh_peer(topic, b.peer_id)
            await a.publish(topic, b"to both")
            assert (await first.receive()).data == b"to both"
            assert (await second.receive()).data == b"to both"
            assert b.stats["gossip_received"] == 1

            await b.unsubscribe(topic)
            with pytest.raises(trio.EndOfChannel):
                await first.receive()
            with trio.fail_after(5):
                while b.peer_id in a.topic_peers(topic):  # B told A it left
                    await trio.sleep(0.01)


async def test_topic_validator_blocks_delivery_and_forwarding() -> None:
    with trio.fail_after(25):
        async with running_hosts(3, "validator") as (a, b, c):
            await link(a, b)
            await link(b, c)
            topic = "rgrid/test/validated"
            seen_by_validator: list[tuple[str, bytes]] = []

            def only_good(origin: str, data: bytes) -> bool:
                seen_by_validator.append((origin, data))
                if data == b"explode":
                    raise RuntimeError("a validator bug counts as a rejection")
                return data.startswith(b"good")

            b.set_topic_validator(topic, only_good)  # only B, the relay, validates
            sub_b, sub_c = await b.subscribe(topic), await c.subscribe(topic)
            await a.subscribe(topic)
            await a.wait_for_mesh_peer(topic, b.peer_id)
            await b.wait_for_mesh_peer(topic, c.peer_id)

            for payload in (b"bad-1", b"good-1", b"explode", b"bad-2", b"good-2"):
                await a.publish(topic, payload)
            # (py-libp2p handles each message in a task of its own: order may vary.)
            assert sorted(m.data for m in await receive_n(sub_b, 2)) == [b"good-1", b"good-2"]
            assert sorted(m.data for m in await receive_n(sub_c, 2)) == [b"good-1", b"good-2"]
            await assert_quiet(sub_c, 1.5)  # the bad ones were not forwarded
            assert sub_b.statistics().current_buffer_used == 0
            assert b.stats["gossip_rejected"] == 3
            assert {origin for origin, _ in seen_by_validator} == {a.peer_id}

            # A rejection does nothing to A's standing in 0.8.1 (P4 weight 0).
            assert a.peer_id in b.connected_peers()
            # Our own validator guards our own publishes with a typed error.
            with pytest.raises(MessageRejected):
                await b.publish(topic, b"bad-own")


async def test_a_garbage_gossip_frame_costs_its_stream_only_and_counts_against_its_peer() -> None:
    # One frame that is no protobuf RPC on /meshsub/1.1.0: py-libp2p lets its
    # DecodeError escape, and the whole host stopped, for every peer.
    with trio.fail_after(30):
        async with running_hosts(3, "garbage") as (a, b, evil):
            async def echo(peer: str, request: bytes) -> bytes:
                return request

            a.set_handler(PROTO, echo)
            await link(a, b)
            await link(evil, a)
            events = a.peer_events()
            topic = "rgrid/test/garbage"
            sub_a = await a.subscribe(topic)
            await b.subscribe(topic)
            await b.wait_for_mesh_peer(topic, a.peer_id)

            raw = await evil.libp2p_host.new_stream(ID.from_base58(a.peer_id), [TProtocol("/meshsub/1.1.0")])
            await raw.write(encode_varint_prefixed(b"\x0a\x7f\x01"))  # a field longer than the frame
            event = await events.receive()
            while event.kind != "misbehaved":  # a late "connected" of the links above
                event = await events.receive()
            assert event.peer_id == evil.peer_id
            assert event.why.startswith("/meshsub/1.1.0: DecodeError")
            assert a.stats["inbound_streams_failed"] == 1

            await b.publish(topic, b"after the garbage")
            assert (await sub_a.receive()).data == b"after the garbage"
            assert b.peer_id in a.connected_peers()
            assert await b.request(a.peer_id, PROTO, b"still serving") == b"still serving"


async def test_gossip_size_limit() -> None:
    with trio.fail_after(20):
        async with running_hosts(2, "size") as (a, b):
            await link(a, b)
            topic = "rgrid/test/size"
            sub_b = await b.subscribe(topic)
            await a.wait_for_mesh_peer(topic, b.peer_id)
            limit = a.gossip_config.max_message_bytes
            with pytest.raises(MessageTooLarge):
                await a.publish(topic, bytes(limit + 1))
            # The largest allowed payload fits py-libp2p's 1 MiB frame with its envelope.
            await a.publish(topic, b"\x01" * limit)
            (msg,) = await receive_n(sub_b, 1)
            assert len(msg.data) == limit
            with pytest.raises(ValueError):
                GossipConfig(max_message_bytes=MiB)


# -- request / response -------------------------------------------------------

PROTO = "/rgrid/test/echo/1.0.0"


async def test_request_response_round_trip_and_large_responses() -> None:
    with trio.fail_after(20):
        async with running_hosts(2, "rr") as (a, b):
            await link(a, b)
            callers: list[str] = []

            async def handler(peer: str, request: bytes) -> bytes:
                callers.append(peer)
                if request.startswith(b"size:"):
                    return b"\xab" * int(request[5:])
                return b"echo:" + request

            b.set_handler(PROTO, handler)
            assert await a.request(b.peer_id, PROTO, b"hello") == b"echo:hello"
            assert await a.request(b.peer_id, PROTO, b"") == b"echo:"
            assert callers == [a.peer_id, a.peer_id]

            four = await a.request(b.peer_id, PROTO, b"size:%d" % (4 * MiB))
            assert four == b"\xab" * (4 * MiB)
            # 8 MiB, the sync batch cap: py-libp2p's request_response fails here.
            eight = await a.request(b.peer_id, PROTO, b"size:%d" % (8 * MiB))
            assert len(eight) == 8 * MiB

            # Concurrent requests on one connection.
            results: dict[int, bytes] = {}

            async def one(i: int) -> None:
                results[i] = await a.request(b.peer_id, PROTO, b"size:%d" % (256 * 1024 + i))

            async with trio.open_nursery() as nursery:
                for i in range(16):
                    nursery.start_soon(one, i)
            assert {i: len(r) for i, r in results.items()} == {i: 256 * 1024 + i for i in range(16)}
            assert b.stats["requests_served"] == 20


async def test_size_caps_are_typed_errors_on_both_sides() -> None:
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            small = await stack.enter_async_context(
                P2PHost(seed_for("caps-small"), [LOOPBACK], max_request_bytes=1000,
                        max_response_bytes=2000)
            )
            big = await stack.enter_async_context(
                P2PHost(seed_for("caps-big"), [LOOPBACK], max_request_bytes=4 * MiB)
            )
            await link(big, small)

            async def sized(peer: str, request: bytes) -> bytes:
                return bytes(int(request or b"0"))

            small.set_handler(PROTO, sized)
            big.set_handler(PROTO, sized)

            # Our own cap: refused before anything is sent.
            with pytest.raises(RequestTooLarge):
                await small.request(big.peer_id, PROTO, bytes(1001))
            # The peer's cap: it refuses, we hear why, and it counts the refusal.
            with pytest.raises(RequestTooLarge, match="refused"):
                await big.request(small.peer_id, PROTO, bytes(2 * MiB))
            assert small.stats["requests_refused_too_large"] == 1
            # Response over the requester's cap: it stops reading.
            with pytest.raises(ResponseTooLarge):
                await small.request(big.peer_id, PROTO, b"2001")
            # Response over the responder's cap: it refuses to send it.
            with pytest.raises(ResponseTooLarge, match="refused"):
                await big.request(small.peer_id, PROTO, b"2001")
            # Both keep serving.
            assert await big.request(small.peer_id, PROTO, b"2000") == bytes(2000)
            assert await small.request(big.peer_id, PROTO, b"10") == bytes(10)


async def test_failing_handler_gives_remote_error_and_host_keeps_serving() -> None:
    with trio.fail_after(20):
        async with running_hosts(2, "raise") as (a, b):
            await link(a, b)

            async def handler(peer: str, request: bytes) -> bytes:
                if request == b"crash":
                    raise ZeroDivisionError("secret internals")
                if request == b"typed":
                    raise NotFound("no such registry")
                if request == b"not-bytes":
                    return "a str"  # type: ignore[return-value]
                return b"fine"

            b.set_handler(PROTO, handler)
            with pytest.raises(RemoteError) as crashed:
                await a.request(b.peer_id, PROTO, b"crash")
            assert "ZeroDivisionError" in str(crashed.value)
            assert "secret internals" not in str(crashed.value)
            with pytest.raises(RemoteError, match="not_found: no such registry"):
                await a.request(b.peer_id, PROTO, b"typed")
            with pytest.raises(RemoteError):
                await a.request(b.peer_id, PROTO, b"not-bytes")
            assert await a.request(b.peer_id, PROTO, b"again") == b"fine"
            assert b.stats["requests_handler_errors"] == 3
            assert b.stats["requests_served"] == 1
            assert a.stats["requests_failed"] == 3


async def test_a_peer_holding_streams_open_without_a_request_cannot_starve_the_others() -> None:
    # 64 streams from one peer that never sent their request held every
    # slot for the whole request timeout: every other peer was "busy".
    with trio.fail_after(30):
        async with running_hosts(3, "slowloris", request_timeout=3.0) as (a, b, evil):

            async def echo(peer: str, request: bytes) -> bytes:
                return request

            a.set_handler(PROTO, echo)
            await link(evil, a)
            await link(b, a)
            silent = [await evil.libp2p_host.new_stream(ID.from_base58(a.peer_id), [TProtocol(PROTO)])
                      for _ in range(64)]
            while a.stats["requests_refused_busy_peer"] < 64 - MAX_INBOUND_REQUESTS_PER_PEER:
                await trio.sleep(0.05)
            with pytest.raises(RemoteBusy, match="of your requests are running here already"):
                await evil.request(a.peer_id, PROTO, b"one more")
            assert await b.request(a.peer_id, PROTO, b"others are served") == b"others are served"
            assert a.stats["requests_refused_busy"] == 0
            # A request that never arrives costs its slot a few seconds, not the request timeout.
            while a.stats["requests_inbound_failed"] < MAX_INBOUND_REQUESTS_PER_PEER:
                await trio.sleep(0.05)
            assert await evil.request(a.peer_id, PROTO, b"freed") == b"freed"
            del silent


async def test_unknown_protocol_unknown_peer_and_timeout() -> None:
    with trio.fail_after(20):
        async with running_hosts(2, "unknown", max_inbound_requests=2) as (a, b):
            await link(a, b)
            release = trio.Event()

            async def slow(peer: str, request: bytes) -> bytes:
                await release.wait()
                return b"late"

            b.set_handler(PROTO, slow)
            with pytest.raises(ProtocolNotSupported):
                await a.request(b.peer_id, "/rgrid/nobody-speaks-this/1.0.0", b"x")
            with pytest.raises(PeerUnreachable):
                await a.request(peer_id_from_seed(seed_for("stranger")), PROTO, b"x")
            with pytest.raises(PeerUnreachable):
                await a.request("not-a-peer-id", PROTO, b"x")

            started = time.monotonic()
            with pytest.raises(RequestTimeout):
                await a.request(b.peer_id, PROTO, b"x", timeout=0.5)
            assert time.monotonic() - started < 2
            # The requester's reset cancels the responder's handler and frees its slot.
            with trio.fail_after(3):
                while b._inbound_limiter.value < 2:
                    await trio.sleep(0.01)

            # At its limit of concurrent requests, the responder says it is busy.
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(a.request, b.peer_id, PROTO, b"hold")
                with trio.fail_after(5):
                    while b._inbound_limiter.value > 0:  # both slots taken
                        await trio.sleep(0.01)
                with pytest.raises(RemoteBusy):
                    await a.request(b.peer_id, PROTO, b"one too many")
                release.set()
            assert await a.request(b.peer_id, PROTO, b"x") == b"late"


async def test_mplex_only_plain_libp2p_peer_interoperates() -> None:
    """A plain py-libp2p host offering only mplex (and Noise) gets the fallback
    muxer, and speaks our request framing with nothing but libp2p.utils."""
    with trio.fail_after(15):
        key_pair = create_new_key_pair(seed_for("plain-mplex"))
        plain = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(
                key_pair, noise_privkey=create_new_x25519_key_pair().private_key)},
            muxer_opt={TProtocol(MPLEX_PROTOCOL_ID): Mplex},
        )

        async def plain_handler(stream: Any) -> None:
            request = await read_varint_prefixed_bytes_limited(stream, 1024)
            await stream.write(b"\x00" + encode_varint_prefixed(b"plain:" + request))
            await stream.close()

        async def our_handler(peer: str, request: bytes) -> bytes:
            return b"ours:" + request

        plain.set_stream_handler(TProtocol(PROTO), plain_handler)
        async with plain.run([multiaddr.Multiaddr(LOOPBACK)]):
            async with P2PHost(seed_for("ours-mplex"), [LOOPBACK]) as ours:
                ours.set_handler(PROTO, our_handler)
                plain_id = await ours.connect(str(plain.get_addrs()[0]))
                (conn,) = ours._host.get_network().get_connections(ID.from_base58(plain_id))
                assert isinstance(conn.muxed_conn, Mplex)
                for i in range(5):  # reading while writing would deadlock on mplex
                    assert await ours.request(plain_id, PROTO, b"hi%d" % i) == b"plain:hi%d" % i
                # And the other way: the plain peer asks us.
                stream = await plain.new_stream(ID.from_base58(ours.peer_id), [TProtocol(PROTO)])
                await stream.write(encode_varint_prefixed(b"hello"))
                assert await stream.read(1) == b"\x00"
                assert await read_varint_prefixed_bytes_limited(stream, 1024) == b"ours:hello"
                await plain.close()


# -- connection events ----------------------------------------------------------


async def test_peer_events_and_reconnect() -> None:
    with trio.fail_after(25):
        async with running_hosts(2, "events") as (a, b):
            events_a, events_b = a.peer_events(), b.peer_events()

            async def handler(peer: str, request: bytes) -> bytes:
                return request

            b.set_handler(PROTO, handler)
            await link(a, b)
            assert await events_a.receive() == PeerEvent("connected", b.peer_id)
            assert await events_b.receive() == PeerEvent("connected", a.peer_id)

            await a.disconnect(b.peer_id)
            assert await events_a.receive() == PeerEvent("disconnected", b.peer_id)
            assert await events_b.receive() == PeerEvent("disconnected", a.peer_id)
            assert a.connected_peers() == [] and b.connected_peers() == []

            await link(a, b)
            assert await events_a.receive() == PeerEvent("connected", b.peer_id)
            assert await events_b.receive() == PeerEvent("connected", a.peer_id)
            assert await a.request(b.peer_id, PROTO, b"after reconnect") == b"after reconnect"

            # Gossip flows again after the reconnect too.
            topic = "rgrid/test/reconnect"
            sub_b = await b.subscribe(topic)
            await a.subscribe(topic)
            await a.wait_for_mesh_peer(topic, b.peer_id)
            await a.publish(topic, b"hello again")
            assert (await sub_b.receive()).data == b"hello again"


# -- lifecycle --------------------------------------------------------------------


async def test_clean_shutdown_is_prompt_and_ends_channels() -> None:
    with trio.fail_after(20):
        async with P2PHost(seed_for("stay"), [LOOPBACK]) as stay:
            events = stay.peer_events()
            leaving = P2PHost(seed_for("leave"), [LOOPBACK])
            async with leaving:
                await link(leaving, stay)
                assert (await events.receive()).kind == "connected"
                sub = await leaving.subscribe("rgrid/test/bye")
                own_events = leaving.peer_events()
                started = time.monotonic()
            took = time.monotonic() - started
            assert took < 3, f"shutdown took {took:.2f} s"

            # Our channels end instead of hanging their readers.
            with pytest.raises(trio.EndOfChannel):
                await sub.receive()
            async for _ in own_events:
                pass
            with pytest.raises(NotRunning):
                await leaving.publish("rgrid/test/bye", b"x")
            with pytest.raises(NotRunning):
                async with leaving:
                    pass
            # The peer that stayed sees it go.
            assert await events.receive() == PeerEvent("disconnected", leaving.peer_id)


async def test_body_exception_propagates_unwrapped() -> None:
    with trio.fail_after(10):
        with pytest.raises(KeyError):
            async with open_p2p_host(seed_for("raiser"), [LOOPBACK]):
                raise KeyError("from the body")


async def test_cancellation_from_outside_stops_the_host() -> None:
    with trio.fail_after(10):
        host = P2PHost(seed_for("cancelled"), [LOOPBACK])
        with trio.move_on_after(0.5) as scope:
            async with host:
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert not host.running


def test_a_connection_dropped_as_the_swarm_stops_is_a_debug_line_not_a_warning_with_a_traceback() -> None:
    # A node stopped (SIGTERM) while a peer dialled it logged py-libp2p's
    # "[ADDCONN_FAIL]" warning with a whole traceback; any other failure to
    # add a connection still warns.
    import logging

    from libp2p.tools.anyio_service.exceptions import LifecycleError

    import registrygrid.node.p2p  # noqa: F401 - installs the filter

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    parent = logging.getLogger("libp2p")
    handler, level = Keep(level=logging.DEBUG), parent.level
    parent.addHandler(handler)
    parent.setLevel(logging.INFO)
    try:
        swarm = logging.getLogger("libp2p.network.swarm")
        swarm.warning("[ADDCONN_FAIL] add_conn failed for peer %s: %r\n%s", "QmPeer",
                      LifecycleError("Cannot schedule task after service has stopped"), "Traceback (most recent...")
        swarm.warning("[ADDCONN_FAIL] add_conn failed for peer %s: %r\n%s", "QmPeer", RuntimeError("other"), "tb")
    finally:
        parent.removeHandler(handler)
        parent.setLevel(level)
    assert [(r.levelname, repr(r.args[1])) for r in seen] == [("WARNING", "RuntimeError('other')")]
