"""`stagewatch rebuild`: regenerate every read model from the event log alone."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from stagewatch.daemon._accuracy import CHECKPOINT, AccuracyWorker
from stagewatch.daemon._server import Daemon, DaemonSettings


def rebuild(home: Path) -> dict[str, Any]:
    """Delete the read models and the checkpoint, then replay the whole log into new ones.

    Takes the daemon's lock (DaemonAlreadyRunning if a daemon runs on `home`). Saved stage
    outputs (runs/*/stages/) are evidence, not read models: they are kept. If the rebuild is
    interrupted, run it again.
    """
    daemon = Daemon(DaemonSettings(home=home, endpoint="ipc://unused", live_endpoint="ipc://unused"))
    daemon._take_lock()
    try:
        removed = _remove_read_models(home)
        daemon.recover()
        daemon.flush(final=True)
        AccuracyWorker(home).recover()  # from an empty checkpoint: judges every sample result again
        return {"events_replayed": daemon.stats.replayed, "read_model_files_removed": removed,
                "recovery": daemon.stats.recovery, "runs_open": len(daemon.projector.open_work())}  # fmt: skip
    finally:
        daemon.release()


def _remove_read_models(home: Path) -> int:
    removed = 0
    for path in [home / "state" / "checkpoint.msgpack", home / "state" / CHECKPOINT, *home.glob("runs/*/audit.json"),
                 *home.glob("runs/*/stages.jsonl"), *home.glob("runs/*/accuracy.json")]:  # fmt: skip
        path.unlink(missing_ok=True)
        removed += 1
    for folder in (home / "index", home / "quarantine" / "parts"):  # damaged parts: regenerated like the rest
        if folder.exists():
            shutil.rmtree(folder)
    if (home / "metrics").exists():
        removed += sum(1 for _ in (home / "metrics").rglob("*.parquet"))
        shutil.rmtree(home / "metrics")
    return removed
