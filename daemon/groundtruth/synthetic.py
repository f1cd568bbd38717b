"""Synthetic detection sets with realistic mistakes, for the demo, the tests and the benchmark.

A detector that jitters boxes (localization), swaps classes, misses small objects more
often, fires on background, and repeats a box now and then, with scores that fall as a
detection gets worse: the mistakes a real detector makes, so metrics mean something.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def coco_ground_truth(
    rng: np.random.Generator,
    images: int,
    categories: int = 3,
    max_objects: int = 8,
    crowd_rate: float = 0.03,
    size: tuple[int, int] = (640, 480),
) -> dict[str, Any]:
    """A COCO annotation document with boxes of every COCO size class."""
    width, height = size
    document: dict[str, Any] = {
        "images": [
            {"id": i + 1, "file_name": f"frame_{i:04d}.png", "width": width, "height": height} for i in range(images)
        ],
        "categories": [{"id": c + 1, "name": f"class_{c + 1}"} for c in range(categories)],
        "annotations": [],
    }
    for image in document["images"]:
        for _ in range(rng.integers(0, max_objects + 1)):
            side = float(np.exp(rng.uniform(np.log(8), np.log(min(width, height) * 0.6))))
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, width - min(w, width - 1)), rng.uniform(0, height - min(h, height - 1))
            box = [round(x, 2), round(y, 2), round(min(w, width - x), 2), round(min(h, height - y), 2)]
            document["annotations"].append(
                {
                    "id": len(document["annotations"]) + 1,
                    "image_id": image["id"],
                    "category_id": int(rng.integers(1, categories + 1)),
                    "bbox": box,
                    "area": round(box[2] * box[3] * rng.uniform(0.7, 1.0), 2),  # a mask covers less than its box
                    "iscrowd": int(rng.random() < crowd_rate),
                }
            )
    return document


def noisy_detections(
    rng: np.random.Generator,
    ground_truth: dict[str, Any],
    *,
    miss_rate: float = 0.15,
    confusion_rate: float = 0.08,
    false_positives: float = 1.5,
    duplicate_rate: float = 0.05,
    jitter: float = 0.12,
) -> list[dict[str, Any]]:
    """COCO results for `ground_truth` from a plausible, imperfect detector."""
    categories = [c["id"] for c in ground_truth["categories"]]
    sizes = {image["id"]: (image["width"], image["height"]) for image in ground_truth["images"]}
    results: list[dict[str, Any]] = []
    for annotation in ground_truth["annotations"]:
        x, y, w, h = annotation["bbox"]
        if rng.random() < miss_rate * (2.0 if w * h < 32**2 else 1.0):
            continue
        error = abs(rng.normal(0, jitter))
        box = [
            x + rng.normal(0, error) * w,
            y + rng.normal(0, error) * h,
            w * float(np.exp(rng.normal(0, error))),
            h * float(np.exp(rng.normal(0, error))),
        ]
        category = annotation["category_id"]
        if rng.random() < confusion_rate:
            category = int(rng.choice(categories))
        score = float(np.clip(0.95 - 2.0 * error + rng.normal(0, 0.1), 0.01, 1.0))
        results.append(_result(annotation["image_id"], category, box, score))
        if rng.random() < duplicate_rate:
            results.append(
                _result(annotation["image_id"], category, [v * rng.uniform(0.97, 1.03) for v in box], score * 0.6)
            )
    for image_id, (width, height) in sizes.items():
        for _ in range(rng.poisson(false_positives)):
            w, h = rng.uniform(10, width / 3), rng.uniform(10, height / 3)
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            results.append(_result(image_id, int(rng.choice(categories)), box, float(rng.uniform(0.01, 0.6))))
    return results


def _result(image_id: int, category: int, box: list[float], score: float) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "category_id": category,
        "bbox": [round(float(v), 2) for v in box],
        "score": round(score, 4),
    }
