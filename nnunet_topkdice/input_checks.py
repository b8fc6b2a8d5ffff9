"""Checks of user input shared by the commands, run before any work: output folders that can be written, a
dataset id that no other dataset uses, and image files that hold all their voxels, none of them NaN or infinite.

Why a check for truncation: ITK's NIfTI reader (SimpleITK 2.5 / ITK 5.4) reads a ``.nii`` or ``.nii.gz`` file
that ends early (an interrupted copy, a full disk) without an error and fills the missing voxels with 0, so a
half-written prediction would be scored as a worse one. Its NRRD and MetaImage readers refuse such files. The
voxel data a NIfTI header declares is compared with what the file holds (:func:`truncated_nifti`).

Why a second reader for NaN: ITK's NIfTI reader (SimpleITK 2.5 / ITK 5.4, and so nnU-Net's
``SimpleITKIO``) returns 0 for every NaN and +-inf voxel of a ``.nii``/``.nii.gz`` file (its vendored
niftilib zeroes them while reading; ITK pull request 6683 keeps them from ITK 6 on), so a check on the
array SimpleITK returns cannot see them. NIfTI files are therefore counted with nibabel (a dependency of
nnU-Net); other formats (``.mha``, ``.nrrd``, ...) keep their non-finite values through SimpleITK. A file
stored as integers cannot hold either, so for it only the header is read.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nnunet_topkdice.errors import InputError

__all__ = [
    "StoredBytes",
    "check_complete_file",
    "check_dataset_id_free",
    "check_finite_file",
    "check_image_file",
    "check_output_folder",
    "count_non_finite",
    "truncated_nifti",
]

NIFTI_ENDINGS = (".nii", ".nii.gz")
_READ_CHUNK_BYTES = 1 << 22


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


def check_dataset_id_free(raw_root: Path, folder_name: str) -> None:
    """Check that no other dataset in ``raw_root`` uses the id of ``folder_name`` (``DatasetXXX_Name``).

    nnU-Net finds a dataset by its id alone, so a second name at the same id would be read instead, or
    refused as ambiguous. The converters (before writing) and ``topkdice reproduce`` (before anything runs)
    both ask this. Writes nothing; a ``raw_root`` that does not exist holds no dataset.

    Raises:
        InputError: another ``DatasetXXX_*`` with that id, naming it, ``raw_root`` and ``-d/--dataset-id``.
    """
    if not Path(raw_root).is_dir():
        return
    id_prefix = folder_name.split("_", 1)[0]  # "Dataset201"
    others = sorted(p.name for p in Path(raw_root).glob(id_prefix + "_*") if p.name != folder_name)
    if others:
        raise InputError(
            f"dataset id {id_prefix.removeprefix('Dataset')} is already used by {', '.join(others)} "
            f"in {raw_root}; choose another id with -d/--dataset-id"
        )


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


class StoredBytes(NamedTuple):
    """The bytes of a NIfTI file up to the end of its voxel data: as its header declares them, and as the
    file holds them (after decompression for ``.nii.gz``)."""

    declared: int
    held: int


def _gzip_pieces(path: Path, piece_bytes: int) -> Iterator[bytes]:
    """The decompressed content of a gzip file in pieces of at most ``piece_bytes``, one member after the
    other, up to where the stream breaks off (a truncated or damaged file ends the pieces, not an error)."""
    with open(path, "rb") as file:
        decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)  # gzip framing
        while data := file.read(max(piece_bytes, 1 << 16)):  # a header needs only the first few KB
            while data:
                try:
                    piece = decompressor.decompress(data, piece_bytes)
                except zlib.error:
                    return
                if piece:
                    yield piece
                if decompressor.eof:  # whatever follows is the next member
                    data = decompressor.unused_data
                    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
                else:
                    data = decompressor.unconsumed_tail


def _head(path: Path, n_bytes: int) -> bytes:
    """The first ``n_bytes`` of a file's content, decompressed for ``.gz``; fewer where the file ends first."""
    if not path.name.lower().endswith(".gz"):
        with open(path, "rb") as file:
            return file.read(n_bytes)
    head = b""
    for piece in _gzip_pieces(path, n_bytes):
        head += piece
        if len(head) >= n_bytes:
            break
    return head[:n_bytes]


def _declared_end(path: Path) -> int | None:
    """Offset of the end of the voxel data from a NIfTI-1 or NIfTI-2 header, or None where the file does not
    start with one (the caller's reader reports an unreadable file).

    The header is parsed from the file's first bytes: ``nibabel.load`` reads ahead and fails on a truncated
    ``.nii.gz`` whose header is whole.
    """
    import nibabel

    header_classes = (nibabel.Nifti1Header, nibabel.Nifti2Header)
    head = _head(path, max(cls.template_dtype.itemsize for cls in header_classes))
    for header_class in header_classes:
        size = header_class.template_dtype.itemsize
        if len(head) < size:
            continue
        try:
            header = header_class(head[:size], check=False)  # byte order guessed from sizeof_hdr
            if int(header["sizeof_hdr"]) != size:
                continue
            n_voxels = int(np.prod(header.get_data_shape(), dtype=np.int64))
            return int(header.get_data_offset()) + n_voxels * header.get_data_dtype().itemsize
        except Exception:  # a header nibabel cannot interpret: left to the reader
            return None
    return None


def _gzip_size_field(path: Path) -> int:
    """The last 4 bytes of a gzip file: the size of its (last member's) data modulo 2**32 where it is whole."""
    with open(path, "rb") as file:
        file.seek(-4, os.SEEK_END)
        return int.from_bytes(file.read(4), "little")


def _decompressed_bytes(path: Path) -> int:
    """How many bytes a gzip file decompresses to, counting up to where its stream breaks off, if it does."""
    return sum(len(piece) for piece in _gzip_pieces(path, _READ_CHUNK_BYTES))


def truncated_nifti(path: Path) -> StoredBytes | None:
    """The declared and held bytes of a NIfTI file that holds less voxel data than its header declares;
    None for a complete file, another format, or a header nibabel cannot read.

    A ``.nii.gz`` file is decompressed only when the size field at its end does not already match: a whole
    single-member file (what SimpleITK, nibabel and nnU-Net write) is confirmed from its last 4 bytes.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(NIFTI_ENDINGS):
        return None
    declared = _declared_end(path)
    if declared is None:
        return None
    if not name.endswith(".gz"):
        held = os.path.getsize(path)
    elif _gzip_size_field(path) == declared % (1 << 32):
        return None
    else:  # several gzip members, data after the voxels, or a truncated stream
        held = _decompressed_bytes(path)
    return StoredBytes(declared, held) if held < declared else None


def check_complete_file(path: Path, what: str = "") -> None:
    """Refuse a NIfTI file that ends before the voxel data its header declares (see the module docstring).

    Raises:
        InputError: naming ``what``, the file and both sizes.
    """
    stored = truncated_nifti(path)
    if stored is not None:
        held = "decompresses to" if Path(path).name.lower().endswith(".gz") else "holds"
        raise InputError(
            f"{what + ' ' if what else ''}{path} is truncated: its header declares {stored.declared} bytes up to "
            f"the end of its voxels, the file {held} {stored.held} (an interrupted copy or a full disk?)"
        )


def check_image_file(path: Path, what: str = "") -> None:
    """Refuse an image or label file that is truncated (:func:`check_complete_file`) or holds NaN or
    infinite voxels (:func:`check_finite_file`).

    Raises:
        InputError: naming ``what`` and the file.
    """
    check_complete_file(path, what)
    check_finite_file(path, what)


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
