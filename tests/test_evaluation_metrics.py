"""Metrics on tiny hand-computable arrays, HD95 against MONAI, and the paper's averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnunet_topkdice.evaluation.metrics import (
    case_metrics,
    class_metrics,
    hausdorff_95,
    image_diagonal,
    overlap_metrics,
    paper_means,
    surface_voxels,
)

NAN = math.nan


def _row(bits: str) -> np.ndarray:
    """'110' -> (1, 3) bool mask (a 2-D image of one row)."""
    return np.array([[c == "1" for c in bits]])


def _assert_metrics(actual: dict, expected: dict) -> None:
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[key]), f"{key}: expected NaN, got {actual[key]}"
        else:
            assert actual[key] == pytest.approx(value), key


@pytest.mark.parametrize(
    ("reference", "prediction", "expected"),
    [
        # tp=2 fp=1 fn=2: Dice 4/7, IoU 2/5, precision 2/3, recall 2/4
        ("111100", "001110", {"Dice": 4 / 7, "IoU": 2 / 5, "Precision": 2 / 3, "Recall": 1 / 2}),
        ("011000", "011000", {"Dice": 1.0, "IoU": 1.0, "Precision": 1.0, "Recall": 1.0, "HD95": 0.0}),
        # surface distances 3 and 4 both ways; P95 of (3, 4) = 3 + 0.95 * (4 - 3)
        ("110000", "000011", {"Dice": 0.0, "IoU": 0.0, "Precision": 0.0, "Recall": 0.0, "HD95": 3.95}),
        # class only in the prediction: nothing to recall, no surface to compare with
        ("000000", "001100", {"Dice": 0.0, "IoU": 0.0, "Precision": 0.0, "Recall": NAN, "HD95": NAN}),
        # class only in the reference: nothing predicted, so no precision
        ("001100", "000000", {"Dice": 0.0, "IoU": 0.0, "Precision": NAN, "Recall": 0.0, "HD95": NAN}),
        # absent from both: undefined everywhere (left out of the means)
        ("000000", "000000", {"Dice": NAN, "IoU": NAN, "Precision": NAN, "Recall": NAN, "HD95": NAN}),
    ],
    ids=["partial-overlap", "identical", "disjoint", "empty-reference", "empty-prediction", "both-empty"],
)
def test_class_metrics_hand_computed(reference: str, prediction: str, expected: dict) -> None:
    result = class_metrics(_row(reference), _row(prediction))
    _assert_metrics(result, expected)
    assert result["n_reference"] == reference.count("1")
    assert result["n_prediction"] == prediction.count("1")


def test_overlap_metrics_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="counts must be >= 0"):
        overlap_metrics(1, -1, 0)


def test_surface_voxels_of_a_cube_leave_out_the_centre() -> None:
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[1:4, 1:4, 1:4] = True  # 3x3x3 cube: 27 voxels, the centre has all 6 neighbours inside
    surface = surface_voxels(mask)
    assert surface.sum() == 26
    assert not surface[2, 2, 2]


def test_surface_voxels_count_the_image_border_as_outside() -> None:
    mask = np.ones((3, 3), dtype=bool)  # fills the image: only the centre is interior
    assert surface_voxels(mask).sum() == 8


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [((1.0, 1.0), 10.5), ((1.0, 0.5), 5.25)],
    ids=["unit-spacing", "half-mm-columns"],
)
def test_hd95_percentile_by_hand(spacing: tuple[float, float], expected: float) -> None:
    # (1, 40) image; every voxel of a one-row mask is a surface voxel.
    # reference: columns 0-9; prediction: columns 0-9 plus an outlier at column 30.
    # prediction -> reference distances: ten 0s and one 21; P95 interpolates ranks 9 and 10:
    # 0 + 0.5 * 21 = 10.5 (in voxels). reference -> prediction: all 0. HD95 = max = 10.5 voxels.
    reference = np.zeros((1, 40), dtype=bool)
    reference[0, :10] = True
    prediction = reference.copy()
    prediction[0, 30] = True
    assert hausdorff_95(reference, prediction, spacing) == pytest.approx(expected)
    assert hausdorff_95(prediction, reference, spacing) == pytest.approx(expected)  # symmetric


def test_hd95_uses_spacing_in_array_order() -> None:
    # (z, y, x) = (2, 2, 6): single voxels 3 columns apart along x; x spacing 2 mm -> 6 mm
    reference = np.zeros((2, 2, 6), dtype=bool)
    prediction = np.zeros_like(reference)
    reference[0, 0, 0] = True
    prediction[0, 0, 3] = True
    assert hausdorff_95(reference, prediction, (5.0, 7.0, 2.0)) == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing": (1.0,)}, "spacing must hold 2 positive values"),
        ({"spacing": (1.0, 0.0)}, "spacing must hold 2 positive values"),
        ({"percentile": 101}, "percentile must be in"),
    ],
    ids=["spacing-length", "spacing-zero", "percentile"],
)
def test_hd95_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hausdorff_95(_row("1100"), _row("0110"), **kwargs)


def test_hd95_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        hausdorff_95(_row("1100"), _row("011"))


def _random_blob(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.random(shape), 1.5)
    return noise > np.quantile(noise, 0.8)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # a deprecation inside MONAI
@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_hd95_matches_monai(seed: int) -> None:
    import torch
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    shape = (9, 20, 24)  # (z, y, x), anisotropic spacing below
    spacing = (2.5, 0.8, 0.6)
    reference, prediction = _random_blob(rng, shape), _random_blob(rng, shape)
    expected = compute_hausdorff_distance(
        torch.from_numpy(prediction)[None, None].float(),
        torch.from_numpy(reference)[None, None].float(),
        include_background=True,
        percentile=95,
        spacing=list(spacing),
    ).item()
    assert hausdorff_95(reference, prediction, spacing) == pytest.approx(expected, rel=1e-5)


def test_case_metrics_leaves_out_ignore_label_voxels() -> None:
    # (1, 6) label maps; 9 is the ignore label. Reference class 1 at columns 0-1, ignore at columns 4-5.
    reference = np.array([[1, 1, 0, 0, 9, 9]])
    prediction = np.array([[1, 0, 0, 0, 1, 1]])  # the prediction inside the ignore region does not count
    result = case_metrics(reference, prediction, {"a": 1}, ignore_label=9)
    _assert_metrics(result["a"], {"Dice": 2 / 3, "Precision": 1.0, "Recall": 0.5})
    without_ignore = case_metrics(reference, prediction, {"a": 1})
    _assert_metrics(without_ignore["a"], {"Dice": 2 / 5, "Precision": 1 / 3})


def test_case_metrics_region_is_the_union_of_its_labels() -> None:
    reference = np.array([[1, 2, 0, 0]])
    prediction = np.array([[2, 2, 2, 0]])
    result = case_metrics(reference, prediction, {"whole": (1, 2), "two": 2})
    _assert_metrics(result["whole"], {"Dice": 4 / 5, "Recall": 1.0})
    _assert_metrics(result["two"], {"Dice": 2 / 4})


def test_paper_means_averages_classes_over_cases_then_over_classes() -> None:
    # Two cases, two classes. Class "b" is absent from reference and prediction of case 1 (NaN).
    per_case = {
        "case1": {"a": {"Dice": 0.8}, "b": {"Dice": NAN}},
        "case2": {"a": {"Dice": 0.6}, "b": {"Dice": 0.5}},
    }
    per_class, overall, n_cases = paper_means(per_case, ["a", "b"], ["Dice"])
    assert per_class["a"]["Dice"] == pytest.approx(0.7)  # (0.8 + 0.6) / 2
    assert per_class["b"]["Dice"] == pytest.approx(0.5)  # case 1 left out
    assert overall["Dice"] == pytest.approx(0.6)  # (0.7 + 0.5) / 2, not the pooled (0.8+0.6+0.5)/3
    assert n_cases == {"a": {"Dice": 2}, "b": {"Dice": 1}}


def test_paper_means_of_nothing_is_nan() -> None:
    per_class, overall, n_cases = paper_means({"c": {"a": {"HD95": NAN}}}, ["a"], ["HD95"])
    assert math.isnan(per_class["a"]["HD95"]) and math.isnan(overall["HD95"])
    assert n_cases["a"]["HD95"] == 0


def test_image_diagonal_is_the_extent_of_the_grid() -> None:
    assert image_diagonal((2, 3, 4), (3.0, 1.0, 0.5)) == pytest.approx(math.sqrt(6.0**2 + 3.0**2 + 2.0**2))
    assert image_diagonal((3, 4)) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="spacing must hold 2 values"):
        image_diagonal((3, 4), (1.0,))


@pytest.mark.parametrize(
    ("policy", "missed", "false_positive"),
    [("diagonal", 5.0, 5.0), ("exclude", NAN, NAN)],
    ids=["diagonal", "exclude"],
)
def test_case_metrics_hd95_policy(policy: str, missed: float, false_positive: float) -> None:
    # (3, 4) image, spacing 1: diagonal 5 mm. Class 1 missed, class 2 only predicted, class 3 perfect,
    # class 4 in neither (always NaN)
    reference = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 3, 3]])
    prediction = np.array([[0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 3]])
    classes = {"missed": 1, "false_positive": 2, "perfect": 3, "absent": 4}
    metrics = case_metrics(reference, prediction, classes, (1.0, 1.0), hd95_missing=policy)
    _assert_metrics(
        {name: m["HD95"] for name, m in metrics.items()},
        {"missed": missed, "false_positive": false_positive, "perfect": 0.0, "absent": NAN},
    )


def test_case_metrics_rejects_unknown_hd95_policy() -> None:
    with pytest.raises(ValueError, match="hd95_missing must be one of"):
        case_metrics(np.zeros((2, 2), int), np.zeros((2, 2), int), {"a": 1}, hd95_missing="zero")
