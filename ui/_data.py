"""What the dashboard shows, as pure functions of a home's read models (tested without a browser).

Nothing here writes, and nothing reads outside the home: an artifact is opened only if its
path has the shape the client writes (runs/{run_id}/stages/{stage}/{file}, every part a
checked name) and resolves, symlinks followed, inside the home's runs/ folder.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from stagewatch._home import Home, parse_artifact_relpath
from stagewatch.daemon import STATS_COLUMNS, Filters, query_stages, stage_stats
from stagewatch.daemon._readmodels import RunNotFound, list_runs, load_accuracy, load_audit, resolve_run_id

PREVIEW_BYTES = 32 * 1024 * 1024  # larger files are listed, not loaded into the page


class ArtifactRefused(ValueError):
    """A path the dashboard will not open; the message says why."""


def runs_frame(home: Path, limit: int = 200) -> pd.DataFrame:
    runs = list_runs(home, limit)
    columns = ["run_id", "pipeline", "status", "started_at", "duration_ms", "stages", "failed_stage"]
    return pd.DataFrame([{key: run.get(key) for key in columns} for run in runs], columns=columns)


def find_run(home: Path, text: str) -> str:
    """A run id from an id or a unique prefix; RunNotFound says why not."""
    return resolve_run_id(home, text)


def run_view(home: Path, run_id: str) -> dict[str, Any]:
    """Everything the run page needs, read once."""
    audit = load_audit(home, run_id)
    stages = audit.get("stages", [])
    return {
        "audit": audit,
        "stats": stats_frame(home, run_id),
        "executions": executions_frame(stages),
        "accuracy": load_accuracy(home, run_id),
        "artifacts": [a["path"] for s in stages for a in s.get("artifacts", []) if isinstance(a, dict) and "path" in a],
    }


def executions_frame(stages: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per stage execution, in the order they ended (for the duration chart)."""
    rows = [
        {
            "stage": s["stage"],
            "sample_id": s.get("sample_id"),
            "status": s.get("status"),
            "duration_ms": s.get("duration_ms"),
            "rss_peak_mb": (s.get("memory") or {}).get("rss_peak_mb"),
            "order": i,
        }
        for i, s in enumerate(stages)
    ]
    return pd.DataFrame(rows, columns=["stage", "sample_id", "status", "duration_ms", "rss_peak_mb", "order"])


def stats_frame(home: Path, run_id: str) -> pd.DataFrame:
    rows = []
    for entry in stage_stats(query_stages(home, Filters(run=run_id), STATS_COLUMNS)):
        duration, rss, gpu = entry["duration_ms"], entry["rss_peak_mb"], entry["gpu_peak_mb"]
        rows.append(
            {
                "stage": entry["stage"],
                "count": entry["count"],
                "failure rate": entry["failure_rate"],
                "median ms": duration["median"],
                "p95 ms": duration["p95"],
                "p99 ms": duration["p99"],
                "max ms": duration["max"],
                "peak RSS MB": rss["max"],
                "peak GPU MB": gpu["max"],
                "share of time": entry["share_of_time"],
                "bottleneck": bool(entry.get("bottleneck")),
            }
        )
    return pd.DataFrame(rows)


def accuracy_frame(accuracy: dict[str, Any] | None) -> pd.DataFrame:
    rows = []
    for name, stage in (accuracy or {}).get("stages", {}).items():
        metrics = stage["metrics"]
        row = {"stage": name, "kind": stage["kind"], **stage["counts"]}
        if stage["kind"] == "boxes":
            coco = metrics.get("coco", {})
            row |= {
                "precision": metrics["precision"],
                "recall": metrics["recall"],
                "F1": metrics["f1"],
                "mAP": coco.get("AP"),
                "AP50": coco.get("AP50"),
            }
        else:
            row |= {"mIoU": metrics["miou"], "accuracy": metrics["accuracy"]}
        rows.append(row)
    return pd.DataFrame(rows)


def disk_problems(home: Path) -> list[str]:
    """The daemon's disk warnings (status.json), for the banner."""
    try:
        disk = json.loads(Home.of(home).status.read_text()).get("disk", {})
    except (OSError, ValueError):
        return []
    return list(disk.get("problems") or []) if disk.get("state", "ok") != "ok" else []


def resolve_artifact(home: Path, relative: str) -> Path:
    """The file behind an artifact link, or ArtifactRefused: nothing outside the home's runs/."""
    try:
        path = Home.of(home).artifact(*parse_artifact_relpath(relative)).resolve()
    except (ValueError, TypeError) as error:
        raise ArtifactRefused(f"refused {relative!r:.200}: {error}") from None
    runs = Home.of(home).runs.resolve()
    if not path.is_relative_to(runs):
        raise ArtifactRefused(f"refused {relative!r}: it leads outside the home (a symlink?)")
    if not path.is_file():
        raise ArtifactRefused(f"{relative} does not exist (removed by retention?)")
    return path


def preview(path: Path) -> tuple[str, Any]:
    """(kind, content) to show: png bytes, JSON data, or a summary of an array or a point cloud;
    ("unreadable", what is wrong) for a file that cannot be read (damaged, truncated), so the
    page says so instead of showing a blank."""
    try:
        return _preview(path)
    except (OSError, ValueError, EOFError, SyntaxError) as error:  # PIL reports a bad PNG as SyntaxError
        return "unreadable", f"{path.name} cannot be read: {type(error).__name__}: {str(error)[:300]}"


def _preview(path: Path) -> tuple[str, Any]:
    size = path.stat().st_size
    if size > PREVIEW_BYTES:
        return "summary", {"file": path.name, "bytes": size, "note": "too large to preview"}
    suffix = path.suffix.lower()
    if suffix == ".png":
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every row: a truncated or damaged PNG fails here, not in the browser
        return "png", data
    if suffix == ".json":
        try:
            return "json", json.loads(path.read_bytes())
        except ValueError as error:
            return "summary", {"file": path.name, "error": f"not valid JSON: {error}"}
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        return "summary", _array_summary(path.name, array)
    if suffix in (".ply", ".pcd"):
        from stagewatch.daemon.groundtruth.formats import LabelError, load_point_labels

        try:
            cloud = load_point_labels(path)
        except LabelError as error:
            return "summary", {"file": path.name, "bytes": size, "note": str(error)}
        bounds = [cloud.positions.min(0).round(2).tolist(), cloud.positions.max(0).round(2).tolist()]
        return "summary", {**_array_summary(path.name, cloud.labels), "points": len(cloud.labels), "bounds": bounds}
    return "summary", {"file": path.name, "bytes": size}


def _array_summary(name: str, array: np.ndarray) -> dict[str, Any]:
    summary: dict[str, Any] = {"file": name, "shape": list(array.shape), "dtype": str(array.dtype)}
    if array.dtype.kind in "iub" and array.size:
        values, counts = np.unique(array, return_counts=True)
        if len(values) <= 32:
            summary["values"] = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
    return summary


__all__ = [
    "ArtifactRefused",
    "RunNotFound",
    "accuracy_frame",
    "disk_problems",
    "find_run",
    "preview",
    "resolve_artifact",
    "run_view",
    "runs_frame",
    "stats_frame",
]
