"""The wire protocol between client and daemon (one ZeroMQ frame each way).

client -> daemon:  msgpack [PROTOCOL, client_id, batch_no, [event, ...]]
                   each event is itself msgpack-packed bytes, so the daemon logs them as is
daemon -> client:  msgpack [PROTOCOL, batch_no]   once every event of the batch is durable
                   (appended and fsync'd, or quarantined)
"""

from __future__ import annotations

import msgpack

PROTOCOL = 1
EVENT_VERSION = 1


def pack_event(event: dict) -> bytes:
    return msgpack.packb(event, use_bin_type=True)


def pack_batch(client_id: str, batch_no: int, events: list[bytes]) -> bytes:
    return msgpack.packb([PROTOCOL, client_id, batch_no, events], use_bin_type=True)


def pack_ack(batch_no: int) -> bytes:
    return msgpack.packb([PROTOCOL, batch_no])


def unpack_ack(frame: bytes) -> int | None:
    """The acknowledged batch number, or None for a frame that is not an ack."""
    try:
        message = msgpack.unpackb(frame, max_array_len=4, max_map_len=0, max_str_len=0, max_bin_len=0)
    except Exception:
        return None
    if isinstance(message, list) and len(message) == 2 and message[0] == PROTOCOL:
        return message[1] if isinstance(message[1], int) else None
    return None
