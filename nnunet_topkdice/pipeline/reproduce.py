"""The paper's protocol as a resumable pipeline of nnU-Net's own commands.

Steps: convert the dataset -> ``nnUNetv2_plan_and_preprocess`` (2d) -> ``nnUNetv2_train`` for every
trainer -> ``nnUNetv2_predict`` on the test images -> ``topkdice evaluate`` -> print the table.

Every step looks at what is already on disk first and does only the missing work, so running the
pipeline twice does nothing the second time, and an interrupted training is resumed with
nnU-Net's ``--c``. The commands are built by pure functions (``*_command``) that return the argv a
user would type; the runner (:func:`run_pipeline`) prints each one before running it, so any step
can be rerun by hand.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from nnunet_topkdice.errors import InputError

CONFIGURATION = "2d"  # the paper trains 2D networks on slices
PLANS = "nnUNetPlans"
# Files `evaluate_runs` writes (nnunet_topkdice.evaluation).
EVALUATION_FILES: tuple[str, ...] = ("results.json", "table.md", "table.csv", "figure.png")
_STAMP = ".topkdice_pipeline.json"  # records what the evaluation in a folder was run on


@dataclass(frozen=True)
class PaperDataset:
    """A dataset of the paper's experiments and the protocol choices that depend on it."""

    dataset_id: int  # the id our converter uses by default
    default_fold: str  # "all": no validation set in the paper; "0": the converter's split file
    topk_k: int  # k of topK CE and topK-Dice in the paper (section 3.3)


PAPER_DATASETS: dict[str, PaperDataset] = {
    "synapse": PaperDataset(201, "all", 50),
    "acdc": PaperDataset(202, "0", 50),
    "msseg": PaperDataset(203, "all", 30),
}


def paper_trainers(dataset: str, schedule: str, rows: Sequence[str] | None = None) -> dict[str, str]:
    """The trainers of the paper's table for a dataset: ``{row name: trainer class name}``.

    Picks the paper's k for the dataset (k=50 for Synapse and ACDC, k=30 for MSSEG) from
    ``nnunet_topkdice.trainers.PAPER_ROWS``; ``rows`` limits and orders the rows (default: all).

    Raises:
        InputError: unknown dataset, schedule or row.
    """
    from nnunet_topkdice.trainers import PAPER_ROWS, paper_trainer

    if dataset not in PAPER_DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; choose from {', '.join(PAPER_DATASETS)}")
    try:
        return {row: paper_trainer(row, schedule, PAPER_DATASETS[dataset].topk_k) for row in rows or PAPER_ROWS}
    except ValueError as e:
        raise InputError(str(e)) from None


# --------------------------------------------------------------------------------------------
# Pure command builders: each returns the argv a user would type (executables by their name).
# --------------------------------------------------------------------------------------------


def convert_command(dataset: str, source: Path, raw_root: Path, dataset_id: int, num_processes: int) -> list[str]:
    """``topkdice convert DATASET -i SOURCE -o RAW_ROOT -d ID -np N``."""
    return [
        "topkdice", "convert", dataset, "-i", str(source), "-o", str(raw_root),
        "-d", str(dataset_id), "-np", str(num_processes),
    ]  # fmt: skip


def plan_command(dataset_id: int, num_processes: int) -> list[str]:
    """``nnUNetv2_plan_and_preprocess`` for the 2d configuration only, with the integrity check."""
    n = str(num_processes)
    return [
        "nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", CONFIGURATION,
        "-np", n, "-npfp", n, "--verify_dataset_integrity",
    ]  # fmt: skip


def train_command(
    dataset_id: int, fold: str, trainer: str, device: str, *, num_gpus: int = 1, resume: bool = False
) -> list[str]:
    """``nnUNetv2_train ID 2d FOLD -tr TRAINER -device DEVICE [-num_gpus N] [--c]``."""
    argv = ["nnUNetv2_train", str(dataset_id), CONFIGURATION, fold, "-tr", trainer, "-device", device]
    if num_gpus > 1:
        argv += ["-num_gpus", str(num_gpus)]
    if resume:
        argv.append("--c")
    return argv


def predict_command(
    images_dir: Path,
    out_dir: Path,
    dataset_id: int,
    fold: str,
    trainer: str,
    device: str,
    *,
    num_processes: int,
    resume: bool = False,
) -> list[str]:
    """``nnUNetv2_predict -i IMAGES -o OUT -d ID -c 2d -f FOLD -tr TRAINER -device DEVICE``.

    ``resume`` adds ``--continue_prediction`` (nnU-Net then skips cases already predicted).
    """
    n = str(num_processes)
    argv = [
        "nnUNetv2_predict", "-i", str(images_dir), "-o", str(out_dir), "-d", str(dataset_id),
        "-c", CONFIGURATION, "-f", fold, "-tr", trainer, "-device", device, "-npp", n, "-nps", n,
    ]  # fmt: skip
    if resume:
        argv.append("--continue_prediction")
    return argv


def evaluate_command(
    labels_dir: Path,
    runs: Mapping[str, Path],
    dataset_id: int,
    out_dir: Path,
    *,
    paper: str | None,
    num_processes: int,
) -> list[str]:
    """``topkdice evaluate -r LABELS -p NAME=PRED [NAME=PRED ...] -d ID -o OUT -np N [--paper DATASET]``."""
    # One -p with every run: `topkdice evaluate -p` takes several values (a second -p would replace them).
    argv = ["topkdice", "evaluate", "-r", str(labels_dir), "-p"]
    argv += [f"{name}={predictions}" for name, predictions in runs.items()]
    argv += ["-d", str(dataset_id), "-o", str(out_dir), "-np", str(num_processes)]
    if paper is not None:
        argv += ["--paper", paper]
    return argv


def gpu_slots(gpus: Sequence[str], num_gpus: int) -> list[str]:
    """Split the GPU ids into groups of ``num_gpus``, one group per concurrent training.

    ``gpu_slots(["0", "1", "2", "3"], 2) == ["0,1", "2,3"]``; GPUs left over are not used.

    Raises:
        InputError: fewer GPUs than ``num_gpus`` or ``num_gpus < 1``.
    """
    if num_gpus < 1:
        raise InputError(f"--num-gpus must be >= 1, got {num_gpus}")
    if len(gpus) < num_gpus:
        raise InputError(f"--gpus lists {len(gpus)} GPU(s) but --num-gpus asks for {num_gpus} per training")
    n_slots = len(gpus) // num_gpus
    return [",".join(gpus[i * num_gpus : (i + 1) * num_gpus]) for i in range(n_slots)]


# --------------------------------------------------------------------------------------------
# What is already on disk.
# --------------------------------------------------------------------------------------------


class TrainingStatus(Enum):
    NEW = "new"  # nothing to resume from
    INTERRUPTED = "interrupted"  # a checkpoint to resume from with --c
    DONE = "done"  # checkpoint_final.pth exists


def find_dataset(root: Path, dataset_id: int) -> Path | None:
    """The ``DatasetXXX_Name`` folder of ``dataset_id`` under ``root``, or None.

    Raises:
        InputError: two folders share the id (nnU-Net would refuse them too).
    """
    matches = sorted(p for p in Path(root).glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
    if len(matches) > 1:
        raise InputError(f"several datasets with id {dataset_id} in {root}: {', '.join(p.name for p in matches)}")
    return matches[0] if matches else None


def preprocessing_complete(preprocessed_dataset: Path, num_training: int) -> bool:
    """True when the 2d plans exist and every training case was preprocessed.

    nnU-Net writes a ``.pkl`` of properties per case, after its arrays, so counting them tells
    whether an interrupted preprocessing finished.
    """
    data_dir = preprocessed_dataset / f"{PLANS}_{CONFIGURATION}"
    if not (preprocessed_dataset / f"{PLANS}.json").is_file() or not data_dir.is_dir():
        return False
    return len(list(data_dir.glob("*.pkl"))) >= num_training


def training_dir(results_dataset: Path, trainer: str, fold: str) -> Path:
    """nnU-Net's output folder of one training."""
    return results_dataset / f"{trainer}__{PLANS}__{CONFIGURATION}" / f"fold_{fold}"


def training_status(run_dir: Path) -> TrainingStatus:
    """DONE with ``checkpoint_final.pth``; INTERRUPTED with a checkpoint nnU-Net's ``--c`` resumes
    from (``checkpoint_latest.pth``, else ``checkpoint_best.pth``); NEW otherwise."""
    if (run_dir / "checkpoint_final.pth").is_file():
        return TrainingStatus.DONE
    if (run_dir / "checkpoint_latest.pth").is_file() or (run_dir / "checkpoint_best.pth").is_file():
        return TrainingStatus.INTERRUPTED
    return TrainingStatus.NEW


def list_case_ids(images_dir: Path, file_ending: str) -> list[str]:
    """Case ids of an nnU-Net images folder (files ``<case>_0000<file_ending>``)."""
    suffix = "_0000" + file_ending
    return sorted(p.name.removesuffix(suffix) for p in images_dir.glob("*" + suffix))


def missing_predictions(case_ids: Sequence[str], pred_dir: Path, file_ending: str, checkpoint: Path) -> list[str]:
    """The cases without a prediction made from the current checkpoint (older files are stale)."""
    newer_than = checkpoint.stat().st_mtime if checkpoint.is_file() else 0.0
    missing = []
    for case in case_ids:
        path = pred_dir / (case + file_ending)
        if not path.is_file() or path.stat().st_mtime < newer_than:
            missing.append(case)
    return missing


# --------------------------------------------------------------------------------------------
# Running commands.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One command of the pipeline: the argv a user types, plus per-command environment."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES
    name: str = ""  # short name for log files and messages (a trainer name)

    def shell(self) -> str:
        """The command as one shell line, environment assignments first."""
        prefix = [f"{key}={shlex.quote(value)}" for key, value in self.env.items()]
        return " ".join([*prefix, shlex.join(self.argv)])


def resolve_executable(name: str) -> list[str]:
    """The argv prefix that runs console script ``name`` from the current Python environment.

    Scripts are looked up next to the running interpreter first (``.venv/bin/topkdice demo``
    works without activating the virtualenv), then on PATH. ``topkdice`` falls back to
    ``python -m nnunet_topkdice.cli``.

    Raises:
        InputError: the script is nowhere to be found.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    on_path = shutil.which(name)
    if on_path is not None:
        return [on_path]
    if name == "topkdice":
        return [sys.executable, "-m", "nnunet_topkdice.cli"]
    raise InputError(f"{name} not found next to {sys.executable} nor on PATH; is nnunetv2 installed?")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _child_stdout() -> int | None:
    # nnU-Net's chatter is diagnostics: send it to our stderr so that stdout carries only results.
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced (e.g. captured in tests)
        return None


def run_commands(
    commands: Sequence[Command],
    env: Mapping[str, str],
    *,
    slots: Sequence[Mapping[str, str]] = (),
    log_dir: Path | None = None,
) -> None:
    """Run commands, printing each first; sequentially, or concurrently with one per slot.

    Args:
        commands: what to run.
        env: the full environment of the children (each command's own ``env`` is added).
        slots: per-slot environment (``{"CUDA_VISIBLE_DEVICES": "0"}``, ...); with two or more
            slots the commands run concurrently, each writing to ``log_dir/<name>.log``.
        log_dir: where concurrent commands log.

    Raises:
        subprocess.CalledProcessError: a command failed (concurrent runs finish the others first).
    """
    if len(slots) < 2 or len(commands) < 2:
        slot_env = dict(slots[0]) if slots else {}
        for command in commands:
            command = Command(command.argv, {**command.env, **slot_env}, command.name)
            _log(f"$ {command.shell()}")
            argv = resolve_executable(command.argv[0]) + list(command.argv[1:])
            subprocess.run(argv, env={**env, **command.env}, stdout=_child_stdout(), check=True)
        return
    _run_concurrently(commands, env, slots, log_dir or Path("."))


def _run_concurrently(
    commands: Sequence[Command], env: Mapping[str, str], slots: Sequence[Mapping[str, str]], log_dir: Path
) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = list(commands)
    free = list(range(len(slots)))
    running: dict[int, tuple[subprocess.Popen, Command, float]] = {}
    failures: list[subprocess.CalledProcessError] = []
    try:
        while pending or running:
            while pending and free:
                slot = free.pop(0)
                command = pending.pop(0)
                command = Command(command.argv, {**command.env, **slots[slot]}, command.name)
                log_file = log_dir / f"{command.name or command.argv[0]}.log"
                _log(f"$ {command.shell()}\n  (running in the background, output in {log_file})")
                argv = resolve_executable(command.argv[0]) + list(command.argv[1:])
                with open(log_file, "a") as log:
                    process = subprocess.Popen(argv, env={**env, **command.env}, stdout=log, stderr=log)
                running[slot] = (process, command, time.monotonic())
            time.sleep(1.0)
            for slot, (process, command, started) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[slot]
                free.append(slot)
                minutes = (time.monotonic() - started) / 60
                if process.returncode == 0:
                    _log(f"finished after {minutes:.1f} min: {command.name or command.shell()}")
                else:
                    _log(f"FAILED (exit code {process.returncode}) after {minutes:.1f} min: {command.shell()}")
                    failures.append(subprocess.CalledProcessError(process.returncode, command.shell()))
    finally:
        for process, _, _ in running.values():  # only reached with processes left on an exception
            process.terminate()
        for process, _, _ in running.values():
            process.wait()
    if failures:
        raise failures[0]


# --------------------------------------------------------------------------------------------
# The pipeline.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NnunetFolders:
    """nnU-Net's three data folders, from the environment or, where unset, under a work dir."""

    raw: Path
    preprocessed: Path
    results: Path
    from_environment: tuple[str, ...]  # which variables were already set

    @classmethod
    def resolve(cls, workdir: Path, environ: Mapping[str, str] | None = None) -> NnunetFolders:
        environ = os.environ if environ is None else environ
        paths = {}
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            paths[var] = Path(environ[var]) if environ.get(var) else (workdir / var).resolve()
        set_vars = tuple(v for v in paths if environ.get(v))
        return cls(paths["nnUNet_raw"], paths["nnUNet_preprocessed"], paths["nnUNet_results"], set_vars)

    def env(self) -> dict[str, str]:
        return {
            "nnUNet_raw": str(self.raw),
            "nnUNet_preprocessed": str(self.preprocessed),
            "nnUNet_results": str(self.results),
        }


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one pipeline run needs; see :func:`run_pipeline`.

    ``trainers`` maps the name shown in the table to the trainer class; ``source`` is the input
    of the converter (needed only while the dataset is not converted yet); ``gpus`` are GPU ids,
    split by :func:`gpu_slots` into one CUDA_VISIBLE_DEVICES group of ``num_gpus`` per concurrent
    training; ``extra_env`` is added to the
    environment of every command, ``train_env`` to that of ``nnUNetv2_train`` only (shown in front
    of the printed command).
    """

    dataset: str
    dataset_id: int
    trainers: Mapping[str, str]
    fold: str
    device: str
    workdir: Path
    folders: NnunetFolders
    source: Path | None = None
    num_processes: int = 1
    gpus: tuple[str, ...] = ()
    num_gpus: int = 1
    paper: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    train_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def predictions_root(self) -> Path:
        return self.workdir / "predictions" / f"fold_{self.fold}"

    @property
    def evaluation_dir(self) -> Path:
        return self.workdir / "evaluation" / f"fold_{self.fold}"


@dataclass
class PipelineResult:
    """What a run produced and how much it did (``commands_run == 0``: nothing was left to do)."""

    raw_dataset: Path
    table: str
    commands_run: int = 0


def child_environment(config: PipelineConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the pipeline's commands: nnU-Net's folders, our trainers added to
    ``nnUNet_extTrainer`` (after any folders the user already listed), and ``extra_env``."""
    from nnunet_topkdice.ext import environment_with_trainers

    env = environment_with_trainers(environ)
    env.update(config.folders.env())
    env.update(config.extra_env)
    return env


class _Progress:
    def __init__(self, total: int, first: int = 1) -> None:
        self.total = total
        self.index = first - 1

    def step(self, title: str) -> None:
        self.index += 1
        _log(f"\n[{self.index}/{self.total}] {title}")


def run_pipeline(config: PipelineConfig, *, first_step: int = 1, total_steps: int | None = None) -> PipelineResult:
    """Convert, preprocess, train, predict and evaluate, skipping whatever is already done.

    Progress ("[3/5] Training ...") and every command go to stderr; nnU-Net's own output too.
    ``first_step``/``total_steps`` let a caller (the demo) number its own steps before these five.

    Returns:
        The converted dataset folder, the markdown table and how many commands had to run.

    Raises:
        InputError: the dataset is not converted and ``config.source`` is missing or not a folder.
        subprocess.CalledProcessError: an nnU-Net command failed.
    """
    total = total_steps if total_steps is not None else first_step + 4
    progress = _Progress(total, first_step)
    env = child_environment(config)
    unset = [var for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
             if var not in config.folders.from_environment]  # fmt: skip
    if unset:
        _log(f"{', '.join(unset)} not set: using folders in {config.workdir}")
    exported = [*config.folders.env(), "nnUNet_extTrainer", *config.extra_env]
    _log("To run the commands below by hand, first: export " + " ".join(f"{k}={shlex.quote(env[k])}" for k in exported))
    commands_run = 0

    def run(commands: Sequence[Command], **kwargs) -> None:
        nonlocal commands_run
        run_commands(commands, env, **kwargs)
        commands_run += len(commands)

    # 1. Conversion.
    progress.step(f"Converting {config.dataset} into nnU-Net's raw format")
    raw_dataset = find_dataset(config.folders.raw, config.dataset_id)
    if raw_dataset is not None and (raw_dataset / "dataset.json").is_file():
        _log(f"skipped: already converted: {raw_dataset}")
    else:
        if config.source is None:
            raise InputError(f"dataset {config.dataset_id} is not in {config.folders.raw} yet: give its source with -i")
        if not config.source.is_dir():
            raise InputError(f"-i {config.source}: not a folder")
        argv = convert_command(
            config.dataset, config.source, config.folders.raw, config.dataset_id, config.num_processes
        )
        run([Command(tuple(argv))])
        raw_dataset = find_dataset(config.folders.raw, config.dataset_id)
        if raw_dataset is None:
            raise InputError(f"the converter wrote no Dataset{config.dataset_id:03d}_* in {config.folders.raw}")
    dataset_json = json.loads((raw_dataset / "dataset.json").read_text())
    file_ending = dataset_json["file_ending"]

    # 2. Planning and preprocessing.
    progress.step("Planning and preprocessing (2d)")
    preprocessed = config.folders.preprocessed / raw_dataset.name
    if preprocessing_complete(preprocessed, int(dataset_json["numTraining"])):
        _log(f"skipped: already preprocessed: {preprocessed}")
    else:
        run([Command(tuple(plan_command(config.dataset_id, config.num_processes)))])

    # 3. Training.
    slots = [{"CUDA_VISIBLE_DEVICES": ids} for ids in gpu_slots(config.gpus, config.num_gpus)] if config.gpus else []
    progress.step(f"Training {len(config.trainers)} trainer(s), fold {config.fold}")
    results = config.folders.results / raw_dataset.name
    to_train = []
    for trainer in config.trainers.values():
        status = training_status(training_dir(results, trainer, config.fold))
        if status is TrainingStatus.DONE:
            _log(f"skipped: already trained: {trainer} ({training_dir(results, trainer, config.fold)})")
            continue
        if status is TrainingStatus.INTERRUPTED:
            _log(f"resuming the interrupted training of {trainer} (--c)")
        argv = train_command(
            config.dataset_id, config.fold, trainer, config.device,
            num_gpus=config.num_gpus, resume=status is TrainingStatus.INTERRUPTED,
        )  # fmt: skip
        to_train.append(Command(tuple(argv), dict(config.train_env), name=f"train_{trainer}"))
    run(to_train, slots=slots, log_dir=config.workdir / "logs")

    # 4. Prediction of the test set.
    progress.step("Predicting the test set")
    images_ts = raw_dataset / "imagesTs"
    case_ids = list_case_ids(images_ts, file_ending)
    if not case_ids:
        raise InputError(f"no test images in {images_ts}")
    to_predict = []
    runs: dict[str, Path] = {}
    for name, trainer in config.trainers.items():
        pred_dir = config.predictions_root / trainer
        runs[name] = pred_dir
        checkpoint = training_dir(results, trainer, config.fold) / "checkpoint_final.pth"
        missing = missing_predictions(case_ids, pred_dir, file_ending, checkpoint)
        if not missing:
            _log(f"skipped: already predicted: {trainer} ({pred_dir})")
            continue
        # An interrupted prediction (only absent cases missing, no stale ones): let nnU-Net skip the others.
        stale = [case for case in missing if (pred_dir / (case + file_ending)).exists()]
        resume = not stale and len(missing) < len(case_ids)
        argv = predict_command(
            images_ts, pred_dir, config.dataset_id, config.fold, trainer, config.device,
            num_processes=config.num_processes, resume=resume,
        )  # fmt: skip
        to_predict.append(Command(tuple(argv), name=f"predict_{trainer}"))
    # Prediction is short: one slot per command, first GPU of each slot.
    predict_slots = [{"CUDA_VISIBLE_DEVICES": s["CUDA_VISIBLE_DEVICES"].split(",")[0]} for s in slots]
    run(to_predict, slots=predict_slots, log_dir=config.workdir / "logs")

    # 5. Evaluation.
    progress.step("Evaluating the test predictions")
    argv = evaluate_command(
        raw_dataset / "labelsTs", runs, config.dataset_id, config.evaluation_dir,
        paper=config.paper, num_processes=config.num_processes,
    )  # fmt: skip
    stamp = {"command": argv, "newest_prediction": _newest_mtime(runs.values(), file_ending)}
    stamp_file = config.evaluation_dir / _STAMP
    if _evaluation_current(config.evaluation_dir, stamp):
        _log(f"skipped: already evaluated: {config.evaluation_dir}")
    else:
        run([Command(tuple(argv))])
        stamp_file.write_text(json.dumps(stamp, indent=2))

    table = (config.evaluation_dir / "table.md").read_text()
    return PipelineResult(raw_dataset, table, commands_run)


def _newest_mtime(folders: Iterable[Path], file_ending: str) -> float:
    return max((p.stat().st_mtime for folder in folders for p in Path(folder).glob("*" + file_ending)), default=0.0)


def _evaluation_current(out_dir: Path, stamp: dict) -> bool:
    stamp_file = out_dir / _STAMP
    if not stamp_file.is_file() or not all((out_dir / name).is_file() for name in EVALUATION_FILES):
        return False
    try:
        return json.loads(stamp_file.read_text()) == stamp
    except json.JSONDecodeError:
        return False


def print_summary(result: PipelineResult, config: PipelineConfig) -> None:
    """The table, the figure and where the files are, on stdout."""
    out = config.evaluation_dir
    print(result.table.rstrip())
    print()
    print(f"Figure:      {out / 'figure.png'}")
    print(f"Tables:      {out / 'table.md'}, {out / 'table.csv'}, {out / 'results.json'}")
    print(f"Predictions: {config.predictions_root}/<trainer>")
    print(f"Models:      {config.folders.results / result.raw_dataset.name}/<trainer>__{PLANS}__{CONFIGURATION}")
    print(f"Dataset:     {result.raw_dataset}")
    if result.commands_run == 0:
        _log("Nothing left to do: every step had already been done.")
