"""Reading a file an operator names, bounded; writing one without waiting.

    data = read_bounded(path, MAX_INPUT_FILE)   # bytes, or ValidationError
    write_file(path, text)                      # or FileFailed

A size from ``stat`` is no bound: a device says 0 and never ends
(``/dev/zero``, ``/dev/urandom``), and a FIFO blocks its reader until some
writer comes, perhaps never. So only a regular file is read, and never
more than ``limit`` bytes plus one, whatever it said of its size.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

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
