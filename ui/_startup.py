"""Run once by `panel serve --setup` before the first session: the live feed starts listening
with the server, so the Live page knows every run that starts after it (pipeline, host, start)."""

from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.ui._live import LiveFeed

LiveFeed.of(DaemonHome.resolve().root)
