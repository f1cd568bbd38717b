"""The event log: group appends, recovery from damage, failed writes leave nothing behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from stagewatch.daemon.ingest._eventlog import EventLog

PAYLOADS = [f"payload-{i}".encode() for i in range(100)]


def _reopen(directory: Path) -> tuple[EventLog, list[bytes]]:
    log = EventLog(directory)
    log.open()
    return log, [payload for _, payload in log.read()]


def test_records_survive_reopening_and_lsns_are_byte_positions(tmp_path: Path) -> None:
    log = EventLog(tmp_path, segment_bytes=500)
    log.open()
    lsns = log.append(PAYLOADS[:50]) + log.append(PAYLOADS[50:])
    log.sync()
    log.close()
    reopened, payloads = _reopen(tmp_path)
    assert payloads == PAYLOADS
    assert [lsn for lsn, _ in reopened.read()] == lsns
    assert len(reopened.segments()) > 1  # rotated
    assert [payload for _, payload in reopened.read(lsns[70])] == PAYLOADS[70:]


def test_a_torn_tail_is_cut_and_reported(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.open()
    log.append(PAYLOADS)
    log.close()
    segment = log.segments()[-1][1]
    with open(segment, "ab") as handle:
        handle.write(b"\x20\x00\x00\x00\xde\xad")  # half a header of a record being written
    reopened, payloads = _reopen(tmp_path)
    assert payloads == PAYLOADS
    assert reopened.report.truncated_bytes == 6
    reopened.append([b"after"])
    assert [p for _, p in reopened.read()][-1] == b"after"


def test_flipped_bytes_lose_one_record_and_are_counted(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.open()
    lsns = log.append(PAYLOADS)
    log.close()
    segment = log.segments()[-1][1]
    data = bytearray(segment.read_bytes())
    data[lsns[40] + 9] ^= 0x55
    segment.write_bytes(bytes(data))
    reopened, payloads = _reopen(tmp_path)
    assert payloads == PAYLOADS[:40] + PAYLOADS[41:]
    assert reopened.report.corrupt_regions == 1


def test_a_missing_segment_is_reported(tmp_path: Path) -> None:
    log = EventLog(tmp_path, segment_bytes=300)
    log.open()
    for payload in PAYLOADS:
        log.append([payload])
    log.close()
    segments = log.segments()
    segments[1][1].unlink()
    reopened, payloads = _reopen(tmp_path)
    assert len(reopened.report.missing_ranges) == 1
    assert len(payloads) < len(PAYLOADS) and payloads[0] == PAYLOADS[0] and payloads[-1] == PAYLOADS[-1]


def test_a_failed_write_leaves_no_partial_record(tmp_path: Path, monkeypatch) -> None:
    log = EventLog(tmp_path)
    log.open()
    log.append(PAYLOADS[:10])
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])  # the kernel took half, then the disk filled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        log.append(PAYLOADS[10:20])
    monkeypatch.setattr(os, "write", real_write)
    log.append(PAYLOADS[20:30])
    log.close()
    _, payloads = _reopen(tmp_path)
    assert payloads == PAYLOADS[:10] + PAYLOADS[20:30]
