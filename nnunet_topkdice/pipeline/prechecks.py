"""What ``compare``, ``reproduce`` and ``demo`` check before they run anything (issue 24): a misspelt trainer
must not fail hours later, at its first training, after the preprocessing and the trainings before it.

* every trainer is found the way ``nnUNetv2_train`` will look for it (nnU-Net's
  ``recursive_find_python_class`` over nnU-Net's trainer folder, then each folder of
  ``nnUNet_extTrainer``, as ``nnunetv2.utilities.find_objects`` does) and is an ``nnUNetTrainer``;
* no trainer is named twice (it would be one method, silently, and no verdict would come out);
* on a region-based dataset, no trainer whose loss has no region formulation (CE alone) is asked for;
* every folder the run writes into is a folder (or can be created) and is writable: the work directory,
  nnU-Net's three folders and the folder of ``--emit-slurm``'s script; ``nnUNet_results`` is not a seed's
  own folder (``.../seed_<S>``, where every seeded training refuses to run).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.ext import EXT_TRAINER_VARIABLE
from nnunet_topkdice.input_checks import check_output_folder
from nnunet_topkdice.pipeline.compare import CompareConfig
from nnunet_topkdice.training.layout import check_not_seed_root

__all__ = [
    "check_before_running",
    "check_distinct_trainers",
    "check_region_support",
    "check_trainers",
    "find_trainer_class",
    "written_folders",
]


def check_distinct_trainers(names: Sequence[str]) -> None:
    """Refuse a trainer given twice.

    Raises:
        InputError: naming the repeated trainers.
    """
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise InputError(
            f"--trainers names {', '.join(repeated)} more than once; each trainer is one method of the "
            "comparison, so name it once (more runs of it come from --seeds)"
        )


def find_trainer_class(name: str, ext_trainer_folders: Iterable[str]) -> type | None:
    """The class ``nnUNetv2_train -tr name`` would use, or None: nnU-Net's own trainer folder first, then
    each folder of ``nnUNet_extTrainer`` in order (nnU-Net's lookup, without its messages on stdout).

    The look-up imports every trainer module; the deprecation warnings of those imports (torch's, for
    example) are the trainings' business, not the terminal's of this check."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        found = recursive_find_python_class(
            os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"),
            name,
            "nnunetv2.training.nnUNetTrainer",
            nnunetv2.__path__[0],
        )
        for folder in ext_trainer_folders:
            if found is not None:
                break
            if folder.strip() and os.path.exists(folder):
                found = recursive_find_python_class(
                    folder, name, None, base_folder=folder, cleanup_imports_from_base_folder=True
                )
    return found


def check_trainers(names: Collection[str], ext_trainer: str) -> dict[str, type]:
    """Refuse trainers that nnU-Net would not find, or that are not nnU-Net trainers.

    Args:
        ext_trainer: the ``nnUNet_extTrainer`` value the trainings will get (folders joined by ``os.pathsep``).
    Returns:
        each trainer's class, by name.
    Raises:
        InputError: naming every such trainer and where they were looked for.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    folders = [folder for folder in ext_trainer.split(os.pathsep) if folder.strip()]
    missing, not_trainers = [], []
    classes = {}
    for name in dict.fromkeys(names):
        found = classes[name] = find_trainer_class(name, folders)
        if found is None:
            missing.append(name)
        elif not (isinstance(found, type) and issubclass(found, nnUNetTrainer)):
            not_trainers.append(name)
    problems = []
    if missing:
        problems.append(
            f"nnU-Net finds no trainer class {', '.join(missing)} (looked in nnunetv2.training.nnUNetTrainer "
            f"and nnUNet_extTrainer={os.pathsep.join(folders)}); check the spelling, or add the folder of your "
            "trainer to nnUNet_extTrainer"
        )
    if not_trainers:
        problems.append(f"{', '.join(not_trainers)} found, but not a subclass of nnUNetTrainer")
    if problems:
        raise InputError("; ".join(problems))
    return classes


def check_region_support(classes: Mapping[str, type], dataset_json: Path) -> None:
    """Refuse, before anything trains, trainers whose loss has no region formulation when ``dataset_json``
    describes a region-based dataset (their ``_build_loss`` would stop the run at their first training,
    after the trainings before it); nothing to check where the file does not exist yet.

    Raises:
        InputError: naming every such trainer and why.
    """
    from nnunet_topkdice.evaluation.dataset import has_regions
    from nnunet_topkdice.trainers.baselines import refuses_regions, region_refusal

    if not dataset_json.is_file():
        return
    with open(dataset_json) as f:
        if not has_regions(json.load(f)):
            return
    refused = [name for name, trainer_class in classes.items() if refuses_regions(trainer_class)]
    if refused:
        raise InputError("; ".join(f"{dataset_json.parent.name}: {region_refusal(name)}" for name in refused))


def written_folders(config: CompareConfig, *, emit_slurm: Path | None, writes_raw: bool) -> list[tuple[Path, str]]:
    """``(folder, what)`` for every folder a run writes into (``nnUNet_raw`` only when a step writes the
    dataset there: ``reproduce`` converts, ``demo`` generates; ``compare`` only reads it)."""
    folders = [
        (config.workdir, "the work directory (-w/--workdir)"),
        (config.folders.preprocessed, "nnUNet_preprocessed"),
        (config.folders.results, "nnUNet_results"),
    ]
    if writes_raw:
        folders.append((config.folders.raw, "nnUNet_raw"))
    if emit_slurm is not None:
        folders.append((emit_slurm.parent, "the folder of the --emit-slurm script"))
    return folders


def check_before_running(
    config: CompareConfig,
    env: Mapping[str, str],
    *,
    emit_slurm: Path | None = None,
    writes_raw: bool = False,
    to_train: Collection[str] | None = None,
) -> None:
    """Everything a run needs that can be checked before it starts (see the module docstring); writes nothing.

    Args:
        env: the environment of the commands (its ``nnUNet_extTrainer`` is where the trainings look).
        to_train: the trainers with a training left to run (default: every trainer); only these are looked
            up, since the look-up imports every trainer module (seconds) and a finished training's trainer
            was found when it ran.
    Raises:
        InputError: a folder that is a file or not writable, ``nnUNet_results`` at a seed's root already, an
            unknown trainer, a trainer without a region formulation on a region-based dataset.
    """
    for folder, what in written_folders(config, emit_slurm=emit_slurm, writes_raw=writes_raw):
        check_output_folder(folder, what)
    check_not_seed_root(config.folders.results)  # every training would stop at topkdice train's own check
    names = list(config.trainers.values()) if to_train is None else list(to_train)
    if names:
        classes = check_trainers(names, env.get(EXT_TRAINER_VARIABLE, ""))
        check_region_support(classes, config.raw_dataset / "dataset.json")
