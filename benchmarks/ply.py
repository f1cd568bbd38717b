"""Reading a labelled point cloud: our PLY reader vs plyfile on the same file.

    python benchmarks/ply.py [--points 1000000] [--repeats 7]

A binary little-endian PLY with float x, y, z and a ushort `label` (ScanNet's label type),
written by plyfile. Ours: `load_point_labels` (header checked against the file size, the
vertex element as one numpy view, positions to float64 and labels to int32, as the
accuracy worker uses them). Reference: `plyfile.PlyData.read`, then the same float64
positions and int32 labels. Both end with the same arrays (checked).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table

from stagewatch.daemon.groundtruth.formats import load_point_labels


def write_cloud(path: Path, points: int) -> None:
    rng = np.random.default_rng(0)
    vertex = np.empty(points, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("label", "u2")])
    for axis in "xyz":
        vertex[axis] = rng.uniform(-50, 50, points)
    vertex["label"] = rng.integers(0, 40, points)
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))


def with_plyfile(path: Path) -> tuple[np.ndarray, np.ndarray]:
    vertex = PlyData.read(str(path))["vertex"]
    positions = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)
    return positions, vertex["label"].astype(np.int32)


def with_stagewatch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    cloud = load_point_labels(path)
    return cloud.positions, cloud.labels


def median_ms(read, path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        read(path)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.ply"
        write_cloud(path, args.points)
        ours, theirs = with_stagewatch(path), with_plyfile(path)
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)), "the readers disagree"
        mine = median_ms(with_stagewatch, path, args.repeats)
        reference = median_ms(with_plyfile, path, args.repeats)
    print_table(
        f"Reading a {args.points:,}-point binary PLY with a ushort label, median of {args.repeats} (ms)",
        ["reader", "ms", "ratio to plyfile"],
        [
            ["stagewatch load_point_labels", f"{mine:.1f}", f"{mine / reference:.2f}"],
            ["plyfile PlyData.read (+ the same conversions)", f"{reference:.1f}", "1.00"],
        ],
    )


if __name__ == "__main__":
    main()
