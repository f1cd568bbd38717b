"""Queries over the tables: by run, time range, stage, status, log level and text.

Filters become SQL terms with bound parameters (`_sql.select` runs them on DuckDB over the
table's snapshot); a time range also names the date partitions, so DuckDB opens only the
files of those days. Statistics are exact aggregates in the same SQL (`quantile_cont`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stagewatch.daemon.projection._outcomes import RUN_STATUSES
from stagewatch.daemon.query._hosts import runs_on_host
from stagewatch.daemon.query._sql import MAX_ROWS, homes_of, over_arrow, quoted, schema_of, select
from stagewatch.daemon.tables._runindex import run_dates

STATUSES = RUN_STATUSES  # a run's; a stage execution's are fewer (daemon/projection/_outcomes.py)
LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
_RELATIVE = re.compile(r"^([0-9]+)\s*(s|m|h|d|w)$")  # ASCII digits: \d takes ٢٤ too
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: datetime | None = None, *, until: bool = False) -> datetime:
    """An ISO date or date-time (UTC if no zone), or a relative age: '7d', '24h', '30m'. A date
    alone is the start of that day (UTC); as an upper bound (`until`: --until, the dashboard's
    Until) the end of it, its last microsecond, so that `--since D --until D` is the day D."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(text.strip())
    try:
        if relative:
            return now - timedelta(seconds=int(relative.group(1)) * _SECONDS[relative.group(2)])
        if until and (day := _date_alone(text.strip())) is not None:
            return datetime.combine(day, time.max, tzinfo=UTC)
        moment = datetime.fromisoformat(text.strip())
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)  # in range as UTC too: partitions are UTC dates
    except (ValueError, OverflowError):
        raise ValueError(
            f"expected a time like 2026-11-20, 2026-11-20T08:00 or 7d/24h/30m between the years 1 and 9999, "
            f"got {text!r:.80}"
        ) from None


def _date_alone(text: str) -> date | None:
    """The day `text` names if it is a date and no time (2026-11-20, 20261120), else None."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


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
                problem = f"expected the text filter as a regular expression (RE2 syntax), got {self.grep!r:.200}"
                problem += f": {error}"
                raise ValueError(problem) from None
        if self.since and self.until and self.since > self.until:
            raise ValueError(
                f"expected --since before --until, got {self.since.isoformat()} > {self.until.isoformat()}"
            )


# What timestamp[ns] can hold (a day inside its limits): every stored time is in this range.
STORED_TIMES = (datetime(1677, 9, 22, tzinfo=UTC), datetime(2262, 4, 10, tzinfo=UTC))


@dataclass
class Where:
    """SQL terms joined by AND, and the values bound to their placeholders in order."""

    terms: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    dates: list[str] | None = None  # the only date partitions that can hold a match (None: any)

    def add(self, term: str, *params: Any) -> Where:
        self.terms.append(term)
        self.params.extend(params)
        return self

    def equals(self, column: str, value: str | None) -> Where:
        return self.add(f'"{column}" = ?', value) if value else self

    def copy(self) -> Where:
        return Where(list(self.terms), list(self.params), self.dates)

    @property
    def sql(self) -> str:
        return f" WHERE {' AND '.join(self.terms)}" if self.terms else ""


def _common(where: Where, home: Path, time_column: str, filters: Filters) -> Where:
    """The time range (and the date partitions it spans, so other days' files stay closed),
    the run (and the partitions the run index says hold its rows: a random run id says
    nothing to Parquet's statistics until a file is opened) and the pipeline."""
    for bound, op in ((filters.since, ">="), (filters.until, "<=")):
        if bound is None or (bound < STORED_TIMES[0] if op == ">=" else bound > STORED_TIMES[1]):
            continue  # every stored time is inside: no term (the bound has no nanosecond form)
        if bound > STORED_TIMES[1] if op == ">=" else bound < STORED_TIMES[0]:
            where.add("false")  # no stored time is inside
            continue
        where.add(f'"{time_column}" {op} ?', bound).add(f"date {op} ?", bound.strftime("%Y-%m-%d"))
    if filters.run:
        where.dates = run_dates_in(homes_of(home), filters.run)
    return where.equals("run_id", filters.run).equals("pipeline", filters.pipeline)


def run_dates_in(homes: list[Path], run_id: str) -> list[str] | None:
    """The date partitions that hold the run's rows in any of the homes (None: some home cannot say)."""
    found = [run_dates(home, run_id) for home in homes]
    return None if any(dates is None for dates in found) else sorted({date for dates in found for date in dates})


def _contains(where: Where, column: str, filters: Filters) -> Where:
    """--grep: case-insensitive text, or an RE2 regular expression with --regex."""
    if not filters.grep:
        return where
    if filters.regex:
        return where.add(f"regexp_matches(\"{column}\", ?, 'i')", filters.grep)
    return where.add(f'contains(lower("{column}"), ?)', filters.grep.lower())


def run_where(home: Path, filters: Filters) -> Where:
    where = _common(Where(), home, "start_time", filters)
    where.equals("status", filters.status).equals("host", filters.host).equals("failed_stage", filters.failed_stage)
    return _contains(where, "error_message", filters)


def _of_runs(where: Where, home: Path, filters: Filters) -> Where:
    """The filters only a run's row can answer (--host, --failed-stage), for the rows of runs
    (stage executions, log lines): their run is one of the runs that match (`_hosts.runs_on_host`;
    the runs whose first failure was in that stage). Every row names its pipeline: --pipeline
    needs no list (`_common`)."""
    if filters.host:
        in_runs(where, runs_on_host(home, filters.host))
    if filters.failed_stage:
        in_runs(where, run_ids(home, "runs", Where().equals("failed_stage", filters.failed_stage)))
    return where


def in_runs(where: Where, ids: Sequence[str]) -> Where:
    """`where`, and the row's run one of `ids` (the list bound as one parameter)."""
    return where.add("run_id IN (SELECT unnest(?::VARCHAR[]))", list(ids))


def run_ids(home: Path, table: str, where: Where) -> list[str]:
    """The distinct run ids of the rows of `table` that `where` lets through, sorted."""
    sql = f"SELECT DISTINCT run_id FROM rows{where.sql} ORDER BY run_id"
    found = select(home, table, sql, where.params, None, where.dates)["run_id"].to_pylist()
    return [run_id for run_id in found if run_id is not None]


def stage_where(home: Path, filters: Filters) -> Where:
    where = _of_runs(_common(Where(), home, "start_time", filters), home, filters)
    where.equals("stage", filters.stage).equals("status", filters.status)
    return _contains(where, "error_message", filters)


def log_where(home: Path, filters: Filters) -> Where:
    where = _of_runs(_common(Where(), home, "time", filters), home, filters).equals("stage", filters.stage)
    if filters.level:
        levels = LEVELS[LEVELS.index(filters.level.upper()) :]
        where.add(f"level IN ({', '.join('?' * len(levels))})", *levels)
    if filters.logger:  # "app." names a family of loggers, "app" one logger
        where.add("starts_with(logger, ?)" if filters.logger.endswith(".") else "logger = ?", filters.logger)
    return _contains(where, "message", filters)


def rows_of(home: Path, table: str, where: Where, columns: Sequence[str] | None = None, order: str = "lsn") -> pa.Table:
    """The rows of `table` that `where` lets through, in `order`, as the table's types."""
    schema = schema_of(table)
    names = list(columns) if columns is not None else schema.names
    sql = f"SELECT {quoted(names)} FROM rows{where.sql} ORDER BY {order}"
    return select(home, table, sql, where.params, pa.schema([schema.field(name) for name in names]), where.dates)


def page_of(
    home: Path, table: str, where: Where, columns: Sequence[str], order: str, offset: int, limit: int
) -> tuple[pa.Table, int]:
    """Rows offset..offset+limit of those `where` lets through, in `order` (SQL of our own:
    column names and directions, never a user's text), and how many match in all."""
    if not (0 <= offset < MAX_ROWS and 0 < limit < MAX_ROWS):
        raise ValueError(f"expected a page offset >= 0 and a page size > 0 below 2**62, got {offset} and {limit}")
    schema = schema_of(table)
    sql = f"SELECT {quoted(columns)} FROM rows{where.sql} ORDER BY {order} LIMIT ? OFFSET ?"
    page_schema = pa.schema([schema.field(c) for c in columns])
    page = select(home, table, sql, [*where.params, limit, offset], page_schema, where.dates)
    total = select(home, table, f"SELECT count(*) AS n FROM rows{where.sql}", where.params, None, where.dates)
    return page, total["n"][0].as_py()


def distinct_values(home: Path, table: str, column: str) -> list[str]:
    """The column's distinct non-empty values, sorted (whatever encoding each part uses)."""
    sql = f'SELECT DISTINCT "{column}" AS v FROM rows WHERE "{column}" IS NOT NULL AND "{column}" <> \'\' ORDER BY v'
    return select(home, table, sql)["v"].to_pylist()


def query_runs(home: Path, filters: Filters, columns: list[str] | None = None) -> pa.Table:
    return rows_of(home, "runs", run_where(home, filters), columns)


def query_stages(home: Path, filters: Filters, columns: list[str] | None = None) -> pa.Table:
    return rows_of(home, "stage_executions", stage_where(home, filters), columns)


def query_logs(home: Path, filters: Filters, columns: list[str] | None = None) -> pa.Table:
    """Matching log lines in time order (the log's order where times tie): several clients'
    lines reach the event log interleaved by delivery, not by when they were logged."""
    return rows_of(home, "logs", log_where(home, filters), columns, order="time, lsn")


# Each measure and the SQL of its value per execution. "own_mb" is the stage's own memory: its
# peak above the process's RSS when it began (the peak is the process's, the same for every stage
# that runs beside a large process; what a stage allocated is the figure that tells them apart).
MEASURES = {
    "duration_ms": "duration_ms",
    "rss_peak_mb": "rss_peak_mb",
    "own_mb": "rss_peak_mb - rss_start_mb",
    "gpu_peak_mb": "gpu_peak_mb",
}
STATS_COLUMNS = [
    "stage",
    "status",
    "start_time",
    "duration_ms",
    "rss_start_mb",
    "rss_peak_mb",
    "gpu_peak_mb",
    "parent_span",
]
PERCENTILES = (0.5, 0.95, 0.99)


def _stats_sql(where: str) -> str:
    """Per stage, in pipeline order (the order stages first ran; the name where none has a start):
    rows, failures, the time of its executions at the top level (no enclosing stage), and per
    measure its values' count, sum, exact quantiles (linear interpolation, as numpy.percentile's
    default) and maximum (NULL is no reading). Sums are compensated (`fsum`): a plain float sum
    follows the order DuckDB's threads meet the files, so the same rows in other files (after a
    compaction, a rebuild) gave means that differed in their last digits."""
    measures = []
    for value in MEASURES.values():
        quantiles = f"quantile_cont({value}, {list(PERCENTILES)})"
        measures += [f"count({value})", f"fsum({value})", quantiles, f"max({value})"]
    return (
        "SELECT stage, count(*), count(*) FILTER (WHERE status IS DISTINCT FROM 'ok'), "
        f"coalesce(fsum(duration_ms) FILTER (WHERE parent_span IS NULL), 0), {', '.join(measures)} "
        f"FROM rows{where} GROUP BY stage ORDER BY min(start_time) NULLS LAST, stage"
    )


def stage_stats(stages: pa.Table) -> list[dict[str, Any]]:
    """Per stage: count, failure rate, mean/median/p95/p99/max of duration and memory (the
    process's peak and the stage's own), and each stage's share of the total time (the largest
    is the bottleneck). The daemon never stores NaN (validation refuses it); in rows in hand it
    counts as no reading, and so does a column the rows lack."""
    rows = stages
    for name in STATS_COLUMNS:
        if name not in rows.column_names:
            kind = {"start_time": pa.timestamp("ns", tz="UTC"), "parent_span": pa.int64()}.get(name, pa.float64())
            rows = rows.append_column(name, pa.nulls(rows.num_rows, kind))
    rows = rows.select(STATS_COLUMNS)
    for name in ("duration_ms", "rss_start_mb", "rss_peak_mb", "gpu_peak_mb"):
        column = rows[name]
        rows = rows.set_column(rows.schema.get_field_index(name), name, pc.if_else(pc.is_nan(column), None, column))
    return _stats_of(over_arrow(rows, _stats_sql("")))


def query_stats(home: Path, filters: Filters) -> list[dict[str, Any]]:
    """stage_stats of the stage executions that match `filters`, in one aggregate query."""
    where = stage_where(home, filters)
    return _stats_of(select(home, "stage_executions", _stats_sql(where.sql), where.params, None, where.dates))


def _stats_of(aggregates: pa.Table) -> list[dict[str, Any]]:
    result, top_level_ms = [], 0.0
    for row in aggregates.to_pylist():
        stage, count, failed, at_top_level_ms, *cells = row.values()
        entry: dict[str, Any] = {"stage": stage, "count": count, "failure_rate": failed / count}
        for index, name in enumerate(MEASURES):
            values, total, quantiles, peak = cells[4 * index : 4 * index + 4]
            entry[name] = _distribution(values, total, quantiles, peak)
        result.append(entry)
        top_level_ms += at_top_level_ms
    # A stage's share is of the time the top-level stages took: a nested stage's time is inside
    # its parent's already, and counted twice it shrank every share (the top-level ones no longer
    # added up to the whole). Nested stages alone (a filter picked them): of their own time.
    whole = top_level_ms or sum(entry["duration_ms"]["sum"] for entry in result)
    for entry in result:
        entry["share_of_time"] = entry["duration_ms"]["sum"] / whole if whole else 0.0
        for name in MEASURES:
            del entry[name]["sum"]
    if result:
        max(result, key=lambda e: e["share_of_time"])["bottleneck"] = True
    return result


def _distribution(values: int, total: float | None, quantiles: list[float] | None, peak: float | None) -> dict:
    if not values:
        return {"mean": None, "median": None, "p95": None, "p99": None, "max": None, "sum": 0.0}
    median, p95, p99 = quantiles
    return {"mean": total / values, "median": median, "p95": p95, "p99": p99, "max": peak, "sum": total}


def query_gpu_devices(home: Path, filters: Filters) -> dict[str, dict[str, Any]]:
    """Per stage with GPU readings: the sources they came from and, per device, the count, median
    and max of the stages' peaks (MB); the per-device view beside `query_stats`'s totals."""
    where = stage_where(home, filters).add("gpu_devices IS NOT NULL")
    rows = rows_of(home, "stage_executions", where, ["stage", "gpu_source", "gpu_devices"])
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


# -- one run's stage executions (`stagewatch show`, the Run page): SQL, whatever the run's length
EXECUTION_COLUMNS = [
    "stage",
    "sample_id",
    "status",
    "start_time",
    "duration_ms",
    "rss_start_mb",
    "rss_peak_mb",
    "gpu_peak_mb",
    "input_path",
    "error_type",
    "error_message",
    "span",
    "client_id",
]
# Our own SQL (never a user's text): failures first (then by time), or by time alone.
EXECUTION_ORDERS = {
    "failures": "status = 'ok', start_time, lsn",
    "time": "start_time, lsn",
}


def executions_page(
    home: Path, run_id: str, order: str = "failures", offset: int = 0, limit: int = 50
) -> tuple[pa.Table, int]:
    """A page of the run's stage executions in `order` (EXECUTION_ORDERS), and how many it has."""
    if order not in EXECUTION_ORDERS:
        raise ValueError(f"expected an order of {', '.join(EXECUTION_ORDERS)}, got {order!r}")
    where = stage_where(home, Filters(run=run_id))
    return page_of(home, "stage_executions", where, EXECUTION_COLUMNS, EXECUTION_ORDERS[order], offset, limit)


def run_stages(home: Path, run_id: str) -> list[dict[str, Any]]:
    """`query_stats` of the run: per stage, in the order stages first ran (the pipeline's, not
    the alphabet's)."""
    return query_stats(home, Filters(run=run_id))


def duration_points(home: Path, run_id: str, slices: int, failures: int) -> tuple[pa.Table, int]:
    """What a chart of the run's durations over time can show: per stage, the slowest execution
    of each of `slices` equal slices of the run, and up to `failures` executions that did not
    end ok (every one, unless there are more); and how many executions have a duration. Columns:
    stage, sample_id, status, duration_ms, start_ms (since the run's first stage started)."""
    where = stage_where(home, Filters(run=run_id)).add("duration_ms IS NOT NULL")
    sql = f"""SELECT * FROM (
        WITH timed AS (SELECT stage, sample_id, status, duration_ms, epoch_ns(start_time) AS t, lsn
                       FROM rows{where.sql}),
             span AS (SELECT min(t) AS low, greatest(max(t) - min(t), 1) AS width, count(*) AS n FROM timed)
        SELECT stage, sample_id, status, duration_ms, (t - low) / 1e6 AS start_ms, n FROM (
            SELECT stage, arg_max(sample_id, duration_ms) AS sample_id, 'ok' AS status,
                   max(duration_ms) AS duration_ms, arg_max(t, duration_ms) AS t
            FROM timed, span WHERE status = 'ok'
            GROUP BY stage, least(floor((t - low)::DOUBLE * ? / width), ? - 1)  -- ns x slices: past BIGINT in months
            UNION ALL
            (SELECT stage, sample_id, status, duration_ms, t FROM timed
             WHERE status IS DISTINCT FROM 'ok' ORDER BY t, lsn LIMIT ?)
        ), span) ORDER BY start_ms"""
    points = select(home, "stage_executions", sql, [*where.params, slices, slices, failures], None, where.dates)
    total = points["n"][0].as_py() if points.num_rows else 0
    return points.drop(["n"]), total


def sample_executions(home: Path, run_id: str, sample_id: str) -> pa.Table:
    """The run's stage executions of one sample (its waterfall), in time order."""
    where = stage_where(home, Filters(run=run_id)).equals("sample_id", sample_id)
    if not sample_id:
        where.add("false")
    return rows_of(home, "stage_executions", where, EXECUTION_COLUMNS, order="start_time, lsn")


def run_samples(home: Path, run_id: str, limit: int) -> list[str]:
    """The run's samples that had a failure, then the first others, `limit` in all (a picker
    of a million samples is no picker)."""
    where = stage_where(home, Filters(run=run_id)).add("sample_id IS NOT NULL")
    sql = (
        "SELECT sample_id, bool_or(status IS DISTINCT FROM 'ok') AS failed, min(start_time) AS first "
        f"FROM rows{where.sql} GROUP BY sample_id ORDER BY failed DESC, first, sample_id LIMIT ?"
    )
    found = select(home, "stage_executions", sql, [*where.params, limit], None, where.dates)
    return found["sample_id"].to_pylist()
