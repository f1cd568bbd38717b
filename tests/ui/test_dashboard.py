"""The dashboard in a real headless Chromium (Playwright, Debian's /usr/bin/chromium), served by
`stagewatch ui` (panel serve) over a home that a real daemon and the demo pipeline filled."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import stagewatch
from tests.conftest import DaemonProcess, wait_for

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
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
    def __init__(self, home: Path, *extra: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stagewatch.cli", "ui", "--home", str(home), "--port", str(self.port), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}/app"
        wait_for(self._answers, 60, 0.2)

    def _answers(self) -> bool:
        assert self.process.poll() is None, "stagewatch ui exited"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2)
            return True
        except OSError as error:
            return getattr(error, "code", None) is not None  # an HTTP error answers too (login redirect)

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
    ui = Ui(home)
    try:
        yield home, daemon, ui, run_id
    finally:
        ui.stop()
        daemon.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1300, "height": 1600})
    page = context.new_page()
    page.set_default_timeout(45_000)
    yield page
    context.close()


def test_runs_a_run_its_stages_accuracy_and_a_saved_image(served, page) -> None:
    home, _, ui, run_id = served
    page.goto(ui.url)
    page.get_by_text(run_id).first.click()  # the runs table
    page.wait_for_selector("text=Accuracy against")
    assert f"run={run_id}" in page.url  # the page state is in the URL
    page.wait_for_selector("text=Stages (ms)")
    for text in ("lidar_segmentation", "frame_047", "ValueError", "mAP", "bottleneck"):  # frame 47 failed
        assert shown(page, text), text
    overlay = f"runs/{run_id}/stages/postprocessing/frame_000_overlay.png"
    page.goto(f"{ui.url}?run={run_id}&artifact={overlay}")
    image = page.wait_for_selector("img[src^='data:image/png']")
    assert image.bounding_box()["width"] > 100
    page.screenshot(path=str(home.parent / "dashboard.png"), full_page=True)


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
    page.wait_for_selector(f"text={run.id}", timeout=30_000)


def test_the_dashboard_listens_on_the_loopback_only(served) -> None:
    _, _, ui, _ = served
    listening = wait_for(
        lambda: [
            c.laddr for p in _tree(ui.process.pid) for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN
        ],
        20,
    )
    assert listening and all(address.ip in ("127.0.0.1", "::1") for address in listening)


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
        assert not shown(page, "Run id")
        page.fill("input[name='username']", "alice")
        page.fill("input[name='password']", "wrong")
        page.click("button[type='submit'], input[type='submit']")
        time.sleep(1)
        assert not shown(page, "Run id") and page.locator("input[name='password']").count() == 1
        page.goto(ui.url)
        page.fill("input[name='username']", "alice")
        page.fill("input[name='password']", "correct horse")
        page.click("button[type='submit'], input[type='submit']")
        page.wait_for_selector("text=Run id")
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
