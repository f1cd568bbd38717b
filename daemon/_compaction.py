"""Compaction: a partition's many small Parquet parts become few, then (where they fit one merge) one.

The daemon flushes a part every second, so a busy day leaves tens of thousands of small
files, and every query would open them all. Two passes keep that bounded:

- **Tiers, for every partition (today's too).** A part's tier is the order of magnitude
  of its size in base `FAN_IN` (4): whenever `FAN_IN` parts of one tier are present they
  are merged into one part of a higher tier. A day of one part a second then stays at a
  few dozen parts at most (fewer than four per tier in use), and each row is rewritten once
  per tier (about eight times a day). Why 4, not 16: a query of today opens every part, and
  after a busy hour that is 18 parts instead of 45 (benchmarks/history.py --busy-hour), for
  about twice the rewriting. A part of `FULL_PART_ROWS` rows (or `FULL_PART_BYTES`) is full
  and merged no further: a merge holds its group's rows in memory.
- **Aged partitions.** Once a partition is `min_age_days` old, all its parts become one, if
  they hold fewer rows than `FAN_IN` full parts; a bigger day keeps its capped parts, each
  sorted into the aged layout alone, once (marked in its footer: `LAYOUT_KEY`).

Merged rows are sorted by run id (then lsn) in row groups of 8,192 rows, so that a query by
run id reads the one row group whose run-id range holds it (Parquet min/max statistics). An
aged partition is sorted by status (level for logs) first, each status in row groups of its
own: a query for failures then reads only their row groups (`--stage detection --status
failed --since 7d` at a million runs: 370 -> 24 ms, for 0.7% more bytes), and one by run id
a row group per status. Not so for today's tier merges: a busy hour's parts came out more
(21, not 18) and its query by run id slower (64 ms, not 46 to 55), for a filter over one day.

Readers never see a row twice or a partition missing. A merge is prepared beside the
partition and then exchanged with it in one atomic rename (renameat2 RENAME_EXCHANGE):

    .date=D.new/   the merged parts (fsync'd), then hard links to the parts that stay
    date=D/  <->  .date=D.new/        (one atomic exchange; readers skip names with '.')
    .date=D.new/   (now the old folder) deleted

A merged part takes a name no part had before (`part-{first lsn}-{last lsn}.parquet`; but a
merged part sorted alone into the aged layout keeps its name, with the same rows), so a
reader that listed the old folder finds its files or gets FileNotFoundError (read_table then
lists again), never new rows under an old name. Where the file system cannot exchange, the
old folder is moved aside first (rows briefly absent, never doubled). `finish_interrupted`
completes a swap that a crash cut short. Only the daemon's own tables are compacted, on a
thread of their own started behind a checkpoint and over the parts that checkpoint covers,
so no merged part holds rows that recovery would replay. The daemon's disk thread writes new
parts meanwhile: they are not in the plan, and are linked into the prepared folder with the
rest just before the exchange, under the lock that each part's write takes (`exchange_lock`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from loguru import logger

from stagewatch._home import Home, partition_date
from stagewatch.daemon._sql import damage_of
from stagewatch.daemon._store import DAEMON_TABLES, PART_PREFIX, TABLES, first_lsn, parquet_options

ROW_GROUP_ROWS = 8192
FAN_IN = 4
MIN_AGE_DAYS = 2
GROUPS_PER_SWAP = 64  # a backlog (a home from before tiers) is merged in steps, not in one long swap
# The parts one swap merges at most (but one group): a swap is one step of the disk thread,
# which the row writes queued behind it may wait for. Under a flood on this machine a swap of
# one group of four parts of 2,500 rows (about 400 KB) took 0.17-0.46 s, of three 0.36-0.67 s:
# most of it the thread waiting for a core, and part of it per swap (a link per part).
SWAP_BYTES = 1 << 20
# A merge holds its group's rows in memory (about 500 bytes a stage_executions row: merging
# 1M rows added 526 MB to the process), so a part this big is full: tier merges leave it as it
# is, and an aged partition holding more than `fan_in` full parts' worth is not made one part
# (its capped parts stay; stage stats read its rows). Unbounded, a busy day's highest tiers
# and its compaction into one part held the whole day in memory: gigabytes, on a day of
# 13M stages (150 events/s), and the compaction held the loop for as long.
FULL_PART_ROWS = 1 << 17  # a group of FAN_IN smaller parts: < 512k rows, about 260 MB at most
FULL_PART_BYTES = 32 << 20
# Marks a part written in the aged layout (by status first) in its Parquet footer, so that an
# aged day too big to be one part has each part sorted once, not again at every pass.
LAYOUT_KEY, BY_STATUS = b"stagewatch.layout", b"by-status"
Plan = dict[Path, list[list[Path]]]  # partition -> groups of parts, each merged into one part


def aged_cutoff(now: datetime, min_age_days: int = MIN_AGE_DAYS) -> str:
    """Partitions dated before this are aged: compacted into one part (where they fit one merge)."""
    return (now - timedelta(days=min_age_days)).strftime("%Y-%m-%d")


def compact(
    home: Path | Home, now: datetime, min_age_days: int = MIN_AGE_DAYS, progress: Callable[[], object] = lambda: None
) -> int:
    """Compact the partitions older than `min_age_days` (`aged_plan`); returns the groups merged."""
    return carry_out(home, aged_plan(home, now, min_age_days), progress, by_status=True)


def aged_plan(home: Path | Home, now: datetime, min_age_days: int = MIN_AGE_DAYS, before_lsn: float = math.inf) -> Plan:
    """For each partition older than `min_age_days`, of its parts whose first row is before
    `before_lsn` (those a checkpoint covers): all of them as one group where they hold fewer
    rows (and bytes) than `FAN_IN` full parts (`FULL_PART_ROWS`); in a bigger one, each part
    that is not in the aged layout yet (and fits a merge) alone, to be sorted into it."""
    cutoff = aged_cutoff(now, min_age_days)
    plan = {}
    for partition, listed in _partitions(home):
        if partition_date(partition) >= cutoff:
            continue
        # (part, bytes, rows, in the aged layout); a part merged or removed meanwhile is left out
        parts = [
            (part, stat.st_size, *_footer(part, stat))
            for part in listed
            if first_lsn(part) < before_lsn and (stat := _stat(part)) is not None
        ]
        if _fits_one_merge(sum(p[1] for p in parts), sum(p[2] for p in parts)):
            groups = [[p[0] for p in parts]] if len(parts) > 1 else []
        else:
            groups = [[part] for part, size, rows, aged in parts if _fits_one_merge(size, rows) and not aged]
        if groups:
            plan[partition] = groups
    return plan


def _fits_one_merge(size: int, rows: int) -> bool:
    return rows < FAN_IN * FULL_PART_ROWS and size < FAN_IN * FULL_PART_BYTES


def tier_plan(home: Path | Home, fan_in: int = FAN_IN, before_lsn: float = math.inf) -> Plan:
    """Every partition's groups of `fan_in` parts that share a size tier (oldest first), of
    the parts whose first row is before `before_lsn` (those a checkpoint covers: parts are
    written in log order and a checkpoint's lsn falls between two of them)."""
    plan = {}
    for partition, parts in _partitions(home):
        stats = [(part, _stat(part)) for part in parts if first_lsn(part) < before_lsn]
        # Not planned: a part merged away since the listing (a pass on the merge thread), a full one.
        sizes = [(part, stat.st_size) for part, stat in stats if stat is not None and not _full(part, stat)]
        groups = tier_groups(sizes, fan_in)
        if groups:
            plan[partition] = groups
    return plan


def _full(part: Path, stat: os.stat_result) -> bool:
    return stat.st_size >= FULL_PART_BYTES or _footer(part, stat)[0] >= FULL_PART_ROWS


def _footer(part: Path, stat: os.stat_result) -> tuple[int, bool]:
    """A part's rows, and whether it is in the aged layout (read from its footer once)."""
    return _read_footer(str(part), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16_384)  # a part never changes under a name (retention replaces: a new mtime)
def _read_footer(path: str, size: int, mtime_ns: int) -> tuple[int, bool]:
    try:
        metadata = pq.read_metadata(path)
    except (OSError, pa.ArrowInvalid):  # damaged (a merge sets it aside) or gone: planned as small
        return 0, False
    return metadata.num_rows, (metadata.metadata or {}).get(LAYOUT_KEY) == BY_STATUS


def _stat(part: Path) -> os.stat_result | None:
    try:
        return part.stat()
    except FileNotFoundError:  # merged away meanwhile: the swap finds it missing and says so
        return None


def tier_groups(parts: list[tuple[Path, int]], fan_in: int = FAN_IN) -> list[list[Path]]:
    """Pure: (part, size in bytes) -> groups of `fan_in` parts of the same tier, by lsn."""
    by_tier: dict[int, list[Path]] = defaultdict(list)
    for part, size in sorted(parts, key=lambda entry: first_lsn(entry[0])):
        by_tier[int(math.log(max(size, 1), fan_in))].append(part)
    return [names[i : i + fan_in] for names in by_tier.values() for i in range(0, len(names) - fan_in + 1, fan_in)]


def carry_out(
    home: Path | Home,
    plan: Plan,
    progress: Callable[[], object] = lambda: None,
    deadline: float = math.inf,
    by_status: bool = False,
) -> int:
    """Merge each group of parts into one (`merge_steps`), calling `progress` after each swap.
    Returns how many groups were merged."""
    merged = 0
    for groups in merge_steps(home, plan, deadline, by_status):
        merged += groups
        progress()
    return merged


def merge_steps(
    home: Path | Home,
    plan: Plan,
    deadline: float = math.inf,
    by_status: bool = False,
    exchange_lock: AbstractContextManager[object] | None = None,
) -> Iterator[int]:
    """Merge each group of parts into one, a swap at a time: groups of at most `SWAP_BYTES`
    of parts together (one group at least) and `GROUPS_PER_SWAP`; yields how many groups each
    swap merged, and stops once time.monotonic() passes `deadline` (the rest waits for the
    next pass). `by_status`: the aged layout (row groups of one status each).

    Parts written meanwhile are not in `plan` and are kept as they are. Where they are written
    by another thread, `exchange_lock` is the lock each part's write holds (Store.parts_lock):
    a swap holds it while it links the partition's other parts and exchanges the folders."""
    home = Home.of(home)
    finish_interrupted(home)
    for partition, groups in plan.items():
        schema = TABLES[partition.parent.name]
        for swap in _swaps(groups):
            if time.monotonic() > deadline:
                return
            try:
                _swap_in(partition, swap, schema, by_status, exchange_lock or contextlib.nullcontext())
            except (pa.ArrowInvalid, OSError):  # a damaged part: out of the way; the next pass merges the rest
                if not quarantine_damaged(home, [part for group in swap for part in group]):
                    raise  # not a damaged part (a full disk, say): reported, and the next pass tries again
                continue
            yield len(swap)


def _swaps(groups: list[list[Path]]) -> Iterator[list[list[Path]]]:
    swap: list[list[Path]] = []
    size = 0
    for group in groups:
        swap.append(group)
        size += sum(stat.st_size for stat in map(_stat, group) if stat is not None)
        if size >= SWAP_BYTES or len(swap) == GROUPS_PER_SWAP:
            yield swap
            swap, size = [], 0
    if swap:
        yield swap


def quarantine_damaged(home: Home, parts: list[Path]) -> list[Path]:
    """Move the parts that cannot be read to quarantine/parts/ (kept, for a look), so that
    neither readers nor merges trip on them again; their rows are still in the event log."""
    moved = []
    for part in parts:
        damage = damage_of(part)
        if damage is None:
            continue
        target = home.quarantined_part(part)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
        moved.append(target)
        logger.error(
            "damaged Parquet part {} ({}) moved to {}; its rows are missing from queries until "
            "`stagewatch rebuild` regenerates the tables from the event log",
            part,
            damage,
            target,
        )
    return moved


def _partitions(home: Path | Home) -> list[tuple[Path, list[Path]]]:
    # Only the daemon's own tables: `samples` is written by the accuracy worker, another
    # process, whose new part could land in a partition in the middle of a swap.
    return [
        (partition, sorted(partition.glob(f"{PART_PREFIX}*.parquet")))
        for table in DAEMON_TABLES
        for partition in Home.of(home).partitions(table)
    ]


def _merged(parts: list[Path], schema: pa.Schema, by_status: bool) -> tuple[pa.Table, str]:
    table = pa.concat_tables([_read_part(part, schema) for part in parts])
    first_keys = [(_region_column(schema), "ascending")] if by_status else []
    table = table.sort_by([*first_keys, ("run_id", "ascending"), ("lsn", "ascending")])
    first, last = min(map(first_lsn, parts)), pc.max(table["lsn"]).as_py()
    return table, f"{PART_PREFIX}{first:020d}-{last:020d}.parquet"


def _read_part(part: Path, schema: pa.Schema) -> pa.Table:
    """A part as `schema`. Read as the one file it is: the dataset reader that can also
    fill in the columns an older part lacks costs twice as much (1.55 against 0.75 us a
    row for parts of 2,500 rows), so it is kept for those parts."""
    table = pq.ParquetFile(part).read()
    return table if table.schema.equals(schema) else pq.read_table(part, schema=schema)


def _swap_in(
    partition: Path, groups: list[list[Path]], schema: pa.Schema, by_status: bool, lock: AbstractContextManager[object]
) -> None:
    """Merge each group into a part of the folder prepared beside `partition`, one group's
    table in memory at a time (a pass that held them all added 130-250 MB to the daemon under
    a flood), then, holding `lock`, link the partition's other parts in (those written while
    the groups merged too) and swap the folder in."""
    new = partition.with_name(f".{partition.name}.new")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    replaced = {part.name for group in groups for part in group}
    with _dropped_on_error(new):  # the partition stays as it was
        for group in groups:
            _write_merged(new, *_merged(group, schema, by_status), by_status)
    with lock:
        with _dropped_on_error(new):
            for part in partition.glob(f"{PART_PREFIX}*.parquet"):
                if part.name not in replaced:
                    _link_or_copy(part, new / part.name)
        old = _exchange(new, partition)  # cut short by a crash: `finish_interrupted`
    shutil.rmtree(old)


@contextlib.contextmanager
def _dropped_on_error(folder: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _exchange(new: Path, partition: Path) -> Path:
    """Put the prepared folder in the partition's place; returns where the old parts now are."""
    if exchange_paths(new, partition):  # `new` now holds the old parts
        return new
    old = partition.with_name(f".{partition.name}.old")
    os.replace(partition, old)
    os.replace(new, partition)
    return old


def _write_merged(folder: Path, table: pa.Table, name: str, by_status: bool) -> None:
    # An aged partition is written once more, for good: zstd level 3, about 6% smaller than
    # the default level 1 on these tables. Today's tier merges are rewritten at the next
    # tier anyway: level 1 writes them in half the time (0.42 against 0.84 us a row,
    # 1% bigger), and on two cores merging takes its CPU from ingest.
    level = 3 if by_status else None
    regions = _regions(table[_region_column(table.schema)]) if by_status else [(0, table.num_rows)]
    layout = {key: value for key, value in (table.schema.metadata or {}).items() if key != LAYOUT_KEY}
    table = table.replace_schema_metadata({**layout, LAYOUT_KEY: BY_STATUS} if by_status else layout)
    options = parquet_options(table.schema)
    with pq.ParquetWriter(folder / name, table.schema, **options, compression_level=level) as writer:
        for start, length in regions:
            writer.write_table(table.slice(start, length), row_group_size=ROW_GROUP_ROWS)
    with open(folder / name, "rb") as handle:
        os.fsync(handle.fileno())


def _region_column(schema: pa.Schema) -> str:
    """What the rows are grouped by before the run id: what filters select a few rows by."""
    return "level" if "level" in schema.names else "status"


def _regions(sorted_column: pa.ChunkedArray) -> list[tuple[int, int]]:
    """(offset, length) of each run of equal values in a sorted column."""
    counts = pc.value_counts(sorted_column).field("counts").to_numpy()  # in order of appearance: sorted
    return list(zip((np.cumsum(counts) - counts).tolist(), counts.tolist(), strict=True))


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links, or a part another user wrote (protected_hardlinks)
        shutil.copy2(source, target)


def finish_interrupted(home: Path | Home) -> None:
    """After a crash: a prepared folder whose partition still exists was not swapped in (or,
    after an exchange, holds the old parts); either way the partition is whole: drop it."""
    for table in map(Home.of(home).table, TABLES):
        for new in table.glob(".*.new"):
            partition = new.with_name(new.name[1 : -len(".new")])
            if partition.exists():
                shutil.rmtree(new)
            else:
                os.replace(new, partition)
        for old in table.glob(".*.old"):
            shutil.rmtree(old)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def utc_now() -> datetime:
    return datetime.now(UTC)
