"""The federation component: this node's libp2p host and everything it carries.

    Federation(listen=[...], bootstrap=[...], federation="acme-grid")

``run(node)`` starts a ``P2PHost`` whose identity is the node's Ed25519 key,
then, in one nursery:

* gossip (``node/gossip.py``): publish local changes, validate and ingest
  peers' batches on ``/registrygrid/1/<federation>/changes``;
* anti-entropy (``node/sync.py``): on every new connection, every
  ``sync_interval`` seconds, and soon after gossip shows a gap, one sync
  session per peer (``/registrygrid/sync/1.0.0``);
* the policy guard (``node/guard.py``, ``protocol/guard.py``): per-registry
  caps and rate budgets per peer and per org on every change that gossip or
  sync is about to submit (gossip drops over budget, sync waits), and on
  what the sync responder serves each peer;
* peers (``node/peers.py``): dial bootstrap and known peers, redial with
  exponential backoff and jitter, exchange hellos (federation check, listen
  addresses, peer exchange, round-trip time), ban peers that keep sending
  invalid data, persist the table (``storage/peers.py``);
* ``HOME/node.json`` with the peer ID and dialable addresses while it runs,
  for ``rgrid id`` and ``rgrid peers``.

Every number that bounds work or memory is in ``FederationConfig`` (defaults
from the modules that use them, each with its reason).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from registrygrid.engine import registries as regs
from registrygrid.engine import subjects
from registrygrid.errors import (
    MalformedInput,
    NotMember,
    PolicyDenied,
    RegistryError,
    TooLarge,
    Unavailable,
    UnknownRegistry,
    ValidationError,
)
from registrygrid.identity.keys import did_from_peer_id
from registrygrid.node import follow as follow_mod
from registrygrid.node import gossip as gossip_mod
from registrygrid.node import peers as peers_mod
from registrygrid.node.blob_exchange import BlobExchange
from registrygrid.node.dht import RegistryDirectory
from registrygrid.node.federated_search import serve_search
from registrygrid.node.follow import Follows
from registrygrid.node.gossip import GossipService
from registrygrid.node.guard import PeerGuard
from registrygrid.node.multiaddrs import check_listen_addrs, check_peer_addrs
from registrygrid.node.p2p import GossipConfig, P2PHost
from registrygrid.node.peers import PeerTable
from registrygrid.node.remote_read import RemoteReader, answer_read
from registrygrid.node.sync import (
    MAX_INBOUND_SYNCS,
    SessionReport,
    SyncFailed,
    SyncService,
)
from registrygrid.node.transport import P2PError, PeerEvent, Transport
from registrygrid.protocol import federated_search, names, registry_record, remote_read
from registrygrid.protocol import sync as sync_protocol
from registrygrid.protocol.blob_exchange import BLOB_PROTOCOL_ID
from registrygrid.protocol.envelope import registry_of
from registrygrid.protocol.gossip import topic_for
from registrygrid.protocol.guard import GuardLimits
from registrygrid.protocol.hello import (
    HELLO_PROTOCOL_ID,
    MAX_HELLO_BYTES,
    MAX_SHARED_PEERS,
    decode_hello,
    encode_hello,
    peer_of,
)
from registrygrid.protocol.sync_session import GAP_SYNC_DELAY_S
from registrygrid.storage import peers as peer_store
from registrygrid.trust.admission import Admitted, check_admission, encode_proof, standing_refusal

if TYPE_CHECKING:
    from registrygrid.node.node import Node

log = logging.getLogger("registrygrid.federation")

# Anti-entropy period: gossip repairs most losses itself within a few 1 s
# heartbeats (IHAVE/IWANT over the last 3), and a lost change that has a
# successor shows up as a gap at once; what only this timer catches is a lost
# *last* change. 10 s bounds how stale that leaves a peer, and an idle round
# costs one request carrying two version vectors (a few KB) per peer, i.e.
# a few requests a second for a federation of tens of peers.
SYNC_INTERVAL_S = 10.0
# Connected peers. GossipSub keeps 4-12 mesh peers per topic; the rest only
# sync. 64 bounds per-peer tasks, queues and sessions; more peers are refused.
MAX_CONNECTED_PEERS = 64
# Concurrent outbound sync sessions. Every session feeds the one group
# committer, so more than a few only queue there; 4 also bounds the memory of
# responses in flight to 4 x 8 MiB.
MAX_SYNC_SESSIONS = 4
# Peers' remote reads and federated searches answered at once (threads of
# their own, beside the sessions above and the inbound syncs).
MAX_SERVED_READS = 4
# Concurrent dials: each is a TCP connect plus a Noise handshake (CPU on a
# 2-core node); 8 reaches tens of peers in a few round trips.
MAX_CONCURRENT_DIALS = 8
# A dial that takes longer is dead (loopback takes ~20 ms, a WAN ~1 s).
DIAL_TIMEOUT_S = 10.0
# Peer-table writes: at most one durable transaction per 5 s, and only when
# something changed; `rgrid peers` is at most this stale.
PERSIST_INTERVAL_S = 5.0
# A hello is a few hundred bytes; 10 s is generous even across the world.
HELLO_TIMEOUT_S = 10.0
# A hello that failed on a connection that stays up (a timeout on a loaded
# node, a peer still setting up its handlers) is tried again after 1 s,
# doubling up to 30 s: the dial loop never redials a connected peer, so
# without this the node would neither admit nor sync from that peer until
# the connection dropped.
HELLO_RETRY_BASE_S = 1.0
HELLO_RETRY_CAP_S = 30.0
# A refused peer is disconnected this long after the refusal is sent: a
# refusal is one small frame (a round trip or two even across the world).
REFUSAL_GRACE_S = 0.5


@dataclass(frozen=True)
class FederationConfig:
    sync_interval: float = SYNC_INTERVAL_S
    gap_sync_delay: float = GAP_SYNC_DELAY_S
    max_connected_peers: int = MAX_CONNECTED_PEERS
    max_sync_sessions: int = MAX_SYNC_SESSIONS
    max_inbound_syncs: int = MAX_INBOUND_SYNCS
    max_concurrent_dials: int = MAX_CONCURRENT_DIALS
    dial_timeout: float = DIAL_TIMEOUT_S
    persist_interval: float = PERSIST_INTERVAL_S
    backoff_base: float = peers_mod.BACKOFF_BASE_S
    backoff_cap: float = peers_mod.BACKOFF_CAP_S
    ban_after_invalid: int = peers_mod.BAN_AFTER_INVALID
    ban_seconds: float = peers_mod.BAN_S
    peer_queue_bytes: int = gossip_mod.PEER_QUEUE_BYTES
    total_queue_bytes: int = gossip_mod.TOTAL_QUEUE_BYTES
    gossip: GossipConfig = field(default_factory=GossipConfig)
    # Rate budgets per peer and per org, bucket-table bounds, flood strikes
    # and the longest sync wait: each default with its reason in
    # protocol/guard.py (docs/federation.md, "Policy guard").
    guard: GuardLimits = field(default_factory=GuardLimits)
    # The registry of registries (node/dht.py): run the Kademlia DHT, as a
    # client only (for a node others can't dial), and how often to republish.
    dht: bool = True
    dht_client: bool = False
    # Peers of other federations kept connected for the DHT: enough for
    # Kademlia lookups to cross federations (k = 20 per bucket), few enough
    # that outsiders can't take the connection budget (max_connected_peers).
    max_foreign_peers: int = 32
    dht_republish_interval: float = registry_record.REPUBLISH_SECONDS
    # How often a followed registry asks its providers for news (node/follow.py).
    follow_interval: float = follow_mod.FOLLOW_INTERVAL_S


class Federation:
    name = "federation"

    def __init__(self, *, listen: Sequence[str], bootstrap: Sequence[str] = (), federation: str = "default",
                 config: FederationConfig | None = None,
                 transport: Callable[[bytes], Transport] | None = None) -> None:
        """``transport``: the node's key seed -> the host it talks through
        (node/transport.py); py-libp2p's P2PHost on ``listen`` by default, an
        in-memory network's host in simulations (node/memory_transport.py,
        which has no DHT: the config must say ``dht=False``)."""
        self.federation = names.registry_name(federation)  # it becomes a topic segment
        # Every address is checked whole here, before anything runs: a bad
        # one is a ValidationError naming it, not a peer in backoff later.
        self.listen = check_listen_addrs(listen)
        if not self.listen:
            raise ValidationError("the federation needs at least one --listen multiaddr")
        self.bootstrap = check_peer_addrs(bootstrap)
        self.config = config or FederationConfig()
        self.topic = topic_for(self.federation)
        self.metrics: Counter[str] = Counter()
        self.host: Transport | None = None
        self._transport = transport
        if transport is not None and self.config.dht:
            raise ValidationError("the registry of registries (DHT) runs on py-libp2p only: a federation on "
                                  "another transport needs FederationConfig(dht=False)")
        self.peers: PeerTable | None = None
        self.gossip: GossipService | None = None
        self.sync: SyncService | None = None
        self.guard: PeerGuard | None = None
        self.node: Node | None = None
        self._nursery: trio.Nursery | None = None
        self._peer_scopes: dict[str, trio.CancelScope] = {}
        self._sync_wake: dict[str, trio.Event] = {}
        self._sessions = trio.CapacityLimiter(self.config.max_sync_sessions)
        # Peers' reads and federated searches, answered on threads of their
        # own: on the sessions' limiter, any peer (members or not) queued
        # its reads ahead of this node's own syncs, and held its
        # replication back for as long as it kept asking.
        self._serving = trio.CapacityLimiter(MAX_SERVED_READS)
        self._dials = trio.Semaphore(self.config.max_concurrent_dials)
        self._dial_wake = trio.Event()
        self._rng = random.Random()
        self.last_session: dict[str, SessionReport] = {}  # per peer, for stats and benchmarks
        self.admitted: dict[str, Admitted] = {}  # peer id -> its org, once its hello proved membership
        self.federation_id = ""
        self._proof = b""
        self.directory: RegistryDirectory | None = None  # the DHT, once running
        self.reader: RemoteReader | None = None  # reads of other federations' public registries
        self.follows: Follows | None = None  # public registries of other federations replicated here
        self.foreign: dict[str, str] = {}  # peer id -> its federation: connected for the DHT, never admitted
        self.blobs: BlobExchange | None = None  # asset bytes to and from members (node/blob_exchange.py)

    # ------------------------------------------------------------ lifecycle

    async def run(self, node: Node, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self.node = node
        cfg = self.config
        key = node.engine.key
        try:
            host = self._transport(key.seed) if self._transport is not None else P2PHost(
                key.seed, self.listen, gossip=cfg.gossip, max_request_bytes=sync_protocol.MAX_REQUEST_BYTES,
                # a sync response: envelopes plus the responder's vector (protocol/sync.py)
                max_response_bytes=max(sync_protocol.MAX_RESPONSE_BYTES + 2**20, remote_read.MAX_RESPONSE_BYTES,
                                       federated_search.MAX_RESPONSE_BYTES + 2**16))
        except ValueError as exc:  # a --listen address it cannot use
            raise ValidationError(str(exc)) from None
        self.host = host
        table = PeerTable(host.peer_id, base=cfg.backoff_base, cap=cfg.backoff_cap, ban_after=cfg.ban_after_invalid,
                          ban_seconds=cfg.ban_seconds, rng=self._rng)
        table.load(await trio.to_thread.run_sync(peer_store.load, node.store), trio.current_time())
        for addr in self.bootstrap:
            table.add([addr], "bootstrap", trio.current_time())
        self.peers = table
        # Federation membership is checked at the hello (trust/admission.py);
        # gossip and sync serve and take nothing from a peer before it passed.
        home_federation = node.home.federation()
        if home_federation.name != self.federation:
            raise ValidationError(f"this home joined federation {home_federation.name!r} "
                                  f"({home_federation.id}), but the node was started for {self.federation!r}")
        self.federation_id = home_federation.id
        membership = node.home.org()
        self._proof = encode_proof(membership.delegation.encode() if membership else b"",
                                   home_federation.invitation.encode() if home_federation.invitation else None,
                                   home_federation.genesis.encode() if home_federation.genesis else None)
        self.guard = PeerGuard(node, cfg.guard, self.metrics)
        self.gossip = GossipService(node, host, self.topic, metrics=self.metrics, strike=self._strike,
                                    blocked=self._shut_out, on_gap=self.request_sync, on_rejected=table.note_rejected,
                                    peer_queue_bytes=cfg.peer_queue_bytes, total_queue_bytes=cfg.total_queue_bytes,
                                    guard=self.guard, broadcast=self._broadcastable)
        self.sync = SyncService(node, host, self.federation, metrics=self.metrics, strike=self._strike,
                                blocked=self._shut_out, on_rejected=table.note_rejected,
                                max_inbound=cfg.max_inbound_syncs, guard=self.guard,
                                org_of=self._member_org)
        host.set_handler(sync_protocol.SYNC_PROTOCOL_ID, self.sync.handle)
        host.set_handler(HELLO_PROTOCOL_ID, self._answer_hello)
        host.set_handler(remote_read.READ_PROTOCOL_ID, self._answer_read)
        host.set_handler(federated_search.SEARCH_PROTOCOL_ID, self._answer_search)
        self.blobs = BlobExchange(host, node.assets, self.metrics,
                                  members=lambda: [p for p in host.connected_peers() if not self._shut_out(p)],
                                  may_serve=lambda peer: not self._shut_out(peer))
        host.set_handler(BLOB_PROTOCOL_ID, self.blobs.handle)
        host.set_topic_validator(self.topic, self.gossip.validate)
        assert node.committer is not None
        async with host:
            events = host.peer_events()
            subscription = await host.subscribe(self.topic)
            node.committer.on_commit.append(self.gossip.on_commit)
            node.home.write_node_info({"peer_id": host.peer_id, "did": key.did, "addrs": host.listen_addrs(),
                                       "federation": self.federation})
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self.gossip.drain, subscription)
                    nursery.start_soon(self.gossip.ingest_loop)
                    nursery.start_soon(self.gossip.publish_loop)
                    nursery.start_soon(self._watch_peers, events)
                    nursery.start_soon(self._dial_loop)
                    nursery.start_soon(self._persist_loop)
                    if cfg.dht:
                        self.directory = RegistryDirectory(
                            host, node, federation_id=self.federation_id,
                            delegation=membership.delegation if membership else None, client=cfg.dht_client,
                            republish_seconds=cfg.dht_republish_interval, metrics=self.metrics)
                        await nursery.start(self.directory.run)
                        self.reader = RemoteReader(host, self.directory, self.metrics)
                        self.follows = Follows(node.home.path / "follows", host, self.directory, key,
                                               hosted=self._hosts, interval=cfg.follow_interval,
                                               metrics=self.metrics)
                        await nursery.start(self.follows.run)
                    log.info("federation %s: peer %s on %s", self.federation, host.peer_id, host.listen_addrs())
                    task_status.started(self)
            finally:
                self._nursery = None
                if self.gossip.on_commit in node.committer.on_commit:
                    node.committer.on_commit.remove(self.gossip.on_commit)
                node.home.clear_node_info()
                table.stopped()
                with trio.CancelScope(shield=True):
                    await self._persist()

    # ------------------------------------------------------------ operator and test hooks

    def _hosts(self, name: str) -> bool:
        """Whether this node's own store holds registry ``name`` (a worker thread)."""
        assert self.node is not None
        with self.node.store.read() as txn:
            try:
                regs.lookup(self.node.store, txn, name)
            except UnknownRegistry:
                return False
        return True

    def addrs(self) -> list[str]:
        return self.host.listen_addrs() if self.host is not None else []

    async def deny(self, peer_ids: Sequence[str]) -> None:
        """Cut these peers off and refuse them until ``allow`` (partition tests, operators)."""
        assert self.peers is not None and self.host is not None
        for peer_id in peer_ids:
            self.peers.deny(peer_id)
            if peer_id in self.host.connected_peers():
                await self.host.disconnect(peer_id)

    def allow(self, peer_ids: Sequence[str]) -> None:
        assert self.peers is not None
        for peer_id in peer_ids:
            self.peers.allow(peer_id, trio.current_time())
        self._dial_wake.set()

    def request_sync(self, peer_id: str) -> None:
        """Sync with this peer soon (gossip gap, dropped message); any peer if it is not connected."""
        wake = self._sync_wake.get(peer_id)
        if wake is None and self._sync_wake:
            wake = self._sync_wake[self._rng.choice(list(self._sync_wake))]
        if wake is not None:
            wake.set()
            self.metrics["sync.requested"] += 1

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"federation.{k}": v for k, v in sorted(self.metrics.items())}
        if self.host is not None:
            out.update({f"p2p.{k}": v for k, v in self.host.stats.items()})
            out["peers.connected"] = len(self.host.connected_peers())
        if self.gossip is not None:
            out.update({f"gossip.{k}": v for k, v in self.gossip.queued().items()})
        if self.guard is not None:
            out.update({f"guard.buckets.{k}": v for k, v in self.guard.guard.sizes().items()})
        return out

    # ------------------------------------------------------------ connections

    async def _watch_peers(self, events: trio.MemoryReceiveChannel[PeerEvent]) -> None:
        async for event in events:
            if event.kind == "connected":
                self._on_connected(event.peer_id)
            elif event.kind == "disconnected":
                self._on_disconnected(event.peer_id)
            else:
                self.metrics["peers.streams_failed"] += 1
                self._strike(event.peer_id, f"stream failed: {event.why}")

    def _reconcile(self) -> None:
        """Level-triggered check of the connection events: the host misses a
        disconnect/connect pair when a peer reconnects within py-libp2p's
        connection-close window, so compare with what is connected now."""
        assert self.host is not None and self.peers is not None and self._nursery is not None
        connected = set(self.host.connected_peers())
        for peer_id in connected:
            if peer_id not in self._peer_scopes or self.peers.blocked(peer_id):
                self._on_connected(peer_id)
        for peer_id in list(self._peer_scopes):
            if peer_id not in connected:
                self._on_disconnected(peer_id)

    def _on_connected(self, peer_id: str) -> None:
        assert self.host is not None and self.peers is not None and self._nursery is not None
        if self.peers.blocked(peer_id) or (peer_id not in self._peer_scopes
                                           and len(self._peer_scopes) >= self.config.max_connected_peers):
            self.metrics["peers.refused"] += 1
            self._drop_task(peer_id)
            self._nursery.start_soon(self.host.disconnect, peer_id)
            return
        if peer_id in self._peer_scopes or self.peers.connected(peer_id, trio.current_time()) is None:
            return
        self.metrics["peers.connected"] += 1
        scope = trio.CancelScope()
        self._peer_scopes[peer_id] = scope
        self._sync_wake[peer_id] = trio.Event()
        self._nursery.start_soon(self._peer_task, peer_id, scope)

    def _broadcastable(self, wire: bytes) -> bool:
        """May this local change go on the federation-wide gossip topic? Not
        if its registry is private, nor if it is a built-in record that
        speaks of a private or local registry (engine/subjects.py: its
        readers sync it). (On the trio thread, per committed local change:
        one LMDB read; built-in registries are never private.)"""
        assert self.node is not None
        registry = registry_of(wire)
        if registry in subjects.SUBJECT_REGISTRIES:
            with self.node.store.read() as txn:
                return not subjects.Withheld(self.node.store, None).wire(txn, wire)
        if registry is None or registry in regs.BUILTINS:
            return True
        try:
            with self.node.store.read() as txn:
                return not regs.lookup(self.node.store, txn, registry, include_deleted=True).private
        except RegistryError:
            return True

    def _shut_out(self, peer_id: str) -> bool:
        """Banned, or not (yet, or no longer) admitted as a member's node."""
        assert self.peers is not None
        return self.member(peer_id) is None or self.peers.blocked(peer_id)

    def member(self, peer_id: str) -> Admitted | None:
        """The peer's admission while it stands. A revocation of its key or
        org that reached us after its hello expels it at once (banned, cut
        off, as at a hello): a peer that says no more hellos was served on
        the strength of its first one. A few set operations on the trust
        state, per message served."""
        admitted = self.admitted.get(peer_id)
        if admitted is None:
            return None
        assert self.node is not None and self.peers is not None
        refusal = standing_refusal(self.node.engine.trust, admitted.did, admitted.org)
        if refusal is None:
            return admitted
        del self.admitted[peer_id]
        self.metrics["peers.expelled"] += 1
        log.warning("expelled %s, admitted before: %s", peer_id, refusal.message)
        self.peers.ban(peer_id, f"not a member: {refusal.message}"[:200])
        if self._nursery is not None:
            self._nursery.start_soon(self._cut_off, peer_id)
        return None

    def _member_org(self, peer_id: str) -> str | None:
        admitted = self.member(peer_id)
        return admitted.org if admitted is not None else None

    def _on_disconnected(self, peer_id: str) -> None:
        self.admitted.pop(peer_id, None)
        self.foreign.pop(peer_id, None)
        assert self.peers is not None
        self._drop_task(peer_id)
        self.peers.disconnected(peer_id, trio.current_time())
        self._dial_wake.set()

    def _drop_task(self, peer_id: str) -> None:
        scope = self._peer_scopes.pop(peer_id, None)
        if scope is not None:
            scope.cancel()
        self._sync_wake.pop(peer_id, None)

    async def _peer_task(self, peer_id: str, scope: trio.CancelScope) -> None:
        """While connected: hello, then sync on connect, every interval and on gaps."""
        with scope:
            retry = HELLO_RETRY_BASE_S
            while not await self._hello(peer_id) and not self.peers.blocked(peer_id):  # type: ignore[union-attr]
                self.metrics["hello.retried"] += 1
                await trio.sleep(retry)
                retry = min(2 * retry, HELLO_RETRY_CAP_S)
            if peer_id not in self.admitted:
                return  # refused (banned and cut off), or of another federation: no sync
            while True:
                async with self._sessions:
                    await self._sync_with(peer_id)
                wake = self._sync_wake.get(peer_id)
                if wake is None:
                    return
                interval = self.config.sync_interval * (0.8 + 0.4 * self._rng.random())  # de-synchronise peers
                with trio.move_on_after(interval):
                    await wake.wait()
                if self.member(peer_id) is None:
                    return  # revoked since its hello: expelled, nothing more for it
                if wake.is_set():
                    self._sync_wake[peer_id] = trio.Event()
                    await trio.sleep(self.config.gap_sync_delay)
                else:
                    await self._hello(peer_id)

    async def _sync_with(self, peer_id: str) -> None:
        assert self.sync is not None and self.peers is not None
        try:
            report = await self.sync.pull(peer_id)
        except SyncFailed as exc:
            log.info("%s", exc)
            return
        except Exception:  # a storage failure or a bug: contained to this session, loudly
            self.metrics["sync.crashed"] += 1
            log.exception("sync with %s failed", peer_id)
            return
        self.peers.note_sync(peer_id, lag=report.lag, ahead=report.ahead)
        self.last_session[peer_id] = report
        if report.applied:
            log.info("synced %d changes from %s in %d rounds", report.applied, peer_id, report.rounds)

    async def _dial_loop(self) -> None:
        assert self.peers is not None and self._nursery is not None
        while True:
            self._reconcile()
            now = trio.current_time()
            room = self.config.max_connected_peers - len(self._peer_scopes)
            for peer in self.peers.due(now)[:max(0, room)]:
                self.peers.dial_started(peer.id)
                self._nursery.start_soon(self._dial, peer.id, list(peer.record.addrs))
            next_due = self.peers.next_due()
            # Wake at the next scheduled redial, on news (a disconnect, new
            # addresses, an allow), and at least once a second for bans
            # that expire.
            wait = 1.0 if next_due is None else min(1.0, max(0.0, next_due - trio.current_time()))
            with trio.move_on_after(wait):
                await self._dial_wake.wait()
            self._dial_wake = trio.Event()
            await trio.sleep(0.01)  # coalesce a burst of events into one pass

    async def _dial(self, peer_id: str, addrs: list[str]) -> None:
        assert self.peers is not None and self.host is not None
        error = "no address"
        async with self._dials:
            for addr in addrs:
                if self.peers.blocked(peer_id):
                    break
                try:
                    await self.host.connect(addr, timeout=self.config.dial_timeout)
                except P2PError as exc:
                    error = exc.message
                    continue
                self.peers.dial_done(peer_id)
                self.metrics["dial.ok"] += 1
                return
        self.metrics["dial.failed"] += 1
        self.peers.dial_failed(peer_id, trio.current_time(), error)

    # ------------------------------------------------------------ hello

    def _my_hello(self, peer_id: str) -> bytes:
        assert self.host is not None and self.peers is not None
        return encode_hello(self.federation, self.host.listen_addrs(), self.peers.share(peer_id, MAX_SHARED_PEERS),
                            self.federation_id, self._proof)

    async def _hello(self, peer_id: str) -> bool:
        """Exchange hellos; whether the peer answered (admitted, refused us,
        or of another federation: nothing to try again)."""
        assert self.host is not None and self.peers is not None
        started = trio.current_time()
        try:
            reply = await self.host.request(peer_id, HELLO_PROTOCOL_ID, self._my_hello(peer_id),
                                            timeout=HELLO_TIMEOUT_S)
        except P2PError as exc:
            self.metrics["hello.failed"] += 1
            if NotMember.code in exc.message:  # the peer's answer: we are not admitted there
                self.metrics["hello.refused_by_peer"] += 1
                log.warning("%s refused this node: %s", peer_id, exc.message)
                return True
            log.debug("hello to %s failed: %s", peer_id, exc)
            return False
        self.peers.note_latency(peer_id, trio.current_time() - started)
        await self._heard(peer_id, reply)
        return True

    async def _answer_read(self, peer_id: str, request: bytes) -> bytes:
        """A public registry's changes, for any peer that is not banned
        (node/remote_read.py); at most MAX_SERVED_READS at once, with searches."""
        assert self.peers is not None and self.node is not None
        if self.peers.blocked(peer_id):
            raise PolicyDenied("this node does not serve you")
        self._admit_read("remote_read")
        self.metrics["remote_read.served"] += 1
        try:
            return await trio.to_thread.run_sync(answer_read, request, self.node.engine, limiter=self._serving)
        except (MalformedInput, TooLarge) as exc:  # counted and struck, as sync's invalid requests are
            self.metrics["remote_read.invalid_request"] += 1
            self._strike(peer_id, f"read: {exc.code}: {exc.message}")
            raise

    async def _answer_search(self, peer_id: str, request: bytes) -> bytes:
        """A peer's federated query (node/federated_search.py), over what its
        org may read here: any peer that is not banned, members and others
        alike (others see the public registries only)."""
        assert self.peers is not None and self.node is not None
        admitted = self.member(peer_id)  # expels a member revoked since its hello (then banned)
        if self.peers.blocked(peer_id):
            raise PolicyDenied("this node does not serve you")
        self._admit_read("search")
        self.metrics["search.served"] += 1
        return await trio.to_thread.run_sync(serve_search, self.node.component("search"), request,
                                             admitted.org if admitted is not None else None, admitted is not None,
                                             limiter=self._serving)

    def _admit_read(self, what: str) -> None:
        """Busy (retry later) when every reading thread is taken, as sync
        answers it: a queue of them would only hold the asker's slots."""
        if self._serving.available_tokens < 1:
            self.metrics[f"{what}.refused_busy"] += 1
            raise Unavailable(f"busy: {MAX_SERVED_READS} reads and searches are being answered; retry later")

    async def _answer_hello(self, peer_id: str, request: bytes) -> bytes:
        assert self.peers is not None
        if self.peers.blocked(peer_id):
            raise PolicyDenied("this node does not talk to you")
        if len(request) > MAX_HELLO_BYTES:
            raise ValidationError("hello too large")
        refusal = await self._heard(peer_id, request)
        if refusal is not None:
            raise refusal  # the peer learns why (``code: message``), then is cut off
        return self._my_hello(peer_id)

    async def _heard(self, peer_id: str, data: bytes) -> RegistryError | None:
        """Take in a peer's hello: check its federation and its membership,
        learn its and its peers' addresses. The refusal, if any."""
        assert self.peers is not None and self.host is not None and self.node is not None
        if self.peers.blocked(peer_id):
            # Denied or banned while our own hello to it was in flight: its
            # answer admits nothing (the disconnect is on its way).
            self.metrics["hello.refused_blocked"] += 1
            return PolicyDenied("this node does not talk to you")
        try:
            hello = decode_hello(data)
        except RegistryError as exc:
            self.metrics["hello.invalid"] += 1
            self._strike(peer_id, f"hello: {exc.code}: {exc.message}")
            return exc
        now = trio.current_time()
        if hello.federation != self.federation:
            # A node of another federation: never admitted (no gossip, no
            # sync: _shut_out), but welcome on the open protocols, the DHT of
            # the registry of registries first (node/dht.py). Not banned, and
            # bounded: past max_foreign_peers it is cut off (room may free up).
            self.metrics["hello.foreign_federation"] += 1
            if peer_id not in self.foreign and len(self.foreign) >= self.config.max_foreign_peers:
                self.metrics["peers.foreign_refused"] += 1
                self._nursery.start_soon(self._cut_off, peer_id)  # type: ignore[union-attr]
                return NotMember(f"member of federation {hello.federation!r}, not {self.federation!r}, and this "
                                 f"node already talks to {self.config.max_foreign_peers} peers of other federations")
            self.foreign[peer_id] = hello.federation
            # Remembered (and persisted with the peer table), so a restart
            # dials it again and the DHT's routing table crosses federations
            # again without a bootstrap address for it.
            own = [a for a in hello.addrs if peer_of(a) == peer_id]
            if own:
                self.peers.add(own, "foreign", trio.current_time())
            return None
        try:
            admitted = check_admission(self.node.engine.trust, did_from_peer_id(peer_id), hello.federation_id,
                                       hello.proof)
        except RegistryError as exc:
            refusal = exc if isinstance(exc, NotMember) else NotMember(exc.message)
            self.metrics["hello.not_member"] += 1
            log.warning("refused %s at the handshake: %s", peer_id, refusal.message)
            self.peers.ban(peer_id, f"not a member: {refusal.message}"[:200])
            self._nursery.start_soon(self._cut_off, peer_id)  # type: ignore[union-attr]
            return refusal
        if peer_id not in self.admitted:
            self.metrics["hello.admitted"] += 1
        self.admitted[peer_id] = admitted
        own = [a for a in hello.addrs if peer_of(a) == peer_id]
        if own:
            self.peers.add(own, "learned", now)
        learned = 0
        for addr in hello.peers:
            if peer_of(addr) not in self.peers.peers and self.peers.add([addr], "learned", now) is not None:
                learned += 1
        if learned:
            self.metrics["peers.learned"] += learned
            self._dial_wake.set()
        return None

    async def _cut_off(self, peer_id: str) -> None:
        """Disconnect a refused peer once our refusal had time to reach it
        (it is banned already, so nothing is served meanwhile): an operator
        on the other side then reads why, not a dropped stream."""
        assert self.host is not None
        await trio.sleep(REFUSAL_GRACE_S)
        await self.host.disconnect(peer_id)

    # ------------------------------------------------------------ misbehaviour and persistence

    def _strike(self, peer_id: str, why: str) -> None:
        assert self.peers is not None
        self.metrics["peers.strikes"] += 1
        if self.peers.strike(peer_id, trio.current_time(), why):
            self.metrics["peers.banned"] += 1
            log.warning("banned %s for %.0f s: %s", peer_id, self.config.ban_seconds, why)
            if self._nursery is not None and self.host is not None:
                self._nursery.start_soon(self.host.disconnect, peer_id)

    async def _persist_loop(self) -> None:
        while True:
            await trio.sleep(self.config.persist_interval)
            await self._persist()

    async def _persist(self) -> None:
        assert self.peers is not None and self.node is not None
        records, forget = self.peers.take_dirty()
        if not records and not forget:
            return
        try:
            await trio.to_thread.run_sync(lambda: peer_store.save(self.node.store, records, forget=forget))  # type: ignore[union-attr]
        except Exception as exc:  # the table is still in memory: retry these next round
            self.peers.requeue(records, forget)
            self.metrics["peers.persist_failed"] += 1
            log.warning("could not persist the peer table: %r", exc)
