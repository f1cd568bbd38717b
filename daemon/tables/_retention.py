"""Retention: which runs and event-log segments have expired (pure), recording that decision
in the event log, and removing them (crash-safe).

Selection is a pure function of what exists, the checkpoint and a clock, so it is tested
with a frozen clock. Before a run is removed, a `run_expired` event goes into the log (the
daemon commits it; `stagewatch gc` appends it holding the home's lock): the log stays the
truth, and every replay of it (a rebuild, a restart past the checkpoint) drops the run where
retention did, whatever the clock or the policy is then. What a replay wrote of a recorded run
again (rows, a folder) is removed by the next pass or by the rebuild itself (`remove_recorded`).
Every step of a removal is idempotent and atomic (a Delta delete is one commit; a run folder is
renamed out of sight before it is deleted), and the runs table's row goes last, after the other
tables' rows and the folder: a kill at any point leaves the run in the runs table, so the next
pass selects it again and finishes the job (a hidden folder left behind is cleared by any pass).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from stagewatch import _protocol as protocol
from stagewatch.daemon.base._derived import DAEMON_CHECKPOINT, peek
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.tables._tables import delete, sql_strings

# The runs table last: while a removed run's row is there, the next pass removes it again.
TABLES_IN_REMOVAL_ORDER = ("stage_executions", "logs", "samples", "runs")  # the run folders just before "runs"
# Runs per delete: a predicate naming a day's worth of expired runs at once stays a size SQL parses quickly.
DELETE_BATCH_RUNS = 1_000

Progress = Callable[[int, int], object]


def _no_progress(done: int, total: int) -> None:
    return None


NS = 1_000_000_000
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | int | float | None) -> float | None:
    """Seconds for "30d", "12h", "90s", a number of seconds; None for "forever"/None."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("forever", "never", "")):
        return None
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ValueError(f"expected a duration like '30d', '12h', '90s' or 'forever', got {text!r}")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, got {text!r}")
    return seconds


@dataclass(frozen=True)
class FinishedRun:
    run_id: str
    end_ns: int


@dataclass(frozen=True)
class Segment:
    path: Path
    end_lsn: int
    modified_ns: int


@dataclass
class Plan:
    runs: list[str] = field(default_factory=list)
    segments: list[Path] = field(default_factory=list)


def select_expired(
    runs: Iterable[FinishedRun],
    segments: list[Segment],
    now_ns: int,
    checkpoint_lsn: int,
    runs_keep_s: float | None,
    events_keep_s: float | None,
) -> Plan:
    """What retention removes now. Only finished runs are candidates (a run in progress is
    not in the runs table). A segment goes only once every projection has passed it (its
    end is at or before the checkpoint) and never the last, open one."""
    plan = Plan()
    if runs_keep_s is not None:
        cutoff = now_ns - int(runs_keep_s * NS)
        plan.runs = sorted(run.run_id for run in runs if run.end_ns < cutoff)
    if events_keep_s is not None:
        cutoff = now_ns - int(events_keep_s * NS)
        for segment in segments[:-1]:  # oldest first; stop at the first kept: no gaps in the log
            if segment.end_lsn > checkpoint_lsn or segment.modified_ns >= cutoff:
                break
            plan.segments.append(segment.path)
    return plan


def gather(home: Path) -> tuple[list[FinishedRun], list[Segment], int]:
    """The finished runs (runs table), the log's segments and the checkpoint's lsn."""
    from stagewatch.daemon.ingest._eventlog import EventLog
    from stagewatch.daemon.query._readmodels import read_table

    table = read_table(home, "runs")
    # A run's age counts from when the daemon received its last event, by the daemon's clock
    # (retention's clock), never by the pipeline's (a board without a real-time clock says
    # 1970); the pipeline's end only for rows from before the daemon recorded receive times.
    received = table["received_time"].cast("int64")
    ends = pc.if_else(received.is_valid(), received, table["end_time"].cast("int64")).to_pylist()
    runs = [FinishedRun(r, e or 0) for r, e in zip(table["run_id"].to_pylist(), ends, strict=True)]
    listed = EventLog(DaemonHome.of(home).events).segments()
    segments = [
        Segment(path, next_base, path.stat().st_mtime_ns) for (_, path), (next_base, _) in itertools.pairwise(listed)
    ]
    if listed:
        base, path = listed[-1]
        segments.append(Segment(path, base + path.stat().st_size, path.stat().st_mtime_ns))
    checkpoint = peek(DAEMON_CHECKPOINT, DaemonHome.of(home)) or {}  # damaged: lsn 0, no segment removable
    return runs, segments, checkpoint.get("lsn", 0)


# Writes `run_expired` events for these runs into the log; False (or an OSError) if it could
# not: then they are not removed (a removal the log does not hold comes back with a replay).
Recorder = Callable[[list[FinishedRun]], bool]


def apply_retention(
    home: Path,
    retention: Any,
    record: Recorder | None,
    exclude: set[str] = frozenset(),
    dry_run: bool = False,
    now_ns: int | None = None,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Select what has expired, record it in the log (`record`; None only for a dry run) and
    remove it, with what a replay or an interrupted removal left of runs recorded before
    (unless dry_run). `progress(steps done, steps)` is called as the removal goes (a table's
    rows deleted, a run folder or a segment deleted)."""
    runs, segments, checkpoint_lsn = gather(home)
    plan = select_expired(
        [r for r in runs if r.run_id not in exclude],
        segments,
        now_ns if now_ns is not None else time.time_ns(),
        checkpoint_lsn,
        parse_duration(retention.runs),
        parse_duration(retention.events),
    )
    recorded = set(recorded_expiries(home))
    leftovers = left_by_replay(home, recorded, {run.run_id for run in runs})
    selected = set(plan.runs)
    unrecorded = [run for run in runs if run.run_id in selected and run.run_id not in recorded]
    if not dry_run and unrecorded and (record is None or not record(unrecorded)):
        selected -= {run.run_id for run in unrecorded}
    plan.runs = sorted(selected | leftovers)
    if dry_run:
        return {
            "dry_run": True,
            "runs": plan.runs,
            "run_bytes": sum(_size(DaemonHome.of(home).run(r)) for r in plan.runs),
            "segments": [p.name for p in plan.segments],
            "segment_bytes": sum(_size(p) for p in plan.segments),
        }
    hidden = _clear_hidden_folders(home)
    if not (plan.runs or plan.segments):
        return {
            "dry_run": False,
            "runs": [],
            "run_bytes": hidden,
            "parquet_rows": 0,
            "segments": [],
            "segment_bytes": 0,
        }
    return {"dry_run": False, **remove(home, plan, progress)}


# -- the decision in the log ------------------------------------------------------------------
def recorded_expiries(home: Path) -> list[str]:
    """The runs whose run_expired event the checkpoint's fold holds (oldest first)."""
    checkpoint = peek(DAEMON_CHECKPOINT, DaemonHome.of(home)) or {}  # damaged: the next start replays every record
    return list(checkpoint.get("projector", {}).get("expired", []))


def left_by_replay(home: Path, recorded: set[str], finished: set[str]) -> set[str]:
    """Recorded runs of which something is back: a row in the runs table, or a folder (a
    replay wrote them before it reached their run_expired; an accuracy worker behind its log)."""
    layout = DaemonHome.of(home)
    return {run_id for run_id in recorded if run_id in finished or layout.run(run_id).exists()}


def remove_recorded(home: Path) -> dict[str, Any]:
    """Remove what is left of runs the log says retention removed (`stagewatch rebuild`, after
    its replay): no policy, no clock, only the log's decisions."""
    runs, _, _ = gather(home)
    leftovers = left_by_replay(home, set(recorded_expiries(home)), {run.run_id for run in runs})
    return remove(home, Plan(runs=sorted(leftovers))) if leftovers else {"runs": []}


class LogRecorder:
    """Records retention's decisions by appending `run_expired` events to the log itself: for
    `stagewatch gc`, which holds the home's lock (no daemon writes the log meanwhile). Its
    events carry a client id of their own, numbered from 1, so no seq of the daemon's is taken."""

    def __init__(self, home: Path) -> None:
        self.home = DaemonHome.of(home)
        self.client_id = f"gc-{uuid.uuid4().hex}"
        self.seq = 0
        self.log: Any = None

    def __call__(self, runs: list[FinishedRun]) -> bool:
        from stagewatch.daemon.projection._schema import validate_event

        payloads = []
        for run in runs:
            self.seq += 1
            event = protocol.run_expired(self.client_id, self.seq, run.run_id, time.time_ns(), ended_ns=run.end_ns)
            validate_event(event)  # a replay reads it back: it must pass as any event does
            payloads.append(protocol.pack_event(event))
        log = self._opened()
        log.append(payloads)
        log.sync()
        return True

    def _opened(self) -> Any:
        from stagewatch.daemon.ingest._eventlog import EventLog

        if self.log is None:
            self.log = EventLog(self.home.events)
            self.log.open(set_aside=self.home.quarantined_segments)  # what a daemon's start does first
        return self.log

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def collect_garbage(
    home: Path, retention: Any, dry_run: bool = False, now_ns: int | None = None, progress: Progress = _no_progress
) -> dict[str, Any]:
    """`stagewatch gc`: apply retention now, holding the home's lock (DaemonAlreadyRunning
    while a daemon runs: it applies retention itself, and two removers of one home's parts
    and a daemon holding a run that gc removed is how runs came back). A dry run takes no lock."""
    if dry_run:
        return {
            **apply_retention(home, retention, None, dry_run=True, now_ns=now_ns),
            "debris_folders": debris_folders(home),
        }
    from stagewatch.daemon.base._lock import HomeLock

    lock = HomeLock(DaemonHome.of(home), "gc")
    lock.take()
    recorder = LogRecorder(home)
    try:
        freed = apply_retention(home, retention, recorder, now_ns=now_ns, progress=progress)
        debris = debris_folders(home)
        for run_id in debris:
            freed["run_bytes"] += _remove_run_folder(home, run_id)
        return {**freed, "debris_folders": debris}
    finally:
        recorder.close()
        lock.release()


def debris_folders(home: Path) -> list[str]:
    """Run folders that hold nothing but the temporary file of a write that failed: what a
    daemon left when it rewrote the audit trail of a run that gc had removed (before gc recorded
    run_expired in the log). No run's data; only `stagewatch gc`, with no daemon writing, looks."""
    from stagewatch._names import is_run_id

    runs = DaemonHome.of(home).runs
    found = []
    for entry in os.scandir(runs) if runs.is_dir() else ():
        if is_run_id(entry.name) and entry.is_dir(follow_symlinks=False):
            names = os.listdir(entry.path)
            if names and all(name.startswith(".") and name.endswith(".tmp") for name in names):
                found.append(entry.name)
    return sorted(found)


# -- removal ---------------------------------------------------------------------------------
def remove(home: Path, plan: Plan, progress: Progress = _no_progress) -> dict[str, Any]:
    """Carry out a plan (every step idempotent); returns what was freed. The tables' files
    that held the rows go at the next vacuum (readers may still be on a snapshot with them)."""
    steps = itertools.count(1)
    total = (len(TABLES_IN_REMOVAL_ORDER) if plan.runs else 0) + len(plan.runs) + len(plan.segments)
    batches = [plan.runs[i : i + DELETE_BATCH_RUNS] for i in range(0, len(plan.runs), DELETE_BATCH_RUNS)]
    rows, run_bytes = 0, 0
    for table in TABLES_IN_REMOVAL_ORDER:
        if table == "runs":  # the folders before the runs table's rows: while a row is left, a pass redoes it all
            for run_id in plan.runs:
                run_bytes += _remove_run_folder(home, run_id)
                progress(next(steps), total)
        rows += sum(delete(home, table, f"run_id IN ({sql_strings(batch)})") for batch in batches)
        progress(next(steps), total)
    segment_bytes = 0
    for path in plan.segments:
        segment_bytes += _size(path)
        path.unlink(missing_ok=True)
        progress(next(steps), total)
    return {
        "runs": plan.runs,
        "run_bytes": run_bytes,
        "parquet_rows": rows,
        "segments": [p.name for p in plan.segments],
        "segment_bytes": segment_bytes,
    }


def _clear_hidden_folders(home: Path) -> int:
    """Delete the run folders a removal hid (`.expired-<run>`) but was killed before deleting;
    the bytes freed."""
    runs = DaemonHome.of(home).runs
    freed = 0
    for hidden in runs.glob(".expired-*") if runs.is_dir() else ():
        freed += _size(hidden)
        shutil.rmtree(hidden, ignore_errors=True)
    return freed


def _remove_run_folder(home: Path, run_id: str) -> int:
    folder, hidden = DaemonHome.of(home).run(run_id), DaemonHome.of(home).expired_run(run_id)
    if folder.exists():
        os.replace(folder, hidden)  # out of sight at once (run ids never start with '.')
    size = _size(hidden)
    shutil.rmtree(hidden, ignore_errors=True)
    return size


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0
