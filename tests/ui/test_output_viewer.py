"""The Run page's saved outputs viewer (issue 31, item 2), in the browser over the demo's home:
a thumbnail opens its output in place (no reload) where one looks, every output is reachable as
a thumbnail a page at a time, a saved cloud opens as a cloud, the difference has a colour bar."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.ui import test_dashboard
from tests.ui.conftest import CHROMIUM
from tests.ui.test_dashboard import _choose, shown

served = test_dashboard.served  # the demo's home (50 frames) and two batch runs, served

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def _thumbnails(page) -> list[str]:
    """The saved outputs' thumbnails in view: each one's artifact link."""
    return page.locator(".sw-outputs a:has(img)").evaluate_all("links => links.map(link => link.href)")


def _outputs_of(page, stage: str) -> None:
    _choose(page, "Saved outputs of", f"{stage} (49 executions)")  # frame 47 failed before it
    wait_for(lambda: all(stage in href for href in _thumbnails(page)) and _thumbnails(page), 30)


def _outputs_total(page) -> int | None:
    """How many executions the outputs' pager says saved outputs (None while it says nothing yet)."""
    found = re.search(r" of ([\d,]+)", page.locator(".sw-outputs-pager .sw-count p").first.inner_text())
    return int(found.group(1).replace(",", "")) if found else None


def _next_outputs(page) -> None:
    before = _thumbnails(page)
    page.locator(".sw-outputs-pager button", has_text="next").click()
    wait_for(lambda: _thumbnails(page) and _thumbnails(page) != before, 20)


MAIN_SCROLL = "() => document.getElementById('main').scrollTop"  # the template's main area scrolls, not the window


def test_a_thumbnail_opens_its_output_in_place_at_the_top_of_the_view(served, page) -> None:
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=run&run={run_id}")
    page.wait_for_selector(".sw-table-stages .tabulator-row")
    _outputs_of(page, "postprocessing")
    _next_outputs(page)  # page 2: executions 25-48
    page.evaluate("() => { window.__marker = 1; }")
    thumbnail = page.locator(".sw-outputs a[href*='frame_030_overlay.png'] img").first
    thumbnail.scroll_into_view_if_needed()
    assert page.evaluate(MAIN_SCROLL) > 0  # the outputs are far down the page
    thumbnail.click()
    image = page.wait_for_selector(".sw-preview img[src^='data:image/png']")
    assert page.evaluate("() => window.__marker") == 1  # the same document: no reload
    assert "frame_030_overlay.png" in page.evaluate("() => window.location.search")
    wait_for(lambda: 0 <= image.bounding_box()["y"] < page.viewport_size["height"], 20)  # in view
    assert image.bounding_box()["width"] >= 480
    # The list of outputs is where it was: the same stage, page 2, the output just opened among them.
    assert page.locator(".sw-outputs-pager input").first.input_value() == "2"
    assert any("frame_030_overlay.png" in href for href in _thumbnails(page))


def test_every_saved_output_of_a_stage_is_reachable_as_a_thumbnail_a_page_at_a_time(served, page) -> None:
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=run&run={run_id}")
    page.wait_for_selector(".sw-table-stages .tabulator-row")
    _outputs_of(page, "postprocessing")
    total = wait_for(lambda: _outputs_total(page), 20)
    assert total == 49  # frame 47 failed before postprocessing saved anything
    seen: set[str] = set()
    while True:
        shown_now = _thumbnails(page)
        assert shown_now and not set(shown_now) & seen  # each page new thumbnails
        seen |= set(shown_now)
        if len(seen) >= total:
            break
        _next_outputs(page)
    overlays = {href for href in seen if href.split("&outputs=")[0].endswith("_overlay.png")}
    assert len(overlays) == 49 > 12  # every overlay as a thumbnail, not the first 12
    assert {re.search(r"frame_\d+", href).group() for href in overlays} == {
        f"frame_{i:03d}" for i in range(50) if i != 47
    }


def test_a_saved_cloud_opens_as_a_cloud_with_its_point_count(served, page) -> None:
    home, _, ui, run_id = served
    cloud = f"runs/{run_id}/stages/lidar_segmentation/frame_000_points.ply"
    page.goto(f"{ui.url}?page=run&run={run_id}&artifact={cloud}")
    view = page.frame_locator(".sw-preview-cloud iframe")
    view.locator("canvas#left").wait_for()
    assert view.locator("canvas").count() == 1  # one cloud, one view
    from stagewatch.daemon.groundtruth.formats import load_points

    points = len(load_points(home / cloud)[0])
    drawn = wait_for(lambda: view.locator("body").evaluate("() => window.views?.left?.frames && views.left.count"), 30)
    assert drawn == points
    assert shown(page, f"showing all {points:,} points")
    assert page.locator(".sw-preview .json-formatter-row, .sw-preview pre").count() == 0  # not a JSON tree


def test_the_difference_has_a_gradient_colour_bar_with_its_numbers(served, page) -> None:
    _, _, ui, run_id = served
    overlay = f"runs/{run_id}/stages/postprocessing/frame_000_overlay.png"
    other = overlay.replace("frame_000", "frame_001")
    page.goto(f"{ui.url}?page=run&run={run_id}&artifact={overlay}&compare={other}")
    bar = page.locator(".sw-colour-bar").first
    bar.wait_for()
    text = bar.inner_text()
    assert re.search(r"\b0\b.*\b1\b", text), text  # its ends, in numbers
    colours = bar.locator("span").evaluate_all("spans => spans.map(s => getComputedStyle(s).backgroundColor)")
    assert len(set(colours)) >= 32  # a gradient, not the text "0 … 1"
    box = bar.locator("span").first.bounding_box()
    assert box["width"] > 0 and box["height"] >= 8
