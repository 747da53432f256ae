"""The changefeed over HTTP: long-poll wakes on a write; SSE and WebSocket clients resume without a gap."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import trio
from test_bridge_support import OTHER, REGISTRY, Served
from trio_websocket import ConnectionClosed, open_websocket_url

pytest_plugins = ("test_bridge_support",)  # its fixtures: served

pytestmark = pytest.mark.timeout(60)


async def _write(served: Served, count: int, prefix: str, registry: str = REGISTRY) -> None:
    async with served.client() as client:
        for i in range(count):
            r = await client.post(f"/v1/registries/{registry}/records",
                                  json={"kind": "note", "id": f"{prefix}{i}", "fields": {"name": prefix}})
            assert r.status_code == 201, r.text


async def _head(served: Served) -> int:
    async with served.client() as client:
        return (await client.get("/v1/changes", params={"limit": 1})).json()["head"]


async def test_long_poll_wakes_on_a_write(served: Served) -> None:
    with trio.fail_after(30):
        head = await _head(served)
        got: dict = {}

        async def poll() -> None:
            async with served.client() as client:
                started = time.monotonic()
                r = await client.get("/v1/changes", params={"since": head, "wait": 20})
                got.update(r.json(), started=started, answered=time.monotonic())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.3)
            wrote = time.monotonic()
            await _write(served, 1, "lp")
        assert [e["record"] for e in got["events"]] == ["lp0"]
        assert got["next"] == got["events"][-1]["seq"]
        # It was asked before the write, answered after it, and woke on the
        # write rather than at its 20 s timeout.
        assert got["started"] < wrote < got["answered"] < wrote + 5

        async with served.client() as client:  # nothing new: it returns empty at the deadline
            started = time.monotonic()
            r = await client.get("/v1/changes", params={"since": got["next"], "wait": 0.3})
            assert r.json()["events"] == [] and time.monotonic() - started >= 0.25


async def _read_sse(response, want: int) -> list[dict]:
    events: list[dict] = []
    frame: dict = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in frame:
                events.append({"id": int(frame["id"]), "event": frame["event"], **json.loads(frame["data"])})
                if len(events) == want:
                    return events
            frame = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            frame[key] = value
    return events


async def test_sse_client_resumes_with_last_event_id_and_misses_nothing(served: Served) -> None:
    with trio.fail_after(30):
        start = await _head(served)
        await _write(served, 5, "a")
        headers = {"Accept": "text/event-stream"}
        async with served.client() as client:
            async with client.stream("GET", "/v1/changes", params={"since": start}, headers=headers) as r:
                assert r.headers["Content-Type"].startswith("text/event-stream")
                assert r.headers["X-Trace-Id"]
                first = await _read_sse(r, 3)  # then the client drops the connection
        last_id = first[-1]["id"]
        await _write(served, 5, "b")  # written while the client is away

        async def resume(out: list) -> None:
            async with served.client() as client:
                async with client.stream("GET", "/v1/changes",
                                         headers={**headers, "Last-Event-ID": str(last_id)}) as r:
                    out.extend(await _read_sse(r, 9))

        second: list = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(resume, second)
            await trio.sleep(0.2)
            await _write(served, 2, "c")  # arrives live on the open stream
        seqs = [e["id"] for e in first + second]
        assert seqs == list(range(start + 1, start + 13))
        assert [e["record"] for e in first + second] == [f"a{i}" for i in range(5)] + \
            [f"b{i}" for i in range(5)] + ["c0", "c1"]
        assert all(e["seq"] == e["id"] and e["event"] == "created" for e in first + second)


async def test_a_last_event_id_that_is_no_feed_sequence_is_refused_before_the_stream_opens(served: Served) -> None:
    """Before, an ID past a signed 64-bit number passed the check and the
    stream failed packing the feed key; a negative one was read as 0."""
    with trio.fail_after(30):
        async with served.client() as client:
            # Python's int() takes "+5", "5_0" (50) and other scripts' digits: the API takes ASCII digits.
            for last in ("99999999999999999999", "-5", "seven", "+5", "5_0"):
                r = await client.get("/v1/changes", headers={"Accept": "text/event-stream", "Last-Event-ID": last})
                assert r.status_code == 400, (last, r.text)
                assert r.json()["error"]["code"] == "malformed_input" and "Last-Event-ID" in r.json()["error"]["message"]
            r = await client.get("/v1/changes", params={"since": "99999999999999999999"})
            assert r.status_code == 422 and "between 0 and 9223372036854775807" in r.text
            for since in ("5_0", "+5", "\u0663", " 5"):
                r = await client.get("/v1/changes", params={"since": since})
                assert r.status_code == 400 and "must be an integer" in r.text, (since, r.text)
            r = await client.get("/v1/changes", params={"since": "0", "wait": "1_0"})
            assert r.status_code == 422, r.text


async def test_websocket_client_resumes_with_since_and_misses_nothing(served: Served) -> None:
    with trio.fail_after(30):
        start = await _head(served)
        ws_url = served.url.replace("http://", "ws://") + "/v1/changes/ws"
        headers = [("Authorization", f"Bearer {served.admin}")]
        await _write(served, 4, "w")
        received: list[dict] = []
        async with open_websocket_url(f"{ws_url}?since={start}", extra_headers=headers) as ws:
            assert dict((k.lower(), v) for k, v in ws.handshake_headers).get(b"x-trace-id")
            for _ in range(2):
                received.append(json.loads(await ws.get_message()))
        await _write(served, 3, "x")
        async with open_websocket_url(f"{ws_url}?since={received[-1]['seq']}", extra_headers=headers) as ws:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write, served, 1, "y")
                while len(received) < 8:
                    received.append(json.loads(await ws.get_message()))
        assert [e["seq"] for e in received] == list(range(start + 1, start + 9))
        assert [e["record"] for e in received] == ["w0", "w1", "w2", "w3", "x0", "x1", "x2", "y0"]


async def test_streams_filter_by_registry_and_need_a_token(served: Served) -> None:
    with trio.fail_after(30):
        start = await _head(served)
        await _write(served, 2, "p", REGISTRY)
        await _write(served, 2, "q", OTHER)
        async with served.client() as client:
            r = await client.get("/v1/changes", params={"since": start, "registry": OTHER})
            assert [e["record"] for e in r.json()["events"]] == ["q0", "q1"]
            assert r.json()["next"] >= r.json()["events"][-1]["seq"]
            async with client.stream("GET", "/v1/changes", params={"since": start, "kind": "note",
                                                                   "registry": OTHER},
                                     headers={"Accept": "text/event-stream"}) as stream:
                assert [e["record"] for e in await _read_sse(stream, 2)] == ["q0", "q1"]
        ws_url = served.url.replace("http://", "ws://") + "/v1/changes/ws"
        with pytest.raises(Exception) as refused:  # the upgrade is refused with 401
            async with open_websocket_url(ws_url) as ws:
                await ws.get_message()
        assert "401" in str(refused.value) or isinstance(refused.value, ConnectionClosed)


async def test_a_stream_ends_once_its_token_is_revoked_and_its_reconnect_is_refused(served: Served) -> None:
    # The token was checked only when the stream opened: a revoked (or
    # expired) token went on receiving every change for as long as its
    # client stayed connected.
    from test_bridge_support import make_token

    with trio.fail_after(30):
        start = await _head(served)
        secret = await make_token(served, "reader")
        token_id = secret.split(".")[0].removeprefix("rgt_")
        await _write(served, 2, "before")
        headers = {"Accept": "text/event-stream"}
        async with served.client(secret) as client:
            seen = []
            async with client.stream("GET", "/v1/changes", params={"since": start}, headers=headers) as r:
                async for line in r.aiter_lines():  # until the node ends the stream
                    if line.startswith("data: "):
                        seen.append(json.loads(line[len("data: "):])["record"])
                        if len(seen) == 2:
                            async with served.client() as admin:
                                assert (await admin.delete(f"/v1/tokens/{token_id}")).status_code == 200
                            await _write(served, 2, "after")
            assert seen == ["before0", "before1"]
            again = await client.get("/v1/changes", params={"since": start}, headers=headers)
            assert again.status_code == 401 and "revoked" in again.json()["error"]["message"]


async def test_a_long_poll_whose_token_is_revoked_while_it_waits_answers_401_not_the_changes(
        served: Served) -> None:
    # The token was checked when the poll came in: one revoked during a 20 s
    # wait was answered the changes written after its revocation.
    from test_bridge_support import make_token

    with trio.fail_after(30):
        head = await _head(served)
        secret = await make_token(served, "reader")
        token_id = secret.split(".")[0].removeprefix("rgt_")
        got: dict = {}

        async def poll() -> None:
            async with served.client(secret) as client:
                r = await client.get("/v1/changes", params={"since": head, "wait": 20})
                got.update(status=r.status_code, body=r.json())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.3)
            async with served.client() as admin:
                assert (await admin.delete(f"/v1/tokens/{token_id}")).status_code == 200
            await _write(served, 1, "secret")
    assert got["status"] == 401, got
    assert "revoked" in got["body"]["error"]["message"] and "events" not in got["body"]


async def test_a_filtered_read_looks_at_a_bounded_slice_of_the_feed_and_reads_on_from_there(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    # A filter matching nothing read the whole feed on the bridge's loop
    # (40-70 ms for 18,600 events, growing with the feed), stalling every
    # other request meanwhile. (The slice is 10 events here.)
    from registrygrid.node.bridge import streaming

    monkeypatch.setattr(streaming, "SCAN_EVENTS", 10)
    with trio.fail_after(30):
        start = await _head(served)
        await _write(served, 25, "busy")
        await _write(served, 1, "wanted", registry=OTHER)
        async with served.client() as client:
            cursors, found, since = [], [], start
            while not found:
                page = (await client.get("/v1/changes", params={"since": since, "registry": OTHER})).json()
                found, since = page["events"], page["next"]
                cursors.append(since)
            assert cursors == [start + 10, start + 20, start + 26]  # slice by slice, nothing skipped
            assert [e["record"] for e in found] == ["wanted0"]
            waited = (await client.get("/v1/changes", params={"since": start, "registry": OTHER, "wait": 5})).json()
            assert [e["record"] for e in waited["events"]] == ["wanted0"]  # a long-poll reads on by itself
            async with client.stream("GET", "/v1/changes", params={"since": start, "registry": OTHER},
                                     headers={"Accept": "text/event-stream"}) as r:
                assert [e["record"] for e in await _read_sse(r, 1)] == ["wanted0"]


async def test_a_cursor_beyond_the_feed_head_is_refused_not_waited_on(served: Served) -> None:
    # A cursor of another node, or of before this store was restored: it was
    # accepted, waited in silence until the feed grew past it, then skipped
    # every event up to there.
    with trio.fail_after(30):
        head = await _head(served)
        async with served.client() as client:
            for params, headers in [({"since": head + 5}, {}), ({"since": head + 5, "wait": 1}, {}),
                                    ({}, {"Accept": "text/event-stream", "Last-Event-ID": str(head + 5)})]:
                r = await client.get("/v1/changes", params=params, headers=headers)
                assert r.status_code == 422 and f"beyond this node's feed head {head}" in r.text, (params, r.text)
            assert (await client.get("/v1/changes", params={"since": head})).status_code == 200  # the head itself


async def test_an_sse_stream_whose_client_left_frees_its_slot_without_waiting_for_a_keepalive(
        served: Served) -> None:
    # The stream noticed a closed connection only at its next keepalive write
    # (15 s): clients opening and dropping streams held every slot meanwhile.
    from test_bridge_support import metrics_text, raw_request, until_metric

    from registrygrid.node.bridge.streaming import HEARTBEAT_S
    sockets = [await raw_request(served, "/v1/changes?since=0", "Accept: text/event-stream\r\n")
               for _ in range(3)]
    with trio.fail_after(10):
        await until_metric(served, 'rgrid_bridge_stream_connections{transport="sse"} 3.0')
    for sock in sockets:
        sock.close()
    # Freed before the first keepalive (15 s) could be written: no write noticed it.
    with trio.fail_after(HEARTBEAT_S - 3):
        await until_metric(served, 'rgrid_bridge_stream_connections{transport="sse"} 0.0')
    assert 'rgrid_bridge_stream_connections{transport="sse"} 0.0' in await metrics_text(served)


async def test_a_head_of_the_changefeed_as_a_stream_is_its_headers_alone(served: Served) -> None:
    # A HEAD opened the stream: its events went out after the headers, as a
    # body a client on the same connection reads as its next response, and
    # it held one of the streams' slots.
    from test_bridge_support import metrics_text, raw_request

    await _write(served, 2, "h")
    with trio.fail_after(10):
        sock = await raw_request(served, "/v1/changes?since=0", "Accept: text/event-stream\r\nConnection: close\r\n",
                                 method="HEAD")
        received = b""
        while chunk := await sock.recv(1 << 16):
            received += chunk
        sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head.lower()
    assert body == b""
    assert 'rgrid_bridge_stream_connections{transport="sse"} 1.0' not in await metrics_text(served)


async def test_a_page_of_the_changefeed_never_says_its_next_is_past_the_head(served: Served) -> None:
    # ``head`` was the hub's, which a commit hook moves on after the store
    # holds the events a page reads: pages read while others wrote said
    # next 9, head 8.
    pages: list[tuple[int, int]] = []

    async def poll(client: Any) -> None:
        since = 0
        for _ in range(150):
            page = (await client.get("/v1/changes", params={"since": since})).json()
            pages.append((page["next"], page["head"]))
            since = page["next"]

    with trio.fail_after(60):
        async with served.client() as client, trio.open_nursery() as nursery:
            nursery.start_soon(poll, client)
            await _write(served, 60, "w")
    assert all(next_ <= head for next_, head in pages), [p for p in pages if p[0] > p[1]]


async def test_connections_past_the_cap_are_answered_503_and_closed_and_the_node_serves_on(
        nursery: trio.Nursery, tmp_path: Any) -> None:
    # The server kept every connection it was given: idle clients held the
    # process's descriptors, and the node's own files (the search index's)
    # then failed with "Too many open files".
    from urllib.parse import urlsplit

    from test_bridge_support import UNLIMITED, start_served

    from registrygrid.node.bridge import BridgeConfig

    served = await start_served(nursery, tmp_path / "home", BridgeConfig(rate_limit=UNLIMITED, max_connections=8))
    where = urlsplit(served.url)
    idle = []
    with trio.fail_after(30):
        for _ in range(8):
            sock = trio.socket.socket()
            await sock.connect((where.hostname, where.port))
            idle.append(sock)
        await trio.sleep(0.2)  # the server has taken them
        extra = trio.socket.socket()
        await extra.connect((where.hostname, where.port))
        answer = b""
        while chunk := await extra.recv(4096):
            answer += chunk
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503") and b'"unavailable"' in answer
        for sock in idle:
            sock.close()
        # Until the server has seen the closes, our own look is refused too
        # (and counted): a fixed 0.2 s was sometimes short on a loaded machine.
        refused = 1
        async with served.client() as http:
            while (looked := await http.get("/metrics")).status_code == 503:
                refused += 1
                await trio.sleep(0.1)
        assert f"rgrid_http_connections_refused_total {refused}.0" in looked.text
    served.node.stop()
