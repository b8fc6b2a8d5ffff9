"""Ranking marks, the paper's published tables as data, and mapping label names to its columns."""

from __future__ import annotations

import pytest

from nnunet_topkdice.evaluation.paper import PAPER_TABLES, match_paper_classes
from nnunet_topkdice.evaluation.tables import (
    SOURCE_DIFFERENCE,
    SOURCE_PAPER,
    SOURCE_RUN,
    TableRow,
    comparison_sentence,
    comparison_sentences,
    rank_marks,
    repeats_needed_sentence,
)


def _comparison(**changes) -> dict:
    """An entry of results["comparisons"] with 3 paired repeats (values as evaluate writes them)."""
    entry = {
        "method": "CE + topK-Dice",
        "baseline": "CE + Dice",
        "n_repeats": 3,
        "n_baseline_repeats": 3,
        "n_paired_repeats": 3,
        "n_cases": 12,
        "mean_difference": 0.0121,
        "per_repeat_differences": [0.02, 0.0063, 0.01],
        "repeats_better": 3,
        "ci95": [-0.0034, 0.026],
        "df": 2.4,
        "p_value": 0.1123,
        "p_holm": 0.2246,
        "verdict": "inconclusive",
        "these_models": {"ci95": [0.004, 0.02], "p_value": 0.0049, "n_cases": 12, "n_nonzero_differences": 12},
        "repeats_needed": {"target_difference": 0.01, "power": 0.8, "n": 7, "reason": "..."},
        "notes": [],
    }
    return {**entry, **changes}


HEAD = "CE + topK-Dice vs CE + Dice: "
THESE = "for these trained models: 95% CI +0.40 to +2.00, Wilcoxon p = 0.0049"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {},
            HEAD + "+1.21 mDice over 12 cases x 3 repeats (per seed: +2.00, +0.63, +1.00; 3 of 3 better); " + THESE
            + "; crossed 95% CI -0.34 to +2.60 (seeds and cases random, df 2.4), p = 0.11, Holm p = 0.22: "
            "inconclusive at 0.05 (Holm)",
        ),
        (
            {"p_value": 0.0021, "p_holm": 0.0042, "ci95": [0.004, 0.02], "verdict": "better"},
            HEAD + "+1.21 mDice over 12 cases x 3 repeats (per seed: +2.00, +0.63, +1.00; 3 of 3 better); " + THESE
            + "; crossed 95% CI +0.40 to +2.00 (seeds and cases random, df 2.4), p = 0.0021, Holm p = 0.0042: "
            "better, significant at 0.05 (Holm)",
        ),
        (
            {"mean_difference": -0.0121, "per_repeat_differences": [-0.02, -0.0063, -0.01], "repeats_better": 0,
             "ci95": [-0.02, -0.004], "p_value": 0.00002, "p_holm": 0.00004, "verdict": "worse"},
            "(per seed: -2.00, -0.63, -1.00; 0 of 3 better); " + THESE + "; crossed 95% CI -2.00 to -0.40 (seeds "
            "and cases random, df 2.4), p < 0.001, Holm p < 0.001: worse, significant at 0.05 (Holm)",
        ),
        (
            {"n_paired_repeats": 2, "n_repeats": 2, "n_baseline_repeats": 2, "mean_difference": 0.04,
             "per_repeat_differences": [0.10, -0.02], "repeats_better": 1, "ci95": [-0.7191, 0.7992], "df": 1.0,
             "p_value": 0.62, "p_holm": 0.62, "verdict": "exploratory"},
            HEAD + "+4.00 mDice over 12 cases x 2 repeats (per seed: +10.00, -2.00; 1 of 2 better); " + THESE
            + "; crossed 95% CI -71.91 to +79.92 (seeds and cases random, df 1.0), p = 0.62: exploratory: two "
            "seeds cannot separate the loss from seed variability",
        ),
        (
            {"n_paired_repeats": 1, "n_repeats": 1, "n_baseline_repeats": 1, "per_repeat_differences": [0.0121],
             "repeats_better": 1, "ci95": None, "df": None, "p_value": None, "p_holm": None,
             "verdict": "one repeat", "repeats_needed": None},
            HEAD + "+1.21 mDice over 12 cases, one repeat: it describes one trained model per method, not the loss "
            "(3 or more seeds can judge the loss); " + THESE,
        ),
        (
            {"n_cases": 0, "mean_difference": None, "ci95": None, "p_value": None, "verdict": "undefined"},
            HEAD + "undefined: no case has a defined score for both in every paired repeat, nothing to compare",
        ),
        (
            {"n_cases": 4, "these_models": {"ci95": [0.004, 0.02], "p_value": 0.125, "n_cases": 4,
                                            "n_nonzero_differences": 4}},
            "for these trained models: 95% CI +0.40 to +2.00, Wilcoxon p = 0.12 (fewer than 6 cases: its "
            "Wilcoxon test cannot reach 0.05); crossed",
        ),
        (
            {"these_models": {"ci95": [0.004, 0.02], "p_value": 0.25, "n_cases": 12, "n_nonzero_differences": 3}},
            "Wilcoxon p = 0.25 (only 3 cases differ: its Wilcoxon test cannot reach 0.05); crossed",
        ),
        (
            {"these_models": {"ci95": [0.0, 0.0], "p_value": None, "n_cases": 12, "n_nonzero_differences": 0}},
            "for these trained models: 95% CI +0.00 to +0.00, Wilcoxon p undefined (every case scores the same "
            "for both); crossed",
        ),
        (
            {"ci95": None, "df": None, "p_value": None, "p_holm": None},
            "crossed interval undefined (no variability or fewer than 2 cases): inconclusive at 0.05 (Holm)",
        ),
    ],
    ids=["inconclusive", "better", "worse", "exploratory", "one-repeat", "undefined", "few-cases", "few-differ",
         "all-zero", "no-variability"],
)
def test_comparison_sentence(changes: dict, expected: str) -> None:
    sentence = comparison_sentence(_comparison(**changes))
    assert expected in sentence
    assert sentence.startswith(HEAD)
    if _comparison(**changes)["verdict"] not in ("better", "worse"):
        assert "significant" not in sentence


def test_two_repeats_never_say_significant_even_with_tiny_p_values() -> None:
    sentence = comparison_sentence(_comparison(n_paired_repeats=2, p_value=1e-6, p_holm=1e-6, verdict="exploratory",
                                               these_models={"ci95": [0.01, 0.02], "p_value": 1e-4, "n_cases": 12,
                                                             "n_nonzero_differences": 12}))  # fmt: skip
    assert "significant" not in sentence and "Holm" not in sentence
    assert sentence.endswith("exploratory: two seeds cannot separate the loss from seed variability")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "Seeds needed: about 7 per method to detect 1.00 Dice points with 80% power."),
        (
            {"n_paired_repeats": 2, "repeats_needed": {"target_difference": 0.02, "power": 0.8, "n": 4, "reason": ""}},
            "Seeds needed: about 4 per method to detect 2.00 Dice points with 80% power. With 2 seeds this "
            "estimate rests on one degree of freedom: a rough guide only.",
        ),
        (
            {"repeats_needed": {"target_difference": 0.01, "power": 0.8, "n": None,
                                "reason": "more cases, not seeds, are needed: ..."}},
            "Seeds needed: no number up to 100 detects 1.00 Dice points with 80% power: more cases, not seeds, are "
            "needed: ....",
        ),
        ({"repeats_needed": None}, None),
    ],
    ids=["n", "two-seeds", "more-cases", "one-repeat"],
)
def test_repeats_needed_sentence(changes: dict, expected: str | None) -> None:
    assert repeats_needed_sentence(_comparison(**changes)) == expected


def test_comparison_sentences_in_order() -> None:
    results = {"comparisons": [_comparison(method="A"), _comparison(method="B")]}
    assert [s.split(" vs ")[0] for s in comparison_sentences(results)] == ["A", "B"]
    assert comparison_sentences({"runs": {}}) == []


def test_rank_marks_best_second_and_lower_is_better() -> None:
    rows = [
        TableRow(SOURCE_RUN, "a", {"mDice": 80.0, "mHD95 (mm)": 3.0}),
        TableRow(SOURCE_RUN, "b", {"mDice": 70.0, "mHD95 (mm)": 5.0}),
        TableRow(SOURCE_RUN, "c", {"mDice": 75.0, "mHD95 (mm)": None}),  # undefined: never ranked
        TableRow(SOURCE_RUN, "d", {"mDice": 60.0, "mHD95 (mm)": 4.0}),
        TableRow(SOURCE_DIFFERENCE, "a vs. paper", {"mDice": 99.0}),  # differences are not ranked
    ]
    marks = rank_marks(rows, ["mDice", "mHD95 (mm)"])
    assert marks == {
        (0, "mDice"): "best",
        (2, "mDice"): "second",
        (0, "mHD95 (mm)"): "best",
        (3, "mHD95 (mm)"): "second",
    }


def test_equal_values_make_no_winner() -> None:
    rows = [
        TableRow(SOURCE_RUN, "a", {"mDice": 0.0, "mIoU": 80.0, "mPrec.": 90.0}),
        TableRow(SOURCE_RUN, "b", {"mDice": 0.0, "mIoU": 80.004, "mPrec.": 80.0}),  # ties a when displayed
        TableRow(SOURCE_RUN, "c", {"mDice": -0.001, "mIoU": 70.0, "mPrec.": 80.0}),  # -0.00 displays as 0.00
        TableRow(SOURCE_RUN, "d", {"mDice": 0.0, "mIoU": 60.0, "mPrec.": 70.0}),
    ]
    marks = rank_marks(rows, ["mDice", "mIoU", "mPrec."])
    # mDice: four 0.00, no mark; mIoU: a and b tie for best, so no best and no second (two rows are better
    # than c); mPrec.: a best, b and c tie for second, so no second
    assert marks == {(0, "mPrec."): "best"}


def test_rank_marks_groups_are_separate_and_small_groups_get_fewer_marks() -> None:
    rows = [
        TableRow(SOURCE_RUN, "only", {"mDice": 10.0}),  # one run: nothing to compare, no mark
        TableRow(SOURCE_PAPER, "p1", {"mDice": 90.0}),
        TableRow(SOURCE_PAPER, "p2", {"mDice": 80.0}),  # two rows: best only
    ]
    assert rank_marks(rows, ["mDice"]) == {(1, "mDice"): "best"}


def test_a_lone_value_next_to_undefined_ones_is_not_best() -> None:
    # the probe of issue 24: a baseline empty everywhere has no precision (n/a), a method at 0.00 was bold
    rows = [
        TableRow(SOURCE_RUN, "empty baseline", {"mDice": 0.0, "mPrec.": None, "mRec.": 10.0}),
        TableRow(SOURCE_RUN, "method", {"mDice": 0.0, "mPrec.": 0.0, "mRec.": float("nan")}),
        TableRow(SOURCE_RUN, "other", {"mDice": None, "mPrec.": None, "mRec.": 5.0}),
    ]
    # mDice ties at 0.00; mPrec. has one defined value; mRec.: two defined values, so best but no second
    assert rank_marks(rows, ["mDice", "mPrec.", "mRec."]) == {(0, "mRec."): "best"}


@pytest.mark.parametrize("key", ["synapse", "acdc"])
def test_paper_mean_dice_is_the_mean_of_its_class_columns(key: str) -> None:
    # Guards the copied numbers: in Tables 1 and 2 mDice is the mean of the per-class Dice (to rounding).
    table = PAPER_TABLES[key]
    for name, values in table.as_dict().items():
        class_mean = sum(values[c] for c in table.class_columns) / len(table.class_columns)
        assert values["mDice"] == pytest.approx(class_mean, abs=0.011), name


@pytest.mark.parametrize(
    ("key", "number", "row", "column", "value"),
    [
        ("synapse", 1, "CE + topK-Dice (our)", "Kidney left", 88.78),
        ("synapse", 1, "focal + Dice", "Stomach", 77.27),
        ("acdc", 2, "Focal-CE + Dice", "LV", 95.45),
        ("msseg", 3, "CE", "mPrec.", 76.72),
        ("msseg", 3, "Focal-CE + Dice", "mRec.", 67.83),
    ],
    ids=["synapse-ours", "synapse-focal", "acdc-focal", "msseg-ce", "msseg-focal"],
)
def test_paper_values_spot_checks(key: str, number: int, row: str, column: str, value: float) -> None:
    table = PAPER_TABLES[key]
    assert table.number == number
    assert table.row(row)[column] == value
    assert table.reference_row == "CE + topK-Dice (our)"
    assert len(table.rows) == 5


def test_paper_table_unknown_row() -> None:
    with pytest.raises(KeyError, match="Table 1 has no row 'Dice'"):
        PAPER_TABLES["synapse"].row("Dice")


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (
            ["spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"],
            ("synapse", {"left_kidney": "Kidney left", "right_kidney": "Kidney right", "aorta": "Aorta"}),
        ),
        (["RV", "MYO", "LV"], ("acdc", {"RV": "RV", "MYO": "MYO", "LV": "LV"})),
        (["right ventricle", "Myocardium", "left-ventricle"], ("acdc", {"Myocardium": "MYO"})),
        (["lesion"], ("msseg", {"lesion": "lesion"})),
        (["liver", "tumour"], None),
        (["RV", "MYO", "LV", "extra"], None),
    ],
    ids=["synapse-converter-names", "acdc", "acdc-long-names", "msseg", "unknown", "extra-label"],
)
def test_match_paper_classes(labels: list[str], expected: tuple | None) -> None:
    match = match_paper_classes(labels)
    if expected is None:
        assert match is None
        return
    key, mapping = match
    assert key == expected[0]
    assert len(mapping) == len(labels)
    for name, column in expected[1].items():
        assert mapping[name] == column


def test_match_paper_classes_unknown_key() -> None:
    with pytest.raises(ValueError, match="unknown paper table 'brats'"):
        match_paper_classes(["a"], "brats")
