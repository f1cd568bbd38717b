"""The Run page over a real daemon's home of a pipeline that sleeps between its stages: the
time outside stages is a row beside the stages and grey bars in the sample's waterfall."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagewatch.ui import _data
from stagewatch.ui.pages.run import waterfall
from tests.conftest import wait_for
from tests.test_gaps import SAMPLES, SLEEP_S, SLOWEST, sleepy  # noqa: F401 (the module's fixture)
from tests.ui.conftest import CHROMIUM
from tests.ui.test_dashboard import Ui

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def served(sleepy) -> Iterator[tuple[Ui, Path, str]]:  # noqa: F811
    home, run_id = sleepy
    ui = Ui(home)
    try:
        yield ui, home, run_id
    finally:
        ui.stop()


def test_the_waterfall_draws_the_time_outside_stages(sleepy) -> None:  # noqa: F811
    home, run_id = sleepy
    import holoviews.plotting.bokeh  # noqa: F401 (the page's plotting extension, as the server loads it)

    data = _data.run_view(home, run_id)
    rows, gaps = _data.sample_frame(home, run_id, "f1"), _data.sample_gaps(home, run_id, "f1")
    drawn = waterfall(rows, "f1", {}, gaps)[0].object.data  # the chart, in its marked column
    outside = drawn[drawn["stage"] == _data.OUTSIDE_STAGES]
    assert len(outside) == 2  # loading the sample, and the glue between its two stages
    assert (outside["duration_ms"] >= 0.8 * SLEEP_S * 1000).all()
    assert drawn["offset"].min() == 0 and outside["offset"].min() == 0  # the sample enters with its loading
    stats = data["stats"]
    assert stats["stage"].iloc[-1] == _data.OUTSIDE_STAGES and stats["runs"].iloc[-1] == SAMPLES + 1


def test_the_run_page_shows_the_outside_row(served, page) -> None:
    ui, _home, run_id = served
    page.goto(f"{ui.url}?page=run&run={run_id}")
    rows = page.locator(".sw-table-stages .tabulator-row")
    wait_for(lambda: rows.count() == 4, 60)  # preprocessing, detection, nms and the time outside them
    assert "(outside stages)" in rows.nth(3).inner_text()


def test_an_exemplar_link_opens_its_sample(served, page) -> None:
    ui, _home, run_id = served
    page.goto(f"{ui.url}?page=run&run={run_id}")
    detection = page.locator(".sw-table-stages .tabulator-row", has_text="detection")
    link = detection.locator("a.sw-exemplar-max", has_text=f"max: {SLOWEST}")
    wait_for(lambda: link.count() == 1, 60)  # detection's slowest execution: the sample that slept longest
    page.set_viewport_size({"width": 1300, "height": 700})
    link.click()
    page.wait_for_url(re.compile(f"sample={SLOWEST}"))
    chosen = page.locator("select").filter(has=page.locator(f"option[value='{SLOWEST}']"))
    wait_for(lambda: chosen.count() == 1 and chosen.first.input_value() == SLOWEST, 60)
    heading = page.locator(".sw-at-waterfall")  # scrolled to the waterfall: it opened far below the fold
    wait_for(lambda: 0 <= heading.bounding_box()["y"] < 300, 20)


def test_the_performance_page_links_its_percentiles_to_their_executions(served, page) -> None:
    ui, _home, run_id = served
    page.goto(f"{ui.url}?page=performance&window=30d")
    detection = page.locator(".sw-table-window-stats .tabulator-row", has_text="detection")
    link = detection.locator("a.sw-exemplar-max", has_text=f"max: {SLOWEST}")
    wait_for(lambda: link.count() == 1, 60)
    assert link.get_attribute("href") == f"?page=run&run={run_id}&sample={SLOWEST}#waterfall"


def test_a_linked_sample_past_the_listed_ones_is_the_one_drawn(daemon) -> None:
    """The waterfall's picker lists the run's first samples (failures first); a link to another
    (an exemplar's, deep in a long run) opens that sample, not the first listed."""
    import holoviews.plotting.bokeh  # noqa: F401 (the page's plotting extension, as the server loads it)

    from stagewatch.ui.pages.run import RunPage
    from tests.conftest import run_pipeline

    run_id = run_pipeline(daemon.home, frames=_data.SAMPLES_LISTED + 100)  # samples f0, f1, ... in order
    daemon.audit(run_id)
    wanted = f"f{_data.SAMPLES_LISTED + 50}"
    page = RunPage(daemon.home)
    page.run_id.value, page.sample.value = run_id, wanted
    page.show()
    assert wanted not in _data.run_view(daemon.home, run_id)["samples"]  # past the listed ones
    assert page.sample.value == wanted and wanted in page.sample.options
