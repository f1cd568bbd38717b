"""Read-model writing: table commits, audit trails, the checkpoint and status.json.

The writer takes what the projection produced (rows, ended-stage lines, changed runs),
encodes it on the loop's thread (the state it reads is the loop's) and hands the writes to
one disk thread (`_diskjobs.DiskJobs`), in order, so that ingest keeps acknowledging while
rows are compressed and committed.

The invariant that makes recovery exact: a checkpoint at lsn C is queued only after the
commits of every row produced by the events before C (`flush` commits what it holds before
it queues the checkpoint, and the disk thread runs jobs in order, halting on a refused one),
and each commit records the lsn of its last row's event, V. Rows are produced in log order,
so a table holds exactly its rows of events up to V. Recovery replays from C (C <= V + 1 by
the order above) and drops the replayed rows of lsn <= V: none is lost, none is doubled. What the disk refuses
stays queued, in order, and is retried; the projection's state is never touched. It also
knows how much of each run's stages.jsonl the checkpoint accounts for (`stage_bytes`), so
that lines a crashed daemon wrote past its checkpoint are cut before replay appends them again.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict
from typing import Any

import msgpack
import pyarrow as pa
import pyarrow.compute as pc
from deltalake.exceptions import DeltaError
from loguru import logger

from stagewatch.daemon.base._derived import STATUS, clear_way
from stagewatch.daemon.base._disk import DiskStatus
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._stats import DaemonStats, WriteErrors
from stagewatch.daemon.base._throttle import CostThrottle
from stagewatch.daemon.ingest._eventlog import EventLog
from stagewatch.daemon.ingest._quarantine import Quarantine
from stagewatch.daemon.projection._projection import ROW_FIELDS, Projector, RunState
from stagewatch.daemon.tables._diskjobs import DiskJobs, PassThread
from stagewatch.daemon.tables._store import TABLES, Store, atomic_write, count_lines, with_dates
from stagewatch.daemon.tables._tables import DamagedTable, TableGone, deleted, has_log, table_path

# A running run's audit.json (its head) and the checkpoint are rewritten at most this often (and
# no more than 10x their cost allows: a head holds up to 10,000 errors, the checkpoint every
# running run). The price: a running run's trail, as readers assemble it, is up to this much
# behind (finished runs are written at once), and recovery replays up to this much more of the log.
REWRITE_INTERVAL_S = 5.0
# Errors by which the disk itself refuses a write (full, read-only, failing): the queue halts
# on them and retries, as every write behind would fail too. Any other error writing one
# run's audit trail or stage lines is that run's file: reported, and the writes behind it go on.
DISK_REFUSALS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
# Rows queued for the disk thread before the loop waits for it: four groups' worth under a
# flood (a turn takes up to 10,000 events), about 70 MB of tuples.
MAX_QUEUED_ROWS = 40_000
# A table's rows are committed at every flush (a second apart: a row is in the table about a
# second after its event) and, under a flood, whenever this many wait: each commit costs a log
# entry and a file per partition, so fewer and bigger ones keep the table and its log small.
COMMIT_ROWS = 25_000


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
        self.quarantine = quarantine
        self.finished_run_grace_s = finished_run_grace_s
        self.status_endpoint = status_endpoint
        self.checkpoint_extras = checkpoint_extras  # what ingest and liveness keep (dedup, daemon seq)
        self.checkpoint_lsn = -1  # the log position the last written checkpoint covers
        self.stage_bytes: dict[str, int] = {}  # run -> bytes of stages.jsonl its state accounts for
        # run -> the lines in those bytes (its ended stages), for the head: readers page without
        # counting 500 MB of lines. Unknown for runs of a checkpoint written before it (readers count).
        self.stage_lines: dict[str, int] = {}
        self.jobs = DiskJobs(MAX_QUEUED_ROWS)
        self.passes = PassThread("stagewatch-compaction")  # compaction and vacuum, beside the loop
        # What the disk thread leaves for the loop's thread (quarantining refused rows, costs):
        # deque appends and pops are atomic.
        self._done: deque[Callable[[], None]] = deque()
        self._checkpoint_queued = False
        self._dirty: set[str] = set()
        self._finished_at: dict[str, float] = {}
        self._throttle = CostThrottle(min_interval_s=REWRITE_INTERVAL_S)
        self._withdrawn: dict[str, set[int]] = {}  # run -> lsns of losses whose rows are still to delete
        # Rows encoded for the next commit of each table; and per table, the lsn up to which it
        # already holds the rows (read at recovery: replayed rows up to it are dropped).
        self._uncommitted: dict[str, list[pa.Table]] = {}
        self.committed_lsn: dict[str, int] = {}
        # Tables found damaged or deleted while the daemon runs (table -> why): the daemon sets
        # them aside and rebuilds them from the event log (`take_unusable`, `start_over`).
        self.unusable: dict[str, str] = {}
        self._tables_present: set[str] = set()  # the tables with a log at the last flush

    def load(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint's part of the writer's state (older checkpoints kept it per run)."""
        runs = checkpoint.get("projector", {}).get("runs", {})
        legacy = {run_id: run["stages_bytes"] for run_id, run in runs.items() if "stages_bytes" in run}
        self.stage_bytes = dict(checkpoint.get("stage_bytes", legacy))
        self.stage_lines = dict(checkpoint.get("stage_lines", {}))

    def reopen(self, projector: Projector, run_id: str) -> bool:
        """Give a closed run back to the projection from its audit trail (written before it
        was evicted), with its stages.jsonl accounted for; False if the trail is unreadable
        or not yet written (the event then stays counted as late)."""
        if not self.drain(passes=False):
            return False
        lines = self.home.stage_lines(run_id)
        try:
            run = RunState.from_state(json.loads(self.home.audit(run_id).read_text()))
            written = lines.stat().st_size if lines.exists() else 0
        except (OSError, ValueError, KeyError, TypeError):
            return False
        projector.reopen(run)
        self.stage_bytes[run_id] = written
        self.stage_lines[run_id] = count_lines(lines, written)
        self._finished_at.pop(run_id, None)
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
            self._find_deleted_tables()
            self._collect()
            self._write_output(projector, commit=True)
            self._write_audits(projector, final)
            self._evict_finished_runs(projector)
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
            self._table_unusable(error)
            return False
        return True

    def uncommitted_rows(self) -> int:
        """Rows encoded and waiting for their table's next commit."""
        return sum(part.num_rows for parts in self._uncommitted.values() for part in parts)

    def drain(self, passes: bool = True) -> bool:
        """Wait for every queued write, and with `passes` for the maintenance pass under way
        (`beside`); False if a write failed (the queue stays halted on it until the next flush
        reports the error and retries)."""
        drained = self.jobs.drain()
        if passes:
            self.passes.wait()
        self._take_done()
        return drained

    def stop_passes(self) -> None:
        """End the maintenance pass under way after its current step, and start no other."""
        self.passes.stop()
        self._take_done()

    def close(self) -> None:
        self.passes.stop()
        self.jobs.close()

    def flush_output(self, projector: Projector, commit: bool = False) -> None:
        """Queue only the ended stages and rows: between two flushes under a flood, this is
        what keeps the projection's pending output (about 1.7 KB a stage) bounded; with
        `commit` (the loop idle after a burst) the rows are committed too, visible at once."""
        self._write_output(projector, commit=commit)

    def checkpoint_all(self, projector: Projector) -> None:
        """Flush everything with a checkpoint and wait for it."""
        self.flush(projector, final=True)
        self.drain(passes=False)

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
            self._done.append(functools.partial(self.write_error, f"cannot {what} ({{}}); will retry", error))
        except DamagedTable as error:  # found by a compaction: rebuilt by the daemon
            self._done.append(functools.partial(self._table_unusable, error))
        except Exception:  # a bug: logged and counted, and the writes behind it go on
            logger.exception("internal error in the disk thread's {} (the daemon keeps running)", what)
            self._done.append(self._count_internal_error)

    def _count_internal_error(self) -> None:
        self.stats.internal_errors += 1

    def flush_during_replay(self, projector: Projector, event_ns: int) -> None:
        """Bound memory while replaying a long log. A finished run is forgotten once the log
        has moved `finished_run_grace_s` past its end (event time, so the result does not
        depend on how fast the replay runs). A refused write stops the replay (raised here),
        rather than the rest of the log queueing up in memory behind it."""
        self._collect()
        self._write_output(projector, commit=False)
        self._write_audits(projector, final=False)
        grace_ns = int(self.finished_run_grace_s * 1e9)
        runs = projector.runs
        self._evict(projector, [r for r in projector.finished_runs() if runs[r].end_ns < event_ns - grace_ns])

    def _collect(self) -> None:
        """Take in what the disk thread finished; raise the error it halted on (it retries
        that write from now on)."""
        self._take_done()
        error = self.jobs.take_error()
        if error is not None:
            raise error

    def _take_done(self) -> None:
        while self._done:
            self._done.popleft()()

    def _write_output(self, projector: Projector, commit: bool = False) -> None:
        """Queue ended stages and table rows; the stages first, as the rows point at them.
        Rows are committed with `commit`, or where `COMMIT_ROWS` of a table wait."""
        rows, lines = projector.take_output()
        for run_id in projector.take_expired():
            self._forget(run_id)
        for run_id, data in lines.items():
            start = self.stage_bytes.get(run_id, 0)
            self.stage_bytes[run_id] = start + len(data)
            if start == 0 or run_id in self.stage_lines:
                self.stage_lines[run_id] = self.stage_lines.get(run_id, 0) + data.count(b"\n")
            write = functools.partial(self.store.write_stage_lines, run_id, start, data)
            self.jobs.submit(functools.partial(self._run_file_write, run_id, "stage lines", write))
        for table, table_rows in rows.items():
            if table_rows:
                self._encode(table, table_rows)
        withdrawn = projector.take_withdrawn()
        for run_id, lsn in withdrawn:
            self._withdrawn.setdefault(run_id, set()).add(lsn)
        for table, pending in list(self._uncommitted.items()):
            if commit or self._withdrawn or sum(t.num_rows for t in pending) >= COMMIT_ROWS:
                self._commit(table)
        if self._withdrawn:
            self._delete_withdrawn_rows()

    def _encode(self, table: str, table_rows: list) -> None:
        """The rows as Arrow (building the columns holds the GIL, which the disk thread should
        not), less those the table holds already (a replay after a crash past its commit)."""
        parts, refused = self.store.arrow_parts(table, table_rows, ROW_FIELDS.get(table))
        for row, reason in refused:
            self.quarantine.keep_unprojectable(f"writing the {table} table", row["lsn"], row, reason)
        dated = with_dates(parts)
        held = self.committed_lsn.get(table, -1)
        if dated is not None and held >= 0:
            dated = dated.filter(pc.greater(dated["lsn"], held))
        if dated is not None and dated.num_rows:
            self._uncommitted.setdefault(table, []).append(dated)

    def _commit(self, table: str) -> None:
        """Queue one commit of the table's encoded rows, marked with their last lsn."""
        rows = pa.concat_tables(self._uncommitted.pop(table))
        lsn = pc.max(rows["lsn"]).as_py()
        existing = self.committed_lsn.get(table, -1) >= 0  # a commit before it made the table (jobs run in order)
        self.jobs.submit(functools.partial(self.store.commit, table, rows, lsn, existing), weight=rows.num_rows)
        self.committed_lsn[table] = lsn  # once the queue reaches the checkpoint queued after it

    def _delete_withdrawn_rows(self) -> None:
        """Delete the crash rows of losses withdrawn (a client declared lost sent again), once
        the rows queued before are committed: here, on the loop (it is rare: a pipeline that
        was stopped or suspended past the client timeout). Until they are gone no checkpoint
        is written, so a restart replays the withdrawal and deletes them then (a delete of
        rows already gone deletes nothing)."""
        if not self.drain(passes=False):
            return  # the disk refused a write: the next flush retries
        for run_id in sorted(self._withdrawn):
            try:
                self.store.delete_rows_of(run_id, self._withdrawn[run_id])
            except (OSError, DeltaError) as error:  # a full disk, say: retried at the next flush
                self.write_error(f"cannot delete the withdrawn crash rows of run {run_id} ({{}}); will retry", error)
                return
            del self._withdrawn[run_id]

    def _write_audits(self, projector: Projector, final: bool) -> None:
        self._dirty |= projector.take_dirty()
        now = time.monotonic()
        for run_id in sorted(self._dirty):
            run = projector.runs.get(run_id)
            if run is None:
                self._dirty.discard(run_id)
            elif final or run.complete or self._throttle.due(run_id, now):
                self._queue_audit(run)
                self._dirty.discard(run_id)

    def _queue_audit(self, run: RunState) -> None:
        """Queue the rewrite of a run's audit.json, its head: after the stage lines it
        accounts for (queued before it), and for a finished run before the checkpoint that may
        forget the run (recovery rewrites the head of every run its checkpoint holds)."""
        started = time.monotonic()
        head = run.audit_head(self.stage_bytes.get(run.run_id, 0), self.stage_lines.get(run.run_id))
        encoded_s = time.monotonic() - started
        run_id, start_ns = run.run_id, run.start_ns

        def job() -> None:  # on the disk thread
            started = time.monotonic()
            try:
                self.store.write_audit_head(run_id, start_ns, head)
            except OSError as error:
                self._refused_run_file(run_id, "audit trail", error)  # rewritten at the run's next change
                return
            self._done.append(functools.partial(self._spent, run_id, encoded_s + time.monotonic() - started))

        self.jobs.submit(job)

    def _run_file_write(self, run_id: str, what: str, write: Callable[[], object]) -> None:  # on the disk thread
        try:
            write()
        except OSError as error:
            self._refused_run_file(run_id, what, error)

    def _refused_run_file(self, run_id: str, what: str, error: OSError) -> None:  # on the disk thread
        """A write to one run's files failed. If the disk refused it, raise: the queue halts
        and retries, as every write behind it would fail too. Otherwise it is that run's file
        (a directory where its audit.json goes, its stages.jsonl deleted by hand): reported,
        and the writes behind it go on (stages.jsonl keeps its offsets: `write_stage_lines`)."""
        if error.errno in DISK_REFUSALS:
            raise error
        message = f"cannot write the {what} of run {run_id} ({{}}); its stages are in the event log and the tables"
        self._done.append(functools.partial(self.write_error, message, error))

    def _write_checkpoint(self, projector: Projector, final: bool) -> None:
        if self._withdrawn:
            return  # a checkpoint past a withdrawal whose rows are not yet deleted would keep them for good
        for table in list(self._uncommitted):
            self._commit(table)  # the invariant (module docstring): every row before the checkpoint committed
        if not final and (self._checkpoint_queued or not self._throttle.due("checkpoint", time.monotonic())):
            return
        started = time.monotonic()
        state = {
            "lsn": self.log.end_lsn,
            "projector": projector.to_state(),
            "stage_bytes": self.stage_bytes,
            "stage_lines": self.stage_lines,
            "tables": dict(self.committed_lsn),  # how far each table goes: a table found behind it lost rows
            **self.checkpoint_extras(),
        }
        data = msgpack.packb(state, use_bin_type=True)
        self._checkpoint_queued = True
        encoded_s = time.monotonic() - started
        lsn = state["lsn"]

        def job() -> None:  # on the disk thread
            started = time.monotonic()
            self.store.write_checkpoint_bytes(data)
            self._done.append(functools.partial(self._checkpoint_written, lsn, encoded_s + time.monotonic() - started))

        self.jobs.submit(job)

    def _checkpoint_written(self, lsn: int, cost_s: float) -> None:
        self.checkpoint_lsn = lsn
        self._checkpoint_queued = False
        self._spent("checkpoint", cost_s)

    def _spent(self, key: str, cost_s: float) -> None:
        now = time.monotonic()
        self._throttle.spent(key, now - cost_s, now)

    def _evict_finished_runs(self, projector: Projector) -> None:
        """A finished run stays in memory `finished_run_grace_s` (events that come late, a
        worker's spool say, still reach its audit trail), then only its audit trail remains."""
        now = time.monotonic()
        for run_id in projector.finished_runs():
            self._finished_at.setdefault(run_id, now)
        expired = [r for r, at in self._finished_at.items() if now - at >= self.finished_run_grace_s]
        for run_id in expired:
            del self._finished_at[run_id]
        self._evict(projector, [r for r in expired if r in projector.runs])

    def _evict(self, projector: Projector, run_ids: list[str]) -> None:
        # An evicted run's queued writes stay queued: a run reopened later waits for them (reopen).
        projector.evict(run_ids)
        for run_id in run_ids:
            self.stage_bytes.pop(run_id, None)
            self.stage_lines.pop(run_id, None)
            self._throttle.forget(run_id)

    def _forget(self, run_id: str) -> None:
        """Retention removed the run: nothing of it is written again."""
        self.stage_bytes.pop(run_id, None)
        self.stage_lines.pop(run_id, None)
        self._finished_at.pop(run_id, None)
        self._dirty.discard(run_id)
        self._throttle.forget(run_id)

    def _write_status(self, projector: Projector) -> None:
        active = [
            {"run_id": r.run_id, "pipeline": r.pipeline, "host": r.host, "started_at": r.started_at, "status": r.status}
            for r in projector.runs.values()
            if not r.complete
        ]
        status = {
            "pid": os.getpid(),
            "endpoint": self.status_endpoint,
            "updated_at": time.time(),
            "disk": asdict(self.disk),
            "stats": asdict(self.stats),
            "active_runs": active,
            "disk_writes_queued": self.jobs.queued,  # grows while the disk is slow or refuses writes
            "late_events": projector.late_events,
            "foreign_events": projector.foreign_events,
        }
        clear_way(STATUS, self.home)
        atomic_write(self.home.status, json.dumps(status, indent=1).encode())

    # -- tables damaged or deleted while the daemon runs ----------------------------------
    def _find_deleted_tables(self) -> None:
        """A table whose log was there at the last flush and is gone now was deleted by hand
        (readers find it empty): a few stat calls a flush. (A commit finds it too: TableGone.)"""
        present = {table for table in TABLES if has_log(table_path(self.home, table))}
        for table in sorted(self._tables_present - present):
            if deleted(table_path(self.home, table)):
                self._table_unusable(TableGone(table))
        self._tables_present = present

    def _table_unusable(self, error: DamagedTable) -> None:
        self.unusable.setdefault(error.table, error.why)  # said in the log once, when it is set aside

    def take_unusable(self) -> dict[str, str]:
        """The tables found damaged or deleted since last asked (table -> what is wrong). The
        caller sets them aside: which tables have a log is recorded anew at the next flush."""
        unusable, self.unusable = self.unusable, {}
        self._tables_present = set()
        return unusable

    def start_over(self) -> None:
        """Before the event log is replayed from its start in a running daemon (a table is
        rebuilt): the writes that can be done are waited for, and the rest dropped with
        everything encoded but not written (the replay writes them again, from a state read
        back from the tables: `committed_lsn` is the caller's to set)."""
        self.passes.wait()
        self.jobs.drain()
        self.jobs.discard()
        self._take_done()
        self._uncommitted.clear()
        self._withdrawn.clear()
        self._dirty.clear()
        self._finished_at.clear()
        self._checkpoint_queued = False
        self.committed_lsn.clear()
