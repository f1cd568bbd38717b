"""Empty point clouds (a frame whose every point was filtered out) as ground truth and as
predictions: read as 0 points everywhere, judged by what they miss, never an error."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

import stagewatch
from stagewatch._saver import write_ply
from stagewatch.daemon.groundtruth.formats import load_point_attributes, load_point_labels, load_points
from stagewatch.daemon.query._readmodels import read_table
from tests.conftest import DaemonProcess, wait_for
from tests.groundtruth.builders import scene, write_dataset
from tests.groundtruth.test_datasets import validate
from tests.groundtruth.test_live_accuracy import _finished

EMPTY = {"points": np.zeros((0, 3), np.float32), "label": np.zeros(0, np.int32)}


def write_empty_pcd(path: Path, data: str) -> None:
    """A PCD whose header declares 0 points (Open3D refuses to write or read one)."""
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z label\nSIZE 4 4 4 4\n"
        f"TYPE F F F U\nCOUNT 1 1 1 1\nWIDTH 0\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 0\nDATA {data}\n"
    ).encode()
    body = struct.pack("<II", 0, 0) if data == "binary_compressed" else b""  # compressed, raw sizes
    path.write_bytes(header + body)


@pytest.mark.parametrize("data", ["ascii", "binary", "binary_compressed"])
def test_a_pcd_of_0_points_is_an_empty_cloud(tmp_path: Path, data: str) -> None:
    path = tmp_path / "empty.pcd"
    write_empty_pcd(path, data)
    cloud = load_point_labels(path)
    assert cloud.positions.shape == (0, 3) and cloud.labels.shape == (0,)
    positions, labels = load_points(path)
    assert positions.shape == (0, 3) and labels is not None and len(labels) == 0
    assert load_point_attributes(path) == {}
    garbage = tmp_path / "garbage.pcd"
    for text in (
        b"POINTS 0\nnot a pcd\n",  # no DATA line: not a header
        path.read_bytes().replace(b"WIDTH 0", b"WIDTH 5"),  # a header that contradicts itself
    ):
        garbage.write_bytes(text)
        with pytest.raises(ValueError, match="no points could be read"):
            load_points(garbage)


def test_a_dataset_with_empty_label_clouds_validates(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path, 3)
    write_ply(tmp_path / "clouds" / "s0000.ply", EMPTY)
    write_empty_pcd(tmp_path / "clouds" / "s0002.pcd", "binary")
    code, report = validate(spec)
    assert code == 0 and report["ok"], report
    assert report["stages"]["lidar"]["formats"] == {".ply": 2, ".pcd": 1}


def test_empty_clouds_are_judged_by_the_live_worker(daemon: DaemonProcess, home: Path) -> None:
    """Both empty: nothing to get wrong (correct). An empty prediction of a labelled cloud
    misses every point, and points predicted on an empty cloud are all wrong (both: wrong,
    mIoU 0, counted in the metrics)."""
    folder = home.parent / "golden"
    spec = write_dataset(folder, 3)
    write_ply(folder / "clouds" / "s0000.ply", EMPTY)
    write_empty_pcd(folder / "clouds" / "s0002.pcd", "ascii")
    labelled = scene(0)
    predictions = {
        "s0000": EMPTY,
        "s0001": EMPTY,
        "s0002": {"points": labelled["points"], "label": labelled["labels"]},
    }
    with stagewatch.init(pipeline="empty", home=daemon.home, dataset=spec) as run:
        for sample, prediction in predictions.items():
            with run.stage("lidar", sample_id=sample) as st:
                st.result(sample, prediction)
    assert run.flush(10)
    accuracy = wait_for(lambda: _finished(daemon.home / "runs" / run.id / "accuracy.json"), 30)
    lidar = accuracy["stages"]["lidar"]
    assert lidar["counts"] == {"correct": 1, "wrong": 2, "invalid": 0, "unlabeled": 0}
    assert lidar["metrics"]["labeled"] == 80 and lidar["metrics"]["miou"] == 0.0
    assert (
        lidar["metrics"]["confusion"]["unmatched"]
        == np.bincount(np.concatenate([scene(1)["labels"], labelled["labels"]]), minlength=3).tolist()
    )
    rows = {r["sample_id"]: r for r in read_table(daemon.home, "samples").to_pylist()}
    assert rows["s0000"]["status"] == "correct"
    for sample in ("s0001", "s0002"):
        assert rows[sample]["status"] == "wrong" and rows[sample]["severity"] == 1.0
        assert rows[sample]["error_types"] == ["point_label_mismatch"]
