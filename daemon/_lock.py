"""One daemon per home: an exclusive flock on the home's lock file, holding its pid."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from stagewatch._home import Home


class DaemonAlreadyRunning(RuntimeError):
    pass


def lock_endpoint(endpoint_file: Path) -> int:
    """Hold `{socket}.lock` beside an ipc socket for this process's life: a second daemon
    (on another home, say) given the same endpoint is refused instead of taking the socket
    over. Returns the descriptor to close at the end."""
    fd = os.open(f"{endpoint_file}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DaemonAlreadyRunning(f"another stagewatch daemon serves ipc://{endpoint_file}") from None
    return fd


class HomeLock:
    def __init__(self, home: Home) -> None:
        self.home = home
        self._fd: int | None = None

    def take(self) -> None:
        """Hold the lock for this process's life; DaemonAlreadyRunning if another holds it."""
        self.home.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DaemonAlreadyRunning(f"another stagewatch daemon is running on {self.home.root}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
