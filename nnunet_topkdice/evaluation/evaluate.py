"""Evaluate several prediction folders against one reference folder, the way the paper reports results.

:func:`evaluate_runs` reads nnU-Net label files (reference ``labelsTs`` and one folder per trained
model, as ``nnUNetv2_predict`` writes them), computes :mod:`~nnunet_topkdice.evaluation.metrics` per
case and class, averages them like the paper and writes ``results.json``, ``table.md``, ``table.csv``
and ``figure.png``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.evaluation.metrics import METRICS, ClassValue, case_metrics, paper_means
from nnunet_topkdice.evaluation.paper import PAPER_TABLES, match_paper_classes

__all__ = [
    "DatasetInfo",
    "evaluate_runs",
    "find_cases",
    "read_label_file",
    "resolve_dataset",
]

# Relative tolerance when comparing the spacing of a prediction with its reference (float round-off
# between writers, e.g. 0.7 vs 0.69999999).
SPACING_RTOL = 1e-3

CONVENTIONS = {
    "averaging": "each class is averaged over the test cases where its value is defined, then the class "
    "means are averaged over the classes (mDice, mIoU, mPrec., mRec., mHD95)",
    "both_empty": "class absent from reference and prediction: all metrics NaN (null), left out of the means",
    "reference_empty": "class only in the prediction: Dice 0, IoU 0, Precision 0, Recall NaN, HD95 NaN",
    "prediction_empty": "class only in the reference: Dice 0, IoU 0, Recall 0, Precision NaN, HD95 NaN",
    "hd95": "max of the two directed 95th-percentile distances (mm) between the surface voxels "
    "(face-connected boundary) of reference and prediction, as MONAI's "
    "compute_hausdorff_distance(percentile=95)",
    "ignore_label": "reference voxels with dataset.json's ignore label are left out of every metric",
    "units": "Dice, IoU, Precision, Recall are fractions in [0, 1]; HD95 in millimetres",
}


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
    """

    name: str | None
    json_path: Path | None
    file_ending: str
    classes: dict[str, ClassValue]
    ignore_label: int | None
    allowed_values: frozenset[int]


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


def dataset_info_from_json(dataset_json: Mapping[str, Any], source: str = "dataset.json") -> DatasetInfo:
    """Parse the parts of an nnU-Net dataset.json that the evaluation uses.

    Raises:
        InputError: no ``labels``, a label value that is not an integer (list), no foreground class.
    """
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
    return DatasetInfo(
        name=dataset_json.get("name"),
        json_path=None,
        file_ending=str(dataset_json.get("file_ending", ".nii.gz")),
        classes=classes,
        ignore_label=ignore_label,
        allowed_values=frozenset(allowed),
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
        return DatasetInfo(name, path, info.file_ending, info.classes, info.ignore_label, info.allowed_values)
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


def find_cases(folder: Path, file_ending: str) -> dict[str, Path]:
    """Case id -> file for every ``<case><file_ending>`` in ``folder`` (other files are ignored).

    Raises:
        InputError: the folder does not exist or holds no such file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"folder not found: {folder}")
    cases = {
        p.name.removesuffix(file_ending): p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")
    }
    if not cases:
        raise InputError(f"no '*{file_ending}' files in {folder}")
    return cases


def _check_same_cases(
    reference: Mapping[str, Path], prediction: Mapping[str, Path], run: str, folder: Path
) -> None:
    missing = sorted(set(reference) - set(prediction))
    extra = sorted(set(prediction) - set(reference))
    if not missing and not extra:
        return

    def listing(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    problems = []
    if missing:
        problems.append(f"no prediction for {len(missing)} reference case(s): {listing(missing)}")
    if extra:
        problems.append(f"{len(extra)} case(s) not in the reference folder: {listing(extra)}")
    hint = ""
    if all(name.endswith("_0000") for name in reference):
        hint = " (the reference folder looks like imagesTs; pass labelsTs)"
    raise InputError(
        f"run {run!r} ({folder}) does not match the reference cases: {'; '.join(problems)}{hint}"
    )


def read_label_file(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read an nnU-Net label file with SimpleITK.

    Returns:
        ``(labels, spacing)``: labels as an integer array in SimpleITK's array order (z, y, x), spacing in
        the same order (SimpleITK's ``GetSpacing`` is x, y, z and is reversed here).
    Raises:
        InputError: the file cannot be read, has several components per pixel or non-integer values.
    """
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"cannot read {path}: {str(e).strip().splitlines()[-1]}") from e
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per pixel; expected a label map"
        )
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{path} holds non-integer values; expected a label map")
        array = array.astype(np.int64)
    return array, tuple(float(s) for s in reversed(image.GetSpacing()))


def _present_values(array: np.ndarray) -> np.ndarray:
    if array.size and array.min() >= 0 and array.max() < 1 << 16:
        return np.flatnonzero(np.bincount(array.ravel().astype(np.intp, copy=False)))  # faster than unique
    return np.unique(array)


def _check_label_values(array: np.ndarray, path: Path, info: DatasetInfo) -> None:
    bad = sorted(set(_present_values(array).tolist()) - info.allowed_values)
    if bad:
        raise InputError(
            f"{path} contains label value(s) {bad} that are not in the dataset's labels "
            f"(allowed: {sorted(info.allowed_values)})"
        )


def _evaluate_case(job: tuple[str, Path, dict[str, Path], DatasetInfo]) -> tuple[str, dict[str, dict]]:
    """Worker: metrics of one case for every run; the reference is read once."""
    case, reference_path, predictions, info = job
    reference, spacing = read_label_file(reference_path)
    _check_label_values(reference, reference_path, info)
    out: dict[str, dict] = {}
    for run, prediction_path in predictions.items():
        prediction, prediction_spacing = read_label_file(prediction_path)
        if prediction.shape != reference.shape:
            raise InputError(
                f"shape mismatch for case {case!r}: prediction {prediction_path} has shape "
                f"{prediction.shape}, reference {reference_path} has {reference.shape}"
            )
        if not np.allclose(prediction_spacing, spacing, rtol=SPACING_RTOL, atol=0):
            raise InputError(
                f"spacing mismatch for case {case!r}: prediction {prediction_path} has spacing (z, y, x) "
                f"{prediction_spacing}, reference {reference_path} has {spacing}"
            )
        _check_label_values(prediction, prediction_path, info)
        out[run] = case_metrics(reference, prediction, info.classes, spacing, info.ignore_label)
    return case, out


def _table_classes(info: DatasetInfo, paper: str | None) -> tuple[list[dict[str, Any]], str | None]:
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


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def _run_jobs(jobs: list, num_processes: int) -> dict[str, dict]:
    results: dict[str, dict] = {}
    progress = tqdm(total=len(jobs), desc="evaluating cases", unit="case")
    try:
        if num_processes == 1 or len(jobs) == 1:
            for job in jobs:
                case, out = _evaluate_case(job)
                results[case] = out
                progress.update()
        else:
            context = multiprocessing.get_context("spawn")  # like nnU-Net: safe with torch and threads
            with ProcessPoolExecutor(min(num_processes, len(jobs)), mp_context=context) as pool:
                try:
                    for case, out in pool.map(_evaluate_case, jobs):
                        results[case] = out
                        progress.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        progress.close()
    return results


def evaluate_runs(
    reference_dir: Path,
    runs: Mapping[str, Path],
    dataset: Path | Mapping | int | str,
    out_dir: Path,
    *,
    num_processes: int = 1,
    paper: str | None = None,
) -> dict:
    """Evaluate prediction folders against reference labels and write the paper-style outputs.

    Args:
        reference_dir: folder of reference label files (``labelsTs``), ``<case><file_ending>``.
        runs: run name -> folder of predicted label files (``nnUNetv2_predict`` output; other files
            such as ``dataset.json``, ``plans.json``, ``.npz``/``.pkl`` are ignored). Insertion order is
            the row order of the table.
        dataset: dataset id, dataset name, path of a dataset.json (or its folder), or the dict itself.
        out_dir: created if needed; receives ``results.json``, ``table.md``, ``table.csv``, ``figure.png``.
        num_processes: worker processes, one case at a time each.
        paper: ``synapse``, ``acdc`` or ``msseg`` to add the paper's reported rows and the difference of
            each run to the paper's CE + topK-Dice row.
    Returns:
        The dict written to ``results.json`` (NaN written as null): ``dataset``, ``reference_dir``,
        ``cases``, ``classes`` (table order: ``name``, ``label``, ``column``), ``metrics``,
        ``conventions``, ``runs`` (name -> ``prediction_dir``, ``mean``, ``per_class``,
        ``n_cases_per_class``, ``per_case``, ``n_hd95_undefined``) and ``paper`` (or None). Values are
        fractions in [0, 1], HD95 in mm.
    Raises:
        InputError: missing folders, no runs, different case sets, shape/spacing mismatches, label values
        outside the dataset, labels that do not match ``paper``, bad ``num_processes``.
    """
    from nnunet_topkdice.evaluation.plots import plot_results
    from nnunet_topkdice.evaluation.tables import to_csv, to_markdown

    if paper is not None and paper not in PAPER_TABLES:
        raise InputError(f"paper must be one of {sorted(PAPER_TABLES)}, got {paper!r}")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise InputError(f"num_processes must be a positive integer, got {num_processes!r}")
    if not runs:
        raise InputError("no prediction folder given (runs is empty)")
    for name in runs:
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"run names must be non-empty strings, got {name!r}")

    info = resolve_dataset(dataset)
    classes, matched_paper = _table_classes(info, paper)
    reference_dir = Path(reference_dir)
    reference_cases = find_cases(reference_dir, info.file_ending)
    predictions: dict[str, dict[str, Path]] = {}
    for name, folder in runs.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"prediction folder of run {name!r} not found: {folder}")
        predictions[name] = find_cases(folder, info.file_ending)
        _check_same_cases(reference_cases, predictions[name], name, folder)

    jobs = [
        (case, path, {run: predictions[run][case] for run in runs}, info)
        for case, path in reference_cases.items()
    ]
    per_case_all = _run_jobs(jobs, num_processes)

    class_names = [c["name"] for c in classes]
    run_results: dict[str, dict] = {}
    for run, folder in runs.items():
        per_case = {case: per_case_all[case][run] for case in reference_cases}
        per_class, overall, n_cases = paper_means(per_case, class_names, METRICS)
        n_hd95_undefined = sum(
            1
            for case in per_case.values()
            for m in case.values()
            if math.isnan(m["HD95"]) and m["n_reference"] + m["n_prediction"] > 0
        )
        run_results[run] = {
            "prediction_dir": str(Path(folder).resolve()),
            "mean": overall,
            "per_class": per_class,
            "n_cases_per_class": n_cases,
            "n_hd95_undefined": n_hd95_undefined,
            "per_case": per_case,
        }

    paper_block = None
    if paper is not None:
        table = PAPER_TABLES[paper]
        paper_block = {
            "table": table.number,
            "dataset": table.dataset,
            "note": "numbers reported in the paper (its own network and training), not computed here",
            "reference_row": table.reference_row,
            "k": table.k,
            "reported": {
                row: {col: round(v / 100, 6) for col, v in values.items()}
                for row, values in table.as_dict().items()
            },
        }

    results = {
        "dataset": {
            "name": info.name,
            "dataset_json": str(info.json_path) if info.json_path else None,
            "file_ending": info.file_ending,
            "ignore_label": info.ignore_label,
            "matches_paper_table": matched_paper,
        },
        "reference_dir": str(reference_dir.resolve()),
        "cases": list(reference_cases),
        "classes": [
            {**c, "label": list(c["label"]) if isinstance(c["label"], tuple) else c["label"]} for c in classes
        ],
        "metrics": list(METRICS),
        "conventions": CONVENTIONS,
        "runs": run_results,
        "paper": paper_block,
    }
    results = _nan_to_none(results)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.json", "w") as f:
        json.dump(results, f, indent=2, allow_nan=False)
    (out_dir / "table.md").write_text(to_markdown(results))
    (out_dir / "table.csv").write_text(to_csv(results))
    plot_results(results, out_dir / "figure.png")
    return results
