"""Bad input to ``evaluate`` and ``show-ignore-map`` (issue 24): NaN and infinity in references and
predictions, dangling links, an output that is a file, a missing picture folder, a dataset.json that is a
JSON list, and the mark of a lone value next to undefined ones. Each is a clear error (exit 2) raised
before the work starts."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_topkdice.cli import main as topkdice_main
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.evaluation import evaluate_runs
from nnunet_topkdice.evaluation.ignore_map import show_ignore_map

DATASET = {"labels": {"background": 0, "fg": 1}, "file_ending": ".nii.gz"}
# Two cases of shape (z, y, x) = (1, 1, 4).
REFERENCE = {"a": [[[1, 1, 0, 0]]], "b": [[[0, 0, 1, 1]]]}


def _write_simpleitk(path: Path, array: np.ndarray) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def _write_nibabel(path: Path, array: np.ndarray) -> None:
    nibabel.save(nibabel.Nifti1Image(array.transpose(2, 1, 0), np.eye(4)), str(path))


def _folder(root: Path, name: str, cases: dict) -> Path:
    folder = root / name
    folder.mkdir()
    for case, values in cases.items():
        _write_simpleitk(folder / f"{case}.nii.gz", np.asarray(values, np.uint8))
    return folder


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    (tmp_path / "dataset.json").write_text(json.dumps(DATASET))
    return {
        "root": tmp_path,
        "dataset": tmp_path / "dataset.json",
        "reference": _folder(tmp_path, "ref", REFERENCE),
        "pred": _folder(tmp_path, "pred", REFERENCE),
    }


def _evaluate(setup: dict) -> dict:
    return evaluate_runs(setup["reference"], {"pred": setup["pred"]}, setup["dataset"], setup["root"] / "out")


@pytest.mark.parametrize("where", ["ref", "pred"])
@pytest.mark.parametrize("writer", [_write_simpleitk, _write_nibabel], ids=["simpleitk", "nibabel"])
def test_nan_and_infinity_in_labels_are_refused(setup: dict, writer, where: str) -> None:
    # today SimpleITK reads these voxels as 0 and the case is scored as if they were background
    values = np.asarray(REFERENCE["b"], np.float32)
    values[0, 0, 0] = np.nan
    values[0, 0, 1:3] = np.inf
    path = setup["reference" if where == "ref" else "pred"] / "b.nii.gz"
    path.unlink()
    writer(path, values)
    what = "reference" if where == "ref" else "prediction"
    with pytest.raises(InputError, match=rf"case b: {what} {path} contains 1 NaN and 2 infinite voxel"):
        _evaluate(setup)
    assert not (setup["root"] / "out").exists()


@pytest.mark.parametrize("where", ["ref", "pred", "both"])
def test_a_dangling_link_is_an_error(setup: dict, where: str) -> None:
    # today the case is skipped in both folders and silently left out of the evaluation
    for folder in ["reference", "pred"] if where == "both" else ["reference" if where == "ref" else "pred"]:
        (setup[folder] / "b.nii.gz").unlink()
        (setup[folder] / "b.nii.gz").symlink_to(setup["root"] / "moved" / "b.nii.gz")
    with pytest.raises(
        InputError, match=r"1 case file\(s\) in .* are links to files that do not exist: .*b\.nii\.gz -> "
    ):
        _evaluate(setup)


def test_output_that_is_a_file_fails_before_evaluating(
    setup: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = setup["root"] / "out.txt"
    out.write_text("keep me")

    def no_work(*args, **kwargs):
        raise AssertionError("the cases were evaluated before the output folder was checked")

    monkeypatch.setattr("nnunet_topkdice.evaluation.evaluate.run_case_jobs", no_work)
    argv = ["evaluate", "-r", str(setup["reference"]), "-pred", f"x={setup['pred']}", "-d", str(setup["dataset"])]
    assert topkdice_main([*argv, "-o", str(out)]) == 2
    assert f"output folder {out} is a file; expected a folder" in capsys.readouterr().err
    assert topkdice_main([*argv, "-o", str(out / "sub")]) == 2
    assert f"output folder {out / 'sub'} cannot be created: {out} is a file" in capsys.readouterr().err
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("content", [[], ["labels"], "text", 3], ids=["empty-list", "list", "string", "number"])
def test_dataset_json_that_is_not_an_object(setup: dict, content, capsys: pytest.CaptureFixture[str]) -> None:
    setup["dataset"].write_text(json.dumps(content))
    argv = ["evaluate", "-r", str(setup["reference"]), "-pred", f"x={setup['pred']}", "-d", str(setup["dataset"])]
    assert topkdice_main([*argv, "-o", str(setup["root"] / "out")]) == 2
    kind = {list: "list", str: "string", int: "number"}[type(content)]
    assert f"{setup['dataset']} must hold a JSON object" in capsys.readouterr().err
    with pytest.raises(InputError, match=rf"got a JSON {kind}"):
        _evaluate(setup)


def test_lone_zero_next_to_an_undefined_baseline_is_not_bold(setup: dict) -> None:
    # the probe: the baseline predicts nothing (precision undefined), the method predicts the wrong voxels
    empty = _folder(setup["root"], "empty", {case: [[[0, 0, 0, 0]]] for case in REFERENCE})
    wrong = _folder(setup["root"], "wrong", {"a": [[[0, 0, 1, 1]]], "b": [[[1, 1, 0, 0]]]})
    evaluate_runs(setup["reference"], {"empty": empty, "wrong": wrong}, setup["dataset"], setup["root"] / "o")
    rows = [line for line in (setup["root"] / "o" / "table.md").read_text().splitlines() if "| evaluated |" in line]
    assert rows[0].split("|")[3:7] == [" 0.00 ", " 0.00 ", " n/a ", " 0.00 "]
    assert rows[1].split("|")[3:7] == [" 0.00 ", " 0.00 ", " 0.00 ", " 0.00 "]  # no ** anywhere


def test_show_ignore_map_creates_a_missing_folder(ignore_map_case: dict) -> None:
    out = ignore_map_case["root"] / "new" / "deeper" / "map.png"
    show_ignore_map(
        [ignore_map_case["image"]], ignore_map_case["label"], out, probabilities_file=ignore_map_case["npz"]
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_ignore_map_output_errors_come_before_the_work(
    ignore_map_case: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("the case was loaded before the output was checked")

    monkeypatch.setattr("nnunet_topkdice.evaluation.ignore_map_io.load_case", no_work)
    root = ignore_map_case["root"]
    (root / "a_file").write_text("")
    argv = ["show-ignore-map", "-i", str(ignore_map_case["image"]), "-l", str(ignore_map_case["label"]),
            "--probabilities", str(ignore_map_case["npz"])]  # fmt: skip
    assert topkdice_main([*argv, "-o", str(root / "a_file" / "map.png")]) == 2
    assert (
        f"-o {root / 'a_file' / 'map.png'}: the picture's folder {root / 'a_file'} is a file" in capsys.readouterr().err
    )
    assert topkdice_main([*argv, "-o", str(root)]) == 2
    assert f"-o {root} is a folder; expected the file name of the picture" in capsys.readouterr().err
