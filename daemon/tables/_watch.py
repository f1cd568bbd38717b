"""Tables damaged or deleted while the daemon runs: found at each flush (a table whose Delta
log was there at the last flush and is gone), by a commit (`_tables.TableGone`) or by a
compaction (`_tables.DamagedTable`); the daemon sets them aside and rebuilds them from the
event log (`Daemon._rebuild_tables_while_running`). status.json lists the tables the daemon
holds (`TableWatch.held`): a reader that finds one of them gone says so (`gone_tables`) rather
than read it as empty, whether the daemon runs (until it has found and rebuilt it) or not (until
it starts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stagewatch.daemon.base._derived import DAEMON_CHECKPOINT, STATUS, peek
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.tables._store import TABLES
from stagewatch.daemon.tables._tables import DamagedTable, TableGone, deleted, has_log, table_path


class TableWatch:
    def __init__(self, home: DaemonHome) -> None:
        self.home = home
        self.unusable: dict[str, str] = {}  # table -> what is wrong, said in the log when set aside
        self._present: set[str] = set()  # the tables with a log at the last flush
        # The tables a commit wrote since the last flush, told from the disk thread: one that a
        # commit made between two flushes and that was deleted before the next was never seen.
        self._written: set[str] = set()

    def written(self, table: str) -> None:
        self._written.add(table)

    def find_deleted(self) -> None:
        """A few stat calls a flush (a commit finds a deleted table too: TableGone)."""
        written, self._written = self._written, set()  # taken first: a commit told after is kept
        present = self._with_log()
        for table in sorted((self._present | written) - present):
            if deleted(table_path(self.home, table)):  # looked at again: a commit may have just made it
                self.found(TableGone(table))
        self._present = present

    def _with_log(self) -> set[str]:
        return {table for table in TABLES if has_log(table_path(self.home, table))}

    def held(self) -> list[str]:
        """The tables with a log at the last flush, and those found gone or damaged since (they
        are rebuilt, not given up): what status.json lists, so a reader can tell a table deleted
        from one never written."""
        return sorted(self._present | self.unusable.keys())

    def found(self, error: DamagedTable) -> None:
        self.unusable.setdefault(error.table, error.why)

    def take(self) -> dict[str, str]:
        """The tables found since last asked; the caller sets them aside. Which tables have a
        log is recorded anew now: after the daemon rebuilt them, a table deleted again is found
        at the next flush (with nothing recorded, it went unnoticed)."""
        unusable, self.unusable = self.unusable, {}
        self._present = self._with_log()
        return unusable


def gone_tables(home: Path | DaemonHome, status: dict[str, Any] | None = None) -> list[str]:
    """A sentence per table that the home's status.json (read here unless given) lists as held
    and whose Delta log is gone (deleted by hand, say), unless the daemon says it is rebuilding
    it: read now, the table is empty, which is no answer."""
    layout = DaemonHome.of(home)
    status = (peek(STATUS, layout) or {}) if status is None else status
    held, rebuilding = status.get("tables"), status.get("rebuilding") or {}
    being_rebuilt = rebuilding.get("tables") if isinstance(rebuilding.get("tables"), list) else []
    if not status:  # status.json deleted or damaged too: the checkpoint says which tables hold rows
        held = _held_by_checkpoint(layout)
    if not isinstance(held, list):  # a status.json of a version before the list, or none yet
        return []
    return [
        _gone(layout, table)
        for table in TABLES
        if table in held and table not in being_rebuilt and not has_log(table_path(layout, table))
    ]


def _held_by_checkpoint(layout: DaemonHome) -> list[str] | None:
    """The tables the daemon's checkpoint says it committed rows to (read only where status.json
    is missing or damaged: a checkpoint holds every running run, and is no small read)."""
    committed = (peek(DAEMON_CHECKPOINT, layout) or {}).get("tables")
    if not isinstance(committed, dict):
        return None
    return [table for table, lsn in committed.items() if isinstance(lsn, int) and lsn >= 0]


def _gone(layout: DaemonHome, table: str) -> str:
    folder = table_path(layout, table)
    if not deleted(folder):  # a file or a broken link in its place: every write there is refused
        return (
            f"the {table} table of {layout.root} is gone: {folder} is no folder (a file or a broken link?); it reads "
            "empty; move it away and the daemon rebuilds the table from the event log"
        )
    return (
        f"the {table} table of {layout.root} is gone (its folder or Delta log deleted?): it reads empty until the "
        "daemon rebuilds it from the event log (running: within seconds; stopped: when it starts; or run "
        "`stagewatch rebuild` with the daemon stopped)"
    )
