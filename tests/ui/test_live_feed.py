"""The live feed against a real daemon: every stage end of a pipeline reaches the board."""

from __future__ import annotations

import stagewatch
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
