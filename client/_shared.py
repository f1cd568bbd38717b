"""Folders shared with the daemon's group (the systemd service runs as its own user).

A daemon started with --group-access sets the setgid bit on the home's runs/ and spool/
folders. What a pipeline creates below them is then made group-writable too, so the
daemon can write audit trails into run folders and ingest and delete spool files.
"""

from __future__ import annotations

import stat
from pathlib import Path

SHARED_FOLDER_MODE = 0o2770


def is_shared(folder: Path) -> bool:
    try:
        return bool(folder.stat().st_mode & stat.S_ISGID)
    except FileNotFoundError:
        return False


def make_dirs(folder: Path) -> None:
    """mkdir -p, giving new folders the group's access when their parent is shared."""
    if folder.is_dir():
        return
    make_dirs(folder.parent)
    folder.mkdir(exist_ok=True)
    if is_shared(folder.parent):
        folder.chmod(SHARED_FOLDER_MODE)


def file_mode(folder: Path) -> int:
    return 0o660 if is_shared(folder) else 0o600
