"""What the client writes and finds in a stagewatch home, and where client and daemon meet.

`Home` owns the client's side of the layout: a run's folder and its saved outputs, the
spool, the sockets and their endpoints. Both sides resolve the home and the endpoint the
same way, so a pipeline and a daemon started in the same environment find each other with
no configuration at all. The daemon's side of the layout (event log, tables, state, index,
quarantine, logs, keys, audit trails) is `DaemonHome` (daemon/base/_layout.py), a Home with
the daemon's paths; no other module joins the layout's names.

    runs/{run_id}/stages/{stage}/{file}       saved stage outputs
    spool/                                    events kept while no daemon answered
    run/                                      the sockets (ingest, live, accuracy)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from stagewatch._names import check_name, check_run_id

DEFAULT_HOME = "./output"
# Linux limits a unix socket path to 107 bytes (sun_path is 108 with the NUL).
MAX_IPC_PATH_BYTES = 107
IPC = "ipc://"
ARTIFACT_FORM = "runs/{run_id}/stages/{stage}/{file}"  # a saved output's path, relative to the home


class Home:
    """The paths of one home. Run ids, stage and file names are checked before they
    become paths, so nothing built here escapes the root."""

    __slots__ = ("root",)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def of(cls, home: str | os.PathLike[str] | Home) -> Self:
        """`home` as this class (a path is taken as it is, not resolved)."""
        if isinstance(home, cls):
            return home
        return cls(home.root if isinstance(home, Home) else home)

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | Home | None = None) -> Self:
        """The argument, else $STAGEWATCH_HOME, else ./output; absolute."""
        if isinstance(home, Home):
            return cls.of(home)
        chosen = home if home is not None else os.environ.get("STAGEWATCH_HOME") or DEFAULT_HOME
        return cls(Path(chosen).expanduser().resolve())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Home) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # -- folders -------------------------------------------------------------------------
    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def sockets(self) -> Path:
        return self.root / "run"

    def shared_folders(self) -> tuple[Path, ...]:
        """What pipelines of the home's group write into (spool files, run folders)."""
        return self.spool, self.runs

    # -- runs ----------------------------------------------------------------------------
    def run(self, run_id: str) -> Path:
        return self.runs / check_run_id(run_id)

    def stage_outputs(self, run_id: str) -> Path:
        """The folder of a run's saved outputs, one folder per stage inside."""
        return self.run(run_id) / "stages"

    def artifact(self, run_id: str, stage: str, filename: str) -> Path:
        return self.root / artifact_relpath(run_id, stage, filename)

    # -- endpoints -----------------------------------------------------------------------
    @property
    def ingest_endpoint(self) -> str:
        """The ipc socket inside the home's private `run/` folder."""
        return f"{IPC}{self.sockets / 'ingest.sock'}"

    @property
    def live_endpoint(self) -> str:
        return f"{IPC}{self.sockets / 'live.sock'}"

    @property
    def accuracy_endpoint(self) -> str:
        return f"{IPC}{self.sockets / 'accuracy.sock'}"


def artifact_relpath(run_id: str, stage: str, filename: str) -> str:
    """A saved output's path relative to the home: runs/{run_id}/stages/{stage}/{file}.
    (Events carry this form; the daemon checks a path it is sent with `artifact_prefix`.)"""
    return f"{artifact_prefix(run_id, stage)}{check_name(filename, 'file name')}"


def artifact_prefix(run_id: str, stage: str) -> str:
    return f"runs/{check_run_id(run_id)}/stages/{check_name(stage, 'stage name')}/"  # as Home.stage_outputs


def parse_artifact_relpath(relative: str) -> tuple[str, str, str]:
    """(run_id, stage, file) of a path in the form `artifact_relpath` makes; ValueError else."""
    parts = relative.split("/")
    if len(parts) != 5 or artifact_relpath(parts[1], parts[3], parts[4]) != relative:
        raise ValueError(f"expected {ARTIFACT_FORM}")
    return parts[1], parts[3], parts[4]


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ipc:// endpoint, None for another transport."""
    return Path(endpoint[len(IPC) :]) if endpoint.startswith(IPC) else None


def resolve_endpoint(home: Home, endpoint: str | None = None) -> str:
    """The ingest endpoint: the argument, else $STAGEWATCH_ENDPOINT, else the home's socket."""
    chosen = endpoint or os.environ.get("STAGEWATCH_ENDPOINT") or home.ingest_endpoint
    check_endpoint(chosen)
    return chosen


def check_endpoint(endpoint: str) -> None:
    """Raise ValueError for an endpoint ZeroMQ could not use or that leaves the machine."""
    path = ipc_path(endpoint)
    if path is not None:
        size = len(os.fsencode(path))
        if size > MAX_IPC_PATH_BYTES:
            raise ValueError(
                f"expected an ipc socket path of at most {MAX_IPC_PATH_BYTES} bytes, got {size} ({str(path)!r}); "
                "use a shorter STAGEWATCH_HOME or set STAGEWATCH_ENDPOINT"
            )
        return
    if endpoint.startswith("tcp://"):
        return
    raise ValueError(f"expected an endpoint like ipc://PATH or tcp://HOST:PORT, got {endpoint!r}")
