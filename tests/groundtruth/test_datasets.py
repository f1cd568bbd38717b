"""Golden dataset files and label loaders, through `stagewatch gt validate` as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stagewatch.daemon.groundtruth.formats import LabelError, load_mask, load_point_labels
from stagewatch.daemon.groundtruth.spec import DatasetError, load_dataset
from tests.groundtruth.builders import CLASSES, ply_with_int64_labels, write_dataset


def validate(spec: Path) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "gt", "validate", str(spec), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, json.loads(result.stdout) if result.stdout else {"stderr": result.stderr}


def eval_coco(truth: Path, detections: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "stagewatch.cli", "eval", "coco", str(truth), str(detections)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_mixed_format_dataset_validates_with_counts_per_format(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path, 12)
    (tmp_path / "masks" / "s0005.npy").unlink()  # a sample without a mask: unlabeled, not an error
    code, report = validate(spec)
    assert code == 0 and report["ok"] and report["samples"] == 12
    assert report["stages"]["detection"]["formats"] == {".json": 12}
    assert report["stages"]["segmentation"]["formats"] == {".png": 6, ".npy": 5}
    assert report["stages"]["segmentation"]["missing"] == ["s0005"]
    assert report["stages"]["lidar"]["formats"] == {".ply": 8, ".pcd": 4}


def test_bad_label_files_are_named_and_counted(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path, 6)
    from PIL import Image

    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / "masks" / "s0000.png")  # RGB, not classes
    np.save(tmp_path / "masks" / "s0001.npy", np.zeros((24, 32), np.float32))  # float class ids
    (tmp_path / "clouds" / "s0001.ply").write_bytes(
        b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n"
        b"property float y\nproperty float z\nend_header\n0 0 0\n"
    )
    np.save(tmp_path / "masks" / "s0003.npy", np.full((24, 32), 7))  # class 7 of 3
    code, report = validate(spec)
    assert code == 1 and not report["ok"]
    problems = {p["sample_id"]: p["error"] for p in report["stages"]["segmentation"]["invalid"]}
    assert "s0000.png" in problems["s0000"] and "single-channel" in problems["s0000"]
    assert "s0001.npy" in problems["s0001"] and "float32" in problems["s0001"]
    assert "label 7 is not a class index" in problems["s0003"]
    (lidar,) = report["stages"]["lidar"]["invalid"]
    assert lidar["sample_id"] == "s0001" and "label" in lidar["error"] and "s0001.ply" in lidar["error"]


def test_a_broken_coco_file_is_reported_once(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path, 4, listed=["s0000", "s0001"])
    (tmp_path / "coco.json").write_text('{"images": [], "categories": [], "annotations": [{"bbox": 3}]}')
    code, report = validate(spec)
    (problem,) = report["stages"]["detection"]["invalid"]
    assert code == 1 and "coco.json" in problem["error"] and "annotations[0]" in problem["error"]


DUPLICATES = {
    # what is used twice -> (how the file is changed, what the refusal names)
    "category": (
        lambda coco: coco["categories"].append({"id": 2, "name": "bicycle"}),
        ["category id 2 is used twice", "'pedestrian' (categories[1])", "'bicycle' (categories[2])"],
    ),
    "image": (
        lambda coco: coco["images"].append({"id": 2, "file_name": "extra.jpg", "width": 32, "height": 24}),
        ["image id 2 is used twice", "'s0001.jpg' (images[1])", "'extra.jpg' (images[4])"],
    ),
    "annotation": (
        lambda coco: coco["annotations"].append({**coco["annotations"][0], "bbox": [1, 1, 2, 2]}),
        ["annotation id 1 is used twice", "annotations[0] and annotations[8]"],
    ),
}


@pytest.mark.parametrize("duplicated", list(DUPLICATES))
def test_an_id_used_twice_in_a_coco_file_is_refused_naming_both(tmp_path: Path, duplicated: str) -> None:
    """pycocotools keeps the last of two entries with one id and says nothing; `gt validate` and
    `eval coco` refuse the file, naming the id and both entries."""
    spec = write_dataset(tmp_path, 4)
    coco = json.loads((tmp_path / "coco.json").read_text())
    change, said = DUPLICATES[duplicated]
    change(coco)
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    code, report = validate(spec)  # the samples come from the COCO file: the dataset cannot be read
    assert code == 2 and "coco.json" in report["stderr"] and "Traceback" not in report["stderr"]
    assert all(part in report["stderr"] for part in said), report["stderr"]
    (tmp_path / "detections.json").write_text("[]")
    result = eval_coco(tmp_path / "coco.json", tmp_path / "detections.json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert all(part in result.stderr for part in said), result.stderr


def test_coco_ids_that_are_unique_or_absent_pass(tmp_path: Path) -> None:
    """Annotations without ids (pycocotools' loadRes numbers results itself) and detections whose
    ids repeat are not refused: nothing is lost with them."""
    spec = write_dataset(tmp_path, 4)
    coco = json.loads((tmp_path / "coco.json").read_text())
    for annotation in coco["annotations"]:
        del annotation["id"]
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    code, report = validate(spec)
    assert code == 0 and report["ok"], report
    detections = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}] * 2
    (tmp_path / "detections.json").write_text(json.dumps(detections))
    result = eval_coco(tmp_path / "coco.json", tmp_path / "detections.json")
    assert result.returncode == 0, result.stderr


def test_int64_labels_in_ply_are_cast_when_they_fit_and_explained_when_not(tmp_path: Path) -> None:
    ply_with_int64_labels(tmp_path / "fits.ply", [0, 1, 2, 1])
    cloud = load_point_labels(tmp_path / "fits.ply")
    assert cloud.labels.dtype == np.int32 and cloud.labels.tolist() == [0, 1, 2, 1]
    assert cloud.positions[:, 0].tolist() == [0, 1, 2, 3]
    ply_with_int64_labels(tmp_path / "huge.ply", [0, 2**40])
    with pytest.raises(LabelError, match=r"huge.ply: labels must be in \[0, 2\*\*31\)"):
        load_point_labels(tmp_path / "huge.ply")


def test_loaders_refuse_what_is_not_a_label_file(tmp_path: Path) -> None:
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(LabelError, match=r"text\.png: not a readable PNG"):
        load_mask(tmp_path / "text.png")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), np.int32))
    with pytest.raises(LabelError, match=r"cube.npy: a mask must be 2-D"):
        load_mask(tmp_path / "cube.npy")
    with pytest.raises(LabelError, match="no such file"):
        load_point_labels(tmp_path / "absent.pcd")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nstages: {}\n", "stages"),
        ('name: x\nstages:\n  seg: {labels: "m/{sample_id}.png"}\n', "needs 'classes'"),
        ("name: x\nstages:\n  det: {labels: coco.json, colour: red}\n", "colour"),
        ("name: x\nstages:\n  det: {labels: ../outside.json}\n", "without '..'"),
        ("name: x\nstages:\n  det: {labels: /etc/passwd.json}\n", "relative to the dataset root"),
        ("name: x\ninputs: ../images/{sample_id}.png\nstages:\n  det: {labels: coco.json}\n", "without '..'"),
        ("name: x\nstages:\n  det: {labels: coco.json, pass: {metric: miou, min: 0.5}}\n", "does not apply to boxes"),
        ("name: x\nstages:\n  det: {labels: coco.txt}\n", "unknown label format"),
        ("name: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_malformed_dataset_files_exit_2_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    spec = tmp_path / "golden.yaml"
    spec.write_text(text)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(spec)
    code, found = validate(spec)
    assert code == 2 and message.split("'")[0] in found["stderr"] and str(spec) in found["stderr"]


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path / "data", 3, listed=["s0000", "s0001", "s0002"])
    outside = tmp_path / "secret.npy"
    np.save(outside, np.zeros((24, 32), np.int32))
    target = tmp_path / "data" / "masks" / "s0001.npy"
    target.unlink(missing_ok=True)
    (tmp_path / "data" / "masks" / "s0001.png").unlink(missing_ok=True)
    os.symlink(outside, target)
    dataset = load_dataset(spec)
    with pytest.raises(DatasetError, match="leaves the dataset root"):
        dataset.truth("segmentation", "s0001")
    assert dataset.truth("segmentation", "s0000").shape == (24, 32)


def test_a_thousand_samples_in_three_formats_validate(tmp_path: Path) -> None:
    """The figure for SC-005 is in docs/benchmarks.md (benchmarks/eval.py); here: it works at size."""
    spec = write_dataset(tmp_path, 1000)
    code, report = validate(spec)
    assert code == 0 and report["samples"] == 1000
    assert sum(report["stages"]["lidar"]["formats"].values()) == 1000 and len(CLASSES) == 3


@pytest.mark.parametrize(
    ("header", "body", "message"),
    [
        (
            "element vertex 3\nproperty float x\nproperty float y\nproperty float z\nproperty int64 label\n",
            b"\x00" * 10,
            "declares 3 vertices",
        ),
        (
            "element vertex 1\nproperty float x\nproperty float y\nproperty int64 label\n",
            b"\x00" * 16,
            "need x, y, z and label",
        ),
        ("element vertex 1\nproperty list uchar int64 label\n", b"", "'label' is a list"),
        ("element vertex 1\nproperty quaternion q\n", b"", "unsupported property"),
    ],
)
def test_the_ply_reader_refuses_malformed_files(tmp_path: Path, header: str, body: bytes, message: str) -> None:
    path = tmp_path / "bad.ply"
    path.write_bytes(f"ply\nformat binary_little_endian 1.0\n{header}end_header\n".encode() + body)
    with pytest.raises(LabelError, match=message):
        load_point_labels(path)


def test_the_ply_reader_reads_ascii(tmp_path: Path) -> None:
    path = tmp_path / "ascii.ply"
    path.write_text(
        "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
        "property int64 label\nend_header\n0 0 0 4\n1 1 1 5\n"
    )
    assert load_point_labels(path).labels.tolist() == [4, 5]


def test_input_images_come_from_the_template_or_the_sample_entry_and_stay_inside(tmp_path: Path) -> None:
    spec = write_dataset(tmp_path / "data", 3)
    (tmp_path / "data" / "images").mkdir()
    for name in ("s0000", "other"):
        (tmp_path / "data" / "images" / f"{name}.png").write_bytes(b"png")
    text = spec.read_text()
    spec.write_text(text + "inputs: images/{sample_id}.png\n")
    dataset = load_dataset(spec)
    assert dataset.input_path("s0000") == (tmp_path / "data" / "images" / "s0000.png").resolve()
    assert dataset.input_path("s0001") is None  # no such file: drawn without it
    os.symlink(tmp_path / "secret.png", tmp_path / "data" / "images" / "s0002.png")
    with pytest.raises(DatasetError, match="leaves the dataset root"):
        dataset.input_path("s0002")
    code, found = validate(spec)  # `stagewatch gt validate` counts them and refuses the escape
    assert code != 0 and not found["ok"]
    assert found["inputs"]["found"] == 1 and found["inputs"]["missing"] == ["s0001"]
    assert [r["sample_id"] for r in found["inputs"]["refused"]] == ["s0002"]
    spec.write_text(text + "samples:\n  - {id: s0001, input: images/other.png}\n")
    assert load_dataset(spec).input_path("s0001").name == "other.png"
