"""Helpers shared by the benchmark scripts: a daemon subprocess and table printing."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def running_daemon(*extra: str, env: dict[str, str] | None = None) -> Iterator[Path]:
    """A real `stagewatch daemon` on a fresh temporary home; stopped and removed after."""
    home = Path(tempfile.mkdtemp(prefix="sw-bench-", dir="/tmp"))
    process = subprocess.Popen(
        [sys.executable, "-m", "stagewatch.cli", "daemon", "--home", str(home), "--log-level", "WARNING", *extra],
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 30
        while not (home / "run" / "ingest.sock").exists():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the daemon did not start")
            time.sleep(0.05)
        yield home
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def answers_not_kept() -> Iterator[None]:
    """Every query inside reads its files anew: the query layer keeps its recent answers, so a
    repeat of the same query (a benchmark's median) would time a lookup in memory, not a read."""
    from stagewatch.daemon.query import _sql

    kept = _sql._answers
    _sql._answers = _sql._Answers(0)
    try:
        yield
    finally:
        _sql._answers = kept


def median_ms(action: Callable[[], object], repeats: int = 7, warm: bool = False) -> float:
    """The median wall time of `action` in ms over `repeats` calls (after one unmeasured call if `warm`)."""
    if warm:
        action()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
