"""Validation of the names that become paths: run ids, stage names, file names.

A name from a pipeline or from the wire must never let a path escape the home, so the
rules are positive (what is allowed) rather than a list of what is forbidden.
"""

from __future__ import annotations

import re
import uuid

MAX_NAME_CHARS = 128
# The one statement of each rule: the client checks with these, and the daemon's event
# schema (stagewatch.daemon.projection._schema) checks the same patterns, once per distinct value.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
RUN_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
CLIENT_ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)
_NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


def check_name(value: object, what: str) -> str:
    """Return `value` if it is a safe single path component, else raise ValueError.

    Allowed: letters, digits, '_', '-', '.', starting with a letter or digit, at most
    128 characters. That excludes '/', '..', NUL, whitespace and absolute paths.
    """
    if not isinstance(value, str):
        raise TypeError(f"expected {what} as str, got {type(value).__name__}")
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"expected {what} of letters, digits, '_', '-' or '.' (starting with a letter or "
            f"digit, at most {MAX_NAME_CHARS} characters), got {value!r}"
        )
    return value


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def name_part(value: str) -> str:
    """`value` as a part of a file name: each character a name may not hold becomes '_'."""
    return _NOT_IN_A_NAME.sub("_", value)


def sample_name(filename: str, sample_id: str | None) -> str | None:
    """`filename` (a checked name with an extension) with the sample id before its extension
    (`overlay.png`, `frame_001` -> `overlay.frame_001.png`), the id as a name part cut to fit
    MAX_NAME_CHARS; None without a sample id or where the name already holds it."""
    stem, extension = _split(filename)
    part = name_part(sample_id or "")[: MAX_NAME_CHARS - len(stem) - len(extension) - 1]
    if not part or part in stem.split("."):
        return None
    return f"{stem}.{part}{extension}"


def counted_name(filename: str, counter: int) -> str:
    """`filename` with `counter` before its extension (`overlay.2.png`), the stem cut to fit."""
    stem, extension = _split(filename)
    number = str(counter)
    return f"{stem[: MAX_NAME_CHARS - len(number) - len(extension) - 1]}.{number}{extension}"


def _split(filename: str) -> tuple[str, str]:
    stem, dot, extension = filename.rpartition(".")
    return (stem, dot + extension) if dot else (filename, "")


def is_run_id(value: object) -> bool:
    try:
        check_run_id(value)
    except (TypeError, ValueError):
        return False
    return True


def check_run_id(value: object) -> str:
    """Return `value` if it is a canonical UUID string (what `uuid.uuid4()` prints)."""
    if not isinstance(value, str):
        raise TypeError(f"expected run id as str, got {type(value).__name__}")
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"expected run id as a UUID string, got {value!r}") from None
    if canonical != value:
        raise ValueError(f"expected run id in canonical lower-case form {canonical!r}, got {value!r}")
    return value
