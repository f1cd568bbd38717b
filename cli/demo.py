"""`stagewatch demo`: a daemon, the demo pipeline through a golden dataset, a summary, the dashboard."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from stagewatch._home import ipc_path, resolve_endpoint
from stagewatch.cli._options import EXIT_OK, home_of, home_options, port, positive_int
from stagewatch.cli._report import MESSAGE_LINES, format_accuracy, message_text, stats_table
from stagewatch.cli.dashboard import serve_dashboard
from stagewatch.daemon.base._layout import DaemonHome

DEMO_LOG = "daemon-demo.log"  # beside the home's own folders: the demo daemon's stderr


def add_commands(commands: Any) -> None:
    demo = commands.add_parser("demo", help="start a daemon, run the demo pipeline, show where results are")
    home_options(demo)
    demo.add_argument("--frames", type=_frames, default=60, help="frames to process (48 or more; 60)")
    demo.add_argument("--keep-daemon", action="store_true", help="leave the daemon running afterwards")
    demo.add_argument("--no-ui", action="store_true", help="print the summary and exit; no dashboard")
    demo.add_argument("--port", type=port, default=5006, help="the dashboard's port on 127.0.0.1 (5006)")
    demo.set_defaults(handler=cmd_demo)


def _frames(text: str) -> int:
    value = positive_int(text)
    if value < 48:
        raise argparse.ArgumentTypeError(f"expected at least 48 frames (frame 47 is the failing one), got {value}")
    return value


def cmd_demo(args: argparse.Namespace) -> int:
    from loguru import logger

    from stagewatch.daemon._demo import run_demo
    from stagewatch.daemon.query._readmodels import load_audit_head

    home = home_of(args)
    endpoint = resolve_endpoint(home, args.endpoint)
    logger.remove()  # the pipeline's log lines go to stagewatch (the logs table), not over the summary
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM, like Ctrl-C, stops what the demo started
    daemon = start_daemon(home, endpoint)
    try:
        print(f"stagewatch demo: running the perception pipeline ({args.frames} frames) ...", flush=True)
        run = run_demo(args.frames, home=str(home.root))
        run.flush(30.0)
        wait_for_document(home.audit(run.id), "complete", timeout_s=60.0)  # the head; its stages: load_audit
        accuracy = wait_for_document(home.accuracy(run.id), "finished", timeout_s=60.0)
        _print_summary(home, load_audit_head(home.root, run.id))
        if accuracy:
            print(f"\naccuracy against {accuracy['dataset']}:")
            print(format_accuracy(accuracy))
        if not args.no_ui:
            serve_dashboard(home, args.port, run.id)
    except KeyboardInterrupt:
        print("stagewatch demo: interrupted", file=sys.stderr)
    finally:
        if daemon is not None and not args.keep_daemon:
            stop_daemon(daemon)
    return EXIT_OK


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def start_daemon(home: DaemonHome, endpoint: str) -> subprocess.Popen[bytes] | None:
    """Start a daemon on `home` unless one already runs there; wait until it listens."""
    from stagewatch.daemon.maintenance._doctor import daemon_running

    if daemon_running(home.root):
        print(f"stagewatch: using the daemon already running on {home.root}")
        return None
    home.root.mkdir(parents=True, exist_ok=True)
    socket_path = ipc_path(endpoint)
    if socket_path is not None:  # no daemon holds the lock: a socket file left by a killed one is stale
        socket_path.unlink(missing_ok=True)
    log_path = home.root / DEMO_LOG
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stagewatch.cli", "daemon", "--home", str(home.root), "--endpoint", endpoint],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if socket_path is None or socket_path.exists():
            return process
        time.sleep(0.05)
    raise RuntimeError(f"the daemon did not start; see {log_path}")


def stop_daemon(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_for_document(path: Path, flag: str, timeout_s: float) -> dict[str, Any] | None:
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


def _print_summary(home: DaemonHome, audit: dict[str, Any]) -> None:
    from stagewatch.daemon.query._query import run_stages

    run_id = audit["run_id"]
    print(f"\nrun {run_id}  pipeline={audit.get('pipeline')}  status={audit['status'].replace('_', ' ')}")
    print(stats_table(run_stages(home.root, run_id), {}, audit.get("host")))
    for error in audit.get("errors", [])[:3]:
        message, sample = message_text(error["message"], 2, MESSAGE_LINES), message_text(str(error["sample_id"]), None)
        print(f"\nerror in {error['stage']} on {sample}: {error['type']}: {message}")
    print("\nresults:")
    print(f"  audit trail     {home.audit(run_id)}")
    print(f"  stage outputs   {home.stage_outputs(run_id)}/")
    print(f"  accuracy        {home.accuracy(run_id)}")
    print(f"  metrics         {home.metrics}/{{stage_executions,runs,logs,samples}}/ (Delta tables)")
    print(f"  event log       {home.events}/")
    print(f"\nnext: stagewatch show {run_id[:8]} --home {home.root}    stagewatch runs --home {home.root}")
