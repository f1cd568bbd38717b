"""Ground truth as real datasets ship it, made with the libraries users have: plyfile (every
PLY integer type, both byte orders, ascii, with a mesh's faces), Open3D (PCD ascii, binary,
binary_compressed), PIL, pycocotools; dotted, Cityscapes, ScanNet and VOC names."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from stagewatch._saver import write_artifact, write_ply
from stagewatch.daemon.groundtruth.formats import LabelError, load_point_labels
from stagewatch.daemon.groundtruth.spec import load_dataset
from tests.groundtruth.test_coco_reference import assert_same, our_stats, reference_stats

INTEGER_TYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8"]  # char … ulong
PLY_LAYOUTS = {
    "ascii": dict(text=True),
    "binary_little_endian": dict(byte_order="<"),
    "binary_big_endian": dict(byte_order=">"),
}


def _cloud(count: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-10, 10, (count, 3)).astype(np.float32), rng.integers(0, 100, count)


def write_plyfile(path: Path, label_type: str, layout: str, faces: bool = False, count: int = 50) -> np.ndarray:
    """A labelled cloud as plyfile writes it; returns the labels as plyfile reads them back.
    (The PLY spec has no 64-bit types and plyfile refuses them; numpy-based writers emit
    `int64`/`uint64` anyway, so those files are written as such writers do.)"""
    points, labels = _cloud(count)
    vertex = np.empty(count, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("label", label_type)])
    vertex["x"], vertex["y"], vertex["z"], vertex["label"] = points[:, 0], points[:, 1], points[:, 2], labels
    triangles = np.array([([0, 1, 2],), ([2, 3, 4],), ([5, 6, 7],)], [("vertex_indices", "i4", (3,))])
    if label_type in ("i8", "u8"):
        _write_64_bit_ply(path, vertex, layout, triangles if faces else None)
        return vertex["label"]
    elements = [PlyElement.describe(vertex, "vertex")]
    if faces:  # a labelled mesh (ScanNet's *_vh_clean_2.labels.ply are meshes)
        elements.append(PlyElement.describe(triangles, "face"))
    PlyData(elements, **PLY_LAYOUTS[layout]).write(str(path))
    return PlyData.read(str(path))["vertex"]["label"]


def _write_64_bit_ply(path: Path, vertex: np.ndarray, layout: str, faces: np.ndarray | None) -> None:
    label = {"i8": "int64", "u8": "uint64"}[vertex.dtype["label"].str[1:]]
    header = [f"ply\nformat {layout} 1.0\nelement vertex {len(vertex)}"]
    header += ["property float x\nproperty float y\nproperty float z", f"property {label} label"]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    text = ("\n".join([*header, "end_header"]) + "\n").encode()
    if layout == "ascii":
        rows = [f"{x!r} {y!r} {z!r} {label}" for x, y, z, label in vertex.tolist()]
        rows += [f"3 {' '.join(map(str, f[0]))}" for f in (faces if faces is not None else [])]
        path.write_bytes(text + ("\n".join(rows) + "\n").encode())
        return
    order = "<" if layout == "binary_little_endian" else ">"
    body = vertex.astype(vertex.dtype.newbyteorder(order)).tobytes()
    for face in faces if faces is not None else []:
        body += np.uint8(3).tobytes() + face[0].astype(order + "i4").tobytes()
    path.write_bytes(text + body)


@pytest.mark.parametrize("layout", PLY_LAYOUTS)
@pytest.mark.parametrize("label_type", INTEGER_TYPES)
@pytest.mark.parametrize("faces", [False, True], ids=["cloud", "mesh"])
def test_ply_labels_of_every_integer_type_load_as_plyfile_reads_them(
    tmp_path: Path, layout: str, label_type: str, faces: bool
) -> None:
    path = tmp_path / f"cloud_{label_type}_{layout}.ply"
    expected = write_plyfile(path, label_type, layout, faces)
    loaded = load_point_labels(path)
    np.testing.assert_array_equal(loaded.labels, expected)
    np.testing.assert_array_equal(loaded.positions, _cloud()[0].astype(np.float64))
    assert loaded.notes == (("ignored the 'face' element",) if faces else ())


@pytest.mark.parametrize("mode", ["ascii", "binary", "binary_compressed"])
@pytest.mark.parametrize("label_type", INTEGER_TYPES)
def test_pcd_labels_of_every_integer_width_load(tmp_path: Path, mode: str, label_type: str) -> None:
    import open3d as o3d

    points, labels = _cloud()
    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(points))
    cloud.point["label"] = o3d.core.Tensor(labels.astype(label_type).reshape(-1, 1))
    path = tmp_path / f"cloud_{label_type}.pcd"
    assert o3d.t.io.write_point_cloud(str(path), cloud, write_ascii=mode == "ascii", compressed=mode != "binary")
    assert f"DATA {mode}".encode() in path.read_bytes()[:1000]
    np.testing.assert_array_equal(load_point_labels(path).labels, labels)


def test_a_ply_header_that_lies_costs_an_error_not_memory(tmp_path: Path) -> None:
    path = tmp_path / "liar.ply"
    header = b"ply\nformat binary_little_endian 1.0\nelement vertex 1000000000\n"
    path.write_bytes(
        header + b"property float x\nproperty float y\nproperty float z\nproperty uchar label\nend_header\n" + bytes(26)
    )
    started = time.monotonic()
    with pytest.raises(LabelError, match="declares 1,000,000,000 vertices"):
        load_point_labels(path)
    assert time.monotonic() - started < 1.0
    path.write_bytes(header.replace(b"1000000000", b"-5") + b"property uchar label\nend_header\n")
    with pytest.raises(LabelError, match="COUNT >= 0"):
        load_point_labels(path)
    ascii_path = tmp_path / "short.ply"
    write_plyfile(ascii_path, "u2", "ascii")
    ascii_path.write_bytes(ascii_path.read_bytes().replace(b"element vertex 50", b"element vertex 900"))
    with pytest.raises(LabelError, match="declares 900 rows"):
        load_point_labels(ascii_path)


def _golden(root: Path, stages: str) -> Path:
    spec = root / "golden.yaml"
    spec.write_text(f"name: field\nstages:\n{stages}")
    return spec


def test_dotted_grabber_names_keep_their_fraction(tmp_path: Path) -> None:
    (tmp_path / "lidar").mkdir()
    names = ["frame_20261202T101500.123456", "frame_20261202T101500.223456"]
    for name in names:
        write_plyfile(tmp_path / "lidar" / f"{name}.ply", "u2", "binary_little_endian")
    stages = "  lidar:\n    labels: lidar/{sample_id}.*\n    kind: point_labels\n    classes: [a, b]\n"
    dataset = load_dataset(_golden(tmp_path, stages))
    assert dataset.samples == names
    assert all(dataset.label_path("lidar", name) is not None for name in names)


@pytest.mark.parametrize(
    ("template", "files", "ids"),
    [
        (
            "gtFine/val/{sample_id}_gtFine_labelTrainIds.png",  # Cityscapes
            [
                "gtFine/val/frankfurt_000000_000294_gtFine_labelTrainIds.png",
                "gtFine/val/frankfurt_000000_000576_gtFine_labelTrainIds.png",
                "gtFine/val/frankfurt_000000_000576_gtFine_color.png",
            ],  # another product beside it: not a label
            ["frankfurt_000000_000294", "frankfurt_000000_000576"],
        ),
        (
            "SegmentationClass/{sample_id}.png",  # Pascal VOC
            ["SegmentationClass/2007_000032.png", "SegmentationClass/2007_000039.png"],
            ["2007_000032", "2007_000039"],
        ),
    ],
)
def test_mask_templates_take_the_id_from_what_sample_id_matched(tmp_path: Path, template, files, ids) -> None:
    from PIL import Image

    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) % 2).save(tmp_path / name)
    stages = f"  segmentation:\n    labels: {template}\n    classes: [road, car]\n"
    dataset = load_dataset(_golden(tmp_path, stages))
    assert dataset.samples == ids
    assert [dataset.truth("segmentation", i).shape for i in ids] == [(3, 4)] * len(ids)


def test_scannet_layout_names_the_scene_twice(tmp_path: Path) -> None:
    scenes = ["scene0000_00", "scene0011_01"]
    for scene in scenes:
        (tmp_path / "scans" / scene).mkdir(parents=True)
        write_plyfile(
            tmp_path / "scans" / scene / f"{scene}_vh_clean_2.labels.ply", "u2", "binary_little_endian", faces=True
        )
    (tmp_path / "scans" / "scene0000_00" / "scene0011_01_vh_clean_2.labels.ply").write_bytes(b"")  # misplaced
    stages = (
        "  lidar:\n    labels: scans/{sample_id}/{sample_id}_vh_clean_2.labels.ply\n    kind: point_labels\n"
        "    classes: [wall, floor]\n"
    )
    dataset = load_dataset(_golden(tmp_path, stages))
    assert dataset.samples == scenes


def test_gt_validate_on_a_dataset_mixing_every_layout_finds_everything(tmp_path: Path) -> None:
    import open3d as o3d
    from PIL import Image

    (tmp_path / "lidar").mkdir()
    (tmp_path / "masks").mkdir()
    ids = []
    for index, (label_type, layout) in enumerate((t, layout) for t in INTEGER_TYPES for layout in PLY_LAYOUTS):
        sample = f"frame_20261202T1015{index:02d}.{index:06d}"
        ids.append(sample)
        write_plyfile(tmp_path / "lidar" / f"{sample}.ply", label_type, layout, faces=index % 2 == 1)
        Image.fromarray(np.full((4, 6), index % 3, np.uint8)).save(tmp_path / "masks" / f"{sample}_labelIds.png")
    sample = "frame_20261202T101599.999999"
    ids.append(sample)
    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(_cloud()[0]))
    cloud.point["label"] = o3d.core.Tensor(np.arange(50, dtype=np.uint16).reshape(-1, 1) % 3)
    o3d.t.io.write_point_cloud(str(tmp_path / "lidar" / f"{sample}.pcd"), cloud, compressed=True)
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "masks" / f"{sample}_labelIds.png")
    stages = (
        "  lidar:\n    labels: lidar/{sample_id}.*\n    kind: point_labels\n    classes: "
        + json.dumps([str(i) for i in range(100)])
        + "\n  segmentation:\n    labels: masks/{sample_id}_labelIds.png\n    classes: [a, b, c]\n"
    )
    spec = _golden(tmp_path, stages)
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "gt", "validate", str(spec), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"], result.stderr
    assert report["samples"] == len(ids) == 25
    for stage in ("lidar", "segmentation"):
        found = report["stages"][stage]
        assert (found["labeled"], found["missing"], found["invalid"]) == (25, [], [])
    assert report["stages"]["lidar"]["formats"] == {".ply": 24, ".pcd": 1}
    assert report["stages"]["lidar"]["notes"] == {"ignored the 'face' element": 12}


# -- COCO results as they come: masks only, boxes only, scored both ways -----------------------
def _segm_problem(seed: int) -> tuple[dict, list[dict], list[dict]]:
    """Ground truth with polygons and boxes; results as RLE masks without boxes, and as boxes only."""
    from pycocotools import mask as mask_utils

    from stagewatch.daemon.groundtruth.synthetic import coco_ground_truth, noisy_detections

    rng = np.random.default_rng(300 + seed)
    ground_truth = coco_ground_truth(rng, images=6, categories=2, max_objects=5, crowd_rate=0.0, size=(120, 90))
    for annotation in ground_truth["annotations"]:
        x, y, w, h = annotation["bbox"]
        annotation["segmentation"] = [[x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h, x, y + h / 2]]
    masks_only, boxes_only = [], []
    for found in noisy_detections(rng, ground_truth):
        x, y, w, h = (int(max(v, 0)) for v in found["bbox"])
        mask = np.zeros((90, 120), np.uint8, order="F")
        mask[y : y + max(h, 1), x + w // 4 : x + max(w, 1)] = 1  # not the box: its own extent
        rle = mask_utils.encode(mask)
        rle["counts"] = rle["counts"].decode()
        masks_only.append({k: v for k, v in found.items() if k != "bbox"} | {"segmentation": rle})
        boxes_only.append(found)
    return ground_truth, masks_only, boxes_only


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_mask_only_and_box_only_results_scored_both_ways_match_pycocotools(seed: int, iou_type: str) -> None:
    ground_truth, masks_only, boxes_only = _segm_problem(seed)
    assert_same(ground_truth, masks_only, iou_type)
    assert_same(ground_truth, boxes_only, iou_type)
    assert max(reference_stats(ground_truth, masks_only, iou_type)) > 0.1  # scored, not zeros


def test_polygon_results_without_boxes_are_rasterised_for_their_box() -> None:
    """pycocotools' loadRes takes RLE results only; a polygon result is scored as its RLE."""
    from pycocotools import mask as mask_utils

    ground_truth, masks_only, _ = _segm_problem(9)
    polygons = copy.deepcopy(masks_only)
    for result in polygons:
        x, y, w, h = mask_utils.toBbox(result["segmentation"])
        result["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    as_rle = copy.deepcopy(polygons)
    for result in as_rle:
        encoded = mask_utils.merge(mask_utils.frPyObjects(result["segmentation"], 90, 120))
        result["segmentation"] = {"size": encoded["size"], "counts": encoded["counts"].decode()}
    np.testing.assert_allclose(our_stats(ground_truth, polygons), reference_stats(ground_truth, as_rle), atol=1e-9)


def test_eval_coco_command_scores_mask_only_results_as_boxes(tmp_path: Path) -> None:
    ground_truth, masks_only, _ = _segm_problem(1)
    (tmp_path / "gt.json").write_text(json.dumps(ground_truth))
    (tmp_path / "segm.json").write_text(json.dumps(masks_only))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stagewatch.cli",
            "eval",
            "coco",
            str(tmp_path / "gt.json"),
            str(tmp_path / "segm.json"),
            "--iou-type",
            "bbox",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(
        list(json.loads(result.stdout).values()), reference_stats(ground_truth, masks_only), atol=1e-9
    )


# -- the saver: labels that read back, and never an exception --------------------------------
@pytest.mark.parametrize("label_type", ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "bool"])
def test_saved_labels_read_back_as_label_through_open3d_and_plyfile(tmp_path: Path, label_type: str) -> None:
    import open3d as o3d

    points, labels = _cloud()
    labels = labels.astype(label_type)
    path = tmp_path / "c.ply"
    assert write_artifact(path, {"points": points, "label": labels}).warnings == []
    np.testing.assert_array_equal(PlyData.read(str(path))["vertex"]["label"], labels)
    read = o3d.t.io.read_point_cloud(str(path))
    np.testing.assert_array_equal(read.point["label"].numpy().ravel(), labels)
    np.testing.assert_array_equal(load_point_labels(path).labels, labels)


def test_an_open3d_tensor_cloud_keeps_its_label_name(tmp_path: Path) -> None:
    import open3d as o3d

    points, labels = _cloud()
    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(points))
    cloud.point["label"] = o3d.core.Tensor(labels.astype(np.int32).reshape(-1, 1))
    write_ply(tmp_path / "c.ply", cloud)
    assert PlyData.read(str(tmp_path / "c.ply"))["vertex"].properties[-1].name == "label"
    np.testing.assert_array_equal(load_point_labels(tmp_path / "c.ply").labels, labels)


def test_labels_that_cannot_be_kept_are_left_out_with_a_warning_not_an_exception(tmp_path: Path, daemon) -> None:
    """Through the public API: the stage goes on, the cloud is saved without that attribute,
    and the audit trail says why."""
    import stagewatch

    points, labels = _cloud()
    huge = labels.astype(np.uint64) + np.uint64(2**40)
    run = stagewatch.init(pipeline="saver", home=daemon.home)
    with run.stage("lidar", sample_id="s1") as stage:
        path = stage.save("c.ply", {"points": points, "label": huge, "intensity": labels.astype(np.uint16)})
    run.finish()
    assert path is not None
    saved = PlyData.read(str(daemon.home / path))["vertex"]
    assert [p.name for p in saved.properties] == ["x", "y", "z", "intensity"]
    (artifact,) = daemon.audit(run.id)["stages"][0]["artifacts"]
    assert artifact["warnings"] == [
        f"point attribute 'label' (uint64, values {int(huge.min())}..{int(huge.max())}) does not fit in int32: "
        "not saved"
    ]


def test_per_point_attributes_come_from_plyfile_and_open3d_files(tmp_path: Path) -> None:
    import open3d as o3d

    from stagewatch.daemon.groundtruth.formats import load_point_attributes

    points, labels = _cloud(40)
    intensity = np.linspace(0, 1, 40).astype(np.float32)
    ring = np.arange(40, dtype=np.uint16)
    vertex = np.empty(40, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("intensity", "f4"), ("ring", "u2"), ("label", "i4")])
    for axis, column in zip("xyz", points.T, strict=True):
        vertex[axis] = column
    vertex["intensity"], vertex["ring"], vertex["label"] = intensity, ring, labels
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order=">").write(str(tmp_path / "scan.ply"))
    found = load_point_attributes(tmp_path / "scan.ply")
    assert list(found) == ["intensity", "ring"]  # x, y, z and label are the cloud itself
    np.testing.assert_allclose(found["intensity"], intensity)
    np.testing.assert_array_equal(found["ring"], ring)
    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(points))
    cloud.point["intensity"] = o3d.core.Tensor(intensity.reshape(-1, 1))
    o3d.t.io.write_point_cloud(str(tmp_path / "scan.pcd"), cloud)
    np.testing.assert_allclose(load_point_attributes(tmp_path / "scan.pcd")["intensity"], intensity)
    (tmp_path / "broken.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\n")
    assert load_point_attributes(tmp_path / "broken.ply") == {}  # load_points says what is wrong
