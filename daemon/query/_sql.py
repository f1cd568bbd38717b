"""The query layer: SQL on DuckDB over the Parquet files of a table's snapshot.

Every reader of the tables (the CLI, the dashboard, the query API) goes through `select`:
filters, sorting, paging and aggregates are SQL, user values are bound as parameters and
never formatted into the text. Which files make up a table is `snapshot_files`' business
alone (the Delta log's current snapshot, `_tables`): DuckDB reads exactly the list it gets
(`read_parquet([...])`; DuckDB's own Delta extension is downloaded at run time, which an
offline host cannot do). A file of a snapshot stays on disk for an hour after a compaction or
a delete replaced it (`_tables.VACUUM_RETENTION_HOURS`), so a listed file does not vanish
under a query.

One DuckDB connection per process; each thread queries through a cursor of its own (a
connection is not safe to share between threads, its cursors are: the dashboard's server
is threaded).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from stagewatch.daemon.base._files import MAX_HEAD_BYTES, read_plain
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.projection._rows import TABLES
from stagewatch.daemon.tables._tables import PARTITION_COLUMN, DamagedTable, logged_ranges
from stagewatch.daemon.tables._tables import snapshot_files as delta_snapshot_files

MAX_ROWS = 2**62  # LIMIT and OFFSET are 64-bit in DuckDB: more rows than any table holds
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")  # the partition's UTC date (YYYY-MM-DD), from the folder's name

_connection: duckdb.DuckDBPyConnection | None = None
_connection_lock = threading.Lock()
_local = threading.local()


class QueryError(ValueError):
    """A query DuckDB refused for a value it was given (a regular expression too large, a
    number out of range): the message says which, for the user."""


class DamagedPartWarning(UserWarning):
    """A data file of a table that cannot be read: its rows are left out of the answer."""


def cursor() -> duckdb.DuckDBPyConnection:
    """This thread's cursor on the process's one DuckDB connection."""
    global _connection
    found = getattr(_local, "cursor", None)
    if found is not None:
        return found
    with _connection_lock:
        if _connection is None:
            connection = duckdb.connect(":memory:")
            # GLOBAL: the cursors (sessions of their own) see these too.
            connection.execute("SET GLOBAL TimeZone = 'UTC'")  # timestamps come back as UTC, as written
            # Footers of parts already read are kept (DuckDB reads one again when its file changed).
            connection.execute("SET GLOBAL parquet_metadata_cache = true")
            # Parquet and ICU are built in; nothing is fetched from the network (offline hosts).
            connection.execute("SET GLOBAL autoinstall_known_extensions = false")
            _connection = connection
        _local.cursor = _connection.cursor()
    return _local.cursor


def snapshot_files(home: Path, table: str, dates: Sequence[str] | None = None) -> list[str]:
    """The Parquet files that make up `table` now, sorted: its Delta snapshot's (only those
    of the partitions of `dates`, if given: the run index's answer for one run). The only
    function that knows how a table's files are found. `_tables.DamagedTable` (a ValueError
    that says what to do) if its log cannot be read."""
    if dates is not None:  # dates from the run index, a file anyone can edit: only dates name a partition
        dates = [date for date in dates if DATE.fullmatch(date)]
    return delta_snapshot_files(home, table, dates)


# Many homes as one: every reader that takes a home also takes a list of them (one per host,
# on a shared file system): a table is then the union of each home's files.
Homes = Path | Sequence[Path]


def homes_of(home: Homes) -> list[Path]:
    """The homes a reader reads: `home` itself, or each of a list."""
    return [Path(home)] if isinstance(home, (str, Path)) else [Path(one) for one in home]


def table_parts(home: Homes, table: str, dates: Sequence[str] | None = None) -> list[tuple[list[str], list[str]]]:
    """The union of the homes' tables: per home, its `snapshot_files` and the ids of the runs
    whose rows are read from another home (`runs_read_elsewhere`), to leave out of its rows."""
    homes = homes_of(home)
    return [
        (snapshot_files(one, table, dates), sorted(elsewhere))
        for one, elsewhere in zip(homes, runs_read_elsewhere(homes), strict=True)
    ]


# -- the same run in several homes --------------------------------------------------------------
# A run id is a UUID: the same run in two homes (a copy of a home, `cp -r`, given with it) is one
# run. Its rows and its folder are read from the copy that holds more of it, the one whose
# stages.jsonl is the longer (a copy made while the run went on stops short of the original,
# which holds its end), and from the home given first on a tie (a whole copy: the same rows).


def runs_read_elsewhere(homes: Sequence[Path]) -> list[set[str]]:
    """Per home, in order: the ids of its runs that another home's copy stands for. Over one
    home nothing is looked at; over several, each home's runs/ is listed (cached until it
    changes) and only a run found in two of them costs more (its stages.jsonl's size in each)."""
    elsewhere: list[set[str]] = [set() for _ in homes]
    if len(homes) < 2:
        return elsewhere
    ids = [_run_folders(one) for one in homes]
    seen: set[str] = set()
    shared = {run_id for found in ids for run_id in found if run_id in seen or seen.add(run_id)}
    for run_id in shared:
        holders = [index for index, found in enumerate(ids) if run_id in found]
        winner = _copy_that_wins(homes, holders, run_id)
        for index in holders:
            if index != winner:
                elsewhere[index].add(run_id)
    return elsewhere


def home_of_run(homes: Sequence[Path], run_id: str) -> Path | None:
    """The home (of several) whose copy of the run is read, None if none holds its folder."""
    holders = [index for index, one in enumerate(homes) if run_id in _run_folders(one)]
    return homes[_copy_that_wins(homes, holders, run_id)] if holders else None


def _copy_that_wins(homes: Sequence[Path], holders: list[int], run_id: str) -> int:
    """Of the homes (by index) holding the run: the one whose audit.json reads, then whose
    stages.jsonl is the longest, the first given on a tie."""

    def standing(index: int) -> tuple[bool, int, int]:
        layout = DaemonHome.of(homes[index])
        return _head_reads(layout.audit(run_id)), _size(layout.stage_lines(run_id)), -index

    return max(holders, key=standing)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


_heads_read: dict[tuple[Path, int, int], bool] = {}  # (audit.json, mtime ns, size) -> it reads as JSON
_HEADS_KEPT = 4096


def _head_reads(path: Path) -> bool:
    """The run's audit.json is a JSON object: read once per version of the file (its stat is the
    key), so a copy whose head was cut short or overwritten loses the tie to one that reads."""
    try:
        found = path.stat()
    except OSError:
        return False
    key = (path, found.st_mtime_ns, found.st_size)
    reads = _heads_read.get(key)
    if reads is None:
        try:
            reads = isinstance(json.loads(read_plain(path, MAX_HEAD_BYTES)), dict)
        except (OSError, ValueError):
            reads = False
        if len(_heads_read) >= _HEADS_KEPT:
            _heads_read.clear()
        _heads_read[key] = reads
    return reads


_folders: dict[Path, tuple[int, frozenset[str]]] = {}  # home -> (its runs/'s mtime, the names in it)
_folders_lock = threading.Lock()


def _run_folders(home: Path) -> frozenset[str]:
    """The run ids of `home` (the folders under runs/), listed again only when runs/ changed."""
    runs = DaemonHome.of(home).runs
    try:
        stamp = runs.stat().st_mtime_ns
    except OSError:
        return frozenset()
    with _folders_lock:
        cached = _folders.get(runs)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        names = frozenset(entry.name for entry in os.scandir(runs) if entry.is_dir())
    except OSError:
        return frozenset()
    with _folders_lock:
        _folders[runs] = (stamp, names)
    return names


def schema_of(table: str) -> pa.Schema:
    """The table's columns as readers get them: the stored ones and the partition's date."""
    return TABLES[table].append(pa.field(PARTITION_COLUMN, pa.string()))


def select(
    home: Homes,
    table: str,
    sql: str,
    params: Sequence[Any] = (),
    schema: pa.Schema | None = None,
    dates: Sequence[str] | None = None,
) -> pa.Table:
    """The answer of `sql`, a query over the view `rows` (every column of `table`, the
    partition date included, no matter which files lack a column); with `schema`, cast to it;
    with `dates`, over those date partitions only. A data file that cannot be read is left
    out with a warning (`damaged_parts`), and named to the caller's `skipped_files()`."""
    parts = table_parts(home, table, dates)
    files = [path for part_files, _ in parts for path in part_files]
    key = _answer_key(files, table, sql, [*params, [elsewhere for _, elsewhere in parts]])
    kept = _answers.get(key) if key is not None else None
    if kept is not None:
        result, damaged = kept
        _note_skipped(damaged)  # a kept answer lacks the rows its query left out: said again
        return result.cast(schema) if schema is not None else result
    result, damaged = _read(parts, files, table, sql, params)
    if key is not None:
        _answers.put(key, (result, damaged))
    return result.cast(schema) if schema is not None else result


def _read(
    parts: list[tuple[list[str], list[str]]], files: list[str], table: str, sql: str, params: Sequence[Any]
) -> tuple[pa.Table, list[str]]:
    """The answer, and the damaged files left out of it (none if every file read)."""
    try:
        return _run(parts, table, sql, params), []
    except duckdb.Error as error:
        damaged = damaged_parts(files) if _about_files(error) else []
        if not damaged:
            raise QueryError(_first_line(error)) from None
    readable = [([path for path in part_files if path not in damaged], elsewhere) for part_files, elsewhere in parts]
    try:
        return _run(readable, table, sql, params), damaged
    except duckdb.Error as again:
        raise QueryError(_first_line(again)) from None


class _Answers:
    """The answers of recent queries, by the files they read (their sizes and modification
    times too) and the query: a snapshot's data files are never rewritten (Delta adds files and
    drops old ones from its log), so the same query over the same files has the same answer. A
    page switched back to, or a filter set back, answers from here; a commit, a compaction or a
    file changed by hand (damaged, repaired) is a new key. Each answer is kept with the damaged
    files its query left out, for `skipped_files` to hear of them from a kept answer too.
    Bounded in bytes, the least recently used dropped first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._answers: OrderedDict[bytes, tuple[pa.Table, list[str]]] = OrderedDict()
        self._lock = threading.Lock()  # the dashboard's server queries from several threads

    def get(self, key: bytes) -> tuple[pa.Table, list[str]] | None:
        with self._lock:
            found = self._answers.get(key)
            if found is not None:
                self._answers.move_to_end(key)
            return found

    def put(self, key: bytes, kept: tuple[pa.Table, list[str]]) -> None:
        if kept[0].nbytes > self.max_bytes // 6:  # a bulk read (an export, a whole table): not kept
            return
        with self._lock:
            if key in self._answers:
                return
            self._answers[key] = kept
            self.bytes += kept[0].nbytes
            while self.bytes > self.max_bytes:
                self.bytes -= self._answers.popitem(last=False)[1][0].nbytes


# Small beside the dashboard server's own memory: the kept answers fill up to this over the first
# sessions (a relative window's answers are new every minute) and the server then stays flat.
ANSWERS_MAX_BYTES = 24 << 20
_answers = _Answers(ANSWERS_MAX_BYTES)


def _answer_key(files: list[str], table: str, sql: str, params: Sequence[Any]) -> bytes | None:
    """A digest of what an answer depends on; None where a file cannot be looked at (gone: the
    query reads, and says so). A digest, not the values: the answers are bounded by their bytes,
    and a key of every file's path and of a query's parameters (thousands of run ids) can
    outweigh the small answer it stands for."""
    try:
        stamps = tuple((path, (stat := os.stat(path)).st_size, stat.st_mtime_ns) for path in files)
    except OSError:
        return None
    return hashlib.blake2b(repr((stamps, table, sql, tuple(params))).encode(), digest_size=32).digest()


_readers = ThreadPoolExecutor(8, thread_name_prefix="stagewatch-read")


def concurrently(*calls: tuple[Any, ...]) -> list[Any]:
    """The results of `calls` (each a function and its arguments), run on reader threads: DuckDB
    answers each on the thread's own cursor without holding the GIL, so a page's independent
    queries overlap. Each runs in a copy of the caller's context, so the damaged files a read
    left out reach the caller's `skipped_files`. Only a page's top level calls this (a call
    from a reader thread could wait on a pool it fills)."""
    futures = [_readers.submit(contextvars.copy_context().run, *call) for call in calls]
    return [future.result() for future in futures]


def over_arrow(rows: pa.Table, sql: str, params: Sequence[Any] = ()) -> pa.Table:
    """The answer of `sql` over `rows` (rows in hand) as the view `rows`: the same SQL that
    `select` runs over a table's files."""
    try:
        return _execute(cursor(), "rows", rows, sql, params)
    except duckdb.Error as error:
        raise QueryError(_first_line(error)) from None


def _run(parts: list[tuple[list[str], list[str]]], table: str, sql: str, params: Sequence[Any]) -> pa.Table:
    # Every column of the table, typed as the table declares it, even where no part has it yet
    # (an empty home, parts written before a column came): the empty typed rows join by name.
    # A home's files are read but for the runs another home's copy stands for (`table_parts`).
    schema = schema_of(table)
    scan, view_params = "", []
    for files, elsewhere in (part for part in parts if part[0]):
        if elsewhere:
            scan += f"SELECT * FROM {_scan()} WHERE run_id NOT IN (SELECT unnest(?::VARCHAR[])) UNION ALL BY NAME "
            view_params += [files, elsewhere]
        else:
            scan += f"SELECT * FROM {_scan()} UNION ALL BY NAME "
            view_params.append(files)
    view = f"SELECT {quoted(schema.names)} FROM ({scan}SELECT * FROM {_typed_empty(table)})"
    query = f"WITH rows AS ({view}) {sql}"
    all_params = [*view_params, *params]
    return _answer(cursor().sql(query, params=all_params) if all_params else cursor().sql(query))


_typed_empties: set[str] = set()


def _typed_empty(table: str) -> str:
    """The name of a table of no rows with `table`'s columns and types, made once a process in
    the connection's database (registering Arrow rows for each query costs more than the read)."""
    name = f"typed_empty_{table}"
    if name not in _typed_empties:
        con = cursor()  # before the lock: a thread's first cursor takes it
        with _connection_lock:
            if name not in _typed_empties:
                con.register("typed_empty", empty_table(schema_of(table)))
                try:
                    con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM typed_empty')
                finally:
                    con.unregister("typed_empty")
                _typed_empties.add(name)
    return name


def empty_table(schema: pa.Schema) -> pa.Table:
    """No rows of `schema` (pyarrow's `Schema.empty_table` imports pandas: a CLI command that
    reads the tables would pay for it at every start)."""
    return pa.Table.from_batches([], schema=schema)


def _scan() -> str:
    # hive_types: the date stays text, as the partition's name writes it.
    return (
        "read_parquet(?, hive_partitioning = true, union_by_name = true, "
        f"hive_types = {{'{PARTITION_COLUMN}': 'VARCHAR'}})"
    )


def quoted(names: Sequence[str]) -> str:
    """Column names as SQL identifiers (ours, from the schema: never a user's value)."""
    return ", ".join(f'"{name}"' for name in names)


def _execute(con: duckdb.DuckDBPyConnection, name: str, arrow: pa.Table, query: str, params: Sequence[Any]) -> pa.Table:
    con.register(name, arrow)
    try:
        return _answer(con.sql(query, params=list(params)) if params else con.sql(query))
    finally:
        con.unregister(name)


def _answer(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()


# DuckDB's own refusals name their kind ("Invalid Input Error: …" for a regular expression RE2
# refuses, "Conversion Error: …"); what a damaged file's Thrift header raises comes through bare
# ("invalid TType", "TProtocolException: Invalid data", "don't know what type").
DUCKDB_ERROR = re.compile(r"[A-Z][A-Za-z ]* Error: ")


def _about_files(error: duckdb.Error) -> bool:
    """Whether reading a file failed (not the query: a regular expression RE2 refused, a value
    out of range), so that finding the damaged part is worth reading each one."""
    message = str(error).strip()
    return isinstance(error, duckdb.IOException) or "parquet" in message.lower() or not DUCKDB_ERROR.match(message)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:500] if str(error).strip() else type(error).__name__


# The damaged files the reads of the caller's `skipped_files()` block left out (None: no block).
_skipped: ContextVar[list[str] | None] = ContextVar("skipped_files", default=None)


@contextlib.contextmanager
def skipped_files() -> Iterator[list[str]]:
    """The data files that the reads inside the block (`select`, `read_table`) left out for
    damage, in the order met, each once: a caller whose answer must be whole (a CI gate) asks
    this, not the warnings (shown once per place by Python's default filter; not per thread)."""
    found: list[str] = []
    token = _skipped.set(found)
    try:
        yield found
    finally:
        _skipped.reset(token)
        _note_skipped(found)  # an enclosing block's too


def _note_skipped(paths: Sequence[str]) -> None:
    if (noted := _skipped.get()) is not None:
        noted += [path for path in paths if path not in noted]


def skipped_for_run(home: Homes, skipped: Sequence[str], run_id: str) -> list[str]:
    """Of the damaged files a read left out (`skipped_files`), those that may have held rows of
    the run: a file whose table's Delta log records run ids for it (the lowest and the highest,
    written with the file, so still there when the file is damaged) that leave this run's out
    held none of its rows. A file of no table of `home`, or that the log gives no figures for,
    may have."""
    if not skipped:
        return []
    ranges: dict[str, tuple[Any, Any]] = {}
    for one in homes_of(home):
        for table in TABLES:
            folder = DaemonHome.of(one).table(table)
            if any(Path(path).is_relative_to(folder) for path in skipped):
                with contextlib.suppress(DamagedTable):
                    ranges |= logged_ranges(one, table, "run_id")
    return [path for path in skipped if (span := ranges.get(path)) is None or _within(run_id, *span)]


def _within(value: str, low: Any, high: Any) -> bool:
    """`value` between a file's logged lowest and highest: a writer may cut long strings in its
    statistics to a prefix (never more than the value), so the highest is compared over its length."""
    return str(low) <= value and value[: len(str(high))] <= str(high)


def damaged_parts(files: list[str]) -> list[str]:
    """The files that do not read, warning of each and noting them for `skipped_files` (this
    reads every file whole: only after a read failed). The event log still holds their rows:
    `stagewatch rebuild`."""
    damaged = {path: damage for path in files if (damage := damage_of(Path(path)))}
    _note_skipped(list(damaged))
    for path, damage in damaged.items():
        warnings.warn(
            f"skipped the damaged data file {path} ({damage}); its rows are missing from this "
            "answer until `stagewatch rebuild` (daemon stopped) rebuilds the tables from the event log",
            DamagedPartWarning,
            stacklevel=5,
        )
    return list(damaged)


def damage_of(part: Path) -> str | None:
    """Why a table's data file cannot be read, or None if it can (a whole read: this runs
    only after a read failed)."""
    try:
        pq.read_table(part)
    except FileNotFoundError:
        return "missing (deleted by hand?)"
    except (pa.ArrowInvalid, OSError) as error:
        return str(error)
    return None
