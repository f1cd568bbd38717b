"""`stagewatch rebuild`: regenerate every read model from the event log alone."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stagewatch._home import Home
from stagewatch._names import is_run_id
from stagewatch.daemon._accuracy import CHECKPOINT, AccuracyWorker
from stagewatch.daemon._daemon import Daemon, DaemonSettings


def rebuild(home: Path, progress: Callable[[int, int], object] = lambda done, total: None) -> dict[str, Any]:
    """Delete the read models and the checkpoint, then replay the whole log into new ones.

    Takes the daemon's lock (DaemonAlreadyRunning if a daemon runs on `home`). Saved stage
    outputs (runs/*/stages/) are evidence, not read models: they are kept. If the rebuild is
    interrupted, run it again. `progress(bytes replayed, bytes)` is called as it goes.
    """
    layout = Home.of(home)
    daemon = Daemon(DaemonSettings(home=home, endpoint=layout.ingest_endpoint, live_endpoint=layout.live_endpoint))
    daemon.lock.take()
    try:
        removed = _remove_read_models(layout)
        daemon.recover(progress)
        daemon.flush(final=True)
        AccuracyWorker(home).recover()  # from an empty checkpoint: judges every sample result again
        return {
            "events_replayed": daemon.stats.replayed,
            "read_model_files_removed": removed,
            "recovery": daemon.stats.recovery,
            "runs_open": len(daemon.projector.open_work()),
        }
    finally:
        daemon.release()


def _remove_read_models(home: Home) -> int:
    removed = 0
    run_ids = [entry.name for entry in home.runs.iterdir() if is_run_id(entry.name)] if home.runs.is_dir() else []
    run_files = [path for r in run_ids for path in (home.audit(r), home.stage_lines(r), home.accuracy(r))]
    for path in [home.checkpoint(), home.checkpoint(CHECKPOINT), *run_files]:
        if path.exists():
            path.unlink()
            removed += 1
    for folder in (home.index, home.quarantined_parts):  # damaged parts: regenerated like the rest
        if folder.exists():
            shutil.rmtree(folder)
    if home.metrics.exists():
        removed += sum(1 for _ in home.metrics.rglob("*.parquet"))
        shutil.rmtree(home.metrics)
    return removed
