"""``topkdice evaluate``, ``topkdice summary`` and ``topkdice show-ignore-map``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnunet_topkdice.argtypes import dice_difference, k_percent, non_negative_int, positive_int
from nnunet_topkdice.input_checks import check_output_folder
from nnunet_topkdice.paper_datasets import PAPER_DATASET_KEYS as PAPER_CHOICES

# the same as metrics.HD95_MISSING_POLICIES (kept here so that `topkdice --help` does not import numpy)
HD95_MISSING_CHOICES = ("diagonal", "exclude")
NSD_TOLERANCE_DEFAULT = 1.0  # metrics.NSD_TOLERANCE_MM, likewise


def _tolerance_mm(text: str) -> float:
    """NSD's tolerance: a finite number of millimetres >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of mm >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of mm >= 0, got {text!r}")
    return value


#: The release in which ``evaluate -p`` (predictions; ``-p`` is plans everywhere else) stops working.
P_REMOVED_IN = "0.3.0"


def _cut(text: str, index: int) -> tuple[str, str] | None:
    """``text`` split at ``index`` into ``(name, folder)``; None when the name holds a path separator."""
    name, folder = text[:index], text[index + 1 :]
    return None if "/" in name or "\\" in name else (name, folder)


def _run_spec(text: str) -> tuple[str, Path]:
    """``NAME=PRED_DIR``, ``NAME:PRED_DIR``, or just ``PRED_DIR`` (named after the folder).

    The split is the last ``=`` (then the first ``:``) that leaves an existing folder, so a folder such as
    ``lr=0.01/preds`` keeps its ``=``; a text that is itself an existing folder is that folder. Where no
    folder exists (yet), the first ``=`` (else ``:``) splits, and the evaluation names the missing folder.
    """
    equals = [i for i, char in enumerate(text) if char == "="]
    colons = [i for i, char in enumerate(text) if char == ":"]
    splits = [pair for i in [*reversed(equals), *colons] if (pair := _cut(text, i)) is not None]
    existing = next((pair for pair in splits if pair[1] and Path(pair[1]).is_dir()), None)
    if existing is not None:
        name, folder = existing
    elif Path(text).is_dir() or not splits:
        name, folder = Path(text).name, text
    else:
        first = [pair for i in equals[:1] + colons[:1] if (pair := _cut(text, i)) is not None]
        name, folder = first[0] if first else (Path(text).name, text)
    if not name.strip() or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=PRED_DIR, got {text!r}")
    return name.strip(), Path(folder)


class _PredictionsAction(argparse._ExtendAction):
    """``-pred`` / ``--predictions`` add runs; the old ``-p`` too, with a deprecation warning on stderr."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: list[tuple[str, Path]],
        option_string: str | None = None,
    ) -> None:
        if option_string == "-p":
            print(
                f"topkdice evaluate: warning: -p for predictions is deprecated (in nnU-Net -p means plans) and "
                f"will be removed in {P_REMOVED_IN}: use -pred",
                file=sys.stderr,
            )
        super().__call__(parser, namespace, values, option_string)


def _dataset_of_predictions(folders: list[Path]) -> Path:
    """The ``dataset.json`` nnU-Net writes into a prediction folder: the first of ``folders`` holding one.

    Raises:
        InputError: none holds one (``-d`` is then needed).
    """
    from nnunet_topkdice.errors import InputError

    for folder in folders:
        if (Path(folder) / "dataset.json").is_file():
            return Path(folder) / "dataset.json"
    raise InputError(
        "-d is needed: none of the prediction folders holds the dataset.json that nnUNetv2_predict writes "
        f"({', '.join(str(f) for f in folders[:3])}{' ...' if len(folders) > 3 else ''})"
    )


def _evaluate_command(args: argparse.Namespace) -> int:
    from nnunet_topkdice.evaluation.evaluate import evaluate_runs

    # a NAME given several times is one method over several repeats, in the order given
    dataset = args.dataset
    if dataset is None:
        dataset = _dataset_of_predictions([folder for _, folder in args.predictions])
        print(f"dataset: {dataset} (no -d given)", file=sys.stderr)
    results = evaluate_runs(
        args.reference,
        args.predictions,
        dataset,
        args.output,
        baseline=args.baseline,
        num_processes=args.num_processes,
        paper=args.paper,
        hd95_missing=args.hd95_missing,
        nsd_tolerance=args.nsd_tolerance,
        images_dir=args.images,
        target_difference=args.target_difference,
    )
    print((args.output / "table.md").read_text(), end="")
    print(f"wrote results.json, table.md, table.csv, per_case.csv, figure.png to {args.output}", file=sys.stderr)
    if results["case_pictures"]:
        for path in results["case_pictures"]["files"].values():
            print(f"case pictures: {args.output / path}", file=sys.stderr)
    return 0


def _show_ignore_map_command(args: argparse.Namespace) -> int:
    from nnunet_topkdice.evaluation.ignore_map import show_ignore_map

    summary = show_ignore_map(
        args.image,
        args.label,
        args.output,
        ks=args.k,
        probabilities_file=args.probabilities,
        model_dir=args.model_dir,
        slice_index=args.slice,
        axis=args.axis,
        scope=args.scope,
        channel=args.channel,
        dataset=args.dataset,
        folds=args.folds,
        checkpoint=args.checkpoint,
        device=args.device,
        use_mirroring=not args.disable_tta,
    )
    scope = summary["scope"]
    print(f"slice {summary['slice']} along axis {summary['axis']}, selection per {scope} "
          f"(the counts and the loss below are the {'whole case' if scope == 'volume' else 'slice'}'s)")  # fmt: skip
    print("k\tclass\tforeground\texcluded\tkept\tTopK-Dice loss")
    for k, info in summary["k"].items():
        for name, n_fg in info["n_foreground"].items():
            n_ex = info["n_excluded"][name]
            print(f"{k:g}\t{name}\t{n_fg}\t{n_ex}\t{n_fg - n_ex}\t{info['loss']:.4f}")
    print(summary["png"])
    return 0


def _add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="paper-style metrics, comparison table and paired statistics for several prediction folders",
        description="Compare prediction folders (one per trained model, or several per model: seeds or folds) "
        "with reference labels: Dice, IoU, precision, recall, HD95 (mm) and normalised surface Dice (NSD) per case "
        "and class, averaged like "
        "the paper (each class over the test cases, then over the classes), mean ± sd over the repeats, and "
        "a paired comparison of every method with the baseline (mean difference of the per-case Dice with "
        "seeds and cases both random: crossed t interval, Holm-adjusted verdict, seeds needed; and, for these "
        "trained models only, the case bootstrap and Wilcoxon p). Writes results.json, table.md, table.csv, "
        "per_case.csv (every value in long format) and figure.png to OUT_DIR, with --images the pictures of the "
        "cases with the largest gains and losses (cases/), and prints the markdown table. Refuses a prediction "
        "whose size, spacing, origin or direction differ from its reference.",
    )
    p.add_argument(
        "-r",
        "--reference",
        required=True,
        type=Path,
        metavar="LABELS_DIR",
        help="folder of reference label files, e.g. $nnUNet_raw/Dataset201_Synapse/labelsTs",
    )
    p.add_argument(
        "-pred",
        "--predictions",
        "-p",
        dest="predictions",
        required=True,
        nargs="+",
        action=_PredictionsAction,  # a repeated -pred adds runs instead of replacing the earlier ones
        type=_run_spec,
        metavar="NAME=PRED_DIR",
        help="one or more prediction folders (nnUNetv2_predict output), each named NAME= (or NAME:, for a "
        "folder whose name holds '='); a NAME given several times is one method over several repeats "
        "(seeds or folds); the order of the names is the table's row order. -p is the deprecated spelling "
        f"(removed in {P_REMOVED_IN}; -p is plans in nnU-Net)",
    )
    p.add_argument(
        "-d",
        "--dataset",
        default=None,
        metavar="DATASET_ID_OR_DATASET_JSON",
        help="dataset id or name (looked up in $nnUNet_raw) or the path of its dataset.json; "
        "gives the label names, the file ending and the reader nnU-Net uses (default: the dataset.json that "
        "nnUNetv2_predict wrote into the first prediction folder)",
    )
    p.add_argument(
        "-o", "--output", required=True, type=Path, metavar="OUT_DIR", help="output folder (created)"
    )
    p.add_argument(
        "--baseline",
        default=None,
        metavar="NAME",
        help="the method every other one is compared with (default: the first NAME)",
    )
    p.add_argument(
        "-np",
        "--num-processes",
        type=positive_int,
        default=1,
        metavar="N",
        help="worker processes (default: 1)",
    )
    p.add_argument(
        "--paper",
        choices=PAPER_CHOICES,
        default=None,
        help="add the paper's reported rows (Table 1 synapse, 2 acdc, 3 msseg) and each method's "
        "difference to the paper's CE + topK-Dice row",
    )
    p.add_argument(
        "--hd95-missing",
        choices=HD95_MISSING_CHOICES,
        default="diagonal",
        help="HD95 of a class found in only one of reference and prediction: 'diagonal' (default) scores it "
        "with the image diagonal in mm, so a missed organ never improves mHD95; 'exclude' leaves it out of "
        "the means (what earlier versions did)",
    )
    p.add_argument(
        "--nsd-tolerance",
        type=_tolerance_mm,
        default=NSD_TOLERANCE_DEFAULT,
        metavar="MM",
        help="tolerance of the normalised surface Dice in mm (default: %(default)s): the share of both surfaces within "
        "MM of the other surface",
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="IMAGES_DIR",
        help="the dataset's imagesTs (or imagesTr for cross-validation cases): for every method, draw the 3 "
        "cases with the largest gains and the 3 with the largest losses of the case Dice against the baseline "
        "(image, reference, baseline, method; errors outlined) into OUT_DIR/cases/<method>_vs_<baseline>.png; "
        "every evaluated case needs <case>_0000<file_ending> on its reference's grid (checked first)",
    )
    p.add_argument(
        "--target-difference",
        type=dice_difference,
        default=0.01,
        metavar="D",
        help="the mean Dice difference (a fraction; default 0.01, one Dice point) for which the verdict "
        "estimates how many seeds per method would detect it with 80%% power",
    )
    p.set_defaults(func=_evaluate_command)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """The options of ``show-ignore-map -m`` (prediction with a trained model folder)."""
    p.add_argument(
        "-f",
        "--folds",
        nargs="+",
        default=None,
        metavar="FOLD",
        help="with -m: folds to ensemble (default: every fold with a checkpoint)",
    )
    p.add_argument(
        "-chk",
        "--checkpoint",
        default="checkpoint_final.pth",
        metavar="NAME",
        help="with -m: checkpoint file name (default checkpoint_final.pth)",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda", "mps"), default="cpu", help="with -m: device (default cpu)"
    )
    p.add_argument("--disable_tta", "--disable-tta", dest="disable_tta", action="store_true",
                   help="with -m: no mirroring test-time augmentation (as nnUNetv2_predict --disable_tta)")


def _add_show_ignore_map_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "show-ignore-map",
        help="draw the TopK-Dice ignore map of one case and slice (paper Figures 1 and 2)",
        description="Draw the input slice, ground truth, ignore map (foreground voxels TopK-Dice leaves out "
        "as easy) and modified ground truth of one case at one or several k. Probabilities come from an "
        ".npz written by nnUNetv2_predict --save_probabilities or are predicted with a trained model folder. "
        "Prints the voxel counts and loss per k, then the PNG path.",
    )
    p.add_argument(
        "-i",
        "--image",
        required=True,
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="the case's image file(s) (<case>_0000.nii.gz ...); with -m a single _0000 file brings "
        "its sibling channels along",
    )
    p.add_argument(
        "-l", "--label", required=True, type=Path, metavar="LABEL", help="the case's ground-truth label file"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--probabilities",
        type=Path,
        metavar="NPZ",
        help="<case>.npz written by nnUNetv2_predict --save_probabilities",
    )
    source.add_argument(
        "-m",
        "--model-dir",
        type=Path,
        metavar="MODEL_DIR",
        help="trained model folder $nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG; predicts here",
    )
    p.add_argument("-o", "--output", required=True, type=Path, metavar="PNG", help="the picture to write")
    p.add_argument(
        "--k",
        nargs="+",
        type=k_percent,
        default=[50.0],
        metavar="K",
        help="percent of foreground voxels kept, one or several (e.g. --k 90 50 30 10); default 50",
    )
    p.add_argument(
        "--slice",
        type=non_negative_int,
        default=None,
        metavar="INDEX",
        help="slice index along --axis (default: the slice with the most foreground)",
    )
    p.add_argument(
        "--axis",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="array axis of the slice; 0 is z (axial for usual CT/MR volumes); default 0",
    )
    p.add_argument(
        "--scope",
        choices=("slice", "volume"),
        default="slice",
        help="select the easy voxels within the slice (like a 2d configuration, default) or the "
        "whole volume (like a 3d patch)",
    )
    p.add_argument(
        "--channel",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="which of the -i files to display (default 0)",
    )
    p.add_argument(
        "-d",
        "--dataset",
        default=None,
        metavar="DATASET_ID_OR_DATASET_JSON",
        help="dataset.json (or id/name) for the label names; default: the dataset.json beside the "
        ".npz or in the model folder",
    )
    _add_model_options(p)
    p.set_defaults(func=_show_ignore_map_command)


def _summary_command(args: argparse.Namespace) -> int:
    from nnunet_topkdice.evaluation.summary import (
        CriticalDifferenceUnavailable,
        find_results,
        load_evaluations,
        summarise,
        to_markdown,
        write_summary,
    )

    check_output_folder(args.output, "output folder")  # before the table is printed
    summary = summarise(load_evaluations(find_results(args.results)))
    print(to_markdown(summary), end="")
    try:
        written = write_summary(summary, args.output)
    except CriticalDifferenceUnavailable as e:
        print(f"topkdice summary: {e}; the tables are written without it", file=sys.stderr)
        written = [args.output / name for name in ("summary.md", "summary.csv", "summary.json")]
    print(f"wrote {', '.join(p.name for p in written)} to {args.output}", file=sys.stderr)
    return 0


def _add_summary_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "summary",
        help="one table of several evaluations (datasets x comparisons), Holm over all, tests across datasets",
        description="Read several results.json of topkdice evaluate (for example the runs of topkdice "
        "reproduce on each dataset) and print one table: dataset x comparison with the difference, the crossed "
        "95% interval and the verdict, Holm-adjusted over all rows. With 5 or more datasets also a Wilcoxon "
        "test of each comparison's per-dataset differences; with 3 or more methods Friedman's test of their "
        "mean Dice and a critical-difference diagram (needs scikit-posthocs: pip install "
        "'nnunet-topkdice[stats]'). Writes summary.md, summary.csv, summary.json and critical_difference.png "
        "to OUT_DIR.",
    )
    p.add_argument(
        "results", nargs="+", type=Path, metavar="RESULTS_OR_WORKDIR",
        help="a results.json, an evaluation folder, or a compare/reproduce work directory (searched for "
        "results.json)",
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT_DIR", help="output folder (created)")
    p.set_defaults(func=_summary_command)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``evaluate``, ``summary`` and ``show-ignore-map`` on the ``topkdice`` parser."""
    _add_evaluate_parser(subparsers)
    _add_summary_parser(subparsers)
    _add_show_ignore_map_parser(subparsers)
