"""Fixtures of the fault suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 24 MiB tmpfs as the home: a real full disk, not a simulated one."""
    if os.geteuid() != 0:
        pytest.fail("the disk-full scenario mounts a tmpfs and needs root (CI runs as root)")
    base = Path(tempfile.mkdtemp(prefix="sw-full-", dir="/tmp"))
    mount = base / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def fill_disk(disk: Path, leave_bytes: int = 0) -> Path:
    """Fill `disk` with one file to the last byte, then give `leave_bytes` back; the file."""
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    if leave_bytes:
        os.truncate(filler, max(0, filler.stat().st_size - leave_bytes))
    return filler
