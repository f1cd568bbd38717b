"""The disk thread: the read models' writes in order, halted by the first refused write and
retried from it, and a checkpoint never on disk ahead of a write it accounts for."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import msgpack

from stagewatch._home import Home
from stagewatch.daemon import Daemon
from stagewatch.daemon._diskjobs import DiskJobs
from stagewatch.daemon._ingest import Group
from stagewatch.daemon._readmodels import read_table
from tests.daemon.test_compaction import _in_process_daemon, _stage_event


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
