"""compare and reproduce: the warning for fewer than 3 seeds and ``--target-difference`` passed to evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunet_topkdice.cli import build_parser, main
from nnunet_topkdice.pipeline import commands, state


def _dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "nnUNet_raw" / "Dataset004_Hippo"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "numTraining": 4}))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))


def _compare(tmp_path: Path, *extra: str) -> int:
    return main(["compare", "-d", "Dataset004_Hippo", "-c", "2d", "--trainers", "A", "B", "--folds", "0",
                 "--device", "cpu", "-w", str(tmp_path / "w"), "--dry-run", *extra])  # fmt: skip


@pytest.mark.parametrize(
    ("seeds", "warning"),
    [
        (["0"], "topkdice compare: warning: 1 seed (one trained model per method: the verdict describes these "
                "models, not the loss); give --seeds with 3 or more (e.g. --seeds 0 1 2) for a verdict"),
        (["0", "1"], "topkdice compare: warning: 2 seeds (two seeds cannot separate the loss from seed "
                     "variability: the verdict is exploratory); give --seeds with 3 or more"),
        (["0", "1", "2"], None),
    ],
    ids=["one", "two", "three"],
)
def test_compare_warns_below_three_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, seeds: list[str],
    warning: str | None,
) -> None:  # fmt: skip
    _dataset(tmp_path, monkeypatch)
    assert _compare(tmp_path, "--seeds", *seeds) == 0
    out, err = capsys.readouterr()
    if warning is None:
        assert "warning" not in err
    else:
        assert warning in err and "warning" not in out


def test_compare_passes_the_target_difference_to_evaluate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _dataset(tmp_path, monkeypatch)
    assert _compare(tmp_path, "--seeds", "0", "1", "2", "--target-difference", "0.02") == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "topkdice evaluate" in last and last.endswith(" --target-difference 0.02")
    assert _compare(tmp_path, "--seeds", "0", "1", "2") == 0
    assert "--target-difference" not in capsys.readouterr().out  # the default: evaluate's own


def test_reproduce_warns_with_its_default_of_one_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for var in state.NNUNET_FOLDER_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "RawData").mkdir()
    argv = ["reproduce", "--dataset", "acdc", "-i", str(tmp_path / "RawData"), "--device", "cpu",
            "-w", str(tmp_path / "w"), "--dry-run", "--target-difference", "0.005"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "topkdice reproduce: warning: 1 seed (" in err
    evaluate = out.splitlines()[-1]
    assert "topkdice evaluate" in evaluate and " --paper acdc " in evaluate
    assert evaluate.endswith(" --target-difference 0.005")


def test_evaluate_command_with_target_difference_parses_back() -> None:
    argv = commands.evaluate_command(Path("/l"), [("A", Path("/a"))], 4, Path("/o"), target_difference=0.02)
    assert argv[-2:] == ["--target-difference", "0.02"]
    assert build_parser().parse_args(argv[1:]).target_difference == 0.02


@pytest.mark.parametrize("prog", ["compare", "reproduce"])
def test_bad_target_difference_is_a_usage_error(prog: str, capsys: pytest.CaptureFixture) -> None:
    required = ["-d", "4", "-c", "2d", "--trainers", "A"] if prog == "compare" else ["--dataset", "acdc"]
    with pytest.raises(SystemExit) as info:
        main([prog, *required, "--target-difference", "2"])
    assert info.value.code == 2
    assert "--target-difference: expected a Dice difference in (0, 1]" in capsys.readouterr().err
