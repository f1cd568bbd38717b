"""The daemon's own log: stderr for systemd's journal, and JSON lines under the home."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from loguru import logger

from stagewatch.daemon.base._layout import DaemonHome


def configure_logging(home: Path, level: str = "INFO", keep_s: float | None = 30 * 86400, stderr: bool = True) -> None:
    """stderr (unless told not: a progress bar has the terminal), plus logs/daemon.jsonl,
    rotated at 10 MB and kept for `keep_s` seconds (retention.daemon_logs; None keeps the
    last 10 files)."""
    logger.remove()
    if stderr:
        logger.add(sys.stderr, level=level, format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {message}")
    logger.add(
        DaemonHome.of(home).daemon_log,
        level=level,
        serialize=True,
        rotation="10 MB",
        retention=timedelta(seconds=keep_s) if keep_s is not None else 10,
        compression="gz",
        enqueue=False,
    )
