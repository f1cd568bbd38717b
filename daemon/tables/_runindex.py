"""Where a run's rows are: run id → the date partitions that hold them.

    index/runs/{first 3 hex digits}.tsv    lines "run_id<TAB>date", appended as rows are written
    index/runs/complete                    the index covers every row in metrics/

A query by run id then opens one small bucket file and the run's one or two date
partitions instead of every partition of every table: what keeps it fast at a million
runs. Lines are appended by whoever writes rows (the daemon, the accuracy worker) in the
same flush as the rows, before the checkpoint, so a crash replays both; a repeated line
is harmless and a line of a run that retention removed only points at a partition where
its rows are no longer found. Without the `complete` marker readers scan every partition;
the daemon builds the index from the tables on start when a home has data but no index.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from stagewatch.daemon.base._layout import DaemonHome

BUCKET_DIGITS = 3
REMEMBERED = 100_000  # (run, date) pairs already appended, so a long run is indexed once per date


class RunIndex:
    def __init__(self, home: Path | DaemonHome) -> None:
        self.home = DaemonHome.of(home)
        self.folder = self.home.run_index
        self._appended: OrderedDict[tuple[str, str], None] = OrderedDict()

    def add(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Record that `run_id` has rows in partition `date`, for each (run_id, date)."""
        lines: dict[str, list[str]] = {}
        for pair in pairs:
            if pair in self._appended:
                continue
            self._appended[pair] = None
            if len(self._appended) > REMEMBERED:
                self._appended.popitem(last=False)
            lines.setdefault(pair[0][:BUCKET_DIGITS], []).append(f"{pair[0]}\t{pair[1]}\n")
        if lines:
            self.folder.mkdir(parents=True, exist_ok=True)
        for bucket, bucket_lines in lines.items():
            # One O_APPEND write per bucket: whole lines, even with two writers.
            fd = os.open(self.folder / f"{bucket}.tsv", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            try:
                os.write(fd, "".join(bucket_lines).encode())
            finally:
                os.close(fd)

    @property
    def complete(self) -> bool:
        return (self.folder / "complete").exists()

    def mark_complete(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "complete").touch()

    def build_from_tables(self) -> int:
        """Index every row already in the tables (a home written before the index existed)."""
        from stagewatch.daemon.projection._rows import TABLES
        from stagewatch.daemon.query._sql import select  # reads through the tables' snapshots

        pairs: set[tuple[str, str]] = set()
        for table in TABLES:
            found = select(self.home.root, table, "SELECT DISTINCT run_id, date FROM rows WHERE run_id IS NOT NULL")
            pairs.update(zip(found["run_id"].to_pylist(), found["date"].to_pylist(), strict=True))
        self.add(sorted(pairs))
        self.mark_complete()
        return len(pairs)


def run_dates(home: Path, run_id: str) -> list[str] | None:
    """The date partitions holding rows of `run_id`; None when there is no complete index."""
    index = RunIndex(home)
    if not index.complete:
        return None
    return sorted({date for found, date in _bucket(index.folder, run_id) if found == run_id})


def runs_with_prefix(home: Path, prefix: str) -> list[str] | None:
    """Indexed run ids starting with `prefix` (at least 3 hex digits); None if it cannot say."""
    index = RunIndex(home)
    if len(prefix) < BUCKET_DIGITS or not index.complete:
        return None
    return sorted({found for found, _ in _bucket(index.folder, prefix) if found.startswith(prefix)})


def _bucket(folder: Path, run_id: str) -> list[tuple[str, str]]:
    try:
        text = (folder / f"{run_id[:BUCKET_DIGITS]}.tsv").read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    return [tuple(line.split("\t", 1)) for line in text.splitlines() if "\t" in line]  # type: ignore[misc]
