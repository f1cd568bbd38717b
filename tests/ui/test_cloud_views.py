"""The 3D cloud views in Chromium, on their own (the page the Case page puts in its iframe):
distance colouring with adjustable ends, locked cameras, a thinned big pair."""

from __future__ import annotations

import functools
import http.server
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
    page.wait_for_function("() => window.views && ['left', 'right'].every(s => views[s] && views[s].frames > 0)")


def _painted(page, side: str) -> int:
    """Pixels of the view's canvas that are not the white background: points were drawn."""
    return page.evaluate(
        """side => { const gl = views[side].gl, w = gl.drawingBufferWidth, h = gl.drawingBufferHeight;
        const pixels = new Uint8Array(w * h * 4); gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, pixels);
        let n = 0; for (let i = 0; i < pixels.length; i += 4) if (pixels[i] + pixels[i + 1] + pixels[i + 2] < 750) n++;
        return n; }""",
        side,
    )


def test_distance_colouring_has_adjustable_ends_and_the_cameras_follow(served, page) -> None:
    folder, base = served
    rng = np.random.default_rng(5)
    truth = rng.uniform(-10, 10, (3000, 3))
    predicted = truth[:2000] + rng.normal(0, 0.2, (2000, 3))
    found = cloud_distances(predicted, truth)
    cloud = pair(predicted, truth, None, None, found.to_truth, found.to_prediction)
    write_standalone(cloud, folder, "distance.html")
    _opened(page, f"{base}/distance.html")
    assert page.evaluate("() => [views.left.count, views.right.count]") == [2000, 3000]
    assert _painted(page, "left") > 500 and _painted(page, "right") > 500
    page.select_option("#mode", "distance error")
    colours = wait_for(lambda: (c := page.evaluate("() => Array.from(views.left.values)")) and c)
    np.testing.assert_allclose(colours, found.to_truth, rtol=1e-6)  # the full clouds' distances, as float32
    assert page.is_visible("#scale")
    page.fill("#high", "0.25")
    page.press("#high", "Enter")
    wait_for(lambda: page.evaluate("() => range.high") == 0.25)
    page.select_option("#mode", "height")
    assert not page.is_visible("#scale")
    frames = page.evaluate("() => [views.left.frames, views.right.frames]")
    box = page.locator("#right").bounding_box()  # turning the right view turns the left one
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6, steps=10)
    page.mouse.up()
    eyes = "() => [views.left.eye, views.right.eye, views.left.frames, views.right.frames]"
    left, right, *drawn = wait_for(lambda: (e := page.evaluate(eyes)) and e[2] > frames[0] + 2 and e, 20)
    assert left == right and drawn[0] == drawn[1]  # both redrawn from the one camera
    assert page.evaluate("() => camera.yaw") != -0.9  # turned


def test_a_big_pair_opens_thinned(served, page) -> None:
    folder, base = served
    rng = np.random.default_rng(6)
    points = rng.uniform(-50, 50, (MAX_DRAWN * 4, 3))
    labels = rng.integers(0, 5, len(points))
    cloud = pair(points, points, labels, labels, None)
    write_standalone(cloud, folder, "big.html")
    _opened(page, f"{base}/big.html")
    assert page.evaluate("() => [views.left.count, views.right.count]") == [MAX_DRAWN] * 2
    assert _painted(page, "left") > 10_000


def test_any_per_point_attribute_colours_both_views_and_a_missing_side_is_grey(served, page) -> None:
    folder, base = served
    rng = np.random.default_rng(7)
    truth = rng.uniform(-10, 10, (1500, 3))
    predicted = truth[:1000] + 0.05
    intensity = rng.random(1500)
    cloud = pair(predicted, truth, None, None, None, attributes={"intensity": (None, intensity), "bad": (None, [1.0])})
    write_standalone(cloud, folder, "attributes.html")
    _opened(page, f"{base}/attributes.html")
    options = page.locator("#mode option").all_inner_texts()
    assert options == ["height", "attribute: intensity"]  # an attribute of the wrong length is left out
    page.select_option("#mode", "attribute: intensity")
    right = wait_for(lambda: (v := page.evaluate("() => Array.from(views.right.values)")) and v)
    np.testing.assert_allclose(right, intensity, rtol=1e-6)
    assert page.is_visible("#scale")  # its colour range can be set
    assert all(v != v for v in page.evaluate("() => Array.from(views.left.values).slice(0, 50)"))  # NaN: drawn grey
    assert _painted(page, "left") > 200
