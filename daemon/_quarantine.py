"""What could not be taken in: events that failed validation, and the rare event or row
that passed but still failed in projection or writing. Kept, with the reason (and the log
position, for the latter), in quarantine/{date}.jsonl; each costs only itself."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from loguru import logger

from stagewatch._home import Home
from stagewatch.daemon._decode import Rejected
from stagewatch.daemon._stats import DaemonStats, WriteErrors

MAX_KEPT_BYTES = 65536  # of each rejected payload


class Quarantine:
    def __init__(self, home: Home, stats: DaemonStats, write_error: WriteErrors) -> None:
        self.home = home
        self.stats = stats
        self.write_error = write_error

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
        path = self.home.quarantine_file(f"{now:%Y-%m-%d}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as handle:
                handle.write("\n".join(lines) + "\n")
        except OSError as error:
            self.write_error("cannot write the quarantine file: {}", error)


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
