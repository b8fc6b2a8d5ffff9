"""Paper-style comparison tables (markdown and CSV) from the dict that ``evaluate_runs`` returns.

One row per evaluated run (percent, two decimals; mHD95 in mm), then, with ``--paper``, the paper's
reported rows and the difference of every run to the paper's CE + topK-Dice row.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "MEAN_COLUMNS",
    "SOURCE_DIFFERENCE",
    "SOURCE_PAPER",
    "SOURCE_RUN",
    "TableRow",
    "rank_marks",
    "table_columns",
    "table_rows",
    "to_csv",
    "to_markdown",
]

# results.json metric -> table column (the paper's names; HD95 is not in the paper).
MEAN_COLUMNS: dict[str, str] = {
    "Dice": "mDice",
    "IoU": "mIoU",
    "Precision": "mPrec.",
    "Recall": "mRec.",
    "HD95": "mHD95 (mm)",
}
LOWER_IS_BETTER_COLUMNS = frozenset({"mHD95 (mm)"})

SOURCE_RUN = "evaluated"
SOURCE_PAPER = "paper (reported)"
SOURCE_DIFFERENCE = "difference to paper"

MISSING = "–"  # the column does not exist for this row (e.g. the paper reports no HD95)
UNDEFINED = "n/a"  # the metric is undefined for every case (see the conventions)


@dataclass
class TableRow:
    """One table row: ``values`` maps a column to its display value (percent, mm or difference).

    A column missing from ``values`` is not reported for this row; a None value is undefined.
    """

    source: str
    name: str
    values: dict[str, float | None] = field(default_factory=dict)


def table_columns(results: dict) -> list[str]:
    """Value columns: the five means, then one Dice column per class (only with two or more classes)."""
    columns = list(MEAN_COLUMNS.values())
    if len(results["classes"]) > 1:
        columns += [c["column"] for c in results["classes"]]
    return columns


def _percent(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


def table_rows(results: dict) -> list[TableRow]:
    """The rows in display units: evaluated runs, then the paper's rows, then the differences."""
    columns = table_columns(results)
    rows: list[TableRow] = []
    for name, run in results["runs"].items():
        values = {
            col: _percent(run["mean"][metric], 1 if metric == "HD95" else 100)
            for metric, col in MEAN_COLUMNS.items()
        }
        if len(results["classes"]) > 1:
            values.update(
                {c["column"]: _percent(run["per_class"][c["name"]]["Dice"], 100) for c in results["classes"]}
            )
        rows.append(TableRow(SOURCE_RUN, name, values))
    paper = results.get("paper")
    if not paper:
        return rows
    reported = {
        row: {col: value * 100 for col, value in values.items() if col in columns}
        for row, values in paper["reported"].items()
    }
    for row, values in reported.items():
        rows.append(TableRow(SOURCE_PAPER, f"{row} [Table {paper['table']}]", dict(values)))
    reference = reported[paper["reference_row"]]
    for run_row in [r for r in rows if r.source == SOURCE_RUN]:
        diff = {
            col: (None if run_row.values.get(col) is None else run_row.values[col] - ref)
            for col, ref in reference.items()
        }
        rows.append(TableRow(SOURCE_DIFFERENCE, f"{run_row.name} vs. {paper['reference_row']}", diff))
    return rows


def rank_marks(rows: Sequence[TableRow], columns: Sequence[str]) -> dict[tuple[int, str], str]:
    """Best and second best per column, ranked on the displayed (two-decimal) values.

    Ranked separately among the evaluated runs and among the paper's rows (difference rows are not
    ranked). Higher is better except for mHD95. ``best`` needs two rows in the group, ``second`` three;
    ties share the mark. Returns ``{(row index, column): "best" | "second"}``.
    """
    marks: dict[tuple[int, str], str] = {}
    for source in (SOURCE_RUN, SOURCE_PAPER):
        group = [i for i, r in enumerate(rows) if r.source == source]
        if len(group) < 2:
            continue
        for col in columns:
            scored = {i: round(rows[i].values[col], 2) for i in group if rows[i].values.get(col) is not None}
            distinct = sorted(set(scored.values()), reverse=col not in LOWER_IS_BETTER_COLUMNS)
            for rank, label in enumerate(("best", "second")[: 1 if len(group) < 3 else 2]):
                if rank < len(distinct):
                    marks.update({(i, col): label for i, v in scored.items() if v == distinct[rank]})
    return marks


def _format(row: TableRow, col: str) -> str:
    if col not in row.values:
        return MISSING
    value = row.values[col]
    if value is None or math.isnan(value):
        return UNDEFINED
    return f"{value:+.2f}" if row.source == SOURCE_DIFFERENCE else f"{value:.2f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(results: dict) -> str:
    """The comparison table as markdown, with a legend and the notes that the numbers need."""
    columns = table_columns(results)
    rows = table_rows(results)
    marks = rank_marks(rows, columns)
    dataset = results["dataset"].get("name") or "dataset"
    n_cases = len(results["cases"])
    lines = [
        f"## Paper-style evaluation: {dataset} ({n_cases} test case{'s' if n_cases != 1 else ''})",
        "",
        "Percent with two decimals: each class averaged over the test cases, then over the classes "
        "(the paper's section 3.2); mHD95 in mm. "
        + ("Class columns are the Dice of each class. " if len(results["classes"]) > 1 else "")
        + "Best in **bold**, second best in _italics_ (lower is better for mHD95), ranked among the "
        "evaluated runs" + (" and, separately, among the paper's rows." if results.get("paper") else "."),
    ]
    paper = results.get("paper")
    if paper:
        lines.append(
            f"Rows '{SOURCE_PAPER}' are the numbers published in the paper's Table {paper['table']} "
            f"({paper['dataset']}; its own network and training), not computed here. Rows "
            f"'{SOURCE_DIFFERENCE}' are run minus the paper's '{paper['reference_row']}' row, in "
            "percentage points."
        )
    lines += ["", "| Source | Name | " + " | ".join(columns) + " |", "|:--|:--|" + "--:|" * len(columns)]
    for i, row in enumerate(rows):
        cells = []
        for col in columns:
            text = _format(row, col)
            mark = marks.get((i, col))
            cells.append(f"**{text}**" if mark == "best" else f"_{text}_" if mark == "second" else text)
        lines.append(f"| {row.source} | {_escape(row.name)} | " + " | ".join(cells) + " |")
    notes = [f"{MISSING}: not reported", f"{UNDEFINED}: undefined in every case"]
    undefined = {
        name: run["n_hd95_undefined"] for name, run in results["runs"].items() if run["n_hd95_undefined"]
    }
    if undefined:
        counts = ", ".join(f"{_escape(name)}: {n}" for name, n in undefined.items())
        notes.append(
            "HD95 is undefined and left out where only one of reference and prediction contains the class "
            f"(class-case pairs per run: {counts})"
        )
    lines += ["", "Notes: " + "; ".join(notes) + ".", ""]
    return "\n".join(lines)


def to_csv(results: dict) -> str:
    """The same rows as CSV: ``source, name, <columns>``; plain numbers (two decimals), empty when not
    reported or undefined, differences signed."""
    columns = table_columns(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "name", *columns])
    for row in table_rows(results):
        cells = [_format(row, col) for col in columns]
        writer.writerow([row.source, row.name, *("" if c in (MISSING, UNDEFINED) else c for c in cells)])
    return buffer.getvalue()
