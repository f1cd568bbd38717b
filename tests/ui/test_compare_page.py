"""The Compare page in a real Chromium over a home a real daemon filled: two runs of a golden
dataset where the second gets two samples wrong, reached from Runs (two ticked) and from Run
(compare with the previous run); a flip opens both cases side by side, clouds under one camera."""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import stagewatch
from stagewatch.daemon.query._readmodels import read_table
from tests.conftest import DaemonProcess, run_python, sw, wait_for
from tests.groundtruth.builders import write_dataset
from tests.test_compare import judged_run, judged_runs_in_a_damaged_file, slower_run_in_a_damaged_file
from tests.ui.conftest import CHROMIUM
from tests.ui.test_dashboard import LIDAR_GOLDEN, Ui, shown

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
    # Every flip link in the page, hidden ones included: Panel draws an HTML pane hidden until it
    # is laid out (its links then read ""), so this waits for exactly one copy, drawn.
    flips = page.locator(".sw-compare-flips a.sw-flip")
    texts = ["detection on s0001", "detection on s0006"]
    wait_for(lambda: flips.all_inner_texts() == texts, 60)
    assert page.locator(".sw-compare-flips").count() == 1
    assert shown(page, "correct → ")
    assert page.locator(".sw-compare-stages tr.sw-stage-regressed").count() == 0  # nothing timed slower
    # 87.5% -> 62.5% of 8 samples: how it moved and that it is within the samples' noise (it gave the figures alone)
    accuracy = page.locator(".sw-compare-accuracy")
    wait_for(lambda: "fell 25.0 points, not significant (McNemar p=0.5)" in " ".join(accuracy.all_inner_texts()), 30)
    page.set_viewport_size({"width": 1300, "height": 700})  # the side-by-side opens below the fold
    flips.nth(1).click()
    page.wait_for_url(re.compile("flip=detection%2Fs0006"))
    pictures = page.locator(".sw-compare-side-by-side .sw-case-boxes")
    wait_for(lambda: pictures.count() == 2, 60)  # A's case and B's, each drawn as the Case page draws it
    opened = page.locator(".sw-compare-side-by-side")  # scrolled to: the page stayed at its top before
    wait_for(lambda: 0 <= opened.bounding_box()["y"] < 300, 20)
    wait_for(lambda: flips.all_inner_texts() == texts, 60)  # the page switched in place: still one copy
    assert page.locator(".sw-compare-flips").count() == 1
    boxes = [p.bounding_box() for p in pictures.all()]
    assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"] + 1  # side by side
    assert shown(page, "detection on s0006: correct") and shown(page, "detection on s0006: wrong")


def test_rows_left_out_for_a_damaged_file_leave_the_comparison_not_judged(daemon: DaemonProcess, page) -> None:
    """The page says what `compare` says: not judged, the file named (it said "Regressed" or "No
    regression." over the rows it could read)."""
    first, slower, holding = slower_run_in_a_damaged_file(daemon)
    ui = Ui(daemon.home)
    try:
        page.goto(f"{ui.url}?page=compare&a={first}&b={slower}")
        page.locator(".sw-compare-verdict").wait_for()
        assert wait_for(lambda: shown(page, "Not judged: rows were left out for 1 damaged data file"), 20)
        assert not shown(page, "No regression.") and not shown(page, "Regressed:")
        assert shown(page, Path(holding).name)
    finally:
        ui.stop()


def test_flips_over_verdicts_a_damaged_file_left_out_are_not_listed(daemon: DaemonProcess, page) -> None:
    """B's verdicts in a damaged file: the Flips section says they are not judged and names the
    file (it listed every sample of B as flipped from A's verdict to "ok")."""
    before, after, holding = judged_runs_in_a_damaged_file(daemon)
    ui = Ui(daemon.home)
    try:
        page.goto(f"{ui.url}?page=compare&a={before}&b={after}")
        said = page.locator(".sw-compare-flips-not-judged")
        assert wait_for(lambda: said.get_by_text("Not judged: rows were left out").count() > 0, 60)
        assert said.get_by_text(Path(holding).name).count() > 0 and said.get_by_text("stagewatch rebuild").count() > 0
        assert page.locator("a.sw-flip").count() == 0 and page.locator(".sw-compare-flips").count() == 0
    finally:
        ui.stop()


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


def labelled_run(home: Path, dataset: Path, labels: np.ndarray) -> str:
    """One run of the lidar golden dataset: its registration stage labels scan_000's points."""
    run = stagewatch.init(pipeline="lidar", home=home, dataset=dataset)
    with run.stage("registration", sample_id="scan_000") as stage:
        stage.result("scan_000", labels)
    run.finish()
    assert run.flush(10)
    stagewatch.shutdown()
    return run.id


def _camera(frame) -> dict | None:
    """A case's 3D views, as its frame holds them: the camera, the left view's eye, the group."""
    return frame.locator("body").evaluate(
        "() => window.views && views.left && views.left.frames > 0 ? "
        "{camera: {...camera}, eye: views.left.eye, group: window.cameraGroup || null} : null"
    )


def _drag(page, frame, side: str) -> None:
    box = frame.locator(f"#{side}").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.3, steps=10)
    page.mouse.up()


def test_a_flip_of_clouds_opens_both_cases_under_one_camera(tmp_path, page) -> None:
    """A turns and B follows, B zooms and A follows: the two cases' 3D views share one camera
    (each case's two views were already locked together)."""
    from stagewatch._saver import write_ply

    home = tmp_path / "home"
    dataset = home / "datasets" / "lidar"
    (dataset / "clouds").mkdir(parents=True)
    rng = np.random.default_rng(4)
    truth = rng.uniform(-20, 20, (3000, 3)).astype(np.float32)
    labels = (truth[:, 2] > 0).astype(np.int32)
    write_ply(dataset / "clouds" / "scan_000.ply", {"points": truth, "label": labels})
    (dataset / "golden.yaml").write_text(LIDAR_GOLDEN)
    mislabelled = np.where(rng.random(len(labels)) < 0.2, 1 - labels, labels).astype(np.int32)
    daemon = DaemonProcess(home).start()
    ui = None
    try:
        before = labelled_run(home, dataset / "golden.yaml", labels)
        after = labelled_run(home, dataset / "golden.yaml", mislabelled)
        wait_for(lambda: read_table(home, "samples").num_rows == 2, 30)
        ui = Ui(home)
        page.goto(f"{ui.url}?page=compare&a={before}&b={after}")
        flips = page.locator(".sw-compare-flips a.sw-flip")
        wait_for(lambda: flips.all_inner_texts() == ["registration on scan_000"], 60)
        flips.first.click()
        page.wait_for_url(re.compile("flip=registration%2Fscan_000"))
        frames = ".sw-compare-side-by-side .sw-cloud-3d iframe"
        wait_for(lambda: page.locator(frames).count() == 2, 60)
        a, b = page.frame_locator(frames).nth(0), page.frame_locator(frames).nth(1)
        first = wait_for(lambda: (x := _camera(a)) and (y := _camera(b)) and x["eye"] == y["eye"] and (x, y), 60)

        a.locator("#left").scroll_into_view_if_needed()
        _drag(page, a, "left")  # A's view turned: B's follow
        turned = wait_for(lambda: (y := _camera(b)) and y["camera"] != first[1]["camera"] and y, 20)
        wait_for(lambda: _camera(a) == _camera(b), 20)
        assert turned["camera"]["yaw"] != -0.9 and _camera(a)["camera"] == turned["camera"]

        box = b.locator("#right").bounding_box()  # B's view zoomed: A's follow
        assert box["x"] + box["width"] <= page.viewport_size["width"]  # both cases fit the page side by side
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        page.mouse.wheel(0, -400)
        zoomed = wait_for(lambda: (x := _camera(a)) and x["camera"]["zoom"] > 1 and x, 20)
        wait_for(lambda: _camera(a) == _camera(b), 20)
        assert zoomed["camera"]["yaw"] == turned["camera"]["yaw"]
        assert first[0]["group"] and first[0]["group"] == first[1]["group"]  # one group: this view's own
    finally:
        if ui is not None:
            ui.stop()
        daemon.stop()


@pytest.fixture(scope="module")
def demo_twice(tmp_path_factory) -> Iterator[tuple[Ui, str, str]]:
    """Two runs of `stagewatch demo`: real camera-sized pictures (boxes on a 640 px input, masks,
    clouds), the cases a flip of a real pipeline opens."""
    home = Path(str(tmp_path_factory.mktemp("compare-demo"))) / "home"
    daemon = DaemonProcess(home).start()
    ui = None
    try:
        for _ in range(2):
            demo = sw("demo", "--home", str(home), "--no-ui", timeout_s=300)
            assert demo.returncode == 0, demo.stderr
        before, after = sorted((home / "runs").iterdir(), key=lambda run: run.stat().st_mtime)
        ui = Ui(home)
        yield ui, before.name, after.name
    finally:
        if ui is not None:
            ui.stop()
        daemon.stop()


# Every element under `root`, into the shadow roots Panel draws inside (a page script's helper).
UNDER = """const under = (root, found = []) => {
    for (const el of root.querySelectorAll('*')) {
      found.push(el);
      if (el.shadowRoot) under(el.shadowRoot, found);
    }
    return found;
  };"""

# Every drawn thing of one side (pictures, 3D views, tables, sliders): where it ends, against
# its side's column and the page. Panel draws inside shadow roots: the walk enters them.
SIDES_OVERFLOW = """() => {
  UNDER
  const sides = under(document).filter((el) => el.classList && el.classList.contains('sw-compare-side'));
  const drawn = 'svg.sw-boxes, img, canvas, iframe, .tabulator, .noUi-target, pre';
  const page = document.documentElement.clientWidth;
  const out = [];
  sides.forEach((side, index) => {
    const box = side.getBoundingClientRect();
    if (box.right > page + 1) out.push(`side ${index} ends at ${Math.round(box.right)} past the page's ${page}`);
    for (const el of under(side.shadowRoot || side, under(side))) {
      const r = el.getBoundingClientRect();
      if (!el.matches(drawn) || r.width === 0) continue;
      const content = r.left + (el.scrollWidth || 0);  // text past its box (a pre's long line) is drawn on
      if (r.left < box.left - 1 || r.right > box.right + 1 || content > box.right + 1) {
        const what = `${el.tagName.toLowerCase()}.${el.className.baseVal ?? el.className}`;
        out.push(`side ${index}: ${what} at ${Math.round(r.left)}-${Math.round(r.right)}, its side ends ${box.right}`);
      }
    }
  });
  return {sides: sides.length, overflow: out};
}""".replace("UNDER", UNDER)


@pytest.mark.parametrize("theme", ["default", "dark"])
def test_a_flips_two_cases_fit_the_page_side_by_side(demo_twice, browser, theme) -> None:
    """Boxes on the demo's 640 px input, masks with their overlays, clouds, a failed stage's
    traceback: each case within its half at 1,280 and 1,920 px (the boxes' picture ran into the
    other case and past the page, the mask overlays' row pushed B's case off the page, a
    traceback's long line ran under the other case)."""
    ui, before, after = demo_twice
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(45_000)
    try:
        for stage, sample, drawn in (
            ("detection", "frame_040", ".sw-case-boxes svg"),
            ("segmentation", "frame_040", ".sw-case-picture img"),
            ("lidar_segmentation", "frame_048", ".sw-cloud-3d iframe"),
            ("preprocessing", "frame_047", "pre"),  # failed in both: the error and its traceback, opened
        ):
            page.set_viewport_size({"width": 1280, "height": 1000})
            query = f"?page=compare&a={before}&b={after}&flip={stage}%2F{sample}&theme={theme}"
            page.goto(ui.url + query)
            pictures = page.locator(f".sw-compare-side-by-side {drawn}")
            if stage == "preprocessing":
                tracebacks = page.get_by_text("Traceback", exact=True)
                wait_for(lambda tracebacks=tracebacks: tracebacks.count() == 2, 60)
                for index in range(2):
                    tracebacks.nth(index).click()
            wait_for(lambda pictures=pictures: pictures.count() >= 2, 60)  # both cases drawn, then laid out
            wait_for(lambda pictures=pictures: all((b := p.bounding_box()) and b["width"] > 0 for p in pictures.all()))
            for width in (1280, 1920):
                page.set_viewport_size({"width": width, "height": 1000})
                measured = wait_for(lambda: (m := page.evaluate(SIDES_OVERFLOW))["sides"] == 2 and m, 20)
                assert measured["overflow"] == [], (stage, width, measured["overflow"])
                assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrollbar
    finally:
        context.close()


def _called_out_beyond(page) -> str:
    """The threshold the page compared at, as it says it ("larger than 5%")."""
    # (a pane not laid out yet reads "": Panel draws it hidden first)
    said = [text for text in page.get_by_text(re.compile("and larger than")).all_inner_texts() if text]
    return said[0].split("and larger than", 1)[1].split()[0] if said else ""


def test_a_links_threshold_of_0_is_used_and_an_invalid_one_is_said(served, page) -> None:
    """threshold=0 calls out every significant change (it was refused as no preset, and 5% used);
    a negative, textual or infinite one is said on the page, why, and the default used."""
    ui, before, after = served
    for given, shown_as in (("0", "0%"), ("0.03", "3%"), ("12.5%25", "12.5%")):
        page.goto(f"{ui.url}?page=compare&a={before}&b={after}&threshold={given}")
        wait_for(lambda: _called_out_beyond(page), 60)
        assert _called_out_beyond(page) == shown_as, given
        assert not shown(page, "Ignored from the link")
        assert f"threshold={given}" in page.evaluate("location.search")  # the URL still says it
    for given in ("-1", "abc", "1e999", "nan", "5"):
        page.goto(f"{ui.url}?page=compare&a={before}&b={after}&threshold={given}")
        wait_for(lambda: _called_out_beyond(page), 60)
        assert _called_out_beyond(page) == "5%", given
        warning = page.get_by_text(re.compile("Ignored from the link"))
        assert f"threshold={given}" in warning.inner_text() and "expected a share" in warning.inner_text()
        assert not shown(page, "Traceback")


def _fits(locator) -> bool:
    """The element's text within its box (a long word that does not wrap scrolls past it)."""
    return locator.count() > 0 and locator.first.evaluate("el => el.scrollWidth <= el.clientWidth + 1")


def _open_flip_in_neither_run(page, comparison: str, sample: str) -> None:
    page.goto(f"{comparison}&flip=detection%2F{urllib.parse.quote(sample)}")
    heading = page.get_by_text(re.compile(", side by side$"))
    wait_for(lambda: heading.count() == 1 and heading.inner_text(), 60)  # laid out: a hidden pane reads ""
    assert heading.inner_text().startswith(f"detection on {sample[:1000]}")
    missing = page.get_by_text(re.compile("^No case of detection on"))
    wait_for(lambda: missing.count() == 2, 30)  # in neither run
    wait_for(lambda: _fits(heading) and _fits(missing.nth(0)) and _fits(missing.nth(1)), 10)


def test_a_links_odd_values_are_said_as_given_within_the_page(served, page) -> None:
    """A 5,000-character run id and sample wrap within the page (they ran past it in one line);
    HTML in a flip's sample reads as it is in the side by side's heading (it read '&lt;img')
    and never runs."""
    ui, before, after = served
    page.goto(f"{ui.url}?page=compare&a={'a' * 5000}&b={after}")
    unknown = page.get_by_text(re.compile("no run with id 'aaaa"))
    wait_for(lambda: unknown.count() == 1, 60)
    wait_for(lambda: _fits(unknown), 10)
    page.goto(f"{ui.url}?page=compare&a=last:{'9' * 5000}&b={after}")  # past int()'s 4,300 digits: not a crash
    wait_for(lambda: _fits(page.get_by_text(re.compile("^expected last:N with N between 1 and 1000"))), 60)
    page.goto(f"{ui.url}?page=compare&a={'9' * 5000}d&b={after}")  # a window longer than the calendar
    wait_for(lambda: _fits(page.get_by_text(re.compile("the runs of golden in the last 9999"))), 60)
    for sample in ("<img src=x onerror=window.__pwned=1>", "s" * 5000):
        _open_flip_in_neither_run(page, f"{ui.url}?page=compare&a={before}&b={after}", sample)
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]


def test_performance_does_not_compare_a_run_with_itself(served, page) -> None:
    """As the Compare page and `stagewatch compare` say: the same run twice is no comparison (the
    Performance page showed its table of no change under "compare two runs")."""
    ui, _before, after = served
    page.goto(f"{ui.url}?page=performance&a={after[:8]}&b={after}")
    wait_for(lambda: shown(page, f"the baseline and the run compared are the same run ({after[:8]})"), 60)
    assert page.locator(".sw-compare-stages").count() == 0


def test_performance_compare_fields_are_in_the_url_and_a_pasted_url_opens_them(served, browser, page) -> None:
    """The baseline and run typed on the Performance page go to the URL (as its other filters);
    the URL opened in another tab shows the same comparison."""
    ui, before, after = served
    page.goto(f"{ui.url}?page=performance")
    run, baseline = page.get_by_placeholder("run id or prefix"), page.get_by_placeholder(re.compile("^run id, last:20"))
    run.fill(after[:8])
    run.press("Enter")
    page.wait_for_url(re.compile(f"b={after[:8]}"))  # (page.url moves only inside Playwright's calls)
    baseline.fill(before[:8])
    baseline.press("Enter")
    page.wait_for_url(re.compile(f"a={before[:8]}"))
    wait_for(lambda: page.locator("a", has_text="open in Compare").count() == 1, 60)
    pasted = browser.new_page()
    try:
        pasted.goto(page.url)
        wait_for(lambda: pasted.locator("a", has_text="open in Compare").count() == 1, 60)
        fields = (
            pasted.get_by_placeholder(re.compile("^run id, last:20")),
            pasted.get_by_placeholder("run id or prefix"),
        )
        assert [field.input_value() for field in fields] == [before[:8], after[:8]]
        opened = pasted.locator("a", has_text="open in Compare").get_attribute("href")
        assert opened == f"?page=compare&a={before[:8]}&b={after}"
    finally:
        pasted.close()


# Every element of the page drawn (Panel draws inside shadow roots: the walk enters them) that ends
# past the page, or whose text runs past its own box (a long word that does not wrap).
OVERFLOWING = """() => {
  UNDER
  const page = document.documentElement.clientWidth;
  const out = [];
  for (const el of under(document)) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    const spills = el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX === 'visible';
    if (r.right > page + 1 || spills) {
      const what = `${el.tagName.toLowerCase()}.${el.className.baseVal ?? el.className}`;
      const where = `${Math.round(r.left)}-${Math.round(r.right)}`;
      const text = (el.innerText || '').slice(0, 30);
      out.push(`${what} at ${where} (its text ${el.scrollWidth} in ${el.clientWidth}): ${text}`);
    }
  }
  return out;
}""".replace("UNDER", UNDER)
LONG_STAGE = "s" * 80  # no place to break (the stage table ran 14 px past its box)
LONG_SAMPLE = "f" * 100
LONG_ERROR = "E" * 300
LONG_NAMES_RUN = """
import stagewatch
run = stagewatch.init(pipeline="long", home={home!r})
for index in range(6):
    sample = {sample!r} if index == 0 else f"f{{index}}"
    try:
        with run.stage({stage!r}, sample_id=sample):
            if {fail} and index == 0:
                raise RuntimeError({error!r})
    except RuntimeError:
        pass
run.finish()
assert run.flush(10)
print(run.id)
"""


def _overflowing_once_laid_out(page, timeout_s: float = 20) -> list[str]:
    """OVERFLOWING once it is empty, or as it still is after `timeout_s` (Panel lays the panes out
    one after another: a pane drawn a moment ago may not have its width yet)."""
    deadline = time.monotonic() + timeout_s
    while (found := page.evaluate(OVERFLOWING)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def test_long_names_and_an_unbroken_error_wrap_within_the_page_at_1280(daemon: DaemonProcess, browser) -> None:
    """An 80-character stage name, a 100-character sample id and a 300-character error with no
    space, at 1,280 px: the stage table, the flip list, B's case heading and its error card keep
    within their boxes and the page (each ran past its box: the table by its stage cell, the
    others by the whole word)."""
    runs = []
    for fail in (False, True):
        code = LONG_NAMES_RUN.format(
            home=str(daemon.home), stage=LONG_STAGE, sample=LONG_SAMPLE, error=LONG_ERROR, fail=fail
        )
        done = run_python(code)
        assert done.returncode == 0, done.stderr
        runs.append(done.stdout.split()[-1])
    wait_for(lambda: set(runs) <= set(read_table(daemon.home, "runs")["run_id"].to_pylist()), 30)
    ui = Ui(daemon.home)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(45_000)
    try:
        flip = urllib.parse.quote(f"{LONG_STAGE}/{LONG_SAMPLE}", safe="")
        page.goto(f"{ui.url}?page=compare&a={runs[0]}&b={runs[1]}&flip={flip}")
        flips = page.locator(".sw-compare-flips a.sw-flip")
        wait_for(lambda: flips.all_inner_texts() == [f"{LONG_STAGE} on {LONG_SAMPLE}"], 60)
        error = page.get_by_text(LONG_ERROR, exact=True)
        wait_for(lambda: error.count() == 1 and error.bounding_box() and error.bounding_box()["width"] > 0, 60)
        headings = page.locator(".sw-compare-side h3")
        wait_for(lambda: headings.count() == 2 and all(h.bounding_box() for h in headings.all()), 60)
        assert _overflowing_once_laid_out(page) == []
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    finally:
        context.close()
        ui.stop()


def test_a_sample_retried_ok_in_b_opens_as_ok_not_as_its_first_failure(daemon: DaemonProcess, page) -> None:
    """A's detection failed on f1; B's failed on f1 too, then its retry ended ok. The flip says
    "failed → ok" (B's last execution), and B's side of it says so: it drew B's first failure as
    B's case, against the flip's word."""
    import contextlib

    runs = []
    for retried in (False, True):
        with stagewatch.init(pipeline="retries", home=daemon.home) as run:
            with contextlib.suppress(RuntimeError), run.stage("detection", sample_id="f1"):
                raise RuntimeError(f"the first try failed ({'B' if retried else 'A'})")
            if retried:
                with run.stage("detection", sample_id="f1"):
                    pass
        daemon.audit(run.id)
        runs.append(run.id)
    ui = Ui(daemon.home)
    try:
        page.goto(f"{ui.url}?page=compare&a={runs[0]}&b={runs[1]}&flip=detection%2Ff1")
        wait_for(lambda: shown(page, "failed → ok"), 60)  # the flip: B's last execution
        b_side = page.get_by_text(re.compile("^No case of detection on f1 ended ok in"))
        wait_for(lambda: b_side.count() == 1 and runs[1] in b_side.inner_text(), 60)
        assert shown(page, "the first try failed (A)") and not shown(page, "the first try failed (B)")
    finally:
        ui.stop()


def test_a_sample_judged_then_failed_in_b_opens_as_its_judgement(daemon: DaemonProcess, page) -> None:
    """A judged detection on s0001 correct; B judged it wrong, then ran it again and that
    execution failed. A judgement stands though a later execution failed (as accuracy.json and
    the failure browser count it): the flip says "correct → wrong" and B's side draws the judged
    wrong case, not the later failure (the failure is in the stage's failure rate)."""
    import contextlib

    from tests.test_compare import detection_prediction

    dataset = write_dataset(daemon.home.parent / "golden", 4)
    runs = []
    for retried in (False, True):
        with stagewatch.init(pipeline="judged-then-failed", home=daemon.home, dataset=dataset) as run:
            with run.stage("detection", sample_id="s0001") as stage:
                stage.result("s0001", detection_prediction(1, {1} if retried else set()))
            if retried:
                with contextlib.suppress(RuntimeError), run.stage("detection", sample_id="s0001"):
                    raise RuntimeError("the second try failed (B)")
        assert run.flush(10)
        daemon.audit(run.id)
        wait_for(lambda r=run.id: r in read_table(daemon.home, "samples")["run_id"].to_pylist(), 30)
        runs.append(run.id)
    ui = Ui(daemon.home)
    try:
        page.goto(f"{ui.url}?page=compare&a={runs[0]}&b={runs[1]}&flip=detection%2Fs0001")
        wait_for(lambda: shown(page, "correct → wrong"), 60)  # the flip: B's judgement
        b_side = page.locator(".sw-compare-side").last.locator("h3")  # the case's heading
        wait_for(lambda: "detection on s0001: wrong" in b_side.all_inner_texts(), 60)
        assert not shown(page, "the second try failed (B)")
    finally:
        ui.stop()


def test_a_pooled_side_draws_the_judgement_its_flip_reads(daemon: DaemonProcess, page) -> None:
    """A is the last 2 runs: the older judged s0001 wrong, the newer ran it ok with no golden set
    (not judged); B judged it correct. Compare's verdicts read A's newest judgement: the flip says
    "wrong → correct". A's side draws that wrong case; it said "ended ok ..., not judged" (the
    newer run's execution) against the flip's word."""
    from tests.test_compare import detection_prediction

    dataset = write_dataset(daemon.home.parent / "golden", 4)
    runs = []
    for golden, wrong in ((dataset, {1}), (None, set()), (dataset, set())):
        with (
            stagewatch.init(pipeline="pooled-flip", home=daemon.home, dataset=golden) as run,
            run.stage("detection", sample_id="s0001") as stage,
        ):
            stage.result("s0001", detection_prediction(1, wrong))
        assert run.flush(10)
        daemon.audit(run.id)
        runs.append(run.id)
    wait_for(lambda: {runs[0], runs[2]} <= set(read_table(daemon.home, "samples")["run_id"].to_pylist()), 30)
    ui = Ui(daemon.home)
    try:
        page.goto(f"{ui.url}?page=compare&a=last:2&b={runs[2]}&flip=detection%2Fs0001")
        wait_for(lambda: shown(page, "wrong → correct"), 60)  # the flip: A's newest judgement
        a_side = page.locator(".sw-compare-side").first.locator("h3")  # the case's heading
        wait_for(lambda: "detection on s0001: wrong" in a_side.all_inner_texts(), 60)
        assert not shown(page, re.compile("not judged"))
    finally:
        ui.stop()


def test_a_pooled_side_whose_older_judgement_was_run_again_and_failed_draws_that_judgement(
    daemon: DaemonProcess, page
) -> None:
    """A is the last 2 runs: the older judged s0001 wrong and then ran it again, and that
    execution failed; the newer ran it ok with no golden set. B judged it correct. A judgement
    stands though a later execution failed (as accuracy.json counts it): A's verdict is the older
    run's `wrong`, the flip "wrong → correct", A's side draws that judged case (not the failure,
    not the newer run's unjudged one), and the page's accuracy is compare's (75.0% → 100.0%)."""
    import contextlib

    from tests.test_compare import compared, detection_prediction

    dataset = write_dataset(daemon.home.parent / "golden", 4)
    runs = []
    for golden, samples, wrong, rerun in (
        (dataset, range(4), {1}, True),
        (None, [1], set(), False),
        (dataset, range(4), set(), False),
    ):
        with stagewatch.init(pipeline="pooled-failed", home=daemon.home, dataset=golden) as run:
            for index in samples:
                with run.stage("detection", sample_id=f"s{index:04d}") as stage:
                    stage.result(f"s{index:04d}", detection_prediction(index, wrong))
            if rerun:
                with contextlib.suppress(RuntimeError), run.stage("detection", sample_id="s0001"):
                    raise RuntimeError("the second try failed (A)")
        assert run.flush(10)
        daemon.audit(run.id)
        runs.append(run.id)
    wait_for(lambda: {runs[0], runs[2]} <= set(read_table(daemon.home, "samples")["run_id"].to_pylist()), 30)
    document = compared(daemon.home, runs[2], "--baseline", "last:2")
    (accuracy,) = document["accuracy"]
    assert (accuracy["a"], accuracy["b"]) == (0.75, 1.0) and accuracy["judged"] == {"a": 4, "b": 4}
    assert [(f["sample_id"], f["from"], f["to"]) for f in document["flips"]] == [("s0001", "wrong", "correct")]
    ui = Ui(daemon.home)
    try:
        page.goto(f"{ui.url}?page=compare&a=last:2&b={runs[2]}&flip=detection%2Fs0001")
        wait_for(lambda: shown(page, "wrong → correct"), 60)
        a_side = page.locator(".sw-compare-side").first.locator("h3")  # the case's heading
        wait_for(lambda: "detection on s0001: wrong" in a_side.all_inner_texts(), 60)
        assert not shown(page, re.compile("not judged")) and not shown(page, "the second try failed")
        table = page.locator(".sw-compare-accuracy")
        wait_for(lambda: "75.0% → 100.0%" in " ".join(table.all_inner_texts()), 30)  # as compare counts
    finally:
        ui.stop()
