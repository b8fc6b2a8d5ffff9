"""Bad input to the converters (issue 24): NaN and infinity, output folders that cannot be written,
``nnUNet_preprocessed`` that is not a folder, and interrupts at any moment."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
from conversion_fixtures import write_image

from dataset_conversion import common
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.input_checks import count_non_finite

SHAPE = (4, 5, 6)  # (z, y, x)


def _with_non_finite(dtype: type = np.float32) -> np.ndarray:
    """(4, 5, 6) ones with 2 NaN and 3 infinite voxels (+inf twice, -inf once)."""
    values = np.ones(SHAPE, dtype)
    values[0, 0, :2] = np.nan
    values[1, 1, :2] = np.inf
    values[2, 2, 0] = -np.inf
    return values


def _write_nibabel(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(values.transpose(2, 1, 0), np.diag([0.7, 0.8, 2.5, 1.0])), str(path))
    return path


def _write_simpleitk(path: Path, values: np.ndarray) -> Path:
    geom = {"spacing": (0.7, 0.8, 2.5), "origin": (0.0, 0.0, 0.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}
    return write_image(path, values, geom)


WRITERS = {"nibabel": _write_nibabel, "simpleitk": _write_simpleitk}


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_count_non_finite_sees_what_simpleitk_reads_as_zero(tmp_path: Path, writer: str, ending: str) -> None:
    if writer == "nibabel" and ending == ".nrrd":
        pytest.skip("nibabel writes no NRRD")
    path = WRITERS[writer](tmp_path / f"image{ending}", _with_non_finite())
    assert count_non_finite(path) == (2, 3)
    clean = WRITERS[writer](tmp_path / f"clean{ending}", np.ones(SHAPE, np.float32))
    assert count_non_finite(clean) == (0, 0)


def _job(tmp_path: Path, writer: str, broken: str) -> common.CaseJob:
    """A one-channel case whose image or label (``broken``) has 2 NaN and 3 infinite voxels."""
    image = np.ones(SHAPE, np.float32)
    labels = np.ones(SHAPE, np.float32)
    write = WRITERS[writer]
    image_path = write(tmp_path / "in" / "img.nii.gz", _with_non_finite() if broken == "image" else image)
    label_path = write(tmp_path / "in" / "lab.nii.gz", _with_non_finite() if broken == "label" else labels)
    return common.CaseJob("c1", (image_path,), label_path, "train", common.binarize_labels)


@pytest.mark.parametrize("broken", ["image", "label"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_converters_refuse_nan_and_infinity(tmp_path: Path, writer: str, broken: str) -> None:
    job = _job(tmp_path, writer, broken)
    out = tmp_path / "raw"
    description = common.DatasetDescription("X", {0: "CT"}, {"background": 0, "fg": 1}, "", "")
    bad = job.images[0] if broken == "image" else job.label
    with pytest.raises(InputError, match=rf"case c1: .*{bad} contains 2 NaN and 3 infinite voxel"):
        common.build_dataset([job], out, 1, description, summary="", overwrite=False, num_processes=1)
    assert not out.exists()


def test_clean_float_case_still_converts(tmp_path: Path) -> None:
    job = _job(tmp_path, "nibabel", broken="none")
    description = common.DatasetDescription("X", {0: "CT"}, {"background": 0, "fg": 1}, "", "")
    folder = common.build_dataset([job], tmp_path / "raw", 1, description, summary="", overwrite=False,
                                  num_processes=1)  # fmt: skip
    assert (folder / "imagesTr" / "c1_0000.nii.gz").is_file() and (folder / "labelsTr" / "c1.nii.gz").is_file()
