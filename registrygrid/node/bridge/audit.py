"""Audit notes of the bridge (reads by the API, denials), batched into the ledger.

Every read through the API and every denial is an audit entry (DESIGN.md:
"access and denial"). Writing each one as it happens would cross into trio
and cost a commit per GET, which is exactly what the bridge's runtime
avoids for reads (see ``runtime.py``). So the loop thread appends notes to
this buffer (a deque: appends and pops are atomic in CPython, no lock) and a
trio task of the bridge drains it through ``node.submit`` every
``FLUSH_INTERVAL_S`` or as soon as ``FLUSH_BATCH`` notes are waiting. The
notes then share the group commit of ordinary writes.

A read is answered before its note is durable; a crash can lose at most
the last flush interval of read notes (writes carry their own audit entry
in their own transaction and lose nothing). The buffer is bounded: when it
is full (the ledger cannot keep up), reads are refused with 503 rather than
served unaudited, and denial notes are dropped and counted, since the
request is refused anyway.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from registrygrid.engine.ops import AuditNote
from registrygrid.errors import Unavailable

# ~200 ms: a read note becomes durable well within a second, and at the
# 10k reads/s a loaded bridge serves here a flush carries ~2,000 notes, so
# the ledger costs one shared commit per flush, not one per read.
FLUSH_INTERVAL_S = 0.2
# Notes per flush before the timer: keeps one audit batch well below the
# committer's MAX_BATCH_OPS (2,000) so writes queued behind it are not delayed.
FLUSH_BATCH = 500
# 100k notes (~20 MB) is tens of seconds of peak reads: past it the ledger is
# not keeping up and serving more reads would only grow the gap.
MAX_PENDING = 100_000
# Audit entries keep the reason short (the engine caps its own at 512).
MAX_REASON = 512


def fold_reads(notes: list[AuditNote]) -> list[AuditNote]:
    """Reads with the same actor, target and reason become one note whose
    reason says how many (``"history (x12)"``), at the place of the first."""
    counts: dict[tuple[str, str, str], int] = {}
    order: list[AuditNote | tuple[str, str, str]] = []
    for note in notes:
        if note.action != "read":
            order.append(note)
            continue
        key = (note.actor, note.target, note.reason)
        if key not in counts:
            counts[key] = 0
            order.append(key)
        counts[key] += 1
    folded: list[AuditNote] = []
    for item in order:
        if isinstance(item, AuditNote):
            folded.append(item)
            continue
        actor, target, reason = item
        n = counts[item]
        if n > 1:
            reason = f"{reason or 'read'} (x{n})"
        folded.append(AuditNote("read", actor, target, reason[:MAX_REASON]))
    return folded


class AuditBuffer:
    def __init__(self, *, max_pending: int = MAX_PENDING, batch: int = FLUSH_BATCH) -> None:
        self.max_pending = max_pending
        self.batch = batch
        self._notes: deque[AuditNote] = deque()
        self.dropped = 0
        # Called (from the loop thread) when a full batch is waiting, to wake the flusher early.
        self.on_batch_ready: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self._notes)

    def note(self, action: str, actor: str, target: str, reason: str = "", *, required: bool = True) -> None:
        if len(self._notes) >= self.max_pending:
            if required:
                raise Unavailable("the audit ledger is behind; retry shortly")
            self.dropped += 1
            return
        self._notes.append(AuditNote(action, actor, target, reason[:MAX_REASON]))
        if len(self._notes) == self.batch:
            self.on_batch_ready()

    def take(self, limit: int) -> list[AuditNote]:
        """Up to ``limit`` notes, oldest first, with identical reads (actor,
        target, reason) folded into one entry that counts them: a hot record
        read thousands of times a second costs one ledger entry per flush
        window, not one per request, and the ledger still says who read what,
        when (to the flush interval) and how often. Other notes stay one
        entry each."""
        taken: list[AuditNote] = []
        try:
            while len(taken) < limit:
                taken.append(self._notes.popleft())
        except IndexError:
            pass
        return fold_reads(taken)

    def put_back(self, notes: list[AuditNote]) -> None:
        """Return notes a failed flush took, in order, ahead of newer ones."""
        self._notes.extendleft(reversed(notes))
