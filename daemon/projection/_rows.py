"""Each table's row, defined once: its columns in order, their Arrow types, which of them are
dictionary-encoded, what each holds, and, for stage_executions, where the fold reads each one;
with the audit trail's stage line, whose keys are stage_executions' columns where they coincide.

Everything else derives from here: the store's Arrow schemas and write options, the query
layer's schemas (`_sql.schema_of`), the projection's row tuples and stage lines (`_projection`
reads a STAGE or MEMORY column by its name from the stage's event or running entry), and
docs/storage.md's column tables (`document`; tests/daemon/test_rows.py holds the docs to it).
A stage_executions column that the client sends is added here, to the wire's builder
(`stagewatch._protocol.stage_finished`) and to the daemon's decode schema
(`_schema.StageFinished`), and nowhere else; tests/client/test_protocol.py fails if the
wire lacks one.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

TIMESTAMP = pa.timestamp("ns", tz="UTC")
MB = pa.float64()
STRING = pa.string()
INT = pa.int64()
FLOAT = pa.float64()
STRINGS = pa.list_(pa.string())


class Source(enum.StrEnum):
    """Where the fold (`_projection`) finds a stage_executions column's value."""

    RUN = "run"  # the run's state: `RunState`'s attribute of the same name
    STAGE = "stage"  # the stage's events' field of the same name, kept under that key in its stage line
    MEMORY = "memory"  # the stage's end event's field of the same name, kept in its line's "memory"
    FOLD = "fold"  # worked out by the fold itself (`_projection`'s expressions for it)


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str  # what it holds, for docs/storage.md
    # Few distinct values that queries filter on or read as dictionaries (facets): dictionary-
    # encoded in Parquet. The others are written plain: against pyarrow's dictionary-everything
    # default a part takes about half the CPU to write, is smaller, and reads no slower
    # (benchmarks/parquet_parts.py, docs/benchmarks.md).
    dictionary: bool = False
    source: Source | None = None  # stage_executions only

    @property
    def is_list(self) -> bool:
        return pa.types.is_list(self.type)


@dataclass(frozen=True)
class Table:
    """A table's row: its columns in the order of its Arrow schema, and who writes it."""

    name: str
    doc: str
    writer: str  # "daemon" or "accuracy worker"
    columns: tuple[Column, ...]
    # stage_executions: the audit trail's stage line (a stages.jsonl line, an item of audit.json's
    # "stages"), key by key in order. A STAGE column is kept under its own name, the MEMORY
    # columns in "memory"; the other keys are the trail's own (`_projection` fills them).
    line: tuple[str, ...] = ()

    @functools.cached_property
    def schema(self) -> pa.Schema:
        return pa.schema([(column.name, column.type) for column in self.columns])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def of(self, source: Source) -> tuple[str, ...]:
        """The names of the columns the fold reads from `source`, in order."""
        return tuple(column.name for column in self.columns if column.source is source)


def _stage_executions() -> Table:
    run, stage, memory, fold = Source.RUN, Source.STAGE, Source.MEMORY, Source.FOLD
    return Table(
        "stage_executions",
        "one row per finished, failed or crashed stage execution.",
        "daemon",
        (
            Column("run_id", STRING, "the run (a UUID)", True, run),
            Column("pipeline", STRING, "the run's pipeline", True, run),
            Column("stage", STRING, "the stage's name", True, stage),
            Column("status", STRING, "`ok`, `failed` or `crashed`", True, fold),
            Column("sample_id", STRING, "the sample the stage worked on, if the pipeline said", source=stage),
            Column("client_id", STRING, "the process that ran it", True, stage),
            Column("span", INT, "the stage's number in its process", source=stage),
            Column("parent_span", INT, "the enclosing stage's span (null at the top)", source=stage),
            Column("start_time", TIMESTAMP, "when it started (the pipeline's clock)", source=fold),
            Column("end_time", TIMESTAMP, "start_time + duration_ms", source=fold),
            Column("duration_ms", FLOAT, "from a monotonic clock", source=stage),
            Column("rss_start_mb", MB, "the process's RSS when it started", source=memory),
            Column("rss_peak_mb", MB, "its peak RSS during the stage", source=memory),
            Column("rss_end_mb", MB, "its RSS when it ended (a crash: the last heartbeat's)", source=memory),
            Column("gpu_peak_mb", MB, "GPU memory peak over the devices (null without GPU)", source=memory),
            Column("input_path", STRING, "the stage's input, if the pipeline said", source=stage),
            Column("output_paths", STRINGS, "the saved outputs, relative to the home", source=stage),
            Column("error_type", STRING, "the exception's type (failed, crashed)", True, fold),
            Column("error_message", STRING, "the exception's message", source=fold),
            Column("lsn", INT, "the event-log position of the event that produced the row", source=fold),
            # Added later (older parts read them as nulls): where gpu_peak_mb came from, and per device.
            Column("gpu_source", STRING, "`torch`, `cupy`, `jax`, `nvml` or a sum (`torch+cupy`)", True, memory),
            Column("gpu_devices", pa.map_(STRING, MB), 'the peak per device index (`"0"` → MB)', source=memory),
        ),
        line=(
            "stage",
            "span",
            "client_id",
            "status",
            "start_ns",
            "started_at",
            "finished_at",
            "duration_ms",
            "input_path",
            "sample_id",
            "parent_span",
            "output_paths",
            "memory",
            "error",
            "artifacts",
        ),
    )


def _runs() -> Table:
    return Table(
        "runs",
        "one row per ended run (`ok`; `finished_with_failures`: stages failed, the run went on to its end; "
        "`failed`: the run ended on an exception; `crashed`: its process was lost; daemon/projection/_outcomes.py).",
        "daemon",
        (
            Column("run_id", STRING, "the run (a UUID)", True),
            Column("pipeline", STRING, "the pipeline's name", True),
            Column("status", STRING, "`ok`, `finished_with_failures`, `failed` or `crashed`", True),
            Column("host", STRING, "the host it ran on", True),
            Column("pid", INT, "the pipeline's process id"),
            Column("start_time", TIMESTAMP, "its run_started (the pipeline's clock)"),
            Column("end_time", TIMESTAMP, "its end: run_finished, or the last sign of life of a crashed run"),
            Column("duration_ms", FLOAT, "from the pipeline's monotonic clock (wall clock for a crash)"),
            Column("stages", INT, "stage executions"),
            Column("stages_failed", INT, "of which failed"),
            Column("stages_crashed", INT, "of which crashed"),
            Column("failed_stage", STRING, "the first stage that failed", True),
            Column("error_type", STRING, "the run's error, else its first stage's", True),
            Column("error_message", STRING, "its message"),
            Column("dataset", STRING, "the golden dataset it named", True),
            Column("lsn", INT, "the event-log position of the event that ended it"),
            Column(
                "received_time",
                TIMESTAMP,
                "the daemon's clock when the run's last event arrived, from which retention counts the "
                "run's age (null in parts written before it existed: those runs age by `end_time`)",
            ),
        ),
    )


def _logs() -> Table:
    return Table(
        "logs",
        "one row per forwarded log record.",
        "daemon",
        (
            Column("run_id", STRING, "the run", True),
            Column("pipeline", STRING, "the run's pipeline", True),
            Column("time", TIMESTAMP, "the record's time"),
            Column("level", STRING, "loguru's level name", True),
            Column("stage", STRING, "the stage it was logged in, if any", True),
            Column("sample_id", STRING, "that stage's sample"),
            Column("logger", STRING, "the logger's name", True),
            Column("message", STRING, "the message"),
            Column("extra", STRING, "the record's extra fields (JSON)"),
            Column("client_id", STRING, "the process that logged it", True),
            Column("lsn", INT, "the event-log position of the log event"),
        ),
    )


def _samples() -> Table:
    return Table(
        "samples",
        "one row per judged (run, stage, sample), written by the accuracy worker.",
        "accuracy worker",
        (
            Column("run_id", STRING, "the run", True),
            Column("pipeline", STRING, "the run's pipeline", True),
            Column("stage", STRING, "the judged stage", True),
            Column("sample_id", STRING, "the sample"),
            Column("time", TIMESTAMP, "the sample_result event's"),
            Column("status", STRING, "`correct`, `wrong`, `invalid`, `unlabeled`", True),
            Column("value", FLOAT, "the pass criterion's metric for this sample (F1, mIoU or accuracy)"),
            Column("severity", FLOAT, "in [0, 1]: 1 - value for wrong samples, 1 for invalid, 0 otherwise"),
            Column(
                "error_types",
                STRINGS,
                "`false_positive`, `missed`, `localization`, `class_confusion`, `duplicate`, "
                "`mask_mismatch`, `point_label_mismatch`",
            ),
            Column("errors", STRING, "JSON map error type → count"),
            Column("reason", STRING, "why invalid or unlabeled"),
            Column("scores", STRING, "JSON: the sample's precision/recall/F1 or mIoU/accuracy/per-class IoU"),
            Column("prediction_path", STRING, "the saved prediction, relative to the home"),
            Column("label_path", STRING, "the label file"),
            Column("lsn", INT, "the event-log position of the sample_result"),
            Column(
                "classes",
                STRINGS,
                "the classes a wrong sample's mistakes involve (boxes: of wrong predictions and missed "
                "objects; masks and points: classes whose own IoU is below the pass bar)",
            ),
            Column(
                "confidence",
                FLOAT,
                "boxes only: the score of the most confident wrong prediction (of any prediction when "
                "only objects were missed); null otherwise",
            ),
            Column(
                "boxes",
                STRING,
                'JSON, wrong box samples only: `{"predicted": [[x, y, w, h, class, score, outcome]], '
                '"truth": [[x, y, w, h, class, outcome]]}`, at most 1,000 a side; outcome `matched`, an '
                "error kind, `missed`, `crowd` or `below_threshold`",
            ),
            Column("input_path", STRING, "the sample's input image in the golden dataset (`inputs:`), if it has one"),
        ),
    )


DEFINITIONS: dict[str, Table] = {table.name: table for table in (_stage_executions(), _runs(), _logs(), _samples())}
TABLES: dict[str, pa.Schema] = {name: table.schema for name, table in DEFINITIONS.items()}
STAGE_EXECUTIONS, RUNS, LOGS, SAMPLES = (TABLES[name] for name in ("stage_executions", "runs", "logs", "samples"))
DAEMON_TABLES = tuple(name for name, table in DEFINITIONS.items() if table.writer == "daemon")
# A name is dictionary-encoded in every table that has it (tests/daemon/test_rows.py holds them to one verdict).
DICTIONARY_COLUMNS = frozenset(c.name for table in DEFINITIONS.values() for c in table.columns if c.dictionary)

# -- docs/storage.md's column tables ---------------------------------------------------------
DOCS_BLOCK = re.compile(r"(<!-- columns of (\w+) -->\n)(.*?)(<!-- end of columns -->)", re.S)


def type_name(arrow: pa.DataType) -> str:
    """An Arrow type as a reader of the Delta table gets it (float64, timestamp[us, UTC],
    list<string>): Delta timestamps are microseconds, whatever unit the rows were written in."""
    if pa.types.is_timestamp(arrow):
        return f"timestamp[us, {arrow.tz}]"
    if pa.types.is_map(arrow):
        return f"map<{type_name(arrow.key_type)}, {type_name(arrow.item_type)}>"
    if pa.types.is_list(arrow):
        return f"list<{type_name(arrow.value_type)}>"
    return "float64" if arrow == pa.float64() else str(arrow)


def column_table(table: Table) -> str:
    """The table's columns as docs/storage.md lists them (markdown)."""
    lines = [f"`{table.name}`: {table.doc}", "", "| column | type | holds |", "|---|---|---|"]
    for column in table.columns:
        encoded = " (dictionary-encoded in the files)" if column.dictionary else ""
        lines.append(f"| {column.name} | {type_name(column.type)}{encoded} | {column.doc} |")
    return "\n".join(lines) + "\n"


def document(text: str) -> str:
    """`text` (docs/storage.md) with each `<!-- columns of {table} -->` block generated anew."""

    def generated(block: re.Match) -> str:
        if block[2] not in DEFINITIONS:
            raise ValueError(f"the docs list the columns of {block[2]!r}, which is no table ({', '.join(DEFINITIONS)})")
        return block[1] + column_table(DEFINITIONS[block[2]]) + block[4]

    return DOCS_BLOCK.sub(generated, text)


def rewrite_docs(path: str | Path) -> None:
    """Generate the column tables of a file such as docs/storage.md in place."""
    docs = Path(path)
    docs.write_text(document(docs.read_text()))
