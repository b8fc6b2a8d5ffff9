"""Paired statistics of two methods on the same test cases: pure numpy/scipy over arrays, no I/O.

Definitions (fractions, not percent; SPEC section 6), used by ``topkdice evaluate`` for
``results.json["comparisons"]``:

* case score ``y[m, s, c]``: the mean over the dataset's foreground classes of a case's Dice, where defined;
* the crossed analysis (:func:`crossed_comparison`): the table ``D[s, c]`` of paired differences over
  S repeats (seeds) and C cases, both random factors; two-way random-effects mean squares, Satterthwaite
  degrees of freedom (or the floor rule), t interval and p value. It asks whether the method wins *as a
  training procedure*, over new seeds and new cases;
* the verdict (:func:`verdict`) and Holm's adjustment over the comparisons of one evaluation
  (:func:`holm_adjust`);
* how many repeats would settle it (:func:`repeats_needed`);
* the analysis conditional on the trained models (:func:`paired_comparison`): repeat-averaged case scores,
  percentile bootstrap over cases and the two-sided Wilcoxon signed-rank test. It describes these trained
  models only, never the loss.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

__all__ = [
    "ALPHA",
    "MIN_CASES_FOR_005",
    "POWER",
    "VERDICTS",
    "Comparison",
    "Crossed",
    "Friedman",
    "MeanSquares",
    "RepeatsNeeded",
    "bootstrap_ci95",
    "case_scores",
    "crossed_comparison",
    "defined_cases",
    "difference_comparison",
    "friedman_test",
    "holm_adjust",
    "nanmean",
    "paired_comparison",
    "per_case_class_means",
    "repeat_case_scores",
    "repeats_needed",
    "verdict",
    "wilcoxon_p",
]

# The exact two-sided Wilcoxon p value of n non-zero differences is at least 2 / 2**n: 0.0625 for n = 5,
# 0.03125 for n = 6. With fewer, no outcome reaches p < 0.05.
MIN_CASES_FOR_005 = 6

ALPHA = 0.05  # the level of the verdict, after Holm's adjustment
POWER = 0.8  # of repeats_needed
MAX_REPEATS = 100  # repeats_needed searches n in 2..MAX_REPEATS
# SPEC 6.3, in the order of the claims they make
VERDICTS = ("undefined", "one repeat", "exploratory", "inconclusive", "better", "worse")


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


def _dice_array(dice: np.ndarray) -> np.ndarray:
    """``dice`` as float64. Raises: ValueError: not (n_repeats, n_cases, n_classes)."""
    dice = np.asarray(dice, dtype=np.float64)
    if dice.ndim != 3:
        raise ValueError(f"dice must have shape (n_repeats, n_cases, n_classes), got {dice.shape}")
    return dice


def case_scores(dice: np.ndarray) -> np.ndarray:
    """A method's score per case: the mean over classes (where defined), then over repeats (where defined).

    Shape:
        dice: (n_repeats, n_cases, n_classes) float, NaN where a class's Dice is undefined in a case.
        returns: (n_cases,) float64, NaN where no repeat has a defined class in that case.
    Raises:
        ValueError: ``dice`` is not 3-D.
    """
    dice = _dice_array(dice)
    return nanmean(nanmean(dice, axis=2), axis=0)


def per_case_class_means(dice: np.ndarray) -> np.ndarray:
    """Each class's Dice per case averaged over the repeats where it is defined.

    Shape:
        dice: (n_repeats, n_cases, n_classes) float with NaN.  returns: (n_cases, n_classes) float64.
    Raises:
        ValueError: ``dice`` is not 3-D.
    """
    dice = _dice_array(dice)
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


def difference_comparison(differences: np.ndarray, *, n_boot: int = 10_000, seed: int = 0) -> Comparison:
    """Mean, percentile-bootstrap 95% interval and two-sided Wilcoxon p of per-case differences.

    Shape:
        differences: (n_cases,) float without NaN (method - baseline per case); may be empty.
    Returns:
        :class:`Comparison`; without cases, every statistic is None.
    Raises:
        ValueError: ``differences`` is not 1-D or holds NaN; ``n_boot`` < 1.
    """
    differences = np.asarray(differences, dtype=np.float64)
    if differences.ndim != 1 or np.isnan(differences).any():
        raise ValueError(f"differences must be a 1-D array without NaN, got shape {differences.shape}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if differences.size == 0:
        return Comparison(0, 0, None, None, None)
    return Comparison(
        n_cases=int(differences.size),
        n_nonzero=int(np.count_nonzero(differences)),
        mean_difference=float(differences.mean()),
        ci95=bootstrap_ci95(differences, n_boot=n_boot, seed=seed),
        p_value=wilcoxon_p(differences),
    )


def paired_comparison(
    method: np.ndarray, baseline: np.ndarray, *, n_boot: int = 10_000, seed: int = 0
) -> Comparison:
    """:func:`difference_comparison` of paired per-case scores.

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
    paired = ~np.isnan(method) & ~np.isnan(baseline)
    return difference_comparison(method[paired] - baseline[paired], n_boot=n_boot, seed=seed)


# --- the crossed analysis (SPEC 6.2-6.4) ---------------------------------------------------------------


def repeat_case_scores(dice: np.ndarray) -> np.ndarray:
    """Case score per repeat, ``y[s, c]``: the mean over classes of the Dice where defined.

    Shape:
        dice: (n_repeats, n_cases, n_classes) float with NaN.  returns: (n_repeats, n_cases) float64, NaN
        where no class is defined.
    Raises:
        ValueError: ``dice`` is not 3-D.
    """
    dice = _dice_array(dice)
    return nanmean(dice, axis=2)


def defined_cases(differences: np.ndarray) -> np.ndarray:
    """The cases kept by the crossed analysis: those whose difference is defined in every paired repeat.

    Shape:
        differences: (n_repeats, n_cases) float with NaN.  returns: (n_cases,) bool.
    Raises:
        ValueError: ``differences`` is not 2-D.
    """
    differences = np.asarray(differences, dtype=np.float64)
    if differences.ndim != 2:
        raise ValueError(f"differences must have shape (n_repeats, n_cases), got {differences.shape}")
    return ~np.isnan(differences).any(axis=0)


@dataclass(frozen=True)
class MeanSquares:
    """Two-way random-effects mean squares without replication (SPEC 6.2): ``repeats`` (MS_S), ``cases``
    (MS_C) and ``error`` (MS_E, the repeat x case interaction)."""

    repeats: float
    cases: float
    error: float


@dataclass(frozen=True)
class Crossed:
    """Result of :func:`crossed_comparison` (SPEC 6.2).

    Attributes:
        n_repeats: S, the paired repeats.
        n_cases: C, the cases left after dropping those undefined in any repeat.
        n_cases_dropped: cases dropped because a difference was NaN in some repeat.
        mean_difference: mean of ``D`` over repeats and cases; None when C = 0.
        per_repeat_differences: mean of ``D[s, :]`` per repeat (empty when C = 0).
        repeats_better: repeats whose difference is > 0.
        mean_squares: MS_S, MS_C, MS_E; None when S < 2 or C < 2.
        variance: the variance of the mean, ``V``; None when S < 2 or C < 2.
        variance_rule: ``"satterthwaite"``, ``"floor (repeats)"`` (V from MS_S, df = S - 1),
            ``"floor (cases)"`` (V from MS_C, df = C - 1); None when S < 2 or C < 2.
        df: degrees of freedom of the t interval; None when S < 2, C < 2 or V = 0.
        ci95: ``m ± t(0.975, df) sqrt(V)``; None likewise.
        p_value: ``2 t.sf(|m| / sqrt(V), df)``; None likewise.
    """

    n_repeats: int
    n_cases: int
    n_cases_dropped: int
    mean_difference: float | None
    per_repeat_differences: tuple[float, ...]
    repeats_better: int
    mean_squares: MeanSquares | None = None
    variance: float | None = None
    variance_rule: str | None = None
    df: float | None = None
    ci95: tuple[float, float] | None = None
    p_value: float | None = None


def _mean_squares(differences: np.ndarray) -> MeanSquares:
    """MS_S, MS_C, MS_E of a complete (S, C) table, S >= 2 and C >= 2."""
    n_repeats, n_cases = differences.shape
    mean = differences.mean()
    repeat_means = differences.mean(axis=1)
    case_means = differences.mean(axis=0)
    residuals = differences - repeat_means[:, None] - case_means[None, :] + mean
    return MeanSquares(
        repeats=float(n_cases / (n_repeats - 1) * np.sum((repeat_means - mean) ** 2)),
        cases=float(n_repeats / (n_cases - 1) * np.sum((case_means - mean) ** 2)),
        error=float(np.sum(residuals**2) / ((n_repeats - 1) * (n_cases - 1))),
    )


def _variance_of_mean(ms: MeanSquares, n_repeats: int, n_cases: int) -> tuple[float, float, str]:
    """``(V, df, rule)`` of the grand mean: Satterthwaite when MS_S + MS_C - MS_E >= max(MS_S, MS_C),
    else the floor ``max(MS_S, MS_C) / (S C)`` with the df of the larger mean square (SPEC 6.2)."""
    combined = ms.repeats + ms.cases - ms.error
    n_cells = n_repeats * n_cases
    if combined >= max(ms.repeats, ms.cases):
        denominator = (
            ms.repeats**2 / (n_repeats - 1)
            + ms.cases**2 / (n_cases - 1)
            + ms.error**2 / ((n_repeats - 1) * (n_cases - 1))
        )
        df = combined**2 / denominator if denominator > 0 else math.nan
        return combined / n_cells, df, "satterthwaite"
    if ms.repeats >= ms.cases:
        return ms.repeats / n_cells, float(n_repeats - 1), "floor (repeats)"
    return ms.cases / n_cells, float(n_cases - 1), "floor (cases)"


def crossed_comparison(differences: np.ndarray) -> Crossed:
    """The crossed analysis of paired differences, seeds and cases both random (SPEC 6.2).

    Shape:
        differences: (n_repeats, n_cases) float, method - baseline, paired by repeat (seed) and case; a case
        with NaN in any repeat is dropped (counted in ``n_cases_dropped``).
    Returns:
        :class:`Crossed`: mean, per-repeat means, the two-way random-effects mean squares, ``V``,
        Satterthwaite df (or the floor rule), t interval and p (scipy's t); those last ones None where
        S < 2 or C < 2, and df, ci95, p None where ``V`` is 0 (all repeat means and case means equal).
    Raises:
        ValueError: ``differences`` is not 2-D or has no repeat.
    """
    differences = np.asarray(differences, dtype=np.float64)
    kept = defined_cases(differences)
    if differences.shape[0] < 1:
        raise ValueError("differences must have at least one repeat (row)")
    table = differences[:, kept]
    n_repeats, n_cases = table.shape
    dropped = int((~kept).sum())
    if n_cases == 0:
        return Crossed(n_repeats, 0, dropped, None, (), 0)
    per_repeat = table.mean(axis=1)
    mean = float(table.mean())
    base = Crossed(n_repeats, n_cases, dropped, mean, tuple(float(v) for v in per_repeat), int((per_repeat > 0).sum()))
    if n_repeats < 2 or n_cases < 2:
        return base
    ms = _mean_squares(table)
    variance, df, rule = _variance_of_mean(ms, n_repeats, n_cases)
    if np.all(table == table[0, 0]) or not variance > 0 or math.isnan(df):  # every difference the same
        return replace(base, mean_squares=ms, variance=0.0, variance_rule=rule)
    half_width = float(stats.t.ppf(0.975, df)) * math.sqrt(variance)
    p_value = float(2 * stats.t.sf(abs(mean) / math.sqrt(variance), df))
    return replace(
        base, mean_squares=ms, variance=variance, variance_rule=rule, df=float(df),
        ci95=(mean - half_width, mean + half_width), p_value=p_value,
    )  # fmt: skip


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment over the defined p values (statsmodels ``multipletests(method="holm")``);
    None stays None and is not counted.

    Shape:
        p_values: one per comparison, None where undefined.  returns: the same length.
    """
    defined = [i for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    if defined:
        corrected = multipletests([p_values[i] for i in defined], method="holm")[1]
        for i, p in zip(defined, corrected, strict=True):
            adjusted[i] = float(p)
    return adjusted


def verdict(n_repeats: int, n_cases: int, mean_difference: float | None, p_holm: float | None) -> str:
    """What a comparison may claim (SPEC 6.3): ``undefined`` (no case left), ``one repeat`` (S = 1),
    ``exploratory`` (S = 2), and for S >= 3 ``better``/``worse`` (by the sign of the mean) when
    ``p_holm`` < 0.05, else ``inconclusive``."""
    if n_cases == 0 or mean_difference is None:
        return "undefined"
    if n_repeats == 1:
        return "one repeat"
    if n_repeats == 2:
        return "exploratory"
    if p_holm is not None and p_holm < ALPHA and mean_difference != 0:
        return "better" if mean_difference > 0 else "worse"
    return "inconclusive"


@dataclass(frozen=True)
class RepeatsNeeded:
    """Result of :func:`repeats_needed`: ``n`` repeats per method (None if no n in 2..100 suffices) and
    the ``reason`` in words."""

    n: int | None
    reason: str


def _power_half_width(n: int, variances: tuple[float, float, float], n_cases: int, power: float) -> float:
    """``(t(0.975, n-1) + t(power, n-1)) sqrt(V(n))`` with ``V(n) = var_s/n + var_c/C + var_e/(n C)``."""
    var_s, var_c, var_e = variances
    v_n = var_s / n + var_c / n_cases + var_e / (n * n_cases)
    return float(stats.t.ppf(0.975, n - 1) + stats.t.ppf(power, n - 1)) * math.sqrt(v_n)


def repeats_needed(
    mean_squares: MeanSquares, n_repeats: int, n_cases: int, target_difference: float, *, power: float = POWER
) -> RepeatsNeeded:
    """How many repeats (seeds) per method would detect ``target_difference`` with ``power`` (SPEC 6.4).

    With ``var_e = MS_E``, ``var_s = max(0, (MS_S - MS_E) / C)``, ``var_c = max(0, (MS_C - MS_E) / S)``:
    the smallest n in 2..100 with ``(t(0.975, n-1) + t(power, n-1)) sqrt(V(n)) <= |d|``. When none
    suffices, n is None; the reason says that more cases, not seeds, are needed when the case variance
    alone (``var_c / C``) already keeps the interval too wide at n = 100, else that more than 100 repeats
    would be needed.

    Raises:
        ValueError: S < 2, C < 2, or a target difference that is not a positive finite number.
    """
    if n_repeats < 2 or n_cases < 2:
        raise ValueError(f"repeats_needed needs at least 2 repeats and 2 cases, got {n_repeats} and {n_cases}")
    if not (math.isfinite(target_difference) and target_difference > 0):
        raise ValueError(f"target_difference must be a positive number, got {target_difference!r}")
    var_e = mean_squares.error
    var_s = max(0.0, (mean_squares.repeats - var_e) / n_cases)
    var_c = max(0.0, (mean_squares.cases - var_e) / n_repeats)
    variances = (var_s, var_c, var_e)
    for n in range(2, MAX_REPEATS + 1):
        if _power_half_width(n, variances, n_cases, power) <= target_difference:
            return RepeatsNeeded(n, f"the smallest n in 2..{MAX_REPEATS} whose 95% test has {power:.0%} power "
                                 "for the target difference")  # fmt: skip
    if _power_half_width(MAX_REPEATS, (0.0, var_c, 0.0), n_cases, power) > target_difference:
        return RepeatsNeeded(None, f"more cases, not seeds, are needed: with {n_cases} cases the case-to-case "
                             "variance alone keeps the interval wider than the target difference at any number of "
                             "seeds")  # fmt: skip
    return RepeatsNeeded(None, f"more than {MAX_REPEATS} repeats per method would be needed: the seed-to-seed "
                         "variance is too large for the target difference")  # fmt: skip


@dataclass(frozen=True)
class Friedman:
    """Result of :func:`friedman_test`: the chi-square ``statistic``, its ``p_value`` and each method's
    ``mean_ranks`` over the blocks (1 = best)."""

    statistic: float
    p_value: float
    mean_ranks: tuple[float, ...]


def friedman_test(scores: np.ndarray) -> Friedman:
    """Friedman's test of several methods over blocks (datasets), scipy's ``friedmanchisquare``.

    Shape:
        scores: (n_blocks, n_methods) float without NaN, higher is better; n_methods >= 3, n_blocks >= 2.
    returns: statistic and p NaN where every block ties (0 / 0), without a warning.
    Raises:
        ValueError: fewer than 3 methods or 2 blocks, or NaN.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 3 or scores.shape[0] < 2 or np.isnan(scores).any():
        raise ValueError(f"scores must be (n_blocks >= 2, n_methods >= 3) without NaN, got {scores.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        result = stats.friedmanchisquare(*scores.T)
    ranks = stats.rankdata(-scores, axis=1).mean(axis=0)  # rank 1 = the highest score of a block
    return Friedman(float(result.statistic), float(result.pvalue), tuple(float(r) for r in ranks))
