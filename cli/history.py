"""What happened: `runs`, `show`, `query`, `stats`, `export`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stagewatch._home import Home
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
    positive_int,
)
from stagewatch.cli._report import format_accuracy, stage_table


def add_commands(commands: Any) -> None:
    runs = commands.add_parser("runs", help="list recent runs")
    home_options(runs, endpoint=False)
    runs.add_argument("--limit", type=positive_int, default=20)
    json_option(runs)
    runs.set_defaults(handler=cmd_runs)

    show = commands.add_parser("show", help="show a run's audit trail")
    home_options(show, endpoint=False)
    show.add_argument("run_id", help="a run id or a unique prefix of one")
    json_option(show, "print the full audit trail as JSON")
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
    export.add_argument("--output", required=True, help="the file to write ('-' for stdout)")
    export.add_argument("--format", choices=["json", "jsonl"], default="json", help="json (default) or JSON Lines")
    export.set_defaults(handler=cmd_export)


def _matching(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]] | None:
    """Rows of every table that match the filters, as JSON-ready dicts; None if the run is unknown."""
    from stagewatch.daemon import RunNotFound
    from stagewatch.daemon._export import matching

    home = home_or_homes(args)
    try:
        return matching(home, filters_of(args, home))
    except RunNotFound as error:
        fail(str(error), EXIT_NOT_FOUND)
        return None


def cmd_runs(args: argparse.Namespace) -> int:
    from stagewatch.daemon import list_runs

    home = home_or_homes(args)
    runs = list_runs(home, args.limit)
    if args.json:
        print(json.dumps(runs, indent=1))
        return EXIT_OK
    if not runs:
        homes = home if isinstance(home, list) else [home]
        where = "" if all(one.is_dir() for one in homes) else " (not every one exists yet)"
        named = ", ".join(str(one) for one in homes)
        print(f"no runs yet in {named}{where}: run a pipeline with stagewatch.init(), or `stagewatch demo`;")
        print("another home: --home PATH or STAGEWATCH_HOME")
        return EXIT_OK
    print(
        f"{'run id':<38}{'pipeline':<14}{'host':<14}{'started (UTC)':<21}{'duration s':>11}  {'status':<9}failed stage"
    )
    for run in runs:
        duration = f"{run['duration_ms'] / 1000:.2f}" if run["duration_ms"] is not None else "-"
        started = (run["started_at"] or "-")[:19].replace("T", " ")
        print(
            f"{run['run_id']:<38}{(run['pipeline'] or '-'):<14}{(run['host'] or '-'):<14}{started:<21}{duration:>11}  "
            f"{run['status']:<9}{run['failed_stage'] or ''}"
        )
    return EXIT_OK


def cmd_query(args: argparse.Namespace) -> int:
    matched = _matching(args)
    if matched is None:
        return EXIT_NOT_FOUND
    if args.run:  # the run's complete execution history: audit trail and every log line
        from stagewatch.daemon import load_audit

        run_id = matched["runs"][0]["run_id"] if matched["runs"] else None
        holder = next((h for h in homes_of(args) if run_id and Home.of(h).run(run_id).is_dir()), None)
        matched["audit"] = load_audit(holder, run_id) if holder else None
    if args.json:
        limited = {name: rows[: args.limit] if isinstance(rows, list) else rows for name, rows in matched.items()}
        print(json.dumps(limited, indent=1, default=str))
        return EXIT_OK
    counts = {name: len(rows) for name, rows in matched.items() if isinstance(rows, list)}
    print(f"{counts['runs']} run(s), {counts['stages']} stage execution(s), {counts['logs']} log line(s)")
    for row in matched["stages"][: args.limit]:
        if row["status"] != "ok" or args.stage or args.run:
            print(
                f"  {row['run_id'][:8]} {row['stage']:<16} {row['sample_id'] or '-':<12} {row['status']:<8} "
                f"{row['start_time'][:19]} {row['duration_ms']:>9.2f} ms  {row['error_message'] or ''}"
            )
    for row in matched["logs"][: args.limit]:
        print(f"  {row['time'][:23]} {row['level']:<8} {row['stage'] or '-':<14} {row['message']}")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    from stagewatch.daemon import RunNotFound, query_gpu_devices, query_stats
    from stagewatch.daemon._exemplars import query_exemplars
    from stagewatch.daemon._gaps import with_outside_stages

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
    stats = with_outside_stages(home, filters, stats)
    if args.json:
        print(json.dumps(stats, indent=1))
        return EXIT_OK
    print(
        f"{'stage':<18}{'count':>8}{'failed':>8}{'mean':>9}{'median':>9}{'p95':>9}{'p99':>9}{'max':>9}"
        f"{'peak RSS':>10}{'time %':>8}" + (f"{'GPU peak':>10}" if gpu else "")
    )
    for entry in stats:
        if entry.get("outside_stages"):
            print(outside_line(entry))
            continue
        d = entry["duration_ms"]
        cells = "".join(f"{d[k] or 0.0:>9.2f}" for k in ("mean", "median", "p95", "p99", "max"))
        gpu_peak = entry["gpu_peak_mb"]["max"]
        print(
            f"{entry['stage']:<18}{entry['count']:>8}{entry['failure_rate']:>8.1%}{cells}"
            f"{entry['rss_peak_mb']['max'] or 0:>10.1f}{entry['share_of_time']:>8.1%}"
            + ((f"{gpu_peak:>10.1f}" if gpu_peak is not None else f"{'-':>10}") if gpu else "")
            + ("  <- bottleneck" if entry.get("bottleneck") else "")
        )
        if entry["gpu"]:
            print("  " + gpu_line(entry["gpu"]))
    if not gpu:
        print("no GPU readings in these stages (a host without a GPU, or no framework on one: docs/gpu.md)")
    return EXIT_OK


def outside_line(entry: dict[str, Any]) -> str:
    """The time outside stages as a row of the stats table (per sample), then the wall time it
    completes: 'wall 1234.00 ms over 2 run(s) = stages 1000.00 ms + outside stages 234.00 ms'."""
    d, wall = entry["duration_ms"], entry["wall"]
    cells = "".join(f"{d[k] or 0.0:>9.2f}" for k in ("mean", "median", "p95", "p99", "max"))
    return (
        f"{entry['stage']:<18}{entry['count']:>8}{'-':>8}{cells}{'-':>10}{entry['share_of_time']:>8.1%}\n"
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
    if args.output != "-" and (not args.output or Path(args.output).is_dir()):
        return fail(f"expected --output to name a file (or '-' for stdout), got {args.output!r}", EXIT_USAGE)
    matched = _matching(args)
    if matched is None:
        return EXIT_NOT_FOUND
    from stagewatch.daemon._export import export_chunks

    text = "".join(export_chunks(matched, args.format))
    if args.output == "-":
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(args.output).write_text(text)
    except OSError as error:
        return fail(f"cannot write {args.output} ({error.strerror or error})", EXIT_USAGE)
    counts = ", ".join(f"{len(rows)} {name}" for name, rows in matched.items())
    print(f"wrote {counts} to {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from stagewatch.daemon import RunNotFound, load_audit, resolve_run_id
    from stagewatch.daemon._readmodels import load_accuracy

    home = home_of(args).root
    try:
        run_id = resolve_run_id(home, args.run_id)
    except RunNotFound as error:
        return fail(str(error), EXIT_NOT_FOUND)
    audit = load_audit(home, run_id)
    accuracy = load_accuracy(home, run_id)
    if args.json:
        print(json.dumps(audit | ({"accuracy": accuracy} if accuracy else {}), indent=1))
        return EXIT_OK
    _print_audit(audit, Home.of(home))
    if accuracy:
        print(f"\naccuracy against {accuracy['dataset']}{'' if accuracy['finished'] else ' (so far)'}:")
        print(format_accuracy(accuracy))
    return EXIT_OK


def _outside_stages_of(home: Path, run_id: str) -> str:
    """The run's time outside stages, the row beside the stage table, and its wall time split."""
    from stagewatch.daemon import Filters
    from stagewatch.daemon._gaps import OUTSIDE_STAGES, outside_stages_stats, run_time_split

    row = outside_stages_stats(home, Filters(run=run_id))
    if row is None:
        return f"  {OUTSIDE_STAGES:<20}(no wall time recorded yet)"
    d = row["duration_ms"]
    line = f"  {OUTSIDE_STAGES:<20}{row['count']:>6}{'-':>8}{d['median']:>12.2f}{d['max']:>10.2f}  (per sample)"
    for split in run_time_split(home, Filters(run=run_id)):
        line += (
            f"\n  wall {split['wall_ms']:.2f} ms = top-level stages {split['stages_ms']:.2f} ms"
            f" + outside stages {split['outside_ms']:.2f} ms (data loading, I/O, the pipeline's glue)"
        )
    return line


def _print_audit(audit: dict[str, Any], home: Home) -> None:
    print(f"{'run':<13}{audit['run_id']}")
    for key in ("pipeline", "status", "started_at", "finished_at", "duration_ms", "host", "pid", "dataset"):
        if audit.get(key) is not None:
            print(f"{key:<13}{audit[key]}")
    for problem in audit.get("problems", []):
        print(f"INCOMPLETE: {problem}")
    print(stage_table(audit.get("stages", []), audit.get("host")))
    print(_outside_stages_of(home.root, audit["run_id"]))
    for source, sees in (audit.get("gpu_sources") or {}).items():
        print(f"GPU readings from {source}: {sees}")
    for error in audit.get("errors", []):
        where = f"{error['stage']} failed on {error['sample_id']} at {error['at']}"
        print(f"\n{where}: {error['type']}: {error['message']}")
        print(f"  input: {error.get('input_path')}")
        stage = next((s for s in audit["stages"] if (s["span"], s["stage"]) == (error["span"], error["stage"])), None)
        if stage and stage.get("error") and stage["error"].get("traceback"):
            print("  " + stage["error"]["traceback"].rstrip().replace("\n", "\n  "))
    artifacts = sum(len(s.get("artifacts", [])) for s in audit.get("stages", []))
    print(f"\n{artifacts} saved outputs under {home.stage_outputs(audit['run_id'])}/; --json prints everything")
