"""`stagewatch diff` as a script would run it: files in, a picture and numbers out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stagewatch.daemon.groundtruth.formats import load_points
from stagewatch.daemon.groundtruth.ply import read_vertices


def stagewatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stagewatch.cli", *args], capture_output=True, text=True, timeout=120)


def test_mask_and_image_differences_are_written_with_their_numbers(tmp_path: Path) -> None:
    truth = np.zeros((20, 30), np.uint8)
    truth[5:15, 5:15] = 1
    prediction = np.zeros_like(truth)
    prediction[5:15, 8:18] = 1  # 30 pixels missed, 30 claimed wrongly, 70 right
    Image.fromarray(truth).save(tmp_path / "truth.png")
    np.save(tmp_path / "prediction.npy", prediction)
    done = stagewatch(
        "diff",
        "mask",
        str(tmp_path / "prediction.npy"),
        str(tmp_path / "truth.png"),
        "--out",
        str(tmp_path / "mask.png"),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    numbers = json.loads(done.stdout)
    assert numbers["per_class"]["1"] == {"true_positive": 70, "false_positive": 30, "false_negative": 30}
    assert Image.open(tmp_path / "mask.png").size == (30, 20)
    other = np.full((20, 30), 255, np.uint8)
    Image.fromarray(other).save(tmp_path / "white.png")
    done = stagewatch(
        "diff",
        "image",
        str(tmp_path / "truth.png"),
        str(tmp_path / "white.png"),
        "--out",
        str(tmp_path / "image.png"),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["over_threshold"] == pytest.approx(1.0)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    refused = stagewatch(
        "diff", "image", str(tmp_path / "truth.png"), str(tmp_path / "small.png"), "--out", str(tmp_path / "x.png")
    )
    assert refused.returncode == 2 and "differ in size" in refused.stderr and "Traceback" not in refused.stderr


def test_a_cloud_difference_writes_distances_per_point(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    truth = rng.normal(size=(400, 3))
    prediction = np.vstack([truth[:300] + 0.01, [[np.nan, 0, 0]]])
    np.save(tmp_path / "truth.npy", truth)
    np.save(tmp_path / "prediction.npy", prediction)
    done = stagewatch(
        "diff",
        "cloud",
        str(tmp_path / "prediction.npy"),
        str(tmp_path / "truth.npy"),
        "--out",
        str(tmp_path / "d.ply"),
        "--png",
        str(tmp_path / "d.png"),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    numbers = json.loads(done.stdout)
    assert numbers["dropped_points"] == {"prediction": 1}
    assert numbers["max_to_truth"] == pytest.approx(np.sqrt(3 * 0.01**2), rel=1e-3)
    points, _ = load_points(tmp_path / "d.ply")
    assert points.shape == (300, 3)
    vertices, _ = read_vertices(tmp_path / "d.ply")
    np.testing.assert_allclose(vertices["distance"], np.sqrt(3 * 0.01**2), rtol=1e-3)
    assert Image.open(tmp_path / "d.png").size == (512, 512)
    empty = stagewatch(
        "diff",
        "cloud",
        str(tmp_path / "prediction.npy"),
        str(tmp_path / "nothing.npy"),
        "--out",
        str(tmp_path / "e.ply"),
    )
    assert empty.returncode == 2 and "nothing.npy" in empty.stderr


@pytest.mark.parametrize(
    ("prediction_points", "truth_points", "said"),
    [
        (0, 40, "the prediction cloud is empty"),
        (40, 0, "the ground truth cloud is empty"),
        (0, 0, "the prediction cloud is empty and the ground truth cloud is empty"),
    ],
)
@pytest.mark.parametrize("suffix", [".ply", ".pcd"])
def test_a_cloud_difference_of_empty_clouds_is_a_clear_result(
    tmp_path: Path, prediction_points: int, truth_points: int, said: str, suffix: str
) -> None:
    """Empty clouds as the saver writes them (PLY) or as a PCD header of POINTS 0: exit 0, the
    distance file written (0 vertices, or NaN distances), every distance null, no traceback."""
    from stagewatch._saver import write_ply
    from tests.groundtruth.test_empty_clouds import write_empty_pcd

    rng = np.random.default_rng(5)
    paths = {}
    for side, count in (("prediction", prediction_points), ("truth", truth_points)):
        paths[side] = tmp_path / f"{side}{suffix if count == 0 else '.ply'}"
        if count == 0 and suffix == ".pcd":
            write_empty_pcd(paths[side], "binary")
        else:
            write_ply(paths[side], {"points": rng.normal(size=(count, 3)), "label": np.zeros(count, np.int32)})
    out = tmp_path / "d.ply"
    common = ["diff", "cloud", str(paths["prediction"]), str(paths["truth"]), "--out", str(out)]
    done = stagewatch(*common, "--png", str(tmp_path / "d.png"), "--json")
    assert done.returncode == 0, done.stderr
    numbers = json.loads(done.stdout)
    assert (numbers["prediction_points"], numbers["truth_points"]) == (prediction_points, truth_points)
    assert numbers["chamfer"] is None and numbers["hausdorff"] is None and numbers["empty"]
    vertices, _ = read_vertices(out)
    assert len(vertices) == prediction_points and np.isnan(vertices["distance"]).all()
    assert Image.open(tmp_path / "d.png").size == (512, 512)
    plain = stagewatch(*common)
    assert plain.returncode == 0 and said in plain.stdout and "no distance can be measured" in plain.stdout
    assert "Traceback" not in plain.stderr + done.stderr
