"""Retention: which runs and event-log segments have expired (pure), and removing them
(crash-safe).

Selection is a pure function of what exists, the checkpoint and a clock, so it is tested
with a frozen clock. Removal writes an intent file first and every step is idempotent:
a kill at any point leaves nothing half-visible (a run folder is renamed out of sight
before it is deleted; Parquet parts are replaced atomically), and the next gc finishes
the job.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from stagewatch._home import Home
from stagewatch.daemon._derived import DAEMON_CHECKPOINT, GC_INTENT, load, peek
from stagewatch.daemon._store import PART_PREFIX, atomic_write, parquet_options

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
    from stagewatch.daemon._eventlog import EventLog
    from stagewatch.daemon._readmodels import read_table

    table = read_table(home, "runs")
    ends = table["end_time"].cast("int64").to_pylist()
    runs = [FinishedRun(r, e or 0) for r, e in zip(table["run_id"].to_pylist(), ends, strict=True)]
    listed = EventLog(Home.of(home).events).segments()
    segments = [
        Segment(path, next_base, path.stat().st_mtime_ns) for (_, path), (next_base, _) in itertools.pairwise(listed)
    ]
    if listed:
        base, path = listed[-1]
        segments.append(Segment(path, base + path.stat().st_size, path.stat().st_mtime_ns))
    checkpoint = peek(DAEMON_CHECKPOINT, Home.of(home)) or {}  # damaged: lsn 0, no segment removable
    return runs, segments, checkpoint.get("lsn", 0)


def apply_retention(
    home: Path,
    retention: Any,
    exclude: set[str] = frozenset(),
    dry_run: bool = False,
    now_ns: int | None = None,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Finish an interrupted removal, select what has expired, remove it (unless dry_run).
    `progress(steps done, steps)` is called as the removal goes (a part rewritten, a run
    folder or a segment deleted)."""
    import time

    if not dry_run:
        resume_interrupted(home)
    runs, segments, checkpoint_lsn = gather(home)
    plan = select_expired(
        [r for r in runs if r.run_id not in exclude],
        segments,
        now_ns if now_ns is not None else time.time_ns(),
        checkpoint_lsn,
        parse_duration(retention.runs),
        parse_duration(retention.events),
    )
    if dry_run:
        return {
            "dry_run": True,
            "runs": plan.runs,
            "run_bytes": sum(_size(Home.of(home).run(r)) for r in plan.runs),
            "segments": [p.name for p in plan.segments],
            "segment_bytes": sum(_size(p) for p in plan.segments),
        }
    if not (plan.runs or plan.segments):
        return {"dry_run": False, "runs": [], "run_bytes": 0, "parquet_rows": 0, "segments": [], "segment_bytes": 0}
    return {"dry_run": False, **remove(home, plan, progress)}


# -- removal ---------------------------------------------------------------------------------
def intent_path(home: Path) -> Path:
    return Home.of(home).gc_intent


def remove(home: Path, plan: Plan, progress: Progress = _no_progress) -> dict[str, Any]:
    """Carry out a plan: record the intent, then remove; returns what was freed."""
    intent = {"runs": plan.runs, "segments": [str(path) for path in plan.segments]}
    atomic_write(intent_path(home), json.dumps(intent).encode(), durable=True)
    freed = _carry_out(home, plan, progress)
    intent_path(home).unlink(missing_ok=True)
    return freed


def resume_interrupted(home: Path) -> dict[str, Any] | None:
    """Finish a removal that a crash interrupted (every step is idempotent)."""
    intent = load(GC_INTENT, Home.of(home))  # damaged: set aside, its runs selected again when expired
    if intent is None:
        return None
    freed = _carry_out(home, Plan(intent["runs"], [Path(p) for p in intent["segments"]]))
    intent_path(home).unlink(missing_ok=True)
    return freed


def _carry_out(home: Path, plan: Plan, progress: Progress = _no_progress) -> dict[str, Any]:
    expired = set(plan.runs)
    parts = _parts(home) if expired else []
    steps = itertools.count(1)
    total = len(parts) + len(plan.runs) + len(plan.segments)
    rows = _drop_rows(parts, expired, lambda: progress(next(steps), total))
    run_bytes = 0
    for run_id in plan.runs:
        run_bytes += _remove_run_folder(home, run_id)
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


def _parts(home: Path) -> list[Path]:
    partitions = Home.of(home).all_partitions()
    return sorted(part for partition in partitions for part in partition.glob(f"{PART_PREFIX}*.parquet"))


def _drop_rows(parts: list[Path], expired: set[str], step: Callable[[], object]) -> int:
    """Rewrite every Parquet part that holds rows of expired runs, without them."""
    dropped = 0
    for part in parts:
        step()
        table = pq.read_table(part)
        keep = pc.invert(pc.is_in(table["run_id"], value_set=_string_array(expired)))
        kept = table.filter(keep)
        if kept.num_rows == table.num_rows:
            continue
        dropped += table.num_rows - kept.num_rows
        if kept.num_rows == 0:
            part.unlink()
            continue
        temporary = part.with_name(f".{part.name}.gc")
        pq.write_table(kept, temporary, **parquet_options(kept.schema))
        os.replace(temporary, part)  # readers see the old part or the new one, never half
    return dropped


def _string_array(values: set[str]) -> Any:
    import pyarrow as pa

    return pa.array(sorted(values), pa.string())


def _remove_run_folder(home: Path, run_id: str) -> int:
    folder, hidden = Home.of(home).run(run_id), Home.of(home).expired_run(run_id)
    if folder.exists():
        os.replace(folder, hidden)  # out of sight at once (run ids never start with '.')
    size = _size(hidden)
    shutil.rmtree(hidden, ignore_errors=True)
    return size


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0
