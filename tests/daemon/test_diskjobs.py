"""The disk thread: the read models' writes in order, halted by the first refused write and
retried from it, and a checkpoint never on disk ahead of a write it accounts for."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from stagewatch.daemon import Daemon
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.ingest._ingest import Group
from stagewatch.daemon.query._readmodels import load_audit, read_table
from stagewatch.daemon.tables._diskjobs import DiskJobs, PassThread
from stagewatch.daemon.tables._store import replacing
from tests.daemon.test_compaction import RUN_ID, _crash, _in_process_daemon, _stage_event


def test_jobs_run_in_the_order_submitted() -> None:
    jobs, done = DiskJobs(max_weight=10), []
    for number in range(500):
        jobs.submit(lambda number=number: done.append(number))
    assert jobs.drain()
    assert done == list(range(500))
    jobs.close()


def test_a_failed_job_halts_the_queue_until_its_error_is_taken_then_is_retried_first() -> None:
    jobs, done, attempts = DiskJobs(max_weight=10), [], []

    def refused_once() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError(28, "No space left on device")
        done.append("retried")

    jobs.submit(lambda: done.append("before"))
    jobs.submit(refused_once)
    jobs.submit(lambda: done.append("after"))
    assert not jobs.drain()  # halted: what follows the refused write waits
    assert done == ["before"] and jobs.halted
    error = jobs.take_error()
    assert isinstance(error, OSError) and error.errno == 28
    assert jobs.drain()
    assert done == ["before", "retried", "after"]
    jobs.close()


def test_discard_drops_what_a_halted_queue_holds_after_the_running_job_and_the_queue_goes_on() -> None:
    jobs, done, running, release = DiskJobs(max_weight=10), [], threading.Event(), threading.Event()

    def slow() -> None:
        running.set()
        release.wait()
        done.append("slow")

    def refused() -> None:
        raise OSError(5, "Input/output error")

    jobs.submit(slow)
    jobs.submit(refused)
    jobs.submit(lambda: done.append("behind the refused one"))
    running.wait()
    dropping = threading.Thread(target=lambda: done.append(("dropped", jobs.discard())))
    dropping.start()
    dropping.join(0.2)
    assert dropping.is_alive()  # it waits for the job under way
    release.set()
    dropping.join(10)
    assert done[:2] == ["slow", ("dropped", 2)]
    assert not jobs.halted and jobs.queued == 0
    jobs.submit(lambda: done.append("next"))
    assert jobs.drain() and done[-1] == "next"
    jobs.close()


def test_submit_waits_while_the_queue_is_full() -> None:
    jobs, release, returned = DiskJobs(max_weight=100), threading.Event(), threading.Event()
    jobs.submit(release.wait, weight=100)  # the thread is busy with it, and it fills the queue

    def submit_more() -> None:
        jobs.submit(lambda: None, weight=1)
        returned.set()

    submitter = threading.Thread(target=submit_more)
    submitter.start()
    assert not returned.wait(0.3)  # held back: the loop waits rather than grow without bound
    release.set()
    assert returned.wait(10)
    submitter.join()
    assert jobs.drain()
    jobs.close()


def _daemon(home: Path) -> Daemon:
    return _in_process_daemon(home, bind=False)


def _ingest(daemon: Daemon, seqs: range) -> None:
    group = Group()
    daemon.ingest.take(group, [_stage_event(seq) for seq in seqs], "c")
    assert daemon.ingest.commit(group)


def _doctor_check(home: Path, name: str) -> dict:
    from stagewatch.daemon.base._settings import Config
    from stagewatch.daemon.maintenance._doctor import examine

    return {check["name"]: check for check in examine(home, Config())["checks"]}[name]


def _checkpoint_lsn(home: Path) -> int:
    return msgpack.unpackb(DaemonHome(home).checkpoint("checkpoint.msgpack").read_bytes())["lsn"]


def test_a_refused_part_keeps_the_checkpoint_behind_it_and_is_written_once_on_retry(home: Path) -> None:
    daemon = _daemon(home)
    _ingest(daemon, range(1, 11))
    daemon.flush(final=True)
    covered = _checkpoint_lsn(home)
    assert covered == daemon.log.end_lsn
    # A file where the table's folder goes: every part write is refused by the file system.
    table = DaemonHome(home).metrics / "stage_executions"
    shutil.move(table, home / "moved-away")
    table.write_bytes(b"")
    _ingest(daemon, range(11, 21))
    daemon.flush(final=True)  # rows, audit trail, checkpoint: queued behind the refused part
    assert daemon.writer.threads.jobs.halted
    # status.json says what waits: the refused part, the audit trail and the checkpoint behind it
    assert json.loads(DaemonHome(home).status.read_text())["disk_writes_queued"] >= 3
    assert _checkpoint_lsn(home) == covered  # not past rows that are not on disk
    daemon.flush(final=True)  # reports the refusal; the queue stays halted on it
    writes = _doctor_check(home, "writes")  # names what was refused and why, and that writes wait
    assert not writes["ok"] and "stage_executions" in writes["detail"] and "wait for the disk" in writes["detail"]
    table.unlink()
    shutil.move(home / "moved-away", table)
    daemon.flush(final=True)  # retries from the refused part on
    assert daemon.stats.write_errors >= 1
    # and status.json says so at once (doctor reads it), though the refusal halted the queue
    assert json.loads(DaemonHome(home).status.read_text())["stats"]["write_errors"] == daemon.stats.write_errors
    assert daemon.writer.drain()
    daemon.flush()  # status.json once the queue is empty
    writes = _doctor_check(home, "writes")  # past: every write retried and written, said so, no problem
    assert writes["ok"] and "refused earlier, each retried and written since" in writes["detail"], writes
    assert _checkpoint_lsn(home) == daemon.log.end_lsn
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 21))
    daemon.release()  # as kill -9: a recovery replays nothing twice
    recovered = _daemon(home)
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 21))
    recovered.release()


def test_a_checkpoint_ahead_of_a_running_runs_head_and_recovery_writes_the_head_again(home: Path, monkeypatch) -> None:
    """A running run's head is rewritten at most every REWRITE_INTERVAL_S, the checkpoint on
    its own schedule: killed when the checkpoint covers stages the head does not count yet,
    recovery writes the head of every run the checkpoint holds, and the trail has them all."""
    daemon = _daemon(home)
    _ingest(daemon, range(1, 201))
    daemon.flush(final=True)
    assert daemon.writer.drain()
    monkeypatch.setattr(daemon.writer._throttle, "due", lambda key, now: key == "checkpoint")
    _ingest(daemon, range(201, 601))
    daemon.writer.flush(daemon.projector, checkpoint=True)
    assert daemon.writer.drain()
    assert _checkpoint_lsn(home) == daemon.log.end_lsn
    assert len(load_audit(home, RUN_ID)["stages"]) == 200  # the head still says 200
    _crash(daemon)
    monkeypatch.undo()
    recovered = _daemon(home)  # nothing to replay: the checkpoint covers the whole log
    assert recovered.stats.replayed == 0
    assert recovered.writer.drain()
    audit = load_audit(home, RUN_ID)
    assert [stage["span"] for stage in audit["stages"]] == list(range(1, 601))
    recovered.release()


def _with_a_directory_in_place_of(home: Path, run_file: Path, put: Callable[[Path], object] = Path.mkdir) -> Daemon:
    """A daemon whose run has 10 stages written, then a directory (or what `put` makes) where
    `run_file` was, then 10 more stages flushed."""
    daemon = _daemon(home)
    _ingest(daemon, range(1, 11))
    daemon.flush(final=True)
    run_file.unlink()
    put(run_file)
    _ingest(daemon, range(11, 21))
    daemon.flush(final=True)
    return daemon


def test_a_run_whose_audit_trail_cannot_be_written_costs_only_its_trail(home: Path) -> None:
    """A directory where a run's audit.json goes (or its stages.jsonl deleted by hand) is that
    run's problem: reported and counted, while every other write goes on. It halted the whole
    queue, retrying the trail forever, and no row of any run reached Parquet again."""
    audit = DaemonHome(home).audit(RUN_ID)
    daemon = _with_a_directory_in_place_of(home, audit)
    _ingest(daemon, range(21, 31))
    daemon.flush(final=True)
    assert not daemon.writer.threads.jobs.halted
    assert daemon.stats.write_errors == 2  # the trail, at each flush that rewrote it
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 31))
    assert _checkpoint_lsn(home) == daemon.log.end_lsn
    audit.rmdir()  # put right: the run's next change writes its trail again
    _ingest(daemon, range(31, 41))
    daemon.flush(final=True)
    assert sorted(stage["span"] for stage in load_audit(home, RUN_ID)["stages"]) == list(range(1, 41))
    daemon.release()


def test_a_stages_file_deleted_by_hand_leaves_a_valid_trail_without_its_stages(home: Path) -> None:
    """The lines the checkpoint counts are gone: the file goes on from the same offsets, padded
    with spaces (valid JSON lines, and a valid audit trail; extending it left zeros, and every
    later audit.json was invalid JSON). The lost stages are still in the rows and the log."""
    daemon = _daemon(home)
    _ingest(daemon, range(1, 11))
    daemon.flush(final=True)
    DaemonHome(home).stage_lines(RUN_ID).unlink()
    _ingest(daemon, range(11, 21))
    daemon.flush(final=True)
    assert not daemon.writer.threads.jobs.halted
    audit = load_audit(home, RUN_ID)
    assert [stage["span"] for stage in audit["stages"]] == list(range(11, 21))
    assert not any("damaged" in problem for problem in audit["problems"])
    lines = DaemonHome(home).stage_lines(RUN_ID).read_text().splitlines()
    assert [json.loads(line)["span"] for line in lines] == list(range(11, 21))
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 21))
    daemon.release()


@pytest.mark.parametrize("put", [Path.mkdir, os.mkfifo], ids=["directory", "fifo"])
def test_a_directory_where_a_runs_stages_file_goes_costs_only_that_run(home: Path, put: Any) -> None:
    """A FIFO's open for writing waited for a reader for ever: the disk thread stopped there,
    no row of any run was written again, and the daemon no longer stopped on SIGTERM."""
    lines = DaemonHome(home).stage_lines(RUN_ID)
    daemon = _with_a_directory_in_place_of(home, lines, put)
    assert not daemon.writer.threads.jobs.halted and daemon.stats.write_errors >= 1
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 21))
    # Put right: the file goes on at its offsets, the lost stages as spaces.
    lines.rmdir() if lines.is_dir() else lines.unlink()
    _ingest(daemon, range(21, 31))
    daemon.flush(final=True)
    audit = load_audit(home, RUN_ID)
    assert [stage["span"] for stage in audit["stages"]] == list(range(21, 31))
    assert not any("damaged" in problem for problem in audit["problems"])
    daemon.release()


def test_one_pass_runs_at_a_time_and_a_stopped_thread_starts_none() -> None:
    passes, steps_done, go = PassThread("test-passes"), [], threading.Event()

    def held_pass():
        steps_done.append("first")
        go.wait(10)
        yield
        steps_done.append("second")
        yield

    assert passes.start(held_pass)
    assert not passes.start(held_pass)  # two merge passes would plan the same parts
    go.set()
    passes.wait()
    assert steps_done == ["first", "second"] and not passes.running
    assert passes.start(held_pass)
    passes.wait()
    passes.stop()
    assert not passes.start(held_pass)
    assert steps_done == ["first", "second", "first", "second"]


def test_a_write_that_fails_leaves_no_temporary_file(home: Path) -> None:
    """An audit trail whose stages.jsonl is gone (its run removed meanwhile) is not written, and
    its .audit.json.tmp does not stay behind (nothing would ever remove it)."""
    target = DaemonHome(home).audit("5b0c3f5e-8a51-4c2b-9d0e-6f1a2b3c4d5e")
    with pytest.raises(FileNotFoundError), replacing(target) as out:
        out.write(b"{")
        target.with_name("stages.jsonl").read_bytes()
    assert list(target.parent.iterdir()) == []
