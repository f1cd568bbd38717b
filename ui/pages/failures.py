"""Failures: every failure case (wrong, invalid, crashed) filtered and sorted on the server;
a case opens prediction beside ground truth with the difference map (ui/pages/case.py)."""

from __future__ import annotations

import base64
import html
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pandas as pd
import panel as pn

from stagewatch.ui import _data, _failures, _format, _gallery, _widgets
from stagewatch.ui._router import link

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
SHOW = ("table", "gallery")
FROM = "from"  # a Case page's parameter: the Failures view it was opened from (its filters and sort)


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
        self.host = _widgets.host_filter(home)  # shown when the homes hold runs of several hosts
        self.text = pn.widgets.TextInput(name="Search", placeholder="sample id, reason")
        self.sort = pn.widgets.Select(name="Sort", options=list(SORTS))
        self.show = pn.widgets.RadioButtonGroup(
            name="Show", options=list(SHOW), value="table", width=180, **_widgets.BUTTON_GROUP
        )
        self.gallery = pn.pane.HTML("", visible=False, css_classes=["sw-gallery"], sizing_mode="stretch_width")
        self.rows = pd.DataFrame()
        self.named = {  # URL parameter -> filter (the pager restores them from the URL as it starts)
            "stage": self.stage,
            "status": self.status,
            "kind": self.kind,
            "class": self.class_name,
            "severity": self.severity,
            "confidence": self.confidence,
            "when": self.when,
            "run": self.run,
            "host": self.host,
            "q": self.text,
            "sort": self.sort,
        }
        self.query = _widgets.PagedQuery(
            "failures",
            "failure cases",
            self.named,
            self._page,
            self._display,
            lambda: "No failure case matches these filters." if self.filters() != _failures.CaseFilters() else EMPTY,
            html_columns=("case", "run", "when"),
            missing=lambda skipped: _data.missing_for_run_filter(self.home, skipped, self.run.value),
            # Every column within the page at 1,280 px: long text wraps rather than pushing the
            # run column (which tells two runs' cases of one sample apart) off the page.
            **_widgets.fitted(
                {"case": 90, "stage": 120, "outcome": 80, "confidence": 85, "severity": 70, "run": 80, "when": 95},
                wrapped=("case", "stage", "outcome", "error kinds", "classes", "reason"),
            ),
        )
        refused = _widgets.sync_url({"show": self.show})
        if self.show.value not in SHOW:  # a radio group takes any value: a link's typo shows the table
            refused.append(f"show={str(self.show.value)[:80]}")
            self.show.value = "table"
        self.show_problems = _widgets.url_alert(refused)
        self.show.param.watch(lambda _: self._show_view(), "value")
        self.query.refresh()
        self._show_view()

    def layout(self) -> pn.Column:
        return self.query.layout(list(self.query.filters.values()), self.show_problems, self.show, self.gallery)

    def filters(self) -> _failures.CaseFilters:
        return case_filters(
            self.home,
            self.stage.value,
            self.status.value,
            self.kind.value,
            self.class_name.value,
            float(self.severity.value),
            self.confidence.value,
            self.when.value,
            self.run.value,
            self.text.value,
            self.host.value,
        )

    def _page(self, offset: int, limit: int) -> _data.Page:
        sort, descending = SORTS[self.sort.value]
        return _failures.failures_page(self.home, self.filters(), sort, descending, offset, limit)

    def carried(self) -> str:
        """This view's filters and sort as a URL query, for a Case page's next/previous."""
        values = {name: _url_value(widget.value) for name, widget in self.named.items()}
        return urllib.parse.urlencode({k: v for k, v in values.items() if v not in ("", "0", "0,1")})

    def _display(self, rows: pd.DataFrame) -> pd.DataFrame:
        self.rows = rows
        if self.show.value == "gallery":
            self.gallery.object = gallery_html(self.home, rows, self.carried())
        return display(rows, self.carried())

    def _show_view(self) -> None:
        """The same page of cases as a table or as thumbnails (made only when shown)."""
        as_gallery = self.show.value == "gallery"
        if as_gallery:
            self.gallery.object = gallery_html(self.home, self.rows, self.carried())
        self.gallery.visible = as_gallery
        self.query.table.visible = not as_gallery


def case_filters(
    home: Path,
    stage: str,
    status: str,
    kind: str,
    class_name: str,
    severity: float,
    confidence: tuple[float, float],
    when: str,
    run: str,
    text: str,
    host: str = "",
) -> _failures.CaseFilters:
    """The Failures page's filters, from its widgets or from a Case page's `from` link alike."""
    found = _data.find_run(home, run) if run.strip() else None
    return _failures.CaseFilters(
        stage=stage or None,
        status=status or None,
        kind=kind or None,
        run=found,
        since=_data.filter_time(when) if when else None,
        min_severity=severity,
        text=text.strip() or None,
        class_name=class_name or None,
        min_confidence=confidence[0],
        max_confidence=confidence[1],
        host=host or None,
    )


def carried_view(home: Path, query: str) -> tuple[_failures.CaseFilters, str, bool]:
    """A Case page's `from` (the Failures view's query) -> its filters and sort; ValueError or
    RunNotFound when it does not read as one."""
    values = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    try:
        severity = float(values.get("severity") or 0.0)
        low, high = (float(v) for v in (values.get("confidence") or "0,1").split(","))
    except ValueError:
        raise ValueError(f"the failures view in this link does not read as one: {query[:200]!r}") from None
    if values.get("when", "") not in WHEN.values():
        raise ValueError(
            f"expected a time window of {', '.join(v for v in WHEN.values() if v)}, got {values['when']!r}"
        )
    sort_label = values.get("sort") or next(iter(SORTS))
    if sort_label not in SORTS:
        raise ValueError(f"expected a sort of {', '.join(SORTS)}, got {sort_label!r}")
    filters = case_filters(
        home,
        values.get("stage", ""),
        values.get("status", ""),
        values.get("kind", ""),
        values.get("class", ""),
        severity,
        (low, high),
        values.get("when", ""),
        values.get("run", ""),
        values.get("q", ""),
        values.get("host", ""),
    )
    return (filters, *SORTS[sort_label])


def _url_value(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{part:g}" for part in value)
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def case_url(run_id: str, stage: str, sample: str | None, carried: str = "") -> str:
    """?page=case&… of one case; `carried`: the Failures view it is opened from (for next/previous)."""
    parameters = [("page", "case"), ("run", run_id), ("stage", stage), ("sample", sample or "")]
    return link("?" + urllib.parse.urlencode(parameters + ([(FROM, carried)] if carried else [])))


def case_link(run_id: str, stage: str, sample: str | None, text: str, carried: str = "") -> str:
    return f'<a href="{html.escape(case_url(run_id, stage, sample, carried), quote=True)}">{html.escape(text)}</a>'


def gallery_html(home: Path, rows: pd.DataFrame, carried: str = "") -> str:
    """One page of cases as thumbnails, each a link to its Case page, in the table's order."""
    if rows.empty:
        return ""
    records = rows.to_dict("records")
    cards = [
        _card(row, picture, carried) for row, picture in zip(records, _gallery.thumbnails(home, records), strict=True)
    ]
    return (
        "<div class='sw-gallery-grid' style='display:grid;gap:10px;"
        f"grid-template-columns:repeat(auto-fill,minmax({_gallery.THUMBNAIL_SIDE + 12}px,1fr))'>"
        + "".join(cards)
        + "</div>"
    )


def _card(row: dict[str, Any], jpeg: bytes, carried: str) -> str:
    picture = base64.b64encode(jpeg).decode("ascii")
    kinds = case_kinds(row["status"], row.get("error_types"), row.get("reason"))
    caption = f"{row['stage']} · {row.get('sample_id') or '-'}"
    title = f"{caption}: {row['status']} {kinds} (severity {row['severity']:.2f}) {(row.get('reason') or '')[:200]}"
    href = case_url(row["run_id"], row["stage"], row.get("sample_id"), carried)
    return (
        f'<a class="sw-thumb sw-thumb-{html.escape(str(row["status"]))}" href="{html.escape(href, quote=True)}" '
        f'title="{html.escape(title, quote=True)}" style="text-decoration:none;color:inherit;font-size:12px">'
        f'<img src="data:image/jpeg;base64,{picture}" style="width:{_gallery.THUMBNAIL_SIDE}px;display:block;'
        f'border:1px solid #999"><div>{html.escape(caption)}</div>'
        f"<div><b>{html.escape(str(row['status']))}</b> {html.escape(kinds)} · "
        f"{row['severity']:.2f} · {html.escape(row['run_id'][:8])}</div></a>"
    )


def kind_words(kind: str) -> str:
    """An error kind as people read it: 'mask_mismatch' -> 'mask mismatch' (the token stays in URLs)."""
    return kind.replace("_", " ")


EXCEPTION_TYPE = re.compile(r"([A-Za-z_][\w.]*)(?::|$)")


def case_kinds(status: str, kinds: Any, reason: str | None) -> str:
    """A case's error kinds in words. A stage that failed has the kind "failed", its outcome
    already ("failed failed"): it says what it raised instead, as its reason starts."""
    words = [kind_words(kind) for kind in (kinds if kinds is not None else []) if kind != status]
    if words or status not in ("failed", "crashed"):
        return ", ".join(words)
    if status == "crashed":
        return "process lost"
    raised = EXCEPTION_TYPE.match(reason or "")
    return f"raised {raised.group(1)}" if raised else "raised an exception"


def display(rows: pd.DataFrame, carried: str = "") -> pd.DataFrame:
    """The cases as people read them; read over several homes, each with its run's host."""
    hosts = {"host": rows["host"].fillna("")} if "host" in rows else {}
    columns = ["case", "stage", "outcome", "error kinds", "classes", "confidence", "severity", "reason", "run", "when"]
    columns += list(hosts)
    if rows.empty:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(
        {
            "case": [
                case_link(r, s, x, x or "-", carried)
                for r, s, x in zip(rows["run_id"], rows["stage"], rows["sample_id"], strict=True)
            ],
            "stage": rows["stage"],
            "outcome": rows["status"],
            "error kinds": [
                case_kinds(*case) for case in zip(rows["status"], rows["error_types"], rows["reason"], strict=True)
            ],
            "classes": [", ".join(names) if names is not None else "" for names in rows["classes"]],
            "confidence": ["" if pd.isna(v) else f"{v:.2f}" for v in rows["confidence"]],
            "severity": [f"{v:.2f}" for v in rows["severity"]],
            "reason": [(r or "")[:200] for r in rows["reason"]],
            "run": [_widgets.run_link(r) for r in rows["run_id"]],
            "when": [_format.when_html(t.to_pydatetime()) for t in rows["time"]],
            **hosts,
        }
    )


def view(home: Path) -> pn.viewable.Viewable:
    return FailuresPage(home).layout()
