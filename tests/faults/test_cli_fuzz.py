"""Every command's arguments, hostile (issue 12): each invocation ends with a message and an
exit code, never a traceback. In process (the parser and the handlers are the command)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from stagewatch.cli import main

HOSTILE = [
    "",
    "-",
    "..",
    "../../etc",
    "/",
    "/dev/null",
    "/dev/full",
    "/dev/zero",
    "-1",
    "0",
    "nan",
    "inf",
    "1e309",
    "99999999d",
    "1000000w",
    "0001-01-01T00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "é✓",
    "x" * 5000,
    "9" * 30,
    "%s%s%n",
    "--",
    "a\nb",
    "deadbeef",
]
# (command, option or None for a positional, values to try); commands that would start
# something long-lived (daemon, demo, ui) get only values their checks refuse.
SURFACE = [
    (["runs"], "--limit", HOSTILE),
    (["show"], None, HOSTILE),
    *[
        (["query"], option, HOSTILE)
        for option in ("--run", "--since", "--until", "--stage", "--status", "--level", "--grep", "--limit")
    ],
    *[(["stats"], option, HOSTILE) for option in ("--run", "--since", "--until", "--status")],
    (["export", "--output", "-"], "--format", HOSTILE),
    *[(["export"], "--output", HOSTILE)],
    (["config", "show"], "--config", HOSTILE),
    (["config", "show"], "--client-timeout", HOSTILE),
    (["doctor"], "--config", HOSTILE),
    (["gc", "--dry-run"], "--config", HOSTILE),
    (["keys", "add"], None, HOSTILE),
    (["eval", "coco", "/dev/null"], None, HOSTILE),
    (["eval", "coco"], None, [[v, v] for v in HOSTILE]),
    (["eval"], "--run", HOSTILE),
    (["eval", "--run", "deadbeef"], "--dataset", HOSTILE),
    (["gt", "validate"], None, HOSTILE),
    (["daemon"], "--client-timeout", ["", "-1", "0", "nan", "inf", "1e309", "abc"]),
    (["demo", "--no-ui"], "--frames", ["", "-1", "0", "47", "1e9", "abc"]),
    (["ui"], "--port", ["", "-1", "0", "65536", "9" * 30]),
    (["ui"], "--address", ["0.0.0.0", "::", "256.1.1.1", "", "example.com"]),
]


def _cases() -> list[list[str]]:
    cases = []
    for command, option, values in SURFACE:
        for value in values:
            value = value if isinstance(value, list) else [value]
            cases.append([*command, *([option] if option else []), *value])
    cases += [["--home", value, "runs"] for value in HOSTILE] + [["rebuild", "--home", value] for value in HOSTILE]
    return cases


def _run(argv: list[str]) -> tuple[int, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's own refusals
            code = exit.code if isinstance(exit.code, int) else 2
    return code, stderr.getvalue()


def fuzz(home: Path) -> list:
    """Every case in this process; what ended otherwise than in words."""
    os.chdir(home)  # relative paths land in the test's own folder
    os.environ["STAGEWATCH_HOME"] = str(home)

    def no_dashboard(*args: object) -> None:
        raise AssertionError(f"would have started the dashboard: {args[1]}")

    os.execve = no_dashboard
    failures = []
    for argv in _cases():
        try:
            code, stderr = _run(argv)
        except Exception as error:  # what a user would have seen as a traceback
            failures.append(([a[:40] for a in argv], f"{type(error).__name__}: {str(error)[:200]}"))
            continue
        if code not in (0, 1, 2) or "Traceback" in stderr or (code == 2 and not stderr.strip()):
            failures.append(([a[:40] for a in argv], f"exit {code}: {stderr[-300:]}"))
    return failures


def test_no_argument_ends_in_a_traceback(home: Path) -> None:
    """In a child process whose memory is capped: an argument that made a command read a
    device without end fails the test instead of the machine."""
    code = f"import json; from tests.faults.test_cli_fuzz import fuzz; print(json.dumps(fuzz(Path({str(home)!r}))))"
    cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (6 * 1024**3, 6 * 1024**3))  # noqa: E731
    result = subprocess.run(
        [sys.executable, "-c", "from pathlib import Path; " + code],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=cap,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == []
    assert len(_cases()) > 500 and len(SURFACE) > 20
