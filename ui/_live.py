"""The live feed: one subscriber per dashboard server process, folded into a board that every
browser session reads (never a poll of Parquet).

The daemon publishes each committed group of events on `run/live.sock` ([b"events", the
group's event-log records, `stagewatch._records`, heartbeats included]) and the accuracy
worker each run's summary on `run/accuracy.sock`. A thread here receives both and folds
them with `LiveBoard.take`; sessions redraw from the board when its version moved. Folding
is O(1) an event, so a pipeline at thousands of events a second costs the page nothing: it
redraws at most twice a second whatever the rate. A dashboard older than its daemon (the
feed was a msgpack list before) shows no live events until it is restarted.
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

from stagewatch._home import Home
from stagewatch._protocol import DAEMON_CLIENT_ID, HEARTBEAT, RECEIVED
from stagewatch._records import scan_records
from stagewatch.daemon._readmodels import active_runs

RECENT_DURATIONS = 512  # the running median is over a stage's last 512 executions
RATE_WINDOW_S = 10.0  # samples/s over the last 10 s
FINISHED_KEPT_S = 600.0  # a run that ended stays on the Live page for 10 min
MAX_RUNS = 200  # beyond this many runs the oldest ended ones are forgotten first


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
    last_event_ns: int = 0

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
            run = self.runs[run_id] = LiveRun(run_id)
            self._forget_old(keep=run_id)
        if run.pipeline is None and known:
            _describe(run, known.get(run_id))
        ts = event.get("ts_ns") if isinstance(event.get("ts_ns"), int) else 0
        run.last_event_ns = max(run.last_event_ns, ts)
        if run.status == "crashed" and kind != "client_lost" and event.get("client_id") != DAEMON_CLIENT_ID:
            run.status, run.ended_at = "running", None  # a client declared lost sent again: it was paused
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(run, event)
        self.events += 1
        self.version += 1

    def take_accuracy(self, summary: dict[str, Any]) -> None:
        run_id = summary.get("run_id")
        if isinstance(run_id, str) and isinstance(summary.get("stages"), dict):
            self.runs.setdefault(run_id, LiveRun(run_id)).accuracy = summary["stages"]
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
        run.failures.appendleft(
            {
                "stage": event.get("stage"),
                "sample_id": event.get("sample_id"),
                "error": f"{event.get('error_type')}: {event.get('error_message')}",
                "ts_ns": event.get("ts_ns"),
            }
        )
    sample = event.get("sample_id")
    if isinstance(sample, str) and isinstance(event.get("ts_ns"), int) and sample not in run.samples_seen:
        run.samples_seen[sample] = None  # a sample counts once, whichever stages it passes
        if len(run.samples_seen) > run.sample_times.maxlen:
            run.samples_seen.popitem(last=False)
        run.sample_times.append(event["ts_ns"])


def _on_run_finished(run: LiveRun, event: dict[str, Any]) -> None:
    run.status = str(event.get("status") or "ok")
    run.ended_at = time.monotonic()


def _on_client_lost(run: LiveRun, event: dict[str, Any]) -> None:
    run.status, run.ended_at = "crashed", time.monotonic()


_HANDLERS = {
    "run_started": _on_run_started,
    "stage_started": _on_stage_started,
    "stage_finished": _on_stage_ended,
    "stage_failed": _on_stage_ended,
    "run_finished": _on_run_finished,
    "client_lost": _on_client_lost,
}


class LiveFeed:
    """The one subscriber of this server process (started by the first session that asks)."""

    _instances: dict[Path, LiveFeed] = {}
    _guard = threading.Lock()

    def __init__(self, home: Path) -> None:
        self.home = Home.of(home)
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
        self.connected = True
        try:
            while not self._stop.is_set():
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
                        self.board.take(event, known)
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
