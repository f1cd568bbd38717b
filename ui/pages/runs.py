"""Runs: every run, filtered and sorted on the server, one page at a time.

"Runs that failed at detection last week" is two clicks: Failed stage → detection, When → last 7 days.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import panel as pn

from stagewatch.daemon import Filters
from stagewatch.daemon.projection import _outcomes as outcomes
from stagewatch.ui import _data, _format, _widgets
from stagewatch.ui._router import link

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
PICK_TWO = "Tick two runs to compare them."


class RunsPage:
    def __init__(self, home: Path) -> None:
        self.home = home
        facets = _data.facets(home)
        self.pipeline = pn.widgets.Select(name="Pipeline", options=_widgets.choices(facets["pipeline"]))
        self.status = pn.widgets.Select(
            name="Status", options={"any": "", **{outcomes.label(s): s for s in outcomes.RUN_STATUSES}}
        )
        self.failed_stage = pn.widgets.Select(name="Failed stage", options=_widgets.choices(facets["failed_stage"]))
        self.when = pn.widgets.Select(name="When", options=WHEN)
        self.since = pn.widgets.TextInput(name="Since", placeholder=_widgets.SINCE_HINT)
        self.until = pn.widgets.TextInput(name="Until", placeholder=_widgets.UNTIL_HINT)
        self.host = _widgets.host_filter(home)  # shown when the homes hold runs of several hosts
        self.text = pn.widgets.TextInput(name="Error text", placeholder="NaN pixels")
        self.sort = pn.widgets.Select(name="Sort", options=list(SORTS))
        self.query = _widgets.PagedQuery(
            "runs",
            "runs",
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
            },
            self._page,
            display,
            lambda: _empty_message(self.home, self.filters()),
            html_columns=("run", "started"),
            # Within the page at 1,280 px: the error (and any long name) wraps.
            **_widgets.fitted(
                {"run": 75, "pipeline": 85, "host": 80, "status": 95, "started": 85, "duration": 75, "executions": 80}
                | {"failed": 55, "failed stage": 125},
                wrapped=("pipeline", "host", "status", "failed stage", "error"),
            ),
        )
        # Tick two runs to compare them: the link below the filters opens the Compare page.
        self.query.table.param.update(selectable="checkbox", hidden_columns=["run_id", "start"])
        self.pick = pn.pane.HTML(PICK_TWO, css_classes=["sw-compare-selected"])
        self.query.table.param.watch(lambda _: self._picked(), ["selection", "value"])
        self.seen = _data.runs_signature(home)
        self.query.refresh()
        _widgets.every(REFRESH_MS, self._refresh_first_page)

    def _refresh_first_page(self) -> None:
        """New runs appear without a reload (the table is read again only when the runs
        changed); a later page stays as the person left it."""
        signature = _data.runs_signature(self.home)
        if self.query.page.value == 1 and signature != self.seen:
            self.seen = signature
            self.query.refresh()

    def layout(self) -> pn.Column:
        shown = [
            self.pipeline,
            self.status,
            self.failed_stage,
            self.when,
            self.host,
            self.text,
            self.since,
            self.until,
            self.sort,
        ]
        return self.query.layout(shown, self.pick)

    def _picked(self) -> None:
        """Two runs ticked: a link comparing them (the older is the baseline)."""
        rows = self.query.table.value
        chosen = [i for i in self.query.table.selection if 0 <= i < len(rows)]
        if len(chosen) != 2 or "run_id" not in rows:
            self.pick.object = PICK_TWO
            return
        older, newer = rows.iloc[chosen].sort_values("start", kind="stable")["run_id"]  # the older is A
        href = link(f"?page=compare&a={quote(older, safe='')}&b={quote(newer, safe='')}")
        self.pick.object = f"<a href='{html.escape(href, quote=True)}'>Compare the two ticked runs</a>"

    def filters(self) -> Filters:
        since = self.since.value.strip() or self.when.value
        return Filters(
            since=_data.filter_time(since) if since else None,
            until=_data.filter_time(self.until.value, until=True) if self.until.value.strip() else None,
            status=self.status.value or None,
            pipeline=self.pipeline.value or None,
            failed_stage=self.failed_stage.value or None,
            host=self.host.value or None,
            grep=self.text.value.strip() or None,
        )

    def _page(self, offset: int, limit: int) -> _data.Page:
        sort, descending = SORTS[self.sort.value]
        return _data.runs_page(self.home, self.filters(), sort, descending, offset, limit)


def _empty_message(home: Path, filters: Filters) -> str:
    if _data.tables_not_whole(home):  # the banner says why: "no runs yet" would be untrue
        return "No runs to list now: a table is being rebuilt or is gone (the warning above)."
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
                "host",
                "status",
                "started",
                "duration",
                "executions",
                "failed",
                "failed stage",
                "error",
                "run_id",
                "start",
            ]
        )
    return pd.DataFrame(
        {
            "run": [_widgets.run_link(r) for r in rows["run_id"]],
            "pipeline": rows["pipeline"],
            "host": rows["host"],  # before the long error text: in view at 1,280 px
            "status": [outcomes.label(s) for s in rows["status"]],
            "started": [_format.when_html(t.to_pydatetime() if pd.notna(t) else None) for t in rows["start_time"]],
            "duration": [_format.ms(v if pd.notna(v) else None) for v in rows["duration_ms"]],
            # stage executions (a count of stages would be 5 for the demo, not 296)
            "executions": [f"{int(v):,}" if pd.notna(v) else "-" for v in rows["stages"]],
            "failed": [f"{int(v):,}" if pd.notna(v) else "-" for v in rows["stages_failed"]],
            "failed stage": rows["failed_stage"].fillna(""),
            "error": [_error_text(t, m) for t, m in zip(rows["error_type"], rows["error_message"], strict=True)],
            "run_id": rows["run_id"],  # hidden: which runs are ticked, and which is older
            "start": rows["start_time"],
        }
    )


def _error_text(kind: Any, message: Any) -> str:
    if not isinstance(message, str) or not message:
        return ""
    return f"{kind}: {message[:200]}" if isinstance(kind, str) else message[:200]


def view(home: Path) -> pn.viewable.Viewable:
    return RunsPage(home).layout()


__all__ = ["RunsPage", "display", "view"]
