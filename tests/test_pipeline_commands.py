"""Fast tests of the pipeline: command builders, on-disk state, steps of a comparison, runner, SLURM, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnunet_topkdice.cli import main
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.ext import trainer_dir
from nnunet_topkdice.paper_datasets import PAPER_DATASETS
from nnunet_topkdice.pipeline import cli as pipeline_cli
from nnunet_topkdice.pipeline import commands, state
from nnunet_topkdice.pipeline.compare import (
    CompareConfig,
    child_environment,
    compare_steps,
    evaluation_runs,
    reference_dir,
    resolve_plan,
    training_jobs,
)
from nnunet_topkdice.pipeline.demo import DEMO_DATASET_ID, DEMO_SEEDS, demo_config
from nnunet_topkdice.pipeline.progress import TrainingProgress
from nnunet_topkdice.pipeline.reproduce import paper_trainers, table_names
from nnunet_topkdice.pipeline.runner import describe_steps, run_steps
from nnunet_topkdice.pipeline.slurm import slurm_resources, slurm_script
from nnunet_topkdice.pipeline.steps import Command, Step

# --- command builders ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "topkdice train --seed 0 201 2d all -tr T -device cuda"),
        ({"resume": True, "seed": 3}, "topkdice train --seed 3 201 2d all -tr T -device cuda --c"),
        ({"validation_only": True}, "topkdice train --seed 0 201 2d all -tr T -device cuda --val"),
        (
            {"num_gpus": 4, "plans": "nnUNetResEncUNetMPlans"},
            "topkdice train --seed 0 201 2d all -tr T -p nnUNetResEncUNetMPlans -device cuda -num_gpus 4",
        ),
    ],
    ids=["new", "resume", "validation", "ddp-resenc"],
)
def test_train_command(kwargs: dict, expected: str) -> None:
    kwargs = {"seed": 0, **kwargs}
    assert " ".join(commands.train_command(201, "2d", "all", "T", device="cuda", **kwargs)) == expected


def test_predict_command_ensembles_folds_and_resumes() -> None:
    argv = commands.predict_command(
        Path("/raw/D/imagesTs"), [("T", Path("/w/p")), ("U", Path("/w/q"))], 4, "3d_fullres", ["0", "1"],
        plans="P", device="cpu", resume=True,
    )  # fmt: skip
    assert argv == [
        "topkdice", "predict", "-i", "/raw/D/imagesTs", "-d", "4", "-c", "3d_fullres", "-f", "0", "1",
        "-p", "P", "-device", "cpu", "--models", "T=/w/p", "U=/w/q", "--continue_prediction",
    ]  # fmt: skip
    from nnunet_topkdice.cli import build_parser

    args = build_parser().parse_args(argv[1:])  # what it builds is what topkdice predict reads
    assert args.models == [("T", Path("/w/p")), ("U", Path("/w/q"))]
    assert (args.folds, args.plans, args.device, args.continue_prediction) == (["0", "1"], "P", "cpu", True)


def test_plan_commands_pick_nnunets_planner() -> None:
    assert commands.plan_command(203, "2d", "nnUNetPlans", 2) == [
        "nnUNetv2_plan_and_preprocess", "-d", "203", "-c", "2d", "-np", "2", "-npfp", "2",
        "--verify_dataset_integrity",
    ]  # fmt: skip
    assert "-pl nnUNetPlannerResEncM" in " ".join(commands.plan_command(4, "3d_fullres", "nnUNetResEncUNetMPlans", 1))
    with pytest.raises(ValueError, match="plans 'MyPlans' not found and no nnU-Net planner"):
        commands.plan_command(4, "2d", "MyPlans", 1)
    assert commands.preprocess_command(4, "3d_lowres", "MyPlans", 2) == [
        "nnUNetv2_preprocess", "-d", "4", "-plans_name", "MyPlans", "-c", "3d_lowres", "-np", "2",
    ]  # fmt: skip


def test_evaluate_command_repeats_a_name_per_seed_and_parses_back() -> None:
    from nnunet_topkdice.cli import build_parser

    runs = [("CE + Dice", Path("/p/a0")), ("CE + Dice", Path("/p/a1")), ("X", Path("/p/b0"))]
    argv = commands.evaluate_command(Path("/labels"), runs, 201, Path("/out"), baseline="CE + Dice", paper="synapse",
                                     images_dir=Path("/raw/imagesTs"))  # fmt: skip
    assert argv == [
        "topkdice", "evaluate", "-r", "/labels", "-pred", "CE + Dice=/p/a0", "CE + Dice=/p/a1", "X=/p/b0",
        "--baseline", "CE + Dice", "-d", "201", "-o", "/out", "-np", "1", "--paper", "synapse",
        "--images", "/raw/imagesTs",
    ]  # fmt: skip
    args = build_parser().parse_args(argv[1:])
    assert args.predictions == [(n, p) for n, p in runs]
    assert args.images == Path("/raw/imagesTs")


def test_shell_line_quotes_and_shows_environment() -> None:
    command = Command(("topkdice", "evaluate", "-pred", "CE + Dice=/p"), {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert command.shell() == "CUDA_VISIBLE_DEVICES=0,1 topkdice evaluate -pred 'CE + Dice=/p'"


@pytest.mark.parametrize(
    ("gpus", "per_training", "expected"),
    [
        (("0", "1", "2", "3"), 1, ("0", "1", "2", "3")),
        (("0", "1", "2", "3"), 2, ("0,1", "2,3")),
        (("4", "5", "6"), 2, ("4,5",)),
    ],
    ids=["one-each", "pairs", "leftover-unused"],
)
def test_gpu_slots(gpus: tuple, per_training: int, expected: tuple) -> None:
    assert pipeline_cli.gpu_slots(gpus, per_training) == expected


def test_gpu_slots_rejects_too_few_gpus() -> None:
    with pytest.raises(InputError, match="lists 1 GPU.*asks for 2"):
        pipeline_cli.gpu_slots(("0",), 2)


# --- the paper's presets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "schedule", "topk_dice", "topk_ce"),
    [
        ("synapse", "nnunet", "nnUNetTrainerTopKDice", "nnUNetTrainerTopKCEDice"),
        ("acdc", "paper", "nnUNetTrainerTopKDicePaper", "nnUNetTrainerTopKCEDicePaper"),
        ("msseg", "nnunet", "nnUNetTrainerTopKDice30", "nnUNetTrainerTopKCEDice30"),
    ],
    ids=["synapse-k50", "acdc-paper-k50", "msseg-k30"],
)
def test_paper_trainers_use_the_papers_k(dataset: str, schedule: str, topk_dice: str, topk_ce: str) -> None:
    rows = paper_trainers(dataset, schedule)
    assert list(rows) == ["CE", "CE + Dice", "focal + Dice", "topK + Dice", "CE + topK-Dice"]
    assert (rows["CE + topK-Dice"], rows["topK + Dice"]) == (topk_dice, topk_ce)


def test_trainers_of_a_row_keep_the_rows_name() -> None:
    assert table_names("synapse", "nnunet", ["nnUNetTrainerTopKDice", "MyTrainer", "MyTrainer"]) == {
        "CE + topK-Dice": "nnUNetTrainerTopKDice",
        "MyTrainer": "MyTrainer",
    }


def test_the_demos_comparison_is_named_without_importing_a_trainer(tmp_path: Path) -> None:
    # nnU-Net's trainer module takes seconds to import: a demo or reproduce with nothing left to do (and any
    # --dry-run) must not pay them to learn the trainers' names
    code = (
        "import sys; from pathlib import Path; from nnunet_topkdice.pipeline.demo import demo_config; "
        "from nnunet_topkdice.pipeline.reproduce import every_row_trainer; "
        f"config = demo_config(Path({str(tmp_path)!r}), device='cpu', environ={{}}); "
        "every_row_trainer('msseg', 'paper'); print(sorted(config.trainers.values())); "
        "heavy = ('torch', 'nnunetv2.training', 'nnunet_topkdice.trainers'); "
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    trainers, imported = done.stdout.splitlines()
    assert trainers == "['nnUNetTrainerDiceCEDemo', 'nnUNetTrainerTopKDiceDemo']" and imported == "[]"


def test_paper_trainers_rejects_unknown_schedule() -> None:
    with pytest.raises(InputError, match="unknown schedule 'fast'"):
        paper_trainers("synapse", "fast")


def test_default_folds_follow_the_papers_protocol() -> None:
    assert {k: d.default_fold for k, d in PAPER_DATASETS.items()} == {"synapse": "all", "acdc": "0", "msseg": "all"}
    assert {d.default_fold for d in PAPER_DATASETS.values()} <= set(pipeline_cli.FOLD_CHOICES)


def test_demo_config(tmp_path: Path) -> None:
    config = demo_config(tmp_path, device="cpu", environ={"nnUNet_n_proc_DA": "3"})
    assert config.trainers == {"CE + Dice": "nnUNetTrainerDiceCEDemo", "CE + topK-Dice": "nnUNetTrainerTopKDiceDemo"}
    assert (config.dataset_id, config.folds, config.test_set, config.paper) == (DEMO_DATASET_ID, ("all",), True, None)
    assert (config.seeds, config.baseline_name) == (DEMO_SEEDS, "CE + Dice")
    assert config.folders.raw == tmp_path.resolve() / "nnUNet_raw"
    assert config.train_env == {}  # the user's nnUNet_n_proc_DA wins
    assert config.extra_env == {"nnUNet_def_n_proc": "2"}
    every_row = demo_config(tmp_path, device="cpu", all_rows=True, environ={})
    assert len(every_row.trainers) >= 5 and every_row.train_env == {"nnUNet_n_proc_DA": "0"}


# --- state on disk ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([], state.TrainingStatus.NEW),
        (["checkpoint_latest.pth"], state.TrainingStatus.INTERRUPTED),
        (["checkpoint_best.pth"], state.TrainingStatus.INTERRUPTED),
        (["checkpoint_latest.pth", "checkpoint_final.pth"], state.TrainingStatus.DONE),
    ],
    ids=["nothing", "latest", "best-only", "final"],
)
def test_training_status(tmp_path: Path, files: list[str], expected: state.TrainingStatus) -> None:
    run_dir = state.training_dir(tmp_path, "T", "P", "3d_fullres", "1")
    assert run_dir == tmp_path / "T__P__3d_fullres" / "fold_1"
    run_dir.mkdir(parents=True)
    for name in files:
        (run_dir / name).touch()
    assert state.training_status(run_dir) is expected


def _plans(folder: Path, plans: str = "nnUNetPlans") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    configurations = {
        "2d": {"data_identifier": f"{plans}_2d"},
        "3d_fullres": {"data_identifier": f"{plans}_3d_fullres"},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres"},
    }
    (folder / f"{plans}.json").write_text(json.dumps({"configurations": configurations}))


def test_preprocessing_complete_reads_the_plans_and_counts_cases(tmp_path: Path) -> None:
    assert not state.preprocessing_complete(tmp_path, "nnUNetPlans", "2d", 2)
    _plans(tmp_path)
    assert state.plans_configurations(tmp_path / "nnUNetPlans.json")["3d_cascade_fullres"] == "nnUNetPlans_3d_fullres"
    (tmp_path / "nnUNetPlans_3d_fullres").mkdir()
    (tmp_path / "nnUNetPlans_3d_fullres" / "case1.pkl").touch()
    assert not state.preprocessing_complete(tmp_path, "nnUNetPlans", "3d_fullres", 2)  # interrupted after one case
    (tmp_path / "nnUNetPlans_3d_fullres" / "case2.pkl").touch()
    assert state.preprocessing_complete(tmp_path, "nnUNetPlans", "3d_fullres", 2)
    with pytest.raises(InputError, match="configuration '3d_lowres' is not in"):
        state.preprocessing_complete(tmp_path, "nnUNetPlans", "3d_lowres", 2)


def test_missing_files_include_stale_ones(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint_final.pth"
    checkpoint.touch()
    os.utime(checkpoint, (1000, 1000))
    (tmp_path / "case0001.nii.gz").touch()  # newer than the checkpoint: current
    (tmp_path / "case0002.nii.gz").touch()
    os.utime(tmp_path / "case0002.nii.gz", (500, 500))  # predicted by an older model: stale
    cases = ["case0001", "case0002", "case0003"]
    assert state.missing_files(cases, tmp_path, ".nii.gz", checkpoint) == ["case0002", "case0003"]


def test_nnunet_split_is_nnunets_own(tmp_path: Path) -> None:
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    cases = [f"case{i:02d}" for i in range(10)]
    state.write_splits(tmp_path, state.nnunet_split(list(reversed(cases))))
    assert state.read_splits(tmp_path) == json.loads(json.dumps(generate_crossval_split(cases, seed=12345, n_splits=5)))
    assert state.validation_cases(state.read_splits(tmp_path), ["0"])["0"] == sorted(
        state.read_splits(tmp_path)[0]["val"]
    )
    with pytest.raises(InputError, match="fold 5 is not in the dataset's splits_final.json"):
        state.validation_cases(state.read_splits(tmp_path), ["5"])


def test_link_files_links_once_and_replaces_stale(tmp_path: Path) -> None:
    source = tmp_path / "a.nii.gz"
    source.write_text("x")
    out = tmp_path / "out"
    assert not state.files_linked({"a.nii.gz": source}, out)
    state.link_files({"a.nii.gz": source}, out)
    assert os.path.samefile(source, out / "a.nii.gz") and state.files_linked({"a.nii.gz": source}, out)
    source.unlink()
    source.write_text("retrained")  # a new file (a new inode), as nnU-Net writes after retraining
    assert not state.files_linked({"a.nii.gz": source}, out)
    state.link_files({"a.nii.gz": source}, out)
    assert (out / "a.nii.gz").read_text() == "retrained"


def test_link_files_removes_the_files_not_asked_for(tmp_path: Path) -> None:
    """A case of an earlier run's folds stayed in the folder and was evaluated again (issue: fewer folds)."""
    sources = {name: tmp_path / name for name in ("a.nii.gz", "b.nii.gz")}
    for source in sources.values():
        source.write_text("x")
    out = tmp_path / "out"
    state.link_files(sources, out)
    (out / ".c.nii.gz.tmp").write_text("a copy in progress")
    smaller = {"a.nii.gz": sources["a.nii.gz"]}
    assert not state.files_linked(smaller, out)  # b is not asked for any more
    state.link_files(smaller, out)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.nii.gz"]
    assert state.files_linked(smaller, out) and sources["b.nii.gz"].read_text() == "x"  # the source stays


def test_evaluation_stamp_changes_with_the_files_read(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    for case in ("a", "b"):
        (folder / f"{case}.nii.gz").write_text("x")
    before = state.evaluation_stamp(["evaluate"], [folder], ".nii.gz")
    os.utime(folder / "b.nii.gz", (0, 0))
    (folder / "b.nii.gz").unlink()  # the newest file's time is a's: only the listing tells them apart
    after = state.evaluation_stamp(["evaluate"], [folder], ".nii.gz")
    assert before["command"] == after["command"] and before["files"] != after["files"]


def test_parse_dataset() -> None:
    assert state.parse_dataset("4") == (4, None)
    assert state.parse_dataset("Dataset004_Hippocampus") == (4, "Dataset004_Hippocampus")
    with pytest.raises(InputError, match="expected a dataset id"):
        state.parse_dataset("Hippocampus")


def test_find_dataset(tmp_path: Path) -> None:
    assert state.find_dataset(tmp_path, 201) is None
    (tmp_path / "Dataset201_Synapse").mkdir()
    assert state.find_dataset(tmp_path, 201) == tmp_path / "Dataset201_Synapse"
    (tmp_path / "Dataset201_Copy").mkdir()
    with pytest.raises(InputError, match="several datasets with id 201"):
        state.find_dataset(tmp_path, 201)


def test_folders_come_from_the_environment_or_the_workdir(tmp_path: Path) -> None:
    folders = state.NnunetFolders.resolve(tmp_path, {"nnUNet_results": "/res"})
    assert (folders.raw, folders.results) == (tmp_path.resolve() / "nnUNet_raw", Path("/res"))
    assert folders.from_environment == ("nnUNet_results",)


# --- the steps of a comparison ------------------------------------------------------------------------


def _config(tmp_path: Path, **kwargs) -> CompareConfig:
    raw = tmp_path / "nnUNet_raw" / "Dataset004_Hippo"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "numTraining": 4}))
    defaults = dict(
        dataset_id=4, raw_dataset=raw, configuration="3d_fullres", trainers={"A": "TrainerA", "B": "TrainerB"},
        workdir=tmp_path / "work", folders=state.NnunetFolders.resolve(tmp_path, {}), seeds=(0, 1), device="cpu",
    )  # fmt: skip
    return CompareConfig(**{**defaults, **kwargs})


def test_crossval_steps_in_order(tmp_path: Path) -> None:
    config = _config(tmp_path, folds=("0", "1"))
    names = [step.name for step in compare_steps(resolve_plan(config))]
    trainings = [f"train_Trainer{t}_seed{s}_fold{f}" for s in (0, 1) for t in "AB" for f in (0, 1)]
    collects = [f"collect_Trainer{t}_seed{s}" for s in (0, 1) for t in "AB"]
    # folds 0 1 of nnU-Net's 5: only their cases are the reference
    assert names == ["preprocess", "split", *trainings, "collect_reference", *collects, "evaluate"]
    assert reference_dir(resolve_plan(config)) == config.workdir / "crossval" / "reference"
    assert evaluation_runs(resolve_plan(config))[:2] == [("A", config.workdir / "crossval" / "TrainerA" / "seed_0"),
                                           ("A", config.workdir / "crossval" / "TrainerA" / "seed_1")]  # fmt: skip
    # the case pictures of cross-validation cases come from imagesTr
    last = describe_steps(compare_steps(resolve_plan(config)))[-1]
    assert last.endswith(f"--images {config.raw_dataset / 'imagesTr'}")


def test_plan_reads_the_dataset_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps ask the plan, not the disk: dataset.json and splits_final.json are each read once,
    however many steps are built, listed and asked whether they are done."""
    config = _config(tmp_path, folds=("0", "1"))
    raw = config.raw_dataset
    for case in range(6):  # nnU-Net's split needs at least 5 training cases
        (raw / "imagesTr").mkdir(exist_ok=True)
        (raw / "imagesTr" / f"case{case}_0000.nii.gz").touch()
    state.write_splits(_mkdir(config.preprocessed_dataset), state.nnunet_split([f"case{c}" for c in range(6)]))
    reads: list[str] = []
    read_text = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self.name) or read_text(self, *a, **k))
    plan = resolve_plan(config)
    describe_steps(compare_steps(plan))
    assert sorted(reads) == ["dataset.json", "splits_final.json"]
    assert plan.folds == ("0", "1") and plan.file_ending == ".nii.gz" and plan.num_training == 4
    assert plan.validation_cases()["0"] == sorted(state.read_splits(config.preprocessed_dataset)[0]["val"])


def test_plan_of_a_dataset_without_split_is_nnunets_split(tmp_path: Path) -> None:
    """Cross-validation without splits_final.json: the plan holds the split nnU-Net would write (from its
    own listing of the raw training cases), and the split step writes exactly that."""
    config = _config(tmp_path)
    (config.raw_dataset / "imagesTr").mkdir()
    cases = [f"case{c}" for c in range(7)]
    for case in cases:
        (config.raw_dataset / "imagesTr" / f"{case}_0000.nii.gz").touch()
    plan = resolve_plan(config)
    assert plan.folds == ("0", "1", "2", "3", "4") and not plan.split_on_disk
    steps = {step.name: step for step in compare_steps(plan)}
    _mkdir(config.preprocessed_dataset)
    steps["split"].action(tmp_path / "split.log")
    assert state.read_splits(config.preprocessed_dataset) == state.nnunet_split(cases)
    assert steps["split"].done() == "split exists"


def _splits_over(config: CompareConfig, cases: list[str], n_folds: int) -> None:
    folds = [cases[i::n_folds] for i in range(n_folds)]
    splits = [{"train": [c for c in cases if c not in val], "val": val} for val in folds]
    state.write_splits(_mkdir(config.preprocessed_dataset), splits)


def _validate(config: CompareConfig, trainer: str, seed: int, folds: dict[str, list[str]]) -> None:
    for fold, cases in folds.items():
        validation = _mkdir(config.training_dir(trainer, seed, fold) / "validation")
        for case in cases:
            (validation / f"{case}.nii.gz").write_text(f"{trainer} {seed} {case}")


def test_the_reference_and_the_predictions_hold_the_cases_of_the_folds_asked_for(tmp_path: Path) -> None:
    """Folds 0 1, then fold 0 alone: fold 1's cases were still scored (and, with a seed added, the
    evaluation failed on them); a split of one's own that leaves cases out failed after every training."""
    config = _config(tmp_path, folds=("0", "1"), seeds=(0,), trainers={"A": "TrainerA"})
    labels = _mkdir(config.raw_dataset / "labelsTr")
    cases = [f"case{i}" for i in range(6)]
    for case in [*cases, "left_out"]:  # labelsTr holds a case that the split does not validate
        (labels / f"{case}.nii.gz").write_text(case)
    _splits_over(config, cases, 2)
    _validate(config, "TrainerA", 0, {"0": cases[0::2], "1": cases[1::2]})

    def run(plan_config: CompareConfig) -> tuple[list[str], list[str]]:
        plan = resolve_plan(plan_config)
        steps = {step.name: step for step in compare_steps(plan)}
        for name in ("collect_reference", "collect_TrainerA_seed0"):
            if steps[name].done() is None:
                steps[name].action(tmp_path / f"{name}.log")
            assert steps[name].done() == "already collected"
        listing = [sorted(p.stem.removesuffix(".nii") for p in folder.iterdir())
                   for folder in (reference_dir(plan), plan.predictions_dir("A", 0))]  # fmt: skip
        return listing[0], listing[1]

    every_fold = run(config)
    assert every_fold == (cases, cases)  # every fold of the split: its cases, not labelsTr's "left_out"
    fold_0 = run(dataclasses.replace(config, folds=("0",)))
    assert fold_0 == (cases[0::2], cases[0::2])


def test_schedule_warnings_name_the_trainings_that_differ(tmp_path: Path) -> None:
    """Seeds 0-1 trained with 2 epochs, seed 2 (added later) with 3: they were pooled silently."""
    from nnunet_topkdice.pipeline.compare import schedule_warnings

    config = _config(tmp_path, folds=("0",), seeds=(0, 1, 2))
    for trainer in ("TrainerA", "TrainerB"):
        for seed in (0, 1, 2):
            epochs = "3" if trainer == "TrainerA" and seed == 2 else "2"
            debug = {"num_epochs": epochs, "num_iterations_per_epoch": "4", "initial_lr": "0.01", "batch_size": "4"}
            (_mkdir(config.training_dir(trainer, seed, "0")) / "debug.json").write_text(json.dumps(debug))
    plan = resolve_plan(config)
    assert schedule_warnings(plan) == [
        "Warning: the trainings of A pooled in this verdict ran with different schedules: num_epochs=2 (seed 0 "
        "fold 0, seed 1 fold 0); num_epochs=3 (seed 2 fold 0). A finished training is reused as it is; to train "
        "it again with the current schedule, remove its fold folder (or use other -w and nnUNet_results folders)."
    ]
    (config.training_dir("TrainerA", 2, "0") / "debug.json").unlink()  # unreadable: left out
    assert schedule_warnings(plan) == []


def test_plan_of_a_raw_dataset_with_its_own_split_uses_it(tmp_path: Path) -> None:
    """A split in nnUNet_raw, not yet preprocessed: nnU-Net's planning copies it into nnUNet_preprocessed,
    but the plan used nnU-Net's 5-fold split of the cases, so every training validated other cases than
    the ones the comparison collected (it failed after the trainings)."""
    config = _config(tmp_path, seeds=(0,))
    (config.raw_dataset / "imagesTr").mkdir()
    cases = [f"case{c}" for c in range(6)]
    for case in cases:
        (config.raw_dataset / "imagesTr" / f"{case}_0000.nii.gz").touch()
    own = [{"train": cases[2:], "val": cases[:2]}, {"train": cases[:2] + cases[4:], "val": cases[2:4]}]
    (config.raw_dataset / "splits_final.json").write_text(json.dumps(own))
    plan = resolve_plan(config)
    assert plan.split_from_raw and not plan.split_on_disk and plan.folds == ("0", "1")
    assert plan.validation_cases() == {"0": ["case0", "case1"], "1": ["case2", "case3"]}
    steps = {step.name: step for step in compare_steps(plan)}
    own_file = config.raw_dataset / "splits_final.json"
    assert steps["split"].title == f"Writing the dataset's own split ({own_file}) to splits_final.json"
    _mkdir(config.preprocessed_dataset)  # as the preprocessing leaves it
    steps["split"].action(tmp_path / "split.log")
    assert state.read_splits(config.preprocessed_dataset) == own  # what nnU-Net's copy would find: equal
    # the folds are the raw split's: more than nnU-Net's 5 are allowed, one it lacks is refused naming it
    (config.preprocessed_dataset / "splits_final.json").unlink()
    seven = [{"train": cases[:i] + cases[i + 1:], "val": [cases[i]]} for i in range(6)] + [own[0]]
    own_file.write_text(json.dumps(seven))
    assert resolve_plan(dataclasses.replace(config, folds=("6",))).validation_cases() == {"6": ["case0", "case1"]}
    with pytest.raises(InputError, match=rf"fold 7 is not in {re.escape(str(own_file))} \(7 folds: 0-6\)"):
        resolve_plan(dataclasses.replace(config, folds=("7",)))


def test_plan_refuses_a_fold_the_split_lacks(tmp_path: Path) -> None:
    config = _config(tmp_path, folds=("7",))
    with pytest.raises(InputError, match=r"fold 7 is not in nnU-Net's own 5-fold split \(5 folds: 0-4\)"):
        resolve_plan(config)


def test_plan_of_the_test_set_refuses_a_fold_the_split_lacks(tmp_path: Path) -> None:
    """The test set trains its folds on the split too: a fold beyond it is nnU-Net's random 80:20 split."""
    config = _config(tmp_path, folds=("1",), test_set=True, split_folds=1)
    with pytest.raises(InputError, match=r"^fold 1 is not in the splits_final.json that the conversion writes for "
                                         r"Dataset004_Hippo \(1 fold: 0\); nnU-Net would train it on a random "):
        resolve_plan(config)  # before the dataset is converted: the converter's split
    assert resolve_plan(dataclasses.replace(config, folds=("0",))).folds == ("0",)
    state.write_splits(_mkdir(config.preprocessed_dataset), [{"train": ["a"], "val": ["b"]}] * 2)
    assert resolve_plan(config).folds == ("1",)  # the split on disk has 2 folds
    with pytest.raises(InputError, match=r"^fold 2 is not in the dataset's splits_final.json \(2 folds: 0-1\)"):
        resolve_plan(dataclasses.replace(config, folds=("2",), split_folds=None))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_test_set_steps_train_fold_all_and_predict_per_seed(tmp_path: Path) -> None:
    config = _config(tmp_path, test_set=True, baseline="B")
    lines = describe_steps(compare_steps(resolve_plan(config)))
    assert len(lines) == 8
    assert (
        lines[0] == "[1/8] $ nnUNetv2_plan_and_preprocess -d 4 -c 3d_fullres -np 1 -npfp 1 --verify_dataset_integrity"
    )
    assert lines[1] == "[2/8] $ topkdice train --seed 0 4 3d_fullres all -tr TrainerA -device cpu"
    seed_root = tmp_path.resolve() / "nnUNet_results" / "seed_1"
    predictions = config.workdir / "predictions" / "fold_all"
    # one process per seed predicts with every trainer's model of that seed
    assert lines[6] == (
        f"[7/8] $ nnUNet_results={seed_root} topkdice predict -i {config.raw_dataset / 'imagesTs'} -d 4 "
        f"-c 3d_fullres -f all -device cpu --models TrainerA={predictions / 'TrainerA' / 'seed_1'} "
        f"TrainerB={predictions / 'TrainerB' / 'seed_1'}"
    )
    assert "--baseline B -d 4 -o" in lines[7] and f"-r {config.raw_dataset / 'labelsTs'}" in lines[7]
    assert lines[7].endswith(f"--images {config.raw_dataset / 'imagesTs'}")


def test_prediction_step_leaves_out_predicted_models_and_resumes_only_without_stale_files(tmp_path: Path) -> None:
    config = _config(tmp_path, test_set=True, seeds=(0,))
    images = config.raw_dataset / "imagesTs"
    images.mkdir()
    for case in ("c1", "c2"):
        (images / f"{case}_0000.nii.gz").touch()
    for trainer in ("TrainerA", "TrainerB"):
        run_dir = config.training_dir(trainer, 0, "all")
        run_dir.mkdir(parents=True)
        (run_dir / "checkpoint_final.pth").touch()
        os.utime(run_dir / "checkpoint_final.pth", (1000, 1000))
    plan = resolve_plan(config)
    step = compare_steps(plan)[-2]
    out_a, out_b = plan.predictions_dir("A", 0), plan.predictions_dir("B", 0)
    assert step.name == "predict_seed0" and step.done() is None
    assert step.command().argv[-2:] == (f"TrainerA={out_a}", f"TrainerB={out_b}")  # nothing yet: no resume

    out_a.mkdir(parents=True)
    for case in ("c1", "c2"):
        (out_a / f"{case}.nii.gz").touch()  # A done
    out_b.mkdir(parents=True)
    (out_b / "c1.nii.gz").touch()  # B interrupted after one case
    assert step.command().argv[-2:] == (f"TrainerB={out_b}", "--continue_prediction")
    os.utime(out_b / "c1.nii.gz", (500, 500))  # ... by an older model: predict B again, overwriting
    assert step.command().argv[-1] == f"TrainerB={out_b}"
    (out_b / "c1.nii.gz").touch()
    (out_b / "c2.nii.gz").touch()
    assert step.done() == "already predicted"


def test_training_step_resumes_and_revalidates(tmp_path: Path) -> None:
    config = _config(tmp_path, folds=("0",), seeds=(0,))
    job = training_jobs(resolve_plan(config))[0]
    assert job.run_dir == tmp_path.resolve() / "nnUNet_results" / "seed_0" / "Dataset004_Hippo" / (
        "TrainerA__nnUNetPlans__3d_fullres") / "fold_0"  # fmt: skip
    assert job.remaining() == "new" and job.command().argv[-1] == "cpu"
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "checkpoint_latest.pth").touch()
    assert job.command().argv[-1] == "--c"
    (job.run_dir / "checkpoint_final.pth").touch()
    assert job.command().argv[-1] == "--val"  # final validation missing: cross-validation needs it
    (job.run_dir / "validation").mkdir()
    (job.run_dir / "validation" / "summary.json").write_text("{}")
    assert job.remaining() is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"baseline": "C"}, "--baseline 'C' is not one of the trainers"),
        ({"seeds": (0, 0)}, "--seeds must be distinct"),
        ({"folds": ("all",)}, "fold all trains on every case"),
        ({"configuration": "3d_cascade_fullres"}, "cascades are not supported"),
    ],
    ids=["baseline", "seeds", "all-in-crossval", "cascade"],
)
def test_compare_config_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        _config(tmp_path, **kwargs)


def test_child_environment_keeps_the_users_trainers_first(tmp_path: Path) -> None:
    user = {"PATH": "/bin", "nnUNet_extTrainer": "/mine"}
    env = child_environment(_config(tmp_path, extra_env={"nnUNet_def_n_proc": "2"}), user)
    assert env["nnUNet_extTrainer"] == os.pathsep.join(["/mine", str(trainer_dir())])
    assert env["nnUNet_raw"] == str(tmp_path.resolve() / "nnUNet_raw")
    assert (env["PATH"], env["nnUNet_def_n_proc"]) == ("/bin", "2")


# --- runner -----------------------------------------------------------------------------------------

_WRITE_GPU = "import os, sys; open(sys.argv[1], 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', '-'))"


def _command_step(name: str, code: str, *args: str, done: str | None = None, parallel: str | None = None) -> Step:
    return Step(name, name, lambda: done, lambda: Command((sys.executable, "-c", code, *args)), parallel=parallel)


def test_runner_logs_each_step_and_skips_done_ones(tmp_path: Path) -> None:
    import io

    stream = io.StringIO()
    steps = [
        _command_step("skipped", "raise SystemExit(9)", done="already there"),
        _command_step("talk", "print('BANNER from the tool')"),
    ]
    report = run_steps(steps, dict(os.environ), log_dir=tmp_path, stream=stream)
    assert (report.ran, report.skipped) == (["talk"], ["skipped"])
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[1/2] skipped (already there): skipped"
    assert lines[1].startswith("[2/2] $ ") and len(lines) == 2
    assert "BANNER from the tool" in (tmp_path / "talk.log").read_text()


def test_sigterm_stops_the_running_command_and_the_handler_is_restored(tmp_path: Path) -> None:
    """SIGTERM (a scheduler's time limit) raises Terminated (exit 143, not Ctrl-C's 130) and stops the running
    command; the runner's handler was installed for good and inherited by forked children."""
    import io
    import signal
    import threading

    from nnunet_topkdice.errors import Terminated, interrupt_exit_code

    before = signal.getsignal(signal.SIGTERM)
    pid_file = tmp_path / "pid"
    step = _command_step("sleeps", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                                   "time.sleep(60)")  # fmt: skip

    def terminate_when_started() -> None:
        while not pid_file.is_file() or not pid_file.read_text():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_when_started, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(Terminated) as info:
        run_steps([step], dict(os.environ), log_dir=tmp_path, stream=io.StringIO())
    assert time.monotonic() - started < 30 and interrupt_exit_code(info.value) == 143
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(child, 0)
    assert signal.getsignal(signal.SIGTERM) is before


def test_runner_failure_shows_the_logs_tail(tmp_path: Path) -> None:
    import io

    stream = io.StringIO()
    step = _command_step("fails", "import sys; print('\\n'.join(f'line {i}' for i in range(30))); sys.exit(4)")
    after = _command_step("never", "open('never', 'w')")
    with pytest.raises(subprocess.CalledProcessError, match="returned non-zero exit status 4"):
        run_steps([step, after], dict(os.environ), log_dir=tmp_path, stream=stream)
    text = stream.getvalue()
    assert "FAILED (exit code 4): fails" in text and "line 29" in text and "line 9\n" not in text
    assert f"whole log: {tmp_path / 'fails.log'}" in text and "never" not in text


def test_runner_failure_shows_only_this_runs_lines(tmp_path: Path) -> None:
    """The step's log keeps every run; a failure showed the previous, successful run's output first."""
    import io

    (tmp_path / "fails.log").write_text("".join(f"earlier run's line {i}\n" for i in range(30)))
    step = _command_step("fails", "import sys; print('this run'); sys.exit(3)")
    stream = io.StringIO()
    with pytest.raises(subprocess.CalledProcessError):
        run_steps([step], dict(os.environ), log_dir=tmp_path, stream=stream)
    tail = stream.getvalue().split("FAILED (exit code 3): fails\n", 1)[1]
    assert "this run" in tail and "earlier run" not in tail
    assert "earlier run's line 0" in (tmp_path / "fails.log").read_text()  # the log itself keeps both


def test_runner_runs_parallel_steps_one_per_slot(tmp_path: Path) -> None:
    import io

    steps = [_command_step(f"job{i}", _WRITE_GPU, str(tmp_path / f"{i}.txt"), parallel="train") for i in range(3)]
    alone = _command_step("evaluate", _WRITE_GPU, str(tmp_path / "evaluate.txt"))  # no parallel kind: no slot
    slots = [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    stream = io.StringIO()
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    run_steps([*steps, alone], env, log_dir=tmp_path / "logs", slots=slots, stream=stream)
    seen = [(tmp_path / f"{i}.txt").read_text() for i in range(3)]
    assert set(seen) <= {"0", "1"} and len(set(seen)) == 2
    assert (tmp_path / "evaluate.txt").read_text() == "-"
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["evaluate.log", "job0.log", "job1.log", "job2.log"]
    # started in order, so the terminal lists them in order
    assert [line.split("]")[0] for line in stream.getvalue().splitlines()] == ["[1/4", "[2/4", "[3/4", "[4/4"]


def test_runner_concurrent_failure_is_raised_after_the_others(tmp_path: Path) -> None:
    import io

    fail = _command_step("fail", "raise SystemExit(3)", parallel="train")
    ok = _command_step("ok", _WRITE_GPU, str(tmp_path / "ok.txt"), parallel="train")
    slots = [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    with pytest.raises(subprocess.CalledProcessError, match="returned non-zero exit status 3"):
        run_steps([fail, ok], dict(os.environ), log_dir=tmp_path, slots=slots, stream=io.StringIO())
    assert (tmp_path / "ok.txt").read_text() in ("0", "1")


def test_step_needs_one_way_to_run() -> None:
    with pytest.raises(ValueError, match="exactly one of command and action"):
        Step("x", "x", lambda: None)


# --- progress ---------------------------------------------------------------------------------------


def test_training_progress_reads_nnunets_lines() -> None:
    progress = TrainingProgress()
    lines = [
        "2026-01-01 10:00:00.000: Epoch 3",  # resumed at epoch 3
        "2026-01-01 10:00:00.000: Current learning rate: 0.0097",
        "2026-01-01 10:00:09.000: train_loss -0.4123",
        "2026-01-01 10:00:09.000: val_loss -0.38",
        "2026-01-01 10:00:09.000: Pseudo dice [np.float32(0.5), np.float32(nan), np.float32(0.7)]",
    ]
    for line in lines:
        progress.feed(line)
    assert (progress.first_epoch, progress.epochs_done, progress.train_loss) == (3, 3, -0.4123)
    assert progress.pseudo_dice == pytest.approx(0.6)
    assert progress.feed("2026-01-01 10:00:09.000: Epoch time: 9.1 s") and progress.epochs_done == 4
    assert progress.postfix() == "loss -0.4123, pseudo Dice 0.6000"
    assert not progress.feed("{'configurations': {'2d': {'batch_size': 12}}}")


# --- SLURM ------------------------------------------------------------------------------------------


def test_slurm_script_one_task_per_training(tmp_path: Path) -> None:
    config = _config(tmp_path, folds=("0", "1"), device="cuda", train_env={"nnUNet_n_proc_DA": "0"})
    jobs = training_jobs(resolve_plan(config))
    text = slurm_script(jobs, {"nnUNet_raw": "/r a"}, topkdice=["/venv/bin/topkdice"], log_dir=tmp_path,
                        collect_command="topkdice compare -d 4",
                        resources=slurm_resources("cuda", 1, environ={}))  # fmt: skip
    assert "#SBATCH --array=0-7" in text and "#SBATCH --gres=gpu:1" in text
    assert "export nnUNet_raw='/r a'" in text and "#   topkdice compare -d 4" in text
    assert text.count(" export nnUNet_n_proc_DA=0;") == 8  # the job's own variables win in its task
    assert "    args=(train --seed 1 4 3d_fullres 1 -tr TrainerB -device cuda) ;;" in text
    with pytest.raises(ValueError, match="no training left"):
        slurm_script([], {}, topkdice=["t"], log_dir=tmp_path, collect_command="")


# --- command line -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reproduce", "--dataset", "synapse", "--device", "cpu", "--gpus", "0,1"], "--gpus and --num-gpus need"),
        (["reproduce", "--dataset", "synapse", "--device", "cpu"], "is not in .* yet: give its source with -i"),
        (["reproduce", "--dataset", "synapse", "--device", "cpu", "-i", "nope"], "nope: not a folder"),
        (["compare", "-d", "7", "-c", "2d", "--trainers", "T", "--device", "cpu"], "no such dataset"),
    ],
    ids=["gpus-on-cpu", "no-input", "missing-input", "no-dataset"],
)
def test_input_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    for var in state.NNUNET_FOLDER_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "-w", str(tmp_path)]) == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.startswith(f"topkdice {argv[0]}: error:")
    assert re.search(message, last_line)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reproduce", "--dataset", "synapse", "--gpus", "0,a"], "expected distinct GPU ids"),
        (["reproduce", "--dataset", "synapse", "--num-gpus", "0"], "expected a positive integer"),
        (["reproduce", "--dataset", "synapse", "--fold", "7"], "invalid choice: '7'"),
        (["reproduce", "--dataset", "synapse", "--schedule", "demo"], "invalid choice: 'demo'"),
        (["compare", "-d", "4", "-c", "2d", "--trainers", "T", "--folds", "0", "--test-set"], "not allowed with"),
        (["compare", "-d", "4", "-c", "2d", "--trainers", "T", "--dry-run", "--emit-slurm", "f"], "not allowed with"),
        (["compare", "-d", "4", "-c", "2d", "--trainers", "T", "--seeds", "-1"], "expected an integer >= 0"),
    ],
    ids=["gpu-not-int", "num-gpus-0", "fold", "schedule", "folds-and-test-set", "dry-run-and-slurm", "seed"],
)
def test_usage_errors(capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match="^2$"):  # the exit code
        main(argv)
    assert message in capsys.readouterr().err


def test_dry_run_lists_every_command_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    argv = ["compare", "-d", "Dataset004_Hippo", "-c", "3d_fullres", "--trainers", "TrainerA", "TrainerB",
            "--seeds", "0", "1", "--folds", "0", "1", "--device", "cpu", "-w", str(config.workdir),
            "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 16 and sum("$ nnUNet_n_proc_DA=0 topkdice train --seed" in line for line in out) == 8
    assert out[-1].startswith("[16/16] $ topkdice evaluate -r ") and "--baseline TrainerA" in out[-1]
    assert not config.workdir.exists()


def test_dry_run_shows_the_threads_of_cpu_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    argv = ["compare", "-d", "Dataset004_Hippo", "-c", "2d", "--trainers", "TrainerA", "TrainerB", "--folds", "0",
            "--device", "cpu", "-w", str(config.workdir), "--cpu-jobs", "2", "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    # preprocess, split, 2 trainings, 3 collections, evaluate: the trainings show their slot's threads
    assert len(out) == 8 and "$ nnUNetv2_plan_and_preprocess " in out[0] and "topkdice evaluate " in out[7]
    assert all("$ nnUNet_n_proc_DA=0 TOPKDICE_CPU_THREADS=4 topkdice train --seed 0" in line for line in out[2:4])
    assert sum("TOPKDICE_CPU_THREADS" in line for line in out) == 2


def test_reproduce_dry_run_is_the_papers_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in state.NNUNET_FOLDER_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    source = tmp_path / "RawData"
    source.mkdir()
    argv = ["reproduce", "--dataset", "acdc", "-i", str(source), "--seeds", "0", "1", "--device", "cpu",
            "-w", str(tmp_path / "w"), "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    # convert, preprocess, 5 rows x 2 seeds of fold 0, a prediction per seed, evaluate
    assert len(out) == 15 and out[0].startswith("[1/15] $ topkdice convert acdc -i ")
    assert "topkdice train --seed 1 202 2d 0 -tr nnUNetTrainerTopKDice -device cpu" in out[11]
    assert "-f 0 -device cpu --models nnUNetTrainerCELoss=" in out[12]
    assert out[13].startswith("[14/15] $ nnUNet_results=")
    assert out[-1].endswith("--baseline 'CE + Dice' -d 202 -o " + str(tmp_path / "w" / "evaluation" / "fold_0")
                            + " -np " + str(pipeline_cli.DEFAULT_NUM_PROCESSES) + " --paper acdc --images "
                            + str(tmp_path / "w" / "nnUNet_raw" / "Dataset202_ACDC" / "imagesTs"))  # fmt: skip


@pytest.mark.parametrize("mode", [["--dry-run"], []], ids=["dry-run", "first-run"])
@pytest.mark.parametrize("fold", ["1", "4"])
def test_reproduce_refuses_a_fold_the_converters_split_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, fold: str, mode: list[str]
) -> None:
    """Before the conversion: ACDC's converter writes one fold, so nnU-Net would train fold 1-4 on a random
    80:20 split by case (the two frames of a patient on both sides), not on the paper's split by patient."""
    for var in state.NNUNET_FOLDER_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert _refused_acdc_reproduce(tmp_path, capsys, "--fold", fold, *mode) == (
        f"topkdice reproduce: error: fold {fold} is not in the splits_final.json that the conversion writes for "
        "Dataset202_ACDC (1 fold: 0); nnU-Net would train it on a random 80:20 split of the cases instead"
    )


def _refused_acdc_reproduce(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str) -> str:
    """``reproduce --dataset acdc ARGS`` from an (empty) download: exit 2 with nothing run, nothing printed on
    stdout and no work directory; returns the error line."""
    source = tmp_path / "acdc"
    source.mkdir()
    argv = ["reproduce", "--dataset", "acdc", "-i", str(source), "--device", "cpu", "-w", str(tmp_path / "w"), *args]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and not (tmp_path / "w").exists()
    return err.splitlines()[-1]


@pytest.mark.parametrize(
    ("dataset", "n_folds", "fold", "refused"),
    [
        ("acdc", 1, "1", "fold 1 is not in the dataset's splits_final.json (1 fold: 0)"),
        ("synapse", 2, "3", "fold 3 is not in the dataset's splits_final.json (2 folds: 0-1)"),
        ("synapse", 2, "1", None),
        ("synapse", None, "4", None),  # no split on disk: nnU-Net's own 5 folds
    ],
    ids=["acdc-fold-1", "own-split-fold-3", "own-split-fold-1", "nnunets-split-fold-4"],
)
def test_reproduce_checks_a_fold_against_the_split_on_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
    dataset: str, n_folds: int | None, fold: str, refused: str | None,
) -> None:  # fmt: skip
    info = PAPER_DATASETS[dataset]
    for var in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{var}", str(tmp_path / var))
    raw = _mkdir(tmp_path / "raw" / info.folder_name)
    (raw / "dataset.json").write_text(json.dumps({"numTraining": 4, "file_ending": ".nii.gz"}))
    if n_folds is not None:
        cases = [f"case{i}" for i in range(4)]
        splits = [{"train": [c for c in cases if c != cases[i]], "val": [cases[i]]} for i in range(n_folds)]
        state.write_splits(_mkdir(tmp_path / "preprocessed" / info.folder_name), splits)
    argv = ["reproduce", "--dataset", dataset, "-f", fold, "-tr", "nnUNetTrainer", "--device", "cpu",
            "-w", str(tmp_path / "w"), "--dry-run"]  # fmt: skip
    exit_code = main(argv)
    out, err = capsys.readouterr()
    if refused is None:
        assert exit_code == 0 and f"topkdice train --seed 0 {info.dataset_id} 2d {fold} -tr nnUNetTrainer" in out
    else:
        assert exit_code == 2 and out == "" and err.splitlines()[-1] == (
            f"topkdice reproduce: error: {refused}; nnU-Net would train it on a random 80:20 split of the cases "
            "instead"
        )


@pytest.mark.parametrize("mode", [["--dry-run"], []], ids=["dry-run", "run"])
def test_reproduce_refuses_an_id_used_by_another_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, mode: list[str]
) -> None:
    # topkdice convert acdc -d 204 refuses this id; reproduce planned every step on Dataset204_Foo instead
    raw = tmp_path / "raw"
    (raw / "Dataset204_Foo").mkdir(parents=True)
    (raw / "Dataset204_Foo" / "dataset.json").write_text(json.dumps({"numTraining": 2, "file_ending": ".nii.gz"}))
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert _refused_acdc_reproduce(tmp_path, capsys, "-d", "204", *mode) == (
        f"topkdice reproduce: error: dataset id 204 is already used by Dataset204_Foo in {raw}; choose another id "
        "with -d/--dataset-id"
    )
    assert [p.name for p in raw.iterdir()] == ["Dataset204_Foo"]


def test_the_collect_command_is_the_same_call_without_the_mode(tmp_path: Path) -> None:
    from nnunet_topkdice.cli import build_parser

    argv = ["compare", "-d", "4", "-c", "2d", "--trainers", "A", "B", "--seeds", "0", "2", "--test-set",
            "--device", "cpu", "--emit-slurm", "x.sh", "--verbose"]  # fmt: skip
    args = build_parser().parse_args(argv)
    assert pipeline_cli.same_call("compare", args) == (
        "topkdice compare -d 4 -c 2d -tr A B --test-set --seeds 0 2 -device cpu"
    )
    argv = ["reproduce", "--dataset", "acdc", "-f", "0", "--gpus", "0,1", "--emit-slurm", "s.sh", "--slurm-header",
            "h.txt", "--device", "cuda", "--schedule", "paper", "--seeds", "0", "1", "2"]  # fmt: skip
    args = build_parser().parse_args(argv)
    assert pipeline_cli.same_call("reproduce", args) == (
        "topkdice reproduce --dataset acdc -f 0 --schedule paper --seeds 0 1 2 -device cuda --gpus 0,1"
    )
    args = build_parser().parse_args(["demo", "--all", "--dry-run", "-w", "x y"])
    assert pipeline_cli.same_call("demo", args) == "topkdice demo -w 'x y' --all"


def test_summary_moves_the_paired_comparison_after_the_table() -> None:
    from nnunet_topkdice.pipeline.session import split_table

    table_md = (
        "## Title\n\n| a |\n|---|\n| 1 |\n\nLegend.\n\n"
        "Paired comparison with the baseline 'A' (...):\n\nB vs A: +1.00 mDice\n"
    )
    assert split_table(table_md, ["B vs A: +1.00 mDice"]) == (
        ["## Title", "", "| a |", "|---|", "| 1 |", "", "Legend."],
        ["Paired comparison with the baseline 'A' (...):", "B vs A: +1.00 mDice"],
    )
    assert split_table("| a |\n\nB vs A: x\n", ["B vs A: x"]) == (["| a |"], ["B vs A: x"])


def test_summary_names_the_case_pictures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nnunet_topkdice.pipeline.session import print_summary

    plan = resolve_plan(_config(tmp_path, test_set=True))
    out = plan.evaluation_dir
    out.mkdir(parents=True)
    (out / "table.md").write_text("## Title\n\n| a |\n")
    pictures = {"files": {"B": "cases/B_vs_A.png"}}
    (out / "results.json").write_text(json.dumps({"comparisons": [], "case_pictures": pictures}))
    print_summary(plan)
    lines = capsys.readouterr().out.splitlines()
    assert f"Cases:       {out / 'cases' / 'B_vs_A.png'}" in lines
    tables = ", ".join(str(out / name) for name in ("table.md", "table.csv", "per_case.csv", "results.json"))
    assert f"Tables:      {tables}" in lines


class _Terminal(__import__("io").StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("interactive", [True, False], ids=["terminal", "file"])
def test_training_bar_shows_epochs_of_the_planned_total(tmp_path: Path, interactive: bool) -> None:
    import io

    from nnunet_topkdice.pipeline.progress import TrainingBar

    (tmp_path / "debug.json").write_text(json.dumps({"num_epochs": "4"}))  # nnU-Net writes values as text
    stream = _Terminal() if interactive else io.StringIO()
    bar = TrainingBar("A, seed 0, fold 1", tmp_path, stream=stream)
    for epoch in (2, 3):  # resumed at epoch 2
        for line in (
            f"t: Epoch {epoch}",
            "t: train_loss -0.25",
            "t: Pseudo dice [np.float32(0.5)]",
            "t: Epoch time: 1.0 s",
        ):
            bar.feed(line)
    bar.close(True)
    text = stream.getvalue()
    if interactive:
        assert "4/4" in text and "loss -0.2500, pseudo Dice 0.5000" in text
    else:
        assert text.startswith("  A, seed 0, fold 1: done at epoch 4 of 4 after ") and text.count("\n") == 1
