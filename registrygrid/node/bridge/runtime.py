"""The bridge's runtime: aiohttp on its own thread and loop, beside the trio node.

Why this shape. aiohttp is asyncio; the node (and py-libp2p) is trio. The two
ways to join them were measured on this machine class (DESIGN.md, "asyncio
<-> trio"): aiohttp inside ``trio_asyncio`` calling a trio function per
request, about 4.6k req/s; aiohttp on its own thread calling trio through
``trio.from_thread.run``, about 4.3k req/s, but ~24k req/s (bare aiohttp
speed) for requests that never cross. Reads never need to cross: LMDB read
transactions are safe from any thread and the node's ``LocalRegistry``
serves them in microseconds. So the bridge runs aiohttp on a thread of its
own, serves every read there, and crosses into trio only for writes, which
wait for an fsync-bound group commit anyway (~0.4 ms at best), so the
crossing's tens of microseconds disappear in it. trio-asyncio would put
every request, reads included, through the slower path, and would tie the
node's event loop to a compatibility layer. The crossing's cost is measured
on every write (``rgrid_bridge_crossing_seconds``) and by
``benchmarks/bench_bridge.py``; docs/bridge.md has the figures.

Lifecycle, as a component of the node's nursery: ``Bridge.run`` starts the
thread, waits until aiohttp listens, writes ``HOME/bridge.json`` (URL and a
fresh admin token for the CLI, mode 0600; the API lists it as ``local`` and
refuses to revoke it, so no API call locks the operator out of the running
node), reports ``started``, and then flushes the audit buffer until
cancelled. On cancel (Ctrl-C, SIGTERM, a
test's scope) it stops the loop (aiohttp stops listening, ends streams and
lets in-flight requests finish within ``shutdown_grace_s``), cancels any
write still waiting in trio after that grace, joins the thread, flushes the
last audit notes, revokes the CLI token and removes ``bridge.json``.

A write crosses like this: the handler hands its operations straight to the
group committer's writer thread (``GroupCommitter.submit_threadsafe``), which
runs them in the next batch and settles the handler's future with
``loop.call_soon_threadsafe`` once the batch is durable. No thread blocks
while a write waits, so any number of writes wait at once and the committer
batches them all. (History, measured: blocking an executor thread in
``trio.from_thread.run`` per write cost four thread wake-ups a write; a trio
task per write, started with ``run_sync_soon``, cost two plus a trio hop to
the committer and a ``to_thread`` hand-off per batch, ~0.8 ms of a lone
POST. The direct hand-off removes both.) The executor, with
``write_threads`` threads, still runs the loop's other blocking calls
(idempotency records).

A registry resolve (``GET /v1/registries/{name}/resolve``) is trio code
(py-libp2p's DHT, and the directory's cache, live on the node's trio
thread). It crosses as a task of the bridge's own nursery, started with
``run_sync_soon`` and settling the handler's future with
``call_soon_threadsafe``: see ``_run_in_trio`` for why not
``trio.from_thread.run`` in an executor thread. A remote read
(``GET /v1/registries/{name}/remote``: the node's ``RemoteReader``, which
resolves, asks providers over libp2p and verifies in a scratch store)
crosses the same way, and so do a follow and an unfollow
(``PUT``/``DELETE /v1/follows/{name}``: node/follow.py's ``Follows``, whose
syncs run in trio). Reads of a followed copy do not cross: a ``Mirror`` is
an LMDB store like the node's own, read from any thread (``Api.followed``
hands it to the loop), and the list of follows reads each copy's status and
record count on an executor thread. The operator's peer controls
(``POST /v1/peers/deny`` and ``/allow``, ``GET /v1/peers``:
node/federation.py's ``deny`` and ``allow`` and its peer table, which live on
trio's thread; a deny disconnects) cross the same way.

Search does not cross either: the node's ``SearchService`` (node/search.py)
answers from any thread (a tantivy searcher and LMDB reads), so the search
and index routes call it on an executor thread (``Api.search`` hands it to
the loop); its own trio task keeps the index caught up with the feed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import resource
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from aiohttp import web

from registrygrid.engine.ops import Committed, Operation, Outcome
from registrygrid.errors import (
    Disabled,
    NotFound,
    RegistryError,
    Unavailable,
    ValidationError,
)
from registrygrid.home import write_text_durably
from registrygrid.node.bridge import openapi
from registrygrid.node.bridge.app import Api
from registrygrid.node.bridge.audit import FLUSH_BATCH, FLUSH_INTERVAL_S, AuditBuffer
from registrygrid.node.bridge.auth import Authenticator, RateLimit, RateLimiter
from registrygrid.node.bridge.http_log import ServerLog
from registrygrid.node.bridge.metrics import BridgeMetrics
from registrygrid.node.bridge.streaming import FeedHub
from registrygrid.node.federated_search import federated_search
from registrygrid.storage import idempotency, tokens

log = logging.getLogger("registrygrid.bridge")

BRIDGE_FILE = "bridge.json"
CLI_TOKEN_CREATOR = "bridge:cli"
# Purge expired idempotency entries this often: they live 24 h, so a sweep
# every 10 minutes keeps at most ~1% of the table stale.
PURGE_EVERY_S = 600.0


@dataclass(frozen=True)
class BridgeConfig:
    rate_limit: RateLimit = field(default_factory=RateLimit)
    max_body: int = openapi.MAX_BODY_BYTES
    write_threads: int = 64
    idempotency_ttl_ms: int = idempotency.DEFAULT_TTL_MS
    audit_flush_s: float = FLUSH_INTERVAL_S
    audit_batch: int = FLUSH_BATCH
    # In-flight requests get this long to finish at shutdown; 5 s covers any
    # write (a group commit takes milliseconds) without making Ctrl-C feel stuck.
    shutdown_grace_s: float = 5.0
    # Concurrent SSE/WebSocket streams: each holds a socket, and the default
    # open-file limit is 1,024; half of it for streams leaves room for the rest.
    max_streams: int = 512
    # Open connections the HTTP server keeps (streams among them): idle ones
    # held descriptors until the process's limit, and the node's own files
    # (the search index's) then failed. Past it a connection is answered 503
    # and closed. At most 3/4 of the process's open-file limit, whatever is
    # set (the default limit of 1,024 gives 768: the streams' 512 and more).
    max_connections: int = 768
    write_bridge_file: bool = True
    # A request body (an upload's part) that sends nothing for this long is
    # cut with 408, like nginx's client_body_timeout: a client whose
    # connection hangs without closing would otherwise hold its part (and a
    # worker thread) until TCP gives up, which can take hours.
    body_idle_timeout_s: float = 60.0
    # The agent card /.well-known/agent-card.json serves when the org hosts several (a record id of grid.agent-cards).
    agent_card: str | None = None


def config_from_home(home_config: dict[str, Any]) -> BridgeConfig:
    """BridgeConfig from the ``bridge`` section of HOME/config.json:
    ``rate_limit`` (requests/s per token), ``rate_burst``, ``max_streams``,
    ``write_threads``, ``agent_card`` (the card /.well-known/agent-card.json
    serves among several); anything absent keeps its default."""
    section = home_config.get("bridge") or {}
    default = BridgeConfig()
    try:
        rate = float(section.get("rate_limit", default.rate_limit.rate))
        burst = float(section.get("rate_burst", max(default.rate_limit.burst, rate)))
        streams = int(section.get("max_streams", default.max_streams))
        connections = int(section.get("max_connections", default.max_connections))
        threads = int(section.get("write_threads", default.write_threads))
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int() of 1e309, an infinity
        raise ValidationError(f"config.json bridge section: {exc}") from None
    if not (0 < rate < math.inf and 1 <= burst < math.inf) or streams < 1 or threads < 1 or connections < 1:
        raise ValidationError("config.json bridge section: rate_limit, rate_burst, max_streams, max_connections "
                              "and write_threads must be positive (rate_burst >= 1)")
    agent_card = section.get("agent_card")
    if agent_card is not None and not isinstance(agent_card, str):
        raise ValidationError("config.json bridge section: agent_card is a record id of grid.agent-cards")
    return BridgeConfig(rate_limit=RateLimit(rate, burst), max_streams=streams, write_threads=threads,
                        agent_card=agent_card, max_connections=connections)


class Bridge:
    """The node component that serves the local HTTP API (see the module docstring)."""

    name = "bridge"

    def __init__(self, host: str = "127.0.0.1", port: int = 8700, *, config: BridgeConfig | None = None) -> None:
        self.host = host
        self.port = port
        self._explicit_config = config is not None
        self.config = config or BridgeConfig()
        self.api: Api | None = None
        self.cli_token: str | None = None
        self._node: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closing = False
        self._wake = trio.Event()
        # The bridge's trio nursery, while it serves: the parent of the tasks
        # that run trio work for the loop (``_run_in_trio``).
        self._tasks: trio.Nursery | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------------ trio side

    async def run(self, node: Any, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self._node = node
        if not self._explicit_config:
            self.config = config_from_home(node.home.config())
        token = node.trio_token
        audit = AuditBuffer(batch=self.config.audit_batch)
        audit.on_batch_ready = lambda: token.run_sync_soon(self._wake_flusher)
        metrics = BridgeMetrics(self._snapshot)
        auth = Authenticator(node.store, RateLimiter(self.config.rate_limit), audit,
                             on_deny=lambda status: metrics.denials.labels(str(status)).inc(),
                             on_throttle=metrics.throttled.inc)
        self.api = api = Api(registry=node.registry, auth=auth, audit=audit, metrics=metrics,
                             hub=FeedHub(node.feed.head), submit=self._submit_from_loop,
                             resolve=self._resolve_from_loop, read_remote=self._read_remote_from_loop,
                             follow=self._follow_from_loop, unfollow=self._unfollow_from_loop,
                             follows=self._follows, followed=self._followed,
                             search=lambda: node.component("search"),
                             federated_search=self._federated_search_from_loop,
                             peer_status=self._peer_status_from_loop, deny_peers=self._deny_peers_from_loop,
                             allow_peers=self._allow_peers_from_loop,
                             max_body=self.config.max_body, idempotency_ttl_ms=self.config.idempotency_ttl_ms,
                             max_streams=self.config.max_streams, agent_card=self.config.agent_card,
                             body_idle_timeout_s=self.config.body_idle_timeout_s,
                             assets=node.assets, fetch_blob=self._fetch_blob_from_loop)
        thread = threading.Thread(target=self._thread_main, args=(api,), name="rgrid-bridge", daemon=True)
        thread.start()
        await trio.to_thread.run_sync(self._ready.wait)
        if self._startup_error is not None:
            await trio.to_thread.run_sync(thread.join)
            raise Unavailable(f"the bridge cannot listen on {self.host}:{self.port}: {self._startup_error}") \
                from self._startup_error
        api.base_url = self.url
        node.committer.on_commit_threadsafe.append(self._on_commit)
        bridge_file = Path(node.home.path) / BRIDGE_FILE
        try:
            if self.config.write_bridge_file:
                await trio.to_thread.run_sync(self._publish_cli_token, node, bridge_file, audit)
            async with trio.open_nursery() as tasks:
                self._tasks = tasks
                api.state = "ok"
                log.info("bridge serving on %s", self.url)
                task_status.started(self)
                await self._flush_loop(node, audit)
        finally:
            self._tasks = None  # from here on a crossing into trio is answered 503
            with trio.CancelScope(shield=True):
                await self._shutdown(node, thread, audit, bridge_file)

    async def _flush_loop(self, node: Any, audit: AuditBuffer) -> None:
        last_purge = time.monotonic()
        while True:
            with trio.move_on_after(self.config.audit_flush_s):
                await self._wake.wait()
            self._wake = trio.Event()
            while len(audit):
                notes = audit.take(self.config.audit_batch)
                try:
                    await node.submit(notes)
                except RegistryError as exc:
                    audit.put_back(notes)
                    log.warning("audit flush failed (%s); will retry", exc.message)
                    break
                if len(audit) < self.config.audit_batch:
                    break
            if time.monotonic() - last_purge > PURGE_EVERY_S:
                last_purge = time.monotonic()
                await trio.to_thread.run_sync(lambda: idempotency.purge_expired(node.store, now_ms=_now_ms()))

    def _wake_flusher(self) -> None:
        self._wake.set()

    async def _shutdown(self, node: Any, thread: threading.Thread, audit: AuditBuffer, bridge_file: Path) -> None:
        assert self.api is not None
        self.api.state = "stopping"
        if self._on_commit in node.committer.on_commit_threadsafe:
            node.committer.on_commit_threadsafe.remove(self._on_commit)
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        # In-flight requests get the grace period (aiohttp's shutdown
        # timeout); a write still queued when the committer stops is
        # answered 503 by it, so the loop never waits on a lost write.
        self._closing = True
        await trio.to_thread.run_sync(thread.join)
        if self.cli_token is not None:  # before the last flush, which audits it
            try:
                revoked = tokens.revoke(node.store, self.cli_token.split(".")[0][len(tokens.PREFIX):])
                audit.note("delete", "node", f"tokens/{revoked.id}", "the node's own CLI token revoked: the "
                           "node stops", required=False)
            except RegistryError:
                log.exception("could not revoke the CLI token")
        await self._final_audit_flush(node, audit)
        bridge_file.unlink(missing_ok=True)
        log.info("bridge stopped")

    async def _final_audit_flush(self, node: Any, audit: AuditBuffer) -> None:
        """The last notes, once no request can add more.

        The committer is normally cancelled together with us. A stopping
        committer finishes the batch it is running and takes nothing new
        (Unavailable); once its writer thread has exited it sets ``closed``,
        and from then on the engine is ours to call directly (the engine is
        single-writer: never call it beside a live writer thread)."""
        notes = audit.take(len(audit))
        if not notes:
            return
        # 10 s: far above the longest batch (2,000 ops, ~120 ms) the committer may still be finishing.
        with trio.move_on_after(10.0):
            try:
                await node.submit(notes)
                return
            except Unavailable:
                await node.committer.closed.wait()
                node.engine.execute(notes)
                return
        log.error("the committer neither took nor refused the last %d audit notes; they are lost", len(notes))

    def _publish_cli_token(self, node: Any, path: Path, audit: AuditBuffer) -> None:
        # Tokens of a previous run that died without cleaning up are revoked:
        # only the current bridge.json may hold a live CLI token.
        for old in tokens.list_all(node.store):
            if old.created_by == CLI_TOKEN_CREATOR and old.revoked_at is None:
                tokens.revoke(node.store, old.id)
                audit.note("delete", "node", f"tokens/{old.id}", "a CLI token a stopped run left live revoked",
                           required=False)
        created, secret = tokens.create(node.store, role="admin", name="cli", created_by=CLI_TOKEN_CREATOR)
        audit.note("create", "node", f"tokens/{created.id}", "the node's own CLI token (bridge.json), role admin",
                   required=False)
        self.cli_token = secret
        if self.api is not None:
            # By id, not by created_by: an earlier run's CLI token was just
            # revoked above, so this one is the only live one, and the id names it exactly.
            self.api.local_token_id = created.id
        write_text_durably(path, json.dumps({"url": self.url, "token": secret, "token_id": created.id,
                                             "pid": os.getpid()}), secret=True)

    def _on_commit(self, committed: Committed) -> None:
        """Committer hook (its writer thread): wake the loop's feed waiters."""
        loop, api = self._loop, self.api
        if committed.feed_seqs and loop is not None and api is not None:
            try:
                loop.call_soon_threadsafe(api.hub.advance, committed.feed_seqs[-1])
            except RuntimeError:
                pass  # loop already closed: nobody is waiting

    # ------------------------------------------------------------------ loop side

    async def _submit_from_loop(self, ops: Sequence[Operation]) -> list[Outcome]:
        """Hand the write straight to the committer's writer thread, which
        settles our future with ``call_soon_threadsafe`` once the batch
        holding it is durable: one thread wake-up each way, no trio hop."""
        loop, api = self._loop, self.api
        assert loop is not None and api is not None
        if self._closing or self._node.committer is None:
            raise Unavailable("the bridge is stopping")
        started = time.perf_counter()
        future: asyncio.Future[tuple[list[Outcome], float]] = loop.create_future()

        def settle_on_loop(outcomes: list[Outcome] | None, error: BaseException | None, commit_s: float) -> None:
            if future.done():
                return  # the request was cancelled (client gone, shutdown)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result((outcomes, commit_s))  # type: ignore[arg-type]

        def done(outcomes: list[Outcome] | None, error: BaseException | None, commit_s: float) -> None:
            try:
                loop.call_soon_threadsafe(settle_on_loop, outcomes, error, commit_s)
            except RuntimeError:
                pass  # the loop closed meanwhile: nobody awaits the answer

        self._node.committer.submit_threadsafe(ops, done)
        outcomes, commit_s = await future
        total = time.perf_counter() - started
        api.metrics.write_seconds.observe(total)
        api.metrics.commit_seconds.observe(commit_s)
        api.metrics.crossing_seconds.observe(max(0.0, total - commit_s))
        return outcomes

    async def _resolve_from_loop(self, name: str, fresh: bool) -> dict[str, Any]:
        """The DHT's answer for a registry name (node/dht.py), from the loop."""
        answer: dict[str, Any] = await self._run_in_trio(self._resolve, name, fresh)
        return answer

    async def _resolve(self, name: str, fresh: bool) -> dict[str, Any]:
        """Trio side: the directory is looked up here, on the thread that sets it."""
        federation = self._node.component("federation")
        directory = federation.directory if federation is not None else None
        if directory is None:
            raise Disabled("this node runs no DHT, so it cannot resolve registries: it was started with "
                           "--no-p2p or --no-dht, or its federation is still starting")
        return await directory.resolve(name, fresh=fresh)

    async def _read_remote_from_loop(self, name: str, record_id: str | None) -> dict[str, Any]:
        """The verified read of another federation's public registry (node/remote_read.py), from the loop."""
        answer: dict[str, Any] = await self._run_in_trio(self._read_remote, name, record_id)
        return answer

    async def _read_remote(self, name: str, record_id: str | None) -> dict[str, Any]:
        """Trio side: the reader is looked up here, on the thread that sets it."""
        federation = self._node.component("federation")
        reader = federation.reader if federation is not None else None
        if reader is None:
            raise Disabled("this node runs no DHT, so it cannot read registries of other federations: it was "
                           "started with --no-p2p or --no-dht, or its federation is still starting")
        return await reader.read(name, record_id=record_id)

    async def _federated_search_from_loop(self, body: Any, scope: tuple[str, ...] | None) -> dict[str, Any]:
        """A query answered by this node and its peers, verified (node/federated_search.py), from the loop."""
        answer: dict[str, Any] = await self._run_in_trio(federated_search, self._node, body, scope)
        return answer

    def _following(self) -> Any:
        """The node's ``Follows`` (node/follow.py), or None when it runs no DHT
        (a plain attribute read: safe from any thread)."""
        federation = self._node.component("federation")
        return federation.follows if federation is not None else None

    def _no_follows(self) -> Disabled:
        # Disabled, as resolve and remote reads answer: Unavailable told
        # clients to retry (Retry-After: 1), for as long as the node runs.
        return Disabled("this node runs no DHT, so it follows no registries of other federations: it was "
                        "started with --no-p2p or --no-dht, or its federation is still starting")

    async def _fetch_blob_from_loop(self, cid: bytes) -> dict[str, Any]:
        """Fetch a blob this node lacks from the peers that hold it (node/blob_exchange.py), from the loop."""
        answer: dict[str, Any] = await self._run_in_trio(self._fetch_blob, cid)
        return answer

    async def _fetch_blob(self, cid: bytes) -> dict[str, Any]:
        federation = self._node.component("federation") if self._node is not None else None
        if federation is None or federation.blobs is None:
            raise Disabled("this node runs no federation (--no-p2p): it has no peers to fetch a blob from")
        return await federation.blobs.fetch(cid)  # type: ignore[no-any-return]

    async def _follow_from_loop(self, name: str) -> dict[str, Any]:
        """Follow a public registry of another federation (its first sync, verified), from the loop."""
        answer: dict[str, Any] = await self._run_in_trio(self._follow, name)
        return answer

    async def _follow(self, name: str) -> dict[str, Any]:
        follows = self._following()
        if follows is None:
            raise self._no_follows()
        return await follows.follow(name)

    async def _unfollow_from_loop(self, name: str) -> dict[str, Any]:
        """Stop following a registry and delete its copy, from the loop."""
        answer: dict[str, Any] = await self._run_in_trio(self._unfollow, name)
        return answer

    async def _unfollow(self, name: str) -> dict[str, Any]:
        follows = self._following()
        if follows is None:
            raise self._no_follows()
        return await follows.unfollow(name)

    def _follows(self) -> list[dict[str, Any]]:
        """Every followed registry's status, in name order (an executor
        thread: each status counts its copy's records, a scan).

        Not ``Follows.list``, which reads ``Follows.mirrors`` while trio's
        thread may add or drop one (a follow or an unfollow), and would
        then fail on a missing key or a closed copy: this copies the dict
        first (``_copied``: the copy may meet a resize) and leaves out a
        copy unfollowed meanwhile."""
        follows = self._following()
        if follows is None:
            raise self._no_follows()
        out = []
        for _, mirror in sorted(_copied(lambda: dict(follows.mirrors)).items()):
            try:
                out.append(mirror.describe())
            except NotFound:  # unfollowed while we read: no longer followed
                continue
        return out

    def _followed(self, name: str) -> Any:
        """The followed copy of ``name`` (a node/follow.py ``Mirror``), or None (any thread)."""
        follows = self._following()
        return follows.mirror(name) if follows is not None else None

    # ---- the operator's peer controls (node/federation.py), from the loop; each runs on trio

    def _running_federation(self) -> Any:
        """The node's federation once its host and peer table are up (trio's thread)."""
        federation = self._node.component("federation")
        if federation is None or federation.peers is None or federation.host is None:
            raise Disabled("this node runs no federation, so it has no peers to list, deny or allow: it was "
                              "started with --no-p2p, or its federation is still starting")
        return federation

    async def _peer_status_from_loop(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self._run_in_trio(self._peer_status)
        return answer

    async def _peer_status(self) -> dict[str, Any]:
        federation = self._running_federation()
        return {"peer_id": federation.host.peer_id, "connected": sorted(federation.host.connected_peers()),
                "denied": sorted(federation.peers.denied_ids())}

    async def _deny_peers_from_loop(self, peers: list[str]) -> dict[str, Any]:
        answer: dict[str, Any] = await self._run_in_trio(self._deny_peers, peers)
        return answer

    async def _deny_peers(self, peers: list[str]) -> dict[str, Any]:
        """Deny, then answer with who is still connected: a denied peer is not
        (``Federation.deny`` returns once each one is disconnected)."""
        federation = self._running_federation()
        peers = _checked_peer_ids(peers, own=federation.host.peer_id)
        await federation.deny(peers)
        return {"denied": peers, "connected": sorted(federation.host.connected_peers())}

    async def _allow_peers_from_loop(self, peers: list[str]) -> dict[str, Any]:
        answer: dict[str, Any] = await self._run_in_trio(self._allow_peers, peers)
        return answer

    async def _allow_peers(self, peers: list[str]) -> dict[str, Any]:
        federation = self._running_federation()
        peers = _checked_peer_ids(peers)
        federation.allow(peers)  # wakes the dial loop: allowed peers with an address are dialed at once
        return {"allowed": peers}

    async def _run_in_trio(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``await fn(*args)`` as a task of the bridge's trio nursery, its
        outcome handed back to this loop.

        Why a task and not ``trio.from_thread.run`` in ``run_in_executor``:
        that holds an executor thread for the whole call, and a resolve may
        take two DHT timeouts (the value, then its providers: 10 s each,
        node/dht.py); a burst of slow lookups would hold every one of the
        ``write_threads`` threads that the idempotency writes also need.
        A task holds no thread (one wake-up each way, as a write's
        hand-off) and is a child of the bridge, so it ends with it (its
        handler then answers 503). A handler cancelled on the loop cancels
        its task too; aiohttp does not cancel a handler whose client went
        away, so such a lookup ends by its own timeouts (node/dht.py)."""
        loop, token = self._loop, self._node.trio_token
        assert loop is not None and token is not None
        if self._closing:
            raise Unavailable("the bridge is stopping")
        future: asyncio.Future[Any] = loop.create_future()
        scope = trio.CancelScope()  # an unbound scope: cancelled, below, from trio's thread only

        def settle_on_loop(result: Any, error: BaseException | None) -> None:
            if future.done():
                return  # the request was cancelled meanwhile
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def send(result: Any, error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(settle_on_loop, result, error)
            except RuntimeError:
                pass  # the loop closed meanwhile: nobody awaits the answer

        async def task() -> None:
            try:
                with scope:
                    send(await fn(*args), None)
                    return
                send(None, Unavailable("the request was cancelled"))  # our scope caught it: nobody waits
            except Exception as exc:  # noqa: BLE001 - the handler raises it: typed -> its status, else 500 + log
                send(None, exc)
            except BaseException:
                send(None, Unavailable("the node is stopping"))
                raise  # trio.Cancelled: the bridge's nursery is being cancelled

        def start() -> None:
            """On trio's thread (a run_sync_soon callback: it must not raise)."""
            tasks = self._tasks
            if tasks is None:
                send(None, Unavailable("the bridge is stopping"))
                return
            try:
                tasks.start_soon(task)
            except RuntimeError:  # the nursery closed: the bridge is stopping
                send(None, Unavailable("the bridge is stopping"))

        try:
            token.run_sync_soon(start)
        except trio.RunFinishedError:
            raise Unavailable("the node has stopped") from None
        try:
            return await future
        except asyncio.CancelledError:
            try:
                token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass
            raise

    def _thread_main(self, api: Api) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.set_default_executor(ThreadPoolExecutor(self.config.write_threads, thread_name_prefix="rgrid-bridge-io"))
        try:
            try:
                loop.run_until_complete(self._start(api))
            except BaseException as exc:  # reported to the trio side, which raises it
                self._startup_error = exc
                return
            finally:
                self._ready.set()
            loop.run_until_complete(self._serve_until_stopped())
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _start(self, api: Api) -> None:
        self._stop = asyncio.Event()
        self._runner = web.AppRunner(api.build(), access_log=None, handle_signals=False,
                                     shutdown_timeout=self.config.shutdown_grace_s,
                                     logger=ServerLog(on_malformed=api.metrics.malformed.inc))
        await self._runner.setup()
        _cap_connections(self._runner.server, _connection_cap(self.config.max_connections), api.metrics)
        # backlog 1024: wrk and bursty clients open many connections at once;
        # the kernel caps it at net.core.somaxconn anyway.
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _serve_until_stopped(self) -> None:
        assert self._stop is not None and self._runner is not None and self.api is not None
        await self._stop.wait()
        # aiohttp lets running handlers finish within the grace, then cancels
        # them and waits for each up to a second grace: a handler blocked on
        # a client that reads nothing held the stop for twice the grace, and
        # a WebSocket whose client ignores the close for ten seconds.
        cleanup = asyncio.ensure_future(self._runner.cleanup())
        done, _ = await asyncio.wait({cleanup}, timeout=self.config.shutdown_grace_s)
        if not done:
            cut = self.api.cut_running()
            if cut:
                log.info("closed %d connection(s) still answering after the %.1f s shutdown grace",
                         cut, self.config.shutdown_grace_s)
        await cleanup

    def _snapshot(self) -> dict[str, Any]:
        """What /metrics reads of the node, on the scraping thread (see _copied)."""
        node, api = self._node, self.api
        federation = node.component("federation")  # None when the node runs without p2p
        return {"store": node.store.stats(), "feed_head": node.registry.feed_head(),
                "engine": _copied(lambda: dict(node.engine.metrics)),
                "federation": _copied(federation.stats) if federation is not None else None,
                "audit_pending": len(api.audit) if api else 0, "audit_dropped": api.audit.dropped if api else 0}


# A scrape copies counters that another thread keeps adding keys to (the
# engine's on the committer's writer thread, the federation's on trio's), so
# the copy may meet "dictionary changed size during iteration". A copy takes
# microseconds and new keys are rare (a counter's first increment), so a few
# attempts suffice; after them the scrape goes without these figures rather
# than fail.
COPY_ATTEMPTS = 5


def _copied(read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    for _ in range(COPY_ATTEMPTS):
        try:
            return read()
        except RuntimeError:
            continue
    return {}


def _checked_peer_ids(peers: list[str], *, own: str | None = None) -> list[str]:
    """The body's peer IDs, each once, in order; a ValidationError whose
    details name every bad one by JSON pointer (``/peers/3``): not a libp2p
    peer ID, or (``own``) this node's own, which it cannot be cut off from."""
    # libp2p's parser: loaded already, since a federation runs (node/federation.py imports it).
    from registrygrid.node.multiaddrs import peer_id_problem

    details = []
    for i, peer in enumerate(peers):
        problem = "this node's own peer ID" if peer == own else peer_id_problem(peer)
        if problem is not None:
            details.append({"path": f"/peers/{i}", "message": problem})
    if details:
        raise ValidationError(f"{details[0]['path']}: {details[0]['message']}", details=details[:100])
    return list(dict.fromkeys(peers))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s")
_TOO_MANY = json.dumps({"error": {"code": "unavailable", "message": "this node holds as many HTTP connections as "
                                  "it keeps open; try again shortly"}}).encode()


def _connection_cap(configured: int) -> int:
    """``configured``, at most 3/4 of the process's open-file limit (the
    rest is the node's own: LMDB, libp2p, the search index)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return configured if soft == resource.RLIM_INFINITY else max(1, min(configured, soft * 3 // 4))


def _cap_connections(server: Any, cap: int, metrics: Any) -> None:
    """Past ``cap`` open connections, a new one is answered 503 and closed
    before it is read (aiohttp has no cap of its own: its Server counts the
    connections it keeps, and forgets one it never took)."""
    made = server.connection_made

    def connection_made(handler: Any, transport: Any) -> None:
        if len(server.connections) >= cap:
            metrics.connections_refused.inc()
            transport.write(_REFUSED % (len(_TOO_MANY), _TOO_MANY))
            transport.close()
            return
        made(handler, transport)

    server.connection_made = connection_made
