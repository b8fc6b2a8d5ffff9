"""Where seeded runs live and how they are started: pure helpers, no torch or nnU-Net import.

A seeded run of nnU-Net's ``<trainer>__<plans>__<configuration>/fold_<f>`` folder lives under its own
results root ``<nnUNet_results>/seed_<S>``, so runs of different seeds never share a folder and each root
is an ordinary nnU-Net results folder (``nnUNet_results=<root>/seed_S nnUNetv2_predict ...``). The seed
is written next to the checkpoints as ``seed.json``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from nnunet_topkdice.errors import InputError

__all__ = [
    "SEED_RECORD",
    "check_not_seed_root",
    "check_seed",
    "fold_folder",
    "read_recorded_seed",
    "read_seed_record",
    "seed_results_root",
    "seed_roots",
    "train_argv",
    "write_seed_record",
]

SEED_RECORD = "seed.json"
_SEED_ROOT_NAME = re.compile(r"seed_(\d+)")  # the last component of a per-seed results root


def check_seed(seed: int) -> int:
    """``seed`` itself if it is an integer >= 0 (numpy's ``SeedSequence`` takes no negative entropy).

    Raises:
        ValueError: ``seed`` is not an ``int`` (a ``bool`` is refused too) or is negative.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return seed


def seed_results_root(results_root: Path, seed: int) -> Path:
    """The nnU-Net results root of seed ``seed``: ``results_root / f"seed_{seed}"``.

    ``topkdice train --seed S`` trains into it (it sets ``nnUNet_results`` to it), so
    ``nnUNet_results=<that path> nnUNetv2_predict ...`` finds the run. Raises ValueError for a bad seed.
    """
    return Path(results_root) / f"seed_{check_seed(seed)}"


def check_not_seed_root(results_root: Path) -> Path:
    """``results_root`` itself, unless it is a per-seed root already (its last component ``seed_<integer>``),
    where a seeded run would go to ``.../seed_<S>/seed_<S>`` (``--c`` would start it again from scratch).

    Raises:
        InputError: such a root; the message names the parent to set ``nnUNet_results`` to.
    """
    results_root = Path(results_root)
    if _SEED_ROOT_NAME.fullmatch(results_root.name):
        raise InputError(
            f"nnUNet_results={results_root} is a seed folder already: seeded runs add seed_<S> themselves "
            f"(this run would go to {results_root}/seed_<S>); set nnUNet_results to its parent, "
            f"{results_root.parent}"
        )
    return results_root


def seed_roots(results_root: Path) -> list[Path]:
    """The per-seed roots ``results_root/seed_<S>`` that exist, in the order of ``S``."""
    found = [p for p in Path(results_root).glob("seed_*") if _SEED_ROOT_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("seed_")))


def fold_folder(
    results_root: Path, dataset_name: str, trainer: str, plans: str, configuration: str, fold: int | str
) -> Path:
    """nnU-Net's fold folder ``<root>/<dataset_name>/<trainer>__<plans>__<configuration>/fold_<fold>``.

    ``results_root`` is the per-seed root (see :func:`seed_results_root`); ``dataset_name`` the full
    ``DatasetXXX_Name``.
    """
    return Path(results_root) / dataset_name / f"{trainer}__{plans}__{configuration}" / f"fold_{fold}"


def read_seed_record(fold_dir: Path) -> dict | None:
    """``fold_dir/seed.json`` as written by :func:`write_seed_record`, or None if the folder has no record.

    Raises:
        InputError: the record exists but is not JSON or holds no integer ``"seed"`` >= 0 (names the file).
    """
    path = Path(fold_dir) / SEED_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        check_seed(record["seed"])
        return record
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path} is not a valid seed record ({e})") from None


def read_recorded_seed(fold_dir: Path) -> int | None:
    """The seed recorded in ``fold_dir/seed.json``, or None if the folder has no record.

    Raises:
        InputError: as :func:`read_seed_record`.
    """
    record = read_seed_record(fold_dir)
    return None if record is None else record["seed"]


def write_seed_record(fold_dir: Path, record: dict) -> Path:
    """Write ``record`` (a dict with an integer ``"seed"``) as ``fold_dir/seed.json``, atomically.

    The file is written next to it first and renamed, so an interrupted run never leaves half a record.
    Returns the path written. Raises ValueError if ``record["seed"]`` is missing or not a valid seed.
    """
    check_seed(record.get("seed"))
    fold_dir = Path(fold_dir)
    fold_dir.mkdir(parents=True, exist_ok=True)
    path = fold_dir / SEED_RECORD
    partial = path.with_name(f".{SEED_RECORD}.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, path)
    return path


def train_argv(
    dataset: int | str,
    configuration: str,
    fold: int | str,
    trainer: str,
    seed: int,
    *,
    plans: str = "nnUNetPlans",
    device: str | None = None,
    continue_training: bool = False,
    extra: Sequence[str] = (),
    executable: str = "topkdice",
) -> list[str]:
    """The command line ``topkdice train --seed S DATASET CONFIGURATION FOLD -tr TRAINER [-p PLANS] ...``.

    ``extra`` is appended as given (other ``nnUNetv2_train`` options, for example ``["--npz"]``).
    ``-p`` is left out for nnU-Net's default plans. Raises ValueError for a bad seed.
    """
    argv = [executable, "train", "--seed", str(check_seed(seed)), str(dataset), configuration, str(fold)]
    argv += ["-tr", trainer]
    if plans != "nnUNetPlans":
        argv += ["-p", plans]
    if device is not None:
        argv += ["-device", device]
    if continue_training:
        argv.append("--c")
    return argv + [str(a) for a in extra]
