"""Metrics of every case, one job per case (the reference is read once for all prediction folders), in a
pool of spawned worker processes or in this process, with a progress bar."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nnunet_topkdice.evaluation.dataset import DatasetInfo
from nnunet_topkdice.evaluation.label_io import (
    SIMPLEITK_READER,
    check_label_values,
    check_same_geometry,
    read_label_image,
)
from nnunet_topkdice.evaluation.metrics import NSD_TOLERANCE_MM, case_metrics
from nnunet_topkdice.input_checks import check_image_file
from nnunet_topkdice.workers import run_in_workers

__all__ = ["CaseJob", "evaluate_case", "run_case_jobs"]


@dataclass(frozen=True)
class CaseJob:
    """One reference case and its prediction in every evaluated folder.

    Attributes:
        case: the case id.  reference: its reference label file.
        predictions: folder index (the position in the list of evaluated folders) -> prediction file.
        info: the dataset's classes, ignore label and allowed values.
        hd95_missing: the HD95 policy of :func:`~nnunet_topkdice.evaluation.metrics.case_metrics`.
        nsd_tolerance: NSD's tolerance in mm.
    """

    case: str
    reference: Path
    predictions: Mapping[int, Path]
    info: DatasetInfo
    hd95_missing: str
    nsd_tolerance: float = NSD_TOLERANCE_MM


def evaluate_case(job: CaseJob) -> tuple[str, dict[int, dict[str, dict]]]:
    """Metrics of one case for every folder: ``(case, {folder index: class -> metrics})``.

    Raises:
        InputError: unreadable or truncated file, NaN or infinite voxels (counted as stored, see
        :mod:`nnunet_topkdice.input_checks`), label values outside the dataset, a prediction not on the
        reference's image grid (size, spacing, origin, direction).
    """
    reader_writer = job.info.reader_writer or SIMPLEITK_READER
    check_image_file(job.reference, f"case {job.case}: reference")
    reference = read_label_image(job.reference, reader_writer)
    check_label_values(reference.array, job.reference, job.info.allowed_values)
    out: dict[int, dict[str, dict]] = {}
    for index, path in job.predictions.items():
        check_image_file(path, f"case {job.case}: prediction")
        prediction = read_label_image(path, reader_writer)
        check_same_geometry(job.case, reference, job.reference, prediction, path)
        check_label_values(prediction.array, path, job.info.allowed_values)
        out[index] = case_metrics(
            reference.array,
            prediction.array,
            job.info.classes,
            reference.spacing,
            job.info.ignore_label,
            hd95_missing=job.hd95_missing,
            nsd_tolerance=job.nsd_tolerance,
        )
    return job.case, out


def run_case_jobs(jobs: Sequence[CaseJob], num_processes: int) -> dict[str, dict[int, dict[str, dict]]]:
    """Run :func:`evaluate_case` for every job; case -> folder index -> class -> metrics.

    ``num_processes > 1`` uses spawned workers (:func:`nnunet_topkdice.workers.run_in_workers`, like
    nnU-Net: safe with torch and threads); the first error, Ctrl-C or SIGTERM terminates them at once and
    is raised.
    """
    results: dict[str, dict[int, dict[str, dict]]] = {}
    progress = tqdm(total=len(jobs), desc="evaluating cases", unit="case")

    def collect(case_and_metrics: tuple[str, dict[int, dict[str, dict]]]) -> None:
        case, out = case_and_metrics
        results[case] = out
        progress.update()

    try:
        if num_processes == 1 or len(jobs) == 1:
            for job in jobs:
                collect(evaluate_case(job))
        else:
            run_in_workers(evaluate_case, jobs, min(num_processes, len(jobs)), on_result=collect)
    finally:
        progress.close()
    return {job.case: results[job.case] for job in jobs}  # in the jobs' order, whatever finished first
