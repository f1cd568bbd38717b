"""The verdict of a sample: one rule for everything compare says of it (its flips, the accuracy
shares and their tests, the Compare page's cases), and the rule the rest of stagewatch counts by.

In one run, a sample's verdict is the accuracy worker's last judgement of it (`correct`, `wrong`,
`invalid`, `unlabeled`), as accuracy.json, `stagewatch show`, the Accuracy page and the failure
browser count it: a judgement stands though the stage failed after giving its result, or a later
execution of the sample failed (that failure is in the stage's failure rate). A sample never
judged in the run has its last execution's outcome: `failed` or `crashed`, or `ok` (a failure
followed by a retry that ended ok is `ok`).

On a side of several runs (a pooled baseline), its verdict is the newest run's that holds it;
where that is merely `ok` (a run without a golden set), the newest judgement of an older run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import pyarrow as pa

BAD_EXECUTION = ("failed", "crashed")
JUDGEMENTS = ("correct", "wrong", "invalid", "unlabeled")
SCORED = ("correct", "wrong", "invalid")  # the judgements an accuracy share counts (`unlabeled` is not)

Key = tuple[str, str, str]  # (run, stage, sample)
T = TypeVar("T")


def verdict_in_run(last_execution: str | None, judgement: str | None) -> str | None:
    """A sample's verdict in one run from the status of its last execution of the stage there
    (None: none recorded) and its last judgement there (None: not judged); None where neither."""
    if judgement is not None:
        return judgement
    if last_execution in BAD_EXECUTION:
        return last_execution
    return None if last_execution is None else "ok"


def verdict_row(last_execution: Mapping[str, Any] | None, judgement: Mapping[str, Any] | None) -> Any:
    """The row behind a sample's verdict in one run (`verdict_in_run`), of its last execution
    and its last judgement there (each a row with a `status`, or None): the judgement where that
    is the verdict, else the execution."""
    verdict = verdict_in_run(_status(last_execution), _status(judgement))
    return judgement if judgement is not None and judgement["status"] == verdict else last_execution


def _status(row: Mapping[str, Any] | None) -> str | None:
    return None if row is None else row["status"]


def run_verdicts(executions: pa.Table, judged: pa.Table) -> dict[Key, str]:
    """(run, stage, sample) -> the sample's verdict in that run (`verdict_in_run`), from the
    stage executions of some runs and their judgements (`samples` rows, oldest first)."""
    last_execution: dict[Key, str] = {}
    rows = executions.filter(executions["sample_id"].is_valid()).sort_by("start_time")
    for key, status in zip(_keys(rows), rows["status"].to_pylist(), strict=True):
        last_execution[key] = status
    judgement = dict(zip(_keys(judged), judged["status"].to_pylist(), strict=True))  # the last one wins
    return {key: verdict_in_run(last_execution.get(key), judgement.get(key)) for key in {*last_execution, *judgement}}


def _keys(rows: pa.Table) -> Iterable[Key]:
    return zip(*(rows[name].to_pylist() for name in ("run_id", "stage", "sample_id")), strict=True)


def side_verdict(newest_first: Iterable[T], verdict: Callable[[T], Any] = lambda item: item) -> T | None:
    """Of a sample's verdicts in a side's runs, newest run first (each an item whose verdict
    `verdict` reads; the runs that do not hold it left out), the one that is the side's: the
    newest, unless that is merely `ok`, then the newest judgement after it. Reads no more of
    `newest_first` than it needs (the Compare page reads a run's rows per item)."""
    newest = None
    for item in newest_first:
        if newest is None:
            newest = item
            if verdict(item) != "ok":
                return item
        elif verdict(item) in JUDGEMENTS:
            return item
    return newest


def side_verdicts(verdicts: Mapping[Key, str], runs: list[str]) -> dict[tuple[str, str], str]:
    """(stage, sample) -> the sample's verdict on a side of `runs` (oldest first), from its
    verdicts in each run (`run_verdicts`)."""
    newest_first: dict[tuple[str, str], list[str]] = {}
    age = {run: -index for index, run in enumerate(runs)}
    for (_, stage, sample), verdict in sorted(verdicts.items(), key=lambda item: age[item[0][0]]):
        newest_first.setdefault((stage, sample), []).append(verdict)
    return {key: side_verdict(found) for key, found in newest_first.items()}


def scored(verdicts: Mapping[Key, str]) -> dict[str, dict[tuple[str, str], bool]]:
    """Per stage: (run, sample) -> whether it was judged correct, for the samples a run judged
    `correct`, `wrong` or `invalid` (`unlabeled` is left out): accuracy.json's counts."""
    found: dict[str, dict[tuple[str, str], bool]] = {}
    for (run, stage, sample), verdict in verdicts.items():
        if verdict in SCORED:
            found.setdefault(stage, {})[(run, sample)] = verdict == "correct"
    return found
