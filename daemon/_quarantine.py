"""Events that failed validation: kept, with the reason, in quarantine/{date}.jsonl."""

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
        lines = [json.dumps(_record(r, now)) for r in rejected]
        path = self.home.quarantine_file(f"{now:%Y-%m-%d}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as handle:
                handle.write("\n".join(lines) + "\n")
        except OSError as error:
            self.write_error("cannot write the quarantine file: {}", error)
        logger.warning("quarantined {} invalid event(s); first: {}", len(rejected), rejected[0].reason)


def _record(rejected: Rejected, now: datetime) -> dict[str, object]:
    return {
        "received_at": now.isoformat(),
        "reason": rejected.reason,
        "client_id": rejected.client_id,
        "raw_base64": base64.b64encode(rejected.raw[:MAX_KEPT_BYTES]).decode(),
    }
