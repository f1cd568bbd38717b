"""The sender's heartbeat names the newest open run, read from the sender's thread while the
pipeline's thread starts and ends runs."""

from __future__ import annotations

from tests.conftest import DaemonProcess, run_python

# Runs opened and closed back to back while the sender beats on every step and the interpreter
# switches threads as often as it can: a run ended between the heartbeat's "any run open?" and
# its "the newest run" was an IndexError from the sender's thread, printed with its traceback
# into the pipeline's stderr. Bounded in runs and in time.
RUNS_BACK_TO_BACK = """
import sys, time
sys.setswitchinterval(1e-6)
import stagewatch
from stagewatch._run import Run
from stagewatch._transport import SenderSettings

settings = SenderSettings(heartbeat_interval_s=0.0, poll_interval_s=0.0001)
deadline, runs = time.monotonic() + 8, 0
while runs < 100_000 and time.monotonic() < deadline:
    with Run(pipeline="beats", home={home!r}, settings=settings):
        pass
    runs += 1
stagewatch.shutdown()
print(runs)
"""


def test_a_run_ended_while_the_sender_beats_is_no_error(daemon: DaemonProcess) -> None:
    done = run_python(RUNS_BACK_TO_BACK.format(home=str(daemon.home)), timeout_s=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 1000, done.stdout  # enough runs for the race to have its chances
    assert "sender error" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
