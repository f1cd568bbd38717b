"""Run once by `panel serve --setup` before the first session: the live feed of each home the
dashboard reads starts listening with the server, so the Live page knows every run that starts
after it (pipeline, host, start)."""

from stagewatch.daemon.query._sql import homes_of
from stagewatch.ui._live import LiveFeed
from stagewatch.ui._serve import configured_homes

for home in homes_of(configured_homes()):
    LiveFeed.of(home)
