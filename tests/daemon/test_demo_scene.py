"""The demo's street: camera frames and lidar sweeps checked by their structure (where the sky,
the road and the objects are; which points are ground), never pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest

from stagewatch.daemon import _demo, _street


@pytest.fixture(scope="module")
def frames() -> list[_demo.Frame]:
    return [_demo.synthetic_frame(i, np.random.default_rng([7, i])) for i in range(12) if i != _demo.FAILING_FRAME]


def test_the_frame_has_sky_above_road_below_and_lane_marks(frames) -> None:
    plate = _demo.street_view()[1]
    top, bottom = plate[:20, 120:200], plate[-30:, :]
    assert (top[..., 2] > top[..., 0] + 0.2).mean() > 0.9  # blue sky above the street
    asphalt = np.abs(bottom - _street._ASPHALT / 255).max(axis=2) < 0.02
    assert asphalt.mean() > 0.5  # grey road at the bottom
    lines = bottom.min(axis=2) > 0.85  # white lane marks
    yellow = (bottom[..., 0] > 0.8) & (bottom[..., 2] < 0.4)  # the centre line
    assert lines.any() and yellow.any()
    for frame in frames:
        assert frame.image.shape == (_street.HEIGHT, _street.WIDTH, 3) and np.isfinite(frame.image).all()


def test_every_labelled_object_is_drawn_inside_its_box_and_the_mask_agrees(frames) -> None:
    boxes = 0
    for frame in frames:
        for kind, (x, y, w, h) in frame.boxes:
            boxes += 1
            inside = frame.mask[int(y) : int(y + h), int(x) : int(x + w)]
            assert (inside == kind).mean() > 0.25  # the object fills its box
            changed = np.abs(frame.image - frame.plate).max(axis=2)[int(y) : int(y + h), int(x) : int(x + w)]
            assert (changed > 0.08).mean() > 0.25  # and it is drawn there, over the empty street
        labelled = np.zeros(frame.mask.shape, bool)
        for _, (x, y, w, h) in frame.boxes:
            labelled[int(y) : int(y + h), int(x) : int(x + w)] = True
        assert (frame.mask[~labelled] != 0).mean() < 0.01  # no class outside every box but far, tiny objects
    kinds = {kind for frame in frames for kind, _ in frame.boxes}
    assert boxes > 2 * len(frames) and kinds == {_street.CAR, _street.PEDESTRIAN}


def test_ground_points_fill_the_lowest_band_in_rings_and_objects_stand_inside_their_boxes() -> None:
    rng = np.random.default_rng(3)
    things = _street.traffic(rng)
    facades = _demo.street_view()[0]
    points, labels = _street.lidar(things, facades, rng)
    low = points[:, 2] < 0.1
    assert (labels[low] == 0).mean() > 0.97 and low.mean() > 0.3  # the ground dominates the lowest band
    ranges = np.linalg.norm(points[low, :2] - [0, _street.CAMERA_Y], axis=1)
    near = ranges[ranges < 12]
    assert len(np.unique(np.round(near, 0))) < len(near) / 20  # rings: few distinct ranges, many points each
    for kind in (_street.CAR, _street.PEDESTRIAN):
        hits = points[labels == kind]
        if len(hits):
            inside = np.zeros(len(hits), bool)
            for thing in (t for t in things if t.kind == kind):
                lower, upper = thing.bounds()
                inside |= ((hits >= lower - 0.1) & (hits <= upper + 0.1)).all(axis=1)
            assert inside.all()  # every return of an object lies on that object's box
    tall = points[:, 2] > 3.0
    assert tall.any() and (np.abs(points[tall, 1]) >= _street.ROAD_HALF_WIDTH).all()  # walls stand off the road


def test_the_lidar_sees_only_surfaces_facing_it() -> None:
    car = _street.Thing(_street.CAR, 10.0, _street.CAMERA_Y, _street.CAR_SIZE, (200, 30, 30))
    points, labels = _street.lidar([car], [], np.random.default_rng(0))
    on_car = points[labels == _street.CAR]
    lower, upper = car.bounds()
    assert len(on_car) and (on_car[:, 0] < lower[0] + 0.1).mean() > 0.6  # the face toward the sensor
    assert not (on_car[:, 0] > upper[0] - 0.1).any()  # never the far side
    behind = (points[:, 0] > upper[0]) & (np.abs(points[:, 1] - car.y) < 0.5) & (labels == 0)
    assert not behind.any()  # its shadow: no ground return right behind it


def test_the_pipeline_makes_real_mistakes_but_finds_most_objects(frames) -> None:
    from stagewatch.daemon.groundtruth.coco import Objects
    from stagewatch.daemon.groundtruth.metrics import match_boxes

    found = missed = wrong = 0
    for frame in frames:
        detections = _demo.detect(_demo.preprocess(frame)[0])
        truth = [(kind, box) for kind, box in frame.boxes]

        def objects(kinds: list[int], boxes: list, scores: list) -> Objects:
            n = len(kinds)
            box_array = np.array(boxes, float).reshape(-1, 4)
            return Objects(np.array(kinds, np.int64), box_array, np.ones(n), np.zeros(n, bool), np.array(scores, float))

        outcome = match_boxes(
            objects([k for k, _ in truth], [b for _, b in truth], [1.0] * len(truth)),
            objects([_demo.CLASSES.index(n) for n in detections["labels"]], detections["boxes"], detections["scores"]),
        )
        found, missed, wrong = found + outcome.true_positives, missed + outcome.missed, wrong + outcome.false_positives
    assert found > missed and found > wrong  # a detector worth watching
    assert missed > 0 and wrong > 0  # and one that makes mistakes
