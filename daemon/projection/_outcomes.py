"""One vocabulary for how runs and stage executions end, for the daemon, the CLI and the
dashboard alike (README "How runs and samples end" says it to users).

A run:             ok · finished_with_failures · failed · crashed · running
A stage execution: ok · failed · crashed

"failed" is an exception: a stage's block raised one, or the run ended on one (its `with` block,
`finish(error=...)`), or the pipeline said so (`finish(status="failed")`).
"crashed" is a lost process: killed, out of memory, a segfault, while the run or stage was open.
A run that caught its stages' exceptions and went on to its end "finished with failures".
"""

from __future__ import annotations

OK, FINISHED_WITH_FAILURES, FAILED, CRASHED, RUNNING = "ok", "finished_with_failures", "failed", "crashed", "running"
RUN_STATUSES = (OK, FINISHED_WITH_FAILURES, FAILED, CRASHED, RUNNING)
STAGE_STATUSES = (OK, FAILED, CRASHED)
RUN_ONLY = (FINISHED_WITH_FAILURES, RUNNING)  # no stage execution ends so
MEANINGS = {
    OK: "every stage execution ended ok",
    FINISHED_WITH_FAILURES: "the run went on to its end; some stage executions failed or crashed",
    FAILED: "an exception: the stage's block raised one, or the run ended on one",
    CRASHED: "the process was lost (killed, out of memory, a segfault) while it was open",
    RUNNING: "still going",
}


def run_end_status(declared: str | None, error_type: str | None, stages_failed: int, stages_crashed: int) -> str:
    """How a run that reached its end ended: failed on an exception of its own or where the
    pipeline said so, finished with failures where stages failed or crashed on the way, else ok.
    (Clients before this vocabulary said "failed" for stages failed on the way; their runs keep it.)"""
    if error_type or declared == FAILED:
        return FAILED
    return FINISHED_WITH_FAILURES if stages_failed or stages_crashed else OK


def label(status: str | None) -> str:
    """The words of a status: 'finished with failures'."""
    return (status or "-").replace("_", " ")
