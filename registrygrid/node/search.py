"""The node's search component ``search``: it opens ``HOME/index`` (search/),
keeps the text index and, with the semantic extra, the embeddings caught
up with the changefeed, each on a worker thread of its own, within
``DEBOUNCE_S`` of each commit and never in a commit's way (a write never
waits for indexing); the bridge asks it (search/service.py ``answer``).
After each indexing pass, on the same thread, it refreshes the saved views
(search/views.py), whose changes the bridge streams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from registrygrid.errors import RegistryError, Unavailable
from registrygrid.search.index import SearchIndex
from registrygrid.search.service import answer, index_path, verifier
from registrygrid.search.views import Views

log = logging.getLogger(__name__)

# A burst of commits is indexed in one pass.
DEBOUNCE_S = 0.2
# A pass that failed unexpectedly is tried again after 1 s, then 2, 4 ... up to a minute.
RETRY_FIRST_S = 1.0
RETRY_LAST_S = 60.0


class SearchService:
    """The node component ``search``."""

    name = "search"

    def __init__(self) -> None:
        self.index: SearchIndex | None = None
        self.node: Any = None
        self.views: Views | None = None
        self._wake = trio.Event()

    async def run(self, node: Any, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self.node = node
        self.index = await trio.to_thread.run_sync(SearchIndex, index_path(node.home.path))
        semantic = await trio.to_thread.run_sync(self.index.enable_semantic)
        log.info("search: index at %s, semantic search %s", self.index.path,
                 "on" if semantic else "off (pip install 'registrygrid[semantic]')")
        self.views = await trio.to_thread.run_sync(Views, index_path(node.home.path) / "views", self.index,
                                                   node.registry, lambda: node.engine.owner)
        task_status.started(self)  # serves at once; answers say how far the index got (indexed_through)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_feed, self._catch_up_sync, lambda: self.index.cursor, "indexing")
            if semantic:  # on a thread of its own: embedding is slower than indexing and must not hold it back
                nursery.start_soon(self._follow_feed, self._embed_sync, lambda: self.index.vectors.cursor,
                                   "embedding")

    async def _follow_feed(self, work: Callable[[], int], reached: Callable[[], int], what: str) -> None:
        """Run ``work`` (a blocking catch-up) on a worker thread now and then
        within ``DEBOUNCE_S`` of every commit past what it ``reached``."""
        seen = 0
        backoff = RETRY_FIRST_S
        while True:
            try:
                await trio.to_thread.run_sync(work)
                backoff = RETRY_FIRST_S
            except RegistryError as exc:  # a store error (a full disk...): the next commit retries
                log.warning("search: %s stopped at %d: %s", what, reached(), exc.message)
                seen = max(seen, self.node.feed.head)  # not at once: the feed is past what it reached
            except Exception:
                # Anything else the index's libraries raise (usearch's "Too
                # many open files" while clients held every descriptor) ended
                # this task, and with it the node. Search follows the store,
                # which is whole: it tries again, backing off.
                log.exception("search: %s stopped at %d; trying again in %.0f s", what, reached(), backoff)
                await trio.sleep(backoff)
                backoff = min(2 * backoff, RETRY_LAST_S)
                continue
            seen = await self.node.feed.wait_beyond(max(seen, reached()))
            await trio.sleep(DEBOUNCE_S)

    def _embed_sync(self) -> int:
        assert self.index is not None
        return self.index.catch_up_vectors(self.node.registry)

    def _catch_up_sync(self, progress: Callable[[int, int], None] | None = None) -> int:
        assert self.index is not None
        engine = self.node.engine
        events = self.index.catch_up(self.node.registry, org_verified=verifier(engine), local_org=engine.owner,
                                     progress=progress)
        if self.views is not None:
            self.views.refresh()  # here: the views judge records by what the index holds now
        return events

    # ---- what the bridge calls (any thread)

    def search(self, body: Any, registries: tuple[str, ...] | None = None) -> dict[str, Any]:
        if self.index is None:
            raise Unavailable("the search index is still opening")
        return answer(self.index, self.node.registry, body, registries=registries)

    def rebuild(self) -> dict[str, Any]:
        """Index the whole feed again (an admin's repair; the node keeps serving)."""
        if self.index is None:
            raise Unavailable("the search index is still opening")
        engine = self.node.engine
        events = self.index.rebuild(self.node.registry, org_verified=verifier(engine), local_org=engine.owner)
        return {"events": events, "documents": self.index.count(), "indexed_through": self.index.cursor}

    def status(self) -> dict[str, Any]:
        if self.index is None:
            return {"state": "opening"}
        vectors = self.index.vectors
        return {"state": "ready", "documents": self.index.count(), "indexed_through": self.index.cursor,
                "feed_head": self.node.feed.head, "semantic": vectors is not None,
                "vectors_through": vectors.cursor if vectors is not None else None}

    # ---- saved views (search/views.py): what the bridge calls (any thread)

    def _views(self) -> Views:
        if self.views is None:
            raise Unavailable("the search index is still opening")
        return self.views

    def view_list(self, registries: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        return self._views().list(registries)

    def view_show(self, name: str, *, limit: int | None = None, cursor: str | None = None,
                  registries: tuple[str, ...] | None = None) -> dict[str, Any]:
        return self._views().show(name, limit=limit, cursor=cursor, registries=registries)

    def view_changes(self, name: str, after: str | None, *,
                     registries: tuple[str, ...] | None = None) -> dict[str, Any] | None:
        """Events after ``after`` or the whole member list (Views.changes), of
        ``registries`` only if given; None while it is being materialized."""
        return self._views().changes(name, after, registries=registries)

    def view_subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """``callback()`` after each views refresh that changed something, on
        the indexing thread (so it must only hand off); returns the unsubscribe."""
        return self._views().subscribe(callback)
