"""`stagewatch diff`: a prediction against its ground truth, as a picture and numbers.

    stagewatch diff mask PRED TRUTH --out diff.png [--ignore-index 255] [--json]
    stagewatch diff image A B --out diff.png [--signed] [--threshold 0.1] [--json]
    stagewatch diff cloud PRED TRUTH --out distances.ply [--png view.png] [--max M] [--json]

Exit codes: 0 written, 2 inputs that cannot be read or compared (the message says why).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from stagewatch.cli._options import EXIT_OK, EXIT_USAGE, fail

MAX_IMAGE_BYTES = 512 * 1024 * 1024


def add_commands(commands: Any) -> None:
    diff = commands.add_parser("diff", help="difference of a prediction and its ground truth: PNG/PLY and numbers")
    kinds = diff.add_subparsers(dest="kind", required=True)
    mask = kinds.add_parser("mask", help="true/false positive and false negative pixels of a class mask")
    mask.add_argument("prediction", type=Path, help="predicted class mask (.png or .npy)")
    mask.add_argument("truth", type=Path, help="ground-truth class mask (.png or .npy)")
    mask.add_argument("--ignore-index", type=int, default=255, help="ground-truth value to leave out (255)")
    mask.set_defaults(handler=cmd_diff_mask)
    image = kinds.add_parser("image", help="a heatmap of the per-pixel difference of two images")
    image.add_argument("first", type=Path)
    image.add_argument("second", type=Path)
    image.add_argument("--signed", action="store_true", help="first - second, blue to red (default: |difference|)")
    image.add_argument("--threshold", type=float, default=0.1, help="count pixels differing by more (0..1, 0.1)")
    image.set_defaults(handler=cmd_diff_image)
    cloud = kinds.add_parser("cloud", help="per-point nearest distances both ways, Chamfer and Hausdorff")
    cloud.add_argument("prediction", type=Path, help="predicted points (.ply, .pcd, or .npy N x 3)")
    cloud.add_argument("truth", type=Path, help="ground-truth points (.ply, .pcd, or .npy N x 3)")
    cloud.add_argument("--png", type=Path, help="also a bird's-eye view of the heatmap")
    cloud.add_argument("--max", type=float, help="distance at the top of the colour map (default: the largest)")
    cloud.set_defaults(handler=cmd_diff_cloud)
    for parser in (mask, image, cloud):
        parser.add_argument("--out", type=Path, required=True, help="the file to write (PNG; PLY for clouds)")
        parser.add_argument("--json", action="store_true", help="print the numbers as JSON")


def cmd_diff_mask(args: argparse.Namespace) -> int:
    from stagewatch.daemon.groundtruth.diff import DiffError, mask_difference
    from stagewatch.daemon.groundtruth.formats import LabelError, load_mask

    try:
        found = mask_difference(load_mask(args.prediction), load_mask(args.truth), args.ignore_index)
        _write_png(args.out, found.picture)
    except (LabelError, DiffError, OSError) as error:
        return fail(str(error), EXIT_USAGE)
    numbers = {"agreement": found.agreement, "ignored_pixels": found.ignored, "per_class": found.per_class}
    return _report(
        args,
        numbers,
        f"pixels agree: {found.agreement:.2%}; per class (TP/FP/FN): "
        + ", ".join(
            f"{c}: {v['true_positive']}/{v['false_positive']}/{v['false_negative']}" for c, v in found.per_class.items()
        ),
    )


def cmd_diff_image(args: argparse.Namespace) -> int:
    from stagewatch.daemon.groundtruth.diff import DiffError, image_difference

    if not 0 <= args.threshold <= 1:
        return fail(f"expected --threshold between 0 and 1, got {args.threshold}", EXIT_USAGE)
    try:
        found = image_difference(_read_image(args.first), _read_image(args.second), args.signed, args.threshold)
        _write_png(args.out, found.picture)
    except (DiffError, OSError, ValueError) as error:
        return fail(str(error), EXIT_USAGE)
    numbers = {
        "mean_absolute_difference": found.mean_absolute,
        "over_threshold": found.over_threshold,
        "threshold": found.threshold,
        "colour_bar": list(found.scale),
    }
    return _report(
        args,
        numbers,
        f"mean |difference| {found.mean_absolute:.4f}; {found.over_threshold:.2%} of pixels over {found.threshold}",
    )


def cmd_diff_cloud(args: argparse.Namespace) -> int:
    from stagewatch.daemon.groundtruth.diff import DiffError, cloud_distances, empty_clouds_line, top_view, viridis
    from stagewatch.daemon.groundtruth.formats import LabelError, load_points

    if args.max is not None and not args.max > 0:
        return fail(f"expected --max above 0, got {args.max}", EXIT_USAGE)
    try:
        prediction, _ = load_points(args.prediction)
        truth, _ = load_points(args.truth)
        found = cloud_distances(prediction, truth)
        kept = prediction[np.isfinite(prediction).all(axis=1)]
        _write_distance_ply(args.out, kept, found.to_truth)
        if args.png:
            _write_png(args.png, top_view(kept, viridis(found.to_truth, 0.0, args.max)))
    except (LabelError, DiffError, OSError) as error:
        return fail(str(error), EXIT_USAGE)
    numbers = {**found.summary, "dropped_points": found.dropped}
    s = found.summary
    if s.get("empty"):  # a frame with every point filtered out: a result, with nothing to measure
        return _report(args, numbers, empty_clouds_line(found))
    return _report(
        args,
        numbers,
        f"prediction -> truth: mean {s['mean_to_truth']:.4f}, p95 {s['p95_to_truth']:.4f}, "
        f"max {s['max_to_truth']:.4f}; Chamfer {s['chamfer']:.4f}, Hausdorff {s['hausdorff']:.4f}",
    )


def _report(args: argparse.Namespace, numbers: dict[str, Any], line: str) -> int:
    if args.json:
        print(json.dumps({"written": str(args.out), **numbers}, indent=1))
    else:
        print(f"wrote {args.out}: {line}")
    return EXIT_OK


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from stagewatch._files import NotARegularFile, regular_file

    try:
        regular_file(path, MAX_IMAGE_BYTES)
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as image:
            return np.asarray(image)
    except NotARegularFile as error:
        raise ValueError(str(error)) from None
    except (UnidentifiedImageError, SyntaxError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None


def _write_png(path: Path, picture: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(picture).save(path, format="PNG")


def _write_distance_ply(path: Path, points: np.ndarray, distances: np.ndarray) -> None:
    """Binary PLY of the predicted points with a float `distance` per point (to the ground truth;
    NaN when the ground truth is empty)."""
    vertices = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("distance", "<f4")])
    vertices["x"], vertices["y"], vertices["z"] = points[:, 0], points[:, 1], points[:, 2]
    vertices["distance"] = distances
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        "comment stagewatch diff cloud: distance to the nearest ground-truth point\n"
        f"element vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property float distance\nend_header\n"
    )
    with open(path, "wb") as out:
        out.write(header.encode())
        out.write(vertices.tobytes())
