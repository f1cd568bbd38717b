"""Regressions judged against a pipeline's own history, without crying wolf: per stage, a
change-point test finds where each run's median (or p95) moved, and the executions confirm it;
a shift is called only when it is significant and persists.

`detect`: for each run, the reference is the WINDOW runs before it (before the suspected shift,
once one is suspected, so a shift never hides in its own reference) and inside the current level
(after the last shift found). Its median and MAD give a z-score of the run's log value, clipped
to ±CLIP so that one wild run adds at most CLIP to the sum: a single spike, however large, never
makes a regression; several runs above the level do. The sum S = max(0, S + z - SLACK) makes a
candidate when S > LIMIT, the run judged is itself above the level (z > SLACK: it persists), and
the runs since the sum left 0 (the run where it started) are slower by more than the practical
threshold. After a call, the new level is the reference from where the shift started.

`judge_stage`: `detect` on each run's median (the run's figure with the least noise from run to
run) and on each run's p95 (a shift of the tail alone); `confirmed`: each candidate measured on
the executions pooled since it started against the reference runs' pooled, significant with the
run as the unit (a bootstrap that resamples whole runs).

benchmarks/regressions.py measures false alarms on A/A histories and how soon a +10% step is
found, with the noise this machine shows (docs/benchmarks.md).
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
# In robust standard deviations: drift below this never accumulates. 1.5 rather than 1: on this
# machine a run's level moves with the load and stays moved for a few runs (the runs are not
# independent), and with 1 such episodes made more than one false alarm in 100 runs
# (benchmarks/regressions.py, where 1 is kept for the reference).
SLACK = 1.5
LIMIT = 4.0  # with CLIP 3: three runs above the level at the least
CLIP = 3.0
MIN_SCALE = 0.01  # log units (1%): a perfectly steady history still has timer noise
FRESH_RUNS = 3  # a shift found within the last FRESH_RUNS runs is `ongoing` (new news)
MAD_TO_SIGMA = 1.4826
MEASURES = ("p95_ms", "median_ms")
QUANTILES = {"p95_ms": 0.95, "median_ms": 0.5}
CONFIDENCE = 0.95  # one-sided: a confirmed shift's bootstrap lower bound is above no change
RESAMPLES = 400
FLOOR_MS = 1e-6  # a level of zero (a stage that took no measurable time) is read as this


@dataclass(frozen=True)
class Found:
    start: int  # index of the run where the shift started
    found: int  # index of the run at which it was called
    before: float  # the level before (median of the reference)
    after: float  # the level since (median of the runs since start, up to `found`)
    reference_start: int = 0  # index of the reference's first run (the runs start - WINDOW .. start)


def detect(values: np.ndarray, threshold: float = 0.05, slack: float = SLACK) -> list[Found]:
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
        total = max(0.0, total + z - slack)
        if total == 0.0:
            start = None
            continue
        start = t if start is None else start
        if total <= LIMIT:
            continue
        onset = start + _onset(logs[start : t + 1], centre)
        after = float(np.median(logs[onset : t + 1]))
        if z > slack and math.exp(after - centre) - 1 <= threshold:
            # Above the level and significant, but not by enough yet: high runs before a step
            # that started the sum hold the new level's median down; the next runs decide.
            continue
        if z > slack:
            reference_start = max(level_start, onset - WINDOW)
            found.append(Found(onset, t, math.exp(centre), math.exp(after), reference_start))
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


def shifts(rows: pa.Table, threshold: float = 0.05) -> list[Shift]:
    """Every shift of every stage in a history of stage executions (run_id, stage, start_time,
    duration_ms; runs in the order they started), largest first (see `judge_stage`)."""
    found = []
    for stage, runs in stage_histories(rows).items():
        run_ids = [run_id for run_id, _ in runs]
        for measure, call in judge_stage([durations for _, durations in runs], threshold):
            ongoing = call.found >= len(runs) - FRESH_RUNS
            found.append(
                Shift(stage, measure, run_ids[call.start], run_ids[call.found], call.before, call.after, ongoing)
            )
    return sorted(found, key=lambda s: -s.change)


def history_shifts(executions: pa.Table, threshold: float = 0.05) -> list[dict[str, Any]]:
    """`shifts` of a history of stage executions (a baseline and the run judged, its newest),
    `ongoing` when found at one of the last FRESH_RUNS runs."""
    return [shift.to_json() for shift in shifts(executions, threshold)]


def stage_histories(rows: pa.Table) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Per stage, (run id, its executions' durations in ms) for each run with at least
    MIN_EXECUTIONS of them, the runs in the order they started."""
    frame = rows.select(["run_id", "stage", "start_time", "duration_ms"]).to_pandas()
    # A duration that is not a finite time (null, NaN, infinite, negative: a damaged row) says
    # nothing of a level: left out, as run_points leaves out the nulls.
    frame = frame[np.isfinite(frame["duration_ms"].to_numpy(dtype=np.float64)) & (frame["duration_ms"] >= 0)]
    if frame.empty:
        return {}
    frame["run_start"] = frame["run_id"].map(frame.groupby("run_id")["start_time"].min())
    frame = frame.sort_values(["run_start", "run_id"], kind="stable")
    histories = {}
    for stage, of_stage in frame.groupby("stage", sort=False):
        # A run's executions are contiguous here (sorted by run): cut where the run changes
        # (a pandas group a run cost seconds over ten thousand runs).
        run_ids = of_stage["run_id"].to_numpy()
        firsts = np.flatnonzero(np.r_[True, run_ids[1:] != run_ids[:-1]])
        pieces = np.split(of_stage["duration_ms"].to_numpy(), firsts[1:])
        histories[str(stage)] = [
            (str(run_ids[first]), durations)
            for first, durations in zip(firsts, pieces, strict=True)
            if len(durations) >= MIN_EXECUTIONS
        ]
    return histories


def judge_stage(runs: list[np.ndarray], threshold: float = 0.05) -> list[tuple[str, Found]]:
    """The shifts of one stage, from each run's durations (run order): (measure, the call).

    Where: the CUSUM (`detect`) on each run's median, the statistic that varies least from run
    to run (a run's p95 rests on its few slowest executions: its sampling noise alone exceeds a
    10% step), and on each run's p95 (a shift of the tail alone). Whether: each call is confirmed
    on the executions themselves, per measure, by `confirmed`; a call of the median's series
    reports the median and the p95 that moved, the p95 series' only its p95."""
    medians = np.array([np.median(durations) for durations in runs])
    tails = np.array([np.quantile(durations, QUANTILES["p95_ms"]) for durations in runs])
    calls: list[tuple[str, Found]] = []
    for series, measures in ((medians, MEASURES), (tails, ("p95_ms",))):
        for candidate in detect(series, threshold):
            for measure in measures:
                call = confirmed(runs, candidate, QUANTILES[measure], threshold)
                if call is not None and not any(m == measure and _overlap(c, call) for m, c in calls):
                    calls.append((measure, call))
    return calls


def confirmed(runs: list[np.ndarray], candidate: Found, q: float, threshold: float) -> Found | None:
    """The candidate's shift of quantile `q`, measured on the executions: the runs since it
    started pooled against its reference runs pooled (a quantile of hundreds of executions, not
    of one run's), kept when larger than the threshold and significant with the runs as the unit
    (the lower bound of a bootstrap that resamples whole runs on each side, so that the level
    runs move by together, machine load, widens it: A/A histories stay quiet)."""
    reference = runs[candidate.reference_start : candidate.start]
    since = runs[candidate.start : candidate.found + 1]
    before, after = _pooled_quantile(reference, None, q), _pooled_quantile(since, None, q)
    if after / before - 1 <= threshold:
        return None
    rng = np.random.default_rng(0)  # seeded: the same history reads the same
    ratios = [_pooled_quantile(since, rng, q) / _pooled_quantile(reference, rng, q) for _ in range(RESAMPLES)]
    if np.quantile(ratios, 1 - CONFIDENCE) <= 1:
        return None
    return Found(candidate.start, candidate.found, before, after, candidate.reference_start)


def _pooled_quantile(runs: list[np.ndarray], rng: np.random.Generator | None, q: float) -> float:
    """Quantile q of the runs' executions pooled (of as many runs drawn with replacement, with
    `rng`), at least FLOOR_MS: a stage of zero time has a level to divide by."""
    picked = rng.integers(0, len(runs), len(runs)) if rng is not None else range(len(runs))
    return max(float(np.quantile(np.concatenate([runs[i] for i in picked]), q)), FLOOR_MS)


def _overlap(a: Found, b: Found) -> bool:
    return a.start <= b.found and b.start <= a.found


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
    width = len(stages.dictionary)
    run, stage = group[starts] // width, group[starts] % width
    begins = rows["start_time"].cast(pa.int64()).to_numpy()[order]
    run_start = np.full(len(runs.dictionary), np.iinfo(np.int64).max)
    np.minimum.at(run_start, group // width, begins)
    # Microseconds: what Bokeh's axes hold (nanoseconds are cut with a warning per chart).
    run_start = run_start[run] // 1000 * 1000
    # Within a run, stages in the order they first ran: the pipeline's order. Sorted on the
    # numbers, before the text columns are made (sorting the frame moved them too).
    by = np.lexsort((np.minimum.reduceat(begins, starts), run_start))
    # Each run's pipeline, from its last row (a run has one).
    indices = runs.indices.to_numpy()
    last = len(indices) - 1 - np.unique(indices[::-1], return_index=True)[1]
    pipelines = np.asarray(rows["pipeline"].take(last).to_pylist(), dtype=object)
    frame = pd.DataFrame(
        {
            "run_id": np.asarray(runs.dictionary.to_pylist(), dtype=object)[run[by]],
            "pipeline": pipelines[run[by]],
            "stage": np.asarray(stages.dictionary.to_pylist(), dtype=object)[stage[by]],
            "run_start": pd.to_datetime(run_start[by], utc=True),
            "count": counts[by],
            "median_ms": _quantile(durations, starts, counts, 0.5)[by],
            "p95_ms": _quantile(durations, starts, counts, 0.95)[by],
            # fmax: a row without a reading (NaN) is skipped, as a group's max skips it.
            "rss_peak_mb": np.fmax.reduceat(rows["rss_peak_mb"].to_numpy()[order], starts)[by],
            "own_mb": np.fmax.reduceat(
                (rows["rss_peak_mb"].to_numpy() - rows["rss_start_mb"].to_numpy())[order], starts
            )[by],
        }
    )
    return frame[columns]


def _quantile(values: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """Per sorted group, numpy.percentile's default (linear) quantile, for all groups at once."""
    position = (counts - 1) * q
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, counts - 1)
    fraction = position - low
    return values[starts + low] * (1 - fraction) + values[starts + high] * fraction
