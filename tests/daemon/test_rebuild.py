"""`stagewatch rebuild` regenerates the read models from the log, equal to the live ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import stagewatch
from stagewatch.daemon.query._readmodels import load_audit, read_table, to_rows
from tests.conftest import DaemonProcess, run_pipeline, run_python, wait_for


def _read_models(home: Path) -> dict:
    tables = {}
    for name in ("stage_executions", "runs"):
        rows = to_rows(read_table(home, name).drop(["date"]))
        tables[name] = sorted(rows, key=lambda r: (r["run_id"], r.get("client_id") or "", r.get("span") or 0))
    # Each run's trail whole (its head and its stage lines, assembled), and the files themselves.
    audits = {p.parent.name: load_audit(home, p.parent.name) for p in home.glob("runs/*/audit.json")}
    files = {str(p.relative_to(home)): p.read_bytes() for p in home.glob("runs/*/*") if p.suffix in {".json", ".jsonl"}}
    return {"tables": tables, "audits": audits, "files": files}


def test_rebuild_equals_what_the_live_daemon_produced(daemon: DaemonProcess) -> None:
    with stagewatch.init(pipeline="perception", config={"k": 1}, home=daemon.home) as run:
        for i in range(300):
            with run.stage("detection", sample_id=f"f{i}", input_path=f"/d/{i}.png") as st:
                if i == 47:
                    with pytest.raises(ValueError), run.stage("postprocessing"):
                        raise ValueError("bad frame")
                if i % 100 == 0:
                    st.save(f"f{i}.json", {"i": i})
    crashed = run_python(f"""
import os, signal, stagewatch
run = stagewatch.init(pipeline="doomed", home={str(daemon.home)!r})
with run.stage("detection"):
    run.flush(5)
    os.kill(os.getpid(), signal.SIGKILL)
""")
    assert crashed.returncode == -9
    daemon.audit(run.id)
    crashed_run = wait_for(
        lambda: next((p.parent.name for p in daemon.home.glob("runs/*/audit.json") if p.parent.name != run.id), None)
    )
    assert daemon.audit(crashed_run, timeout_s=30)["status"] == "crashed"
    assert daemon.stop() == 0
    live = _read_models(daemon.home)
    assert len(live["audits"][run.id]["stages"]) == 301 and not live["audits"][run.id]["problems"]

    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "rebuild", "--home", str(daemon.home), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["events_replayed"] > 300
    rebuilt = _read_models(daemon.home)
    assert rebuilt == live
    assert (daemon.home / "runs" / run.id / "stages" / "detection" / "f0.json").exists()  # outputs kept


def test_rebuild_refuses_while_a_daemon_runs(daemon: DaemonProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "rebuild", "--home", str(daemon.home)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "stop it before a rebuild" in result.stderr


def test_a_failed_rebuild_leaves_the_old_read_models_and_the_daemon_starts(daemon: DaemonProcess, monkeypatch) -> None:
    """The new read models are built beside the old ones and swapped in only when whole."""
    from stagewatch.daemon import Daemon
    from stagewatch.daemon._rebuild import rebuild
    from stagewatch.daemon.base._layout import DaemonHome

    with stagewatch.init(pipeline="perception", home=daemon.home) as run:
        for i in range(50):
            with run.stage("detection", sample_id=f"f{i}"):
                pass
    daemon.audit(run.id)
    assert daemon.stop() == 0
    live = _read_models(daemon.home)
    checkpoint = (daemon.home / "state" / "checkpoint.msgpack").read_bytes()

    def crash(self, final: bool = False) -> None:
        raise RuntimeError("killed halfway")

    monkeypatch.setattr(Daemon, "flush", crash)
    with pytest.raises(RuntimeError, match="killed halfway"):
        rebuild(daemon.home)
    assert _read_models(daemon.home) == live  # nothing deleted first
    assert (daemon.home / "state" / "checkpoint.msgpack").read_bytes() == checkpoint
    assert DaemonHome(daemon.home).rebuild_staging.is_dir()  # what it had built, left beside
    monkeypatch.undo()
    daemon.start()  # the home still opens
    assert daemon.audit(run.id)["counts"]["ok"] == 50
    assert daemon.stop() == 0
    report = rebuild(daemon.home)
    assert report["events_replayed"] >= 52  # 50 stages, start, end
    assert not DaemonHome(daemon.home).rebuild_staging.exists()
    assert _read_models(daemon.home) == live


def test_doctor_names_what_a_killed_rebuild_left(daemon: DaemonProcess) -> None:
    """`stagewatch rebuild` killed while it builds leaves its staging folder (tens of MB on a
    real home): doctor said nothing of it. Now it names the folder and its size, and says the
    next rebuild clears it (it does)."""
    from tests.daemon.test_delta_log import _doctor

    daemon.audit(run_pipeline(daemon.home, frames=3000))
    assert daemon.stop() == 0
    staging = daemon.home / ".rebuild"  # as docs/storage.md names it
    command = [sys.executable, "-m", "stagewatch.cli", "rebuild", "--home", str(daemon.home)]
    for _ in range(5):  # killed once its staging home holds tables
        rebuild = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda r=rebuild: any(staging.glob("metrics/*/_delta_log")) or r.poll() is not None, 60, 0.005)
        rebuild.kill()
        if rebuild.wait(30) == -9 and staging.is_dir():
            break
    else:
        pytest.fail("the rebuild always ended before it could be killed")
    code, checks = _doctor(daemon.home)
    detail = checks["rebuild"]["detail"]
    assert code == 1 and not checks["rebuild"]["ok"]
    assert str(staging) in detail and " MB" in detail and "the next `stagewatch rebuild` clears it" in detail, detail
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    code, checks = _doctor(daemon.home)
    assert checks["rebuild"]["ok"] and not staging.exists()
