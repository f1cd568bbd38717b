"""The rows that match filters, as JSON: what `stagewatch export` writes and the dashboard's
download sends (one function, so both give the same bytes for the same filters)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from stagewatch.daemon.projection._outcomes import RUN_ONLY, label
from stagewatch.daemon.query._hosts import with_hosts
from stagewatch.daemon.query._query import Filters, query_logs, query_runs, query_stages
from stagewatch.daemon.query._readmodels import to_rows

FORMATS = ("json", "jsonl")
TABLES = ("runs", "stages", "logs")
ERROR_LINES = "ERROR"  # the lowest level of the lines a stage execution's status brings with it
EXECUTION_OF_LINE = ("run_id", "stage", "sample_id")  # what a log line shares with the execution it was logged in


def matching(home: Path, filters: Filters, tables: tuple[str, ...] = TABLES) -> dict[str, list[dict[str, Any]]]:
    """Rows of every table that match `filters`, as JSON-ready dicts: runs, stages, logs (what
    each holds: `holds(filters)`). A filter only log lines have (a level, a logger) matches log
    lines alone: runs and stage executions have no level, so none of them is "of level WARNING".
    A status matches runs or stage executions; the log lines are then theirs (`_lines_of`), at the
    level and of the logger asked for, if any (the runs and executions themselves are left out then).
    `tables`: only those (the Logs page downloads its log lines, `export --table logs` the same).
    Read over several homes, stage executions and log lines name their run's host too
    (`_hosts.with_hosts`)."""
    unknown = [name for name in tables if name not in TABLES]
    if unknown:
        raise ValueError(f"expected tables of {', '.join(TABLES)}, got {', '.join(map(repr, unknown))}")
    if (filters.level or filters.logger) and not filters.status:
        logs = with_hosts(home, query_logs(home, filters))
        return {name: _rows(logs) if name == "logs" else [] for name in tables}
    if tables == ("logs",) and not filters.status:
        return {"logs": _rows(with_hosts(home, query_logs(home, filters)))}
    if filters.status in RUN_ONLY:  # a status no stage execution has: the runs of it, and their stages
        runs = query_runs(home, filters)
        stages = query_stages(home, replace(filters, status=None))
        stages = stages.filter(pc.is_in(stages["run_id"], value_set=runs["run_id"].combine_chunks()))
    elif filters.stage or filters.status:  # runs that had such a stage execution, not runs of that status alone
        stages = query_stages(home, filters)
        runs = query_runs(home, replace(filters, status=None))
        runs = runs.filter(pc.is_in(runs["run_id"], value_set=pc.unique(stages["run_id"])))
    else:
        stages = query_stages(home, filters)
        runs = query_runs(home, filters)
    logs = with_hosts(home, _lines_of(home, filters, runs, stages))
    if filters.level or filters.logger:  # no run or stage execution has a level: their lines alone
        return {name: _rows(logs) if name == "logs" else [] for name in tables}
    every = {"runs": runs, "stages": with_hosts(home, stages), "logs": logs}
    return {name: _rows(every[name]) for name in tables}


def _lines_of(home: Path, filters: Filters, runs: pa.Table, stages: pa.Table) -> pa.Table:
    """The log lines that go with what a status matched: with a run's status (finished with
    failures, running), the lines of those runs; with a stage execution's, the lines logged in
    those executions (the same run, stage and sample: a line carries no span) at ERROR or above,
    as a user asking for failed executions wants why they failed, not every line of their runs.
    Without a status, the lines the other filters match."""
    if not filters.status:
        return query_logs(home, filters)
    if filters.status in RUN_ONLY:
        lines = query_logs(home, replace(filters, status=None))
        return lines.filter(pc.is_in(lines["run_id"], value_set=runs["run_id"].combine_chunks()))
    lines = query_logs(home, replace(filters, status=None, level=filters.level or ERROR_LINES))
    executions = set(zip(*(stages[name].to_pylist() for name in EXECUTION_OF_LINE), strict=True))
    mine = [key in executions for key in zip(*(lines[name].to_pylist() for name in EXECUTION_OF_LINE), strict=True)]
    return lines.filter(pa.array(mine, pa.bool_()))


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
    return [_jsonable(row) for row in to_rows(_without_date(table))]


def _without_date(table: pa.Table) -> pa.Table:
    return table.drop(["date"]) if "date" in table.column_names else table


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if hasattr(value, "isoformat") else value for key, value in row.items()}


def export_chunks(matched: dict[str, list[dict[str, Any]]], form: str) -> Iterator[str]:
    """The export as text pieces: one JSON object of tables, or JSON Lines tagged with their table."""
    if form not in FORMATS:
        raise ValueError(f"expected an export format of {', '.join(FORMATS)}, got {form!r}")
    if form == "json":
        yield json.dumps(matched, default=str)
        return
    for name, rows in matched.items():
        for row in rows:
            yield json.dumps({"table": name, "row": row}, default=str) + "\n"
