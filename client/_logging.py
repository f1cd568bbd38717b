"""Forwarding the pipeline's log records to the daemon, tagged with the current run and stage.

Two doors to the same path: a Loguru sink (`logger.add(stagewatch.loguru_sink)`) and a
stdlib `logging.Handler` (`logging.getLogger().addHandler(stagewatch.LoggingHandler())`).
The run and the stage come from the context (the innermost open stage of this thread or
task, else the current run); a record outside any run is not sent. Forwarding only
enqueues: it never blocks and never raises.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from stagewatch import _protocol as protocol
from stagewatch._run import _internal_error, _process_for_run, current_run, current_stage, failed_in

MAX_MESSAGE_CHARS = 60_000


def forward(
    level: str,
    message: str,
    logger_name: str | None,
    extra: dict[str, Any],
    ts_ns: int | None = None,
    error: BaseException | None = None,
) -> None:
    """Send one log record as a `log` event of the current run (if there is one).

    Outside every stage, a record about an exception that failed a stage (`error`, else the
    one being handled: the pipeline's `except` around the stage) carries that stage and
    sample, so the stage's failure shows among its own lines."""
    try:
        stage = current_stage()
        run = stage.run if stage is not None else current_run()
        if run is None:
            return
        where = (stage.name, stage.sample_id) if stage is not None else failed_in(error or sys.exc_info()[1])
        process = _process_for_run(run)
        at = run.now_ns()
        if ts_ns is not None:  # the record's age, on the run's clock (its stages' timeline)
            at = protocol.representable_ns(at + ts_ns - time.time_ns())
        event = protocol.log(
            process.client_id,
            run.id,
            at,
            level=level[:16],
            message=protocol.bounded_text(message, MAX_MESSAGE_CHARS),  # says how long it was; packable
            stage=where[0] if where else None,
            sample_id=where[1] if where else None,
            logger=(logger_name or "")[:256] or None,
            extra=_json_safe(extra),
        )
        process.sender.emit(event)
    except Exception as error:  # logging must never break the pipeline
        _internal_error(error)


def _json_safe(extra: dict[str, Any]) -> dict[str, Any]:
    return protocol.bounded_json(extra, protocol.MAX_EXTRA_CHARS) if extra else {}


def loguru_sink(message: Any) -> None:
    """A Loguru sink: `logger.add(stagewatch.loguru_sink)`."""
    record = message.record
    forward(
        record["level"].name,
        record["message"],
        record["name"],
        dict(record["extra"]),
        int(record["time"].timestamp() * 1e9),
        record["exception"].value if record["exception"] is not None else None,
    )


_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class LoggingHandler(logging.Handler):
    """A stdlib logging handler: `logging.getLogger().addHandler(stagewatch.LoggingHandler())`.

    Attributes passed with `extra={...}` travel as the record's extra fields.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "stagewatch":  # our own warnings describe the transport; keep them local
            return
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRIBUTES}
        error = record.exc_info[1] if record.exc_info else None
        forward(record.levelname, record.getMessage(), record.name, extra, int(record.created * 1e9), error)
