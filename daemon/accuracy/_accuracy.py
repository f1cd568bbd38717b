"""Live accuracy: a worker process that follows the event log and judges sample results.

It runs beside the daemon (started and watched by it) so that evaluation never slows
ingestion: it tails the log's segments, folds run_started / sample_result / run_finished
(and client_lost: a crashed run is finished too) into per-stage metrics (groundtruth.samples.StageAccuracy), and writes

    metrics/samples/ (a Delta table)              one row per judged sample
    runs/{run_id}/accuracy.json                   per-stage counts and metrics, rewritten live
    state/accuracy.msgpack                        its checkpoint

and publishes [b"accuracy", json] on its own PUB socket (a UI subscriber connects to both
feeds). On restart it replays the runs still open at its checkpoint without re-emitting the
rows it already wrote: each commit of samples carries the lsn of its last row's event (its own
application transaction in the table, `ACCURACY_APP`), so rows up to it are not written again.
`stagewatch rebuild` and `stagewatch eval --run` use the same fold.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from loguru import logger

from stagewatch.daemon.base._derived import ACCURACY_CHECKPOINT, WORKER_FILES, load, repair
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._throttle import CostThrottle
from stagewatch.daemon.groundtruth.samples import StageAccuracy
from stagewatch.daemon.groundtruth.spec import DatasetError, GoldenDataset, load_dataset
from stagewatch.daemon.ingest._decode import Rejected, decode_event
from stagewatch.daemon.ingest._eventlog import EventLog
from stagewatch.daemon.tables._store import Store, atomic_write
from stagewatch.daemon.tables._tables import ACCURACY_APP, DamagedTable, committed_lsn

WANTED = (b"sample_result", b"run_started", b"run_finished", b"client_lost", b"run_expired")
# Runs ended by their owner's loss kept in memory for the owner's return (a pause): each holds
# its stages' accumulated verdicts. A worker restarted meanwhile has forgotten them.
MAX_PARKED_RUNS = 100
# The worker's exit status when `samples` cannot be used (damaged, or deleted under it).
TABLE_UNUSABLE = 3
SUMMARY_INTERVAL_S = 0.5  # how often a running run's accuracy.json and live numbers are refreshed


class RunAccuracy:
    def __init__(self, run_id: str, pipeline: str, dataset_path: str | None, dataset: GoldenDataset | str | None):
        self.run_id = run_id
        self.pipeline = pipeline
        self.dataset_path = dataset_path
        self.dataset = dataset if isinstance(dataset, GoldenDataset) else None
        self.problem = dataset if isinstance(dataset, str) else None
        self.stages: dict[str, StageAccuracy] = {}
        self.not_in_dataset: dict[str, int] = {}  # results for stages the dataset does not check
        self.finished = False  # run_finished, or its owner was lost (the daemon's client_lost)
        self.owner_lost = False  # finished by its owner's loss: the owner may have been paused, not dead
        self.owner: str | None = None  # the client that started the run

    def judge(self, stage: str, sample_id: str, prediction: Any, path: Path | None) -> Any:
        if self.dataset is None or stage not in self.dataset.spec.stages:
            self.not_in_dataset[stage] = self.not_in_dataset.get(stage, 0) + 1
            return None
        if stage not in self.stages:
            self.stages[stage] = StageAccuracy(self.dataset, stage)
        return self.stages[stage].judge(sample_id, prediction, path)

    def summary(self, coco: bool = True) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "dataset": self.dataset_path,
            "dataset_name": self.dataset.name if self.dataset else None,
            "dataset_problem": self.problem,
            "finished": self.finished,
            "stages": {name: s.summary(coco) for name, s in self.stages.items()},
            "results_without_ground_truth": self.not_in_dataset,
        }


class AccuracyProjection:
    """The fold: events in log order → run accuracies and samples rows. Pure but for reading
    the datasets and predictions it is pointed at."""

    def __init__(self, home: Path, dataset: str | None = None, dataset_roots: tuple[Path, ...] | None = None) -> None:
        self.home = home
        self.dataset_override = dataset  # `eval --run --dataset`: judge against another dataset
        self.dataset_roots = dataset_roots  # None: anywhere (a home of one user)
        self.runs: dict[str, RunAccuracy] = {}
        self.parked: OrderedDict[str, RunAccuracy] = OrderedDict()  # runs ended by their owner's loss
        self.rows: list[dict[str, Any]] = []
        self.dirty: set[str] = set()
        self._datasets: dict[str, GoldenDataset | str] = {}

    def apply(self, event: Any, lsn: int, emit: bool = True) -> None:
        if event.run_id in self.parked and event.type in ("sample_result", "run_finished"):
            run = self.runs[event.run_id] = self.parked.pop(event.run_id)  # its owner was paused: it goes on
            run.finished = run.owner_lost = False
        if event.type == "run_started":
            dataset = self.dataset_override or event.dataset
            if dataset:
                run = RunAccuracy(event.run_id, event.pipeline, dataset, self._dataset(dataset))
                run.owner = event.client_id
                self.runs[event.run_id] = run
                self.dirty.add(event.run_id)
        elif event.type == "sample_result":
            run = self.runs.get(event.run_id)
            if run is not None:
                self._judge(run, event, lsn, emit)
        elif event.type in ("run_finished", "client_lost") and event.run_id in self.runs:
            run = self.runs[event.run_id]
            if event.type == "run_finished" or event.lost_client_id == run.owner:  # the run crashed
                run.finished = True
                run.owner_lost = event.type == "client_lost"
                self.dirty.add(event.run_id)
        elif event.type == "run_expired":
            self._forget(event.run_id)

    def _forget(self, run_id: str) -> None:
        """Retention removed the run (a replay reached its run_expired): write nothing more of it."""
        self.parked.pop(run_id, None)
        if self.runs.pop(run_id, None) is not None:
            self.dirty.discard(run_id)
            self.rows = [row for row in self.rows if row["run_id"] != run_id]

    def release_finished(self) -> list[str]:
        """Forget the finished runs (their accuracy.json is written); returns them. A run ended by
        its owner's loss is parked instead (the last `MAX_PARKED_RUNS`): the daemon withdraws a
        loss when the owner sends again, and so does this fold, with the samples judged so far."""
        finished = [run_id for run_id, run in self.runs.items() if run.finished]
        for run_id in finished:
            run = self.runs.pop(run_id)
            if run.owner_lost:
                self.parked[run_id] = run
                if len(self.parked) > MAX_PARKED_RUNS:
                    self.parked.popitem(last=False)
        return finished

    def _dataset(self, path: str) -> GoldenDataset | str:
        if path not in self._datasets:
            try:
                self._datasets[path] = load_dataset(self._allowed(path))
            except DatasetError as error:
                logger.warning("golden dataset unusable: {}", error)
                self._datasets[path] = str(error)
        return self._datasets[path]

    def _allowed(self, path: str) -> Path:
        """`path`, if it lies inside the allowed dataset roots (symlinks resolved)."""
        resolved = Path(path).resolve()
        if self.dataset_roots is not None and not any(resolved.is_relative_to(r) for r in self.dataset_roots):
            raise DatasetError(
                f"{path}: golden datasets must be inside {', '.join(map(str, self.dataset_roots))} "
                "(daemon.dataset_roots)"
            )
        return resolved

    def _judge(self, run: RunAccuracy, event: Any, lsn: int, emit: bool) -> None:
        path = self._artifact(event.path)
        verdict = run.judge(event.stage, event.sample_id, event.prediction, path)
        self.dirty.add(run.run_id)
        if verdict is None or not emit:
            return
        label_path = input_path = None
        if run.dataset is not None:
            if run.dataset.spec.stages[event.stage].kind != "boxes":
                found = _quietly(lambda: run.dataset.label_path(event.stage, event.sample_id))
                label_path = str(found) if found else None
            found = _quietly(lambda: run.dataset.input_path(event.sample_id))
            input_path = str(found) if found else None
        self.rows.append(
            {
                "run_id": run.run_id,
                "pipeline": run.pipeline,
                "stage": event.stage,
                "sample_id": event.sample_id,
                "time": event.ts_ns,
                "status": verdict.status,
                "value": verdict.value,
                "severity": verdict.severity,
                "error_types": sorted(verdict.errors),
                "errors": json.dumps(verdict.errors),
                "reason": verdict.reason,
                "scores": json.dumps(_plain(verdict.scores)),
                "prediction_path": event.path,
                "label_path": label_path,
                "lsn": lsn,
                "classes": verdict.classes,
                "confidence": verdict.confidence,
                "boxes": json.dumps(verdict.boxes) if verdict.boxes else None,
                "input_path": input_path,
            }
        )

    def _artifact(self, relative: str | None) -> Path | None:
        """A saved prediction under the home; anything else is refused (None: judged invalid)."""
        if not relative:
            return None
        path = (self.home / relative).resolve()
        return path if path.is_relative_to(self.home.resolve()) else self.home / "nonexistent"


def _quietly(function: Any) -> Any:
    try:
        return function()
    except (DatasetError, OSError):
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if isinstance(value, str | int | float | bool | None) else str(value)


def fold_log(home: Path, run_ids: set[str] | None = None, dataset: str | None = None) -> AccuracyProjection:
    """Judge every sample result in the log from the start (`eval --run`)."""
    projection = AccuracyProjection(home, dataset)
    for lsn, payload in EventLog(DaemonHome.of(home).events).read(0):
        event = accuracy_event(payload)
        if event is not None and (run_ids is None or event.run_id in run_ids):
            projection.apply(event, lsn)
    return projection


def accuracy_event(payload: bytes) -> Any | None:
    """The valid event in `payload` if the accuracy fold uses its type; a byte test skips the rest."""
    if not any(marker in payload for marker in WANTED):
        return None
    event = decode_event(payload)
    return None if isinstance(event, Rejected) else event


class AccuracyWorker:
    def __init__(
        self,
        home: Path,
        live_endpoint: str | None = None,
        artifacts: Path | None = None,
        dataset_roots: tuple[Path, ...] | None = None,
    ) -> None:
        """`artifacts`: the home whose saved predictions are judged, when it is not `home`
        (a rebuild writes its read models beside the home's)."""
        self.home = home
        self.store = Store(home, ACCURACY_CHECKPOINT, ACCURACY_APP)
        self.log = EventLog(DaemonHome.of(home).events)
        self.projection = AccuracyProjection(artifacts or home, dataset_roots=dataset_roots)
        self.live_endpoint = live_endpoint
        self._publisher: Any = None
        self._stopping = False
        self._started_at: dict[str, int] = {}  # open run → lsn of its run_started (replay from there)
        self._throttle = CostThrottle(min_interval_s=SUMMARY_INTERVAL_S)
        self.lsn = 0
        self.committed = -1  # the lsn up to which `samples` holds this worker's rows

    def recover(self) -> None:
        """Rebuild the state of the runs open at the checkpoint; emit rows only past it and past
        what the samples table holds (its rows are committed before the checkpoint is written,
        and a kill between the two leaves rows past the checkpoint in the table)."""
        checkpoint = load(ACCURACY_CHECKPOINT, DaemonHome.of(self.home)) or {}  # damaged: set aside, judged again
        self.committed = committed_lsn(self.home, "samples", ACCURACY_APP)
        if checkpoint.get("committed", -1) > self.committed:  # the table deleted or reset by hand
            logger.warning(
                "the samples table holds fewer rows than the accuracy worker's checkpoint counted (deleted or "
                "reset by hand?): every run's sample results are judged again"
            )
            checkpoint = {}
        self.lsn = checkpoint.get("lsn", 0)
        open_runs: dict[str, int] = checkpoint.get("open_runs", {})
        start = min([self.lsn, *open_runs.values()])
        for lsn, payload in self.log.read(start):
            if lsn < self.lsn and not any(run_id.encode() in payload for run_id in open_runs):
                continue
            self._apply(lsn, payload, emit=lsn >= self.lsn and lsn > self.committed)
        self.flush(final=True)

    def _apply(self, lsn: int, payload: bytes, emit: bool = True) -> None:
        self.lsn = max(self.lsn, lsn + 1)
        event = accuracy_event(payload)
        if event is not None:
            if event.type == "run_started" and event.dataset:
                self._started_at[event.run_id] = lsn
            self.projection.apply(event, lsn, emit)

    def serve(self, parent: int, poll_s: float = 0.1) -> None:
        """Follow the log until SIGTERM or until `parent` (the daemon) is gone."""
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stopping", True))
        repair(WORKER_FILES, DaemonHome.of(self.home))  # before its lock: a folder in the lock's place is damage
        if not self._take_lock(parent):
            return
        self.recover()
        self._bind()
        last_flush = 0.0
        while not self._stopping and os.getppid() == parent:
            got = 0
            for lsn, payload in self.log.read(self.lsn):
                self._apply(lsn, payload)
                got += 1
                if got >= 5000:
                    break
            if time.monotonic() - last_flush >= SUMMARY_INTERVAL_S or got >= 5000:
                self.flush()
                last_flush = time.monotonic()
            if not got:
                time.sleep(poll_s)
        self.flush(final=True)

    def _take_lock(self, parent: int, timeout_s: float = 60.0) -> bool:
        """One worker per home: a worker left by a killed daemon may still be finishing."""
        path = DaemonHome.of(self.home).accuracy_lock
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(path, "a")  # noqa: SIM115 - held for the process's life
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and os.getppid() == parent and not self._stopping:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                time.sleep(0.2)
        return False

    def _bind(self) -> None:
        if not self.live_endpoint:
            return
        import zmq

        self._publisher = zmq.Context.instance().socket(zmq.PUB)
        self._publisher.setsockopt(zmq.SNDHWM, 16)
        self._publisher.setsockopt(zmq.LINGER, 0)
        self._publisher.bind(self.live_endpoint)

    def flush(self, final: bool = False) -> None:
        """Rows, then summaries of changed runs, then the checkpoint (so a crash re-emits, never loses)."""
        projection = self.projection
        if projection.rows:
            for row, reason in self._write_samples(projection.rows):
                logger.error("samples row of lsn {} not stored: {}", row["lsn"], reason)
            projection.rows = []
        for run_id in sorted(projection.dirty):
            run = projection.runs[run_id]
            started = time.monotonic()
            # COCO accumulation grows with the run: recomputed at most as often as 10x its cost
            # allows while the run goes on, always at its end (the numbers then equal a batch run).
            coco = final or run.finished or self._throttle.due(run_id, started)
            summary = run.summary(coco=coco)
            if coco:
                self._throttle.spent(run_id, started, time.monotonic())
            atomic_write(DaemonHome.of(self.home).accuracy(run_id), json.dumps(summary, indent=1).encode())
            self._publish(summary)
        projection.dirty.clear()
        for run_id in projection.release_finished():
            self._started_at.pop(run_id, None)
            self._throttle.forget(run_id)
        open_runs = {r: self._started_at.get(r, 0) for r in projection.runs}
        self.store.write_checkpoint({"lsn": self.lsn, "open_runs": open_runs, "committed": self.committed})

    def _write_samples(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
        """Commit the rows; the refused ones, with why. A table damaged, or deleted since this
        worker wrote to it (made anew, it would hold only the rows from now on): the worker
        stops, the daemon sets the table aside and starts a worker that judges every run again."""
        try:
            refused = self.store.write_rows("samples", rows, existing=self.committed >= 0)
        except DamagedTable as error:
            logger.warning("the accuracy worker stops: {}", error)
            raise SystemExit(TABLE_UNUSABLE) from None
        self.committed = max(self.committed, *(row["lsn"] for row in rows))
        return refused

    def _publish(self, summary: dict[str, Any]) -> None:
        if self._publisher is not None:
            import zmq

            with contextlib.suppress(zmq.ZMQError):  # a slow subscriber misses an update, never blocks us
                self._publisher.send_multipart([b"accuracy", json.dumps(summary).encode()], zmq.NOBLOCK)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stagewatch.daemon.accuracy._accuracy")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--live", default=None)
    parser.add_argument("--parent", type=int, default=None, help="the daemon's pid: exit when it is gone")
    parser.add_argument("--dataset-root", type=Path, action="append", help="where datasets may be (repeatable)")
    args = parser.parse_args(argv)
    parent = args.parent if args.parent is not None else os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the daemon died before we could ask to die with it
        return
    roots = tuple(args.dataset_root) if args.dataset_root else None
    AccuracyWorker(args.home.absolute(), args.live, dataset_roots=roots).serve(parent)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the daemon dies, even by kill -9 (prctl PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


if __name__ == "__main__":
    main()
