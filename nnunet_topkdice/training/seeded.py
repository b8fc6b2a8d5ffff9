"""Seeded, paired training of any nnU-Net trainer, without forking nnU-Net.

:func:`seeded_trainer_class` derives from a trainer class (nnU-Net's, ours or a user's) a subclass of the
same name in which every random draw of the training is a function of the seed and a counter:

* the initial weights: the global generators are seeded from ``(seed, WEIGHTS_STREAM)`` right before
  ``initialize()`` builds the network, so trainers of the same architecture start from the same weights;
* training batch ``i`` (counted over the whole training: resumed at ``current_epoch *
  num_iterations_per_epoch``): numpy's, torch's and Python's global generators are seeded from
  ``(seed, TRAIN_BATCH_STREAM, rank, i)`` right before the loader makes it, in whichever process makes
  it (patch sampling and the batchgeneratorsv2 transforms draw from those global generators);
  validation batches get their own stream;
* the training step ``i`` (dropout, if a network has it) is seeded from ``(seed, TRAIN_STEP_STREAM,
  rank, i)``.

The seed is recorded in ``seed.json`` in the fold folder and in the configuration of nnU-Net's own loggers
(``topkdice_seed``, ``topkdice_seed_scheme``; Weights & Biases when ``nnUNet_wandb_enabled=1``).

Batches are served by batchgenerators' ``MultiThreadedAugmenter`` (one queue per worker, read in a fixed
round-robin order; worker ``t`` of ``n`` makes batches ``t, t + n, ...``) instead of nnU-Net's
``NonDetMultiThreadedAugmenter``, or in the main process with ``nnUNet_n_proc_DA=0``. The stream is
then the same for every loss, every number of workers, and across ``--c``.

:func:`train_seeded` runs the steps of nnU-Net's ``run_training`` (its own checkpoint loading and
validation) with the seeded class, in the per-seed results root of :mod:`.layout`, and records the seed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from nnunet_topkdice import nnunet_folders
from nnunet_topkdice.cpu_threads import cpu_threads
from nnunet_topkdice.environment import environment
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.ext import environment_with_trainers
from nnunet_topkdice.training.layout import (
    SEED_RECORD,
    check_not_seed_root,
    check_seed,
    fold_folder,
    read_recorded_seed,
    read_seed_record,
    seed_results_root,
    write_seed_record,
)

__all__ = [
    "SeededBatches",
    "SeededTrainerMixin",
    "run_environment",
    "seed_global_rngs",
    "seeded_trainer_class",
    "torch_device",
    "train_seeded",
]

# Independent random streams of one seed (the second word of the SeedSequence key).
WEIGHTS_STREAM, TRAIN_BATCH_STREAM, VAL_BATCH_STREAM, TRAIN_STEP_STREAM = 0, 1, 2, 3
SCHEME = "nnunet_topkdice seeded training v1"  # changes if the derivation of the streams ever changes


def seed_global_rngs(seed: int, stream: int, rank: int = 0, index: int = 0) -> None:
    """Seed numpy's legacy global generator, torch's generators (CPU and CUDA) and ``random``.

    The state comes from ``np.random.SeedSequence((seed, stream, rank, index))``, so different keys give
    unrelated streams. All arguments are integers >= 0 (``SeedSequence`` raises ValueError otherwise).
    nnU-Net's loaders and batchgeneratorsv2's transforms draw from these global generators only.
    """
    words = np.random.SeedSequence((seed, stream, rank, index)).generate_state(2)  # 2 x uint32
    np.random.seed(words)
    combined = int(words[0]) << 32 | int(words[1])
    torch.manual_seed(combined)
    random.seed(combined)


class SeededBatches:
    """Batch iterator: batch ``i`` of ``loader`` is made right after seeding the global RNGs from
    ``(seed, stream, rank, i)``.

    Inside a ``MultiThreadedAugmenter`` worker ``t`` (told by ``set_thread_id``) of ``n_workers`` makes
    batches ``first_index + t, first_index + t + n_workers, ...``, which is exactly the round-robin order
    in which the augmenter hands them out. ``loader`` is any iterator of batch dicts (nnU-Net's
    ``nnUNetDataLoader``); this object is copied into each worker process, where it counts on its own.
    """

    def __init__(self, loader: Any, seed: int, stream: int, rank: int, first_index: int, n_workers: int = 1):
        if first_index < 0 or n_workers < 1:
            raise ValueError(f"need first_index >= 0 and n_workers >= 1, got {first_index!r} and {n_workers!r}")
        self.loader = loader
        self.seed, self.stream, self.rank = check_seed(seed), stream, rank
        self.first_index, self.n_workers = first_index, n_workers
        self.thread_id = 0
        self.n_made = 0

    def set_thread_id(self, thread_id: int) -> None:
        """Called in each worker process before its first batch (batchgenerators' producer)."""
        # one torch thread per worker, as nnU-Net's own workers run (its NonDetMultiThreadedAugmenter's
        # producer): a worker forked after this process ran OpenMP work (loading a checkpoint for --c or
        # -pretrained_weights) otherwise hangs in the libgomp thread pool it inherited
        torch.set_num_threads(1)
        self.thread_id = thread_id
        if hasattr(self.loader, "set_thread_id"):
            self.loader.set_thread_id(thread_id)

    def next_index(self) -> int:
        """The index of the batch the next ``next()`` makes."""
        return self.first_index + self.thread_id + self.n_made * self.n_workers

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        seed_global_rngs(self.seed, self.stream, self.rank, self.next_index())
        self.n_made += 1
        return next(self.loader)


def _loader_and_transform(augmenter: Any) -> tuple[Any, Any]:
    """The data loader and transform inside one of batchgenerators' augmenters (others: TypeError)."""
    if isinstance(augmenter, SingleThreadedAugmenter):
        return augmenter.data_loader, augmenter.transform
    if isinstance(augmenter, (MultiThreadedAugmenter, NonDetMultiThreadedAugmenter)):
        augmenter._finish()  # its workers would draw unseeded batches
        return augmenter.generator, augmenter.transform
    raise TypeError(
        f"get_dataloaders returned a {type(augmenter).__name__}; seeded training needs one of batchgenerators' "
        "augmenters (SingleThreadedAugmenter, MultiThreadedAugmenter, NonDetMultiThreadedAugmenter)"
    )


class SeededTrainerMixin:
    """Makes an ``nnUNetTrainer`` subclass seeded (put it first in the bases; see :func:`seeded_trainer_class`).

    Adds nothing to the constructor, so nnU-Net's ``init_args`` in the checkpoint stay the trainer's own.
    """

    topkdice_seed: int = 0  # set by seeded_trainer_class
    topkdice_step: int = 0  # index of the next training step over the whole training (set each epoch)

    def initialize(self) -> None:
        first = not self.was_initialized
        if first:
            # the network is the first thing initialize() builds: its weights are a function of the seed
            seed_global_rngs(self.topkdice_seed, WEIGHTS_STREAM)
        super().initialize()
        if first:
            # nnU-Net's loggers (W&B with nnUNet_wandb_enabled=1) record the run's configuration; initialize()
            # adds its "hparas" there, the seed goes beside them
            self.logger.update_config({"topkdice_seed": self.topkdice_seed, "topkdice_seed_scheme": SCHEME})

    def get_dataloaders(self):
        # The trainer (or an override of it) builds its loaders and transforms as usual; its augmenters are
        # then replaced by seeded ones. They are not built in the main process (nnUNet_n_proc_DA=0) on purpose:
        # their warm-up batch would run OpenMP work there, and forked workers then hang in libgomp.
        n_workers = get_allowed_n_proc_DA()
        train, val = super().get_dataloaders()
        first_train = self.current_epoch * self.num_iterations_per_epoch
        first_val = self.current_epoch * self.num_val_iterations_per_epoch
        # nnU-Net gives validation half the workers
        return (
            self._seeded_augmenter(train, TRAIN_BATCH_STREAM, first_train, n_workers),
            self._seeded_augmenter(val, VAL_BATCH_STREAM, first_val, max(1, n_workers // 2) if n_workers else 0),
        )

    def _seeded_augmenter(self, augmenter: Any, stream: int, first_index: int, n_workers: int):
        loader, transform = _loader_and_transform(augmenter)
        batches = SeededBatches(loader, self.topkdice_seed, stream, self.local_rank, first_index, max(1, n_workers))
        if n_workers == 0:
            return SingleThreadedAugmenter(batches, transform)
        augmenter = MultiThreadedAugmenter(
            batches, transform, n_workers, num_cached_per_queue=2, pin_memory=self.device.type == "cuda"
        )
        # fork the workers now, as nnU-Net's warm-up batch does: the rest of on_train_start may run OpenMP work
        # in this process (a network plot on the CPU), after which forked workers can hang in libgomp
        augmenter.restart()
        return augmenter

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.topkdice_step = self.current_epoch * self.num_iterations_per_epoch

    def train_step(self, batch: dict) -> dict:
        # randomness of the step itself (dropout) does not depend on how many batches workers drew before
        seed_global_rngs(self.topkdice_seed, TRAIN_STEP_STREAM, self.local_rank, self.topkdice_step)
        self.topkdice_step += 1
        return super().train_step(batch)


def seeded_trainer_class(trainer_class: type, seed: int) -> type:
    """A subclass of ``trainer_class`` with :class:`SeededTrainerMixin` first, of the same name and module.

    The name stays, so the output folder, the checkpoint's ``trainer_name`` and ``nnUNetv2_predict -tr NAME``
    are those of the original trainer (nnU-Net finds the original class, which predicts identically).

    Raises:
        TypeError: ``trainer_class`` is not a subclass of ``nnUNetTrainer``.
        ValueError: ``seed`` is not an integer >= 0.
    """
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, nnUNetTrainer)):
        raise TypeError(f"expected a subclass of nnUNetTrainer, got {trainer_class!r}")
    namespace = {
        "topkdice_seed": check_seed(seed),
        "__module__": trainer_class.__module__,
        "__qualname__": trainer_class.__qualname__,
        "__doc__": trainer_class.__doc__,
    }
    return type(trainer_class.__name__, (SeededTrainerMixin, trainer_class), namespace)


def torch_device(name: str) -> torch.device:
    """``-device`` as ``nnUNetv2_train`` sets it up: all CPU threads for ``cpu`` (or
    ``TOPKDICE_CPU_THREADS``, the pipeline's share for each of several concurrent commands: :mod:`.cpu_threads`),
    one thread for ``cuda``.

    Raises:
        InputError: ``TOPKDICE_CPU_THREADS`` is not a positive integer.
        ValueError: an unknown device name.
    """
    if name == "cpu":
        torch.set_num_threads(cpu_threads())
        return torch.device("cpu")
    if name == "cuda":
        torch.set_num_threads(1)
        with contextlib.suppress(RuntimeError):  # refused once parallel work has started in this process
            torch.set_num_interop_threads(1)
        return torch.device("cuda")
    if name == "mps":
        return torch.device("mps")
    raise ValueError(f"device must be 'cpu', 'cuda' or 'mps', got {name!r}")


def _parse_fold(fold: int | str) -> int | str:
    if fold == "all":
        return fold
    try:
        value = int(fold)
    except (TypeError, ValueError):
        raise InputError(f"fold must be 'all' or an integer >= 0, got {fold!r}") from None
    if value < 0:
        raise InputError(f"fold must be 'all' or an integer >= 0, got {fold!r}")
    return value


def _find_trainer_class(trainer_name: str) -> type:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(trainer_name)
    except (RuntimeError, AssertionError) as e:
        raise InputError(f"trainer {trainer_name!r}: {e}") from None


def _plans_and_dataset_json(dataset_name: str, plans_identifier: str, configuration: str) -> tuple[dict, dict]:
    """The plans and dataset.json of the preprocessed dataset, as ``get_trainer_from_args`` reads them.

    Raises:
        InputError: a file is missing or the plans have no such configuration (names the file).
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json

    folder = nnunet_folders.required_folder("nnUNet_preprocessed", "seeded training") / dataset_name
    plans_file, dataset_file = folder / f"{plans_identifier}.json", folder / "dataset.json"
    for path in (plans_file, dataset_file):
        if not path.is_file():
            raise InputError(f"{path} does not exist (is the dataset preprocessed with -p {plans_identifier}?)")
    plans = load_json(str(plans_file))
    if configuration not in plans.get("configurations", {}):
        known = ", ".join(plans.get("configurations", {}))
        raise InputError(f"configuration {configuration!r} is not in {plans_file} (it has: {known})")
    config = plans["configurations"][configuration]
    while "data_identifier" not in config and config.get("inherits_from") in plans["configurations"]:
        config = plans["configurations"][config["inherits_from"]]  # as nnU-Net's ConfigurationManager merges
    data = folder / str(config.get("data_identifier", ""))
    if config.get("data_identifier") and not data.is_dir():  # planned, not preprocessed: nnU-Net fails later
        raise InputError(f"{data} does not exist: configuration {configuration!r} is planned but not preprocessed "
                         f"(nnUNetv2_preprocess -d {dataset_name} -c {configuration} -plans_name {plans_identifier})")
    return plans, load_json(str(dataset_file))


def _build_trainer(lookup: RunLookup, continue_training: bool, device: torch.device) -> nnUNetTrainer:
    """Instantiate the trainer as nnU-Net's ``get_trainer_from_args`` does, from the plans read by the lookup."""
    plans = copy.deepcopy(lookup.plans)  # nnU-Net's trainer keeps (and edits) the dict it gets
    plans["continue_training"] = continue_training
    return lookup.trainer_class(plans=plans, configuration=lookup.configuration, fold=lookup.fold,
                                dataset_json=copy.deepcopy(lookup.dataset_json), device=device)  # fmt: skip


def run_environment(results_root: Path, deterministic: bool = False, num_gpus: int = 1) -> dict[str, str]:
    """The environment variables a seeded run sets while it runs; all of them are restored afterwards.

    ``nnUNet_results`` is the per-seed root; ``nnUNet_extTrainer`` lists the user's folders, then this
    package's trainer folder; ``deterministic`` adds cuBLAS's deterministic workspace setting; DDP
    (``num_gpus > 1``) adds the rendezvous nnU-Net's ``run_training`` sets (``MASTER_ADDR`` localhost and
    a free ``MASTER_PORT`` unless the user set one).
    """
    updates = {
        "nnUNet_results": str(results_root),
        "nnUNet_extTrainer": environment_with_trainers()["nnUNet_extTrainer"],
    }
    if deterministic:
        updates["CUBLAS_WORKSPACE_CONFIG"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if num_gpus > 1:
        from nnunetv2.run.run_training import find_free_network_port

        updates["MASTER_ADDR"] = "localhost"
        updates["MASTER_PORT"] = os.environ.get("MASTER_PORT") or str(find_free_network_port())
    return updates


def _configure_cudnn(deterministic: bool) -> None:
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        # nnU-Net's own choice (benchmark: fastest kernels, chosen by timing) unless determinism is asked for
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


def _train_and_validate(trainer: nnUNetTrainer, options: TrainingOptions) -> None:
    """The part of nnU-Net's ``run_training`` after the trainer exists, with nnU-Net's own functions."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    if options.disable_checkpointing:
        trainer.disable_checkpointing = True
    maybe_load_checkpoint(trainer, options.continue_training, options.only_run_validation, options.pretrained_weights)
    _configure_cudnn(options.deterministic)
    if not options.only_run_validation:
        trainer.run_training()
    if options.val_with_best:
        trainer.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_best.pth"))
    trainer.perform_actual_validation(options.export_validation_probabilities)


def _ddp_rank(
    rank: int, world_size: int, lookup: RunLookup, trainer_name: str, seed: int, options: TrainingOptions
) -> None:
    """One DDP process (``torch.multiprocessing.spawn`` target), like nnU-Net's ``run_ddp``; ``lookup``
    comes without its trainer class, which is looked up again here by ``trainer_name``."""
    import torch.distributed as dist
    from nnunetv2.run.run_training import cleanup_ddp, setup_ddp

    setup_ddp(rank, world_size)
    torch.cuda.set_device(torch.device("cuda", dist.get_rank()))
    lookup = dataclasses.replace(lookup, trainer_class=_find_trainer_class(trainer_name))
    trainer = _build_trainer(_seeded(lookup, seed), options.continue_training, torch.device("cuda"))
    _train_and_validate(trainer, options)
    cleanup_ddp()


@dataclass(frozen=True)
class TrainingOptions:
    """What ``nnUNetv2_train``'s flags ask of one run (beside dataset, configuration, fold and trainer)."""

    continue_training: bool = False
    only_run_validation: bool = False
    pretrained_weights: str | None = None
    disable_checkpointing: bool = False
    val_with_best: bool = False
    export_validation_probabilities: bool = False
    deterministic: bool = False


@dataclass(frozen=True)
class RunLookup:
    """What nnU-Net's look-ups found for one run: the trainer class, the dataset, its plans (read once)
    and the fold folder the run writes (``trainer_class`` is None only on its way to a DDP process)."""

    trainer_class: type | None
    dataset_name: str
    configuration: str
    fold: int | str
    plans_identifier: str
    plans: dict
    dataset_json: dict
    fold_dir: Path

    @property
    def trainer_name(self) -> str:
        return self.trainer_class.__name__  # the name asked for (nnU-Net matches class names exactly)


def _check_arguments(options: TrainingOptions, num_gpus: int, device: torch.device) -> None:
    """Refuse contradictory flags, and a weights file that is not there, before anything is looked up.

    Raises:
        InputError: such a combination (named as nnUNetv2_train spells the flags), or a missing
            ``-pretrained_weights`` file (nnU-Net would fail on it only after the run folder is written).
    """
    if options.continue_training and options.only_run_validation:
        raise InputError("--c and --val cannot be combined")
    if options.continue_training and options.pretrained_weights is not None:
        raise InputError("--c and -pretrained_weights cannot be combined (pretrained weights start a training)")
    if options.val_with_best and options.disable_checkpointing:
        raise InputError("--val_best needs checkpoints, it cannot be combined with --disable_checkpointing")
    if options.pretrained_weights is not None and not Path(options.pretrained_weights).is_file():
        raise InputError(f"-pretrained_weights {options.pretrained_weights}: no such file")
    if num_gpus < 1:
        raise InputError(f"-num_gpus must be >= 1, got {num_gpus}")
    if num_gpus > 1 and device.type != "cuda":
        raise InputError(f"-num_gpus {num_gpus} (DDP) needs -device cuda, got -device {device.type}")


def _look_up(
    dataset_name_or_id: int | str,
    configuration: str,
    fold: int | str,
    trainer_name: str,
    plans_identifier: str,
    results_root: Path,
) -> RunLookup:
    """The trainer (as ``nnUNetv2_train`` finds it), the dataset, its plans and dataset.json, the fold folder.

    Raises:
        InputError: an unknown trainer or dataset, a missing plans file or configuration.
    """
    trainer_class = _find_trainer_class(trainer_name)
    dataset_name = nnunet_folders.dataset_name(dataset_name_or_id)
    plans, dataset_json = _plans_and_dataset_json(dataset_name, plans_identifier, configuration)
    fold_dir = fold_folder(results_root, dataset_name, trainer_class.__name__, plans_identifier, configuration, fold)
    return RunLookup(trainer_class, dataset_name, configuration, fold, plans_identifier, plans, dataset_json, fold_dir)


def _check_seed_record(lookup: RunLookup, seed: int, options: TrainingOptions) -> None:
    """Refuse a fold folder that holds another seed's run (or an unseeded one, to continue or validate),
    ``--c`` with another ``--deterministic`` than the run was started with, and ``--val`` without a finished
    run (nnU-Net's ``checkpoint_final.pth``) to validate.

    Raises:
        InputError: such a folder.
    """
    fold_dir = lookup.fold_dir
    record = read_seed_record(fold_dir)
    recorded = None if record is None else record["seed"]
    if recorded is not None and recorded != seed:
        raise InputError(f"{fold_dir} holds a run of seed {recorded}, not of --seed {seed}")
    if record is not None and options.continue_training:
        started = record.get("deterministic", options.deterministic)
        if bool(started) != options.deterministic:  # seed.json would misstate the continued part
            how = "with" if started else "without"
            raise InputError(f"--c: the run in {fold_dir} was started {how} --deterministic (seed.json); "
                             f"continue it {how} it")  # fmt: skip
    if options.only_run_validation and not (fold_dir / "checkpoint_final.pth").is_file():
        # nnU-Net would say "the training is not finished yet" after writing its log, also for a mistyped seed
        raise InputError(f"--val: no finished run of --seed {seed} to validate: {fold_dir / 'checkpoint_final.pth'} "
                         "does not exist")  # fmt: skip
    resumes = options.continue_training or options.only_run_validation
    if recorded is None and resumes and any(fold_dir.glob("checkpoint_*.pth")):
        raise InputError(f"{fold_dir} holds checkpoints but no {fold_dir / SEED_RECORD}: not a seeded run")


def _record_seed(lookup: RunLookup, seed: int, options: TrainingOptions) -> None:
    """Write ``seed.json`` before training starts (kept as it is when a recorded run continues)."""
    if options.continue_training and read_recorded_seed(lookup.fold_dir) is not None:
        return
    write_seed_record(lookup.fold_dir, {
        "seed": seed,
        "trainer": lookup.trainer_name,
        "plans": lookup.plans_identifier,
        "configuration": lookup.configuration,
        "fold": lookup.fold,
        "deterministic": options.deterministic,
        "scheme": SCHEME,
    })  # fmt: skip


def _seeded(lookup: RunLookup, seed: int) -> RunLookup:
    return dataclasses.replace(lookup, trainer_class=seeded_trainer_class(lookup.trainer_class, seed))


def _launch(lookup: RunLookup, seed: int, options: TrainingOptions, num_gpus: int, device: torch.device) -> None:
    """Train and validate in this process, or in one process per GPU (DDP) as nnU-Net's ``run_training``."""
    if num_gpus > 1:
        import torch.multiprocessing as mp

        # an external trainer's module may not import by name in a new process: send the name, not the class
        sent = dataclasses.replace(lookup, trainer_class=None)
        mp.spawn(_ddp_rank, args=(num_gpus, sent, lookup.trainer_name, seed, options), nprocs=num_gpus, join=True)
        return
    trainer = _build_trainer(_seeded(lookup, seed), options.continue_training, device)
    if Path(trainer.output_folder) != lookup.fold_dir:
        raise RuntimeError(f"nnU-Net trains into {trainer.output_folder}, expected {lookup.fold_dir}")
    _train_and_validate(trainer, options)


def train_seeded(
    dataset_name_or_id: int | str,
    configuration: str,
    fold: int | str,
    *,
    seed: int,
    trainer_name: str = "nnUNetTrainer",
    plans_identifier: str = "nnUNetPlans",
    pretrained_weights: str | None = None,
    num_gpus: int = 1,
    export_validation_probabilities: bool = False,
    continue_training: bool = False,
    only_run_validation: bool = False,
    disable_checkpointing: bool = False,
    val_with_best: bool = False,
    device: torch.device | str = "cuda",
    deterministic: bool = False,
) -> Path:
    """Train (and validate) like nnU-Net's ``run_training`` with the seeded trainer; returns the fold folder.

    The arguments are ``run_training``'s, plus ``seed`` and ``deterministic`` (cuDNN's deterministic
    kernels and ``torch.use_deterministic_algorithms(warn_only=True)``). The run goes to
    ``seed_results_root($nnUNet_results, seed)``; the trainer is looked up like ``nnUNetv2_train`` does, with
    this package's trainer folder added to ``nnUNet_extTrainer``. The seed is written to ``seed.json`` in
    the fold folder before training starts.

    Raises:
        InputError: a bad or contradictory argument, nnU-Net folders not set, ``nnUNet_results`` that is a
            seed's root already (``.../seed_<S>``), an unknown trainer or dataset, a missing plans file, or a
            fold folder that holds a run of another seed (or an unseeded run, for
            ``continue_training`` / ``only_run_validation``). Nothing is written in these cases.
    """
    seed = check_seed(seed)
    fold = _parse_fold(fold)
    device = torch.device(device) if isinstance(device, str) else device
    options = TrainingOptions(
        continue_training=continue_training, only_run_validation=only_run_validation,
        pretrained_weights=pretrained_weights, disable_checkpointing=disable_checkpointing,
        val_with_best=val_with_best, export_validation_probabilities=export_validation_probabilities,
        deterministic=deterministic,
    )  # fmt: skip
    _check_arguments(options, num_gpus, device)
    # nnUNet_results set to a seed's root for nnUNetv2_predict would put this run in .../seed_S/seed_S
    results = check_not_seed_root(nnunet_folders.required_folder("nnUNet_results", "seeded training"))
    results_root = seed_results_root(results, seed)
    nnunet_folders.required_folder("nnUNet_preprocessed", "seeded training")
    with environment(run_environment(results_root, deterministic, num_gpus)):
        lookup = _look_up(dataset_name_or_id, configuration, fold, trainer_name, plans_identifier,
                          results_root)  # fmt: skip
        _check_seed_record(lookup, seed, options)
        if not only_run_validation:
            _record_seed(lookup, seed, options)
        _launch(lookup, seed, options, num_gpus, device)
    return lookup.fold_dir
