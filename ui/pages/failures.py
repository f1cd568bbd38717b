"""Failures: every failure case (wrong, invalid, crashed) filtered and sorted on the server;
a case opens prediction beside ground truth with the difference map (ui/pages/case.py)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd
import panel as pn

from stagewatch.daemon import parse_time
from stagewatch.ui import _data, _failures, _format, _widgets

WHEN = {"any time": "", "last 24 hours": "24h", "last 7 days": "7d", "last 30 days": "30d"}
SORTS = {
    "most severe first": ("severity", True),
    "newest first": ("time", True),
    "stage": ("stage", False),
    "sample": ("sample_id", False),
}
EMPTY = (
    "No failure case yet: runs judged against a golden dataset list their wrong and invalid samples here, "
    "and failed stages as crashed (see docs/ground-truth.md)."
)
SEVERITIES = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9]


class FailuresPage:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.stage = pn.widgets.Select(name="Stage", options=_widgets.choices(_data.facets(home)["stage"]))
        self.status = pn.widgets.Select(name="Outcome", options=_widgets.choices(list(_failures.FAILURE_STATUSES)))
        self.kind = pn.widgets.Select(name="Error kind", options=_widgets.choices(_failures.error_kinds(home)))
        self.severity = pn.widgets.Select(name="Severity at least", options=SEVERITIES, value=0.0)
        self.when = pn.widgets.Select(name="When", options=WHEN)
        self.run = pn.widgets.TextInput(name="Run", placeholder="run id or prefix")
        self.text = pn.widgets.TextInput(name="Search", placeholder="sample id, reason")
        self.sort = pn.widgets.Select(name="Sort", options=list(SORTS))
        self.size = pn.widgets.Select(name="Rows a page", options=list(_data.PAGE_SIZES))
        self.page = pn.widgets.IntInput(name="Page", value=1, start=1)
        self.previous = pn.widgets.Button(name="◀ previous")
        self.next = pn.widgets.Button(name="next ▶")
        self.count = pn.pane.Markdown("")
        self.message = pn.Column()
        self.table = _widgets.table(pd.DataFrame(), "failures", html_columns=("case", "run", "when"))
        filters = [
            self.stage,
            self.status,
            self.kind,
            self.severity,
            self.when,
            self.run,
            self.text,
            self.sort,
            self.size,
        ]
        for widget in filters:
            widget.param.watch(self._filters_changed, "value")
        self.page.param.watch(lambda _: self.refresh(), "value")
        self.previous.on_click(lambda _: setattr(self.page, "value", max(1, self.page.value - 1)))
        self.next.on_click(lambda _: setattr(self.page, "value", self.page.value + 1))
        self.url_problems = _widgets.url_alert(
            _widgets.sync_url(
                {
                    "stage": self.stage,
                    "status": self.status,
                    "kind": self.kind,
                    "severity": self.severity,
                    "when": self.when,
                    "run": self.run,
                    "q": self.text,
                    "sort": self.sort,
                    "size": self.size,
                    "p": self.page,
                }
            )
        )
        self.refresh()

    def layout(self) -> pn.Column:
        return pn.Column(
            self.url_problems,
            _widgets.filter_bar(
                self.stage, self.status, self.kind, self.severity, self.when, self.run, self.text, self.sort, self.size
            ),
            self.message,
            _widgets.pager(self.previous, self.page, self.next, self.count),
            self.table,
        )

    def filters(self) -> _failures.CaseFilters:
        run = _data.find_run(self.home, self.run.value) if self.run.value.strip() else None
        return _failures.CaseFilters(
            stage=self.stage.value or None,
            status=self.status.value or None,
            kind=self.kind.value or None,
            run=run,
            since=parse_time(self.when.value) if self.when.value else None,
            min_severity=float(self.severity.value),
            text=self.text.value.strip() or None,
        )

    def _filters_changed(self, _: Any) -> None:
        if self.page.value != 1:
            self.page.value = 1
        else:
            self.refresh()

    def refresh(self) -> None:
        try:
            filters = self.filters()
        except (ValueError, _data.RunNotFound) as error:
            self.message.objects = [pn.pane.Alert(str(error), alert_type="warning")]
            return
        self.message.objects = []
        limit = int(self.size.value)
        sort, descending = SORTS[self.sort.value]
        page = _failures.failures_page(self.home, filters, sort, descending, (self.page.value - 1) * limit, limit)
        self.count.object = f"failure cases {page.label}"
        if not page.total:
            self.message.objects = [
                pn.pane.Alert(
                    "No failure case matches these filters." if filters != _failures.CaseFilters() else EMPTY,
                    alert_type="info",
                )
            ]
        self.table.value = display(page.rows)


def case_link(run_id: str, stage: str, sample: str | None, text: str) -> str:
    query = "&".join(
        f"{k}={html.escape(str(v), quote=True)}"
        for k, v in (("page", "case"), ("run", run_id), ("stage", stage), ("sample", sample or ""))
    )
    return f'<a href="?{query}">{html.escape(text)}</a>'


def display(rows: pd.DataFrame) -> pd.DataFrame:
    columns = ["case", "stage", "outcome", "error kinds", "severity", "reason", "run", "when"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(
        {
            "case": [
                case_link(r, s, x, x or "-")
                for r, s, x in zip(rows["run_id"], rows["stage"], rows["sample_id"], strict=True)
            ],
            "stage": rows["stage"],
            "outcome": rows["status"],
            "error kinds": [", ".join(kinds) if kinds is not None else "" for kinds in rows["error_types"]],
            "severity": [f"{v:.2f}" for v in rows["severity"]],
            "reason": [(r or "")[:200] for r in rows["reason"]],
            "run": [_widgets.run_link(r) for r in rows["run_id"]],
            "when": [_format.when_html(t.to_pydatetime()) for t in rows["time"]],
        }
    )


def view(home: Path) -> pn.viewable.Viewable:
    return FailuresPage(home).layout()
