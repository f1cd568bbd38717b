"""The 3D cloud views in Chromium, on their own (the page the Case page puts in its iframe):
distance colouring with adjustable ends, locked cameras, a thinned big pair."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stagewatch.daemon.groundtruth.diff import cloud_distances
from stagewatch.ui._cloud3d import MAX_DRAWN, pair, write_standalone
from tests.conftest import wait_for

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    folder = Path(str(tmp_path_factory.mktemp("clouds")))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def page() -> Iterator[object]:
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 700})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _opened(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("() => window.views && ['left', 'right'].every(s => views[s]._fullLayout)")


def test_distance_colouring_has_adjustable_ends_and_the_cameras_follow(served, page) -> None:
    folder, base = served
    rng = np.random.default_rng(5)
    truth = rng.uniform(-10, 10, (3000, 3))
    predicted = truth[:2000] + rng.normal(0, 0.2, (2000, 3))
    found = cloud_distances(predicted, truth)
    cloud = pair(predicted, truth, None, None, found.to_truth, found.to_prediction)
    write_standalone(cloud, folder, "distance.html")
    _opened(page, f"{base}/distance.html")
    assert page.evaluate("() => views.left.data[0].x.length") == 2000
    page.select_option("#mode", "distance error")
    colours = wait_for(lambda: (c := page.evaluate("() => Array.from(views.left.data[0].marker.color)")) and c)
    np.testing.assert_allclose(colours, found.to_truth, rtol=1e-6)  # the full clouds' distances, as float32
    assert page.is_visible("#scale")
    page.fill("#high", "0.25")
    page.press("#high", "Enter")
    wait_for(lambda: page.evaluate("() => views.left.data[0].marker.cmax") == 0.25)
    assert page.evaluate("() => views.right.data[0].marker.cmax") == 0.25
    page.select_option("#mode", "height")
    assert not page.is_visible("#scale")
    box = page.locator("#right").bounding_box()  # turning the right view turns the left one
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6, steps=10)
    page.mouse.up()
    eye = "() => JSON.stringify([views.left._fullLayout.scene.camera.eye, views.right._fullLayout.scene.camera.eye])"
    left, _ = wait_for(lambda: (e := json.loads(page.evaluate(eye))) and e[0] == e[1] and e, 20)
    assert left != {"x": 1.25, "y": 1.25, "z": 1.25}  # turned, and both alike


def test_a_big_pair_opens_thinned(served, page) -> None:
    folder, base = served
    rng = np.random.default_rng(6)
    points = rng.uniform(-50, 50, (MAX_DRAWN * 4, 3))
    labels = rng.integers(0, 5, len(points))
    cloud = pair(points, points, labels, labels, None)
    write_standalone(cloud, folder, "big.html")
    _opened(page, f"{base}/big.html")
    assert page.evaluate("() => [views.left.data[0].x.length, views.right.data[0].x.length]") == [MAX_DRAWN] * 2
