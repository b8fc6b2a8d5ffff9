"""MSSEG-2016 converter on synthetic data in both public layouts (15 patients, 8x16x16)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conversion_fixtures import (
    MSSEG_CONSTANTS,
    assert_geometry_close,
    geometry,
    linked_copy,
    make_msseg,
    msseg_cases,
    msseg_consensus,
    read_array,
    read_geometry,
    stems,
    write_image,
)

from dataset_conversion import msseg
from nnunet_topkdice.errors import InputError

LAYOUTS = [msseg.LAYOUT_PREPROCESSED, msseg.LAYOUT_TRAINING]


@pytest.fixture(scope="module", params=LAYOUTS, ids=["pre-processed-layout", "training-layout"])
def converted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict, Path]:
    """(layout, case id -> source files, converted dataset folder), converted with seed 0."""
    layout = request.param
    root = tmp_path_factory.mktemp("msseg_src")
    files = make_msseg(root, layout)
    return layout, files, msseg.convert(root, tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def preprocessed_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("msseg_pre")
    return root, make_msseg(root, msseg.LAYOUT_PREPROCESSED)


@pytest.fixture()
def src_copy(preprocessed_source: tuple[Path, dict], tmp_path: Path) -> tuple[Path, dict]:
    """A private copy (Pre-processed layout) that a test may damage, and its case id -> files."""
    source, files = preprocessed_source
    root = linked_copy(source, tmp_path / "src")
    return root, {case: tuple(root / p.relative_to(source) for p in paths) for case, paths in files.items()}


# ---- the split ----------------------------------------------------------------------------------------


def test_make_split_stratified_and_seeded() -> None:
    patients = msseg_cases(msseg.LAYOUT_PREPROCESSED)
    split = msseg.make_split(patients, seed=0)
    assert sorted(split["train"] + split["test"]) == sorted(patients)
    assert (len(split["train"]), len(split["test"])) == (9, 6)
    for centre in msseg.EXPECTED_CENTRES:
        assert sum(patients[c] == centre for c in split["train"]) == 3
        assert sum(patients[c] == centre for c in split["test"]) == 2
    assert msseg.make_split(dict(reversed(patients.items())), seed=0) == split  # order of input irrelevant
    assert len({tuple(msseg.make_split(patients, seed=s)["test"]) for s in range(10)}) > 1


def test_make_split_refuses_centre_too_small() -> None:
    with pytest.raises(InputError, match=r"centre 07 has 2 patient\(s\); need more than 2 to split"):
        msseg.make_split({"a": "01", "b": "01", "c": "01", "d": "07", "e": "07"}, seed=0)


# ---- a good conversion, both layouts --------------------------------------------------------------------


def test_case_lists_and_split_json(converted: tuple[str, dict, Path]) -> None:
    layout, files, folder = converted
    record = json.loads((folder / "split.json").read_text())
    expected = msseg.make_split(msseg_cases(layout), seed=0)
    assert (record["seed"], record["layout"], record["train"], record["test"]) == (
        0, layout, expected["train"], expected["test"]
    )  # fmt: skip
    assert record["centres"] == msseg_cases(layout)
    assert stems(folder / "imagesTr", "_000") == expected["train"]
    assert stems(folder / "labelsTr", ".nii.gz") == expected["train"]
    assert stems(folder / "imagesTs", "_000") == expected["test"]
    assert stems(folder / "labelsTs", ".nii.gz") == expected["test"]


def test_channel_order_labels_and_geometry(converted: tuple[str, dict, Path]) -> None:
    layout, files, folder = converted
    for index, case_id in enumerate(msseg_cases(layout)):
        subset = "Tr" if (folder / "labelsTr" / f"{case_id}.nii.gz").exists() else "Ts"
        flair = files[case_id][0]
        for channel, modality in enumerate(msseg.MODALITIES):  # 0 FLAIR, 1 T1, 2 T2, 3 DP, 4 GADO
            out = folder / f"images{subset}" / f"{case_id}_{channel:04d}.nii.gz"
            np.testing.assert_array_equal(read_array(out), MSSEG_CONSTANTS[modality])
            assert read_geometry(out) == read_geometry(flair)
        label = folder / f"labels{subset}" / f"{case_id}.nii.gz"
        assert_geometry_close(label, flair)
        out_labels = read_array(label)
        assert out_labels.dtype == np.uint8
        np.testing.assert_array_equal(out_labels, (msseg_consensus(index) > 0).astype(np.uint8))
        assert 0 < out_labels.sum() < out_labels.size


def test_dataset_json(converted: tuple[str, dict, Path]) -> None:
    data = json.loads((converted[2] / "dataset.json").read_text())
    assert data["channel_names"] == {"0": "FLAIR", "1": "T1", "2": "T2", "3": "DP", "4": "GADO"}
    assert data["labels"] == {"background": 0, "lesion": 1}
    assert (data["numTraining"], data["file_ending"], data["numTest"]) == (9, ".nii.gz", 6)


def test_main_prints_and_saves_split_from_seed(
    src_copy: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = src_copy
    assert msseg.main(["-i", str(root), "-o", str(tmp_path / "raw"), "--seed", "5", "-np", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    split = msseg.make_split(msseg_cases(msseg.LAYOUT_PREPROCESSED), seed=5)
    assert out == [
        "MSSEG-2016 split (seed 5, stratified by centre):",
        f"  train (9): {' '.join(split['train'])}",
        f"  test  (6): {' '.join(split['test'])}",
        str(tmp_path / "raw" / "Dataset203_MSSEG"),
    ]
    record = json.loads((tmp_path / "raw" / "Dataset203_MSSEG" / "split.json").read_text())
    assert (record["seed"], record["test"]) == (5, split["test"])


def test_training_folder_itself_accepted(tmp_path: Path) -> None:
    make_msseg(tmp_path / "src", msseg.LAYOUT_TRAINING)
    assert msseg.find_layout(tmp_path / "src" / "Training") == (
        msseg.LAYOUT_TRAINING,
        tmp_path / "src" / "Training",
    )


def test_training_layout_accepts_any_patient_folder_name(tmp_path: Path) -> None:
    names = ("1", "2", "10", "A12", "05-b")  # Patient_1 ... Patient_05-b in every centre
    make_msseg(tmp_path / "src", msseg.LAYOUT_TRAINING, shape=(2, 2, 2), patient_names=names)
    layout, patients = msseg.collect_patients(tmp_path / "src")
    expected = msseg_cases(msseg.LAYOUT_TRAINING, names)
    assert layout == msseg.LAYOUT_TRAINING
    assert {case_id: centre for case_id, (centre, _, _) in patients.items()} == expected
    split = msseg.make_split(expected, seed=0)  # still 3 train + 2 test per centre
    for centre in msseg.EXPECTED_CENTRES:
        assert [sum(expected[c] == centre for c in split[part]) for part in ("train", "test")] == [3, 2]


def test_training_layout_refuses_a_patient_name_unfit_for_a_case_id(tmp_path: Path) -> None:
    make_msseg(tmp_path / "src", msseg.LAYOUT_TRAINING, shape=(2, 2, 2))
    bad = tmp_path / "src" / "Training" / "Center_07" / "Patient_0 3"
    (tmp_path / "src" / "Training" / "Center_07" / "Patient_03").rename(bad)
    with pytest.raises(InputError, match=rf"cannot make a case id from the patient folder {bad}: after 'Patient_'"):
        msseg.collect_patients(tmp_path / "src")


# ---- bad input ----------------------------------------------------------------------------------------


def test_modality_geometry_mismatch_names_both_files(src_copy: tuple[Path, dict], tmp_path: Path) -> None:
    root, files = src_copy
    flair, t2 = files["07010NABO"][0], files["07010NABO"][2]
    index = list(files).index("07010NABO")
    write_image(t2, read_array(t2), {**geometry(index), "spacing": (1.0, 1.0, 1.0)})
    with pytest.raises(InputError, match=rf"geometry mismatch between {flair} and {t2}: spacing \("):
        msseg.convert(root, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_missing_modality_named(src_copy: tuple[Path, dict], tmp_path: Path) -> None:
    root, files = src_copy
    files["08027SYBR"][4].unlink()
    message = f"missing MSSEG-2016 file(s): expected {files['08027SYBR'][4]}; {WHOLE_SET}"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        msseg.convert(root, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


WHOLE_SET = "the converter needs the whole training set (15 patients, 5 in each of the centres 01, 07, 08)"


def test_wrong_patient_count_refused(src_copy: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = src_copy
    shutil.rmtree(root / "Pre-processed" / "08037ROGU")  # a partial download
    message = f"MSSEG-2016 patients under {root / 'Pre-processed'}: found centre 01: 5, centre 07: 5, centre 08: 4"
    with pytest.raises(InputError, match=f"^{re.escape(message)}; {re.escape(WHOLE_SET)}$"):
        msseg.convert(root, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_no_known_layout_named(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(InputError, match=rf"expected the folder {tmp_path / 'src' / 'Pre-processed'} or"):
        msseg.convert(tmp_path / "src", tmp_path / "raw")


def test_negative_consensus_named(src_copy: tuple[Path, dict], tmp_path: Path) -> None:
    root, files = src_copy
    consensus = files["01039VITE"][5]
    values = read_array(consensus)
    values[0, 0, 0] = -1
    write_image(consensus, values, geometry(list(files).index("01039VITE")))
    with pytest.raises(InputError, match=r"case 01039VITE: .*negative values \[-1\.0\]"):
        msseg.convert(root, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
