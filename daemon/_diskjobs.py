"""The read models' disk writes, in order, on one thread beside the ingest loop.

Why a thread: a flush's writes (a Parquet part with its fsync, a long run's audit trail
copied whole, the checkpoint with its fsync) held the one ingest loop for 15-370 ms at
20,000 events/s, and every batch that arrived meanwhile waited for its acknowledgement.
The loop now encodes what to write (the state it reads is its own) and hands the bytes or
rows over; pyarrow, file copies and fsync release the GIL, so acknowledgements go on.

Order is the contract: jobs run one at a time in the order submitted, so a checkpoint is
on disk only after every row and line it accounts for. The first job that fails (a full
disk) halts the queue at that job: nothing after it runs, and the writer retries from it
once it has reported the error (`take_error`). Memory stays bounded: `submit` waits while
the queued jobs weigh more than `max_weight` (rows, for row jobs).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class DiskJobs:
    def __init__(self, max_weight: int) -> None:
        self.max_weight = max_weight
        self._jobs: deque[tuple[Callable[[], object], int]] = deque()
        self._weight = 0
        self._error: Exception | None = None  # the queue is halted on its first job
        self._closed = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], object], weight: int = 1) -> None:
        """Queue `job` after every job submitted before it (waits while the queue is full)."""
        with self._changed:
            while self._weight >= self.max_weight and self._error is None and self._jobs:
                self._changed.wait()
            self._jobs.append((job, weight))
            self._weight += weight
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
                job, weight = self._jobs[0]
            try:
                job()
                failed = None
            except Exception as error:  # halt: the writer reports it and retries from here
                failed = error
            with self._changed:
                if failed is None:
                    self._jobs.popleft()
                    self._weight -= weight
                else:
                    self._error = failed
                self._changed.notify_all()
