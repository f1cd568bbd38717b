"""Tables printed by more than one command (`demo`, `show`, `eval --run`)."""

from __future__ import annotations

import statistics
from typing import Any


def format_accuracy(summary: dict[str, Any]) -> str:
    """Per stage: sample counts by status and the headline metrics."""
    lines = [f"  {'stage':<20}{'correct':>8}{'wrong':>7}{'invalid':>8}{'unlabeled':>10}  metrics"]
    for name, stage in summary.get("stages", {}).items():
        counts, metrics = stage["counts"], stage["metrics"]
        if stage["kind"] == "boxes":
            coco = metrics.get("coco", {})
            shown = (
                f"P {metrics['precision']:.3f}  R {metrics['recall']:.3f}  F1 {metrics['f1']:.3f}  "
                f"mAP {coco.get('AP', -1):.3f}  AP50 {coco.get('AP50', -1):.3f}"
            )
        else:
            shown = f"mIoU {_number(metrics['miou'])}  accuracy {_number(metrics['accuracy'])}"
        lines.append(
            f"  {name:<20}{counts['correct']:>8}{counts['wrong']:>7}{counts['invalid']:>8}"
            f"{counts['unlabeled']:>10}  {shown}"
        )
    if summary.get("dataset_problem"):
        lines.append(f"  dataset unusable: {summary['dataset_problem']}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def stage_table(stages: list[dict[str, Any]], host: str | None = None) -> str:
    """Per stage, in the order stages first ran: runs, failures, median and max ms, the stage's
    own memory (the most its RSS rose above its start), the process's peak RSS, and the GPU peak
    with a line per stage of its peaks by device (or one line: no GPU on `host`)."""
    names = list(dict.fromkeys(s["stage"] for s in stages))
    gpu_seen = any((s.get("memory") or {}).get("gpu_peak_mb") is not None for s in stages)
    lines = [
        f"  {'stage':<20}{'runs':>6}{'failed':>8}{'median ms':>12}{'max ms':>10}{'own MB':>9}{'proc. peak MB':>15}"
        + (f"{'GPU peak MB':>13}" if gpu_seen else "")
    ]
    for name in names:
        rows = [s for s in stages if s["stage"] == name]
        durations = [s["duration_ms"] for s in rows if s["duration_ms"] is not None] or [0.0]
        peaks = [s["memory"]["rss_peak_mb"] or 0.0 for s in rows]
        own = [_own_mb(s["memory"]) for s in rows]
        failed = sum(s["status"] != "ok" for s in rows)
        gpu = [s["memory"]["gpu_peak_mb"] for s in rows if s["memory"].get("gpu_peak_mb") is not None]
        lines.append(
            f"  {name:<20}{len(rows):>6}{failed:>8}{statistics.median(durations):>12.2f}"
            f"{max(durations):>10.2f}{max(own):>9.1f}{max(peaks):>15.1f}"
            + ((f"{max(gpu):>13.1f}" if gpu else f"{'-':>13}") if gpu_seen else "")
        )
        by_device = _device_peaks(rows)
        if by_device:
            lines.append("    GPU by device: " + " · ".join(f"{d} max {mb:.1f} MB" for d, mb in by_device.items()))
    if stages and not gpu_seen:
        lines.append(f"  no GPU readings on {host or 'this host'} (docs/gpu.md)")
    return "\n".join(lines)


def _own_mb(memory: dict[str, Any]) -> float:
    """What a stage's RSS rose above its start (0 without both readings)."""
    peak, start = memory.get("rss_peak_mb"), memory.get("rss_start_mb")
    return peak - start if peak is not None and start is not None else 0.0


def _device_peaks(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The highest peak each device saw in these stage executions, when they touched more than one."""
    peaks: dict[str, float] = {}
    for row in rows:
        for device, mb in ((row.get("memory") or {}).get("gpu_devices") or {}).items():
            peaks[device] = max(peaks.get(device, 0.0), mb)
    return dict(sorted(peaks.items(), key=lambda item: int(item[0]))) if len(peaks) > 1 else {}
