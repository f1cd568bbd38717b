"""The metrics tables as Delta tables (delta-rs): `metrics/{table}/` holds hive-style date
partitions of Parquet files and `_delta_log/`, the commits that say which files make up the table.

Every append is one atomic commit that also carries how far in the event log the writer's rows
go (a Delta application transaction: app id -> the lsn of the last row's event), so a writer
restarted after kill -9 reads from the table itself what it already holds. Deletes, compaction
and vacuum are the library's; readers take one snapshot's file list (`snapshot_files`).

Two processes commit to these tables (the daemon; the accuracy worker, to `samples`): delta-rs
rebases a commit over concurrent ones that do not touch the same files and raises
CommitFailedError when they do (a compaction and a delete of the same file): such a commit is
tried again on a fresh snapshot, a bounded number of times.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError
from loguru import logger

from stagewatch.daemon.base._layout import PARTITION_PREFIX, DaemonHome

DAEMON_APP = "stagewatch-daemon"  # the application transaction of the daemon's rows
ACCURACY_APP = "stagewatch-accuracy"  # and of the accuracy worker's (samples)
PARTITION_COLUMN = "date"
COMMIT_ATTEMPTS = 8
# Files a compaction or a delete removed stay this long for readers still on an older snapshot.
VACUUM_RETENTION_HOURS = 1
# A file smaller than this is small: compaction bins a partition's small files into files of
# about `COMPACT_TARGET_BYTES`, and only where a partition holds at least `MIN_SMALL_FILES`.
SMALL_FILE_BYTES = 16 << 20
COMPACT_TARGET_BYTES = 64 << 20
MIN_SMALL_FILES = 8
# A past day's partition is rewritten once in run id order (z-order on `SORT_COLUMN`), in row
# groups of `ROW_GROUP_ROWS`: a lookup by run id (random UUIDs) then reads the one row group
# whose run id range holds it, where an unsorted partition is read whole.
SORT_COLUMN = "run_id"
ROW_GROUP_ROWS = 8192
# delta-rs's z-order orders strings by their first 14 bytes (its key's width; a canonical UUID's
# first twelve hex digits): ids alike that far come out in no order among themselves, so a
# partition's order is judged on them (judged on whole ids, a pipeline numbering its runs kept
# its partitions unsorted, rewritten at every pass).
SORT_KEY_CHARS = 14
# Memory the sort may hold before it spills to disk (the daemon's peak stays bounded).
SORT_MEMORY_BYTES = 256 << 20
# Partitions sorted a pass and table, the most recent days first: a home of an earlier version
# has every past day to sort, and a pass must end soon after a stop is asked.
SORTS_PER_PASS = 2
# Log entries are kept this long (readers never travel back in time; a reader far behind
# reopens the table). Past them, delta-rs's own checkpoints (every 100 commits) hold the state.
TABLE_CONFIGURATION = {
    "delta.logRetentionDuration": "interval 2 hours",
    "delta.deletedFileRetentionDuration": f"interval {VACUUM_RETENTION_HOURS} hours",
}
DAMAGE = (DeltaError, OSError, ValueError)

T = TypeVar("T")


class DamagedTable(ValueError):
    """A table whose Delta log cannot be read (a truncated commit, a missing checkpoint): the
    message names the table and the way back (the event log holds every row)."""

    def __init__(self, table: str, problem: str, message: str | None = None) -> None:
        self.table = table
        self.why = f"cannot be read ({problem})"
        super().__init__(
            message
            or f"the {table} table cannot be read ({problem}); its rows are all in the event log: "
            "a running daemon sets the table aside and rebuilds it when it next writes or compacts it "
            "(a stopped one when it starts), or run `stagewatch rebuild`"
        )


class TableGone(DamagedTable):
    """A table the daemon committed to whose Delta log is gone (the table, or its log, deleted
    by hand while the daemon ran): a new table in its place would hold only the rows from then on."""

    def __init__(self, table: str) -> None:
        super().__init__(table, "its folder or its Delta log was deleted while the daemon ran")


class OldLayout(DamagedTable):
    """A table written by a stagewatch before Delta tables (plain Parquet parts, no log)."""

    def __init__(self, table: str) -> None:
        super().__init__(table, "written by an earlier version of stagewatch, without a Delta log")


class ForeignTable(DamagedTable):
    """A table folder that is a link to a folder outside the home's metrics folder (another
    home's table, say): its rows are not this home's, nor is its commit marker (read as this
    home's, it made the daemon drop this home's rows as held already). Not read, never written."""

    def __init__(self, table: str, link: Path, target: str) -> None:
        super().__init__(
            table,
            f"{link} is a link to {target}, outside this home",
            f"{link} is a link to {target}, outside this home: not read; move it away, the daemon rebuilds the "
            f"{table} table from the event log (a stopped one when it starts: it moves the link aside itself), "
            "or run `stagewatch rebuild`",
        )
        self.why = foreign_why(link, target)


def foreign_why(link: Path, target: str) -> str:
    return f"folder {link} is a link to {target}, outside this home (another home's table?)"


def foreign_target(folder: Path) -> str | None:
    """Where the table folder `folder` is a link to a folder outside its home's metrics folder:
    the link's target (real path); None for a folder, a link inside metrics/ (metrics/ itself may
    be a link to another disk: compared as real paths), or a broken link (it reads empty)."""
    if not folder.is_symlink():  # one lstat: every reader asks
        return None
    target, metrics = os.path.realpath(folder), os.path.realpath(folder.parent)
    if not os.path.isdir(target) or (target != metrics and os.path.commonpath([target, metrics]) == metrics):
        return None
    return target


def table_path(home: Path | DaemonHome, table: str) -> Path:
    return DaemonHome.of(home).table(table)


def own_table(home: Path | DaemonHome, table: str) -> Path:
    """The table's folder; ForeignTable if it is a link outside the home's metrics folder."""
    folder = table_path(home, table)
    if (target := foreign_target(folder)) is not None:
        raise ForeignTable(table, folder, target)
    return folder


def has_log(folder: Path) -> bool:
    return (folder / "_delta_log").is_dir()


def deleted(folder: Path) -> bool:
    """A table's folder, or its log, is gone (deleted by hand, say). Not a file in the folder's
    place: every write there is refused by the file system, reported and retried."""
    return not has_log(folder) and (folder.is_dir() or not os.path.lexists(folder))


# A part of the layout before Delta tables: named by its first lsn (merged: first-last). Not the
# name of a data file delta-rs writes, which a first commit writes before it makes the log.
OLD_PART = re.compile(r"part-\d{20}(-\d{20})?\.parquet")


def old_layout(folder: Path) -> bool:
    """Parquet parts of the layout before Delta tables, and no Delta log."""
    if has_log(folder):
        return False
    return any(OLD_PART.fullmatch(path.name) for path in folder.glob(f"{PARTITION_PREFIX}*/part-*.parquet"))


def first_line(error: BaseException) -> str:
    """The error's first line, short: a gap in a Delta log said in words (delta-rs prints the
    commits on either side as Rust structures, cut at 300 characters before the second one's
    version), and any other Rust structure cut off."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0]
    if (gap := _log_gap(line)) is not None:
        return gap
    return _RUST_STRUCTURE.split(line, maxsplit=1)[0].rstrip(" :")[:300]


# delta-rs: "... Expected contiguous commit files, but found gap: ParsedLogPath { ... version: 1,
# ... } -> ParsedLogPath { ... version: 3, ... }": the commits on either side of the gap.
_GAP_VERSIONS = re.compile(r"\bversion: (\d+)")
_RUST_STRUCTURE = re.compile(r"\b[A-Z]\w* \{ ")


def _log_gap(line: str) -> str | None:
    versions = [int(found) for found in _GAP_VERSIONS.findall(line)]
    if "found gap" not in line or len(versions) < 2 or versions[1] - versions[0] < 2:
        return None
    first, last = versions[0] + 1, versions[1] - 1
    if first == last:
        return f"its Delta log has a gap: commit {first} ({first:020d}.json) is missing"
    return f"its Delta log has a gap: commits {first} to {last} ({first:020d}.json to {last:020d}.json) are missing"


# -- writing ----------------------------------------------------------------------------------
def writer_properties(schema: pa.Schema, dictionary_columns: Iterable[str]) -> WriterProperties:
    """zstd, dictionary encoding only for the columns of few values (`_store.DICTIONARY_COLUMNS`)."""
    wanted = set(dictionary_columns)
    return WriterProperties(
        compression="ZSTD",
        max_row_group_size=ROW_GROUP_ROWS,
        default_column_properties=ColumnProperties(dictionary_enabled=False),
        column_properties={name: ColumnProperties(dictionary_enabled=True) for name in schema.names if name in wanted},
    )


def append(
    home: Path | DaemonHome,
    table: str,
    rows: pa.Table,
    app_id: str,
    lsn: int,
    properties: WriterProperties,
    existing: bool = False,
) -> None:
    """Append `rows` (with their `date` column) as one commit that also records `lsn` as how
    far in the event log `app_id`'s rows in this table go. With `existing` (the writer
    committed to it before), a table whose log is gone is not made anew: TableGone.

    Safe to call again after it raised: a commit that went in before an error (delta-rs makes
    its log checkpoint after the commit, and that can fail) is found by its marker and not
    made twice. DamagedTable where the table's log cannot be read."""
    path = own_table(home, table)
    if existing and deleted(path):
        raise TableGone(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    commit = CommitProperties(app_transactions=[Transaction(app_id, version=lsn)])
    tries = 0

    def write() -> None:
        nonlocal tries
        tries += 1
        if tries > 1 and committed(home, table, app_id, lsn):
            return
        write_deltalake(
            str(path),
            rows,
            mode="append",
            partition_by=[PARTITION_COLUMN],
            configuration=None if has_log(path) else TABLE_CONFIGURATION,
            writer_properties=properties,
            commit_properties=commit,
        )

    try:
        retried(write, f"append to the {table} table", strays_of(home, table))
    except (DeltaError, OSError) as error:
        if committed(home, table, app_id, lsn):  # what failed came after the commit (its log checkpoint, say)
            logger.warning("the {} table: a commit went in, then delta-rs failed ({})", table, first_line(error))
            set_aside_strays(home, table)
            return
        if set_aside_strays(home, table):
            retried(write, f"append to the {table} table")
            return
        if existing and deleted(path):  # under the commit
            raise TableGone(table) from None
        if (damage := damage_of_table(home, table)) is not None:
            raise DamagedTable(table, damage) from None
        raise
    _cache.check_moved_on(path, table)


def committed(home: Path | DaemonHome, table: str, app_id: str, lsn: int) -> bool:
    """Whether `app_id` committed its rows up to `lsn` to `table` already (asked only after an
    append failed: reading the log costs about what a commit does)."""
    try:
        return committed_lsn(home, table, app_id) >= lsn
    except DamagedTable:
        return False


def committed_lsn(home: Path | DaemonHome, table: str, app_id: str) -> int:
    """The lsn of the last event whose rows `app_id` committed to `table`; -1 if none.
    DamagedTable if its log cannot be read (ForeignTable: a link to another home's table)."""
    path = own_table(home, table)
    if not has_log(path):
        return -1
    try:
        version = DeltaTable(str(path)).transaction_version(app_id)
    except DAMAGE as error:
        raise DamagedTable(table, first_line(error)) from None
    return -1 if version is None else version


def retried(action: Callable[[], T], what: str, on_conflict: Callable[[], object] = lambda: None) -> T:
    """`action`, tried again on a fresh snapshot when a concurrent commit conflicts with it;
    `on_conflict` first (a conflict with no commit behind it is a stray entry in the table's
    log in the way of the next commit's name: `set_aside_strays`)."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return action()
        except CommitFailedError as error:
            on_conflict()
            if attempt == COMMIT_ATTEMPTS:
                raise
            logger.info(
                "{}: commit conflict ({}); trying again ({}/{})", what, first_line(error), attempt, COMMIT_ATTEMPTS
            )
            time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")


def delete(home: Path | DaemonHome, table: str, predicate: str) -> int:
    """Delete the rows matching `predicate` (SQL); the rows deleted. Idempotent."""
    path = table_path(home, table)
    if not has_log(path):
        return 0
    result = retried(
        lambda: DeltaTable(str(path)).delete(predicate), f"delete from the {table} table", strays_of(home, table)
    )
    if result.get("num_removed_files") or result.get("num_deleted_rows"):  # a commit was made
        _cache.check_moved_on(path, table)
    return int(result.get("num_deleted_rows", 0))


def sql_strings(values: Iterable[str]) -> str:
    """Values as a SQL list of string literals (quotes doubled)."""
    return ", ".join("'" + value.replace("'", "''") + "'" for value in sorted(values))


def compact(home: Path | DaemonHome, table: str, properties: WriterProperties) -> int:
    """Bin the small files of each partition that holds many into bigger ones, and sort the
    latest `SORTS_PER_PASS` unsorted past days' partitions by run id (`unsorted_past_days`);
    the files removed (none: nothing left to do). Each partition on its own: one that fails (a
    damaged data file in it) leaves the others compacted, and its error is raised after them."""
    path = own_table(home, table)
    if not has_log(path):
        return 0
    try:
        delta = DeltaTable(str(path))
        crowded, unsorted = crowded_partitions(delta), unsorted_past_days(delta, _today())[-SORTS_PER_PASS:]
    except DAMAGE as error:
        if (damage := damage_of_table(home, table)) is not None:
            raise DamagedTable(table, damage) from None
        raise error from None
    removed, failed = 0, None
    for date in sorted({*crowded, *unsorted}):

        def optimize(date: str = date) -> dict[str, Any]:
            optimizer, where = DeltaTable(str(path)).optimize, [(PARTITION_COLUMN, "=", date)]
            if date in unsorted:
                return optimizer.z_order(
                    [SORT_COLUMN],
                    partition_filters=where,
                    target_size=COMPACT_TARGET_BYTES,
                    max_spill_size=SORT_MEMORY_BYTES,
                    writer_properties=properties,
                )
            return optimizer.compact(
                partition_filters=where, target_size=COMPACT_TARGET_BYTES, writer_properties=properties
            )

        try:
            rewritten = int(retried(optimize, f"compact the {table} table", strays_of(home, table))["numFilesRemoved"])
            if rewritten:  # a commit was made
                _cache.check_moved_on(path, table)
            removed += rewritten
        except DAMAGE as error:
            failed = failed or error
    if failed is not None:
        raise failed
    return removed


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def unsorted_past_days(delta: DeltaTable, today: str) -> list[str]:
    """The partitions of days before `today` whose row groups' run id ranges overlap: written
    in commit order (or binned by a compaction), not yet sorted. Today's partition still
    grows: sorting it would rewrite it at every pass."""
    by_date: dict[str, list[str]] = {}
    for uri in delta.file_uris():
        found = _PARTITION_IN_PATH.search(uri)
        if found and found.group(1) < today:
            by_date.setdefault(found.group(1), []).append(uri)
    return sorted(date for date, uris in by_date.items() if not _sorted_by_run(tuple(sorted(uris))))


@functools.lru_cache(maxsize=4096)  # data files are never rewritten: a partition's files, judged once
def _sorted_by_run(uris: tuple[str, ...]) -> bool:
    """Whether the files' row groups hold disjoint run id ranges (of their `SORT_KEY_CHARS`),
    each group at most `ROW_GROUP_ROWS` rows (or one key's), from their footers. A file that
    cannot be read, or has no such statistics, is left as it is (sorting would not help)."""
    groups: list[tuple[str, str, int]] = []
    for uri in uris:
        found = _row_groups(uri)
        if found is None:
            return True
        groups += [(low[:SORT_KEY_CHARS], high[:SORT_KEY_CHARS], rows) for low, high, rows in found]
    groups.sort()
    small = all(rows <= ROW_GROUP_ROWS or low == high for low, high, rows in groups)
    return small and all(high <= low for (_, high, _), (low, _, _) in itertools.pairwise(groups))


def _row_groups(uri: str) -> tuple[tuple[str, str, int], ...] | None:
    """Each row group's lowest and highest run id and its row count (None: unknown)."""
    try:
        metadata = pq.ParquetFile(uri).metadata
    except (OSError, ValueError, pa.ArrowException):
        return None
    leaves = [metadata.schema.column(index).path for index in range(metadata.num_columns)]
    if SORT_COLUMN not in leaves:
        return None
    column = leaves.index(SORT_COLUMN)
    groups = []
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        stats = group.column(column).statistics
        if stats is None or not stats.has_min_max:
            return None
        groups.append((str(stats.min), str(stats.max), group.num_rows))
    return tuple(groups)


def crowded_partitions(delta: DeltaTable) -> list[str]:
    """The partitions holding at least `MIN_SMALL_FILES` small files."""
    actions = pa.table(delta.get_add_actions(flatten=True))
    small = actions.filter(pa.compute.less(actions["size_bytes"], SMALL_FILE_BYTES))
    counts = small.group_by(f"partition.{PARTITION_COLUMN}").aggregate([("size_bytes", "count")]).to_pylist()
    return sorted(row[f"partition.{PARTITION_COLUMN}"] for row in counts if row["size_bytes_count"] >= MIN_SMALL_FILES)


def vacuum(home: Path | DaemonHome, table: str) -> int:
    """Delete the files no snapshot of the last `VACUUM_RETENTION_HOURS` uses; how many."""
    path = table_path(home, table)
    if not has_log(path):
        return 0
    delta = DeltaTable(str(path))
    deleted = delta.vacuum(VACUUM_RETENTION_HOURS, dry_run=False, enforce_retention_duration=False)
    return len(deleted)


# -- reading ----------------------------------------------------------------------------------
@dataclass
class _Opened:
    table: DeltaTable
    log_inode: int  # a table replaced whole (a rebuild, a table set aside) has a new log folder
    log_mtime_ns: int  # the log folder's modification time when the table was last brought up to date
    checked_ns: int  # the wall clock just before it was
    listed: tuple[int, dict[str, list[str]]] | None = None  # (version, its files by partition date)

    def files_by_date(self) -> dict[str, list[str]]:
        """The snapshot's data files by partition date, listed once a version: the listing with
        a partition predicate walks every file of the log each time."""
        version = self.table.version()
        if self.listed is None or self.listed[0] != version:
            by_date: dict[str, list[str]] = {}
            for uri in self.table.file_uris():
                found = _PARTITION_IN_PATH.search(uri)
                by_date.setdefault(found.group(1) if found else "", []).append(uri)
            self.listed = (version, {date: sorted(uris) for date, uris in by_date.items()})
        return self.listed[1]


_PARTITION_IN_PATH = re.compile(rf"/{PARTITION_COLUMN}=([^/]*)/")


# A commit, a checkpoint or a log cleanup adds or removes a file in `_delta_log`, which sets the
# folder's modification time; a file system stamps it in ticks (coarse on some), so an unchanged
# time proves nothing new only once it is older than any tick by the time the table was checked.
SETTLED_NS = 2_000_000_000


class _Cache:
    """One DeltaTable per table folder per process, brought up to date before each listing
    (reading only the commits since). An unchanged log folder is not listed again (its
    modification time, settled before the last check, says no file came or went since). A
    table replaced whole (a rebuild, a table set aside) has a new log folder: it is read anew."""

    def __init__(self) -> None:
        self._tables: dict[str, _Opened] = {}  # by the table's folder
        self._versions: dict[tuple[str, int], int] = {}  # (folder, log inode) -> the newest version seen after a commit
        self._lock = threading.Lock()  # a DeltaTable is not shared between threads at once

    def files(self, folder: Path, table: str, dates: Sequence[str] | None) -> list[str]:
        if dates is not None and not dates:
            return []
        key = str(folder)
        with self._lock:
            try:
                by_date = self._fresh(folder).files_by_date()
            except DAMAGE as error:
                self._tables.pop(key, None)
                raise DamagedTable(table, first_line(error)) from None
        wanted = sorted(by_date) if dates is None else sorted(set(dates))
        return sorted(uri for date in wanted for uri in by_date.get(date, ()))

    def value_ranges(self, folder: Path, column: str) -> dict[str, tuple[Any, Any]]:
        """Per data file of the snapshot (its path, as `files` gives it): the lowest and highest
        value of `column` its log entry's statistics record; a file without them is left out."""
        with self._lock:
            actions = pa.table(self._fresh(folder).table.get_add_actions(flatten=True))
        names = ("path", f"min.{column}", f"max.{column}")
        if not all(name in actions.column_names for name in names):
            return {}
        paths, lows, highs = (actions[name].to_pylist() for name in names)
        return {
            str(folder / unquote(path)): (low, high)
            for path, low, high in zip(paths, lows, highs, strict=True)
            if low is not None and high is not None
        }

    def _fresh(self, folder: Path) -> _Opened:
        key, log, checked_ns = str(folder), (folder / "_delta_log").stat(), time.time_ns()
        cached = self._tables.get(key)
        if cached is not None and cached.log_inode == log.st_ino:
            if log.st_mtime_ns == cached.log_mtime_ns and cached.checked_ns - cached.log_mtime_ns > SETTLED_NS:
                return cached
            try:
                cached.table.update_incremental()
                cached.log_mtime_ns, cached.checked_ns = log.st_mtime_ns, checked_ns
                return cached
            except DeltaError:  # far behind: the log entries it needs were cleaned up; read it anew
                pass
        opened = _Opened(DeltaTable(key), log.st_ino, log.st_mtime_ns, checked_ns)
        self._tables[key] = opened
        return opened

    def forget(self, folder: Path) -> None:
        with self._lock:
            self._tables.pop(str(folder), None)

    def check_moved_on(self, folder: Path, table: str) -> None:
        """After a commit of this process: the table's version is past every version this
        process saw it at, or a commit it saw is gone (the newest commit file deleted by hand:
        the next commit takes its version, and its rows are lost): DamagedTable, and the daemon
        rebuilds the table from the event log. A table replaced whole (a new log folder) starts
        afresh."""
        with self._lock:
            opened = self._fresh(folder)
            version, key = opened.table.version(), (str(folder), opened.log_inode)
            seen = self._versions.get(key, -1)
            self._versions[key] = max(version, seen)
        if version <= seen:
            raise DamagedTable(
                table,
                f"its Delta log is back at version {version} after this daemon saw version {seen}: a commit of its "
                "rows is gone (a commit file deleted?)",
            )


_cache = _Cache()


def snapshot_files(home: Path | DaemonHome, table: str, dates: Sequence[str] | None = None) -> list[str]:
    """The Parquet files of the table's current snapshot, sorted (of `dates`' partitions only,
    if given); none for a table not written yet. DamagedTable if its log cannot be read
    (ForeignTable: the table's folder is a link to another home's table)."""
    folder = own_table(home, table)
    if not has_log(folder):
        if old_layout(folder):
            raise OldLayout(table)
        return []
    return _cache.files(folder, table, dates)


def logged_ranges(home: Path | DaemonHome, table: str, column: str) -> dict[str, tuple[Any, Any]]:
    """Per data file of the table's snapshot: the lowest and highest value of `column` in it, as
    its Delta log's statistics record them (written with the file: read without opening it, so
    also for a file damaged since). A file whose log entry has no such statistics is absent.
    DamagedTable if the log cannot be read."""
    folder = own_table(home, table)
    if not has_log(folder):
        return {}
    try:
        return _cache.value_ranges(folder, column)
    except DAMAGE as error:
        raise DamagedTable(table, first_line(error)) from None


def snapshot_sizes(home: Path | DaemonHome, table: str) -> list[tuple[Path, int]]:
    """Each data file of the table's current snapshot with the size its log gives it; none for
    a table not written yet. DamagedTable if its log cannot be read."""
    folder = own_table(home, table)
    if not has_log(folder):
        return []
    try:
        actions = pa.table(DeltaTable(str(folder)).get_add_actions(flatten=True)).select(["path", "size_bytes"])
    except DAMAGE as error:
        raise DamagedTable(table, first_line(error)) from None
    paths, sizes = actions["path"].to_pylist(), actions["size_bytes"].to_pylist()
    return [(folder / unquote(path), size) for path, size in zip(paths, sizes, strict=True)]


def damage_of_table(home: Path | DaemonHome, table: str) -> str | None:
    """Why the table's log cannot be read, or None (a table not written yet reads)."""
    folder = table_path(home, table)
    if (target := foreign_target(folder)) is not None:
        return f"{folder} is a link to {target}, outside this home"
    if old_layout(folder):
        return "written by an earlier version of stagewatch, without a Delta log"
    if not has_log(folder):
        return None
    try:
        DeltaTable(str(folder)).file_uris()
    except DAMAGE as error:
        return first_line(error)
    return None


# -- setting aside ------------------------------------------------------------------------------
# What delta-rs writes in a table's `_delta_log/`: commits, checkpoints, checksums, the
# checkpoint hint. An entry of such a name that is not a file (a folder made by hand, say) is
# never read as the log (delta-rs lists files), but stands where delta-rs writes: a commit of
# that version never goes in (it reads as a conflict), and neither does a checkpoint.
LOG_ENTRY = re.compile(r"\d{20}\..+|_last_checkpoint|_last_vacuum_info")
STRAY_MARK = "-_delta_log-"  # in the name of a stray entry set aside (doctor tells them from tables)


def stray_log_entries(home: Path | DaemonHome, table: str) -> list[Path]:
    """Entries of the table's log named as delta-rs names its files that are no file."""
    log = table_path(home, table) / "_delta_log"
    try:
        entries = list(log.iterdir())
    except OSError:  # no log (yet), or no folder
        return []
    return sorted(entry for entry in entries if LOG_ENTRY.fullmatch(entry.name) and not entry.is_file())


def set_aside_strays(home: Path | DaemonHome, table: str) -> list[Path]:
    """Move the table's stray log entries (`stray_log_entries`) to quarantine/tables/, saying
    so in the daemon's log (once: each is moved once); the table keeps every row."""
    layout = DaemonHome.of(home)
    moved = []
    for entry in stray_log_entries(layout, table):
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        target = layout.quarantined_tables / f"{table}{STRAY_MARK}{entry.name}-{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(entry, target)
        except OSError as error:  # gone meanwhile (another process moved it), or cannot be moved
            logger.warning("the {} table: cannot move the stray {} out of its log ({})", table, entry, error)
            continue
        logger.warning(
            "the {} table: {} in its Delta log is no file of the log (made by hand?) and stood in the way of its "
            "commits; moved to {} (the table keeps every row)",
            table,
            entry,
            target,
        )
        moved.append(target)
    return moved


def strays_of(home: Path | DaemonHome, table: str) -> Callable[[], object]:
    return lambda: set_aside_strays(home, table)


def set_aside(home: Path | DaemonHome, table: str, why: str) -> Path:
    """Move a table that cannot be used (damaged, or of the old layout) out of the way, to
    quarantine/tables/ (kept, for a look); the caller rebuilds it from the event log. A link in
    the table's place is moved itself (never what it points to), into a folder of that name."""
    layout = DaemonHome.of(home)
    folder = table_path(layout, table)
    target = layout.quarantined_tables / f"{table}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if folder.is_symlink():  # why.txt beside it: written into the link, it went to its target
            target.mkdir()
            os.replace(folder, target / table)
        else:
            os.replace(folder, target)
    except FileNotFoundError:  # deleted whole: what is set aside is the note of why (doctor names it)
        target.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        (target / "why.txt").write_text(f"the {table} table {why}; rebuilt from the event log\n")
    _cache.forget(folder)
    logger.warning("the {} table {}: moved to {}; it is rebuilt from the event log", table, why, target)
    return target


def unusable_tables(home: Path | DaemonHome, tables: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(table, why) for each table that is a link outside the home, of the old layout or with a
    damaged log."""
    for table in tables:
        folder = table_path(home, table)
        if (target := foreign_target(folder)) is not None:
            yield table, foreign_why(folder, target)
        elif old_layout(folder):
            yield table, "was written by an earlier version of stagewatch (plain Parquet parts)"
        elif (damage := damage_of_table(home, table)) is not None:
            yield table, f"has a damaged Delta log ({damage})"


def remove(home: Path | DaemonHome, table: str) -> None:
    folder = table_path(home, table)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)
    _cache.forget(folder)
