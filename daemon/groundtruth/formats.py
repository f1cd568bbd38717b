"""Label files, detected by extension and validated by content.

    .json       COCO annotations (boxes, polygon/RLE segmentation)   → kind "boxes"
    .png .npy   class-index masks, one integer class per pixel        → kind "mask"
    .ply .pcd   point clouds with a per-point integer `label`         → kind "point_labels"

Every loader raises LabelError naming the file and what is wrong. Point clouds go through
Open3D's tensor I/O (it keeps an int32 `label`); PLY files whose label is int64, which
Open3D's PLY parser refuses, are read by a small numpy reader and cast to int32 when the
values fit (else the error says so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stagewatch.daemon.groundtruth.coco import CocoFormatError, CocoGroundTruth, parse_coco_ground_truth

KINDS = {".json": "boxes", ".png": "mask", ".npy": "mask", ".ply": "point_labels", ".pcd": "point_labels"}


class LabelError(ValueError):
    """A label file that cannot be used; the message names the file."""


def kind_of(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in KINDS:
        raise LabelError(f"{path}: unknown label format {suffix!r}; expected one of {', '.join(KINDS)}")
    return KINDS[suffix]


@dataclass(frozen=True)
class PointLabels:
    positions: np.ndarray  # (N, 3) float64
    labels: np.ndarray  # (N,) int32


def load_coco(path: Path, iou_type: str = "bbox") -> CocoGroundTruth:
    try:
        document = json.loads(path.read_bytes())
    except OSError as error:
        raise LabelError(f"{path}: cannot read ({error.strerror})") from None
    except ValueError as error:
        raise LabelError(f"{path}: not valid JSON ({error})") from None
    try:
        return parse_coco_ground_truth(document, source=str(path), iou_type=iou_type)
    except CocoFormatError as error:
        raise LabelError(str(error)) from None


def load_mask(path: Path) -> np.ndarray:
    """A (H, W) integer class-index mask from a single-channel PNG or a 2-D integer NPY."""
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
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    if not path.is_file():
        raise LabelError(f"{path}: no such file")
    if path.suffix.lower() == ".ply" and _has_64_bit_integers(path):
        return _read_ply_with_numpy(path)  # Open3D's PLY parser refuses int64 properties
    cloud = o3d.t.io.read_point_cloud(str(path))
    if "positions" not in cloud.point or len(cloud.point["positions"]) == 0:
        raise LabelError(f"{path}: no points could be read (not a point cloud, or empty)")
    if "label" not in cloud.point:
        names = ", ".join(sorted(key for key in cloud.point if key != "positions")) or "none"
        raise LabelError(f"{path}: no per-point 'label' attribute (attributes: {names})")
    positions = cloud.point["positions"].numpy().astype(np.float64)
    return PointLabels(positions, _labels(cloud.point["label"].numpy().reshape(-1), path))


def _has_64_bit_integers(path: Path) -> bool:
    with open(path, "rb") as handle:
        header = handle.read(4096).split(b"end_header", 1)[0]
    wide = {b"int64", b"uint64", b"long", b"ulong"}
    return any(line.startswith(b"property") and wide & set(line.split()[1:-1]) for line in header.splitlines())


def _labels(values: np.ndarray, path: Path) -> np.ndarray:
    if values.dtype.kind not in "iu":
        raise LabelError(f"{path}: label is {values.dtype}; expected integer class indices")
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.int32).max):
        raise LabelError(f"{path}: labels must be in [0, 2**31); found {values.min()}..{values.max()}")
    return values.astype(np.int32)


_PLY_TYPES = {
    "char": "i1",
    "uchar": "u1",
    "short": "i2",
    "ushort": "u2",
    "int": "i4",
    "uint": "u4",
    "float": "f4",
    "double": "f8",
    "int8": "i1",
    "uint8": "u1",
    "int16": "i2",
    "uint16": "u2",
    "int32": "i4",
    "uint32": "u4",
    "float32": "f4",
    "float64": "f8",
    "int64": "i8",
    "uint64": "u8",
    "long": "i8",
    "ulong": "u8",
}


def _read_ply_with_numpy(path: Path) -> PointLabels:
    """Vertex-only PLY (ascii or binary) with any integer label width; what Open3D cannot parse."""
    data = path.read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply") or end < 0:
        raise LabelError(f"{path}: not a PLY file (no 'ply' magic or no end_header)")
    lines = data[:end].decode("ascii", "replace").splitlines()
    layout = next((line.split()[1] for line in lines if line.startswith("format ")), "")
    fields, count, in_vertex = [], 0, False
    for line in lines:
        words = line.split()
        if words[:1] == ["element"]:
            in_vertex = words[1] == "vertex"
            count = int(words[2]) if in_vertex else count
            if not in_vertex and int(words[2]):
                raise LabelError(f"{path}: PLY elements other than vertex are not supported here")
        elif words[:1] == ["property"] and in_vertex:
            if words[1] == "list" or words[1] not in _PLY_TYPES:
                raise LabelError(f"{path}: unsupported PLY property {' '.join(words[1:])!r}")
            fields.append((words[2], _PLY_TYPES[words[1]]))
    names = [name for name, _ in fields]
    if not {"x", "y", "z", "label"} <= set(names):
        raise LabelError(f"{path}: PLY vertices need x, y, z and label (found {', '.join(names)})")
    body = data[end + len(b"end_header\n") :]
    try:
        if layout == "ascii":
            table = np.loadtxt(body.decode().splitlines(), ndmin=2, max_rows=count)
            columns = {name: table[:, i] for i, name in enumerate(names)}
            labels = columns["label"]
            if not np.all(labels == np.round(labels)):
                raise LabelError(f"{path}: non-integer labels")
            labels = labels.astype(np.int64)
        else:
            order = "<" if layout == "binary_little_endian" else ">"
            records = np.frombuffer(body, dtype=np.dtype([(n, order + t) for n, t in fields]), count=count)
            columns, labels = {name: records[name] for name in names}, records["label"]
    except ValueError as error:
        raise LabelError(f"{path}: PLY body does not match its header ({error})") from None
    positions = np.stack([columns["x"], columns["y"], columns["z"]], axis=1).astype(np.float64)
    return PointLabels(positions, _labels(labels, path))


def first_unknown_class(values: np.ndarray, classes: int, ignore_index: int | None = None) -> int | None:
    """The smallest label outside [0, classes) (ignoring `ignore_index`), or None; labels are >= 0."""
    if values.size == 0 or values.max() < classes:  # the common case, without sorting anything
        return None
    unknown = np.setdiff1d(np.unique(values), np.arange(classes))
    if ignore_index is not None:
        unknown = unknown[unknown != ignore_index]
    return int(unknown[0]) if len(unknown) else None
