"""``topkdice demo`` twice gives the same numbers, and its terminal output fits on one screen.

A reduced demo through the real command line: the same steps and code as ``topkdice demo``, with a
smaller synthetic set (generated into the work directory first, so the demo's generation step finds it)
and the demo's two trainers replaced by tiny-schedule subclasses of the same name from a user's
``nnUNet_extTrainer`` folder (the user's folders come first, so nnU-Net finds those). The second run
reuses the first one's converted and preprocessed data and trains, predicts and evaluates from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_fixtures import TOPKDICE, clean_environment, run

from nnunet_topkdice.pipeline.synthetic import generate_synapse_like

SHADOW_TRAINERS = """
from nnunet_topkdice.trainers import nnUNetTrainerDiceCEDemo as _DiceCE, nnUNetTrainerTopKDiceDemo as _TopKDice


class _Tiny:
    demo_num_epochs = 2
    demo_num_iterations_per_epoch = 2
    demo_num_val_iterations_per_epoch = 1


class nnUNetTrainerDiceCEDemo(_Tiny, _DiceCE):
    pass


class nnUNetTrainerTopKDiceDemo(_Tiny, _TopKDice):
    pass
"""


def _without_folders(value):
    if isinstance(value, dict):
        return {k: _without_folders(v) for k, v in value.items() if "dir" not in k}
    if isinstance(value, list):
        return [_without_folders(v) for v in value]
    return value


def _numbers(results: dict) -> dict:
    """What must not change between runs: every score and the comparisons (not the folders)."""
    return {"runs": _without_folders(results["runs"]), "comparisons": results["comparisons"]}


@pytest.mark.slow
def test_demo_twice_gives_identical_results_and_a_short_terminal(tmp_path: Path) -> None:
    ext = tmp_path / "tiny_demo_trainers"
    ext.mkdir()
    (ext / "tiny_demo_trainers.py").write_text(SHADOW_TRAINERS)
    first, second = tmp_path / "first", tmp_path / "second"
    generate_synapse_like(first / "synthetic_synapse", in_plane=32, num_slices=(4, 5))
    env = clean_environment(nnUNet_extTrainer=str(ext))
    argv = [TOPKDICE, "demo", "--device", "cpu", "--seeds", "1", "-np", "1"]  # one seed: half the time

    one = run([*argv, "-w", first], env)
    reuse = {"nnUNet_raw": str(first / "nnUNet_raw"), "nnUNet_preprocessed": str(first / "nnUNet_preprocessed")}
    (second / "synthetic_synapse").mkdir(parents=True)  # converted already: nothing to generate
    two = run([*argv, "-w", second], {**env, **reuse})

    assert "skipped (already preprocessed)" in two.stderr and "topkdice train --seed 1 990 2d all" in two.stderr
    results = [json.loads((w / "evaluation" / "fold_all" / "results.json").read_text()) for w in (first, second)]
    assert _numbers(results[0]) == _numbers(results[1])
    assert results[0]["comparisons"][0]["n_cases"] == 12

    # One screen: a line per step, the table once, the files, and the verdict last.
    lines = (one.stderr + one.stdout).splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    assert one.stdout.count("| CE + topK-Dice ") == 1
    assert one.stdout.strip().splitlines()[-1].startswith("CE + topK-Dice vs CE + Dice: ")
    picture = first / "evaluation" / "fold_all" / "cases" / "CE_+_topK-Dice_vs_CE_+_Dice.png"
    assert picture.is_file() and any(line.startswith("Cases:") and line.endswith(picture.name) for line in lines)
    assert "Please cite" not in one.stderr + one.stdout
    assert "Please cite" in (first / "logs" / "train_nnUNetTrainerTopKDiceDemo_seed1_foldall.log").read_text()
