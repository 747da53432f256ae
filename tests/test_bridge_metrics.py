"""/metrics exports the federation's counters and the engine's trust refusals, read at scrape time."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_bridge_support import UNLIMITED, Served, start_served
from test_federation_support import CLUSTERS, FAST, LOOPBACK, Cluster, eventually

from registrygrid.engine.ops import Put, WriteResult
from registrygrid.node.bridge import Bridge, BridgeConfig
from registrygrid.node.bridge.metrics import federation_families
from registrygrid.node.bridge.runtime import _copied
from registrygrid.node.federation import Federation
from registrygrid.node.node import Node

pytest_plugins = ("test_bridge_support",)  # its fixtures: served

pytestmark = pytest.mark.timeout(90)

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def sample(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample in a Prometheus exposition, None when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and (labels is None or s.labels == labels):
                return s.value
    return None


def exposition(stats: dict[str, float]) -> str:
    registry = CollectorRegistry()

    class Federation:
        def collect(self):  # type: ignore[no-untyped-def]
            return federation_families(stats)

    registry.register(Federation())
    return generate_latest(registry).decode()


def test_federation_stats_become_valid_counters_and_gauges() -> None:
    text = exposition({
        "federation.gossip.accepted": 7, "federation.gossip.invalid.malformed_input": 2,
        "federation.peers.connected": 3,  # connections made: a counter ...
        "peers.connected": 1,  # ... and connected now: a gauge, under another name
        "p2p.gossip_dropped": 4, "gossip.outbox_bytes": 512, "gossip.seen": 9,
        "federation.odd-key/é": 1, "federation.odd_key__": 1,  # both sanitize to one name: added, not doubled
    })
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names)) and all(NAME.fullmatch(n) for n in names)
    assert sample(text, "rgrid_federation_gossip_accepted_total") == 7
    assert sample(text, "rgrid_federation_gossip_invalid_malformed_input_total") == 2
    assert sample(text, "rgrid_federation_peers_connected_total") == 3
    assert sample(text, "rgrid_federation_connected_peers") == 1
    assert sample(text, "rgrid_p2p_gossip_dropped_total") == 4
    assert sample(text, "rgrid_federation_gossip_outbox_bytes") == 512
    assert sample(text, "rgrid_federation_gossip_seen") == 9
    assert sample(text, "rgrid_federation_odd_key___total") == 2
    assert "# TYPE rgrid_federation_connected_peers gauge" in text


def test_a_copy_racing_a_writer_is_retried_then_given_up() -> None:
    calls = []

    def racing() -> dict[str, int]:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("dictionary changed size during iteration")
        return {"a": 1}

    assert _copied(racing) == {"a": 1} and len(calls) == 3

    def always() -> dict[str, int]:
        raise RuntimeError("dictionary changed size during iteration")

    assert _copied(always) == {}


async def test_metrics_of_a_node_without_federation_have_no_federation_series(served: Served) -> None:
    with trio.fail_after(30):
        async with served.client() as client:
            text = (await client.get("/metrics")).text
    assert "rgrid_feed_head" in text and "rgrid_federation_" not in text and "rgrid_p2p_" not in text


async def test_a_request_the_server_cannot_parse_is_answered_400_and_counted_not_logged_as_an_error(
        served: Served) -> None:
    # aiohttp answers these itself, before any route, and logged each at
    # ERROR with a twenty-line traceback: any client could fill the log.
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    host, port = served.url.removeprefix("http://").split(":")
    bad = [b"GET /v1/records?kind=\xff HTTP/1.1", b"GET /v1/records?q=" + b"a" * 9000 + b" HTTP/1.1",
           b"GET /v1/records HTTP/1.1\r\nX-Bad\x01Header: 1"]
    answers = []
    try:
        for line in bad:
            with trio.socket.socket() as sock:
                await sock.connect((host, int(port)))
                await sock.send(line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
                answers.append(await sock.recv(100))
    finally:
        logging.getLogger().removeHandler(handler)
    async with served.client() as http:
        metrics = (await http.get("/metrics")).text
    assert all(a.split(b"\r\n")[0].endswith(b" 400 Bad Request") for a in answers), answers
    assert sample(metrics, "rgrid_http_malformed_requests_total") == len(bad)
    assert [r.getMessage() for r in seen] == []


async def test_metrics_export_federation_counters_and_engine_trust_refusals(nursery: trio.Nursery,
                                                                             tmp_path: Path) -> None:
    """Node A (federation + bridge) syncs a record of node B's org, then its
    API refuses to update that record (not_owner): /metrics shows the peer
    connected now, the federation's and the host's counters, the delegation
    A learned and the refusal."""
    orgs = Cluster(nursery, tmp_path, FAST)  # its homes: two orgs in one federation, "testfed"
    homes = {name: orgs.home(name) for name in ("a", "b")}
    fed_a = Federation(listen=[LOOPBACK], federation="testfed", config=FAST)
    bridge = Bridge(port=0, config=BridgeConfig(rate_limit=UNLIMITED))
    node_a = Node(homes["a"], [fed_a, bridge])
    await nursery.start(node_a.run)
    info = json.loads((homes["a"].path / "bridge.json").read_text())
    served = Served(node_a, bridge, homes["a"], info["url"], info["token"])
    fed_b = Federation(listen=[LOOPBACK], bootstrap=fed_a.addrs(), federation="testfed", config=FAST)
    node_b = Node(homes["b"], [fed_b])
    await nursery.start(node_b.run)
    try:
        with trio.fail_after(60):
            [written] = await node_b.submit([Put(CLUSTERS, "cluster", {"name": "b1"}, record_id="b1")])
            assert isinstance(written, WriteResult)
            assert node_a.registry is not None
            registry = node_a.registry
            await eventually(lambda: any(r["id"] == "b1" for r in registry.iter_all(CLUSTERS)), 30,
                             "b's record on a")
            async with served.client() as client:
                r = await client.put(f"/v1/registries/{CLUSTERS}/records/b1", json={"fields": {"name": "mine"}})
                assert r.status_code == 403 and r.json()["error"]["code"] == "not_owner", r.text
                text = (await client.get("/metrics")).text
    finally:
        node_b.stop()
        node_a.stop()
    assert sample(text, "rgrid_federation_connected_peers") == 1
    assert sample(text, "rgrid_federation_peers_connected_total") >= 1  # type: ignore[operator]
    assert sample(text, "rgrid_federation_sync_sessions_total") >= 1  # type: ignore[operator]  # one on connect
    assert sample(text, "rgrid_p2p_gossip_received_total") is not None
    assert sample(text, "rgrid_federation_gossip_outbox_bytes") is not None
    # The engine's trust counters: the refusal and the delegation a learned from b.
    assert sample(text, "rgrid_engine_rejections_total", {"reason": "not_owner"}) == 1
    assert sample(text, "rgrid_engine_events_total", {"event": "trust.delegation"}) >= 1  # type: ignore[operator]


async def test_a_node_drops_changes_parked_past_their_ttl_when_it_starts_and_counts_them(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    # A node stopped for a day holds nothing its peers would not send again;
    # before, what waited for a dependency that never came waited for good.
    from registrygrid.engine.ingest import PARKED_TTL_MS
    from registrygrid.engine.ops import Remote
    from registrygrid.home import Home
    from registrygrid.identity.keys import KeyPair
    from registrygrid.sdk import LocalRegistry
    from registrygrid.storage.store import u64

    from registrygrid.protocol.envelope import cid_from_str
    author = LocalRegistry.open_path(tmp_path / "author", KeyPair.generate())
    author.put_many([Put(CLUSTERS, "cluster", {"name": f"c{i}"}, f"c{i}") for i in range(2)])
    second = author.change(cid_from_str(author.changes(0, limit=2)[1].change))
    author.close()
    home = Home(tmp_path / "home")
    home.init(org_name="test org")
    grid = LocalRegistry.open_home(home)
    assert grid.execute([Remote(second, "p")])[0].status == "pending"
    with grid.store.write() as txn:  # parked a TTL and a minute ago
        stale = u64(grid.engine.now_ms() - PARKED_TTL_MS - 60_000)
        for cid, _ in list(grid.store.iter_prefix(txn, "parked_at", b"")):
            txn.put(cid, stale, db=grid.store.db["parked_at"])
    grid.close()

    served = await start_served(nursery, tmp_path / "home")

    def parked() -> int:
        with served.node.store.read() as txn:
            return int(txn.stat(served.node.store.db["pending"])["entries"])
    await eventually(lambda: parked() == 0, 10, "the stale parked change dropped")
    async with served.client() as client:
        text = (await client.get("/metrics")).text
    assert sample(text, "rgrid_engine_events_total", {"event": "remote.parked_expired"}) == 1
    assert sample(text, "rgrid_store_entries", {"db": "waiting"}) == 0
