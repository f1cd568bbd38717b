"""Persisting read models: Parquet tables, audit JSON files and the projection checkpoint.

Everything here is written to a temporary name and renamed, so a reader (or a daemon
restarted after kill -9) never sees half a file. Parquet parts are named by the lowest
event-log position (lsn) of their rows: parts at or past the checkpoint are rewritten
on recovery, so a crash between a part and its checkpoint cannot duplicate rows.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from loguru import logger

from stagewatch._home import Home
from stagewatch._shared import make_dirs
from stagewatch.daemon._derived import DAEMON_CHECKPOINT, DerivedFile, clear_way
from stagewatch.daemon._projection import RunState, stage_lines_bytes

# The tables' rows are defined in _rows; their names stay importable from here.
from stagewatch.daemon._rows import DAEMON_TABLES as DAEMON_TABLES
from stagewatch.daemon._rows import DICTIONARY_COLUMNS, TABLES
from stagewatch.daemon._rows import LOGS as LOGS
from stagewatch.daemon._rows import RUNS as RUNS
from stagewatch.daemon._rows import SAMPLES as SAMPLES
from stagewatch.daemon._rows import STAGE_EXECUTIONS as STAGE_EXECUTIONS
from stagewatch.daemon._runindex import RunIndex


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """How every Parquet part of a metrics table is written (new parts, merges, compaction, gc)."""
    return {"compression": "zstd", "use_dictionary": [name for name in schema.names if name in DICTIONARY_COLUMNS]}


PART_PREFIX = "part-"
NS_PER_DAY = 86_400 * 1_000_000_000


def first_lsn(part: Path) -> int:
    """The lowest event-log position of a part's rows, from its name: `part-{lsn}.parquet`
    as flushed, `part-{first lsn}-{last lsn}.parquet` as merged by compaction."""
    return int(part.stem[len(PART_PREFIX) :].split("-")[0])


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


def write_part(path: Path, table: pa.Table) -> Path:
    """Write a Parquet part whole: to a temporary name, fsync'd, then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary, **parquet_options(table.schema))
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def rewrite_part_without(part: Path, doomed: Callable[[pa.Table], Any]) -> int:
    """Replace `part` by its rows where `doomed(table)` is not true (removed when none is left):
    readers see the old part or the new one, never half. Returns the rows removed."""
    table = pq.read_table(part)
    dropped = pc.fill_null(doomed(table), False)
    count = pc.sum(dropped).as_py() or 0
    if count:
        kept = table.filter(pc.invert(dropped))
        if kept.num_rows:
            write_part(part, kept)
        else:
            part.unlink()
    return count


class Store:
    """Writes the read models under a stagewatch home."""

    def __init__(self, home: Path | Home, checkpoint: DerivedFile = DAEMON_CHECKPOINT) -> None:
        self.home = Home.of(home)
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint.path(self.home)
        self.run_index = RunIndex(self.home)
        # Held while a part is written into a partition: a merge (on a thread of its own) holds
        # it while it links a partition's parts into the folder it swaps in (_compaction).
        self.parts_lock = threading.Lock()

    # -- Parquet -------------------------------------------------------------------------
    def write_rows(
        self, table: str, rows: list[dict[str, Any]] | list[tuple], fields: tuple[str, ...] | None = None
    ) -> list[Refused]:
        """Append rows as new part files, one per date partition (by start_time); returns the
        rows that cannot be stored, with the reason (`arrow_parts`)."""
        parts, refused = self.arrow_parts(table, rows, fields)
        self.write_parts(table, parts)
        return refused

    def arrow_parts(
        self, table: str, rows: list[dict[str, Any]] | list[tuple], fields: tuple[str, ...] | None = None
    ) -> ArrowParts:
        """Rows as one Arrow table per date partition (by start_time), for `write_parts`.

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

    def write_parts(self, table: str, parts: list[tuple[str, pa.Table]]) -> None:
        """Write `arrow_parts`' tables, a part file each (pyarrow's writing releases the GIL)."""
        for date, arrow in parts:
            self._write_partition(table, date, arrow)

    def _write_partition(self, table: str, date: str, arrow: pa.Table) -> None:
        if arrow.num_rows:
            first_lsn = pc.min(arrow["lsn"]).as_py()
            with self.parts_lock:
                write_part(self.home.partition(table, date) / f"{PART_PREFIX}{first_lsn:020d}.parquet", arrow)
            self.run_index.add({(run_id, date) for run_id in arrow["run_id"].unique().to_pylist()})

    def drop_rows_of(self, run_id: str, lsns: set[int], dates: list[str] | None) -> int:
        """Delete the rows of `run_id` whose lsn is in `lsns` from the daemon's tables (a loss's
        crash rows, withdrawn): each part that holds some is replaced, whole, without them.
        `dates`: the run's partitions (the run index's answer), None for all. Returns the rows
        deleted. The caller keeps merges away (they swap parts in under `parts_lock`)."""
        deleted = 0
        for table in ("stage_executions", "runs"):
            home = self.home
            partitions = home.partitions(table) if dates is None else [home.partition(table, d) for d in dates]
            for part in sorted(p for partition in partitions for p in partition.glob(f"{PART_PREFIX}*.parquet")):
                if first_lsn(part) <= max(lsns):  # a part holds no row below its name's lsn
                    deleted += self._drop_from_part(part, run_id, lsns)
        return deleted

    def _drop_from_part(self, part: Path, run_id: str, lsns: set[int]) -> int:
        def doomed(table: pa.Table) -> pa.ChunkedArray:
            withdrawn = pa.array(sorted(lsns), pa.int64())
            return pc.and_(pc.equal(table["run_id"], run_id), pc.is_in(table["lsn"], withdrawn))

        try:
            with self.parts_lock:
                return rewrite_part_without(part, doomed)
        except pa.ArrowInvalid as error:  # a damaged part: its rows are unreadable anyway (doctor names it)
            logger.warning("cannot read {} to delete withdrawn crash rows ({})", part, error)
            return 0

    def drop_parts_from(self, lsn: int, tables: tuple[str, ...] = DAEMON_TABLES) -> int:
        """Delete the tables' parts whose rows come from lsn onwards (written after the checkpoint)."""
        dropped = 0
        partitions = [partition for table in tables for partition in self.home.partitions(table)]
        paths = [path for partition in partitions for path in partition.glob(f"{PART_PREFIX}*.parquet")]
        for path in paths:
            if first_lsn(path) >= lsn:
                path.unlink()
                dropped += 1
        return dropped

    # -- audit trails --------------------------------------------------------------------
    def append_stage_lines(self, run_id: str, accounted_bytes: int, entries: list[dict[str, Any]]) -> int:
        """Append ended stages to the run's stages.jsonl after its first `accounted_bytes`
        (what the checkpointed state accounts for); returns the file's new size."""
        return self.write_stage_lines(run_id, accounted_bytes, stage_lines_bytes(entries))

    def write_stage_lines(self, run_id: str, accounted_bytes: int, data: bytes | bytearray) -> int:
        """Write encoded stage lines (`stage_lines_bytes`) at `accounted_bytes`; the new size.

        Cutting the file back first drops lines a crashed daemon wrote after its last
        checkpoint: replaying the log appends them again, exactly once.
        """
        path = self.home.stage_lines(run_id)
        make_dirs(path.parent)
        with open(path, "ab") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size < accounted_bytes:
                _pad_lost_lines(handle, path, accounted_bytes - size)
            handle.truncate(accounted_bytes)
            handle.write(data)
        return accounted_bytes + len(data)

    def write_audit(self, run: RunState, ended_bytes: int, ended: int | None = None) -> None:
        """audit.json: the run's head (`RunState.audit_head`), replaced whole. Its ended
        stages stay where they are, the first `ended_bytes` of stages.jsonl: a trail's size
        no longer grows with the run, and no stage is on disk twice."""
        self.write_audit_head(run.run_id, run.start_ns, run.audit_head(ended_bytes, ended))

    def write_audit_head(self, run_id: str, start_ns: int | None, head: bytes) -> None:
        atomic_write(self.home.audit(run_id), head)
        self.run_index.add([(run_id, _date_of(start_ns))])  # findable by prefix while it runs

    # -- checkpoint ----------------------------------------------------------------------
    def write_checkpoint(self, state: dict[str, Any]) -> None:
        self.write_checkpoint_bytes(msgpack.packb(state, use_bin_type=True))

    def write_checkpoint_bytes(self, data: bytes) -> None:
        clear_way(self.checkpoint, self.home)
        atomic_write(self.checkpoint_path, data, durable=True)
