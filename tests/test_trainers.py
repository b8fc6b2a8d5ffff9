"""Trainers: losses, deep supervision, schedules, ignore label, regions, discovery by nnU-Net.

Training steps run nnU-Net's real ``train_step`` on tiny hand-made plans (see
``nnunet_topkdice.trainers.standalone``), once per distinct loss (a schedule variant builds its row's loss,
which ``test_scheduled_variants_change_only_the_schedule`` checks, and the schedules are tested on their
own); discovery runs in subprocesses because nnU-Net resolves ``nnUNet_extTrainer`` through the environment
of the process that looks the trainer up.
"""

from __future__ import annotations

import doctest
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunet_e2e import BIN
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss, TopKLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss
from torch._dynamo import OptimizedModule

import nnunet_topkdice.trainers as trainers
from nnunet_topkdice.ext import trainer_dir
from nnunet_topkdice.losses import (
    BCE_and_TopKDice_loss,
    CE_and_TopKDice_loss,
    DC_and_Focal_loss,
    DC_and_SigmoidFocal_loss,
    DC_and_TopKBCE_loss,
    DC_and_TopKCE_loss,
    SigmoidFocalLoss,
    SigmoidTopKDiceLoss,
    TopKBCELoss,
    TopKDiceLoss,
)
from nnunet_topkdice.trainers import ALL_ROWS, CONTROL_ROW, CONTROL_ROWS, PAPER_ROWS, TRAINER_NAMES, paper_trainer
from nnunet_topkdice.trainers.standalone import (
    setup_trainer,
    synthetic_batch,
    synthetic_dataset_json,
    synthetic_plans,
)

PATCHES = {"2d": (32, 32), "3d": (16, 32, 32)}
PAPER_SUFFIX = ("Paper", "Demo")

# The trainer each scheduled variant takes its loss from, and the loss it must build.
LOSS_ROWS = {
    "nnUNetTrainerTopKDice": (CE_and_TopKDice_loss, 50.0),
    "nnUNetTrainerTopKDice10": (CE_and_TopKDice_loss, 10.0),
    "nnUNetTrainerTopKDice30": (CE_and_TopKDice_loss, 30.0),
    "nnUNetTrainerTopKDice70": (CE_and_TopKDice_loss, 70.0),
    "nnUNetTrainerTopKDice90": (CE_and_TopKDice_loss, 90.0),
    "nnUNetTrainerTopKDice100": (CE_and_TopKDice_loss, 100.0),
    "nnUNetTrainerFocalDice": (DC_and_Focal_loss, None),
    "nnUNetTrainerTopKCEDice": (DC_and_TopKCE_loss, 50.0),
    "nnUNetTrainerTopKCEDice30": (DC_and_TopKCE_loss, 30.0),
    "nnUNetTrainerCELoss": (RobustCrossEntropyLoss, None),  # nnU-Net's own
    "nnUNetTrainer": (DC_and_CE_loss, None),  # nnU-Net's own
}


def _base_row(name: str) -> str:
    """nnUNetTrainerTopKDice30Paper -> nnUNetTrainerTopKDice30; CE/DiceCE map to nnU-Net's trainers."""
    for suffix in PAPER_SUFFIX:
        if name.endswith(suffix):
            stem = name.removesuffix(suffix)
            return {"nnUNetTrainerCE": "nnUNetTrainerCELoss", "nnUNetTrainerDiceCE": "nnUNetTrainer"}.get(stem, stem)
    return name


# the trainers whose loss is this package's (the others are nnU-Net's CE and CE + Dice)
OWN_LOSS_TRAINERS = tuple(n for n in TRAINER_NAMES if _base_row(n) not in ("nnUNetTrainerCELoss", "nnUNetTrainer"))
# one trainer per distinct loss of this package, and one under each of the other schedules' optimisers
DISTINCT_LOSS_TRAINERS = tuple(n for n in LOSS_ROWS if n in TRAINER_NAMES)
TRAIN_STEP_TRAINERS = (*DISTINCT_LOSS_TRAINERS, "nnUNetTrainerTopKDicePaper", "nnUNetTrainerCEDemo")
# label-dataset loss -> the region-dataset (sigmoid) loss the same trainer builds, and its pixel-wise term
REGION_LOSSES = {
    CE_and_TopKDice_loss: (BCE_and_TopKDice_loss, torch.nn.BCEWithLogitsLoss),
    DC_and_Focal_loss: (DC_and_SigmoidFocal_loss, SigmoidFocalLoss),
    DC_and_TopKCE_loss: (DC_and_TopKBCE_loss, TopKBCELoss),
}
# one trainer per loss class (the k variants share their code)
LOSS_CLASS_TRAINERS = ("nnUNetTrainerTopKDice", "nnUNetTrainerFocalDice", "nnUNetTrainerTopKCEDice")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny networks: threads only add contention on the shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _make(name: str, tmp_path: Path, dim: str = "2d", **dataset_kwargs: bool) -> nnUNetTrainer:
    builtins = {"nnUNetTrainer": nnUNetTrainer, "nnUNetTrainerCELoss": nnUNetTrainerCELoss}
    trainer_class = builtins[name] if name in builtins else getattr(trainers, name)
    plans, configuration = synthetic_plans(PATCHES[dim], base_features=4, max_features=32)
    return setup_trainer(trainer_class, plans, configuration, synthetic_dataset_json(3, **dataset_kwargs), tmp_path)


def _params(trainer: nnUNetTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.network.parameters()]


# --- names, mapping, module identity ----------------------------------------------------------------


def test_trainer_names_are_the_issue_list() -> None:
    expected = {
        *("nnUNetTrainerTopKDice", "nnUNetTrainerTopKDice10", "nnUNetTrainerTopKDice30"),
        *("nnUNetTrainerTopKDice70", "nnUNetTrainerTopKDice90"),
        *("nnUNetTrainerTopKDice100", "nnUNetTrainerTopKDice100Paper", "nnUNetTrainerTopKDice100Demo"),
        *("nnUNetTrainerFocalDice", "nnUNetTrainerTopKCEDice", "nnUNetTrainerTopKCEDice30"),
        *("nnUNetTrainerCEPaper", "nnUNetTrainerDiceCEPaper", "nnUNetTrainerFocalDicePaper"),
        *("nnUNetTrainerTopKCEDicePaper", "nnUNetTrainerTopKDicePaper"),
        *("nnUNetTrainerTopKCEDice30Paper", "nnUNetTrainerTopKDice30Paper"),
        *("nnUNetTrainerCEDemo", "nnUNetTrainerDiceCEDemo", "nnUNetTrainerFocalDiceDemo"),
        *("nnUNetTrainerTopKCEDiceDemo", "nnUNetTrainerTopKDiceDemo"),
        *("nnUNetTrainerTopKCEDice30Demo", "nnUNetTrainerTopKDice30Demo"),
    }
    assert set(TRAINER_NAMES) == expected
    for name in TRAINER_NAMES:
        cls = getattr(trainers, name)
        assert issubclass(cls, nnUNetTrainer)
        assert cls.__module__.startswith("nnunet_topkdice.trainers."), cls.__module__


@pytest.mark.parametrize("name", TRAINER_NAMES, ids=TRAINER_NAMES)
def test_constructor_signature_is_nnunets(name: str) -> None:
    # nnU-Net saves the init args by name and re-creates the trainer from them (resume, predict)
    ours = inspect.signature(getattr(trainers, name).__init__, eval_str=True).parameters
    assert ours == inspect.signature(nnUNetTrainer.__init__).parameters


def test_paper_rows_cover_every_row_schedule_and_trainer() -> None:
    assert list(PAPER_ROWS) == ["CE", "CE + Dice", "focal + Dice", "topK + Dice", "CE + topK-Dice"]
    assert list(CONTROL_ROWS) == [CONTROL_ROW] == ["CE + topK-Dice (k=100)"]
    assert list(ALL_ROWS) == [*PAPER_ROWS, *CONTROL_ROWS]
    named = {name for by_schedule in ALL_ROWS.values() for names in by_schedule.values() for name in names.values()}
    assert named == set(TRAINER_NAMES) | {"nnUNetTrainerCELoss", "nnUNetTrainer"}
    for by_schedule in ALL_ROWS.values():
        assert set(by_schedule) == {"nnunet", "paper", "demo"}
    for schedule in ("paper", "demo"):  # every scheduled control trainer is the control's loss
        assert _base_row(CONTROL_ROWS[CONTROL_ROW][schedule][None]) == "nnUNetTrainerTopKDice100"


@pytest.mark.parametrize(
    ("row", "schedule", "k", "expected"),
    [
        ("CE", "nnunet", 50, "nnUNetTrainerCELoss"),
        ("CE + Dice", "paper", 30, "nnUNetTrainerDiceCEPaper"),
        ("focal + Dice", "demo", 50, "nnUNetTrainerFocalDiceDemo"),
        ("topK + Dice", "nnunet", 30, "nnUNetTrainerTopKCEDice30"),
        ("topK + Dice", "paper", 50, "nnUNetTrainerTopKCEDicePaper"),
        ("CE + topK-Dice", "nnunet", 70, "nnUNetTrainerTopKDice70"),
        ("CE + topK-Dice", "paper", 30, "nnUNetTrainerTopKDice30Paper"),
        ("CE + topK-Dice", "demo", 50, "nnUNetTrainerTopKDiceDemo"),
        ("CE + topK-Dice (k=100)", "nnunet", 50, "nnUNetTrainerTopKDice100"),
        ("CE + topK-Dice (k=100)", "paper", 30, "nnUNetTrainerTopKDice100Paper"),
        ("CE + topK-Dice (k=100)", "demo", 50, "nnUNetTrainerTopKDice100Demo"),
    ],
    ids=[
        "ce",
        "dicece-paper",
        "focal-demo",
        "topkce30",
        "topkce-paper",
        "topkdice70",
        "topkdice30-paper",
        "demo",
        "control",
        "control-paper",
        "control-demo",
    ],
)
def test_paper_trainer(row: str, schedule: str, k: int, expected: str) -> None:
    assert paper_trainer(row, schedule, k) == expected


def test_paper_trainer_docstring_examples_run() -> None:
    from nnunet_topkdice import paper_rows

    assert doctest.testmod(paper_rows).failed == 0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("Dice", "nnunet", 50), "unknown paper row 'Dice'"),
        (("CE", "fast", 50), "unknown schedule 'fast'"),
        (("CE + topK-Dice", "paper", 70), r"k=70; available k: \[30, 50\]"),
    ],
    ids=["row", "schedule", "k"],
)
def test_paper_trainer_errors(args: tuple[str, str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        paper_trainer(*args)


def test_ext_folder_holds_only_a_shim_reexporting_the_same_classes() -> None:
    folder = trainer_dir()
    modules = sorted(p.name for p in folder.glob("*.py"))
    assert modules == ["__init__.py", "nnunet_topkdice_trainers.py"]
    import nnunet_topkdice.ext.nnunet_topkdice_trainers as shim

    exported = {n for n, v in vars(shim).items() if isinstance(v, type) and issubclass(v, nnUNetTrainer)}
    assert exported == set(TRAINER_NAMES)
    for name in TRAINER_NAMES:
        assert getattr(shim, name) is getattr(trainers, name)


# --- losses, deep supervision, schedules ------------------------------------------------------------


@pytest.mark.parametrize("name", TRAINER_NAMES, ids=TRAINER_NAMES)
@pytest.mark.parametrize("batch_dice", [True, False], ids=["batch_dice", "sample_dice"])
def test_loss_is_the_row_loss_with_kwargs_from_the_trainer(name: str, batch_dice: bool, tmp_path: Path) -> None:
    trainer_class = getattr(trainers, name)
    plans, configuration = synthetic_plans(PATCHES["2d"], base_features=4, batch_dice=batch_dice)
    trainer = setup_trainer(trainer_class, plans, configuration, synthetic_dataset_json(3, ignore_label=True), tmp_path)
    loss_class, k = LOSS_ROWS[_base_row(name)]
    # CE + TopK-Dice: nnU-Net's wrapper computed as one node (tests/test_losses_deep_supervision.py)
    wrapper = trainers.TopKDiceDeepSupervision if loss_class is CE_and_TopKDice_loss else DeepSupervisionWrapper
    assert type(trainer.loss) is wrapper
    inner = trainer.loss.loss
    assert type(inner) is loss_class
    if loss_class is RobustCrossEntropyLoss:
        assert inner.ignore_index == 3
        return
    assert inner.ignore_label == 3
    assert inner.dc.batch_dice is batch_dice and inner.dc.ddp is False and inner.dc.do_bg is False
    assert inner.dc.smooth == 1e-5
    if loss_class is CE_and_TopKDice_loss:
        assert isinstance(inner.dc, TopKDiceLoss) and inner.dc.k == k
    else:
        assert type(inner.dc) is MemoryEfficientSoftDiceLoss
    if loss_class is DC_and_TopKCE_loss:
        assert type(inner.ce) is TopKLoss and inner.ce.k == k and inner.ce.ignore_index == 3
    if loss_class is DC_and_Focal_loss:
        assert inner.ce.gamma == 2.0


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize(
    ("is_ddp", "compiled", "last"),
    [(False, False, 0.0), (True, False, 1e-6), (True, True, 0.0)],
    ids=["single", "ddp", "ddp-compiled"],
)
def test_deep_supervision_weights_are_nnunets(
    dim: str, is_ddp: bool, compiled: bool, last: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _make("nnUNetTrainerTopKDice", tmp_path, dim)
    # 4 stages -> 3 outputs: (1, 1/2, last) normalised
    expected = np.array([1.0, 0.5, last]) / (1.5 + last)
    monkeypatch.setattr(trainer, "is_ddp", is_ddp)
    monkeypatch.setattr(trainer, "_do_i_compile", lambda: compiled)
    wrapped = trainers.wrap_deep_supervision(trainer, torch.nn.Identity())
    np.testing.assert_allclose(wrapped.weight_factors, expected, rtol=1e-12)
    # and exactly what nnU-Net's own _build_loss gives (its DDP Dice is never called here)
    reference = nnUNetTrainer._build_loss(trainer)
    assert wrapped.weight_factors == reference.weight_factors


def test_fused_deep_supervision_equals_nnunets_wrapper_and_can_be_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _make("nnUNetTrainerTopKDice", tmp_path)
    fused = trainer._build_loss()
    monkeypatch.setattr(trainer, "fuse_deep_supervision", False)
    plain = trainer._build_loss()
    assert type(fused) is trainers.TopKDiceDeepSupervision and type(plain) is DeepSupervisionWrapper
    assert fused.weight_factors == plain.weight_factors and type(plain.loss) is CE_and_TopKDice_loss
    torch.manual_seed(0)
    images = torch.randn(2, 1, *PATCHES["2d"])
    outputs = trainer.network(images)  # nnU-Net's network: one output per resolution
    targets = [torch.randint(0, 3, (2, 1, *o.shape[2:])) for o in outputs]
    assert fused(outputs, targets).item() == pytest.approx(plain(outputs, targets).item(), rel=1e-6)


def test_without_deep_supervision_the_loss_is_not_wrapped(tmp_path: Path) -> None:
    trainer = _make("nnUNetTrainerTopKDice", tmp_path)
    trainer.enable_deep_supervision = False
    assert type(trainer._build_loss()) is CE_and_TopKDice_loss


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile"])
@pytest.mark.parametrize("name", LOSS_ROWS_OWN := [n for n in LOSS_ROWS if n in TRAINER_NAMES], ids=LOSS_ROWS_OWN)
def test_dice_term_is_compiled_exactly_when_nnunet_compiles(
    name: str, compiled: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _make(name, tmp_path)
    monkeypatch.setattr(trainer, "_do_i_compile", lambda: compiled)
    loss = trainer._build_loss()  # compilation is lazy: nothing is compiled yet
    inner = loss.loss
    if not compiled:
        assert not isinstance(loss, OptimizedModule)
        assert not isinstance(inner, OptimizedModule) and not isinstance(inner.dc, OptimizedModule)
    elif LOSS_ROWS[name][0] is CE_and_TopKDice_loss:
        # one node for the softmax, both terms and every output: the deep-supervised loss is the compiled unit
        assert isinstance(loss, OptimizedModule) and type(loss._orig_mod) is trainers.TopKDiceDeepSupervision
        assert type(inner) is CE_and_TopKDice_loss
    else:
        # nnU-Net's choice: the Dice term compiled, the cross-entropy term eager
        assert isinstance(inner.dc, OptimizedModule) and not isinstance(inner.ce, OptimizedModule)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile"])
@pytest.mark.parametrize("name", LOSS_CLASS_TRAINERS)
def test_region_dice_term_is_compiled_as_nnunet_compiles_its_own(
    name: str, compiled: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _make(name, tmp_path, regions=True)
    monkeypatch.setattr(trainer, "_do_i_compile", lambda: compiled)
    loss = trainer._build_loss()
    if compiled and name == "nnUNetTrainerTopKDice":  # one node: compiled whole (test_region_loss_is_compiled_...)
        assert isinstance(loss, OptimizedModule) and not isinstance(loss._orig_mod.loss.dc, OptimizedModule)
        return
    inner = loss.loss  # as nnU-Net's DC_and_BCE_loss: only loss.dc is compiled
    assert isinstance(inner.dc, OptimizedModule) is compiled and not isinstance(inner.ce, OptimizedModule)


@pytest.mark.parametrize("name", [n for n in TRAINER_NAMES if n.endswith("Paper")])
def test_paper_schedule(name: str, tmp_path: Path) -> None:
    trainer = _make(name, tmp_path)
    assert (trainer.initial_lr, trainer.weight_decay, trainer.num_epochs) == (5e-4, 1e-4, 300)
    assert (trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (250, 50)  # nnU-Net's
    assert type(trainer.optimizer) is torch.optim.Adam
    assert trainer.optimizer.defaults["weight_decay"] == 1e-4
    assert isinstance(trainer.lr_scheduler, PolyLRScheduler) and trainer.lr_scheduler.exponent == 0.9
    trainer.lr_scheduler.step(150)  # half way: 5e-4 * 0.5**0.9
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4 * 0.5**0.9, rel=1e-12)


@pytest.mark.parametrize("name", [n for n in TRAINER_NAMES if n.endswith("Demo")])
def test_demo_schedule_changes_only_the_length(name: str, tmp_path: Path) -> None:
    # The demo's length is whatever DemoSchedule's attributes say (sized for time: docs/getting_started.md);
    # what must hold is that they are applied and that nothing else of the row's nnU-Net training changes.
    trainer, row = _make(name, tmp_path), _make(_base_row(name), tmp_path)
    schedule = trainers.DemoSchedule
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (
        schedule.demo_num_epochs, schedule.demo_num_iterations_per_epoch, schedule.demo_num_val_iterations_per_epoch,
    )  # fmt: skip
    assert trainer.num_epochs < row.num_epochs and trainer.save_every == schedule.demo_save_every == 1
    assert (trainer.initial_lr, trainer.weight_decay, trainer.batch_size) == (row.initial_lr, row.weight_decay,
                                                                                row.batch_size)  # fmt: skip
    assert type(trainer.optimizer) is type(row.optimizer) is torch.optim.SGD
    assert type(trainer.lr_scheduler) is type(row.lr_scheduler)


def test_demo_schedule_length_is_set_by_its_attributes(tmp_path: Path) -> None:
    class Shorter(trainers.nnUNetTrainerTopKDiceDemo):
        demo_num_epochs, demo_num_iterations_per_epoch, demo_num_val_iterations_per_epoch, demo_save_every = 3, 5, 1, 2

    plans, configuration = synthetic_plans(PATCHES["2d"], base_features=4, max_features=32)
    trainer = setup_trainer(Shorter, plans, configuration, synthetic_dataset_json(3), tmp_path)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch) == (3, 5)
    assert (trainer.num_val_iterations_per_epoch, trainer.save_every) == (1, 2)


def test_demo_schedule_draws_the_progress_plot_once_at_the_end(tmp_path: Path, monkeypatch) -> None:
    trainer = _make("nnUNetTrainerDiceCEDemo", tmp_path)
    drawn: list[str] = []
    monkeypatch.setattr(type(trainer.logger), "plot_progress_png", lambda self, folder: drawn.append(folder))
    # nnU-Net's on_epoch_end draws the plot (and saves checkpoints); here reduced to the drawing
    monkeypatch.setattr(nnUNetTrainer, "on_epoch_end", lambda self: self.logger.plot_progress_png(self.output_folder))
    monkeypatch.setattr(nnUNetTrainer, "on_train_end", lambda self: None)
    for _ in range(3):
        trainer.on_epoch_end()
    assert drawn == []
    assert trainer.logger.plot_progress_png.__func__ is type(trainer.logger).plot_progress_png  # restored
    trainer.on_train_end()
    assert drawn == [trainer.output_folder]


@pytest.mark.parametrize("fold", ["all", 0])
def test_demo_schedule_skips_the_final_validation_of_fold_all_only(fold, tmp_path: Path, monkeypatch) -> None:
    trainer = _make("nnUNetTrainerTopKDiceDemo", tmp_path)
    trainer.fold = fold
    validated: list[bool] = []
    monkeypatch.setattr(
        nnUNetTrainer, "perform_actual_validation", lambda self, probabilities=False: validated.append(probabilities)
    )
    trainer.perform_actual_validation(True)
    assert validated == ([] if fold == "all" else [True])


@pytest.mark.parametrize("name", [n for n in TRAINER_NAMES if n.endswith(PAPER_SUFFIX)])
def test_scheduled_variants_change_only_the_schedule(name: str, tmp_path: Path) -> None:
    trainer = _make(name, tmp_path)
    row = _make(_base_row(name), tmp_path)
    assert type(trainer.loss.loss) is type(row.loss.loss)
    assert trainer.loss.weight_factors == row.loss.weight_factors
    assert isinstance(trainer, type(row))


# --- real training steps ----------------------------------------------------------------------------


def _train_and_check(trainer: nnUNetTrainer, batch: dict, n_steps: int = 2) -> None:
    before = _params(trainer)
    for _ in range(n_steps):
        loss = trainer.train_step(batch)["loss"]
        # finite, not necessarily positive: nnU-Net's soft Dice term is -Dice
        assert np.isfinite(loss) and loss != 0
    grads = [p.grad for p in trainer.network.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    after = _params(trainer)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)), "weights did not change"


# 2d for every distinct loss and schedule, 3d once per loss class (the k variants share their code)
TRAIN_STEP_CASES = [(n, "2d") for n in TRAIN_STEP_TRAINERS] + [(n, "3d") for n in LOSS_CLASS_TRAINERS]


@pytest.mark.parametrize(("name", "dim"), TRAIN_STEP_CASES, ids=[f"{n}-{d}" for n, d in TRAIN_STEP_CASES])
def test_training_steps_with_deep_supervision(name: str, dim: str, tmp_path: Path) -> None:
    trainer = _make(name, tmp_path, dim)
    batch = synthetic_batch(trainer, seed=1)
    assert len(batch["target"]) == len(trainer.loss.weight_factors) == 3  # deep supervision is on
    _train_and_check(trainer, batch)


def _ignored_voxels(trainer: nnUNetTrainer, target: torch.Tensor) -> torch.Tensor:
    """(B, 1, *spatial) bool: the ignore label, or with regions the target's last channel (nnU-Net's layout)."""
    if trainer.label_manager.has_regions:
        return target[:, -1:].bool()
    return target == trainer.label_manager.ignore_label


IGNORE_CASES = [(n, False) for n in DISTINCT_LOSS_TRAINERS] + [(n, True) for n in LOSS_CLASS_TRAINERS]


@pytest.mark.parametrize(
    ("name", "regions"), IGNORE_CASES, ids=[n + ("-regions" if r else "") for n, r in IGNORE_CASES]
)
def test_ignore_label_trains_and_ignored_voxels_get_no_gradient(name: str, regions: bool, tmp_path: Path) -> None:
    trainer = _make(name, tmp_path, ignore_label=True, regions=regions)
    batch = synthetic_batch(trainer, seed=2, ignore_fraction=0.25)
    ignored = [_ignored_voxels(trainer, t) for t in batch["target"]]
    assert all(m.any() and not m.all() for m in ignored)
    _train_and_check(trainer, batch)

    # gradient of the deep-supervised loss with respect to every output of the network
    with torch.no_grad():
        outputs = [o.detach().requires_grad_(True) for o in trainer.network(batch["data"])]
    trainer.loss(outputs, batch["target"]).backward()
    for scale, (output, mask, weight) in enumerate(zip(outputs, ignored, trainer.loss.weight_factors, strict=True)):
        grad = torch.zeros_like(output) if output.grad is None else output.grad
        assert torch.all(grad.masked_select(mask.expand_as(grad)) == 0), f"gradient on ignored voxels, scale {scale}"
        if weight > 0:
            assert grad.masked_select(~mask.expand_as(grad)).abs().sum() > 0


@pytest.mark.parametrize("ignore_label", [False, True], ids=["plain", "ignore-label"])
@pytest.mark.parametrize("name", DISTINCT_LOSS_TRAINERS, ids=DISTINCT_LOSS_TRAINERS)
def test_region_loss_is_nnunets_with_the_rows_term_replaced(name: str, ignore_label: bool, tmp_path: Path) -> None:
    # what nnU-Net's default trainer builds for regions (DC_and_BCE_loss), with the row's change applied
    trainer = _make(name, tmp_path, regions=True, ignore_label=ignore_label)
    assert trainer.label_manager.has_regions
    reference_wrapped = nnUNetTrainer._build_loss(trainer)
    inner, reference = trainer.loss.loss, reference_wrapped.loss
    label_loss, k = LOSS_ROWS[name]
    region_loss, pixel_term = REGION_LOSSES[label_loss]
    assert type(inner) is region_loss and type(reference) is DC_and_BCE_loss
    assert type(inner.ce) is pixel_term
    assert inner.use_ignore_label is reference.use_ignore_label is ignore_label
    assert (inner.dc.do_bg, inner.dc.batch_dice, inner.dc.smooth, inner.dc.ddp) == (
        reference.dc.do_bg,
        reference.dc.batch_dice,
        reference.dc.smooth,
        reference.dc.ddp,
    )
    if region_loss is BCE_and_TopKDice_loss:
        # one node for the loss and every deep-supervision output (tests/test_losses_region_fused.py)
        assert type(trainer.loss) is trainers.RegionTopKDiceDeepSupervision and inner.fused
        assert type(inner.dc) is SigmoidTopKDiceLoss and inner.dc.k == k
        assert inner.ce.reduction == reference.ce.reduction
        assert (inner.weight_ce, inner.weight_dice) == (reference.weight_ce, reference.weight_dice)
    else:  # nnU-Net's own soft Dice on sigmoids, exactly as in DC_and_BCE_loss
        assert type(inner.dc) is MemoryEfficientSoftDiceLoss and inner.dc.apply_nonlin is torch.sigmoid
        assert (inner.weight_pixel, inner.weight_dice) == (reference.weight_ce, reference.weight_dice)
        assert inner.ce.gamma == 2.0 if pixel_term is SigmoidFocalLoss else inner.ce.k == k
    assert trainer.loss.weight_factors == reference_wrapped.weight_factors


def test_region_loss_fusion_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _make("nnUNetTrainerTopKDice", tmp_path, regions=True, ignore_label=True)
    monkeypatch.setattr(trainer, "fuse_deep_supervision", False)
    plain = trainer._build_loss()
    assert type(plain) is DeepSupervisionWrapper and type(plain.loss) is BCE_and_TopKDice_loss
    assert not plain.loss.fused  # the autograd reference
    assert plain.weight_factors == trainer.loss.weight_factors
    trainer.enable_deep_supervision = False
    assert type(trainer._build_loss()) is BCE_and_TopKDice_loss


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])
def test_region_loss_is_compiled_whole_when_fused(fused: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _make("nnUNetTrainerTopKDice", tmp_path, regions=True)
    monkeypatch.setattr(trainer, "_do_i_compile", lambda: True)
    monkeypatch.setattr(trainer, "fuse_deep_supervision", fused)
    loss = trainer._build_loss()  # compilation is lazy: nothing is compiled yet
    if fused:  # loss.dc is not called by the node: the wrapper is the compiled unit
        assert isinstance(loss, OptimizedModule) and type(loss._orig_mod) is trainers.RegionTopKDiceDeepSupervision
    else:
        assert type(loss) is DeepSupervisionWrapper and isinstance(loss.loss.dc, OptimizedModule)


def test_nnunet_loss_rows_on_regions_are_nnunets(tmp_path: Path) -> None:
    # docs/region_based_training.md's table: CE + Dice rows get nnU-Net's region loss; the CE rows refuse,
    # naming the trainer and why (SPEC 3), where nnU-Net's own CE trainer stops at a bare assert
    assert type(_make("nnUNetTrainerDiceCEDemo", tmp_path, regions=True).loss.loss) is DC_and_BCE_loss
    for name in ("nnUNetTrainerCEPaper", "nnUNetTrainerCEDemo"):
        with pytest.raises(RuntimeError, match=rf"^{name} trains cross entropy over softmax classes, which has no "
                           "region formulation, and this dataset is region-based"):  # fmt: skip
            _make(name, tmp_path, regions=True)
    with pytest.raises(AssertionError, match="regions not supported"):
        _make("nnUNetTrainerCELoss", tmp_path, regions=True)


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("name", LOSS_CLASS_TRAINERS)
def test_region_dataset_trains(name: str, dim: str, tmp_path: Path) -> None:
    trainer = _make(name, tmp_path, dim, regions=True)
    batch = synthetic_batch(trainer, seed=4)
    # 3 labels -> 2 nested regions (1, 2) and (2,), one sigmoid output each
    assert [t.shape[1] for t in batch["target"]] == [2, 2, 2] and batch["target"][0].dtype == torch.bool
    assert trainer.label_manager.num_segmentation_heads == 2
    _train_and_check(trainer, batch)


# --- resume: the same tie-breaking map in a fresh process -------------------------------------------


# --- discovery through nnUNet_extTrainer, in a subprocess -----------------------------------------------

# argv: the ext folder, then the trainer names; nnU-Net reads nnUNet_extTrainer at each look-up, so one
# process looks up without the folder (a fresh process: only nnU-Net's built-ins are imported), then with it
_LOOKUP = """
import json, os, sys
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
results = {}
for ext_trainer in ("", sys.argv[1]):
    os.environ.pop("nnUNet_extTrainer", None)
    if ext_trainer:
        os.environ["nnUNet_extTrainer"] = ext_trainer
    found = results[ext_trainer or "none"] = {}
    for name in sys.argv[2:]:
        try:
            cls = recursive_find_trainer_class_by_name(name)
        except RuntimeError as e:
            found[name] = None if "Could not find requested nnunet trainer" in str(e) else repr(e)
        else:
            import nnunet_topkdice.trainers as t
            found[name] = [cls.__module__, cls is getattr(t, name)]
print("RESULT" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def lookups() -> dict:
    """``{"folder": topkdice trainer-dir's output, "none": {name: found}, folder: {name: found}}``: each
    of our trainer names looked up by nnU-Net without ``nnUNet_extTrainer``, then with the README's set-up
    (``export nnUNet_extTrainer="$(topkdice trainer-dir)"``); found is ``[module, same class]`` or None."""
    folder = subprocess.run([BIN / "topkdice", "trainer-dir"], capture_output=True, text=True, check=True).stdout
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    proc = subprocess.run(
        [sys.executable, "-c", _LOOKUP, folder.strip(), *TRAINER_NAMES],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return {"folder": folder, **json.loads(line.removeprefix("RESULT"))}


def test_nnunet_finds_every_trainer_through_the_readme_setup(lookups: dict) -> None:
    # the README's set-up: export nnUNet_extTrainer="$(topkdice trainer-dir)"
    folder = lookups["folder"]
    assert folder.endswith("\n") and Path(folder.strip()).is_dir()
    found = lookups[folder.strip()]
    for name in TRAINER_NAMES:
        module, same_class = found[name]
        assert module.startswith("nnunet_topkdice.trainers.") and same_class, (name, found[name])


def test_no_trainer_collides_with_nnunet_builtins(lookups: dict) -> None:
    # built-ins are searched first: without the ext folder none of our names may resolve
    assert lookups["none"] == dict.fromkeys(TRAINER_NAMES)


# --- torch.compile ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("regions", [False, True], ids=["labels", "regions"])
def test_loss_under_torch_compile_matches_eager(regions: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eager_trainer = _make("nnUNetTrainerTopKDice", tmp_path, regions=regions, ignore_label=True)
    compiled_trainer = _make("nnUNetTrainerTopKDice", tmp_path, regions=regions, ignore_label=True)
    monkeypatch.setattr(compiled_trainer, "_do_i_compile", lambda: True)
    compiled_loss = compiled_trainer._build_loss()  # what the trainer builds on a GPU
    # the compiled unit is the whole deep-supervised loss: one graph for every output
    assert isinstance(compiled_loss, OptimizedModule)
    wrapper = trainers.RegionTopKDiceDeepSupervision if regions else trainers.TopKDiceDeepSupervision
    assert type(compiled_loss._orig_mod) is wrapper
    batch = synthetic_batch(eager_trainer, seed=3, ignore_fraction=0.25)
    with torch.no_grad():
        outputs = eager_trainer.network(batch["data"])
    targets = batch["target"]
    results = []
    for loss in (eager_trainer.loss, compiled_loss):
        leaves = [x.clone().requires_grad_(True) for x in outputs]
        value = loss(leaves, targets)
        value.backward()
        results.append((value.detach(), leaves[0].grad))
    (eager_value, eager_grad), (compiled_value, compiled_grad) = results
    assert torch.isfinite(compiled_value) and 0 < float(compiled_value)
    torch.testing.assert_close(compiled_value, eager_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-7)
    target = targets[0]
    # the ignored voxels: nnU-Net's ignore label, or for regions the target's last channel
    ignored = target[:, -1:].bool() if regions else target == 3
    assert torch.all(compiled_grad.masked_select(ignored.expand_as(compiled_grad)) == 0)
