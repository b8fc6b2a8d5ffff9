"""What the evaluation reads from an nnU-Net dataset.json: label names and values, file ending, ignore label,
and the table's class columns (the paper's names where the labels match one of its tables)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.evaluation.metrics import ClassValue
from nnunet_topkdice.evaluation.paper import PAPER_TABLES, match_paper_classes

__all__ = ["DatasetInfo", "dataset_info_from_json", "resolve_dataset", "table_classes"]


@dataclass(frozen=True)
class DatasetInfo:
    """What the evaluation needs from a dataset.json.

    Attributes:
        name: the dataset's folder name (``Dataset201_Synapse``) or dataset.json's ``name``, if known.
        json_path: where the dataset.json was read from (None when a dict was given).
        file_ending: e.g. ``.nii.gz``.
        classes: foreground label name -> label value (a tuple for a region), in dataset.json's order.
        ignore_label: the ``ignore`` label value, if any.
        allowed_values: every value a reference or prediction file may contain.
        reader_writer: nnU-Net's reader-writer class for the dataset's files (``SimpleITKIO``, ``Tiff3DIO``,
            ``NaturalImage2DIO``, ...); from a dataset.json, its ``overwrite_image_reader_writer`` (None when
            unset) until :func:`~nnunet_topkdice.evaluation.label_io.reader_writer_name` settles it with a file.
    """

    name: str | None
    json_path: Path | None
    file_ending: str
    classes: dict[str, ClassValue]
    ignore_label: int | None
    allowed_values: frozenset[int]
    reader_writer: str | None = None


def _label_value(name: str, value: Any, source: str) -> ClassValue:
    if isinstance(value, bool):
        raise InputError(f"{source}: label {name!r} has a non-integer value {value!r}")
    if isinstance(value, int):
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return value[0] if len(value) == 1 else tuple(value)
    raise InputError(f"{source}: label {name!r} must be an integer or a list of integers, got {value!r}")


def has_regions(dataset_json: Mapping[str, Any] | None) -> bool:
    """Whether ``dataset_json`` describes a region-based (sigmoid) dataset, by nnU-Net's own rule (a label
    given as several values); False without one, or where nnU-Net cannot read its labels."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    if not isinstance(dataset_json, Mapping) or not isinstance(dataset_json.get("labels"), Mapping):
        return False
    try:
        return LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order")).has_regions
    except (AssertionError, KeyError, TypeError, ValueError):
        return False


def _json_type(value: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def dataset_info_from_json(dataset_json: Mapping[str, Any], source: str = "dataset.json") -> DatasetInfo:
    """Parse the parts of an nnU-Net dataset.json that the evaluation uses.

    Raises:
        InputError: not a JSON object, no ``labels``, a label value that is not an integer (list), no
            foreground class.
    """
    if not isinstance(dataset_json, Mapping):
        raise InputError(
            f"{source} must hold a JSON object with 'labels' and 'file_ending' (nnU-Net's dataset.json), "
            f"got a JSON {_json_type(dataset_json)}"
        )
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise InputError(f"{source} has no 'labels' mapping")
    classes: dict[str, ClassValue] = {}
    ignore_label: int | None = None
    allowed: set[int] = {0}
    for name, raw in labels.items():
        value = _label_value(name, raw, source)
        if name == "ignore":
            if not isinstance(value, int):
                raise InputError(f"{source}: the ignore label must be one integer, got {raw!r}")
            ignore_label = value
            allowed.add(value)
            continue
        allowed.update(value if isinstance(value, tuple) else (value,))
        if name == "background" or value == 0:
            continue
        classes[name] = value
    # region-based datasets write the labels of regions_class_order into the predictions
    allowed.update(int(v) for v in dataset_json.get("regions_class_order", ()) or ())
    if not classes:
        raise InputError(f"{source} defines no foreground label")
    overwrite = dataset_json.get("overwrite_image_reader_writer")
    return DatasetInfo(
        name=dataset_json.get("name"),
        json_path=None,
        file_ending=str(dataset_json.get("file_ending", ".nii.gz")),
        classes=classes,
        ignore_label=ignore_label,
        allowed_values=frozenset(allowed),
        reader_writer=None if overwrite in (None, "None") else str(overwrite),
    )


def _load_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e}") from e


def resolve_dataset(dataset: Path | Mapping | int | str) -> DatasetInfo:
    """Find and parse a dataset.json.

    Args:
        dataset: the dataset.json dict; a path to a dataset.json or to a folder holding one; a dataset id
            (``201``, ``"201"``) or name (``"Dataset201_Synapse"``), found as
            ``$nnUNet_raw/DatasetXXX_*/dataset.json`` through nnU-Net's own lookup.
    Raises:
        InputError: the file or dataset cannot be found or read.
    """
    if isinstance(dataset, Mapping):
        return dataset_info_from_json(dataset, "the dataset dict")
    if isinstance(dataset, Path) or (
        isinstance(dataset, str) and (dataset.endswith(".json") or os.sep in dataset)
    ):
        path = Path(dataset)
        if path.is_dir():
            path = path / "dataset.json"
        if not path.is_file():
            raise InputError(f"dataset.json not found: {path}")
        info = dataset_info_from_json(_load_json(path), str(path))
        name = path.parent.name if path.parent.name.startswith("Dataset") else info.name or path.parent.name
        return dataclasses.replace(info, name=name, json_path=path)
    if isinstance(dataset, bool) or not isinstance(dataset, (int, str)):
        raise InputError(f"dataset must be an id, a name, a dataset.json path or a dict, got {dataset!r}")
    if isinstance(dataset, str) and Path(dataset).is_dir() and (Path(dataset) / "dataset.json").is_file():
        return resolve_dataset(Path(dataset))
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_raw.is_set():
        raise InputError(
            f"dataset {dataset!r}: nnUNet_raw is not set; pass the path of a dataset.json instead"
        )
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"dataset {dataset!r}: {e}") from e
    return resolve_dataset(Path(nnUNet_raw.get()) / name / "dataset.json")


def table_classes(info: DatasetInfo, paper: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """The classes in table order with their column names, and the paper table they match (if any)."""
    names = list(info.classes)
    match = match_paper_classes(names, paper)
    if paper is not None and match is None:
        table = PAPER_TABLES[paper]
        expected = ", ".join(table.class_columns) if table.class_columns else "one class, the lesions"
        raise InputError(
            f"--paper {paper}: the dataset's labels {names} do not match the classes of the paper's "
            f"Table {table.number} ({expected})"
        )
    if match is None:
        return [{"name": n, "label": info.classes[n], "column": n} for n in names], None
    key, mapping = match
    by_column = {column: name for name, column in mapping.items()}
    order = PAPER_TABLES[key].class_columns or tuple(mapping.values())
    classes = [{"name": by_column[c], "label": info.classes[by_column[c]], "column": c} for c in order]
    return classes, key
