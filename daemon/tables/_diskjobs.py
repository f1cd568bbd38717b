"""The read models' disk writes, in order, on one thread beside the ingest loop.

Why a thread: a flush's writes (a table commit, a long run's audit trail
copied whole, as it once was, the checkpoint with its fsync) held the one ingest loop for 15-370 ms at
20,000 events/s, and every batch that arrived meanwhile waited for its acknowledgement.
The loop now encodes what to write (the state it reads is its own) and hands the bytes or
rows over; pyarrow, file copies and fsync release the GIL, so acknowledgements go on.

Order is the contract: jobs run one at a time in the order submitted, so a checkpoint is
on disk only after every row and line it accounts for. The first job that fails (a full
disk) halts the queue at that job: nothing after it runs, and the writer retries from it
once it has reported the error (`take_error`). Memory stays bounded: `submit` waits while
the queued jobs weigh more than `max_weight` (rows, for row jobs).

No job is long: a run's audit trail is written as its head (its ended stages stay in
stages.jsonl, appended once), so nothing of a run's size is copied here.

Maintenance passes (compaction, vacuum of the Delta tables) are not in the queue: they run on
a thread of their own (`PassThread`), their commits rebasing over the queue's.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

from deltalake.exceptions import DeltaError
from loguru import logger

from stagewatch.daemon.base._stats import DaemonStats, WriteErrors
from stagewatch.daemon.tables._tables import DamagedTable

# Errors by which the disk itself refuses a write (full, read-only, failing): the queue halts
# on them and retries, as every write behind would fail too. Any other error writing one
# run's audit trail or stage lines is that run's file: reported, and the writes behind it go on.
DISK_REFUSALS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


@dataclass
class _Job:
    run: Callable[[], object]
    weight: int


class DiskJobs:
    def __init__(self, max_weight: int) -> None:
        self.max_weight = max_weight
        self._jobs: deque[_Job] = deque()
        self._weight = 0
        self._error: Exception | None = None  # the queue is halted on its first job
        self._closed = False
        self._running = False  # the first job is running (it stays in the queue until done)
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, run: Callable[[], object], weight: int = 1) -> None:
        """Queue `run` after every job submitted before it (waits while the queue is full)."""
        job = _Job(run, weight)
        with self._changed:
            while self._weight >= self.max_weight and self._error is None and self._jobs:
                self._changed.wait()
            self._jobs.append(job)
            self._weight += job.weight
            self._changed.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stagewatch-disk-writer", daemon=True)
            self._thread.start()

    @property
    def queued(self) -> int:
        """Jobs not yet done (the one running included)."""
        return len(self._jobs)

    @property
    def halted(self) -> bool:
        return self._error is not None

    def take_error(self) -> Exception | None:
        """The error the queue halted on, if any; the queue then retries the job that failed."""
        with self._changed:
            error, self._error = self._error, None
            self._changed.notify_all()
        return error

    def drain(self) -> bool:
        """Wait until every queued job is done; False if the queue halted on an error."""
        with self._changed:
            while self._jobs and self._error is None:
                self._changed.wait()
            return not self._jobs

    def discard(self) -> int:
        """Drop every job not yet run, and the error the queue halted on (once the job running,
        if any, is done): a daemon that replays the event log from its start writes again what
        they held. How many were dropped."""
        with self._changed:
            while self._running:
                self._changed.wait()
            dropped = len(self._jobs)
            self._jobs.clear()
            self._weight = 0
            self._error = None
            self._changed.notify_all()
        return dropped

    def close(self) -> None:
        """Stop the thread once the jobs it can run are done (a halted queue is left as it is)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._closed and (not self._jobs or self._error is not None):
                    self._changed.wait()
                if not self._jobs or self._error is not None:
                    return  # closed
                job = self._jobs[0]
                self._running = True
            try:
                job.run()
                failed = None
            except Exception as error:  # halt: the writer reports it and retries from here
                failed = error
            with self._changed:
                self._running = False
                if failed is not None:
                    self._error = failed
                else:
                    self._jobs.popleft()
                    self._weight -= job.weight
                self._changed.notify_all()


class PassThread:
    """Long maintenance passes beside the disk queue, one at a time, each on a thread of its
    own: a compaction reads and writes Parquet in delta-rs, which releases the GIL, so it
    takes the other core instead of the disk thread's turns (as a job in the queue, a pass of
    the merges it replaced held the row writes behind it and the loop stopped acknowledging)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, make_steps: Callable[[], Generator[object, None, None]]) -> bool:
        """Run the steps of `make_steps()` on a new thread, unless a pass is still running or
        the passes are stopped (False: the next pass will plan again)."""
        if self.running or self._stopping.is_set():
            return False
        self._thread = threading.Thread(target=self._run, args=(make_steps,), name=self.name, daemon=True)
        self._thread.start()
        return True

    def _run(self, make_steps: Callable[[], Generator[object, None, None]]) -> None:
        with contextlib.closing(make_steps()) as steps:  # closed at once when stopped
            for _ in steps:
                if self._stopping.is_set():
                    return

    def wait(self) -> None:
        """Until the pass under way, if any, is done."""
        thread = self._thread
        if thread is not None:
            thread.join()

    def stop(self) -> None:
        """End the pass under way after its current step, and start no other."""
        self._stopping.set()
        self.wait()


class DiskThreads:
    """The writer's two threads, the ordered disk queue (`DiskJobs`) and the maintenance passes
    (`PassThread`), and what they leave for the loop's thread (errors to report, costs to
    count: `then`), run there by `take_done`. Deque appends and pops are atomic."""

    def __init__(self, max_weight: int, stats: DaemonStats, write_error: WriteErrors) -> None:
        self.jobs = DiskJobs(max_weight)
        self.passes = PassThread("stagewatch-compaction")  # compaction and vacuum, beside the loop
        self.stats = stats
        self.write_error = write_error
        self.damaged: Callable[[DamagedTable], None] = lambda error: None  # the writer's table watch
        self._done: deque[Callable[[], None]] = deque()

    def start_over(self) -> None:
        """Wait for the writes that can be done and the pass under way; drop the rest (the
        event log is replayed from its start: its writes are queued again)."""
        self.passes.wait()
        self.jobs.drain()
        self.jobs.discard()
        self.take_done()

    def submit(self, job: Callable[[], object], weight: int = 1) -> None:
        """Queue `job` on the disk thread after every job queued before it."""
        self.jobs.submit(job, weight)

    def then(self, action: Callable[[], None]) -> None:
        """From the disk thread or a pass: run `action` on the loop's thread (`take_done`)."""
        self._done.append(action)

    def take_done(self) -> None:
        while self._done:
            self._done.popleft()()

    def collect(self) -> None:
        """Take in what the threads finished; raise the error the queue halted on (it retries
        that write from now on)."""
        self.take_done()
        error = self.jobs.take_error()
        if error is not None:
            raise error

    def drain(self, passes: bool = True) -> bool:
        """Wait for every queued write, and with `passes` for the maintenance pass under way
        (`beside`); False if a write failed (the queue stays halted on it until the next flush
        reports the error and retries)."""
        drained = self.jobs.drain()
        if passes:
            self.passes.wait()
        self.take_done()
        return drained

    def stop_passes(self) -> None:
        """End the maintenance pass under way after its current step, and start no other."""
        self.passes.stop()
        self.take_done()

    def close(self) -> None:
        self.passes.stop()
        self.jobs.close()

    def submit_run_file(
        self, run_id: str, what: str, write: Callable[[], object], then: Callable[[float], None] | None = None
    ) -> None:
        """Queue a write to one run's files; `then(seconds it took)` on the loop's thread once
        done. If the disk refuses it, the queue halts and retries, as every write behind it
        would fail too. Otherwise it is that run's file (a directory where its audit.json goes,
        its stages.jsonl deleted by hand): reported, and the writes behind it go on
        (stages.jsonl keeps its offsets: `Store.write_stage_lines`)."""

        def job() -> None:  # on the disk thread
            started = time.monotonic()
            try:
                write()
            except OSError as error:
                if error.errno in DISK_REFUSALS:
                    raise
                message = (
                    f"cannot write the {what} of run {run_id} ({{}}); its stages are in the event log and the tables"
                )
                self.then(functools.partial(self.write_error, message, error))
                return
            if then is not None:
                self.then(functools.partial(then, time.monotonic() - started))

        self.jobs.submit(job)

    def beside(self, steps: Callable[[], Iterator[object]], what: str) -> None:
        """Run `steps()` (a maintenance pass: compaction, vacuum) on a thread of its own
        (`PassThread`), without the loop or the disk queue waiting: Delta commits of both
        threads rebase over each other. While a pass runs, the next one is not started."""

        def guarded_steps() -> Generator[object, None, None]:
            with self._reported(what):
                yield from steps()

        self.passes.start(guarded_steps)

    def in_background(self, job: Callable[[], object], what: str) -> None:
        """Run maintenance (`job`) on the disk thread after the writes queued so far. What it
        raises is reported from the loop and never halts the writes queued behind it."""

        def guarded() -> None:
            with self._reported(what):
                job()

        self.jobs.submit(guarded)

    @contextlib.contextmanager
    def _reported(self, what: str) -> Iterator[None]:  # on the disk thread, or a pass's
        try:
            yield
        except (OSError, DeltaError) as error:  # a full disk, say: the next pass tries again
            self.then(functools.partial(self.write_error, f"cannot {what} ({{}}); will retry", error))
        except DamagedTable as error:  # found by a compaction: the daemon rebuilds the table
            self.then(functools.partial(self.damaged, error))
        except Exception:  # a bug: logged and counted, and the writes behind it go on
            logger.exception("internal error in the disk thread's {} (the daemon keeps running)", what)
            self.then(self._count_internal_error)

    def _count_internal_error(self) -> None:
        self.stats.internal_errors += 1


def timed(steps: Iterator[object], into: list[float]) -> Iterator[object]:
    """`steps`, with the time each took appended to `into` (not the time between them, when
    other work may run): what a pass's own cost is."""
    while True:
        started = time.monotonic()
        step = next(steps, _DONE)
        into.append(time.monotonic() - started)
        if step is _DONE:
            return
        yield step


_DONE = object()
