"""Each run's audit trail on disk: its ended stages appended once to stages.jsonl, and its
head (audit.json) rewritten as often as its cost allows; finished runs leave memory after
their grace.

It knows how much of each run's stages.jsonl the checkpoint accounts for (`stage_bytes`),
so that lines a crashed daemon wrote past its checkpoint are cut before replay appends them
again (`Store.write_stage_lines`).
"""

from __future__ import annotations

import functools
import time
from typing import Any

from stagewatch.daemon.base._throttle import CostThrottle
from stagewatch.daemon.projection._projection import Projector
from stagewatch.daemon.projection._runstate import RunState
from stagewatch.daemon.tables._diskjobs import DiskThreads
from stagewatch.daemon.tables._store import Store


class AuditTrails:
    def __init__(self, store: Store, threads: DiskThreads, throttle: CostThrottle, finished_run_grace_s: float) -> None:
        self.store = store
        self.threads = threads
        self.throttle = throttle  # shared with the checkpoint: both are spaced by their cost
        self.finished_run_grace_s = finished_run_grace_s
        self.stage_bytes: dict[str, int] = {}  # run -> bytes of stages.jsonl its state accounts for
        # run -> the lines in those bytes (its ended stages), for the head: readers page without
        # counting 500 MB of lines. Unknown for runs of a checkpoint written before it (readers count).
        self.stage_lines: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._finished_at: dict[str, float] = {}

    def load(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint's part (older checkpoints kept it per run)."""
        runs = checkpoint.get("projector", {}).get("runs", {})
        legacy = {run_id: run["stages_bytes"] for run_id, run in runs.items() if "stages_bytes" in run}
        self.stage_bytes = dict(checkpoint.get("stage_bytes", legacy))
        self.stage_lines = dict(checkpoint.get("stage_lines", {}))

    def start_over(self) -> None:
        """Forget the runs waiting for their heads (the event log is replayed from its start)."""
        self._dirty.clear()
        self._finished_at.clear()

    def state(self) -> dict[str, Any]:
        """What the checkpoint keeps of it."""
        return {"stage_bytes": self.stage_bytes, "stage_lines": self.stage_lines}

    def reopened(self, run_id: str, written: int, lines: int) -> None:
        """A closed run given back to the projection, its stages.jsonl `written` bytes of `lines` lines."""
        self.stage_bytes[run_id] = written
        self.stage_lines[run_id] = lines
        self._finished_at.pop(run_id, None)

    def append_lines(self, lines: dict[str, bytearray]) -> None:
        """Queue the ended stages of each run (stages.jsonl lines) after those written before."""
        for run_id, data in lines.items():
            start = self.stage_bytes.get(run_id, 0)
            self.stage_bytes[run_id] = start + len(data)
            if start == 0 or run_id in self.stage_lines:
                self.stage_lines[run_id] = self.stage_lines.get(run_id, 0) + data.count(b"\n")
            write = functools.partial(self.store.write_stage_lines, run_id, start, data)
            self.threads.submit_run_file(run_id, "stage lines", write)

    def write_heads(self, projector: Projector, final: bool) -> None:
        """Queue the heads of the runs that changed: a finished run's at once, a running run's
        as often as its cost allows, every one with `final`."""
        self._dirty |= projector.output.take_dirty()
        now = time.monotonic()
        for run_id in sorted(self._dirty):
            run = projector.runs.get(run_id)
            if run is None:
                self._dirty.discard(run_id)
            elif final or run.complete or self.throttle.due(run_id, now):
                self._queue_head(run)
                self._dirty.discard(run_id)

    def _queue_head(self, run: RunState) -> None:
        """Queue the rewrite of a run's audit.json, its head: after the stage lines it
        accounts for (queued before it), and for a finished run before the checkpoint that may
        forget the run (recovery rewrites the head of every run its checkpoint holds)."""
        started = time.monotonic()
        head = run.audit_head(self.stage_bytes.get(run.run_id, 0), self.stage_lines.get(run.run_id))
        encoded_s = time.monotonic() - started
        write = functools.partial(self.store.write_audit_head, run.run_id, run.start_ns, head)
        # A head refused is rewritten at the run's next change.
        spent = functools.partial(self._spent, run.run_id, encoded_s)
        self.threads.submit_run_file(run.run_id, "audit trail", write, then=spent)

    def _spent(self, key: str, encoded_s: float, written_s: float) -> None:
        now = time.monotonic()
        self.throttle.spent(key, now - encoded_s - written_s, now)

    def evict_finished_runs(self, projector: Projector) -> None:
        """A finished run stays in memory `finished_run_grace_s` (events that come late, a
        worker's spool say, still reach its audit trail), then only its audit trail remains."""
        now = time.monotonic()
        for run_id in projector.finished_runs():
            self._finished_at.setdefault(run_id, now)
        expired = [r for r, at in self._finished_at.items() if now - at >= self.finished_run_grace_s]
        for run_id in expired:
            del self._finished_at[run_id]
        self.evict(projector, [r for r in expired if r in projector.runs])

    def evict(self, projector: Projector, run_ids: list[str]) -> None:
        # An evicted run's queued writes stay queued: a run reopened later waits for them (reopen).
        projector.evict(run_ids)
        for run_id in run_ids:
            self.stage_bytes.pop(run_id, None)
            self.stage_lines.pop(run_id, None)
            self.throttle.forget(run_id)

    def forget(self, run_id: str) -> None:
        """Retention removed the run: nothing of it is written again."""
        self.stage_bytes.pop(run_id, None)
        self.stage_lines.pop(run_id, None)
        self._finished_at.pop(run_id, None)
        self._dirty.discard(run_id)
        self.throttle.forget(run_id)
