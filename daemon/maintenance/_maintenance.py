"""Maintenance beside the append path, as periodic tasks on one small scheduler: liveness
(a silent client's open work is crashed), disk checks, retention, compaction and vacuum of
the tables, the accuracy worker's health, systemd's watchdog."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
from loguru import logger

from stagewatch import _protocol as protocol
from stagewatch._protocol import DAEMON_CLIENT_ID, pack_event
from stagewatch._spool import SUFFIX as SPOOL_SUFFIX
from stagewatch._spool import spool_owner
from stagewatch.daemon.base._disk import OK, DiskStatus, disk_state, read_disk
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._sdnotify import SystemdNotifier
from stagewatch.daemon.base._settings import DiskSection, RetentionSection
from stagewatch.daemon.base._stats import DaemonStats, WriteErrors
from stagewatch.daemon.ingest._ingest import Group, Ingest
from stagewatch.daemon.maintenance._scrub import damaged_files_of, scrub_next_segment
from stagewatch.daemon.projection._projection import Projector
from stagewatch.daemon.projection._schema import validate_event
from stagewatch.daemon.tables._retention import FinishedRun, apply_retention
from stagewatch.daemon.tables._store import TABLES, table_writer_properties
from stagewatch.daemon.tables._tables import DamagedTable, compact, first_line, vacuum

# Files that a compaction or a delete replaced are deleted this often (those older than
# `_tables.VACUUM_RETENTION_HOURS`: a reader's snapshot may still use the newer ones).
VACUUM_INTERVAL_S = 600.0
HOME_MEASURE_INTERVAL_S = 300.0
SCRUB_INTERVAL_S = 60.0  # one sealed segment a minute: a 100-segment log is checked in under 2 hours


@dataclass
class Task:
    action: Callable[[], object]
    interval_s: float
    due: float


class Scheduler:
    """Periodic tasks run between ingest turns, on the daemon's one thread."""

    def __init__(self) -> None:
        self.tasks: list[Task] = []

    def every(self, interval_s: float, action: Callable[[], object], first_in_s: float = 0.0) -> None:
        self.tasks.append(Task(action, interval_s, time.monotonic() + first_in_s))

    def run_due(self, now: float) -> None:
        for task in self.tasks:
            if now >= task.due:
                task.due = now + task.interval_s  # first, so a failing action does not spin
                task.action()


@dataclass(frozen=True)
class Background:
    """Where maintenance that reads or rewrites files runs: on the writer's disk thread, after
    the writes queued before it (`ReadModelWriter.in_background`), or on a thread of its own
    (`beside`: compaction, whose commits rebase over the appends), so that the loop goes on
    acknowledging."""

    after_writes: Callable[[Callable[[], object], str], None]
    beside: Callable[[Callable[[], Iterator[object]], str], None]


class Maintenance:
    def __init__(
        self,
        home: DaemonHome,
        ingest: Ingest,
        projection: Callable[[], Projector],
        checkpoint_all: Callable[[], None],
        background: Background,
        disk: DiskStatus,
        stats: DaemonStats,
        write_error: WriteErrors,
        systemd: SystemdNotifier,
        client_timeout_s: float,
        disk_limits: DiskSection,
        retention: RetentionSection,
    ) -> None:
        self.home = home
        self.ingest = ingest
        self.projection = projection  # the current projector (recovery replaces it)
        self.checkpoint_all = checkpoint_all
        self.background = background
        self.disk = disk
        self.stats = stats
        self.write_error = write_error
        self.systemd = systemd
        self.client_timeout_s = client_timeout_s
        self.disk_limits = disk_limits
        self.retention = retention
        self._next_home_measure = 0.0
        self._next_vacuum = time.monotonic() + VACUUM_INTERVAL_S
        self._failing: dict[tuple[str, str], str] = {}  # (step, table) -> its error, logged once

    # -- liveness ------------------------------------------------------------------------
    def track_open_clients(self) -> None:
        """After recovery: every client with open work counts as seen now."""
        now = time.monotonic()
        self.ingest.last_seen = {client: now for client in self.projection().open_work()}

    def check_liveness(self) -> None:
        """Write a client_lost event for each client that has open work but went silent, unless
        its spool is still waiting to be ingested (a full disk, say): its events are on disk,
        and its run ends as they say, not as crashed."""
        now = time.monotonic()
        last_seen_by_client = self.ingest.last_seen
        spooled = self._spooled_clients()
        lost = []
        for client_id, run_ids in self.projection().open_work().items():
            if client_id in spooled:
                last_seen_by_client[client_id] = now
            last_seen = last_seen_by_client.setdefault(client_id, now)
            if client_id != DAEMON_CLIENT_ID and now - last_seen > self.client_timeout_s:
                wall_last_seen = time.time_ns() - int((now - last_seen) * 1e9)
                lost += [self._client_lost(client_id, run_id, wall_last_seen) for run_id in sorted(run_ids)]
                last_seen_by_client.pop(client_id, None)
                self.stats.clients_lost += 1
                logger.warning(
                    "client {} lost (silent for {:.1f}s); runs {}", client_id, now - last_seen, sorted(run_ids)
                )
        if lost:
            self.ingest.commit(Group(payloads=[pack_event(e) for e in lost], events=[validate_event(e) for e in lost]))

    def _spooled_clients(self) -> set[str]:
        folder = self.home.spool
        return {spool_owner(path) for path in folder.glob(f"*{SPOOL_SUFFIX}")} if folder.is_dir() else set()

    def _client_lost(self, client_id: str, run_id: str, last_seen_ns: int) -> dict[str, Any]:
        return protocol.client_lost(
            self.ingest.next_daemon_seq(), run_id, time.time_ns(), lost_client_id=client_id, last_seen_ns=last_seen_ns
        )

    # -- disk ----------------------------------------------------------------------------
    def check_disk(self) -> None:
        """Compare free space (and the home's size, every 5 min) with the thresholds; say
        so when the state changes: in the log, in status.json and on the live feed."""
        now = time.monotonic()
        measure_home = self.disk_limits.max_home_bytes is not None and now >= self._next_home_measure
        if measure_home:
            self._next_home_measure = now + HOME_MEASURE_INTERVAL_S
        reading = read_disk(self.home.root, measure_home)
        if reading.home_bytes is None:
            reading = type(reading)(reading.free_bytes, reading.total_bytes, self.disk.home_bytes)
        state, problems = disk_state(reading, self.disk_limits)
        changed = state != self.disk.state
        disk = self.disk
        disk.state, disk.problems = state, problems
        disk.free_bytes, disk.total_bytes, disk.home_bytes = reading.free_bytes, reading.total_bytes, reading.home_bytes
        if changed:
            (logger.info if state == OK else logger.warning)("disk {}: {}", state, "; ".join(problems) or "all clear")
            self.ingest.publish(b"disk", msgpack.packb(asdict(disk)))

    # -- retention and compaction ------------------------------------------------------------
    def apply_retention(self) -> None:
        """Remove what has expired (a run the projection still holds waits for the next pass),
        here, after a checkpoint of everything so far (the runs table it selects from holds
        every finished run the fold knows of)."""
        self.checkpoint_all()
        freed = apply_retention(
            self.home.root, self.retention, self._record_expiry, exclude=set(self.projection().runs)
        )
        self.ingest.quarantine.expire(datetime.now(UTC))
        if freed["runs"] or freed["segments"]:
            logger.info(
                "retention removed {} run(s) ({} bytes, {} rows) and {} segment(s) ({} bytes)",
                len(freed["runs"]),
                freed["run_bytes"],
                freed["parquet_rows"],
                len(freed["segments"]),
                freed["segment_bytes"],
            )

    def _record_expiry(self, runs: list[FinishedRun]) -> bool:
        """Commit a run_expired event per run before retention removes it (even below the
        disk's floor: the removal frees space); the fold forgets the runs as it applies them."""
        events = []
        for run in runs:
            seq = self.ingest.next_daemon_seq()
            events.append(protocol.run_expired(DAEMON_CLIENT_ID, seq, run.run_id, time.time_ns(), ended_ns=run.end_ns))
        group = Group(payloads=[pack_event(e) for e in events], events=[validate_event(e) for e in events])
        return self.ingest.commit(group, below_floor=True)

    def compact_tables(self) -> None:
        """Compact the partitions crowded with small files (a file per commit), and now and
        then vacuum the files replaced: on a thread of its own (`Background.beside`)."""
        now = time.monotonic()
        with_vacuum = now >= self._next_vacuum
        if with_vacuum:
            self._next_vacuum = now + VACUUM_INTERVAL_S
        self.background.beside(lambda: self._compact(with_vacuum), "compact the tables")

    def _compact(self, with_vacuum: bool) -> Iterator[str]:  # steps on the pass's thread, a table each
        """Each table on its own: one that fails (a damaged data file) is logged once, naming
        the table and the file, and the others are still compacted and vacuumed. A damaged log
        is raised at the end for `Background.beside`: the daemon rebuilds that table. Other
        failures are not: no write was refused (they were counted as refused writes and said
        again every pass), and the data file's damage stays named by doctor until a rebuild."""
        failed: list[Exception] = []
        for table in TABLES:
            failed += self._table_step(table, "compact", lambda t: compact(self.home, t, table_writer_properties(t)))
            yield table
        for table in TABLES if with_vacuum else ():
            failed += self._table_step(table, "vacuum", lambda t: vacuum(self.home, t))
            yield table
        damaged_log = next((error for error in failed if isinstance(error, DamagedTable)), None)
        if damaged_log is not None:
            raise damaged_log

    def _table_step(self, table: str, what: str, step: Callable[[str], int]) -> list[Exception]:
        """`step(table)`, logged; the error it raised (none: []), logged with the table's damaged
        data files named."""
        try:
            done = step(table)
        except Exception as error:  # the other tables go on; raised after them
            if self._failing.get((what, table)) != (problem := first_line(error)):  # said once, not every pass
                self._failing[what, table] = problem
                damaged = damaged_files_of(self.home, table)
                named = (
                    f"; damaged data file(s): {', '.join(damaged)}, `stagewatch rebuild` rebuilds it" if damaged else ""
                )
                logger.error("cannot {} the {} table ({}){}; the other tables go on", what, table, problem, named)
            return [error]
        if self._failing.pop((what, table), None) is not None:
            logger.info("{} of the {} table works again", what, table)
        if done:
            logger.debug("{} {} file(s) of the {} table", "compacted" if what == "compact" else "vacuumed", done, table)
        return []

    def scrub(self) -> None:
        """Re-check one sealed segment of the log, on the disk thread; damage found stays in
        state/scrub.json (and doctor says so) until a clean scrub or a rebuild."""
        self.background.after_writes(self._scrub, "scrub the event log")

    def _scrub(self) -> None:  # on the disk thread
        damage = scrub_next_segment(self.home)
        if damage is not None:
            logger.error(
                "scrub: segment {} is damaged ({} region(s), {} bytes)",
                damage["segment"],
                damage["corrupt_regions"],
                damage["corrupt_bytes"],
            )

    def alive(self) -> None:
        """Between steps of long maintenance: tell systemd's watchdog the daemon still works."""
        if self.systemd.watchdog_interval_s:
            self.systemd.notify("WATCHDOG=1")
