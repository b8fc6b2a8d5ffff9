"""The nnUNet_extTrainer helpers: one folder, one way to add it to an environment."""

from __future__ import annotations

import os
import subprocess
import sys

from nnunet_topkdice.ext import environment_with_trainers, trainer_dir


def test_trainer_dir_holds_the_shim() -> None:
    assert (trainer_dir() / "nnunet_topkdice_trainers.py").is_file()


def test_environment_appends_our_folder_once_and_leaves_the_input_alone() -> None:
    ours = str(trainer_dir())
    user = {"PATH": "/bin", "nnUNet_extTrainer": os.pathsep.join(["/a", "/b", ours])}
    env = environment_with_trainers(user)
    assert env["nnUNet_extTrainer"] == os.pathsep.join(["/a", "/b", ours])
    assert env["PATH"] == "/bin"
    assert environment_with_trainers({"PATH": "/bin"})["nnUNet_extTrainer"] == ours
    assert environment_with_trainers({"nnUNet_extTrainer": "/a"})["nnUNet_extTrainer"] == os.pathsep.join(["/a", ours])
    assert user["nnUNet_extTrainer"] == os.pathsep.join(["/a", "/b", ours])


def test_nothing_below_the_entry_point_imports_the_cli() -> None:
    """Importing every module of the package must not pull in ``nnunet_topkdice.cli``."""
    code = (
        "import importlib, pkgutil, sys, nnunet_topkdice, dataset_conversion\n"
        "for pkg in (nnunet_topkdice, dataset_conversion):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if m.name != 'nnunet_topkdice.cli':\n"
        "            importlib.import_module(m.name)\n"
        "print('nnunet_topkdice.cli' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
