"""Two point clouds in 3D side by side (prediction, ground truth) with their cameras locked
together, coloured by label, by correctness, by distance error or by height, a point size
control; computed on the full clouds, drawn from a faithful subsample.

plotly.js's scatter3d (WebGL, from Panel's own bundle) in an iframe the page fills once:
coordinates and every colouring travel as base64 float32 arrays, never JSON lists; colour
mode, point size and the locked cameras work in the browser alone. (Panel's Plotly pane was
tried first: every update from the server re-rendered the 3D scenes, after which they took
no more mouse input in Chromium.)
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import panel as pn

# Points per view sent to the browser (the numbers use every point). In Chromium's software
# WebGL here a pair opens in ~2.6 s with 1k points a view, ~6.6 s with 20k, ~9 s with 50k,
# ~14 s with 100k (benchmarks/error_browser.py --only render): plotly's scatter3d costs about
# 57 us a point without a GPU. 50k keeps the picture faithful; a GPU draws it far faster.
MAX_DRAWN = 50_000
LABEL_COLOURS = ["#e6e6e6", "#4E79A7", "#F28E2B", "#59A14F", "#B07AA1", "#EDC948", "#76B7B2", "#E15759", "#9C755F"]
MODES = ("label", "correctness", "distance error", "height")


@dataclass(frozen=True)
class CloudPair:
    """Prediction and ground truth, subsampled alike, with what each colouring needs."""

    prediction: np.ndarray  # drawn points, float32 N x 3
    truth: np.ndarray
    predicted_labels: np.ndarray | None
    truth_labels: np.ndarray | None
    distance: np.ndarray | None  # per drawn predicted point: to the nearest ground-truth point (full clouds)
    total: tuple[int, int]  # points before subsampling
    truth_distance: np.ndarray | None = None  # per drawn ground-truth point: to the nearest predicted point

    @property
    def shown(self) -> str:
        drawn = (len(self.prediction), len(self.truth))
        if drawn == self.total:
            return f"showing all {self.total[0]:,} predicted and {self.total[1]:,} ground-truth points"
        return (
            f"showing {drawn[0]:,} of {self.total[0]:,} predicted and {drawn[1]:,} of {self.total[1]:,} "
            "ground-truth points (a uniform random subsample; every number uses all of them)"
        )


def subsample(count: int, limit: int = MAX_DRAWN, seed: int = 0) -> np.ndarray:
    """Indices of a uniform random subsample of at most `limit` (sorted, the same every time)."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def pair(
    prediction: np.ndarray,
    truth: np.ndarray,
    predicted_labels: np.ndarray | None,
    truth_labels: np.ndarray | None,
    distance: np.ndarray | None,
    truth_distance: np.ndarray | None = None,
) -> CloudPair:
    """The drawn subsample; when prediction and truth are the same points (labels only), the
    same indices on both sides so the views compare point for point."""
    same_points = prediction is truth
    keep_p = subsample(len(prediction))
    keep_t = keep_p if same_points else subsample(len(truth), seed=1)
    return CloudPair(
        prediction[keep_p].astype(np.float32),
        truth[keep_t].astype(np.float32),
        predicted_labels[keep_p] if predicted_labels is not None else None,
        truth_labels[keep_t] if truth_labels is not None else None,
        distance[keep_p] if distance is not None else None,
        (len(prediction), len(truth)),
        truth_distance[keep_t] if truth_distance is not None else None,
    )


def colours(cloud: CloudPair, mode: str) -> tuple[Any, Any, dict[str, Any]]:
    """Marker colours of the two views for `mode`, and the marker options that go with them."""
    if mode == "label" and cloud.predicted_labels is not None and cloud.truth_labels is not None:
        scale = _discrete(LABEL_COLOURS)
        high = len(LABEL_COLOURS) - 1
        return (
            cloud.predicted_labels % len(LABEL_COLOURS),
            cloud.truth_labels % len(LABEL_COLOURS),
            {"colorscale": scale, "cmin": 0, "cmax": high, "showscale": False},
        )
    if mode == "correctness" and "correctness" in available_modes(cloud):
        wrong = (cloud.predicted_labels != cloud.truth_labels).astype(np.float32)
        scale = [[0, "#c8c8c8"], [0.5, "#c8c8c8"], [0.5, "#d62728"], [1, "#d62728"]]
        return wrong, wrong, {"colorscale": scale, "cmin": 0, "cmax": 1, "showscale": False}
    if mode == "distance error" and cloud.distance is not None:
        high = float(np.percentile(cloud.distance, 99)) or 1.0
        return (
            cloud.distance.astype(np.float32),
            (cloud.truth_distance if cloud.truth_distance is not None else np.zeros(len(cloud.truth))).astype(
                np.float32
            ),
            {
                "colorscale": "Viridis",
                "cmin": 0,
                "cmax": high,
                "showscale": True,
                "colorbar": {"title": {"text": "distance"}, "x": 0.47},
            },
        )
    return (
        cloud.prediction[:, 2],
        cloud.truth[:, 2],
        {
            "colorscale": "Viridis",
            "showscale": False,
            "cmin": float(cloud.truth[:, 2].min()),
            "cmax": float(cloud.truth[:, 2].max()),
        },
    )


def _discrete(palette: list[str]) -> list[list[Any]]:
    steps = len(palette)
    scale = []
    for i, colour in enumerate(palette):
        scale += [[i / steps, colour], [(i + 1) / steps, colour]]
    return scale


def available_modes(cloud: CloudPair) -> list[str]:
    modes = []
    if cloud.predicted_labels is not None and cloud.truth_labels is not None:
        modes.append("label")
        if len(cloud.predicted_labels) == len(cloud.truth_labels):
            modes.append("correctness")
    if cloud.distance is not None:
        modes.append("distance error")
    return [*modes, "height"]


def _bundled_plotly() -> Path:
    import panel

    bundled = sorted((Path(panel.__file__).parent / "dist" / "bundled" / "plotlyplot").glob("plotly-*.min.js"))
    if not bundled:
        raise FileNotFoundError("Panel's bundled plotly.js is missing")
    return bundled[-1]


def _plotly_url() -> str:
    """plotly.js as Panel serves it from its own bundle (no CDN: the dashboard works offline)."""
    return f"/static/extensions/panel/bundled/plotlyplot/{_bundled_plotly().name}"


def write_standalone(cloud: CloudPair, folder: Path, name: str = "cloud.html") -> Path:
    """The views as a file beside plotly.js at the path the dashboard serves it from, for a
    plain HTTP server (benchmarks, tests): the same page the Case page puts in its iframe."""
    plotly = folder / _plotly_url().lstrip("/")
    plotly.parent.mkdir(parents=True, exist_ok=True)
    if not plotly.exists():
        shutil.copy(_bundled_plotly(), plotly)
    page = folder / name
    page.write_text(cloud_page(cloud))
    return page


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=np.float32).tobytes()).decode()


def page_data(cloud: CloudPair) -> dict[str, Any]:
    """What the browser gets: coordinates and every colouring as base64 float32 arrays."""
    sides = {}
    for side, points in (("left", cloud.prediction), ("right", cloud.truth)):
        sides[side] = {axis: _b64(points[:, i]) for i, axis in enumerate("xyz")}
    modes = {}
    for mode in available_modes(cloud):
        left, right, marker = colours(cloud, mode)
        modes[mode] = {"left": _b64(left), "right": _b64(right), "marker": marker}
    return {"sides": sides, "modes": modes}


_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<style>body{margin:0;font:13px system-ui,sans-serif}#bar{padding:4px 0 6px}
.view{display:inline-block;width:49.5%;height:460px}</style>
</head><body><div id="bar">colour by <select id="mode">__OPTIONS__</select>
&nbsp; point size <input id="size" type="range" min="1" max="8" value="2">
<span id="scale" hidden>&nbsp; colours from <input id="low" type="number" step="any" style="width:6em">
to <input id="high" type="number" step="any" style="width:6em"></span></div>
<div id="left" class="view"></div><div id="right" class="view"></div>
<script src="__PLOTLY__"></script>
<script>
const DATA = __DATA__;
const floats = s => new Float32Array(Uint8Array.from(atob(s), c => c.charCodeAt(0)).buffer);
const views = {left: document.getElementById("left"), right: document.getElementById("right")};
window.views = views;
const titles = {left: "prediction", right: "ground truth"};
const scale = {low: document.getElementById("low"), high: document.getElementById("high")};
function marker(side, mode) {
  const m = DATA.modes[mode];
  return Object.assign({size: +document.getElementById("size").value, color: floats(m[side])}, m.marker,
                       side === "right" ? {showscale: false} : {});
}
function showScale(mode) {  // the distance colouring's ends can be set (min/max adjustable)
  const m = DATA.modes[mode].marker;
  document.getElementById("scale").hidden = mode !== "distance error";
  scale.low.value = m.cmin; scale.high.value = m.cmax;
}
for (const input of [scale.low, scale.high]) input.addEventListener("change", () => {
  const low = +scale.low.value, high = +scale.high.value;
  if (!(high > low)) return;  // an empty or reversed range changes nothing
  for (const side of ["left", "right"]) Plotly.restyle(views[side], {"marker.cmin": low, "marker.cmax": high});
});
const mode0 = document.getElementById("mode").value;
showScale(mode0);
for (const side of ["left", "right"]) {
  const d = DATA.sides[side];
  Plotly.newPlot(views[side], [{type: "scatter3d", mode: "markers", x: floats(d.x), y: floats(d.y), z: floats(d.z),
      hoverinfo: "skip", marker: marker(side, mode0)}],
    {title: {text: titles[side], font: {size: 13}}, margin: {l: 0, r: 0, t: 28, b: 0},
     scene: {aspectmode: "data"}, showlegend: false}, {displaylogo: false, responsive: true});
}
let following = false;  // the cameras are locked: moving one moves the other
for (const [from, to] of [["left", "right"], ["right", "left"]]) {
  views[from].on("plotly_relayout", event => {
    const camera = event["scene.camera"];
    if (!camera || following) return;
    following = true;
    Plotly.relayout(views[to], {"scene.camera": camera}).then(() => { following = false; });
  });
}
document.getElementById("mode").addEventListener("change", event => {
  for (const side of ["left", "right"]) Plotly.restyle(views[side], {marker: marker(side, event.target.value)});
  showScale(event.target.value);
});
document.getElementById("size").addEventListener("input", event => {
  for (const side of ["left", "right"]) Plotly.restyle(views[side], {"marker.size": +event.target.value});
});
</script></body></html>"""


def cloud_page(cloud: CloudPair) -> str:
    """The two views as one HTML document (for an iframe): plotly.js draws them, the colour
    modes switch and the cameras follow each other in the browser, with no trip to the server."""
    options = "".join(f'<option value="{html.escape(m)}">{html.escape(m)}</option>' for m in available_modes(cloud))
    return (
        _PAGE.replace("__OPTIONS__", options)
        .replace("__PLOTLY__", _plotly_url())
        .replace("__DATA__", json.dumps(page_data(cloud)))
    )


def cloud_views(cloud: CloudPair) -> pn.Column:
    document = html.escape(cloud_page(cloud), quote=True)
    frame = f'<iframe srcdoc="{document}" style="width:100%;height:510px;border:0"></iframe>'
    return pn.Column(
        pn.pane.Markdown(cloud.shown, css_classes=["sw-cloud-count"]),
        pn.pane.HTML(frame, sizing_mode="stretch_width", height=520, css_classes=["sw-cloud-3d"]),
        sizing_mode="stretch_width",
    )
