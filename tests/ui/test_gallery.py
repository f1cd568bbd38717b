"""The failure gallery, a case's next/previous by keyboard and detection accuracy per class, in a
real Chromium over a home that a real daemon and the demo pipeline filled (the `served`
fixture of test_dashboard: its own demo home for this module)."""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

import pytest

from stagewatch.daemon.query._readmodels import read_table
from tests.conftest import wait_for
from tests.ui.conftest import CHROMIUM
from tests.ui.test_dashboard import _choose, _pager_total, served  # noqa: F401 (a fixture)

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def _failing(home: Path, stage: str | None = None) -> list[dict]:
    """The failure cases the Failures page lists: wrong or invalid samples, failed executions."""
    columns = ["stage", "sample_id", "status"]
    rows = read_table(home, "samples", None, None, columns).to_pylist()
    rows += read_table(home, "stage_executions", None, None, columns).to_pylist()
    return [r for r in rows if r["status"] not in ("correct", "unlabeled", "ok") and stage in (None, r["stage"])]


def _thumbnails(page) -> list[dict]:
    """Each thumbnail's case (from its link) and whether its picture decoded."""
    return page.locator(".sw-gallery a.sw-thumb").evaluate_all(
        """links => links.map(link => ({href: link.getAttribute('href'),
            drawn: link.querySelector('img').complete && link.querySelector('img').naturalWidth > 0}))"""
    )


def _case_of(href: str) -> tuple[str, str]:
    query = urllib.parse.parse_qs(urllib.parse.urlparse(href).query)
    return query["stage"][0], query["sample"][0]


def test_the_gallery_shows_the_cases_as_thumbnails_filtered_and_paged_like_the_table(served, page) -> None:  # noqa: F811
    home, _, ui, _ = served
    everything = len(_failing(home))
    assert everything > 25  # more than a page
    page.goto(f"{ui.url}?page=failures&show=gallery")
    wait_for(lambda: len(_thumbnails(page)) == 25 and all(t["drawn"] for t in _thumbnails(page)), 30)
    first_page = [_case_of(t["href"]) for t in _thumbnails(page)]
    page.get_by_role("button", name="next ▶").click()  # page 2: the rest, none of page 1's
    wait_for(lambda: [_case_of(t["href"]) for t in _thumbnails(page)] not in ([], first_page), 30)
    second_page = [_case_of(t["href"]) for t in _thumbnails(page)]
    assert len(second_page) == min(25, everything - 25) and not set(second_page) & set(first_page)
    detection = _failing(home, "detection")
    _choose(page, "Stage", "detection")  # a filter goes back to page 1 and narrows the thumbnails
    wait_for(lambda: _pager_total(page) == len(detection), 30)
    wait_for(lambda: {_case_of(t["href"])[0] for t in _thumbnails(page)} == {"detection"}, 30)
    shown = _thumbnails(page)
    assert len(shown) == min(25, len(detection))
    # The same cases in the same order as the table of this view.
    in_gallery = [_case_of(t["href"])[1] for t in shown]
    page.get_by_role("button", name="table").click()
    page.wait_for_selector(".sw-table-failures .tabulator-row")
    in_table = page.locator(".sw-table-failures .tabulator-cell[tabulator-field='case']").all_inner_texts()
    assert in_table == in_gallery


def at_case(page, position: int) -> None:
    """Wait for the Case page of that position in its view, its keys listening."""
    assert wait_for(lambda: page.get_by_text(f"case {position} of").count() > 0, 30)
    page.locator(".sw-case-keys").wait_for(state="attached")


def test_a_case_steps_to_the_next_and_previous_case_of_its_view_by_keyboard(served, page) -> None:  # noqa: F811
    _, _, ui, _ = served
    page.goto(f"{ui.url}?page=failures&show=gallery&stage=segmentation&sort=sample")
    wait_for(lambda: len(_thumbnails(page)) > 2, 30)
    order = [_case_of(t["href"])[1] for t in _thumbnails(page)]
    assert order == sorted(order)  # sorted by sample, as asked
    page.locator(".sw-gallery a.sw-thumb").nth(1).click()
    page.wait_for_url(re.compile(f"page=case.*sample={order[1]}"))
    page.locator(".sw-case-keys").wait_for(state="attached")
    at_case(page, 2)
    page.keyboard.press("j")
    page.wait_for_url(re.compile(f"sample={order[2]}&"))
    at_case(page, 3)  # the page switched in place: its own keys, not the last page's, take the next press
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(re.compile(f"sample={order[1]}&"))
    at_case(page, 2)
    page.keyboard.press("k")
    page.wait_for_url(re.compile(f"sample={order[0]}&"))
    assert wait_for(lambda: page.get_by_text("case 1 of").count() > 0, 30)
    # Typing in a field is not a step: the Sample box takes the j.
    box = page.locator(".sw-sample input")
    box.focus()
    page.keyboard.press("End")
    page.keyboard.press("j")
    assert f"sample={order[0]}&" in page.url


def test_accuracy_shows_detection_ap_per_class_as_the_judge_computed_it(served, page) -> None:  # noqa: F811
    home, _, ui, run_id = served
    figures = json.loads((home / "runs" / run_id / "accuracy.json").read_text())["stages"]["detection"]["metrics"]
    page.goto(f"{ui.url}?page=accuracy&run={run_id}")
    table = ".sw-table-box-classes-detection"
    page.wait_for_selector(f"{table} .tabulator-row")
    classes = page.locator(f"{table} .tabulator-cell[tabulator-field='class']").all_inner_texts()
    assert classes == ["car", "pedestrian"]
    for column in ("AP", "AP50", "AR100", "recall", "precision"):
        cells = page.locator(f"{table} .tabulator-cell[tabulator-field='{column}']").all_inner_texts()
        assert cells == [f"{figures['per_class'][name][column]:.3f}" for name in classes], column
