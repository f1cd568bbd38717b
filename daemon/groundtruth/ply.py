"""A PLY reader for point labels: every property type of the format, ascii and both binary
byte orders, any elements besides `vertex` (faces of a labelled mesh, say) skipped.

Open3D's tensor reader drops char, short, ushort and uint properties and refuses 64-bit
ones, which are exactly what label files use (ScanNet's labels are ushort, PCL exports
uint). This reads the vertex element as one numpy structured array (binary: a view of the
file's bytes, no per-point work), after checking the header's counts against the file's
size, so a header that lies costs an error, not memory.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_HEADER_BYTES = 64 * 1024
SCALARS = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
    "long": "i8",
    "int64": "i8",
    "ulong": "u8",
    "uint64": "u8",
}
FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}


class PlyError(ValueError):
    """A file that is not a PLY this reader can use; the message says why."""


@dataclass
class Element:
    name: str
    count: int
    scalars: list[tuple[str, str]] = field(default_factory=list)  # (name, numpy type code)
    lists: list[tuple[str, str, str]] = field(default_factory=list)  # (name, count type, item type)
    order: list[str] = field(default_factory=list)  # property names as the file has them


@dataclass
class Header:
    layout: str  # "" for ascii, else the byte order ("<" or ">")
    elements: list[Element]
    body_offset: int


def read_vertices(path: Path) -> tuple[np.ndarray, list[str]]:
    """The vertex element as a structured array (in the file's byte order), and notes on what
    was skipped (other elements). PlyError for anything unusable."""
    data = _mapped(path)
    header = parse_header(data)
    notes = [f"ignored the {e.name!r} element" for e in header.elements if e.name != "vertex" and e.count]
    offset = header.body_offset
    lines = _ascii_lines(data, header) if not header.layout else None
    row = 0
    for element in header.elements:
        if element.name == "vertex":
            if element.lists:
                raise PlyError(f"vertex property {element.lists[0][0]!r} is a list; expected scalar properties")
            if lines is not None:
                return _ascii_table(lines[row : row + element.count], element), notes
            return _binary_table(data, offset, element, header.layout), notes
        if lines is not None:
            row += element.count
        else:
            offset = _skip_binary(data, offset, element, header.layout)
    raise PlyError(f"no vertex element (elements: {', '.join(e.name for e in header.elements) or 'none'})")


def _mapped(path: Path) -> mmap.mmap | bytes:
    """The file's bytes, memory-mapped: a binary vertex table is then a view of the page
    cache, converted once where it is used (no copy of the file first)."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return b""
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def parse_header(data: bytes | mmap.mmap) -> Header:
    end = data.find(b"end_header", 0, MAX_HEADER_BYTES)
    if data[:3] != b"ply" or end < 0:
        raise PlyError("not a PLY file (no 'ply' magic or no end_header in the first 64 KiB)")
    newline = data.find(b"\n", end)
    body_offset = newline + 1 if newline >= 0 else len(data)
    layout, elements = None, []
    for number, raw in enumerate(data[:end].decode("ascii", "replace").splitlines()[1:], 2):
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) < 2 or words[1] not in FORMATS:
                raise PlyError(f"header line {number}: unknown format {raw.strip()!r}")
            layout = FORMATS[words[1]]
        elif words[0] == "element":
            elements.append(_element(words, number))
        elif words[0] == "property":
            if not elements:
                raise PlyError(f"header line {number}: a property before any element")
            _add_property(elements[-1], words, number)
        else:
            raise PlyError(f"header line {number}: unexpected {raw.strip()!r:.60}")
    if layout is None:
        raise PlyError("the header has no format line")
    return Header(layout, elements, body_offset)


def _element(words: list[str], number: int) -> Element:
    if len(words) != 3 or not words[2].isdigit():
        raise PlyError(f"header line {number}: expected 'element NAME COUNT' with COUNT >= 0, got {' '.join(words)!r}")
    return Element(words[1], int(words[2]))


def _add_property(element: Element, words: list[str], number: int) -> None:
    if len(words) == 5 and words[1] == "list" and words[2] in SCALARS and words[3] in SCALARS:
        element.lists.append((words[4], SCALARS[words[2]], SCALARS[words[3]]))
    elif len(words) == 3 and words[1] in SCALARS:
        element.scalars.append((words[2], SCALARS[words[1]]))
    else:
        raise PlyError(f"header line {number}: unsupported property {' '.join(words[1:])!r}")
    element.order.append(words[-1])


def _binary_table(data: bytes, offset: int, element: Element, order: str) -> np.ndarray:
    dtype = np.dtype([(name, order + code) for name, code in element.scalars])
    needed = element.count * dtype.itemsize
    if needed > max(len(data) - offset, 0):
        raise PlyError(
            f"the header declares {element.count:,} vertices ({needed:,} bytes) but only "
            f"{max(len(data) - offset, 0):,} bytes follow it (truncated, or the header lies)"
        )
    return np.frombuffer(data, dtype, count=element.count, offset=offset)  # a view: converted as used


def _skip_binary(data: bytes, offset: int, element: Element, order: str) -> int:
    """The offset just past `element` (walked item by item when it has list properties)."""
    scalar_bytes = sum(np.dtype(code).itemsize for _, code in element.scalars)
    if not element.lists:
        return offset + element.count * scalar_bytes
    properties = {name: (code,) for name, code in element.scalars} | {n: (c, i) for n, c, i in element.lists}
    for _ in range(element.count):
        for name in element.order:
            codes = properties[name]
            if len(codes) == 1:
                offset += np.dtype(codes[0]).itemsize
                continue
            count_type = np.dtype(order + codes[0])
            if offset + count_type.itemsize > len(data):
                raise PlyError(f"element {element.name!r} runs past the end of the file")
            length = int(np.frombuffer(data, count_type, count=1, offset=offset)[0])
            offset += count_type.itemsize + length * np.dtype(codes[1]).itemsize
    return offset


def _ascii_lines(data: bytes, header: Header) -> list[bytes]:
    lines = [line for line in data[header.body_offset :].splitlines() if line.strip()]
    declared = sum(element.count for element in header.elements)
    if declared > len(lines):
        raise PlyError(f"the header declares {declared:,} rows but the body has {len(lines):,} (truncated?)")
    return lines


def _ascii_table(lines: list[bytes], element: Element) -> np.ndarray:
    dtype = np.dtype(element.scalars)
    if not lines:
        return np.zeros(0, dtype)
    try:
        return np.loadtxt([line.decode("ascii", "replace") for line in lines], dtype=dtype, ndmin=1)
    except ValueError as error:
        raise PlyError(f"vertex rows do not match the header ({error})") from None
