"""Evaluate prediction folders against one reference folder, the way the paper reports results, with paired
statistics against a baseline.

:func:`evaluate_runs` validates its arguments, finds the cases, computes
:mod:`~nnunet_topkdice.evaluation.metrics` per case and class (:mod:`~nnunet_topkdice.evaluation.case_jobs`),
assembles the results (:mod:`~nnunet_topkdice.evaluation.results`) and writes ``results.json``,
``table.md``, ``table.csv``, ``per_case.csv`` and ``figure.png``, and with ``images_dir`` the pictures of the
cases that decide each comparison (:mod:`~nnunet_topkdice.evaluation.case_pictures`, ``cases/``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.evaluation.case_jobs import CaseJob, run_case_jobs
from nnunet_topkdice.evaluation.dataset import DatasetInfo, resolve_dataset, table_classes
from nnunet_topkdice.evaluation.label_io import (
    check_same_cases,
    find_cases,
    read_label_file,
    reader_writer_name,
    spacing_note,
)
from nnunet_topkdice.evaluation.metrics import HD95_MISSING_POLICIES, METRICS, NSD_TOLERANCE_MM, check_nsd_tolerance
from nnunet_topkdice.evaluation.paper import PAPER_TABLES
from nnunet_topkdice.evaluation.results import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONVENTIONS,
    DEFAULT_TARGET_DIFFERENCE,
    comparisons,
    method_result,
    nan_to_none,
    repeat_result,
)
from nnunet_topkdice.input_checks import check_output_folder
from nnunet_topkdice.workers import deferred_interrupts

__all__ = [
    "OUTPUT_FILES",
    "DatasetInfo",
    "evaluate_runs",
    "find_cases",
    "normalise_runs",
    "read_label_file",
    "resolve_dataset",
    "write_outputs",
]

OUTPUT_FILES = ("results.json", "table.md", "table.csv", "per_case.csv", "figure.png")

# name -> folder, name -> folders, or (name, folder) pairs with repeated names
Runs = Mapping[str, Path | str | Sequence[Path | str]] | Sequence[tuple[str, Path | str]]


def normalise_runs(runs: Runs) -> dict[str, list[Path]]:
    """Method name -> its prediction folders (repeats) in the order given.

    Args:
        runs: name -> folder, name -> list of folders, or a sequence of ``(name, folder)`` pairs in which a
            name may appear several times (one method over several repeats).
    Raises:
        InputError: no runs, an empty name, a method without folders, a folder given twice for one method.
    """
    pairs: list[tuple[Any, Any]] = []
    items = runs.items() if isinstance(runs, Mapping) else runs
    for name, folders in items:
        if isinstance(folders, (str, os.PathLike)):
            pairs.append((name, folders))
        else:
            folders = list(folders)
            if not folders:
                raise InputError(f"run {name!r} has no prediction folder")
            pairs.extend((name, folder) for folder in folders)
    if not pairs:
        raise InputError("no prediction folder given (runs is empty)")
    methods: dict[str, list[Path]] = {}
    for name, folder in pairs:
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"run names must be non-empty strings, got {name!r}")
        folder = Path(folder)
        if any(folder.resolve() == f.resolve() for f in methods.get(name, [])):
            raise InputError(f"run {name!r}: prediction folder {folder} is given twice (a repeat needs its own)")
        methods.setdefault(name, []).append(folder)
    return methods


def _validate_options(
    methods: Mapping[str, list[Path]], baseline: str | None, num_processes: int, paper: str | None,
    hd95_missing: str,
    nsd_tolerance: float,
    target_difference: float = DEFAULT_TARGET_DIFFERENCE,
) -> str:
    """Check the options; returns the baseline (default: the first method)."""
    try:
        check_nsd_tolerance(nsd_tolerance)
    except ValueError as e:
        raise InputError(str(e)) from None
    if isinstance(target_difference, bool) or not isinstance(target_difference, (int, float)) or not (
        math.isfinite(target_difference) and target_difference > 0
    ):
        raise InputError(f"target_difference must be a positive number (a fraction, 0.01 = one Dice point), "
                         f"got {target_difference!r}")  # fmt: skip
    if paper is not None and paper not in PAPER_TABLES:
        raise InputError(f"paper must be one of {sorted(PAPER_TABLES)}, got {paper!r}")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise InputError(f"num_processes must be a positive integer, got {num_processes!r}")
    if hd95_missing not in HD95_MISSING_POLICIES:
        raise InputError(f"hd95_missing must be one of {list(HD95_MISSING_POLICIES)}, got {hd95_missing!r}")
    if baseline is None:
        return next(iter(methods))
    if baseline not in methods:
        raise InputError(f"baseline {baseline!r} is not one of the evaluated names: {list(methods)}")
    return baseline


def _find_predictions(
    methods: Mapping[str, list[Path]], reference_cases: Mapping[str, Path], file_ending: str
) -> list[tuple[str, Path, dict[str, Path]]]:
    """``(method, folder, case -> file)`` for every repeat, each checked to hold the reference's cases."""
    folders = []
    for name, repeats in methods.items():
        for folder in repeats:
            if not folder.is_dir():
                raise InputError(f"prediction folder of run {name!r} not found: {folder}")
            cases = find_cases(folder, file_ending)
            check_same_cases(reference_cases, cases, name, folder)
            folders.append((name, folder, cases))
    return folders


def _paper_block(paper: str | None) -> dict | None:
    if paper is None:
        return None
    table = PAPER_TABLES[paper]
    return {
        "table": table.number,
        "dataset": table.dataset,
        "note": "numbers reported in the paper (its own network and training), not computed here",
        "reference_row": table.reference_row,
        "k": table.k,
        "reported": {
            row: {col: round(v / 100, 6) for col, v in values.items()} for row, values in table.as_dict().items()
        },
    }


def _assemble(
    info: DatasetInfo,
    classes: list[dict[str, Any]],
    matched_paper: str | None,
    reference_dir: Path,
    cases: list[str],
    folders: list[tuple[str, Path, dict[str, Path]]],
    per_case_all: Mapping[str, Mapping[int, dict]],
    *,
    baseline: str,
    hd95_missing: str,
    nsd_tolerance: float,
    paper: str | None,
    images_dir: Path | None,
    target_difference: float = DEFAULT_TARGET_DIFFERENCE,
) -> dict:
    class_names = [c["name"] for c in classes]
    repeats: dict[str, list[dict]] = {}
    for index, (name, folder, _) in enumerate(folders):
        per_case = {case: per_case_all[case][index] for case in cases}
        repeats.setdefault(name, []).append(repeat_result(str(folder.resolve()), per_case, class_names))
    runs = {name: method_result(method_repeats, class_names) for name, method_repeats in repeats.items()}
    results = {
        "dataset": {
            "name": info.name,
            "dataset_json": str(info.json_path) if info.json_path else None,
            "file_ending": info.file_ending,
            "reader_writer": info.reader_writer,
            "spacing_note": spacing_note(info.reader_writer),
            "ignore_label": info.ignore_label,
            "matches_paper_table": matched_paper,
        },
        "reference_dir": str(reference_dir.resolve()),
        "cases": cases,
        "classes": [
            {**c, "label": list(c["label"]) if isinstance(c["label"], tuple) else c["label"]} for c in classes
        ],
        "metrics": list(METRICS),
        "conventions": CONVENTIONS,
        "hd95_missing": hd95_missing,
        "nsd_tolerance_mm": float(nsd_tolerance),
        "baseline": baseline,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED},
        "runs": runs,
        "comparisons": comparisons(runs, baseline, cases, class_names, target_difference=target_difference),
        "paper": _paper_block(paper),
        "case_pictures": _case_pictures_block(images_dir, list(runs), baseline),
    }
    return nan_to_none(results)


def _case_pictures_block(images_dir: Path | None, methods: list[str], baseline: str) -> dict | None:
    if images_dir is None:
        return None
    from nnunet_topkdice.evaluation.case_pictures import CASE_PICTURE_DIR, N_CASES_EACH, picture_stems

    stems = picture_stems(methods, baseline)
    return {
        "images_dir": str(Path(images_dir).resolve()),
        "n_each": N_CASES_EACH,
        "files": {method: f"{CASE_PICTURE_DIR}/{stem}.png" for method, stem in stems.items()},
    }


def _replace_folder(source: Path, target: Path) -> None:
    """Move folder ``source`` to ``target``, replacing an existing ``target`` folder."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)


def write_outputs(results: dict, out_dir: Path, case_images: Mapping[str, Path] | None = None) -> None:
    """Write ``results.json``, ``table.md``, ``table.csv``, ``per_case.csv`` and ``figure.png`` into
    ``out_dir`` (created), and with ``case_images`` (case -> channel-0 image) the ``cases/`` pictures.

    Each file is written under a temporary name (the pictures into a temporary folder) and renamed into
    place once all exist, so a failure (for example in plotting) leaves the previous outputs rather than a
    mix. A new ``cases/`` folder replaces the previous one.
    """
    from nnunet_topkdice.evaluation.plots import plot_results
    from nnunet_topkdice.evaluation.tables import to_csv, to_markdown, to_per_case_csv

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = {name: out_dir / f".{name}.partial{Path(name).suffix}" for name in OUTPUT_FILES}
    pictures: Path | None = None
    try:
        with open(temporary["results.json"], "w") as f:
            json.dump(results, f, indent=2, allow_nan=False)
        temporary["table.md"].write_text(to_markdown(results))
        temporary["table.csv"].write_text(to_csv(results))
        temporary["per_case.csv"].write_text(to_per_case_csv(results))
        plot_results(results, temporary["figure.png"])
        if case_images is not None:
            from nnunet_topkdice.evaluation.case_pictures import CASE_PICTURE_DIR, write_case_pictures

            pictures = out_dir / f".{CASE_PICTURE_DIR}.partial"
            shutil.rmtree(pictures, ignore_errors=True)
            write_case_pictures(results, case_images, pictures)
        with deferred_interrupts():  # the outputs are replaced together, never some old and some new
            for name, path in temporary.items():
                os.replace(path, out_dir / name)
            if pictures is not None:
                _replace_folder(pictures, out_dir / CASE_PICTURE_DIR)
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)
        if pictures is not None:
            shutil.rmtree(pictures, ignore_errors=True)


def evaluate_runs(
    reference_dir: Path,
    runs: Runs,
    dataset: Path | Mapping | int | str,
    out_dir: Path,
    *,
    baseline: str | None = None,
    num_processes: int = 1,
    paper: str | None = None,
    hd95_missing: str = "diagonal",
    nsd_tolerance: float = NSD_TOLERANCE_MM,
    images_dir: Path | None = None,
    target_difference: float = DEFAULT_TARGET_DIFFERENCE,
) -> dict:
    """Evaluate prediction folders against reference labels, compare each method with the baseline, and
    write the paper-style outputs.

    Args:
        reference_dir: folder of reference label files (``labelsTs``), ``<case><file_ending>``.
        runs: method name -> prediction folder (``nnUNetv2_predict`` output; other files such as
            ``dataset.json``, ``plans.json``, ``.npz``/``.pkl`` are ignored), name -> list of folders, or
            ``(name, folder)`` pairs: a name given several times is one method over several repeats (seeds
            or folds), in the order given. The order of first appearance is the table's row order.
        dataset: dataset id, dataset name, path of a dataset.json (or its folder), or the dict itself.
        out_dir: created if needed; receives ``results.json``, ``table.md``, ``table.csv``, ``per_case.csv``,
            ``figure.png`` and, with ``images_dir``, ``cases/<method>_vs_<baseline>.png`` (and ``.json``).
        baseline: the method every other one is compared with (default: the first).
        num_processes: worker processes, one case at a time each.
        paper: ``synapse``, ``acdc`` or ``msseg`` to add the paper's reported rows and the difference of
            each method to the paper's CE + topK-Dice row.
        hd95_missing: ``diagonal`` (a class in only one of reference and prediction gets the image diagonal
            in mm) or ``exclude`` (left out of the means).
        nsd_tolerance: NSD's tolerance in mm (>= 0).
        images_dir: the dataset's ``imagesTs`` or ``imagesTr``: draw the cases with the largest gains and
            losses of every method against the baseline; every evaluated case needs its
            ``<case>_0000<file_ending>`` on its reference's voxel grid (checked before any evaluation).
        target_difference: the difference (fraction) that ``repeats_needed`` plans for (SPEC 6.4).
    Returns:
        The dict written to ``results.json`` (NaN written as null): ``dataset``, ``reference_dir``,
        ``cases``, ``classes`` (table order: ``name``, ``label``, ``column``), ``metrics``,
        ``conventions``, ``hd95_missing``, ``nsd_tolerance_mm``, ``baseline``, ``bootstrap``, ``runs`` (name ->
        :func:`~nnunet_topkdice.evaluation.results.method_result`), ``comparisons`` (one
        :func:`~nnunet_topkdice.evaluation.results.comparison_entry` per other method), ``paper`` (or
        None) and ``case_pictures`` (``images_dir``, ``n_each``, ``files``: method -> PNG path relative to
        ``out_dir``; or None). Values are fractions in [0, 1], HD95 in mm.
    Raises:
        InputError: missing folders, an output folder that is a file or not writable (checked before any
        work), no runs, an unknown baseline, different case sets, a dangling link, NaN or infinite voxels, a
        prediction whose size, spacing, origin or direction differs from its reference, label values outside
        the dataset, labels that do not match ``paper``, bad ``num_processes``, ``hd95_missing``,
        ``nsd_tolerance`` or ``target_difference``; with ``images_dir``: the folder missing, a case without its
        image, an image not on its reference's grid.
    """
    methods = normalise_runs(runs)
    baseline = _validate_options(methods, baseline, num_processes, paper, hd95_missing, nsd_tolerance,
                                 target_difference)
    check_output_folder(out_dir, "output folder")
    info = resolve_dataset(dataset)
    classes, matched_paper = table_classes(info, paper)
    reference_dir = Path(reference_dir)
    reference_cases = find_cases(reference_dir, info.file_ending)
    reader_writer = reader_writer_name(info.file_ending, info.reader_writer, next(iter(reference_cases.values())),
                                       str(info.json_path or "dataset.json"))  # fmt: skip
    info = dataclasses.replace(info, reader_writer=reader_writer)
    folders = _find_predictions(methods, reference_cases, info.file_ending)
    case_images = None
    if images_dir is not None:  # checked before the evaluation starts: a bad folder costs no time
        from nnunet_topkdice.evaluation.case_pictures import find_case_images

        case_images = find_case_images(images_dir, reference_cases, info.file_ending, info.reader_writer)

    jobs = [
        CaseJob(
            case, path, {i: files[case] for i, (_, _, files) in enumerate(folders)}, info, hd95_missing,
            float(nsd_tolerance),
        )  # fmt: skip
        for case, path in reference_cases.items()
    ]
    per_case_all = run_case_jobs(jobs, num_processes)

    results = _assemble(
        info,
        classes,
        matched_paper,
        reference_dir,
        list(reference_cases),
        folders,
        per_case_all,
        baseline=baseline,
        hd95_missing=hd95_missing,
        nsd_tolerance=nsd_tolerance,
        paper=paper,
        images_dir=images_dir,
        target_difference=target_difference,
    )
    write_outputs(results, out_dir, case_images)
    return results
