"""Group commit: concurrent writers share transactions, and none is left waiting."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import trio

from registrygrid.engine.ops import Put, WriteResult
from registrygrid.errors import Unavailable
from registrygrid.node import committer as committer_module
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


async def test_other_threads_submit_directly_and_hear_back_on_the_writer_thread(tmp_path: Path) -> None:
    # The HTTP bridge's path: a plain thread hands ops over with a callback,
    # and trio writers' batches are shared with it.
    grid = LocalRegistry.open_path(tmp_path)
    committer = GroupCommitter(grid.engine)
    answers: list[tuple[object, object]] = []
    all_answered = threading.Event()

    def done(outcomes, error, commit_s):
        answers.append((outcomes[0] if outcomes else None, error))
        assert commit_s > 0 and threading.current_thread() is not main_thread
        if len(answers) == 50:
            all_answered.set()

    def submit_from_a_thread() -> None:
        for i in range(50):
            committer.submit_threadsafe([tool(i)], done)
        assert all_answered.wait(30)

    main_thread = threading.current_thread()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            nursery.start_soon(committer.submit, [tool(1000)])
            await trio.to_thread.run_sync(submit_from_a_thread)
            nursery.cancel_scope.cancel()
    assert [error for _, error in answers] == [None] * 50
    assert {result.record_id for result, _ in answers} == {f"t{i}" for i in range(50)}
    assert grid.get("grid.tools", "t1000")["fields"]["name"] == "tool-1000"


async def test_commit_hooks_run_in_trio_after_each_batch_and_a_failing_hook_harms_nothing(tmp_path: Path) -> None:
    grid = LocalRegistry.open_path(tmp_path)
    committer = GroupCommitter(grid.engine)
    seen: list[int] = []

    def broken_hook(committed) -> None:
        raise RuntimeError("a hook with a bug")

    def counting_hook(committed) -> None:
        trio.lowlevel.current_task()  # raises unless called in trio
        seen.extend(committed.feed_seqs)

    committer.on_commit.extend([broken_hook, counting_hook])
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            for i in range(5):
                await committer.submit([tool(i)])
                # The trio callback that wakes a writer runs the batch's
                # hooks too, so they are done by the time submit returns.
                assert seen[-1] == i + 1
            nursery.cancel_scope.cancel()
    assert seen == [1, 2, 3, 4, 5]


async def test_threadsafe_hooks_run_on_the_writer_thread_after_its_writers_are_answered(tmp_path: Path) -> None:
    grid = LocalRegistry.open_path(tmp_path)
    committer = GroupCommitter(grid.engine)
    trio_thread = threading.get_ident()
    events: list[tuple[str, int, object]] = []

    def broken_hook(committed) -> None:
        raise RuntimeError("a hook with a bug")

    def recording_hook(committed) -> None:
        events.append(("hook", threading.get_ident(), committed.feed_seqs))

    def done(outcomes, error, commit_s) -> None:
        events.append(("answered", threading.get_ident(), [o.feed_seq for o in outcomes]))

    committer.on_commit_threadsafe.extend([broken_hook, recording_hook])
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            committer.submit_threadsafe([tool(1)], done)
            while len(events) < 2:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    (first, writer_a, seqs_a), (second, writer_b, seqs_b) = events
    assert (first, second) == ("answered", "hook")
    assert writer_a == writer_b != trio_thread  # both on the writer thread; the broken hook harmed nothing
    assert seqs_a == seqs_b == [1]


async def test_the_feed_signal_wakes_a_trio_waiter_when_a_thread_advances_it() -> None:
    from registrygrid.node.node import FeedSignal

    signal = FeedSignal(head=3)
    signal.bind(trio.lowlevel.current_trio_token())
    assert await signal.wait_beyond(2) == 3  # already past: no wait
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, _advance_later, signal)
            assert await signal.wait_beyond(3) == 5
    signal.advance(4)  # never backwards
    assert signal.head == 5


def _advance_later(signal) -> None:
    time.sleep(0.05)  # the waiter is asleep by now
    signal.advance(5)


async def test_a_stopped_committer_refuses_new_writes_from_trio_and_from_threads(tmp_path: Path) -> None:
    grid = LocalRegistry.open_path(tmp_path)
    committer = GroupCommitter(grid.engine)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            nursery.cancel_scope.cancel()
    with pytest.raises(Unavailable):
        await committer.submit([tool(1)])
    with pytest.raises(Unavailable):
        committer.submit_threadsafe([tool(2)], lambda *_: None)
    assert grid.feed_head() == 0


async def test_a_full_queue_refuses_thread_submissions_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Bounded memory: past MAX_QUEUED waiting submissions, other threads get
    # Unavailable (HTTP 503) rather than a queue that grows without end.
    monkeypatch.setattr(committer_module, "MAX_QUEUED", 3)
    grid = LocalRegistry.open_path(tmp_path)
    committer = GroupCommitter(grid.engine)  # not running: nothing drains the queue
    for i in range(3):
        committer.submit_threadsafe([tool(i)], lambda *_: None)
    with pytest.raises(Unavailable, match="already queued"):
        committer.submit_threadsafe([tool(3)], lambda *_: None)


async def test_closed_is_set_only_after_the_batch_being_written_has_finished(tmp_path: Path) -> None:
    # The bridge's last audit notes go straight to the engine once `closed`
    # is set: it must never be set while the writer thread still runs a batch.
    grid = LocalRegistry.open_path(tmp_path)
    committer = GroupCommitter(grid.engine)
    order: list[str] = []
    started = threading.Event()
    real_run = grid.engine.run

    def slow_run(ops, **options):
        started.set()
        time.sleep(0.3)  # cancellation arrives while this batch is being written
        executed = real_run(ops, **options)
        order.append("batch committed")
        return executed

    grid.engine.run = slow_run  # type: ignore[method-assign]

    async def watch_closed() -> None:
        await committer.closed.wait()
        order.append("closed")

    with trio.fail_after(60):
        async with trio.open_nursery() as outer:
            outer.start_soon(watch_closed)
            async with trio.open_nursery() as nursery:
                await nursery.start(committer.run)
                committer.submit_threadsafe([tool(1)], lambda *_: order.append("answered"))
                await trio.to_thread.run_sync(started.wait)
                nursery.cancel_scope.cancel()
    assert order == ["batch committed", "answered", "closed"]
    with pytest.raises(Unavailable):
        committer.submit_threadsafe([tool(2)], lambda *_: None)
    assert grid.get("grid.tools", "t1")["fields"]["name"] == "tool-1"
