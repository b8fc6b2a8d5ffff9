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
    POWER,
    Crossed,
    bootstrap_ci95,
    crossed_comparison,
    defined_cases,
    difference_comparison,
    holm_adjust,
    nanmean,
    paired_comparison,
    per_case_class_means,
    repeat_case_scores,
    repeats_needed,
    verdict,
)

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONVENTIONS",
    "DEFAULT_TARGET_DIFFERENCE",
    "THESE_MODELS_LABEL",
    "comparison_entry",
    "comparisons",
    "with_verdicts",
    "dice_array",
    "method_result",
    "nan_to_none",
    "repeat_result",
]

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
DEFAULT_TARGET_DIFFERENCE = 0.01  # one Dice point (SPEC 6.4)
THESE_MODELS_LABEL = "for these trained models only (seeds fixed; says nothing about the loss on new seeds)"

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
    "case_score": "mean over the dataset's foreground classes of a case's Dice in one repeat, where defined",
    "pairing": "repeat i of a method is paired with repeat i of the baseline (the order given in -pred); with "
    "unequal counts only the first min(S_method, S_baseline) repeats are paired, the others are named in the "
    "notes and left out; a case whose difference is undefined in any paired repeat is dropped (counted in the "
    "notes)",
    "mean_difference": "mean over the paired repeats and kept cases of D[s, c] = method - baseline case score, "
    "a fraction; per_repeat_differences: the mean of D[s, :] per repeat; repeats_better: how many are > 0",
    "ci95": "crossed analysis, repeats (seeds) and cases both random: two-way random-effects mean squares "
    "MS_S, MS_C, MS_E of D; V = (MS_S + MS_C - MS_E) / (S C) with Satterthwaite df when MS_S + MS_C - MS_E "
    ">= max(MS_S, MS_C), else the floor V = max(MS_S, MS_C) / (S C) with df S-1 or C-1; ci95 = mean +- "
    "t(0.975, df) sqrt(V) (scipy.stats.t); null for one repeat or fewer than 2 cases",
    "p_value": "2 t.sf(|mean| / sqrt(V), df) of the crossed analysis; null where ci95 is",
    "p_holm": "Holm's step-down adjustment of p_value over all comparisons of this evaluation "
    "(statsmodels multipletests(method='holm')), nulls left out",
    "verdict": "one repeat (S = 1), exploratory (S = 2: two seeds cannot separate the loss from seed "
    "variability), better / worse (S >= 3 and p_holm < 0.05), inconclusive (S >= 3 otherwise), undefined "
    "(no case left)",
    "these_models": "conditional on the trained models, describing them only, never the loss: the mean over "
    "the paired repeats of D per case, percentile bootstrap of its mean over cases "
    f"({BOOTSTRAP_RESAMPLES} resamples, numpy default_rng(seed={BOOTSTRAP_SEED})) and the two-sided Wilcoxon "
    "signed-rank test of the per-case differences (scipy.stats.wilcoxon defaults); null where undefined",
    "per_repeat_ci95": "each paired repeat's case bootstrap of mean D[s, :] (as these_models)",
    "repeats_needed": "for S >= 2: the smallest n in 2..100 repeats per method with (t(0.975, n-1) + "
    "t(0.80, n-1)) sqrt(V(n)) <= |target_difference|, V(n) = var_s/n + var_c/C + var_e/(n C), var_e = MS_E, "
    "var_s = max(0, (MS_S - MS_E)/C), var_c = max(0, (MS_C - MS_E)/S); null with the reason otherwise",
    "per_class": "exploratory: each class's Dice averaged over the paired repeats, paired over the cases "
    "where it is defined for both, with the case bootstrap and Wilcoxon test of these_models",
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


def _these_models(case_differences: np.ndarray, n_boot: int, seed: int) -> dict:
    result = difference_comparison(case_differences, n_boot=n_boot, seed=seed)
    return {
        "mean_difference": result.mean_difference,
        "ci95": None if result.ci95 is None else list(result.ci95),
        "p_value": result.p_value,
        "n_cases": result.n_cases,
        "n_nonzero_differences": result.n_nonzero,
        "label": THESE_MODELS_LABEL,
    }


def _repeat_names(dirs: Sequence[str] | None, start: int, stop: int) -> str:
    """Repeats ``start .. stop - 1`` numbered from 0 as in per_case.csv (and as compare's seeds), with their folders."""
    return ", ".join(f"{i}" + (f" ({dirs[i]})" if dirs else "") for i in range(start, stop))


def _notes(
    method: str, baseline: str, n_method: int, n_baseline: int, crossed: Crossed, dropped: Sequence[str],
    dirs: Mapping[str, Sequence[str] | None],
) -> list[str]:
    """The notes of one comparison: unpaired repeats, dropped cases, the floor rule, no variability."""
    notes = []
    n_paired = min(n_method, n_baseline)
    for name, count in ((method, n_method), (baseline, n_baseline)):
        if count > n_paired:
            notes.append(f"{name} has {count} repeats, {method if name == baseline else baseline} "
                         f"{n_paired}: only the first {n_paired} are paired; left out: {name} repeat "
                         f"{_repeat_names(dirs.get(name), n_paired, count)}")  # fmt: skip
    if dropped:
        notes.append(f"{len(dropped)} case{'s' if len(dropped) != 1 else ''} dropped (no defined case score in "
                     f"some paired repeat): {', '.join(dropped)}")  # fmt: skip
    if crossed.variance_rule and crossed.df is None:
        notes.append("the estimated variance of the mean difference is 0 (every repeat mean and every case mean "
                     "the same): no interval or p value")  # fmt: skip
    elif crossed.variance_rule and crossed.variance_rule.startswith("floor"):
        which = "MS_S" if crossed.variance_rule == "floor (repeats)" else "MS_C"
        notes.append(f"floor rule: MS_S + MS_C - MS_E < max(MS_S, MS_C), so V = {which} / (S C) with "
                     f"df = {crossed.df:g}")  # fmt: skip
    return notes


def _repeats_needed(crossed: Crossed, target_difference: float) -> dict | None:
    if crossed.mean_squares is None:
        return None
    needed = repeats_needed(crossed.mean_squares, crossed.n_repeats, crossed.n_cases, target_difference)
    return {"target_difference": target_difference, "power": POWER, "n": needed.n, "reason": needed.reason}


def comparison_entry(
    method: str,
    baseline: str,
    method_dice: np.ndarray,
    baseline_dice: np.ndarray,
    class_names: Sequence[str],
    *,
    cases: Sequence[str] | None = None,
    method_dirs: Sequence[str] | None = None,
    baseline_dirs: Sequence[str] | None = None,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    target_difference: float = DEFAULT_TARGET_DIFFERENCE,
) -> dict:
    """One entry of ``results.json["comparisons"]`` (SPEC 6.2-6.4), Holm over this comparison alone
    (:func:`with_verdicts` adjusts over all of an evaluation).

    Keys: ``method``, ``baseline``, ``metric``, ``n_repeats``, ``n_baseline_repeats``, ``n_paired_repeats``,
    ``n_cases`` (kept), ``n_cases_dropped``, ``mean_difference``, ``per_repeat_differences``,
    ``per_repeat_ci95``, ``repeats_better``, ``ci95``, ``p_value``, ``df``, ``variance_rule``,
    ``mean_squares``, ``p_holm``, ``verdict``, ``these_models``, ``repeats_needed``, ``notes``, ``n_boot``,
    ``seed``, ``per_class`` (class -> case-bootstrap statistics of its Dice, exploratory).

    Shape:
        method_dice, baseline_dice: (n_repeats, n_cases, n_classes) Dice with NaN (:func:`dice_array`),
        the same cases and classes in the same order; repeat i of both is paired.
    Raises:
        ValueError: a bad ``target_difference`` (not a positive number).
    """
    n_paired = min(method_dice.shape[0], baseline_dice.shape[0])
    differences = repeat_case_scores(method_dice[:n_paired]) - repeat_case_scores(baseline_dice[:n_paired])
    kept = defined_cases(differences)
    crossed = crossed_comparison(differences)
    names = list(cases) if cases is not None else [str(i) for i in range(differences.shape[1])]
    dropped = [name for name, keep in zip(names, kept, strict=True) if not keep]
    table = differences[:, kept]
    entry = {
        "method": method,
        "baseline": baseline,
        "metric": "Dice",
        "n_repeats": int(method_dice.shape[0]),
        "n_baseline_repeats": int(baseline_dice.shape[0]),
        "n_paired_repeats": n_paired,
        "n_cases": crossed.n_cases,
        "n_cases_dropped": crossed.n_cases_dropped,
        "mean_difference": crossed.mean_difference,
        "per_repeat_differences": list(crossed.per_repeat_differences),
        "per_repeat_ci95": [list(bootstrap_ci95(row, n_boot=n_boot, seed=seed)) for row in table]
        if crossed.n_cases else [],
        "repeats_better": crossed.repeats_better,
        "ci95": None if crossed.ci95 is None else list(crossed.ci95),
        "p_value": crossed.p_value,
        "df": crossed.df,
        "variance_rule": crossed.variance_rule,
        "mean_squares": None if crossed.mean_squares is None else vars(crossed.mean_squares).copy(),
        "p_holm": crossed.p_value,
        "verdict": verdict(n_paired, crossed.n_cases, crossed.mean_difference, crossed.p_value),
        "these_models": _these_models(table.mean(axis=0), n_boot, seed),
        "repeats_needed": _repeats_needed(crossed, target_difference),
        "notes": _notes(method, baseline, method_dice.shape[0], baseline_dice.shape[0], crossed, dropped,
                        {method: method_dirs, baseline: baseline_dirs}),  # fmt: skip
        "n_boot": n_boot,
        "seed": seed,
    }
    method_classes = per_case_class_means(method_dice[:n_paired])
    baseline_classes = per_case_class_means(baseline_dice[:n_paired])
    entry["per_class"] = {
        name: _statistics(method_classes[:, c], baseline_classes[:, c], n_boot, seed)
        for c, name in enumerate(class_names)
    }
    return entry


def with_verdicts(entries: Sequence[dict]) -> list[dict]:
    """The entries with ``p_holm`` (Holm over all their ``p_value``) and the ``verdict`` that follows."""
    adjusted = holm_adjust([e["p_value"] for e in entries])
    return [
        {**e, "p_holm": p_holm,
         "verdict": verdict(e["n_paired_repeats"], e["n_cases"], e["mean_difference"], p_holm)}
        for e, p_holm in zip(entries, adjusted, strict=True)
    ]  # fmt: skip


def comparisons(
    runs: Mapping[str, Mapping[str, Any]],
    baseline: str,
    cases: Sequence[str],
    class_names: Sequence[str],
    *,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    target_difference: float = DEFAULT_TARGET_DIFFERENCE,
) -> list[dict]:
    """One :func:`comparison_entry` per method other than ``baseline``, in the methods' order, with Holm's
    adjustment over all of them (:func:`with_verdicts`)."""
    baseline_dice = dice_array(runs[baseline], cases, class_names)
    entries = [
        comparison_entry(
            name,
            baseline,
            dice_array(method, cases, class_names),
            baseline_dice,
            class_names,
            cases=cases,
            method_dirs=method.get("prediction_dirs"),
            baseline_dirs=runs[baseline].get("prediction_dirs"),
            n_boot=n_boot,
            seed=seed,
            target_difference=target_difference,
        )
        for name, method in runs.items()
        if name != baseline
    ]
    return with_verdicts(entries)


def nan_to_none(value: Any) -> Any:
    """The same structure with every NaN float as None and tuples as lists (strict JSON)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value
