"""``topkdice compare``, ``topkdice reproduce`` and ``topkdice demo``."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_topkdice.argtypes import dataset_id, dice_difference, non_negative_int, positive_int
from nnunet_topkdice.cpu_threads import cpu_cores
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.paper_datasets import PAPER_DATASET_KEYS
from nnunet_topkdice.pipeline.commands import NNUNET_DEFAULT_NUM_PROCESSES

FOLD_CHOICES = ("all", "0", "1", "2", "3", "4")
DEVICE_CHOICES = ("cuda", "cpu", "mps")
SCHEDULE_CHOICES = ("nnunet", "paper")
DEFAULT_NUM_PROCESSES = min(NNUNET_DEFAULT_NUM_PROCESSES, cpu_cores())  # nnU-Net's default, fewer on fewer cores
MIN_SEEDS_FOR_A_VERDICT = 3  # SPEC 6.3: fewer repeats give "one repeat" or "exploratory"


def _gpu_list(text: str) -> tuple[str, ...]:
    """``"0,1,2,3"`` -> ``("0", "1", "2", "3")``: distinct non-negative integers."""
    ids = tuple(part.strip() for part in text.split(","))
    if not all(part.isdigit() for part in ids) or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"expected distinct GPU ids separated by commas (e.g. 0,1,2,3), got {text!r}")
    return ids


def _fold(text: str) -> str:
    return str(non_negative_int(text))


def gpu_slots(gpus: tuple[str, ...], num_gpus: int) -> tuple[str, ...]:
    """Split the GPU ids into groups of ``num_gpus``, one group per concurrent training.

    ``gpu_slots(("0", "1", "2", "3"), 2) == ("0,1", "2,3")``; GPUs left over are not used.

    Raises:
        InputError: fewer GPUs than ``num_gpus`` or ``num_gpus < 1``.
    """
    if num_gpus < 1:
        raise InputError(f"--num-gpus must be >= 1, got {num_gpus}")
    if len(gpus) < num_gpus:
        raise InputError(f"--gpus lists {len(gpus)} GPU(s) but --num-gpus asks for {num_gpus} per training")
    return tuple(",".join(gpus[i * num_gpus : (i + 1) * num_gpus]) for i in range(len(gpus) // num_gpus))


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _device(args: argparse.Namespace) -> str:
    """``--device``; by default ``cuda`` for a SLURM script (it trains on the cluster's GPU nodes, not on the
    machine that writes it), else cuda when this machine has one, else cpu."""
    device = args.device or ("cuda" if getattr(args, "emit_slurm", None) else _default_device())
    if (getattr(args, "gpus", None) or getattr(args, "num_gpus", 1) > 1) and device != "cuda":
        raise InputError(f"--gpus and --num-gpus need --device cuda, got --device {device}")
    return device


#: Options of how a call runs, not of what it computes: the collect command leaves them out.
MODE_OPTIONS = ("emit_slurm", "slurm_header", "dry_run", "verbose")


def same_call(prog: str, args: argparse.Namespace) -> str:
    """The command line of this call without ``--dry-run``/``--emit-slurm``, options in a fixed order.

    Written from the parsed values of the options the subcommand recorded (``args.call_options``, see
    :class:`_Options`): each option that differs from its default, under its first spelling.
    """
    argv = ["topkdice", prog]
    for action in args.call_options:
        value = getattr(args, action.dest)
        if action.dest in MODE_OPTIONS or value is None or value is False or value == action.default:
            continue
        flag = action.option_strings[0]  # as declared: the short alias where there is one
        if action.nargs == 0:
            argv.append(flag)
        elif action.dest == "gpus":  # parsed into a tuple of ids, given as one comma-separated word
            argv += [flag, ",".join(value)]
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return shlex.join(argv)


@dataclass(frozen=True)
class _Options:
    """Adds a subcommand's options and keeps the actions ``add_argument`` returns, so that
    :func:`same_call` can write the call again from the parsed values."""

    container: Any  # the subcommand's parser or one of its mutually exclusive groups
    actions: list[argparse.Action] = field(default_factory=list)

    def add(self, *flags: str, **kwargs: Any) -> argparse.Action:
        action = self.container.add_argument(*flags, **kwargs)
        self.actions.append(action)
        return action

    def exclusive(self) -> _Options:
        """A mutually exclusive group whose options are recorded with the others."""
        return _Options(self.container.add_mutually_exclusive_group(), self.actions)

    def finish(self, **defaults: Any) -> None:
        """Set the subcommand's defaults (``func``) and the recorded options."""
        self.container.set_defaults(call_options=tuple(self.actions), **defaults)


def cpu_jobs(args: argparse.Namespace, device: str, default: int = 1) -> int:
    """``--cpu-jobs``, else ``default`` on the CPU (1 on a GPU or in a SLURM script).

    Raises:
        InputError: ``--cpu-jobs`` without ``--device cpu``, or with ``--emit-slurm``.
    """
    if args.cpu_jobs is None:
        return default if device == "cpu" and args.emit_slurm is None else 1
    if device != "cpu":
        raise InputError(f"--cpu-jobs needs --device cpu, got --device {device} (on GPUs: --gpus)")
    if args.emit_slurm is not None:
        raise InputError("--cpu-jobs runs trainings side by side here; a SLURM script runs one per array task")
    return args.cpu_jobs


def _invocation(prog: str, args: argparse.Namespace, device: str, default_cpu_jobs: int = 1):
    from nnunet_topkdice.pipeline.session import Invocation
    from nnunet_topkdice.pipeline.slurm import read_slurm_header

    if args.slurm_header is not None and args.emit_slurm is None:
        raise InputError("--slurm-header is for --emit-slurm FILE")
    return Invocation(
        dry_run=args.dry_run,
        emit_slurm=args.emit_slurm.resolve() if args.emit_slurm else None,
        verbose=args.verbose,
        gpu_slots=gpu_slots(args.gpus, args.num_gpus) if args.gpus else (),
        cpu_jobs=cpu_jobs(args, device, default_cpu_jobs),
        collect_command=same_call(prog, args),
        slurm_header=read_slurm_header(args.slurm_header) if args.slurm_header else (),
        n_proc_da=args.n_proc_da,
    )


def _train_env(args: argparse.Namespace, device: str) -> dict[str, str]:
    """The trainings' own variables: the device's defaults, and ``--n-proc-da`` where given."""
    from nnunet_topkdice.pipeline.compare import default_train_env

    env = default_train_env(device)
    if args.n_proc_da is not None:
        env["nnUNet_n_proc_DA"] = str(args.n_proc_da)
    return env


def _raw_dataset(dataset: str, workdir: Path | None) -> tuple[int, Path]:
    """``(dataset id, its raw folder)``: looked for in ``$nnUNet_raw``, or where that is unset in
    ``./nnUNet_raw`` and then ``WORKDIR/nnUNet_raw``.

    Raises:
        InputError: not found (naming every folder looked in, and where to put it).
    """
    from nnunet_topkdice.pipeline.state import NnunetFolders, locate_raw_dataset, parse_dataset, raw_roots

    dataset_number, name = parse_dataset(dataset)
    folders = NnunetFolders.resolve(workdir or Path("."))
    _, raw = locate_raw_dataset(folders, dataset_number, name)
    if raw is None:
        roots = " or ".join(str(root) for root in raw_roots(folders))
        hint = ""
        if "nnUNet_raw" not in folders.from_environment:
            hint = (f"; nnUNet_raw is not set: put the dataset in {Path('nnUNet_raw').resolve()}/"
                    f"{name or f'Dataset{dataset_number:03d}_NAME'} or export nnUNet_raw")  # fmt: skip
        raise InputError(f"-d {dataset}: no such dataset with a dataset.json in {roots}{hint}")
    return dataset_number, raw


def warn_few_seeds(prog: str, seeds: Sequence[int]) -> None:
    """On stderr: fewer than 3 seeds cannot give a verdict about the loss (SPEC 6.3)."""
    if len(seeds) >= MIN_SEEDS_FOR_A_VERDICT:
        return
    what = ("one trained model per method: the verdict describes these models, not the loss" if len(seeds) == 1
            else "two seeds cannot separate the loss from seed variability: the verdict is exploratory")
    print(f"topkdice {prog}: warning: {len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({what}); give "
          f"--seeds with {MIN_SEEDS_FOR_A_VERDICT} or more (e.g. --seeds 0 1 2) for a verdict",
          file=sys.stderr)  # fmt: skip


def _compare_command(args: argparse.Namespace) -> int:
    from nnunet_topkdice.pipeline.compare import CompareConfig
    from nnunet_topkdice.pipeline.prechecks import check_distinct_trainers
    from nnunet_topkdice.pipeline.session import run_session
    from nnunet_topkdice.pipeline.state import NnunetFolders

    device = _device(args)
    check_distinct_trainers(args.trainers)
    dataset_number, raw = _raw_dataset(args.dataset, args.workdir)
    if args.test_set and not ((raw / "imagesTs").is_dir() and (raw / "labelsTs").is_dir()):
        raise InputError(f"--test-set needs imagesTs and labelsTs in {raw}")
    trainers = {t: t for t in args.trainers}
    plans_tag = "" if args.plans == "nnUNetPlans" else f"__{args.plans}"
    workdir = (args.workdir or Path("topkdice_compare") / f"{raw.name}__{args.configuration}{plans_tag}").resolve()
    folders = NnunetFolders.resolve(workdir).with_raw(raw.parent)  # every command sees the dataset where it is
    config = CompareConfig(
        dataset_id=dataset_number,
        raw_dataset=raw,
        configuration=args.configuration,
        trainers=trainers,
        workdir=workdir,
        folders=folders,
        baseline=args.baseline,
        seeds=tuple(args.seeds),
        folds=tuple(args.folds or ()),
        test_set=args.test_set,
        plans=args.plans,
        device=device,
        num_processes=args.num_processes,
        num_gpus=args.num_gpus,
        target_difference=args.target_difference,
        train_env=_train_env(args, device),
    )
    warn_few_seeds("compare", config.seeds)
    return run_session(config, _invocation("compare", args, device))


def _reproduce_command(args: argparse.Namespace) -> int:
    from nnunet_topkdice.paper_datasets import paper_dataset
    from nnunet_topkdice.pipeline.prechecks import check_distinct_trainers
    from nnunet_topkdice.pipeline.reproduce import (
        check_source,
        convert_step,
        paper_trainers,
        reproduce_config,
        table_names,
    )
    from nnunet_topkdice.pipeline.session import run_session
    from nnunet_topkdice.pipeline.state import NnunetFolders, locate_raw_dataset

    device = _device(args)
    check_distinct_trainers(args.trainers or [])
    trainers = (table_names(args.dataset, args.schedule, args.trainers) if args.trainers
                else paper_trainers(args.dataset, args.schedule))  # fmt: skip
    workdir = (args.workdir or Path(f"topkdice_{args.dataset}")).resolve()
    # a dataset converted earlier into ./nnUNet_raw (nnUNet_raw unset) is used there; else it is converted
    # into nnUNet_raw, or WORKDIR/nnUNet_raw where that is unset
    dataset_number = args.dataset_id or paper_dataset(args.dataset).dataset_id
    folders, _ = locate_raw_dataset(NnunetFolders.resolve(workdir), dataset_number)
    config = reproduce_config(
        args.dataset,
        workdir=workdir,
        folders=folders,
        trainers=trainers,
        dataset_id=args.dataset_id,
        fold=args.fold,
        seeds=tuple(args.seeds),
        device=device,
        num_processes=args.num_processes,
        num_gpus=args.num_gpus,
        target_difference=args.target_difference,
        train_env=_train_env(args, device),
    )
    check_source(args.input, config)
    warn_few_seeds("reproduce", config.seeds)
    before = [convert_step(args.dataset, args.input, config)]
    return run_session(config, _invocation("reproduce", args, device), before=before)


def _demo_command(args: argparse.Namespace) -> int:
    from nnunet_topkdice.pipeline.demo import demo_config, demo_cpu_jobs, demo_steps_before
    from nnunet_topkdice.pipeline.session import run_session

    device = _device(args)
    config = demo_config(
        args.workdir or Path("topkdice_demo"), device=device, all_rows=args.all, seeds=tuple(args.seeds),
        num_processes=args.num_processes,
    )  # fmt: skip
    if args.n_proc_da is not None:
        config = dataclasses.replace(config, train_env={**config.train_env, "nnUNet_n_proc_DA": str(args.n_proc_da)})
    invocation = _invocation("demo", args, device, default_cpu_jobs=demo_cpu_jobs())
    return run_session(config, invocation, before=demo_steps_before(config), show_times=True)


# --- parsers ------------------------------------------------------------------------------------------


def _add_run_options(
    p: _Options, *, default_np: int, default_seeds: list[int], gpus: bool = True,
    cpu_jobs_default: str = "1, every core to one training, as nnU-Net",
) -> None:
    p.add(
        "--seeds", nargs="+", type=non_negative_int, default=default_seeds, metavar="S",
        help="train every trainer once per seed; the same seed gives every trainer the same initial weights "
        f"and batches, so results are paired (default: {' '.join(map(str, default_seeds))})",
    )  # fmt: skip
    p.add(
        "-device", "--device", choices=DEVICE_CHOICES, default=None,
        help="device of training and prediction, as nnUNetv2_train -device (default: cuda when available, else "
        "cpu; with --emit-slurm always cuda, since the script runs on the cluster's nodes)",
    )  # fmt: skip
    p.add(
        "--n-proc-da", type=non_negative_int, default=None, metavar="N",
        help="data-augmentation worker processes per GPU of each training (nnUNet_n_proc_DA; default: nnU-Net's "
        "choice on a GPU, 12 in a SLURM script, with --cpus-per-task GPUs x (N + 1); 0 on the CPU)",
    )  # fmt: skip
    p.add(
        "-np", "--num-processes", type=positive_int, default=default_np, metavar="N",
        help=f"worker processes of conversion, preprocessing, prediction and evaluation (default: {default_np})",
    )  # fmt: skip
    p.add(
        "--cpu-jobs", type=positive_int, default=None, metavar="N",
        help="with --device cpu: run N trainings (and predictions) at once, each giving torch 1/N of the cores "
        f"(TOPKDICE_CPU_THREADS, shown in front of the command; default: {cpu_jobs_default})",
    )  # fmt: skip
    if gpus:
        p.add(
            "--gpus", type=_gpu_list, default=None, metavar="IDS",
            help="run the trainings concurrently, one per GPU (or per group of --num-gpus GPUs), by setting "
            "CUDA_VISIBLE_DEVICES, e.g. --gpus 0,1,2,3",
        )  # fmt: skip
        p.add(
            "--num-gpus", type=positive_int, default=1, metavar="N",
            help="GPUs per training, passed to nnUNetv2_train -num_gpus (nnU-Net's DDP); default 1",
        )  # fmt: skip
    else:
        p.container.set_defaults(gpus=None, num_gpus=1)
    mode = p.exclusive()
    mode.add("--dry-run", action="store_true", help="print every step's command without running anything")
    mode.add(
        "--emit-slurm", type=Path, default=None, metavar="FILE",
        help="prepare the data here, then write a SLURM job-array script with one training per array task "
        "(on cuda unless --device says otherwise: --gres=gpu:NUM_GPUS and --cpus-per-task per task) and print "
        "the command that collects the results afterwards",
    )  # fmt: skip
    p.add(
        "--slurm-header", type=Path, default=None, metavar="FILE",
        help="with --emit-slurm: your cluster's lines for the script (#SBATCH --partition, --time, --mem, "
        "module load ...); an #SBATCH option set there replaces the script's own",
    )  # fmt: skip
    p.add("--verbose", action="store_true", help="also show the full output of every command")


def _target_difference_option(p: _Options) -> None:
    p.add(
        "--target-difference", type=dice_difference, default=None, metavar="D",
        help="passed to topkdice evaluate: the mean Dice difference (a fraction) for which the verdict estimates "
        "how many seeds would detect it (default there: 0.01, one Dice point)",
    )  # fmt: skip


def _workdir_option(p: _Options, default: str) -> None:
    p.add(
        "-w", "--workdir", type=Path, default=None, metavar="DIR",
        help="predictions, evaluation and logs go here, and nnU-Net's folders when nnUNet_raw, "
        f"nnUNet_preprocessed or nnUNet_results are unset (default: {default})",
    )  # fmt: skip


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``compare``, ``reproduce`` and ``demo`` on the ``topkdice`` parser."""
    p = subparsers.add_parser(
        "compare",
        help="does a loss help on my data? train trainers x seeds x folds, evaluate, give the paired verdict",
        description="Compare nnU-Net trainers on any nnU-Net dataset: preprocess it if needed, train every "
        "trainer for every seed and fold with topkdice train --seed (paired: the same seed gives every trainer "
        "the same initial weights and batches), score nnU-Net's cross-validation predictions (every training "
        "case once per seed) or, with --test-set, predict imagesTs, and run topkdice evaluate, which ends with "
        "the paired verdict of each trainer against the baseline. Finished steps are skipped and an interrupted "
        "training resumes, so running the same command again continues where it stopped. Each step's output "
        "goes to WORKDIR/logs; the table and verdict go to stdout.",
    )
    p = _Options(p)
    p.add("-d", "--dataset", required=True, metavar="DATASET",
                   help="dataset id or name in nnUNet_raw, e.g. 4 or Dataset004_Hippocampus")  # fmt: skip
    p.add("-c", "--configuration", required=True, metavar="CONFIGURATION",
                   help="nnU-Net configuration: 2d, 3d_fullres, 3d_lowres (or one of your plans)")  # fmt: skip
    p.add("-tr", "--trainers", required=True, nargs="+", metavar="TRAINER",
                   help="nnU-Net trainer class names: nnU-Net's, ours, or yours (nnUNet_extTrainer)")  # fmt: skip
    p.add("--baseline", default=None, metavar="TRAINER",
                   help="the trainer the others are compared with (default: the first of --trainers)")  # fmt: skip
    folds = p.exclusive()
    folds.add(
        "-f", "--folds", nargs="+", type=_fold, default=None, metavar="F",
        help="cross-validation folds to train and score (default: every fold of the dataset's "
        "splits_final.json, else nnU-Net's 5 folds 0-4)",
    )  # fmt: skip
    folds.add(
        "--test-set", action="store_true",
        help="train fold all (every training case) and score its predictions of imagesTs against labelsTs "
        "instead of the cross-validation",
    )  # fmt: skip
    p.add("-p", "--plans", default="nnUNetPlans", metavar="PLANS",
                   help="nnU-Net plans identifier, e.g. nnUNetResEncUNetMPlans (default: nnUNetPlans)")  # fmt: skip
    _workdir_option(p, "./topkdice_compare/DATASET__CONFIGURATION")
    _add_run_options(p, default_np=DEFAULT_NUM_PROCESSES, default_seeds=[0])
    _target_difference_option(p)
    p.finish(func=_compare_command)

    p = subparsers.add_parser(
        "reproduce",
        help="run the paper's protocol: convert, preprocess, train every loss, predict, evaluate",
        description="Run the paper's protocol on one of its datasets over the same engine as topkdice compare: "
        "convert it (topkdice convert), preprocess 2d, train every row of the paper's table (k=50 for Synapse "
        "and ACDC, k=30 for MSSEG) for every seed, predict the test set and evaluate it next to the paper's "
        "reported rows, ending with the paired verdict against CE + Dice. Finished steps are skipped and an "
        "interrupted training resumes, so running it again continues where it stopped.",
    )
    p = _Options(p)
    p.add("--dataset", required=True, choices=PAPER_DATASET_KEYS, help="which of the paper's datasets")
    p.add(
        "-i", "--input", type=Path, default=None, metavar="RAW_DIR",
        help="the dataset as downloaded (what topkdice convert DATASET -i expects); needed only until the "
        "dataset has been converted",
    )  # fmt: skip
    p.add("-d", "--dataset-id", type=dataset_id, default=None, metavar="ID",
                   help="nnU-Net dataset id (default: 201 synapse, 202 acdc, 203 msseg)")  # fmt: skip
    p.add("-tr", "--trainers", nargs="+", default=None, metavar="TRAINER",
                   help="nnU-Net trainer class names to run (default: the paper's five rows for --schedule); "
                   "trainers of a row of the table keep the row's name")  # fmt: skip
    p.add(
        "-f", "--fold", choices=FOLD_CHOICES, default=None,
        help="nnU-Net fold: all, or a fold of the dataset's split (the splits_final.json in nnUNet_preprocessed "
        "where there is one; else 0 for acdc, whose converter writes the paper's train/val split as its one fold, "
        "and 0-4 for synapse and msseg, nnU-Net's own 5 folds); another is refused. Default: the paper's "
        "protocol, 0 for acdc and all for synapse and msseg (no validation set)",
    )  # fmt: skip
    p.add("--schedule", choices=SCHEDULE_CHOICES, default="nnunet",
                   help="nnunet: nnU-Net's 1000 epochs of SGD (default); paper: 300 epochs of Adam")  # fmt: skip
    _workdir_option(p, "./topkdice_DATASET")
    _add_run_options(p, default_np=DEFAULT_NUM_PROCESSES, default_seeds=[0])
    _target_difference_option(p)
    p.finish(func=_reproduce_command)

    from nnunet_topkdice.pipeline.demo import DEMO_CPU_JOBS, DEMO_SEEDS

    p = subparsers.add_parser(
        "demo",
        help="CE + Dice against CE + topK-Dice on a built-in synthetic dataset, with the verdict (minutes on a CPU)",
        description="Generate a small synthetic abdominal dataset in Synapse's raw layout, then run the same "
        "pipeline as topkdice reproduce on it with a short schedule: CE + Dice (nnU-Net's default) and "
        "CE + topK-Dice, each trained once per seed, evaluated on the test set, ending with the paired verdict. "
        "Needs no data, no GPU and no environment variables: nnU-Net's folders are created in the work "
        "directory unless nnUNet_raw, nnUNet_preprocessed and nnUNet_results are set.",
    )
    p = _Options(p)
    _workdir_option(p, "./topkdice_demo")
    p.add("--all", action="store_true",
                   help="compare every row of the paper's table (and its controls), not just two")  # fmt: skip
    _add_run_options(p, default_np=min(2, DEFAULT_NUM_PROCESSES), default_seeds=list(DEMO_SEEDS), gpus=False,
                     cpu_jobs_default=f"{DEMO_CPU_JOBS}, or 1 on a one-core CPU")  # fmt: skip
    p.finish(func=_demo_command)
