"""``topkdice summary``: several evaluations (for example the three ``reproduce`` runs) in one table.

Reads the ``results.json`` of each evaluation, lists every comparison as one row (dataset x comparison:
difference, crossed interval, verdict), adjusts the crossed p values with Holm over all rows of all
datasets, and, across datasets: with 5 or more datasets a Wilcoxon signed-rank test of each comparison's
per-dataset mean differences; with 3 or more methods evaluated on 2 or more datasets Friedman's test of
their mean Dice and a critical-difference diagram (Nemenyi post-hoc test, scikit-posthocs, the optional
extra ``stats``). Statistics come from :mod:`~nnunet_topkdice.evaluation.statistics`; this module reads,
assembles and writes.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.evaluation.statistics import (
    MIN_CASES_FOR_005,
    friedman_test,
    holm_adjust,
    verdict,
    wilcoxon_p,
)

__all__ = [
    "MIN_DATASETS_FOR_WILCOXON",
    "MIN_METHODS_FOR_FRIEDMAN",
    "SUMMARY_FILES",
    "CriticalDifferenceUnavailable",
    "across_datasets",
    "find_results",
    "friedman_block",
    "has_friedman_test",
    "load_evaluations",
    "plot_critical_difference",
    "repeated_datasets",
    "summarise",
    "summary_rows",
    "to_csv",
    "to_markdown",
    "write_summary",
]

MIN_DATASETS_FOR_WILCOXON = 5
MIN_METHODS_FOR_FRIEDMAN = 3
SUMMARY_FILES = ("summary.md", "summary.csv", "summary.json")
CD_DIAGRAM = "critical_difference.png"
INSTALL_HINT = "pip install 'nnunet-topkdice[stats]' (or: pip install scikit-posthocs)"


class CriticalDifferenceUnavailable(RuntimeError):
    """scikit-posthocs is not installed: the critical-difference diagram cannot be drawn."""


def find_results(paths: Sequence[Path]) -> list[Path]:
    """The ``results.json`` files named by ``paths``, each once, in the order given.

    A path is a ``results.json`` file, an evaluation folder holding one, or a work directory of ``compare``
    or ``reproduce``, searched recursively (sorted).

    Raises:
        InputError: a path that does not exist, or one under which no ``results.json`` is found.
    """
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.is_file():
            matches = [path]
        elif (path / "results.json").is_file():
            matches = [path / "results.json"]
        elif path.is_dir():
            matches = sorted(path.rglob("results.json"))
            if not matches:
                raise InputError(f"{path}: no results.json under this folder (run topkdice evaluate first)")
        else:
            raise InputError(f"{path}: no such file or folder")
        found.update(dict.fromkeys(m.resolve() for m in matches))
    return list(found)


def _load(path: Path) -> dict:
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable results.json ({e})") from None
    if not isinstance(results, dict) or "runs" not in results or "comparisons" not in results:
        raise InputError(f"{path}: not a results.json of topkdice evaluate (no runs or comparisons)")
    if any("verdict" not in c for c in results["comparisons"]):
        raise InputError(f"{path}: written before the crossed analysis (no verdict); run topkdice evaluate "
                         "again to update it")  # fmt: skip
    return results


def load_evaluations(paths: Sequence[Path]) -> list[tuple[str, dict]]:
    """``(dataset label, results)`` per ``results.json``; the label is the dataset's name, followed by the
    evaluation's folder where two evaluations share a name.

    Raises:
        InputError: a file that is not a current ``results.json`` of ``topkdice evaluate``.
    """
    loaded = [(path, _load(path)) for path in paths]
    names = [(r.get("dataset") or {}).get("name") or path.parent.name for path, r in loaded]
    return [
        (name if names.count(name) == 1 else f"{name} ({path.parent})", results)
        for name, (path, results) in zip(names, loaded, strict=True)
    ]


def summary_rows(evaluations: Sequence[tuple[str, dict]]) -> list[dict]:
    """One row per comparison of every evaluation: ``dataset``, ``method``, ``baseline``,
    ``n_paired_repeats``, ``n_cases``, ``mean_difference``, ``ci95``, ``p_value`` (the crossed ones),
    ``p_holm`` (Holm over all rows) and the ``verdict`` that follows from it (SPEC 6.3)."""
    rows = [
        {
            "dataset": label,
            "method": c["method"],
            "baseline": c["baseline"],
            "n_paired_repeats": c["n_paired_repeats"],
            "n_cases": c["n_cases"],
            "mean_difference": c["mean_difference"],
            "ci95": c["ci95"],
            "p_value": c["p_value"],
        }
        for label, results in evaluations
        for c in results["comparisons"]
    ]
    for row, p_holm in zip(rows, holm_adjust([r["p_value"] for r in rows]), strict=True):
        row["p_holm"] = p_holm
        row["verdict"] = verdict(row["n_paired_repeats"], row["n_cases"], row["mean_difference"], p_holm)
    return rows


def across_datasets(rows: Sequence[dict]) -> list[dict]:
    """Per comparison (method vs baseline) found in 5 or more datasets: the two-sided Wilcoxon signed-rank
    test of its per-dataset mean differences (``n_datasets``, ``median_difference``, ``datasets_better``,
    ``p_value``; None where undefined)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row["mean_difference"] is not None:
            groups.setdefault((row["method"], row["baseline"]), []).append(row["mean_difference"])
    tests = []
    for (method, baseline), differences in groups.items():
        if len(differences) < MIN_DATASETS_FOR_WILCOXON:
            continue
        values = np.array(differences)
        tests.append({
            "method": method, "baseline": baseline, "n_datasets": len(values),
            "median_difference": float(np.median(values)), "datasets_better": int((values > 0).sum()),
            "p_value": wilcoxon_p(values),
        })  # fmt: skip
    return tests


def friedman_block(evaluations: Sequence[tuple[str, dict]]) -> dict | None:
    """Friedman's test of the methods evaluated on every dataset (mean Dice over each method's repeats,
    datasets as blocks): ``methods``, ``datasets``, ``scores`` (datasets x methods), ``statistic``,
    ``p_value``, ``mean_ranks`` (1 = best) and ``note`` (None, or why the statistic and p are None: every
    method ties on every dataset).

    None with fewer than 2 datasets or fewer than 3 methods in all; ``{"note": why}`` alone where 3 or more
    methods are evaluated but the test cannot run (fewer than 3 of them on every dataset, or an undefined
    mean Dice), so that the summary says why it is missing.
    """
    if len(evaluations) < 2:
        return None
    every = list(dict.fromkeys(m for _, results in evaluations for m in results["runs"]))
    if len(every) < MIN_METHODS_FOR_FRIEDMAN:
        return None
    methods = [m for m in every if all(m in results["runs"] for _, results in evaluations)]
    if len(methods) < MIN_METHODS_FOR_FRIEDMAN:
        missing = [f"{m} from {', '.join(label for label, r in evaluations if m not in r['runs'])}"
                   for m in every if m not in methods]  # fmt: skip
        return {"note": f"no Friedman test: it needs {MIN_METHODS_FOR_FRIEDMAN} or more methods evaluated on every "
                        f"dataset, and {len(methods)} are ({'; '.join(missing)} missing)"}  # fmt: skip
    scores = [[results["runs"][m]["mean"]["Dice"] for m in methods] for _, results in evaluations]
    undefined = [f"{m} on {label}" for (label, _), row in zip(evaluations, scores, strict=True)
                 for m, v in zip(methods, row, strict=True) if v is None]  # fmt: skip
    if undefined:
        return {"note": f"no Friedman test: the mean Dice of {', '.join(undefined)} is undefined"}
    result = friedman_test(np.array(scores, dtype=np.float64))
    tied = not np.isfinite(result.statistic)  # scipy's statistic of blocks that all tie is 0 / 0
    return {
        "methods": methods,
        "datasets": [label for label, _ in evaluations],
        "scores": scores,
        "statistic": None if tied else result.statistic,
        "p_value": None if tied or not np.isfinite(result.p_value) else result.p_value,
        "mean_ranks": dict(zip(methods, result.mean_ranks, strict=True)),
        "note": "every method ties on every dataset: Friedman's statistic is undefined" if tied else None,
    }


def has_friedman_test(summary: dict) -> bool:
    """Whether the summary holds a Friedman statistic (and so a critical-difference diagram)."""
    friedman = summary["friedman"]
    return bool(friedman) and friedman.get("statistic") is not None


def repeated_datasets(evaluations: Sequence[tuple[str, dict]]) -> list[str]:
    """The dataset names that more than one evaluation carries (each counts as a dataset in the tests
    across datasets: the same data evaluated twice would count twice)."""
    names = [(results.get("dataset") or {}).get("name") for _, results in evaluations]
    return sorted({name for name in names if name and names.count(name) > 1})


def summarise(evaluations: Sequence[tuple[str, dict]]) -> dict:
    """The summary as a dict: ``rows`` (:func:`summary_rows`), ``across_datasets``
    (:func:`across_datasets`) and ``friedman`` (:func:`friedman_block`, or None)."""
    rows = summary_rows(evaluations)
    return {
        "datasets": [label for label, _ in evaluations],
        "rows": rows,
        "across_datasets": across_datasets(rows),
        "friedman": friedman_block(evaluations),
        "repeated_datasets": repeated_datasets(evaluations),
    }


def plot_critical_difference(friedman: dict, out_png: Path) -> Path:
    """The critical-difference diagram of :func:`friedman_block`'s methods: mean ranks, and bars joining
    the methods that Nemenyi's post-hoc test (scikit-posthocs) cannot tell apart at 0.05.

    Raises:
        CriticalDifferenceUnavailable: scikit-posthocs is not installed.
    """
    try:
        import scikit_posthocs as posthocs
    except ImportError:
        raise CriticalDifferenceUnavailable(f"the critical-difference diagram needs scikit-posthocs: "
                                            f"{INSTALL_HINT}") from None  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = friedman["methods"]
    p_values = posthocs.posthoc_nemenyi_friedman(np.array(friedman["scores"], dtype=np.float64))
    p_values.index, p_values.columns = methods, methods
    fig, ax = plt.subplots(figsize=(8.0, 1.0 + 0.4 * len(methods)), layout="constrained")
    posthocs.critical_difference_diagram(friedman["mean_ranks"], p_values, ax=ax)
    ax.set_title(f"Mean rank of mean Dice over {len(friedman['datasets'])} datasets (1 = best); bars: Nemenyi "
                 "p >= 0.05", fontsize=9)  # fmt: skip
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f}"


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:#.2g}"


def _interval(ci95: Sequence[float] | None) -> str:
    return "n/a" if ci95 is None else f"{_points(ci95[0])} to {_points(ci95[1])}"


TABLE_COLUMNS = ("dataset", "comparison", "seeds", "cases", "difference (points)", "crossed 95% CI", "p",
                 "Holm p (all rows)", "verdict")  # fmt: skip


def _cells(row: dict) -> list[str]:
    return [
        row["dataset"], f"{row['method']} vs {row['baseline']}", str(row["n_paired_repeats"]), str(row["n_cases"]),
        _points(row["mean_difference"]), _interval(row["ci95"]), _p(row["p_value"]), _p(row["p_holm"]),
        row["verdict"],
    ]  # fmt: skip


def _across_lines(summary: dict) -> list[str]:
    lines = []
    for test in summary["across_datasets"]:
        text = (f"{test['method']} vs {test['baseline']} over {test['n_datasets']} datasets: median "
                f"{_points(test['median_difference'])} points, {test['datasets_better']} of {test['n_datasets']} "
                f"datasets better, Wilcoxon p = {_p(test['p_value'])} (datasets as the unit)")  # fmt: skip
        if test["n_datasets"] < MIN_CASES_FOR_005:
            text += f"; with fewer than {MIN_CASES_FOR_005} datasets it cannot reach 0.05"
        lines.append(text)
    friedman = summary["friedman"]
    if friedman and "methods" in friedman:
        ranks = ", ".join(f"{m} {r:.2f}" for m, r in sorted(friedman["mean_ranks"].items(), key=lambda x: x[1]))
        statistic = "undefined" if friedman["statistic"] is None else f"{friedman['statistic']:.2f}"
        text = (f"Friedman test of {len(friedman['methods'])} methods over {len(friedman['datasets'])} "
                f"datasets (mean Dice): chi2 = {statistic}, p = {_p(friedman['p_value'])}; "
                f"mean ranks (1 = best): {ranks}")  # fmt: skip
        lines.append(text if friedman["note"] is None else f"{text} ({friedman['note']})")
    elif friedman:
        lines.append(friedman["note"][0].upper() + friedman["note"][1:])
    repeated = summary.get("repeated_datasets") or []
    if repeated and (summary["across_datasets"] or has_friedman_test(summary)):
        lines.append(f"{', '.join(repeated)} evaluated more than once: each evaluation counts as a dataset in "
                     "the tests across datasets")  # fmt: skip
    return lines


def to_markdown(summary: dict) -> str:
    """The summary table, its legend, then the tests across datasets."""
    lines = [
        f"## Summary over {len(summary['datasets'])} evaluation{'s' if len(summary['datasets']) != 1 else ''}",
        "",
        "Difference: mean over seeds and cases of the paired case-score difference (mean Dice over classes), "
        "percentage points; crossed 95% CI and p treat seeds and cases as random (SPEC 6.2); Holm over all rows "
        "of this table; verdict: one repeat, exploratory (2 seeds), better / worse (3 or more seeds, Holm p < "
        "0.05), inconclusive, undefined.",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|:--|:--|" + "--:|" * (len(TABLE_COLUMNS) - 3) + ":--|",
    ]
    for row in summary["rows"]:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in _cells(row)) + " |")
    across = _across_lines(summary)
    if across:
        lines += [""] + [line for text in across for line in (text.replace("|", "\\|"), "")]
    return "\n".join(lines).rstrip() + "\n"


def to_csv(summary: dict) -> str:
    """The rows as CSV, plain fractions: dataset, method, baseline, n_paired_repeats, n_cases,
    mean_difference, ci95_low, ci95_high, p_value, p_holm, verdict (empty where undefined)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "method", "baseline", "n_paired_repeats", "n_cases", "mean_difference",
                     "ci95_low", "ci95_high", "p_value", "p_holm", "verdict"])  # fmt: skip

    def plain(value: float | None) -> str:
        return "" if value is None else repr(float(value))

    for row in summary["rows"]:
        low, high = row["ci95"] or (None, None)
        writer.writerow([row["dataset"], row["method"], row["baseline"], row["n_paired_repeats"], row["n_cases"],
                         plain(row["mean_difference"]), plain(low), plain(high), plain(row["p_value"]),
                         plain(row["p_holm"]), row["verdict"]])  # fmt: skip
    return buffer.getvalue()


def write_summary(summary: dict, out_dir: Path) -> list[Path]:
    """Write ``summary.md``, ``summary.csv``, ``summary.json`` and, with a Friedman block, the
    critical-difference diagram into ``out_dir`` (created); each under a temporary name, renamed into place
    once all are written. Returns the paths written.

    Raises:
        CriticalDifferenceUnavailable: after the tables are written, when scikit-posthocs is missing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    contents = {
        "summary.md": to_markdown(summary),
        "summary.csv": to_csv(summary),
        "summary.json": json.dumps(summary, indent=2, allow_nan=False),
    }
    temporary = {name: out_dir / f".{name}.partial" for name in contents}
    try:
        for name, text in contents.items():
            temporary[name].write_text(text)
        for name, path in temporary.items():
            os.replace(path, out_dir / name)
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)
    written = [out_dir / name for name in contents]
    if not has_friedman_test(summary):
        (out_dir / CD_DIAGRAM).unlink(missing_ok=True)  # an earlier summary's in this folder: not this one's
    else:
        partial = out_dir / f".{CD_DIAGRAM}.partial.png"
        try:
            plot_critical_difference(summary["friedman"], partial)
            os.replace(partial, out_dir / CD_DIAGRAM)
        finally:
            partial.unlink(missing_ok=True)
        written.append(out_dir / CD_DIAGRAM)
    return written
