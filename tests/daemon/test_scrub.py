"""Scrubbing finds damage in sealed segments and Parquet parts before a reader trips on it,
and remembers it (state/scrub.json) until repaired."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.ingest._eventlog import EventLog
from stagewatch.daemon.maintenance._scrub import load, scrub_next_segment
from stagewatch.daemon.tables._store import Store
from stagewatch.daemon.tables._tables import snapshot_files
from tests.daemon.test_compaction import T0, _damage, _rows


def _log_of_segments(home: Path) -> list[Path]:
    log = EventLog(DaemonHome(home).events, segment_bytes=4096)
    log.open()
    for index in range(200):
        log.append([b"record %05d " % index + b"x" * 100])
    log.close()
    return [path for _, path in EventLog(DaemonHome(home).events).segments()]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _doctor(home: Path, *flags: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "doctor", "--home", str(home), "--json", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_the_periodic_pass_checks_one_sealed_segment_at_a_time_and_remembers(tmp_path: Path) -> None:
    segments = _log_of_segments(tmp_path)
    assert len(segments) > 3
    _flip(segments[1], 500)
    home = DaemonHome(tmp_path)
    found = [scrub_next_segment(home) for _ in range(len(segments) - 1)]  # every sealed one, once
    assert [d["segment"] for d in found if d] == [segments[1].name]
    assert segments[-1].name not in {d["segment"] for d in found if d}  # the open one is left alone
    assert set(load(home)["segments"]) == {segments[1].name}
    assert not _doctor(tmp_path)["scrub"]["ok"]  # remembered without scrubbing again
    _flip(segments[1], 500)  # repaired
    for _ in range(len(segments) - 1):
        scrub_next_segment(home)
    assert load(home)["segments"] == {} and _doctor(tmp_path)["scrub"]["ok"]


def test_doctor_scrub_checks_every_segment_and_part(tmp_path: Path) -> None:
    segments = _log_of_segments(tmp_path)
    _flip(segments[2], 300)
    Store(tmp_path).write_rows("stage_executions", _rows(0, 10, T0))
    (part,) = snapshot_files(tmp_path, "stage_executions")
    Path(part).write_bytes(b"PAR1" + b"\x00" * 100 + b"PAR1")
    check = _doctor(tmp_path, "--scrub")["scrub"]
    assert not check["ok"] and segments[2].name in check["detail"] and Path(part).name in check["detail"]


def _cut_short(part: Path) -> None:
    part.write_bytes(part.read_bytes()[:-100])


@pytest.mark.parametrize(
    ("damage", "said"),
    [(_cut_short, "cut short"), (_damage, "footer does not read"), (Path.unlink, "missing")],
)
def test_plain_doctor_names_a_damaged_data_file_what_is_wrong_and_the_way_back(
    tmp_path: Path, damage: Callable[[Path], object], said: str
) -> None:
    store = Store(tmp_path)
    for commit in range(3):
        store.write_rows("stage_executions", _rows(commit * 10, 10, T0))
    assert _doctor(tmp_path)["data files"]["ok"]
    part = Path(snapshot_files(tmp_path, "stage_executions")[1])
    damage(part)
    check = _doctor(tmp_path)["data files"]
    assert not check["ok"]
    assert str(part.relative_to(tmp_path)) in check["detail"] and said in check["detail"]
    assert "stop the daemon, then `stagewatch rebuild`" in check["detail"]
