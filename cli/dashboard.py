"""`stagewatch ui`: the dashboard, `panel serve` on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from stagewatch.cli._options import EXIT_OK, EXIT_USAGE, fail, home_options, homes_of, port
from stagewatch.daemon.base._layout import DaemonHome


def add_commands(commands: Any) -> None:
    ui = commands.add_parser("ui", help="the dashboard: panel serve on 127.0.0.1 (docs/ui.md)")
    home_options(ui, endpoint=False)
    ui.add_argument("--port", type=port, default=5006, help="port (5006)")
    ui.add_argument("--address", default="127.0.0.1", help="IP to bind (127.0.0.1); others need --basic-auth")
    ui.add_argument("--basic-auth", metavar="FILE", help="Panel basic auth: a JSON file mapping users to passwords")
    ui.add_argument("--cookie-secret", help="secret for the login cookie (default: random at each start)")
    ui.add_argument("--allow-origin", action="append", metavar="HOST:PORT", help="websocket origins to accept")
    ui.set_defaults(handler=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    """Replace this process with `panel serve` of the dashboard (signals reach Panel directly)."""
    try:
        from stagewatch.ui._serve import UiArgumentError, homes_environment, ui_command
    except ImportError as error:
        return fail(f"the dashboard needs the [ui] extra ({error})", EXIT_USAGE)
    try:
        command = ui_command(args.address, args.port, args.basic_auth, args.cookie_secret, args.allow_origin)
    except UiArgumentError as error:
        return fail(str(error), EXIT_USAGE)
    if args.basic_auth and not Path(args.basic_auth).is_file():
        return fail(f"--basic-auth {args.basic_auth}: no such file (a JSON map of user to password)", EXIT_USAGE)
    homes = homes_of(args)  # several (--home a --home b, a glob): one dashboard over them all
    where = f"home {homes[0]}" if len(homes) == 1 else f"{len(homes)} homes: {', '.join(map(str, homes))}"
    print(f"stagewatch ui: http://{args.address}:{args.port}/app  ({where})", flush=True)
    os.execve(sys.executable, command, {**os.environ, **homes_environment(homes)})
    return EXIT_OK  # not reached


def serve_dashboard(home: DaemonHome, port: int, run_id: str) -> None:
    """The dashboard on 127.0.0.1 until Ctrl-C (or SIGTERM); the daemon keeps running meanwhile."""
    try:
        import panel  # noqa: F401 - the [ui] extra
    except ImportError:
        print("\n(no dashboard: install the [ui] extra, then run `stagewatch ui`)")
        return
    from stagewatch.ui._serve import homes_environment, ui_command

    process = subprocess.Popen(
        ui_command(port=port),
        env={**os.environ, **homes_environment([home.root])},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print(
        f"\ndashboard: http://127.0.0.1:{port}/app?run={run_id}   (Ctrl-C stops the dashboard and the daemon)",
        flush=True,
    )
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        process.terminate()
        process.wait(30)
