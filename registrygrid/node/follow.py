"""Following public registries of other federations: a verified local copy
kept up to date from the registry's providers.

``rgrid registry follow NAME`` asks this node to replicate a public
registry it does not host. The copy lives in its own LMDB store under
``HOME/follows/<name>/`` (a *mirror*), never in the node's own store:
the mirror's engine judges every change by the owning federation's trust
statements, which come with the registry, so a foreign federation's
members gain no standing in this node's federation, and this
federation's policies never judge theirs.

The first sync fills a scratch store (``.incoming-*``), checks it as a
one-off read does (node/remote_read.py: every signature, chain, ownership
and schema, and the descriptor against the one the owner signed into the
DHT), and only then moves it into place: a lying provider leaves nothing
behind. Later syncs ask a provider for what the mirror lacks (its version
vectors) every ``interval`` seconds, and whenever asked; each change is
checked by the mirror's engine as it applies, so a forged one is refused
there, the provider counted as lying (``follow.lying_provider``) and the
next one asked. A registry gets no gossip from outside its federation, so
a follower lags its source by at most about one interval.

Reads of a followed registry (``Mirror.use``) run on the bridge's thread
while syncs write on worker threads; LMDB allows both. An unfollow waits
for reads in progress before it closes and deletes the mirror.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from registrygrid.engine import registries as regs
from registrygrid.errors import (
    Conflict,
    NotFound,
    PolicyDenied,
    RegistryError,
    Unavailable,
    ValidationError,
)
from registrygrid.files import read_json
from registrygrid.home import write_json_durably
from registrygrid.identity.keys import KeyPair
from registrygrid.node.remote_read import check_descriptor, fetch_into, not_yet_served
from registrygrid.protocol import names
from registrygrid.protocol.hlc import wall_clock_ms
from registrygrid.sdk import LocalRegistry

log = logging.getLogger(__name__)

# How often a followed registry asks its providers for news: the lag of a
# follower behind its source, since no gossip crosses federations. Each
# sync sends the mirror's version vectors and gets only what is new.
FOLLOW_INTERVAL_S = 30.0
# A node follows at most this many registries: each is an LMDB environment
# (a memory map and file handles) and a sync task.
MAX_FOLLOWS = 64
_STATE_FILE = "follow.json"


@dataclass
class FollowStatus:
    registry: str
    owner: str
    followed_at: int  # ms
    last_sync_at: int | None = None  # ms, of the last sync that succeeded
    last_provider: str | None = None
    last_error: str | None = None
    synced_changes: int = 0  # changes applied since the node started
    lying_providers: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Mirror:
    """One followed registry's store, and its readers."""

    name: str
    path: Path
    registry: LocalRegistry
    status: FollowStatus
    wake: trio.Event = field(default_factory=trio.Event)
    lock: trio.Lock | None = None  # set when its sync task starts (trio's thread)
    _users: int = 0
    _closed: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @contextmanager
    def use(self) -> Iterator[LocalRegistry]:
        """The mirror's registry, kept open while the caller uses it (any thread)."""
        with self._cond:
            if self._closed:
                raise NotFound(f"{self.name} is no longer followed here")
            self._users += 1
        try:
            yield self.registry
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    def close(self) -> None:
        """Close once no reader uses it (a worker thread: it may wait)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.wait_for(lambda: self._users == 0)
        self.registry.close()

    def describe(self) -> dict[str, Any]:
        """Its status, with the live records it holds and its descriptor."""
        out = self.status.to_json()
        with self.use() as registry:
            try:
                desc = registry.describe_registry(self.name)
            except NotFound:  # a mirror always holds its descriptor; a damaged one shows as empty
                desc = {"records": 0}
        out["records"] = desc.pop("records")
        out["descriptor"] = desc
        return out


class Follows:
    """The registries this node follows, each synced by a task of its own."""

    def __init__(self, root: Path, host: Any, directory: Any, key: KeyPair, *, hosted: Callable[[str], bool],
                 interval: float = FOLLOW_INTERVAL_S, metrics: Counter[str] | None = None) -> None:
        self.root = root
        self.hosted = hosted  # whether this node's own store holds a registry of that name
        self.host = host
        self.directory = directory
        self.key = key
        self.interval = interval
        self.metrics: Counter[str] = metrics if metrics is not None else Counter()
        self.mirrors: dict[str, Mirror] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._starting: set[str] = set()  # names whose first sync runs
        # Names whose unfollow waits for readers and deletes the copy: a
        # follow of one meanwhile would put its new copy where the deletion
        # is about to go.
        self._ending: set[str] = set()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Reopen the mirrors a previous run followed and keep them synced."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for mirror in await trio.to_thread.run_sync(self._reopen):
                    self._start(mirror)
                task_status.started(self)
                await trio.sleep_forever()  # the sync tasks come and go: the nursery stays
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                for mirror in list(self.mirrors.values()):
                    await trio.to_thread.run_sync(mirror.close)
                self.mirrors.clear()

    # ------------------------------------------------------------ reads

    def mirror(self, name: str) -> Mirror | None:
        """The followed copy of ``name``, if this node follows it (any thread)."""
        return self.mirrors.get(name)

    def list(self) -> list[dict[str, Any]]:
        """The status of each followed registry (any thread; counts records:
        a scan of each copy). One unfollowed meanwhile is left out."""
        out = []
        for _, mirror in sorted(self.mirrors.items()):
            try:
                out.append(mirror.describe())
            except NotFound:
                continue
        return out

    # ------------------------------------------------------------ follow, unfollow

    async def follow(self, name: str) -> dict[str, Any]:
        """Follow ``name``: the first sync, verified, before this returns; or,
        if it is followed already, a sync now. Its status either way."""
        name = names.registry_name(name)
        if self._nursery is None:
            raise Unavailable("this node's follows are not running (it is starting or stopping)")
        mirror = self.mirrors.get(name)
        if mirror is not None:
            await self.sync(mirror)
            if mirror.status.last_error is not None and mirror.status.last_sync_at is None:
                raise Unavailable(mirror.status.last_error)
            return await trio.to_thread.run_sync(mirror.describe)
        if name in self._starting:
            raise Conflict(f"{name} is being followed already: its first sync is running")
        if name in self._ending:
            raise Conflict(f"{name} is being unfollowed: its copy is being deleted; follow it again once that ends")
        if await trio.to_thread.run_sync(self.hosted, name):
            raise Conflict(f"this node hosts {name} in its own federation: it replicates already")
        if len(self.mirrors) + len(self._starting) >= MAX_FOLLOWS:
            raise Conflict(f"this node follows {MAX_FOLLOWS} registries already; unfollow one first")
        self._starting.add(name)
        try:
            mirror = await self._first_sync(name)
        finally:
            self._starting.discard(name)
        if self._nursery is None:  # the node stopped meanwhile: the copy stays for the next run
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(mirror.close)
            raise Unavailable("the node stopped during the first sync; the copy is kept for its next start")
        self._start(mirror)
        self.metrics["follow.followed"] += 1
        return await trio.to_thread.run_sync(mirror.describe)

    async def unfollow(self, name: str) -> dict[str, Any]:
        """Stop following ``name`` and delete its copy."""
        name = names.registry_name(name)
        if name in self._starting:
            raise Conflict(f"{name} is not followed yet: its first sync is running; unfollow it once that ends")
        mirror = self.mirrors.pop(name, None)
        if mirror is None:
            raise NotFound(f"this node does not follow {name}")
        scope = self._scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        self._ending.add(name)
        try:
            with trio.CancelScope(shield=True):  # half a deletion would leave a copy nobody follows
                await trio.to_thread.run_sync(mirror.close)
                await trio.to_thread.run_sync(partial(shutil.rmtree, mirror.path, ignore_errors=True))
        finally:
            self._ending.discard(name)
        self.metrics["follow.unfollowed"] += 1
        return {"registry": name, "unfollowed": True}

    async def _first_sync(self, name: str) -> Mirror:
        resolution = await self.directory.resolve(name)
        not_yet_served(resolution)
        desc = regs.descriptor_from_record({"id": name, "owner": resolution["owner"],
                                            "fields": resolution["descriptor"]})
        if desc.replication != "public":
            raise PolicyDenied(f"{name} is not public: only members of its federation may hold it")
        refusals: list[str] = []
        for provider in resolution["providers"]:
            peer = provider["peer_id"]
            if peer == self.host.peer_id:
                continue
            incoming = await trio.to_thread.run_sync(self._scratch_dir)
            scratch = await trio.to_thread.run_sync(LocalRegistry.open_path, incoming, self.key)
            kept = False
            try:
                fetched = await fetch_into(self.host, scratch, name, peer, provider["addrs"])
                applied = fetched.applied
                check_descriptor(scratch, resolution)
                kept = True
            except RegistryError as exc:
                refusals.append(self._refused(name, peer, exc))
                continue
            finally:
                with trio.CancelScope(shield=True):  # cancelled or refused: nothing stays behind
                    await trio.to_thread.run_sync(scratch.close)
                    if not kept:
                        await trio.to_thread.run_sync(partial(shutil.rmtree, incoming, ignore_errors=True))
            now = wall_clock_ms()
            status = FollowStatus(name, resolution["owner"], now, now, peer, None, applied)
            final = await trio.to_thread.run_sync(self._keep, incoming, status)
            registry = await trio.to_thread.run_sync(LocalRegistry.open_path, final, self.key)
            mirror = Mirror(name, final, registry, status)
            if not fetched.complete:  # larger than one sync's pages: the next goes on at once
                self.metrics["follow.partial"] += 1
                mirror.wake.set()
            return mirror
        raise Unavailable(f"no provider of {name} gave a verifiable answer"
                          + (f" ({'; '.join(refusals)[:500]})" if refusals else " (none is known)"),
                          details={"refusals": refusals})

    def _scratch_dir(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))

    def _keep(self, incoming: Path, status: FollowStatus) -> Path:
        """Move a verified scratch store into place, its state file durable
        first; a stale directory of that name (a copy a crash half deleted,
        or one whose state file did not read) is replaced."""
        write_json_durably(incoming / _STATE_FILE, {"registry": status.registry, "owner": status.owner,
                                                      "followed_at": status.followed_at})
        final = self.root / status.registry
        if final.exists():
            shutil.rmtree(final)
        os.replace(incoming, final)  # same filesystem: the copy appears whole or not at all
        return final

    def _refused(self, name: str, peer: str, exc: RegistryError) -> str:
        if isinstance(exc, ValidationError):  # its answer failed a check: lying or broken
            self.metrics["follow.lying_provider"] += 1
            log.warning("follow %s: refused %s's answer: %s", name, peer, exc.message)
            return f"{peer}: refused: {exc.message}"
        self.metrics["follow.failed"] += 1
        return f"{peer}: {exc.code}: {exc.message}"

    # ------------------------------------------------------------ syncing

    def _start(self, mirror: Mirror) -> None:
        assert self._nursery is not None, "follows not running"  # callers check
        mirror.lock = trio.Lock()
        self.mirrors[mirror.name] = mirror
        scope = trio.CancelScope()
        self._scopes[mirror.name] = scope
        self._nursery.start_soon(self._sync_loop, mirror, scope)

    async def _sync_loop(self, mirror: Mirror, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                with trio.move_on_after(self.interval):
                    await mirror.wake.wait()
                mirror.wake = trio.Event()
                await self.sync(mirror)

    async def sync(self, mirror: Mirror) -> None:
        """Bring ``mirror`` up to date from one of its providers; the outcome
        goes to its status (a sync that fails is retried at the next interval).
        One sync of a copy at a time: its engine has one writer."""
        assert mirror.lock is not None
        async with mirror.lock:
            await self._sync(mirror)

    async def _sync(self, mirror: Mirror) -> None:
        name = mirror.name
        try:
            resolution = await self.directory.resolve(name)
        except RegistryError as exc:
            mirror.status.last_error = f"resolve: {exc.message}"
            self.metrics["follow.sync_failed"] += 1
            return
        if resolution["holder"] != mirror.status.owner:
            # The name now resolves to another org (a transfer): the copy
            # keeps what it verified, and follows the new owner's changes
            # only once the user follows it anew.
            mirror.status.last_error = (f"{name} now belongs to {resolution['holder']}, not {mirror.status.owner}: "
                                        "unfollow and follow again to take the new owner's registry")
            return
        refusals: list[str] = []
        for provider in resolution["providers"]:
            peer = provider["peer_id"]
            if peer == self.host.peer_id:
                continue
            try:
                with mirror.use() as registry:
                    fetched = await fetch_into(self.host, registry, name, peer, provider["addrs"])
                    applied = fetched.applied
                    described = registry.get(regs.REGISTRY_OF_REGISTRIES, name)
            except RegistryError as exc:
                refusals.append(self._refused(name, peer, exc))
                if isinstance(exc, ValidationError):
                    mirror.status.lying_providers += 1
                continue
            if described["owner"] != mirror.status.owner:  # its engine keeps a record's owner: a damaged copy
                mirror.status.last_error = f"the copy's descriptor names {described['owner']}: unfollow and follow again"
                return
            mirror.status.last_sync_at = wall_clock_ms()
            mirror.status.last_provider = peer
            mirror.status.last_error = None
            mirror.status.synced_changes += applied
            self.metrics["follow.synced"] += 1
            self.metrics["follow.changes"] += applied
            if not fetched.complete:  # larger than one sync's pages: the next goes on at once
                self.metrics["follow.partial"] += 1
                mirror.wake.set()
            return
        mirror.status.last_error = "no provider answered: " + ("; ".join(refusals)[:500] or "none is known")
        self.metrics["follow.sync_failed"] += 1

    def sync_soon(self, name: str) -> None:
        mirror = self.mirrors.get(name)
        if mirror is not None:
            mirror.wake.set()

    # ------------------------------------------------------------ restart

    def _reopen(self) -> list[Mirror]:
        """The mirrors of the previous run; scratch stores a crash left are removed."""
        mirrors: list[Mirror] = []
        if not self.root.exists():
            return mirrors
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".incoming-"):
                shutil.rmtree(path, ignore_errors=True)
                continue
            # A copy that cannot be read is skipped with a warning, never the
            # node's start: a follow.json of [] raised TypeError, and a copy
            # whose store is damaged StoreDamaged, out of every start.
            try:
                state = read_json(path / _STATE_FILE)
                if not isinstance(state, dict):
                    raise ValidationError("its follow.json is not a JSON object")
                status = FollowStatus(names.registry_name(state["registry"]), str(state["owner"]),
                                      int(state["followed_at"]))
                if status.registry != path.name:  # "../../etc" was reopened as a mirror named so
                    raise ValidationError(f"its follow.json names {status.registry}, not {path.name}")
                copy = LocalRegistry.open_path(path, self.key)
            except (RegistryError, KeyError, TypeError, ValueError) as exc:
                self.metrics["follow.unreadable"] += 1
                log.warning("follows: skipping the copy at %s (following it again replaces it): %s",
                            path, exc.message if isinstance(exc, RegistryError) else repr(exc))
                continue
            mirrors.append(Mirror(status.registry, path, copy, status))
        return mirrors
