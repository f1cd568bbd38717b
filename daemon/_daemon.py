"""The daemon: wires its parts and runs the loop.

    ingest       (_ingest.py)      bind; decode → de-duplicate → log → fsync → acknowledge
    projection   (_projection.py)  the pure fold of events into run state and rows
    writer       (_writer.py)      table commits, audit trails, checkpoint, status.json
    tables       (_tables.py)      the Delta tables: appends, deletes, compaction, snapshots
    disk thread  (_diskjobs.py)    the writer's writes, in order, beside the loop
    maintenance  (_maintenance.py) liveness, disk, retention, compaction, vacuum, watchdog
    worker       (_worker.py)      the accuracy worker, a child process

One loop: each turn ingests what the socket holds, then runs the periodic tasks that are
due (a flush of the read models about once a second among them, whose writes one disk
thread carries out in order while the loop goes on acknowledging). On start
the daemon recovers: the log's torn tail is cut, the checkpoint loaded, and what follows
it replayed, so a restart costs only the events since the last checkpoint.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from stagewatch._gpu import host_gpu_problem
from stagewatch._protocol import DAEMON_CLIENT_ID, RUN_EXPIRED
from stagewatch._records import ScanStats
from stagewatch.daemon.accuracy._worker import WorkerProcess
from stagewatch.daemon.base._derived import (
    ACCURACY_CHECKPOINT,
    DAEMON_CHECKPOINT,
    DAEMON_FILES,
    DAMAGE_ERRORS,
    WrongShape,
    describe,
    load,
    repair,
    set_aside,
)
from stagewatch.daemon.base._disk import DiskStatus
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._lock import HomeLock
from stagewatch.daemon.base._sdnotify import SystemdNotifier
from stagewatch.daemon.base._settings import DiskSection, RetentionSection
from stagewatch.daemon.base._stats import DaemonStats, WriteErrors
from stagewatch.daemon.ingest._decode import Rejected, decode_event
from stagewatch.daemon.ingest._dedup import Deduplicator
from stagewatch.daemon.ingest._eventlog import EventLog
from stagewatch.daemon.ingest._ingest import Ingest, IngestSettings
from stagewatch.daemon.ingest._quarantine import Quarantine
from stagewatch.daemon.maintenance._maintenance import SCRUB_INTERVAL_S, Background, Maintenance, Scheduler
from stagewatch.daemon.projection._projection import Projector
from stagewatch.daemon.tables._store import DAEMON_TABLES, TABLES
from stagewatch.daemon.tables._tables import DAEMON_APP, committed_lsn, unusable_tables
from stagewatch.daemon.tables._tables import set_aside as set_table_aside
from stagewatch.daemon.tables._writer import ReadModelWriter

REPLAY_FLUSH_EVENTS = 100_000
POLL_MS = 100
# Rows waiting for the next flush are queued for writing at once past this many. Memory: at
# 50k events/s a second of ended stages held about 90 MB (benchmarks/flood.py's RSS). Latency:
# encoding them holds the loop 4-7 us a row, so at 10,000 events/s a flush a second held it
# 30-50 ms and ack p99 was 30-37 ms; in steps of 2,500 rows it is 11-12 ms (they are committed
# together, `_writer.COMMIT_ROWS`; benchmarks/ingest_costs.py).
MAX_PENDING_ROWS = 2_500
# After a burst, the rows left pending (produced, or encoded and not committed yet) are committed
# once the loop has waited a poll (POLL_MS) with nothing to do, rather than at the next periodic
# flush; a trickle below this many rows waits for the periodic flush.
IDLE_FLUSH_ROWS = 500


# Events that do not give a closed run back to the projection: retention's run_expired forgets
# the run (reopening it would read its trail for nothing). A heartbeat does reopen one: clients
# send them for open runs only, so a closed run hears one only from a client it lost (paused),
# and the heartbeat's reading and its end of the loss must fold as a replay folds them, with
# the run in memory (a rebuild once differed from the live trail in `last_rss_mb`).
NOT_REOPENING = frozenset({RUN_EXPIRED})


@dataclass(frozen=True)
class DaemonSettings:
    home: Path
    endpoint: str
    live_endpoint: str
    client_timeout_s: float = 15.0  # no batch for this long with open work: client lost
    flush_interval_s: float = 1.0
    spool_scan_interval_s: float = 2.0
    max_frame_bytes: int = 16 * 1024 * 1024  # larger frames are dropped before decoding
    max_group_events: int = 10_000
    # A finished run stays in memory this long, so that events that come late (a worker's
    # spool, say) still reach its audit trail.
    finished_run_grace_s: float = 120.0
    # How often the tables' small files are compacted (a pass beside the loop; the partitions
    # holding many small files only, `_tables.compact`), and old files vacuumed.
    merge_interval_s: float = 10.0
    # Pipelines of other users in the home's group may connect and write (systemd service).
    group_access: bool = False
    # The accuracy worker (stagewatch.daemon.accuracy._accuracy) judges sample results in its own
    # process and publishes live accuracy here; None: no worker (tests of ingest alone).
    accuracy_endpoint: str | None = None
    # Where golden datasets may be read from (the worker refuses others); None: anywhere.
    dataset_roots: tuple[Path, ...] | None = None
    disk: DiskSection = field(default_factory=DiskSection)
    retention: RetentionSection = field(default_factory=RetentionSection)


class Daemon:
    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.home = DaemonHome.of(settings.home)
        self.stats = DaemonStats()
        self.disk = DiskStatus()
        self.log = EventLog(self.home.events)
        self.projector = Projector()
        self.lock = HomeLock(self.home)
        self.systemd = SystemdNotifier()
        write_error = WriteErrors(self.stats)
        self.quarantine = Quarantine(self.home, self.stats, write_error)
        ingest_settings = IngestSettings(
            settings.endpoint,
            settings.live_endpoint,
            settings.accuracy_endpoint,
            settings.max_frame_bytes,
            settings.max_group_events,
            settings.group_access,
        )
        self.ingest = Ingest(
            self.home, ingest_settings, self.log, self.disk, self.stats, write_error, self.quarantine, self._apply
        )
        self.writer = ReadModelWriter(
            self.home,
            self.log,
            self.stats,
            self.disk,
            write_error,
            self.quarantine,
            settings.finished_run_grace_s,
            settings.endpoint,
            self._checkpoint_extras,
        )
        self.maintenance = Maintenance(
            self.home,
            self.ingest,
            lambda: self.projector,
            lambda: self.writer.checkpoint_all(self.projector),
            Background(self.writer.in_background, self.writer.beside),
            self.disk,
            self.stats,
            write_error,
            self.systemd,
            settings.client_timeout_s,
            settings.disk,
            settings.retention,
        )
        self.worker = WorkerProcess(self.home, settings.accuracy_endpoint, settings.dataset_roots)
        self._stopping = False

    def _apply(self, events: Sequence[Any], lsns: Sequence[int]) -> None:
        """Fold logged events (a committed group, or one replayed record) in order; one that
        still fails (a bug, a value no bound foresaw) is set aside with its position, and
        every other event goes on. An event for a run that was closed and evicted (a worker's
        spool, say) reopens it from its audit trail."""
        projector = self.projector
        for event, lsn in zip(events, lsns, strict=True):
            try:
                if event.run_id in projector.closed and event.type not in NOT_REOPENING:
                    self.writer.reopen(projector, event.run_id)
                projector.apply(event, lsn)
            except Exception as error:
                self.quarantine.keep_unprojectable("projection", lsn, event, f"{type(error).__name__}: {error}")

    def _checkpoint_extras(self) -> dict[str, Any]:
        return {"dedup": self.ingest.dedup.to_state(), "daemon_seq": self.ingest.daemon_seq}

    # -- lifecycle -----------------------------------------------------------------------
    def serve(self) -> None:
        """Recover, bind, and run until SIGTERM/SIGINT; then flush and exit cleanly."""
        self.lock.take()
        # The daemon holds many long-lived dicts (open runs' audit trails): collecting the
        # old generations on the default schedule cost about 40% of ingest time.
        gc.set_threshold(50_000, 20, 1_000)
        try:
            self.recover()
            gc.freeze()
            for signum in (signal.SIGTERM, signal.SIGINT):  # before the socket exists: a stop asked then is heard
                signal.signal(signum, lambda *_: self.stop())
            self.ingest.bind()
            self.ingest.ingest_spools()
            self.worker.start()
            logger.info("stagewatch daemon ready: home={} endpoint={}", self.home.root, self.settings.endpoint)
            no_gpu = host_gpu_problem()
            if no_gpu:  # said once here, not on every pipeline's stderr
                logger.info("no GPU on this host ({}): stages report no GPU memory", no_gpu)
            self.systemd.notify("READY=1", f"STATUS=ingesting on {self.settings.endpoint}")
            self._loop()
        finally:
            self.systemd.notify("STOPPING=1")
            self._close()

    def stop(self) -> None:
        self._stopping = True

    def flush(self, final: bool = False) -> None:
        """Write the read models and wait until they are on disk."""
        self.writer.flush(self.projector, final)
        self.writer.drain()

    def _flush_in_background(self) -> None:
        """The loop's periodic flush: the disk thread writes while ingest goes on."""
        self.writer.flush(self.projector)
        if self.writer.unusable:
            self._rebuild_tables_while_running(self.writer.take_unusable())

    def _close(self) -> None:
        self.writer.stop_passes()  # a compaction pass ends after its current table: the next daemon does the rest
        with contextlib.suppress(Exception):
            self.flush(final=True)
        self.writer.close()
        self.worker.stop()
        self.release()
        logger.info("stagewatch daemon stopped: {}", self.stats.line())

    def release(self) -> None:
        """Close the sockets and the log and give up the home's lock."""
        self.ingest.close()
        self.log.close()
        self.lock.release()

    # -- recovery ------------------------------------------------------------------------
    def recover(self, progress: Callable[[int, int], object] = lambda done, total: None) -> None:
        """Open the log (cutting a torn tail), load the checkpoint, replay what follows it.
        `progress(bytes replayed, bytes to replay)` is called as the replay goes."""
        report = self.log.open(set_aside=self.home.quarantined_segments)
        repair(DAEMON_FILES, self.home)  # damaged derived state: set aside, rebuilt from the log
        checkpoint = self._load_checkpoint()
        if self._set_aside_unusable_tables() and checkpoint:
            logger.warning("rebuilding the tables set aside: the event log is replayed from its start")
            checkpoint = {}
            self._restore(checkpoint)
        held = {table: committed_lsn(self.home, table, DAEMON_APP) for table in DAEMON_TABLES}
        counted = checkpoint.get("tables") or {}
        behind = [t for t, lsn in counted.items() if isinstance(lsn, int) and held.get(t, lsn) < lsn]
        if behind:  # a table deleted, or its log reset, by hand: only a replay from the start gives its rows back
            logger.warning(
                "the {} table(s) hold fewer rows than the checkpoint counted (deleted or reset by hand?): "
                "the event log is replayed from its start to rebuild them",
                ", ".join(behind),
            )
            checkpoint = {}
            self._restore(checkpoint)
        start_lsn = checkpoint.get("lsn", 0)
        for table in DAEMON_TABLES:  # what each table holds already: its replayed rows are not written again
            self.writer.committed_lsn[table] = held[table]
        run_index = self.writer.store.run_index
        if not run_index.complete:  # a new home, a rebuild, or data from before the index
            indexed = run_index.build_from_tables()
            if indexed:  # a new home or a rebuild has no tables yet: the replay indexes as it goes
                logger.info("run index: {} (run, date) pairs from the existing tables", indexed)
        replayed, scan = self._replay(start_lsn, progress)
        self.stats.replayed = replayed
        self.stats.recovery = {
            **asdict(report),
            "replay_corrupt_regions": scan.corrupt_regions,
            "replay_corrupt_bytes": scan.corrupt_bytes,
            "replay_duplicates": self.stats.replay_duplicates,
            "tables_committed_lsn": dict(self.writer.committed_lsn),
            "from_lsn": start_lsn,
        }
        if not report.clean or scan.corrupt_regions or self.stats.replay_duplicates:
            logger.warning("event log recovery: {}", self.stats.recovery)
        self.maintenance.track_open_clients()
        self.flush()

    def _set_aside_unusable_tables(self) -> list[str]:
        """Move the tables that cannot be used out of the way (a damaged Delta log; the plain
        Parquet parts of an earlier version: the upgrade), to be rebuilt from the event log.
        The accuracy worker's checkpoint goes with `samples`: it judges every run again."""
        moved = []
        for table, why in unusable_tables(self.home, TABLES):
            set_table_aside(self.home, table, why)
            moved.append(table)
        if "samples" in moved:
            ACCURACY_CHECKPOINT.path(self.home).unlink(missing_ok=True)
        return moved

    def _rebuild_tables_while_running(self, unusable: dict[str, str]) -> None:
        """Tables found damaged or deleted while the daemon runs (table -> what is wrong): set
        aside and rebuilt from the event log now, as a start would (`recover`), so that readers
        see every row again without a restart. The daemon's tables need the log replayed from
        its start (ingest waits meanwhile: clients keep what is not acknowledged); `samples`
        needs the accuracy worker to judge every run again."""
        self.worker.stop()  # it commits to `samples`: not while tables are moved
        self.writer.drain()  # the writes that can be done (a queue halted on the damaged table stays so)
        unusable = {**self.writer.take_unusable(), **unusable}  # what the pass under way found too
        for table, why in unusable.items():
            set_table_aside(self.home, table, why)
        if "samples" in unusable:
            ACCURACY_CHECKPOINT.path(self.home).unlink(missing_ok=True)
        moved = {*unusable, *self._set_aside_unusable_tables()}  # and any other table damaged by now
        if moved & set(DAEMON_TABLES):
            self.writer.start_over()
            self._restore({})
            for table in DAEMON_TABLES:
                self.writer.committed_lsn[table] = committed_lsn(self.home, table, DAEMON_APP)
            names = ", ".join(sorted(moved))
            logger.warning("rebuilding the {} table(s): the event log is replayed from its start", names)
            replayed, _ = self._replay(0, lambda done, total: self.maintenance.alive())
            self.maintenance.track_open_clients()
            self.flush()
            logger.info("rebuilt the {} table(s) from {:,} events of the log", names, replayed)
        self.writer.take_unusable()  # what was found meanwhile is of the tables set aside
        self.worker.start()

    def _load_checkpoint(self) -> dict[str, Any]:
        """Restore the state the checkpoint holds; one that fails to load (a wrong shape
        deeper than `check_daemon_checkpoint` looks) is set aside: the log is replayed from
        its start."""
        checkpoint = load(DAEMON_CHECKPOINT, self.home) or {}
        try:
            # Past the end, it would skip every event logged from now on. (A log that holds nothing
            # was emptied by hand: its read models are kept rather than replaced by nothing.)
            if 0 < self.log.end_lsn < checkpoint.get("lsn", 0):
                raise WrongShape(f"'lsn' {checkpoint['lsn']} is past the event log's end ({self.log.end_lsn})")
            # Inside a record (a flipped bit), the replay would skip that record and call the log damaged.
            if self.log.end_lsn > 0 and not self.log.starts_a_record(checkpoint.get("lsn", 0)):
                raise WrongShape(f"'lsn' {checkpoint['lsn']} is no record's start in the event log")
            self._restore(checkpoint)
        except DAMAGE_ERRORS as error:
            set_aside(DAEMON_CHECKPOINT, self.home, describe(error))
            checkpoint = {}
            self._restore(checkpoint)
        return checkpoint

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.projector = Projector.from_state(checkpoint.get("projector", {}))
        # A checkpoint may be on disk ahead of a running run's audit.json (a head is rewritten
        # at most every REWRITE_INTERVAL_S, and which runs changed is not checkpointed): every
        # run it holds has its head written again.
        self.projector.dirty.update(self.projector.runs)
        self.ingest.dedup = Deduplicator.from_state(checkpoint.get("dedup", {}))
        self.ingest.daemon_seq = checkpoint.get("daemon_seq", 0)
        self.writer.load(checkpoint)

    def _replay(self, start_lsn: int, progress: Callable[[int, int], object]) -> tuple[int, ScanStats]:
        scan, replayed, end_lsn = ScanStats(), 0, self.log.end_lsn
        for lsn, payload in self.log.read(start_lsn, scan):
            event = decode_event(payload)
            if isinstance(event, Rejected):
                continue
            if self.ingest.dedup.seen(event.client_id, event.seq):
                # Ingest never logs an event twice: a record seen again is a copied segment.
                self.stats.replay_duplicates += 1
                continue
            self.ingest.dedup.mark(event.client_id, event.seq)
            if event.client_id == DAEMON_CLIENT_ID:  # written after the checkpoint: numbered past it
                self.ingest.daemon_seq = max(self.ingest.daemon_seq, event.seq)
            self._apply((event,), (lsn,))
            replayed += 1
            if replayed % REPLAY_FLUSH_EVENTS == 0:
                self.writer.flush_during_replay(self.projector, event.ts_ns)
                logger.info("replayed {:,} events (lsn {:,} of {:,})", replayed, lsn, end_lsn)
                progress(lsn - start_lsn, end_lsn - start_lsn)
        progress(end_lsn - start_lsn, end_lsn - start_lsn)
        return replayed, scan

    # -- the loop ------------------------------------------------------------------------
    def _loop(self) -> None:
        settings, tasks, maintenance = self.settings, Scheduler(), self.maintenance
        tasks.every(settings.flush_interval_s, self._flush_in_background)
        tasks.every(1.0, maintenance.check_liveness)
        tasks.every(
            settings.spool_scan_interval_s, self.ingest.ingest_spools, first_in_s=settings.spool_scan_interval_s
        )
        tasks.every(1.0, self.worker.watch, first_in_s=1.0)
        tasks.every(settings.disk.check_interval_s, maintenance.check_disk)
        tasks.every(settings.retention.check_interval_s, maintenance.apply_retention)
        tasks.every(settings.merge_interval_s, maintenance.compact_tables, first_in_s=settings.merge_interval_s)
        tasks.every(SCRUB_INTERVAL_S, maintenance.scrub, first_in_s=SCRUB_INTERVAL_S)
        if self.systemd.watchdog_interval_s:  # only a loop that turns pings the watchdog
            tasks.every(self.systemd.watchdog_interval_s, maintenance.alive)
        while not self._stopping:
            try:
                if self.ingest.wait(POLL_MS):
                    self.ingest.receive(time.monotonic())
                    if self.projector.pending_rows() >= MAX_PENDING_ROWS:
                        self.writer.flush_output(self.projector)
                elif self.projector.pending_rows() + self.writer.uncommitted_rows() >= IDLE_FLUSH_ROWS:
                    self.writer.flush_output(self.projector, commit=True)
                tasks.run_due(time.monotonic())
            except Exception:  # a bug must not take the daemon down: log it, count it, go on
                self.stats.internal_errors += 1
                logger.exception("internal error in the daemon loop (it keeps running)")
                time.sleep(0.1)


def serve(settings: DaemonSettings) -> None:
    """Run a daemon with these settings until SIGTERM/SIGINT (DaemonAlreadyRunning if one runs)."""
    Daemon(settings).serve()
