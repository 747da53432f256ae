"""A Server-Sent Events decoder: bytes in, events out. No I/O here.

It follows the WHATWG HTML standard, 9.2.6 "Interpreting an event stream":
lines end with CRLF, LF or CR; a line starting with ``:`` is a comment
(the bridge's keepalives); ``field: value`` sets ``data`` (joined by LF),
``event``, ``id`` (ignored if it holds NUL) or ``retry`` (digits only); a
blank line dispatches the event, unless it has no data. ``last_id``
survives across events, as the standard's "last event ID string" does: it
is what a reconnecting client sends as ``Last-Event-ID``.
"""

from __future__ import annotations

from dataclasses import dataclass

# A line longer than this is not an event of ours: the bridge's largest
# frame is one feed event's JSON, well under 4 KiB (names are capped by
# protocol/limits.py). 1 MiB, as the bridge's body cap, bounds the buffer a
# broken or hostile stream can make the client hold.
MAX_LINE = 1 << 20


@dataclass(frozen=True)
class SseEvent:
    event: str  # "message" when the stream named none
    data: str
    id: str | None  # the last event ID as of this event


class SseDecoder:
    def __init__(self) -> None:
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events ``chunk`` completes (a partial line waits for the next chunk)."""
        buffer = self._buffer + chunk
        out: list[SseEvent] = []
        start = 0
        while True:
            lf, cr = buffer.find(b"\n", start), buffer.find(b"\r", start)
            if cr != -1 and (lf == -1 or cr < lf):
                if cr + 1 == len(buffer):
                    break  # a CR at the end may be the first half of a CRLF
                end, after = cr, cr + 2 if buffer[cr + 1:cr + 2] == b"\n" else cr + 1
            elif lf != -1:
                end, after = lf, lf + 1
            else:
                break
            event = self._line(buffer[start:end].decode("utf-8", "replace"))
            if event is not None:
                out.append(event)
            start = after
        self._buffer = buffer[start:]
        if len(self._buffer) > MAX_LINE:
            raise ValueError(f"an event stream line is longer than {MAX_LINE} bytes")
        return out

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SseEvent(event or "message", "\n".join(data), self.last_id)
