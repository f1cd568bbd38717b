"""Nobody gets in: a private ipc folder by default, CURVE on TCP, nothing outside the home."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import DaemonProcess, run_python, wait_for


def sw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stagewatch.cli", *args], capture_output=True, text=True, timeout=60)


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
