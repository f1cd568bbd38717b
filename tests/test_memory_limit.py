"""The memory-limit edge: a warning near the limit, and a stage killed without warning
(as the OOM killer does) keeps its last memory reading."""

from __future__ import annotations

import json

import pytest

from stagewatch._memory import memory_limit_bytes, memory_warn_fraction
from stagewatch.daemon.query._readmodels import read_table, to_rows
from tests.conftest import DaemonProcess, run_python, wait_for


def test_the_limit_is_the_cgroup_or_physical_ram() -> None:
    limit, source = memory_limit_bytes()
    assert limit > 64 * 2**20 and (source.startswith("cgroup") or source == "physical RAM")


def test_a_bad_fraction_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("STAGEWATCH_MEMORY_WARN_FRACTION", "1.5")
    with pytest.raises(ValueError, match="between 0 and 1"):
        memory_warn_fraction()


def test_a_stage_near_the_limit_logs_a_warning(daemon: DaemonProcess) -> None:
    code = f"""
import numpy as np, stagewatch
run = stagewatch.init(pipeline="hungry", home={str(daemon.home)!r})
with run.stage("small"):
    pass
with run.stage("big", sample_id="frame_9"):
    block = np.ones(300 * 2**20 // 8)
    del block
print(run.id)
"""
    # A limit fraction so small that only the 300 MB stage crosses it.
    limit = memory_limit_bytes()[0]
    fraction = (200 * 2**20) / limit
    result = run_python(code, env={"STAGEWATCH_MEMORY_WARN_FRACTION": str(fraction)})
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()

    def warnings():
        table = read_table(daemon.home, "logs")
        rows = [r for r in to_rows(table) if r["run_id"] == run_id]
        return rows or None

    rows = wait_for(warnings)
    assert len(rows) == 1, [(r["stage"], r["message"]) for r in rows]
    warning = rows[0]
    assert warning["level"] == "WARNING" and warning["stage"] == "big" and warning["sample_id"] == "frame_9"
    assert "memory limit" in warning["message"] and json.loads(warning["extra"])["rss_peak_mb"] >= 290


def test_a_stage_killed_without_warning_keeps_its_last_memory_reading(daemon: DaemonProcess) -> None:
    code = f"""
import os, signal, time, numpy as np, stagewatch
run = stagewatch.init(pipeline="oom", home={str(daemon.home)!r})
print(run.id, flush=True)
with run.stage("detection"):
    hoard = np.ones(300 * 2**20 // 8)
    time.sleep(2.5)  # heartbeats carry the RSS while the stage runs
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
"""
    result = run_python(code)
    assert result.returncode == -9
    audit = daemon.audit(result.stdout.strip(), timeout_s=30)
    (stage,) = audit["stages"]
    assert stage["status"] == "crashed" and stage["memory"]["rss_end_mb"] >= 290
    assert "last RSS reading" in stage["error"]["message"]
