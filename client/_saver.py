"""Encoders for stage outputs: images as PNG, point clouds as PLY, arrays as NPY, JSON.

numpy is imported only when something is saved, so `import stagewatch` stays light. PNG
and PLY are written here (zlib and numpy suffice); the PLY layout is the one Open3D's
tensor I/O and plyfile read back, per-point attributes included: integer attributes are
written as int32 when their values fit (Open3D drops char, short, ushort, uint and 64-bit
properties), and one that does not fit is left out with a warning, recorded with the
artifact in the audit trail.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from stagewatch._shared import make_dirs

PNG_COMPRESSION_LEVEL = 3  # level 3 is within 10% of level 9's size at a fraction of the time


def write_png(path: Path, image: Any) -> list[str]:
    """Write an HxW (grey) or HxWx3/HxWx4 uint8 or uint16 array as PNG."""
    return _write(path, _png, image)


def _png(handle: BinaryIO, image: Any) -> list[str]:
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
    handle.write(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, PNG_COMPRESSION_LEVEL))
        + _png_chunk(b"IEND", b"")
    )
    return []


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_PLY_TYPES = {"f4": "float", "f8": "double", "i4": "int", "u1": "uchar"}  # what Open3D's PLY reader keeps
_INT32 = (-(2**31), 2**31 - 1)


class Written(NamedTuple):
    bytes: int
    warnings: list[str]  # what could not be kept as given (recorded with the artifact)
    name: str  # the file name written: the one asked for, or the first free one offered


def _point_attributes(cloud: Any) -> dict[str, Any]:
    """{'points': Nx3, 'colors'?: Nx3, 'normals'?: Nx3, other per-point attributes: N} from
    an Nx3 array, a dict of arrays, or an Open3D point cloud (legacy or tensor)."""
    import numpy as np

    if isinstance(cloud, dict):
        attributes = {name: np.asarray(value) for name, value in cloud.items()}
    elif hasattr(cloud, "point"):  # open3d.t.geometry.PointCloud
        others = {name: cloud.point[name].numpy() for name in cloud.point if name != "positions"}
        attributes = {"points": cloud.point["positions"].numpy(), **others}
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


def _ply_column(name: str, value: Any) -> tuple[Any, str | None]:
    """`value` as a type Open3D's PLY reader keeps (uchar, int, float, double), converted
    without loss; (None, why) when that cannot be done."""
    import numpy as np

    kind = value.dtype.kind
    if kind == "b":
        return value.astype(np.uint8), None
    if kind in "iu" and value.dtype.str[1:] not in _PLY_TYPES:
        low, high = (int(value.min()), int(value.max())) if value.size else (0, 0)
        if _INT32[0] <= low and high <= _INT32[1]:
            return value.astype(np.int32), None  # char, short, ushort, uint, 64-bit: Open3D drops them
        return None, f"point attribute {name!r} ({value.dtype}, values {low}..{high}) does not fit in int32: not saved"
    if kind == "f" and value.dtype.itemsize < 4:
        return value.astype(np.float32), None
    if value.dtype.str[1:] not in _PLY_TYPES:
        return None, f"point attribute {name!r} has dtype {value.dtype}, not a number PLY keeps: not saved"
    return value, None


def _ply_columns(attributes: dict[str, Any]) -> tuple[list[tuple[str, Any]], list[str]]:
    """(property name, 1-D column) pairs in the order Open3D writes them, and what was left out."""
    import numpy as np

    count = len(attributes["points"])
    columns: list[tuple[str, Any]] = []
    warnings: list[str] = []
    triples = {"points": ("x", "y", "z"), "normals": ("nx", "ny", "nz"), "colors": ("red", "green", "blue")}
    for name, value in attributes.items():
        if len(value) != count:
            raise ValueError(f"expected {count} values for point attribute {name!r}, got {len(value)}")
        if value.ndim == 2 and value.shape[1] == 1:
            value = value[:, 0]  # an Open3D tensor attribute is (N, 1): keep its name
        if name == "colors" and value.dtype.kind == "f":
            value = np.clip(np.round(value * 255), 0, 255).astype(np.uint8)  # Open3D's convention
        value, problem = _ply_column(name, value)
        if problem is not None:
            warnings.append(problem)
            continue
        names = triples.get(name)
        if names is None:
            names = (name,) if value.ndim == 1 else tuple(f"{name}_{i}" for i in range(value.shape[1]))
        value = value.reshape(count, math.prod(value.shape[1:]))  # not (count, -1): ambiguous for 0 points
        columns.extend((prop, value[:, i]) for i, prop in enumerate(names))
    return columns, warnings


def write_ply(path: Path, cloud: Any) -> list[str]:
    """Write a point cloud as binary little-endian PLY with every per-point attribute that
    Open3D and plyfile read back as given; returns what could not be kept."""
    return _write(path, _ply, cloud)


def _ply(handle: BinaryIO, cloud: Any) -> list[str]:
    import numpy as np

    columns, warnings = _ply_columns(_point_attributes(cloud))
    dtype = np.dtype([(name, column.dtype.newbyteorder("<")) for name, column in columns])
    table = np.empty(len(columns[0][1]), dtype)  # 0 rows is a valid PLY: a frame whose points were all filtered out
    for name, column in columns:
        table[name] = column
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(table)}"]
    header += [f"property {_PLY_TYPES[dtype[name].str[1:]]} {name}" for name, _ in columns]
    handle.write(("\n".join([*header, "end_header"]) + "\n").encode() + table.tobytes())
    return warnings


def write_npy(path: Path, array: Any) -> list[str]:
    return _write(path, _npy, array)


def _npy(handle: BinaryIO, array: Any) -> list[str]:
    import numpy as np

    np.save(handle, np.asarray(array), allow_pickle=False)
    return []


def write_json(path: Path, value: Any) -> list[str]:
    """Strict JSON (RFC 8259 has no NaN or Infinity, and most parsers refuse Python's bare
    `NaN`): each non-finite number is written as null, and the warning says how many and where."""
    return _write(path, _json, value)


def _json(handle: BinaryIO, value: Any) -> list[str]:
    nulled = _Nulled()
    try:
        finite = _finite_json(value, "$", nulled)
    except RecursionError:
        raise ValueError("expected JSON data without cycles and nested less than Python's recursion limit") from None
    handle.write(json.dumps(finite, indent=2, allow_nan=False).encode())
    if not nulled.count:
        return []
    shown = ", ".join(nulled.places) + (", ..." if nulled.count > len(nulled.places) else "")
    return [f"{nulled.count} non-finite number(s) (NaN, inf) written as null, at {shown}"]


MAX_NULLED_SHOWN = 5  # places named in the warning; the count covers them all


class _Nulled:
    """How many non-finite numbers became null, and where the first few were."""

    def __init__(self) -> None:
        self.count = 0
        self.places: list[str] = []

    def add(self, where: str) -> None:
        self.count += 1
        if len(self.places) < MAX_NULLED_SHOWN:
            self.places.append(where)


def _finite_json(value: Any, where: str, nulled: _Nulled) -> Any:
    """`value` as plain JSON data (numpy arrays and scalars as lists and numbers), with every
    NaN and infinity as None, counted in `nulled` with its place (`$.boxes[2][0]`)."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # numpy arrays and scalars
        if _all_finite(value):
            return value.tolist()  # a big array needs no walk through its items
        value = value.tolist()
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        nulled.add(where)
        return None
    if isinstance(value, dict):
        return {_json_key(key): _finite_json(item, f"{where}.{key}", nulled) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(item, f"{where}[{index}]", nulled) for index, item in enumerate(value)]
    if value is None or isinstance(value, str | int):  # bool is an int
        return value
    raise TypeError(f"expected JSON-serialisable data, got {type(value).__name__}")


def _all_finite(array: Any) -> bool:
    """Whether a numpy array or scalar holds only integers, booleans or finite floats."""
    kind = getattr(getattr(array, "dtype", None), "kind", None)
    if kind in ("b", "i", "u"):
        return True
    if kind == "f":
        import numpy as np

        return bool(np.isfinite(array).all())
    return False


def _json_key(key: Any) -> Any:
    """A NaN or infinite float key as its name ("nan", "inf"): JSON keys are strings anyway."""
    return str(key) if isinstance(key, float) and not math.isfinite(key) else key


ENCODERS = {".png": _png, ".ply": _ply, ".npy": _npy, ".json": _json}
# link(2) refused by the file system itself (FAT, exFAT, some network shares), not by a full or read-only disk
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def write_artifact(path: Path, value: Any, other_names: Iterable[str] = ()) -> Written:
    """Write `value` by the file's extension, never over a file already there: where `path` is
    taken, under the first free name of `other_names` (in the same folder); FileExistsError
    when all are taken. Another process or thread saving the same name at the same time gets
    a name of its own too: the name is claimed by link(2), which fails when it is taken.
    Returns the bytes written, what could not be kept as given, and the name written."""
    encode = ENCODERS.get(path.suffix.lower())
    if encode is None:
        raise ValueError(f"expected a file name ending in {sorted(ENCODERS)}, got {path.name!r}")
    make_dirs(path.parent)
    temporary = _temporary(path)
    try:
        with open(temporary, "wb") as handle:
            warnings = encode(handle, value)
            size = handle.tell()
        name = _claim(temporary, path, other_names)
    finally:
        temporary.unlink(missing_ok=True)
    return Written(size, warnings, name)


def _claim(temporary: Path, path: Path, other_names: Iterable[str]) -> str:
    """Give the written `temporary` the first free name of `path` and `other_names`; the name."""
    for name in itertools.chain((path.name,), other_names):
        try:
            _link(temporary, path.with_name(name))
        except FileExistsError:
            continue
        return name
    raise FileExistsError(errno.EEXIST, "every name offered is taken", str(path))


def _link(temporary: Path, final: Path) -> None:
    """A second name for `temporary`, FileExistsError if it is taken. Where the file system has
    no hard links, the name is claimed by creating it (O_EXCL), and the data renamed over it."""
    try:
        os.link(temporary, final)
        return
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
    os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        os.replace(temporary, final)
    except OSError:
        final.unlink(missing_ok=True)
        raise


def _temporary(path: Path) -> Path:
    """Beside `path`, of this process and thread: two threads saving one name write apart."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


class _atomic:
    """Write to a temporary file, then rename: a reader never sees half a file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._temporary = _temporary(path)

    def __enter__(self) -> BinaryIO:
        self._handle = open(self._temporary, "wb")
        return self._handle

    def __exit__(self, kind, error, traceback) -> None:
        self._handle.close()
        if kind is None:
            os.replace(self._temporary, self._path)
        else:
            self._temporary.unlink(missing_ok=True)


def _write(path: Path, encode: Callable[[BinaryIO, Any], list[str]], value: Any) -> list[str]:
    """Write `value` to `path` (replacing what is there) by `encode`; what could not be kept."""
    with _atomic(path) as handle:
        return encode(handle, value)
