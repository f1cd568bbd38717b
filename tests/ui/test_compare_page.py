"""The Compare page in a real Chromium over a home a real daemon filled: two runs of a golden
dataset where the second gets two samples wrong, reached from Runs (two ticked) and from Run
(compare with the previous run); a flip opens both cases side by side."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, wait_for
from tests.groundtruth.builders import write_dataset
from tests.test_compare import judged_run
from tests.ui.conftest import CHROMIUM
from tests.ui.test_dashboard import Ui, shown

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Ui, str, str]]:
    home = Path(str(tmp_path_factory.mktemp("compare"))) / "home"
    daemon = DaemonProcess(home).start()
    dataset = write_dataset(home.parent / "golden", 8)
    before = judged_run(daemon, dataset, {3}, 8)
    after = judged_run(daemon, dataset, {3, 1, 6}, 8)
    ui = Ui(home)
    try:
        yield ui, before, after
    finally:
        ui.stop()
        daemon.stop()


def test_two_ticked_runs_open_the_comparison_and_a_flip_opens_both_cases(served, page) -> None:
    ui, before, after = served
    page.goto(f"{ui.url}?page=runs")
    page.wait_for_selector(".sw-table-runs .tabulator-row")
    rows = page.locator(".sw-table-runs .tabulator-row")
    wait_for(lambda: rows.count() == 2, 30)
    for index in range(2):
        rows.nth(index).locator("input[type=checkbox]").click()
    link = page.locator(".sw-compare-selected a")
    wait_for(lambda: link.count() == 1, 20)
    assert link.get_attribute("href") == f"?page=compare&a={before}&b={after}"  # the older is the baseline
    link.click()
    page.wait_for_url(re.compile("page=compare"))
    flips = page.locator(".sw-compare-flips a.sw-flip:visible")  # the page as drawn once the switch settles
    texts = ["detection on s0001", "detection on s0006"]
    wait_for(lambda: [text for text in flips.all_inner_texts() if text] == texts, 60)
    assert shown(page, "correct → ")
    assert page.locator(".sw-compare-stages tr.sw-stage-regressed").count() == 0  # nothing timed slower
    flips.nth(1).click()
    page.wait_for_url(re.compile("flip=detection%2Fs0006"))
    pictures = page.locator(".sw-compare-side-by-side .sw-case-boxes")
    wait_for(lambda: pictures.count() == 2, 60)  # A's case and B's, each drawn as the Case page draws it
    boxes = [p.bounding_box() for p in pictures.all()]
    assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"] + 1  # side by side
    assert shown(page, "detection on s0006: correct") and shown(page, "detection on s0006: wrong")


def test_a_run_page_compares_with_the_previous_run(served, page) -> None:
    ui, _before, after = served
    page.goto(f"{ui.url}?page=run&run={after}")
    page.locator(".sw-compare-previous").first.click()
    page.wait_for_url(re.compile(f"page=compare&b={after}"))
    flips = page.locator(".sw-compare-flips a.sw-flip")
    wait_for(lambda: flips.count() == 2, 60)
    assert shown(page, "Unchanged.")  # neither config nor environment changed
    page.goto(f"{ui.url}?page=compare&a=ffffffff&b={after}")
    wait_for(lambda: shown(page, "no run with id 'ffffffff'"), 30)
    hostile = "<img src=x onerror=window.__pwned=1>"  # a link's run id is shown as text, never run
    page.goto(f"{ui.url}?page=compare&b={urllib.parse.quote(hostile)}")
    wait_for(lambda: shown(page, "no run with id"), 30)
    assert page.evaluate("window.__pwned") is None and shown(page, hostile)
