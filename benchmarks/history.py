"""Queries over a long history: query by run id, a filter query, 30-day stats, storage size.

    python benchmarks/history.py --runs 10000 100000      [1000000 takes a long while]
    python benchmarks/history.py --runs 1000000 --keep /tmp/sw-hist   [built once, reused after]

The history is built by replaying generated events (4 stages a run, 3% failing at
detection, one log line a run, starts spread over 30 days or `--days`) through the daemon's own ingest
path in-process (validation, event log, projection, Parquet, audit trails), then compacted
as aged partitions are in production (a past day's partition sorted by run id). Queries run on
DuckDB over the tables' files (daemon/query/_sql.py); query by run id is what
`stagewatch query --run ID` reads. Each timing is the median of 7. The references, in the same run: for query
by run id, the same query with the run index switched off (every partition of three tables
opened); for size, the same rows written as JSON (measured on a 200k-row sample per table
above that size, and scaled; --no-size skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import answers_not_kept, median_ms, print_table

from stagewatch._protocol import pack_event
from stagewatch.daemon import (
    Daemon,
    DaemonSettings,
    Filters,
    parse_time,
    query_stages,
    query_stats,
)
from stagewatch.daemon.ingest._ingest import Group
from stagewatch.daemon.query._export import matching
from stagewatch.daemon.query._readmodels import read_table, to_rows
from stagewatch.daemon.tables._store import TABLES, table_writer_properties
from stagewatch.daemon.tables._tables import compact, snapshot_files
from stagewatch.ui._data import logs_page, runs_page

STAGES = (("preprocessing", 4.0), ("detection", 12.0), ("tracking", 3.0), ("postprocessing", 6.0))


def generated_runs(count: int, rng: np.random.Generator, spread_s: float = 30 * 86400):
    now = time.time_ns()
    for index in range(count):
        run_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))  # random, as uuid4() gives
        yield run_id, _run_events(run_id, index, now - int(rng.uniform(0, spread_s) * 1e9), rng)


def _run_events(run_id: str, index: int, t: int, rng: np.random.Generator) -> list[bytes]:
    envelope = {"v": 1, "client_id": f"c{index}", "run_id": run_id}
    events = [{"type": "run_started", "ts_ns": t, "pipeline": "perception", "host": "bench", "pid": index}]
    for span, (stage, scale) in enumerate(STAGES, 1):
        duration = float(rng.exponential(scale))
        event = {
            "type": "stage_finished",
            "ts_ns": t,
            "stage": stage,
            "span": span,
            "sample_id": f"frame_{index % 1000:03d}",
            "start_ts_ns": t,
            "duration_ms": duration,
            "rss_start_mb": 500.0,
            "rss_peak_mb": 500 + duration,
            "rss_end_mb": 501.0,
        }
        if stage == "detection" and rng.random() < 0.03:
            event.update(type="stage_failed", error_type="ValueError", error_message="NaN pixels")
        events.append(event)
        t += int(duration * 1e6)
    events.append({"type": "log", "ts_ns": t, "level": "INFO", "message": "frame done", "stage": "postprocessing"})
    events.append({"type": "run_finished", "ts_ns": t, "status": "ok", "duration_ms": 25.0})
    return [pack_event({**envelope, **event, "seq": seq}) for seq, event in enumerate(events, 1)]


def _opened(home: Path) -> Daemon:
    daemon = Daemon(
        DaemonSettings(
            home=home,
            endpoint=f"ipc://{home}/run/in.sock",
            live_endpoint=f"ipc://{home}/run/live.sock",
            finished_run_grace_s=0,
        )
    )
    daemon.lock.take()
    daemon.recover()
    daemon.ingest.bind()
    return daemon


def _closed(daemon: Daemon) -> None:
    daemon.flush(final=True)
    daemon.release()


def build(home: Path, runs: int, days: int = 30) -> tuple[list[str], float]:
    daemon = _opened(home)
    started, run_ids, group = time.perf_counter(), [], Group()
    for index, (run_id, events) in enumerate(generated_runs(runs, np.random.default_rng(1), days * 86400)):
        run_ids.append(run_id)
        daemon.ingest.take(group, events, f"c{index}")
        if len(group.payloads) >= 10_000:
            daemon.ingest.commit(group)
            group = Group()
            if len(run_ids) % 20_000 < 2_000:
                daemon.flush()
    daemon.ingest.commit(group)
    daemon.flush(final=True)
    _compact_all(home)  # as the daemon does over time
    elapsed = time.perf_counter() - started
    _closed(daemon)
    return run_ids, elapsed


def busy_hour(runs: int, runs_per_flush: int) -> list[list[str]]:
    """Today's partition after an hour of one flush a second: a file per commit and table
    (the reference), then compacted as the daemon does."""
    home = Path(tempfile.mkdtemp(prefix="sw-busy-", dir="/tmp")) / "home"
    try:
        daemon, run_ids, group = _opened(home), [], Group()
        for index, (run_id, events) in enumerate(generated_runs(runs, np.random.default_rng(2), spread_s=3600)):
            run_ids.append(run_id)
            daemon.ingest.take(group, events, f"c{index}")
            if len(run_ids) % runs_per_flush == 0:  # a second's worth: one group, one flush
                daemon.ingest.commit(group)
                daemon.flush()
                group = Group()
        daemon.ingest.commit(group)
        _closed(daemon)
        target = run_ids[len(run_ids) // 2]
        parts_before = _parts(home)
        unmerged_ms = median_ms(lambda: _by_id(home, target))
        _compact_all(home)  # as the daemon's passes do
        merged_ms = median_ms(lambda: _by_id(home, target))
        return [
            [
                f"{runs:,} in an hour",
                f"query by run id of today, {_parts(home)} parts (ms)",
                f"{merged_ms:.1f}",
                "< 50",
                f"{unmerged_ms:.1f} with {parts_before:,} unmerged parts ({unmerged_ms / merged_ms:.1f}x)",
            ],
        ]
    finally:
        shutil.rmtree(home.parent, ignore_errors=True)


def _compact_all(home: Path) -> None:
    for table in TABLES:
        while compact(home, table, table_writer_properties(table)):  # a few past days a pass, as the daemon's
            pass


def _parts(home: Path) -> int:
    return sum(len(snapshot_files(home, table)) for table in TABLES)


def _by_id(home: Path, run_id: str) -> dict:
    """What `stagewatch query --run ID` reads: the run's rows of the three tables, as rows."""
    return matching(home, Filters(run=run_id))


def json_size(table, sample_rows: int = 200_000) -> int:
    """Bytes of the rows as JSON; above `sample_rows`, measured on an even sample and scaled."""
    if table.num_rows <= sample_rows:
        return len(json.dumps(to_rows(table), default=str))
    step = table.num_rows // sample_rows
    sample = table.take(list(range(0, table.num_rows, step)))
    return int(len(json.dumps(to_rows(sample), default=str)) * table.num_rows / sample.num_rows)


def prepared_home(runs: int, keep: Path | None, days: int = 30) -> tuple[Path, list[str], float | None]:
    """A home holding `runs` generated runs over `days`: built now, or reused from `keep` (built there once)."""
    if keep is None:
        home = Path(tempfile.mkdtemp(prefix="sw-hist-", dir="/tmp")) / "home"
    else:
        name = f"runs-{runs}" if days == 30 else f"runs-{runs}-{days}d"
        home, ids = keep / name, keep / f"{name}.ids"
        if ids.exists():
            return home, ids.read_text().split(), None
    run_ids, build_s = build(home, runs, days)
    if keep is not None:
        ids.write_text("\n".join(run_ids))
    return home, run_ids, build_s


def measure(runs: int, keep: Path | None = None, size: bool = True, days: int = 30) -> list[list[str]]:
    home, run_ids, build_s = prepared_home(runs, keep, days)
    try:
        target = run_ids[len(run_ids) // 2]

        def by_id():
            return _by_id(home, target)

        def failed_detection():
            return query_stages(home, Filters(stage="detection", status="failed", since=parse_time("7d")))

        def stats():
            return query_stats(home, Filters(since=parse_time("30d")))

        def runs_page_one():
            return runs_page(home, Filters(), "duration_ms", True, 0, 25)

        def logs_page_far():
            return logs_page(home, Filters(level="INFO"), 1000, 50)

        stats_ms = median_ms(stats)
        by_id_ms = median_ms(by_id)
        marker = home / "index" / "runs" / "complete"
        marker.unlink()  # the reference: the same query scanning every partition, as before the index
        scan_ms = median_ms(by_id)
        marker.touch()
        rows = [
            [f"{runs:,}", "build (events/s)", f"{runs * 7 / build_s:,.0f}" if build_s else "reused", "-", "-"],
            [
                f"{runs:,}",
                "query by run id (ms)",
                f"{by_id_ms:.1f}",
                "< 50",
                f"{scan_ms:.1f} without the run index ({scan_ms / by_id_ms:.1f}x)",
            ],
            [
                f"{runs:,}",
                "--stage detection --status failed --since 7d (ms)",
                f"{median_ms(failed_detection):.1f}",
                "< 300",
                "-",
            ],
            [f"{runs:,}", "stats over 30 days, exact (ms)", f"{stats_ms:.1f}", "< 500", "-"],
            [f"{runs:,}", "dashboard: runs page 1 by duration (ms)", f"{median_ms(runs_page_one):.1f}", "-", "-"],
            [f"{runs:,}", "dashboard: INFO logs, page 21 (ms)", f"{median_ms(logs_page_far):.1f}", "-", "-"],
        ]
        if size:
            parquet = sum(p.stat().st_size for p in (home / "metrics").rglob("*.parquet"))
            as_json = sum(json_size(read_table(home, t).drop(["date"])) for t in ("runs", "stage_executions", "logs"))
            rows.append(
                [
                    f"{runs:,}",
                    "Parquet vs same rows as JSON (MB)",
                    f"{parquet / 2**20:.1f}",
                    "≥ 90% smaller",
                    f"{as_json / 2**20:.1f} JSON ({1 - parquet / as_json:.1%} smaller)",
                ]
            )
        return rows
    finally:
        if keep is None:
            shutil.rmtree(home.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--keep", type=Path, help="build each history once in this folder and reuse it afterwards")
    parser.add_argument(
        "--busy-hour",
        type=int,
        default=0,
        metavar="RUNS",
        help="also: today's partition after RUNS runs in an hour of 1 s flushes",
    )
    parser.add_argument("--no-size", action="store_true", help="skip the Parquet-vs-JSON size comparison")
    parser.add_argument("--days", type=int, default=30, help="the runs' starts spread over this many days (30)")
    args = parser.parse_args()
    with answers_not_kept():  # each figure a read of the tables, not a repeat answered from memory
        rows = [row for runs in args.runs for row in measure(runs, args.keep, not args.no_size, args.days)]
        if args.busy_hour:
            rows += busy_hour(args.busy_hour, max(1, args.busy_hour // 3600))
    print_table("History queries (median of 7)", ["runs", "measure", "ours", "target", "reference"], rows)


if __name__ == "__main__":
    main()
