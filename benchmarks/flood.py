"""A pipeline's per-stage overhead while other producers flood the daemon and a live-feed
subscriber has stalled, against the same pipeline with an idle daemon.

    python benchmarks/flood.py [--stages 20000] [--flooders 2]

The flooders send 1,000-event batches without waiting for acknowledgements (what a
misbehaving or far too busy producer does); the subscriber connects to the live feed and
never reads. The table shows the pipeline's overhead per stage (median, p99), the
daemon's peak RSS and what it ingested meanwhile.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import psutil
import zmq

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, running_daemon

from stagewatch._protocol import pack_batch, pack_event


def flood(endpoint: str, seconds: float, counter) -> None:
    """Send batches as fast as ZeroMQ takes them, never waiting for an ack; stop after `seconds`."""
    run_id, client = str(uuid.uuid4()), uuid.uuid4().hex
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.SNDHWM, 1000)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    seq, batch_no, deadline = 0, 0, time.monotonic() + seconds
    now = time.time_ns()
    while time.monotonic() < deadline:
        events = []
        for _ in range(1000):
            seq += 1
            events.append(
                pack_event(
                    {
                        "v": 1,
                        "type": "stage_finished",
                        "client_id": client,
                        "seq": seq,
                        "ts_ns": now,
                        "run_id": run_id,
                        "stage": "flood",
                        "span": seq,
                        "start_ts_ns": now,
                        "duration_ms": 0.1,
                    }
                )
            )
        batch_no += 1
        try:
            socket.send(pack_batch(client, batch_no, events), zmq.NOBLOCK)
            counter.value += 1000
        except zmq.Again:
            time.sleep(0.001)  # the daemon's queue for us is full: it is pushing back
        while socket.poll(0):
            socket.recv()


def stall_live_feed(home: Path, seconds: float) -> None:
    socket = zmq.Context.instance().socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.setsockopt(zmq.RCVHWM, 10)
    socket.connect(f"ipc://{home}/run/live.sock")
    time.sleep(seconds)  # never reads


def pipeline_overhead(home: Path, stages: int) -> tuple[float, float]:
    import stagewatch

    run = stagewatch.init(pipeline="measured", home=home)
    samples = []
    for _ in range(stages):
        start = time.perf_counter_ns()
        with run.stage("detection"):
            pass
        samples.append(time.perf_counter_ns() - start)
    stagewatch.shutdown(timeout_s=60)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def daemon_process(home: Path) -> psutil.Process:
    pid = int((home / "daemon.lock").read_text().split()[0])
    return psutil.Process(pid)


class PeakRss:
    """Samples a process's RSS every 50 ms in a thread; `.peak_mb` is the largest seen."""

    def __init__(self, process: psutil.Process) -> None:
        import threading

        self.peak_mb = 0.0
        self._process = process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def measure(stages: int, flooders: int, seconds: float) -> dict[str, float]:
    with running_daemon() as home:
        rss = PeakRss(daemon_process(home))
        context = mp.get_context("spawn")
        counter = context.Value("q", 0)
        workers = [
            context.Process(target=flood, args=(f"ipc://{home}/run/ingest.sock", seconds, counter))
            for _ in range(flooders)
        ]
        workers.append(context.Process(target=stall_live_feed, args=(home, seconds)))
        for worker in workers:
            worker.start()
        time.sleep(1.0 if flooders else 0)
        median, p99 = pipeline_overhead(home, stages)
        for worker in workers:
            worker.join()
        return {"median": median, "p99": p99, "rss_mb": rss.stop(), "sent": counter.value}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", type=int, default=20_000)
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    idle = measure(args.stages, 0, 0.5)
    flooded = measure(args.stages, args.flooders, args.seconds)
    rows = [
        [
            name,
            f"{r['median']:.2f}",
            f"{r['p99']:.2f}",
            f"{r['p99'] / idle['p99']:.2f}",
            f"{r['rss_mb']:.0f}",
            f"{r['sent']:,}",
        ]
        for name, r in (("idle daemon", idle), (f"{args.flooders} flooders + stalled subscriber", flooded))
    ]
    print_table(
        f"Pipeline overhead per stage under flood ({args.stages:,} stages; p99 ratio = flooded / idle)",
        ["daemon load", "median us", "p99 us", "p99 ratio", "daemon RSS MB", "flood events sent"],
        rows,
    )


if __name__ == "__main__":
    main()
