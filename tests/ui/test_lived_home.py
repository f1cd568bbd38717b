"""Every page of the dashboard, in Chromium, on a home that has lived: a run of 100,000 stage
executions three days old whose day the daemon compacted, and many short runs of today whose
parts it merged; pipelines that never log (no logs table), as many do (issue 29, item 0).

The fresh, tiny home of test_dashboard.py hides what users meet after an hour: this one is
made by the real daemon, with its merges and its aged compaction forced by short intervals."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deltalake import DeltaTable

from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.query._readmodels import read_table
from stagewatch.daemon.tables._tables import snapshot_files
from tests.conftest import DaemonProcess, wait_for
from tests.ui.test_dashboard import Ui, pytestmark, shown  # noqa: F401 (the skip mark: no Chromium, no test)

SAMPLES = 20_000  # x 5 stages: the 100,000 executions in one run
STAGES = ("decode", "detect", "segment", "fuse", "write")
FAILING_EVERY = 1_000  # detect fails on every 1,000th sample: 20 failures
SHORT_RUNS = 30
AGE_DAYS = 3  # older than compaction's two days

# A pipeline whose clock reads `days` ago: its run lands in a partition the daemon counts
# as aged and compacts, as a home three days old has. It sends as fast as the client takes.
PIPELINE = f"""
import sys, time
home, pipeline, runs, samples, days = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
shift_ns = days * 86_400 * 10**9
_time_ns, _time = time.time_ns, time.time
time.time_ns = lambda: _time_ns() - shift_ns
time.time = lambda: _time() - shift_ns / 1e9
import stagewatch
for _ in range(runs):
    run = stagewatch.init(pipeline=pipeline, home=home)
    print(run.id, flush=True)
    for i in range(samples):
        for stage in {STAGES!r}:
            try:
                with run.stage(stage, sample_id=f"s{{i}}"):
                    if stage == "detect" and i % {FAILING_EVERY} == 7:
                        raise ValueError(f"no detections in s{{i}}")
            except ValueError:
                pass
    run.finish(status="failed" if samples > {FAILING_EVERY} else "ok")
    assert run.flush(300)
    if runs > 1:
        time.sleep(0.3)  # the next run's rows in another part (flushed every 0.2 s): parts to merge
"""


@dataclass
class Lived:
    home: Path
    ui: Ui
    big_run: str
    short_runs: list[str]


def _pipeline(home: Path, name: str, runs: int, samples: int, days: int) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PIPELINE, str(home), name, str(runs), str(samples), str(days)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _parts(home: Path, table: str) -> dict[str, list[str]]:
    """The files of the table's snapshot, by partition."""
    files: dict[str, list[str]] = {}
    for path in snapshot_files(home, table):
        files.setdefault(Path(path).parent.name, []).append(path)
    return files


def _lived_enough(home: Path, runs: int) -> bool:
    """Two days of rows, every run's row stored, and the daemon has compacted the table."""
    if len(_parts(home, "stage_executions")) != 2 or read_table(home, "runs", columns=["run_id"]).num_rows != runs:
        return False
    history = DeltaTable(str(DaemonHome.of(home).table("stage_executions"))).history()
    return any(entry["operation"] == "OPTIMIZE" for entry in history)


@pytest.fixture(scope="module")
def lived(tmp_path_factory) -> Iterator[Lived]:
    home = Path(str(tmp_path_factory.mktemp("lived"))) / "home"
    # Parts written five times a second and merged every second; retention (and the aged
    # compaction behind it) every two seconds: an hour of a home's life in a few seconds.
    intervals = {
        "STAGEWATCH_DAEMON_FLUSH_INTERVAL_S": "0.2",
        "STAGEWATCH_DAEMON_MERGE_INTERVAL_S": "1",
        "STAGEWATCH_RETENTION_CHECK_INTERVAL_S": "2",
    }
    daemon = DaemonProcess(home, env=intervals).start()
    ui = None
    try:
        (big_run,) = _pipeline(home, "lived", 1, SAMPLES, AGE_DAYS)
        ui = Ui(home)  # before the short runs: Live shows them as they end
        short_runs = _pipeline(home, "short", SHORT_RUNS, 3, 0)
        try:
            wait_for(lambda: _lived_enough(home, SHORT_RUNS + 1), 120, 0.5)
        except AssertionError:
            raise AssertionError(f"not merged and compacted: {_parts(home, 'stage_executions')}") from None
        yield Lived(home, ui, big_run, short_runs)
    finally:
        if ui is not None:
            ui.stop()
        daemon.stop()


def _stage_cells(page, table: str, field: str) -> list[str]:
    return page.locator(f".sw-table-{table} .tabulator-cell[tabulator-field='{field}']").all_inner_texts()


def _live(page, lived: Lived) -> None:
    # every run has ended: none is in progress, the last ones are listed as ended (with their counts)
    page.wait_for_selector(f".sw-ended a[title='{lived.short_runs[-1]}']")
    assert shown(page, "Ended in the last 10 minutes")


def _runs(page, lived: Lived) -> None:
    page.wait_for_selector(f".sw-table-runs a[title='{lived.short_runs[-1]}']")
    page.wait_for_selector(f"text=of {SHORT_RUNS + 1}")
    page.goto(f"{lived.ui.url}?page=runs&status=failed")
    page.wait_for_selector(f".sw-table-runs a[title='{lived.big_run}']")


def _run(page, lived: Lived) -> None:
    page.wait_for_selector(".sw-table-stages .tabulator-row")
    assert _stage_cells(page, "stages", "stage") == [*STAGES, "(outside stages)"]  # and the time outside them
    assert shown(page, f"no detections in s{FAILING_EVERY + 7}")
    # Not a point per execution: the browser would stall on the run's 100,000.
    assert shown(page, f"of {SAMPLES * len(STAGES):,} executions drawn")
    # Its executions a page at a time, answered on the server: the failures first.
    page.wait_for_selector(f"text=stage executions 1-25 of {SAMPLES * len(STAGES):,}")
    statuses = _stage_cells(page, "executions", "status")
    failures = SAMPLES // FAILING_EVERY
    assert statuses[:failures] == ["failed"] * failures and set(statuses[failures:]) <= {"ok"}


def _performance(page, lived: Lived) -> None:
    page.wait_for_selector(".sw-table-window-stats .tabulator-row")
    assert _stage_cells(page, "window-stats", "stage")[: len(STAGES)] == list(STAGES)


def _logs(page, lived: Lived) -> None:
    page.wait_for_selector("text=no rows match")  # these pipelines never log: the page says so


def _accuracy(page, lived: Lived) -> None:
    page.wait_for_selector("text=No sample of this run has been judged yet.")


def _failures(page, lived: Lived) -> None:
    page.wait_for_selector(".sw-table-failures .tabulator-row")
    page.wait_for_selector(f"text=of {SAMPLES // FAILING_EVERY}")


PAGES = {
    "live": ("page=live", _live),
    "runs": ("page=runs", _runs),
    "run": ("page=run&run={run}", _run),
    "performance": ("page=performance&window=30d", _performance),
    "logs": ("page=logs", _logs),
    "accuracy": ("page=accuracy&run={run}", _accuracy),
    "failures": ("page=failures", _failures),
}


@pytest.mark.parametrize("name", PAGES)
def test_every_page_shows_the_lived_home(lived, page, name: str) -> None:
    query, shows_its_data = PAGES[name]
    page.goto(f"{lived.ui.url}?{query.format(run=lived.big_run)}")
    page.wait_for_load_state("networkidle")  # a page that fails says so in its first document
    assert not shown(page, "could not be shown"), page.get_by_text("could not be shown").first.inner_text()
    shows_its_data(page, lived)
    assert not shown(page, "could not be shown")
