"""`stagewatch compare` through the real daemon: pipelines run in processes of their own (their
stage durations set through their monotonic clock, the system edge), the tables the daemon
writes, the CLI as a CI job runs it; its statistics checked against scipy."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import scipy.stats

from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.compare._shifts import detect
from stagewatch.daemon.compare._stattests import bootstrap_interval, mann_whitney_p, mcnemar_p, two_proportions_p
from stagewatch.daemon.query._readmodels import active_runs, load_accuracy, read_table
from stagewatch.daemon.tables._tables import snapshot_files
from tests.conftest import DaemonProcess, run_pipeline, run_python, sw, wait_for
from tests.daemon.test_compaction import _damage as damage
from tests.daemon.test_pipeline_clock import BOOTED_IN_1970
from tests.groundtruth.builders import scene, write_dataset

# The pipeline's monotonic clock, patched in its own process: `work(ms)` makes the stage around
# it take `ms` more (a stage's duration is read from time.monotonic_ns).
TIMED_PIPELINE = """
import time
import numpy as np
import stagewatch
_real_monotonic_ns = time.monotonic_ns
_offset = [0]
time.monotonic_ns = lambda: _real_monotonic_ns() + _offset[0]
def work(ms):
    _offset[0] += int(ms * 1e6)
rng = np.random.default_rng({seed})
def busy():  # with a tail: one execution in ten meets a busy moment, 1 + exponential({tail}) times slower
    return 1 + rng.exponential({tail}) if {tail} and rng.random() < 0.1 else 1
run = stagewatch.init(pipeline={pipeline!r}, home={home!r}, config={config!r})
for frame in range({frames}):
    for stage, ms in {stages!r}.items():
        with run.stage(stage, sample_id=f"f{{frame}}"):
            work(ms * rng.lognormal(0, 0.2) * busy())
if {held!r}:  # the run stays open (not ended) until the test sends a line
    assert run.flush(10), "the daemon did not acknowledge the stages"
    print(run.id, flush=True)
    sys.stdin.readline()
run.finish()
assert run.flush(10), "the daemon did not acknowledge the run"
print(run.id)
"""


def timed_code(
    home: Path,
    seed: int,
    infer_factor: float = 1.0,
    pipeline: str = "timed",
    config: Any = None,
    frames: int = 60,
    stages: dict[str, float] | None = None,
    held: bool = False,
    tail: float = 0.0,
) -> str:
    """The timed pipeline's code: `stages` (name -> its typical ms, in the order they run; by
    default decode 20 ms, infer 40 ms x infer_factor) on each frame; `held`: it stays open after
    its stages until a line comes on its stdin; `tail`: a heavy tail of slow executions."""
    return "import sys\n" + TIMED_PIPELINE.format(
        seed=seed,
        pipeline=pipeline,
        home=str(home),
        config=config or {"model": "v1"},
        frames=frames,
        stages=stages or {"decode": 20, "infer": 40 * infer_factor},
        held=held,
        tail=tail,
    )


def timed_run(home: Path, seed: int, **options: Any) -> str:
    result = run_python(timed_code(home, seed, **options))
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-1]


@contextlib.contextmanager
def held_run(home: Path, seed: int, **options: Any) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A timed run whose stages have ended and which is still open: (its id, its process). Send a
    line to its stdin to end it; whatever happens, the process is gone afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-c", timed_code(home, seed, held=True, **options)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process.stdout.readline().strip(), process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def stagewatch_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "compare", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def rows_stored(daemon: DaemonProcess, run_id: str, table: str, count: int) -> None:
    wait_for(lambda: sum(r == run_id for r in read_table(daemon.home, table)["run_id"].to_pylist()) >= count, 30)


def compared(home: Path, *args: str) -> dict[str, Any]:
    done = stagewatch_cli(home, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_only_the_slower_stage_is_flagged_and_a_repeat_flags_nothing(daemon: DaemonProcess) -> None:
    first = timed_run(daemon.home, seed=1)
    slower = timed_run(daemon.home, seed=2, infer_factor=1.3, config={"model": "v2"})
    again = timed_run(daemon.home, seed=3)
    for run_id in (first, slower, again):
        daemon.audit(run_id)
        rows_stored(daemon, run_id, "stage_executions", 120)

    found = compared(daemon.home, first, slower)
    stages = {s["stage"]: s for s in found["stages"]}
    assert stages["infer"]["regressed"] and not stages["decode"]["regressed"]
    assert stages["infer"]["median_ms"]["called_out"] and stages["infer"]["p95_ms"]["called_out"]
    assert stages["infer"]["median_ms"]["change"] == pytest.approx(0.3, abs=0.12)
    low, high = stages["infer"]["median_ms"]["interval"]
    assert 0 < low < high  # the bootstrap interval of the difference excludes 0
    assert stages["decode"]["reasons"] == [] and stages["decode"]["executions"] == {"a": 60, "b": 60}
    assert found["config"] == [{"key": "model", "from": "v1", "to": "v2"}]
    assert found["environment"] == []  # the same interpreter and host
    assert found["flips"] == []

    repeat = compared(daemon.home, first, again)
    assert [s["regressed"] for s in repeat["stages"]] == [False, False]
    assert all(not s["reasons"] for s in repeat["stages"]) and repeat["failures"] == []


def test_a_change_within_the_run_to_run_noise_is_not_called_out_one_beyond_it_is(daemon: DaemonProcess) -> None:
    """decode's level moves by a third from run to run (a machine whose load comes and goes);
    infer's does not. B makes both 30% slower than A: only infer's change is beyond what two
    runs of unchanged code differ by. Without that history both were called out."""
    levels = (0.7, 1.0, 1.4, 0.8, 1.3, 1.0)
    for seed, level in enumerate(levels):
        last = timed_run(daemon.home, seed=seed, stages={"decode": 20 * level, "infer": 40})
    slower = timed_run(daemon.home, seed=99, stages={"decode": 26, "infer": 52})
    for run_id in (last, slower):
        daemon.audit(run_id)
        rows_stored(daemon, run_id, "stage_executions", 120)

    found = compared(daemon.home, last, slower)
    assert found["run_noise"] == {"runs": len(levels), "needed": 5, "known": True}
    decode, infer = (next(s for s in found["stages"] if s["stage"] == name) for name in ("decode", "infer"))
    assert decode["median_ms"]["significant"] and decode["median_ms"]["within_run_noise"]
    assert not decode["regressed"] and decode["median_ms"]["run_noise"] > 0.3
    assert infer["regressed"] and infer["median_ms"]["called_out"] and infer["median_ms"]["run_noise"] < 0.3
    gated = stagewatch_cli(daemon.home, last, slower, "--fail-on-regression")
    assert gated.returncode == 1 and "infer" in gated.stderr and "decode" not in gated.stderr, gated.stderr
    assert "beyond the run-to-run noise" in gated.stdout


def test_the_gate_exits_1_with_the_reason_and_2_for_what_names_nothing(daemon: DaemonProcess) -> None:
    first = timed_run(daemon.home, seed=1)
    slower = timed_run(daemon.home, seed=2, infer_factor=1.3)
    for run_id in (first, slower):
        daemon.audit(run_id)
        rows_stored(daemon, run_id, "stage_executions", 120)

    gated = stagewatch_cli(daemon.home, first, slower, "--fail-on-regression")
    assert gated.returncode == 1, gated.stderr
    assert "regression: infer: median time" in gated.stderr and "REGRESSED" in gated.stdout
    assert "Mann-Whitney U" in gated.stdout  # which test called it out
    assert "decode" not in gated.stderr
    passed = stagewatch_cli(daemon.home, slower, first, "--fail-on-regression")  # faster: not a regression
    assert passed.returncode == 0, passed.stderr
    assert "median time" in passed.stdout and "better" in passed.stdout
    as_json = stagewatch_cli(daemon.home, first, slower, "--fail-on-regression", "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["regressed"] is True
    loose = stagewatch_cli(daemon.home, first, slower, "--fail-on-regression", "--threshold", "90%")
    assert loose.returncode == 0, loose.stderr  # significant, but under the practical threshold

    # `compare B` alone: against the run before it (last:1)
    assert compared(daemon.home, slower)["a"]["runs"] == [first]
    for args, message in (
        (["ffffffff", slower], "no run with id 'ffffffff'"),
        ([first, "--baseline", "last:3"], "holds no finished run; give a second run"),
        ([first], f"no finished run of timed before run {first[:8]} to compare it with"),  # the default, said
        ([slower, "--baseline", "last:0"], "between 1 and"),
        ([slower, "--baseline=last:-1"], "between 1 and"),  # not "no run with id 'last:-1'"
        ([slower, "--baseline", "last:abc"], "between 1 and"),
        ([slower, "--baseline", "7x"], "a baseline is a run id or unique prefix, last:N"),  # the forms, named
        ([slower, "--baseline", "7x"], "(30m, 24h, 7d, 2w)"),
        ([slower, "--baseline", " "], "expected a baseline: a run id"),  # not the run before it, unasked
        ([first, slower, "--baseline", "7d"], "not both"),
        ([first, first], "same run"),
        ([first, slower, "--threshold", "lots"], "expected a share"),
        ([first, slower, "--threshold", "5"], "(that is 500%)"),  # not a gate that never fires
        ([first, slower, first], "got 3 runs"),
        ([first, slower, "--accuracy-drop", "2"], "(that is 200%)"),
    ):
        done = stagewatch_cli(daemon.home, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_odd_options_are_read_refused_or_said_as_they_are(daemon: DaemonProcess) -> None:
    """A window or last:N in capitals is the same baseline, echoed as 7d (7D read as a run id:
    "no run with id '7d'"); with --json an error is also a JSON object on stdout (it was text on
    stderr only); a confidence of 0.9999999999 reads 99.99999999% (not 100%); an accuracy drop
    over 100 points is refused (200% was taken), and a threshold over 100% says what it can
    never call out."""
    first = timed_run(daemon.home, seed=1, frames=10)
    second = timed_run(daemon.home, seed=2, frames=10)
    rows_stored(daemon, second, "runs", 1)
    capitals = ["2W", "24 H", "LAST:1"] + (["7D"] if not any(r.startswith("7d") for r in (first, second)) else [])
    for spec in capitals:
        found = compared(daemon.home, second, "--baseline", spec)
        assert found["a"]["runs"] == [first], spec
    spaced = compared(daemon.home, second, "--baseline", "24 H")
    assert spaced["a"]["label"] == "the runs of timed in the last 24h (1 run)"

    for args, message in (
        (["ffffffff", second], "no run with id 'ffffffff'"),
        ([second, "--baseline", "7x"], "a baseline is a run id or unique prefix"),
        ([first, second, "--threshold", "lots"], "expected a share"),
        ([first, second, "--accuracy-drop", "200%"], "an accuracy drop (rate points) between 0% and 100%"),
        ([first, second, "--accuracy-drop", "nan"], "an accuracy drop (rate points) between 0% and 100%"),
        ([second, "--baseline", "\u0662\u0664h"], "a baseline is a run id or unique prefix"),
        ([first, second, "--confidence", "1"], "--confidence: expected a confidence between 0.5 and 1"),
        ([first, second, "--confidence", "0.9999999999999999"], "at most 0.999999999999"),
        ([first, second, "--wait", "-1"], "expected between 0 and 3600 seconds"),
        ([first, second, first], "got 3 runs"),
    ):
        done = stagewatch_cli(daemon.home, *args, "--json")
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        said = json.loads(done.stdout)
        assert list(said) == ["error"] and message in said["error"], (args, said)
        assert said["error"] in done.stderr and "Traceback" not in done.stderr

    precise = stagewatch_cli(daemon.home, first, second, "--confidence", "0.9999999999")
    assert "significant at 99.99999999% confidence" in precise.stdout, precise.stdout
    assert "significant at 99% confidence" in stagewatch_cli(daemon.home, first, second).stdout
    assert stagewatch_cli(daemon.home, first, second, "--accuracy-drop", "100%").returncode == 0
    wide = compared(daemon.home, first, second, "--threshold", "1000%")
    (warning,) = [w for w in wide["warnings"] if "threshold" in w]
    assert "(100% or more)" in warning and "failure rate" in warning and "never called out" in warning
    assert not [w for w in compared(daemon.home, first, second, "--threshold", "99%")["warnings"] if "threshold" in w]
    too_wide = stagewatch_cli(daemon.home, first, second, "--threshold", "1001%")
    assert too_wide.returncode == 2 and "between 0% and 1000%" in too_wide.stderr


def test_a_baseline_of_the_last_runs_pools_them_and_judges_the_history(daemon: DaemonProcess) -> None:
    runs = [timed_run(daemon.home, seed=seed, frames=20) for seed in range(10)]
    runs += [timed_run(daemon.home, seed=10 + seed, infer_factor=1.3, frames=20) for seed in range(3)]
    for run_id in runs:
        rows_stored(daemon, run_id, "stage_executions", 40)
    found = compared(daemon.home, runs[-1], "--baseline", "last:12")
    assert found["a"]["runs"] == runs[:-1] and found["a"]["kind"] == "last"
    (shift,) = [s for s in found["shifts"] if s["measure"] == "median_ms"]
    assert shift["stage"] == "infer" and shift["started_run"] == runs[10] and shift["ongoing"]
    assert {s["stage"] for s in found["shifts"]} == {"infer"}
    assert compared(daemon.home, runs[-1], "--baseline", "30d")["a"]["runs"] == runs[:-1]
    said = stagewatch_cli(daemon.home, runs[-1], "--baseline", "last:12").stdout  # the runs it stands for, named
    assert f"A: the last 12 runs of timed (newest {runs[-2][:8]}, pipeline timed)" in said, said
    said = stagewatch_cli(daemon.home, runs[-1]).stdout
    assert f"A: the run of timed before it (run {runs[-2][:8]}, pipeline timed)" in said, said
    # a window longer than the calendar reaches back to the oldest time a table can hold
    assert compared(daemon.home, runs[-1], "--baseline", "99999999999999d")["a"]["runs"] == runs[:-1]


NAMED_RUN = """
from stagewatch._run import Run
run = Run("timed", home={home!r}, run_id={run_id!r})
for frame in range(5):
    with run.stage("decode", sample_id=f"f{{frame}}"):
        pass
run.finish()
assert run.flush(10), "the daemon did not acknowledge the run"
"""


def test_a_run_prefix_is_never_read_as_a_window_nor_a_window_as_a_run(daemon: DaemonProcess) -> None:
    """Run ids whose prefixes read as windows too ("7d": seven days; "12d"): A of `compare A B`
    is a run, always; a --baseline that is both a window and a run prefix is refused with both
    readings named; an empty window (0d) is refused as such."""
    first, second = "7d5e0c1a-0000-4000-8000-000000000001", "12d00000-0000-4000-8000-000000000002"
    for run_id in (first, second, "0d000000-0000-4000-8000-000000000003"):
        result = run_python(NAMED_RUN.format(home=str(daemon.home), run_id=run_id))
        assert result.returncode == 0, result.stderr
        rows_stored(daemon, run_id, "runs", 1)

    found = compared(daemon.home, "7d", "12d")
    assert found["a"]["kind"] == "run" and found["a"]["runs"] == [first] and found["b"]["runs"] == [second]
    assert compared(daemon.home, "12d", "--baseline", "7 d")["a"]["kind"] == "window"  # the window, spaced
    assert compared(daemon.home, "12d", "--baseline", "7d5e")["a"]["kind"] == "run"  # the run, longer
    for args, message in (
        (["12d", "--baseline", "7d"], "both a window (7d) and the start of run 7d5e0c1a"),
        (["12d", "--baseline", "0d"], "both a window (0d) and the start of run 0d000000"),
        (["12d", "--baseline", "0 d"], "an empty window"),
        (["12d", "--baseline", "0h"], "an empty window"),
        (["3d", "12d"], "no run with id '3d'"),  # A is a run, never a window
    ):
        done = stagewatch_cli(daemon.home, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


def test_a_p95_step_of_10_percent_is_called_within_3_runs_and_an_a_a_history_is_not(daemon: DaemonProcess) -> None:
    """Two histories of the same generator through the real daemon (100 frames a run, each
    execution's time drawn around its stage's): in one, nothing changes (A/A); in the other,
    infer becomes 10% slower (its p95 too) for the last 3 runs. The step is called on its p95
    by the third run; the A/A history has no shift at all."""
    frames, steady, stepped = 100, 10, 3
    same = [timed_run(daemon.home, seed=seed, frames=frames, pipeline="same") for seed in range(steady + stepped)]
    step = [timed_run(daemon.home, seed=seed, frames=frames, pipeline="step") for seed in range(steady)]
    step += [
        timed_run(daemon.home, seed=steady + seed, frames=frames, pipeline="step", infer_factor=1.1)
        for seed in range(stepped)
    ]
    for run_id in same + step:
        rows_stored(daemon, run_id, "stage_executions", 2 * frames)

    found = compared(daemon.home, step[-1], "--baseline", f"last:{steady + stepped}")
    (shift,) = [s for s in found["shifts"] if s["measure"] == "p95_ms"]
    assert shift["stage"] == "infer" and shift["ongoing"]
    # found by the step's third run; where it started, within a run: the run before the step
    # happens to be the slowest of the steady ones here (its median 5% above the level)
    assert step.index(shift["found_run"]) <= steady + 2
    assert step.index(shift["started_run"]) in (steady - 1, steady)
    assert shift["change"] == pytest.approx(0.10, abs=0.05)
    assert {s["stage"] for s in found["shifts"]} == {"infer"}
    assert compared(daemon.home, same[-1], "--baseline", f"last:{steady + stepped}")["shifts"] == []


def test_an_a_a_history_whose_p95_cusum_cries_wolf_is_not_called(daemon: DaemonProcess) -> None:
    """An A/A history with a heavy tail (one execution in ten slowed by a busy moment): the
    per-run p95 rests on a run's few slowest executions, and its CUSUM calls a shift in this
    history (checked below: the history is one where it does). The call is not confirmed on the
    executions, the runs as the unit: no shift."""
    frames, runs = 100, 13
    same = [
        timed_run(daemon.home, seed=1456 + seed, frames=frames, pipeline="tailed", tail=1.5) for seed in range(runs)
    ]
    for run_id in same:
        rows_stored(daemon, run_id, "stage_executions", 2 * frames)
    infer = read_table(daemon.home, "stage_executions").to_pandas().query("stage == 'infer'")
    p95 = infer.groupby("run_id")["duration_ms"].quantile(0.95)
    # the CUSUM of each run's p95 as it was judged before (slack 1) calls a shift here
    assert detect(p95[same].to_numpy(), slack=1.0), "the per-run p95 CUSUM calls no shift in this history"
    assert compared(daemon.home, same[-1], "--baseline", f"last:{runs}")["shifts"] == []


def test_a_run_that_crashed_fails_the_gate(daemon: DaemonProcess) -> None:
    """Its figures (same code, nothing slower) are judged as they are, and the gate still fails:
    a run whose process was lost before it ended is no pass."""
    first = timed_run(daemon.home, seed=1, frames=20)
    with held_run(daemon.home, seed=1, frames=20) as (lost, process):
        rows_stored(daemon, lost, "stage_executions", 40)
        process.kill()
    wait_for(
        lambda: (
            "crashed"
            in read_table(daemon.home, "runs").filter(pc.equal(pc.field("run_id"), lost))["status"].to_pylist()
        ),
        30,
    )
    gated = stagewatch_cli(daemon.home, first, lost, "--fail-on-regression")
    assert gated.returncode == 1, (gated.stdout, gated.stderr)
    assert "B crashed" in gated.stderr and "crashed" in gated.stdout


@pytest.fixture
def slow_flushing_daemon(home: Path) -> Iterator[DaemonProcess]:
    """A daemon whose periodic flush is 8 s apart: a run's end reaches the runs table that late."""
    process = DaemonProcess(home, env={"STAGEWATCH_DAEMON_FLUSH_INTERVAL_S": "8"}).start()
    yield process
    process.stop()


def test_a_baseline_of_a_run_just_ended_waits_for_its_record(slow_flushing_daemon: DaemonProcess) -> None:
    """`compare B --baseline last:1` the moment B's pipeline ended, before the daemon wrote its
    runs row or its trail: B's pipeline is not known yet, which is not "none". It said "run … has
    no pipeline recorded: give a baseline run instead" (exit 2, also with --wait); it waits for
    B's record and compares (and without a wait says B is not recorded yet). Before the daemon's
    flush the run's whole id names no run at all: waited for too (a prefix is not)."""
    import stagewatch

    daemon = slow_flushing_daemon
    first = timed_run(daemon.home, seed=1, frames=20)
    rows_stored(daemon, first, "runs", 1)
    with stagewatch.init(pipeline="timed", home=daemon.home) as run, run.stage("decode", sample_id="f0"):
        pass
    assert run.flush(10)
    at_once = stagewatch_cli(daemon.home, run.id, "--baseline", "last:1", "--wait", "0")
    assert at_once.returncode == 2 and " yet" in at_once.stderr, at_once.stderr  # not recorded yet: said so
    waited = stagewatch_cli(daemon.home, run.id, "--baseline", "last:1", "--wait", "30", "--json")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["a"]["runs"] == [first]


def test_a_run_not_ended_is_compared_as_partial_and_the_gate_does_not_judge_it(
    slow_flushing_daemon: DaemonProcess,
) -> None:
    """B's stages so far are compared, said to be partial (text and --json), and the gate exits 2
    (neither a pass nor a regression). The gate run as soon as B's pipeline has ended (before the
    daemon's flush wrote its end) waits for the end and judges it."""
    daemon = slow_flushing_daemon
    first = timed_run(daemon.home, seed=1, frames=20)
    rows_stored(daemon, first, "runs", 1)
    no_wait = ("--wait", "0")
    with held_run(daemon.home, seed=2, frames=20, infer_factor=1.5) as (running, process):
        rows_stored(daemon, running, "stage_executions", 40)
        found = compared(daemon.home, first, running, *no_wait)
        assert found["partial"] is True and found["b"]["partial"] is True and found["a"]["partial"] is False
        assert found["b"]["status"] == "running" and found["regressed"] is None  # not judged, not a pass
        assert any("has not ended" in warning and "partial" in warning for warning in found["warnings"])
        assert {s["stage"] for s in found["stages"]} == {"decode", "infer"}  # its figures so far
        text = stagewatch_cli(daemon.home, first, running, *no_wait)
        assert text.returncode == 0 and text.stdout.startswith("WARNING: B (run ")
        assert "NOT JUDGED" in text.stdout and "no regression" not in text.stdout
        assert "REGRESSED" not in text.stdout.splitlines()[-1] and "  REGRESSED" not in text.stdout  # no row either
        for extra in ([], ["--json"]):
            gate = stagewatch_cli(daemon.home, first, running, "--fail-on-regression", *no_wait, *extra)
            assert gate.returncode == 2, (gate.stdout, gate.stderr)
            assert "not judged" in gate.stderr and "regression: infer" not in gate.stderr
        process.stdin.write("end\n")
        process.stdin.flush()
        assert process.wait(60) == 0, process.stderr.read()
    gate = stagewatch_cli(daemon.home, first, running, "--fail-on-regression", "--json")
    assert gate.returncode == 1, (gate.stdout, gate.stderr)
    ended = json.loads(gate.stdout)
    assert ended["partial"] is False and ended["warnings"] == [] and ended["regressed"] is True


def test_a_running_run_is_compared_with_the_runs_before_it_as_partial(daemon: DaemonProcess) -> None:
    """A run the daemon lists as running (status.json's active_runs; its stages in
    stage_executions, its end not sent): `compare B` (the run before it), `--baseline last:N` and a
    window find its baseline by the start its audit trail records (they said "not in the runs
    table yet", exit 2), as `compare A B` does: its figures so far, partial, not judged, and the
    gate exits 2. Once it has ended, the same command judges it."""
    first = timed_run(daemon.home, seed=1, frames=20)
    rows_stored(daemon, first, "runs", 1)
    with held_run(daemon.home, seed=2, frames=20, infer_factor=1.5) as (running, process):
        rows_stored(daemon, running, "stage_executions", 40)
        wait_for(lambda: running in [run["run_id"] for run in active_runs(daemon.home)], 20)
        for args in ([first, running], [running], [running, "--baseline", "last:5"], [running, "--baseline", "1h"]):
            found = compared(daemon.home, *args, "--wait", "0")
            assert found["a"]["runs"] == [first] and found["b"]["runs"] == [running], args
            assert found["partial"] is True and found["b"]["partial"] is True and found["b"]["status"] == "running"
            assert found["regressed"] is None and "has not ended" in found["not_judged"], args
            assert {s["stage"] for s in found["stages"]} == {"decode", "infer"}  # its figures so far
            text = stagewatch_cli(daemon.home, *args, "--wait", "0")
            assert text.returncode == 0 and text.stdout.splitlines()[-1].startswith("NOT JUDGED"), text.stderr
            gate = stagewatch_cli(daemon.home, *args, "--fail-on-regression", "--wait", "0")
            assert gate.returncode == 2 and "not judged" in gate.stderr, (args, gate.stderr)
        process.stdin.write("end\n")
        process.stdin.flush()
        assert process.wait(60) == 0, process.stderr.read()
    ended = stagewatch_cli(daemon.home, running, "--fail-on-regression", "--json")  # waits for the end's row
    assert ended.returncode == 1, (ended.stdout, ended.stderr)
    assert json.loads(ended.stdout)["partial"] is False and "infer" in ended.stderr


def test_a_stage_of_one_run_only_is_listed_and_a_vanished_one_fails_the_gate(daemon: DaemonProcess) -> None:
    with_tracking = {"decode": 20, "track": 10, "infer": 40}
    first = timed_run(daemon.home, seed=1, frames=20, stages=with_tracking)
    second = timed_run(daemon.home, seed=2, frames=20)  # the same, without its track stage
    rows_stored(daemon, first, "stage_executions", 60)
    rows_stored(daemon, second, "stage_executions", 40)

    found = compared(daemon.home, first, second)
    stages = {s["stage"]: s for s in found["stages"]}
    assert list(stages) == ["decode", "infer", "track"]  # B's order, then A's own
    track = stages["track"]
    assert track["only_in"] == "a" and track["executions"] == {"a": 20, "b": 0} and track["regressed"]
    assert track["median_ms"]["a"] == pytest.approx(10, rel=0.5) and track["median_ms"]["b"] is None
    assert track["reasons"] == ["only in A (20 executions): it did not run in B"]
    assert stages["decode"]["only_in"] is None and not stages["decode"]["regressed"]
    gate = stagewatch_cli(daemon.home, first, second, "--fail-on-regression")
    assert gate.returncode == 1 and "regression: track: only in A" in gate.stderr
    assert "only in A" in gate.stdout and "decode" not in gate.stderr

    back = compared(daemon.home, second, first)  # a new stage is listed, not a regression
    (new,) = [s for s in back["stages"] if s["stage"] == "track"]
    assert new["only_in"] == "b" and not new["regressed"]
    assert new["reasons"] == ["only in B (20 executions): a new stage"]
    assert new["median_ms"]["b"] is not None
    assert stagewatch_cli(daemon.home, second, first, "--fail-on-regression").returncode == 0


def test_runs_of_two_pipelines_are_compared_with_a_warning_and_baselines_keep_to_one(daemon: DaemonProcess) -> None:
    """Runs of another pipeline between those of one: a baseline of the run before, last:N or a
    window pools only B's pipeline; A and B named of two pipelines say so on top."""
    runs = []
    for seed, pipeline in enumerate(("timed", "other", "timed", "other", "timed")):
        runs.append((timed_run(daemon.home, seed=seed, frames=10, pipeline=pipeline), pipeline))
    for run_id, _ in runs:
        rows_stored(daemon, run_id, "runs", 1)
    timed = [run_id for run_id, pipeline in runs if pipeline == "timed"]
    target = timed[-1]
    assert compared(daemon.home, target)["a"]["runs"] == [timed[1]]  # not the other pipeline's run between
    for spec in ("last:10", "24h"):  # "24h" is no run id's prefix; "7d" may be (a random id)
        found = compared(daemon.home, target, "--baseline", spec)
        assert found["a"]["runs"] == timed[:2] and found["a"]["pipeline"] == "timed", spec
        assert found["warnings"] == []

    other = runs[3][0]
    found = compared(daemon.home, other, target)
    assert found["a"]["pipeline"] == "other" and found["b"]["pipeline"] == "timed"
    (warning,) = found["warnings"]
    assert "different pipelines (other and timed)" in warning
    text = stagewatch_cli(daemon.home, other, target)
    assert text.returncode == 0 and text.stdout.splitlines()[0] == f"WARNING: {warning}"


def test_own_memory_is_labelled_median_and_its_largest_is_shown_beside_it(daemon: DaemonProcess) -> None:
    first = timed_run(daemon.home, seed=1, frames=10)
    second = timed_run(daemon.home, seed=2, frames=10)
    for run_id in (first, second):
        rows_stored(daemon, run_id, "stage_executions", 20)
    found = compared(daemon.home, first, second)
    stages = read_table(daemon.home, "stage_executions").to_pandas()
    stages = stages[(stages["run_id"] == first) & (stages["stage"] == "infer")]
    own = stages["rss_peak_mb"] - stages["rss_start_mb"]
    (infer,) = [s for s in found["stages"] if s["stage"] == "infer"]
    assert infer["own_memory_mb"]["a"] == pytest.approx(own.median())
    assert infer["own_memory_mb"]["max"]["a"] == pytest.approx(own.max())  # the figure of stats and the Run page
    text = stagewatch_cli(daemon.home, first, second).stdout
    assert "own MB (median)" in text and "own MB (max)" in text and "own MB, median" not in text
    assert "as `stats` and the Run page show it" in text


CAUGHT_FAILURE = """
import stagewatch
run = stagewatch.init(pipeline="caught", home={home!r})
for frame in range(5):
    try:
        with run.stage("decode", sample_id=f"f{{frame}}"):
            if frame == 2:
                raise ValueError("a bad frame")
    except ValueError:
        pass
run.finish()
assert run.flush(10), "the daemon did not acknowledge the run"
print(run.id)
"""


def test_runs_that_finished_with_failures_are_a_baseline(daemon: DaemonProcess) -> None:
    """A run that caught a stage's exception and went on to its end (the demo's frame 47) is a
    finished run: the run before B, `last:N` and a window pool it."""
    runs = []
    for _ in range(2):
        result = run_python(CAUGHT_FAILURE.format(home=str(daemon.home)))
        assert result.returncode == 0, result.stderr
        runs.append(result.stdout.split()[-1])
    for run_id in runs:
        rows_stored(daemon, run_id, "runs", 1)
    statuses = dict(zip(*(read_table(daemon.home, "runs")[c].to_pylist() for c in ("run_id", "status")), strict=True))
    assert [statuses[run_id] for run_id in runs] == ["finished_with_failures"] * 2
    assert compared(daemon.home, runs[-1])["a"]["runs"] == runs[:1]
    assert compared(daemon.home, runs[-1], "--baseline", "last:5")["a"]["runs"] == runs[:1]
    gate = stagewatch_cli(daemon.home, runs[-1], "--baseline", "24h", "--fail-on-regression")  # never a run id
    assert gate.returncode in (0, 1), gate.stderr  # judged, not refused (2)
    text = stagewatch_cli(daemon.home, runs[-1]).stdout
    assert "finished with failures" in text and "finished_with_failures" not in text  # the words of every page
    assert "20.0%->20.0%" in text  # its failure rate as stats writes it (1 in 1,500 is 0.1%, not 0%)


def detection_prediction(index: int, wrong: set[int]) -> dict[str, Any]:
    labels = scene(index)
    boxes = [box for _, box in labels["boxes"]]
    names = ["car" if kind == 1 else "pedestrian" for kind, _ in labels["boxes"]]
    if index in wrong:  # one object missed: judged wrong
        return {"boxes": boxes[:1], "scores": [0.9], "labels": names[:1]}
    return {"boxes": boxes, "scores": [0.9, 0.8], "labels": names}


def judged_run(daemon: DaemonProcess, dataset: Path, wrong: set[int], samples: int) -> str:
    import stagewatch

    with stagewatch.init(pipeline="golden", home=daemon.home, dataset=dataset) as run:
        for index in range(samples):
            sample = f"s{index:04d}"
            with run.stage("detection", sample_id=sample) as stage:
                stage.result(sample, detection_prediction(index, wrong))
    assert run.flush(10)
    rows_stored(daemon, run.id, "samples", samples)
    return run.id


def test_the_flip_list_holds_exactly_the_samples_b_got_wrong(daemon: DaemonProcess) -> None:
    dataset = write_dataset(daemon.home.parent / "golden", 8)
    before = judged_run(daemon, dataset, {3}, 8)
    after = judged_run(daemon, dataset, {3, 1, 6}, 8)
    found = compared(daemon.home, before, after)
    assert found["flips"] == [
        {"stage": "detection", "sample_id": "s0001", "from": "correct", "to": "wrong"},
        {"stage": "detection", "sample_id": "s0006", "from": "correct", "to": "wrong"},
    ]
    (accuracy,) = found["accuracy"]
    assert accuracy["a"] == pytest.approx(7 / 8) and accuracy["b"] == pytest.approx(5 / 8)
    # the detector's figures as each run's accuracy.json holds them (pycocotools' in its tests)
    judged = {
        side: load_accuracy(daemon.home, run)["stages"]["detection"]["metrics"]
        for side, run in (("a", before), ("b", after))
    }
    for side, metrics in judged.items():
        assert accuracy["metrics"]["mAP"][side] == metrics["coco"]["AP"]
        assert accuracy["metrics"]["recall"][side] == metrics["recall"]
        for name, figures in metrics["per_class"].items():
            assert accuracy["per_class"]["AP"][name][side] == figures["AP"]
    assert accuracy["metrics"]["recall"]["b"] < accuracy["metrics"]["recall"]["a"]  # B missed two more boxes
    said = stagewatch_cli(daemon.home, before, after).stdout
    assert re.search(r"recall [0-9.]+->[0-9.]+", said) and "AP per class: car" in said, said
    back = compared(daemon.home, after, before)
    assert {(f["sample_id"], f["from"], f["to"]) for f in back["flips"]} == {
        ("s0001", "wrong", "correct"),
        ("s0006", "wrong", "correct"),
    }


def test_the_gate_fails_on_a_significant_fall_of_accuracy_without_being_asked(daemon: DaemonProcess) -> None:
    """--fail-on-regression alone gates on accuracy: a fall that is significant (two-proportion
    z-test) and larger than the default 2 points fails; one within the samples' noise passes;
    the gate's accuracy rule is printed and in --json, settable, and --accuracy-drop off ends it."""
    dataset = write_dataset(daemon.home.parent / "golden", 60)
    before = judged_run(daemon, dataset, set(), 60)
    slightly = judged_run(daemon, dataset, {5, 9}, 60)  # 100% -> 96.7%: more than 2 points, p ~ 0.15
    worse = judged_run(daemon, dataset, set(range(0, 60, 6)), 60)  # 100% -> 83.3%: p < 0.01
    gated = stagewatch_cli(daemon.home, before, worse, "--fail-on-regression")
    assert gated.returncode == 1, gated.stderr
    assert "detection: accuracy 100.0% -> 83.3%" in gated.stderr
    assert "accuracy gate: " in gated.stdout and "2.0 points" in gated.stdout
    document = json.loads(stagewatch_cli(daemon.home, before, worse, "--json").stdout)
    assert document["accuracy_drop"] == pytest.approx(0.02) and document["regressed"] is True
    (entry,) = document["accuracy"]
    assert entry["judged"] == {"a": 60, "b": 60} and entry["correct"] == {"a": 60, "b": 50}
    assert entry["significant"] and entry["fell"] and entry["p_value"] < 0.01
    noise = stagewatch_cli(daemon.home, before, slightly, "--fail-on-regression", "--json")
    assert noise.returncode == 0, noise.stderr
    (entry,) = json.loads(noise.stdout)["accuracy"]
    assert entry["change"] < -0.02 and not entry["significant"] and not entry["fell"]
    off = stagewatch_cli(daemon.home, before, worse, "--fail-on-regression", "--accuracy-drop", "off", "--json")
    assert off.returncode == 0 and json.loads(off.stdout)["accuracy_drop"] is None
    assert "accuracy gate: off" in stagewatch_cli(daemon.home, before, worse, "--accuracy-drop", "off").stdout
    assert stagewatch_cli(daemon.home, before, worse, "--fail-on-regression", "--accuracy-drop", "20%").returncode == 0
    assert stagewatch_cli(daemon.home, before, worse, "--fail-on-regression", "--accuracy-drop", "10%").returncode == 1
    assert stagewatch_cli(daemon.home, before, worse, "--accuracy-drop", "offf").returncode == 2


def test_samples_that_became_wrong_on_one_golden_set_are_judged_as_pairs(daemon: DaemonProcess) -> None:
    """Both runs judged the same 60 samples: 10 went from correct to wrong and none back, at 50%
    accuracy. Two shares of 60 (30 -> 20) are within a z-test's noise at 99% (p ~ 0.064), but ten
    samples all changing the same way is not chance: McNemar's exact test (scipy's binomtest of
    the changed samples) calls it (p ~ 0.002) and the gate fails. A run that judged fewer
    samples (cut short, or a stage crashed before a result) is tested on the samples both judged:
    it fell back to the shares' z-test, and a B strictly worse plus one sample not judged passed."""
    dataset = write_dataset(daemon.home.parent / "golden", 60)
    half_wrong = set(range(0, 60, 2))
    before = judged_run(daemon, dataset, half_wrong, 60)
    after = judged_run(daemon, dataset, half_wrong | set(range(1, 20, 2)), 60)
    gated = stagewatch_cli(daemon.home, before, after, "--fail-on-regression", "--json")
    assert gated.returncode == 1, gated.stderr
    (entry,) = json.loads(gated.stdout)["accuracy"]
    assert entry["test"] == "McNemar" and (entry["worse"], entry["better"]) == (10, 0)
    assert entry["p_value"] == pytest.approx(scipy.stats.binomtest(0, 10, 0.5).pvalue, rel=1e-9)
    assert entry["significant"] and entry["fell"]
    assert "McNemar p=0.002" in stagewatch_cli(daemon.home, before, after).stdout
    short = judged_run(daemon, dataset, half_wrong | set(range(1, 20, 2)), 40)
    gated = stagewatch_cli(daemon.home, before, short, "--fail-on-regression", "--json")
    assert gated.returncode == 1, gated.stderr
    (entry,) = json.loads(gated.stdout)["accuracy"]
    assert entry["test"] == "McNemar" and (entry["worse"], entry["better"], entry["paired"]) == (10, 0, 40)
    assert entry["judged"] == {"a": 60, "b": 40} and entry["fell"]


def test_a_share_that_fell_while_its_paired_samples_got_better_is_no_fall(daemon: DaemonProcess) -> None:
    """A judged 60 samples, the first 30 wrong; B stopped after the first 30 and got 10 of them
    right. B's share is lower (50% -> 33%: it judged only the hard ones), yet every sample both
    judged moved up (10 better, none worse: McNemar p ~ 0.002). That p is no significant fall:
    the gate passes."""
    dataset = write_dataset(daemon.home.parent / "golden", 60)
    before = judged_run(daemon, dataset, set(range(30)), 60)
    after = judged_run(daemon, dataset, set(range(10, 30)), 30)
    gated = stagewatch_cli(daemon.home, before, after, "--fail-on-regression", "--json")
    assert gated.returncode == 0, gated.stdout[-2000:]
    (entry,) = json.loads(gated.stdout)["accuracy"]
    assert (entry["worse"], entry["better"]) == (0, 10) and entry["change"] < -0.1
    assert entry["p_value"] < 0.01 and not entry["significant"] and not entry["fell"]


def test_the_gate_line_and_the_help_name_the_test_that_called_the_fall(daemon: DaemonProcess) -> None:
    """The accuracy line says "McNemar p=0.002"; the gate's REGRESSED line said only "p=0.002"
    (which test: not said), and `compare --help` still said the gate's test was the z-test."""
    dataset = write_dataset(daemon.home.parent / "golden", 60)
    half_wrong = set(range(0, 60, 2))
    before = judged_run(daemon, dataset, half_wrong, 60)
    after = judged_run(daemon, dataset, half_wrong | set(range(1, 20, 2)), 60)
    gated = stagewatch_cli(daemon.home, before, after, "--fail-on-regression")
    assert gated.returncode == 1, gated.stderr
    (line,) = [line for line in gated.stdout.splitlines() if line.startswith("REGRESSED: detection: accuracy")]
    assert line.endswith("more than the 2.0 allowed, McNemar p=0.002)"), line
    helped = [sys.executable, "-m", "stagewatch.cli", "compare", "--help"]
    shown = subprocess.run(helped, capture_output=True, text=True, timeout=60)
    assert "McNemar" in " ".join(shown.stdout.split()), shown.stdout


def test_a_pooled_baseline_counts_each_golden_sample_once(daemon: DaemonProcess) -> None:
    """Three runs of one golden set of 60, all correct, then B with 3 wrong. Against the last run
    alone it is within the noise (McNemar p=0.25); against the last 3 pooled, the z-test counted
    180 samples where there are 60 (each judged three times: the same evidence thrice) and the
    gate failed (p=0.0025). Each sample counts once: the z-test of 60/60 against 57/60."""
    dataset = write_dataset(daemon.home.parent / "golden", 60)
    for _ in range(3):
        judged_run(daemon, dataset, set(), 60)
    after = judged_run(daemon, dataset, {0, 1, 2}, 60)
    for baseline in ("last:1", "last:3"):
        gated = stagewatch_cli(daemon.home, after, "--baseline", baseline, "--fail-on-regression", "--json")
        assert gated.returncode == 0, (baseline, gated.stdout[-2000:])
    (entry,) = compared(daemon.home, after, "--baseline", "last:3")["accuracy"]
    assert entry["test"] == "two-proportion z-test" and entry["judged"] == {"a": 180, "b": 60}
    assert entry["p_value"] == pytest.approx(two_proportions_p(60, 60, 57, 60), rel=1e-9)
    assert not entry["significant"] and not entry["fell"]


def test_the_paired_test_agrees_with_scipy() -> None:
    for worse, better in ((2, 0), (10, 0), (7, 3), (30, 12), (0, 9), (400, 350), (5000, 4800), (3, 4), (0, 0)):
        reference = scipy.stats.binomtest(min(worse, better), worse + better, 0.5).pvalue if worse + better else 1.0
        assert mcnemar_p(worse, better) == pytest.approx(reference, rel=1e-9)


def failing_judged_run(daemon: DaemonProcess, dataset: Path) -> str:
    """A judged run of 8 samples: s0001's stage raises before its result, s0002's just after it
    (its result was right), s0005's result is wrong."""
    import stagewatch

    with stagewatch.init(pipeline="golden", home=daemon.home, dataset=dataset) as run:
        for index in range(8):
            sample = f"s{index:04d}"
            with contextlib.suppress(RuntimeError), run.stage("detection", sample_id=sample) as stage:
                if index == 1:
                    raise RuntimeError("before its result")
                stage.result(sample, detection_prediction(index, {5}))
                if index == 2:
                    raise RuntimeError("after its result")
    assert run.flush(10)
    rows_stored(daemon, run.id, "samples", 7)
    return run.id


def test_accuracy_says_a_fall_within_the_noise_and_counts_as_show_does(daemon: DaemonProcess) -> None:
    """100% -> 75% on 8 golden samples is no significant fall: the accuracy line says so, with p
    (it gave the figures alone). A sample whose stage failed before its result is judged on
    neither side (not counted wrong) and is a flip to `failed`; one that failed after it keeps
    its judgement, in the shares and in the flips alike (correct on both sides: no flip; its
    failure is the stage's failure rate): compare's counts are accuracy.json's, as `stagewatch
    show` prints them."""
    dataset = write_dataset(daemon.home.parent / "golden", 8)
    before = judged_run(daemon, dataset, set(), 8)
    after = judged_run(daemon, dataset, {1, 2}, 8)
    text = stagewatch_cli(daemon.home, before, after).stdout
    (line,) = [line for line in text.splitlines() if line.startswith("  detection: 100.0% -> 75.0% (8/8 -> 6/8)")]
    assert line.endswith("fell 25.0 points, not significant (McNemar p=0.5): within the samples' noise"), line

    failing = failing_judged_run(daemon, dataset)
    accuracy = wait_for(lambda: (found := load_accuracy(daemon.home, failing)) and found.get("finished") and found)
    counts = accuracy["stages"]["detection"]["counts"]
    document = compared(daemon.home, before, failing)
    (entry,) = document["accuracy"]
    assert entry["correct"]["b"] == counts["correct"] == 6
    assert entry["judged"]["b"] == counts["correct"] + counts["wrong"] + counts["invalid"] == 7
    assert {(f["sample_id"], f["to"]) for f in document["flips"]} == {("s0001", "failed"), ("s0005", "wrong")}
    assert document["stages"][0]["failure_rate"]["b"] == pytest.approx(2 / 8)  # s0001 and s0002
    show = sw("show", failing, "--home", str(daemon.home))
    assert re.search(r"detection\s+6\s+1\s+0\s+0\s", show.stdout), show.stdout


def judged_then_failed_run(daemon: DaemonProcess, dataset: Path, wrong: set[int], rerun: set[int]) -> str:
    """A judged run of the 8 golden samples (those in `wrong` judged wrong) that then runs the
    samples in `rerun` again, each of those later executions failing before its result."""
    import stagewatch

    with stagewatch.init(pipeline="golden", home=daemon.home, dataset=dataset) as run:
        for index in range(8):
            with run.stage("detection", sample_id=f"s{index:04d}") as stage:
                stage.result(f"s{index:04d}", detection_prediction(index, wrong))
        for index in sorted(rerun):
            with contextlib.suppress(RuntimeError), run.stage("detection", sample_id=f"s{index:04d}"):
                raise RuntimeError("the second try failed")
    assert run.flush(10)
    rows_stored(daemon, run.id, "samples", 8)
    return run.id


def unjudged_run(daemon: DaemonProcess) -> str:
    """A run of the golden pipeline's 8 samples with no golden set: each ran ok, none judged."""
    import stagewatch

    with stagewatch.init(pipeline="golden", home=daemon.home) as run:
        for index in range(8):
            with run.stage("detection", sample_id=f"s{index:04d}"):
                pass
    assert run.flush(10)
    return run.id


def test_a_sample_judged_then_run_again_and_failed_keeps_its_judgement_in_its_flip_and_its_accuracy(
    daemon: DaemonProcess,
) -> None:
    """B judged s0003 correct (wrong in A) and s0005 wrong (correct in A), then ran both again
    and those executions failed. Their verdicts in B are their judgements, in the flips as in the
    accuracy (the flips said `failed` while the shares counted the judgements): flips wrong ->
    correct and correct -> wrong, B 7/8 as accuracy.json counts it, McNemar one worse and one
    better of 8 paired; the two failures are the stage's failure rate. A pooled baseline reads
    each run's verdicts the same way."""
    dataset = write_dataset(daemon.home.parent / "golden", 8)
    before = judged_run(daemon, dataset, {3}, 8)
    after = judged_then_failed_run(daemon, dataset, {5}, {3, 5})
    document = compared(daemon.home, before, after)
    assert {(f["sample_id"], f["from"], f["to"]) for f in document["flips"]} == {
        ("s0003", "wrong", "correct"),
        ("s0005", "correct", "wrong"),
    }
    (entry,) = document["accuracy"]
    accuracy = wait_for(lambda: (found := load_accuracy(daemon.home, after)) and found["stages"].get("detection"))
    counts = accuracy["counts"]
    assert entry["judged"] == {"a": 8, "b": 8} and entry["correct"] == {"a": 7, "b": 7} and counts["correct"] == 7
    assert entry["test"] == "McNemar" and (entry["worse"], entry["better"], entry["paired"]) == (1, 1, 8)
    (stage,) = document["stages"]
    assert stage["executions"] == {"a": 8, "b": 10} and stage["failure_rate"]["b"] == pytest.approx(2 / 10)
    text = stagewatch_cli(daemon.home, before, after).stdout
    assert "  detection: 87.5% -> 87.5% (7/8 -> 7/8)" in text, text

    unjudged_run(daemon)
    target = judged_run(daemon, dataset, set(), 8)
    document = compared(daemon.home, target, "--baseline", "last:2")  # B, then the unjudged run
    (entry,) = document["accuracy"]
    assert entry["judged"] == {"a": 8, "b": 8} and entry["correct"] == {"a": 7, "b": 8}
    # The unjudged run ran every sample ok: the side's verdicts are B's judgements.
    assert [(f["sample_id"], f["from"], f["to"]) for f in document["flips"]] == [("s0005", "wrong", "correct")]
    document = compared(daemon.home, target, "--baseline", "last:3")  # A, B, the unjudged run
    (entry,) = document["accuracy"]
    assert entry["judged"] == {"a": 16, "b": 8} and entry["correct"] == {"a": 14, "b": 8}
    assert entry["p_value"] == pytest.approx(two_proportions_p(7, 8, 8, 8), rel=1e-9)  # each sample once
    assert [(f["sample_id"], f["from"], f["to"]) for f in document["flips"]] == [("s0005", "wrong", "correct")]


def test_the_case_behind_a_pooled_side_s_verdict_is_found_however_old_its_run(daemon: DaemonProcess) -> None:
    """A pool of 60 runs whose only judgement of the samples is in its oldest run (the 59 newer
    ran them ok with no golden set): the side's verdict is that judgement, and `verdict_run` (what
    the Compare page opens a flip's case by) finds that run; the page searched the newest 50."""
    from stagewatch.daemon.compare._compare import verdict_run

    dataset = write_dataset(daemon.home.parent / "golden", 8)
    runs = [judged_run(daemon, dataset, {3}, 8), *(unjudged_run(daemon) for _ in range(59))]
    wait_for(lambda: runs[-1] in read_table(daemon.home, "runs")["run_id"].to_pylist() or None)
    target = judged_run(daemon, dataset, set(), 8)
    document = compared(daemon.home, target, "--baseline", "last:60")
    assert [(f["sample_id"], f["from"], f["to"]) for f in document["flips"]] == [("s0003", "wrong", "correct")]
    assert verdict_run(daemon.home, runs, "detection", "s0003") == runs[0]
    assert verdict_run(daemon.home, runs[1:], "detection", "s0004") == runs[-1]  # no judgement: the newest ok
    assert verdict_run(daemon.home, runs, "detection", "s9999") is None


def test_compare_says_when_a_run_s_pipeline_clock_was_off(daemon: DaemonProcess) -> None:
    """A board that booted in 1970: its stage times (monotonic) compare as they are, but which
    runs came before it is read from start times on the pipelines' clocks: compare says so,
    in the text, in --json (`clock_skew`) and in the error of a baseline it could not find."""
    first = run_pipeline(daemon.home)
    healthy = run_pipeline(daemon.home)
    skewed = run_pipeline(daemon.home, clock_ns=BOOTED_IN_1970)
    daemon.audit(skewed)
    found = compared(daemon.home, first, skewed)
    (skew,) = found["clock_skew"]
    assert skew["side"] == "B" and skew["run_id"] == skewed and skew["offset_s"] < 0
    (warning,) = [w for w in found["warnings"] if "clock" in w]
    assert "years behind the daemon's" in warning and "monotonic" in warning
    assert "WARNING: B (run " in stagewatch_cli(daemon.home, first, skewed).stdout
    reversed_sides = compared(daemon.home, skewed, healthy)
    assert [s["side"] for s in reversed_sides["clock_skew"]] == ["A"]
    alone = stagewatch_cli(daemon.home, skewed)  # the run before it, by a start time in 1970: none
    assert alone.returncode == 2 and "years behind the daemon's" in alone.stderr, alone.stderr
    assert compared(daemon.home, first, healthy)["clock_skew"] == []


def test_every_skewed_run_of_a_pooled_baseline_is_warned_of_in_one_warning(daemon: DaemonProcess) -> None:
    """`--baseline last:3` pools two runs of a board that booted in 1970 and a healthy newest one:
    both skewed runs are said (only the newest was looked at: nothing was said), in one warning
    that names how many and which, and each is in --json's `clock_skew`."""
    skewed = [run_pipeline(daemon.home, clock_ns=BOOTED_IN_1970) for _ in range(2)]
    healthy = [run_pipeline(daemon.home) for _ in range(2)]
    for run_id in (*skewed, *healthy):
        daemon.audit(run_id)
        rows_stored(daemon, run_id, "runs", 1)
    found = compared(daemon.home, healthy[-1], "--baseline", "last:3")
    assert sorted(found["a"]["runs"]) == sorted([*skewed, healthy[0]])
    assert sorted((s["side"], s["run_id"]) for s in found["clock_skew"]) == sorted(("A", r) for r in skewed)
    (warning,) = [w for w in found["warnings"] if "clock" in w]
    assert warning.startswith("A: 2 of its 3 runs") and all(run_id[:8] in warning for run_id in skewed)
    assert "years behind the daemon's" in warning
    text = stagewatch_cli(daemon.home, healthy[-1], "--baseline", "last:3").stdout
    assert text.count("WARNING: A: 2 of its 3 runs") == 1 and text.count("clock") == warning.count("clock")


def judged_runs_in_a_damaged_file(daemon: DaemonProcess) -> tuple[str, str, str]:
    """Two judged runs of 8 samples (B gets s0001 and s0006 wrong too), the daemon stopped and
    the data file holding B's verdicts (the samples table's) damaged: (A, B, the damaged file)."""
    dataset = write_dataset(daemon.home.parent / "golden", 8)
    before = judged_run(daemon, dataset, {3}, 8)
    after = judged_run(daemon, dataset, {3, 1, 6}, 8)
    daemon.stop()
    return before, after, damage_the_file_holding(daemon.home, "samples", after)


def test_flips_over_left_out_verdicts_are_not_judged(daemon: DaemonProcess) -> None:
    """B's verdicts in a damaged file: its samples read as merely run ("ok"), each a flip from
    A's verdict that B never had. The flips are said to be not judged, and why (text and --json)."""
    before, after, holding = judged_runs_in_a_damaged_file(daemon)
    document = json.loads(stagewatch_cli(daemon.home, before, after, "--json").stdout)
    assert document["flips"] is None
    assert document["flips_not_judged"] == {
        "reason": "rows were left out for 1 damaged data file(s)",
        "skipped_files": [holding],
    }
    as_text = stagewatch_cli(daemon.home, before, after)
    assert as_text.returncode == 0, as_text.stderr
    flips = as_text.stdout.split("\nflips (verdict changed): ", 1)[1].splitlines()
    assert flips[0].startswith("NOT JUDGED: rows were left out for 1 damaged data file(s)") and holding in flips[0]
    assert " -> " not in flips[1]  # no flip listed


def test_the_run_start_records_its_environment(daemon: DaemonProcess) -> None:
    run_id = timed_run(daemon.home, seed=1, frames=1)
    environment = daemon.audit(run_id)["environment"]
    assert environment["python"] == ".".join(map(str, sys.version_info[:3]))
    assert environment["packages"]["numpy"] == np.__version__
    assert "torch" not in environment["packages"] or environment["packages"]["torch"]


def test_a_damaged_audit_head_leaves_config_and_environment_not_known_not_changed(daemon: DaemonProcess) -> None:
    """B's audit.json cut short (a bad block, a copy): its config and environment cannot be read;
    compared anyway, every key read as changed to None (a false 'environment: 10 changed')."""
    first, second = run_pipeline(daemon.home), run_pipeline(daemon.home)
    daemon.audit(second)
    assert compared(daemon.home, first, second)["environment"] == []
    head = DaemonHome(daemon.home).audit(second)
    head.write_bytes(head.read_bytes()[:100])
    found = compared(daemon.home, first, second)
    assert found["config"] is None and found["environment"] is None
    (warning,) = [w for w in found["warnings"] if "not known" in w]
    assert warning.startswith("B's config and environment are not known") and "damaged" in warning
    assert "environment: not known" in stagewatch_cli(daemon.home, first, second).stdout


# -- the statistics against their reference -------------------------------------------------------


def test_the_rank_test_and_the_rate_test_agree_with_scipy() -> None:
    rng = np.random.default_rng(7)
    for n1, n2, shift in ((8, 11, 0.0), (40, 60, 0.3), (200, 150, 0.1), (30, 30, 2.0)):
        a = np.round(rng.lognormal(0, 0.5, n1), 1)  # rounded: ties, as timer readings have
        b = np.round(rng.lognormal(shift, 0.5, n2), 1)
        reference = scipy.stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic").pvalue
        assert mann_whitney_p(a, b) == pytest.approx(reference, rel=1e-9, abs=1e-300)
    for hits in ((0, 50, 5, 50), (3, 40, 4, 45), (10, 100, 30, 90)):
        table = [[hits[0], hits[1] - hits[0]], [hits[2], hits[3] - hits[2]]]
        reference = scipy.stats.chi2_contingency(table, correction=False).pvalue  # = the pooled z-test
        assert two_proportions_p(*hits) == pytest.approx(reference, rel=1e-9)


def test_the_bootstrap_interval_agrees_with_scipy() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(3, 0.3, 80), rng.lognormal(3.1, 0.3, 90)
    for q in (0.5, 0.95):

        def difference(x: np.ndarray, y: np.ndarray, axis: int = -1, q: float = q) -> np.ndarray:
            return np.quantile(y, q, axis=axis) - np.quantile(x, q, axis=axis)

        reference = scipy.stats.bootstrap(
            (a, b), difference, method="percentile", confidence_level=0.99, n_resamples=20000, random_state=1
        ).confidence_interval
        low, high = bootstrap_interval(a, b, q, 0.99)
        width = reference.high - reference.low
        assert low == pytest.approx(reference.low, abs=0.12 * width)
        assert high == pytest.approx(reference.high, abs=0.12 * width)


def test_the_change_point_test_needs_a_persistent_shift_and_names_where_it_began() -> None:
    rng = np.random.default_rng(11)
    steady = 20 * np.exp(rng.normal(0, 0.01, 40))
    assert detect(steady) == []
    spikes = steady.copy()
    spikes[[15, 25, 26]] *= 3  # one run, then two in a row, on a busy machine: no regression
    assert detect(spikes) == []
    small = steady.copy()
    small[30:] *= 1.03  # significant, but under the practical threshold
    assert detect(small) == []
    stepped = steady.copy()
    stepped[30:] *= 1.10
    (found,) = detect(stepped)
    assert found.start == 30 and found.found <= 32
    assert found.after / found.before == pytest.approx(1.10, abs=0.02)


def test_a_step_is_called_on_its_third_run_though_high_runs_before_it_started_the_sum() -> None:
    """Runs a little high before the step start the sum; the level the step reached is measured
    from where it began, not over those runs too (which put it under the threshold, so the call
    waited three more runs)."""
    history = np.full(40, 20.0)
    history[::2] *= 1.005  # timer noise: a steady history
    history[[28, 29]] *= 1.025  # high, not a shift (2.5 robust sd each)
    history[30:] *= 1.10
    (found,) = detect(history)
    assert found.start == 30 and found.found <= 32
    assert found.after / found.before == pytest.approx(1.10, abs=0.02)


def test_a_sub_millisecond_stage_that_doubles_is_no_regression_a_slower_real_one_is() -> None:
    """A stage of a tenth of a millisecond moves by as much when the scheduler looks away: a
    change under MIN_TIME_MS is not called out, however significant; the same ratio on a stage
    of ten milliseconds is."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from stagewatch.daemon.compare._compare import Options, stage_figures

    def rows(durations: dict[str, float]) -> pa.Table:
        rng = np.random.default_rng(3)
        records = [
            {
                "stage": stage,
                "status": "ok",
                "start_time": datetime(2026, 12, 6, tzinfo=UTC),
                "duration_ms": ms * (1 + 0.01 * rng.standard_normal()),
                "rss_peak_mb": 100.0,
                "rss_start_mb": 100.0,
                "gpu_peak_mb": 0.0,
            }
            for stage, ms in durations.items()
            for _ in range(200)
        ]
        return pa.Table.from_pylist(records)

    figures = stage_figures(rows({"tiny": 0.12, "real": 10.0}), rows({"tiny": 0.25, "real": 20.8}), Options())
    called = {entry["stage"]: entry["median_ms"]["called_out"] for entry in figures}
    assert called == {"tiny": False, "real": True}
    assert {entry["stage"]: entry["regressed"] for entry in figures} == {"tiny": False, "real": True}


def slower_run_in_a_damaged_file(daemon: DaemonProcess) -> tuple[str, str, str]:
    """Two runs, the second 30% slower at inference, the daemon stopped and the data file
    holding the second's stage rows damaged: (first, slower, the damaged file)."""
    first = timed_run(daemon.home, seed=1)
    slower = timed_run(daemon.home, seed=2, infer_factor=1.3)
    for run_id in (first, slower):
        daemon.audit(run_id)
        rows_stored(daemon, run_id, "stage_executions", 120)
    daemon.stop()
    return first, slower, damage_the_file_holding(daemon.home, "stage_executions", slower)


def damage_the_file_holding(home: Path, table: str, run_id: str) -> str:
    """Damage the data file of `table` that holds rows of `run_id` (the daemon stopped): its path."""
    holding = next(
        path
        for path in snapshot_files(home, table)
        if run_id in pq.read_table(path, columns=["run_id"])["run_id"].to_pylist()
    )
    damage(Path(holding))
    return holding


def test_rows_left_out_for_a_damaged_data_file_are_said_and_the_gate_does_not_judge(daemon: DaemonProcess) -> None:
    """The query layer skips a data file that does not read; compare names it in its warnings
    (text and --json) and the gate neither passes nor fails on the rows it could read (exit 2)."""
    first, slower, holding_b = slower_run_in_a_damaged_file(daemon)

    gated = stagewatch_cli(daemon.home, first, slower, "--fail-on-regression", "--json")
    assert gated.returncode == 2, gated.stderr
    document = json.loads(gated.stdout)
    assert document["skipped_files"] == [holding_b] and document["regressed"] is None
    assert [stage["regressed"] for stage in document["stages"]] == [None] * len(document["stages"])
    assert any(holding_b in warning and "stagewatch rebuild" in warning for warning in document["warnings"])
    assert "not judged" in gated.stderr and "Traceback" not in gated.stderr
    as_text = stagewatch_cli(daemon.home, first, slower)
    assert as_text.returncode == 0, as_text.stderr
    assert "WARNING: " in as_text.stdout and holding_b in as_text.stdout and "NOT JUDGED" in as_text.stdout
    stats = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "stats", "--home", str(daemon.home)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stats.returncode == 0 and stats.stderr.count(f"skipped the damaged data file {holding_b}") == 1  # not 3

    # B's end in a damaged file of the runs table: not "still running?" alone, and no wait for it
    holding_end = next(
        path
        for path in snapshot_files(daemon.home, "runs")
        if slower in pq.read_table(path, columns=["run_id"])["run_id"].to_pylist()
    )
    damage(Path(holding_end))
    baseline = stagewatch_cli(daemon.home, slower, "--baseline", "last:1", "--wait", "0")
    assert baseline.returncode == 2 and holding_end in baseline.stderr.splitlines()[-1], baseline.stderr


def test_a_flip_of_a_sample_id_with_a_line_break_stays_on_its_line(daemon: DaemonProcess) -> None:
    """A stage's sample id is free text: "frame\\n7" ran ok in A and failed in B. The flips'
    list printed it as it is, its rest ("7: ok -> failed") a line of its own; it says
    "frame ⏎ 7" on the flip's one line (--json keeps the id exact)."""
    import stagewatch

    runs = []
    for fails in (False, True):
        with (
            stagewatch.init(pipeline="p", home=daemon.home) as run,
            contextlib.suppress(RuntimeError),
            run.stage("detection", sample_id="frame\n7"),
        ):
            if fails:
                raise RuntimeError("broke")
        daemon.audit(run.id)
        rows_stored(daemon, run.id, "stage_executions", 1)
        runs.append(run.id)
    text = stagewatch_cli(daemon.home, *runs).stdout
    assert "  detection frame ⏎ 7: ok -> failed" in text.splitlines(), text
    assert compared(daemon.home, *runs)["flips"][0]["sample_id"] == "frame\n7"
