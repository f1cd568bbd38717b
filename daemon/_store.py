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
from collections import defaultdict, deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
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
from stagewatch.daemon._projection import RunState, audit_json, stage_lines_bytes

# The tables' rows are defined in _rows; their names stay importable from here.
from stagewatch.daemon._rows import DAEMON_TABLES as DAEMON_TABLES
from stagewatch.daemon._rows import DICTIONARY_COLUMNS, TABLES
from stagewatch.daemon._rows import LOGS as LOGS
from stagewatch.daemon._rows import RUNS as RUNS
from stagewatch.daemon._rows import SAMPLES as SAMPLES
from stagewatch.daemon._rows import STAGE_EXECUTIONS as STAGE_EXECUTIONS
from stagewatch.daemon._runindex import RunIndex

# An audit trail's copy pauses this often for the row writes queued behind it (DiskJobs):
# 10-40 ms of copying on this machine under a flood (16 MB steps took 170 ms).
COPY_STEP_BYTES = 4 << 20


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


def _copy_lines_as_items(
    lines: BinaryIO, size: int, document: BinaryIO, chunk: int | None = None, step: int | None = None
) -> Generator[None, None, bool]:
    """Copy the first `size` bytes of a JSON-lines file as array items, a chunk at a time
    (each line's newline becomes a comma), pausing (a `yield`) after every `step` bytes
    (`COPY_STEP_BYTES`); returns True if what was written ends with a comma.

    A chunk is a step unless said otherwise: each read and write gives up the GIL, and taking
    it back from the busy ingest loop costs up to a switch interval (5 ms). In chunks of 1 MB
    a 230 MB trail took 4 s of copying under a flood; the same copy alone, 0.26 s."""
    step = step or COPY_STEP_BYTES
    chunk = chunk or step
    last, since_pause = b"", 0
    while size > 0 and (data := lines.read(min(chunk, step, size))):
        size -= len(data)
        document.write(data.replace(b"\n", b","))
        last = data[-1:]
        since_pause += len(data)
        if since_pause >= step and size > 0:
            since_pause = 0
            yield
    return last == b"\n"


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


@dataclass(frozen=True)
class AuditDocument:
    """A run's audit.json but for its ended stages (copied from stages.jsonl when written),
    encoded from the run's state as it is now: its summary, and its running stages."""

    run_id: str
    date: str  # the partition that finds the run by prefix while it runs
    head: bytes  # the summary, open for the stages: {..., "stages":[
    running: bytes  # the running stages, as array items

    @classmethod
    def of(cls, run: RunState) -> AuditDocument:
        head = audit_json(run.audit_summary())[:-1] + b',"stages":['
        # Running stages, and those a lost client's crash ended provisionally (never a stages.jsonl
        # line: the real end takes their place if the client comes back).
        running = b",".join(audit_json(entry) for entry in [*run.open.values(), *run.provisional.values()])
        return cls(run.run_id, _date_of(run.start_ns), head, running)


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

    def write_audit(self, run: RunState, ended_bytes: int) -> None:
        self.write_audit_document(AuditDocument.of(run), ended_bytes)

    def write_audit_document(self, document: AuditDocument, ended_bytes: int) -> None:
        deque(self.audit_document_steps(document, ended_bytes), maxlen=0)

    def audit_document_steps(self, document: AuditDocument, ended_bytes: int) -> Iterator[None]:
        """audit.json: the run's summary with every stage, ended (the first `ended_bytes` of
        stages.jsonl) then running; in steps (`DiskJobs.submit_steps`), the file replaced
        after the last.

        The ended stages are copied in as bytes, a chunk at a time, so rewriting a long run's
        trail costs a file copy, not a re-encoding of every stage, and its memory stays
        that of one chunk (a run of a million stages has a 450 MB trail). Lines appended to
        stages.jsonl between two steps lie past `ended_bytes`: the copy never reads them.
        """
        with replacing(self.home.audit(document.run_id)) as out:
            out.write(document.head)
            if ended_bytes:  # a run with no ended stage yet has no stages.jsonl (nor folder)
                with open(self.home.stage_lines(document.run_id), "rb") as lines:
                    comma = yield from _copy_lines_as_items(lines, ended_bytes, out)
                if comma and not document.running:  # the last item's comma, with no item after it
                    out.seek(-1, os.SEEK_CUR)
                    out.truncate()
            out.write(document.running)
            out.write(b"]}")
        self.run_index.add([(document.run_id, document.date)])  # findable by prefix while it runs

    # -- checkpoint ----------------------------------------------------------------------
    def write_checkpoint(self, state: dict[str, Any]) -> None:
        self.write_checkpoint_bytes(msgpack.packb(state, use_bin_type=True))

    def write_checkpoint_bytes(self, data: bytes) -> None:
        clear_way(self.checkpoint, self.home)
        atomic_write(self.checkpoint_path, data, durable=True)
