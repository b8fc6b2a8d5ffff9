"""``topkdice convert {synapse,acdc,msseg}`` and ``python -m dataset_conversion.<name>``.

The argument definitions are written once (:func:`add_arguments`) and used by both entry points. This
module stays light (no SimpleITK, no nnU-Net) so that ``topkdice --help`` is fast: each dataset module
is imported only when its command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from nnunet_topkdice.argtypes import dataset_id, positive_int
from nnunet_topkdice.errors import InputError, interrupt_exit_code
from nnunet_topkdice.paper_datasets import PAPER_DATASET_KEYS, paper_dataset
from nnunet_topkdice.workers import terminate_as_interrupt

DEFAULT_NUM_PROCESSES = min(4, os.cpu_count() or 1)
OVERWRITE_FLAG = "--overwrite"  # convert(..., overwrite=True) on the command line; its messages name it


@dataclass(frozen=True)
class _DatasetCommand:
    """The texts of one ``topkdice convert`` sub-command (the id and folder name come from the registry)."""

    help: str
    description: str
    input_help: str


# One entry per key of nnunet_topkdice.paper_datasets.PAPER_DATASETS (building the parser needs them all).
COMMANDS: dict[str, _DatasetCommand] = {
    "synapse": _DatasetCommand(
        help="convert Synapse multi-organ CT (BTCV) with the TransUNet split",
        description="Convert the Synapse multi-organ CT dataset (synapse.org syn3193805, RawData.zip) into "
        "nnU-Net's raw format: the 18 TransUNet training cases go to imagesTr/labelsTr, the 12 test cases to "
        "imagesTs/labelsTs, and the 13 labels are reduced to the paper's 8 organs.",
        input_help="the unpacked RawData.zip folder, which contains Training/img and Training/label",
    ),
    "acdc": _DatasetCommand(
        help="convert ACDC cine-MRI with the 70/10/20 split",
        description="Convert the ACDC cine-MRI training set into nnU-Net's raw format: the ED and ES frames "
        "named in each patient's Info.cfg become two cases; the 70 train and 10 validation patients go to "
        "imagesTr (splits_final.json fold 0 = train/val, also written to $nnUNet_preprocessed when set), "
        "the 20 test patients to imagesTs/labelsTs.",
        input_help="the ACDC folder that contains training/patient001 ... training/patient100",
    ),
    "msseg": _DatasetCommand(
        help="convert MSSEG-2016 MS lesions with a seeded 9/6 split",
        description="Convert the MSSEG-2016 training set (either public layout) into nnU-Net's raw format: "
        "five channels (FLAIR, T1, T2, DP, GADO), consensus > 0 as lesion, and a 9 train / 6 test split "
        "drawn from --seed and stratified by centre, printed and saved as split.json.",
        input_help="the MSSEG-2016 training root, which contains Pre-processed/ and ManualSegmentation/, "
        "or Training/Center_XX/Patient_*/",
    ),
}


def add_arguments(parser: argparse.ArgumentParser, dataset: str) -> None:
    """Add the options of ``topkdice convert <dataset>`` (also used by ``python -m``)."""
    info, paper = COMMANDS[dataset], paper_dataset(dataset)
    parser.add_argument("-i", "--input", type=Path, required=True, metavar="DIR", help=info.input_help)
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        metavar="RAW_ROOT",
        help=f"nnU-Net raw folder to write {paper.folder_name} into (default: $nnUNet_raw)",
    )
    parser.add_argument(
        "-d",
        "--dataset-id",
        type=dataset_id,
        default=paper.dataset_id,
        metavar="ID",
        help=f"nnU-Net dataset id, 1-999 (default: {paper.dataset_id})",
    )
    parser.add_argument(
        OVERWRITE_FLAG,
        action="store_true",
        help="replace an existing dataset folder (only once the new one is complete)",
    )
    parser.add_argument(
        "-np",
        "--num-processes",
        type=positive_int,
        default=DEFAULT_NUM_PROCESSES,
        metavar="N",
        help=f"worker processes (default: {DEFAULT_NUM_PROCESSES})",
    )
    if dataset == "msseg":
        parser.add_argument(
            "--seed", type=int, default=0, help="seed of the stratified 9/6 train/test split (default: 0)"
        )


def _run(dataset: str, args: argparse.Namespace) -> int:
    from dataset_conversion.runner import run_conversion  # imports SimpleITK: only when a command runs

    return run_conversion(dataset, args)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``convert`` with one sub-subcommand per dataset on the ``topkdice`` parser."""
    convert = subparsers.add_parser(
        "convert",
        help="convert Synapse, ACDC or MSSEG-2016 into nnU-Net's raw format with the paper's splits",
        description="Convert one of the paper's datasets into nnU-Net v2's raw format "
        "($nnUNet_raw/DatasetXXX_<Name>) with the paper's train/test split. The input is checked before "
        "anything is written, and the dataset is written into a temporary folder that is renamed into place.",
    )
    datasets = convert.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in PAPER_DATASET_KEYS:
        info = COMMANDS[name]
        parser = datasets.add_parser(name, help=info.help, description=info.description)
        add_arguments(parser, name)
        parser.set_defaults(func=partial(_run, name))


def build_parser(dataset: str) -> argparse.ArgumentParser:
    """The stand-alone parser of ``python -m dataset_conversion.<dataset>``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m dataset_conversion.{dataset}", description=COMMANDS[dataset].description
    )
    add_arguments(parser, dataset)
    return parser


def run_standalone(dataset: str, argv: Sequence[str] | None = None) -> int:
    """Body of each module's ``main``: parse, convert, and map errors to exit codes like ``topkdice``."""
    args = build_parser(dataset).parse_args(argv)
    try:
        with terminate_as_interrupt():  # SIGTERM cleans up like Ctrl-C
            return _run(dataset, args)
    except InputError as e:
        print(f"{dataset}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"{dataset}: interrupted", file=sys.stderr)
        return interrupt_exit_code(e)
