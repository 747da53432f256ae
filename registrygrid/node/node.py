"""The running node: one trio nursery that owns everything.

``Node.run`` takes the home's lock, opens the store and the engine, starts
the group committer, then the optional components (the HTTP bridge, the
libp2p federation), each as a task in the node's nursery. Cancelling the
nursery (Ctrl-C, SIGTERM, a test's cancel scope) stops them all; a batch
already committing finishes first, so no acknowledged write is lost.

Components are objects with ``async def run(node, *, task_status)``; they
call ``task_status.started()`` once they serve.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from registrygrid.blobs.erasure import purge_blobs, still_held
from registrygrid.blobs.service import Assets
from registrygrid.engine.engine import Engine
from registrygrid.engine.erasure import ERASURES_REGISTRY
from registrygrid.engine.ops import (
    AuditNote,
    Committed,
    ErasedRecord,
    ExpireParked,
    Operation,
    Outcome,
)
from registrygrid.engine.ingest import PARKED_TTL_MS
from registrygrid.errors import RegistryError
from registrygrid.home import Home
from registrygrid.node.committer import GroupCommitter
from registrygrid.sdk import LocalRegistry
from registrygrid.storage.store import Store

log = logging.getLogger("registrygrid.node")


class Component(Protocol):
    name: str

    async def run(self, node: Node, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None: ...


class FeedSignal:
    """The feed head, advanced on the committer's writer thread after each
    commit, and a wake-up for trio tasks waiting for it to pass a sequence
    number. Trio is woken only while a task waits: most commits have no
    waiter, and a wake-up per commit was measurable on a lone write."""

    def __init__(self, head: int = 0) -> None:
        self.head = head
        self._event = trio.Event()
        self._waiters = 0
        self._token: trio.lowlevel.TrioToken | None = None

    def bind(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token

    def advance(self, head: int) -> None:
        """Any thread."""
        if head <= self.head:
            return
        self.head = head
        # Read after the head is written: a waiter counts itself before it
        # reads the head, so either it sees the new head or we see it.
        if self._waiters and self._token is not None:
            try:
                self._token.run_sync_soon(self._wake)
            except trio.RunFinishedError:
                pass  # trio is gone, and its waiters with it

    def _wake(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_beyond(self, seq: int) -> int:
        self._waiters += 1
        try:
            while self.head <= seq:
                await self._event.wait()
        finally:
            self._waiters -= 1
        return self.head


def _record_reader(registry: LocalRegistry) -> Callable[[str, str], dict[str, Any] | None]:
    """(registry, id) -> a record's fields, or None (the asset checks' policy record)."""
    def read(name: str, record_id: str) -> dict[str, Any] | None:
        try:
            return registry.get(name, record_id)["fields"]  # type: ignore[no-any-return]
        except RegistryError:
            return None
    return read


# Expired uploads are swept this often: a session's TTL is a day, so ten
# minutes late costs nothing, and a sweep reads every session.
SWEEP_UPLOADS_S = 600.0
# Remote changes parked past their TTL (engine/ingest.py PARKED_TTL_MS) are
# dropped this often, and once at start: a node stopped for a day holds
# nothing its peers would not send again.
SWEEP_PARKED_S = 300.0


class Node:
    def __init__(self, home: Home, components: Sequence[Component] = ()) -> None:
        self.home = home
        self.components = list(components)
        self.registry: LocalRegistry | None = None
        self.committer: GroupCommitter | None = None
        self.feed = FeedSignal()
        self.nursery: trio.Nursery | None = None
        self.trio_token: trio.lowlevel.TrioToken | None = None
        self.started = trio.Event()
        # The node's asset content (blobs/service.py), opened with the store:
        # the bridge serves it, the federation exchanges it with peers.
        self.assets: Any = None
        # Records erased by a commit whose notices name blobs: purged from the
        # object store after the commit, outside LMDB (_purge_erased_blobs).
        self._erased_send, self._erased_receive = trio.open_memory_channel[ErasedRecord](float("inf"))

    @property
    def engine(self) -> Engine:
        assert self.registry is not None, "node not started"
        return self.registry.engine

    @property
    def store(self) -> Store:
        assert self.registry is not None, "node not started"
        return self.registry.store

    async def submit(self, ops: Sequence[Operation]) -> list[Outcome]:
        """The node's write entry point: group-committed, durable on return."""
        assert self.committer is not None, "node not started"
        return await self.committer.submit(ops)

    def component(self, name: str) -> Any:
        for component in self.components:
            if component.name == name:
                return component
        return None

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
                  handle_signals: bool = False) -> None:
        self.home.require()
        self.registry = LocalRegistry.open_home(self.home)  # takes the lock: one node per home
        if self.engine.recovering is not None:
            log.warning("this node's store lacks changes its key signed (made anew, or restored from an older "
                        "backup): it syncs but signs nothing until `rgrid store recovered` (node stopped); writes "
                        "are refused meanwhile")
        self.trio_token = trio.lowlevel.current_trio_token()
        try:
            self.assets = Assets.open(self.home, self.store, _record_reader(self.registry))
            self.committer = GroupCommitter(self.engine)
            self.feed.bind(self.trio_token)
            self.committer.on_commit_threadsafe.append(self._on_commit)
            self.committer.on_commit.append(self._on_erased)
            self.feed.advance(self.registry.feed_head())
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                await nursery.start(self.committer.run)
                nursery.start_soon(self._keep_assets)
                nursery.start_soon(self._purge_erased_blobs)
                nursery.start_soon(self._expire_parked)
                for component in self.components:
                    await nursery.start(component.run, self)
                    log.info("%s started", component.name)
                if handle_signals:
                    nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                self.started.set()
                task_status.started(self)
        finally:
            self.nursery = None
            with trio.CancelScope(shield=True):
                self.registry.close()
                log.info("node stopped; store closed")

    async def _keep_assets(self) -> None:
        """Asset housekeeping: staging left by a crash, at start (no put runs
        yet); upload sessions past their TTL, with their parts, every
        ``SWEEP_UPLOADS_S``."""
        removed = await trio.to_thread.run_sync(self.assets.blobs.clear_staging)
        if removed:
            log.info("removed %d staged objects a crash left behind", removed)
        # A few requests to the bucket (and their retries if it is down): on
        # a thread, so they never hold up the node's start.
        await trio.to_thread.run_sync(self.assets.apply_lifecycle)
        while True:
            swept = await trio.to_thread.run_sync(self.assets.uploads.sweep)
            if swept:
                log.info("swept %d expired uploads", swept)
            await trio.sleep(SWEEP_UPLOADS_S)

    async def _expire_parked(self) -> None:
        """Drop remote changes that waited past their TTL for dependencies
        that never came (engine/ingest.py ``_expire_parked``)."""
        while True:
            outcome, = await self.submit([ExpireParked(PARKED_TTL_MS)])
            if isinstance(outcome, int) and outcome:
                log.info("dropped %d remote changes parked over %d s: what they waited for never came; "
                         "peers send them again while their chains lack them", outcome, PARKED_TTL_MS // 1000)
            await trio.sleep(SWEEP_PARKED_S)

    def _on_erased(self, committed: Committed) -> None:
        """Committer hook (trio thread): queue the blobs erased records name."""
        for erased in committed.erased:
            if erased.blobs:
                self._erased_send.send_nowait(erased)

    async def _purge_erased_blobs(self) -> None:
        """Purge the blobs of erased records, each outcome audited: first
        what a stop between an erasure's commit and its purge left, then
        each erasure as it is committed. A legal hold here keeps the bytes."""
        for erased in await trio.to_thread.run_sync(self._unpurged_erasures):
            await self._purge(erased)
        async for erased in self._erased_receive:
            await self._purge(erased)

    def _unpurged_erasures(self) -> list[ErasedRecord]:
        assert self.registry is not None
        out = []
        for item in self.registry.erasures():
            if item["state"] != "erased":
                continue
            try:
                notice = self.registry.get(ERASURES_REGISTRY, item["notice"])
            except RegistryError:
                continue
            held = still_held(self.assets.blobs, notice["fields"].get("blobs") or [])
            if held:
                out.append(ErasedRecord(item["registry"], item["record"], item["notice"], tuple(held)))
        return out

    async def _purge(self, erased: ErasedRecord) -> None:
        outcomes = await trio.to_thread.run_sync(purge_blobs, self.assets.blobs, erased.blobs)
        notes = [AuditNote("erase", "node", f"blobs/{o.cid}",
                           f"erasure {erased.notice} of {erased.registry}/{erased.record}: blob {o.outcome}"
                           + (f" ({o.reason})" if o.reason else ""))
                 for o in outcomes if o.outcome != "absent"]
        if notes:
            await self.submit(notes)
        for o in outcomes:
            if o.outcome in ("held", "failed"):
                log.warning("blob %s of erased %s/%s %s: %s", o.cid, erased.registry, erased.record, o.outcome,
                            o.reason)

    def stop(self) -> None:
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def _on_commit(self, committed: Committed) -> None:
        """Committer hook, on its writer thread."""
        if committed.feed_seqs:
            self.feed.advance(committed.feed_seqs[-1])

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s; stopping", signal.Signals(signum).name)
                scope.cancel()
                return


