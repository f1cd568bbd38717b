"""The daemon: receive, validate, de-duplicate, log durably, acknowledge, project.

One thread, one loop. Each turn takes a group of batches from the ROUTER socket, appends
every new valid event to the event log, fsyncs once (group commit), acknowledges the
batches, then folds the events into the projections. Read models are flushed about once
a second with a checkpoint, so a restart replays only what came after it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gc
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import zmq
from loguru import logger

from stagewatch import _protocol as protocol
from stagewatch._config import check_endpoint, spool_dir
from stagewatch._curve import authorized_dir, server_secret_file
from stagewatch._protocol import DAEMON_CLIENT_ID, pack_ack, pack_event
from stagewatch._spool import claim_spool_files
from stagewatch.daemon._compaction import aged_cutoff, carry_out, compact, finish_interrupted, tier_plan, utc_now
from stagewatch.daemon._dedup import Deduplicator
from stagewatch.daemon._disk import FLOOR, OK, disk_state, read_disk
from stagewatch.daemon._eventlog import EventLog
from stagewatch.daemon._ingest import Rejected, decode_batch, decode_event
from stagewatch.daemon._projection import Projector
from stagewatch.daemon._schema import validate_event
from stagewatch.daemon._sdnotify import SystemdNotifier
from stagewatch.daemon._settings import DiskSection, RetentionSection
from stagewatch.daemon._stagestats import refresh_summaries
from stagewatch.daemon._store import Store, atomic_write
from stagewatch.daemon._throttle import CostThrottle

REPLAY_FLUSH_EVENTS = 100_000
MERGE_BUDGET_S = 2.0  # the most one pass of tier merging holds up the loop (but one partition)


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
    # How often a partition's small parts are merged by size tier (stagewatch.daemon._compaction).
    merge_interval_s: float = 30.0
    # Pipelines of other users in the home's group may connect and write (systemd service).
    group_access: bool = False
    # The accuracy worker (stagewatch.daemon._accuracy) judges sample results in its own
    # process and publishes live accuracy here; None: no worker (tests of ingest alone).
    accuracy_endpoint: str | None = None
    disk: DiskSection = field(default_factory=DiskSection)
    retention: RetentionSection = field(default_factory=RetentionSection)


@dataclass
class DaemonStats:
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    invalid: int = 0
    spool_files: int = 0
    spool_events: int = 0
    clients_lost: int = 0
    write_errors: int = 0
    internal_errors: int = 0
    replayed: int = 0
    recovery: dict[str, Any] = field(default_factory=dict)


class DaemonAlreadyRunning(RuntimeError):
    pass


class WorkerProcess:
    """The accuracy worker as a child process: started with the daemon, restarted when it
    dies (at most every 5 s), stopped with it. Its crash never touches ingestion."""

    RESTART_DELAY_S = 5.0

    def __init__(self, home: Path, endpoint: str | None) -> None:
        self.home = home
        self.endpoint = endpoint
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._next_start = 0.0

    def start(self) -> None:
        if self.endpoint is None:
            return
        module, parent = "stagewatch.daemon._accuracy", str(os.getpid())
        command = [sys.executable, "-m", module, "--home", str(self.home), "--live", self.endpoint, "--parent", parent]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        self._next_start = time.monotonic() + self.RESTART_DELAY_S

    def watch(self) -> None:
        if self.process is None or self.process.poll() is None or time.monotonic() < self._next_start:
            return
        logger.warning("accuracy worker exited with code {}; restarting it", self.process.returncode)
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class _Group:
    """Events taken in one turn, before they are durable."""

    payloads: list[bytes] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    acks: list[tuple[bytes, int]] = field(default_factory=list)
    keys: set[tuple[str, int]] = field(default_factory=set)


class Daemon:
    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.home = settings.home
        self.stats = DaemonStats()
        self.store = Store(self.home)
        self.log = EventLog(self.home / "events")
        self.projector = Projector()
        self.dedup = Deduplicator()
        self._daemon_seq = 0
        self._checkpoint_lsn = -1  # the log position the last written checkpoint covers
        self._last_seen: dict[str, float] = {}
        self._finished_at: dict[str, float] = {}
        self._throttle = CostThrottle()
        self._next_write_error_log: dict[str, float] = {}  # per message
        self._stopping = False
        self._lock_fd: int | None = None
        self._context = zmq.Context()
        self._systemd = SystemdNotifier()
        self.disk: dict[str, Any] = {"state": OK, "problems": []}
        self._next_home_measure = 0.0
        self._worker = WorkerProcess(self.home, settings.accuracy_endpoint)

    # -- lifecycle -----------------------------------------------------------------------
    def serve(self) -> None:
        """Recover, bind, and run until SIGTERM/SIGINT; then flush and exit cleanly."""
        self._take_lock()
        # The daemon holds many long-lived dicts (open runs' audit trails): collecting the
        # old generations on the default schedule cost about 40% of ingest time.
        gc.set_threshold(50_000, 20, 1_000)
        try:
            self.recover()
            gc.freeze()
            self._bind()
            self._install_signal_handlers()
            self.ingest_spools()
            self._worker.start()
            logger.info("stagewatch daemon ready: home={} endpoint={}", self.home, self.settings.endpoint)
            self._systemd.notify("READY=1", f"STATUS=ingesting on {self.settings.endpoint}")
            self._loop()
        finally:
            self._systemd.notify("STOPPING=1")
            self._close()

    def stop(self) -> None:
        self._stopping = True

    def _install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())

    def _take_lock(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.home / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise DaemonAlreadyRunning(f"another stagewatch daemon is running on {self.home}") from None
        os.ftruncate(self._lock_fd, 0)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())

    def _bind(self) -> None:
        # Only the owner may connect, or with group access the home's group too. The setgid
        # bit makes what clients create inherit the group (and tells them to share it).
        folder_mode = 0o2770 if self.settings.group_access else 0o700
        if self.settings.group_access:
            for name in ("spool", "runs"):
                (self.home / name).mkdir(exist_ok=True)
                (self.home / name).chmod(folder_mode)
        for endpoint in self._endpoints():
            check_endpoint(endpoint)
            if endpoint.startswith("ipc://"):
                folder = Path(endpoint[len("ipc://") :]).parent
                folder.mkdir(parents=True, exist_ok=True)
                folder.chmod(folder_mode)
        self.router = self._context.socket(zmq.ROUTER)
        if self.settings.endpoint.startswith("tcp://"):
            self._require_curve(self.router)
        self.router.setsockopt(zmq.MAXMSGSIZE, self.settings.max_frame_bytes)
        # Per client, at most this many frames wait in memory; a flooding client is slowed
        # by its own send queue filling up, and the daemon's memory stays bounded.
        self.router.setsockopt(zmq.RCVHWM, 64)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(self.settings.endpoint)
        self.live = self._context.socket(zmq.PUB)
        # A message is a whole group (up to 10k events): a stalled subscriber may hold back
        # 16 of them, then it misses messages; the daemon never waits and never grows.
        self.live.setsockopt(zmq.SNDHWM, 16)
        self.live.setsockopt(zmq.LINGER, 0)
        self.live.bind(self.settings.live_endpoint)
        if self.settings.group_access:
            for endpoint in (self.settings.endpoint, self.settings.live_endpoint):
                if endpoint.startswith("ipc://"):
                    Path(endpoint[len("ipc://") :]).chmod(0o660)

    def _endpoints(self) -> list[str]:
        settings = self.settings
        return [e for e in (settings.endpoint, settings.live_endpoint, settings.accuracy_endpoint) if e]

    def _require_curve(self, router: zmq.Socket) -> None:
        """TCP is served with CURVE only: clients whose public key is not authorized are refused."""
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        secret_file = server_secret_file(self.home)
        if not secret_file.exists():
            raise ValueError(f"a TCP endpoint needs CURVE keys: run `stagewatch keys init --home {self.home}`")
        self._authenticator = ThreadAuthenticator(self._context)
        self._authenticator.start()
        self._authenticator.configure_curve(domain="*", location=str(authorized_dir(self.home)))
        public, secret = zmq.auth.load_certificate(str(secret_file))
        router.curve_server = True
        router.curve_publickey = public
        router.curve_secretkey = secret

    def release(self) -> None:
        """Close the log and the ZeroMQ context and give up the home's lock."""
        self.log.close()
        self._context.term()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            self.flush(final=True)
        self._worker.stop()
        for name in ("router", "live"):
            if hasattr(self, name):
                getattr(self, name).close(0)
        if getattr(self, "_authenticator", None) is not None:
            self._authenticator.stop()
        for endpoint in self._endpoints():
            if endpoint.startswith("ipc://"):  # a stale socket file would look like a daemon
                Path(endpoint[len("ipc://") :]).unlink(missing_ok=True)
        self.release()
        logger.info("stagewatch daemon stopped: {}", self._stats_line())

    # -- recovery ------------------------------------------------------------------------
    def recover(self) -> None:
        """Open the log (cutting a torn tail), load the checkpoint, replay what follows it."""
        report = self.log.open()
        checkpoint = self.store.read_checkpoint() or {}
        self.projector = Projector.from_state(checkpoint.get("projector", {}))
        self.dedup = Deduplicator.from_state(checkpoint.get("dedup", {}))
        self._daemon_seq = checkpoint.get("daemon_seq", 0)
        start_lsn = checkpoint.get("lsn", 0)
        finish_interrupted(self.home / "metrics")
        dropped_parts = self.store.drop_parts_from(start_lsn)
        if not self.store.run_index.complete:  # a new home, a rebuild, or data from before the index
            logger.info("run index: {} (run, date) pairs from the existing tables",
                        self.store.run_index.build_from_tables(self.home / "metrics"))  # fmt: skip
        replayed, stats = self._replay(start_lsn)
        self.stats.replayed = replayed
        self.stats.recovery = {
            **asdict(report),
            "replay_corrupt_regions": stats.corrupt_regions,
            "replay_corrupt_bytes": stats.corrupt_bytes,
            "dropped_parts": dropped_parts,
            "from_lsn": start_lsn,
        }
        if not report.clean or stats.corrupt_regions:
            logger.warning("event log recovery: {}", self.stats.recovery)
        now = time.monotonic()
        self._last_seen = {client: now for client in self.projector.open_work()}
        self.flush()

    def _replay(self, start_lsn: int) -> tuple[int, Any]:
        from stagewatch._records import ScanStats

        stats, replayed = ScanStats(), 0
        for lsn, payload in self.log.read(start_lsn, stats):
            event = decode_event(payload)
            if isinstance(event, Rejected):
                continue
            self.dedup.mark(event.client_id, event.seq)
            self.projector.apply(event, lsn)
            replayed += 1
            if replayed % REPLAY_FLUSH_EVENTS == 0:
                self._flush_during_replay(event.ts_ns)
                logger.info("replayed {:,} events (lsn {:,} of {:,})", replayed, lsn, self.log.end_lsn)
        return replayed, stats

    def _flush_during_replay(self, event_ns: int) -> None:
        """Bound memory while replaying a long log. A finished run is forgotten once the log
        has moved `finished_run_grace_s` past its end (event time, so the result does not
        depend on how fast the replay runs)."""
        self._write_output()
        self._write_audits(final=False)
        grace_ns = int(self.settings.finished_run_grace_s * 1e9)
        runs = self.projector.runs
        self.projector.evict([r for r in self.projector.finished_runs() if runs[r]["end_ns"] < event_ns - grace_ns])

    # -- the loop ------------------------------------------------------------------------
    def _loop(self) -> None:
        settings, now = self.settings, time.monotonic()
        periodic = [  # (action, interval in s, next due time)
            [self.flush, settings.flush_interval_s, now],
            [lambda: self.check_liveness(time.monotonic()), 1.0, now],
            [self.ingest_spools, settings.spool_scan_interval_s, now + settings.spool_scan_interval_s],
        ]
        periodic.append([self._worker.watch, 1.0, now + 1.0])
        periodic.append([self.check_disk, settings.disk.check_interval_s, now])
        periodic.append([self.apply_retention, settings.retention.check_interval_s, now])
        periodic.append([self.merge_small_parts, settings.merge_interval_s, now + settings.merge_interval_s])
        if self._systemd.watchdog_interval_s:  # only a loop that turns pings the watchdog
            periodic.append([self._alive, self._systemd.watchdog_interval_s, now])
        while not self._stopping:
            try:
                self._turn(periodic)
            except Exception:  # a bug must not take the daemon down: log it, count it, go on
                self.stats.internal_errors += 1
                logger.exception("internal error in the daemon loop (it keeps running)")
                time.sleep(0.1)

    def _turn(self, periodic: list[list[Any]]) -> None:
        if self.router.poll(100, zmq.POLLIN):
            self._ingest_socket()
        now = time.monotonic()
        for task in periodic:
            action, interval_s, due = task
            if now >= due:
                task[2] = now + interval_s  # first, so a failing action does not spin
                action()

    def _ingest_socket(self) -> None:
        group, now = _Group(), time.monotonic()
        while len(group.payloads) < self.settings.max_group_events:
            try:
                identity, frame = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except ValueError:  # a frame count other than two: not one of ours
                self._quarantine([Rejected("unexpected frame layout", b"")])
                continue
            batch = decode_batch(frame)
            if isinstance(batch, Rejected):
                self._quarantine([batch])
                continue
            self._last_seen[batch.client_id] = now
            self.stats.batches += 1
            self._take(group, batch.payloads)
            group.acks.append((identity, batch.batch_no))
        self._commit(group)

    def _take(self, group: _Group, payloads: list[bytes]) -> None:
        """Add the new valid events among `payloads` to `group`; quarantine the invalid."""
        rejected = []
        for payload in payloads:
            event = decode_event(payload)
            if isinstance(event, Rejected):
                rejected.append(event)
                continue
            key = (event.client_id, event.seq)
            if key in group.keys or self.dedup.seen(*key):
                self.stats.duplicates += 1
                continue
            group.keys.add(key)
            group.payloads.append(payload)
            group.events.append(event)
        self._quarantine(rejected)

    def _commit(self, group: _Group) -> bool:
        """Make the group durable, acknowledge it, project it. False if the disk refused."""
        if group.payloads and self.disk["state"] == FLOOR:
            # Below the floor nothing new is written: clients keep their events (unacked).
            self._write_error("{}", OSError(28, self.disk["problems"][0]))
            return False
        if group.payloads:
            try:
                lsns = self.log.append(group.payloads)
                self.log.sync()
            except OSError as error:
                self._write_error("cannot write the event log ({}); batches stay unacknowledged", error)
                return False
            for event, lsn in zip(group.events, lsns, strict=True):
                self.dedup.mark(event.client_id, event.seq)
                self.projector.apply(event, lsn)
            self.stats.accepted += len(group.payloads)
        for identity, batch_no in group.acks:
            with contextlib.suppress(zmq.ZMQError):
                self.router.send_multipart([identity, pack_ack(batch_no)], zmq.NOBLOCK)
        self._publish(group)
        return True

    def _publish(self, group: _Group) -> None:
        """Forward the group to live-feed subscribers as one message: [b"events", msgpack
        list of packed events]. A slow subscriber misses messages; ingest never waits."""
        payloads = [p for p, e in zip(group.payloads, group.events, strict=True) if e.type != "heartbeat"]
        if payloads:
            with contextlib.suppress(zmq.ZMQError):
                self.live.send_multipart([b"events", msgpack.packb(payloads, use_bin_type=True)], zmq.NOBLOCK)

    # -- spools, liveness, quarantine ----------------------------------------------------
    def ingest_spools(self) -> None:
        """Ingest spool files left by clients that have exited, then delete them."""
        for path, payloads, scan in claim_spool_files(spool_dir(self.home)):
            group = _Group()
            self._take(group, payloads)
            if not self._commit(group):
                return
            if scan.corrupt_regions or scan.tail_bytes:
                logger.warning(
                    "spool {}: {} damaged region(s), {} tail bytes skipped",
                    path.name,
                    scan.corrupt_regions,
                    scan.tail_bytes,
                )
            self.stats.spool_files += 1
            self.stats.spool_events += len(group.payloads)
            path.unlink(missing_ok=True)

    def check_liveness(self, now: float) -> None:
        """Write a client_lost event for each client that has open work but went silent."""
        lost = []
        for client_id, run_ids in self.projector.open_work().items():
            last_seen = self._last_seen.setdefault(client_id, now)
            if client_id != DAEMON_CLIENT_ID and now - last_seen > self.settings.client_timeout_s:
                wall_last_seen = time.time_ns() - int((now - last_seen) * 1e9)
                lost += [self._client_lost(client_id, run_id, wall_last_seen) for run_id in sorted(run_ids)]
                self._last_seen.pop(client_id, None)
                self.stats.clients_lost += 1
                logger.warning(
                    "client {} lost (silent for {:.1f}s); runs {}", client_id, now - last_seen, sorted(run_ids)
                )
        if lost:
            group = _Group(payloads=[pack_event(e) for e in lost], events=[validate_event(e) for e in lost])
            self._commit(group)

    def check_disk(self) -> None:
        """Compare free space (and the home's size, every 5 min) with the thresholds; say
        so when the state changes: in the log, in status.json and on the live feed."""
        now = time.monotonic()
        limits = self.settings.disk
        measure_home = limits.max_home_bytes is not None and now >= self._next_home_measure
        if measure_home:
            self._next_home_measure = now + 300
        reading = read_disk(self.home, measure_home)
        if reading.home_bytes is None:
            reading = type(reading)(reading.free_bytes, reading.total_bytes, self.disk.get("home_bytes"))
        state, problems = disk_state(reading, limits)
        changed = state != self.disk["state"]
        self.disk = {"state": state, "problems": problems, "free_bytes": reading.free_bytes,
                     "total_bytes": reading.total_bytes, "home_bytes": reading.home_bytes}  # fmt: skip
        if changed:
            (logger.info if state == OK else logger.warning)("disk {}: {}", state, "; ".join(problems) or "all clear")
            with contextlib.suppress(zmq.ZMQError):
                self.live.send_multipart([b"disk", msgpack.packb(self.disk)], zmq.NOBLOCK)

    def apply_retention(self) -> None:
        """Remove what has expired (a run the projection still holds waits for the next pass),
        then compact aged partitions: both run here, in the only thread that writes."""
        from stagewatch.daemon._retention import apply_retention

        freed = apply_retention(self.home, self.settings.retention, exclude=set(self.projector.runs))
        now = utc_now()
        compacted = compact(self.home / "metrics", now, progress=self._alive) if self._checkpoint_all() else 0
        if compacted:
            logger.info("compacted {} aged Parquet partition(s) into one file each", compacted)
        try:
            summarized = refresh_summaries(self.home, aged_cutoff(now))
        except OSError as error:
            self._write_error("cannot write stage-stats summaries ({}); will retry", error)
        else:
            if summarized:
                logger.info("summarized {} compacted partition(s) for stats", summarized)
        if freed["runs"] or freed["segments"]:
            logger.info("retention removed {} run(s) ({} bytes, {} rows) and {} segment(s) ({} bytes)",
                        len(freed["runs"]), freed["run_bytes"], freed["parquet_rows"], len(freed["segments"]),
                        freed["segment_bytes"])  # fmt: skip

    def _alive(self) -> None:
        """Between steps of long maintenance: tell systemd's watchdog the daemon still works."""
        if self._systemd.watchdog_interval_s:
            self._systemd.notify("WATCHDOG=1")

    def _checkpoint_all(self) -> bool:
        """Flush with a checkpoint; True if it covers every row written. Compaction needs that:
        recovery drops the parts past the checkpoint and replays their rows, so a merged part
        (named by its lowest lsn) must never hold rows past it."""
        self.flush(final=True)
        return self._checkpoint_lsn == self.log.end_lsn

    def merge_small_parts(self) -> None:
        """Merge parts of the same size tier (today's partition too), so no query opens a
        file per flush; a checkpoint first, as for the aged partitions."""
        plan = tier_plan(self.home / "metrics")
        if plan and self._checkpoint_all():
            # A bounded pass: ingestion waits while it runs; what is left waits for the next one.
            deadline = time.monotonic() + MERGE_BUDGET_S
            try:
                merged = carry_out(self.home / "metrics", plan, self._alive, deadline)
                logger.debug("merged {} group(s) of small Parquet parts", merged)
            except OSError as error:  # a full disk: the partition is untouched, the next pass retries
                self._write_error("cannot merge Parquet parts ({}); will retry", error)

    def _client_lost(self, client_id: str, run_id: str, last_seen_ns: int) -> dict[str, Any]:
        self._daemon_seq += 1
        return protocol.client_lost(
            self._daemon_seq, run_id, time.time_ns(), lost_client_id=client_id, last_seen_ns=last_seen_ns
        )

    def _quarantine(self, rejected: list[Rejected]) -> None:
        if not rejected:
            return
        self.stats.invalid += len(rejected)
        now = datetime.now(UTC)
        lines = [
            json.dumps(
                {
                    "received_at": now.isoformat(),
                    "reason": r.reason,
                    "client_id": r.client_id,
                    "raw_base64": base64.b64encode(r.raw[:65536]).decode(),
                }
            )
            for r in rejected
        ]
        path = self.home / "quarantine" / f"{now:%Y-%m-%d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "a") as handle:
                handle.write("\n".join(lines) + "\n")
        except OSError as error:
            self._write_error("cannot write the quarantine file: {}", error)
        logger.warning("quarantined {} invalid event(s); first: {}", len(rejected), rejected[0].reason)

    # -- read models ---------------------------------------------------------------------
    def flush(self, final: bool = False) -> None:
        """Write new rows, changed audit trails, then (when due) the checkpoint.

        Rows are written every flush. A running run's audit trail and the checkpoint are
        rewritten as often as their cost allows (CostThrottle); a finished run's audit trail
        is written at once, and everything is written on shutdown (`final`).
        """
        try:
            self._write_output()
            self._write_audits(final)
            self._evict_finished_runs()
            self._write_checkpoint(final)
            self._write_status()
        except OSError as error:
            self._write_error("cannot write read models ({}); will retry", error)

    def _write_output(self) -> None:
        """Append ended stages and table rows; what fails stays queued for the next flush."""
        projector = self.projector
        rows, stage_lines = projector.take_output()
        try:
            for run_id in list(stage_lines):
                self.store.append_stage_lines(projector.runs[run_id], stage_lines[run_id])
                del stage_lines[run_id]
            for table, table_rows in rows.items():
                if table_rows:
                    self.store.write_rows(table, table_rows)
                    table_rows.clear()
        except OSError:
            for table, table_rows in rows.items():
                projector.rows[table][:0] = table_rows
            for run_id, entries in stage_lines.items():
                projector.stage_lines.setdefault(run_id, [])[:0] = entries
            raise

    def _write_audits(self, final: bool) -> None:
        now = time.monotonic()
        for run_id in sorted(self.projector.dirty):
            run = self.projector.runs.get(run_id)
            if run is None:
                self.projector.dirty.discard(run_id)
            elif final or run["complete"] or self._throttle.due(run_id, now):
                started = time.monotonic()
                self.store.write_audit(run)
                self._throttle.spent(run_id, started, time.monotonic())
                self.projector.dirty.discard(run_id)

    def _write_checkpoint(self, final: bool) -> None:
        if not (final or self._throttle.due("checkpoint", time.monotonic())):
            return
        started = time.monotonic()
        state = {
            "lsn": self.log.end_lsn,
            "projector": self.projector.to_state(),
            "dedup": self.dedup.to_state(),
            "daemon_seq": self._daemon_seq,
        }
        self.store.write_checkpoint(state)
        self._checkpoint_lsn = state["lsn"]
        self._throttle.spent("checkpoint", started, time.monotonic())

    def _evict_finished_runs(self) -> None:
        now = time.monotonic()
        for run_id in self.projector.finished_runs():
            self._finished_at.setdefault(run_id, now)
        expired = [r for r, at in self._finished_at.items() if now - at >= self.settings.finished_run_grace_s]
        self.projector.evict([r for r in expired if r in self.projector.runs])
        for run_id in expired:
            del self._finished_at[run_id]
            self._throttle.forget(run_id)

    def _write_status(self) -> None:
        active = [
            {"run_id": r["run_id"], "pipeline": r["pipeline"], "started_at": r["started_at"], "status": r["status"]}
            for r in self.projector.runs.values()
            if not r["complete"]
        ]
        status = {
            "pid": os.getpid(),
            "endpoint": self.settings.endpoint,
            "updated_at": time.time(),
            "disk": self.disk,
            "stats": asdict(self.stats),
            "active_runs": active,
            "late_events": self.projector.late_events,
        }
        atomic_write(self.home / "state" / "status.json", json.dumps(status, indent=1).encode())

    def _write_error(self, message: str, error: OSError) -> None:
        """Count a refused write; say so at once, then at most every 10 s (a full disk
        refuses every retry, and the log file may be on that disk too)."""
        self.stats.write_errors += 1
        now = time.monotonic()
        if now >= self._next_write_error_log.get(message, 0.0):
            self._next_write_error_log[message] = now + 10.0
            logger.error(message + " [{} refused writes so far]", error, self.stats.write_errors)

    def _stats_line(self) -> str:
        s = self.stats
        return (
            f"accepted={s.accepted} duplicates={s.duplicates} invalid={s.invalid} "
            f"spool_events={s.spool_events} clients_lost={s.clients_lost} write_errors={s.write_errors}"
        )


def configure_logging(home: Path, level: str = "INFO", keep_s: float | None = 30 * 86400) -> None:
    """stderr for systemd's journal, plus a JSON log under the home, rotated at 10 MB and
    kept for `keep_s` seconds (retention.daemon_logs; None keeps the last 10 files)."""
    import sys
    from datetime import timedelta

    logger.remove()
    logger.add(sys.stderr, level=level, format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {message}")
    logger.add(
        home / "logs" / "daemon.jsonl",
        level=level,
        serialize=True,
        rotation="10 MB",
        retention=timedelta(seconds=keep_s) if keep_s is not None else 10,
        compression="gz",
        enqueue=False,
    )
