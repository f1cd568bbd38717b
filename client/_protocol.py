"""The wire protocol between client and daemon: event types, the envelope, one builder per
event type, and the frames that carry them. Every event anyone sends is built here (the
client, its logging sink, the daemon's own `client_lost` and `received`); the daemon's pydantic models
(stagewatch.daemon.projection._schema) validate what these builders make, and a test holds the two,
and docs/events.md, to the same fields.

Frames (one ZeroMQ frame each way):

    client -> daemon:  msgpack [PROTOCOL, client_id, batch_no, [event, ...]]
                       each event is itself msgpack-packed bytes, so the daemon logs them as is
    daemon -> client:  msgpack [PROTOCOL, batch_no]   once every event of the batch is durable
                       (appended and fsync'd, or quarantined)

The sender thread numbers each client event (`seq`) as it packs it; the daemon numbers its own.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import msgpack

PROTOCOL = 1
EVENT_VERSION = 1
DAEMON_CLIENT_ID = "daemon"  # the client id of the events the daemon writes itself

RUN_STARTED = "run_started"
STAGE_STARTED = "stage_started"
STAGE_FINISHED = "stage_finished"
STAGE_FAILED = "stage_failed"
ARTIFACT_SAVED = "artifact_saved"
SAMPLE_RESULT = "sample_result"
LOG = "log"
HEARTBEAT = "heartbeat"
RUN_FINISHED = "run_finished"
CLIENT_LOST = "client_lost"
EVENTS_LOST = "events_lost"
RECEIVED = "received"
RUN_EXPIRED = "run_expired"
EVENT_TYPES = (
    RUN_STARTED,
    STAGE_STARTED,
    STAGE_FINISHED,
    STAGE_FAILED,
    ARTIFACT_SAVED,
    SAMPLE_RESULT,
    LOG,
    HEARTBEAT,
    RUN_FINISHED,
    CLIENT_LOST,
    EVENTS_LOST,
    RECEIVED,
    RUN_EXPIRED,
)
# Written only by the daemon or by `stagewatch gc` into the log itself: refused from any sender.
DAEMON_EVENT_TYPES = frozenset({CLIENT_LOST, RECEIVED, RUN_EXPIRED})
ENVELOPE_FIELDS = ("v", "type", "client_id", "seq", "ts_ns", "run_id")

# The wire's value limits. A value within them can be stored and folded by every read model
# (Parquet int64 and timestamp[ns], msgpack, JSON), so the daemon's models refuse what lies
# outside and the client keeps its events inside (replacing what it cannot send with a note).
MAX_INT = 2**63 - 1
MAX_TS_NS = 7_258_118_400 * 10**9  # 2200-01-01: a stage's end (start + duration) stays in int64 ns
MAX_DURATION_MS = 1e12  # 31 years
CLOCK_HEADROOM_NS = 10 * 365 * 86_400 * 10**9  # a run may last this long on a clock set past 2190
MAX_MEGABYTES = 1e9  # a petabyte
MAX_TEXT_CHARS = 4096  # names of things, paths, ids, error types
MAX_LONG_TEXT_CHARS = 65_536  # messages, tracebacks
MAX_JSON_DEPTH = 32  # nesting of config snapshots, log extras, inline predictions
MAX_CONFIG_CHARS = 256 * 1024
MAX_EXTRA_CHARS = 16_000
MAX_ARTIFACT_WARNINGS = 64  # per saved file
MAX_PREDICTION_CHARS = 512 * 1024  # an inline prediction (boxes); arrays travel as saved files


def representable_ns(wall_ns: int) -> int:
    """A wall clock reading moved into what every timestamp holds, with years to spare for a
    run's length: a pipeline whose clock says 1965 or 2300 keeps its runs (their events would be
    refused) on the nearest time it can stamp; the daemon says how far off the clock was."""
    return min(max(wall_ns, 0), MAX_TS_NS - CLOCK_HEADROOM_NS)


def envelope(event_type: str, client_id: str, run_id: str, ts_ns: int) -> dict[str, Any]:
    """The fields every event has but `seq`, which its sender assigns."""
    return {"v": EVENT_VERSION, "type": event_type, "client_id": client_id, "ts_ns": ts_ns, "run_id": run_id}


def run_started(
    client_id: str,
    run_id: str,
    ts_ns: int,
    *,
    pipeline: str,
    config: dict[str, Any],
    host: str,
    pid: int,
    dataset: str | None,
    argv: list[str],
    environment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    event = envelope(RUN_STARTED, client_id, run_id, ts_ns)
    event.update(pipeline=pipeline, config=config, host=host, pid=pid, dataset=dataset, argv=argv)
    event["environment"] = environment or {}  # what the run starts on (client/_environment.py)
    return event


def stage_started(
    client_id: str,
    run_id: str,
    ts_ns: int,
    *,
    stage: str,
    span: int,
    parent_span: int | None,
    sample_id: str | None,
    input_path: str | None,
) -> dict[str, Any]:
    event = envelope(STAGE_STARTED, client_id, run_id, ts_ns)
    event.update(stage=stage, span=span, parent_span=parent_span, sample_id=sample_id, input_path=input_path)
    return event


def stage_finished(
    client_id: str,
    run_id: str,
    ts_ns: int,
    *,
    stage: str,
    span: int,
    parent_span: int | None,
    sample_id: str | None,
    input_path: str | None,
    start_ts_ns: int,
    duration_ms: float,
    output_paths: list[str],
    rss_start_mb: float | None,
    rss_peak_mb: float | None,
    rss_end_mb: float | None,
    gpu_peak_mb: float | None,
    gpu_source: str | None = None,
    gpu_devices: dict[str, float] | None = None,
    error: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    """`stage_finished`, or `stage_failed` when `error` = (type, message, traceback) is given.
    `gpu_source` and `gpu_devices` (device index -> peak MB) go only with a GPU reading.

    One literal, in `stage_started`'s order with the end's fields after: the sender builds
    one for nearly every stage, and composing it from `stage_started` and updates cost
    three times as much."""
    event = {
        "v": EVENT_VERSION,
        "type": STAGE_FINISHED if error is None else STAGE_FAILED,
        "client_id": client_id,
        "ts_ns": ts_ns,
        "run_id": run_id,
        "stage": stage,
        "span": span,
        "parent_span": parent_span,
        "sample_id": sample_id,
        "input_path": input_path,
        "start_ts_ns": start_ts_ns,
        "duration_ms": duration_ms,
        "output_paths": output_paths,
        "rss_start_mb": rss_start_mb,
        "rss_peak_mb": rss_peak_mb,
        "rss_end_mb": rss_end_mb,
        "gpu_peak_mb": gpu_peak_mb,
    }
    if gpu_source is not None:
        event["gpu_source"], event["gpu_devices"] = gpu_source, gpu_devices or {}
    if error is not None:
        event["error_type"], event["error_message"], event["traceback"] = error
    return event


def artifact_saved(
    client_id: str,
    run_id: str,
    ts_ns: int,
    *,
    stage: str,
    span: int,
    path: str,
    kind: str,
    size_bytes: int,
    sample_id: str | None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """`warnings`: what the saver could not keep as given (an attribute left out, say); they
    quote the user's names (a 10,000-character key): bounded here as the daemon's schema is."""
    event = envelope(ARTIFACT_SAVED, client_id, run_id, ts_ns)
    event.update(stage=stage, span=span, path=path, kind=kind, bytes=size_bytes, sample_id=sample_id)
    event["warnings"] = [bounded_text(warning) for warning in (warnings or [])[:MAX_ARTIFACT_WARNINGS]]
    return event


def sample_result(
    client_id: str, run_id: str, ts_ns: int, *, stage: str, sample_id: str, path: str | None, prediction: Any
) -> dict[str, Any]:
    event = envelope(SAMPLE_RESULT, client_id, run_id, ts_ns)
    event.update(stage=stage, sample_id=sample_id, path=path, prediction=prediction)
    return event


def log(
    client_id: str,
    run_id: str,
    ts_ns: int,
    *,
    level: str,
    message: str,
    stage: str | None = None,
    sample_id: str | None = None,
    logger: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    event = envelope(LOG, client_id, run_id, ts_ns)
    event.update(level=level, message=message, stage=stage, sample_id=sample_id, logger=logger, extra=extra or {})
    return event


def heartbeat(client_id: str, run_id: str, ts_ns: int, *, rss_mb: float | None) -> dict[str, Any]:
    event = envelope(HEARTBEAT, client_id, run_id, ts_ns)
    event["rss_mb"] = rss_mb
    return event


def run_finished(
    client_id: str,
    run_id: str,
    ts_ns: int,
    *,
    status: str,
    duration_ms: float,
    stages_failed: int,
    dropped_events: int,
    error_type: str | None,
    error_message: str | None,
) -> dict[str, Any]:
    event = envelope(RUN_FINISHED, client_id, run_id, ts_ns)
    event.update(
        status=status,
        duration_ms=duration_ms,
        stages_failed=stages_failed,
        dropped_events=dropped_events,
        error_type=error_type,
        error_message=error_message,
    )
    return event


def events_lost(client_id: str, run_id: str, ts_ns: int, *, events: int, reason: str) -> dict[str, Any]:
    """The client's last word on a run: `events` of its events that it numbered but could
    neither have acknowledged nor spool when it stopped (`reason` says why)."""
    event = envelope(EVENTS_LOST, client_id, run_id, ts_ns)
    event.update(events=events, reason=bounded_text(reason))
    return event


def client_lost(seq: int, run_id: str, ts_ns: int, *, lost_client_id: str, last_seen_ns: int) -> dict[str, Any]:
    """Written by the daemon (numbered by it) when a client with open work goes silent."""
    event = envelope(CLIENT_LOST, DAEMON_CLIENT_ID, run_id, ts_ns)
    event.update(seq=seq, lost_client_id=lost_client_id, last_seen_ns=last_seen_ns)
    return event


# The run id of the daemon's `received` markers, which belong to no run.
NO_RUN_ID = "00000000-0000-0000-0000-000000000000"


def received(seq: int, ts_ns: int, *, spooled: bool) -> dict[str, Any]:
    """Written by the daemon (numbered by it) into the event log before the events it takes in,
    at most about once a second: `ts_ns` is the daemon's clock when it received them, which
    holds for every event after it in the log up to the next marker. `spooled`: they came from
    a spool file (held back while no daemon ran), not live from a connected client."""
    event = envelope(RECEIVED, DAEMON_CLIENT_ID, NO_RUN_ID, ts_ns)
    event.update(seq=seq, spooled=spooled)
    return event


def run_expired(client_id: str, seq: int, run_id: str, ts_ns: int, *, ended_ns: int) -> dict[str, Any]:
    """Retention's decision, written to the log before it removes a finished run (by the daemon,
    or by `stagewatch gc` holding the home's lock): a replay of the log drops the run there, so
    a rebuild or a recovery gives what retention left."""
    event = envelope(RUN_EXPIRED, client_id, run_id, ts_ns)
    event.update(seq=seq, ended_ns=ended_ns)
    return event


def json_problem(value: Any) -> str | None:
    """What keeps a decoded JSON-like value from being stored (too deep, an integer outside
    int64), or None. Iterative: a hostile depth cannot exhaust the stack."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            if isinstance(item, int) and not -MAX_INT - 1 <= item <= MAX_INT:
                return f"an integer outside int64 ({str(item)[:40]})"
            continue
        if level > MAX_JSON_DEPTH:
            return f"nested deeper than {MAX_JSON_DEPTH} levels"
        stack.extend((child, level + 1) for child in children)
    return None


def bounded_json(value: Any, max_chars: int) -> Any:
    """A JSON-safe copy of `value` within the wire's limits. What cannot be sent as it is
    (unserialisable, over `max_chars` of JSON, too deep, huge integers) is replaced by a map
    that says so and keeps a prefix of the text: recorded, never raised, never dropped."""
    try:
        text = json.dumps(value, default=_plain, sort_keys=True)
    except (RecursionError, ValueError, TypeError) as error:
        return {"_unsendable": f"{type(error).__name__}: {error}"[:1000]}
    if len(text) > max_chars:
        return {"_truncated": text[:max_chars]}
    try:
        copy = json.loads(text)
    except RecursionError:
        return {"_unsendable": f"nested deeper than {MAX_JSON_DEPTH} levels", "_text": text[:1000]}
    problem = json_problem(copy)
    return copy if problem is None else {"_unsendable": problem, "_text": text[:1000]}


def _plain(value: Any) -> Any:
    """numpy arrays and numbers become lists and numbers; anything else its repr."""
    return value.tolist() if hasattr(value, "tolist") else repr(value)


def bounded_text(value: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """`value` without NUL characters or lone surrogates (what `os.fsdecode` makes of a path
    that is not UTF-8: msgpack cannot carry them), cut to `max_chars` (saying how long it was)."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            value = value.encode("utf-8", "backslashreplace").decode()
    if "\x00" in value:
        value = value.replace("\x00", "\\0")
    if len(value) > max_chars:
        note = f"…[{len(value):,} chars]"
        value = value[: max_chars - len(note)] + note
    return value


_packers = threading.local()  # msgpack.packb makes a Packer a call; one per thread (it has a buffer)


def _packer() -> msgpack.Packer:
    try:
        return _packers.packer
    except AttributeError:
        _packers.packer = packer = msgpack.Packer(use_bin_type=True)
        return packer


def pack_event(event: dict) -> bytes:
    """An event's payload (the sender packs one per event: a kept Packer costs 0.9 us, packb 1.3;
    its buffer stays the size of the largest event, bounded by the event size limits)."""
    return _packer().pack(event)


def event_type_and_run(payload: bytes) -> tuple[str, str]:
    """The type and the run id of an event that this client packed."""
    event = msgpack.unpackb(payload, raw=False)
    return event["type"], event["run_id"]


def pack_batch(client_id: str, batch_no: int, events: list[bytes]) -> bytes:
    # A fresh Packer: a kept one would keep its buffer at the size of the largest batch (4 MiB).
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
