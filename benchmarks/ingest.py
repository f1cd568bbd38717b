"""Sustained ingest into the real daemon, durable (fsync'd) and projected, vs raw ZeroMQ.

    python benchmarks/ingest.py [--events 300000]

Ours: a producer process sends stage_finished events in the client's wire format
(batches of 1,000, a window of batches in flight, each acknowledged only after the group
fsync) to a `stagewatch daemon` subprocess; the clock stops when the daemon reports
every event accepted and every one projected into the stage_executions Parquet table.
Reference: raw PUSH/PULL with msgpack over ipc between two processes on the same
machine, one event per message and 100 per message, with no validation or disk.
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

from stagewatch._wire import pack_batch, pack_event, unpack_ack

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


def produce(endpoint: str, events: int, ready=None, go=None) -> None:
    run_id = str(uuid.uuid4())
    payloads = [_event(run_id, seq) for seq in range(1, events + 1)]
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


def measure_daemon(events: int) -> float:
    import pyarrow.dataset as ds

    with running_daemon() as home:
        context = mp.get_context("spawn")
        ready, go = context.Event(), context.Event()
        producer = context.Process(target=produce, args=(f"ipc://{home}/run/ingest.sock", events, ready, go))
        producer.start()
        if not ready.wait(300):
            raise RuntimeError("the producer did not get ready")
        start = time.perf_counter()
        go.set()
        producer.join()
        acked = time.perf_counter()
        folder = home / "metrics" / "stage_executions"
        deadline = time.monotonic() + 600
        while not folder.exists() or ds.dataset(folder, format="parquet").count_rows() < events:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not project every event within 600 s")
            time.sleep(0.02)
        projected = time.perf_counter()
        rows = ds.dataset(folder, format="parquet").count_rows()
    assert rows == events, f"expected {events} rows, got {rows}"
    print(f"  daemon: acked in {acked - start:.2f}s, projected in {projected - start:.2f}s", flush=True)
    return events / (projected - start)


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
    args = parser.parse_args()
    ours = [measure_daemon(args.events) for _ in range(args.repeats)]
    raw1 = [measure_raw(args.events, 1) for _ in range(args.repeats)]
    raw100 = [measure_raw(args.events, 100) for _ in range(args.repeats)]
    ours_median = statistics.median(ours)
    rows = [
        ["stagewatch daemon: validated, logged, fsync'd, acked, projected to Parquet", f"{ours_median:,.0f}", "1.00"],
        [
            "raw ZeroMQ PUSH/PULL + msgpack, 1 event/message (no disk)",
            f"{statistics.median(raw1):,.0f}",
            f"{statistics.median(raw1) / ours_median:.2f}",
        ],
        [
            "raw ZeroMQ PUSH/PULL + msgpack, 100 events/message (no disk)",
            f"{statistics.median(raw100):,.0f}",
            f"{statistics.median(raw100) / ours_median:.2f}",
        ],
    ]
    print_table(
        f"Ingest, {args.events:,} events, median of {args.repeats} (events/s; ratio = reference / ours)",
        ["path", "events/s", "ratio"],
        rows,
    )


if __name__ == "__main__":
    main()
