"""Decoding and validating what arrives: batches from sockets, records from spools and the log.

Bad input never raises out of here: each rejection comes back as a `Rejected` with the
reason, for the daemon to count and quarantine.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from stagewatch._protocol import PROTOCOL
from stagewatch.daemon.projection._schema import Envelope, InvalidEvent, decode_packed

MAX_EVENT_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 100_000


@dataclass(frozen=True)
class Rejected:
    reason: str
    raw: bytes
    client_id: str | None = None


@dataclass(frozen=True)
class Batch:
    client_id: str
    batch_no: int
    payloads: list[bytes]


def decode_batch(frame: bytes) -> Batch | Rejected:
    """The batch in a client's frame (see stagewatch._protocol), or why it is not one."""
    try:
        message = msgpack.unpackb(
            frame,
            raw=False,
            max_array_len=MAX_BATCH_EVENTS,
            max_map_len=0,
            max_str_len=256,
            max_bin_len=MAX_EVENT_BYTES,
            max_ext_len=0,
        )
    except Exception as error:
        return Rejected(f"undecodable batch: {type(error).__name__}: {error}", frame)
    if not (isinstance(message, list) and len(message) == 4 and message[0] == PROTOCOL):
        return Rejected(f"expected [{PROTOCOL}, client_id, batch_no, events], got {_describe(message)}", frame)
    _, client_id, batch_no, payloads = message
    if not isinstance(client_id, str) or not isinstance(batch_no, int) or not isinstance(payloads, list):
        return Rejected("batch fields have the wrong types", frame)
    if not all(isinstance(payload, bytes) for payload in payloads):
        return Rejected("batch events must be msgpack-packed bytes", frame, client_id)
    return Batch(client_id, batch_no, payloads)


def decode_event(payload: bytes) -> Envelope | Rejected:
    """The validated event in one packed payload, or why it was refused."""
    if len(payload) > MAX_EVENT_BYTES:
        return Rejected(f"event of {len(payload)} bytes exceeds {MAX_EVENT_BYTES}", payload[:4096])
    try:
        return decode_packed(payload)
    except InvalidEvent as error:
        return _refusal(payload, str(error))


def _refusal(payload: bytes, problem: str) -> Rejected:
    """Why an event was refused, with its client if the payload says (the slow path only)."""
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:
        return Rejected(f"undecodable event: {problem}", payload)
    client_id = raw.get("client_id") if isinstance(raw, dict) else None
    return Rejected(f"invalid event: {problem}", payload, client_id if isinstance(client_id, str) else None)


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
