"""Run files (audit.json, stages.jsonl) opened as plain files only. Anything may stand where
one goes: a FIFO's open waits for its other end for ever (the daemon's disk thread, `doctor`,
`show` and the dashboard's threads stopped there), and a link to /dev/zero never ends. Each is
opened without waiting and refused unless it is a plain file: an OSError naming what it is,
which callers already report as that run's damaged file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

# An audit.json is a run's head (its stages are in stages.jsonl): kilobytes. Past this it is no
# head (a link to /dev/zero, a file grown by hand), and is not read whole into memory.
MAX_HEAD_BYTES = 64 << 20


def read_plain(path: Path, limit: int) -> bytes:
    """The file's bytes; OSError if it is no plain file, ValueError if it is over `limit` bytes."""
    with os.fdopen(_open_plain(path, os.O_RDONLY), "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise ValueError(f"{size:,} bytes, more than such a file holds ({limit:,})")
        return handle.read(limit + 1)


def append_plain(path: Path) -> int:
    """A descriptor whose writes go to the file's end, made if missing (OSError if it is no
    plain file)."""
    return _open_plain(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)


def _open_plain(path: Path, flags: int) -> int:
    descriptor = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise OSError(f"{path} is {kind}, not a file")
    os.set_blocking(descriptor, True)  # a plain file: reads and writes as ever
    return descriptor
