"""ACDC cine-MRI (Automated Cardiac Diagnosis Challenge) -> nnU-Net raw format.

Input: the folder that contains ``training/patientXXX/`` (the ACDC download's ``database`` folder; the
``training`` folder itself is accepted too). Each patient folder holds ``Info.cfg`` (lines such as
``ED: 1`` and ``ES: 12``), ``patientXXX_frameYY.nii.gz`` and ``patientXXX_frameYY_gt.nii.gz``. Only the
100 training patients are used (the challenge's 50 test patients are not).

Output: ``<raw_root>/Dataset202_ACDC`` with the ED and ES frame of each patient as two cases
``patientXXX_frameYY``: the 70 train and 10 validation patients in imagesTr/labelsTr, the 20 test patients
in imagesTs/labelsTs, and ``splits_final.json`` whose only fold is the paper's train/val split by patient.
The same ``splits_final.json`` is written to ``<preprocessed_root>/Dataset202_ACDC/`` when given.

    topkdice convert acdc -i /data/ACDC/database
    python -m dataset_conversion.acdc -i /data/ACDC/database -o $nnUNet_raw
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from dataset_conversion import common
from nnunet_topkdice.errors import InputError, OverwriteRefused
from nnunet_topkdice.input_checks import check_output_folder
from nnunet_topkdice.paper_datasets import PAPER_DATASETS

PAPER = PAPER_DATASETS["acdc"]
DEFAULT_DATASET_ID = PAPER.dataset_id  # 202
DATASET_NAME = PAPER.name
CHANNEL_NAMES = {0: "cineMRI"}
LABELS: dict[str, int] = PAPER.labels  # background 0, RV 1, MYO 2, LV 3: ACDC's own values, kept
ORIGINAL_TO_NEW: dict[int, int] = {value: value for value in LABELS.values()}

ALL_PATIENTS: tuple[str, ...] = tuple(f"patient{n:03d}" for n in range(1, 101))
# The 70/10/20 split of TransUNet-style work on ACDC, from MT-UNet (Wang et al. 2022).
VAL_PATIENTS: tuple[str, ...] = tuple(f"patient{n:03d}" for n in (19, 21, 29, 33, 41, 50, 61, 71, 76, 80))
TEST_PATIENTS: tuple[str, ...] = tuple(
    f"patient{n:03d}" for n in (2, 3, 8, 9, 12, 14, 17, 24, 42, 48, 49, 53, 55, 64, 67, 79, 81, 88, 92, 95)
)
TRAIN_PATIENTS: tuple[str, ...] = tuple(p for p in ALL_PATIENTS if p not in VAL_PATIENTS + TEST_PATIENTS)
WHOLE_SET = f"{len(ALL_PATIENTS)} patients, {ALL_PATIENTS[0]} to {ALL_PATIENTS[-1]}"  # the split uses every one

DESCRIPTION = common.DatasetDescription(
    DATASET_NAME, CHANNEL_NAMES, LABELS,
    reference="https://www.creatis.insa-lyon.fr/Challenge/acdc/",
    license="see the ACDC challenge terms of use",
)

SPLITS_FILE = "splits_final.json"


def patient_of(case_id: str) -> str:
    """``patient_of("patient001_frame12") == "patient001"``."""
    return case_id.split("_", 1)[0]


def frame_case_id(patient: str, frame: int) -> str:
    """``frame_case_id("patient001", 1) == "patient001_frame01"`` (frames zero-padded to 2 digits)."""
    return f"{patient}_frame{frame:02d}"


def parse_info_cfg(path: Path) -> tuple[int, int]:
    """The (ED, ES) frame numbers from an ACDC ``Info.cfg`` (``key: value`` lines).

    Raises:
        InputError: the file is missing, or ED/ES is absent or not a positive integer, naming the file.
    """
    common.require_file(path, "ACDC Info.cfg")
    entries = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            entries[key.strip()] = value.strip()
    frames = []
    for key in ("ED", "ES"):
        if key not in entries:
            raise InputError(f"{path} has no '{key}: <frame>' line")
        try:
            # Some tools write "12.0"; accept whole-valued floats but nothing else.
            number = float(entries[key])
        except ValueError:
            number = float("nan")
        if not number.is_integer() or number < 1:
            raise InputError(f"{path}: {key} must be a positive frame number, got {entries[key]!r}")
        frames.append(int(number))
    if frames[0] == frames[1]:
        raise InputError(f"{path}: ED and ES name the same frame {frames[0]}")
    return frames[0], frames[1]


def find_training_folder(src: Path) -> Path:
    """``src/training``, or ``src`` itself if it already holds the ``patientXXX`` folders.

    Raises:
        InputError: neither exists, naming the expected path.
    """
    if (src / "patient001").is_dir() and not (src / "training").exists():
        return src
    common.require_dir(src, "ACDC input folder (the folder containing 'training')")
    return common.require_dir(src / "training", "ACDC training folder")


def collect_cases(src: Path) -> dict[str, tuple[tuple[Path, ...], Path]]:
    """``case id -> ((image,), label)`` for the ED and ES frames of the 100 training patients.

    Raises:
        InputError: missing patient folders (all named or counted at once, and that the converter needs the
            whole training set); a missing Info.cfg, frame or ground-truth file (named), or a bad Info.cfg.
    """
    training = find_training_folder(src)
    missing = [training / patient for patient in ALL_PATIENTS if not (training / patient).is_dir()]
    common.require_inputs(missing, "ACDC patient folder(s)", root=training, whole_set=WHOLE_SET)
    cases = {}
    for patient in ALL_PATIENTS:
        folder = training / patient
        for frame in parse_info_cfg(folder / "Info.cfg"):
            case_id = frame_case_id(patient, frame)
            image = common.require_file(folder / f"{case_id}.nii.gz", f"ACDC image of {case_id}")
            label = common.require_file(folder / f"{case_id}_gt.nii.gz", f"ACDC ground truth of {case_id}")
            cases[case_id] = ((image,), label)
    return cases


def make_splits(case_ids: Iterable[str]) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json`` content: one fold (the registry's ``split_folds``, which ``reproduce``
    checks ``--fold`` against before the dataset exists), train/val by patient; test patients left out.

    Both frames of a patient are always on the same side because the split is by patient.
    Returns ``[{"train": sorted case ids, "val": sorted case ids}]``.
    """
    case_ids = sorted(case_ids)
    return [
        {
            "train": [c for c in case_ids if patient_of(c) in TRAIN_PATIENTS],
            "val": [c for c in case_ids if patient_of(c) in VAL_PATIENTS],
        }
    ]


def _same_splits(a: Sequence[Mapping[str, Sequence[str]]], b: Sequence[Mapping[str, Sequence[str]]]) -> bool:
    return len(a) == len(b) and all(
        set(x.get("train", ())) == set(y.get("train", ())) and set(x.get("val", ())) == set(y.get("val", ()))
        for x, y in zip(a, b, strict=True)
    )


def _check_preprocessed_splits(path: Path, splits: list[dict[str, list[str]]], *, overwrite: bool) -> None:
    """Refuse to replace a different existing splits file without ``overwrite`` (nnU-Net would reject it)."""
    if not path.exists() or overwrite:
        return
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OverwriteRefused(f"{path} exists and is not readable JSON ({e})") from e
    if not isinstance(existing, list) or not _same_splits(existing, splits):
        raise OverwriteRefused(f"{path} exists with a different split")


def convert(
    src: Path,
    raw_root: Path,
    *,
    dataset_id: int = DEFAULT_DATASET_ID,
    preprocessed_root: Path | None = None,
    overwrite: bool = False,
    num_processes: int = 1,
) -> Path:
    """Convert ACDC into ``raw_root/DatasetXXX_ACDC``; returns that folder. Reads no environment.

    ``splits_final.json`` is written into the raw dataset folder and, when ``preprocessed_root`` is given,
    into ``preprocessed_root/DatasetXXX_ACDC/`` (created if needed), published together with the dataset
    as the last step (both or neither).

    Raises:
        InputError: missing or unreadable input, bad Info.cfg, geometry mismatch between a frame and its
            ground truth, label values outside {0, 1, 2, 3}, existing target (or a different existing
            preprocessed ``splits_final.json``) without ``overwrite``, an output folder (raw or
            ``preprocessed_root``) that is a file or not writable. Nothing is left behind.
    """
    src, raw_root = Path(src), Path(raw_root)
    folder_name = common.dataset_folder_name(dataset_id, DATASET_NAME)
    cases = collect_cases(src)
    splits = make_splits(case for case in cases if patient_of(case) not in TEST_PATIENTS)
    common.check_target(raw_root, folder_name, overwrite=overwrite)
    outside_json = {}
    if preprocessed_root is not None:
        check_output_folder(Path(preprocessed_root), "the nnU-Net preprocessed folder (nnUNet_preprocessed)")
        preprocessed_splits = Path(preprocessed_root) / folder_name / SPLITS_FILE
        _check_preprocessed_splits(preprocessed_splits, splits, overwrite=overwrite)
        outside_json[preprocessed_splits] = splits
    test_cases = [case for case in cases if patient_of(case) in TEST_PATIENTS]
    jobs = common.make_jobs(cases, test_cases, common.label_mapping_transform(ORIGINAL_TO_NEW))
    summary = (
        "ACDC cine-MRI, ED and ES frames of the 100 training patients, MT-UNet 70/10/20 split by patient "
        "(fold 0 of splits_final.json = train/val)"
    )
    return common.build_dataset(
        jobs, raw_root, dataset_id, DESCRIPTION, summary=summary, overwrite=overwrite,
        num_processes=num_processes, extra_json={SPLITS_FILE: splits}, outside_json=outside_json,
    )  # fmt: skip


def command_options(args: argparse.Namespace) -> dict:
    """The command line's further ``convert`` arguments: ``$nnUNet_preprocessed`` gets a splits copy."""
    return {"preprocessed_root": common.resolve_preprocessed_root()}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dataset_conversion.acdc``; returns the exit code."""
    from dataset_conversion.cli import run_standalone

    return run_standalone("acdc", argv)


if __name__ == "__main__":
    sys.exit(main())
