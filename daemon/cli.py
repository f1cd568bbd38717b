"""The `stagewatch` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from stagewatch._config import resolve_endpoint, resolve_home

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:  # bad configuration or arguments found past argparse
        print(f"stagewatch: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:  # fmt: skip
    print(f"stagewatch: warning: {message}", file=sys.stderr)  # what a user reads, not where it came from


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stagewatch", description="Monitor perception pipelines.")
    commands = parser.add_subparsers(dest="command", required=True)

    daemon = commands.add_parser("daemon", help="run the daemon in the foreground")
    _config_options(daemon)
    daemon.set_defaults(handler=cmd_daemon)

    config = commands.add_parser("config", help="the effective configuration")
    config_actions = config.add_subparsers(dest="action", required=True)
    show_config = config_actions.add_parser("show", help="print every value and where it came from")
    _config_options(show_config)
    show_config.add_argument("--json", action="store_true", help="print JSON")
    config.set_defaults(handler=cmd_config)

    demo = commands.add_parser("demo", help="start a daemon, run the demo pipeline, show where results are")
    _home_options(demo)
    demo.add_argument("--frames", type=_frames, default=60, help="frames to process (48 or more; 60)")
    demo.add_argument("--keep-daemon", action="store_true", help="leave the daemon running afterwards")
    demo.add_argument("--no-ui", action="store_true", help="print the summary and exit; no dashboard")
    demo.add_argument("--port", type=_port, default=5006, help="the dashboard's port on 127.0.0.1 (5006)")
    demo.set_defaults(handler=cmd_demo)

    runs = commands.add_parser("runs", help="list recent runs")
    _home_options(runs, endpoint=False)
    runs.add_argument("--limit", type=_positive_int, default=20)
    runs.add_argument("--json", action="store_true", help="print JSON")
    runs.set_defaults(handler=cmd_runs)

    keys = commands.add_parser("keys", help="CURVE keys for a TCP ingest endpoint")
    common = argparse.ArgumentParser(add_help=False)
    _home_options(common, endpoint=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    keys_actions = keys.add_subparsers(dest="action", required=True)
    keys_actions.add_parser("init", parents=[common], help="create the daemon's key pair")
    add = keys_actions.add_parser("add", parents=[common], help="create and authorize a client key pair")
    add.add_argument("name", help="a name for the client (letters, digits, '_', '-', '.')")
    keys_actions.add_parser("list", parents=[common], help="list the daemon's public key and the authorized clients")
    keys.set_defaults(handler=cmd_keys)

    doctor = commands.add_parser("doctor", help="check the daemon, the disk and the data; exit 1 on problems")
    _config_options(doctor)
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(handler=cmd_doctor)

    gc = commands.add_parser("gc", help="apply retention now: remove expired runs and event-log segments")
    _config_options(gc)
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    gc.add_argument("--json", action="store_true", help="print JSON")
    gc.set_defaults(handler=cmd_gc)

    rebuild = commands.add_parser("rebuild", help="regenerate every read model from the event log")
    _home_options(rebuild, endpoint=False)
    rebuild.add_argument("--json", action="store_true", help="print JSON")
    rebuild.set_defaults(handler=cmd_rebuild)

    query = commands.add_parser("query", help="runs, stage executions and log lines matching filters")
    _filter_options(query)
    query.add_argument("--limit", type=_positive_int, default=100, help="rows per table to print (100)")
    query.add_argument("--json", action="store_true", help="print JSON")
    query.set_defaults(handler=cmd_query)

    stats = commands.add_parser("stats", help="per-stage count, mean, median, p95, p99, max, failure rate")
    _filter_options(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=cmd_stats)

    export = commands.add_parser("export", help="write the matching runs, stages and logs to a file")
    _filter_options(export)
    export.add_argument("--output", required=True, help="the file to write ('-' for stdout)")
    export.add_argument("--format", choices=["json", "jsonl"], default="json", help="json (default) or JSON Lines")
    export.set_defaults(handler=cmd_export)

    show = commands.add_parser("show", help="show a run's audit trail")
    _home_options(show, endpoint=False)
    show.add_argument("run_id", help="a run id or a unique prefix of one")
    show.add_argument("--json", action="store_true", help="print the full audit trail as JSON")
    show.set_defaults(handler=cmd_show)

    ui = commands.add_parser("ui", help="the dashboard: panel serve on 127.0.0.1 (docs/ui.md)")
    _home_options(ui, endpoint=False)
    ui.add_argument("--port", type=_port, default=5006, help="port (5006)")
    ui.add_argument("--address", default="127.0.0.1", help="IP to bind (127.0.0.1); others need --basic-auth")
    ui.add_argument("--basic-auth", metavar="FILE", help="Panel basic auth: a JSON file mapping users to passwords")
    ui.add_argument("--cookie-secret", help="secret for the login cookie (default: random at each start)")
    ui.add_argument("--allow-origin", action="append", metavar="HOST:PORT", help="websocket origins to accept")
    ui.set_defaults(handler=cmd_ui)

    from stagewatch.daemon._cli_groundtruth import add_commands

    add_commands(commands, _home_options)
    return parser


def _config_options(parser: argparse.ArgumentParser) -> None:
    """Flags that override the configuration file; all default to None (= not given)."""
    parser.add_argument("--config", help="a TOML configuration file (default $STAGEWATCH_CONFIG)")
    _home_options(parser)
    parser.add_argument(
        "--client-timeout",
        type=_positive,
        metavar="S",
        help="seconds of silence after which a client's open stages are crashed (15)",
    )
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--group-access",
        action="store_true",
        default=None,
        help="let users in the home's group connect and write runs (for the systemd service)",
    )


def _load_config(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    from stagewatch.daemon._settings import load_config

    flags = {"home": args.home, "endpoint": args.endpoint, "daemon.client_timeout_s": args.client_timeout,
             "daemon.log_level": args.log_level, "daemon.group_access": args.group_access}  # fmt: skip
    return load_config(args.config, flags=flags)


def _filter_options(parser: argparse.ArgumentParser) -> None:
    _home_options(parser, endpoint=False)
    parser.add_argument("--run", help="a run id or a unique prefix")
    parser.add_argument("--since", help="ISO date/time or relative (7d, 24h, 30m)")
    parser.add_argument("--until", help="ISO date/time or relative (7d, 24h, 30m)")
    parser.add_argument("--stage", help="a stage name")
    parser.add_argument("--status", help="ok, failed or crashed")
    parser.add_argument("--level", help="lowest log level: DEBUG, INFO, WARNING, ERROR, ...")
    parser.add_argument("--grep", help="text in error messages and log lines (case-insensitive)")


def _filters(args: argparse.Namespace, home: Path) -> Any:
    """Validated filters; ValueError (exit 2) for a malformed value, RunNotFound for an unknown run."""
    from stagewatch.daemon._query import Filters, parse_time
    from stagewatch.daemon._readmodels import resolve_run_id

    run = resolve_run_id(home, args.run) if args.run else None
    return Filters(run=run, since=parse_time(args.since) if args.since else None,
                   until=parse_time(args.until) if args.until else None, stage=args.stage, status=args.status,
                   level=args.level, grep=args.grep)  # fmt: skip


def _matching(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]] | None:
    """Rows of every table that match the filters, as JSON-ready dicts; None if the run is unknown."""
    from dataclasses import replace

    import pyarrow.compute as pc

    from stagewatch.daemon._query import query_logs, query_runs, query_stages
    from stagewatch.daemon._readmodels import RunNotFound, to_rows

    home = resolve_home(args.home)
    try:
        filters = _filters(args, home)
    except RunNotFound as error:
        print(f"stagewatch: {error}", file=sys.stderr)
        return None
    stages = query_stages(home, filters)
    runs = query_runs(home, filters)
    if filters.stage or filters.status:  # runs that had such a stage execution, not runs of that status alone
        runs = query_runs(home, replace(filters, status=None))
        runs = runs.filter(pc.is_in(runs["run_id"], value_set=pc.unique(stages["run_id"])))
    tables = {"runs": runs, "stages": stages, "logs": query_logs(home, filters)}
    return {name: [_jsonable(row) for row in to_rows(table.drop(["date"]))] for name, table in tables.items()}


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if hasattr(value, "isoformat") else value for key, value in row.items()}


def _home_options(parser: argparse.ArgumentParser, endpoint: bool = True) -> None:
    parser.add_argument("--home", help="stagewatch home (default $STAGEWATCH_HOME or ./output)")
    if endpoint:
        parser.add_argument("--endpoint", help="ingest endpoint (default $STAGEWATCH_ENDPOINT or ipc in the home)")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port between 1 and 65535, got {value}")
    return value


def _frames(text: str) -> int:
    value = _positive_int(text)
    if value < 48:
        raise argparse.ArgumentTypeError(f"expected at least 48 frames (frame 47 is the failing one), got {value}")
    return value


# -- daemon ---------------------------------------------------------------------------------
def cmd_daemon(args: argparse.Namespace) -> int:
    from stagewatch.daemon._retention import parse_duration
    from stagewatch.daemon._server import Daemon, DaemonAlreadyRunning, DaemonSettings, configure_logging

    config, _ = _load_config(args)  # a bad value raises ConfigError: exit 2 before anything starts
    home = resolve_home(config.home)
    endpoint = resolve_endpoint(home, config.endpoint)
    home.mkdir(parents=True, exist_ok=True)
    configure_logging(home, config.daemon.log_level, parse_duration(config.retention.daemon_logs))
    settings = DaemonSettings(
        home=home,
        endpoint=endpoint,
        live_endpoint=f"ipc://{home / 'run' / 'live.sock'}",
        accuracy_endpoint=f"ipc://{home / 'run' / 'accuracy.sock'}" if config.daemon.accuracy_worker else None,
        client_timeout_s=config.daemon.client_timeout_s,
        flush_interval_s=config.daemon.flush_interval_s,
        merge_interval_s=config.daemon.merge_interval_s,
        group_access=config.daemon.group_access,
        disk=config.disk,
        retention=config.retention,
        finished_run_grace_s=config.daemon.late_event_grace_s,
    )
    try:
        Daemon(settings).serve()
    except DaemonAlreadyRunning as error:
        print(f"stagewatch: {error}; stop it first or use another --home", file=sys.stderr)
        return EXIT_NOT_FOUND
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    config, sources = _load_config(args)
    flat = {}
    for section, values in config.model_dump().items():
        if isinstance(values, dict):
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            flat[section] = values
    if args.json:
        print(json.dumps({key: {"value": value, "source": sources[key]} for key, value in flat.items()}, indent=1))
    else:
        for key, value in flat.items():
            print(f"{key:<28} = {value!r:<24} # {sources[key]}")
    return EXIT_OK


# -- ui -------------------------------------------------------------------------------------
def cmd_ui(args: argparse.Namespace) -> int:
    """Replace this process with `panel serve` of the dashboard (signals reach Panel directly)."""
    try:
        from stagewatch.ui._serve import UiArgumentError, ui_command
    except ImportError as error:
        print(f"stagewatch: the dashboard needs the [ui] extra ({error})", file=sys.stderr)
        return EXIT_USAGE
    try:
        command = ui_command(args.address, args.port, args.basic_auth, args.cookie_secret, args.allow_origin)
    except UiArgumentError as error:
        print(f"stagewatch: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.basic_auth and not Path(args.basic_auth).is_file():
        print(f"stagewatch: --basic-auth {args.basic_auth}: no such file (a JSON map of user to password)",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    home = resolve_home(args.home)
    print(f"stagewatch ui: http://{args.address}:{args.port}/app  (home {home})", flush=True)
    os.execve(sys.executable, command, {**os.environ, "STAGEWATCH_HOME": str(home)})
    return EXIT_OK  # not reached


# -- demo -----------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from stagewatch.daemon._demo import run_demo
    from stagewatch.daemon._readmodels import load_audit

    home = resolve_home(args.home)
    endpoint = resolve_endpoint(home, args.endpoint)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM, like Ctrl-C, stops what the demo started
    daemon = start_daemon(home, endpoint)
    try:
        print(f"stagewatch demo: running the perception pipeline ({args.frames} frames) ...", flush=True)
        run = run_demo(args.frames, home=str(home))
        run.flush(30.0)
        audit = wait_for_audit(home, run.id, timeout_s=60.0)
        accuracy = _wait_for_document(home / "runs" / run.id / "accuracy.json", "finished", timeout_s=60.0)
        _print_demo_summary(home, audit or load_audit(home, run.id))
        if accuracy:
            print(f"\naccuracy against {accuracy['dataset']}:")
            print(format_accuracy(accuracy))
        if not args.no_ui:
            _serve_dashboard(home, args.port, run.id)
    except KeyboardInterrupt:
        print("stagewatch demo: interrupted", file=sys.stderr)
    finally:
        if daemon is not None and not args.keep_daemon:
            stop_daemon(daemon)
    return EXIT_OK


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve_dashboard(home: Path, port: int, run_id: str) -> None:
    """The dashboard on 127.0.0.1 until Ctrl-C (or SIGTERM); the daemon keeps running meanwhile."""
    try:
        import panel  # noqa: F401 - the [ui] extra
    except ImportError:
        print("\n(no dashboard: install the [ui] extra, then run `stagewatch ui`)")
        return
    from stagewatch.ui._serve import ui_command

    process = subprocess.Popen(ui_command(port=port), env={**os.environ, "STAGEWATCH_HOME": str(home)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    print(f"\ndashboard: http://127.0.0.1:{port}/app?run={run_id}   (Ctrl-C stops the dashboard and the daemon)",
          flush=True)  # fmt: skip
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        process.terminate()
        process.wait(30)


def start_daemon(home: Path, endpoint: str) -> subprocess.Popen[bytes] | None:
    """Start a daemon on `home` unless one already runs there; wait until it listens."""
    from stagewatch.daemon._doctor import daemon_running

    if daemon_running(home):
        print(f"stagewatch: using the daemon already running on {home}")
        return None
    home.mkdir(parents=True, exist_ok=True)
    socket_path = Path(endpoint[len("ipc://") :]) if endpoint.startswith("ipc://") else None
    if socket_path is not None:  # no daemon holds the lock: a socket file left by a killed one is stale
        socket_path.unlink(missing_ok=True)
    with open(home / "daemon-demo.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stagewatch.daemon", "daemon", "--home", str(home), "--endpoint", endpoint],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if socket_path is None or socket_path.exists():
            return process
        time.sleep(0.05)
    raise RuntimeError(f"the daemon did not start; see {home / 'daemon-demo.log'}")


def stop_daemon(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_for_audit(home: Path, run_id: str, timeout_s: float) -> dict[str, Any] | None:
    return _wait_for_document(home / "runs" / run_id / "audit.json", "complete", timeout_s)


def _wait_for_document(path: Path, flag: str, timeout_s: float) -> dict[str, Any] | None:
    """The JSON document at `path` once its `flag` is true (it is rewritten as work goes on)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            document = json.loads(path.read_text())
            if document.get(flag):
                return document
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return None


def _print_demo_summary(home: Path, audit: dict[str, Any]) -> None:
    print(f"\nrun {audit['run_id']}  pipeline={audit.get('pipeline')}  status={audit['status']}")
    print(_stage_table(audit.get("stages", [])))
    for error in audit.get("errors", [])[:3]:
        print(f"\nerror in {error['stage']} on {error['sample_id']}: {error['type']}: {error['message']}")
    print("\nresults:")
    print(f"  audit trail     {home / 'runs' / audit['run_id'] / 'audit.json'}")
    print(f"  stage outputs   {home / 'runs' / audit['run_id'] / 'stages'}/")
    print(f"  accuracy        {home / 'runs' / audit['run_id'] / 'accuracy.json'}")
    print(f"  metrics         {home / 'metrics'}/{{stage_executions,runs,logs,samples}}/date=*/*.parquet")
    print(f"  event log       {home / 'events'}/")
    print(f"\nnext: stagewatch show {audit['run_id'][:8]} --home {home}    stagewatch runs --home {home}")


def format_accuracy(summary: dict[str, Any]) -> str:
    """Per stage: sample counts by status and the headline metrics (`demo`, `eval --run`)."""
    lines = [f"  {'stage':<20}{'correct':>8}{'wrong':>7}{'invalid':>8}{'unlabeled':>10}  metrics"]
    for name, stage in summary.get("stages", {}).items():
        counts, metrics = stage["counts"], stage["metrics"]
        if stage["kind"] == "boxes":
            coco = metrics.get("coco", {})
            shown = (f"P {metrics['precision']:.3f}  R {metrics['recall']:.3f}  F1 {metrics['f1']:.3f}  "
                     f"mAP {coco.get('AP', -1):.3f}  AP50 {coco.get('AP50', -1):.3f}")  # fmt: skip
        else:
            shown = f"mIoU {_number(metrics['miou'])}  accuracy {_number(metrics['accuracy'])}"
        lines.append(f"  {name:<20}{counts['correct']:>8}{counts['wrong']:>7}{counts['invalid']:>8}"
                     f"{counts['unlabeled']:>10}  {shown}")  # fmt: skip
    if summary.get("dataset_problem"):
        lines.append(f"  dataset unusable: {summary['dataset_problem']}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _stage_table(stages: list[dict[str, Any]]) -> str:
    import statistics

    names = list(dict.fromkeys(s["stage"] for s in stages))
    lines = [f"  {'stage':<20}{'runs':>6}{'failed':>8}{'median ms':>12}{'max ms':>10}{'peak RSS MB':>13}"]
    for name in names:
        rows = [s for s in stages if s["stage"] == name]
        durations = [s["duration_ms"] for s in rows if s["duration_ms"] is not None] or [0.0]
        peaks = [s["memory"]["rss_peak_mb"] or 0.0 for s in rows]
        failed = sum(s["status"] != "ok" for s in rows)
        lines.append(
            f"  {name:<20}{len(rows):>6}{failed:>8}{statistics.median(durations):>12.2f}"
            f"{max(durations):>10.2f}{max(peaks):>13.1f}"
        )
    return "\n".join(lines)


# -- doctor -----------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    from stagewatch.daemon._doctor import examine

    config, _ = _load_config(args)
    report = examine(resolve_home(config.home), config)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for check in report["checks"]:
            print(f"{'ok' if check['ok'] else 'PROBLEM':<8} {check['name']:<14} {check['detail']}")
    return EXIT_OK if report["healthy"] else EXIT_NOT_FOUND


# -- gc -------------------------------------------------------------------------------------
def cmd_gc(args: argparse.Namespace) -> int:
    from stagewatch.daemon._retention import apply_retention

    config, _ = _load_config(args)
    home = resolve_home(config.home)
    result = apply_retention(home, config.retention, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(result, indent=1))
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(result['runs'])} run(s), {result['run_bytes']:,} bytes "
          f"(retention.runs = {config.retention.runs})")  # fmt: skip
    for run_id in result["runs"][:20]:
        print(f"  {run_id}")
    print(f"{verb} {len(result['segments'])} event-log segment(s), {result['segment_bytes']:,} bytes "
          f"(retention.events = {config.retention.events})")  # fmt: skip
    return EXIT_OK


# -- rebuild ----------------------------------------------------------------------------------
def cmd_rebuild(args: argparse.Namespace) -> int:
    from stagewatch.daemon._rebuild import rebuild
    from stagewatch.daemon._server import DaemonAlreadyRunning, configure_logging

    home = resolve_home(args.home)
    if not (home / "events").is_dir():
        print(f"stagewatch: no event log under {home} (expected {home / 'events'})", file=sys.stderr)
        return EXIT_NOT_FOUND
    configure_logging(home, "INFO")
    try:
        report = rebuild(home)
    except DaemonAlreadyRunning as error:
        print(f"stagewatch: {error}; stop it before a rebuild", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(
            f"rebuilt from {report['events_replayed']:,} events; {report['read_model_files_removed']} "
            f"read-model files replaced; {report['runs_open']} clients with open runs"
        )
    return EXIT_OK


# -- keys -----------------------------------------------------------------------------------
def cmd_keys(args: argparse.Namespace) -> int:
    import shutil

    import zmq.auth

    from stagewatch._curve import authorized_dir, keys_dir, server_secret_file
    from stagewatch._names import check_name

    home = resolve_home(args.home)
    folder = keys_dir(home)
    if args.action == "init":
        if server_secret_file(home).exists():
            print(f"stagewatch: {server_secret_file(home)} exists already; keeping it", file=sys.stderr)
            return EXIT_NOT_FOUND
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        authorized_dir(home).mkdir(exist_ok=True)
        zmq.auth.create_certificates(folder, "server")
    elif args.action == "add":
        name = check_name(args.name, "client name")
        if not server_secret_file(home).exists():
            print(f"stagewatch: run `stagewatch keys init --home {home}` first", file=sys.stderr)
            return EXIT_NOT_FOUND
        clients = folder / "clients"
        clients.mkdir(mode=0o700, exist_ok=True)
        public, _ = zmq.auth.create_certificates(clients, name)
        shutil.copy(public, authorized_dir(home) / f"{name}.key")
        print(f"export STAGEWATCH_CURVE_SERVER_KEY={folder / 'server.key'}")
        print(f"export STAGEWATCH_CURVE_CLIENT_KEY={clients / (name + '.key_secret')}")
    listing = {"server_public_key": str(folder / "server.key"),
               "authorized": sorted(p.stem for p in authorized_dir(home).glob("*.key"))}  # fmt: skip
    if args.action == "list" or args.json:
        print(
            json.dumps(listing, indent=1)
            if args.json
            else "\n".join(
                [
                    f"server public key: {listing['server_public_key']}",
                    *[f"authorized: {n}" for n in listing["authorized"]],
                ]
            )
        )
    return EXIT_OK


# -- runs / show ----------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace) -> int:
    from stagewatch.daemon._readmodels import list_runs

    runs = list_runs(resolve_home(args.home), args.limit)
    if args.json:
        print(json.dumps(runs, indent=1))
        return EXIT_OK
    if not runs:
        print("no runs yet: run a pipeline with stagewatch.init(), or `stagewatch demo`")
        return EXIT_OK
    print(f"{'run id':<38}{'pipeline':<14}{'started (UTC)':<21}{'duration s':>11}  {'status':<9}failed stage")
    for run in runs:
        duration = f"{run['duration_ms'] / 1000:.2f}" if run["duration_ms"] is not None else "-"
        started = (run["started_at"] or "-")[:19].replace("T", " ")
        print(
            f"{run['run_id']:<38}{(run['pipeline'] or '-'):<14}{started:<21}{duration:>11}  "
            f"{run['status']:<9}{run['failed_stage'] or ''}"
        )
    return EXIT_OK


def cmd_query(args: argparse.Namespace) -> int:
    matched = _matching(args)
    if matched is None:
        return EXIT_NOT_FOUND
    if args.run:  # the run's complete execution history: audit trail and every log line
        from stagewatch.daemon._readmodels import load_audit

        matched["audit"] = (
            load_audit(resolve_home(args.home), matched["runs"][0]["run_id"]) if matched["runs"] else None
        )
    if args.json:
        print(json.dumps({name: rows[: args.limit] if isinstance(rows, list) else rows
                          for name, rows in matched.items()}, indent=1, default=str))  # fmt: skip
        return EXIT_OK
    counts = {name: len(rows) for name, rows in matched.items() if isinstance(rows, list)}
    print(f"{counts['runs']} run(s), {counts['stages']} stage execution(s), {counts['logs']} log line(s)")
    for row in matched["stages"][: args.limit]:
        if row["status"] != "ok" or args.stage or args.run:
            print(f"  {row['run_id'][:8]} {row['stage']:<16} {row['sample_id'] or '-':<12} {row['status']:<8} "
                  f"{row['start_time'][:19]} {row['duration_ms']:>9.2f} ms  {row['error_message'] or ''}")  # fmt: skip
    for row in matched["logs"][: args.limit]:
        print(f"  {row['time'][:23]} {row['level']:<8} {row['stage'] or '-':<14} {row['message']}")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    from stagewatch.daemon._query import query_stats
    from stagewatch.daemon._readmodels import RunNotFound

    home = resolve_home(args.home)
    try:
        stats = query_stats(home, _filters(args, home))
    except RunNotFound as error:
        print(f"stagewatch: {error}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print(json.dumps(stats, indent=1))
        return EXIT_OK
    print(f"{'stage':<18}{'count':>8}{'failed':>8}{'mean':>9}{'median':>9}{'p95':>9}{'p99':>9}{'max':>9}"
          f"{'peak RSS':>10}{'time %':>8}")  # fmt: skip
    for entry in stats:
        d = entry["duration_ms"]
        cells = [d[k] or 0.0 for k in ("mean", "median", "p95", "p99", "max")]
        print(f"{entry['stage']:<18}{entry['count']:>8}{entry['failure_rate']:>8.1%}"
              + "".join(f"{c:>9.2f}" for c in cells)
              + f"{entry['rss_peak_mb']['max'] or 0:>10.1f}{entry['share_of_time']:>8.1%}"
              + ("  <- bottleneck" if entry.get("bottleneck") else ""))  # fmt: skip
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    matched = _matching(args)
    if matched is None:
        return EXIT_NOT_FOUND
    if args.format == "json":
        text = json.dumps(matched, default=str)
    else:  # one object a line, tagged with its table: big exports stream and append
        text = "".join(json.dumps({"table": name, "row": row}, default=str) + "\n"
                       for name, rows in matched.items() for row in rows)  # fmt: skip
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        counts = ", ".join(f"{len(rows)} {name}" for name, rows in matched.items())
        print(f"wrote {counts} to {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from stagewatch.daemon._readmodels import RunNotFound, load_accuracy, load_audit, resolve_run_id

    home = resolve_home(args.home)
    try:
        run_id = resolve_run_id(home, args.run_id)
    except RunNotFound as error:
        print(f"stagewatch: {error}", file=sys.stderr)
        return EXIT_NOT_FOUND
    audit = load_audit(home, run_id)
    accuracy = load_accuracy(home, run_id)
    if args.json:
        print(json.dumps(audit | ({"accuracy": accuracy} if accuracy else {}), indent=1))
        return EXIT_OK
    _print_audit(audit)
    if accuracy:
        print(f"\naccuracy against {accuracy['dataset']}{'' if accuracy['finished'] else ' (so far)'}:")
        print(format_accuracy(accuracy))
    return EXIT_OK


def _print_audit(audit: dict[str, Any]) -> None:
    print(f"{'run':<13}{audit['run_id']}")
    for key in ("pipeline", "status", "started_at", "finished_at", "duration_ms", "host", "pid", "dataset"):
        if audit.get(key) is not None:
            print(f"{key:<13}{audit[key]}")
    for problem in audit.get("problems", []):
        print(f"INCOMPLETE: {problem}")
    print(_stage_table(audit.get("stages", [])))
    for error in audit.get("errors", []):
        where = f"{error['stage']} failed on {error['sample_id']} at {error['at']}"
        print(f"\n{where}: {error['type']}: {error['message']}")
        print(f"  input: {error.get('input_path')}")
        stage = next((s for s in audit["stages"] if (s["span"], s["stage"]) == (error["span"], error["stage"])), None)
        if stage and stage.get("error") and stage["error"].get("traceback"):
            print("  " + stage["error"]["traceback"].rstrip().replace("\n", "\n  "))
    artifacts = sum(len(s.get("artifacts", [])) for s in audit.get("stages", []))
    print(f"\n{artifacts} saved outputs under runs/{audit['run_id']}/stages/; --json prints everything")
