"""Where recovery starts: the daemon's checkpoint, checked against the event log, and what
each table holds already (the lsn its last commit carries: a Delta application transaction).

Derived state that cannot be used (a damaged checkpoint, a damaged Delta log, the plain
Parquet parts of an earlier version) is set aside and rebuilt from the event log, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stagewatch.daemon.base._derived import (
    ACCURACY_CHECKPOINT,
    DAEMON_CHECKPOINT,
    DAMAGE_ERRORS,
    WrongShape,
    describe,
    load,
    set_aside,
)
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.ingest._eventlog import EventLog
from stagewatch.daemon.tables._store import DAEMON_TABLES, TABLES
from stagewatch.daemon.tables._tables import DAEMON_APP, committed_lsn, unusable_tables
from stagewatch.daemon.tables._tables import set_aside as set_table_aside


def load_checkpoint(home: DaemonHome, log: EventLog, restore: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The checkpoint, handed to `restore`; one that fails to load (a wrong shape deeper than
    `check_daemon_checkpoint` looks, a position the log does not have) is set aside, and an
    empty one restored: the log is replayed from its start."""
    checkpoint = load(DAEMON_CHECKPOINT, home) or {}
    try:
        # Past the end, it would skip every event logged from now on. (A log that holds nothing
        # was emptied by hand: its read models are kept rather than replaced by nothing.)
        if 0 < log.end_lsn < checkpoint.get("lsn", 0):
            raise WrongShape(f"'lsn' {checkpoint['lsn']} is past the event log's end ({log.end_lsn})")
        # Inside a record (a flipped bit), the replay would skip that record and call the log damaged.
        if log.end_lsn > 0 and not log.starts_a_record(checkpoint.get("lsn", 0)):
            raise WrongShape(f"'lsn' {checkpoint['lsn']} is no record's start in the event log")
        restore(checkpoint)
    except DAMAGE_ERRORS as error:
        set_aside(DAEMON_CHECKPOINT, home, describe(error))
        checkpoint = {}
        restore(checkpoint)
    return checkpoint


def tables_held(home: DaemonHome, checkpoint: dict[str, Any], log_end: int) -> tuple[dict[str, int], str | None]:
    """Set the tables that cannot be used aside (to be rebuilt from the event log): those
    `unusable_tables` names, and those whose last commit is past the end of the event log (which
    ends at `log_end`); then what each daemon table holds (its last commit's lsn), and why the log
    must be replayed from its start rather than from `checkpoint` (None: it need not)."""
    moved = _set_aside_unusable_tables(home)
    held = tables_committed(home)
    for table in tables_past_the_log(held, log_end):
        set_table_aside(
            home,
            table,
            f"holds rows up to lsn {held[table]:,}, past the end of this home's event log (lsn {log_end:,}): it is "
            "not this log's table (another home's, copied in?)",
        )
        held[table] = -1
        moved.append(table)
    if not checkpoint:
        return held, None
    if moved:
        return held, "rebuilding the tables set aside: the event log is replayed from its start"
    behind = tables_behind(checkpoint, held)
    if behind:  # a table deleted, or its log reset, by hand: only a replay from the start gives its rows back
        return held, (
            f"the {', '.join(behind)} table(s) hold fewer rows than the checkpoint counted (deleted or reset "
            "by hand?): the event log is replayed from its start to rebuild them"
        )
    return held, None


def tables_past_the_log(held: dict[str, int], log_end: int) -> list[str]:
    """The tables whose last commit carries an lsn at or past `log_end`, where no event of this
    log is (a log that holds nothing was emptied by hand: its tables are kept, as its checkpoint is)."""
    return sorted(table for table, lsn in held.items() if 0 < log_end <= lsn)


def tables_behind(checkpoint: dict[str, Any], held: dict[str, int]) -> list[str]:
    """The tables that hold fewer rows than `checkpoint` counted: their last commit's lsn (in
    `held`; a table left out is not judged) short of the one the checkpoint recorded. Deleted,
    reset or cut short (its newest commits deleted) by hand: the daemon replays the event log
    from its start at its next start; doctor says so meanwhile."""
    counted = checkpoint.get("tables")
    if not isinstance(counted, dict):
        return []
    return sorted(t for t, lsn in counted.items() if isinstance(lsn, int) and held.get(t, lsn) < lsn)


def tables_committed(home: DaemonHome) -> dict[str, int]:
    """What each daemon table holds: the lsn its last commit carries (-1: none)."""
    return {table: committed_lsn(home, table, DAEMON_APP) for table in DAEMON_TABLES}


def set_aside_while_running(home: DaemonHome, unusable: dict[str, str]) -> set[str]:
    """Tables found damaged or deleted while the daemon runs (table -> what is wrong), and any
    other table unusable by now, set aside to be rebuilt; the accuracy worker's checkpoint goes
    with `samples`. The tables moved."""
    for table, why in unusable.items():
        set_table_aside(home, table, why)
    if "samples" in unusable:
        ACCURACY_CHECKPOINT.path(home).unlink(missing_ok=True)
    return {*unusable, *_set_aside_unusable_tables(home)}


def _set_aside_unusable_tables(home: DaemonHome) -> list[str]:
    """Move the tables that cannot be used out of the way (a damaged Delta log; the plain
    Parquet parts of an earlier version: the upgrade). The accuracy worker's checkpoint goes
    with `samples`: it judges every run again."""
    moved = []
    for table, why in unusable_tables(home, TABLES):
        set_table_aside(home, table, why)
        moved.append(table)
    if "samples" in moved:
        ACCURACY_CHECKPOINT.path(home).unlink(missing_ok=True)
    return moved
