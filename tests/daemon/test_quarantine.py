"""The quarantine keeps what it refused, within bounds: the oldest days go first, then new
records are counted, not kept; days past retention go; doctor reports what is there."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._stats import DaemonStats, WriteErrors
from stagewatch.daemon.ingest._decode import Rejected
from stagewatch.daemon.ingest._quarantine import KEEP_DAYS, Quarantine
from tests.conftest import DaemonProcess, wait_for
from tests.daemon.test_daemon_faults import _send_raw


def _quarantine(home: Path, max_bytes: int) -> Quarantine:
    stats = DaemonStats()
    return Quarantine(DaemonHome(home), stats, WriteErrors(stats), max_bytes=max_bytes)


def test_the_oldest_days_make_room_then_records_are_counted_not_kept(tmp_path: Path) -> None:
    layout = DaemonHome(tmp_path)
    layout.quarantine.mkdir()
    for day in ("2026-11-01", "2026-11-02"):
        layout.quarantine_file(day).write_bytes(b"x" * 40_000)
    quarantine = _quarantine(tmp_path, max_bytes=100_000)
    rejected = [Rejected("invalid event: test", b"y" * 10_000, "flooder")]
    for _ in range(3):  # about 13 KB each once base64'd
        quarantine.keep(rejected)
    days = sorted(p.stem for p in layout.quarantine.glob("*.jsonl"))
    assert "2026-11-01" not in days and "2026-11-02" in days  # the oldest went first
    for _ in range(10):
        quarantine.keep(rejected)
    assert quarantine.stats.quarantine_dropped > 0 and quarantine.stats.invalid == 13
    total = sum(p.stat().st_size for p in layout.quarantine.glob("*.jsonl"))
    assert total <= 100_000


def test_days_past_retention_are_removed(tmp_path: Path) -> None:
    layout = DaemonHome(tmp_path)
    layout.quarantine.mkdir()
    now = datetime(2026, 12, 2, tzinfo=UTC)
    old, recent = now - timedelta(days=KEEP_DAYS + 1), now - timedelta(days=1)
    for day in (old, recent):
        layout.quarantine_file(f"{day:%Y-%m-%d}").write_text("{}\n")
    assert _quarantine(tmp_path, 10**9).expire(now) == 1
    assert [p.stem for p in layout.quarantine.glob("*.jsonl")] == [f"{recent:%Y-%m-%d}"]


def test_doctor_reports_rejected_events(daemon: DaemonProcess) -> None:
    _send_raw(daemon, [b"\xc1 not a batch"])
    wait_for(lambda: daemon.status()["stats"]["invalid"] == 1)
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "doctor", "--home", str(daemon.home), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert result.returncode == 1 and not checks["quarantine"]["ok"]
    assert checks["quarantine"]["detail"].startswith("1 rejected event(s)")
