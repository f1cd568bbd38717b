"""What the projection holds of one run (`RunState`), and the ranges of its ended stages.

Memory stays bounded by what is running, not by how long a run is: a run's state holds
its summary, errors and *open* stages; a stage that ends leaves as an audit line
(appended to the run's stages.jsonl) and a table row.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, fields
from typing import Any

from stagewatch.daemon.projection._outcomes import FINISHED_WITH_FAILURES
from stagewatch.daemon.projection._stages import audit_json, iso, with_every_key

AUDIT_SCHEMA = "stagewatch.audit/1"  # the whole trail, as `load_audit` assembles it (`stagewatch show --json --all`)
# runs/{id}/audit.json: the trail's head. Its ended stages are not in it: they are the first
# `stages_bytes` bytes of stages.jsonl (each stage is on disk once); `running` holds the stages
# still running (and those a lost client's crash ended provisionally).
AUDIT_HEAD_SCHEMA = "stagewatch.audit-head/1"
MAX_ERRORS_PER_RUN = 10_000
# Per client of a run: ranges of ended spans kept, so that a start that comes after its end
# never reopens the stage (the span is crashed at the run's end: its row twice). Spans end
# about in order, so the ranges merge as they come; a client whose ends leave more gaps than
# this forgets its oldest first. (The last 4,096 ended stages were kept: a start that a
# pipeline spooled while the daemon was down came 60,000 ends after its own end.)
MAX_ENDED_RANGES = 4_096
# A pipeline clock this far from the daemon's is reported (audit trail, Run page). The estimate
# (`RunState.clock_offset_ns`) is good to about a second (`received` markers come at most once a
# second) plus the fastest delivery; NTP keeps a healthy host within well under a second.
CLOCK_SKEW_REPORT_NS = 60 * 1_000_000_000


def _new_counts() -> dict[str, int]:
    return {"stages": 0, "ok": 0, "failed": 0, "crashed": 0, "artifacts": 0, "events": 0}


@dataclass(slots=True)
class RunState:
    """What the projection holds of one run: the audit trail's summary, its errors and its
    *open* stages (an ended stage leaves as an audit line and a table row)."""

    run_id: str
    pipeline: str | None = None
    status: str = "running"
    complete: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    duration_ms: float | None = None
    host: str | None = None
    pid: int | None = None
    client_id: str | None = None
    argv: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)  # Python, packages, GPUs (client/_environment.py)
    dataset: str | None = None
    error: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=_new_counts)
    errors: list[dict[str, Any]] = field(default_factory=list)
    errors_dropped: int = 0
    events_lost: int = 0  # events its clients numbered but could neither deliver nor spool (`events_lost`)
    events_lost_reason: str | None = None
    first_failed_stage: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    last_lsn: int = -1
    # The daemon's clock when its first and its last event arrived (None before the log had
    # `received` markers): retention counts a run's age from `received_last_ns`, so a pipeline
    # clock in 1970 or 2100 neither deletes it at once nor keeps it for ever.
    received_first_ns: int | None = None
    received_last_ns: int | None = None
    # The pipeline's clock minus the daemon's: the largest (emitted - received) of the run's
    # events that came live (not from a spool). A delivery delay only lowers (emitted -
    # received), so the fastest event bounds the true offset best; spooled events, held back
    # while no daemon ran, say nothing about the clock. None: nothing came live.
    clock_offset_ns: int | None = None
    last_rss_mb: dict[str, float] = field(default_factory=dict)  # client -> its last heartbeat's RSS
    gpu_sources: dict[str, str] = field(default_factory=dict)  # each GPU source its stages used -> what it sees
    # Clients the daemon declared lost (silent past the client timeout) and that have not sent
    # since: client -> {"last_seen_ns", "declared_ns", "lsn" of the client_lost, "closed_run"}.
    # A loss is provisional: the client's next event withdraws it (`Projector._resume`).
    lost: dict[str, dict[str, Any]] = field(default_factory=dict)
    gaps: list[dict[str, Any]] = field(default_factory=list)  # losses withdrawn: how long each client was silent
    open: dict[str, dict[str, Any]] = field(default_factory=dict)  # "client:span" -> running stage entry
    ended: dict[str, list[int]] = field(default_factory=dict)  # client -> ended spans (`ended_add`)
    # "client:span" -> the entry of a stage crashed by a loss: in the audit's stages and a row,
    # never a stages.jsonl line, so that the real end can take its place.
    provisional: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RUN_FIELDS}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunState:
        """From a checkpoint's state, or from an audit trail's summary (a closed run reopened
        for an event that came late: its running stages were none, its recent ends are gone)."""
        known = {name: state[name] for name in _RUN_FIELDS if name in state}  # a checkpoint may hold older keys
        run = cls(**known)
        if any(value is None for value in run.ended.values()):  # a checkpoint's "client:span" keys (before ranges)
            keys, run.ended = list(run.ended), {}
            for key in keys:
                client_id, _, span = key.rpartition(":")
                ended_add(run.ended, client_id, int(span))
        run.counts = {key: value for key, value in run.counts.items() if key != "running"}
        if "provisional" not in state:  # an audit trail's head: its crashed stages of clients still lost
            run.provisional = {
                f"{stage['client_id']}:{stage['span']}": stage
                for stage in state.get("running", state.get("stages", []))  # "stages": a whole trail (audit/1)
                if stage.get("status") == "crashed" and stage.get("client_id") in run.lost
            }
        run.open = {key: with_every_key(entry) for key, entry in run.open.items()}
        run.provisional = {key: with_every_key(entry) for key, entry in run.provisional.items()}
        return run

    def audit_summary(self) -> dict[str, Any]:
        """The run's part of its audit trail: everything but the stages."""
        summary = {"schema": AUDIT_SCHEMA}
        summary.update((name, getattr(self, name)) for name in _AUDIT_FIELDS)
        summary["counts"] = {**self.counts, "running": len(self.open)}
        summary["clock_skew"] = clock_skew(self.clock_offset_ns)
        return summary

    def audit_head(self, stages_bytes: int, stages_ended: int | None) -> bytes:
        """audit.json: the summary, how much of stages.jsonl holds its ended stages, and the
        stages still running (and those a lost client's crash ended provisionally: never a
        stages.jsonl line, so that the real end can take its place if the client comes back)."""
        head = self.audit_summary()
        head["schema"] = AUDIT_HEAD_SCHEMA
        head["stages_bytes"] = stages_bytes
        head["stages_ended"] = stages_ended  # the lines in those bytes (None: not known, readers count them)
        head["running"] = [*self.open.values(), *self.provisional.values()]
        return audit_json(head)

    def pipeline_time(self, daemon_ns: int) -> int:
        """A moment of the daemon's clock (when it last heard from a client it declared lost) on
        the pipeline's clock, the one every other time of the run is on: corrected by the
        measured offset once it is large enough to report (below that, the estimate's own error
        would move a crash's end more than the clocks differ)."""
        offset = self.clock_offset_ns
        return daemon_ns + offset if clock_skew(offset) is not None else daemon_ns

    def record_error(self, entry: dict, end_ns: int) -> None:
        """An ended stage's error, in the trail's summary (every error stays in stages.jsonl)."""
        self.first_failed_stage = self.first_failed_stage or entry["stage"]
        if len(self.errors) >= MAX_ERRORS_PER_RUN:
            self.errors_dropped += 1
            return
        self.errors.append(
            {
                "stage": entry["stage"],
                "span": entry["span"],
                "client_id": entry["client_id"],
                "sample_id": entry["sample_id"],
                "type": entry["error"]["type"],
                "message": entry["error"]["message"],
                "at": iso(end_ns),
                "input_path": entry["input_path"],
            }
        )

    def close(
        self, status: str, end_ns: int, lsn: int, error: dict | None, duration_ms: float | None = None
    ) -> dict[str, Any]:
        """End the run (its finish, or its client lost); its row in the runs table."""
        if status == "ok" and self.counts["crashed"]:
            status = FINISHED_WITH_FAILURES
        if duration_ms is None:  # no monotonic reading from the client: use wall clock
            duration_ms = (end_ns - (self.start_ns or end_ns)) / 1e6
        self.status, self.complete, self.error = status, True, error
        self.end_ns, self.finished_at, self.duration_ms = end_ns, iso(end_ns), duration_ms
        first_error = self.error or (self.errors[0] if self.errors else {})
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status,
            "host": self.host,
            "pid": self.pid,
            "start_time": self.start_ns,
            "end_time": self.end_ns,
            "duration_ms": self.duration_ms,
            "stages": self.counts["stages"],
            "stages_failed": self.counts["failed"],
            "stages_crashed": self.counts["crashed"],
            "failed_stage": self.first_failed_stage,
            "error_type": first_error.get("type"),
            "error_message": first_error.get("message"),
            "dataset": self.dataset,
            "lsn": lsn,
            "received_time": self.received_last_ns,
        }


def clock_skew(offset_ns: int | None) -> dict[str, Any] | None:
    """What the audit trail says of a pipeline clock off by `offset_ns` (None within
    `CLOCK_SKEW_REPORT_NS`, or unmeasured)."""
    if offset_ns is None or abs(offset_ns) < CLOCK_SKEW_REPORT_NS:
        return None
    direction = "ahead of" if offset_ns > 0 else "behind"
    return {
        "offset_s": round(offset_ns / 1e9, 3),
        "message": (
            f"the pipeline's clock was {_span_words(abs(offset_ns) / 1e9)} {direction} the daemon's: its times "
            "(started, finished) are as the pipeline stamped them; retention counts the run's age from when "
            "the daemon received it"
        ),
    }


def _span_words(seconds: float) -> str:
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:,.0f} seconds"


_RUN_FIELDS = [f.name for f in fields(RunState)]
_AUDIT_FIELDS = [name for name in _RUN_FIELDS if name not in ("open", "ended", "provisional")]


def ended_has(ended: dict[str, list[int]], client_id: str, span: int) -> bool:
    """Whether `span` of `client_id` has ended. `ended` holds, per client, the bounds of
    half-open ranges [lo, hi) in order: a span is in one when an odd number of bounds are <= it."""
    bounds = ended.get(client_id)
    return bounds is not None and bisect.bisect_right(bounds, span) % 2 == 1


def ended_add(ended: dict[str, list[int]], client_id: str, span: int) -> None:
    """Record that `span` of `client_id` ended (ranges merge; at most `MAX_ENDED_RANGES`)."""
    bounds = ended.get(client_id)
    if not bounds:  # none yet, or emptied by `ended_remove` (a crash withdrawn)
        ended[client_id] = [span, span + 1]
        return
    if bounds[-1] == span:  # the common case: the span after the last range
        bounds[-1] = span + 1
        return
    index = bisect.bisect_right(bounds, span)
    if index % 2:
        return  # ended already
    joins_before = index > 0 and bounds[index - 1] == span
    joins_after = index < len(bounds) and bounds[index] == span + 1
    if joins_before and joins_after:
        del bounds[index - 1 : index + 1]
    elif joins_before:
        bounds[index - 1] = span + 1
    elif joins_after:
        bounds[index] = span
    else:
        bounds[index:index] = [span, span + 1]
        if len(bounds) > 2 * MAX_ENDED_RANGES:
            del bounds[:2]


def ended_remove(ended: dict[str, list[int]], client_id: str, span: int) -> None:
    """Forget that `span` of `client_id` ended (a crash verdict withdrawn): its range splits."""
    bounds = ended.get(client_id)
    index = bisect.bisect_right(bounds, span) if bounds is not None else 0
    if index % 2 == 0:
        return  # not ended
    low, high = bounds[index - 1], bounds[index]
    bounds[index - 1 : index + 1] = [b for pair in ((low, span), (span + 1, high)) if pair[0] < pair[1] for b in pair]
