"""Label files, detected by extension and validated by content.

    .json       COCO annotations (boxes, polygon/RLE segmentation)   → kind "boxes"
    .png .npy   class-index masks, one integer class per pixel        → kind "mask"
    .ply .pcd   point clouds with a per-point integer `label`         → kind "point_labels"

Every loader raises LabelError naming the file and what is wrong. PLY files are read by
ply.py (every integer label type, ascii and binary, a mesh's faces ignored), PCD files by
Open3D's tensor I/O; labels become int32 when their values fit (else the error says so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stagewatch import _files as files
from stagewatch.daemon.groundtruth.coco import CocoFormatError, CocoGroundTruth, parse_coco_ground_truth
from stagewatch.daemon.groundtruth.ply import PlyError, read_vertices

KINDS = {".json": "boxes", ".png": "mask", ".npy": "mask", ".ply": "point_labels", ".pcd": "point_labels"}
MAX_LABEL_FILE_BYTES = 4 * 1024**3  # a COCO file of a big dataset (LVIS: ~1 GB) fits


class LabelError(ValueError):
    """A label file that cannot be used; the message names the file."""


def regular_file(path: Path, max_bytes: int = MAX_LABEL_FILE_BYTES) -> Path:
    """`path` if it is a regular file of at most `max_bytes`, else LabelError."""
    try:
        return files.regular_file(path, max_bytes)
    except files.NotARegularFile as error:
        raise LabelError(str(error)) from None


def kind_of(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in KINDS:
        raise LabelError(f"{path}: unknown label format {suffix!r}; expected one of {', '.join(KINDS)}")
    return KINDS[suffix]


@dataclass(frozen=True)
class PointLabels:
    positions: np.ndarray  # (N, 3) float64
    labels: np.ndarray  # (N,) int32
    notes: tuple[str, ...] = ()  # what the loader left out (a mesh's faces, say)


def load_coco(path: Path, iou_type: str = "bbox") -> CocoGroundTruth:
    try:
        document = json.loads(regular_file(path).read_bytes())
    except OSError as error:
        raise LabelError(f"{path}: cannot read ({error.strerror})") from None
    except RecursionError:
        raise LabelError(f"{path}: JSON nested too deep to be COCO annotations") from None
    except ValueError as error:
        raise LabelError(f"{path}: not valid JSON ({error})") from None
    try:
        return parse_coco_ground_truth(document, source=str(path), iou_type=iou_type)
    except CocoFormatError as error:
        raise LabelError(str(error)) from None


def load_mask(path: Path) -> np.ndarray:
    """A (H, W) integer class-index mask from a single-channel PNG or a 2-D integer NPY."""
    regular_file(path)
    if path.suffix.lower() == ".npy":
        try:
            mask = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise LabelError(f"{path}: not a readable .npy array ({error})") from None
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                if image.mode not in ("L", "P", "I", "I;16", "1"):
                    raise LabelError(f"{path}: a {image.mode} PNG; a class-index mask must be single-channel (L, P, I)")
                mask = np.asarray(image)
        except (OSError, UnidentifiedImageError) as error:
            raise LabelError(f"{path}: not a readable PNG ({error})") from None
    return check_mask(mask, str(path))


def check_mask(mask: np.ndarray, where: str) -> np.ndarray:
    if mask.ndim != 2 or 0 in mask.shape:
        raise LabelError(f"{where}: a mask must be 2-D (height, width), got shape {mask.shape}")
    if mask.dtype == bool:
        return mask.astype(np.int32)
    if mask.dtype.kind not in "iu":
        raise LabelError(f"{where}: mask dtype {mask.dtype}; expected integer class indices")
    if mask.size and mask.min() < 0:
        raise LabelError(f"{where}: negative class index {int(mask.min())} in the mask")
    return mask.astype(np.int64)


def load_point_labels(path: Path) -> PointLabels:
    """Points and their integer `label` from a PLY (any integer type, ascii or binary, other
    elements ignored: see ply.py) or a PCD (Open3D's reader: ascii, binary, binary_compressed)."""
    regular_file(path)
    if path.suffix.lower() == ".ply":
        return _read_ply(path)
    cloud = _read_pcd(path)
    if "positions" not in cloud:
        raise LabelError(f"{path}: no points could be read (not a point cloud?)")
    if "label" not in cloud:
        names = ", ".join(sorted(key for key in cloud if key != "positions")) or "none"
        raise LabelError(f"{path}: no per-point 'label' attribute (attributes: {names})")
    return PointLabels(cloud["positions"].astype(np.float64), _labels(cloud["label"].reshape(-1), path))


def load_points(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, 3) positions and, when the file has them, per-point labels: from a PLY, a PCD, or an
    NPY of N x 3 coordinates (N x 4: the fourth column is the label)."""
    regular_file(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise LabelError(f"{path}: not a readable .npy array ({error})") from None
        if array.ndim != 2 or array.shape[1] not in (3, 4) or array.dtype.kind not in "fiu":
            raise LabelError(f"{path}: expected N x 3 (or N x 4 with labels) numbers, got {array.shape} {array.dtype}")
        labels = array[:, 3].astype(np.int64) if array.shape[1] == 4 else None
        return array[:, :3].astype(np.float64), labels
    if suffix == ".ply":
        try:
            vertices, _ = read_vertices(path)
        except (PlyError, OSError) as error:
            raise LabelError(f"{path}: {error}") from None
        names = set(vertices.dtype.names or ())
        if not {"x", "y", "z"} <= names:
            raise LabelError(f"{path}: PLY vertices need x, y, z (found {', '.join(sorted(names)) or 'none'})")
        labels = _labels(vertices["label"], path) if "label" in names else None
        return _positions(vertices), labels
    if suffix == ".pcd":
        cloud = _read_pcd(path)
        if "positions" not in cloud:
            raise LabelError(f"{path}: no points could be read (not a point cloud?)")
        labels = cloud["label"].reshape(-1).astype(np.int64) if "label" in cloud else None
        return cloud["positions"].astype(np.float64), labels
    raise LabelError(f"{path}: expected a point cloud as .ply, .pcd or .npy, got {suffix or 'no suffix'!r}")


MAX_ATTRIBUTES = 16  # per-point scalars offered as colourings; more are left out


def load_point_attributes(path: Path) -> dict[str, np.ndarray]:
    """Each per-point number a PLY or PCD carries besides x, y, z and label (intensity,
    reflectance, ring, time ...), as float64 in point order; nothing for other files or when
    unreadable (the cloud itself is read, and its errors said, by load_points)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".ply":
            vertices, _ = read_vertices(path)
            names = [n for n in vertices.dtype.names or () if n not in ("x", "y", "z", "label")]
            return {name: vertices[name].astype(np.float64) for name in names[:MAX_ATTRIBUTES]}
        if suffix == ".pcd":
            found = {
                name: values.reshape(-1).astype(np.float64)
                for name, values in _read_pcd(path).items()
                if name not in ("positions", "label") and values.ndim == 2 and values.shape[1] == 1
            }
            return dict(list(found.items())[:MAX_ATTRIBUTES])
    except (PlyError, OSError, ValueError, RuntimeError):
        return {}
    return {}


def _read_ply(path: Path) -> PointLabels:
    try:
        vertices, notes = read_vertices(path)
    except (PlyError, OSError) as error:
        raise LabelError(f"{path}: {error}") from None
    names = vertices.dtype.names or ()
    if not {"x", "y", "z", "label"} <= set(names):
        raise LabelError(f"{path}: PLY vertices need x, y, z and label (found {', '.join(names) or 'none'})")
    return PointLabels(_positions(vertices), _labels(vertices["label"], path), tuple(notes))


MAX_PCD_HEADER_BYTES = 64 * 1024


def _read_pcd(path: Path) -> dict[str, np.ndarray]:
    """A PCD's per-point arrays by Open3D's name ("positions" (N, 3), "label" (N, 1) ...), by
    Open3D's tensor reader (ascii, binary, binary_compressed); nothing when it reads no points.
    A header that declares 0 points (a frame with every point filtered out) is an empty cloud:
    Open3D refuses to read one."""
    fields = _fields_of_empty_pcd(path)
    if fields is not None:
        empty = {"positions": np.zeros((0, 3))}
        return empty | {name: np.zeros((0, 1), np.int32) for name in fields if name not in ("x", "y", "z")}
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    cloud = o3d.t.io.read_point_cloud(str(path))
    if "positions" not in cloud.point or len(cloud.point["positions"]) == 0:
        return {}  # not a point cloud: Open3D reads garbage as an empty cloud
    return {name: cloud.point[name].numpy() for name in cloud.point}


def _fields_of_empty_pcd(path: Path) -> list[str] | None:
    """The FIELDS of a PCD whose header (up to its DATA line) declares `POINTS 0` (and WIDTH x
    HEIGHT 0, when given) and has x, y and z; None for any other file."""
    with open(path, "rb") as handle:
        head = handle.read(MAX_PCD_HEADER_BYTES)
    fields: list[str] = []
    counts: dict[str, int] = {}
    for line in head.split(b"\n"):
        words = line.decode("ascii", "replace").split()
        if not words or words[0].startswith("#"):
            continue
        key = words[0].upper()
        if key == "FIELDS":
            fields = words[1:]
        elif key in ("POINTS", "WIDTH", "HEIGHT") and len(words) == 2 and words[1].isdigit():
            counts[key] = int(words[1])
        elif key == "DATA":
            declared_empty = counts.get("POINTS") == 0 and counts.get("WIDTH", 0) * counts.get("HEIGHT", 0) == 0
            return fields if declared_empty and {"x", "y", "z"} <= set(fields) else None
    return None


def _positions(vertices: np.ndarray) -> np.ndarray:
    """(N, 3) float64 from the x, y, z fields: one strided conversion when they sit side by
    side with one type (as nearly every writer lays them out), else one pass per axis."""
    fields = [vertices.dtype.fields[axis] for axis in "xyz"]
    kind, offset = fields[0][0], fields[0][1]
    if all(f[0] == kind and f[1] == offset + i * kind.itemsize for i, f in enumerate(fields)):
        xyz = np.ndarray((len(vertices), 3), kind, vertices, offset, (vertices.dtype.itemsize, kind.itemsize))
        return xyz.astype(np.float64)
    positions = np.empty((len(vertices), 3), np.float64)
    for column, axis in enumerate("xyz"):
        positions[:, column] = vertices[axis]
    return positions


def _labels(values: np.ndarray, path: Path) -> np.ndarray:
    if values.dtype.kind not in "iu":
        raise LabelError(f"{path}: label is {values.dtype}; expected integer class indices")
    limits, int32 = np.iinfo(values.dtype), np.iinfo(np.int32)
    if limits.min >= 0 and limits.max <= int32.max:  # uchar, ushort: every value fits, nothing to scan
        return values.astype(np.int32)
    if values.size and (values.min() < 0 or values.max() > int32.max):
        raise LabelError(f"{path}: labels must be in [0, 2**31); found {values.min()}..{values.max()}")
    return values.astype(np.int32)


def first_unknown_class(values: np.ndarray, classes: int, ignore_index: int | None = None) -> int | None:
    """The smallest label outside [0, classes) (ignoring `ignore_index`), or None; labels are >= 0."""
    if values.size == 0 or values.max() < classes:  # the common case, without sorting anything
        return None
    unknown = np.setdiff1d(np.unique(values), np.arange(classes))
    if ignore_index is not None:
        unknown = unknown[unknown != ignore_index]
    return int(unknown[0]) if len(unknown) else None
