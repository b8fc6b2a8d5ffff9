"""Reading and checking label files: the case files of a folder, one label map with its geometry, and the
checks that a prediction is the same image grid as its reference (size, spacing, origin, direction) and
holds only the dataset's label values.

Files are read with nnU-Net's reader-writer for the dataset (:func:`reader_writer_name`: the dataset.json's
``overwrite_image_reader_writer``, else the first reader for its ``file_ending``), so the spacing is the one
nnU-Net trains with: a ``.tif`` file's comes from the ``<case>.json`` beside it. ``SimpleITKIO`` files are read
with SimpleITK directly (the same calls; the labels keep their integer type). 2D natural images
(``NaturalImage2DIO``: ``.png``, ``.bmp``, ``.tif`` without a spacing) have no spacing: 1 per axis.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.geometry import GEOMETRY_TOLERANCE, differs

if TYPE_CHECKING:
    from nnunetv2.imageio.base_reader_writer import BaseReaderWriter

__all__ = [
    "GEOMETRY_TOLERANCE",
    "ImageGeometry",
    "LabelImage",
    "check_label_values",
    "check_no_dangling_links",
    "check_same_cases",
    "check_same_geometry",
    "find_cases",
    "geometry_differences",
    "read_geometry",
    "read_image",
    "read_label_file",
    "read_label_image",
    "reader_writer_name",
    "spacing_note",
]

#: nnU-Net's reader of ``.nii.gz``/``.nrrd``/``.mha``: read here with the same SimpleITK calls.
SIMPLEITK_READER = "SimpleITKIO"
#: nnU-Net's reader of 2D natural images: no spacing (nnU-Net reports 999 for its dummy axis), 1 per axis here.
NATURAL_IMAGE_READER = "NaturalImage2DIO"



@dataclass(frozen=True)
class LabelImage:
    """A label map and where it lies in space.

    Attributes:
        array: integer labels in SimpleITK's array order (z, y, x).
        spacing: voxel size per array axis (z, y, x), mm.
        origin: physical position of the first voxel, SimpleITK's order (x, y, z), mm; empty for formats
            without one (``.tif``, 2D natural images).
        direction: direction cosines, SimpleITK's row-major 3x3 (or 2x2) matrix as a flat tuple; empty for
            formats without one.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


@dataclass(frozen=True)
class ImageGeometry:
    """The voxel grid of an image file, read from its header only.

    Attributes:
        shape: array shape in SimpleITK's array order (z, y, x).  spacing, origin, direction: as
        :class:`LabelImage`.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


def find_cases(folder: Path, file_ending: str) -> dict[str, Path]:
    """Case id -> file for every ``<case><file_ending>`` in ``folder`` (other files are ignored).

    Raises:
        InputError: the folder does not exist or holds no such file; a case file is a dangling link.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"folder not found: {folder}")
    check_no_dangling_links(folder, file_ending)
    cases = {
        p.name.removesuffix(file_ending): p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")
    }
    if not cases:
        raise InputError(f"no '*{file_ending}' files in {folder}")
    return cases


def check_no_dangling_links(folder: Path, file_ending: str) -> None:
    """Refuse case files that are symbolic links to nothing (a moved or deleted target): skipping them
    would drop the case from the evaluation without a word.

    Raises:
        InputError: naming the first such links, their targets and how many there are.
    """
    dangling = sorted(
        p for p in Path(folder).iterdir() if p.name.endswith(file_ending) and p.is_symlink() and not p.exists()
    )
    if dangling:
        shown = "; ".join(f"{p} -> {os.readlink(p)}" for p in dangling[:3])
        raise InputError(
            f"{len(dangling)} case file(s) in {folder} are links to files that do not exist: {shown}"
            + (" ..." if len(dangling) > 3 else "")
        )


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_same_cases(
    reference: Mapping[str, Path], prediction: Mapping[str, Path], run: str, folder: Path
) -> None:
    """Raise unless the prediction folder holds exactly the reference's cases.

    Raises:
        InputError: naming the run, its folder, the missing and the extra cases.
    """
    missing = sorted(set(reference) - set(prediction))
    extra = sorted(set(prediction) - set(reference))
    if not missing and not extra:
        return
    problems = []
    if missing:
        problems.append(f"no prediction for {len(missing)} reference case(s): {_listing(missing)}")
    if extra:
        problems.append(f"{len(extra)} case(s) not in the reference folder: {_listing(extra)}")
    hint = ""
    if all(name.endswith("_0000") for name in reference):
        hint = " (the reference folder looks like imagesTs; pass labelsTs)"
    raise InputError(
        f"run {run!r} ({folder}) does not match the reference cases: {'; '.join(problems)}{hint}"
    )


def _read_sitk(path: Path):
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"cannot read {path}: {str(e).strip().splitlines()[-1]}") from e


def _grid(image) -> dict[str, tuple[float, ...]]:
    return {
        "spacing": tuple(float(s) for s in reversed(image.GetSpacing())),
        "origin": tuple(float(v) for v in image.GetOrigin()),
        "direction": tuple(float(v) for v in image.GetDirection()),
    }


def spacing_note(reader_writer: str) -> str | None:
    """What the tables say about the spacing of a reader's files (None: they have one, in mm)."""
    if reader_writer == NATURAL_IMAGE_READER:
        return "2D natural images have no spacing: 1 per pixel, so HD95 and NSD are in pixels, not mm"
    return None


def reader_writer_name(
    file_ending: str, overwrite: str | None = None, example_file: Path | None = None, source: str = "dataset.json"
) -> str:
    """The name of nnU-Net's reader-writer class for a dataset, as nnU-Net picks it
    (``determine_reader_writer_from_dataset_json``): ``overwrite`` (dataset.json's
    ``overwrite_image_reader_writer``) when nnU-Net finds that class, else the first reader for
    ``file_ending`` that can read ``example_file`` (a 3D ``.tif`` is not a 2D natural image).

    Raises:
        InputError: no reader of nnU-Net handles ``file_ending`` (or reads ``example_file``).
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    content = {"file_ending": file_ending, "overwrite_image_reader_writer": overwrite or "None"}
    example = None if example_file is None else str(example_file)
    # nnU-Net prints the tracebacks of the readers it tries and a warning for an unknown overwrite class
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return determine_reader_writer_from_dataset_json(content, example, verbose=False).__name__
        except RuntimeError as e:
            message = str(e)
    what = f"file_ending {file_ending!r}" + (f" (tried on {example_file})" if example_file else "")
    raise InputError(f"{source}: nnU-Net has no reader for {what}: {message}")


@functools.cache
def _reader(name: str) -> BaseReaderWriter:
    """One instance of nnU-Net's reader-writer class ``name`` per process."""
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    return recursive_find_reader_writer_by_name(name)()


def _integer_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.array_equal(array, np.round(array)):
        raise InputError(f"{path} holds non-integer values; expected a label map")
    return array.astype(np.int64)


def _affine_geometry(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Origin and direction cosines (columns normalised, row-major) of a 4x4 NIfTI affine."""
    rotation = np.asarray(affine, dtype=np.float64)[:3, :3]
    direction = rotation / np.linalg.norm(rotation, axis=0).clip(min=1e-12)
    return tuple(float(v) for v in np.asarray(affine)[:3, 3]), tuple(float(v) for v in direction.ravel())


def _read_with_nnunet(path: Path, reader_writer: str, *, labels: bool = True) -> LabelImage:
    """Read with nnU-Net's ``reader_writer()``: ``read_seg`` for a label file (integer labels), else
    ``read_images`` (channel 0, float32, for display); its ``(C, *spatial)`` array and properties."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its warnings (no spacing file) are not results
            reader = _reader(reader_writer)
            data, properties = reader.read_seg(str(path)) if labels else reader.read_images((str(path),))
    except Exception as e:  # nnU-Net's readers raise assertions and their libraries' own errors
        raise InputError(f"cannot read {path} with nnU-Net's {reader_writer}: {e}") from e
    array = _integer_labels(np.asarray(data)[0], path) if labels else np.asarray(data[0], dtype=np.float32)
    if reader_writer == NATURAL_IMAGE_READER:
        return LabelImage(array=array[0], spacing=(1.0, 1.0), origin=(), direction=())
    origin: tuple[float, ...] = ()
    direction: tuple[float, ...] = ()
    if "sitk_stuff" in properties:
        origin = tuple(float(v) for v in properties["sitk_stuff"]["origin"])
        direction = tuple(float(v) for v in properties["sitk_stuff"]["direction"])
    elif "nibabel_stuff" in properties:
        origin, direction = _affine_geometry(properties["nibabel_stuff"]["original_affine"])
    spacing = tuple(float(v) for v in properties["spacing"])
    if len(spacing) != array.ndim:
        raise InputError(f"{path}: nnU-Net's {reader_writer} gives spacing {spacing} for an array of shape "
                         f"{array.shape}")  # fmt: skip
    return LabelImage(array=array, spacing=spacing, origin=origin, direction=direction)


def read_label_image(path: Path, reader_writer: str = SIMPLEITK_READER) -> LabelImage:
    """Read an nnU-Net label file with its spacing, origin and direction, as nnU-Net's ``reader_writer``.

    Args:
        path: the label file.
        reader_writer: the class name of nnU-Net's reader for the dataset (:func:`reader_writer_name`).
    Returns:
        The labels (integers, array order); spacing per array axis in mm (1 per axis for 2D natural
        images); origin and direction where the format has them (empty otherwise, e.g. ``.tif``).
    Raises:
        InputError: the file cannot be read, has several components per pixel or non-integer values.
    """
    if reader_writer != SIMPLEITK_READER:
        return _read_with_nnunet(Path(path), reader_writer)
    import SimpleITK as sitk

    image = _read_sitk(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per pixel; expected a label map"
        )
    array = _integer_labels(sitk.GetArrayFromImage(image), path)
    return LabelImage(array=array, **_grid(image))


def read_image(path: Path, reader_writer: str = SIMPLEITK_READER) -> LabelImage:
    """Read an image file (e.g. ``<case>_0000.nii.gz``) with the same reader as the labels, for display.

    Args:
        path: the image file.
        reader_writer: nnU-Net's reader for the dataset (:func:`reader_writer_name`); a ``.tif`` image's
            spacing then comes from the ``<case>.json`` beside it, as for its labels.
    Returns:
        A :class:`LabelImage` whose ``array`` holds the intensities as float32 (z, y, x); an image with
        several components per pixel (an RGB picture) is their mean (grey).
    Raises:
        InputError: the file cannot be read.
    """
    if reader_writer != SIMPLEITK_READER:
        return _read_with_nnunet(Path(path), reader_writer, labels=False)
    import SimpleITK as sitk

    image = _read_sitk(path)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = array.mean(axis=-1)
    return LabelImage(array=array, **_grid(image))


def read_geometry(path: Path, reader_writer: str = SIMPLEITK_READER, *, labels: bool = True) -> ImageGeometry:
    """The voxel grid of an image (``labels=False``) or label file, as nnU-Net's ``reader_writer`` sees it:
    from the header for SimpleITK's formats (no voxel data is read), else by reading the file with
    nnU-Net's reader (``.tif`` spacing from the ``<case>.json``; 2D natural images 1 per pixel).

    Raises:
        InputError: the file cannot be read.
    """
    if reader_writer != SIMPLEITK_READER:
        image = _read_with_nnunet(Path(path), reader_writer, labels=labels)
        return ImageGeometry(tuple(image.array.shape), image.spacing, image.origin, image.direction)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"cannot read {path}: {str(e).strip().splitlines()[-1]}") from e
    return ImageGeometry(shape=tuple(int(n) for n in reversed(reader.GetSize())), **_grid(reader))


def read_label_file(
    path: Path, reader_writer: str = SIMPLEITK_READER
) -> tuple[np.ndarray, tuple[float, ...]]:
    """``(labels, spacing)`` of a label file, both in array order (z, y, x); see :func:`read_label_image`.

    Raises:
        InputError: as :func:`read_label_image`.
    """
    image = read_label_image(path, reader_writer)
    return image.array, image.spacing


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def geometry_differences(reference: LabelImage | ImageGeometry, other: LabelImage | ImageGeometry) -> list[str]:
    """The spacing, origin and direction of ``other`` that differ from ``reference`` beyond the tolerance,
    each as ``"<property> <axis order> <other> vs <reference>"``; empty when the grids agree (the shape is
    not compared)."""
    checks = (("spacing", "(z, y, x)"), ("origin", "(x, y, z)"), ("direction", "(row-major)"))
    differences = []
    for name, order in checks:
        expected, got = getattr(reference, name), getattr(other, name)
        if not expected and not got:  # a format without it (.tif has no origin, a PNG no spacing)
            continue
        if differs(name, expected, got, reference.spacing):
            differences.append(f"{name} {order} {_fmt(got)} vs {_fmt(expected)}")
    return differences


def check_same_geometry(
    case: str, reference: LabelImage, reference_path: Path, prediction: LabelImage, prediction_path: Path
) -> None:
    """Refuse a prediction that is not on its reference's image grid: the same voxels must mean the same
    anatomy, so size, spacing, origin and direction must agree (within :data:`GEOMETRY_TOLERANCE`).

    Raises:
        InputError: a different shape, or naming the case, both files and every differing property with
        both values (prediction first).
    """
    if prediction.array.shape != reference.array.shape:
        raise InputError(
            f"shape mismatch for case {case!r}: prediction {prediction_path} has shape "
            f"{prediction.array.shape}, reference {reference_path} has {reference.array.shape}"
        )
    differences = geometry_differences(reference, prediction)
    if differences:
        raise InputError(
            f"geometry mismatch for case {case!r}: prediction {prediction_path} vs reference {reference_path}: "
            + "; ".join(differences)
            + " (the same voxel must be the same anatomy; resample or re-export the prediction)"
        )


def _present_values(array: np.ndarray) -> np.ndarray:
    if array.size and array.min() >= 0 and array.max() < 1 << 16:
        return np.flatnonzero(np.bincount(array.ravel().astype(np.intp, copy=False)))  # faster than unique
    return np.unique(array)


def check_label_values(array: np.ndarray, path: Path, allowed_values: frozenset[int]) -> None:
    """Raise if ``array`` holds a value outside ``allowed_values``.

    Raises:
        InputError: naming the file, the unexpected values and the allowed ones.
    """
    bad = sorted(set(_present_values(array).tolist()) - allowed_values)
    if bad:
        raise InputError(
            f"{path} contains label value(s) {bad} that are not in the dataset's labels "
            f"(allowed: {sorted(allowed_values)})"
        )
