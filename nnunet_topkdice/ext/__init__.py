"""The folder that ``nnUNet_extTrainer`` points at, and the helpers that put it there.

nnU-Net imports every module of this folder as a top-level module (see ``nnunet_topkdice_trainers``);
this ``__init__`` is not one of them and imports nothing heavy, so ``topkdice trainer-dir`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from nnunet_topkdice.environment import environment

__all__ = ["EXT_TRAINER_VARIABLE", "environment_with_trainers", "trainer_dir", "trainers_on_search_path"]

EXT_TRAINER_VARIABLE = "nnUNet_extTrainer"


def trainer_dir() -> Path:
    """The folder to put in ``nnUNet_extTrainer`` so that nnU-Net finds this package's trainers."""
    return Path(__file__).resolve().parent


def environment_with_trainers(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) whose ``nnUNet_extTrainer`` also lists our folder.

    The user's own folders keep their order and come first, so a trainer of theirs is found before one
    of ours of the same name (nnU-Net searches the folders in order); ours is appended once. ``environ``
    itself is not changed.
    """
    env = dict(os.environ if environ is None else environ)
    folders = [p for p in env.get(EXT_TRAINER_VARIABLE, "").split(os.pathsep) if p.strip()]
    env[EXT_TRAINER_VARIABLE] = os.pathsep.join(dict.fromkeys([*folders, str(trainer_dir())]))
    return env


def trainers_on_search_path() -> contextlib.AbstractContextManager[None]:
    """Inside the block ``os.environ``'s ``nnUNet_extTrainer`` also lists this package's folder (as
    :func:`environment_with_trainers` orders it); the previous value, or its absence, is restored after it.
    For nnU-Net code run in this process that looks a trainer up by name (a checkpoint's trainer)."""
    return environment({EXT_TRAINER_VARIABLE: environment_with_trainers()[EXT_TRAINER_VARIABLE]})
