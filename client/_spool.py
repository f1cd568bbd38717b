"""Spool files: where a client keeps events that the daemon has not acknowledged.

A client holds an exclusive flock on its spool file for as long as it may still write
or resend from it. The daemon ingests only spool files it can lock, that is files whose
client has exited (normally or not), so the two never fight over one file. Records are
the event log's records, so the daemon reads a spool exactly like a log segment.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from stagewatch._records import ScanStats, encode_records, scan_records
from stagewatch._shared import file_mode, make_dirs

SUFFIX = ".spool"


class SpoolFile:
    """A client's own spool: append at the end, read back from an offset, delete when drained."""

    def __init__(self, directory: Path, name: str) -> None:
        make_dirs(directory)
        final = directory / f"{name}{SUFFIX}"
        temporary = directory / f".{name}{SUFFIX}.tmp"
        # Lock before the file gets its final name, so the daemon can never claim it early.
        self._fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_APPEND, file_mode(directory))
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.replace(temporary, final)
        self.path = final
        self.size = 0

    def append(self, payloads: list[bytes]) -> None:
        """Append the records whole or not at all: a disk that takes only part of them (a
        short write, then ENOSPC) is cut back, so no torn record is left behind them."""
        data = memoryview(encode_records(payloads))
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError:
            if written:
                self.truncate(self.size)
            raise
        self.size += len(data)

    def truncate(self, size: int) -> None:
        """Cut the file back to `size` bytes (a record boundary)."""
        os.ftruncate(self._fd, size)
        self.size = size

    def read_from(self, offset: int, max_records: int) -> tuple[list[bytes], int]:
        """Up to `max_records` payloads starting at `offset`, and the offset after them."""
        data = os.pread(self._fd, min(self.size - offset, 8 * 1024 * 1024), offset)
        payloads: list[bytes] = []
        stats = ScanStats()
        for _, payload in scan_records(data, stats):
            payloads.append(payload)
            if len(payloads) >= max_records:
                break
        return payloads, offset + stats.valid_end if payloads else offset

    def delete(self) -> None:
        """Remove the drained file; unlink first so the daemon never sees it unlocked."""
        self.path.unlink(missing_ok=True)
        os.close(self._fd)

    def release(self) -> None:
        """Close without deleting: the daemon will ingest what is left."""
        os.close(self._fd)


def spool_owner(path: Path) -> str:
    """The client id a spool file belongs to (its name: `{client_id}-{number}.spool`)."""
    return path.name[: -len(SUFFIX)].rsplit("-", 1)[0]


def claim_spool_files(directory: Path) -> Iterator[tuple[Path, list[bytes], ScanStats]]:
    """Yield (path, payloads, stats) for every spool file whose client has let it go.

    The caller deletes the path once the payloads are durable elsewhere; the lock is held
    until the generator moves on.
    """
    if not directory.is_dir():
        return
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read()
            stats = ScanStats()
            payloads = [payload for _, payload in scan_records(data, stats)]
            yield path, payloads, stats
        finally:
            os.close(fd)
