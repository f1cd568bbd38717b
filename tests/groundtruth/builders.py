"""Small golden datasets written on disk, in every supported format, for the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stagewatch._saver import write_ply, write_png

CLASSES = ["background", "car", "pedestrian"]
HEIGHT, WIDTH = 24, 32


def scene(index: int) -> dict[str, Any]:
    """Deterministic labels for sample `index`: two boxes, a mask, a labelled cloud of 40 points."""
    rng = np.random.default_rng(index)
    boxes = [(1, [2.0 + index % 5, 3.0, 10.0, 6.0]), (2, [20.0, 4.0 + index % 3, 4.0, 12.0])]
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    for kind, (x, y, w, h) in boxes:
        mask[int(y) : int(y + h), int(x) : int(x + w)] = kind
    points = rng.uniform(-5, 5, (40, 3)).astype(np.float32)
    labels = (np.arange(40) % 3).astype(np.int32)
    return {"boxes": boxes, "mask": mask, "points": points, "labels": labels}


def write_dataset(folder: Path, samples: int, *, extra: str = "", listed: list[str] | None = None) -> Path:
    """COCO boxes; masks PNG (even) or NPY (odd); clouds PLY, or PCD for every third sample."""
    import open3d as o3d

    (folder / "masks").mkdir(parents=True, exist_ok=True)
    (folder / "clouds").mkdir(parents=True, exist_ok=True)
    coco: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "pedestrian"}],
    }
    for index in range(samples):
        name, labels = f"s{index:04d}", scene(index)
        coco["images"].append({"id": index + 1, "file_name": f"{name}.jpg", "width": WIDTH, "height": HEIGHT})
        for kind, box in labels["boxes"]:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": index + 1,
                    "category_id": kind,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        if index % 2:
            np.save(folder / "masks" / f"{name}.npy", labels["mask"].astype(np.int64))
        else:
            write_png(folder / "masks" / f"{name}.png", labels["mask"])
        if index % 3 == 2:
            cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(labels["points"]))
            cloud.point["label"] = o3d.core.Tensor(labels["labels"].reshape(-1, 1))
            o3d.t.io.write_point_cloud(str(folder / "clouds" / f"{name}.pcd"), cloud)
        else:
            write_ply(folder / "clouds" / f"{name}.ply", {"points": labels["points"], "label": labels["labels"]})
    (folder / "coco.json").write_text(json.dumps(coco))
    samples_line = f"samples: {json.dumps(listed)}\n" if listed is not None else ""
    spec = folder / "golden.yaml"
    spec.write_text(f"""name: test-golden
{samples_line}stages:
  detection:
    labels: coco.json
    score_threshold: 0.3
  segmentation:
    labels: masks/{{sample_id}}.*
    kind: mask
    classes: {json.dumps(CLASSES)}
  lidar:
    labels: clouds/{{sample_id}}.*
    kind: point_labels
    classes: {json.dumps(CLASSES)}
{extra}""")
    return spec


def ply_with_int64_labels(path: Path, labels: list[int]) -> None:
    """What some writers produce and Open3D's PLY parser refuses."""
    header = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {len(labels)}\nproperty float x\n"
        "property float y\nproperty float z\nproperty int64 label\nend_header\n"
    ).encode()
    records = np.zeros(len(labels), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("label", "<i8")])
    records["x"] = np.arange(len(labels))
    records["label"] = labels
    path.write_bytes(header + records.tobytes())
