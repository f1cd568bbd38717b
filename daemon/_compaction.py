"""Compaction: an aged date partition's many small Parquet parts become one.

The daemon flushes a part every second, so a busy day leaves tens of thousands of small
files, which makes every query open them all. Once a partition is `min_age_days` old the
daemon (the only writer, in its own loop, so no part can arrive meanwhile) rewrites it as
one file through a folder swap. The file is sorted by run id (then lsn) in row groups of
8,192 rows, so a query by run id reads the one row group whose run-id range holds it
(Parquet min/max statistics) instead of the whole day:

    .date=D.new/  written and fsync'd      (hidden: readers skip names starting with '.')
    date=D/       -> .date=D.old/          (rows briefly absent, never doubled)
    .date=D.new/  -> date=D/
    .date=D.old/  deleted

`finish_interrupted` completes a swap that a crash cut short.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stagewatch.daemon._store import DAEMON_TABLES, PART_PREFIX, TABLES

ROW_GROUP_ROWS = 8192


def compact(metrics: Path, now: datetime, min_age_days: int = 2) -> int:
    """Compact every partition older than `min_age_days` holding more than one part."""
    finish_interrupted(metrics)
    cutoff = (now - timedelta(days=min_age_days)).strftime("%Y-%m-%d")
    compacted = 0
    # Only the daemon's own tables: `samples` is written by the accuracy worker, another
    # process, whose new part could land in a partition in the middle of a swap.
    for table in DAEMON_TABLES:
        for partition in sorted((metrics / table).glob("date=*")):
            parts = sorted(partition.glob(f"{PART_PREFIX}*.parquet"))
            if partition.name[len("date=") :] < cutoff and len(parts) > 1:
                _swap_in(partition, _merged(parts, TABLES[table]))
                compacted += 1
    return compacted


def _merged(parts: list[Path], schema: pa.Schema) -> tuple[pa.Table, str]:
    table = pa.concat_tables([pq.read_table(part, schema=schema) for part in parts])
    table = table.sort_by([("run_id", "ascending"), ("lsn", "ascending")])
    return table, parts[0].name  # the lowest lsn names the merged part, as for any part


def _swap_in(partition: Path, merged: tuple[pa.Table, str]) -> None:
    table, name = merged
    new, old = partition.with_name(f".{partition.name}.new"), partition.with_name(f".{partition.name}.old")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    # Level 3: about 6% smaller than the default level 1 on these tables, and compaction runs
    # once per partition, off the ingest path.
    pq.write_table(table, new / name, compression="zstd", compression_level=3, row_group_size=ROW_GROUP_ROWS)
    with open(new / name, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partition, old)
    os.replace(new, partition)
    shutil.rmtree(old)


def finish_interrupted(metrics: Path) -> None:
    for table in TABLES:
        for new in (metrics / table).glob(".date=*.new"):
            partition = new.with_name(new.name[1 : -len(".new")])
            if partition.exists():  # the swap had not started: the old partition is intact
                shutil.rmtree(new)
            else:
                os.replace(new, partition)
        for old in (metrics / table).glob(".date=*.old"):
            shutil.rmtree(old)


def utc_now() -> datetime:
    return datetime.now(UTC)
