"""The node's search component (search/service.py): a real node (home, LMDB,
trio nursery) keeps its index caught up with the feed off the write path,
and answers with the records as the store holds them now."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from registrygrid.engine.ops import Delete, Put, Update
from registrygrid.home import Home
from registrygrid.node.node import Node
from registrygrid.node.search import SearchService

pytestmark = pytest.mark.timeout(60)


async def _caught_up(service: SearchService, node: Node) -> None:
    with trio.fail_after(20):
        while service.index is None or service.index.cursor < node.feed.head:
            await trio.sleep(0.05)


async def test_writes_become_searchable_and_answers_show_the_current_record(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(org_name="acme")
    service = SearchService()
    node = Node(home, [service])
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.submit([Put("grid.registries", "registry", {"name": "acme.tools", "kinds": ["tool"]},
                               record_id="acme.tools")])
        await node.submit([Put("acme.tools", "tool", {"name": f"tool-{i}", "description": d}, record_id=f"t{i}")
                           for i, d in enumerate(["summarizes legal contracts", "translates german speech",
                                                  "detects objects in images"])])
        await _caught_up(service, node)
        found = await trio.to_thread.run_sync(service.search, {"text": "legal contract"})
        assert [item["id"] for item in found["items"]][:1] == ["t0"]
        assert found["items"][0]["record"]["fields"]["name"] == "tool-0"
        assert found["indexed_through"] == node.feed.head

        await node.submit([Update("acme.tools", "t1", patch={"description": "summarizes legal memos"}),
                           Delete("acme.tools", "t0")])
        await _caught_up(service, node)
        again = await trio.to_thread.run_sync(service.search, {"text": "legal", "registries": ["acme.tools"]})
        assert [item["id"] for item in again["items"]] == ["t1"]  # t0 deleted, t1 now matches

        status = service.status()
        assert status["state"] == "ready" and status["indexed_through"] == node.feed.head
        rebuilt = await trio.to_thread.run_sync(service.rebuild)
        assert rebuilt["documents"] == status["documents"]
        node.stop()

    # A restarted node resumes from its cursor: nothing is indexed twice.
    service = SearchService()
    node = Node(home, [service])
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await _caught_up(service, node)
        assert service.index is not None and service.index.count() == status["documents"]
        node.stop()
