"""Scrubbing: re-reading what is already written, to find damage before a reader or a
rebuild trips on it, and remembering it (state/scrub.json) until a clean scrub says so.

The daemon scrubs one sealed segment of the event log per pass (round robin, a 64 MiB
segment costs tens of milliseconds of CRC), so the whole log is checked over time without
holding ingest up; `stagewatch doctor --scrub` checks every segment, every table's Delta log
and every data file of its snapshot at once, with a progress bar.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stagewatch._records import ScanStats, scan_records
from stagewatch.daemon.base._derived import SCRUB_RECORD, clear_way, peek
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.ingest._eventlog import EventLog
from stagewatch.daemon.query._sql import damage_of
from stagewatch.daemon.tables._store import TABLES, atomic_write
from stagewatch.daemon.tables._tables import DamagedTable, first_line, snapshot_files, snapshot_sizes


def segment_damage(path: Path) -> dict[str, Any] | None:
    """What is wrong inside one sealed segment (CRC-failed regions), or None."""
    stats = ScanStats()
    for _ in scan_records(path.read_bytes(), stats):
        pass
    if not (stats.corrupt_regions or stats.tail_bytes):
        return None
    regions, damaged = stats.corrupt_regions + bool(stats.tail_bytes), stats.corrupt_bytes + stats.tail_bytes
    return {"segment": path.name, "corrupt_regions": regions, "corrupt_bytes": damaged}


def sealed_segments(home: DaemonHome) -> list[Path]:
    """Every segment but the last, which the daemon is appending to."""
    return [path for _, path in EventLog(home.events).segments()[:-1]]


def load(home: DaemonHome) -> dict[str, Any]:
    """The record; an empty one when there is none or it is damaged (the daemon sets a damaged
    one aside on start, `_derived`)."""
    return peek(SCRUB_RECORD, home) or {"segments": {}, "parts": {}}


def save(home: DaemonHome, found: dict[str, Any]) -> None:
    clear_way(SCRUB_RECORD, home)
    atomic_write(home.scrub, json.dumps(found, indent=1).encode())


def scrub_next_segment(home: DaemonHome) -> dict[str, Any] | None:
    """The daemon's periodic pass: check the sealed segment after the last one checked;
    record damage found (and forget damage of a segment that reads clean again)."""
    segments = sealed_segments(home)
    if not segments:
        return None
    found = load(home)
    names = [path.name for path in segments]
    last = found.get("last_segment")
    path = segments[(names.index(last) + 1) % len(names)] if last in names else segments[0]
    damage = segment_damage(path)
    found["segments"] = {
        name: d for name, d in found.get("segments", {}).items() if name in names and name != path.name
    }
    if damage is not None:
        found["segments"][path.name] = damage | {"found_at": time.time()}
    found["last_segment"] = path.name
    save(home, found)
    return damage


def quick_damage_of(part: Path, size: int) -> str | None:
    """What is wrong with a data file that its size and its footer show (not a whole read:
    `doctor` runs this on every file, `doctor --scrub` reads them through): gone, of another
    size than its table's log says (cut short, say), or a footer Parquet cannot read."""
    try:
        found = part.stat().st_size
    except FileNotFoundError:
        return "missing (deleted by hand?)"
    except OSError as error:
        return str(error)
    if found != size:
        return f"{found:,} bytes where its table's log says {size:,} (cut short or overwritten?)"
    try:
        pq.read_metadata(part)
    except (pa.ArrowException, OSError) as error:
        return f"its footer does not read ({first_line(error)})"
    return None


def damaged_data_files(home: DaemonHome) -> dict[str, str]:
    """Data file (relative to the home) -> what is wrong, of every table's snapshot
    (`quick_damage_of`); a table whose log cannot be read is the tables check's business."""
    return {path: damage for table in TABLES for path, damage in damaged_files_of(home, table).items()}


def damaged_files_of(home: DaemonHome, table: str) -> dict[str, str]:
    """`damaged_data_files` of one table."""
    try:
        files = snapshot_sizes(home, table)
    except DamagedTable:
        return {}
    damaged = {}
    for path, size in files:
        if (damage := quick_damage_of(path, size)) is not None:
            damaged[str(path.relative_to(home.root))] = damage
    return damaged


def scrub_all(home: DaemonHome, progress: Callable[[int, int], object] = lambda done, total: None) -> dict[str, Any]:
    """Every sealed segment, every table's log and the data files of its snapshot, now
    (`doctor --scrub`)."""
    segments = sealed_segments(home)
    found: dict[str, Any] = {"segments": {}, "parts": {}, "scrubbed_at": time.time()}
    files = []
    for table in TABLES:
        try:
            files += snapshot_files(home, table)
        except DamagedTable as error:
            found["parts"][str(home.table(table).relative_to(home.root))] = {
                "error": str(error)[:500],
                "found_at": time.time(),
            }
    total = len(segments) + len(files)
    for done, path in enumerate(segments, 1):
        damage = segment_damage(path)
        if damage is not None:
            found["segments"][path.name] = damage | {"found_at": time.time()}
        progress(done, total)
    for done, file in enumerate(files, len(segments) + 1):
        damage = damage_of(Path(file))
        if damage is not None:
            found["parts"][str(Path(file).relative_to(home.root))] = {"error": damage[:500], "found_at": time.time()}
        progress(done, total)
    found["checked"] = {"segments": len(segments), "parts": len(files)}
    save(home, found)
    return found
