"""One dashboard over several hosts' homes: `stagewatch ui --home A --home 'B*'` on homes that
ten real daemons filled (tests/test_many_homes.py's fleet, one run a host), driven in Chromium."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagewatch.daemon.query._readmodels import active_runs
from tests.conftest import DaemonProcess, wait_for
from tests.test_compare import held_run
from tests.test_many_homes import fleet  # noqa: F401 (the module's fixture: ten homes, ten daemons)
from tests.ui.test_dashboard import Ui, _choose, _runs_shown, pytestmark, shown  # noqa: F401 (the skip mark)

SERVED = ("camera-01", "camera-02", "camera-03")  # host01 by name, host02 and host03 by a glob


@pytest.fixture(scope="module")
def fleet_ui(fleet) -> Iterator[tuple[dict[str, str], Ui]]:  # noqa: F811 (the fixture it builds on)
    """The dashboard over three of the ten homes: one --home a path, one a glob."""
    base, runs = fleet
    ui = Ui(base / "host01", "--home", str(base / "host0[23]"))
    try:
        yield {host: run_id for run_id, host in runs.items()}, ui
    finally:
        ui.stop()


def _cells(page, table: str, field: str) -> list[str]:
    return page.locator(f".sw-table-{table} .tabulator-cell[tabulator-field='{field}']").all_inner_texts()


def test_runs_of_every_home_are_listed_and_the_host_filter_narrows(fleet_ui, page) -> None:
    by_host, ui = fleet_ui
    page.goto(f"{ui.url}?page=runs")
    wait_for(lambda: sorted(_runs_shown(page)) == sorted(by_host[host] for host in SERVED), 60)
    assert sorted(_cells(page, "runs", "host")) == list(SERVED)
    page.set_viewport_size({"width": 1280, "height": 900})  # the host column in view, not past the error text
    header = page.locator(".sw-table-runs .tabulator-col[tabulator-field='host']").bounding_box()
    assert header is not None and header["x"] + header["width"] <= 1280
    _choose(page, "Host", "camera-02")
    page.wait_for_url(re.compile("host=camera-02"))
    wait_for(lambda: _runs_shown(page) == [by_host["camera-02"]], 30)
    page.reload()  # the URL keeps the host
    wait_for(lambda: _runs_shown(page) == [by_host["camera-02"]], 60)
    page.goto(f"{ui.url}?page=runs&host=camera-09")  # a host of the fleet, not of these homes
    page.wait_for_selector("text=host=camera-09")  # said to be ignored, not taken
    wait_for(lambda: len(_runs_shown(page)) == len(SERVED), 60)


def test_a_run_of_the_glob_s_home_opens_with_its_stages(fleet_ui, page) -> None:
    by_host, ui = fleet_ui
    run_id = by_host["camera-03"]  # in host03: its trail is read there
    page.goto(f"{ui.url}?page=runs")
    page.locator(f".sw-table-runs a[title='{run_id}']").click()
    wait_for(lambda: _cells(page, "stages", "stage") == ["detection", "(outside stages)"], 60)
    assert shown(page, "camera-03")  # "on host camera-03", from the run's own home
    assert not shown(page, "is missing")  # its audit head was found


def test_logs_say_their_host_and_narrow_to_one(fleet_ui, page) -> None:
    _by_host, ui = fleet_ui
    page.goto(f"{ui.url}?page=logs")
    wait_for(lambda: sorted(_cells(page, "logs", "host")) == sorted(2 * SERVED), 60)
    _choose(page, "Host", "camera-01")
    page.wait_for_url(re.compile("host=camera-01"))
    wait_for(lambda: _cells(page, "logs", "host") == ["camera-01"] * 2, 30)


def test_performance_and_failures_narrow_to_one_host(fleet_ui, page) -> None:
    _by_host, ui = fleet_ui
    page.goto(f"{ui.url}?page=performance")
    wait_for(lambda: _cells(page, "window-stats", "executions")[:1] == [str(2 * len(SERVED))], 60)
    _choose(page, "Host", "camera-02")
    page.wait_for_url(re.compile("host=camera-02"))
    wait_for(lambda: _cells(page, "window-stats", "executions")[:1] == ["2"], 30)  # the chart's rows, the same filter
    page.goto(f"{ui.url}?page=failures&host=camera-02")
    page.wait_for_selector(".sw-host select")
    assert page.locator(".sw-host select").input_value() == "camera-02"
    assert not shown(page, "Ignored from the link")


def test_one_home_shows_no_host_filter(fleet, page) -> None:  # noqa: F811 (the module's fixture)
    base, _runs = fleet
    ui = Ui(base / "host05")
    try:
        page.goto(f"{ui.url}?page=logs")
        page.wait_for_selector(".sw-table-logs .tabulator-row")
        assert "host" not in page.locator(".sw-table-logs .tabulator-col").all_inner_texts()
        assert not page.locator(".sw-host select").is_visible()
    finally:
        ui.stop()


def test_a_copy_made_while_a_run_went_on_does_not_keep_it_running_on_live(tmp_path: Path, page) -> None:
    """`cp -r` of a home while a run streams, the run then finished in the original: Live over
    both homes shows it ended (the copy's status.json lists it in progress for ever)."""
    home, copy = tmp_path / "home", tmp_path / "copy"
    daemon = DaemonProcess(home).start()
    try:
        with held_run(home, seed=1, frames=5) as (run_id, process):
            wait_for(lambda: run_id in {run.get("run_id") for run in active_runs(home)}, 30)
            shutil.copytree(home, copy, ignore=shutil.ignore_patterns("*.sock", "*.lock"))
            process.communicate("end\n", timeout=60)
        daemon.audit(run_id)
    finally:
        daemon.stop()
    ui = Ui(home, "--home", str(copy))
    try:
        page.goto(f"{ui.url}?page=live")
        page.wait_for_selector("text=No run is in progress")
        assert page.locator(f"a[title='{run_id}']").count() <= 1  # at most its line among the ended ones
        assert not shown(page, "running ·")
    finally:
        ui.stop()
