"""A stage whose end runs in another context than its start (generators closed elsewhere)
still ends: its row reaches the daemon's table and the run has nothing left running."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import stagewatch
from stagewatch import Run
from tests.conftest import DaemonProcess, run_python
from tests.test_end_to_end import _rows


def _stream(run: Run, stage: str) -> Iterator[int]:
    for i in range(3):
        with run.stage(stage, sample_id=str(i)):
            yield i


async def _async_stream(run: Run, stage: str) -> AsyncIterator[int]:
    for i in range(3):
        with run.stage(stage, sample_id=str(i)):
            yield i


def _in_thread(function: Callable[[], object]) -> None:
    thread = threading.Thread(target=function)
    thread.start()
    thread.join()


def _assert_ended(daemon: DaemonProcess, run: Run, stage: str) -> None:
    """The stage has its row, as ok, and the run ended with nothing running."""
    run.finish()
    assert run.flush(10)
    audit = daemon.audit(run.id)
    assert audit["status"] == "ok" and audit["counts"]["running"] == 0
    assert audit["counts"]["stages"] == audit["counts"]["ok"]
    (row,) = [row for row in _rows(daemon.home, "stage_executions", run.id, 1) if row["stage"] == stage]
    assert row["status"] == "ok" and row["sample_id"] == "0"


def test_an_async_generator_left_with_break_ends_its_stage_in_the_finalizer_task(daemon: DaemonProcess) -> None:
    run = stagewatch.init(pipeline="contexts", home=daemon.home)
    seen_after_close = []

    async def main() -> None:
        with run.stage("outer"):
            async for _ in _async_stream(run, "streamed"):
                break  # the event loop's finalizer closes the generator in a task of its own
            for _ in range(10):
                await asyncio.sleep(0)
            seen_after_close.append(stagewatch.current_stage())

    asyncio.run(main())
    # The stage ended in the finalizer's task: this task's context still named it, but a log
    # record here belongs to the enclosing stage, not to the one that ended.
    assert [stage.name for stage in seen_after_close] == ["outer"]
    _assert_ended(daemon, run, "streamed")


def test_a_generator_closed_from_another_thread_ends_its_stage(daemon: DaemonProcess) -> None:
    run = stagewatch.init(pipeline="contexts", home=daemon.home)
    stream = _stream(run, "streamed")
    next(stream)
    _in_thread(stream.close)
    assert stagewatch.current_stage() is None  # the ended stage no longer tags this thread's records
    _assert_ended(daemon, run, "streamed")


def test_a_generator_collected_in_another_thread_ends_its_stage(daemon: DaemonProcess) -> None:
    run = stagewatch.init(pipeline="contexts", home=daemon.home)
    stream = _stream(run, "streamed")
    next(stream)
    holder: list[object] = [stream]
    holder.append(holder)  # a cycle: only the collector frees it, in whichever thread runs it
    del stream, holder
    gc.disable()  # so that the collection happens in the other thread, not here
    try:
        _in_thread(gc.collect)
    finally:
        gc.enable()
    _assert_ended(daemon, run, "streamed")


def test_a_stage_started_after_an_abandoned_generator_stage_ended_has_the_right_parent(
    daemon: DaemonProcess,
) -> None:
    run = stagewatch.init(pipeline="contexts", home=daemon.home)
    stream = _stream(run, "streamed")
    next(stream)
    _in_thread(stream.close)
    with run.stage("next") as after:
        assert stagewatch.current_stage() is after
    assert after._parent is None  # not the span of the stage that ended elsewhere
    _assert_ended(daemon, run, "streamed")


def test_a_stage_spec_shared_by_threads_ends_each_thread_s_own_stage(daemon: DaemonProcess) -> None:
    run = stagewatch.init(pipeline="contexts", home=daemon.home)
    shared = stagewatch.stage("shared")
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    spans = {}

    def first() -> None:
        with shared as stage:
            spans["first"] = stage.span
            first_in.set()
            second_in.wait()
        first_out.set()  # the first thread's stage ends while the second's is still open

    def second() -> None:
        first_in.wait()
        with shared as stage:
            spans["second"] = stage.span
            second_in.set()
            first_out.wait()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.finish()
    assert run.flush(10)
    rows = {row["span"]: row for row in _rows(daemon.home, "stage_executions", run.id, 2)}
    first_row, second_row = rows[spans["first"]], rows[spans["second"]]
    assert first_row["start_time"] < second_row["start_time"]
    assert first_row["end_time"] < second_row["end_time"]  # each thread ended its own stage


def test_a_generator_left_open_at_exit_neither_hangs_the_exit_nor_loses_what_came_before(
    daemon: DaemonProcess,
) -> None:
    # The interpreter closes the generator after stagewatch's exit hook delivered everything:
    # its stage's end has no sender left, and must not start one.
    code = f"""
import json, stagewatch
run = stagewatch.init(pipeline="contexts", home={str(daemon.home)!r})
def stream():
    for i in range(3):
        with run.stage("streamed", sample_id=str(i)):
            yield i
with run.stage("before"):
    pass
frames = stream()
next(frames)
print(json.dumps(run.id))
"""
    done = run_python(code, timeout_s=60)
    assert done.returncode == 0, done.stderr
    audit = daemon.audit(json.loads(done.stdout))
    assert audit["status"] == "ok" and audit["counts"]["ok"] == 1
