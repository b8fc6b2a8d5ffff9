"""The comparison engine: trainers x seeds x folds on any nnU-Net dataset, as a list of steps.

:func:`compare_steps` turns a :class:`CompareConfig` into the pipeline

1. preprocessing (``nnUNetv2_plan_and_preprocess``, or ``nnUNetv2_preprocess`` when the plans exist);
2. cross-validation only: nnU-Net's 5-fold ``splits_final.json``, written before the trainings (the
   same split nnU-Net writes on its first training) so that trainings can start at the same time;
3. one ``topkdice train --seed S`` per trainer, seed and fold (``--c`` resumes an interrupted one,
   ``--val`` redoes only nnU-Net's final validation when that was interrupted);
4. cross-validation: each (trainer, seed)'s validation predictions of every fold, hard-linked into one
   folder (every training case is predicted once, by the fold that did not train on it);
   test set: ``topkdice predict`` on ``imagesTs`` with each seed's models in one process (the folds
   ensembled; the same segmentations as ``nnUNetv2_predict``);
5. ``topkdice evaluate`` with one ``-pred NAME=DIR`` per trainer and seed (a name repeated over its seeds)
   and ``--baseline``, which ends with the paired verdict of every trainer against the baseline.

The steps consume a :class:`~nnunet_topkdice.pipeline.plan.ComparePlan`, the comparison resolved against
the disk once (folds, file ending, split); each step is done when its outputs are on disk, so running the
same comparison again continues where it stopped and finishes in seconds once everything is done.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.pipeline import commands, state
from nnunet_topkdice.pipeline.plan import CROSSVAL, CompareConfig, ComparePlan, resolve_plan
from nnunet_topkdice.pipeline.steps import Command, Step, file_safe

# --- steps -----------------------------------------------------------------------------------------------


def compare_steps(plan: ComparePlan) -> list[Step]:
    """The whole comparison as steps, in the order they run (see the module docstring)."""
    config = plan.config
    steps = [preprocess_step(plan)]
    if not config.test_set and not plan.split_on_disk:
        steps.append(split_step(plan))
    steps += [training_step(job) for job in training_jobs(plan)]
    if config.test_set:
        steps += [prediction_step(plan, seed) for seed in config.seeds]
    else:
        steps.append(reference_step(plan))
        steps += [collect_step(plan, name, seed) for seed in config.seeds for name in config.trainers]
    steps.append(evaluation_step(plan))
    return steps


def preprocess_step(plan: ComparePlan) -> Step:
    config = plan.config

    def done() -> str | None:
        if plan.num_training is None:
            return None
        complete = state.preprocessing_complete(
            config.preprocessed_dataset, config.plans, config.configuration, plan.num_training
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


def split_step(plan: ComparePlan) -> Step:
    """The plan's split, written once before any fold trains: the raw dataset's own ``splits_final.json``
    (the copy nnU-Net's planning makes, which finds it already there and equal), else nnU-Net's 5-fold split."""
    path = plan.config.preprocessed_dataset / state.SPLITS_FILE
    what = (f"the dataset's own split ({plan.config.raw_dataset / state.SPLITS_FILE})" if plan.split_from_raw
            else "nnU-Net's 5-fold split")  # fmt: skip

    def done() -> str | None:
        return "split exists" if path.is_file() else None

    def action(log_file: Path) -> None:
        if plan.splits is None:
            raise InputError(f"{plan.config.raw_dataset} has fewer training cases than nnU-Net's "
                             f"{state.NNUNET_NUM_FOLDS} folds")  # fmt: skip
        state.write_splits(plan.config.preprocessed_dataset, plan.splits)
        n_cases = sum(len(split["val"]) for split in plan.splits)
        log_file.write_text(f"wrote {what} of {n_cases} cases to {path}\n")

    return Step("split", f"Writing {what} to {state.SPLITS_FILE}", done, action=action)


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


def training_jobs(plan: ComparePlan) -> list[TrainingJob]:
    """Every training of the comparison: seeds, then trainers, then folds (paired results come early)."""
    config = plan.config
    jobs = []
    for seed in config.seeds:
        for name, trainer in config.trainers.items():
            for fold in plan.folds:
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


def prediction_step(plan: ComparePlan, seed: int) -> Step:
    """Every trainer's model of one seed predicts ``imagesTs``, in one process (models already done are left out)."""
    config = plan.config
    images = config.raw_dataset / "imagesTs"

    def missing(name: str) -> tuple[list[str], list[str]]:
        trainer = config.trainers[name]
        models = [config.training_dir(trainer, seed, fold) / "checkpoint_final.pth" for fold in plan.folds]
        case_ids = state.list_case_ids(images, plan.file_ending)
        out_dir = plan.predictions_dir(name, seed)
        return case_ids, state.missing_files(case_ids, out_dir, plan.file_ending, newer_than=state.newest(models))

    def done() -> str | None:
        left = {name: missing(name) for name in config.trainers}
        return "already predicted" if all(cases and not absent for cases, absent in left.values()) else None

    def command() -> Command:
        todo = {name: missing(name) for name in config.trainers}
        todo = {name: (cases, absent) for name, (cases, absent) in todo.items() if absent or not cases}
        if images.is_dir() and not state.list_case_ids(images, plan.file_ending):
            raise InputError(f"no test images in {images}")
        # Resume (keep the files there) only where no file is stale; nnU-Net skips the others.
        stale = any((plan.predictions_dir(name, seed) / (case + plan.file_ending)).exists()
                    for name, (_, absent) in todo.items() for case in absent)  # fmt: skip
        argv = commands.predict_command(
            images, [(config.trainers[name], plan.predictions_dir(name, seed)) for name in todo],
            config.dataset_id, config.configuration, plan.folds, plans=config.plans, device=config.device,
            resume=not stale and any(len(absent) < len(cases) for cases, absent in todo.values()),
        )  # fmt: skip
        seed_root = state.seed_results_root(config.folders.results, seed)
        return Command(tuple(argv), {"nnUNet_results": str(seed_root)})

    return Step(f"predict_seed{seed}", f"seed {seed}: predicting imagesTs with {', '.join(config.trainers)}",
                done, command, parallel="predict")  # fmt: skip


def _validation_sources(plan: ComparePlan, trainer: str, seed: int) -> dict[str, Path]:
    """File name -> the fold's validation prediction, for every case of the requested folds."""
    sources = {}
    for fold, cases in plan.validation_cases().items():
        validation = plan.config.training_dir(trainer, seed, fold) / "validation"
        sources.update({case + plan.file_ending: validation / (case + plan.file_ending) for case in cases})
    return sources


def collect_step(plan: ComparePlan, name: str, seed: int) -> Step:
    trainer = plan.config.trainers[name]
    out_dir = plan.predictions_dir(name, seed)
    sources = _validation_sources(plan, trainer, seed)

    def done() -> str | None:
        return "already collected" if sources and state.files_linked(sources, out_dir) else None

    def action(log_file: Path) -> None:
        absent = [str(p) for p in sources.values() if not p.is_file()]
        if not sources or absent:
            raise InputError(f"validation predictions missing for {name}, seed {seed}: {', '.join(absent[:3])}")
        state.link_files(sources, out_dir)
        log_file.write_text(f"linked {len(sources)} validation predictions into {out_dir}\n")

    title = f"{name}, seed {seed}: collecting the validation predictions of folds {' '.join(plan.folds)} into {out_dir}"
    return Step(f"collect_{file_safe(trainer)}_seed{seed}", title, done, action=action)


def reference_dir(plan: ComparePlan) -> Path:
    """The reference labels of the evaluation."""
    config = plan.config
    if config.test_set:
        return config.raw_dataset / "labelsTs"
    return config.workdir / CROSSVAL / "reference"


def reference_step(plan: ComparePlan) -> Step:
    """The labels of the cases that the requested folds validate: all of them, and only them (a split of
    one's own may leave cases of labelsTr out; an earlier run may have asked for more folds)."""
    out_dir = reference_dir(plan)
    labels = plan.config.raw_dataset / "labelsTr"
    sources = {case + plan.file_ending: labels / (case + plan.file_ending)
               for cases in plan.validation_cases().values() for case in cases}  # fmt: skip

    def done() -> str | None:
        return "already collected" if sources and state.files_linked(sources, out_dir) else None

    def action(log_file: Path) -> None:
        state.link_files(sources, out_dir)
        log_file.write_text(f"linked {len(sources)} reference labels into {out_dir}\n")

    title = f"Collecting the labels of the cases that folds {' '.join(plan.folds)} validate, from {labels}"
    return Step("collect_reference", title, done, action=action)


def images_dir(config: CompareConfig) -> Path:
    """The images of the evaluated cases, for the case pictures: imagesTs for the test set, else imagesTr."""
    return config.raw_dataset / ("imagesTs" if config.test_set else "imagesTr")


def evaluation_runs(plan: ComparePlan) -> list[tuple[str, Path]]:
    """``(name, predictions)`` per trainer and seed, a trainer's seeds next to each other."""
    return [(name, plan.predictions_dir(name, seed)) for name in plan.config.trainers for seed in plan.config.seeds]


def evaluation_step(plan: ComparePlan) -> Step:
    config = plan.config
    runs = evaluation_runs(plan)
    argv = commands.evaluate_command(
        reference_dir(plan), runs, config.dataset_id, plan.evaluation_dir,
        baseline=config.baseline_name if len(config.trainers) > 1 else None,
        paper=config.paper, num_processes=config.num_processes, images_dir=images_dir(config),
        target_difference=config.target_difference,
    )  # fmt: skip

    def stamp() -> dict:
        return state.evaluation_stamp(argv, [*(folder for _, folder in runs), reference_dir(plan)], plan.file_ending)

    def done() -> str | None:
        return "already evaluated" if state.evaluation_current(plan.evaluation_dir, stamp()) else None

    def after() -> None:
        (plan.evaluation_dir / state.EVALUATION_STAMP).write_text(json.dumps(stamp(), indent=2))

    what = "the test set" if config.test_set else "the cross-validation"
    return Step("evaluate", f"Evaluating {what}", done, lambda: Command(tuple(argv)), after=after)


#: nnU-Net's ``debug.json`` entries that say how long and how a training ran
SCHEDULE_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "initial_lr",
                 "weight_decay", "batch_size")  # fmt: skip


def schedule_warnings(plan: ComparePlan) -> list[str]:
    """One warning per trainer whose trainings pooled in the verdict (its seeds and folds) ran with different
    schedules, read from each training's ``debug.json``: a finished training is reused as it is, so a
    schedule changed between runs (its class attributes) would otherwise be pooled with the old one silently.
    Trainings without a readable ``debug.json`` are left out."""
    config = plan.config
    warnings = []
    for name, trainer in config.trainers.items():
        runs: dict[str, dict[str, str]] = {}
        for seed in config.seeds:
            for fold in plan.folds:
                try:
                    debug = json.loads((config.training_dir(trainer, seed, fold) / "debug.json").read_text())
                except (OSError, ValueError):
                    continue
                runs[f"seed {seed} fold {fold}"] = {key: str(debug.get(key)) for key in SCHEDULE_KEYS}
        differing = [key for key in SCHEDULE_KEYS if len({run[key] for run in runs.values()}) > 1]
        if not differing:
            continue
        groups: dict[str, list[str]] = {}
        for where, run in runs.items():
            groups.setdefault(", ".join(f"{key}={run[key]}" for key in differing), []).append(where)
        listed = "; ".join(f"{schedule} ({', '.join(where)})" for schedule, where in groups.items())
        warnings.append(
            f"Warning: the trainings of {name} pooled in this verdict ran with different schedules: {listed}. "
            "A finished training is reused as it is; to train it again with the current schedule, remove its "
            "fold folder (or use other -w and nnUNet_results folders)."
        )
    return warnings


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
    (after any folders the user already listed) and ``extra_env``.

    nnU-Net's folders and every folder of ``nnUNet_extTrainer`` are absolute (a relative one is taken from
    the current folder), so that the same values work in a SLURM task started elsewhere."""
    from nnunet_topkdice.ext import EXT_TRAINER_VARIABLE, environment_with_trainers

    env = environment_with_trainers(environ)
    # resolved like NnunetFolders.resolve resolves nnU-Net's folders: `export nnUNet_extTrainer=mytr` names
    # ./mytr here, but a folder relative to wherever `sbatch` or a task starts in the exported script
    ext_folders = (str(Path(folder).resolve()) for folder in env[EXT_TRAINER_VARIABLE].split(os.pathsep))
    env[EXT_TRAINER_VARIABLE] = os.pathsep.join(dict.fromkeys(ext_folders))
    env.update(config.folders.env())
    env.update(config.extra_env)
    return env


def exported_variables(config: CompareConfig, env: Mapping[str, str]) -> dict[str, str]:
    """The variables a user exports to run the printed commands by hand (or in a job script)."""
    names = [*config.folders.env(), "nnUNet_extTrainer", *config.extra_env]
    return {name: env[name] for name in names}


__all__ = [
    "CompareConfig",
    "ComparePlan",
    "TrainingJob",
    "child_environment",
    "compare_steps",
    "evaluation_runs",
    "exported_variables",
    "reference_dir",
    "resolve_plan",
    "training_jobs",
]
