"""Derived state files: what the daemon and the accuracy worker keep under the home so that
they start fast or finish what a crash interrupted (checkpoints, records, the run index).
None of them is a source of truth: each can be made again from the event log.

So a damaged one (0 bytes after a power cut, garbage, cut short, a directory in its place,
valid msgpack or JSON of the wrong shape) is never fatal. Its owner, on start, sets it aside
as `quarantine/derived/<file>.damaged-<UTC time>` (evidence, never read again), logs which file and what
was done, and goes on without it: the state it held is rebuilt from the event log. Readers
(`runs`, `doctor`, the dashboard) that meet a damaged file use nothing of it and move nothing.

`stagewatch doctor` reports a damaged file still in place, and every set-aside copy, and
exits 1 until the copies are deleted: the state was rebuilt, but someone should learn that a
file was damaged (a failing disk, a power cut) and look.

One `DerivedFile` per file (or folder) says how it is decoded and what shape it must have;
adding a state file is adding one to `DERIVED_FILES`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from loguru import logger

from stagewatch._names import is_run_id
from stagewatch.daemon.base._layout import DaemonHome

SET_ASIDE_MARK = ".damaged-"
# Errors that decoding or interpreting a damaged file raises: what msgpack and json raise on
# bad bytes (ValueError subclasses), and what code expecting a dict meets in another shape.
DAMAGE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, RecursionError)


class WrongShape(ValueError):
    """The file decodes, but not into what its owner writes."""


@dataclass(frozen=True)
class DerivedFile:
    """A file (or folder) of derived state; where it lies is the home's to say (`DaemonHome`)."""

    locate: Callable[[DaemonHome], Path]
    remedy: str  # what its owner does without it, for the messages
    decode: Callable[[bytes], Any] | None  # None: a folder, checked by `check` alone
    check: Callable[[Any, DaemonHome], None]  # raises WrongShape (or any DAMAGE_ERRORS) on a wrong shape

    def path(self, home: DaemonHome) -> Path:
        return self.locate(home)

    def relative(self, home: DaemonHome) -> str:
        return self.path(home).relative_to(home.root).as_posix()


def _msgpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _json(data: bytes) -> Any:
    return json.loads(data)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise WrongShape(what)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_mapping(value: Any, fields: dict[str, type | tuple[type, ...]], required: tuple[str, ...] = ()) -> None:
    _expect(isinstance(value, dict), f"expected a map, found {type(value).__name__}")
    for name in required:
        _expect(name in value, f"no {name!r}")
    for name, kind in fields.items():
        if name in value:
            _expect(isinstance(value[name], kind), f"{name!r} is a {type(value[name]).__name__}")


def check_daemon_checkpoint(state: Any, home: DaemonHome) -> None:
    """The daemon's checkpoint, as deep as its maps go (a field of a run's state is checked as
    the state is loaded: `Daemon.recover` sets the file aside when loading it fails)."""
    _check_mapping(
        state,
        {"lsn": int, "projector": dict, "dedup": dict, "daemon_seq": int, "stage_bytes": dict, "stage_lines": dict},
        ("lsn",),
    )
    _expect(_is_count(state["lsn"]), "'lsn' is no log position")
    projector, dedup = state.get("projector", {}), state.get("dedup", {})
    _check_mapping(projector, {"runs": dict, "closed": dict, "late_events": int, "foreign": int})
    _expect(all(isinstance(run, dict) for run in projector.get("runs", {}).values()), "a run's state is no map")
    _check_mapping(dedup, {"watermark": dict, "above": dict})
    _expect(all(isinstance(seen, list) for seen in dedup.get("above", {}).values()), "a client's seqs are no list")
    _expect(all(_is_count(size) for size in state.get("stage_bytes", {}).values()), "a stage_bytes is no size")
    _expect(all(_is_count(count) for count in state.get("stage_lines", {}).values()), "a stage_lines is no count")


def check_accuracy_checkpoint(state: Any, home: DaemonHome) -> None:
    _check_mapping(state, {"lsn": int, "open_runs": dict, "committed": int}, ("lsn",))
    _expect(_is_count(state["lsn"]), "'lsn' is no log position")
    _expect(state.get("committed", -1) >= -1, "'committed' is no log position")
    for run_id, lsn in state.get("open_runs", {}).items():
        _expect(isinstance(run_id, str) and is_run_id(run_id) and _is_count(lsn), "an open run is no (run id, lsn)")


def check_scrub_record(found: Any, home: DaemonHome) -> None:
    _check_mapping(found, {"segments": dict, "parts": dict, "checked": dict, "last_segment": str})
    for name in ("segments", "parts"):
        _expect(all(isinstance(d, dict) for d in found.get(name, {}).values()), f"a damage in {name!r} is no map")


def check_status(status: Any, home: DaemonHome) -> None:
    fields = {
        **{"stats": dict, "updated_at": (int, float), "pid": int, "endpoint": str, "active_runs": list},
        **{"disk": dict, "stopped_at": (int, float), "rebuilding": dict, "tables": list},  # what readers use of it too
    }
    _check_mapping(status, fields)


def check_lock_file(content: Any, home: DaemonHome) -> None:
    """A lock file's content is never read: only a file that is no regular file is damaged."""


def check_folder(folder: Any, home: DaemonHome) -> None:
    """A folder of derived state: only one that is no folder is damaged (its files are checked
    one by one)."""


def check_run_index(folder: Any, home: DaemonHome) -> None:
    """The run index: bucket files of whole "run_id<TAB>date" lines (an appended write is whole
    lines, so a bucket that is empty or ends inside a line was cut short)."""
    for entry in os.scandir(home.run_index):
        _expect(entry.is_file(follow_symlinks=False), f"{entry.name} is not a file")
        if entry.name == "complete":
            continue
        _expect(entry.name.endswith(".tsv"), f"{entry.name} is no bucket")
        text = Path(entry.path).read_bytes().decode()
        _expect(text.endswith("\n"), f"{entry.name} is empty or ends inside a line")
        _expect(all(line.count("\t") == 1 for line in text.splitlines()), f"{entry.name} holds a line of no pair")


STATE_FOLDER = DerivedFile(lambda home: home.state, "the state files in it are made again", None, check_folder)
INDEX_FOLDER = DerivedFile(lambda home: home.index, "the run index is made again", None, check_folder)
DAEMON_CHECKPOINT = DerivedFile(
    lambda home: home.checkpoint(),
    "replaying the whole event log into the read models",
    _msgpack,
    check_daemon_checkpoint,
)
ACCURACY_CHECKPOINT = DerivedFile(
    lambda home: home.checkpoint("accuracy.msgpack"),
    "judging every run's sample results in the event log again",
    _msgpack,
    check_accuracy_checkpoint,
)
SCRUB_RECORD = DerivedFile(
    lambda home: home.scrub,
    "damage it recorded is found again by the next scrub (`stagewatch doctor --scrub`: now)",
    _json,
    check_scrub_record,
)
STATUS = DerivedFile(lambda home: home.status, "the daemon writes it again at its next flush", _json, check_status)
ACCURACY_LOCK = DerivedFile(
    lambda home: home.accuracy_lock, "the accuracy worker makes a new one", None, check_lock_file
)
RUN_INDEX = DerivedFile(lambda home: home.run_index, "the daemon indexes the tables again", None, check_run_index)

# Folders before the files in them: a file in a folder's place hides every file inside.
DERIVED_FILES = (
    STATE_FOLDER,
    INDEX_FOLDER,
    DAEMON_CHECKPOINT,
    ACCURACY_CHECKPOINT,
    SCRUB_RECORD,
    STATUS,
    ACCURACY_LOCK,
    RUN_INDEX,
)
# What the daemon sets aside on start (under its lock; its checkpoint as it loads it, read once);
# the accuracy worker owns its own two.
DAEMON_FILES = (STATE_FOLDER, INDEX_FOLDER, SCRUB_RECORD, STATUS, RUN_INDEX)
WORKER_FILES = (ACCURACY_LOCK, ACCURACY_CHECKPOINT)
FOLDERS = frozenset({STATE_FOLDER, INDEX_FOLDER, RUN_INDEX})


def _read(spec: DerivedFile, home: DaemonHome) -> tuple[Any, str | None]:
    """(content, None), (None, None) when there is none, or (None, what is wrong)."""
    path = spec.path(home)
    try:
        if spec in FOLDERS:
            if not path.exists():
                return None, None
            if not path.is_dir():  # (a link to a folder elsewhere is one: a home may span disks)
                return None, "not a folder"
            spec.check(path, home)
            return path, None
        if not path.exists() and not path.is_symlink():
            return None, None
        if not path.is_file():
            return None, "a folder (or other non-file) in its place" if path.is_dir() else "not a regular file"
        data = path.read_bytes()
        if spec.decode is None:
            return data, None
        if not data:
            return None, "0 bytes (a power cut during its write?)"
        content = spec.decode(data)
        spec.check(content, home)
        return content, None
    except FileNotFoundError:  # removed as we looked (a retention pass finishing): none
        return None, None
    except (OSError, UnicodeDecodeError, *DAMAGE_ERRORS) as error:
        return None, describe(error)


def describe(error: BaseException) -> str:
    """What is wrong, in words: the wrong shape as found, else the decoder's error."""
    if isinstance(error, WrongShape):
        return f"wrong shape: {error}"
    return f"unreadable: {type(error).__name__}: {error}"[:300]


def peek(spec: DerivedFile, home: DaemonHome) -> Any | None:
    """A reader's read: the content, or None when it is missing or damaged (nothing moved)."""
    return _read(spec, home)[0]


def problem(spec: DerivedFile, home: DaemonHome) -> str | None:
    """What is wrong with the file as it is now, or None."""
    return _read(spec, home)[1]


def load(spec: DerivedFile, home: DaemonHome) -> Any | None:
    """The owner's read: the content; a damaged file is set aside and None returned."""
    content, wrong = _read(spec, home)
    if wrong is not None:
        set_aside(spec, home, wrong)
    return content


def set_aside(spec: DerivedFile, home: DaemonHome, wrong: str) -> Path:
    """Move the damaged file (or folder) out of its owner's way, to
    quarantine/derived/{its path}.damaged-{time} (where a rebuild, which replaces index/ and
    state/ files, leaves it), and say so; returns where it went."""
    path = spec.path(home)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = copy_path(home, spec, stamp)
    serial = 1
    while aside.exists() or aside.is_symlink():  # damaged twice in one second
        serial += 1
        aside = copy_path(home, spec, f"{stamp}-{serial}")
    aside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, aside)  # a rename, or a copy where state/ is a link to another disk
    logger.error(
        "{} is damaged ({}): set aside as {}, rebuilding from the event log: {}", path, wrong, aside, spec.remedy
    )
    return aside


def copy_path(home: DaemonHome, spec: DerivedFile, stamp: str) -> Path:
    return home.quarantined_state / f"{spec.relative(home)}{SET_ASIDE_MARK}{stamp}"


def repair(specs: tuple[DerivedFile, ...], home: DaemonHome) -> list[Path]:
    """Set aside each of `specs` that is damaged (its owner, on start); where they went."""
    moved = []
    for spec in specs:
        wrong = problem(spec, home)
        if wrong is not None:
            moved.append(set_aside(spec, home, wrong))
    return moved


def clear_way(spec: DerivedFile, home: DaemonHome) -> None:
    """Before its owner replaces the file: a folder (or other non-file) put in its place while
    the owner runs is set aside, so the rename succeeds (it would fail on every write, and a
    refused write holds back every write queued after it)."""
    path = spec.path(home)
    if path.exists() and not path.is_file():
        set_aside(spec, home, "a folder (or other non-file) in its place")


def set_aside_copies(home: DaemonHome) -> list[Path]:
    """Every damaged file set aside and not yet deleted, oldest first."""
    found = home.quarantined_state.rglob(f"*{SET_ASIDE_MARK}*") if home.quarantined_state.is_dir() else []
    copies = [
        path for path in found if SET_ASIDE_MARK not in path.parent.relative_to(home.quarantined_state).as_posix()
    ]
    return sorted(copies, key=lambda path: path.name.rsplit(SET_ASIDE_MARK, 1)[-1])


def damaged_in_place(home: DaemonHome) -> list[tuple[DerivedFile, str]]:
    """The derived files damaged now (their owner sets them aside when it next starts)."""
    return [(spec, wrong) for spec in DERIVED_FILES if (wrong := problem(spec, home)) is not None]
