"""Disk monitoring: free space on the home's filesystem and the home's own size.

`disk_state` is a pure function of a reading and the thresholds, so it is tested without
filling a disk; the daemon and `stagewatch doctor` take readings with `read_disk`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from stagewatch.daemon.base._settings import DiskSection

OK, WARNING, FLOOR = "ok", "warning", "floor"


@dataclass(frozen=True)
class DiskReading:
    free_bytes: int
    total_bytes: int
    home_bytes: int | None = None  # measured only when a size limit is configured


def read_disk(home: Path, measure_home: bool) -> DiskReading:
    usage = shutil.disk_usage(home)
    return DiskReading(usage.free, usage.total, folder_bytes(home) if measure_home else None)


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def disk_state(reading: DiskReading, limits: DiskSection) -> tuple[str, list[str]]:
    """(OK | WARNING | FLOOR, what is wrong in words)."""
    problems = []
    free_percent = 100.0 * reading.free_bytes / reading.total_bytes if reading.total_bytes else 0.0
    if reading.free_bytes < limits.floor_free_bytes:
        return FLOOR, [
            f"free space {_size(reading.free_bytes)} is below the floor of {_size(limits.floor_free_bytes)}:"
            " the daemon accepts no events until space is freed"
        ]
    if free_percent < limits.warn_free_percent:
        problems.append(f"free space is {free_percent:.1f}% (warning below {limits.warn_free_percent:g}%)")
    if reading.free_bytes < limits.warn_free_bytes:
        problems.append(f"free space is {_size(reading.free_bytes)} (warning below {_size(limits.warn_free_bytes)})")
    if (
        limits.max_home_bytes is not None
        and reading.home_bytes is not None
        and reading.home_bytes > limits.max_home_bytes
    ):
        problems.append(f"the home holds {_size(reading.home_bytes)} (warning above {_size(limits.max_home_bytes)})")
    return (WARNING if problems else OK), problems


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


@dataclass
class DiskStatus:
    """The last reading and its verdict: maintenance updates it, ingest refuses new events
    below the floor, the read-model writer puts it in status.json."""

    state: str = OK
    problems: list[str] = field(default_factory=list)
    free_bytes: int | None = None
    total_bytes: int | None = None
    home_bytes: int | None = None

    @property
    def below_floor(self) -> bool:
        return self.state == FLOOR
