"""What the Delta tables cost: a commit, listing an unchanged table's snapshot, the storage
against the same rows as JSON, and how soon a stage is visible in the table at a steady rate.

    python benchmarks/delta_tables.py [--rate 2000] [--seconds 20]

Commits: `Store.commit` of stage_executions rows (as the daemon's disk thread does), median of
repeats on a fresh table. Listing: `_tables.snapshot_files` of a table of 200 commits, cached
(what every query does) and opened anew. Storage: the table's Parquet files and `_delta_log`
against the same rows as JSON lines. Visible: a pipeline in a subprocess ends `--rate`
stages a second (sample id = its end time) into a real daemon (default settings) while this
process polls the table through the query layer; a stage's visible latency is the time from
its end until a query first returns it (p50/p99/max).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import median_ms, print_table, running_daemon

from stagewatch.daemon.query._sql import select
from stagewatch.daemon.tables._store import Store, with_dates
from stagewatch.daemon.tables._tables import _cache, snapshot_files

T0 = 1_790_000_000 * 10**9


def _rows(first: int, count: int) -> list[dict]:
    return [
        {
            "run_id": f"run-{(first + i) // 1000:06d}",
            "pipeline": "bench",
            "stage": ("load", "detect", "track", "save")[(first + i) % 4],
            "status": "ok",
            "sample_id": f"frame_{first + i:08d}",
            "client_id": "c",
            "span": first + i,
            "start_time": T0 + (first + i) * 1_000_000,
            "end_time": T0 + (first + i) * 1_000_000 + 900_000,
            "duration_ms": 0.9 + (first + i) % 7 / 10,
            "rss_start_mb": 512.0,
            "rss_peak_mb": 530.5,
            "rss_end_mb": 512.25,
            "input_path": f"/data/frames/{first + i:08d}.png",
            "output_paths": [],
            "lsn": first + i,
        }
        for i in range(count)
    ]


def commit_costs(home: Path) -> list[list[str]]:
    store, table, done, out = Store(home), "stage_executions", [0], []
    for count in (2_500, 25_000):
        rows = with_dates(store.arrow_parts(table, _rows(0, count))[0])

        def commit(rows=rows) -> None:
            done[0] += 1
            store.commit(table, rows, done[0])

        out.append([f"commit of {count:,} rows (ms)", f"{median_ms(commit, repeats=9):.1f}"])
    return out


def listing_costs(home: Path) -> list[list[str]]:
    store = Store(home)
    for commit in range(200):
        store.write_rows("logs", [{"run_id": "r", "time": T0, "message": "m", "lsn": commit}])
    snapshot_files(home, "logs")
    cached = median_ms(lambda: snapshot_files(home, "logs"), repeats=51)

    def anew() -> None:
        _cache.forget(home / "metrics" / "logs")
        snapshot_files(home, "logs")

    return [
        ["listing an unchanged table of 200 commits, cached (ms)", f"{cached:.2f}"],
        ["the same, the table opened anew (ms)", f"{median_ms(anew, repeats=9):.1f}"],
    ]


def storage(home: Path, rows: int = 200_000) -> list[list[str]]:
    store = Store(home)
    for first in range(0, rows, 25_000):
        store.write_rows("stage_executions", _rows(first, 25_000))
    folder = home / "metrics" / "stage_executions"
    delta = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    as_json = sum(len(json.dumps(row)) + 1 for first in range(0, rows, 25_000) for row in _rows(first, 25_000))
    return [
        [f"{rows:,} stage rows: Parquet + Delta log (MB)", f"{delta / 1e6:.1f}"],
        ["the same rows as JSON lines (MB)", f"{as_json / 1e6:.1f}"],
        ["Delta / JSON", f"{delta / as_json:.3f}"],
    ]


PIPELINE = """
import sys, time, stagewatch
rate, seconds = float(sys.argv[2]), float(sys.argv[3])
with stagewatch.init(pipeline="visible", home=sys.argv[1]) as run:
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        while time.monotonic() < start + i / rate:
            time.sleep(0.0005)
        with run.stage("detect", sample_id=f"{time.time_ns()}"):
            pass
"""


def visible_latency(rate: float, seconds: float) -> list[list[str]]:
    latencies: dict[str, float] = {}
    with running_daemon() as home:
        pipeline = subprocess.Popen([sys.executable, "-c", PIPELINE, str(home), str(rate), str(seconds)])
        while pipeline.poll() is None or len(latencies) < int(rate * seconds):
            if not snapshot_files(home, "stage_executions"):
                time.sleep(0.02)
                continue
            now = time.time_ns()
            found = select(home, "stage_executions", "SELECT sample_id FROM rows")["sample_id"].to_pylist()
            for sample in found:
                if sample not in latencies:
                    latencies[sample] = (now - int(sample)) / 1e9
            if pipeline.poll() is not None and len(latencies) >= int(rate * seconds):
                break
            time.sleep(0.02)
    values = sorted(latencies.values())
    p99 = values[int(len(values) * 0.99) - 1]
    return [
        [
            f"visible after the stage ended, {rate:,.0f} stages/s for {seconds:.0f} s: p50 (s)",
            f"{statistics.median(values):.2f}",
        ],
        ["p99 (s)", f"{p99:.2f}"],
        ["max (s)", f"{values[-1]:.2f}"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    header = ["measure", "value"]
    with tempfile.TemporaryDirectory() as folder:
        print_table("Commits", header, commit_costs(Path(folder) / "a"))
        print_table("Listing a snapshot", header, listing_costs(Path(folder) / "b"))
        print_table("Storage", header, storage(Path(folder) / "c"))
    print_table("Visible in the table", header, visible_latency(args.rate, args.seconds))


if __name__ == "__main__":
    main()
