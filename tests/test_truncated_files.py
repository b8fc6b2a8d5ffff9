"""NIfTI files that end early (an interrupted copy, a full disk): SimpleITK reads them without an error and
fills the missing voxels with 0, so ``evaluate`` scored a half-written prediction as a worse one and the
converters copied a half-written image. Both now refuse them, naming the file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion import common
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.evaluation import evaluate_runs
from nnunet_topkdice.input_checks import StoredBytes, check_complete_file, truncated_nifti

SHAPE = (6, 16, 16)  # (z, y, x)


def _labels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, SHAPE, dtype=np.uint8)


def _write_simpleitk(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), path.name.endswith(".gz"))
    return path


def _write_nibabel(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(array.transpose(2, 1, 0), np.eye(4)), str(path))
    return path


WRITERS = {"simpleitk": _write_simpleitk, "nibabel": _write_nibabel}


def _uncompressed_size(path: Path) -> int:
    data = path.read_bytes()
    return len(gzip.decompress(data)) if path.name.endswith(".gz") else len(data)


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_whole_file_passes_and_a_cut_one_is_measured(tmp_path: Path, writer: str, ending: str) -> None:
    path = WRITERS[writer](tmp_path / f"case{ending}", _labels())
    declared = _uncompressed_size(path)  # these writers put nothing after the voxels
    assert declared >= np.prod(SHAPE) + 348
    assert truncated_nifti(path) is None
    check_complete_file(path, "prediction")  # no error

    size = path.stat().st_size
    for keep in (size // 2, size - 40):
        _cut(path, keep)
        stored = truncated_nifti(path)
        assert stored is not None and stored.declared == declared, keep
        if ending == ".nii":
            assert stored.held == keep
        else:  # what the cut stream still decompresses to
            assert 0 < stored.held < declared
        # what SimpleITK does with it: no error, zeros where the voxels are missing
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).shape == SHAPE
        with pytest.raises(InputError, match=rf"^prediction {path} is truncated: its header declares {declared} "):
            check_complete_file(path, "prediction")
        path = WRITERS[writer](tmp_path / f"case{ending}", _labels())


def test_a_whole_file_of_two_gzip_members_passes_and_a_cut_one_does_not(tmp_path: Path) -> None:
    # the size field at the end counts only the last member: the file is decompressed to be sure
    path = _write_simpleitk(tmp_path / "case.nii.gz", _labels())
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), _labels())
    assert truncated_nifti(path) is None
    _cut(path, path.stat().st_size - 30)
    assert truncated_nifti(path) == StoredBytes(len(data), truncated_nifti(path).held)
    assert truncated_nifti(path).held < len(data)


def test_other_formats_and_unreadable_headers_are_left_to_the_reader(tmp_path: Path) -> None:
    nrrd = _write_simpleitk(tmp_path / "case.nrrd", _labels())
    _cut(nrrd, nrrd.stat().st_size // 2)
    assert truncated_nifti(nrrd) is None  # SimpleITK's NRRD reader refuses it itself
    header_only = _write_simpleitk(tmp_path / "case.nii", _labels())
    _cut(header_only, 100)  # not even a whole header: nibabel cannot read it, and neither can SimpleITK
    assert truncated_nifti(header_only) is None
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(header_only))


@pytest.mark.parametrize("where", ["reference", "prediction"])
def test_evaluate_refuses_a_truncated_case_and_writes_nothing(tmp_path: Path, where: str) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "fg": 1}, "file_ending": ".nii.gz"}))
    for folder in ("ref", "pred"):
        for case in ("a", "b"):
            _write_simpleitk(tmp_path / folder / f"{case}.nii.gz", _labels(ord(case)))
    broken = tmp_path / ("ref" if where == "reference" else "pred") / "b.nii.gz"
    _cut(broken, broken.stat().st_size // 2)
    with pytest.raises(InputError, match=rf"case b: {where} {broken} is truncated: its header declares"):
        evaluate_runs(tmp_path / "ref", {"pred": tmp_path / "pred"}, tmp_path / "dataset.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("broken", ["image", "label"])
def test_converters_refuse_a_truncated_image_or_label(tmp_path: Path, broken: str) -> None:
    image = _write_simpleitk(tmp_path / "in" / "img.nii.gz", _labels().astype(np.float32))
    label = _write_simpleitk(tmp_path / "in" / "lab.nii.gz", _labels())
    bad = image if broken == "image" else label
    _cut(bad, bad.stat().st_size // 2)
    job = common.CaseJob("c1", (image,), label, "train", common.binarize_labels)
    description = common.DatasetDescription("X", {0: "CT"}, {"background": 0, "fg": 1}, "", "")
    out = tmp_path / "raw"
    with pytest.raises(InputError, match=rf"case c1: .*{bad} is truncated"):
        common.build_dataset([job], out, 1, description, summary="", overwrite=False, num_processes=1)
    assert not out.exists()
