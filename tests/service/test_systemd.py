"""The daemon as a systemd service: the unit verifies, the notify protocol is spoken, and
pipelines in the home's group can reach it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stagewatch
from tests.conftest import DaemonProcess, wait_for

UNITS = Path(__file__).parents[2] / "systemd"
UNIT = UNITS / "stagewatch.service"


@pytest.mark.parametrize("name", ["stagewatch.service", "stagewatch-ui.service"])
def test_the_unit_files_pass_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    executable = shutil.which("stagewatch")
    assert executable, "the stagewatch command is installed"
    text = (UNITS / name).read_text()
    for unit in ("stagewatch.service", "stagewatch-ui.service"):  # verify resolves the Wants= of the other
        (tmp_path / unit).write_text((UNITS / unit).read_text().replace("/usr/local/bin/stagewatch", executable))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    if name == "stagewatch.service":
        assert "Type=notify" in text and "WatchdogSec=" in text
    else:
        assert "--address 127.0.0.1" in text and "ProtectSystem=strict" in text


def test_ready_watchdog_and_stopping_are_sent_to_notify_socket(home: Path) -> None:
    address = home / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(address))
    receiver.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "200000"}
    process = subprocess.Popen(
        [sys.executable, "-m", "stagewatch.cli", "daemon", "--home", str(home)], env=env, stderr=subprocess.DEVNULL
    )
    try:
        messages = [receiver.recv(4096).decode()]
        assert messages[0].startswith("READY=1") and "STATUS=ingesting" in messages[0]
        assert (home / "run" / "ingest.sock").exists()  # ready means bound
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and messages.count("WATCHDOG=1") < 3:
            messages.append(receiver.recv(4096).decode())
        assert messages.count("WATCHDOG=1") >= 3  # every 0.1 s for WATCHDOG_USEC=0.2 s
        process.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages.append(receiver.recv(4096).decode())
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        receiver.close()


def test_group_access_shares_the_socket_and_the_folders_pipelines_write(home: Path) -> None:
    daemon = DaemonProcess(home)
    daemon.process = subprocess.Popen(
        [sys.executable, "-m", "stagewatch.cli", "daemon", "--home", str(home), "--group-access"],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: daemon.socket_path.exists())
        assert stat.S_IMODE(daemon.socket_path.stat().st_mode) == 0o660
        for folder in ("run", "runs", "spool"):
            assert stat.S_IMODE((home / folder).stat().st_mode) == 0o2770
        run = stagewatch.init(pipeline="shared", home=home)
        with run.stage("detection") as st:
            st.save("x.json", {"a": 1})
        run.finish()
        for folder in (home / "runs" / run.id, home / "runs" / run.id / "stages" / "detection"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o2770  # the daemon's group may write here
        assert daemon.audit(run.id)["status"] == "ok"
        quiet = stagewatch.init(pipeline="shared", home=home)  # saves nothing: the daemon makes its folder
        with quiet.stage("detection"):
            pass
        quiet.finish()
        assert daemon.audit(quiet.id)["status"] == "ok"
        assert stat.S_IMODE((home / "runs" / quiet.id).stat().st_mode) == 0o2770
    finally:
        daemon.stop()
