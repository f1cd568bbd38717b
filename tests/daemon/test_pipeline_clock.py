"""A pipeline whose clock is wrong (1970, 2100, an hour behind): retention judges a run's age by
the daemon's clock when it received the run, and the audit trail says how far off the pipeline's
clock was; a run spooled while no daemon ran is late, not skewed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from stagewatch.daemon.query._readmodels import read_table
from tests.conftest import FAKE_CLOCK, DaemonProcess, run_pipeline, run_python, sw
from tests.daemon.test_rebuild import _read_models

NS = 1_000_000_000
YEAR_NS = int(365.25 * 86_400 * NS)
BOOTED_IN_1970 = 12 * 3600 * NS  # 1970-01-01T12:00Z: a board without a real-time clock, before NTP
SET_TO_2100 = 4_102_444_800 * NS  # 2100-01-01T00:00Z


def _gc(home: Path, keep_runs: str) -> dict[str, Any]:
    """`stagewatch gc` (no daemon may run: it applies retention itself)."""
    env = {**os.environ, "STAGEWATCH_RETENTION_RUNS": keep_runs}
    command = [sys.executable, "-m", "stagewatch.cli", "gc", "--home", str(home), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_run_stamped_in_1970_is_kept_and_its_skew_is_in_the_audit_trail(daemon: DaemonProcess) -> None:
    run_id = run_pipeline(daemon.home, clock_ns=BOOTED_IN_1970)
    audit = daemon.audit(run_id)
    assert audit["started_at"].startswith("1970-01-01")  # as the pipeline stamped it
    assert daemon.stop() == 0
    freed = _gc(daemon.home, keep_runs="1h")
    assert freed["runs"] == []
    assert (daemon.home / "runs" / run_id / "audit.json").exists()
    assert read_table(daemon.home, "stage_executions")["run_id"].to_pylist() == [run_id] * 3

    skew = daemon.audit(run_id)["clock_skew"]
    offset_ns = BOOTED_IN_1970 - time.time_ns()
    assert abs(skew["offset_s"] * NS - offset_ns) < 60 * NS
    assert "years behind the daemon's" in skew["message"]
    received = read_table(daemon.home, "runs")["received_time"].cast("int64").to_pylist()
    assert len(received) == 1 and abs(received[0] - time.time_ns()) < 3600 * NS  # the daemon's clock

    # The receive times come from the event log: a rebuild reads the same.
    live = _read_models(daemon.home)
    rebuild = [sys.executable, "-m", "stagewatch.cli", "rebuild", "--home", str(daemon.home), "--json"]
    result = subprocess.run(rebuild, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _read_models(daemon.home) == live


def test_a_run_stamped_in_2100_ages_by_the_daemon_s_clock(daemon: DaemonProcess) -> None:
    run_id = run_pipeline(daemon.home, clock_ns=SET_TO_2100)
    daemon.audit(run_id)
    assert daemon.stop() == 0
    assert _gc(daemon.home, keep_runs="1h")["runs"] == []
    time.sleep(2.5)  # older than 2 s by the daemon's clock; 75 years younger by its own
    assert _gc(daemon.home, keep_runs="2s")["runs"] == [run_id]
    assert not (daemon.home / "runs" / run_id).exists()


def test_the_audit_trail_says_a_clock_in_2100_is_ahead(daemon: DaemonProcess) -> None:
    audit = daemon.audit(run_pipeline(daemon.home, clock_ns=SET_TO_2100))
    assert audit["clock_skew"]["offset_s"] > 70 * YEAR_NS / NS
    assert "years ahead of the daemon's" in audit["clock_skew"]["message"]


SET_TO_1965 = -5 * YEAR_NS  # before 1970: no timestamp field holds it
SET_TO_2300 = 10_413_792_000 * NS  # past 2200: neither


@pytest.mark.parametrize(("clock_ns", "said"), [(SET_TO_1965, "behind"), (SET_TO_2300, "ahead of")])
def test_a_clock_no_timestamp_holds_keeps_its_runs_and_is_said_off(
    daemon: DaemonProcess, clock_ns: int, said: str
) -> None:
    """Its events were refused at validation (out of range), so the run was lost whole: the
    client starts such a run's clock at the nearest time a timestamp holds, and the daemon says
    how far off the pipeline's clock was."""
    run_id = run_pipeline(daemon.home, clock_ns=clock_ns)
    audit = daemon.audit(run_id)
    assert [stage["sample_id"] for stage in audit["stages"]] == ["f0", "f1", "f2"]
    assert f"years {said} the daemon's" in audit["clock_skew"]["message"]
    assert read_table(daemon.home, "stage_executions")["run_id"].to_pylist() == [run_id] * 3
    assert not list(daemon.home.glob("quarantine/*.jsonl"))  # no event refused
    shown = sw("show", run_id, "--home", str(daemon.home))
    assert f"years {said} the daemon's" in shown.stdout, shown.stdout + shown.stderr  # said by `show` too


def test_a_run_spooled_while_no_daemon_ran_is_late_not_skewed(home: Path) -> None:
    an_hour_ago = time.time_ns() - 3600 * NS  # as if it ran an hour before a daemon started
    run_id = run_pipeline(home, clock_ns=an_hour_ago, wait_for_daemon=False)
    assert list((home / "spool").glob("*.spool"))
    daemon = DaemonProcess(home).start()
    try:
        audit = daemon.audit(run_id)
        assert audit["clock_skew"] is None  # received an hour after it was emitted: late, not skewed
        assert audit["clock_offset_ns"] is None  # nothing came live
        assert audit["received_first_ns"] > an_hour_ago + 3500 * NS
    finally:
        daemon.stop()
    assert _gc(home, keep_runs="30m")["runs"] == []  # its age counts from when it arrived


def test_a_clock_a_few_seconds_off_is_not_reported(daemon: DaemonProcess) -> None:
    run_id = run_pipeline(daemon.home, clock_ns=time.time_ns() - 5 * NS)
    audit = daemon.audit(run_id)
    assert audit["clock_skew"] is None
    assert -60 * NS < audit["clock_offset_ns"] < 0  # measured, and within what is reported


def test_receive_times_survive_a_kill_9_and_a_rebuild_reads_the_same(daemon: DaemonProcess) -> None:
    """The daemon numbers its markers; after a kill -9 it must number past those the log holds
    beyond its checkpoint, or a replay takes the new ones for copies and skips them."""
    run_pipeline(daemon.home, clock_ns=BOOTED_IN_1970)
    daemon.kill()  # the checkpoint (every 5 s at most) is behind the markers just written
    daemon.start()
    time.sleep(1.1)  # the next group gets a marker of its own (at most one a second)
    daemon.audit(run_pipeline(daemon.home, clock_ns=SET_TO_2100))
    assert daemon.stop() == 0
    live = _read_models(daemon.home)
    rebuild = [sys.executable, "-m", "stagewatch.cli", "rebuild", "--home", str(daemon.home), "--json"]
    result = subprocess.run(rebuild, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["events_replayed"] > 0
    assert _read_models(daemon.home) == live


# The wall clock stepped in the middle of a run (NTP's first sync, a hand set), then the run goes on.
STEPPED_MID_RUN = """
import time
_real_time_ns = time.time_ns
_step = [0]
time.time_ns = lambda: _real_time_ns() + _step[0]
time.time = lambda: time.time_ns() / 1e9
import stagewatch
run = stagewatch.init(pipeline="stepped", home={home!r})
for frame in range(6):
    if frame == 3:
        _step[0] = {step_ns}
    time.sleep(0.02)  # "loading" the frame: time outside stages
    with run.stage("detection", sample_id=f"f{{frame}}"):
        time.sleep(0.01)
run.finish()
assert run.flush(10), "the daemon did not acknowledge the run"
print(run.id)
"""


def _show(home: Path, run_id: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "show", run_id, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_clock_stepped_mid_run_moves_none_of_its_stages(daemon: DaemonProcess) -> None:
    """The run's times are its start's wall clock plus the monotonic time since: a step back an
    hour or forward 60 days in the middle leaves one timeline, whose stages and time outside them
    add up to the run's own duration (a step back made the wall time negative, a step forward
    an hour of 'time outside stages', and 60 days overflowed the Run page's durations chart)."""
    from stagewatch.daemon import Filters
    from stagewatch.daemon.query._gaps import outside_stages
    from stagewatch.ui._data import run_view

    for step_ns in (-3600 * NS, 60 * 86_400 * NS):
        result = run_python(STEPPED_MID_RUN.format(home=str(daemon.home), step_ns=step_ns))
        assert result.returncode == 0, result.stderr
        run_id = result.stdout.split()[-1]
        audit = daemon.audit(run_id)
        _, (split,) = outside_stages(daemon.home, Filters(run=run_id))
        assert 0 < split["stages_ms"] <= split["wall_ms"] and split["outside_ms"] >= 0
        assert split["wall_ms"] == pytest.approx(audit["duration_ms"], abs=50)  # no hour, no 60 days
        assert "wall -" not in _show(daemon.home, run_id)
        view = run_view(daemon.home, run_id)  # the page's data: its durations chart among it
        assert len(view["points"]) == 6 and view["points"]["start_ms"].max() < 10_000


def test_a_run_spanning_months_draws_its_durations_chart(daemon: DaemonProcess) -> None:
    """A run whose stages are 60 days apart (a service recording for months): the chart's slices
    of its time span are computed without overflowing."""
    from stagewatch.ui._data import run_view

    code = f"""
import time
_real_monotonic_ns = time.monotonic_ns
_later = [0]
time.monotonic_ns = lambda: _real_monotonic_ns() + _later[0]
import stagewatch
run = stagewatch.init(pipeline="months", home={str(daemon.home)!r})
for frame in range(4):
    if frame == 2:
        _later[0] = 60 * 86_400 * 10**9
    with run.stage("detection", sample_id=f"f{{frame}}"):
        pass
run.finish()
assert run.flush(10), "the daemon did not acknowledge the run"
print(run.id)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.split()[-1]
    daemon.audit(run_id)
    points = run_view(daemon.home, run_id)["points"]  # the slowest of each slice: two slices hold them
    assert len(points) == 2 and points["start_ms"].max() > 59 * 86_400_000


def test_a_crashed_run_of_a_clock_hours_off_ends_on_its_own_clock(tmp_path: Path) -> None:
    """The daemon crashes a silent client's open stage at when it last heard from it, on the
    daemon's clock: carried onto the pipeline's clock (by the offset it measured), the stage
    lasts what it lasted, not hours or nothing, and the run does not end before it started."""
    daemon = DaemonProcess(tmp_path / "home", client_timeout_s=2.0).start()
    try:
        for offset_ns in (2 * 3600 * NS, -2 * 3600 * NS):
            code = (
                FAKE_CLOCK.format(clock_ns=time.time_ns() + offset_ns)
                + f"""
import os, signal, stagewatch
run = stagewatch.init(pipeline="doomed", home={str(daemon.home)!r})
with run.stage("preprocessing"):
    pass
print(run.id, flush=True)
run.flush(5)
with run.stage("hang", sample_id="f0"):
    run.flush(5)
    os.kill(os.getpid(), signal.SIGKILL)
"""
            )
            result = run_python(code)
            assert result.returncode == -9
            audit = daemon.audit(result.stdout.split()[0], timeout_s=60)
            assert audit["status"] == "crashed" and 0 <= audit["duration_ms"] < 60_000, audit["duration_ms"]
            (hang,) = [stage for stage in audit["stages"] if stage["stage"] == "hang"]
            assert hang["status"] == "crashed" and 0 <= hang["duration_ms"] < 60_000, hang["duration_ms"]
    finally:
        daemon.stop()
