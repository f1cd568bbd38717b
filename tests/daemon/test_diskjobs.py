"""The disk thread: the read models' writes in order, halted by the first refused write and
retried from it, and a checkpoint never on disk ahead of a write it accounts for."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import msgpack
import pytest

from stagewatch._home import Home
from stagewatch.daemon import Daemon, _store
from stagewatch.daemon._diskjobs import DiskJobs, PassThread
from stagewatch.daemon._ingest import Group
from stagewatch.daemon._readmodels import read_table
from stagewatch.daemon._store import Store, replacing
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


def _checkpoint_lsn(home: Path) -> int:
    return msgpack.unpackb(Home(home).checkpoint("checkpoint.msgpack").read_bytes())["lsn"]


def test_a_refused_part_keeps_the_checkpoint_behind_it_and_is_written_once_on_retry(home: Path) -> None:
    daemon = _daemon(home)
    _ingest(daemon, range(1, 11))
    daemon.flush(final=True)
    covered = _checkpoint_lsn(home)
    assert covered == daemon.log.end_lsn
    # A file where the table's folder goes: every part write is refused by the file system.
    table = Home(home).metrics / "stage_executions"
    shutil.move(table, home / "moved-away")
    table.write_bytes(b"")
    _ingest(daemon, range(11, 21))
    daemon.flush(final=True)  # rows, audit trail, checkpoint: queued behind the refused part
    assert daemon.writer.jobs.halted
    # status.json says what waits: the refused part, the audit trail and the checkpoint behind it
    assert json.loads(Home(home).status.read_text())["disk_writes_queued"] >= 3
    assert _checkpoint_lsn(home) == covered  # not past rows that are not on disk
    table.unlink()
    shutil.move(home / "moved-away", table)
    daemon.flush(final=True)  # reports the refusal, retries from the refused part on
    assert daemon.stats.write_errors == 1
    assert _checkpoint_lsn(home) == daemon.log.end_lsn
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 21))
    daemon.release()  # as kill -9: a recovery replays nothing twice
    recovered = _daemon(home)
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 21))
    recovered.release()


def _steps(name: str, count: int, done: list[str], first_step_waits: threading.Event | None = None):
    def make_steps():
        for step in range(count):
            if step == 0 and first_step_waits is not None:
                first_step_waits.wait(10)
            done.append(f"{name}{step}")
            yield

    return make_steps


def test_jobs_that_may_pass_run_before_long_jobs_and_the_rest_wait_for_them() -> None:
    jobs, done, go = DiskJobs(max_weight=10), [], threading.Event()
    jobs.submit(go.wait)  # the thread busy while the queue below is built
    jobs.submit_steps(_steps("a", 2, done))
    jobs.submit_steps(_steps("b", 2, done))
    jobs.submit(lambda: done.append("rows"), passes=True)
    jobs.submit(lambda: done.append("audit"))  # may not pass: it, and what is behind it, wait
    jobs.submit(lambda: done.append("more rows"), passes=True)
    go.set()
    assert jobs.drain()
    assert done == ["rows", "a0", "a1", "b0", "b1", "audit", "more rows"]
    jobs.close()


def test_a_long_job_still_gets_its_steps_while_jobs_that_may_pass_keep_coming() -> None:
    jobs, done, go = DiskJobs(max_weight=1000), [], threading.Event()
    jobs.submit_steps(_steps("long", 3, done, first_step_waits=go))
    for number in range(40):  # 2 s of row writes, queued behind it at once
        jobs.submit(lambda number=number: (time.sleep(0.05), done.append(f"rows{number}")), passes=True)
    go.set()
    assert jobs.drain()
    # A step at least every STEP_AT_LEAST_EVERY_S (0.25 s): the long job is done within about
    # 0.5 s, long before the last row write, not starved until they are all done.
    assert done.index("long2") < done.index("rows29")
    assert done.index("long1") > done.index("rows0")  # and the row writes did pass it
    jobs.close()


def test_a_long_job_whose_step_fails_halts_the_queue_and_starts_over_on_retry() -> None:
    jobs, done, starts = DiskJobs(max_weight=10), [], []

    def make_steps():
        starts.append(1)
        done.append("step0")
        yield
        if len(starts) == 1:
            raise OSError(28, "No space left on device")
        done.append("step1")

    jobs.submit_steps(make_steps)
    jobs.submit(lambda: done.append("behind"))
    assert not jobs.drain() and jobs.halted
    assert done == ["step0"]
    assert isinstance(jobs.take_error(), OSError)
    assert jobs.drain()
    assert done == ["step0", "step0", "step1", "behind"] and len(starts) == 2
    jobs.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the "kill -9"
def test_rows_and_the_checkpoint_pass_a_long_audit_copy_and_recovery_rewrites_the_trail(
    home: Path, monkeypatch
) -> None:
    """A running run's audit trail is copied in steps; the rows and the checkpoint queued
    behind it are written between them. Killed mid-copy, the checkpoint is ahead of the trail:
    recovery writes the trail again, with every stage."""
    daemon = _daemon(home)
    _ingest(daemon, range(1, 201))
    daemon.flush(final=True)
    assert daemon.writer.drain()
    copying, copied, killed = threading.Event(), threading.Event(), threading.Event()
    original = Store.audit_document_steps

    def slow_copy(store, document, ended_bytes):  # 1 KB steps of 50 ms: about 8 s for 400 stages
        for step in original(store, document, ended_bytes):
            if killed.is_set():
                raise SystemExit("kill -9")  # the disk thread ends here, mid-copy
            copying.set()
            time.sleep(0.05)
            yield step
        copied.set()

    monkeypatch.setattr(_store, "COPY_STEP_BYTES", 1024)
    monkeypatch.setattr(Store, "audit_document_steps", slow_copy)
    monkeypatch.setattr(daemon.writer._throttle, "due", lambda key, now: True)
    _ingest(daemon, range(201, 401))
    daemon.writer.flush(daemon.projector, checkpoint=True)
    assert copying.wait(10)
    _ingest(daemon, range(401, 601))
    daemon.writer.flush(daemon.projector, checkpoint=True)  # lines, rows, a checkpoint: they pass it

    deadline = time.monotonic() + 5
    while _checkpoint_lsn(home) < daemon.log.end_lsn and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _checkpoint_lsn(home) == daemon.log.end_lsn
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 601))
    assert not copied.is_set()  # all that while the copy went on
    assert len(json.loads(Home(home).audit(RUN_ID).read_text())["stages"]) == 200
    killed.set()
    daemon.writer.jobs._thread.join(10)
    _crash(daemon)
    monkeypatch.undo()
    recovered = _daemon(home)  # nothing to replay: the checkpoint covers the whole log
    assert recovered.stats.replayed == 0
    assert recovered.writer.drain()
    audit = json.loads(Home(home).audit(RUN_ID).read_text())
    assert sorted(stage["span"] for stage in audit["stages"]) == list(range(1, 601))
    recovered.release()


def _with_a_directory_in_place_of(home: Path, run_file: Path) -> Daemon:
    """A daemon whose run has 10 stages written, then a directory where `run_file` was, then
    10 more stages flushed."""
    daemon = _daemon(home)
    _ingest(daemon, range(1, 11))
    daemon.flush(final=True)
    run_file.unlink()
    run_file.mkdir()
    _ingest(daemon, range(11, 21))
    daemon.flush(final=True)
    return daemon


def test_a_run_whose_audit_trail_cannot_be_written_costs_only_its_trail(home: Path) -> None:
    """A directory where a run's audit.json goes (or its stages.jsonl deleted by hand) is that
    run's problem: reported and counted, while every other write goes on. It halted the whole
    queue, retrying the trail forever, and no row of any run reached Parquet again."""
    audit = Home(home).audit(RUN_ID)
    daemon = _with_a_directory_in_place_of(home, audit)
    _ingest(daemon, range(21, 31))
    daemon.flush(final=True)
    assert not daemon.writer.jobs.halted
    assert daemon.stats.write_errors == 2  # the trail, at each flush that rewrote it
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 31))
    assert _checkpoint_lsn(home) == daemon.log.end_lsn
    audit.rmdir()  # put right: the run's next change writes its trail again
    _ingest(daemon, range(31, 41))
    daemon.flush(final=True)
    assert sorted(stage["span"] for stage in json.loads(audit.read_text())["stages"]) == list(range(1, 41))
    daemon.release()


def test_a_stages_file_deleted_by_hand_leaves_a_valid_trail_without_its_stages(home: Path) -> None:
    """The lines the checkpoint counts are gone: the file goes on from the same offsets, padded
    with spaces (valid JSON lines, and a valid audit trail; extending it left zeros, and every
    later audit.json was invalid JSON). The lost stages are still in the rows and the log."""
    daemon = _daemon(home)
    _ingest(daemon, range(1, 11))
    daemon.flush(final=True)
    Home(home).stage_lines(RUN_ID).unlink()
    _ingest(daemon, range(11, 21))
    daemon.flush(final=True)
    assert not daemon.writer.jobs.halted
    audit = json.loads(Home(home).audit(RUN_ID).read_text())
    assert [stage["span"] for stage in audit["stages"]] == list(range(11, 21))
    lines = Home(home).stage_lines(RUN_ID).read_text().splitlines()
    assert [json.loads(line)["span"] for line in lines] == list(range(11, 21))
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 21))
    daemon.release()


def test_a_directory_where_a_runs_stages_file_goes_costs_only_that_run(home: Path) -> None:
    lines = Home(home).stage_lines(RUN_ID)
    daemon = _with_a_directory_in_place_of(home, lines)
    assert not daemon.writer.jobs.halted and daemon.stats.write_errors >= 1
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 21))
    lines.rmdir()  # put right: the file goes on at its offsets, the lost stages as spaces
    _ingest(daemon, range(21, 31))
    daemon.flush(final=True)
    audit = json.loads(Home(home).audit(RUN_ID).read_text())
    assert [stage["span"] for stage in audit["stages"]] == list(range(21, 31))
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
    target = Home(home).audit("5b0c3f5e-8a51-4c2b-9d0e-6f1a2b3c4d5e")
    with pytest.raises(FileNotFoundError), replacing(target) as out:
        out.write(b"{")
        target.with_name("stages.jsonl").read_bytes()
    assert list(target.parent.iterdir()) == []
