"""The accuracy worker as a child process of the daemon (stagewatch.daemon.accuracy._accuracy)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from loguru import logger

from stagewatch._home import ipc_path
from stagewatch.daemon.base._layout import DaemonHome

RESTART_DELAY_S = 5.0


class WorkerProcess:
    """Started with the daemon, restarted when it dies (at most every 5 s), stopped with it.
    Its crash never touches ingestion."""

    def __init__(self, home: DaemonHome, endpoint: str | None, dataset_roots: tuple[Path, ...] | None = None) -> None:
        self.home = home
        self.endpoint = endpoint  # where it publishes live accuracy; None: no worker
        self.dataset_roots = dataset_roots
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._next_start = 0.0

    def start(self) -> None:
        if self.endpoint is None:
            return
        module, parent = "stagewatch.daemon.accuracy._accuracy", str(os.getpid())
        command = [sys.executable, "-m", module, "--home", str(self.home.root), "--live", self.endpoint]
        for root in self.dataset_roots or ():
            command += ["--dataset-root", str(root)]
        self.process = subprocess.Popen([*command, "--parent", parent], stdin=subprocess.DEVNULL)
        self._next_start = time.monotonic() + RESTART_DELAY_S

    def watch(self) -> None:
        if self.process is None or self.process.poll() is None or time.monotonic() < self._next_start:
            return
        logger.warning("accuracy worker exited with code {}; restarting it", self.process.returncode)
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        socket_file = ipc_path(self.endpoint) if self.endpoint else None
        if socket_file is not None:  # a stale socket file would look like a worker
            socket_file.unlink(missing_ok=True)
