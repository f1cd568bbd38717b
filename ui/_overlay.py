"""Predictions drawn on the input image: boxes coloured by outcome as SVG (hover shows class,
score and outcome), class masks blended over the image at a chosen opacity. Pure functions of
arrays and the samples row's `boxes` JSON; the Case page shows what they return."""

from __future__ import annotations

import base64
import collections
import html
import io
import json
from typing import Any

import numpy as np
from PIL import Image

# Outcome -> (colour, what it means). Ground truth is drawn dashed, predictions solid.
BOX_OUTCOMES = {
    "matched": ("#2ca02c", "matched (prediction and its ground truth)"),
    "missed": ("#ff7f0e", "missed: a ground-truth object no prediction found"),
    "false_positive": ("#d62728", "false positive: nothing there"),
    "localization": ("#9467bd", "mislocalized: right class, box overlaps too little"),
    "class_confusion": ("#1f77b4", "class confusion: another class's object"),
    "duplicate": ("#8c564b", "duplicate: its object was already found"),
    "below_threshold": ("#7f7f7f", "below the score threshold (not judged)"),
    "crowd": ("#bcbd22", "in a crowd region (not judged)"),
}
LAYERS = ("ground truth", "predictions", "below threshold")
DRAWN_WIDTH = 640  # pixels on screen; the picture keeps its aspect


def parse_boxes_column(text: str | None) -> dict[str, list[list[Any]]]:
    """The samples row's `boxes` JSON, or empty lists when absent or unreadable."""
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        found = {}
    if not isinstance(found, dict):
        found = {}
    return {side: [b for b in found.get(side) or [] if isinstance(b, list)] for side in ("predicted", "truth")}


def box_rows(boxes: dict[str, list[list[Any]]]) -> list[dict[str, Any]]:
    """One row per box (truth and predicted), mistakes first: for the table under the picture."""
    rows = [
        {"side": "ground truth", "class": b[4], "score": None, "outcome": b[5], "box": b[:4]} for b in boxes["truth"]
    ] + [
        {"side": "prediction", "class": b[4], "score": b[5], "outcome": b[6], "box": b[:4]} for b in boxes["predicted"]
    ]
    return sorted(rows, key=lambda row: (row["outcome"] in ("matched", "below_threshold", "crowd"), row["side"]))


def boxes_svg(
    image: np.ndarray | None,
    boxes: dict[str, list[list[Any]]],
    layers: tuple[str, ...] = LAYERS[:2],
    size: tuple[int, int] | None = None,
) -> str:
    """An SVG of the input image (or a grey canvas) with the chosen layers of boxes; each box has a
    hover title. Coordinates are the full image's pixels: `size` (height, width) when the image
    was scaled down to be shown, else the image's own, else as far as the boxes reach."""
    height, width = size or (image.shape[:2] if image is not None else _extent(boxes))
    shown = []
    if "ground truth" in layers:
        shown += [(b[:4], b[5], f"ground truth: {b[4]} — {b[5]}", True) for b in boxes["truth"]]
    for b in boxes["predicted"]:
        below = b[6] == "below_threshold"
        if ("below threshold" if below else "predictions") in layers:
            shown.append((b[:4], b[6], f"prediction: {b[4]} {float(b[5]):.2f} — {b[6]}", False))
    background = (
        f'<image href="data:image/png;base64,{png_base64(image)}" width="{width}" height="{height}"/>'
        if image is not None
        else f'<rect width="{width}" height="{height}" fill="#d9d9d9"/>'
    )
    drawn = "".join(_box(*item) for item in shown)
    on_screen = DRAWN_WIDTH  # small images scaled up to be read, big ones down to fit
    return (
        f'<svg class="sw-boxes" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{on_screen}" height="{round(on_screen * height / max(width, 1))}" '
        # never wider than its place (half the page in the Compare page's side by side): scaled down, not cut
        f'style="max-width:100%;height:auto">{background}{drawn}</svg>'
    )


def _box(box: list[Any], outcome: str, title: str, truth: bool) -> str:
    x, y, w, h = (float(v) for v in box)
    colour = BOX_OUTCOMES.get(outcome, ("#000000", ""))[0]
    dash = ' stroke-dasharray="6 3"' if truth else ""
    return (
        f'<rect class="sw-box sw-box-{html.escape(outcome)}" x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" '
        f'fill="{colour}" fill-opacity="0.08" stroke="{colour}" stroke-width="2"{dash} '
        f'vector-effect="non-scaling-stroke"><title>{html.escape(title)} [{x:g}, {y:g}, {w:g}, {h:g}]</title></rect>'
    )


def _extent(boxes: dict[str, list[list[Any]]]) -> tuple[int, int]:
    every = boxes["truth"] + boxes["predicted"]
    height = max((float(b[1]) + float(b[3]) for b in every), default=1.0)
    width = max((float(b[0]) + float(b[2]) for b in every), default=1.0)
    return max(int(np.ceil(height)), 1), max(int(np.ceil(width)), 1)


def legend_html(boxes: dict[str, list[list[Any]]]) -> str:
    """Each outcome present, with its colour, meaning and count of boxes on each side: a matched
    pair is one ground-truth box and one prediction, not "2"."""
    truth = collections.Counter(b[5] for b in boxes["truth"])
    predicted = collections.Counter(b[6] for b in boxes["predicted"])
    items = [
        f'<span style="display:inline-block;width:14px;height:10px;border:2px solid {colour};'
        f'margin:0 4px -2px 12px"></span>{html.escape(meaning)} <b>{_sides(truth[outcome], predicted[outcome])}</b>'
        for outcome, (colour, meaning) in BOX_OUTCOMES.items()
        if truth[outcome] or predicted[outcome]
    ]
    return "<div class='sw-legend'>ground truth dashed, predictions solid:" + "".join(items) + "</div>"


def _sides(truth: int, predicted: int) -> str:
    """'3' where one side has the outcome; '3 ground truth · 3 predicted' where both do."""
    if truth and predicted:
        return f"{truth} ground truth · {predicted} predicted"
    return str(truth or predicted)


def blend(image: np.ndarray, colours: np.ndarray, opacity: float, keep: np.ndarray | None = None) -> np.ndarray:
    """`colours` (HxWx3) over `image` at `opacity`; pixels where `keep` is False stay the image."""
    if image.shape[:2] != colours.shape[:2]:
        raise ValueError(
            f"the mask is {colours.shape[1]}x{colours.shape[0]}, the image {image.shape[1]}x{image.shape[0]}"
        )
    mixed = image.astype(np.float32) * (1 - opacity) + colours.astype(np.float32) * opacity
    if keep is not None:
        mixed = np.where(keep[..., None], mixed, image)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 of any PIL image (grey, palette, 16-bit, with alpha)."""
    if image.mode in ("I;16", "I;16B", "I"):
        array = np.asarray(image, dtype=np.float64)
        span = max(float(array.max()), 1.0)
        return np.repeat((array / span * 255).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def png_base64(picture: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")
