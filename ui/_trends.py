"""Performance across runs, as pure functions of the stage_executions table: per-run points
for the trend charts (daemon/compare/_shifts.run_points) and the regressions found in them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from stagewatch.daemon import Filters, query_stages
from stagewatch.daemon.compare._shifts import Shift, run_points, shifts

__all__ = ["Shift", "regressions", "run_points", "stage_rows", "thin"]

TREND_COLUMNS = ["run_id", "pipeline", "stage", "start_time", "duration_ms", "rss_peak_mb", "rss_start_mb"]


def stage_rows(home: Path, filters: Filters) -> pa.Table:
    return query_stages(home, filters, TREND_COLUMNS)


def thin(points: pd.DataFrame, measure: str, max_points: int, time: str = "run_start") -> pd.DataFrame:
    """At most `max_points` points per stage for a chart: past that, the span of `time` (runs'
    starts, or executions' within a run) is cut into max_points slices and each slice keeps its
    point with the largest `measure`. Every point drawn is still a real run or execution (hover
    names it, a click opens it) and no spike is smoothed away."""
    kept = []
    for _, rows in points.groupby("stage", sort=False):
        if len(rows) <= max_points:
            kept.append(rows)
            continue
        starts = rows[time].astype("int64")
        low, high = int(starts.min()), int(starts.max())
        slices = (starts - low) * max_points // max(high - low + 1, 1)
        largest = rows[measure].fillna(-np.inf).groupby(slices.to_numpy()).idxmax()
        kept.append(rows.loc[largest.to_numpy()])
    if not kept:
        return points
    return pd.concat(kept).sort_values([time], kind="stable")


def regressions(rows: pa.Table) -> list[Shift]:
    """The shifts of each stage's per-run p95 and median found in the window's runs, by the
    change-point test of daemon/compare/_shifts (significant and persistent), with the run where each
    started; the largest first."""
    return shifts(rows)
