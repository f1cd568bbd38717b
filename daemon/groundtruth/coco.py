"""COCO detection evaluation: the 12 summary numbers, computed one image at a time.

`CocoEvaluator.update()` evaluates one image (matching per category, area range and IoU
threshold) and keeps only the small per-image result; `compute()` accumulates them.
So the live worker pays per sample as it arrives, and a final compute equals a batch run.

The semantics are pycocotools' COCOeval (tests compare every number to 1e-9): greedy
matching in score order, best IoU wins with ties going to the later ground truth,
non-ignored ground truth before ignored, crowd boxes matched by intersection over the
detection's area and reusable, at most 100 detections per image and category, the
101-point interpolated precision. Two deliberate differences: an annotation id of 0
counts as a match (pycocotools reads it as "unmatched"), and the matching loop runs over
all IoU thresholds and area ranges at once in numpy rather than one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stagewatch.daemon.groundtruth.iou import box_iou

# The same expressions as pycocotools' Params, so the thresholds are bit-identical.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = (1, 10, 100)
# A segmentation is rasterized within its image, and pycocotools allocates along a polygon's
# outline: an image of 1e300 pixels or a vertex at 1e300 took the whole machine's memory
# (found by the fuzz suite, which the OOM killer ended). Bigger or farther is refused.
MAX_IMAGE_SIDE = 1 << 16  # pixels
AREA_RANGES = {"all": (0.0, 1e5**2), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e5**2)}
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

_AREA_LOW = np.array([low for low, _ in AREA_RANGES.values()])
_AREA_HIGH = np.array([high for _, high in AREA_RANGES.values()])
_ROWS = len(AREA_RANGES) * len(IOU_THRESHOLDS)  # one matching row per (area range, IoU threshold)
_ROW_THRESHOLD = np.tile(np.minimum(IOU_THRESHOLDS, 1 - 1e-10), len(AREA_RANGES))
_ROW_AREA = np.repeat(np.arange(len(AREA_RANGES)), len(IOU_THRESHOLDS))


class CocoFormatError(ValueError):
    """A COCO file or detection list that cannot be evaluated; the message says what and where."""


@dataclass(frozen=True)
class Objects:
    """One image's annotations (or detections), all categories, as arrays."""

    categories: np.ndarray  # (N,) int
    boxes: np.ndarray  # (N, 4) xywh, float64
    areas: np.ndarray  # (N,)
    crowd: np.ndarray  # (N,) bool; always False for detections
    scores: np.ndarray  # (N,); ones for ground truth
    masks: list[Any] | None = None  # RLEs when evaluating segmentation

    @staticmethod
    def empty() -> Objects:
        return Objects(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0, bool), np.zeros(0))

    def __len__(self) -> int:
        return len(self.areas)

    def take(self, index: np.ndarray) -> Objects:
        masks = [self.masks[i] for i in index] if self.masks is not None else None
        return Objects(
            self.categories[index], self.boxes[index], self.areas[index], self.crowd[index], self.scores[index], masks
        )


@dataclass(frozen=True)
class ImageResult:
    """What accumulation needs of one image: pycocotools' evalImgs, every category and area range."""

    categories: np.ndarray  # (D,) detections, by category then descending score, at most 100 a category
    scores: np.ndarray  # (D,)
    rank: np.ndarray  # (D,) position within its category
    matched: np.ndarray  # (A, T, D) bool
    ignored: np.ndarray  # (A, T, D) bool
    gt_categories: np.ndarray  # (G,)
    gt_counted: np.ndarray  # (A, G) bool: ground truth that is not ignored in that area range


def sort_detections(dt: Objects) -> tuple[Objects, np.ndarray]:
    """Detections by category, then descending score (stable), cut to 100 a category; and their rank."""
    order = np.lexsort((-dt.scores, dt.categories))
    dt = dt.take(order)
    starts = np.r_[0, np.flatnonzero(np.diff(dt.categories)) + 1] if len(dt) else np.zeros(0, np.int64)
    rank = np.arange(len(dt)) - np.repeat(starts, np.diff(np.r_[starts, len(dt)]))
    keep = rank < MAX_DETECTIONS[-1]
    return dt.take(np.flatnonzero(keep)), rank[keep]


def match_image(gt: Objects, dt: Objects, rank: np.ndarray, ious: np.ndarray | None = None) -> ImageResult:
    """Match one image's detections to its ground truth, category by category, as COCOeval does.

    `dt` and `rank` come from sort_detections; `ious` is (D, G) and defaults to box IoU. Pairs of
    different categories get IoU 0, so one pass over the image serves every category.
    """
    if ious is None:
        ious = box_iou(dt.boxes, gt.boxes, gt.crowd)
    ious = np.where(dt.categories[:, None] == gt.categories[None, :], ious, 0.0)
    gt_ignored = gt.crowd[None, :] | _outside_area_ranges(gt.areas)  # (A, G)
    row_ignored = gt_ignored[_ROW_AREA]  # (R, G)
    match = np.full((_ROWS, len(dt)), -1)
    if len(gt) and len(dt):
        _greedy_match(ious, gt.crowd, row_ignored, match)
    matched = match >= 0
    ignored = np.zeros((_ROWS, len(dt)), bool)
    rows, columns = np.nonzero(matched)
    ignored[rows, columns] = row_ignored[rows, match[rows, columns]]
    ignored |= ~matched & _outside_area_ranges(dt.areas)[_ROW_AREA]
    shape = (len(AREA_RANGES), len(IOU_THRESHOLDS), len(dt))
    return ImageResult(
        dt.categories, dt.scores, rank, matched.reshape(shape), ignored.reshape(shape), gt.categories, ~gt_ignored
    )


def _outside_area_ranges(areas: np.ndarray) -> np.ndarray:
    return (areas[None, :] < _AREA_LOW[:, None]) | (areas[None, :] > _AREA_HIGH[:, None])


def _greedy_match(ious: np.ndarray, crowd: np.ndarray, row_ignored: np.ndarray, match: np.ndarray) -> None:
    """Fill match[row, d] with the index of the ground truth detection d takes, in score order."""
    available = np.ones(row_ignored.shape, bool)
    gt_count = ious.shape[1]
    by_kind = np.stack([~row_ignored, row_ignored])  # COCOeval tries non-ignored ground truth first
    for d in np.nonzero(ious.max(axis=1) >= IOU_THRESHOLDS[0])[0]:  # others match nothing anywhere
        candidates = available & (ious[d][None, :] >= _ROW_THRESHOLD[:, None])
        allowed = by_kind & candidates[None]  # (2, R, G)
        values = np.where(allowed, ious[d], -1.0)
        best = gt_count - 1 - values[:, :, ::-1].argmax(axis=2)  # the best; ties go to the later one
        found = allowed.any(axis=2)
        chosen = np.where(found[0], best[0], np.where(found[1], best[1], -1))
        rows = np.nonzero(chosen >= 0)[0]
        taken = chosen[rows]
        match[rows, d] = taken
        keep = crowd[taken]  # crowd ground truth can be matched again
        available[rows[~keep], taken[~keep]] = False


class CocoEvaluator:
    """Streaming COCO evaluation: `update(image_id, gt, dt)` per image, `compute()` at any time.

    `categories` are the dataset's category ids (pycocotools evaluates every category of
    the ground-truth file, with or without annotations); objects of other categories are
    skipped, as COCOeval does. Image ids must sort (ties in score resolve in image order).
    Updating an image again replaces its result.
    """

    def __init__(self, categories: Iterable[int], iou_type: str = "bbox") -> None:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
        self.categories = np.array(sorted(set(categories)), dtype=np.int64)
        self.iou_type = iou_type
        self._results: dict[Any, ImageResult] = {}

    def update(self, image_id: Any, gt: Objects, dt: Objects) -> ImageResult:
        gt = gt.take(np.flatnonzero(np.isin(gt.categories, self.categories)))
        dt, rank = sort_detections(dt.take(np.flatnonzero(np.isin(dt.categories, self.categories))))
        ious = None
        if self.iou_type == "segm" and len(gt) and len(dt):
            ious = np.asarray(_mask_utils().iou(dt.masks, gt.masks, [int(c) for c in gt.crowd]), dtype=float)
        self._results[image_id] = result = match_image(gt, dt, rank, ious)
        return result

    def forget(self, image_id: Any) -> None:
        self._results.pop(image_id, None)

    def __len__(self) -> int:
        return len(self._results)

    def accumulate(self) -> tuple[np.ndarray, np.ndarray]:
        """precision (T, R, K, A, M) and recall (T, K, A, M), -1 where a category has no ground truth."""
        shape = (len(IOU_THRESHOLDS), len(self.categories), len(AREA_RANGES), len(MAX_DETECTIONS))
        precision = -np.ones((shape[0], len(RECALL_THRESHOLDS), *shape[1:]))
        recall = -np.ones(shape)
        results = [self._results[key] for key in sorted(self._results)]
        if not results:
            return precision, recall
        category = np.searchsorted(self.categories, np.concatenate([r.categories for r in results]))
        scores = np.concatenate([r.scores for r in results])
        rank = np.concatenate([r.rank for r in results])
        matched = np.concatenate([r.matched for r in results], axis=2)
        ignored = np.concatenate([r.ignored for r in results], axis=2)
        gt_category = np.searchsorted(self.categories, np.concatenate([r.gt_categories for r in results]))
        gt_counted = np.concatenate([r.gt_counted for r in results], axis=1)
        ground_truth = np.stack(
            [
                np.bincount(gt_category, weights=gt_counted[a], minlength=len(self.categories))
                for a in range(len(AREA_RANGES))
            ]
        )
        for m, max_detections in enumerate(MAX_DETECTIONS):
            kept = np.flatnonzero(rank < max_detections)
            # Stable: within a category, equal scores keep image order, as COCOeval's mergesort does.
            kept = kept[np.lexsort((-scores[kept], category[kept]))]
            bounds = np.searchsorted(category[kept], np.arange(len(self.categories) + 1))
            for k in np.flatnonzero(ground_truth.any(axis=0)):
                segment = kept[bounds[k] : bounds[k + 1]]
                areas = np.flatnonzero(ground_truth[:, k] > 0)
                curves = _precision_recall(
                    matched[areas][:, :, segment], ignored[areas][:, :, segment], ground_truth[areas, k]
                )
                precision[:, :, k, areas, m] = curves[0].transpose(1, 2, 0)
                recall[:, k, areas, m] = curves[1].T
        return precision, recall

    def compute(self) -> dict[str, float]:
        """The 12 COCO summary numbers (-1 where undefined, as pycocotools prints)."""
        return summarize(*self.accumulate())

    def compute_with_categories(self) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
        """The 12 summary numbers and, per category id, its AP, AP50 and AR100 (one accumulation)."""
        precision, recall = self.accumulate()
        return summarize(precision, recall), per_category(precision, recall, self.categories)


def _precision_recall(matched: np.ndarray, ignored: np.ndarray, ground_truth: np.ndarray) -> tuple[np.ndarray, ...]:
    """COCOeval's accumulate for one category: (a, T, N) matches in score order → (a, T, R), (a, T)."""
    areas, thresholds, detections = matched.shape
    if not detections:
        return np.zeros((areas, thresholds, len(RECALL_THRESHOLDS))), np.zeros((areas, thresholds))
    true_positives = np.cumsum(matched & ~ignored, axis=2)
    false_positives = np.cumsum(~matched & ~ignored, axis=2)
    recall_curve = true_positives / ground_truth[:, None, None]
    precision_curve = true_positives / (false_positives + true_positives + np.spacing(1))
    # Interpolated precision: the best precision at this recall or any higher one.
    envelope = np.maximum.accumulate(precision_curve[:, :, ::-1], axis=2)[:, :, ::-1]
    # COCOeval's searchsorted(recall, thresholds) per row, done at once on integers: recall
    # reaches a threshold exactly when the true-positive count reaches the smallest j with
    # j / ground_truth >= threshold (the same float division), and rows are laid end to end.
    needed = np.stack([np.searchsorted(np.arange(g + 1) / g, RECALL_THRESHOLDS, side="left") for g in ground_truth])
    row = np.arange(areas * thresholds).reshape(areas, thresholds, 1)
    base = row * (int(ground_truth.max()) + 1)
    found = np.searchsorted((true_positives + base).ravel(), (needed[:, None, :] + base).ravel(), side="left")
    index = found.reshape(areas, thresholds, -1) - row * detections
    valid = index < detections
    precision = np.where(valid, np.take_along_axis(envelope, np.minimum(index, detections - 1), axis=2), 0.0)
    return precision, recall_curve[:, :, -1]


CATEGORY_STAT_NAMES = ("AP", "AP50", "AR100")


def per_category(precision: np.ndarray, recall: np.ndarray, categories: np.ndarray) -> dict[int, dict[str, float]]:
    """Per category, what pycocotools' summarize gives when its precision and recall arrays are cut
    to that category: AP (IoU .50:.95), AP50 and AR100, area "all", 100 detections (-1 where the
    category has no ground truth)."""
    area, most = list(AREA_RANGES).index("all"), MAX_DETECTIONS.index(100)

    def mean(values: np.ndarray) -> float:
        defined = values[values > -1]
        return float(np.mean(defined)) if defined.size else -1.0

    return {
        int(category): {
            "AP": mean(precision[:, :, k, area, most]),
            "AP50": mean(precision[0, :, k, area, most]),
            "AR100": mean(recall[:, k, area, most]),
        }
        for k, category in enumerate(categories)
    }


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    areas = list(AREA_RANGES)

    def mean(values: np.ndarray) -> float:
        defined = values[values > -1]
        return float(np.mean(defined)) if defined.size else -1.0

    def ap(iou: float | None = None, area: str = "all") -> float:
        selected = precision if iou is None else precision[np.where(iou == IOU_THRESHOLDS)[0]]
        return mean(selected[:, :, :, areas.index(area), MAX_DETECTIONS.index(100)])

    def ar(max_detections: int = 100, area: str = "all") -> float:
        return mean(recall[:, :, areas.index(area), MAX_DETECTIONS.index(max_detections)])

    values = (
        ap(),
        ap(0.5),
        ap(0.75),
        ap(area="small"),
        ap(area="medium"),
        ap(area="large"),
        ar(1),
        ar(10),
        ar(100),
        ar(area="small"),
        ar(area="medium"),
        ar(area="large"),
    )
    return dict(zip(STAT_NAMES, values, strict=True))


# -- COCO files --------------------------------------------------------------------------------
@dataclass
class CocoGroundTruth:
    """A COCO annotation file: images by id, category names by id, objects per image."""

    images: dict[int, dict[str, Any]]
    categories: dict[int, str]
    objects: dict[int, Objects]

    def image_by_name(self) -> dict[str, int]:
        """Image id by file name and by file-name stem (how samples refer to images)."""
        names: dict[str, int] = {}
        for image_id, image in self.images.items():
            name = str(image.get("file_name", ""))
            names[name] = image_id
            names.setdefault(name.rsplit("/", 1)[-1].rsplit(".", 1)[0], image_id)
        return names


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CocoFormatError(message)


def _check_item(item: Any, where: str, keys: Sequence[str]) -> None:
    """The slow, precise check of one entry: run only to say which entry is wrong and how."""
    _require(isinstance(item, dict), f"{where}: expected an object")
    missing = [key for key in keys if key not in item]
    _require(not missing, f"{where}: missing {', '.join(missing)}")
    for key in ("image_id", "category_id", "id"):
        _require(key not in item or type(item[key]) is int, f"{where}.{key}: expected an integer")
    if "score" in keys:
        score = item["score"]
        _require(type(score) in (int, float) and np.isfinite(score), f"{where}.score: expected a finite number")
    bbox = item.get("bbox")
    if bbox is not None:
        numbers = isinstance(bbox, list) and len(bbox) == 4 and all(type(v) in (int, float) for v in bbox)
        _require(numbers, f"{where}.bbox: expected 4 numbers [x, y, width, height], got {bbox!r:.80}")
        _require(
            all(np.isfinite(bbox)) and bbox[2] >= 0 and bbox[3] >= 0,
            f"{where}.bbox: width and height must be finite and >= 0, got {bbox!r:.80}",
        )


def _columns(items: Any, where: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """image_id, category_id, bbox (and score) of every entry as arrays, validated.

    The fast path converts whole columns with numpy; on any doubt it walks the entries
    one by one so that the error names the first bad one.
    """
    _require(isinstance(items, list), f"{where}: expected a list")
    if not items:
        empty = {"image_id": np.zeros(0, np.int64), "category_id": np.zeros(0, np.int64), "bbox": np.zeros((0, 4))}
        return empty | ({"score": np.zeros(0)} if "score" in keys else {})
    try:
        columns = {key: np.array([item[key] for item in items]) for key in ("image_id", "category_id")}
        boxes = [item.get("bbox") for item in items]
        columns["bbox"] = np.array([[0, 0, 0, 0] if box is None else box for box in boxes])
        if "score" in keys:
            columns["score"] = np.array([item["score"] for item in items])
        good = all(column.dtype.kind in "iuf" for column in columns.values())
        good = good and all(column.dtype.kind in "iu" for key, column in columns.items() if key.endswith("_id"))
        good = good and all(np.isfinite(column).all() for column in columns.values())
        good = good and columns["bbox"].shape == (len(items), 4) and bool((columns["bbox"][:, 2:] >= 0).all())
        if good and all(type(item) is dict and all(key in item for key in keys) for item in items):
            return columns
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    for index, item in enumerate(items):
        _check_item(item, f"{where}[{index}]", keys)
    raise CocoFormatError(f"{where}: entries of mixed or wrong types")


def _by_image(image_ids: np.ndarray, objects: Objects) -> dict[int, Objects]:
    order = np.argsort(image_ids, kind="stable")
    sorted_ids = image_ids[order]
    if not len(order):
        return {}
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    ends = [*starts[1:], len(order)]
    return {int(sorted_ids[a]): objects.take(order[a:b]) for a, b in zip(starts, ends, strict=True)}


# What pycocotools does with an id used twice, said in the refusal: each leaves wrong numbers, silently.
_DUPLICATE_EFFECT = {
    "categories": ("category", "pycocotools would keep only the last one's name, silently"),
    "images": ("image", "pycocotools would keep only the last one and pool both images' annotations under it"),
    "annotations": ("annotation", "pycocotools would evaluate the last of them in place of both"),
}


def _category_name(category: dict[str, Any]) -> str:
    return repr(category.get("name"))


def _image_name(image: dict[str, Any]) -> str:
    return repr(image.get("file_name"))


def _require_unique_ids(
    items: list[Any], source: str, key: str, describe: Callable[[dict[str, Any]], str] | None
) -> None:
    """CocoFormatError naming the first id used twice among `document[key]`, and both entries
    (by position, and by `describe`: a name)."""
    ids = [item["id"] for item in items if isinstance(item, dict) and "id" in item]
    try:
        if len(set(ids)) == len(ids):  # the common case: one set, no per-entry work
            return
    except TypeError:  # an unhashable id: said below
        pass
    kind, effect = _DUPLICATE_EFFECT[key]
    seen: dict[Any, int] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            continue
        try:
            earlier = seen.setdefault(item["id"], index)
        except TypeError:
            raise CocoFormatError(f"{source}: {key}[{index}].id: expected an integer, got {item['id']!r:.40}") from None
        if earlier != index:
            first, second = f"{key}[{earlier}]", f"{key}[{index}]"
            if describe is not None:
                first, second = f"{describe(items[earlier])} ({first})", f"{describe(item)} ({second})"
            raise CocoFormatError(
                f"{source}: {kind} id {item['id']} is used twice: {first} and {second}; {effect}. "
                f"Give each {kind} its own id."
            )


def parse_coco_ground_truth(document: Any, source: str = "ground truth", iou_type: str = "bbox") -> CocoGroundTruth:
    """Validate a COCO annotation document; CocoFormatError names the file and the entry at fault."""
    _require(isinstance(document, dict), f"{source}: expected a COCO object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        _require(key in document, f"{source}: missing '{key}'")
    for key in ("images", "categories"):
        _require(isinstance(document[key], list), f"{source}: {key}: expected a list")
        for index, item in enumerate(document[key]):
            _check_item(item, f"{source}: {key}[{index}]", ["id"])
    _require_unique_ids(document["categories"], source, "categories", _category_name)
    _require_unique_ids(document["images"], source, "images", _image_name)
    images = {image["id"]: image for image in document["images"]}
    categories = {category["id"]: str(category.get("name", category["id"])) for category in document["categories"]}
    needed = ["image_id", "category_id", "bbox" if iou_type == "bbox" else "segmentation"]
    where = f"{source}: annotations"
    annotations = document["annotations"]
    columns = _columns(annotations, where, needed)
    _require_unique_ids(annotations, source, "annotations", None)
    unknown = np.flatnonzero(~np.isin(columns["image_id"], list(images)))
    _require(
        not len(unknown),
        f"{where}[{unknown[0] if len(unknown) else 0}] refers to image "
        f"{columns['image_id'][unknown[0]] if len(unknown) else ''}, not in images",
    )
    masks = None
    if iou_type == "segm":
        masks = [_to_rle(a["segmentation"], images[a["image_id"]], where, i) for i, a in enumerate(annotations)]
    areas = [a["area"] if "area" in a else _fallback_area(a, masks, i) for i, a in enumerate(annotations)]
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], bool)
    objects = Objects(
        columns["category_id"].astype(np.int64),
        columns["bbox"].astype(float),
        np.array(areas, float),
        crowd,
        np.ones(len(annotations)),
        masks,
    )
    return CocoGroundTruth(images, categories, _by_image(columns["image_id"], objects))


def parse_coco_detections(
    document: Any, ground_truth: CocoGroundTruth, source: str = "detections", iou_type: str = "bbox"
) -> dict[int, Objects]:
    """Validate a COCO results list against its ground truth; detections per image.

    As pycocotools' loadRes: when the first result has a box, detection areas are box areas
    (even for segm) and a result without a mask is scored as its box's polygon; otherwise
    areas are mask areas, and a result without a box gets its mask's bounding box
    (`toBbox`; polygons are rasterised first), so mask-only results can be scored as boxes.
    """
    _require(isinstance(document, list), f"{source}: expected a list of results")
    if not document:
        return {}
    boxes_decide = isinstance(document[0], dict) and document[0].get("bbox") not in (None, [])
    columns = _columns(
        document, source, ["image_id", "category_id", "score", "bbox" if boxes_decide else "segmentation"]
    )
    unknown = np.flatnonzero(~np.isin(columns["image_id"], list(ground_truth.images)))
    if len(unknown):
        raise CocoFormatError(
            f"{source}[{unknown[0]}]: image {columns['image_id'][unknown[0]]} is not in the ground truth"
        )
    masks = None
    if iou_type == "segm" or not boxes_decide:
        masks = [
            _to_rle(_segmentation_of(item), ground_truth.images[item["image_id"]], source, index)
            for index, item in enumerate(document)
        ]
    boxes = columns["bbox"].astype(float)
    if boxes_decide:
        areas = boxes[:, 2] * boxes[:, 3]
    else:
        areas = np.array([_fallback_area(item, masks, index) for index, item in enumerate(document)], float)
        boxless = [index for index, item in enumerate(document) if item.get("bbox") is None]
        if boxless:
            boxes[boxless] = _mask_utils().toBbox([masks[index] for index in boxless])
    if iou_type != "segm":
        masks = None  # boxes are what is scored
    objects = Objects(
        columns["category_id"].astype(np.int64),
        boxes,
        areas,
        np.zeros(len(document), bool),
        columns["score"].astype(float),
        masks,
    )
    return _by_image(columns["image_id"], objects)


def _segmentation_of(item: dict[str, Any]) -> Any:
    if "segmentation" in item:
        return item["segmentation"]
    x, y, w, h = item["bbox"]  # pycocotools makes the box's polygon
    return [[x, y, x, y + h, x + w, y + h, x + w, y]]


def _fallback_area(annotation: dict[str, Any], masks: list[Any] | None, index: int) -> float:
    if masks is not None:
        return float(_mask_utils().area(masks[index]))
    box = annotation.get("bbox") or [0, 0, 0, 0]
    return float(box[2] * box[3])


def _mask_utils() -> Any:
    from pycocotools import mask as mask_utils  # RLE arithmetic: the reference's own C code

    return mask_utils


def _to_rle(segmentation: Any, image: dict[str, Any], source: str, index: int) -> Any:
    """Polygons, uncompressed or compressed RLE → compressed RLE (pycocotools' annToRLE)."""
    mask_utils = _mask_utils()
    try:
        height, width = _image_size(image, source, index)
        if isinstance(segmentation, list):
            _check_polygons(segmentation, 2 * max(height, width), source, index)
            return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        if isinstance(segmentation.get("counts"), list):
            return mask_utils.frPyObjects(segmentation, height, width)
        return {"size": segmentation["size"], "counts": segmentation["counts"]}
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise CocoFormatError(f"{source}[{index}].segmentation: cannot read it as a polygon or RLE ({error})") from None


def _image_size(image: dict[str, Any], source: str, index: int) -> tuple[int, int]:
    sides = image["height"], image["width"]
    if not all(isinstance(side, int | float) and 1 <= side <= MAX_IMAGE_SIDE for side in sides):
        raise CocoFormatError(
            f"{source}[{index}].segmentation: its image's height and width must be 1 to {MAX_IMAGE_SIDE} "
            f"pixels, got {sides[0]!r:.40} x {sides[1]!r:.40}"
        )
    return int(sides[0]), int(sides[1])


def _check_polygons(polygons: list[Any], limit: int, source: str, index: int) -> None:
    """Every vertex a number within `limit` pixels of the image's origin (NaN is not)."""
    for polygon in polygons:
        if isinstance(polygon, list) and not all(isinstance(v, int | float) and -limit <= v <= limit for v in polygon):
            raise CocoFormatError(
                f"{source}[{index}].segmentation: polygon vertices must be numbers within {limit} pixels "
                f"of the image, got {polygon!r:.80}"
            )


def evaluate_coco(
    ground_truth: CocoGroundTruth,
    detections: Mapping[int, Objects],
    iou_type: str = "bbox",
    progress: Callable[[int, int], object] = lambda done, total: None,
) -> dict[str, float]:
    """The 12 COCO numbers of a whole result set: what `stagewatch eval coco` prints.
    `progress(images done, images)` is called every 256 images."""
    evaluator = CocoEvaluator(ground_truth.categories, iou_type)
    empty = Objects.empty()
    image_ids = ground_truth.objects.keys() | detections.keys()
    for done, image_id in enumerate(image_ids, 1):
        evaluator.update(image_id, ground_truth.objects.get(image_id, empty), detections.get(image_id, empty))
        if done % 256 == 0:
            progress(done, len(image_ids))
    progress(len(image_ids), len(image_ids))
    return evaluator.compute()
