"""Matching a dataset's label names to the paper's table columns.

The reported tables themselves live in :mod:`nnunet_topkdice.paper_datasets` (with the datasets they
belong to); they are re-exported here for the evaluation code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nnunet_topkdice.paper_datasets import PAPER_DATASETS, PAPER_TABLES, PaperTable

__all__ = [
    "PAPER_TABLES",
    "PaperTable",
    "match_paper_classes",
]

# Other spellings users' datasets give the paper's classes (normalised: lower case, no spaces/_/-), beside
# the label name our converters write (the registry's ``label_names``), which is always accepted.
_OTHER_NAMES: dict[str, tuple[str, ...]] = {
    "left_kidney": ("kidneyleft", "kidneyl", "lkidney"),
    "right_kidney": ("kidneyright", "kidneyr", "rkidney"),
    "RV": ("rightventricle",),
    "MYO": ("myocardium",),
    "LV": ("leftventricle",),
    "lesion": ("lesions", "mslesion", "mslesions"),
}


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def class_aliases(key: str) -> dict[str, tuple[str, ...]]:
    """Paper column -> the normalised label names that mean it, in the table's column order; the first
    name is our converter's.

    Raises:
        KeyError: ``key`` is not one of the paper's datasets.
    """
    dataset = PAPER_DATASETS[key]
    order = {column: i for i, column in enumerate(dataset.table_columns)}
    labels = sorted(dataset.paper_columns, key=lambda label: order.get(dataset.paper_columns[label], len(order)))
    return {dataset.paper_columns[label]: (_normalise(label), *_OTHER_NAMES.get(label, ())) for label in labels}


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
        mapping: dict[str, str] = {}
        for column, names in class_aliases(candidate).items():
            hits = [normalised[a] for a in names if a in normalised]
            if len(hits) != 1:
                break
            mapping[hits[0]] = column
        else:
            if len(mapping) == len(label_names):
                return candidate, mapping
    return None
