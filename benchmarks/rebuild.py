"""`stagewatch rebuild` of a long event log: events replayed a second, against reading the log alone.

    python benchmarks/rebuild.py [--events 4000000] [--stages-per-run 1000] [--other-code DIR]

The log is written straight into a fresh home's events/ with the daemon's own EventLog (the
format a daemon writes): runs of `--stages-per-run` stage ends each, with their run_started
and run_finished, every 10th stage failed, one log line per 100 stages. Then `stagewatch
rebuild` runs on it as a subprocess (the clock includes its start, the swap and the
accuracy worker's replay). The reference reads every record of the same log and unpacks
it with msgpack: the floor of any replay. With `--other-code DIR` (a `pip install --target`
of another commit) the rebuild runs a second time with that code first on the PYTHONPATH,
on the same log: before/after in one sitting.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgpack

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table

from stagewatch import _protocol as protocol
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.ingest._eventlog import EventLog

CLIENT = "rebuild-bench"


def _run_events(run_id: str, stages: int, seq: int, now: int) -> list[dict]:
    events = [
        protocol.run_started(CLIENT, run_id, now, pipeline="bench", config={}, host="h", pid=1, dataset=None, argv=[])
    ]
    for span in range(1, stages + 1):
        end = protocol.stage_finished(
            CLIENT, run_id, now + span * 1000, stage="detection", span=span, parent_span=None,
            sample_id=f"frame_{span}", input_path=None, start_ts_ns=now + span * 1000 - 500, duration_ms=0.5,
            output_paths=[], rss_start_mb=100.0, rss_peak_mb=120.0, rss_end_mb=101.0, gpu_peak_mb=None,
            error=("ValueError", "bad frame", "") if span % 10 == 0 else None,
        )  # fmt: skip
        events.append(end)
        if span % 100 == 0:
            events.append(protocol.log(CLIENT, run_id, now + span * 1000, level="INFO", message=f"{span} frames"))
    events.append(
        protocol.run_finished(
            CLIENT,
            run_id,
            now + (stages + 1) * 1000,
            status="failed",
            duration_ms=1.0,
            stages_failed=stages // 10,
            dropped_events=0,
            error_type=None,
            error_message=None,
        )
    )
    return [protocol.pack_event({**event, "seq": seq + i}) for i, event in enumerate(events)]


def write_log(home: Path, events: int, stages_per_run: int) -> int:
    log = EventLog(DaemonHome(home).events)
    log.open()
    written, seq, now = 0, 1, time.time_ns() - 3_600 * 10**9
    while written < events:
        payloads = _run_events(str(uuid.uuid4()), stages_per_run, seq, now)
        log.append(payloads)
        written += len(payloads)
        seq += len(payloads)
        now += 10**9
    log.close()
    return written


def rebuild_seconds(home: Path, python_path: str | None) -> float:
    env = dict(os.environ)
    if python_path:
        env["PYTHONPATH"] = python_path
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stagewatch.cli", "rebuild", "--home", str(home)], check=True, env=env,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - started


def read_seconds(home: Path) -> float:
    started = time.perf_counter()
    for _, payload in EventLog(DaemonHome(home).events).read():
        msgpack.unpackb(payload, raw=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4_000_000)
    parser.add_argument("--stages-per-run", type=int, default=1_000)
    parser.add_argument("--other-code", help="a folder of another commit's code (pip install --target)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="sw-rebuild-", dir="/tmp"))
    try:
        events = write_log(home, args.events, args.stages_per_run)
        read = read_seconds(home)
        rows = []
        if args.other_code:
            other = rebuild_seconds(home, args.other_code)
            rows.append(
                [f"stagewatch rebuild, code from {args.other_code}", f"{events / other:,.0f}", f"{read / other:.2f}"]
            )
        ours = rebuild_seconds(home, None)
        rows.insert(0, ["stagewatch rebuild (this checkout)", f"{events / ours:,.0f}", f"{read / ours:.2f}"])
        rows.append(["reading the log + msgpack.unpackb (no fold, no writes)", f"{events / read:,.0f}", "1.00"])
        print_table(
            f"Rebuild of a {events:,}-event log ({args.stages_per_run:,} stages a run), events/s; "
            "ratio = read time / rebuild time",
            ["path", "events/s", "ratio"],
            rows,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
