"""Failures: every failure case (wrong, invalid, crashed) filtered and sorted on the server;
a case opens prediction beside ground truth with the difference map (ui/pages/case.py)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import panel as pn

from stagewatch.daemon import parse_time
from stagewatch.ui import _data, _failures, _format, _widgets

WHEN = {"any time": "", "last 24 hours": "24h", "last 7 days": "7d", "last 30 days": "30d"}
SORTS = {
    "most severe first": ("severity", True),
    "newest first": ("time", True),
    "most confident first (boxes)": ("confidence", True),
    "stage": ("stage", False),
    "sample": ("sample_id", False),
}
EMPTY = (
    "No failure case yet: runs judged against a golden dataset list their wrong and invalid samples here, "
    "and stage executions that failed (raised an exception) or crashed (their process was lost) "
    "(see docs/ground-truth.md)."
)
SEVERITIES = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9]


class FailuresPage:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.stage = pn.widgets.Select(name="Stage", options=_widgets.choices(_data.facets(home)["stage"]))
        self.status = pn.widgets.Select(name="Outcome", options=_widgets.choices(list(_failures.FAILURE_STATUSES)))
        choices = _failures.case_choices(home)
        # Error kinds read as the Accuracy page and the case page write them: "mask mismatch".
        kinds = {"any": "", **{kind_words(kind): kind for kind in choices["kind"]}}
        self.kind = pn.widgets.Select(name="Error kind", options=kinds)
        self.class_name = pn.widgets.Select(name="Class", options=_widgets.choices(choices["class"]))
        self.severity = pn.widgets.Select(name="Severity at least", options=SEVERITIES, value=0.0)
        self.confidence = pn.widgets.RangeSlider(
            name="Confidence (boxes)", start=0.0, end=1.0, step=0.05, value=(0.0, 1.0), width=180
        )
        self.when = pn.widgets.Select(name="When", options=WHEN)
        self.run = pn.widgets.TextInput(name="Run", placeholder="run id or prefix")
        self.text = pn.widgets.TextInput(name="Search", placeholder="sample id, reason")
        self.sort = pn.widgets.Select(name="Sort", options=list(SORTS))
        self.query = _widgets.PagedQuery(
            "failures",
            "failure cases",
            {
                "stage": self.stage,
                "status": self.status,
                "kind": self.kind,
                "class": self.class_name,
                "severity": self.severity,
                "confidence": self.confidence,
                "when": self.when,
                "run": self.run,
                "q": self.text,
                "sort": self.sort,
            },
            self._page,
            display,
            lambda: "No failure case matches these filters." if self.filters() != _failures.CaseFilters() else EMPTY,
            html_columns=("case", "run", "when"),
            # Every column within the page at 1,280 px: long text wraps rather than pushing the
            # run column (which tells two runs' cases of one sample apart) off the page.
            layout="fit_columns",
            formatters={"reason": {"type": "textarea"}, "error kinds": {"type": "textarea"}},
            widths={"case": 90, "stage": 120, "outcome": 80, "confidence": 85, "severity": 70, "run": 80, "when": 95},
        )
        self.query.refresh()

    def layout(self) -> pn.Column:
        return self.query.layout(list(self.query.filters.values()))

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
            class_name=self.class_name.value or None,
            min_confidence=self.confidence.value[0],
            max_confidence=self.confidence.value[1],
        )

    def _page(self, offset: int, limit: int) -> _data.Page:
        sort, descending = SORTS[self.sort.value]
        return _failures.failures_page(self.home, self.filters(), sort, descending, offset, limit)


def case_link(run_id: str, stage: str, sample: str | None, text: str) -> str:
    query = "&".join(
        f"{k}={html.escape(str(v), quote=True)}"
        for k, v in (("page", "case"), ("run", run_id), ("stage", stage), ("sample", sample or ""))
    )
    return f'<a href="?{query}">{html.escape(text)}</a>'


def kind_words(kind: str) -> str:
    """An error kind as people read it: 'mask_mismatch' -> 'mask mismatch' (the token stays in URLs)."""
    return kind.replace("_", " ")


def display(rows: pd.DataFrame) -> pd.DataFrame:
    columns = ["case", "stage", "outcome", "error kinds", "classes", "confidence", "severity", "reason", "run", "when"]
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
            "error kinds": [
                ", ".join(map(kind_words, kinds)) if kinds is not None else "" for kinds in rows["error_types"]
            ],
            "classes": [", ".join(names) if names is not None else "" for names in rows["classes"]],
            "confidence": ["" if pd.isna(v) else f"{v:.2f}" for v in rows["confidence"]],
            "severity": [f"{v:.2f}" for v in rows["severity"]],
            "reason": [(r or "")[:200] for r in rows["reason"]],
            "run": [_widgets.run_link(r) for r in rows["run_id"]],
            "when": [_format.when_html(t.to_pydatetime()) for t in rows["time"]],
        }
    )


def view(home: Path) -> pn.viewable.Viewable:
    return FailuresPage(home).layout()
