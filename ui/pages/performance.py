"""Performance: per-stage trends across runs (each run's median and p95 against its start),
memory trends, median/p95/p99 per stage over the window (the numbers of `stagewatch stats`),
regressions found from the data, and two runs compared stage by stage."""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import panel as pn
import pyarrow as pa
import pyarrow.compute as pc
from bokeh.models import ColumnDataSource, HoverTool, TapTool
from bokeh.plotting import figure as bokeh_figure

from stagewatch.daemon import Filters, query_stats
from stagewatch.daemon.compare._compare import CompareError, compare
from stagewatch.daemon.compare._shifts import MIN_REFERENCE
from stagewatch.daemon.query._exemplars import query_exemplars
from stagewatch.daemon.query._gaps import OUTSIDE_STAGES, with_outside_stages
from stagewatch.daemon.query._readmodels import table_not_read
from stagewatch.daemon.query._sql import DamagedTable, QueryError
from stagewatch.ui import _axes, _data, _format, _trends, _widgets
from stagewatch.ui._router import href, link
from stagewatch.ui.pages.compare import WRAPPED, compared_sides, echoed, problem_alert, stage_table_html, warnings_alert

MAX_POINTS = 600  # per stage and chart: more than a chart is wide in pixels says nothing more
CHART_HEIGHT = 320
WINDOWS = {"last 7 days": "7d", "last 30 days": "30d", "last 90 days": "90d", "last 24 hours": "24h", "all time": ""}


class PerformancePage:
    def __init__(self, home: Path) -> None:
        self.home = home
        facets = _data.facets(home)
        self.window = pn.widgets.Select(name="Window", options=WINDOWS, value="30d")
        self.pipeline = pn.widgets.Select(name="Pipeline", options=_widgets.choices(facets["pipeline"]))
        self.measure = pn.widgets.Select(name="Trend of", options={"p95": "p95_ms", "median": "median_ms"})
        self.host = _widgets.host_filter(home)  # shown when the homes hold runs of several hosts
        self.first = pn.widgets.TextInput(name="Baseline", placeholder="run id, last:20, 7d (empty: previous)")
        self.second = pn.widgets.TextInput(name="Compare run", placeholder="run id or prefix")
        self.callouts = pn.Column()
        # The charts come a tick after the table (_widgets.fill_soon): their room is kept meanwhile.
        self.trend = pn.Column(min_height=CHART_HEIGHT)
        self.memory = pn.Column(min_height=CHART_HEIGHT)
        self.stats = pn.Column()
        self.comparison = pn.Column()
        # The link's values first, then the watchers: the page is drawn once, here.
        self.url_problems = _widgets.url_alert(
            _widgets.sync_url(
                {
                    "window": self.window,
                    "pipeline": self.pipeline,
                    "measure": self.measure,
                    "host": self.host,
                    "a": self.first,
                    "b": self.second,
                }
            )
        )
        for widget in (self.window, self.pipeline, self.measure, self.host):
            widget.param.watch(lambda _: self.refresh(), "value")
        for widget in (self.first, self.second):
            widget.param.watch(lambda _: self.compare(), "value")
        self.refresh()
        _widgets.soon(self.compare)

    def layout(self) -> pn.Column:
        return pn.Column(
            self.url_problems,
            _widgets.filter_bar(self.window, self.pipeline, self.host, self.measure),
            self.callouts,
            pn.pane.Markdown("### Stage durations per run"),
            self.trend,
            pn.pane.Markdown(
                "### Memory per run (each stage's own: the most its RSS rose above its start; "
                "the process's peak is in the table below)"
            ),
            self.memory,
            pn.pane.Markdown("### Over the window"),
            self.stats,
            pn.pane.Markdown("### Compare two runs"),
            _widgets.filter_bar(self.first, self.second, width=320),
            self.comparison,
        )

    def filters(self) -> Filters:
        return Filters(
            since=_data.filter_time(self.window.value) if self.window.value else None,
            pipeline=self.pipeline.value or None,
            host=self.host.value or None,
        )

    def refresh(self) -> None:
        filters = self.filters()
        rows = _trends.stage_rows(self.home, filters)
        points = _trends.run_points(rows)
        if points.empty:
            message = "No stage executions in this window." if rows.num_rows == 0 else "No timed stage executions."
            for pane in (self.trend, self.memory, self.stats):
                _widgets.show_now(pane, [pn.pane.Markdown(message)])
            _widgets.show_now(self.callouts, [])
            return
        order = stage_order(points)
        colours = _format.stage_colours([*_data.facets(self.home)["stage"], *order])
        stats, unread = window_stats(self.home, filters, points, order)
        self.stats.objects = [
            _widgets.table(stats, "window-stats", html_columns=("exemplars",), **STATS_FIT),
            *([pn.pane.Alert(unread, alert_type="warning")] if unread else []),
        ]
        measure = self.measure.value
        _widgets.fill_soon(self.callouts, lambda: regression_callouts(rows))
        _widgets.fill_soon(self.trend, lambda: [trend_chart(points, order, colours, measure, "ms", "trend")])
        _widgets.fill_soon(self.memory, lambda: [trend_chart(points, order, colours, "own_mb", "MB", "memory")])

    def compare(self) -> None:
        """The two runs' per-stage table (daemon/compare/_compare, as the Compare page shows it), with a
        link to the whole comparison there."""
        if not self.second.value.strip():
            self.comparison.objects = [
                pn.pane.Markdown("Give a run (and a baseline run, last:N or 7d; empty: the run before it).")
            ]
            return
        try:
            a, b = compared_sides(self.home, self.first.value, self.second.value)
            document = compare(self.home, a, b)
        except (CompareError, QueryError) as error:
            self.comparison.objects = [problem_alert(error)]
            return
        baseline = quote(self.first.value or "last:1", safe="")
        compare_href = href(f"?page=compare&a={baseline}&b={quote(b.runs[0], safe='')}")
        self.comparison.objects = [
            *warnings_alert(document),  # a run not ended, two pipelines: as the Compare page says them
            pn.pane.HTML(
                f"{html.escape(echoed(a.label))} → {_widgets.run_link(b.runs[0])} · "
                f"<a href='{compare_href}'>open in Compare</a>",
                sizing_mode="stretch_width",
                styles=WRAPPED,
            ),
            pn.pane.HTML(stage_table_html(document["stages"]), css_classes=["sw-compare-stages"]),
        ]


def stage_order(points: pd.DataFrame) -> list[str]:
    """Stages in the order they first appear in the window's first run that has them."""
    return points["stage"].unique().tolist()  # in order of appearance, without a Python loop over every point


def trend_chart(
    points: pd.DataFrame, order: list[str], colours: dict[str, str], measure: str, unit: str, name: str
) -> pn.pane.Bokeh:
    """One point per run and stage against the run's start (past MAX_POINTS runs, the slowest
    run of each time slice); hover names the run, a click opens it.

    Plain Bokeh rather than HoloViews here: this page draws two charts of up to thousands of
    points on every open, and building them through HoloViews cost 0.26 s each (10x)."""
    frame = _trends.thin(points[["run_start", "stage", measure, "run_id", "count"]], measure, MAX_POINTS)
    runs, shown = points["run_id"].nunique(), frame["run_id"].nunique()
    label = "run start (UTC)" + (
        f": the slowest of {runs:,} runs in each of {MAX_POINTS} slices" if shown < runs else ""
    )
    figure = bokeh_figure(
        height=CHART_HEIGHT,
        sizing_mode="stretch_width",
        x_axis_type="datetime",
        x_axis_label=label,
        y_axis_label=unit,
        tools="pan,wheel_zoom,box_zoom,reset,save",
        active_scroll="wheel_zoom",
    )
    for stage in order:
        rows = frame[frame["stage"] == stage]
        source = ColumnDataSource(
            {
                "run_start": rows["run_start"].dt.tz_localize(None),
                "value": rows[measure],
                "run_id": rows["run_id"],
                "count": rows["count"],
            }
        )
        figure.scatter(
            "run_start", "value", source=source, size=6, color=colours.get(stage, "#555"), legend_label=stage
        )
    figure.add_tools(
        HoverTool(
            tooltips=[
                ("run", "@run_id"),
                ("started", "@run_start{%F %T}"),
                (unit, "@value{0.00}"),
                ("executions", "@count"),
            ],
            formatters={"@run_start": "datetime"},
        ),
        TapTool(callback=_widgets.tap_opens("?page=run&run=@run_id")),
    )
    _axes.time_axis(figure, frame["run_start"])
    figure.legend.location = "top_left"
    figure.legend.click_policy = "hide"
    figure.add_layout(figure.legend[0], "right")
    return _widgets.chart(figure, name)


def regression_callouts(rows: pa.Table) -> list[pn.pane.Alert]:
    """The shifts found in the window's runs; none, said with how many runs were judged (a run
    is judged once MIN_REFERENCE runs precede it): an empty space read as "not looked"."""
    found = [regression_alert(shift) for shift in _trends.regressions(rows)]
    if found:
        return found
    runs = len(pc.unique(rows["run_id"]))
    judged = max(0, runs - MIN_REFERENCE)
    if not judged:
        text = (
            f"**Regressions:** not judged yet: {runs:,} run(s) in the window; a run is judged against the "
            f"{MIN_REFERENCE} or more before it (a change-point test per stage)."
        )
    else:
        text = f"**Regressions:** none found in the window's last {judged:,} run(s) (a change-point test per stage)."
    return [pn.pane.Alert(text, alert_type="light", css_classes=["sw-no-regressions"])]


def regression_alert(shift: _trends.Shift) -> pn.pane.Alert:
    measure = "p95" if shift.measure == "p95_ms" else "median"
    return pn.pane.Alert(
        f"**{html.escape(shift.stage)}** {measure} **{shift.change:+.0%}**, a persistent shift (change-point "
        f"test over the runs' {measure}s): {_format.ms(shift.before)} → {_format.ms(shift.after)}; it started in run "
        f"[{shift.started_run[:8]}]({link(f'?page=run&run={shift.started_run}')}) and was found at run "
        f"[{shift.found_run[:8]}]({link(f'?page=run&run={shift.found_run}')})"
        f" · [compare]({link(f'?page=compare&a=last:20&b={shift.found_run}')})",
        alert_type="warning",
    )


# Within the page at 1,280 px: the exemplars' links (and a long stage name) wrap.
STATS_FIT = _widgets.fitted(
    {"pipeline": 75, "stage": 145, "executions": 80, "failed": 60, "median": 70, "p95": 70, "p99": 70, "max": 70}
    | {"own memory": 80, "process peak": 80, "share of time": 70},
    wrapped=("pipeline", "stage", "median", "p95", "p99", "max", "own memory", "process peak", "exemplars"),
)


def window_stats(
    home: Path, filters: Filters, points: pd.DataFrame, order: list[str]
) -> tuple[pd.DataFrame, str | None]:
    """The window's numbers per stage; where the window holds several pipelines (pipeline: any),
    per pipeline and stage, with a pipeline column: two pipelines' "detection" are not one stage.
    And what is said in place of the row of the time outside stages when the runs table that
    row is read from cannot be read (None when it can)."""
    pipelines = sorted(points["pipeline"].dropna().unique()) if filters.pipeline is None else []
    if len(pipelines) < 2:
        stats, unread = _stats_with_exemplars(home, filters)
        return stats_display(stats, order), unread
    frames, unread = [], None
    for name in pipelines:
        stats, unread = _stats_with_exemplars(home, replace(filters, pipeline=name))
        frames.append(stats_display(stats, order).assign(pipeline=name))
    return pd.concat(frames, ignore_index=True)[["pipeline", *STATS_HEADERS]], unread


def _stats_with_exemplars(home: Path, filters: Filters) -> tuple[list[dict[str, Any]], str | None]:
    """`query_stats`, each stage with the executions behind its p95, p99 and max, and the row of
    the time outside stages, as `stagewatch stats` prints them: the shares are of the wall time
    (without that row they were of the stages' time, and disagreed with stats and the Run page).
    A damaged runs table (read for that row alone) leaves the row out, said instead."""
    stats, unread = query_stats(home, filters), None
    try:
        stats = with_outside_stages(home, filters, stats)
    except DamagedTable as error:
        unread = f"{OUTSIDE_STAGES} not shown: {table_not_read(error)}"
    exemplars = query_exemplars(home, filters)
    return [entry | {"exemplars": exemplars.get(entry["stage"])} for entry in stats], unread


def stats_display(stats: list[dict[str, Any]], order: list[str]) -> pd.DataFrame:
    rank = {stage: i for i, stage in enumerate(order)}
    stats = sorted(stats, key=lambda e: (bool(e.get("outside_stages")), rank.get(e["stage"], len(rank))))
    return pd.DataFrame(
        {
            "stage": [e["stage"] for e in stats],
            "executions": [f"{e['count']:,}" for e in stats],
            "failed": [_format.pct(e["failure_rate"]) for e in stats],
            "median": [_format.ms(e["duration_ms"]["median"]) for e in stats],
            "p95": [_format.ms(e["duration_ms"]["p95"]) for e in stats],
            "p99": [_format.ms(e["duration_ms"]["p99"]) for e in stats],
            "max": [_format.ms(e["duration_ms"]["max"]) for e in stats],
            "own memory": [_format.mb(e.get("own_mb", {}).get("max")) for e in stats],  # none outside stages
            "process peak": [_format.mb(e.get("rss_peak_mb", {}).get("max")) for e in stats],
            "share of time": [_format.pct(e["share_of_time"]) for e in stats],
            "exemplars": [_data.exemplar_links(e.get("exemplars")) for e in stats],
        },
        columns=STATS_HEADERS,
    )


STATS_HEADERS = [
    "stage",
    "executions",
    "failed",
    "median",
    "p95",
    "p99",
    "max",
    "own memory",
    "process peak",
    "share of time",
    "exemplars",
]


def view(home: Path) -> pn.viewable.Viewable:
    return PerformancePage(home).layout()
