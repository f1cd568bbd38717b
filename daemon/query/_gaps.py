"""Where the rest of the time went: the wall time of a run that no stage covers.

A run's wall time is its start to its end (the runs table); its top-level stages
(`parent_span` null: a nested stage lies inside its parent) cover the union of their
intervals. What they leave is data loading, I/O and the pipeline's own glue. Each gap is
charged to the sample whose stage follows it (the time spent getting that sample to the
stage); the gaps before stages of no sample are one bucket of the run (as a sample's are); the
time after the last stage is the run's tail, a bucket of its own (it is no stage's: added to the
gaps before stages of no sample, it made them look slow). So, per run, the stages' union plus
the gaps is the wall time.

All in SQL over `stage_executions`: a window function gives each stage the furthest end
of the stages that started before it; the stretch from there to its start is uncovered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.query._query import PERCENTILES, Filters, Where, _distribution, rows_of, run_where, stage_where
from stagewatch.daemon.query._sql import homes_of, select, skipped_files, skipped_for_run
from stagewatch.daemon.tables._tables import DamagedTable

# Not a stage name (parentheses and a space: client/_names.py allows neither), so it never
# collides with a stage's row beside it.
OUTSIDE_STAGES = "(outside stages)"


class StagesLeftOut(DamagedTable):
    """The time outside stages is not given: damaged data files of `stage_executions` that may
    hold rows of its runs were left out of its query, and their stages' time would look
    uncovered (callers say `_readmodels.table_not_read` of it, as of a runs table not read)."""

    def __init__(self, files: list[str]) -> None:
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        self.table = "stage_executions"
        self.why = f"has damaged data files ({shown}) whose stages' time would count as outside stages"
        ValueError.__init__(self, f"the {self.table} table {self.why}; stop the daemon, then `stagewatch rebuild`")


# A run is partitioned by its number in the list, not its id: a window sorts its partition key
# with the spans, and an integer sorts much faster than a UUID's text.
_RUNS = """runs_in AS (
    SELECT unnest(?::VARCHAR[]) AS run_id, unnest(?::BIGINT[]) AS run_start, unnest(?::BIGINT[]) AS run_end,
           unnest(?::BIGINT[]) AS run_number
)"""

# Per top-level stage: the uncovered stretch before it, from the furthest end of the stages
# that started earlier (or the run's start), clipped to the run (a live run has no end yet:
# `least` skips a null); then the tail of each run, after its last stage.
_GAPS = f"""WITH {_RUNS},
spans AS (
    SELECT r.run_number, s.sample_id, epoch_ns(s.start_time) AS span_start, epoch_ns(s.end_time) AS span_end,
           r.run_start, r.run_end
    FROM rows AS s JOIN runs_in AS r USING (run_id)
    {{where}}
),
before_stages AS (
    SELECT run_number, sample_id, FALSE AS tail, greatest(run_start, coalesce(max(span_end) OVER (
        PARTITION BY run_number ORDER BY span_start, span_end ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
    ), run_start)) AS gap_start, least(span_start, run_end) AS gap_end
    FROM spans
),
tails AS (
    SELECT r.run_number, NULL::VARCHAR AS sample_id, TRUE AS tail,
           greatest(r.run_start, coalesce(e.last_end, r.run_start)) AS gap_start,
           coalesce(r.run_end, e.last_end) AS gap_end
    FROM runs_in AS r LEFT JOIN (SELECT run_number, max(span_end) AS last_end FROM spans GROUP BY run_number) AS e
    USING (run_number)
),
gaps AS (
    SELECT run_number, sample_id, tail, gap_start, gap_end, greatest(gap_end - gap_start, 0) AS gap_ns
    FROM (SELECT * FROM before_stages UNION ALL SELECT * FROM tails)
    WHERE gap_end IS NOT NULL
)"""

# Both answers of the time outside stages in one pass over the spans: the distribution of the
# uncovered ms per sample of each run (its stages of no sample one bucket, its tail another), and
# per finished run its wall time and the part of it outside stages (`runs`: a row each; `total`:
# their count and sums, all that the figures of many runs need: a list of 10,000 runs' rows made
# into Python took longer than the query).
# Sums are of integer ns, made ms at the end: a sum of floats depends on the order DuckDB's
# threads meet them, and the same query gave figures a last digit apart.
_PER_SAMPLE = """
, per_sample AS MATERIALIZED (SELECT run_number, sample_id, tail, sum(gap_ns) AS gap_ns FROM gaps GROUP BY ALL)
"""
_SAMPLES = f"""(SELECT {{'n': count(*), 'total': sum(gap_ns) / 1e6, 'peak': max(gap_ns) / 1e6,
              'quantiles': quantile_cont(gap_ns / 1e6, {list(PERCENTILES)})}} FROM per_sample) AS samples"""
_FINISHED = """FROM (SELECT run_number, sum(gap_ns) AS outside_ns FROM per_sample GROUP BY run_number) AS p
     JOIN runs_in AS r USING (run_number) WHERE r.run_end IS NOT NULL"""
_OUTSIDE = f"""{_PER_SAMPLE}
SELECT {_SAMPLES},
    (SELECT list({{'run_id': r.run_id, 'wall_ms': (r.run_end - r.run_start) / 1e6, 'outside_ms': p.outside_ns / 1e6}}
                 ORDER BY r.run_id) {_FINISHED}) AS runs
"""
_OUTSIDE_TOTAL = f"""{_PER_SAMPLE}
SELECT {_SAMPLES},
    (SELECT {{'runs': count(*), 'wall_ms': coalesce(sum(r.run_end - r.run_start) / 1e6, 0),
              'outside_ms': coalesce(sum(p.outside_ns) / 1e6, 0)}} {_FINISHED}) AS total
"""


def _runs_of(home: Path, filters: Filters) -> tuple[list[str], list[int], list[int | None]]:
    """The runs `filters` select (by what a run's row says: its id, time, pipeline, host and first
    failed stage; a stage's status or name says nothing about its run's wall time) and their
    start and end as ns since the epoch."""
    scope = Filters(
        run=filters.run,
        since=filters.since,
        until=filters.until,
        pipeline=filters.pipeline,
        host=filters.host,
        failed_stage=filters.failed_stage,
    )
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
    params = [run_ids, starts, ends, list(range(len(run_ids))), *where.params]
    return select(home, "stage_executions", sql, params, None, where.dates)


def gap_spans(home: Path, run_id: str) -> pa.Table:
    """The run's uncovered stretches: sample_id (the sample whose stage follows; null for the
    tail), gap_start and gap_end (ns since the epoch) and gap_ms, in time order."""
    return _gaps_query(
        home,
        Filters(run=run_id),
        "SELECT sample_id, gap_start, gap_end, gap_ns / 1e6 AS gap_ms FROM gaps WHERE gap_ns > 0 ORDER BY gap_start",
    )


def outside_stages(home: Path, filters: Filters) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The time outside stages of the runs `filters` selects, from one query: a `query_stats`
    row (per sample of each run, and each run's tail, the uncovered ms as count/mean/median/p95/
    p99/max; `sum` the total), None when there is none or the filters pick out stages by name or
    status (then the wall time is not what is asked); and per finished run its run_id, wall_ms
    (start to end), outside_ms (no stage running) and stages_ms (the union of its top-level
    stages: wall minus outside). StagesLeftOut (a DamagedTable) when damaged data files of the
    runs' stage rows were left out: their time is no time outside stages."""
    if filters.stage or filters.status:
        return None, []
    answer = _outside_answer(home, filters, _OUTSIDE)
    split = [run | {"stages_ms": run["wall_ms"] - run["outside_ms"]} for run in answer["runs"] or []]
    return _outside_row(answer["samples"]), split


def outside_total(home: Path, filters: Filters) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """`outside_stages` with, instead of a row per finished run, their count and sums: runs,
    wall_ms and outside_ms (what `with_outside_stages` shows of them)."""
    if filters.stage or filters.status:
        return None, {"runs": 0, "wall_ms": 0.0, "outside_ms": 0.0}
    answer = _outside_answer(home, filters, _OUTSIDE_TOTAL)
    return _outside_row(answer["samples"]), answer["total"]


def _outside_answer(home: Path, filters: Filters, final: str) -> dict[str, Any]:
    with skipped_files() as skipped:
        (answer,) = _gaps_query(home, filters, final).to_pylist()
    left_out = _stage_files_of(home, filters, skipped)
    if left_out:
        raise StagesLeftOut(left_out)
    return answer


def _outside_row(samples: dict[str, Any]) -> dict[str, Any] | None:
    if not samples["n"]:
        return None
    return {
        "stage": OUTSIDE_STAGES,
        "outside_stages": True,
        "count": samples["n"],
        "failure_rate": 0.0,
        "duration_ms": _distribution(samples["n"], samples["total"], samples["quantiles"], samples["peak"]),
    }


def _stage_files_of(home: Path, filters: Filters, skipped: list[str]) -> list[str]:
    """Of the damaged files a read left out, those of `stage_executions` that may hold rows of the
    runs `filters` selects (one run: the files the Delta log's run-id figures do not rule out)."""
    folders = [DaemonHome.of(one).table("stage_executions") for one in homes_of(home)]
    files = [path for path in skipped if any(Path(path).is_relative_to(folder) for folder in folders)]
    return skipped_for_run(home, files, filters.run) if filters.run and files else files


def with_outside_stages(home: Path, filters: Filters, stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`stats` (query_stats' rows) and, after them, the row of the time outside stages with
    the runs' wall time split into stages and outside (so they add up); `stats` alone when
    there is none to show."""
    return joined_with_total(stats, *outside_total(home, filters))


def joined_with_outside(
    stats: list[dict[str, Any]], row: dict[str, Any] | None, split: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`with_outside_stages` of an `outside_stages` answer in hand."""
    total = {
        "runs": len(split),
        "wall_ms": sum(run["wall_ms"] for run in split),
        "outside_ms": sum(run["outside_ms"] for run in split),
    }
    return joined_with_total(stats, row, total)


def joined_with_total(
    stats: list[dict[str, Any]], row: dict[str, Any] | None, total: dict[str, Any]
) -> list[dict[str, Any]]:
    """`with_outside_stages` of an `outside_total` answer in hand."""
    if row is None:
        return stats
    row = dict(row)
    wall, outside = total["wall_ms"], total["outside_ms"]
    row["duration_ms"] = dict(row["duration_ms"])
    row["total_ms"] = row["duration_ms"].pop("sum")
    row["share_of_time"] = outside / wall if wall else 0.0  # of the wall time of the finished runs
    row["wall"] = {"runs": total["runs"], "wall_ms": wall, "stages_ms": wall - outside, "outside_ms": outside}
    # The stages' shares (of the stages' time) become shares of the wall time too: the column
    # adds up to 100% with this row (it added up to 100% without it, and this row on top).
    covered = 1.0 - row["share_of_time"]
    return [{**entry, "share_of_time": entry["share_of_time"] * covered} for entry in stats] + [row]
