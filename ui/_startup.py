"""Run once by `panel serve --setup` before the first session: the live feed of each home the
dashboard reads starts listening with the server, so the Live page knows every run that starts
after it (pipeline, host, start); the pages' modules are imported here, not by the first session
(whose first load would pay for them), and what they made is frozen out of the garbage collector:
Panel runs a full collection after sessions close, and walking every imported module's objects
each time held up the pages of the sessions still open."""

import gc

import holoviews  # noqa: F401  (imported for the first session, see above)

from stagewatch.daemon.query._sql import homes_of
from stagewatch.ui._live import LiveFeed
from stagewatch.ui._serve import configured_homes
from stagewatch.ui.pages import accuracy, case, compare, failures, live, logs, performance, run, runs  # noqa: F401

for home in homes_of(configured_homes()):
    LiveFeed.of(home)
gc.freeze()
