"""Log lines that say what others wrote without letting it act.

    handler.setFormatter(LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

A node logs what peers and clients sent it: record ids, a peer's reason
for refusing, an error's message. Written as they came, a newline in one
would forge a log line of its own, and an escape sequence would drive the
terminal of whoever tails the log. Each message is one line, its control
characters written out (``\\n``, ``\\x1b``); a traceback keeps its lines.
"""

from __future__ import annotations

import logging
import sys

# Every C0 and C1 control character and DEL, as text: what a terminal
# would act on (the CLI's output uses it too, keeping newline and tab).
CONTROL_CHARACTERS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
# A log message is one line: its line breaks by name, and the Unicode line
# and paragraph separators some viewers break lines at.
_WRITTEN_OUT = {**CONTROL_CHARACTERS, ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(text: str) -> str:
    """``text`` on one line, with nothing a terminal would act on."""
    return text.translate(_WRITTEN_OUT)


class LineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = one_line(record.message)
        return super().formatMessage(record)


class _CurrentStderr(logging.Handler):
    """Writes to ``sys.stderr`` as it is at each record (a redirect, a
    test's capture), as Python's last-resort handler does."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 (logging's own contract: a handler never raises)
            self.handleError(record)


def warnings_on_one_line(prefix: str) -> None:
    """Warnings no handler takes (a CLI command without a node: a search
    index it found unreadable and rebuilds) go to stderr as one line, with
    ``prefix`` and their level, instead of Python's bare last resort."""
    handler = _CurrentStderr(logging.WARNING)
    handler.setFormatter(LineFormatter(f"{prefix}: %(levelname)s: %(message)s"))
    logging.lastResort = handler
