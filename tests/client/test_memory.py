"""Per-stage memory peaks: nesting and the real kernel high-water mark (GPU: test_gpu.py)."""

from __future__ import annotations

import numpy as np

import stagewatch
from stagewatch import _run
from stagewatch._memory import PeakTracker, make_rss_tracker

MB = 1024 * 1024


class FakeMark:
    """A resettable high-water mark driven by the test."""

    def __init__(self, start: int = 100) -> None:
        self.current = self.peak = start

    def set(self, value: int) -> None:
        self.current = value
        self.peak = max(self.peak, value)

    def reset(self) -> None:
        self.peak = self.current


def test_an_outer_stage_keeps_the_peak_seen_before_a_nested_stage_reset_it() -> None:
    mark = FakeMark()
    tracker = PeakTracker(lambda: mark.peak, mark.reset)
    outer, _ = tracker.begin()
    mark.set(900)
    mark.set(200)
    inner, start = tracker.begin()  # resets the mark to 200
    assert start == 200
    mark.set(300)
    assert tracker.end(inner)[0] == 300
    assert tracker.end(outer)[0] == 900


def test_the_kernel_peak_sees_a_short_spike_between_start_and_end() -> None:
    source, tracker = make_rss_tracker()
    assert source.resettable  # Linux with /proc
    token, start = tracker.begin()
    spike = np.ones(150 * MB // 8)
    del spike
    peak, end = tracker.end(token)
    assert peak - start >= 140 * MB
    assert end - start < 50 * MB  # the memory is gone again at the end


def test_a_stage_reports_its_own_peak_not_the_process_peak(home) -> None:
    run = stagewatch.init(pipeline="p", home=home)
    sent: list[dict] = []
    process = _run._process_for_run(run)
    process.sender.emit = sent.append  # look at the events the stage produces
    with run.stage("big"):
        big = np.ones(200 * MB // 8)
        del big
    with run.stage("small"):
        pass
    events = [item() if callable(item) else item for item in sent]
    big_event, small_event = (e for e in events if e and e["type"] == "stage_finished")
    assert big_event["rss_peak_mb"] - big_event["rss_start_mb"] >= 190
    assert small_event["rss_peak_mb"] - small_event["rss_start_mb"] < 20


def test_a_pipeline_started_by_a_big_parent_reports_its_own_peaks() -> None:
    """getrusage keeps the pre-exec image's peak (the parent's size after fork): it must not leak in."""
    from tests.conftest import run_python

    parent_ballast = np.ones(400 * MB // 8)  # this process is now > 400 MB; the child is forked from it
    code = """
import numpy as np
from stagewatch._memory import make_rss_tracker
source, tracker = make_rss_tracker()
token, start = tracker.begin()
small, _ = tracker.end(token)
token, start = tracker.begin()
block = np.ones(100 * 2**20 // 8)
del block
big, end = tracker.end(token)
print(small / 2**20, (big - start) / 2**20, start / 2**20, end / 2**20)
"""
    result = run_python(code)
    del parent_ballast
    small_mb, big_delta_mb, start_mb, end_mb = map(float, result.stdout.split())
    assert small_mb < 150  # the child's own size, not the 400 MB parent's
    assert 95 <= big_delta_mb < 150
    assert 0 < start_mb < 150 and 0 < end_mb < 150  # the values after a reset too
