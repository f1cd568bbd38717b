"""Differences between a prediction and its ground truth, as numbers and as pictures:
mask outcome maps (true positive / false positive / false negative pixels), image difference
heatmaps, and per-point cloud distances both ways with Chamfer and Hausdorff distances.

Pure functions over numpy arrays (the dashboard and `stagewatch diff` both call them); every
input that cannot be compared (different sizes, NaN points) gives a clear `DiffError` or is
counted and said, never a crash; an empty cloud is a result (no distance), not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# One colour per class index (Tableau 10; class 0, background, light grey): the mask pictures,
# the clouds from above and in 3D, and their legends all take a class's colour from here.
CLASS_COLOURS = (
    (230, 230, 230),
    (78, 121, 167),
    (242, 142, 43),
    (89, 161, 79),
    (176, 122, 161),
    (237, 201, 72),
    (118, 183, 178),
    (225, 87, 89),
    (156, 117, 95),
    (255, 157, 167),
    (186, 176, 172),
)
# RGB of each pixel outcome in a mask difference map. The outcomes' colours are far (CIEDE2000
# over 20, tested) from every class colour: a false negative in Tableau's blue read as the class
# drawn in that blue (car, in the demo). Light and dark apart too, for colour-blind eyes.
OUTCOME_COLOURS = {
    "true_positive": (0, 240, 0),
    "false_positive": (150, 0, 0),
    "false_negative": (0, 0, 170),
    "true_negative": (235, 235, 235),
    "ignored": (150, 150, 150),
}
MISMATCH_COLOURS = ((200, 200, 200), OUTCOME_COLOURS["false_positive"])  # a cloud's points: right, wrong label
# Viridis as a polynomial (Matt Zucker's CC0 fit, within ~1% of matplotlib's table): a
# perceptual, colour-blind safe map without a plotting library.
_VIRIDIS = np.array(
    [
        [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
        [0.1050930431085774, 1.404613529898575, 1.384590162594685],
        [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
        [-4.634230498983486, -5.799100973351585, -19.33244095627987],
        [6.228269936347081, 14.17993336680509, 56.69055260068105],
        [4.776384997670288, -13.74514537774601, -65.35303263337234],
        [-5.435455855934631, 4.645852612178535, 26.3124352495832],
    ]
)


class DiffError(ValueError):
    """Two things that cannot be compared; the message says why."""


def _viridis_table() -> np.ndarray:
    t = np.linspace(0.0, 1.0, 256)
    rgb = np.zeros((256, 3))
    for coefficients in _VIRIDIS[::-1]:  # Horner
        rgb = rgb * t[:, None] + coefficients
    return (np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8)


_VIRIDIS_TABLE = _viridis_table()  # 256 colours: a picture is one table lookup per pixel


def viridis(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """uint8 RGB of `values` scaled from low..high (their min..max by default); NaN is grey."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    present = values[finite] if not finite.all() else values
    low = float(present.min()) if low is None and present.size else (low or 0.0)
    high = float(present.max()) if high is None and present.size else (high if high is not None else 1.0)
    scale = 255.0 / (high - low if high > low else 1.0)
    index = np.clip(np.nan_to_num((values - low) * scale), 0, 255).astype(np.uint8)
    out = _VIRIDIS_TABLE[index]
    out[~finite] = (128, 128, 128)
    return out


def diverging(values: np.ndarray, limit: float) -> np.ndarray:
    """uint8 RGB: negative blue, zero white, positive red, saturating at +-limit."""
    t = np.clip(np.asarray(values, dtype=np.float64) / (limit or 1.0), -1.0, 1.0)
    white = np.ones((*t.shape, 3))
    red, blue = np.array([0.84, 0.15, 0.16]), np.array([0.12, 0.47, 0.71])
    rgb = np.where(t[..., None] >= 0, white + t[..., None] * (red - 1), white - t[..., None] * (blue - 1))
    return (rgb * 255).round().astype(np.uint8)


@dataclass(frozen=True)
class MaskDiff:
    """Pixel outcomes of a predicted mask against its ground truth."""

    picture: np.ndarray  # HxWx3 uint8, one colour per outcome (OUTCOME_COLOURS)
    per_class: dict[int, dict[str, int]]  # class -> true_positive, false_positive, false_negative pixels
    ignored: int
    agreement: float  # correct pixels / pixels not ignored


def mask_difference(prediction: np.ndarray, truth: np.ndarray, ignore_index: int | None = 255) -> MaskDiff:
    """Per pixel: where the prediction equals a non-background truth (true positive), claims a
    class the truth does not have there (false positive), or misses the truth's class (false
    negative); background on both is a true negative; `ignore_index` pixels are left out.
    Per class: a pixel predicted c where truth is d != c is a false positive of c and a false
    negative of d."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.ndim != 2 or truth.ndim != 2:
        raise DiffError(f"expected two 2-D label masks, got shapes {prediction.shape} and {truth.shape}")
    if prediction.shape != truth.shape:
        raise DiffError(f"the masks differ in size: prediction {prediction.shape}, ground truth {truth.shape}")
    valid = truth != ignore_index if ignore_index is not None else np.ones(truth.shape, bool)
    equal = (prediction == truth) & valid
    picture = np.empty((*truth.shape, 3), np.uint8)
    picture[:] = OUTCOME_COLOURS["ignored"]
    picture[equal & (truth != 0)] = OUTCOME_COLOURS["true_positive"]
    picture[equal & (truth == 0)] = OUTCOME_COLOURS["true_negative"]
    wrong = valid & ~equal
    picture[wrong & (prediction != 0)] = OUTCOME_COLOURS["false_positive"]
    picture[wrong & (prediction == 0)] = OUTCOME_COLOURS["false_negative"]
    classes = np.union1d(np.unique(prediction[valid]), np.unique(truth[valid]))
    per_class = {}
    for value in classes.tolist():
        predicted, actual = (prediction == value) & valid, (truth == value) & valid
        per_class[int(value)] = {
            "true_positive": int(np.count_nonzero(predicted & actual)),
            "false_positive": int(np.count_nonzero(predicted & ~actual)),
            "false_negative": int(np.count_nonzero(actual & ~predicted)),
        }
    counted = int(np.count_nonzero(valid))
    return MaskDiff(picture, per_class, truth.size - counted, float(equal.sum()) / counted if counted else 0.0)


@dataclass(frozen=True)
class ImageDiff:
    """A per-pixel difference of two images of the same size."""

    difference: np.ndarray  # HxW float64: the mean over channels of |a - b|, or of a - b if signed
    picture: np.ndarray  # HxWx3 uint8 heatmap
    mean_absolute: float
    over_threshold: float  # fraction of pixels whose absolute difference exceeds the threshold
    threshold: float
    scale: tuple[float, float]  # the values at the ends of the colour bar


def image_difference(first: np.ndarray, second: np.ndarray, signed: bool = False, threshold: float = 0.1) -> ImageDiff:
    """Difference of two images (HxW or HxWxC, any numeric type), values scaled to 0..1 by
    their type's range (uint8: 255, uint16: 65535, floats as they are)."""
    a, b = _unit(first), _unit(second)
    if a.shape[:2] != b.shape[:2]:
        raise DiffError(f"the images differ in size: {a.shape[1]}x{a.shape[0]} and {b.shape[1]}x{b.shape[0]} (WxH)")
    if a.ndim != b.ndim or (a.ndim == 3 and a.shape[2] != b.shape[2]):
        raise DiffError(f"the images differ in channels: {a.shape} and {b.shape}")
    delta = a - b
    # Per pixel, the mean over channels: of |a - b| (opposite changes in two channels add up),
    # or of a - b for the signed map.
    absolute = np.abs(delta).mean(axis=2) if delta.ndim == 3 else np.abs(delta)
    delta = delta.mean(axis=2) if delta.ndim == 3 else delta
    if signed:
        limit = float(np.abs(delta).max()) or 1.0
        picture, scale = diverging(delta, limit), (-limit, limit)
    else:
        high = float(absolute.max()) or 1.0
        picture, scale = viridis(absolute, 0.0, high), (0.0, high)
    return ImageDiff(
        delta if signed else absolute,
        picture,
        float(absolute.mean()) if absolute.size else 0.0,
        float((absolute > threshold).mean()) if absolute.size else 0.0,
        threshold,
        scale,
    )


def _unit(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise DiffError(f"expected an image of shape HxW or HxWxC, got {image.shape}")
    if image.dtype.kind == "u":
        return image.astype(np.float64) / np.iinfo(image.dtype).max
    if image.dtype.kind == "b":
        return image.astype(np.float64)
    return np.nan_to_num(image.astype(np.float64))


@dataclass(frozen=True)
class CloudDiff:
    """Nearest-neighbour distances between a predicted cloud and its ground truth."""

    to_truth: np.ndarray  # per predicted point: distance to the nearest ground-truth point
    to_prediction: np.ndarray  # per ground-truth point: distance to the nearest predicted point
    summary: dict[str, Any]  # numbers; None where a cloud is empty
    dropped: dict[str, int] = field(default_factory=dict)  # non-finite points left out, per side


def cloud_distances(prediction: np.ndarray, truth: np.ndarray) -> CloudDiff:
    """Both ways, with Open3D's KD-tree over the full clouds: mean, p95 and max of each way,
    the Chamfer distance (mean of both means) and the Hausdorff distance (max of both maxes).
    Points with NaN or infinite coordinates are left out and counted. When a cloud is empty (a
    frame with every point filtered out), no distance exists: each point of the other cloud
    gets NaN, every distance number is None, and `summary["empty"]` names the empty side(s)."""
    sides = {"prediction": prediction, "ground truth": truth}
    clean, dropped = {}, {}
    for name, points in sides.items():
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise DiffError(f"expected the {name} cloud as N x 3 coordinates, got shape {points.shape}")
        finite = np.isfinite(points).all(axis=1)
        clean[name], dropped[name] = points[finite], int(np.count_nonzero(~finite))
    empty = [name for name, points in clean.items() if len(points) == 0]
    to_truth = _nearest(clean["prediction"], clean["ground truth"])
    to_prediction = _nearest(clean["ground truth"], clean["prediction"])
    summary: dict[str, Any] = {"prediction_points": len(to_truth), "truth_points": len(to_prediction)}
    for way, distances in (("to_truth", to_truth), ("to_prediction", to_prediction)):
        measured = not empty
        summary[f"mean_{way}"] = float(distances.mean()) if measured else None
        summary[f"p95_{way}"] = float(np.percentile(distances, 95)) if measured else None
        summary[f"max_{way}"] = float(distances.max()) if measured else None
    summary["chamfer"] = (summary["mean_to_truth"] + summary["mean_to_prediction"]) / 2 if not empty else None
    summary["hausdorff"] = max(summary["max_to_truth"], summary["max_to_prediction"]) if not empty else None
    if empty:
        summary["empty"] = empty
    return CloudDiff(to_truth, to_prediction, summary, {k: v for k, v in dropped.items() if v})


def empty_clouds_line(found: CloudDiff) -> str:
    """Why no distance was measured ("" when one was): which cloud is empty, and whether it
    had points with NaN or infinite coordinates only."""
    empty = found.summary.get("empty") or []
    said = [
        f"the {side} cloud has no finite point ({found.dropped[side]:,} with NaN or inf)"
        if found.dropped.get(side)
        else f"the {side} cloud is empty"
        for side in empty
    ]
    if not said:
        return ""
    return " and ".join(said) + (
        f": no distance can be measured ({found.summary['prediction_points']:,} predicted and "
        f"{found.summary['truth_points']:,} ground-truth points)"
    )


def _nearest(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each point, the distance to the nearest target (Open3D's KD-tree, in C++); NaN for
    every point when there is no target."""
    if len(targets) == 0 or len(points) == 0:
        return np.full(len(points), np.nan)
    import open3d as o3d

    source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    target = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(targets))
    return np.asarray(source.compute_point_cloud_distance(target))


def label_mismatch(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per point, whether the predicted label differs from the ground truth's (same points)."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise DiffError(f"expected one label per point on both sides, got {predicted.shape} and {truth.shape}")
    return predicted != truth


def top_view(points: np.ndarray, colours: np.ndarray, size: int = 512, radius: int = 1) -> np.ndarray:
    """A bird's-eye PNG-ready picture of a cloud (x right, y up), each point a square of
    2 * radius + 1 pixels coloured `colours`, higher points drawn last: a still view for reports."""
    picture = np.full((size, size, 3), 255, np.uint8)
    finite = np.isfinite(points).all(axis=1)
    points, colours = points[finite], colours[finite]
    if len(points) == 0:
        return picture
    low, high = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    scale = (size - 1) / max(float((high - low).max()), 1e-9)
    columns = ((points[:, 0] - low[0]) * scale).astype(int)
    rows = (size - 1 - (points[:, 1] - low[1]) * scale).astype(int)
    order = np.argsort(points[:, 2], kind="stable")
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            picture[np.clip(rows[order] + dy, 0, size - 1), np.clip(columns[order] + dx, 0, size - 1)] = colours[order]
    return picture
