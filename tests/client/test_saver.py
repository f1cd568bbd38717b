"""Stage outputs are written in formats the usual tools read back (Open3D for PNG and PLY)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import open3d as o3d  # needs Debian's libusb-1.0-0, which .ci/run installs
import pytest

import stagewatch
from stagewatch._saver import write_artifact


def test_png_round_trips_through_open3d(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for image in (
        rng.integers(0, 255, (37, 53, 3), dtype=np.uint8),
        rng.integers(0, 255, (20, 30), dtype=np.uint8),
        rng.integers(0, 65535, (20, 30), dtype=np.uint16),
    ):
        path = tmp_path / "image.png"
        write_artifact(path, image)
        np.testing.assert_array_equal(np.asarray(o3d.io.read_image(str(path))), image)


def test_ply_keeps_points_colors_and_int32_labels_for_open3d(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(500, 3)).astype(np.float32)
    labels = rng.integers(0, 20, 500)  # int64, which Open3D refuses: written as int32
    colors = rng.random((500, 3))
    path = tmp_path / "cloud.ply"
    write_artifact(path, {"points": points, "colors": colors, "label": labels})
    cloud = o3d.t.io.read_point_cloud(str(path))
    np.testing.assert_array_equal(cloud.point["positions"].numpy(), points)
    assert cloud.point["label"].numpy().dtype == np.int32
    np.testing.assert_array_equal(cloud.point["label"].numpy().ravel(), labels)
    np.testing.assert_allclose(cloud.point["colors"].numpy().astype(float) / 255, colors, atol=1 / 255)


def test_ply_from_an_open3d_point_cloud(tmp_path: Path) -> None:
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.eye(3)))
    write_artifact(tmp_path / "c.ply", cloud)
    np.testing.assert_allclose(np.asarray(o3d.io.read_point_cloud(str(tmp_path / "c.ply")).points), np.eye(3))


def test_npy_and_json(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.int16).reshape(3, 4)
    write_artifact(tmp_path / "a.npy", array)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    write_artifact(tmp_path / "b.json", {"boxes": np.array([[1, 2, 3, 4]])})
    assert json.loads((tmp_path / "b.json").read_text()) == {"boxes": [[1, 2, 3, 4]]}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("x.bmp", np.zeros((2, 2)), "expected a file name ending in"),
        ("x.png", np.zeros((2, 2), np.float32), "expected a uint8 or uint16 image"),
        ("x.png", np.zeros((2, 2, 5), np.uint8), "expected an image of shape"),
        ("x.ply", np.zeros((5, 2)), "expected points of shape Nx3"),
        ("x.ply", {"points": np.zeros((5, 3)), "label": np.zeros(4)}, "expected 5 values"),
    ],
)
def test_bad_outputs_get_a_clear_error(tmp_path: Path, name: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_artifact(tmp_path / name, value)


def test_save_refuses_names_that_escape_the_home(home: Path) -> None:
    run = stagewatch.init(pipeline="p", home=home)
    with run.stage("detection") as st:
        for name in ("../../etc/passwd", "/abs.png", "a/b.png"):
            with pytest.raises(ValueError, match="expected file name"):
                st.save(name, np.zeros((2, 2), np.uint8))
        assert st.save("ok.png", np.zeros((2, 2), np.uint8)) == f"runs/{run.id}/stages/detection/ok.png"
    assert (home / "runs" / run.id / "stages" / "detection" / "ok.png").exists()
    assert not list(home.rglob("passwd"))


def test_a_disk_that_refuses_the_write_does_not_break_the_pipeline(home: Path) -> None:
    run = stagewatch.init(
        pipeline="p",
        home=home,
    )
    (home / "runs").mkdir()
    (home / "runs" / run.id).write_text("not a folder")  # mkdir of the stage folder will fail
    with run.stage("detection") as st:
        assert st.save("x.png", np.zeros((2, 2), np.uint8)) is None
    assert str(uuid.UUID(run.id)) == run.id
