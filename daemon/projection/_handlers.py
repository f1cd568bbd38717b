"""The fold's handlers: what each event type does to its run (`HANDLERS`).

A handler changes the run's state and adds what it produced (rows, stage lines) to the
pending output; it depends on nothing but the events and their order. Events may arrive out
of order (a spooled start after a live finish), so every handler merges into whatever the
run already holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from stagewatch._gpu import SOURCE_NOTES
from stagewatch.daemon.projection._outcomes import run_end_status
from stagewatch.daemon.projection._output import PendingOutput
from stagewatch.daemon.projection._runstate import RunState, ended_add, ended_has, ended_remove
from stagewatch.daemon.projection._stages import (
    encode_line_into,
    ended_line,
    finish,
    iso,
    new_stage,
    row_of_end,
    stage_row,
)


def span_key(event: Any) -> str:
    return f"{event.client_id}:{event.span}"


def on_run_started(run: RunState, event: Any, lsn: int, output: PendingOutput) -> None:
    run.pipeline, run.host, run.pid, run.client_id = event.pipeline, event.host, event.pid, event.client_id
    run.argv, run.config, run.dataset = list(event.argv), event.config, event.dataset
    run.environment = event.environment
    run.start_ns, run.started_at = event.ts_ns, iso(event.ts_ns)


def _open_entry(run: RunState, event: Any, key: str) -> dict[str, Any]:
    entry = run.open.get(key)
    if entry is None:
        entry = run.open[key] = new_stage(event)
        run.counts["stages"] += 1
    return entry


def on_stage_started(run: RunState, event: Any, lsn: int, output: PendingOutput) -> None:
    if ended_has(run.ended, event.client_id, event.span):
        return  # a start that arrives after its end adds nothing
    entry = _open_entry(run, event, span_key(event))
    if entry["start_ns"] is None:
        entry.update(start_ns=event.ts_ns, started_at=iso(event.ts_ns))


def on_stage_finished(run: RunState, event: Any, lsn: int, output: PendingOutput) -> None:
    if ended_has(run.ended, event.client_id, event.span):
        return  # already ended: a crash verdict that a late finish cannot undo
    end_ns = event.start_ts_ns + int(event.duration_ms * 1e6)
    if event.gpu_source and event.gpu_source not in run.gpu_sources:
        names = event.gpu_source.split("+")
        run.gpu_sources[event.gpu_source] = "; ".join(SOURCE_NOTES[name] for name in names)
    entry = run.open.pop(span_key(event), None)
    if entry is None and event.type == "stage_finished":  # the common case: a short stage sends only its end
        run.counts["stages"] += 1
        line, row = ended_line(event, end_ns), row_of_end(run, event, end_ns, lsn)
        _ended(run, event.client_id, event.span, "ok", line, row, output)
        return
    status = "failed" if event.type == "stage_failed" else "ok"
    if entry is None:
        entry = new_stage(event)
        run.counts["stages"] += 1
    entry.update(finish(event, status, end_ns))
    if status == "failed":
        entry["error"] = {"type": event.error_type, "message": event.error_message, "traceback": event.traceback}
    if entry["error"] is not None:
        run.record_error(entry, end_ns)
    row = stage_row(run, entry, end_ns, lsn)
    _ended(run, entry["client_id"], entry["span"], entry["status"], entry, row, output)


def _ended(run: RunState, client_id: str, span: int, status: str, line: Any, row: tuple, output: PendingOutput) -> None:
    """An ended stage leaves as an audit line and a row."""
    ended_add(run.ended, client_id, span)
    run.counts[status] += 1
    lines = output.stage_lines.get(run.run_id)
    if lines is None:
        lines = output.stage_lines[run.run_id] = bytearray()
    # Encoded now, into the run's pending bytes: the line's objects are freed while hot
    # instead of kept (about 1.7 KB a stage) until the next flush.
    encode_line_into(line, lines, -1)
    lines.append(10)  # b"\n"
    output.rows["stage_executions"].append(row)


def on_artifact_saved(run: RunState, event: Any, lsn: int, output: PendingOutput) -> None:
    # Saved inside the stage, so it comes before the stage's end (per client order).
    entry = _open_entry(run, event, span_key(event))
    artifact = {"path": event.path, "kind": event.kind, "bytes": event.bytes, "sample_id": event.sample_id}
    if event.warnings:
        artifact["warnings"] = list(event.warnings)
    entry["artifacts"].append(artifact)
    run.counts["artifacts"] += 1


def on_run_finished(run: RunState, event: Any, lsn: int, output: PendingOutput) -> None:
    if run.complete:
        return
    error = {"type": event.error_type, "message": event.error_message} if event.error_type else None
    status = run_end_status(event.status, event.error_type, run.counts["failed"], run.counts["crashed"])
    output.rows["runs"].append(run.close(status, event.ts_ns, lsn, error, event.duration_ms))


def on_events_lost(run: RunState, event: Any, lsn: int, output: PendingOutput) -> None:
    # From any client of the run: a forked worker's events are lost on its own account.
    run.events_lost += event.events
    run.events_lost_reason = event.reason


def on_client_lost(run: RunState, event: Any, lsn: int, output: PendingOutput) -> None:
    """Crash the lost client's open stages and, if it owns the run, the run: rows and the
    audit trail say so at once. Provisionally: the client's next event withdraws it all
    (`resume_client`)."""
    lost = event.lost_client_id
    closes_run = run.client_id in (lost, None) and not run.complete
    if closes_run or any(entry["client_id"] == lost for entry in run.open.values()):
        run.lost[lost] = {
            "last_seen_ns": event.last_seen_ns,
            "declared_ns": event.ts_ns,
            "lsn": lsn,
            "closed_run": closes_run,
        }
    last_seen = run.pipeline_time(event.last_seen_ns)
    for key, entry in [(k, e) for k, e in run.open.items() if e["client_id"] == lost]:
        start = entry["start_ns"] or last_seen
        end = max(start, last_seen)
        last_rss = run.last_rss_mb.get(lost)
        message = "the process died during this stage" + (
            f" (last RSS reading {last_rss:.0f} MB)" if last_rss is not None else ""
        )
        entry["memory"]["rss_end_mb"] = last_rss
        entry.update(
            status="crashed",
            start_ns=start,
            started_at=iso(start),
            finished_at=iso(end),
            duration_ms=(end - start) / 1e6,
            error={"type": "ClientLost", "message": message, "traceback": ""},
        )
        del run.open[key]
        run.record_error(entry, end)
        ended_add(run.ended, lost, entry["span"])
        run.counts["crashed"] += 1
        run.provisional[key] = entry
        output.rows["stage_executions"].append(stage_row(run, entry, end, lsn))
    if closes_run:
        error = {"type": "ClientLost", "message": "the pipeline process stopped sending heartbeats (killed or crashed)"}
        output.rows["runs"].append(run.close("crashed", max(last_seen, run.start_ns or last_seen), lsn, error))


def resume_client(run: RunState, client_id: str, resumed_ns: int, output: PendingOutput) -> None:
    """A client declared lost sent again (it was stopped, suspended, or held the GIL, not
    dead): its crashed stages run again until their real ends come, the run too if the loss
    closed it, their crash rows are taken back, and the trail notes the gap."""
    loss = run.lost.pop(client_id)
    reopened = [key for key, entry in run.provisional.items() if entry["client_id"] == client_id]
    for key in reopened:
        entry = run.provisional.pop(key)
        ended_remove(run.ended, client_id, entry["span"])
        run.counts["crashed"] -= 1
        entry.update(status="running", finished_at=None, duration_ms=None, error=None)
        entry["memory"]["rss_end_mb"] = None
        run.open[key] = entry
    kept = [e for e in run.errors if not (e["client_id"] == client_id and e["type"] == "ClientLost")]
    if len(kept) != len(run.errors):
        run.errors = kept
        run.first_failed_stage = kept[0]["stage"] if kept else None
    if loss["closed_run"] and run.complete:
        run.status, run.complete, run.error = "running", False, None
        run.end_ns = run.finished_at = run.duration_ms = None
    run.gaps.append(
        {
            "client_id": client_id,
            "silent_from": iso(loss["last_seen_ns"]),
            "declared_lost_at": iso(loss["declared_ns"]),
            "resumed_at": iso(resumed_ns),
            "silent_s": round(max(0, resumed_ns - loss["last_seen_ns"]) / 1e9, 3),
            "stages_resumed": len(reopened),
            "note": "the client was declared lost after this silence and sent again (stopped, suspended "
            "or busy, not dead): the crash verdict was withdrawn",
        }
    )
    output.withdraw(run.run_id, loss["lsn"])


def on_log(run: RunState, event: Any, lsn: int, output: PendingOutput) -> None:
    run.counts["logs"] = run.counts.get("logs", 0) + 1
    extra = json.dumps(event.extra, default=str, sort_keys=True) if event.extra else None
    output.rows["logs"].append(
        {
            "run_id": run.run_id,
            "pipeline": run.pipeline,
            "time": event.ts_ns,
            "level": event.level,
            "stage": event.stage,
            "sample_id": event.sample_id,
            "logger": event.logger,
            "message": event.message,
            "extra": extra,
            "client_id": event.client_id,
            "lsn": lsn,
        }
    )


def on_sample_result(run: RunState, event: Any, lsn: int, output: PendingOutput) -> None:
    run.counts["sample_results"] = run.counts.get("sample_results", 0) + 1


Handler = Callable[[RunState, Any, int, PendingOutput], None]
# Event type -> what folds it into its run (heartbeats carry no run state of their own).
HANDLERS: dict[str, Handler] = {
    "run_started": on_run_started,
    "stage_started": on_stage_started,
    "stage_finished": on_stage_finished,
    "stage_failed": on_stage_finished,
    "artifact_saved": on_artifact_saved,
    "sample_result": on_sample_result,
    "log": on_log,
    "run_finished": on_run_finished,
    "client_lost": on_client_lost,
    "events_lost": on_events_lost,
}
# Only the process that started a run starts it (another client cannot take it over) or finishes it.
OWNER_EVENTS = frozenset({"run_started", "run_finished"})
