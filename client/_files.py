"""Files a person names (a config, a dataset, labels, results): opened only if they are
regular files of a bounded size. A FIFO would block the reader forever, a device never
end; checked before anything reads them."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotARegularFile(ValueError):
    """The path names something that is not a readable regular file of an allowed size."""


def regular_file(path: Path, max_bytes: int) -> Path:
    """`path`, if it is a regular file (symlinks followed) of at most `max_bytes`."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        raise NotARegularFile(f"{str(path)[:300]}: no such file") from None
    except OSError as error:
        raise NotARegularFile(f"{str(path)[:300]}: cannot read ({error.strerror})") from None
    if not stat.S_ISREG(found.st_mode):
        raise NotARegularFile(f"{str(path)[:300]}: not a regular file (a FIFO, a device or a folder)")
    if found.st_size > max_bytes:
        raise NotARegularFile(f"{str(path)[:300]}: {found.st_size:,} bytes, over the {max_bytes:,} allowed here")
    return path
