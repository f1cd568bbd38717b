"""The daemon's table rows, from the fold to Delta commits: encoded as Arrow on the loop's
thread, committed in order by the disk thread, each commit marked with the lsn of its last
row (a Delta application transaction, in the same atomic commit), which is what recovery asks
each table (`committed_lsn`); and the deletes of the crash rows that a withdrawn loss takes back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake.exceptions import DeltaError

from stagewatch.daemon.base._stats import WriteErrors
from stagewatch.daemon.ingest._quarantine import Quarantine
from stagewatch.daemon.projection._output import ROW_FIELDS
from stagewatch.daemon.tables._diskjobs import DiskThreads
from stagewatch.daemon.tables._store import Store, with_dates

# A table's rows are committed at every flush (a second apart: a row is in the table about a
# second after its event) and, under a flood, whenever this many wait: each commit costs a log
# entry and a file per partition, so fewer and bigger ones keep the table and its log small.
COMMIT_ROWS = 25_000


class TableCommits:
    def __init__(self, store: Store, threads: DiskThreads, quarantine: Quarantine, write_error: WriteErrors) -> None:
        self.store = store
        self.threads = threads
        self.quarantine = quarantine
        self.write_error = write_error
        # Per table, the lsn up to which it holds the rows (read at recovery: replayed rows up
        # to it are dropped), counting the commits queued; and the rows encoded for its next commit.
        self.committed_lsn: dict[str, int] = {}
        self._uncommitted: dict[str, list[pa.Table]] = {}
        self._withdrawn: dict[str, set[int]] = {}  # run -> lsns of losses whose rows are still to delete
        self.written: Callable[[str], object] = lambda table: None  # told of each commit made (the table watch)

    @property
    def withdrawals_pending(self) -> bool:
        """Crash rows of withdrawn losses not yet deleted (no checkpoint may pass them)."""
        return bool(self._withdrawn)

    def add(self, rows: dict[str, list[Any]], withdrawn: list[tuple[str, int]], commit: bool) -> None:
        """Encode the fold's rows; commit them with `commit`, or where `COMMIT_ROWS` of a table
        wait, or before withdrawn crash rows are deleted."""
        for table, table_rows in rows.items():
            if table_rows:
                self._encode(table, table_rows)
        for run_id, lsn in withdrawn:
            self._withdrawn.setdefault(run_id, set()).add(lsn)
        for table, pending in list(self._uncommitted.items()):
            if commit or self._withdrawn or sum(t.num_rows for t in pending) >= COMMIT_ROWS:
                self._commit(table)
        if self._withdrawn:
            self._delete_withdrawn_rows()

    def uncommitted_rows(self) -> int:
        """Rows encoded and waiting for their table's next commit."""
        return sum(part.num_rows for parts in self._uncommitted.values() for part in parts)

    def start_over(self) -> None:
        """Forget what is encoded and not committed, and how far each table goes (the caller
        reads it back from the tables): the event log is replayed from its start."""
        self._uncommitted.clear()
        self._withdrawn.clear()
        self.committed_lsn.clear()

    def commit_all(self) -> None:
        for table in list(self._uncommitted):
            self._commit(table)

    def _encode(self, table: str, table_rows: list) -> None:
        """The rows as Arrow (building the columns holds the GIL, which the disk thread should
        not), less those the table holds already (a replay after a crash past its commit)."""
        parts, refused = self.store.arrow_parts(table, table_rows, ROW_FIELDS.get(table))
        for row, reason in refused:
            self.quarantine.keep_unprojectable(f"writing the {table} table", row["lsn"], row, reason)
        dated = with_dates(parts)
        held = self.committed_lsn.get(table, -1)
        if dated is not None and held >= 0:
            dated = dated.filter(pc.greater(dated["lsn"], held))
        if dated is not None and dated.num_rows:
            self._uncommitted.setdefault(table, []).append(dated)

    def _commit(self, table: str) -> None:
        """Queue one commit of the table's encoded rows, marked with their last lsn."""
        rows = pa.concat_tables(self._uncommitted.pop(table))
        lsn = pc.max(rows["lsn"]).as_py()
        existing = self.committed_lsn.get(table, -1) >= 0  # a commit before it made the table (jobs run in order)

        def commit() -> None:  # on the disk thread
            self.store.commit(table, rows, lsn, existing)
            self.written(table)

        self.threads.submit(commit, weight=rows.num_rows)
        self.committed_lsn[table] = lsn  # once the queue reaches the checkpoint queued after it

    def _delete_withdrawn_rows(self) -> None:
        """Delete the crash rows of losses withdrawn (a client declared lost sent again), once
        the rows queued before are committed: here, on the loop (it is rare: a pipeline that
        was stopped or suspended past the client timeout). Until they are gone no checkpoint
        is written, so a restart replays the withdrawal and deletes them then (a delete of
        rows already gone deletes nothing)."""
        if not self.threads.drain(passes=False):
            return  # the disk refused a write: the next flush retries
        for run_id in sorted(self._withdrawn):
            try:
                self.store.delete_rows_of(run_id, self._withdrawn[run_id])
            except (OSError, DeltaError) as error:  # a full disk, say: retried at the next flush
                self.write_error(f"cannot delete the withdrawn crash rows of run {run_id} ({{}}); will retry", error)
                return
            del self._withdrawn[run_id]
