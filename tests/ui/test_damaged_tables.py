"""A table of the dashboard over a damaged data file, in a real Chromium: the query layer leaves
the file out, and the page says so above the rows, names the file and says how to get its rows
back; a page whose rows the file did not hold says nothing; after `stagewatch rebuild` no page
does."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stagewatch.daemon.tables._tables import snapshot_files
from tests.conftest import DaemonProcess, wait_for
from tests.daemon.test_compaction import _damage as damage
from tests.test_cli import sw
from tests.test_compare import rows_stored, timed_run
from tests.ui.conftest import CHROMIUM
from tests.ui.test_dashboard import Ui, shown

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")

EXECUTIONS = 120  # stage executions of a timed run


def runs_of(path: str) -> set[str]:
    return set(pq.read_table(path, columns=["run_id"])["run_id"].to_pylist())


def run_drawn(page, ui: Ui, run_id: str) -> None:
    """The run's page, drawn to its executions table's rows (what the damage is said above)."""
    page.goto(f"{ui.url}?page=run&run={run_id}")
    rows = page.locator(".sw-table-executions .tabulator-row")
    assert wait_for(lambda: rows.count() > 0, 120)


def test_a_table_missing_a_damaged_files_rows_says_so_until_a_rebuild(tmp_path: Path, page) -> None:
    # No compaction: each run's rows stay in files of their own (a merge would put both in one).
    daemon = DaemonProcess(tmp_path / "home", env={"STAGEWATCH_DAEMON_MERGE_INTERVAL_S": "3600"}).start()
    ui = None
    try:
        whole = timed_run(daemon.home, seed=1)
        rows_stored(daemon, whole, "stage_executions", EXECUTIONS)  # committed before the next run starts
        hit = timed_run(daemon.home, seed=2)
        rows_stored(daemon, hit, "stage_executions", EXECUTIONS)
        for run_id in (whole, hit):
            daemon.audit(run_id)
        daemon.stop()
        holding = next(path for path in snapshot_files(daemon.home, "stage_executions") if hit in runs_of(path))
        assert whole not in runs_of(holding)
        damage(Path(holding))
        ui = Ui(daemon.home)

        # the run whose rows the file held: said above its rows (its executions table's too)
        page.goto(f"{ui.url}?page=run&run={hit}")
        damaged = page.locator(".sw-damaged")
        assert wait_for(lambda: damaged.count() > 0, 120)
        assert wait_for(lambda: shown(page, Path(holding).name), 60)
        assert (
            shown(page, "Rows are missing") and shown(page, "stagewatch rebuild") and shown(page, "stagewatch doctor")
        )
        assert not shown(page, "No stage has ended in this run yet.")  # its rows are in the file, not unwritten
        # the Failures page reads the same table: its rows may be in the file too
        page.goto(f"{ui.url}?page=failures")
        assert wait_for(lambda: damaged.count() > 0 and shown(page, Path(holding).name), 120)

        # ... but not filtered to the other run: the file's log entry says it holds none of its rows
        page.goto(f"{ui.url}?page=failures&run={whole}")
        assert wait_for(lambda: page.locator(".sw-count").get_by_text("failure cases").count() > 0, 120)
        assert damaged.count() == 0
        # the other run's rows are all shown: nothing said (twice: the second answer is a kept one)
        for _ in range(2):
            run_drawn(page, ui, whole)
            assert damaged.count() == 0
        # a kept answer of the damaged run's page still says what it lacks
        page.goto(f"{ui.url}?page=run&run={hit}")
        assert wait_for(lambda: damaged.count() > 0 and shown(page, Path(holding).name), 120)

        rebuilt = sw("rebuild", "--home", str(daemon.home))
        assert rebuilt.returncode == 0, rebuilt.stderr
        run_drawn(page, ui, hit)  # its rows are back, and nothing is said missing
        assert damaged.count() == 0 and not shown(page, "Rows are missing")
        assert wait_for(lambda: shown(page, f"stage executions 1-25 of {EXECUTIONS}"), 60)
    finally:
        if ui is not None:
            ui.stop()
        if daemon.process is not None:
            daemon.stop()
