"""The record format shared by the event log and spool files survives damage."""

import struct
import zlib

from stagewatch._records import HEADER, ScanStats, encode_records, record_offsets, scan_records

PAYLOADS = [f"event-{i}".encode() * (1 + i % 7) for i in range(50)]


def _scan(data: bytes) -> tuple[list[bytes], ScanStats]:
    stats = ScanStats()
    return [payload for _, payload in scan_records(data, stats)], stats


def test_intact_records_round_trip() -> None:
    payloads, stats = _scan(encode_records(PAYLOADS))
    assert payloads == PAYLOADS and stats.corrupt_regions == 0 and stats.tail_bytes == 0


def test_records_are_framed_one_way_whether_one_or_many() -> None:
    """The log frames a group at once and names each record by its offset: the documented
    format (u32 length | u32 crc32 | payload, little endian), at the offsets a reader finds."""
    data = encode_records(PAYLOADS)
    assert data == b"".join(struct.pack("<II", len(p), zlib.crc32(p)) + p for p in PAYLOADS)
    assert record_offsets(1000, PAYLOADS) == [1000 + offset for offset, _ in scan_records(data)]
    assert record_offsets(7, []) == [] and encode_records([]) == b""


def test_torn_tail_keeps_every_complete_record() -> None:
    data = encode_records(PAYLOADS)
    payloads, stats = _scan(data[:-3])
    assert payloads == PAYLOADS[:-1]
    assert stats.tail_bytes == len(data) - 3 - stats.valid_end


def test_flipped_bytes_in_the_middle_lose_only_that_record() -> None:
    data = bytearray(encode_records(PAYLOADS))
    offset = len(encode_records(PAYLOADS[:20])) + HEADER.size + 2
    data[offset] ^= 0xFF
    payloads, stats = _scan(bytes(data))
    assert payloads == PAYLOADS[:20] + PAYLOADS[21:]
    assert stats.corrupt_regions == 1


def test_corrupt_length_field_is_resynchronised() -> None:
    data = bytearray(encode_records(PAYLOADS))
    offset = len(encode_records(PAYLOADS[:10]))
    data[offset : offset + 4] = b"\xff\xff\xff\x7f"
    payloads, stats = _scan(bytes(data))
    assert payloads == PAYLOADS[:10] + PAYLOADS[11:]
    assert stats.corrupt_regions == 1


def test_zero_filled_tail_is_a_tail_not_records() -> None:
    data = encode_records(PAYLOADS) + b"\0" * 4096
    payloads, stats = _scan(data)
    assert payloads == PAYLOADS and stats.tail_bytes == 4096 and stats.corrupt_regions == 0
