"""`stagewatch ui`: `panel serve` of the dashboard, on 127.0.0.1 unless told otherwise.

Exposing it beyond the loopback needs an authentication option: Panel's basic auth
(`--basic-auth FILE`, a JSON map of user to password, or a single password), with a
cookie secret. The command refuses a non-loopback address without it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

APP = Path(__file__).with_name("app.py")
STARTUP = Path(__file__).with_name("_startup.py")
DEFAULT_PORT = 5006
# The dashboard's homes, a JSON list of paths (`stagewatch ui --home a --home b` sets it; JSON,
# as a path may hold os.pathsep): one dashboard over several hosts' homes. Without it, the one
# home of STAGEWATCH_HOME.
HOMES_VARIABLE = "STAGEWATCH_HOMES"


class UiArgumentError(ValueError):
    """A bad address or auth option; the message says what to give instead."""


def ui_command(
    address: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    basic_auth: str | None = None,
    cookie_secret: str | None = None,
    origins: list[str] | None = None,
) -> list[str]:
    """The `panel serve` command line for these options (validated)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise UiArgumentError(
            f"expected --address as an IP address (127.0.0.1, ::1, 0.0.0.0), got {address!r}"
        ) from None
    if not ip.is_loopback and not basic_auth:
        raise UiArgumentError(
            f"serving on {address} exposes the dashboard beyond this machine: give --basic-auth "
            "FILE (a JSON map of user to password), or keep the default 127.0.0.1"
        )
    if not 1 <= port <= 65535:
        raise UiArgumentError(f"expected --port between 1 and 65535, got {port}")
    allowed = origins or ([f"127.0.0.1:{port}", f"localhost:{port}"] if ip.is_loopback else [f"{address}:{port}"])
    command = [
        sys.executable,
        "-m",
        "panel",
        "serve",
        str(APP),
        "--address",
        address,
        "--port",
        str(port),
        "--num-procs",
        "1",
        "--setup",
        str(STARTUP),
    ]
    for origin in allowed:
        command += ["--allow-websocket-origin", origin]
    if basic_auth:
        command += ["--basic-auth", basic_auth, "--cookie-secret", cookie_secret or secrets.token_hex(32)]
    return command


def homes_environment(homes: Sequence[Path]) -> dict[str, str]:
    """The variables that tell the dashboard's process its homes: every one in STAGEWATCH_HOMES,
    the first in STAGEWATCH_HOME. Both are set, so a value inherited from the shell never adds
    homes the command was not given."""
    return {"STAGEWATCH_HOME": str(homes[0]), HOMES_VARIABLE: json.dumps([str(home) for home in homes])}


def configured_homes(environ: Mapping[str, str] = os.environ) -> Path | list[Path]:
    """The homes the dashboard reads, as the query layer takes them: one home as a Path (the
    usual case, read exactly as before), several as a list (STAGEWATCH_HOMES)."""
    from stagewatch.daemon.base._layout import DaemonHome

    try:
        listed = json.loads(environ.get(HOMES_VARIABLE) or "[]")
    except ValueError:
        listed = []  # not ours (set by hand): the one home of STAGEWATCH_HOME
    named = [part for part in listed if isinstance(part, str) and part.strip()] if isinstance(listed, list) else []
    homes = list(dict.fromkeys(DaemonHome.resolve(part).root for part in named))
    if len(homes) > 1:
        return homes
    return homes[0] if homes else DaemonHome.resolve(environ.get("STAGEWATCH_HOME") or None).root
