"""Regressions without false alarms: the change-point test of daemon/compare/_shifts (ours: a
CUSUM of each run's median and p95, each call confirmed on the executions) against the CUSUM of
each run's p95 alone (the reference, what was judged before), on histories of executions with the
noise this machine shows.

1. Noise: the demo pipeline runs --demo-runs times (--frames each) against a real daemon (or
   the executions saved by an earlier --save are read with --load). Per stage, the variance of
   a run's log p95 and log median is split into (a) sampling noise, a bootstrap of the run's
   executions, and (b) between-run variation, the run's whole level moving (load, caches): the
   robust variance across runs less (a). The between-run level's persistence from one run to the
   next (lag-1 autocorrelation) is measured too. The measured runs are judged as they are: an
   A/A history of real runs (the same code every run).
2. Model, per measured stage: run t's executions are log d = level_t + e, level_t an AR(1)
   series with the measured between-run sd and persistence, e drawn from the stage's measured
   within-run residuals (log d - its run's median) in blocks of 5 consecutive executions (their
   heavy tail and the bursts a busy moment gives several executions), --executions per run.
   - A/A: --histories histories of --length runs, no step: false alarms per run judged;
   - step: --histories histories of 30 steady runs, then every execution 10% slower (the p95
     +10%) for 20 runs: the share found within 3 runs (the step's first run counting as 1).
   --between-scales adds rows with the between-run sd scaled (a quieter machine).

    python benchmarks/regressions.py [--demo-runs 30 --frames 120] [--save runs.parquet | --load runs.parquet]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_table, running_daemon
from stagewatch.daemon.compare._compare import NOISE_RUNS, TIME_MEASURES, Options, _stage_entry, noise_band
from stagewatch.daemon.compare._shifts import MAD_TO_SIGMA, MIN_REFERENCE, detect, judge_stage, stage_histories

STEP = 0.10
STEADY_RUNS, STEPPED_RUNS = 30, 20
BLOCK = 5  # consecutive executions drawn together: a busy moment slows several
BOOTSTRAPS = 400
REFERENCE_SLACK = 1.0  # the CUSUM as it was before ours (ours: _shifts.SLACK)


@dataclass(frozen=True)
class Noise:
    """A stage's measured noise: what the model draws from."""

    stage: str
    executions: int  # per run (median)
    median_ms: float
    between_sd: float  # of a run's log level (its median), sampling noise taken out
    persistence: float  # lag-1 autocorrelation of the level from run to run
    residuals: list[np.ndarray]  # per real run: log d - its median, in execution order


def demo_executions(runs: int, frames: int) -> pa.Table:
    """The demo's stage executions over `runs` runs of `frames` frames, against a real daemon."""
    import stagewatch
    from stagewatch.daemon import Filters, query_stages
    from stagewatch.daemon._demo import run_demo

    with running_daemon() as home:
        for _ in range(runs):
            run = run_demo(frames=frames, home=str(home))
            run.flush(30)
        stagewatch.shutdown(timeout_s=10)
        deadline = time.monotonic() + 120
        while query_stages(home, Filters(stage="preprocessing"), ["run_id"]).num_rows < runs * frames:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return query_stages(home, Filters(), ["run_id", "stage", "start_time", "duration_ms", "status"])


def robust_sd(values: np.ndarray) -> float:
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def bootstrap_sd(durations: np.ndarray, q: float, rng: np.random.Generator) -> float:
    """The sampling sd of log(quantile q) of one run: its executions resampled."""
    draws = rng.choice(durations, (BOOTSTRAPS, len(durations)))
    return float(np.std(np.log(np.quantile(draws, q, axis=1))))


def split_noise(runs: list[np.ndarray], q: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """(total robust sd across runs, sampling sd within a run, between-run sd) of log quantile q."""
    total = robust_sd(np.log([np.quantile(d, q) for d in runs]))
    sampling = float(np.sqrt(np.mean([bootstrap_sd(d, q, rng) ** 2 for d in runs])))
    return total, sampling, float(np.sqrt(max(total**2 - sampling**2, 0.0)))


def measure_noise(executions: pa.Table, rng: np.random.Generator) -> tuple[list[Noise], list[list[str]]]:
    """Each stage's Noise, and the rows of the table that shows it (the calls of each test on
    the measured runs: an A/A history)."""
    noises, rows = [], []
    for stage, history in stage_histories(executions).items():
        runs = [durations for _, durations in history]
        p95 = split_noise(runs, 0.95, rng)
        median = split_noise(runs, 0.5, rng)
        levels = np.log([np.median(d) for d in runs])
        centred = levels - np.median(levels)
        persistence = float(np.clip(np.corrcoef(centred[:-1], centred[1:])[0, 1], 0.0, 0.9))
        residuals = [np.log(d) - np.median(np.log(d)) for d in runs]
        noise = Noise(
            stage,
            int(np.median([len(d) for d in runs])),
            float(np.exp(np.median(levels))),
            median[2],
            persistence,
            residuals,
        )
        noises.append(noise)
        p95_ms = float(np.median([np.quantile(d, 0.95) for d in runs]))
        split = [f"{total:.3f} = {a:.3f} (a) + {b:.3f} (b)" for total, a, b in (p95, median)]
        calls = " / ".join(str(len(c)) for c in calls_of(runs))
        rows.append([stage, len(runs), noise.executions, f"{p95_ms:.2f}", *split, f"{persistence:.2f}", calls])
    return noises, rows


def synthetic_runs(
    rng: np.random.Generator, noise: Noise, length: int, step_at: int | None, executions: int, between_scale: float
) -> list[np.ndarray]:
    """One history of `length` runs of the stage's model (see the module's docstring)."""
    sd = noise.between_sd * between_scale
    innovation = sd * np.sqrt(1 - noise.persistence**2)
    level, runs = rng.normal(0, sd), []
    for t in range(length):
        level = noise.persistence * level + rng.normal(0, innovation) if t else level
        step = np.log1p(STEP) if step_at is not None and t >= step_at else 0.0
        runs.append(noise.median_ms * np.exp(level + step + _residual_draw(rng, noise.residuals, executions)))
    return runs


def _residual_draw(rng: np.random.Generator, residuals: list[np.ndarray], executions: int) -> np.ndarray:
    blocks = []
    for _ in range(-(-executions // BLOCK)):
        run = residuals[rng.integers(len(residuals))]
        start = rng.integers(0, max(len(run) - BLOCK, 0) + 1)
        blocks.append(run[start : start + BLOCK])
    return np.concatenate(blocks)[:executions]


def calls_of(runs: list[np.ndarray]) -> list[list[int]]:
    """The runs at which each test called a shift: ours, the CUSUM of each run's p95 (the
    reference) and the CUSUMs of each run's p95 and median unconfirmed (the code before ours)."""
    p95 = detect(np.array([np.quantile(d, 0.95) for d in runs]), slack=REFERENCE_SLACK)
    median = detect(np.array([np.median(d) for d in runs]), slack=REFERENCE_SLACK)
    return [
        sorted(call.found for _, call in judge_stage(runs)),
        [call.found for call in p95],
        sorted(call.found for call in p95 + median),
    ]


def judge_model(
    rng: np.random.Generator, noise: Noise, histories: int, length: int, executions: int, between_scale: float
) -> list[str]:
    """The model's robust sd of log p95 and log median across runs (against the measured: the
    model's check), false alarms per 100 judged runs on A/A, and the share of +10% steps found
    within 3 runs: ours / the reference (their ratio) / the code before ours."""
    alarms, p95_sd, median_sd = np.zeros(3), [], []
    for _ in range(histories):
        runs = synthetic_runs(rng, noise, length, None, executions, between_scale)
        alarms += [len(c) for c in calls_of(runs)]
        p95_sd.append(robust_sd(np.log([np.quantile(d, 0.95) for d in runs])))
        median_sd.append(robust_sd(np.log([np.median(d) for d in runs])))
    judged = histories * (length - MIN_REFERENCE)
    within3 = np.zeros(3)
    for _ in range(histories):
        runs = synthetic_runs(rng, noise, STEADY_RUNS + STEPPED_RUNS, STEADY_RUNS, executions, between_scale)
        for i, found in enumerate(calls_of(runs)):
            after = [t - STEADY_RUNS + 1 for t in found if t >= STEADY_RUNS]
            within3[i] += bool(after) and after[0] <= 3
    rate, share = alarms / judged * 100, within3 / histories
    return [
        f"{np.median(p95_sd):.3f} / {np.median(median_sd):.3f}",
        f"{rate[0]:.2f} / {rate[1]:.2f} ({_ratio(rate)}) / {rate[2]:.2f}",
        f"{share[0]:.1%} / {share[1]:.1%} ({_ratio(share)}) / {share[2]:.1%}",
    ]


def compare_calls(runs: list[np.ndarray], t: int, with_run_noise: bool) -> bool:
    """Whether `stagewatch compare` of run t-1 (A) and run t (B) calls the stage out as slower:
    its per-stage judgement (daemon/compare/_compare.py), the run-to-run noise taken from the
    runs before B, as `run_noise` does, or (without) against the executions' spread alone."""
    history = runs[max(0, t - NOISE_RUNS) : t]
    noise = {}
    for name, q in TIME_MEASURES.items():
        band = noise_band([float(np.quantile(d, q)) for d in history], 1, Options().confidence)
        if with_run_noise and band is not None:
            noise[name] = band
    sides = [
        {"executions": np.asarray(d.size), "failed": np.asarray(0), "duration_ms": d}
        | {name: np.zeros(0) for name in ("own_memory_mb", "gpu_peak_mb")}
        for d in (runs[t - 1], runs[t])
    ]
    return bool(_stage_entry("stage", *sides, Options(), noise)["regressed"])


def judge_compare(
    rng: np.random.Generator, noise: Noise, histories: int, executions: int, between_scale: float
) -> list[str]:
    """`compare` of consecutive runs: false alarms per 100 A/A pairs (each B with 20 runs of
    history before it), and the share of +10% steps called on the step's first run; with the
    run-to-run noise / against the executions alone."""
    alarms, found = np.zeros(2), np.zeros(2)
    pairs = 10
    for _ in range(histories):
        runs = synthetic_runs(rng, noise, NOISE_RUNS + pairs, None, executions, between_scale)
        for t in range(NOISE_RUNS, NOISE_RUNS + pairs):
            alarms += [compare_calls(runs, t, True), compare_calls(runs, t, False)]
        stepped = synthetic_runs(rng, noise, NOISE_RUNS + 1, NOISE_RUNS, executions, between_scale)
        found += [compare_calls(stepped, NOISE_RUNS, True), compare_calls(stepped, NOISE_RUNS, False)]
    rate, share = alarms / (histories * pairs) * 100, found / histories
    return [f"{rate[0]:.1f} / {rate[1]:.1f}", f"{share[0]:.0%} / {share[1]:.0%}"]


def _ratio(pair: np.ndarray) -> str:
    return f"x{pair[0] / pair[1]:.2f}" if pair[1] else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-runs", type=int, default=30, help="demo runs to measure the noise on")
    parser.add_argument("--frames", type=int, default=120, help="frames per demo run")
    parser.add_argument("--save", type=Path, help="write the demo's executions here (Parquet)")
    parser.add_argument("--load", type=Path, help="read the executions of an earlier --save instead of running")
    parser.add_argument("--executions", default="60", help="executions per run in the model")
    parser.add_argument("--between-scales", default="1,0.25,0", help="the between-run sd scaled by these")
    parser.add_argument("--histories", type=int, default=100)
    parser.add_argument("--length", type=int, default=60, help="runs per A/A history")
    parser.add_argument("--compare-histories", type=int, default=30, help="histories for `compare` of two runs")
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    executions = pq.read_table(args.load) if args.load else demo_executions(args.demo_runs, args.frames)
    if args.save:
        pq.write_table(executions, args.save)
    executions = executions.filter(pa.compute.equal(executions["status"], "ok"))
    noises, rows = measure_noise(executions, rng)
    columns = ["stage", "runs", "executions a run", "median p95 ms", "sd log p95", "sd log median"]
    print_table(
        "The demo's runs on this machine: robust sd of log p95 and log median across runs, split into (a) "
        "sampling within a run and (b) between runs (sd^2 = a^2 + b^2); the runs judged as measured (A/A)",
        [*columns, "level persistence", "shifts called: ours / p95 CUSUM / unconfirmed"],
        rows,
    )
    rows = []
    for noise in noises:
        for count in (int(c) for c in args.executions.split(",")):
            for scale in (float(s) for s in args.between_scales.split(",")):
                between = f"{noise.between_sd * scale:.3f} (x{scale:g}), persistence {noise.persistence:.2f}"
                figures = judge_model(rng, noise, args.histories, args.length, count, scale)
                compared = judge_compare(rng, noise, args.compare_histories, count, scale)
                rows.append([noise.stage, count, between, *figures, *compared])
    print_table(
        f"Model histories (A/A: {args.histories} x {args.length} runs; +{STEP:.0%} step after {STEADY_RUNS} "
        f"runs: {args.histories} histories); ours / p95 CUSUM (ratio) / p95 and median CUSUMs unconfirmed",
        [
            "stage",
            "executions a run",
            "between-run sd of log level",
            "model's sd log p95 / log median",
            "false alarms per 100 runs",
            "+10% found within 3 runs",
            "compare A/A: false alarms per 100 pairs, with run noise / without",
            "compare: +10% step called, with / without",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
