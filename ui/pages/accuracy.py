"""Accuracy: per stage, correct / wrong / invalid / unlabeled and precision, recall, F1, mAP,
IoU, updating while the run streams (the accuracy feed); error kinds, each a link to its
failure cases; per-class IoU and a confusion matrix for masks and point labels; trends
across runs."""

from __future__ import annotations

import html
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool, TapTool
from bokeh.plotting import figure as bokeh_figure

from stagewatch.daemon.query._sql import homes_of
from stagewatch.ui import _axes, _data, _failures, _format, _widgets
from stagewatch.ui._live import LiveFeed
from stagewatch.ui._router import href

REDRAW_MS = 1000
CELL = "padding:2px 8px;text-align:right;"
TREND_RUNS = 200


class AccuracyPage:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.feeds = [LiveFeed.of(one) for one in homes_of(home)]  # each home's daemon's
        runs = _failures.runs_with_accuracy(home, TREND_RUNS)
        self.runs = runs
        self.run = pn.widgets.TextInput(name="Run", placeholder="run id or prefix (default: the newest judged)")
        self.summary = pn.Column()
        self.trend = pn.Column()
        self.shown: tuple[str, Any] | None = None
        self.url_problems = _widgets.url_alert(_widgets.sync_url({"run": self.run}))
        self.run.param.watch(lambda _: self.redraw(force=True), "value")
        self.redraw(force=True)
        _widgets.fill_soon(self.trend, lambda: [trend_chart(_failures.accuracy_trend(home, runs))])
        _widgets.every(REDRAW_MS, self.redraw)

    def layout(self) -> pn.Column:
        return pn.Column(self.url_problems, self.run, self.summary, pn.pane.Markdown("### Across runs"), self.trend)

    def redraw(self, force: bool = False) -> None:
        """From the live feed while the run streams, else from its accuracy.json."""
        try:
            run_id = _data.find_run(self.home, self.run.value) if self.run.value.strip() else self._newest()
        except _data.RunNotFound as error:
            self.summary.objects = [pn.pane.Alert(str(error), alert_type="warning")]
            return
        if run_id is None:
            self.summary.objects = [
                pn.pane.Markdown(
                    "No run has been judged against a golden dataset yet: give `stagewatch.init(..., "
                    'dataset="golden.yaml")` (docs/ground-truth.md), or run `stagewatch demo`.'
                )
            ]
            return
        live = next((run for feed in self.feeds if (run := feed.board.runs.get(run_id)) is not None), None)
        stages = live.accuracy if live is not None and live.accuracy else None
        if stages:
            summary = {"stages": stages, "dataset": live.dataset, "in_progress": live.ended_at is None}
        else:
            summary = _data.load_accuracy(self.home, run_id) or {}
        key = (run_id, repr(summary.get("stages")))
        if not force and key == self.shown:
            return
        self.shown = key
        if self.summary.objects:  # redrawn while the run streams: its tables' rows change in place
            _widgets.refill(self.summary, sections(run_id, summary, self.home))
        else:  # the stages' table first; the error kinds (a query each) and the per-class tables a tick later
            _widgets.fill_soon(
                self.summary, lambda: lower_sections(run_id, summary, self.home), top_sections(run_id, summary)
            )

    def _newest(self) -> str | None:
        running = [r for feed in self.feeds for r in feed.board.visible() if r.accuracy and r.ended_at is None]
        return running[0].run_id if running else next(iter(self.runs), None)


def sections(run_id: str, summary: dict[str, Any], home: Path | None = None) -> list[Any]:
    """The run's accuracy: `top_sections`, then `lower_sections`."""
    return [*top_sections(run_id, summary), *lower_sections(run_id, summary, home)]


def top_sections(run_id: str, summary: dict[str, Any]) -> list[Any]:
    """Which run against which dataset, and its stages' table (or that none is judged yet)."""
    shown: list[Any] = [
        pn.pane.HTML(
            f"Run {_widgets.run_link(run_id)}"
            + (f" against <code>{html.escape(str(summary['dataset']))}</code>" if summary.get("dataset") else "")
            + (" · <b>in progress</b>: the counts move as its samples are judged" if summary.get("in_progress") else "")
        )
    ]
    stages = summary.get("stages") or {}
    if not stages:
        return [*shown, pn.pane.Markdown("No sample of this run has been judged yet.")]
    return [*shown, _widgets.table(stage_table(stages), "accuracy-stages")]


def lower_sections(run_id: str, summary: dict[str, Any], home: Path | None = None) -> list[Any]:
    """Below the stages' table: the error kinds, and per stage its classes and confusion matrix."""
    stages = summary.get("stages") or {}
    shown: list[Any] = []
    kinds = error_kinds(run_id, stages, home)
    if not kinds.empty:
        shown += [
            pn.pane.Markdown(
                "### Error kinds (a link lists the cases)\n"
                "A count is of mistakes (boxes for detection: one sample can miss several); a link lists "
                "the samples with at least one."
            ),
            _widgets.table(kinds, "accuracy-kinds", html_columns=("cases",)),
        ]
    for stage, entry in stages.items():
        metrics = entry.get("metrics") or {}
        if metrics.get("per_class") and entry.get("kind") == "boxes":
            shown.append(pn.pane.Markdown(f"### {stage}: detection accuracy per class"))
            shown.append(_widgets.table(per_class_boxes(metrics["per_class"]), f"box-classes-{stage}"))
        if metrics.get("per_class_iou"):
            shown.append(pn.pane.Markdown(f"### {stage}: per class"))
            shown.append(_widgets.table(per_class(metrics["per_class_iou"]), f"classes-{stage}"))
        if metrics.get("confusion"):
            shown.append(pn.pane.HTML(confusion_html(stage, metrics["confusion"])))
    return shown


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) and value is not None and value >= 0 else "-"


def stage_table(stages: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for stage, entry in stages.items():
        counts, metrics = entry.get("counts") or {}, entry.get("metrics") or {}
        coco = metrics.get("coco") or {}
        rows.append(
            {
                "stage": stage,
                "kind": entry.get("kind"),
                **{k: f"{counts.get(k, 0):,}" for k in ("correct", "wrong", "invalid", "unlabeled")},
                "precision": _number(metrics.get("precision")),
                "recall": _number(metrics.get("recall")),
                "F1": _number(metrics.get("f1")),
                "mAP": _number(coco.get("AP")),
                "AP50": _number(coco.get("AP50")),
                "mIoU": _number(metrics.get("miou")),
                "pixel/point accuracy": _number(metrics.get("accuracy")),
            }
        )
    return pd.DataFrame(rows)


def error_kinds(run_id: str, stages: dict[str, Any], home: Path | None = None) -> pd.DataFrame:
    """Box errors by kind (from the matcher), and wrong masks and clouds; each links to its cases,
    saying how many samples it lists (with `home`): 35 missed boxes may be in 19 samples."""
    rows = []
    for stage, entry in stages.items():
        metrics, counts = entry.get("metrics") or {}, entry.get("counts") or {}
        found = dict(metrics.get("errors") or {})
        if not found and counts.get("wrong"):
            kind = "mask_mismatch" if entry.get("kind") == "mask" else "point_label_mismatch"
            found = {kind: counts["wrong"]}
        if counts.get("invalid"):
            found["invalid prediction"] = counts["invalid"]
        for kind, count in sorted(found.items(), key=lambda item: -item[1]):
            which = ("status", "invalid") if kind == "invalid prediction" else ("kind", kind)
            query = "?" + urllib.parse.urlencode([("page", "failures"), ("run", run_id), ("stage", stage), which])
            samples = _samples_with(home, run_id, stage, kind) if home is not None else None
            rows.append(
                {
                    "stage": stage,
                    "error kind": kind.replace("_", " "),
                    "count": _counted(count, "box" if entry.get("kind") == "boxes" else "sample"),
                    "cases": f'<a href="{href(query)}">'
                    + (f"list the {_counted(samples, 'sample')}" if samples is not None else "list them")
                    + "</a>",
                }
            )
    return pd.DataFrame(rows)


def _counted(count: int, noun: str) -> str:
    """'1 box', '35 boxes', '19 samples'."""
    return f"{count:,} {noun}" + ("" if count == 1 else "es" if noun.endswith("x") else "s")


def _samples_with(home: Path, run_id: str, stage: str, kind: str) -> int:
    """How many failure cases the link lists: samples, however many mistakes each holds."""
    filters = (
        _failures.CaseFilters(run=run_id, stage=stage, status="invalid")
        if kind == "invalid prediction"
        else _failures.CaseFilters(run=run_id, stage=stage, kind=kind)
    )
    return _failures.failures_page(home, filters, limit=1).total


def per_class(iou: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{"class": name, "IoU": _number(value)} for name, value in iou.items()])


def per_class_boxes(figures: dict[str, Any]) -> pd.DataFrame:
    """Per class: COCO AP (IoU .50:.95), AP50 and AR100 as pycocotools gives them for that category,
    and precision, recall and F1 at the stage's IoU and score thresholds."""
    return pd.DataFrame(
        [
            {
                "class": name,
                "AP": _number(entry.get("AP")),
                "AP50": _number(entry.get("AP50")),
                "AR100": _number(entry.get("AR100")),
                "precision": _number(entry.get("precision")),
                "recall": _number(entry.get("recall")),
                "F1": _number(entry.get("f1")),
                "found": f"{entry.get('true_positives', 0):,}",
                "false positives": f"{entry.get('false_positives', 0):,}",
                "missed": f"{entry.get('missed', 0):,}",
            }
            for name, entry in figures.items()
        ]
    )


def confusion_html(stage: str, confusion: dict[str, Any]) -> str:
    """Rows: ground truth, columns: prediction; each cell shaded by its share of the row."""
    names, counts = confusion["classes"], np.asarray(confusion["counts"], dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True).clip(min=1)
    head = "".join(f"<th style='padding:2px 8px'>{html.escape(str(n))}</th>" for n in names)
    body = ""
    for i, name in enumerate(names):
        cells = "".join(
            f"<td style='{CELL}background:rgba(78,121,167,{counts[i, j] / totals[i, 0]:.2f})'>{counts[i, j]:,}</td>"
            for j in range(len(names))
        )
        body += f"<tr><th style='padding:2px 8px;text-align:left'>{html.escape(str(name))}</th>{cells}</tr>"
    return (
        f"<div class='sw-confusion'><b>{html.escape(stage)}: confusion matrix</b> (rows: ground truth, "
        f"columns: prediction)<table style='border-collapse:collapse'><tr><th></th>{head}</tr>{body}</table>"
        f"{_unmatched_line(names, confusion.get('unmatched'))}</div>"
    )


def _unmatched_line(names: list[str], unmatched: list[int] | None) -> str:
    """Points in no cell: those of a cloud whose other side was empty (each counted as wrong)."""
    if not unmatched or not any(unmatched):
        return ""
    per_class = ", ".join(f"{html.escape(str(n))} {c:,}" for n, c in zip(names, unmatched, strict=False) if c)
    return f"<div class='sw-unmatched'>points with no counterpart (the other cloud was empty): {per_class}</div>"


def trend_chart(trend: pd.DataFrame) -> Any:
    if trend.empty:
        return pn.pane.Markdown("No run has been judged yet.")
    figure = bokeh_figure(
        height=280,
        sizing_mode="stretch_width",
        x_axis_type="datetime",
        y_range=(0, 1.02),
        x_axis_label="run start (UTC)",
        y_axis_label="F1 (boxes) or mIoU",
        tools="pan,wheel_zoom,box_zoom,reset,save",
    )
    colours = _format.stage_colours(list(trend["stage"].unique()))
    for stage, rows in trend.groupby("stage", sort=False):
        source = ColumnDataSource(
            {
                "run_start": rows["run_start"].dt.tz_localize(None),
                "value": rows["value"],
                "run_id": rows["run_id"],
                "metric": rows["metric"],
            }
        )
        figure.line("run_start", "value", source=source, color=colours[stage], legend_label=str(stage))
        figure.scatter("run_start", "value", source=source, color=colours[stage], size=7, legend_label=str(stage))
    figure.add_tools(
        HoverTool(tooltips=[("run", "@run_id"), ("@metric", "@value{0.000}")]),
        TapTool(callback=_widgets.tap_opens("?page=accuracy&run=@run_id")),
    )
    _axes.time_axis(figure, trend["run_start"])
    figure.add_layout(figure.legend[0], "right")
    return _widgets.chart(figure, "accuracy-trend")


def view(home: Path) -> pn.viewable.Viewable:
    return AccuracyPage(home).layout()
