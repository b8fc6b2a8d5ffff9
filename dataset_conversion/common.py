"""Shared parts of the dataset converters, written once.

A converter (``synapse``, ``acdc``, ``msseg``) only knows its dataset: where the files are, the case ids,
the label map and the split. Everything else lives here:

* input checks that name the missing path (:func:`require_file`, :func:`require_dir`), and every missing
  input of a partial download at once (:func:`require_inputs`),
* the target checks (:func:`check_target`): existing dataset, dataset id used by another dataset,
* reading with SimpleITK (:func:`read_image`), the geometry check (:func:`check_same_geometry`) and the
  checks of truncation and NaN/infinity (:func:`nnunet_topkdice.input_checks.check_image_file`, which
  reads NIfTI headers and voxels with nibabel because SimpleITK reads the missing and the non-finite voxels as 0),
* the label checks and remapping (:func:`remap_labels`, :func:`binarize_labels`),
* writing one case (:func:`convert_case`) and all cases with a progress bar and an optional worker pool
  (:func:`run_jobs`),
* ``dataset.json`` through nnU-Net's own ``generate_dataset_json`` (:func:`write_dataset_json`),
* the atomic publish (:func:`staging`): everything is written into a hidden temporary folder next to
  the target and renamed into place at the end, so a failure leaves nothing half-written,
* the raw-root resolution used by the command line (:func:`resolve_raw_root`).

Nothing here reads environment variables except the two ``resolve_*`` helpers, which only the
command line uses.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_topkdice.errors import InputError, OverwriteRefused
from nnunet_topkdice.geometry import differs
from nnunet_topkdice.input_checks import check_dataset_id_free, check_image_file, check_output_folder
from nnunet_topkdice.workers import deferred_interrupts, run_in_workers

FILE_ENDING = ".nii.gz"

# Input images and labels may differ by float32 rounding in their headers (NIfTI stores float32);
# anything larger is a real mismatch: nnunet_topkdice.geometry holds the rule, shared with the evaluation.

IMAGE_SUBFOLDERS = {"train": "imagesTr", "test": "imagesTs"}
LABEL_SUBFOLDERS = {"train": "labelsTr", "test": "labelsTs"}

LabelTransform = Callable[..., np.ndarray]


# ----------------------------------------------------------------------------------------------------------
# Input and target checks (no writing)
# ----------------------------------------------------------------------------------------------------------


def require_file(path: Path, what: str, *, kind: str = "file") -> Path:
    """Return ``path`` if it is a file (``kind="folder"``: a folder).

    Raises:
        InputError: naming ``what`` and the expected path.
    """
    if not (path.is_dir() if kind == "folder" else path.is_file()):
        raise InputError(f"missing {what}: expected the {kind} {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder; see :func:`require_file`."""
    return require_file(path, what, kind="folder")


#: How many missing inputs a message lists by name after the first one (the rest are counted).
MAX_LISTED = 10


def training_set_error(problem: str, whole_set: str) -> InputError:
    """``problem``, and that the converter needs the whole training set (``whole_set``: how many cases or
    patients, e.g. ``"100 patients, patient001 to patient100"``): the paper's splits use every case, so a
    partial download cannot be converted."""
    return InputError(f"{problem}; the converter needs the whole training set ({whole_set})")


def require_inputs(missing: Sequence[Path], what: str, *, root: Path, whole_set: str) -> None:
    """Refuse missing inputs of the training set all at once (a partial download); nothing if none is missing.

    Raises:
        InputError: ``what``, the first missing path in full, how many more and (up to :data:`MAX_LISTED`)
            their paths relative to ``root``, and :func:`training_set_error`'s ``whole_set``.
    """
    if not missing:
        return
    problem = f"missing {what}: expected {missing[0]}"
    if len(missing) > 1:
        rest = [str(Path(path).relative_to(root)) for path in missing[1:]]
        listed = ", ".join(rest[:MAX_LISTED]) + (", ..." if len(rest) > MAX_LISTED else "")
        problem += f" and {len(rest)} more in {root}: {listed}"
    raise training_set_error(problem, whole_set)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name, e.g. ``dataset_folder_name(201, "Synapse") == "Dataset201_Synapse"``.

    Raises:
        InputError: ``dataset_id`` not an integer in [1, 999] (nnU-Net's three-digit ids).
    """
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise InputError(f"dataset id must be an integer in [1, 999], got {dataset_id!r}")
    return f"Dataset{dataset_id:03d}_{name}"


def check_target(raw_root: Path, folder_name: str, *, overwrite: bool) -> Path:
    """Check that ``raw_root/folder_name`` may be written; returns that path. Writes nothing.

    Raises:
        OverwriteRefused: (an InputError) the target exists and ``overwrite`` is False.
        InputError: another dataset in ``raw_root`` already uses the same id (nnU-Net could not tell them
            apart, :func:`~nnunet_topkdice.input_checks.check_dataset_id_free`); ``raw_root`` exists but is
            not a folder.
    """
    target = raw_root / folder_name
    if raw_root.exists() and not raw_root.is_dir():
        raise InputError(f"the nnU-Net raw folder {raw_root} exists but is not a folder")
    if target.exists() and not overwrite:
        raise OverwriteRefused(f"{target} already exists")
    check_dataset_id_free(raw_root, folder_name)
    return target


# ----------------------------------------------------------------------------------------------------------
# Reading and checking images
# ----------------------------------------------------------------------------------------------------------


def read_image(path: Path) -> sitk.Image:
    """Read a 2D or 3D scalar image with SimpleITK.

    Raises:
        InputError: the file cannot be read (missing, corrupt, truncated) or is not a 2D/3D scalar image.
    """
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        # SimpleITK's message is a multi-line ITK trace; its last non-empty line says what went wrong.
        reason = [line for line in str(e).splitlines() if line.strip()][-1:] or ["unknown error"]
        raise InputError(f"cannot read {path}: {reason[0].strip()}") from e
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{path} has {image.GetDimension()} dimensions; expected a 2D or 3D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "expected a scalar image"
        )
    return image


def geometry_differences(reference: sitk.Image, other: sitk.Image) -> list[str]:
    """Human-readable differences in size, spacing, origin and direction (empty when they agree).

    The tolerance is :func:`nnunet_topkdice.geometry.differs`'s: spacing and origin may differ by
    ``GEOMETRY_TOLERANCE`` times the reference's smallest voxel spacing, direction cosines by ``GEOMETRY_TOLERANCE``.
    """
    if reference.GetDimension() != other.GetDimension():
        return [f"dimension {reference.GetDimension()} vs {other.GetDimension()}"]
    differences = []
    if reference.GetSize() != other.GetSize():
        differences.append(f"size {reference.GetSize()} vs {other.GetSize()}")
    for name in ("spacing", "origin", "direction"):
        a = np.asarray(getattr(reference, f"Get{name.capitalize()}")(), dtype=np.float64)
        b = np.asarray(getattr(other, f"Get{name.capitalize()}")(), dtype=np.float64)
        if differs(name, a, b, reference.GetSpacing()):
            differences.append(f"{name} {_fmt(a)} vs {_fmt(b)}")
    return differences


def check_same_geometry(
    reference: sitk.Image, reference_path: Path, other: sitk.Image, other_path: Path
) -> None:
    """Check that two images share size, spacing, origin and direction (see :func:`geometry_differences`).

    Raises:
        InputError: naming both files and every property that differs, with both values.
    """
    differences = geometry_differences(reference, other)
    if differences:
        raise InputError(
            f"geometry mismatch between {reference_path} and {other_path}: {'; '.join(differences)}"
        )


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


# ----------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------


def _integer_labels(labels: np.ndarray, case_id: str, path: Path) -> np.ndarray:
    """The label array as integers; float label files are accepted when every value is a whole number."""
    if labels.dtype.kind in "iu":
        return labels
    if labels.dtype.kind == "b":
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise InputError(f"case {case_id}: label file {path} contains NaN or infinite values")
        rounded = np.rint(labels)
        if not np.array_equal(rounded, labels):
            fractional = np.unique(labels[rounded != labels])[:5]
            raise InputError(
                f"case {case_id}: label file {path} contains non-integer values {fractional.tolist()}"
            )
        return rounded.astype(np.int64)
    raise InputError(f"case {case_id}: label file {path} has unsupported voxel type {labels.dtype}")


def remap_labels(labels: np.ndarray, *, mapping: Mapping[int, int], case_id: str, path: Path) -> np.ndarray:
    """Map original label values to new ones with a lookup table.

    Shape:
        labels: any shape, integer (or whole-valued float) original labels. returns: same shape, uint8.
    Args:
        mapping: original value -> new value; its keys are the complete set of allowed original values.
    Raises:
        InputError: values outside ``mapping``'s keys, naming the case, the file and the values.
    """
    labels = _integer_labels(labels, case_id, path)
    present = np.unique(labels)
    unexpected = sorted(set(present.tolist()) - set(mapping))
    if unexpected:
        raise InputError(
            f"case {case_id}: label file {path} contains unexpected label values {unexpected} "
            f"(expected a subset of {sorted(mapping)})"
        )
    lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[labels]


def binarize_labels(labels: np.ndarray, *, case_id: str, path: Path) -> np.ndarray:
    """Foreground where ``labels > 0`` (e.g. a lesion consensus mask).

    Shape:
        labels: any shape, any real dtype, values >= 0. returns: same shape, uint8 in {0, 1}.
    Raises:
        InputError: NaN, infinite or negative values, naming the case, the file and the values.
    """
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise InputError(f"case {case_id}: label file {path} contains NaN or infinite values")
    if labels.dtype.kind in "iuf" and labels.size and labels.min() < 0:
        negative = np.unique(labels[labels < 0])[:5].tolist()
        raise InputError(f"case {case_id}: label file {path} contains unexpected negative values {negative}")
    return (labels > 0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Writing cases
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseJob:
    """One case to convert.

    Attributes:
        case_id: nnU-Net case identifier (file stem without channel suffix).
        images: input image files in channel order (channel 0 is the geometric reference).
        label: input label file, or None for a case without label.
        subset: ``"train"`` (imagesTr/labelsTr) or ``"test"`` (imagesTs/labelsTs).
        label_transform: ``f(array, *, case_id, path) -> uint8 array``; a module-level function or a
            ``functools.partial`` of one, so that it can be sent to worker processes.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    subset: str
    label_transform: LabelTransform


def _exact_geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def convert_case(job: CaseJob, dataset_dir: Path) -> str:
    """Read, check and write one case into ``dataset_dir``; returns its case id.

    Images are written as ``<case>_<channel:04d>.nii.gz``. A ``.nii.gz`` input whose geometry equals the
    first channel's is copied byte for byte (voxels, voxel type and header exactly as given, and no slow
    re-compression); any other channel is re-written with the first channel's spacing, origin and direction
    (after the tolerance check), so nnU-Net sees one geometry per case. The label is written as
    ``<case>.nii.gz``, uint8, with the first channel's geometry (NIfTI stores it in float32, so it agrees
    with the image to float32 precision).

    Raises:
        InputError: unreadable or truncated file, NaN or infinity in an image or label file, geometry
            mismatch, unexpected label values.
    """
    reference = read_image(job.images[0])
    check_image_file(job.images[0], f"case {job.case_id}: image")
    channels = [reference]
    for path in job.images[1:]:
        image = read_image(path)
        check_same_geometry(reference, job.images[0], image, path)
        check_image_file(path, f"case {job.case_id}: image")
        channels.append(image)
    label_image = None
    if job.label is not None:
        source = read_image(job.label)
        check_same_geometry(reference, job.images[0], source, job.label)
        check_image_file(job.label, f"case {job.case_id}: label file")
        mapped = job.label_transform(sitk.GetArrayFromImage(source), case_id=job.case_id, path=job.label)
        label_image = sitk.GetImageFromArray(mapped.astype(np.uint8, copy=False))
        label_image.CopyInformation(reference)
    # Write only after every check of the case has passed.
    image_dir = dataset_dir / IMAGE_SUBFOLDERS[job.subset]
    for channel, (image, path) in enumerate(zip(channels, job.images, strict=True)):
        out = image_dir / f"{job.case_id}_{channel:04d}{FILE_ENDING}"
        if path.name.endswith(FILE_ENDING) and _exact_geometry(image) == _exact_geometry(reference):
            shutil.copyfile(path, out)
        else:
            image.CopyInformation(reference)
            sitk.WriteImage(image, str(out), useCompression=True)
    if label_image is not None:
        label_dir = dataset_dir / LABEL_SUBFOLDERS[job.subset]
        sitk.WriteImage(label_image, str(label_dir / f"{job.case_id}{FILE_ENDING}"), useCompression=True)
    return job.case_id


def _check_num_processes(num_processes: int) -> None:
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise InputError(f"num_processes must be a positive integer, got {num_processes!r}")


def run_jobs(
    jobs: Sequence[CaseJob], dataset_dir: Path, *, num_processes: int = 1, desc: str = "converting"
) -> None:
    """Convert every job into ``dataset_dir`` with a tqdm progress bar (on stderr).

    ``num_processes > 1`` uses spawned worker processes (:func:`nnunet_topkdice.workers.run_in_workers`):
    on the first failure, Ctrl-C or SIGTERM the workers are terminated at once, so nothing writes into the
    folder any more when the error is raised.

    Raises:
        InputError: from :func:`convert_case`, or ``num_processes < 1``.
    """
    _check_num_processes(num_processes)
    for subfolder in (*IMAGE_SUBFOLDERS.values(), *LABEL_SUBFOLDERS.values()):
        (dataset_dir / subfolder).mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(jobs), desc=desc, unit="case", file=sys.stderr, dynamic_ncols=True) as bar:
        if num_processes == 1 or len(jobs) <= 1:
            for job in jobs:
                convert_case(job, dataset_dir)
                bar.update()
            return
        run_in_workers(
            partial(convert_case, dataset_dir=dataset_dir), jobs, min(num_processes, len(jobs)),
            on_result=lambda case_id: bar.update(),
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# dataset.json, JSON files, atomic publish
# ----------------------------------------------------------------------------------------------------------


def write_dataset_json(
    dataset_dir: Path,
    *,
    channel_names: Mapping[int, str],
    labels: Mapping[str, int],
    num_training_cases: int,
    dataset_name: str,
    **extra: Any,
) -> None:
    """Write ``dataset_dir/dataset.json`` with nnU-Net's ``generate_dataset_json`` (file ending .nii.gz).

    The dicts are copied first because nnU-Net's function rewrites the ones it is given.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    generate_dataset_json(
        str(dataset_dir),
        channel_names={str(k): v for k, v in channel_names.items()},
        labels=dict(labels),
        num_training_cases=num_training_cases,
        file_ending=FILE_ENDING,
        dataset_name=dataset_name,
        converted_by="nnunet-topkdice (dataset_conversion)",
        **extra,
    )


def write_json(path: Path, data: Any) -> None:
    """Write JSON (indent 2, trailing newline) through a temporary file and an atomic rename."""
    tmp = _write_json_beside(path, data)
    os.replace(tmp, path)


def _write_json_beside(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON into a hidden temporary file next to ``path``; returns the temporary file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    return tmp


def _make_dirs(path: Path) -> list[Path]:
    """``mkdir -p``; returns the folders it created, deepest last."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders that are still empty, deepest first (``folders`` as :func:`_make_dirs` lists them)."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (another process wrote into it) or already gone


@contextmanager
def staging(
    raw_root: Path, folder_name: str, *, overwrite: bool, outside_json: Mapping[Path, Any] | None = None
) -> Iterator[Path]:
    """Yield a fresh hidden folder next to the target; publish it as ``raw_root/folder_name`` on success.

    Publishing is the last step: once the block has finished, the files of ``outside_json`` (path ->
    JSON content, e.g. ACDC's ``splits_final.json`` in ``nnUNet_preprocessed``) are written next to their
    destinations under temporary names, then the dataset folder and those files are renamed into place
    with interrupts held back (:func:`nnunet_topkdice.workers.deferred_interrupts`), so they appear
    together. On any exception (also KeyboardInterrupt and SIGTERM) the temporary folder and files, and the
    folders this call created (``raw_root`` too), are removed, so nothing half-written is left. With
    ``overwrite`` an existing target is replaced only after the new dataset is complete.

    Raises:
        OverwriteRefused: (an InputError) the target appeared meanwhile and ``overwrite`` is False.
    """
    created = _make_dirs(raw_root)
    tmp = raw_root / f".{folder_name}.partial-{uuid.uuid4().hex[:8]}"
    staged: list[tuple[Path, Path]] = []  # (temporary file, destination)
    try:
        tmp.mkdir()
        yield tmp
        for destination, data in (outside_json or {}).items():
            created += _make_dirs(destination.parent)
            staged.append((_write_json_beside(destination, data), destination))
        with deferred_interrupts():
            _publish(tmp, raw_root / folder_name, overwrite=overwrite)
            for temporary, destination in staged:
                os.replace(temporary, destination)
    except BaseException:
        with deferred_interrupts():
            for temporary, _ in staged:
                temporary.unlink(missing_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            _remove_empty(created)
        raise


def _publish(tmp: Path, target: Path, *, overwrite: bool) -> None:
    """Rename ``tmp`` to ``target``; an existing target (with ``overwrite``) is moved aside first and removed
    after."""
    if not target.exists():
        tmp.rename(target)
        return
    if not overwrite:
        raise OverwriteRefused(f"{target} already exists")
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old)


@dataclass(frozen=True)
class DatasetDescription:
    """What a converter writes into ``dataset.json`` besides the cases.

    Attributes:
        name: the dataset name in ``Dataset<id>_<name>``.
        channel_names: channel index -> name, in channel order.
        labels: label name -> value, background 0 first.
        reference, license: where the data comes from and under which terms.
    """

    name: str
    channel_names: Mapping[int, str]
    labels: Mapping[str, int]
    reference: str
    license: str


def build_dataset(
    jobs: Sequence[CaseJob],
    raw_root: Path,
    dataset_id: int,
    dataset: DatasetDescription,
    *,
    summary: str,
    overwrite: bool,
    num_processes: int,
    extra_json: Mapping[str, Any] | None = None,
    outside_json: Mapping[Path, Any] | None = None,
) -> Path:
    """Convert ``jobs`` and publish ``raw_root/Dataset<id>_<name>`` atomically; returns the dataset folder.

    Everything that can be checked is checked before anything is written: the id, the target, the output
    folders (``raw_root`` and the folders of ``outside_json``: folders, or creatable, and writable).

    Args:
        summary: ``dataset.json``'s ``description`` (what was converted, which split).
        extra_json: file name -> JSON content written into the dataset folder (e.g. ``splits_final.json``).
        outside_json: path -> JSON content written outside the dataset folder, published with it (see
            :func:`staging`).
    Raises:
        InputError: a bad id, an output folder that is a file or not writable, from :func:`check_target` or
            :func:`convert_case`; nothing is left behind.
    """
    folder_name = dataset_folder_name(dataset_id, dataset.name)
    check_target(raw_root, folder_name, overwrite=overwrite)
    _check_num_processes(num_processes)
    check_output_folder(raw_root, "the nnU-Net raw folder")
    for path in outside_json or {}:
        check_output_folder(path.parent, f"the folder of {path.name}")
        if path.is_dir():
            raise InputError(f"{path} is a folder; expected to write the file {path.name} there")
    with staging(raw_root, folder_name, overwrite=overwrite, outside_json=outside_json) as tmp:
        run_jobs(jobs, tmp, num_processes=num_processes, desc=f"converting {folder_name}")
        write_dataset_json(
            tmp,
            channel_names=dataset.channel_names,
            labels=dataset.labels,
            num_training_cases=sum(job.subset == "train" for job in jobs),
            dataset_name=folder_name,
            numTest=sum(job.subset == "test" for job in jobs),
            reference=dataset.reference,
            description=summary,
            license=dataset.license,
        )
        for name, data in (extra_json or {}).items():
            write_json(tmp / name, data)
    return raw_root / folder_name


def make_jobs(
    cases: Mapping[str, tuple[tuple[Path, ...], Path | None]],
    test_cases: Sequence[str] | set[str],
    label_transform: LabelTransform,
) -> list[CaseJob]:
    """Jobs in case-id order from ``case id -> (image files, label file)``; ``test_cases`` go to *Ts."""
    test = set(test_cases)
    return [
        CaseJob(case_id, images, label, "test" if case_id in test else "train", label_transform)
        for case_id, (images, label) in sorted(cases.items())
    ]


def label_mapping_transform(mapping: Mapping[int, int]) -> LabelTransform:
    """A picklable :func:`remap_labels` bound to ``mapping``."""
    return partial(remap_labels, mapping=dict(mapping))


# ----------------------------------------------------------------------------------------------------------
# Environment (command line only)
# ----------------------------------------------------------------------------------------------------------


def resolve_raw_root(output: Path | None) -> Path:
    """``output`` if given, else ``$nnUNet_raw``.

    Raises:
        InputError: neither is given.
    """
    if output is not None:
        return output
    env = os.environ.get("nnUNet_raw")
    if not env:
        raise InputError("no output folder: pass -o/--output or set the nnUNet_raw environment variable")
    return Path(env)


def resolve_preprocessed_root() -> Path | None:
    """``$nnUNet_preprocessed`` if set and non-empty, else None."""
    env = os.environ.get("nnUNet_preprocessed")
    return Path(env) if env else None
