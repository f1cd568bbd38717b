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
    for index, image in enumerate(
        (
            rng.integers(0, 255, (37, 53, 3), dtype=np.uint8),
            rng.integers(0, 255, (20, 30), dtype=np.uint8),
            rng.integers(0, 65535, (20, 30), dtype=np.uint16),
        )
    ):
        path = tmp_path / f"image{index}.png"  # write_artifact never writes over a file
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


# -- empty clouds: a frame whose points were all filtered out ------------------------------------
EMPTY_CLOUDS = {
    "Nx3": np.zeros((0, 3)),
    "points": {"points": np.zeros((0, 3), np.float32)},
    "points+label": {"points": np.zeros((0, 3)), "label": np.zeros(0, np.int64)},
    "points+label+colors": {"points": np.zeros((0, 3)), "label": np.zeros(0, np.uint8), "colors": np.zeros((0, 3))},
}


@pytest.mark.parametrize("form", list(EMPTY_CLOUDS))
def test_an_empty_cloud_is_saved_as_a_ply_of_0_vertices(daemon, form: str) -> None:
    """Through the public API with a real daemon: no exception, the file is written, and
    plyfile, Open3D and our reader all read 0 points (with the label property when given)."""
    from plyfile import PlyData

    from stagewatch.daemon.groundtruth.formats import load_point_labels, load_points

    run = stagewatch.init(pipeline="empty", home=daemon.home)
    with run.stage("filter", sample_id="s1") as st:
        relpath = st.save("empty.ply", EMPTY_CLOUDS[form])
    run.finish()
    assert relpath is not None
    path = daemon.home / relpath
    vertex = PlyData.read(str(path))["vertex"]
    assert vertex.count == 0
    assert o3d.t.io.read_point_cloud(str(path)).point["positions"].shape[0] == 0
    assert len(o3d.io.read_point_cloud(str(path)).points) == 0
    positions, labels = load_points(path)
    assert positions.shape == (0, 3)
    if "label" in form:
        assert "label" in [p.name for p in vertex.properties]
        assert len(load_point_labels(path).labels) == 0
        assert labels is not None and len(labels) == 0
    (stage,) = daemon.audit(run.id)["stages"]
    (artifact,) = stage["artifacts"]
    assert artifact.get("warnings", []) == []
    assert stage["status"] == "ok"


# -- JSON: always valid, NaN and infinity as null with a warning ---------------------------------
def _strict_json(text: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_with_nan_and_infinity_is_strict_json_with_nulls(tmp_path: Path) -> None:
    value = {
        "score": float("nan"),
        "boxes": [[1.0, float("inf"), 3, 4], {"deep": [np.float32("nan")]}],
        "array": np.array([[0.5, np.nan], [-np.inf, 2.0]]),
        "scalar": np.float64("-inf"),
        "fine": np.arange(3),
        "flag": np.bool_(True),
    }
    written = write_artifact(tmp_path / "x.json", value)
    assert _strict_json((tmp_path / "x.json").read_text()) == {
        "score": None,
        "boxes": [[1.0, None, 3, 4], {"deep": [None]}],
        "array": [[0.5, None], [None, 2.0]],
        "scalar": None,
        "fine": [0, 1, 2],
        "flag": True,
    }
    assert written.warnings == [
        "6 non-finite number(s) (NaN, inf) written as null, at $.score, $.boxes[0][1], $.boxes[1].deep[0], "
        "$.array[0][1], $.array[1][0], ..."
    ]
    assert write_artifact(tmp_path / "ok.json", {"a": [1.5]}).warnings == []


def test_json_that_cannot_be_written_gets_a_clear_error(tmp_path: Path) -> None:
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="without cycles"):
        write_artifact(tmp_path / "c.json", cycle)
    with pytest.raises(TypeError, match="expected JSON-serialisable data, got object"):
        write_artifact(tmp_path / "o.json", {"a": object()})
    assert not list(tmp_path.iterdir())


def test_json_nan_is_noted_in_the_audit_trail(daemon) -> None:
    run = stagewatch.init(pipeline="json", home=daemon.home)
    with run.stage("detection", sample_id="s1") as st:
        relpath = st.save("scores.json", {"scores": np.array([0.9, np.nan])})
    run.finish()
    assert _strict_json((daemon.home / relpath).read_text()) == {"scores": [0.9, None]}
    (artifact,) = daemon.audit(run.id)["stages"][0]["artifacts"]
    assert artifact["warnings"] == ["1 non-finite number(s) (NaN, inf) written as null, at $.scores[1]"]


def test_a_warning_quoting_a_huge_key_still_reaches_the_audit_trail(daemon) -> None:
    """The warning names the place of each NaN, keys included: a 10,000-character key is cut to
    what an event may carry, so the artifact is not refused (and lost from the trail)."""
    key = "k" * 10_000
    run = stagewatch.init(pipeline="json", home=daemon.home)
    with run.stage("detection", sample_id="s1") as st:
        relpath = st.save("scores.json", {key: float("nan")})
    run.finish()
    assert _strict_json((daemon.home / relpath).read_text()) == {key: None}
    (artifact,) = daemon.audit(run.id)["stages"][0]["artifacts"]
    (warning,) = artifact["warnings"]
    assert warning.startswith("1 non-finite number(s) (NaN, inf) written as null, at $.kkk")
    assert len(warning) <= 4096
    assert daemon.status()["stats"]["invalid"] == 0
