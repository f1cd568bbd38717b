"""The failure gallery's thumbnails: one small JPEG per failure case, made on demand from what
the Case page shows (boxes drawn by outcome on the input, the mask difference laid over the
input, the cloud seen from above coloured by mismatch, a plain tile for a crash) and kept in a
bounded in-memory cache. In memory, not on disk: the dashboard never writes to the home, and a
thumbnail costs milliseconds to make again after a restart.
"""

from __future__ import annotations

import io
import textwrap
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from stagewatch.daemon.projection._outcomes import CRASHED, FAILED
from stagewatch.ui import _failures
from stagewatch.ui._overlay import BOX_OUTCOMES, blend

THUMBNAIL_SIDE = 160  # pixels: the longer side of a thumbnail
CACHE_ENTRIES = 2048  # thumbnails kept (a few KB each): about 100 gallery pages
_GREY = (217, 217, 217)
_CRASH_RED = (214, 39, 40)


class ThumbnailCache:
    """A least-recently-used map of case key -> JPEG bytes, safe across the server's threads.
    One per dashboard process: thumbnails are pure functions of the home's files, the same for
    every session, so sharing them leaks nothing between sessions and bounds the memory once."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self.entries = entries
        self._stored: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.made = 0  # thumbnails drawn (not found in the cache): what a warm page avoids

    def get(self, key: tuple[Any, ...], make: Any) -> bytes:
        with self._lock:
            if key in self._stored:
                self._stored.move_to_end(key)
                return self._stored[key]
        made = make()
        with self._lock:
            self.made += 1
            self._stored[key] = made
            while len(self._stored) > self.entries:
                self._stored.popitem(last=False)
        return made

    def holds(self, key: tuple[Any, ...]) -> bool:
        with self._lock:
            return key in self._stored

    def __len__(self) -> int:
        return len(self._stored)


THUMBNAILS = ThumbnailCache()


def case_key(home: Path, row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a thumbnail: the case, and its judgement (a re-judged case gets a new one)."""
    return (str(home), row["run_id"], row["stage"], row.get("sample_id"), row["status"], str(row.get("time")))


def thumbnails(home: Path, rows: list[dict[str, Any]], cache: ThumbnailCache = THUMBNAILS) -> list[bytes]:
    """The JPEG thumbnails of a page of failure cases (rows of `failures_page`), in their order:
    those not cached are drawn from one read of their cases."""
    missing = [_key_of(row) for row in rows if not cache.holds(case_key(home, row))]
    cases = _failures.case_rows_of(home, missing)
    return [
        cache.get(case_key(home, row), lambda row=row: _jpeg(_picture(home, row, cases.get(_key_of(row)))))
        for row in rows
    ]


def _key_of(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["run_id"], row["stage"], row.get("sample_id") or "")


def _picture(home: Path, row: dict[str, Any], case: dict[str, Any] | None) -> np.ndarray:
    try:
        return _case_picture(home, row, case)
    except Exception as error:  # one case's damaged files must not blank the gallery: its tile says why
        return _tile(f"no picture: {type(error).__name__}: {error}", _GREY)


def _case_picture(home: Path, row: dict[str, Any], case: dict[str, Any] | None) -> np.ndarray:
    if row["status"] in (FAILED, CRASHED):  # a stage that raised or whose process was lost: no picture
        return _tile(str(row.get("reason") or row["status"]), _CRASH_RED)
    if case is None:
        return _tile("case not found", _GREY)
    found = _failures.case_pictures(home, case)
    if found["kind"] == "boxes":
        return boxes_picture(found["image"], found["boxes"], found.get("size"))
    if found["kind"] == "mask":
        arrays = found["arrays"]
        return mask_picture(found.get("image"), found["pictures"][2][1], arrays["predicted"], arrays["truth"])
    if found["kind"] == "points":
        return _content(found["pictures"][2][1])  # label mismatch in red, seen from above
    if found["kind"] == "distances":
        return _content(found["pictures"][0][1])  # distance to the ground truth, seen from above
    return _tile(found.get("problem") or "no picture", _GREY)


def boxes_picture(
    image: np.ndarray | None, boxes: dict[str, list[list[Any]]], size: tuple[int, int] | None
) -> np.ndarray:
    """The input scaled to a thumbnail with every judged box in its outcome's colour (ground
    truth thin, predictions thick; boxes below the score threshold left out)."""
    height, width = size or (image.shape[:2] if image is not None else (THUMBNAIL_SIDE * 3 // 4, THUMBNAIL_SIDE))
    scale = THUMBNAIL_SIDE / max(height, width, 1)
    shape = (max(round(width * scale), 1), max(round(height * scale), 1))
    base = Image.fromarray(image).resize(shape, Image.BILINEAR) if image is not None else Image.new("RGB", shape, _GREY)
    draw = ImageDraw.Draw(base)
    drawn = [(b[:4], b[5], 1) for b in boxes["truth"]]
    drawn += [(b[:4], b[6], 2) for b in boxes["predicted"] if b[6] != "below_threshold"]
    for box, outcome, line in drawn:
        x, y, w, h = (float(v) * scale for v in box)
        colour = BOX_OUTCOMES.get(outcome, ("#000000", ""))[0]
        draw.rectangle([x, y, x + max(w, 1), y + max(h, 1)], outline=colour, width=line)
    return np.asarray(base)


def mask_picture(
    image: np.ndarray | None, difference: np.ndarray, predicted: np.ndarray, truth: np.ndarray
) -> np.ndarray:
    """The mask difference (true positive green, false positive red, false negative blue) laid
    over the input where either mask has a class; the difference alone without an input."""
    if image is None or image.shape[:2] != difference.shape[:2]:
        return difference
    return blend(image, difference, 0.55, keep=(np.asarray(predicted) != 0) | (np.asarray(truth) != 0))


def _content(picture: np.ndarray) -> np.ndarray:
    """A cloud from above cut to where most of its points are (a street's sweep is long and narrow,
    with a few returns far off through gaps: the square picture would leave it a thin strip)."""
    rows, columns = np.nonzero((picture < 250).any(axis=2))
    if len(rows) < 10:
        return picture
    (top, bottom), (left, right) = (np.percentile(v, [4, 96]).astype(int) for v in (rows, columns))
    wide = round((bottom - top + 1) * 4 / 3)  # a thumbnail's shape, around where most points are
    if right - left + 1 > wide:
        middle = int(np.median(columns))
        left, right = max(middle - wide // 2, 0), min(middle + wide // 2, picture.shape[1] - 1)
    return picture[top : bottom + 1, left : right + 1]


def _tile(text: str, colour: tuple[int, int, int]) -> np.ndarray:
    """A plain thumbnail saying what happened (a crash has no picture)."""
    tile = Image.new("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE * 3 // 4), (245, 245, 245))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, 0, tile.width - 1, tile.height - 1], outline=colour, width=3)
    for line, words in enumerate(textwrap.wrap(text, 24, break_long_words=True)[:6]):  # whole words a line
        draw.text((8, 8 + 14 * line), words, fill=(40, 40, 40))
    return np.asarray(tile)


def _jpeg(picture: np.ndarray) -> bytes:
    image = Image.fromarray(np.ascontiguousarray(picture))
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=80)
    return out.getvalue()
