"""Live accuracy through the real daemon and its accuracy worker: a pipeline streams results,
the worker judges them, and the running numbers at the end equal a batch recomputation
(`stagewatch eval --run`), pycocotools, and what `stagewatch rebuild` produces."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import zmq

import stagewatch
from stagewatch.daemon.query._readmodels import read_table
from tests.conftest import DaemonProcess, run_python, wait_for
from tests.groundtruth.builders import scene, write_dataset

NAMES = {1: "car", 2: "pedestrian"}


def sw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stagewatch.cli", *args], capture_output=True, text=True, timeout=120)


def detection(index: int) -> dict[str, Any]:
    labels = scene(index)
    boxes = [box for _, box in labels["boxes"]]
    names = [NAMES[kind] for kind, _ in labels["boxes"]]
    prediction = {"boxes": boxes, "scores": [0.9, 0.8], "labels": names}
    if index == 3:  # one object missed
        prediction = {"boxes": boxes[:1], "scores": [0.9], "labels": names[:1]}
    if index == 4:
        prediction["boxes"] = [[float("nan"), 0, 1, 1], boxes[1]]
    if index == 5:
        prediction["labels"] = ["car", "truck"]
    return prediction


def mask(index: int) -> np.ndarray:
    labels = scene(index)["mask"]
    if index == 6:
        return np.zeros((10, 10), np.uint8)  # wrong shape
    if index == 7:
        return np.zeros_like(labels)  # everything background
    return labels


def point_labels(index: int) -> np.ndarray:
    labels = scene(index)["labels"]
    if index == 8:
        return labels[:-1]  # one label short
    if index == 2:
        return np.roll(labels, 1)
    return labels


def run_pipeline(daemon: DaemonProcess, spec: Path, between: Any = None) -> stagewatch.Run:
    with stagewatch.init(pipeline="accuracy-test", home=daemon.home, dataset=spec) as run:
        for index in [*range(10), 100]:
            sample = f"s{index:04d}"
            with run.stage("detection", sample_id=sample) as st:
                st.result(sample, detection(index))
            with run.stage("segmentation", sample_id=sample) as st:
                st.result(sample, mask(index))
            with run.stage("lidar", sample_id=sample) as st:
                st.result(sample, point_labels(index))
            if index == 4 and between is not None:
                assert run.flush(10)
                between()
    assert run.flush(10)
    return run


def final_accuracy(home: Path, run_id: str, timeout_s: float = 30) -> dict[str, Any]:
    path = home / "runs" / run_id / "accuracy.json"

    def finished() -> dict[str, Any] | None:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return document if document["finished"] and _judged(document) == 33 else None

    return wait_for(finished, timeout_s)


def _judged(accuracy: dict[str, Any]) -> int:
    return sum(sum(stage["counts"].values()) for stage in accuracy["stages"].values())


def reference_coco(run_indices: list[int]) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for index in run_indices:
        images.append({"id": index + 1, "width": 32, "height": 24})
        for kind, box in scene(index)["boxes"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": kind,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        found = detection(index)
        for box, score, name in zip(found["boxes"], found["scores"], found["labels"], strict=True):
            category = {v: k for k, v in NAMES.items()}[name]
            results.append({"image_id": index + 1, "category_id": category, "bbox": box, "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "pedestrian"}],
        }
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return list(evaluation.stats)


@pytest.fixture
def dataset(home: Path) -> Path:
    return write_dataset(home.parent / "golden", 10)


def test_results_are_judged_live_and_equal_a_batch_recomputation(daemon: DaemonProcess, dataset: Path) -> None:
    updates: list[dict[str, Any]] = []
    subscriber = zmq.Context.instance().socket(zmq.SUB)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"accuracy")
    connected = subscriber.get_monitor_socket(zmq.EVENT_CONNECTED)
    subscriber.connect(f"ipc://{daemon.home / 'run' / 'accuracy.sock'}")
    assert connected.poll(30_000), "never connected to the accuracy feed"  # else early updates are lost
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            if subscriber.poll(100):
                updates.append(json.loads(subscriber.recv_multipart()[1]))

    listener = threading.Thread(target=listen)
    listener.start()
    try:
        run = run_pipeline(
            daemon, dataset, between=lambda: wait_for(lambda: len(updates) and _judged(updates[-1]) == 15)
        )
        accuracy = final_accuracy(daemon.home, run.id)
        wait_for(lambda: updates[-1]["finished"], 10)
    finally:
        stop.set()
        listener.join()
        subscriber.close(0)

    counts = {name: stage["counts"] for name, stage in accuracy["stages"].items()}
    assert counts == {
        "detection": {"correct": 7, "wrong": 1, "invalid": 2, "unlabeled": 1},
        "segmentation": {"correct": 8, "wrong": 1, "invalid": 1, "unlabeled": 1},
        "lidar": {"correct": 8, "wrong": 1, "invalid": 1, "unlabeled": 1},
    }
    boxes = accuracy["stages"]["detection"]["metrics"]
    assert (boxes["true_positives"], boxes["false_positives"], boxes["missed"]) == (15, 0, 1)
    assert boxes["recall"] == pytest.approx(15 / 16) and boxes["errors"] == {"missed": 1}
    judged = [0, 1, 2, 3, 6, 7, 8, 9]  # samples 4 and 5 were invalid, so not in the metrics
    expected = reference_coco(judged)
    assert [boxes["coco"][name] for name in boxes["coco"]] == pytest.approx(expected, abs=1e-9)
    assert accuracy["stages"]["segmentation"]["metrics"]["samples"] == 9

    # Live updates came while the run went on, the last one equal to the file.
    assert not updates[0]["finished"] and updates[-1] == accuracy

    batch = sw("eval", "--run", run.id[:8], "--home", str(daemon.home), "--json")
    assert batch.returncode == 0, batch.stderr
    assert json.loads(batch.stdout)["stages"] == accuracy["stages"]

    rows = read_table(daemon.home, "samples").to_pylist()
    assert len(rows) == 33 and {r["run_id"] for r in rows} == {run.id}
    by_key = {(r["stage"], r["sample_id"]): r for r in rows}
    assert by_key["detection", "s0003"]["status"] == "wrong" and by_key["detection", "s0003"]["error_types"] == [
        "missed"
    ]
    assert by_key["detection", "s0003"]["severity"] == pytest.approx(1 - 2 * 1 * 0.5 / 1.5, abs=1e-6)  # 1 - F1
    assert "NaN" in by_key["detection", "s0004"]["reason"] and "truck" in by_key["detection", "s0005"]["reason"]
    assert "shape" in by_key["segmentation", "s0006"]["reason"]
    assert by_key["segmentation", "s0007"]["error_types"] == ["mask_mismatch"]
    assert "39 labels for a cloud of 40 points" in by_key["lidar", "s0008"]["reason"]
    assert by_key["lidar", "s0002"]["error_types"] == ["point_label_mismatch"]
    assert by_key["lidar", "s0100"]["status"] == "unlabeled"
    assert by_key["segmentation", "s0001"]["prediction_path"].endswith("stages/segmentation/s0001.pred.npy")
    assert by_key["segmentation", "s0001"]["label_path"].endswith("masks/s0001.npy")

    # Rebuilding from the event log gives the same samples and accuracy.
    assert daemon.stop() == 0
    before = sorted(read_table(daemon.home, "samples").drop(["date"]).to_pylist(), key=lambda r: r["lsn"])
    rebuilt = sw("rebuild", "--home", str(daemon.home))
    assert rebuilt.returncode == 0, rebuilt.stderr
    after = sorted(read_table(daemon.home, "samples").drop(["date"]).to_pylist(), key=lambda r: r["lsn"])
    assert after == before
    assert json.loads((daemon.home / "runs" / run.id / "accuracy.json").read_text()) == accuracy


def test_a_killed_worker_is_restarted_and_nothing_counts_twice(daemon: DaemonProcess, dataset: Path) -> None:
    def kill_worker() -> None:
        (worker,) = [p for p in psutil.Process(daemon.process.pid).children() if "_accuracy" in " ".join(p.cmdline())]
        wait_for(lambda: (daemon.home / "metrics" / "samples").exists(), 10)  # it has written some rows
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)

    run = run_pipeline(daemon, dataset, between=kill_worker)
    accuracy = final_accuracy(daemon.home, run.id, timeout_s=60)
    assert accuracy["stages"]["detection"]["counts"] == {"correct": 7, "wrong": 1, "invalid": 2, "unlabeled": 1}
    keys = [(r["stage"], r["sample_id"]) for r in read_table(daemon.home, "samples").to_pylist()]
    assert len(keys) == len(set(keys)) == 33
    batch = json.loads(sw("eval", "--run", run.id, "--home", str(daemon.home), "--json").stdout)
    assert batch["stages"] == accuracy["stages"]


def test_a_run_with_an_unusable_dataset_says_why(daemon: DaemonProcess, home: Path) -> None:
    broken = home.parent / "broken.yaml"
    broken.write_text("name: broken\nstages:\n  detection: {labels: missing.json}\n")
    with stagewatch.init(pipeline="p", home=daemon.home, dataset=broken) as run, run.stage("detection") as st:
        st.result("s1", {"boxes": [[0, 0, 1, 1]], "scores": [1], "labels": [1]})
    assert run.flush(10)
    accuracy = wait_for(lambda: _finished(daemon.home / "runs" / run.id / "accuracy.json"), 20)
    assert "missing.json" in accuracy["dataset_problem"] and accuracy["results_without_ground_truth"] == {
        "detection": 1
    }
    unknown = sw("eval", "--run", "ffffffff", "--home", str(daemon.home))
    assert unknown.returncode == 1 and "no run with id" in unknown.stderr
    no_dataset = sw("eval", "--run", run.id, "--dataset", str(home.parent / "absent.yaml"), "--home", str(daemon.home))
    assert no_dataset.returncode == 2 and "absent.yaml" in no_dataset.stderr


def _finished(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if document["finished"] else None


def test_the_worker_goes_when_its_daemon_is_killed(daemon: DaemonProcess) -> None:
    def worker() -> psutil.Process | None:
        found = [p for p in psutil.Process(daemon.process.pid).children() if "_accuracy" in " ".join(p.cmdline())]
        return found[0] if found else None

    process = wait_for(worker, 20)
    daemon.kill()  # SIGKILL: no chance to stop its worker

    def gone() -> bool:
        try:
            return process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, 10)  # else two workers could share a home after a restart


def test_a_crashed_pipeline_s_accuracy_is_final_with_what_arrived(daemon: DaemonProcess, dataset: Path) -> None:
    code = f"""
import os, signal, stagewatch
run = stagewatch.init(pipeline="crashes", home={str(daemon.home)!r}, dataset={str(dataset)!r})
for index in range(3):
    with run.stage("detection", sample_id=f"s{{index:04d}}") as st:
        st.result(f"s{{index:04d}}", {{"boxes": [], "scores": [], "labels": []}})
assert run.flush(10)
print(run.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = run_python(code)
    run_id = result.stdout.split()[0]
    accuracy = wait_for(lambda: _finished(daemon.home / "runs" / run_id / "accuracy.json"), 30)  # client_lost
    assert accuracy["stages"]["detection"]["counts"] == {"correct": 0, "wrong": 3, "invalid": 0, "unlabeled": 0}


def test_samples_after_a_paused_owner_s_loss_are_still_judged(tmp_path: Path) -> None:
    """A pipeline stopped past the client timeout is declared lost, which ends its run for the
    accuracy fold too; when it sends again (the daemon withdraws the loss) its samples count."""
    from stagewatch.daemon.accuracy._accuracy import AccuracyProjection
    from stagewatch.daemon.projection._schema import validate_event

    golden = write_dataset(tmp_path / "golden", 2)
    run_id = "00000000-0000-0000-0000-00000000002a"
    empty = {"boxes": [], "scores": [], "labels": []}

    def event(kind: str, seq: int, client: str = "c1", **fields: Any) -> Any:
        envelope = {"v": 1, "type": kind, "client_id": client, "seq": seq, "ts_ns": 1, "run_id": run_id}
        return validate_event({**envelope, **fields})

    projection = AccuracyProjection(tmp_path)
    projection.apply(event("run_started", 1, pipeline="paused", dataset=str(golden)), 0)
    projection.apply(event("sample_result", 2, stage="detection", sample_id="s0000", prediction=empty), 1)
    projection.apply(event("client_lost", 1, client="daemon", lost_client_id="c1", last_seen_ns=1), 2)
    assert projection.release_finished() == [run_id]  # its accuracy.json is final as far as it goes
    projection.apply(event("sample_result", 3, stage="detection", sample_id="s0001", prediction=empty), 3)
    projection.apply(event("run_finished", 4, status="ok", duration_ms=1.0), 4)
    summary = projection.runs[run_id].summary(coco=False)
    assert summary["finished"] and sum(summary["stages"]["detection"]["counts"].values()) == 2
