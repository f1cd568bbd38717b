"""Case: one failure case, prediction beside ground truth with the difference map and its
legend (boxes: drawn on the input image by outcome; masks: true positive / false positive /
false negative pixels, and both masks over the input at a chosen opacity; point labels: the
cloud from above and in 3D, coloured by label and by mismatch), its error kinds and numbers."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import panel as pn
import param
from PIL import Image

from stagewatch.daemon.groundtruth.diff import CLASS_COLOURS, OUTCOME_COLOURS, viridis
from stagewatch.ui import _data, _failures, _widgets
from stagewatch.ui._cloud3d import LABEL_COLOURS, cloud_views, pair
from stagewatch.ui._overlay import LAYERS, box_rows, boxes_svg, legend_html
from stagewatch.ui._router import href, link
from stagewatch.ui.pages import failures
from stagewatch.ui.pages.run import error_card

PICTURE_WIDTH = 320


class CasePage:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.run = pn.widgets.TextInput(name="Run")
        self.stage = pn.widgets.TextInput(name="Stage")
        self.sample = pn.widgets.TextInput(name="Sample")
        self.origin = pn.widgets.TextInput(name="From", visible=False)  # the Failures view it came from
        self.body = pn.Column()
        self.steps = pn.Column()
        refused = _widgets.sync_url(
            {"run": self.run, "stage": self.stage, "sample": self.sample, failures.FROM: self.origin}
        )
        self.url_problems = _widgets.url_alert(refused)
        for widget in (self.run, self.stage, self.sample):
            widget.param.watch(lambda _: self.show(), "value")
        self.show()

    def layout(self) -> pn.Column:
        return pn.Column(
            self.url_problems,
            _widgets.filter_bar(self.run, self.stage, self.sample, width=300),
            self.steps,
            self.body,
        )

    def show(self) -> None:
        self.steps.objects = []
        if not (self.run.value and self.stage.value):
            self.body.objects = [pn.pane.Markdown(f"Open a case from the [Failures]({link('?page=failures')}) page.")]
            return
        try:
            run_id = _data.find_run(self.home, self.run.value)
        except _data.RunNotFound as error:
            self.body.objects = [pn.pane.Alert(str(error), alert_type="danger")]
            return
        case = _failures.case_rows(self.home, run_id, self.stage.value, self.sample.value)
        if case is None:
            self.body.objects = [
                pn.pane.Alert(
                    f"No judged sample or failed stage {self.stage.value!r} on {self.sample.value!r} "
                    f"in run {run_id[:8]}.",
                    alert_type="warning",
                )
            ]
            return
        self.body.objects = case_sections(self.home, run_id, case)
        self.steps.objects = case_steps(self.home, self.origin.value, run_id, self.stage.value, self.sample.value)


class CaseKeys(pn.reactive.ReactiveHTML):
    """j / → opens the next case, k / ← the previous one, unless a key goes to a field or a
    slider (the mask opacity takes arrows). The link is followed as a click, so the page
    switches the way a click on the next/previous link would."""

    previous = param.String(default="", doc="URL of the previous case ('' at the first)")
    following = param.String(default="", doc="URL of the next case ('' at the last)")

    _template = '<div id="keys" class="sw-case-keys" style="display:none"></div>'
    _scripts = {
        "render": """
        state.onkey = (event) => {
          if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
          const target = event.composedPath()[0];
          if (target && target.closest && (target.isContentEditable ||
              target.closest('input, textarea, select, [role=slider], .noUi-handle, .noUi-target'))) return;
          const next = data.following, back = data.previous;
          const url = {j: next, ArrowRight: next, k: back, ArrowLeft: back}[event.key];
          if (!url) return;
          event.preventDefault();
          const unescape = document.createElement('textarea');  // Panel sends string parameters escaped
          unescape.innerHTML = url;
          const link = document.createElement('a');
          link.href = unescape.value;
          link.style.display = 'none';
          document.body.appendChild(link);
          link.click();
          link.remove();
        };
        document.addEventListener('keydown', state.onkey);
        """,
        "remove": "document.removeEventListener('keydown', state.onkey);",
    }


def case_steps(home: Path, origin: str, run_id: str, stage: str, sample: str) -> list[Any]:
    """Previous / next case in the Failures view this case was opened from (or all failure
    cases, most severe first), as links and on the keyboard."""
    try:
        filters, sort, descending = failures.carried_view(home, origin)
        found = _failures.neighbours(home, filters, sort, descending, run_id, stage, sample)
    except (ValueError, _data.RunNotFound) as error:
        return [pn.pane.Alert(f"No next or previous case: {error}", alert_type="info")]
    if not found.position:
        return [pn.pane.Markdown(f"This case is not among the {found.total:,} the failures view lists.")]
    urls = [failures.case_url(*key, origin) if key is not None else "" for key in (found.previous, found.following)]
    links = [
        f'<a class="sw-case-{name}" href="{html.escape(url, quote=True)}">{label}</a>' if url else label
        for name, label, url in (("previous", "◀ previous (k)", urls[0]), ("next", "next (j) ▶", urls[1]))
    ]
    where = f"case <b>{found.position:,}</b> of {found.total:,} in the failures view"
    back = href("?" + "&".join(p for p in ("page=failures", origin) if p))
    text = f"{links[0]} · {where} (<a href='{back}'>back to it</a>) · {links[1]}"
    return [pn.pane.HTML(text, css_classes=["sw-case-steps"]), CaseKeys(previous=urls[0], following=urls[1])]


def case_sections(home: Path, run_id: str, case: dict[str, Any], camera_group: str | None = None) -> list[Any]:
    """What the Case page shows of one case; the 3D views of the cases drawn with the same
    `camera_group` (the Compare page's two sides of a flip) share one camera."""
    status = case.get("status")
    reason = case.get("reason") or (
        f"{case.get('error_type')}: {case.get('error_message')}" if "error_type" in case else ""
    )
    kinds = failures.case_kinds(str(status), case.get("error_types"), reason)  # as the Failures page says them
    head = (
        f"<h3 style='margin:4px 0'>{html.escape(str(case.get('stage')))} on "
        f"<code>{html.escape(str(case.get('sample_id')))}</code>: {html.escape(str(status))}</h3>"
        f"run {_widgets.run_link(run_id)} · error kinds <b>{html.escape(kinds or '-')}</b>"
        + (f" · severity <b>{case['severity']:.2f}</b>" if case.get("severity") is not None else "")
        + (f"<br>{html.escape(reason[:500])}" if reason else "")
    )
    # a long stage name, sample id or reason (one word) wraps within the page, or the Compare page's half
    shown: list[Any] = [pn.pane.HTML(head, styles={"overflow-wrap": "anywhere"})]
    errors = _failures.errors_of(case)
    if errors:
        shown.append(
            pn.pane.HTML("errors: " + ", ".join(f"<b>{html.escape(str(k))}</b> {v}" for k, v in errors.items()))
        )
    if "error_type" in case:  # a failed or crashed stage: nothing was produced; its input and traceback
        shown.append(error_card(_data.stage_error(home, run_id, case)))
        shown.append(pn.pane.Markdown(f"[This sample in the run]({_run_url(run_id, case)})"))
        return shown
    found = _failures.case_pictures(home, case)
    if found["kind"] == "none":
        shown.append(pn.pane.Alert(found["problem"], alert_type="info"))
    elif found["kind"] == "boxes":
        shown += boxes_view(found)
    else:
        # wrapping: in the Compare page's half of the width the pictures go under each other
        pictures = [_picture(title, picture) for title, picture in found["pictures"]]
        shown.append(pn.FlexBox(*pictures, flex_wrap="wrap", sizing_mode="stretch_width"))
        if found["kind"] in ("mask", "points"):  # the pictures colour each class: which is which
            shown.append(class_legend(class_names(case), [f"rgb{c}" for c in CLASS_COLOURS]))
        shown += legend_and_numbers(found, class_names(case))
        if found["kind"] == "mask" and found.get("image") is not None:
            shown += mask_overlays(found["image"], found["size"], found["arrays"])
        if found["kind"] in ("points", "distances"):
            arrays = found["arrays"]
            truth_positions = arrays.get("truth_positions", arrays["positions"])
            distances = (arrays.get("distance"), arrays.get("truth_distance"))
            cloud = pair(
                arrays["positions"],
                truth_positions,
                arrays["predicted"],
                arrays["truth"],
                *distances,
                attributes=arrays.get("attributes"),
            )
            follow = "both views and the other case's follow" if camera_group else "both views follow"
            shown += [
                pn.pane.Markdown(f"### In 3D (drag to turn: {follow})"),
                class_legend(class_names(case), LABEL_COLOURS, "coloured by label"),
                cloud_views(cloud, camera_group),
            ]
    scores = case.get("scores")
    if scores:
        shown.append(pn.Card(pn.pane.JSON(json.loads(scores), depth=2), title="Scores", collapsed=True))
    shown.append(pn.pane.Markdown(f"[This sample in the run]({_run_url(run_id, case)})"))
    return shown


def boxes_view(found: dict[str, Any]) -> list[Any]:
    """The input image with ground-truth and predicted boxes by outcome (hover: class, score,
    outcome), layers switched on and off, and every box in a table, mistakes first."""
    boxes, image = found["boxes"], found["image"]
    layers = pn.widgets.CheckButtonGroup(
        name="Show", options=list(LAYERS), value=list(LAYERS[:2]), **_widgets.BUTTON_GROUP
    )
    size = found.get("size")

    def draw(shown: tuple[str, ...]) -> str:
        return boxes_svg(image, boxes, shown, size)

    picture = pn.pane.HTML(draw(tuple(layers.value)), css_classes=["sw-case-boxes"])
    layers.param.watch(lambda event: setattr(picture, "object", draw(tuple(event.new))), "value")
    rows = pd.DataFrame(
        [
            {
                "box": row["side"],
                "class": row["class"],
                "score": "" if row["score"] is None else f"{float(row['score']):.2f}",
                "outcome": row["outcome"].replace("_", " "),
                "x, y, w, h": ", ".join(f"{float(v):g}" for v in row["box"]),
            }
            for row in box_rows(boxes)
        ]
    )
    shown: list[Any] = [layers, picture, pn.pane.HTML(legend_html(boxes))]
    if found.get("problem"):
        shown.append(pn.pane.Markdown(f"*{html.escape(found['problem'])}*"))
    return [*shown, _widgets.table(rows, "case-boxes")]


def mask_overlays(image: Any, size: tuple[int, int], arrays: dict[str, Any]) -> list[Any]:
    """Prediction and ground truth over the input image, their opacity on one slider."""
    if tuple(size) != arrays["truth"].shape[:2]:
        (height, width), (mask_height, mask_width) = size, arrays["truth"].shape[:2]
        return [
            pn.pane.Alert(
                f"Not overlaid: the input image is {width}x{height}, the masks {mask_width}x{mask_height}.",
                alert_type="info",
            )
        ]
    opacity = pn.widgets.FloatSlider(name="Mask opacity", start=0.0, end=1.0, step=0.05, value=0.5, width=240)

    def panes(alpha: float) -> list[Any]:
        return [
            _picture(title, _failures.mask_overlay(image, arrays[key], alpha))
            for title, key in (("prediction over the input", "predicted"), ("ground truth over the input", "truth"))
        ]

    # wrapping, as the pictures above: in the Compare page's half of the width they go under each other
    row = pn.FlexBox(*panes(opacity.value), flex_wrap="wrap", sizing_mode="stretch_width")
    opacity.param.watch(lambda event: setattr(row, "objects", panes(event.new)), "value_throttled")
    return [pn.pane.Markdown("### Over the input image"), opacity, row]


def _run_url(run_id: str, case: dict[str, Any]) -> str:
    return link(f"?page=run&run={run_id}&sample={case.get('sample_id') or ''}")


def _picture(title: str, picture: Any) -> pn.Column:
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG")
    return pn.Column(
        pn.pane.Markdown(f"**{title}**"),
        pn.pane.PNG(out, width=PICTURE_WIDTH, sizing_mode="fixed", css_classes=["sw-case-picture"]),
        sizing_mode="fixed",
        width=PICTURE_WIDTH + 20,
    )


def class_legend(names: list[str], colours: list[str], what: str = "classes") -> pn.pane.HTML:
    """Each class's colour and name, in index order (a class past the palette takes its colour
    again, as the pictures do)."""
    swatches = "".join(
        f'<span style="display:inline-block;width:14px;height:14px;background:{colours[index % len(colours)]};'
        f'border:1px solid #999;margin:0 4px -2px 12px"></span>{html.escape(name)}'
        for index, name in enumerate(names)
    )
    return pn.pane.HTML(f"<div class='sw-class-legend'>{what}: {swatches}</div>" if names else "")


def class_names(case: dict[str, Any]) -> list[str]:
    """Class names in index order, as the judge listed them in the case's scores."""
    try:
        return list((json.loads(case.get("scores") or "{}").get("per_class_iou") or {}).keys())
    except (ValueError, AttributeError):
        return []


def legend_and_numbers(found: dict[str, Any], names: list[str]) -> list[Any]:
    numbers = found["numbers"]
    if found["kind"] == "mask":
        swatches = "".join(
            f'<span style="display:inline-block;width:14px;height:14px;background:rgb{colour};'
            f'border:1px solid #999;margin:0 4px -2px 12px"></span>{name.replace("_", " ")}'
            for name, colour in OUTCOME_COLOURS.items()
        )
        per_class = pd.DataFrame(
            [
                {
                    "class": names[c] if 0 <= c < len(names) else c,
                    **{k.replace("_", " "): f"{v:,}" for k, v in counts.items()},
                }
                for c, counts in numbers["per_class"].items()
            ]
        )
        return [
            pn.pane.HTML(f"<div class='sw-legend'>difference: {swatches}</div>"),
            pn.pane.Markdown(f"pixels agreeing: **{numbers['agreement']:.2%}**; ignored: {numbers['ignored']:,}"),
            _widgets.table(per_class, "case-classes"),
        ]
    if found["kind"] == "distances":
        return [distance_numbers(numbers)]
    agreement = "no points to agree on" if numbers["agreement"] is None else f"agreement {numbers['agreement']:.2%}"
    return [
        pn.pane.Markdown(
            f"points: **{numbers['points']:,}**, labelled differently: **{numbers['mismatched']:,}** "
            f"({agreement}); the clouds are seen from above"
        )
    ]


def distance_numbers(numbers: dict[str, Any]) -> pn.pane.HTML:
    """The colour bar of the heatmaps from above, and the distances both ways; where a cloud is
    empty, which one (no distance exists to show)."""
    if numbers.get("empty"):
        return pn.pane.HTML(f"<div class='sw-distances-empty'>{html.escape(numbers['empty_line'])}</div>")
    low, high = numbers["scale"]
    stops = ",".join(f"rgb{tuple(int(c) for c in colour)}" for colour in viridis(np.linspace(0, 1, 5), 0, 1))
    dropped = numbers.get("dropped") or {}
    left_out = "; ".join(
        f"{count:,} {side} points with NaN or infinite coordinates left out" for side, count in dropped.items()
    )
    rows = "".join(
        f"<tr><td>{way}</td><td>{numbers[f'mean_{key}']:.4g}</td><td>{numbers[f'p95_{key}']:.4g}</td>"
        f"<td>{numbers[f'max_{key}']:.4g}</td></tr>"
        for way, key in (("prediction → ground truth", "to_truth"), ("ground truth → prediction", "to_prediction"))
    )
    return pn.pane.HTML(
        f"<div class='sw-legend'>distance {low:.3g} <span style='display:inline-block;width:160px;height:10px;"
        f"background:linear-gradient(to right,{stops})'></span> {high:.3g} (p99; beyond: yellow)</div>"
        f"<table class='sw-distances'><tr><th>nearest-neighbour distance</th><th>mean</th><th>p95</th><th>max</th></tr>"
        f"{rows}</table>Chamfer <b>{numbers['chamfer']:.4g}</b> · Hausdorff <b>{numbers['hausdorff']:.4g}</b> · "
        f"{numbers['prediction_points']:,} predicted and {numbers['truth_points']:,} ground-truth points"
        + (f"<br>{html.escape(left_out)}" if left_out else "")
    )


def view(home: Path) -> pn.viewable.Viewable:
    return CasePage(home).layout()
