"""`stagewatch.shutdown()` and `Run.flush()` take their timeout as users write it."""

from __future__ import annotations

import json
import math

import pytest

import stagewatch
from tests.conftest import DaemonProcess, run_python


@pytest.mark.parametrize(("timeout_s", "error"), [(math.nan, ValueError), (-1.0, ValueError), ("5", TypeError)])
def test_a_timeout_that_is_no_duration_is_refused_and_the_run_goes_on(
    daemon: DaemonProcess, timeout_s: object, error: type[Exception]
) -> None:
    run = stagewatch.init(pipeline="shutdown", home=daemon.home)
    with pytest.raises(error, match="expected timeout_s"):
        stagewatch.shutdown(timeout_s=timeout_s)  # type: ignore[arg-type]
    with pytest.raises(error, match="expected timeout_s"):
        run.flush(timeout_s)  # type: ignore[arg-type]
    assert stagewatch.current_run() is run and not run.finished


def test_an_infinite_timeout_waits_until_every_event_is_delivered(daemon: DaemonProcess) -> None:
    # It raised OverflowError inside the close, which returned at once: the process exited
    # with its events still queued.
    code = f"""
import json, math, stagewatch
run = stagewatch.init(pipeline="shutdown", home={str(daemon.home)!r})
for i in range(2000):
    with run.stage("detection"):
        pass
stagewatch.shutdown(timeout_s=math.inf)
print(json.dumps(run.id))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    audit = daemon.audit(json.loads(done.stdout))
    assert audit["status"] == "ok" and audit["counts"]["stages"] == 2000
