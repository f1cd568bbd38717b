"""Encoders for stage outputs: images as PNG, point clouds as PLY, arrays as NPY, JSON.

numpy is imported only when something is saved, so `import stagewatch` stays light. PNG
and PLY are written here (zlib and numpy suffice); the PLY layout is the one Open3D's
tensor I/O reads back, per-point attributes included (an int32 `label`, say).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from stagewatch._shared import make_dirs

PNG_COMPRESSION_LEVEL = 3  # level 3 is within 10% of level 9's size at a fraction of the time


def write_png(path: Path, image: Any) -> None:
    """Write an HxW (grey) or HxWx3/HxWx4 uint8 or uint16 array as PNG."""
    import numpy as np

    array = np.asarray(image)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a uint8 or uint16 image, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        color_type = 0  # greyscale
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        color_type = {3: 2, 4: 6}[array.shape[2]]  # RGB, RGBA
    else:
        raise ValueError(f"expected an image of shape HxW, HxWx3 or HxWx4, got {array.shape}")
    height, width = array.shape[:2]
    big_endian = array.astype(array.dtype.newbyteorder(">"), copy=False)
    rows = big_endian.reshape(height, -1).view(np.uint8)
    raw = np.hstack([np.zeros((height, 1), np.uint8), rows]).tobytes()  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", width, height, array.dtype.itemsize * 8, color_type, 0, 0, 0)
    _write_bytes(
        path,
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, PNG_COMPRESSION_LEVEL))
        + _png_chunk(b"IEND", b""),
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_PLY_TYPES = {
    "f4": "float",
    "f8": "double",
    "i4": "int",
    "u4": "uint",
    "i2": "short",
    "u2": "ushort",
    "i1": "char",
    "u1": "uchar",
}


def _point_attributes(cloud: Any) -> dict[str, Any]:
    """{'points': Nx3, 'colors'?: Nx3, 'normals'?: Nx3, other per-point attributes: N} from
    an Nx3 array, a dict of arrays, or an Open3D point cloud (legacy or tensor)."""
    import numpy as np

    if isinstance(cloud, dict):
        attributes = {name: np.asarray(value) for name, value in cloud.items()}
    elif hasattr(cloud, "point"):  # open3d.t.geometry.PointCloud
        attributes = {name: cloud.point[name].numpy() for name in cloud.point}
        attributes["points"] = attributes.pop("positions")
    elif hasattr(cloud, "points"):  # open3d.geometry.PointCloud
        attributes = {"points": np.asarray(cloud.points)}
        for name in ("colors", "normals"):
            if getattr(cloud, f"has_{name}")():
                attributes[name] = np.asarray(getattr(cloud, name))
    else:
        attributes = {"points": np.asarray(cloud)}
    points = attributes.get("points")
    if points is None or points.ndim != 2 or points.shape[1] != 3:
        shape = None if points is None else points.shape
        raise ValueError(f"expected points of shape Nx3, got {shape}")
    return attributes


def _ply_columns(attributes: dict[str, Any]) -> list[tuple[str, Any]]:
    """(property name, 1-D column) pairs in the order Open3D writes them."""
    import numpy as np

    count = len(attributes["points"])
    columns: list[tuple[str, Any]] = []
    triples = {"points": ("x", "y", "z"), "normals": ("nx", "ny", "nz"), "colors": ("red", "green", "blue")}
    for name, value in attributes.items():
        if len(value) != count:
            raise ValueError(f"expected {count} values for point attribute {name!r}, got {len(value)}")
        if name == "colors" and value.dtype.kind == "f":
            value = np.clip(np.round(value * 255), 0, 255).astype(np.uint8)  # Open3D's convention
        if value.dtype == np.int64:
            # Open3D's PLY reader refuses int64 properties; labels fit in int32.
            if value.size and (value.max() > np.iinfo(np.int32).max or value.min() < np.iinfo(np.int32).min):
                raise ValueError(f"point attribute {name!r} does not fit in int32")
            value = value.astype(np.int32)
        elif value.dtype == np.float16:
            value = value.astype(np.float32)
        names = triples.get(name)
        if names is None:
            names = (name,) if value.ndim == 1 else tuple(f"{name}_{i}" for i in range(value.shape[1]))
        value = value.reshape(count, -1)
        columns.extend((prop, value[:, i]) for i, prop in enumerate(names))
    return columns


def write_ply(path: Path, cloud: Any) -> None:
    """Write a point cloud as binary little-endian PLY with every per-point attribute."""
    import numpy as np

    columns = _ply_columns(_point_attributes(cloud))
    dtype = np.dtype([(name, column.dtype.newbyteorder("<")) for name, column in columns])
    unknown = [name for name, column in columns if dtype[name].str[1:] not in _PLY_TYPES]
    if unknown:
        raise ValueError(f"expected numeric point attributes, got unsupported dtypes for {unknown}")
    table = np.empty(len(columns[0][1]), dtype)
    for name, column in columns:
        table[name] = column
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(table)}"]
    header += [f"property {_PLY_TYPES[dtype[name].str[1:]]} {name}" for name, _ in columns]
    _write_bytes(path, ("\n".join([*header, "end_header"]) + "\n").encode() + table.tobytes())


def write_npy(path: Path, array: Any) -> None:
    import numpy as np

    with _atomic(path) as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)


def write_json(path: Path, value: Any) -> None:
    _write_bytes(path, json.dumps(value, indent=2, default=_json_default).encode())


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"expected JSON-serialisable data, got {type(value).__name__}")


WRITERS = {".png": write_png, ".ply": write_ply, ".npy": write_npy, ".json": write_json}


def write_artifact(path: Path, value: Any) -> int:
    """Write `value` by the file's extension; returns the bytes written."""
    writer = WRITERS.get(path.suffix.lower())
    if writer is None:
        raise ValueError(f"expected a file name ending in {sorted(WRITERS)}, got {path.name!r}")
    make_dirs(path.parent)
    writer(path, value)
    return path.stat().st_size


class _atomic:
    """Write to a temporary file, then rename: a reader never sees half a file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def __enter__(self):
        self._handle = open(self._temporary, "wb")
        return self._handle

    def __exit__(self, kind, error, traceback) -> None:
        self._handle.close()
        if kind is None:
            os.replace(self._temporary, self._path)
        else:
            self._temporary.unlink(missing_ok=True)


def _write_bytes(path: Path, data: bytes) -> None:
    with _atomic(path) as handle:
        handle.write(data)
