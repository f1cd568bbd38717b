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
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass


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
