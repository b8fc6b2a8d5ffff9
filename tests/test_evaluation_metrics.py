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
    normalised_surface_dice,
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
        # tp=2 fp=1 fn=2: Dice 4/7, IoU 2/5, precision 2/3, recall 2/4; every voxel is a surface voxel:
        # distances pred -> ref (0, 0, 1), ref -> pred (2, 1, 0, 0): NSD at 1 mm = (3 + 3) / (3 + 4)
        ("111100", "001110", {"Dice": 4 / 7, "IoU": 2 / 5, "Precision": 2 / 3, "Recall": 1 / 2, "NSD": 6 / 7}),
        ("011000", "011000", {"Dice": 1.0, "IoU": 1.0, "Precision": 1.0, "Recall": 1.0, "HD95": 0.0, "NSD": 1.0}),
        # surface distances 3 and 4 both ways; P95 of (3, 4) = 3 + 0.95 * (4 - 3); none within 1 mm
        ("110000", "000011", {"Dice": 0.0, "IoU": 0.0, "Precision": 0.0, "Recall": 0.0, "HD95": 3.95, "NSD": 0.0}),
        # class only in the prediction: nothing to recall, no surface to compare with; NSD 0 like Dice
        ("000000", "001100", {"Dice": 0.0, "IoU": 0.0, "Precision": 0.0, "Recall": NAN, "HD95": NAN, "NSD": 0.0}),
        # class only in the reference: nothing predicted, so no precision
        ("001100", "000000", {"Dice": 0.0, "IoU": 0.0, "Precision": NAN, "Recall": 0.0, "HD95": NAN, "NSD": 0.0}),
        # absent from both: undefined everywhere (left out of the means)
        ("000000", "000000", {"Dice": NAN, "IoU": NAN, "Precision": NAN, "Recall": NAN, "HD95": NAN, "NSD": NAN}),
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


# --- normalised surface Dice ---------------------------------------------------------------------------


def _ball(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_nsd_of_a_sphere_shifted_by_one_voxel() -> None:
    # shape (z, y, x) = (15, 15, 15), spacing 1 mm; the prediction is the ball moved one voxel along x
    reference = _ball((15, 15, 15), (7, 7, 7), 4.5)
    prediction = np.roll(reference, 1, axis=2)
    # every shifted surface voxel p + e_x has the reference surface voxel p at 1 mm (and vice versa), so at a
    # 1 mm tolerance the whole surface counts
    assert normalised_surface_dice(reference, prediction, tolerance=1.0) == 1.0
    # at 0 mm only the voxels on both surfaces count: 2 |S n S'| / (|S| + |S'|)
    surface, shifted = surface_voxels(reference), surface_voxels(prediction)
    expected = 2 * np.count_nonzero(surface & shifted) / (np.count_nonzero(surface) + np.count_nonzero(shifted))
    assert 0 < expected < 1
    assert normalised_surface_dice(reference, prediction, tolerance=0.0) == pytest.approx(expected)
    # in mm: with 2 mm voxels along x the shift is 2 mm, beyond the 1 mm tolerance for part of the surface
    assert normalised_surface_dice(reference, prediction, (1.0, 1.0, 2.0), tolerance=1.0) < 1.0
    assert normalised_surface_dice(reference, prediction, (1.0, 1.0, 2.0), tolerance=2.0) == 1.0


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        # z steps of 2 mm: the moved half of the prediction is 2 mm from the reference (out); reference
        # voxels of that half have the unmoved prediction at 0.5 mm (x = 2) and 1.0 mm (x = 3): (8 + 16) / 32
        ((2.0, 1.0, 0.5), 24 / 32),
        # x steps of 0.6 mm: x = 3 is now 1.2 mm away: (8 + 12) / 32
        ((2.0, 1.0, 0.6), 20 / 32),
        # z steps of 0.9 mm: everything within 1 mm
        ((0.9, 1.0, 1.0), 1.0),
    ],
    ids=["z2-x0.5", "z2-x0.6", "z0.9"],
)
def test_nsd_anisotropic_spacing_by_hand(spacing: tuple[float, ...], expected: float) -> None:
    # shape (z, y, x) = (5, 4, 4): the reference is the plane z = 2 (16 voxels, all on the surface); the
    # prediction keeps x < 2 there and moves x >= 2 to z = 3
    reference = np.zeros((5, 4, 4), dtype=bool)
    reference[2] = True
    prediction = np.zeros_like(reference)
    prediction[2, :, :2] = True
    prediction[3, :, 2:] = True
    assert normalised_surface_dice(reference, prediction, spacing, tolerance=1.0) == pytest.approx(expected)
    metrics = class_metrics(reference, prediction, spacing, nsd_tolerance=1.0)
    assert metrics["NSD"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("reference", "prediction", "expected"),
    [("011000", "000000", 0.0), ("000000", "011000", 0.0), ("000000", "000000", NAN)],
    ids=["empty-prediction", "empty-reference", "both-empty"],
)
def test_nsd_of_empty_masks(reference: str, prediction: str, expected: float) -> None:
    result = normalised_surface_dice(_row(reference), _row(prediction))
    assert math.isnan(result) if math.isnan(expected) else result == expected


@pytest.mark.parametrize("tolerance", [-0.5, math.inf, NAN, "1"], ids=["negative", "inf", "nan", "str"])
def test_nsd_rejects_bad_tolerance(tolerance) -> None:
    with pytest.raises(ValueError, match="nsd_tolerance must be a finite number of mm >= 0"):
        normalised_surface_dice(_row("0110"), _row("0110"), tolerance=tolerance)
    with pytest.raises(ValueError, match="nsd_tolerance must be a finite number of mm >= 0"):
        case_metrics(_row("0110").astype(int), _row("0110").astype(int), {"a": 1}, nsd_tolerance=tolerance)


def _monai_nsd(reference: np.ndarray, prediction: np.ndarray, spacing, tolerance: float, **kwargs) -> float:
    import torch
    from monai.metrics import compute_surface_dice

    def one_hot(mask: np.ndarray) -> torch.Tensor:  # (1, 2, *spatial): background, foreground
        mask = torch.from_numpy(mask)
        return torch.stack([~mask, mask])[None].float()

    return compute_surface_dice(
        one_hot(prediction), one_hot(reference), [tolerance], spacing=list(spacing), **kwargs
    ).item()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # a deprecation inside MONAI
@pytest.mark.parametrize(
    ("seed", "tolerance"), [(0, 1.0), (1, 0.5), (2, 2.0), (3, 0.0)], ids=["s0-1mm", "s1-0.5mm", "s2-2mm", "s3-0mm"]
)
def test_nsd_matches_monai(seed: int, tolerance: float) -> None:
    rng = np.random.default_rng(seed)
    shape = (9, 20, 24)  # (z, y, x), anisotropic spacing below
    spacing = (2.5, 0.8, 0.6)
    reference, prediction = _random_blob(rng, shape), _random_blob(rng, shape)
    expected = _monai_nsd(reference, prediction, spacing, tolerance, use_subvoxels=False)
    assert 0 < expected < 1
    assert normalised_surface_dice(reference, prediction, spacing, tolerance) == pytest.approx(expected, rel=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_nsd_matches_monai_on_the_shifted_sphere_and_differs_from_its_subvoxel_variant() -> None:
    reference = _ball((15, 15, 15), (7, 7, 7), 4.5)
    prediction = np.roll(reference, 1, axis=2)
    spacing = (1.0, 1.0, 2.0)
    ours = normalised_surface_dice(reference, prediction, spacing, tolerance=1.0)
    assert ours == pytest.approx(_monai_nsd(reference, prediction, spacing, 1.0, use_subvoxels=False), rel=1e-6)
    # MONAI's use_subvoxels=True (DeepMind's surface-distance) puts the surface between the voxels and weights
    # each element by its area: a different number for the same masks (documented in the metrics module)
    subvoxel = _monai_nsd(reference, prediction, spacing, 1.0, use_subvoxels=True)
    assert subvoxel != pytest.approx(ours, abs=1e-3)
