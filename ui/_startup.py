"""Run once by `panel serve --setup` before the first session: the live feed of each home the
dashboard reads starts listening with the server, so the Live page knows every run that starts
after it (pipeline, host, start); the pages' modules are imported here, not by the first session
(whose first load would pay for them), and what they made is frozen out of the garbage collector:
Panel runs a full collection after sessions close, and walking every imported module's objects
each time held up the pages of the sessions still open."""

import gc
import sys
from typing import Any, TextIO

import holoviews  # noqa: F401  (imported for the first session, see above)

from stagewatch.daemon.query._sql import homes_of
from stagewatch.ui._live import LiveFeed
from stagewatch.ui._serve import configured_homes
from stagewatch.ui.pages import accuracy, case, compare, failures, live, logs, performance, run, runs  # noqa: F401


class _WritesAfterReaderLeft:
    """A standard stream whose reader may be gone (`stagewatch ui | head`): Bokeh's SIGTERM
    handler prints before it stops the server's loop, and a print that raises BrokenPipeError
    there left the server running, deaf to SIGTERM. Past a broken pipe, writes go nowhere."""

    def __init__(self, stream: TextIO) -> None:
        self._stream, self._broken = stream, False

    def write(self, text: str) -> int:
        if not self._broken:
            try:
                return self._stream.write(text)
            except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
                self._broken = True
        return len(text)

    def flush(self) -> None:
        if not self._broken:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self._broken = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


sys.stdout, sys.stderr = _WritesAfterReaderLeft(sys.stdout), _WritesAfterReaderLeft(sys.stderr)
for home in homes_of(configured_homes()):
    LiveFeed.of(home)
gc.freeze()
