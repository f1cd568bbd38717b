"""What ingest costs beyond raw throughput (benchmarks/ingest.py): the measures a faster ingest
path must improve, against the real daemon as a subprocess.

    python benchmarks/ingest_costs.py [--rate 2000] [--seconds 20] [--events 300000] [--stages 100000]

1. Daemon CPU per event at a realistic rate: a producer paces stage_finished events at --rate
   a second (batches every 50 ms) for --seconds; the daemon process's user + system CPU (all
   its threads, from /proc) over the window, divided by the events, and the same window idle.
   The reference: a bare pyzmq ROUTER process fed the same way that only appends each batch
   to a file, fsyncs it and acknowledges (no decoding, no projection): the floor that any
   Python daemon with one fsync a batch starts from on this machine.
2. Acknowledgement latency, each batch's send → ack: at a steady rate (--rate and ten times it
   into a new run, --rate into a run that already holds --long-run stages), p50 / p90 / p99 /
   max; and under full load, a producer keeping 16 batches of 1,000 in flight (--events).
3. Event → visible in Parquet: during (2), how long after its batch was acknowledged the last
   event of each second's batches is in the stage_executions table (polled every 20 ms).
4. End to end through the real client: one process emitting --stages empty stages with
   `run.stage()` until every row is in Parquet, stages/s; beside it the same client into a
   ROUTER that only acknowledges, the ceiling the client itself sets.
5. `stagewatch rebuild` of the event log that (2) left: events replayed a second.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgpack
import psutil
import zmq

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, running_daemon
from ingest import BATCH, WINDOW, _event

from stagewatch._protocol import pack_ack, pack_batch, unpack_ack


def daemon_process(home: Path) -> psutil.Process:
    for child in psutil.Process().children():
        if "daemon" in child.cmdline() and str(home) in child.cmdline():
            return child
    raise RuntimeError("no daemon process found")


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def parquet_rows(home: Path) -> int:
    import pyarrow.dataset as ds

    folder = home / "metrics" / "stage_executions"
    return ds.dataset(folder, format="parquet").count_rows() if folder.exists() else 0


def paced(endpoint: str, rate: int, seconds: float, go, latencies=None, prefill: int = 0) -> None:
    """`rate` events a second in batches every 50 ms, each batch waited for (as a client does);
    each batch's send → ack time in ms into `latencies` if given. With `prefill`, the run gets
    that many stages first, at full speed."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.connect(endpoint)
    run_id, per_batch, waited = str(uuid.uuid4()), max(1, rate // 20), []
    _send_window(socket, _batches(run_id, 1, prefill))
    seq = prefill
    go.wait()
    start = time.monotonic()
    for number in range(int(seconds * 20)):
        payloads = [_event(run_id, seq + i + 1) for i in range(per_batch)]
        seq += per_batch
        sent = time.perf_counter()
        socket.send(pack_batch("bench", number, payloads))
        unpack_ack(socket.recv())
        waited.append((time.perf_counter() - sent) * 1000)
        time.sleep(max(0.0, start + (number + 1) * 0.05 - time.monotonic()))
    if latencies is not None:
        latencies.extend(waited)


def _batches(run_id: str, first_seq: int, events: int) -> list[bytes]:
    payloads = [_event(run_id, seq) for seq in range(first_seq, first_seq + events)]
    return [pack_batch("bench", n, payloads[i : i + BATCH]) for n, i in enumerate(range(0, events, BATCH))]


def _send_window(socket: zmq.Socket, batches: list[bytes]) -> list[tuple[float, float]]:
    """Send every batch keeping WINDOW of them in flight; (sent, acked) times of each."""
    sent_at, acked_at, sent = {}, {}, 0
    while sent < len(batches) or len(acked_at) < len(batches):
        while sent < len(batches) and sent - len(acked_at) < WINDOW:
            sent_at[sent] = time.time()
            socket.send(batches[sent])
            sent += 1
        acked_at[unpack_ack(socket.recv())] = time.time()
    return [(sent_at[n], acked_at[n]) for n in sorted(acked_at)]


def cpu_per_event(rate: int, seconds: float) -> list[list[str]]:
    with running_daemon(env={"STAGEWATCH_DAEMON_ACCURACY_WORKER": "false"}) as home:
        process = daemon_process(home)
        time.sleep(2)
        idle_start = cpu_seconds(process)
        time.sleep(seconds)
        idle = cpu_seconds(process) - idle_start
        events = rate // 20 * int(seconds * 20)

        def in_parquet() -> None:
            while parquet_rows(home) < events:
                time.sleep(0.05)

        busy = _busy_cpu(process, f"ipc://{home}/run/ingest.sock", rate, seconds, in_parquet)
    bare = _bare_router_cpu(rate, seconds)
    return [
        [
            f"{rate:,} events/s for {seconds:.0f} s",
            f"{busy / events * 1e6:.1f}",
            f"{(busy - idle) / events * 1e6:.1f}",
            f"{bare / events * 1e6:.1f}",
            f"{busy / bare:.1f}",
        ],
    ]


def _busy_cpu(
    process: psutil.Process, endpoint: str, rate: int, seconds: float, until: Callable[[], None] = lambda: None
) -> float:
    """CPU seconds `process` spends while `paced` feeds `endpoint`, and `until` returns."""
    context = mp.get_context("spawn")
    go = context.Event()
    producer = context.Process(target=paced, args=(endpoint, rate, seconds, go))
    producer.start()
    time.sleep(1)
    start = cpu_seconds(process)
    go.set()
    producer.join()
    until()
    return cpu_seconds(process) - start


def bare_router(endpoint: str, folder: str, ready, stop, durable: bool = True) -> None:
    """Append each batch to a file, fsync (if `durable`), acknowledge: nothing else."""
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.bind(endpoint)
    log = os.open(os.path.join(folder, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    ready.set()
    while not stop.is_set():
        if socket.poll(100, zmq.POLLIN):
            identity, frame = socket.recv_multipart()
            if durable:
                os.write(log, frame)
                os.fsync(log)
            socket.send_multipart([identity, pack_ack(msgpack.unpackb(frame)[2])])
    os.close(log)


def _bare_router_cpu(rate: int, seconds: float) -> float:
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="sw-bare-", dir="/tmp") as folder:
        ready, stop = context.Event(), context.Event()
        endpoint = f"ipc://{folder}/bare.sock"
        server = context.Process(target=bare_router, args=(endpoint, folder, ready, stop))
        server.start()
        ready.wait()
        try:
            return _busy_cpu(psutil.Process(server.pid), endpoint, rate, seconds)
        finally:
            stop.set()
            server.join()


def flood(endpoint: str, events: int, go, latencies) -> None:
    batches = _batches(str(uuid.uuid4()), 1, events)
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.connect(endpoint)
    go.wait()
    latencies.extend(_send_window(socket, batches))


def steady_acks(rate: int, seconds: float, long_run: int) -> list[str]:
    """Send → ack of each batch at a steady `rate`, into a run that already holds `long_run`
    stages (0: a new run). A long run's audit trail is rewritten as it grows (every 5 s at
    most): what that costs the loop shows here."""
    with running_daemon(env={"STAGEWATCH_DAEMON_ACCURACY_WORKER": "false"}) as home:
        context = mp.get_context("spawn")
        manager = context.Manager()
        latencies, go = manager.list(), context.Event()
        go.set()
        endpoint = f"ipc://{home}/run/ingest.sock"
        producer = context.Process(target=paced, args=(endpoint, rate, seconds, go, latencies, long_run))
        producer.start()
        producer.join()
        waited = sorted(latencies)
    load = f"{rate:,} events/s for {seconds:.0f} s, " + (f"a run of {long_run:,} stages" if long_run else "a new run")
    return [load] + [f"{_pct(waited, q):.1f}" for q in (0.5, 0.9, 0.99)] + [f"{waited[-1]:.1f}"]


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def ack_and_visibility(events: int) -> tuple[list[list[str]], list[list[str]], float]:
    with running_daemon(env={"STAGEWATCH_DAEMON_ACCURACY_WORKER": "false"}) as home:
        context = mp.get_context("spawn")
        manager = context.Manager()
        latencies, go = manager.list(), context.Event()
        producer = context.Process(target=flood, args=(f"ipc://{home}/run/ingest.sock", events, go, latencies))
        producer.start()
        time.sleep(2)
        go.set()
        visible: list[tuple[float, int]] = []  # (when, rows in Parquet)
        while producer.is_alive() or parquet_rows(home) < events:
            visible.append((time.time(), parquet_rows(home)))
            time.sleep(0.02)
        visible.append((time.time(), parquet_rows(home)))
        pairs = list(latencies)
        ack_ms = sorted((acked - sent) * 1000 for sent, acked in pairs)
        # Batch n's events are in Parquet once the row count reaches (n + 1) * BATCH.
        delays = []
        for number, (_, acked) in enumerate(pairs):
            needed = (number + 1) * BATCH
            seen = next((when for when, rows in visible if rows >= needed), visible[-1][0])
            delays.append(max(0.0, seen - acked))
        delays.sort()
        daemon = daemon_process(home)  # a rebuild needs the daemon stopped
        daemon.terminate()
        daemon.wait(60)
        started = time.perf_counter()
        rebuilt = subprocess.run(
            [sys.executable, "-m", "stagewatch.cli", "rebuild", "--home", str(home)], capture_output=True, text=True
        )
        rebuild_s = time.perf_counter() - started
        if rebuilt.returncode != 0:
            raise RuntimeError(rebuilt.stderr)

    ack = [
        [f"{events:,} events, {WINDOW} batches of {BATCH:,} in flight"]
        + [f"{_pct(ack_ms, q):.1f}" for q in (0.5, 0.99)]
        + [f"{ack_ms[-1]:.1f}"]
    ]
    visibility = [[f"{events:,} events"] + [f"{_pct(delays, q) * 1000:.0f}" for q in (0.5, 0.99)]]
    return ack, visibility, events / rebuild_s


EMPTY_STAGES = """
import stagewatch, sys
run = stagewatch.init(pipeline="e2e", home=sys.argv[1])
for _ in range(int(sys.argv[2])):
    with run.stage("s"):
        pass
run.finish()
assert run.flush(120)
"""


def emit_empty_stages(home: Path, stages: int, env: dict[str, str] | None = None) -> None:
    """A pipeline process of `stages` empty stages, until every event is acknowledged.

    Started as a shell starts it, a child of /bin/sh: a process exec'd straight from this one
    keeps this one's size (once pyarrow is loaded, the first row count) as the floor of its
    peak RSS (the kernel's signal->maxrss), so its client reads peaks the slow way, and the
    first run in a sitting measured 2-3x faster than the ones after it."""
    command = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", EMPTY_STAGES, str(home), str(stages)]
    subprocess.run(command, check=True, env={**os.environ, **(env or {})})


def through_the_client(stages: int) -> float:
    with running_daemon(env={"STAGEWATCH_DAEMON_ACCURACY_WORKER": "false"}) as home:
        started = time.perf_counter()
        emit_empty_stages(home, stages)
        while parquet_rows(home) < stages:
            time.sleep(0.02)
        return stages / (time.perf_counter() - started)


def client_alone(stages: int) -> float:
    """The same client against a ROUTER process that only acknowledges (`bare_router`, not
    durable: no decode, no disk): the ceiling the client itself sets on this machine."""
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="sw-null-", dir="/tmp") as folder:
        (Path(folder) / "run").mkdir()
        endpoint = f"ipc://{folder}/run/ingest.sock"
        ready, stop = context.Event(), context.Event()
        server = context.Process(target=bare_router, args=(endpoint, folder, ready, stop, False))
        server.start()
        ready.wait()
        try:
            started = time.perf_counter()
            emit_empty_stages(Path(folder), stages, {"STAGEWATCH_ENDPOINT": endpoint})
            return stages / (time.perf_counter() - started)
        finally:
            stop.set()
            server.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--stages", type=int, default=100_000)
    parser.add_argument("--long-run", type=int, default=300_000, help="stages already in the run (steady acks)")
    args = parser.parse_args()
    alone = [client_alone(args.stages) for _ in range(3)]  # first: nothing else has run in this process yet
    print_table(
        "Daemon CPU per event (user + system, all threads, µs)",
        ["load", "µs / event", "minus the idle daemon's", "bare ROUTER + fsync, µs / event", "ratio"],
        cpu_per_event(args.rate, args.seconds),
    )
    steady = [
        steady_acks(rate, args.seconds, stages)
        for rate, stages in ((args.rate, 0), (10 * args.rate, 0), (args.rate, args.long_run))
    ]
    print_table("Acknowledgement latency at a steady rate (ms)", ["load", "p50", "p90", "p99", "max"], steady)
    ack, visibility, rebuild_rate = ack_and_visibility(args.events)
    print_table("Acknowledgement latency under full load (ms)", ["load", "p50", "p99", "max"], ack)
    print_table("Acknowledged → visible in Parquet (ms)", ["load", "p50", "p99"], visibility)
    print_table(
        "stagewatch rebuild of that log", ["events", "events/s"], [[f"{args.events:,}", f"{rebuild_rate:,.0f}"]]
    )
    runs = [through_the_client(args.stages) for _ in range(3)]
    print_table(
        "End to end through the real client (median of 3, stages/s; process start included)",
        ["empty stages", "into the daemon, until all in Parquet", "into a ROUTER that only acknowledges"],
        [[f"{args.stages:,}", f"{statistics.median(runs):,.0f}", f"{statistics.median(alone):,.0f}"]],
    )


if __name__ == "__main__":
    main()
