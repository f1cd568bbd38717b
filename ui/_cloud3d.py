"""Two point clouds in 3D side by side (prediction, ground truth) with their cameras locked
together, coloured by label, by correctness, by distance error or by height, a point size
control; computed on the full clouds, drawn from a faithful subsample.

A small WebGL point renderer of our own (one draw call of GL_POINTS a view, colours from a
palette or the viridis table) in an iframe the page fills once: coordinates and every colouring
travel as base64 float32 arrays, never JSON lists; colour mode, point size, the colour range
and the one camera both views share (and the views of the other frames of a camera group: the
Compare page's two cases) work in the browser alone. (plotly.js's scatter3d came
first: about 57 us a point in Chromium's software WebGL, 6.7 s to open a 50k-point pair; and
Panel's Plotly pane re-rendered the scenes on every server update, after which they took no
more mouse input.)
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import panel as pn

from stagewatch.daemon.groundtruth.diff import CLASS_COLOURS, MISMATCH_COLOURS, viridis

# Points per view sent to the browser (the numbers use every point): see docs/benchmarks.md
# (benchmarks/error_browser.py --only render) for what a pair costs to open here.
MAX_DRAWN = 100_000


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


# The class colours of the pictures (the background a darker grey, to show against the light page).
LABEL_COLOURS = ["#b4b4b4", *(hex_colour(rgb) for rgb in CLASS_COLOURS[1:])]
MODES = ("label", "correctness", "distance error", "height")  # and "attribute: NAME" for each the files carry
ATTRIBUTE = "attribute: "
SIDES = ("left", "right")  # the views' canvases, in the order of CloudPair.titles


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
    # Per-point numbers the files carry (intensity ...): name -> (drawn predicted, drawn truth),
    # None for a side that lacks it.
    attributes: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = field(default_factory=dict)
    titles: tuple[str, ...] = ("prediction", "ground truth")  # one title: one view, of `prediction` (`single`)

    @property
    def single(self) -> bool:
        return len(self.titles) == 1

    @property
    def shown(self) -> str:
        if self.single:
            drawn, total = len(self.prediction), self.total[0]
            if not total:
                return "the cloud is empty: no points to show"
            if drawn == total:
                return f"showing all {total:,} points"
            return f"showing {drawn:,} of {total:,} points (a uniform random subsample)"
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
    attributes: dict[str, tuple[np.ndarray | None, np.ndarray | None]] | None = None,
) -> CloudPair:
    """The drawn subsample; when prediction and truth are the same points (labels only), the
    same indices on both sides so the views compare point for point. An attribute whose length
    is not its cloud's is left out."""
    same_points = prediction is truth
    keep_p = subsample(len(prediction))
    keep_t = keep_p if same_points else subsample(len(truth), seed=1)

    def drawn(values: np.ndarray | None, keep: np.ndarray, count: int) -> np.ndarray | None:
        return np.asarray(values, np.float64)[keep] if values is not None and len(values) == count else None

    kept = {
        name: (drawn(left, keep_p, len(prediction)), drawn(right, keep_t, len(truth)))
        for name, (left, right) in (attributes or {}).items()
    }
    return CloudPair(
        prediction[keep_p].astype(np.float32),
        truth[keep_t].astype(np.float32),
        predicted_labels[keep_p] if predicted_labels is not None else None,
        truth_labels[keep_t] if truth_labels is not None else None,
        distance[keep_p] if distance is not None else None,
        (len(prediction), len(truth)),
        truth_distance[keep_t] if truth_distance is not None else None,
        {name: sides for name, sides in kept.items() if any(side is not None for side in sides)},
    )


def single(points: np.ndarray, labels: np.ndarray | None, attributes: dict[str, np.ndarray], title: str) -> CloudPair:
    """One cloud (a saved output) for one view: the drawn subsample, its labels and the other
    per-point numbers of the file (one whose length is not the cloud's is left out)."""
    keep = subsample(len(points))
    kept = {
        name: (np.asarray(values, np.float64)[keep], None)
        for name, values in attributes.items()
        if len(values) == len(points)
    }
    drawn_labels = labels[keep] if labels is not None and len(labels) == len(points) else None
    nowhere = np.zeros((0, 3), np.float32)
    return CloudPair(
        points[keep].astype(np.float32), nowhere, drawn_labels, None, None, (len(points), 0), None, kept, (title,)
    )


def colours(cloud: CloudPair, mode: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The values each view is coloured by for `mode`, and their scale: {"palette": [hex, ...]}
    (value i takes colour i mod its length) or {"ramp": "viridis", "low", "high", "bar"}."""
    if mode == "label" and "label" in available_modes(cloud):
        truth = cloud.truth_labels if cloud.truth_labels is not None else np.zeros(0)  # one view: none
        return cloud.predicted_labels, truth, {"palette": LABEL_COLOURS}
    if mode == "correctness" and "correctness" in available_modes(cloud):
        wrong = (cloud.predicted_labels != cloud.truth_labels).astype(np.float32)
        return wrong, wrong, {"palette": [hex_colour(rgb) for rgb in MISMATCH_COLOURS]}
    if mode == "distance error" and cloud.distance is not None:
        high = float(np.percentile(cloud.distance, 99)) if len(cloud.distance) else 1.0
        truth = cloud.truth_distance if cloud.truth_distance is not None else np.zeros(len(cloud.truth))
        return cloud.distance, truth, {"ramp": "viridis", "low": 0.0, "high": high or 1.0, "bar": True}
    if mode.startswith(ATTRIBUTE) and mode[len(ATTRIBUTE) :] in cloud.attributes:
        sides = zip(cloud.attributes[mode[len(ATTRIBUTE) :]], (cloud.prediction, cloud.truth), strict=True)
        left, right = (values if values is not None else np.full(len(points), np.nan) for values, points in sides)
        both = np.concatenate([left, right])
        finite = both[np.isfinite(both)]
        low, high = (float(np.percentile(finite, 1)), float(np.percentile(finite, 99))) if finite.size else (0.0, 1.0)
        return left, right, {"ramp": "viridis", "low": low, "high": high if high > low else low + 1.0, "bar": True}
    heights = np.concatenate([cloud.prediction[:, 2], cloud.truth[:, 2]])
    low, high = (float(heights.min()), float(heights.max())) if len(heights) else (0.0, 1.0)
    return cloud.prediction[:, 2], cloud.truth[:, 2], {"ramp": "viridis", "low": low, "high": high, "bar": False}


def available_modes(cloud: CloudPair) -> list[str]:
    modes = []
    if cloud.predicted_labels is not None and (cloud.truth_labels is not None or cloud.single):
        modes.append("label")
        if cloud.truth_labels is not None and len(cloud.predicted_labels) == len(cloud.truth_labels):
            modes.append("correctness")
    if cloud.distance is not None:
        modes.append("distance error")
    return [*modes, "height", *(ATTRIBUTE + name for name in cloud.attributes)]


def write_standalone(cloud: CloudPair, folder: Path, name: str = "cloud.html") -> Path:
    """The views as a file, for a plain HTTP server (benchmarks, tests): the same page the Case
    page puts in its iframe (it needs nothing else: the renderer is inline)."""
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / name
    page.write_text(cloud_page(cloud))
    return page


def _b64(values: np.ndarray, dtype: Any = np.float32) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode()


def page_data(cloud: CloudPair) -> dict[str, Any]:
    """What the browser gets: coordinates (x, y, z interleaved) and every colouring as base64
    float32 arrays, the viridis table, and the centre and size the camera orbits."""
    both = np.concatenate([cloud.prediction, cloud.truth])
    both = both[np.isfinite(both).all(axis=1)]  # a NaN point would put the camera nowhere
    low, high = (both.min(axis=0), both.max(axis=0)) if len(both) else (np.zeros(3), np.ones(3))
    sides = SIDES[: len(cloud.titles)]
    modes = {}
    for mode in available_modes(cloud):
        *values, scale = colours(cloud, mode)
        modes[mode] = {side: _b64(side_values) for side, side_values in zip(sides, values, strict=False)}
        modes[mode]["scale"] = scale
    return {
        "sides": {side: _b64(points) for side, points in zip(sides, (cloud.prediction, cloud.truth), strict=False)},
        "modes": modes,
        "viridis": _b64(viridis(np.linspace(0.0, 1.0, 256), 0.0, 1.0), np.uint8),
        "centre": ((low + high) / 2).tolist(),
        "radius": float(np.linalg.norm(high - low) / 2) or 1.0,
        # the box the points fill (None: no finite point), for views of other frames that share the camera
        "bounds": [low.tolist(), high.tolist()] if len(both) else None,
    }


_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<style>body{margin:0;font:13px system-ui,sans-serif;background:#fff;color:#222}#bar{padding:4px 6px 6px}
.view{display:inline-block;width:49.5%;vertical-align:top}.view canvas{width:100%;height:440px;cursor:grab}
.title{text-align:center;padding:2px}#ramp{display:inline-block;width:140px;height:10px;vertical-align:middle}</style>
</head><body><div id="bar">colour by <select id="mode">__OPTIONS__</select>
&nbsp; point size <input id="size" type="range" min="1" max="8" value="2">
<span id="scale" hidden>&nbsp; colours from <input id="low" type="number" step="any" style="width:6em">
<span id="ramp"></span> to <input id="high" type="number" step="any" style="width:6em"></span>
&nbsp; <span style="color:#666">drag to turn, wheel to zoom__FOLLOW__</span></div>
__VIEWS__
<script>
"use strict";
const DATA = __DATA__;
const bytes = s => Uint8Array.from(atob(s), c => c.charCodeAt(0));
const floats = s => new Float32Array(bytes(s).buffer);
const VIRIDIS = bytes(DATA.viridis);  // 256 colours, RGB
const $ = id => document.getElementById(id);
const camera = {yaw: -0.9, pitch: 0.55, zoom: 1};  // one camera, both views: they are locked
const orbit = {centre: DATA.centre, radius: DATA.radius};  // what the camera turns around
const range = {low: 0, high: 1};
const views = {};
// The dashboard's colours (its dark theme too): the frame's own would stay white on a dark page.
const THEME = (() => {
  try {
    const style = parent.getComputedStyle(parent.document.body);
    const rgb = (style.backgroundColor.match(/[0-9.]+/g) || []).slice(0, 3).map(Number);
    if (rgb.length !== 3) return null;
    return {background: style.backgroundColor, text: style.color, clear: rgb.map(c => c / 255)};
  } catch (error) { return null; }  // a frame of another origin: stays light
})();
const CLEAR = THEME ? THEME.clear : [1, 1, 1];
if (THEME) { document.body.style.background = THEME.background; document.body.style.color = THEME.text; }
window.CLEAR = CLEAR;
window.camera = camera; window.range = range; window.views = views; window.orbit = orbit;

const VERTEX = `attribute vec3 position; attribute vec3 colour; uniform mat4 matrix; uniform float size;
  varying vec3 shade; void main() { gl_Position = matrix * vec4(position, 1.0); gl_PointSize = size; shade = colour; }`;
const FRAGMENT = `precision mediump float; varying vec3 shade; void main() { gl_FragColor = vec4(shade, 1.0); }`;

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source); gl.compileShader(shader);
  return shader;
}

function makeView(side) {
  const canvas = $(side);
  const gl = canvas.getContext("webgl", {antialias: false, preserveDrawingBuffer: true});
  if (!gl) {
    canvas.outerHTML = "<p>This browser has WebGL switched off: the 3D views cannot be drawn.</p>";
    return null;
  }
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
  gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT));
  gl.linkProgram(program);
  const xyz = floats(DATA.sides[side]);
  const position = gl.createBuffer();
  gl.bindBuffer(gl.ARRAY_BUFFER, position);
  gl.bufferData(gl.ARRAY_BUFFER, xyz, gl.STATIC_DRAW);
  return {side, canvas, gl, program, position, colour: gl.createBuffer(), count: xyz.length / 3, frames: 0};
}

function paint(view, mode) {  // colours per point from the mode's values: a palette or the viridis table
  const m = DATA.modes[mode], values = floats(m[view.side]), rgb = new Uint8Array(values.length * 3);
  if (m.scale.palette) {
    const palette = m.scale.palette.map(c => [1, 3, 5].map(i => parseInt(c.slice(i, i + 2), 16)));
    for (let i = 0; i < values.length; i++) {
      const c = palette[((Math.trunc(values[i]) % palette.length) + palette.length) % palette.length];
      rgb[3 * i] = c[0]; rgb[3 * i + 1] = c[1]; rgb[3 * i + 2] = c[2];
    }
  } else {
    const scale = 255 / ((range.high - range.low) || 1);
    for (let i = 0; i < values.length; i++) {
      if (values[i] !== values[i]) { rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = 170; continue; }  // NaN: grey
      const k = 3 * Math.min(255, Math.max(0, Math.round((values[i] - range.low) * scale)));
      rgb[3 * i] = VIRIDIS[k]; rgb[3 * i + 1] = VIRIDIS[k + 1]; rgb[3 * i + 2] = VIRIDIS[k + 2];
    }
  }
  view.values = values;
  view.gl.bindBuffer(view.gl.ARRAY_BUFFER, view.colour);
  view.gl.bufferData(view.gl.ARRAY_BUFFER, rgb, view.gl.STATIC_DRAW);
}

const sub = (a, b) => a.map((v, i) => v - b[i]);
const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
const unit = a => { const n = Math.hypot(...a) || 1; return a.map(v => v / n); };
function multiply(a, b) {  // column-major 4x4
  const out = new Float32Array(16);
  for (let c = 0; c < 4; c++) for (let r = 0; r < 4; r++) {
    let sum = 0; for (let k = 0; k < 4; k++) sum += a[k * 4 + r] * b[c * 4 + k]; out[c * 4 + r] = sum;
  }
  return out;
}
function eye() {
  const distance = orbit.radius * 2.6 / camera.zoom, c = Math.cos(camera.pitch);
  return [Math.cos(camera.yaw) * c, Math.sin(camera.yaw) * c, Math.sin(camera.pitch)].map(
    (v, i) => orbit.centre[i] + distance * v);
}
function matrix(aspect) {
  const from = eye(), distance = orbit.radius * 2.6 / camera.zoom;
  const f = unit(sub(orbit.centre, from)), s = unit(cross(f, [0, 0, 1])), u = cross(s, f);
  const look = [s[0], u[0], -f[0], 0, s[1], u[1], -f[1], 0, s[2], u[2], -f[2], 0,
                -dot(s, from), -dot(u, from), dot(f, from), 1];
  const near = distance / 100, far = distance * 10, t = 1 / Math.tan(0.35);
  const projection = [t / aspect, 0, 0, 0, 0, t, 0, 0, 0, 0, (far + near) / (near - far), -1,
                      0, 0, 2 * far * near / (near - far), 0];
  return multiply(projection, look);
}

function draw(view) {
  const {gl, canvas, program} = view;
  canvas.width = canvas.clientWidth; canvas.height = canvas.clientHeight;
  gl.viewport(0, 0, canvas.width, canvas.height);
  gl.clearColor(CLEAR[0], CLEAR[1], CLEAR[2], 1); gl.enable(gl.DEPTH_TEST);
  gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
  gl.useProgram(program);
  for (const [name, buffer] of [["position", view.position], ["colour", view.colour]]) {
    const at = gl.getAttribLocation(program, name);
    gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
    gl.enableVertexAttribArray(at);
    if (name === "colour") gl.vertexAttribPointer(at, 3, gl.UNSIGNED_BYTE, true, 0, 0);
    else gl.vertexAttribPointer(at, 3, gl.FLOAT, false, 0, 0);
  }
  gl.uniformMatrix4fv(gl.getUniformLocation(program, "matrix"), false, matrix(canvas.width / canvas.height));
  gl.uniform1f(gl.getUniformLocation(program, "size"), +$("size").value);
  gl.drawArrays(gl.POINTS, 0, view.count);
  view.frames += 1; view.eye = eye();
}

let pending = false;
function redraw() {  // at most once a frame, both views from the one camera
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; for (const view of Object.values(views)) draw(view); });
}

function showMode(mode) {
  const scale = DATA.modes[mode].scale;
  if (scale.ramp) {
    range.low = scale.low; range.high = scale.high;
    $("low").value = +scale.low.toPrecision(4); $("high").value = +scale.high.toPrecision(4);
  }
  $("scale").hidden = !scale.bar;
  for (const view of Object.values(views)) paint(view, mode);
  redraw();
}

for (const side of Object.keys(DATA.sides)) { const view = makeView(side); if (view) views[side] = view; }
const stops = [0, 64, 128, 192, 255].map(k => `rgb(${VIRIDIS[3 * k]},${VIRIDIS[3 * k + 1]},${VIRIDIS[3 * k + 2]})`);
$("ramp").style.background = `linear-gradient(to right, ${stops.join(",")})`;
for (const input of [$("low"), $("high")]) input.addEventListener("change", () => {
  const low = +$("low").value, high = +$("high").value;
  if (!(high > low)) return;  // an empty or reversed range changes nothing
  range.low = low; range.high = high;
  for (const view of Object.values(views)) paint(view, $("mode").value);
  redraw();
});
$("mode").addEventListener("change", event => showMode(event.target.value));
$("size").addEventListener("input", redraw);
for (const view of Object.values(views)) {
  let last = null;
  view.canvas.addEventListener("pointerdown", e => {
    last = [e.clientX, e.clientY];
    view.canvas.setPointerCapture(e.pointerId);
  });
  view.canvas.addEventListener("pointerup", () => { last = null; });
  view.canvas.addEventListener("pointermove", e => {
    if (!last) return;
    camera.yaw -= (e.clientX - last[0]) * 0.01;
    camera.pitch = Math.max(-1.5, Math.min(1.5, camera.pitch + (e.clientY - last[1]) * 0.01));
    last = [e.clientX, e.clientY];
    moved();
  });
  view.canvas.addEventListener("wheel", e => {
    e.preventDefault();
    camera.zoom = Math.max(0.2, Math.min(50, camera.zoom * Math.exp(-e.deltaY * 0.001)));
    moved();
  }, {passive: false});
}

// The views of other frames in the same camera group (the Compare page's two cases: one camera
// for their clouds) follow this camera and it follows theirs; all of them turn around the box
// that holds every cloud of the group, so that the same camera shows the same place.
const GROUP = __GROUP__;
const channel = GROUP && window.BroadcastChannel ? new BroadcastChannel("stagewatch-camera:" + GROUP) : null;
let box = DATA.bounds;
function widen(other) {  // the group's box: this frame's and every one heard of
  if (!other) return;
  box = box ? [box[0].map((v, i) => Math.min(v, other[0][i])), box[1].map((v, i) => Math.max(v, other[1][i]))]
            : other;
  orbit.centre = box[0].map((v, i) => (v + box[1][i]) / 2);
  orbit.radius = Math.hypot(...box[1].map((v, i) => v - box[0][i])) / 2 || 1;
}
function moved() {
  redraw();
  if (channel) channel.postMessage({kind: "camera", camera: {...camera}});
}
if (channel) {
  channel.onmessage = ({data}) => {
    if (data.kind === "hello" || data.kind === "here") widen(data.bounds);
    if (data.kind === "hello") channel.postMessage({kind: "here", bounds: DATA.bounds, camera: {...camera}});
    if (data.kind === "here" || data.kind === "camera") Object.assign(camera, data.camera);
    redraw();
  };
  channel.postMessage({kind: "hello", bounds: DATA.bounds});
  window.cameraGroup = GROUP;
}
window.addEventListener("resize", redraw);
showMode($("mode").value);
</script></body></html>"""


def cloud_page(cloud: CloudPair, camera_group: str | None = None) -> str:
    """The two views as one HTML document (for an iframe): the colour modes switch and the
    cameras follow each other in the browser, with no trip to the server. Documents of the same
    `camera_group` in one browser share their camera too (a BroadcastChannel of that name)."""
    options = "".join(f'<option value="{html.escape(m)}">{html.escape(m)}</option>' for m in available_modes(cloud))
    width = ' style="width:100%"' if cloud.single else ""
    views = "".join(
        f'<div class="view"{width}><div class="title">{html.escape(title)}</div><canvas id="{side}"></canvas></div>'
        for side, title in zip(SIDES, cloud.titles, strict=False)
    )
    # "</" inside the data would end the script element early; JSON allows "<\/".
    data = json.dumps(page_data(cloud)).replace("</", "<\\/")
    follow = "" if cloud.single else ": both views follow"
    if camera_group:
        follow += ", and the other case's views" if follow else ": the other case's views follow"
    group = json.dumps(camera_group).replace("</", "<\\/")
    parts = {"__OPTIONS__": options, "__VIEWS__": views, "__FOLLOW__": follow, "__DATA__": data, "__GROUP__": group}
    # One pass: a file or attribute named "__DATA__" stays a name.
    return re.sub("|".join(parts), lambda found: parts[found.group()], _PAGE)


def cloud_views(cloud: CloudPair, camera_group: str | None = None) -> pn.Column:
    """The views in an iframe; those of the same `camera_group` (the two cases of a flip) share one camera."""
    document = html.escape(cloud_page(cloud, camera_group), quote=True)
    frame = f'<iframe srcdoc="{document}" style="width:100%;height:510px;border:0"></iframe>'
    return pn.Column(
        pn.pane.Markdown(cloud.shown, css_classes=["sw-cloud-count"]),
        pn.pane.HTML(frame, sizing_mode="stretch_width", height=520, css_classes=["sw-cloud-3d"]),
        sizing_mode="stretch_width",
    )
