"""Where the rest of the time went: the wall time of a run that no stage covers.

A run's wall time is its start to its end (the runs table); its top-level stages
(`parent_span` null: a nested stage lies inside its parent) cover the union of their
intervals. What they leave is data loading, I/O and the pipeline's own glue. Each gap is
charged to the sample whose stage follows it (the time spent getting that sample to the
stage); the time after the last stage is the run's tail, charged to no sample. So, per run,
the stages' union plus the gaps is the wall time.

All in SQL over `stage_executions`: a window function gives each stage the furthest end
of the stages that started before it; the stretch from there to its start is uncovered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from stagewatch.daemon.query._query import PERCENTILES, Filters, Where, _distribution, rows_of, run_where, stage_where
from stagewatch.daemon.query._sql import select

# Not a stage name (parentheses and a space: client/_names.py allows neither), so it never
# collides with a stage's row beside it.
OUTSIDE_STAGES = "(outside stages)"

_RUNS = """runs_in AS (
    SELECT unnest(?::VARCHAR[]) AS run_id, unnest(?::BIGINT[]) AS run_start, unnest(?::BIGINT[]) AS run_end
)"""

# Per top-level stage: the uncovered stretch before it, from the furthest end of the stages
# that started earlier (or the run's start), clipped to the run; then the tail of each run.
_GAPS = f"""WITH {_RUNS},
spans AS (
    SELECT s.run_id, s.sample_id, epoch_ns(s.start_time) AS span_start, epoch_ns(s.end_time) AS span_end,
           r.run_start, coalesce(r.run_end, max(epoch_ns(s.end_time)) OVER (PARTITION BY s.run_id)) AS run_end
    FROM rows AS s JOIN runs_in AS r USING (run_id)
    {{where}}
),
ordered AS (
    SELECT *, greatest(run_start, coalesce(max(span_end) OVER (
        PARTITION BY run_id ORDER BY span_start, span_end ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
    ), run_start)) AS covered_until
    FROM spans
),
before_stages AS (
    SELECT run_id, sample_id, covered_until AS gap_start, least(span_start, run_end) AS gap_end FROM ordered
),
tails AS (
    SELECT r.run_id, NULL::VARCHAR AS sample_id,
           greatest(r.run_start, coalesce(max(o.span_end), r.run_start)) AS gap_start,
           coalesce(r.run_end, max(o.span_end)) AS gap_end
    FROM runs_in AS r LEFT JOIN ordered AS o USING (run_id)
    GROUP BY r.run_id, r.run_start, r.run_end
),
gaps AS (
    SELECT run_id, sample_id, gap_start, gap_end, greatest(gap_end - gap_start, 0) / 1e6 AS gap_ms
    FROM (SELECT * FROM before_stages UNION ALL SELECT * FROM tails)
    WHERE gap_end IS NOT NULL
)"""


def _runs_of(home: Path, filters: Filters) -> tuple[list[str], list[int], list[int | None]]:
    """The runs `filters` select (by run, time and pipeline only: a stage's status or name says
    nothing about its run's wall time) and their start and end as ns since the epoch."""
    scope = Filters(run=filters.run, since=filters.since, until=filters.until, pipeline=filters.pipeline)
    runs = rows_of(home, "runs", run_where(home, scope), ["run_id", "start_time", "end_time"])
    runs = runs.filter(pa.compute.is_valid(runs["start_time"]))
    starts = runs["start_time"].cast(pa.int64()).to_pylist()
    ends = runs["end_time"].cast(pa.int64()).to_pylist()
    return runs["run_id"].to_pylist(), starts, ends


def _gaps_query(home: Path, filters: Filters, final: str) -> pa.Table:
    """`final` (SQL over the CTE `gaps`) over the gaps of the runs `filters` selects."""
    run_ids, starts, ends = _runs_of(home, filters)
    scope = Filters(run=filters.run, pipeline=filters.pipeline)  # the runs' whole time, not a window of it
    where: Where = stage_where(home, scope)
    where.add("parent_span IS NULL").add("start_time IS NOT NULL").add("end_time IS NOT NULL")
    sql = f"SELECT * FROM ({_GAPS.format(where=where.sql)} {final})"  # after the query layer's WITH rows
    return select(home, "stage_executions", sql, [run_ids, starts, ends, *where.params], None, where.dates)


def gap_spans(home: Path, run_id: str) -> pa.Table:
    """The run's uncovered stretches: sample_id (the sample whose stage follows; null for the
    tail), gap_start and gap_end (ns since the epoch) and gap_ms, in time order."""
    return _gaps_query(
        home,
        Filters(run=run_id),
        "SELECT sample_id, gap_start, gap_end, gap_ms FROM gaps WHERE gap_ms > 0 ORDER BY gap_start",
    )


def run_time_split(home: Path, filters: Filters) -> list[dict[str, Any]]:
    """Per run: wall_ms (start to end), outside_ms (no stage running) and stages_ms (the
    union of its top-level stages: wall minus outside)."""
    final = (
        "SELECT g.run_id, (any_value(r.run_end) - any_value(r.run_start)) / 1e6 AS wall_ms, "
        "sum(g.gap_ms) AS outside_ms FROM gaps AS g JOIN runs_in AS r USING (run_id) "
        "WHERE r.run_end IS NOT NULL GROUP BY g.run_id ORDER BY g.run_id"
    )
    rows = _gaps_query(home, filters, final).to_pylist()
    return [row | {"stages_ms": row["wall_ms"] - row["outside_ms"]} for row in rows]


def outside_stages_stats(home: Path, filters: Filters) -> dict[str, Any] | None:
    """A `query_stats` row for the time outside stages: per sample of each run (and each run's
    tail), the uncovered ms, as count/mean/median/p95/p99/max; `sum` the total. None when the
    filters pick out stages by name or status (then the wall time is not what is asked)."""
    if filters.stage or filters.status:
        return None
    final = (
        "SELECT count(*) AS n, sum(gap_ms) AS total, "
        f"quantile_cont(gap_ms, {list(PERCENTILES)}) AS quantiles, max(gap_ms) AS peak "
        "FROM (SELECT run_id, sample_id, sum(gap_ms) AS gap_ms FROM gaps GROUP BY run_id, sample_id)"
    )
    (row,) = _gaps_query(home, filters, final).to_pylist()
    if not row["n"]:
        return None
    return {
        "stage": OUTSIDE_STAGES,
        "outside_stages": True,
        "count": row["n"],
        "failure_rate": 0.0,
        "duration_ms": _distribution(row["n"], row["total"], row["quantiles"], row["peak"]),
    }


def with_outside_stages(home: Path, filters: Filters, stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`stats` (query_stats' rows) and, after them, the row of the time outside stages with
    the runs' wall time split into stages and outside (so they add up); `stats` alone when
    there is none to show."""
    row = outside_stages_stats(home, filters)
    if row is None:
        return stats
    split = run_time_split(home, filters)
    wall = sum(run["wall_ms"] for run in split)
    outside = sum(run["outside_ms"] for run in split)
    row["total_ms"] = row["duration_ms"].pop("sum")
    row["share_of_time"] = outside / wall if wall else 0.0  # of the wall time of the finished runs
    row["wall"] = {"runs": len(split), "wall_ms": wall, "stages_ms": wall - outside, "outside_ms": outside}
    # The stages' shares (of the stages' time) become shares of the wall time too: the column
    # adds up to 100% with this row (it added up to 100% without it, and this row on top).
    covered = 1.0 - row["share_of_time"]
    return [{**entry, "share_of_time": entry["share_of_time"] * covered} for entry in stats] + [row]
