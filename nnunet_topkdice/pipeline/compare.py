"""The comparison engine: trainers x seeds x folds on any nnU-Net dataset, as a list of steps.

:func:`compare_steps` turns a :class:`CompareConfig` into the pipeline

1. preprocessing (``nnUNetv2_plan_and_preprocess``, or ``nnUNetv2_preprocess`` when the plans exist);
2. cross-validation only: nnU-Net's 5-fold ``splits_final.json``, written before the trainings (the
   same split nnU-Net writes on its first training) so that trainings can start at the same time;
3. one ``topkdice train --seed S`` per trainer, seed and fold (``--c`` resumes an interrupted one,
   ``--val`` redoes only nnU-Net's final validation when that was interrupted);
4. cross-validation: each (trainer, seed)'s validation predictions of every fold, hard-linked into one
   folder (every training case is predicted once, by the fold that did not train on it);
   test set: ``nnUNetv2_predict`` on ``imagesTs`` with the seed's models (the folds ensembled);
5. ``topkdice evaluate`` with one ``-p NAME=DIR`` per trainer and seed (a name repeated over its seeds)
   and ``--baseline``, which ends with the paired verdict of every trainer against the baseline.

Each step is done when its outputs are on disk, so running the same comparison again continues where
it stopped and finishes in seconds once everything is done.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.pipeline import commands, state
from nnunet_topkdice.pipeline.steps import Command, Step, file_safe

CROSSVAL = "crossval"


@dataclass(frozen=True)
class CompareConfig:
    """One comparison.

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
            ensembled by ``nnUNetv2_predict``.
        test_set: evaluate ``imagesTs`` against ``labelsTs`` instead of the cross-validation.
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
    plans: str = commands.DEFAULT_PLANS
    device: str = "cuda"
    num_processes: int = 1
    num_gpus: int = 1
    paper: str | None = None
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

    # --- where things are ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.raw_dataset.name

    @property
    def preprocessed_dataset(self) -> Path:
        return self.folders.preprocessed / self.name

    @property
    def baseline_name(self) -> str:
        return self.baseline or next(iter(self.trainers))

    def results_dataset(self, seed: int) -> Path:
        return state.seed_results_root(self.folders.results, seed) / self.name

    def training_dir(self, trainer: str, seed: int, fold: str) -> Path:
        return state.training_dir(self.results_dataset(seed), trainer, self.plans, self.configuration, fold)

    def predictions_dir(self, name: str, seed: int) -> Path:
        """Where the evaluated predictions of one trainer (by its table name) and seed are."""
        trainer = file_safe(self.trainers[name])
        if self.test_set:
            return self.workdir / "predictions" / f"fold_{self.fold_tag}" / trainer / f"seed_{seed}"
        return self.workdir / CROSSVAL / trainer / f"seed_{seed}"

    @property
    def fold_tag(self) -> str:
        return "_".join(self.resolved_folds())

    @property
    def evaluation_dir(self) -> Path:
        return self.workdir / "evaluation" / (f"fold_{self.fold_tag}" if self.test_set else CROSSVAL)

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def resolved_folds(self) -> tuple[str, ...]:
        """The folds trained: as given, else fold ``all`` (test set) or every fold of the split."""
        if self.folds:
            return self.folds
        if self.test_set:
            return ("all",)
        splits = state.read_splits(self.preprocessed_dataset)
        return tuple(str(i) for i in range(len(splits) if splits else state.NNUNET_NUM_FOLDS))

    def dataset_json(self) -> dict | None:
        path = self.raw_dataset / "dataset.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def file_ending(self) -> str:
        info = self.dataset_json()
        return info["file_ending"] if info else ".nii.gz"


# --- steps -----------------------------------------------------------------------------------------------


def compare_steps(config: CompareConfig) -> list[Step]:
    """The whole comparison as steps, in the order they run (see the module docstring)."""
    steps = [preprocess_step(config)]
    if not config.test_set and state.read_splits(config.preprocessed_dataset) is None:
        steps.append(split_step(config))
    steps += [training_step(job) for job in training_jobs(config)]
    if config.test_set:
        steps += [prediction_step(config, name, seed) for seed in config.seeds for name in config.trainers]
    else:
        if not covers_every_case(config):
            steps.append(reference_step(config))
        steps += [collect_step(config, name, seed) for seed in config.seeds for name in config.trainers]
    steps.append(evaluation_step(config))
    return steps


def preprocess_step(config: CompareConfig) -> Step:
    def done() -> str | None:
        info = config.dataset_json()
        if info is None:
            return None
        complete = state.preprocessing_complete(
            config.preprocessed_dataset, config.plans, config.configuration, int(info["numTraining"])
        )
        return "already preprocessed" if complete else None

    def command() -> Command:
        if (config.preprocessed_dataset / f"{config.plans}.json").is_file():
            argv = commands.preprocess_command(config.dataset_id, config.configuration, config.plans,
                                               config.num_processes)  # fmt: skip
        else:
            try:
                argv = commands.plan_command(config.dataset_id, config.configuration, config.plans,
                                             config.num_processes)  # fmt: skip
            except ValueError as e:
                raise InputError(str(e)) from None
        return Command(tuple(argv))

    return Step("preprocess", f"Planning and preprocessing ({config.configuration}, {config.plans})", done, command)


def split_step(config: CompareConfig) -> Step:
    """nnU-Net's own 5-fold split, written once before any fold trains."""

    def done() -> str | None:
        return "split exists" if state.read_splits(config.preprocessed_dataset) is not None else None

    def action(log_file: Path) -> None:
        identifiers = _preprocessed_case_ids(config)
        path = state.write_nnunet_splits(config.preprocessed_dataset, identifiers)
        log_file.write_text(f"wrote nnU-Net's 5-fold split of {len(identifiers)} cases to {path}\n")

    return Step("split", f"Writing nnU-Net's 5-fold cross-validation split ({state.SPLITS_FILE})", done, action=action)


def _preprocessed_case_ids(config: CompareConfig) -> list[str]:
    plans_file = config.preprocessed_dataset / f"{config.plans}.json"
    data_dir = config.preprocessed_dataset / state.plans_configurations(plans_file)[config.configuration]
    return sorted(p.name.removesuffix(".pkl") for p in data_dir.glob("*.pkl"))


@dataclass(frozen=True)
class TrainingJob:
    """One training of the sweep: what ``topkdice train`` gets and where nnU-Net writes it."""

    name: str  # the trainer's name in the tables
    trainer: str
    seed: int
    fold: str
    run_dir: Path
    needs_validation: bool  # cross-validation reads the fold's final validation predictions
    base_argv: tuple[str, ...]  # without --c / --val
    env: Mapping[str, str]

    @property
    def step_name(self) -> str:
        return f"train_{file_safe(self.trainer)}_seed{self.seed}_fold{self.fold}"

    def remaining(self) -> str | None:
        """``"new"``, ``"resume"``, ``"validate"``, or None when finished."""
        status = state.training_status(self.run_dir)
        if status is state.TrainingStatus.NEW:
            return "new"
        if status is state.TrainingStatus.INTERRUPTED:
            return "resume"
        if self.needs_validation and not (self.run_dir / "validation" / "summary.json").is_file():
            return "validate"
        return None

    def command(self) -> Command:
        flag = {"resume": ("--c",), "validate": ("--val",)}.get(self.remaining() or "", ())
        return Command((*self.base_argv, *flag), dict(self.env))


def training_jobs(config: CompareConfig) -> list[TrainingJob]:
    """Every training of the comparison: seeds, then trainers, then folds (paired results come early)."""
    jobs = []
    for seed in config.seeds:
        for name, trainer in config.trainers.items():
            for fold in config.resolved_folds():
                argv = commands.train_command(
                    config.dataset_id, config.configuration, fold, trainer, seed=seed, plans=config.plans,
                    device=config.device, num_gpus=config.num_gpus,
                )  # fmt: skip
                jobs.append(TrainingJob(
                    name, trainer, seed, fold, config.training_dir(trainer, seed, fold),
                    needs_validation=not config.test_set, base_argv=tuple(argv), env=dict(config.train_env),
                ))  # fmt: skip
    return jobs


def training_step(job: TrainingJob) -> Step:
    def done() -> str | None:
        return "already trained" if job.remaining() is None else None

    return Step(
        job.step_name, f"{job.name}, seed {job.seed}, fold {job.fold}", done, job.command,
        training_dir=job.run_dir, parallel="train",
    )  # fmt: skip


def prediction_step(config: CompareConfig, name: str, seed: int) -> Step:
    trainer = config.trainers[name]
    out_dir = config.predictions_dir(name, seed)
    images = config.raw_dataset / "imagesTs"

    def missing() -> tuple[list[str], list[str]]:
        case_ids = state.list_case_ids(images, config.file_ending())
        model = state.newest(config.training_dir(trainer, seed, f) / "checkpoint_final.pth"
                             for f in config.resolved_folds())  # fmt: skip
        return case_ids, state.missing_files(case_ids, out_dir, config.file_ending(), newer_than=model)

    def done() -> str | None:
        case_ids, left = missing()
        return "already predicted" if case_ids and not left else None

    def command() -> Command:
        case_ids, left = missing()
        if images.is_dir() and not case_ids:
            raise InputError(f"no test images in {images}")
        # Only absent cases (an interrupted prediction, no stale file): nnU-Net skips the others.
        stale = [case for case in left if (out_dir / (case + config.file_ending())).exists()]
        argv = commands.predict_command(
            images, out_dir, config.dataset_id, config.configuration, config.resolved_folds(), trainer,
            plans=config.plans, device=config.device, num_processes=config.num_processes,
            resume=bool(case_ids) and not stale and len(left) < len(case_ids),
        )  # fmt: skip
        seed_root = state.seed_results_root(config.folders.results, seed)
        return Command(tuple(argv), {"nnUNet_results": str(seed_root)})

    return Step(f"predict_{file_safe(trainer)}_seed{seed}", f"{name}, seed {seed}: predicting imagesTs",
                done, command, parallel="predict")  # fmt: skip


def _validation_sources(config: CompareConfig, trainer: str, seed: int) -> dict[str, Path] | None:
    """File name -> the fold's validation prediction, for every case of the requested folds."""
    splits = state.read_splits(config.preprocessed_dataset)
    if splits is None:
        return None
    ending = config.file_ending()
    sources = {}
    for fold, cases in state.validation_cases(splits, config.resolved_folds()).items():
        validation = config.training_dir(trainer, seed, fold) / "validation"
        sources.update({case + ending: validation / (case + ending) for case in cases})
    return sources


def collect_step(config: CompareConfig, name: str, seed: int) -> Step:
    trainer = config.trainers[name]
    out_dir = config.predictions_dir(name, seed)
    folds = " ".join(config.resolved_folds())

    def done() -> str | None:
        sources = _validation_sources(config, trainer, seed)
        return "already collected" if sources and state.files_linked(sources, out_dir) else None

    def action(log_file: Path) -> None:
        sources = _validation_sources(config, trainer, seed)
        absent = [str(p) for p in (sources or {}).values() if not p.is_file()]
        if sources is None or absent:
            raise InputError(f"validation predictions missing for {name}, seed {seed}: {', '.join(absent[:3])}")
        state.link_files(sources, out_dir)
        log_file.write_text(f"linked {len(sources)} validation predictions into {out_dir}\n")

    title = f"{name}, seed {seed}: collecting the validation predictions of folds {folds} into {out_dir}"
    return Step(f"collect_{file_safe(trainer)}_seed{seed}", title, done, action=action)


def covers_every_case(config: CompareConfig) -> bool:
    """True when the folds' validation sets are the whole training set (every fold of the split)."""
    splits = state.read_splits(config.preprocessed_dataset)
    n_folds = len(splits) if splits else state.NNUNET_NUM_FOLDS
    return set(config.resolved_folds()) == {str(i) for i in range(n_folds)}


def _reference_sources(config: CompareConfig) -> dict[str, Path] | None:
    splits = state.read_splits(config.preprocessed_dataset)
    if splits is None:
        return None
    ending = config.file_ending()
    cases = [c for fold_cases in state.validation_cases(splits, config.resolved_folds()).values() for c in fold_cases]
    return {case + ending: config.raw_dataset / "labelsTr" / (case + ending) for case in cases}


def reference_dir(config: CompareConfig) -> Path:
    """The reference labels of the evaluation."""
    if config.test_set:
        return config.raw_dataset / "labelsTs"
    if covers_every_case(config):
        return config.raw_dataset / "labelsTr"
    return config.workdir / CROSSVAL / "reference"


def reference_step(config: CompareConfig) -> Step:
    """The labels of the cases that the requested folds validate (fewer folds than the split has)."""
    out_dir = reference_dir(config)

    def done() -> str | None:
        sources = _reference_sources(config)
        return "already collected" if sources and state.files_linked(sources, out_dir) else None

    def action(log_file: Path) -> None:
        sources = _reference_sources(config) or {}
        state.link_files(sources, out_dir)
        log_file.write_text(f"linked {len(sources)} reference labels into {out_dir}\n")

    title = f"Collecting the labels of the cases that folds {' '.join(config.resolved_folds())} validate"
    return Step("collect_reference", title, done, action=action)


def images_dir(config: CompareConfig) -> Path:
    """The images of the evaluated cases, for the case pictures: imagesTs for the test set, else imagesTr."""
    return config.raw_dataset / ("imagesTs" if config.test_set else "imagesTr")


def evaluation_runs(config: CompareConfig) -> list[tuple[str, Path]]:
    """``(name, predictions)`` per trainer and seed, a trainer's seeds next to each other."""
    return [(name, config.predictions_dir(name, seed)) for name in config.trainers for seed in config.seeds]


def evaluation_step(config: CompareConfig) -> Step:
    runs = evaluation_runs(config)

    def argv() -> list[str]:
        return commands.evaluate_command(
            reference_dir(config), runs, config.dataset_id, config.evaluation_dir,
            baseline=config.baseline_name if len(config.trainers) > 1 else None,
            paper=config.paper, num_processes=config.num_processes, images_dir=images_dir(config),
        )  # fmt: skip

    def stamp() -> dict:
        return state.evaluation_stamp(argv(), [folder for _, folder in runs], config.file_ending())

    def done() -> str | None:
        return "already evaluated" if state.evaluation_current(config.evaluation_dir, stamp()) else None

    def after() -> None:
        (config.evaluation_dir / state.EVALUATION_STAMP).write_text(json.dumps(stamp(), indent=2))

    what = "the test set" if config.test_set else "the cross-validation"
    return Step("evaluate", f"Evaluating {what}", done, lambda: Command(tuple(argv())), after=after)


def unset_only(defaults: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The entries of ``defaults`` whose variable the user has not set in ``environ`` (a user's value wins)."""
    return {key: value for key, value in defaults.items() if key not in environ}


def default_train_env(device: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables for the trainings that the user has not set: on the CPU no data augmentation worker
    processes (``nnUNet_n_proc_DA=0``), which makes seeded training repeatable there and, on a small
    CPU, is faster than workers competing with the network for the cores."""
    environ = os.environ if environ is None else environ
    return unset_only({"nnUNet_n_proc_DA": "0"}, environ) if device == "cpu" else {}


def child_environment(config: CompareConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the commands: nnU-Net's folders, our trainers added to ``nnUNet_extTrainer``
    (after any folders the user already listed) and ``extra_env``."""
    from nnunet_topkdice.ext import environment_with_trainers

    env = environment_with_trainers(environ)
    env.update(config.folders.env())
    env.update(config.extra_env)
    return env


def exported_variables(config: CompareConfig, env: Mapping[str, str]) -> dict[str, str]:
    """The variables a user exports to run the printed commands by hand (or in a job script)."""
    names = [*config.folders.env(), "nnUNet_extTrainer", *config.extra_env]
    return {name: env[name] for name in names}


def validate_folds(config: CompareConfig) -> None:
    """Refuse folds that the dataset's existing ``splits_final.json`` does not have.

    Raises:
        InputError: such a fold.
    """
    splits = state.read_splits(config.preprocessed_dataset)
    if not config.test_set:
        # without a split file, nnU-Net's own 5 folds (a fold beyond them would be a random 80:20 split)
        splits = splits or [{"train": [], "val": []}] * state.NNUNET_NUM_FOLDS
        state.validation_cases(splits, config.resolved_folds())
    for fold in config.resolved_folds():
        if fold != "all" and not fold.isdigit():
            raise InputError(f"fold must be 'all' or a number, got {fold!r}")


__all__ = [
    "CompareConfig",
    "TrainingJob",
    "child_environment",
    "compare_steps",
    "evaluation_runs",
    "exported_variables",
    "reference_dir",
    "training_jobs",
    "validate_folds",
]
