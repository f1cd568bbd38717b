"""The rows that match filters, as JSON: a page of each list for `stagewatch query` (LIMIT and
count(*) in SQL), and every row for what `stagewatch export` writes and the dashboard's download
sends (one function, so both give the same bytes for the same filters)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from stagewatch.daemon.projection._outcomes import RUN_ONLY, label
from stagewatch.daemon.query._hosts import with_hosts
from stagewatch.daemon.query._query import (
    Filters,
    Where,
    in_runs,
    log_where,
    page_of,
    rows_of,
    run_ids,
    run_where,
    stage_where,
)
from stagewatch.daemon.query._readmodels import to_rows
from stagewatch.daemon.query._sql import MAX_ROWS, empty_table, schema_of, select
from stagewatch.daemon.tables._tables import PARTITION_COLUMN

FORMATS = ("json", "jsonl")
TABLES = ("runs", "stages", "logs")
TABLE_OF = {"runs": "runs", "stages": "stage_executions", "logs": "logs"}  # each list's table
# Each list's order: a log line's time (the log's order where times tie: several clients' lines
# reach the event log interleaved by delivery, not by when they were logged); else the log's.
ORDER_OF = {"runs": "lsn", "stages": "lsn", "logs": "time, lsn"}
ERROR_LINES = "ERROR"  # the lowest level of the lines a stage execution's status brings with it
EXECUTION_OF_LINE = ("run_id", "stage", "sample_id")  # what a log line shares with the execution it was logged in
EXPORT_BATCH_ROWS = 10_000  # rows an export makes into Python and JSON at a time


def matching_wheres(home: Path, filters: Filters, tables: tuple[str, ...] = TABLES) -> dict[str, Where | None]:
    """Per list of `tables` (runs, stages, logs), the WHERE of its table's rows that match
    `filters` (None: no row of it can); what each holds: `holds(filters)`. A filter only log lines
    have (a level, a logger) matches log lines alone: runs and stage executions have no level, so
    none of them is "of level WARNING". A status matches runs or stage executions; the log lines
    are then theirs (`_lines_where`), at the level and of the logger asked for, if any (the runs
    and executions themselves are left out then). Only the lists of `tables` are worked out (the
    Logs page downloads its log lines, `export --table logs` the same)."""
    unknown = [name for name in tables if name not in TABLES]
    if unknown:
        raise ValueError(f"expected tables of {', '.join(TABLES)}, got {', '.join(map(repr, unknown))}")
    rest = replace(filters, status=None)
    wheres: dict[str, Callable[[], Where | None]]
    if filters.status in RUN_ONLY:  # a status no stage execution has: the runs of it, and their rows
        ids = functools.cache(lambda: run_ids(home, "runs", run_where(home, filters)))
        wheres = {
            "runs": lambda: run_where(home, filters),
            "stages": lambda: in_runs(stage_where(home, rest), ids()),
            "logs": lambda: in_runs(log_where(home, rest), ids()),
        }
    elif filters.stage or filters.status:  # runs that had such a stage execution, not runs of that status alone
        wheres = {
            "runs": lambda: in_runs(
                run_where(home, rest), run_ids(home, "stage_executions", stage_where(home, filters))
            ),
            "stages": lambda: stage_where(home, filters),
            "logs": lambda: _lines_where(home, filters),
        }
    else:
        wheres = {
            "runs": lambda: run_where(home, filters),
            "stages": lambda: stage_where(home, filters),
            "logs": lambda: log_where(home, filters),
        }
    if filters.level or filters.logger:  # no run or stage execution has a level: their lines alone
        wheres |= {"runs": lambda: None, "stages": lambda: None}
    return {name: wheres[name]() for name in tables}


def _lines_where(home: Path, filters: Filters) -> Where:
    """The log lines that go with what a stage execution's status matched: those logged in those
    executions (the same run, stage and sample: a line carries no span) at ERROR or above, as a
    user asking for failed executions wants why they failed, not every line of their runs.
    Without a status, the lines the other filters match."""
    if not filters.status:
        return log_where(home, filters)
    lines = log_where(home, replace(filters, status=None, level=filters.level or ERROR_LINES))
    executions = stage_where(home, filters)
    sql = f"SELECT DISTINCT {', '.join(EXECUTION_OF_LINE)} FROM rows{executions.sql}"
    keys = select(home, "stage_executions", sql, executions.params, None, executions.dates)
    return lines.add(
        "EXISTS (SELECT 1 FROM (SELECT unnest(?::VARCHAR[]) AS r, unnest(?::VARCHAR[]) AS s, unnest(?::VARCHAR[]) AS m)"
        " WHERE r = run_id AND s = stage AND m IS NOT DISTINCT FROM sample_id)",
        *(keys[name].to_pylist() for name in EXECUTION_OF_LINE),
    )


def matching_tables(home: Path, filters: Filters, tables: tuple[str, ...] = TABLES) -> dict[str, pa.Table]:
    """The rows of each list (`matching_wheres`) as Arrow tables, in their order (`ORDER_OF`),
    without the date partition. Read over several homes, stage executions and log lines name
    their run's host too (`_hosts.with_hosts`)."""
    found = {}
    for name, where in matching_wheres(home, filters, tables).items():
        columns = _columns(name)
        if where is None:
            schema = schema_of(TABLE_OF[name])
            found[name] = empty_table(pa.schema([schema.field(column) for column in columns]))
        else:
            found[name] = with_hosts(home, rows_of(home, TABLE_OF[name], where, columns, ORDER_OF[name]))
    return found


def matching(home: Path, filters: Filters, tables: tuple[str, ...] = TABLES) -> dict[str, list[dict[str, Any]]]:
    """`matching_tables` as JSON-ready dicts: every matching row in Python (a page of them:
    `page`; a file of them: `export_chunks`)."""
    return {name: _rows(table) for name, table in matching_tables(home, filters, tables).items()}


def page(home: Path, name: str, where: Where | None, limit: int, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Rows offset..offset+limit of a list (`matching_wheres`) as JSON-ready dicts, and how many
    it holds in all: LIMIT, OFFSET and count(*) in SQL, so only the rows asked for are read."""
    if where is None:
        return [], 0
    limit = min(limit, MAX_ROWS - 1)  # a limit past every table: all the rows
    rows, total = page_of(home, TABLE_OF[name], where, _columns(name), ORDER_OF[name], offset, limit)
    return _rows(with_hosts(home, rows)), total


def count(home: Path, name: str, where: Where | None) -> int:
    """How many rows a list (`matching_wheres`) holds: count(*) in SQL."""
    if where is None:
        return 0
    sql = f"SELECT count(*) AS n FROM rows{where.sql}"
    return select(home, TABLE_OF[name], sql, where.params, None, where.dates)["n"][0].as_py()


def _columns(name: str) -> list[str]:
    """The list's columns: its table's, without the date partition (`PARTITION_COLUMN`)."""
    return [column for column in schema_of(TABLE_OF[name]).names if column != PARTITION_COLUMN]


def holds(filters: Filters) -> dict[str, str]:
    """What each list `matching(filters)` returns holds, in words (`query` says it in its text and
    its JSON: a status filters runs or stage executions, and the log lines follow them)."""
    level = f" at {filters.level.upper()} or above" if filters.level else ""
    level += f" from logger {filters.logger}" if filters.logger else ""
    if filters.status in RUN_ONLY:
        held = {"runs": matched_by(filters.status), "stages": "their stage executions"}
        held["logs"] = f"their log lines{level}"
    elif filters.status:
        held = {
            "runs": f"runs with a stage execution that ended {filters.status}",
            "stages": matched_by(filters.status),
            "logs": f"log lines{level or f' at {ERROR_LINES} or above'} logged in those stage executions",
        }
    else:
        held = {"runs": "runs", "stages": "stage executions", "logs": f"log lines{level}"}
    if filters.level or filters.logger:
        none = "none: a log level or logger filters log lines alone"
        held |= {"runs": none, "stages": none}
    return held


def matched_by(status: str) -> str:
    """What a status matches, in words: 'stage executions that ended failed', 'runs still running'."""
    if status in RUN_ONLY:
        return "runs still running" if status == "running" else f"runs that ended {label(status)}"
    return f"stage executions that ended {status}"


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return [_jsonable(row) for row in to_rows(table)]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if hasattr(value, "isoformat") else value for key, value in row.items()}


def export_chunks(tables: dict[str, pa.Table], form: str) -> Iterator[str]:
    """The export of `matching_tables` as text pieces: one JSON object of tables (the bytes of
    `json.dumps` of `matching`), or JSON Lines tagged with their table. Rows are made into Python
    and JSON a batch at a time (`EXPORT_BATCH_ROWS`): a piece is written before the next is made."""
    if form not in FORMATS:
        raise ValueError(f"expected an export format of {', '.join(FORMATS)}, got {form!r}")
    if form == "jsonl":
        for name, table in tables.items():
            for rows in _batches(table):
                yield "".join(json.dumps({"table": name, "row": row}, default=str) + "\n" for row in rows)
        return
    yield "{"
    for index, (name, table) in enumerate(tables.items()):
        yield f"{', ' if index else ''}{json.dumps(name)}: ["
        separator = ""
        for rows in _batches(table):
            yield separator + ", ".join(json.dumps(row, default=str) for row in rows)
            separator = ", "
        yield "]"
    yield "}"


def _batches(table: pa.Table) -> Iterator[list[dict[str, Any]]]:
    """The table's rows as JSON-ready dicts, `EXPORT_BATCH_ROWS` at a time (no empty batch)."""
    for batch in table.to_batches(max_chunksize=EXPORT_BATCH_ROWS):
        if batch.num_rows:
            yield _rows(pa.Table.from_batches([batch]))
