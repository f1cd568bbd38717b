"""The Delta tables as other tools and a damaged log see them; homes of the layout before
Delta tables upgrade on the daemon's first start."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.projection._rows import DEFINITIONS, type_name
from stagewatch.daemon.query._readmodels import read_table
from stagewatch.daemon.query._sql import select
from stagewatch.daemon.tables._store import TABLES, Store
from stagewatch.daemon.tables._tables import DAEMON_APP, DamagedTable, committed_lsn, has_log
from tests.conftest import Close, DaemonProcess, run_pipeline, sw, wait_for
from tests.daemon.test_compaction import T0, _rows
from tests.daemon.test_retention import _judged_run
from tests.groundtruth.builders import write_dataset


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return sw(*args, "--home", str(home))


def _history(home: Path) -> dict[str, str]:
    """A daemon's home with runs, stages, a failure, a log line and a judged sample; stopped."""
    daemon = DaemonProcess(home).start()
    golden = write_dataset(home.parent / "golden", 2)
    run_ids = [run_pipeline(home, frames=5) for _ in range(2)]
    judged = _judged_run(home, golden, "judged")  # a log line too
    for run_id in [*run_ids, judged]:
        daemon.audit(run_id)
    wait_for(lambda: read_table(home, "samples").num_rows == 1)
    assert daemon.stop() == 0
    return _seen(home)


def _first_difference(before: object, after: object, where: str = "") -> str:
    """Where two CLI answers first differ, and how: short enough to read in CI's output."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in before.keys() | after.keys():
            if before.get(key) != after.get(key):
                return _first_difference(before.get(key), after.get(key), f"{where}.{key}")
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return f"{where}: {len(before)} items before, {len(after)} after"
        for index, (one, other) in enumerate(zip(before, after, strict=True)):
            if one != other:
                return _first_difference(one, other, f"{where}[{index}]")
    return f"{where}: {str(before)[:300]} before, {str(after)[:300]} after"


def _seen(home: Path) -> dict[str, object]:
    """What the CLI shows: runs, stats (within 1e-9: `Close`) and the matching rows."""
    shown = {name: _cli(home, name, "--json") for name in ("runs", "stats")}
    shown["query"] = _cli(home, "query", "--json", "--limit", "100000")
    for name, result in shown.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    return {name: json.loads(result.stdout, parse_float=Close) for name, result in shown.items()}


def test_deltalake_duckdb_and_the_query_api_see_the_same_rows(home: Path) -> None:
    _history(home)
    query = json.loads(_cli(home, "query", "--json", "--limit", "100000").stdout)
    runs = json.loads(_cli(home, "runs", "--json", "--limit", "100").stdout)
    for table in TABLES:
        by_delta = DeltaTable(str(DaemonHome(home).table(table))).to_pyarrow_table()
        documented = {column.name: type_name(column.type) for column in DEFINITIONS[table].columns}
        assert {field.name: _as_read(field.type) for field in by_delta.schema} == {**documented, "date": "string"}
        by_duckdb = select(home, table, "SELECT * FROM rows")
        assert by_delta.num_rows == by_duckdb.num_rows > 0
        assert sorted(by_delta["lsn"].to_pylist()) == sorted(by_duckdb["lsn"].to_pylist())
    stages = select(home, "stage_executions", "SELECT run_id, span FROM rows")
    assert sorted(map(str, zip(stages["run_id"].to_pylist(), stages["span"].to_pylist(), strict=True))) == sorted(
        str((row["run_id"], row["span"])) for row in query["stages"]
    )
    run_ids = DeltaTable(str(DaemonHome(home).table("runs"))).to_pyarrow_table()["run_id"].to_pylist()
    assert sorted(run_ids) == sorted(row["run_id"] for row in query["runs"]) == sorted(r["run_id"] for r in runs)


def _as_read(arrow: pa.DataType) -> str:
    """A reader's type as docs/storage.md writes types (its timestamps' real unit)."""
    return f"timestamp[{arrow.unit}, {arrow.tz}]" if pa.types.is_timestamp(arrow) else type_name(arrow)


def _last_commit(home: Path, table: str) -> Path:
    return sorted((DaemonHome(home).table(table) / "_delta_log").glob("*.json"))[-1]


def test_a_truncated_commit_gives_a_clear_message_and_rebuild_recovers(home: Path) -> None:
    before = _history(home)
    commit = _last_commit(home, "stage_executions")
    commit.write_bytes(commit.read_bytes()[:40])
    for command in (("stats", "--json"), ("query", "--json"), ("runs",)):
        result = _cli(home, *command)
        if command == ("runs",):  # the runs table reads: only stage_executions is damaged
            assert result.returncode == 0, result.stderr
            continue
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert "the stage_executions table cannot be read" in result.stderr
        assert "stagewatch rebuild" in result.stderr
    doctor = json.loads(_cli(home, "doctor", "--json").stdout)
    tables = {check["name"]: check for check in doctor["checks"]}["tables"]
    assert not tables["ok"] and "stage_executions" in tables["detail"]
    rebuilt = _cli(home, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert _seen(home) == before


def test_the_daemon_sets_a_table_with_a_damaged_log_aside_and_rebuilds_it(home: Path) -> None:
    """A missing checkpoint of the Delta log (its hint says there is one): the daemon starts,
    moves the table to quarantine/tables/ and rebuilds it from the event log."""
    before = _history(home)
    table = DeltaTable(str(DaemonHome(home).table("runs")))
    table.create_checkpoint()
    (checkpoint,) = (DaemonHome(home).table("runs") / "_delta_log").glob("*.checkpoint.parquet")
    checkpoint.unlink()
    assert "the runs table cannot be read" in _cli(home, "runs").stderr
    daemon = DaemonProcess(home).start()
    try:
        wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
        assert _seen(home) == before
        assert "has a damaged Delta log" in daemon.log()
    finally:
        assert daemon.stop() == 0
    (aside,) = DaemonHome(home).quarantined_tables.iterdir()
    assert aside.name.startswith("runs-")
    doctor = json.loads(_cli(home, "doctor", "--json").stdout)
    tables = {check["name"]: check for check in doctor["checks"]}["tables"]
    assert not tables["ok"] and aside.name in tables["detail"]  # until someone looks and deletes it


@pytest.mark.parametrize("removed", ["runs", "stage_executions/_delta_log", "runs+status"])
def test_a_table_removed_by_hand_is_rebuilt_on_the_next_start(home: Path, removed: str) -> None:
    """A table (or its log) deleted while the daemon was stopped: it holds fewer rows than the
    checkpoint counted, so the daemon replays the event log from its start and every run is back.
    Until then a reader reads the table empty: the CLI and doctor say it is gone, not "no runs";
    with status.json deleted too (which lists the tables held), from the checkpoint's count."""
    before = _history(home)
    removed, _, and_status = removed.partition("+")
    if and_status:
        DaemonHome(home).status.unlink()
    shutil.rmtree(DaemonHome(home).metrics / removed)
    table = removed.split("/")[0]
    listed = _cli(home, "runs")
    assert f"the {table} table of {home} is gone" in listed.stderr, listed.stderr
    assert "no runs yet" not in listed.stdout  # untrue: the runs are in the event log
    tables = _doctor_tables(home)
    assert not tables["ok"] and f"the {table} table of {home} is gone" in tables["detail"]
    daemon = DaemonProcess(home).start()
    try:
        wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
        assert _seen(home) == before
        assert "hold fewer rows than the checkpoint counted" in daemon.log()
        assert "is gone" not in _cli(home, "runs").stderr
    finally:
        assert daemon.stop() == 0


def test_a_file_in_place_of_a_table_is_said(home: Path) -> None:
    """A file or a broken link where a table's folder goes reads empty: said, with what to do."""
    _history(home)
    runs = DaemonHome(home).metrics / "runs"
    shutil.rmtree(runs)
    runs.symlink_to(home / "nowhere")
    listed = _cli(home, "runs")
    assert f"{runs} is no folder" in listed.stderr and "no runs yet" not in listed.stdout
    assert f"{runs} is no folder" in _doctor_tables(home)["detail"]


@pytest.mark.parametrize("removed", ["samples", "samples/_delta_log"])
def test_a_samples_table_removed_by_hand_is_judged_again_on_the_next_start(home: Path, removed: str) -> None:
    """The accuracy worker's table deleted while the daemon was stopped: its checkpoint counted
    the rows the table held, so the worker judges every run again (it went on from its checkpoint
    and the rows were lost for good, the warning gone once status.json no longer listed it)."""
    _history(home)
    judged = _run_ids(home, "samples")
    assert len(judged) == 1
    shutil.rmtree(DaemonHome(home).metrics / removed)
    assert "the samples table" in _doctor_tables(home)["detail"]
    daemon = DaemonProcess(home).start()
    try:
        wait_for(lambda: _run_ids(home, "samples") == judged, 30)
        wait_for(lambda: "samples" in daemon.status().get("tables", []))
        assert _doctor_tables(home)["ok"]
    finally:
        assert daemon.stop() == 0


def _to_old_layout(home: Path) -> None:
    """Rewrite every table as the layout before Delta tables wrote it: plain Parquet parts
    `part-{first lsn:020d}.parquet` under metrics/{table}/date=D/, no log."""
    for table in TABLES:
        rows = read_table(home, table)
        shutil.rmtree(DaemonHome(home).table(table))
        for date in pc.unique(rows["date"]).to_pylist():
            part = rows.filter(pc.field("date") == date).drop(["date"])
            folder = DaemonHome(home).partition(table, date)
            folder.mkdir(parents=True)
            pq.write_table(part, folder / f"part-{pc.min(part['lsn']).as_py():020d}.parquet", compression="zstd")


def test_a_home_of_the_layout_before_delta_tables_upgrades_on_the_first_start(home: Path) -> None:
    before = _history(home)
    _to_old_layout(home)
    assert not any(DaemonHome(home).metrics.glob("*/_delta_log"))
    old = _cli(home, "stats")
    assert old.returncode != 0 and "earlier version" in old.stderr and "Traceback" not in old.stderr
    daemon = DaemonProcess(home).start()
    try:
        wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
        wait_for(lambda: read_table(home, "samples").num_rows == 1)  # the accuracy worker judged again
        assert _seen(home) == before
        log = daemon.log()
        assert "was written by an earlier version of stagewatch" in log and "replayed from its start" in log
    finally:
        assert daemon.stop() == 0
    assert all((DaemonHome(home).table(table) / "_delta_log").is_dir() for table in TABLES)
    assert _seen(home) == before  # and the next start keeps them as they are
    daemon.start()
    try:
        wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
        assert _seen(home) == before
    finally:
        assert daemon.stop() == 0


def test_an_unchanged_table_is_listed_from_the_cached_snapshot(home: Path) -> None:
    """The file list of an unchanged table comes from the process's cached snapshot, brought up
    to date from the commits after it: the log is not read from its start again (with its first
    commit gone, a table opened anew cannot be read; the cached one still lists its files)."""
    _history(home)
    listed = select(home, "stage_executions", "SELECT count(*) AS n FROM rows")["n"][0].as_py()
    first = DaemonHome(home).table("stage_executions") / "_delta_log" / f"{0:020d}.json"
    first.rename(home.parent / "first-commit.json")
    with pytest.raises(DeltaError):
        DeltaTable(str(DaemonHome(home).table("stage_executions")))
    assert select(home, "stage_executions", "SELECT count(*) AS n FROM rows")["n"][0].as_py() == listed > 0


def _running_history(home: Path) -> tuple[DaemonProcess, dict[str, object]]:
    """`_history`'s home, its daemon started again (as it is left running)."""
    before = _history(home)
    daemon = DaemonProcess(home).start()
    wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
    return daemon, before


def _doctor_tables(home: Path) -> dict[str, object]:
    return {check["name"]: check for check in json.loads(_cli(home, "doctor", "--json").stdout)["checks"]}["tables"]


def _run_ids(home: Path, table: str) -> list[str]:
    """The run ids of the table's rows; none while the table cannot be read."""
    try:
        return read_table(home, table)["run_id"].to_pylist()
    except DamagedTable:
        return []


def _rows_once(home: Path, run_ids: list[str]) -> None:
    """Each run listed, and no row of any table twice."""
    assert set(run_ids) <= set(read_table(home, "runs")["run_id"].to_pylist())
    for table in TABLES:
        lsns = read_table(home, table)["lsn"].to_pylist()
        assert len(lsns) == len(set(lsns)), table


# In CI one table each (the same code path for every table); STAGEWATCH_FAULTS_LONG=1: all of them.
LONG = os.environ.get("STAGEWATCH_FAULTS_LONG") == "1"


@pytest.mark.parametrize("table", ["stage_executions", "runs"] if LONG else ["runs"])
def test_folders_named_like_the_next_commits_are_moved_aside_and_the_daemon_keeps_writing(
    home: Path, table: str
) -> None:
    """Folders made by hand where the next commits of a table go (delta-rs reads only files,
    so the table reads, but no commit of that version can go in): the daemon moves them out of
    the log, says so once, writes on, and doctor names them until they are deleted."""
    daemon, before = _running_history(home)
    try:
        log = DaemonHome(home).table(table) / "_delta_log"
        version = DeltaTable(str(log.parent)).version()
        strays = [log / f"{version + step:020d}.json" for step in (1, 2, 3)]
        for stray in strays:
            stray.mkdir()
        assert all(stray.name in _doctor_tables(home)["detail"] for stray in strays)
        later = [run_pipeline(home, frames=3) for _ in range(2)]
        for run_id in later:
            daemon.audit(run_id)
        wait_for(lambda: set(later) <= set(read_table(home, "runs")["run_id"].to_pylist()))
        _rows_once(home, later)
        assert daemon.status()["stats"]["write_errors"] == 0
        assert not any(stray.is_dir() for stray in strays)  # commits of those versions are there now
        for stray in strays:  # said once each
            assert daemon.log().count(f"{stray} in its Delta log is no file of the log") == 1
    finally:
        assert daemon.stop() == 0
    tables = _doctor_tables(home)
    assert not tables["ok"] and "3 stray entr" in tables["detail"] and strays[0].name in tables["detail"]
    assert _seen(home)["runs"] != before["runs"]  # the later runs are listed with the earlier ones


def test_a_file_named_like_a_future_commit_makes_the_daemon_rebuild_the_table_while_it_runs(home: Path) -> None:
    """A stray file past the table's last commit (a gap: the log cannot be read): the daemon
    finds it at its next commit, sets the table aside and rebuilds it from the event log
    without a restart; readers see every row again, doctor names the table set aside."""
    daemon, before = _running_history(home)
    try:
        log = DaemonHome(home).table("stage_executions") / "_delta_log"
        (log / f"{DeltaTable(str(log.parent)).version() + 5:020d}.json").write_text("garbage")
        assert "the stage_executions table cannot be read" in _cli(home, "stats").stderr
        later = run_pipeline(home, frames=4)
        daemon.audit(later)
        wait_for(lambda: later in _run_ids(home, "stage_executions"), timeout_s=60)
        _rows_once(home, [later])
        shown = _seen(home)
        assert len(shown["query"]["stages"]) == len(before["query"]["stages"]) + 4
        assert daemon.log().count("moved to") == 1 and "replayed from its start" in daemon.log()
        assert daemon.status()["pid"] == daemon.process.pid  # no restart
    finally:
        assert daemon.stop() == 0
    tables = _doctor_tables(home)
    assert not tables["ok"] and "stage_executions-" in tables["detail"]


def _counts(home: Path) -> dict[str, int]:
    return {table: read_table(home, table).num_rows for table in TABLES}


@pytest.mark.parametrize("removed", ["runs", "stage_executions/_delta_log", "samples"] if LONG else ["runs", "samples"])
def test_a_table_removed_while_the_daemon_runs_is_rebuilt_without_a_restart(home: Path, removed: str) -> None:
    """rm -rf of a table (or its log) under a running daemon: at its next flush the daemon
    finds the table gone, and rebuilds it from the event log (`samples`: the accuracy worker
    judges every run again): every row is back, and the rows of runs that come later are
    written once."""
    daemon, before = _running_history(home)
    try:
        pid, counts = daemon.process.pid, _counts(home)
        shutil.rmtree(DaemonHome(home).metrics / removed)
        wait_for(lambda: _counts(home) == counts, timeout_s=60)
        assert _seen(home) == before
        assert "was deleted while the daemon ran" in daemon.log()
        if removed == "runs":  # deleted again as soon as it is back: found again
            shutil.rmtree(DaemonHome(home).metrics / removed)
            wait_for(lambda: _counts(home) == counts, timeout_s=60)
            assert _seen(home) == before
        later = run_pipeline(home, frames=3)
        daemon.audit(later)
        wait_for(lambda: later in read_table(home, "runs")["run_id"].to_pylist())
        _rows_once(home, [later])
        assert daemon.status()["pid"] == pid and daemon.status()["stats"]["write_errors"] == 0
    finally:
        assert daemon.stop() == 0
    table = removed.split("/")[0]
    tables = _doctor_tables(home)
    assert not tables["ok"] and f"{table}-" in tables["detail"]
    set_aside = list(DaemonHome(home).quarantined_tables.iterdir())
    assert len(set_aside) == (2 if removed == "runs" else 1)
    assert all("deleted while the daemon ran" in (aside / "why.txt").read_text() for aside in set_aside)


def test_the_newest_commit_deleted_under_a_running_daemon_is_found_at_its_next_commit(home: Path) -> None:
    """The newest commit file of a table deleted while the daemon runs: its rows were gone for
    good (the daemon's next commit took its version, and every later marker passed the gap; doctor
    and a restart saw nothing). The daemon sees the table's version go back at its next commit and
    rebuilds the table from the event log: every row once."""
    daemon, _ = _running_history(home)
    try:
        first = run_pipeline(home, frames=3)  # a commit of this daemon's: the version it saw
        daemon.audit(first)
        wait_for(lambda: first in _run_ids(home, "stage_executions") or None)
        _last_commit(home, "stage_executions").unlink()
        later = run_pipeline(home, frames=3)
        daemon.audit(later)
        wait_for(lambda: "is back at version" in daemon.log() or None, timeout_s=60)
        wait_for(lambda: {first, later} <= set(_run_ids(home, "stage_executions")) or None, timeout_s=60)
        _rows_once(home, [first, later])
    finally:
        assert daemon.stop() == 0
    rebuilt = _seen(home)
    assert _cli(home, "rebuild").returncode == 0
    assert _seen(home) == rebuilt  # the rebuilt table holds what the event log holds


def test_a_table_deleted_before_a_flush_looked_at_it_is_found_and_rebuilt(home: Path) -> None:
    """The daemon looks for deleted tables at its periodic flush, among those it saw there last
    time. A table that a commit made between two flushes (rows committed as the loop idled) and
    that was deleted before the next one was never seen: it stayed deleted, with no warning,
    until the daemon's next start."""
    daemon = DaemonProcess(home, env={"STAGEWATCH_DAEMON_FLUSH_INTERVAL_S": "10"}).start()
    try:
        wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
        run_id = run_pipeline(home, frames=50)
        wait_for(lambda: read_table(home, "stage_executions").num_rows == 50, interval_s=0.01)
        shutil.rmtree(DaemonHome(home).table("stage_executions"))
        wait_for(lambda: "was deleted while the daemon ran" in daemon.log(), timeout_s=30)
        wait_for(lambda: read_table(home, "stage_executions").num_rows == 50, timeout_s=30)
        _rows_once(home, [run_id])
    finally:
        assert daemon.stop() == 0


def test_a_commit_whose_log_checkpoint_fails_is_not_made_twice(home: Path) -> None:
    """A folder in place of `_delta_log/_last_checkpoint`: delta-rs makes a log checkpoint
    after every 100th commit, which fails there after the commit went in. The disk queue
    tries a failed write again: the rows must not be appended twice."""
    store = Store(home)
    store.write_rows("stage_executions", _stage_rows(0))
    hint = DaemonHome(home).table("stage_executions") / "_delta_log" / "_last_checkpoint"
    hint.mkdir()
    for commit in range(1, 110):
        try:
            store.write_rows("stage_executions", _stage_rows(commit))
        except OSError:  # as the disk queue does: the same write again
            store.write_rows("stage_executions", _stage_rows(commit))
    lsns = read_table(home, "stage_executions")["lsn"].to_pylist()
    assert sorted(lsns) == list(range(110))
    assert not hint.exists()  # moved: the next log checkpoint goes in


def _stage_rows(lsn: int) -> list[dict]:
    return _rows(lsn, 1, T0)


def test_kill_9_while_the_daemon_rebuilds_a_deleted_table_loses_and_doubles_no_row(home: Path) -> None:
    """The table deleted under the running daemon, which is killed at points along its
    rebuild: each start after finds the table behind its checkpoint (or holding its rows up to
    its marker) and every row is there once."""
    daemon = DaemonProcess(home).start()
    run_ids = [run_pipeline(home, frames=3000) for _ in range(2)]
    for run_id in run_ids:
        daemon.audit(run_id)
    assert daemon.stop() == 0
    before = _seen(home)
    for delay_s in (0.5, 1.0, 1.5, 2.5):
        daemon.start()
        wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
        _delete_stage_executions(home)
        time.sleep(delay_s)
        daemon.kill()
    daemon.start()
    try:
        try:
            wait_for(lambda: _seen(home) == before, timeout_s=60)
        except AssertionError:
            after = _seen(home)
            raise AssertionError(f"{_first_difference(before, after)}\n{daemon.log()[-2000:]}") from None
        _rows_once(home, run_ids)
    finally:
        assert daemon.stop() == 0


def _delete_stage_executions(home: Path) -> None:
    """Once its Delta log is there: the rows of a rebuild reach the table through the writer's
    queue, after the daemon logs that the rebuild is done."""
    table = DaemonHome(home).table("stage_executions")
    wait_for(lambda: has_log(table), timeout_s=60)
    shutil.rmtree(table)


def _held_inside_a_rebuild(daemon: DaemonProcess) -> bool:
    """Delete the stage_executions table under the running daemon and hold it (SIGSTOP) inside
    the rebuild that follows (status.json says it rebuilds). The daemon runs in slices, stopped
    between them while we look: a rebuild of a small log takes a tenth of a second, which a
    watcher polling beside a busy daemon missed. The slices start at a few milliseconds and
    grow: on a loaded machine a daemon given 2 ms at a time was barely scheduled and did not
    notice the deletion in a minute. False if the rebuild ended unseen."""
    rebuilt = daemon.log().count("rebuilt the")
    _delete_stage_executions(daemon.home)
    started = time.monotonic()
    while (elapsed_s := time.monotonic() - started) < 60:
        daemon.process.send_signal(signal.SIGSTOP)
        if "rebuilding" in daemon.status():
            return True  # held inside it
        if daemon.log().count("rebuilt the") > rebuilt:
            daemon.process.send_signal(signal.SIGCONT)
            return False  # done between two looks
        daemon.process.send_signal(signal.SIGCONT)
        time.sleep(min(0.002 * (1 + elapsed_s), 0.05))
    return False


def test_a_table_being_rebuilt_is_said_so_by_the_cli_and_the_dashboard(home: Path) -> None:
    """While the daemon rebuilt a table deleted under it, `query` and the pages showed no rows or
    part of them and said nothing: status.json says which tables are being rebuilt and how far,
    the reading commands warn of it, the pages show it in their banners; then it is gone."""
    from stagewatch.ui import _widgets

    daemon = DaemonProcess(home).start()
    try:
        run_id = run_pipeline(home, frames=3000)
        daemon.audit(run_id)
        wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
        assert any(_held_inside_a_rebuild(daemon) for _ in range(5)), "never found the daemon rebuilding"
        try:
            said = "is rebuilding the stage_executions table(s) from its event log"
            for command in (("query", "--run", run_id[:8]), ("stats",), ("runs",), ("show", run_id[:8])):
                result = _cli(home, *command)
                assert result.returncode == 0 and said in result.stderr, (command, result.stderr)
            assert any(said in alert.object for alert in _widgets.banners(home))
        finally:
            daemon.process.send_signal(signal.SIGCONT)
        wait_for(lambda: "rebuilding" not in daemon.status(), timeout_s=60)
        assert read_table(home, "stage_executions").num_rows == 3000
        after = _cli(home, "query", "--run", run_id[:8])
        assert after.returncode == 0 and "rebuilding" not in after.stderr, after.stderr
        assert not [alert for alert in _widgets.banners(home) if "rebuild" in alert.object]
    finally:
        assert daemon.stop() == 0


def _other_home(home: Path, frames: int = 300) -> tuple[Path, dict[str, object]]:
    """Another home beside `home`, its daemon stopped, holding a run of `frames` stages: an event
    log longer than `_history`'s (its tables' commit markers lie past that log's end)."""
    other = home.parent / "hB"
    daemon = DaemonProcess(other).start()
    daemon.audit(run_pipeline(other, frames=frames))
    assert daemon.stop() == 0
    return other, _seen(other)


def _log_end(home: Path) -> int:
    """The lsn the home's event log ends at (its last segment's base plus its size)."""
    return max(int(path.stem) + path.stat().st_size for path in (home / "events").glob("*.seg"))


def _doctor(home: Path) -> tuple[int, dict[str, dict[str, object]]]:
    """doctor's exit status and its checks by name."""
    result = _cli(home, "doctor", "--json")
    return result.returncode, {check["name"]: check for check in json.loads(result.stdout)["checks"]}


def test_a_table_linked_to_another_homes_table_is_refused_and_rebuilt_both_ways(home: Path) -> None:
    """metrics/runs moved away and replaced by a link to another home's runs table: readers
    listed the other home's runs as this home's, doctor said healthy, and the daemon read the
    other table's commit marker (past its own log's end) and dropped this home's new rows. Now
    readers refuse the link naming it and its target, doctor names it (exit 1), and the daemon
    at start moves the link (never its target) aside and rebuilds its own table; the other
    home's table is left as it was, and so the other way round."""
    before = _history(home)
    other, others = _other_home(home)
    runs, theirs = DaemonHome(home).table("runs"), DaemonHome(other).table("runs")
    runs.rename(home.parent / "x")
    runs.symlink_to(theirs, target_is_directory=True)
    said = f"{runs} is a link to {theirs.resolve()}, outside this home"
    listed = _cli(home, "runs", "--json")
    assert said in listed.stderr and "Traceback" not in listed.stderr, listed.stderr
    assert not any(run["run_id"] in listed.stdout for run in others["runs"])
    code, checks = _doctor(home)
    assert code == 1 and not checks["tables"]["ok"] and said in checks["tables"]["detail"]
    daemon = DaemonProcess(home).start()
    try:
        wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
        assert _seen(home) == before
        assert said in daemon.log()
        later = run_pipeline(home, frames=3)  # a new run's rows go to this home's table
        daemon.audit(later)
        wait_for(lambda: later in read_table(home, "runs")["run_id"].to_pylist())
    finally:
        assert daemon.stop() == 0
    assert runs.is_dir() and not runs.is_symlink()
    (aside,) = DaemonHome(home).quarantined_tables.iterdir()
    assert (aside / "runs").is_symlink() and "outside this home" in (aside / "why.txt").read_text()
    assert _seen(other) == others and not (theirs / "why.txt").exists()  # untouched
    mine = _seen(home)
    shutil.rmtree(theirs)  # and the other way round
    theirs.symlink_to(runs, target_is_directory=True)
    daemon = DaemonProcess(other).start()
    try:
        wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
        assert _seen(other) == others
        assert f"{theirs} is a link to {runs.resolve()}, outside this home" in daemon.log()
    finally:
        assert daemon.stop() == 0
    assert _seen(home) == mine


def test_a_table_linked_inside_the_metrics_folder_of_a_linked_home_reads(home: Path) -> None:
    """metrics/ itself a link to another disk, and a table folder a link inside it: this home's."""
    before = _history(home)
    metrics = DaemonHome(home).metrics
    disk = home.parent / "disk"
    disk.mkdir()
    metrics.rename(disk / "metrics")
    metrics.symlink_to(disk / "metrics", target_is_directory=True)
    (disk / "metrics" / "runs").rename(disk / "metrics" / "runs-real")
    (metrics / "runs").symlink_to(disk / "metrics" / "runs-real", target_is_directory=True)
    assert _seen(home) == before
    assert _doctor_tables(home)["ok"]


def test_a_table_whose_marker_is_past_the_event_logs_end_is_rebuilt(home: Path) -> None:
    """Another home's runs table copied in place of this home's: its commit marker lies past
    this home's event log's end, so it cannot be this log's table; the daemon took it as
    holding every row and listed the other home's runs. Now it is set aside and rebuilt."""
    before = _history(home)
    other, _ = _other_home(home)
    assert committed_lsn(other, "runs", DAEMON_APP) >= _log_end(home)
    runs = DaemonHome(home).table("runs")
    shutil.rmtree(runs)
    shutil.copytree(DaemonHome(other).table("runs"), runs)
    daemon = DaemonProcess(home).start()
    try:
        wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
        assert _seen(home) == before
        assert "past the end of this home's event log" in daemon.log()
    finally:
        assert daemon.stop() == 0
    (aside,) = DaemonHome(home).quarantined_tables.iterdir()
    assert "past the end of this home's event log" in (aside / "why.txt").read_text()


def test_doctor_says_a_table_behind_the_daemons_checkpoint(home: Path) -> None:
    """The newest commit of a table deleted while the daemon was stopped: the table holds fewer
    rows than the daemon's checkpoint counted. The daemon replays at its next start; doctor said
    healthy meanwhile (and stats silently missed the rows). Now doctor says the table is behind
    (exit 1) while no daemon runs, and is healthy again once the daemon has rebuilt it."""
    _history(home)  # its rows may all be in one commit (a loaded machine): one more run's, in another
    daemon = DaemonProcess(home).start()
    later = run_pipeline(home, frames=3)
    daemon.audit(later)
    wait_for(lambda: later in _run_ids(home, "stage_executions") or None)
    assert daemon.stop() == 0
    before = _seen(home)
    table = "stage_executions"
    marker = committed_lsn(home, table, DAEMON_APP)
    assert len(list((DaemonHome(home).table(table) / "_delta_log").glob("*.json"))) > 1
    _last_commit(home, table).unlink()
    assert -1 < committed_lsn(home, table, DAEMON_APP) < marker  # reads, short of the marker
    code, checks = _doctor(home)
    detail = checks["tables"]["detail"]
    assert code == 1 and not checks["tables"]["ok"]
    assert "the stage_executions table holds fewer rows than the daemon's checkpoint counted" in detail, detail
    assert "stagewatch rebuild" in detail and "the runs table" not in detail
    daemon = DaemonProcess(home).start()
    try:
        wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
        assert _seen(home) == before
        assert "hold fewer rows than the checkpoint counted" in daemon.log()
        assert _doctor_tables(home)["ok"]
    finally:
        assert daemon.stop() == 0
    assert _doctor_tables(home)["ok"]


def test_a_missing_middle_commit_is_named_in_words(home: Path) -> None:
    """A commit deleted from the middle of a table's log: readers printed delta-rs's Rust dump,
    cut before it named the missing version. Now they say which commit is missing."""
    daemon = DaemonProcess(home).start()
    log = DaemonHome(home).table("stage_executions") / "_delta_log"
    for _ in range(5):  # a commit (or more) a run
        daemon.audit(run_pipeline(home, frames=3))
        if len(list(log.glob("*.json"))) >= 3:
            break
    assert daemon.stop() == 0
    versions = sorted(int(path.stem) for path in log.glob("*.json"))
    assert len(versions) >= 3
    missing = versions[1]
    (log / f"{missing:020d}.json").unlink()
    for command in (("stats",), ("query",)):
        result = _cli(home, *command)
        assert result.returncode != 0 and "the stage_executions table cannot be read" in result.stderr
        assert f"commit {missing} ({missing:020d}.json) is missing" in result.stderr, result.stderr
        assert "ParsedLogPath" not in result.stderr and "Traceback" not in result.stderr
    assert f"commit {missing} ({missing:020d}.json) is missing" in _doctor_tables(home)["detail"]


def test_a_table_linked_to_another_homes_table_while_the_daemon_runs_is_rebuilt(home: Path) -> None:
    """The link made under a running daemon: its next commit to the table wrote this home's rows
    into the other home's table. Now the commit finds the link, and the daemon moves it aside
    and rebuilds its own table without a restart; the other home's table is left as it was."""
    other, others = _other_home(home)
    daemon, before = _running_history(home)
    try:
        runs, theirs = DaemonHome(home).table("runs"), DaemonHome(other).table("runs")
        runs.rename(home.parent / "x")
        runs.symlink_to(theirs, target_is_directory=True)
        later = run_pipeline(home, frames=3)
        daemon.audit(later)
        wait_for(lambda: runs.is_dir() and not runs.is_symlink(), timeout_s=60)
        wait_for(lambda: later in _run_ids(home, "runs"), timeout_s=60)
        assert f"{runs} is a link to {theirs.resolve()}, outside this home" in daemon.log()
        assert daemon.status()["pid"] == daemon.process.pid  # no restart
        _rows_once(home, [later])
    finally:
        assert daemon.stop() == 0
    assert _seen(other) == others
    assert _seen(home)["runs"] != before["runs"]  # the later run listed with the earlier ones
