"""A table of the dashboard over a damaged data file, in a real Chromium: the query layer leaves
the file out, and the page says so above the rows, names the file and says how to get its rows
back; a page whose rows the file did not hold says nothing; after `stagewatch rebuild` no page
does."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stagewatch.daemon.tables._tables import snapshot_files
from tests.conftest import DaemonProcess, run_python, sw, wait_for
from tests.daemon.test_compaction import _damage as damage
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


def test_runs_and_logs_over_a_damaged_data_file_say_which_rows_they_lack(tmp_path: Path, page) -> None:
    """The Runs and Logs pages read their own tables: a damaged file of each is said above the
    rows, named, with the way back; the rows of the other run are still listed."""
    daemon = DaemonProcess(tmp_path / "home", env={"STAGEWATCH_DAEMON_MERGE_INTERVAL_S": "3600"}).start()
    ui = None
    try:
        whole, hit = (logged_run(daemon, host) for host in ("cam-a", "cam-b"))
        daemon.stop()
        damaged = {}
        for table in ("runs", "logs"):
            damaged[table] = next(path for path in snapshot_files(daemon.home, table) if hit in runs_of(path))
            assert whole not in runs_of(damaged[table])
            damage(Path(damaged[table]))
        ui = Ui(daemon.home)
        alert = page.locator(".sw-damaged")
        for table, still_listed in (("runs", whole[:8]), ("logs", "frame 1 seen")):
            page.goto(f"{ui.url}?page={table}")
            name = Path(damaged[table]).name
            assert wait_for(lambda: alert.count() > 0 and shown(page, name), 120), table  # noqa: B023
            assert shown(page, "stagewatch rebuild") and shown(page, still_listed), table
    finally:
        if ui is not None:
            ui.stop()
        if daemon.process is not None:
            daemon.stop()


def logged_run(daemon: DaemonProcess, host: str) -> str:
    """A run of two stages, each logging a line (tests/test_many_homes.py's pipeline), its rows
    committed before it returns (each run's rows in files of their own)."""
    from tests.test_many_homes import PIPELINE

    result = run_python(PIPELINE.format(host=host, home=str(daemon.home)))
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.split()[-1]
    rows_stored(daemon, run_id, "logs", 2)
    rows_stored(daemon, run_id, "runs", 1)
    daemon.audit(run_id)
    return run_id
