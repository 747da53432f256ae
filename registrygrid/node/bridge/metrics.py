"""Prometheus metrics of the bridge and of the node behind it (``GET /metrics``).

Each bridge has its own ``CollectorRegistry`` (not prometheus-client's
global one), so several nodes in one process (tests, simulations) never
collide. Route labels are route templates (``/v1/registries/{registry}/records/{id}``),
never raw paths, so the series count stays bounded whatever clients send.

Node figures (store size, feed head, engine counters such as rejections by
reason) and the federation's counters (``Federation.stats()``, when the node
runs one) are read at scrape time by a custom collector, so the write path
and the network pay nothing for them.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Request latencies on loopback run from ~50 us (a cached GET) to seconds (a
# long-poll); these buckets resolve both ends.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)
# The asyncio -> trio crossing costs tens to hundreds of microseconds.
CROSSING_BUCKETS = (0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1)


# Federation.stats() keys that are levels (what is connected or queued now),
# not counts since start; any other key outside ``federation.*``/``p2p.*``
# is exported as a level too. Named here rather than derived from the key:
# "peers.connected" is also a federation counter (connections made), so the
# two need different names.
FEDERATION_GAUGES = {
    "peers.connected": ("rgrid_federation_connected_peers", "Peers connected now."),
    "gossip.inbound_bytes": ("rgrid_federation_gossip_inbound_bytes",
                             "Bytes of accepted gossip waiting for the engine, all peers' queues."),
    "gossip.outbox_bytes": ("rgrid_federation_gossip_outbox_bytes", "Bytes of local changes waiting to be published."),
    "gossip.seen": ("rgrid_federation_gossip_seen", "Change ids remembered to drop replayed gossip."),
}
# Counter keys by the prefix Federation.stats() gives them -> metric prefix.
FEDERATION_COUNTER_PREFIXES = {"federation.": "rgrid_federation_", "p2p.": "rgrid_p2p_"}
# Prometheus metric names are [a-zA-Z_:][a-zA-Z0-9_:]*; every name here
# starts with "rgrid_", so only the rest needs replacing.
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_:]")


def metric_name(prefix: str, key: str) -> str:
    """``prefix`` + ``key`` with every character a metric name can't hold as "_"."""
    return prefix + _NOT_IN_NAME.sub("_", key)


def federation_families(stats: Mapping[str, Any]) -> list[CounterMetricFamily | GaugeMetricFamily]:
    """``Federation.stats()`` as metric families: counters for ``federation.*``
    and ``p2p.*`` (``gossip.rejected_blocked`` ->
    ``rgrid_federation_gossip_rejected_blocked_total``), gauges for the levels
    (FEDERATION_GAUGES, and any other key). Keys that sanitize to one name are
    added together rather than exported twice (an invalid exposition)."""
    families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
    values: dict[str, float] = {}
    for key, value in sorted(stats.items()):
        if not isinstance(value, (int, float)):
            continue
        prefix = next((p for p in FEDERATION_COUNTER_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            name = metric_name(FEDERATION_COUNTER_PREFIXES[prefix], key[len(prefix):])
            make: Callable[[str, str], Any] = CounterMetricFamily
            documentation = f"Federation.stats() counter {key!r} (docs/federation.md, Metrics)."
        else:
            name, documentation = FEDERATION_GAUGES.get(
                key, (metric_name("rgrid_federation_", key), f"Federation.stats() level {key!r}."))
            make = GaugeMetricFamily
        if name not in families:
            families[name] = make(name, documentation)
        values[name] = values.get(name, 0) + value
    for name, family in families.items():
        family.add_metric([], values[name])
    return list(families.values())


class _NodeCollector(Collector):
    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Any:
        snap = self.snapshot()
        store = snap["store"]
        yield GaugeMetricFamily("rgrid_store_bytes", "Bytes of the LMDB map in use.", value=store["bytes_used"])
        yield GaugeMetricFamily("rgrid_store_map_bytes", "Size of the LMDB map (address space).",
                                value=store["map_size"])
        entries = GaugeMetricFamily("rgrid_store_entries", "Entries per LMDB sub-database.", labels=["db"])
        for name, value in sorted(store.items()):
            if name.startswith("entries."):
                entries.add_metric([name[len("entries."):]], value)
        yield entries
        yield GaugeMetricFamily("rgrid_feed_head", "Sequence number of the newest feed event.", value=snap["feed_head"])
        rejected = CounterMetricFamily("rgrid_engine_rejections", "Operations the engine refused, by error code.",
                                       labels=["reason"])
        events = CounterMetricFamily("rgrid_engine_events", "Engine counters (writes, remote changes, audit notes).",
                                     labels=["event"])
        for name, value in sorted(snap["engine"].items()):
            if name.startswith("rejected."):
                rejected.add_metric([name[len("rejected."):]], value)
            else:
                events.add_metric([name], value)
        yield rejected
        yield events
        yield GaugeMetricFamily("rgrid_bridge_audit_pending", "Audit notes waiting to be flushed.",
                                value=snap["audit_pending"])
        yield CounterMetricFamily("rgrid_bridge_audit_dropped", "Denial notes dropped (buffer full).",
                                  value=snap["audit_dropped"])
        if snap.get("federation") is not None:  # None: the node runs without p2p (--no-p2p)
            yield from federation_families(snap["federation"])


class _RouteLatency(Collector):
    """Request latency histograms by (route, method), kept without locks.

    prometheus-client's Histogram takes a lock per bucket increment, ~2% of a
    cached GET; every request is observed on the bridge's loop thread alone,
    so plain per-series counters suffice. A scrape (another thread) copies
    them: it may see a request in ``_count`` a moment before its bucket,
    never a lost one."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = list(buckets)
        self.series: dict[tuple[str, str], list[Any]] = {}  # -> [counts per bucket + overflow, sum]

    def observe(self, route: str, method: str, seconds: float) -> None:
        series = self.series.get((route, method))
        if series is None:
            series = self.series[(route, method)] = [[0] * (len(self.bounds) + 1), 0.0]
        series[0][bisect.bisect_left(self.bounds, seconds)] += 1
        series[1] += seconds

    def collect(self) -> Any:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["route", "method"])
        for (route, method), (counts, total) in list(self.series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip([*self.bounds, math.inf], list(counts)):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric([route, method], buckets, total)
        yield family


class BridgeMetrics:
    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rgrid_http_requests", "HTTP requests by route template, method and status.",
                                ["route", "method", "status"], registry=r)
        self.latency = _RouteLatency("rgrid_http_request_duration_seconds", "Time to answer, by route template.",
                                     LATENCY_BUCKETS)
        r.register(self.latency)
        self.errors = Counter("rgrid_http_errors", "Error answers by route template and error code.",
                              ["route", "code"], registry=r)
        self.denials = Counter("rgrid_http_denials", "Requests refused by authentication (401), authorization "
                               "(403) or as a revocation of the node's own CLI token (409).",
                               ["status"], registry=r)
        self.malformed = Counter("rgrid_http_malformed_requests", "Requests the HTTP server could not parse "
                                 "(a bad request line, URL or header), answered 400 before any route.", registry=r)
        self.cut = Counter("rgrid_http_answers_cut", "Answers that failed after their headers went out (a "
                           "download, a bundle, a stream): the connection was closed, the body left short.",
                           ["route", "code"], registry=r)
        self.throttled = Counter("rgrid_http_rate_limited", "Requests refused with 429 by a rate limit.", registry=r)
        self.connections_refused = Counter("rgrid_http_connections_refused", "Connections answered 503 and closed: "
                                           "the server held as many as it keeps (bridge max_connections).",
                                           registry=r)
        self.upload_bytes = Counter("rgrid_asset_upload_bytes", "Bytes of upload parts stored.", registry=r)
        self.download_bytes = Counter("rgrid_asset_download_bytes", "Bytes of blobs sent.", registry=r)
        self.write_seconds = Histogram(
            "rgrid_bridge_write_seconds", "A write as the HTTP side sees it: hand-off to the committer, "
            "queueing, its batch's durable commit, and the way back.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.commit_seconds = Histogram(
            "rgrid_bridge_commit_wait_seconds", "The durable commit of the batch that held the write "
            "(engine + fsync, on the committer's writer thread).",
            buckets=LATENCY_BUCKETS, registry=r)
        self.crossing_seconds = Histogram(
            "rgrid_bridge_crossing_seconds",
            "Write time minus its batch's commit: the thread hand-offs both ways plus waiting for the batch "
            "ahead to finish.", buckets=CROSSING_BUCKETS, registry=r)
        self.downloads = Gauge("rgrid_bridge_downloads", "Answers sending a blob's bytes now (downloads, ZIP "
                               "entries, bundles; at most asset_routes.MAX_DOWNLOADS).", registry=r)
        self.streams = Gauge("rgrid_bridge_stream_connections", "Open changefeed streams by transport.",
                             ["transport"], registry=r)
        ProcessCollector(registry=r)
        r.register(_NodeCollector(snapshot))
        self._children: dict[tuple[str, str, int], Any] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float, code: str) -> None:
        """One answered request. prometheus-client's ``labels()`` takes a
        lock and builds a key on every call (~5% of a cached GET); the
        labelled children are remembered here instead. Routes are templates
        and statuses few, so the cache stays small."""
        counter = self._children.get((route, method, status))
        if counter is None:
            counter = self._children[(route, method, status)] = self.requests.labels(route, method, str(status))
        counter.inc()
        self.latency.observe(route, method, seconds)
        if code:
            self.errors.labels(route, code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
