"""What could not be taken in: events that failed validation, and the rare event or row
that passed but still failed in projection or writing. Kept, with the reason (and the log
position, for the latter), in quarantine/{date}.jsonl; each costs only itself.

Bounded: at most `MAX_QUARANTINE_BYTES` on disk (the oldest days go first; past that,
records are counted but not kept) and `KEEP_DAYS` days. A client that floods invalid
events can fill its share of the log, never the disk."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from loguru import logger

from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._stats import DaemonStats, WriteErrors
from stagewatch.daemon.ingest._decode import Rejected

MAX_KEPT_BYTES = 65536  # of each rejected payload
MAX_QUARANTINE_BYTES = 128 * 1024**2
KEEP_DAYS = 30


class Quarantine:
    def __init__(
        self, home: DaemonHome, stats: DaemonStats, write_error: WriteErrors, max_bytes: int = MAX_QUARANTINE_BYTES
    ) -> None:
        self.home = home
        self.stats = stats
        self.write_error = write_error
        self.max_bytes = max_bytes
        self._bytes: int | None = None  # measured at the first record, then kept up to date

    def keep(self, rejected: list[Rejected]) -> None:
        """Count, log and keep the rejected events; a refused write costs only the copy."""
        if not rejected:
            return
        self.stats.invalid += len(rejected)
        now = datetime.now(UTC)
        self._append(now, [json.dumps(_record(r, now)) for r in rejected])
        logger.warning("quarantined {} invalid event(s); first: {}", len(rejected), rejected[0].reason)

    def keep_unprojectable(self, where: str, lsn: int, what: object, reason: str) -> None:
        """An event (or its row) that passed validation but failed in `where` (projection,
        writing): kept with its log position; the event itself stays in the log."""
        self.stats.unprojectable += 1
        now = datetime.now(UTC)
        record = {
            "received_at": now.isoformat(),
            "reason": f"failed in {where}: {reason}"[:4096],
            "lsn": lsn,
            "what": _safe_repr(what),
        }
        self._append(now, [json.dumps(record)])
        logger.error("event at lsn {} failed in {} and was set aside in quarantine: {}", lsn, where, reason[:300])

    def _append(self, now: datetime, lines: list[str]) -> None:
        data = ("\n".join(lines) + "\n").encode()
        today = f"{now:%Y-%m-%d}"
        if not self._room_for(len(data), today):
            self.stats.quarantine_dropped += len(lines)
            self.write_error("quarantine is full ({}); records counted, not kept", OSError(28, "over its cap"))
            return
        path = self.home.quarantine_file(today)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as handle:
                handle.write(data)
            self._bytes = (self._bytes or 0) + len(data)
        except OSError as error:
            self.write_error("cannot write the quarantine file: {}", error)

    def _room_for(self, size: int, today: str) -> bool:
        """Make room for `size` bytes by dropping the oldest days (not today's); False if
        today's records alone fill the cap."""
        if self._bytes is None:
            self._bytes = sum(path.stat().st_size for _, path in self._days())
        for date, path in self._days():
            if self._bytes + size <= self.max_bytes or date == today:
                break
            self._bytes -= path.stat().st_size
            path.unlink(missing_ok=True)
        return self._bytes + size <= self.max_bytes

    def expire(self, now: datetime) -> int:
        """Remove the days older than `KEEP_DAYS` (the retention pass); how many went."""
        cutoff = f"{now - timedelta(days=KEEP_DAYS):%Y-%m-%d}"
        expired = [path for date, path in self._days() if date < cutoff]
        for path in expired:
            self._bytes = None if self._bytes is None else self._bytes - path.stat().st_size
            path.unlink(missing_ok=True)
        return len(expired)

    def _days(self) -> list[tuple[str, Path]]:
        """(date, file) of the quarantine's day files, oldest first."""
        folder = self.home.quarantine
        return sorted((path.stem, path) for path in folder.glob("*.jsonl")) if folder.is_dir() else []


def _safe_repr(value: object, limit: int = MAX_KEPT_BYTES) -> str:
    try:
        return repr(value)[:limit]
    except Exception as error:  # a repr that fails (too deep, a broken __repr__) must not
        return f"<unrepresentable: {type(error).__name__}>"


def _record(rejected: Rejected, now: datetime) -> dict[str, object]:
    return {
        "received_at": now.isoformat(),
        "reason": rejected.reason,
        "client_id": rejected.client_id,
        "raw_base64": base64.b64encode(rejected.raw[:MAX_KEPT_BYTES]).decode(),
    }
