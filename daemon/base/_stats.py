"""What the daemon counts (status.json, doctor, the log at exit), and refused writes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

WRITE_ERROR_LOG_INTERVAL_S = 10.0


@dataclass
class DaemonStats:
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    invalid: int = 0
    unprojectable: int = 0  # valid events (or rows) that still failed in projection or writing
    quarantine_dropped: int = 0  # records counted but not kept: the quarantine was at its cap
    spool_files: int = 0
    spool_events: int = 0
    clients_lost: int = 0
    write_errors: int = 0
    last_write_error: dict[str, Any] | None = None  # {"message", "at"}: what doctor names
    internal_errors: int = 0
    replayed: int = 0
    replay_duplicates: int = 0  # records the log held twice (a copied segment): skipped
    recovery: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"accepted={self.accepted} duplicates={self.duplicates} invalid={self.invalid} "
            f"spool_events={self.spool_events} clients_lost={self.clients_lost} write_errors={self.write_errors}"
        )


class WriteErrors:
    """Counts refused writes; says so at once, then at most every 10 s per message (a full
    disk refuses every retry, and the log file may be on that disk too)."""

    def __init__(self, stats: DaemonStats) -> None:
        self.stats = stats
        self._next_log: dict[str, float] = {}

    def __call__(self, message: str, error: OSError) -> None:
        self.stats.write_errors += 1
        self.stats.last_write_error = {"message": message.format(error)[:1000], "at": time.time()}
        now = time.monotonic()
        if now >= self._next_log.get(message, 0.0):
            self._next_log[message] = now + WRITE_ERROR_LOG_INTERVAL_S
            logger.error(message + " [{} refused writes so far]", error, self.stats.write_errors)
