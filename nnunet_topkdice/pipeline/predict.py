"""``topkdice predict``: several trained models predict one folder of images, in one process.

Each ``nnUNetv2_predict`` process imports torch and nnU-Net and, with worker processes, starts as many
more interpreters that import them again: on a small CPU that start-up costs more than predicting a
small test set. ``topkdice predict`` runs nnU-Net's own predictor (``nnUNetPredictor`` with
``nnUNetv2_predict``'s defaults: step size 0.5, Gaussian weighting, mirroring) for each model in turn,
without worker processes (nnU-Net's ``predict_from_files_sequential``), and writes the same
segmentations as one ``nnUNetv2_predict -npp 0 -nps 0`` call per model. A model is found the way
``nnUNetv2_predict`` finds it: ``$nnUNet_results/DATASET/TRAINER__PLANS__CONFIGURATION``.

``nnUNetv2_predict``'s ``-chk``, ``-step_size``, ``--disable_tta``, ``--save_probabilities`` and
``--continue_prediction`` mean what they mean there; its other flags are refused with the reason
(:data:`REFUSED_FLAGS`). Everything that can be checked is checked before the first model predicts (the
output folders, every checkpoint, the images, every trainer class), so a bad second model does not fail
after the first model's predictions are written.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_topkdice import nnunet_folders
from nnunet_topkdice.argtypes import step_size
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.ext import EXT_TRAINER_VARIABLE, environment_with_trainers, trainers_on_search_path
from nnunet_topkdice.input_checks import check_output_folder
from nnunet_topkdice.pipeline.state import list_case_ids
from nnunet_topkdice.training.layout import seed_roots

#: nnU-Net's checkpoint of a finished training (``nnUNetv2_predict -chk`` default).
CHECKPOINT = "checkpoint_final.pth"

_NO_WORKERS = "topkdice predict runs without worker processes (as nnUNetv2_predict -npp 0 -nps 0)"
_ONE_PROCESS = "topkdice predict predicts every case in one process; use nnUNetv2_predict to split the cases"
#: ``nnUNetv2_predict``'s flags that ``topkdice predict`` refuses: flag -> (takes a value, why).
REFUSED_FLAGS: dict[str, tuple[bool, str]] = {
    "-o": (True, "use --models TRAINER=OUTPUT_DIR, one output folder per model"),
    "-tr": (True, "use --models TRAINER=OUTPUT_DIR, one output folder per model"),
    "-npp": (True, _NO_WORKERS),
    "-nps": (True, _NO_WORKERS),
    "-prev_stage_predictions": (True, "cascaded configurations are not supported; use nnUNetv2_predict"),
    "-num_parts": (True, _ONE_PROCESS),
    "-part_id": (True, _ONE_PROCESS),
    "--verbose": (False, "nnU-Net's verbose output is not offered; topkdice predict prints one line per model"),
    "--disable_progress_bar": (False, "topkdice predict shows no progress bar"),
    "--not_on_device": (False, "topkdice predict keeps each case on the device (nnUNetv2_predict's default); "
                        "use nnUNetv2_predict for cases larger than the device's memory"),
}  # fmt: skip


@dataclass(frozen=True)
class PredictOptions:
    """How each model predicts: ``nnUNetv2_predict``'s settings of the same names, with its defaults."""

    checkpoint: str = CHECKPOINT  # -chk
    step_size: float = 0.5  # -step_size: sliding-window step, a fraction of the patch size, in (0, 1]
    mirroring: bool = True  # test-time mirroring; --disable_tta switches it off
    save_probabilities: bool = False  # --save_probabilities: also CASE.npz and CASE.pkl
    resume: bool = False  # --continue_prediction: keep the cases already predicted


@dataclass(frozen=True)
class ModelJob:
    """One model to predict with: its training output folder and the folder its predictions go to."""

    model_dir: Path  # $nnUNet_results/DATASET/TRAINER__PLANS__CONFIGURATION
    out_dir: Path


def parse_model_pair(text: str) -> tuple[str, Path]:
    """``"TRAINER=OUT_DIR"`` -> ``("TRAINER", Path("OUT_DIR"))`` (argparse type of ``--models``).

    Raises:
        argparse.ArgumentTypeError: no ``=``, or an empty trainer or folder.
    """
    trainer, sep, out_dir = text.partition("=")
    if not sep or not trainer or not out_dir:
        raise argparse.ArgumentTypeError(f"expected TRAINER=OUTPUT_DIR, got {text!r}")
    return trainer, Path(out_dir)


def model_jobs(
    dataset: str,
    configuration: str,
    plans: str,
    models: Sequence[tuple[str, Path]],
    folds: Sequence[str],
    checkpoint: str = CHECKPOINT,
) -> list[ModelJob]:
    """The model folder of each ``(trainer, out_dir)``, checked to hold ``checkpoint`` in every fold, and its
    output folder, checked to be one this process can write (or create); writes nothing.

    Raises:
        InputError: ``nnUNet_results`` not set, an unknown dataset, a duplicate output folder, an output
            folder that is a file or not writable, or a missing model folder or checkpoint (named).
    """
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    results = nnunet_folders.required_folder("nnUNet_results", "topkdice predict")
    dataset_name = nnunet_folders.dataset_name(dataset, "-d")
    outs = [out_dir.resolve() for _, out_dir in models]
    if len(set(outs)) != len(outs):
        raise InputError(f"--models: each model needs its own output folder, got {[str(o) for o in outs]}")
    jobs = []
    for trainer, out_dir in models:
        check_output_folder(out_dir, f"--models {trainer}: the output folder")
        model_dir = Path(get_output_folder(dataset_name, trainer, plans, configuration))
        for fold in folds:
            _check_checkpoint(results, model_dir / f"fold_{fold}" / checkpoint, trainer, fold)
        jobs.append(ModelJob(model_dir, out_dir))
    return jobs


def _check_checkpoint(results: Path, checkpoint: Path, trainer: str, fold: str) -> None:
    """Refuse a checkpoint (under the results root ``results``) that does not exist.

    Raises:
        InputError: naming it, and the seed folders of ``results`` that hold it (``topkdice train`` puts a
            seeded run in ``$nnUNet_results/seed_<S>``, so a plain ``nnUNet_results`` misses it).
    """
    if checkpoint.is_file():
        return
    relative = checkpoint.relative_to(results)
    holding = [root for root in seed_roots(results) if (root / relative).is_file()]
    hint = ""
    if holding:
        hint = (
            f"; it exists under {', '.join(map(str, holding))}: seeded runs (topkdice train --seed S) live in "
            f"nnUNet_results/seed_<S>, so set nnUNet_results={holding[0]} to predict with that seed's model"
        )
    raise InputError(f"{checkpoint} does not exist: is {trainer} trained (fold {fold})?{hint}")


def _file_ending(model_dir: Path) -> str:
    """The ``file_ending`` of a model folder's ``dataset.json`` (the one nnU-Net's predictor reads).

    Raises:
        InputError: the file is missing, is not JSON, or has no ``file_ending`` (named).
    """
    path = model_dir / "dataset.json"
    try:
        return str(json.loads(path.read_text())["file_ending"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: no file_ending to read ({type(e).__name__}: {e})") from None


def check_images(images: Path, jobs: Sequence[ModelJob]) -> None:
    """Refuse a folder of images that holds no case for the models: no file ``CASE_0000<ending>`` with the
    file ending of their ``dataset.json`` (``nnUNetv2_predict`` predicts nothing there, and succeeds).

    Raises:
        InputError: no such file (naming the folder and the ending expected); a model folder without a
            readable ``dataset.json``.
    """
    for ending in dict.fromkeys(_file_ending(job.model_dir) for job in jobs):
        if not list_case_ids(images, ending):
            raise InputError(f"-i {images}: no file ends in _0000{ending} (nnU-Net's first channel of a case, "
                             f"CASE_0000{ending}, with the file ending of the models' dataset.json)")  # fmt: skip


def check_trainer_classes(trainers: Sequence[str]) -> None:
    """Refuse a trainer whose class prediction will not find: looked up as nnU-Net's predictor looks up the
    class a checkpoint names (nnU-Net's trainers, the user's ``nnUNet_extTrainer`` folders, this package's).

    Raises:
        InputError: naming each such trainer and the folders searched.
    """
    from nnunet_topkdice.pipeline.prechecks import check_trainers

    try:
        check_trainers(trainers, environment_with_trainers()[EXT_TRAINER_VARIABLE])
    except InputError as e:
        raise InputError(f"--models: {e}") from None


def image_lists(images: Path, file_ending: str) -> list[list[str]]:
    """The files of each case of an nnU-Net images folder (``CASE_0000<ending>``, ``CASE_0001<ending>``, ...),
    listed in this process.

    nnU-Net's predictor lists a folder with a pool of 12 forked processes; forking a process that already
    runs torch's threads can leave a child hanging on a lock held by a thread that did not survive the fork
    (seen once in about a dozen predictions here), so the lists are made here with nnU-Net's own functions.
    """
    from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

    files = sorted(p.name for p in images.iterdir() if p.name.endswith(file_ending))
    identifiers = get_identifiers_from_splitted_dataset_folder(str(images), file_ending)
    return [create_paths_fn(str(images), files, file_ending, case) for case in identifiers]


def predict_models(
    images: Path,
    jobs: Sequence[ModelJob],
    folds: Sequence[str],
    device: str,
    options: PredictOptions | None = None,
) -> None:
    """Predict every image of ``images`` with each model in turn, in this process.

    Args:
        images: nnU-Net raw images (``CASE_0000.nii.gz``, ...), as ``nnUNetv2_predict -i``.
        jobs: the models and their output folders (created if needed).
        folds: the folds of each model; several are ensembled, as by ``nnUNetv2_predict -f``.
        device: ``cpu``, ``cuda`` or ``mps``; threads set up as ``nnUNetv2_predict`` does.
        options: checkpoint, step size, mirroring, probabilities, resuming (default: ``nnUNetv2_predict``'s).

    Raises:
        InputError: a checkpoint's trainer class is found neither in nnU-Net, nor in ``nnUNet_extTrainer``'s
            folders, nor in this package's (which is searched without being listed there).
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_topkdice.training.seeded import torch_device

    options = PredictOptions() if options is None else options
    torch_dev = torch_device(device)
    use_folds = [fold if fold == "all" else int(fold) for fold in folds]
    for job in jobs:
        print(f"Predicting {images} with {job.model_dir} (folds {' '.join(folds)}) into {job.out_dir}", flush=True)
        predictor = nnUNetPredictor(
            tile_step_size=options.step_size, use_gaussian=True, use_mirroring=options.mirroring,
            perform_everything_on_device=True, device=torch_dev, verbose=False, verbose_preprocessing=False,
            allow_tqdm=False,
        )  # fmt: skip
        # the checkpoint names its trainer class: found in this package's folder as by topkdice train; checked
        # up front by its folder's name (check_trainer_classes), here by the name the checkpoint holds
        with trainers_on_search_path():
            try:
                predictor.initialize_from_trained_model_folder(
                    str(job.model_dir), use_folds, checkpoint_name=options.checkpoint
                )
            except RuntimeError as e:
                if "Could not find requested nnunet trainer" not in str(e):
                    raise
                raise InputError(
                    f"{job.model_dir}: nnU-Net cannot find the trainer class its checkpoint names; put the "
                    f"folder of that trainer's module in nnUNet_extTrainer ({str(e).split('. ')[0]})"
                ) from None
        job.out_dir.mkdir(parents=True, exist_ok=True)
        cases = image_lists(images, predictor.dataset_json["file_ending"])
        predictor.predict_from_files_sequential(
            cases, str(job.out_dir), save_probabilities=options.save_probabilities, overwrite=not options.resume
        )


def _predict_command(args: argparse.Namespace) -> int:
    if not args.input.is_dir():  # before anything is looked up: the commonest mistake, named first
        raise InputError(f"-i {args.input}: no such folder")
    jobs = model_jobs(args.dataset, args.configuration, args.plans, args.models, args.folds, args.checkpoint)
    check_images(args.input, jobs)
    check_trainer_classes([trainer for trainer, _ in args.models])  # imports every trainer module: last
    options = PredictOptions(
        checkpoint=args.checkpoint, step_size=args.step_size, mirroring=not args.disable_tta,
        save_probabilities=args.save_probabilities, resume=args.continue_prediction,
    )  # fmt: skip
    predict_models(args.input, jobs, args.folds, args.device, options)
    return 0


class RefusedFlag(argparse.Action):
    """An ``nnUNetv2_predict`` flag that ``topkdice predict`` does not take: a usage error (exit code 2)
    naming the flag and why, and no line in ``--help``."""

    def __init__(self, option_strings: list[str], dest: str, why: str, **kwargs) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.why = why

    def __call__(self, parser: argparse.ArgumentParser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string} (nnUNetv2_predict's) is not supported: {self.why}")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``predict`` on the ``topkdice`` parser."""
    p = subparsers.add_parser(
        "predict",
        help="predict one folder of images with several trained models in one process",
        description="Predict the images of -i with each trained model of --models in turn, in one process and "
        "without worker processes, with nnU-Net's own predictor and nnUNetv2_predict's defaults (the same "
        "segmentations as one nnUNetv2_predict call per model, without its start-up cost per model). Models "
        "are looked up in nnUNet_results as nnUNetv2_predict looks them up (-d, -c, -p and each --models "
        "trainer). -chk, -step_size, "
        "--disable_tta, --save_probabilities and --continue_prediction are nnUNetv2_predict's; its other flags "
        "are refused, with the reason. Every model, output folder and trainer is checked before the first "
        "model predicts.",
    )
    p.add_argument("-i", "--input", type=Path, required=True, metavar="IMAGES",
                   help="folder of nnU-Net raw images (CASE_0000.nii.gz, ...)")  # fmt: skip
    p.add_argument("-d", "--dataset", required=True, metavar="DATASET", help="dataset id or name")
    p.add_argument("-c", "--configuration", required=True, metavar="CONFIGURATION", help="e.g. 2d, 3d_fullres")
    p.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"], metavar="F",
                   help="folds of each model, ensembled (default: 0 1 2 3 4, as nnUNetv2_predict)")  # fmt: skip
    p.add_argument("-p", "--plans", default="nnUNetPlans", metavar="PLANS", help="plans identifier")
    p.add_argument("-device", "--device", choices=("cpu", "cuda", "mps"), default="cuda",
                   help="device (default: cuda, as nnUNetv2_predict); on the CPU torch gets one thread per core "
                   "this process may run on, or TOPKDICE_CPU_THREADS threads")  # fmt: skip
    p.add_argument("--models", nargs="+", type=parse_model_pair, required=True, metavar="TRAINER=OUTPUT_DIR",
                   help="each trainer's model and the folder its predictions go to")  # fmt: skip
    p.add_argument("-chk", "--checkpoint", default=CHECKPOINT, metavar="NAME",
                   help=f"checkpoint file of each fold (default: {CHECKPOINT}, as nnUNetv2_predict)")  # fmt: skip
    default_step = PredictOptions.step_size
    p.add_argument("-step_size", "--step-size", dest="step_size", type=step_size, default=default_step,
                   metavar="STEP", help="sliding-window step as a fraction of the patch size, in (0, 1] (default: "
                   f"{default_step}, as nnUNetv2_predict); larger is faster and less accurate")  # fmt: skip
    p.add_argument("--disable_tta", "--disable-tta", dest="disable_tta", action="store_true",
                   help="no test-time mirroring (faster, less accurate), as nnUNetv2_predict")  # fmt: skip
    p.add_argument("--save_probabilities", action="store_true",
                   help="also write each case's class probabilities (CASE.npz, CASE.pkl)")  # fmt: skip
    p.add_argument("--continue_prediction", action="store_true",
                   help="keep the cases already predicted in each output folder")  # fmt: skip
    for flag, (takes_value, why) in REFUSED_FLAGS.items():
        p.add_argument(flag, action=RefusedFlag, why=why, nargs="?" if takes_value else 0)
    p.set_defaults(func=_predict_command)
