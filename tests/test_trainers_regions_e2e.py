"""A region-based (sigmoid) dataset end to end through nnU-Net's own command line with a TopK-Dice trainer.

BraTS-style nested regions (labels 0..3; regions whole = (1, 2, 3), core = (2, 3), enhancing = (3,) with
``regions_class_order`` (1, 2, 3)) -> ``nnUNetv2_plan_and_preprocess`` -> a short seeded training
(``topkdice train --seed 0``, nnU-Net's own training loop) with a test-only version of
``nnUNetTrainerTopKDiceDemo`` (in its own ``nnUNet_extTrainer`` folder) -> nnU-Net's final validation, which
scores the regions and exports label maps. The trainer records what reached its loss, so the test sees
nnU-Net's real region targets arrive in ``BCE_and_TopKDice_loss``. (``nnUNetv2_predict`` with models that
``topkdice train`` wrote: ``tests/test_pipeline_predict.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnunet_e2e import BIN, nnunet_env, run, write_dataset

DATASET_ID = 988
DATASET_NAME = f"Dataset{DATASET_ID}_TopKDiceRegionsE2E"
TRAINER = "nnUNetTrainerTopKDiceRegionsE2ETest"

# The dataset.json of the example in docs/region_based_training.md.
REGION_LABELS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}
REGIONS_CLASS_ORDER = [1, 2, 3]

TEST_EXT_MODULE = f"""
import json
import os

from nnunet_topkdice.trainers import nnUNetTrainerTopKDiceDemo


class {TRAINER}(nnUNetTrainerTopKDiceDemo):
    demo_num_epochs = 3
    demo_num_iterations_per_epoch = 12
    demo_num_val_iterations_per_epoch = 1

    def train_step(self, batch):
        # record, once, the loss and the deep-supervision targets nnU-Net's region pipeline hands it
        record = os.path.join(self.output_folder, "region_loss.json")
        if not os.path.exists(record):
            with open(record, "w") as f:
                json.dump({{
                    "loss": type(self.loss.loss).__name__,
                    "dice": type(self.loss.loss.dc).__name__,
                    "do_bg": self.loss.loss.dc.do_bg,
                    "targets": [[list(t.shape), str(t.dtype)] for t in batch["target"]],
                    "outputs": self.label_manager.num_segmentation_heads,
                }}, f)
        return super().train_step(batch)
"""


def make_region_dataset(raw: Path, n_train: int = 8, n_test: int = 2, seed: int = 0) -> Path:
    """1x32x32 images with nested squares: 14x14 label 1 holding 8x8 label 2 holding 4x4 label 3."""

    def nested_squares(rng: np.random.Generator) -> np.ndarray:
        label = np.zeros((1, 32, 32), np.uint8)
        r, c = rng.integers(1, 17, 2)
        label[0, r : r + 14, c : c + 14] = 1
        label[0, r + 3 : r + 11, c + 3 : c + 11] = 2
        label[0, r + 5 : r + 9, c + 5 : c + 9] = 3
        return label

    return write_dataset(
        raw / DATASET_NAME,
        nested_squares,
        REGION_LABELS,
        n_train=n_train,
        n_test=n_test,
        seed=seed,
        regions_class_order=REGIONS_CLASS_ORDER,
    )


@pytest.mark.slow
def test_region_dataset_trains_and_predicts_with_topk_dice(tmp_path: Path) -> None:
    env = nnunet_env(tmp_path, TEST_EXT_MODULE, "topkdice_regions_e2e_test_trainers")
    make_region_dataset(tmp_path / "raw")
    # one process for the fingerprint too (its default, 8, costs more than it saves on a tiny dataset)
    run([BIN / "nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", "1", "-npfp", "1"], env)
    env["nnUNet_n_proc_DA"] = "0"  # only for training: 0 breaks planning

    run([BIN / "topkdice", "train", "--seed", "0", DATASET_ID, "2d", "0", "-tr", TRAINER, "-device", "cpu"], env)
    fold = tmp_path / "results" / "seed_0" / DATASET_NAME / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    record = json.loads((fold / "region_loss.json").read_text())
    assert (record["loss"], record["dice"], record["do_bg"], record["outputs"]) == (
        "BCE_and_TopKDice_loss",
        "SigmoidTopKDiceLoss",
        True,
        3,
    )
    # one (B, 3, ...) bool region map per deep-supervision output, no ignore channel
    assert [shape[1] for shape, _ in record["targets"]] == [3] * len(record["targets"]) and len(record["targets"]) > 1
    assert {dtype for _, dtype in record["targets"]} == {"torch.bool"}
    # nnU-Net's final validation evaluated the regions, not the labels
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"(1, 2, 3)", "(2, 3)", "3"}, summary["mean"].keys()
    # it learned: foreground everywhere scores 2 * 196 / (196 + 1024) = 0.32 on the whole-tumour region
    assert summary["mean"]["(1, 2, 3)"]["Dice"] > 0.6, summary["mean"]

    # nnU-Net's export of those predictions (what nnUNetv2_predict writes too, through the same function):
    # regions -> labels by regions_class_order, so only the dataset's labels 0..3 can appear
    files = sorted((fold / "validation").glob("*.nii.gz"))
    assert len(files) == len(summary["metric_per_case"]) == 2  # nnU-Net's 5-fold split of the 8 training cases
    for path in files:
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert prediction.shape == (1, 32, 32)
        assert set(np.unique(prediction).tolist()) <= {0, 1, 2, 3}, np.unique(prediction)
