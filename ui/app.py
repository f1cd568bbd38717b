"""The stagewatch dashboard, served by `panel serve` (`stagewatch ui` starts it on 127.0.0.1).

    STAGEWATCH_HOME=output panel serve "$(python -c 'import stagewatch.ui.app as m; print(m.__file__)')" \
        --address 127.0.0.1 --port 5006

Runs (refreshed every 2 s), a run's stage statistics and per-stage duration chart, its
errors, its accuracy against a golden dataset, and a viewer for its saved outputs. The
page state is in the URL (`?run=<id or prefix>&artifact=<runs/...>`), so a link can be
shared; an artifact link is opened only inside the home (ui/_data.resolve_artifact).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import holoviews as hv
import panel as pn

from stagewatch._home import ARTIFACT_FORM, Home
from stagewatch.ui import _data

REFRESH_MS = 2000

pn.extension("tabulator", sizing_mode="stretch_width")
hv.extension("bokeh")


def configured_home() -> Path:
    return Home.resolve().root


class Dashboard:
    """One browser session's page."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.banner = pn.pane.Alert("", alert_type="warning", visible=False)
        self.runs = pn.widgets.Tabulator(
            _data.runs_frame(home),
            disabled=True,
            selectable=1,
            show_index=False,
            pagination="local",
            page_size=10,
            name="runs",
        )
        self.run_id = pn.widgets.TextInput(name="Run id (or a unique prefix)", placeholder="click a run above")
        self.run_panel = pn.Column(pn.pane.Markdown("Pick a run above."))
        self.artifact_choice = pn.widgets.Select(name="Saved outputs of this run", options=[""])
        self.artifact = pn.widgets.TextInput(name="Artifact path", placeholder=ARTIFACT_FORM)
        self.preview_panel = pn.Column()
        self._showing_complete_run = True
        self.runs.param.watch(self._on_select, "selection")
        self.run_id.param.watch(lambda _: self.show_run(), "value")
        self.artifact_choice.param.watch(lambda event: setattr(self.artifact, "value", event.new or ""), "value")
        self.artifact.param.watch(lambda _: self.show_artifact(), "value")
        self.refresh()

    def layout(self) -> pn.Column:
        return pn.Column(
            pn.pane.Markdown(f"# stagewatch\nhome: `{self.home}`"),
            self.banner,
            pn.pane.Markdown("## Runs"),
            self.runs,
            pn.pane.Markdown("## Run"),
            self.run_id,
            self.run_panel,
            pn.pane.Markdown("## Saved outputs"),
            self.artifact_choice,
            self.artifact,
            self.preview_panel,
        )

    # -- updates ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Runs list and disk banner; the open run too while it is still running."""
        self.runs.value = _data.runs_frame(self.home)
        problems = _data.disk_problems(self.home)
        self.banner.object = "**Disk:** " + "; ".join(problems) if problems else ""
        self.banner.visible = bool(problems)
        if not self._showing_complete_run:
            self.show_run()

    def _on_select(self, event: Any) -> None:
        if event.new:
            self.run_id.value = str(self.runs.value.iloc[event.new[0]]["run_id"])

    def show_run(self) -> None:
        text = self.run_id.value.strip()
        if not text:
            self.run_panel.objects = [pn.pane.Markdown("Pick a run above.")]
            return
        try:
            run_id = _data.find_run(self.home, text)
        except _data.RunNotFound as error:
            self.run_panel.objects = [pn.pane.Alert(str(error), alert_type="danger")]
            return
        view = _data.run_view(self.home, run_id)
        self._showing_complete_run = bool(view["audit"].get("complete"))
        self.run_panel.objects = run_sections(view)
        self.artifact_choice.options = ["", *view["artifacts"]]

    def show_artifact(self) -> None:
        text = self.artifact.value.strip()
        if not text:
            self.preview_panel.objects = []
            return
        try:
            path = _data.resolve_artifact(self.home, text)
        except _data.ArtifactRefused as error:
            self.preview_panel.objects = [pn.pane.Alert(str(error), alert_type="danger")]
            return
        kind, content = _data.preview(path)
        if kind == "unreadable":
            self.preview_panel.objects = [pn.pane.Markdown(f"`{text}`"), pn.pane.Alert(content, alert_type="warning")]
            return
        pane = pn.pane.PNG(io.BytesIO(content), sizing_mode="fixed") if kind == "png" else pn.pane.JSON(content)
        self.preview_panel.objects = [pn.pane.Markdown(f"`{text}`"), pane]


def run_sections(view: dict[str, Any]) -> list[Any]:
    audit = view["audit"]
    duration = f"{audit['duration_ms'] / 1000:.1f} s" if audit.get("duration_ms") else "running"
    sections: list[Any] = [
        pn.pane.Markdown(
            f"**{audit['run_id']}** · pipeline `{audit.get('pipeline')}` · status **{audit.get('status')}** · "
            f"{duration} · started {audit.get('started_at')} · {audit.get('counts', {}).get('stages', 0)} stage runs"
        )
    ]
    for error in audit.get("errors", [])[:5]:
        sections.append(
            pn.pane.Alert(
                f"**{error['stage']}** on `{error.get('sample_id')}`: {error['type']}: {error['message']}",
                alert_type="danger",
            )
        )
    if audit.get("problems"):
        sections.append(pn.pane.Alert("Incomplete record: " + "; ".join(audit["problems"]), alert_type="warning"))
    if not view["stats"].empty:
        sections += [
            pn.pane.Markdown("### Stages (ms)"),
            pn.widgets.Tabulator(view["stats"], disabled=True, show_index=False, name="stages"),
            durations_chart(view["executions"]),
        ]
    accuracy = _data.accuracy_frame(view["accuracy"])
    if not accuracy.empty:
        sections += [
            pn.pane.Markdown(f"### Accuracy against `{view['accuracy']['dataset']}`"),
            pn.widgets.Tabulator(accuracy, disabled=True, show_index=False, name="accuracy"),
        ]
    return sections


def durations_chart(executions: Any) -> pn.pane.HoloViews:
    """Each stage execution's duration in the order they ended, one colour a stage."""
    overlay = hv.NdOverlay(
        {
            stage: hv.Scatter(rows, "order", "duration_ms").opts(size=4)
            for stage, rows in executions.dropna(subset=["duration_ms"]).groupby("stage")
        },
        kdims="stage",
    )
    chart = overlay.opts(height=260, responsive=True, xlabel="stage execution", ylabel="ms", legend_position="right")
    return pn.pane.HoloViews(chart, sizing_mode="stretch_width")


def page() -> pn.Column:
    dashboard = Dashboard(configured_home())
    if pn.state.location is not None:  # the URL holds the page state, so a link can be shared
        pn.state.location.sync(dashboard.run_id, {"value": "run"})
        pn.state.location.sync(dashboard.artifact, {"value": "artifact"})
    if pn.state.curdoc is not None:
        pn.state.add_periodic_callback(dashboard.refresh, REFRESH_MS)
    return dashboard.layout()


if __name__.startswith("bokeh_app"):  # run by `panel serve`
    page().servable(title="stagewatch")
