"""Run: one run's whole story. Status and config; per stage (pipeline order) counts, failure
rate, percentiles, time share, memory; the bottleneck in words; a sample's waterfall;
durations over the run; every error with its traceback; saved outputs by stage and sample."""

from __future__ import annotations

import base64
import html
import io
import urllib.parse
from pathlib import Path
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import NumeralTickFormatter
from PIL import Image

from stagewatch._home import ARTIFACT_FORM
from stagewatch.daemon.groundtruth.diff import viridis
from stagewatch.daemon.groundtruth.formats import LabelError
from stagewatch.daemon.projection import _outcomes as outcomes
from stagewatch.ui import _cloud3d, _data, _format, _widgets
from stagewatch.ui._router import href, link

OUTPUTS_PAGE = 24  # executions of a stage whose saved outputs one page shows
THUMBNAILS_A_PAGE = 96  # an execution may save many outputs: past this many on a page, links
LIVE_REFRESH_MS = 2000


class RunPage:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.run_id = pn.widgets.TextInput(name="Run id (or a unique prefix)", placeholder="from the Runs page")
        self.sample = pn.widgets.Select(name="Sample for the waterfall", options=[])
        self.artifact = pn.widgets.TextInput(name="Saved output", placeholder=ARTIFACT_FORM)
        self.compare = pn.widgets.TextInput(
            name="Compare it with (an image of another run, say)", placeholder=ARTIFACT_FORM
        )
        self.body = pn.Column()
        self.waterfall = pn.Column()
        self.preview = pn.Column()
        self.view_data: dict[str, Any] | None = None
        self.outputs = OutputsBrowser(home)
        self.order = pn.widgets.Select(name="Order", options=_data.EXECUTION_ORDER_CHOICES, value="failures")
        self.executions = _widgets.PagedQuery(
            "executions",
            "stage executions",
            {"order": self.order},
            self._executions_page,
            executions_display,
            lambda: "No stage of this run has ended yet.",
            turns=("◀ earlier", "later ▶"),
            missing=self._missing_rows,
            # Within the page at 1,280 px: the error (up to 4,096 characters) wraps.
            **_widgets.fitted(
                {"started": 200, "stage": 120, "sample": 100, "status": 80, "duration": 80, "process peak": 100},
                wrapped=("started", "stage", "sample", "error"),
            ),
        )
        # The link's run first, then the watchers: the page is drawn once, here.
        refused = _widgets.sync_url({"run": self.run_id, "artifact": self.artifact, "compare": self.compare})
        self.run_id.param.watch(lambda _: self.show(), "value")
        self.sample.param.watch(lambda _: self._draw_waterfall(), "value")
        self.artifact.param.watch(lambda _: self.show_artifact(), "value")
        self.compare.param.watch(lambda _: self.show_artifact(), "value")
        self.show()
        self.show_artifact()
        # Their options are the run's samples and stages. A thumbnail's link names the outputs'
        # stage and page, so the page it opens (and back) lists the outputs where they were.
        refused += _widgets.sync_url(
            {"sample": self.sample, "outputs": self.outputs.stage, "outputs_page": self.outputs.page}
        )
        self.url_problems = _widgets.url_alert(refused)
        _widgets.every(LIVE_REFRESH_MS, self._refresh_if_running)

    def layout(self) -> pn.Column:
        # The chosen output above the run's story: where a person looks after clicking a
        # thumbnail (below the outputs it opened 2,000 px lower, out of sight).
        return pn.Column(self.url_problems, self.run_id, self.artifact, self.compare, self.preview, self.body)

    def _refresh_if_running(self) -> None:
        """Redraw a run in progress when its audit trail moved (a redraw resets zoom and cards)."""
        if self.view_data is None or self.view_data["audit"].get("complete"):
            return
        audit = _data.load_audit_head(self.home, self.view_data["audit"]["run_id"])
        if (audit.get("last_lsn"), audit.get("complete")) != (
            self.view_data["audit"].get("last_lsn"),
            self.view_data["audit"].get("complete"),
        ):
            self.show()

    def show(self) -> None:
        text = self.run_id.value.strip()
        if not text:
            self.body.objects = [pn.pane.Markdown(f"Pick a run on the [Runs]({link('?page=runs')}) page.")]
            return
        try:
            run_id = _data.find_run(self.home, text)
            with _data.skipped_files() as skipped:
                data = _data.run_view(self.home, run_id)
        except _data.RunNotFound as error:
            self.body.objects = [pn.pane.Alert(str(error), alert_type="danger")]
            return
        data["colours"] = _format.stage_colours([*_data.facets(self.home)["stage"], *data["order"]])
        data["damaged"] = _data.skipped_for_run(self.home, skipped, run_id)
        self.view_data = data
        samples = data["samples"]  # those that failed first
        wanted = self.sample.value  # a link's sample (an exemplar's) may be past the listed ones
        if wanted and wanted not in samples and not _data.sample_frame(self.home, run_id, wanted).empty:
            samples = [wanted, *samples]
        self.sample.options = samples
        if self.sample.value not in samples and samples:
            self.sample.value = samples[0]
        self._draw_waterfall()
        self.executions.refresh()
        executions = self.executions.layout([self.order])
        saved = self.outputs.show(data["audit"]["run_id"], data["order"])
        _widgets.table_first(self.body, sections(data, self.sample, self.waterfall, executions, saved))

    def _draw_waterfall(self) -> None:
        if self.view_data is not None:
            run_id = self.view_data["audit"]["run_id"]
            rows = _data.sample_frame(self.home, run_id, self.sample.value)
            gaps = _data.sample_gaps(self.home, run_id, self.sample.value)
            self.waterfall.objects = [waterfall(rows, self.sample.value, self.view_data["colours"], gaps)]

    def _missing_rows(self, skipped: list[str]) -> list[str]:
        """The damaged files left out of the executions' query that may have held this run's rows."""
        if self.view_data is None:
            return skipped
        return _data.skipped_for_run(self.home, skipped, self.view_data["audit"]["run_id"])

    def _executions_page(self, offset: int, limit: int) -> _data.Page:
        if self.view_data is None:
            raise ValueError("Pick a run first.")
        return _data.executions_of(self.home, self.view_data["audit"]["run_id"], self.order.value, offset, limit)

    def show_artifact(self) -> None:
        text = self.artifact.value.strip()
        if not text:
            self.preview.objects = []
            return
        try:
            path = _data.resolve_artifact(self.home, text)
        except _data.ArtifactRefused as error:
            self.preview.objects = [pn.pane.Alert(str(error), alert_type="danger")]
            return
        kind, content = _data.preview(path)
        title = pn.pane.Markdown(f"`{text}`")
        if kind == "unreadable":
            self.preview.objects = [title, pn.pane.Alert(content, alert_type="warning")]
        elif path.suffix.lower() in (".ply", ".pcd") and kind == "summary" and "points" in content:
            self.preview.objects = [title, *cloud_preview(path, content)]
        elif kind == "png":
            self.preview.objects = [
                title,
                pn.pane.PNG(
                    io.BytesIO(content), width=shown_width(content), sizing_mode="fixed", css_classes=["sw-preview"]
                ),
            ]
        else:
            self.preview.objects = [title, pn.pane.JSON(content, depth=3)]
        if self.compare.value.strip():
            self.preview.objects = [*self.preview.objects, *self._difference(path)]

    def _difference(self, path: Path) -> list[Any]:
        """The saved image against another: |difference| heatmap, colour bar and numbers."""
        other = self.compare.value.strip()
        try:
            found = _data.image_pair_difference(path, _data.resolve_artifact(self.home, other))
        except (_data.ArtifactRefused, ValueError, OSError, SyntaxError) as error:  # PIL: SyntaxError too
            return [pn.pane.Alert(f"Cannot compare with `{other}`: {error}", alert_type="warning")]
        low, high = found.scale
        bar = "".join(
            # ints: numpy 2 spells a uint8 as np.uint8(68), which no browser reads as a colour
            f'<span style="display:inline-block;width:3px;height:12px;background:rgb({r:d},{g:d},{b:d})"></span>'
            for r, g, b in viridis(np.linspace(0, 1, 64), 0.0, 1.0).tolist()
        )
        return [
            pn.pane.Markdown(f"### Difference with `{other}`"),
            pn.pane.PNG(_png(found.picture), sizing_mode="fixed", css_classes=["sw-difference"]),
            pn.pane.HTML(f"<div class='sw-colour-bar'>{low:.3g} {bar} {high:.3g} (|difference|, 1 = full range)</div>"),
            pn.pane.Markdown(
                f"mean |difference| **{found.mean_absolute:.4f}**; **{found.over_threshold:.2%}** of pixels differ "
                f"by more than {found.threshold}"
            ),
        ]


def cloud_preview(path: Path, summary: dict[str, Any]) -> list[Any]:
    """A saved PLY/PCD output as a cloud in 3D (the Case page's view, one side), its point count
    and how many of them are drawn; the file's summary stays below, collapsed."""
    try:
        points, labels, attributes = _data.saved_cloud(path)
    except (OSError, ValueError, LabelError) as error:
        return [pn.pane.Alert(f"{path.name} cannot be drawn: {error}", alert_type="warning")]
    counted = f"**{len(points):,} points**" + (f", labels {summary['values']}" if summary.get("values") else "")
    view = _cloud3d.cloud_views(_cloud3d.single(points, labels, attributes, path.name))
    return [
        pn.pane.Markdown(counted),
        pn.Column(view, sizing_mode="stretch_width", css_classes=["sw-preview-cloud"]),
        pn.Card(pn.pane.JSON(summary, depth=2), title="The file", collapsed=True),
    ]


PREVIEW_WIDTHS = (480, 1200)  # a 160x120 output drawn at least this wide (pixels kept sharp), at most that


def shown_width(png: bytes) -> int:
    """The width to draw a saved PNG at: its own within PREVIEW_WIDTHS, scaled up or down into it."""
    try:
        native = Image.open(io.BytesIO(png)).width
    except (OSError, SyntaxError):  # PIL says SyntaxError for some damaged files
        return PREVIEW_WIDTHS[0]
    return min(max(native, PREVIEW_WIDTHS[0]), PREVIEW_WIDTHS[1])


def _png(picture: np.ndarray) -> io.BytesIO:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG")
    out.seek(0)
    return out


def sections(
    data: dict[str, Any],
    sample: pn.widgets.Select,
    waterfall_pane: pn.Column,
    executions: pn.Column,
    saved_outputs: list[Any],
) -> list[Any]:
    audit, stats = data["audit"], data["stats"]
    # Its stages, chart and executions lack the rows of a damaged data file: said first.
    shown: list[Any] = [header(audit), *_widgets.damage_alerts(data.get("damaged", []))]
    skew = audit.get("clock_skew")
    if isinstance(skew, dict) and skew.get("message"):
        shown.append(pn.pane.Alert(f"**Clock skew:** {html.escape(str(skew['message']))}", alert_type="warning"))
    for problem in audit.get("problems", []):
        if "has not finished" not in problem or audit.get("status") != "running":
            shown.append(pn.pane.Alert(f"Incomplete record: {problem}", alert_type="warning"))
    shown += [error_card(error) for error in data["errors"]]
    if data["errors_more"]:
        shown.append(
            pn.pane.Markdown(f"… and {data['errors_more']:,} more errors: the stage executions below list them all.")
        )
    if stats.empty:
        if not data.get("damaged"):  # else its rows may all be in the damaged file, said above
            shown.append(pn.pane.Markdown("No stage has ended in this run yet."))
        return shown
    sentence = _data.bottleneck_sentence(stats)
    if sentence:
        shown.append(pn.pane.Alert(f"**Bottleneck:** {sentence}", alert_type="info"))
    shown += [
        pn.pane.Markdown("### Stages"),
        _widgets.table(
            stage_display(stats, audit),
            "stages",
            html_columns=("share of time", "exemplars"),
            **STAGES_FIT,
        ),
        *([pn.pane.Alert(data["outside_problem"], alert_type="warning")] if data.get("outside_problem") else []),
        pn.pane.Markdown("### Durations over the run"),
        durations_chart(data["points"], data["executions"], data["order"], data["colours"]),
        _widgets.Part("waterfall"),  # an exemplar's link opens the page here
        pn.pane.Markdown("### One sample through the pipeline"),
        sample,
        waterfall_pane,
        pn.pane.Markdown("### Stage executions"),
        executions,
    ]
    accuracy = _data.accuracy_frame(data["accuracy"])
    if accuracy.empty:
        shown.append(
            pn.pane.Markdown(
                "### Accuracy\nThis run named no golden dataset, so nothing was judged "
                '(`stagewatch.init(..., dataset="golden.yaml")`, see docs/ground-truth.md).'
                if not audit.get("dataset")
                else f"### Accuracy\nNo sample of this run has been judged against `{audit['dataset']}` yet."
            )
        )
    else:
        cases = " · ".join(
            f'<a href="{href(_query(page="failures", run=audit["run_id"], stage=stage))}">{html.escape(stage)}</a>'
            for stage in accuracy["stage"]
        )
        shown += [
            pn.pane.Markdown(f"### Accuracy against `{data['accuracy']['dataset']}`"),
            _widgets.table(accuracy.round(3), "accuracy"),
            pn.pane.HTML(f"failure cases, each beside its ground truth: {cases}", css_classes=["sw-run-cases"]),
        ]
    return shown + saved_outputs


def header(audit: dict[str, Any]) -> pn.Column:
    started = _format.parse_moment(audit.get("started_at"))
    status = audit.get("status", "unknown")
    colour = _format.STATUS_COLOURS.get(status, "#555")
    facts = [
        f'<b style="color:{colour};font-size:18px" title="{html.escape(outcomes.MEANINGS.get(status, ""))}">'
        f"{html.escape(outcomes.label(status))}</b>",
        f"pipeline <b>{html.escape(str(audit.get('pipeline')))}</b>",
        f"took {_format.ms(audit.get('duration_ms'))}" if audit.get("duration_ms") else "running",
        f"started {_format.when_html(started)}",
        f"on host <b>{html.escape(str(audit.get('host') or '?'))}</b> (pid {audit.get('pid') or '?'})",
        f"{audit.get('counts', {}).get('stages', 0):,} stage executions",
    ]
    config = audit.get("config") or {}
    details = pn.Card(pn.pane.JSON(config, depth=2), title="Config snapshot", collapsed=True) if config else None
    run_id = html.escape(audit["run_id"])
    title = pn.pane.HTML(
        f"<h2 style='margin:4px 0'>Run <code>{run_id}</code></h2>"
        f'<a href="{href(_query(page="logs", run=audit["run_id"]))}">its log lines</a> · '
        f'<a href="{href(_query(page="failures", run=audit["run_id"]))}">its failure cases</a> · '
        f'<a class="sw-compare-previous" href="{href(_query(page="compare", b=audit["run_id"]))}">'
        "compare with… the previous run</a>"
    )
    return pn.Column(title, pn.pane.HTML(" · ".join(facts)), *([details] if details else []))


TRACE_STYLE = "font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere"


def error_card(error: dict[str, Any]) -> pn.Column:
    at = _format.parse_moment(error.get("at"))
    plain = _format.markdown_literal  # a message's own marks (`__init__`, `*args`) are no Markdown
    lines = [
        f"**{plain(error.get('type'))}** in stage **{plain(error.get('stage'))}** on sample "
        f"`{error.get('sample_id') or '-'}`",
        plain(error.get("message")).replace("\n", "  \n"),  # its lines kept (a hard break each)
        f"input: `{error.get('input_path') or '-'}` · at {_format.exact(at)}",
    ]
    trace = error.get("traceback") or "(no traceback was recorded)"
    return pn.Column(
        # a long word (a message, a stage name, a sample id) and a long line wrap (in the Compare
        # page's half of the width they ran under the other case)
        pn.pane.Alert("\n\n".join(lines), alert_type="danger", styles={"overflow-wrap": "anywhere"}),
        pn.Card(
            pn.pane.HTML(f"<pre style='{TRACE_STYLE}'>{html.escape(trace)}</pre>"), title="Traceback", collapsed=True
        ),
    )


# Within the page at 1,280 px: the GPU peak's words, the exemplars' links and a long stage name wrap.
STAGES_FIT = _widgets.fitted(
    {"stage": 140, "executions": 80, "failed": 50, "median": 68, "p95": 68, "p99": 68, "max": 68}
    | {"share of time": 120, "own memory": 70, "process peak": 70, "GPU peak": 75},
    wrapped=("stage", "median", "p95", "p99", "max", "own memory", "process peak", "GPU peak", "exemplars"),
)


def stage_display(stats: pd.DataFrame, audit: dict[str, Any]) -> pd.DataFrame:
    gpu_reason = f"no GPU readings on {audit.get('host') or 'this host'}"
    return pd.DataFrame(
        {
            "stage": stats["stage"],
            "executions": [f"{n:,}" for n in stats["runs"]],
            "failed": [_format.pct(v) for v in stats["failure_rate"]],
            "median": [_format.ms(v) for v in stats["median_ms"]],
            "p95": [_format.ms(v) for v in stats["p95_ms"]],
            "p99": [_format.ms(v) for v in stats["p99_ms"]],
            "max": [_format.ms(v) for v in stats["max_ms"]],
            "share of time": [_format.share_bar_html(v) for v in stats["share"]],
            "own memory": [_format.mb(v) for v in stats["own_mb"]],
            "process peak": [_format.mb(v) for v in stats["cpu_peak_mb"]],
            "GPU peak": [
                gpu_cell(peak, gpu)
                if peak is not None and pd.notna(peak)
                else ("-" if stage == _data.OUTSIDE_STAGES else gpu_reason)
                for stage, peak, gpu in zip(stats["stage"], stats["gpu_peak_mb"], stats["gpu"], strict=True)
            ],
            "exemplars": [_data.exemplar_links(e) for e in stats["exemplars"]],
        }
    )


def gpu_cell(peak: float, gpu: dict[str, Any] | None) -> str:
    """'1.25 GB · torch' for one device; '1.25 GB (0: 1 GB · 1: 256 MB) · torch' for several."""
    if not gpu:
        return _format.mb(peak)
    devices = gpu["devices"]
    split = " · ".join(f"{d}: {_format.mb(v['max'])}" for d, v in devices.items()) if len(devices) > 1 else ""
    return f"{_format.mb(peak)}{f' ({split})' if split else ''} · {', '.join(gpu['sources'])}"


def durations_chart(points: pd.DataFrame, total: int, order: list[str], colours: dict[str, str]) -> pn.Column:
    """Each execution's duration against when it started in the run; hover names the sample.
    `points` (`_data.run_view`, from SQL) holds, per stage, the slowest of each slice of the run
    and the first executions that did not end ok: a browser given a point per execution of a
    long run stalls. `total`: how many executions there are."""
    frame = points.assign(sample=points["sample_id"].fillna("-"))
    overlay = hv.Overlay(
        [
            hv.Scatter(
                frame[frame["stage"] == stage], "start_ms", ["duration_ms", "sample", "status"], label=stage
            ).opts(color=colours.get(stage, "#555"), size=5, tools=["hover"])
            for stage in order
        ]
    )
    chart = overlay.opts(
        height=280,
        responsive=True,
        xlabel="ms since the run's first stage",
        ylabel="ms",
        legend_position="right",
        xformatter=NumeralTickFormatter(format="0,0"),  # 50,000, not 5.000e+4
    )
    drawn = (
        []
        if len(frame) >= total
        else [
            pn.pane.Markdown(
                f"{len(frame):,} of {total:,} executions drawn: per stage, the slowest of each "
                f"{_data.DURATION_SLICES:,}th of the run and the first {_data.FAILURES_DRAWN:,} that did not end ok.",
                css_classes=["sw-durations-thinned"],
            )
        ]
    )
    return pn.Column(*drawn, _widgets.chart(chart, "durations"))


def executions_display(rows: pd.DataFrame) -> pd.DataFrame:
    """A page of stage executions as people read it."""
    if rows.empty:
        return pd.DataFrame()
    errors = [  # a row without an error holds nulls (NaN in pandas), not empty strings
        f"{kind}: {message if isinstance(message, str) else ''}" if isinstance(kind, str) and kind else ""
        for kind, message in zip(rows["error_type"], rows["error_message"], strict=True)
    ]
    return pd.DataFrame(
        {
            "started": [_format.exact(moment if pd.notna(moment) else None) for moment in rows["start_time"]],
            "stage": rows["stage"],
            "sample": rows["sample_id"].fillna("-"),
            "status": rows["status"],
            "duration": [_format.ms(value) for value in rows["duration_ms"]],
            "process peak": [_format.mb(value) for value in rows["rss_peak_mb"]],
            "error": errors,
        }
    )


OUTSIDE_COLOUR = "#bdbdbd"


def waterfall(rows: pd.DataFrame, sample: str | None, colours: dict[str, str], gaps: pd.DataFrame | None = None) -> Any:
    """The sample's stage spans (`_data.sample_frame`) on one time axis, one colour a stage,
    failures outlined red; the time outside stages charged to the sample (`_data.sample_gaps`:
    loading it, the glue between its stages) in grey on a row of its own."""
    if rows.empty:
        return pn.pane.Markdown("No stage of this sample has ended.")
    rows = rows.assign(
        end_ms=rows["start_ms"] + rows["duration_ms"].fillna(0.0),
        colour=[colours.get(s, "#555") for s in rows["stage"]],
        line=["#c62828" if s != "ok" else "#ffffff" for s in rows["status"]],
    )
    outside = gaps[gaps["sample_id"] == sample] if gaps is not None else pd.DataFrame()
    if not outside.empty:
        outside = outside.assign(
            stage=_data.OUTSIDE_STAGES, duration_ms=outside["gap_ms"], status="outside stages", colour=OUTSIDE_COLOUR
        ).assign(line="#ffffff")
        rows = pd.concat([rows, outside[[*rows.columns.intersection(outside.columns)]]], ignore_index=True)
    origin = rows["start_ms"].min()
    rows = rows.assign(offset=rows["start_ms"] - origin, end=rows["end_ms"] - origin)
    bars = hv.Segments(rows, ["offset", "stage", "end", "stage"], ["colour", "duration_ms", "status", "line"]).opts(
        color="colour",
        line_width=18,
        tools=["hover"],
        height=60 + 30 * rows["stage"].nunique(),
        responsive=True,
        xlabel=f"ms since {sample} entered the pipeline",
        ylabel="",
        invert_yaxis=True,
    )
    return _widgets.chart(bars, "waterfall")


class OutputsBrowser:
    """A run's saved outputs, one stage a page at a time, read from its trail on the server
    (`_data.outputs_page`): a run that saved 100k outputs sends one page of thumbnails."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.run_id: str | None = None
        self.stage = pn.widgets.Select(name="Saved outputs of", options=[], width=320)
        self.stage.css_classes = [_widgets.css_name(self.stage.name)]
        self.page = pn.widgets.IntInput(name="Page", value=1, start=1)
        self.previous, self.next = pn.widgets.Button(name="◀ previous"), pn.widgets.Button(name="next ▶")
        self.count = pn.pane.Markdown("")
        self.grid = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["sw-outputs"])
        self.pager = _widgets.pager(self.previous, self.page, self.next, self.count)
        self.pager.css_classes = ["sw-outputs-pager"]
        self.stage.param.watch(self._stage_changed, "value")
        self.page.param.watch(lambda _: self.refresh(), "value")
        self.previous.on_click(lambda _: self._turn(-1))
        self.next.on_click(lambda _: self._turn(1))

    def show(self, run_id: str, order: list[str]) -> list[Any]:
        """The section of `run_id`: a menu of the stages that saved outputs (pipeline order), a page of them."""
        self.run_id = run_id
        counts, _ = _data.outputs_page(self.home, run_id, None, 0, 0)
        if not counts:
            return [pn.pane.Markdown("### Saved outputs\nThis run saved no outputs.")]
        stages = [*[s for s in order if s in counts], *[s for s in counts if s not in order]]
        options = {f"{stage} ({counts[stage]:,} executions)": stage for stage in stages}
        chosen = self.stage.value if self.stage.value in stages else stages[0]
        before = self.stage.value
        self.stage.param.update(options=options, value=chosen)  # a new stage: its watcher refreshes
        if before == chosen:
            self.refresh()  # the same stage (a run in progress redrawn): its new outputs
        return [pn.pane.Markdown("### Saved outputs"), self.stage, self.pager, self.grid]

    def _stage_changed(self, _: Any) -> None:
        if self.page.value != 1:
            self.page.value = 1  # which refreshes
        else:
            self.refresh()

    def _turn(self, step: int) -> None:
        self.page.value = max(1, self.page.value + step)

    def refresh(self) -> None:
        if self.run_id is None or not self.stage.value:
            return
        if self.page.value is None or self.page.value < 1:  # a link's outputs_page=0, or a cleared field
            self.page.value = 1  # which refreshes
            return
        offset = (self.page.value - 1) * OUTPUTS_PAGE
        _, found = _data.outputs_page(self.home, self.run_id, self.stage.value, offset, OUTPUTS_PAGE)
        self.count.object = f"executions {found.label}"
        where = f"&outputs={urllib.parse.quote(self.stage.value)}&outputs_page={self.page.value}"
        self.grid.object = "".join(
            _output_item(self.home, self.run_id, sample, path, where, thumbnail=i < THUMBNAILS_A_PAGE)
            for i, (sample, path) in enumerate(zip(found.rows["sample_id"], found.rows["path"], strict=True))
        )


def _output_item(home: Path, run_id: str, sample: str, path: str, where: str, thumbnail: bool) -> str:
    """One saved output: a PNG as its thumbnail, any other file as its name; a link that opens it
    at the top of this page, in place, the outputs' list kept `where` it is (their stage and page)."""
    url = href(f"?page=run&run={run_id}&artifact={path}{where}")
    name = html.escape(path.rsplit("/", 1)[-1])
    if thumbnail and path.lower().endswith(".png") and (data := _thumbnail(home, path)) is not None:
        image = f'<img src="data:image/png;base64,{data}" style="height:72px;border:1px solid #ccc"/>'
        return (
            f'<a href="{url}" title="{name}" style="display:inline-block;margin:3px;text-align:center;'
            f'font-size:11px">{image}<br>{html.escape(sample)}</a>'
        )
    return (
        f'<a href="{url}" style="display:inline-block;margin:3px 8px;font-size:12px">{html.escape(sample)}: {name}</a>'
    )


def _query(**parameters: str) -> str:
    return "?" + urllib.parse.urlencode(parameters)


def _thumbnail(home: Path, relative: str) -> str | None:
    try:
        path = _data.resolve_artifact(home, relative)
        return base64.b64encode(_data.thumbnail_png(path)).decode()
    except (_data.ArtifactRefused, OSError, ValueError, SyntaxError):  # PIL says SyntaxError for a bad PNG
        return None


def view(home: Path) -> pn.viewable.Viewable:
    return RunPage(home).layout()
