"""Reading the read models back: run listings and audit trails, for the CLI and the UI.

Readers tolerate what a crash or a hand edit can leave behind: a missing table, a
half-written or edited audit.json. They report what is missing instead of failing.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from stagewatch._protocol import MAX_DURATION_MS, MAX_INT, MAX_MEGABYTES, MAX_TS_NS
from stagewatch.daemon.base._derived import STATUS, peek
from stagewatch.daemon.base._files import MAX_HEAD_BYTES, read_plain
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.projection._rows import DAEMON_TABLES, RUNS
from stagewatch.daemon.projection._runstate import AUDIT_SCHEMA
from stagewatch.daemon.query._sql import (
    MAX_ROWS,
    Homes,
    QueryError,
    damaged_parts,
    empty_table,
    home_of_run,
    homes_of,
    quoted,
    runs_read_elsewhere,
    schema_of,
    select,
    snapshot_files,
)
from stagewatch.daemon.tables._runindex import runs_with_prefix
from stagewatch.daemon.tables._tables import DamagedTable, first_line
from stagewatch.daemon.tables._watch import gone_tables

if TYPE_CHECKING:  # imported where a table is read whole: pyarrow.dataset brings pandas
    import pyarrow.dataset as ds


class RunNotFound(LookupError):
    pass


class AmbiguousRun(RunNotFound):
    """A prefix that names more than one run."""


def read_table(
    home: Homes,
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
    The files read are those of the table's Delta snapshot (`snapshot_files`); of several
    homes, each home's rows in turn."""
    if not isinstance(home, (str, Path)):
        homes = homes_of(home)
        if len(homes) > 1:  # each home's rows but those of the runs another home's copy stands for
            parts = []
            for one, elsewhere in zip(homes, runs_read_elsewhere(homes), strict=True):
                rows = read_table(one, table, expression, dates, columns, dictionary)
                if elsewhere and "run_id" in rows.column_names:
                    rows = rows.filter(pc.invert(pc.is_in(rows["run_id"], pa.array(sorted(elsewhere), pa.string()))))
                parts.append(rows)
            return pa.concat_tables(parts)
        home = homes[0]
    folder = DaemonHome.of(home).table(table)
    # Settled before any early return: a table not written yet (a pipeline that never logs
    # has no logs table) answers with the same types as one that holds rows.
    schema = _as_dictionaries(schema_of(table), dictionary)
    import pyarrow.dataset as ds

    file_format = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=set(dictionary)))
    files = snapshot_files(home, table, dates)
    for again in (True, False):
        if not files:
            return _select(empty_table(schema), columns)
        try:  # the dataset opens each file (a file gone raises FileNotFoundError here)
            return _files_dataset(files, folder, file_format, schema).to_table(filter=expression, columns=columns)
        except (pa.ArrowInvalid, OSError):  # OSError: damage inside a compressed page, a file gone
            listed, files = files, snapshot_files(home, table, dates)
            if not again or files == listed:
                break
            # The table changed under the read: compacted, or set aside (deleted, damaged) for the
            # daemon to rebuild: its snapshot now is read instead (none: an empty table).
    return _without_damaged(table, files, folder, file_format, schema, expression, columns)


def _without_damaged(
    table: str,
    files: list[str],
    folder: Path,
    file_format: ds.FileFormat,
    schema: pa.Schema,
    expression: ds.Expression | None,
    columns: list[str] | None,
) -> pa.Table:
    """The rows of the snapshot's files that read, each damaged one left out with a warning
    (`damaged_parts`: deleted by hand, cut short, a bad footer); a QueryError that says what
    failed when they do not read either (files that change under every read, say)."""
    damaged = damaged_parts(files)
    readable = [path for path in files if path not in damaged]
    try:
        if not readable:
            return _select(empty_table(schema), columns)
        return _files_dataset(readable, folder, file_format, schema).to_table(filter=expression, columns=columns)
    except (pa.ArrowInvalid, OSError) as error:
        raise QueryError(
            f"the {table} table could not be read ({first_line(error)}): ask again in a moment; "
            "if it stays so, `stagewatch doctor` says what is wrong"
        ) from None


def _as_dictionaries(schema: pa.Schema, dictionary: tuple[str, ...]) -> pa.Schema:
    return pa.schema([f.with_type(pa.dictionary(pa.int32(), f.type)) if f.name in dictionary else f for f in schema])


def _files_dataset(files: list[str], folder: Path, file_format: ds.FileFormat, schema: pa.Schema) -> ds.Dataset:
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
    return ds.dataset(
        files, format=file_format, partitioning=partitioning, schema=schema, partition_base_dir=str(folder)
    )


def _select(table: pa.Table, columns: list[str] | None) -> pa.Table:
    return table.select(columns) if columns is not None else table


def table_not_read(error: DamagedTable) -> str:
    """What a view says in place of the part of it that a damaged table held (the rest is shown)."""
    return f"the {error.table} table {error.why}: run `stagewatch rebuild` (its rows are all in the event log)"


def load_accuracy(home: Path, run_id: str) -> dict[str, Any] | None:
    """The run's accuracy.json (written for runs with a golden dataset), or None."""
    try:
        return json.loads(DaemonHome.of(home).accuracy(run_id).read_text())
    except (OSError, ValueError):
        return None


def to_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts; timestamps become datetimes (microseconds: what Python holds)."""
    columns = {name: _python_values(table[name]) for name in table.column_names}
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


_EPOCH = datetime(1970, 1, 1)


def _python_values(column: pa.ChunkedArray) -> list[Any]:
    """The column's values as Python objects. Timestamps are made here from their microseconds:
    pyarrow makes a datetime through pandas, and importing pandas would cost a CLI command that
    prints a few rows more than its query."""
    if not pa.types.is_timestamp(column.type):
        return column.to_pylist()
    zone = column.type.tz
    micros = column.cast(pa.timestamp("us", tz=zone), safe=False).cast(pa.int64()).to_pylist()
    naive = [None if us is None else _EPOCH + timedelta(microseconds=us) for us in micros]
    if zone is None:
        return naive
    tzinfo = pa.lib.string_to_tzinfo(zone)  # the zone object pyarrow itself gives
    return [None if at is None else at.replace(tzinfo=UTC).astimezone(tzinfo) for at in naive]


def list_runs(home: Homes, limit: int = 20, host: str | None = None) -> list[dict[str, Any]]:
    """The most recent runs, finished (from the runs table) and still running (from the daemon),
    of one home or of several (each row names its host), of one host if `host` is given."""
    where = "WHERE host = ?" if host is not None else ""
    sql = f"SELECT {quoted(RUNS.names)} FROM rows {where} ORDER BY start_time DESC NULLS LAST, lsn DESC LIMIT ?"
    arguments = [*([host] if host is not None else []), min(limit, MAX_ROWS)]  # a larger limit: all of them
    finished = to_rows(select(home, "runs", sql, arguments, RUNS))
    known = {row["run_id"] for row in finished}
    runs = [_run_summary(row) for row in finished]
    active = [run for run in active_runs_in(home) if run["run_id"] not in known]
    runs += [_active_summary(run) for run in active if host is None or run.get("host") == host]
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
    status = peek(STATUS, DaemonHome.of(home)) or {}
    return [run for run in status.get("active_runs", []) if isinstance(run, dict)]


# A rebuild reports its progress each second: a report older than this is of a daemon that died in it.
REBUILD_SILENT_S = 30.0


def tables_not_whole(home: Homes) -> list[str]:
    """A sentence per table that reads partial or empty now: of a home whose daemon is rebuilding
    tables from its event log (status.json's `rebuilding`, `tables._writer.Rebuilding`) until it is
    done, or that stopped in such a rebuild (its next start finishes it); a table deleted
    (`gone_tables`)."""
    said = []
    for one in homes_of(home):
        status = peek(STATUS, DaemonHome.of(one)) or {}  # read once for both
        said += gone_tables(one, status)
        rebuilding = status.get("rebuilding")
        if not isinstance(rebuilding, dict) or not isinstance(rebuilding.get("tables"), list):
            continue
        tables = ", ".join(name for name in rebuilding["tables"] if name in DAEMON_TABLES)
        if not tables:  # a hand edit naming no table of ours
            continue
        if time.time() - (status.get("updated_at") or 0) > REBUILD_SILENT_S:
            said.append(
                f"the daemon of {one} stopped while it rebuilt the {tables} table(s) from its event log: they "
                "lack rows until a daemon starts there again (its start finishes the rebuild)"
            )
            continue
        done, total = rebuilding.get("replayed_bytes"), rebuilding.get("log_bytes")
        how_far = f", {done / total:.0%} of the log replayed" if _is_size(done) and _is_size(total) and total else ""
        said.append(
            f"the daemon of {one} is rebuilding the {tables} table(s) from its event log{how_far}: their rows are "
            "partial (or none) until it is done; ask again in a moment"
        )
    return said


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def active_runs_in(home: Homes) -> list[dict[str, Any]]:
    """`active_runs` of each home, a run once: that of the home whose copy of it is read
    (`runs_read_elsewhere`: a copy of a home lists the runs its daemon had in progress too)."""
    homes = homes_of(home)
    return [
        run
        for one, elsewhere in zip(homes, runs_read_elsewhere(homes), strict=True)
        for run in active_runs(one)
        if run.get("run_id") not in elsewhere
    ]


def resolve_run_id(home: Path, prefix: str) -> str:
    """The one run id that starts with `prefix`; RunNotFound if none or several do."""
    prefix = prefix.strip().lower()
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise RunNotFound(f"expected a run id or a unique prefix of one, got {prefix!r}")
    # The run index answers from one small file; listing runs/ (a million entries) is the fallback.
    indexed = runs_with_prefix(home, prefix) or []
    names = [name for name in indexed if DaemonHome.of(home).run(name).is_dir()]
    if not names:
        try:
            names = [entry.name for entry in os.scandir(DaemonHome.of(home).runs) if entry.name.startswith(prefix)]
        except FileNotFoundError:
            names = []
    if len(names) == 1:
        return names[0]
    if not names:
        raise RunNotFound(f"no run with id {prefix!r} under {home}; `stagewatch runs` lists recent runs")
    shown = ", ".join(sorted(names)[:5])
    raise AmbiguousRun(f"run id prefix {prefix!r} is ambiguous ({len(names)} runs: {shown}...); give more characters")


def resolve_run_in(home: Homes, prefix: str) -> str:
    """`resolve_run_id` in one home, or in the one of several homes that holds the run."""
    homes = homes_of(home)
    if len(homes) == 1:
        return resolve_run_id(homes[0], prefix)
    found = set()
    for one in homes:
        try:
            found.add(resolve_run_id(one, prefix))
        except AmbiguousRun:
            raise  # ambiguous in one home: ambiguous in them all (another home's match is no answer)
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
    if len(homes) == 1:  # the one home: nothing to look for
        return homes[0]
    return home_of_run(homes, run_id) or homes[0]


def load_audit(home: Path, run_id: str, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
    """The run's audit trail as one document (`AUDIT_SCHEMA`): its head (audit.json) with the
    stages from `offset` on, at most `limit` of them (all if None): the ended stages (lines of
    stages.jsonl, in the order they ended: the part the head accounts for) then the running
    ones. A page (`limit` given) says where it is in `stages_page` (offset, limit, total).
    `problems` lists what is missing or damaged, if anything.

    Only the page's lines are decoded: a run of a million stages reads its head and counts
    lines. If audit.json is missing or damaged, the ended stages come from the whole of
    stages.jsonl (damaged lines skipped and counted)."""
    audit, lines = _trail_of(DaemonHome.of(home), run_id)
    running = audit.pop("running", [])
    limit = MAX_ROWS if limit is None else limit
    paged = limit < MAX_ROWS
    if lines is None:  # a whole trail (audit/1, written by an earlier version)
        stages = audit.get("stages", [])
        total = len(stages)
        audit["stages"] = stages[offset : offset + limit]
    else:
        total = lines.count() + len(running)
        page = lines.page(offset, limit, audit["problems"])
        audit["stages"] = page + running[max(0, offset - (total - len(running))) :][: limit - len(page)]
    if audit["status"] == "unknown":
        audit["errors"] = [_error_of(stage) for stage in audit["stages"] if stage.get("error")]
    if paged:
        audit["stages_page"] = {"offset": offset, "limit": limit, "total": total}
    if not audit.get("complete"):
        audit["problems"].append("the run has not finished (or its end was never recorded)")
    return audit


def load_audit_head(home: Path, run_id: str) -> dict[str, Any]:
    """The run's audit trail without its ended stages (`stages` holds the running ones): what
    `load_audit` gives, without reading or counting a line of stages.jsonl."""
    audit, lines = _trail_of(DaemonHome.of(home), run_id)
    audit["stages"] = audit.pop("running", []) if lines is not None else []
    if not audit.get("complete"):
        audit["problems"].append("the run has not finished (or its end was never recorded)")
    return audit


def trail_problems(home: Path, run_id: str) -> list[str]:
    """What is damaged or missing in the run's audit trail in this home, in a reader's words:
    its audit.json, its stages.jsonl (no file, cut short) and each of its lines checked as
    `show` checks them (nothing kept: `doctor`). Empty when it reads whole."""
    layout = DaemonHome.of(home)
    if not layout.audit(run_id).exists() and not _has_bytes(layout.stage_lines(run_id)):
        return []  # a run folder the daemon has just made: nothing written yet, nothing damaged
    audit, lines = _trail_of(layout, run_id)
    problems = audit["problems"]
    if lines is not None:
        for _ in lines.items(problems):  # damaged lines are counted into `problems`
            pass
    return problems


def _has_bytes(path: Path) -> bool:
    try:
        found = os.stat(path)
    except OSError:
        return False
    return found.st_size > 0 or not stat.S_ISREG(found.st_mode)


def stages_with(home: Path, run_id: str, marker: bytes, limit: int) -> list[dict[str, Any]]:
    """The first `limit` stages of the run's trail whose JSON holds `marker` (`FAILED`: those
    that failed or crashed; `WITH_ARTIFACTS`: those that saved outputs), ended then running:
    found by a byte search, only they are decoded."""
    audit, lines = _trail_of(DaemonHome.of(home), run_id)
    if lines is None:
        stages = audit.get("stages", [])
    else:
        stages = [*lines.with_marker(marker, limit), *audit.get("running", [])]
    key = marker.split(b":")[0].strip(b'"').decode()
    return [stage for stage in stages if stage.get(key)][:limit]


# What a stage line holds (compact JSON, `_projection.audit_json`) when it failed, or saved outputs.
FAILED = b'"error":{'
WITH_ARTIFACTS = b'"artifacts":[{'
_STAGE_NAME = re.compile(rb'"stage":("(?:[^"\\]|\\.)*")')  # a stage line's first key: its stage


def stages_with_by_name(
    home: Path, run_id: str, marker: bytes, stage: str | None, offset: int, limit: int
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Per stage name (in the order first met), how many stages of the run's trail hold `marker`
    (`WITH_ARTIFACTS`: saved outputs); and `stage`'s such stages from `offset` on, at most
    `limit`, ended then running. One byte search of the trail that decodes the page's lines
    only: a run that saved outputs 100k times is paged without building 100k documents."""
    audit, lines = _trail_of(DaemonHome.of(home), run_id)
    key = marker.split(b":")[0].strip(b'"').decode()
    counts: dict[str, int] = {}
    page: list[dict[str, Any]] = []

    def on_page(name: str) -> bool:
        seen = counts.get(name, 0)
        counts[name] = seen + 1
        return name == stage and offset <= seen < offset + limit

    names: dict[bytes, str | None] = {}  # a stage's name as its lines spell it, decoded once
    for line in lines.marked(marker) if lines is not None else ():
        found = _STAGE_NAME.search(line)
        spelled = found.group(1) if found else b""
        name = names[spelled] if spelled in names else names.setdefault(spelled, _json_string(spelled))
        if name is not None and on_page(name) and (decoded := _stage_line(line)) is not None:
            page.append(decoded)
    ended = audit.get("stages", []) if lines is None else []  # a whole trail of an earlier version
    for entry in [*ended, *audit.get("running", [])]:
        named = isinstance(entry, dict) and entry.get(key) and isinstance(entry.get("stage"), str)
        if named and on_page(entry["stage"]):
            page.append(entry)
    return counts, page


def _json_string(spelled: bytes) -> str | None:
    try:
        name = json.loads(spelled) if spelled else None
    except ValueError:
        return None
    return name if isinstance(name, str) else None


def audit_json_chunks(home: Path, run_id: str, extra: dict[str, Any] | None = None) -> Iterator[bytes]:
    """The whole trail as one JSON document (what `load_audit` gives with no limit), in pieces
    of at most a few megabytes: `stagewatch show --json --all` streams a run of any length
    without holding it. A stage line that is not JSON is left out (and named in `problems`,
    which comes last)."""
    audit, lines = _trail_of(DaemonHome.of(home), run_id)
    running = audit.pop("running", [])
    stages = audit.pop("stages", []) if lines is None else []
    problems = audit.pop("problems")
    if not audit.get("complete"):
        problems.append("the run has not finished (or its end was never recorded)")
    yield json.dumps(audit, ensure_ascii=False)[:-1].encode() + b', "stages": ['
    first = True
    for piece in itertools.chain(lines.items(problems) if lines is not None else (), _items_of([*stages, *running])):
        yield piece if first else b"," + piece
        first = False
    tail = {**(extra or {}), "problems": problems}
    yield b"], " + json.dumps(tail, ensure_ascii=False).encode()[1:]


def _items_of(stages: list[dict[str, Any]]) -> Iterator[bytes]:
    if stages:
        yield b",".join(json.dumps(stage, ensure_ascii=False).encode() for stage in stages)


def _trail_of(home: DaemonHome, run_id: str) -> tuple[dict[str, Any], StageLines | None]:
    """The run's head (as a trail document, `problems` added) and its ended stages' lines
    (None when the head is a whole trail of an earlier version, its stages inside)."""
    path = home.audit(run_id)
    lines = home.stage_lines(run_id)
    try:
        audit = _strict_json(read_plain(path, MAX_HEAD_BYTES))
        _check_head(audit)
        audit["problems"] = []
    except FileNotFoundError:
        audit = _unreadable(run_id, f"{path} is missing (not written yet, or deleted)")
    except (OSError, ValueError, UnicodeDecodeError) as error:  # OSError: a directory in its place, say
        audit = _unreadable(run_id, f"{path} is damaged ({error})")
    if audit.get("schema") == AUDIT_SCHEMA and isinstance(audit.get("stages"), list):
        return audit, None
    unreadable = _unreadable_lines(lines)
    if unreadable:  # its stages are in the tables and the log: what can be shown still is
        audit["problems"].append(unreadable)
    if audit["status"] == "unknown":  # no head to say how far: every line there is
        audit["problems"].append(f"stages recovered from {lines}")
        return audit, StageLines(lines, None)
    audit["schema"] = AUDIT_SCHEMA
    size = audit.pop("stages_bytes", 0)
    on_disk = lines.stat().st_size if lines.is_file() else 0
    if on_disk < size and not unreadable:  # cut short or deleted by hand: its stages are in the tables and the log
        audit["problems"].append(f"{lines} holds {on_disk:,} of the {size:,} bytes of stages its head counts")
    return audit, StageLines(lines, size, audit.pop("stages_ended", None) if on_disk >= size else None)


_Size = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]  # a count too: 10**300 is no count a reader prints
_Span = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
_Nanoseconds = Annotated[int, msgspec.Meta(ge=0, lt=MAX_TS_NS)]
# What the daemon can have written (its event schema's bounds): a hand edit may leave 1e308 or NaN,
# which a reader would print in full. A run's duration: signed, as heads of earlier versions were.
_Milliseconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_DURATION_MS)]
_RunMilliseconds = Annotated[float, msgspec.Meta(ge=-MAX_DURATION_MS, le=MAX_DURATION_MS)]
_Megabytes = Annotated[float, msgspec.Meta(ge=0, le=MAX_MEGABYTES)]


class _Error(msgspec.Struct):
    """An entry of a head's `errors` (`RunState.record_error`): the keys `show` and the Run page print."""

    stage: Any
    sample_id: Any
    type: Any
    message: Any
    at: datetime | None


class _Head(msgspec.Struct):
    """The shape of a run's head (`RunState.audit_head`; a whole trail of an earlier version,
    `AUDIT_SCHEMA`, has `stages` too) as far as readers rely on it: a hand edit may leave any
    JSON, and a head of another shape is a damaged one (checked once, here, where it is read).
    Keys it does not name are kept as they are; those it names may be absent (an earlier version)."""

    run_id: str
    status: str
    complete: bool = False
    pipeline: str | None = None
    started_at: datetime | None = None  # RFC 3339 text, as the daemon writes times
    finished_at: datetime | None = None
    duration_ms: _RunMilliseconds | None = None
    host: str | None = None
    pid: _Size | None = None
    dataset: str | None = None
    argv: list[Any] = []
    config: dict[str, Any] = {}
    environment: dict[str, Any] = {}
    error: dict[str, Any] | None = None
    counts: dict[str, _Size] = {}
    errors: list[_Error] = []
    errors_dropped: _Size = 0
    events_lost: _Size = 0
    gpu_sources: dict[str, str] = {}
    lost: dict[str, dict[str, Any]] = {}
    gaps: list[dict[str, Any]] = []
    clock_skew: dict[str, Any] | None = None
    running: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []
    stages_bytes: _Size | None = None
    stages_ended: _Size | None = None


def _check_head(audit: Any) -> None:
    """ValueError (msgspec's ValidationError is one) unless `audit` has a head's shape (`_Head`)."""
    msgspec.convert(audit, _Head)
    audit["stages_bytes"] = audit.get("stages_bytes") or 0


class _Memory(msgspec.Struct):
    rss_start_mb: _Megabytes | None = None
    rss_peak_mb: _Megabytes | None = None
    rss_end_mb: _Megabytes | None = None
    gpu_peak_mb: _Megabytes | None = None


class _StageLine(msgspec.Struct):
    """The shape of a line of stages.jsonl (`_projection.audit_json`) as far as readers rely on
    it, checked where each line is read: a line of another shape, or of values no stage has, is a
    damaged line (skipped and counted in `problems`, never printed). Keys it does not name are kept."""

    stage: str
    status: str | None = None
    span: _Span | None = None
    client_id: str | None = None
    start_ns: _Nanoseconds | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: _Milliseconds | None = None
    sample_id: str | None = None
    input_path: str | None = None
    parent_span: _Span | None = None
    memory: _Memory | None = None
    error: dict[str, Any] | None = None
    artifacts: list[dict[str, Any]] = []


def _stage_line(line: bytes) -> dict[str, Any] | None:
    """A stage line decoded, or None where it is damaged (not JSON, or not of `_StageLine`'s shape)."""
    if _line_problem(line) is not None:
        return None
    return _strict_json(line)


def _line_problem(line: bytes) -> str | None:
    """What is wrong with a stage line (msgspec's words), None if it is JSON of `_StageLine`'s
    shape (msgspec refuses NaN and Infinity, as JSON does), building nothing but the checked fields."""
    try:
        msgspec.json.decode(line, type=_StageLine)
    except msgspec.DecodeError as error:  # ValidationError is one
        return str(error)
    return None


class _DamagedLines:
    """The damaged lines a read of stages.jsonl skipped: how many, and the first (its number and
    what is wrong with it), said in the trail's `problems`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.first = ""

    def skipped(self, number: int, problem: str) -> None:
        if not self.count:
            self.first = f"line {number}: {problem}"
        self.count += 1

    def say(self, problems: list[str]) -> None:
        if self.count:
            problems.append(f"{self.count} damaged lines of {self.path} skipped (the first, {self.first})")


def _strict_json(data: bytes) -> Any:
    """JSON as the daemon writes it: NaN, Infinity and numbers past a float's range (1e999), which
    Python's json module takes and writes again, are refused (ValueError)."""
    return json.loads(data, parse_constant=_refused_constant, parse_float=_finite_float)


def _refused_constant(name: str) -> float:
    raise ValueError(f"{name} is no JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is past a float's range")
    return value


def _unreadable_lines(path: Path) -> str | None:
    """What keeps the run's stages.jsonl from being read (a directory in its place, say), None
    if it can be read or is missing (a run with no ended stage has none)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a directory, or a FIFO (whose open would wait for ever)
            return f"{path} is damaged (not a file): its stages are left out"
        with open(path, "rb"):
            return None
    except FileNotFoundError:
        return None
    except OSError as error:  # no permission to read it, say
        return f"{path} is damaged ({error.strerror or error}): its stages are left out"


def _unreadable(run_id: str, problem: str) -> dict[str, Any]:
    return {"run_id": run_id, "status": "unknown", "complete": False, "stages": [], "errors": [], "problems": [problem]}


class StageLines:
    """The ended stages of a run: the first `size` bytes of its stages.jsonl (all of it if
    None), complete lines only, read a chunk at a time. Lines lost by hand are spaces (the
    writer keeps the offsets): JSON allows them before the next line's value."""

    CHUNK = 4 << 20

    def __init__(self, path: Path, size: int | None, count: int | None = None) -> None:
        self.path = path
        self.size = size
        self.known_count = count  # the head's count of the lines in `size` (None: count them)

    def _chunks(self) -> Iterator[bytes]:
        """The file's bytes up to `size`, in chunks that each end at a line's end."""
        if _unreadable_lines(self.path) is not None:  # `_trail_of` said so
            return
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 (closed below; a generator)
        except OSError:  # missing
            return
        with handle:
            left = os.fstat(handle.fileno()).st_size if self.size is None else self.size
            rest = b""
            while left > 0 and (data := handle.read(min(self.CHUNK, left))):
                left -= len(data)
                data = rest + data
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                if cut:
                    yield data[:cut]

    def count(self) -> int:
        if self.known_count is not None:
            return self.known_count
        return sum(chunk.count(b"\n") for chunk in self._chunks())

    def page(self, offset: int, limit: int, problems: list[str]) -> list[dict[str, Any]]:
        """Stages `offset` to `offset + limit`, decoded; damaged lines are skipped and counted."""
        stages: list[dict[str, Any]] = []
        seen, damaged = 0, _DamagedLines(self.path)
        for chunk in self._chunks():
            if len(stages) >= limit:
                break
            if seen + (count := chunk.count(b"\n")) <= offset:
                seen += count
                continue
            lines = chunk.split(b"\n")[:-1]
            first = max(0, offset - seen)
            for number, line in enumerate(lines[first:][: limit - len(stages)], seen + first + 1):
                problem = _line_problem(line)
                if problem is None:
                    stages.append(_strict_json(line))
                else:
                    damaged.skipped(number, problem)
            seen += len(lines)
        damaged.say(problems)
        return stages

    def with_marker(self, marker: bytes, limit: int) -> Iterator[dict[str, Any]]:
        """The first `limit` stages whose line holds `marker`, decoded (a line that is not JSON, skipped)."""
        if limit <= 0:
            return
        for line in self.marked(marker):
            stage = _stage_line(line)  # a damaged line: skipped (`page` and `items` count them)
            if stage is not None:
                yield stage
                limit -= 1
            if limit <= 0:
                return

    def marked(self, marker: bytes) -> Iterator[bytes]:
        """The lines that hold `marker`, undecoded (a byte search of each chunk)."""
        for chunk in self._chunks():
            at = chunk.find(marker)
            while at >= 0:
                start, end = chunk.rfind(b"\n", 0, at) + 1, chunk.find(b"\n", at)
                yield chunk[start:end]
                at = chunk.find(marker, end)

    def items(self, problems: list[str]) -> Iterator[bytes]:
        """The stages as JSON array items, a chunk's worth joined by commas."""
        seen, damaged = 0, _DamagedLines(self.path)
        for chunk in self._chunks():
            good = []
            lines = chunk.split(b"\n")[:-1]
            for number, line in enumerate(lines, seen + 1):
                if not line.strip():
                    continue
                problem = _line_problem(line)
                if problem is None:
                    good.append(line)
                else:
                    damaged.skipped(number, problem)
            seen += len(lines)
            if good:
                yield b",".join(good)
        damaged.say(problems)


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
