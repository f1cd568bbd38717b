"""Projections: a fold over the event log into read models (audit trails and table rows).

`Projector.apply(event, lsn)` is the only way state changes, and it depends on nothing
but the events and their order, so replaying the log gives the same read models. It
writes no files: the writer (`tables/_writer.py`) persists what it produced (`output`).
What each event type does to its run is in `_handlers`; a run's state in `_runstate`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from stagewatch._protocol import DAEMON_CLIENT_ID
from stagewatch.daemon.projection._handlers import HANDLERS, OWNER_EVENTS, resume_client
from stagewatch.daemon.projection._output import PendingOutput
from stagewatch.daemon.projection._runstate import RunState

MAX_CLOSED_RUNS = 100_000


class Projector:
    """Folds events into run states, ended-stage audit lines and rows for the tables.

    `apply` is the only way state changes; the read-model writer takes what it produced
    (`output`) and never changes the state itself."""

    def __init__(self) -> None:
        self.runs: dict[str, RunState] = {}
        self.closed: OrderedDict[str, str | None] = OrderedDict()  # evicted finished runs -> pipeline
        self.late_events = 0
        self.foreign_events = 0  # run_started / run_finished sent by another client than the run's
        self.output = PendingOutput()
        # The last `received` marker folded: (the daemon's clock then, whether from a spool).
        self.received: tuple[int, bool] | None = None
        # Runs that retention removed (their run_expired event): a later event of one is late,
        # never a new run. The retention pass removes what a replay wrote of them again.
        self.expired: OrderedDict[str, None] = OrderedDict()

    # -- state for the checkpoint --------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        runs = {run_id: run.to_state() for run_id, run in self.runs.items()}
        return {
            "runs": runs,
            "closed": self.closed,
            "expired": list(self.expired),
            "late_events": self.late_events,
            "foreign": self.foreign_events,
            "received": self.received,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Projector:
        projector = cls()
        projector.runs = {run_id: RunState.from_state(run) for run_id, run in state.get("runs", {}).items()}
        projector.closed = OrderedDict(state.get("closed", {}))
        projector.expired = OrderedDict.fromkeys(state.get("expired", []))
        projector.late_events = state.get("late_events", 0)
        projector.foreign_events = state.get("foreign", 0)
        received = state.get("received")
        projector.received = (received[0], received[1]) if received else None
        return projector

    # -- folding -------------------------------------------------------------------------
    def apply(self, event: Any, lsn: int) -> None:
        kind, run_id = event.type, event.run_id  # a class attribute: looked up once
        if kind == "heartbeat":
            self._on_heartbeat(event)
            return
        if kind == "received":
            self.received = (event.ts_ns, event.spooled)
            return
        if kind == "run_expired":  # retention's decision: the run goes, wherever it is
            self._expire(run_id)
            return
        if run_id in self.closed:
            self.late_events += 1  # the caller reopens the run (`reopen`) to apply it
            return
        run = self.runs.get(run_id)
        if run is None:
            if run_id in self.expired:
                self.late_events += 1  # retention removed it: an event that comes later cannot revive it
                return
            run = self.runs[run_id] = RunState(run_id)
        run.counts["events"] += 1
        run.last_lsn = lsn
        if self.received is not None:
            self._received(run, event, self.received)
        if run.lost and event.client_id in run.lost:
            self._resume(run, event.client_id, event.ts_ns)
        output = self.output
        if kind in OWNER_EVENTS and run.client_id not in (None, event.client_id):
            self.foreign_events += 1
        else:
            HANDLERS[kind](run, event, lsn, output)
        output.dirty.add(run_id)

    def _expire(self, run_id: str) -> None:
        """Retention removed the run: forget it, and drop what of it waits to be written."""
        self.runs.pop(run_id, None)
        self.closed.pop(run_id, None)
        self.output.expire(run_id)
        self.expired[run_id] = None
        while len(self.expired) > MAX_CLOSED_RUNS:
            self.expired.popitem(last=False)

    def _on_heartbeat(self, event: Any) -> None:
        """Keep each client's last RSS reading: what a stage killed without warning is left with;
        a running run's heartbeats measure its clock too (they come live, every few seconds)."""
        run = self.runs.get(event.run_id)
        if run is None:
            return
        if event.rss_mb is not None:
            run.last_rss_mb[event.client_id] = event.rss_mb
        if run.lost and event.client_id in run.lost:
            self._resume(run, event.client_id, event.ts_ns)
            self.output.dirty.add(run.run_id)
        if self.received is not None and not run.complete:
            _measure_clock(run, event, self.received)

    def _resume(self, run: RunState, client_id: str, event_ns: int) -> None:
        """A lost client sent again (`resume_client`), when the daemon received it."""
        resume_client(run, client_id, self.received[0] if self.received is not None else event_ns, self.output)

    @staticmethod
    def _received(run: RunState, event: Any, received: tuple[int, bool]) -> None:
        """When the daemon received this event of `run` (the last marker's time), and what it
        says of the pipeline's clock (`_measure_clock`, inlined: this runs for every event)."""
        received_ns, spooled = received
        if run.received_first_ns is None:
            run.received_first_ns = received_ns
        run.received_last_ns = received_ns
        if not spooled and event.client_id != DAEMON_CLIENT_ID:
            offset = event.ts_ns - received_ns
            if run.clock_offset_ns is None or offset > run.clock_offset_ns:
                run.clock_offset_ns = offset

    def open_work(self) -> dict[str, set[str]]:
        """client id -> runs where it owns an unfinished run or has a running stage."""
        work: dict[str, set[str]] = {}
        for run_id, run in self.runs.items():
            if not run.complete and run.client_id:
                work.setdefault(run.client_id, set()).add(run_id)
            for entry in run.open.values():
                work.setdefault(entry["client_id"], set()).add(run_id)
        return work

    def finished_runs(self) -> list[str]:
        """Runs that are complete with nothing running."""
        return [r for r, run in self.runs.items() if run.complete and not run.open]

    def reopen(self, run: RunState) -> None:
        """Take a closed run back (from its audit trail) so an event that came late applies."""
        self.closed.pop(run.run_id, None)
        self.runs[run.run_id] = run

    def evict(self, run_ids: list[str]) -> None:
        """Forget finished runs (their audit is on disk); later events for them are late."""
        for run_id in run_ids:
            self.closed[run_id] = self.runs.pop(run_id).pipeline
        while len(self.closed) > MAX_CLOSED_RUNS:
            self.closed.popitem(last=False)


def _measure_clock(run: RunState, event: Any, received: tuple[int, bool]) -> None:
    """Fold one event into the run's clock offset (see `RunState.clock_offset_ns`)."""
    received_ns, spooled = received
    if spooled or event.client_id == DAEMON_CLIENT_ID:
        return
    offset = event.ts_ns - received_ns
    if run.clock_offset_ns is None or offset > run.clock_offset_ns:
        run.clock_offset_ns = offset
