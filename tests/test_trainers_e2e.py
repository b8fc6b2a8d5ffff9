"""End to end through nnU-Net's own command line, as a user runs it, with a TopK-Dice trainer.

Synthetic 2D dataset -> ``nnUNetv2_plan_and_preprocess`` -> ``nnUNetv2_train`` (interrupted, then resumed
with ``--c``) -> ``nnUNetv2_predict`` -> ``nnUNetv2_evaluate_folder``. nnU-Net finds the trainer through
``nnUNet_extTrainer`` set to ``topkdice trainer-dir`` plus a test-only folder holding a shorter version of
``nnUNetTrainerTopKDiceDemo`` that can simulate a crash.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from nnunet_e2e import BIN, DATASET_ID, DATASET_NAME, TinyDataset
from nnunet_e2e import run as _run

TRAINER = "nnUNetTrainerTopKDiceE2ETest"
N_EPOCHS, STOP_AFTER_EPOCH = 4, 2

# A shorter demo trainer; TOPKDICE_TEST_STOP_AFTER_EPOCH makes it exit like a crashed job (after the
# checkpoint of that epoch is written), TOPKDICE_TEST_TIE_BREAK_OUT records the loss's tie-break map.
TEST_EXT_MODULE = f"""
import os

import torch

from nnunet_topkdice.losses import tie_break_map
from nnunet_topkdice.trainers import nnUNetTrainerTopKDiceDemo


class {TRAINER}(nnUNetTrainerTopKDiceDemo):
    demo_num_epochs = {N_EPOCHS}
    demo_num_iterations_per_epoch = 12
    demo_num_val_iterations_per_epoch = 2

    def on_train_start(self):
        super().on_train_start()
        topk_dice = self.loss.loss.dc
        tie_break = tie_break_map(self.configuration_manager.patch_size, "cpu",
                                  seed=topk_dice.tie_break_seed, scale=topk_dice.tie_break_scale)
        torch.save(tie_break, os.environ["TOPKDICE_TEST_TIE_BREAK_OUT"])

    def on_epoch_end(self):
        super().on_epoch_end()
        stop = os.environ.get("TOPKDICE_TEST_STOP_AFTER_EPOCH")
        if stop is not None and self.current_epoch == int(stop):
            raise SystemExit(75)
"""


@pytest.mark.slow
def test_topk_dice_trainer_end_to_end_with_resume(tmp_path: Path, tiny_dataset: TinyDataset) -> None:
    results, dataset = tmp_path / "results", tiny_dataset.root
    test_ext = tmp_path / "test_ext"
    test_ext.mkdir()
    (test_ext / "topkdice_e2e_test_trainers.py").write_text(textwrap.dedent(TEST_EXT_MODULE))
    trainer_dir = subprocess.run(
        [BIN / "topkdice", "trainer-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = tiny_dataset.environment(results)  # planned and preprocessed once per session
    env["nnUNet_extTrainer"] = os.pathsep.join([trainer_dir, str(test_ext)])
    # no data-augmentation worker processes (0 breaks planning, hence only for training)
    env["nnUNet_n_proc_DA"] = "0"

    # first run: dies after epoch 2, leaving checkpoint_latest.pth behind and no final checkpoint
    train = [BIN / "nnUNetv2_train", DATASET_ID, "2d", "0", "-tr", TRAINER, "-device", "cpu"]
    first_map, resumed_map = tmp_path / "tie_break_first.pt", tmp_path / "tie_break_resumed.pt"
    crash_env = {
        **env,
        "TOPKDICE_TEST_STOP_AFTER_EPOCH": str(STOP_AFTER_EPOCH),
        "TOPKDICE_TEST_TIE_BREAK_OUT": str(first_map),
    }
    _run(train, crash_env, expect=75)
    fold = results / DATASET_NAME / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    assert torch.load(fold / "checkpoint_latest.pth", weights_only=False)["current_epoch"] == STOP_AFTER_EPOCH
    assert not (fold / "checkpoint_final.pth").exists()

    # resumed run: continues at epoch 2 (same logger history) with the same tie-break map
    _run([*train, "--c"], {**env, "TOPKDICE_TEST_TIE_BREAK_OUT": str(resumed_map)})
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["trainer_name"] == TRAINER and final["current_epoch"] == N_EPOCHS
    assert len(final["logging"]["train_losses"]) == N_EPOCHS
    assert torch.equal(torch.load(first_map), torch.load(resumed_map))

    predictions = tmp_path / "predictions"
    _run(
        [BIN / "nnUNetv2_predict", "-i", dataset / "imagesTs", "-o", predictions,
         "-d", DATASET_ID, "-c", "2d", "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"],
        env,
    )  # fmt: skip
    assert sorted(p.name for p in predictions.glob("*.nii.gz")) == [f"case{i:03d}.nii.gz" for i in range(12, 16)]

    _run(
        [BIN / "nnUNetv2_evaluate_folder", dataset / "labelsTs", predictions,
         "-djfile", fold.parent / "dataset.json", "-pfile", fold.parent / "plans.json", "-np", "1"],
        env,
    )  # fmt: skip
    summary = json.loads((predictions / "summary.json").read_text())
    # one label everywhere scores 0.09 (an untrained network does about that); a trained one > 0.9
    assert summary["foreground_mean"]["Dice"] > 0.8, summary["foreground_mean"]
    for label in ("1", "2"):
        assert summary["mean"][label]["Dice"] > 0.6, summary["mean"]
