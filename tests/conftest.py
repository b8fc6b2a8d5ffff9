"""Fixtures shared by several test files (pytest finds them by name; no import needed)."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from compare_sweep import CompareData, Sweep, make_compare_data, run_sweep
from nnunet_e2e import BIN, DATASET_ID, TinyDataset, make_dataset, run

from nnunet_topkdice.pipeline.state import NNUNET_FOLDER_VARIABLES

# ---- conversion and ignore-map tests ----------------------------------------------------------------


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    """The folder of this Python's console scripts (``topkdice``, ``nnUNetv2_*``), as a user's PATH has it."""
    return Path(sys.executable).parent


@pytest.fixture
def sigint_default() -> Iterator[None]:
    """SIGINT handled by Python's default handler during the test, for tests that send it to this process or
    to commands they start. A shell without job control starts a background command with SIGINT ignored
    (POSIX), Python then leaves it ignored, and the commands it starts inherit that: a suite run as
    ``pytest ... &`` from a script would otherwise see no Ctrl-C anywhere."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def nnunet_env(tmp_path: Path) -> dict[str, str]:
    """The environment with nnU-Net's three folders under ``tmp_path`` (``raw``, ``preprocessed``,
    ``results``, not created) and without ``nnUNet_n_proc_DA``, which breaks ``nnUNetv2_plan_and_preprocess``."""
    env = dict(os.environ)
    env.pop("nnUNet_n_proc_DA", None)
    for name in ("raw", "preprocessed", "results"):
        env[f"nnUNet_{name}"] = str(tmp_path / name)
    return env


def _true_class_probabilities(label: np.ndarray, true_prob: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """(C, *spatial) float32: the true class of each voxel gets ``true_prob``, the others share the rest."""
    probs = np.repeat(((1 - true_prob) / (n_classes - 1))[None], n_classes, axis=0)
    for c in range(n_classes):
        probs[c][label == c] = true_prob[label == c]
    return probs.astype(np.float32)


@pytest.fixture(scope="session")
def true_class_probabilities() -> Callable[..., np.ndarray]:
    """``f(label, true_prob, n_classes=3)``: softmax-like probabilities with a chosen true-class value."""
    return _true_class_probabilities


def _write_image(path: Path, array: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 2.0)) -> Path:
    """Write ``array`` (numpy z, y, x order) as an image with the given spacing (x, y, z); returns ``path``."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="session")
def write_image() -> Callable[..., Path]:
    """``f(path, array, spacing=(1, 1, 2)) -> path``: write a numpy (z, y, x) array as an image file."""
    return _write_image


@pytest.fixture
def ignore_map_case(tmp_path: Path) -> dict:
    """A (2, 8, 8) case for ``show-ignore-map``: class 1 in both slices (bigger in slice 1), class 2 in
    slice 1 only, probabilities in ``case.npz`` and label names in the dataset.json beside it.

    Returns ``{"root", "image", "label", "npz"}`` (paths; the folder is ``tmp_path``).
    """
    label = np.zeros((2, 8, 8), dtype=np.uint8)
    label[0, 2:4, 2:4] = 1  # 4 voxels
    label[1, 1:5, 1:6] = 1  # 20 voxels
    label[1, 6:8, 2:7] = 2  # 10 voxels
    rng = np.random.default_rng(0)
    true_prob = rng.uniform(0.3, 0.99, label.shape)
    np.savez_compressed(tmp_path / "case.npz", probabilities=_true_class_probabilities(label, true_prob))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1, "tumour": 2}}))
    image = (label * 50 + rng.normal(0, 5, label.shape)).astype(np.float32)
    return {
        "root": tmp_path,
        "image": _write_image(tmp_path / "case_0000.nii.gz", image),
        "label": _write_image(tmp_path / "case.nii.gz", label),
        "npz": tmp_path / "case.npz",
    }


# ---- end of the conversion and ignore-map block -----------------------------------------------------


# ---- nnU-Net end to end (trainers, seeded training) ---------------------------------------------------


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """The tiny 2D dataset of ``nnunet_e2e.make_dataset`` (12 training, 4 test cases), planned and
    preprocessed for ``2d`` once per test session; the tests only read it."""
    base = tmp_path_factory.mktemp("tiny_nnunet")
    dataset = TinyDataset(base / "raw", base / "preprocessed", make_dataset(base / "raw"), DATASET_ID)
    # no nnUNet_n_proc_DA here: 0 breaks planning
    env = dataset.environment(base / "unused_results")
    run([BIN / "nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", "1", "-npfp", "1"], env)
    return dataset


# ---- topkdice compare end to end (tests/compare_sweep.py) ---------------------------------------------


@pytest.fixture(scope="session")
def compare_data(tmp_path_factory: pytest.TempPathFactory) -> CompareData:
    """The tiny 3D dataset and the user's two trainers of the compare sweeps (both configurations use them)."""
    return make_compare_data(tmp_path_factory.mktemp("compare"))


@pytest.fixture(scope="session")
def compare_sweep_2d(compare_data: CompareData) -> Sweep:
    """The compare sweep in 2d, its folds from ``splits_final.json`` (no ``--folds``), one training killed
    and resumed, then ``--test-set`` (fold ``all`` of each trainer and seed): run once per session for
    ``tests/test_pipeline_e2e.py`` and ``tests/test_pipeline_predict.py``."""
    return run_sweep(compare_data, "2d", None, kill_one=True, with_test_set=True)


@pytest.fixture(scope="session")
def compare_sweep_3d_fullres(compare_data: CompareData) -> Sweep:
    """The compare sweep in 3d_fullres with ``--folds 0``: no training killed, no test set."""
    return run_sweep(compare_data, "3d_fullres", ("0",), kill_one=False, with_test_set=False)


@pytest.fixture
def a_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """nnU-Net's three folders under ``tmp_path`` (returned; also a work directory) with a ``dataset.json``
    for ``Dataset004_Hippo`` in the raw one: what ``compare -d 4`` needs to plan, nothing to train on."""
    raw = tmp_path / "raw" / "Dataset004_Hippo"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "numTraining": 4, "labels": {}}))
    for name in NNUNET_FOLDER_VARIABLES:
        monkeypatch.setenv(name, str(tmp_path / name.removeprefix("nnUNet_")))
    return tmp_path


# --- loss inputs (tests/test_losses_*.py) -------------------------------------------------------------


def _random_case(shape, seed=0, scale=3.0, all_present=True):
    """Logits ``shape`` (B, C, *spatial), ``randn * scale``, and a (B, 1, *spatial) int64 label map;
    with ``all_present`` every class occurs in every image (the first C voxels hold 0 .. C-1)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * scale
    target = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=generator)
    if all_present:
        flat = target.view(shape[0], -1)
        flat[:, : shape[1]] = torch.arange(shape[1])
    return logits, target


@pytest.fixture
def random_case():
    """``random_case(shape, seed=0, scale=3.0, all_present=True) -> (logits, target)``."""
    return _random_case


@pytest.fixture(params=["sort", "numpy", "histogram", "histogram+radix"])
def selection_path(request, monkeypatch):
    """Force one path of ``nnunet_topkdice.losses.selection`` on any input (the CPU would pick one by size);
    ``histogram+radix`` also sends every cut bucket through the radix refinement (tiny thresholds)."""
    from nnunet_topkdice.losses import selection

    path = request.param
    monkeypatch.setattr(selection, "FORCE_PATH", path.split("+")[0])
    if path == "histogram+radix":
        monkeypatch.setattr(selection, "SORT_CANDIDATES_AT_MOST", 4)
        monkeypatch.setattr(selection, "_MIN_BUCKET_BITS", 2)
    return path


@pytest.fixture
def no_host_sync():
    """``with no_host_sync(): ...`` fails on any device-to-host synchronisation inside (CUDA tests only):
    ``torch.cuda.set_sync_debug_mode("error")`` after a synchronize, reset to "default" however it ends."""

    @contextmanager
    def guard():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    return guard


# --- end of loss inputs ---------------------------------------------------------------------------------
