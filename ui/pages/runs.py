"""Runs: every run, filtered and sorted on the server, one page at a time.

"Runs that failed at detection last week" is two clicks: Failed stage → detection, When → last 7 days.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import panel as pn

from stagewatch.daemon import Filters, parse_time
from stagewatch.ui import _data, _format, _widgets

WHEN = {"any time": "", "last hour": "1h", "last 24 hours": "24h", "last 7 days": "7d", "last 30 days": "30d"}
SORTS = {
    "newest first": ("start_time", True),
    "oldest first": ("start_time", False),
    "slowest first": ("duration_ms", True),
    "most failures first": ("stages_failed", True),
    "pipeline": ("pipeline", False),
    "host": ("host", False),
}


REFRESH_MS = 3000


class RunsPage:
    def __init__(self, home: Path) -> None:
        self.home = home
        facets = _data.facets(home)
        self.pipeline = pn.widgets.Select(name="Pipeline", options=_widgets.choices(facets["pipeline"]))
        self.status = pn.widgets.Select(name="Status", options=_widgets.choices(["ok", "failed", "crashed", "running"]))
        self.failed_stage = pn.widgets.Select(name="Failed stage", options=_widgets.choices(facets["failed_stage"]))
        self.when = pn.widgets.Select(name="When", options=WHEN)
        self.since = pn.widgets.TextInput(name="Since", placeholder="2026-11-20 or 7d")
        self.until = pn.widgets.TextInput(name="Until", placeholder="2026-11-27T18:00")
        self.host = pn.widgets.Select(name="Host", options=_widgets.choices(facets["host"]))
        self.text = pn.widgets.TextInput(name="Error text", placeholder="NaN pixels")
        self.sort = pn.widgets.Select(name="Sort", options=list(SORTS))
        self.size = pn.widgets.Select(name="Rows a page", options=list(_data.PAGE_SIZES))
        self.page = pn.widgets.IntInput(name="Page", value=1, start=1, width=90)
        self.previous = pn.widgets.Button(name="◀ newer", width=90)
        self.next = pn.widgets.Button(name="older ▶", width=90)
        self.count = pn.pane.Markdown("")
        self.message = pn.Column()
        self.table = _widgets.table(pd.DataFrame(), "runs", html_columns=("run", "started"))
        filters = [
            self.pipeline,
            self.status,
            self.failed_stage,
            self.when,
            self.since,
            self.until,
            self.host,
            self.text,
            self.sort,
            self.size,
        ]
        for widget in filters:
            widget.param.watch(self._filters_changed, "value")
        self.page.param.watch(lambda _: self.refresh(), "value")
        self.previous.on_click(lambda _: self._turn(-1))
        self.next.on_click(lambda _: self._turn(1))
        self.url_problems = _widgets.url_alert(
            _widgets.sync_url(
                {
                    "pipeline": self.pipeline,
                    "status": self.status,
                    "failed_stage": self.failed_stage,
                    "when": self.when,
                    "since": self.since,
                    "until": self.until,
                    "host": self.host,
                    "text": self.text,
                    "sort": self.sort,
                    "size": self.size,
                    "p": self.page,
                }
            )
        )
        self.refresh()
        _widgets.every(REFRESH_MS, self._refresh_first_page)

    def _refresh_first_page(self) -> None:
        """New runs appear without a reload; a later page stays as the person left it."""
        if self.page.value == 1:
            self.refresh()

    def layout(self) -> pn.Column:
        return pn.Column(
            self.url_problems,
            _widgets.filter_bar(
                self.pipeline,
                self.status,
                self.failed_stage,
                self.when,
                self.host,
                self.text,
                self.since,
                self.until,
                self.sort,
                self.size,
            ),
            self.message,
            _widgets.pager(self.previous, self.page, self.next, self.count),
            self.table,
        )

    def filters(self) -> Filters:
        since = self.since.value.strip() or self.when.value
        return Filters(
            since=parse_time(since) if since else None,
            until=parse_time(self.until.value) if self.until.value.strip() else None,
            status=self.status.value or None,
            pipeline=self.pipeline.value or None,
            failed_stage=self.failed_stage.value or None,
            host=self.host.value or None,
            grep=self.text.value.strip() or None,
        )

    def _filters_changed(self, _: Any) -> None:
        if self.page.value != 1:
            self.page.value = 1  # refreshes
        else:
            self.refresh()

    def _turn(self, step: int) -> None:
        self.page.value = max(1, self.page.value + step)

    def refresh(self) -> None:
        try:
            filters = self.filters()
        except ValueError as error:
            self.message.objects = [pn.pane.Alert(str(error), alert_type="warning")]
            return
        self.message.objects = []
        limit = int(self.size.value)
        sort, descending = SORTS[self.sort.value]
        page = _data.runs_page(self.home, filters, sort, descending, (self.page.value - 1) * limit, limit)
        self.count.object = f"runs {page.label}"
        if not page.total:
            self.message.objects = [pn.pane.Alert(_empty_message(self.home, filters), alert_type="info")]
        self.table.value = display(page.rows)


def _empty_message(home: Path, filters: Filters) -> str:
    if filters == Filters():
        return (
            "No runs yet. Run a pipeline with `stagewatch.init()` (two lines, see the README), "
            f"or `stagewatch demo --home {home}`."
        )
    return "No run matches these filters."


def display(rows: pd.DataFrame) -> pd.DataFrame:
    """The runs as people read them: a link per run, relative times with the exact one on hover."""
    if rows.empty:
        return pd.DataFrame(
            columns=[
                "run",
                "pipeline",
                "status",
                "started",
                "duration",
                "stages",
                "failed",
                "failed stage",
                "error",
                "host",
            ]
        )
    return pd.DataFrame(
        {
            "run": [_widgets.run_link(r) for r in rows["run_id"]],
            "pipeline": rows["pipeline"],
            "status": rows["status"],
            "started": [_format.when_html(t.to_pydatetime() if pd.notna(t) else None) for t in rows["start_time"]],
            "duration": [_format.ms(v if pd.notna(v) else None) for v in rows["duration_ms"]],
            "stages": [f"{int(v):,}" if pd.notna(v) else "-" for v in rows["stages"]],
            "failed": [f"{int(v):,}" if pd.notna(v) else "-" for v in rows["stages_failed"]],
            "failed stage": rows["failed_stage"].fillna(""),
            "error": [_error_text(t, m) for t, m in zip(rows["error_type"], rows["error_message"], strict=True)],
            "host": rows["host"],
        }
    )


def _error_text(kind: Any, message: Any) -> str:
    if not isinstance(message, str) or not message:
        return ""
    return f"{kind}: {message[:200]}" if isinstance(kind, str) else message[:200]


def view(home: Path) -> pn.viewable.Viewable:
    return RunsPage(home).layout()


__all__ = ["RunsPage", "display", "view"]
