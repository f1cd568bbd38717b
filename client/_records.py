"""Length-prefixed, CRC-checked records: the format of the event log and of spool files.

    record = u32 payload length | u32 crc32(payload) | payload      (little endian)

A reader keeps every intact record. A damaged region in the middle is skipped and
counted; damage that runs to the end of the data (a torn write, a zero-filled tail) is
reported as the tail to truncate.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 64 * 1024 * 1024


def encode_records(payloads: list[bytes]) -> bytes:
    """Records back to back, each payload copied once (the daemon frames 10,000 a group)."""
    pack, crc32 = HEADER.pack, zlib.crc32
    return b"".join([part for payload in payloads for part in (pack(len(payload), crc32(payload)), payload)])


def record_offsets(start: int, payloads: list[bytes]) -> list[int]:
    """Where each of `payloads`' records begins, the first at `start`."""
    ends = itertools.accumulate([HEADER.size + len(payload) for payload in payloads], initial=start)
    return list(itertools.islice(ends, len(payloads)))


@dataclass
class ScanStats:
    """What a scan found besides the intact records."""

    corrupt_regions: int = 0
    corrupt_bytes: int = 0
    valid_end: int = 0  # offset just past the last intact record
    tail_bytes: int = 0  # bytes after valid_end that hold no intact record


def _record_at(buf: memoryview, offset: int) -> int:
    """Length of the intact record at `offset`, or -1 if there is none."""
    if offset + HEADER.size > len(buf):
        return -1
    length, crc = HEADER.unpack_from(buf, offset)
    end = offset + HEADER.size + length
    if length == 0 or length > MAX_RECORD_BYTES or end > len(buf):
        return -1
    if zlib.crc32(buf[offset + HEADER.size : end]) != crc:
        return -1
    return length


def _next_intact(buf: memoryview, start: int) -> int:
    """Offset of the next intact record at or after `start`, or -1."""
    data = bytes(buf[start:])
    for relative in range(len(data)):
        # A record cannot start in a run of zeros (length >= 1), which makes zero-filled
        # tails fast to pass over.
        if data[relative] == 0 and data[relative : relative + 4] == b"\0\0\0\0":
            continue
        if _record_at(buf, start + relative) >= 0:
            return start + relative
    return -1


def scan_records(data: bytes | memoryview, stats: ScanStats | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, payload) for every intact record in `data`, filling `stats`."""
    buf = memoryview(data)
    stats = stats if stats is not None else ScanStats()
    offset = 0
    while offset < len(buf):
        length = _record_at(buf, offset)
        if length < 0:
            resume = _next_intact(buf, offset + 1)
            if resume < 0:
                break
            stats.corrupt_regions += 1
            stats.corrupt_bytes += resume - offset
            offset = resume
            continue
        end = offset + HEADER.size + length
        stats.valid_end = end  # before the yield: a consumer may stop here
        yield offset, bytes(buf[offset + HEADER.size : end])
        offset = end
    stats.tail_bytes = len(buf) - stats.valid_end
