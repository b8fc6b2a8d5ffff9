"""The paper's ignore map (Figure 1) and its dependence on k (Figure 2) for one case and slice.

The excluded ("easy") voxels come from the loss library's own selection,
:func:`nnunet_topkdice.losses.topk_exclusion_mask`, so the picture shows exactly what
``TopKDiceLoss`` leaves out. Probabilities come from a ``.npz`` written by
``nnUNetv2_predict --save_probabilities`` or are predicted here from a trained model folder with
nnU-Net's ``nnUNetPredictor``.

Note: in training the selection runs on preprocessed patches (resampled to the plans' spacing); here
it runs on the case in its original geometry, one slice (``scope="slice"``, like a 2d configuration)
or the whole volume (``scope="volume"``, like a 3d patch covering the case).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_topkdice.errors import InputError

__all__ = [
    "compute_ignore_map",
    "load_probabilities",
    "pick_slice",
    "predict_probabilities",
    "show_ignore_map",
    "topk_dice_loss_value",
]

SCOPES = ("slice", "volume")


def load_probabilities(path: Path) -> np.ndarray:
    """Read the ``probabilities`` array of an ``nnUNetv2_predict --save_probabilities`` ``.npz``.

    Shape:
        returns: (C, *spatial) float32, in SimpleITK's array order (z, y, x) like the label files.
    Raises:
        InputError: missing file, not an npz, no ``probabilities`` key, fewer than 2 dimensions.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"probability file not found: {path}")
    try:
        with np.load(path) as npz:
            if "probabilities" not in npz.files:
                raise InputError(f"{path} has no 'probabilities' array (keys: {npz.files})")
            probabilities = npz["probabilities"]
    except (OSError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"cannot read {path} as an .npz file: {e}") from e
    if probabilities.ndim < 3:
        raise InputError(f"{path}: probabilities must have shape (C, *spatial), got {probabilities.shape}")
    return probabilities.astype(np.float32, copy=False)


def _read_image(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Any SimpleITK-readable image as float32 (multi-component pixels averaged), spacing in array order."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"cannot read {path}: {str(e).strip().splitlines()[-1]}") from e
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = array.mean(-1)
    return array, tuple(float(s) for s in reversed(image.GetSpacing()))


def _as_3d(array: np.ndarray, spacing: tuple[float, ...], what: str) -> tuple[np.ndarray, tuple[float, ...]]:
    if array.ndim == 2:  # a 2-D image is one slice of thickness 1, as nnU-Net's 2-D readers do
        return array[None], (1.0, *spacing)
    if array.ndim != 3:
        raise InputError(f"{what} must be 2-D or 3-D, got shape {array.shape}")
    return array, spacing


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

    from nnunet_topkdice.losses import topk_exclusion_mask

    label = np.asarray(label)
    if probabilities.shape[1:] != label.shape:
        raise ValueError(f"probabilities {probabilities.shape} do not fit the label map {label.shape}")
    valid = np.ones(label.shape, dtype=bool) if ignore_label is None else label != ignore_label
    target = torch.from_numpy(np.where(valid, label, 0).astype(np.int64))[None, None]
    probs = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32))[None]
    loss_mask = None if ignore_label is None else torch.from_numpy(valid)[None, None]
    excluded = topk_exclusion_mask(probs, target, k, loss_mask)
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

    from nnunet_topkdice.losses.reference import kept_dice_loss

    label = np.asarray(label)
    valid = np.ones(label.shape, dtype=bool) if ignore_label is None else label != ignore_label
    target = torch.from_numpy(np.where(valid, label, 0).astype(np.int64))[None, None]
    probs = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32))[None]
    loss_mask = None if ignore_label is None else torch.from_numpy(valid)[None, None]
    excluded_map = torch.from_numpy(np.asarray(excluded, dtype=bool))[None, None]
    return float(kept_dice_loss(probs, target, excluded_map, loss_mask, smooth=smooth))


def pick_slice(label: np.ndarray, axis: int) -> int:
    """Index of the slice along ``axis`` with the most foreground voxels (the first of ties; the
    middle slice when the label map is empty).

    Shape:
        label: (*spatial) int.
    """
    other = tuple(a for a in range(label.ndim) if a != axis)
    counts = np.count_nonzero(label > 0, axis=other)
    return int(np.argmax(counts)) if counts.any() else label.shape[axis] // 2


@contextlib.contextmanager
def _ext_trainer_path() -> Iterator[None]:
    """Make nnU-Net find this package's trainers for the duration of the block (nnUNet_extTrainer)."""
    from nnunet_topkdice.ext import EXT_TRAINER_VARIABLE, environment_with_trainers

    previous = os.environ.get(EXT_TRAINER_VARIABLE)
    os.environ[EXT_TRAINER_VARIABLE] = environment_with_trainers()[EXT_TRAINER_VARIABLE]
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(EXT_TRAINER_VARIABLE, None)
        else:
            os.environ[EXT_TRAINER_VARIABLE] = previous


def _channel_files(image_files: Sequence[Path], n_channels: int, file_ending: str) -> list[Path]:
    """The model's input files; a single ``<case>_0000`` file brings its sibling channels along."""
    files = [Path(f) for f in image_files]
    if len(files) == 1 and n_channels > 1 and files[0].name.endswith(f"_0000{file_ending}"):
        stem = files[0].name.removesuffix(f"_0000{file_ending}")
        files = [files[0].with_name(f"{stem}_{i:04d}{file_ending}") for i in range(n_channels)]
    if len(files) != n_channels:
        raise InputError(
            f"the model expects {n_channels} input channel file(s), got {len(files)}: {image_files}"
        )
    for f in files:
        if not f.is_file():
            raise InputError(f"image file not found: {f}")
    return files


def predict_probabilities(
    model_dir: Path,
    image_files: Sequence[Path],
    *,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "checkpoint_final.pth",
    device: str = "cpu",
    use_mirroring: bool = True,
) -> tuple[np.ndarray, dict]:
    """Predict softmax probabilities for one case with a trained nnU-Net model folder.

    Args:
        model_dir: ``$nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``.
        image_files: the case's channel files (``_0000``, ``_0001``, ...); one ``_0000`` file is enough
            when its siblings lie beside it.
        folds: folds to ensemble; None uses every fold that has ``checkpoint`` (as nnU-Net does).
    Returns:
        ``(probabilities, dataset_json)``; probabilities (C, *spatial) float32 in the image's geometry and
        SimpleITK array order.
    Raises:
        InputError: missing model files or checkpoint, wrong number of channels, a region-based model.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    model_dir = Path(model_dir)
    for name in ("dataset.json", "plans.json"):
        if not (model_dir / name).is_file():
            raise InputError(f"{model_dir} is not an nnU-Net model folder: {name} is missing")
    if folds is not None:
        for fold in folds:
            if not (model_dir / f"fold_{fold}" / checkpoint).is_file():
                raise InputError(f"checkpoint not found: {model_dir / f'fold_{fold}' / checkpoint}")
    elif not any(model_dir.glob(f"fold_*/{checkpoint}")):
        raise InputError(f"no fold of {model_dir} has {checkpoint}")
    # nnU-Net's predictor talks on stdout; keep stdout for this command's results
    with contextlib.redirect_stdout(sys.stderr), _ext_trainer_path():
        predictor = nnUNetPredictor(
            use_mirroring=use_mirroring,
            device=torch.device(device),
            perform_everything_on_device=device != "cpu",
        )
        predictor.initialize_from_trained_model_folder(
            str(model_dir), tuple(folds) if folds is not None else None, checkpoint_name=checkpoint
        )
        if predictor.label_manager.has_regions:
            raise InputError(
                f"{model_dir} is a region-based (sigmoid) model; the ignore map needs softmax classes"
            )
        dataset_json = predictor.dataset_json
        channels = dataset_json.get("channel_names", dataset_json.get("modality", {}))
        files = _channel_files(image_files, len(channels), dataset_json.get("file_ending", ".nii.gz"))
        reader = predictor.plans_manager.image_reader_writer_class()
        data, properties = reader.read_images([str(f) for f in files])
        _, probabilities = predictor.predict_single_npy_array(data, properties, None, None, True)
    return np.asarray(probabilities, dtype=np.float32), dataset_json


def _class_names(n_classes: int, dataset_json: Mapping[str, Any] | None) -> list[str]:
    names = ["background"] + [f"label {i}" for i in range(1, n_classes)]
    for name, value in (dataset_json or {}).get("labels", {}).items():
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_classes:
            names[value] = name
    return names


def _find_dataset_json(dataset: Path | Mapping | int | str | None, *candidates: Path | None) -> dict | None:
    if isinstance(dataset, Mapping):
        return dict(dataset)
    if dataset is not None:
        from nnunet_topkdice.evaluation.evaluate import resolve_dataset

        info = resolve_dataset(dataset)
        with open(info.json_path) as f:
            return json.load(f)
    for folder in candidates:
        if folder is not None and (folder / "dataset.json").is_file():
            with open(folder / "dataset.json") as f:
                return json.load(f)
    return None


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
        slice_index, axis: the slice shown (array axis; 0 is z for SimpleITK volumes); default the slice
            with the most foreground.
        scope: ``slice`` selects within the 2-D slice, ``volume`` within the whole case.
        dataset: dataset.json (path/id/name/dict) for the label names; default the dataset.json beside
            the probability file or in the model folder.
    Returns:
        ``{"slice", "axis", "scope", "png", "classes", "k": {k: {"n_foreground", "n_excluded": {class: n},
        "loss"}}}`` with counts over the selection scope.
    Raises:
        InputError: bad arguments, missing or mismatching files, labels outside the probability channels.
    """
    from nnunet_topkdice.evaluation.evaluate import read_label_file
    from nnunet_topkdice.evaluation.plots import plot_ignore_maps

    if (probabilities_file is None) == (model_dir is None):
        raise InputError("give exactly one source of probabilities: a probability file or a model folder")
    if scope not in SCOPES:
        raise InputError(f"scope must be one of {SCOPES}, got {scope!r}")
    ks = list(dict.fromkeys(float(k) for k in ks))
    if not ks:
        raise InputError("give at least one k")
    for k in ks:
        if not 0 < k <= 100:
            raise InputError(f"k must be in (0, 100] (percent of foreground voxels kept), got {k:g}")
    image_files = [Path(f) for f in image_files]
    if not image_files:
        raise InputError("give at least one image file")
    if not 0 <= channel < len(image_files):
        raise InputError(f"channel {channel} does not exist; {len(image_files)} image file(s) given")
    if not Path(label_file).is_file():
        raise InputError(f"label file not found: {label_file}")

    label, spacing = _as_3d(*read_label_file(Path(label_file)), what=f"label {label_file}")
    image, _ = _as_3d(*_read_image(image_files[channel]), what=f"image {image_files[channel]}")
    if image.shape != label.shape:
        raise InputError(
            f"image {image_files[channel]} has shape {image.shape}, label {label_file} has {label.shape}"
        )

    if probabilities_file is not None:
        probabilities = load_probabilities(Path(probabilities_file))
        model_json = None
        json_folders = (Path(probabilities_file).parent,)
    else:
        probabilities, model_json = predict_probabilities(
            Path(model_dir),
            image_files,
            folds=folds,
            checkpoint=checkpoint,
            device=device,
            use_mirroring=use_mirroring,
        )
        json_folders = (Path(model_dir),)
    if probabilities.ndim == 3:
        probabilities = probabilities[:, None]
    if probabilities.shape[1:] != label.shape:
        raise InputError(
            f"probabilities have spatial shape {probabilities.shape[1:]}, "
            f"label {label_file} has {label.shape}"
        )
    dataset_json = (
        model_json
        if model_json is not None and dataset is None
        else _find_dataset_json(dataset, *json_folders)
    )
    ignore_label = (dataset_json or {}).get("labels", {}).get("ignore")
    n_classes = probabilities.shape[0]
    bad = sorted(set(np.unique(label).tolist()) - set(range(n_classes)) - {ignore_label})
    if bad:
        raise InputError(
            f"{label_file} has label value(s) {bad} outside the {n_classes} probability channels"
        )

    if not 0 <= axis < 3:
        raise InputError(f"axis must be 0, 1 or 2, got {axis}")
    if slice_index is None:
        slice_index = pick_slice(
            np.where(label == ignore_label, 0, label) if ignore_label is not None else label, axis
        )
    if not 0 <= slice_index < label.shape[axis]:
        raise InputError(f"slice {slice_index} is outside 0..{label.shape[axis] - 1} along axis {axis}")

    def take(array: np.ndarray, offset: int = 0) -> np.ndarray:
        return np.take(array, slice_index, axis=axis + offset)

    label_2d, image_2d = take(label), take(image)
    names = _class_names(n_classes, dataset_json)
    maps: dict[float, np.ndarray] = {}
    summary_k: dict[float, dict] = {}
    for k in ks:
        if scope == "slice":
            probs_sel, label_sel = take(probabilities, 1), label_2d
            excluded = compute_ignore_map(probs_sel, label_sel, k, ignore_label=ignore_label)
            maps[k] = excluded
        else:
            probs_sel, label_sel = probabilities, label
            excluded = compute_ignore_map(probs_sel, label_sel, k, ignore_label=ignore_label)
            maps[k] = take(excluded)
        summary_k[k] = {
            "n_foreground": {names[c]: int(np.count_nonzero(label_sel == c)) for c in range(1, n_classes)},
            "n_excluded": {
                names[c]: int(np.count_nonzero(excluded & (label_sel == c))) for c in range(1, n_classes)
            },
            "loss": topk_dice_loss_value(probs_sel, label_sel, excluded, ignore_label=ignore_label),
        }
    display_label = np.where(label_2d == ignore_label, 0, label_2d) if ignore_label is not None else label_2d
    rows, cols = [a for a in range(3) if a != axis]
    case = Path(label_file).name
    plot_ignore_maps(
        image_2d,
        display_label,
        maps,
        Path(out_png),
        class_names=names,
        aspect=spacing[rows] / spacing[cols],
        losses={k: v["loss"] for k, v in summary_k.items()},
        title=f"TopK-Dice ignore map: {case}, slice {slice_index} (axis {axis}), selection per {scope}",
    )
    return {
        "slice": slice_index,
        "axis": axis,
        "scope": scope,
        "png": str(out_png),
        "classes": names,
        "k": summary_k,
    }
