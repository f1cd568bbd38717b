"""Retention: a pure selection with a frozen clock, removal everywhere, crash-safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stagewatch
from stagewatch.daemon import Filters, query_runs, query_stats
from stagewatch.daemon._readmodels import read_table
from stagewatch.daemon._retention import (
    NS,
    FinishedRun,
    Segment,
    apply_retention,
    intent_path,
    parse_duration,
    resume_interrupted,
    select_expired,
)
from stagewatch.daemon._settings import RetentionSection
from tests.conftest import DaemonProcess, wait_for
from tests.groundtruth.builders import write_dataset

NOW = 1_800_000_000 * NS
DAY = 86_400


def test_durations() -> None:
    assert [parse_duration(t) for t in ("30d", "12h", "90s", "2w", "1.5m", 7)] == [
        30 * DAY,
        43_200,
        90,
        14 * DAY,
        90,
        7,
    ]
    assert parse_duration("forever") is None
    for bad in ("30", "-1d", "0s", "soon"):
        with pytest.raises(ValueError, match="expected a"):
            parse_duration(bad)


def test_selection_with_a_frozen_clock() -> None:
    runs = [FinishedRun("old", NOW - 31 * DAY * NS), FinishedRun("young", NOW - 29 * DAY * NS)]
    segments = [Segment(Path(f"s{i}"), end_lsn=(i + 1) * 100, modified_ns=NOW - (40 - i) * DAY * NS) for i in range(4)]
    plan = select_expired(runs, segments, NOW, checkpoint_lsn=250, runs_keep_s=30 * DAY, events_keep_s=30 * DAY)
    assert plan.runs == ["old"]
    # s0 and s1 end before the checkpoint; s2 does not (a projection still needs it), so s3 waits too
    assert plan.segments == [Path("s0"), Path("s1")]
    forever = select_expired(runs, segments, NOW, 10**9, runs_keep_s=None, events_keep_s=None)
    assert (forever.runs, forever.segments) == ([], [])
    never_last = select_expired(runs, segments, NOW + 100 * DAY * NS, 10**9, None, 1.0)
    assert Path("s3") not in never_last.segments  # the open segment is never removed


def _finished_run(home: Path, pipeline: str) -> str:
    with stagewatch.init(pipeline=pipeline, home=home) as run, run.stage("detection") as st:
        st.save("out.json", {"x": 1})
    return run.id


def test_gc_removes_expired_runs_everywhere_and_leaves_running_ones(daemon: DaemonProcess) -> None:
    golden = write_dataset(daemon.home.parent / "golden", 2)
    with stagewatch.init(pipeline="old", home=daemon.home, dataset=golden) as run, run.stage("detection") as st:
        st.save("out.json", {"x": 1})
        st.result("s0000", {"boxes": [], "scores": [], "labels": []})  # judged: a row in `samples`
    expired = run.id
    daemon.audit(expired)
    wait_for(lambda: read_table(daemon.home, "runs").num_rows == 1)
    wait_for(lambda: read_table(daemon.home, "samples").num_rows == 1)
    assert (daemon.home / "runs" / expired / "accuracy.json").exists()
    running = stagewatch.init(pipeline="ongoing", home=daemon.home)
    with running.stage("detection"):
        pass
    running.flush(10)
    time.sleep(2.5)
    env = {**os.environ, "STAGEWATCH_RETENTION_RUNS": "2s"}
    gc = [sys.executable, "-m", "stagewatch.cli", "gc", "--home", str(daemon.home), "--json"]
    planned = json.loads(subprocess.run([*gc, "--dry-run"], capture_output=True, text=True, env=env).stdout)
    assert planned["runs"] == [expired] and planned["run_bytes"] > 0
    assert (daemon.home / "runs" / expired).exists()  # a dry run removes nothing
    done = json.loads(subprocess.run(gc, capture_output=True, text=True, env=env).stdout)
    assert done["runs"] == [expired] and done["parquet_rows"] == 3  # a stage row, a run row, a samples row
    assert not (daemon.home / "runs" / expired).exists()
    for table in ("runs", "stage_executions", "samples"):
        assert expired not in read_table(daemon.home, table)["run_id"].to_pylist()
    assert (daemon.home / "runs" / running.id / "audit.json").exists()
    running.finish()


def test_a_crash_in_the_middle_of_gc_leaves_nothing_half_visible(home: Path, monkeypatch) -> None:
    daemon = DaemonProcess(home).start()
    run_ids = [_finished_run(home, f"p{i}") for i in range(3)]
    for run_id in run_ids:
        daemon.audit(run_id)
    wait_for(lambda: read_table(home, "runs").num_rows == 3)
    daemon.stop()
    time.sleep(1.1)
    import shutil

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during rmtree")  # the process dies here

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        apply_retention(home, RetentionSection(runs="1s"))
    assert intent_path(home).exists()
    assert read_table(home, "runs").num_rows == 0  # readers see every run of the interrupted gc gone
    assert query_runs(home, Filters()).num_rows == 0 and query_stats(home, Filters()) == []  # the SQL layer too
    for run_id in run_ids:
        shown = subprocess.run(
            [sys.executable, "-m", "stagewatch.cli", "show", run_id, "--home", str(home)],
            capture_output=True,
            text=True,
        )
        assert shown.returncode == 1
    monkeypatch.undo()
    freed = resume_interrupted(home)
    assert sorted(freed["runs"]) == sorted(run_ids)
    assert list((home / "runs").iterdir()) == [] and read_table(home, "runs").num_rows == 0
    assert not intent_path(home).exists()


def test_the_daemon_applies_retention_by_itself_and_finishes_an_interrupted_gc(home: Path) -> None:
    env = {
        "STAGEWATCH_RETENTION_RUNS": "1s",
        "STAGEWATCH_RETENTION_CHECK_INTERVAL_S": "0.5",
        "STAGEWATCH_DAEMON_LATE_EVENT_GRACE_S": "0.2",
    }
    daemon = DaemonProcess(home, env=env).start()
    try:
        running = stagewatch.init(pipeline="ongoing", home=home)
        with running.stage("detection"):
            pass
        finished = _finished_run(home, "short-lived")
        daemon.audit(finished)
        wait_for(lambda: not (home / "runs" / finished).exists(), timeout_s=30)
        assert finished not in read_table(home, "stage_executions")["run_id"].to_pylist()
        time.sleep(1.5)
        assert (home / "runs" / running.id / "audit.json").exists()  # in progress: untouched
        running.finish()
    finally:
        daemon.stop()
    # As if a gc had been killed after writing its intent and hiding one folder:
    victim = _finished_run_offline(home)
    (home / "runs" / victim).rename(home / "runs" / f".expired-{victim}")
    intent_path(home).write_text(json.dumps({"runs": [victim], "segments": []}))
    daemon = DaemonProcess(home, env=env).start()
    try:
        wait_for(lambda: not intent_path(home).exists(), timeout_s=30)
        assert not (home / "runs" / f".expired-{victim}").exists()
    finally:
        daemon.stop()


def _finished_run_offline(home: Path) -> str:
    run_id = "7e0b8c2a-1d7e-4a3e-9a8b-0c1d2e3f4a5b"
    (home / "runs" / run_id).mkdir(parents=True)
    (home / "runs" / run_id / "audit.json").write_text("{}")
    return run_id
