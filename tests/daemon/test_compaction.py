"""Small parts are merged by size tier, aged partitions into one file; rows are neither lost nor doubled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import stagewatch
from stagewatch._home import Home
from stagewatch._protocol import pack_event
from stagewatch.daemon import Daemon, DaemonSettings, _compaction, _maintenance, _readmodels, _sql
from stagewatch.daemon._compaction import (
    carry_out,
    compact,
    finish_interrupted,
    merge_steps,
    tier_groups,
    tier_plan,
)
from stagewatch.daemon._ingest import Group
from stagewatch.daemon._query import Filters, query_stages
from stagewatch.daemon._readmodels import read_table, to_rows
from stagewatch.daemon._store import Store, first_lsn
from tests.conftest import DaemonProcess, wait_for

DAY_NS = 86_400 * 10**9
T0 = 1_790_000_000 * 10**9  # 2026-09-21
RUN_ID = "5f0c7a52-4b8e-4d7e-9a57-0d7f6f8f3a10"


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


def _history(home: Path) -> Store:
    store = Store(home)
    for flush in range(20):  # 20 flushes over three days: 20 small parts
        store.write_rows("stage_executions", _rows(flush * 10, 10, T0 + (flush % 3) * DAY_NS))
    return store


def test_old_partitions_become_one_file_and_keep_every_row(home: Path) -> None:
    _history(home)
    before = sorted(map(str, to_rows(read_table(home, "stage_executions").drop(["date"]))))
    now = datetime.fromtimestamp((T0 + 3 * DAY_NS) / 1e9, UTC)
    assert compact(home, now, min_age_days=2) == 1  # only the oldest day is 2 days old
    partitions = sorted((home / "metrics" / "stage_executions").glob("date=*"))
    assert [len(list(p.glob("*.parquet"))) for p in partitions] == [1, 7, 6]
    after = sorted(map(str, to_rows(read_table(home, "stage_executions").drop(["date"]))))
    assert after == before


def _rows_seen(home: Path) -> list[str]:
    return sorted(map(str, to_rows(read_table(home, "stage_executions").drop(["date"]))))


@pytest.mark.parametrize("crash", ["before_exchange", "after_exchange", "fallback_after_moving_aside"])
def test_an_interrupted_swap_is_finished_without_loss_or_doubles(home: Path, crash: str, monkeypatch) -> None:
    _history(home)
    before = _rows_seen(home)
    real_rmtree, real_replace = shutil.rmtree, os.replace

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    def fail_second_replace(source, target):  # the partition moved aside, the new one not in yet
        if Path(source).name.startswith("date="):
            real_replace(source, target)
            return
        raise KeyboardInterrupt("killed")

    if crash == "before_exchange":
        monkeypatch.setattr(_compaction, "exchange_paths", killed)
    elif crash == "after_exchange":
        monkeypatch.setattr(
            _compaction.shutil,
            "rmtree",
            lambda path, **kw: killed() if ".new" in str(path) else real_rmtree(path, **kw),
        )
    else:
        monkeypatch.setattr(_compaction, "exchange_paths", lambda a, b: False)
        monkeypatch.setattr(_compaction.os, "replace", fail_second_replace)
    now = datetime.fromtimestamp((T0 + 3 * DAY_NS) / 1e9, UTC)
    with pytest.raises(KeyboardInterrupt):
        compact(home, now)
    monkeypatch.undo()
    seen = _rows_seen(home)
    if crash == "fallback_after_moving_aside":
        assert set(seen) < set(before)  # the one window where rows are missing: never doubled
    else:
        assert seen == before  # the atomic exchange: whole before and after
    finish_interrupted(home)
    assert _rows_seen(home) == before
    assert not [p for p in (home / "metrics" / "stage_executions").iterdir() if p.name.startswith(".")]


def _part(lsn: int) -> Path:
    return Path(f"part-{lsn:020d}.parquet")


def test_tier_groups_merge_each_sixteen_parts_of_one_size_tier_oldest_first() -> None:
    small = [(_part(lsn), 3_000) for lsn in range(40)]
    groups = tier_groups(small[::-1], fan_in=16)  # order given does not matter: lsn decides
    assert groups == [[_part(lsn) for lsn in range(16)], [_part(lsn) for lsn in range(16, 32)]]
    mixed = [(_part(lsn), 3_000) for lsn in range(15)] + [(_part(100 + lsn), 3_000_000) for lsn in range(16)]
    assert tier_groups(mixed, fan_in=16) == [[_part(100 + lsn) for lsn in range(16)]]
    assert tier_groups([(_part(0), 0)] * 3, fan_in=16) == []


def test_a_busy_day_stays_at_a_few_parts_and_keeps_every_row_once(home: Path) -> None:
    store, written = Store(home), 0
    for flush in range(300):  # as the daemon: a part per flush, a merge pass every few flushes
        count = 1 + flush % 7
        store.write_rows("stage_executions", _rows(written, count, T0 + flush * 10**9))
        written += count
        if flush % 5 == 4:
            carry_out(home, tier_plan(home))
    carry_out(home, tier_plan(home))
    parts = list((home / "metrics" / "stage_executions").glob("date=*/part-*.parquet"))
    assert len(parts) < 25 and tier_groups([(p, p.stat().st_size) for p in parts]) == []  # no tier full
    table = read_table(home, "stage_executions")
    assert sorted(table["lsn"].to_pylist()) == list(range(written))
    merged = [p for p in parts if "-" in p.stem[len("part-") :]]
    assert merged, "some parts were merged"
    for part in merged:  # named by the first and last lsn of their rows
        own = pq.read_table(part, columns=["lsn"])["lsn"].to_pylist()
        assert [min(own), max(own)] == [int(n) for n in part.stem[len("part-") :].split("-")]
    assert to_rows(query_stages(home, Filters(run="r123")))[0]["lsn"] == 123


def _listing(home: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in (home / "metrics" / "stage_executions").glob("date=*/part-*.parquet")}


def test_a_part_name_never_comes_back_with_other_rows(home: Path) -> None:
    """What keeps readers from double counting: a reader that listed the folder before a merge
    opens each listed name as it was, or finds it gone; never the merged rows under an old name."""
    store, seen = Store(home), {}
    for flush in range(120):
        store.write_rows("stage_executions", _rows(flush * 3, 3, T0))
        carry_out(home, tier_plan(home, fan_in=4))
        for name, inode in _listing(home).items():
            assert seen.setdefault(name, inode) == inode, f"{name} was reused for other rows"
    assert read_table(home, "stage_executions").num_rows == 360


def test_a_read_that_races_a_merge_lists_again_and_counts_each_row_once(home: Path, monkeypatch) -> None:
    store = Store(home)
    for flush in range(16):
        store.write_rows("stage_executions", _rows(flush * 3, 3, T0))
    real_dataset, listings = ds.dataset, []

    def dataset_then_merge(*args, **kwargs):  # the merge lands between listing the files and reading them
        listed = real_dataset(*args, **kwargs)
        listings.append(listed.files)
        if len(listings) == 1:
            assert carry_out(home, tier_plan(home, fan_in=16)) == 1
        return listed

    monkeypatch.setattr(_readmodels.ds, "dataset", dataset_then_merge)
    lsns = read_table(home, "stage_executions")["lsn"].to_pylist()
    assert sorted(lsns) == list(range(48))
    assert len(listings) == 2 and len(listings[0]) == 16 and len(listings[1]) == 1


def test_a_query_that_races_a_merge_lists_again_and_counts_each_row_once(home: Path, monkeypatch) -> None:
    """The same race for the query layer: DuckDB is handed a list whose parts a swap then
    removed; it reads again on a fresh list."""
    store = Store(home)
    for flush in range(16):
        store.write_rows("stage_executions", _rows(flush * 3, 3, T0))
    real_listing, listings = _sql.snapshot_files, []

    def listing_then_merge(*args, **kwargs):  # the merge lands between listing the files and reading them
        listings.append(real_listing(*args, **kwargs))
        if len(listings) == 1:
            assert carry_out(home, tier_plan(home, fan_in=16)) == 1
        return listings[-1]

    monkeypatch.setattr(_sql, "snapshot_files", listing_then_merge)
    assert sorted(query_stages(home, Filters())["lsn"].to_pylist()) == list(range(48))
    assert [len(listed) for listed in listings] == [16, 1]


def test_the_daemon_merges_todays_parts_as_they_come(home: Path) -> None:
    """The real daemon, flushing every 50 ms and merging every 0.3 s: a stream of 60 stages
    leaves a few parts, not one per flush, and a restart keeps each row once."""
    daemon = DaemonProcess(
        home, env={"STAGEWATCH_DAEMON_FLUSH_INTERVAL_S": "0.05", "STAGEWATCH_DAEMON_MERGE_INTERVAL_S": "0.3"}
    ).start()
    try:
        with stagewatch.init(pipeline="stream", home=home) as run:
            for index in range(60):
                with run.stage("detection", sample_id=f"frame_{index:03d}"):
                    time.sleep(0.06)  # about a flush a stage: a part each, before merging
        wait_for(lambda: read_table(home, "stage_executions").num_rows == 60 and len(_listing(home)) < 16)
        assert [name for name in _listing(home) if "-" in name[len("part-") :]], "merged parts"
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
    layout = Home(home)
    daemon = Daemon(
        DaemonSettings(home=home, endpoint=layout.ingest_endpoint, live_endpoint=layout.live_endpoint, **settings)
    )
    daemon.lock.take()
    daemon.recover()
    if bind:
        daemon.ingest.bind()
    return daemon


def _hold_merges(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Each merge of a group sets the first event, then waits for the second: a pass held
    in the middle, while the test writes beside it."""
    merging, go = threading.Event(), threading.Event()
    merged = _compaction._merged

    def held(*args: object):
        merging.set()
        assert go.wait(10)
        return merged(*args)

    monkeypatch.setattr(_compaction, "_merged", held)
    return merging, go


def _commit_and_flush(daemon: Daemon, seq: int, day: int = 0) -> None:
    """A stage event of `day` days after T0 through ingest, its part queued (not waited for)."""
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


def test_a_merge_over_rows_past_the_checkpoint_waits_for_a_new_one(home: Path) -> None:
    """Recovery drops the parts past the checkpoint and replays them: a merged part that held
    such rows under a lower name would be kept and replayed too (every such row twice). The
    merge runs on the disk thread behind a checkpoint of its own."""
    daemon = _in_process_daemon(home)
    checkpoints = iter([True] * 10 + [False] * 100)  # a checkpoint with the first 10 parts, none after
    daemon.writer._throttle.due = lambda key, now: key != "checkpoint" or next(checkpoints)
    for seq in range(1, 21):  # 20 flushes, a part each
        group = Group()
        daemon.ingest.take(group, [_stage_event(seq)], "c")
        daemon.ingest.commit(group)
        daemon.flush()
    daemon.maintenance.merge_small_parts()  # groups of four parts: parts 9 to 12 across the checkpoint
    assert daemon.writer.drain()
    assert daemon.writer.checkpoint_lsn == daemon.log.end_lsn
    assert any("-" in name[len("part-") :] for name in _listing(home))
    _crash(daemon)
    _crash(_in_process_daemon(home))  # recovery, then its own flush
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 21))


def test_parts_written_past_a_merge_passes_checkpoint_stay_out_of_its_plan(home: Path) -> None:
    """Row writes queued after a merge pass's checkpoint may be written before the pass plans
    (it runs on a thread of its own, beside the disk thread's writes): the pass plans over the
    parts its checkpoint covers only, or a group across the checkpoint would hold rows that
    recovery replays."""
    daemon = _in_process_daemon(home)
    checkpoints = [True]
    daemon.writer._throttle.due = lambda key, now: key != "checkpoint" or checkpoints[0]

    def commit(seq: int) -> None:
        group = Group()
        daemon.ingest.take(group, [_stage_event(seq)], "c")
        daemon.ingest.commit(group)

    for seq in range(1, 7):
        commit(seq)
        daemon.flush()
    parts_written, start = threading.Event(), daemon.writer.passes.start

    def after_the_parts(make_steps):  # the pass plans once the parts below are on disk
        parts_written.wait(10)
        yield from make_steps()

    daemon.writer.passes.start = lambda make_steps: start(lambda: after_the_parts(make_steps))
    daemon.maintenance.merge_small_parts()  # a checkpoint with parts 1 to 6, then the pass
    checkpoints[0] = False
    for seq in range(7, 13):
        commit(seq)
        daemon.writer.flush(daemon.projector)  # a part each, queued without waiting
    assert daemon.writer.drain(passes=False)
    parts_written.set()
    assert daemon.writer.drain()
    merged = [name for name in _listing(home) if "-" in name[len("part-") :]]
    assert len(merged) == 1  # parts 1 to 4; not 5 to 8, across the checkpoint
    _crash(daemon)
    _crash(_in_process_daemon(home))  # recovery drops the parts past the checkpoint and replays them
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 13))


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), ValueError("a bug")])
def test_a_merge_that_fails_is_reported_and_the_writes_behind_it_go_on(
    home: Path, failure: Exception, monkeypatch
) -> None:
    """A merge pass (started by the disk thread, on a thread of its own) that raises is
    reported (a refused write, or an internal error) and never halts the parts queued after it."""
    daemon = _in_process_daemon(home)

    def commit_and_flush(seq: int) -> None:
        group = Group()
        daemon.ingest.take(group, [_stage_event(seq)], "c")
        daemon.ingest.commit(group)
        daemon.flush()

    for seq in range(1, 9):
        commit_and_flush(seq)

    def fail(*args: object, **kwargs: object) -> int:
        raise failure

    monkeypatch.setattr(_maintenance, "merge_steps", fail)
    errors = (daemon.stats.write_errors, daemon.stats.internal_errors)
    daemon.maintenance.merge_small_parts()
    commit_and_flush(9)  # queued behind the failed merge
    assert not daemon.writer.jobs.halted
    counted = (daemon.stats.write_errors - errors[0], daemon.stats.internal_errors - errors[1])
    assert counted == ((1, 0) if isinstance(failure, OSError) else (0, 1))
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 10))
    daemon.flush(final=True)
    _crash(daemon)


def test_a_merge_pass_stops_at_its_deadline_and_reports_progress_per_swap(home: Path) -> None:
    store = Store(home)
    for flush in range(40):  # two days of 20 parts
        store.write_rows("stage_executions", _rows(flush * 3, 3, T0 + (flush % 2) * DAY_NS))
    plan = tier_plan(home)
    assert carry_out(home, plan, deadline=time.monotonic() - 1) == 0  # past it: nothing touched
    assert len(_listing(home)) == 40
    swaps = []
    assert carry_out(home, plan, progress=lambda: swaps.append(1)) == 10  # 5 groups of 4 a day
    assert len(swaps) == 2 and len(_listing(home)) == 10
    assert sorted(read_table(home, "stage_executions")["lsn"].to_pylist()) == list(range(120))


def test_a_merge_pass_budget_counts_its_own_swaps_not_the_writes_between_them(home: Path, monkeypatch) -> None:
    """Row writes run between a pass's swaps on the disk thread: a budget in wall time would
    end the pass after a few swaps under a flood (4 groups merged while 60 parts came)."""
    monkeypatch.setattr(_compaction, "SWAP_BYTES", 1)  # a swap for each group of four
    daemon = _in_process_daemon(home, bind=False)  # first: recovery drops parts past its checkpoint
    store = Store(home)
    for flush in range(16):  # four groups of four
        store.write_rows("stage_executions", _rows(flush * 3, 3, T0))
    monkeypatch.setattr(_maintenance, "MERGE_BUDGET_S", 0.5)
    swaps = []
    for groups in daemon.maintenance._merge(covered_lsn=48):
        swaps.append(groups)
        time.sleep(0.3)  # what the jobs that pass it take, not the pass
    assert swaps == [1, 1, 1, 1]
    monkeypatch.setattr(_maintenance, "MERGE_BUDGET_S", 0.0)
    for flush in range(16, 32):
        store.write_rows("stage_executions", _rows(flush * 3, 3, T0))
    assert list(daemon.maintenance._merge(covered_lsn=96)) == [1]  # spent, after its first swap
    _crash(daemon)


def test_a_part_written_between_the_swaps_of_a_pass_is_kept_as_it_is(home: Path, monkeypatch) -> None:
    """On the disk thread, row writes run between a merge pass's swaps (DiskJobs): the plan
    made at its start stands, and a part that arrives meanwhile is neither merged nor lost."""
    monkeypatch.setattr(_compaction, "SWAP_BYTES", 1)  # a swap for each group of four
    store = Store(home)
    for flush in range(8):
        store.write_rows("stage_executions", _rows(flush * 3, 3, T0))
    swaps = merge_steps(home, tier_plan(home))
    assert next(swaps) == 1
    store.write_rows("stage_executions", _rows(24, 3, T0))
    assert list(swaps) == [1]
    assert sorted(_listing(home)) == sorted(
        [
            f"part-{0:020d}-{11:020d}.parquet",
            f"part-{12:020d}-{23:020d}.parquet",
            f"part-{24:020d}.parquet",
        ]
    )
    assert sorted(read_table(home, "stage_executions")["lsn"].to_pylist()) == list(range(27))


def test_parts_that_cannot_be_hard_linked_are_copied(home: Path, monkeypatch) -> None:
    store = Store(home)
    for flush in range(6):
        store.write_rows("stage_executions", _rows(flush * 3, 3, T0))

    def refuse(source, target):  # as protected_hardlinks does for a part another user wrote
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(_compaction.os, "link", refuse)
    assert carry_out(home, tier_plan(home)) == 1
    assert len(_listing(home)) == 3  # the merged part and the two it did not need, copied
    assert sorted(read_table(home, "stage_executions")["lsn"].to_pylist()) == list(range(18))


def _damage(part: Path) -> None:
    """A bad block: the same size, the footer's last bytes overwritten."""
    data = part.read_bytes()
    part.write_bytes(data[:-64] + b"\0" * 64)


def test_a_damaged_part_is_skipped_with_a_warning_and_the_rest_answers(home: Path) -> None:
    store = Store(home)
    for flush in range(3):
        store.write_rows("stage_executions", _rows(flush * 10, 10, T0))
    _damage(sorted(_parts_of(home))[1])
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "stats", "--home", str(home), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["count"] == 20
    assert "stagewatch: warning: skipped the damaged Parquet part" in result.stderr and "rebuild" in result.stderr


def _parts_of(home: Path) -> list[Path]:
    return list((home / "metrics" / "stage_executions").glob("date=*/part-*.parquet"))


def test_the_daemon_moves_a_damaged_part_aside_merges_the_rest_and_rebuild_restores_its_rows(home: Path) -> None:
    env = {"STAGEWATCH_DAEMON_FLUSH_INTERVAL_S": "0.05", "STAGEWATCH_DAEMON_MERGE_INTERVAL_S": "3600"}
    daemon = DaemonProcess(home, env=env).start()
    with stagewatch.init(pipeline="stream", home=home) as run:
        for index in range(12):
            with run.stage("detection", sample_id=f"frame_{index:02d}"):
                time.sleep(0.06)
    wait_for(lambda: read_table(home, "stage_executions").num_rows == 12)
    daemon.stop()
    damaged = sorted(_parts_of(home), key=first_lsn)[2]
    _damage(damaged)
    daemon = DaemonProcess(home, env={**env, "STAGEWATCH_DAEMON_MERGE_INTERVAL_S": "0.3"}).start()
    try:
        quarantined = home / "quarantine" / "parts" / "stage_executions" / damaged.parent.name / damaged.name
        wait_for(quarantined.exists)
        wait_for(lambda: len(_parts_of(home)) < 4)  # the others merged all the same
        assert "damaged Parquet part" in daemon.log()
    finally:
        daemon.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no damaged part left to warn of
        rows = read_table(home, "stage_executions").num_rows
    assert 0 < rows < 12
    assert not _doctor_check(home, "tables")["ok"]
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "rebuild", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    samples = read_table(home, "stage_executions")["sample_id"].to_pylist()
    assert sorted(samples) == [f"frame_{index:02d}" for index in range(12)]
    assert _doctor_check(home, "tables")["ok"]


def _doctor_check(home: Path, name: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "doctor", "--home", str(home), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return {check["name"]: check for check in json.loads(result.stdout)["checks"]}[name]


def test_merged_row_groups_hold_one_status_so_a_failure_query_reads_only_failures(home: Path) -> None:
    store = Store(home)
    for flush in range(8):
        rows = _rows(flush * 3000, 3000, T0)
        for row in rows[::50]:
            row.update(status="failed", error_type="ValueError", error_message="bad frame")
        store.write_rows("stage_executions", rows)
    now = datetime.fromtimestamp((T0 + 3 * DAY_NS) / 1e9, UTC)
    assert compact(home, now) == 1
    (part,) = _parts_of(home)
    metadata = pq.ParquetFile(part).metadata
    status = metadata.schema.names.index("status")
    groups = [metadata.row_group(i).column(status).statistics for i in range(metadata.num_row_groups)]
    assert all(g.min == g.max for g in groups)  # no row group spans two statuses
    failed_groups = [i for i, g in enumerate(groups) if g.min == "failed"]
    assert len(failed_groups) == 1 and metadata.row_group(failed_groups[0]).num_rows == 8 * 60
    fragment = next(ds.dataset(part, format="parquet").get_fragments())
    assert len(fragment.split_by_row_group(filter=ds.field("status") == "failed")) == 1  # statistics prune the rest
    table = read_table(home, "stage_executions")
    assert table.num_rows == 24_000 and sorted(table["lsn"].to_pylist()) == list(range(24_000))


def test_aged_days_are_compacted_beside_the_loop_behind_a_checkpoint(home: Path, monkeypatch) -> None:
    """A busy day's compaction held the loop (and every acknowledgement) for seconds: it runs
    on the passes' thread behind a checkpoint, while the loop commits and flushes; every aged
    day then holds one part, and recovery keeps each row once."""
    daemon = _in_process_daemon(home)
    for seq in range(1, 9):  # four old days of two parts each
        _commit_and_flush(daemon, seq, day=seq % 4)
    assert daemon.writer.drain()
    merging, go = _hold_merges(monkeypatch)
    daemon.maintenance.apply_retention()  # returns with the compaction under way
    assert merging.wait(10)
    _commit_and_flush(daemon, 9, day=0)  # a late part of an aged day, written while the pass merges
    assert daemon.writer.drain(passes=False)
    go.set()
    assert daemon.writer.drain()
    parts = [sorted(p.glob("part-*.parquet")) for p in sorted((home / "metrics" / "stage_executions").glob("date=*"))]
    assert [len(day) for day in parts] == [2, 1, 1, 1]  # the late part stays beside its day's one
    assert all("-" in part.name[len("part-") :] for day in parts for part in day[:1])
    assert [sum(pq.ParquetFile(part).metadata.num_rows for part in day) for day in parts] == [3, 2, 2, 2]
    _crash(daemon)
    _crash(_in_process_daemon(home))
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 10))


def test_parts_written_before_a_column_existed_merge_with_it_empty(home: Path) -> None:
    """A merge reads each part as its own file (the fast way), but a part from an older
    release lacks the GPU columns: it is read into today's schema, the columns null."""
    store = Store(home)
    for flush in range(4):
        store.write_rows("stage_executions", _rows(flush * 10, 10, T0))
    (partition,) = (home / "metrics" / "stage_executions").glob("date=*")
    older = sorted(partition.glob("part-*.parquet"))[:2]
    for part in older:
        pq.write_table(pq.read_table(part).drop(["gpu_source", "gpu_devices"]), part)
    assert carry_out(home, tier_plan(home)) == 1
    (merged,) = partition.glob("part-*.parquet")
    table = pq.read_table(merged)
    assert sorted(table["span"].to_pylist()) == list(range(40))
    assert table["gpu_source"].null_count == 40 and "gpu_devices" in table.schema.names


def test_a_merge_that_fails_halfway_leaves_the_partition_as_it_was(home: Path, monkeypatch) -> None:
    """Groups are merged and written one at a time into the prepared folder: a write refused
    after the first (a full disk) drops that folder, and the partition keeps every part."""
    store = Store(home)
    for flush in range(8):  # two groups of four
        store.write_rows("stage_executions", _rows(flush * 10, 10, T0))
    (partition,) = (home / "metrics" / "stage_executions").glob("date=*")
    before = sorted(part.name for part in partition.iterdir())
    written = []
    write_merged = _compaction._write_merged

    def second_refused(folder: Path, *args: object) -> None:
        if written:
            raise OSError(28, "No space left on device")
        written.append(write_merged(folder, *args))

    monkeypatch.setattr(_compaction, "_write_merged", second_refused)
    with pytest.raises(OSError):
        carry_out(home, tier_plan(home))
    assert len(written) == 1
    assert sorted(part.name for part in partition.iterdir()) == before
    assert not list(partition.parent.glob(".*"))  # no prepared folder left behind
    monkeypatch.setattr(_compaction, "_write_merged", write_merged)
    assert carry_out(home, tier_plan(home)) == 2
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(80))


def test_a_part_written_while_a_swap_merges_is_in_the_folder_swapped_in(home: Path, monkeypatch) -> None:
    """Merges run on a thread of their own while the disk thread writes parts: the partition's
    other parts are linked into the prepared folder just before the exchange, so a part that
    arrived while the groups merged is neither lost nor merged."""
    store = Store(home)
    for flush in range(4):
        store.write_rows("stage_executions", _rows(flush * 3, 3, T0))
    merging, go = _hold_merges(monkeypatch)
    plan = tier_plan(home)
    merger = threading.Thread(target=lambda: list(merge_steps(home, plan, exchange_lock=store.parts_lock)))
    merger.start()
    assert merging.wait(10)
    store.write_rows("stage_executions", _rows(12, 3, T0))  # the disk thread's next part
    go.set()
    merger.join(10)
    assert sorted(_listing(home)) == [f"part-{0:020d}-{11:020d}.parquet", f"part-{12:020d}.parquet"]
    assert sorted(read_table(home, "stage_executions")["lsn"].to_pylist()) == list(range(15))


def test_a_part_write_waits_while_a_swap_exchanges_the_partition(home: Path, monkeypatch) -> None:
    """A part written during the exchange would land in the folder being swapped out and be
    deleted with it: each part's write holds the lock that the swap holds from linking the
    partition's parts to the exchange."""
    store = Store(home)
    for flush in range(4):
        store.write_rows("stage_executions", _rows(flush * 3, 3, T0))
    exchanging, go = threading.Event(), threading.Event()
    exchange = _compaction.exchange_paths

    def slow_exchange(a: Path, b: Path) -> bool:
        exchanging.set()
        assert go.wait(10)
        return exchange(a, b)

    monkeypatch.setattr(_compaction, "exchange_paths", slow_exchange)
    plan = tier_plan(home)
    merger = threading.Thread(target=lambda: list(merge_steps(home, plan, exchange_lock=store.parts_lock)))
    merger.start()
    assert exchanging.wait(10)
    writer = threading.Thread(target=store.write_rows, args=("stage_executions", _rows(12, 3, T0)))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive(), "the part's write waits for the exchange"
    go.set()
    merger.join(10)
    writer.join(10)
    assert sorted(read_table(home, "stage_executions")["lsn"].to_pylist()) == list(range(15))


def test_row_parts_are_written_while_a_merge_pass_runs_and_recovery_keeps_each_row_once(
    home: Path, monkeypatch
) -> None:
    """A pass of merges is started behind its checkpoint on a thread of its own: the disk
    queue goes on writing the parts flushed meanwhile (before, one swap held them all)."""
    daemon = _in_process_daemon(home)
    for seq in range(1, 9):
        _commit_and_flush(daemon, seq)
    assert daemon.writer.drain()
    merging, go = _hold_merges(monkeypatch)
    daemon.maintenance.merge_small_parts()
    assert merging.wait(10)
    for seq in range(9, 13):
        _commit_and_flush(daemon, seq)
    assert daemon.writer.drain(passes=False)  # written while the pass is held
    assert daemon.writer.passes.running
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 13))
    go.set()
    assert daemon.writer.drain()
    assert [name for name in _listing(home) if "-" in name[len("part-") :]]
    _crash(daemon)
    _crash(_in_process_daemon(home))  # recovery drops the parts past the checkpoint and replays them
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == list(range(1, 13))


def test_stopping_the_daemon_ends_a_merge_pass_after_its_current_swap(home: Path, monkeypatch) -> None:
    """Shutdown does not wait for a pass to merge its whole plan: it stops after the swap under
    way, every part stays readable, and the next pass merges the rest."""
    monkeypatch.setattr(_compaction, "SWAP_BYTES", 1)  # a swap for each group of four
    daemon = _in_process_daemon(home, bind=False)
    store = Store(home)
    for flush in range(16):  # four groups of four
        store.write_rows("stage_executions", _rows(flush * 3, 3, T0))
    swapped, go = _hold_merges(monkeypatch)
    assert daemon.writer.passes.start(lambda: daemon.maintenance._merge(covered_lsn=48))
    assert swapped.wait(10)
    stopper = threading.Thread(target=daemon.writer.stop_passes)
    stopper.start()
    go.set()
    stopper.join(10)
    assert not daemon.writer.passes.running
    names = _listing(home)
    assert len([name for name in names if "-" in name[len("part-") :]]) == 1 and len(names) == 13
    assert not daemon.writer.passes.start(lambda: daemon.maintenance._merge(covered_lsn=48))  # none after
    assert sorted(read_table(home, "stage_executions")["lsn"].to_pylist()) == list(range(48))
    _crash(daemon)


def test_a_merge_never_holds_more_than_four_full_parts_of_rows_and_a_big_aged_day_keeps_its_parts(
    home: Path, monkeypatch
) -> None:
    """A merge holds its group's rows in memory: tiers stop at full parts, and an aged day of
    more rows than a merge may hold is not made one part but has each part sorted by status
    alone, once, so memory stays bounded whatever a day holds (a 4.2M-row day merged into one
    part added 2.2 GB to the daemon; capped, 0.2)."""
    monkeypatch.setattr(_compaction, "FULL_PART_ROWS", 40)
    merged_rows = []
    merged = _compaction._merged

    def counted(parts: list[Path], *args: object):
        table, name = merged(parts, *args)
        merged_rows.append(table.num_rows)
        return table, name

    monkeypatch.setattr(_compaction, "_merged", counted)
    store = Store(home)
    for flush in range(64):  # 640 rows in parts of 10, 2% failed: a merge of all would hold 640
        rows = _rows(flush * 10, 10, T0)
        rows[flush % 10]["status"] = "failed" if flush % 3 == 0 else "ok"
        store.write_rows("stage_executions", rows)
    while plan := tier_plan(home):
        carry_out(home, plan)
    assert merged_rows and max(merged_rows) < 4 * 40
    assert len(_listing(home)) == 16  # 40-row parts, full: left as they are
    merged_rows.clear()
    assert compact(home, datetime(2026, 9, 26, tzinfo=UTC)) == 16  # aged: each part sorted alone
    assert merged_rows == [40] * 16
    parts = sorted((home / "metrics" / "stage_executions").glob("date=*/part-*.parquet"))
    for part in parts:
        assert pq.read_metadata(part).metadata[b"stagewatch.layout"] == b"by-status"
        statuses = pq.read_table(part, columns=["status"])["status"].to_pylist()
        assert statuses == sorted(statuses)
    assert compact(home, datetime(2026, 9, 26, tzinfo=UTC)) == 0  # once
    assert sorted(read_table(home, "stage_executions")["lsn"].to_pylist()) == list(range(640))
    monkeypatch.setattr(_compaction, "FULL_PART_ROWS", 200)  # now the day fits one merge (640 < 4 x 200)
    assert compact(home, datetime(2026, 9, 26, tzinfo=UTC)) == 1
    assert len(_listing(home)) == 1
    assert sorted(read_table(home, "stage_executions")["lsn"].to_pylist()) == list(range(640))
    (part,) = (home / "metrics" / "stage_executions").glob("date=*/part-*.parquet")
    assert pq.read_metadata(part).metadata[b"stagewatch.layout"] == b"by-status"


def test_a_tier_merge_of_parts_in_the_aged_layout_is_not_marked_as_in_it(home: Path) -> None:
    """A merged table keeps the first part's schema metadata: a tier merge must not carry the
    aged layout's mark to rows it sorted by run id, or the day would never be sorted again."""
    store = Store(home)
    for flush in range(2):
        store.write_rows("stage_executions", _rows(flush * 10, 10, T0))
    assert compact(home, datetime(2026, 9, 26, tzinfo=UTC)) == 1  # one part, in the aged layout
    for flush in range(2, 5):  # three late parts of the same tier
        store.write_rows("stage_executions", _rows(flush * 10, 10, T0))
    (aged,) = [p for p in (home / "metrics" / "stage_executions").glob("date=*/part-*-*.parquet")]
    groups = [[aged, *sorted(p for p in aged.parent.glob("part-*.parquet") if p != aged)]]
    assert carry_out(home, {aged.parent: groups}) == 1  # as a tier merge would
    (part,) = aged.parent.glob("part-*.parquet")
    assert b"stagewatch.layout" not in (pq.read_metadata(part).metadata or {})
