"""Shared pieces of the tests that run nnU-Net's own commands end to end (through ``subprocess``, as a user)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

BIN = Path(sys.executable).parent
DATASET_ID = 987
DATASET_NAME = f"Dataset{DATASET_ID}_TopKDiceE2E"


def write_case(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    """One raw nnU-Net case (image ``_0000`` and label) as NIfTI, spacing 1 x 1 x 5."""
    for array, path in ((image, image_path), (label, label_path)):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing((1.0, 1.0, 5.0))
        sitk.WriteImage(volume, str(path))


def run(args: list, env: dict[str, str], expect: int = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command; fail the test with the tail of its output unless it exits ``expect``."""
    proc = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect, (
        f"{args[0]} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def run_together(
    commands: list[tuple[list, int]], env: dict[str, str], timeout: int = 600
) -> list[subprocess.CompletedProcess]:
    """Run independent commands at the same time (``(argv, expected exit code)`` each; a 2-core CPU runs two
    at once); fail the test with the tail of the output of any that exits otherwise. Results in order."""
    procs = []
    for args, _ in commands:
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # no pipe can fill and stall one
        procs.append((subprocess.Popen([str(a) for a in args], env=env, stdout=out, stderr=err, text=True), out, err))
    results = []
    for (args, expect), (proc, out, err) in zip(commands, procs, strict=True):
        proc.wait(timeout=timeout)
        with out, err:
            out.seek(0)
            err.seek(0)
            done = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
        assert done.returncode == expect, (
            f"{args[0]} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        results.append(done)
    return results


def nnunet_environment(raw: Path, preprocessed: Path, results: Path) -> dict[str, str]:
    """``os.environ`` with nnU-Net's three folders set, the settings below, and no ``nnUNet_n_proc_DA``."""
    env = {
        **os.environ,
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(preprocessed),
        "nnUNet_results": str(results),
        # nnU-Net runs 2 threads on a 2-core CPU; with other jobs on the cores, OpenMP's spin-waiting
        # threads make every step many times slower. Passive waiting costs nothing on an idle machine.
        "OMP_WAIT_POLICY": "PASSIVE",
        # nnU-Net's final validation and evaluation start 8 worker processes by default: 1 is plenty here
        "nnUNet_def_n_proc": "1",
    }
    env.pop("nnUNet_n_proc_DA", None)  # 0 breaks planning: training sets it
    return env


def nnunet_env(root: Path, test_ext_module: str, module_name: str) -> dict[str, str]:
    """The environment of the README's set-up under ``root`` (raw, preprocessed, results), whose
    ``nnUNet_extTrainer`` lists ``topkdice trainer-dir`` and a test-only folder holding ``test_ext_module``.

    Training needs ``env["nnUNet_n_proc_DA"] = "0"`` set after planning (0 breaks planning).
    """
    test_ext = root / "test_ext"
    test_ext.mkdir()
    (test_ext / f"{module_name}.py").write_text(textwrap.dedent(test_ext_module))
    trainer_dir = subprocess.run(
        [BIN / "topkdice", "trainer-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = nnunet_environment(root / "raw", root / "preprocessed", root / "results")
    env["nnUNet_extTrainer"] = os.pathsep.join([trainer_dir, str(test_ext)])
    return env


def write_dataset(
    root: Path,
    draw_label: Callable[[np.random.Generator], np.ndarray],
    labels: dict,
    *,
    n_train: int,
    n_test: int,
    seed: int,
    **dataset_json_extra: object,
) -> Path:
    """A raw nnU-Net dataset at ``root`` of synthetic one-channel cases ``case000``, ``case001``, ...

    Each label is ``draw_label(rng)`` and its image the label plus N(0, 0.3) noise, both from one
    ``np.random.default_rng(seed)``; the first ``n_train`` cases go to imagesTr/labelsTr, the others to
    imagesTs/labelsTs. ``dataset.json`` gets ``labels`` and ``dataset_json_extra`` (e.g. ``regions_class_order``).
    """
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n_train + n_test):
        label = draw_label(rng)
        image = rng.normal(0.0, 0.3, label.shape).astype(np.float32) + label.astype(np.float32)
        split = "Tr" if i < n_train else "Ts"
        case = f"case{i:03d}"
        write_case(
            image,
            label,
            root / f"images{split}" / f"{case}_0000.nii.gz",
            root / f"labels{split}" / f"{case}.nii.gz",
        )
    dataset_json = {
        "channel_names": {"0": "synthetic"},
        "labels": labels,
        **dataset_json_extra,
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return root


def make_dataset(raw: Path, n_train: int = 12, n_test: int = 4, seed: int = 0) -> Path:
    """1x32x32 images: a 10x10 square (label 1, brighter) and a 6x6 square (label 2, brightest) in noise."""

    def two_squares(rng: np.random.Generator) -> np.ndarray:
        label = np.zeros((1, 32, 32), np.uint8)
        r, c = rng.integers(1, 14, 2)
        label[0, r : r + 10, c : c + 10] = 1
        r, c = rng.integers(17, 26, 2)
        label[0, r : r + 6, c : c + 6] = 2
        return label

    labels = {"background": 0, "square": 1, "small_square": 2}
    return write_dataset(raw / DATASET_NAME, two_squares, labels, n_train=n_train, n_test=n_test, seed=seed)


@dataclass(frozen=True)
class TinyDataset:
    """The dataset of :func:`make_dataset`, planned and preprocessed for ``2d`` (the ``tiny_dataset`` fixture)."""

    raw: Path
    preprocessed: Path
    root: Path  # nnUNet_raw/DatasetXXX_Name
    dataset_id: int

    def environment(self, results: Path) -> dict[str, str]:
        """``os.environ`` with the nnU-Net folders set, ``nnUNet_results=results`` and no DA worker count."""
        return nnunet_environment(self.raw, self.preprocessed, results)
