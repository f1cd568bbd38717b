"""Our COCO numbers against pycocotools' COCOeval on the same inputs, to 1e-9."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from stagewatch.daemon.groundtruth.coco import (
    STAT_NAMES,
    CocoFormatError,
    evaluate_coco,
    parse_coco_detections,
    parse_coco_ground_truth,
)
from stagewatch.daemon.groundtruth.synthetic import coco_ground_truth, noisy_detections


def reference_stats(ground_truth: dict[str, Any], detections: list[dict[str, Any]], iou_type: str = "bbox") -> list:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(ground_truth)
        coco.createIndex()
        if not detections:  # loadRes cannot take an empty list; COCOeval of nothing is all zeros / -1
            results = COCO()
            results.dataset = {
                "images": ground_truth["images"],
                "categories": ground_truth["categories"],
                "annotations": [],
            }
            results.createIndex()
        else:
            results = coco.loadRes(copy.deepcopy(detections))
        evaluation = COCOeval(coco, results, iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return list(evaluation.stats)


def our_stats(ground_truth: dict[str, Any], detections: list[dict[str, Any]], iou_type: str = "bbox") -> list:
    parsed = parse_coco_ground_truth(ground_truth, iou_type=iou_type)
    found = evaluate_coco(parsed, parse_coco_detections(detections, parsed, iou_type=iou_type), iou_type)
    return [found[name] for name in STAT_NAMES]


def assert_same(ground_truth: dict[str, Any], detections: list[dict[str, Any]], iou_type: str = "bbox") -> None:
    expected = reference_stats(ground_truth, detections, iou_type)
    np.testing.assert_allclose(our_stats(ground_truth, detections, iou_type), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(25))
def test_random_sets_match_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ground_truth = coco_ground_truth(
        rng,
        images=int(rng.integers(1, 30)),
        categories=int(rng.integers(1, 6)),
        max_objects=int(rng.integers(1, 12)),
        crowd_rate=0.1,
    )
    detections = noisy_detections(
        rng, ground_truth, false_positives=float(rng.uniform(0, 4)), duplicate_rate=0.2, confusion_rate=0.2
    )
    assert_same(ground_truth, detections)


def test_more_than_100_detections_per_image_are_cut_like_max_dets() -> None:
    rng = np.random.default_rng(7)
    ground_truth = coco_ground_truth(rng, images=3, categories=1, max_objects=40)
    detections = noisy_detections(rng, ground_truth, false_positives=150)
    assert max(sum(d["image_id"] == i for d in detections) for i in (1, 2, 3)) > 100
    assert_same(ground_truth, detections)


def test_empty_predictions_and_empty_ground_truth() -> None:
    rng = np.random.default_rng(3)
    ground_truth = coco_ground_truth(rng, images=5, categories=2)
    assert_same(ground_truth, [])
    empty_truth = {**ground_truth, "annotations": []}
    assert_same(empty_truth, noisy_detections(rng, ground_truth))
    assert our_stats(empty_truth, []) == [-1.0] * 12


def test_category_without_ground_truth_and_unknown_detection_category() -> None:
    ground_truth = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1}, {"id": 2}, {"id": 5}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0}
        ],
    }
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": [12, 10, 40, 40], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [60, 60, 10, 10], "score": 0.8},
        {"image_id": 1, "category_id": 9, "bbox": [10, 10, 40, 40], "score": 0.7},
    ]
    assert_same(ground_truth, detections)


def test_crowd_regions_swallow_detections_and_ties_resolve_alike() -> None:
    ground_truth = {
        "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
        "categories": [{"id": 1}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [50, 50, 60, 60], "area": 3600, "iscrowd": 0},
            # a detection equally close to two: pycocotools gives it the later one
            {"id": 5, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 6, "image_id": 2, "category_id": 1, "bbox": [2, 0, 10, 10], "area": 100, "iscrowd": 0},
        ],
    }
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [40, 40, 30, 30], "score": 0.5},
        {"image_id": 2, "category_id": 1, "bbox": [52, 50, 60, 60], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [150, 150, 10, 10], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.8},
        {"image_id": 2, "category_id": 1, "bbox": [2.5, 0, 10, 10], "score": 0.7},
    ]
    assert_same(ground_truth, detections)


@pytest.mark.parametrize("seed", range(5))
def test_segmentation_polygons_and_rle_match_pycocotools(seed: int) -> None:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(100 + seed)
    ground_truth = coco_ground_truth(rng, images=6, categories=2, max_objects=5, crowd_rate=0.15, size=(120, 90))
    for annotation in ground_truth["annotations"]:
        x, y, w, h = annotation["bbox"]
        if annotation["iscrowd"]:  # crowd regions come as uncompressed RLE in COCO files
            mask = np.zeros((90, 120), np.uint8, order="F")
            mask[int(y) : int(y + h), int(x) : int(x + w)] = 1
            encoded = mask_utils.encode(mask)
            annotation["segmentation"] = {"size": [90, 120], "counts": _uncompressed_counts(mask)}
            annotation["area"] = float(mask_utils.area(encoded))
        else:  # a diamond inside the box
            annotation["segmentation"] = [[x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h, x, y + h / 2]]
    detections = []
    for found in noisy_detections(rng, ground_truth):
        mask = np.zeros((90, 120), np.uint8, order="F")
        x, y, w, h = (int(max(v, 0)) for v in found["bbox"])
        mask[y : y + max(h, 1), x : x + max(w, 1)] = 1
        rle = mask_utils.encode(mask)
        rle["counts"] = rle["counts"].decode()
        detections.append({key: value for key, value in found.items() if key != "bbox"} | {"segmentation": rle})
    assert_same(ground_truth, detections, "segm")


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    return counts if flat[0] == 0 else [0, *counts]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "expected a COCO object"),
        ({"images": [], "categories": []}, "missing 'annotations'"),
        (
            {
                "images": [{"id": 1}],
                "categories": [{"id": 1}],
                "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}],
            },
            "annotations[0].bbox",
        ),
        (
            {
                "images": [{"id": 1}],
                "categories": [{"id": 1}],
                "annotations": [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}],
            },
            "image 2, not in images",
        ),
        (
            {
                "images": [{"id": 1}],
                "categories": [{"id": 1}],
                "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1]}],
            },
            "must be finite and >= 0",
        ),
    ],
)
def test_malformed_ground_truth_is_named(document: Any, message: str) -> None:
    with pytest.raises(CocoFormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_coco_ground_truth(document, source="gt.json")


def test_detection_on_an_unknown_image_is_refused() -> None:
    parsed = parse_coco_ground_truth({"images": [{"id": 1}], "categories": [{"id": 1}], "annotations": []})
    with pytest.raises(CocoFormatError, match=r"dt.json\[0\]: image 7 is not in the ground truth"):
        parse_coco_detections([{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}], parsed, "dt.json")
    with pytest.raises(CocoFormatError, match="score: expected a finite number"):
        parse_coco_detections([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": float("nan")}], parsed)


@pytest.mark.parametrize(
    ("image", "polygon", "message"),
    [
        ({"id": 1, "height": 1e300, "width": 10}, [0, 0, 5, 0, 5, 5], "height and width must be 1 to 65536"),
        ({"id": 1, "height": 10, "width": float("nan")}, [0, 0, 5, 0, 5, 5], "height and width must be 1 to 65536"),
        ({"id": 1, "height": 10, "width": 10}, [0, 0, 1e12, 0, 5, 5], "within 20 pixels"),
        ({"id": 1, "height": 10, "width": 10}, [0, 0, float("inf"), 0, 5, 5], "within 20 pixels"),
    ],
)
def test_a_segmentation_too_big_to_rasterize_is_refused_not_allocated(image: dict, polygon: list, message: str) -> None:
    """Found by the fuzz suite: pycocotools allocates along a polygon's outline within its
    image, and an image of 1e300 pixels or a vertex at 1e12 took all the machine's memory."""
    document = {
        "images": [image],
        "categories": [{"id": 1}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "segmentation": [polygon]}],
    }
    with pytest.raises(CocoFormatError, match=message):
        parse_coco_ground_truth(document, source="gt.json", iou_type="segm")


def reference_per_category(ground_truth: dict[str, Any], detections: list[dict[str, Any]]) -> dict[int, list]:
    """pycocotools' own per-category figures: COCOeval run with params.catIds cut to one category,
    its summarize's AP, AP50 and AR100."""
    found = {}
    for category in [c["id"] for c in ground_truth["categories"]]:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = copy.deepcopy(ground_truth)
            coco.createIndex()
            evaluation = COCOeval(coco, coco.loadRes(copy.deepcopy(detections)), "bbox")
            evaluation.params.catIds = [category]
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        found[category] = [evaluation.stats[0], evaluation.stats[1], evaluation.stats[8]]
    return found


@pytest.mark.parametrize("seed", range(12))
def test_per_class_ap_ap50_ar100_equal_pycocotools_per_category(seed: int) -> None:
    """The Accuracy page's per-class table comes from DetectionAccuracy: its figures per class
    against COCOeval restricted to that category."""
    from stagewatch.daemon.groundtruth.metrics import DetectionAccuracy

    rng = np.random.default_rng(100 + seed)
    ground_truth = coco_ground_truth(
        rng, images=int(rng.integers(1, 25)), categories=int(rng.integers(1, 5)), max_objects=10, crowd_rate=0.1
    )
    detections = noisy_detections(rng, ground_truth, false_positives=2.0, duplicate_rate=0.2, confusion_rate=0.2)
    if not detections:
        pytest.skip("loadRes cannot take an empty result list")
    parsed = parse_coco_ground_truth(ground_truth)
    by_image = parse_coco_detections(detections, parsed)
    names = {c: f"class {c}" for c in parsed.categories}
    metric = DetectionAccuracy(list(parsed.categories), names=names)
    for image_id in parsed.images:
        truth = parsed.objects.get(image_id)
        predicted = by_image.get(image_id)
        metric.update(image_id, truth if truth is not None else _no_objects(), predicted or _no_objects())
    per_class = metric.compute()["per_class"]
    for category, expected in reference_per_category(ground_truth, detections).items():
        ours = per_class[names[category]]
        np.testing.assert_allclose([ours["AP"], ours["AP50"], ours["AR100"]], expected, rtol=0, atol=1e-9)
    found = metric.compute()
    for key in ("true_positives", "false_positives", "missed"):  # the per-class split adds up to the totals
        assert sum(figures[key] for figures in per_class.values()) == found[key]


def _no_objects() -> Any:
    from stagewatch.daemon.groundtruth.coco import Objects

    return Objects.empty()
