"""Aged partitions are compacted into one file each; rows are neither lost nor doubled."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stagewatch.daemon._compaction import compact, finish_interrupted
from stagewatch.daemon._readmodels import read_table, to_rows
from stagewatch.daemon._store import Store

DAY_NS = 86_400 * 10**9
T0 = 1_790_000_000 * 10**9  # 2026-09-21


def _rows(first_lsn: int, count: int, start_ns: int) -> list[dict]:
    return [{"run_id": f"r{first_lsn + i}", "pipeline": "p", "stage": "s", "status": "ok", "sample_id": None,
             "client_id": "c", "span": first_lsn + i, "parent_span": None, "start_time": start_ns,
             "end_time": start_ns + 1, "duration_ms": 1.0, "rss_start_mb": None, "rss_peak_mb": None,
             "rss_end_mb": None, "gpu_peak_mb": None, "input_path": None, "output_paths": [],
             "error_type": None, "error_message": None, "lsn": first_lsn + i} for i in range(count)]  # fmt: skip


def _history(home: Path) -> Store:
    store = Store(home)
    for flush in range(20):  # 20 flushes over three days: 20 small parts
        store.write_rows("stage_executions", _rows(flush * 10, 10, T0 + (flush % 3) * DAY_NS))
    return store


def test_old_partitions_become_one_file_and_keep_every_row(home: Path) -> None:
    _history(home)
    before = sorted(map(str, to_rows(read_table(home, "stage_executions").drop(["date"]))))
    now = datetime.fromtimestamp((T0 + 3 * DAY_NS) / 1e9, UTC)
    assert compact(home / "metrics", now, min_age_days=2) == 1  # only the oldest day is 2 days old
    partitions = sorted((home / "metrics" / "stage_executions").glob("date=*"))
    assert [len(list(p.glob("*.parquet"))) for p in partitions] == [1, 7, 6]
    after = sorted(map(str, to_rows(read_table(home, "stage_executions").drop(["date"]))))
    assert after == before


@pytest.mark.parametrize("crash_after", ["new_written", "old_moved_aside"])
def test_an_interrupted_swap_is_finished_without_loss_or_doubles(home: Path, crash_after: str, monkeypatch) -> None:
    _history(home)
    before = read_table(home, "stage_executions").num_rows
    real_replace, calls = os.replace, []

    def crashing_replace(source, target):
        calls.append(source)
        if crash_after == "new_written" or len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crashing_replace)
    now = datetime.fromtimestamp((T0 + 3 * DAY_NS) / 1e9, UTC)
    with pytest.raises(KeyboardInterrupt):
        compact(home / "metrics", now)
    monkeypatch.setattr(os, "replace", real_replace)
    assert read_table(home, "stage_executions").num_rows <= before  # never doubled, even mid-swap
    finish_interrupted(home / "metrics")
    assert read_table(home, "stage_executions").num_rows == before
    assert not [p for p in (home / "metrics" / "stage_executions").iterdir() if p.name.startswith(".")]
    shutil.rmtree(home / "metrics")
