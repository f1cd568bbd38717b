"""The error browser: failure cases filtered at 500 / 100k / 1M, image and mask differences at
4K, cloud distances at 100k and 1M points, the failure gallery's page of 24 thumbnails.

    python benchmarks/error_browser.py [--cases 500 100000 1000000] [--points 100000 1000000]
    python benchmarks/error_browser.py --only gallery --cases 100000 --demo-home output

Cases: a home whose `samples` table holds N judged failures (Parquet in the daemon's schema,
spread over 30 days; 3 stages, 6 error kinds). Reference, in the same run: the whole table
read into pandas, filtered, sorted, the first page taken. Differences: against plain numpy
(image) and against SciPy's cKDTree (cloud distances, both ways, all cores as ours).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(__file__))
from _common import median_ms, print_table

from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.groundtruth.diff import cloud_distances, image_difference, mask_difference
from stagewatch.daemon.query._readmodels import read_table
from stagewatch.daemon.tables._store import SAMPLES
from stagewatch.ui._failures import CaseFilters, failures_page
from stagewatch.ui._gallery import ThumbnailCache, thumbnails

KINDS = ["missed", "localization", "false_positive", "class_confusion", "mask_mismatch", "point_label_mismatch"]
CLASSES = ["car", "pedestrian", "cyclist"]
STAGES = ["detection", "segmentation", "lidar_segmentation"]


def case_home(cases: int) -> Path:
    home = Path(tempfile.mkdtemp(prefix="sw-cases-", dir="/tmp")) / "home"
    rng = np.random.default_rng(7)
    now = datetime.now(UTC)
    days = 30
    for day in range(days):
        n = cases // days + (1 if day < cases % days else 0)
        if n == 0:
            continue
        date = (now - timedelta(days=day)).strftime("%Y-%m-%d")
        start = int((now - timedelta(days=day)).timestamp() * 1e9)
        stage = rng.integers(0, 3, n)
        kinds = rng.integers(0, 4, n)
        table = pa.table(
            {
                "run_id": [f"{i % 997:08x}-0000-4000-8000-000000000000" for i in range(n)],
                "pipeline": ["perception"] * n,
                "stage": [STAGES[s] for s in stage],
                "sample_id": [f"frame_{i:07d}" for i in range(n)],
                "time": pa.array(start - rng.integers(0, 86_400 * 10**9, n), pa.timestamp("ns", tz="UTC")),
                "status": np.where(rng.random(n) < 0.97, "wrong", "invalid"),
                "value": rng.random(n),
                "severity": rng.random(n).round(6),
                "error_types": [
                    [KINDS[k]] if s == 0 else [KINDS[4 if s == 1 else 5]] for s, k in zip(stage, kinds, strict=True)
                ],
                "errors": ["{}"] * n,
                "reason": [""] * n,
                "scores": ["{}"] * n,
                "prediction_path": [None] * n,
                "label_path": [None] * n,
                "lsn": np.arange(n, dtype=np.int64),
                "classes": [CLASSES[c : c + 1 + (c == 0)] for c in rng.integers(0, 3, n)],
                "confidence": np.where(stage == 0, rng.random(n).round(3), np.nan),
                "boxes": [None] * n,
                "input_path": [None] * n,
            },
            schema=SAMPLES,
        )
        folder = DaemonHome.of(home).partition("samples", date)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-0.parquet")
    return home


def naive(home: Path, keep: Callable) -> object:
    frame = read_table(home, "samples").to_pandas()
    return frame[keep(frame)].sort_values("severity", ascending=False).head(25)


def filters(cases: int) -> list[list[object]]:
    home = case_home(cases)
    try:
        rows = []
        for name, ours, reference in [
            (
                "all failures, most severe first",
                lambda: failures_page(home, CaseFilters()),
                lambda: naive(home, lambda f: f["status"].isin(["wrong", "invalid"])),
            ),
            (
                "detection, missed",
                lambda: failures_page(home, CaseFilters(stage="detection", kind="missed")),
                lambda: naive(
                    home, lambda f: (f["stage"] == "detection") & f["error_types"].map(lambda k: "missed" in k)
                ),
            ),
            (
                "class pedestrian, confidence >= 0.9",
                lambda: failures_page(home, CaseFilters(class_name="pedestrian", min_confidence=0.9)),
                lambda: naive(home, lambda f: f["classes"].map(lambda c: "pedestrian" in c) & (f["confidence"] >= 0.9)),
            ),
            (
                "severity >= 0.9, text 'frame_00012'",
                lambda: failures_page(home, CaseFilters(min_severity=0.9, text="frame_00012")),
                lambda: naive(home, lambda f: (f["severity"] >= 0.9) & f["sample_id"].str.contains("frame_00012")),
            ),
        ]:
            mine, theirs = median_ms(ours, warm=True), median_ms(reference, 3, warm=True)
            rows.append([f"{cases:,}", name, f"{mine:.0f}", f"{theirs:.0f}", f"{theirs / mine:.1f}x"])
        return rows
    finally:
        shutil.rmtree(home.parent, ignore_errors=True)


def images() -> list[list[object]]:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2160, 3840, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (2160, 3840, 3), dtype=np.uint8)
    truth = rng.integers(0, 5, (2160, 3840)).astype(np.uint8)
    predicted = np.where(rng.random(truth.shape) < 0.9, truth, rng.integers(0, 5, truth.shape)).astype(np.uint8)
    ours = median_ms(lambda: image_difference(a, b), 5, warm=True)
    plain = median_ms(
        lambda: np.abs(a.astype(np.float64) / 255 - b.astype(np.float64) / 255).mean(axis=2), 5, warm=True
    )
    mask = median_ms(lambda: mask_difference(predicted, truth), 5, warm=True)
    plain_mask = median_ms(lambda: [(predicted == c) & (truth == c) for c in range(5)], 5, warm=True)
    return [
        ["image |A-B| heatmap, 3840x2160x3", f"{ours:.0f}", "numpy |A-B| alone", f"{plain:.0f}", f"{ours / plain:.2f}"],
        [
            "mask TP/FP/FN map + per-class counts, 3840x2160, 5 classes",
            f"{mask:.0f}",
            "numpy per-class TP masks alone",
            f"{plain_mask:.0f}",
            f"{mask / plain_mask:.2f}",
        ],
    ]


def clouds(sizes: list[int]) -> list[list[object]]:
    from scipy.spatial import cKDTree

    rows = []
    rng = np.random.default_rng(2)
    for n in sizes:
        truth = rng.uniform(-50, 50, (n, 3))
        prediction = truth[rng.permutation(n)[: int(n * 0.9)]] + rng.normal(0, 0.05, (int(n * 0.9), 3))

        def reference(prediction=prediction, truth=truth):
            return cKDTree(truth).query(prediction, workers=-1)[0], cKDTree(prediction).query(truth, workers=-1)[0]

        found = cloud_distances(prediction, truth)
        there, back = reference()
        assert np.allclose(found.to_truth, there) and np.allclose(found.to_prediction, back)  # the same numbers
        ours = median_ms(lambda prediction=prediction, truth=truth: cloud_distances(prediction, truth), 3, warm=True)
        theirs = median_ms(reference, 3, warm=True)
        rows.append([f"{len(prediction):,} vs {n:,}", f"{ours:.0f}", f"{theirs:.0f}", f"{theirs / ours:.2f}"])
    return rows


DRAWN = "() => window.views && ['left', 'right'].every(s => views[s] && views[s].frames > 0)"


def cloud_render(sizes: list[int]) -> list[list[object]]:
    """A predicted cloud and its ground truth of n points each, opened in Chromium: the Case
    page's 3D views (thinned past 100k points) until both are drawn. Served as the dashboard
    serves them (the same HTML, renderer inline) by a plain HTTP server."""
    import functools
    import http.server
    import threading

    from playwright.sync_api import sync_playwright

    from stagewatch.ui._cloud3d import pair, write_standalone

    root = Path(tempfile.mkdtemp(prefix="sw-cloud-"))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows = []
    rng = np.random.default_rng(3)
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            for n in sizes:
                truth = rng.uniform(-50, 50, (n, 3))
                labels = rng.integers(0, 5, n)
                started = time.perf_counter()
                cloud = pair(truth, truth, labels, np.where(rng.random(n) < 0.9, labels, 0), None)
                write_standalone(cloud, root, f"cloud-{n}.html")
                build = time.perf_counter() - started
                times = []
                for _ in range(3):
                    page = browser.new_page(viewport={"width": 1400, "height": 700})
                    started = time.perf_counter()
                    page.goto(f"http://127.0.0.1:{server.server_address[1]}/cloud-{n}.html")
                    page.wait_for_function(
                        DRAWN,
                        timeout=120_000,
                    )
                    times.append(time.perf_counter() - started)
                    page.close()
                render = statistics.median(times)
                rows.append(
                    [
                        f"{n:,} + {n:,}",
                        f"{len(cloud.prediction):,}",
                        f"{build:.2f}",
                        f"{render:.2f}",
                        f"{build + render:.2f}",
                        "2.0",
                        f"{(build + render) / 2:.2f}",
                    ]
                )
            browser.close()
    finally:
        server.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    return rows


GALLERY_PAGE = 24


def gallery_page(home: Path, label: str) -> list[list[object]]:
    """A page of 24 cases as the gallery shows them: the page's query, then its thumbnails cold
    (an empty cache: every case read and drawn) and warm (the same page again)."""

    def cold() -> object:
        rows = failures_page(home, CaseFilters(), limit=GALLERY_PAGE).rows.to_dict("records")
        return thumbnails(home, rows, ThumbnailCache())

    warm_cache = ThumbnailCache()

    def warm() -> object:
        rows = failures_page(home, CaseFilters(), limit=GALLERY_PAGE).rows.to_dict("records")
        return thumbnails(home, rows, warm_cache)

    query = median_ms(lambda: failures_page(home, CaseFilters(), limit=GALLERY_PAGE), 7, warm=True)
    return [[label, f"{query:.0f}", f"{median_ms(cold, 5, warm=True):.0f}", f"{median_ms(warm, 7, warm=True):.0f}"]]


def gallery(cases: list[int], demo_home: Path | None) -> list[list[object]]:
    rows = []
    if demo_home is not None:  # real pictures: boxes on camera frames, masks, clouds from above
        rows += gallery_page(demo_home, f"demo home {demo_home}")
    for count in cases:  # judged samples without files: the reads of a page at scale, tiles drawn
        home = case_home(count)
        try:
            rows += gallery_page(home, f"{count:,} cases (no pictures on disk)")
        finally:
            shutil.rmtree(home.parent, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, nargs="+", default=[500, 100_000, 1_000_000])
    parser.add_argument("--points", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--render", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--only", choices=["cases", "images", "clouds", "render", "gallery"])
    parser.add_argument("--demo-home", type=Path, help="a home `stagewatch demo` filled (gallery)")
    args = parser.parse_args()
    if args.only in (None, "gallery"):
        print_table(
            f"Failure gallery: a page of {GALLERY_PAGE} cases (median, ms)",
            ["home", "page query", "query + thumbnails, cold", "query + thumbnails, warm"],
            gallery(args.cases, args.demo_home),
        )
    if args.only == "gallery":
        return
    if args.only in (None, "render"):
        print_table(
            "A cloud pair opened in Chromium (software WebGL): page built on the server, then drawn (median of 3, s)",
            ["points", "drawn per view", "build s", "draw s", "total s", "target s", "ratio"],
            cloud_render(args.render),
        )
    if args.only == "render":
        return
    print_table(
        "Failure browser: first page answered on the server (median of 7, ms)",
        ["cases", "query", "stagewatch", "pandas: read all, filter, sort", "ratio"],
        [row for cases in args.cases for row in filters(cases)],
    )
    print_table(
        "Differences at 4K (median of 5, ms)", ["what", "stagewatch", "reference", "ms", "ours / ref"], images()
    )
    print_table(
        "Cloud distances both ways, the same numbers as the reference (median of 3, ms)",
        ["points (prediction vs truth)", "stagewatch (Open3D KD-tree)", "SciPy cKDTree", "ratio"],
        clouds(args.points),
    )


if __name__ == "__main__":
    main()
