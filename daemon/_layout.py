"""The daemon's layout of a home: `DaemonHome`, the paths the daemon writes and reads, on top
of what the client's `Home` (client/_home.py) keeps (a run's folder and saved outputs, the
spool, the sockets). It is the one owner of these paths: no other module joins their names.

    events/                                   event log segments
    runs/{run_id}/audit.json                  the run's audit trail (+ stages.jsonl, accuracy.json)
    metrics/{table}/                          the tables
    index/, state/, logs/, quarantine/, keys/, datasets/, daemon.lock
"""

from __future__ import annotations

from stagewatch._home import PARTITION_PREFIX, Home, partition_date

__all__ = ["PARTITION_PREFIX", "DaemonHome", "partition_date"]


class DaemonHome(Home):
    """The paths of one home, the daemon's side included. Run ids, table and file names are
    checked before they become paths, so nothing built here escapes the root."""

    __slots__ = ()
