"""Two runs compared, or a run against a baseline of several (`stagewatch compare`, the Compare
page): per stage, what changed and whether it is a change at all.

A side is one run, the last N finished runs of the target's pipeline before it (`last:N`,
pooled) or a window of them (`7d`). Per stage and side: executions, the median and p95 of the
duration of its `ok` executions, its own memory (rss_peak - rss_start: what the stage itself
added), its GPU peak and its failure rate. A difference is called out only when it is both
significant and larger than the practical threshold:

- median: the Mann-Whitney U test finds a shift (p < 1 - confidence) AND the bootstrap interval
  of the difference of medians excludes 0;
- p95, own memory (median), GPU peak (median): the bootstrap interval of the difference
  excludes 0 (see _stattests);
- failure rate: the two-proportion z-test (p < 1 - confidence);
- and the change is larger than the threshold: relative for times and memory (and at least
  MIN_TIME_MS for times, which a busy machine's scheduler moves by that much, MIN_MEMORY_MB for
  memory, whose readings move by pages), in rate points for failures.

A stage `regressed` when something got worse that way, or when it ran in the baseline (its
newest run) and not at all in the run compared (a stage that vanished). A stage of one side
only is listed with its figures (`only_in`), never dropped. The flip list holds the samples
whose verdict changed: judged ones (`samples`: correct, wrong, invalid), and executions that
failed or crashed where the baseline's did not (new failures). A sample's verdict in a run is
its judgement there, else its last execution's outcome, for the flips and the accuracy alike
(`_verdicts`). Over rows a damaged
data file left out it is not given (`flips_not_judged`: a sample whose row is missing would
look changed).
All reads go through the query layer.

What the figures cannot say is said in `warnings`: a side whose run has not ended (its figures
are partial: `partial`, and the comparison is not judged), rows the query layer left out for a
damaged data file (`skipped_files`: not judged either), a side that crashed, two runs of
different pipelines.
"""

from __future__ import annotations

import functools
import math
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stagewatch.daemon.compare._stattests import bootstrap_interval, mann_whitney_p, mcnemar_p, two_proportions_p
from stagewatch.daemon.compare._verdicts import BAD_EXECUTION, Key, run_verdicts, scored, side_verdict, side_verdicts
from stagewatch.daemon.projection._outcomes import CRASHED, FAILED, FINISHED_WITH_FAILURES, OK
from stagewatch.daemon.query._query import _RELATIVE, _SECONDS, run_dates_in
from stagewatch.daemon.query._readmodels import (
    AmbiguousRun,
    RunNotFound,
    holding,
    load_accuracy,
    load_audit_head,
    resolve_run_in,
)
from stagewatch.daemon.query._sql import homes_of, select, skipped_files

DEFAULT_THRESHOLD = 0.05
DEFAULT_CONFIDENCE = 0.99  # per test: a stage has several measures, a run many stages
# A stage's accuracy falling by less (rate points) is no news to a CI gate, however significant;
# by more, it fails the gate when the fall is also significant (`_accuracy_test`).
DEFAULT_ACCURACY_DROP = 0.02
MIN_EXECUTIONS = 5  # fewer on either side: figures, but nothing called out
MIN_MEMORY_MB = 1.0  # memory readings move by pages and allocator arenas: smaller is no change
MIN_TIME_MS = 0.5  # a stage of a tenth of a millisecond doubles when the scheduler looks away
MAX_BASELINE_RUNS = 1000
# The run-to-run noise of a stage's times: the spread of its median and p95 over the pipeline's
# last `NOISE_RUNS` finished runs before B (at least `MIN_NOISE_RUNS`); a change of times within
# what two runs of unchanged code differ by (a busier machine, another input) is not called out.
NOISE_RUNS = 20
MIN_NOISE_RUNS = 5
TIME_MEASURES = {"median_ms": 0.5, "p95_ms": 0.95}
LAST = re.compile(r"^last:([0-9]+)$")
FINISHED = (OK, FINISHED_WITH_FAILURES, FAILED)  # runs a baseline may hold: ended, with their stages complete
ENDED = (*FINISHED, CRASHED)  # a run in any other state (running, no trail) has partial figures
EXECUTION_COLUMNS = [
    "run_id",
    "pipeline",
    "stage",
    "status",
    "sample_id",
    "start_time",
    "duration_ms",
    "rss_start_mb",
    "rss_peak_mb",
    "gpu_peak_mb",
]


class CompareError(ValueError):
    """Arguments that name nothing to compare (an unknown run, an empty baseline): the message
    says which (the CLI exits 2)."""


class RunNotEnded(CompareError):
    """A run's end is not in the runs table yet (still running, or ended and not yet flushed)."""


MAX_SHARE = 10.0  # 1000%: a threshold past it is refused (a time 11 times slower is called out below it)


def share_from_text(text: str, most: float = MAX_SHARE, what: str = "a share") -> float:
    """'5%' or 0.05 -> 0.05, between 0 (every significant change) and `most`: the threshold
    and accuracy drop as `stagewatch compare` and the Compare page's link take them. A
    ValueError says what was expected (a bare 5 is refused: it meant 500%, a gate that never
    fires; so are a negative share, nan and inf)."""
    cleaned = text.strip()
    given = repr(text if len(text) <= 40 else text[:40] + "…")  # a link's value may be any length
    try:
        value = float(cleaned[:-1]) / 100 if cleaned.endswith("%") else float(cleaned)
    except ValueError:
        raise ValueError(f"expected {what} like 5% or 0.05, got {given}") from None
    if 1 <= value < math.inf and not cleaned.endswith("%"):  # said as the share it would be, in range or not
        raise ValueError(f"expected {what} like 5% or 0.05, got {given} (that is {value:.0%})")
    if not 0 <= value <= most:  # nan and inf too
        raise ValueError(f"expected {what} between 0% and {most:.0%}, got {given}")
    return value + 0.0  # -0 is 0


def accuracy_drop_from_text(text: str) -> float:
    """'2%' or 0.02 -> 0.02: a share of at most 100% (rate points: an accuracy cannot fall by
    more); a ValueError says what was expected."""
    return share_from_text(text, most=1.0, what="an accuracy drop (rate points)")


def percent(share: float) -> str:
    """A share as a percentage with the digits it needs (0.99: 99%, 0.995: 99.5%, 0.9999999999:
    99.99999999%), never rounded to a 100% or 0% that it is not."""
    value = share * 100
    for decimals in range(18):
        text = f"{value:.{decimals}f}"
        rounded = float(text)
        if rounded in (0.0, 100.0) and rounded != value:
            continue
        if abs(rounded - value) <= 1e-9 * abs(value):
            break
    return f"{text}%"


def threshold_warnings(threshold: float) -> list[str]:
    """What a threshold of 100% or more can never call out (it is accepted up to MAX_SHARE: a
    rise of times or memory can pass it)."""
    if threshold < 1:
        return []
    return [
        f"a threshold of {percent(threshold)} (100% or more): a failure rate, which moves by at most 100 points, "
        "and a fall of a time or of memory, at most -100%, are never called out; only a time or memory that "
        f"rose by more than {percent(threshold)}"
    ]


@dataclass(frozen=True)
class Side:
    """The runs one side of a comparison pools, oldest first, and how it was asked for."""

    label: str
    runs: list[str]
    kind: str  # "run", "last" or "window"
    pipeline: str | None = None
    status: str | None = None  # the newest run's: a history holds finished runs only
    skipped: tuple[str, ...] = ()  # damaged data files left out of finding its runs (`skipped_files`)
    # The newest run's start on its pipeline's clock (the runs table's, or its audit trail's while it
    # runs): the runs before it are a baseline's and the run-to-run noise's. None: not recorded yet.
    started: datetime | None = None

    @property
    def is_history(self) -> bool:
        return self.kind != "run"

    @property
    def partial(self) -> bool:
        """The side's run has not ended (running, or no end recorded): its figures are those so far."""
        return self.status not in ENDED

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "runs": self.runs,
            "kind": self.kind,
            "pipeline": self.pipeline,
            "status": self.status,
            "partial": self.partial,
            "skipped_files": list(self.skipped),
        }


@dataclass
class Options:
    threshold: float = DEFAULT_THRESHOLD
    confidence: float = DEFAULT_CONFIDENCE
    # A stage's accuracy falling significantly and by more (rate points) fails the gate; None: never.
    accuracy_drop: float | None = DEFAULT_ACCURACY_DROP
    seed: int = 0
    now: datetime | None = None  # for windows; None: the clock


# -- the sides ------------------------------------------------------------------------------------


def _noting_skipped(make: Callable[..., Side]) -> Callable[..., Side]:
    """`make`, whose Side names the damaged data files its reads left out (a baseline's runs
    found without them may not be the runs asked for)."""

    @functools.wraps(make)
    def made(*args: Any, **kwargs: Any) -> Side:
        with skipped_files() as skipped:
            try:
                side = make(*args, **kwargs)
            except CompareError as error:  # "not in the runs table", "holds no run": maybe for the rows left out
                if not skipped:
                    raise
                raise CompareError(f"{error}; {skipped_warnings(skipped)[0]}") from None
        return replace(side, skipped=tuple(dict.fromkeys([*side.skipped, *skipped])))

    return made


@_noting_skipped
def run_side(home: Path, text: str) -> Side:
    try:
        run_id = resolve_run_in(home, text)
    except RunNotFound as error:
        if _is_run_id(text) and not isinstance(error, AmbiguousRun):
            # A whole id (a pipeline's own, passed on by a CI job) of a run that ended a moment ago:
            # the daemon records it at its next flush. Waited for (--wait), like an end not written.
            raise RunNotEnded(
                f"{error}; none yet: a run that has just ended is recorded at the daemon's next flush"
            ) from None
        raise CompareError(str(error)) from None
    rows = _run_rows(home, "run_id = ?", [run_id], "ORDER BY lsn")
    if rows:  # ended: its last row (a crash withdrawn when its client came back has none)
        pipeline, status, started = rows[-1]["pipeline"], rows[-1]["status"], rows[-1]["start_time"]
    else:  # not in the runs table: still running, or its end not recorded (the trail says which)
        head = load_audit_head(holding(home, run_id), run_id)
        pipeline, status = head.get("pipeline"), head.get("status")
        # A running run's start is its trail's; one the trail says ended is waited for in the runs
        # table (not flushed yet, or its row in a damaged data file: then that file is named).
        started = _moment(head.get("started_at")) if status not in ENDED else None
    return Side(f"run {run_id[:8]}", [run_id], "run", pipeline, status, started=started)


def _is_run_id(text: str) -> bool:
    """Whether `text` is a whole run id (a UUID as the client writes it), not a prefix."""
    try:
        return str(uuid.UUID(text.strip())) == text.strip().lower()
    except ValueError:
        return False


def _moment(text: Any) -> datetime | None:
    """An ISO time from an audit trail (its run start, as the runs table would hold it); None for
    none or a damaged one."""
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def refuse_same_run(a: Side, b: Side) -> None:
    """A baseline that is the run itself compares nothing (its comparison says "No regression."
    of nothing): a CompareError, as the CLI and both pages say it."""
    if a.runs == b.runs:
        raise CompareError(f"the baseline and the run compared are the same run ({b.runs[0][:8]})")


def _count(digits: str) -> int:
    """The N of last:N or 7d. Past 18 digits any count is more than a baseline or the calendar
    holds (and int() refuses a text of over 4,300 digits: a ValueError, not what was wrong)."""
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= 18 else 10**18


def window_text(window: re.Match[str]) -> str:
    """A window as a baseline's label echoes it, whatever its spacing, case or leading zeros: 7d."""
    return f"{window.group(1).lstrip('0') or '0'}{window.group(2)}"


def _refuse_unclear_window(home: Path, spec: str, window: re.Match[str]) -> None:
    """A window spec that is empty (0d: it holds no run), or that is also the start of a run id
    (run ids are hex: "7d", "12d" begin some), is refused with what it could mean: a run is
    never taken for a window nor a window for a run."""
    try:
        run_id = resolve_run_in(home, spec)
    except AmbiguousRun:
        run_id = None
    except RunNotFound:
        if _count(window.group(1)) == 0:
            raise CompareError(
                f"expected a window longer than 0 (7d, 24h), got {spec!r}: an empty window holds no run"
            ) from None
        return
    named = f"the start of run {run_id[:8]}" if run_id else "the start of several run ids"
    raise CompareError(
        f"{spec!r} is both a window ({window_text(window)}) and {named}: for the run, give more of "
        f"its id; for the window, write it with a space ('{window.group(1)} {window.group(2)}')"
    )


@_noting_skipped
def baseline_side(home: Path, spec: str, target: Side, now: datetime | None = None) -> Side:
    """The baseline `spec` names against the target run: a run id (or prefix), `last:N` (the
    last N finished runs of its pipeline that started before it) or a window (`7d`, `24h`:
    the finished runs of its pipeline that started in it, before the target)."""
    spec = spec.strip()
    last = LAST.match(spec.lower())  # LAST:20 and 7D too (a run id in capitals is resolved as one anyway)
    window = _RELATIVE.match(spec.lower())
    if not spec:
        raise CompareError(f"expected a baseline: {BASELINE_FORMS}; got an empty one")
    if not last and spec.lower().startswith("last:"):  # last:-1, last:abc, last: — not a run id either
        raise CompareError(f"expected last:N with N between 1 and {MAX_BASELINE_RUNS}, got {spec!r}")
    if not last and not window:
        try:
            return run_side(home, spec)
        except CompareError as error:  # 7x: no run, and no other form either: say which forms there are
            raise CompareError(f"{error}; a baseline is {BASELINE_FORMS}") from None
    if window:
        _refuse_unclear_window(home, spec, window)
    # First whether the run is recorded at all: a run just ended may have neither its runs row nor
    # its trail's head written yet, and then its pipeline is not known either (not "none").
    if target.started is None:  # ended, its row not written yet (or in a damaged file); or no start recorded
        missing = f"run {target.runs[-1][:8]} is not in the runs table yet (its end not written yet?)"
        if target.skipped:  # maybe in the file left out: said now, not waited for
            raise CompareError(f"{missing}; {skipped_warnings(list(target.skipped))[0]}")
        raise RunNotEnded(missing)
    if target.pipeline is None:
        raise CompareError(f"run {target.runs[-1][:8]} has no pipeline recorded: give a baseline run instead")
    before = target.started
    terms, params = (
        "pipeline = ? AND start_time < ? AND run_id <> ? AND list_contains(?::VARCHAR[], status)",
        [
            target.pipeline,
            before,
            target.runs[-1],
            list(FINISHED),
        ],
    )
    if last:
        count = _count(last.group(1))
        if not 1 <= count <= MAX_BASELINE_RUNS:
            raise CompareError(f"expected last:N with N between 1 and {MAX_BASELINE_RUNS}, got {spec!r}")
        rows = _run_rows(home, terms, params, f"ORDER BY start_time DESC LIMIT {count}")
        label = (
            f"the run of {target.pipeline} before it" if count == 1 else f"the last {count} runs of {target.pipeline}"
        )
    else:
        seconds = _count(window.group(1)) * _SECONDS[window.group(2)]
        rows = _run_rows(
            home, f"{terms} AND start_time >= ?", [*params, _window_start(now, seconds)], "ORDER BY start_time DESC"
        )
        rows = rows[:MAX_BASELINE_RUNS]
        label = f"the runs of {target.pipeline} in the last {window_text(window)}"
    if not rows:
        skew = run_clock_skew(home, target.runs[-1])
        raise CompareError(
            f"no finished run of {target.pipeline} before run {target.runs[-1][:8]} to compare it with: the "
            f"baseline {spec!r} ({label}) holds no finished run; give a second run, or another --baseline"
            + (f" ({skew['message']}; the runs before it are found by start time: give a baseline run)" if skew else "")
        )
    return Side(
        label if last and len(rows) == count else f"{label} ({len(rows)} run{'s' if len(rows) > 1 else ''})",
        [r["run_id"] for r in reversed(rows)],
        "last" if last else "window",
        target.pipeline,
        rows[0]["status"],
    )


BASELINE_FORMS = (
    f"a run id or unique prefix, last:N (the last N runs before it, N from 1 to {MAX_BASELINE_RUNS}) or a "
    f"window: a number and one of {', '.join(_SECONDS)} (30m, 24h, 7d, 2w)"
)
EARLIEST = datetime(1678, 1, 1, tzinfo=UTC)  # inside timestamp[ns]: every stored time is later


def _window_start(now: datetime | None, seconds: int) -> datetime:
    """`seconds` before now; a window longer than the calendar reaches back to EARLIEST."""
    try:
        return max((now or datetime.now(UTC)) - timedelta(seconds=seconds), EARLIEST)
    except OverflowError:
        return EARLIEST


def _run_rows(home: Path, where: str, params: list[Any], tail: str = "") -> list[dict[str, Any]]:
    sql = f"SELECT run_id, pipeline, status, start_time FROM rows WHERE {where} {tail}"
    return select(home, "runs", sql, params).to_pylist()


# -- reading ----------------------------------------------------------------------------------------


def executions_of(home: Path, runs: list[str]) -> pa.Table:
    """The stage executions of `runs` (through the query layer; only their date partitions
    when the run index knows them)."""
    return _rows_of_runs(home, "stage_executions", EXECUTION_COLUMNS, runs)


JUDGED_COLUMNS = ["run_id", "stage", "sample_id", "status", "time"]


def judged_of(home: Path, runs: list[str]) -> pa.Table:
    """The judgements of the samples of `runs`, oldest first (each (run, stage, sample)'s last
    is its judgement there: `run_verdicts`)."""
    return _rows_of_runs(home, "samples", JUDGED_COLUMNS, runs, "time, lsn")


def _rows_of_runs(
    home: Path,
    table: str,
    columns: list[str],
    runs: list[str],
    order: str = "lsn",
    of_sample: tuple[str, str] | None = None,
) -> pa.Table:
    """The rows of `runs` (with `of_sample`, only those of that (stage, sample))."""
    names = ", ".join(f'"{c}"' for c in columns)
    dates = _dates(home, runs)
    terms, params = "list_contains(?::VARCHAR[], run_id)", [runs]
    if of_sample is not None:
        terms, params = f"{terms} AND stage = ? AND sample_id = ?", [*params, *of_sample]
    return select(home, table, f"SELECT {names} FROM rows WHERE {terms} ORDER BY {order}", params, None, dates)


def verdict_run(home: Path, runs: list[str], stage: str, sample: str) -> str | None:
    """The run, of a side's `runs` (oldest first), whose verdict on the sample is the side's
    (`side_verdict`), read from that sample's rows alone; None where no run holds it."""
    of_sample = (stage, sample)
    executions = _rows_of_runs(home, "stage_executions", EXECUTION_COLUMNS, runs, of_sample=of_sample)
    judged = _rows_of_runs(home, "samples", JUDGED_COLUMNS, runs, "time, lsn", of_sample)
    verdicts = run_verdicts(executions, judged)
    age = {run: index for index, run in enumerate(runs)}
    newest_first = sorted(((run, verdict) for (run, _, _), verdict in verdicts.items()), key=lambda r: -age[r[0]])
    found = side_verdict(newest_first, lambda item: item[1])
    return None if found is None else found[0]


def _dates(home: Path, runs: list[str]) -> list[str] | None:
    found: set[str] = set()
    for run_id in runs:
        dates = run_dates_in(homes_of(home), run_id)
        if dates is None:
            return None
        found.update(dates)
    return sorted(found)


# -- per stage ------------------------------------------------------------------------------------


def stage_figures(
    before: pa.Table, after: pa.Table, options: Options, noise: dict[str, dict[str, float]] | None = None
) -> list[dict[str, Any]]:
    """One entry per stage of either side, in the order the target ran them; `noise`: per stage
    and time measure, the band of log ratios within which two runs differ (`run_noise`)."""
    a, b = _by_stage(before), _by_stage(after)
    order = list(dict.fromkeys([*b, *a]))
    noise = noise or {}
    return [_stage_entry(stage, a.get(stage), b.get(stage), options, noise.get(stage, {})) for stage in order]


def run_noise(home: Path, b: Side, a_runs: int, confidence: float) -> tuple[dict[str, dict[str, float]], int]:
    """Per stage and time measure, how far apart (a log ratio) two runs of unchanged code fall at
    `confidence`: the robust spread (1.4826 x MAD) of the measure over the last `NOISE_RUNS`
    finished runs of B's pipeline before B, for a side of `a_runs` pooled runs against one;
    and how many runs that history held (empty below `MIN_NOISE_RUNS`: not known)."""
    if not b.pipeline or b.started is None:
        return {}, 0
    where = "pipeline = ? AND start_time < ? AND run_id <> ? AND list_contains(?::VARCHAR[], status)"
    params = [b.pipeline, b.started, b.runs[-1], list(FINISHED)]
    runs = [row["run_id"] for row in _run_rows(home, where, params, f"ORDER BY start_time DESC LIMIT {NOISE_RUNS}")]
    if len(runs) < MIN_NOISE_RUNS:
        return {}, len(runs)
    levels = ", ".join(f"quantile_cont(duration_ms, {q}) AS {name}" for name, q in TIME_MEASURES.items())
    sql = (
        f"SELECT stage, {levels} FROM rows WHERE list_contains(?::VARCHAR[], run_id) AND status = 'ok' "
        "AND isfinite(duration_ms) GROUP BY stage, run_id HAVING count(*) >= ?"
    )
    found = select(home, "stage_executions", sql, [runs, MIN_EXECUTIONS], None, _dates(home, runs)).to_pydict()
    noise: dict[str, dict[str, float]] = {}
    for stage in set(found["stage"]):
        for name in TIME_MEASURES:
            values = [v for s, v in zip(found["stage"], found[name], strict=True) if s == stage]
            if (band := noise_band(values, a_runs, confidence)) is not None:
                noise.setdefault(stage, {})[name] = band
    return noise, len(runs)


def noise_band(levels: Sequence[float | None], a_runs: int, confidence: float) -> float | None:
    """From a measure's value in each of a pipeline's runs (`levels`), the log ratio within
    which a side of `a_runs` pooled runs and one run fall at `confidence` when nothing changed:
    the robust sd (1.4826 x MAD) of the log levels, times the normal quantile and sqrt(1 + 1/k).
    None below `MIN_NOISE_RUNS` usable levels."""
    values = np.array([value for value in levels if value is not None and value > 0], float)
    if values.size < MIN_NOISE_RUNS:
        return None
    logs = np.log(values)
    spread = 1.4826 * float(np.median(np.abs(logs - np.median(logs))))
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    return z * float(np.sqrt(1 + 1 / max(a_runs, 1))) * spread


def _by_stage(rows: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    if rows.num_rows == 0:
        return {}
    frame = rows.sort_by("start_time").to_pandas()
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for stage, part in frame.groupby("stage", sort=False):
        ok = part[part["status"] == "ok"]
        grouped[str(stage)] = {
            "executions": np.asarray(len(part)),
            "failed": np.asarray(int(part["status"].isin(BAD_EXECUTION).sum())),
            "duration_ms": _finite(ok["duration_ms"]),
            "own_memory_mb": _finite(ok["rss_peak_mb"] - ok["rss_start_mb"]),
            "gpu_peak_mb": _finite(ok["gpu_peak_mb"]),
        }
    return grouped


def _finite(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def _stage_entry(
    stage: str, a: dict | None, b: dict | None, options: Options, noise: dict[str, float]
) -> dict[str, Any]:
    empty = {"executions": np.asarray(0), "failed": np.asarray(0)} | {
        name: np.zeros(0) for name in ("duration_ms", "own_memory_mb", "gpu_peak_mb")
    }
    only_in = "a" if b is None else "b" if a is None else None
    a, b = a or empty, b or empty
    seed = options.seed
    entry: dict[str, Any] = {
        "stage": stage,
        "only_in": only_in,
        "executions": {"a": int(a["executions"]), "b": int(b["executions"])},
        "median_ms": _measure(
            a["duration_ms"], b["duration_ms"], 0.5, options, seed, rank_test=True, floor=MIN_TIME_MS
        ),
        "p95_ms": _measure(a["duration_ms"], b["duration_ms"], 0.95, options, seed + 1, floor=MIN_TIME_MS),
        "own_memory_mb": _measure(a["own_memory_mb"], b["own_memory_mb"], 0.5, options, seed + 2, floor=MIN_MEMORY_MB),
        "gpu_peak_mb": _measure(a["gpu_peak_mb"], b["gpu_peak_mb"], 0.5, options, seed + 3, floor=MIN_MEMORY_MB),
        "failure_rate": _failures(a, b, options),
    }
    for name in ("own_memory_mb", "gpu_peak_mb"):  # the largest too: what `stats` and the Run page show
        entry[name]["max"] = {
            side: (float(values.max()) if values.size else None) for side, values in (("a", a[name]), ("b", b[name]))
        }
    for name in TIME_MEASURES:
        _against_run_noise(entry[name], noise.get(name))
    reasons = [_reason(name, entry[name]) for name in MEASURE_NAMES if entry[name]["called_out"]]
    entry["reasons"] = reasons
    entry["regressed"] = any(entry[name]["called_out"] and entry[name]["worse"] for name in MEASURE_NAMES)
    return entry


MEASURE_NAMES = ("median_ms", "p95_ms", "own_memory_mb", "gpu_peak_mb", "failure_rate")
WORDS = {
    "median_ms": "median time",
    "p95_ms": "p95 time",
    "own_memory_mb": "own memory (median of its executions)",
    "gpu_peak_mb": "GPU peak (median)",
    "failure_rate": "failure rate",
}


def _measure(
    a: np.ndarray, b: np.ndarray, q: float, options: Options, seed: int, rank_test: bool = False, floor: float = 0.0
) -> dict[str, Any]:
    """A quantile of both sides, the relative change, the bootstrap interval of the difference
    and (for the median) the rank test's p-value; called out when significant and larger than
    the threshold (and than `floor`, in the measure's unit)."""
    found: dict[str, Any] = {
        "a": float(np.quantile(a, q)) if a.size else None,
        "b": float(np.quantile(b, q)) if b.size else None,
        "change": None,
        "interval": None,
        "p_value": None,
        "significant": False,
        "called_out": False,
        "worse": False,
    }
    if found["a"] is None or found["b"] is None:
        return found
    difference = found["b"] - found["a"]
    found["change"] = difference / found["a"] if found["a"] > 0 else None
    if min(a.size, b.size) < MIN_EXECUTIONS:
        return found
    low, high = bootstrap_interval(a, b, q, options.confidence, seed)
    found["interval"] = [low, high]
    significant = low > 0 or high < 0
    if rank_test:
        found["p_value"] = mann_whitney_p(a, b)
        significant = significant and found["p_value"] < 1 - options.confidence
    large = abs(difference) > floor and (found["change"] is None or abs(found["change"]) > options.threshold)
    found["significant"] = significant
    found["called_out"] = significant and large
    found["worse"] = difference > 0
    return found


def _against_run_noise(found: dict[str, Any], band: float | None) -> None:
    """A time whose change lies within the run-to-run noise (`band`, a log ratio; None: not
    known) is not called out, however significant against the executions' own spread."""
    found["run_noise"] = None if band is None else float(np.expm1(band))
    found["within_run_noise"] = False
    if band is None or not found["called_out"] or not (found["a"] or 0) > 0 or not (found["b"] or 0) > 0:
        return
    if abs(float(np.log(found["b"] / found["a"]))) <= band:
        found["called_out"], found["within_run_noise"] = False, True


def _failures(a: dict, b: dict, options: Options) -> dict[str, Any]:
    na, nb, fa, fb = int(a["executions"]), int(b["executions"]), int(a["failed"]), int(b["failed"])
    rate_a, rate_b = (fa / na if na else None), (fb / nb if nb else None)
    found: dict[str, Any] = {"a": rate_a, "b": rate_b, "change": None, "p_value": None}
    found.update(significant=False, called_out=False, worse=False)
    if rate_a is None or rate_b is None:
        return found
    found["change"] = rate_b - rate_a
    found["p_value"] = two_proportions_p(fa, na, fb, nb)
    found["significant"] = found["p_value"] < 1 - options.confidence
    found["called_out"] = found["significant"] and abs(found["change"]) > options.threshold
    found["worse"] = found["change"] > 0
    return found


def _reason(name: str, measure: dict[str, Any]) -> str:
    direction = "worse" if measure["worse"] else "better"
    if name == "failure_rate":
        return f"{WORDS[name]} {measure['a']:.1%} -> {measure['b']:.1%} ({direction}, p={measure['p_value']:.2g})"
    change = f"{measure['change']:+.1%}" if measure["change"] is not None else "new"
    return f"{WORDS[name]} {measure['a']:.4g} -> {measure['b']:.4g} ({change}, {direction})"


# -- flips, accuracy, config and environment --------------------------------------------------------


def flips(before: dict[tuple[str, str], str], after: dict[tuple[str, str], str]) -> list[dict[str, str]]:
    """The samples both sides hold whose verdict changed, worst news first (correct -> wrong,
    new failures, then the rest)."""
    changed = [
        {"stage": stage, "sample_id": sample, "from": before[(stage, sample)], "to": verdict}
        for (stage, sample), verdict in after.items()
        if (stage, sample) in before and before[(stage, sample)] != verdict
    ]
    return sorted(changed, key=lambda f: (not _is_worse(f), f["stage"], f["sample_id"]))


GOOD = ("correct", "ok")


def _is_worse(flip: dict[str, str]) -> bool:
    return flip["from"] in GOOD and flip["to"] not in GOOD


def accuracy_figures(
    before: dict[Key, str], after: dict[Key, str], a_runs: list[str], b_runs: list[str], home: Path, options: Options
) -> list:
    """Per stage with judged samples, from each side's verdicts per run (`run_verdicts`): the
    share judged correct on each side (correct / judged, `unlabeled` left out: accuracy.json's
    counts), its change and whether it `fell`
    (`accuracy_fell`); where each side is one run, the stage's metrics (`STAGE_METRICS`: mAP,
    precision, recall, mIoU ...) and per class those accuracy.json holds (a mask's IoU, a
    detector's AP, AP50, precision and recall)."""
    a, b = scored(before), scored(after)
    one_run_each = len(a_runs) == 1 and len(b_runs) == 1
    per_class, metrics = {}, {}
    if one_run_each:
        documents = [load_accuracy(holding(home, run), run) for run in (a_runs[0], b_runs[0])]
        per_class, metrics = _per_class(*documents), _stage_metrics(*documents)
    found = []
    for stage in dict.fromkeys([*b, *a]):
        verdicts_a, verdicts_b = a.get(stage, {}), b.get(stage, {})
        (correct_a, judged_a), (correct_b, judged_b) = _counts(verdicts_a), _counts(verdicts_b)
        rate_a = correct_a / judged_a if judged_a else None
        rate_b = correct_b / judged_b if judged_b else None
        entry = {
            "stage": stage,
            "a": rate_a,
            "b": rate_b,
            "correct": {"a": correct_a, "b": correct_b},
            "judged": {"a": judged_a, "b": judged_b},
            "change": rate_b - rate_a if rate_a is not None and rate_b is not None else None,
            **_accuracy_test(verdicts_a, verdicts_b, one_run_each),
            "metrics": metrics.get(stage, {}),
            "per_class": per_class.get(stage, {}),
        }
        entry["significant"] = _significant(entry, options.confidence)
        entry["fell"] = accuracy_fell(entry, options.accuracy_drop)
        found.append(entry)
    return found


def _counts(verdicts: dict[tuple[str, str], bool]) -> tuple[int, int]:
    return sum(verdicts.values()), len(verdicts)


PAIRED, UNPAIRED = "McNemar", "two-proportion z-test"


def _accuracy_test(
    a: dict[tuple[str, str], bool], b: dict[tuple[str, str], bool], one_run_each: bool
) -> dict[str, Any]:
    """How significant a stage's change of accuracy is: where each side is one run and they
    judged samples in common, the exact McNemar test of those samples whose verdict changed
    (`worse`: correct -> not, `better`: the other way; `paired`: the samples both judged — a
    sample one run did not judge, its stage crashed before its result say, says nothing of a
    change and its failure is the stage's failure
    rate); else (a pooled side, another golden set) the pooled two-proportion z-test of the two
    shares, each sample counted once (a sample judged in each of a pooled side's runs is one
    sample's evidence, not as many samples: its share of correct verdicts).
    {test, p_value[, worse, better, paired]}; p_value None when a side judged nothing."""
    if not a or not b:
        return {"test": None, "p_value": None}
    paired_a, paired_b = ({sample: v for (_, sample), v in side.items()} for side in (a, b))
    both = paired_a.keys() & paired_b.keys()
    if one_run_each and both:
        worse = sum(paired_a[s] and not paired_b[s] for s in both)
        better = sum(paired_b[s] and not paired_a[s] for s in both)
        found = {"worse": worse, "better": better, "paired": len(both)}
        return {"test": PAIRED, "p_value": mcnemar_p(worse, better), **found}
    return {"test": UNPAIRED, "p_value": two_proportions_p(*_per_sample(a), *_per_sample(b))}


def _significant(entry: dict[str, Any], confidence: float) -> bool:
    """p below 1 - confidence, and for the paired test its changed samples moving the way the
    shares did (the shares count the samples one run alone judged too)."""
    if entry["p_value"] is None or entry["p_value"] >= 1 - confidence:
        return False
    return entry["test"] != PAIRED or (entry["better"] - entry["worse"]) * (entry["change"] or 0) > 0


def _per_sample(verdicts: dict[tuple[str, str], bool]) -> tuple[float, int]:
    """(the samples' shares of correct verdicts summed, distinct samples): one run's counts as
    they are; a pooled side's samples each counted once."""
    judged: dict[str, list[bool]] = {}
    for (_, sample), correct in verdicts.items():
        judged.setdefault(sample, []).append(correct)
    return sum(sum(v) / len(v) for v in judged.values()), len(judged)


def accuracy_fell(entry: dict[str, Any], drop: float | None) -> bool:
    """Whether a stage's accuracy fell past the gate: significantly (`_accuracy_test` at the
    comparison's confidence) and by more than `drop` rate points. A fall of a few samples on a
    small golden set is within its noise; `drop` None: the gate does not look at accuracy."""
    if drop is None or entry["change"] is None:
        return False
    return bool(entry["significant"]) and entry["change"] < -drop


def accuracy_words(entry: dict[str, Any], drop: float | None) -> str:
    """How a stage's accuracy moved, in words (the CLI's accuracy line, the Compare page): the
    points, whether the fall or rise is significant (the test and its p), and what the gate
    (`drop`: rate points; None: off) makes of a fall. Empty when a side judged nothing."""
    change = entry["change"]
    if change is None:
        return ""
    if change == 0:
        return "unchanged"
    moved, p = f"{abs(change) * 100:.1f} points", accuracy_p_text(entry)
    if not entry["significant"]:
        return f"{'rose' if change > 0 else 'fell'} {moved}, not significant ({p}): within the samples' noise"
    if change > 0:
        return f"rose {moved}, significant ({p})"
    if drop is None:
        return f"fell {moved}, significant ({p}); the accuracy gate is off"
    if entry["fell"]:
        return f"FELL {moved}, significant ({p}), more than the {drop * 100:.1f} allowed"
    return f"fell {moved}, significant ({p}), within the {drop * 100:.1f} points allowed"


def accuracy_p_text(entry: dict[str, Any]) -> str:
    """Which test judged a stage's accuracy, and its p: "McNemar p=0.002", "z-test p=0.064"."""
    return f"{'McNemar' if entry['test'] == PAIRED else 'z-test'} p={entry['p_value']:.2g}"


def accuracy_gate_text(drop: float | None, confidence: float) -> str:
    """The gate's rule for accuracy, in words (the CLI prints it; --json has `accuracy_drop`)."""
    if drop is None:
        return "accuracy gate: off (--accuracy-drop off): a fall of accuracy is shown, never a regression"
    return (
        f"accuracy gate: a stage's accuracy falling by more than {drop * 100:.1f} points and significantly "
        f"(p < {1 - confidence:.2g}: McNemar's test of the samples both runs judged, else a two-proportion "
        "z-test) is a regression (--accuracy-drop sets the points; "
        "--accuracy-drop off: never)"
    )


# A stage's metrics as accuracy.json holds them (a path into its `metrics`), by the name compare gives them.
STAGE_METRICS = {
    "mAP": ("coco", "AP"),
    "AP50": ("coco", "AP50"),
    "precision": ("precision",),
    "recall": ("recall",),
    "F1": ("f1",),
    "mIoU": ("miou",),
    "pixel accuracy": ("accuracy",),
}
CLASS_METRICS = ("AP", "AP50", "precision", "recall")  # of a detector's per-class figures (per_class)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _stage_metrics(a: dict | None, b: dict | None) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per stage, each of STAGE_METRICS that either side's accuracy.json holds: {a, b}."""
    found: dict[str, Any] = {}
    for side, document in (("a", a), ("b", b)):
        for stage, summary in ((document or {}).get("stages") or {}).items():
            for name, path in STAGE_METRICS.items():
                value: Any = summary.get("metrics") or {}
                for key in path:
                    value = value.get(key) if isinstance(value, dict) else None
                if _number(value):
                    found.setdefault(stage, {}).setdefault(name, {"a": None, "b": None})[side] = value
    return found


def _per_class(a: dict | None, b: dict | None) -> dict[str, dict[str, dict[str, dict[str, float | None]]]]:
    """Per stage, metric and class: {a, b}. A mask's `per_class_iou` (class -> IoU) as it is; a
    detector's `per_class` (class -> its figures) as CLASS_METRICS, each by class."""
    found: dict[str, Any] = {}

    def put(stage: str, metric: str, name: Any, side: str, value: Any) -> None:
        if _number(value) or value is None:
            found.setdefault(stage, {}).setdefault(metric, {}).setdefault(str(name), {})[side] = value

    for side, document in (("a", a), ("b", b)):
        for stage, summary in ((document or {}).get("stages") or {}).items():
            for metric, values in (summary.get("metrics") or {}).items():
                if not (metric.startswith("per_class") and isinstance(values, dict)):
                    continue
                for name, value in values.items():
                    if isinstance(value, dict):
                        for figure in CLASS_METRICS:
                            if figure in value:
                                put(stage, figure, name, side, value[figure])
                    else:
                        put(stage, metric, name, side, value)
    return found


def dict_diff(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """The keys (dotted paths into nested mappings) whose values differ: {"key", "from", "to"};
    a key on one side only has None on the other."""
    a, b = _flatten(before), _flatten(after)
    return [
        {"key": key, "from": a.get(key), "to": b.get(key)}
        for key in sorted(a.keys() | b.keys())
        if a.get(key) != b.get(key)
    ]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value} if prefix else {}


def run_clock_skew(home: Path, run_id: str) -> dict[str, Any] | None:
    """How far the run's pipeline clock was from the daemon's, as its audit trail says
    (`clock_skew`: offset_s, message; None: within a minute, or not measured)."""
    return load_audit_head(holding(home, run_id), run_id).get("clock_skew")


CLOCK_CONSEQUENCE = {
    "A": "whether A is among the runs before B (the run-to-run noise's history)",
    "B": "the runs before B: a last:N or window baseline, the run before it, the run-to-run noise's history",
    "pool": "which runs the baseline pools and the run-to-run noise's history",
}
MAX_SKEWED_NAMED = 10  # a pooled baseline's skewed runs named in its warning (--json lists them all)


def clock_skews(home: Path, a: Side, b: Side) -> list[dict[str, Any]]:
    """The runs compared whose pipeline clock was off (every run of each side, a pooled
    baseline's too): each {side, run_id, offset_s, message}. Every figure compared is measured on
    the pipeline's monotonic clock and holds; what a skewed wall clock moves is which runs are
    taken as earlier (start times, on the pipelines' clocks) and the time windows."""
    found = []
    for name, side in (("A", a), ("B", b)):
        for run_id in side.runs:
            if skew := run_clock_skew(home, run_id):
                found.append({"side": name, "run_id": run_id, **skew})
    return found


def clock_warnings(skews: list[dict[str, Any]], a: Side, b: Side) -> list[str]:
    """One warning per side with a skewed run: the run; for a pooled side, how many of its runs
    and which (the first MAX_SKEWED_NAMED), never a warning per run."""
    found = []
    for name, side in (("A", a), ("B", b)):
        mine = [skew for skew in skews if skew["side"] == name]
        if not mine:
            continue
        if side.is_history:
            named = ", ".join(f"{skew['run_id'][:8]} ({_clock_words(skew)})" for skew in mine[:MAX_SKEWED_NAMED])
            more = (
                f" and {len(mine) - MAX_SKEWED_NAMED} more (--json: clock_skew)" if len(mine) > MAX_SKEWED_NAMED else ""
            )
            said, consequence = (
                f"{name}: {len(mine)} of its {len(side.runs)} runs had a pipeline clock off: {named}{more}",
                "pool",
            )
        else:
            said, consequence = f"{name} (run {mine[0]['run_id'][:8]}): {mine[0]['message']}", name
        found.append(
            f"{said}. Stage times, memory and failures are measured on a monotonic clock and compare as they are; "
            f"but which runs count as earlier ({CLOCK_CONSEQUENCE[consequence]}) is read from start times on the "
            "pipelines' clocks and may be wrong"
        )
    return found


def _clock_words(skew: dict[str, Any]) -> str:
    """How far off a run's clock was, in a few words ("56.0 years behind the daemon's")."""
    return skew["message"].split(":", 1)[0].removeprefix("the pipeline's clock was ")


def setting_of(home: Path, run_id: str) -> dict[str, Any] | str:
    """What the run started with: its config snapshot and its environment (host, Python,
    packages, GPU), from the audit trail; or why they are not known (its audit.json damaged or
    missing: compared, every key would read as changed to None)."""
    audit = load_audit_head(holding(home, run_id), run_id)  # the head holds both: no stage line is read
    if audit["status"] == "unknown":  # no head that reads
        return audit["problems"][0]
    environment = dict(audit.get("environment") or {})
    environment.setdefault("host", audit.get("host"))
    return {"config": audit.get("config") or {}, "environment": environment}


def setting_diffs(home: Path, a: Side, b: Side) -> tuple[dict[str, Any], list[str]]:
    """The config and environment diffs of A's and B's newest runs (None: not known), and a
    warning per side whose audit trail does not say them."""
    settings = {"A": setting_of(home, a.runs[-1]), "B": setting_of(home, b.runs[-1])}
    unknown = [
        f"{name}'s config and environment are not known, so not compared: {why}"
        for name, why in settings.items()
        if isinstance(why, str)
    ]
    before, after = settings["A"], settings["B"]
    if unknown or isinstance(before, str) or isinstance(after, str):
        return {"config": None, "environment": None}, unknown
    return {name: dict_diff(before[name], after[name]) for name in ("config", "environment")}, []


# -- all together ---------------------------------------------------------------------------------


def compare(home: Path, a: Side, b: Side, options: Options | None = None) -> dict[str, Any]:
    """Everything `stagewatch compare` prints, as one JSON-ready document."""
    options = options or Options()
    with skipped_files() as skipped:
        before, after = executions_of(home, a.runs), executions_of(home, b.runs)
        # each sample's verdict in each run: what the flips and the accuracy both read
        in_a, in_b = run_verdicts(before, judged_of(home, a.runs)), run_verdicts(after, judged_of(home, b.runs))
        accuracy = accuracy_figures(in_a, in_b, a.runs, b.runs, home, options)
        noise, noise_runs = run_noise(home, b, len(a.runs), options.confidence)
    skipped = list(dict.fromkeys([*a.skipped, *b.skipped, *skipped]))
    stages = stage_figures(before, after, options, noise)
    _judge_one_sided(stages, _stages_of_run(before, a.runs[-1]), b)
    settings, unknown_settings = setting_diffs(home, a, b)
    skews = clock_skews(home, a, b)
    document: dict[str, Any] = {
        "a": a.summary(),
        "b": b.summary(),
        "partial": a.partial or b.partial,
        "warnings": side_warnings(a, b)
        + clock_warnings(skews, a, b)
        + skipped_warnings(skipped)
        + threshold_warnings(options.threshold)
        + unknown_settings,
        "skipped_files": skipped,
        "clock_skew": skews,
        "threshold": options.threshold,
        "confidence": options.confidence,
        "accuracy_drop": options.accuracy_drop,
        "run_noise": {"runs": noise_runs, "needed": MIN_NOISE_RUNS, "known": bool(noise)},
        "stages": stages,
        "flips": flips(side_verdicts(in_a, a.runs), side_verdicts(in_b, b.runs)),
        "flips_not_judged": None,
        "accuracy": accuracy,
        **settings,  # config, environment: the keys that differ (None: not known, said in warnings)
    }
    if a.is_history:
        from stagewatch.daemon.compare._shifts import history_shifts

        document["shifts"] = history_shifts(pa.concat_tables([before, after]), options.threshold)
    document["failures"] = gate_failures(document, options)
    document["not_judged"] = not_judged(document)
    # Partial figures are not judged: `regressed` is null then, neither a pass nor a regression,
    # the comparison's and each stage's (a stage marked regressed under "not judged" said both).
    document["regressed"] = None if document["not_judged"] else bool(document["failures"])
    if document["not_judged"]:
        for stage in stages:
            stage["regressed"] = None
    if left_out := rows_left_out(skipped):
        # A sample whose verdict row was left out reads as merely run ("ok"), or as not run: each
        # such sample a flip that never happened. The flips over the rows read are not given.
        document["flips"], document["flips_not_judged"] = None, {"reason": left_out, "skipped_files": skipped}
    return document


def run_noise_text(document: dict[str, Any]) -> str:
    """What the times were judged against besides the executions' own spread, in words (the CLI
    and the Compare page)."""
    noise, pipeline = document["run_noise"], document["b"]["pipeline"] or "its pipeline"
    if noise["known"]:
        return (
            f"Times are called out only beyond the run-to-run noise: how far apart two of the last "
            f"{noise['runs']} runs of {pipeline} fell (median and p95 per stage)."
        )
    return (
        f"The run-to-run noise is not known ({noise['runs']} earlier finished run{'' if noise['runs'] == 1 else 's'} "
        f"of {pipeline}, "
        f"{noise['needed']} needed): a time is judged against its executions' spread alone, and a busier "
        "machine reads as slower code."
    )


def not_judged(document: dict[str, Any]) -> str | None:
    """Why the figures cannot be judged (the gate neither passes nor fails them), or None."""
    if document["partial"]:
        return "a run compared has not ended, its figures are partial"
    return rows_left_out(document["skipped_files"])


def rows_left_out(skipped: list[str]) -> str | None:
    """Why figures over rows read without those of the damaged data files `skipped` are not
    judged (the stages' verdict, the flips), or None when no file was left out."""
    return f"rows were left out for {len(skipped)} damaged data file(s)" if skipped else None


def flips_not_judged_text(not_judged: dict[str, Any]) -> str:
    """Why the flips are not given (`flips_not_judged`), in words, for the CLI and the page."""
    return (
        f"{not_judged['reason']} ({', '.join(not_judged['skipped_files'])}): a sample whose row was left out "
        "would look changed, so no flip is listed until `stagewatch rebuild` (daemon stopped) rebuilds the "
        "tables from the event log"
    )


def skipped_warnings(skipped: list[str]) -> list[str]:
    """Rows the query layer could not read, named by their files."""
    if not skipped:
        return []
    return [
        f"rows were left out: the damaged data file(s) {', '.join(skipped)} could not be read; the figures are "
        "those of the rows read and the comparison is not judged until `stagewatch rebuild` (daemon stopped) "
        "rebuilds the tables from the event log"
    ]


def _stages_of_run(executions: pa.Table, run_id: str) -> set[str]:
    return set(executions.filter(pc.equal(executions["run_id"], run_id))["stage"].to_pylist())


def _judge_one_sided(stages: list[dict[str, Any]], baseline_newest: set[str], b: Side) -> None:
    """A stage of one side only, in words; one that ran in the baseline's newest run and not in
    B vanished: a regression (unless B has not ended: it may still come)."""
    for entry in stages:
        executions = entry["executions"]
        if entry["only_in"] == "b":
            entry["reasons"].append(f"only in B ({executions['b']} executions): a new stage")
        elif entry["only_in"] == "a" and b.partial:
            entry["reasons"].append(f"only in A ({executions['a']} executions): not in B so far (B has not ended)")
        elif entry["only_in"] == "a" and entry["stage"] in baseline_newest:
            entry["reasons"].append(f"only in A ({executions['a']} executions): it did not run in B")
            entry["regressed"] = True
        elif entry["only_in"] == "a":
            entry["reasons"].append(f"only in A ({executions['a']} executions), not in its newest run nor in B")


def side_warnings(a: Side, b: Side) -> list[str]:
    """What the figures cannot say on their own: a side still running (partial figures), a side
    that crashed, runs of different pipelines."""
    found = []
    if a.pipeline != b.pipeline:
        found.append(
            f"A and B are runs of different pipelines ({a.pipeline or 'none recorded'} and "
            f"{b.pipeline or 'none recorded'}): their stages are matched by name only"
        )
    for name, side in (("A", a), ("B", b)):
        if side.partial:
            found.append(
                f"{name} ({side.label}) has not ended ({side.status or 'no status recorded'}): its figures are "
                "partial, those recorded so far; the comparison is not judged"
            )
        elif side.status == CRASHED:
            found.append(f"{name} ({side.label}) crashed: its figures stop where its process was lost")
    return found


def gate_failures(document: dict[str, Any], options: Options) -> list[str]:
    """Why a CI gate fails on this comparison: each regressed stage with its reasons, each
    stage whose accuracy fell past the gate (`accuracy_fell`), B crashed; empty: it passes."""
    found = [f"{s['stage']}: {'; '.join(s['reasons'])}" for s in document["stages"] if s["regressed"]]
    if document["b"]["status"] == CRASHED:  # figures that stop where the process was lost are no pass
        found.append("B crashed: its process was lost before the run ended")
    found += [
        f"{shift['stage']}: {shift['measure']} shifted {shift['change']:+.1%} since run {shift['started_run'][:8]}"
        for shift in document.get("shifts", [])
        if shift["ongoing"]
    ]
    found += [
        f"{entry['stage']}: accuracy {entry['a']:.1%} -> {entry['b']:.1%} ({entry['correct']['b']}/"
        f"{entry['judged']['b']} correct; fell {-entry['change'] * 100:.1f} points, more than the "
        f"{options.accuracy_drop * 100:.1f} allowed, {accuracy_p_text(entry)})"
        for entry in document["accuracy"]
        if accuracy_fell(entry, options.accuracy_drop)
    ]
    return found
