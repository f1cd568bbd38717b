"""The `stagewatch` command: the parser, then one module per command group."""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from typing import Any

from stagewatch.cli import compare, dashboard, demo, diff, groundtruth, history, service
from stagewatch.cli._options import EXIT_NOT_FOUND, EXIT_USAGE, global_options

EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a command ended by SIGPIPE
GROUPS = (service, demo, history, dashboard, groundtruth, diff, compare)


# Control characters (but tab and newline), C0 and C1: a value a pipeline recorded (a host name, an
# error message) holding ESC sequences would otherwise retitle, recolour or clear the terminal.
_UNPRINTABLE = {code: f"\\x{code:02x}" for code in [*range(0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)]}


class _PrintableOnTerminal:
    """stdout when it is a terminal: control characters are shown escaped, never run. (A pipe
    or a file gets the bytes as they are: `export` and `--json` keep every value exact.)"""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text.translate(_UNPRINTABLE))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    if sys.stdout is not None and sys.stdout.isatty() and not isinstance(sys.stdout, _PrintableOnTerminal):
        sys.stdout = _PrintableOnTerminal(sys.stdout)
    args = parser().parse_args(argv)
    try:
        code = args.handler(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away is answered below
        return code
    except ValueError as error:  # bad configuration or arguments found past argparse
        print(f"stagewatch: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `stagewatch query | head`: the reader has what it wanted
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as error:  # a path given that cannot be used (too long, not permitted, a full disk)
        where = f": {str(error.filename)[:200]}" if error.filename else ""
        print(f"stagewatch: {error.strerror or error}{where}", file=sys.stderr)
        return EXIT_NOT_FOUND


class _Parser(argparse.ArgumentParser):
    """argparse, with "-5%" and "-1e3" read as values: argparse's negative numbers are digits
    only, so `--accuracy-drop -5%` failed as "expected one argument" instead of reaching the
    option's own check, which says what it takes. (No option of ours looks like a number.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d|\.\d)[\w.+-]*%?$")


def parser() -> argparse.ArgumentParser:
    root = _Parser(prog="stagewatch", description="Monitor perception pipelines.")
    global_options(root)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(commands)
    return root


def _silence_stdout() -> None:
    """Python flushes stdout again at exit; point it at /dev/null so that raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    text = f"stagewatch: warning: {message}"  # what a user reads, not where it came from
    if text not in _SAID:  # one damaged file read by three queries is one warning
        _SAID.add(text)
        print(text, file=sys.stderr)


_SAID: set[str] = set()
