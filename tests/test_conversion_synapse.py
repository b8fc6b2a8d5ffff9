"""Synapse converter on a synthetic dataset in the real raw layout (30 cases of 8x16x16)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conversion_fixtures import (
    assert_geometry_close,
    geometry,
    linked_copy,
    make_synapse,
    read_array,
    stems,
    truncate,
    write_image,
)

from dataset_conversion import synapse
from nnunet_topkdice.errors import InputError


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synapse(tmp_path_factory.mktemp("synapse_src") / "RawData")


@pytest.fixture(scope="module")
def converted(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Two workers, so that the pool path is exercised; the result must not depend on it.
    return synapse.convert(source, tmp_path_factory.mktemp("raw"), num_processes=2)


@pytest.fixture()
def src_copy(source: Path, tmp_path: Path) -> Path:
    """A private copy that a test may damage."""
    return linked_copy(source, tmp_path / "RawData")


# ---- constants ----------------------------------------------------------------------------------------


def test_split_constants() -> None:
    assert len(synapse.TRAIN_CASES) == 18 and len(synapse.TEST_CASES) == 12
    numbers = sorted(int(synapse.case_number(c)) for c in synapse.TRAIN_CASES + synapse.TEST_CASES)
    assert numbers == [*range(1, 11), *range(21, 41)]
    assert synapse.TRAIN_CASES[:3] == ("case0005", "case0006", "case0007")


# ---- a good conversion ----------------------------------------------------------------------------------


def test_case_lists_equal_split(converted: Path) -> None:
    assert converted.name == "Dataset201_Synapse"
    assert sorted(p.name for p in converted.iterdir()) == [
        "dataset.json", "imagesTr", "imagesTs", "labelsTr", "labelsTs"
    ]  # fmt: skip
    assert stems(converted / "imagesTr", "_0000.nii.gz") == sorted(synapse.TRAIN_CASES)
    assert stems(converted / "labelsTr", ".nii.gz") == sorted(synapse.TRAIN_CASES)
    assert stems(converted / "imagesTs", "_0000.nii.gz") == sorted(synapse.TEST_CASES)
    assert stems(converted / "labelsTs", ".nii.gz") == sorted(synapse.TEST_CASES)


def test_labels_remapped_voxel_by_voxel(source: Path, converted: Path) -> None:
    # original 1,2,3,4 stay; 6->5, 7->6, 8->7, 11->8; 5, 9, 10, 12, 13 -> 0
    expected_lookup = np.array([0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0], np.uint8)
    for case_id in synapse.TRAIN_CASES + synapse.TEST_CASES:
        subset = "labelsTr" if case_id in synapse.TRAIN_CASES else "labelsTs"
        original = read_array(source / "Training" / "label" / f"label{synapse.case_number(case_id)}.nii.gz")
        assert set(np.unique(original).tolist()) == set(range(14))  # the fixture covers every value
        out = read_array(converted / subset / f"{case_id}.nii.gz")
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected_lookup[original])


def test_images_and_geometry_preserved(source: Path, converted: Path) -> None:
    for case_id in ("case0005", "case0040", "case0001", "case0038"):
        subset = "Tr" if case_id in synapse.TRAIN_CASES else "Ts"
        number = synapse.case_number(case_id)
        src_image = source / "Training" / "img" / f"img{number}.nii.gz"
        out_image = converted / f"images{subset}" / f"{case_id}_0000.nii.gz"
        out_label = converted / f"labels{subset}" / f"{case_id}.nii.gz"
        assert out_image.read_bytes() == src_image.read_bytes()  # copied: header and voxels untouched
        assert_geometry_close(out_label, src_image)


def test_dataset_json(converted: Path) -> None:
    data = json.loads((converted / "dataset.json").read_text())
    assert data["channel_names"] == {"0": "CT"}
    expected = [
        ("background", 0), ("spleen", 1), ("right_kidney", 2), ("left_kidney", 3), ("gallbladder", 4),
        ("liver", 5), ("stomach", 6), ("aorta", 7), ("pancreas", 8),
    ]  # fmt: skip
    assert list(data["labels"].items()) == expected  # SPEC section 4's numbering, in order
    assert data["numTraining"] == 18
    assert data["file_ending"] == ".nii.gz"
    assert data["numTest"] == 12


# ---- bad input ----------------------------------------------------------------------------------------


def test_missing_input_exits_2_and_writes_nothing(tmp_path: Path, bin_dir: Path, nnunet_env: dict) -> None:
    missing = tmp_path / "no_such_dir"
    proc = subprocess.run(
        [bin_dir / "topkdice", "convert", "synapse", "-i", missing], env=nnunet_env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert f"expected the folder {missing}" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "raw").exists()


WHOLE_SET = "the converter needs the whole training set (30 labelled cases, 0001-0010 and 0021-0040)"


def test_missing_file_named_and_nothing_written(src_copy: Path, tmp_path: Path) -> None:
    label = src_copy / "Training" / "label" / "label0027.nii.gz"
    label.unlink()
    with pytest.raises(InputError, match=rf"^missing Synapse file\(s\): expected {label}; {re.escape(WHOLE_SET)}$"):
        synapse.convert(src_copy, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_partial_download_says_the_whole_training_set_is_needed(src_copy: Path, tmp_path: Path) -> None:
    training = src_copy / "Training"
    for number in range(21, 41):  # only cases 0001-0010 were downloaded
        for path in (training / "img" / f"img{number:04d}.nii.gz", training / "label" / f"label{number:04d}.nii.gz"):
            path.unlink()
    listed = [f"img/img{n:04d}.nii.gz, label/label{n:04d}.nii.gz" for n in (22, 23, 24, 25)]  # 10 named
    message = (f"missing Synapse file(s): expected {training}/img/img0021.nii.gz and 39 more in {training}: "
               f"label/label0021.nii.gz, {', '.join(listed)}, img/img0026.nii.gz, ...; {WHOLE_SET}")  # fmt: skip
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        synapse.convert(src_copy, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_python_m_uses_nnunet_raw_and_prints_folder(source: Path, tmp_path: Path, nnunet_env: dict) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dataset_conversion.synapse",
            "-i",
            source / "Training",
            "-d",
            "7",
            "-np",
            "1",
        ],
        env=nnunet_env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    target = tmp_path / "raw" / "Dataset007_Synapse"
    assert proc.stdout.strip() == str(target)
    assert "converting Dataset007_Synapse" in proc.stderr  # the progress bar
    assert len(list((target / "imagesTr").iterdir())) == 18
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset007_Synapse"]


def test_no_output_and_no_nnunet_raw_exits_2(source: Path, nnunet_env: dict) -> None:
    env = {name: value for name, value in nnunet_env.items() if name != "nnUNet_raw"}
    proc = subprocess.run(
        [sys.executable, "-m", "dataset_conversion.synapse", "-i", source],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "pass -o/--output or set the nnUNet_raw environment variable" in proc.stderr


def test_label_geometry_mismatch_names_both_files(src_copy: Path, tmp_path: Path) -> None:
    image = src_copy / "Training" / "img" / "img0021.nii.gz"
    label = src_copy / "Training" / "label" / "label0021.nii.gz"
    shifted = {**geometry(21), "origin": (0.0, 0.0, 0.0)}
    write_image(label, read_array(label), shifted)
    with pytest.raises(InputError, match=rf"geometry mismatch between {image} and {label}: origin \("):
        synapse.convert(src_copy, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_unexpected_label_values_name_case(src_copy: Path, tmp_path: Path) -> None:
    label = src_copy / "Training" / "label" / "label0024.nii.gz"
    labels = read_array(label)
    labels[0, 0, :3] = [14, 20, 14]
    write_image(label, labels, geometry(24))
    with pytest.raises(InputError, match=r"case case0024: .*unexpected label values \[14, 20\]"):
        synapse.convert(src_copy, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("num_processes", [1, 2], ids=["serial", "pool"])
def test_corrupt_file_halfway_leaves_nothing(src_copy: Path, tmp_path: Path, num_processes: int) -> None:
    raw_root = tmp_path / "raw"
    (raw_root / "Dataset999_Other").mkdir(parents=True)  # an unrelated dataset must survive
    corrupt = src_copy / "Training" / "img" / "img0030.nii.gz"
    truncate(corrupt, 200)  # a truncated download
    with pytest.raises(InputError, match=rf"cannot read {corrupt}"):
        synapse.convert(src_copy, raw_root, num_processes=num_processes)
    assert [p.name for p in raw_root.iterdir()] == ["Dataset999_Other"]


def test_existing_target_refused_then_overwritten(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "Dataset201_Synapse"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match=rf"^{target} already exists; pass overwrite=True to replace it$"):
        synapse.convert(source, tmp_path)  # the Python API names its own spelling
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert synapse.convert(source, tmp_path, overwrite=True) == target
    assert not (target / "keep.txt").exists()
    assert (target / "dataset.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset201_Synapse"]


def test_cli_refuses_existing_target_with_exit_2(source: Path, tmp_path: Path, bin_dir: Path) -> None:
    (tmp_path / "raw" / "Dataset201_Synapse").mkdir(parents=True)
    proc = subprocess.run(
        [bin_dir / "topkdice", "convert", "synapse", "-i", source, "-o", tmp_path / "raw"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    target = tmp_path / "raw" / "Dataset201_Synapse"
    # the command line names only its flag, not the Python API's overwrite=True
    last_line = proc.stderr.splitlines()[-1]
    assert last_line == f"topkdice convert: error: {target} already exists; pass --overwrite to replace it"
    assert list(target.iterdir()) == []


# ---- nnU-Net accepts the result -----------------------------------------------------------------------


@pytest.mark.slow
def test_nnunet_plan_and_preprocess_accepts_result(
    source: Path, tmp_path: Path, bin_dir: Path, nnunet_env: dict
) -> None:
    synapse.convert(source, tmp_path / "raw")
    proc = subprocess.run(
        [
            bin_dir / "nnUNetv2_plan_and_preprocess",
            "-d",
            "201",
            "-c",
            "2d",
            "--verify_dataset_integrity",
            "-np",
            "1",
            "-npfp",  # fingerprint and integrity check: one worker process, not 8 (each imports nnU-Net)
            "1",
        ],
        env=nnunet_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "verify_dataset_integrity Done" in proc.stdout
    preprocessed = tmp_path / "preprocessed" / "Dataset201_Synapse"
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    assert "2d" in plans["configurations"]
    assert len(list((preprocessed / "nnUNetPlans_2d").glob("*.pkl"))) == 18
