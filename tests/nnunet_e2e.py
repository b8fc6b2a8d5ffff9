"""Shared pieces of the tests that run nnU-Net end to end: a tiny synthetic dataset and a command runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

BIN = Path(sys.executable).parent
DATASET_ID = 987
DATASET_NAME = f"Dataset{DATASET_ID}_TopKDiceE2E"


def _write_case(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    for array, path in ((image, image_path), (label, label_path)):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing((1.0, 1.0, 5.0))
        sitk.WriteImage(volume, str(path))


def make_dataset(raw: Path, n_train: int = 12, n_test: int = 4, seed: int = 0) -> Path:
    """1x32x32 images: a 10x10 square (label 1, brighter) and a 6x6 square (label 2, brightest) in noise."""
    root = raw / DATASET_NAME
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n_train + n_test):
        label = np.zeros((1, 32, 32), np.uint8)
        r, c = rng.integers(1, 14, 2)
        label[0, r : r + 10, c : c + 10] = 1
        r, c = rng.integers(17, 26, 2)
        label[0, r : r + 6, c : c + 6] = 2
        image = rng.normal(0.0, 0.3, label.shape).astype(np.float32) + label.astype(np.float32)
        split = "Tr" if i < n_train else "Ts"
        case = f"case{i:03d}"
        _write_case(
            image,
            label,
            root / f"images{split}" / f"{case}_0000.nii.gz",
            root / f"labels{split}" / f"{case}.nii.gz",
        )
    dataset_json = {
        "channel_names": {"0": "synthetic"},
        "labels": {"background": 0, "square": 1, "small_square": 2},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return root


def run(args: list, env: dict[str, str], expect: int = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command; assert its exit code (the output's tail goes into the failure message)."""
    proc = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect, (
        f"{args[0]} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@dataclass(frozen=True)
class TinyDataset:
    """The synthetic dataset of :func:`nnunet_e2e.make_dataset`, planned and preprocessed for ``2d``."""

    raw: Path
    preprocessed: Path
    root: Path  # nnUNet_raw/DatasetXXX_Name
    dataset_id: int

    def environment(self, results: Path) -> dict[str, str]:
        """``os.environ`` with the nnU-Net folders set, ``nnUNet_results=results`` and no DA worker count."""
        env = {
            **os.environ,
            "nnUNet_raw": str(self.raw),
            "nnUNet_preprocessed": str(self.preprocessed),
            "nnUNet_results": str(results),
            # nnU-Net runs 2 threads on a 2-core CPU; with other jobs on the cores, OpenMP's spin-waiting
            # threads make every step many times slower. Passive waiting costs nothing on an idle machine.
            "OMP_WAIT_POLICY": "PASSIVE",
            # nnU-Net's final validation and evaluation start 8 worker processes by default: 1 is plenty here
            "nnUNet_def_n_proc": "1",
        }
        env.pop("nnUNet_n_proc_DA", None)
        return env
