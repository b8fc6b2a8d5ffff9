"""Paper-style comparison tables (markdown and CSV) and the comparison sentences, from the dict that
``evaluate_runs`` returns.

One row per evaluated method (percent, two decimals, mean ± sd over its repeats; mHD95 in mm), then, with
``--paper``, the paper's reported rows and the difference of every method to the paper's CE + topK-Dice row.
The markdown ends with one sentence per paired comparison with the baseline (:func:`comparison_sentences`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from nnunet_topkdice.evaluation.label_io import NATURAL_IMAGE_READER
from nnunet_topkdice.evaluation.statistics import MIN_CASES_FOR_005

__all__ = [
    "MEAN_COLUMNS",
    "PER_CASE_COLUMNS",
    "SOURCE_DIFFERENCE",
    "SOURCE_PAPER",
    "SOURCE_RUN",
    "TableRow",
    "comparison_sentence",
    "comparison_sentences",
    "rank_marks",
    "repeats_needed_sentence",
    "table_columns",
    "table_rows",
    "to_csv",
    "to_markdown",
    "to_per_case_csv",
]

# results.json metric -> table column (the paper's names; HD95 and NSD are not in the paper).
MEAN_COLUMNS: dict[str, str] = {
    "Dice": "mDice",
    "IoU": "mIoU",
    "Precision": "mPrec.",
    "Recall": "mRec.",
    "HD95": "mHD95 (mm)",
    "NSD": "mNSD",
}
# per_case.csv: one row per case, class and metric of every repeat of every method
PER_CASE_COLUMNS = ("method", "repeat", "case", "class", "metric", "value")
LOWER_IS_BETTER_COLUMNS = frozenset({"mHD95 (mm)"})

SOURCE_RUN = "evaluated"
SOURCE_PAPER = "paper (reported)"
SOURCE_DIFFERENCE = "difference to paper"

MISSING = "–"  # the column does not exist for this row (e.g. the paper reports no HD95)
UNDEFINED = "n/a"  # the metric is undefined for every case (see the conventions)


@dataclass
class TableRow:
    """One table row: ``values`` maps a column to its display value (percent, mm or difference).

    A column missing from ``values`` is not reported for this row; a None value is undefined. ``sd``: the
    standard deviation over the repeats in the same units, for a method with several repeats.
    """

    source: str
    name: str
    values: dict[str, float | None] = field(default_factory=dict)
    sd: dict[str, float | None] = field(default_factory=dict)


def table_columns(results: dict) -> list[str]:
    """Value columns: the five means, then one Dice column per class (only with two or more classes)."""
    columns = list(MEAN_COLUMNS.values())
    if len(results["classes"]) > 1:
        columns += [c["column"] for c in results["classes"]]
    return columns


def _length_unit(results: dict) -> str:
    """``"px"`` where the dataset's files have no spacing (2D natural images: HD95 and NSD's tolerance are in
    pixels), else ``"mm"``."""
    return "px" if results["dataset"].get("reader_writer") == NATURAL_IMAGE_READER else "mm"


def _heading(column: str, results: dict) -> str:
    """A column's heading as shown: ``mHD95 (px)`` for a dataset in pixels (the rows keep one key)."""
    return column.replace("(mm)", f"({_length_unit(results)})")


def _percent(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


def _display(means: dict, per_class: dict, classes: list[dict]) -> dict[str, float | None]:
    """Column -> display value of a method's means (percent; mm for HD95) and per-class Dice."""
    values = {
        col: _percent(means[metric], 1 if metric == "HD95" else 100) for metric, col in MEAN_COLUMNS.items()
    }
    if len(classes) > 1:
        values.update({c["column"]: _percent(per_class[c["name"]]["Dice"], 100) for c in classes})
    return values


def _method_rows(results: dict) -> list[TableRow]:
    rows = []
    for name, run in results["runs"].items():
        values = _display(run["mean"], run["per_class"], results["classes"])
        sd = {}
        if run.get("n_repeats", 1) > 1:
            sd = _display(run["sd"], run["per_class_sd"], results["classes"])
        rows.append(TableRow(SOURCE_RUN, name, values, sd))
    return rows


def _paper_rows(results: dict, method_rows: list[TableRow]) -> list[TableRow]:
    """The paper's reported rows, then each method minus the paper's reference row."""
    paper = results.get("paper")
    if not paper:
        return []
    columns = table_columns(results)
    rows = []
    reported = {
        row: {col: value * 100 for col, value in values.items() if col in columns}
        for row, values in paper["reported"].items()
    }
    for row, values in reported.items():
        rows.append(TableRow(SOURCE_PAPER, f"{row} [Table {paper['table']}]", dict(values)))
    reference = reported[paper["reference_row"]]
    for run_row in method_rows:
        diff = {
            col: (None if run_row.values.get(col) is None else run_row.values[col] - ref)
            for col, ref in reference.items()
        }
        rows.append(TableRow(SOURCE_DIFFERENCE, f"{run_row.name} vs. {paper['reference_row']}", diff))
    return rows


def table_rows(results: dict) -> list[TableRow]:
    """The rows in display units: evaluated methods, then the paper's rows, then the differences."""
    method_rows = _method_rows(results)
    return method_rows + _paper_rows(results, method_rows)


def _defined(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def rank_marks(rows: Sequence[TableRow], columns: Sequence[str]) -> dict[tuple[int, str], str]:
    """Best and second best per column, ranked on the displayed (two-decimal) values.

    Ranked separately among the evaluated methods (on their means) and among the paper's rows (difference
    rows are not ranked). Higher is better except for mHD95. A row is ``best`` when its value is strictly
    better than every other row's, ``second`` when exactly one row is strictly better and no other row
    equals it: equal values make no winner (two 0.00 are not "best"). Only defined values are ranked
    (None and NaN, shown as n/a, are left out): ``best`` needs two rows with a value in the column,
    ``second`` three, so a lone 0.00 next to an undefined value is not "best".
    Returns ``{(row index, column): "best" | "second"}``.
    """
    marks: dict[tuple[int, str], str] = {}
    for source in (SOURCE_RUN, SOURCE_PAPER):
        group = [i for i, r in enumerate(rows) if r.source == source]
        for col in columns:
            scored = {i: round(rows[i].values[col], 2) for i in group if _defined(rows[i].values.get(col))}
            if len(scored) < 2:
                continue
            sign = -1 if col in LOWER_IS_BETTER_COLUMNS else 1
            for i, value in scored.items():
                n_better = sum(sign * other > sign * value for other in scored.values())
                n_equal = sum(other == value for other in scored.values()) - 1
                if n_equal:
                    continue
                if n_better == 0:
                    marks[(i, col)] = "best"
                elif n_better == 1 and len(scored) >= 3:
                    marks[(i, col)] = "second"
    return marks


def _format(row: TableRow, col: str, *, with_sd: bool = True) -> str:
    if col not in row.values:
        return MISSING
    value = row.values[col]
    if value is None or math.isnan(value):
        return UNDEFINED
    if row.source == SOURCE_DIFFERENCE:
        return f"{value:+.2f}"
    sd = row.sd.get(col)
    return f"{value:.2f} ± {sd:.2f}" if with_sd and sd is not None else f"{value:.2f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _p_text(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:#.2g}"


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _these_models_text(these_models: dict) -> str:
    """The case-only analysis, labelled as describing these trained models (SPEC 6.2, 6.3)."""
    if these_models["ci95"] is None:
        return "for these trained models: no interval"
    low, high = these_models["ci95"]
    text = f"for these trained models: 95% CI {_points(low)} to {_points(high)}"
    p_value, n_cases = these_models["p_value"], these_models["n_cases"]
    if p_value is None:
        return f"{text}, Wilcoxon p undefined (every case scores the same for both)"
    text += f", Wilcoxon {_p_text(p_value)}"
    n_nonzero = these_models.get("n_nonzero_differences", n_cases)
    if n_cases < MIN_CASES_FOR_005:
        text += f" (fewer than {MIN_CASES_FOR_005} cases: its Wilcoxon test cannot reach 0.05)"
    elif n_nonzero < MIN_CASES_FOR_005:
        text += f" (only {n_nonzero} cases differ: its Wilcoxon test cannot reach 0.05)"
    return text


def _crossed_text(comparison: dict) -> str:
    """The crossed interval, p and (for 3 or more repeats) Holm p; or why there is none."""
    if comparison["ci95"] is None:
        return "crossed interval undefined (no variability or fewer than 2 cases)"
    low, high = comparison["ci95"]
    text = (f"crossed 95% CI {_points(low)} to {_points(high)} (seeds and cases random, df "
            f"{comparison['df']:.1f}), {_p_text(comparison['p_value'])}")  # fmt: skip
    if comparison["n_paired_repeats"] >= 3 and comparison["p_holm"] is not None:
        text += f", Holm {_p_text(comparison['p_holm'])}"
    return text


VERDICT_WORDS = {
    "exploratory": "exploratory: two seeds cannot separate the loss from seed variability",
    "better": "better, significant at 0.05 (Holm)",
    "worse": "worse, significant at 0.05 (Holm)",
    "inconclusive": "inconclusive at 0.05 (Holm)",
}


def comparison_sentence(comparison: dict) -> str:
    """One plain sentence for one entry of ``results["comparisons"]`` (SPEC 6.3), for example
    ``A vs B: +4.00 mDice over 12 cases x 2 repeats (per seed: +10.00, -2.00; 1 of 2 better); for these
    trained models: 95% CI +3.66 to +4.35, Wilcoxon p < 0.001; crossed 95% CI -71.91 to +79.92 (seeds and
    cases random, df 1.0), p = 0.62: exploratory: two seeds cannot separate the loss from seed
    variability``. Differences in percentage points of mean Dice, signed, two decimals; p to two
    digits (``p < 0.001`` below). Only ``better``/``worse`` (3 or more repeats, Holm p < 0.05) say "significant"."""
    head = f"{comparison['method']} vs {comparison['baseline']}"
    mean, n_cases, kind = comparison["mean_difference"], comparison["n_cases"], comparison["verdict"]
    if kind == "undefined" or mean is None:
        return f"{head}: undefined: no case has a defined score for both in every paired repeat, nothing to compare"
    these_models = _these_models_text(comparison["these_models"])
    if kind == "one repeat":
        return (f"{head}: {_points(mean)} mDice over {_plural(n_cases, 'case')}, one repeat: it describes one "
                "trained model per method, not the loss (3 or more seeds can judge the loss); "
                f"{these_models}")  # fmt: skip
    per_seed = ", ".join(_points(d) for d in comparison["per_repeat_differences"])
    n_repeats = comparison["n_paired_repeats"]
    over = (f"over {_plural(n_cases, 'case')} x {n_repeats} repeats (per seed: {per_seed}; "
            f"{comparison['repeats_better']} of {n_repeats} better)")  # fmt: skip
    return f"{head}: {_points(mean)} mDice {over}; {these_models}; {_crossed_text(comparison)}: {VERDICT_WORDS[kind]}"


def repeats_needed_sentence(comparison: dict) -> str | None:
    """The line printed after the verdict (SPEC 6.4): how many seeds per method would detect the target
    difference with 80% power; None without an estimate (one repeat, fewer than 2 cases)."""
    needed = comparison.get("repeats_needed")
    if needed is None:
        return None
    target = f"{100 * needed['target_difference']:.2f} Dice points"
    power = f"{needed['power']:.0%} power"
    if needed["n"] is not None:
        text = f"Seeds needed: about {needed['n']} per method to detect {target} with {power}."
    else:
        text = f"Seeds needed: no number up to 100 detects {target} with {power}: {needed['reason']}."
    if comparison["n_paired_repeats"] == 2:
        text += " With 2 seeds this estimate rests on one degree of freedom: a rough guide only."
    return text


def comparison_sentences(results: dict) -> list[str]:
    """:func:`comparison_sentence` of every entry of ``results["comparisons"]``, in order."""
    return [comparison_sentence(c) for c in results.get("comparisons", [])]


def _legend(results: dict) -> list[str]:
    repeated = {name: run["n_repeats"] for name, run in results["runs"].items() if run.get("n_repeats", 1) > 1}
    legend = (
        "Percent with two decimals: each class averaged over the test cases, then over the classes "
        f"(the paper's section 3.2); mHD95 in {_length_unit(results)}; mNSD: normalised surface Dice at "
        f"{results.get('nsd_tolerance_mm', 1.0):g} {_length_unit(results)}. "
        + ("Class columns are the Dice of each class. " if len(results["classes"]) > 1 else "")
        + ("Mean ± sd over the repeats of a method. " if repeated else "")
        + "Best in **bold**, second best in _italics_ (lower is better for mHD95; equal values get no mark), "
        "ranked among the evaluated methods"
        + (" and, separately, among the paper's rows." if results.get("paper") else ".")
    )
    lines = [legend]
    paper = results.get("paper")
    if paper:
        lines.append(
            f"Rows '{SOURCE_PAPER}' are the numbers published in the paper's Table {paper['table']} "
            f"({paper['dataset']}; its own network and training), not computed here. Rows "
            f"'{SOURCE_DIFFERENCE}' are method minus the paper's '{paper['reference_row']}' row, in "
            "percentage points."
        )
    return lines


def _notes(results: dict) -> list[str]:
    notes = [f"{MISSING}: not reported", f"{UNDEFINED}: undefined in every case"]
    repeated = {name: run["n_repeats"] for name, run in results["runs"].items() if run.get("n_repeats", 1) > 1}
    if repeated:
        notes.append("repeats: " + ", ".join(f"{_escape(name)}: {n}" for name, n in repeated.items()))
    one_empty = {name: run["n_hd95_one_empty"] for name, run in results["runs"].items() if run["n_hd95_one_empty"]}
    if one_empty:
        counts = ", ".join(f"{_escape(name)}: {n}" for name, n in one_empty.items())
        if results.get("hd95_missing", "diagonal") == "diagonal":
            what = "HD95 is the image diagonal (--hd95-missing diagonal)"
        else:
            what = "HD95 is undefined and left out (--hd95-missing exclude)"
        notes.append(
            f"{what} where only one of reference and prediction contains the class (class-case pairs per "
            f"method, all repeats: {counts})"
        )
    if results["dataset"].get("spacing_note"):
        notes.append(results["dataset"]["spacing_note"])
    return notes


def _holm_family(comparisons: list[dict]) -> str:
    """What Holm's adjustment ran over: the comparisons with a p-value (a null one is left out)."""
    tested = sum(comparison["p_value"] is not None for comparison in comparisons)
    if tested == len(comparisons):
        return f"p Holm-adjusted over the {_plural(tested, 'comparison')}"
    if tested == 0:
        return "no p-values (a crossed p needs 2 paired repeats and 2 cases)"
    return f"p Holm-adjusted over the {_plural(tested, 'comparison')} with a p-value, of {len(comparisons)}"


def _comparison_block(results: dict) -> list[str]:
    comparisons = results.get("comparisons", [])
    if not comparisons:
        return []
    lines = [
        f"Paired comparison with the baseline {results['baseline']!r} (case score: mean Dice over the classes "
        "per repeat; differences in percentage points; repeat i paired with repeat i of the baseline; the "
        "crossed 95% t interval treats seeds and cases as random (two-way random effects, Satterthwaite df), "
        f"{_holm_family(comparisons)}; 'for these trained models': "
        "case bootstrap and Wilcoxon signed-rank test of the repeat-averaged differences, which describe "
        "these models only):",
        "",
    ]
    for comparison in comparisons:
        lines.append(_escape(comparison_sentence(comparison)))
        needed = repeats_needed_sentence(comparison)
        if needed:
            lines.append(_escape(needed))
        lines += [_escape(f"Note: {note}.") for note in comparison.get("notes", [])]
        lines.append("")
    return lines


def to_markdown(results: dict) -> str:
    """The comparison table as markdown: a legend, the table, its notes, then one sentence per comparison."""
    columns = table_columns(results)
    rows = table_rows(results)
    marks = rank_marks(rows, columns)
    dataset = results["dataset"].get("name") or "dataset"
    n_cases = len(results["cases"])
    lines = [f"## Paper-style evaluation: {dataset} ({n_cases} test case{'s' if n_cases != 1 else ''})", ""]
    lines += _legend(results)
    headings = [_heading(col, results) for col in columns]
    lines += ["", "| Source | Name | " + " | ".join(headings) + " |", "|:--|:--|" + "--:|" * len(columns)]
    for i, row in enumerate(rows):
        cells = []
        for col in columns:
            text = _format(row, col)
            mark = marks.get((i, col))
            cells.append(f"**{text}**" if mark == "best" else f"_{text}_" if mark == "second" else text)
        lines.append(f"| {row.source} | {_escape(row.name)} | " + " | ".join(cells) + " |")
    lines += ["", "Notes: " + "; ".join(_notes(results)) + ".", ""]
    lines += _comparison_block(results)
    return "\n".join(lines)


def to_csv(results: dict) -> str:
    """The same rows as CSV: ``source, name, <columns>``; plain numbers (two decimals), empty when not
    reported or undefined, differences signed. When a method has several repeats, ``n_repeats`` and one
    ``<column> sd`` column per value column follow."""
    columns = table_columns(results)
    with_repeats = any(run.get("n_repeats", 1) > 1 for run in results["runs"].values())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    headings = [_heading(col, results) for col in columns]
    header = ["source", "name", *headings]
    if with_repeats:
        header += ["n_repeats", *(f"{heading} sd" for heading in headings)]
    writer.writerow(header)

    def plain(text: str) -> str:
        return "" if text in (MISSING, UNDEFINED) else text

    for row in table_rows(results):
        cells = [plain(_format(row, col, with_sd=False)) for col in columns]
        if with_repeats:
            run = results["runs"].get(row.name) if row.source == SOURCE_RUN else None
            cells.append(str(run["n_repeats"]) if run else "")
            cells += ["" if row.sd.get(col) is None else f"{row.sd[col]:.2f}" for col in columns]
        writer.writerow([row.source, row.name, *cells])
    return buffer.getvalue()


def to_per_case_csv(results: dict) -> str:
    """Every value that the means summarise, in long format: one row per method, repeat, case, class and
    metric with the columns :data:`PER_CASE_COLUMNS`. ``repeat`` is the repeat's position (0, 1, ...) in
    ``results["runs"][method]["prediction_dirs"]``; ``class`` the class name; ``metric`` one of
    ``results["metrics"]``; ``value`` the value as in ``per_case`` of that repeat (fractions, HD95 in mm),
    written exactly (``repr``), empty where undefined (NaN when read with ``pandas.read_csv``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_CASE_COLUMNS)
    class_names = [c["name"] for c in results["classes"]]
    for method, run in results["runs"].items():
        for index, repeat in enumerate(run["repeats"]):
            for case in results["cases"]:
                for name in class_names:
                    values = repeat["per_case"][case][name]
                    for metric in results["metrics"]:
                        value = values[metric]
                        text = "" if value is None or math.isnan(value) else repr(float(value))
                        writer.writerow([method, index, case, name, metric, text])
    return buffer.getvalue()
