"""Damaged derived state never bricks a home: every state file the daemon or the accuracy
worker derives, damaged each way a disk or a person damages it, is set aside with a message
naming it, its state is rebuilt from the event log (equal to `stagewatch rebuild`), the
worker judges runs again, `runs` and `doctor` show no traceback, and `doctor` exits 1 until
the set-aside copy is deleted."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

import stagewatch
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.query._readmodels import read_table, to_rows
from tests.conftest import DaemonProcess, sw, wait_for
from tests.daemon.test_rebuild import _read_models
from tests.groundtruth.builders import write_dataset
from tests.groundtruth.test_live_accuracy import final_accuracy, run_pipeline


def _bucket(home: Path) -> Path:
    return sorted(DaemonHome(home).run_index.glob("*.tsv"))[0]


# file -> (where it is, its valid content when the daemon leaves none, its wrong shape)
FILES: dict[str, tuple[Callable[[Path], Path], Callable[[Path], bytes] | None, bytes]] = {
    "checkpoint": (lambda h: DaemonHome(h).checkpoint(), None, msgpack.packb([1, 2, 3])),
    "checkpoint-runs": (
        lambda h: DaemonHome(h).checkpoint(),
        None,
        msgpack.packb({"lsn": 5, "projector": {"runs": [1]}}),
    ),
    # Right as far as doctor looks; a run's state fails to load, or the lsn lies past the log's
    # end (found when the daemon starts).
    "checkpoint-past-the-log": (lambda h: DaemonHome(h).checkpoint(), None, msgpack.packb({"lsn": 2**63})),
    # An lsn inside the log's first record (a flipped bit): replayed from there, the record was
    # skipped and the intact log reported damaged.
    "checkpoint-inside-a-record": (lambda h: DaemonHome(h).checkpoint(), None, msgpack.packb({"lsn": 1})),
    "checkpoint-run-state": (
        lambda h: DaemonHome(h).checkpoint(),
        None,
        msgpack.packb({"lsn": 5, "projector": {"runs": {"r": {"x": 1}}}}),
    ),
    "accuracy-checkpoint": (
        lambda h: DaemonHome(h).checkpoint("accuracy.msgpack"),
        None,
        msgpack.packb({"lsn": 0, "open_runs": {"../x": "y"}}),
    ),
    "scrub-record": (lambda h: DaemonHome(h).scrub, None, json.dumps({"segments": [1], "parts": "x"}).encode()),
    "status": (lambda h: DaemonHome(h).status, None, json.dumps([{"active_runs": 1}]).encode()),
    "run-index-bucket": (_bucket, None, b"no tab on this line\n"),
}
DAMAGES = ("empty", "garbage", "truncated", "directory", "wrong-shape")
ONLY_WRONG_SHAPE = {
    "checkpoint-runs",
    "checkpoint-run-state",
    "checkpoint-past-the-log",
    "checkpoint-inside-a-record",
}  # their other damages are "checkpoint"'s
FOUND_AT_START = {"checkpoint-run-state", "checkpoint-past-the-log", "checkpoint-inside-a-record"}
EVERY_CASE = [(name, how) for name in FILES for how in DAMAGES if name not in ONLY_WRONG_SHAPE or how == "wrong-shape"]
# In CI: the daemon's checkpoint garbage and of every wrong shape, every other file one way (each
# way at least once among them); STAGEWATCH_FAULTS_LONG=1: every file every way (about 35 daemon lives).
SHORT_CASES = [
    *((name, how) for name, how in EVERY_CASE if name.startswith("checkpoint") and how in ("garbage", "wrong-shape")),
    ("accuracy-checkpoint", "empty"),
    ("accuracy-checkpoint", "wrong-shape"),
    ("scrub-record", "garbage"),
    ("status", "directory"),
    ("run-index-bucket", "truncated"),
]
CASES = EVERY_CASE if os.environ.get("STAGEWATCH_FAULTS_LONG") == "1" else SHORT_CASES


def damage(path: Path, how: str, valid: bytes, wrong_shape: bytes) -> None:
    if path.is_file():
        valid = path.read_bytes()
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "directory":
        path.mkdir()
        (path / "inside").write_bytes(b"x")
        return
    data = {
        "empty": b"",
        "garbage": b"\xc1\xff\x00garbage\xde\xad" * 7,
        "truncated": valid[: len(valid) // 2 - 1],  # inside a line of a run index bucket too
        "wrong-shape": wrong_shape,
    }[how]
    path.write_bytes(data)


def _samples(home: Path) -> list[dict[str, Any]]:
    rows = to_rows(read_table(home, "samples").drop(["date"]))
    return sorted(rows, key=lambda r: (r["run_id"], r["stage"], r["sample_id"]))


def _everything(home: Path) -> dict[str, Any]:
    accuracy = {p.parent.name: json.loads(p.read_text()) for p in home.glob("runs/*/accuracy.json")}
    return {**_read_models(home), "samples": _samples(home), "accuracy": accuracy}


def _copies(home: Path, path: Path) -> list[Path]:
    """Where `path`'s damaged copies were set aside."""
    folder = DaemonHome(home).quarantined_state / path.relative_to(home).parent
    return list(folder.glob(f"{path.name}.damaged-*"))


def _doctor(home: Path) -> tuple[int, dict[str, Any]]:
    result = sw("doctor", "--home", str(home), "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, {check["name"]: check for check in json.loads(result.stdout)["checks"]}


@pytest.fixture
def dataset(home: Path) -> Path:
    return write_dataset(home.parent / "golden", 10)


@pytest.mark.parametrize(("name", "how"), CASES)
def test_a_damaged_state_file_is_set_aside_and_rebuilt(
    daemon: DaemonProcess, dataset: Path, name: str, how: str
) -> None:
    where, template, wrong_shape = FILES[name]
    first = run_pipeline(daemon, dataset)
    final_accuracy(daemon.home, first.id)
    daemon.audit(first.id)
    assert daemon.stop() == 0
    path = where(daemon.home)
    damage(path, how, template(daemon.home) if template else b"", wrong_shape)
    if name == "run-index-bucket":  # the index is set aside and made again as a whole
        path = DaemonHome(daemon.home).run_index
    code, checks = _doctor(daemon.home)
    if name not in FOUND_AT_START:  # found before any start
        assert code == 1 and str(path) in checks["state"]["detail"], checks["state"]

    daemon.start()
    wait_for(lambda: "set aside as" in daemon.log(), 30)
    assert f"{path} is damaged" in daemon.log()
    second = run_pipeline(daemon, dataset)  # the worker judges runs again
    final_accuracy(daemon.home, second.id)
    daemon.audit(second.id)
    runs = sw("runs", "--home", str(daemon.home), "--json")
    assert runs.returncode == 0 and "Traceback" not in runs.stderr, runs.stderr
    assert {first.id, second.id} <= {run["run_id"] for run in json.loads(runs.stdout)}
    code, checks = _doctor(daemon.home)
    copies = _copies(daemon.home, path)
    assert len(copies) == 1 and code == 1 and str(copies[0]) in checks["state"]["detail"]
    assert checks["daemon"]["ok"] and checks["event log"]["ok"], checks["event log"]
    assert daemon.stop() == 0

    live = _everything(daemon.home)
    rebuilt = sw("rebuild", "--home", str(daemon.home), "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert _everything(daemon.home) == live
    copies[0].unlink() if copies[0].is_file() else shutil.rmtree(copies[0])
    code, checks = _doctor(daemon.home)
    assert checks["state"]["ok"], checks["state"]


def test_doctor_says_the_daemon_s_socket_is_gone(daemon: DaemonProcess) -> None:
    code, checks = _doctor(daemon.home)
    assert checks["daemon"]["ok"]
    os.unlink(daemon.socket_path)
    code, checks = _doctor(daemon.home)
    assert code == 1 and not checks["daemon"]["ok"]
    assert str(daemon.socket_path) in checks["daemon"]["detail"] and "restart" in checks["daemon"]["detail"]


@pytest.mark.parametrize("folder", ["state", "index"])
def test_a_file_in_place_of_a_state_folder_is_set_aside(daemon: DaemonProcess, folder: str) -> None:
    with stagewatch.init(pipeline="p", home=daemon.home) as run, run.stage("s"):
        pass
    daemon.audit(run.id)
    assert daemon.stop() == 0
    live = _read_models(daemon.home)
    path = daemon.home / folder
    shutil.rmtree(path)
    path.write_bytes(b"")
    daemon.start()
    wait_for(lambda: "set aside as" in daemon.log(), 30)
    assert f"{path} is damaged" in daemon.log()
    wait_for(lambda: (daemon.home / "state" / "status.json").is_file(), 30)
    code, checks = _doctor(daemon.home)
    assert code == 1 and str(_copies(daemon.home, path)[0]) in checks["state"]["detail"] and checks["daemon"]["ok"]
    assert daemon.stop() == 0
    assert _read_models(daemon.home) == live
