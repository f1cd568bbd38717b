"""IoU utilities against brute force, confusion metrics against numpy, named box errors,
and streaming equal to batch on a 1,000-sample set."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagewatch.daemon.groundtruth.coco import CocoEvaluator, Objects, evaluate_coco, parse_coco_detections
from stagewatch.daemon.groundtruth.coco import parse_coco_ground_truth as parse_gt
from stagewatch.daemon.groundtruth.iou import box_iou, confusion_matrix, mask_iou
from stagewatch.daemon.groundtruth.metrics import ConfusionAccuracy, match_boxes, precision_recall_f1
from stagewatch.daemon.groundtruth.synthetic import coco_ground_truth, noisy_detections

coordinate = st.floats(-50, 50, allow_nan=False)
size = st.floats(0, 60, allow_nan=False)
box = st.tuples(coordinate, coordinate, size, size)


def brute_force_iou(a: tuple, b: tuple, crowd: bool = False) -> float:
    """Exact rational arithmetic on the definition: slow, obviously right."""
    ax0, ay0, aw, ah = (Fraction(v) for v in a)
    bx0, by0, bw, bh = (Fraction(v) for v in b)
    iw = max(Fraction(0), min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(Fraction(0), min(ay0 + ah, by0 + bh) - max(ay0, by0))
    intersection = iw * ih
    union = aw * ah if crowd else aw * ah + bw * bh - intersection
    return float(intersection / union) if intersection > 0 else 0.0


@settings(max_examples=300, deadline=None)
@given(st.lists(box, min_size=1, max_size=6), st.lists(box, min_size=1, max_size=6), st.data())
def test_box_iou_is_a_fraction_symmetric_and_equals_the_formula(dts: list, gts: list, data: st.DataObject) -> None:
    crowd = np.array(data.draw(st.lists(st.booleans(), min_size=len(gts), max_size=len(gts))))
    ious = box_iou(np.array(dts), np.array(gts), crowd)
    assert ious.shape == (len(dts), len(gts))
    assert ((ious >= 0) & (ious <= 1 + 1e-12) | crowd[None, :]).all()
    for i, a in enumerate(dts):
        for j, b in enumerate(gts):
            if min(a[2], a[3], b[2], b[3]) > 1e-3:  # below that, float cancellation dominates (pixels are 1)
                assert ious[i, j] == pytest.approx(brute_force_iou(a, b, bool(crowd[j])), abs=1e-9)
    plain = box_iou(np.array(dts), np.array(gts))
    np.testing.assert_allclose(plain, box_iou(np.array(gts), np.array(dts)).T, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(coordinate, coordinate, st.floats(0.1, 60), st.floats(0.1, 60)), min_size=1, max_size=5))
def test_a_box_overlaps_itself_fully(boxes: list) -> None:
    np.testing.assert_allclose(np.diag(box_iou(np.array(boxes), np.array(boxes))), 1.0)


def test_mask_iou_against_counting_pixels() -> None:
    rng = np.random.default_rng(1)
    dts, gts = rng.random((4, 9, 11)) > 0.5, rng.random((3, 9, 11)) > 0.6
    gts[2] = False  # an empty mask
    ious = mask_iou(dts, gts)
    for i in range(4):
        for j in range(3):
            union = np.logical_or(dts[i], gts[j]).sum()
            expected = np.logical_and(dts[i], gts[j]).sum() / union if union else 0.0
            assert ious[i, j] == pytest.approx(expected)


def test_point_label_metrics_against_numpy_on_small_clouds() -> None:
    rng = np.random.default_rng(2)
    classes = ["ground", "car", "pedestrian", "never_seen"]
    metric = ConfusionAccuracy(classes, ignore_index=9)
    truths, predictions = [], []
    for cloud in range(5):
        truth = rng.integers(0, 3, 200)
        truth[:7] = 9  # unlabeled points
        predicted = np.where(rng.random(200) < 0.8, truth, rng.integers(0, 3, 200)) % 3
        metric.update(f"cloud_{cloud}", truth, predicted)
        truths.append(truth)
        predictions.append(predicted)
    truth, predicted = np.concatenate(truths), np.concatenate(predictions)
    keep = truth != 9
    found = metric.compute()
    expected_iou = {}
    for index, name in enumerate(classes):
        inter = np.sum((truth[keep] == index) & (predicted[keep] == index))
        union = np.sum((truth[keep] == index) | (predicted[keep] == index))
        expected_iou[name] = inter / union if union else None
    assert found["per_class_iou"] == pytest.approx(expected_iou)
    assert found["miou"] == pytest.approx(np.mean([v for v in expected_iou.values() if v is not None]))
    assert found["accuracy"] == pytest.approx(np.mean(truth[keep] == predicted[keep]))
    assert found["labeled"] == keep.sum()


def test_sending_a_sample_again_replaces_it() -> None:
    metric = ConfusionAccuracy(["a", "b"])
    metric.update("s", np.array([0, 1, 1]), np.array([1, 1, 0]))
    metric.update("s", np.array([0, 1, 1]), np.array([0, 1, 1]))
    assert metric.compute()["accuracy"] == 1.0 and metric.compute()["samples"] == 1


def test_confusion_matrix_rows_are_truth() -> None:
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def objects(rows: list[tuple[int, list[float]]], scores: list[float] | None = None, crowd: list[bool] | None = None):
    categories = np.array([c for c, _ in rows], np.int64)
    boxes = np.array([b for _, b in rows], float).reshape(-1, 4)
    return Objects(
        categories,
        boxes,
        boxes[:, 2] * boxes[:, 3],
        np.array(crowd or [False] * len(rows)),
        np.array(scores or [1.0] * len(rows), float),
    )


def test_each_mistake_gets_its_name() -> None:
    truth = objects(
        [
            (1, [0, 0, 10, 10]),
            (1, [50, 50, 10, 10]),
            (2, [100, 0, 20, 20]),
            (1, [200, 200, 10, 10]),
            (1, [300, 300, 40, 40]),
        ],
        crowd=[False, False, False, False, True],
    )
    predicted = objects(
        [
            (1, [0, 0, 10, 10]),  # right
            (1, [0.5, 0, 10, 10]),  # the same object again
            (1, [100, 0, 20, 20]),  # right place, wrong class
            (1, [205, 205, 10, 10]),  # right class, badly placed
            (2, [400, 0, 10, 10]),  # nothing there
            (1, [305, 305, 10, 10]),
        ],  # inside a crowd region: ignored
        scores=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
    )
    outcome = match_boxes(truth, predicted, 0.5)
    assert outcome.true_positives == 1 and outcome.false_positives == 4 and outcome.missed == 3
    assert dict(outcome.errors) == {
        "duplicate": 1,
        "class_confusion": 1,
        "localization": 1,
        "false_positive": 1,
        "missed": 3,
    }
    # Each box carries its own outcome, in the order given: what the Case page draws.
    assert outcome.predicted == ["matched", "duplicate", "class_confusion", "localization", "false_positive", "crowd"]
    assert outcome.truth == ["matched", "missed", "missed", "missed", "crowd"]


def test_boxes_under_the_score_threshold_are_drawn_but_not_judged() -> None:
    from stagewatch.daemon.groundtruth.metrics import DetectionAccuracy

    truth = objects([(1, [0, 0, 10, 10]), (1, [50, 50, 10, 10])])
    predicted = objects([(1, [50, 50, 10, 10]), (1, [0, 0, 10, 10])], scores=[0.1, 0.9])
    outcome = DetectionAccuracy([1, 2], 0.5, score_threshold=0.3).update(1, truth, predicted)
    assert outcome.predicted == ["below_threshold", "matched"]
    assert outcome.truth == ["matched", "missed"] and outcome.missed == 1


def test_precision_recall_f1_edges() -> None:
    assert precision_recall_f1(0, 0, 0) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert precision_recall_f1(0, 3, 0)["precision"] == 0.0
    assert precision_recall_f1(2, 1, 1)["f1"] == pytest.approx(2 / 3)


def test_streaming_equals_batch_on_a_thousand_samples_in_any_order() -> None:
    rng = np.random.default_rng(11)
    document = coco_ground_truth(rng, 1000, categories=5, max_objects=6)
    ground_truth = parse_gt(document)
    detections = parse_coco_detections(noisy_detections(rng, document), ground_truth)
    batch = evaluate_coco(ground_truth, detections)
    streaming = CocoEvaluator(ground_truth.categories)
    empty = Objects.empty()
    order = rng.permutation(sorted(ground_truth.images))
    for image_id in order:  # samples arrive out of order, and some twice (a re-sent result)
        streaming.update(int(image_id), ground_truth.objects.get(image_id, empty), detections.get(image_id, empty))
    for image_id in order[:50]:
        streaming.update(int(image_id), ground_truth.objects.get(image_id, empty), detections.get(image_id, empty))
    assert streaming.compute() == batch


def test_a_live_view_can_repeat_the_last_coco_numbers_and_says_how_old_they_are() -> None:
    from stagewatch.daemon.groundtruth.metrics import DetectionAccuracy

    metric = DetectionAccuracy([1])
    metric.update(1, objects([(1, [0, 0, 10, 10])]), objects([(1, [0, 0, 10, 10])]))
    first = metric.compute()
    assert first["coco_samples"] == 1 and first["coco"]["AP"] == pytest.approx(1.0)
    metric.update(2, objects([(1, [0, 0, 10, 10])]), objects([(1, [50, 50, 10, 10])]))
    cheap = metric.compute(coco=False)
    assert cheap["samples"] == 2 and cheap["coco_samples"] == 1 and cheap["coco"] == first["coco"]
    fresh = metric.compute()
    assert fresh["coco_samples"] == 2 and fresh["coco"]["AP"] < 1.0
