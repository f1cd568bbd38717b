"""What a pipeline may send as a prediction, and what makes one invalid."""

from __future__ import annotations

import numpy as np
import pytest

from stagewatch.daemon.groundtruth.formats import PointLabels
from stagewatch.daemon.groundtruth.samples import InvalidPrediction, labels_on_truth_points, parse_boxes, wrong_reason
from stagewatch.daemon.groundtruth.spec import METRIC_NAMES, METRICS_BY_KIND

CATEGORIES = {1: "car", 2: "pedestrian"}


def test_boxes_inline_with_names_or_ids_and_coco_style_lists() -> None:
    inline = parse_boxes(
        {"boxes": [[1, 2, 3, 4], [5, 6, 7, 8]], "scores": [0.9, 0.1], "labels": ["car", 2]}, CATEGORIES
    )
    coco = parse_boxes(
        [
            {"bbox": [1, 2, 3, 4], "score": 0.9, "category_id": 1},
            {"bbox": [5, 6, 7, 8], "score": 0.1, "category_id": 2},
        ],
        CATEGORIES,
    )
    for parsed in (inline, coco):
        assert parsed.categories.tolist() == [1, 2] and parsed.areas.tolist() == [12.0, 56.0]
    assert len(parse_boxes({"boxes": [], "scores": [], "labels": []}, CATEGORIES)) == 0


@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        ({"boxes": [[0, 0, -1, 2]], "scores": [1], "labels": [1]}, "negative box width or height"),
        ({"boxes": [[0, 0, 1, float("inf")]], "scores": [1], "labels": [1]}, "NaN or infinity"),
        ({"boxes": [[0, 0, 1]], "scores": [1], "labels": [1]}, "4 numbers"),
        ({"boxes": [[0, 0, 1, 1]], "scores": [1, 2], "labels": [1]}, "1 boxes but 2 scores"),
        ({"boxes": [[0, 0, 1, 1]], "scores": [1], "labels": [7]}, "unknown class 7"),
        ({"boxes": [[0, 0, 1, 1]], "scores": ["high"], "labels": [1]}, "scores must be numbers"),
        ("three boxes", "expected {boxes"),
        ([{"score": 1}], "list of {bbox"),
    ],
)
def test_malformed_boxes_are_invalid_with_a_reason(prediction: object, message: str) -> None:
    with pytest.raises(InvalidPrediction, match=message.replace("{", r"\{")):
        parse_boxes(prediction, CATEGORIES)


def test_point_labels_in_order_or_by_nearest_neighbour() -> None:
    rng = np.random.default_rng(0)
    positions = rng.uniform(-5, 5, (50, 3))
    truth = PointLabels(positions, (np.arange(50) % 3).astype(np.int32))
    assert labels_on_truth_points(truth, truth.labels.astype(np.int64)).tolist() == truth.labels.tolist()
    # The pipeline resampled the cloud: a shuffled, jittered copy with its own labels.
    order = rng.permutation(50)
    moved = PointLabels(positions[order] + rng.normal(0, 1e-3, (50, 3)), truth.labels[order])
    assert labels_on_truth_points(truth, moved).tolist() == truth.labels.tolist()
    with pytest.raises(InvalidPrediction, match="49 labels for a cloud of 50 points"):
        labels_on_truth_points(truth, np.zeros(49, np.int64))


@pytest.mark.parametrize("kind", sorted(METRICS_BY_KIND))
def test_a_wrong_sample_s_reason_spells_its_metric_as_the_dashboard_does(kind: str) -> None:
    """'mIoU 0.412 below 0.75: …' as the Accuracy page's columns and the CLI say it (it read 'miou', 'f1')."""
    for metric in METRICS_BY_KIND[kind]:
        reason = wrong_reason(metric, 0.412, 0.75, {"mask_mismatch": 1}, ["car"])
        assert reason == f"{METRIC_NAMES[metric]} 0.412 below 0.75: 1 mask mismatch (car)"
    assert {"miou": "mIoU", "f1": "F1"}.items() <= METRIC_NAMES.items()
