"""The paper's published results (Tables 1-3) and its class column names.

The numbers are copied from Hosseini, *TopK Dice Loss for Medical Image Segmentation*, Tables 1-3, in
percent as printed. They are reported numbers from the paper's own network and training (a ResNet34
U-Net, 300 or 100 epochs), not anything computed by this package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "PAPER_TABLES",
    "PaperTable",
    "match_paper_classes",
]


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's result tables.

    Attributes:
        key: ``synapse``, ``acdc`` or ``msseg`` (the ``--paper`` choice).
        number: the table number in the paper.
        dataset: the dataset's name as the paper writes it.
        columns: the table's value columns in the paper's order (means first, then per-class Dice).
        class_columns: the subset of ``columns`` that are per-class Dice columns.
        rows: (loss name as printed, values in percent, one per column).
        reference_row: the paper's own method, the row that runs are compared to.
        k: the k (percent kept) the paper used for topK-Dice and topK-CE on this dataset.
    """

    key: str
    number: int
    dataset: str
    columns: tuple[str, ...]
    class_columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[float, ...]], ...]
    reference_row: str
    k: float

    def row(self, name: str) -> dict[str, float]:
        """Column -> value in percent of the row called ``name``.

        Raises:
            KeyError: no row of that name.
        """
        for row_name, values in self.rows:
            if row_name == name:
                return dict(zip(self.columns, values, strict=True))
        raise KeyError(f"Table {self.number} has no row {name!r}; rows: {[r for r, _ in self.rows]}")

    def as_dict(self) -> dict[str, dict[str, float]]:
        """Row name -> column -> value in percent, in the paper's row order."""
        return {name: self.row(name) for name, _ in self.rows}


SYNAPSE_COLUMNS = (
    "Aorta",
    "Gallbladder",
    "Kidney left",
    "Kidney right",
    "Liver",
    "Pancreas",
    "Spleen",
    "Stomach",
)
ACDC_COLUMNS = ("RV", "MYO", "LV")

PAPER_TABLES: dict[str, PaperTable] = {
    "synapse": PaperTable(
        key="synapse",
        number=1,
        dataset="Synapse multi-organ",
        columns=("mDice", "mIoU", *SYNAPSE_COLUMNS),
        class_columns=SYNAPSE_COLUMNS,
        rows=(
            ("CE", (81.10, 72.30, 90.50, 60.65, 83.77, 81.23, 95.38, 64.94, 91.71, 80.66)),
            ("CE + Dice", (81.75, 72.74, 91.79, 60.48, 85.54, 83.67, 95.49, 68.08, 89.79, 79.19)),
            ("focal + Dice", (81.26, 72.26, 91.02, 59.10, 87.35, 84.77, 95.31, 64.98, 90.30, 77.27)),
            ("topK + Dice", (81.87, 73.00, 91.58, 61.73, 85.25, 82.80, 95.86, 65.63, 90.80, 81.32)),
            ("CE + topK-Dice (our)", (82.73, 74.07, 91.85, 61.16, 88.78, 84.72, 95.34, 68.75, 92.04, 79.18)),
        ),
        reference_row="CE + topK-Dice (our)",
        k=50.0,
    ),
    "acdc": PaperTable(
        key="acdc",
        number=2,
        dataset="ACDC",
        columns=("mDice", "mIoU", *ACDC_COLUMNS),
        class_columns=ACDC_COLUMNS,
        rows=(
            ("CE", (91.29, 84.42, 90.07, 88.91, 94.89)),
            ("CE + Dice", (91.29, 84.43, 90.37, 89.05, 94.45)),
            ("Focal-CE + Dice", (91.24, 84.39, 89.45, 88.82, 95.45)),
            ("topK-CE + Dice", (91.34, 84.53, 90.04, 89.04, 94.93)),
            ("CE + topK-Dice (our)", (91.67, 85.03, 90.20, 89.57, 95.24)),
        ),
        reference_row="CE + topK-Dice (our)",
        k=50.0,
    ),
    "msseg": PaperTable(
        key="msseg",
        number=3,
        dataset="MSSEG-2016",
        columns=("mDice", "mIoU", "mPrec.", "mRec."),
        class_columns=(),
        rows=(
            ("CE", (65.37, 48.78, 76.72, 58.82)),
            ("CE + Dice", (66.29, 49.94, 73.37, 61.95)),
            ("Focal-CE + Dice", (66.31, 50.31, 68.86, 67.83)),
            ("topK-CE + Dice", (65.93, 49.46, 73.45, 61.75)),
            ("CE + topK-Dice (our)", (67.19, 51.10, 71.69, 66.03)),
        ),
        reference_row="CE + topK-Dice (our)",
        k=30.0,
    ),
}

# The paper's class column -> label names that mean it (normalised: lower case, no spaces/_/-).
# The first alias is the name our converters write into dataset.json.
_CLASS_ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "synapse": {
        "Aorta": ("aorta",),
        "Gallbladder": ("gallbladder",),
        "Kidney left": ("leftkidney", "kidneyleft", "kidneyl", "lkidney"),
        "Kidney right": ("rightkidney", "kidneyright", "kidneyr", "rkidney"),
        "Liver": ("liver",),
        "Pancreas": ("pancreas",),
        "Spleen": ("spleen",),
        "Stomach": ("stomach",),
    },
    "acdc": {
        "RV": ("rv", "rightventricle"),
        "MYO": ("myo", "myocardium"),
        "LV": ("lv", "leftventricle"),
    },
    # Binary task: the paper's table has no per-class column; the lesion class is the whole mean.
    "msseg": {"lesion": ("lesion", "lesions", "mslesion", "mslesions")},
}


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def match_paper_classes(
    label_names: Sequence[str], key: str | None = None
) -> tuple[str, dict[str, str]] | None:
    """Map a dataset's foreground label names to one paper table's class columns.

    Args:
        label_names: the dataset.json label names without background (and ignore).
        key: only try this table (``synapse``, ``acdc``, ``msseg``); None tries all.
    Returns:
        ``(key, {label name: paper column})`` in the paper's column order, or None when the names are not
        exactly that table's classes (each column matched once, no label left over).
    Raises:
        ValueError: ``key`` is not one of the paper's tables.
    """
    if key is not None and key not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {key!r}; choose from {sorted(PAPER_TABLES)}")
    keys = [key] if key is not None else list(PAPER_TABLES)
    normalised = {_normalise(n): n for n in label_names}
    if len(normalised) != len(label_names):
        return None
    for candidate in keys:
        aliases = _CLASS_ALIASES[candidate]
        mapping: dict[str, str] = {}
        for column, names in aliases.items():
            hits = [normalised[a] for a in names if a in normalised]
            if len(hits) != 1:
                break
            mapping[hits[0]] = column
        else:
            if len(mapping) == len(label_names):
                return candidate, mapping
    return None
