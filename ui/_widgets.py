"""Pieces every page uses: the navigation, tables, banners, the URL's state."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import panel as pn

from stagewatch.ui import _data

PAGES = {"live": "Live", "runs": "Runs", "performance": "Performance", "logs": "Logs", "run": "Run"}
NAVIGATION = ("live", "runs", "performance", "logs")  # "run" is reached from a run's link


def navigation(current: str) -> pn.pane.HTML:
    links = [
        f'<a href="?page={name}" style="display:block;padding:6px 4px;font-size:15px;'
        f'{"font-weight:700;" if name == current else ""}">{PAGES[name]}</a>'
        for name in NAVIGATION
    ]
    return pn.pane.HTML("".join(links), sizing_mode="stretch_width")


def run_link(run_id: str, text: str | None = None) -> str:
    safe = html.escape(run_id, quote=True)
    return f'<a href="?page=run&run={safe}" title="{safe}">{html.escape(text or run_id[:8])}</a>'


def table(frame: pd.DataFrame, name: str, html_columns: tuple[str, ...] = (), **options: Any) -> pn.widgets.Tabulator:
    """A read-only table; `html_columns` hold markup we made (links, times with hover), never user text."""
    formatters = {column: {"type": "html"} for column in html_columns}
    formatters.update(options.pop("formatters", {}))
    return pn.widgets.Tabulator(
        frame,
        disabled=True,
        show_index=False,
        name=name,
        formatters=formatters,
        sizing_mode="stretch_width",
        **options,
    )


def filter_bar(*widgets: Any, width: int = 185) -> pn.FlexBox:
    """Filters side by side, wrapping on a narrow screen."""
    for widget in widgets:
        widget.param.update(width=width, sizing_mode="fixed")
    return pn.FlexBox(*widgets, flex_wrap="wrap", gap="4px 12px")


def pager(previous: Any, number: Any, following: Any, count: Any) -> pn.Row:
    for widget in (previous, following):
        widget.param.update(width=90, sizing_mode="fixed", align="end")
    number.param.update(width=90, sizing_mode="fixed")
    count.param.update(sizing_mode="fixed", width=300, align="end")
    return pn.Row(previous, number, following, count)


def choices(values: list[str], anything: str = "any") -> dict[str, str]:
    """A menu's options with "any" (the empty value: no filter) first."""
    return {anything: "", **{value: value for value in values}}


def banners(home: Path) -> list[pn.pane.Alert]:
    """The daemon's state and disk warnings, in words."""
    shown = []
    problem = _data.daemon_problem(home)
    if problem:
        shown.append(pn.pane.Alert(problem, alert_type="warning"))
    disk = _data.disk_problems(home)
    if disk:
        shown.append(pn.pane.Alert("**Disk:** " + "; ".join(disk), alert_type="warning"))
    return shown


def failure(what: str, error: BaseException) -> pn.pane.Alert:
    """An error in words, never a stack trace."""
    return pn.pane.Alert(f"**{what}:** {type(error).__name__}: {str(error)[:500]}", alert_type="danger")


def sync_url(widgets: dict[str, Any]) -> None:
    """Keep these widgets' values in the URL's query (parameter name -> widget)."""
    if pn.state.location is None:
        return
    for parameter, widget in widgets.items():
        pn.state.location.sync(widget, {"value": parameter})


def every(period_ms: int, callback: Callable[[], None]) -> None:
    """A periodic callback of this session (none outside a server, as in tests)."""
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        pn.state.add_periodic_callback(callback, period_ms)
