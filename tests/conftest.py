"""Shared fixtures: a real daemon process on a private home, and a clean client per test."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import stagewatch
from stagewatch._home import ipc_path
from stagewatch.daemon.base._layout import DaemonHome

CLIENT_TIMEOUT_S = 2.0


def sw(*args: str, env: dict[str, str] | None = None, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`stagewatch ARGS` as a user runs it: a process of its own, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )


def wait_for(predicate: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {predicate}")
        time.sleep(interval_s)


@pytest.fixture
def home() -> Iterator[Path]:
    # Short paths: an ipc socket path must fit in 107 bytes, pytest's tmp_path may not.
    base = Path(tempfile.mkdtemp(prefix="sw-", dir="/tmp"))
    path = base / "home"
    path.mkdir()
    yield path
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_client() -> Iterator[None]:
    """Each test starts with no client state and leaves none behind."""
    yield
    stagewatch.shutdown(timeout_s=2.0)


class DaemonProcess:
    """`stagewatch daemon` as a subprocess on a home; always stopped by the fixture."""

    def __init__(
        self, home: Path, client_timeout_s: float = CLIENT_TIMEOUT_S, env: dict[str, str] | None = None
    ) -> None:
        self.home = home
        self.env = {**os.environ, **(env or {})}
        self.client_timeout_s = client_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        # Beside the home, not in it: a test that fills the home's disk still gets the log.
        self.log_path = home.parent / f"{home.name}-daemon.log"

    @property
    def socket_path(self) -> Path:
        return ipc_path(DaemonHome(self.home).ingest_endpoint)

    def start(self) -> DaemonProcess:
        """Start the daemon and wait until this process has recovered and listens."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)  # a killed daemon leaves its socket file
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stagewatch.cli",
                    "daemon",
                    "--home",
                    str(self.home),
                    "--client-timeout",
                    str(self.client_timeout_s),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        wait_for(lambda: self.socket_path.exists() or self.process.poll() is not None, 30)
        assert self.process.poll() is None, self.log()
        return self

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self.process = None
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(DaemonHome(self.home).status.read_text())
        except (OSError, ValueError):
            return {}

    def audit(self, run_id: str, complete: bool = True, timeout_s: float = 20.0) -> dict[str, Any]:
        """The run's whole trail (its head and its stage lines, as `load_audit` assembles it),
        once its head is written (and says the run is complete, with `complete`)."""
        from stagewatch.daemon.query._readmodels import load_audit

        def ready() -> dict[str, Any] | None:
            audit = load_audit(self.home, run_id)
            if audit["status"] == "unknown":
                return None
            return audit if audit["complete"] or not complete else None

        return wait_for(ready, timeout_s)


@pytest.fixture
def daemon(home: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(home).start()
    yield process
    if process.process is not None:
        process.process.kill()
        process.process.wait(10)


def run_python(
    code: str, env: dict[str, str] | None = None, timeout_s: float = 60, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a snippet in a fresh interpreter (a separate pipeline process)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


# The pipeline's wall clock, patched at the system edge in the pipeline's own process: it reads
# `clock_ns` when the snippet starts and runs on at the real pace (a board without a real-time
# clock boots in 1970; a bad RTC battery or a typo'd `date -s` says 2100).
FAKE_CLOCK = """
import time
_real_monotonic_ns = time.monotonic_ns
_booted = _real_monotonic_ns()
time.time_ns = lambda: {clock_ns} + (_real_monotonic_ns() - _booted)
time.time = lambda: time.time_ns() / 1e9
"""


def run_pipeline(home: Path, clock_ns: int | None = None, frames: int = 3, wait_for_daemon: bool = True) -> str:
    """Run a small pipeline in a process of its own (its clock reading `clock_ns` if given);
    returns its run id. Without a daemon (`wait_for_daemon=False`) its events are spooled."""
    code = (
        (FAKE_CLOCK.format(clock_ns=clock_ns) if clock_ns is not None else "")
        + f"""
import stagewatch
run = stagewatch.init(pipeline="board", home={str(home)!r})
for frame in range({frames}):
    with run.stage("detection", sample_id=f"f{{frame}}"):
        pass
run.finish()
delivered = run.flush(10)
assert delivered or not {wait_for_daemon!r}, "the daemon did not acknowledge the run"
print(run.id)
"""
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-1]


class Close(float):
    """A figure the CLI printed, equal to another within 1e-9 of it: a sum over the same rows in
    another order (files written in other commits, DuckDB's threads) may differ in its last bits,
    and rounding both to a number of digits still splits two such sums at a rounding boundary."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, float) and math.isclose(self, other, rel_tol=1e-9, abs_tol=1e-12)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = float.__hash__
