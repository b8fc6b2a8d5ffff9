"""``topkdice demo``: twice the same numbers, a terminal that fits on one screen, and the time of each phase.

A reduced demo through the real command line: the same steps and code as ``topkdice demo``, with a
smaller synthetic set (generated into the work directory first, so the demo's generation step finds it)
and the demo's two trainers replaced by tiny-schedule subclasses of the same name from a user's
``nnUNet_extTrainer`` folder (the user's folders come first, so nnU-Net finds those). The second run
reuses the first one's converted and preprocessed data and trains, predicts and evaluates from scratch.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from pipeline_fixtures import TOPKDICE, clean_environment, run

from nnunet_topkdice.pipeline.compare import compare_steps
from nnunet_topkdice.pipeline.demo import DEMO_SEEDS, demo_config, demo_steps_before
from nnunet_topkdice.pipeline.plan import resolve_plan
from nnunet_topkdice.pipeline.runner import run_steps
from nnunet_topkdice.pipeline.steps import (
    PHASES,
    Step,
    format_duration,
    format_phase_times,
    phase_of,
    phase_seconds,
)
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
    # the time of each phase ends the run (stderr), one training and one prediction process per seed
    times = one.stderr.strip().splitlines()[-1]  # the set was generated above: generation did not run
    assert times.startswith("Time: conversion ") and ", trainings " in times and "(2 steps), predictions " in times
    assert one.stderr.count("$ nnUNet_results=") == 1 and "topkdice predict -i " in one.stderr
    assert "Please cite" in (first / "logs" / "train_nnUNetTrainerTopKDiceDemo_seed1_foldall.log").read_text()


def test_the_demo_has_three_seeds_and_every_step_a_phase(tmp_path: Path) -> None:
    config = demo_config(tmp_path, device="cpu", environ={})
    assert len(config.seeds) == len(DEMO_SEEDS) >= 3  # the fewest with which the verdict may say better or worse
    steps = [*demo_steps_before(config), *compare_steps(resolve_plan(config))]
    phases = [phase_of(step.name) for step in steps]
    assert set(phases) <= set(PHASES.values())
    assert list(dict.fromkeys(phases)) == [
        "generation", "conversion", "preprocessing", "trainings", "predictions", "evaluation",
    ]  # fmt: skip
    assert phases.count("trainings") == 2 * len(DEMO_SEEDS) and phases.count("predictions") == len(DEMO_SEEDS)


def test_phase_times_add_up_each_phase_in_pipeline_order() -> None:
    durations = {
        "generate": 1.2, "convert": 2.6, "preprocess": 21.4, "train_A_seed0_foldall": 50.0,
        "train_B_seed0_foldall": 70.4, "predict_seed0": 9.0, "evaluate": 8.0, "mystery_step": 0.4,
    }  # fmt: skip
    spans, clock = {}, 100.0
    for name, seconds in durations.items():  # one after the other
        spans[name] = (clock, clock + seconds)
        clock += seconds
    assert format_phase_times(spans, total=163.4) == (
        "Time: generation 1 s, conversion 3 s, preprocessing 21 s, trainings 2 min 0 s (2 steps), predictions 9 s, "
        "evaluation 8 s, mystery 0 s; total 2 min 43 s"
    )
    assert format_phase_times({}, total=0.2) == "Time: nothing ran; total 0 s"
    assert [format_duration(s) for s in (0.4, 59.5, 60.0, 3599.6)] == ["0 s", "1 min 0 s", "1 min 0 s", "60 min 0 s"]


def test_phase_times_count_steps_run_side_by_side_once() -> None:
    # --cpu-jobs 2: A and B of seed 0 overlap, C starts when A ends and runs past B; D after a pause
    spans = {
        "train_A_seed0": (0.0, 30.0), "train_B_seed0": (1.0, 40.0), "train_C_seed1": (30.0, 65.0),
        "train_D_seed1": (70.0, 80.0), "predict_seed0": (80.0, 84.0), "predict_seed1": (80.5, 83.0),
    }  # fmt: skip
    assert phase_seconds(spans) == {"trainings": (75.0, 4), "predictions": (4.0, 2)}
    assert format_phase_times(spans, total=84.0) == (
        "Time: trainings 1 min 15 s (4 steps), predictions 4 s (2 steps); total 1 min 24 s"
    )


def test_the_runner_times_each_step_that_runs(tmp_path: Path) -> None:
    def sleeping(name: str, seconds: float, done: str | None = None) -> Step:
        return Step(name, name, lambda: done, action=lambda log: time.sleep(seconds))

    steps = [sleeping("generate", 0.05), sleeping("train_a", 0.2), sleeping("train_b", 0.0, done="already trained")]
    report = run_steps(steps, {}, log_dir=tmp_path, stream=io.StringIO())
    seconds = {name: end - start for name, (start, end) in report.spans.items()}
    assert list(seconds) == ["generate", "train_a"]  # not the skipped one
    assert 0.05 <= seconds["generate"] < 0.2 <= seconds["train_a"] < 2.0
