"""The node's log lines (`rgrid node start`, the simulator's node log):
what peers and clients wrote can neither forge a line nor drive the
terminal of whoever tails the log."""

from __future__ import annotations

import io
import logging

from registrygrid.logs import LineFormatter


def test_a_message_is_one_line_with_its_control_characters_written_out_and_a_traceback_keeps_its_lines() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LineFormatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("test_logs.peer")
    log.addHandler(handler)
    log.propagate = False
    try:
        reason = "bad\n2026-12-05 17:00:00 ERROR registrygrid.node: forged line\x1b]0;pwned\x07\u2028"
        log.warning("refused a change from %s: %s", "peer-1", reason)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("unexpected error on %s", "x\ny")
    finally:
        log.removeHandler(handler)
    first, *rest = out.getvalue().splitlines()
    assert first == ("WARNING test_logs.peer: refused a change from peer-1: bad\\n2026-12-05 17:00:00 ERROR "
                     "registrygrid.node: forged line\\x1b]0;pwned\\x07\\u2028")
    assert rest[0] == "ERROR test_logs.peer: unexpected error on x\\ny"
    assert rest[1] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"
