"""Log records from Loguru and stdlib logging arrive with the right run and stage."""

from __future__ import annotations

import logging

import pyarrow.compute as pc
from loguru import logger

import stagewatch
from stagewatch.daemon.query._readmodels import read_table, to_rows
from tests.conftest import DaemonProcess, wait_for


def _logged(home, run_id: str, at_least: int):
    """The run's log rows in time order, once at least `at_least` are in the table (else None)."""
    table = read_table(home, "logs")
    table = table.filter(pc.equal(table["run_id"], run_id))
    return to_rows(table.sort_by("time")) if table.num_rows >= at_least else None


def test_loguru_and_stdlib_records_are_tagged_and_tabled(daemon: DaemonProcess) -> None:
    sink_id = logger.add(stagewatch.loguru_sink, level="DEBUG")
    handler = stagewatch.LoggingHandler()
    std = logging.getLogger("pipeline.detector")
    std.addHandler(handler)
    std.setLevel(logging.INFO)
    try:
        logger.info("outside any run: not sent")
        run = stagewatch.init(pipeline="perception", home=daemon.home)
        logger.info("run started")
        with run.stage("detection", sample_id="frame_047"):
            logger.bind(boxes=3).warning("low confidence")
            std.error("calibration missing", extra={"camera": "front"})
        std.info("after the stage")
        run.finish()
    finally:
        logger.remove(sink_id)
        std.removeHandler(handler)

    rows = wait_for(lambda: _logged(daemon.home, run.id, 4))
    seen = [(r["level"], r["message"], r["stage"], r["sample_id"]) for r in rows]
    assert seen == [
        ("INFO", "run started", None, None),
        ("WARNING", "low confidence", "detection", "frame_047"),
        ("ERROR", "calibration missing", "detection", "frame_047"),
        ("INFO", "after the stage", None, None),
    ]
    assert '"boxes": 3' in rows[1]["extra"] and '"camera": "front"' in rows[2]["extra"]
    assert rows[2]["logger"] == "pipeline.detector" and rows[0]["pipeline"] == "perception"
    assert daemon.audit(run.id)["counts"]["logs"] == 4


def test_a_record_about_a_stage_s_failure_logged_outside_it_carries_that_stage_and_sample(
    daemon: DaemonProcess,
) -> None:
    """The pipeline catches a stage's exception around the stage and logs it (as the demo does
    for frame 47): the line belongs to that stage and sample, whichever door it came through."""
    sink_id = logger.add(stagewatch.loguru_sink, level="INFO")
    handler = stagewatch.LoggingHandler()
    std = logging.getLogger("pipeline.loop")
    std.addHandler(handler)
    std.setLevel(logging.INFO)
    try:
        run = stagewatch.init(pipeline="perception", home=daemon.home)
        for frame in ("frame_046", "frame_047"):
            try:
                with run.stage("preprocessing", sample_id=frame), run.stage("decode", sample_id=frame):
                    if frame == "frame_047":
                        raise ValueError("corrupt readout")
            except ValueError as error:
                logger.error("{} skipped: {}", frame, error)  # loguru: the exception being handled
                std.error("skipped", exc_info=True)  # stdlib: the record's exc_info
                try:
                    raise RuntimeError("giving up on the frame") from error
                except RuntimeError:
                    logger.exception("wrapped")  # raised from it: still that stage
        logger.error("a later error of no stage")  # nothing being handled: the run's only
        run.finish()
    finally:
        logger.remove(sink_id)
        std.removeHandler(handler)

    rows = wait_for(lambda: _logged(daemon.home, run.id, 4))
    seen = [(r["message"].splitlines()[0], r["stage"], r["sample_id"]) for r in rows]
    assert seen == [
        ("frame_047 skipped: corrupt readout", "decode", "frame_047"),  # the innermost stage it failed
        ("skipped", "decode", "frame_047"),
        ("wrapped", "decode", "frame_047"),
        ("a later error of no stage", None, None),
    ]


def test_a_message_too_long_or_not_utf8_is_kept_cut_with_a_mark(daemon: DaemonProcess) -> None:
    """A 5,000,000-character message was stored cut to its first 60,000 characters with nothing to
    say so (a sample id or path says how long it was); a lone surrogate (a path decoded with
    `os.fsdecode`) cannot be packed: the record was lost."""
    from stagewatch._logging import MAX_MESSAGE_CHARS

    sink_id = logger.add(stagewatch.loguru_sink, level="INFO")
    try:
        run = stagewatch.init(pipeline="long-logs", home=daemon.home)
        logger.info("x" * 5_000_000)
        logger.info("no such file: /data/fr\udce9me.png")
        run.finish()
    finally:
        logger.remove(sink_id)
    long, odd = (row["message"] for row in wait_for(lambda: _logged(daemon.home, run.id, 2)))
    assert len(long) == MAX_MESSAGE_CHARS and long.endswith("…[5,000,000 chars]") and long.startswith("x" * 1000)
    assert odd == "no such file: /data/fr\\udce9me.png"
