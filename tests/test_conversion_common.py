"""The shared converter parts: geometry checks, label checks, atomic publish, CLI plumbing."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conversion_fixtures import assert_geometry_close, geometry, read_array, read_geometry, write_image

from dataset_conversion import cli, common
from nnunet_topkdice.cli import main as topkdice_main
from nnunet_topkdice.errors import InputError, OverwriteRefused


def _image(shape: tuple[int, int, int] = (4, 5, 6), **overrides) -> sitk.Image:
    geom = {**geometry(0), **overrides}
    image = sitk.GetImageFromArray(np.zeros(shape, np.int16))
    image.SetSpacing(geom["spacing"])
    image.SetOrigin(geom["origin"])
    image.SetDirection(geom["direction"])
    return image


# ---- geometry ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("other", "difference"),
    [
        (_image(shape=(4, 5, 7)), r"size \(6, 5, 4\) vs \(7, 5, 4\)"),
        (_image(spacing=(0.7, 0.8, 3.0)), r"spacing \(0\.7, 0\.8, 2\.5\) vs \(0\.7, 0\.8, 3\)"),
        (_image(origin=(-100.0, 50.5, 13.25)), r"origin \(-100, 50\.5, 12\.25\) vs \(-100, 50\.5, 13\.25\)"),
        (_image(direction=(1.0, 0, 0, 0, 1, 0, 0, 0, 1)), r"direction \("),
    ],
    ids=["size", "spacing", "origin", "direction"],
)
def test_geometry_mismatch_names_both_files_and_difference(other: sitk.Image, difference: str) -> None:
    with pytest.raises(
        InputError, match=rf"geometry mismatch between /a/img\.nii\.gz and /b/label\.nii\.gz: {difference}"
    ):
        common.check_same_geometry(_image(), Path("/a/img.nii.gz"), other, Path("/b/label.nii.gz"))


def test_geometry_lists_every_difference() -> None:
    other = _image(spacing=(0.7, 0.8, 3.0), origin=(0.0, 0.0, 0.0))
    assert [d.split()[0] for d in common.geometry_differences(_image(), other)] == ["spacing", "origin"]


def test_geometry_tolerates_float32_header_rounding() -> None:
    # 1e-6 mm is far below float32 precision at 100 mm; a header rounding, not a mismatch.
    origin = np.array(geometry(0)["origin"]) + 1e-6
    assert common.geometry_differences(_image(), _image(origin=tuple(origin))) == []


def test_read_image_reports_corrupt_file(tmp_path: Path) -> None:
    path = write_image(tmp_path / "img.nii.gz", np.zeros((4, 4, 4), np.int16), geometry(0))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InputError, match=rf"cannot read {path}"):
        common.read_image(path)


# ---- labels ------------------------------------------------------------------------------------------


def test_remap_labels_voxel_by_voxel() -> None:
    labels = np.array([[0, 1, 2], [3, 2, 0]], dtype=np.int16)  # (2, 3)
    out = common.remap_labels(labels, mapping={0: 0, 1: 0, 2: 5, 3: 1}, case_id="c", path=Path("l.nii.gz"))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 0, 5], [1, 5, 0]])


def test_remap_labels_accepts_whole_valued_float() -> None:
    labels = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    out = common.remap_labels(labels, mapping={0: 0, 1: 2, 2: 1}, case_id="c", path=Path("l"))
    np.testing.assert_array_equal(out, [0, 2, 1])


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0, 1, 7, 9, 7], np.uint8),
         r"case case0007: label file /x/label\.nii\.gz contains unexpected label values \[7, 9\] "
         r"\(expected a subset of \[0, 1, 2\]\)"),
        (np.array([0.0, 1.5], np.float32), r"case case0007: .* non-integer values \[1\.5\]"),
        (np.array([0.0, np.nan], np.float32), r"case case0007: .* NaN"),
        (np.array([0, -1], np.int8), r"unexpected label values \[-1\]"),
    ],
    ids=["out-of-set", "fractional", "nan", "negative"],
)  # fmt: skip
def test_remap_labels_rejects_unexpected_values(labels: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        common.remap_labels(
            labels, mapping={0: 0, 1: 1, 2: 2}, case_id="case0007", path=Path("/x/label.nii.gz")
        )


def test_binarize_labels() -> None:
    out = common.binarize_labels(np.array([0.0, 0.5, 1.0, 3.0], np.float32), case_id="c", path=Path("m"))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [0, 1, 1, 1])


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0.0, -1.0]), r"case p1: .*negative values \[-1\.0\]"),
        (np.array([0.0, np.inf]), r"case p1: .*infinite"),
    ],
    ids=["negative", "infinite"],
)
def test_binarize_labels_rejects(labels: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        common.binarize_labels(labels, case_id="p1", path=Path("m"))


# ---- target, staging, names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset_id", [0, 1000, -3, True, 2.0], ids=["zero", "1000", "negative", "bool", "float"]
)
def test_dataset_folder_name_rejects_bad_id(dataset_id: object) -> None:
    with pytest.raises(InputError, match=r"dataset id must be an integer in \[1, 999\]"):
        common.dataset_folder_name(dataset_id, "X")  # type: ignore[arg-type]


def test_dataset_folder_name_pads_to_three_digits() -> None:
    assert common.dataset_folder_name(7, "Synapse") == "Dataset007_Synapse"


def test_check_target_refuses_existing_and_id_clash(tmp_path: Path) -> None:
    (tmp_path / "Dataset201_Synapse").mkdir()
    with pytest.raises(OverwriteRefused, match=r"Dataset201_Synapse already exists; pass overwrite=True to replace it"):
        common.check_target(tmp_path, "Dataset201_Synapse", overwrite=False)
    assert (
        common.check_target(tmp_path, "Dataset201_Synapse", overwrite=True) == tmp_path / "Dataset201_Synapse"
    )
    with pytest.raises(InputError, match=r"dataset id 201 is already used by Dataset201_Synapse"):
        common.check_target(tmp_path, "Dataset201_Other", overwrite=True)


def test_overwrite_refused_names_the_callers_spelling() -> None:
    import pickle

    refused = OverwriteRefused("/raw/Dataset201_X already exists")
    assert str(refused) == "/raw/Dataset201_X already exists; pass overwrite=True to replace it"
    assert str(refused.spelled("--overwrite")) == "/raw/Dataset201_X already exists; pass --overwrite to replace it"
    assert str(pickle.loads(pickle.dumps(refused.spelled("--overwrite")))) == str(refused.spelled("--overwrite"))


def test_publish_refuses_a_target_that_appeared_meanwhile(tmp_path: Path) -> None:
    with (
        pytest.raises(OverwriteRefused, match=r"Dataset201_X already exists; pass overwrite=True to replace it$"),
        common.staging(tmp_path, "Dataset201_X", overwrite=False) as tmp,
    ):
        (tmp / "new.txt").write_text("new")
        (tmp_path / "Dataset201_X").mkdir()  # another process was faster
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset201_X"]


def test_staging_failure_leaves_nothing_and_removes_created_root(tmp_path: Path) -> None:
    raw_root = tmp_path / "a" / "raw"
    with (
        pytest.raises(RuntimeError, match="boom"),
        common.staging(raw_root, "Dataset201_X", overwrite=False) as tmp,
    ):
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_staging_overwrite_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "Dataset201_X"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="^fail$"), common.staging(tmp_path, "Dataset201_X", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("fail")
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset201_X"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with common.staging(tmp_path, "Dataset201_X", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset201_X"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_resolve_raw_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "env"))
    assert common.resolve_raw_root(tmp_path / "given") == tmp_path / "given"
    assert common.resolve_raw_root(None) == tmp_path / "env"
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(InputError, match=r"pass -o/--output or set the nnUNet_raw environment variable"):
        common.resolve_raw_root(None)


# ---- CLI plumbing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["convert", "synapse", "-i", "x", "-d", "1000"], "dataset id must be in [1, 999], got '1000'"),
        (["convert", "acdc", "-i", "x", "-np", "0"], "expected a positive integer, got '0'"),
        (["convert", "msseg", "-i", "x", "--seed", "a"], "invalid int value: 'a'"),
        (["convert", "synapse"], "the following arguments are required: -i/--input"),
        (["convert", "cityscapes", "-i", "x"], "invalid choice: 'cityscapes'"),
    ],
    ids=["bad-id", "bad-np", "bad-seed", "no-input", "unknown-dataset"],
)
def test_cli_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="^2$"):  # the exit code
        topkdice_main(argv)
    assert message in capsys.readouterr().err


def test_cli_parses_shared_options() -> None:
    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["convert", "msseg", "-i", "in", "-o", "out", "-d", "5", "--overwrite", "-np", "3"]
    )
    assert (args.input, args.output, args.dataset_id, args.overwrite, args.num_processes, args.seed) == (
        Path("in"), Path("out"), 5, True, 3, 0
    )  # fmt: skip
    args = parser.parse_args(["convert", "synapse", "-i", "in"])
    assert (args.output, args.dataset_id, args.overwrite, "seed" in args) == (None, 201, False, False)


# ---- one case ------------------------------------------------------------------------------------------


def test_convert_case_aligns_channels_within_tolerance(tmp_path: Path) -> None:
    """A channel whose header differs by float noise is re-written with channel 0's geometry; an identical
    one is copied byte for byte; the label takes channel 0's geometry and is uint8."""
    geom = geometry(3)
    noisy = {**geom, "origin": tuple(np.array(geom["origin"]) + 1e-5)}
    ch0 = write_image(tmp_path / "in" / "a.nii.gz", np.full((4, 5, 6), 1.0, np.float32), geom)
    ch1 = write_image(tmp_path / "in" / "b.nii.gz", np.full((4, 5, 6), 2, np.int16), noisy)
    ch2 = write_image(tmp_path / "in" / "c.nii.gz", np.full((4, 5, 6), 3, np.uint8), geom)
    label = write_image(tmp_path / "in" / "l.nii.gz", np.ones((4, 5, 6), np.float64), noisy)
    out = tmp_path / "out"
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True)
    job = common.CaseJob("c1", (ch0, ch1, ch2), label, "train", common.binarize_labels)
    assert common.convert_case(job, out) == "c1"
    written = [out / "imagesTr" / f"c1_000{i}.nii.gz" for i in range(3)]
    assert written[0].read_bytes() == ch0.read_bytes() and written[2].read_bytes() == ch2.read_bytes()
    assert_geometry_close(written[1], ch0)
    assert read_geometry(written[1]) != read_geometry(ch1)
    np.testing.assert_array_equal(read_array(written[1]), np.full((4, 5, 6), 2, np.int16))
    assert read_array(written[1]).dtype == np.int16
    labels = read_array(out / "labelsTr" / "c1.nii.gz")
    assert labels.dtype == np.uint8 and labels.min() == 1
    assert_geometry_close(out / "labelsTr" / "c1.nii.gz", ch0)


@pytest.mark.parametrize("num_processes", [0, -1, 1.5], ids=["zero", "negative", "float"])
def test_build_dataset_rejects_bad_num_processes(tmp_path: Path, num_processes: object) -> None:
    with pytest.raises(InputError, match=r"num_processes must be a positive integer"):
        common.build_dataset(
            [], tmp_path / "raw", 1, common.DatasetDescription("X", {0: "CT"}, {"background": 0}, "", ""),
            summary="", overwrite=False, num_processes=num_processes,  # type: ignore[arg-type]
        )  # fmt: skip
    assert not (tmp_path / "raw").exists()
