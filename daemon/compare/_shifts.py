"""Regressions judged against a pipeline's own history, without crying wolf: per stage, the
series of each run's p95 (and median) in run order goes through a one-sided CUSUM of robust
z-scores, and a shift is called only when it is significant and persists.

For each run, the reference is the WINDOW runs before it (before the suspected shift, once one
is suspected, so a shift never hides in its own reference) and inside the current level (after
the last shift found). Its median and MAD give a z-score of the run's log value, clipped to
±CLIP so that one wild run adds at most CLIP to the sum: a single spike, however large, never
makes a regression; several runs above the level do. The sum S = max(0, S + z - SLACK) calls a
shift when S > LIMIT, the run judged is itself above the level (z > SLACK: it persists), and the
runs since the sum left 0 (the run where it started) are slower by more than the practical
threshold. After a call, the new level is the reference from where the shift started.

benchmarks/regressions.py measures false alarms on A/A histories and how soon a +10% p95 step is
found, with this machine's run-to-run noise (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

WINDOW = 20  # runs in the reference
MIN_REFERENCE = 8  # fewer runs before: nothing is judged yet
MIN_EXECUTIONS = 5  # a run with fewer executions of a stage says little of its p95: left out
SLACK = 1.0  # in robust standard deviations: drift below this never accumulates
LIMIT = 4.0  # with CLIP 3 and SLACK 1: three runs above the level at the least
CLIP = 3.0
MIN_SCALE = 0.01  # log units (1%): a perfectly steady history still has timer noise
FRESH_RUNS = 3  # a shift found within the last FRESH_RUNS runs is `ongoing` (new news)
MAD_TO_SIGMA = 1.4826
MEASURES = ("p95_ms", "median_ms")


@dataclass(frozen=True)
class Found:
    start: int  # index of the run where the shift started
    found: int  # index of the run at which it was called
    before: float  # the level before (median of the reference)
    after: float  # the level since (median of the runs since start, up to `found`)


def detect(values: np.ndarray, threshold: float = 0.05) -> list[Found]:
    """The upward shifts of a positive series, in order (see the module's docstring)."""
    logs = np.log(np.maximum(np.asarray(values, dtype=np.float64), 1e-9))
    found: list[Found] = []
    level_start, total, start = 0, 0.0, None
    for t in range(len(logs)):
        reference_end = start if start is not None else t
        reference = logs[max(level_start, reference_end - WINDOW) : reference_end]
        if len(reference) < MIN_REFERENCE:
            continue
        centre = float(np.median(reference))
        scale = max(MAD_TO_SIGMA * float(np.median(np.abs(reference - centre))), MIN_SCALE)
        z = min(max((logs[t] - centre) / scale, -CLIP), CLIP)
        total = max(0.0, total + z - SLACK)
        if total == 0.0:
            start = None
            continue
        start = t if start is None else start
        if total <= LIMIT:
            continue
        onset = start + _onset(logs[start : t + 1], centre)
        after = float(np.median(logs[onset : t + 1]))
        if z > SLACK and math.exp(after - centre) - 1 <= threshold:
            # Above the level and significant, but not by enough yet: high runs before a step
            # that started the sum hold the new level's median down; the next runs decide.
            continue
        if z > SLACK:
            found.append(Found(onset, t, math.exp(centre), math.exp(after)))
            level_start = onset
        # Called, or not above the level any more: the sum starts again, so that a later shift
        # is measured from where it began.
        total, start = 0.0, None
    return found


def _onset(excursion: np.ndarray, before: float) -> int:
    """Where in the excursion (the runs since the sum left 0) the new level began: the split
    that maximises the runs' sum above the midpoint of the two levels. Runs before the step that
    happened to sit a little high started the sum, but lie below the midpoint. The new level is
    first taken as the excursion's median, then as the median from the split it gives (noisy runs
    before the step pull the first guess down, and with it the midpoint)."""
    split = 0
    for _ in range(2):
        midpoint = (before + float(np.median(excursion[split:]))) / 2
        split = int(np.argmax(np.cumsum((excursion - midpoint)[::-1])[::-1]))
    return split


@dataclass(frozen=True)
class Shift:
    stage: str
    measure: str  # "p95_ms" or "median_ms"
    started_run: str
    found_run: str
    before: float
    after: float
    ongoing: bool  # found within the last FRESH_RUNS runs of the series

    @property
    def change(self) -> float:
        return self.after / self.before - 1

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "change": self.change}


def shifts(points: pd.DataFrame, threshold: float = 0.05, measures: tuple[str, ...] = MEASURES) -> list[Shift]:
    """Every shift of every stage in per-run points (ui/_trends.run_points' frame: run_id, stage,
    count and the measures, sorted by the run's start), largest first."""
    found = []
    for stage, rows in points[points["count"] >= MIN_EXECUTIONS].groupby("stage", sort=False):
        runs = rows["run_id"].to_numpy()
        for measure in measures:
            for shift in detect(rows[measure].to_numpy(), threshold):
                ongoing = shift.found >= len(rows) - FRESH_RUNS
                found.append(
                    Shift(str(stage), measure, runs[shift.start], runs[shift.found], shift.before, shift.after, ongoing)
                )
    return sorted(found, key=lambda s: -s.change)


def history_shifts(executions: pa.Table, threshold: float = 0.05) -> list[dict[str, Any]]:
    """`shifts` of a history of stage executions (a baseline and the run judged, its newest),
    `ongoing` when found at one of the last FRESH_RUNS runs."""
    return [shift.to_json() for shift in shifts(run_points(executions), threshold)]


# -- per-run points: what the Performance page's trend charts draw and `shifts` judges ----------------


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


def _quantile(values: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """Per sorted group, numpy.percentile's default (linear) quantile, for all groups at once."""
    position = (counts - 1) * q
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, counts - 1)
    fraction = position - low
    return values[starts + low] * (1 - fraction) + values[starts + high] * fraction
