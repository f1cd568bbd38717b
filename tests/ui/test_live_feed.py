"""The live feed against a real daemon: every stage end of a pipeline reaches the board."""

from __future__ import annotations

import stagewatch
from stagewatch import _protocol as protocol
from stagewatch._records import encode_records
from stagewatch.ui._live import LiveFeed
from tests.conftest import DaemonProcess, wait_for


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
