"""What the dashboard shows, as pure functions of a home's read models (tested without a browser).

Every function takes the dashboard's home, or its homes (several hosts' homes read as one, a
list: `Homes`): the tables are then the union of each home's, and a run's own files (its audit
trail, accuracy, saved outputs) are read in the home that holds the run (`holding`).

Nothing here writes, and nothing reads outside the home: an artifact is opened only if its
path has the shape the client writes (runs/{run_id}/stages/{stage}/{file}, every part a
checked name) and resolves, symlinks followed, inside the home's runs/ folder.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from stagewatch._home import parse_artifact_relpath
from stagewatch.daemon import (
    Filters,
    parse_time,
    query_gpu_devices,
    query_logs,
)
from stagewatch.daemon.base._derived import STATUS, peek, problem
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.projection._rows import RUNS
from stagewatch.daemon.query._exemplars import EXEMPLARS, query_exemplars
from stagewatch.daemon.query._export import export_chunks, matching_tables
from stagewatch.daemon.query._gaps import OUTSIDE_STAGES, gap_spans, joined_with_outside, outside_stages
from stagewatch.daemon.query._hosts import hosts_in, with_hosts
from stagewatch.daemon.query._query import (
    distinct_values,
    duration_points,
    executions_page,
    log_where,
    page_of,
    run_samples,
    run_stages,
    run_where,
    sample_executions,
)
from stagewatch.daemon.query._readmodels import (
    FAILED,
    WITH_ARTIFACTS,
    RunNotFound,
    active_runs,
    active_runs_in,
    holding,
    resolve_run_in,
    stages_with,
    stages_with_by_name,
    table_not_read,
    tables_not_whole,
)
from stagewatch.daemon.query._readmodels import load_accuracy as _load_accuracy
from stagewatch.daemon.query._readmodels import load_audit_head as _load_audit_head
from stagewatch.daemon.query._sql import DamagedTable, Homes, concurrently, homes_of, skipped_files, skipped_for_run

MAX_ERRORS_SEARCHED = 100_000  # a case's error is looked up among this many failed stages of its run
PREVIEW_BYTES = 32 * 1024 * 1024  # larger files are listed, not loaded into the page
PAGE_SIZES = (25, 50, 100)
RUN_COLUMNS = [
    "run_id",
    "pipeline",
    "status",
    "host",
    "start_time",
    "duration_ms",
    "stages",
    "stages_failed",
    "failed_stage",
    "error_type",
    "error_message",
]
_RUN_SCHEMA = pa.schema([RUNS.field(name) for name in RUN_COLUMNS])
RUN_SORTS = ("start_time", "duration_ms", "pipeline", "status", "stages", "stages_failed", "host")
LOG_COLUMNS = ["time", "level", "run_id", "stage", "sample_id", "logger", "message", "extra"]


@dataclass(frozen=True)
class Page:
    """One page of a server-side query: its rows, and how many rows match in all."""

    rows: pd.DataFrame
    total: int
    offset: int
    limit: int

    @property
    def label(self) -> str:
        if not self.total:
            return "no rows match"
        if self.offset >= self.total:  # a page number from an old link, past what matches now
            return f"past the last page ({self.total:,} match: go back to page 1)"
        return f"{self.offset + 1:,}-{min(self.offset + self.limit, self.total):,} of {self.total:,}"


def top_rows(
    table: pa.Table, sort: str, descending: bool, offset: int, limit: int, newest: str = "start_time"
) -> pa.Table:
    """Rows offset..offset+limit of `table` in sort order, without sorting all of it:
    select_k keeps the first offset+limit (linear), only those are sorted."""
    order = "descending" if descending else "ascending"
    keep = min(offset + limit, table.num_rows)
    if keep <= 0 or offset >= table.num_rows:
        return table.slice(0, 0)
    keys = [(sort, order), *([(newest, "descending")] if sort != newest else [])]  # ties: newest first
    indices = pc.select_k_unstable(table, k=keep, sort_keys=keys)
    chosen = table.take(indices)
    return chosen.take(pc.sort_indices(chosen, sort_keys=keys)).slice(offset, limit)


def _order(sort: str, descending: bool, newest: str) -> str:
    """ORDER BY of a page: the sort column (one of ours), ties newest first, empty cells last."""
    direction = "DESC" if descending else "ASC"
    ties = f', "{newest}" DESC NULLS LAST' if sort != newest else ""
    return f'"{sort}" {direction} NULLS LAST{ties}, lsn DESC'


def runs_page(
    home: Path, filters: Filters, sort: str = "start_time", descending: bool = True, offset: int = 0, limit: int = 25
) -> Page:
    """The runs that match `filters` (finished from Parquet, running from the daemon), one page of them.

    The finished runs' page is SQL (filter, sort, limit, offset); the few runs in progress,
    if any, are placed among the first offset+limit finished ones, and the page cut from those."""
    if sort not in RUN_SORTS:
        raise ValueError(f"expected a sort column of {', '.join(RUN_SORTS)}, got {sort!r}")
    where = run_where(home, filters)
    order = _order(sort, descending, "start_time")
    running = _running_runs(home, filters)
    if not running.num_rows:
        page, total = page_of(home, "runs", where, RUN_COLUMNS, order, offset, limit)
        return Page(page.to_pandas(), total, offset, limit)
    finished, total = page_of(home, "runs", where, RUN_COLUMNS, order, 0, offset + limit)
    page = top_rows(pa.concat_tables([finished, running]), sort, descending, offset, limit)
    return Page(page.to_pandas(), total + running.num_rows, offset, limit)


def filter_time(text: str, until: bool = False) -> datetime:
    """A time filter's value (`parse_time`; `until`: an upper bound, a date alone its day's end),
    a relative one ('30d', '24h') counted back from the start of the current minute: the same
    window asked again within the minute is the same query, answered from memory (the query
    layer keeps answers by their query), where the microsecond's `now` made every page switch a
    new query."""
    return parse_time(text, now=datetime.now(UTC).replace(second=0, microsecond=0), until=until)


def runs_signature(home: Path) -> tuple:
    """Changes whenever the runs a page could show change: a commit to the runs table (each
    adds a file to its Delta log, whose folder's mtime moves), or the daemon's list of runs in
    progress. One stat call, so a page can look every few seconds without reading a million
    rows for nothing."""
    return tuple(_home_signature(one) for one in homes_of(home))


def _home_signature(home: Path) -> tuple:
    try:
        committed = (DaemonHome.of(home).table("runs") / "_delta_log").stat().st_mtime_ns
    except FileNotFoundError:  # no run finished yet
        committed = None
    active = tuple(sorted((str(r.get("run_id")), str(r.get("status"))) for r in active_runs(home)))
    return committed, active


def _running_runs(home: Homes, filters: Filters) -> pa.Table:
    """Runs in progress (from each home's daemon's status.json) that `filters` let through."""
    rows = []
    if filters.status in (None, "running") and not (filters.failed_stage or filters.grep):
        for run in active_runs_in(home):  # a run in two homes (a copy given with its home) once
            started = _timestamp(run.get("started_at"))
            wanted = {"run": run.get("run_id"), "pipeline": run.get("pipeline"), "host": run.get("host")}
            if any(getattr(filters, key) not in (None, value) for key, value in wanted.items()):
                continue
            if _in_range(started, filters):
                rows.append({**{k: run.get(k) for k in ("run_id", "pipeline", "host")}, "status": "running"})
                rows[-1]["start_time"] = started
    return pa.Table.from_pylist(rows, _RUN_SCHEMA)


def _timestamp(text: str | None) -> Any:
    try:
        return pd.Timestamp(text).tz_convert("UTC") if text else None
    except (ValueError, TypeError):
        return None


def _in_range(moment: Any, filters: Filters) -> bool:
    return moment is None or (
        (filters.since is None or moment >= filters.since) and (filters.until is None or moment <= filters.until)
    )


class ArtifactRefused(ValueError):
    """A path the dashboard will not open; the message says why."""


FACETS_TTL_S = 30.0
_facets_cache: dict[tuple[Path, ...], tuple[float, dict[str, list[str]]]] = {}


def facets(home: Homes) -> dict[str, list[str]]:
    """The values the filter menus offer: pipelines, hosts, stages that failed first, stages,
    loggers. Read at most every 30 s per server process: a scan of whole columns is too slow
    for every page view of a big home."""
    key = tuple(homes_of(home))
    cached = _facets_cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < FACETS_TTL_S:
        return cached[1]
    found = _read_facets(home)
    _facets_cache[key] = (time.monotonic(), found)
    return found


def _read_facets(home: Homes) -> dict[str, list[str]]:
    where = {"pipeline": "runs", "failed_stage": "runs", "stage": "stage_executions", "logger": "logs"}
    found = {column: distinct_values(home, table, column) for column, table in where.items()}
    return {**found, "host": hosts_in(home)}  # a run in progress has no row yet: its host is the daemon's word


def logs_page(home: Path, filters: Filters, offset: int = 0, limit: int = 50) -> Page:
    """The log lines that match `filters`, newest first, one page of them."""
    page, total = page_of(
        home, "logs", log_where(home, filters), LOG_COLUMNS, _order("time", True, "time"), offset, limit
    )
    return Page(with_hosts(home, page).to_pandas(), total, offset, limit)  # over several homes, with the host


def log_histogram(home: Path, filters: Filters, bins: int = 60) -> pd.DataFrame:
    """Log lines per time bin and level over the filtered range: columns time (the bin's start),
    level, count and width_ms (the bins' width: bins without lines are left out, so the gap
    between two rows is no bin's width)."""
    table = query_logs(home, filters, ["time", "level"])
    if table.num_rows == 0:
        empty = {"time": pd.Series(dtype="datetime64[ns, UTC]"), "level": [], "count": [], "width_ms": []}
        return pd.DataFrame(empty)
    times = table["time"].cast(pa.int64()).to_numpy()
    low, high = int(times.min()), int(times.max())
    width = max((high - low) // bins + 1, 1_000_000)  # at least 1 ms a bin
    starts = low + (times - low) // width * width
    frame = pd.DataFrame({"start": starts, "level": table["level"].to_numpy(zero_copy_only=False)})
    counts = frame.groupby(["start", "level"]).size().reset_index(name="count")
    counts["time"] = pd.to_datetime(counts["start"] // 1000 * 1000, utc=True)  # Bokeh's axes hold microseconds
    counts["width_ms"] = width / 1e6
    return counts[["time", "level", "count", "width_ms"]]


def export_bytes(home: Path, filters: Filters, form: str, tables: tuple[str, ...] = ("logs",)) -> Iterator[bytes]:
    """`stagewatch export --table logs` (by default) of the same filters, piece by piece: every
    matching line, not the page in view."""
    for chunk in export_chunks(matching_tables(home, filters, tables), form):
        yield chunk.encode()


def find_run(home: Homes, text: str) -> str:
    """A run id from an id or a unique prefix (in any of the homes); RunNotFound says why not."""
    return resolve_run_in(home, text)


def missing_for_run_filter(home: Homes, skipped: list[str], run_text: str) -> list[str]:
    """Of the damaged files a paged table's query left out, those whose rows it would have shown:
    with a run filter (an id or a unique prefix), those that may hold that run's rows
    (`skipped_for_run`); else, or when the filter names no run, all of them."""
    if not (skipped and run_text.strip()):
        return skipped
    try:
        return skipped_for_run(home, skipped, find_run(home, run_text))
    except RunNotFound:
        return skipped


def load_audit_head(home: Homes, run_id: str) -> dict[str, Any]:
    """The run's audit head, from the home that holds the run."""
    return _load_audit_head(holding(home, run_id), run_id)


def load_accuracy(home: Homes, run_id: str) -> dict[str, Any] | None:
    """The run's accuracy.json, from the home that holds the run (None without one)."""
    return _load_accuracy(holding(home, run_id), run_id)


# What the Run page shows of a run of any length (a run of a million executions included):
DURATION_SLICES = 2_000  # per stage in the durations chart: the slowest execution of each slice
FAILURES_DRAWN = 2_000  # executions that did not end ok, drawn beside them (the first ones)
ERRORS_SHOWN = 50  # error cards, each with its traceback (the rest: counted, and in the executions table)
SAMPLES_LISTED = 500  # samples in the waterfall's picker: those that failed, then the first


def run_view(home: Path, run_id: str) -> dict[str, Any]:
    """Everything the run page needs, read once: the trail's head, and from the run's rows per
    stage statistics and the durations chart's points (SQL, whatever the run's length); its
    first errors from their stage lines (found by a byte search); its saved outputs a page at a
    time (`outputs_page`). The reads are independent and overlap (`concurrently`)."""
    holder = holding(home, run_id)  # the run's trail: in the home that holds its folder
    run = Filters(run=run_id)
    audit, stages, exemplars, outside, (points, executions), samples, failed, accuracy = concurrently(
        (load_audit_head, home, run_id),
        (run_stages, home, run_id),
        (query_exemplars, home, run),
        (_outside_stages_or_damage, home, run),
        (duration_points, home, run_id, DURATION_SLICES, FAILURES_DRAWN),
        (run_samples, home, run_id, SAMPLES_LISTED),
        (stages_with, holder, run_id, FAILED, ERRORS_SHOWN),
        (load_accuracy, home, run_id),
    )
    with_gpu = any(entry["gpu_peak_mb"]["max"] is not None for entry in stages)
    gpu = query_gpu_devices(home, run) if with_gpu else {}
    errors = audit.get("errors", [])
    *outside, outside_problem = outside
    return {
        "audit": audit,
        "order": [stage["stage"] for stage in stages],
        "stats": stats_frame(joined_with_outside(stages, *outside), exemplars, gpu),
        "outside_problem": outside_problem,
        "points": points.to_pandas(),
        "executions": executions,
        "samples": samples,
        "errors": errors_of(failed, errors[:ERRORS_SHOWN]),
        "errors_more": max(0, len(errors) - ERRORS_SHOWN) + (audit.get("errors_dropped") or 0),
        "accuracy": accuracy,
    }


def _outside_stages_or_damage(home: Path, filters: Filters) -> tuple[dict[str, Any] | None, list[Any], str | None]:
    """`outside_stages`, and None; or, when the runs table it reads cannot be read, no row and
    the sentence said in its place (the stages, errors and executions are shown still)."""
    try:
        return (*outside_stages(home, filters), None)
    except DamagedTable as error:
        return None, [], f"{OUTSIDE_STAGES} not shown: {table_not_read(error)}"


def sample_frame(home: Path, run_id: str, sample_id: str | None) -> pd.DataFrame:
    """One sample's stage executions (its waterfall): stage, status, duration_ms, start_ms (since
    its first stage started)."""
    rows = sample_executions(home, run_id, sample_id or "").to_pandas()
    if rows.empty:
        return pd.DataFrame(columns=["stage", "status", "duration_ms", "start_ms"])
    starts = rows["start_time"].astype("int64")
    return rows.assign(start_ms=(starts - starts.min()) / 1e6)[["stage", "status", "duration_ms", "start_ms"]]


EXECUTION_ORDER_CHOICES = {"failures first": "failures", "by start": "time"}


def executions_of(home: Path, run_id: str, order: str, offset: int, limit: int) -> Page:
    """A page of the run's stage executions (`EXECUTION_ORDER_CHOICES`), answered by SQL."""
    page, total = executions_page(home, run_id, order, offset, limit)
    return Page(page.to_pandas(), total, offset, limit)


def sample_gaps(home: Path, run_id: str, sample_id: str | None) -> pd.DataFrame:
    """The stretches outside stages charged to one sample (loading it, the glue between its
    stages): sample_id, start_ms, end_ms, gap_ms on `sample_frame`'s axis (since its first stage started)."""
    columns = ["sample_id", "start_ms", "end_ms", "gap_ms"]
    spans = gap_spans(home, run_id).to_pandas()
    spans = spans[spans["sample_id"] == sample_id]
    starts = sample_executions(home, run_id, sample_id or "").column("start_time")
    if spans.empty or not len(starts):
        return pd.DataFrame(columns=columns)
    origin = pd.Timestamp(min(starts.to_pylist())).value
    return pd.DataFrame(
        {
            "sample_id": spans["sample_id"],
            "start_ms": (spans["gap_start"] - origin) / 1e6,
            "end_ms": (spans["gap_end"] - origin) / 1e6,
            "gap_ms": spans["gap_ms"],
        },
        columns=columns,
    )


def stats_frame(
    stages: list[dict[str, Any]], exemplars: dict[str, dict[str, Any]], gpu: dict[str, dict[str, Any]]
) -> pd.DataFrame:
    """Per stage, in pipeline order (`run_stages`, the time outside stages last): counts, failure
    rate, duration percentiles, time share, CPU peak and the stage's own memory (its peak above
    its start), GPU peak; each stage's exemplars (`query_exemplars`) and GPU devices."""
    rows = []
    for entry in stages:
        duration = entry["duration_ms"]
        rows.append(
            {
                "stage": entry["stage"],
                "runs": entry["count"],
                "failure_rate": entry["failure_rate"],
                "median_ms": duration["median"],
                "p95_ms": duration["p95"],
                "p99_ms": duration["p99"],
                "max_ms": duration["max"],
                "share": entry["share_of_time"],
                "cpu_peak_mb": entry["rss_peak_mb"]["max"] if "rss_peak_mb" in entry else None,
                "own_mb": _finite(entry["own_mb"]["max"]) if "own_mb" in entry else None,
                "gpu_peak_mb": entry["gpu_peak_mb"]["max"] if "gpu_peak_mb" in entry else None,
                "gpu": gpu.get(entry["stage"]),
                "bottleneck": bool(entry.get("bottleneck")),
                "exemplars": exemplars.get(entry["stage"]),
            }
        )
    return pd.DataFrame(rows)


def exemplar_links(exemplars: dict[str, dict[str, Any]] | None) -> str:
    """'p95 · p99 · max' as links to the executions behind them (markup of our own: values are
    escaped), each hovering its sample, input path and duration, with a link to its logs."""
    if not exemplars:
        return ""
    from html import escape

    from stagewatch.ui._format import ms
    from stagewatch.ui._router import href

    links = []
    for name in EXEMPLARS:
        row = exemplars[name]
        hover = f"{row['sample_id'] or '-'} · {row['input_path'] or 'no input path'} · {ms(row['duration_ms'])}"
        links.append(
            f'<a class="sw-exemplar sw-exemplar-{name}" href="{href(row["links"]["case"])}#waterfall" '
            f'title="{escape(hover, quote=True)}">{name}: {escape(row["sample_id"] or "-")}</a>'
        )
    logs = href(exemplars["max"]["links"]["logs"])
    return " · ".join(links) + f' (<a class="sw-exemplar-logs" href="{logs}">logs</a>)'


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def bottleneck_sentence(stats: pd.DataFrame) -> str | None:
    """'postprocessing takes 49.2% of this run's time; p95 18.7 ms' (None without stages)."""
    stats = stats[stats["stage"] != OUTSIDE_STAGES]  # a stage's share of the run's wall time
    if stats.empty or not stats["share"].max() > 0:
        return None
    row = stats.loc[stats["share"].idxmax()]
    from stagewatch.ui._format import ms, pct

    return f"{row['stage']} takes {pct(row['share'])} of this run's time; p95 {ms(row['p95_ms'])}"


def errors_of(stages: list[dict[str, Any]], errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every error with its stage, sample, input path, time, type, message and traceback."""
    tracebacks = {(s.get("client_id"), s.get("span")): (s.get("error") or {}).get("traceback") for s in stages}
    return [{**e, "traceback": tracebacks.get((e.get("client_id"), e.get("span")))} for e in errors]


def stage_error(home: Path, run_id: str, execution: dict[str, Any]) -> dict[str, Any]:
    """The error of one failed or crashed stage execution (a row of stage_executions) as the run
    page shows it: the audit trail's entry with its traceback, else what the row itself holds
    (a crashed process left no traceback)."""
    where = (execution.get("client_id"), execution.get("span"))
    failed = stages_with(holding(home, run_id), run_id, FAILED, MAX_ERRORS_SEARCHED)
    for error in errors_of(failed, load_audit_head(home, run_id).get("errors", [])):
        if (error.get("client_id"), error.get("span")) == where:
            return error
    start = execution.get("start_time")
    return {
        "type": execution.get("error_type") or execution.get("status"),
        "message": execution.get("error_message") or "",
        "stage": execution.get("stage"),
        "sample_id": execution.get("sample_id"),
        "input_path": execution.get("input_path"),
        "at": start.isoformat() if hasattr(start, "isoformat") else start,
        "traceback": None,
    }


OUTPUT_COLUMNS = ["sample_id", "path"]


def outputs_page(home: Path, run_id: str, stage: str | None, offset: int, limit: int) -> tuple[dict[str, int], Page]:
    """Per stage, how many of its executions saved outputs; and `stage`'s outputs (sample,
    path) of its executions `offset` to `offset + limit` in the trail's order: one page, read
    on the server whatever the run saved (`stages_with_by_name`). A run whose head says it saved
    nothing is not searched."""
    audit = load_audit_head(home, run_id)
    if not (audit.get("counts") or {}).get("artifacts", 1):  # none: no line to look for (unknown: look)
        return {}, Page(pd.DataFrame(columns=OUTPUT_COLUMNS), 0, offset, limit)
    counts, stages = stages_with_by_name(holding(home, run_id), run_id, WITH_ARTIFACTS, stage, offset, limit)
    rows = [
        {
            "sample_id": str(artifact.get("sample_id") or execution.get("sample_id") or "-"),
            "path": str(artifact["path"]),
        }
        for execution in stages
        for artifact in execution.get("artifacts") or []
        if isinstance(artifact, dict) and isinstance(artifact.get("path"), str)
    ]
    return counts, Page(pd.DataFrame(rows, columns=OUTPUT_COLUMNS), counts.get(stage or "", 0), offset, limit)


def accuracy_frame(accuracy: dict[str, Any] | None) -> pd.DataFrame:
    rows = []
    for name, stage in (accuracy or {}).get("stages", {}).items():
        metrics = stage["metrics"]
        row = {"stage": name, "kind": stage["kind"], **stage["counts"]}
        if stage["kind"] == "boxes":
            coco = metrics.get("coco", {})
            row |= {
                "precision": metrics["precision"],
                "recall": metrics["recall"],
                "F1": metrics["f1"],
                "mAP": coco.get("AP"),
                "AP50": coco.get("AP50"),
            }
        else:
            row |= {"mIoU": metrics["miou"], "accuracy": metrics["accuracy"]}
        rows.append(row)
    return pd.DataFrame(rows)


def disk_problems(home: Path) -> list[str]:
    """The daemon's disk warnings (status.json), for the banner."""
    disk = _status(home).get("disk", {})
    return list(disk.get("problems") or []) if disk.get("state", "ok") != "ok" else []


def daemon_problem(home: Path, stale_after_s: float = 30.0) -> str | None:
    """Why nothing new will arrive, in words; None while the daemon writes its status."""
    status = _status(home)
    damaged = problem(STATUS, DaemonHome.of(home))
    if damaged is not None and DaemonHome.of(home).status.exists():
        return f"The daemon's status file of {home} is damaged ({damaged}): `stagewatch doctor` says what to do."
    if not status:
        return (
            f"No daemon has run on {home} yet: start one with `stagewatch daemon --home {home}` (or `stagewatch demo`)."
        )
    stored = "what you see is what was stored until then"
    at = _utc_second(status.get("stopped_at"))  # its last word, when it stopped cleanly
    if at is not None:
        return (
            f"The daemon of {home} stopped at {at}: {stored}. "
            f"Start it again to record pipelines (`stagewatch daemon --home {home}`)."
        )
    age = time.time() - float(status.get("updated_at") or 0)
    if age > stale_after_s:  # no word of a stop: killed, crashed, or hung
        return (
            f"The daemon of {home} last reported {int(age)} s ago and did not say it stopped: it was killed "
            f"or is stuck (`stagewatch doctor`), so {stored}."
        )
    return None


def _utc_second(seconds: Any) -> str | None:
    """A time stamp (seconds since the epoch) as ISO text to the second; None for anything else
    (status.json is a file a person can edit)."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):  # NaN, past year 9999
        return None


def _status(home: Path) -> dict[str, Any]:
    """status.json as the daemon writes it; {} when it is missing or damaged (of another shape:
    a hand edit; `daemon_problem` tells the two apart)."""
    return peek(STATUS, DaemonHome.of(home)) or {}


def resolve_artifact(home: Homes, relative: str) -> Path:
    """The file behind an artifact link, or ArtifactRefused: nothing outside the runs/ of the
    home that holds its run."""
    try:
        parts = parse_artifact_relpath(relative)
        holder = holding(home, parts[0])
        path = DaemonHome.of(holder).artifact(*parts).resolve()
    except (ValueError, TypeError) as error:
        raise ArtifactRefused(f"refused {relative!r:.200}: {error}") from None
    runs = DaemonHome.of(holder).runs.resolve()
    if not path.is_relative_to(runs):
        raise ArtifactRefused(f"refused {relative!r}: it leads outside the home (a symlink?)")
    if not path.is_file():
        raise ArtifactRefused(f"{relative} does not exist (removed by retention?)")
    return path


def thumbnail_png(path: Path, size: int = 96) -> bytes:
    """A small PNG of an image output, for the run page's list (the full image opens on click)."""
    if path.stat().st_size > PREVIEW_BYTES:
        raise ValueError(f"{path.name} is too large for a thumbnail")
    with Image.open(path) as image:
        image.thumbnail((size * 2, size))
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()


def image_pair_difference(first: Path, second: Path) -> Any:
    """`diff.image_difference` of two saved images (PNG), both read inside the size limit."""
    from stagewatch.daemon.groundtruth.diff import image_difference

    images = []
    for path in (first, second):
        if path.suffix.lower() != ".png":
            raise ValueError(f"{path.name} is not a PNG image")
        if path.stat().st_size > PREVIEW_BYTES:
            raise ValueError(f"{path.name} is too large to compare here (use `stagewatch diff image`)")
        with Image.open(path) as image:
            images.append(np.asarray(image))
    return image_difference(*images)


def preview(path: Path) -> tuple[str, Any]:
    """(kind, content) to show: png bytes, JSON data, or a summary of an array or a point cloud;
    ("unreadable", what is wrong) for a file that cannot be read (damaged, truncated), so the
    page says so instead of showing a blank."""
    try:
        return _preview(path)
    except (OSError, ValueError, EOFError, SyntaxError) as error:  # PIL reports a bad PNG as SyntaxError
        return "unreadable", f"{path.name} cannot be read: {type(error).__name__}: {str(error)[:300]}"


def _preview(path: Path) -> tuple[str, Any]:
    size = path.stat().st_size
    if size > PREVIEW_BYTES:
        return "summary", {"file": path.name, "bytes": size, "note": "too large to preview"}
    suffix = path.suffix.lower()
    if suffix == ".png":
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every row: a truncated or damaged PNG fails here, not in the browser
        return "png", data
    if suffix == ".json":
        try:
            return "json", json.loads(path.read_bytes())
        except ValueError as error:
            return "summary", {"file": path.name, "error": f"not valid JSON: {error}"}
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        return "summary", _array_summary(path.name, array)
    if suffix in (".ply", ".pcd"):
        return "summary", _cloud_summary(path, size)
    return "summary", {"file": path.name, "bytes": size}


def _cloud_summary(path: Path, size: int) -> dict[str, Any]:
    """Points, their bounds (None when there is no finite point: an empty cloud is routine) and
    the labels' counts when the cloud has labels."""
    from stagewatch.daemon.groundtruth.formats import LabelError, load_points

    try:
        positions, labels = load_points(path)
    except LabelError as error:
        return {"file": path.name, "bytes": size, "note": str(error)}
    summary = _array_summary(path.name, positions if labels is None else labels)
    finite = positions[np.isfinite(positions).all(axis=1)]
    bounds = [finite.min(0).round(2).tolist(), finite.max(0).round(2).tolist()] if len(finite) else None
    return {**summary, "points": len(positions), "bounds": bounds}


def saved_cloud(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """A saved PLY or PCD output's points (N x 3), labels (None without) and the other per-point
    numbers it carries, for its 3D view; LabelError or OSError when it cannot be read."""
    from stagewatch.daemon.groundtruth.formats import load_point_attributes, load_points

    if path.stat().st_size > PREVIEW_BYTES:
        raise ValueError(f"{path.name} is too large to draw here")
    positions, labels = load_points(path)
    return positions, labels, load_point_attributes(path)


def _array_summary(name: str, array: np.ndarray) -> dict[str, Any]:
    summary: dict[str, Any] = {"file": name, "shape": list(array.shape), "dtype": str(array.dtype)}
    if array.dtype.kind in "iub" and array.size:
        values, counts = np.unique(array, return_counts=True)
        if len(values) <= 32:
            summary["values"] = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
    return summary


__all__ = [
    "ArtifactRefused",
    "RunNotFound",
    "accuracy_frame",
    "disk_problems",
    "find_run",
    "preview",
    "resolve_artifact",
    "run_view",
    "runs_page",
    "skipped_files",
    "skipped_for_run",
    "stats_frame",
    "tables_not_whole",
]
