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
import functools
import gc
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from stagewatch._gpu import host_gpu_problem
from stagewatch._protocol import RUN_EXPIRED
from stagewatch._records import ScanStats
from stagewatch.daemon.accuracy._worker import WorkerProcess
from stagewatch.daemon.base._derived import DAEMON_FILES, repair
from stagewatch.daemon.base._disk import DiskStatus
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._lock import HomeLock
from stagewatch.daemon.base._sdnotify import SystemdNotifier
from stagewatch.daemon.base._settings import DiskSection, RetentionSection
from stagewatch.daemon.base._stats import DaemonStats, WriteErrors
from stagewatch.daemon.ingest._dedup import Deduplicator
from stagewatch.daemon.ingest._eventlog import EventLog
from stagewatch.daemon.ingest._ingest import Ingest, IngestSettings
from stagewatch.daemon.ingest._quarantine import Quarantine
from stagewatch.daemon.maintenance._maintenance import SCRUB_INTERVAL_S, Background, Maintenance, Scheduler
from stagewatch.daemon.projection._projection import Projector
from stagewatch.daemon.tables._checkpoint import (
    load_checkpoint,
    set_aside_while_running,
    tables_committed,
    tables_held,
)
from stagewatch.daemon.tables._runindex import RunIndex
from stagewatch.daemon.tables._store import DAEMON_TABLES
from stagewatch.daemon.tables._writer import ReadModelWriter, Rebuilding

POLL_MS = 100
# Rows waiting for the next flush are queued for writing at once past this many. Memory: at
# 50k events/s a second of ended stages held about 90 MB (benchmarks/flood.py's RSS). Latency:
# encoding them holds the loop 4-7 us a row, so at 10,000 events/s a flush a second held it
# 30-50 ms and ack p99 was 30-37 ms; in steps of 2,500 rows it is 11-12 ms (they are committed
# together, `_commits.COMMIT_ROWS`; benchmarks/ingest_costs.py).
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


def _complete(run_index: RunIndex) -> None:
    if not run_index.complete:  # a new home, a rebuild, or data from before the index
        indexed = run_index.build_from_tables()
        if indexed:  # a new home or a rebuild has no tables yet: the replay indexes as it goes
            logger.info("run index: {} (run, date) pairs from the existing tables", indexed)


def _ingest_settings(settings: DaemonSettings) -> IngestSettings:
    return IngestSettings(
        settings.endpoint,
        settings.live_endpoint,
        settings.accuracy_endpoint,
        settings.max_frame_bytes,
        settings.max_group_events,
        settings.group_access,
    )


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
        ingest_settings = _ingest_settings(settings)
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
            Background(self.writer.threads.in_background, self.writer.threads.beside),
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
            if no_gpu := host_gpu_problem():  # said once here, not on every pipeline's stderr
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
        if self.writer.watch.unusable:
            self._rebuild_tables_while_running(self.writer.watch.take())

    def _close(self) -> None:
        # A compaction pass ends after its current table: the next daemon does the rest.
        self.writer.threads.stop_passes()
        with contextlib.suppress(Exception):
            self.flush(final=True)
        self.writer.threads.close()
        self.writer.write_stopped(self.projector)
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
        checkpoint = load_checkpoint(self.home, self.log, self._restore)
        held, replay_all = tables_held(self.home, checkpoint, self.log.end_lsn)
        if replay_all:
            logger.warning(replay_all)
            checkpoint = {}
            self._restore(checkpoint)
        start_lsn = checkpoint.get("lsn", 0)
        self.writer.commits.committed_lsn.update(held)  # what each table holds: its replayed rows are not written again
        _complete(self.writer.store.run_index)
        self.stats.replayed, scan = self._replay_from(start_lsn, progress)
        self.stats.recovery = {
            **asdict(report),
            "replay_corrupt_regions": scan.corrupt_regions,
            "replay_corrupt_bytes": scan.corrupt_bytes,
            "replay_duplicates": self.stats.replay_duplicates,
            "tables_committed_lsn": dict(self.writer.commits.committed_lsn),
            "from_lsn": start_lsn,
        }
        if not report.clean or scan.corrupt_regions or self.stats.replay_duplicates:
            logger.warning("event log recovery: {}", self.stats.recovery)
        self.flush()

    def _replay_from(self, start_lsn: int, progress: Callable[[int, int], object]) -> tuple[int, ScanStats]:
        flush = functools.partial(self.writer.flush_during_replay, self.projector)
        replayed, scan = self.ingest.replay(start_lsn, flush, progress)
        self.maintenance.track_open_clients()
        return replayed, scan

    def _rebuild_tables_while_running(self, unusable: dict[str, str]) -> None:
        """Tables found damaged or deleted while the daemon runs: set aside and rebuilt from the
        event log now, as a start would, so that readers see every row again without a restart
        (ingest waits meanwhile: clients keep what is not acknowledged); `samples` is judged
        again by a new accuracy worker."""
        self.worker.stop()  # it commits to `samples`: not while tables are moved
        self.writer.drain()  # the writes that can be done (a queue halted on the damaged table stays so)
        unusable = {**self.writer.watch.take(), **unusable}
        tables = sorted(set(unusable) & set(DAEMON_TABLES))
        rebuilding = Rebuilding(tables, self.writer, self.projector, self.maintenance.alive)  # said at once
        moved = set_aside_while_running(self.home, unusable)
        if moved & set(DAEMON_TABLES):
            names = ", ".join(sorted(moved))
            logger.warning("rebuilding the {} table(s): the event log is replayed from its start", names)
            self.writer.start_over()
            self._restore({})
            self.writer.commits.committed_lsn.update(tables_committed(self.home))
            with rebuilding.until_written(lambda: self.projector):
                replayed, _ = self._replay_from(0, rebuilding.said)
                self.flush()
            logger.info("rebuilt the {} table(s) from {:,} events of the log", names, replayed)
        self.writer.watch.take()  # what was found meanwhile is of the tables set aside
        self.worker.start()

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.projector = Projector.from_state(checkpoint.get("projector", {}))
        # A checkpoint may be on disk ahead of a running run's audit.json (a head is rewritten
        # at most every REWRITE_INTERVAL_S, and which runs changed is not checkpointed): every
        # run it holds has its head written again.
        self.projector.output.dirty.update(self.projector.runs)
        self.ingest.dedup = Deduplicator.from_state(checkpoint.get("dedup", {}))
        self.ingest.daemon_seq = checkpoint.get("daemon_seq", 0)
        self.writer.audits.load(checkpoint)

    # -- the loop ------------------------------------------------------------------------
    def _loop(self) -> None:
        tasks = _periodic_tasks(self)
        while not self._stopping:
            try:
                if self.ingest.wait(POLL_MS):
                    self.ingest.receive(time.monotonic())
                    if self.projector.output.pending_rows() >= MAX_PENDING_ROWS:
                        self.writer.flush_output(self.projector)
                elif self.projector.output.pending_rows() + self.writer.commits.uncommitted_rows() >= IDLE_FLUSH_ROWS:
                    self.writer.flush_output(self.projector, commit=True)
                tasks.run_due(time.monotonic())
            except Exception:  # a bug must not take the daemon down: log it, count it, go on
                self.stats.internal_errors += 1
                logger.exception("internal error in the daemon loop (it keeps running)")
                time.sleep(0.1)


def _periodic_tasks(daemon: Daemon) -> Scheduler:
    """What the daemon's loop runs between receiving events, and how often."""
    settings, tasks, maintenance = daemon.settings, Scheduler(), daemon.maintenance
    tasks.every(settings.flush_interval_s, daemon._flush_in_background)
    tasks.every(1.0, maintenance.check_liveness)
    tasks.every(settings.spool_scan_interval_s, daemon.ingest.ingest_spools, first_in_s=settings.spool_scan_interval_s)
    tasks.every(1.0, daemon.worker.watch, first_in_s=1.0)
    tasks.every(settings.disk.check_interval_s, maintenance.check_disk)
    tasks.every(settings.retention.check_interval_s, maintenance.apply_retention)
    tasks.every(settings.merge_interval_s, maintenance.compact_tables, first_in_s=settings.merge_interval_s)
    tasks.every(SCRUB_INTERVAL_S, maintenance.scrub, first_in_s=SCRUB_INTERVAL_S)
    if daemon.systemd.watchdog_interval_s:  # only a loop that turns pings the watchdog
        tasks.every(daemon.systemd.watchdog_interval_s, maintenance.alive)
    return tasks


def serve(settings: DaemonSettings) -> None:
    """Run a daemon with these settings until SIGTERM/SIGINT (DaemonAlreadyRunning if one runs)."""
    Daemon(settings).serve()
