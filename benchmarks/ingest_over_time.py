"""Sustained ingest second by second: what a long flood into one run costs as it grows.

    python benchmarks/ingest_over_time.py [--events 1000000]

benchmarks/ingest.py's producer (stage_finished events into one run, batches of 1,000, 16 in
flight) against a real daemon; once a second the events acknowledged (counted by the
producer), the daemon's CPU (all threads, from /proc), its RSS and the Parquet part files on
disk. A short run (ingest.py's 300,000 events, ~3 s) sees none of what a long one meets:
the first merges of small parts (every 10 s: STAGEWATCH_DAEMON_MERGE_INTERVAL_S) and the
throttled rewrite of a growing run's audit.json (every 5 s at most). The reference, raw
ZeroMQ PUSH/PULL with msgpack, one event a message, runs after it on the same machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, running_daemon
from ingest import BATCH, measure_raw, produce


def _parts(home: Path) -> int:
    return sum(1 for _ in (home / "metrics" / "stage_executions").rglob("*.parquet"))


def _daemon(home: Path) -> psutil.Process:
    for child in psutil.Process().children():
        if "daemon" in child.cmdline() and str(home) in child.cmdline():
            return child
    raise RuntimeError("no daemon process found")


def over_time(events: int) -> tuple[list[list[str]], float, list[float]]:
    """Rows of the per-second table, the whole run's rate, and each second's rate."""
    with running_daemon(env={"STAGEWATCH_DAEMON_ACCURACY_WORKER": "false"}) as home:
        daemon = _daemon(home)
        context = mp.get_context("spawn")
        ready, go, batches = context.Event(), context.Event(), context.Value("q", 0)
        arguments = (f"ipc://{home}/run/ingest.sock", events, ready, go, None, None, batches)
        producer = context.Process(target=produce, args=arguments)
        producer.start()
        if not ready.wait(600):
            raise RuntimeError("the producer did not get ready")
        times = daemon.cpu_times()
        last = (0, times.user + times.system, time.perf_counter())
        started = last[2]
        go.set()
        rows, rates = [], []
        while producer.is_alive():
            time.sleep(0.02)  # the run's end to 20 ms; the table's rows a second apart
            accepted = batches.value * BATCH
            if time.perf_counter() - last[2] < 1.0 or accepted == last[0]:
                continue
            times = daemon.cpu_times()
            now = (accepted, times.user + times.system, time.perf_counter())
            count, cpu, wall = now[0] - last[0], now[1] - last[1], now[2] - last[2]
            rates.append(count / wall)
            rows.append(
                [
                    f"{now[2] - started:.1f}",
                    f"{count / wall:,.0f}",
                    f"{cpu / count * 1e6:.1f}",
                    f"{daemon.memory_info().rss / 2**20:.0f}",
                    str(_parts(home)),
                ]
            )
            last = now
        whole = events / (time.perf_counter() - started)
        producer.join()
    return rows, whole, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    rows, whole, rates = over_time(args.events)
    print_table(
        f"Ingest of {args.events:,} events into one run, second by second (acknowledged events)",
        ["s since start", "events/s", "daemon CPU µs / event", "daemon RSS MB", "Parquet parts"],
        rows,
    )
    raw = measure_raw(min(args.events, 300_000), 1)
    print_table(
        "Summary (events/s; ratio = ours / raw)",
        ["measure", "events/s", "ratio"],
        [
            ["ours, the whole run, until every event is acknowledged", f"{whole:,.0f}", f"{whole / raw:.2f}"],
            ["ours, the median second", f"{statistics.median(rates):,.0f}", f"{statistics.median(rates) / raw:.2f}"],
            ["ours, the slowest second", f"{min(rates):,.0f}", f"{min(rates) / raw:.2f}"],
            ["raw ZeroMQ PUSH/PULL + msgpack, 1 event a message (no disk)", f"{raw:,.0f}", "1.00"],
        ],
    )


if __name__ == "__main__":
    main()
