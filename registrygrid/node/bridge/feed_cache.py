"""A value the bridge derives from a few registries, kept until they change.

The MCP Registry API's catalog and the well-known discovery documents are
built from every record of their registries: a read of thousands of
records (~0.35 s for 10,000 MCP server versions). Built per request, a
burst of reads after one write ran one build each on the bridge's shared
executor (100 concurrent reads: 26 s each, and /v1/stats took 11 s
meanwhile). ``FeedCache`` builds at most one at a time, shares it with
every request that waited for it, and keeps it while the changefeed shows
no change of its registries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from registrygrid.node.bridge.app import Api

T = TypeVar("T")

# A cached value is brought up to date by looking for changes of its
# registries among the feed events since it was built, when they are at
# most this many: the most one changefeed read takes (sdk.py changes).
# Further behind, it is rebuilt instead.
RECHECK_EVENTS = 10_000


@dataclass(frozen=True)
class _Built(Generic[T]):
    head: int  # the feed head the value is known to be current at
    value: T


class FeedCache(Generic[T]):
    """``build`` (blocking: it reads records) runs on the bridge's executor,
    one at a time; its value serves every request until the feed shows a
    change of one of ``registries``. Loop-side only (``get``)."""

    def __init__(self, api: Api, registries: tuple[str, ...], build: Callable[[], T]) -> None:
        self.api = api
        self.registries = registries
        self.build = build
        self._built: _Built[T] | None = None
        self._building = asyncio.Lock()

    async def get(self) -> T:
        """The value as of at least the feed head when called (read-your-writes)."""
        head = self.api.registry.feed_head()
        built = self._built
        if built is not None and built.head >= head:
            return built.value
        async with self._building:  # who waited here finds the value the build before it made
            built = self._built
            if built is None or built.head < head:
                built = self._built = await self.api.in_executor(self._current, built)
            return built.value

    def _current(self, built: _Built[T] | None) -> _Built[T]:
        """An executor thread. The head is read before the records: a change
        committed meanwhile is looked for again by the next ``get``."""
        registry = self.api.registry
        head = registry.feed_head()
        if built is not None and head - built.head <= RECHECK_EVENTS and not any(
                registry.changes(built.head, limit=1, registry=name) for name in self.registries):
            return _Built(head, built.value)  # the feed moved on, these registries did not
        return _Built(head, self.build())
