"""The daemon under bad input and kill -9: stays up, counts, quarantines, loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import msgpack
import psutil
import zmq

import stagewatch
from stagewatch import _protocol as protocol
from stagewatch._protocol import pack_batch, pack_event
from stagewatch.daemon.query._readmodels import read_table
from tests.conftest import DaemonProcess, run_python, wait_for

RUN_ID = "5f0c7a52-4b8e-4d7e-9a57-0d7f6f8f3a10"


def _send_raw(daemon: DaemonProcess, frames: list[bytes]) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 1000)
    socket.connect(f"ipc://{daemon.socket_path}")
    for frame in frames:
        socket.send(frame)
    socket.close()
    context.term()


def test_garbage_and_hostile_events_are_quarantined_and_the_daemon_stays_up(daemon: DaemonProcess) -> None:
    base = {
        "v": 1,
        "client_id": "evil",
        "ts_ns": time.time_ns(),
        "run_id": RUN_ID,
        "type": "stage_finished",
        "stage": "detection",
        "span": 1,
        "start_ts_ns": 1,
        "duration_ms": 1.0,
    }
    hostile = [
        {**base, "seq": 1, "run_id": "../../etc"},
        {**base, "seq": 2, "stage": "../../../tmp/x"},
        {**base, "seq": 3, "input_path": "a\x00b"},
        {**base, "seq": 4, "type": "format_disk"},
        {**base, "seq": 5, "duration_ms": float("nan")},
        {
            "v": 1,
            "type": "artifact_saved",
            "client_id": "evil",
            "seq": 6,
            "ts_ns": 1,
            "run_id": RUN_ID,
            "stage": "detection",
            "span": 1,
            "path": "/etc/passwd",
            "kind": "png",
            "bytes": 1,
        },
    ]
    frames = [
        b"\xc1\xff not msgpack",
        msgpack.packb([1, "evil"]),
        msgpack.packb({"a": 1}),
        pack_batch("evil", 1, [pack_event(e) for e in hostile] + [b"\xc1", msgpack.packb([[[[[]]]]] * 3)]),
    ]
    _send_raw(daemon, frames)
    wait_for(lambda: daemon.status().get("stats", {}).get("invalid", 0) >= 11)
    assert daemon.process.poll() is None
    lines = (daemon.home / "quarantine").glob("*.jsonl")
    reasons = [json.loads(line)["reason"] for path in lines for line in path.read_text().splitlines()]
    assert len(reasons) == 11 and any("run_id" in r for r in reasons) and any("artifact path" in r for r in reasons)
    assert not (daemon.home / "runs" / RUN_ID).exists() or not list((daemon.home / "runs").rglob("passwd"))
    # and it still serves honest clients
    with stagewatch.init(pipeline="honest", home=daemon.home) as run, run.stage("s"):
        pass
    assert daemon.audit(run.id)["status"] == "ok"


def test_kill_9_and_restart_keeps_every_acknowledged_event_once(daemon: DaemonProcess) -> None:
    code = f"""
import stagewatch
run = stagewatch.init(pipeline="stream", home={str(daemon.home)!r})
print(run.id, flush=True)
for i in range(20000):
    with run.stage("detection", sample_id=str(i)):
        pass
"""
    import subprocess
    import sys

    pipeline = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    run_id = pipeline.stdout.readline().strip()
    for _ in range(3):
        time.sleep(0.4)
        daemon.kill()
        time.sleep(0.2)
        daemon.start()
    assert pipeline.wait(60) == 0
    audit = daemon.audit(run_id, timeout_s=60)
    assert audit["counts"]["ok"] == 20000 and audit["counts"]["stages"] == 20000
    from stagewatch.daemon.query._readmodels import read_table

    table = wait_for(lambda: (t := read_table(daemon.home, "stage_executions")).num_rows >= 20000 and t)
    assert table.num_rows == 20000
    assert len(set(table["sample_id"].to_pylist())) == 20000
    assert len(audit["stages"]) == 20000  # stages.jsonl cut back and re-appended, never doubled
    lines = (daemon.home / "runs" / run_id / "stages.jsonl").read_text().splitlines()
    assert len(lines) == 20000


def test_an_internal_error_in_one_turn_does_not_stop_the_daemon(home) -> None:
    import threading

    from stagewatch.daemon import Daemon, DaemonSettings

    daemon = Daemon(
        DaemonSettings(home=home, endpoint=f"ipc://{home}/run/in.sock", live_endpoint=f"ipc://{home}/run/live.sock")
    )
    daemon.lock.take()
    daemon.recover()
    daemon.ingest.bind()
    turns = []

    def flaky_flush() -> None:
        turns.append(True)
        if len(turns) == 1:
            raise RuntimeError("a bug")

    daemon._flush_in_background = flaky_flush  # the loop's periodic flush
    daemon.settings = DaemonSettings(
        home=home, endpoint=daemon.settings.endpoint, live_endpoint=daemon.settings.live_endpoint, flush_interval_s=0.05
    )
    thread = threading.Thread(target=daemon._loop)
    thread.start()
    wait_for(lambda: len(turns) >= 3)
    daemon.stop()
    thread.join(10)
    assert daemon.stats.internal_errors == 1
    daemon.release()


def test_a_pipeline_blocked_in_a_lock_still_dies_on_sigterm(daemon: DaemonProcess) -> None:
    """stagewatch's threads leave the pipeline's signals to its main thread: a process
    blocked in a lock (a Pool worker waiting for tasks) must die on SIGTERM as it would
    without stagewatch. Taken by the sender thread, the signal was never acted on and
    Pool.terminate() hung joining the worker."""
    code = f"""
import multiprocessing, os, signal, stagewatch
run = stagewatch.init(pipeline="blocked", home={str(daemon.home)!r})
with run.stage("load"):
    pass
main = os.getpid()
masks = {{}}
for task in os.listdir(f"/proc/{{main}}/task"):
    status = open(f"/proc/{{main}}/task/{{task}}/status").read()
    masks[int(task)] = int(status.split("SigBlk:")[1].split()[0], 16)
term = 1 << (signal.SIGTERM - 1)
interrupt = 1 << (signal.SIGINT - 1)
others = [mask for task, mask in masks.items() if task != main]
assert others and all(mask & term and mask & interrupt for mask in others), masks
assert not masks[main] & term
lock = multiprocessing.Lock()
lock.acquire()
print("blocked", flush=True)
lock.acquire()
"""
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "blocked", process.communicate(timeout=10)[1]
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == -signal.SIGTERM


def test_forked_workers_are_attributed_to_the_run(daemon: DaemonProcess) -> None:
    code = f"""
import multiprocessing as mp, stagewatch
def work(i):
    with stagewatch.stage("detection", sample_id=f"w{{i}}"):
        return i * i
if __name__ == "__main__":
    run = stagewatch.init(pipeline="forking", home={str(daemon.home)!r})
    with mp.get_context("fork").Pool(3) as pool:
        assert sum(pool.map(work, range(30))) == sum(i * i for i in range(30))
    with run.stage("merge"):
        pass
    print(run.id)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr

    def all_workers_arrived():  # a worker's spool may land after the run finished
        audit = daemon.audit(result.stdout.strip())
        detection = [s for s in audit["stages"] if s["stage"] == "detection"]
        return detection if len(detection) == 30 else None

    detection = wait_for(all_workers_arrived)
    assert sorted(s["sample_id"] for s in detection) == sorted(f"w{i}" for i in range(30))
    assert all(s["status"] == "ok" for s in detection)
    assert len({s["client_id"] for s in detection}) >= 2  # worker clients, not the parent's


def test_a_forked_worker_ends_on_a_sigterm_its_main_thread_cannot_act_on(daemon: DaemonProcess) -> None:
    """A SIGTERM that lands just before a Pool worker's main thread blocks in its next task's
    lock is taken by the C handler, and the Python handler stagewatch installs (to flush first)
    waits for the main thread to run Python, which it never does: the worker waited forever and
    Pool.terminate() with it (about 1 pool in 100 on a loaded machine). Made certain here: the
    worker's main thread blocks SIGTERM and waits; a thread of its own takes the signal. The
    worker still ends as SIGTERM ends it, and its stage is delivered first."""
    code = f"""
import os, signal, sys, threading, time, stagewatch
run = stagewatch.init(pipeline="stranded", home={str(daemon.home)!r})
if os.fork() == 0:
    with stagewatch.stage("work", sample_id="in-the-worker"):
        pass
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # the one thread taking SIGTERM
    signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM}})
    print(os.getpid(), flush=True)
    threading.Event().wait()
    os._exit(0)
"""
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    parent.wait(30)
    os.kill(worker, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and psutil.pid_exists(worker) and psutil.Process(worker).status() != "zombie":
        time.sleep(0.05)
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == "zombie", "the worker never ended"
    stages = lambda: [r for r in read_table(daemon.home, "stage_executions").to_pylist() if r["stage"] == "work"]  # noqa: E731
    assert wait_for(stages, 20)[0]["sample_id"] == "in-the-worker"  # delivered before it ended


def _burst_batch(run_id: str, number: int, size: int) -> bytes:
    now = time.time_ns()
    events = []
    for span in range(number * size + 1, (number + 1) * size + 1):
        event = protocol.stage_finished(
            "burst", run_id, now, stage="detection", span=span, parent_span=None, sample_id=str(span),
            input_path=None, start_ts_ns=now - 1_000_000, duration_ms=1.0, output_paths=[],
            rss_start_mb=None, rss_peak_mb=None, rss_end_mb=None, gpu_peak_mb=None,
        )  # fmt: skip
        events.append(pack_event({**event, "seq": span}))
    return pack_batch("burst", number, events)


def test_a_burst_at_full_rate_then_kill_9_loses_nothing_acknowledged(daemon: DaemonProcess) -> None:
    """benchmarks/ingest.py's load (16 batches of 1,000 in flight, each acknowledged only after
    its fsync) with the daemon killed -9 in the middle of it: every acknowledged event is in the
    log once; the batches never acknowledged, resent to the restarted daemon as a client would,
    go in once too, and the read model ends with every event exactly once."""
    from stagewatch.daemon.base._layout import DaemonHome
    from stagewatch.daemon.ingest._decode import decode_event
    from stagewatch.daemon.ingest._eventlog import EventLog
    from stagewatch.daemon.query._readmodels import read_table

    run_id, size, window, batches = str(uuid.uuid4()), 1_000, 16, 60
    frames = [_burst_batch(run_id, number, size) for number in range(batches)]
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(f"ipc://{daemon.socket_path}")
    acked: set[int] = set()
    for number in range(window):
        socket.send(frames[number])
    sent = window
    while len(acked) < 30:  # kill -9 with 16 batches in flight, half-way through the burst
        assert socket.poll(20_000), "the daemon stopped acknowledging"
        acked.add(protocol.unpack_ack(socket.recv()))
        if sent < batches:
            socket.send(frames[sent])
            sent += 1
    daemon.kill()
    while socket.poll(0):  # acknowledgements already delivered count as acknowledged
        acked.add(protocol.unpack_ack(socket.recv()))
    socket.close()
    context.term()

    logged = [decode_event(payload) for _, payload in EventLog(DaemonHome(daemon.home).events).read()]
    seqs = [event.seq for event in logged if event.client_id == "burst"]
    assert len(seqs) == len(set(seqs)), "an event was logged twice"
    acked_seqs = {span for number in acked for span in range(number * size + 1, (number + 1) * size + 1)}
    assert acked_seqs <= set(seqs), f"{len(acked_seqs - set(seqs))} acknowledged events are not in the log"

    daemon.start()
    _send_raw(daemon, [frame for number, frame in enumerate(frames) if number not in acked])
    total = batches * size
    table = wait_for(lambda: (t := read_table(daemon.home, "stage_executions")).num_rows >= total and t, 60)
    spans = table["span"].to_pylist()
    assert len(spans) == total and set(spans) == set(range(1, total + 1))  # each once, none lost
    logged = [decode_event(payload) for _, payload in EventLog(DaemonHome(daemon.home).events).read()]
    assert sorted(event.seq for event in logged if event.client_id == "burst") == list(range(1, total + 1))


def test_a_flood_between_two_flushes_is_written_once_enough_rows_wait(home) -> None:
    """With a flush a minute away, 25,000 stage ends still reach Parquet at once: past
    MAX_PENDING_ROWS the daemon writes what waits instead of holding it (memory under a flood)."""
    from stagewatch.daemon._daemon import MAX_PENDING_ROWS
    from stagewatch.daemon.query._readmodels import read_table

    daemon = DaemonProcess(home, env={"STAGEWATCH_DAEMON_FLUSH_INTERVAL_S": "60"}).start()
    try:
        time.sleep(0.5)  # past the flush the daemon does on starting
        run_id, size = str(uuid.uuid4()), 1_000
        _send_raw(daemon, [_burst_batch(run_id, number, size) for number in range(25)])
        rows = wait_for(lambda: read_table(home, "stage_executions").num_rows, 30)
        assert rows >= MAX_PENDING_ROWS
    finally:
        daemon.process.kill()
        daemon.process.wait(10)
