"""The dashboard's data, without a browser: only real artifacts inside the home; the filter menus' values."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from stagewatch.daemon import Filters
from stagewatch.daemon.query._readmodels import read_table
from stagewatch.daemon.tables._store import Store
from stagewatch.ui._data import (
    ArtifactRefused,
    _read_facets,
    daemon_problem,
    disk_problems,
    facets,
    filter_time,
    log_histogram,
    resolve_artifact,
)
from tests.conftest import run_pipeline, sw, wait_for
from tests.daemon.test_compaction import T0, _rows


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, str]:
    run_id = str(uuid.uuid4())
    folder = tmp_path / "home" / "runs" / run_id / "stages" / "detection"
    folder.mkdir(parents=True)
    (folder / "boxes.json").write_text("[]")
    return tmp_path / "home", f"runs/{run_id}/stages/detection/boxes.json"


def test_a_real_artifact_resolves(artifact: tuple[Path, str]) -> None:
    home, relative = artifact
    assert resolve_artifact(home, relative) == (home / relative).resolve()


@pytest.mark.parametrize(
    "transform",
    [
        lambda r: "/etc/passwd",
        lambda r: r.replace("stages/detection", "stages/.."),
        lambda r: r.replace("boxes.json", "../../../../../etc/passwd"),
        lambda r: r.upper(),  # not the canonical run id
        lambda r: r.replace("runs/", "logs/"),
        lambda r: r + "/more",
        lambda r: r.replace("boxes.json", "missing.json"),
        lambda r: r.replace("boxes.json", "bo\x00xes.json"),
    ],
)
def test_anything_else_is_refused(artifact: tuple[Path, str], transform) -> None:
    home, relative = artifact
    with pytest.raises(ArtifactRefused):
        resolve_artifact(home, transform(relative))


def test_a_symlink_out_of_the_home_is_refused(artifact: tuple[Path, str], tmp_path: Path) -> None:
    home, relative = artifact
    (tmp_path / "outside.json").write_text("{}")
    link = (home / relative).with_name("link.json")
    link.symlink_to(tmp_path / "outside.json")
    with pytest.raises(ArtifactRefused, match="outside the home"):
        resolve_artifact(home, relative.replace("boxes.json", "link.json"))


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("overlay.png", lambda d: d[: len(d) // 2]),
        ("overlay.png", lambda d: d[:40] + bytes(len(d) - 40)),
        ("mask.npy", lambda d: d[:60]),
        ("cloud.ply", lambda d: d.replace(b"element vertex 50", b"element vertex 9999")),
    ],
)
def test_a_damaged_artifact_is_said_to_be_unreadable(tmp_path: Path, name: str, damage) -> None:
    import numpy as np

    from stagewatch._saver import write_artifact
    from stagewatch.ui._data import preview

    value = {
        "overlay.png": np.full((64, 64, 3), 200, np.uint8),
        "mask.npy": np.zeros((8, 8), np.int64),
        "cloud.ply": {"points": np.zeros((50, 3)), "label": np.zeros(50, np.int32)},
    }[name]
    path = tmp_path / name
    write_artifact(path, value)
    assert preview(path)[0] != "unreadable"
    path.write_bytes(damage(path.read_bytes()))
    kind, content = preview(path)
    assert (kind == "unreadable" and content.startswith(f"{name} cannot be read")) or (
        kind == "summary" and "declares" in content.get("note", "")
    )


@pytest.mark.parametrize(
    "value",
    [np.zeros((0, 3)), {"points": np.zeros((0, 3)), "label": np.zeros(0, np.int32)}],
    ids=["Nx3", "labelled"],
)
def test_a_saved_empty_cloud_is_summarised_not_unreadable(tmp_path: Path, value: object) -> None:
    from stagewatch._saver import write_artifact
    from stagewatch.ui._data import preview

    write_artifact(tmp_path / "empty.ply", value)
    kind, content = preview(tmp_path / "empty.ply")
    assert kind == "summary" and content["points"] == 0 and content["bounds"] is None


def test_a_cloud_without_labels_is_summarised_with_its_bounds(tmp_path: Path) -> None:
    from stagewatch._saver import write_artifact
    from stagewatch.ui._data import preview

    write_artifact(tmp_path / "c.ply", np.array([[0.0, 1.0, 2.0], [3.0, -1.0, np.nan], [1.0, 0.0, 0.0]]))
    kind, content = preview(tmp_path / "c.ply")
    assert kind == "summary" and content["points"] == 3
    assert content["bounds"] == [[0.0, 0.0, 0.0], [1.0, 1.0, 2.0]]  # the finite points


def test_the_filter_menus_of_a_home_whose_pipeline_never_logged(tmp_path: Path) -> None:
    """Stage rows and no logs table (nor a finished run yet): the menus offer the stages,
    where every page that has filter menus said 'could not be shown' (issue 29, item 0)."""
    home = tmp_path / "home"
    Store(home).write_rows("stage_executions", _rows(0, 10, T0))
    found = facets(home)
    assert found["stage"] == ["s"] and found["logger"] == [] and found["pipeline"] == []


@pytest.mark.parametrize("table", ["logs", "runs", "stage_executions"])
def test_a_table_not_written_yet_reads_as_dictionaries_when_asked(tmp_path: Path, table: str) -> None:
    column = {"logs": "logger", "runs": "pipeline", "stage_executions": "stage"}[table]
    read = read_table(tmp_path / "home", table, columns=[column], dictionary=(column,))
    assert read.num_rows == 0 and pa.types.is_dictionary(read.schema.field(column).type)


def _part(home: Path, table: str, date: str, columns: dict[str, list]) -> None:
    """A commit of rows of `date` holding these columns (the others null)."""
    moment = int(datetime.fromisoformat(date).replace(tzinfo=UTC).timestamp() * 1e9)
    count = len(next(iter(columns.values())))
    rows = [
        {**{name: values[i] for name, values in columns.items()}, "start_time": moment, "time": moment}
        | {"run_id": f"r{i}", "lsn": i}
        for i in range(count)
    ]
    Store(home).write_rows(table, rows)


def test_the_filter_menus_read_parts_of_any_encoding_and_an_empty_home(tmp_path: Path) -> None:
    """Merged parts write their strings plain: the menus' values never assume a dictionary
    (issue 29: AttributeError 'StringArray' object has no attribute 'dictionary')."""
    home = tmp_path / "home"
    assert _read_facets(home) == {"pipeline": [], "host": [], "failed_stage": [], "stage": [], "logger": []}
    for day in ("2026-11-01", "2026-11-02"):
        runs = {"pipeline": [f"p-{day}", None], "host": ["h", ""], "failed_stage": [None, "detection"]}
        _part(home, "runs", day, runs)
        _part(home, "stage_executions", day, {"stage": ["detection", "tracking"]})
    _part(home, "logs", "2026-11-02", {"logger": ["app.io", None]})  # logs of one day only
    assert _read_facets(home) == {
        "pipeline": ["p-2026-11-01", "p-2026-11-02"],
        "host": ["h"],
        "failed_stage": ["detection"],
        "stage": ["detection", "tracking"],
        "logger": ["app.io"],
    }


def test_saved_outputs_are_paged_per_stage_and_each_is_on_exactly_one_page(home: Path, daemon) -> None:
    """The Run page reads a page of a stage's outputs from the trail (a run may save 100k): the
    counts per stage, and pages that together hold every output once, in the order saved."""
    import stagewatch
    from stagewatch.ui._data import outputs_page

    run = stagewatch.init(pipeline="outputs", home=home)
    for frame in range(30):
        with run.stage("render", sample_id=f"f{frame:02d}") as stage:
            stage.save(f"f{frame:02d}.png", np.zeros((4, 4), np.uint8))
            stage.save(f"f{frame:02d}.json", {"frame": frame})
        with run.stage("plain", sample_id=f"f{frame:02d}"):
            pass  # saved nothing: not a stage of the menu
    with run.stage("x.y-2", sample_id="only") as stage:
        stage.save("cloud.ply", np.zeros((3, 3)))
    run.finish()
    assert run.flush(10)
    stagewatch.shutdown()
    expected = {"render": 30, "x.y-2": 1}  # the trail is written as the daemon folds the events: wait for all
    wait_for(lambda: outputs_page(home, run.id, None, 0, 0)[0] == expected, 30)
    seen = []
    for offset in range(0, 40, 7):
        _, page = outputs_page(home, run.id, "render", offset, 7)
        assert page.total == 30 and len(page.rows) == 2 * len(range(offset, min(offset + 7, 30)))
        seen += list(page.rows["path"])
    assert seen == [f"runs/{run.id}/stages/render/f{i:02d}.{kind}" for i in range(30) for kind in ("png", "json")]
    _, other = outputs_page(home, run.id, "x.y-2", 0, 7)
    assert list(other.rows["sample_id"]) == ["only"] and other.label == "1-1 of 1"
    assert outputs_page(home, run.id, "plain", 0, 7)[1].total == 0


def test_a_relative_time_filter_asked_again_within_the_minute_is_the_same_query() -> None:
    """The dashboard's '30d' counts back from the minute's start: a page switched back to asks
    the same query (answered from memory), not one a few microseconds later."""
    for _ in range(3):  # a minute may turn between the two readings: then again
        minute = datetime.now(UTC).replace(second=0, microsecond=0)
        first, again = filter_time("30d"), filter_time("30d")
        if datetime.now(UTC).replace(second=0, microsecond=0) == minute:
            break
    assert first == again == minute - timedelta(days=30)
    assert filter_time("2026-11-20T08:00") == datetime(2026, 11, 20, 8, 0, tzinfo=UTC)  # absolute: as given


def test_the_log_histogram_says_its_bin_width_where_bins_between_are_empty(tmp_path: Path) -> None:
    """Two bursts of lines minutes apart: the bars are a bin wide, not as wide as the gap between
    the first two bins that hold lines (they overlapped and hid when the lines were written)."""
    home = tmp_path / "home"
    start = int(datetime(2026, 11, 20, 8, 0, tzinfo=UTC).timestamp() * 1e9)
    moments = [start + i * 10**9 for i in range(4)] + [start + 600 * 10**9 + i * 10**9 for i in range(4)]
    rows = [
        {"run_id": "r", "time": moment, "level": "INFO", "message": "m", "lsn": i} for i, moment in enumerate(moments)
    ]
    Store(home).write_rows("logs", rows)
    counts = log_histogram(home, Filters(), bins=60)
    width_ms = (603 * 10**9 // 60 + 1) / 1e6  # the span over 60 bins
    assert counts["width_ms"].tolist() == [width_ms] * len(counts)
    assert counts["count"].sum() == 8 and len(counts) == 2  # two bins hold lines; the 58 between none
    gap_ms = (counts["time"].iloc[1] - counts["time"].iloc[0]).total_seconds() * 1000
    assert gap_ms > 50 * width_ms  # the gap is no bin's width


def test_the_banner_says_a_daemon_stopped_when_it_stopped_and_silent_when_it_was_killed(home: Path, daemon) -> None:
    """A daemon stopped cleanly (SIGTERM: `stagewatch daemon stop`, the demo's end) was called
    "stopped or stuck" on every page; one killed says nothing, so the banner cannot say stopped."""
    run_pipeline(home)
    assert daemon_problem(home) is None  # running, and reporting
    daemon.stop()
    stopped = daemon_problem(home)
    assert stopped is not None and f"The daemon of {home} stopped at 20" in stopped, stopped
    assert "stuck" not in stopped and f"stagewatch daemon --home {home}" in stopped
    daemon.start()
    assert daemon_problem(home) is None  # the next daemon's status says nothing of the old stop
    daemon.kill()
    silent = daemon_problem(home, stale_after_s=0)
    assert silent is not None and "did not say it stopped: it was killed or is stuck" in silent, silent
    rebuilt = sw("rebuild", "--home", str(home))
    assert rebuilt.returncode == 0, rebuilt.stderr
    after_rebuild = daemon_problem(home, stale_after_s=0)  # its status.json is the rebuild's
    assert after_rebuild is not None and "stopped at" in after_rebuild, after_rebuild


@pytest.mark.parametrize("edit", [{"updated_at": "x"}, {"disk": []}, {"stopped_at": "abc"}], ids=str)
def test_a_status_json_of_the_wrong_shape_is_said_damaged_not_a_page_error(home: Path, edit: dict) -> None:
    """status.json edited by hand: `"updated_at": "x"` raised ValueError in every page's banner."""
    from stagewatch.daemon.base._layout import DaemonHome

    path = DaemonHome(home).status
    path.parent.mkdir(parents=True, exist_ok=True)
    status = {"pid": 1, "endpoint": "ipc://x", "updated_at": 1.0, "stats": {}, "active_runs": [], "disk": {}}
    path.write_text(json.dumps(status | edit))
    said = daemon_problem(home)
    assert said is not None and f"status file of {home} is damaged (wrong shape: " in said, said
    assert disk_problems(home) == []
