"""The demo pipeline: synthetic camera frames and lidar sweeps through three stages.

preprocessing -> detection -> postprocessing, with real numpy work (filtering, blob
detection, voxel clustering, NMS, drawing), outputs saved per frame, and frame 47 fed a
corrupt image (NaN pixels) so the audit trail has an error to find.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import stagewatch

FAILING_FRAME = 47
HEIGHT, WIDTH, POINTS = 240, 320, 6000


@dataclass
class Frame:
    sample_id: str
    image: np.ndarray  # HxWx3 float32 in [0, 1]
    cloud: np.ndarray  # Nx3 float32, metres


def synthetic_frame(index: int, rng: np.random.Generator) -> Frame:
    """A noisy frame with a few bright boxes, and a lidar sweep with a few objects."""
    image = rng.normal(0.2, 0.05, (HEIGHT, WIDTH, 3)).astype(np.float32)
    for _ in range(rng.integers(2, 6)):
        y, x = rng.integers(0, HEIGHT - 40), rng.integers(0, WIDTH - 60)
        h, w = rng.integers(15, 40), rng.integers(20, 60)
        image[y : y + h, x : x + w] += rng.uniform(0.5, 0.8)
    ground = rng.uniform([-20, -20, -0.05], [20, 20, 0.05], (POINTS // 2, 3))
    centers = rng.uniform([-15, -15, 0.5], [15, 15, 1.5], (4, 3))
    objects = np.concatenate([c + rng.normal(0, 0.4, (POINTS // 8, 3)) for c in centers])
    cloud = np.concatenate([ground, objects]).astype(np.float32)
    if index == FAILING_FRAME:
        image[10:50, 10:50] = np.nan  # a corrupt readout from the camera
    return Frame(f"frame_{index:03d}", np.clip(image, 0, None), cloud)


def preprocess(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    bad = int(np.isnan(frame.image).any(axis=2).sum())
    if bad:
        raise ValueError(f"{frame.sample_id}: input image has {bad} NaN pixels (corrupt readout)")
    grey = frame.image.mean(axis=2)
    blurred = _box_blur(grey, 3)
    normalized = (blurred - blurred.mean()) / (blurred.std() + 1e-6)
    keep = np.linalg.norm(frame.cloud[:, :2], axis=1) < 25.0
    return normalized.astype(np.float32), frame.cloud[keep]


def _box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(image, radius, mode="edge")
    integral = padded.cumsum(0).cumsum(1)
    integral = np.pad(integral, ((1, 0), (1, 0)))
    k = 2 * radius + 1
    total = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
    return total / (k * k)


def detect(image: np.ndarray, cloud: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [x0, y0, x1, y1, score] from bright blobs; a cluster label per lidar point."""
    mask = image > 1.5
    boxes = []
    rows = np.flatnonzero(mask.any(axis=1))
    for band in np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1) if rows.size else []:
        columns = np.flatnonzero(mask[band[0] : band[-1] + 1].any(axis=0))
        for run in np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1):
            region = image[band[0] : band[-1] + 1, run[0] : run[-1] + 1]
            boxes.append([run[0], band[0], run[-1] + 1, band[-1] + 1, float(region.mean())])
    labels = _cluster(cloud)
    return np.array(boxes, np.float32).reshape(-1, 5), labels


def _cluster(cloud: np.ndarray, cell: float = 1.0) -> np.ndarray:
    """0 for ground, else the id of the occupied 1 m cell the point falls in."""
    cells = np.floor(cloud[:, :2] / cell).astype(np.int64)
    keys = cells[:, 0] * 100_003 + cells[:, 1]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    above_ground = cloud[:, 2] > 0.25
    return np.where(above_ground & (counts[inverse] >= 5), inverse + 1, 0).astype(np.int32)


def postprocess(boxes: np.ndarray, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    keep = _nms(boxes, 0.5)
    overlay = (np.clip(frame.image, 0, 1) * 255).astype(np.uint8)
    for x0, y0, x1, y1, _ in boxes[keep].astype(int):
        overlay[y0:y1, [x0, max(x1 - 1, x0)]] = (255, 40, 40)
        overlay[[y0, max(y1 - 1, y0)], x0:x1] = (255, 40, 40)
    return boxes[keep], overlay


def _nms(boxes: np.ndarray, threshold: float) -> np.ndarray:
    order = np.argsort(-boxes[:, 4]) if len(boxes) else np.zeros(0, int)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        x0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = rest[inter / (area[best] + area[rest] - inter + 1e-9) < threshold]
    return np.array(keep, int)


def run_demo(frames: int = 60, seed: int = 7, home: str | None = None) -> stagewatch.Run:
    """Run the demo pipeline through stagewatch; returns the finished run."""
    rng = np.random.default_rng(seed)
    config = {"frames": frames, "seed": seed, "image": [HEIGHT, WIDTH], "points": POINTS, "nms_iou": 0.5}
    with stagewatch.init(pipeline="perception", config=config, home=home) as run:
        for index in range(frames):
            frame = synthetic_frame(index, rng)
            try:
                process_frame(run, frame)
            except ValueError:
                continue  # the audit trail records it; the pipeline moves on to the next frame
    return run


def process_frame(run: stagewatch.Run, frame: Frame) -> None:
    source = f"synthetic://camera0/{frame.sample_id}"
    with run.stage("preprocessing", input_path=source, sample_id=frame.sample_id):
        image, cloud = preprocess(frame)
    with run.stage("detection", input_path=source, sample_id=frame.sample_id) as st:
        boxes, labels = detect(image, cloud)
        st.save(f"{frame.sample_id}_points.ply", {"points": cloud, "label": labels})
    with run.stage("postprocessing", input_path=source, sample_id=frame.sample_id) as st:
        kept, overlay = postprocess(boxes, frame)
        st.save(f"{frame.sample_id}_overlay.png", overlay)
        st.save(f"{frame.sample_id}_boxes.json", {"boxes_xyxy_score": kept.round(3).tolist()})
