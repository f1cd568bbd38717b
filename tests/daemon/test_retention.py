"""Retention: a pure selection with a frozen clock, removal everywhere, crash-safety."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

import stagewatch
from stagewatch.daemon.base._derived import DAEMON_CHECKPOINT, peek
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._settings import RetentionSection
from stagewatch.daemon.ingest._ingest import RECEIVED_MARK_INTERVAL_NS
from stagewatch.daemon.query._readmodels import read_table
from stagewatch.daemon.tables._retention import (
    NS,
    FinishedRun,
    Segment,
    collect_garbage,
    parse_duration,
    select_expired,
)
from stagewatch.daemon.tables._store import TABLES
from tests.conftest import Close, DaemonProcess, sw, wait_for
from tests.daemon.test_compaction import RUN_ID, T0, _crash, _in_process_daemon
from tests.daemon.test_rebuild import _read_models
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
    wait_for(lambda: (daemon.home / "runs" / expired / "accuracy.json").exists())  # written after its rows
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
    refused = subprocess.run(gc, capture_output=True, text=True, env=env)
    assert refused.returncode == 1 and "it applies retention itself" in refused.stderr  # one remover per home
    assert (daemon.home / "runs" / expired).exists()
    assert daemon.stop() == 0
    done = json.loads(subprocess.run(gc, capture_output=True, text=True, env=env).stdout)
    assert done["runs"] == [expired] and done["parquet_rows"] == 3  # a stage row, a run row, a samples row
    assert not (daemon.home / "runs" / expired).exists()
    for table in ("runs", "stage_executions", "samples"):
        assert expired not in read_table(daemon.home, table)["run_id"].to_pylist()
    assert (daemon.home / "runs" / running.id / "audit.json").exists()
    running.finish()


GC = """
import sys
from stagewatch.daemon.tables._retention import collect_garbage
from stagewatch.daemon.base._settings import RetentionSection
from stagewatch.daemon.tables._store import TABLES
print("collecting", flush=True)
collect_garbage(sys.argv[1], RetentionSection(runs="1h"), now_ns=int(sys.argv[2]))
print("done", flush=True)
"""


def test_kill_9_during_a_retention_pass_loses_and_doubles_no_row_and_the_next_pass_finishes(home: Path) -> None:
    """gc killed at points along its removal (each table's delete is one commit; the runs
    table's goes last, then the folders): the kept runs' rows are each there once, and the
    next pass removes what is left of the expired ones."""
    daemon = DaemonProcess(home).start()
    expired = [_finished_run(home, f"p{i}") for i in range(3)]
    for run_id in expired:
        daemon.audit(run_id)
    wait_for(lambda: read_table(home, "runs").num_rows == 3)
    now_ns = time.time_ns() + 3600 * NS  # a frozen clock an hour on: the runs before now have expired
    time.sleep(RECEIVED_MARK_INTERVAL_NS / NS + 0.1)  # the kept run arrives under a `received` marker of its own
    kept = _finished_run(home, "kept")
    daemon.audit(kept)
    wait_for(lambda: read_table(home, "runs").num_rows == 4)
    daemon.stop()
    kept_rows = {table: read_table(home, table).filter(pc.field("run_id") == kept).num_rows for table in TABLES}
    repo = Path(__file__).resolve().parents[2]
    for delay_s in (0.0, 0.05, 0.1, 0.2, 0.4):
        command = [sys.executable, "-c", GC, str(home), str(now_ns)]
        gc = subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, text=True)
        assert gc.stdout.readline() == "collecting\n"
        time.sleep(delay_s)
        gc.send_signal(signal.SIGKILL)
        gc.wait()
        for table, rows in kept_rows.items():  # nothing of a kept run lost or doubled
            found = read_table(home, table).filter(pc.field("run_id") == kept)
            assert found.num_rows == rows and found.num_rows == len(set(found["lsn"].to_pylist()))
    freed = collect_garbage(home, RetentionSection(runs="1h"), now_ns=now_ns)
    assert set(freed["runs"]) <= set(expired)
    for table in TABLES:
        assert not set(expired) & set(read_table(home, table)["run_id"].to_pylist())
    assert sorted(path.name for path in (home / "runs").iterdir()) == [kept]


# A daemon that keeps runs a second, checks twice a second and forgets finished runs at once.
QUICK_RETENTION = {
    "STAGEWATCH_RETENTION_RUNS": "1s",
    "STAGEWATCH_RETENTION_CHECK_INTERVAL_S": "0.5",
    "STAGEWATCH_DAEMON_LATE_EVENT_GRACE_S": "0.2",
}


def test_the_daemon_applies_retention_by_itself_and_clears_what_a_killed_gc_hid(home: Path) -> None:
    daemon = DaemonProcess(home, env=QUICK_RETENTION).start()
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
    # As if a gc had been killed after its deletes, having hidden one folder:
    victim = _finished_run_offline(home)
    (home / "runs" / victim).rename(home / "runs" / f".expired-{victim}")
    daemon = DaemonProcess(home, env=QUICK_RETENTION).start()
    try:
        wait_for(lambda: not (home / "runs" / f".expired-{victim}").exists(), timeout_s=30)
    finally:
        daemon.stop()


def _finished_run_offline(home: Path) -> str:
    run_id = "7e0b8c2a-1d7e-4a3e-9a8b-0c1d2e3f4a5b"
    (home / "runs" / run_id).mkdir(parents=True)
    (home / "runs" / run_id / "audit.json").write_text("{}")
    return run_id


def _cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return sw(*args, "--home", str(home), env=env)


def _judged_run(home: Path, golden: Path, pipeline: str) -> str:
    """A finished run with a saved output, a log line and a judged sample result."""
    log = logging.getLogger("pipeline")
    log.setLevel(logging.INFO)
    handler = stagewatch.LoggingHandler()
    log.addHandler(handler)
    try:
        with stagewatch.init(pipeline=pipeline, home=home, dataset=golden) as run, run.stage("detection") as st:
            st.save("out.json", {"x": 1})
            log.info("%s ran", pipeline)
            st.result("s0000", {"boxes": [], "scores": [], "labels": []})
    finally:
        log.removeHandler(handler)
    return run.id


def _what_users_see(home: Path) -> dict:
    """The runs listing, stats, run folders and every table's rows, as the CLI and files show them."""
    listing = _cli(home, "runs", "--json", "--limit", "100")
    stats = _cli(home, "stats", "--json")
    assert listing.returncode == 0 and stats.returncode == 0, listing.stderr + stats.stderr
    return {
        "runs": json.loads(listing.stdout, parse_float=Close),  # sums in another order: equal within 1e-9
        "stats": json.loads(stats.stdout, parse_float=Close),
        "folders": sorted(path.name for path in (home / "runs").iterdir()),
        "samples": sorted(read_table(home, "samples")["run_id"].to_pylist()),
        "logs": sorted(read_table(home, "logs")["run_id"].to_pylist()),
        **_read_models(home),
    }


def test_rebuild_and_restart_leave_out_the_runs_that_retention_removed(home: Path) -> None:
    golden = write_dataset(home.parent / "golden", 2)
    daemon = DaemonProcess(home, env={"STAGEWATCH_DAEMON_LATE_EVENT_GRACE_S": "0"}).start()  # runs leave memory
    try:
        expiring = [_judged_run(home, golden, f"old{i}") for i in range(3)]
        for run_id in expiring:  # a run's age counts from when the daemon received its last event
            daemon.audit(run_id)
        boundary_ns = time.time_ns()  # a frozen clock one hour on: the runs before it have expired
        # Receive times come from the daemon's `received` markers, written at most once a marker
        # interval: the kept runs must arrive under a marker of their own, after the boundary.
        time.sleep(RECEIVED_MARK_INTERVAL_NS / NS + 0.1)
        kept = [_judged_run(home, golden, f"new{i}") for i in range(2)]
        for run_id in expiring + kept:
            daemon.audit(run_id)
        wait_for(lambda: read_table(home, "samples").num_rows == 5)
    finally:
        assert daemon.stop() == 0
    now_ns = boundary_ns + 3600 * NS
    freed = collect_garbage(home, RetentionSection(runs="1h"), now_ns=now_ns)
    assert sorted(freed["runs"]) == sorted(expiring)
    left = _what_users_see(home)
    assert sorted(run["run_id"] for run in left["runs"]) == sorted(kept) == left["folders"]

    rebuilt = _cli(home, "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert _what_users_see(home) == left
    assert collect_garbage(home, RetentionSection(runs="1h"), dry_run=True, now_ns=now_ns)["runs"] == []
    daemon.start()
    assert daemon.stop() == 0
    assert _what_users_see(home) == left
    assert "cannot write" not in daemon.log()


def test_gc_while_the_daemon_is_stopped_leaves_no_ghost_of_a_run_it_still_held(home: Path) -> None:
    """The demo's case: the daemon stops less than late_event_grace_s after the run ended, so its
    checkpoint still holds the run; gc removes it; the next start must not bring it back."""
    daemon = DaemonProcess(home).start()
    run_id = _finished_run(home, "demo")
    daemon.audit(run_id)
    wait_for(lambda: read_table(home, "runs").num_rows == 1)
    assert daemon.stop() == 0
    assert run_id in peek(DAEMON_CHECKPOINT, DaemonHome.of(home))["projector"]["runs"]
    time.sleep(1.1)  # older than retention.runs = 1s
    gc = _cli(home, "gc", "--json", env={"STAGEWATCH_RETENTION_RUNS": "1s"})
    assert gc.returncode == 0, gc.stderr
    assert json.loads(gc.stdout)["runs"] == [run_id]

    daemon.start()
    recovered = wait_for(lambda: daemon.status().get("updated_at"))
    wait_for(lambda: daemon.status().get("updated_at", 0) > recovered)  # a flush after recovery's reports its writes
    doctor = _cli(home, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert _cli(home, "runs", "--json").stdout.strip() == "[]"
    assert daemon.stop() == 0
    assert "cannot write" not in daemon.log()
    shown = _cli(home, "show", run_id)
    assert shown.returncode == 1 and "no run with id" in shown.stderr
    assert list((home / "runs").iterdir()) == []
    again = _cli(home, "gc", "--json", env={"STAGEWATCH_RETENTION_RUNS": "1s"})
    assert json.loads(again.stdout)["runs"] == []


def test_gc_clears_the_ghost_folders_an_older_daemon_left(home: Path) -> None:
    """A daemon before run_expired rewrote the audit trail of a run gc had removed, failed, and
    left runs/<id>/.audit.json.tmp: `show` said status unknown and no gc removed it."""
    ghost = "5b0c3f5e-8a51-4c2b-9d0e-6f1a2b3c4d5e"
    (home / "runs" / ghost).mkdir(parents=True)
    (home / "runs" / ghost / ".audit.json.tmp").write_text('{"schema": "stagewatch.audit/1", "run_id"')
    pipeline_output = home / "runs" / "0d7f1c2e-3b4a-4c5d-8e6f-7a8b9c0d1e2f" / "stages" / "detection"
    pipeline_output.mkdir(parents=True)  # a pipeline saving outputs while no daemon runs
    (pipeline_output / ".out.json.123.tmp").write_text("{")
    planned = _cli(home, "gc", "--dry-run", "--json")
    assert json.loads(planned.stdout)["debris_folders"] == [ghost] and (home / "runs" / ghost).exists()
    done = _cli(home, "gc")
    assert done.returncode == 0 and "1 run folder(s) holding only a failed write's temporary file" in done.stdout
    assert not (home / "runs" / ghost).exists() and pipeline_output.exists()
    assert _cli(home, "show", ghost).returncode == 1


def test_a_run_the_daemon_removed_stays_removed_after_a_kill_and_a_rebuild(home: Path) -> None:
    daemon = DaemonProcess(home, env=QUICK_RETENTION).start()
    first = _finished_run(home, "first")
    removed = _finished_run(home, "short-lived")
    daemon.audit(removed)
    # the same policy takes both (the pass removes the folders one by one: wait for both)
    wait_for(lambda: not any((home / "runs" / run_id).exists() for run_id in (first, removed)), timeout_s=30)
    daemon.kill()  # its checkpoint may not hold the run_expired yet: the restart replays it
    daemon = DaemonProcess(home).start()  # the default policy now: 90 days
    # Killed between the folders and the runs table's rows, the rows are left: the new daemon's
    # first retention pass (at its start) finishes what the log recorded.
    wait_for(lambda: json.loads(_cli(home, "runs", "--json").stdout) == [], timeout_s=30)
    assert daemon.stop() == 0
    rebuilt = _cli(home, "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(_cli(home, "runs", "--json").stdout) == [] and list((home / "runs").iterdir()) == []
    assert read_table(home, "stage_executions").num_rows == 0


def test_the_daemon_numbers_its_events_after_those_a_crash_left_past_its_checkpoint(home: Path) -> None:
    """A run_expired committed, then kill -9 before a checkpoint: the next daemon must not give its
    own next event the same (client, seq), or every later replay drops that one as seen."""
    other = "0d7f1c2e-3b4a-4c5d-8e6f-7a8b9c0d1e2f"
    daemon = _in_process_daemon(home, bind=False)
    assert daemon.maintenance._record_expiry([FinishedRun(RUN_ID, T0)])
    _crash(daemon)
    daemon = _in_process_daemon(home, bind=False)
    assert daemon.maintenance._record_expiry([FinishedRun(other, T0)])
    _crash(daemon)
    daemon = _in_process_daemon(home, bind=False)
    try:
        assert daemon.stats.recovery["replay_duplicates"] == 0
        assert sorted(daemon.projector.expired) == sorted([RUN_ID, other])
    finally:
        _crash(daemon)


def test_the_accuracy_fold_forgets_an_expired_run(tmp_path: Path) -> None:
    """A worker behind its log replays a run's results, then its run_expired: nothing of the run
    is written (no samples rows, no accuracy.json bringing its folder back)."""
    from stagewatch.daemon.accuracy._accuracy import AccuracyProjection
    from stagewatch.daemon.projection._schema import validate_event

    def event(kind: str, seq: int, client: str = "c1", **fields: object) -> object:
        envelope = {"v": 1, "type": kind, "client_id": client, "seq": seq, "ts_ns": T0 + seq, "run_id": RUN_ID}
        return validate_event({**envelope, **fields})

    projection = AccuracyProjection(tmp_path)
    projection.apply(event("run_started", 1, pipeline="p", dataset=str(write_dataset(tmp_path / "golden", 2))), 0)
    prediction = {"boxes": [], "scores": [], "labels": []}
    projection.apply(event("sample_result", 2, stage="detection", sample_id="s0000", prediction=prediction), 1)
    assert projection.rows and RUN_ID in projection.dirty
    projection.apply(event("run_expired", 1, client="daemon", ended_ns=T0), 2)
    assert (projection.runs, projection.rows, projection.dirty) == ({}, [], set())
