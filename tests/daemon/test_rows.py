"""Each table's row is defined once (daemon/projection/_rows.py): the store's and the query layer's schemas,
the rows every writer makes, the projection's stage lines and docs/storage.md derive from it,
and a column added to the definition arrives in all of them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from stagewatch.daemon.projection import _rows
from stagewatch.daemon.projection._projection import Projector
from stagewatch.daemon.projection._rows import DEFINITIONS, Column, Source
from stagewatch.daemon.projection._runstate import RunState
from stagewatch.daemon.projection._stages import STAGE_ROW_FIELDS, audit_json, stage_builders
from stagewatch.daemon.query._sql import schema_of
from stagewatch.daemon.tables._store import Store, table_writer_properties
from tests.daemon.test_projection import RUN, T0, ev, finished, fold, history

DOCS = Path(__file__).parents[2] / "docs" / "storage.md"
STAGES = DEFINITIONS["stage_executions"]


def test_docs_storage_lists_each_table_s_columns_as_defined() -> None:
    text = DOCS.read_text()
    assert sorted(m[2] for m in _rows.DOCS_BLOCK.finditer(text)) == sorted(DEFINITIONS)
    assert _rows.document(text) == text, (
        "docs/storage.md's column tables differ from daemon/projection/_rows.py: "
        "python -c \"from stagewatch.daemon.projection._rows import rewrite_docs; rewrite_docs('docs/storage.md')\""
    )


def test_the_docs_check_fails_on_a_table_that_disagrees_or_that_is_no_table() -> None:
    listed = "| gpu_source | string (dictionary-encoded in the files) |"
    text = DOCS.read_text().replace(listed, "| gpu_source | string |")
    assert _rows.document(text) != text
    with pytest.raises(ValueError, match="'stage_execution', which is no table"):
        _rows.document(text.replace("columns of stage_executions", "columns of stage_execution"))


@pytest.mark.parametrize("table", sorted(DEFINITIONS))
def test_the_store_and_the_query_layer_use_the_definition(table: str) -> None:
    definition = DEFINITIONS[table]
    assert schema_of(table).equals(definition.schema.append(pa.field("date", pa.string())))
    properties = table_writer_properties(table)
    assert not properties.default_column_properties.dictionary_enabled
    encoded = [name for name, column in properties.column_properties.items() if column.dictionary_enabled]
    assert encoded == [column.name for column in definition.columns if column.dictionary]


def test_a_name_is_dictionary_encoded_in_every_table_that_has_it_or_in_none() -> None:
    """Write options go by name (`table_writer_properties` names the columns): one verdict a name."""
    verdicts: dict[str, set[bool]] = {}
    for definition in DEFINITIONS.values():
        for column in definition.columns:
            verdicts.setdefault(column.name, set()).add(column.dictionary)
    assert {name for name, verdict in verdicts.items() if len(verdict) > 1} == set()


def test_the_daemon_s_rows_hold_exactly_their_tables_columns() -> None:
    log = ev("log", 8, level="INFO", message="hello", stage="detection", extra={"k": 1})
    rows, _ = fold([*history(), log]).output.take()
    assert STAGES.names == STAGE_ROW_FIELDS
    assert {len(row) for row in rows["stage_executions"]} == {len(STAGES.names)}
    assert [list(row) for row in rows["runs"]] == [list(DEFINITIONS["runs"].names)]
    assert [list(row) for row in rows["logs"]] == [list(DEFINITIONS["logs"].names)]
    assert set(rows) == set(_rows.DAEMON_TABLES)


def test_the_accuracy_worker_s_rows_hold_exactly_the_samples_columns(tmp_path: Path) -> None:
    from stagewatch.daemon.accuracy._accuracy import AccuracyProjection
    from tests.groundtruth.builders import write_dataset

    golden = write_dataset(tmp_path / "golden", 1)
    projection = AccuracyProjection(tmp_path)
    projection.apply(ev("run_started", 1, pipeline="p", dataset=str(golden)), 0)
    prediction = {"boxes": [[0, 0, 1, 1]], "scores": [0.9], "labels": [1]}
    projection.apply(ev("sample_result", 2, stage="detection", sample_id="s0000", prediction=prediction), 1)
    assert [list(row) for row in projection.rows] == [list(DEFINITIONS["samples"].names)]


def test_the_stage_line_s_keys_are_the_definition_s() -> None:
    line = json.loads(bytes(fold(history()).output.stage_lines[RUN]).splitlines()[0])
    assert list(line) == list(STAGES.line)
    assert list(line["memory"]) == list(STAGES.of(Source.MEMORY))
    assert {name: line[name] for name in STAGES.of(Source.STAGE)}["stage"] == "preprocessing"


# -- a column added to stage_executions ------------------------------------------------------
CAMERA = Column("camera", pa.string(), "the camera the frame came from", source=Source.STAGE)
GPU_MODEL = Column("gpu_model", pa.string(), "the GPU's model", source=Source.MEMORY)


def _with_new_columns() -> _rows.Table:
    line = (*STAGES.line[:3], "camera", *STAGES.line[3:])
    return dataclasses.replace(STAGES, columns=(*STAGES.columns, CAMERA, GPU_MODEL), line=line)


class _EndWithNewFields:
    """A stage_finished as the decoder makes it, carrying the two new fields too."""

    def __init__(self, **fields: Any) -> None:
        end = ev("stage_finished", 3, stage="detection", span=1, start_ts_ns=T0, duration_ms=2.0, **fields)
        self.__dict__.update({name: getattr(end, name) for name in end.__struct_fields__})
        self.type, self.camera, self.gpu_model = end.type, "left", "H100"


def test_a_column_added_to_the_definition_arrives_in_the_rows_the_lines_the_schema_and_the_docs() -> None:
    """Adding a column sent by the client is one definition here (and its wire field): every
    place that builds a row or a line derives it."""
    table = _with_new_columns()
    builders, end, run = stage_builders(table), _EndWithNewFields(rss_peak_mb=3.0), RunState(RUN, pipeline="p")
    row = dict(zip(builders.row_fields, builders.row_of_end(run, end, T0 + 2_000_000, 7), strict=True))
    assert (row["camera"], row["gpu_model"], row["rss_peak_mb"], row["lsn"]) == ("left", "H100", 3.0, 7)
    line = json.loads(audit_json(builders.ended_line(end, T0 + 2_000_000)))
    assert (line["camera"], line["memory"]["gpu_model"]) == ("left", "H100") and list(line) == list(table.line)
    # A stage that sent its start first: its entry, then its end's fields, then its row.
    start = ev("stage_started", 2, stage="detection", span=1)
    entry = builders.new_stage(start)
    assert (entry["camera"], entry["memory"]["gpu_model"]) == (None, None)
    entry.update(builders.finish(end, "ok", T0 + 2_000_000))
    entry_row = builders.stage_row(run, entry, T0 + 2_000_000, 7)
    assert dict(zip(builders.row_fields, entry_row, strict=True)) == row
    assert json.loads(audit_json(entry)) == line
    assert table.schema.field("camera").type == pa.string()
    assert "| gpu_model | string | the GPU's model |" in _rows.column_table(table)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: dataclasses.replace(t, columns=(*t.columns, CAMERA)), "missing from its stage line"),
        (
            lambda t: dataclasses.replace(t, columns=(*t.columns, dataclasses.replace(CAMERA, source=Source.FOLD))),
            "without the fold's expressions",
        ),
        (lambda t: dataclasses.replace(t, columns=(*t.columns, dataclasses.replace(CAMERA, source=None))), "source"),
        (lambda t: dataclasses.replace(t, line=(*t.line, "camera")), "neither STAGE columns"),
    ],
)
def test_a_column_forgotten_in_one_place_of_the_definition_is_refused_by_name(change: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        stage_builders(change(STAGES))
    assert "camera" in str(refused.value)


def test_a_new_column_s_rows_are_written_with_its_type(tmp_path: Path) -> None:
    """The store writes a tuple row of a table by the fields it is given and the table's schema."""
    table = _with_new_columns()
    builders = stage_builders(table)
    row = builders.row_of_end(RunState(RUN, pipeline="p"), _EndWithNewFields(), T0 + 2_000_000, 7)
    columns = zip(table.names, zip(row, strict=True), strict=True)
    arrow = pa.Table.from_arrays([pa.array(v, table.schema.field(n).type) for n, v in columns], names=list(table.names))
    assert arrow.schema.equals(table.schema) and arrow.to_pylist()[0]["camera"] == "left"
    # The real table's rows, through the real store.
    rows = fold(history()).output.take()[0]["stage_executions"]
    ((_, written),), refused = Store(tmp_path).arrow_parts("stage_executions", rows, STAGE_ROW_FIELDS)
    assert refused == [] and written.schema.equals(STAGES.schema) and written.num_rows == 2


def test_every_field_of_a_stage_s_end_is_a_column_or_named_as_kept_elsewhere() -> None:
    """A new field on the wire is stored in stage_executions (a STAGE or MEMORY column), or it
    is named here with where it goes instead: none is dropped unnoticed."""
    from stagewatch.daemon.projection._schema import StageFailed, field_names

    kept_elsewhere = {
        "type": "the status column",
        "v": "the envelope",
        "seq": "deduplication",
        "ts_ns": "the event's time (a stage's times: start_ts_ns + duration_ms)",
        "start_ts_ns": "start_time",
        "traceback": "the audit trail's error",
    }
    assert field_names(StageFailed) - set(STAGES.names) == set(kept_elsewhere)


@pytest.mark.parametrize("ends_by", ["its end", "its client's loss"])
def test_a_stage_open_in_a_checkpoint_from_before_a_column_came_still_ends(ends_by: str) -> None:
    """A checkpoint written before gpu_source and gpu_devices existed holds an open stage
    without them: its end or its client's loss still makes its row (a loss's crash row is
    built from the entry alone; it raised KeyError and the client_lost went to quarantine)."""
    state = fold(history()[:2]).to_state()  # run_started, preprocessing's stage_started
    (entry,) = state["runs"][RUN]["open"].values()
    del entry["memory"]["gpu_source"], entry["memory"]["gpu_devices"], entry["output_paths"]
    projector = Projector.from_state(state)
    if ends_by == "its end":
        projector.apply(finished(3, 1, "preprocessing"), 9)
    else:
        projector.apply(ev("client_lost", 1, client="daemon", lost_client_id="c1", last_seen_ns=T0 + 5_000_000), 9)
    (row,) = projector.output.take()[0]["stage_executions"]
    row = dict(zip(STAGE_ROW_FIELDS, row, strict=True))
    assert (row["stage"], row["status"], row["gpu_source"]) == (
        "preprocessing",
        "ok" if ends_by == "its end" else "crashed",
        None,
    )
