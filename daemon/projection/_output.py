"""What the fold produced since the read-model writer last took it: table rows, ended stages
as stages.jsonl lines, the runs whose audit trail changed, the crash rows of withdrawn losses
and the runs retention removed. The fold adds; the writer takes (`take_*`), and never
changes the fold's state itself."""

from __future__ import annotations

from typing import Any

from stagewatch.daemon.projection._rows import DAEMON_TABLES
from stagewatch.daemon.projection._stages import STAGE_ROW_FIELDS

# Tables whose rows are tuples of these columns (the store's schema, in its order); the
# others' rows are dicts.
ROW_FIELDS: dict[str, tuple[str, ...]] = {"stage_executions": STAGE_ROW_FIELDS}
_STAGE_RUN, _STAGE_LSN = STAGE_ROW_FIELDS.index("run_id"), STAGE_ROW_FIELDS.index("lsn")


class PendingOutput:
    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {table: [] for table in DAEMON_TABLES}  # see ROW_FIELDS
        self.stage_lines: dict[str, bytearray] = {}  # run -> ended stages to append, as stages.jsonl lines
        self.dirty: set[str] = set()
        # (run, lsn of a client_lost) whose rows a withdrawn loss takes back, for the writer to
        # delete from the tables (`take_withdrawn`).
        self.withdrawn: list[tuple[str, int]] = []
        self._expired: list[str] = []  # since the last `take_expired`
        self._dropped: set[str] = set()  # expired runs whose pending output `take` drops

    def withdraw(self, run_id: str, lsn: int) -> None:
        """Take back the rows a loss (the client_lost at `lsn`) wrote: those still pending here,
        and, through the writer, those already in the tables."""
        stage_rows = self.rows["stage_executions"]
        stage_rows[:] = [row for row in stage_rows if not (row[_STAGE_LSN] == lsn and row[_STAGE_RUN] == run_id)]
        run_rows = self.rows["runs"]
        run_rows[:] = [row for row in run_rows if not (row["lsn"] == lsn and row["run_id"] == run_id)]
        self.withdrawn.append((run_id, lsn))

    def expire(self, run_id: str) -> None:
        """Retention removed the run: what of it waits to be written is dropped."""
        self.dirty.discard(run_id)
        self.stage_lines.pop(run_id, None)
        self._dropped.add(run_id)
        self._expired.append(run_id)

    def take(self) -> tuple[dict[str, list[Any]], dict[str, bytearray]]:
        """Rows per table (tuples of ROW_FIELDS[table] where it names one, else dicts) and
        ended stages per run (stages.jsonl lines), produced since the last call."""
        rows, lines = self.rows, self.stage_lines
        self.rows, self.stage_lines = {table: [] for table in DAEMON_TABLES}, {}
        if self._dropped:  # rows of runs expired since they were produced (a replay)
            rows = {
                table: [row for row in table_rows if _run_of(row) not in self._dropped]
                for table, table_rows in rows.items()
            }
            lines = {run_id: data for run_id, data in lines.items() if run_id not in self._dropped}
            self._dropped = set()
        return rows, lines

    def take_expired(self) -> list[str]:
        """The runs expired (run_expired folded) since the last call."""
        expired, self._expired = self._expired, []
        return expired

    def take_withdrawn(self) -> list[tuple[str, int]]:
        """(run, lsn of a client_lost) whose rows in the tables are taken back, since the last
        call: the writer deletes them after committing the rows `take` gave it before."""
        withdrawn, self.withdrawn = self.withdrawn, []
        return withdrawn

    def take_dirty(self) -> set[str]:
        """The runs whose audit trail changed since the last call."""
        dirty, self.dirty = self.dirty, set()
        return dirty

    def pending_rows(self) -> int:
        """Rows produced since the last `take`."""
        return sum(len(rows) for rows in self.rows.values())


def _run_of(row: tuple | dict[str, Any]) -> str:
    """A pending row's run id."""
    return row[_STAGE_RUN] if isinstance(row, tuple) else row["run_id"]
