"""Difference computations against brute force on small inputs."""

from __future__ import annotations

import numpy as np
import pytest

from stagewatch.daemon.groundtruth.diff import (
    OUTCOME_COLOURS,
    DiffError,
    cloud_distances,
    empty_clouds_line,
    image_difference,
    label_mismatch,
    mask_difference,
    viridis,
)


def _brute_mask(prediction, truth, ignore):
    outcomes, per_class = {}, {}
    for (row, column), actual in np.ndenumerate(truth):
        predicted = prediction[row, column]
        if actual == ignore:
            outcomes[row, column] = "ignored"
            continue
        if predicted == actual:
            outcomes[row, column] = "true_negative" if actual == 0 else "true_positive"
        else:
            outcomes[row, column] = "false_positive" if predicted != 0 else "false_negative"
        for value in (int(predicted), int(actual)):
            per_class.setdefault(value, {"true_positive": 0, "false_positive": 0, "false_negative": 0})
        if predicted == actual:
            per_class[int(actual)]["true_positive"] += 1
        else:
            per_class[int(predicted)]["false_positive"] += 1
            per_class[int(actual)]["false_negative"] += 1
    return outcomes, per_class


@pytest.mark.parametrize("seed", range(5))
def test_mask_outcomes_equal_a_pixel_by_pixel_count(seed) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, (13, 17)).astype(np.uint8)
    truth[rng.random(truth.shape) < 0.1] = 255  # ignore pixels
    prediction = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 4, truth.shape)).astype(np.uint8)
    prediction[truth == 255] = rng.integers(0, 4)  # whatever is predicted there is left out
    found = mask_difference(prediction, truth, ignore_index=255)
    outcomes, per_class = _brute_mask(prediction, truth, 255)
    for (row, column), outcome in outcomes.items():
        assert tuple(found.picture[row, column]) == OUTCOME_COLOURS[outcome]
    assert found.per_class == per_class
    assert found.ignored == int((truth == 255).sum())
    valid = truth != 255
    assert found.agreement == pytest.approx((prediction == truth)[valid].mean())


def test_masks_of_different_sizes_are_refused_in_words() -> None:
    with pytest.raises(DiffError, match="differ in size"):
        mask_difference(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8))


def test_image_difference_equals_numpy_and_refuses_other_sizes() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    found = image_difference(a, b, threshold=0.25)
    reference = np.abs(a / 255.0 - b / 255.0).mean(axis=2)
    np.testing.assert_allclose(found.difference, reference)
    assert found.mean_absolute == pytest.approx(reference.mean())
    assert found.over_threshold == pytest.approx((reference > 0.25).mean())
    signed = image_difference(a, b, signed=True)
    np.testing.assert_allclose(signed.difference, (a / 255.0 - b / 255.0).mean(axis=2))
    assert signed.scale[0] == -signed.scale[1]
    with pytest.raises(DiffError, match="differ in size"):
        image_difference(a, b[:, :10])
    with pytest.raises(DiffError, match="channels"):
        image_difference(a, b[:, :, 0])


def _brute_nearest(points, targets):
    return np.array([min(np.sqrt(((p - t) ** 2).sum()) for t in targets) for p in points])


def test_cloud_distances_equal_brute_force_on_clouds_of_different_sizes() -> None:
    rng = np.random.default_rng(2)
    prediction, truth = rng.normal(size=(37, 3)), rng.normal(size=(53, 3))
    found = cloud_distances(prediction, truth)
    np.testing.assert_allclose(found.to_truth, _brute_nearest(prediction, truth), rtol=1e-9)
    np.testing.assert_allclose(found.to_prediction, _brute_nearest(truth, prediction), rtol=1e-9)
    there, back = _brute_nearest(prediction, truth), _brute_nearest(truth, prediction)
    assert found.summary["chamfer"] == pytest.approx((there.mean() + back.mean()) / 2)
    assert found.summary["hausdorff"] == pytest.approx(max(there.max(), back.max()))
    assert found.summary["p95_to_truth"] == pytest.approx(np.percentile(there, 95))
    assert found.dropped == {}


def test_nan_points_are_left_out_and_counted() -> None:
    rng = np.random.default_rng(3)
    prediction, truth = rng.normal(size=(20, 3)), rng.normal(size=(15, 3))
    prediction[[2, 7]] = np.nan
    truth[4, 1] = np.inf
    found = cloud_distances(prediction, truth)
    assert found.dropped == {"prediction": 2, "ground truth": 1}
    keep_p, keep_t = np.isfinite(prediction).all(1), np.isfinite(truth).all(1)
    np.testing.assert_allclose(found.to_truth, _brute_nearest(prediction[keep_p], truth[keep_t]), rtol=1e-9)
    with pytest.raises(DiffError, match="N x 3"):
        cloud_distances(np.zeros((4, 2)), truth)


@pytest.mark.parametrize(
    ("prediction", "truth", "empty", "line"),
    [
        (np.zeros((0, 3)), np.ones((5, 3)), ["prediction"], "the prediction cloud is empty"),
        (np.ones((5, 3)), np.zeros((0, 3)), ["ground truth"], "the ground truth cloud is empty"),
        (np.zeros((0, 3)), np.zeros((0, 3)), ["prediction", "ground truth"], "and the ground truth cloud is empty"),
        (np.full((4, 3), np.nan), np.ones((5, 3)), ["prediction"], "has no finite point (4 with NaN or inf)"),
    ],
)
def test_an_empty_cloud_is_a_result_without_distances(
    prediction: np.ndarray, truth: np.ndarray, empty: list[str], line: str
) -> None:
    """A frame with every point filtered out: no distance exists, so none is made up (no 0,
    no infinity); the other cloud's points get NaN, and the line says which side is empty."""
    found = cloud_distances(prediction, truth)
    assert found.summary["empty"] == empty
    assert found.summary["chamfer"] is None and found.summary["hausdorff"] is None
    assert found.summary["mean_to_truth"] is None and found.summary["max_to_prediction"] is None
    finite = {"prediction": np.isfinite(prediction).all(1).sum(), "truth": np.isfinite(truth).all(1).sum()}
    assert found.summary["prediction_points"] == finite["prediction"]
    assert found.summary["truth_points"] == finite["truth"]
    assert len(found.to_truth) == finite["prediction"] and np.isnan(found.to_truth).all()
    assert len(found.to_prediction) == finite["truth"] and np.isnan(found.to_prediction).all()
    assert line in empty_clouds_line(found) and "no distance can be measured" in empty_clouds_line(found)


def test_label_mismatch_and_the_colour_map() -> None:
    assert label_mismatch(np.array([1, 2, 3]), np.array([1, 0, 3])).tolist() == [False, True, False]
    with pytest.raises(DiffError):
        label_mismatch(np.array([1, 2]), np.array([1, 2, 3]))
    ends = viridis(np.array([0.0, 1.0, np.nan]))
    assert np.abs(ends[0].astype(int) - (68, 1, 84)).max() <= 8  # matplotlib's viridis at 0 and 1
    assert np.abs(ends[1].astype(int) - (253, 231, 37)).max() <= 8
    assert tuple(ends[2]) == (128, 128, 128)
