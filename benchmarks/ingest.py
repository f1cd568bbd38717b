"""Sustained ingest into the real daemon, durable (fsync'd) and projected, vs raw ZeroMQ.

    python benchmarks/ingest.py [--events 300000]

Ours: a producer process sends stage_finished events in the client's wire format
(batches of 1,000, a window of batches in flight, each acknowledged only after the group
fsync) to a `stagewatch daemon` subprocess; the clock stops when the daemon reports
every event accepted and every one visible in the stage_executions Delta table (committed).
Reference: raw PUSH/PULL with msgpack over ipc between two processes on the same
machine, one event per message and 100 per message, with no validation or disk.

The second table: the same stream with a run against the demo's golden dataset and one
detection result (boxes inline) per 4 events, with the accuracy worker on and off
(STAGEWATCH_DAEMON_ACCURACY_WORKER=false), to show what judging costs ingestion: the clock
stops when every event is acknowledged, fsync'd and projected, whether or not the worker
has caught up; its lag is printed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid

import msgpack
import zmq

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, running_daemon

from stagewatch._protocol import pack_batch, pack_event, unpack_ack

BATCH = 1_000
WINDOW = 16


def _event(run_id: str, seq: int) -> bytes:
    now = time.time_ns()
    return pack_event(
        {
            "v": 1,
            "type": "stage_finished",
            "client_id": "bench",
            "seq": seq,
            "ts_ns": now,
            "run_id": run_id,
            "stage": "detection",
            "span": seq,
            "parent_span": None,
            "sample_id": f"frame_{seq}",
            "input_path": "/data/frame.png",
            "output_paths": [],
            "start_ts_ns": now - 2_000_000,
            "duration_ms": 2.0,
            "rss_start_mb": 100.0,
            "rss_peak_mb": 120.0,
            "rss_end_mb": 101.0,
            "gpu_peak_mb": None,
        }
    )


def _result(run_id: str, seq: int, sample_id: str, prediction: dict) -> bytes:
    event = {
        "v": 1,
        "type": "sample_result",
        "client_id": "bench",
        "seq": seq,
        "ts_ns": time.time_ns(),
        "run_id": run_id,
        "stage": "detection",
        "sample_id": sample_id,
        "prediction": prediction,
    }
    return pack_event(event)


def _stream(events: int, dataset: str | None, results: list | None) -> list[bytes]:
    run_id = str(uuid.uuid4())
    if dataset is None:
        return [_event(run_id, seq) for seq in range(1, events + 1)]
    started = {
        "v": 1,
        "type": "run_started",
        "client_id": "bench",
        "seq": 1,
        "ts_ns": time.time_ns(),
        "run_id": run_id,
        "pipeline": "bench",
        "dataset": dataset,
    }
    payloads = [pack_event(started)]
    for seq in range(2, events + 1):
        sample_id, prediction = results[seq % len(results)]
        payloads.append(_result(run_id, seq, sample_id, prediction) if seq % 4 == 0 else _event(run_id, seq))
    return payloads


def produce(
    endpoint: str, events: int, ready=None, go=None, dataset: str | None = None, results=None, acked=None
) -> None:
    """Send `events` in batches, WINDOW in flight; `acked` (a shared counter), if given, counts
    the batches acknowledged."""
    payloads = _stream(events, dataset, results)
    batches = [pack_batch("bench", n, payloads[i : i + BATCH]) for n, i in enumerate(range(0, events, BATCH))]
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.connect(endpoint)
    if ready is not None:  # the batches are built before the clock starts
        ready.set()
        go.wait()
    in_flight, sent = set(), 0
    while sent < len(batches) or in_flight:
        while sent < len(batches) and len(in_flight) < WINDOW:
            socket.send(batches[sent])
            in_flight.add(sent)
            sent += 1
        in_flight.discard(unpack_ack(socket.recv()))
        if acked is not None:
            acked.value += 1


def measure_daemon(events: int, dataset: str | None = None, results: list | None = None, worker: bool = True) -> float:
    env = {"STAGEWATCH_DAEMON_ACCURACY_WORKER": "true" if worker else "false"}
    with running_daemon(env=env) as home:
        context = mp.get_context("spawn")
        ready, go = context.Event(), context.Event()
        arguments = (f"ipc://{home}/run/ingest.sock", events, ready, go, dataset, results)
        producer = context.Process(target=produce, args=arguments)
        producer.start()
        if not ready.wait(300):
            raise RuntimeError("the producer did not get ready")
        start = time.perf_counter()
        go.set()
        producer.join()
        acked = time.perf_counter()
        deadline = time.monotonic() + 600
        expected = events if dataset is None else events - 1 - events // 4  # minus run_started and results
        while _visible(home, "stage_executions") < expected:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not project every event within 600 s")
            time.sleep(0.02)
        projected = time.perf_counter()
        rows = _visible(home, "stage_executions")
        if dataset is not None and worker:
            _wait_for_samples(home, events // 4, start)
    assert rows == expected, f"expected {expected} rows, got {rows}"
    print(f"  daemon: acked in {acked - start:.2f}s, projected in {projected - start:.2f}s", flush=True)
    return events / (projected - start)


def _visible(home, table: str) -> int:
    """Rows of the table's current Delta snapshot (what every reader sees)."""
    import pyarrow.dataset as ds

    from stagewatch.daemon.tables._tables import snapshot_files

    files = snapshot_files(home, table)
    return ds.dataset(files, format="parquet").count_rows() if files else 0


def _wait_for_samples(home, count: int, start: float) -> None:
    deadline = time.monotonic() + 900
    while _visible(home, "samples") < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the accuracy worker did not judge every result within 900 s")
        time.sleep(0.1)
    print(f"  accuracy worker: {count:,} results judged {time.perf_counter() - start:.2f}s after the start", flush=True)


def _pull(endpoint: str, messages: int, ready) -> None:
    socket = zmq.Context.instance().socket(zmq.PULL)
    socket.bind(endpoint)
    ready.set()
    for _ in range(messages):
        msgpack.unpackb(socket.recv())


def measure_raw(events: int, per_message: int) -> float:
    endpoint = f"ipc:///tmp/sw-raw-{os.getpid()}.sock"
    context = mp.get_context("spawn")
    ready = context.Event()
    messages = events // per_message
    puller = context.Process(target=_pull, args=(endpoint, messages, ready))
    puller.start()
    ready.wait()
    socket = zmq.Context.instance().socket(zmq.PUSH)
    socket.connect(endpoint)
    event = msgpack.unpackb(_event(str(uuid.uuid4()), 1))
    start = time.perf_counter()
    for _ in range(messages):
        socket.send(msgpack.packb([event] * per_message if per_message > 1 else event))
    puller.join()
    return events / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-results", action="store_true", help="skip the second table (accuracy worker on/off)")
    args = parser.parse_args()
    # Interleaved, so that a noisy neighbour slows both sides of a repeat: the ratio is the
    # median of the repeats' own ratios.
    ours, raw1, raw100 = [], [], []
    for _ in range(args.repeats):
        ours.append(measure_daemon(args.events))
        raw1.append(measure_raw(args.events, 1))
        raw100.append(measure_raw(args.events, 100))
    rows = [["stagewatch daemon: validated, logged, fsync'd, acked, projected to Parquet", _rate(ours), "1.00"]]
    for label, raw in (("1 event/message", raw1), ("100 events/message", raw100)):
        ratio = statistics.median(r / o for r, o in zip(raw, ours, strict=True))
        rows.append([f"raw ZeroMQ PUSH/PULL + msgpack, {label} (no disk)", _rate(raw), f"{ratio:.2f}"])
    print_table(
        f"Ingest, {args.events:,} events, median of {args.repeats} (events/s; ratio = reference / ours, "
        "the median of each repeat's own)",
        ["path", "events/s", "ratio"],
        rows,
    )
    print(
        f"  ours: {', '.join(f'{o:,.0f}' for o in ours)} events/s; ours / raw 1 event a message: {_ratios(ours, raw1)}"
    )
    if not args.no_results:
        measure_with_results(args.events // 3, args.repeats)


def _rate(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f}"


def _ratios(ours: list[float], raw: list[float]) -> str:
    return ", ".join(f"{o / r:.2f}" for o, r in zip(ours, raw, strict=True))


def measure_with_results(events: int, repeats: int) -> None:
    import tempfile
    from pathlib import Path

    import numpy as np

    from stagewatch.daemon._demo import detect, preprocess, synthetic_frame, write_golden_dataset

    with tempfile.TemporaryDirectory(prefix="sw-ingest-") as folder:
        frames = [synthetic_frame(i, np.random.default_rng([7, i])) for i in range(50) if i != 47]
        dataset = str(write_golden_dataset(Path(folder), frames))
        results = [(f.sample_id, detect(preprocess(f)[0])) for f in frames]
        off = statistics.median(measure_daemon(events, dataset, results, worker=False) for _ in range(repeats))
        on = statistics.median(measure_daemon(events, dataset, results, worker=True) for _ in range(repeats))
    print_table(
        f"Ingest with one detection result per 4 events, {events:,} events, median of {repeats} (events/s)",
        ["accuracy worker", "events/s", "ratio to off"],
        [["off", f"{off:,.0f}", "1.00"], ["on (judging in its own process)", f"{on:,.0f}", f"{on / off:.2f}"]],
    )


if __name__ == "__main__":
    main()
