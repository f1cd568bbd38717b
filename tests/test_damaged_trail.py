"""`stagewatch show RUN`, its JSON and the Run page over a run trail damaged by hand: an
audit.json of the wrong shape, a stages.jsonl that cannot be read. Each is said as a problem
(INCOMPLETE ...) and what can be shown still is (the stage rows come from the tables)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stagewatch
from tests.conftest import DaemonProcess, sw
from tests.test_compare import damage_the_file_holding


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A stopped daemon's home holding a finished run (three stages, one failed), and a later one."""
    daemon = DaemonProcess(tmp_path_factory.mktemp("trail") / "home").start()
    try:
        with stagewatch.init(pipeline="p", home=daemon.home) as run:
            for i in range(3):
                try:
                    with run.stage("detection", sample_id=f"s{i}"):
                        if i == 1:
                            raise RuntimeError("boom")
                except RuntimeError:
                    pass
        daemon.audit(run.id)
        later = stagewatch.init(pipeline="p", home=daemon.home)  # the runs table's second commit
        with later, later.stage("detection", sample_id="s0"):
            pass
        daemon.audit(later.id)
    finally:
        daemon.stop()
    yield daemon.home, run.id


def _page_text(home: Path, run_id: str) -> str:
    """The Run page's sections as the server builds them (its header, problems, errors, tables)."""
    import holoviews.plotting.bokeh  # noqa: F401 (the page's plotting extension, as the server loads it)
    import panel as pn

    from stagewatch.ui import _data
    from stagewatch.ui.pages.run import sections

    data = _data.run_view(home, run_id)
    data["colours"] = {}
    shown = sections(data, pn.Column(), pn.Column(), pn.Column(), [])
    assert data["stats"]["stage"].tolist()[0] == "detection"  # the stage rows, from the tables
    return "\n".join(_texts(shown))


def _texts(panes: list[Any]) -> Iterator[str]:
    for pane in panes:
        if isinstance(getattr(pane, "object", None), str):
            yield pane.object
        yield from _texts(getattr(pane, "objects", []))


def _shown_everywhere(home: Path, run_id: str, problem: str) -> None:
    """`show`, `show --json`, `--json --all`, `query --run` and the Run page say `problem` and
    still show the run's stages."""
    shown = sw("show", run_id, "--home", str(home))
    assert shown.returncode == 0, shown.stderr
    assert "INCOMPLETE" in shown.stdout and problem in shown.stdout, shown.stdout
    assert "detection" in shown.stdout and "3 of 3" in shown.stdout  # its stage table and executions
    for json_args in (("--json",), ("--json", "--all")):
        page = sw("show", run_id, "--home", str(home), *json_args)
        assert page.returncode == 0, page.stderr
        assert any(problem in p for p in json.loads(page.stdout)["problems"])
    queried = sw("query", "--home", str(home), "--run", run_id, "--json")
    assert queried.returncode == 0, queried.stderr
    assert any(problem in p for p in json.loads(queried.stdout)["audit"]["problems"])
    assert problem in _page_text(home, run_id)


WRONG_SHAPES: list[dict[str, Any]] = [
    {"drop": "run_id"},
    {"errors": [1]},
    {"gpu_sources": [1]},
    {"counts": []},
    {"config": "x"},
    {"started_at": 12},
    {"duration_ms": "abc"},
    {"duration_ms": float("nan")},  # json.dumps writes NaN, which Python's json reads back
    {"duration_ms": 1e308},  # printed as a 300-digit number of hours on the Run page
    {"config": {"gain": float("inf")}},
    {"pid": 10**300},  # each printed in full by `show` (a 300-digit line)
    {"counts": {"artifacts": 10**300}},
    {"errors_dropped": 10**300},
    {"started_at": "x" * 300},
]


@pytest.mark.parametrize("edit", WRONG_SHAPES, ids=[json.dumps(e)[:40] for e in WRONG_SHAPES])
def test_an_audit_json_of_the_wrong_shape_is_a_damaged_one(trail: tuple[Path, str], edit: dict[str, Any]) -> None:
    home, run_id = trail
    path = home / "runs" / run_id / "audit.json"
    kept = path.read_bytes()
    head = json.loads(kept)
    head.pop(edit.pop("drop", "-"), None)
    path.write_text(json.dumps(head | edit))
    try:
        _shown_everywhere(home, run_id, f"{path} is damaged")
    finally:
        path.write_bytes(kept)


@pytest.mark.parametrize("put", [Path.mkdir, os.mkfifo], ids=["directory", "fifo"])
def test_stages_jsonl_that_is_no_file_is_said_and_the_rest_shown(trail: tuple[Path, str], put: Any) -> None:
    """A directory in its place failed with "Is a directory"; a FIFO's open would wait for ever."""
    home, run_id = trail
    path = home / "runs" / run_id / "stages.jsonl"
    kept = path.read_bytes()
    path.unlink()
    put(path)
    try:
        _shown_everywhere(home, run_id, f"{path} is damaged")
    finally:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        path.write_bytes(kept)


def test_a_damaged_runs_table_leaves_out_the_outside_row_alone(trail: tuple[Path, str], tmp_path: Path) -> None:
    """The runs table is read for the row of the time outside stages alone: its Delta log cut
    short, show, stats and the Run page show the stages, errors and executions, and say which
    table cannot be read and to run `stagewatch rebuild` in that row's place."""
    home = tmp_path / "home"
    shutil.copytree(trail[0], home)
    run_id = trail[1]
    commit = max((home / "metrics" / "runs" / "_delta_log").glob("*.json"))  # its last commit
    commit.write_bytes(commit.read_bytes()[:40])
    said = "not shown: the runs table cannot be read"

    shown = sw("show", run_id, "--home", str(home))
    assert shown.returncode == 0, shown.stderr
    assert said in shown.stdout and "stagewatch rebuild" in shown.stdout
    assert "boom" in shown.stdout and "3 of 3" in shown.stdout  # its errors and executions
    stats = sw("stats", "--home", str(home))
    assert stats.returncode == 0, stats.stderr
    assert said in stats.stdout and "detection" in stats.stdout
    stats_json = json.loads(sw("stats", "--home", str(home), "--json").stdout)
    assert stats_json[0]["stage"] == "detection" and said in stats_json[-1]["problem"]
    assert said in _page_text(home, run_id)
    assert said in _performance_stats(home)


def _performance_stats(home: Path) -> str:
    """What the Performance page says beside its table of the window's stages."""
    from stagewatch.daemon.query._query import Filters
    from stagewatch.ui import _trends
    from stagewatch.ui.pages.performance import stage_order, window_stats

    points = _trends.run_points(_trends.stage_rows(home, Filters()))
    stats, unread = window_stats(home, Filters(), points, stage_order(points))
    assert stats["stage"].tolist() == ["detection"]
    return unread or ""


BAD_LINE_VALUES: list[tuple[str, Any]] = [
    ("duration_ms", float("nan")),
    ("duration_ms", 1e308),
    ("duration_ms", -5.0),
    ("memory", {"rss_peak_mb": float("inf")}),
    ("status", 7),
    ("start_ns", -1),
    ("finished_at", "yesterday"),
]


@pytest.mark.parametrize("key, value", BAD_LINE_VALUES, ids=[f"{k}={v}" for k, v in BAD_LINE_VALUES])
def test_a_stage_line_of_values_no_stage_has_is_named_and_left_out(
    trail: tuple[Path, str], tmp_path: Path, key: str, value: Any
) -> None:
    """A hand-edited line of stages.jsonl with NaN or 1e308 ms was decoded and printed as it was
    (`show --json` wrote NaN, which is no JSON): each line is checked where it is read, and a line
    of another shape is left out and named in `problems`, with what is wrong with it."""
    home = tmp_path / "home"
    shutil.copytree(trail[0], home)
    run_id = trail[1]
    path = home / "runs" / run_id / "stages.jsonl"
    lines = path.read_bytes().split(b"\n")
    stage = json.loads(lines[0])
    edited = json.dumps({**stage, key: value}, separators=(",", ":")).encode()
    assert len(edited) <= len(lines[0])  # the head counts the file's bytes: the line keeps its length
    lines[0] = edited.ljust(len(lines[0]))
    path.write_bytes(b"\n".join(lines))
    for json_args in (("--json",), ("--json", "--all")):
        shown = sw("show", run_id, "--home", str(home), *json_args)
        assert shown.returncode == 0, shown.stderr
        trail_json = json.loads(shown.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
        assert [s["sample_id"] for s in trail_json["stages"]] == ["s1", "s2"]
        said = [p for p in trail_json["problems"] if f"1 damaged lines of {path} skipped" in p]
        assert said and "line 1: " in said[0] and "e+308" not in shown.stdout, trail_json["problems"]


def test_stages_in_a_damaged_data_file_are_not_counted_as_time_outside_stages(
    trail: tuple[Path, str], tmp_path: Path
) -> None:
    """A data file of stage_executions damaged: the query left its rows out, and the time of those
    stages was counted in the run's `(outside stages)` row. The row is left out, the file named
    in its place (show, stats, the Run page), as for a runs table that cannot be read."""
    home = tmp_path / "home"
    shutil.copytree(trail[0], home)
    run_id = trail[1]
    damaged = damage_the_file_holding(home, "stage_executions", run_id)
    said = "not shown: the stage_executions table has damaged data files ("

    shown = sw("show", run_id, "--home", str(home))
    assert shown.returncode == 0, shown.stderr
    assert said in shown.stdout and damaged in shown.stdout and "stagewatch rebuild" in shown.stdout
    assert "+ outside stages" not in shown.stdout  # no wall time split claims the stages' time
    stats_json = json.loads(sw("stats", "--home", str(home), "--run", run_id, "--json").stdout)
    assert not [e for e in stats_json if e.get("outside_stages")] and said in stats_json[-1]["problem"]
    from stagewatch.ui import _data

    assert said in _data.run_view(home, run_id)["outside_problem"]  # the Run page's warning in the row's place


def _link_to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


@pytest.mark.parametrize("put", [os.mkfifo, _link_to_dev_zero], ids=["fifo", "dev-zero"])
def test_an_audit_json_that_is_no_file_is_said_and_never_waited_for(
    trail: tuple[Path, str], tmp_path: Path, put: Any
) -> None:
    """A FIFO in its place: `show`, `doctor` and the dashboard's threads waited for its other end
    for ever (the dashboard then answered no page); a link to /dev/zero: doctor read it until
    the machine ran out of memory."""
    home = tmp_path / "home"
    shutil.copytree(trail[0], home)
    path = home / "runs" / trail[1] / "audit.json"
    path.unlink()
    put(path)
    _shown_everywhere(home, trail[1], f"{path} is damaged")
    result = sw("doctor", "--home", str(home), timeout_s=60)
    assert result.returncode == 1 and str(path) in result.stdout, result.stdout


TRAIL_DAMAGES = {
    "a line overwritten": lambda lines: [*lines[:1], b"\x00" * len(lines[1]), *lines[2:]],
    "cut short": lambda lines: [*lines[:2], lines[2][:10]],
    "a value no stage has": lambda lines: [
        json.dumps({**json.loads(lines[0]), "duration_ms": -5.0}).encode(),
        *lines[1:],
    ],
}


@pytest.mark.parametrize("damage", list(TRAIL_DAMAGES), ids=list(TRAIL_DAMAGES))
def test_doctor_names_a_damaged_stages_jsonl_and_what_is_wrong(
    trail: tuple[Path, str], tmp_path: Path, damage: str
) -> None:
    """stages.jsonl is the audit trail's record of each ended stage: doctor reads it as `show`
    does, line by line, and names the file, the line and what is wrong with it (exit 1)."""
    home = tmp_path / "home"
    shutil.copytree(trail[0], home)
    path = home / "runs" / trail[1] / "stages.jsonl"
    assert sw("doctor", "--home", str(home)).returncode == 0
    lines = path.read_bytes().split(b"\n")[:-1]
    assert len(lines) == 3
    path.write_bytes(b"\n".join(TRAIL_DAMAGES[damage](lines)) + (b"" if damage == "cut short" else b"\n"))
    result = sw("doctor", "--home", str(home), "--json")
    assert result.returncode == 1, result.stdout
    (check,) = [c for c in json.loads(result.stdout)["checks"] if c["name"] == "audit trails"]
    assert not check["ok"] and str(path) in check["detail"] and "stagewatch rebuild" in check["detail"]
    assert ("holds" if damage == "cut short" else "line ") in check["detail"], check["detail"]
    text = sw("doctor", "--home", str(home)).stdout
    assert str(path) in text
