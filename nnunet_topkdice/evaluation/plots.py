"""Figures: per-class Dice of several runs (``figure.png``); the ignore-map pictures are in
:mod:`nnunet_topkdice.evaluation.ignore_map_plot`.

Matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

__all__ = ["plot_results"]

MEAN_METRICS = (("Dice", "mDice"), ("IoU", "mIoU"), ("Precision", "mPrec."), ("Recall", "mRec."))


def _run_colours(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_results(results: dict, out_png: Path) -> Path:
    """Per-class Dice per run (box over the cases, dots per case, diamond = mean) and the mean metrics.

    With the paper's rows in ``results``, its CE + topK-Dice values are drawn as black crosses.
    Returns ``out_png``.
    """
    runs = list(results["runs"])
    classes = results["classes"]
    colours = _run_colours(len(runs))
    paper = results.get("paper")
    reference = paper["reported"][paper["reference_row"]] if paper else {}

    n_classes = len(classes)
    fig_width = min(max(9.0, 0.9 * n_classes * max(1, len(runs)) ** 0.5 + 5), 24.0)
    fig, (ax_cls, ax_mean) = plt.subplots(
        1,
        2,
        figsize=(fig_width, 6.0),
        gridspec_kw={"width_ratios": [max(2.0, 0.9 * n_classes), 2.2]},
        layout="constrained",
    )
    width = 0.8 / len(runs)
    rng = np.random.default_rng(0)  # jitter of the case dots, fixed so that the figure is reproducible
    for j, run in enumerate(runs):
        per_case = results["runs"][run]["per_case"]
        positions, data = [], []
        for i, c in enumerate(classes):
            values = [case[c["name"]]["Dice"] for case in per_case.values()]
            values = [100 * v for v in values if v is not None]
            x = i - 0.4 + width * (j + 0.5)
            if values:
                positions.append(x)
                data.append(values)
                ax_cls.scatter(
                    x + rng.uniform(-0.25, 0.25, len(values)) * width,
                    values,
                    s=9,
                    color="black",
                    alpha=0.5,
                    zorder=3,
                    linewidths=0,
                )
            mean = results["runs"][run]["per_class"][c["name"]]["Dice"]
            if mean is not None:
                ax_cls.scatter(x, 100 * mean, marker="D", s=28, color="white", edgecolor="black", zorder=4)
        if data:
            box = ax_cls.boxplot(
                data,
                positions=positions,
                widths=width * 0.8,
                patch_artist=True,
                showfliers=False,
                manage_ticks=False,
            )
            for patch in box["boxes"]:
                patch.set(facecolor=colours[j], alpha=0.75)
            for median in box["medians"]:
                median.set(color="black")
    for i, c in enumerate(classes):
        value = reference.get(c["column"]) if n_classes > 1 else reference.get("mDice")
        if value is not None:
            ax_cls.scatter(i, 100 * value, marker="x", s=60, color="black", zorder=5)
    ax_cls.set_xticks(range(n_classes))
    ax_cls.set_xticklabels(
        [c["column"] for c in classes],
        rotation=30 if n_classes > 4 else 0,
        ha="right" if n_classes > 4 else "center",
    )
    ax_cls.set_xlim(-0.6, n_classes - 0.4)
    ax_cls.set_ylim(0, 102)
    ax_cls.set_ylabel("Dice (%)")
    ax_cls.set_xlabel("class")
    ax_cls.set_title(f"Dice per class over {len(results['cases'])} test cases")
    ax_cls.grid(axis="y", alpha=0.3)

    x = np.arange(len(MEAN_METRICS))
    for j, run in enumerate(runs):
        means = [results["runs"][run]["mean"][m] for m, _ in MEAN_METRICS]
        ax_mean.bar(
            x - 0.4 + width * (j + 0.5), [0 if v is None else 100 * v for v in means], width, color=colours[j]
        )
    for i, (_, col) in enumerate(MEAN_METRICS):
        if reference.get(col) is not None:
            ax_mean.scatter(i, 100 * reference[col], marker="x", s=60, color="black", zorder=5)
    ax_mean.set_xticks(x)
    ax_mean.set_xticklabels([col for _, col in MEAN_METRICS])
    ax_mean.set_ylim(0, 102)
    ax_mean.set_ylabel("percent")
    ax_mean.set_title("Means over classes")
    ax_mean.grid(axis="y", alpha=0.3)

    handles = [Patch(facecolor=colours[j], alpha=0.75, label=run) for j, run in enumerate(runs)]
    handles.append(
        plt.Line2D([], [], marker="D", linestyle="", color="white", markeredgecolor="black", label="mean")
    )
    handles.append(
        plt.Line2D([], [], marker="o", linestyle="", color="black", alpha=0.5, markersize=4, label="one case")
    )
    if reference:
        handles.append(
            plt.Line2D(
                [],
                [],
                marker="x",
                linestyle="",
                color="black",
                label=f"paper {paper['reference_row']} (reported)",
            )
        )
    # as many legend columns as fit the width (long run names take about 2.5 inches)
    n_columns = max(2, min(len(handles), int(fig_width // 2.5)))
    fig.legend(handles=handles, loc="outside lower center", ncol=n_columns, frameon=False)
    name = results["dataset"].get("name") or "evaluation"
    fig.suptitle(f"{name}: paper-style evaluation")
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
