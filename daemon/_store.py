"""Persisting read models: the Delta tables, audit JSON files and the projection checkpoint.

Files are written to a temporary name and renamed, so a reader (or a daemon restarted after
kill -9) never sees half a file. Table rows go in as Delta commits (`_tables`), each carrying
the lsn of its last row's event: recovery reads it back and skips the rows the table holds.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import defaultdict, deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import pyarrow as pa
import pyarrow.compute as pc
from loguru import logger

from stagewatch._home import Home
from stagewatch._shared import make_dirs
from stagewatch.daemon._derived import DAEMON_CHECKPOINT, DerivedFile, clear_way
from stagewatch.daemon._projection import RunState, audit_json, stage_lines_bytes
from stagewatch.daemon._runindex import RunIndex
from stagewatch.daemon._tables import DAEMON_APP, PARTITION_COLUMN, append, delete, sql_strings, writer_properties

TIMESTAMP = pa.timestamp("ns", tz="UTC")
# An audit trail's copy pauses this often for the row writes queued behind it (DiskJobs):
# 10-40 ms of copying on this machine under a flood (16 MB steps took 170 ms).
COPY_STEP_BYTES = 4 << 20
MB = pa.float64()

STAGE_EXECUTIONS = pa.schema(
    [
        ("run_id", pa.string()),
        ("pipeline", pa.string()),
        ("stage", pa.string()),
        ("status", pa.string()),
        ("sample_id", pa.string()),
        ("client_id", pa.string()),
        ("span", pa.int64()),
        ("parent_span", pa.int64()),
        ("start_time", TIMESTAMP),
        ("end_time", TIMESTAMP),
        ("duration_ms", pa.float64()),
        ("rss_start_mb", MB),
        ("rss_peak_mb", MB),
        ("rss_end_mb", MB),
        ("gpu_peak_mb", MB),
        ("input_path", pa.string()),
        ("output_paths", pa.list_(pa.string())),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("lsn", pa.int64()),
        # Added later (older parts read them as nulls): where gpu_peak_mb came from, and per device.
        ("gpu_source", pa.string()),
        ("gpu_devices", pa.map_(pa.string(), MB)),
    ]
)
RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("pipeline", pa.string()),
        ("status", pa.string()),
        ("host", pa.string()),
        ("pid", pa.int64()),
        ("start_time", TIMESTAMP),
        ("end_time", TIMESTAMP),
        ("duration_ms", pa.float64()),
        ("stages", pa.int64()),
        ("stages_failed", pa.int64()),
        ("stages_crashed", pa.int64()),
        ("failed_stage", pa.string()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("dataset", pa.string()),
        ("lsn", pa.int64()),
        # Added later (older parts read it as null): the daemon's clock when the run's last event
        # arrived, from which retention counts the run's age (a pipeline's clock may be wrong).
        ("received_time", TIMESTAMP),
    ]
)
LOGS = pa.schema(
    [
        ("run_id", pa.string()),
        ("pipeline", pa.string()),
        ("time", TIMESTAMP),
        ("level", pa.string()),
        ("stage", pa.string()),
        ("sample_id", pa.string()),
        ("logger", pa.string()),
        ("message", pa.string()),
        ("extra", pa.string()),
        ("client_id", pa.string()),
        ("lsn", pa.int64()),
    ]
)
# One row per (run, stage, sample) judged against ground truth; written by the accuracy worker.
SAMPLES = pa.schema(
    [
        ("run_id", pa.string()),
        ("pipeline", pa.string()),
        ("stage", pa.string()),
        ("sample_id", pa.string()),
        ("time", TIMESTAMP),
        ("status", pa.string()),
        ("value", pa.float64()),
        ("severity", pa.float64()),
        ("error_types", pa.list_(pa.string())),
        ("errors", pa.string()),
        ("reason", pa.string()),
        ("scores", pa.string()),
        ("prediction_path", pa.string()),
        ("label_path", pa.string()),
        ("lsn", pa.int64()),
        # Added later; parts written before read them as nulls.
        ("classes", pa.list_(pa.string())),
        ("confidence", pa.float64()),
        ("boxes", pa.string()),  # JSON {"predicted": [[x, y, w, h, class, score, outcome]], "truth": [...]}
        ("input_path", pa.string()),  # the sample's input image in the golden dataset
    ]
)
TABLES = {"stage_executions": STAGE_EXECUTIONS, "runs": RUNS, "logs": LOGS, "samples": SAMPLES}
# Columns of few distinct values, which queries filter on or read as dictionaries (facets):
# dictionary-encoded in Parquet. Every other column is written plain: against pyarrow's
# dictionary-everything default a part takes 0.44-0.70x the CPU to write and is 0.76-0.78x
# the size, and reads no slower (benchmarks/parquet_parts.py, docs/benchmarks.md).
DICTIONARY_COLUMNS = frozenset(
    {
        "run_id",
        "pipeline",
        "stage",
        "status",
        "client_id",
        "host",
        "failed_stage",
        "error_type",
        "level",
        "logger",
        "gpu_source",
        "dataset",
    }
)


def table_writer_properties(table: str) -> Any:
    """How every file of a metrics table is written (appends, compaction, deletes): zstd,
    dictionaries for `DICTIONARY_COLUMNS` only."""
    return _writer_properties(table)


@functools.cache
def _writer_properties(table: str) -> Any:
    return writer_properties(TABLES[table], DICTIONARY_COLUMNS)


DAEMON_TABLES = ("stage_executions", "runs", "logs")  # the daemon's own; samples are the accuracy worker's
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


def with_dates(parts: list[tuple[str, pa.Table]]) -> pa.Table | None:
    """`arrow_parts`' tables as one, each row with its partition's date; None if no rows."""
    tables = [
        arrow.append_column(PARTITION_COLUMN, pa.array([date] * arrow.num_rows, pa.string())) for date, arrow in parts
    ]
    tables = [table for table in tables if table.num_rows]
    return pa.concat_tables(tables) if tables else None


class Store:
    """Writes the read models under a stagewatch home."""

    def __init__(
        self, home: Path | Home, checkpoint: DerivedFile = DAEMON_CHECKPOINT, app_id: str = DAEMON_APP
    ) -> None:
        self.home = Home.of(home)
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint.path(self.home)
        self.run_index = RunIndex(self.home)
        self.app_id = app_id  # whose progress marker the commits carry

    # -- tables --------------------------------------------------------------------------
    def write_rows(
        self, table: str, rows: list[dict[str, Any]] | list[tuple], fields: tuple[str, ...] | None = None
    ) -> list[Refused]:
        """Append rows in one commit (partitioned by the date of their start_time) that marks
        the table as holding this writer's rows up to the last row's lsn; returns the rows that
        cannot be stored, with the reason (`arrow_parts`)."""
        parts, refused = self.arrow_parts(table, rows, fields)
        dated = with_dates(parts)
        if dated is not None:
            self.commit(table, dated, pc.max(dated["lsn"]).as_py())
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

    def commit(self, table: str, rows: pa.Table, lsn: int) -> None:
        """Append `rows` (`with_dates`) in one commit that records `lsn`: every row of this
        writer up to that event's is in the table from this commit on (pyarrow and delta-rs
        release the GIL while they encode and write)."""
        append(self.home, table, rows, self.app_id, lsn, table_writer_properties(table))
        pairs = rows.select(["run_id", PARTITION_COLUMN]).group_by(["run_id", PARTITION_COLUMN]).aggregate([])
        self.run_index.add(zip(pairs["run_id"].to_pylist(), pairs[PARTITION_COLUMN].to_pylist(), strict=True))

    def delete_rows_of(self, run_id: str, lsns: set[int]) -> int:
        """Delete the rows of `run_id` whose lsn is in `lsns` from the daemon's tables (a loss's
        crash rows, withdrawn); the rows deleted. Idempotent: a replay deletes nothing twice."""
        predicate = f"run_id = {sql_strings([run_id])} AND lsn IN ({', '.join(str(int(lsn)) for lsn in sorted(lsns))})"
        return sum(delete(self.home, table, predicate) for table in ("stage_executions", "runs"))

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
