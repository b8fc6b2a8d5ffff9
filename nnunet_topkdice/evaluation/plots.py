"""Figures: per-class Dice of several methods with their paired differences (``figure.png``). The
ignore-map pictures are in :mod:`nnunet_topkdice.evaluation.ignore_map_plot`.

Matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

__all__ = ["classes_by_size", "plot_results"]

MEAN_METRICS = (("Dice", "mDice"), ("IoU", "mIoU"), ("Precision", "mPrec."), ("Recall", "mRec."))


def classes_by_size(results: dict) -> list[dict]:
    """``results["classes"]`` ordered by size, smallest first: the median over the cases of the reference
    voxel count (``n_reference`` of the first repeat's ``per_case``; the reference is the same for every
    run). Equal sizes keep the dataset's order; without voxel counts the order is unchanged."""
    classes = list(results["classes"])
    runs = list(results["runs"].values())
    if not runs:
        return classes
    per_case = runs[0].get("repeats", [runs[0]])[0]["per_case"]
    sizes = {}
    for c in classes:
        counts = [case[c["name"]].get("n_reference") for case in per_case.values() if c["name"] in case]
        counts = [n for n in counts if n is not None]
        if not counts:
            return classes
        sizes[c["name"]] = float(np.median(counts))
    return sorted(classes, key=lambda c: sizes[c["name"]])  # stable: ties keep the dataset's order


def _run_colours(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _class_values(per_case: dict, class_name: str) -> list[float]:
    """Dice in percent of one class over the cases where it is defined."""
    values = [case[class_name]["Dice"] for case in per_case.values()]
    return [100 * v for v in values if v is not None]


def _draw_class_dice(ax, results: dict, colours: list, reference: dict) -> None:
    """Per class and method: a box over the cases, one dot per case, a diamond for the mean."""
    runs, classes = list(results["runs"]), results["classes"]
    width = 0.8 / len(runs)
    rng = np.random.default_rng(0)  # jitter of the case dots, fixed so that the figure is reproducible
    for j, run in enumerate(runs):
        positions, data = [], []
        for i, c in enumerate(classes):
            values = _class_values(results["runs"][run]["per_case"], c["name"])
            x = i - 0.4 + width * (j + 0.5)
            if values:
                positions.append(x)
                data.append(values)
                jitter = rng.uniform(-0.25, 0.25, len(values)) * width
                ax.scatter(x + jitter, values, s=9, color="black", alpha=0.5, zorder=3, linewidths=0)
            mean = results["runs"][run]["per_class"][c["name"]]["Dice"]
            if mean is not None:
                ax.scatter(x, 100 * mean, marker="D", s=28, color="white", edgecolor="black", zorder=4)
        if data:
            box = ax.boxplot(
                data, positions=positions, widths=width * 0.8, patch_artist=True, showfliers=False,
                manage_ticks=False,
            )
            for patch in box["boxes"]:
                patch.set(facecolor=colours[j], alpha=0.75)
            for median in box["medians"]:
                median.set(color="black")
    n_classes = len(classes)
    for i, c in enumerate(classes):
        value = reference.get(c["column"]) if n_classes > 1 else reference.get("mDice")
        if value is not None:
            ax.scatter(i, 100 * value, marker="x", s=60, color="black", zorder=5)
    _class_axis(ax, classes)
    ax.set_ylim(0, 102)
    ax.set_ylabel("Dice (%)")
    ax.set_title(f"Dice per class over {len(results['cases'])} test cases")
    ax.grid(axis="y", alpha=0.3)


def _class_axis(ax, classes: list[dict], extra: tuple[str, ...] = ()) -> None:
    labels = [*extra, *(c["column"] for c in classes)]
    rotate = len(labels) > 4
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_xlabel("class (by median reference size, smallest first)" if len(classes) > 1 else "class")


def _draw_means(ax, results: dict, colours: list, reference: dict) -> None:
    """Bars of the mean metrics per method (the mean over its repeats, with the sd as an error bar)."""
    runs = list(results["runs"])
    width = 0.8 / len(runs)
    x = np.arange(len(MEAN_METRICS))
    for j, run in enumerate(runs):
        means = [results["runs"][run]["mean"][m] for m, _ in MEAN_METRICS]
        sds = [results["runs"][run].get("sd", {}).get(m) for m, _ in MEAN_METRICS]
        ax.bar(
            x - 0.4 + width * (j + 0.5),
            [0 if v is None else 100 * v for v in means],
            width,
            yerr=[0 if v is None else 100 * v for v in sds] if any(v is not None for v in sds) else None,
            color=colours[j],
            capsize=2,
        )
    for i, (_, col) in enumerate(MEAN_METRICS):
        if reference.get(col) is not None:
            ax.scatter(i, 100 * reference[col], marker="x", s=60, color="black", zorder=5)
    ax.set_xticks(x)
    ax.set_xticklabels([col for _, col in MEAN_METRICS])
    ax.set_ylim(0, 102)
    ax.set_ylabel("percent")
    ax.set_title("Means over classes")
    ax.grid(axis="y", alpha=0.3)


def _draw_differences(ax, results: dict, colours: dict) -> None:
    """Paired differences with the baseline, percentage points with the 95% case-bootstrap interval (for these
    trained models; exploratory): the case score (mean Dice over classes) first, then each class's Dice."""
    comparisons, classes = results["comparisons"], results["classes"]
    width = 0.8 / len(comparisons)
    for j, comparison in enumerate(comparisons):
        entries = [comparison["these_models"], *(comparison["per_class"][c["name"]] for c in classes)]
        for i, entry in enumerate(entries):
            if entry["mean_difference"] is None:
                continue
            low, high = entry["ci95"]
            mean = 100 * entry["mean_difference"]
            ax.errorbar(
                i - 0.4 + width * (j + 0.5),
                mean,
                yerr=[[mean - 100 * low], [100 * high - mean]],
                fmt="o",
                color=colours[comparison["method"]],
                capsize=3,
                markersize=5,
            )
    ax.axhline(0, color="black", linewidth=0.8)
    _class_axis(ax, classes, extra=("case score\n(all classes)",))
    ax.set_ylabel("difference (percentage points)")
    ax.set_title(f"Paired Dice difference with {results['baseline']!r}:\nmean, 95% case-bootstrap CI (these "
                 "trained models; exploratory)")
    ax.grid(axis="y", alpha=0.3)


def _seed_panel_limits(comparisons: list[dict]) -> tuple[float, float]:
    """y limits (points) that show every repeat's interval; a crossed interval far wider is clipped."""
    values = [0.0]
    for c in comparisons:
        values += [100 * v for interval in c["per_repeat_ci95"] for v in interval]
        values += [100 * c["mean_difference"]] if c["mean_difference"] is not None else []
    low, high = min(values), max(values)
    margin = max(0.5, 0.5 * (high - low))
    return low - margin, high + margin


def _draw_seed_differences(ax, results: dict, colours: dict) -> None:
    """Each repeat's difference of the case score with its 95% case-bootstrap interval, then the crossed
    mean and 95% interval (seeds and cases random), per comparison; a crossed interval beyond the panel is
    clipped and its end written at the edge."""
    comparisons = [c for c in results["comparisons"] if c["mean_difference"] is not None]
    n_repeats = max((c["n_paired_repeats"] for c in comparisons), default=1)
    width = 0.8 / max(1, len(comparisons))
    bottom, top = _seed_panel_limits(comparisons)
    for j, c in enumerate(comparisons):
        offset = -0.4 + width * (j + 0.5)
        for s, (mean, (low, high)) in enumerate(zip(c["per_repeat_differences"], c["per_repeat_ci95"], strict=True)):
            mean, low, high = 100 * mean, 100 * low, 100 * high
            ax.errorbar(s + offset, mean, yerr=[[mean - low], [high - mean]], fmt="o", color=colours[c["method"]],
                        capsize=3, markersize=5)  # fmt: skip
        if c["ci95"] is None:
            continue
        mean, (low, high) = 100 * c["mean_difference"], (100 * v for v in c["ci95"])
        x = n_repeats + offset
        ax.errorbar(x, mean, yerr=[[mean - max(low, bottom)], [min(high, top) - mean]], fmt="D",
                    color=colours[c["method"]], capsize=4, markersize=7, elinewidth=2.5)  # fmt: skip
        for end, edge, va in ((low, bottom, "bottom"), (high, top, "top")):
            if (end < edge) if va == "bottom" else (end > edge):
                ax.annotate(f"{end:+.1f}", (x, edge), ha="center", va=va, fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylim(bottom, top)
    # repeats from 0, as in per_case.csv
    labels = [f"repeat {s}" for s in range(n_repeats)] + ["crossed\n(seeds and cases)"]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel("difference (percentage points)")
    ax.set_title("Case-score difference per repeat (95% case-bootstrap CI)\n"
                 "and crossed (95% CI, seeds and cases random)")
    ax.grid(axis="y", alpha=0.3)


def _legend_handles(runs: list[str], colours: list, paper: dict | None) -> list:
    handles = [Patch(facecolor=colours[j], alpha=0.75, label=run) for j, run in enumerate(runs)]
    handles.append(
        plt.Line2D([], [], marker="D", linestyle="", color="white", markeredgecolor="black", label="mean")
    )
    handles.append(
        plt.Line2D([], [], marker="o", linestyle="", color="black", alpha=0.5, markersize=4, label="one case")
    )
    if paper:
        label = f"paper {paper['reference_row']} (reported)"
        handles.append(plt.Line2D([], [], marker="x", linestyle="", color="black", label=label))
    return handles


def plot_results(results: dict, out_png: Path) -> Path:
    """Per-class Dice per method (box over the cases, dots per case, diamond = mean), the mean metrics and,
    with two or more methods, the paired differences with the baseline and their 95% intervals, and each
    repeat's difference next to the crossed interval (seeds and cases random).

    With the paper's rows in ``results``, its CE + topK-Dice values are drawn as black crosses.
    Classes are ordered by size (:func:`classes_by_size`), so that gains in small structures show at the left.
    Returns ``out_png``.
    """
    results = {**results, "classes": classes_by_size(results)}
    runs = list(results["runs"])
    colours = _run_colours(len(runs))
    paper = results.get("paper")
    reference = paper["reported"][paper["reference_row"]] if paper else {}
    n_classes = len(results["classes"])
    comparisons = results.get("comparisons") or []

    fig_width = min(max(9.0, 0.9 * n_classes * max(1, len(runs)) ** 0.5 + 5), 24.0)
    mosaic = [["classes", "means"]] + ([["differences", "differences"], ["seeds", "seeds"]] if comparisons else [])
    fig, axes = plt.subplot_mosaic(
        mosaic,
        figsize=(fig_width, 6.0 + (8.0 if comparisons else 0.0)),
        width_ratios=[max(2.0, 0.9 * n_classes), 2.2],
        height_ratios=[6.0, 4.0, 4.0] if comparisons else [1.0],
        layout="constrained",
    )
    _draw_class_dice(axes["classes"], results, colours, reference)
    _draw_means(axes["means"], results, colours, reference)
    if comparisons:
        _draw_differences(axes["differences"], results, dict(zip(runs, colours, strict=True)))
        _draw_seed_differences(axes["seeds"], results, dict(zip(runs, colours, strict=True)))

    handles = _legend_handles(runs, colours, paper)
    # as many legend columns as fit the width (long run names take about 2.5 inches)
    n_columns = max(2, min(len(handles), int(fig_width // 2.5)))
    fig.legend(handles=handles, loc="outside lower center", ncol=n_columns, frameon=False)
    name = results["dataset"].get("name") or "evaluation"
    fig.suptitle(f"{name}: paper-style evaluation")
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
