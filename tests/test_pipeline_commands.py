"""Fast tests of ``topkdice reproduce``/``demo``: command builders, on-disk state, runner, CLI errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_topkdice.cli import main
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.ext import trainer_dir
from nnunet_topkdice.pipeline import cli as pipeline_cli
from nnunet_topkdice.pipeline.demo import DEMO_DATASET_ID, demo_config
from nnunet_topkdice.pipeline.reproduce import (
    PAPER_DATASETS,
    Command,
    NnunetFolders,
    PipelineConfig,
    TrainingStatus,
    child_environment,
    convert_command,
    evaluate_command,
    find_dataset,
    gpu_slots,
    list_case_ids,
    missing_predictions,
    paper_trainers,
    plan_command,
    predict_command,
    preprocessing_complete,
    run_commands,
    train_command,
    training_dir,
    training_status,
)

# --- command builders ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "nnUNetv2_train 201 2d all -tr nnUNetTrainerTopKDice -device cuda"),
        ({"resume": True}, "nnUNetv2_train 201 2d all -tr nnUNetTrainerTopKDice -device cuda --c"),
        (
            {"num_gpus": 4, "resume": True},
            "nnUNetv2_train 201 2d all -tr nnUNetTrainerTopKDice -device cuda -num_gpus 4 --c",
        ),
        ({"num_gpus": 1}, "nnUNetv2_train 201 2d all -tr nnUNetTrainerTopKDice -device cuda"),
    ],
    ids=["new", "resume", "ddp-resume", "one-gpu-no-flag"],
)
def test_train_command(kwargs: dict, expected: str) -> None:
    assert " ".join(train_command(201, "all", "nnUNetTrainerTopKDice", "cuda", **kwargs)) == expected


@pytest.mark.parametrize(
    ("resume", "tail"), [(False, []), (True, ["--continue_prediction"])], ids=["fresh", "continue"]
)
def test_predict_command(resume: bool, tail: list[str]) -> None:
    argv = predict_command(
        Path("/raw/D/imagesTs"), Path("/w/pred/T"), 202, "0", "T", "cpu", num_processes=3, resume=resume
    )
    assert argv == [
        "nnUNetv2_predict", "-i", "/raw/D/imagesTs", "-o", "/w/pred/T", "-d", "202", "-c", "2d",
        "-f", "0", "-tr", "T", "-device", "cpu", "-npp", "3", "-nps", "3", *tail,
    ]  # fmt: skip


def test_plan_and_convert_commands() -> None:
    assert plan_command(203, 2) == [
        "nnUNetv2_plan_and_preprocess", "-d", "203", "-c", "2d", "-np", "2", "-npfp", "2",
        "--verify_dataset_integrity",
    ]  # fmt: skip
    assert convert_command("msseg", Path("/data/ms"), Path("/raw"), 203, 4) == [
        "topkdice", "convert", "msseg", "-i", "/data/ms", "-o", "/raw", "-d", "203", "-np", "4",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("paper", "tail"), [(None, []), ("synapse", ["--paper", "synapse"])], ids=["no-paper", "paper"]
)
def test_evaluate_command_keeps_run_order_and_names(paper: str | None, tail: list[str]) -> None:
    runs = {"CE + Dice": Path("/p/a"), "CE + topK-Dice": Path("/p/b")}
    argv = evaluate_command(Path("/labelsTs"), runs, 201, Path("/out"), paper=paper, num_processes=2)
    assert argv == [
        "topkdice", "evaluate", "-r", "/labelsTs", "-p", "CE + Dice=/p/a", "CE + topK-Dice=/p/b",
        "-d", "201", "-o", "/out", "-np", "2", *tail,
    ]  # fmt: skip


def test_evaluate_command_parses_back_with_the_evaluate_cli() -> None:
    # The argv we build is accepted by the real `topkdice evaluate` parser, names with spaces included.
    from nnunet_topkdice.cli import build_parser

    runs = {"CE + Dice": Path("/p/a"), "nnUNetTrainerX": Path("/p/b")}
    argv = evaluate_command(Path("/labelsTs"), runs, 201, Path("/out"), paper="synapse", num_processes=2)
    args = build_parser().parse_args(argv[1:])
    assert args.predictions == [("CE + Dice", Path("/p/a")), ("nnUNetTrainerX", Path("/p/b"))]
    assert (args.dataset, args.paper, args.num_processes) == ("201", "synapse", 2)


def test_shell_line_quotes_and_shows_environment() -> None:
    command = Command(("topkdice", "evaluate", "-p", "CE + Dice=/p"), {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert command.shell() == "CUDA_VISIBLE_DEVICES=0,1 topkdice evaluate -p 'CE + Dice=/p'"


@pytest.mark.parametrize(
    ("gpus", "per_training", "expected"),
    [
        (["0", "1", "2", "3"], 1, ["0", "1", "2", "3"]),
        (["0", "1", "2", "3"], 2, ["0,1", "2,3"]),
        (["4", "5", "6"], 2, ["4,5"]),
    ],
    ids=["one-each", "pairs", "leftover-unused"],
)
def test_gpu_slots(gpus: list[str], per_training: int, expected: list[str]) -> None:
    assert gpu_slots(gpus, per_training) == expected


def test_gpu_slots_rejects_too_few_gpus() -> None:
    with pytest.raises(InputError, match="lists 1 GPU.*asks for 2"):
        gpu_slots(["0"], 2)


# --- trainers of the paper's table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "schedule", "topk_dice", "topk_ce"),
    [
        ("synapse", "nnunet", "nnUNetTrainerTopKDice", "nnUNetTrainerTopKCEDice"),
        ("acdc", "paper", "nnUNetTrainerTopKDicePaper", "nnUNetTrainerTopKCEDicePaper"),
        ("msseg", "nnunet", "nnUNetTrainerTopKDice30", "nnUNetTrainerTopKCEDice30"),
        ("msseg", "paper", "nnUNetTrainerTopKDice30Paper", "nnUNetTrainerTopKCEDice30Paper"),
    ],
    ids=["synapse-k50", "acdc-paper-k50", "msseg-k30", "msseg-paper-k30"],
)
def test_paper_trainers_use_the_papers_k(dataset: str, schedule: str, topk_dice: str, topk_ce: str) -> None:
    rows = paper_trainers(dataset, schedule)
    assert list(rows) == ["CE", "CE + Dice", "focal + Dice", "topK + Dice", "CE + topK-Dice"]
    assert rows["CE + topK-Dice"] == topk_dice
    assert rows["topK + Dice"] == topk_ce


def test_paper_trainers_rejects_unknown_schedule() -> None:
    with pytest.raises(InputError, match="unknown schedule 'fast'"):
        paper_trainers("synapse", "fast")


def test_cli_choices_match_the_pipeline() -> None:
    assert pipeline_cli.DATASET_CHOICES == tuple(PAPER_DATASETS)
    assert {d.default_fold for d in PAPER_DATASETS.values()} <= set(pipeline_cli.FOLD_CHOICES)


def test_default_folds_follow_the_papers_protocol() -> None:
    assert {k: d.default_fold for k, d in PAPER_DATASETS.items()} == {"synapse": "all", "acdc": "0", "msseg": "all"}


# --- state on disk ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([], TrainingStatus.NEW),
        (["checkpoint_latest.pth"], TrainingStatus.INTERRUPTED),
        (["checkpoint_best.pth"], TrainingStatus.INTERRUPTED),
        (["checkpoint_latest.pth", "checkpoint_final.pth"], TrainingStatus.DONE),
    ],
    ids=["nothing", "latest", "best-only", "final"],
)
def test_training_status(tmp_path: Path, files: list[str], expected: TrainingStatus) -> None:
    run_dir = training_dir(tmp_path, "T", "all")
    assert run_dir == tmp_path / "T__nnUNetPlans__2d" / "fold_all"
    run_dir.mkdir(parents=True)
    for name in files:
        (run_dir / name).touch()
    assert training_status(run_dir) is expected


def test_preprocessing_complete_counts_cases(tmp_path: Path) -> None:
    assert not preprocessing_complete(tmp_path, 2)
    (tmp_path / "nnUNetPlans.json").write_text("{}")
    (tmp_path / "nnUNetPlans_2d").mkdir()
    (tmp_path / "nnUNetPlans_2d" / "case1.pkl").touch()
    assert not preprocessing_complete(tmp_path, 2)  # interrupted after one case
    (tmp_path / "nnUNetPlans_2d" / "case2.pkl").touch()
    assert preprocessing_complete(tmp_path, 2)


def test_missing_predictions_include_stale_ones(tmp_path: Path) -> None:
    images = tmp_path / "imagesTs"
    images.mkdir()
    for case in ("case0001", "case0002", "case0003"):
        (images / f"{case}_0000.nii.gz").touch()
    assert list_case_ids(images, ".nii.gz") == ["case0001", "case0002", "case0003"]
    pred, checkpoint = tmp_path / "pred", tmp_path / "checkpoint_final.pth"
    pred.mkdir()
    checkpoint.touch()
    os.utime(checkpoint, (1000, 1000))
    (pred / "case0001.nii.gz").touch()  # newer than the checkpoint: current
    (pred / "case0002.nii.gz").touch()
    os.utime(pred / "case0002.nii.gz", (500, 500))  # predicted by an older model: stale
    assert missing_predictions(["case0001", "case0002", "case0003"], pred, ".nii.gz", checkpoint) == [
        "case0002",
        "case0003",
    ]


def test_find_dataset(tmp_path: Path) -> None:
    assert find_dataset(tmp_path, 201) is None
    (tmp_path / "Dataset201_Synapse").mkdir()
    (tmp_path / "Dataset020_Other").mkdir()
    assert find_dataset(tmp_path, 201) == tmp_path / "Dataset201_Synapse"
    (tmp_path / "Dataset201_Copy").mkdir()
    with pytest.raises(InputError, match="several datasets with id 201"):
        find_dataset(tmp_path, 201)


# --- environment ------------------------------------------------------------------------------------


def test_folders_come_from_the_environment_or_the_workdir(tmp_path: Path) -> None:
    folders = NnunetFolders.resolve(tmp_path, {"nnUNet_results": "/res"})
    assert folders.raw == tmp_path / "nnUNet_raw"
    assert folders.preprocessed == tmp_path / "nnUNet_preprocessed"
    assert folders.results == Path("/res")
    assert folders.from_environment == ("nnUNet_results",)


def _config(tmp_path: Path, **kwargs) -> PipelineConfig:
    defaults = dict(
        dataset="synapse",
        dataset_id=201,
        trainers={"CE + Dice": "nnUNetTrainer"},
        fold="all",
        device="cpu",
        workdir=tmp_path,
        folders=NnunetFolders.resolve(tmp_path, {}),
    )
    return PipelineConfig(**{**defaults, **kwargs})


def test_child_environment_keeps_the_users_trainers_first(tmp_path: Path) -> None:
    user = {"PATH": "/bin", "nnUNet_extTrainer": "/mine"}
    env = child_environment(_config(tmp_path, extra_env={"nnUNet_def_n_proc": "2"}), user)
    assert env["nnUNet_extTrainer"] == os.pathsep.join(["/mine", str(trainer_dir())])
    assert env["nnUNet_raw"] == str(tmp_path / "nnUNet_raw")
    assert (env["PATH"], env["nnUNet_def_n_proc"]) == ("/bin", "2")


def test_demo_config(tmp_path: Path) -> None:
    config = demo_config(tmp_path, device="cpu", environ={"nnUNet_n_proc_DA": "3"})
    assert config.trainers == {"CE + Dice": "nnUNetTrainerDiceCEDemo", "CE + topK-Dice": "nnUNetTrainerTopKDiceDemo"}
    assert (config.dataset_id, config.fold, config.paper) == (DEMO_DATASET_ID, "all", None)
    assert config.folders.raw == tmp_path.resolve() / "nnUNet_raw"
    assert config.train_env == {}  # the user's nnUNet_n_proc_DA wins
    assert config.extra_env == {"nnUNet_def_n_proc": "2"}
    every_row = demo_config(tmp_path, device="cpu", all_rows=True, environ={})
    assert len(every_row.trainers) == 5 and every_row.train_env == {"nnUNet_n_proc_DA": "0"}


# --- runner -----------------------------------------------------------------------------------------

_WRITE_GPU = "import os, sys; open(sys.argv[1], 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', '-'))"


def test_run_commands_concurrently_one_slot_each(tmp_path: Path) -> None:
    commands = [
        Command((sys.executable, "-c", _WRITE_GPU, str(tmp_path / f"{i}.txt")), name=f"job{i}") for i in range(3)
    ]
    slots = [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    run_commands(commands, dict(os.environ), slots=slots, log_dir=tmp_path / "logs")
    seen = [(tmp_path / f"{i}.txt").read_text() for i in range(3)]
    assert sorted(seen[:2]) == ["0", "1"] and seen[2] in ("0", "1")
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["job0.log", "job1.log", "job2.log"]


def test_run_commands_concurrent_failure_is_raised_after_the_others(tmp_path: Path) -> None:
    fail = Command((sys.executable, "-c", "raise SystemExit(3)"), name="fail")
    ok = Command((sys.executable, "-c", _WRITE_GPU, str(tmp_path / "ok.txt")), name="ok")
    slots = [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    with pytest.raises(subprocess.CalledProcessError) as info:
        run_commands([fail, ok], dict(os.environ), slots=slots, log_dir=tmp_path)
    assert info.value.returncode == 3
    assert (tmp_path / "ok.txt").read_text() == "1"


def test_run_commands_sequential_stops_at_a_failure(tmp_path: Path) -> None:
    fail = Command((sys.executable, "-c", "raise SystemExit(4)"))
    ok = Command((sys.executable, "-c", _WRITE_GPU, str(tmp_path / "ok.txt")))
    with pytest.raises(subprocess.CalledProcessError):
        run_commands([fail, ok], dict(os.environ))
    assert not (tmp_path / "ok.txt").exists()


# --- command line -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cpu", "--gpus", "0,1"], "--gpus and --num-gpus need --device cuda"),
        (["--device", "cpu"], "is not in .* yet: give its source with -i"),
        (["--device", "cpu", "-i", "does-not-exist"], "does-not-exist: not a folder"),
    ],
    ids=["gpus-on-cpu", "no-input", "missing-input"],
)
def test_reproduce_input_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--dataset", "synapse", "-w", str(tmp_path), *argv]) == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.startswith("topkdice reproduce: error:")
    assert re.search(message, last_line)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpus", "0,a"], "expected distinct GPU ids"),
        (["--gpus", "1,1"], "expected distinct GPU ids"),
        (["--num-gpus", "0"], "expected a positive integer"),
        (["--fold", "7"], "invalid choice: '7'"),
        (["--schedule", "demo"], "invalid choice: 'demo'"),
    ],
    ids=["gpu-not-int", "gpu-twice", "num-gpus-0", "fold", "schedule"],
)
def test_reproduce_usage_errors(capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "--dataset", "synapse", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
