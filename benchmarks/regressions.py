"""Regressions without false alarms: the change-point test of daemon/compare/_shifts on synthetic
histories of a stage's per-run p95, with the run-to-run noise this machine shows.

1. Noise: the demo pipeline runs --demo-runs times against a real daemon; per stage, the
   robust standard deviation (1.4826 x MAD) of log(per-run p95) is the noise. The measured
   series are also judged as they are (A/A: the same code every run).
2. Model: log p95 of run t = log(base) + step(t) + e_t, e_t Student-t with 3 degrees of
   freedom (heavy tails: a run that met a busy machine) scaled to the robust sd `sigma`;
   for each sigma (the measured ones and those given with --sigmas):
   - A/A: --histories histories of --length runs, no step: false alarms per run judged;
   - step: histories of 30 steady runs, then +10% for 20 runs: whether and when it is
     found (runs after the step, the first run of the new level counting as 1).

    python benchmarks/regressions.py [--demo-runs 20] [--sigmas 0.02,0.05,0.1] [--histories 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_table, running_daemon
from stagewatch.daemon.compare._shifts import MAD_TO_SIGMA, MIN_REFERENCE, detect

STEP = 0.10
STEADY_RUNS, STEPPED_RUNS = 30, 20
T3_MEDIAN_ABS = 0.7648923  # median |X| of Student's t with 3 degrees of freedom


def measured_histories(runs: int) -> dict[str, np.ndarray]:
    """Per stage of the demo, its per-run p95 (ms) over `runs` runs, in run order."""
    import stagewatch
    from stagewatch.daemon import Filters, query_stages
    from stagewatch.daemon._demo import run_demo
    from stagewatch.daemon.compare._shifts import run_points

    with running_daemon() as home:
        for _ in range(runs):
            run = run_demo(frames=60, home=str(home))
            run.flush(30)
        stagewatch.shutdown(timeout_s=10)
        columns = ["run_id", "pipeline", "stage", "start_time", "duration_ms", "rss_peak_mb", "rss_start_mb"]
        expected = runs * 60
        deadline = time.monotonic() + 60
        while query_stages(home, Filters(stage="preprocessing"), ["run_id"]).num_rows < expected:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        points = run_points(query_stages(home, Filters(), columns))
    return {str(stage): rows["p95_ms"].to_numpy() for stage, rows in points.groupby("stage", sort=False)}


def robust_sigma(values: np.ndarray) -> float:
    logs = np.log(values)
    return float(MAD_TO_SIGMA * np.median(np.abs(logs - np.median(logs))))


def synthetic(rng: np.random.Generator, sigma: float, length: int, step_at: int | None) -> np.ndarray:
    noise = rng.standard_t(3, length) * sigma / (MAD_TO_SIGMA * T3_MEDIAN_ABS)
    level = np.zeros(length)
    if step_at is not None:
        level[step_at:] = np.log1p(STEP)
    return 20.0 * np.exp(level + noise)


def false_alarms(rng: np.random.Generator, sigma: float, histories: int, length: int) -> tuple[int, int]:
    alarms = sum(len(detect(synthetic(rng, sigma, length, None))) for _ in range(histories))
    return alarms, histories * (length - MIN_REFERENCE)


def step_delays(rng: np.random.Generator, sigma: float, histories: int) -> list[int | None]:
    """Per history: runs from the step to its call (1: called at the step's first run), None
    when it was not called in the 20 stepped runs (a call before the step is a false alarm,
    counted by false_alarms, and skipped here)."""
    delays: list[int | None] = []
    for _ in range(histories):
        found = [
            f for f in detect(synthetic(rng, sigma, STEADY_RUNS + STEPPED_RUNS, STEADY_RUNS)) if f.found >= STEADY_RUNS
        ]
        delays.append(found[0].found - STEADY_RUNS + 1 if found else None)
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-runs", type=int, default=20, help="demo runs to measure the noise on (0: none)")
    parser.add_argument("--sigmas", default="0.02,0.05,0.1", help="more noise levels (robust sd of log p95)")
    parser.add_argument("--histories", type=int, default=300)
    parser.add_argument("--length", type=int, default=120, help="runs per A/A history")
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    sigmas = {f"given {s}": float(s) for s in args.sigmas.split(",") if s}
    if args.demo_runs:
        measured = measured_histories(args.demo_runs)
        rows = []
        for stage, values in measured.items():
            calls = detect(values)
            rows.append([stage, len(values), f"{np.median(values):.2f}", f"{robust_sigma(values):.3f}", len(calls)])
            sigmas[f"measured {stage}"] = robust_sigma(values)
        print_table(
            f"The demo's per-run p95 over {args.demo_runs} runs on this machine (A/A as measured)",
            ["stage", "runs", "median p95 ms", "robust sd of log p95", "shifts called"],
            rows,
        )
    rows = []
    for name, sigma in sigmas.items():
        alarms, judged = false_alarms(rng, sigma, args.histories, args.length)
        delays = step_delays(rng, sigma, args.histories)
        found = [d for d in delays if d is not None]
        within3 = sum(d <= 3 for d in found) / len(delays)
        rows.append(
            [
                name,
                f"{sigma:.3f}",
                f"{alarms}/{judged} = {alarms / judged:.4f}",
                f"{within3:.1%}",
                f"{len(found) / len(delays):.1%}",
                f"{np.median(found):.0f}" if found else "-",
            ]
        )
    print_table(
        f"Synthetic histories (Student-t 3 noise; A/A: {args.histories} x {args.length} runs; "
        f"+{STEP:.0%} p95 step after {STEADY_RUNS} runs: {args.histories} histories)",
        ["noise", "sigma", "false alarms per run (A/A)", "step found within 3 runs", "found in 20", "median runs"],
        rows,
    )


if __name__ == "__main__":
    main()
