"""Checks of user input shared by the commands, run before any work: output folders that can be written,
and image files without NaN or infinite voxels.

Why a second reader for NaN: ITK's NIfTI reader (SimpleITK 2.5 / ITK 5.4, and so nnU-Net's
``SimpleITKIO``) returns 0 for every NaN and +-inf voxel of a ``.nii``/``.nii.gz`` file (its vendored
niftilib zeroes them while reading; ITK pull request 6683 keeps them from ITK 6 on), so a check on the
array SimpleITK returns cannot see them. NIfTI files are therefore counted with nibabel (a dependency of
nnU-Net); other formats (``.mha``, ``.nrrd``, ...) keep their non-finite values through SimpleITK. A file
stored as integers cannot hold either, so for it only the header is read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nnunet_topkdice.errors import InputError

__all__ = ["check_finite_file", "check_output_folder", "count_non_finite"]

NIFTI_ENDINGS = (".nii", ".nii.gz")


def check_output_folder(path: Path, what: str) -> Path:
    """Check, writing nothing, that ``path`` is a folder this process can write into, or can be created.

    Raises:
        InputError: ``path`` (or a folder above it) exists but is not a folder, or the folder (or, when it
            does not exist yet, its nearest existing parent) is not writable; the message names ``what``.
    """
    path = Path(path)
    probe = path
    while not probe.is_dir():
        if probe.exists() or probe.is_symlink():
            kind = "a file" if probe.is_file() else "not a folder"
            if probe == path:
                raise InputError(f"{what} {path} is {kind}; expected a folder")
            raise InputError(f"{what} {path} cannot be created: {probe} is {kind}")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" (its parent {probe} is not writable, so it cannot be created)"
        raise InputError(f"{what} {path} is not writable{where}")
    return path


def _nifti_values(path: Path) -> np.ndarray | None:
    """The stored voxels of a NIfTI file as nibabel scales them, or None when they cannot be non-finite
    (integer storage with a finite scaling) or nibabel cannot read the file (the caller's reader reports it)."""
    import nibabel

    try:
        image = nibabel.load(str(path))
        proxy = image.dataobj
        if image.get_data_dtype().kind in "iub" and np.isfinite([proxy.slope, proxy.inter]).all():
            return None
        return np.asanyarray(proxy)
    except Exception:  # any reading problem is for the caller's reader to report
        return None


def _simpleitk_values(path: Path) -> np.ndarray | None:
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        if "float" not in sitk.GetPixelIDValueAsString(reader.GetPixelID()):
            return None
        return sitk.GetArrayFromImage(reader.Execute())
    except RuntimeError:  # unreadable: the caller's reader reports it
        return None


def count_non_finite(path: Path) -> tuple[int, int]:
    """``(NaN voxels, infinite voxels)`` of an image file, as stored (see the module docstring).

    Returns ``(0, 0)`` for a file that cannot be read here: the reader that reads it for the work says why.
    """
    path = Path(path)
    is_nifti = path.name.lower().endswith(NIFTI_ENDINGS)
    values = _nifti_values(path) if is_nifti else _simpleitk_values(path)
    if values is None or values.dtype.kind not in "fc":
        return 0, 0
    n_nan = int(np.isnan(values).sum())
    return n_nan, int(values.size - n_nan - np.isfinite(values).sum())


def check_finite_file(path: Path, what: str = "") -> None:
    """Refuse an image or label file with NaN or infinite voxels.

    Raises:
        InputError: naming ``what``, the file and both counts.
    """
    n_nan, n_inf = count_non_finite(path)
    if n_nan or n_inf:
        raise InputError(
            f"{what + ' ' if what else ''}{path} contains {n_nan} NaN and {n_inf} infinite voxel(s); "
            "replace them with finite values first"
        )
