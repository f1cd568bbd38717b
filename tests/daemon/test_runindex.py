"""The run index: query by run id reads only the run's partitions, and answers the same as a
full scan; homes without an index get one on start; rebuild makes it again."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import stagewatch
from stagewatch.daemon import Filters, query_logs, query_runs, query_stages
from stagewatch.daemon.query._readmodels import resolve_run_id
from stagewatch.daemon.tables._runindex import RunIndex, run_dates, runs_with_prefix
from tests.conftest import DaemonProcess, wait_for


def make_runs(daemon: DaemonProcess, count: int) -> list[str]:
    ids = []
    for index in range(count):
        with stagewatch.init(pipeline="p", home=daemon.home) as run:
            for stage in ("a", "b"):
                with run.stage(stage, sample_id=f"s{index}"):
                    pass
        assert run.flush(10)
        ids.append(run.id)
    wait_for(lambda: all(len(query_stages(daemon.home, Filters(run=r))) == 2 for r in ids), 20)
    return ids


def answers(home: Path, run_id: str) -> list[list[dict]]:
    filters = Filters(run=run_id)
    return [
        table.sort_by("lsn").to_pylist()
        for table in (query_runs(home, filters), query_stages(home, filters), query_logs(home, filters))
    ]


def test_query_by_run_id_through_the_index_equals_a_full_scan(daemon: DaemonProcess) -> None:
    ids = make_runs(daemon, 12)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert run_dates(daemon.home, ids[0]) == [today]
    assert run_dates(daemon.home, "00000000-0000-4000-8000-000000000000") == []
    indexed = {run_id: answers(daemon.home, run_id) for run_id in ids}
    (daemon.home / "index" / "runs" / "complete").unlink()  # readers now scan every partition
    assert run_dates(daemon.home, ids[0]) is None
    for run_id in ids:
        assert answers(daemon.home, run_id) == indexed[run_id] and len(indexed[run_id][1]) == 2


def test_prefixes_resolve_through_the_index_and_new_runs_are_found_while_they_run(daemon: DaemonProcess) -> None:
    ids = make_runs(daemon, 3)
    assert runs_with_prefix(daemon.home, ids[0][:5]) == [ids[0]]
    assert resolve_run_id(daemon.home, ids[1][:8]) == ids[1]
    run = stagewatch.init(pipeline="still-running", home=daemon.home)
    with run.stage("a"):
        pass
    assert run.flush(10)
    wait_for(lambda: runs_with_prefix(daemon.home, run.id[:6]) == [run.id], 20)  # from its first audit trail
    assert resolve_run_id(daemon.home, run.id[:6]) == run.id
    run.finish()


def test_a_home_without_an_index_gets_one_on_start_and_rebuild_makes_it_again(daemon: DaemonProcess) -> None:
    ids = make_runs(daemon, 4)
    before = {run_id: answers(daemon.home, run_id) for run_id in ids}
    assert daemon.stop() == 0
    shutil.rmtree(daemon.home / "index")  # as written by a version without the index
    daemon.start()
    wait_for(lambda: RunIndex(daemon.home).complete, 20)
    assert {run_id: answers(daemon.home, run_id) for run_id in ids} == before
    assert daemon.stop() == 0
    rebuilt = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "rebuild", "--home", str(daemon.home)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert RunIndex(daemon.home).complete and all(run_dates(daemon.home, run_id) for run_id in ids)
    assert {run_id: answers(daemon.home, run_id) for run_id in ids} == before


def test_an_index_is_built_when_a_table_has_no_part_left(home: Path) -> None:
    """Retention can remove every part of a table, leaving its folders: building the index
    on start must not trip on a table with no columns."""
    (home / "metrics" / "logs" / "date=2026-09-21").mkdir(parents=True)
    assert RunIndex(home).build_from_tables() == 0
    daemon = DaemonProcess(home).start()
    try:
        assert RunIndex(home).complete and daemon.process.poll() is None
    finally:
        daemon.stop()
