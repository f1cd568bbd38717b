"""How the tables' data files are encoded: zstd, dictionaries only for the columns of few
values; rows go to their day's partition."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stagewatch.daemon.projection._stages import STAGE_ROW_FIELDS
from stagewatch.daemon.tables._store import DICTIONARY_COLUMNS, Store
from stagewatch.daemon.tables._tables import snapshot_files

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from parquet_parts import rows_of


def _dictionary_encoded(path: Path) -> dict[str, bool]:
    """Column name -> whether its chunk in the first row group has dictionary pages."""
    group = pq.ParquetFile(path).metadata.row_group(0)
    columns = (group.column(i) for i in range(group.num_columns))
    return {c.path_in_schema: c.dictionary_page_offset is not None for c in columns}


def test_a_new_part_dictionary_encodes_only_the_columns_of_few_values(home: Path) -> None:
    rows = rows_of(2_000)
    columns = [rows[name].cast(pa.int64()) if name.endswith("_time") else rows[name] for name in STAGE_ROW_FIELDS]
    Store(home).write_rows(
        "stage_executions", list(zip(*(c.to_pylist() for c in columns), strict=True)), STAGE_ROW_FIELDS
    )
    (part,) = snapshot_files(home, "stage_executions")
    encoded = _dictionary_encoded(Path(part))
    assert pq.ParquetFile(part).metadata.row_group(0).column(0).compression == "ZSTD"
    assert encoded["stage"] and encoded["run_id"] and encoded["status"]
    assert not encoded["sample_id"] and not encoded["input_path"] and not encoded["duration_ms"]
    assert {name for name, yes in encoded.items() if yes} <= DICTIONARY_COLUMNS


def test_a_flush_across_midnight_splits_by_day_and_an_unplaceable_row_costs_only_itself(home: Path) -> None:
    """Tuple rows go to their start's date (their end's when the start is missing), in order;
    a time no date holds sends the rows the slow way, which refuses just that row."""
    midnight = int(datetime(2026, 9, 21, tzinfo=UTC).timestamp()) * 10**9
    template = dict.fromkeys(STAGE_ROW_FIELDS)
    template.update(run_id="r", stage="s", status="ok", client_id="c", output_paths=[])

    def row(lsn: int, start: int | None, end: int | None) -> tuple:
        values = {**template, "span": lsn, "lsn": lsn, "start_time": start, "end_time": end}
        return tuple(values[name] for name in STAGE_ROW_FIELDS)

    rows = [row(1, midnight - 5, midnight), row(2, midnight + 5, midnight + 9), row(3, None, midnight - 1)]
    parts, refused = Store(home).arrow_parts("stage_executions", rows, STAGE_ROW_FIELDS)
    assert refused == []
    assert [(date, table["lsn"].to_pylist()) for date, table in parts] == [("2026-09-20", [1, 3]), ("2026-09-21", [2])]
    ((date, table),) = Store(home).arrow_parts("stage_executions", rows[1:2], STAGE_ROW_FIELDS)[0]
    assert date == "2026-09-21" and table["lsn"].to_pylist() == [2]

    parts, refused = Store(home).arrow_parts("stage_executions", [*rows, row(4, 2**70, None)], STAGE_ROW_FIELDS)
    assert [lsn for part in parts for lsn in part[1]["lsn"].to_pylist()] == [1, 3, 2]
    assert [bad["lsn"] for bad, _ in refused] == [4]
