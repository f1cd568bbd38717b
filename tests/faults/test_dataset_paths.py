"""Paths the daemon is asked to read (issue 12): a dataset that is a FIFO, a device or
somebody's secret. The accuracy worker neither blocks, nor grows, nor repeats what it read;
other runs keep getting their accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.groundtruth.spec import DatasetError, load_dataset
from tests.conftest import DaemonProcess, wait_for
from tests.groundtruth.builders import write_dataset
from tests.groundtruth.test_live_accuracy import final_accuracy, run_pipeline

SECRET = "root:$6$rounds=5000$sEcReTsAlT$hash:19000:0:99999:7:::\n: - [unbalanced\n"


def _hostile(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "dataset.yaml"
    os.mkfifo(fifo)
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    return {"fifo": fifo, "device": Path("/dev/zero"), "secret": secret, "folder": tmp_path}


@pytest.mark.parametrize("kind", ["fifo", "device", "secret", "folder"])
def test_a_dataset_path_that_is_no_dataset_is_refused_at_once_without_echo(tmp_path: Path, kind: str) -> None:
    path = _hostile(tmp_path)[kind]
    started = time.monotonic()
    with pytest.raises(DatasetError) as refused:
        load_dataset(path)
    assert time.monotonic() - started < 2
    assert "sEcReT" not in str(refused.value) and "root:" not in str(refused.value)


def test_a_hostile_dataset_costs_only_its_own_run(daemon: DaemonProcess, tmp_path: Path) -> None:
    import stagewatch

    (tmp_path / "hostile").mkdir()
    hostile = _hostile(tmp_path / "hostile")
    for kind in ("fifo", "device", "secret"):
        run = stagewatch.init(pipeline=f"evil-{kind}", home=daemon.home, dataset=hostile[kind])
        with run as evil, evil.stage("detection", sample_id="s0000") as stage:
            stage.result("s0000", {"boxes": [], "scores": [], "labels": []})
        accuracy = wait_for(lambda run=evil: _accuracy(daemon.home, run.id), 30)
        assert "not a regular file" in accuracy["dataset_problem"] or kind == "secret"
        text = json.dumps(accuracy)
        assert "sEcReT" not in text and "root:" not in text
    spec = write_dataset(tmp_path / "golden", 12)
    honest = run_pipeline(daemon, spec)
    assert final_accuracy(daemon.home, honest.id)["finished"]
    assert "sEcReT" not in daemon.log()
    for path in DaemonHome(daemon.home).logs.glob("*"):
        assert "sEcReT" not in path.read_text(errors="replace")


def _accuracy(home: Path, run_id: str) -> dict | None:
    try:
        document = json.loads(DaemonHome(home).accuracy(run_id).read_text())
    except (OSError, ValueError):
        return None
    return document if document.get("dataset_problem") else None


@pytest.mark.parametrize("kind", ["device", "fifo", "deep"])
def test_eval_coco_on_files_that_are_no_json_says_so(tmp_path: Path, kind: str) -> None:
    ground_truth = tmp_path / "gt.json"
    ground_truth.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    detections = {"device": Path("/dev/zero"), "fifo": tmp_path / "fifo", "deep": tmp_path / "deep.json"}[kind]
    if kind == "fifo":
        os.mkfifo(detections)
    if kind == "deep":
        detections.write_text("[" * 100_000 + "]" * 100_000)
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "eval", "coco", str(ground_truth), str(detections)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(detections) in result.stderr


def test_a_shared_home_reads_datasets_only_inside_its_roots(home: Path, tmp_path: Path) -> None:
    """`daemon.dataset_roots` (and, with group access, the home's datasets/ by default): a
    pipeline cannot make the daemon read files elsewhere."""
    allowed = write_dataset(tmp_path / "allowed", 12)
    outside = write_dataset(tmp_path / "outside", 12)
    daemon = DaemonProcess(home, env={"STAGEWATCH_DAEMON_DATASET_ROOTS": str(tmp_path / "allowed")}).start()
    try:
        inside_run = run_pipeline(daemon, allowed)
        assert final_accuracy(daemon.home, inside_run.id)["finished"]
        outside_run = run_pipeline(daemon, outside)
        refused = wait_for(lambda: _accuracy(daemon.home, outside_run.id), 30)
        assert (
            "must be inside" in refused["dataset_problem"] and str(tmp_path / "allowed") in refused["dataset_problem"]
        )
    finally:
        daemon.stop()
