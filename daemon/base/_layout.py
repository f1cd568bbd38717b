"""The daemon's layout of a home: `DaemonHome`, the paths the daemon writes and reads, on top
of what the client's `Home` (client/_home.py) keeps (a run's folder and saved outputs, the
spool, the sockets). It is the one owner of these paths: no other module joins their names.

    events/                                   event log segments
    runs/{run_id}/audit.json                  the run's audit trail (+ stages.jsonl, accuracy.json)
    metrics/{table}/                          the tables
    index/, state/, logs/, quarantine/, keys/, datasets/, daemon.lock
"""

from __future__ import annotations

import os
from pathlib import Path

from stagewatch._home import Home
from stagewatch._names import check_name, check_run_id, is_run_id

__all__ = ["PARTITION_PREFIX", "DaemonHome", "partition_date"]

PARTITION_PREFIX = "date="


class DaemonHome(Home):
    """The paths of one home, the daemon's side included. Run ids, table and file names are
    checked before they become paths, so nothing built here escapes the root."""

    __slots__ = ()

    # -- folders ---------------------------------------------------------------------------
    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def rebuild_staging(self) -> Path:
        """Where `stagewatch rebuild` builds the new read models (hidden: a name no run id or
        table can have); gone once it has swapped them in, left by one killed."""
        return self.root / ".rebuild"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def quarantined_segments(self) -> Path:
        """Files found among the event log's segments that are no segment of it."""
        return self.quarantine / "segments"

    @property
    def quarantined_tables(self) -> Path:
        """Tables set aside whole (a damaged Delta log, the layout of an earlier version)."""
        return self.quarantine / "tables"

    @property
    def quarantined_state(self) -> Path:
        """Damaged derived state files set aside, as quarantine/derived/{path}.damaged-{time}."""
        return self.quarantine / "derived"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def server_secret_key(self) -> Path:
        """The daemon's CURVE key pair (public and secret in one file)."""
        return self.keys / "server.key_secret"

    @property
    def server_public_key(self) -> Path:
        """What a client names in STAGEWATCH_CURVE_SERVER_KEY."""
        return self.keys / "server.key"

    @property
    def client_keys(self) -> Path:
        """Key pairs made by `stagewatch keys add`, one per client name."""
        return self.keys / "clients"

    @property
    def authorized_keys(self) -> Path:
        """The public keys of the clients a TCP endpoint accepts."""
        return self.keys / "authorized"

    # -- files -----------------------------------------------------------------------------
    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def status(self) -> Path:
        return self.state / "status.json"

    def checkpoint(self, name: str = "checkpoint.msgpack") -> Path:
        return self.state / check_name(name, "checkpoint name")

    @property
    def scrub(self) -> Path:
        """What the last scrubs found damaged (remembered until a clean scrub)."""
        return self.state / "scrub.json"

    @property
    def accuracy_lock(self) -> Path:
        return self.state / "accuracy.lock"

    @property
    def daemon_log(self) -> Path:
        return self.logs / "daemon.jsonl"

    def quarantine_file(self, date: str) -> Path:
        return self.quarantine / f"{check_name(date, 'date')}.jsonl"

    @property
    def run_index(self) -> Path:
        return self.index / "runs"

    # -- runs ------------------------------------------------------------------------------
    def run_ids(self) -> list[str]:
        """The run ids of the folders under runs/ (none while it is missing)."""
        return [entry.name for entry in os.scandir(self.runs) if is_run_id(entry.name)] if self.runs.is_dir() else []

    def expired_run(self, run_id: str) -> Path:
        """Where retention moves a run folder before deleting it (invisible to readers)."""
        return self.runs / f".expired-{check_run_id(run_id)}"

    def audit(self, run_id: str) -> Path:
        return self.run(run_id) / "audit.json"

    def stage_lines(self, run_id: str) -> Path:
        return self.run(run_id) / "stages.jsonl"

    def accuracy(self, run_id: str) -> Path:
        return self.run(run_id) / "accuracy.json"

    # -- tables ----------------------------------------------------------------------------
    def table(self, name: str) -> Path:
        return self.metrics / check_name(name, "table name")

    def partition(self, table: str, date: str) -> Path:
        return self.table(table) / f"{PARTITION_PREFIX}{date}"

    def partitions(self, table: str) -> list[Path]:
        """The table's date partition folders, oldest first (which of their files are the
        table's, only its Delta log says)."""
        return sorted(self.table(table).glob(f"{PARTITION_PREFIX}*"))


def partition_date(folder: Path) -> str | None:
    """The date of a partition folder (`date=YYYY-MM-DD`), or None for another folder."""
    return folder.name[len(PARTITION_PREFIX) :] if folder.name.startswith(PARTITION_PREFIX) else None
