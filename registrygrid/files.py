"""Reading a file an operator names, bounded.

    data = read_bounded(path, MAX_INPUT_FILE)   # bytes, or ValidationError

A size from ``stat`` is no bound: a device says 0 and never ends
(``/dev/zero``, ``/dev/urandom``), and a FIFO blocks its reader until some
writer comes, perhaps never. So only a regular file is read, and never
more than ``limit`` bytes plus one, whatever it said of its size.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from registrygrid.errors import NotFound, ValidationError


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
