"""The core event path through a real daemon process: what a pipeline author sees."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

import stagewatch
from stagewatch.daemon.query._readmodels import read_table, to_rows
from tests.conftest import DaemonProcess, run_python, wait_for


def _busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def _rows(home: Path, table: str, run_id: str, expected: int) -> list[dict]:
    def ready():
        data = read_table(home, table)
        data = data.filter(pc.equal(data["run_id"], run_id))
        return to_rows(data) if data.num_rows >= expected else None

    return wait_for(ready)


def test_stages_are_timed_measured_saved_and_projected(daemon: DaemonProcess) -> None:
    run = stagewatch.init(pipeline="perception", config={"threshold": 0.5}, home=daemon.home)
    with run.stage("preprocessing", input_path="/data/frame_000.png", sample_id="frame_000"):
        _busy(50)
    with run.stage("detection", sample_id="frame_000") as st:
        big = np.ones(200 * 1024 * 1024 // 8)  # 200 MB, touched
        del big
        relpath = st.save("overlay.png", np.zeros((32, 48, 3), np.uint8))
    run.finish()
    assert run.flush(10)

    audit = daemon.audit(run.id)
    assert audit["status"] == "ok" and audit["pipeline"] == "perception"
    assert audit["config"] == {"threshold": 0.5}
    pre, det = audit["stages"]
    assert pre["stage"] == "preprocessing" and pre["input_path"] == "/data/frame_000.png"
    assert 49 <= pre["duration_ms"] < 80
    assert det["memory"]["rss_peak_mb"] - det["memory"]["rss_start_mb"] >= 190
    assert pre["memory"]["rss_peak_mb"] - pre["memory"]["rss_start_mb"] < 50
    assert det["memory"]["gpu_peak_mb"] is None  # no GPU on this machine
    assert relpath == f"runs/{run.id}/stages/detection/overlay.png"
    assert det["artifacts"][0]["path"] == relpath and (daemon.home / relpath).stat().st_size > 0
    assert det["output_paths"] == [relpath]

    rows = _rows(daemon.home, "stage_executions", run.id, 2)
    by_stage = {row["stage"]: row for row in rows}
    assert by_stage["preprocessing"]["duration_ms"] == pre["duration_ms"]
    assert by_stage["detection"]["rss_peak_mb"] == det["memory"]["rss_peak_mb"]
    assert by_stage["detection"]["sample_id"] == "frame_000"
    (run_row,) = _rows(daemon.home, "runs", run.id, 1)
    assert run_row["status"] == "ok" and run_row["stages"] == 2


def test_a_failing_stage_reraises_unchanged_and_is_audited(daemon: DaemonProcess) -> None:
    run = stagewatch.init(pipeline="perception", home=daemon.home)
    error = KeyError("missing calibration")
    with pytest.raises(KeyError) as caught, run.stage("detection", input_path="/data/f47.png", sample_id="frame_047"):
        raise error
    assert caught.value is error
    run.finish()
    audit = daemon.audit(run.id)
    assert audit["status"] == "finished_with_failures"  # it went on to its end: not "failed"
    (stage,) = audit["stages"]
    assert stage["status"] == "failed" and stage["input_path"] == "/data/f47.png"
    assert stage["error"]["type"] == "KeyError" and "missing calibration" in stage["error"]["message"]
    assert "raise error" in stage["error"]["traceback"]
    assert audit["errors"][0]["sample_id"] == "frame_047"
    (run_row,) = _rows(daemon.home, "runs", run.id, 1)
    assert run_row["failed_stage"] == "detection"


def test_one_vocabulary_for_how_runs_end(daemon: DaemonProcess) -> None:
    """ok; finished with failures (a stage raised, the pipeline caught it and went on); failed
    (the run ended on an exception, or the pipeline said so): the daemon's rows, the audit trail
    and `stagewatch runs` say the same words (docs: README "How runs and samples end")."""
    from tests.conftest import sw

    ended = {}
    for how in ("ok", "caught", "raised", "declared"):
        run = stagewatch.init(pipeline=how, home=daemon.home)
        try:
            with run:
                for frame in range(3):
                    try:
                        with run.stage("detection", sample_id=f"f{frame}"):
                            if how != "ok" and frame == 1:
                                raise ValueError("bad frame")
                    except ValueError:
                        if how == "raised":
                            raise
                if how == "declared":
                    run.finish(status="failed")
        except ValueError:
            pass
        ended[how] = run.id
    statuses = {how: daemon.audit(run_id)["status"] for how, run_id in ended.items()}
    assert statuses == {"ok": "ok", "caught": "finished_with_failures", "raised": "failed", "declared": "failed"}
    rows = {r["run_id"]: r["status"] for r in json.loads(sw("runs", "--home", str(daemon.home), "--json").stdout)}
    assert {how: rows[run_id] for how, run_id in ended.items()} == statuses
    text = sw("runs", "--home", str(daemon.home)).stdout
    assert "finished with failures" in text
    listed = json.loads(  # a filter by the status: the runs of it
        sw("query", "--home", str(daemon.home), "--status", "finished_with_failures", "--json").stdout
    )["runs"]
    assert [r["run_id"] for r in listed] == [ended["caught"]]


def test_decorator_context_manager_and_instrument(daemon: DaemonProcess) -> None:
    class Detector:
        def detect(self, x: int) -> int:
            return x * 2

    @stagewatch.stage("preprocessing")
    def preprocess(x: int) -> int:
        return x + 1

    with stagewatch.init(pipeline="perception", home=daemon.home) as run:
        detector = run.instrument(Detector(), {"detection": "detect"})
        assert detector.detect(preprocess(1)) == 4
        with stagewatch.stage("postprocessing"):
            pass
    assert [s["stage"] for s in daemon.audit(run.id)["stages"]] == ["preprocessing", "detection", "postprocessing"]


def test_events_from_a_child_process_are_counted_end_to_end(daemon: DaemonProcess) -> None:
    code = f"""
import stagewatch
run = stagewatch.init(pipeline="worker", home={str(daemon.home)!r})
for i in range(500):
    with run.stage("detection", sample_id=f"s{{i}}"):
        pass
print(run.id)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    audit = daemon.audit(run_id)
    assert audit["counts"]["stages"] == 500 and audit["counts"]["ok"] == 500
    assert len(_rows(daemon.home, "stage_executions", run_id, 500)) == 500
    assert daemon.status()["stats"]["duplicates"] == 0


def test_no_daemon_then_daemon_starts_and_ingests_the_spool(home: Path) -> None:
    code = f"""
import time, stagewatch
run = stagewatch.init(pipeline="offline", home={str(home)!r})
for i in range(200):
    with run.stage("detection", sample_id=f"s{{i}}"):
        pass
start = time.monotonic()
stagewatch.shutdown()
print(run.id, time.monotonic() - start)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    run_id, shutdown_s = result.stdout.split()
    assert float(shutdown_s) < 2.0  # nobody waits for a daemon that is not there
    assert list((home / "spool").glob("*.spool"))
    daemon = DaemonProcess(home).start()
    try:
        audit = daemon.audit(run_id)
        assert audit["counts"]["ok"] == 200 and audit["status"] == "ok"
        wait_for(lambda: not list((home / "spool").glob("*.spool")))
    finally:
        daemon.stop()


def test_a_process_killed_mid_stage_leaves_a_crashed_stage(daemon: DaemonProcess) -> None:
    code = f"""
import os, signal, stagewatch
run = stagewatch.init(pipeline="doomed", home={str(daemon.home)!r})
with run.stage("preprocessing"):
    pass
print(run.id, flush=True)
run.flush(5)
with run.stage("detection", sample_id="frame_047"):
    run.flush(5)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    result = run_python(code)
    assert result.returncode == -9
    audit = daemon.audit(result.stdout.strip(), timeout_s=30)
    assert audit["status"] == "crashed"
    statuses = {s["stage"]: s["status"] for s in audit["stages"]}
    assert statuses == {"preprocessing": "ok", "detection": "crashed"}
    crashed = _rows(daemon.home, "stage_executions", audit["run_id"], 2)
    assert {r["stage"]: r["status"] for r in crashed}["detection"] == "crashed"


def _stage_ends(client_id: str, run_id: str, seqs: range) -> list[bytes]:
    """Packed stage_finished events of one run, a span and a seq each."""
    from stagewatch._protocol import pack_event

    now = time.time_ns()
    return [
        pack_event(
            {
                "v": 1,
                "type": "stage_finished",
                "client_id": client_id,
                "seq": seq,
                "ts_ns": now,
                "run_id": run_id,
                "stage": "detection",
                "span": seq,
                "start_ts_ns": now,
                "duration_ms": 1.0,
            }
        )
        for seq in seqs
    ]


def _send_batches(daemon: DaemonProcess, client_id: str, batches: list[list[bytes]]) -> None:
    """Each batch over a real DEALER socket, each acknowledged before the next."""
    import zmq

    from stagewatch._protocol import pack_batch

    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(f"ipc://{daemon.socket_path}")
    try:
        for batch_no, events in enumerate(batches, start=1):
            socket.send(pack_batch(client_id, batch_no, events))
            assert socket.poll(10_000)
            socket.recv()
    finally:
        socket.close(0)
        context.term()


def test_redelivered_batches_are_stored_once(daemon: DaemonProcess) -> None:
    from stagewatch._protocol import pack_event

    run_id = "0b6c5f3e-6c41-4c32-9a43-1a4e2a3a1c11"
    events = [
        pack_event(
            {
                "v": 1,
                "type": "run_started",
                "client_id": "manual",
                "seq": 1,
                "ts_ns": time.time_ns(),
                "run_id": run_id,
                "pipeline": "manual",
            }
        )
    ]
    events += _stage_ends("manual", run_id, range(2, 12))
    _send_batches(daemon, "manual", [events] * 3)  # the same events three times
    # status.json may be written between two of the batches: wait for the third's count.
    wait_for(lambda: daemon.status().get("stats", {}).get("duplicates") == 22)
    assert len(_rows(daemon.home, "stage_executions", run_id, 10)) == 10


def test_sigterm_flushes_and_exits_cleanly(daemon: DaemonProcess) -> None:
    run = stagewatch.init(pipeline="perception", home=daemon.home)
    with run.stage("detection"):
        pass
    assert run.flush(10)
    assert daemon.stop() == 0
    audit = json.loads((daemon.home / "runs" / run.id / "audit.json").read_text())
    assert audit["counts"]["stages"] == 1
    assert not (daemon.home / "run" / "ingest.sock").exists()


def test_the_audit_trail_is_readable_mid_run(daemon: DaemonProcess) -> None:
    run = stagewatch.init(pipeline="perception", home=daemon.home)
    with run.stage("preprocessing", sample_id="f0"):
        pass
    stage = run.stage("detection", sample_id="f1")
    stage.__enter__()  # a stage still running
    assert run.flush(10)

    def both_visible():
        audit = daemon.audit(run.id, complete=False)
        return audit if len(audit["stages"]) == 2 else None

    audit = wait_for(both_visible)
    assert audit["status"] == "running" and not audit["complete"]
    assert [(s["stage"], s["status"]) for s in audit["stages"]] == [("preprocessing", "ok"), ("detection", "running")]
    assert audit["counts"]["running"] == 1
    stage.__exit__(None, None, None)
    run.finish()
    assert [s["status"] for s in daemon.audit(run.id)["stages"]] == ["ok", "ok"]


def test_a_run_whose_first_flush_has_no_ended_stage_is_written_without_errors(daemon: DaemonProcess) -> None:
    run = stagewatch.init(pipeline="perception", home=daemon.home)
    assert run.flush(10)
    audit = daemon.audit(run.id, complete=False)  # written before any stage exists
    assert audit["stages"] == [] and audit["status"] == "running"
    run.finish()
    assert daemon.audit(run.id)["status"] == "ok"
    assert daemon.status()["stats"]["write_errors"] == 0


@pytest.mark.parametrize("burst_size", [600, 2_600], ids=["pending", "mostly-encoded"])
def test_rows_left_after_a_burst_are_written_once_the_daemon_idles(home: Path, burst_size: int) -> None:
    """With the periodic flush a minute away, a burst's rows (500 or more left pending) reach
    the table once the daemon has waited a poll with nothing to do; a trickle below that waits.
    2,600 rows: 2,500 are encoded during the burst (and wait for a commit), 100 stay pending."""
    daemon = DaemonProcess(home, env={"STAGEWATCH_DAEMON_FLUSH_INTERVAL_S": "60"}).start()
    burst, trickle = "6a1f8e1e-0d0c-4f55-8d5e-3c1f6a0b7e01", "6a1f8e1e-0d0c-4f55-8d5e-3c1f6a0b7e02"
    try:
        # status.json is written once by recovery, then by the loop's first periodic flush:
        # once that is behind us, the next is a minute away.
        first = wait_for(daemon.status)["updated_at"]
        wait_for(lambda: daemon.status().get("updated_at", first) > first)
        _send_batches(daemon, "burst", [_stage_ends("burst", burst, range(1, burst_size + 1))])
        assert len(_rows(home, "stage_executions", burst, burst_size)) == burst_size  # waits up to 20 s
        _send_batches(daemon, "trickle", [_stage_ends("trickle", trickle, range(1, 11))])
        time.sleep(1.0)
        data = read_table(home, "stage_executions")
        assert pc.sum(pc.equal(data["run_id"], trickle)).as_py() in (0, None)
    finally:
        daemon.stop()
