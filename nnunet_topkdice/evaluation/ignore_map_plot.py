"""The ignore-map picture: the paper's Figure 1 (one k) or the Figure 2 idea (several k) for one slice.

Matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

__all__ = ["label_colours", "plot_ignore_maps"]


def label_colours(n_labels: int) -> ListedColormap:
    """Colour map for label maps 0..n_labels-1: background transparent black, classes from tab10/tab20."""
    base = plt.get_cmap("tab10" if n_labels <= 11 else "tab20")
    colours = [(0.0, 0.0, 0.0, 0.0)] + [base(i % base.N) for i in range(max(n_labels - 1, 1))]
    return ListedColormap(colours[: max(n_labels, 2)])


@dataclass(frozen=True)
class _Slice:
    """What every panel draws from: the slice, its labels, the ignore maps and the display settings."""

    image: np.ndarray  # (H, W), already scaled to [0, 1]
    label: np.ndarray  # (H, W) int
    maps: Mapping[float, np.ndarray]  # k -> (H, W) bool, True = excluded as easy
    cmap: ListedColormap
    aspect: float
    losses: Mapping[float, float]
    loss_of: str  # what the losses are of: "slice", or "volume" when the selection ran over the whole case

    def show_image(self, ax, dim: float = 1.0) -> None:
        ax.imshow(self.image * dim, cmap="gray", vmin=0, vmax=1, aspect=self.aspect)

    def show_labels(self, ax, labels: np.ndarray, alpha: float | None = None) -> None:
        ax.imshow(
            np.ma.masked_equal(labels, 0),
            cmap=self.cmap,
            vmin=0,
            vmax=self.cmap.N - 1,
            alpha=alpha,
            interpolation="nearest",
            aspect=self.aspect,
        )

    def show_black(self, ax) -> None:
        ax.imshow(np.zeros_like(self.image), cmap="gray", vmin=0, vmax=1, aspect=self.aspect)

    def show_ground_truth(self, ax) -> None:
        self.show_image(ax, 0.6)
        self.show_labels(ax, self.label)

    def show_ignore(self, ax, k: float) -> None:
        """White: excluded (easy) voxels; the kept (hard) foreground in its class colour, dimmed."""
        excluded = self.maps[k]
        self.show_black(ax)
        self.show_labels(ax, np.where(excluded, 0, self.label), alpha=0.35)
        ax.imshow(
            np.ma.masked_equal(excluded.astype(np.uint8), 0),
            cmap=ListedColormap(["white", "white"]),
            vmin=0,
            vmax=1,
            interpolation="nearest",
            aspect=self.aspect,
        )

    def show_modified(self, ax, k: float) -> None:
        self.show_black(ax)
        self.show_labels(ax, np.where(self.maps[k], 0, self.label))

    def k_title(self, k: float, what: str) -> str:
        n_foreground = int(np.count_nonzero(self.label))
        n_kept = int(np.count_nonzero((self.label > 0) & ~self.maps[k]))
        text = f"{what}, k = {k:g}%\nkept {n_kept} of {n_foreground} fg px"
        if k in self.losses:
            text += f", {self.loss_of} loss {self.losses[k]:.3f}"
        return text


def _one_k_figure(panels: _Slice, k: float):
    """A row of four panels: (a) input, (b) ground truth, (c) ignore map, (d) modified ground truth."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 5.2), layout="constrained")
    panels.show_image(axes[0])
    axes[0].set_title("(a) input image")
    panels.show_ground_truth(axes[1])
    axes[1].set_title("(b) ground truth")
    panels.show_ignore(axes[2], k)
    axes[2].set_title(panels.k_title(k, "(c) ignore map"))
    panels.show_modified(axes[3], k)
    axes[3].set_title("(d) modified ground truth")
    return fig, axes


def _several_k_figure(panels: _Slice, ks: Sequence[float]):
    """Input and ground truth in the first column, then per k the ignore map over the modified ground truth."""
    fig, axes = plt.subplots(
        2, len(ks) + 1, figsize=(3.4 * (len(ks) + 1), 8.0), squeeze=False, layout="constrained"
    )
    panels.show_image(axes[0, 0])
    axes[0, 0].set_title("input image")
    panels.show_ground_truth(axes[1, 0])
    axes[1, 0].set_title("ground truth")
    for j, k in enumerate(ks, start=1):
        panels.show_ignore(axes[0, j], k)
        axes[0, j].set_title(panels.k_title(k, "ignore map"))
        panels.show_modified(axes[1, j], k)
        axes[1, j].set_title(f"modified ground truth\nk = {k:g}%")
    return fig, axes


def _legend_handles(cmap: ListedColormap, class_names: Sequence[str]) -> list[Patch]:
    handles = [Patch(facecolor=cmap(i), label=name) for i, name in enumerate(class_names) if i > 0]
    handles.append(Patch(facecolor="white", edgecolor="black", label="ignore map: excluded (easy) voxels"))
    handles.append(
        Patch(facecolor=(0.35, 0.35, 0.35), label="ignore map: kept (hard) voxels, dimmed class colour")
    )
    return handles


def plot_ignore_maps(
    image: np.ndarray,
    label: np.ndarray,
    maps: Mapping[float, np.ndarray],
    out_png: Path,
    *,
    class_names: Sequence[str],
    aspect: float = 1.0,
    losses: Mapping[float, float] | None = None,
    loss_of: str = "slice",
    title: str = "",
) -> Path:
    """The paper's Figure 1 (one k) or Figure 2 idea (several k) for one 2-D slice.

    One k: a row of four panels, (a) input, (b) ground truth, (c) ignore map, (d) modified ground truth.
    Several k: input and ground truth in the first column, then per k a column with the ignore map (top)
    and the modified ground truth (bottom).

    Shape:
        image: (H, W) float.  label: (H, W) int in [0, len(class_names)).  maps: k -> (H, W) bool,
        True where the voxel is excluded as easy.  class_names: one per label value, background first.
        aspect: pixel height / width (from the spacing).  losses: optional k -> TopK-Dice loss of the slice,
        or of the whole case where ``loss_of`` is ``"volume"`` (the titles say which; their counts are the slice's).
    Returns:
        ``out_png``.
    """
    cmap = label_colours(len(class_names))
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0, 1)
    scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)
    panels = _Slice(scaled, label, maps, cmap, aspect, losses or {}, loss_of)
    ks = list(maps)
    fig, axes = _one_k_figure(panels, ks[0]) if len(ks) == 1 else _several_k_figure(panels, ks)
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
    handles = _legend_handles(cmap, class_names)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), frameon=False)
    if title:
        fig.suptitle(title)
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
