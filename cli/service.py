"""The daemon and its home: `daemon`, `config show`, `doctor`, `gc`, `rebuild`, `keys`."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from stagewatch._home import resolve_endpoint
from stagewatch.cli._options import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    config_options,
    fail,
    home_of,
    home_options,
    json_option,
    load_config,
    progress,
)
from stagewatch.daemon.base._layout import DaemonHome


def add_commands(commands: Any) -> None:
    daemon = commands.add_parser("daemon", help="run the daemon in the foreground")
    config_options(daemon)
    daemon.set_defaults(handler=cmd_daemon)

    config = commands.add_parser("config", help="the effective configuration")
    config_actions = config.add_subparsers(dest="action", required=True)
    show_config = config_actions.add_parser("show", help="print every value and where it came from")
    config_options(show_config)
    json_option(show_config)
    config.set_defaults(handler=cmd_config)

    doctor = commands.add_parser("doctor", help="check the daemon, the disk and the data; exit 1 on problems")
    config_options(doctor)
    doctor.add_argument("--scrub", action="store_true", help="first re-read every log segment and Parquet part")
    json_option(doctor)
    doctor.set_defaults(handler=cmd_doctor)

    gc = commands.add_parser("gc", help="apply retention now: remove expired runs and event-log segments")
    config_options(gc)
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    json_option(gc)
    gc.set_defaults(handler=cmd_gc)

    rebuild = commands.add_parser("rebuild", help="regenerate every read model from the event log")
    home_options(rebuild, endpoint=False)
    json_option(rebuild)
    rebuild.set_defaults(handler=cmd_rebuild)

    keys = commands.add_parser("keys", help="CURVE keys for a TCP ingest endpoint")
    common = argparse.ArgumentParser(add_help=False)
    home_options(common, endpoint=False)
    json_option(common)
    keys_actions = keys.add_subparsers(dest="action", required=True)
    keys_actions.add_parser("init", parents=[common], help="create the daemon's key pair")
    add = keys_actions.add_parser("add", parents=[common], help="create and authorize a client key pair")
    add.add_argument("name", help="a name for the client (letters, digits, '_', '-', '.')")
    keys_actions.add_parser("list", parents=[common], help="list the daemon's public key and the authorized clients")
    keys.set_defaults(handler=cmd_keys)


def _configured_home(config: Any) -> DaemonHome:
    return home_of(argparse.Namespace(home=config.home))


def cmd_daemon(args: argparse.Namespace) -> int:
    from stagewatch.daemon import DaemonAlreadyRunning, DaemonSettings, configure_logging, serve
    from stagewatch.daemon.tables._retention import parse_duration

    config, _ = load_config(args)  # a bad value raises ConfigError: exit 2 before anything starts
    home = _configured_home(config)
    endpoint = resolve_endpoint(home, config.endpoint)
    home.root.mkdir(parents=True, exist_ok=True)
    configure_logging(home.root, config.daemon.log_level, parse_duration(config.retention.daemon_logs))
    settings = DaemonSettings(
        home=home.root,
        endpoint=endpoint,
        live_endpoint=home.live_endpoint,
        accuracy_endpoint=home.accuracy_endpoint if config.daemon.accuracy_worker else None,
        client_timeout_s=config.daemon.client_timeout_s,
        flush_interval_s=config.daemon.flush_interval_s,
        merge_interval_s=config.daemon.merge_interval_s,
        group_access=config.daemon.group_access,
        disk=config.disk,
        retention=config.retention,
        finished_run_grace_s=config.daemon.late_event_grace_s,
        dataset_roots=_dataset_roots(config, home),
    )
    try:
        serve(settings)
    except DaemonAlreadyRunning as error:
        return fail(f"{error}; stop it first or use another --home", EXIT_NOT_FOUND)
    return EXIT_OK


def _dataset_roots(config: Any, home: DaemonHome) -> tuple[Path, ...] | None:
    """Where the accuracy worker may read golden datasets: the configured folders; with
    group access and none configured, only the home's datasets/ (a pipeline of another user
    must not make the daemon read what only the daemon may)."""
    roots = tuple(Path(root).expanduser().resolve() for root in config.daemon.dataset_roots.split(":") if root)
    if roots:
        return roots
    return (home.datasets.resolve(),) if config.daemon.group_access else None


def cmd_config(args: argparse.Namespace) -> int:
    config, sources = load_config(args)
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


def cmd_doctor(args: argparse.Namespace) -> int:
    from stagewatch.daemon.maintenance._doctor import examine
    from stagewatch.daemon.maintenance._scrub import scrub_all

    config, _ = load_config(args)
    home = _configured_home(config)
    with progress(args, "scrubbing", "files") as update:
        report = examine(home.root, config, (lambda: scrub_all(home, update)) if args.scrub else None)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for check in report["checks"]:
            print(f"{'ok' if check['ok'] else 'PROBLEM':<8} {check['name']:<14} {check['detail']}")
    return EXIT_OK if report["healthy"] else EXIT_NOT_FOUND


def cmd_gc(args: argparse.Namespace) -> int:
    from stagewatch.daemon import DaemonAlreadyRunning
    from stagewatch.daemon.tables._retention import collect_garbage

    config, _ = load_config(args)
    home = _configured_home(config)
    try:
        with progress(args, "removing expired runs", "runs") as update:
            result = collect_garbage(home.root, config.retention, dry_run=args.dry_run, progress=update)
    except DaemonAlreadyRunning as error:
        if "daemon" not in str(error):  # a rebuild holds the home
            return fail(f"{error}; run gc when it has ended", EXIT_NOT_FOUND)
        interval = config.retention.check_interval_s
        return fail(
            f"{error}: it applies retention itself, at start and every {interval:g} s "
            "(retention.check_interval_s); stop it to gc now, or `stagewatch gc --dry-run` to list what has expired",
            EXIT_NOT_FOUND,
        )
    except OSError as error:
        return fail(f"cannot record the expired runs in the event log ({error}); nothing was removed", EXIT_NOT_FOUND)
    if args.json:
        print(json.dumps(result, indent=1))
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    retention = config.retention
    print(f"{verb} {len(result['runs'])} run(s), {result['run_bytes']:,} bytes (retention.runs = {retention.runs})")
    for run_id in result["runs"][:20]:
        print(f"  {run_id}")
    if result["debris_folders"]:
        print(f"{verb} {len(result['debris_folders'])} run folder(s) holding only a failed write's temporary file")
    print(
        f"{verb} {len(result['segments'])} event-log segment(s), {result['segment_bytes']:,} bytes "
        f"(retention.events = {retention.events})"
    )
    return EXIT_OK


def cmd_rebuild(args: argparse.Namespace) -> int:
    from stagewatch.daemon import DaemonAlreadyRunning, configure_logging
    from stagewatch.daemon._rebuild import rebuild

    home = home_of(args)
    if not home.events.is_dir():
        return fail(f"no event log under {home.root} (expected {home.events})", EXIT_NOT_FOUND)
    configure_logging(home.root, "INFO", stderr=not sys.stderr.isatty() or args.json)
    try:
        with progress(args, "replaying the event log", "B") as update:
            report = rebuild(home.root, progress=update)
    except DaemonAlreadyRunning as error:
        return fail(
            f"{error}; a rebuild needs the home to itself: stop it before a rebuild "
            "(`kill <pid>` ends it cleanly; the systemd service: `sudo systemctl stop stagewatch`)",
            EXIT_NOT_FOUND,
        )
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(
            f"rebuilt from {report['events_replayed']:,} events; {report['read_model_files_removed']} "
            f"read-model files replaced; {report['runs_open']} clients with open runs"
        )
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    import zmq.auth

    from stagewatch._names import check_name

    home = home_of(args)
    folder = home.keys
    if args.action == "init":
        if home.server_secret_key.exists():
            return fail(f"{home.server_secret_key} exists already; keeping it", EXIT_NOT_FOUND)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        home.authorized_keys.mkdir(exist_ok=True)
        zmq.auth.create_certificates(folder, "server")
    elif args.action == "add":
        name = check_name(args.name, "client name")
        if not home.server_secret_key.exists():
            return fail(f"run `stagewatch keys init --home {home.root}` first", EXIT_NOT_FOUND)
        clients = home.client_keys
        clients.mkdir(mode=0o700, exist_ok=True)
        public, _ = zmq.auth.create_certificates(clients, name)
        shutil.copy(public, home.authorized_keys / f"{name}.key")
        print(f"export STAGEWATCH_CURVE_SERVER_KEY={home.server_public_key}")
        print(f"export STAGEWATCH_CURVE_CLIENT_KEY={clients / (name + '.key_secret')}")
    authorized = sorted(p.stem for p in home.authorized_keys.glob("*.key"))
    listing = {"server_public_key": str(home.server_public_key), "authorized": authorized}
    if args.json:
        print(json.dumps(listing, indent=1))
    elif args.action == "list":
        print(
            "\n".join([f"server public key: {listing['server_public_key']}", *[f"authorized: {n}" for n in authorized]])
        )
    return EXIT_OK
