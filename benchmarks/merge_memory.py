"""What merging a busy day's parts costs in memory and time: parts capped at `FULL_PART_ROWS`
(ours) against merging by size tier without a cap and compacting the aged day into one part
(the daemon before the cap), on the same day of parts.

    python benchmarks/merge_memory.py [--parts 256] [--rows 16384] [--repeats 1]

A day of --parts flush parts of --rows stage_executions rows each is written, then tier merge
passes run until none is planned (as the daemon's passes do over a day) and the aged day is
compacted. Each way runs in a process of its own; its peak RSS above what it held before the
merges (sampled every 5 ms) and the time the merges took are printed, with the parts left.
A merge holds its group's rows in memory, so without the cap the day's last merges and its
compaction into one part hold the whole day.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table

T0 = 1_790_000_000 * 10**9  # 2026-09-21


def _rows(first: int, count: int) -> list[dict]:
    return [
        {
            "run_id": f"5f0c7a52-4b8e-4d7e-9a57-0d7f6f8f{(first + i) // 1000 % 10000:04d}",
            "pipeline": "detect",
            "stage": ("preprocess", "detection", "postprocess")[i % 3],
            "status": "failed" if i % 50 == 0 else "ok",
            "sample_id": f"frame_{first + i}",
            "client_id": "c",
            "span": first + i,
            "parent_span": None,
            "start_time": T0 + (first + i) * 1_000_000,
            "end_time": T0 + (first + i) * 1_000_000 + 2_000_000,
            "duration_ms": 2.0 + (i % 97) / 10,
            "rss_start_mb": 100.0,
            "rss_peak_mb": 120.0 + i % 13,
            "rss_end_mb": 101.0,
            "gpu_peak_mb": None,
            "input_path": f"/data/frames/{first + i}.png",
            "output_paths": [],
            "error_type": "ValueError" if i % 50 == 0 else None,
            "error_message": "bad frame" if i % 50 == 0 else None,
            "lsn": first + i,
        }
        for i in range(count)
    ]


def merge_a_day(parts: int, rows: int, capped: bool, results) -> None:
    import psutil

    from stagewatch.daemon import _compaction
    from stagewatch.daemon._store import Store

    if not capped:  # the daemon before the cap: tiers up to one part, the aged day made one
        _compaction.FULL_PART_ROWS = _compaction.FULL_PART_BYTES = 1 << 62
    home = Path(tempfile.mkdtemp(prefix="sw-merge-", dir="/tmp"))
    try:
        store = Store(home)
        for number in range(parts):
            store.write_rows("stage_executions", _rows(number * rows, rows))
        process = psutil.Process()
        before = peak = process.memory_info().rss
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.perf_counter()
        while plan := _compaction.tier_plan(home):
            _compaction.carry_out(home, plan)
        _compaction.compact(home, datetime(2026, 9, 21, tzinfo=UTC) + timedelta(days=5))
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
        left = len(list(home.rglob("part-*.parquet")))
        results.put((peak - before, elapsed, left))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def measure(parts: int, rows: int, capped: bool) -> tuple[int, float, int]:
    context = mp.get_context("spawn")
    results = context.Queue()
    worker = context.Process(target=merge_a_day, args=(parts, rows, capped, results))
    worker.start()
    result = results.get(timeout=1800)
    worker.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, default=256)
    parser.add_argument("--rows", type=int, default=16_384)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    runs: dict[bool, list[tuple[int, float, int]]] = {True: [], False: []}
    for _ in range(args.repeats):
        for capped in (True, False):  # interleaved
            runs[capped].append(measure(args.parts, args.rows, capped))
    table = []
    for capped, label in ((True, "ours: parts capped at FULL_PART_ROWS"), (False, "uncapped, the aged day one part")):
        peak = statistics.median(run[0] for run in runs[capped]) / 1e6
        seconds = statistics.median(run[1] for run in runs[capped])
        table.append([label, f"{peak:,.0f}", f"{seconds:.1f}", runs[capped][0][2]])
    ratio = statistics.median(run[0] for run in runs[False]) / max(1, statistics.median(run[0] for run in runs[True]))
    print_table(
        f"A day of {args.parts * args.rows:,} rows in {args.parts} parts: tier merges to the end, then compaction",
        ["way", "peak RSS added, MB", "merging, s", "parts left"],
        table,
    )
    print(f"  uncapped / ours, peak RSS added: {ratio:.1f}x")


if __name__ == "__main__":
    main()
