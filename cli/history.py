"""What happened: `runs`, `show`, `query`, `stats`, `export`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stagewatch.cli._options import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    filter_options,
    filters_of,
    home_of,
    home_options,
    home_or_homes,
    homes_of,
    json_option,
    paging_int,
    positive_int,
    warn_of_rebuilds,
)
from stagewatch.cli._report import (
    MESSAGE_LINES,
    cell,
    columns,
    executions_table,
    format_accuracy,
    message_text,
    name_cell,
    padded,
    stats_table,
)
from stagewatch.daemon.base._layout import DaemonHome

SHOW_LIMIT = 100  # stages of the trail that `show --json` prints a page (--all: every one)
SHOW_ROWS = 20  # executions `show` lists a page
SHOW_ERRORS = 10  # errors `show` prints with their tracebacks (the others: counted)


def add_commands(commands: Any) -> None:
    runs = commands.add_parser("runs", help="list recent runs")
    home_options(runs, endpoint=False)
    runs.add_argument("--limit", type=positive_int, default=20)
    runs.add_argument("--host", help="runs on this host (several homes read as one: each row names its host)")
    json_option(runs)
    runs.set_defaults(handler=cmd_runs)

    show = commands.add_parser(
        "show", help="show a run: its summary, per-stage statistics, its errors and a page of its stage executions"
    )
    home_options(show, endpoint=False)
    show.add_argument("run_id", help="a run id or a unique prefix of one")
    json_option(show, f"print the audit trail as JSON: its head and a page of its stages ({SHOW_LIMIT} a page)")
    show.add_argument("--all", action="store_true", help="with --json: every stage, streamed (a run of any length)")
    show.add_argument("--page", type=paging_int, default=1, help="which page of stage executions (1)")
    show.add_argument(
        "--limit", type=paging_int, help=f"stage executions a page ({SHOW_LIMIT} with --json, else {SHOW_ROWS})"
    )
    show.add_argument(
        "--order",
        choices=["failures", "time"],
        default="failures",
        help="the executions listed: failures first, then by start (default), or by start alone",
    )
    show.set_defaults(handler=cmd_show)

    query = commands.add_parser("query", help="runs, stage executions and log lines matching filters")
    filter_options(query)
    query.add_argument("--limit", type=positive_int, default=100, help="rows per table to print (100)")
    json_option(query)
    query.set_defaults(handler=cmd_query)

    stats = commands.add_parser("stats", help="per-stage count, mean, median, p95, p99, max, failure rate")
    filter_options(stats)
    json_option(stats)
    stats.set_defaults(handler=cmd_stats)

    export = commands.add_parser("export", help="write the matching runs, stages and logs to a file")
    filter_options(export)
    export.add_argument(
        "--table",
        action="append",
        choices=["runs", "stages", "logs"],
        help="only this table (repeat for more); `--table logs` is the Logs page's download",
    )
    export.add_argument("--output", required=True, help="the file to write ('-' for stdout)")
    export.add_argument("--format", choices=["json", "jsonl"], default="json", help="json (default) or JSON Lines")
    export.set_defaults(handler=cmd_export)


def _filters(args: argparse.Namespace) -> tuple[Path | list[Path], Any] | None:
    """The homes read and the filters; None (said, exit 1) if the run is unknown."""
    from stagewatch.daemon import RunNotFound

    home = home_or_homes(args)
    try:
        return home, filters_of(args, home)
    except RunNotFound as error:
        fail(str(error), EXIT_NOT_FOUND)
        return None


def cmd_runs(args: argparse.Namespace) -> int:
    from stagewatch.daemon import list_runs
    from stagewatch.daemon.projection import _outcomes as outcomes
    from stagewatch.daemon.query._readmodels import tables_not_whole

    home = home_or_homes(args)
    runs = list_runs(home, args.limit, args.host)
    if args.json:
        print(json.dumps(runs, indent=1))
        return EXIT_OK
    if not runs:
        homes = home if isinstance(home, list) else [home]
        if tables_not_whole(homes):  # said above: "no runs yet" would be untrue
            print("no runs to list now: a table is being rebuilt or is gone (the warning above)")
            return EXIT_OK
        missing = [str(one) for one in homes if not one.is_dir()]
        where = (
            ""
            if not missing
            else " (it does not exist yet)"
            if len(homes) == 1
            else f" ({', '.join(missing)} does not exist yet)"
        )
        named = ", ".join(str(one) for one in homes)
        print(f"no runs yet in {named}{where}: run a pipeline with stagewatch.init(), or `stagewatch demo`;")
        print("another home: --home PATH or STAGEWATCH_HOME")
        return EXIT_OK
    print(
        f"{'run id':<38}{'pipeline':<14}{'host':<14}{'started (UTC)':<21}{'duration s':>11}  {'status':<23}failed stage"
    )
    for run in runs:
        duration = f"{run['duration_ms'] / 1000:.2f}" if run["duration_ms"] is not None else "-"
        started = (run["started_at"] or "-")[:19].replace("T", " ")
        print(
            f"{run['run_id']:<38}{(run['pipeline'] or '-'):<14}{(run['host'] or '-'):<14}{started:<21}{duration:>11}  "
            f"{outcomes.label(run['status']):<23}{run['failed_stage'] or ''}"
        )
    return EXIT_OK


def cmd_query(args: argparse.Namespace) -> int:
    """A page of each list (--limit rows, read alone: LIMIT in SQL) and how many each holds (count(*))."""
    from stagewatch.daemon.query._export import holds, matching_wheres, page

    found = _filters(args)
    if found is None:
        return EXIT_NOT_FOUND
    home, filters = found
    wheres = matching_wheres(home, filters)
    held = holds(filters)  # what each list is, in words (a status filters runs or executions)
    if args.json:
        return _query_json(home, filters, wheres, held, args)
    logs, logs_total = page(home, "logs", wheres["logs"], args.limit)
    if args.level or args.logger:  # filters of log lines alone: no run or stage execution has a level
        print(f"{logs_total} log line(s){_of_level(args)}{_of_status(args)}, in time order")
    else:
        _print_stages(home, wheres, held, args, logs_total)
        if logs:
            print(f"{held['logs']}, in time order:")
    for row in logs:
        cells = f"  {_host_cell(row)}{row['time'][:23]} {row['level']:<8} {row['stage'] or '-':<14} "
        cells += padded(message_text(row["sample_id"] or "-", None), 12) + " "
        print(cells + message_text(row["message"], columns(cells), MESSAGE_LINES))  # its further lines under its first
    if logs_total > len(logs):
        print(f"  ... the first {len(logs)} of {logs_total}: --limit N shows more, --json all fields")
    return EXIT_OK


def _query_json(home: Any, filters: Any, wheres: dict[str, Any], held: dict[str, str], args: argparse.Namespace) -> int:
    """Each list's first --limit rows, `counts` (how many each holds, so a reader knows when
    --limit cut one) and `holds`; with --run, the run's audit trail (--limit stages of it)."""
    from stagewatch.daemon import load_audit
    from stagewatch.daemon.query._export import page

    pages = {name: page(home, name, where, args.limit) for name, where in wheres.items()}
    answer: dict[str, Any] = {name: rows for name, (rows, _) in pages.items()}
    if filters.run:  # the run's execution history: its audit trail and its log lines
        run_id = answer["runs"][0]["run_id"] if answer["runs"] else None
        holder = next((h for h in homes_of(args) if run_id and DaemonHome.of(h).run(run_id).is_dir()), None)
        answer["audit"] = load_audit(holder, run_id, limit=args.limit) if holder else None
    answer["counts"] = {name: total for name, (_, total) in pages.items()}
    answer["holds"] = held
    _print_json(answer)
    return EXIT_OK


JSON_PIECES = 1 << 16  # pieces of encoded JSON written at once


def _print_json(answer: dict[str, Any]) -> None:
    """`answer` as indented JSON on stdout, written as it is encoded (a large --limit: the text
    of every row is never one string)."""
    pieces: list[str] = []
    for piece in json.JSONEncoder(indent=1, default=str).iterencode(answer):
        pieces.append(piece)
        if len(pieces) >= JSON_PIECES:
            sys.stdout.write("".join(pieces))
            pieces.clear()
    print("".join(pieces))


def _print_stages(
    home: Any, wheres: dict[str, Any], held: dict[str, str], args: argparse.Namespace, logs_total: int
) -> None:
    """The counts, and the stage executions: those the filters name (a stage, a status, a run),
    else those that did not end ok (the ok ones are counted)."""
    from stagewatch.daemon.query._export import count, page

    named = bool(args.stage or args.run or args.status)
    stages = wheres["stages"]
    listed = stages if named or stages is None else stages.copy().add("status IS DISTINCT FROM 'ok'")
    shown, listed_total = page(home, "stages", listed, args.limit)
    stages_total = listed_total if listed is stages else count(home, "stages", stages)
    print(f"{count(home, 'runs', wheres['runs'])} run(s), {stages_total} stage execution(s), {logs_total} log line(s)")
    if args.status:
        print(f"  ({held['runs']}; {held['stages']}; {held['logs']})")
    if shown:
        print(f"{held['stages'] if named else 'stage executions that did not end ok'}:")
    for row in shown:
        sample = message_text(row["sample_id"] or "-", None)
        print(
            f"  {_host_cell(row)}{row['run_id'][:8]} {row['stage']:<16} {padded(sample, 12)} "
            f"{row['status']:<8} {row['start_time'][:19]} {row['duration_ms']:>9.2f} ms  "
            f"{message_text(row['error_message'] or '', None)}"
        )
    if listed_total > len(shown):
        print(f"  ... the first {len(shown)} of {listed_total}: --limit N shows more, --json all fields")


def _host_cell(row: dict[str, Any]) -> str:
    """The row's host first, when it has one (rows read over several homes)."""
    return f"{row['host'] or '-':<14} " if "host" in row else ""


def _of_status(args: argparse.Namespace) -> str:
    """' of stage executions that ended failed' as --status says (log lines logged in them)."""
    from stagewatch.daemon.query._export import matched_by

    return f" of {matched_by(args.status)}" if args.status else ""


def _of_level(args: argparse.Namespace) -> str:
    """' at WARNING or above from logger x' as the filters say."""
    return (f" at {args.level.upper()} or above" if args.level else "") + (
        f" from logger {args.logger}" if args.logger else ""
    )


def cmd_stats(args: argparse.Namespace) -> int:
    from stagewatch.daemon import RunNotFound, query_gpu_devices, query_stats
    from stagewatch.daemon.query._exemplars import query_exemplars
    from stagewatch.daemon.query._gaps import OUTSIDE_STAGES, with_outside_stages
    from stagewatch.daemon.query._readmodels import table_not_read
    from stagewatch.daemon.tables._tables import DamagedTable

    home = home_or_homes(args)
    try:
        filters = filters_of(args, home)
        stats = query_stats(home, filters)
        # Per device only where some stage had a GPU reading (the totals say so): 0.2 s saved at 1M runs.
        gpu = query_gpu_devices(home, filters) if any(s["gpu_peak_mb"]["max"] is not None for s in stats) else {}
    except RunNotFound as error:
        return fail(str(error), EXIT_NOT_FOUND)
    for entry in stats:  # per device beside the totals: {"sources": [...], "devices": {"0": {...}}}
        entry["gpu"] = gpu.get(entry["stage"])
    exemplars = query_exemplars(home, filters)
    for entry in stats:  # the executions behind p95, p99 and max, with links to their sample and logs
        entry["exemplars"] = exemplars.get(entry["stage"])
    try:
        stats = with_outside_stages(home, filters, stats)
        unread = None
    except DamagedTable as error:  # the runs table, read for that row alone: the stages are shown still
        unread = f"{OUTSIDE_STAGES} not shown: {table_not_read(error)}"
    if args.json:
        print(json.dumps(stats if unread is None else [*stats, {"stage": OUTSIDE_STAGES, "problem": unread}], indent=1))
        return EXIT_OK
    # Each heading says its unit (ms, MB, %), as `show`'s table and the dashboard's do.
    if not stats:  # the heading over nothing, and a note on GPU readings, said nothing of why
        print("no stage execution matches these filters (stagewatch runs lists what there is)")
        if unread is not None:
            print(unread)
        return EXIT_OK
    stage_width = min(STAGE_WIDTH_MAX, max([STAGE_WIDTH, *(columns(entry["stage"]) + 1 for entry in stats)]))
    print(
        f"{name_cell('stage', stage_width)}{cell('count', 8)}{cell('failed', 8)}"
        + "".join(cell(name + " ms", MS_WIDTH) for name in DURATIONS)
        + f"{cell('own MB', 9)}{cell('proc. peak MB', PEAK_WIDTH)}{cell('time %', 8)}"
        + (cell("GPU peak MB", GPU_WIDTH) if gpu else "")
    )
    for entry in stats:
        if entry.get("outside_stages"):
            print(outside_line(entry, stage_width))
            continue
        gpu_peak = entry["gpu_peak_mb"]["max"]
        print(
            f"{name_cell(entry['stage'], stage_width)}{cell(str(entry['count']), 8)}"
            f"{cell(format(entry['failure_rate'], '.1%'), 8)}{_ms_cells(entry)}{_mb_cell(entry['own_mb']['max'], 9)}"
            f"{_mb_cell(entry['rss_peak_mb']['max'], PEAK_WIDTH)}{cell(format(entry['share_of_time'], '.1%'), 8)}"
            + (_mb_cell(gpu_peak, GPU_WIDTH) if gpu else "")
            + ("  <- bottleneck" if entry.get("bottleneck") else "")
        )
        if entry["gpu"]:
            print("  " + gpu_line(entry["gpu"]))
    if unread is not None:
        print(unread)
    print("own MB: the most a stage's RSS rose above its start; proc. peak: the process's peak RSS during it")
    if not gpu:
        print("no GPU readings in these stages (a host without a GPU, or no framework on one: docs/gpu.md)")
    return EXIT_OK


DURATIONS = ("mean", "median", "p95", "p99", "max")  # the stats table's columns of milliseconds
# The stage column: as wide as the longest name (past the most, a longer name pushes its row on).
STAGE_WIDTH, STAGE_WIDTH_MAX = 18, 41
MS_WIDTH, PEAK_WIDTH, GPU_WIDTH = 12, 15, 13  # wide enough for their headings with the unit


def _ms_cells(entry: dict[str, Any]) -> str:
    durations = entry["duration_ms"]
    return "".join(cell(f"{durations[k] or 0.0:.2f}", MS_WIDTH) for k in DURATIONS)


def _mb_cell(value: float | None, width: int) -> str:
    return cell(f"{value:.1f}" if value is not None else "-", width)


def outside_line(entry: dict[str, Any], stage_width: int = 18) -> str:
    """The time outside stages as a row of the stats table (per sample), then the wall time it
    completes: 'wall 1234.00 ms over 2 run(s) = stages 1000.00 ms + outside stages 234.00 ms'."""
    wall = entry["wall"]
    return (
        f"{name_cell(entry['stage'], stage_width)}{cell(str(entry['count']), 8)}{cell('-', 8)}{_ms_cells(entry)}"
        f"{_mb_cell(None, 9)}{_mb_cell(None, PEAK_WIDTH)}{cell(format(entry['share_of_time'], '.1%'), 8)}\n"
        f"  wall {wall['wall_ms']:.2f} ms over {wall['runs']} finished run(s) = top-level stages "
        f"{wall['stages_ms']:.2f} ms + outside stages {wall['outside_ms']:.2f} ms (data loading, I/O, glue)"
    )


def gpu_line(gpu: dict[str, Any]) -> str:
    """'GPU (torch) by device: 0 max 1024.0 MB, median 1000.0 · 1 max 256.0 MB, median 250.0'."""
    devices = " · ".join(
        f"{device} max {d['max']:.1f} MB, median {d['median']:.1f}" for device, d in gpu["devices"].items()
    )
    return f"GPU ({', '.join(gpu['sources'])}) by device: {devices or 'none allocated'}"


def cmd_export(args: argparse.Namespace) -> int:
    """Every matching row, written a batch at a time (`export_chunks`) as it is made into JSON."""
    if args.output != "-" and (not args.output or Path(args.output).is_dir()):
        return fail(f"expected --output to name a file (or '-' for stdout), got {args.output!r}", EXIT_USAGE)
    from stagewatch.daemon.query._export import TABLES, export_chunks, matching_tables

    found = _filters(args)
    if found is None:
        return EXIT_NOT_FOUND
    wanted = tuple(name for name in TABLES if name in (args.table or TABLES))
    tables = matching_tables(*found, wanted)  # read before the file is opened: a refused query writes nothing
    if args.output == "-":
        for chunk in export_chunks(tables, args.format):
            sys.stdout.write(chunk)
        return EXIT_OK
    try:
        with open(args.output, "w", encoding="utf-8") as output:
            for chunk in export_chunks(tables, args.format):
                output.write(chunk)
    except OSError as error:
        return fail(f"cannot write {args.output} ({error.strerror or error})", EXIT_USAGE)
    counts = ", ".join(f"{table.num_rows} {name}" for name, table in tables.items())
    print(f"wrote {counts} to {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from stagewatch.daemon import RunNotFound, resolve_run_id
    from stagewatch.daemon.query._readmodels import load_accuracy

    home = home_of(args).root
    warn_of_rebuilds([home])
    if args.all and not args.json:
        return fail("--all goes with --json (the whole trail as one JSON document)", EXIT_USAGE)
    if not args.run_id.strip():  # no run named: a usage error, as `query --run ""` is
        return fail(f"expected a run id or a unique prefix of one, got {args.run_id!r}", EXIT_USAGE)
    try:
        run_id = resolve_run_id(home, args.run_id)
    except RunNotFound as error:
        return fail(str(error), EXIT_NOT_FOUND)
    accuracy = load_accuracy(home, run_id)
    if args.json:
        return _show_json(home, run_id, args, {"accuracy": accuracy} if accuracy else {})
    try:
        _print_run(home, run_id, args)
    except ValueError as error:  # QueryError: the tables could not answer
        return fail(str(error), EXIT_USAGE)
    if accuracy:
        print(f"\naccuracy against {accuracy['dataset']}{'' if accuracy['finished'] else ' (so far)'}:")
        print(format_accuracy(accuracy))
    return EXIT_OK


def _outside_stages_line(row: dict[str, Any] | None, splits: list[dict[str, Any]]) -> str:
    """The run's time outside stages (`outside_stages`), the row beside the stage table, and its
    wall time split."""
    from stagewatch.daemon.query._gaps import OUTSIDE_STAGES

    if row is None:
        return f"  {OUTSIDE_STAGES:<20}(no wall time recorded yet)"
    d = row["duration_ms"]
    line = (
        f"  {name_cell(OUTSIDE_STAGES, 20)}{cell(format(row['count'], ','), 10)}{cell('-', 8)}"
        f"{cell(format(d['median'], '.2f'), 12)}{cell(format(d['p95'], '.2f'), 10)}{cell(format(d['max'], '.2f'), 10)}"
        "  (per sample)"
    )
    for split in splits:
        line += (
            f"\n  wall {split['wall_ms']:.2f} ms = top-level stages {split['stages_ms']:.2f} ms"
            f" + outside stages {split['outside_ms']:.2f} ms (data loading, I/O, the pipeline's glue)"
        )
    return line


def _or_not_read(call: Any, *args: Any) -> Any:
    """`call(*args)`, or the words said in its place when a table it reads cannot be read."""
    from stagewatch.daemon.query._readmodels import table_not_read
    from stagewatch.daemon.tables._tables import DamagedTable

    try:
        return call(*args)
    except DamagedTable as error:
        return f"not shown: {table_not_read(error)}"


def _show_json(home: Path, run_id: str, args: argparse.Namespace, extra: dict[str, Any]) -> int:
    """The trail as JSON: a page of its stages (`stages_page` says which), or with --all every
    stage, streamed a few megabytes at a time (a run of a million stages is 450 MB of JSON)."""
    from stagewatch.daemon.query._readmodels import audit_json_chunks, load_audit

    if args.all:
        for chunk in audit_json_chunks(home, run_id, extra):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.write(b"\n")
        return EXIT_OK
    limit = args.limit or SHOW_LIMIT
    audit = load_audit(home, run_id, offset=(args.page - 1) * limit, limit=limit)
    print(json.dumps(audit | extra, indent=1))
    return EXIT_OK


def _print_run(home: Path, run_id: str, args: argparse.Namespace) -> None:
    """The run's head, its per-stage statistics (SQL over its rows), its first errors with their
    tracebacks, and a page of its executions: whatever the run's length, nothing of it is read whole."""
    from stagewatch.daemon.query._gaps import OUTSIDE_STAGES, outside_stages
    from stagewatch.daemon.query._query import Filters, executions_page, query_gpu_devices, run_stages
    from stagewatch.daemon.query._readmodels import FAILED, load_audit_head, stages_with, to_rows
    from stagewatch.daemon.query._sql import concurrently

    audit = load_audit_head(home, run_id)
    print(f"{'run':<13}{audit['run_id']}")
    for key in ("pipeline", "status", "started_at", "finished_at", "duration_ms", "host", "pid", "dataset"):
        if audit.get(key) is not None:
            print(f"{key:<13}{audit[key]}")
    if isinstance(audit.get("clock_skew"), dict):  # its times are the pipeline's, as stamped
        print(f"{'clock':<13}{audit['clock_skew'].get('message')}")
    for problem in audit.get("problems", []):
        print(f"INCOMPLETE: {problem}")
    limit = args.limit or SHOW_ROWS
    stages, outside, failed, executions = concurrently(  # independent reads, overlapping
        (_or_not_read, run_stages, home, run_id),
        (_or_not_read, outside_stages, home, Filters(run=run_id)),
        (stages_with, home, run_id, FAILED, SHOW_ERRORS),
        (_or_not_read, executions_page, home, run_id, args.order, (args.page - 1) * limit, limit),
    )
    if isinstance(stages, str):  # the trail is whole: the rest is shown still
        print(f"  per-stage figures {stages}")
    else:
        readings = any(s["gpu_peak_mb"]["max"] is not None for s in stages)
        gpu = query_gpu_devices(home, Filters(run=run_id)) if readings else {}
        print(stats_table(stages, gpu, audit.get("host")))
    print(f"  {OUTSIDE_STAGES:<20}{outside}" if isinstance(outside, str) else _outside_stages_line(*outside))
    for source, sees in (audit.get("gpu_sources") or {}).items():
        print(f"GPU readings from {source}: {sees}")
    _print_errors(audit, failed)
    if isinstance(executions, str):
        print(f"\nexecutions {executions} (`show --json` pages them from the trail)")
    else:
        page, total = executions
        print(executions_table(to_rows(page), (args.page - 1) * limit, total, args.order))
    counts = audit.get("counts") or {}
    print(f"\n{counts.get('artifacts', 0)} saved outputs under {DaemonHome.of(home).stage_outputs(run_id)}/")
    print("--json prints the trail (a page of its stages; --json --all every one)")


def _print_errors(audit: dict[str, Any], failed: list[dict[str, Any]]) -> None:
    """The run's first errors, each with its traceback (from its stage line)."""
    tracebacks = {(s.get("client_id"), s.get("span")): (s.get("error") or {}).get("traceback") for s in failed}
    errors = audit.get("errors", [])
    for error in errors[:SHOW_ERRORS]:
        sample = f" on {message_text(error['sample_id'], None)}" if error.get("sample_id") is not None else ""
        message = message_text(error["message"], 2, MESSAGE_LINES)
        print(f"\n{error['stage']} failed{sample} at {error['at']}: {error['type']}: {message}")
        if error.get("input_path") is not None:  # a stage the pipeline gave no input has none to show
            print(f"  input: {error['input_path']}")
        traceback = tracebacks.get((error.get("client_id"), error.get("span")))
        if traceback:
            print("  " + message_text(traceback, 2))
    more = len(errors) - SHOW_ERRORS + (audit.get("errors_dropped") or 0)
    if more > 0:
        print(f"\n... and {more:,} more errors: the executions below list them (--order failures)")
