"""The registry of registries on a Kademlia DHT: publish, provide, resolve.

Each node runs py-libp2p's Kademlia DHT (``libp2p.kad_dht.KadDHT``) on its
own libp2p host and identity: in server mode (it answers queries and holds
records) unless started as a DHT client (``--dht-client``, for nodes others
can't dial). Its routing table is filled with the peers the node connects
to (bootstrap peers and those learned at hellos); the peer table the
federation persists in LMDB is what brings them back after a restart.

A node publishes, under ``/rgrid-registry/<name>``, a signed record of each
registry its org owns (protocol/registry_record.py) and announces itself as
a provider of each registry it hosts. It republishes both every
``REPUBLISH_SECONDS`` (22 h, libp2p's default, so records that live 48 h
never lapse while their owner runs), and right away when asked
(``publish``). Every value the DHT stores or returns passes
``DescriptorValidator``: a forged, stale or oversized one is refused on put
and on get, and counted.

``resolve(name)`` answers with the descriptor, its verification and the
providers with their addresses, from the DHT, or from a short cache
(``CACHE_SECONDS``) unless ``fresh``.
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.value_store import ValueStore
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.tools.anyio_service import background_trio_service

from registrygrid.engine import registries as regs
from registrygrid.engine.ops import Committed
from registrygrid.errors import NotFound, RegistryError, Unavailable
from registrygrid.identity.delegation import Delegation
from registrygrid.protocol import registry_record as rr
from registrygrid.protocol.hlc import wall_clock_ms
from registrygrid.storage import records

log = logging.getLogger(__name__)


class _PeerLeftQuietly(logging.Filter):
    """py-libp2p's DHT keeps an inbound stream open for the peer's next
    query and warns "Failed to read DHT message from stream" when the peer
    closes it before starting one (StreamEOF, with an empty message): that
    is how every peer that queried this node leaves, at a stop or a
    restart. Seen as a debug line, not a warning; any other read failure
    stays a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.args and isinstance(record.args[0], StreamEOF) \
                and record.msg.startswith("Failed to read DHT message"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("libp2p.kad_dht.kad_dht").addFilter(_PeerLeftQuietly())

# A resolve is a few DHT round trips (~1-3 ms each on a LAN, 100+ ms across
# the world); past this the caller gets what was found, or a timeout.
RESOLVE_TIMEOUT_S = 10.0
# How long a resolve answer is reused: registries change rarely, and a
# minute bounds how stale a provider list can be (``--fresh`` skips it).
CACHE_SECONDS = 60.0
# At most this many providers are asked for and shown.
MAX_PROVIDERS = 20
# A fresh resolve asks this many of the peers closest to the key for
# providers: a provider announces itself to the k (20) closest, so the few
# closest nearly always know it; asking all 20 tripled a fresh resolve here.
PROVIDER_FANOUT = 5
# A burst of descriptor changes (a sync bringing many) is published once.
DESCRIPTOR_DEBOUNCE_S = 0.5
# How often a node whose last publish found no peer looks for its first.
ALONE_CHECK_S = 1.0


class DescriptorValidator(Validator):
    """py-libp2p's validator hook for the ``rgrid-registry`` namespace: every
    value put here or returned by a peer is checked as its own evidence."""

    def __init__(self, metrics: Counter[str], now_ms: Any = wall_clock_ms) -> None:
        self.metrics = metrics
        self.now_ms = now_ms

    def validate(self, key: str, value: bytes) -> None:
        try:
            rr.read_record(key, value, now_ms=self.now_ms())
        except RegistryError as exc:
            self.metrics[f"dht.invalid.{exc.code}"] += 1
            raise

    def select(self, key: str, values: list[bytes]) -> int:
        bodies = [rr.readable(key, v, self.now_ms()) for v in values]
        valid = [i for i, b in enumerate(bodies) if b is not None]
        if not valid:
            return 0
        return valid[rr.choose([bodies[i] for i in valid])]  # type: ignore[misc]


# Values a node holds for others: py-libp2p keeps 50,000 and, when full,
# evicts the one received first, so a peer that put a flood of valid
# records for made-up names evicted everyone's, this node's own first
# (and 50,000 values of up to 16 KiB each is 800 MB). Registries are few
# and each node holds only the names closest to it.
MAX_HELD_VALUES = 20_000
# And of those, what one peer's records may take (a record's author is the
# peer that signed its put; unsigned ones share one allowance): a single
# peer with made-up names filled the whole store, and every other peer's
# new names were then turned away for 48 h.
MAX_VALUES_PER_PEER = 1_000


class HeldValues(ValueStore):
    """py-libp2p's value store, bounded our way: once it holds
    ``MAX_HELD_VALUES``, a value for a name it does not hold yet is not
    stored (counted, ``dht.refused.full``) rather than stored over the
    oldest, nor once its author's records take ``MAX_VALUES_PER_PEER``
    (``dht.refused.peer_quota``: a scan of what is held, per new name); a newer value of a name it holds still replaces the old one,
    and this node's own values are always kept. Room comes back as values
    expire (48 h; the DHT sweeps them)."""

    def __init__(self, host: Any, local_peer_id: Any, metrics: Counter[str]) -> None:
        super().__init__(host, local_peer_id)
        self.metrics = metrics

    def put_record(self, key: bytes, record: Any) -> None:
        if key not in self.store:
            if len(self.store) >= MAX_HELD_VALUES:
                self.metrics["dht.refused.full"] += 1
                return
            author = record.author
            if sum(1 for held, _ in self.store.values() if held.author == author) >= MAX_VALUES_PER_PEER:
                self.metrics["dht.refused.peer_quota"] += 1
                return
        super().put_record(key, record)

    def _evict_if_full(self) -> None:
        """Nothing is evicted: a peer's new value is refused when full
        (``put_record``), and this node's own are never turned away."""


@dataclass(frozen=True)
class _Owned:
    """A registry this node's org owns, as ``publish`` needs it."""

    name: str
    created_at: int
    ceded: tuple[rr.TransferBody, bytes] | None  # the transfer that gave its name away, if one did


def _ceded(name: str, owner: str, field: Any) -> tuple[rr.TransferBody, bytes] | None:
    """The descriptor's transfer (checked on write; read defensively)."""
    if field is None:
        return None
    try:
        link = rr.transfer_field(name, owner, field)
    except RegistryError as exc:
        log.warning("dht: the transfer in %s's descriptor does not hold: %s", name, exc.message)
        return None
    return link, base64.b64decode(field["statement"])


@dataclass
class _Cached:
    at: float
    answer: dict[str, Any]


class RegistryDirectory:
    """The DHT of one node, and what it publishes and resolves there."""

    def __init__(self, host: Any, node: Any, *, federation_id: str, delegation: Delegation | None,
                 client: bool = False, republish_seconds: float = rr.REPUBLISH_SECONDS,
                 cache_seconds: float = CACHE_SECONDS, metrics: Counter[str] | None = None) -> None:
        self.host = host
        self.node = node
        self.federation_id = federation_id
        self.delegation = delegation
        self.mode = DHTMode.CLIENT if client else DHTMode.SERVER
        self.republish_seconds = republish_seconds
        self.cache_seconds = cache_seconds
        self.metrics: Counter[str] = metrics if metrics is not None else Counter()
        self.dht: KadDHT | None = None
        self._cache: dict[str, _Cached] = {}
        self._publish_now = trio.Event()
        # name -> the signed transfers that lead to this org's claim of it
        # (adopted from the DHT, ``_adopt``); names it never received are absent.
        self._chains: dict[str, list[bytes]] = {}
        self._adopting = False
        self._nursery: trio.Nursery | None = None
        # The last publish found no peer to put to: the first that joins
        # gets this node's records then (``_wait_to_republish``).
        self._published_alone = False

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        validator = NamespacedValidator({rr.NAMESPACE: DescriptorValidator(self.metrics)}, strict_validation=True)
        self.dht = KadDHT(self.host.libp2p_host, self.mode, validator=validator, validator_changed=True,
                          strict_validation=True)
        self.dht.value_store = HeldValues(self.host.libp2p_host, self.dht.local_peer_id, self.metrics)
        async with background_trio_service(self.dht):
            events = self.host.peer_events()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for peer_id in self.host.connected_peers():
                    nursery.start_soon(self._add_peer, peer_id)
                nursery.start_soon(self._track_peers, events, nursery)
                nursery.start_soon(self._republish_loop)
                nursery.start_soon(self._watch_descriptors)
                task_status.started(self)

    # ------------------------------------------------------------ routing table

    async def _track_peers(self, events: Any, nursery: trio.Nursery) -> None:
        async for event in events:
            if event.kind == "connected":
                nursery.start_soon(self._add_peer, event.peer_id)

    async def _add_peer(self, peer_id: str) -> None:
        """A connected peer joins the routing table once it is known to speak
        the DHT (py-libp2p checks its protocols; a DHT client is left out).
        The first one gets this node's records at once: published to an
        empty table, they were held here alone until the next republish
        (22 h), and gone from the DHT whenever this node stopped before."""
        assert self.dht is not None
        with trio.move_on_after(RESOLVE_TIMEOUT_S):
            try:
                if await self.dht.add_peer(ID.from_base58(peer_id)):
                    self.metrics["dht.peers_added"] += 1
            except Exception as exc:  # noqa: BLE001 - py-libp2p raises bare errors for a peer that left
                log.debug("dht: could not add %s: %s", peer_id, exc)

    # ------------------------------------------------------------ publishing

    def publish_soon(self) -> None:
        """Publish and provide now rather than at the next republish."""
        self._publish_now.set()

    async def _watch_descriptors(self) -> None:
        """Publish soon after a descriptor changes here (created, updated,
        replicated in): a new registry is findable in seconds, not at the
        next republish. Debounced: one publish per burst of changes. Told
        by the committer which registries each batch changed, so a sync of
        100k records costs it nothing (reading their feed events to find
        the few descriptors among them took ~7% of a catch-up's CPU)."""
        changed = trio.Event()

        def on_commit(committed: Committed) -> None:
            if regs.REGISTRY_OF_REGISTRIES in committed.registries:
                changed.set()

        hooks = self.node.committer.on_commit
        hooks.append(on_commit)
        try:
            while True:
                await changed.wait()
                changed = trio.Event()
                await trio.sleep(DESCRIPTOR_DEBOUNCE_S)
                self.publish_soon()
        finally:
            hooks.remove(on_commit)

    async def _republish_loop(self) -> None:
        while True:
            try:
                await self.publish()
            except RegistryError as exc:
                log.warning("dht: publishing failed: %s", exc.message)
            await self._wait_to_republish()
            self._publish_now = trio.Event()

    async def _wait_to_republish(self) -> None:
        """Until asked (``publish_soon``), or the republish interval passed,
        or, when the last publish found no peer to put to, until one is in
        the routing table: published to an empty table, this node's records
        were held by it alone until the next republish (22 h), and gone from
        the DHT whenever it stopped before. py-libp2p fills the table from
        peers' own queries too, so it is asked, not told."""
        assert self.dht is not None
        with trio.move_on_after(self.republish_seconds):
            while not self._publish_now.is_set():
                if self._published_alone and self.dht.get_routing_table_size() > 0:
                    self.metrics["dht.published_to_first_peer"] += 1
                    return
                with trio.move_on_after(ALONE_CHECK_S if self._published_alone else self.republish_seconds):
                    await self._publish_now.wait()

    def _registries(self) -> tuple[list[_Owned], list[tuple[str, bytes]], list[str]]:
        """(the registries this node's org owns, their signed records, the
        names of the registries this node announces it hosts), from its
        store. A registry whose name its owner gave away (its descriptor's
        ``transfer``) is published as a pointer to the receiver, and no
        longer announced: the receiver's nodes serve that name now."""
        node = self.node
        engine = node.engine
        owned: list[_Owned] = []
        signed: list[tuple[str, bytes]] = []
        hosted: list[str] = []
        now = wall_clock_ms()
        with node.store.read() as txn:
            for record in records.iter_records(node.store, txn, registry=regs.REGISTRY_OF_REGISTRIES):
                desc = regs.descriptor_from_record(record)
                if record["deleted"] or desc.replication in ("local", "private"):
                    continue
                ceded = _ceded(desc.name, desc.owner, record["fields"].get("transfer"))
                if ceded is None:
                    hosted.append(desc.name)
                if desc.owner != engine.owner:
                    continue
                item = _Owned(desc.name, record["created_at"] or 0, ceded)
                owned.append(item)
                chain = self._chains.get(desc.name, [])
                if ceded is not None:
                    chain = [*chain, ceded[1]]
                # A received name keeps its first claim's time: every link of the chain carries it.
                claimed_at = rr.read_transfer(chain[0]).claimed_at if chain else item.created_at
                try:
                    signed.append((desc.name, rr.sign_record(
                        engine.key, None if engine.key.did == desc.owner else self.delegation, name=desc.name,
                        owner=desc.owner, claimed_at=claimed_at, version=tuple(record["updated_hlc"]),
                        change_id=record["change_id"], descriptor=record["fields"],
                        federations=[self.federation_id], issued_at=now, transfers=chain)))
                except RegistryError as exc:
                    self.metrics["dht.sign_failed"] += 1
                    log.warning("dht: can't sign the record of %s: %s", desc.name, exc.message)
        return owned, signed, hosted

    async def publish(self) -> dict[str, int]:
        """Put the signed records of this org's registries and announce this
        node as a provider of the registries it hosts; counts of each. Then,
        in the background, look in the DHT for transfers that give this org
        one of its names (``_adopt``)."""
        assert self.dht is not None
        owned, signed, hosted = await trio.to_thread.run_sync(self._registries)
        self._published_alone = bool(signed or hosted) and self.dht.get_routing_table_size() == 0
        put = provided = 0
        for name, value in signed:
            with trio.move_on_after(RESOLVE_TIMEOUT_S):
                try:
                    await self.dht.put_value(rr.dht_key(name), value)
                    put += 1
                except Exception as exc:  # noqa: BLE001 - a newer value elsewhere, a peer gone
                    self.metrics["dht.put_failed"] += 1
                    log.info("dht: put of %s failed: %s", name, exc)
        for name in hosted:
            with trio.move_on_after(RESOLVE_TIMEOUT_S):
                if await self.dht.provide(rr.provider_key(name)):
                    provided += 1
        self.metrics["dht.published"] += put
        self.metrics["dht.provided"] += provided
        if owned and not self._adopting and self._nursery is not None:
            self._adopting = True
            self._nursery.start_soon(self._adopt_all, owned)
        return {"published": put, "provided": provided}

    # ------------------------------------------------------------ transfers

    async def _adopt_all(self, owned: list[_Owned]) -> None:
        """Take up the chains of transfers the DHT holds for this org's names;
        publish again if one changed what this org would sign."""
        try:
            changed = False
            for item in owned:
                chain = await self._adopt(item)
                if chain is not None and chain != self._chains.get(item.name):
                    self._chains[item.name] = chain
                    self.metrics["dht.transfers_adopted"] += 1
                    changed = True
            if changed:
                self.publish_soon()
        finally:
            self._adopting = False

    async def _adopt(self, item: _Owned) -> list[bytes] | None:
        """The chain of transfers by which this org holds ``item``'s name, as
        the peers closest to its key (and this node) hold it: for a name it
        holds, the best record's chain if it ends at this org; for one it
        gave away, that chain's links before its own transfer. None when the
        DHT knows no such chain."""
        assert self.dht is not None
        me = self.node.engine.owner
        key = rr.dht_key(item.name)
        now = wall_clock_ms()
        bodies = [b for b in (rr.readable(key, v, now) for v in await self._values_near(key)) if b is not None]
        candidates: list[tuple[rr.RecordBody, list[bytes]]] = []
        for body in bodies:
            chain = rr.chain_of(body)
            if item.ceded is None and chain and chain[-1].to_owner == me:
                candidates.append((body, list(body.transfers)))
            elif item.ceded is not None:
                for i, link in enumerate(chain):
                    if link.from_owner == me and link.to_owner == item.ceded[0].to_owner:
                        candidates.append((body, list(body.transfers[:i])))
                        break
        if not candidates:
            return None
        return candidates[rr.choose([body for body, _ in candidates])][1]

    async def _values_near(self, key: str) -> list[bytes]:
        """The values this node and the peers closest to ``key`` hold for it
        (asked one by one: py-libp2p's ``get_value`` stops at a local copy)."""
        assert self.dht is not None
        key_bytes = key.encode()
        found: list[bytes] = []
        local = self.dht.value_store.get(key_bytes)
        if local is not None:
            found.append(local.value)

        async def ask(peer: ID) -> None:
            with trio.move_on_after(RESOLVE_TIMEOUT_S / 2):
                try:
                    value = await self.dht.value_store._get_from_peer(peer, key_bytes)  # type: ignore[union-attr]
                except Exception as exc:  # noqa: BLE001 - a peer that left: its answer is simply missing
                    log.debug("dht: value from %s: %s", peer, exc)
                    return
                if isinstance(value, bytes):
                    found.append(value)

        with trio.move_on_after(RESOLVE_TIMEOUT_S):
            closest = await self.dht.peer_routing.find_closest_peers_network(key_bytes)
            async with trio.open_nursery() as nursery:
                for peer in closest[:PROVIDER_FANOUT]:
                    if peer != self.dht.local_peer_id:
                        nursery.start_soon(ask, peer)
        return found

    # ------------------------------------------------------------ resolving

    async def resolve(self, name: str, *, fresh: bool = False) -> dict[str, Any]:
        """The registry's descriptor, its verification, and its providers."""
        if self.dht is None:
            raise Unavailable("the DHT is not running on this node")
        key = rr.dht_key(name)
        cached = self._cache.get(name)
        now = trio.current_time()
        if cached is not None and not fresh and now - cached.at < self.cache_seconds:
            self.metrics["dht.resolve.cached"] += 1
            return {**cached.answer, "source": "cache"}
        with trio.move_on_after(RESOLVE_TIMEOUT_S) as scope:
            value = await self.dht.get_value(key)
        if scope.cancelled_caught:
            raise Unavailable(f"resolving {name} timed out after {RESOLVE_TIMEOUT_S} s")
        if value is None:
            self.metrics["dht.resolve.not_found"] += 1
            raise NotFound(f"no registry named {name!r} in the DHT (nobody published it, or its record lapsed)")
        body = rr.read_record(key, value, now_ms=wall_clock_ms())  # checked again: a local value may be old
        providers = await self._providers(name, fresh=fresh)
        chain = rr.chain_of(body)
        answer = {
            "name": body.name, "descriptor": body.descriptor, "owner": body.owner, "federations": body.federations,
            "version": list(body.version), "change_id": body.change_id, "claimed_at": body.claimed_at,
            "issued_at": body.issued_at,
            "verification": {"signature": "valid", "signer": body.signer,
                             "authority": "owner" if body.signer == body.owner else "delegated by the owner"},
            "holder": chain[-1].to_owner if chain else body.owner,
            "transfers": [{"from": t.from_owner, "to": t.to_owner, "at": t.at} for t in chain],
            "providers": providers, "source": "dht",
        }
        self._cache[name] = _Cached(now, answer)
        self.metrics["dht.resolve.ok"] += 1
        return answer

    async def _providers(self, name: str, *, fresh: bool) -> list[dict[str, Any]]:
        """The nodes that announced they host ``name``, with their addresses.
        py-libp2p's ``find_providers`` answers from the local provider store
        alone whenever it holds any, which can be a restarted provider's old
        address; a fresh resolve also asks the peers closest to the key (the
        same GET_PROVIDERS query, through py-libp2p's per-peer call), and a
        provider's newest answer wins."""
        assert self.dht is not None
        key = rr.provider_key(name)
        found: dict[str, list[str]] = {}
        with trio.move_on_after(RESOLVE_TIMEOUT_S):
            for info in await self.dht.find_providers(key, MAX_PROVIDERS):
                found[info.peer_id.to_base58()] = [str(a) for a in info.addrs]
            if fresh:
                store = self.dht.provider_store
                key_bytes = bytes.fromhex(key)
                closest = await self.dht.peer_routing.find_closest_peers_network(key_bytes)
                async with trio.open_nursery() as nursery:
                    for peer in closest[:PROVIDER_FANOUT]:
                        nursery.start_soon(self._ask_for_providers, store, peer, key_bytes, found)
        return [{"peer_id": peer, "addrs": addrs} for peer, addrs in sorted(found.items())][:MAX_PROVIDERS]

    async def _ask_for_providers(self, store: Any, peer: ID, key: bytes, found: dict[str, list[str]]) -> None:
        with trio.move_on_after(RESOLVE_TIMEOUT_S / 2):
            try:
                infos, _ = await store._get_providers_from_peer_with_closers(peer, key)
            except Exception as exc:  # noqa: BLE001 - a peer that left: its answer is simply missing
                log.debug("dht: providers from %s: %s", peer, exc)
                return
            for info in infos:
                if info.addrs:
                    found[info.peer_id.to_base58()] = [str(a) for a in info.addrs]
