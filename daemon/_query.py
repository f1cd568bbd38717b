"""Queries over the read models: by run, time range, stage, status, log level and text.

Filters become pyarrow dataset expressions (date partitions are pruned by the time range),
aggregates are Arrow compute kernels; Python only loops over the few stages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from stagewatch.daemon._readmodels import read_table, runs_being_removed
from stagewatch.daemon._runindex import run_dates
from stagewatch.daemon._stagestats import STATS_COLUMNS, current_summaries, partition_dates, stats_of, summarize

STATUSES = ("ok", "failed", "crashed", "running")  # running: runs in progress only
LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
_RELATIVE = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO date or date-time (UTC if no zone), or a relative age: '7d', '24h', '30m'."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(text.strip())
    try:
        if relative:
            return now - timedelta(seconds=int(relative.group(1)) * _SECONDS[relative.group(2)])
        moment = datetime.fromisoformat(text.strip())
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)  # in range as UTC too: partitions are UTC dates
    except (ValueError, OverflowError):
        raise ValueError(
            f"expected a time like 2026-11-20, 2026-11-20T08:00 or 7d/24h/30m between the years 1 and 9999, "
            f"got {text!r:.80}"
        ) from None


@dataclass(frozen=True)
class Filters:
    run: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    stage: str | None = None
    status: str | None = None
    level: str | None = None
    grep: str | None = None
    regex: bool = False  # grep is an RE2 regular expression (case-insensitive), not a substring
    pipeline: str | None = None
    host: str | None = None
    failed_stage: str | None = None  # runs: the stage that failed first
    logger: str | None = None  # logs: the logger's name, or a prefix of it ending in "."

    def __post_init__(self) -> None:
        for bound in ("since", "until"):  # partitions are UTC dates: compare in UTC
            moment = getattr(self, bound)
            if moment is not None:
                utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
                object.__setattr__(self, bound, utc)
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"expected --status one of {', '.join(STATUSES)}, got {self.status!r}")
        if self.level is not None and self.level.upper() not in LEVELS:
            raise ValueError(f"expected --level one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.regex and self.grep:
            try:
                pc.match_substring_regex(pa.array([""]), self.grep, ignore_case=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                problem = f"expected --grep as a regular expression (RE2 syntax), got {self.grep!r:.200}: {error}"
                raise ValueError(problem) from None
        if self.since and self.until and self.since > self.until:
            raise ValueError(
                f"expected --since before --until, got {self.since.isoformat()} > {self.until.isoformat()}"
            )


def _time_filter(column: str, filters: Filters) -> ds.Expression | None:
    expression = None
    for bound, op in ((filters.since, "ge"), (filters.until, "le")):
        if bound is not None:
            scalar = pa.scalar(bound, pa.timestamp("ns", tz="UTC"))
            term = getattr(pc, {"ge": "greater_equal", "le": "less_equal"}[op])(ds.field(column), scalar)
            date = pa.scalar(bound.strftime("%Y-%m-%d"))
            term = term & (ds.field("date") >= date if op == "ge" else ds.field("date") <= date)  # prunes files
            expression = term if expression is None else expression & term
    return expression


def _and(*terms: ds.Expression | None) -> ds.Expression | None:
    present = [t for t in terms if t is not None]
    expression = present[0] if present else None
    for term in present[1:]:
        expression = expression & term
    return expression


def _contains(column: str, filters: Filters) -> ds.Expression | None:
    if not filters.grep:
        return None
    match = pc.match_substring_regex if filters.regex else pc.match_substring
    return match(ds.field(column), filters.grep, ignore_case=True)


def _equals(column: str, value: str | None) -> ds.Expression | None:
    return ds.field(column) == value if value else None


def _dates_of(home: Path, filters: Filters) -> list[str] | None:
    """With --run, only the run's date partitions (from the run index) are read."""
    return run_dates(home, filters.run) if filters.run else None


def query_runs(home: Path, filters: Filters, columns: list[str] | None = None) -> pa.Table:
    expression = _and(
        _time_filter("start_time", filters),
        _equals("run_id", filters.run),
        _equals("status", filters.status),
        _equals("pipeline", filters.pipeline),
        _equals("host", filters.host),
        _equals("failed_stage", filters.failed_stage),
        _contains("error_message", filters),
    )
    return read_table(home, "runs", expression, _dates_of(home, filters), columns)


def query_stages(home: Path, filters: Filters, columns: list[str] | None = None) -> pa.Table:
    return read_table(home, "stage_executions", _stage_expression(filters), _dates_of(home, filters), columns)


def _stage_expression(filters: Filters) -> ds.Expression | None:
    return _and(
        _time_filter("start_time", filters),
        _equals("run_id", filters.run),
        _equals("stage", filters.stage),
        _equals("status", filters.status),
        _equals("pipeline", filters.pipeline),
        _contains("error_message", filters),
    )


def query_logs(home: Path, filters: Filters, columns: list[str] | None = None) -> pa.Table:
    return read_table(home, "logs", _log_expression(filters), _dates_of(home, filters), columns)


def _log_expression(filters: Filters) -> ds.Expression | None:
    levels = LEVELS[LEVELS.index(filters.level.upper()) :] if filters.level else None
    logger = None
    if filters.logger:  # "app." names a family of loggers, "app" one logger
        logger = (
            pc.starts_with(ds.field("logger"), filters.logger)
            if filters.logger.endswith(".")
            else ds.field("logger") == filters.logger
        )
    return _and(
        _time_filter("time", filters),
        _equals("run_id", filters.run),
        _equals("stage", filters.stage),
        _equals("pipeline", filters.pipeline),
        ds.field("level").isin(levels) if levels else None,
        logger,
        _contains("message", filters),
    )


def stage_stats(stages: pa.Table) -> list[dict[str, Any]]:
    """Per stage: count, failure rate, mean/median/p95/p99/max of duration and memory peaks,
    and each stage's share of the total time (the largest is the bottleneck)."""
    return stats_of(summarize(stages))


def query_stats(home: Path, filters: Filters) -> list[dict[str, Any]]:
    """stage_stats of the stage executions that match `filters`. Whole days in the range come
    from the summaries the daemon keeps of compacted partitions (docs/queries.md); the other
    days, and any query by run or text, are read row by row."""
    if filters.run is not None or filters.grep is not None or runs_being_removed(home):
        return stage_stats(_stats_rows(home, filters, _dates_of(home, filters)))
    dates = [date for date in partition_dates(home) if _overlaps(filters, date)]
    summaries = current_summaries(home, [date for date in dates if _covers(filters, date)])
    groups = [
        g
        for date_groups in summaries.values()
        for g in date_groups
        if filters.stage in (None, g.stage) and filters.status in (None, g.status)
    ]
    rest = [date for date in dates if date not in summaries]
    return stats_of([*groups, *summarize(_stats_rows(home, filters, rest))])


def _stats_rows(home: Path, filters: Filters, dates: list[str] | None) -> pa.Table:
    # Stage and status as dictionaries: no string per row, and summarize needs their codes.
    return read_table(home, "stage_executions", _stage_expression(filters), dates, STATS_COLUMNS, ("stage", "status"))


def _overlaps(filters: Filters, date: str) -> bool:
    return (filters.since is None or filters.since.strftime("%Y-%m-%d") <= date) and (
        filters.until is None or date <= filters.until.strftime("%Y-%m-%d")
    )


def _covers(filters: Filters, date: str) -> bool:
    """Whether the time range holds all of `date` (UTC), so its rows need no time filter."""
    midnight = datetime.fromisoformat(date).replace(tzinfo=UTC)
    return (filters.since is None or filters.since <= midnight) and (
        filters.until is None or filters.until >= midnight + timedelta(days=1)
    )


def query_gpu_devices(home: Path, filters: Filters) -> dict[str, dict[str, Any]]:
    """Per stage with GPU readings: the sources they came from and, per device, the count, median
    and max of the stages' peaks (MB); the per-device view beside `query_stats`'s totals."""
    expression = _and(_stage_expression(filters), ds.field("gpu_devices").is_valid())
    rows = read_table(
        home, "stage_executions", expression, _dates_of(home, filters), ["stage", "gpu_source", "gpu_devices"]
    )
    found: dict[str, dict[str, Any]] = {}
    if not rows.num_rows:
        return found
    devices = rows["gpu_devices"].combine_chunks()
    # Map arrays: offsets index their key and item children (list_parent_indices takes no maps).
    offsets = devices.offsets.to_numpy()
    first, last = int(offsets[0]), int(offsets[-1])
    parents = np.repeat(np.arange(len(devices)), np.diff(offsets))
    stages = np.asarray(rows["stage"].to_pylist(), dtype=object)[parents]
    names = np.asarray(devices.keys[first:last].to_pylist(), dtype=object)
    peaks = devices.items[first:last].to_numpy(zero_copy_only=False).astype(np.float64)
    for stage, source in {(r["stage"], r["gpu_source"]) for r in rows.select(["stage", "gpu_source"]).to_pylist()}:
        found.setdefault(stage, {"sources": [], "devices": {}})["sources"].append(source)
    for stage, device in sorted({*zip(stages, names, strict=True)}):
        values = peaks[(stages == stage) & (names == device)]
        values = values[~np.isnan(values)]
        found[stage]["devices"][device] = {
            "count": int(values.size),
            "median": float(np.median(values)) if values.size else None,
            "max": float(values.max()) if values.size else None,
        }
    for entry in found.values():
        entry["sources"].sort()
        entry["devices"] = dict(sorted(entry["devices"].items(), key=lambda item: int(item[0])))
    return found
