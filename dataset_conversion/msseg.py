"""MSSEG-2016 multiple-sclerosis lesion MRI (15 training patients) -> nnU-Net raw format.

Input: the MSSEG-2016 training root, in either public layout:

* ``Pre-processed/<code>/{FLAIR,T1,T2,DP,GADO}_preprocessed.nii.gz`` with
  ``ManualSegmentation/<code>/Consensus.nii.gz`` (codes such as ``01016SACH``; the first two digits are
  the centre), or
* ``Training/Center_XX/Patient_*/Preprocessed_Data/*_preprocessed.nii.gz`` with
  ``Training/Center_XX/Patient_*/Masks/Consensus.nii.gz`` (the ``Training`` folder itself is accepted too;
  the patient folders may have any name after ``Patient_``, e.g. ``Patient_01`` or ``Patient_7``).

Output: ``<raw_root>/Dataset203_MSSEG`` with five channels per case (0 FLAIR, 1 T1, 2 T2, 3 DP, 4 GADO),
label 1 = lesion (consensus > 0), 9 train cases in imagesTr/labelsTr and 6 test cases in
imagesTs/labelsTs, split at random but reproducibly from ``seed`` and stratified by centre (3 train +
2 test per centre). The split is saved as ``split.json`` in the dataset folder.

Case ids are the patient codes (``01016SACH``) for the first layout and ``center<XX>_patient<name>`` for the
second (``Center_01/Patient_01`` -> ``center01_patient01``, ``Center_07/Patient_7`` -> ``center07_patient7``).

    topkdice convert msseg -i /data/MSSEG-2016 --seed 0
    python -m dataset_conversion.msseg -i /data/MSSEG-2016 -o $nnUNet_raw --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from dataset_conversion import common
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.paper_datasets import PAPER_DATASETS

PAPER = PAPER_DATASETS["msseg"]
DEFAULT_DATASET_ID = PAPER.dataset_id  # 203
DATASET_NAME = PAPER.name
MODALITIES: tuple[str, ...] = ("FLAIR", "T1", "T2", "DP", "GADO")
CHANNEL_NAMES = dict(enumerate(MODALITIES))
LABELS: dict[str, int] = PAPER.labels  # background 0, lesion 1

# MSSEG-2016 training data: 5 patients from each of three centres (01 Rennes, 07 Bordeaux, 08 Lyon).
EXPECTED_CENTRES: tuple[str, ...] = ("01", "07", "08")
PATIENTS_PER_CENTRE = 5
TEST_PER_CENTRE = 2  # paper: 9 train / 6 test; stratified: 3 train + 2 test per centre
WHOLE_SET = (f"{PATIENTS_PER_CENTRE * len(EXPECTED_CENTRES)} patients, {PATIENTS_PER_CENTRE} in each of the "
             f"centres {', '.join(EXPECTED_CENTRES)}")  # fmt: skip

DESCRIPTION = common.DatasetDescription(
    DATASET_NAME, CHANNEL_NAMES, LABELS,
    reference="https://portal.fli-iam.irisa.fr/msseg-challenge/",
    license="see the MSSEG-2016 (FLI-IAM / Shanoir) terms of use",
)

SPLIT_FILE = "split.json"
LAYOUT_PREPROCESSED = "Pre-processed"
LAYOUT_TRAINING = "Training"

_CODE = re.compile(r"^(\d{2})\d{3}[A-Za-z0-9]*$")  # 01016SACH: centre 01, patient 016, initials
_CENTRE_DIR = re.compile(r"^Center_(\d{2})$")
_PATIENT_DIR = re.compile(r"^Patient_(.+)$")  # Patient_01, Patient_7, Patient_A12: any name after "Patient_"
_CASE_ID_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # safe in nnU-Net file names


def make_split(
    patients: Mapping[str, str], seed: int, *, test_per_centre: int = TEST_PER_CENTRE
) -> dict[str, list[str]]:
    """Random, seeded split stratified by centre.

    Args:
        patients: case id -> centre code (e.g. ``{"01016SACH": "01", ...}``).
        seed: any integer; the same patients and seed always give the same split.
        test_per_centre: test cases drawn from each centre, the rest of the centre trains.
    Returns:
        ``{"train": sorted case ids, "test": sorted case ids}``.
    Raises:
        InputError: a centre with no more than ``test_per_centre`` patients (it would have no training case).
    """
    by_centre: dict[str, list[str]] = {}
    for case_id, centre in patients.items():
        by_centre.setdefault(centre, []).append(case_id)
    rng = random.Random(seed)
    train, test = [], []
    for centre in sorted(by_centre):
        members = sorted(by_centre[centre])
        if len(members) <= test_per_centre:
            raise InputError(
                f"centre {centre} has {len(members)} patient(s); need more than {test_per_centre} to split"
            )
        rng.shuffle(members)
        test += members[:test_per_centre]
        train += members[test_per_centre:]
    return {"train": sorted(train), "test": sorted(test)}


def _preprocessed_layout(root: Path) -> dict[str, tuple[str, tuple[Path, ...], Path]]:
    images_root = root / LAYOUT_PREPROCESSED
    masks_root = common.require_dir(root / "ManualSegmentation", "MSSEG ManualSegmentation folder")
    patients = {}
    for folder in sorted(p for p in images_root.iterdir() if p.is_dir()):
        match = _CODE.match(folder.name)
        if match is None:
            continue
        images = tuple(folder / f"{m}_preprocessed.nii.gz" for m in MODALITIES)
        patients[folder.name] = (match.group(1), images, masks_root / folder.name / "Consensus.nii.gz")
    return patients


def _training_layout(training: Path) -> dict[str, tuple[str, tuple[Path, ...], Path]]:
    patients = {}
    for centre_dir in sorted(p for p in training.iterdir() if p.is_dir()):
        centre = _CENTRE_DIR.match(centre_dir.name)
        if centre is None:
            continue
        for patient_dir in sorted(p for p in centre_dir.iterdir() if p.is_dir()):
            patient = _PATIENT_DIR.match(patient_dir.name)
            if patient is None:
                continue
            if not _CASE_ID_PART.match(patient.group(1)):
                raise InputError(
                    f"cannot make a case id from the patient folder {patient_dir}: after 'Patient_' use only "
                    "letters, digits, '_' and '-'"
                )
            case_id = f"center{centre.group(1)}_patient{patient.group(1)}"
            images = tuple(patient_dir / "Preprocessed_Data" / f"{m}_preprocessed.nii.gz" for m in MODALITIES)
            patients[case_id] = (centre.group(1), images, patient_dir / "Masks" / "Consensus.nii.gz")
    return patients


def find_layout(src: Path) -> tuple[str, Path]:
    """Which public layout ``src`` uses: ``("Pre-processed", src)`` or ``("Training", training folder)``.

    Raises:
        InputError: neither layout is found, naming the expected paths.
    """
    common.require_dir(src, "MSSEG-2016 input folder")
    if (src / LAYOUT_PREPROCESSED).is_dir():
        return LAYOUT_PREPROCESSED, src
    if (src / LAYOUT_TRAINING).is_dir():
        return LAYOUT_TRAINING, src / LAYOUT_TRAINING
    if any(_CENTRE_DIR.match(p.name) for p in src.iterdir() if p.is_dir()):
        return LAYOUT_TRAINING, src
    raise InputError(
        f"missing MSSEG-2016 data: expected the folder {src / LAYOUT_PREPROCESSED} "
        f"or {src / LAYOUT_TRAINING} (with Center_XX/Patient_* inside)"
    )


def collect_patients(src: Path) -> tuple[str, dict[str, tuple[str, tuple[Path, ...], Path]]]:
    """``(layout, case id -> (centre, five image files in channel order, consensus file))``.

    Raises:
        InputError: no known layout; not exactly 5 patients in each of the centres 01, 07, 08; any
            modality or consensus file missing (all named or counted at once); both with the whole training
            set that the converter needs.
    """
    layout, root = find_layout(src)
    patients = _preprocessed_layout(root) if layout == LAYOUT_PREPROCESSED else _training_layout(root)
    counts: dict[str, int] = {}
    for centre, _, _ in patients.values():
        counts[centre] = counts.get(centre, 0) + 1
    expected = {centre: PATIENTS_PER_CENTRE for centre in EXPECTED_CENTRES}
    if counts != expected:
        found = ", ".join(f"centre {c}: {n}" for c, n in sorted(counts.items())) or "no patient folders"
        where = root if layout == LAYOUT_TRAINING else root / LAYOUT_PREPROCESSED
        raise common.training_set_error(f"MSSEG-2016 patients under {where}: found {found}", WHOLE_SET)
    missing = [
        path for _, images, consensus in patients.values() for path in (*images, consensus) if not path.is_file()
    ]
    common.require_inputs(missing, "MSSEG-2016 file(s)", root=root, whole_set=WHOLE_SET)
    return layout, patients


def convert(
    src: Path,
    raw_root: Path,
    *,
    dataset_id: int = DEFAULT_DATASET_ID,
    seed: int = 0,
    overwrite: bool = False,
    num_processes: int = 1,
) -> Path:
    """Convert MSSEG-2016 into ``raw_root/DatasetXXX_MSSEG``; returns that folder. Reads no environment.

    The split is saved as ``split.json`` (``{"seed", "layout", "train", "test", "centres"}``) in the folder.

    Raises:
        InputError: missing or unreadable input, modalities or consensus whose geometry differs from FLAIR
            (naming both files), NaN or negative consensus values, existing target without ``overwrite``.
            Nothing is left behind.
    """
    layout, patients = collect_patients(Path(src))
    centres = {case_id: centre for case_id, (centre, _, _) in patients.items()}
    split = make_split(centres, seed)
    cases = {case_id: (images, consensus) for case_id, (_, images, consensus) in patients.items()}
    jobs = common.make_jobs(cases, split["test"], common.binarize_labels)
    split_record = {"seed": seed, "layout": layout, **split, "centres": dict(sorted(centres.items()))}
    summary = (
        f"MSSEG-2016 MS lesions, 5 modalities, consensus > 0 as lesion; 9 train / 6 test stratified by centre, "
        f"seed {seed} (see {SPLIT_FILE})"
    )
    return common.build_dataset(
        jobs, Path(raw_root), dataset_id, DESCRIPTION, summary=summary, overwrite=overwrite,
        num_processes=num_processes, extra_json={SPLIT_FILE: split_record},
    )  # fmt: skip


def command_options(args: argparse.Namespace) -> dict:
    """The command line's further ``convert`` argument: ``--seed``."""
    return {"seed": args.seed}


def command_summary(folder: Path) -> str:
    """The split saved in ``folder``, as the command prints it before the folder."""
    split = json.loads((folder / SPLIT_FILE).read_text())
    return "\n".join(
        [
            f"MSSEG-2016 split (seed {split['seed']}, stratified by centre):",
            f"  train ({len(split['train'])}): {' '.join(split['train'])}",
            f"  test  ({len(split['test'])}): {' '.join(split['test'])}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dataset_conversion.msseg``; returns the exit code."""
    from dataset_conversion.cli import run_standalone

    return run_standalone("msseg", argv)


if __name__ == "__main__":
    sys.exit(main())
