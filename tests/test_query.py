"""Queries, stats and export through the real daemon and the real CLI."""

from __future__ import annotations

import json
import logging
import time
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pytest

import stagewatch
from stagewatch.daemon.query._sql import select
from tests.conftest import FAKE_CLOCK, DaemonProcess, run_python, sw, wait_for


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Two runs through a real daemon: one clean, one that fails at detection, with logs."""
    home = tmp_path_factory.mktemp("q") / "home"
    daemon = DaemonProcess(home).start()
    handler = stagewatch.LoggingHandler()
    log = logging.getLogger("pipeline")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    rng = np.random.default_rng(3)
    ids = {}
    try:
        for name, failing in (("clean", False), ("broken", True)):
            with stagewatch.init(pipeline=name, home=home) as run:
                for i in range(40):
                    for stage, scale in (("preprocessing", 1.0), ("detection", 3.0)):
                        try:
                            with run.stage(stage, sample_id=f"f{i}"):
                                end = time.perf_counter() + rng.exponential(scale) / 1000
                                while time.perf_counter() < end:  # real work of a known cost
                                    pass
                                if failing and stage == "detection" and i == 7:
                                    log.error("calibration missing on f7")
                                    raise RuntimeError("calibration missing")
                                log.info("%s ok", stage)
                        except RuntimeError:
                            pass
            ids[name] = run.id
            daemon.audit(run.id)
        stagewatch.shutdown()
        wait_for(lambda: json.loads(sw("query", "--home", str(home), "--json").stdout)["logs"])
    finally:
        log.removeHandler(handler)
        daemon.stop()
    return home, ids


def q(home: Path, *args: str) -> dict:
    result = sw("query", "--home", str(home), "--json", "--limit", "1000", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_filters_and_their_combinations(history) -> None:
    home, ids = history
    everything = q(home)
    assert len(everything["runs"]) == 2 and len(everything["stages"]) == 160
    failed_detection = q(home, "--stage", "detection", "--status", "failed", "--since", "7d")
    assert [r["run_id"] for r in failed_detection["runs"]] == [ids["broken"]]
    assert [(s["stage"], s["sample_id"]) for s in failed_detection["stages"]] == [("detection", "f7")]
    assert len(q(home, "--stage", "preprocessing")["stages"]) == 80
    assert q(home, "--status", "failed", "--stage", "preprocessing")["stages"] == []
    assert len(q(home, "--run", ids["clean"][:8])["stages"]) == 80
    errors = q(home, "--level", "error")["logs"]
    assert [(e["message"], e["stage"], e["sample_id"]) for e in errors] == [
        ("calibration missing on f7", "detection", "f7")
    ]
    assert len(q(home, "--grep", "CALIBRATION")["stages"]) == 1
    assert q(home, "--until", "7d")["stages"] == []  # everything is newer than a week
    assert len(q(home, "--since", "2000-01-01", "--until", "2100-01-01")["runs"]) == 2


def test_a_status_brings_the_log_lines_of_what_it_matched_and_says_so(history) -> None:
    """`query --status failed` listed every log line of the home beside the one failed execution:
    the status filters runs or stage executions, and the lines follow them (a stage execution's
    status: the lines at ERROR or above logged in those executions; a run's: those runs' lines)."""
    home, ids = history
    failed = q(home, "--status", "failed")
    assert [(s["stage"], s["sample_id"]) for s in failed["stages"]] == [("detection", "f7")]
    assert [r["run_id"] for r in failed["runs"]] == [ids["broken"]]
    assert [line["message"] for line in failed["logs"]] == ["calibration missing on f7"]
    assert failed["holds"]["logs"] == "log lines at ERROR or above logged in those stage executions"
    assert failed["holds"]["stages"] == "stage executions that ended failed"
    assert q(home, "--status", "crashed")["logs"] == []
    with_failures = q(home, "--status", "finished_with_failures")
    assert len(with_failures["logs"]) == 80 and {line["run_id"] for line in with_failures["logs"]} == {ids["broken"]}
    assert with_failures["holds"]["logs"] == "their log lines"
    text = sw("query", "--home", str(home), "--status", "failed").stdout
    assert text.startswith("1 run(s), 1 stage execution(s), 1 log line(s)\n"), text
    assert "stage executions that ended failed:" in text and "detection ok" not in text
    assert "log lines at ERROR or above logged in those stage executions, in time order:" in text
    everything = q(home)
    assert len(everything["logs"]) == 160 and everything["holds"]["logs"] == "log lines"
    # a level with a status: the lines of that level of what the status matched, not of every run
    assert [line["message"] for line in q(home, "--status", "failed", "--level", "info")["logs"]] == [
        "calibration missing on f7"
    ]
    leveled = sw("query", "--home", str(home), "--status", "failed", "--level", "info").stdout
    assert leveled.startswith("1 log line(s) at INFO or above of stage executions that ended failed, in time order")


def test_query_by_run_returns_the_complete_history(history) -> None:
    home, ids = history
    full = q(home, "--run", ids["broken"])
    assert full["audit"]["run_id"] == ids["broken"] and len(full["audit"]["stages"]) == 80
    assert full["audit"]["errors"][0]["message"] == "calibration missing"
    assert len(full["logs"]) == 80 and all(line["run_id"] == ids["broken"] for line in full["logs"])


@pytest.mark.parametrize(
    "args",
    [
        ["--status", "weird"],
        ["--since", "yesterday"],
        ["--level", "LOUD"],
        ["--since", "2026-01-02", "--until", "2026-01-01"],
    ],
)
def test_malformed_filters_exit_2(history, args) -> None:
    home, _ = history
    result = sw("query", "--home", str(home), *args)
    assert result.returncode == 2 and "expected" in result.stderr


def test_unknown_run_exits_1(history) -> None:
    home, _ = history
    result = sw("query", "--home", str(home), "--run", "ffffffff")
    assert result.returncode == 1 and "no run with id" in result.stderr


def test_stats_equal_numpy_percentiles(history) -> None:
    home, _ = history
    stats = {s["stage"]: s for s in json.loads(sw("stats", "--home", str(home), "--json").stdout)}
    stages = q(home)["stages"]
    for stage in ("preprocessing", "detection"):
        durations = np.array([s["duration_ms"] for s in stages if s["stage"] == stage])
        expected = np.percentile(durations, [50, 95, 99])
        got = stats[stage]["duration_ms"]
        np.testing.assert_allclose([got["median"], got["p95"], got["p99"]], expected, rtol=1e-12)
        assert got["mean"] == pytest.approx(durations.mean()) and got["max"] == durations.max()
    assert stats["detection"]["failure_rate"] == pytest.approx(1 / 80)
    assert stats["detection"].get("bottleneck") is True  # three times the work


def test_export_round_trips(history, tmp_path: Path) -> None:
    home, _ = history
    for fmt in ("json", "jsonl"):
        target = tmp_path / f"export.{fmt}"
        assert (
            sw(
                "export", "--home", str(home), "--stage", "detection", "--output", str(target), "--format", fmt
            ).returncode
            == 0
        )
        if fmt == "json":
            loaded = json.loads(target.read_text())
        else:
            loaded = {"runs": [], "stages": [], "logs": []}
            for line in target.read_text().splitlines():
                item = json.loads(line)
                loaded[item["table"]].append(item["row"])
        expected = q(home, "--stage", "detection")
        counts = expected.pop("counts")  # query --json says how many rows each list holds
        assert expected.pop("holds")["stages"] == "stage executions"  # and what each list is
        assert counts == {name: len(rows) for name, rows in expected.items()}
        assert loaded == expected


@pytest.mark.parametrize(
    "args, runs",
    [
        (["--until", "9999-12-31"], 2),  # past what a nanosecond timestamp holds: every run is before it
        (["--since", "0001-01-02"], 2),
        (["--since", "2300-01-01"], 0),
        (["--until", "1000-01-01"], 0),
        (["--grep", "'; DROP TABLE runs; --"], 0),  # a value, never SQL
        (["--grep", "%_"], 0),  # no LIKE wildcards either
        (["--grep", "(a+)+b", "--regex"], 0),  # RE2: no backtracking blow-up
        (["--grep", "calibration.*missing", "--regex"], 1),
        (["--pipeline", "clean' OR '1'='1"], 0),
    ],
)
def test_hostile_and_extreme_values_are_values(history, args, runs) -> None:
    home, _ = history
    result = sw("query", "--home", str(home), "--json", *args)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["runs"]) == runs


def test_a_regex_too_large_for_re2_is_a_clear_error(history) -> None:
    home, _ = history
    result = sw("query", "--home", str(home), "--grep", "(x{1000}){1000}", "--regex")
    assert result.returncode == 2 and "regular expression" in result.stderr and "Traceback" not in result.stderr


def test_threads_share_the_query_layer_and_each_gets_its_own_answer(history) -> None:
    """The dashboard's server is threaded: concurrent queries (each thread on its own cursor)
    answer as the same queries one after another."""
    from concurrent.futures import ThreadPoolExecutor

    from stagewatch.daemon import Filters, query_logs, query_stages, query_stats

    home, ids = history
    questions = [
        lambda: query_stages(home, Filters(run=ids["broken"])).num_rows,
        lambda: query_stages(home, Filters(stage="detection", status="failed")).num_rows,
        lambda: query_logs(home, Filters(level="ERROR")).num_rows,
        lambda: [(s["stage"], s["count"]) for s in query_stats(home, Filters())],
    ] * 8
    serial = [ask() for ask in questions]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda ask: ask(), questions)) == serial


def test_pages_sort_and_cut_in_sql_and_refuse_impossible_offsets(history) -> None:
    from stagewatch.daemon import Filters
    from stagewatch.ui._data import logs_page, runs_page

    home, ids = history
    by_duration = runs_page(home, Filters(), "duration_ms", False, 0, 1)
    assert by_duration.total == 2 and len(by_duration.rows) == 1
    assert (
        runs_page(home, Filters(), "duration_ms", False, 1, 1).rows["run_id"].tolist()
        != by_duration.rows["run_id"].tolist()
    )
    logs = logs_page(home, Filters(run=ids["broken"]), 70, 25)
    assert logs.total == 80 and len(logs.rows) == 10
    assert logs.rows["time"].is_monotonic_decreasing
    assert logs_page(home, Filters(), 10_000, 25).rows.empty
    with pytest.raises(ValueError, match="page offset"):
        logs_page(home, Filters(), 2**70, 25)


def test_a_limit_beyond_any_table_lists_every_run(history) -> None:
    home, _ = history
    result = sw("runs", "--home", str(home), "--json", "--limit", str(10**24))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 2


LOGGING_PIPELINE = """
import logging, stagewatch
run = stagewatch.init(pipeline="logged", home={home!r})
log = logging.getLogger("pipeline")
log.addHandler(stagewatch.LoggingHandler())
with run.stage("detection", sample_id="f0"):
    log.warning({message!r})
run.finish()
assert run.flush(10)
"""


def test_a_level_matches_log_lines_alone_in_the_order_they_were_logged(daemon: DaemonProcess) -> None:
    """`query --level WARNING` once said "2 stage execution(s)" (the level filters log lines
    only) and listed the lines in the order they reached the log: a pipeline whose line came
    second was logged an hour earlier."""
    home = str(daemon.home)
    for message, clock in (("logged now", None), ("logged an hour ago", time.time_ns() - 3600 * 10**9)):
        code = (FAKE_CLOCK.format(clock_ns=clock) if clock else "") + LOGGING_PIPELINE.format(
            home=home, message=message
        )
        assert run_python(code).returncode == 0
    wait_for(lambda: len(q(daemon.home, "--level", "warning")["logs"]) == 2)
    matched = q(daemon.home, "--level", "warning")
    assert matched["runs"] == [] and matched["stages"] == []
    assert [line["message"] for line in matched["logs"]] == ["logged an hour ago", "logged now"]
    text = sw("query", "--home", home, "--level", "warning").stdout
    assert text.startswith("2 log line(s) at WARNING or above, in time order") and "stage execution" not in text
    assert text.index("logged an hour ago") < text.index("logged now")


def test_the_kept_answers_stay_within_their_bound_whatever_their_queries_parameters(history) -> None:
    """The query layer keeps answers up to a number of bytes; a query's key (every file's path, its
    parameters: thousands of run ids) must not outweigh the small answer it stands for, or a
    dashboard open all day grows without bound."""
    home, _ = history
    run_ids = [str(uuid.UUID(int=i)) for i in range(20_000)]
    sql = "SELECT count(*) AS n FROM rows WHERE list_contains(?::VARCHAR[], run_id) OR ? < 0"
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for variant in range(50):  # 50 queries, each kept: a count of one row
            assert select(home, "stage_executions", sql, [run_ids, variant])["n"][0].as_py() == 0
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 5 * 2**20, f"{held / 2**20:.1f} MB held for 50 kept answers of one row"


def test_reads_made_at_once_tell_their_caller_which_damaged_file_they_left_out(history, tmp_path: Path) -> None:
    """`concurrently` runs reads on reader threads: a damaged data file one of them skipped is
    still named to the caller's `skipped_files` (a page's warning, a gate's refusal rest on it)."""
    import shutil

    from stagewatch.daemon import Filters, query_stages
    from stagewatch.daemon.query._sql import concurrently, skipped_files
    from tests.test_compare import damage_the_file_holding

    home, ids = history
    copy = tmp_path / "home"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("*.sock", "daemon.lock"))
    holding = damage_the_file_holding(copy, "stage_executions", ids["broken"])
    with skipped_files() as skipped:
        broken, _ = concurrently(
            (query_stages, copy, Filters(run=ids["broken"])), (query_stages, copy, Filters(run=ids["clean"]))
        )
    assert skipped == [holding]
    assert broken.num_rows < query_stages(home, Filters(run=ids["broken"])).num_rows


def test_a_whole_table_read_leaves_out_a_data_file_gone_and_names_it(history, tmp_path: Path) -> None:
    """`read_table` (the Failures and Live pages, retention) opened every file its snapshot
    listed before reading: one gone (deleted by hand, or moved away by a daemon that set the
    table aside to rebuild it) raised FileNotFoundError. It is named and left out, as a damaged one."""
    import shutil

    from stagewatch.daemon.query._readmodels import read_table
    from stagewatch.daemon.query._sql import DamagedPartWarning, skipped_files, snapshot_files

    home, _ = history
    copy = tmp_path / "home"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("*.sock", "daemon.lock"))
    whole = read_table(copy, "stage_executions").num_rows
    gone = snapshot_files(copy, "stage_executions")[0]
    Path(gone).unlink()
    with skipped_files() as skipped, pytest.warns(DamagedPartWarning, match="missing"):
        rows = read_table(copy, "stage_executions")
    assert skipped == [gone] and rows.num_rows < whole


@pytest.mark.parametrize("narrowing", [["--pipeline", "nonexistent"], ["--failed-stage", "nonexistent"]])
def test_a_filter_of_runs_narrows_their_stages_logs_stats_and_export(history, tmp_path, narrowing) -> None:
    """`--failed-stage nonexistent` gave 0 runs but every stage execution and log line of the home;
    `stats` computed over every execution and `export` wrote them. It narrows them to the runs
    that match, as `--pipeline` does."""
    home, _ = history
    nothing = q(home, *narrowing)
    assert (nothing["runs"], nothing["stages"], nothing["logs"]) == ([], [], [])
    assert nothing["counts"] == {"runs": 0, "stages": 0, "logs": 0}
    stats = sw("stats", "--home", str(home), "--json", *narrowing)
    assert stats.returncode == 0 and json.loads(stats.stdout) == [], stats.stdout[:500]
    target = tmp_path / "none.json"
    assert sw("export", "--home", str(home), "--output", str(target), *narrowing).returncode == 0
    assert json.loads(target.read_text()) == {"runs": [], "stages": [], "logs": []}


def test_a_failed_stage_gives_the_stages_logs_and_stats_of_its_runs_alone(history) -> None:
    home, ids = history
    broken = q(home, "--failed-stage", "detection")
    assert [run["run_id"] for run in broken["runs"]] == [ids["broken"]]
    assert len(broken["stages"]) == 80 and {s["run_id"] for s in broken["stages"]} == {ids["broken"]}
    assert len(broken["logs"]) == 80 and {line["run_id"] for line in broken["logs"]} == {ids["broken"]}
    stats = {
        s["stage"]: s
        for s in json.loads(sw("stats", "--home", str(home), "--json", "--failed-stage", "detection").stdout)
    }
    assert {stage: s["count"] for stage, s in stats.items() if stage != "(outside stages)"} == {
        "preprocessing": 40,
        "detection": 40,
    }
    assert stats["(outside stages)"]["wall"]["runs"] == 1  # the broken run's wall time alone
    assert stats["detection"]["failure_rate"] == pytest.approx(1 / 40)


def test_a_host_none_ran_on_has_no_time_outside_stages(history) -> None:
    """`stats --host nonexistent` listed no stage but the `(outside stages)` row of every run."""
    home, _ = history
    assert json.loads(sw("stats", "--home", str(home), "--json", "--host", "nonexistent").stdout) == []


def _rows_made_into_python(monkeypatch) -> list[int]:
    """The length of each column the query layer makes into Python values (`to_rows`), as it goes."""
    from stagewatch.daemon.query import _readmodels

    made: list[int] = []
    real = _readmodels._python_values

    def counting(column):
        values = real(column)
        made.append(len(values))
        return values

    monkeypatch.setattr(_readmodels, "_python_values", counting)
    return made


def _main(monkeypatch, capsys, *args: str) -> str:
    """`stagewatch ARGS` in this process (so the query layer can be watched); its stdout."""
    import warnings

    from stagewatch.cli._main import main

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main sets its own: put back after
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_a_limited_query_reads_only_the_rows_it_prints_and_counts_the_rest_in_sql(history, monkeypatch, capsys) -> None:
    """`query --limit 1` made every matching row of the three tables into Python dicts and cut the
    lists afterwards: on a run of 200,000 stage executions, 4.6 s and 837 MB for one row. The
    limit is SQL's now (LIMIT, and count(*) for the totals it prints)."""
    home, ids = history
    made = _rows_made_into_python(monkeypatch)
    limited = json.loads(_main(monkeypatch, capsys, "query", "--home", str(home), "--json", "--limit", "1"))
    assert made and max(made) <= 1, made
    assert limited["counts"] == {"runs": 2, "stages": 160, "logs": 160}
    assert [len(limited[name]) for name in ("runs", "stages", "logs")] == [1, 1, 1]
    assert limited["stages"][0] == q(home)["stages"][0]  # the first of the same order
    made.clear()
    text = _main(monkeypatch, capsys, "query", "--home", str(home), "--limit", "1")
    assert made and max(made) <= 1, made
    assert text.startswith("2 run(s), 160 stage execution(s), 160 log line(s)\n"), text
    assert "... the first 1 of 160: --limit N shows more" in text  # the log lines
    assert "detection        f7" in text  # the one execution that did not end ok
    made.clear()
    by_status = json.loads(
        _main(
            monkeypatch,
            capsys,
            "query",
            "--home",
            str(home),
            "--json",
            "--limit",
            "2",
            "--status",
            "finished_with_failures",
        )
    )
    assert made and max(made) <= 2, made
    assert by_status["counts"] == {"runs": 1, "stages": 80, "logs": 80}
    assert {row["run_id"] for row in by_status["stages"] + by_status["logs"]} == {ids["broken"]}


def test_export_writes_its_rows_a_batch_at_a_time_with_the_same_bytes(history, monkeypatch, capsys, tmp_path) -> None:
    """`export` built one Python list of dicts of every row, then one string of them all (2.9 GB
    for a run of 200,000 executions as `query --json`): rows are made into JSON a batch at a time
    and written as they come, byte for byte what the whole document was."""
    from stagewatch.daemon import Filters
    from stagewatch.daemon.query import _export

    home, _ = history
    whole = _export.matching(home, Filters())
    monkeypatch.setattr(_export, "EXPORT_BATCH_ROWS", 16)
    made = _rows_made_into_python(monkeypatch)
    expected = {
        "json": json.dumps(whole, default=str),
        "jsonl": "".join(
            json.dumps({"table": n, "row": r}, default=str) + "\n" for n, rows in whole.items() for r in rows
        ),
    }
    for form, text in expected.items():
        made.clear()
        target = tmp_path / f"all.{form}"
        _main(monkeypatch, capsys, "export", "--home", str(home), "--output", str(target), "--format", form)
        assert made and max(made) <= 16, made
        assert target.read_text() == text
    assert json.loads(expected["json"])["stages"][0]["stage"] == "preprocessing"  # rows there to batch


def test_an_empty_run_id_is_refused_not_read_as_no_filter(history) -> None:
    """`query --run ""` listed every run of the home."""
    home, _ = history
    for command in ("query", "stats", "export"):
        output = ["--output", "-"] if command == "export" else []
        refused = sw(command, "--home", str(home), "--run", "", *output)
        assert refused.returncode == 2 and refused.stdout == "", (command, refused.stdout[:300])
        assert "expected --run to name a run id or a unique prefix of one, got ''" in refused.stderr, refused.stderr
    assert sw("query", "--home", str(home), "--run", "  ").returncode == 2


def test_a_date_alone_as_until_is_the_end_of_that_day(history) -> None:
    """`--since D --until D` gave nothing: a date alone was its midnight for both bounds. As an
    upper bound it is the end of that day (its last microsecond), so a one-day window works."""
    from datetime import UTC, datetime

    from stagewatch.daemon import parse_time

    home, _ = history
    runs = q(home)["runs"]
    for run in runs:
        day = run["start_time"][:10]
        on_the_day = q(home, "--since", day, "--until", day)
        assert run["run_id"] in [r["run_id"] for r in on_the_day["runs"]]
        assert {s["run_id"] for s in on_the_day["stages"]} >= {run["run_id"]}
    assert parse_time("2026-12-07", until=True) == datetime(2026, 12, 7, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_time("2026-12-07") == datetime(2026, 12, 7, tzinfo=UTC)  # a lower bound: its start
    assert parse_time("2026-12-07T08:00", until=True) == datetime(2026, 12, 7, 8, tzinfo=UTC)  # a time: as given
    assert parse_time("9999-12-31", until=True) == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    day = runs[0]["start_time"][:10]
    before = sw("query", "--home", str(home), "--since", day, "--until", "2000-01-01")
    assert before.returncode == 2 and "expected --since before --until" in before.stderr
