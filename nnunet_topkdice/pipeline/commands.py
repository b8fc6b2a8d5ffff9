"""Pure builders of the commands a pipeline runs: each returns the argv a user would type.

Executables are given by their name (``nnUNetv2_predict``, ``topkdice``); the runner finds them in the
current environment. Options that equal nnU-Net's defaults are left out, so the commands stay short.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DEFAULT_PLANS = "nnUNetPlans"
#: nnU-Net's worker processes where ``nnUNet_def_n_proc`` is unset (``nnunetv2.configuration.default_num_processes``;
#: importing it would read this process's variable instead).
NNUNET_DEFAULT_NUM_PROCESSES = 8

#: nnU-Net's planners for the plans names it ships (``nnUNetv2_plan_and_preprocess -pl``).
PLANNERS: dict[str, str] = {
    "nnUNetPlans": "ExperimentPlanner",
    "nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM",
    "nnUNetResEncUNetLPlans": "nnUNetPlannerResEncL",
    "nnUNetResEncUNetXLPlans": "nnUNetPlannerResEncXL",
}


def convert_command(dataset: str, source: Path, raw_root: Path, dataset_id: int, num_processes: int) -> list[str]:
    """``topkdice convert DATASET -i SOURCE -o RAW_ROOT -d ID -np N``."""
    return [
        "topkdice", "convert", dataset, "-i", str(source), "-o", str(raw_root),
        "-d", str(dataset_id), "-np", str(num_processes),
    ]  # fmt: skip


def plan_command(dataset_id: int, configuration: str, plans: str, num_processes: int) -> list[str]:
    """``nnUNetv2_plan_and_preprocess -d ID -c CONFIGURATION [-pl PLANNER] -np N -npfp N --verify_dataset_integrity``.

    Only ``configuration`` is preprocessed (planning writes every configuration into the plans file).

    Raises:
        ValueError: ``plans`` is not one of the plans nnU-Net's planners write (:data:`PLANNERS`).
    """
    if plans not in PLANNERS:
        raise ValueError(
            f"plans {plans!r} not found and no nnU-Net planner is known to write it (known: {', '.join(PLANNERS)}); "
            "plan it yourself, e.g. with nnUNetv2_plan_experiment -pl YOUR_PLANNER"
        )
    n = str(num_processes)
    argv = ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration]
    if plans != DEFAULT_PLANS:
        argv += ["-pl", PLANNERS[plans]]
    return argv + ["-np", n, "-npfp", n, "--verify_dataset_integrity"]


def preprocess_command(dataset_id: int, configuration: str, plans: str, num_processes: int) -> list[str]:
    """``nnUNetv2_preprocess -d ID -plans_name PLANS -c CONFIGURATION -np N`` (the plans file exists)."""
    return [
        "nnUNetv2_preprocess", "-d", str(dataset_id), "-plans_name", plans, "-c", configuration,
        "-np", str(num_processes),
    ]  # fmt: skip


def train_command(
    dataset_id: int,
    configuration: str,
    fold: str,
    trainer: str,
    *,
    seed: int,
    plans: str = DEFAULT_PLANS,
    device: str = "cuda",
    num_gpus: int = 1,
    resume: bool = False,
    validation_only: bool = False,
) -> list[str]:
    """``topkdice train --seed S ID CONFIGURATION FOLD -tr TRAINER [-p PLANS] -device D [-num_gpus N] [--c | --val]``.

    ``resume`` continues an interrupted training (nnU-Net's ``--c``); ``validation_only`` runs only
    nnU-Net's final validation of a finished training (``--val``), e.g. after it was interrupted there.
    """
    argv = ["topkdice", "train", "--seed", str(seed), str(dataset_id), configuration, fold, "-tr", trainer]
    if plans != DEFAULT_PLANS:
        argv += ["-p", plans]
    argv += ["-device", device]
    if num_gpus > 1:
        argv += ["-num_gpus", str(num_gpus)]
    if resume:
        argv.append("--c")
    elif validation_only:
        argv.append("--val")
    return argv


def predict_command(
    images_dir: Path,
    models: Sequence[tuple[str, Path]],
    dataset_id: int,
    configuration: str,
    folds: Sequence[str],
    *,
    plans: str = DEFAULT_PLANS,
    device: str = "cuda",
    resume: bool = False,
) -> list[str]:
    """``topkdice predict -i IMAGES -d ID -c CONFIGURATION -f FOLD... [-p PLANS] -device D --models TRAINER=OUT ...``.

    Every model predicts ``images_dir`` in one process (:mod:`.predict`), the same segmentations as one
    ``nnUNetv2_predict`` per model. Several folds are ensembled. ``resume`` adds ``--continue_prediction``
    (the cases already predicted are kept).
    """
    argv = ["topkdice", "predict", "-i", str(images_dir), "-d", str(dataset_id), "-c", configuration, "-f", *folds]
    if plans != DEFAULT_PLANS:
        argv += ["-p", plans]
    argv += ["-device", device, "--models", *(f"{trainer}={out_dir}" for trainer, out_dir in models)]
    if resume:
        argv.append("--continue_prediction")
    return argv


def evaluate_command(
    labels_dir: Path,
    runs: Sequence[tuple[str, Path]],
    dataset_id: int,
    out_dir: Path,
    *,
    baseline: str | None = None,
    paper: str | None = None,
    num_processes: int = 1,
    images_dir: Path | None = None,
    target_difference: float | None = None,
) -> list[str]:
    """``topkdice evaluate -r LABELS -pred NAME=PRED [NAME=PRED ...] [--baseline NAME] -d ID -o OUT -np N [--paper X]
    [--images IMAGES] [--target-difference D]``.

    ``runs`` keeps its order; a name given several times is one method over several repeats (seeds).
    ``images_dir`` (imagesTs or imagesTr) makes ``evaluate`` draw the cases that decide each comparison.
    ``target_difference`` None leaves evaluate's default.
    """
    argv = ["topkdice", "evaluate", "-r", str(labels_dir), "-pred"]
    argv += [f"{name}={predictions}" for name, predictions in runs]
    if baseline is not None:
        argv += ["--baseline", baseline]
    argv += ["-d", str(dataset_id), "-o", str(out_dir), "-np", str(num_processes)]
    if paper is not None:
        argv += ["--paper", paper]
    if images_dir is not None:
        argv += ["--images", str(images_dir)]
    if target_difference is not None:
        argv += ["--target-difference", repr(float(target_difference))]
    return argv
