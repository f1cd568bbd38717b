"""Box and mask IoU, vectorized. Box IoU is computed in the same order of float operations
as pycocotools' C `bbIou`, so matching decisions at a threshold come out the same."""

from __future__ import annotations

import numpy as np


def box_iou(detections: np.ndarray, ground_truth: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU of (D, 4) against (G, 4) boxes in xywh, as a (D, G) array.

    For a crowd ground-truth box the union is the detection's own area (COCO's rule: a
    detection inside a crowd region is not a false positive).
    """
    dt = np.asarray(detections, dtype=float).reshape(-1, 4)
    gt = np.asarray(ground_truth, dtype=float).reshape(-1, 4)
    dt_area = (dt[:, 2] * dt[:, 3])[:, None]
    gt_area = (gt[:, 2] * gt[:, 3])[None, :]
    width = np.minimum(dt[:, None, 2] + dt[:, None, 0], gt[None, :, 2] + gt[None, :, 0]) - np.maximum(
        dt[:, None, 0], gt[None, :, 0]
    )
    height = np.minimum(dt[:, None, 3] + dt[:, None, 1], gt[None, :, 3] + gt[None, :, 1]) - np.maximum(
        dt[:, None, 1], gt[None, :, 1]
    )
    intersection = np.where((width > 0) & (height > 0), width * height, 0.0)
    union = dt_area + gt_area - intersection
    if crowd is not None and len(crowd):
        union = np.where(np.asarray(crowd, bool)[None, :], np.broadcast_to(dt_area, union.shape), union)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(intersection > 0, intersection / union, 0.0)
    # Cancellation in `width` can push a near-degenerate box pair a hair above 1 (pycocotools
    # reports that as is); clipping keeps IoU a fraction and changes no match at any threshold.
    return np.minimum(iou, 1.0)


def mask_iou(detections: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """IoU of (D, H, W) against (G, H, W) binary masks, as a (D, G) array (0 where both are empty)."""
    dt = np.asarray(detections, dtype=bool).reshape(len(detections), -1).astype(np.float64)
    gt = np.asarray(ground_truth, dtype=bool).reshape(len(ground_truth), -1).astype(np.float64)
    intersection = dt @ gt.T
    union = dt.sum(axis=1)[:, None] + gt.sum(axis=1)[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / union, 0.0)


def confusion_matrix(
    truth: np.ndarray, predicted: np.ndarray, classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """(classes, classes) counts, rows = truth, columns = prediction; `ignore_index` truth is skipped.

    Labels outside [0, classes) in the truth are skipped too (they are the caller's to report).
    """
    truth = np.asarray(truth).ravel().astype(np.int64)
    predicted = np.asarray(predicted).ravel().astype(np.int64)
    keep = (truth >= 0) & (truth < classes) & (predicted >= 0) & (predicted < classes)
    if ignore_index is not None:
        keep &= truth != ignore_index
    return np.bincount(truth[keep] * classes + predicted[keep], minlength=classes * classes).reshape(classes, classes)
