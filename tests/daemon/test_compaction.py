"""The tables on Delta Lake: compaction, concurrent writers and readers, kill -9 in the middle
of a compaction, damaged data files; rows are neither lost nor doubled."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

import msgpack
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable

import stagewatch
from stagewatch._protocol import pack_event
from stagewatch.daemon import Daemon, DaemonSettings
from stagewatch.daemon.base._derived import ACCURACY_CHECKPOINT
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.ingest._ingest import Group
from stagewatch.daemon.query._readmodels import read_table
from stagewatch.daemon.query._sql import select
from stagewatch.daemon.tables._store import Store, table_writer_properties
from stagewatch.daemon.tables._tables import ACCURACY_APP, DAEMON_APP, committed_lsn, compact, snapshot_files, vacuum
from tests.conftest import DaemonProcess, sw, wait_for

DAY_NS = 86_400 * 10**9
T0 = 1_790_000_000 * 10**9  # 2026-09-21
RUN_ID = "5f0c7a52-4b8e-4d7e-9a57-0d7f6f8f3a10"
REPO = Path(__file__).resolve().parents[2]


def _rows(first_lsn: int, count: int, start_ns: int) -> list[dict]:
    return [
        {
            "run_id": f"r{first_lsn + i}",
            "pipeline": "p",
            "stage": "s",
            "status": "ok",
            "sample_id": None,
            "client_id": "c",
            "span": first_lsn + i,
            "parent_span": None,
            "start_time": start_ns,
            "end_time": start_ns + 1,
            "duration_ms": 1.0,
            "rss_start_mb": None,
            "rss_peak_mb": None,
            "rss_end_mb": None,
            "gpu_peak_mb": None,
            "input_path": None,
            "output_paths": [],
            "error_type": None,
            "error_message": None,
            "lsn": first_lsn + i,
        }
        for i in range(count)
    ]


def _small_files(home: Path, commits: int, rows: int = 10, days: int = 3) -> Store:
    store = Store(home)
    for commit in range(commits):  # a commit each: a small file per commit and day
        store.write_rows("stage_executions", _rows(commit * rows, rows, T0 + (commit % days) * DAY_NS))
    return store


def _lsns(home: Path, table: str = "stage_executions") -> list[int]:
    return sorted(read_table(home, table)["lsn"].to_pylist())


def _compact(home: Path, table: str = "stage_executions") -> int:
    return compact(home, table, table_writer_properties(table))


def test_compaction_bins_the_small_files_of_crowded_partitions_and_keeps_every_row(home: Path) -> None:
    _small_files(home, 30)
    before = len(snapshot_files(home, "stage_executions"))
    assert before == 30
    assert _compact(home) == 30
    assert len(snapshot_files(home, "stage_executions")) == 3  # a file per day
    assert _lsns(home) == list(range(300))
    assert committed_lsn(home, "stage_executions", DAEMON_APP) == 299  # the marker survives compaction
    assert _compact(home) == 0  # nothing small left to bin


def test_a_partition_with_few_small_files_is_left_as_it_is(home: Path) -> None:
    store = Store(home)
    for commit in range(4):  # today's partition: still growing, not sorted yet
        store.write_rows("stage_executions", _rows(commit * 10, 10, time.time_ns()))
    assert _compact(home) == 0 and len(snapshot_files(home, "stage_executions")) == 4


def _row_groups(home: Path, table: str = "stage_executions") -> list[tuple[str, str, int]]:
    groups = []
    for path in snapshot_files(home, table):
        metadata = pq.ParquetFile(path).metadata
        for index in range(metadata.num_row_groups):
            stats = metadata.row_group(index).column(0).statistics  # run_id
            groups.append((stats.min, stats.max, metadata.row_group(index).num_rows))
    return sorted(groups)


def test_a_past_days_partition_is_sorted_by_run_once_so_a_lookup_reads_one_row_group(home: Path) -> None:
    """Random run ids (UUIDs) spread over every file of a day: a lookup by run id reads the
    whole partition, unless the compaction sorted it into row groups of disjoint run ids."""
    store, rows, lsn = Store(home), [], 0
    for _ in range(3):  # three commits, each with runs of the whole id range
        batch = _rows(lsn, 6000, T0)
        for row in batch:
            row["run_id"] = str(uuid.uuid4())
        store.write_rows("stage_executions", batch)
        rows += batch
        lsn += len(batch)
    today = _rows(lsn, 10, time.time_ns())
    store.write_rows("stage_executions", today)
    groups = _row_groups(home)
    assert any(high > low for (_, high, _), (low, _, _) in itertools.pairwise(groups))  # overlapping as written

    assert _compact(home) == 3  # the past day's three files, sorted into one; today's left
    groups = _row_groups(home)
    assert len(groups) > 3 and all(count <= 8192 for _, _, count in groups)
    assert all(high <= low for (_, high, _), (low, _, _) in itertools.pairwise(groups))
    assert _lsns(home) == list(range(lsn + 10))
    wanted = rows[4321]["run_id"]
    found = select(home, "stage_executions", "SELECT lsn FROM rows WHERE run_id = ?", [wanted])
    assert found["lsn"].to_pylist() == [4321]
    assert _compact(home) == 0  # sorted once: the next pass leaves it


def test_run_ids_alike_in_their_first_characters_are_sorted_once_not_at_every_pass(home: Path) -> None:
    """Canonical UUIDs a pipeline numbers itself (00000000-0003-4000-8000-000000000017) differ
    past the z-order's key only in their last part: no sort makes such runs' row groups
    disjoint, and a partition judged on whole ids stayed unsorted, rewritten at every pass for
    good. What the key holds (the first twelve hex digits here) is still sorted by."""

    def run_of(lsn: int) -> str:
        return f"00000000-000{lsn % 16:x}-4000-8000-{lsn * 7919 % 31:012d}"

    store, lsn = Store(home), 0
    for _ in range(3):
        batch = _rows(lsn, 6000, T0)
        for row in batch:
            row["run_id"] = run_of(row["lsn"])
        store.write_rows("stage_executions", batch)
        lsn += len(batch)
    assert _compact(home) == 3
    groups = _row_groups(home)
    assert all(high[:14] <= low[:14] for (_, high, _), (low, _, _) in itertools.pairwise(groups))
    assert _compact(home) == 0
    assert _lsns(home) == list(range(lsn))
    wanted = run_of(417)
    found = select(home, "stage_executions", "SELECT count(*) AS n FROM rows WHERE run_id = ?", [wanted])
    assert found["n"].to_pylist() == [sum(run_of(i) == wanted for i in range(lsn))]


def test_a_pass_sorts_the_latest_unsorted_days_first_and_a_few_at_a_time(home: Path) -> None:
    """A home of an earlier version has every past day unsorted: a pass must still end soon."""
    store = Store(home)
    for commit in range(6):  # two files a day over three past days, each of random run ids
        batch = _rows(commit * 50, 50, T0 + (commit % 3) * DAY_NS)
        for row in batch:
            row["run_id"] = str(uuid.uuid4())
        store.write_rows("stage_executions", batch)
    days = sorted(p.name for p in (home / "metrics" / "stage_executions").glob("date=*"))

    def files_of(day: str) -> int:
        return sum(f"/{day}/" in path for path in snapshot_files(home, "stage_executions"))

    assert _compact(home) == 4  # the two latest days
    assert [files_of(day) for day in days] == [2, 1, 1]
    assert _compact(home) == 2 and [files_of(day) for day in days] == [1, 1, 1]
    assert _compact(home) == 0
    assert _lsns(home) == list(range(300))


def test_vacuum_keeps_the_files_a_recent_snapshot_still_uses(home: Path) -> None:
    """Readers may hold the file list of an older snapshot: the files a compaction replaced
    stay on disk for the vacuum's retention (an hour)."""
    _small_files(home, 30)
    listed = snapshot_files(home, "stage_executions")
    _compact(home)
    assert vacuum(home, "stage_executions") == 0
    assert all(Path(path).exists() for path in listed)


def test_a_reader_during_compactions_sees_every_row_once(home: Path) -> None:
    _small_files(home, 40)
    stop = threading.Event()

    def compacting() -> None:
        store = Store(home)
        commit = 40
        while not stop.is_set():  # more small files, compacted again and again
            for _ in range(8):
                store.write_rows("stage_executions", _rows(commit * 10, 10, T0))
                commit += 1
            _compact(home)

    thread = threading.Thread(target=compacting)
    thread.start()
    try:
        for _ in range(40):
            counted = select(home, "stage_executions", "SELECT count(*) AS n, count(DISTINCT lsn) AS d FROM rows")
            assert counted["n"][0].as_py() == counted["d"][0].as_py() >= 400  # no row twice, none gone
            table = read_table(home, "stage_executions", columns=["lsn"])
            assert table.num_rows == pc.count_distinct(table["lsn"]).as_py() >= 400
    finally:
        stop.set()
        thread.join()
    lsns = _lsns(home)
    assert lsns == list(range(len(lsns)))


APPENDER = """
import sys
from stagewatch.daemon.tables._store import Store
from stagewatch.daemon.base._derived import ACCURACY_CHECKPOINT
from stagewatch.daemon.tables._tables import ACCURACY_APP
from tests.daemon.test_compaction import T0, _sample_rows
store = Store(sys.argv[1], ACCURACY_CHECKPOINT, ACCURACY_APP)
for commit in range(int(sys.argv[2])):
    store.write_rows("samples", _sample_rows((commit + 1) * 5, 5, T0))
"""


def _sample_rows(first_lsn: int, count: int, time_ns: int) -> list[dict]:
    return [
        {"run_id": f"r{first_lsn + i}", "pipeline": "p", "stage": "s", "sample_id": f"s{i}", "time": time_ns}
        | {"status": "correct", "lsn": first_lsn + i}
        for i in range(count)
    ]


def test_the_accuracy_worker_appends_while_the_daemon_compacts_its_table(home: Path) -> None:
    """Two processes commit to `samples`: appends of the worker's and the daemon's compactions
    rebase over each other; each row is there once and the worker's marker is its last lsn."""
    Store(home).write_rows("samples", _sample_rows(0, 5, T0))  # the table exists
    appender = subprocess.Popen([sys.executable, "-c", APPENDER, str(home), "60"], cwd=REPO)
    compactions = 0
    while appender.poll() is None:
        compactions += _compact(home, "samples") > 0
    assert appender.returncode == 0
    _compact(home, "samples")
    assert compactions > 0
    lsns = _lsns(home, "samples")
    assert lsns == list(range(61 * 5))
    assert committed_lsn(home, "samples", ACCURACY_APP) == 61 * 5 - 1


COMPACTOR = """
import sys
from stagewatch.daemon.tables._store import table_writer_properties
from stagewatch.daemon.tables._tables import compact
print("compacting", flush=True)
while True:
    compact(sys.argv[1], "stage_executions", table_writer_properties("stage_executions"))
"""


def test_kill_9_during_a_compaction_loses_and_doubles_no_row(home: Path) -> None:
    """A compaction killed at any point: its commit is either in the log or not (the files it
    wrote without a commit belong to no snapshot), so every row is there exactly once."""
    store = Store(home)
    commit = 0
    for delay_s in (0.05, 0.15, 0.3, 0.5, 0.8):
        for _ in range(24):  # enough small files for a pass
            store.write_rows("stage_executions", _rows(commit * 20, 20, T0 + (commit % 2) * DAY_NS))
            commit += 1
        compactor = subprocess.Popen(
            [sys.executable, "-c", COMPACTOR, str(home)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        assert compactor.stdout.readline() == "compacting\n"
        time.sleep(delay_s)
        compactor.send_signal(signal.SIGKILL)
        compactor.wait()
        assert _lsns(home) == list(range(commit * 20))
    assert committed_lsn(home, "stage_executions", DAEMON_APP) == commit * 20 - 1


def test_the_daemon_compacts_as_rows_come_and_a_kill_keeps_each_row_once(home: Path) -> None:
    """The real daemon, flushing every 50 ms and compacting every 0.3 s: a stream of stages
    leaves a few files, not one per flush; kill -9 and a restart keep each row once."""
    env = {"STAGEWATCH_DAEMON_FLUSH_INTERVAL_S": "0.05", "STAGEWATCH_DAEMON_MERGE_INTERVAL_S": "0.3"}
    daemon = DaemonProcess(home, env=env).start()
    try:
        with stagewatch.init(pipeline="stream", home=home) as run:
            for index in range(60):
                with run.stage("detection", sample_id=f"frame_{index:03d}"):
                    time.sleep(0.03)
        wait_for(lambda: read_table(home, "stage_executions").num_rows == 60)
        assert len(DeltaTable(str(home / "metrics" / "stage_executions")).history()) > 8  # committed as they came
        wait_for(lambda: len(snapshot_files(home, "stage_executions")) < 8)
        daemon.kill()
        daemon.start()
        wait_for(lambda: daemon.status().get("pid") == daemon.process.pid)
        samples = read_table(home, "stage_executions")["sample_id"].to_pylist()
        assert sorted(samples) == [f"frame_{index:03d}" for index in range(60)]
    finally:
        if daemon.process is not None:
            daemon.kill()


def _in_process_daemon(home: Path, bind: bool = True, **settings: object) -> Daemon:
    """A daemon in this process, recovered (and bound): its parts can be driven one by one."""
    layout = DaemonHome(home)
    daemon = Daemon(
        DaemonSettings(home=home, endpoint=layout.ingest_endpoint, live_endpoint=layout.live_endpoint, **settings)
    )
    daemon.lock.take()
    daemon.recover()
    if bind:
        daemon.ingest.bind()
    return daemon


def _commit_and_flush(daemon: Daemon, seq: int, day: int = 0) -> None:
    """A stage event of `day` days after T0 through ingest, its rows queued (not waited for)."""
    event = msgpack.unpackb(_stage_event(seq))
    event["start_ts_ns"] = event["ts_ns"] = T0 + day * DAY_NS
    group = Group()
    daemon.ingest.take(group, [pack_event(event)], "c")
    daemon.ingest.commit(group)
    daemon.writer.flush(daemon.projector)


def _crash(daemon: Daemon) -> None:  # as kill -9: nothing flushed, nothing checkpointed
    daemon.release()


def _stage_event(seq: int) -> bytes:
    return pack_event(
        {
            "v": 1,
            "client_id": "c",
            "seq": seq,
            "run_id": RUN_ID,
            "type": "stage_finished",
            "ts_ns": T0,
            "start_ts_ns": T0,
            "stage": "detection",
            "span": seq,
            "duration_ms": 1.0,
        }
    )


def test_rows_committed_past_the_checkpoint_are_not_written_again_by_recovery(home: Path) -> None:
    """A crash between a commit and the checkpoint: recovery replays from the checkpoint and
    drops the replayed rows the table holds (its commit's marker), writing the rest once."""
    daemon = _in_process_daemon(home)
    checkpoints = iter([True] * 5 + [False] * 100)  # a checkpoint with the first flushes, none after
    daemon.writer._throttle.due = lambda key, now: key != "checkpoint" or next(checkpoints)
    for seq in range(1, 21):
        _commit_and_flush(daemon, seq, day=seq % 2)
        assert daemon.writer.drain()
    assert daemon.writer.checkpoint_lsn < daemon.log.end_lsn  # the table holds rows past the checkpoint
    _crash(daemon)
    daemon = _in_process_daemon(home)  # recovery, then its own flush
    assert daemon.stats.recovery["from_lsn"] < daemon.stats.recovery["tables_committed_lsn"]["stage_executions"]
    _crash(daemon)
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 21))


def test_compaction_runs_beside_the_loop_while_rows_are_committed(home: Path, monkeypatch) -> None:
    """A compaction pass on its own thread while the loop commits rows; recovery keeps each once."""
    from stagewatch.daemon.tables import _tables

    daemon = _in_process_daemon(home)
    for seq in range(1, 25):
        _commit_and_flush(daemon, seq)
    assert daemon.writer.drain()
    compacting, go = threading.Event(), threading.Event()
    binned = _tables.crowded_partitions

    def held(*args: object) -> list[str]:
        compacting.set()
        assert go.wait(10)
        return binned(*args)

    monkeypatch.setattr(_tables, "crowded_partitions", held)
    daemon.maintenance.compact_tables()
    assert compacting.wait(10)
    for seq in range(25, 31):
        _commit_and_flush(daemon, seq)
    assert daemon.writer.drain(passes=False)  # committed while the pass is held
    assert daemon.writer.threads.passes.running
    go.set()
    assert daemon.writer.drain()
    assert len(snapshot_files(home, "stage_executions")) < 10
    _crash(daemon)
    _crash(_in_process_daemon(home))
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 31))


def _damage(part: Path) -> None:
    """A bad block: the same size, the footer's last bytes overwritten."""
    data = part.read_bytes()
    part.write_bytes(data[:-64] + b"\0" * 64)


def test_a_damaged_data_file_is_skipped_with_a_warning_naming_it_and_rebuild(home: Path) -> None:
    store = Store(home)
    for flush in range(3):
        store.write_rows("stage_executions", _rows(flush * 10, 10, T0))
    damaged = snapshot_files(home, "stage_executions")[1]
    _damage(Path(damaged))
    result = sw("stats", "--home", str(home), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["count"] == 20
    assert f"skipped the damaged data file {damaged}" in result.stderr and "stagewatch rebuild" in result.stderr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_table(home, "stage_executions").num_rows == 20
    assert any(damaged in str(warning.message) for warning in caught)


def test_a_damaged_data_file_leaves_the_other_partitions_and_tables_compacted(home: Path) -> None:
    """One damaged file in the first table's oldest partition: the daemon's compaction passes
    still bin the small files of that table's other days and of every other table, and its
    log names the table and the file."""
    store = Store(home)
    for commit in range(24):  # 12 small files on each of two days
        store.write_rows("stage_executions", _rows(commit * 10, 10, T0 + (commit % 2) * DAY_NS))
    Store(home, ACCURACY_CHECKPOINT, ACCURACY_APP).write_rows("samples", _sample_rows(1000, 5, T0))
    for commit in range(1, 12):
        Store(home, ACCURACY_CHECKPOINT, ACCURACY_APP).write_rows("samples", _sample_rows(1000 + commit * 5, 5, T0))
    damaged = next(path for path in snapshot_files(home, "stage_executions") if "date=2026-09-21" in path)
    _damage(Path(damaged))
    env = {"STAGEWATCH_DAEMON_MERGE_INTERVAL_S": "0.3"}
    daemon = DaemonProcess(home, env=env).start()
    try:
        wait_for(lambda: len(snapshot_files(home, "samples")) == 1)
        wait_for(lambda: len([f for f in snapshot_files(home, "stage_executions") if "date=2026-09-22" in f]) == 1)
        assert len([f for f in snapshot_files(home, "stage_executions") if "date=2026-09-21" in f]) == 12
        wait_for(lambda: "cannot compact the stage_executions table" in daemon.log())
        assert str(Path(damaged).relative_to(home)) in daemon.log() and "stagewatch rebuild" in daemon.log()
        assert daemon.process.poll() is None
        time.sleep(2)  # several passes more: the damage is said once, and no write was refused
        assert daemon.log().count("cannot compact the stage_executions table") == 1
        assert "refused writes" not in daemon.log() and "cannot compact the tables" not in daemon.log()
    finally:
        daemon.kill()
    assert sorted(read_table(home, "samples")["lsn"].to_pylist()) == list(range(1000, 1060))
