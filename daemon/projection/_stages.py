"""A stage's audit line and table row, compiled from their definitions (_rows), and the one
encoder of the audit trail.

The fold builds a line and a row for every stage (100k a second under load): each builder is
one literal, compiled once from the definitions (as dataclasses compiles `__init__`), so a
column is named in _rows alone and costs no more than a hand-written literal. A STAGE or
MEMORY column is read by its name from the stage's event or entry; a RUN column from the
run's state; what the fold works out itself (the FOLD columns, the line's own keys) is below.
A list (output_paths) is shared by the event, the line and the row: read-only, never copied.
`help(builder)` shows a builder's code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from stagewatch.daemon.projection._rows import DEFINITIONS, Source, Table


def iso(ns: int | None) -> str | None:
    """UTC ISO 8601 with microseconds, or None (2026-11-26T08:29:14.517734+00:00)."""
    if ns is None:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    millis, micros = divmod(rest // 1000, 1000)
    return _iso_second(seconds) + _THREE_DIGITS[millis] + _THREE_DIGITS_UTC[micros]


@functools.lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    # Formatting a datetime costs about 1 us; events of one second share the prefix.
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


# Two calls a stage: concatenating looked-up digits costs 0.3 us, formatting "{:06d}" 0.5.
_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))
_THREE_DIGITS_UTC = tuple(f"{n:03d}+00:00" for n in range(1000))


_IDENTITY = ("stage", "span", "client_id")  # set by a stage's first event; its end changes none of them
_LINE_OF_END = {  # the stage line's own keys, of a stage that sent only its end
    "status": '"ok"',
    "start_ns": "event.start_ts_ns",
    "started_at": "iso(event.start_ts_ns)",
    "finished_at": "iso(end_ns)",
    "error": "None",
    "artifacts": "[]",
}
_LINE_OF_START = {  # ... of a stage's entry as its first event opens it
    "status": '"running"',
    "start_ns": "None",
    "started_at": "None",
    "finished_at": "None",
    "error": "None",
    "artifacts": "[]",
}
_LINE_AT_END = {  # ... that the end sets in its entry (`status` given; error and artifacts are the fold's)
    "status": "status",
    "start_ns": "event.start_ts_ns",
    "started_at": "iso(event.start_ts_ns)",
    "finished_at": "iso(end_ns)",
}
_ROW_OF_END = {  # the FOLD columns, of a stage that sent only its end
    "status": '"ok"',
    "start_time": "event.start_ts_ns",
    "end_time": "end_ns",
    "error_type": "None",
    "error_message": "None",
    "lsn": "lsn",
}
_ROW_OF_ENTRY = {  # ... of an ended stage's entry
    "status": 'entry["status"]',
    "start_time": 'entry["start_ns"]',
    "end_time": "end_ns",
    "error_type": '(entry["error"] or {}).get("type")',
    "error_message": '(entry["error"] or {}).get("message")',
    "lsn": "lsn",
}


@dataclass(frozen=True)
class StageBuilders:
    """A table's stage lines and rows, built from its definition (`stage_builders`)."""

    row_fields: tuple[str, ...]  # a row tuple's columns, in order (the schema's)
    memory_fields: tuple[str, ...]  # the keys of a line's "memory"
    # The line of a stage whose end came first (the common case: a short stage sends only its
    # end): the JSON of `new_stage`'s entry with `finish` applied, key for key, built in one call
    # (a struct costs a third of the two dicts and encodes faster).
    line: type[msgspec.Struct]
    memory: type[msgspec.Struct]  # its "memory"
    new_stage: Callable[[Any], dict[str, Any]]  # (event) -> the entry its first event opens
    finish: Callable[[Any, str, int], dict[str, Any]]  # (event, status, end_ns) -> what the end sets in it
    ended_line: Callable[[Any, int], msgspec.Struct]  # (end event, end_ns) -> its line, no entry
    row_of_end: Callable[[Any, Any, int, int], tuple]  # (run, end event, end_ns, lsn) -> its row
    stage_row: Callable[[Any, dict, int, int], tuple]  # (run, ended entry, end_ns, lsn) -> its row


def stage_builders(table: Table) -> StageBuilders:
    """The fold's builders of `table`'s rows and stage lines (stage_executions', or a variant's:
    tests/daemon/test_rows.py adds a column and sees it arrive)."""
    _check_definitions(table)
    memory_fields = table.of(Source.MEMORY)
    # A struct is encoded as a dict of the same keys would be (msgspec writes fields in order).
    line = msgspec.defstruct("EndedStage", table.line, gc=False)
    memory = msgspec.defstruct("StageMemory", memory_fields, gc=False)
    names = {"iso": iso, "EndedStage": line, "StageMemory": memory, "memory_fields": memory_fields}
    code = {**_line_code(table), **_row_code(table)}
    builders = {name: _compiled(name, parameters, result, names) for name, (parameters, result) in code.items()}
    return StageBuilders(table.names, memory_fields, line, memory, **builders)


def _check_definitions(table: Table) -> None:
    """Refuse a definition the builders cannot serve (at import: a column forgotten in one place)."""
    stage, own = set(table.of(Source.STAGE)), {*_LINE_OF_END, "memory"}
    problems = [
        f"{sorted(stage - set(table.line))}: STAGE columns missing from its stage line",
        f"{sorted(set(table.line) - stage - own)}: stage line keys that are neither STAGE columns nor the line's own",
        f"{sorted(set(table.of(Source.FOLD)) - set(_ROW_OF_END))}: FOLD columns without the fold's expressions",
        f"{sorted(c.name for c in table.columns if c.source is None)}: columns without a source",
    ]
    problems = [problem for problem in problems if not problem.startswith("[]")]
    if problems:
        raise ValueError(f"{table.name}'s definition: " + "; ".join(problems))


def _line_code(table: Table) -> dict[str, tuple[str, str]]:
    """Builder name -> (parameters, expression) of a stage's line and entry."""
    stage, memory_fields = table.of(Source.STAGE), table.of(Source.MEMORY)
    lists = {column.name for column in table.columns if column.is_list}  # empty until the stage's end

    def at_start(name: str) -> str:  # the first event may be a start or an artifact: it has some fields
        return f"event.{name}" if name in _IDENTITY else "[]" if name in lists else f"getattr(event, {name!r}, None)"

    def line(own: dict[str, str], memory: str, value: Callable[[str], str]) -> dict[str, str]:
        return {key: own[key] if key in own else memory if key == "memory" else value(key) for key in table.line}

    end_memory = "StageMemory(" + ", ".join(f"event.{name}" for name in memory_fields) + ")"
    ended = line(_LINE_OF_END, end_memory, lambda name: f"event.{name}")
    at_end = {**_LINE_AT_END, **{name: f"event.{name}" for name in stage if name not in _IDENTITY}}
    at_end["memory"] = _dict({name: f"event.{name}" for name in memory_fields})
    return {
        "new_stage": ("event", _dict(line(_LINE_OF_START, "dict.fromkeys(memory_fields)", at_start))),
        "finish": ("event, status, end_ns", _dict(at_end)),
        "ended_line": ("event, end_ns", f"EndedStage({', '.join(ended.values())})"),
    }


def _row_code(table: Table) -> dict[str, tuple[str, str]]:
    """Builder name -> (parameters, expression) of a stage's row, a tuple in the columns' order."""

    def row(fold: dict[str, str], value: Callable[[str], str], memory: Callable[[str], str]) -> str:
        read = {Source.FOLD: fold.__getitem__, Source.RUN: "run.{}".format, Source.STAGE: value, Source.MEMORY: memory}
        return "(" + ", ".join(read[column.source](column.name) for column in table.columns) + ",)"

    event = "event.{}".format
    return {
        "row_of_end": ("run, event, end_ns, lsn", row(_ROW_OF_END, event, event)),
        "stage_row": (
            "run, entry, end_ns, lsn",
            row(_ROW_OF_ENTRY, "entry[{!r}]".format, 'entry["memory"][{!r}]'.format),
        ),
    }


def _dict(values: dict[str, str]) -> str:
    return "{" + ", ".join(f"{key!r}: {value}" for key, value in values.items()) + "}"


def _compiled(name: str, parameters: str, expression: str, names: dict[str, Any]) -> Callable:
    """`def {name}({parameters}): return {expression}` with `names` in scope, compiled; its code is its docstring."""
    source = f"def {name}({parameters}):\n    return {expression}\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<stage builder {name}>", "exec"), names, namespace)
    function = namespace[name]
    function.__doc__ = source
    return function


_STAGE = stage_builders(DEFINITIONS["stage_executions"])
_LINE_KEYS = DEFINITIONS["stage_executions"].line


def with_every_key(entry: dict[str, Any]) -> dict[str, Any]:
    """A stage's entry as an earlier version kept it (a checkpoint's, an audit trail's), with
    the keys of columns added since, null: a row built from it finds every column."""
    memory = {**dict.fromkeys(MEMORY_FIELDS), **(entry.get("memory") or {})}
    return {**dict.fromkeys(_LINE_KEYS), **entry, "memory": memory}


# A stage_executions row is a tuple of these columns (the store's schema, in its order): the
# fold makes 100k of them a second under load, and a tuple costs less than a dict to build and
# to turn into Arrow columns (Store.write_rows).
STAGE_ROW_FIELDS = _STAGE.row_fields
MEMORY_FIELDS = _STAGE.memory_fields
new_stage, finish, ended_line = _STAGE.new_stage, _STAGE.finish, _STAGE.ended_line
row_of_end, stage_row = _STAGE.row_of_end, _STAGE.stage_row


# The one encoder of the audit trail, stages.jsonl lines and audit.json alike (a running
# stage's entry and an ended one's line are spliced into one array): msgspec writes the same
# compact JSON as json.dumps(separators=(",", ":")) (UTF-8 instead of \u escapes) about 5x
# faster (an ended stage's line cost 12 us, then 2-3).
_AUDIT_ENCODER = msgspec.json.Encoder(enc_hook=str)
audit_json = _AUDIT_ENCODER.encode
encode_line_into = _AUDIT_ENCODER.encode_into


def stage_lines_bytes(entries: list[Any]) -> bytes:
    """Ended stages (dicts or `ended_line`s) as stages.jsonl lines."""
    return _AUDIT_ENCODER.encode_lines(entries)
