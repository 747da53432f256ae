"""The client SDK (registrygrid/client/) against a real node: typed errors
from every answer, retries that wait out a real rate limit, a write whose
answer was lost applied once, iterators that walk every page, and a
changefeed subscription that survives the node restarting; then the
asyncio client doing the same. Plus the I/O-free parts on their own: the
retry rules and the SSE decoder.

Every server is the real thing (test_bridge_support: ``Node.run`` and its
bridge on a loopback port). Faults are real too: the rate limiter of a
bridge configured low, a node stopped and started again on the same port,
and ``Relay``, a TCP relay on loopback that loses an answer or cuts live
connections, as a network or a proxy would. The sync client runs in
worker threads (it blocks); the async one under ``asyncio.run`` in one.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from test_bridge_support import (
    REGISTRY,
    UNLIMITED,
    Served,
    make_token,
    setup_notes,
    start_served,
)

from registrygrid.client import (
    NO_RETRY,
    AsyncBridgeClient,
    BridgeClient,
    Retrying,
    RetryPolicy,
)
from registrygrid.client.retry import parse_retry_after, retryable
from registrygrid.client.sse import SseDecoder, SseEvent
from registrygrid.engine.ops import Put
from registrygrid.errors import (
    AlreadyExists,
    NotFound,
    PolicyDenied,
    RateLimited,
    RegistryError,
    SchemaViolation,
    Unauthorized,
    Unavailable,
    UnknownRegistry,
    ValidationError,
)
from registrygrid.home import Home
from registrygrid.node.bridge import Bridge, BridgeConfig
from registrygrid.node.bridge.auth import RateLimit
from registrygrid.node.bridge.errors import (
    IdempotencyKeyReused,
    MethodNotAllowed,
    PreconditionFailed,
    RouteNotFound,
    error_classes,
    rebuild,
)
from registrygrid.node.node import Node
from registrygrid.node.search import SearchService

pytest_plugins = ("test_bridge_support",)  # its fixtures: served

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- a network that fails on demand


class Relay:
    """A TCP relay on loopback in front of a bridge. ``lose_answers = n``:
    the next ``n`` answers are read from the bridge (so it has acted) and
    never passed on; the client's connection is closed instead. ``cut()``
    closes every live connection, as a proxy that restarts would."""

    def __init__(self, upstream_url: str) -> None:
        host, port = upstream_url.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lose_answers = 0
        self.lost = 0
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._live |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if answers:
                    with self._lock:
                        lose, self.lose_answers = self.lose_answers > 0, max(0, self.lose_answers - 1)
                        self.lost += lose
                    if lose:
                        break
                dst.sendall(chunk)
        except OSError:
            pass
        self._close(src, dst)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            with self._lock:
                self._live.discard(sock)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def cut(self) -> None:
        with self._lock:
            live = list(self._live)
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes its pump, which closes both ends
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.cut()


# ---------------------------------------------------------------- helpers


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


async def write_bulk(served: Served, count: int, prefix: str) -> None:
    """``count`` notes through the node's own committer (no HTTP): quick setup for page walks."""
    for start in range(0, count, 500):
        ops = [Put(REGISTRY, "note", {"name": f"{prefix}{i}", "n": i}, f"{prefix}{i:05d}")
               for i in range(start, min(count, start + 500))]
        outcomes = await served.node.submit(ops)
        assert all(not isinstance(o, RegistryError) for o in outcomes), outcomes[:3]


async def start_searching(nursery: trio.Nursery, home_dir: Path) -> Served:
    home = Home(home_dir)
    home.init(org_name="test org")
    bridge = Bridge(port=0, config=BridgeConfig(rate_limit=UNLIMITED))
    node = Node(home, [SearchService(), bridge])
    await nursery.start(node.run)
    info = json.loads((home.path / "bridge.json").read_text())
    served = Served(node, bridge, home, info["url"], info["token"])
    await setup_notes(served)
    return served


def retries_into(seen: list[Retrying]) -> Callable[[Retrying], None]:
    return seen.append


# ---------------------------------------------------------------- typed errors


async def test_every_error_answer_raises_the_typed_error_of_its_code(served: Served) -> None:
    def work(reader: str) -> None:
        with BridgeClient(served.url, token=served.admin) as grid:
            created = grid.put(REGISTRY, "note", {"name": "a"}, id="a1")
            with pytest.raises(NotFound) as missing:
                grid.get(REGISTRY, "nope")
            assert missing.value.code == "not_found" and missing.value.http_status == 404
            assert missing.value.trace_id  # type: ignore[attr-defined]
            with pytest.raises(UnknownRegistry):
                grid.get("test.nowhere", "a1")
            with pytest.raises(SchemaViolation) as invalid:
                grid.put(REGISTRY, "note", {"name": 7})
            assert isinstance(invalid.value, ValidationError) and invalid.value.http_status == 422
            assert any(d["path"].endswith("name") for d in invalid.value.details), invalid.value.details
            with pytest.raises(AlreadyExists) as twice:
                grid.put(REGISTRY, "note", {"name": "a"}, id="a1")
            assert twice.value.http_status == 409
            grid.update(REGISTRY, "a1", patch={"n": 1})
            with pytest.raises(PreconditionFailed) as stale:
                grid.update(REGISTRY, "a1", patch={"n": 2}, if_match=created.change_id)
            assert stale.value.http_status == 412
            with pytest.raises(IdempotencyKeyReused):
                grid.put(REGISTRY, "note", {"name": "k"}, idempotency_key="key-1")
                grid.put(REGISTRY, "note", {"name": "other"}, idempotency_key="key-1")
            with pytest.raises(RouteNotFound):
                grid.request("GET", "/v1/nowhere")
            with pytest.raises(MethodNotAllowed):
                grid.request("PATCH", "/v1/kinds")
        with BridgeClient(served.url, token=reader) as grid, pytest.raises(PolicyDenied):
            grid.put(REGISTRY, "note", {"name": "r"})
        with BridgeClient(served.url, token="rgt_AAAAAAAAAAAA.nope") as grid, pytest.raises(Unauthorized):
            grid.identity()

    with trio.fail_after(30):
        await in_thread(work, await make_token(served, "reader"))


def test_every_code_rebuilds_its_class_and_an_unknown_code_keeps_its_code() -> None:
    import registrygrid.node.transport  # noqa: F401  (its p2p_* errors cross the bridge too)

    classes = error_classes()
    assert {"not_found", "schema_violation", "rate_limited", "precondition_failed", "internal_error",
            "p2p_request_timeout", "unavailable"} <= set(classes)
    for code, cls in classes.items():
        exc = rebuild(cls.http_status, {"error": {"code": code, "message": "m", "details": {"x": 1},
                                                  "trace_id": "t1"}})
        assert type(exc) is cls and exc.code == code and exc.details == {"x": 1}
        assert exc.trace_id == "t1"  # type: ignore[attr-defined]
    future = rebuild(418, {"error": {"code": "teapot_refused", "message": "no", "details": None}})
    assert type(future) is RegistryError and future.code == "teapot_refused" and future.http_status == 418
    # The MCP Registry routes' shape: the message as "error", the code beside it.
    mcp = rebuild(404, {"error": "Server not found", "code": "not_found", "details": None, "trace_id": "t2"})
    assert type(mcp) is NotFound and mcp.message == "Server not found (trace t2)"
    # A body that is not ours (a proxy's page) is typed by its status.
    assert isinstance(rebuild(503, b"<html>bad gateway</html>"), Unavailable)
    assert isinstance(rebuild(429, None), RateLimited)


# ---------------------------------------------------------------- retries


async def test_a_rate_limited_call_waits_out_retry_after_then_succeeds(nursery: trio.Nursery,
                                                                       tmp_path: Path) -> None:
    served = await start_served(nursery, tmp_path / "home", BridgeConfig(rate_limit=RateLimit(rate=2.0, burst=2.0)))

    def work() -> tuple[list[Retrying], float]:
        with BridgeClient(served.url, token=served.admin, retry=NO_RETRY) as grid:
            with pytest.raises(RateLimited) as limited:
                for _ in range(3):
                    grid.identity()
            assert limited.value.details["retry_after_s"] > 0
        # Retry-After (1 s) beyond the caller's cap: raised at once, not waited out.
        with BridgeClient(served.url, token=served.admin, retry=RetryPolicy(cap_s=0.5)) as grid:
            started = time.monotonic()
            with pytest.raises(RateLimited):
                grid.identity()
            assert time.monotonic() - started < 0.5
        seen: list[Retrying] = []
        with BridgeClient(served.url, token=served.admin, on_retry=retries_into(seen)) as grid:
            started = time.monotonic()
            for _ in range(3):
                grid.identity()
            return seen, time.monotonic() - started

    with trio.fail_after(30):
        seen, elapsed = await in_thread(work)
        async with served.client() as client:
            metrics = (await client.get("/metrics")).text
    served.node.stop()
    assert seen and all(isinstance(r.error, RateLimited) for r in seen)
    assert all(r.delay_s >= 1.0 for r in seen), "never sooner than Retry-After"
    assert elapsed >= 1.0
    throttled = [line for line in metrics.splitlines() if line.startswith("rgrid_http_rate_limited_total")]
    assert throttled and float(throttled[0].split()[-1]) >= 3


async def test_a_write_whose_answer_was_lost_is_retried_with_its_key_and_applied_once(served: Served) -> None:
    relay = Relay(served.url)

    def work() -> tuple[Any, list[Retrying], list[dict[str, Any]], list[Any]]:
        seen: list[Retrying] = []
        with BridgeClient(relay.url, token=served.admin, on_retry=retries_into(seen)) as grid:
            head = grid.feed_head()
            relay.lose_answers = 1
            result = grid.put(REGISTRY, "note", {"name": "exactly once"})  # no id: the bridge picks one, once
            assert relay.lost == 1
            written = [r for r in grid.iter_all(REGISTRY) if r["fields"]["name"] == "exactly once"]
            events = list(grid.iter_changes(head, registry=REGISTRY))
            # A merge patch carries no key: a lost answer to it is not replayed but reported.
            relay.lose_answers = 1
            with pytest.raises(Unavailable, match="closed the connection"):
                grid.update(REGISTRY, result.record_id, patch={"n": 1})
        with BridgeClient(relay.url, token=served.admin, idempotency_keys=False) as grid:
            relay.lose_answers = 1  # nor is a create without a key
            with pytest.raises(Unavailable, match="closed the connection"):
                grid.put(REGISTRY, "note", {"name": "unkeyed"}, id="unkeyed")
            assert grid.get(REGISTRY, "unkeyed")["fields"]["name"] == "unkeyed"  # it was applied: ask, don't resend
        return result, seen, written, events

    with trio.fail_after(30):
        result, seen, written, events = await in_thread(work)
    relay.close()
    assert result.status == "created"
    assert len(seen) == 1 and isinstance(seen[0].error, Unavailable) and seen[0].method == "POST"
    assert relay.lost == 3
    assert [r["id"] for r in written] == [result.record_id], "one record, not two"
    assert [(e.type, e.record) for e in events] == [("created", result.record_id)]


# ---------------------------------------------------------------- pagination


async def test_iterators_walk_every_page_of_records_changes_and_search_results(nursery: trio.Nursery,
                                                                               tmp_path: Path) -> None:
    served = await start_searching(nursery, tmp_path / "home")
    count = 2300  # three listing pages of 1,000, three feed pages, 23 search pages

    def work() -> tuple[list[str], list[int], list[str]]:
        with BridgeClient(served.url, token=served.admin) as grid:
            start = grid.feed_head()
            listed = [r["id"] for r in grid.iter_all(REGISTRY)]
            seqs = [e.seq for e in grid.iter_changes(0, registry=REGISTRY) if e.seq > start - count]
            deadline = time.monotonic() + 20
            while grid.index_status()["indexed_through"] < start and time.monotonic() < deadline:
                time.sleep(0.05)
            found = [item["id"] for item in grid.iter_search({"registries": [REGISTRY], "limit": 100})]
            return listed, seqs, found

    with trio.fail_after(60):
        await write_bulk(served, count, "b")
        listed, seqs, found = await in_thread(work)
    served.node.stop()
    expected = [f"b{i:05d}" for i in range(count)]
    assert listed == expected, "every record once, in id order"
    assert len(seqs) == count and seqs == sorted(set(seqs))
    assert sorted(found) == expected


# ---------------------------------------------------------------- the changefeed subscription


async def test_a_subscription_resumes_after_the_node_restarts_without_losing_or_repeating_an_event(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    config = BridgeConfig(rate_limit=UNLIMITED)
    got: list[Any] = []
    failure: list[BaseException] = []

    async def wait_for(n: int) -> None:
        while len(got) < n and not failure:
            await trio.sleep(0.02)
        assert not failure, failure

    with trio.fail_after(45):
        async with trio.open_nursery() as first_life:
            first = await start_served(first_life, tmp_path / "home", config)
            await setup_notes(first)
            reader = await make_token(first, "reader")  # stored: it outlives the restart
            port = first.bridge.port
            start = first.node.registry.feed_head()
            subscription = BridgeClient(first.url, token=reader).subscribe(since=start, registry=REGISTRY)

            def follow() -> None:
                try:
                    got.extend(subscription)  # until closed
                except Exception as exc:  # reported to the test  # noqa: BLE001
                    failure.append(exc)

            follower = threading.Thread(target=follow, daemon=True)
            follower.start()
            await write_bulk(first, 5, "before")
            await wait_for(5)
            first.node.stop()  # the bridge ends every stream; the port refuses until the next life
        await write_offline(tmp_path / "home", 3)  # written while the node was down
        home = Home(tmp_path / "home")
        second = Node(home, [Bridge(port=port, config=config)])
        await nursery.start(second.run)
        again = Served(second, second.components[0], home, first.url, first.admin)
        await write_bulk(again, 4, "after")
        await wait_for(12)
        subscription.close()
        await in_thread(follower.join, 10)
        second.stop()
    assert not follower.is_alive() and not failure, failure
    records = [e.record for e in got]
    assert records == [f"before{i:05d}" for i in range(5)] + [f"offline{i}" for i in range(3)] \
        + [f"after{i:05d}" for i in range(4)], "each once, in feed order"
    assert [e.seq for e in got] == sorted({e.seq for e in got})
    assert subscription.reconnects >= 1 and subscription.cursor == got[-1].seq


async def write_offline(home_dir: Path, count: int) -> None:
    """Writes into the stopped node's store (the SDK, in process): feed events the subscription missed."""
    from registrygrid.sdk import LocalRegistry

    def write() -> None:
        with LocalRegistry.open_home(Home(home_dir)) as grid:
            for i in range(count):
                grid.put(REGISTRY, "note", {"name": "offline"}, id=f"offline{i}")

    await in_thread(write)


# ---------------------------------------------------------------- the asyncio client


async def test_the_async_client_maps_errors_retries_writes_once_pages_and_resumes_its_subscription(
        served: Served) -> None:
    relay = Relay(served.url)

    async def work() -> dict[str, Any]:
        seen: list[Retrying] = []
        out: dict[str, Any] = {}
        async with AsyncBridgeClient(relay.url, token=served.admin, on_retry=retries_into(seen)) as grid:
            start = await grid.feed_head()
            with pytest.raises(NotFound):
                await grid.get(REGISTRY, "nope")
            with pytest.raises(SchemaViolation):
                await grid.put(REGISTRY, "note", {"name": 7})
            relay.lose_answers = 1
            once = await grid.put(REGISTRY, "note", {"name": "async once"}, id="async-once")
            out["retried"] = [type(r.error) for r in seen]
            results = await asyncio.gather(*(grid.put(REGISTRY, "note", {"name": f"p{i}"}, id=f"p{i:04d}")
                                             for i in range(1, 30)))
            out["listed"] = [r["id"] async for r in grid.iter_all(REGISTRY)]
            page = await grid.list(REGISTRY, limit=7)
            out["first_page"] = [r["id"] for r in page.items]

            events = []
            async with grid.subscribe(since=start, registry=REGISTRY) as feed:
                async for event in feed:
                    events.append(event)
                    if len(events) == 10:
                        relay.cut()  # the stream's connection too, mid-feed
                        await grid.put(REGISTRY, "note", {"name": "late"}, id="p9999")
                    if len(events) == 31:
                        break
                out["reconnects"] = feed.reconnects
            out["events"] = [(e.seq, e.record) for e in events]
            out["once"] = once
            out["written"] = [once.record_id] + [r.record_id for r in results]
        return out

    with trio.fail_after(45):
        out = await in_thread(asyncio.run, work())
    relay.close()
    assert out["retried"] == [Unavailable] and out["once"].status == "created"
    assert out["listed"] == sorted(out["written"]) and out["listed"].count("async-once") == 1
    assert out["first_page"] == out["listed"][:7]
    seqs = [s for s, _ in out["events"]]
    assert seqs == sorted(set(seqs)), "no event twice, in order"
    assert sorted(r for _, r in out["events"]) == sorted(out["written"] + ["p9999"]), "no event lost"
    assert out["reconnects"] >= 1


def test_the_async_client_has_every_method_of_the_sync_client_with_the_same_arguments() -> None:
    public = [n for n, _ in inspect.getmembers(BridgeClient, callable) if not n.startswith("_")]
    assert {"subscribe", "iter_all", "iter_search", "iter_changes", "put", "request"} <= set(public)
    for name in public:
        sync, aio = getattr(BridgeClient, name), getattr(AsyncBridgeClient, name, None)
        assert aio is not None, f"AsyncBridgeClient lacks {name}"
        if name not in ("for_home", "close"):
            assert list(inspect.signature(aio).parameters) == list(inspect.signature(sync).parameters), name
        if name.startswith("iter_"):
            assert inspect.isasyncgenfunction(aio), name
        elif name not in ("for_home", "subscribe"):
            assert inspect.iscoroutinefunction(aio), name


# ---------------------------------------------------------------- the rules on their own (no I/O)


def test_which_failures_are_retried() -> None:
    # Refused at the door: anything.
    assert retryable(status=429, code="rate_limited", sent=True, replayable=False)
    # Never reached the node: anything.
    assert retryable(status=None, code="unavailable", sent=False, replayable=False)
    # May have been applied: only what may be replayed.
    assert retryable(status=None, code="unavailable", sent=True, replayable=True)
    assert not retryable(status=None, code="unavailable", sent=True, replayable=False)
    assert retryable(status=503, code="unavailable", sent=True, replayable=True)
    assert not retryable(status=503, code="unavailable", sent=True, replayable=False)
    assert not retryable(status=503, code="disabled", sent=True, replayable=True)  # lasts until a restart
    assert not retryable(status=503, code="store_recovering", sent=True, replayable=True)  # until the operator acts
    assert retryable(status=409, code="idempotency_in_progress", sent=True, replayable=True)
    for status, code in [(404, "not_found"), (409, "already_exists"), (422, "schema_violation"),
                         (401, "unauthorized"), (500, "internal_error")]:
        assert not retryable(status=status, code=code, sent=True, replayable=True), code
    # The CLI's policy (RATE_LIMITS_ONLY): only what the node refused before doing anything.
    assert retryable(status=429, code="rate_limited", sent=True, replayable=False, rate_limits_only=True)
    assert retryable(status=409, code="idempotency_in_progress", sent=True, replayable=True, rate_limits_only=True)
    assert not retryable(status=503, code="unavailable", sent=True, replayable=True, rate_limits_only=True)
    assert not retryable(status=None, code="unavailable", sent=False, replayable=True, rate_limits_only=True)


def test_backoff_is_full_jitter_under_a_doubling_ceiling_and_retry_after_is_a_floor() -> None:
    policy, rng = RetryPolicy(max_attempts=5, base_s=0.2, cap_s=1.0), random.Random(7)
    for attempt, ceiling in [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0)]:
        waits = [policy.delay(attempt, rng) for _ in range(2000)]
        assert all(w is not None and 0 <= w <= ceiling for w in waits)
        assert max(w for w in waits if w is not None) > ceiling * 0.95  # spread over the whole range
    assert policy.delay(5, rng) is None, "the fifth attempt was the last"
    assert all((policy.delay(1, rng, retry_after=0.7) or 0) >= 0.7 for _ in range(100))
    assert policy.delay(1, rng, retry_after=2.0) is None, "a Retry-After beyond the cap is not waited out"
    # A stream reconnects with the server's retry: hint as its base, for as long as it is allowed to.
    assert max(policy.reconnect(1, rng, hint_s=0.6) or 0 for _ in range(500)) > 0.5
    assert policy.reconnect(50, rng) is not None, "no limit unless given"
    assert policy.reconnect(3, rng, max_reconnects=2) is None


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now) == pytest.approx(20.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now) == 0.0  # in the past
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-1", now) is None


STREAM = (b"retry: 1000\n\n: keepalive\n\n"
          b"id: 7\nevent: created\ndata: {\"seq\": 7}\n\n"
          b"id: 8\r\nevent: updated\r\ndata: line one\r\ndata: line two\r\n\r\n"
          b"data:no space\rid: 9\r\r"
          b"id: 10\nevent: deleted\n\n")  # no data: not dispatched, but the id counts


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_the_sse_decoder_gives_the_same_events_however_the_stream_is_split(cuts: list[int]) -> None:
    decoder, events, last = SseDecoder(), [], 0
    for cut in [*sorted(cuts), len(STREAM)]:
        events += decoder.feed(STREAM[last:cut])
        last = cut
    assert events == [SseEvent("created", '{"seq": 7}', "7"), SseEvent("updated", "line one\nline two", "8"),
                      SseEvent("message", "no space", "9")]
    assert decoder.last_id == "10" and decoder.retry_ms == 1000


def test_a_client_types_the_blob_stores_errors_and_a_newer_nodes_codes_by_their_status() -> None:
    """In a process that loaded only the client (as an app does): an expired
    upload is a NotFound, so upload_file starts it again instead of failing,
    and a code this version lacks keeps its code, typed by its status."""
    import subprocess
    import sys

    script = (
        "import json\n"
        "from registrygrid.client import assets\n"
        "from registrygrid.errors import NotFound, ValidationError\n"
        "from registrygrid.node.bridge.errors import rebuild\n"
        "def error(code): return {'error': {'code': code, 'message': 'm', 'details': None, 'trace_id': None}}\n"
        "expired, mismatch, newer = (rebuild(404, error('upload_expired')), rebuild(422, error('checksum_mismatch')),\n"
        "                            rebuild(404, error('frobnicated')))\n"
        "print(json.dumps([type(expired).__name__, isinstance(expired, NotFound), type(mismatch).__name__,\n"
        "                  isinstance(mismatch, ValidationError), isinstance(newer, NotFound), newer.code]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["UploadExpired", True, "ChecksumMismatch", True, True, "frobnicated"]


async def test_both_clients_page_a_filtered_feed_past_slices_that_match_nothing(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    # A filtered page looks at a bounded slice of the feed: an empty page is
    # not the end (it was, for iter_changes, which then missed what follows).
    from test_bridge_support import OTHER

    from registrygrid.node.bridge import streaming

    monkeypatch.setattr(streaming, "SCAN_EVENTS", 10)

    def work() -> tuple[list[str], list[str]]:
        with BridgeClient(served.url, token=served.admin) as grid:
            start = grid.feed_head()
            for i in range(25):
                grid.put(REGISTRY, "note", {"name": f"busy {i}"})
            grid.put(OTHER, "note", {"name": "wanted"}, id="wanted")
            synced = [e.record for e in grid.iter_changes(start, registry=OTHER)]
            synced += [e.record for e in grid.changes(start, registry=OTHER)]  # one call reads on too

        async def aio() -> list[str]:
            async with AsyncBridgeClient(served.url, token=served.admin) as client:
                return [e.record async for e in client.iter_changes(start, registry=OTHER)] + [
                    e.record for e in await client.changes(start, registry=OTHER)]

        return synced, asyncio.run(aio())

    with trio.fail_after(30):
        synced, from_aio = await in_thread(work)
    assert synced == from_aio == ["wanted", "wanted"]


def test_a_bridge_file_a_killed_node_left_is_not_trusted_with_the_homes_token(tmp_path: Path) -> None:
    # It names the port the dead node served, which another process may
    # serve now: the CLI sent it the home's admin token.
    from registrygrid.client import calls
    from registrygrid.errors import Unavailable
    from registrygrid.home import Home

    home = Home(tmp_path / "home")
    home.init(org_name="acme")
    (home.path / "bridge.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "token": "rgt_x.y",
                                                        "pid": 999_999_999}))
    with pytest.raises(Unavailable, match="left by a node that no longer runs"):
        calls.bridge_file(home)
    home.lock("test")
    try:
        with pytest.raises(Unavailable, match="holds it, without one"):
            calls.bridge_file(home)
        (home.path / "bridge.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "token": "rgt_x.y",
                                                            "pid": os.getpid()}))
        assert calls.bridge_file(home) == ("http://127.0.0.1:9", "rgt_x.y")
    finally:
        home.unlock()
