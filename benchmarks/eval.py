"""COCO evaluation time: ours vs pycocotools and faster-coco-eval on the same set; streaming cost.

    python benchmarks/eval.py [--images 500] [--repeats 5]

A synthetic 500-image set (80 categories, boxes of every size, crowd regions) and an
imperfect detector's results (stagewatch.daemon.groundtruth.synthetic). Every tool starts
from the same in-memory documents and does its whole job: index/parse, evaluate,
accumulate, summarize. Medians of `--repeats` runs, in one process; the 12 numbers are
checked equal before timing. The second table is the per-sample cost of live evaluation:
one image's update of the COCO evaluator, and the accuracy worker's whole judgement of one
detection result (parse the prediction, match, P/R/F1, COCO update, verdict). The third
times `stagewatch gt validate` of a 1,000-sample golden dataset in three formats (the
demo's generator: COCO boxes, PNG/NPY 240x320 masks, PLY/PCD clouds of ~4,000 points).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table

from stagewatch.daemon.groundtruth.coco import STAT_NAMES, evaluate_coco, parse_coco_detections, parse_coco_ground_truth
from stagewatch.daemon.groundtruth.synthetic import coco_ground_truth, noisy_detections


def pycocotools_stats(ground_truth: dict, detections: list) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return _reference(COCO, COCOeval, ground_truth, detections)


def faster_coco_eval_stats(ground_truth: dict, detections: list) -> list[float]:
    from faster_coco_eval import COCO, COCOeval_faster

    return _reference(COCO, COCOeval_faster, ground_truth, detections)


def _reference(coco_class: Any, eval_class: Any, ground_truth: dict, detections: list) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = coco_class()
        coco.dataset = ground_truth
        coco.createIndex()
        evaluation = eval_class(coco, coco.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [float(v) for v in evaluation.stats[:12]]


def stagewatch_stats(ground_truth: dict, detections: list) -> list[float]:
    parsed = parse_coco_ground_truth(ground_truth)
    found = evaluate_coco(parsed, parse_coco_detections(detections, parsed))
    return [found[name] for name in STAT_NAMES]


def median_seconds(
    function: Callable[[dict, list], object], ground_truth: dict, detections: list, repeats: int
) -> float:
    """Each repeat on fresh copies (pycocotools annotates its inputs in place); copying is not timed."""
    times = []
    for _ in range(repeats):
        inputs = copy.deepcopy((ground_truth, detections))
        started = time.perf_counter()
        function(*inputs)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1000, help="golden dataset size for the validate timing")
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    ground_truth = coco_ground_truth(rng, args.images, categories=80, max_objects=15, crowd_rate=0.02)
    detections = noisy_detections(rng, ground_truth, false_positives=25)
    print(f"{args.images} images, {len(ground_truth['annotations'])} ground-truth boxes, {len(detections)} detections")

    tools = {
        "pycocotools": pycocotools_stats,
        "faster-coco-eval": faster_coco_eval_stats,
        "stagewatch": stagewatch_stats,
    }
    reference = pycocotools_stats(*copy.deepcopy((ground_truth, detections)))
    rows, seconds = [], {}
    for name, function in tools.items():
        found = function(*copy.deepcopy((ground_truth, detections)))
        difference = float(np.max(np.abs(np.subtract(found, reference))))
        seconds[name] = median_seconds(function, ground_truth, detections, args.repeats)
        rows.append([name, f"{seconds[name] * 1000:.0f}", f"{difference:.1e}"])
    for row, name in zip(rows, tools, strict=True):
        row += [f"{seconds['pycocotools'] / seconds[name]:.1f}x", f"{seconds['faster-coco-eval'] / seconds[name]:.2f}x"]
    print_table(
        "COCO bbox evaluation, whole set (median of repeats)",
        ["tool", "ms", "max |stat - pycocotools|", "speed vs pycocotools", "speed vs faster-coco-eval"],
        rows,
    )
    print_streaming(ground_truth, detections)
    print_dataset(args.samples)


def print_dataset(samples: int) -> None:
    import subprocess
    import tempfile
    from pathlib import Path

    from stagewatch.daemon._demo import detect, preprocess, synthetic_frame, write_golden_dataset
    from stagewatch.daemon.groundtruth.samples import StageAccuracy
    from stagewatch.daemon.groundtruth.spec import load_dataset

    with tempfile.TemporaryDirectory(prefix="sw-eval-") as folder:
        frames = [synthetic_frame(i, np.random.default_rng([7, i])) for i in range(samples)]
        spec = write_golden_dataset(Path(folder), frames)
        started = time.perf_counter()
        validated = subprocess.run(
            [sys.executable, "-m", "stagewatch.cli", "gt", "validate", str(spec), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        validate_s = time.perf_counter() - started
        report = json.loads(validated.stdout)
        stage = StageAccuracy(load_dataset(spec), "detection")
        results = [(f.sample_id, detect(preprocess(f)[0])) for f in frames if f.sample_id != "frame_047"]
        stage.judge(*results[0], None)  # the first loads the COCO file
        costs = []
        for sample_id, prediction in results[1:]:
            started = time.perf_counter()
            stage.judge(sample_id, prediction, None)
            costs.append(time.perf_counter() - started)
    ordered = sorted(costs)
    median_ms, p99_ms = statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99)] * 1000
    formats = {name: found["formats"] for name, found in report["stages"].items()}
    print_table(
        f"Golden dataset of {samples} samples, three formats: {formats}",
        ["what", "value"],
        [
            ["stagewatch gt validate (whole command, s)", f"{validate_s:.2f}"],
            ["judge one detection result, median ms", f"{median_ms:.3f}"],
            ["judge one detection result, p99 ms", f"{p99_ms:.3f}"],
        ],
    )


def print_streaming(ground_truth: dict, detections: list) -> None:
    from stagewatch.daemon.groundtruth.coco import CocoEvaluator, Objects

    parsed = parse_coco_ground_truth(ground_truth)
    per_image = parse_coco_detections(detections, parsed)
    evaluator = CocoEvaluator(parsed.categories)
    costs = []
    empty = Objects.empty()
    for image_id in parsed.images:
        started = time.perf_counter()
        evaluator.update(image_id, parsed.objects.get(image_id, empty), per_image.get(image_id, empty))
        costs.append(time.perf_counter() - started)
    started = time.perf_counter()
    evaluator.compute()
    compute_ms = (time.perf_counter() - started) * 1000
    ordered = sorted(costs)
    print_table(
        "Streaming: per-sample update (one image's boxes, all categories)",
        ["what", "median ms", "p99 ms"],
        [
            [
                "COCO matching update",
                f"{statistics.median(ordered) * 1000:.3f}",
                f"{ordered[int(len(ordered) * 0.99)] * 1000:.3f}",
            ],
            ["compute() over the whole set", f"{compute_ms:.1f}", ""],
        ],
    )


if __name__ == "__main__":
    main()
