"""End to end through nnU-Net's own command line, as a user runs it, with a TopK-Dice trainer.

Synthetic 2D dataset -> ``nnUNetv2_plan_and_preprocess`` -> ``topkdice train --seed 0`` (nnU-Net's training,
seeded; interrupted, then resumed with ``--c``) -> nnU-Net's final validation of the fold, scored. nnU-Net
finds the trainer through ``nnUNet_extTrainer`` set to ``topkdice trainer-dir`` plus a test-only folder holding a
shorter version of ``nnUNetTrainerTopKDiceDemo`` that can simulate a crash.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nnunet_e2e import BIN, DATASET_ID, DATASET_NAME, TinyDataset, nnunet_env, run

TRAINER = "nnUNetTrainerTopKDiceE2ETest"
N_EPOCHS, STOP_AFTER_EPOCH = 4, 2

# A shorter demo trainer; TOPKDICE_TEST_STOP_AFTER_EPOCH makes it exit like a crashed job (after the
# checkpoint of that epoch is written). TOPKDICE_TEST_TIE_BREAK_OUT records how the trainer's own loss
# breaks ties: its gradient on logits that tie everywhere, where only the tie-break map decides which
# voxels are excluded (excluded and kept voxels get different gradients).
TEST_EXT_MODULE = f"""
import os

import torch

from nnunet_topkdice.trainers import nnUNetTrainerTopKDiceDemo


class {TRAINER}(nnUNetTrainerTopKDiceDemo):
    demo_num_epochs = {N_EPOCHS}
    demo_num_iterations_per_epoch = 12
    demo_num_val_iterations_per_epoch = 2

    def on_train_start(self):
        super().on_train_start()
        patch = tuple(self.configuration_manager.patch_size)
        logits = torch.zeros((1, self.label_manager.num_segmentation_heads, *patch), requires_grad=True)
        target = torch.ones((1, 1, *patch), dtype=torch.int16)
        self.loss.loss(logits, target).backward()  # the compound loss inside deep supervision
        torch.save(logits.grad, os.environ["TOPKDICE_TEST_TIE_BREAK_OUT"])

    def on_epoch_end(self):
        super().on_epoch_end()
        stop = os.environ.get("TOPKDICE_TEST_STOP_AFTER_EPOCH")
        if stop is not None and self.current_epoch == int(stop):
            raise SystemExit(75)
"""


@pytest.mark.slow
def test_topk_dice_trainer_end_to_end_with_resume(tmp_path: Path, tiny_dataset: TinyDataset) -> None:
    env = nnunet_env(tmp_path, TEST_EXT_MODULE, "topkdice_e2e_test_trainers")
    results = tmp_path / "results"
    # the tiny dataset is planned and preprocessed once per session (conftest.py); training only reads it
    env.update(nnUNet_raw=str(tiny_dataset.raw), nnUNet_preprocessed=str(tiny_dataset.preprocessed))
    # no data-augmentation worker processes (0 breaks planning, hence only for training)
    env["nnUNet_n_proc_DA"] = "0"

    # first run: dies after epoch 2, leaving checkpoint_latest.pth behind and no final checkpoint
    train = [BIN / "topkdice", "train", "--seed", "0", DATASET_ID, "2d", "0", "-tr", TRAINER, "-device", "cpu"]
    first_map, resumed_map = tmp_path / "tie_break_first.pt", tmp_path / "tie_break_resumed.pt"
    crash_env = {
        **env,
        "TOPKDICE_TEST_STOP_AFTER_EPOCH": str(STOP_AFTER_EPOCH),
        "TOPKDICE_TEST_TIE_BREAK_OUT": str(first_map),
    }
    run(train, crash_env, expect=75)
    fold = results / "seed_0" / DATASET_NAME / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    assert torch.load(fold / "checkpoint_latest.pth", weights_only=False)["current_epoch"] == STOP_AFTER_EPOCH
    assert not (fold / "checkpoint_final.pth").exists()

    # resumed run: continues at epoch 2 (same logger history) with the same tie-break map
    run([*train, "--c"], {**env, "TOPKDICE_TEST_TIE_BREAK_OUT": str(resumed_map)})
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["trainer_name"] == TRAINER and final["current_epoch"] == N_EPOCHS
    assert len(final["logging"]["train_losses"]) == N_EPOCHS
    first_grad, resumed_grad = torch.load(first_map), torch.load(resumed_map)
    assert first_grad.unique().numel() > 1  # some voxels were excluded: the map decided something
    assert torch.equal(first_grad, resumed_grad)

    # nnU-Net's final validation (fold 0's held-out cases, predicted and scored by nnU-Net itself) after the
    # resume: one label everywhere scores 0.09 (an untrained network does about that); a trained one > 0.9.
    # nnUNetv2_predict with models that topkdice train wrote: tests/test_pipeline_predict.py.
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 3  # nnU-Net's 5-fold split of the 12 training cases
    assert summary["foreground_mean"]["Dice"] > 0.8, summary["foreground_mean"]
    for label in ("1", "2"):
        assert summary["mean"][label]["Dice"] > 0.6, summary["mean"]
