"""One daemon per home: an exclusive flock on the home's lock file, holding its pid."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from stagewatch.daemon.base._layout import DaemonHome


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


HOLDERS = {"daemon": "a stagewatch daemon", "rebuild": "`stagewatch rebuild`", "gc": "`stagewatch gc`"}


class HomeLock:
    """The home's one writer: the daemon, or a rebuild or gc while no daemon runs. The lock file
    says which holds it (its pid and role), so the one refused is told who is in the way."""

    def __init__(self, home: DaemonHome, role: str = "daemon") -> None:
        self.home = home
        self.role = role
        self._fd: int | None = None

    def take(self) -> None:
        """Hold the lock for this process's life; DaemonAlreadyRunning if another holds it."""
        self.home.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DaemonAlreadyRunning(f"{holder} is running on {self.home.root}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.role}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _holder(fd: int) -> str:
    """'`stagewatch rebuild` (pid 4242)' from the lock file; a daemon where it says no role (a
    daemon of a version before roles) or cannot be read."""
    try:
        words = os.pread(fd, 256, 0).decode(errors="replace").split()
    except OSError:
        words = []
    pid = f" (pid {words[0]})" if words and words[0].isdigit() else ""
    role = _role(words)
    return ("another stagewatch daemon" if role == "daemon" else HOLDERS[role]) + pid


def lock_role(home: DaemonHome) -> str:
    """The role the home's lock file names ('daemon', 'rebuild', 'gc'): its holder's while the
    lock is held (its last holder's after); a daemon where it says none or cannot be read."""
    try:
        return _role(home.lock.read_text(errors="replace").split())
    except OSError:
        return "daemon"


def _role(words: list[str]) -> str:
    return words[1] if len(words) > 1 and words[1] in HOLDERS else "daemon"
