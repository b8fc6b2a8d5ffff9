"""``topkdice reproduce`` and ``topkdice demo``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from nnunet_topkdice.argtypes import dataset_id, positive_int
from nnunet_topkdice.errors import InputError

DATASET_CHOICES = ("synapse", "acdc", "msseg")  # keys of reproduce.PAPER_DATASETS (checked by a test)
FOLD_CHOICES = ("all", "0", "1", "2", "3", "4")
DEVICE_CHOICES = ("cuda", "cpu", "mps")
SCHEDULE_CHOICES = ("nnunet", "paper")
DEFAULT_NUM_PROCESSES = max(1, min(8, os.cpu_count() or 1))


def _gpu_list(text: str) -> tuple[str, ...]:
    """``"0,1,2,3"`` -> ``("0", "1", "2", "3")``: distinct non-negative integers."""
    ids = tuple(part.strip() for part in text.split(","))
    if not all(part.isdigit() for part in ids) or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"expected distinct GPU ids separated by commas (e.g. 0,1,2,3), got {text!r}")
    return ids


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_common_arguments(parser: argparse.ArgumentParser, default_np: int) -> None:
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default=None,
        help="device of training and prediction (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "-np",
        "--num-processes",
        type=positive_int,
        default=default_np,
        metavar="N",
        help=f"worker processes of conversion, preprocessing, prediction and evaluation (default: {default_np})",
    )


def _reproduce_command(args: argparse.Namespace) -> int:
    from nnunet_topkdice.pipeline.reproduce import (
        PAPER_DATASETS,
        NnunetFolders,
        PipelineConfig,
        paper_trainers,
        print_summary,
        run_pipeline,
    )

    device = args.device or _default_device()
    if (args.gpus or args.num_gpus > 1) and device != "cuda":
        raise InputError(f"--gpus and --num-gpus need --device cuda, got --device {device}")
    info = PAPER_DATASETS[args.dataset]
    rows = paper_trainers(args.dataset, args.schedule)
    if args.trainers:
        # A trainer of the paper's table keeps its row name in the table; others keep their class name.
        names = {trainer: row for row, trainer in rows.items()}
        trainers = {names.get(t, t): t for t in dict.fromkeys(args.trainers)}
    else:
        trainers = rows
    workdir = (args.workdir or Path(f"topkdice_{args.dataset}")).resolve()
    config = PipelineConfig(
        dataset=args.dataset,
        dataset_id=args.dataset_id or info.dataset_id,
        trainers=trainers,
        fold=args.fold or info.default_fold,
        device=device,
        workdir=workdir,
        folders=NnunetFolders.resolve(workdir),
        source=args.input,
        num_processes=args.num_processes,
        gpus=args.gpus or (),
        num_gpus=args.num_gpus,
        paper=args.dataset,
    )
    result = run_pipeline(config)
    print_summary(result, config)
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from nnunet_topkdice.pipeline.demo import run_demo
    from nnunet_topkdice.pipeline.reproduce import print_summary

    workdir = args.workdir or Path("topkdice_demo")
    result, config = run_demo(
        workdir, device=args.device or _default_device(), all_rows=args.all, num_processes=args.num_processes
    )
    print_summary(result, config)
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``reproduce`` and ``demo`` on the ``topkdice`` parser."""
    p = subparsers.add_parser(
        "reproduce",
        help="run the paper's protocol: convert, preprocess, train every loss, predict, evaluate",
        description="Run the paper's whole protocol on one dataset with nnU-Net's own commands: convert it "
        "(topkdice convert), nnUNetv2_plan_and_preprocess (2d), nnUNetv2_train for every trainer of the "
        "paper's table (k=50 for Synapse and ACDC, k=30 for MSSEG), nnUNetv2_predict on the test set and "
        "topkdice evaluate --paper. Each command is printed before it runs; finished steps are skipped and "
        "an interrupted training is resumed (--c), so running it again continues where it stopped. The "
        "table goes to stdout, everything else to stderr.",
    )
    p.add_argument("--dataset", required=True, choices=DATASET_CHOICES, help="which of the paper's datasets")
    p.add_argument(
        "-i",
        "--input",
        type=Path,
        default=None,
        metavar="RAW_DIR",
        help="the dataset as downloaded (what topkdice convert DATASET -i expects); needed only until the "
        "dataset has been converted",
    )
    p.add_argument(
        "-d",
        "--dataset-id",
        type=dataset_id,
        default=None,
        metavar="ID",
        help="nnU-Net dataset id (default: 201 synapse, 202 acdc, 203 msseg)",
    )
    p.add_argument(
        "--trainers",
        nargs="+",
        default=None,
        metavar="TRAINER",
        help="nnU-Net trainer class names to run (default: the paper's five rows for --schedule)",
    )
    p.add_argument(
        "--fold",
        choices=FOLD_CHOICES,
        default=None,
        help="nnU-Net fold: the paper's protocol is 0 for acdc (its split file holds the paper's train/val "
        "split) and all for synapse and msseg (no validation set), the default",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULE_CHOICES,
        default="nnunet",
        help="nnunet: nnU-Net's 1000-epoch SGD schedule (default); paper: the paper's 300 epochs of Adam",
    )
    p.add_argument(
        "-w",
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="predictions, evaluation and logs go here, and nnU-Net's folders when nnUNet_raw, "
        "nnUNet_preprocessed or nnUNet_results are unset (default: ./topkdice_DATASET)",
    )
    p.add_argument(
        "--gpus",
        type=_gpu_list,
        default=None,
        metavar="IDS",
        help="train the trainers concurrently, one per GPU (or per group of --num-gpus GPUs), by setting "
        "CUDA_VISIBLE_DEVICES, e.g. --gpus 0,1,2,3; logs go to WORKDIR/logs",
    )
    p.add_argument(
        "--num-gpus",
        type=positive_int,
        default=1,
        metavar="N",
        help="GPUs per training, passed to nnUNetv2_train -num_gpus (nnU-Net's DDP); default 1",
    )
    _add_common_arguments(p, DEFAULT_NUM_PROCESSES)
    p.set_defaults(func=_reproduce_command)

    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a built-in synthetic dataset (minutes on a CPU)",
        description="Generate a small synthetic abdominal dataset in Synapse's raw layout, then run the same "
        "pipeline as topkdice reproduce on it with a short schedule, comparing CE + Dice (nnU-Net's default) "
        "with CE + topK-Dice. Needs no data, no GPU and no environment variables: nnU-Net's folders are "
        "created in the work directory unless nnUNet_raw, nnUNet_preprocessed and nnUNet_results are set. "
        "Ends with the table, the figure and where the files are.",
    )
    p.add_argument(
        "-w",
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where everything goes (default: ./topkdice_demo)",
    )
    p.add_argument("--all", action="store_true", help="compare all five rows of the paper's table, not just two")
    _add_common_arguments(p, min(2, DEFAULT_NUM_PROCESSES))
    p.set_defaults(func=_demo_command)
