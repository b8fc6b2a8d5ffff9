"""Figures: per-class Dice of several runs (``figure.png``) and the paper's ignore-map pictures.

Matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

__all__ = ["label_colours", "plot_ignore_maps", "plot_results"]

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


def label_colours(n_labels: int) -> ListedColormap:
    """Colour map for label maps 0..n_labels-1: background transparent black, classes from tab10/tab20."""
    base = plt.get_cmap("tab10" if n_labels <= 11 else "tab20")
    colours = [(0.0, 0.0, 0.0, 0.0)] + [base(i % base.N) for i in range(max(n_labels - 1, 1))]
    return ListedColormap(colours[: max(n_labels, 2)])


def _show_labels(ax, labels: np.ndarray, cmap: ListedColormap, aspect: float) -> None:
    ax.imshow(
        np.ma.masked_equal(labels, 0),
        cmap=cmap,
        vmin=0,
        vmax=cmap.N - 1,
        interpolation="nearest",
        aspect=aspect,
    )


def plot_ignore_maps(
    image: np.ndarray,
    label: np.ndarray,
    maps: Mapping[float, np.ndarray],
    out_png: Path,
    *,
    class_names: Sequence[str],
    aspect: float = 1.0,
    losses: Mapping[float, float] | None = None,
    title: str = "",
) -> Path:
    """The paper's Figure 1 (one k) or Figure 2 idea (several k) for one 2-D slice.

    One k: a row of four panels, (a) input, (b) ground truth, (c) ignore map, (d) modified ground truth.
    Several k: input and ground truth in the first column, then per k a column with the ignore map (top)
    and the modified ground truth (bottom).

    Shape:
        image: (H, W) float.  label: (H, W) int in [0, len(class_names)).  maps: k -> (H, W) bool,
        True where the voxel is excluded as easy.  class_names: one per label value, background first.
        aspect: pixel height / width (from the spacing).  losses: optional k -> TopK-Dice loss of the slice.
    Returns:
        ``out_png``.
    """
    cmap = label_colours(len(class_names))
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0, 1)
    ks = list(maps)

    def show_image(ax, dim: float = 1.0) -> None:
        ax.imshow(
            np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1) * dim,
            cmap="gray",
            vmin=0,
            vmax=1,
            aspect=aspect,
        )

    def show_ignore(ax, k: float) -> None:
        excluded = maps[k]
        # white: excluded (easy) voxels; the class colours of the kept (hard) foreground, dimmed
        ax.imshow(np.zeros_like(image), cmap="gray", vmin=0, vmax=1, aspect=aspect)
        kept = np.where(excluded, 0, label)
        ax.imshow(
            np.ma.masked_equal(kept, 0),
            cmap=cmap,
            vmin=0,
            vmax=cmap.N - 1,
            alpha=0.35,
            interpolation="nearest",
            aspect=aspect,
        )
        ax.imshow(
            np.ma.masked_equal(excluded.astype(np.uint8), 0),
            cmap=ListedColormap(["white", "white"]),
            vmin=0,
            vmax=1,
            interpolation="nearest",
            aspect=aspect,
        )

    def show_modified(ax, k: float) -> None:
        ax.imshow(np.zeros_like(image), cmap="gray", vmin=0, vmax=1, aspect=aspect)
        _show_labels(ax, np.where(maps[k], 0, label), cmap, aspect)

    def k_title(k: float, what: str) -> str:
        n_fg = int(np.count_nonzero(label))
        n_kept = int(np.count_nonzero((label > 0) & ~maps[k]))
        text = f"{what}, k = {k:g}%\nkept {n_kept} of {n_fg} fg px"
        if losses and k in losses:
            text += f", loss {losses[k]:.3f}"
        return text

    if len(ks) == 1:
        k = ks[0]
        fig, axes = plt.subplots(1, 4, figsize=(15, 5.2), layout="constrained")
        show_image(axes[0])
        axes[0].set_title("(a) input image")
        show_image(axes[1], 0.6)
        _show_labels(axes[1], label, cmap, aspect)
        axes[1].set_title("(b) ground truth")
        show_ignore(axes[2], k)
        axes[2].set_title(k_title(k, "(c) ignore map"))
        show_modified(axes[3], k)
        axes[3].set_title("(d) modified ground truth")
    else:
        fig, axes = plt.subplots(
            2, len(ks) + 1, figsize=(3.4 * (len(ks) + 1), 8.0), squeeze=False, layout="constrained"
        )
        show_image(axes[0, 0])
        axes[0, 0].set_title("input image")
        show_image(axes[1, 0], 0.6)
        _show_labels(axes[1, 0], label, cmap, aspect)
        axes[1, 0].set_title("ground truth")
        for j, k in enumerate(ks, start=1):
            show_ignore(axes[0, j], k)
            axes[0, j].set_title(k_title(k, "ignore map"))
            show_modified(axes[1, j], k)
            axes[1, j].set_title(f"modified ground truth\nk = {k:g}%")
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(facecolor=cmap(i), label=name) for i, name in enumerate(class_names) if i > 0]
    handles.append(Patch(facecolor="white", edgecolor="black", label="ignore map: excluded (easy) voxels"))
    handles.append(
        Patch(facecolor=(0.35, 0.35, 0.35), label="ignore map: kept (hard) voxels, dimmed class colour")
    )
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), frameon=False)
    if title:
        fig.suptitle(title)
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
