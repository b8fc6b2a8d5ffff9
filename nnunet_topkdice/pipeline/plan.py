"""A comparison as the user asked for it (:class:`CompareConfig`) and as resolved against the disk once
(:class:`ComparePlan`): the folds, the file ending, the number of training cases and the split.

:func:`resolve_plan` is the one place that reads the dataset's ``dataset.json`` and ``splits_final.json``;
the steps of :mod:`nnunet_topkdice.pipeline.compare` consume the plan and only look at the disk to tell
whether their own outputs are there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.pipeline import commands, state
from nnunet_topkdice.pipeline.steps import file_safe

CROSSVAL = "crossval"
#: The file ending of a dataset whose ``dataset.json`` is not written yet (a dry run before conversion).
DEFAULT_FILE_ENDING = ".nii.gz"

Split = Mapping[str, tuple[str, ...]]  # {"train": case ids, "val": case ids}, one per fold


@dataclass(frozen=True)
class CompareConfig:
    """One comparison, as the user asked for it.

    Attributes:
        dataset_id: nnU-Net dataset id.
        raw_dataset: ``nnUNet_raw/DatasetXXX_Name``; may not exist yet when an earlier step writes it.
        configuration: nnU-Net configuration (``2d``, ``3d_fullres``, ``3d_lowres``, ...).
        trainers: the name shown in the tables -> nnU-Net trainer class, in table order.
        baseline: the name every other trainer is compared with (default: the first).
        seeds: one training per trainer, seed and fold; the same seed gives every trainer the same
            initial weights and batches.
        folds: the folds trained. Cross-validation: default every fold of the dataset's
            ``splits_final.json``, else nnU-Net's 5. Test set: default ``("all",)``; several folds are
            ensembled by nnU-Net's predictor (``topkdice predict``).
        test_set: evaluate ``imagesTs`` against ``labelsTs`` instead of the cross-validation.
        split_folds: the test set, where the dataset's ``splits_final.json`` is not on disk yet: the folds of
            the one that the step writing the dataset puts there (``reproduce``: the paper dataset's
            converter, one fold for ACDC); None: nnU-Net's own 5, written at the first training.
        target_difference: passed to ``topkdice evaluate --target-difference`` (None: its default).
        train_env: variables for the trainings only, shown in front of their commands.
        extra_env: variables for every command.
    """

    dataset_id: int
    raw_dataset: Path
    configuration: str
    trainers: Mapping[str, str]
    workdir: Path
    folders: state.NnunetFolders
    baseline: str | None = None
    seeds: tuple[int, ...] = (0,)
    folds: tuple[str, ...] = ()
    test_set: bool = False
    split_folds: int | None = None
    plans: str = commands.DEFAULT_PLANS
    device: str = "cuda"
    num_processes: int = 1
    num_gpus: int = 1
    paper: str | None = None
    target_difference: float | None = None
    train_env: Mapping[str, str] = field(default_factory=dict)
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.trainers:
            raise InputError("no trainer to compare: give at least one with --trainers")
        if self.baseline is not None and self.baseline not in self.trainers:
            raise InputError(f"--baseline {self.baseline!r} is not one of the trainers: {', '.join(self.trainers)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"--seeds must be distinct, got {list(self.seeds)}")
        if len(set(self.folds)) != len(self.folds):
            raise InputError(f"--folds must be distinct, got {list(self.folds)}")
        if not self.test_set and "all" in self.folds:
            raise InputError("fold all trains on every case, so it has no cross-validation: use --test-set")
        if "cascade" in self.configuration:
            raise InputError(f"configuration {self.configuration!r}: cascades are not supported, "
                             "compare 3d_lowres or 3d_fullres")  # fmt: skip
        for fold in self.folds:
            if fold != "all" and not fold.isdigit():
                raise InputError(f"fold must be 'all' or a number, got {fold!r}")

    @property
    def name(self) -> str:
        return self.raw_dataset.name

    @property
    def preprocessed_dataset(self) -> Path:
        return self.folders.preprocessed / self.name

    @property
    def baseline_name(self) -> str:
        return self.baseline or next(iter(self.trainers))

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def results_dataset(self, seed: int) -> Path:
        return state.seed_results_root(self.folders.results, seed) / self.name

    def training_dir(self, trainer: str, seed: int, fold: str) -> Path:
        return state.training_dir(self.results_dataset(seed), trainer, self.plans, self.configuration, fold)


@dataclass(frozen=True)
class ComparePlan:
    """A comparison resolved against the disk: what every step needs to know, read once.

    Attributes:
        config: the request.
        folds: the folds trained (``config.folds``, else fold ``all`` for the test set, else every fold of
            the split).
        file_ending: the dataset's ``file_ending`` (:data:`DEFAULT_FILE_ENDING` before it is converted).
        num_training: the dataset's ``numTraining``; None before it is converted.
        splits: cross-validation only: the split trained on, the dataset's preprocessed ``splits_final.json``
            or, where there is none yet, the raw dataset's own (which nnU-Net's planning copies there), else
            the one nnU-Net would write (same function, same seed); the split step writes either; None for
            the test set or before the dataset exists.
        split_on_disk: the preprocessed ``splits_final.json`` already existed when the plan was resolved.
        split_from_raw: the split is the raw dataset's own ``splits_final.json``.
    """

    config: CompareConfig
    folds: tuple[str, ...]
    file_ending: str
    num_training: int | None
    splits: tuple[Split, ...] | None
    split_on_disk: bool
    split_from_raw: bool = False

    @property
    def fold_tag(self) -> str:
        return "_".join(self.folds)

    @property
    def evaluation_dir(self) -> Path:
        return self.config.workdir / "evaluation" / (f"fold_{self.fold_tag}" if self.config.test_set else CROSSVAL)

    def predictions_dir(self, name: str, seed: int) -> Path:
        """Where the evaluated predictions of one trainer (by its table name) and seed are."""
        trainer = file_safe(self.config.trainers[name])
        if self.config.test_set:
            return self.config.workdir / "predictions" / f"fold_{self.fold_tag}" / trainer / f"seed_{seed}"
        return self.config.workdir / CROSSVAL / trainer / f"seed_{seed}"

    def validation_cases(self) -> dict[str, list[str]]:
        """Cross-validation: fold -> its validation case ids (empty before the dataset exists)."""
        return state.validation_cases(self.splits, self.folds) if self.splits else {}


def _read_dataset_json(raw_dataset: Path) -> dict | None:
    path = raw_dataset / "dataset.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read it as JSON ({e})") from e
    if not isinstance(info, dict) or "file_ending" not in info:
        raise InputError(f"{path}: not an nnU-Net dataset.json (no 'file_ending')")
    return info


def _training_case_ids(raw_dataset: Path, info: dict) -> list[str]:
    """The training cases nnU-Net preprocesses (and splits): its own listing of the raw dataset."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    if "dataset" not in info and not (raw_dataset / "imagesTr").is_dir():
        return []
    return sorted(get_filenames_of_train_images_and_targets(str(raw_dataset), dict(info)))


def _frozen(splits: list[dict[str, list[str]]]) -> tuple[Split, ...]:
    return tuple({"train": tuple(s["train"]), "val": tuple(s["val"])} for s in splits)


def resolve_plan(config: CompareConfig) -> ComparePlan:
    """Read the dataset's ``dataset.json`` and ``splits_final.json`` once and resolve the comparison.

    Raises:
        InputError: a numeric fold that the split does not have (also for the test set: nnU-Net would train
            it on a random 80:20 split), or a ``dataset.json`` without ``file_ending``.
    """
    info = _read_dataset_json(config.raw_dataset)
    file_ending = info["file_ending"] if info else DEFAULT_FILE_ENDING
    num_training = int(info["numTraining"]) if info and "numTraining" in info else None
    on_disk = state.read_splits(config.preprocessed_dataset)
    # nnU-Net's planning copies a raw dataset's own split into the preprocessed folder: that is the split
    raw_split = None if on_disk is not None or config.test_set else state.read_splits(config.raw_dataset)
    splits: tuple[Split, ...] | None = None
    if not config.test_set:
        if on_disk is not None:
            splits = _frozen(on_disk)
        elif raw_split is not None:
            splits = _frozen(raw_split)
        elif info is not None:
            case_ids = _training_case_ids(config.raw_dataset, info)
            if len(case_ids) >= state.NNUNET_NUM_FOLDS:
                splits = _frozen(state.nnunet_split(case_ids))
    if config.folds:
        folds = config.folds
    elif config.test_set:
        folds = ("all",)
    else:
        folds = tuple(str(i) for i in range(len(splits) if splits else state.NNUNET_NUM_FOLDS))
    # the split the folds train on: the one on disk, or the raw dataset's that the planning copies there; else
    # the one written with the dataset (reproduce's conversion); else nnU-Net's own 5 folds (written by the
    # split step or the first training)
    if on_disk is not None:
        state.check_folds(folds, len(on_disk))
    elif raw_split is not None:
        state.check_folds(folds, len(raw_split), str(config.raw_dataset / state.SPLITS_FILE))
    elif config.test_set and config.split_folds is not None:
        written_with_the_dataset = f"the {state.SPLITS_FILE} that the conversion writes for {config.name}"
        state.check_folds(folds, config.split_folds, written_with_the_dataset)
    else:
        state.check_folds(folds, state.NNUNET_NUM_FOLDS, f"nnU-Net's own {state.NNUNET_NUM_FOLDS}-fold split")
    return ComparePlan(config, folds, file_ending, num_training, splits, split_on_disk=on_disk is not None,
                       split_from_raw=raw_split is not None)  # fmt: skip


__all__ = ["CROSSVAL", "CompareConfig", "ComparePlan", "resolve_plan"]
