"""Group commit: many concurrent writers share one durable transaction.

A durable LMDB commit costs one fsync (~2.5k/s here). Writers queue their
operations; one writer thread takes everything queued (up to a cap), runs it
through the engine in ONE transaction, then wakes each writer with its own
outcomes. Every acknowledged write is durable, and throughput grows with
load instead of stopping at the fsync rate.

Why a long-lived writer thread. The engine is blocking (LMDB, fsync) and
single-writer, so it never runs on the trio thread. The first version
called ``trio.to_thread.run_sync`` per batch and took writes from the HTTP
bridge through a trio task per write: a lone write paid a wake-up of the
trio thread, a thread hand-off there and back, and another wake-up to reach
the bridge's loop (measured ~0.8 ms of a 3 ms lone POST, beside 1.1 ms for
the engine's own durable write). Now one thread, owned by the committer's
task in the node's nursery, blocks on a condition variable; trio tasks and
the bridge's asyncio loop both hand it submissions directly, and it answers
each in the caller's own world (``TrioToken.run_sync_soon`` for trio, a
callback for the bridge, which uses ``call_soon_threadsafe``).

Shutdown: cancelling the committer's task asks the thread to stop; it
finishes the batch it is running (an acknowledged write is never lost),
takes nothing new, and every submission still queued is answered with
Unavailable. From then on the engine is free for a final direct call (the
bridge's last audit notes).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from registrygrid.engine.engine import Engine
from registrygrid.engine.ops import Committed, Operation, Outcome
from registrygrid.errors import StorageFailed, Unavailable

log = logging.getLogger("registrygrid.committer")

# Ops per transaction: big enough to amortise the fsync (at ~60 us per op a
# 2,000-op batch is ~120 ms of work), small enough that one batch never
# holds the writer lock for long or makes a single writer wait behind a
# huge bulk load.
MAX_BATCH_OPS = 2000
# Submissions queued before new ones are refused (bounded memory): trio
# writers wait for a slot, other threads get Unavailable (HTTP 503) at once.
MAX_QUEUED = 10_000

# done(outcomes, error, commit_seconds): called on the writer thread.
DoneCallback = Callable[[list[Outcome] | None, BaseException | None, float], None]


@dataclass
class _Submission:
    ops: Sequence[Operation]
    done: DoneCallback
    finished: trio.Event | None = None  # set (on the trio thread) for submissions from trio
    outcomes: list[Outcome] | None = field(default=None, repr=False)
    error: BaseException | None = None


def _nothing(outcomes: list[Outcome] | None, error: BaseException | None, commit_s: float) -> None:
    """Trio submissions are answered through their event instead."""


def _run_hooks(hooks: list[Callable[[Committed], None]], committed: list[Committed]) -> None:
    """Each hook sees each commit; a failing hook is logged and harms no other."""
    for item in committed:
        for hook in list(hooks):  # a copy: hooks may be removed from another thread meanwhile
            try:
                hook(item)
            except Exception:
                log.exception("commit hook %r failed", hook)


class GroupCommitter:
    def __init__(self, engine: Engine, *, max_batch_ops: int = MAX_BATCH_OPS) -> None:
        self.engine = engine
        self.max_batch_ops = max_batch_ops
        # Called after each commit with what it added: ``on_commit`` hooks in
        # the trio thread, ``on_commit_threadsafe`` hooks on the writer
        # thread itself (they must only hand off: no waiting, no engine).
        # Trio is woken only when it has a writer to answer or a hook to
        # run: after a lone write from the bridge, the writer thread wakes
        # the bridge's loop once (answer and stream wake-up together)
        # instead of waking trio, which then woke the loop a second time.
        self.on_commit: list[Callable[[Committed], None]] = []
        self.on_commit_threadsafe: list[Callable[[Committed], None]] = []
        self.batches = 0
        self.ops = 0
        self._queue: collections.deque[_Submission] = collections.deque()
        self._wakeup = threading.Condition(threading.Lock())
        self._stopping = False
        self._closed = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._trio_slots = trio.Semaphore(MAX_QUEUED)
        # Set once the writer thread has exited and every queued write was
        # answered: from then on the engine is free for a direct call.
        self.closed = trio.Event()

    # ------------------------------------------------------------ submitting

    async def submit(self, ops: Sequence[Operation]) -> list[Outcome]:
        """Queue ops from trio; return their outcomes once durably committed."""
        async with self._trio_slots:
            submission = _Submission(ops, _nothing, finished=trio.Event())
            self._enqueue(submission)
            await submission.finished.wait()  # type: ignore[union-attr]
        if submission.error is not None:
            raise submission.error
        assert submission.outcomes is not None
        return submission.outcomes

    def submit_threadsafe(self, ops: Sequence[Operation], done: DoneCallback) -> None:
        """Queue ops from any thread; ``done`` is called on the writer thread
        once they are committed (or refused). Raises Unavailable when the
        node is stopping or the queue is full."""
        if len(self._queue) >= MAX_QUEUED:
            raise Unavailable(f"{MAX_QUEUED} writes are already queued; retry shortly")
        self._enqueue(_Submission(ops, done))

    def _enqueue(self, submission: _Submission) -> None:
        with self._wakeup:
            if self._stopping or self._closed:
                raise Unavailable("the node is shutting down")
            self._queue.append(submission)
            self._wakeup.notify()

    # ------------------------------------------------------------ the task and its thread

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_when_cancelled)
                # Its own limiter: the writer holds its thread for the node's
                # lifetime and must not take one of trio's shared 40.
                await trio.to_thread.run_sync(self._writer_loop, limiter=trio.CapacityLimiter(1))
                nursery.cancel_scope.cancel()
        finally:
            self._request_stop()
            with self._wakeup:
                self._closed = True
                leftover = list(self._queue)
                self._queue.clear()
            error = Unavailable("the node stopped before this write was committed")
            for submission in leftover:
                submission.error = error
                self._answer_threadsafe(submission, 0.0)
            self._answer_trio([s for s in leftover if s.finished is not None], [])
            self.closed.set()

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._request_stop()

    def _request_stop(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()

    def _writer_loop(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._stopping:
                    self._wakeup.wait()
                if self._stopping:
                    return  # what is queued is answered by run()'s finally
                batch = [self._queue.popleft()]
                count = len(batch[0].ops)
                while self._queue and count < self.max_batch_ops:
                    submission = self._queue.popleft()
                    batch.append(submission)
                    count += len(submission.ops)
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Submission]) -> None:
        ops = [op for submission in batch for op in submission.ops]
        started = time.perf_counter()
        committed: list[Committed] = []
        try:
            executed = self.engine.run(ops, publish=True)
        except BaseException as exc:
            # A storage failure: every writer in the batch hears it, none
            # waits forever, and the next batch tries again. Anything worse
            # than an Exception is answered too (below), then ends the loop.
            if isinstance(exc, StorageFailed):  # the operator's to fix, not a bug: no traceback
                log.error("a batch of %d ops failed: %s", len(ops), exc.message)
            else:
                log.exception("a batch of %d ops failed", len(ops))
            error = exc if isinstance(exc, Exception) else Unavailable(
                "the node's writer stopped while this write was being committed; its outcome is unknown")
            for submission in batch:
                submission.error = error
            if not isinstance(exc, Exception):
                raise
        else:
            self.batches += 1
            self.ops += len(ops)
            start = 0
            for submission in batch:
                submission.outcomes = executed.outcomes[start:start + len(submission.ops)]
                start += len(submission.ops)
            if executed.committed.feed_seqs:
                committed.append(executed.committed)
        finally:
            self._answer(batch, time.perf_counter() - started, committed)

    def _answer(self, batch: list[_Submission], commit_s: float, committed: list[Committed]) -> None:
        """Wake every writer of a finished batch; then run its hooks: the
        thread-safe ones here, the others in trio."""
        for submission in batch:
            self._answer_threadsafe(submission, commit_s)
        _run_hooks(self.on_commit_threadsafe, committed)
        trio_subs = [s for s in batch if s.finished is not None]
        if trio_subs or (committed and self.on_commit):
            assert self._token is not None
            try:
                self._token.run_sync_soon(self._answer_trio, trio_subs, committed)
            except trio.RunFinishedError:
                pass  # trio is gone: nobody waits and no hook can run

    @staticmethod
    def _answer_threadsafe(submission: _Submission, commit_s: float) -> None:
        try:
            submission.done(submission.outcomes, submission.error, commit_s)
        except Exception:
            log.exception("a write's completion callback failed")

    def _answer_trio(self, submissions: list[_Submission], committed: list[Committed]) -> None:
        """Trio thread: wake trio writers, then run the commit hooks. Nothing
        may escape a run_sync_soon callback (trio would crash the node)."""
        for submission in submissions:
            submission.finished.set()  # type: ignore[union-attr]
        _run_hooks(self.on_commit, committed)

    @property
    def mean_batch(self) -> float:
        return self.ops / self.batches if self.batches else math.nan
