"""Group commit: concurrent writers share transactions, and none is left waiting."""

from __future__ import annotations

from pathlib import Path

import trio

from registrygrid.engine.ops import Put, WriteResult
from registrygrid.errors import Unavailable
from registrygrid.node.committer import GroupCommitter
from registrygrid.sdk import LocalRegistry


def tool(i: int) -> Put:
    return Put("grid.tools", "tool", {"name": f"tool-{i}"}, record_id=f"t{i}")


async def test_concurrent_writers_share_batches_and_each_gets_its_own_outcome(tmp_path: Path) -> None:
    grid = LocalRegistry.open_path(tmp_path)
    committer = GroupCommitter(grid.engine)
    results: dict[int, WriteResult] = {}

    async def writer(i: int) -> None:
        [outcome] = await committer.submit([tool(i)])
        results[i] = outcome

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            async with trio.open_nursery() as writers:
                for i in range(200):
                    writers.start_soon(writer, i)
            nursery.cancel_scope.cancel()
    assert sorted(results) == list(range(200))
    assert all(results[i].record_id == f"t{i}" and results[i].status == "created" for i in results)
    assert committer.batches < 200  # writers that waited together shared a transaction
    assert grid.feed_head() == 200


async def test_writers_queued_when_the_committer_stops_hear_unavailable_instead_of_waiting(tmp_path: Path) -> None:
    grid = LocalRegistry.open_path(tmp_path)
    committer = GroupCommitter(grid.engine)
    outcomes: list[object] = []

    async def writer(i: int) -> None:
        try:
            outcomes.append((await committer.submit([tool(i)]))[0])
        except Unavailable as exc:
            outcomes.append(exc)

    with trio.fail_after(60):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as inner:
                await inner.start(committer.run)
                for i in range(100):
                    outer.start_soon(writer, i)
                await trio.sleep(0)  # let some submissions queue, then stop the committer
                inner.cancel_scope.cancel()
    # Every writer got an answer; whatever was acknowledged is in the store.
    assert len(outcomes) == 100
    acknowledged = [o for o in outcomes if isinstance(o, WriteResult)]
    for result in acknowledged:
        assert grid.get("grid.tools", result.record_id)["fields"]["name"] == f"tool-{result.record_id[1:]}"
    assert grid.feed_head() >= len(acknowledged)
