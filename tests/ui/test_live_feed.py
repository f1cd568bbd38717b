"""The live feed against a real daemon: every stage end of a pipeline reaches the board."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pyarrow.dataset as ds

import stagewatch
from stagewatch import _protocol as protocol
from stagewatch._home import ipc_path
from stagewatch._records import encode_records
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.query._readmodels import read_table
from stagewatch.ui._live import LiveFeed
from tests.conftest import DaemonProcess, wait_for
from tests.test_many_homes import IN_PROGRESS


def test_the_board_sees_every_stage_end_and_failure_of_a_real_run(daemon: DaemonProcess) -> None:
    feed = LiveFeed(daemon.home)  # one of its own, not the process-wide one
    try:
        wait_for(lambda: feed.connected, 10)
        run = stagewatch.init(pipeline="watched", home=daemon.home)
        for frame in range(50):
            try:
                with run.stage("detect", sample_id=f"f{frame}"):
                    if frame == 47:
                        raise ValueError("frame 47 is corrupt")
            except ValueError:
                pass
        run.finish()
        assert run.flush(10)
        live = wait_for(lambda: (r := feed.board.runs.get(run.id)) and r.status != "running" and r, 20)
        stage = live.stages["detect"]
        assert (live.pipeline, stage.done, stage.failed) == ("watched", 50, 1)
        assert live.failures[0]["sample_id"] == "f47" and "corrupt" in live.failures[0]["error"]
    finally:
        feed.stop()


def test_the_feed_reads_a_group_as_log_records_and_leaves_heartbeats_out(home) -> None:
    """The daemon publishes a committed group as the log's records, heartbeats included; the
    board folds the rest."""
    run_id = "5f0c7a52-4b8e-4d7e-9a57-0d7f6f8f3a10"
    stage = {"stage": "s", "span": 1, "parent_span": None, "sample_id": None, "input_path": None}
    end = {"start_ts_ns": 2, "duration_ms": 1.0, "output_paths": [], "rss_start_mb": None}
    end |= {"rss_peak_mb": None, "rss_end_mb": None, "gpu_peak_mb": None}
    events = [
        protocol.run_started("c", run_id, 1, pipeline="p", config={}, host="h", pid=1, dataset=None, argv=[]),
        protocol.heartbeat("c", run_id, 2, rss_mb=1.0),
        protocol.stage_finished("c", run_id, 3, **stage, **end),
    ]
    feed = LiveFeed(home)
    try:
        feed._take([b"events", encode_records([protocol.pack_event({**e, "seq": n}) for n, e in enumerate(events)])])
        assert feed.board.events == 2
        assert feed.board.runs[run_id].stages["s"].done == 1
    finally:
        feed.stop()


JOINED_PIPELINE = """
import pathlib, sys, stagewatch
home, go = sys.argv[1], pathlib.Path(sys.argv[2])
run = stagewatch.init(pipeline="joined", home=home)
print(run.id, flush=True)
sample = 0

def one():
    global sample
    for stage in ("decode", "detect"):
        try:
            with run.stage(stage, sample_id=f"s{sample}"):
                if stage == "detect" and sample % 97 == 5:
                    raise ValueError(f"no detections in s{sample}")
        except ValueError:
            pass
    sample += 1

while not go.exists() and sample < 200_000:  # until the dashboard has joined (bounded)
    one()
for _ in range(3_000):  # and on past the join
    one()
run.finish()
assert run.flush(120)
print(sample, flush=True)
"""


def _counts(live) -> dict[str, tuple[int, int]]:
    return {name: (stage.done, stage.failed) for name, stage in live.stages.items()}


def _stored_count(home, run_id: str) -> int:
    return read_table(home, "stage_executions", ds.field("run_id") == run_id, None, ["run_id"]).num_rows


def test_a_board_that_joins_a_run_mid_way_shows_its_whole_count_and_failures(daemon: DaemonProcess) -> None:
    """A dashboard (re)started during a long run: what the feed carried before it listened comes
    from the stored rows, and nothing is counted twice where the two overlap (issue 29, item 11)."""
    go = daemon.home.parent / "joined"
    pipeline = subprocess.Popen(
        [sys.executable, "-c", JOINED_PIPELINE, str(daemon.home), str(go)], stdout=subprocess.PIPE, text=True
    )
    feed = None
    try:
        run_id = pipeline.stdout.readline().strip()
        wait_for(lambda: _stored_count(daemon.home, run_id) > 2_000, 60)  # stored, and still sending
        feed = LiveFeed(daemon.home)
        wait_for(lambda: feed.connected, 10)
        go.touch()
        samples = int(pipeline.stdout.readline())
        assert pipeline.wait(120) == 0
        failed = sum(1 for sample in range(samples) if sample % 97 == 5)
        expected = {"decode": (samples, 0), "detect": (samples, failed)}
        live = wait_for(lambda: (r := feed.board.runs.get(run_id)) and r.ended_at and r, 60)
        with contextlib.suppress(AssertionError):  # the stored rows' last read follows the run's end
            wait_for(lambda: _counts(live) == expected, 30)
        assert _counts(live) == expected
        # The feed carries a group when it is committed to the event log, before its rows are
        # written to the tables: the board may be whole before the last rows are stored.
        wait_for(lambda: _stored_count(daemon.home, run_id) == 2 * samples, 30)
        (stored,) = read_table(daemon.home, "runs", ds.field("run_id") == run_id, None, ["status"]).to_pylist()
        assert live.status == stored["status"] and live.pipeline == "joined"
        assert live.failures[0]["sample_id"] == f"s{max(s for s in range(samples) if s % 97 == 5)}"
    finally:
        if feed is not None:
            feed.stop()
        pipeline.kill()
        pipeline.wait(10)


def test_a_daemon_whose_feed_is_out_of_reach_still_shows_its_runs_and_their_ends(daemon: DaemonProcess) -> None:
    """A home on a shared file system whose daemon runs on another machine: its feed's socket
    cannot be reached from here (removed here: the daemon keeps listening, nothing new can
    connect). Its runs in progress still join the board, from its status.json and stored rows,
    and end when their row is stored, as that row says."""
    ipc_path(DaemonHome(daemon.home).live_endpoint).unlink()
    feed = LiveFeed(daemon.home)
    pipeline = subprocess.Popen(
        [sys.executable, "-c", IN_PROGRESS.format(host="camera-far", home=str(daemon.home))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: feed.connected, 10)
        run_id = pipeline.stdout.readline().strip()
        live = wait_for(lambda: (r := feed.board.runs.get(run_id)) and "detection" in r.stages and r, 30)
        wait_for(lambda: live.stages["detection"].done == 1, 30)
        assert (live.host, live.status, live.ended_at) == ("camera-far", "running", None)
        pipeline.stdin.close()
        assert pipeline.wait(30) == 0
        wait_for(lambda: live.ended_at is not None, 30)
        assert live.status == "ok" and live.stages["detection"].done == 1
    finally:
        feed.stop()
        pipeline.kill()
        pipeline.wait(10)
