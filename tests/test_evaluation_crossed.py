"""The crossed analysis of seeds and cases (SPEC 6.2-6.4) against computations written out here, scipy's t
distribution and statsmodels (two-way ANOVA mean squares, Holm's adjustment), on small fixtures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.formula.api import ols
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests

from nnunet_topkdice.evaluation.results import comparison_entry, comparisons, with_verdicts
from nnunet_topkdice.evaluation.statistics import (
    MeanSquares,
    crossed_comparison,
    holm_adjust,
    paired_comparison,
    repeats_needed,
    verdict,
)
from nnunet_topkdice.evaluation.tables import _holm_family, comparison_sentence, repeats_needed_sentence

NAN = math.nan
N_CASES = 12
# a case effect shared by the seeds (some cases gain more than others) and a small seed x case interaction,
# both fixed so that every number below can be recomputed by hand
CASE_EFFECT = np.linspace(-0.01, 0.01, N_CASES)


def _interaction(n_repeats: int, scale: float = 0.002) -> np.ndarray:
    return scale * np.sin(np.arange(n_repeats * N_CASES, dtype=np.float64)).reshape(n_repeats, N_CASES)


def _table(seed_effects: list[float]) -> np.ndarray:
    """D[s, c] = seed effect + case effect + interaction, shape (S, 12)."""
    seeds = np.array(seed_effects)
    return seeds[:, None] + CASE_EFFECT[None, :] + _interaction(len(seeds))


def _by_hand(differences: np.ndarray) -> dict:
    """SPEC 6.2 written out with loops: mean squares, V, df (Satterthwaite or floor), interval and p."""
    n_repeats, n_cases = differences.shape
    cells = [(s, c) for s in range(n_repeats) for c in range(n_cases)]
    m = sum(differences[s, c] for s, c in cells) / (n_repeats * n_cases)
    repeat_means = [sum(differences[s, c] for c in range(n_cases)) / n_cases for s in range(n_repeats)]
    case_means = [sum(differences[s, c] for s in range(n_repeats)) / n_repeats for c in range(n_cases)]
    ms_s = n_cases / (n_repeats - 1) * sum((d - m) ** 2 for d in repeat_means)
    ms_c = n_repeats / (n_cases - 1) * sum((d - m) ** 2 for d in case_means)
    ms_e = sum((differences[s, c] - repeat_means[s] - case_means[c] + m) ** 2 for s, c in cells) / (
        (n_repeats - 1) * (n_cases - 1)
    )
    if ms_s + ms_c - ms_e >= max(ms_s, ms_c):
        v = (ms_s + ms_c - ms_e) / (n_repeats * n_cases)
        df = (ms_s + ms_c - ms_e) ** 2 / (
            ms_s**2 / (n_repeats - 1) + ms_c**2 / (n_cases - 1) + ms_e**2 / ((n_repeats - 1) * (n_cases - 1))
        )
        rule = "satterthwaite"
    elif ms_s >= ms_c:
        v, df, rule = ms_s / (n_repeats * n_cases), n_repeats - 1, "floor (repeats)"
    else:
        v, df, rule = ms_c / (n_repeats * n_cases), n_cases - 1, "floor (cases)"
    half = stats.t.ppf(0.975, df) * math.sqrt(v)
    return {
        "mean": m, "per_repeat": repeat_means, "ms": (ms_s, ms_c, ms_e), "v": v, "df": df, "rule": rule,
        "ci95": (m - half, m + half), "p": 2 * stats.t.sf(abs(m) / math.sqrt(v), df),
    }  # fmt: skip


def _check_against_hand(differences: np.ndarray) -> None:
    result, expected = crossed_comparison(differences), _by_hand(differences)
    assert result.mean_difference == pytest.approx(expected["mean"])
    assert result.per_repeat_differences == pytest.approx(expected["per_repeat"])
    ms = result.mean_squares
    assert (ms.repeats, ms.cases, ms.error) == pytest.approx(expected["ms"])
    assert result.variance == pytest.approx(expected["v"])
    assert result.df == pytest.approx(expected["df"])
    assert result.variance_rule == expected["rule"]
    assert result.ci95 == pytest.approx(expected["ci95"])
    assert result.p_value == pytest.approx(expected["p"])


def _dice(case_scores: np.ndarray) -> np.ndarray:
    """(S, C) case scores as a one-class Dice array (S, C, 1)."""
    return np.asarray(case_scores, dtype=np.float64)[:, :, None]


def _entry(differences: np.ndarray, **kwargs) -> dict:
    """A comparison entry whose case-score differences are ``differences`` (baseline 0.7 everywhere)."""
    baseline = np.full(differences.shape, 0.7)
    return with_verdicts([comparison_entry("new", "old", _dice(baseline + differences), _dice(baseline), ["a"],
                                           n_boot=2000, **kwargs)])[0]  # fmt: skip


def test_two_seeds_that_disagree_are_exploratory_not_significant() -> None:
    # +10 and -2 points on the same 12 cases
    differences = _table([0.10, -0.02])
    _check_against_hand(differences)
    # what the old verdict rested on: the seed-averaged case differences, Wilcoxon over cases only
    case_only = paired_comparison(differences.mean(axis=0), np.zeros(N_CASES), n_boot=2000)
    assert case_only.p_value < 0.001  # today's code printed "significant at 0.05"
    crossed = crossed_comparison(differences)
    assert crossed.p_value > 0.5
    assert crossed.variance_rule == "satterthwaite" and crossed.df == pytest.approx(1.0, abs=0.01)
    assert crossed.ci95[0] < -0.5 and crossed.ci95[1] > 0.5
    assert crossed.repeats_better == 1

    entry = _entry(differences)
    assert entry["verdict"] == "exploratory"
    assert entry["these_models"]["p_value"] == pytest.approx(case_only.p_value)
    sentence = comparison_sentence(entry)
    assert "significant" not in sentence
    assert "(per seed: +10.01, -1.99; 1 of 2 better)" in sentence
    assert "for these trained models: 95% CI" in sentence
    assert sentence.endswith("exploratory: two seeds cannot separate the loss from seed variability")
    assert "rests on one degree of freedom" in repeats_needed_sentence(entry)


def test_five_consistent_seeds_are_better() -> None:
    differences = _table([0.030, 0.026, 0.034, 0.028, 0.032])
    _check_against_hand(differences)
    entry = _entry(differences)
    assert entry["p_value"] < 0.05 and entry["p_holm"] == entry["p_value"]  # Holm over one comparison
    assert entry["verdict"] == "better" and entry["repeats_better"] == 5
    assert comparison_sentence(entry).endswith("better, significant at 0.05 (Holm)")
    # and the mirror image is worse
    mirrored = _entry(-differences)
    assert mirrored["verdict"] == "worse"
    assert comparison_sentence(mirrored).endswith("worse, significant at 0.05 (Holm)")


def test_six_seeds_split_three_and_three_are_inconclusive() -> None:
    differences = _table([0.05, 0.04, 0.06, -0.05, -0.04, -0.055])
    _check_against_hand(differences)
    entry = _entry(differences)
    assert entry["repeats_better"] == 3 and entry["p_holm"] > 0.5
    assert entry["verdict"] == "inconclusive"
    sentence = comparison_sentence(entry)
    assert sentence.endswith("inconclusive at 0.05 (Holm)") and "significant" not in sentence
    assert "no difference" not in sentence


def test_mean_squares_match_a_two_way_anova() -> None:
    differences = _table([0.03, 0.01, 0.02, -0.01])
    frame = pd.DataFrame(
        [(d, f"s{s}", f"c{c}") for (s, c), d in np.ndenumerate(differences)], columns=["d", "seed", "case"]
    )
    anova = anova_lm(ols("d ~ C(seed) + C(case)", data=frame).fit())
    ms = crossed_comparison(differences).mean_squares
    assert (ms.repeats, ms.cases, ms.error) == pytest.approx(tuple(anova["mean_sq"]))


def test_one_seed_gives_no_crossed_numbers() -> None:
    differences = _table([0.03])
    crossed = crossed_comparison(differences)
    assert crossed.mean_difference == pytest.approx(differences.mean())
    assert crossed.per_repeat_differences == pytest.approx([differences.mean()])
    assert (crossed.mean_squares, crossed.variance, crossed.df, crossed.ci95, crossed.p_value) == (None,) * 5
    entry = _entry(differences)
    assert entry["verdict"] == "one repeat"
    assert (entry["ci95"], entry["p_value"], entry["df"], entry["p_holm"], entry["repeats_needed"]) == (None,) * 5
    sentence = comparison_sentence(entry)
    assert "one repeat: it describes one trained model per method" in sentence
    assert "crossed" not in sentence and "significant" not in sentence
    assert repeats_needed_sentence(entry) is None


def test_fewer_than_two_cases_give_no_interval() -> None:
    crossed = crossed_comparison(np.array([[0.1], [0.2], [0.3]]))
    assert crossed.mean_difference == pytest.approx(0.2) and crossed.ci95 is None and crossed.p_value is None
    assert verdict(3, 1, 0.2, None) == "inconclusive"


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_nan_cases_are_dropped_and_nan_classes_left_out_of_the_case_score() -> None:
    # (S = 3, C = 4, 2 classes); class b undefined in case 1 for every repeat (case score = class a);
    # case 2 undefined in repeat 2 of the method (no class): the case is dropped from every repeat
    rng = np.random.default_rng(1)
    baseline = rng.uniform(0.5, 0.9, size=(3, 4, 2))
    method = baseline + 0.02 + rng.uniform(-0.01, 0.01, size=(3, 4, 2))
    for array in (baseline, method):
        array[:, 1, 1] = NAN
    method[1, 2, :] = NAN
    entry = comparison_entry("new", "old", method, baseline, ["a", "b"], cases=["w", "x", "y", "z"], n_boot=2000)
    differences = np.nanmean(method, axis=2) - np.nanmean(baseline, axis=2)  # NaN (and a warning) for case y
    kept = differences[:, [0, 1, 3]]
    assert differences[1, 2] != differences[1, 2]  # NaN
    assert entry["n_cases"] == 3 and entry["n_cases_dropped"] == 1
    assert "1 case dropped (no defined case score in some paired repeat): y" in entry["notes"]
    assert entry["mean_difference"] == pytest.approx(kept.mean())
    assert entry["per_repeat_differences"] == pytest.approx(kept.mean(axis=1))
    assert entry["p_value"] == pytest.approx(_by_hand(kept)["p"])
    assert entry["these_models"]["mean_difference"] == pytest.approx(kept.mean())
    assert entry["these_models"]["n_cases"] == 3
    # per class (exploratory): class b is defined in cases w, y, z (y through repeats 1 and 3)
    assert entry["per_class"]["b"]["n_cases"] == 3
    # a case undefined for every repeat is dropped too; all cases undefined: verdict undefined
    crossed = crossed_comparison(np.full((3, 2), NAN))
    assert (crossed.n_cases, crossed.n_cases_dropped, crossed.mean_difference) == (0, 2, None)
    empty = with_verdicts([comparison_entry("new", "old", np.full((2, 2, 1), NAN), np.full((2, 2, 1), NAN), ["a"])])
    assert empty[0]["verdict"] == "undefined" and empty[0]["these_models"]["ci95"] is None
    assert comparison_sentence(empty[0]).startswith("new vs old: undefined: no case")


def test_unequal_repeat_counts_pair_the_first_min() -> None:
    differences = _table([0.03, 0.01, 0.02])
    baseline = np.full((2, N_CASES), 0.7)
    method = baseline[[0, 0, 0]] + differences
    entry = comparison_entry("new", "old", _dice(method), _dice(baseline), ["a"], n_boot=2000,
                             method_dirs=["/p/s0", "/p/s1", "/p/s2"])  # fmt: skip
    assert (entry["n_repeats"], entry["n_baseline_repeats"], entry["n_paired_repeats"]) == (3, 2, 2)
    assert entry["per_repeat_differences"] == pytest.approx(differences[:2].mean(axis=1))
    assert entry["p_value"] == pytest.approx(_by_hand(differences[:2])["p"])
    assert entry["verdict"] == "exploratory"
    assert entry["notes"] == ["new has 3 repeats, old 2: only the first 2 are paired; left out: new repeat 2 (/p/s2)"]
    # the baseline with more repeats: its extra repeats are named
    swapped = comparison_entry("old", "new", _dice(baseline), _dice(method), ["a"], n_boot=2000)
    assert swapped["notes"] == ["new has 3 repeats, old 2: only the first 2 are paired; left out: new repeat 2"]


@pytest.mark.parametrize(
    ("differences", "rule", "df"),
    [
        # no seed effect, a tiny case effect and a large interaction: MS_E > MS_S, MS_C
        (0.02 + np.array([[0.011, -0.01, 0.0], [-0.009, 0.01, -0.0]]), "floor (cases)", 2),
        # a tiny seed effect, no case effect, a large interaction
        (0.02 + np.array([[0.01, -0.01], [-0.01, 0.01], [0.001, 0.001]]), "floor (repeats)", 2),
    ],
    ids=["cases", "repeats"],
)
def test_floor_rule(differences: np.ndarray, rule: str, df: int) -> None:
    expected = _by_hand(differences)
    assert expected["rule"] == rule
    ms_s, ms_c, ms_e = expected["ms"]
    assert ms_s + ms_c - ms_e < max(ms_s, ms_c)
    _check_against_hand(differences)
    crossed = crossed_comparison(differences)
    assert crossed.df == df
    larger = ms_c if rule == "floor (cases)" else ms_s
    assert crossed.variance == pytest.approx(larger / differences.size)
    note = "floor rule: MS_S + MS_C - MS_E < max(MS_S, MS_C), so V = "
    entry = _entry(differences)
    assert any(n.startswith(note) for n in entry["notes"])


def test_no_variability_gives_no_interval() -> None:
    crossed = crossed_comparison(np.full((3, 4), 0.02))
    assert crossed.mean_difference == pytest.approx(0.02)
    assert crossed.variance == 0 and (crossed.df, crossed.ci95, crossed.p_value) == (None, None, None)
    entry = _entry(np.full((3, 4), 0.02))
    assert entry["verdict"] == "inconclusive"
    note = ("the estimated variance of the mean difference is 0 (every repeat mean and every case mean the same): "
            "no interval or p value")
    assert note in entry["notes"]
    # the floor rule with a variance of 0: repeat and case means all equal, only the interaction varies
    checkerboard = 0.02 + 0.01 * np.array([[1.0, -1.0], [-1.0, 1.0]])
    crossed = crossed_comparison(checkerboard)
    assert crossed.variance_rule == "floor (repeats)" and crossed.variance == 0 and crossed.p_value is None
    assert _entry(checkerboard)["notes"] == [note]


def _holm_by_hand(p_values: list[float]) -> list[float]:
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def test_holm_over_three_comparisons() -> None:
    p_values = [0.02, 0.01, 0.04]
    assert holm_adjust(p_values) == pytest.approx(_holm_by_hand(p_values))  # 0.04, 0.03, 0.04
    assert holm_adjust(p_values) == pytest.approx(multipletests(p_values, method="holm")[1])
    assert holm_adjust([0.01, None, 0.04]) == pytest.approx([0.02, None, 0.04])  # nulls left out
    assert holm_adjust([]) == []

    # three methods against one baseline, 3 seeds each: each alone below 0.05, but not all after Holm
    cases = [f"c{c}" for c in range(N_CASES)]
    baseline = np.full((3, N_CASES), 0.7)
    # crossed p about 0.001, 0.033 and 0.047
    tables = {
        "A": _table([0.03, 0.025, 0.035]), "B": _table([0.02, 0.012, 0.028]), "C": _table([0.02, 0.011, 0.029])
    }  # fmt: skip
    runs = {"base": _run(baseline, cases), **{name: _run(baseline + d, cases) for name, d in tables.items()}}
    entries = comparisons(runs, "base", cases, ["a"], n_boot=2000)
    raw = [_by_hand(tables[name])["p"] for name in tables]
    assert [e["p_value"] for e in entries] == pytest.approx(raw)
    assert [e["p_holm"] for e in entries] == pytest.approx(multipletests(raw, method="holm")[1])
    assert [e["verdict"] for e in entries] == [
        "better" if p < 0.05 else "inconclusive" for p in multipletests(raw, method="holm")[1]
    ]
    assert raw[1] < 0.05 and raw[2] < 0.05  # each alone would pass
    assert [e["verdict"] for e in entries][1:] == ["inconclusive", "inconclusive"]
    assert entries[0]["verdict"] == "better"


def test_the_table_names_the_comparisons_holm_ran_over() -> None:
    # a comparison with one repeat has no p-value and is left out of Holm's family (SPEC 6.2): the legend
    # of the comparisons must count the others only
    family = [{"p_value": 0.0065}, {"p_value": None}, {"p_value": 0.3}]
    assert _holm_family(family) == "p Holm-adjusted over the 2 comparisons with a p-value, of 3"
    assert _holm_family(family[:1]) == "p Holm-adjusted over the 1 comparison"
    assert _holm_family([family[0], family[2]]) == "p Holm-adjusted over the 2 comparisons"
    assert _holm_family(family[1:2]) == "no p-values (a crossed p needs 2 paired repeats and 2 cases)"


def _run(scores: np.ndarray, cases: list[str]) -> dict:
    """A method_result-like dict with one class ``a`` whose Dice is ``scores`` (S, C)."""
    return {
        "repeats": [{"per_case": {case: {"a": {"Dice": float(v)}} for case, v in zip(cases, row, strict=True)}}
                    for row in scores],
        "prediction_dirs": [f"/r/{i}" for i in range(len(scores))],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("n_repeats", "n_cases", "mean", "p_holm", "expected"),
    [
        (1, 12, 0.03, None, "one repeat"),
        (2, 12, 0.03, 1e-9, "exploratory"),
        (3, 12, 0.03, 0.049, "better"),
        (3, 12, -0.03, 0.049, "worse"),
        (3, 12, 0.03, 0.05, "inconclusive"),
        (5, 12, 0.03, None, "inconclusive"),
        (3, 0, None, None, "undefined"),
    ],
)
def test_verdict(n_repeats: int, n_cases: int, mean: float | None, p_holm: float | None, expected: str) -> None:
    assert verdict(n_repeats, n_cases, mean, p_holm) == expected


def _needed_by_hand(ms: MeanSquares, n_repeats: int, n_cases: int, d: float) -> int | None:
    var_s = max(0.0, (ms.repeats - ms.error) / n_cases)
    var_c = max(0.0, (ms.cases - ms.error) / n_repeats)
    for n in range(2, 101):
        v_n = var_s / n + var_c / n_cases + ms.error / (n * n_cases)
        if (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.80, n - 1)) * math.sqrt(v_n) <= d:
            return n
    return None


def test_repeats_needed_matches_the_formula() -> None:
    differences = _table([0.03, 0.01, 0.02, 0.015])
    crossed = crossed_comparison(differences)
    needed = repeats_needed(crossed.mean_squares, 4, N_CASES, 0.01)
    assert needed.n == _needed_by_hand(crossed.mean_squares, 4, N_CASES, 0.01)
    assert 2 < needed.n < 100
    # a larger target needs fewer seeds
    assert repeats_needed(crossed.mean_squares, 4, N_CASES, 0.03).n < needed.n
    # the entry and its printed line
    entry = _entry(differences, target_difference=0.01)
    assert entry["repeats_needed"] == {"target_difference": 0.01, "power": 0.8, "n": needed.n,
                                       "reason": needed.reason}  # fmt: skip
    assert repeats_needed_sentence(entry) == (
        f"Seeds needed: about {needed.n} per method to detect 1.00 Dice points with 80% power."
    )


def test_repeats_needed_says_more_cases_when_the_case_variance_dominates() -> None:
    # the case-to-case variance alone (var_c / C = (0.02 - 0) / 3 / 4) keeps the interval wide at any n
    ms = MeanSquares(repeats=0.0, cases=0.02, error=0.0)
    assert _needed_by_hand(ms, 3, 4, 0.01) is None
    needed = repeats_needed(ms, 3, 4, 0.01)
    assert needed.n is None and needed.reason.startswith("more cases, not seeds, are needed")
    # a huge seed variance but almost no case variance: more than 100 seeds, not more cases
    seeds = repeats_needed(MeanSquares(repeats=2.0, cases=0.0, error=0.0), 3, 12, 0.01)
    assert seeds.n is None and seeds.reason.startswith("more than 100 repeats per method would be needed")
    # the reasons follow the printed target in Dice points: they do not restate it as a fraction
    found = repeats_needed(MeanSquares(repeats=0.0001, cases=0.0001, error=0.0001), 3, 12, 0.01)
    assert found.n is not None
    assert all("0.01" not in r.reason for r in (needed, seeds, found))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: crossed_comparison(np.zeros(3)), r"shape \(n_repeats, n_cases\)"),
        (lambda: crossed_comparison(np.zeros((0, 3))), "at least one repeat"),
        (lambda: repeats_needed(MeanSquares(1, 1, 1), 1, 5, 0.01), "at least 2 repeats and 2 cases"),
        (lambda: repeats_needed(MeanSquares(1, 1, 1), 3, 5, 0.0), "target_difference must be a positive number"),
        (lambda: repeats_needed(MeanSquares(1, 1, 1), 3, 5, math.nan), "target_difference must be a positive"),
    ],
    ids=["1d", "no-repeat", "one-repeat", "zero-target", "nan-target"],
)
def test_errors(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_seed_panel_draws_each_repeat_and_the_crossed_interval() -> None:
    import matplotlib.pyplot as plt

    from nnunet_topkdice.evaluation.plots import _draw_seed_differences

    two_seeds = _entry(_table([0.10, -0.02]))  # crossed interval far wider than the repeats': clipped
    one_seed = {**_entry(_table([0.03])), "method": "other"}
    results = {"comparisons": [two_seeds, one_seed]}
    fig, ax = plt.subplots()
    _draw_seed_differences(ax, results, {"new": "tab:orange", "other": "tab:blue"})
    markers = [container.lines[0].get_data() for container in ax.containers]
    # two repeats and the crossed mean of the first comparison, one repeat (no crossed numbers) of the second
    assert len(markers) == 4
    ys = [float(y[0]) for _, y in markers]
    expected = [100 * d for d in two_seeds["per_repeat_differences"]] + [100 * two_seeds["mean_difference"]]
    assert ys == pytest.approx(expected + [100 * one_seed["per_repeat_differences"][0]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["repeat 0", "repeat 1", "crossed\n(seeds and cases)"]
    low, high = (100 * v for v in two_seeds["ci95"])
    assert sorted(t.get_text() for t in ax.texts) == sorted([f"{low:+.1f}", f"{high:+.1f}"])  # the clipped ends
    bottom, top = ax.get_ylim()
    assert low < bottom and top < high
    plt.close(fig)
