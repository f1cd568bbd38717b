"""What each step of the daemon's path costs per event, in-process, against the plain way.

    python benchmarks/ingest_phases.py [--events 100000] [--repeats 5]

The stream is benchmarks/ingest.py's: one run of `stage_finished` events (the client sends
only the end of a short stage). Each step runs over the whole stream, with the daemon's GC
thresholds; the table gives the median µs per event over the repeats:

- decode + validate: `_decode.decode_event` (msgspec, typed structs) against msgpack's own
  `unpackb` into dicts with no validation at all (the floor of any Python decoder);
- fold: `Projector.apply` (no reference: it is ours alone), which encodes each ended stage's
  stages.jsonl line as it folds;
- audit lines, the part of the fold that encodes them: the projection's line encoding of the
  stages' lines against `json.dumps` (compact, the stdlib) of the same lines as dicts;
- Parquet rows: `Store.write_rows` of the fold's tuple rows (one Arrow array per column, zstd,
  fsync'd part) against `Table.from_pylist` of the same rows as dicts, written the same way.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgpack
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table
from ingest import _event

from stagewatch._protocol import pack_event
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.ingest._decode import decode_event
from stagewatch.daemon.projection._projection import Projector
from stagewatch.daemon.projection._stages import STAGE_ROW_FIELDS, ended_line, stage_lines_bytes
from stagewatch.daemon.tables._store import STAGE_EXECUTIONS, Store


def _payloads(count: int) -> list[bytes]:
    run_id = str(uuid.uuid4())
    start = {"v": 1, "type": "run_started", "client_id": "bench", "seq": 1, "ts_ns": time.time_ns()}
    return [pack_event({**start, "run_id": run_id, "pipeline": "bench"})] + [
        _event(run_id, seq) for seq in range(2, count + 1)
    ]


def _us_per_event(action: Callable[[], object], count: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) / count * 1e6)
    return statistics.median(samples)


def _row(step: str, ours: float, reference: str, theirs: float) -> list[str]:
    return [step, f"{ours:.2f}", reference, f"{theirs:.2f}", f"{ours / theirs:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    gc.set_threshold(50_000, 20, 1_000)  # the daemon's (daemon/_daemon.py)
    payloads = _payloads(args.events)
    count, repeats = len(payloads), args.repeats

    events = [decode_event(payload) for payload in payloads]
    decode = _us_per_event(lambda: [decode_event(p) for p in payloads], count, repeats)
    unpack = _us_per_event(lambda: [msgpack.unpackb(p, raw=False) for p in payloads], count, repeats)

    def fold() -> Projector:
        projector = Projector()
        for lsn, event in enumerate(events):
            projector.apply(event, lsn)
        return projector

    folding = _us_per_event(fold, count, repeats)
    rows, lines = fold().output.take()
    # The lines of stages that sent only their end, as the fold builds them before encoding.
    entries = [ended_line(e, e.start_ts_ns + int(e.duration_ms * 1e6)) for e in events[1:]]
    assert stage_lines_bytes(entries) == next(iter(lines.values()))
    ours_lines = _us_per_event(lambda: stage_lines_bytes(entries), count, repeats)
    as_dicts = [json.loads(line) for line in stage_lines_bytes(entries).splitlines()]
    stdlib_lines = _us_per_event(
        lambda: b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in as_dicts), count, repeats
    )
    tuples = rows["stage_executions"]
    dicts = [dict(zip(STAGE_ROW_FIELDS, row, strict=True)) for row in tuples]
    with tempfile.TemporaryDirectory(prefix="sw-phases-", dir="/tmp") as folder:
        store = Store(DaemonHome(Path(folder)))
        ours_rows = _us_per_event(
            lambda: store.write_rows("stage_executions", tuples, STAGE_ROW_FIELDS), count, repeats
        )

        def from_pylist() -> None:
            table = pa.Table.from_pylist(dicts, STAGE_EXECUTIONS)
            path = Path(folder) / "reference.parquet"
            pq.write_table(table, path, compression="zstd")
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())

        reference_rows = _us_per_event(from_pylist, count, repeats)

    table = [
        _row("decode + validate", decode, "msgpack.unpackb, no validation", unpack),
        ["fold (Projector.apply, audit lines included)", f"{folding:.2f}", "—", "—", "—"],
        _row("  of which audit lines", ours_lines, "json.dumps", stdlib_lines),
        _row("Parquet rows", ours_rows, "Table.from_pylist of dicts", reference_rows),
        ["sum of ours", f"{decode + folding + ours_rows:.2f}", "", "", ""],
    ]
    print_table(
        f"Daemon steps per event, {count:,} stage_finished events, median of {repeats} (µs/event; ratio = ours / ref)",
        ["step", "ours µs", "reference", "ref µs", "ratio"],
        table,
    )


if __name__ == "__main__":
    main()
