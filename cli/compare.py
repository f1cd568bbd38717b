"""`stagewatch compare`: two runs, or a run against a baseline of runs, stage by stage.

    stagewatch compare A B [--json] [--threshold 5%] [--fail-on-regression] [--accuracy-drop 2%]
    stagewatch compare B --baseline last:20 | 7d | RUN      (one run: against the run before it)

Exit codes: 0 compared (and, with --fail-on-regression, nothing regressed); 1 with
--fail-on-regression when a stage regressed (slower, more memory, more failures, or it ran in
A and not in B), a shift is ongoing in the baseline's history, or a stage's accuracy fell
significantly (McNemar's exact test of the samples both runs judged, else a two-proportion
z-test) and by more than --accuracy-drop (2 points by default;
--accuracy-drop off: never) (the reasons are printed); 2 for arguments that name nothing to compare (an
unknown run, an empty baseline, an option's value refused) or cannot be read (with --json also printed
on stdout as {"error": "..."}), and with --fail-on-regression for a run that
has not ended: its figures are partial, the gate neither passes nor fails it (compare again
once it has ended); the same when rows were left out for a damaged data file (named in the
warnings; `stagewatch rebuild` brings them back). A run that has not ended is waited for up to
--wait seconds (10) first: a CI job's gate right after its pipeline finished meets the run's end
before the daemon's next flush has written it.

Warnings (a run not ended, a crashed run, runs of different pipelines, damaged data files left
out) come first, and in --json as `warnings` (with `partial`, `skipped_files` and `not_judged`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stagewatch.cli._options import EXIT_OK, EXIT_USAGE, fail, home_options, home_or_homes, json_option

if TYPE_CHECKING:
    from stagewatch.daemon.compare._compare import Options, Side

EXIT_REGRESSED = 1
EXIT_NOT_JUDGED = EXIT_USAGE  # a side has not ended: neither a pass nor a regression
MAX_LISTED_FLIPS = 50
WAIT_STEP_S = 0.5  # how often a run not ended yet is looked for again


def add_commands(commands: Any) -> None:
    compare = commands.add_parser(
        "compare",
        help="compare two runs (or a run and a baseline): per-stage changes, flips, config and environment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="[A] B: run ids or unique prefixes (A: a baseline)")
    compare.add_argument(
        "--baseline",
        help="what B is compared with: a run id or prefix, last:N (runs of B's pipeline before it, pooled) or "
        "a window (30m, 24h, 7d, 2w)",
    )
    # The values are text, read by the command (`settings`): with --json a value refused is a JSON
    # error too, as an unknown run is.
    compare.add_argument("--threshold", default="5%", help="smallest change called out (5%%; at most 1000%%)")
    compare.add_argument("--confidence", default="0.99", help="confidence of each test (0.99: p < 0.01 is significant)")
    compare.add_argument(
        "--accuracy-drop",
        default=None,  # not given: the comparison's default (DEFAULT_ACCURACY_DROP)
        metavar="SHARE|off",
        help="a stage's accuracy falling significantly and by more than this (rate points, at most 100%%) is a "
        "regression (2%%; off: never)",
    )
    compare.add_argument("--fail-on-regression", action="store_true", help="exit 1 when something regressed")
    compare.add_argument(
        "--wait",
        default="10",
        metavar="SECONDS",
        help="wait this long for a run that has not ended to be recorded as ended (10; 0: not at all)",
    )
    json_option(compare, "print the comparison as JSON")
    home_options(compare, endpoint=False)
    compare.set_defaults(handler=cmd_compare)


def settings(args: argparse.Namespace) -> tuple[Options, float]:
    """The comparison's options and the seconds to wait, from the command's text; a ValueError
    names the option and what it expected."""
    from stagewatch.daemon.compare._compare import Options, share_from_text

    options = Options(
        threshold=_option("--threshold", share_from_text, args.threshold),
        confidence=_option("--confidence", confidence, args.confidence),
        accuracy_drop=_option("--accuracy-drop", accuracy_drop, args.accuracy_drop),
    )
    return options, _option("--wait", seconds, args.wait)


def _option(name: str, read: Callable[[Any], Any], text: str | None) -> Any:
    try:
        return read(text)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def accuracy_drop(text: str | None) -> float | None:
    """'2%' or 0.02 -> 0.02 (at most 100%); 'off' -> None: accuracy never fails the gate; not
    given: the default (DEFAULT_ACCURACY_DROP)."""
    from stagewatch.daemon.compare._compare import DEFAULT_ACCURACY_DROP, accuracy_drop_from_text

    if text is None:
        return DEFAULT_ACCURACY_DROP
    return None if text.strip().lower() == "off" else accuracy_drop_from_text(text)


# A p-value below 1e-12 is past what the tests' normal approximations say (and at 1 - 1e-16 the
# normal quantile of the confidence is infinite).
MAX_CONFIDENCE = 1 - 1e-12


def confidence(text: str) -> float:
    """'0.99' -> 0.99: from 0.5 to MAX_CONFIDENCE."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.5 <= value <= MAX_CONFIDENCE:  # nan too
        raise ValueError(f"expected a confidence between 0.5 and 1 (at most {MAX_CONFIDENCE!r}), got {text!r}")
    return value


def seconds(text: str) -> float:
    """'10' -> 10.0 seconds, at most an hour."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected seconds like 10, got {text!r}") from None
    if not 0 <= value <= 3600:
        raise ValueError(f"expected between 0 and 3600 seconds, got {text!r}")
    return value


def baseline_run(home: Path | list[Path], text: str) -> Side:
    """A of `compare A B`: a run (id or prefix), never a window nor last:N (they go in
    --baseline), though a prefix such as "7d" reads as both."""
    from stagewatch.daemon.compare._compare import CompareError, run_side

    try:
        return run_side(home, text)
    except CompareError as error:
        raise CompareError(f"{error} (A of `compare A B` is a run: a window or last:N goes in --baseline)") from None


def cmd_compare(args: argparse.Namespace) -> int:
    from stagewatch.daemon.compare._compare import CompareError
    from stagewatch.daemon.query._sql import QueryError

    try:
        document = _compared(args)
    except (CompareError, QueryError, ValueError) as error:
        return refuse(args, str(error))
    except OSError as error:  # exit 1 is the gate's: a home that cannot be read is an argument problem
        return refuse(args, f"{error.strerror or error}: {error.filename or ''}")
    if args.json:
        print(json.dumps(document, indent=1, default=str))
        for warning in document["warnings"]:  # for the person reading the job's log (the text has them on top)
            print(f"stagewatch: warning: {warning}", file=sys.stderr)
    else:
        print_comparison(document)
    if args.fail_on_regression and document["not_judged"]:
        return fail(f"not judged: {document['not_judged']}", EXIT_NOT_JUDGED)
    if args.fail_on_regression and document["failures"]:
        for reason in document["failures"]:
            print(f"stagewatch: regression: {reason}", file=sys.stderr)
        return EXIT_REGRESSED
    return EXIT_OK


def refuse(args: argparse.Namespace, message: str) -> int:
    """Nothing compared (exit 2): the message on stderr, and with --json as {"error": ...} on
    stdout too, so a job that parses the output reads why."""
    if args.json:
        print(json.dumps({"error": message}))
    return fail(message, EXIT_USAGE)


def _compared(args: argparse.Namespace) -> dict[str, Any]:
    """The comparison the arguments ask for, once the runs have ended or `--wait` has passed; a
    CompareError (or a ValueError) says why there is none."""
    from stagewatch.daemon.compare._compare import (
        CompareError,
        RunNotEnded,
        baseline_side,
        compare,
        refuse_same_run,
        run_side,
    )

    if len(args.runs) > 2:
        raise CompareError(f"expected `compare A B` or `compare B [--baseline SPEC]`, got {len(args.runs)} runs")
    if len(args.runs) == 2 and args.baseline is not None:
        raise CompareError("expected `compare A B` or `compare B [--baseline SPEC]`, not both")
    options, wait = settings(args)
    home = home_or_homes(args)  # several homes: read as one
    deadline = time.monotonic() + wait
    while True:
        try:
            target = run_side(home, args.runs[-1])
            if len(args.runs) == 2:
                baseline = baseline_run(home, args.runs[0])
            else:
                baseline = baseline_side(home, "last:1" if args.baseline is None else args.baseline, target)
            refuse_same_run(baseline, target)
            document = compare(home, baseline, target, options)
        except RunNotEnded:
            if time.monotonic() >= deadline:
                raise
        else:
            if not document["partial"] or time.monotonic() >= deadline:
                return document
        time.sleep(WAIT_STEP_S)


def print_comparison(document: dict[str, Any]) -> None:
    from stagewatch.daemon.compare._compare import accuracy_gate_text, percent, run_noise_text

    a, b = document["a"], document["b"]
    for warning in document["warnings"]:
        print(f"WARNING: {warning}")
    print(f"A: {_side_line(a)}\nB: {_side_line(b)}")
    print(
        f"called out: significant at {percent(document['confidence'])} confidence and larger than "
        f"{percent(document['threshold'])}\n({TESTS})\n{run_noise_text(document)}\n"
        f"{accuracy_gate_text(document['accuracy_drop'], document['confidence'])}\n"
    )
    header = (
        f"{'stage':<22}{'executions':>14}  {'median ms':<26}{'p95 ms':<26}{'own MB (median)':<20}"
        f"{'own MB (max)':<18} {'failed':<16}"
    )
    print(header)
    for stage in document["stages"]:
        flag = "  REGRESSED" if stage["regressed"] else ("  changed" if stage["reasons"] else "")
        only = {"a": "  only in A", "b": "  only in B"}.get(stage["only_in"] or "", "")
        executions = f"{stage['executions']['a']}->{stage['executions']['b']}"
        print(
            f"{_clipped(stage['stage'], 21):<22}{executions:>14}  "
            f"{_cell(stage['median_ms']):<26}{_cell(stage['p95_ms']):<26}"
            f"{_cell(stage['own_memory_mb']):<20}{_largest(stage['own_memory_mb']):<18} "
            f"{_rate(stage['failure_rate']):<16}{flag}{only}"
        )
        for reason in stage["reasons"]:
            print(f"    {reason}")
    print(OWN_MEMORY)
    _print_shifts(document.get("shifts"))
    _print_flips(document)
    _print_accuracy(document["accuracy"], document["accuracy_drop"])
    for name in ("config", "environment"):
        changes = document[name]
        if changes is None:
            print(f"\n{name}: not known (see the warnings)")
            continue
        print(f"\n{name}: {'unchanged' if not changes else f'{len(changes)} changed'}")
        for change in changes[:100]:
            print(f"  {change['key']}: {change['from']!r} -> {change['to']!r}")
    print(f"\n{verdict_line(document)}")


TESTS = (
    "median: Mann-Whitney U test and a bootstrap interval of the difference; p95 and memory: bootstrap "
    "interval; failure rate: two-proportion z-test"
)


# The stage's own memory is read per execution; compare tests the median of those readings (one
# reading, the largest, cannot be tested against its own noise) and shows the largest beside it.
OWN_MEMORY = (
    "own MB: the most a stage's RSS rose above its start, per execution; (median) is the median of its "
    "executions, the figure tested; (max) the largest, as `stats` and the Run page show it"
)


def verdict_line(document: dict[str, Any]) -> str:
    if document["not_judged"]:
        found = f" (so far: {'; '.join(document['failures'])})" if document["failures"] else ""
        return f"NOT JUDGED: {document['not_judged']}{found}"
    return "REGRESSED: " + "; ".join(document["failures"]) if document["failures"] else "no regression"


def _side_line(side: dict[str, Any]) -> str:
    from stagewatch.daemon.projection import _outcomes as outcomes

    status = f", {outcomes.label(side['status'])}" if side.get("status") and side["kind"] == "run" else ""
    newest = side["runs"][-1][:8]
    named = "" if newest in side["label"] else f"run {newest}, " if len(side["runs"]) == 1 else f"newest {newest}, "
    return f"{side['label']} ({named}pipeline {side.get('pipeline') or 'none recorded'}{status})"


def _largest(measure: dict[str, Any]) -> str:
    largest = measure.get("max") or {}
    return f"{_num(largest.get('a'))}->{_num(largest.get('b'))}"


def _cell(measure: dict[str, Any]) -> str:
    if measure["a"] is None or measure["b"] is None:
        return f"{_num(measure['a'])} -> {_num(measure['b'])}"
    change = f" {measure['change']:+.0%}" if measure["change"] is not None else ""
    mark = "*" if measure["called_out"] else ""
    return f"{_num(measure['a'])}->{_num(measure['b'])}{change}{mark}"


def _clipped(name: str, width: int) -> str:
    """A stage name in `width` characters, a cut one ending in an ellipsis (not silently cut)."""
    return name if len(name) <= width else name[: width - 1] + "…"


def _num(value: float | None) -> str:
    """Three significant digits, their zeros kept (13.99 is 14.0, not 14), no exponent."""
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:#.3g}"


def _rate(measure: dict[str, Any]) -> str:
    if measure["a"] is None or measure["b"] is None:
        return "-"
    # as the Compare page and `stats` write a rate: one failure in 1,500 is 0.1%, not 0%
    return f"{measure['a']:.1%}->{measure['b']:.1%}{'*' if measure['called_out'] else ''}"


def _print_shifts(shifts: list[dict[str, Any]] | None) -> None:
    if shifts is None:
        return
    print(f"\nshifts in the history (change-point test): {len(shifts) or 'none'}")
    for shift in shifts:
        state = "ongoing" if shift["ongoing"] else "earlier"
        print(
            f"  {shift['stage']} {shift['measure']} {shift['change']:+.1%} ({shift['before']:.3g} -> "
            f"{shift['after']:.3g} ms) since run {shift['started_run'][:8]}, "
            f"found at {shift['found_run'][:8]} ({state})"
        )


def _print_flips(document: dict[str, Any]) -> None:
    from stagewatch.cli._report import message_text
    from stagewatch.daemon.compare._compare import flips_not_judged_text

    if document["flips_not_judged"] is not None:  # then no flip is given: over rows left out, they may be invented
        print(f"\nflips (verdict changed): NOT JUDGED: {flips_not_judged_text(document['flips_not_judged'])}")
        return
    flips: list[dict[str, str]] = document["flips"]
    print(f"\nflips (verdict changed): {len(flips) or 'none'}")
    for flip in flips[:MAX_LISTED_FLIPS]:
        print(f"  {flip['stage']} {message_text(flip['sample_id'], None)}: {flip['from']} -> {flip['to']}")
    if len(flips) > MAX_LISTED_FLIPS:
        print(f"  ... {len(flips) - MAX_LISTED_FLIPS} more (--json lists them all)")


def _print_accuracy(accuracy: list[dict[str, Any]], drop: float | None) -> None:
    from stagewatch.daemon.compare._compare import accuracy_words

    if not accuracy:
        return
    print("\naccuracy (correct / judged):")
    for entry in accuracy:
        a = "-" if entry["a"] is None else f"{entry['a']:.1%}"
        b = "-" if entry["b"] is None else f"{entry['b']:.1%}"
        words = accuracy_words(entry, drop)
        print(
            f"  {entry['stage']}: {a} -> {b} ({_count(entry, 'a')} -> {_count(entry, 'b')}){f': {words}' * bool(words)}"
        )
        if entry["metrics"]:
            cells = ", ".join(f"{name} {_num(v['a'])}->{_num(v['b'])}" for name, v in entry["metrics"].items())
            print(f"    {cells}")
        for metric, classes in entry["per_class"].items():
            cells = ", ".join(f"{name} {_num(v.get('a'))}->{_num(v.get('b'))}" for name, v in classes.items())
            print(f"    {metric} per class: {cells}")


def _count(entry: dict[str, Any], side: str) -> str:
    return f"{entry['correct'][side]}/{entry['judged'][side]}"
