"""The time outside stages (data loading, I/O, glue) and each percentile's exemplar, through a
real daemon and the real CLI: a pipeline that sleeps between its stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stagewatch.daemon import Filters, query_stages
from stagewatch.daemon.query._gaps import gap_spans
from tests.conftest import DaemonProcess, run_python, sw

SAMPLES = 4
SLEEP_S = 0.05  # between stages: twice per sample
SLOWEST = "f2"  # its detection sleeps longest

PIPELINE = """
import time, stagewatch
run = stagewatch.init(pipeline="gaps", home={home!r})
for frame in range({samples}):
    sample = f"f{{frame}}"
    time.sleep({sleep})  # "loading" the sample: no stage runs
    with run.stage("preprocessing", sample_id=sample, input_path=f"/data/{{sample}}.png"):
        time.sleep(0.005)
    time.sleep({sleep})  # glue between stages
    with run.stage("detection", sample_id=sample, input_path=f"/data/{{sample}}.png"):
        with run.stage("nms", sample_id=sample):  # nested: inside its parent, no time of its own
            time.sleep(0.002)
        time.sleep(0.04 if sample == {slowest!r} else 0.01)
run.finish()
assert run.flush(10), "the daemon did not acknowledge the run"
print(run.id)
"""


@pytest.fixture(scope="module")
def sleepy(tmp_path_factory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("g") / "home"
    daemon = DaemonProcess(home).start()
    try:
        code = PIPELINE.format(home=str(home), samples=SAMPLES, sleep=SLEEP_S, slowest=SLOWEST)
        result = run_python(code)
        assert result.returncode == 0, result.stderr
        run_id = result.stdout.split()[-1]
        daemon.audit(run_id)
    finally:
        daemon.stop()
    return home, run_id


def _outside(stats: list[dict]) -> dict:
    (row,) = [entry for entry in stats if entry.get("outside_stages")]
    return row


def test_time_outside_stages_is_the_sleeps_and_completes_the_wall_time(sleepy) -> None:
    home, run_id = sleepy
    result = sw("stats", "--home", str(home), "--json")
    assert result.returncode == 0, result.stderr
    row = _outside(json.loads(result.stdout))
    slept_ms = 2 * SAMPLES * SLEEP_S * 1000
    assert row["stage"] == "(outside stages)" and row["wall"]["runs"] == 1
    assert row["total_ms"] >= 0.8 * slept_ms  # without the gaps there is nothing near this
    # Per sample: both sleeps of that sample (the first sample also carries the run's start-up).
    assert row["count"] == SAMPLES + 1  # the samples and the run's tail after its last stage
    assert row["duration_ms"]["median"] >= 0.8 * 2 * SLEEP_S * 1000
    # The top-level stages do not overlap: their union is the sum of their wall spans, and
    # with the time outside them it is the run's wall time.
    stages = query_stages(home, Filters(run=run_id)).to_pylist()
    spans_ms = sum((s["end_time"] - s["start_time"]).total_seconds() * 1000 for s in stages if s["parent_span"] is None)
    wall = row["wall"]
    assert wall["stages_ms"] == pytest.approx(spans_ms, abs=0.01)
    assert wall["stages_ms"] + wall["outside_ms"] == pytest.approx(wall["wall_ms"])
    assert wall["outside_ms"] == pytest.approx(row["total_ms"])
    # The share column adds up: the top-level stages' shares and this row's, of the wall time; a
    # nested stage's share is of the same whole and not part of the sum (its time is in its
    # parent's: counted twice, it shrank every share).
    every = {entry["stage"]: entry for entry in json.loads(result.stdout)}
    nested = every.pop("nms")
    assert sum(entry["share_of_time"] for entry in every.values()) == pytest.approx(1.0)
    assert row["share_of_time"] == pytest.approx(wall["outside_ms"] / wall["wall_ms"])
    nms_ms = sum(s["duration_ms"] for s in stages if s["stage"] == "nms")
    assert nested["share_of_time"] == pytest.approx(nms_ms / wall["wall_ms"], rel=0.01)


def test_show_and_stats_print_the_outside_row(sleepy) -> None:
    home, run_id = sleepy
    shown = sw("show", "--home", str(home), run_id)
    assert shown.returncode == 0, shown.stderr
    assert "(outside stages)" in shown.stdout and "+ outside stages" in shown.stdout
    # each figure under its own heading (the max once sat under "p95 ms")
    lines = shown.stdout.splitlines()
    heading = next(line for line in lines if "median ms" in line)
    outside = next(line for line in lines if line.strip().startswith("(outside stages)"))
    row = _outside(json.loads(sw("stats", "--home", str(home), "--run", run_id, "--json").stdout))
    for column, figure in (("median ms", "median"), ("p95 ms", "p95"), ("max ms", "max")):
        printed_value = outside[: heading.index(column) + len(column)].split()[-1]
        assert float(printed_value) == pytest.approx(row["duration_ms"][figure], abs=0.01), column
    printed = sw("stats", "--home", str(home), "--run", run_id)
    assert "(outside stages)" in printed.stdout and "wall " in printed.stdout
    header, *rows = printed.stdout.splitlines()
    outside = next(row for row in rows if row.startswith("(outside stages)"))
    # its share of time under "time %", as the stages' (it sat one column to the left)
    assert outside.rstrip().endswith("%") and len(outside.rstrip()) == len(header.rstrip())
    by_stage = sw("stats", "--home", str(home), "--stage", "detection", "--json")  # a stage asked for: no row
    assert not [e for e in json.loads(by_stage.stdout) if e.get("outside_stages")]


def test_the_max_exemplar_is_the_execution_that_slept_longest(sleepy) -> None:
    home, run_id = sleepy
    result = sw("stats", "--home", str(home), "--json")
    stats = {entry["stage"]: entry for entry in json.loads(result.stdout)}
    slowest = stats["detection"]["exemplars"]["max"]
    assert (slowest["run_id"], slowest["sample_id"], slowest["input_path"]) == (run_id, SLOWEST, f"/data/{SLOWEST}.png")
    assert slowest["duration_ms"] == stats["detection"]["duration_ms"]["max"]
    assert slowest["links"]["case"] == f"?page=run&run={run_id}&sample={SLOWEST}"
    durations = {
        s["sample_id"]: s["duration_ms"] for s in query_stages(home, Filters(run=run_id, stage="detection")).to_pylist()
    }
    p95 = stats["detection"]["duration_ms"]["p95"]
    nearest = min(durations.values(), key=lambda d: abs(d - p95))
    assert stats["detection"]["exemplars"]["p95"]["duration_ms"] == nearest


MIXED = """
import time, stagewatch
run = stagewatch.init(pipeline="mixed", home={home!r})
time.sleep(0.03)  # before a stage of no sample (loading a model, say)
with run.stage("calibrate"):
    pass
for frame in range(2):
    with run.stage("detection", sample_id=f"f{{frame}}"):
        time.sleep(0.002)
time.sleep(0.2)  # the run's tail: writing results after its last stage
run.finish()
assert run.flush(10), "the daemon did not acknowledge the run"
print(run.id)
"""


def test_the_tail_is_a_bucket_of_its_own_beside_the_time_before_stages_of_no_sample(daemon: DaemonProcess) -> None:
    """Stages with no sample and the run's tail were one bucket of the per-sample figures (both
    have no sample id): the tail's time was added to the gaps before the stages of no sample."""
    result = run_python(MIXED.format(home=str(daemon.home)))
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.split()[-1]
    daemon.audit(run_id)
    gaps = gap_spans(daemon.home, run_id).to_pylist()
    unnamed = [gap["gap_ms"] for gap in gaps if gap["sample_id"] is None]
    assert len(unnamed) == 2  # before calibrate, and the tail
    row = _outside(json.loads(sw("stats", "--home", str(daemon.home), "--run", run_id, "--json").stdout))
    assert row["count"] == 4  # calibrate's bucket, f0, f1, the tail
    assert row["duration_ms"]["max"] == pytest.approx(max(gap["gap_ms"] for gap in gaps))
    assert row["total_ms"] == pytest.approx(sum(gap["gap_ms"] for gap in gaps))


def test_the_totals_of_many_runs_are_the_sums_of_their_rows(daemon) -> None:
    """The Performance page and `stats` read the finished runs' count and sums (`outside_total`),
    not a row per run (10,000 rows made into Python took longer than the query): they agree with
    `outside_stages`' rows, run by run, and so does the row shown."""
    import time

    import stagewatch
    from stagewatch.daemon.query._gaps import joined_with_outside, outside_stages, outside_total, with_outside_stages

    for number in range(3):
        with stagewatch.init(pipeline="gaps", home=daemon.home) as run:
            for frame in range(2):
                time.sleep(0.01 * (number + 1))
                with run.stage("detection", sample_id=f"f{frame}"):
                    time.sleep(0.002)
        daemon.audit(run.id)
    row, split = outside_stages(daemon.home, Filters())
    same_row, total = outside_total(daemon.home, Filters())
    assert len(split) == total["runs"] == 3 and same_row == row
    assert total["wall_ms"] == pytest.approx(sum(run["wall_ms"] for run in split))
    assert total["outside_ms"] == pytest.approx(sum(run["outside_ms"] for run in split))
    assert total["outside_ms"] >= 0.8 * 2 * (10 + 20 + 30)  # the sleeps between the stages
    stats = [{"stage": "detection", "share_of_time": 1.0}]
    shown, expected = with_outside_stages(daemon.home, Filters(), stats), joined_with_outside(stats, row, split)
    assert [entry["share_of_time"] for entry in shown] == pytest.approx([e["share_of_time"] for e in expected])
    assert shown[-1]["wall"] == pytest.approx(expected[-1]["wall"])
    none = {"runs": 0, "wall_ms": 0.0, "outside_ms": 0.0}
    assert outside_total(daemon.home, Filters(stage="detection")) == (None, none)  # a stage asked for: no row


def test_the_same_question_gets_the_same_figures_every_time(daemon) -> None:
    """The time outside stages is summed in integer ns: a sum of floats followed the order
    DuckDB's threads met the runs' files, and the same query on the same rows gave figures a
    last digit apart (`stats` and the Performance page disagreed with themselves)."""
    import time

    import stagewatch
    from stagewatch.daemon.query._gaps import outside_stages, outside_total

    for number in range(6):
        with stagewatch.init(pipeline="gaps", home=daemon.home) as run:
            for frame in range(5):
                time.sleep(0.001 * (number + 1))
                with run.stage("detection", sample_id=f"f{frame}"):
                    pass
        daemon.audit(run.id)
    answers = set()
    for _ in range(30):
        for row, _ in (outside_stages(daemon.home, Filters()), outside_total(daemon.home, Filters())):
            answers.add((row["duration_ms"]["sum"], row["duration_ms"]["mean"], row["duration_ms"]["p95"]))
    assert len(answers) == 1, answers
