"""Streaming accuracy metrics with update/compute, backed by pure functions.

DetectionAccuracy: precision, recall and F1 at one IoU and score threshold, with each
mistake named (false positive, missed, localization, class confusion, duplicate), plus the
12 COCO numbers (CocoEvaluator). ConfusionAccuracy: per-class IoU, mIoU and accuracy of
class-index masks or per-point labels, from a confusion matrix. Updating a sample again
replaces its earlier contribution, so a re-sent result never counts twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from stagewatch.daemon.groundtruth.coco import CocoEvaluator, Objects
from stagewatch.daemon.groundtruth.iou import box_iou, confusion_matrix

LOCALIZATION_MIN_IOU = 0.1  # below this a wrong box is background, not a badly placed one


@dataclass
class BoxOutcome:
    true_positives: int = 0
    false_positives: int = 0
    missed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    # Per box, for drawing: each prediction's outcome ("matched" or its error kind, "crowd" when
    # it fell in a crowd region) in the order given, and each ground-truth box's ("matched",
    # "missed" or "crowd").
    predicted: list[str] = field(default_factory=list)
    truth: list[str] = field(default_factory=list)

    @property
    def scores(self) -> dict[str, float]:
        return precision_recall_f1(self.true_positives, self.false_positives, self.missed)


def precision_recall_f1(true_positives: int, false_positives: int, missed: int) -> dict[str, float]:
    """Nothing to find and nothing found is perfect (1.0), not undefined."""
    found, actual = true_positives + false_positives, true_positives + missed
    precision = true_positives / found if found else (1.0 if not actual else 0.0)
    recall = true_positives / actual if actual else (1.0 if not found else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def match_boxes(truth: Objects, predicted: Objects, iou_threshold: float = 0.5) -> BoxOutcome:
    """Greedy matching in score order, one ground truth per prediction, same class only.

    A prediction that finds no free same-class box at the threshold is a `duplicate` (its
    box was taken), a `class_confusion` (another class's box is there), a `localization`
    error (its class's box overlaps too little), or a `false_positive` (background).
    Predictions inside crowd regions count for nothing; unmatched boxes are `missed`.
    """
    outcome = BoxOutcome(predicted=[""] * len(predicted))
    ious = box_iou(predicted.boxes, truth.boxes, truth.crowd)
    same_class = predicted.categories[:, None] == truth.categories[None, :]
    taken = np.zeros(len(truth), bool)
    for d in np.argsort(-predicted.scores, kind="mergesort"):
        good = same_class[d] & (ious[d] >= iou_threshold)
        free = good & ~taken & ~truth.crowd
        if free.any():
            taken[np.flatnonzero(free)[np.argmax(ious[d][free])]] = True
            outcome.true_positives += 1
            outcome.predicted[d] = "matched"
            continue
        if (good & truth.crowd).any():
            outcome.predicted[d] = "crowd"
            continue
        outcome.false_positives += 1
        if good.any():
            kind = "duplicate"
        elif ((ious[d] >= iou_threshold) & ~same_class[d]).any():
            kind = "class_confusion"
        elif (same_class[d] & (ious[d] >= LOCALIZATION_MIN_IOU)).any():
            kind = "localization"
        else:
            kind = "false_positive"
        outcome.errors[kind] += 1
        outcome.predicted[d] = kind
    outcome.truth = np.where(truth.crowd, "crowd", np.where(taken, "matched", "missed")).tolist()
    outcome.missed = int((~taken & ~truth.crowd).sum())
    if outcome.missed:
        outcome.errors["missed"] = outcome.missed
    return outcome


class DetectionAccuracy:
    """Boxes of one stage across samples: counts at a threshold plus the COCO numbers."""

    def __init__(
        self,
        categories: Sequence[int],
        iou_threshold: float = 0.5,
        score_threshold: float = 0.0,
        iou_type: str = "bbox",
        names: Mapping[int, str] | None = None,
    ) -> None:
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold
        self.coco = CocoEvaluator(categories, iou_type)
        self.names = {int(c): str((names or {}).get(c, c)) for c in self.coco.categories}
        self._outcomes: dict[Any, BoxOutcome] = {}
        self._per_class: dict[Any, Counter[tuple[int, str]]] = {}  # per image: (category, tp/fp/missed) -> count
        # numbers, per-category numbers, samples they cover
        self._last_coco: tuple[dict[str, float], dict[int, dict[str, float]], int] | None = None

    def update(self, image_id: Any, truth: Objects, predicted: Objects) -> BoxOutcome:
        self.coco.update(image_id, truth, predicted)  # COCO ranks every prediction, whatever its score
        confident = np.flatnonzero(predicted.scores >= self.score_threshold)
        outcome = match_boxes(truth, predicted.take(confident), self.iou_threshold)
        self._outcomes[image_id] = replace(outcome, predicted=[], truth=[])  # counts are all it keeps
        self._per_class[image_id] = class_counts(truth, predicted.take(confident), outcome)
        per_box = ["below_threshold"] * len(predicted)
        for index, kind in zip(confident.tolist(), outcome.predicted, strict=True):
            per_box[index] = kind
        return replace(outcome, predicted=per_box)

    def forget(self, image_id: Any) -> None:
        self.coco.forget(image_id)
        self._outcomes.pop(image_id, None)
        self._per_class.pop(image_id, None)

    def compute(self, coco: bool = True) -> dict[str, Any]:
        """Counts and scores; the COCO numbers are recomputed when `coco`, else the last ones are
        repeated with `coco_samples` saying how many samples they cover (a live view may
        refresh counts often and the costlier COCO accumulation less often)."""
        if coco:
            self._last_coco = (*self.coco.compute_with_categories(), len(self.coco))
        totals = [
            sum(getattr(o, key) for o in self._outcomes.values())
            for key in ("true_positives", "false_positives", "missed")
        ]
        errors = sum((o.errors for o in self._outcomes.values()), Counter())
        found = {
            "samples": len(self._outcomes),
            **precision_recall_f1(*totals),
            "true_positives": totals[0],
            "false_positives": totals[1],
            "missed": totals[2],
            "errors": dict(errors),
        }
        if self._last_coco is not None:
            found |= {"coco": self._last_coco[0], "coco_samples": self._last_coco[2]}
        found["per_class"] = self._per_class_figures()
        return found

    def _per_class_figures(self) -> dict[str, dict[str, Any]]:
        """Per class name: precision, recall and F1 at this stage's thresholds (the counts above,
        split by class) and, once computed, the class's COCO AP, AP50 and AR100."""
        counts = sum(self._per_class.values(), Counter())
        coco = self._last_coco[1] if self._last_coco is not None else {}
        figures = {}
        for category, name in self.names.items():
            tp, fp, missed = (counts[(category, key)] for key in ("tp", "fp", "missed"))
            figures[name] = {
                **coco.get(category, {}),
                **precision_recall_f1(tp, fp, missed),
                "true_positives": tp,
                "false_positives": fp,
                "missed": missed,
            }
        return figures


def class_counts(truth: Objects, predicted: Objects, outcome: BoxOutcome) -> Counter[tuple[int, str]]:
    """One image's true positives and false positives by predicted class, misses by true class
    (boxes in crowd regions count for nothing, as in the totals)."""
    counts: Counter[tuple[int, str]] = Counter()
    for category, kind in zip(predicted.categories.tolist(), outcome.predicted, strict=True):
        if kind != "crowd":
            counts[(int(category), "tp" if kind == "matched" else "fp")] += 1
    for category, kind in zip(truth.categories.tolist(), outcome.truth, strict=True):
        if kind == "missed":
            counts[(int(category), "missed")] += 1
    return counts


def scores_from_confusion(
    confusion: np.ndarray, class_names: Sequence[str] | None = None, unmatched: np.ndarray | None = None
) -> dict[str, Any]:
    """Per-class IoU (None for a class absent from both truth and prediction), mIoU, accuracy.

    `unmatched`: per class, points of one cloud with no counterpart in the other (every point of
    a labelled cloud whose prediction is empty, every predicted point of an empty one): each is
    wrong, so it counts in its class's union and in the accuracy's total, never in a hit."""
    confusion = np.asarray(confusion, dtype=np.float64)
    extra = np.zeros(len(confusion)) if unmatched is None else np.asarray(unmatched, dtype=np.float64)
    hits = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - hits + extra
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, hits / union, np.nan)
    total = confusion.sum() + extra.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(hits))]
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "accuracy": float(hits.sum() / total) if total else None,
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(names, iou, strict=True)},
        "labeled": int(total),
    }


MAX_CONFUSION_CLASSES = 64  # beyond, the matrix (classes^2 numbers) is left out of accuracy.json


class ConfusionAccuracy:
    """Class-index masks or per-point labels of one stage across samples."""

    def __init__(self, class_names: Sequence[str], ignore_index: int | None = None) -> None:
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        classes = len(class_names)
        self._total = np.zeros((classes, classes), np.int64)
        self._unmatched = np.zeros(classes, np.int64)
        self._by_sample: dict[Any, tuple[np.ndarray, np.ndarray]] = {}

    def update(self, sample: Any, truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
        confusion = confusion_matrix(truth, predicted, len(self.class_names), self.ignore_index)
        return self._replace(sample, confusion, np.zeros(len(self.class_names), np.int64))

    def update_unmatched(self, sample: Any, labels: np.ndarray) -> dict[str, Any]:
        """A sample whose points have no counterpart on the other side (an empty prediction of a
        labelled cloud, or points predicted where the ground truth has none): `labels` are those
        points' classes, each point a mistake of its class."""
        classes = len(self.class_names)
        labels = np.asarray(labels).ravel().astype(np.int64)
        keep = (labels >= 0) & (labels < classes)
        if self.ignore_index is not None:
            keep &= labels != self.ignore_index
        unmatched = np.bincount(labels[keep], minlength=classes)
        return self._replace(sample, np.zeros((classes, classes), np.int64), unmatched)

    def _replace(self, sample: Any, confusion: np.ndarray, unmatched: np.ndarray) -> dict[str, Any]:
        self.forget(sample)
        self._by_sample[sample] = (confusion, unmatched)
        self._total += confusion
        self._unmatched += unmatched
        return scores_from_confusion(confusion, self.class_names, unmatched)

    def forget(self, sample: Any) -> None:
        previous = self._by_sample.pop(sample, None)
        if previous is not None:
            self._total -= previous[0]
            self._unmatched -= previous[1]

    def compute(self) -> dict[str, Any]:
        scores = scores_from_confusion(self._total, self.class_names, self._unmatched)
        result = {"samples": len(self._by_sample), **scores}
        if len(self.class_names) <= MAX_CONFUSION_CLASSES:  # rows: ground truth, columns: prediction
            result["confusion"] = {"classes": self.class_names, "counts": self._total.tolist()}
            if self._unmatched.any():  # points without a counterpart: not in any cell
                result["confusion"]["unmatched"] = self._unmatched.tolist()
        return result
