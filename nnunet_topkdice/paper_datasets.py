"""The paper's three datasets in one place: ids, names, labels, protocol choices and reported tables.

Everything that more than one layer needs about Synapse, ACDC and MSSEG-2016 is written here once: the
converters (:mod:`dataset_conversion`) take the dataset id, folder name and label names from it, the
evaluation takes the reported tables and the paper's class columns, the pipeline the default fold, the
folds of the converter's split and k, and every command line offers :data:`PAPER_DATASET_KEYS` as its
choices. This module sits at the bottom of the package: it imports only the standard library and
:mod:`nnunet_topkdice.errors`.

The reported numbers are copied from Hosseini, *TopK Dice Loss for Medical Image Segmentation*, Tables
1-3, in percent as printed. They come from the paper's own network and training (a ResNet34 U-Net, 300 or
100 epochs), not from anything computed by this package.

    >>> from nnunet_topkdice.paper_datasets import PAPER_DATASETS
    >>> acdc = PAPER_DATASETS["acdc"]
    >>> acdc.dataset_id, acdc.folder_name, acdc.default_fold, acdc.split_folds, acdc.topk_k
    (202, 'Dataset202_ACDC', '0', 1, 50)
    >>> acdc.labels
    {'background': 0, 'RV': 1, 'MYO': 2, 'LV': 3}
    >>> acdc.table.row("CE + topK-Dice (our)")["mDice"]
    91.67
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nnunet_topkdice.errors import InputError

__all__ = [
    "PAPER_DATASETS",
    "PAPER_DATASET_KEYS",
    "PAPER_TABLES",
    "PaperDataset",
    "PaperTable",
    "paper_dataset",
]

REFERENCE_ROW = "CE + topK-Dice (our)"  # the paper's own method, as its tables print it


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's result tables (built from a :class:`PaperDataset`, see its ``table``).

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


@dataclass(frozen=True)
class PaperDataset:
    """One dataset of the paper's experiments: what the converter writes and how the paper used it.

    Attributes:
        key: the command-line name (``topkdice convert KEY``, ``--paper KEY``, ``--dataset KEY``).
        name: the nnU-Net dataset name our converter writes (``Dataset<id>_<name>``).
        dataset_id: the id our converter uses by default.
        default_fold: ``"all"`` where the paper has no validation set, ``"0"`` where the converter writes
            the paper's train/val split as fold 0 of ``splits_final.json``.
        split_folds: the folds of the ``splits_final.json`` that the converter writes (ACDC: 1, the paper's
            train/val split); None where it writes none, so that nnU-Net splits the training cases into its
            own 5 folds. A numeric fold beyond them is refused (nnU-Net would train it on a random split).
        topk_k: k (percent kept) of topK CE and topK-Dice in the paper (section 3.3).
        label_names: the foreground labels in label-value order (1, 2, ...), as written to dataset.json.
        paper_columns: label name -> the paper's name for that class (its table column; MSSEG's single
            class has no column of its own, its Dice is the table's mean).
        table_number, table_title, table_columns, table_rows: the paper's reported table (means first,
            then per-class Dice, in the paper's order; values in percent).
    """

    key: str
    name: str
    dataset_id: int
    default_fold: str
    split_folds: int | None
    topk_k: int
    label_names: tuple[str, ...]
    paper_columns: Mapping[str, str]
    table_number: int
    table_title: str
    table_columns: tuple[str, ...]
    table_rows: tuple[tuple[str, tuple[float, ...]], ...]

    @property
    def folder_name(self) -> str:
        """The default raw folder name, e.g. ``Dataset201_Synapse``."""
        return f"Dataset{self.dataset_id:03d}_{self.name}"

    @property
    def labels(self) -> dict[str, int]:
        """dataset.json's ``labels``: ``{"background": 0, label_names[0]: 1, ...}``."""
        return {"background": 0, **{name: value for value, name in enumerate(self.label_names, start=1)}}

    @property
    def table(self) -> PaperTable:
        """The paper's reported table for this dataset."""
        class_columns = tuple(c for c in self.table_columns if c in set(self.paper_columns.values()))
        return PaperTable(
            key=self.key,
            number=self.table_number,
            dataset=self.table_title,
            columns=self.table_columns,
            class_columns=class_columns,
            rows=self.table_rows,
            reference_row=REFERENCE_ROW,
            k=float(self.topk_k),
        )


_SYNAPSE = PaperDataset(
    key="synapse", name="Synapse", dataset_id=201, default_fold="all", split_folds=None, topk_k=50,
    # The paper's 8 organs, renumbered in their original BTCV order (dataset_conversion.synapse).
    label_names=(
        "spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas",
    ),  # fmt: skip
    paper_columns={
        "spleen": "Spleen",
        "right_kidney": "Kidney right",
        "left_kidney": "Kidney left",
        "gallbladder": "Gallbladder",
        "liver": "Liver",
        "stomach": "Stomach",
        "aorta": "Aorta",
        "pancreas": "Pancreas",
    },
    table_number=1,
    table_title="Synapse multi-organ",
    table_columns=(
        "mDice", "mIoU",
        "Aorta", "Gallbladder", "Kidney left", "Kidney right", "Liver", "Pancreas", "Spleen", "Stomach",
    ),  # fmt: skip
    table_rows=(
        ("CE", (81.10, 72.30, 90.50, 60.65, 83.77, 81.23, 95.38, 64.94, 91.71, 80.66)),
        ("CE + Dice", (81.75, 72.74, 91.79, 60.48, 85.54, 83.67, 95.49, 68.08, 89.79, 79.19)),
        ("focal + Dice", (81.26, 72.26, 91.02, 59.10, 87.35, 84.77, 95.31, 64.98, 90.30, 77.27)),
        ("topK + Dice", (81.87, 73.00, 91.58, 61.73, 85.25, 82.80, 95.86, 65.63, 90.80, 81.32)),
        (REFERENCE_ROW, (82.73, 74.07, 91.85, 61.16, 88.78, 84.72, 95.34, 68.75, 92.04, 79.18)),
    ),
)

_ACDC = PaperDataset(
    key="acdc", name="ACDC", dataset_id=202, default_fold="0", split_folds=1, topk_k=50,
    label_names=("RV", "MYO", "LV"),
    paper_columns={"RV": "RV", "MYO": "MYO", "LV": "LV"},
    table_number=2,
    table_title="ACDC",
    table_columns=("mDice", "mIoU", "RV", "MYO", "LV"),
    table_rows=(
        ("CE", (91.29, 84.42, 90.07, 88.91, 94.89)),
        ("CE + Dice", (91.29, 84.43, 90.37, 89.05, 94.45)),
        ("Focal-CE + Dice", (91.24, 84.39, 89.45, 88.82, 95.45)),
        ("topK-CE + Dice", (91.34, 84.53, 90.04, 89.04, 94.93)),
        (REFERENCE_ROW, (91.67, 85.03, 90.20, 89.57, 95.24)),
    ),
)

_MSSEG = PaperDataset(
    key="msseg", name="MSSEG", dataset_id=203, default_fold="all", split_folds=None, topk_k=30,
    label_names=("lesion",),
    # Binary task: the table has no per-class column; the lesion class is the whole mean.
    paper_columns={"lesion": "lesion"},
    table_number=3,
    table_title="MSSEG-2016",
    table_columns=("mDice", "mIoU", "mPrec.", "mRec."),
    table_rows=(
        ("CE", (65.37, 48.78, 76.72, 58.82)),
        ("CE + Dice", (66.29, 49.94, 73.37, 61.95)),
        ("Focal-CE + Dice", (66.31, 50.31, 68.86, 67.83)),
        ("topK-CE + Dice", (65.93, 49.46, 73.45, 61.75)),
        (REFERENCE_ROW, (67.19, 51.10, 71.69, 66.03)),
    ),
)

PAPER_DATASETS: dict[str, PaperDataset] = {d.key: d for d in (_SYNAPSE, _ACDC, _MSSEG)}
PAPER_DATASET_KEYS: tuple[str, ...] = tuple(PAPER_DATASETS)  # ("synapse", "acdc", "msseg"): CLI choices
PAPER_TABLES: dict[str, PaperTable] = {key: d.table for key, d in PAPER_DATASETS.items()}


def paper_dataset(key: str) -> PaperDataset:
    """The dataset called ``key`` (``synapse``, ``acdc`` or ``msseg``).

    Raises:
        InputError: (a ValueError) an unknown key, naming it and the choices.
    """
    try:
        return PAPER_DATASETS[key]
    except KeyError:
        raise InputError(f"unknown paper dataset {key!r}; choose from {', '.join(PAPER_DATASET_KEYS)}") from None
