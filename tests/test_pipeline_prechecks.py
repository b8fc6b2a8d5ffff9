"""What ``compare`` (and ``reproduce``, ``demo``) check before running anything (issue 24): trainers found by
nnU-Net's own lookup, no trainer named twice, folders that can be written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunet_topkdice.cli import main
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.ext import trainer_dir
from nnunet_topkdice.pipeline import state
from nnunet_topkdice.pipeline.prechecks import check_trainers, find_trainer_class

USER_TRAINERS = """
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerMyOwn(nnUNetTrainer):
    pass


class NotATrainer:
    pass
"""


@pytest.fixture
def compare_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """nnU-Net's folders under ``tmp_path`` with a dataset that has a dataset.json, a user trainer folder,
    and a runner that fails the test if any step starts."""
    raw = tmp_path / "raw" / "Dataset004_Hippo"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "numTraining": 4, "labels": {}}))
    user = tmp_path / "my_trainers"
    user.mkdir()
    (user / "my_trainers_for_prechecks.py").write_text(USER_TRAINERS)
    for var in state.NNUNET_FOLDER_VARIABLES:
        monkeypatch.setenv(var, str(tmp_path / var.removeprefix("nnUNet_")))
    monkeypatch.setenv("nnUNet_extTrainer", str(user))

    def no_step(*args, **kwargs):
        raise AssertionError("a step ran before the checks")

    monkeypatch.setattr("nnunet_topkdice.pipeline.session.run_steps", no_step)
    return {"root": tmp_path, "workdir": tmp_path / "work", "user": user}


def _compare(env: dict, *trainers: str) -> list[str]:
    return ["compare", "-d", "4", "-c", "2d", "--trainers", *trainers, "--device", "cpu", "-w", str(env["workdir"])]


def test_a_misspelt_trainer_fails_before_planning(compare_env: dict, capsys: pytest.CaptureFixture[str]) -> None:
    # today: preprocessing starts, and the typo fails only at that trainer's first training
    assert main(_compare(compare_env, "nnUNetTrainer", "NoSuchTrainer")) == 2
    err = capsys.readouterr().err
    assert "nnU-Net finds no trainer class NoSuchTrainer (looked in nnunetv2.training.nnUNetTrainer" in err
    assert str(compare_env["user"]) in err and str(trainer_dir()) in err
    assert not compare_env["workdir"].exists()


def test_a_trainer_named_twice_is_refused(compare_env: dict, capsys: pytest.CaptureFixture[str]) -> None:
    # today: silently merged into one method, and no verdict comes out
    assert main(_compare(compare_env, "nnUNetTrainer", "nnUNetTrainerMyOwn", "nnUNetTrainer")) == 2
    assert "--trainers names nnUNetTrainer more than once" in capsys.readouterr().err


def test_preprocessed_that_is_a_file_fails_before_anything_runs(
    compare_env: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    preprocessed = compare_env["root"] / "a_file"
    preprocessed.write_text("")
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    assert main(_compare(compare_env, "nnUNetTrainer", "nnUNetTrainerMyOwn")) == 2
    assert f"nnUNet_preprocessed {preprocessed} is a file; expected a folder" in capsys.readouterr().err
    assert not compare_env["workdir"].exists()


def test_a_workdir_below_a_file_fails_before_anything_runs(
    compare_env: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    (compare_env["root"] / "a_file").write_text("")
    compare_env["workdir"] = compare_env["root"] / "a_file" / "work"
    assert main(_compare(compare_env, "nnUNetTrainer")) == 2
    assert "the work directory (-w/--workdir)" in capsys.readouterr().err


def test_ce_trainers_on_a_region_dataset_fail_before_anything_runs(
    compare_env: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """The paper's CE row has no region formulation: before, the trainings before it ran for hours and the
    run then stopped at nnU-Net's bare `AssertionError: regions not supported by this trainer`."""
    labels = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}
    dataset_json = {"file_ending": ".nii.gz", "numTraining": 4, "labels": labels, "regions_class_order": [1, 2, 3]}
    (compare_env["root"] / "raw" / "Dataset004_Hippo" / "dataset.json").write_text(json.dumps(dataset_json))
    trainers = ("nnUNetTrainerDiceCEDemo", "nnUNetTrainerTopKDiceDemo", "nnUNetTrainerCEDemo", "nnUNetTrainerCELoss")
    assert main(_compare(compare_env, *trainers)) == 2
    err = capsys.readouterr().err
    for refused in ("nnUNetTrainerCEDemo", "nnUNetTrainerCELoss"):  # ours and nnU-Net's own
        assert f"Dataset004_Hippo: {refused} trains cross entropy over softmax classes, which has no region" in err
    assert "DiceCEDemo trains" not in err and "TopKDiceDemo trains" not in err
    assert not compare_env["workdir"].exists()
    # the same trainers on a label dataset pass the check (the runner stub would fail the test if a step ran)
    from nnunet_topkdice.pipeline.prechecks import check_region_support
    from nnunet_topkdice.trainers import nnUNetTrainerCEDemo

    dataset_json["labels"] = {"background": 0, "organ": 1}
    del dataset_json["regions_class_order"]
    path = compare_env["root"] / "raw" / "Dataset004_Hippo" / "dataset.json"
    path.write_text(json.dumps(dataset_json))
    check_region_support({"nnUNetTrainerCEDemo": nnUNetTrainerCEDemo}, path)
    check_region_support({"nnUNetTrainerCEDemo": nnUNetTrainerCEDemo}, path.parent / "not_written_yet.json")


def test_results_at_a_seed_root_fail_before_anything_runs(
    compare_env: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """nnUNet_results left at .../seed_2 after predicting: every training would refuse, after preprocessing."""
    seed_root = compare_env["root"] / "results" / "seed_2"
    monkeypatch.setenv("nnUNet_results", str(seed_root))
    assert main(_compare(compare_env, "nnUNetTrainer")) == 2
    err = capsys.readouterr().err
    assert f"nnUNet_results={seed_root} is a seed folder already" in err and str(seed_root.parent) in err
    assert not compare_env["workdir"].exists()


def test_find_trainer_class_is_nnunets_lookup(compare_env: dict) -> None:
    user = str(compare_env["user"])
    assert find_trainer_class("nnUNetTrainer", []).__name__ == "nnUNetTrainer"
    assert find_trainer_class("nnUNetTrainerMyOwn", [user]).__name__ == "nnUNetTrainerMyOwn"
    assert find_trainer_class("nnUNetTrainerMyOwn", []) is None
    assert find_trainer_class("nnUNetTrainerTopKDice", [user, str(trainer_dir())]).__name__ == "nnUNetTrainerTopKDice"
    check_trainers(["nnUNetTrainer", "nnUNetTrainerMyOwn"], user)
    with pytest.raises(InputError, match=r"NotATrainer found, but not a subclass of nnUNetTrainer"):
        check_trainers(["NotATrainer"], user)
    with pytest.raises(InputError, match=r"no trainer class Nope1, Nope2 "):
        check_trainers(["nnUNetTrainer", "Nope1", "Nope2"], user)


def test_the_trainer_lookup_keeps_import_warnings_off_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing every trainer module warns (torch's deprecations); those warnings are not this check's."""
    import warnings

    import nnunetv2.utilities.find_class_by_name as finder

    from nnunet_topkdice.pipeline.prechecks import find_trainer_class

    def noisy_lookup(*args, **kwargs):
        warnings.warn("`torch.jit.interface` is deprecated", FutureWarning, stacklevel=1)
        return int

    monkeypatch.setattr(finder, "recursive_find_python_class", noisy_lookup)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert find_trainer_class("AnyTrainer", []) is int
    assert caught == []


def test_only_trainers_with_a_training_left_are_looked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The look-up imports every trainer module (seconds): a run whose trainings are all done skips it."""
    from nnunet_topkdice.pipeline import prechecks
    from nnunet_topkdice.pipeline.plan import CompareConfig

    looked_up: list[list[str]] = []
    monkeypatch.setattr(prechecks, "check_trainers", lambda names, ext: looked_up.append(list(names)))
    config = CompareConfig(
        dataset_id=4, raw_dataset=tmp_path / "raw" / "Dataset004_X", configuration="2d",
        trainers={"A": "TA", "B": "TB"}, workdir=tmp_path / "work", folders=state.NnunetFolders.resolve(tmp_path, {}),
        device="cpu",
    )  # fmt: skip
    prechecks.check_before_running(config, {}, to_train=[])
    prechecks.check_before_running(config, {}, to_train=["TB"])
    prechecks.check_before_running(config, {})
    assert looked_up == [["TB"], ["TA", "TB"]]
