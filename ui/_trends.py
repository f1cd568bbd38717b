"""Performance across runs, as pure functions of the stage_executions table: per-run points
for the trend charts, a regression call-out found from the data, and two runs compared."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stagewatch.daemon import Filters, query_stages, query_stats

TREND_COLUMNS = ["run_id", "pipeline", "stage", "start_time", "duration_ms", "rss_peak_mb", "rss_start_mb"]
RECENT = timedelta(days=1)
BASELINE = timedelta(days=7)
REGRESSION_RATIO = 1.10  # slower than the baseline by more than this is called out
MIN_SAMPLES = 5  # fewer executions on either side say nothing


@dataclass(frozen=True)
class Regression:
    stage: str
    before_ms: float
    after_ms: float
    first_run: str

    @property
    def change(self) -> float:
        return self.after_ms / self.before_ms - 1


def stage_rows(home: Path, filters: Filters) -> pa.Table:
    return query_stages(home, filters, TREND_COLUMNS)


def run_points(rows: pa.Table) -> pd.DataFrame:
    """One point per (run, stage): the run's start, its median and p95 ms (exact, numpy's linear
    interpolation), its peak RSS and the stage's own memory; sorted by the run's start."""
    columns = ["run_id", "pipeline", "stage", "run_start", "count", "median_ms", "p95_ms", "rss_peak_mb", "own_mb"]
    rows = rows.filter(pc.is_valid(rows["duration_ms"]))
    if rows.num_rows == 0:
        return pd.DataFrame(columns=columns)
    runs = pc.dictionary_encode(rows["run_id"]).combine_chunks()
    stages = pc.dictionary_encode(rows["stage"]).combine_chunks()
    group = runs.indices.to_numpy().astype(np.int64) * len(stages.dictionary) + stages.indices.to_numpy()
    durations = rows["duration_ms"].to_numpy()
    order = np.lexsort((durations, group))
    group, durations = group[order], durations[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    counts = np.diff(np.r_[starts, len(group)])
    frame = pd.DataFrame(
        {
            "run": group[starts] // len(stages.dictionary),
            "stage": group[starts] % len(stages.dictionary),
            "count": counts,
            "median_ms": _quantile(durations, starts, counts, 0.5),
            "p95_ms": _quantile(durations, starts, counts, 0.95),
        }
    )
    per_row = pd.DataFrame(
        {
            "group": group,
            "start": rows["start_time"].cast(pa.int64()).to_numpy()[order],
            "rss": rows["rss_peak_mb"].to_numpy()[order],
            "own": (rows["rss_peak_mb"].to_numpy() - rows["rss_start_mb"].to_numpy())[order],
            "run": group // len(stages.dictionary),
        }
    )
    by_group = per_row.groupby("group", sort=True)
    frame["rss_peak_mb"] = by_group["rss"].max().to_numpy()
    frame["own_mb"] = by_group["own"].max().to_numpy()
    frame["stage_start"] = by_group["start"].min().to_numpy()
    run_start = per_row.groupby("run")["start"].min()
    # Microseconds: what Bokeh's axes hold (nanoseconds are cut with a warning per chart).
    frame["run_start"] = pd.to_datetime(frame["run"].map(run_start) // 1000 * 1000, utc=True)
    frame["run_id"] = np.asarray(runs.dictionary.to_pylist(), dtype=object)[frame["run"]]
    frame["stage"] = np.asarray(stages.dictionary.to_pylist(), dtype=object)[frame["stage"]]
    pipelines = dict(zip(rows["run_id"].to_pylist(), rows["pipeline"].to_pylist(), strict=True))
    frame["pipeline"] = frame["run_id"].map(pipelines)
    # Within a run, stages in the order they first ran: the pipeline's order.
    return frame.sort_values(["run_start", "stage_start"], kind="stable")[columns].reset_index(drop=True)


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


def _quantile(values: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """Per sorted group, numpy.percentile's default (linear) quantile, for all groups at once."""
    position = (counts - 1) * q
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, counts - 1)
    fraction = position - low
    return values[starts + low] * (1 - fraction) + values[starts + high] * fraction


def regressions(rows: pa.Table) -> list[Regression]:
    """Stages whose p95 over the last day (up to the newest execution) is more than 10% above
    their p95 over the 7 days before; with the first run of that day above the old p95."""
    rows = rows.filter(pc.is_valid(rows["duration_ms"]))
    if rows.num_rows == 0:
        return []
    frame = rows.select(["run_id", "stage", "start_time", "duration_ms"]).to_pandas()
    newest = frame["start_time"].max()
    recent = frame[frame["start_time"] > newest - RECENT]
    baseline = frame[(frame["start_time"] <= newest - RECENT) & (frame["start_time"] > newest - RECENT - BASELINE)]
    found = []
    for stage, after in recent.groupby("stage"):
        before = baseline[baseline["stage"] == stage]
        if len(before) < MIN_SAMPLES or len(after) < MIN_SAMPLES:
            continue
        before_p95 = float(np.percentile(before["duration_ms"], 95))
        after_p95 = float(np.percentile(after["duration_ms"], 95))
        if before_p95 > 0 and after_p95 > before_p95 * REGRESSION_RATIO:
            per_run = after.groupby("run_id").agg(start=("start_time", "min"), p95=("duration_ms", _p95))
            slow = per_run[per_run["p95"] > before_p95].sort_values("start")
            first = str(slow.index[0]) if len(slow) else str(per_run.sort_values("start").index[0])
            found.append(Regression(str(stage), before_p95, after_p95, first))
    return sorted(found, key=lambda r: -r.change)


def _p95(values: pd.Series) -> float:
    return float(np.percentile(values, 95))


def compare_runs(home: Path, first: str, second: str) -> pd.DataFrame:
    """Per stage: count, median and p95 ms of two runs, and the second's change against the first."""
    sides = {}
    for name, run_id in (("a", first), ("b", second)):
        sides[name] = {e["stage"]: e for e in query_stats(home, Filters(run=run_id))}
    rows = []
    for stage in list(dict.fromkeys([*sides["a"], *sides["b"]])):
        a, b = sides["a"].get(stage), sides["b"].get(stage)
        row = {"stage": stage}
        for key in ("median", "p95"):
            va = a["duration_ms"][key] if a else None
            vb = b["duration_ms"][key] if b else None
            row[f"{key}_a"], row[f"{key}_b"] = va, vb
            row[f"{key}_change"] = vb / va - 1 if va and vb is not None else None
        row["count_a"], row["count_b"] = (a or {}).get("count", 0), (b or {}).get("count", 0)
        rows.append(row)
    return pd.DataFrame(rows)
