"""Assembling ``results.json`` from per-case metrics: each repeat's means, each method's mean ± sd over its
repeats, and the paired comparisons with the baseline (statistics from
:mod:`~nnunet_topkdice.evaluation.statistics`). Pure functions over dicts; no file I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nnunet_topkdice.evaluation.metrics import METRICS, paper_means
from nnunet_topkdice.evaluation.statistics import (
    case_scores,
    nanmean,
    paired_comparison,
    per_case_class_means,
)

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONVENTIONS",
    "comparison_entry",
    "comparisons",
    "dice_array",
    "method_result",
    "nan_to_none",
    "repeat_result",
]

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0

CONVENTIONS = {
    "averaging": "each class is averaged over the test cases where its value is defined, then the class "
    "means are averaged over the classes (mDice, mIoU, mPrec., mRec., mHD95, mNSD)",
    "repeats": "a method given several prediction folders (seeds or folds): every mean is computed per "
    "repeat, then averaged over the repeats; sd is the sample standard deviation over the repeats (null "
    "for one repeat); per_case is the mean over the repeats where the value is defined",
    "both_empty": "class absent from reference and prediction: all metrics NaN (null), left out of the means",
    "reference_empty": "class only in the prediction: Dice 0, IoU 0, Precision 0, NSD 0, Recall NaN, HD95 by "
    "the hd95_missing policy",
    "prediction_empty": "class only in the reference: Dice 0, IoU 0, Recall 0, NSD 0, Precision NaN, HD95 by "
    "the hd95_missing policy",
    "hd95": "max of the two directed 95th-percentile distances (mm) between the surface voxels "
    "(face-connected boundary) of reference and prediction, as MONAI's "
    "compute_hausdorff_distance(percentile=95)",
    "hd95_missing": "diagonal: a class in only one of reference and prediction gets the image diagonal in "
    "mm (sqrt(sum((shape * spacing)^2))), so a miss never improves mHD95; exclude: it is left out (null)",
    "nsd": "normalised surface Dice: the fraction of the surface voxels of reference and prediction (the same "
    "surfaces and distances as hd95) whose nearest surface voxel of the other mask is at most "
    "nsd_tolerance_mm away; equal to MONAI's compute_surface_dice(use_subvoxels=False) with the spacing given",
    "ignore_label": "reference voxels with dataset.json's ignore label are left out of every metric",
    "units": "Dice, IoU, Precision, Recall, NSD are fractions in [0, 1]; HD95 in millimetres",
    "case_score": "mean over the dataset's foreground classes of a case's Dice, where defined; a method's "
    "case score is the mean of its case scores over its repeats; a case whose score is undefined (no class "
    "defined) for the method or the baseline is left out of the pairing",
    "mean_difference": "mean over the paired cases of (method - baseline) case scores, a fraction",
    "ci95": f"percentile bootstrap (2.5th, 97.5th) of the mean difference, cases resampled with replacement, "
    f"{BOOTSTRAP_RESAMPLES} resamples, numpy default_rng(seed={BOOTSTRAP_SEED})",
    "p_value": "two-sided Wilcoxon signed-rank test of the per-case differences, scipy.stats.wilcoxon "
    "defaults (zero differences dropped); null where undefined (no pair, or every difference zero)",
    "per_class": "the same statistics for one class's Dice, over the cases where it is defined for both",
}


def _one_empty(metrics: Mapping[str, Any]) -> bool:
    return (metrics["n_reference"] == 0) != (metrics["n_prediction"] == 0)


def repeat_result(
    prediction_dir: str, per_case: Mapping[str, Mapping[str, dict]], class_names: Sequence[str]
) -> dict:
    """One prediction folder: ``prediction_dir``, ``mean``, ``per_class``, ``n_cases_per_class``,
    ``n_hd95_one_empty`` (class-case pairs where only one of reference and prediction has the class) and
    ``per_case`` (case -> class -> metrics), NaN as in the metrics."""
    per_class, overall, n_cases = paper_means(per_case, class_names, METRICS)
    return {
        "prediction_dir": prediction_dir,
        "mean": overall,
        "per_class": per_class,
        "n_cases_per_class": n_cases,
        "n_hd95_one_empty": sum(_one_empty(m) for case in per_case.values() for m in case.values()),
        "per_case": dict(per_case),
    }


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    defined = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    mean = float(defined.mean()) if defined.size else math.nan
    sd = float(defined.std(ddof=1)) if defined.size >= 2 else math.nan
    return mean, sd


def _repeat_averaged_per_case(repeats: Sequence[dict], class_names: Sequence[str]) -> dict:
    cases = repeats[0]["per_case"]
    return {
        case: {
            name: {
                metric: float(nanmean(np.array([r["per_case"][case][name][metric] for r in repeats]), axis=0))
                for metric in METRICS
            }
            for name in class_names
        }
        for case in cases
    }


def method_result(repeats: Sequence[dict], class_names: Sequence[str]) -> dict:
    """One method over its repeats (:func:`repeat_result` dicts, in order).

    Returns:
        ``n_repeats``; ``prediction_dir`` (the folder with one repeat, else None) and ``prediction_dirs``;
        ``mean``/``sd`` (metric -> mean and sample sd over the repeats' means, sd NaN for one repeat);
        ``per_class``/``per_class_sd`` likewise per class; ``n_cases_per_class`` and ``per_case`` of the
        repeat-averaged case values (with one repeat exactly the repeat's, voxel counts included);
        ``n_hd95_one_empty`` summed over the repeats; ``repeats``.
    """
    if len(repeats) == 1:
        per_case = repeats[0]["per_case"]
    else:
        per_case = _repeat_averaged_per_case(repeats, class_names)
    _, _, n_cases = paper_means(per_case, class_names, METRICS)
    mean, sd, per_class, per_class_sd = {}, {}, {}, {}
    for metric in METRICS:
        mean[metric], sd[metric] = _mean_sd([r["mean"][metric] for r in repeats])
    for name in class_names:
        per_class[name], per_class_sd[name] = {}, {}
        for metric in METRICS:
            values = [r["per_class"][name][metric] for r in repeats]
            per_class[name][metric], per_class_sd[name][metric] = _mean_sd(values)
    return {
        "n_repeats": len(repeats),
        "prediction_dir": repeats[0]["prediction_dir"] if len(repeats) == 1 else None,
        "prediction_dirs": [r["prediction_dir"] for r in repeats],
        "mean": mean,
        "sd": sd,
        "per_class": per_class,
        "per_class_sd": per_class_sd,
        "n_cases_per_class": n_cases,
        "n_hd95_one_empty": sum(r["n_hd95_one_empty"] for r in repeats),
        "per_case": per_case,
        "repeats": list(repeats),
    }


def dice_array(method: Mapping[str, Any], cases: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """Dice of a :func:`method_result` as an array; None or NaN become NaN.

    Shape:
        returns: (n_repeats, n_cases, n_classes) float64.
    """

    def value(v: float | None) -> float:
        return math.nan if v is None else float(v)

    return np.array(
        [
            [[value(r["per_case"][case][name]["Dice"]) for name in class_names] for case in cases]
            for r in method["repeats"]
        ],
        dtype=np.float64,
    ).reshape(len(method["repeats"]), len(cases), len(class_names))


def _statistics(method: np.ndarray, baseline: np.ndarray, n_boot: int, seed: int) -> dict:
    result = paired_comparison(method, baseline, n_boot=n_boot, seed=seed)
    return {
        "n_cases": result.n_cases,
        "n_nonzero_differences": result.n_nonzero,
        "mean_difference": result.mean_difference,
        "ci95": None if result.ci95 is None else list(result.ci95),
        "p_value": result.p_value,
    }


def comparison_entry(
    method: str,
    baseline: str,
    method_dice: np.ndarray,
    baseline_dice: np.ndarray,
    class_names: Sequence[str],
    *,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """One entry of ``results.json["comparisons"]``: ``method``, ``baseline``, ``n_cases``,
    ``n_nonzero_differences``, ``n_repeats``, ``n_baseline_repeats``, ``mean_difference``, ``ci95``,
    ``p_value``, ``n_boot``, ``seed`` and ``per_class`` (class -> the same statistics of its Dice).

    Shape:
        method_dice, baseline_dice: (n_repeats, n_cases, n_classes) Dice with NaN (:func:`dice_array`),
        the same cases and classes in the same order.
    """
    entry = {
        "method": method,
        "baseline": baseline,
        "metric": "Dice",
        "n_repeats": int(method_dice.shape[0]),
        "n_baseline_repeats": int(baseline_dice.shape[0]),
        **_statistics(case_scores(method_dice), case_scores(baseline_dice), n_boot, seed),
        "n_boot": n_boot,
        "seed": seed,
    }
    method_classes, baseline_classes = per_case_class_means(method_dice), per_case_class_means(baseline_dice)
    entry["per_class"] = {
        name: _statistics(method_classes[:, c], baseline_classes[:, c], n_boot, seed)
        for c, name in enumerate(class_names)
    }
    return entry


def comparisons(
    runs: Mapping[str, Mapping[str, Any]],
    baseline: str,
    cases: Sequence[str],
    class_names: Sequence[str],
    *,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> list[dict]:
    """One :func:`comparison_entry` per method other than ``baseline``, in the methods' order."""
    baseline_dice = dice_array(runs[baseline], cases, class_names)
    return [
        comparison_entry(
            name,
            baseline,
            dice_array(method, cases, class_names),
            baseline_dice,
            class_names,
            n_boot=n_boot,
            seed=seed,
        )
        for name, method in runs.items()
        if name != baseline
    ]


def nan_to_none(value: Any) -> Any:
    """The same structure with every NaN float as None and tuples as lists (strict JSON)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value
