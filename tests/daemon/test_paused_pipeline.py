"""A pipeline paused past the client timeout (Ctrl-Z then `fg`, a suspended laptop, a C call
that holds the GIL) is declared lost and crashed, provisionally: when it sends again, its real
stage ends and its run's end replace the crash, every stage keeps one row with its real status,
and the audit trail notes the gap."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagewatch.daemon.base._derived import DAEMON_CHECKPOINT, peek
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.query._readmodels import read_table
from tests.conftest import DaemonProcess, wait_for
from tests.daemon.test_rebuild import _read_models

# The pipeline stops itself (SIGSTOP, as Ctrl-Z does) at a point the test chooses: inside a stage
# whose start the daemon has, or right after that stage ended with its end still in the send
# queue (the GIL held so that the sender thread cannot send it: a long C call does the same).
PIPELINE = """
import os, signal, sys
import stagewatch
run = stagewatch.init(pipeline="paused", home={home!r})
print(run.id, flush=True)
with run.stage("preprocessing", sample_id="f0"):
    pass
with run.stage("detection", sample_id="f0"):
    assert run.flush(10)  # the daemon has the stage's start
    if {inside!r}:
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        sys.setswitchinterval(3600)  # from here the GIL stays with this thread until it blocks
if not {inside!r}:
    os.kill(os.getpid(), signal.SIGSTOP)  # the end is queued, not sent
    sys.setswitchinterval(0.005)
with run.stage("postprocessing", sample_id="f0"):
    pass
run.finish()
assert run.flush(10)
"""


@contextlib.contextmanager
def _stoppable(code: str) -> Iterator[subprocess.Popen]:
    """A pipeline process that stops itself: whatever happens, it is resumed and ended."""
    pipeline = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield pipeline
    finally:
        if pipeline.poll() is None:
            os.kill(pipeline.pid, signal.SIGCONT)
            pipeline.kill()


def _stopped(process: subprocess.Popen) -> bool:
    with open(f"/proc/{process.pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.parametrize(
    ("inside", "forgotten", "restarted"),
    [(True, False, False), (False, False, False), (True, True, False), (True, False, True)],
    ids=[
        "stopped-inside-a-stage",
        "stopped-with-its-end-queued",
        "stopped-until-the-crashed-run-was-forgotten",
        "stopped-while-the-daemon-was-killed-and-restarted",
    ],
)
def test_a_pipeline_stopped_past_the_client_timeout_ends_as_it_really_did(
    home: Path, inside: bool, forgotten: bool, restarted: bool
) -> None:
    """`forgotten`: the daemon keeps a finished run in memory for no time, so the crashed run
    is reopened from its audit trail when the pipeline sends again (as after a pause of minutes).
    `restarted`: the daemon is killed (-9) and started again while the pipeline is stopped."""
    env = {"STAGEWATCH_DAEMON_LATE_EVENT_GRACE_S": "0"} if forgotten else {}
    daemon = DaemonProcess(home, env=env).start()
    try:
        _pause_and_resume(daemon, inside, forgotten, restarted)
    finally:
        if daemon.process is not None:
            daemon.kill()


def _forgotten(home: Path, run_id: str) -> bool:
    """Has the daemon forgotten the run but for its audit trail (its checkpoint says so)?"""
    return run_id in ((peek(DAEMON_CHECKPOINT, DaemonHome.of(home)) or {}).get("projector", {}).get("closed") or {})


def _pause_and_resume(daemon: DaemonProcess, inside: bool, forgotten: bool, restarted: bool) -> None:
    with _stoppable(PIPELINE.format(home=str(daemon.home), inside=inside)) as pipeline:
        run_id = pipeline.stdout.readline().strip()
        wait_for(lambda: _stopped(pipeline), 30)
        crashed = daemon.audit(run_id, timeout_s=30)  # declared lost: the run and its open stage crashed
        assert crashed["status"] == "crashed"
        assert [(s["stage"], s["status"]) for s in crashed["stages"]] == [
            ("preprocessing", "ok"),
            ("detection", "crashed"),
        ]
        wait_for(lambda: "crashed" in read_table(daemon.home, "stage_executions")["status"].to_pylist())
        if forgotten:
            wait_for(lambda: _forgotten(daemon.home, run_id), 30)
        if restarted:
            daemon.kill()
            daemon.start()
        os.kill(pipeline.pid, signal.SIGCONT)  # `fg`
        assert pipeline.wait(60) == 0, pipeline.stderr.read()
    audit = wait_for(lambda: (a := daemon.audit(run_id)) and a["status"] != "crashed" and a)
    assert audit["status"] == "ok" and audit["error"] is None and audit["errors"] == []
    assert sorted((s["stage"], s["status"]) for s in audit["stages"]) == [
        ("detection", "ok"),
        ("postprocessing", "ok"),
        ("preprocessing", "ok"),
    ]
    (gap,) = audit["gaps"]
    assert gap["silent_s"] >= daemon.client_timeout_s and gap["stages_resumed"] == 1
    assert gap["silent_from"] < gap["declared_lost_at"] < gap["resumed_at"]
    _one_row_per_stage_with_its_real_status(daemon.home, run_id)
    assert daemon.stop() == 0
    _one_row_per_stage_with_its_real_status(daemon.home, run_id)  # the final flush wrote no other
    live = _read_models(daemon.home)
    rebuild = [sys.executable, "-m", "stagewatch.cli", "rebuild", "--home", str(daemon.home), "--json"]
    result = subprocess.run(rebuild, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _read_models(daemon.home) == live  # the loss, its withdrawal and the real ends, replayed


def _one_row_per_stage_with_its_real_status(home: Path, run_id: str) -> None:
    stages = read_table(home, "stage_executions").sort_by("span")
    assert list(zip(stages["stage"].to_pylist(), stages["status"].to_pylist(), strict=True)) == [
        ("preprocessing", "ok"),
        ("detection", "ok"),
        ("postprocessing", "ok"),
    ]
    runs = read_table(home, "runs")
    assert runs["run_id"].to_pylist() == [run_id] and runs["status"].to_pylist() == ["ok"]


# Stopped twice inside its first stage; between the stops it waits for the test's go (a line on
# stdin) so that the daemon has seen it send again.
TWICE = """
import os, signal, sys
import stagewatch
run = stagewatch.init(pipeline="paused", home={home!r})
print(run.id, flush=True)
with run.stage("detection", sample_id="f0"):
    assert run.flush(10)  # the daemon has the stage's start
    for pause in range(2):
        os.kill(os.getpid(), signal.SIGSTOP)
        sys.stdin.readline()
run.finish()
assert run.flush(10)
"""


def test_a_stage_stopped_twice_past_the_client_timeout_keeps_its_row(daemon: DaemonProcess) -> None:
    """The second loss of a client whose only ended stage was a withdrawn crash failed in
    projection: it and the stage's real end were set aside, the stage had no row."""
    with _stoppable(TWICE.format(home=str(daemon.home))) as pipeline:
        run_id = pipeline.stdout.readline().strip()
        for gaps in (1, 2):
            wait_for(lambda: _stopped(pipeline), 30)
            assert daemon.audit(run_id, timeout_s=30)["status"] == "crashed"
            os.kill(pipeline.pid, signal.SIGCONT)
            wait_for(lambda: len(daemon.audit(run_id, complete=False)["gaps"]) == gaps, 30)  # noqa: B023 (sent again)
            pipeline.stdin.write("go\n")
            pipeline.stdin.flush()
        assert pipeline.wait(60) == 0, pipeline.stderr.read()
    audit = wait_for(lambda: (a := daemon.audit(run_id)) and a["status"] != "crashed" and a)
    assert audit["status"] == "ok" and [(s["stage"], s["status"]) for s in audit["stages"]] == [("detection", "ok")]
    assert len(audit["gaps"]) == 2 and "failed in projection" not in daemon.log()
    stages = read_table(daemon.home, "stage_executions")
    assert stages["status"].to_pylist() == ["ok"]
