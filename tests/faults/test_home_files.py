"""Files in the home that are not what they claim (issue 12): a stray or copied segment, a
symlinked one, a Parquet part damaged inside a compressed page. Each is set aside or read
around, reported by doctor, and costs no other row."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

import stagewatch
from stagewatch._records import scan_records
from stagewatch.daemon import Filters, query_stages
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.query._readmodels import read_table
from stagewatch.daemon.query._sql import DamagedPartWarning
from stagewatch.daemon.tables._tables import snapshot_files
from tests.conftest import DaemonProcess, sw, wait_for


def _stages(daemon: DaemonProcess, count: int, pipeline: str = "p") -> str:
    with stagewatch.init(pipeline=pipeline, home=daemon.home) as run:
        for index in range(count):
            with run.stage("detection", sample_id=f"f{index}"):
                pass
    assert daemon.audit(run.id)["counts"]["ok"] == count
    return run.id


def _doctor(home: Path) -> dict:
    return {c["name"]: c for c in json.loads(sw("doctor", "--home", str(home), "--json").stdout)["checks"]}


def _segments(home: Path) -> list[Path]:
    return sorted(DaemonHome(home).events.glob("*.seg"))


def test_a_stray_segment_past_64_bits_is_set_aside_and_rows_keep_coming(daemon: DaemonProcess) -> None:
    _stages(daemon, 50)
    assert daemon.stop() == 0
    (DaemonHome(daemon.home).events / "09999999999999999999.seg").write_bytes(b"123456789")
    daemon.start()
    _stages(daemon, 30, "after")
    rows = wait_for(lambda: (t := read_table(daemon.home, "stage_executions")).num_rows >= 80 and t)
    assert rows.num_rows == 80
    assert [p.name for p in DaemonHome(daemon.home).quarantined_segments.iterdir()] == ["09999999999999999999.seg"]
    assert not _doctor(daemon.home)["segments"]["ok"]
    daemon.stop()
    assert sw("rebuild", "--home", str(daemon.home)).returncode == 0
    assert read_table(daemon.home, "stage_executions").num_rows == 80


def test_a_copied_segment_adds_no_row_twice_and_doctor_says_so(daemon: DaemonProcess) -> None:
    run_id = _stages(daemon, 200)
    assert daemon.stop() == 0
    (segment,) = _segments(daemon.home)
    end = int(segment.stem) + segment.stat().st_size
    # run_started, 200 stages, run_finished, and a heartbeat a second if the machine is slow
    records = sum(1 for _ in scan_records(segment.read_bytes()))
    assert records >= 202
    shutil.copy(segment, segment.with_name(f"{end:020d}.seg"))  # the same records again, further on
    DaemonHome(daemon.home).checkpoint().unlink()  # no checkpoint: the whole log is replayed
    daemon.start()
    assert wait_for(lambda: daemon.status()["stats"]["recovery"].get("replay_duplicates")) == records
    assert daemon.audit(run_id)["counts"]["ok"] == 200
    assert read_table(daemon.home, "stage_executions").num_rows == 200
    assert not _doctor(daemon.home)["event log"]["ok"]


def test_a_segment_that_overlaps_another_is_set_aside(daemon: DaemonProcess) -> None:
    _stages(daemon, 20)
    assert daemon.stop() == 0
    (segment,) = _segments(daemon.home)
    shutil.copy(segment, segment.with_name(f"{int(segment.stem) + 10:020d}.seg"))
    daemon.start()
    assert [p.name for p in DaemonHome(daemon.home).quarantined_segments.iterdir()] == [f"{10:020d}.seg"]
    assert read_table(daemon.home, "stage_executions").num_rows == 20


def test_a_symlinked_segment_is_never_followed(daemon: DaemonProcess, tmp_path: Path) -> None:
    _stages(daemon, 20)
    assert daemon.stop() == 0
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"not yours" * 100)
    (segment,) = _segments(daemon.home)
    end = int(segment.stem) + segment.stat().st_size
    os.symlink(outside, segment.with_name(f"{end + 100:020d}.seg"))  # would be the last segment
    daemon.start()
    _stages(daemon, 10, "after")
    assert outside.read_bytes() == b"not yours" * 100  # neither truncated nor appended to
    assert wait_for(lambda: read_table(daemon.home, "stage_executions").num_rows == 30)
    assert [p.is_symlink() for p in DaemonHome(daemon.home).quarantined_segments.iterdir()] == [True]


def test_a_part_damaged_inside_a_compressed_page_is_read_around(daemon: DaemonProcess) -> None:
    _stages(daemon, 40)
    first = _stages(daemon, 40, "second")
    assert daemon.stop() == 0
    parts = [Path(path) for path in snapshot_files(daemon.home, "stage_executions")]
    assert len(parts) >= 2
    data = bytearray(parts[-1].read_bytes())
    quarter = len(data) // 4  # the middle half: pages, not the footer; zstd no longer decodes
    data[quarter : 3 * quarter] = random.Random(12).randbytes(2 * quarter)
    parts[-1].write_bytes(bytes(data))
    for command in (["query", "--json"], ["export", "--output", "-"], ["stats", "--json"]):
        result = sw(*command, "--home", str(daemon.home))
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and f"damaged data file {parts[-1]}" in result.stderr
    assert sw("rebuild", "--home", str(daemon.home)).returncode == 0
    assert read_table(daemon.home, "stage_executions").num_rows == 80
    assert first


def test_a_part_damaged_after_a_query_is_read_again_not_answered_from_memory(daemon: DaemonProcess) -> None:
    """Answers are kept by the files they read: the same query over a file rewritten since (the
    same name and size) reads it again, and says it is damaged."""
    _stages(daemon, 40)
    _stages(daemon, 40, "second")
    assert daemon.stop() == 0
    assert query_stages(daemon.home, Filters()).num_rows == 80
    assert query_stages(daemon.home, Filters()).num_rows == 80  # the kept answer
    parts = [Path(path) for path in snapshot_files(daemon.home, "stage_executions")]
    data = bytearray(parts[-1].read_bytes())
    quarter = len(data) // 4
    data[quarter : 3 * quarter] = random.Random(12).randbytes(2 * quarter)
    parts[-1].write_bytes(bytes(data))
    with pytest.warns(DamagedPartWarning, match=str(parts[-1])):
        assert query_stages(daemon.home, Filters()).num_rows < 80


def test_stray_files_among_the_parts_leave_the_rest_answering(daemon: DaemonProcess) -> None:
    """An empty file, garbage under a data file's name and a folder named like one in a
    partition: no commit names them, so they are no part of the table and nothing reads them."""
    _stages(daemon, 40)
    assert daemon.stop() == 0
    (partition,) = DaemonHome(daemon.home).partitions("stage_executions")
    (partition / "part-99999999999999999991.parquet").write_bytes(b"")
    (partition / "part-99999999999999999992.parquet").write_bytes(b"not parquet" * 100)
    (partition / "part-99999999999999999993.parquet").mkdir()
    for command in (["query", "--json"], ["stats", "--json"], ["export", "--output", "-"]):
        result = sw(*command, "--home", str(daemon.home))
        assert result.returncode == 0, result.stderr
        assert "damaged" not in result.stderr and "Traceback" not in result.stderr
    assert json.loads(sw("stats", "--json", "--home", str(daemon.home)).stdout)[0]["count"] == 40
