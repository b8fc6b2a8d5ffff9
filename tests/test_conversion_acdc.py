"""ACDC converter on a synthetic dataset in the real raw layout (100 patients, 4x12x12 frames)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conversion_fixtures import (
    acdc_case_ids,
    acdc_frames,
    assert_geometry_close,
    geometry,
    linked_copy,
    make_acdc,
    read_array,
    read_geometry,
    stems,
    write_image,
)

from dataset_conversion import acdc
from nnunet_topkdice.cli import main as topkdice_main
from nnunet_topkdice.errors import InputError


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_acdc(tmp_path_factory.mktemp("acdc_src") / "database")


@pytest.fixture(scope="module")
def roots(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("nnunet")
    acdc.convert(source, base / "raw", preprocessed_root=base / "preprocessed")
    return base / "raw" / "Dataset202_ACDC", base / "preprocessed" / "Dataset202_ACDC"


@pytest.fixture()
def src_copy(source: Path, tmp_path: Path) -> Path:
    return linked_copy(source, tmp_path / "database")



def test_split_constants() -> None:
    assert (len(acdc.TRAIN_PATIENTS), len(acdc.VAL_PATIENTS), len(acdc.TEST_PATIENTS)) == (70, 10, 20)
    everything = acdc.TRAIN_PATIENTS + acdc.VAL_PATIENTS + acdc.TEST_PATIENTS
    assert sorted(everything) == [f"patient{n:03d}" for n in range(1, 101)]
    assert acdc.VAL_PATIENTS[0] == "patient019" and acdc.TEST_PATIENTS[-1] == "patient095"


@pytest.mark.parametrize(
    ("patient", "frame", "case_id"),
    [("patient001", 1, "patient001_frame01"), ("patient100", 12, "patient100_frame12")],
    ids=["one-digit", "two-digit"],
)
def test_frame_case_id_zero_pads(patient: str, frame: int, case_id: str) -> None:
    assert acdc.frame_case_id(patient, frame) == case_id
    assert acdc.patient_of(case_id) == patient


def test_case_lists_equal_split(roots: tuple[Path, Path]) -> None:
    raw, _ = roots
    train_val = acdc_case_ids(acdc.TRAIN_PATIENTS + acdc.VAL_PATIENTS)
    test = acdc_case_ids(acdc.TEST_PATIENTS)
    assert len(train_val) == 160 and len(test) == 40
    assert stems(raw / "imagesTr", "_0000.nii.gz") == train_val
    assert stems(raw / "labelsTr", ".nii.gz") == train_val
    assert stems(raw / "imagesTs", "_0000.nii.gz") == test
    assert stems(raw / "labelsTs", ".nii.gz") == test
    # The fixture's unreferenced frame 05 must not be converted.
    assert not any("frame05" in p.name for p in raw.rglob("*.nii.gz"))


def test_splits_final_is_papers_train_val(roots: tuple[Path, Path]) -> None:
    raw, preprocessed = roots
    splits = json.loads((raw / "splits_final.json").read_text())
    assert json.loads((preprocessed / "splits_final.json").read_text()) == splits
    assert [p.name for p in preprocessed.iterdir()] == ["splits_final.json"]
    assert len(splits) == 1 and set(splits[0]) == {"train", "val"}
    assert len(splits) == acdc.PAPER.split_folds  # the registry's count, which reproduce checks --fold against
    # Both frames of every train (val) patient in train (val), test patients on neither side.
    assert splits[0]["train"] == acdc_case_ids(acdc.TRAIN_PATIENTS)
    assert splits[0]["val"] == acdc_case_ids(acdc.VAL_PATIENTS)


def test_labels_images_and_geometry_preserved(source: Path, roots: tuple[Path, Path]) -> None:
    raw, _ = roots
    for number in (1, 19, 2, 100):
        patient = f"patient{number:03d}"
        subset = "Ts" if patient in acdc.TEST_PATIENTS else "Tr"
        for frame in acdc_frames(number):
            case_id = acdc.frame_case_id(patient, frame)
            src_image = source / "training" / patient / f"{case_id}.nii.gz"
            src_label = source / "training" / patient / f"{case_id}_gt.nii.gz"
            out_image = raw / f"images{subset}" / f"{case_id}_0000.nii.gz"
            out_label = raw / f"labels{subset}" / f"{case_id}.nii.gz"
            assert read_geometry(out_image) == read_geometry(src_image)
            assert_geometry_close(out_label, src_image)
            np.testing.assert_array_equal(read_array(out_image), read_array(src_image))
            labels = read_array(out_label)
            assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) == {0, 1, 2, 3}
            np.testing.assert_array_equal(labels, read_array(src_label))


def test_dataset_json(roots: tuple[Path, Path]) -> None:
    data = json.loads((roots[0] / "dataset.json").read_text())
    assert data["channel_names"] == {"0": "cineMRI"}
    assert list(data["labels"].items()) == [("background", 0), ("RV", 1), ("MYO", 2), ("LV", 3)]
    assert (data["numTraining"], data["file_ending"], data["numTest"]) == (160, ".nii.gz", 40)


def test_main_writes_splits_to_nnunet_preprocessed(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert acdc.main(["-i", str(source), "-d", "302", "-np", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "raw" / "Dataset302_ACDC")
    assert (tmp_path / "pre" / "Dataset302_ACDC" / "splits_final.json").read_text() == (
        tmp_path / "raw" / "Dataset302_ACDC" / "splits_final.json"
    ).read_text()


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ("ED: 1\nGroup: DCM\n", r"has no 'ES: <frame>' line"),
        ("ED: 1\nES: twelve\n", r"ES must be a positive frame number, got 'twelve'"),
        ("ED: 0\nES: 4\n", r"ED must be a positive frame number, got '0'"),
        ("ED: 3\nES: 3.0\n", r"ED and ES name the same frame 3"),
    ],
    ids=["no-es", "not-a-number", "zero", "same-frame"],
)
def test_bad_info_cfg_named(tmp_path: Path, info: str, message: str) -> None:
    path = tmp_path / "Info.cfg"
    path.write_text(info)
    with pytest.raises(InputError, match=rf"{path}.*{message}"):
        acdc.parse_info_cfg(path)


def test_info_cfg_parsed(tmp_path: Path) -> None:
    # Real files have more keys; a whole-valued float is accepted.
    path = tmp_path / "Info.cfg"
    path.write_text("ED: 1\nES: 12.0\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    assert acdc.parse_info_cfg(path) == (1, 12)


@pytest.mark.parametrize(
    ("relative", "what"),
    [
        ("training/patient042/Info.cfg", "ACDC Info.cfg"),
        ("training/patient042/patient042_frame01_gt.nii.gz", "ACDC ground truth of patient042_frame01"),
    ],
    ids=["info-cfg", "ground-truth"],
)
def test_missing_input_named_and_nothing_written(
    src_copy: Path, tmp_path: Path, relative: str, what: str
) -> None:
    path = src_copy / relative
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(InputError, match=rf"missing {what}: expected the (file|folder) {path}$"):
        acdc.convert(src_copy, tmp_path / "raw", preprocessed_root=tmp_path / "pre")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "pre").exists()


WHOLE_SET = "the converter needs the whole training set (100 patients, patient001 to patient100)"


@pytest.mark.parametrize(
    ("kept", "expected"),
    [
        (range(1, 6), "patient006 and 94 more in {training}: patient007, patient008, patient009, patient010, "
         "patient011, patient012, patient013, patient014, patient015, patient016, ..."),
        ([n for n in range(1, 101) if n != 77], "patient077"),
    ],
    ids=["first-5-patients", "one-patient-missing"],
)  # fmt: skip
def test_partial_download_says_the_whole_training_set_is_needed(
    src_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    kept: range | list[int], expected: str,
) -> None:  # fmt: skip
    training = src_copy / "training"
    for number in set(range(1, 101)) - set(kept):
        shutil.rmtree(training / f"patient{number:03d}")
    message = f"missing ACDC patient folder(s): expected {training}/{expected.format(training=training)}; {WHOLE_SET}"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        acdc.convert(src_copy, tmp_path / "raw", preprocessed_root=tmp_path / "pre")
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert topkdice_main(["convert", "acdc", "-i", str(src_copy), "-o", str(tmp_path / "raw")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"topkdice convert: error: {message}"
    assert not (tmp_path / "raw").exists() and not (tmp_path / "pre").exists()


def test_unexpected_label_value_named(src_copy: Path, tmp_path: Path) -> None:
    label = src_copy / "training" / "patient050" / "patient050_frame01_gt.nii.gz"
    labels = read_array(label)
    labels[0, 0, 0] = 4
    write_image(label, labels, geometry(50 % 20))
    with pytest.raises(InputError, match=r"case patient050_frame01: .*unexpected label values \[4\]"):
        acdc.convert(src_copy, tmp_path / "raw", preprocessed_root=tmp_path / "pre")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "pre").exists()


def test_different_preprocessed_split_refused_without_overwrite(source: Path, tmp_path: Path) -> None:
    splits = tmp_path / "pre" / "Dataset202_ACDC" / "splits_final.json"
    splits.parent.mkdir(parents=True)
    splits.write_text(json.dumps([{"train": ["patient001_frame01"], "val": ["patient019_frame01"]}]))
    refused = rf"^{splits} exists with a different split; pass overwrite=True to replace it$"  # the API's spelling
    with pytest.raises(InputError, match=refused):
        acdc.convert(source, tmp_path / "raw", preprocessed_root=tmp_path / "pre")
    assert not (tmp_path / "raw").exists()
    acdc.convert(source, tmp_path / "raw", preprocessed_root=tmp_path / "pre", overwrite=True)
    assert json.loads(splits.read_text())[0]["val"] == acdc_case_ids(acdc.VAL_PATIENTS)


def test_command_line_names_only_its_overwrite_flag(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    splits = tmp_path / "pre" / "Dataset202_ACDC" / "splits_final.json"
    splits.parent.mkdir(parents=True)
    splits.write_text(json.dumps([{"train": ["patient001_frame01"], "val": ["patient019_frame01"]}]))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert acdc.main(["-i", str(source), "-o", str(tmp_path / "raw")]) == 2  # python -m dataset_conversion.acdc
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"acdc: error: {splits} exists with a different split; pass --overwrite to replace it"
    )
    (tmp_path / "raw" / "Dataset202_ACDC").mkdir(parents=True)
    assert topkdice_main(["convert", "acdc", "-i", str(source), "-o", str(tmp_path / "raw")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"topkdice convert: error: {tmp_path / 'raw' / 'Dataset202_ACDC'} already exists; pass --overwrite to "
        "replace it"
    )
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["Dataset202_ACDC"]


def test_training_folder_itself_accepted(source: Path) -> None:
    assert acdc.find_training_folder(source) == source / "training"
    assert acdc.find_training_folder(source / "training") == source / "training"
