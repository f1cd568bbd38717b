"""Time axes people read: clock times at every zoom (never "401500us" or "400ms … 0ms"), and a
chart of one moment (one run) spread over an hour instead of a microsecond."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pandas as pd
from bokeh.models import DatetimeTickFormatter, Range1d
from bokeh.plotting import figure as Figure

MIN_SPAN = timedelta(minutes=1)  # below it an axis of datetimes ticks in micro- or milliseconds
PADDING = timedelta(minutes=30)


def clock_ticks() -> DatetimeTickFormatter:
    """Ticks as a clock reads (UTC): 08:42:46.963 at millisecond zoom, 08:42 at minutes, Dec 06
    over days; Bokeh's own say "400ms", "0ms", "200ms" for the seconds they fall in."""
    return DatetimeTickFormatter(
        microseconds="%H:%M:%S.%f",
        milliseconds="%H:%M:%S.%3N",
        seconds="%H:%M:%S",
        minsec="%H:%M:%S",
        minutes="%H:%M",
        hourmin="%H:%M",
        hours="%H:%M",
        days="%b %d",
        months="%b %Y",
        years="%Y",
    )


def time_axis(figure: Figure, times: Sequence[pd.Timestamp] | pd.Series) -> None:
    """Clock ticks on the x axis; where `times` span less than a minute (one run), half an hour
    either side of them, so the axis says when rather than how many microseconds apart."""
    figure.xaxis.formatter = clock_ticks()
    moments = pd.to_datetime(pd.Series(list(times)), utc=True).dropna()
    if moments.empty:
        return
    low, high = moments.min().tz_localize(None), moments.max().tz_localize(None)
    if high - low < MIN_SPAN:
        figure.x_range = Range1d(low - PADDING, high + PADDING)
