"""Synapse multi-organ CT (MICCAI 2015 Multi-Atlas Abdomen Labeling, "BTCV") -> nnU-Net raw format.

Input: the unpacked ``RawData.zip`` from synapse.org (syn3193805), i.e. the folder that contains
``Training/img/imgNNNN.nii.gz`` and ``Training/label/labelNNNN.nii.gz`` for the 30 labelled cases
(the ``Training`` folder itself is accepted too). Volumes of any size are accepted.

Output: ``<raw_root>/Dataset201_Synapse`` with the 18 TransUNet training cases in imagesTr/labelsTr and
the 12 test cases in imagesTs/labelsTs; the 13 original labels are reduced to the paper's 8 organs.

    topkdice convert synapse -i /data/RawData
    python -m dataset_conversion.synapse -i /data/RawData -o $nnUNet_raw
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from dataset_conversion import common
from nnunet_topkdice.paper_datasets import PAPER_DATASETS

PAPER = PAPER_DATASETS["synapse"]
DEFAULT_DATASET_ID = PAPER.dataset_id  # 201
DATASET_NAME = PAPER.name
CHANNEL_NAMES = {0: "CT"}

# TransUNet's split (Chen et al. 2021, lists/lists_Synapse/train.txt and test_vol.txt).
TRAIN_CASES: tuple[str, ...] = tuple(
    f"case{n:04d}" for n in (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
)
TEST_CASES: tuple[str, ...] = tuple(f"case{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38))
WHOLE_SET = f"{len(TRAIN_CASES + TEST_CASES)} labelled cases, 0001-0010 and 0021-0040"  # the split uses every one

# The paper's 8 organs, renumbered 1..8 in their original order (the registry's label_names); background 0.
LABELS: dict[str, int] = PAPER.labels

# The 8 organs' values in the original BTCV labels (1 spleen ... 13 left adrenal gland).
ORIGINAL_VALUES: dict[str, int] = {
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "gallbladder": 4,
    "liver": 6,
    "stomach": 7,
    "aorta": 8,
    "pancreas": 11,
}

# Original BTCV label value -> new value. Every original value 0..13 is allowed; the five structures the
# paper drops (5 esophagus, 9 inferior vena cava, 10 portal and splenic vein, 12 right and 13 left adrenal
# gland) become background.
ORIGINAL_TO_NEW: dict[int, int] = {
    **{value: 0 for value in range(14)},
    **{ORIGINAL_VALUES[name]: LABELS[name] for name in PAPER.label_names},
}

DESCRIPTION = common.DatasetDescription(
    DATASET_NAME, CHANNEL_NAMES, LABELS,
    reference="https://www.synapse.org/#!Synapse:syn3193805/wiki/217789",
    license="see the Synapse syn3193805 terms of use",
)


def case_number(case_id: str) -> str:
    """The 4-digit number of a case id: ``case_number("case0005") == "0005"``."""
    return case_id.removeprefix("case")


def find_training_folder(src: Path) -> Path:
    """The folder holding ``img`` and ``label``: ``src/Training``, or ``src`` itself if it is that folder.

    Raises:
        InputError: neither exists, naming the expected path.
    """
    if (src / "img").is_dir() and (src / "label").is_dir() and not (src / "Training").exists():
        return src
    common.require_dir(src, "Synapse input folder (the unpacked RawData.zip)")
    return common.require_dir(src / "Training", "Synapse Training folder")


def collect_cases(src: Path) -> dict[str, tuple[tuple[Path, ...], Path]]:
    """``case id -> ((image,), label)`` for all 30 cases of the split.

    Raises:
        InputError: any expected file is missing (all named or counted at once, and that the converter needs
            the whole training set).
    """
    training = find_training_folder(src)
    cases = {}
    missing = []
    for case_id in sorted((*TRAIN_CASES, *TEST_CASES)):  # missing files named in case order
        number = case_number(case_id)
        image = training / "img" / f"img{number}.nii.gz"
        label = training / "label" / f"label{number}.nii.gz"
        missing += [p for p in (image, label) if not p.is_file()]
        cases[case_id] = ((image,), label)
    common.require_inputs(missing, "Synapse file(s)", root=training, whole_set=WHOLE_SET)
    return cases


def convert(
    src: Path,
    raw_root: Path,
    *,
    dataset_id: int = DEFAULT_DATASET_ID,
    overwrite: bool = False,
    num_processes: int = 1,
) -> Path:
    """Convert Synapse into ``raw_root/DatasetXXX_Synapse``; returns that folder. Reads no environment.

    Raises:
        InputError: missing or unreadable input file, geometry mismatch between an image and its label,
            label values outside 0..13, existing target without ``overwrite``. Nothing is left behind.
    """
    jobs = common.make_jobs(collect_cases(Path(src)), TEST_CASES, common.label_mapping_transform(ORIGINAL_TO_NEW))
    summary = "Synapse multi-organ CT, 8 organs, TransUNet split (18 train / 12 test)"
    return common.build_dataset(
        jobs, Path(raw_root), dataset_id, DESCRIPTION, summary=summary, overwrite=overwrite,
        num_processes=num_processes,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dataset_conversion.synapse``; returns the exit code."""
    from dataset_conversion.cli import run_standalone

    return run_standalone("synapse", argv)


if __name__ == "__main__":
    sys.exit(main())
