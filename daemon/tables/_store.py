"""Persisting read models: the Delta tables, audit JSON files and the projection checkpoint.

Files are written to a temporary name and renamed, so a reader (or a daemon restarted after
kill -9) never sees half a file. Table rows go in as Delta commits (`_tables`), each carrying
the lsn of its last row's event: recovery reads it back and skips the rows the table holds.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import pyarrow as pa
import pyarrow.compute as pc
from loguru import logger

from stagewatch._shared import make_dirs
from stagewatch.daemon.base._derived import DAEMON_CHECKPOINT, DerivedFile, clear_way
from stagewatch.daemon.base._files import append_plain
from stagewatch.daemon.base._layout import DaemonHome

# The tables' rows are defined in _rows; their names stay importable from here.
from stagewatch.daemon.projection._rows import DAEMON_TABLES as DAEMON_TABLES
from stagewatch.daemon.projection._rows import DICTIONARY_COLUMNS, TABLES
from stagewatch.daemon.projection._rows import LOGS as LOGS
from stagewatch.daemon.projection._rows import RUNS as RUNS
from stagewatch.daemon.projection._rows import SAMPLES as SAMPLES
from stagewatch.daemon.projection._rows import STAGE_EXECUTIONS as STAGE_EXECUTIONS
from stagewatch.daemon.tables._runindex import RunIndex
from stagewatch.daemon.tables._tables import (
    DAEMON_APP,
    PARTITION_COLUMN,
    append,
    delete,
    sql_strings,
    writer_properties,
)


def table_writer_properties(table: str) -> Any:
    """How every file of a metrics table is written (appends, compaction, deletes): zstd,
    dictionaries for `DICTIONARY_COLUMNS` only."""
    return _writer_properties(table)


@functools.cache
def _writer_properties(table: str) -> Any:
    return writer_properties(TABLES[table], DICTIONARY_COLUMNS)


NS_PER_DAY = 86_400 * 1_000_000_000


Refused = tuple[dict[str, Any], str]  # a row that could not be stored, and why
ArrowParts = tuple[list[tuple[str, pa.Table]], list[Refused]]  # (date, rows) per partition; the refused


def _arrow_table(rows: list[dict[str, Any]], schema: pa.Schema) -> tuple[pa.Table, list[Refused]]:
    """The rows as an Arrow table; on a row its columns cannot hold, the table of the others
    (found row by row: the slow path runs only when something is wrong)."""
    try:
        return pa.Table.from_pylist(rows, schema), []
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        pass
    good, refused = [], []
    for row in rows:
        try:
            pa.Table.from_pylist([row], schema)
            good.append(row)
        except (pa.ArrowException, OverflowError, TypeError, ValueError) as error:
            refused.append((row, f"{type(error).__name__}: {error}"[:1000]))
    return pa.Table.from_pylist(good, schema), refused


def atomic_write(path: Path, data: bytes, *, durable: bool = False) -> None:
    with replacing(path, durable=durable) as handle:
        handle.write(data)


@contextlib.contextmanager
def replacing(path: Path, *, durable: bool = False) -> Iterator[BinaryIO]:
    """A file handle whose content replaces `path` when the block ends without an error; on
    an error the temporary file goes (nothing else would ever remove it)."""
    make_dirs(path.parent)  # a run's folder the daemon makes first is the group's too (--group-access)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def _date_of(ns: int | None) -> str:
    return _date_of_day((ns or 0) // NS_PER_DAY)


@functools.lru_cache(maxsize=1024)
def _date_of_day(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")


def _pad_lost_lines(handle: BinaryIO, path: Path, missing: int, chunk: int = 1 << 20) -> None:
    """Lines the checkpoint accounts for are gone (stages.jsonl deleted or cut short by hand):
    spaces keep the offsets that the checkpoint and the audit trail count in, and keep both
    files valid (JSON allows whitespace before a value; zeros, which extending the file would
    leave, are not). The stages lost are still in the event log and the Parquet rows."""
    logger.warning("{}: {} bytes of ended stages are gone (removed by hand?); going on without them", path, missing)
    while missing > 0:
        missing -= handle.write(b" " * min(chunk, missing))


def _grouped(rows: list[tuple], keys: list[int]) -> dict[int, list[tuple]]:
    """Rows by key, in order; a flush's rows nearly always share one day, kept as they are."""
    if keys and keys.count(keys[0]) == len(keys):
        return {keys[0]: rows}
    groups: dict[int, list[tuple]] = defaultdict(list)
    for key, row in zip(keys, rows, strict=True):
        groups[key].append(row)
    return groups


def with_dates(parts: list[tuple[str, pa.Table]]) -> pa.Table | None:
    """`arrow_parts`' tables as one, each row with its partition's date; None if no rows."""
    tables = [
        arrow.append_column(PARTITION_COLUMN, pa.array([date] * arrow.num_rows, pa.string())) for date, arrow in parts
    ]
    tables = [table for table in tables if table.num_rows]
    return pa.concat_tables(tables) if tables else None


def count_lines(path: Path, size: int, chunk: int = 4 << 20) -> int:
    """The complete lines in the first `size` bytes of a JSON-lines file (0 if there is none)."""
    lines = 0
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
        while size > 0 and (data := handle.read(min(chunk, size))):
            lines += data.count(b"\n")
            size -= len(data)
    return lines


class Store:
    """Writes the read models under a stagewatch home."""

    def __init__(
        self, home: Path | DaemonHome, checkpoint: DerivedFile = DAEMON_CHECKPOINT, app_id: str = DAEMON_APP
    ) -> None:
        self.home = DaemonHome.of(home)
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint.path(self.home)
        self.run_index = RunIndex(self.home)
        self.app_id = app_id  # whose progress marker the commits carry

    # -- tables --------------------------------------------------------------------------
    def write_rows(
        self,
        table: str,
        rows: list[dict[str, Any]] | list[tuple],
        fields: tuple[str, ...] | None = None,
        existing: bool = False,
    ) -> list[Refused]:
        """Append rows in one commit (partitioned by the date of their start_time) that marks
        the table as holding this writer's rows up to the last row's lsn; returns the rows that
        cannot be stored, with the reason (`arrow_parts`). `existing`: as for `commit`."""
        parts, refused = self.arrow_parts(table, rows, fields)
        dated = with_dates(parts)
        if dated is not None:
            self.commit(table, dated, pc.max(dated["lsn"]).as_py(), existing)
        return refused

    def arrow_parts(
        self, table: str, rows: list[dict[str, Any]] | list[tuple], fields: tuple[str, ...] | None = None
    ) -> ArrowParts:
        """Rows as one Arrow table per date partition (by start_time), for `commit` (`with_dates`).

        Rows are dicts, or with `fields` tuples of those columns: the fold's hot table, whose
        tuples are transposed into one Arrow array per column (building the table took 2.6 us
        a row where `Table.from_pylist` of dicts took 5.7; written, 2.8 against 3.5:
        benchmarks/ingest_phases.py).

        A row that cannot be stored (a value its column cannot hold) costs only itself: it is
        left out and returned with the reason; every other row is kept."""
        if fields is not None:
            return self._tuple_parts(table, rows, fields)
        by_date: dict[str, list[dict[str, Any]]] = defaultdict(list)
        refused: list[Refused] = []
        for row in rows:
            try:
                by_date[_date_of(row.get("start_time") or row.get("end_time") or row.get("time"))].append(row)
            except (OverflowError, ValueError, OSError) as error:
                refused.append((row, f"no date partition for its time ({error})"))
        parts = []
        for date, date_rows in sorted(by_date.items()):
            arrow, bad = _arrow_table(date_rows, TABLES[table])
            refused += bad
            parts.append((date, arrow))
        return parts, refused

    def _tuple_parts(self, table: str, rows: list[tuple], fields: tuple[str, ...]) -> ArrowParts:
        schema = TABLES[table]
        start, end = fields.index("start_time"), fields.index("end_time")
        try:
            days = [(row[start] or row[end] or 0) // NS_PER_DAY for row in rows]
            by_day = _grouped(rows, days)
            dates = {day: _date_of_day(day) for day in by_day}
        except (OverflowError, ValueError, OSError, TypeError):  # a time no partition holds
            return self.arrow_parts(table, [dict(zip(fields, row, strict=True)) for row in rows])
        parts, refused = [], []
        for day, day_rows in sorted(by_day.items()):
            try:
                columns = zip(fields, zip(*day_rows, strict=True), strict=True)
                arrays = [pa.array(column, schema.field(name).type) for name, column in columns]
                arrow = pa.Table.from_arrays(arrays, names=list(fields)).select(schema.names)
            except (pa.ArrowException, OverflowError, TypeError, ValueError):  # find the row, keep the others
                arrow, refused_here = _arrow_table([dict(zip(fields, row, strict=True)) for row in day_rows], schema)
                refused += refused_here
            parts.append((dates[day], arrow))
        return parts, refused

    def commit(self, table: str, rows: pa.Table, lsn: int, existing: bool = False) -> None:
        """Append `rows` (`with_dates`) in one commit that records `lsn`: every row of this
        writer up to that event's is in the table from this commit on (pyarrow and delta-rs
        release the GIL while they encode and write). `existing`: this writer committed to the
        table before (one found gone raises `_tables.TableGone`)."""
        append(self.home, table, rows, self.app_id, lsn, table_writer_properties(table), existing)
        pairs = rows.select(["run_id", PARTITION_COLUMN]).group_by(["run_id", PARTITION_COLUMN]).aggregate([])
        self.run_index.add(zip(pairs["run_id"].to_pylist(), pairs[PARTITION_COLUMN].to_pylist(), strict=True))

    def delete_rows_of(self, run_id: str, lsns: set[int]) -> int:
        """Delete the rows of `run_id` whose lsn is in `lsns` from the daemon's tables (a loss's
        crash rows, withdrawn); the rows deleted. Idempotent: a replay deletes nothing twice."""
        predicate = f"run_id = {sql_strings([run_id])} AND lsn IN ({', '.join(str(int(lsn)) for lsn in sorted(lsns))})"
        return sum(delete(self.home, table, predicate) for table in ("stage_executions", "runs"))

    # -- audit trails --------------------------------------------------------------------
    def write_stage_lines(self, run_id: str, accounted_bytes: int, data: bytes | bytearray) -> int:
        """Write encoded stage lines (`stage_lines_bytes`) at `accounted_bytes`; the new size.

        Cutting the file back first drops lines a crashed daemon wrote after its last
        checkpoint: replaying the log appends them again, exactly once.
        """
        path = self.home.stage_lines(run_id)
        make_dirs(path.parent)
        with os.fdopen(append_plain(path), "ab") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size < accounted_bytes:
                _pad_lost_lines(handle, path, accounted_bytes - size)
            handle.truncate(accounted_bytes)
            handle.write(data)
        return accounted_bytes + len(data)

    def write_audit_head(self, run_id: str, start_ns: int | None, head: bytes) -> None:
        """audit.json: the run's head (`RunState.audit_head`), replaced whole. Its ended
        stages stay where they are, in stages.jsonl: no stage is on disk twice."""
        atomic_write(self.home.audit(run_id), head)
        self.run_index.add([(run_id, _date_of(start_ns))])  # findable by prefix while it runs

    # -- checkpoint ----------------------------------------------------------------------
    def write_checkpoint(self, state: dict[str, Any]) -> None:
        self.write_checkpoint_bytes(msgpack.packb(state, use_bin_type=True))

    def write_checkpoint_bytes(self, data: bytes) -> None:
        clear_way(self.checkpoint, self.home)
        atomic_write(self.checkpoint_path, data, durable=True)
