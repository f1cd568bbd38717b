"""One long run: what it costs on disk, and how fast `stagewatch show` and the Run page open it.

    python benchmarks/long_run.py --executions 1000000
    python benchmarks/long_run.py --executions 100000 --before /tmp/sw-main   [today's main beside]

The run is made by the real client in a pipeline process (five stages a frame, `detect`
failing on every 1,000th frame) and ingested by a real `stagewatch daemon` (event log,
projection, Parquet rows, stages.jsonl, audit.json): 1,000,000 executions take minutes, so
the home is kept (`--home`, default /tmp/sw-long-run-{executions}) and reused while it holds a
finished run. Each figure is measured in a fresh process, as a user meets it (imports
included), the median of 3: `stagewatch show RUN`, `show RUN --json` (the bytes printed),
`show RUN --json --all` (the whole trail streamed: bytes, and the process's peak RSS), and the
Run page's data (`ui._data.run_view`, the function the page calls).

`--before DIR`: the same figures for another version of stagewatch on a home it builds itself
(`{home}-before`; `show --json --all` is then `show --json`, which printed everything): DIR
holds that version's packages as installed, made from a git revision:

    mkdir -p /tmp/sw-main-src /tmp/sw-main && git archive main | tar -x -C /tmp/sw-main-src
    cp -r /tmp/sw-main-src/client /tmp/sw-main/stagewatch
    for d in daemon ui cli; do cp -r /tmp/sw-main-src/$d /tmp/sw-main/stagewatch/$d; done

Times are given as wall seconds and, beside them, CPU seconds: on a shared machine the wall
time is mostly waiting for a core.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table

STAGES = ("decode", "detect", "segment", "fuse", "write")
FAILING_EVERY = 1_000
REPEATS = 3

PIPELINE = textwrap.dedent(
    f"""
    import sys, stagewatch
    home, frames = sys.argv[1], int(sys.argv[2])
    run = stagewatch.init(pipeline="long-video", home=home)
    print(run.id, flush=True)
    for i in range(frames):
        for stage in {STAGES!r}:
            try:
                with run.stage(stage, sample_id=f"frame_{{i:07d}}"):
                    if stage == "detect" and i % {FAILING_EVERY} == 7:
                        raise ValueError(f"no detections in frame {{i}}")
            except ValueError:
                pass
    run.finish(status="failed")
    assert run.flush(1800), "the daemon did not acknowledge every event"
    """
)

RUN_VIEW = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    started = time.perf_counter()
    from stagewatch.ui import _data
    imported, cpu = time.perf_counter(), time.process_time()
    data = _data.run_view(Path(sys.argv[1]), sys.argv[2])
    print(time.perf_counter() - imported, time.process_time() - cpu, imported - started)
    """
)


def _env(packages: Path | None) -> dict[str, str]:
    env = {**os.environ, "STAGEWATCH_LOG_LEVEL": "WARNING"}
    if packages is not None:  # ahead of the installed stagewatch (an editable finder comes after sys.path)
        env["PYTHONPATH"] = f"{packages}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stagewatch.cli", *args]


def build(home: Path, executions: int, packages: Path | None) -> str:
    """The home's one run (made now unless a finished one is there): its id."""
    marker = home / "long-run.json"
    if marker.exists():
        return json.loads(marker.read_text())["run_id"]
    home.mkdir(parents=True, exist_ok=True)
    env = _env(packages)
    daemon = subprocess.Popen(_cli("daemon", "--home", str(home), "--log-level", "WARNING"), env=env)
    try:
        deadline = time.monotonic() + 60
        while not (home / "run" / "ingest.sock").exists():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError("the daemon did not start")
            time.sleep(0.1)
        started = time.monotonic()
        frames = executions // len(STAGES)
        done = subprocess.run(
            [sys.executable, "-c", PIPELINE, str(home), str(frames)], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"the pipeline failed: {done.stderr[-2000:]}")
        run_id = done.stdout.split()[0]
        print(f"built {executions:,} executions in {time.monotonic() - started:.0f} s: run {run_id}", file=sys.stderr)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(600)
    marker.write_text(json.dumps({"run_id": run_id, "executions": executions}))
    return run_id


def _timed(command: list[str], env: dict[str, str]) -> tuple[str, int, int]:
    """Seconds (wall, and CPU: on a busy machine wall time is mostly waiting for a core), bytes
    printed and peak RSS (MB) of `command`, medians of REPEATS runs."""
    runs = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        printed = 0
        assert process.stdout is not None
        while chunk := process.stdout.read(1 << 20):
            printed += len(chunk)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        cpu = usage.ru_utime + usage.ru_stime
        runs.append((time.perf_counter() - started, printed, usage.ru_maxrss // 1024, cpu))
    wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[3] for r in runs)
    return f"{wall:.2f} s ({cpu:.2f} s CPU)", runs[0][1], max(r[2] for r in runs)


def _run_view(home: Path, run_id: str, env: dict[str, str]) -> str:
    """The Run page's data load (`run_view`: wall and CPU seconds) and, apart, its imports: medians."""
    runs = []
    for _ in range(REPEATS):
        done = subprocess.run(
            [sys.executable, "-c", RUN_VIEW, str(home), run_id], env=env, capture_output=True, text=True, check=True
        )
        runs.append(tuple(map(float, done.stdout.split())))
    wall, cpu, imports = (statistics.median(r[i] for r in runs) for i in range(3))
    return f"{wall:.2f} s ({cpu:.2f} s CPU; + {imports:.2f} s of imports)"


def _size(paths: list[Path]) -> int:
    return sum(path.stat().st_size for path in paths if path.is_file())


def measure(home: Path, run_id: str, packages: Path | None) -> dict[str, str]:
    env = _env(packages)
    run = home / "runs" / run_id
    rows = _size(list((home / "metrics" / "stage_executions").rglob("*.parquet")))
    show_s, _, show_mb = _timed(_cli("show", run_id, "--home", str(home)), env)
    json_s, json_bytes, json_mb = _timed(_cli("show", run_id, "--home", str(home), "--json"), env)
    every = _cli("show", run_id, "--home", str(home), "--json", "--all")
    all_s, all_bytes, all_mb = _timed(every, env) if packages is None else (json_s, json_bytes, json_mb)
    view = _run_view(home, run_id, env)
    return {
        "stages.jsonl": f"{_size([run / 'stages.jsonl']) / 1e6:,.1f} MB",
        "audit.json": f"{_size([run / 'audit.json']) / 1e6:,.3f} MB",
        "stage_executions rows (Parquet)": f"{rows / 1e6:,.1f} MB",
        "`show RUN`": f"{show_s}, {show_mb} MB RSS",
        "`show RUN --json`": f"{json_s}, {json_bytes / 1e6:,.2f} MB printed, {json_mb} MB RSS",
        "`show RUN --json --all`": f"{all_s}, {all_bytes / 1e6:,.1f} MB printed, {all_mb} MB RSS",
        "Run page data (`run_view`)": view,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--home", type=Path, help="kept and reused (default /tmp/sw-long-run-{executions})")
    parser.add_argument("--before", type=Path, help="another version's packages (see above), measured beside")
    args = parser.parse_args()
    home = args.home or Path(f"/tmp/sw-long-run-{args.executions}")
    columns = {"this tree": measure(home, build(home, args.executions, None), None)}
    if args.before is not None:
        before_home = home.with_name(home.name + "-before")
        before = measure(before_home, build(before_home, args.executions, args.before), args.before)
        columns = {f"before ({args.before})": before, **columns}
    names = list(next(iter(columns.values())))
    print_table(
        f"One run of {args.executions:,} stage executions ({len(STAGES)} stages a frame)",
        ["", *columns],
        [[name, *(column[name] for column in columns.values())] for name in names],
    )


if __name__ == "__main__":
    main()
