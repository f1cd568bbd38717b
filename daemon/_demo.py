"""The demo pipeline: a street camera's frames and a lidar's sweeps (daemon/_street.py: sky,
facades, a road with lane marks, cars and pedestrians, drawn and cast procedurally) through five
stages, checked against a golden dataset that the demo writes first.

preprocessing → detection (boxes) → segmentation (class mask) → lidar_segmentation
(per-point labels) → postprocessing, with real numpy work. The camera does not move, so the
pipeline finds objects as a traffic camera does, against the empty street: what differs from it
is foreground. That makes the mistakes real ones: a car the colour of asphalt is missed, a car
and its shadow make one loose box, neighbours that overlap merge into one, the sun's glint on a
window fires as an object, and the segmenter blurs edges. The lidar labeller calls everything
low ground (and so loses the bottom of every car), splits the sweep into 1.5 m cells and names a
cell by its extent, so a pedestrian beside a car or a wall takes their label. Frame 47 gets a
corrupt image (NaN pixels), so the audit trail has an error to find. The golden dataset
(`datasets/demo/golden.yaml` under the home) labels 50 frames in all three formats, mixing
PNG/NPY masks and PLY/PCD clouds; later frames are unlabeled.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

import stagewatch
from stagewatch._saver import write_ply, write_png
from stagewatch.daemon import _street
from stagewatch.daemon._street import HEIGHT, WIDTH
from stagewatch.daemon.base._layout import DaemonHome

FAILING_FRAME = 47
LABELED_FRAMES = 50
STREET = 7  # the street the camera and the lidar stand in: the same for every demo, as a mast's is
CLASSES = ["background", "car", "pedestrian"]  # index = mask value = point label = COCO id
FOREGROUND_SCALE = 0.1  # a difference from the empty street of 0.1 (of full brightness) reads 1.0


@dataclass
class Frame:
    sample_id: str
    image: np.ndarray  # HxWx3 float32 in [0, 1]
    cloud: np.ndarray  # Nx3 float32, metres
    boxes: list[tuple[int, list[float]]] = field(default_factory=list)  # (class, [x, y, w, h])
    mask: np.ndarray = field(default_factory=lambda: np.zeros((HEIGHT, WIDTH), np.uint8))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    glare: bool = False  # the sun's glint on a window: the detector's false positives
    plate: np.ndarray | None = None  # the empty street (the camera's background model)


@functools.cache
def _count(number: int, noun: str) -> str:
    """'1 object', '3 objects'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def street_view(seed: int = STREET) -> tuple[list[_street.Facade], np.ndarray]:
    """The street's buildings and the camera's picture of it empty (made once: it does not move)."""
    facades = _street.street(seed)
    return facades, _street.plate(facades)


def synthetic_frame(index: int, rng: np.random.Generator) -> Frame:
    """A street camera frame with cars and pedestrians, and a lidar sweep of the same world."""
    facades, background = street_view()
    things = _street.traffic(rng)
    image, mask, boxes = _street.camera(things, background, rng)
    frame = Frame(f"frame_{index:03d}", image, np.zeros((0, 3), np.float32), boxes, mask, plate=background)
    if rng.random() < 0.25:  # the sun's glint on a window: bright, and no object
        y, x = int(rng.integers(15, _street.HORIZON - 10)), int(rng.integers(0, WIDTH - 12))
        image[y : y + 7, x : x + 9] = 1.0
        frame.glare = True
    frame.cloud, frame.point_labels = _street.lidar(things, facades, rng)
    if index == FAILING_FRAME:
        image[10:50, 10:50] = np.nan  # a corrupt readout from the camera
    frame.image = np.clip(image, 0, None)
    return frame


# -- the golden dataset ---------------------------------------------------------------------------
def write_golden_dataset(folder: Path, frames: list[Frame]) -> Path:
    """COCO boxes, class masks (PNG for even frames, NPY for odd), labelled clouds (PLY, and
    PCD for every third frame) and the camera images for `frames`, plus the golden.yaml that
    ties them together."""
    for kind in ("masks", "clouds", "images"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES) if i]}
    for number, frame in enumerate(frames, start=1):
        coco["images"].append({"id": number, "file_name": f"{frame.sample_id}.png", "width": WIDTH, "height": HEIGHT})
        for kind, box in frame.boxes:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": number,
                    "category_id": kind,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        camera = np.nan_to_num(np.clip(frame.image, 0, 1) * 255, nan=255).astype(np.uint8)
        write_png(folder / "images" / f"{frame.sample_id}.png", camera)  # what boxes and masks are drawn on
        if number % 2:
            write_png(folder / "masks" / f"{frame.sample_id}.png", frame.mask)
        else:
            np.save(folder / "masks" / f"{frame.sample_id}.npy", frame.mask.astype(np.int32))
        _write_cloud(folder / "clouds" / frame.sample_id, frame, as_pcd=number % 3 == 0)
    (folder / "annotations.json").write_text(json.dumps(coco))
    spec = folder / "golden.yaml"
    spec.write_text(GOLDEN_YAML.format(count=len(frames)))
    return spec


GOLDEN_YAML = """\
# The demo's golden dataset: {count} frames labelled in three formats.
name: demo-golden
description: synthetic street frames (cars, pedestrians) with boxes, class masks and lidar point labels
root: .
inputs: images/{{sample_id}}.png    # the camera frames, to draw boxes and masks on
stages:
  detection:
    labels: annotations.json        # COCO boxes; samples are images, matched by file-name stem
    iou_threshold: 0.5
    score_threshold: 0.3
    pass: {{metric: f1, min: 1.0}}     # a frame is correct when every object is found, nothing else
  segmentation:
    labels: masks/{{sample_id}}.*      # PNG or NPY, per frame
    kind: mask
    classes: [background, car, pedestrian]
    pass: {{metric: miou, min: 0.8}}
  lidar_segmentation:
    labels: clouds/{{sample_id}}.*     # PLY or PCD with a per-point int32 label
    kind: point_labels
    classes: [ground, car, pedestrian]
    pass: {{metric: accuracy, min: 0.95}}
"""


def _write_cloud(stem: Path, frame: Frame, as_pcd: bool) -> None:
    # A lidar's return intensity: objects reflect more than the road, far points less.
    reach = np.linalg.norm(frame.cloud[:, :2], axis=1)
    intensity = ((0.25 + 0.5 * (frame.point_labels > 0)) * np.exp(-reach / 40.0)).astype(np.float32)
    attributes = {"points": frame.cloud, "label": frame.point_labels, "intensity": intensity}
    if as_pcd:
        try:
            import open3d as o3d

            cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(frame.cloud))
            cloud.point["label"] = o3d.core.Tensor(frame.point_labels.reshape(-1, 1))
            cloud.point["intensity"] = o3d.core.Tensor(intensity.reshape(-1, 1))
            o3d.t.io.write_point_cloud(str(stem.with_suffix(".pcd")), cloud)
            return
        except ImportError:  # without the [3d] extra every cloud is PLY
            pass
    write_ply(stem.with_suffix(".ply"), attributes)


# -- the pipeline's stages -------------------------------------------------------------------------
def preprocess(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """The foreground (how far each pixel is from the empty street, after the frame's overall
    brightness is matched to it, blurred, in FOREGROUND_SCALE units) and the sweep within range."""
    bad = int(np.isnan(frame.image).any(axis=2).sum())
    if bad:
        raise ValueError(f"{frame.sample_id}: input image has {bad} NaN pixels (corrupt readout)")
    background = frame.plate if frame.plate is not None else street_view()[1]
    gain = float(background.mean()) / max(float(frame.image.mean()), 1e-6)  # the light of the hour
    difference = np.abs(frame.image * gain - background).mean(axis=2)
    foreground = _box_blur(difference, 1) / FOREGROUND_SCALE
    keep = np.linalg.norm(frame.cloud[:, :2], axis=1) < _street.LIDAR_RANGE  # the sweep's range: every point
    return foreground.astype(np.float32), frame.cloud[keep]


def _box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(image, radius, mode="edge")
    integral = padded.cumsum(0).cumsum(1)
    integral = np.pad(integral, ((1, 0), (1, 0)))
    k = 2 * radius + 1
    total = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
    return total / (k * k)


def _blobs(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x0, y0, x1, y1) of row bands by column runs of `mask`: a cheap labelling
    that merges objects sharing rows, as a crude detector would."""
    found = []
    rows = np.flatnonzero(mask.any(axis=1))
    for band in np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1) if rows.size else []:
        columns = np.flatnonzero(mask[band[0] : band[-1] + 1].any(axis=0))
        for run in np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1):
            sub = mask[band[0] : band[-1] + 1, run[0] : run[-1] + 1]
            used = np.flatnonzero(sub.any(axis=1))
            found.append((int(run[0]), int(band[0] + used[0]), int(run[-1] + 1), int(band[0] + used[-1] + 1)))
    return found


def _class_of(width: float, height: float) -> int:
    return 1 if width >= 0.7 * height else 2  # a car seen from behind is about square, a person tall


def detect(image: np.ndarray) -> dict[str, list]:
    """Boxes (xywh), scores and class names from bright blobs."""
    boxes, scores, labels = [], [], []
    for x0, y0, x1, y1 in _blobs(image > 1.2):
        w, h = x1 - x0, y1 - y0
        if w * h < 30:
            continue
        contrast = float(image[y0:y1, x0:x1].mean())
        boxes.append([x0, y0, w, h])
        scores.append(round(float(np.clip(contrast / 4.0, 0.05, 0.99)), 3))
        labels.append(CLASSES[_class_of(w, h)])
    return {"boxes": boxes, "scores": scores, "labels": labels}


def segment(image: np.ndarray) -> np.ndarray:
    """A class-index mask: thresholded blobs, each coloured by its shape."""
    foreground = image > 0.8
    mask = np.zeros(image.shape, np.uint8)
    for x0, y0, x1, y1 in _blobs(foreground):
        region = foreground[y0:y1, x0:x1]
        mask[y0:y1, x0:x1][region] = _class_of(x1 - x0, y1 - y0)
    return mask


def label_points(cloud: np.ndarray, cell: float = 1.5) -> np.ndarray:
    """0 for ground (below 0.25 m) and for buildings (a cell with points above 2.5 m); the rest
    grouped by 1.5 m cells, a cell labelled car or pedestrian by its extent."""
    labels = np.zeros(len(cloud), np.int32)
    above = np.flatnonzero(cloud[:, 2] > 0.25)
    if not above.size:
        return labels
    cells = np.floor(cloud[above, :2] / cell).astype(np.int64)
    _, group = np.unique(cells[:, 0] * 100_003 + cells[:, 1], return_inverse=True)
    groups, points = int(group.max()) + 1, cloud[above]
    top = np.full(groups, -np.inf)
    np.maximum.at(top, group, points[:, 2])
    low, high = np.full((groups, 2), np.inf), np.full((groups, 2), -np.inf)
    np.minimum.at(low, group, points[:, :2])
    np.maximum.at(high, group, points[:, :2])
    extent = (high - low).max(axis=1)
    named = np.where(top > 2.5, 0, np.where(extent > 1.0, 1, 2))  # a building is taller than any car or person
    labels[above] = named[group]
    return labels


def postprocess(detections: dict[str, list], frame: Frame) -> np.ndarray:
    overlay = (np.clip(frame.image, 0, 1) * 255).astype(np.uint8)
    for x, y, w, h in detections["boxes"]:
        overlay[y : y + h, [x, max(x + w - 1, x)]] = (255, 40, 40)
        overlay[[y, max(y + h - 1, y)], x : x + w] = (255, 40, 40)
    return overlay


def run_demo(frames: int = 60, seed: int = 7, home: str | None = None) -> stagewatch.Run:
    """Write the golden dataset, then run the pipeline checked against it; returns the run."""
    home_path = DaemonHome.resolve(home).root
    labeled = [_scene(index, seed) for index in range(min(frames, LABELED_FRAMES))]
    dataset = write_golden_dataset(DaemonHome.of(home_path).datasets / "demo", labeled)
    config = {"frames": frames, "seed": seed, "image": [HEIGHT, WIDTH], "classes": CLASSES}
    # The pipeline logs as a real one does, through stagewatch's Loguru sink: every record
    # lands in the run's `logs` table, tagged with the stage and sample it came from.
    sink = logger.add(stagewatch.loguru_sink, level="INFO", filter=lambda record: record["extra"].get("demo"))
    log = pipeline_logger()
    try:
        with stagewatch.init(pipeline="perception", config=config, home=home, dataset=dataset) as run:
            log.info("perception pipeline: {} frames, golden dataset {}", frames, dataset)
            # the rest made as they are processed: a long demo streams from its first second
            for frame in itertools.chain(labeled, (_scene(i, seed) for i in range(len(labeled), frames))):
                try:
                    process_frame(run, frame, log, dataset.parent)
                except ValueError as error:  # the audit trail records it; the pipeline moves on
                    log.error("{} skipped: {}", frame.sample_id, error)
    finally:
        logger.remove(sink)
    return run


def _scene(index: int, seed: int) -> Frame:
    return synthetic_frame(index, np.random.default_rng([seed, index]))


def pipeline_logger() -> Any:
    """The demo pipeline's logger: its records name the pipeline, as a user's name their module,
    not this module of stagewatch's."""
    return logger.bind(demo=True).patch(lambda record: record.update(name="perception"))


def input_files(dataset: Path | None, sample_id: str) -> tuple[str, str]:
    """The camera image and lidar sweep a frame is read from: the golden dataset's files where
    it wrote them (a failure's input is then a file one can open), else the synthetic source."""
    images = sorted(dataset.glob(f"images/{sample_id}.png")) if dataset else []
    clouds = sorted(dataset.glob(f"clouds/{sample_id}.p[cl][yd]")) if dataset else []
    camera = str(images[0].resolve()) if images else f"synthetic://camera0/{sample_id}"
    return camera, str(clouds[0].resolve()) if clouds else f"synthetic://lidar0/{sample_id}"


def process_frame(run: stagewatch.Run, frame: Frame, log: Any = None, dataset: Path | None = None) -> None:
    """The five stages on one frame; `dataset`: the golden dataset's folder its files are in."""
    log = log or pipeline_logger()
    source, sweep = input_files(dataset, frame.sample_id)
    with run.stage("preprocessing", input_path=source, sample_id=frame.sample_id):
        image, cloud = preprocess(frame)
    with run.stage("detection", input_path=source, sample_id=frame.sample_id) as st:
        detections = detect(image)
        st.result(frame.sample_id, detections)
        if frame.glare:
            log.bind(boxes=len(detections["boxes"])).warning(
                "{}: glare in the image; a bright spot may be reported as an object", frame.sample_id
            )
        log.info("{}: {} detected", frame.sample_id, _count(len(detections["boxes"]), "object"))
    with run.stage("segmentation", input_path=source, sample_id=frame.sample_id) as st:
        st.result(frame.sample_id, segment(image))
    with run.stage("lidar_segmentation", input_path=sweep, sample_id=frame.sample_id) as st:
        labels = label_points(cloud)
        st.save(f"{frame.sample_id}_points.ply", {"points": cloud, "label": labels})
        st.result(frame.sample_id, labels)
    with run.stage("postprocessing", input_path=source, sample_id=frame.sample_id) as st:
        st.save(f"{frame.sample_id}_overlay.png", postprocess(detections, frame))
        st.save(f"{frame.sample_id}_boxes.json", detections)
