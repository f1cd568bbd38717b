"""`stagewatch rebuild`: regenerate every read model from the event log alone, beside the
old ones, and swap them in only once the new ones are whole.

The new read models are written under `home/.rebuild/` (a staging home whose `events`
links to the home's log; the same file system, so the swap is renames). A rebuild that
fails, or is killed, leaves the old read models as they were and the daemon able to start;
the staging folder is cleared by the next rebuild.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stagewatch.daemon._daemon import Daemon, DaemonSettings
from stagewatch.daemon.accuracy._accuracy import AccuracyWorker
from stagewatch.daemon.base._derived import (
    ACCURACY_CHECKPOINT,
    DAEMON_CHECKPOINT,
    DERIVED_FILES,
    SCRUB_RECORD,
    STATUS,
    repair,
)
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._lock import HomeLock
from stagewatch.daemon.tables._retention import remove_recorded


def rebuild(home: Path, progress: Callable[[int, int], object] = lambda done, total: None) -> dict[str, Any]:
    """Replay the whole log into new read models, then put them in place of the old ones.

    Takes the daemon's lock (DaemonAlreadyRunning if a daemon runs on `home`). Saved stage
    outputs (runs/*/stages/) are evidence, not read models: they are kept. `progress(bytes
    replayed, bytes)` is called as it goes.
    """
    layout = DaemonHome.of(home)
    lock = HomeLock(layout, "rebuild")
    lock.take()
    try:
        repair(DERIVED_FILES, layout)  # a folder in a state file's place would refuse the swap
        staging = _fresh_staging(layout)
        report = _build(staging, layout, progress)
        report["read_model_files_removed"] = _swap_in(staging, layout)
        shutil.rmtree(staging.root, ignore_errors=True)
        return report
    finally:
        lock.release()


def _fresh_staging(home: DaemonHome) -> DaemonHome:
    staging = DaemonHome(home.rebuild_staging)
    shutil.rmtree(staging.root, ignore_errors=True)  # what an interrupted rebuild left
    staging.root.mkdir()
    staging.events.symlink_to(home.events.resolve(), target_is_directory=True)
    return staging


def _build(staging: DaemonHome, home: DaemonHome, progress: Callable[[int, int], object]) -> dict[str, Any]:
    settings = DaemonSettings(home=staging.root, endpoint=home.ingest_endpoint, live_endpoint=home.live_endpoint)
    daemon = Daemon(settings)
    try:
        daemon.recover(progress)
        daemon.flush(final=True)
        daemon.writer.write_stopped(daemon.projector)  # the status swapped in: no daemon runs after a rebuild
        # From an empty checkpoint it judges every sample result again; predictions are read
        # from the home's saved outputs.
        AccuracyWorker(staging.root, artifacts=home.root).recover()
        # The replay wrote runs that retention removed before their run_expired came (their
        # rows, audit trails, the worker's samples): the read models become what retention left.
        expired = remove_recorded(staging.root)["runs"]
        return {
            "events_replayed": daemon.stats.replayed,
            "recovery": daemon.stats.recovery,
            "runs_open": len(daemon.projector.open_work()),
            "expired_runs_left_out": len(expired),
        }
    finally:
        daemon.release()


def _swap_in(staging: DaemonHome, home: DaemonHome) -> int:
    """Put the staged read models in place; returns how many old read-model files went."""
    replaced = 0
    for folder in (home.metrics, home.index, home.quarantined_tables):
        replaced += sum(1 for _ in folder.rglob("*") if _.is_file()) if folder.is_dir() else 0
        _replace_folder(_staged(staging, home, folder), folder)
    for spec in (DAEMON_CHECKPOINT, ACCURACY_CHECKPOINT, STATUS, SCRUB_RECORD):  # parts are new
        path = spec.path(home)
        replaced += _replace_file(_staged(staging, home, path), path)
    staged_runs = set(staging.run_ids())
    for run_id in set(home.run_ids()) | staged_runs:
        for path in (home.audit(run_id), home.stage_lines(run_id), home.accuracy(run_id)):
            replaced += _replace_file(_staged(staging, home, path), path)
    return replaced


def _staged(staging: DaemonHome, home: DaemonHome, path: Path) -> Path:
    return staging.root / path.relative_to(home.root)


def _replace_folder(new: Path, old: Path) -> None:
    """`new` in place of `old`: the old one renamed aside, then deleted (the old tables go
    whole; a reader holds a snapshot whose files may vanish, and reads again)."""
    aside = old.with_name(f".{old.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)
    if old.exists():
        os.replace(old, aside)
    if new.exists():
        old.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, old)
    shutil.rmtree(aside, ignore_errors=True)


def _replace_file(new: Path, old: Path) -> int:
    """`new` in place of `old`, or `old` removed when the rebuild made none; 1 if `old` existed."""
    existed = old.exists()
    if new.exists():
        old.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, old)
    elif existed:
        old.unlink()
    return int(existed)
