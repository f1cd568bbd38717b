"""Read-model writing: table commits (`_commits`), audit trails (`_audits`), the checkpoint
and status.json.

The writer takes what the projection produced (rows, ended-stage lines, changed runs),
encodes it on the loop's thread (the state it reads is the loop's) and hands the writes to
one disk thread (`_diskjobs.DiskThreads`), in order, so that ingest keeps acknowledging while
rows are compressed and committed.

The invariant that makes recovery exact: a checkpoint at lsn C is queued only after the
commits of every row produced by the events before C (`flush` commits what it holds before
it queues the checkpoint, and the disk thread runs jobs in order, halting on a refused one),
and each commit records the lsn of its last row's event, V. Rows are produced in log order,
so a table holds exactly its rows of events up to V. Recovery replays from C (C <= V + 1 by
the order above) and drops the replayed rows of lsn <= V: none is lost, none is doubled. What the disk refuses
stays queued, in order, and is retried; the projection's state is never touched. The checkpoint
also holds how much of each run's stages.jsonl it accounts for (`AuditTrails.stage_bytes`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import msgpack
from deltalake.exceptions import DeltaError

from stagewatch.daemon.base._derived import STATUS, clear_way
from stagewatch.daemon.base._disk import DiskStatus
from stagewatch.daemon.base._files import MAX_HEAD_BYTES, read_plain
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._stats import DaemonStats, WriteErrors
from stagewatch.daemon.base._throttle import CostThrottle
from stagewatch.daemon.ingest._eventlog import EventLog
from stagewatch.daemon.ingest._quarantine import Quarantine
from stagewatch.daemon.projection._projection import Projector
from stagewatch.daemon.projection._runstate import RunState
from stagewatch.daemon.tables._audits import AuditTrails
from stagewatch.daemon.tables._commits import TableCommits
from stagewatch.daemon.tables._diskjobs import DiskThreads
from stagewatch.daemon.tables._store import Store, atomic_write, count_lines
from stagewatch.daemon.tables._tables import DamagedTable
from stagewatch.daemon.tables._watch import TableWatch

# A running run's audit.json (its head) and the checkpoint are rewritten at most this often (and
# no more than 10x their cost allows: a head holds up to 10,000 errors, the checkpoint every
# running run). The price: a running run's trail, as readers assemble it, is up to this much
# behind (finished runs are written at once), and recovery replays up to this much more of the log.
REWRITE_INTERVAL_S = 5.0
# Rows queued for the disk thread before the loop waits for it: four groups' worth under a
# flood (a turn takes up to 10,000 events), about 70 MB of tuples.
MAX_QUEUED_ROWS = 40_000


class ReadModelWriter:
    def __init__(
        self,
        home: DaemonHome,
        log: EventLog,
        stats: DaemonStats,
        disk: DiskStatus,
        write_error: WriteErrors,
        quarantine: Quarantine,
        finished_run_grace_s: float,
        status_endpoint: str,
        checkpoint_extras: Callable[[], dict[str, Any]],
    ) -> None:
        self.home = home
        self.store = Store(home)
        self.log = log
        self.stats = stats
        self.disk = disk
        self.write_error = write_error
        self.status_endpoint = status_endpoint
        self.checkpoint_extras = checkpoint_extras  # what ingest and liveness keep (dedup, daemon seq)
        self.checkpoint_lsn = -1  # the log position the last written checkpoint covers
        self.rebuilding: dict[str, Any] | None = None  # said in every status.json until the rebuilt rows are on disk
        self.threads = DiskThreads(MAX_QUEUED_ROWS, stats, write_error)
        self._throttle = CostThrottle(min_interval_s=REWRITE_INTERVAL_S)
        self.audits = AuditTrails(self.store, self.threads, self._throttle, finished_run_grace_s)
        self.commits = TableCommits(self.store, self.threads, quarantine, write_error)
        self.watch = TableWatch(home)  # tables damaged or deleted while the daemon runs
        self.threads.damaged = self.watch.found
        self.commits.written = self.watch.written
        self._checkpoint_queued = False

    def reopen(self, projector: Projector, run_id: str) -> bool:
        """Give a closed run back to the projection from its audit trail (written before it
        was evicted), with its stages.jsonl accounted for; False if the trail is unreadable
        or not yet written (the event then stays counted as late)."""
        if not self.drain(passes=False):
            return False
        lines = self.home.stage_lines(run_id)
        try:
            run = RunState.from_state(json.loads(read_plain(self.home.audit(run_id), MAX_HEAD_BYTES)))
            written = lines.stat().st_size if lines.exists() else 0
        except (OSError, ValueError, KeyError, TypeError):
            return False
        projector.reopen(run)
        self.audits.reopened(run_id, written, count_lines(lines, written))
        return True

    # -- flushing ------------------------------------------------------------------------
    def flush(self, projector: Projector, final: bool = False, checkpoint: bool = False) -> bool:
        """Queue new rows, changed audit trails, then (when due, or asked for) the checkpoint.

        Rows are written every flush. A running run's audit trail and the checkpoint are
        rewritten as often as their cost allows (CostThrottle); a finished run's audit trail
        is written at once, and everything is written on shutdown (`final`). The writes
        happen on the disk thread: `drain` waits for them. False if the disk refused a write
        (reported; the queue retries it from now on) and this flush queued nothing after it.
        """
        try:
            self.watch.find_deleted()
            self.threads.collect()
            self.flush_output(projector, commit=True)
            self.audits.write_heads(projector, final)
            self.audits.evict_finished_runs(projector)
            self._write_checkpoint(projector, final or checkpoint)
            self._write_status(projector)
        except (OSError, DeltaError) as error:  # a full disk; a commit that kept conflicting
            self.write_error("cannot write read models ({}); will retry", error)
            # status.json still says so (doctor and `runs` read it): it lies beside the tables, and
            # its write is a small file of its own, not behind the halted queue.
            with contextlib.suppress(OSError):
                self._write_status(projector)
            return False
        except DamagedTable as error:  # the queue stays halted on it until the daemon rebuilds the table
            self.watch.found(error)
            return False
        return True

    def start_over(self) -> None:
        """Before the event log is replayed from its start in a running daemon (a table is
        rebuilt): the writes that can be done are waited for, the rest dropped with what is
        encoded and not written; the replay writes them again (`commits.committed_lsn` is the
        caller's to read back from the tables)."""
        self.threads.start_over()
        self.commits.start_over()
        self.audits.start_over()
        self._checkpoint_queued = False

    def drain(self, passes: bool = True) -> bool:
        """Wait for every queued write (`DiskThreads.drain`)."""
        return self.threads.drain(passes)

    def flush_output(self, projector: Projector, commit: bool = False) -> None:
        """Queue only the ended stages and rows, the stages first, as the rows point at them:
        between two flushes under a flood, this is what keeps the projection's pending output
        (about 1.7 KB a stage) bounded; with `commit` (the loop idle after a burst) the rows
        are committed too, visible at once."""
        output = projector.output
        rows, lines = output.take()
        for run_id in output.take_expired():
            self.audits.forget(run_id)
        self.audits.append_lines(lines)
        self.commits.add(rows, output.take_withdrawn(), commit)

    def checkpoint_all(self, projector: Projector) -> None:
        """Flush everything with a checkpoint and wait for it."""
        self.flush(projector, final=True)
        self.drain(passes=False)

    def flush_during_replay(self, projector: Projector, event_ns: int) -> None:
        """Bound memory while replaying a long log. A finished run is forgotten once the log
        has moved `finished_run_grace_s` past its end (event time, so the result does not
        depend on how fast the replay runs). A refused write stops the replay (raised here),
        rather than the rest of the log queueing up in memory behind it."""
        self.threads.collect()
        self.flush_output(projector)
        self.audits.write_heads(projector, final=False)
        grace_ns = int(self.audits.finished_run_grace_s * 1e9)
        runs = projector.runs
        self.audits.evict(projector, [r for r in projector.finished_runs() if runs[r].end_ns < event_ns - grace_ns])

    def _write_checkpoint(self, projector: Projector, final: bool) -> None:
        if self.commits.withdrawals_pending:
            return  # a checkpoint past a withdrawal whose rows are not yet deleted would keep them for good
        self.commits.commit_all()  # the invariant (module docstring): every row before the checkpoint committed
        if not final and (self._checkpoint_queued or not self._throttle.due("checkpoint", time.monotonic())):
            return
        started = time.monotonic()
        state = {
            "lsn": self.log.end_lsn,
            "projector": projector.to_state(),
            **self.audits.state(),
            "tables": dict(self.commits.committed_lsn),  # how far each table goes: a table found behind it lost rows
            **self.checkpoint_extras(),
        }
        data = msgpack.packb(state, use_bin_type=True)
        self._checkpoint_queued = True
        encoded_s = time.monotonic() - started
        lsn = state["lsn"]

        def job() -> None:  # on the disk thread
            started = time.monotonic()
            self.store.write_checkpoint_bytes(data)
            cost_s = encoded_s + time.monotonic() - started
            self.threads.then(functools.partial(self._checkpoint_written, lsn, cost_s))

        self.threads.submit(job)

    def _checkpoint_written(self, lsn: int, cost_s: float) -> None:
        self.checkpoint_lsn = lsn
        self._checkpoint_queued = False
        now = time.monotonic()
        self._throttle.spent("checkpoint", now - cost_s, now)

    def write_stopped(self, projector: Projector) -> None:
        """status.json's last word from a daemon that stops cleanly: when it stopped, so that a
        reader tells a daemon that stopped from one that went silent (killed, or stuck). On a full
        disk it is not written: readers then see a silent daemon, not a stopped one."""
        with contextlib.suppress(OSError):
            self._write_status(projector, {"stopped_at": time.time()})

    def write_rebuilding(self, projector: Projector, rebuilding: dict[str, Any] | None) -> None:
        """status.json while tables are rebuilt from the event log (`Rebuilding`): readers say
        that those tables' rows are partial until it is done; None once the rows are on disk."""
        self.rebuilding = rebuilding
        self._write_status(projector)

    def _write_status(self, projector: Projector, extra: dict[str, Any] | None = None) -> None:
        status = {
            "pid": os.getpid(),
            "endpoint": self.status_endpoint,
            "updated_at": time.time(),
            "disk": asdict(self.disk),
            "stats": asdict(self.stats),
            "active_runs": [
                {
                    "run_id": r.run_id,
                    "pipeline": r.pipeline,
                    "host": r.host,
                    "started_at": r.started_at,
                    "status": r.status,
                }
                for r in projector.runs.values()
                if not r.complete
            ],
            "disk_writes_queued": self.threads.jobs.queued,  # grows while the disk is slow or refuses writes
            "late_events": projector.late_events,
            "foreign_events": projector.foreign_events,
            "tables": self.watch.held(),  # a reader tells a table deleted from one never written
        }
        status |= ({"rebuilding": self.rebuilding} if self.rebuilding else {}) | (extra or {})
        clear_way(STATUS, self.home)
        atomic_write(self.home.status, json.dumps(status, indent=1).encode())


class Rebuilding:
    """What status.json says while the daemon rebuilds tables from its event log: which, since
    when, and how far (bytes of the log replayed, of the bytes to replay), written at most once
    a `REPORT_INTERVAL_S` (the replay calls `said` often). The runs it lists running are those
    known before the rebuild (the replay's projector holds only those replayed so far)."""

    REPORT_INTERVAL_S = 1.0

    def __init__(
        self, tables: list[str], writer: ReadModelWriter, projector: Projector, alive: Callable[[], object]
    ) -> None:
        self.tables = tables
        self.writer = writer
        self.projector = projector
        self.alive = alive  # the watchdog's ping, at each step of the replay
        self.since = time.time()
        self._next_report = 0.0
        self.said(0, 0)  # at once, before the tables are moved: a reader meeting none knows why

    def said(self, replayed: int, total: int) -> None:
        self.alive()
        now = time.monotonic()
        if not self.tables or now < self._next_report:
            return
        self._next_report = now + self.REPORT_INTERVAL_S
        state = {"tables": self.tables, "since": self.since, "replayed_bytes": replayed, "log_bytes": total}
        with contextlib.suppress(OSError):  # a full disk: the rebuild goes on, readers are not told
            self.writer.write_rebuilding(self.projector, state)

    @contextlib.contextmanager
    def until_written(self, projector: Callable[[], Projector]) -> Iterator[None]:
        """Said until the block (the replay, then the flush that waits for its rows) has ended:
        the rows reach the tables through the disk thread, after the replay."""
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                self.writer.write_rebuilding(projector(), None)
