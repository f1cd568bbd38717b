"""Logs: log lines with filters (time range, stage, level, run, logger, text or regex), a
histogram by level that narrows the range when brushed, a live tail, server-side paging, and a
download of exactly the filtered set, equal to `stagewatch export` with the same filters."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
import panel as pn
from bokeh.events import SelectionGeometry
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.plotting import figure as bokeh_figure

from stagewatch.daemon import LEVELS, Filters
from stagewatch.daemon.query._sql import Homes
from stagewatch.ui import _axes, _data, _format, _widgets

LEVEL_COLOURS = {
    "TRACE": "#9e9e9e",
    "DEBUG": "#78909c",
    "INFO": "#1e88e5",
    "SUCCESS": "#43a047",
    "WARNING": "#fb8c00",
    "ERROR": "#e53935",
    "CRITICAL": "#6a1b9a",
}
TAIL_MS = 1000
HISTOGRAM_HEIGHT = 170
EMPTY = "No log lines yet: log through `logger.add(stagewatch.loguru_sink)` or the logging handler (see the README)."


class LogsPage:
    def __init__(self, home: Homes) -> None:
        self.home = home
        facets = _data.facets(home)
        self.since = pn.widgets.TextInput(name="Since", placeholder=_widgets.SINCE_HINT)
        self.until = pn.widgets.TextInput(name="Until", placeholder=_widgets.UNTIL_HINT)
        self.stage = pn.widgets.Select(name="Stage", options=_widgets.choices(facets["stage"]))
        self.level = pn.widgets.Select(name="Lowest level", options=_widgets.choices(list(LEVELS)))
        self.run = pn.widgets.TextInput(name="Run", placeholder="run id or prefix")
        self.logger = pn.widgets.Select(name="Logger", options=_widgets.choices(facets["logger"]))
        self.host = _widgets.host_filter(home)
        self.text = pn.widgets.TextInput(name="Search", placeholder="text in the message")
        self.regex = pn.widgets.Checkbox(name="regular expression", width=160)
        self.tail = pn.widgets.Checkbox(name="live tail (every second)", width=190)
        self.histogram = pn.Column(min_height=HISTOGRAM_HEIGHT)  # drawn a tick after the table
        self.download_json = pn.widgets.FileDownload(
            callback=lambda: self._export("json"),
            filename="stagewatch-logs.json",
            label="Download JSON",
            button_type="primary",
            width=180,
        )
        self.download_jsonl = pn.widgets.FileDownload(
            callback=lambda: self._export("jsonl"),
            filename="stagewatch-logs.jsonl",
            label="Download JSON Lines",
            width=200,
        )
        self.query = _widgets.PagedQuery(
            "logs",
            "log lines",
            {
                "since": self.since,
                "until": self.until,
                "stage": self.stage,
                "level": self.level,
                "run": self.run,
                "logger": self.logger,
                "host": self.host,
                "q": self.text,
                "regex": self.regex,
                "tail": self.tail,
            },
            lambda offset, limit: _data.logs_page(self.home, self.filters(), offset, limit),
            display,
            lambda: "No log lines match these filters." if self.filters() != Filters() else EMPTY,
            html_columns=("time", "run"),
            missing=lambda skipped: _data.missing_for_run_filter(self.home, skipped, self.run.value),
            page_size=50,
            # Within the page at 1,280 px: the message, the logger's dotted name and the rest wrap.
            **_widgets.fitted(
                {"time": 190, "host": 85, "level": 80, "stage": 105, "sample": 90, "logger": 120, "run": 75},
                wrapped=("time", "host", "stage", "sample", "message", "logger"),
            ),
            changed=self._draw_histogram,
        )
        self.query.refresh()
        self._draw_histogram()
        _widgets.every(TAIL_MS, self._tail)

    def layout(self) -> pn.Column:
        shown = [self.since, self.until, self.stage, self.level, self.run, self.logger, self.host, self.text]
        downloads = pn.Row(self.regex, self.tail, self.download_json, self.download_jsonl, sizing_mode="stretch_width")
        return self.query.layout(shown, downloads, self.histogram)

    def filters(self) -> Filters:
        run = _data.find_run(self.home, self.run.value) if self.run.value.strip() else None
        return Filters(
            run=run,
            since=_data.filter_time(self.since.value) if self.since.value.strip() else None,
            until=_data.filter_time(self.until.value, until=True) if self.until.value.strip() else None,
            stage=self.stage.value or None,
            level=self.level.value or None,
            logger=self.logger.value or None,
            host=self.host.value or None,
            grep=self.text.value or None,
            regex=self.regex.value,
        )

    def _tail(self) -> None:
        if self.tail.value and self.query.page.value == 1:
            self.query.refresh()

    def _draw_histogram(self) -> None:
        try:
            filters = self.filters()
        except (ValueError, _data.RunNotFound):
            _widgets.show_now(self.histogram, [])  # the message above says why; the old range's bars would mislead
            return
        _widgets.fill_soon(self.histogram, lambda: [self._histogram(filters)])

    def _histogram(self, filters: Filters) -> Any:
        """Lines per time bin, stacked by level; a drag across it (box select) narrows the range."""
        counts = _data.log_histogram(self.home, filters)
        if counts.empty:
            return pn.pane.Markdown("")
        wide = counts.pivot_table(index="time", columns="level", values="count", fill_value=0)
        levels = [level for level in LEVELS if level in wide.columns]
        times = wide.index.tz_localize(None)
        width_ms = float(counts["width_ms"].iloc[0]) * 0.9  # a gap between the bars
        source = ColumnDataSource({"time": times, **{level: wide[level].to_numpy() for level in levels}})
        figure = bokeh_figure(
            height=HISTOGRAM_HEIGHT,
            sizing_mode="stretch_width",
            x_axis_type="datetime",
            y_axis_label="lines",
            tools="xbox_select,xwheel_zoom,reset",
            active_drag="xbox_select",
        )
        figure.vbar_stack(
            levels,
            x="time",
            width=width_ms,
            source=source,
            legend_label=levels,
            color=[LEVEL_COLOURS.get(level, "#555") for level in levels],
        )
        figure.add_tools(
            HoverTool(
                tooltips=[("from", "@time{%F %T}"), *((lv, f"@{lv}") for lv in levels)],
                formatters={"@time": "datetime"},
            )
        )
        figure.xaxis.formatter = _axes.clock_ticks()
        figure.add_layout(figure.legend[0], "right")
        figure.on_event(SelectionGeometry, self._brushed)
        return _widgets.chart(figure, "histogram")

    def _brushed(self, event: SelectionGeometry) -> None:
        """A final box selection narrows since/until to the brushed span (times in UTC ms)."""
        geometry = event.geometry or {}
        if not event.final or geometry.get("x0") is None or geometry.get("x1") is None:
            return
        low, high = sorted((geometry["x0"], geometry["x1"]))
        until = pd.Timestamp(high, unit="ms", tz="UTC")
        self.since.value = pd.Timestamp(low, unit="ms", tz="UTC").isoformat()
        self.until.value = until.isoformat()

    def _export(self, form: str) -> io.BytesIO:
        return io.BytesIO(b"".join(_data.export_bytes(self.home, self.filters(), form)))


def display(rows: pd.DataFrame) -> pd.DataFrame:
    """The log lines as people read them; read over several homes, each with its run's host."""
    hosts = {"host": rows["host"].fillna("")} if "host" in rows else {}
    if rows.empty:
        return pd.DataFrame(columns=["time", *hosts, "level", "stage", "sample", "message", "logger", "run"])
    return pd.DataFrame(
        {
            "time": [_format.moment_html(t.to_pydatetime()) for t in rows["time"]],
            **hosts,  # beside the time: in view at 1,280 px
            "level": rows["level"],
            "stage": rows["stage"].fillna(""),
            "sample": rows["sample_id"].fillna(""),
            "message": rows["message"],
            "logger": rows["logger"],
            "run": [_widgets.run_link(r) if isinstance(r, str) else "" for r in rows["run_id"]],
        }
    )


def view(home: Homes) -> pn.viewable.Viewable:
    return LogsPage(home).layout()
