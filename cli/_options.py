"""What the commands share: exit codes, the home and config options, filters, progress."""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stagewatch.daemon.base._layout import DaemonHome

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int) -> int:
    print(f"stagewatch: {message}", file=sys.stderr)
    return code


def home_options(parser: argparse.ArgumentParser, endpoint: bool = True) -> None:
    """--home (and --endpoint); also accepted before the command (`stagewatch --home H runs`),
    so here they default to 'not given' and leave the global value alone."""
    parser.add_argument(
        "--home",
        action="append",
        default=argparse.SUPPRESS,
        help="stagewatch home (default $STAGEWATCH_HOME or ./output); runs, query, stats, compare and ui "
        "take several (--home a --home b, or a glob: 'homes/*'), read as one",
    )
    if endpoint:
        parser.add_argument(
            "--endpoint",
            default=argparse.SUPPRESS,
            help="ingest endpoint (default $STAGEWATCH_ENDPOINT or ipc in the home)",
        )


def global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home", action="append", help="stagewatch home (default $STAGEWATCH_HOME or ./output); repeatable"
    )
    parser.add_argument("--endpoint", help="ingest endpoint (default $STAGEWATCH_ENDPOINT or ipc in the home)")


def one_home(value: str | list[str] | None) -> str | None:
    """The one --home of a command that works on one home (the last given, as a single-valued
    option would keep); ValueError (exit 2) for several."""
    if not isinstance(value, list):
        return value
    if len(value) > 1:
        raise ValueError(f"expected one --home for this command, got {len(value)}: {', '.join(value)}")
    return value[0]


def home_of(args: argparse.Namespace) -> DaemonHome:
    """The home the command works on; ValueError (exit 2) for a path that is not a folder."""
    home = DaemonHome.resolve(one_home(args.home))
    if home.root.exists() and not home.root.is_dir():
        raise ValueError(f"expected --home to be a folder, got the file {home.root}")
    return home


def homes_of(args: argparse.Namespace) -> list[Path]:
    """The homes a reading command reads as one: each --home, a glob expanded to the folders it
    matches (sorted); the default home when none is given. ValueError (exit 2) for a glob that
    matches no folder or a path that is not a folder."""
    given = args.home if isinstance(args.home, list) else [args.home]
    homes: list[Path] = []
    for text in given:
        if text is not None and glob.has_magic(text):
            matched = sorted(Path(p) for p in glob.glob(os.path.expanduser(text)) if Path(p).is_dir())
            if not matched:
                raise ValueError(f"expected --home {text!r} to match stagewatch homes, got no folder")
            homes += [DaemonHome.resolve(path).root for path in matched]
        else:
            if text is not None and not text.strip():
                raise ValueError("expected --home to name a folder, got an empty path")
            home = home_of(argparse.Namespace(home=text)).root
            if len(given) > 1 and not home.is_dir():  # one home of several mistyped: said, not read as empty
                raise ValueError(f"expected --home {text!r} to be a stagewatch home, got no such folder")
            homes.append(home)
    return list(dict.fromkeys(homes))  # a home given twice is read once


def home_or_homes(args: argparse.Namespace) -> Path | list[Path]:
    """One home as a Path (the usual case: every reader takes it), several as a list; a warning
    first for each whose tables are being rebuilt (`warn_of_rebuilds`)."""
    homes = homes_of(args)
    warn_of_rebuilds(homes)
    return homes[0] if len(homes) == 1 else homes


def warn_of_rebuilds(homes: list[Path]) -> None:
    """A warning (stderr, once) per table being rebuilt from its event log or gone: what a reading
    command prints of it is partial, or empty, until the daemon has rebuilt it."""
    from stagewatch.daemon.query._readmodels import tables_not_whole

    for sentence in tables_not_whole(homes):
        warnings.warn(sentence, stacklevel=2)


def json_option(parser: argparse.ArgumentParser, text: str = "print JSON") -> None:
    parser.add_argument("--json", action="store_true", help=text)


def config_options(parser: argparse.ArgumentParser) -> None:
    """Flags that override the configuration file; all default to None (= not given)."""
    parser.add_argument("--config", help="a TOML configuration file (default $STAGEWATCH_CONFIG)")
    home_options(parser)
    parser.add_argument(
        "--client-timeout",
        type=positive,
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


def load_config(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    from stagewatch.daemon.base._settings import load_config

    flags = {
        "home": one_home(args.home),
        "endpoint": args.endpoint,
        "daemon.client_timeout_s": args.client_timeout,
        "daemon.log_level": args.log_level,
        "daemon.group_access": args.group_access,
    }
    return load_config(args.config, flags=flags)


def filter_options(parser: argparse.ArgumentParser) -> None:
    home_options(parser, endpoint=False)
    parser.add_argument("--run", help="a run id or a unique prefix")
    parser.add_argument("--since", help="ISO date/time or relative (7d, 24h, 30m)")
    parser.add_argument("--until", help="ISO date/time or relative (7d, 24h, 30m)")
    parser.add_argument("--stage", help="a stage name")
    parser.add_argument(
        "--status",
        help="a run's: ok, finished_with_failures, failed, crashed, running; a stage execution's: ok, failed, crashed",
    )
    parser.add_argument("--level", help="lowest log level: DEBUG, INFO, WARNING, ERROR, ...")
    parser.add_argument("--grep", help="text in error messages and log lines (case-insensitive)")
    parser.add_argument("--regex", action="store_true", help="--grep is a regular expression (RE2 syntax)")
    parser.add_argument("--pipeline", help="a pipeline name")
    parser.add_argument("--host", help="runs on this host, and their stage executions and log lines")
    parser.add_argument("--failed-stage", help="runs whose first failure was in this stage")
    parser.add_argument("--logger", help="log lines of this logger (or, ending in '.', of its family)")


def filters_of(args: argparse.Namespace, home: Path | list[Path]) -> Any:
    """Validated filters; ValueError (exit 2) for a malformed value (an empty --run too: it is no
    run, not every run), RunNotFound for an unknown run."""
    from stagewatch.daemon.query._query import Filters, parse_time
    from stagewatch.daemon.query._readmodels import resolve_run_in

    if args.run is not None and not args.run.strip():
        raise ValueError(f"expected --run to name a run id or a unique prefix of one, got {args.run!r}")
    run = resolve_run_in(home, args.run) if args.run is not None else None
    return Filters(
        run=run,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until, until=True) if args.until else None,
        stage=args.stage,
        status=args.status,
        level=args.level,
        grep=args.grep,
        regex=args.regex,
        pipeline=args.pipeline,
        host=args.host,
        failed_stage=args.failed_stage,
        logger=args.logger,
    )


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number from 1, in ASCII digits (str.isdigit takes '١٢', and int reads it as 12).
    A count past any table's rows is taken: a limit beyond them all lists every row."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


# The most a page number or a page's size may be: a page's offset ((page - 1) * size) then
# stays below the 2**62 rows that a query may skip (`_sql.MAX_ROWS`).
MAX_PAGING = 2**31 - 1


def paging_int(text: str) -> int:
    """A page number or a page's size (`show --page`, `--limit`): `positive_int` up to
    `MAX_PAGING`, refused by argparse, before anything is printed, with --json or without."""
    value = positive_int(text)
    if value > MAX_PAGING:
        raise argparse.ArgumentTypeError(f"expected a page number or size from 1 to {MAX_PAGING:,}, got {text!r}")
    return value


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port between 1 and 65535, got {value}")
    return value


@contextlib.contextmanager
def progress(args: argparse.Namespace, description: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on a terminal (stderr), silent under --json or when not a TTY. Yields
    `update(done, total)`, which long jobs call as they go."""
    if getattr(args, "json", False) or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    import time

    from tqdm import tqdm

    with tqdm(desc=description, unit=unit, unit_scale=True, file=sys.stderr, leave=False) as bar:
        shown_at = 0.0

        def update(done: int, total: int) -> None:
            nonlocal shown_at
            now = time.monotonic()
            if now - shown_at >= 0.1 or done >= total:  # a terminal redraws ten times a second at most
                shown_at = now
                bar.total, bar.n = total, done
                bar.refresh()

        yield update
