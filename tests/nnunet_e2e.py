"""Shared pieces of the tests that run nnU-Net's own commands end to end (through ``subprocess``, as a user)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import SimpleITK as sitk

BIN = Path(sys.executable).parent


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
    env = {
        **os.environ,
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_extTrainer": os.pathsep.join([trainer_dir, str(test_ext)]),
        # nnU-Net runs 2 threads on a 2-core CPU; with other jobs on the cores, OpenMP's spin-waiting
        # threads make every step many times slower. Passive waiting costs nothing on an idle machine.
        "OMP_WAIT_POLICY": "PASSIVE",
        # nnU-Net's final validation and evaluation start 8 worker processes by default: 1 is plenty here
        "nnUNet_def_n_proc": "1",
    }
    env.pop("nnUNet_n_proc_DA", None)
    return env
