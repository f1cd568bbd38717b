"""The dashboard's pure parts: formatting, colours, server-side paging, per-run points,
regressions, the live board's fold and the URL's state, checked against references."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from stagewatch.daemon import Filters, query_logs
from stagewatch.ui import _format, _trends
from stagewatch.ui._data import top_rows
from stagewatch.ui._live import MAX_RUNS, LiveBoard


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0423, "0.042 ms"),
        (4.0876, "4.09 ms"),
        (41.349, "41.3 ms"),
        (1250.0, "1.25 s"),
        (200_000.0, "3 min 20 s"),
        (7_500_000.0, "2 h 5 min"),
        (None, "-"),
        (math.nan, "-"),
        (math.inf, "-"),
    ],
)
def test_milliseconds_read_as_people_compare_them(value, text) -> None:
    assert _format.ms(value) == text


def test_megabytes_percent_and_relative_times() -> None:
    assert (_format.mb(274.347656), _format.mb(2048.0), _format.mb(3.14159)) == ("274.3 MB", "2.00 GB", "3.14 MB")
    assert (_format.pct(0.016667), _format.pct(1.0), _format.pct(0.9975)) == ("1.7%", "100.0%", "99.75%")
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert _format.relative(now - timedelta(seconds=12), now) == "12 s ago"
    assert _format.relative(now - timedelta(hours=3, minutes=5), now) == "3 h ago"
    assert _format.relative(now + timedelta(minutes=2), now) == "in 2 min"
    assert 'title="2026-12-02 11:55:00.000 UTC"' in _format.when_html(now - timedelta(minutes=5), now)


def test_a_stage_s_colour_comes_from_its_name_alone() -> None:
    demo = ["preprocessing", "detection", "segmentation", "lidar_segmentation", "postprocessing"]
    colours = _format.stage_colours(demo)
    assert len(set(colours.values())) == len(demo)  # the demo's stages differ
    # Another pipeline's stages recorded later (any names, sorting before or after) move no colour.
    others = ["a", "aa", "batch_decode", "detection2", "tracking", *[f"stage{i}" for i in range(40)]]
    assert {stage: _format.stage_colours([*others, *demo])[stage] for stage in demo} == colours
    assert all(_format.stage_colours([stage]) == {stage: colours[stage]} for stage in demo)
    assert set(_format.stage_colours([f"stage{i}" for i in range(200)]).values()) == set(_format.PALETTE)


@pytest.mark.parametrize("descending", [True, False])
def test_a_page_equals_the_same_slice_of_a_full_sort(descending) -> None:
    rng = np.random.default_rng(3)
    n = 5000
    table = pa.table(
        {
            "start_time": pa.array(rng.integers(0, 10**12, n) * 1000, pa.timestamp("ns", tz="UTC")),
            "duration_ms": rng.choice([1.0, 2.5, 9.0, 40.0], n),  # ties, broken by start_time
        }
    )
    frame = table.to_pandas()
    reference = frame.sort_values(
        ["duration_ms", "start_time"], ascending=[not descending, False], kind="stable"
    ).reset_index(drop=True)
    for offset in (0, 25, 4990, 5000, 7000):
        page = top_rows(table, "duration_ms", descending, offset, 25).to_pandas()
        expected = reference.iloc[offset : offset + 25].reset_index(drop=True)
        pd.testing.assert_frame_equal(page, expected)


def _stage_table(rows: list[tuple[str, str, datetime, float]]) -> pa.Table:
    return pa.table(
        {
            "run_id": [r[0] for r in rows],
            "pipeline": ["p"] * len(rows),
            "stage": [r[1] for r in rows],
            "start_time": pa.array([r[2] for r in rows], pa.timestamp("ns", tz="UTC")),
            "duration_ms": [r[3] for r in rows],
            "rss_peak_mb": [100.0 + i for i in range(len(rows))],
            "rss_start_mb": [100.0] * len(rows),
        }
    )


def test_per_run_points_equal_numpy_percentiles() -> None:
    rng = np.random.default_rng(5)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    rows = []
    for run in range(7):
        for stage in ("decode", "infer"):
            for i in range(int(rng.integers(1, 40))):
                rows.append((f"run{run}", stage, start + timedelta(hours=run, seconds=i), float(rng.gamma(2, 10))))
    points = _trends.run_points(_stage_table(rows))
    frame = pd.DataFrame(rows, columns=["run_id", "stage", "start", "ms"])
    assert len(points) == frame.groupby(["run_id", "stage"]).ngroups  # one point per run and stage
    for point in points.itertuples():
        values = frame[(frame["run_id"] == point.run_id) & (frame["stage"] == point.stage)]["ms"]
        assert point.median_ms == pytest.approx(np.percentile(values, 50))
        assert point.p95_ms == pytest.approx(np.percentile(values, 95))
        assert point.count == len(values)
    assert list(points["run_start"]) == sorted(points["run_start"])


def test_a_persistent_slowdown_is_called_out_with_the_run_it_began_in() -> None:
    newest = datetime(2026, 12, 1, 12, tzinfo=UTC)
    rows = []
    for day in range(8, 1, -1):  # a week at about 40 ms
        for i in range(20):
            rows.append((f"old{day}", "detection", newest - timedelta(days=day, seconds=i), 40.0 + i % 3))
    for hour, run in ((10, "fast"), (8, "slow1"), (6, "slow2"), (2, "slow3")):
        for i in range(20):
            ms = 41.0 if run == "fast" else 48.0 + i % 2
            rows.append((run, "detection", newest - timedelta(hours=hour, seconds=i), ms))
    found = [s for s in _trends.regressions(_stage_table(rows)) if s.measure == "p95_ms"]
    assert [(s.stage, s.started_run, s.found_run) for s in found] == [("detection", "slow1", "slow3")]
    assert found[0].before == pytest.approx(np.percentile([40.0 + i % 3 for i in range(20)] * 7, 95))
    assert found[0].change > 0.10
    steady = [r for r in rows if not r[0].startswith("slow")]
    assert _trends.regressions(_stage_table(steady)) == []
    two_slow = [r for r in rows if r[0] != "slow3"]  # two slow runs do not yet make a shift: it must persist
    assert _trends.regressions(_stage_table(two_slow)) == []


def _event(kind: str, run: str = "r1", **fields) -> dict:
    return {"type": kind, "run_id": run, "ts_ns": time.time_ns(), **fields}


def test_the_live_board_folds_events_and_ignores_odd_ones() -> None:
    board = LiveBoard()
    board.take(_event("run_started", pipeline="perception", host="vm"))
    for i, ms in enumerate([5.0, 7.0, 6.0, 100.0]):
        board.take(_event("stage_started", stage="detect", sample_id=f"f{i}"))
        board.take(_event("stage_finished", stage="detect", sample_id=f"f{i}", duration_ms=ms, rss_peak_mb=10.0 + i))
    board.take(
        _event("stage_failed", stage="detect", sample_id="f9", duration_ms=1.0, error_type="E", error_message="bad")
    )
    for odd in [
        {"type": "stage_finished"},
        {"type": 3, "run_id": "r1"},
        _event("stage_finished", stage=["x"]),
        _event("stage_finished", stage="detect", duration_ms="fast"),
        _event("nonsense"),
    ]:
        board.take(odd)
    (run,) = board.visible()
    stage = run.stages["detect"]
    assert (run.pipeline, stage.done, stage.failed, stage.running) == ("perception", 6, 1, 0)
    assert stage.median_ms == pytest.approx(np.median([5.0, 7.0, 6.0, 100.0, 1.0]))
    assert stage.latest_ms == 1.0 and stage.rss_peak_mb == 13.0
    assert run.failures[0]["sample_id"] == "f9" and "bad" in run.failures[0]["error"]
    assert run.samples_per_s(time.time_ns()) > 0
    assert len(run.sample_times) == 5  # f0..f3 and f9: a sample counts once, not per stage event
    board.take(_event("run_finished", status="failed"))
    assert board.visible()[0].status == "failed"  # the pipeline said so
    assert board.visible(now=time.monotonic() + 3600) == []  # an ended run leaves the page after a while


def test_a_run_crashed_by_a_lost_client_runs_again_when_the_client_sends_again() -> None:
    board = LiveBoard()
    board.take(_event("run_started", pipeline="perception", client_id="c1"))
    board.take(_event("client_lost", client_id="daemon", lost_client_id="c1"))
    assert board.visible()[0].status == "crashed"
    board.take(_event("stage_finished", stage="detect", sample_id="f0", duration_ms=5.0, client_id="c1"))
    assert board.visible()[0].status == "running" and board.visible()[0].ended_at is None
    board.take(_event("run_finished", status="ok", client_id="c1"))
    assert board.visible()[0].status == "ok"


def test_the_live_board_stays_bounded() -> None:
    board = LiveBoard()
    for i in range(MAX_RUNS * 3):
        board.take(_event("run_started", run=f"run{i}"))
        if i % 2:
            board.take(_event("run_finished", run=f"run{i}"))
    assert len(board.runs) == MAX_RUNS
    assert f"run{MAX_RUNS * 3 - 1}" in board.runs


def test_a_bad_regular_expression_is_refused_in_words(tmp_path) -> None:
    with pytest.raises(ValueError, match="regular expression"):
        Filters(grep="(unclosed", regex=True)
    assert query_logs(tmp_path, Filters(grep="frame_0[0-4]", regex=True)).num_rows == 0  # valid: no rows here


def test_the_url_restores_only_values_a_widget_takes() -> None:
    import panel as pn

    from stagewatch.ui._widgets import _restore

    status = pn.widgets.Select(options={"any": "", "failed": "failed"})
    assert _restore(status, "failed") and status.value == "failed"
    assert not _restore(status, "<script>") and status.value == "failed"
    page = pn.widgets.IntInput(value=1, start=1)
    assert not _restore(page, "-5") and not _restore(page, "9" * 30) and page.value == 1
    assert _restore(page, "3") and page.value == 3
    confidence = pn.widgets.RangeSlider(start=0.0, end=1.0, value=(0.0, 1.0))
    assert _restore(confidence, "0.5,0.9") and confidence.value == (0.5, 0.9)
    for refused in ("0.9,0.5", "nan,1", "0,2", "x", "0.1,0.2,0.3"):
        assert not _restore(confidence, refused) and confidence.value == (0.5, 0.9), refused


def test_thinning_keeps_real_runs_and_every_spike() -> None:
    rng = np.random.default_rng(9)
    n = 5000
    points = pd.DataFrame(
        {
            "run_start": pd.to_datetime(np.sort(rng.integers(0, 30 * 86400, n)) * 10**9, utc=True),
            "stage": "detect",
            "p95_ms": rng.gamma(2, 10, n),
            "run_id": [f"run{i}" for i in range(n)],
        }
    )
    points.loc[1234, "p95_ms"] = 10_000.0  # one spike
    thin = _trends.thin(points, "p95_ms", 300)
    assert 0 < len(thin) <= 300
    assert "run1234" in set(thin["run_id"])
    merged = thin.merge(points, on=["run_id"], suffixes=("", "_all"))
    assert (merged["p95_ms"] == merged["p95_ms_all"]).all()  # every point drawn is a real run's
    small = points.head(200)
    pd.testing.assert_frame_equal(_trends.thin(small, "p95_ms", 300), small)


def test_a_big_cloud_pair_is_thinned_alike_and_sent_as_binary() -> None:
    import base64
    import json

    from stagewatch.ui._cloud3d import MAX_DRAWN, available_modes, page_data, pair

    rng = np.random.default_rng(11)
    points = rng.normal(size=(250_000, 3))
    predicted, truth = rng.integers(0, 3, len(points)), rng.integers(0, 3, len(points))
    distance = rng.random(len(points))
    cloud = pair(points, points, predicted, truth, distance)
    assert len(cloud.prediction) == len(cloud.truth) == MAX_DRAWN
    assert f"showing {MAX_DRAWN:,} of 250,000 predicted" in cloud.shown
    np.testing.assert_array_equal(cloud.prediction, cloud.truth)  # the same points on both sides
    assert available_modes(cloud) == ["label", "correctness", "distance error", "height"]
    data = page_data(cloud)
    xyz = np.frombuffer(base64.b64decode(data["sides"]["left"]), np.float32).reshape(-1, 3)
    np.testing.assert_array_equal(xyz, cloud.prediction)
    wrong = np.frombuffer(base64.b64decode(data["modes"]["correctness"]["left"]), np.float32)
    np.testing.assert_array_equal(wrong, (cloud.predicted_labels != cloud.truth_labels).astype(np.float32))
    assert "[" not in json.dumps(data["sides"])  # coordinates as base64 strings, never JSON lists
    alone = pair(points[:10], points[:20], None, None, None)
    assert available_modes(alone) == ["height"] and "showing all 10 predicted and 20" in alone.shown


def test_a_predicted_cloud_against_its_ground_truth_gives_distances_both_ways() -> None:
    from stagewatch.daemon.groundtruth.formats import PointLabels
    from stagewatch.ui._cloud3d import available_modes, colours, pair
    from stagewatch.ui._failures import cloud_distance_case

    rng = np.random.default_rng(12)
    truth = PointLabels(rng.normal(size=(300, 3)), rng.integers(0, 3, 300))
    predicted = np.vstack([truth.positions[:200] + 0.1, [[np.nan, 0.0, 0.0]]])
    found = cloud_distance_case(predicted, None, truth)
    assert found["kind"] == "distances" and found["numbers"]["dropped"] == {"prediction": 1}
    brute = np.sqrt(((predicted[:200, None, :] - truth.positions[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    np.testing.assert_allclose(found["arrays"]["distance"], brute, rtol=1e-9)
    assert found["pictures"][0][0].startswith("prediction: distance")
    arrays = found["arrays"]
    cloud = pair(
        arrays["positions"],
        arrays["truth_positions"],
        None,
        arrays["truth"],
        arrays["distance"],
        arrays["truth_distance"],
    )
    assert available_modes(cloud) == ["distance error", "height"]
    left, right, scale = colours(cloud, "distance error")
    np.testing.assert_allclose(left, brute, rtol=1e-6)
    assert right.shape == (300,) and right.max() > 0 and scale["bar"] and scale["high"] > scale["low"] == 0


def test_a_page_past_the_end_says_so() -> None:
    from stagewatch.ui._data import Page

    assert Page(pd.DataFrame(), 30, 0, 25).label == "1-25 of 30"
    assert Page(pd.DataFrame(), 30, 25, 25).label == "26-30 of 30"
    assert Page(pd.DataFrame(), 30, 2500, 25).label.startswith("past the last page (30 match")
    assert Page(pd.DataFrame(), 0, 0, 25).label == "no rows match"


def test_the_runs_signature_moves_with_a_commit_and_only_then(tmp_path) -> None:
    from stagewatch.daemon.tables._store import Store
    from stagewatch.daemon.tables._tables import delete
    from stagewatch.ui._data import runs_signature

    before = runs_signature(tmp_path)
    assert runs_signature(tmp_path) == before  # nothing happened
    Store(tmp_path).write_rows("runs", [{"run_id": "r", "start_time": 0, "lsn": 1}])
    after = runs_signature(tmp_path)
    assert after != before and runs_signature(tmp_path) == after
    delete(tmp_path, "runs", "run_id = 'r'")  # a run removed: a commit that adds no file
    assert runs_signature(tmp_path) != after


def test_failure_cases_narrow_by_time_kind_and_severity(tmp_path) -> None:
    from stagewatch.daemon.tables._store import Store
    from stagewatch.ui._failures import CaseFilters, failures_page

    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    for day, kinds in ((0, ["missed", "localization"]), (5, ["missed"])):
        moment = now - timedelta(days=day)
        rows = [
            {
                "run_id": "r",
                "pipeline": "p",
                "stage": "detection",
                "sample_id": f"d{day}s{i}",
                "time": int(moment.timestamp() * 1e9),
                "status": "wrong",
                "value": 0.5,
                "severity": 0.2 + 0.3 * i,
                "error_types": [kind],
                "errors": "{}",
                "reason": "",
                "scores": "{}",
                "prediction_path": None,
                "label_path": None,
                "lsn": i,
                "classes": [["car"], ["car", "pedestrian"]][i],
                "confidence": [0.95, 0.4][i],
            }
            for i, kind in enumerate(kinds)
        ]
        if day:  # the older day's rows came before classes and confidence: nulls
            rows = [{name: value for name, value in row.items() if name in OLD_SAMPLE_COLUMNS} for row in rows]
        Store(tmp_path).write_rows("samples", rows)
    assert failures_page(tmp_path, CaseFilters()).total == 3
    assert failures_page(tmp_path, CaseFilters(since=now - timedelta(days=1))).total == 2
    assert failures_page(tmp_path, CaseFilters(until=now - timedelta(days=1))).total == 1
    assert failures_page(tmp_path, CaseFilters(kind="missed")).total == 2
    assert list(failures_page(tmp_path, CaseFilters(min_severity=0.4)).rows["sample_id"]) == ["d0s1"]
    assert list(failures_page(tmp_path, CaseFilters(class_name="pedestrian")).rows["sample_id"]) == ["d0s1"]
    assert failures_page(tmp_path, CaseFilters(class_name="car")).total == 2  # not the old part: no classes
    narrowed = failures_page(tmp_path, CaseFilters(min_confidence=0.9, max_confidence=1.0))
    assert list(narrowed.rows["sample_id"]) == ["d0s0"] and narrowed.rows["confidence"].tolist() == [0.95]
    with pytest.raises(ValueError, match="confidence"):
        CaseFilters(min_confidence=0.8, max_confidence=0.2)
    confident = failures_page(tmp_path, CaseFilters(), sort="confidence").rows
    assert list(confident["sample_id"]) == ["d0s0", "d0s1", "d5s0"]  # no confidence (an older part): last


OLD_SAMPLE_COLUMNS = {
    *("run_id", "pipeline", "stage", "sample_id", "time", "status", "value", "severity", "error_types"),
    *("errors", "reason", "scores", "prediction_path", "label_path", "lsn"),
}


def test_boxes_are_drawn_by_outcome_with_escaped_hover_text_and_switchable_layers() -> None:
    import json
    import re

    from stagewatch.ui._overlay import boxes_svg, parse_boxes_column

    boxes = parse_boxes_column(
        json.dumps(
            {
                "predicted": [
                    [10, 10, 20, 20, "car", 0.9, "matched"],
                    [60, 5, 8, 8, "<img src=x>", 0.2, "below_threshold"],
                ],
                "truth": [[11, 10, 20, 20, "car", "matched"], [40, 40, 5, 9, "pedestrian", "missed"]],
            }
        )
    )
    image = np.zeros((50, 80, 3), np.uint8)
    svg = boxes_svg(image, boxes, ("ground truth", "predictions", "below threshold"))
    assert 'viewBox="0 0 80 50"' in svg and "data:image/png;base64," in svg
    assert re.findall(r'class="sw-box sw-box-(\w+)"', svg) == ["matched", "missed", "matched", "below_threshold"]
    assert "<img" not in svg and "&lt;img src=x&gt;" in svg  # a class name is text, never markup
    assert svg.count("stroke-dasharray") == 2  # ground truth dashed
    predictions_only = boxes_svg(None, boxes, ("predictions",))
    assert re.findall(r"sw-box-(\w+)", predictions_only) == ["matched"] and "<image" not in predictions_only
    assert 'viewBox="0 0 68 49"' in predictions_only  # no image: a canvas as large as the boxes reach
    assert parse_boxes_column("not json") == {"predicted": [], "truth": []}
    # The legend counts boxes per side: one matched pair is not "2 matched".
    from stagewatch.ui._overlay import legend_html

    legend = re.sub(r"<[^>]+>", "", legend_html(boxes))
    assert "matched (prediction and its ground truth) 1 ground truth · 1 predicted" in legend
    assert "missed: a ground-truth object no prediction found 1" in legend


def test_a_mask_over_its_image_blends_classes_and_leaves_background_clear() -> None:
    from stagewatch.ui._failures import mask_overlay

    image = np.full((4, 6, 3), 100, np.uint8)
    labels = np.zeros((4, 6), np.int64)
    labels[1, 2], labels[2, 3] = 1, 255
    half = mask_overlay(image, labels, 0.5)
    assert (half[0, 0] == 100).all() and (half[2, 3] == 100).all()  # background and ignored stay the image
    assert (mask_overlay(image, labels, 1.0)[1, 2] == (78, 121, 167)).all()  # class 1's colour at full opacity
    assert half[1, 2].tolist() == [89, 111, 134]  # (100 + colour) / 2, rounded
    labels[0:2, 2:4] = 1
    scaled = mask_overlay(image[::2, ::2], labels, 1.0)  # an image shown scaled down: the mask follows
    assert scaled.shape == (2, 3, 3) and (scaled[0, 1] == (78, 121, 167)).all()


def test_a_big_input_image_is_sent_scaled_down_with_boxes_in_its_own_coordinates(tmp_path) -> None:
    from PIL import Image

    from stagewatch.ui._failures import MAX_INPUT_SIDE, _input_of
    from stagewatch.ui._overlay import boxes_svg

    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "golden.yaml").write_text("name: x\nstages:\n  d: {labels: a.json}\n")
    Image.new("RGB", (6000, 3000), (10, 20, 30)).save(dataset / "big.png")
    run_id = "0b6e3c7e-1c1a-4f57-9a8e-3f0d2c1b5a44"
    run = tmp_path / "home" / "runs" / run_id
    run.mkdir(parents=True)
    audit = {"run_id": run_id, "status": "ok", "complete": True, "dataset": str(dataset / "golden.yaml")}
    (run / "audit.json").write_text(json.dumps(audit))
    found = _input_of(tmp_path / "home", {"run_id": run_id, "input_path": str(dataset / "big.png")})
    assert found["size"] == (3000, 6000), found["problem"]
    assert found["image"].shape == (MAX_INPUT_SIDE // 2, MAX_INPUT_SIDE, 3)
    boxes = {"predicted": [], "truth": [[5000, 2000, 500, 500, "car", "missed"]]}
    svg = boxes_svg(found["image"], boxes, ("ground truth",), found["size"])
    assert 'viewBox="0 0 6000 3000"' in svg and 'width="6000" height="3000"/>' in svg
    outside = _input_of(tmp_path / "home", {"run_id": run_id, "input_path": "/etc/hostname"})
    assert outside["image"] is None and "not a file in the dataset's folder" in outside["problem"]


def test_time_axes_tick_as_a_clock_and_one_run_spans_an_hour() -> None:
    """A chart of one run ticked "401500us" (an axis spanning nothing); the log histogram's
    sub-second ticks read "400ms … 0ms … 200ms"."""
    from bokeh.plotting import figure

    from stagewatch.ui import _axes

    one = figure(x_axis_type="datetime")
    moment = pd.Timestamp("2026-12-06 08:42:46.963", tz="UTC")
    _axes.time_axis(one, [moment, moment])
    assert (one.x_range.end - one.x_range.start) >= pd.Timedelta(hours=1)
    ticks = one.xaxis[0].formatter
    assert ticks.milliseconds == "%H:%M:%S.%3N" and ticks.microseconds.startswith("%H:%M:%S")
    many = figure(x_axis_type="datetime")
    _axes.time_axis(many, [moment, moment + pd.Timedelta(days=3)])
    assert type(many.x_range).__name__ == "DataRange1d"  # a real span: the data's own range


@pytest.mark.parametrize("status", ["failed", "crashed"])
def test_a_stage_that_raised_or_crashed_has_a_tile_saying_so_in_the_gallery(status: str) -> None:
    """A failed (an exception) or crashed stage execution has no prediction to draw: its
    thumbnail is the red tile naming the failure, not a picture of a prediction."""
    from stagewatch.ui import _gallery

    row = {"status": status, "reason": "ValueError: frame_047 has NaN pixels", "run_id": "r", "stage": "pre"}
    tile = _gallery._case_picture(None, row, None)  # no home needed: nothing is read
    assert tuple(tile[0, tile.shape[1] // 2]) == _gallery._CRASH_RED  # the border says: a failure


@pytest.mark.parametrize(
    ("page", "arguments", "reader"),
    [
        ("run", {"order": ["slowest"], "size": ["20"]}, "run_view"),
        ("run", {"order": ["slowest"], "size": ["20"]}, "executions_of"),
        ("logs", {"level": ["ERROR"], "stage": ["detection"], "size": ["20"]}, "logs_page"),
        ("performance", {"window": ["7d"], "measure": ["p95"]}, "stage_rows"),
    ],
)
def test_a_page_opened_from_a_link_reads_its_data_once(daemon, monkeypatch, page, arguments, reader) -> None:
    """Each value the link restores used to redraw the page before the page drew itself: the
    Run page read the run twice, a filtered Logs page its lines once per filter and again."""
    from loguru import logger

    import stagewatch
    from stagewatch.ui import _data, _router, _trends
    from stagewatch.ui.app import ROUTES

    sink = logger.add(stagewatch.loguru_sink, level="DEBUG")
    try:
        with stagewatch.init(pipeline="p", home=daemon.home) as run:
            for frame in range(3):
                with run.stage("detection", sample_id=f"frame_{frame}"):
                    logger.error("frame {} is dark", frame)
    finally:
        logger.remove(sink)
    daemon.audit(run.id)
    module = _trends if reader == "stage_rows" else _data
    calls = []
    original = getattr(module, reader)
    monkeypatch.setattr(module, reader, lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(_router, "session_arguments", lambda: {**arguments, "run": [run.id]})
    ROUTES[page].view(daemon.home)
    assert len(calls) == 1


def test_an_error_is_shown_as_it_was_raised_not_as_markdown() -> None:
    """Python's messages hold Markdown's marks (`__init__`, `*args`, `# of`, `[0]`): the Run and
    Case pages' error card shows them as raised, not as bold, italics or a heading."""
    import html
    import re

    from stagewatch.ui.pages.run import error_card

    message = "__init__() got *args* and **kw**; expected <class 'int'> # of frames [0](x) `n`"
    card = error_card({"type": "Type_Error_", "stage": "pre_proc_", "sample_id": "f_1", "message": message})
    alert = card.objects[0]
    shown = html.unescape(alert._transform_object(alert.object)["object"])  # the HTML the browser is sent
    text = html.unescape(re.sub(r"<[^>]+>", "", shown))
    assert message in text and "Type_Error_" in text and "pre_proc_" in text
    assert not re.search(r"<(em|h\d|a)\b", shown), shown
    card = error_card({"type": "E", "stage": "s", "message": "# one\n- two\n> three"})  # its lines kept
    alert = card.objects[0]
    shown = html.unescape(alert._transform_object(alert.object)["object"])
    assert shown.count("<br") == 2 and "# one" in shown and "- two" in shown, shown


class _Session:
    """A server session's next ticks, run when the test says: a page built as a switch builds it."""

    session_context = None

    def __init__(self) -> None:
        self.ticks: list = []

    def add_next_tick_callback(self, callback) -> None:
        self.ticks.append(callback)

    def tick(self) -> None:
        ticks, self.ticks = self.ticks, []
        for callback in ticks:
            callback()


def _built_as_a_switch(monkeypatch, page: str, home, arguments: dict) -> tuple[_Session, object]:
    """The page built inside a session's page scope (`_router.PageScope`): what it puts off to
    the next tick waits for `_Session.tick`."""
    from types import SimpleNamespace

    from stagewatch.ui import _router
    from stagewatch.ui.app import ROUTES

    session = _Session()
    scope = _router.PageScope(SimpleNamespace(document=session, kept={}), arguments)
    monkeypatch.setattr(_router, "current_scope", lambda: scope)
    return session, ROUTES[page].view(home)


def _tables(viewable) -> list[str]:
    """The names of the tables the page holds, top to bottom."""
    import panel as pn

    return [table.name for table in viewable.select(pn.widgets.Tabulator)]
