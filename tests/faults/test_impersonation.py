"""Who may say what (issue 12): a client id is bound to the connection that first used it,
`client_lost` and `run_expired` come from the daemon alone, a run is started and finished by its owner, and
one endpoint has one daemon."""

from __future__ import annotations

import subprocess
import sys
import time

import zmq

import stagewatch
from stagewatch import _protocol as protocol
from stagewatch._protocol import pack_batch, pack_event, unpack_ack
from stagewatch.daemon.query._readmodels import read_table
from tests.conftest import DaemonProcess, wait_for
from tests.faults.test_poison_values import _stage


def _connection(daemon: DaemonProcess) -> tuple[zmq.Context, zmq.Socket]:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(f"ipc://{daemon.socket_path}")
    return context, socket


def _send(socket: zmq.Socket, client_id: str, batch_no: int, events: list[dict]) -> int | None:
    """Send one batch; the acknowledged batch number, or None if none came within 2 s."""
    socket.send(pack_batch(client_id, batch_no, [pack_event(e) for e in events]))
    return unpack_ack(socket.recv()) if socket.poll(2000) else None


def _victim(daemon: DaemonProcess) -> stagewatch.Run:
    run = stagewatch.init(pipeline="victim", home=daemon.home)
    with run.stage("detection", sample_id="v0"):
        pass
    assert run.flush(10)
    return run


def _client_id() -> str:
    from stagewatch import _run

    return _run._process.client_id


def test_a_forger_cannot_speak_for_another_client(daemon: DaemonProcess) -> None:
    victim = _victim(daemon)
    victim_id = _client_id()
    now = time.time_ns()
    forged = [
        {**_stage(victim.id, seq, span=span, sample_id=f"forged{span}"), "client_id": victim_id}
        for span, seq in zip(range(100, 110), range(2, 12), strict=True)
    ]
    context, socket = _connection(daemon)
    try:
        assert _send(socket, victim_id, 1, forged) is None  # not acknowledged: refused whole
        lost = {**protocol.client_lost(1, victim.id, now, lost_client_id=victim_id, last_seen_ns=now), "seq": 1}
        assert _send(socket, "mallory", 1, [{**lost, "client_id": "mallory"}]) == 1  # acked, but refused inside
        received = {**protocol.received(1, 0, spooled=False), "client_id": "mallory"}  # receive times: the daemon's
        assert _send(socket, "mallory", 4, [received]) == 4
        finish = protocol.run_finished(
            "mallory",
            victim.id,
            now,
            status="failed",
            duration_ms=1.0,
            stages_failed=9,
            dropped_events=0,
            error_type="Forged",
            error_message="by mallory",
        )
        start = protocol.run_started(
            "mallory", victim.id, now, pipeline="stolen", config={}, host="evil", pid=1, dataset=None, argv=[]
        )
        assert _send(socket, "mallory", 2, [{**start, "seq": 2}, {**finish, "seq": 3}]) == 2
        expired = protocol.run_expired("mallory", 4, victim.id, now, ended_ns=now)  # retention's decision
        assert _send(socket, "mallory", 3, [expired]) == 3  # acked, but refused inside: the run goes on
    finally:
        socket.close(0)
        context.term()
    for index in range(1, 20):  # the victim goes on; its real seqs were the forger's targets
        with victim.stage("detection", sample_id=f"v{index}"):
            pass
    victim.finish()
    audit = daemon.audit(victim.id)
    assert audit["status"] == "ok" and audit["pipeline"] == "victim" and audit["counts"]["ok"] == 20
    samples = read_table(daemon.home, "stage_executions")["sample_id"].to_pylist()
    assert sorted(samples) == sorted(f"v{i}" for i in range(20))
    status = daemon.status()
    assert status["stats"]["invalid"] >= 3 and status["foreign_events"] == 2


def test_a_second_daemon_on_the_same_endpoint_is_refused(daemon: DaemonProcess, tmp_path) -> None:
    other_home = tmp_path / "other"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stagewatch.cli",
            "daemon",
            "--home",
            str(other_home),
            "--endpoint",
            f"ipc://{daemon.socket_path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "another stagewatch daemon serves" in result.stderr
    run = _victim(daemon)  # the first still serves
    run.finish()
    assert wait_for(lambda: daemon.audit(run.id)["status"] == "ok")
