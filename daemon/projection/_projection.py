"""Projections: a fold over the event log into read models (audit trails and table rows).

`Projector.apply(event, lsn)` is the only way state changes, and it depends on nothing
but the events and their order, so replaying the log gives the same read models. It
writes no files: the store (`_store.py`) persists what it produces. Events may arrive
out of order (a spooled start after a live finish), so every handler merges into
whatever the run already holds.

Memory stays bounded by what is running, not by how long a run is: a run's state holds
its summary, errors and *open* stages; a stage that ends leaves as an audit line
(`stage_lines`, appended to the run's stages.jsonl) and a table row.
"""

from __future__ import annotations

import bisect
import functools
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import msgspec

from stagewatch._gpu import SOURCE_NOTES
from stagewatch._protocol import DAEMON_CLIENT_ID
from stagewatch.daemon.projection._outcomes import FINISHED_WITH_FAILURES, run_end_status
from stagewatch.daemon.projection._rows import DAEMON_TABLES, DEFINITIONS, Source, Table

AUDIT_SCHEMA = "stagewatch.audit/1"  # the whole trail, as `load_audit` assembles it (`stagewatch show --json --all`)
# runs/{id}/audit.json: the trail's head. Its ended stages are not in it: they are the first
# `stages_bytes` bytes of stages.jsonl (each stage is on disk once); `running` holds the stages
# still running (and those a lost client's crash ended provisionally).
AUDIT_HEAD_SCHEMA = "stagewatch.audit-head/1"
MAX_CLOSED_RUNS = 100_000
TABLE_NAMES = DAEMON_TABLES
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


def iso(ns: int | None) -> str | None:
    """UTC ISO 8601 with microseconds, or None (2026-11-26T08:29:14.517734+00:00)."""
    if ns is None:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    millis, micros = divmod(rest // 1000, 1000)
    return _iso_second(seconds) + _THREE_DIGITS[millis] + _THREE_DIGITS_UTC[micros]


@functools.lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    # Formatting a datetime costs about 1 us; events of one second share the prefix.
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


# Two calls a stage: concatenating looked-up digits costs 0.3 us, formatting "{:06d}" 0.5.
_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))
_THREE_DIGITS_UTC = tuple(f"{n:03d}+00:00" for n in range(1000))


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
        run.open = {key: _with_every_key(entry) for key, entry in run.open.items()}
        run.provisional = {key: _with_every_key(entry) for key, entry in run.provisional.items()}
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


# -- a stage's audit line and row, compiled from their definitions (_rows) -------------------
# The fold builds a line and a row for every stage (100k a second under load): each builder is
# one literal, compiled once from the definitions (as dataclasses compiles `__init__`), so a
# column is named in _rows alone and costs no more than a hand-written literal. A STAGE or
# MEMORY column is read by its name from the stage's event or entry; a RUN column from the
# run's state; what the fold works out itself (the FOLD columns, the line's own keys) is below.
# A list (output_paths) is shared by the event, the line and the row: read-only, never copied.
# `help(builder)` shows a builder's code.
_IDENTITY = ("stage", "span", "client_id")  # set by a stage's first event; its end changes none of them
_LINE_OF_END = {  # the stage line's own keys, of a stage that sent only its end
    "status": '"ok"',
    "start_ns": "event.start_ts_ns",
    "started_at": "iso(event.start_ts_ns)",
    "finished_at": "iso(end_ns)",
    "error": "None",
    "artifacts": "[]",
}
_LINE_OF_START = {  # ... of a stage's entry as its first event opens it
    "status": '"running"',
    "start_ns": "None",
    "started_at": "None",
    "finished_at": "None",
    "error": "None",
    "artifacts": "[]",
}
_LINE_AT_END = {  # ... that the end sets in its entry (`status` given; error and artifacts are the fold's)
    "status": "status",
    "start_ns": "event.start_ts_ns",
    "started_at": "iso(event.start_ts_ns)",
    "finished_at": "iso(end_ns)",
}
_ROW_OF_END = {  # the FOLD columns, of a stage that sent only its end
    "status": '"ok"',
    "start_time": "event.start_ts_ns",
    "end_time": "end_ns",
    "error_type": "None",
    "error_message": "None",
    "lsn": "lsn",
}
_ROW_OF_ENTRY = {  # ... of an ended stage's entry
    "status": 'entry["status"]',
    "start_time": 'entry["start_ns"]',
    "end_time": "end_ns",
    "error_type": '(entry["error"] or {}).get("type")',
    "error_message": '(entry["error"] or {}).get("message")',
    "lsn": "lsn",
}


@dataclass(frozen=True)
class StageBuilders:
    """A table's stage lines and rows, built from its definition (`stage_builders`)."""

    row_fields: tuple[str, ...]  # a row tuple's columns, in order (the schema's)
    memory_fields: tuple[str, ...]  # the keys of a line's "memory"
    # The line of a stage whose end came first (the common case: a short stage sends only its
    # end): the JSON of `new_stage`'s entry with `finish` applied, key for key, built in one call
    # (a struct costs a third of the two dicts and encodes faster).
    line: type[msgspec.Struct]
    memory: type[msgspec.Struct]  # its "memory"
    new_stage: Callable[[Any], dict[str, Any]]  # (event) -> the entry its first event opens
    finish: Callable[[Any, str, int], dict[str, Any]]  # (event, status, end_ns) -> what the end sets in it
    ended_line: Callable[[Any, int], msgspec.Struct]  # (end event, end_ns) -> its line, no entry
    row_of_end: Callable[[Any, Any, int, int], tuple]  # (run, end event, end_ns, lsn) -> its row
    stage_row: Callable[[Any, dict, int, int], tuple]  # (run, ended entry, end_ns, lsn) -> its row


def stage_builders(table: Table) -> StageBuilders:
    """The fold's builders of `table`'s rows and stage lines (stage_executions', or a variant's:
    tests/daemon/test_rows.py adds a column and sees it arrive)."""
    _check_definitions(table)
    memory_fields = table.of(Source.MEMORY)
    # A struct is encoded as a dict of the same keys would be (msgspec writes fields in order).
    line = msgspec.defstruct("EndedStage", table.line, gc=False)
    memory = msgspec.defstruct("StageMemory", memory_fields, gc=False)
    names = {"iso": iso, "EndedStage": line, "StageMemory": memory, "memory_fields": memory_fields}
    code = {**_line_code(table), **_row_code(table)}
    builders = {name: _compiled(name, parameters, result, names) for name, (parameters, result) in code.items()}
    return StageBuilders(table.names, memory_fields, line, memory, **builders)


def _check_definitions(table: Table) -> None:
    """Refuse a definition the builders cannot serve (at import: a column forgotten in one place)."""
    stage, own = set(table.of(Source.STAGE)), {*_LINE_OF_END, "memory"}
    problems = [
        f"{sorted(stage - set(table.line))}: STAGE columns missing from its stage line",
        f"{sorted(set(table.line) - stage - own)}: stage line keys that are neither STAGE columns nor the line's own",
        f"{sorted(set(table.of(Source.FOLD)) - set(_ROW_OF_END))}: FOLD columns without the fold's expressions",
        f"{sorted(c.name for c in table.columns if c.source is None)}: columns without a source",
    ]
    problems = [problem for problem in problems if not problem.startswith("[]")]
    if problems:
        raise ValueError(f"{table.name}'s definition: " + "; ".join(problems))


def _line_code(table: Table) -> dict[str, tuple[str, str]]:
    """Builder name -> (parameters, expression) of a stage's line and entry."""
    stage, memory_fields = table.of(Source.STAGE), table.of(Source.MEMORY)
    lists = {column.name for column in table.columns if column.is_list}  # empty until the stage's end

    def at_start(name: str) -> str:  # the first event may be a start or an artifact: it has some fields
        return f"event.{name}" if name in _IDENTITY else "[]" if name in lists else f"getattr(event, {name!r}, None)"

    def line(own: dict[str, str], memory: str, value: Callable[[str], str]) -> dict[str, str]:
        return {key: own[key] if key in own else memory if key == "memory" else value(key) for key in table.line}

    end_memory = "StageMemory(" + ", ".join(f"event.{name}" for name in memory_fields) + ")"
    ended = line(_LINE_OF_END, end_memory, lambda name: f"event.{name}")
    at_end = {**_LINE_AT_END, **{name: f"event.{name}" for name in stage if name not in _IDENTITY}}
    at_end["memory"] = _dict({name: f"event.{name}" for name in memory_fields})
    return {
        "new_stage": ("event", _dict(line(_LINE_OF_START, "dict.fromkeys(memory_fields)", at_start))),
        "finish": ("event, status, end_ns", _dict(at_end)),
        "ended_line": ("event, end_ns", f"EndedStage({', '.join(ended.values())})"),
    }


def _row_code(table: Table) -> dict[str, tuple[str, str]]:
    """Builder name -> (parameters, expression) of a stage's row, a tuple in the columns' order."""

    def row(fold: dict[str, str], value: Callable[[str], str], memory: Callable[[str], str]) -> str:
        read = {Source.FOLD: fold.__getitem__, Source.RUN: "run.{}".format, Source.STAGE: value, Source.MEMORY: memory}
        return "(" + ", ".join(read[column.source](column.name) for column in table.columns) + ",)"

    event = "event.{}".format
    return {
        "row_of_end": ("run, event, end_ns, lsn", row(_ROW_OF_END, event, event)),
        "stage_row": (
            "run, entry, end_ns, lsn",
            row(_ROW_OF_ENTRY, "entry[{!r}]".format, 'entry["memory"][{!r}]'.format),
        ),
    }


def _dict(values: dict[str, str]) -> str:
    return "{" + ", ".join(f"{key!r}: {value}" for key, value in values.items()) + "}"


def _compiled(name: str, parameters: str, expression: str, names: dict[str, Any]) -> Callable:
    """`def {name}({parameters}): return {expression}` with `names` in scope, compiled; its code is its docstring."""
    source = f"def {name}({parameters}):\n    return {expression}\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<stage builder {name}>", "exec"), names, namespace)
    function = namespace[name]
    function.__doc__ = source
    return function


_STAGE = stage_builders(DEFINITIONS["stage_executions"])
_LINE_KEYS = DEFINITIONS["stage_executions"].line


def _with_every_key(entry: dict[str, Any]) -> dict[str, Any]:
    """A stage's entry as an earlier version kept it (a checkpoint's, an audit trail's), with
    the keys of columns added since, null: a row built from it finds every column."""
    memory = {**dict.fromkeys(MEMORY_FIELDS), **(entry.get("memory") or {})}
    return {**dict.fromkeys(_LINE_KEYS), **entry, "memory": memory}


# A stage_executions row is a tuple of these columns (the store's schema, in its order): the
# fold makes 100k of them a second under load, and a tuple costs less than a dict to build and
# to turn into Arrow columns (Store.write_rows).
STAGE_ROW_FIELDS = _STAGE.row_fields
MEMORY_FIELDS = _STAGE.memory_fields
EndedStage = _STAGE.line  # the line of a stage whose end came first (the common case: a short stage sends only its end)
StageMemory = _STAGE.memory
_new_stage, _finish, _ended_line = _STAGE.new_stage, _STAGE.finish, _STAGE.ended_line
_row_of_end, _stage_row = _STAGE.row_of_end, _STAGE.stage_row


# The one encoder of the audit trail, stages.jsonl lines and audit.json alike (a running
# stage's entry and an ended one's line are spliced into one array): msgspec writes the same
# compact JSON as json.dumps(separators=(",", ":")) (UTF-8 instead of \u escapes) about 5x
# faster (an ended stage's line cost 12 us, then 2-3).
_AUDIT_ENCODER = msgspec.json.Encoder(enc_hook=str)
audit_json = _AUDIT_ENCODER.encode
_encode_line_into = _AUDIT_ENCODER.encode_into


def stage_lines_bytes(entries: list[Any]) -> bytes:
    """Ended stages (dicts or `EndedStage`s) as stages.jsonl lines."""
    return _AUDIT_ENCODER.encode_lines(entries)


def _span_key(event: Any) -> str:
    return f"{event.client_id}:{event.span}"


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


class Projector:
    """Folds events into run states, ended-stage audit lines and rows for Parquet tables.

    `apply` is the only way state changes; the read-model writer takes what it produced
    (`take_output`, `take_dirty`) and never changes the state itself."""

    def __init__(self) -> None:
        self.runs: dict[str, RunState] = {}
        self.closed: OrderedDict[str, str | None] = OrderedDict()  # evicted finished runs -> pipeline
        self.late_events = 0
        self.foreign_events = 0  # run_started / run_finished sent by another client than the run's
        self.rows: dict[str, list[Any]] = {table: [] for table in TABLE_NAMES}  # see ROW_FIELDS
        self.stage_lines: dict[str, bytearray] = {}  # run -> ended stages to append, as stages.jsonl lines
        self.dirty: set[str] = set()
        # The last `received` marker folded: (the daemon's clock then, whether from a spool).
        self.received: tuple[int, bool] | None = None
        # (run, lsn of a client_lost) whose rows a withdrawn loss takes back, for the writer to
        # delete from the parts already written (`take_withdrawn`).
        self.withdrawn: list[tuple[str, int]] = []
        # Runs that retention removed (their run_expired event): a later event of one is late,
        # never a new run. The retention pass removes what a replay wrote of them again.
        self.expired: OrderedDict[str, None] = OrderedDict()
        self._expired_now: list[str] = []  # since the last `take_expired`
        self._dropped: set[str] = set()  # expired runs whose pending output `take_output` drops

    # -- state for the checkpoint --------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        runs = {run_id: run.to_state() for run_id, run in self.runs.items()}
        return {
            "runs": runs,
            "closed": self.closed,
            "expired": list(self.expired),
            "late_events": self.late_events,
            "foreign": self.foreign_events,
            "received": self.received,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Projector:
        projector = cls()
        projector.runs = {run_id: RunState.from_state(run) for run_id, run in state.get("runs", {}).items()}
        projector.closed = OrderedDict(state.get("closed", {}))
        projector.expired = OrderedDict.fromkeys(state.get("expired", []))
        projector.late_events = state.get("late_events", 0)
        projector.foreign_events = state.get("foreign", 0)
        received = state.get("received")
        projector.received = (received[0], received[1]) if received else None
        return projector

    # -- folding -------------------------------------------------------------------------
    def apply(self, event: Any, lsn: int) -> None:
        kind, run_id = event.type, event.run_id  # a class attribute: looked up once
        if kind == "heartbeat":
            self._on_heartbeat(event)
            return
        if kind == "received":
            self.received = (event.ts_ns, event.spooled)
            return
        if kind == "run_expired":  # retention's decision: the run goes, wherever it is
            self._expire(run_id)
            return
        if run_id in self.closed:
            self.late_events += 1  # the caller reopens the run (`reopen`) to apply it
            return
        run = self.runs.get(run_id)
        if run is None:
            if run_id in self.expired:
                self.late_events += 1  # retention removed it: an event that comes later cannot revive it
                return
            run = self.runs[run_id] = RunState(run_id)
        run.counts["events"] += 1
        run.last_lsn = lsn
        if self.received is not None:
            self._received(run, event, self.received)
        if run.lost and event.client_id in run.lost:
            self._resume(run, event.client_id, event.ts_ns)
        HANDLERS[kind](self, run, event, lsn)
        self.dirty.add(run_id)

    def _expire(self, run_id: str) -> None:
        """Retention removed the run: forget it, and drop what of it waits to be written."""
        self.runs.pop(run_id, None)
        self.closed.pop(run_id, None)
        self.dirty.discard(run_id)
        self.stage_lines.pop(run_id, None)
        self._dropped.add(run_id)
        self.expired[run_id] = None
        self._expired_now.append(run_id)
        while len(self.expired) > MAX_CLOSED_RUNS:
            self.expired.popitem(last=False)

    def _on_heartbeat(self, event: Any) -> None:
        """Keep each client's last RSS reading: what a stage killed without warning is left with;
        a running run's heartbeats measure its clock too (they come live, every few seconds)."""
        run = self.runs.get(event.run_id)
        if run is None:
            return
        if event.rss_mb is not None:
            run.last_rss_mb[event.client_id] = event.rss_mb
        if run.lost and event.client_id in run.lost:
            self._resume(run, event.client_id, event.ts_ns)
            self.dirty.add(run.run_id)
        if self.received is not None and not run.complete:
            _measure_clock(run, event, self.received)

    @staticmethod
    def _received(run: RunState, event: Any, received: tuple[int, bool]) -> None:
        """When the daemon received this event of `run` (the last marker's time), and what it
        says of the pipeline's clock (`_measure_clock`, inlined: this runs for every event)."""
        received_ns, spooled = received
        if run.received_first_ns is None:
            run.received_first_ns = received_ns
        run.received_last_ns = received_ns
        if not spooled and event.client_id != DAEMON_CLIENT_ID:
            offset = event.ts_ns - received_ns
            if run.clock_offset_ns is None or offset > run.clock_offset_ns:
                run.clock_offset_ns = offset

    def _on_run_started(self, run: RunState, event: Any, lsn: int) -> None:
        if run.client_id not in (None, event.client_id):
            self.foreign_events += 1  # another client cannot take a run over
            return
        run.pipeline, run.host, run.pid, run.client_id = event.pipeline, event.host, event.pid, event.client_id
        run.argv, run.config, run.dataset = list(event.argv), event.config, event.dataset
        run.environment = event.environment
        run.start_ns, run.started_at = event.ts_ns, iso(event.ts_ns)

    def _open_entry(self, run: RunState, event: Any, key: str) -> dict[str, Any]:
        entry = run.open.get(key)
        if entry is None:
            entry = run.open[key] = _new_stage(event)
            run.counts["stages"] += 1
        return entry

    def _on_stage_started(self, run: RunState, event: Any, lsn: int) -> None:
        if ended_has(run.ended, event.client_id, event.span):
            return  # a start that arrives after its end adds nothing
        key = _span_key(event)
        entry = self._open_entry(run, event, key)
        if entry["start_ns"] is None:
            entry.update(start_ns=event.ts_ns, started_at=iso(event.ts_ns))

    def _on_stage_finished(self, run: RunState, event: Any, lsn: int) -> None:
        if ended_has(run.ended, event.client_id, event.span):
            return  # already ended: a crash verdict that a late finish cannot undo
        key = _span_key(event)
        end_ns = event.start_ts_ns + int(event.duration_ms * 1e6)
        if event.gpu_source and event.gpu_source not in run.gpu_sources:
            names = event.gpu_source.split("+")
            run.gpu_sources[event.gpu_source] = "; ".join(SOURCE_NOTES[name] for name in names)
        entry = run.open.pop(key, None)
        if entry is None and event.type == "stage_finished":  # the common case: a short stage sends only its end
            run.counts["stages"] += 1
            line, row = _ended_line(event, end_ns), _row_of_end(run, event, end_ns, lsn)
            self._ended(run, event.client_id, event.span, "ok", line, row)
            return
        status = "failed" if event.type == "stage_failed" else "ok"
        if entry is None:
            entry = _new_stage(event)
            run.counts["stages"] += 1
        entry.update(_finish(event, status, end_ns))
        if status == "failed":
            entry["error"] = {"type": event.error_type, "message": event.error_message, "traceback": event.traceback}
        self._end_stage(run, entry, end_ns, lsn)

    def _end_stage(self, run: RunState, entry: dict, end_ns: int, lsn: int) -> None:
        """Move an ended stage (its entry, out of `run.open`) into an audit line and a row."""
        if entry["error"] is not None:
            self._record_error(run, entry, end_ns)
        self._ended(run, entry["client_id"], entry["span"], entry["status"], entry, _stage_row(run, entry, end_ns, lsn))

    def _ended(self, run: RunState, client_id: str, span: int, status: str, line: Any, row: tuple) -> None:
        ended_add(run.ended, client_id, span)
        run.counts[status] += 1
        lines = self.stage_lines.get(run.run_id)
        if lines is None:
            lines = self.stage_lines[run.run_id] = bytearray()
        # Encoded now, into the run's pending bytes: the line's objects are freed while hot
        # instead of kept (about 1.7 KB a stage) until the next flush.
        _encode_line_into(line, lines, -1)
        lines.append(10)  # b"\n"
        self.rows["stage_executions"].append(row)

    def _record_error(self, run: RunState, entry: dict, end_ns: int) -> None:
        run.first_failed_stage = run.first_failed_stage or entry["stage"]
        if len(run.errors) >= MAX_ERRORS_PER_RUN:  # every error stays in stages.jsonl
            run.errors_dropped += 1
            return
        run.errors.append(
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

    def _on_artifact_saved(self, run: RunState, event: Any, lsn: int) -> None:
        # Saved inside the stage, so it comes before the stage's end (per client order).
        entry = self._open_entry(run, event, _span_key(event))
        artifact = {"path": event.path, "kind": event.kind, "bytes": event.bytes, "sample_id": event.sample_id}
        if event.warnings:
            artifact["warnings"] = list(event.warnings)
        entry["artifacts"].append(artifact)
        run.counts["artifacts"] += 1

    def _on_run_finished(self, run: RunState, event: Any, lsn: int) -> None:
        if run.client_id not in (None, event.client_id):
            self.foreign_events += 1  # only the process that started a run finishes it
            return
        if run.complete:
            return
        error = {"type": event.error_type, "message": event.error_message} if event.error_type else None
        status = run_end_status(event.status, event.error_type, run.counts["failed"], run.counts["crashed"])
        self._close_run(run, status, event.ts_ns, lsn, error, event.duration_ms)

    def _on_events_lost(self, run: RunState, event: Any, lsn: int) -> None:
        # From any client of the run: a forked worker's events are lost on its own account.
        run.events_lost += event.events
        run.events_lost_reason = event.reason

    def _on_client_lost(self, run: RunState, event: Any, lsn: int) -> None:
        """Crash the lost client's open stages and, if it owns the run, the run: rows and the
        audit trail say so at once. Provisionally: the client's next event withdraws it all."""
        lost = event.lost_client_id
        closes_run = run.client_id in (lost, None) and not run.complete
        if closes_run or any(entry["client_id"] == lost for entry in run.open.values()):
            run.lost[lost] = {
                "last_seen_ns": event.last_seen_ns,
                "declared_ns": event.ts_ns,
                "lsn": lsn,
                "closed_run": closes_run,
            }
        for key, entry in [(k, e) for k, e in run.open.items() if e["client_id"] == lost]:
            start = entry["start_ns"] or event.last_seen_ns
            end = max(start, event.last_seen_ns)
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
            self._record_error(run, entry, end)
            ended_add(run.ended, lost, entry["span"])
            run.counts["crashed"] += 1
            run.provisional[key] = entry
            self.rows["stage_executions"].append(_stage_row(run, entry, end, lsn))
        if closes_run:
            message = "the pipeline process stopped sending heartbeats (killed or crashed)"
            self._close_run(run, "crashed", event.last_seen_ns, lsn, {"type": "ClientLost", "message": message})

    def _resume(self, run: RunState, client_id: str, event_ns: int) -> None:
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
        resumed_ns = self.received[0] if self.received is not None else event_ns
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
        self._withdraw_rows(run.run_id, loss["lsn"])

    def _withdraw_rows(self, run_id: str, lsn: int) -> None:
        """Take back the rows a loss (the client_lost at `lsn`) wrote: those still pending here,
        and, through the writer, those already in parts."""
        stage_rows = self.rows["stage_executions"]
        stage_rows[:] = [row for row in stage_rows if not (row[_STAGE_LSN] == lsn and row[_STAGE_RUN] == run_id)]
        run_rows = self.rows["runs"]
        run_rows[:] = [row for row in run_rows if not (row["lsn"] == lsn and row["run_id"] == run_id)]
        self.withdrawn.append((run_id, lsn))

    def _close_run(
        self, run: RunState, status: str, end_ns: int, lsn: int, error: dict | None, duration_ms: float | None = None
    ) -> None:
        if status == "ok" and run.counts["crashed"]:
            status = FINISHED_WITH_FAILURES
        start = run.start_ns or end_ns
        if duration_ms is None:  # no monotonic reading from the client: use wall clock
            duration_ms = (end_ns - start) / 1e6
        run.status, run.complete, run.error = status, True, error
        run.end_ns, run.finished_at, run.duration_ms = end_ns, iso(end_ns), duration_ms
        self.rows["runs"].append(_run_row(run, lsn))

    def _on_log(self, run: RunState, event: Any, lsn: int) -> None:
        run.counts["logs"] = run.counts.get("logs", 0) + 1
        extra = json.dumps(event.extra, default=str, sort_keys=True) if event.extra else None
        self.rows["logs"].append(
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

    def _on_sample_result(self, run: RunState, event: Any, lsn: int) -> None:
        run.counts["sample_results"] = run.counts.get("sample_results", 0) + 1

    # -- what the others ask -------------------------------------------------------------
    def open_work(self) -> dict[str, set[str]]:
        """client id -> runs where it owns an unfinished run or has a running stage."""
        work: dict[str, set[str]] = {}
        for run_id, run in self.runs.items():
            if not run.complete and run.client_id:
                work.setdefault(run.client_id, set()).add(run_id)
            for entry in run.open.values():
                work.setdefault(entry["client_id"], set()).add(run_id)
        return work

    def take_output(self) -> tuple[dict[str, list[Any]], dict[str, bytearray]]:
        """Rows per table (tuples of ROW_FIELDS[table] where it names one, else dicts) and
        ended stages per run (stages.jsonl lines), produced since the last call."""
        rows, lines = self.rows, self.stage_lines
        self.rows, self.stage_lines = {table: [] for table in TABLE_NAMES}, {}
        if self._dropped:  # rows of runs expired since they were produced (a replay)
            rows = {
                table: [row for row in table_rows if _run_of(row) not in self._dropped]
                for table, table_rows in rows.items()
            }
            lines = {run_id: data for run_id, data in lines.items() if run_id not in self._dropped}
            self._dropped = set()
        return rows, lines

    def take_expired(self) -> list[str]:
        """The runs expired (run_expired folded) since the last call."""
        expired, self._expired_now = self._expired_now, []
        return expired

    def take_withdrawn(self) -> list[tuple[str, int]]:
        """(run, lsn of a client_lost) whose rows in parts are taken back, since the last call:
        the writer deletes them after writing the rows `take_output` gave it before."""
        withdrawn, self.withdrawn = self.withdrawn, []
        return withdrawn

    def pending_rows(self) -> int:
        """Rows produced since the last `take_output`."""
        return sum(len(rows) for rows in self.rows.values())

    def take_dirty(self) -> set[str]:
        """The runs whose audit trail changed since the last call."""
        dirty, self.dirty = self.dirty, set()
        return dirty

    def finished_runs(self) -> list[str]:
        """Runs that are complete with nothing running."""
        return [r for r, run in self.runs.items() if run.complete and not run.open]

    def reopen(self, run: RunState) -> None:
        """Take a closed run back (from its audit trail) so an event that came late applies."""
        self.closed.pop(run.run_id, None)
        self.runs[run.run_id] = run

    def evict(self, run_ids: list[str]) -> None:
        """Forget finished runs (their audit is on disk); later events for them are late."""
        for run_id in run_ids:
            self.closed[run_id] = self.runs.pop(run_id).pipeline
        while len(self.closed) > MAX_CLOSED_RUNS:
            self.closed.popitem(last=False)


def _measure_clock(run: RunState, event: Any, received: tuple[int, bool]) -> None:
    """Fold one event into the run's clock offset (see `RunState.clock_offset_ns`)."""
    received_ns, spooled = received
    if spooled or event.client_id == DAEMON_CLIENT_ID:
        return
    offset = event.ts_ns - received_ns
    if run.clock_offset_ns is None or offset > run.clock_offset_ns:
        run.clock_offset_ns = offset


Handler = Callable[[Projector, RunState, Any, int], None]
# Event type -> what folds it into its run (heartbeats carry no run state of their own).
HANDLERS: dict[str, Handler] = {
    "run_started": Projector._on_run_started,
    "stage_started": Projector._on_stage_started,
    "stage_finished": Projector._on_stage_finished,
    "stage_failed": Projector._on_stage_finished,
    "artifact_saved": Projector._on_artifact_saved,
    "sample_result": Projector._on_sample_result,
    "log": Projector._on_log,
    "run_finished": Projector._on_run_finished,
    "client_lost": Projector._on_client_lost,
    "events_lost": Projector._on_events_lost,
}


ROW_FIELDS: dict[str, tuple[str, ...]] = {"stage_executions": STAGE_ROW_FIELDS}  # tables of tuple rows
_STAGE_RUN, _STAGE_LSN = STAGE_ROW_FIELDS.index("run_id"), STAGE_ROW_FIELDS.index("lsn")


def _run_of(row: tuple | dict[str, Any]) -> str:
    """A pending row's run id."""
    return row[_STAGE_RUN] if isinstance(row, tuple) else row["run_id"]


def _run_row(run: RunState, lsn: int) -> dict[str, Any]:
    first_error = run.error or (run.errors[0] if run.errors else {})
    counts = run.counts
    return {
        "run_id": run.run_id,
        "pipeline": run.pipeline,
        "status": run.status,
        "host": run.host,
        "pid": run.pid,
        "start_time": run.start_ns,
        "end_time": run.end_ns,
        "duration_ms": run.duration_ms,
        "stages": counts["stages"],
        "stages_failed": counts["failed"],
        "stages_crashed": counts["crashed"],
        "failed_stage": run.first_failed_stage,
        "error_type": first_error.get("type"),
        "error_message": first_error.get("message"),
        "dataset": run.dataset,
        "lsn": lsn,
        "received_time": run.received_last_ns,
    }
