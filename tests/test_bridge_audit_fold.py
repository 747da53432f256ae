"""Read notes are folded per flush so hot reads cost one ledger entry, not one each."""

from __future__ import annotations

from registrygrid.engine.ops import AuditNote
from registrygrid.node.bridge.audit import AuditBuffer


def test_identical_reads_fold_into_one_counted_entry_and_other_notes_stay_in_order() -> None:
    buffer = AuditBuffer()
    for _ in range(3):
        buffer.note("read", "token:app#1", "grid.tools/x")
    buffer.note("deny", "anonymous@127.0.0.1", "grid.tools/x", "unauthorized: no token", required=False)
    buffer.note("read", "token:app#1", "grid.tools/x", "history")
    buffer.note("read", "token:other#2", "grid.tools/x")
    buffer.note("read", "token:app#1", "grid.tools/x")
    notes = buffer.take(100)
    assert notes == [
        AuditNote("read", "token:app#1", "grid.tools/x", "read (x4)"),
        AuditNote("deny", "anonymous@127.0.0.1", "grid.tools/x", "unauthorized: no token"),
        AuditNote("read", "token:app#1", "grid.tools/x", "history"),
        AuditNote("read", "token:other#2", "grid.tools/x", ""),
    ]
    assert len(buffer) == 0
