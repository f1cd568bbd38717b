"""The dashboard in a real headless Chromium (Playwright, Debian's /usr/bin/chromium), served by
`stagewatch ui` (panel serve) over a home that a real daemon and the demo pipeline filled."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

import stagewatch
from stagewatch.daemon.groundtruth.formats import load_point_attributes, load_point_labels
from stagewatch.daemon.query._readmodels import read_table
from stagewatch.ui._widgets import css_name
from tests.conftest import DaemonProcess, run_pipeline, wait_for
from tests.ui.conftest import CHROMIUM

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def shown(page, text: str) -> bool:
    """Is `text` on the page? (Panel renders inside shadow roots, which get_by_text pierces.)"""
    return page.get_by_text(text).count() > 0


def answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=5).status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Ui:
    def __init__(self, home: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stagewatch.cli", "ui", "--home", str(home), "--port", str(self.port), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}/app"
        try:
            wait_for(self._answers, 120, 0.2)
        except BaseException:
            self.stop()  # a server that did not answer in time is not left running
            raise

    def _answers(self) -> bool:
        """The server answers "/" (its redirect to the app, or a login's): ready. Not following the
        redirect: rendering a page can take longer than a probe's timeout on a loaded machine."""
        assert self.process.poll() is None, "stagewatch ui exited"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/")
            return connection.getresponse().status > 0
        except OSError:
            return False
        finally:
            connection.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Path, DaemonProcess, Ui, str]]:
    home = Path(str(tmp_path_factory.mktemp("ui"))) / "home"
    # A disk threshold nobody meets: the daemon reports a warning, the page must show it.
    daemon = DaemonProcess(home, env={"STAGEWATCH_DISK_WARN_FREE_BYTES": str(2**60)}).start()
    demo = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "demo", "--home", str(home), "--frames", "50", "--no-ui"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stderr
    (run_id,) = [p.name for p in (home / "runs").iterdir()]
    _other_runs(home)
    ui = None
    try:
        ui = Ui(home)  # inside: a UI that never answers still leaves no daemon behind
        yield home, daemon, ui, run_id
    finally:
        if ui is not None:
            ui.stop()
        daemon.stop()


HOSTILE = "<img src=x onerror=window.__pwned=1>"


def _other_runs(home: Path) -> None:
    """Two more runs beside the demo's: one of another pipeline that went well, one that failed at detection."""
    for pipeline, failing in (("batch", None), ("batch", "detection")):
        run = stagewatch.init(pipeline=pipeline, home=home)
        for frame in range(3):
            for stage in ("preprocessing", "detection"):
                try:
                    with run.stage(stage, sample_id=f"f{frame}"):
                        if stage == failing and frame == 2:
                            # markup in an error must show as text, never run (see the runs test)
                            raise RuntimeError(f"detector weights missing {HOSTILE}")
                except RuntimeError:
                    pass
        run.finish(status="failed" if failing else "ok")
        assert run.flush(10)
    stagewatch.shutdown()


def _runs_shown(page) -> list[str]:
    """The run ids in the runs table, as the links' titles say them."""
    return page.locator(".sw-table-runs a").evaluate_all("links => links.map(link => link.title)")


def _choose(page, label: str, option: str) -> None:
    """Pick `option` (as the menu shows it) in the menu labelled `label`."""
    page.locator(f".{css_name(label)} select").select_option(label=option)


def _pager_total(page) -> int | None:
    """How many cases the pager says match (None while it says nothing yet)."""
    label = page.locator(".sw-count p").first.inner_text()  # inside the pane's shadow root
    if "no rows" in label:
        return 0
    found = re.search(r" of ([\d,]+)", label)
    return int(found.group(1).replace(",", "")) if found else None


def test_the_runs_table_narrows_to_the_detection_failures_and_the_url_keeps_it(served, page) -> None:
    _home, _, ui, run_id = served
    page.goto(f"{ui.url}?page=runs")
    page.wait_for_selector(f".sw-table-runs a[title='{run_id}']")
    assert len(_runs_shown(page)) == 3
    _choose(page, "Failed stage", "detection")  # click one
    page.wait_for_url(re.compile("failed_stage=detection"))  # (page.url moves only inside Playwright's calls)
    _choose(page, "When", "last 7 days")  # click two
    wait_for(lambda: len(_runs_shown(page)) == 1, 20)
    (failed,) = _runs_shown(page)
    assert failed != run_id and shown(page, "detector weights missing")
    assert shown(page, HOSTILE) and page.evaluate("() => window.__pwned") is None  # text, not markup
    page.wait_for_url(re.compile("failed_stage=detection.*when=7d"))
    page.reload()  # the URL restores the view
    page.wait_for_selector(f".sw-table-runs a[title='{failed}']")
    assert _runs_shown(page) == [failed]
    page.goto(f"{ui.url}?page=runs&status=ok")
    page.wait_for_selector("text=runs 1-1 of 1")
    page.goto(f"{ui.url}?page=run&run={failed}")  # its error card and traceback: text too
    page.wait_for_selector("text=Traceback")
    page.get_by_text("Traceback").first.click()
    assert shown(page, "detector weights missing") and page.evaluate("() => window.__pwned") is None


def test_a_run_its_stages_error_traceback_accuracy_and_a_saved_image(served, page) -> None:
    home, _, ui, run_id = served
    page.goto(f"{ui.url}?page=runs")
    page.locator(f".sw-table-runs a[title='{run_id}']").click()
    page.wait_for_selector("text=Accuracy against")
    assert f"run={run_id}" in page.url  # the page state is in the URL
    cells = page.locator(".sw-table-stages .tabulator-cell[tabulator-field='stage']").all_inner_texts()
    stages = ["preprocessing", "detection", "segmentation", "lidar_segmentation", "postprocessing"]  # run order
    assert cells == [*stages, "(outside stages)"]  # then the time no stage covers
    medians = page.locator(".sw-table-stages .tabulator-cell[tabulator-field='median']").all_inner_texts()
    assert all(re.fullmatch(r"\d+(\.\d{1,3})? (ms|s)", text) for text in medians), medians
    assert shown(page, "no GPU readings on")  # the reason, not a blank
    assert shown(page, "datasets/demo/images/frame_047.png")  # the failing frame's input: the file it is
    assert shown(page, "Bottleneck:")
    page.locator(".sw-chart-durations canvas").first.wait_for()
    axis = """() => Array.from(Bokeh.documents[0].all_models)
        .filter(model => model.axis_label === "ms since the run's first stage").map(axis => axis.formatter.format)"""
    assert page.evaluate(axis) == ["0,0"]  # the durations chart's time axis in plain ms (it read 5.000e+4)
    page.get_by_text("Traceback").first.click()
    page.wait_for_selector("text=Traceback (most recent call last)")
    assert shown(page, "raise ValueError")
    assert page.locator(".sw-sample-for-the-waterfall select, select").count() > 0
    _choose(page, "Saved outputs of", "postprocessing (49 executions)")  # outputs by stage, a page at a time
    overlay = f"runs/{run_id}/stages/postprocessing/frame_000_overlay.png"
    page.locator("a[href*='frame_000_overlay.png'] img").first.click()  # a thumbnail opens the image
    image = page.wait_for_selector(".sw-preview img[src^='data:image/png']")
    assert image.bounding_box()["width"] > 100
    assert "artifact=runs" in page.url
    other = overlay.replace("frame_000", "frame_001")
    page.goto(f"{ui.url}?page=run&run={run_id}&artifact={overlay}&compare={other}")  # two outputs, their difference
    page.wait_for_selector(".sw-difference img[src^='data:image/png']")
    first, second = (np.asarray(Image.open(home / p)).astype(float) / 255 for p in (overlay, other))
    expected = np.abs(first - second).mean(axis=2).mean()
    assert shown(page, f"mean |difference| {expected:.4f}")
    mask = f"runs/{run_id}/stages/segmentation/frame_000.pred.npy"
    page.goto(f"{ui.url}?page=run&run={run_id}&artifact={overlay}&compare={mask}")
    page.wait_for_selector("text=is not a PNG image")


SLOW_PIPELINE = """
import sys, time, stagewatch
run = stagewatch.init(pipeline="slow-live", home=sys.argv[1])
print(run.id, flush=True)
deadline = time.monotonic() + float(sys.argv[2])
frame = 0
while time.monotonic() < deadline:
    with run.stage("decode", sample_id=f"f{frame}"):
        time.sleep(0.02)
    with run.stage("infer", sample_id=f"f{frame}"):
        time.sleep(0.05)
    frame += 1
run.finish()
"""


def _done_of(page, stage: str) -> int | None:
    """The Live page's count of `stage`'s executions, as shown."""
    rows = page.locator(".sw-table-live-stages .tabulator-row").evaluate_all(
        """rows => rows.map(row => [row.querySelector("[tabulator-field=stage]")?.innerText,
                                    row.querySelector("[tabulator-field=done]")?.innerText])"""
    )
    done = dict(rows).get(stage)
    return int(done.replace(",", "")) if done else None


def test_live_shows_a_run_in_progress_and_its_counts_move(served, page) -> None:
    home, _, ui, _ = served
    pipeline = subprocess.Popen(
        [sys.executable, "-c", SLOW_PIPELINE, str(home), "20"], stdout=subprocess.PIPE, text=True
    )
    try:
        run_id = pipeline.stdout.readline().strip()
        page.goto(f"{ui.url}?page=live")
        page.wait_for_selector(f".sw-table-live-stages, a[title='{run_id}']")
        first = wait_for(lambda: _done_of(page, "infer"), 20)
        later = wait_for(lambda: (n := _done_of(page, "infer")) and n >= first + 5 and n, 20)  # no reload
        assert later > first
        assert page.locator(f"a[title='{run_id}']").count() == 1 and shown(page, "slow-live")
        assert shown(page, "samples/s") and shown(page, "no GPU readings")
    finally:
        pipeline.kill()
        pipeline.wait(10)


def _chart_sources(page, column: str) -> list[dict]:
    """The data of the Bokeh sources that have `column`, as the browser holds them."""
    return page.evaluate(
        """(column) => {
            const found = [];
            for (const doc of window.Bokeh.documents)
                for (const model of doc.all_models)
                    if (model.data instanceof Object && column in model.data && model.selected !== undefined)
                        found.push(Object.fromEntries(Object.entries(model.data).map(([k, v]) => [k, Array.from(v)])));
            return found;
        }""",
        column,
    )


def test_performance_draws_one_point_per_run_and_stage(served, page) -> None:
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=performance&window=30d")
    page.wait_for_selector("text=Over the window")
    sources = wait_for(lambda: [s["run_id"] for s in _chart_sources(page, "run_id") if s["run_id"]], 30)
    for points in sources:  # a source is one stage's line or dots: one point per run that ran it
        assert len(points) == len(set(points)), points
    runs = {run for points in sources for run in points}
    assert run_id in runs and len(runs) >= 3, runs  # the demo's and the two batch runs (and a live one)
    window = page.locator(".sw-table-window-stats .tabulator-cell[tabulator-field='stage']").all_inner_texts()
    pipelines = page.locator(".sw-table-window-stats .tabulator-cell[tabulator-field='pipeline']").all_inner_texts()
    demo = [stage for stage, pipeline in zip(window, pipelines, strict=True) if pipeline == "perception"]
    stages = ["preprocessing", "detection", "segmentation", "lidar_segmentation", "postprocessing"]
    assert demo == [*stages, "(outside stages)"]  # as `stagewatch stats` prints them
    # A few runs: no regression can be judged yet, and the page says so (it said nothing)
    said = page.locator(".sw-no-regressions >> text=/not judged yet: \\d+ run\\(s\\) in the window/")
    wait_for(lambda: said.count() == 1, 30)


def test_logs_filter_narrows_and_the_download_equals_the_cli_export(served, page) -> None:
    home, _, ui, _ = served
    page.goto(f"{ui.url}?page=logs")
    page.wait_for_selector(".sw-table-logs .tabulator-row")
    _choose(page, "Lowest level", "WARNING")
    page.locator(".sw-search input").fill("glare")
    page.locator(".sw-search input").press("Enter")
    page.wait_for_url(re.compile("level=WARNING.*q=glare"))
    levels = wait_for(
        lambda: (
            (texts := page.locator(".sw-table-logs .tabulator-cell[tabulator-field='level']").all_inner_texts())
            and set(texts) == {"WARNING"}
            and texts
        ),
        20,
    )
    messages = page.locator(".sw-table-logs .tabulator-cell[tabulator-field='message']").all_inner_texts()
    assert all("glare" in m for m in messages) and len(messages) == len(levels)
    with page.expect_download() as download:
        page.get_by_text("Download JSON", exact=True).click()
    downloaded = json.loads(Path(download.value.path()).read_text())
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "stagewatch.cli",
            "export",
            "--home",
            str(home),
            "--level",
            "WARNING",
            "--grep",
            "glare",
            "--table",
            "logs",  # the page downloads the log lines it lists, as `export --table logs` writes them
            "--output",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert downloaded == json.loads(cli.stdout)
    assert len(downloaded["logs"]) == len(messages) > 0
    page.reload()  # the filters come back from the URL
    page.wait_for_selector(".sw-table-logs .tabulator-row")
    assert page.locator(".sw-search input").input_value() == "glare"


def test_artifact_links_cannot_leave_the_home(served, page) -> None:
    home, _, ui, run_id = served
    secret = home.parent / "secret.json"  # valid JSON: a viewer that followed the link would show it
    secret.write_text('{"password": "root:x:0:0 do not show"}')
    evil = home / "runs" / run_id / "stages" / "postprocessing" / "evil.json"
    evil.symlink_to(secret)
    for link, reason in [
        ("runs/../../secret.json", "refused"),
        ("/etc/passwd", "refused"),
        (f"runs/{run_id}/stages/postprocessing/evil.json", "leads outside the home"),
    ]:
        page.goto(f"{ui.url}?artifact={link}")
        page.wait_for_selector(f"text={reason}")
        assert not shown(page, "root:x:0")


def test_new_runs_appear_without_reloading_and_the_disk_warning_shows(served, page) -> None:
    home, _, ui, _ = served
    page.goto(ui.url)
    page.wait_for_selector("text=Disk:")  # the daemon's warning, as a banner
    with stagewatch.init(pipeline="arrives-live", home=home) as run, run.stage("a"):
        pass
    assert run.flush(10)
    page.wait_for_selector(f".sw-table-runs a[title='{run.id}']", timeout=30_000)


def test_the_dashboard_listens_on_the_loopback_only(served) -> None:
    _, _, ui, _ = served
    listening = wait_for(
        lambda: [
            c.laddr for p in _tree(ui.process.pid) for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN
        ],
        20,
    )
    assert listening and all(address.ip in ("127.0.0.1", "::1") for address in listening)


def test_no_page_asks_anything_of_another_host(served, page) -> None:
    """An offline machine (or one whose users must not be tracked) loads every page from the
    dashboard alone: no web font, no CDN (it once asked fonts.googleapis.com on every page)."""
    _, _, ui, run_id = served
    asked: set[str] = set()
    page.on("request", lambda request: asked.add(urllib.parse.urlsplit(request.url).netloc))
    for view in ("live", "runs", "performance", "logs", "accuracy", "failures"):
        page.goto(f"{ui.url}?page={view}")
        page.wait_for_load_state("networkidle")
    page.goto(f"{ui.url}?page=run&run={run_id}")
    page.wait_for_load_state("networkidle")
    own = urllib.parse.urlsplit(ui.url).netloc
    assert asked - {own, ""} == set()  # "": blob: and data: URLs the page makes itself


@pytest.mark.parametrize("theme", ["light", "<b>x</b>"])
def test_a_theme_the_template_lacks_opens_the_default_one(served, page, theme: str) -> None:
    """?theme=light (the word people guess: Panel's is 'default') was a blank page."""
    _, _, ui, _ = served
    page.goto(f"{ui.url}?page=runs&theme={urllib.parse.quote(theme)}")
    page.wait_for_selector(".sw-table-runs .tabulator-row")
    assert page.evaluate("() => getComputedStyle(document.body).backgroundColor") != "rgb(24, 24, 24)"


def _tree(pid: int) -> list[psutil.Process]:
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


def test_exposing_it_needs_basic_auth_and_basic_auth_works(served, browser) -> None:
    home, *_ = served
    refused = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "ui", "--home", str(home), "--address", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--basic-auth" in refused.stderr
    credentials = home.parent / "users.json"
    credentials.write_text(json.dumps({"alice": "correct horse"}))
    os.chmod(credentials, 0o600)
    ui = Ui(home, "--basic-auth", str(credentials))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(45_000)
        page.goto(ui.url)
        page.wait_for_selector("input[name='password']")
        assert not shown(page, "Failed stage")
        page.fill("input[name='username']", "alice")
        page.fill("input[name='password']", "wrong")
        page.click("button[type='submit'], input[type='submit']")
        time.sleep(1)
        assert not shown(page, "Failed stage") and page.locator("input[name='password']").count() == 1
        page.goto(ui.url)
        page.fill("input[name='username']", "alice")
        page.fill("input[name='password']", "correct horse")
        page.click("button[type='submit'], input[type='submit']")
        page.wait_for_selector("text=Failed stage")
    finally:
        context.close()
        ui.stop()


def test_the_demo_serves_the_dashboard_until_stopped(tmp_path: Path) -> None:
    """The README's first command: daemon, demo pipeline, then the dashboard until Ctrl-C/SIGTERM."""
    home, port = tmp_path / "home", free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "stagewatch.cli", "demo", "--home", str(home), "--frames", "50", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not any("dashboard:" in line for line in lines):
            lines.append(demo.stdout.readline())
            assert demo.poll() is None, "".join(lines)
        url = next(line for line in lines if "dashboard:" in line).split()[1]
        assert url.startswith(f"http://127.0.0.1:{port}/app?run=")
        wait_for(lambda: answers(url), 60, 0.5)
        assert (home / "run" / "ingest.sock").exists()  # the daemon keeps running while the page is served
    finally:
        demo.terminate()
        assert demo.wait(60) == 0
    assert not (home / "run" / "ingest.sock").exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_the_dashboard_stops_on_sigterm_after_its_output_reader_left(tmp_path: Path) -> None:
    """`stagewatch ui | head -3`, then SIGTERM (a timeout, systemd): Bokeh printed before it
    stopped its loop, the print raised on the broken pipe, and the server ran on. Unbuffered
    output (PYTHONUNBUFFERED, as container images set it): the print meets the pipe at once."""
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "stagewatch.cli", "ui", "--home", str(tmp_path / "home"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = [ui.stdout.readline() for _ in range(3)]  # as `head -3` reads, then leaves
        assert any("Bokeh app running" in line for line in lines), lines
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/app"), 60, 0.5)  # its loop runs: SIGTERM is handled
        ui.stdout.close()
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(30) is not None
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait(10)


def test_brushing_the_log_histogram_narrows_the_time_range(served, page) -> None:
    _, _, ui, _ = served
    page.goto(f"{ui.url}?page=logs")
    page.wait_for_selector(".sw-table-logs .tabulator-row")
    before = _pager_total(page)
    histogram = page.locator(".sw-chart-histogram canvas").first  # drawn a tick after the table
    histogram.wait_for()
    box = histogram.bounding_box()
    y = box["y"] + box["height"] * 0.4
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.45, y, steps=8)
    page.mouse.up()
    page.wait_for_url(re.compile("since=.*until="))
    wait_for(lambda: 0 < _pager_total(page) < before, 20)


def test_the_failure_browser_narrows_to_missed_detections_and_opens_a_case(served, page) -> None:
    home, _, ui, run_id = served
    samples = read_table(home, "samples", None, None, ["stage", "status", "error_types"]).to_pylist()
    missed = [s for s in samples if s["stage"] == "detection" and "missed" in (s["error_types"] or [])]
    failing = [s for s in samples if s["status"] in ("wrong", "invalid")]
    assert len(missed) > 0
    page.goto(f"{ui.url}?page=failures")
    page.wait_for_selector(".sw-table-failures .tabulator-row")
    assert wait_for(lambda: _pager_total(page)) >= len(failing) + 1  # and frame 47, crashed in preprocessing
    _choose(page, "Stage", "detection")
    page.wait_for_url(re.compile("stage=detection"))
    _choose(page, "Error kind", "missed")
    wait_for(lambda: _pager_total(page) == len(missed), 20)
    page.goto(f"{ui.url}?page=case&run={run_id}&stage=segmentation&sample=frame_000")
    pictures = page.locator(".sw-case-picture img")
    wait_for(lambda: pictures.count() == 5, 30)  # prediction, ground truth, difference; both over the input
    assert all(box["width"] > 100 for box in (p.bounding_box() for p in pictures.all()))
    for text in ("true positive", "false positive", "false negative", "pedestrian"):
        assert shown(page, text), text


def test_a_detection_case_draws_truth_and_predictions_on_the_input_by_outcome(served, page) -> None:
    home, _, ui, run_id = served
    columns = ["stage", "sample_id", "status", "errors", "classes", "confidence"]
    samples = read_table(home, "samples", None, None, columns).to_pylist()
    case = next(s for s in samples if s["stage"] == "detection" and "missed" in json.loads(s["errors"] or "{}"))
    sample = case["sample_id"]
    # What to expect, from the dataset's COCO file and the boxes the pipeline saved, not from the judge.
    dataset = home / "datasets" / "demo"
    coco = json.loads((dataset / "annotations.json").read_text())
    image_id = next(i["id"] for i in coco["images"] if i["file_name"] == f"{sample}.png")
    truth = [a for a in coco["annotations"] if a["image_id"] == image_id]
    saved = json.loads(next((home / "runs" / run_id).rglob(f"postprocessing/{sample}_boxes.json")).read_text())
    confident = [s for s in saved["scores"] if s >= 0.3]  # the golden file's score_threshold
    page.goto(f"{ui.url}?page=case&run={run_id}&stage=detection&sample={sample}")
    boxes = page.locator(".sw-case-boxes .sw-box")
    wait_for(lambda: boxes.count() == len(truth) + len(confident), 30)
    assert page.locator(".sw-case-boxes svg image").count() == 1  # drawn on the camera frame
    assert page.locator(".sw-box-missed").count() == json.loads(case["errors"])["missed"]
    hover = page.locator(".sw-box-missed title").first.text_content()
    assert hover.startswith("ground truth: ") and hover.split()[2] in {"car", "pedestrian"}
    page.get_by_role("button", name="ground truth").click()  # that layer off: predictions only
    wait_for(lambda: boxes.count() == len(confident), 20)
    assert page.locator(".sw-case-boxes .sw-box[stroke-dasharray]").count() == 0
    # The failure browser narrows by class and by confidence as the samples table says.
    failing = [s for s in samples if s["status"] in ("wrong", "invalid")]
    pedestrian = [s for s in failing if "pedestrian" in (s["classes"] or [])]
    sure = [s for s in pedestrian if s["confidence"] is not None and s["confidence"] >= 0.9]
    assert 0 < len(sure) < len(pedestrian) < len(failing)
    page.goto(f"{ui.url}?page=failures&class=pedestrian")
    wait_for(lambda: _pager_total(page) == len(pedestrian), 30)
    page.goto(f"{ui.url}?page=failures&class=pedestrian&confidence=0.9,1")
    wait_for(lambda: _pager_total(page) == len(sure), 30)


def test_a_run_leads_to_its_failure_cases_stage_by_stage(served, page) -> None:
    home, _, ui, run_id = served
    samples = read_table(home, "samples", None, None, ["run_id", "stage", "status"]).to_pylist()
    wrong = [s for s in samples if s["run_id"] == run_id and s["stage"] == "segmentation" and s["status"] == "wrong"]
    page.goto(f"{ui.url}?page=run&run={run_id}")
    page.locator(".sw-run-cases a", has_text=re.compile("^segmentation$")).click()
    page.wait_for_url(re.compile(f"page=failures.*run={run_id}.*stage=segmentation"))
    wait_for(lambda: _pager_total(page) == len(wrong), 30)


def test_a_mask_case_overlays_both_masks_on_the_input_at_a_chosen_opacity(served, page) -> None:
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=case&run={run_id}&stage=segmentation&sample=frame_000")
    pictures = page.locator(".sw-case-picture img")
    wait_for(lambda: pictures.count() == 5, 30)  # prediction, truth, difference; both over the input
    before = pictures.nth(3).get_attribute("src")
    handle = page.locator(".noUi-handle").first
    handle.focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    wait_for(lambda: pictures.nth(3).get_attribute("src") != before, 20)
    assert shown(page, "Mask opacity: 0.75")


def test_accuracy_shows_counts_error_kinds_and_a_confusion_matrix(served, page) -> None:
    _, _, ui, run_id = served
    page.goto(f"{ui.url}?page=accuracy&run={run_id}")
    page.wait_for_selector(".sw-table-accuracy-stages .tabulator-row")
    stages = page.locator(".sw-table-accuracy-stages .tabulator-cell[tabulator-field='stage']").all_inner_texts()
    assert stages == ["detection", "segmentation", "lidar_segmentation"]
    accuracy = json.loads((Path(served[0]) / "runs" / run_id / "accuracy.json").read_text())
    correct = page.locator(".sw-table-accuracy-stages .tabulator-cell[tabulator-field='correct']").all_inner_texts()
    assert correct == [str(accuracy["stages"][s]["counts"]["correct"]) for s in stages]
    assert shown(page, "confusion matrix") and shown(page, "list the")
    page.get_by_text(re.compile(r"list (the|them)")).first.click()  # an error kind opens its failure cases
    page.wait_for_url(re.compile("page=failures.*kind=missed"))
    page.wait_for_selector(".sw-table-failures .tabulator-row")


def test_a_point_cloud_case_opens_in_two_locked_3d_views(served, page) -> None:
    home, _, ui, run_id = served
    page.goto(f"{ui.url}?page=case&run={run_id}&stage=lidar_segmentation&sample=frame_000")
    truth = load_point_labels(next((home / "datasets").rglob("frame_000.ply")))
    page.wait_for_selector(f"text=showing all {len(truth.labels):,} predicted")
    views = page.frame_locator(".sw-cloud-3d iframe")
    views.locator("#left").wait_for()

    def plot(expression: str):
        return views.locator("body").evaluate(f"() => {expression}")

    assert wait_for(lambda: plot("window.views && views.left && views.left.frames > 0 && views.left.count")) == len(
        truth.labels
    )
    views.locator("#mode").select_option("correctness")  # colour by correctness, without reloading the cloud
    wrong = wait_for(
        lambda: (v := plot("views.left.values && Array.from(views.left.values)")) and set(v) <= {0, 1} and v
    )
    predicted = np.load(next((home / "runs" / run_id).rglob("lidar_segmentation/frame_000.pred.npy")))
    assert sum(wrong) == int((predicted.reshape(-1) != truth.labels).sum())
    views.locator("#mode").select_option("attribute: intensity")  # the ground-truth file's own per-point numbers
    cloud = next((home / "datasets").rglob("frame_000.ply"))
    intensity = plot("Array.from(views.right.values)")  # painted in the change handler, before it returns
    np.testing.assert_allclose(intensity, load_point_attributes(cloud)["intensity"], rtol=1e-6)
    views.locator("#left").scroll_into_view_if_needed()
    for turn in range(2):  # turning the left view turns the right one, every time
        before = plot("JSON.stringify(views.right.eye)")
        box = views.locator("#left").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * (0.5 + 0.1 * turn), box["y"] + box["height"] * 0.4, steps=10)
        page.mouse.up()
        wait_for(lambda before=before: plot("JSON.stringify(views.right.eye)") != before, 20)
        assert plot("JSON.stringify(views.right.eye)") == plot("JSON.stringify(views.left.eye)")
    # the dark theme: the views' background is the page's, not white
    page.goto(f"{ui.url}?page=case&run={run_id}&stage=lidar_segmentation&sample=frame_000&theme=dark")
    views.locator("#left").wait_for()
    wait_for(lambda: plot("window.views && views.left && views.left.frames > 0"))
    dark = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert dark != "rgb(255, 255, 255)"
    assert plot("getComputedStyle(document.body).backgroundColor") == dark
    assert plot("window.CLEAR.map(c => Math.round(c * 255))") == [int(c) for c in re.findall(r"\d+", dark)[:3]]


LIDAR_GOLDEN = """\
name: lidar-golden
stages:
  registration:
    labels: clouds/{sample_id}.ply
    kind: point_labels
    classes: [ground, object]
    pass: {metric: accuracy, min: 0.99}
"""


def test_a_predicted_cloud_of_its_own_opens_with_distances_both_ways(tmp_path, page) -> None:
    """End to end: a stage reports a cloud of its own points (resampled, moved); the daemon judges
    it; its case shows the distances both ways, their numbers and the 3D distance colouring."""
    from stagewatch._saver import write_ply
    from stagewatch.daemon.groundtruth.diff import cloud_distances

    home = tmp_path / "home"
    dataset = home / "datasets" / "lidar"
    (dataset / "clouds").mkdir(parents=True)
    rng = np.random.default_rng(21)
    truth = rng.uniform(-20, 20, (4000, 3)).astype(np.float32)
    labels = (truth[:, 2] > 0).astype(np.int32)
    write_ply(dataset / "clouds" / "scan_000.ply", {"points": truth, "label": labels})
    (dataset / "golden.yaml").write_text(LIDAR_GOLDEN)
    predicted = (truth[::2] + rng.normal(0, 0.3, (2000, 3))).astype(np.float32)
    predicted_labels = np.where(rng.random(2000) < 0.2, 1 - labels[::2], labels[::2]).astype(np.int32)
    daemon = DaemonProcess(home).start()
    ui = None
    try:
        run = stagewatch.init(pipeline="lidar", home=home, dataset=dataset / "golden.yaml")
        with run.stage("registration", sample_id="scan_000") as stage:
            stage.result("scan_000", {"points": predicted, "label": predicted_labels})
        run.finish()
        assert run.flush(10)
        stagewatch.shutdown()
        wait_for(lambda: read_table(home, "samples").num_rows == 1, 30)
        ui = Ui(home)
        page.goto(f"{ui.url}?page=case&run={run.id}&stage=registration&sample=scan_000")
        page.wait_for_selector(".sw-distances")
        expected = cloud_distances(predicted, truth).summary  # the computation's own unit tests check it
        text = page.locator(".sw-distances").first.inner_text()
        assert f"{expected['mean_to_truth']:.4g}" in text and f"{expected['max_to_prediction']:.4g}" in text
        assert shown(page, f"Chamfer {expected['chamfer']:.4g}")
        views = page.frame_locator(".sw-cloud-3d iframe")
        views.locator("#left").wait_for()
        counts = wait_for(
            lambda: views.locator("body").evaluate(
                "() => window.views?.right?.frames && [views.left.count, views.right.count]"
            ),
            30,
        )
        assert counts == [2000, 4000]  # each cloud its own points
        views.locator("#mode").select_option("distance error")
        colours = wait_for(
            lambda: views.locator("body").evaluate("() => views.left.values && Array.from(views.left.values)")
        )
        np.testing.assert_allclose(colours, cloud_distances(predicted, truth).to_truth, rtol=1e-5)
        assert views.locator("#scale").is_visible()
    finally:
        if ui is not None:
            ui.stop()
        daemon.stop()


def test_empty_clouds_open_as_cases_and_as_saved_outputs(tmp_path, page) -> None:
    """A frame whose points were all filtered out, on either side: the Case page says which cloud
    is empty (no distance is made up) and still shows the other one in 3D; the Run page's output
    viewer summarises a saved 0-point cloud instead of calling it unreadable."""
    from stagewatch._saver import write_ply

    home = tmp_path / "home"
    dataset = home / "datasets" / "lidar"
    (dataset / "clouds").mkdir(parents=True)
    rng = np.random.default_rng(8)
    truth = rng.uniform(-20, 20, (400, 3)).astype(np.float32)
    labels = (truth[:, 2] > 0).astype(np.int32)
    empty = {"points": np.zeros((0, 3), np.float32), "label": np.zeros(0, np.int32)}
    for sample in ("full_a", "full_d"):
        write_ply(dataset / "clouds" / f"{sample}.ply", {"points": truth, "label": labels})
    for sample in ("empty_b", "empty_c"):
        write_ply(dataset / "clouds" / f"{sample}.ply", empty)
    (dataset / "golden.yaml").write_text(LIDAR_GOLDEN)
    predictions = {
        "full_a": empty,  # an empty predicted cloud of a labelled one
        "empty_b": {"points": truth, "label": labels},  # points predicted on an empty cloud
        "empty_c": empty,  # both empty
        "full_d": np.zeros(0, np.int32),  # labels alone, none
    }
    daemon = DaemonProcess(home).start()
    ui = None
    try:
        run = stagewatch.init(pipeline="lidar", home=home, dataset=dataset / "golden.yaml")
        for sample, prediction in predictions.items():
            with run.stage("registration", sample_id=sample) as stage:
                stage.result(sample, prediction)
                saved = stage.save(f"{sample}.ply", np.zeros((0, 3)))
        run.finish()
        assert run.flush(10)
        stagewatch.shutdown()
        wait_for(lambda: read_table(home, "samples").num_rows == 4, 30)
        ui = Ui(home)

        def case(sample: str) -> None:
            page.goto(f"{ui.url}?page=case&run={run.id}&stage=registration&sample={sample}")
            page.wait_for_selector("text=registration on")

        case("full_a")
        page.wait_for_selector("text=the prediction cloud is empty: no distance can be measured")
        assert shown(page, "0 predicted and 400 ground-truth points")
        views = page.frame_locator(".sw-cloud-3d iframe")
        views.locator("#left").wait_for()
        counts = "() => window.views?.right?.frames && [views.left.count, views.right.count]"
        assert wait_for(lambda: views.locator("body").evaluate(counts), 30) == [0, 400]
        case("empty_b")
        page.wait_for_selector("text=the ground truth cloud is empty: no distance can be measured")
        assert wait_for(lambda: views.locator("body").evaluate(counts), 30) == [400, 0]
        case("empty_c")
        page.wait_for_selector("text=the prediction cloud is empty and the ground truth cloud is empty")
        assert shown(page, "correct")
        case("full_d")
        page.wait_for_selector("text=labelled differently")
        assert shown(page, "points: 400, labelled differently: 400")
        for sample in predictions:  # nothing on these pages failed to compare or to draw
            case(sample)
            assert not shown(page, "cannot compare") and not shown(page, "Traceback")
        page.goto(f"{ui.url}?page=run&run={run.id}&artifact={saved}")
        page.wait_for_selector("text=full_d.ply")  # a run that logged nothing: the page once failed here
        assert not shown(page, "cannot be read")
        assert shown(page, "full_d.ply") and shown(page, "points")
        page.goto(f"{ui.url}?page=accuracy&run={run.id}")  # the points in no cell of the matrix are said
        page.wait_for_selector(".sw-unmatched")
        # full_a's and full_d's ground truth, empty_b's prediction: 3 x 400 points, by class
        by_class = np.bincount(labels, minlength=2) * 3
        assert shown(page, f"points with no counterpart (the other cloud was empty): ground {by_class[0]:,}")
        assert shown(page, f"object {by_class[1]:,}")
    finally:
        if ui is not None:
            ui.stop()
        daemon.stop()


def test_a_run_from_a_board_whose_clock_says_1970_shows_the_skew(tmp_path, page) -> None:
    home = tmp_path / "home"
    daemon = DaemonProcess(home).start()
    ui = None
    try:
        run_id = run_pipeline(home, clock_ns=12 * 3600 * 10**9)  # 1970-01-01T12:00Z: no real-time clock
        daemon.audit(run_id)
        ui = Ui(home)
        page.goto(f"{ui.url}?page=run&run={run_id}")
        page.get_by_text("Clock skew:").wait_for()
        assert shown(page, "years behind the daemon's")
        assert shown(page, "3 stage executions")  # the run itself is there, as the pipeline stamped it
    finally:
        if ui is not None:
            ui.stop()
        daemon.stop()


def test_accuracy_counters_move_while_a_run_streams(served, page) -> None:
    home, _, ui, _ = served
    page.goto(f"{ui.url}?page=accuracy")  # no run given: the newest judged, a running one first
    page.wait_for_selector(".sw-table-accuracy-stages .tabulator-row")
    demo = subprocess.Popen(
        [sys.executable, "-m", "stagewatch.cli", "demo", "--home", str(home), "--frames", "1500", "--no-ui"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def judged() -> int | None:
        """Samples of the detection stage counted so far (correct + wrong + invalid + unlabeled)."""
        total = 0
        for field in ("correct", "wrong", "invalid", "unlabeled"):
            cells = page.locator(f".sw-table-accuracy-stages .tabulator-cell[tabulator-field='{field}']")
            texts = cells.all_inner_texts()
            if not texts:
                return None
            total += int(texts[0].replace(",", ""))
        return total

    def shown_run() -> str | None:
        link = page.locator("a[href^='?page=run&run=']").first
        return link.get_attribute("title") if link.count() else None

    try:
        finished = shown_run()  # nothing runs yet: the newest judged
        assert finished is not None
        # without a reload the page turns to the run that streams, and its counters move
        streaming = wait_for(lambda: demo.poll() is None and (r := shown_run()) != finished and r, 90)
        first = wait_for(lambda: (n := judged()) is not None and shown_run() == streaming and 0 < n < 1400 and n, 30)
        later = wait_for(lambda: (n := judged()) is not None and shown_run() == streaming and n > first and n, 30)
        assert later > first and demo.poll() is None  # seen while the run was still streaming
        assert shown(page, "in progress") and shown(page, "golden.yaml")  # said so, and against what
    finally:
        demo.kill()
        demo.wait(30)


def test_the_accuracy_page_sends_its_stages_table_before_its_error_kinds_and_classes(served, monkeypatch) -> None:
    """Its error kinds (a failures query each, for the samples a link lists), the per-class tables
    and the confusion matrices were all made before the stages' table went to the browser: they
    come a tick later now, below it."""
    from stagewatch.ui.pages import accuracy
    from tests.ui.test_views import _built_as_a_switch, _tables

    home, _, _, run_id = served
    counted = []
    original = accuracy._samples_with
    monkeypatch.setattr(accuracy, "_samples_with", lambda *a: counted.append(a) or original(*a))
    session, page = _built_as_a_switch(monkeypatch, "accuracy", home, {"run": [run_id]})
    assert _tables(page) == ["accuracy-stages"] and counted == []
    session.tick()
    assert counted and _tables(page)[:2] == ["accuracy-stages", "accuracy-kinds"]
    assert len(_tables(page)) > 2  # the classes of its stages
