"""The paper's ignore map (Figure 1) and its dependence on k (Figure 2) for one case and slice.

The excluded ("easy") voxels come from the loss library's own selection,
:func:`nnunet_topkdice.losses.topk_exclusion_mask`, so the picture shows exactly what
``TopKDiceLoss`` leaves out. :func:`show_ignore_map` runs four steps, each a function of its own:
check the request (:func:`check_request`), load the case
(:func:`nnunet_topkdice.evaluation.ignore_map_io.load_case`: probabilities from a ``.npz`` written by
``nnUNetv2_predict --save_probabilities`` or predicted from a trained model folder), compute the maps
and counts (:func:`compute_ignore_maps`), and draw them
(:func:`nnunet_topkdice.evaluation.ignore_map_plot.plot_ignore_maps`).

Note: in training the selection runs on preprocessed patches (resampled to the plans' spacing); here
it runs on the case in its original geometry, one slice (``scope="slice"``, like a 2d configuration)
or the whole volume (``scope="volume"``, like a 3d patch covering the case).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.input_checks import check_output_folder

__all__ = [
    "check_request",
    "compute_ignore_map",
    "compute_ignore_maps",
    "pick_slice",
    "show_ignore_map",
    "topk_dice_loss_value",
]

SCOPES = ("slice", "volume")


def compute_ignore_map(
    probabilities: np.ndarray, label: np.ndarray, k: float, *, ignore_label: int | None = None
) -> np.ndarray:
    """Foreground voxels excluded as easy for their own class (the paper's ignore map, eq. 4).

    Calls :func:`nnunet_topkdice.losses.topk_exclusion_mask` on one image (batch of 1).

    Shape:
        probabilities: (C, *spatial) float, softmax output.  label: (*spatial) int in [0, C) (or the
        ignore label, which takes part in nothing).  returns: (*spatial) bool.
    Raises:
        ValueError: ``k`` not in (0, 100]; shapes that do not fit.
    """
    import torch

    from nnunet_topkdice.losses import TopKDiceOptions, topk_exclusion_mask

    label = np.asarray(label)
    if probabilities.shape[1:] != label.shape:
        raise ValueError(f"probabilities {probabilities.shape} do not fit the label map {label.shape}")
    valid = np.ones(label.shape, dtype=bool) if ignore_label is None else label != ignore_label
    target = torch.from_numpy(np.where(valid, label, 0).astype(np.int64))[None, None]
    probs = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32))[None]
    loss_mask = None if ignore_label is None else torch.from_numpy(valid)[None, None]
    excluded = topk_exclusion_mask(probs, target, loss_mask=loss_mask, options=TopKDiceOptions(k=k))
    return excluded[0, 0].numpy().astype(bool)


def topk_dice_loss_value(
    probabilities: np.ndarray,
    label: np.ndarray,
    excluded: np.ndarray,
    *,
    ignore_label: int | None = None,
    smooth: float = 1e-5,
) -> float:
    """The TopK-Dice loss (eq. 7) of one image given its ignore map: ``1 - mean`` squared Dice over the
    foreground classes present, with the excluded voxels removed from their own class in Y and P.

    Computed by the loss's definition, :func:`nnunet_topkdice.losses.reference.kept_dice_loss`.

    Shape:
        probabilities: (C, *spatial) float.  label: (*spatial) int.  excluded: (*spatial) bool.
        returns: float in [0, 1]; 0 when no foreground class is present.
    """
    import torch

    from nnunet_topkdice.losses import TopKDiceOptions
    from nnunet_topkdice.losses.reference import kept_dice_loss

    label = np.asarray(label)
    valid = np.ones(label.shape, dtype=bool) if ignore_label is None else label != ignore_label
    target = torch.from_numpy(np.where(valid, label, 0).astype(np.int64))[None, None]
    probs = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32))[None]
    loss_mask = None if ignore_label is None else torch.from_numpy(valid)[None, None]
    excluded_map = torch.from_numpy(np.asarray(excluded, dtype=bool))[None, None]
    return float(kept_dice_loss(probs, target, excluded_map, loss_mask, options=TopKDiceOptions(smooth=smooth)))


def pick_slice(label: np.ndarray, axis: int) -> int:
    """Index of the slice along ``axis`` with the most foreground voxels (the first of ties; the
    middle slice when the label map is empty).

    Shape:
        label: (*spatial) int.
    """
    other = tuple(a for a in range(label.ndim) if a != axis)
    counts = np.count_nonzero(label > 0, axis=other)
    return int(np.argmax(counts)) if counts.any() else label.shape[axis] // 2


def check_request(
    ks: Sequence[float],
    image_files: Sequence[Path],
    *,
    channel: int,
    axis: int,
    scope: str,
    n_sources: int,
) -> list[float]:
    """Check the arguments that need no file; returns the distinct k as floats, in the order given.

    Raises:
        InputError: not exactly one probability source, an unknown scope, no k or a k outside (0, 100],
            no image file, a channel without a file, an axis other than 0, 1, 2.
    """
    if n_sources != 1:
        raise InputError("give exactly one source of probabilities: a probability file or a model folder")
    if scope not in SCOPES:
        raise InputError(f"scope must be one of {SCOPES}, got {scope!r}")
    distinct = list(dict.fromkeys(float(k) for k in ks))
    if not distinct:
        raise InputError("give at least one k")
    for k in distinct:
        if not 0 < k <= 100:
            raise InputError(f"k must be in (0, 100] (percent of foreground voxels kept), got {k:g}")
    if not image_files:
        raise InputError("give at least one image file")
    if not 0 <= channel < len(image_files):
        raise InputError(f"channel {channel} does not exist; {len(image_files)} image file(s) given")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}")
    return distinct


@dataclass(frozen=True)
class IgnoreMaps:
    """The ignore maps of one slice and the counts behind them.

    Attributes:
        slice_index, axis: the slice shown.
        maps: k -> (H, W) bool ignore map of the slice (True = excluded as easy).
        summary: k -> ``{"n_foreground": {class: n}, "n_excluded": {class: n}, "loss": float}``, counted
            over the selection scope (the slice, or the whole volume).
    """

    slice_index: int
    axis: int
    maps: dict[float, np.ndarray]
    summary: dict[float, dict]


def compute_ignore_maps(
    probabilities: np.ndarray,
    label: np.ndarray,
    ks: Sequence[float],
    class_names: Sequence[str],
    *,
    axis: int = 0,
    slice_index: int | None = None,
    scope: str = "slice",
    ignore_label: int | None = None,
) -> IgnoreMaps:
    """The ignore map of one slice for every k, selected within the slice or the whole volume.

    Shape:
        probabilities: (C, Z, Y, X) float.  label: (Z, Y, X) int in [0, C) or the ignore label.
    Args:
        slice_index: along ``axis``; None takes :func:`pick_slice` of the label (ignore label as background).
    Raises:
        InputError: ``slice_index`` outside the volume.
    """
    background_ignored = label if ignore_label is None else np.where(label == ignore_label, 0, label)
    if slice_index is None:
        slice_index = pick_slice(background_ignored, axis)
    if not 0 <= slice_index < label.shape[axis]:
        raise InputError(f"slice {slice_index} is outside 0..{label.shape[axis] - 1} along axis {axis}")

    def take(array: np.ndarray, offset: int = 0) -> np.ndarray:
        return np.take(array, slice_index, axis=axis + offset)

    if scope == "slice":
        probs_sel, label_sel = take(probabilities, 1), take(label)
    else:
        probs_sel, label_sel = probabilities, label
    maps, summary = {}, {}
    for k in ks:
        excluded = compute_ignore_map(probs_sel, label_sel, k, ignore_label=ignore_label)
        maps[k] = excluded if scope == "slice" else take(excluded)
        summary[k] = {
            "n_foreground": {
                class_names[c]: int(np.count_nonzero(label_sel == c)) for c in range(1, len(class_names))
            },
            "n_excluded": {
                class_names[c]: int(np.count_nonzero(excluded & (label_sel == c)))
                for c in range(1, len(class_names))
            },
            "loss": topk_dice_loss_value(probs_sel, label_sel, excluded, ignore_label=ignore_label),
        }
    return IgnoreMaps(slice_index, axis, maps, summary)


def check_picture_path(out_png: Path) -> Path:
    """Check, writing nothing, that the picture can be written: not a folder, and its folder exists or can be
    created (it is created only when the picture is written). Returns ``out_png`` as a Path.

    Raises:
        InputError: ``out_png`` is a folder, or its folder is a file or not writable.
    """
    out_png = Path(out_png)
    if out_png.is_dir():
        raise InputError(f"-o {out_png} is a folder; expected the file name of the picture, e.g. {out_png}/map.png")
    check_output_folder(out_png.parent, f"-o {out_png}: the picture's folder")
    return out_png


def show_ignore_map(
    image_files: Sequence[Path],
    label_file: Path,
    out_png: Path,
    *,
    ks: Sequence[float] = (50.0,),
    probabilities_file: Path | None = None,
    model_dir: Path | None = None,
    slice_index: int | None = None,
    axis: int = 0,
    scope: str = "slice",
    channel: int = 0,
    dataset: Path | Mapping | int | str | None = None,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "checkpoint_final.pth",
    device: str = "cpu",
    use_mirroring: bool = True,
) -> dict:
    """Draw the ignore map and modified ground truth of one case and slice for one or several k.

    Args:
        image_files: the case's image file(s); ``image_files[channel]`` is displayed.
        label_file: its ground-truth label file.
        out_png: the picture to write.
        ks: percent of foreground voxels kept; one k gives the paper's Figure 1 layout, several the
            Figure 2 idea (one column per k).
        probabilities_file / model_dir: exactly one source of probabilities (see module docstring).
        slice_index, axis: the slice shown (array axis; 0 is z for SimpleITK volumes); default
            :func:`pick_slice`.
        scope: ``slice`` selects within the 2-D slice, ``volume`` within the whole case.
        dataset: dataset.json (path/id/name/dict) for the label names; default the dataset.json beside
            the probability file or in the model folder.
    Returns:
        ``{"slice", "axis", "scope", "png", "classes", "k": {k: {"n_foreground", "n_excluded": {class: n},
        "loss"}}}`` with counts over the selection scope.
    Raises:
        InputError: bad arguments, missing or mismatching files, labels outside the probability channels.
    """
    from nnunet_topkdice.evaluation.ignore_map_io import ProbabilitySource, load_case
    from nnunet_topkdice.evaluation.ignore_map_plot import plot_ignore_maps

    image_files = [Path(f) for f in image_files]
    n_sources = (probabilities_file is not None) + (model_dir is not None)
    ks = check_request(ks, image_files, channel=channel, axis=axis, scope=scope, n_sources=n_sources)
    out_png = check_picture_path(out_png)
    source = ProbabilitySource(probabilities_file, model_dir, folds, checkpoint, device, use_mirroring)
    case = load_case(image_files[channel], Path(label_file), source, model_inputs=image_files, dataset=dataset)
    result = compute_ignore_maps(
        case.probabilities, case.label, ks, case.class_names,
        axis=axis, slice_index=slice_index, scope=scope, ignore_label=case.ignore_label,
    )  # fmt: skip
    label_2d = np.take(case.label, result.slice_index, axis=axis)
    if case.ignore_label is not None:
        label_2d = np.where(label_2d == case.ignore_label, 0, label_2d)
    rows, cols = [a for a in range(3) if a != axis]
    out_png.parent.mkdir(parents=True, exist_ok=True)  # like nnU-Net's output folders; checked above
    plot_ignore_maps(
        np.take(case.image, result.slice_index, axis=axis),
        label_2d,
        result.maps,
        Path(out_png),
        class_names=case.class_names,
        aspect=case.spacing[rows] / case.spacing[cols],
        losses={k: v["loss"] for k, v in result.summary.items()},
        loss_of=scope,
        title=f"TopK-Dice ignore map: {Path(label_file).name}, slice {result.slice_index} (axis {axis}), "
        f"selection per {scope}",
    )
    return {
        "slice": result.slice_index,
        "axis": axis,
        "scope": scope,
        "png": str(out_png),
        "classes": case.class_names,
        "k": result.summary,
    }
