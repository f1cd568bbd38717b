"""Tables printed by more than one command (`demo`, `show`, `eval --run`)."""

from __future__ import annotations

import unicodedata
from typing import Any

MESSAGE_LINES = 20  # of one log message or error in a listing: --json prints it whole


def message_text(text: str, indent: int | None = 0, most_lines: int | None = None) -> str:
    """A pipeline's text (a log message, an error, a sample id) inside a printed row: each further
    line indented by `indent` spaces, so that a multi-line message stays in its row instead of
    looking like rows of its own; `indent` None: one line, its breaks shown as ⏎. A break is any
    that Python's splitlines knows (\r\n one break; \r, \v, \f, U+0085, U+2028 too: a terminal or a
    viewer may break there), trailing empty lines dropped. (Other control characters are `_main`'s:
    escaped on a terminal, exact in a pipe.) `most_lines`: the lines shown, then how many more."""
    lines = str(text).splitlines()
    while lines and not lines[-1]:
        lines.pop()
    if most_lines is not None and len(lines) > most_lines:
        lines = [*lines[:most_lines], f"… {len(lines) - most_lines:,} more lines (--json prints it whole)"]
    return " ⏎ ".join(lines) if indent is None else ("\n" + " " * indent).join(lines)


def columns(text: str) -> int:
    """The columns a terminal gives `text`: a wide character (画) two, a combining mark none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def padded(text: str, width: int) -> str:
    """`text` left-aligned in `width` columns as a terminal counts them (`columns`), not characters."""
    return text + " " * max(0, width - columns(text))


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


def stats_table(stages: list[dict[str, Any]], gpu: dict[str, dict[str, Any]], host: str | None = None) -> str:
    """Per stage, in the order given (`_query.run_stages`: the order stages first ran): runs,
    failures, median, p95 and max ms, the stage's own memory (the most its RSS rose above its
    start), the process's peak RSS, and the GPU peak with a line per stage of its
    peaks by device (`query_gpu_devices`, when a stage used several), or one line: no GPU on `host`."""
    gpu_seen = any(stage["gpu_peak_mb"]["max"] is not None for stage in stages)
    lines = [
        f"  {'stage':<20}{cell('runs', 10)}{cell('failed', 8)}{cell('median ms', 12)}{cell('p95 ms', 10)}"
        f"{cell('max ms', 10)}{cell('own MB', 9)}{cell('proc. peak MB', 15)}"
        + (cell("GPU peak MB", 13) if gpu_seen else "")
    ]
    for stage in stages:
        duration, count = stage["duration_ms"], stage["count"]
        failed, gpu_peak = round(stage["failure_rate"] * count), stage["gpu_peak_mb"]["max"]
        lines.append(
            f"  {name_cell(stage['stage'], 20)}{cell(f'{count:,}', 10)}{cell(f'{failed:,}', 8)}"
            f"{cell(_ms(duration['median']), 12)}{cell(_ms(duration['p95']), 10)}{cell(_ms(duration['max']), 10)}"
            f"{cell(_mb(stage['own_mb']['max']), 9)}{cell(_mb(stage['rss_peak_mb']['max']), 15)}"
            + (cell(_mb(gpu_peak), 13) if gpu_seen else "")
        )
        devices = (gpu.get(stage["stage"]) or {}).get("devices", {})
        if len(devices) > 1:
            peaks = " · ".join(f"{device} max {_mb(found['max'])} MB" for device, found in devices.items())
            lines.append(f"    GPU by device: {peaks}")
    if stages and not gpu_seen:
        lines.append(f"  no GPU readings on {host or 'this host'} (docs/gpu.md)")
    return "\n".join(lines)


def executions_table(rows: list[dict[str, Any]], offset: int, total: int, order: str) -> str:
    """A page of a run's stage executions (`_query.executions_page`), and where it is in all of them."""
    if not total:
        return "\nno stage execution has ended yet"
    if offset >= total:
        return f"\npast the last page: the run has {total:,} stage executions"
    first = f"{offset + 1:,}-{offset + len(rows):,} of {total:,}"
    how = "failures first, then by start" if order == "failures" else "by start"
    lines = [
        f"\nstage executions {first} ({how}; --page N for more)",
        f"  {'started':<34}{'stage':<22}{'sample':<22}{'status':<9}{'ms':>10}  error",
    ]
    for row in rows:
        started = row["start_time"].isoformat() if row["start_time"] is not None else "-"
        error = message_text(f"{row['error_type']}: {row['error_message']}", None) if row["error_type"] else ""
        sample = padded(message_text(row["sample_id"] or "-", None), 21)
        lines.append(
            f"  {started:<34}{row['stage']:<21} {sample} {row['status']:<9}"
            f"{cell(_ms(row['duration_ms']), 10)}  {error[:200]}"
        )
    return "\n".join(lines)


def cell(text: str, width: int) -> str:
    """`text` right-aligned in a column `width` wide, after at least one space: a value wider than
    its column (a duration of 10**7 ms) pushes the rest of its row on, never runs into its neighbour."""
    return f" {text:>{width - 1}}"


def name_cell(text: str, width: int) -> str:
    """`text` left-aligned in a column `width` wide (as a terminal counts: `columns`), at least
    one space before the next."""
    return padded(text, width - 1) + " "


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
