"""``topkdice evaluate`` and ``topkdice show-ignore-map`` as a user runs them: exit codes and output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_topkdice.cli import main
from nnunet_topkdice.evaluation.cli import _run_spec

TOPKDICE = str(Path(sys.executable).parent / "topkdice")


def _write(path: Path, array: np.ndarray) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))
    return path


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw")}
    env.pop("nnUNet_preprocessed", None)
    env.pop("nnUNet_results", None)
    return subprocess.run([TOPKDICE, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def acdc_like(tmp_path: Path) -> dict:
    """$nnUNet_raw/Dataset902_ACDCtiny with labelsTs (2 cases) and two prediction folders."""
    raw = tmp_path / "raw" / "Dataset902_ACDCtiny"
    (raw / "labelsTs").mkdir(parents=True)
    (raw / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3}, "file_ending": ".nii.gz"})
    )
    label = np.zeros((2, 6, 6), dtype=np.uint8)
    label[:, 1:3, 1:3], label[:, 3:5, 1:5], label[:, 1:3, 3:5] = 1, 2, 3
    runs = {}
    for name in ("A", "B"):
        runs[name] = tmp_path / name
        runs[name].mkdir()
    for case in ("p1", "p2"):
        _write(raw / "labelsTs" / f"{case}.nii.gz", label)
        _write(runs["A"] / f"{case}.nii.gz", label)
        _write(runs["B"] / f"{case}.nii.gz", np.where(label == 3, 0, label).astype(np.uint8))
    return {"root": tmp_path, "labels": raw / "labelsTs", "runs": runs}


def test_evaluate_command_end_to_end(acdc_like: dict) -> None:
    out = acdc_like["root"] / "out"
    runs = [f"{name}={folder}" for name, folder in acdc_like["runs"].items()]
    result = _run(
        [
            "evaluate",
            "-r",
            str(acdc_like["labels"]),
            "-pred",
            *runs,
            "-d",
            "902",
            "-o",
            str(out),
            "--paper",
            "acdc",
        ],
        acdc_like["root"],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("## Paper-style evaluation: Dataset902_ACDCtiny (2 test cases)")
    assert "| evaluated | A | **100.00** |" in result.stdout
    # run B misses LV entirely: Dice 0 for LV, mean over RV, MYO, LV = 66.67
    assert "| evaluated | B | 66.67 |" in result.stdout
    assert "| paper (reported) | CE + topK-Dice (our) [Table 2] | **91.67** |" in result.stdout
    assert "| difference to paper | B vs. CE + topK-Dice (our) | -25.00 |" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "figure.png", "per_case.csv", "results.json", "table.csv", "table.md"
    ]
    assert (out / "table.md").read_text() == result.stdout


def test_evaluate_command_mismatched_cases_exits_2(acdc_like: dict) -> None:
    (acdc_like["runs"]["B"] / "p2.nii.gz").unlink()
    result = _run(
        [
            "evaluate",
            "-r",
            str(acdc_like["labels"]),
            "-pred",
            f"B={acdc_like['runs']['B']}",
            "-d",
            "902",
            "-o",
            "x",
        ],
        acdc_like["root"],
    )
    assert result.returncode == 2
    assert "topkdice evaluate: error: run 'B'" in result.stderr
    assert "no prediction for 1 reference case(s): p2" in result.stderr
    assert result.stdout == ""


def test_show_ignore_map_command(tmp_path: Path) -> None:
    label = np.zeros((1, 6, 6), dtype=np.uint8)
    label[0, 1:5, 1:5] = 1  # 16 voxels
    probs = np.stack(
        [1 - np.linspace(0.2, 0.9, 36).reshape(1, 6, 6), np.linspace(0.2, 0.9, 36).reshape(1, 6, 6)]
    )
    np.savez_compressed(tmp_path / "c.npz", probabilities=probs.astype(np.float32))
    image = _write(tmp_path / "c_0000.nii.gz", label.astype(np.float32))
    labels = _write(tmp_path / "c.nii.gz", label)
    out = tmp_path / "fig.png"
    args = [
        "show-ignore-map",
        "-i",
        str(image),
        "-l",
        str(labels),
        "--probabilities",
        str(tmp_path / "c.npz"),
    ]
    result = _run([*args, "-o", str(out), "--k", "75", "25"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "slice 0 along axis 0, selection per slice (the counts and the loss below are the slice's)"
    # D = floor(0.25 * 16) = 4 and floor(0.75 * 16) = 12 excluded
    assert lines[2].startswith("75\tlabel 1\t16\t4\t12\t")
    assert lines[3].startswith("25\tlabel 1\t16\t12\t4\t")
    assert lines[-1] == str(out) and out.stat().st_size > 10_000


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "-r", "r", "-pred", "a=b", "-d", "1", "-o", "o", "-np", "0"],
        ["evaluate", "-r", "r", "-pred", "a=b", "-d", "1", "-o", "o", "--paper", "brats"],
        ["evaluate", "-r", "r", "-pred", "=b", "-d", "1", "-o", "o"],
        ["evaluate", "-r", "r", "-d", "1", "-o", "o"],
        ["evaluate", "-r", "r", "-pred", "a=b", "-d", "1", "-o", "o", "--hd95-missing", "zero"],
        ["show-ignore-map", "-i", "i", "-l", "l", "--probabilities", "p", "-o", "o", "--k", "0"],
        ["show-ignore-map", "-i", "i", "-l", "l", "--probabilities", "p", "-o", "o", "--k", "101"],
        ["show-ignore-map", "-i", "i", "-l", "l", "--probabilities", "p", "-m", "m", "-o", "o"],
        ["show-ignore-map", "-i", "i", "-l", "l", "-o", "o"],
        ["show-ignore-map", "-i", "i", "-l", "l", "--probabilities", "p", "-o", "o", "--slice", "-1"],
    ],
    ids=[
        "np-zero",
        "paper-choice",
        "empty-name",
        "no-predictions",
        "hd95-choice",
        "k-zero",
        "k-above-100",
        "two-sources",
        "no-source",
        "negative-slice",
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit, match="^2$"):  # the exit code
        main(argv)
    assert "error:" in capsys.readouterr().err


def test_same_folder_twice_for_one_name_exits_2(acdc_like: dict, capsys: pytest.CaptureFixture) -> None:
    folder = str(acdc_like["runs"]["A"])
    code = main(
        [
            "evaluate",
            "-r",
            str(acdc_like["labels"]),
            "-pred",
            f"A={folder}",
            f"A={folder}",
            "-d",
            "x.json",
            "-o",
            "o",
        ]
    )
    assert code == 2
    assert f"run 'A': prediction folder {folder} is given twice" in capsys.readouterr().err


def test_repeated_name_is_one_method_and_baseline_is_chosen(acdc_like: dict) -> None:
    """B twice (two repeats: B itself and a copy of A), --baseline B: A is compared with B."""
    runs = acdc_like["runs"]
    out = acdc_like["root"] / "out"
    argv = ["evaluate", "-r", str(acdc_like["labels"]), "-pred", f"B={runs['B']}", f"A={runs['A']}"]
    argv += ["-pred", f"B={runs['A']}", "-d", "902", "-o", str(out), "--baseline", "B"]
    result = _run(argv, acdc_like["root"])
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["B", "A"] and results["baseline"] == "B"
    assert results["runs"]["B"]["n_repeats"] == 2
    # A's one repeat is paired with B's first (LV missed, case score 2/3; A is 1 everywhere); B's second
    # repeat (a copy of A) has no partner and is named in the notes
    [comparison] = results["comparisons"]
    assert comparison["method"] == "A" and comparison["mean_difference"] == pytest.approx(1 / 3)
    assert (comparison["n_paired_repeats"], comparison["verdict"]) == (1, "one repeat")
    # mDice over B's repeats: 66.67 and 100.00, sd 23.57
    assert "| evaluated | B | 83.33 ± 23.57 |" in result.stdout
    assert result.stdout.rstrip().splitlines()[-2:] == [
        "A vs B: +33.33 mDice over 2 cases, one repeat: it describes one trained model per method, not the loss "
        "(3 or more seeds can judge the loss); for these trained models: 95% CI +33.33 to +33.33, Wilcoxon "
        "p = 0.50 (fewer than 6 cases: its Wilcoxon test cannot reach 0.05)",
        f"Note: B has 2 repeats, A 1: only the first 1 are paired; left out: B repeat 1 ({runs['A'].resolve()}).",
    ]


@pytest.mark.parametrize("value", ["0", "-0.01", "1.5", "one"])
def test_bad_target_difference_exits_2(acdc_like: dict, value: str, capsys: pytest.CaptureFixture) -> None:
    argv = ["evaluate", "-r", str(acdc_like["labels"]), "-pred", f"A={acdc_like['runs']['A']}", "-d", "x.json"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "-o", "o", "--target-difference", value])
    assert exit_info.value.code == 2
    assert "--target-difference: expected a Dice difference in (0, 1]" in capsys.readouterr().err


def test_unknown_baseline_exits_2(acdc_like: dict, capsys: pytest.CaptureFixture) -> None:
    code = main(
        ["evaluate", "-r", str(acdc_like["labels"]), "-pred", f"A={acdc_like['runs']['A']}", "-d", "x.json",
         "-o", "o", "--baseline", "Z"]
    )
    assert code == 2
    assert "baseline 'Z' is not one of the evaluated names: ['A']" in capsys.readouterr().err


def test_missing_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "show-ignore-map",
            "-i",
            str(tmp_path / "i.nii.gz"),
            "-l",
            str(tmp_path / "l.nii.gz"),
            "--probabilities",
            str(tmp_path / "p.npz"),
            "-o",
            str(tmp_path / "o.png"),
        ]
    )
    assert code == 2
    assert "label file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CE=/runs/ce", ("CE", Path("/runs/ce"))),
        ("/runs/nnUNetTrainerTopKDice", ("nnUNetTrainerTopKDice", Path("/runs/nnUNetTrainerTopKDice"))),
        ("/data/a=b/preds", ("preds", Path("/data/a=b/preds"))),
        ("CE + Dice=preds", ("CE + Dice", Path("preds"))),
    ],
    ids=["named", "folder-only", "equals-in-path", "spaces-in-name"],
)
def test_run_spec(text: str, expected: tuple[str, Path]) -> None:
    assert _run_spec(text) == expected


@pytest.mark.parametrize("command", ["evaluate", "show-ignore-map"])
def test_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit, match="^0$"):  # the exit code
        main([command, "--help"])
    assert "usage: topkdice " + command in capsys.readouterr().out


def test_repeated_predictions_option_adds_runs() -> None:
    from nnunet_topkdice.cli import build_parser

    args = build_parser().parse_args(
        ["evaluate", "-r", "labels", "-pred", "A=a", "B=b", "-pred", "C=c", "-d", "1", "-o", "out"]
    )
    assert [name for name, _ in args.predictions] == ["A", "B", "C"]
