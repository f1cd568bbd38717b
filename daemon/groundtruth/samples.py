"""Judging one stage's prediction for one sample against a golden dataset.

Each sample gets a status: `correct` or `wrong` by the stage's pass criterion, `invalid`
when the prediction itself is malformed (NaN, negative size, wrong shape, unknown class,
unreadable file), `unlabeled` when the dataset has no labels for it. Wrong samples carry
their error types and a severity in [0, 1] (1 - the criterion's metric). RunAccuracy folds
a run's sample_result events into per-stage metrics and `samples` table rows; the live
worker and `stagewatch eval --run` both use it, so live and batch numbers are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from stagewatch.daemon.groundtruth.coco import Objects
from stagewatch.daemon.groundtruth.formats import (
    LabelError,
    PointLabels,
    check_mask,
    first_unknown_class,
    load_mask,
    load_point_labels,
)
from stagewatch.daemon.groundtruth.metrics import ConfusionAccuracy, DetectionAccuracy
from stagewatch.daemon.groundtruth.spec import METRIC_NAMES, DatasetError, GoldenDataset, StageLabels

STATUSES = ("correct", "wrong", "invalid", "unlabeled")


class InvalidPrediction(ValueError):
    """The prediction cannot be judged; the message says why (it goes into the samples table)."""


@dataclass
class Verdict:
    status: str
    value: float | None = None  # the pass criterion's metric for this sample
    errors: dict[str, int] = field(default_factory=dict)
    severity: float = 0.0
    reason: str = ""
    scores: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)  # the classes its mistakes involve
    confidence: float | None = None  # boxes: the highest score among its wrong predictions
    boxes: dict[str, list[list[Any]]] | None = None  # boxes: each box with its outcome, for drawing


def wrong_reason(metric: str, value: float, minimum: float, errors: dict[str, int], classes: list[str]) -> str:
    """Why a sample is wrong, in words: 'F1 0.286 below 0.5: 4 missed, 1 localization (car,
    pedestrian)'; a wrong sample's reason is never empty."""
    kinds = ", ".join(
        f"{count} {kind.replace('_', ' ')}" for kind, count in sorted(errors.items(), key=lambda item: -item[1])
    )
    involved = f" ({', '.join(classes)})" if classes else ""
    return f"{METRIC_NAMES.get(metric, metric)} {value:.3f} below {minimum:g}: {kinds}{involved}"


MAX_DRAWN_BOXES = 1000  # per side of a sample kept for drawing; the counts cover them all


# -- predictions --------------------------------------------------------------------------------
def parse_boxes(prediction: Any, categories: dict[int, str]) -> Objects:
    """{"boxes": [[x, y, w, h], ...], "scores": [...], "labels": [...]} or COCO-style result dicts.

    Labels are category ids or names; boxes must be finite with non-negative size.
    """
    if isinstance(prediction, list):  # [{"bbox": ..., "score": ..., "category_id": ...}, ...]
        try:
            prediction = {
                "boxes": [p["bbox"] for p in prediction],
                "scores": [p.get("score", 1.0) for p in prediction],
                "labels": [p.get("category_id", p.get("label")) for p in prediction],
            }
        except (TypeError, KeyError, AttributeError):
            raise InvalidPrediction("expected a list of {bbox, score, category_id} objects") from None
    if not isinstance(prediction, dict) or "boxes" not in prediction:
        raise InvalidPrediction("expected {boxes: [[x, y, w, h], ...], scores: [...], labels: [...]}")
    for key in ("boxes", "scores", "labels"):
        if key in prediction and not isinstance(prediction[key], list | tuple):
            raise InvalidPrediction(f"{key} must be a list, got {type(prediction[key]).__name__}")
    boxes = _numbers(prediction["boxes"], "boxes") if len(prediction["boxes"]) else np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InvalidPrediction("each box must be 4 numbers [x, y, width, height]")
    count = len(boxes)
    scores = _numbers(prediction.get("scores", [1.0] * count), "scores")
    labels = prediction.get("labels", [])
    if len(scores) != count or len(labels) != count:
        raise InvalidPrediction(f"{count} boxes but {len(scores)} scores and {len(labels)} labels")
    if (boxes[:, 2:] < 0).any():
        raise InvalidPrediction("negative box width or height")
    by_name = {name: category for category, name in categories.items()}
    ids = []
    for label in labels:
        category = by_name.get(label, label) if isinstance(label, str) else label
        if not isinstance(category, int) or category not in categories:
            raise InvalidPrediction(f"unknown class {label!r}")
        ids.append(category)
    return Objects(np.array(ids, np.int64), boxes, boxes[:, 2] * boxes[:, 3], np.zeros(count, bool), scores)


def _numbers(values: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidPrediction(f"{what} must be numbers") from None
    if not np.isfinite(array).all():
        raise InvalidPrediction(f"{what} contain NaN or infinity")
    return array


def load_prediction_array(prediction: Any, path: Path | None, kind: str) -> np.ndarray | PointLabels:
    """A mask or point labels, inline (nested lists) or from a saved artifact."""
    try:
        if path is not None:
            if kind == "mask":
                return load_mask(path)
            if path.suffix.lower() == ".npy":
                return _integer_labels(np.load(path, allow_pickle=False).reshape(-1), str(path))
            return load_point_labels(path)
        array = np.asarray(prediction)
    except (LabelError, OSError, ValueError, TypeError) as error:
        raise InvalidPrediction(str(error)) from None
    if kind == "mask":
        try:
            return check_mask(array, "mask")
        except LabelError as error:
            raise InvalidPrediction(str(error)) from None
    return _integer_labels(array.reshape(-1), "point labels")


def _integer_labels(labels: np.ndarray, where: str) -> np.ndarray:
    whole_floats = labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all()
    if labels.dtype.kind not in "iub" and not whole_floats:
        raise InvalidPrediction(f"{where}: labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= 2**31):
        raise InvalidPrediction(f"{where}: labels must be in [0, 2**31), found {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def labels_on_truth_points(truth: PointLabels, predicted: np.ndarray | PointLabels) -> np.ndarray:
    """Predicted labels for each ground-truth point: the same order when counts agree, else the
    label of the nearest predicted point (Open3D's KD-tree), for clouds that were resampled."""
    if isinstance(predicted, np.ndarray):
        if len(predicted) != len(truth.labels):
            raise InvalidPrediction(f"{len(predicted)} labels for a cloud of {len(truth.labels)} points")
        return predicted
    if len(predicted.labels) == len(truth.labels) and np.allclose(predicted.positions, truth.positions):
        return predicted.labels.astype(np.int64)
    import open3d as o3d

    # One batched k-NN query (Open3D's tensor nearest-neighbour search), not a loop over points.
    search = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(predicted.positions.astype(np.float64)))
    search.knn_index()
    nearest, _ = search.knn_search(o3d.core.Tensor(truth.positions.astype(np.float64)), 1)
    return predicted.labels[nearest.numpy().reshape(-1)].astype(np.int64)


def unmatched_points(truth: PointLabels, predicted: np.ndarray | PointLabels) -> np.ndarray | None:
    """When exactly one side is an empty cloud, the labels of the other side's points (none of
    them has a counterpart to agree with); None otherwise. A frame whose points were all
    filtered out is routine: an empty prediction of a labelled cloud misses every point."""
    if len(truth.labels) and len(_labels_of(predicted)) == 0:
        return truth.labels
    if not len(truth.labels) and isinstance(predicted, PointLabels) and len(predicted.labels):
        return predicted.labels  # labels alone (no points) for an empty cloud are a count mismatch
    return None


def _labels_of(predicted: np.ndarray | PointLabels) -> np.ndarray:
    return predicted.labels if isinstance(predicted, PointLabels) else predicted


def box_details(predicted: Objects, truth: Objects, outcome: Any, categories: dict[int, str]) -> dict[str, Any]:
    """Every box with its class name and outcome ([x, y, w, h, class, score, outcome] predicted,
    [x, y, w, h, class, outcome] truth), the classes the mistakes involve, and the confidence
    of the most confident wrong prediction (of any prediction when none is wrong)."""

    def name(category: Any) -> str:
        return str(categories.get(int(category), category))

    wrong = [i for i, kind in enumerate(outcome.predicted) if kind not in ("matched", "crowd", "below_threshold")]
    missed = [i for i, kind in enumerate(outcome.truth) if kind == "missed"]
    considered = wrong or range(len(predicted))
    confidence = max((float(predicted.scores[i]) for i in considered), default=None)
    boxes = {
        "predicted": [
            [*map(float, predicted.boxes[i]), name(predicted.categories[i]), float(predicted.scores[i]), kind]
            for i, kind in enumerate(outcome.predicted[:MAX_DRAWN_BOXES])
        ],
        "truth": [
            [*map(float, truth.boxes[i]), name(truth.categories[i]), kind]
            for i, kind in enumerate(outcome.truth[:MAX_DRAWN_BOXES])
        ],
    }
    classes = sorted({name(predicted.categories[i]) for i in wrong} | {name(truth.categories[i]) for i in missed})
    return {"boxes": boxes, "classes": classes, "confidence": confidence}


# -- one stage of one run -----------------------------------------------------------------------
class StageAccuracy:
    """One stage's running accuracy: status counts, the metric object, one verdict per sample."""

    def __init__(self, dataset: GoldenDataset, stage: str) -> None:
        self.dataset = dataset
        self.stage = stage
        self.labels: StageLabels = dataset.spec.stages[stage]
        self.verdicts: dict[str, Verdict] = {}
        if self.labels.kind == "boxes":
            coco = dataset.coco(stage)
            self.metric: DetectionAccuracy | ConfusionAccuracy = DetectionAccuracy(
                list(coco.categories),
                self.labels.iou_threshold,
                self.labels.score_threshold,
                self.labels.iou_type,
                names=coco.categories,
            )
        else:
            self.metric = ConfusionAccuracy(self.labels.classes or [], self.labels.ignore_index)

    def judge(self, sample_id: str, prediction: Any, path: Path | None) -> Verdict:
        try:
            truth = self.dataset.truth(self.stage, sample_id)
        except (LabelError, DatasetError) as error:
            verdict = Verdict("unlabeled", reason=f"labels unreadable: {error}")
        else:
            verdict = Verdict("unlabeled", reason="no labels for this sample") if truth is None else None
        if verdict is None:
            try:
                verdict = self._judge_labeled(sample_id, truth, prediction, path)
            except Exception as error:  # excluded from the metrics, counted on its own
                # Beyond InvalidPrediction: a prediction of a shape nobody foresaw must not stop the
                # worker (it would replay the same event and fail again); it is invalid, and logged.
                if not isinstance(error, InvalidPrediction):
                    logger.opt(exception=error).warning("unexpected prediction for {} {}", self.stage, sample_id)
                self.metric.forget(self._metric_key(sample_id))
                verdict = Verdict("invalid", reason=str(error)[:500] or type(error).__name__, severity=1.0)
        self.verdicts[sample_id] = verdict
        return verdict

    def _metric_key(self, sample_id: str) -> Any:
        return self.dataset.image_id(self.stage, sample_id) if self.labels.kind == "boxes" else sample_id

    def _judge_labeled(self, sample_id: str, truth: Any, prediction: Any, path: Path | None) -> Verdict:
        metric_name, minimum = self.labels.criterion
        drawn: dict[str, Any] = {}
        if isinstance(self.metric, DetectionAccuracy):
            categories = self.dataset.coco(self.stage).categories
            predicted = parse_boxes(prediction, categories)
            outcome = self.metric.update(self.dataset.image_id(self.stage, sample_id), truth, predicted)
            scores = outcome.scores
            errors = dict(outcome.errors)
            drawn = box_details(predicted, truth, outcome, categories)
        else:
            predicted = load_prediction_array(prediction, path, self.labels.kind or "mask")
            scores = self._update_labels(sample_id, truth, predicted)
            errors = {}
            # The classes that fall short: their own IoU is below the bar the whole sample had to clear.
            short = [name for name, iou in scores["per_class_iou"].items() if iou is not None and iou < minimum]
            drawn = {"classes": short}
        value = scores.get(metric_name)
        value = 1.0 if value is None else float(value)  # nothing labeled in the sample: nothing to get wrong
        if value >= minimum:  # its boxes too: a flip to wrong in another run is drawn beside this one
            return Verdict("correct", value, scores=scores, boxes=drawn.get("boxes"))
        if not errors:
            errors = {"mask_mismatch" if self.labels.kind == "mask" else "point_label_mismatch": 1}
        reason = wrong_reason(metric_name, value, minimum, errors, drawn.get("classes") or [])
        return Verdict("wrong", value, errors, severity=round(1.0 - value, 6), reason=reason, scores=scores, **drawn)

    def _update_labels(self, sample_id: str, truth: Any, predicted: np.ndarray | PointLabels) -> dict[str, Any]:
        """The metric's scores of one mask or labelled cloud; InvalidPrediction for a wrong shape
        or an unknown class."""
        metric = self.metric
        if not isinstance(metric, ConfusionAccuracy):
            raise TypeError(f"expected a stage judged by labels, got {self.labels.kind!r}")
        classes = len(self.labels.classes or [])
        unmatched = unmatched_points(truth, predicted) if isinstance(truth, PointLabels) else None
        if unmatched is not None:  # one cloud empty, the other not: its points have no counterpart
            labels, truth_labels = unmatched, None
        elif isinstance(truth, PointLabels):
            labels, truth_labels = labels_on_truth_points(truth, predicted), truth.labels
        elif predicted.shape != truth.shape:
            raise InvalidPrediction(f"mask shape {predicted.shape} differs from the labels' {truth.shape}")
        else:
            labels, truth_labels = predicted, truth
        unknown = first_unknown_class(labels, classes)
        if unknown is not None:
            raise InvalidPrediction(f"unknown class index {unknown} ({classes} classes)")
        if truth_labels is None:
            return metric.update_unmatched(sample_id, labels)
        return metric.update(sample_id, truth_labels, labels)

    def summary(self, coco: bool = True) -> dict[str, Any]:
        counts = dict.fromkeys(STATUSES, 0)
        for verdict in self.verdicts.values():
            counts[verdict.status] += 1
        metrics = self.metric.compute(coco) if isinstance(self.metric, DetectionAccuracy) else self.metric.compute()
        return {
            "kind": self.labels.kind,
            "counts": counts,
            "metrics": metrics,
            "criterion": dict(zip(("metric", "min"), self.labels.criterion, strict=True)),
        }
