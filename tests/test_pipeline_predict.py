"""``topkdice predict``: several models in one process write what ``nnUNetv2_predict`` writes per model.

The models are the fold ``all`` trainings of seed 0 of the 2d compare sweep (``tests/compare_sweep.py``:
two tiny trainers from a user's ``nnUNet_extTrainer`` folder, 2 epochs of 1 iteration, on the tiny 3D
dataset of the pipeline tests, in 2d); one ``topkdice predict`` for both models runs against one
``nnUNetv2_predict`` per model with its worker processes (``-npp 1 -nps 1``, the path the pipeline used
before).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from compare_sweep import DATASET_ID, FIRST, SECOND, Sweep
from pipeline_fixtures import BIN, TOPKDICE, run_together, snapshot

from nnunet_topkdice.cli import main
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


class FakePredictor:
    """nnU-Net's ``nnUNetPredictor`` as far as ``topkdice predict`` uses it: it records its calls (``calls``,
    set per test), looks up the trainer class the checkpoint names as nnU-Net does (here the model folder's
    TRAINER part) and writes one empty segmentation per case."""

    calls: list = []
    dataset_json = {"file_ending": ".nii.gz"}

    def __init__(self, **kwargs) -> None:
        self.calls.append(("new", kwargs))

    def initialize_from_trained_model_folder(self, folder: str, folds: list, checkpoint_name: str) -> None:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        recursive_find_trainer_class_by_name(Path(folder).name.split("__")[0])
        self.calls.append(("init", folder, folds, checkpoint_name))

    def predict_from_files_sequential(self, cases, out_dir: str, save_probabilities: bool = False,
                                      overwrite: bool = True) -> None:  # fmt: skip
        self.calls.append(("predict", cases, out_dir, save_probabilities, overwrite))
        for files in cases:
            (Path(out_dir) / Path(files[0]).name.replace("_0000", "")).write_text("")


@pytest.fixture
def predictor_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """nnU-Net's predictor replaced by :class:`FakePredictor`; the list its calls go to."""
    import nnunetv2.inference.predict_from_raw_data as nnunet_inference

    monkeypatch.setattr(nnunet_inference, "nnUNetPredictor", type("Predictor", (FakePredictor,), {"calls": []}))
    return nnunet_inference.nnUNetPredictor.calls


def test_the_predictor_gets_the_lists_not_the_folder(tmp_path: Path, predictor_calls: list) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x_0000.nii.gz").touch()
    job = predict.ModelJob(tmp_path / "nnUNetTrainer__nnUNetPlans__2d", tmp_path / "out")
    predict.predict_models(tmp_path / "images", [job], ["all"], "cpu", predict.PredictOptions(resume=True))
    assert predictor_calls[1:] == [
        ("init", str(job.model_dir), ["all"], "checkpoint_final.pth"),
        ("predict", [[str(tmp_path / "images" / "x_0000.nii.gz")]], str(tmp_path / "out"), False, False),
    ]


@pytest.mark.parametrize(("trainer", "found"), [("nnUNetTrainerTopKDice", True), ("nnUNetTrainerNowhere", False)])
def test_the_checkpoints_trainer_is_looked_up_with_this_packages_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, predictor_calls: list, trainer: str, found: bool
) -> None:
    """Without nnUNet_extTrainer, nnU-Net found none of this package's trainers (a traceback, exit 1):
    ``topkdice predict`` searches their folder as ``topkdice train`` does, and names what it cannot find."""
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
    argv = ["predict", "-i", str(tmp_path / "nope"), "-d", "985", "-c", "2d", "--models", f"T={tmp_path / 'out'}"]
    assert main(argv) == 2
    assert f"topkdice predict: error: -i {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- checked before any model predicts

FAKE_DATASET = "Dataset985_Fake"
USER_TRAINER = "nnUNetTrainerMyOwn"  # trained with the user's nnUNet_extTrainer, which is not set now


def _fake_model(results: Path, trainer: str, checkpoint: str = "checkpoint_final.pth") -> Path:
    """A model folder of FAKE_DATASET's 2d configuration with ``checkpoint`` in fold 0 (empty: the predictor
    is faked) and the dataset.json nnU-Net copies there."""
    model_dir = results / FAKE_DATASET / f"{trainer}__nnUNetPlans__2d"
    (model_dir / "fold_0").mkdir(parents=True, exist_ok=True)
    (model_dir / "fold_0" / checkpoint).touch()
    (model_dir / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    return model_dir


@pytest.fixture
def fake_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``nnUNet_results`` with fold 0 of nnUNetTrainer, nnUNetTrainerTopKDice and USER_TRAINER, one image in
    ``tmp_path/images``, no other nnU-Net variable set; returns ``tmp_path``."""
    for trainer in ("nnUNetTrainer", "nnUNetTrainerTopKDice", USER_TRAINER):
        _fake_model(tmp_path / "results", trainer)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "case_0000.nii.gz").touch()
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_extTrainer"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


def _predict(root: Path, models: dict[str, Path], *extra: str) -> list[str]:
    """``topkdice predict`` of ``root/images`` with fold 0 of FAKE_DATASET's 2d ``models`` (trainer -> folder)."""
    pairs = [f"{trainer}={out}" for trainer, out in models.items()]
    return ["predict", "-i", str(root / "images"), "-d", FAKE_DATASET, "-c", "2d", "-f", "0", "-device", "cpu",
            "--models", *pairs, *extra]  # fmt: skip


def _exit_code_and_stderr(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int | str | None, str]:
    """``topkdice ARGV`` in this process: its exit code (argparse's usage errors included) and its stderr."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_an_unknown_trainer_of_a_later_model_fails_before_the_first_predicts(
    fake_models: Path, predictor_calls: list, capsys: pytest.CaptureFixture
) -> None:
    """The trainer of each model was looked up only when it predicted: the first model's predictions were
    complete when the second failed (exit 2 after writing them)."""
    first, second = fake_models / "first", fake_models / "second"
    code, err = _exit_code_and_stderr(_predict(fake_models, {"nnUNetTrainer": first, USER_TRAINER: second}), capsys)
    assert code == 2
    assert f"topkdice predict: error: --models: nnU-Net finds no trainer class {USER_TRAINER} (looked in " in err
    assert "add the folder of your trainer to nnUNet_extTrainer" in err
    assert predictor_calls == [] and not first.exists() and not second.exists()


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_an_output_folder_that_cannot_be_written_fails_before_the_first_predicts(
    fake_models: Path, predictor_calls: list, capsys: pytest.CaptureFixture, where: str
) -> None:
    """A second output folder that is a file, or lies below one, was a FileExistsError or NotADirectoryError
    traceback (exit 1) after the first model's predictions were written."""
    (fake_models / "a_file").write_text("")
    second = fake_models / "a_file" if where == "file" else fake_models / "a_file" / "out"
    first = fake_models / "first"
    code, err = _exit_code_and_stderr(_predict(fake_models, {"nnUNetTrainer": first, "nnUNetTrainerTopKDice": second}),
                                      capsys)  # fmt: skip
    assert code == 2
    a_file = fake_models / "a_file"
    problem = "is a file; expected a folder" if where == "file" else f"cannot be created: {a_file} is a file"
    assert f"topkdice predict: error: --models nnUNetTrainerTopKDice: the output folder {second} {problem}" in err
    assert predictor_calls == [] and not first.exists()


@pytest.mark.parametrize(
    ("environment", "dataset", "message"),
    [
        ({}, FAKE_DATASET, "nnUNet_results is not set: topkdice predict needs nnU-Net's nnUNet_results folder"),
        ({"nnUNet_results": "results"}, "Tiny", "-d must be an integer id or a name like Dataset123_Name, got 'Tiny'"),
    ],
    ids=["no-nnUNet_results", "not-a-dataset"],
)
def test_nnunet_folders_and_dataset_names_are_read_as_topkdice_train_reads_them(
    fake_models: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    environment: dict, dataset: str, message: str,
) -> None:  # fmt: skip
    """Both were nnU-Net's tracebacks (a RuntimeError, a ValueError), exit 1."""
    monkeypatch.delenv("nnUNet_results")
    for variable, folder in environment.items():
        monkeypatch.setenv(variable, str(fake_models / folder))
    argv = _predict(fake_models, {"nnUNetTrainer": fake_models / "out"})
    argv[argv.index("-d") + 1] = dataset
    assert _exit_code_and_stderr(argv, capsys) == (2, f"topkdice predict: error: {message}\n")
    assert not (fake_models / "out").exists()


def test_images_without_a_first_channel_of_the_datasets_ending_are_refused(
    fake_models: Path, predictor_calls: list, capsys: pytest.CaptureFixture
) -> None:
    """nnUNetv2_predict (and so topkdice predict) predicted 0 cases and exited 0."""
    images = fake_models / "images"
    (images / "case_0000.nii.gz").rename(images / "case_0000.nrrd")  # another format
    (images / "case_0000.nii").touch()  # another ending
    code, err = _exit_code_and_stderr(_predict(fake_models, {"nnUNetTrainer": fake_models / "out"}), capsys)
    assert code == 2
    assert f"topkdice predict: error: -i {images}: no file ends in _0000.nii.gz (nnU-Net's first channel" in err
    assert predictor_calls == [] and not (fake_models / "out").exists()


def test_a_checkpoint_only_in_seed_folders_is_named_there(
    fake_models: Path, predictor_calls: list, capsys: pytest.CaptureFixture
) -> None:
    """topkdice train puts runs in $nnUNet_results/seed_<S>; with nnUNet_results at the parent the message
    said only that the checkpoint does not exist."""
    results = fake_models / "results"
    for seed_folder in ("seed_3", "seed_1", "seed_x"):  # seed_x is no seed's root
        _fake_model(results / seed_folder, "nnUNetTrainerDiceCE")
    code, err = _exit_code_and_stderr(_predict(fake_models, {"nnUNetTrainerDiceCE": fake_models / "out"}), capsys)
    missing = results / FAKE_DATASET / "nnUNetTrainerDiceCE__nnUNetPlans__2d" / "fold_0" / "checkpoint_final.pth"
    assert code == 2
    assert err == (f"topkdice predict: error: {missing} does not exist: is nnUNetTrainerDiceCE trained (fold 0)?; "
                   f"it exists under {results / 'seed_1'}, {results / 'seed_3'}: seeded runs (topkdice train --seed S) "
                   f"live in nnUNet_results/seed_<S>, so set nnUNet_results={results / 'seed_1'} to predict with "
                   "that seed's model\n")  # fmt: skip
    assert predictor_calls == []


# ---------------------------------------------------------------- nnUNetv2_predict's flags


def test_chk_names_the_checkpoint_checked_up_front(
    fake_models: Path, predictor_calls: list, capsys: pytest.CaptureFixture
) -> None:
    """argparse read -chk as -c hk: "unrecognized arguments: checkpoint_best.pth"."""
    argv = _predict(fake_models, {"nnUNetTrainer": fake_models / "out"}, "-chk", "checkpoint_best.pth")
    code, err = _exit_code_and_stderr(argv, capsys)
    best = fake_models / "results" / FAKE_DATASET / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0" / "checkpoint_best.pth"
    assert (code, err) == (2, f"topkdice predict: error: {best} does not exist: is nnUNetTrainer trained (fold 0)?\n")
    assert predictor_calls == []


@pytest.mark.parametrize(
    ("flags", "settings"),
    [
        ([], (0.5, True, "checkpoint_final.pth", False, True)),
        (["-chk", "checkpoint_best.pth", "-step_size", "0.25", "--disable_tta", "--save_probabilities",
          "--continue_prediction"], (0.25, False, "checkpoint_best.pth", True, False)),  # fmt: skip
    ],
    ids=["defaults", "every-flag"],
)
def test_nnunetv2_predicts_settings_reach_the_predictor(
    fake_models: Path, predictor_calls: list, flags: list[str], settings: tuple
) -> None:
    """``(tile_step_size, use_mirroring, checkpoint_name, save_probabilities, overwrite)`` as nnUNetv2_predict
    sets them from the same flags (its predict_entry_point); the rest is its defaults."""
    _fake_model(fake_models / "results", "nnUNetTrainer", "checkpoint_best.pth")
    assert main(_predict(fake_models, {"nnUNetTrainer": fake_models / "out"}, *flags)) == 0
    (_, created), (_, _, folds, checkpoint), (_, _, _, probabilities, overwrite) = predictor_calls
    assert folds == [0] and (created["tile_step_size"], created["use_mirroring"], checkpoint, probabilities,
                             overwrite) == settings  # fmt: skip
    assert {key: created[key] for key in ("use_gaussian", "perform_everything_on_device")} == {
        "use_gaussian": True, "perform_everything_on_device": True}  # fmt: skip
    assert sorted(p.name for p in (fake_models / "out").iterdir()) == ["case.nii.gz"]


@pytest.mark.parametrize("value", ["0", "1.5", "nan", "half"])
def test_a_step_size_outside_0_1_is_a_usage_error(
    fake_models: Path, predictor_calls: list, capsys: pytest.CaptureFixture, value: str
) -> None:
    """nnU-Net asserts 0 < step <= 1 only when it predicts (an AssertionError traceback, exit 1)."""
    argv = _predict(fake_models, {"nnUNetTrainer": fake_models / "out"}, "-step_size", value)
    code, err = _exit_code_and_stderr(argv, capsys)
    meaning = "" if value == "half" else " (a fraction of the patch size)"
    assert code == 2
    assert f"topkdice predict: error: argument -step_size/--step-size: expected a number in (0, 1]{meaning}, got " \
           f"'{value}'\n" in err  # fmt: skip
    assert predictor_calls == []


REFUSED = [  # nnUNetv2_predict's flags that topkdice predict does not take: (flag, a value or None, why)
    ("-o", "out", "use --models TRAINER=OUTPUT_DIR, one output folder per model"),
    ("-tr", "nnUNetTrainer", "use --models TRAINER=OUTPUT_DIR, one output folder per model"),
    ("-npp", "2", "topkdice predict runs without worker processes (as nnUNetv2_predict -npp 0 -nps 0)"),
    ("-nps", "0", "topkdice predict runs without worker processes (as nnUNetv2_predict -npp 0 -nps 0)"),
    ("-prev_stage_predictions", "prev", "cascaded configurations are not supported; use nnUNetv2_predict"),
    ("-num_parts", "2", "topkdice predict predicts every case in one process; use nnUNetv2_predict to split"),
    ("-part_id", "1", "topkdice predict predicts every case in one process; use nnUNetv2_predict to split"),
    ("--verbose", None, "nnU-Net's verbose output is not offered"),
    ("--disable_progress_bar", None, "topkdice predict shows no progress bar"),
    ("--not_on_device", None, "topkdice predict keeps each case on the device (nnUNetv2_predict's default)"),
]


@pytest.mark.parametrize(("flag", "value", "why"), REFUSED, ids=[flag for flag, _, _ in REFUSED])
def test_nnunetv2_predicts_other_flags_are_refused_with_the_reason(
    fake_models: Path, predictor_calls: list, capsys: pytest.CaptureFixture, flag: str, value: str | None, why: str
) -> None:
    """-num_parts 2 was "unrecognized arguments" under topkdice's usage, -o and -tr the same."""
    argv = _predict(fake_models, {"nnUNetTrainer": fake_models / "out"}, flag, *([value] if value else []))
    code, err = _exit_code_and_stderr(argv, capsys)
    assert code == 2 and err.startswith("usage: topkdice predict ")
    assert f"\ntopkdice predict: error: {flag} (nnUNetv2_predict's) is not supported: {why}" in err
    assert predictor_calls == [] and not (fake_models / "out").exists()


def test_help_lists_the_supported_flags_only(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit, match="^0$"):
        main(["predict", "--help"])
    help_text = capsys.readouterr().out
    usage, options = help_text.split("\n\n")[0], help_text.split("\noptions:\n")[1]  # the description aside
    for flag in ("-chk", "-step_size", "--disable_tta", "--save_probabilities", "--continue_prediction"):
        assert f"[{flag}" in usage and re.search(rf"^  {flag}\b", options, re.MULTILINE), flag
    assert {flag for flag, _, _ in REFUSED} == set(predict.REFUSED_FLAGS)
    for flag, _, _ in REFUSED:
        assert not re.search(rf"(?<![\w-]){flag}(?![\w-])", usage + options), flag


def test_an_unknown_argument_shows_the_subcommands_usage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """argparse left a subcommand's unknown arguments to the top-level parser: "usage: topkdice [-h] ..."."""
    argv = ["predict", "-i", str(tmp_path), "-d", "1", "-c", "2d", "--models", f"T={tmp_path}", "--no-such-flag"]
    code, err = _exit_code_and_stderr(argv, capsys)
    assert code == 2 and err.startswith("usage: topkdice predict [-h] -i IMAGES")
    assert err.endswith("topkdice predict: error: unrecognized arguments: --no-such-flag\n")


@pytest.fixture(scope="module")
def trained(compare_sweep_2d: Sweep, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The 2d sweep's models (fold ``all`` of FIRST and SECOND, seed 0), its test images, and an own folder."""
    data = compare_sweep_2d.data
    for trainer in (FIRST, SECOND):
        assert (data.run_dir("2d", trainer, 0, "all") / "checkpoint_final.pth").is_file()
    # the models of seed 0 are where nnUNetv2_predict looks for them with this nnUNet_results
    env = {**data.env, "nnUNet_results": str(data.results / "seed_0")}
    return {"root": tmp_path_factory.mktemp("predict"), "images": data.dataset / "imagesTs", "env": env,
            "first_model": data.run_dir("2d", FIRST, 0, "all").parent}  # fmt: skip


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


#: nnU-Net's predictor called directly, one torch thread: ``python -c DIRECT MODEL_DIR IMAGES OUT CHECKPOINT STEP
#: MIRRORING``, probabilities saved.
DIRECT = """
import os
import sys
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

torch.set_num_threads(1)
model_dir, images, out, checkpoint, step, mirroring = sys.argv[1:]
os.makedirs(out, exist_ok=True)  # as nnUNetv2_predict makes -o
predictor = nnUNetPredictor(tile_step_size=float(step), use_gaussian=True, use_mirroring=mirroring == "1",
                            perform_everything_on_device=True, device=torch.device("cpu"), allow_tqdm=False)
predictor.initialize_from_trained_model_folder(model_dir, ["all"], checkpoint_name=checkpoint)
cases = create_lists_from_splitted_dataset_folder(images, predictor.dataset_json["file_ending"], num_processes=1)
predictor.predict_from_files_sequential(cases, out, save_probabilities=True, overwrite=True)
"""


def _model_with_another_checkpoint(model_dir: Path, results: Path) -> Path:
    """A copy of ``model_dir`` (fold ``all``) under the results root ``results``, with ``checkpoint_other.pth``:
    the final weights plus seeded noise (the 2d sweep's checkpoint_best.pth holds the final weights)."""
    import shutil

    import torch

    copy = results / model_dir.parent.name / model_dir.name
    (copy / "fold_all").mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "fold_all/checkpoint_final.pth"):
        shutil.copy(model_dir / name, copy / name)
    checkpoint = torch.load(model_dir / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for weights in checkpoint["network_weights"].values():
        if weights.is_floating_point():
            weights += 0.5 * weights.std(correction=0) * torch.randn(weights.shape, generator=generator)
    torch.save(checkpoint, copy / "fold_all" / "checkpoint_other.pth")
    return copy


def _tiled_images(images: Path, tiled: Path) -> Path:
    """Each image of ``images`` tiled 2 x 2 in-plane (16 x 16 -> 32 x 32, the 2d patch 16 x 16), so that the
    sliding window takes 2 x 2 steps of 1 and 3 x 3 of 0.5."""
    tiled.mkdir()
    for path in sorted(images.glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        big = sitk.GetImageFromArray(np.tile(sitk.GetArrayFromImage(image), (1, 2, 2)))  # (z, y, x)
        big.SetSpacing(image.GetSpacing())
        big.SetOrigin(image.GetOrigin())
        big.SetDirection(image.GetDirection())
        sitk.WriteImage(big, str(tiled / path.name))
    return tiled


@pytest.mark.slow
def test_nnunetv2_predicts_flags_write_what_nnunets_predictor_writes(trained: dict) -> None:
    """``-chk -step_size --disable_tta --save_probabilities`` write the files nnU-Net's predictor writes with the
    same settings, called directly; with its defaults the probabilities differ (the settings take effect)."""
    root = trained["root"] / "flags"
    model = _model_with_another_checkpoint(trained["first_model"], root / "results")
    images = _tiled_images(trained["images"], root / "images")
    env = {**trained["env"], "nnUNet_results": str(root / "results"), "TOPKDICE_CPU_THREADS": "1"}
    ours, theirs, defaults = root / "ours", root / "theirs", root / "defaults"
    argv = [TOPKDICE, "predict", "-i", images, "-d", str(DATASET_ID), "-c", "2d", "-f", "all", "-device", "cpu",
            "--models", f"{FIRST}={ours}", "-chk", "checkpoint_other.pth", "-step_size", "1", "--disable_tta",
            "--save_probabilities"]  # fmt: skip
    direct = [sys.executable, "-c", DIRECT, model, images]
    run_together([(argv, 0), ([*direct, theirs, "checkpoint_other.pth", "1", "0"], 0),
                  ([*direct, defaults, "checkpoint_final.pth", "0.5", "1"], 0)], env)  # fmt: skip
    names = sorted(p.name for p in theirs.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == names
    assert {"case004.nii.gz", "case004.npz", "case004.pkl", "case005.nii.gz", "case005.npz"} <= set(names)
    for case in ("case004", "case005"):
        (mine, mine_geometry), (their, their_geometry) = (_read(folder / f"{case}.nii.gz") for folder in (ours, theirs))
        assert mine.shape == (6, 32, 32) and np.array_equal(mine, their) and mine_geometry == their_geometry
        probabilities = {}
        for folder in (ours, theirs, defaults):
            with np.load(folder / f"{case}.npz") as npz:
                probabilities[folder.name] = npz["probabilities"]
        assert np.array_equal(probabilities["ours"], probabilities["theirs"])
        assert not np.allclose(probabilities["ours"], probabilities["defaults"], atol=1e-3)
