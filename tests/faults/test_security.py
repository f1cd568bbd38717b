"""Nobody gets in: a private ipc folder by default, CURVE on TCP, nothing outside the home."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import DaemonProcess, run_python, sw, wait_for


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_default_ipc_socket_lives_in_an_owner_only_folder(daemon: DaemonProcess) -> None:
    mode = stat.S_IMODE((daemon.home / "run").stat().st_mode)
    assert mode == 0o700


def test_tcp_without_keys_is_refused_with_a_clear_message(home: Path) -> None:
    result = sw("daemon", "--home", str(home), "--endpoint", f"tcp://127.0.0.1:{_free_port()}")
    assert result.returncode == 2 and "stagewatch keys init" in result.stderr


def _pipeline(home: Path, endpoint: str, env: dict[str, str]) -> str:
    code = f"""
import stagewatch
run = stagewatch.init(pipeline="remote", home={str(home / "client")!r}, endpoint={endpoint!r})
for i in range(100):
    with run.stage("detection"):
        pass
stagewatch.shutdown(timeout_s=3)
print(run.id)
"""
    result = run_python(code, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_tcp_serves_only_clients_with_an_authorized_curve_key(home: Path) -> None:
    assert sw("keys", "init", "--home", str(home)).returncode == 0
    added = sw("keys", "add", "camera-rig", "--home", str(home))
    exports = dict(line.removeprefix("export ").split("=", 1) for line in added.stdout.splitlines())
    rogue = home / "rogue"
    rogue.mkdir()
    import zmq.auth

    _, rogue_secret = zmq.auth.create_certificates(rogue, "rogue")
    listed = json.loads(sw("keys", "list", "--json", "--home", str(home)).stdout)
    assert listed["authorized"] == ["camera-rig"]

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    daemon = DaemonProcess(home)
    daemon.process = subprocess.Popen(
        [sys.executable, "-m", "stagewatch.cli", "daemon", "--home", str(home), "--endpoint", endpoint],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: daemon.status().get("stats") is not None)
        trusted = _pipeline(home, endpoint, exports)
        assert daemon.audit(trusted)["counts"]["ok"] == 100
        anonymous = _pipeline(home, endpoint, {"STAGEWATCH_CURVE_SERVER_KEY": "", "STAGEWATCH_CURVE_CLIENT_KEY": ""})
        impostor = _pipeline(home, endpoint, {**exports, "STAGEWATCH_CURVE_CLIENT_KEY": str(rogue_secret)})
        accepted = daemon.status()["stats"]["accepted"]
        for refused in (anonymous, impostor):
            assert not (home / "runs" / refused).exists()
        assert daemon.status()["stats"]["accepted"] == accepted  # nothing from the refused clients
    finally:
        daemon.stop()


def test_over_tcp_a_client_id_belongs_to_its_curve_key(home: Path) -> None:
    """Two authorized key pairs: the second cannot speak under the first's client id, even
    from a fresh connection (the binding is to the key, not to the connection)."""
    import time
    import uuid

    import zmq
    import zmq.auth

    from stagewatch import _protocol as protocol
    from stagewatch._protocol import pack_batch, pack_event, unpack_ack

    assert sw("keys", "init", "--home", str(home)).returncode == 0
    keys = {}
    for name in ("camera-rig", "intruder"):
        added = sw("keys", "add", name, "--home", str(home))
        keys[name] = dict(line.removeprefix("export ").split("=", 1) for line in added.stdout.splitlines())
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    daemon = DaemonProcess(home)
    daemon.process = subprocess.Popen(
        [sys.executable, "-m", "stagewatch.cli", "daemon", "--home", str(home), "--endpoint", endpoint],
        stderr=subprocess.DEVNULL,
    )
    context = zmq.Context()

    def send(key: str, client_id: str, batch_no: int, run_id: str) -> int | None:
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        server_public, _ = zmq.auth.load_certificate(keys[key]["STAGEWATCH_CURVE_SERVER_KEY"])
        public, secret = zmq.auth.load_certificate(keys[key]["STAGEWATCH_CURVE_CLIENT_KEY"])
        socket.curve_serverkey, socket.curve_publickey, socket.curve_secretkey = server_public, public, secret
        socket.connect(endpoint)
        start = protocol.run_started(
            client_id, run_id, time.time_ns(), pipeline="p", config={}, host="h", pid=1, dataset=None, argv=[]
        )
        socket.send(pack_batch(client_id, batch_no, [pack_event({**start, "seq": batch_no})]))
        answer = unpack_ack(socket.recv()) if socket.poll(3000) else None
        socket.close(0)
        return answer

    try:
        wait_for(lambda: daemon.status().get("stats") is not None)
        rig = uuid.uuid4().hex
        assert send("camera-rig", rig, 1, str(uuid.uuid4())) == 1
        assert send("camera-rig", rig, 2, str(uuid.uuid4())) == 2  # its own key, a new connection: fine
        assert send("intruder", rig, 3, str(uuid.uuid4())) is None  # another key: refused
        assert send("intruder", uuid.uuid4().hex, 4, str(uuid.uuid4())) == 4  # its own ids: fine
        wait_for(lambda: daemon.status()["stats"]["invalid"] == 1)
    finally:
        context.term()
        daemon.stop()
