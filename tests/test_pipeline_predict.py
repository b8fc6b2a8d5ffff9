"""``topkdice predict``: several models in one process write what ``nnUNetv2_predict`` writes per model.

The models are the fold ``all`` trainings of seed 0 of the 2d compare sweep (``tests/compare_sweep.py``:
two tiny trainers from a user's ``nnUNet_extTrainer`` folder, 2 epochs of 1 iteration, on the tiny 3D
dataset of the pipeline tests, in 2d); one ``topkdice predict`` for both models runs against one
``nnUNetv2_predict`` per model with its worker processes (``-npp 1 -nps 1``, the path the pipeline used
before).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from compare_sweep import DATASET_ID, FIRST, SECOND, Sweep
from pipeline_fixtures import BIN, TOPKDICE, run_together, snapshot

from nnunet_topkdice.errors import InputError
from nnunet_topkdice.pipeline import predict
from nnunet_topkdice.pipeline.predict import parse_model_pair


def test_model_pairs_are_parsed_and_checked() -> None:
    assert parse_model_pair("T=/out/a=b") == ("T", Path("/out/a=b"))
    for bad in ("T", "=/out", "T="):
        with pytest.raises(argparse.ArgumentTypeError, match="expected TRAINER=OUTPUT_DIR"):
            parse_model_pair(bad)


def test_image_lists_are_nnunets_without_forking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The case lists equal nnU-Net's own, made without its pool of forked processes (a fork of a process
    that runs torch's threads can hang)."""
    import os

    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    for case in ("b", "a", "c_1"):
        for channel in (0, 1):
            (tmp_path / f"{case}_{channel:04d}.nii.gz").touch()
    (tmp_path / "notes.txt").touch()
    expected = create_lists_from_splitted_dataset_folder(str(tmp_path), ".nii.gz", num_processes=1)

    def no_fork() -> int:
        raise AssertionError("forked")

    monkeypatch.setattr(os, "fork", no_fork)
    lists = predict.image_lists(tmp_path, ".nii.gz")
    assert lists == expected and [Path(f).name for f in lists[2]] == ["c_1_0000.nii.gz", "c_1_0001.nii.gz"]


def test_the_predictor_gets_the_lists_not_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nnunetv2.inference.predict_from_raw_data as nnunet_inference

    calls = []

    class Predictor:
        dataset_json = {"file_ending": ".nii.gz"}

        def __init__(self, **kwargs) -> None:
            pass

        def initialize_from_trained_model_folder(self, folder: str, folds: list, checkpoint_name: str) -> None:
            calls.append(("init", folder, folds, checkpoint_name))

        def predict_from_files_sequential(self, cases, out_dir: str, overwrite: bool) -> None:
            calls.append(("predict", cases, out_dir, overwrite))

    monkeypatch.setattr(nnunet_inference, "nnUNetPredictor", Predictor)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x_0000.nii.gz").touch()
    job = predict.ModelJob(tmp_path / "model", tmp_path / "out")
    predict.predict_models(tmp_path / "images", [job], ["all"], "cpu", resume=True)
    assert calls == [
        ("init", str(tmp_path / "model"), ["all"], "checkpoint_final.pth"),
        ("predict", [[str(tmp_path / "images" / "x_0000.nii.gz")]], str(tmp_path / "out"), False),
    ]


@pytest.mark.parametrize(("trainer", "found"), [("nnUNetTrainerTopKDice", True), ("nnUNetTrainerNowhere", False)])
def test_the_checkpoints_trainer_is_looked_up_with_this_packages_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trainer: str, found: bool
) -> None:
    """Without nnUNet_extTrainer, nnU-Net found none of this package's trainers (a traceback, exit 1):
    ``topkdice predict`` searches their folder as ``topkdice train`` does, and names what it cannot find."""
    import nnunetv2.inference.predict_from_raw_data as nnunet_inference
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    class Predictor:  # nnU-Net's look-up by the name a checkpoint holds, then nothing else
        dataset_json = {"file_ending": ".nii.gz"}

        def __init__(self, **kwargs) -> None:
            pass

        def initialize_from_trained_model_folder(self, folder: str, folds: list, checkpoint_name: str) -> None:
            assert recursive_find_trainer_class_by_name(trainer).__name__ == trainer

        def predict_from_files_sequential(self, cases, out_dir: str, overwrite: bool) -> None:
            pass

    monkeypatch.setattr(nnunet_inference, "nnUNetPredictor", Predictor)
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    (tmp_path / "images").mkdir()
    job = predict.ModelJob(tmp_path / f"{trainer}__nnUNetPlans__2d", tmp_path / "out")
    if found:
        predict.predict_models(tmp_path / "images", [job], ["0"], "cpu")
        assert (tmp_path / "out").is_dir()
    else:
        with pytest.raises(InputError, match=rf"{job.model_dir}: nnU-Net cannot find the trainer class .*"
                                             rf"Could not find requested nnunet trainer {trainer} in"):  # fmt: skip
            predict.predict_models(tmp_path / "images", [job], ["0"], "cpu")
        assert not (tmp_path / "out").exists()
    assert "nnUNet_extTrainer" not in os.environ  # restored


def test_a_missing_image_folder_is_named_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nnunet_topkdice.cli import main

    argv = ["predict", "-i", str(tmp_path / "nope"), "-d", "985", "-c", "2d", "--models", f"T={tmp_path / 'out'}"]
    assert main(argv) == 2
    assert f"topkdice predict: error: -i {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def trained(compare_sweep_2d: Sweep, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The 2d sweep's models (fold ``all`` of FIRST and SECOND, seed 0), its test images, and an own folder."""
    data = compare_sweep_2d.data
    for trainer in (FIRST, SECOND):
        assert (data.run_dir("2d", trainer, 0, "all") / "checkpoint_final.pth").is_file()
    # the models of seed 0 are where nnUNetv2_predict looks for them with this nnUNet_results
    env = {**data.env, "nnUNet_results": str(data.results / "seed_0")}
    return {"root": tmp_path_factory.mktemp("predict"), "images": data.dataset / "imagesTs", "env": env}


def _read(path: Path) -> tuple[np.ndarray, tuple]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), (image.GetSpacing(), image.GetOrigin(), image.GetDirection())


@pytest.mark.slow
def test_one_process_predicts_every_model_as_nnunetv2_predict_does(trained: dict) -> None:
    root, images, env = trained["root"], trained["images"], trained["env"]
    together = root / "together"
    argv = [TOPKDICE, "predict", "-i", images, "-d", str(DATASET_ID), "-c", "2d", "-f", "all", "-device", "cpu",
            "--models", f"{FIRST}={together / 'first'}", f"{SECOND}={together / 'second'}"]  # fmt: skip

    def alone(trainer: str, name: str) -> list:
        return [BIN / "nnUNetv2_predict", "-i", images, "-o", root / "alone" / name, "-d", str(DATASET_ID), "-c", "2d",
                "-f", "all", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"]  # fmt: skip

    # independent commands, at the same time (two cores)
    run_together([(argv, 0), (alone(FIRST, "first"), 0), (alone(SECOND, "second"), 0)], env)
    for name in ("first", "second"):
        ours, theirs_folder = together / name, root / "alone" / name
        assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs_folder.iterdir())
        cases = sorted(p.name for p in theirs_folder.glob("*.nii.gz"))
        assert cases == ["case004.nii.gz", "case005.nii.gz"]
        for case in cases:
            (mine, mine_geometry), (theirs, their_geometry) = _read(ours / case), _read(theirs_folder / case)
            assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs) and mine_geometry == their_geometry
        assert np.isin(_read(ours / cases[0])[0], [0, 1, 2]).all()

    # resuming keeps the predictions there (nnU-Net rewrites only its json records); a model that was
    # never trained is named, and nothing is written for it
    before = {k: v for k, v in snapshot(together).items() if k.endswith(".nii.gz")}
    never = [*argv[:-2], f"nnUNetTrainerNeverTrained={root / 'never'}"]  # writes nowhere near `together`
    _, missing = run_together([([*argv, "--continue_prediction"], 0), (never, 2)], env)
    assert {k: v for k, v in snapshot(together).items() if k.endswith(".nii.gz")} == before
    assert "nnUNetTrainerNeverTrained__nnUNetPlans__2d/fold_all/checkpoint_final.pth does not exist" in missing.stderr
    assert not (root / "never").exists()
