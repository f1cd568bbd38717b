"""The live feed: one subscriber per dashboard server process, folded into a board that every
browser session reads (never a poll of Parquet).

The daemon publishes each committed group of events on `run/live.sock` ([b"events", the
group's event-log records, `stagewatch._records`, heartbeats included]) and the accuracy
worker each run's summary on `run/accuracy.sock`. A thread here receives both and folds
them with `LiveBoard.take`; sessions redraw from the board when its version moved. Folding
is O(1) an event, so a pipeline at thousands of events a second costs the page nothing: it
redraws at most twice a second whatever the rate. A dashboard older than its daemon (the
feed was a msgpack list before) shows no live events until it is restarted.

A run the feed joins mid-way (the dashboard started or restarted during it) has a past the
feed never carried: its stored stage rows are folded in (`LiveBoard.take_stored`), first when
the run is met, then each second until the run has ended and its row is in the runs table.
A stage end is counted once whichever way it came: the joined run keeps the identities
(client, span) of what it counted until then. Events published before the feed subscribed
and stored after the first read are what the later reads add.
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from stagewatch._protocol import DAEMON_CLIENT_ID, HEARTBEAT, RECEIVED
from stagewatch._records import scan_records
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.projection._outcomes import run_end_status
from stagewatch.daemon.query._readmodels import active_runs, read_table
from stagewatch.daemon.tables._runindex import run_dates

RECENT_DURATIONS = 512  # the running median is over a stage's last 512 executions
RATE_WINDOW_S = 10.0  # samples/s over the last 10 s
FINISHED_KEPT_S = 600.0  # a run that ended stays on the Live page for 10 min
MAX_RUNS = 200  # beyond this many runs the oldest ended ones are forgotten first
RECONCILE_S = 1.0  # a joined run's new stored rows are read once a second
STORED_COLUMNS = [
    "pipeline",
    "stage",
    "status",
    "sample_id",
    "client_id",
    "span",
    "start_time",
    "end_time",
    "duration_ms",
    "rss_peak_mb",
    "gpu_peak_mb",
    "error_type",
    "error_message",
    "lsn",
]
StageIdentity = tuple[Any, Any]  # (client_id, span): one stage execution, however it reached us


@dataclass
class LiveStage:
    done: int = 0
    failed: int = 0
    running: int = 0
    latest_ms: float | None = None
    durations: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT_DURATIONS))
    rss_peak_mb: float | None = None
    gpu_peak_mb: float | None = None
    first_seen_ns: int = 0

    @property
    def median_ms(self) -> float | None:
        return float(np.median(self.durations)) if self.durations else None


@dataclass
class LiveRun:
    run_id: str
    pipeline: str | None = None
    host: str | None = None
    started_ns: int | None = None
    status: str = "running"
    ended_at: float | None = None  # monotonic, when run_finished or client_lost arrived
    stages: dict[str, LiveStage] = field(default_factory=dict)
    failures: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))
    sample_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10_000))
    samples_seen: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None  # the golden dataset it is judged against (the accuracy feed's)
    last_event_ns: int = 0
    # A run joined mid-way: the stage ends counted so far (feed and stored rows), until its
    # stored rows are complete; None for a run seen from its start (the feed carries it all).
    counted: set[StageIdentity] | None = None
    stored_lsn: int = -1  # the highest event-log position of the stored rows folded in

    def samples_per_s(self, now_ns: int) -> float:
        recent = [t for t in self.sample_times if t > now_ns - RATE_WINDOW_S * 1e9]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max((recent[-1] - recent[0]) / 1e9, 1e-3)


class LiveBoard:
    """What is running now, folded from events; `version` moves with every change."""

    def __init__(self) -> None:
        self.runs: dict[str, LiveRun] = {}
        self.version = 0
        self.events = 0
        self.lock = threading.Lock()

    def take(self, event: dict[str, Any], known: dict[str, dict[str, Any]] | None = None) -> None:
        """Fold one event (a dict as the client sent it). Unknown or odd events are ignored.
        `known`: the daemon's active runs by id, for a run whose start came before we listened."""
        run_id, kind = event.get("run_id"), event.get("type")
        if not isinstance(run_id, str) or not isinstance(kind, str):
            return
        run = self.runs.get(run_id)
        if run is None:
            run = self.join(run_id) if kind != RUN_STARTED else self._add(run_id)
        if run.pipeline is None and known:
            _describe(run, known.get(run_id))
        ts = event.get("ts_ns") if isinstance(event.get("ts_ns"), int) else 0
        run.last_event_ns = max(run.last_event_ns, ts)
        if run.status == "crashed" and kind != "client_lost" and event.get("client_id") != DAEMON_CLIENT_ID:
            run.status, run.ended_at = "running", None  # a client declared lost sent again: it was paused
        handler = _HANDLERS.get(kind)
        if handler is not None and _first_count(run, event):
            handler(run, event)
        self.events += 1
        self.version += 1

    def join(self, run_id: str) -> LiveRun:
        """A run met mid-way: its past is to come from its stored rows (`take_stored`)."""
        run = self.runs.get(run_id)
        if run is None:
            run = self._add(run_id)
            run.counted = set()
        return run

    def joined(self) -> list[LiveRun]:
        """The runs whose stored rows are still to be folded in."""
        return [run for run in self.runs.values() if run.counted is not None]

    def take_stored(self, run_id: str, rows: list[dict[str, Any]], complete: bool) -> None:
        """Fold a joined run's stored stage rows (in event-log order) that the feed did not
        bring; `complete`: every row of the run is among those stored (it has ended), so what
        it counted need not be kept any longer."""
        run = self.runs.get(run_id)
        if run is None or run.counted is None:
            return
        if rows and run.pipeline is None:  # a short run can end before status.json lists it
            run.pipeline = rows[0]["pipeline"]
        for row in rows:
            event = _stored_end(run_id, row)
            if _first_count(run, event):
                _on_stage_ended(run, event)
            run.stored_lsn = max(run.stored_lsn, row["lsn"])
        if complete:
            run.counted = None
        self.version += 1

    def _add(self, run_id: str) -> LiveRun:
        run = self.runs[run_id] = LiveRun(run_id)
        self._forget_old(keep=run_id)
        return run

    def end(self, run_id: str, status: str) -> None:
        """A run ended as its stored row says (its end did not come through the feed)."""
        run = self.runs.get(run_id)
        if run is not None and run.ended_at is None:
            run.status, run.ended_at = status, time.monotonic()
            self.version += 1

    def take_accuracy(self, summary: dict[str, Any]) -> None:
        run_id = summary.get("run_id")
        if isinstance(run_id, str) and isinstance(summary.get("stages"), dict):
            run = self.runs.setdefault(run_id, LiveRun(run_id))
            run.accuracy = summary["stages"]
            run.dataset = summary.get("dataset") if isinstance(summary.get("dataset"), str) else run.dataset
            self.version += 1

    def visible(self, now: float | None = None) -> list[LiveRun]:
        """Runs in progress, then those that ended in the last 10 minutes; newest first."""
        now = time.monotonic() if now is None else now
        shown = [r for r in self.runs.values() if r.ended_at is None or now - r.ended_at < FINISHED_KEPT_S]
        return sorted(shown, key=lambda r: (r.ended_at is not None, -(r.started_ns or r.last_event_ns)))

    def _forget_old(self, keep: str) -> None:
        """Past MAX_RUNS, forget the runs that ended first, then the longest silent ones."""
        excess = len(self.runs) - MAX_RUNS
        if excess <= 0:
            return
        others = [r for r in self.runs.values() if r.run_id != keep]
        others.sort(key=lambda r: (r.ended_at is None, r.ended_at or 0.0, r.last_event_ns))
        for run in others[:excess]:
            del self.runs[run.run_id]


def _first_count(run: LiveRun, event: dict[str, Any]) -> bool:
    """False for a stage end a joined run has counted already (from its stored rows or the
    feed); every other event is new."""
    if run.counted is None or event.get("type") not in STAGE_ENDS:
        return True
    identity = (event.get("client_id"), event.get("span"))
    if identity in run.counted:
        return False
    run.counted.add(identity)
    return True


def _stored_end(run_id: str, row: dict[str, Any]) -> dict[str, Any]:
    """A stored stage row as the stage end event it was (a crashed stage counts as failed)."""
    return {
        **row,
        "type": STAGE_FINISHED if row["status"] == "ok" else STAGE_FAILED,
        "run_id": run_id,
        "ts_ns": row["end_time"],
        "start_ts_ns": row["start_time"],
    }


def stored_ends(home: Path, run_id: str, after_lsn: int) -> list[dict[str, Any]]:
    """A run's stored stage rows past event-log position `after_lsn`, in log order (start and
    end as ns): only the run's date partitions are read."""
    expression = (ds.field("run_id") == run_id) & (ds.field("lsn") > after_lsn)
    rows = read_table(home, "stage_executions", expression, run_dates(home, run_id), STORED_COLUMNS)
    rows = rows.sort_by("lsn")
    for name in ("start_time", "end_time"):
        rows = rows.set_column(rows.schema.get_field_index(name), name, rows[name].cast(pa.int64()))
    return rows.to_pylist()


def stored_status(home: Path, run_id: str) -> str | None:
    """How the run ended, as its row in the runs table says; None while it has no row (its row
    is written once it has ended and its stage rows are written: the daemon writes them first)."""
    expression = ds.field("run_id") == run_id
    rows = read_table(home, "runs", expression, run_dates(home, run_id), ["status"])
    return str(rows["status"][-1].as_py() or "ok") if rows.num_rows else None


def _describe(run: LiveRun, active: dict[str, Any] | None) -> None:
    """Pipeline, host and start of a run joined mid-way, from the daemon's status.json."""
    if not active:
        return
    run.pipeline, run.host = active.get("pipeline"), active.get("host")
    with contextlib.suppress(ValueError, TypeError):
        run.started_ns = int(datetime.fromisoformat(active["started_at"]).timestamp() * 1e9)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _stage_of(run: LiveRun, event: dict[str, Any]) -> LiveStage | None:
    name = event.get("stage")
    if not isinstance(name, str):
        return None
    stage = run.stages.get(name)
    if stage is None:
        stage = run.stages[name] = LiveStage(first_seen_ns=event.get("ts_ns") or 0)
    return stage


def _on_run_started(run: LiveRun, event: dict[str, Any]) -> None:
    run.pipeline, run.host, run.started_ns = event.get("pipeline"), event.get("host"), event.get("ts_ns")


def _on_stage_started(run: LiveRun, event: dict[str, Any]) -> None:
    stage = _stage_of(run, event)
    if stage is not None:
        stage.running += 1


def _on_stage_ended(run: LiveRun, event: dict[str, Any]) -> None:
    stage = _stage_of(run, event)
    if stage is None:
        return
    started = event.get("start_ts_ns")
    if isinstance(started, int) and started < stage.first_seen_ns:  # the pipeline's order, when joined mid-run
        stage.first_seen_ns = started
    stage.running = max(stage.running - 1, 0)
    stage.done += 1
    duration = _number(event.get("duration_ms"))
    if duration is not None:
        stage.latest_ms = duration
        stage.durations.append(duration)
    for name in ("rss_peak_mb", "gpu_peak_mb"):
        value = _number(event.get(name))
        if value is not None:
            setattr(stage, name, max(getattr(stage, name) or 0.0, value))
    if event.get("type") == "stage_failed":
        stage.failed += 1
        _keep_failure(
            run,
            {
                "stage": event.get("stage"),
                "sample_id": event.get("sample_id"),
                "error": f"{event.get('error_type')}: {event.get('error_message')}",
                "ts_ns": event.get("ts_ns"),
            },
        )
    sample = event.get("sample_id")
    if isinstance(sample, str) and isinstance(event.get("ts_ns"), int) and sample not in run.samples_seen:
        run.samples_seen[sample] = None  # a sample counts once, whichever stages it passes
        if len(run.samples_seen) > run.sample_times.maxlen:
            run.samples_seen.popitem(last=False)
        run.sample_times.append(event["ts_ns"])


def _keep_failure(run: LiveRun, failure: dict[str, Any]) -> None:
    """Keep the newest failures, newest first, whatever order they come in (a joined run's
    stored rows come after the feed's newer ones)."""
    newest = _number(failure["ts_ns"]) or 0.0
    if not run.failures or newest >= (_number(run.failures[0]["ts_ns"]) or 0.0):
        run.failures.appendleft(failure)  # the feed's order: O(1)
        return
    kept = sorted([*run.failures, failure], key=lambda f: _number(f["ts_ns"]) or 0.0, reverse=True)
    run.failures = collections.deque(kept[: run.failures.maxlen], maxlen=run.failures.maxlen)


def _on_run_finished(run: LiveRun, event: dict[str, Any]) -> None:
    # The daemon's words for the same end (daemon/projection/_outcomes.py): stages that failed on the way
    # make a run that went on "finished with failures", not "failed".
    failed = sum(stage.failed for stage in run.stages.values())
    run.status = run_end_status(str(event.get("status") or "ok"), event.get("error_type"), failed, 0)
    run.ended_at = time.monotonic()


def _on_client_lost(run: LiveRun, event: dict[str, Any]) -> None:
    run.status, run.ended_at = "crashed", time.monotonic()


RUN_STARTED, STAGE_FINISHED, STAGE_FAILED = "run_started", "stage_finished", "stage_failed"
STAGE_ENDS = (STAGE_FINISHED, STAGE_FAILED)
_HANDLERS = {
    RUN_STARTED: _on_run_started,
    "stage_started": _on_stage_started,
    STAGE_FINISHED: _on_stage_ended,
    STAGE_FAILED: _on_stage_ended,
    "run_finished": _on_run_finished,
    "client_lost": _on_client_lost,
}


class LiveFeed:
    """The one subscriber of this server process (started by the first session that asks)."""

    _instances: dict[Path, LiveFeed] = {}
    _guard = threading.Lock()

    def __init__(self, home: Path) -> None:
        self.home = DaemonHome.of(home)
        self.board = LiveBoard()
        self.connected = False
        self._status_read_at = 0.0
        self._known: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stagewatch-live", daemon=True)
        self._thread.start()

    @classmethod
    def of(cls, home: Path) -> LiveFeed:
        with cls._guard:
            feed = cls._instances.get(home)
            if feed is None:
                feed = cls._instances[home] = cls(home)
            return feed

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import zmq

        context = zmq.Context()
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, 10_000)
        for endpoint in (self.home.live_endpoint, self.home.accuracy_endpoint):
            socket.connect(endpoint)  # ipc connects succeed before the daemon binds; ZeroMQ reconnects
        socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._join_active()  # after subscribing: what the first read misses, the feed or a later read brings
        self.connected = True
        reconciled = time.monotonic()
        try:
            while not self._stop.is_set():
                if time.monotonic() - reconciled >= RECONCILE_S:
                    self._reconcile()
                    reconciled = time.monotonic()
                if not socket.poll(200):
                    continue
                while True:
                    try:
                        frames = socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._take(frames)
        finally:
            socket.close()
            context.term()

    def _join_active(self) -> None:
        """The runs in progress as this feed starts, joined with what is stored of them."""
        self._reconcile()

    def _join_listed(self) -> set[str]:
        """The runs the daemon lists in progress (its status.json, rewritten each second); those
        the board has not met are joined. So a daemon whose feed this process cannot reach (one
        on another machine writing its home to a shared file system: its socket is local to it)
        still shows its runs, from what it stores. Returns the ids listed."""
        listed = {run["run_id"]: run for run in active_runs(self.home.root) if isinstance(run.get("run_id"), str)}
        with self.board.lock:
            for run_id, active in listed.items():
                if run_id not in self.board.runs:
                    _describe(self.board.join(run_id), active)
        return set(listed)

    def _reconcile(self) -> None:
        """Join the runs the daemon lists that the board has not met, and fold the joined runs'
        stage rows stored since the last read. A run that has ended and whose row is stored is
        complete after this read: its identities are let go. A joined run whose end the feed
        did not bring ends when the daemon lists it no longer and its row is stored (with that
        row's status). A read that fails (a damaged part, a file swapped away) is tried again
        next time."""
        listed = self._join_listed()
        with self.board.lock:
            joined = [(run.run_id, run.stored_lsn, run.ended_at is not None) for run in self.board.joined()]
        for run_id, after_lsn, ended in joined:
            try:
                # Before the rows: the daemon writes them first.
                status = stored_status(self.home.root, run_id) if ended or run_id not in listed else None
                rows = stored_ends(self.home.root, run_id, after_lsn)
            except (OSError, ValueError, pa.ArrowException):  # ValueError: ArrowInvalid, an odd name
                continue
            with self.board.lock:
                self.board.take_stored(run_id, rows, status is not None)
                if status is not None and not ended:
                    self.board.end(run_id, status)
        self._end_unlisted(listed)

    def _end_unlisted(self, listed: set[str]) -> None:
        """A run seen from its start whose end the feed did not bring (a subscriber that fell
        behind on a busy machine loses messages past its queue): ended once the daemon lists it
        no longer and its row is stored, as a joined run is; it stayed running for ever."""
        with self.board.lock:
            open_runs = [r.run_id for r in self.board.runs.values() if r.ended_at is None and r.counted is None]
        for run_id in (run_id for run_id in open_runs if run_id not in listed):
            try:
                status = stored_status(self.home.root, run_id)
            except (OSError, ValueError, pa.ArrowException):
                continue
            if status is not None:
                with self.board.lock:
                    self.board.end(run_id, status)

    def _take(self, frames: list[bytes]) -> None:
        """Fold one message; anything undecodable costs only itself."""
        if len(frames) != 2:
            return
        topic, body = frames
        if topic == b"events":
            for _, payload in scan_records(body):
                event = _decoded(payload)
                if isinstance(event, dict) and event.get("type") not in (HEARTBEAT, RECEIVED):
                    known = self._known_runs(event)
                    with self.board.lock:
                        met = event.get("run_id") not in self.board.runs
                        self.board.take(event, known)
                    if met and event.get("type") != RUN_STARTED:
                        self._reconcile()  # a run joined mid-way: its stored past at once
        elif topic == b"accuracy":
            with contextlib.suppress(ValueError, RecursionError):
                summary = json.loads(body)
                if isinstance(summary, dict):
                    with self.board.lock:
                        self.board.take_accuracy(summary)

    def _known_runs(self, event: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
        """The daemon's active runs, for a run whose start came before we listened: read at
        most once a second (the daemon rewrites the file once a second)."""
        run = self.board.runs.get(event.get("run_id"))
        if event.get("type") == "run_started" or (run is not None and run.pipeline is not None):
            return None
        now = time.monotonic()
        if now - self._status_read_at >= 1.0:
            self._status_read_at = now
            self._known = {r.get("run_id"): r for r in active_runs(self.home.root) if isinstance(r, dict)}
        return self._known


def _decoded(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError):
        return None
