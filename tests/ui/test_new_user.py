"""What a new user met on the demo home, each in the browser (issue 31, item 2): the numbers
and words of every page, served by `stagewatch ui` over the demo's home and two batch runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.ui import test_dashboard
from tests.ui.conftest import CHROMIUM
from tests.ui.test_dashboard import _choose, _pager_total, shown

served = test_dashboard.served  # the demo's home and two batch runs, served (a fixture of this module too)

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")

DEMO_STAGES = ["preprocessing", "detection", "segmentation", "lidar_segmentation", "postprocessing"]


def _cells(page, table: str, field: str) -> list[str]:
    return page.locator(f".sw-table-{table} .tabulator-cell[tabulator-field='{field}']").all_inner_texts()


def _headers(page, table: str) -> list[str]:
    titles = page.locator(f".sw-table-{table} .tabulator-col-title").all_inner_texts()
    return [title for title in titles if title.strip()]


def _export(home: Path, *filters: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "export", "--home", str(home), *filters, "--output", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_performance_lists_stages_in_pipeline_order_by_pipeline_with_their_own_memory(served, page) -> None:
    home, _, ui, run_id = served
    # compared with a run of the batch pipeline (its stages are some of the demo's): a run is not compared with itself
    other = next(run.name for run in (home / "runs").iterdir() if run.name != run_id)
    page.goto(f"{ui.url}?page=performance&window=30d&a={other}&b={run_id}")
    page.wait_for_selector(".sw-table-window-stats .tabulator-row")
    headers = _headers(page, "window-stats")
    assert headers[0] == "pipeline" and "own memory" in headers and "process peak" in headers
    assert "CPU peak" not in headers
    rows = list(zip(_cells(page, "window-stats", "pipeline"), _cells(page, "window-stats", "stage"), strict=True))
    outside = "(outside stages)"
    assert [stage for pipeline, stage in rows if pipeline == "perception"] == [*DEMO_STAGES, outside]
    assert [stage for pipeline, stage in rows if pipeline == "batch"] == ["preprocessing", "detection", outside]
    shares = _cells(page, "window-stats", "share of time")
    assert all(share.endswith("%") for share in shares)
    # shares of the wall time, the time outside stages a row beside them: they add up, as in `stats`
    perception = [
        float(share[:-1]) for (pipeline, _), share in zip(rows, shares, strict=True) if pipeline == "perception"
    ]
    assert sum(perception) == pytest.approx(100, abs=0.5)
    assert shown(page, "each stage's own")  # the memory chart's title says what it draws
    page.wait_for_selector(".sw-compare-stages tr td")
    first_cells = page.locator(".sw-compare-stages tr td:first-child").all_inner_texts()
    assert first_cells == DEMO_STAGES  # the comparison too, not the alphabet's


def test_a_run_says_how_it_ended_and_its_share_of_time_reads_as_a_percentage(served, page) -> None:
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=run&run={run_id}")
    page.wait_for_selector(".sw-table-stages .tabulator-row")
    assert shown(page, "finished with failures")  # frame 47 failed; the run went on to its end
    headers = _headers(page, "stages")
    assert {"executions", "own memory", "process peak"} <= set(headers) and "runs" not in headers
    shares = _cells(page, "stages", "share of time")
    assert all(re.fullmatch(r"\d+\.\d+%", share.strip()) for share in shares), shares
    # The percentage is beside its bar, not drawn over it.
    label = page.locator(".sw-table-stages .sw-share > span:last-child").first.bounding_box()
    bar = page.locator(".sw-table-stages .sw-share > span:first-child").first.bounding_box()
    assert label["x"] >= bar["x"] + bar["width"]


def test_runs_count_executions_and_say_each_run_s_end_in_words(served, page) -> None:
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=runs")
    page.wait_for_selector(f".sw-table-runs a[title='{run_id}']")
    headers = _headers(page, "runs")
    assert "executions" in headers and "stages" not in headers
    assert "finished with failures" in _cells(page, "runs", "status")
    placeholders = page.locator(".sw-since input, .sw-until input").evaluate_all(
        "inputs => inputs.map(input => input.placeholder)"
    )
    assert placeholders and not any(re.search(r"20\d\d", p) for p in placeholders), placeholders
    page.locator(".sw-since input").fill("last tuesday")  # not a time: a warning, and no rows of before
    page.locator(".sw-since input").press("Enter")
    page.wait_for_selector("text=expected a time like")
    wait_for(lambda: page.locator(".sw-table-runs .tabulator-row").count() == 0, 20)


def test_frame_47_s_error_is_among_its_stage_s_logs_and_the_download_is_the_matching_lines(served, page) -> None:
    home, _, ui, _ = served
    page.goto(f"{ui.url}?page=logs&stage=preprocessing&level=ERROR")
    page.wait_for_selector(".sw-table-logs .tabulator-row")
    assert _cells(page, "logs", "sample") == ["frame_047"]
    time_cell = page.locator(".sw-table-logs .tabulator-cell[tabulator-field='time'] span").first
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC", time_cell.inner_text())  # the time, to the ms
    assert time_cell.get_attribute("title").endswith("ago")  # and how long ago, on hover
    # Every matching line, past the page in view, and nothing but lines: `export --table logs`.
    page.goto(f"{ui.url}?page=logs&stage=detection&size=25")
    page.wait_for_selector(".sw-table-logs .tabulator-row")
    assert page.locator(".sw-table-logs .tabulator-row").count() == 25
    with page.expect_download() as download:
        page.get_by_text("Download JSON", exact=True).click()
    downloaded = json.loads(Path(download.value.path()).read_text())
    assert downloaded == _export(home, "--table", "logs", "--stage", "detection")
    assert list(downloaded) == ["logs"] and len(downloaded["logs"]) == wait_for(lambda: _pager_total(page)) > 25


def test_an_invalid_since_on_logs_clears_the_old_rows_and_the_histogram(served, page) -> None:
    _, _, ui, _ = served
    page.goto(f"{ui.url}?page=logs")
    page.wait_for_selector(".sw-table-logs .tabulator-row")
    page.locator(".sw-since input").fill("yesterday-ish")
    page.locator(".sw-since input").press("Enter")
    page.wait_for_selector("text=expected a time like")
    wait_for(lambda: page.locator(".sw-table-logs .tabulator-row").count() == 0, 20)
    assert not shown(page, "log lines 1-")


def test_failures_say_failed_for_an_exception_and_never_leave_a_reason_empty(served, page) -> None:
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=failures&run={run_id}&size=100")
    page.wait_for_selector(".sw-table-failures .tabulator-row")
    wait_for(lambda: _pager_total(page), 20)
    outcomes = _cells(page, "failures", "outcome")
    samples = page.locator(".sw-table-failures .tabulator-cell[tabulator-field='case']").all_inner_texts()
    assert dict(zip(samples, outcomes, strict=True))["frame_047"] == "failed"  # a ValueError: not "crashed"
    # its kind says what it raised, not its outcome again ("failed failed")
    assert dict(zip(samples, _cells(page, "failures", "error kinds"), strict=True))["frame_047"] == "raised ValueError"
    assert "crashed" not in outcomes
    reasons = _cells(page, "failures", "reason")
    assert all(reason.strip() for reason in reasons)
    # metrics spelled as every other part of the dashboard spells them ("mIoU 0.61 below 0.75")
    assert any(reason.startswith("mIoU ") for reason in reasons), reasons
    assert not [reason for reason in reasons if re.match(r"(miou|f1) ", reason)]
    kinds = ", ".join(_cells(page, "failures", "error kinds"))
    assert "mask mismatch" in kinds and "_" not in kinds  # spelled as the Accuracy page spells them
    _choose(page, "Error kind", "mask mismatch")
    page.wait_for_url(re.compile("kind=mask_mismatch"))


# The contrast of a link's text with the first opaque background behind it (across shadow roots).
LINK_CONTRAST = """a => {
  const rgb = s => s.match(/[\\d.]+/g).map(Number).map((v, i) => s.startsWith("color(") && i < 3 ? v * 255 : v);
  const opaque = c => c && !(rgb(c).length === 4 && rgb(c)[3] === 0);
  let el = a, behind = "rgb(255, 255, 255)";
  while (el) {
    const colour = getComputedStyle(el).backgroundColor;
    if (opaque(colour)) { behind = colour; break; }
    el = el.parentElement || (el.getRootNode() instanceof ShadowRoot ? el.getRootNode().host : null);
  }
  const luminance = c => {
    const [r, g, b] = rgb(c).slice(0, 3).map(v => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const [high, low] = [luminance(getComputedStyle(a).color), luminance(behind)].sort((x, y) => y - x);
  return (high + 0.05) / (low + 0.05);
}"""


@pytest.mark.parametrize("theme", ["default", "dark"])
def test_every_page_s_links_read_in_both_themes(served, page, theme) -> None:
    """WCAG's 4.5:1 for text: the dark theme once drew the sidebar's links navy on near-black."""
    _, _, ui, run_id = served
    for view in [
        "live",
        "runs",
        "performance",
        "logs",
        "accuracy",
        "failures",
        f"run&run={run_id}",
        f"case&run={run_id}&stage=segmentation&sample=frame_000",
    ]:
        page.goto(f"{ui.url}?page={view}&theme={theme}")
        page.wait_for_selector("a[href^='?page=failures']")
        page.wait_for_timeout(500)  # the tables' links drawn
        links = page.locator("a[href^='?page=']")
        contrasts = [links.nth(i).evaluate(LINK_CONTRAST) for i in range(min(links.count(), 30))]
        assert min(contrasts) >= 4.5, (view, theme, contrasts)


# Each cell of a table whose text is cut (an ellipsis, or hidden past its edge) and that holds no
# other way to read it (its whole text in a title, on hover): "column: text" for each.
CUT_CELLS = """table => [...table.querySelectorAll('.tabulator-cell, .tabulator-col-title')]
  .filter(cell => cell.innerText.trim() && cell.scrollWidth > cell.clientWidth + 1)  // text, and cut
  .filter(cell => ![cell, ...cell.querySelectorAll('[title]')].some(e => e.title.includes(cell.innerText.trim())))
  .map(cell => (cell.getAttribute('tabulator-field') || 'heading') + ': ' + cell.innerText)"""

TABLES = {  # a page's table, the view that shows it
    "runs": "runs",
    "logs": "logs",
    "window-stats": "performance&window=30d",
    "failures": "failures",
    "stages": "run&run={run}",
    "executions": "run&run={run}",
}


@pytest.mark.parametrize("theme", ["default", "dark"])
@pytest.mark.parametrize("width", [1280, 1440])
@pytest.mark.parametrize("table", list(TABLES))
def test_the_tables_fit_the_page_and_cut_nothing(served, page, table, width, theme) -> None:
    """At a laptop's 1,280 px and at 1,440, in both themes: each table within the page (its last
    column in view, nothing to scroll sideways) and no cell cut without its full text on hover
    (the Runs table's error, the Logs table's logger and run, Performance's and the Run page's
    exemplars were cut)."""
    _, _, ui, run_id = served
    page.set_viewport_size({"width": width, "height": 1000})
    page.goto(f"{ui.url}?page={TABLES[table].format(run=run_id)}&theme={theme}")
    rows = page.locator(f".sw-table-{table} .tabulator-row")
    rows.first.wait_for()
    page.wait_for_timeout(500)  # the columns laid out
    last = rows.first.locator(".tabulator-cell").last
    box = last.bounding_box()
    assert box["x"] + box["width"] <= width  # the last column in view
    holder = page.locator(f".sw-table-{table} .tabulator-tableholder").first
    assert holder.evaluate("h => h.scrollWidth <= h.clientWidth + 1")  # nothing to scroll sideways
    assert page.locator(f".sw-table-{table} .tabulator").first.evaluate(CUT_CELLS) == []


# How many lines a cell's text is laid out on (the tops of its text's line boxes).
LINES_OF = """cell => {
  const tops = new Set();
  for (const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT); walker.nextNode(); ) {
    const range = document.createRange();
    range.selectNodeContents(walker.currentNode);
    for (const box of range.getClientRects()) tops.add(Math.round(box.top));
  }
  return tops.size;
}"""


@pytest.mark.parametrize(
    ("table", "column"), [("runs", "failed stage"), ("stages", "stage"), ("window-stats", "stage")]
)
def test_the_demo_s_stage_names_are_never_broken_at_1280_px(served, page, table, column) -> None:
    """lidar_segmentation read "lidar_segmentatio / n" and preprocessing "preprocessin / g" in
    columns a little too narrow (a name that cannot fit still wraps, as the fit test wants)."""
    _, _, ui, run_id = served
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.goto(f"{ui.url}?page={TABLES[table].format(run=run_id)}")
    cells = page.locator(f".sw-table-{table} .tabulator-cell[tabulator-field='{column}']")
    cells.first.wait_for()
    page.wait_for_timeout(500)  # the columns laid out
    lines = {cells.nth(i).inner_text(): cells.nth(i).evaluate(LINES_OF) for i in range(cells.count())}
    assert {"preprocessing", "lidar_segmentation"} & lines.keys(), lines
    assert all(count <= 1 for count in lines.values()), lines


def test_a_failed_sample_s_case_shows_its_input_and_traceback_and_pictures_name_their_classes(served, page) -> None:
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=case&run={run_id}&stage=preprocessing&sample=frame_047")
    page.wait_for_selector("text=datasets/demo/images/frame_047.png")  # the input, on the case itself
    page.get_by_text("Traceback").first.click()
    page.wait_for_selector("text=Traceback (most recent call last)")
    assert shown(page, "raise ValueError")
    assert shown(page, "error kinds raised ValueError")  # as the Failures page says it, not "failed" again
    page.goto(f"{ui.url}?page=case&run={run_id}&stage=segmentation&sample=frame_000")
    legend = page.locator(".sw-class-legend").first
    legend.wait_for()
    assert all(name in legend.inner_text() for name in ("background", "car", "pedestrian"))
    page.goto(f"{ui.url}?page=case&run={run_id}&stage=lidar_segmentation&sample=frame_000")
    page.wait_for_selector(".sw-class-legend")
    texts = page.locator(".sw-class-legend").all_inner_texts()
    assert len(texts) == 2 and all("ground" in t and "car" in t for t in texts)  # from above, and in 3D


def test_accuracy_s_error_kinds_say_how_many_samples_their_link_lists(served, page) -> None:
    """ "missed 35 → list them" opened 19 cases: 35 boxes in 19 samples. The count says boxes,
    the link says how many samples it lists, and the Failures page lists that many."""
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=accuracy&run={run_id}")
    page.wait_for_selector(".sw-table-accuracy-kinds .tabulator-row")
    kinds = _cells(page, "accuracy-kinds", "error kind")
    counts = _cells(page, "accuracy-kinds", "count")
    links = _cells(page, "accuracy-kinds", "cases")
    missed = kinds.index("missed")
    assert re.fullmatch(r"\d+ box(es)?", counts[missed]), counts
    listed = int(re.fullmatch(r"list the (\d+) samples?", links[missed]).group(1))
    page.locator(".sw-table-accuracy-kinds a").nth(missed).click()
    page.wait_for_url(re.compile("kind=missed"))
    assert wait_for(lambda: _pager_total(page), 30) == listed


def test_a_chosen_output_opens_where_one_looks_and_large_enough_to_see(served, page) -> None:
    """A thumbnail's output once opened 2,000 px below, at its native 160x120, out of sight."""
    _, _, ui, run_id = served
    overlay = f"runs/{run_id}/stages/postprocessing/frame_000_overlay.png"
    page.goto(f"{ui.url}?page=run&run={run_id}&artifact={overlay}")
    image = page.wait_for_selector(".sw-preview img")
    box = image.bounding_box()
    assert box["y"] < page.viewport_size["height"]  # in view without scrolling
    assert box["width"] >= 480


def test_a_run_that_ends_leaves_live_s_running_list_at_once(served, page) -> None:
    """It stayed among the running as "failed … 0.0 samples/s" for 30 s and more."""
    import stagewatch

    home, _, ui, _ = served
    run = stagewatch.init(pipeline="ends-soon", home=home)
    with run.stage("a", sample_id="s0"):
        pass
    assert run.flush(10)
    page.goto(f"{ui.url}?page=live")
    page.wait_for_selector(f".sw-table-live-stages, a[title='{run.id}']")
    run.finish()
    assert run.flush(10)
    page.wait_for_selector(f".sw-ended a[title='{run.id}']", timeout=30_000)  # listed as ended, in words
    assert "ok" in page.locator(".sw-ended li", has=page.locator(f"a[title='{run.id}']")).inner_text()
    every = page.locator(f"a[title='{run.id}']").count()
    assert every == page.locator(f".sw-ended a[title='{run.id}']").count() == 1  # no card of it left
    stagewatch.shutdown()


def test_a_huge_log_line_wraps_in_a_row_of_bounded_height(served, page) -> None:
    """A 20,000-character message and a 200-character logger name: cut at the column's edge they
    were unreadable, wrapped whole they made one row 9,000 px tall. The cell holds a few lines and
    scrolls within itself; nothing is cut."""
    import logging

    import stagewatch

    home, _, ui, _ = served
    run = stagewatch.init(pipeline="hostile-log", home=home)
    handler, logger = stagewatch.LoggingHandler(), logging.getLogger("very." * 40 + "long")
    logger.addHandler(handler)
    try:
        with run.stage("loader", sample_id="s" * 128):
            logger.error("x" * 20_000 + " the end")
    finally:
        logger.removeHandler(handler)
    run.finish()
    assert run.flush(10)
    stagewatch.shutdown()
    from stagewatch.daemon.query._readmodels import read_table

    wait_for(lambda: run.id in read_table(home, "logs").column("run_id").to_pylist(), 30)  # stored
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.goto(f"{ui.url}?page=logs&run={run.id}")
    row = page.locator(".sw-table-logs .tabulator-row").first
    row.wait_for()
    page.wait_for_timeout(500)  # the columns laid out
    assert row.evaluate("r => r.offsetHeight") < 400
    message = row.locator(".tabulator-cell[tabulator-field='message']")
    assert message.evaluate("m => m.scrollHeight > m.clientHeight + 1")  # the rest of it scrolls within the cell
    assert page.locator(".sw-table-logs .tabulator").first.evaluate(CUT_CELLS) == []
