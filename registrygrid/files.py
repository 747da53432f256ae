"""Reading a file an operator names, bounded; writing one without waiting.

    data = read_bounded(path, MAX_INPUT_FILE)   # bytes, or ValidationError
    value = read_json(path)                     # a home's state file, parsed
    write_file(path, text)                      # or FileFailed

A size from ``stat`` is no bound: a device says 0 and never ends
(``/dev/zero``, ``/dev/urandom``), and a FIFO blocks its reader until some
writer comes, perhaps never. So only a regular file is read, and never
more than ``limit`` bytes plus one, whatever it said of its size.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from registrygrid.errors import FileFailed, NotFound, ValidationError


def read_bounded(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file at ``path``: NotFound if there is none,
    ValidationError if it is something else (a folder, a device, a FIFO),
    cannot be read, or holds more than ``limit`` bytes."""
    file = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused below).
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFound(f"{file}: no such file") from None
    except OSError as exc:
        raise ValidationError(f"cannot read {file}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValidationError(f"{file} is not a regular file")
        os.set_blocking(fd, True)
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise ValidationError(f"cannot read {file}: {exc.strerror}") from None
    if len(data) > limit:
        raise ValidationError(f"{file} is larger than {limit} bytes")
    return data


# The home's own state files (config.json, org.json, federation.json,
# node.json, bridge.json, a rotation's plan): a few KiB each.
MAX_STATE_FILE = 1 << 20


def read_json(path: str | Path, limit: int = MAX_STATE_FILE) -> Any:
    """The JSON value in the regular file at ``path``: NotFound if there is
    none, ValidationError if it is something else, larger than ``limit``,
    not UTF-8 JSON, or nested past the parser's depth. The home's files were
    read whole and as they were: a symlink to /dev/zero ate the memory, a
    FIFO hung every command, a nesting 30,000 deep was a traceback."""
    data = read_bounded(path, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError too
        raise ValidationError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValidationError(f"{path} is not valid JSON: nested too deeply") from None


def write_file(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, created or truncated. Opened
    without waiting: a FIFO that nobody reads fails at once instead of
    holding the command forever (``rgrid export --out`` hung on one); a
    pipe someone reads and a device take the text as a file does."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise FileFailed(f"{path}: a FIFO that nobody reads") from None
        raise
    os.set_blocking(fd, True)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
