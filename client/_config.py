"""Where client and daemon meet: the home folder and the ingest endpoint.

Both sides resolve these the same way, so a pipeline and a daemon started in the same
environment find each other with no configuration at all.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = "./output"
# Linux limits a unix socket path to 107 bytes (sun_path is 108 with the NUL).
MAX_IPC_PATH_BYTES = 107


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The stagewatch home: the argument, else $STAGEWATCH_HOME, else ./output."""
    chosen = home if home is not None else os.environ.get("STAGEWATCH_HOME") or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


def default_endpoint(home: Path) -> str:
    """The ipc socket inside the home's private `run/` folder."""
    return f"ipc://{home / 'run' / 'ingest.sock'}"


def resolve_endpoint(home: Path, endpoint: str | None = None) -> str:
    """The ingest endpoint: the argument, else $STAGEWATCH_ENDPOINT, else the home's socket."""
    chosen = endpoint or os.environ.get("STAGEWATCH_ENDPOINT") or default_endpoint(home)
    check_endpoint(chosen)
    return chosen


def check_endpoint(endpoint: str) -> None:
    """Raise ValueError for an endpoint ZeroMQ could not use or that leaves the machine."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        if len(os.fsencode(path)) > MAX_IPC_PATH_BYTES:
            raise ValueError(
                f"expected an ipc socket path of at most {MAX_IPC_PATH_BYTES} bytes, got "
                f"{len(os.fsencode(path))} ({path!r}); use a shorter STAGEWATCH_HOME or set "
                "STAGEWATCH_ENDPOINT"
            )
        return
    if endpoint.startswith("tcp://"):
        return
    raise ValueError(f"expected an endpoint like ipc://PATH or tcp://HOST:PORT, got {endpoint!r}")


def spool_dir(home: Path) -> Path:
    return home / "spool"
