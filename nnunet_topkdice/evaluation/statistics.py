"""Paired statistics of two methods on the same test cases: pure numpy/scipy over arrays, no I/O.

Definitions (fractions, not percent), used by ``topkdice evaluate`` for ``results.json["comparisons"]``:

* case score: the mean over the dataset's foreground classes of a case's Dice, where defined
  (:func:`case_scores`); a method's score per case is the mean of its case scores over its repeats;
* mean difference: the mean over the paired cases of (method - baseline); a case whose score is
  undefined for either method is left out of the pairing;
* p value: two-sided Wilcoxon signed-rank test of the per-case differences with scipy's defaults;
  None where it is undefined (no case, or every difference zero);
* 95% interval: percentile bootstrap of the mean difference, cases resampled with replacement,
  ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "MIN_CASES_FOR_005",
    "Comparison",
    "bootstrap_ci95",
    "case_scores",
    "nanmean",
    "paired_comparison",
    "per_case_class_means",
    "wilcoxon_p",
]

# The exact two-sided Wilcoxon p value of n non-zero differences is at least 2 / 2**n: 0.0625 for n = 5,
# 0.03125 for n = 6. With fewer, no outcome is significant at 0.05.
MIN_CASES_FOR_005 = 6


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`paired_comparison`.

    Attributes:
        n_cases: cases where both scores are defined (the pairs).
        n_nonzero: pairs whose difference is not zero (what the Wilcoxon test ranks).
        mean_difference: mean of (method - baseline) over the pairs; None without pairs.
        ci95: (low, high) percentile-bootstrap 95% interval of the mean difference; None without pairs.
        p_value: two-sided Wilcoxon signed-rank p value; None where undefined.
    """

    n_cases: int
    n_nonzero: int
    mean_difference: float | None
    ci95: tuple[float, float] | None
    p_value: float | None


def nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` of the non-NaN values; NaN where there are none (no warning, unlike np.nanmean).

    Shape:
        values: any float array.  returns: ``values`` without ``axis``.
    """
    values = np.asarray(values, dtype=np.float64)
    defined = ~np.isnan(values)
    count = defined.sum(axis=axis)
    total = np.where(defined, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def case_scores(dice: np.ndarray) -> np.ndarray:
    """A method's score per case: the mean over classes (where defined), then over repeats (where defined).

    Shape:
        dice: (n_repeats, n_cases, n_classes) float, NaN where a class's Dice is undefined in a case.
        returns: (n_cases,) float64, NaN where no repeat has a defined class in that case.
    Raises:
        ValueError: ``dice`` is not 3-D.
    """
    dice = np.asarray(dice, dtype=np.float64)
    if dice.ndim != 3:
        raise ValueError(f"dice must have shape (n_repeats, n_cases, n_classes), got {dice.shape}")
    return nanmean(nanmean(dice, axis=2), axis=0)


def per_case_class_means(dice: np.ndarray) -> np.ndarray:
    """Each class's Dice per case averaged over the repeats where it is defined.

    Shape:
        dice: (n_repeats, n_cases, n_classes) float with NaN.  returns: (n_cases, n_classes) float64.
    Raises:
        ValueError: ``dice`` is not 3-D.
    """
    dice = np.asarray(dice, dtype=np.float64)
    if dice.ndim != 3:
        raise ValueError(f"dice must have shape (n_repeats, n_cases, n_classes), got {dice.shape}")
    return nanmean(dice, axis=0)


def wilcoxon_p(differences: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p value of paired differences, scipy's default options.

    Shape:
        differences: (n,) float without NaN.  returns: p in [0, 1], or None where the test is undefined:
        no difference, every difference zero (recent scipy returns 1.0 there, older raises), or NaN.
    """
    differences = np.asarray(differences, dtype=np.float64)
    if differences.size == 0 or not np.any(differences != 0):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # small-sample and tie notices
            p_value = float(stats.wilcoxon(differences).pvalue)
    except ValueError:
        return None
    return None if math.isnan(p_value) else p_value


def bootstrap_ci95(differences: np.ndarray, *, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of the mean of ``differences``, cases resampled with replacement.

    All resamples are drawn at once: ``np.random.default_rng(seed).integers(0, n, size=(n_boot, n))``,
    so the interval depends only on the differences, ``n_boot`` and ``seed``.

    Shape:
        differences: (n,) float without NaN, n >= 1.  returns: (2.5th, 97.5th) percentile of the resampled
        means (``numpy.percentile``'s linear interpolation).
    Raises:
        ValueError: no difference, a NaN, or ``n_boot`` < 1.
    """
    differences = np.asarray(differences, dtype=np.float64)
    if differences.ndim != 1 or differences.size == 0 or np.isnan(differences).any():
        raise ValueError(f"differences must be a non-empty 1-D array without NaN, got {differences!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    n = differences.size
    resampled = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = differences[resampled].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired_comparison(
    method: np.ndarray, baseline: np.ndarray, *, n_boot: int = 10_000, seed: int = 0
) -> Comparison:
    """Mean difference, percentile-bootstrap 95% interval and two-sided Wilcoxon p of paired scores.

    Shape:
        method, baseline: (n_cases,) float per-case scores, already averaged over repeats; NaN (undefined)
        in either leaves the case out of the pairing.
    Returns:
        :class:`Comparison`; without pairs, every statistic is None.
    Raises:
        ValueError: shapes differ or are not 1-D; ``n_boot`` < 1.
    """
    method = np.asarray(method, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    if method.ndim != 1 or method.shape != baseline.shape:
        raise ValueError(f"method and baseline must be 1-D of the same length, got {method.shape} and "
                         f"{baseline.shape}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    paired = ~np.isnan(method) & ~np.isnan(baseline)
    differences = method[paired] - baseline[paired]
    if differences.size == 0:
        return Comparison(0, 0, None, None, None)
    return Comparison(
        n_cases=int(differences.size),
        n_nonzero=int(np.count_nonzero(differences)),
        mean_difference=float(differences.mean()),
        ci95=bootstrap_ci95(differences, n_boot=n_boot, seed=seed),
        p_value=wilcoxon_p(differences),
    )
