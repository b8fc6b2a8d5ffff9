"""``topkdice compare`` end to end through the real command line, in 2d and in 3d_fullres.

One tiny 3D dataset (4 training and 2 test cases, a 2-fold ``splits_final.json``) and two tiny trainers
from a user's own ``nnUNet_extTrainer`` folder, two seeds. Per configuration:

1. ``--emit-slurm`` prepares the data and writes the job array of the cross-validation trainings;
2. its tasks run here (``SLURM_ARRAY_TASK_ID=i bash FILE``, two at a time, as a cluster would run them),
   in 2d one of them stopping after its first epoch like a killed job;
3. the printed collect command (the same ``compare`` call) resumes that training with ``--c``, collects
   the validation predictions and ends with the verdict; the terminal shows steps, not nnU-Net's output;
4. the same call again has nothing to do and changes no file;
5. ``--test-set``: fold ``all`` per trainer and seed (a second job array), then ``imagesTs`` predicted
   with each seed's models (one ``topkdice predict`` per seed) and evaluated.

2d trains the folds of ``splits_final.json`` (no ``--folds``: 8 trainings) and runs all five steps.
3d_fullres trains ``--folds 0`` only (4 trainings), kills none and skips step 5: the pipeline has no step
that depends on the configuration beyond the ``-c`` it passes on, so 3d_fullres checks that nnU-Net
plans, trains, validates and is collected in 3D, and the flag, while the resume and the test set, which
would cost the suite about a minute more in 3D, are checked once, in 2d.

The steps run once per configuration and session (``tests/compare_sweep.py``, fixtures in ``conftest.py``),
which records what each printed; ``tests/test_pipeline_predict.py`` predicts with the 2d sweep's models.
"""

from __future__ import annotations

import json
import re

import pytest
from compare_sweep import DATASET_ID, FIRST, SECOND, Sweep

NNUNET_BANNER = "Please cite the following paper"


@pytest.mark.slow
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_compare_sweep_on_slurm_then_resume_then_test_set(request: pytest.FixtureRequest, configuration: str) -> None:
    # the sweep runs once per session (conftest.py); tests/test_pipeline_predict.py uses the 2d one's models
    sweep: Sweep = request.getfixturevalue(f"compare_sweep_{configuration}")
    data, work = sweep.data, sweep.work

    # 1. The job array: the data is prepared here, every training is one task.
    n_tasks = 2 * 2 * len(sweep.folds)  # trainers x seeds x folds
    emitted = sweep.emitted
    assert "Wrote" in emitted.stdout and f"{n_tasks} array task(s)" in emitted.stdout
    collect = emitted.stdout.splitlines()[-1].removeprefix("Then collect: ")
    assert collect.startswith("topkdice compare -d 986 -c") and "--emit-slurm" not in collect
    assert f"#SBATCH --array=0-{n_tasks - 1}" in sweep.script_text
    assert sweep.script_text.count(f" {DATASET_ID} {configuration} ") == n_tasks  # a training per task, this -c

    # 2. The tasks, run here; in 2d the one of SECOND, seed 1, fold 1 is killed after its first epoch.
    err, out = sweep.collected.stderr, sweep.collected.stdout
    interrupted = sweep.interrupted
    if sweep.interrupted_files is None:
        assert sweep.codes == [0] * n_tasks and "-device cpu --c" not in err
        assert err.count("skipped (already trained)") == n_tasks
    else:
        assert sweep.codes == [0] * (n_tasks - 1) + [75]  # task order: seed, trainer, fold
        assert "checkpoint_latest.pth" in sweep.interrupted_files
        assert "checkpoint_final.pth" not in sweep.interrupted_files

        # 3. The collect command resumes the interrupted training ...
        assert err.count("skipped (already trained)") == n_tasks - 1
        fold = sweep.folds[-1]
        assert f"topkdice train --seed 1 {DATASET_ID} {configuration} {fold} -tr {SECOND} -device cpu --c" in err
        assert (interrupted / "epochs_started.txt").read_text().split() == ["0", "1"]
        assert NNUNET_BANNER in (work / "logs" / f"train_{SECOND}_seed1_fold{fold}.log").read_text()
    assert sweep.untouched_mtimes[0] == sweep.untouched_mtimes[1]  # FIRST, seed 0, fold 0 not trained again
    # ... and ends with the verdict, then how many seeds would settle it (2 seeds: exploratory, never
    # "significant")
    held_out = {case for fold in sweep.folds for case in data.validation(fold)}
    validated = [case for case in data.cases if case in held_out]
    lines = out.strip().splitlines()
    [verdict] = [line for line in lines if line.startswith(f"{SECOND} vs {FIRST}: ")]
    assert re.match(
        rf"{SECOND} vs {FIRST}: [+-]\d+\.\d\d mDice over {len(validated)} cases x 2 repeats \(per seed: .*\); for "
        r"these trained models: 95% CI .*; crossed .*: exploratory: two seeds cannot separate the loss from seed "
        "variability$", verdict
    )  # fmt: skip
    assert "significant" not in out
    assert lines[lines.index(verdict) + 1].startswith("Seeds needed: ")
    assert "warning: 2 seeds" in err
    # a quiet terminal: one line per step (and the resumed training's), nnU-Net's output only in the logs
    assert len((err + out).splitlines()) < 45
    assert NNUNET_BANNER not in err + out and "Epoch 0" not in err + out
    results = json.loads((work / "evaluation" / "crossval" / "results.json").read_text())
    assert results["comparisons"][0]["n_cases"] == len(validated) and results["comparisons"][0]["n_repeats"] == 2
    for seed in (0, 1):  # each validated case once per seed, hard links to nnU-Net's validation output
        assert sorted(p.name for p in (work / "crossval" / SECOND / f"seed_{seed}").iterdir()) == [
            f"{case}.nii.gz" for case in validated
        ]

    # 4. Again: nothing to do, no file changes.
    again = sweep.again
    assert "Nothing left to do" in again.stderr and "] $ " not in again.stderr
    assert again.stdout == out and sweep.after_again == sweep.before_again

    if sweep.test_set is None:
        assert configuration == "3d_fullres"  # the test set runs in 2d only (see the module's docstring)
        return
    # 5. The test set: fold all per trainer and seed (an array of 4 tasks, run here two at a time), then
    #    topkdice predict with each seed's models, one process per seed.
    assert sweep.test_set.codes == [0, 0, 0, 0]
    tested = sweep.test_set.collected
    assert tested.stderr.count("skipped (already trained)") == 4
    seed_root = data.results / "seed_1"
    assert f"$ nnUNet_results={seed_root} topkdice predict -i {data.dataset / 'imagesTs'}" in tested.stderr
    assert tested.stderr.count("topkdice predict -i") == 2
    [verdict] = [line for line in tested.stdout.splitlines() if line.startswith(f"{SECOND} vs {FIRST}: ")]
    assert "over 2 cases x 2 repeats" in verdict and verdict.endswith("exploratory: two seeds cannot separate the "
                                                                        "loss from seed variability")
    for seed in (0, 1):
        folder = work / "predictions" / "fold_all" / FIRST / f"seed_{seed}"
        assert sorted(p.name for p in folder.glob("*.nii.gz")) == ["case004.nii.gz", "case005.nii.gz"]
