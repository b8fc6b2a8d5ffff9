"""``topkdice train --seed``: seeded, paired training of any nnU-Net trainer.

The end-to-end tests train probe trainers (a test-only ``nnUNet_extTrainer`` folder) that hash every batch
``train_step`` receives and the weights at the start of training, on the session's tiny 2D dataset: 2 epochs
of 3 iterations, no final validation. Most runs are in-process (``main([...])``); the worker runs are
subprocesses, because forking data-augmentation workers from a process that has already run OpenMP work
(this test process) can hang in libgomp.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunet_e2e import BIN, DATASET_ID, DATASET_NAME, TinyDataset, run

from nnunet_topkdice.cli import build_parser, main
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.pipeline import warm
from nnunet_topkdice.pipeline.runner import run_steps
from nnunet_topkdice.pipeline.session import cpu_slots
from nnunet_topkdice.pipeline.steps import Command, Step
from nnunet_topkdice.training.layout import (
    SEED_RECORD,
    check_not_seed_root,
    check_seed,
    fold_folder,
    read_recorded_seed,
    seed_results_root,
    train_argv,
    write_seed_record,
)

PROBE = "nnUNetTrainerSeedProbe"
TOPK_PROBE = "nnUNetTrainerTopKDiceSeedProbe"
N_EPOCHS, N_ITERATIONS = 2, 3

PROBE_MODULE = f"""
import hashlib
import os

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_topkdice.trainers import DemoSchedule, nnUNetTrainerTopKDice


class _SeedProbe(DemoSchedule):
    demo_num_epochs = {N_EPOCHS}
    demo_num_iterations_per_epoch = {N_ITERATIONS}
    demo_num_val_iterations_per_epoch = 1

    def _log(self, text):
        with open(os.environ["TOPKDICE_TEST_BATCH_LOG"], "a") as f:
            f.write(text + "\\n")

    def on_train_start(self):
        super().on_train_start()
        self.logger.plot_progress_png = lambda output_folder: None  # half the time of these tiny runs
        digest = hashlib.sha256()
        for value in self.network.state_dict().values():
            digest.update(value.cpu().numpy().tobytes())
        self._log(f"weights {{self.current_epoch}} {{digest.hexdigest()}}")

    def train_step(self, batch):
        target = batch["target"]
        digest = hashlib.sha256()
        for tensor in [batch["data"], *(target if isinstance(target, list) else [target])]:
            digest.update(tensor.numpy().tobytes())
        self._log(f"batch {{digest.hexdigest()}}")
        return super().train_step(batch)

    def on_epoch_end(self):
        super().on_epoch_end()
        stop = os.environ.get("TOPKDICE_TEST_STOP_AFTER_EPOCH")
        if stop is not None and self.current_epoch == int(stop):
            raise SystemExit(75)

    def perform_actual_validation(self, save_probabilities=False):
        pass  # keeps the tests short; nnU-Net's validation is not what is tested here


class {PROBE}(_SeedProbe, nnUNetTrainer):
    pass


class {TOPK_PROBE}(_SeedProbe, nnUNetTrainerTopKDice):
    pass
"""


# ---------------------------------------------------------------- pure helpers


def test_seed_results_root_and_fold_folder() -> None:
    root = seed_results_root(Path("/r"), 7)
    assert root == Path("/r/seed_7")
    assert fold_folder(root, "Dataset001_X", "T", "nnUNetPlans", "2d", 0) == Path(
        "/r/seed_7/Dataset001_X/T__nnUNetPlans__2d/fold_0"
    )


@pytest.mark.parametrize("seed", [-1, True, 1.5, "3"], ids=["negative", "bool", "float", "str"])
def test_check_seed_refuses(seed: object) -> None:
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        check_seed(seed)  # type: ignore[arg-type]


def test_seed_record_round_trip_and_bad_record(tmp_path: Path) -> None:
    assert read_recorded_seed(tmp_path) is None
    write_seed_record(tmp_path / "fold_0", {"seed": 12, "trainer": "T"})
    assert read_recorded_seed(tmp_path / "fold_0") == 12
    assert sorted(p.name for p in (tmp_path / "fold_0").iterdir()) == [SEED_RECORD]  # no partial file left
    (tmp_path / SEED_RECORD).write_text('{"seed": "twelve"}')
    with pytest.raises(InputError, match="seed.json is not a valid seed record"):
        read_recorded_seed(tmp_path)
    with pytest.raises(ValueError, match="seed must be"):
        write_seed_record(tmp_path, {"trainer": "T"})


def test_train_argv_parses_back() -> None:
    argv = train_argv(987, "2d", 1, "nnUNetTrainerTopKDice", 3, plans="nnUNetResEncUNetMPlans", device="cpu",
                      continue_training=True, extra=["--npz"])  # fmt: skip
    assert argv[:2] == ["topkdice", "train"]
    args = build_parser().parse_args(argv[1:])
    assert (args.seed, args.dataset_name_or_id, args.configuration, args.fold) == (3, "987", "2d", "1")
    assert (args.tr, args.p, args.device, args.c, args.npz) == (
        "nnUNetTrainerTopKDice", "nnUNetResEncUNetMPlans", "cpu", True, True,
    )  # fmt: skip
    assert "-p" not in train_argv(1, "2d", 0, "nnUNetTrainer", 0)  # nnU-Net's default plans


@pytest.mark.parametrize("argv", [["1", "2d", "0"], ["1", "2d", "0", "--seed", "-2"]], ids=["missing", "negative"])
def test_cli_refuses_bad_seed(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="^2$"):  # argparse's usage error
        build_parser().parse_args(["train", *argv])
    assert "--seed" in capsys.readouterr().err


# ---------------------------------------------------------------- the mechanism, without nnU-Net training


class _DrawingLoader:
    """Stands in for nnU-Net's loader: a 'batch' is what the three global generators give next."""

    def __next__(self) -> tuple:
        return (np.random.randint(1 << 30), int(torch.randint(1 << 30, (1,))), random.getrandbits(30))


def test_seeded_batches_same_stream_for_any_worker_count_and_resume() -> None:
    from nnunet_topkdice.training.seeded import TRAIN_BATCH_STREAM, SeededBatches

    single = SeededBatches(_DrawingLoader(), 5, TRAIN_BATCH_STREAM, 0, first_index=0)
    expected = [next(single) for _ in range(6)]
    assert len(set(expected)) == 6

    # two workers, read round-robin as batchgenerators' MultiThreadedAugmenter reads them
    workers = [SeededBatches(_DrawingLoader(), 5, TRAIN_BATCH_STREAM, 0, first_index=0, n_workers=2) for _ in "ab"]
    for thread_id, worker in enumerate(workers):
        worker.set_thread_id(thread_id)
    assert [next(workers[i % 2]) for i in range(6)] == expected

    resumed = SeededBatches(_DrawingLoader(), 5, TRAIN_BATCH_STREAM, 0, first_index=3)
    assert [next(resumed) for _ in range(3)] == expected[3:]
    other_seed = SeededBatches(_DrawingLoader(), 6, TRAIN_BATCH_STREAM, 0, first_index=0)
    assert next(other_seed) != expected[0]
    validation = SeededBatches(_DrawingLoader(), 5, TRAIN_BATCH_STREAM + 1, 0, first_index=0)
    assert next(validation) != expected[0]


def test_seeded_trainer_class_keeps_name_and_signature() -> None:
    import inspect

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss

    from nnunet_topkdice.trainers import nnUNetTrainerTopKDice, nnUNetTrainerTopKDicePaper
    from nnunet_topkdice.training.seeded import SeededTrainerMixin, seeded_trainer_class

    for cls in (nnUNetTrainer, nnUNetTrainerCELoss, nnUNetTrainerTopKDice, nnUNetTrainerTopKDicePaper):
        seeded = seeded_trainer_class(cls, 4)
        assert (seeded.__name__, seeded.__module__, seeded.topkdice_seed) == (cls.__name__, cls.__module__, 4)
        assert seeded.__mro__[1:3] == (SeededTrainerMixin, cls)
        assert inspect.signature(seeded.__init__) == inspect.signature(cls.__init__)
    with pytest.raises(TypeError, match="expected a subclass of nnUNetTrainer"):
        seeded_trainer_class(dict, 0)
    with pytest.raises(ValueError, match="seed must be"):
        seeded_trainer_class(nnUNetTrainer, -1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"continue_training": True, "only_run_validation": True}, "--c and --val"),
        ({"continue_training": True, "pretrained_weights": "w.pth"}, "--c and -pretrained_weights"),
        ({"pretrained_weights": "/nonexistent/w.pth"}, "-pretrained_weights /nonexistent/w.pth: no such file"),
        ({"val_with_best": True, "disable_checkpointing": True}, "--val_best"),
        ({"num_gpus": 2, "device": "cpu"}, "needs -device cuda"),
        ({"fold": "x"}, "fold must be 'all' or an integer"),
    ],
    ids=["c-and-val", "c-and-pretrained", "no-weights-file", "val-best-no-checkpoints", "ddp-on-cpu", "bad-fold"],
)
def test_train_seeded_refuses_contradictions(options: dict, message: str) -> None:
    from nnunet_topkdice.training.seeded import train_seeded

    fold = options.pop("fold", 0)
    with pytest.raises(InputError, match=message):
        train_seeded(1, "2d", fold, seed=0, **options)


def test_train_seeded_needs_results_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunet_topkdice.training.seeded import train_seeded

    monkeypatch.delenv("nnUNet_results", raising=False)
    with pytest.raises(InputError, match="nnUNet_results is not set"):
        train_seeded(1, "2d", 0, seed=0, device="cpu")


@pytest.mark.parametrize("continue_training", [False, True], ids=["new", "continue"])
def test_nnunet_results_at_a_seed_root_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], continue_training: bool
) -> None:
    """nnUNet_results=$R/seed_2, as docs/seeded_training.md has users set it for nnUNetv2_predict, trained into
    $R/seed_2/seed_2 (and --c started the run again from scratch there)."""
    (tmp_path / "preprocessed" / "Dataset999_Empty").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    seed_root = tmp_path / "results" / "seed_2"
    monkeypatch.setenv("nnUNet_results", f"{seed_root}/")  # a trailing slash changes nothing
    argv = ["train", "--seed", "2", "Dataset999_Empty", "2d", "0", "-device", "cpu"]
    assert main([*argv, "--c"] if continue_training else argv) == 2
    assert capsys.readouterr().err == (
        f"topkdice train: error: nnUNet_results={seed_root} is a seed folder already: seeded runs add seed_<S> "
        f"themselves (this run would go to {seed_root}/seed_<S>); set nnUNet_results to its parent, "
        f"{tmp_path / 'results'}\n"
    )
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("name", "refused"), [("seed_2", True), ("seed_10", True), ("seed_", False),
                                               ("seed_2b", False), ("seeds_2", False), ("results", False)])  # fmt: skip
def test_a_seed_root_is_seed_and_an_integer(tmp_path: Path, name: str, refused: bool) -> None:
    if refused:
        with pytest.raises(InputError, match=rf"nnUNet_results={tmp_path / name} is a seed folder already"):
            check_not_seed_root(tmp_path / name)
    else:
        assert check_not_seed_root(tmp_path / name) == tmp_path / name


def test_dataset_names_are_checked_like_nnunets(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The shared look-up (nnunet_topkdice.nnunet_folders) keeps topkdice train's messages."""
    monkeypatch.setenv("nnUNet_results", "/nonexistent/results")
    monkeypatch.setenv("nnUNet_preprocessed", "/nonexistent/preprocessed")
    assert main(["train", "--seed", "0", "Tiny", "2d", "0", "-device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        "topkdice train: error: DATASET must be an integer id or a name like Dataset123_Name, got 'Tiny'\n"
    )
    monkeypatch.delenv("nnUNet_preprocessed")
    assert main(["train", "--seed", "0", "Tiny", "2d", "0", "-device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        "topkdice train: error: nnUNet_preprocessed is not set: seeded training needs nnU-Net's nnUNet_preprocessed "
        "folder\n"
    )


def test_train_seeded_checks_the_plans_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunet_topkdice.training.seeded import train_seeded

    (tmp_path / "preprocessed" / "Dataset999_Empty").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    with pytest.raises(InputError, match=r"Dataset999_Empty/nnUNetPlans.json does not exist"):
        train_seeded("Dataset999_Empty", "2d", 0, seed=3, device="cpu")
    assert not (tmp_path / "results").exists()


def test_train_seeded_needs_the_configuration_preprocessed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planned but not preprocessed (nnUNetv2_plan_experiment without nnUNetv2_preprocess): nnU-Net failed
    with a FileNotFoundError traceback after seed.json was written."""
    from nnunet_topkdice.training.seeded import train_seeded

    folder = tmp_path / "preprocessed" / "Dataset999_Planned"
    folder.mkdir(parents=True)
    plans = {"dataset_name": "Dataset999_Planned", "plans_name": "nnUNetPlans",
             "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"}}}  # fmt: skip
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    message = rf"{folder / 'nnUNetPlans_3d_fullres'} does not exist: configuration '3d_fullres' is planned but not"
    with pytest.raises(InputError, match=message + r" preprocessed \(nnUNetv2_preprocess "):
        train_seeded("Dataset999_Planned", "3d_fullres", 0, seed=3, device="cpu")
    assert not (tmp_path / "results").exists()


def test_run_environment_adds_our_trainers_after_the_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunet_topkdice.environment import environment
    from nnunet_topkdice.ext import trainer_dir
    from nnunet_topkdice.trainers import nnUNetTrainerTopKDice
    from nnunet_topkdice.training.seeded import _find_trainer_class, run_environment

    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    env = run_environment(tmp_path / "seed_2")
    assert env == {"nnUNet_results": str(tmp_path / "seed_2"), "nnUNet_extTrainer": str(trainer_dir())}
    before = os.environ.get("nnUNet_results")
    with environment(env):
        assert os.environ["nnUNet_results"] == str(tmp_path / "seed_2")
        found = _find_trainer_class("nnUNetTrainerTopKDice")
    assert os.environ.get("nnUNet_results") == before and "nnUNet_extTrainer" not in os.environ  # restored
    assert found is nnUNetTrainerTopKDice  # through the shim in our folder: the same class object
    monkeypatch.setenv("nnUNet_extTrainer", str(tmp_path))
    assert run_environment(tmp_path, deterministic=True) == {
        "nnUNet_results": str(tmp_path),
        "nnUNet_extTrainer": os.pathsep.join([str(tmp_path), str(trainer_dir())]),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8"),
    }
    with pytest.raises(InputError, match="trainer 'nnUNetTrainerNoSuchThing'"):
        _find_trainer_class("nnUNetTrainerNoSuchThing")


def test_ddp_rendezvous_is_set_and_restored_with_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DDP's MASTER_ADDR / MASTER_PORT are part of the run's environment, so they are restored with it."""
    from nnunet_topkdice.environment import environment
    from nnunet_topkdice.training.seeded import run_environment

    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("MASTER_PORT", "29555")  # a user's port wins
    env = run_environment(tmp_path, num_gpus=2)
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("localhost", "29555")
    with environment(env):
        assert os.environ["MASTER_ADDR"] == "localhost"
    assert "MASTER_ADDR" not in os.environ and os.environ["MASTER_PORT"] == "29555"
    monkeypatch.delenv("MASTER_PORT")
    assert int(run_environment(tmp_path, num_gpus=2)["MASTER_PORT"]) > 0  # a free port, as nnU-Net picks
    assert "MASTER_ADDR" not in run_environment(tmp_path)  # one process: no rendezvous


def test_the_plans_are_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The look-up reads plans and dataset.json; building the trainer uses what it read (a copy)."""
    from nnunet_topkdice.training import seeded

    folder = tmp_path / "preprocessed" / "Dataset998_Tiny"
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps({"configurations": {"2d": {}}}))
    (folder / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))

    class Recorder:
        def __init__(self, **kwargs) -> None:
            self.kwargs = kwargs

    monkeypatch.setattr(seeded, "_find_trainer_class", lambda name: Recorder)
    lookup = seeded._look_up("Dataset998_Tiny", "2d", 0, "Recorder", "nnUNetPlans", tmp_path / "results")
    assert lookup.fold_dir == tmp_path / "results" / "Dataset998_Tiny" / "Recorder__nnUNetPlans__2d" / "fold_0"
    for path in folder.iterdir():
        path.unlink()  # nothing is read again
    trainer = seeded._build_trainer(lookup, True, torch.device("cpu"))
    assert trainer.kwargs["plans"] == {"configurations": {"2d": {}}, "continue_training": True}
    assert "continue_training" not in lookup.plans  # the trainer got a copy
    assert trainer.kwargs["dataset_json"] == {"file_ending": ".nii.gz"} and trainer.kwargs["fold"] == 0


def test_deterministic_switches_torch_to_deterministic_algorithms() -> None:
    from nnunet_topkdice.training.seeded import _configure_cudnn

    assert not torch.are_deterministic_algorithms_enabled()
    try:
        _configure_cudnn(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    _configure_cudnn(False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_seeded_augmenters_need_batchgenerators_ones() -> None:
    from nnunet_topkdice.training.seeded import _loader_and_transform

    with pytest.raises(TypeError, match="get_dataloaders returned a list"):
        _loader_and_transform([])


# ---------------------------------------------------------------- end to end


class SeededRuns:
    """Runs ``topkdice train`` on the tiny dataset with the probe trainers; remembers the batch logs."""

    def __init__(self, dataset: TinyDataset, base: Path) -> None:
        self.dataset, self.base = dataset, base
        ext = base / "probe_ext"
        ext.mkdir()
        (ext / "topkdice_seed_probe_trainers.py").write_text(textwrap.dedent(PROBE_MODULE))
        self.ext = str(ext)

    def environment(self, results: Path, log: Path, n_proc_da: int = 0) -> dict[str, str]:
        env = self.dataset.environment(results)
        env.update({
            "nnUNet_extTrainer": self.ext,
            "nnUNet_n_proc_DA": str(n_proc_da),
            "TOPKDICE_TEST_BATCH_LOG": str(log),
        })  # fmt: skip
        return env

    def train_in_process(
        self,
        name: str,
        seed: int,
        trainer: str = PROBE,
        *,
        results: str | None = None,
        extra: tuple[str, ...] = (),
        stop_after: int | None = None,
    ) -> tuple[list[str], Path]:
        """Train in this process; returns (the probe's log lines, the fold folder)."""
        results_root, log = self.base / (results or name), self.base / f"{name}.log"
        env = self.environment(results_root, log)
        if stop_after is not None:
            env["TOPKDICE_TEST_STOP_AFTER_EPOCH"] = str(stop_after)
        argv = train_argv(DATASET_ID, "2d", 0, trainer, seed, device="cpu", extra=extra)
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            if stop_after is None:
                assert main(argv[1:]) == 0
            else:
                with pytest.raises(SystemExit, match="75"):
                    main(argv[1:])
        fold = fold_folder(seed_results_root(results_root, seed), DATASET_NAME, trainer, "nnUNetPlans", "2d", 0)
        return log.read_text().splitlines(), fold


def _weights(fold: Path) -> dict[str, torch.Tensor]:
    return torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tiny_dataset: TinyDataset, tmp_path_factory: pytest.TempPathFactory) -> SeededRuns:
    return SeededRuns(tiny_dataset, tmp_path_factory.mktemp("seeded"))


@pytest.fixture(scope="module")
def reference(runs: SeededRuns) -> tuple[list[str], Path]:
    """nnUNetTrainer's probe, seed 0, no workers, trained in one go."""
    return runs.train_in_process("reference", 0)


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_differs(runs: SeededRuns, reference: tuple[list[str], Path]) -> None:
    log, fold = reference
    assert len([line for line in log if line.startswith("batch")]) == N_EPOCHS * N_ITERATIONS
    record = json.loads((fold / SEED_RECORD).read_text())
    assert (record["seed"], record["trainer"], record["fold"]) == (0, PROBE, 0)

    # same seed, another results root: bit for bit the same batches and weights
    again_log, again_fold = runs.train_in_process("again", 0)
    assert again_log == log
    assert _same_weights(_weights(again_fold), _weights(fold))

    # another seed, the same results root: its own folder, other weights and batches, seed 0's run intact
    other_log, other_fold = runs.train_in_process("other", 1, results="reference")
    assert other_fold == fold_folder(runs.base / "reference" / "seed_1", DATASET_NAME, PROBE, "nnUNetPlans", "2d", 0)
    assert read_recorded_seed(other_fold) == 1 and read_recorded_seed(fold) == 0
    assert other_log[0] != log[0]  # initial weights
    assert not set(other_log[1:]) & set(log[1:])  # batches
    assert not _same_weights(_weights(other_fold), _weights(fold))
    assert _same_weights(_weights(fold), _weights(again_fold))  # seed 0's checkpoint was not touched


@pytest.mark.slow
def test_same_seed_same_start_and_batches_for_two_losses(runs: SeededRuns, reference: tuple[list[str], Path]) -> None:
    log, fold = reference
    topk_log, topk_fold = runs.train_in_process("topk", 0, TOPK_PROBE)
    # the same initial weights and the same batches, consumed by train_step; only the loss differs
    assert topk_log == log
    assert not _same_weights(_weights(topk_fold), _weights(fold))


@pytest.mark.slow
def test_continue_resumes_the_same_stream(runs: SeededRuns, reference: tuple[list[str], Path]) -> None:
    log, fold = reference
    first_log, resumed_fold = runs.train_in_process("resumed", 0, stop_after=1)
    assert (resumed_fold / "checkpoint_latest.pth").is_file()
    assert first_log == log[: 1 + N_ITERATIONS]  # weights line and the first epoch's batches
    full_log, resumed_fold = runs.train_in_process("resumed", 0, extra=("--c",))
    # the resumed part starts from the checkpoint (other weights line), then the same batches as in one go
    assert full_log[1 + N_ITERATIONS].startswith("weights 1 ")
    assert full_log[: 1 + N_ITERATIONS] + full_log[2 + N_ITERATIONS :] == log
    assert _same_weights(_weights(resumed_fold), _weights(fold))


@pytest.mark.slow
def test_continue_with_workers_resumes_the_same_stream(runs: SeededRuns, reference: tuple[list[str], Path]) -> None:
    """--c with data-augmentation workers: the checkpoint is loaded (OpenMP work in this process) before the
    workers are forked, and a worker with the inherited thread pool hung in libgomp for good; nnU-Net's own
    workers run one torch thread, and so do ours now."""
    log, fold = reference
    runs.train_in_process("resumed_workers", 0, stop_after=1)
    env = runs.environment(runs.base / "resumed_workers", runs.base / "resumed_workers.log", n_proc_da=2)
    env["TOPKDICE_CPU_THREADS"] = "2"  # a thread pool in the main process: what the workers inherit
    argv = train_argv(DATASET_ID, "2d", 0, PROBE, 0, device="cpu", executable=str(BIN / "topkdice"), extra=("--c",))
    run(argv, env, timeout=180)  # about 15 s; it hung for good
    full_log = (runs.base / "resumed_workers.log").read_text().splitlines()
    assert full_log[: 1 + N_ITERATIONS] + full_log[2 + N_ITERATIONS :] == log
    resumed = fold_folder(seed_results_root(runs.base / "resumed_workers", 0), DATASET_NAME, PROBE, "nnUNetPlans",
                          "2d", 0)  # fmt: skip
    assert _same_weights(_weights(resumed), _weights(fold))


@pytest.mark.slow
def test_validating_nothing_or_continuing_otherwise_is_refused(
    runs: SeededRuns, reference: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped --seed with --val gave nnU-Net's "the training is not finished yet" traceback (exit 1) after
    its log was written into a new seed folder; --c with another --deterministic than the run was started
    with continued it, and seed.json misstated the continued part."""
    _, fold = reference
    results = runs.base / "refusals"
    copied = fold_folder(seed_results_root(results, 0), DATASET_NAME, PROBE, "nnUNetPlans", "2d", 0)
    shutil.copytree(fold, copied)  # seed 0's finished run, started without --deterministic
    before = sorted(p.name for p in copied.iterdir())
    env = runs.environment(results, runs.base / "refusals.log")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert main(train_argv(DATASET_ID, "2d", 0, PROBE, 7, device="cpu", extra=("--val",))[1:]) == 2
        assert "--val: no finished run of --seed 7 to validate: " in capsys.readouterr().err
        assert main(train_argv(DATASET_ID, "2d", 0, PROBE, 0, device="cpu", extra=("--c", "--deterministic"))[1:]) == 2
        assert "was started without --deterministic (seed.json); continue it without it" in capsys.readouterr().err
    assert not seed_results_root(results, 7).exists() and sorted(p.name for p in copied.iterdir()) == before


@pytest.mark.slow
def test_checkpoint_is_nnunets_and_predicts(runs: SeededRuns, reference: tuple[list[str], Path]) -> None:
    import inspect

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    _, fold = reference
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == PROBE
    assert list(checkpoint["init_args"]) == list(inspect.signature(nnUNetTrainer.__init__).parameters)[1:]
    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, verbose=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_extTrainer", runs.ext)
        predictor.initialize_from_trained_model_folder(str(fold.parent), use_folds=(0,))
    image = np.zeros((1, 1, 32, 32), np.float32)
    segmentation = predictor.predict_single_npy_array(image, {"spacing": [5.0, 1.0, 1.0]})
    assert segmentation.shape == (1, 32, 32)


@pytest.mark.slow
def test_continue_refuses_another_recorded_seed(runs: SeededRuns, reference: tuple[list[str], Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _, fold = reference
    # a copy of seed 0's run where seed 5's would be (for example moved by hand)
    copied = fold_folder(seed_results_root(runs.base / "copied", 5), DATASET_NAME, PROBE, "nnUNetPlans", "2d", 0)
    shutil.copytree(fold, copied)
    env = runs.environment(runs.base / "copied", runs.base / "copied.log")
    argv = train_argv(DATASET_ID, "2d", 0, PROBE, 5, device="cpu", continue_training=True)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert main(argv[1:]) == 2
        assert "holds a run of seed 0, not of --seed 5" in capsys.readouterr().err
        assert main([*argv[1:-1], "--val"]) == 2  # validating it as seed 5's run is refused too
        assert "holds a run of seed 0, not of --seed 5" in capsys.readouterr().err
        (copied / SEED_RECORD).unlink()  # checkpoints without a record: not a seeded run
        assert main(argv[1:]) == 2
        assert "not a seeded run" in capsys.readouterr().err
    assert not (runs.base / "copied.log").exists()  # refused before anything was trained


@pytest.mark.slow
def test_workers_give_the_same_stream(runs: SeededRuns, reference: tuple[list[str], Path]) -> None:
    """3 workers here; 2 in ``test_a_warm_started_run_is_the_same_run[2-workers]`` (a warm-started run's
    workers are started as a new process's are: see pipeline/warm.py)."""
    log, fold = reference
    n_proc_da = 3
    name = f"workers{n_proc_da}"
    env = runs.environment(runs.base / name, runs.base / f"{name}.log", n_proc_da=n_proc_da)
    run(train_argv(DATASET_ID, "2d", 0, PROBE, 0, device="cpu", executable=str(BIN / "topkdice")), env)
    # batchgenerators' MultiThreadedAugmenter: the same batches as without workers, in the same order
    assert (runs.base / f"{name}.log").read_text().splitlines() == log
    worker_fold = fold_folder(seed_results_root(runs.base / name, 0), DATASET_NAME, PROBE, "nnUNetPlans", "2d", 0)
    assert _same_weights(_weights(worker_fold), _weights(fold))


@pytest.mark.slow
@pytest.mark.parametrize("n_proc_da", [0, 2], ids=["no-workers", "2-workers"])
def test_a_warm_started_run_is_the_same_run(
    runs: SeededRuns, reference: tuple[list[str], Path], n_proc_da: int
) -> None:
    """``topkdice train`` forked from the forkserver (pipeline/warm.py), as the runner starts it on the CPU."""
    log, fold = reference
    name = f"warm{n_proc_da}"
    env = {**os.environ, **runs.environment(runs.base / name, runs.base / f"{name}.log", n_proc_da=n_proc_da)}
    process = warm.start(train_argv(DATASET_ID, "2d", 0, PROBE, 0, device="cpu"), env)
    output = process.stdout.read().decode()
    assert process.wait(timeout=600) == 0, output
    assert "Epoch 1" in output  # nnU-Net's output comes through the pipe
    assert (runs.base / f"{name}.log").read_text().splitlines() == log
    warm_fold = fold_folder(seed_results_root(runs.base / name, 0), DATASET_NAME, PROBE, "nnUNetPlans", "2d", 0)
    assert _same_weights(_weights(warm_fold), _weights(fold))


@pytest.mark.slow
def test_trainings_side_by_side_are_the_trainings_alone(runs: SeededRuns, reference: tuple[list[str], Path]) -> None:
    """``--cpu-jobs 2``: two trainings started warm at once by the runner, one torch thread each, give the
    weights of the same training run alone with one thread; the batches are the reference's."""
    log, _ = reference
    env = {**os.environ, **runs.environment(runs.base / "unused", runs.base / "unused.log")}
    argv = tuple(train_argv(DATASET_ID, "2d", 0, PROBE, 0, device="cpu"))

    def step(name: str) -> Step:
        own = {"nnUNet_results": str(runs.base / name), "TOPKDICE_TEST_BATCH_LOG": str(runs.base / f"{name}.log")}
        return Step(f"train_{name}", name, lambda: None, lambda: Command(argv, own), parallel="train")

    slots = cpu_slots(2, cores=2)
    logs = runs.base / "side_by_side_logs"
    run_steps([step("alone")], env, log_dir=logs, slots=slots, stream=io.StringIO(), warm_start=True)
    report = run_steps([step("left"), step("right")], env, log_dir=logs, slots=slots, stream=io.StringIO(),
                       warm_start=True)  # fmt: skip
    (left_start, left_end), (right_start, right_end) = report.spans["train_left"], report.spans["train_right"]
    assert left_start < right_end and right_start < left_end  # they did run at the same time
    assert "TOPKDICE_CPU_THREADS=1 topkdice train" in (logs / "train_left.log").read_text()
    folds = {
        name: fold_folder(seed_results_root(runs.base / name, 0), DATASET_NAME, PROBE, "nnUNetPlans", "2d", 0)
        for name in ("alone", "left", "right")
    }
    assert all((runs.base / f"{name}.log").read_text().splitlines() == log for name in folds)
    alone = _weights(folds["alone"])
    assert _same_weights(_weights(folds["left"]), alone) and _same_weights(_weights(folds["right"]), alone)


def test_train_is_registered() -> None:
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "train" in subcommands.choices


class _FakeWandbRun:
    """What nnU-Net's ``WandbLogger`` uses of a ``wandb.init`` run."""

    def __init__(self, **init_kwargs: object) -> None:
        self.init_kwargs, self.config, self.summary, self.step = init_kwargs, _FakeConfig(), {}, 0


class _FakeConfig(dict):
    def update(self, values: dict) -> None:  # type: ignore[override]  # wandb's config.update(dict)
        super().update(values)


def test_seeded_run_records_its_seed_in_nnunets_wandb_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nnUNet_wandb_enabled=1 nnU-Net's MetaLogger holds a WandbLogger; the seed lands in its run's config."""
    from nnunetv2.training.logging import nnunet_logger
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_topkdice.training.seeded import SCHEME, seeded_trainer_class

    runs: list[_FakeWandbRun] = []
    fake_wandb = argparse.Namespace(init=lambda **kwargs: runs.append(_FakeWandbRun(**kwargs)) or runs[-1])
    monkeypatch.setattr(nnunet_logger, "wandb", fake_wandb)
    monkeypatch.setenv("nnUNet_wandb_enabled", "1")
    for job_id in ("SLURM_JOB_ID", "LSB_JOBID"):  # nnU-Net records a cluster's job id as JobID
        monkeypatch.delenv(job_id, raising=False)

    def nnunets_initialize(self: nnUNetTrainer) -> None:  # the part of initialize() that logs
        self.logger.update_config({"hparas": {"num_epochs": 3}})
        self.was_initialized = True

    monkeypatch.setattr(nnUNetTrainer, "initialize", nnunets_initialize)
    trainer = object.__new__(seeded_trainer_class(nnUNetTrainer, 7))
    trainer.was_initialized = False
    trainer.logger = nnunet_logger.MetaLogger(str(tmp_path), resume=False)  # as nnUNetTrainer.__init__ makes it
    trainer.initialize()
    assert len(runs) == 1 and runs[0].init_kwargs["dir"] == str(tmp_path)
    assert runs[0].config == {"JobID": None, "hparas": {"num_epochs": 3}, "topkdice_seed": 7,
                              "topkdice_seed_scheme": SCHEME}  # fmt: skip
    monkeypatch.delenv("nnUNet_wandb_enabled")
    quiet = object.__new__(seeded_trainer_class(nnUNetTrainer, 7))
    quiet.was_initialized, quiet.logger = False, nnunet_logger.MetaLogger(str(tmp_path), resume=False)
    quiet.initialize()  # W&B off: nnU-Net's logger has no W&B run, nothing else changes
    assert quiet.logger.loggers == [] and len(runs) == 1
