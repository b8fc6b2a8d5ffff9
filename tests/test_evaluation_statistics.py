"""Paired statistics against scipy and a bootstrap written out here, on small hand-checkable fixtures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from nnunet_topkdice.evaluation.statistics import (
    MIN_CASES_FOR_005,
    bootstrap_ci95,
    case_scores,
    nanmean,
    paired_comparison,
    per_case_class_means,
    wilcoxon_p,
)

NAN = math.nan


def _bootstrap_by_hand(differences: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """The percentile bootstrap spelled out: one resample per row, its mean, then the 2.5th and 97.5th
    percentiles by linear interpolation between the sorted means (numpy's default definition)."""
    n = len(differences)
    rows = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = sorted(sum(differences[j] for j in row) / n for row in rows)

    def percentile(q: float) -> float:
        position = q / 100 * (n_boot - 1)
        below = math.floor(position)
        above = min(below + 1, n_boot - 1)
        return means[below] + (position - below) * (means[above] - means[below])

    return percentile(2.5), percentile(97.5)


# 8 cases, method better on most: differences 0.05, 0.10, -0.02, 0.03, 0.08, 0.00, 0.12, 0.04
METHOD = np.array([0.85, 0.90, 0.70, 0.83, 0.88, 0.60, 0.92, 0.80])
BASELINE = np.array([0.80, 0.80, 0.72, 0.80, 0.80, 0.60, 0.80, 0.76])


def test_paired_comparison_matches_scipy_and_a_hand_bootstrap() -> None:
    result = paired_comparison(METHOD, BASELINE, n_boot=2000, seed=3)
    differences = METHOD - BASELINE
    assert result.n_cases == 8
    assert result.n_nonzero == 7
    assert result.mean_difference == pytest.approx(0.40 / 8)
    assert result.p_value == pytest.approx(stats.wilcoxon(differences).pvalue)
    assert result.ci95 == pytest.approx(_bootstrap_by_hand(differences, 2000, 3))
    low, high = result.ci95
    assert low < result.mean_difference < high


def test_bootstrap_depends_on_the_seed_only() -> None:
    differences = METHOD - BASELINE
    assert bootstrap_ci95(differences, seed=1) == bootstrap_ci95(differences, seed=1)
    assert bootstrap_ci95(differences, seed=1) != bootstrap_ci95(differences, seed=2)


def test_all_zero_differences_have_no_p_value() -> None:
    # scipy >= 1.12 answers p = 1.0 (with a warning) for all-zero differences; the test is undefined there
    result = paired_comparison(BASELINE, BASELINE.copy(), n_boot=2000)
    assert result.p_value is None
    assert result.mean_difference == 0.0
    assert result.ci95 == (0.0, 0.0)
    assert result.n_cases == 8 and result.n_nonzero == 0


def test_undefined_cases_are_left_out_of_the_pairing() -> None:
    method = METHOD.copy()
    baseline = BASELINE.copy()
    method[1] = NAN  # undefined for the method
    baseline[6] = NAN  # undefined for the baseline
    result = paired_comparison(method, baseline, n_boot=2000, seed=0)
    kept = np.array([0, 2, 3, 4, 5, 7])
    expected = paired_comparison(METHOD[kept], BASELINE[kept], n_boot=2000, seed=0)
    assert result == expected
    assert result.n_cases == 6


def test_no_pair_gives_no_statistics() -> None:
    result = paired_comparison(np.array([NAN, 0.5]), np.array([0.4, NAN]))
    assert (result.n_cases, result.mean_difference, result.ci95, result.p_value) == (0, None, None, None)


def test_one_case() -> None:
    result = paired_comparison(np.array([0.7]), np.array([0.5]), n_boot=2000)
    assert result.mean_difference == pytest.approx(0.2)
    assert result.ci95 == pytest.approx((0.2, 0.2))
    assert result.p_value == pytest.approx(stats.wilcoxon([0.2]).pvalue)


@pytest.mark.parametrize(("n", "reachable"), [(5, False), (6, True)], ids=["5-cases", "6-cases"])
def test_fewer_than_six_cases_cannot_reach_005(n: int, reachable: bool) -> None:
    # the most extreme outcome: every difference positive, all different
    p_value = wilcoxon_p(np.arange(1, n + 1) / 100)
    assert p_value == pytest.approx(2 / 2**n)
    assert (p_value < 0.05) is reachable
    assert (n >= MIN_CASES_FOR_005) is reachable


def test_wilcoxon_p_undefined() -> None:
    assert wilcoxon_p(np.array([])) is None
    assert wilcoxon_p(np.zeros(4)) is None
    assert wilcoxon_p(np.array([0.0, 0.0, 0.1])) == pytest.approx(stats.wilcoxon([0.0, 0.0, 0.1]).pvalue)


def test_case_scores_single_repeat_and_undefined_classes() -> None:
    # (1 repeat, 3 cases, 2 classes): case 1 has one undefined class, case 2 none defined
    dice = np.array([[[0.8, 0.6], [0.9, NAN], [NAN, NAN]]])
    np.testing.assert_allclose(case_scores(dice), [0.7, 0.9, NAN])


def test_case_scores_average_the_repeats_where_defined() -> None:
    # (2 repeats, 2 cases, 2 classes); case 1 is undefined in repeat 2 (nothing in reference or prediction)
    dice = np.array(
        [
            [[0.8, 0.6], [0.4, NAN]],
            [[1.0, 0.8], [NAN, NAN]],
        ]
    )
    np.testing.assert_allclose(case_scores(dice), [(0.7 + 0.9) / 2, 0.4])
    np.testing.assert_allclose(per_case_class_means(dice), [[0.9, 0.7], [0.4, NAN]])


def test_nanmean_without_values_is_nan_without_warning() -> None:
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(nanmean(np.array([[NAN, NAN], [1.0, NAN]]), axis=1), [NAN, 1.0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: paired_comparison(np.zeros(3), np.zeros(4)), "1-D of the same length"),
        (lambda: paired_comparison(np.zeros((2, 2)), np.zeros((2, 2))), "1-D of the same length"),
        (lambda: paired_comparison(np.zeros(3), np.zeros(3), n_boot=0), "n_boot must be a positive integer"),
        (lambda: bootstrap_ci95(np.array([])), "non-empty 1-D array without NaN"),
        (lambda: bootstrap_ci95(np.array([0.1, NAN])), "non-empty 1-D array without NaN"),
        (lambda: case_scores(np.zeros((2, 2))), r"shape \(n_repeats, n_cases, n_classes\)"),
    ],
    ids=["lengths", "2d", "n-boot", "empty", "nan", "case-scores-2d"],
)
def test_errors(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
