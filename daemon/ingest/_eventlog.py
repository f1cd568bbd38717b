"""The append-only event log: the daemon's only source of truth.

Segment files `events/{base:020d}.seg` hold records (stagewatch._records). A record's
log sequence number (lsn) is its global byte position: segment base + offset, so it
stays the same whatever damage a reader skips. Appends go in groups and one fsync makes
a group durable; a failed write is cut back so no torn record stays behind.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stagewatch._records import ScanStats, encode_records, record_offsets, scan_records

SEGMENT_SUFFIX = ".seg"
SEGMENT_NAME = re.compile(r"(\d{20})\.seg")  # what _open_segment names: the base lsn, 20 digits
MAX_LSN = 2**63 - 1
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


@dataclass
class RecoveryReport:
    segments: int = 0
    truncated_bytes: int = 0  # torn or zero-filled tail cut from the last segment
    corrupt_regions: int = 0
    corrupt_bytes: int = 0
    missing_ranges: list[tuple[int, int]] = field(default_factory=list)  # lsn gaps between segments
    set_aside: list[str] = field(default_factory=list)  # "file: why" of files that are no segment of this log

    @property
    def clean(self) -> bool:
        return not (self.truncated_bytes or self.corrupt_regions or self.missing_ranges or self.set_aside)


class EventLog:
    """Append, sync and read records; see the module docstring."""

    def __init__(self, directory: Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._base = 0  # lsn of the open segment's first byte
        self._size = 0  # bytes in the open segment
        self.report = RecoveryReport()

    # -- recovery ------------------------------------------------------------------------
    def segments(self) -> list[tuple[int, Path]]:
        """(base lsn, path) of the log's segments, in order; what `strays` names is left out."""
        return self._listing()[0]

    def strays(self) -> list[tuple[Path, str]]:
        """Files in the log's folder that are no segment of it, and why: a name that is not a
        20-digit base below 2**63, a symlink or other non-regular file (never followed), a
        segment that overlaps the one before it (a copy under another name, say)."""
        return self._listing()[1]

    def _listing(self) -> tuple[list[tuple[int, Path]], list[tuple[Path, str]]]:
        found, strays = [], []
        for entry in os.scandir(self.directory):
            path, match = Path(entry.path), SEGMENT_NAME.fullmatch(entry.name)
            if entry.name.startswith("."):
                continue  # temporary files of tools; never ours
            if match is None or int(match[1]) > MAX_LSN:
                strays.append((path, "not a segment name (20 digits, the base position below 2**63)"))
            elif not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                strays.append((path, "not a regular file (a symlink is never followed)"))
            else:
                found.append((int(match[1]), path, entry.stat(follow_symlinks=False).st_size))
        segments, end = [], 0
        for base, path, size in sorted(found):
            if base < end:
                strays.append((path, f"overlaps the segment before it (which ends at {end})"))
                continue
            segments.append((base, path))
            end = base + size
        return segments, strays

    def open(self, set_aside: Path | None = None) -> RecoveryReport:
        """Move what is no segment to `set_aside` (kept, for a look), cut a torn tail off the
        last segment and open it for appending."""
        report = RecoveryReport()
        for path, reason in self.strays():
            if set_aside is not None:
                set_aside.mkdir(parents=True, exist_ok=True)
                os.replace(path, set_aside / path.name)
            report.set_aside.append(f"{path.name}: {reason}")
        segments = self.segments()
        report.segments = len(segments)
        for (base, path), (next_base, _) in itertools.pairwise(segments):
            if base + path.stat().st_size < next_base:
                report.missing_ranges.append((base + path.stat().st_size, next_base))
        if segments:
            self._base, path = segments[-1]
            stats = ScanStats()
            for _ in scan_records(path.read_bytes(), stats):
                pass
            report.corrupt_regions += stats.corrupt_regions
            report.corrupt_bytes += stats.corrupt_bytes
            if stats.tail_bytes:
                report.truncated_bytes = stats.tail_bytes
                os.truncate(path, stats.valid_end)
            self._open_segment(self._base)
        else:
            self._open_segment(0)
        self.report = report
        return report

    def _open_segment(self, base: int) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        path = self.directory / f"{base:020d}{SEGMENT_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._base = base
        self._size = os.fstat(self._fd).st_size
        _fsync_directory(self.directory)

    # -- writing -------------------------------------------------------------------------
    @property
    def end_lsn(self) -> int:
        return self._base + self._size

    def append(self, payloads: list[bytes], records: bytes | None = None) -> list[int]:
        """Write a group of records (not yet durable: call sync); returns their lsns.
        `records`: the payloads already framed (`encode_records`), where the caller has them.

        On a failed write (a full disk, say) the segment is cut back to where it was and
        the OSError propagates: nothing of the group stays in the log.
        """
        assert self._fd is not None, "open() the log first"
        if self._size >= self.segment_bytes:
            self._open_segment(self.end_lsn)
        lsns = record_offsets(self.end_lsn, payloads)
        data = encode_records(payloads) if records is None else records
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(28, f"short write to the event log ({written} of {len(data)} bytes)")
        except OSError:
            os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)
        return lsns

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    # -- reading -------------------------------------------------------------------------
    def starts_a_record(self, lsn: int) -> bool:
        """Whether an intact record starts at `lsn` or the log ends there: `read` trusts its
        `from_lsn` to be a record boundary, and a damaged checkpoint's lsn may be none."""
        if lsn >= self.end_lsn:
            return lsn == self.end_lsn
        first = next(self.read(lsn), None)
        return first is not None and first[0] == lsn

    def read(self, from_lsn: int = 0, stats: ScanStats | None = None) -> Iterator[tuple[int, bytes]]:
        """Yield (lsn, payload) for every intact record at or after `from_lsn`."""
        stats = stats if stats is not None else ScanStats()
        segments = self.segments()
        for index, (base, path) in enumerate(segments):
            next_base = segments[index + 1][0] if index + 1 < len(segments) else None
            if next_base is not None and next_base <= from_lsn:
                continue
            segment_stats = ScanStats()
            start = max(0, from_lsn - base)  # from_lsn is always a record boundary
            with open(path, "rb") as handle:  # from `start` only: a follower re-reads just the new tail
                handle.seek(start)
                data = handle.read()
            for offset, payload in scan_records(memoryview(data), segment_stats):
                yield base + start + offset, payload
            stats.corrupt_regions += segment_stats.corrupt_regions
            stats.corrupt_bytes += segment_stats.corrupt_bytes
            stats.tail_bytes += segment_stats.tail_bytes


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
