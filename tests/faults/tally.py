"""Exact counts for a fault scenario: what the pipeline emitted, what the log and the
read models hold, duplicates and losses. Every scenario ends by asserting on these."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.compute as pc

from stagewatch.daemon.ingest._decode import Rejected, decode_event
from stagewatch.daemon.ingest._eventlog import EventLog
from stagewatch.daemon.query._readmodels import read_table

LONG = os.environ.get("STAGEWATCH_FAULTS_LONG") == "1"

PIPELINE = """
import json, sys, time, stagewatch
home, stages, pause_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = stagewatch.init(pipeline="faults", home=home)
print(json.dumps({"run_id": run.id}), flush=True)
for i in range(stages):
    with run.stage("detection", sample_id=str(i)):
        pass
    if pause_every and i % pause_every == 0:
        time.sleep(0.001)  # spread the stream over time so faults land mid-stream
start = time.monotonic()
stagewatch.shutdown(timeout_s=60)
print(json.dumps({"stages": stages, "shutdown_s": time.monotonic() - start}), flush=True)
"""


def start_pipeline(home: Path, stages: int, pause_every: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PIPELINE, str(home), str(stages), str(pause_every)], stdout=subprocess.PIPE, text=True
    )


def run_id_of(pipeline: subprocess.Popen[str]) -> str:
    return json.loads(pipeline.stdout.readline())["run_id"]


@dataclass
class Tally:
    scenario: str
    emitted: int  # stage executions the pipeline completed
    in_log: int  # distinct stage end events for the run in the event log
    log_duplicates: int  # (client_id, seq) pairs logged more than once
    in_read_model: int  # distinct stage_executions rows for the run
    read_model_duplicates: int
    lost: int

    def report(self, **extra: object) -> dict:
        line = {**asdict(self), **extra}
        print("\nFAULTS " + json.dumps(line))
        path = os.environ.get("STAGEWATCH_FAULTS_REPORT")
        if path:
            with open(path, "a") as handle:
                handle.write(json.dumps(line) + "\n")
        return line


def logged_events(home: Path, run_id: str) -> list:
    """The run's events in the event log, in log order (a redelivered one as often as logged)."""
    events = (decode_event(payload) for _, payload in EventLog(home / "events").read())
    return [event for event in events if not isinstance(event, Rejected) and event.run_id == run_id]


def tally(scenario: str, home: Path, run_id: str, emitted: int) -> Tally:
    seqs: Counter[tuple[str, int]] = Counter()
    ends: set[tuple[str, int]] = set()
    for event in logged_events(home, run_id):
        seqs[(event.client_id, event.seq)] += 1
        if event.type in ("stage_finished", "stage_failed"):
            ends.add((event.client_id, event.span))
    table = read_table(home, "stage_executions")
    table = table.filter(pc.equal(table["run_id"], run_id))
    rows = Counter(zip(table["client_id"].to_pylist(), table["span"].to_pylist(), strict=True))
    return Tally(
        scenario,
        emitted,
        len(ends),
        sum(c - 1 for c in seqs.values() if c > 1),
        len(rows),
        sum(c - 1 for c in rows.values() if c > 1),
        emitted - len(rows),
    )
