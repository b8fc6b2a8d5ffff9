"""evaluate_runs on tiny label files with hand-computed results, its outputs and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.evaluation import evaluate_runs
from nnunet_topkdice.evaluation.evaluate import resolve_dataset
from nnunet_topkdice.evaluation.paper import PAPER_TABLES

SPACING_XYZ = (0.5, 1.0, 3.0)  # SimpleITK order; arrays are (z, y, x) so x steps are 0.5 mm
DATASET = {"labels": {"background": 0, "liver": 1, "tumour": 2}, "file_ending": ".nii.gz", "name": "Tiny"}

# Two cases of shape (z, y, x) = (1, 2, 6); every voxel is a surface voxel (z has one slice).
REFERENCE = {
    "caseA": [[[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]]],  # tumour absent
    "caseB": [[[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 2, 2]]],
}
GOOD = {
    # liver: tp 3, fn 1 -> Dice 6/7, IoU 3/4, Prec 1, Rec 3/4; HD95: P95 of (0, 0, 0, 0.5 mm) = 0.425
    # tumour: absent from reference and prediction -> NaN, left out
    "caseA": [[[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]],
    # liver perfect; tumour tp 1, fn 1 -> Dice 2/3, IoU 1/2, Prec 1, Rec 1/2; HD95 P95 of (0, 0.5) = 0.475
    "caseB": [[[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 2, 0]]],
}
EMPTY = {case: [[[0] * 6, [0] * 6]] for case in REFERENCE}
# Paper averaging by hand: liver over 2 cases, tumour over 1 case, then the mean of the two classes.
GOOD_MEANS = {
    "Dice": ((6 / 7 + 1) / 2 + 2 / 3) / 2,
    "IoU": ((3 / 4 + 1) / 2 + 1 / 2) / 2,
    "Precision": 1.0,
    "Recall": ((3 / 4 + 1) / 2 + 1 / 2) / 2,
    "HD95": ((0.425 + 0.0) / 2 + 0.475) / 2,
    # every surface distance is 0 or 0.5 mm, within the default 1 mm tolerance
    "NSD": 1.0,
}


def _write(
    path: Path,
    array,
    spacing: tuple[float, ...] = SPACING_XYZ,
    origin: tuple[float, ...] | None = None,
    direction: tuple[float, ...] | None = None,
) -> None:
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.uint8))
    image.SetSpacing(spacing)
    if origin is not None:
        image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


def _folder(root: Path, name: str, cases: dict, **kwargs) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for case, array in cases.items():
        _write(folder / f"{case}.nii.gz", array, **kwargs)
    return folder


@pytest.fixture
def tiny(tmp_path: Path) -> dict:
    """Reference labels, three prediction folders (with nnUNetv2_predict's extra files) and a dataset.json."""
    dataset_json = tmp_path / "Dataset999_Tiny" / "dataset.json"
    dataset_json.parent.mkdir()
    dataset_json.write_text(json.dumps(DATASET))
    reference = _folder(tmp_path, "labelsTs", REFERENCE)
    good = _folder(tmp_path, "good", GOOD)
    for extra in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):
        (good / extra).write_text("{}")
    np.savez_compressed(good / "caseA.npz", probabilities=np.zeros((3, 1, 2, 6)))
    (good / "caseA.pkl").write_bytes(b"")
    return {
        "root": tmp_path,
        "dataset_json": dataset_json,
        "reference": reference,
        "runs": {
            "good": good,
            "perfect": _folder(tmp_path, "perfect", REFERENCE),
            "empty": _folder(tmp_path, "empty", EMPTY),
        },
    }


def _evaluate(tiny: dict, **kwargs) -> dict:
    return evaluate_runs(
        tiny["reference"], tiny["runs"], tiny["dataset_json"], tiny["root"] / "out", **kwargs
    )


def test_evaluate_runs_matches_hand_computation(tiny: dict) -> None:
    results = _evaluate(tiny)
    good = results["runs"]["good"]
    for metric, expected in GOOD_MEANS.items():
        assert good["mean"][metric] == pytest.approx(expected), metric
    assert good["per_class"]["liver"]["Dice"] == pytest.approx(13 / 14)
    assert good["per_class"]["tumour"]["HD95"] == pytest.approx(0.475)
    assert good["n_cases_per_class"]["tumour"]["Dice"] == 1
    assert good["per_case"]["caseA"]["tumour"]["Dice"] is None  # NaN written as null
    assert good["per_case"]["caseA"]["liver"]["HD95"] == pytest.approx(0.425)
    assert good["per_case"]["caseA"]["liver"]["n_reference"] == 4
    assert results["runs"]["perfect"]["mean"] == {
        "Dice": 1.0,
        "IoU": 1.0,
        "Precision": 1.0,
        "Recall": 1.0,
        "HD95": 0.0,
        "NSD": 1.0,
    }
    empty = results["runs"]["empty"]
    assert empty["mean"]["Dice"] == 0.0 and empty["mean"]["Recall"] == 0.0 and empty["mean"]["NSD"] == 0.0
    assert empty["mean"]["Precision"] is None
    # a missed class gets the image diagonal: extent (z, y, x) = (1 * 3.0, 2 * 1.0, 6 * 0.5) mm
    assert empty["mean"]["HD95"] == pytest.approx(math.sqrt(3.0**2 + 2.0**2 + 3.0**2))
    assert empty["n_hd95_one_empty"] == 3  # liver in both cases, tumour in case B
    assert results["hd95_missing"] == "diagonal"
    assert results["cases"] == ["caseA", "caseB"]
    assert [c["column"] for c in results["classes"]] == ["liver", "tumour"]
    assert results["dataset"]["name"] == "Dataset999_Tiny"
    assert results["paper"] is None
    assert results["nsd_tolerance_mm"] == 1.0 and results["metrics"][-2:] == ["HD95", "NSD"]


def test_nsd_tolerance_below_the_half_millimetre_steps(tiny: dict) -> None:
    # at 0.25 mm only the distance-0 surface voxels count: caseA liver 3 of 3 + 3 of 4 = 6/7, caseB tumour
    # 1 of 1 + 1 of 2 = 2/3, caseB liver 1 (the same numbers as Dice here)
    results = _evaluate(tiny, nsd_tolerance=0.25)
    good = results["runs"]["good"]
    assert good["per_case"]["caseA"]["liver"]["NSD"] == pytest.approx(6 / 7)
    assert good["per_case"]["caseB"]["tumour"]["NSD"] == pytest.approx(2 / 3)
    assert good["per_case"]["caseA"]["tumour"]["NSD"] is None  # absent from both
    assert good["mean"]["NSD"] == pytest.approx(((6 / 7 + 1) / 2 + 2 / 3) / 2)
    assert results["nsd_tolerance_mm"] == 0.25
    assert "mNSD: normalised surface Dice at 0.25 mm" in (tiny["root"] / "out" / "table.md").read_text()


def test_results_json_is_strict_json_equal_to_the_return_value(tiny: dict) -> None:
    results = _evaluate(tiny)
    text = (tiny["root"] / "out" / "results.json").read_text()

    def reject(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    assert json.loads(text, parse_constant=reject) == results


def test_table_markdown_content(tiny: dict) -> None:
    _evaluate(tiny)
    lines = (tiny["root"] / "out" / "table.md").read_text().splitlines()
    assert lines[0] == "## Paper-style evaluation: Dataset999_Tiny (2 test cases)"
    assert "| Source | Name | mDice | mIoU | mPrec. | mRec. | mHD95 (mm) | mNSD | liver | tumour |" in lines
    rows = [line for line in lines if line.startswith("| evaluated")]
    # three runs: best bold, second best italic; mHD95 lower is better; n/a is never ranked;
    # good and perfect tie at 100.00 mPrec. and mNSD, so neither is best there
    assert rows == [
        "| evaluated | good | _79.76_ | _68.75_ | 100.00 | _68.75_ | _0.34_ | 100.00 | _92.86_ | _66.67_ |",
        "| evaluated | perfect | **100.00** | **100.00** | 100.00 | **100.00** | **0.00** | 100.00 | **100.00** "
        "| **100.00** |",
        "| evaluated | empty | 0.00 | 0.00 | n/a | 0.00 | 4.69 | 0.00 | 0.00 | 0.00 |",
    ]
    assert any("HD95 is the image diagonal (--hd95-missing diagonal)" in line for line in lines)
    assert any("class-case pairs per method, all repeats: empty: 3" in line for line in lines)


def test_table_csv_content(tiny: dict) -> None:
    _evaluate(tiny)
    assert (tiny["root"] / "out" / "table.csv").read_text().splitlines() == [
        "source,name,mDice,mIoU,mPrec.,mRec.,mHD95 (mm),mNSD,liver,tumour",
        "evaluated,good,79.76,68.75,100.00,68.75,0.34,100.00,92.86,66.67",
        "evaluated,perfect,100.00,100.00,100.00,100.00,0.00,100.00,100.00,100.00",
        "evaluated,empty,0.00,0.00,,0.00,4.69,0.00,0.00,0.00",
    ]


def test_figure_png_is_written(tiny: dict) -> None:
    import matplotlib.image

    _evaluate(tiny)
    png = tiny["root"] / "out" / "figure.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > 600 and height > 300


def test_parallel_evaluation_gives_the_same_results(tiny: dict) -> None:
    serial = _evaluate(tiny)
    parallel = evaluate_runs(
        tiny["reference"], tiny["runs"], tiny["dataset_json"], tiny["root"] / "p", num_processes=2
    )
    assert parallel["runs"] == serial["runs"]


def _remove(tiny: dict) -> None:
    (tiny["runs"]["good"] / "caseB.nii.gz").unlink()


def _add_extra(tiny: dict) -> None:
    _write(tiny["runs"]["good"] / "caseC.nii.gz", GOOD["caseA"])


def _wrong_shape(tiny: dict) -> None:
    _write(tiny["runs"]["good"] / "caseB.nii.gz", [[[0] * 5, [0] * 5]])


def _wrong_spacing(tiny: dict) -> None:
    _write(tiny["runs"]["good"] / "caseB.nii.gz", GOOD["caseB"], spacing=(0.5, 1.0, 5.0))


def _wrong_origin(tiny: dict) -> None:
    _write(tiny["runs"]["good"] / "caseB.nii.gz", GOOD["caseB"], origin=(0.0, 2.0, 0.0))


def _wrong_direction(tiny: dict) -> None:
    flipped_y = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    _write(tiny["runs"]["good"] / "caseB.nii.gz", GOOD["caseB"], direction=flipped_y)


def _bad_prediction_label(tiny: dict) -> None:
    _write(tiny["runs"]["good"] / "caseB.nii.gz", [[[1, 1, 0, 0, 0, 7], [0] * 6]])


def _bad_reference_label(tiny: dict) -> None:
    _write(tiny["reference"] / "caseA.nii.gz", [[[1, 3, 0, 0, 0, 0], [0] * 6]])


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (_remove, r"run 'good' .* no prediction for 1 reference case\(s\): caseB"),
        (_add_extra, r"run 'good' .* 1 case\(s\) not in the reference folder: caseC"),
        (_wrong_shape, r"shape mismatch for case 'caseB'.*\(1, 2, 5\).*\(1, 2, 6\)"),
        (
            _wrong_spacing,
            r"geometry mismatch for case 'caseB': prediction .*good/caseB.* vs reference .*labelsTs/caseB.*: "
            r"spacing \(z, y, x\) \(5, 1, 0\.5\) vs \(3, 1, 0\.5\) \(the same",
        ),
        (_wrong_origin, r"geometry mismatch for case 'caseB'.*: origin \(x, y, z\) \(0, 2, 0\) vs \(0, 0, 0\) \("),
        (
            _wrong_direction,
            r"geometry mismatch for case 'caseB'.*: direction \(row-major\) \(1, 0, 0, 0, -1, 0, 0, 0, 1\) vs "
            r"\(1, 0, 0, 0, 1, 0, 0, 0, 1\)",
        ),
        (
            _bad_prediction_label,
            r"good/caseB\.nii\.gz contains label value\(s\) \[7\] that are not in the dataset",
        ),
        (_bad_reference_label, r"labelsTs/caseA\.nii\.gz contains label value\(s\) \[3\]"),
    ],
    ids=[
        "missing-case",
        "extra-case",
        "shape",
        "spacing",
        "origin",
        "direction",
        "prediction-label",
        "reference-label",
    ],
)
def test_input_errors_name_the_problem(tiny: dict, break_it, message: str) -> None:
    break_it(tiny)
    with pytest.raises(InputError, match=message):
        _evaluate(tiny)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"runs": {}}, "no prediction folder given"),
        ({"runs": {"x": Path("/nonexistent/preds")}}, "prediction folder of run 'x' not found"),
        ({"reference": Path("/nonexistent/labels")}, "folder not found: /nonexistent/labels"),
        ({"dataset": Path("/nonexistent/dataset.json")}, "dataset.json not found"),
        ({"dataset": {"labels": {"background": 0}}}, "defines no foreground label"),
        ({"num_processes": 0}, "num_processes must be a positive integer"),
        (
            {"paper": "acdc"},
            r"--paper acdc: the dataset's labels \['liver', 'tumour'\] do not match .*RV, MYO, LV",
        ),
        ({"paper": "brats"}, "paper must be one of"),
    ],
    ids=[
        "no-runs",
        "missing-prediction-dir",
        "missing-reference",
        "missing-json",
        "no-labels",
        "processes",
        "paper-acdc",
        "paper-unknown",
    ],
)
def test_argument_errors(tiny: dict, change: dict, message: str) -> None:
    args = {"reference": tiny["reference"], "runs": tiny["runs"], "dataset": tiny["dataset_json"]}
    kwargs = {}
    for key, value in change.items():
        (kwargs if key in ("num_processes", "paper") else args)[key] = value
    with pytest.raises(InputError, match=message):
        evaluate_runs(args["reference"], args["runs"], args["dataset"], tiny["root"] / "out", **kwargs)


def test_empty_reference_folder_and_images_folder_hint(tiny: dict) -> None:
    empty = tiny["root"] / "nothing"
    empty.mkdir()
    with pytest.raises(InputError, match=r"no '\*\.nii\.gz' files in .*nothing"):
        evaluate_runs(empty, tiny["runs"], tiny["dataset_json"], tiny["root"] / "out")
    images = _folder(
        tiny["root"], "imagesTs", {"caseA_0000": REFERENCE["caseA"], "caseB_0000": REFERENCE["caseB"]}
    )
    with pytest.raises(InputError, match="looks like imagesTs; pass labelsTs"):
        evaluate_runs(images, tiny["runs"], tiny["dataset_json"], tiny["root"] / "out")


@pytest.mark.parametrize("how", ["id-int", "id-str", "name", "folder", "dict"])
def test_dataset_resolution(tiny: dict, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    monkeypatch.setenv("nnUNet_raw", str(tiny["root"]))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    dataset = {
        "id-int": 999,
        "id-str": "999",
        "name": "Dataset999_Tiny",
        "folder": tiny["dataset_json"].parent,
        "dict": DATASET,
    }[how]
    info = resolve_dataset(dataset)
    assert info.classes == {"liver": 1, "tumour": 2}
    assert info.file_ending == ".nii.gz"


def test_dataset_id_without_nnunet_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(InputError, match="nnUNet_raw is not set"):
        resolve_dataset(201)


def test_dataset_id_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    with pytest.raises(InputError, match="dataset 777: Could not find a dataset with the ID 777"):
        resolve_dataset(777)


def test_ignore_label_from_dataset_json(tmp_path: Path) -> None:
    dataset = {"labels": {"background": 0, "a": 1, "ignore": 4}, "file_ending": ".nii.gz"}
    reference = _folder(tmp_path, "ref", {"c": [[[1, 1, 0, 4, 4, 4]]]})
    prediction = _folder(tmp_path, "pred", {"c": [[[1, 0, 0, 1, 1, 1]]]})  # ignore region predicted as "a"
    results = evaluate_runs(reference, {"p": prediction}, dataset, tmp_path / "out")
    assert results["runs"]["p"]["per_case"]["c"]["a"]["Dice"] == pytest.approx(2 / 3)
    assert results["runs"]["p"]["per_case"]["c"]["a"]["Precision"] == pytest.approx(1.0)
    assert results["baseline"] == "p" and results["comparisons"] == []  # one method: nothing to compare
    assert "Paired comparison" not in (tmp_path / "out" / "table.md").read_text()


SYNAPSE_LABELS = (
    "spleen",
    "right_kidney",
    "left_kidney",
    "gallbladder",
    "liver",
    "stomach",
    "aorta",
    "pancreas",
)


@pytest.fixture
def synapse_like(tmp_path: Path) -> dict:
    """8 organs with the converter's label names, one voxel column each; prediction = reference."""
    dataset = {
        "labels": {"background": 0, **{n: i + 1 for i, n in enumerate(SYNAPSE_LABELS)}},
        "file_ending": ".nii.gz",
    }
    label = [[[0, *range(1, 9), 0]]]  # (1, 1, 10)
    reference = _folder(tmp_path, "ref", {"case0001": label})
    prediction = _folder(tmp_path, "pred", {"case0001": label})
    return {"root": tmp_path, "dataset": dataset, "reference": reference, "prediction": prediction}


@pytest.mark.parametrize("paper", [None, "synapse"], ids=["auto", "paper"])
def test_synapse_columns_in_paper_order(synapse_like: dict, paper: str | None) -> None:
    results = evaluate_runs(
        synapse_like["reference"],
        {"CE+TopKDice": synapse_like["prediction"]},
        synapse_like["dataset"],
        synapse_like["root"] / "out",
        paper=paper,
    )
    columns = [
        "Aorta",
        "Gallbladder",
        "Kidney left",
        "Kidney right",
        "Liver",
        "Pancreas",
        "Spleen",
        "Stomach",
    ]
    assert [c["column"] for c in results["classes"]] == columns
    assert [c["name"] for c in results["classes"]][:4] == [
        "aorta",
        "gallbladder",
        "left_kidney",
        "right_kidney",
    ]
    header = (synapse_like["root"] / "out" / "table.csv").read_text().splitlines()[0]
    assert header == "source,name,mDice,mIoU,mPrec.,mRec.,mHD95 (mm),mNSD," + ",".join(columns)


def test_paper_rows_and_differences_synapse(synapse_like: dict) -> None:
    results = evaluate_runs(
        synapse_like["reference"],
        {"perfect": synapse_like["prediction"]},
        synapse_like["dataset"],
        synapse_like["root"] / "out",
        paper="synapse",
    )
    assert results["paper"]["table"] == 1
    assert results["paper"]["reported"]["CE + topK-Dice (our)"]["mDice"] == pytest.approx(0.8273)
    csv_lines = (synapse_like["root"] / "out" / "table.csv").read_text().splitlines()
    assert (
        "paper (reported),CE + Dice [Table 1],81.75,72.74,,,,,91.79,60.48,85.54,83.67,95.49,68.08,89.79,79.19"
        in csv_lines
    )
    # a perfect run is 100 everywhere: difference = 100 - reported
    assert (
        "difference to paper,perfect vs. CE + topK-Dice (our),+17.27,+25.93,,,,,"
        "+8.15,+38.84,+11.22,+15.28,+4.66,+31.25,+7.96,+20.82" in csv_lines
    )
    markdown = (synapse_like["root"] / "out" / "table.md").read_text()
    assert "not computed here" in markdown and "Table 1" in markdown
    # the paper's own marks: CE + topK-Dice best mDice, topK + Dice second
    assert "| paper (reported) | CE + topK-Dice (our) [Table 1] | **82.73** | **74.07** |" in markdown
    assert "| paper (reported) | topK + Dice [Table 1] | _81.87_ | _73.00_ |" in markdown


def test_paper_rows_msseg_single_class(tmp_path: Path) -> None:
    dataset = {"labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz"}
    reference = _folder(tmp_path, "ref", {"p1": [[[1, 1, 1, 1, 0, 0]]], "p2": [[[0, 0, 1, 1, 0, 0]]]})
    # p1: tp 2, fn 2 -> Dice 2/3, Prec 1, Rec 1/2; p2: tp 2, fp 2 -> Dice 2/3, Prec 1/2, Rec 1
    prediction = _folder(tmp_path, "pred", {"p1": [[[1, 1, 0, 0, 0, 0]]], "p2": [[[1, 1, 1, 1, 0, 0]]]})
    results = evaluate_runs(reference, {"run": prediction}, dataset, tmp_path / "out", paper="msseg")
    assert results["runs"]["run"]["mean"]["Precision"] == pytest.approx(0.75)
    lines = (tmp_path / "out" / "table.csv").read_text().splitlines()
    assert lines[0] == "source,name,mDice,mIoU,mPrec.,mRec.,mHD95 (mm),mNSD"  # no per-class column for one class
    assert lines[1].startswith("evaluated,run,66.67,50.00,75.00,75.00,")
    assert lines[-1] == "difference to paper,run vs. CE + topK-Dice (our),-0.52,-1.10,+3.31,+8.97,,"
    assert len([line for line in lines if line.startswith("paper (reported)")]) == len(
        PAPER_TABLES["msseg"].rows
    )


def test_json_nan_is_null_not_nan(tiny: dict) -> None:
    results = _evaluate(tiny)
    assert not any(isinstance(v, float) and math.isnan(v) for v in results["runs"]["empty"]["mean"].values())


def test_hd95_exclude_policy_leaves_a_miss_out(tiny: dict) -> None:
    results = _evaluate(tiny, hd95_missing="exclude")
    assert results["hd95_missing"] == "exclude"
    assert results["runs"]["empty"]["mean"]["HD95"] is None
    assert results["runs"]["empty"]["n_hd95_one_empty"] == 3
    assert results["runs"]["good"]["mean"]["HD95"] == pytest.approx(GOOD_MEANS["HD95"])  # not affected
    markdown = (tiny["root"] / "out" / "table.md").read_text()
    assert "HD95 is undefined and left out (--hd95-missing exclude)" in markdown


def test_hd95_diagonal_policy_scores_a_false_positive_too(tmp_path: Path) -> None:
    # the class only in the prediction: as bad as a miss, the image diagonal
    dataset = {"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}
    reference = _folder(tmp_path, "ref", {"c": [[[0, 0, 0, 0]]]})
    prediction = _folder(tmp_path, "pred", {"c": [[[0, 1, 0, 0]]]})
    results = evaluate_runs(reference, {"p": prediction}, dataset, tmp_path / "out")
    # extent (z, y, x) = (1 * 3.0, 1 * 1.0, 4 * 0.5) mm
    assert results["runs"]["p"]["per_case"]["c"]["a"]["HD95"] == pytest.approx(math.sqrt(9 + 1 + 4))


COMPARISON_KEYS = {
    "method",
    "baseline",
    "metric",
    "n_repeats",
    "n_baseline_repeats",
    "n_paired_repeats",
    "n_cases",
    "n_cases_dropped",
    "mean_difference",
    "per_repeat_differences",
    "per_repeat_ci95",
    "repeats_better",
    "ci95",
    "p_value",
    "df",
    "variance_rule",
    "mean_squares",
    "p_holm",
    "verdict",
    "these_models",
    "repeats_needed",
    "notes",
    "n_boot",
    "seed",
    "per_class",
}


def test_repeats_baseline_and_comparisons(tiny: dict) -> None:
    from scipy import stats

    runs = [("A", tiny["runs"]["good"]), ("B", tiny["runs"]["empty"]), ("A", tiny["runs"]["perfect"])]
    results = evaluate_runs(tiny["reference"], runs, tiny["dataset_json"], tiny["root"] / "out", baseline="B")
    assert list(results["runs"]) == ["A", "B"]  # order of first appearance
    a = results["runs"]["A"]
    assert a["n_repeats"] == 2 and a["prediction_dir"] is None
    assert a["prediction_dirs"] == [str(tiny["runs"]["good"].resolve()), str(tiny["runs"]["perfect"].resolve())]
    assert [r["prediction_dir"] for r in a["repeats"]] == a["prediction_dirs"]
    assert a["mean"]["Dice"] == pytest.approx((GOOD_MEANS["Dice"] + 1) / 2)
    assert a["sd"]["Dice"] == pytest.approx(np.std([GOOD_MEANS["Dice"], 1.0], ddof=1))
    assert a["per_case"]["caseA"]["liver"]["Dice"] == pytest.approx((6 / 7 + 1) / 2)
    assert results["runs"]["B"]["sd"]["Dice"] is None  # one repeat
    assert results["baseline"] == "B"

    [comparison] = results["comparisons"]
    assert set(comparison) == COMPARISON_KEYS
    assert (comparison["method"], comparison["baseline"]) == ("A", "B")
    assert (comparison["n_repeats"], comparison["n_baseline_repeats"], comparison["n_cases"]) == (2, 1, 2)
    # repeat 0 of A (good) is paired with B's only repeat (empty, scores 0); A's repeat 1 is left out:
    # caseA: 6/7 (tumour undefined); caseB: (1 + 2/3) / 2
    assert comparison["n_paired_repeats"] == 1 and comparison["verdict"] == "one repeat"
    assert comparison["notes"] == [
        f"A has 2 repeats, B 1: only the first 1 are paired; left out: A repeat 1 "
        f"({tiny['runs']['perfect'].resolve()})"
    ]
    differences = np.array([6 / 7, 5 / 6])
    assert comparison["mean_difference"] == pytest.approx(differences.mean())
    assert comparison["per_repeat_differences"] == pytest.approx([differences.mean()])
    # one repeat: no crossed numbers
    for key in ("ci95", "p_value", "df", "p_holm", "mean_squares", "repeats_needed"):
        assert comparison[key] is None, key
    these_models = comparison["these_models"]
    assert these_models["p_value"] == pytest.approx(stats.wilcoxon(differences).pvalue)
    assert comparison["n_boot"] >= 2000
    rows = np.random.default_rng(comparison["seed"]).integers(0, 2, size=(comparison["n_boot"], 2))
    bootstrap = np.percentile(differences[rows].mean(axis=1), [2.5, 97.5])
    assert these_models["ci95"] == pytest.approx(bootstrap)
    assert comparison["per_repeat_ci95"][0] == pytest.approx(bootstrap)
    # per class (exploratory), over the paired repeats: tumour is undefined in caseA for both, so it is
    # paired over caseB only
    tumour = comparison["per_class"]["tumour"]
    assert tumour["n_cases"] == 1 and tumour["mean_difference"] == pytest.approx(2 / 3)
    assert set(tumour) == {"n_cases", "n_nonzero_differences", "mean_difference", "ci95", "p_value"}
    assert comparison["per_class"]["liver"]["n_cases"] == 2

    markdown = (tiny["root"] / "out" / "table.md").read_text()
    assert "| evaluated | A | **89.88 ± 14.31** |" in markdown
    assert "repeats: A: 2" in markdown
    assert "no p-values (a crossed p needs 2 paired repeats and 2 cases)" in markdown
    assert "Holm-adjusted" not in markdown
    assert ("A vs B: +84.52 mDice over 2 cases, one repeat: it describes one trained model per method, not the "
            "loss") in markdown
    assert markdown.rstrip().endswith(f"left out: A repeat 1 ({tiny['runs']['perfect'].resolve()}).")
    csv_lines = (tiny["root"] / "out" / "table.csv").read_text().splitlines()
    assert csv_lines[0].endswith(
        ",n_repeats,mDice sd,mIoU sd,mPrec. sd,mRec. sd,mHD95 (mm) sd,mNSD sd,liver sd,tumour sd"
    )
    assert csv_lines[1].startswith("evaluated,A,89.88,")
    assert ",2,14.31," in csv_lines[1]


def test_default_baseline_is_the_first_name(tiny: dict) -> None:
    results = _evaluate(tiny)
    assert results["baseline"] == "good"
    assert [(c["method"], c["baseline"]) for c in results["comparisons"]] == [
        ("perfect", "good"),
        ("empty", "good"),
    ]
    # one repeat each: the old single-run layout is kept
    good = results["runs"]["good"]
    assert good["n_repeats"] == 1 and good["prediction_dir"] == str(tiny["runs"]["good"].resolve())
    assert good["repeats"][0]["per_case"] == good["per_case"]


def test_identical_predictions_have_no_p_value(tiny: dict) -> None:
    runs = {"A": tiny["runs"]["perfect"], "B": tiny["reference"]}
    results = evaluate_runs(tiny["reference"], runs, tiny["dataset_json"], tiny["root"] / "out")
    [comparison] = results["comparisons"]
    assert comparison["mean_difference"] == 0.0 and comparison["these_models"]["p_value"] is None
    markdown = (tiny["root"] / "out" / "table.md").read_text()
    assert ("B vs A: +0.00 mDice over 2 cases, one repeat: it describes one trained model per method, not the "
            "loss (3 or more seeds can judge the loss); for these trained models: 95% CI +0.00 to +0.00, Wilcoxon "
            "p undefined (every case scores the same for both)") in markdown


@pytest.mark.parametrize(
    ("runs", "kwargs", "message"),
    [
        (lambda t: {"A": t["runs"]["good"]}, {"baseline": "C"}, r"baseline 'C' is not one of .*\['A'\]"),
        (lambda t: [("A", t["runs"]["good"]), ("A", t["runs"]["good"])], {}, "is given twice"),
        (lambda t: {"A": []}, {}, "run 'A' has no prediction folder"),
        (lambda t: {"A": t["runs"]["good"]}, {"hd95_missing": "zero"}, "hd95_missing must be one of"),
    ],
    ids=["unknown-baseline", "same-folder-twice", "no-folder", "hd95-policy"],
)
def test_repeat_and_baseline_errors(tiny: dict, runs, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        evaluate_runs(tiny["reference"], runs(tiny), tiny["dataset_json"], tiny["root"] / "out", **kwargs)


def _flipped_same_anatomy(path: Path, array, spacing=SPACING_XYZ) -> None:
    """The same anatomy stored the other way along x: array reversed, x axis pointing the other way and
    the origin at the former last voxel. Physically identical; voxel for voxel different."""
    flipped = np.asarray(array, dtype=np.uint8)[:, :, ::-1]
    image = sitk.GetImageFromArray(flipped)
    image.SetSpacing(spacing)
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    image.SetOrigin(((flipped.shape[2] - 1) * spacing[0], 0.0, 0.0))
    sitk.WriteImage(image, str(path))


def test_flipped_direction_and_shifted_origin_is_refused(tiny: dict) -> None:
    _flipped_same_anatomy(tiny["runs"]["perfect"] / "caseA.nii.gz", REFERENCE["caseA"])
    message = (
        r"geometry mismatch for case 'caseA': prediction .*perfect/caseA\.nii\.gz vs reference .*: "
        r"origin \(x, y, z\) \(2\.5, 0, 0\) vs \(0, 0, 0\); direction \(row-major\) \(-1, 0, 0, 0, 1, 0, 0, 0, 1\)"
    )
    with pytest.raises(InputError, match=message):
        _evaluate(tiny)


def test_geometry_within_the_converters_tolerance_is_accepted(tiny: dict) -> None:
    # float32 header round-off: origin off by 1e-5 mm, direction cosine by 1e-6 (tolerance 1e-4 * 0.5 mm)
    _write(
        tiny["runs"]["perfect"] / "caseA.nii.gz",
        REFERENCE["caseA"],
        origin=(1e-5, -1e-5, 0.0),
        direction=(1.0, 1e-6, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    results = _evaluate(tiny)
    assert results["runs"]["perfect"]["mean"]["Dice"] == 1.0


def test_a_failure_while_writing_leaves_the_previous_outputs(tiny: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import nnunet_topkdice.evaluation.plots as plots

    _evaluate(tiny)
    out = tiny["root"] / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(results: dict, out_png: Path) -> Path:
        raise RuntimeError("no space left on device")

    monkeypatch.setattr(plots, "plot_results", broken)
    with pytest.raises(RuntimeError, match="no space left"):
        _evaluate(tiny, hd95_missing="exclude")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no mix, no partial files
