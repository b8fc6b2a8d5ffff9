"""Loading one case for the ignore-map picture: image, label, probabilities and label names.

Probabilities come from a ``.npz`` written by ``nnUNetv2_predict --save_probabilities``
(:func:`load_probabilities`) or are predicted from a trained model folder with nnU-Net's
``nnUNetPredictor`` (:func:`predict_probabilities`). :func:`load_case` reads everything one picture needs
and checks that the pieces fit together. Arrays are in SimpleITK's array order (z, y, x), 2-D inputs
become one slice of a 3-D volume.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_topkdice.errors import InputError

__all__ = [
    "IgnoreMapCase",
    "ProbabilitySource",
    "class_names",
    "load_case",
    "load_probabilities",
    "predict_probabilities",
]


@dataclass(frozen=True)
class IgnoreMapCase:
    """One case, read and checked.

    Shape:
        image: (Z, Y, X) float32, the displayed channel.  label: (Z, Y, X) integer.
        probabilities: (C, Z, Y, X) float32.  spacing: (z, y, x) in mm.
    Attributes:
        class_names: one per probability channel, background first (from dataset.json, else ``label i``).
        ignore_label: dataset.json's ``ignore`` value, or None.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, ...]
    probabilities: np.ndarray
    class_names: list[str]
    ignore_label: int | None


@dataclass(frozen=True)
class ProbabilitySource:
    """Where a case's probabilities come from: exactly one of ``probabilities_file`` and ``model_dir``.

    Attributes:
        probabilities_file: ``<case>.npz`` of ``nnUNetv2_predict --save_probabilities``.
        model_dir, folds, checkpoint, device, use_mirroring: a trained model folder and how to predict
            with it (see :func:`predict_probabilities`).
    """

    probabilities_file: Path | None = None
    model_dir: Path | None = None
    folds: Sequence[int | str] | None = None
    checkpoint: str = "checkpoint_final.pth"
    device: str = "cpu"
    use_mirroring: bool = True


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


def _check_model_folder(model_dir: Path, folds: Sequence[int | str] | None, checkpoint: str) -> None:
    for name in ("dataset.json", "plans.json"):
        if not (model_dir / name).is_file():
            raise InputError(f"{model_dir} is not an nnU-Net model folder: {name} is missing")
    if folds is not None:
        for fold in folds:
            if not (model_dir / f"fold_{fold}" / checkpoint).is_file():
                raise InputError(f"checkpoint not found: {model_dir / f'fold_{fold}' / checkpoint}")
    elif not any(model_dir.glob(f"fold_*/{checkpoint}")):
        raise InputError(f"no fold of {model_dir} has {checkpoint}")


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

    from nnunet_topkdice.ext import trainers_on_search_path

    model_dir = Path(model_dir)
    _check_model_folder(model_dir, folds, checkpoint)
    # nnU-Net's predictor talks on stdout; keep stdout for this command's results
    with contextlib.redirect_stdout(sys.stderr), trainers_on_search_path():
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


def class_names(n_classes: int, dataset_json: Mapping[str, Any] | None) -> list[str]:
    """One name per label value ``0 .. n_classes - 1``: dataset.json's names, else ``label i``."""
    names = ["background"] + [f"label {i}" for i in range(1, n_classes)]
    for name, value in (dataset_json or {}).get("labels", {}).items():
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_classes:
            names[value] = name
    return names


#: how far from 1 the channels of a voxel may sum: nnU-Net may store the probabilities in float16
_SOFTMAX_SUM_TOLERANCE = 1e-2


def _check_softmax(probabilities: np.ndarray, where: Path | str | None) -> None:
    """Refuse probabilities that do not sum to 1 over their channels: a region-based (sigmoid) model's,
    whose channels are regions, not classes (found this way where no dataset.json says so).

    Shape: probabilities (C, *spatial).
    Raises:
        InputError: some voxel's channels sum further than :data:`_SOFTMAX_SUM_TOLERANCE` from 1.
    """
    sums = probabilities.sum(0, dtype=np.float64)
    if not np.allclose(sums, 1.0, rtol=0.0, atol=_SOFTMAX_SUM_TOLERANCE):
        raise InputError(
            f"{where}: the probabilities of a voxel sum to {sums.min():.3g} to {sums.max():.3g} over their "
            f"{probabilities.shape[0]} channels, not to 1: not softmax probabilities (a region-based, sigmoid, "
            "model's?); the ignore map needs softmax classes"
        )


def _find_dataset_json(dataset: Path | Mapping | int | str | None, *candidates: Path) -> dict | None:
    """``dataset`` (a dict, or a path/id/name resolved like ``topkdice evaluate -d``), else the first
    ``dataset.json`` in ``candidates``, else None."""
    if isinstance(dataset, Mapping):
        return dict(dataset)
    if dataset is not None:
        from nnunet_topkdice.evaluation.dataset import resolve_dataset

        with open(resolve_dataset(dataset).json_path) as f:
            return json.load(f)
    for folder in candidates:
        if (folder / "dataset.json").is_file():
            with open(folder / "dataset.json") as f:
                return json.load(f)
    return None


def load_case(
    image_file: Path,
    label_file: Path,
    source: ProbabilitySource,
    *,
    model_inputs: Sequence[Path] = (),
    dataset: Path | Mapping | int | str | None = None,
) -> IgnoreMapCase:
    """Read the displayed image, the label and the probabilities of one case.

    Args:
        image_file: the channel to display.  model_inputs: with a model folder, the files the model reads.
        dataset: dataset.json (path/id/name/dict) for the label names; default the dataset.json beside the
            probability file, or the model's.
    Raises:
        InputError: missing or unreadable files, shapes that differ, label values outside the channels, or
            probabilities of a region-based (sigmoid) model (its dataset.json says so, or the channels of a
            voxel do not sum to 1).
    """
    from nnunet_topkdice.evaluation.dataset import has_regions
    from nnunet_topkdice.evaluation.label_io import read_label_file

    if not Path(label_file).is_file():
        raise InputError(f"label file not found: {label_file}")
    label, spacing = _as_3d(*read_label_file(Path(label_file)), what=f"label {label_file}")
    image, _ = _as_3d(*_read_image(image_file), what=f"image {image_file}")
    if image.shape != label.shape:
        raise InputError(f"image {image_file} has shape {image.shape}, label {label_file} has {label.shape}")
    if source.probabilities_file is not None:
        probabilities = load_probabilities(Path(source.probabilities_file))
        dataset_json = _find_dataset_json(dataset, Path(source.probabilities_file).parent)
    else:
        probabilities, model_json = predict_probabilities(
            Path(source.model_dir), model_inputs, folds=source.folds, checkpoint=source.checkpoint,
            device=source.device, use_mirroring=source.use_mirroring,
        )  # fmt: skip
        dataset_json = model_json if dataset is None else _find_dataset_json(dataset)
    if probabilities.ndim == 3:
        probabilities = probabilities[:, None]
    if probabilities.shape[1:] != label.shape:
        raise InputError(
            f"probabilities have spatial shape {probabilities.shape[1:]}, label {label_file} has {label.shape}"
        )
    where = source.probabilities_file if source.probabilities_file is not None else source.model_dir
    if has_regions(dataset_json):
        raise InputError(f"{where}: its dataset.json defines regions: probabilities of a region-based (sigmoid) "
                         "model; the ignore map needs softmax classes")  # fmt: skip
    ignore_label = (dataset_json or {}).get("labels", {}).get("ignore")
    n_classes = probabilities.shape[0]
    bad = sorted(set(np.unique(label).tolist()) - set(range(n_classes)) - {ignore_label})
    if bad:
        raise InputError(f"{label_file} has label value(s) {bad} outside the {n_classes} probability channels")
    _check_softmax(probabilities, where)
    return IgnoreMapCase(image, label, spacing, probabilities, class_names(n_classes, dataset_json), ignore_label)
