"""Shared pieces of the pipeline's end-to-end tests: a tiny 3D dataset, user trainers, a command runner.

The dataset is small enough for nnU-Net's 2d and 3d_fullres configurations to train in seconds on a
CPU; the trainers live in a user's own ``nnUNet_extTrainer`` folder (written by :func:`write_user_trainers`),
as a user's would, and run a tiny version of the demo schedule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from nnunet_e2e import BIN, run, run_together

__all__ = ["BIN", "CRASH_VAR", "TOPKDICE", "clean_environment", "make_tiny_dataset", "run", "run_together",
           "snapshot", "write_two_fold_split", "write_user_trainers"]  # fmt: skip

TOPKDICE = BIN / "topkdice"

#: Makes the user trainer stop (exit code 75) after its first epoch, once that epoch's checkpoint is
#: written, when its output folder contains the variable's value (like a job killed mid-training).
CRASH_VAR = "TOPKDICE_PIPELINE_TEST_CRASH_IN"

USER_TRAINERS = """
import os

from nnunet_topkdice.trainers import nnUNetTrainerDiceCEDemo, nnUNetTrainerTopKDiceDemo


class _Tiny:
    demo_num_epochs = 2
    demo_num_iterations_per_epoch = 1
    demo_num_val_iterations_per_epoch = 1


class _Recorded:
    # Records each epoch it starts, and can stop after the first one (see CRASH_VAR).
    def on_epoch_start(self):
        with open(os.path.join(self.output_folder, "epochs_started.txt"), "a") as f:
            f.write(f"{self.current_epoch}\\n")
        super().on_epoch_start()

    def on_epoch_end(self):
        super().on_epoch_end()  # saves checkpoint_latest.pth and advances current_epoch
        where = os.environ.get("CRASH_VAR")
        if where and where in self.output_folder and self.current_epoch == 1:
            raise SystemExit(75)


class FIRST_NAME(_Tiny, _Recorded, nnUNetTrainerDiceCEDemo):
    pass


class SECOND_NAME(_Tiny, _Recorded, nnUNetTrainerTopKDiceDemo):
    pass
"""


def write_user_trainers(folder: Path, first: str, second: str) -> Path:
    """A user's ``nnUNet_extTrainer`` folder with two tiny trainers (CE + Dice, CE + topK-Dice)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = USER_TRAINERS.replace("CRASH_VAR", CRASH_VAR).replace("FIRST_NAME", first).replace("SECOND_NAME", second)
    (folder / "my_pipeline_test_trainers.py").write_text(text)
    return folder


def make_tiny_dataset(raw: Path, dataset_id: int, *, n_train: int = 4, n_test: int = 2, seed: int = 0) -> Path:
    """6x16x16 volumes (z, y, x): a 6x6x6 cube (label 1, bright) and a 3x3x3 cube (label 2, brighter) in noise.

    ``splits_final.json`` is not written here; see :func:`write_two_fold_split`.
    """
    root = raw / f"Dataset{dataset_id:03d}_PipelineTest"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n_train + n_test):
        label = np.zeros((6, 16, 16), np.uint8)
        y, x = rng.integers(0, 4, 2)
        label[0:6, y : y + 6, x : x + 6] = 1
        y, x = rng.integers(10, 13, 2)
        label[2:5, y : y + 3, x : x + 3] = 2
        image = rng.normal(0.0, 0.3, label.shape).astype(np.float32) + label.astype(np.float32)
        split = "Tr" if i < n_train else "Ts"
        for array, path in (
            (image, root / f"images{split}" / f"case{i:03d}_0000.nii.gz"),
            (label, root / f"labels{split}" / f"case{i:03d}.nii.gz"),
        ):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing((1.0, 1.0, 1.5))
            sitk.WriteImage(volume, str(path))
    dataset_json = {
        "channel_names": {"0": "synthetic"},
        "labels": {"background": 0, "cube": 1, "small_cube": 2},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return root


def write_two_fold_split(preprocessed_dataset: Path, case_ids: list[str]) -> Path:
    """A ``splits_final.json`` of 2 folds whose validation sets together are every case."""
    half = len(case_ids) // 2
    folds = [(case_ids[half:], case_ids[:half]), (case_ids[:half], case_ids[half:])]
    preprocessed_dataset.mkdir(parents=True, exist_ok=True)
    path = preprocessed_dataset / "splits_final.json"
    path.write_text(json.dumps([{"train": list(tr), "val": list(val)} for tr, val in folds], indent=2))
    return path


def clean_environment(**extra: str) -> dict[str, str]:
    """The test's environment without nnU-Net's variables, single-threaded, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    # nnU-Net's export and evaluation start nnUNet_def_n_proc worker processes (8 by default): 1 is plenty.
    env.update(nnUNet_def_n_proc="1", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env.update(extra)
    return env


def snapshot(folder: Path) -> dict[str, float]:
    """Relative path -> modification time of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}
