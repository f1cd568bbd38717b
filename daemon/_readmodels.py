"""Reading the read models back: run listings and audit trails, for the CLI and the UI.

Readers tolerate what a crash or a hand edit can leave behind: a missing table, a
half-written or edited audit.json. They report what is missing instead of failing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from stagewatch._home import Home
from stagewatch.daemon._derived import STATUS, peek
from stagewatch.daemon._runindex import runs_with_prefix
from stagewatch.daemon._sql import (
    MAX_ROWS,
    Homes,
    damaged_parts,
    homes_of,
    quoted,
    runs_being_removed,
    schema_of,
    select,
    snapshot_files,
)
from stagewatch.daemon._store import RUNS

READ_ATTEMPTS = 5


class RunNotFound(LookupError):
    pass


def read_table(
    home: Path,
    table: str,
    expression: ds.Expression | None = None,
    dates: list[str] | None = None,
    columns: list[str] | None = None,
    dictionary: tuple[str, ...] = (),
) -> pa.Table:
    """The rows of a metrics table that match `expression` (all if None); an empty table
    with the right schema if there are none. `dates` limits the read to those partitions
    (the run index's answer for one run) without listing the others; `columns` reads only those,
    and string columns named in `dictionary` come as dictionary arrays (no string per row).

    Compaction may swap a partition's files between listing and reading them: the read then
    fails on a vanished file (never sees a row twice) and is tried again on a fresh listing."""
    for _ in range(READ_ATTEMPTS - 1):
        try:
            return _read_once(home, table, expression, dates, columns, dictionary)
        except FileNotFoundError:
            continue
    return _read_once(home, table, expression, dates, columns, dictionary)


def _read_once(
    home: Path,
    table: str,
    expression: ds.Expression | None,
    dates: list[str] | None,
    columns: list[str] | None,
    dictionary: tuple[str, ...],
) -> pa.Table:
    folder = Home.of(home).table(table)
    # Settled before any early return: a table not written yet (a pipeline that never logs
    # has no logs table) answers with the same types as one that holds rows.
    schema = _as_dictionaries(schema_of(table), dictionary)
    files = snapshot_files(home, table, dates)
    if not files:
        return _select(schema.empty_table(), columns)
    file_format = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=set(dictionary)))
    dataset = _files_dataset(files, folder, file_format, schema)
    being_removed = runs_being_removed(home)
    if being_removed:  # a gc was interrupted: its runs are already gone for readers
        hidden = ~ds.field("run_id").isin(being_removed)
        expression = hidden if expression is None else expression & hidden
    try:
        return dataset.to_table(filter=expression, columns=columns)
    except FileNotFoundError:
        raise  # a part swapped away by compaction as we read: the caller lists again
    except (pa.ArrowInvalid, OSError):  # OSError: damage inside a compressed page ("ZSTD decompression failed")
        damaged = damaged_parts(files)
        if not damaged:
            raise
        readable = [path for path in files if path not in damaged]
        return _files_dataset(readable, folder, file_format, schema).to_table(filter=expression, columns=columns)


def _as_dictionaries(schema: pa.Schema, dictionary: tuple[str, ...]) -> pa.Schema:
    return pa.schema([f.with_type(pa.dictionary(pa.int32(), f.type)) if f.name in dictionary else f for f in schema])


def _files_dataset(files: list[str], folder: Path, file_format: ds.FileFormat, schema: pa.Schema) -> ds.Dataset:
    partitioning = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
    return ds.dataset(
        files, format=file_format, partitioning=partitioning, schema=schema, partition_base_dir=str(folder)
    )


def _select(table: pa.Table, columns: list[str] | None) -> pa.Table:
    return table.select(columns) if columns is not None else table


def load_accuracy(home: Path, run_id: str) -> dict[str, Any] | None:
    """The run's accuracy.json (written for runs with a golden dataset), or None."""
    try:
        return json.loads(Home.of(home).accuracy(run_id).read_text())
    except (OSError, ValueError):
        return None


def to_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts; timestamps become datetimes (microseconds: what Python holds)."""
    for index, column in enumerate(table.schema):
        if pa.types.is_timestamp(column.type):
            table = table.set_column(
                index, column.name, table[column.name].cast(pa.timestamp("us", tz=column.type.tz), safe=False)
            )
    return table.to_pylist()


def list_runs(home: Homes, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent runs, finished (from Parquet) and still running (from the daemon), of one
    home or of several (each row names its host)."""
    sql = f"SELECT {quoted(RUNS.names)} FROM rows ORDER BY start_time DESC NULLS LAST, lsn DESC LIMIT ?"
    finished = to_rows(select(home, "runs", sql, [min(limit, MAX_ROWS)], RUNS))  # a larger limit: all of them
    known = {row["run_id"] for row in finished}
    runs = [_run_summary(row) for row in finished]
    active = [run for one in homes_of(home) for run in active_runs(one)]  # each home's daemon's
    runs += [_active_summary(run) for run in active if run["run_id"] not in known]
    runs.sort(key=lambda run: run["started_at"] or "", reverse=True)
    return runs[:limit]


def _run_summary(row: dict[str, Any]) -> dict[str, Any]:
    start = row["start_time"]
    return {
        "run_id": row["run_id"],
        "pipeline": row["pipeline"],
        "started_at": start.isoformat() if start is not None else None,
        "duration_ms": row["duration_ms"],
        "status": row["status"],
        "host": row["host"],
        "stages": row["stages"],
        "stages_failed": row["stages_failed"],
        "failed_stage": row["failed_stage"],
        "error_message": row["error_message"],
    }


def _active_summary(active: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": active["run_id"],
        "pipeline": active["pipeline"],
        "started_at": active["started_at"],
        "duration_ms": None,
        "status": active["status"],
        "host": active.get("host"),
        "stages": None,
        "stages_failed": None,
        "failed_stage": None,
        "error_message": None,
    }


def active_runs(home: Path) -> list[dict[str, Any]]:
    """The runs in progress, as the daemon last wrote them to status.json (none if unreadable)."""
    status = peek(STATUS, Home.of(home)) or {}
    return [run for run in status.get("active_runs", []) if isinstance(run, dict)]


def resolve_run_id(home: Path, prefix: str) -> str:
    """The one run id that starts with `prefix`; RunNotFound if none or several do."""
    prefix = prefix.strip().lower()
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise RunNotFound(f"expected a run id or a unique prefix of one, got {prefix!r}")
    # The run index answers from one small file; listing runs/ (a million entries) is the fallback.
    indexed = runs_with_prefix(home, prefix) or []
    names = [name for name in indexed if Home.of(home).run(name).is_dir()]
    if not names:
        try:
            names = [entry.name for entry in os.scandir(Home.of(home).runs) if entry.name.startswith(prefix)]
        except FileNotFoundError:
            names = []
    names = [name for name in names if name not in runs_being_removed(home)]
    if len(names) == 1:
        return names[0]
    if not names:
        raise RunNotFound(f"no run with id {prefix!r} under {home}; `stagewatch runs` lists recent runs")
    shown = ", ".join(sorted(names)[:5])
    raise RunNotFound(f"run id prefix {prefix!r} is ambiguous ({len(names)} runs: {shown}...); give more characters")


def resolve_run_in(home: Homes, prefix: str) -> str:
    """`resolve_run_id` in one home, or in the one of several homes that holds the run."""
    homes = homes_of(home)
    if len(homes) == 1:
        return resolve_run_id(homes[0], prefix)
    found = set()
    for one in homes:
        try:
            found.add(resolve_run_id(one, prefix))
        except RunNotFound:
            continue
    if len(found) != 1:
        where = f"the {len(homes)} homes"
        raise RunNotFound(f"expected {prefix!r} to name one run in {where}, got {len(found)}: {sorted(found)[:5]}")
    return found.pop()


def holding(home: Homes, run_id: str) -> Path:
    """The home (of one or several) whose runs/ holds `run_id`: where its audit trail and
    accuracy are read (the first home when none does: the reader then says what is missing)."""
    homes = homes_of(home)
    return next((one for one in homes if Home.of(one).run(run_id).is_dir()), homes[0])


def load_audit(home: Path, run_id: str) -> dict[str, Any]:
    """The run's audit trail; `problems` lists what is missing or damaged, if anything.

    If audit.json is missing or damaged, the ended stages still come from stages.jsonl
    (whose damaged lines are skipped and counted).
    """
    path = Home.of(home).audit(run_id)
    try:
        audit = json.loads(path.read_text())
        audit["problems"] = []
    except FileNotFoundError:
        audit = _unreadable(run_id, f"{path} is missing (not written yet, or deleted)")
    except (ValueError, UnicodeDecodeError) as error:
        audit = _unreadable(run_id, f"{path} is damaged ({error})")
    if audit["status"] == "unknown":
        audit["stages"] = _read_stage_lines(Home.of(home).stage_lines(run_id), audit["problems"])
        audit["errors"] = [_error_of(stage) for stage in audit["stages"] if stage.get("error")]
    if not audit.get("complete"):
        audit["problems"].append("the run has not finished (or its end was never recorded)")
    return audit


def _unreadable(run_id: str, problem: str) -> dict[str, Any]:
    return {"run_id": run_id, "status": "unknown", "complete": False, "stages": [], "errors": [], "problems": [problem]}


def _read_stage_lines(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    stages, damaged = [], 0
    for line in lines:
        try:
            stages.append(json.loads(line))
        except ValueError:
            damaged += 1
    problems.append(f"stages recovered from {path}" + (f" ({damaged} damaged lines skipped)" if damaged else ""))
    return stages


def _error_of(stage: dict[str, Any]) -> dict[str, Any]:
    return {
        "stage": stage.get("stage"),
        "span": stage.get("span"),
        "sample_id": stage.get("sample_id"),
        "type": stage["error"].get("type"),
        "message": stage["error"].get("message"),
        "at": stage.get("finished_at"),
        "input_path": stage.get("input_path"),
    }
