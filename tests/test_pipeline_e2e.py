"""``topkdice compare`` end to end through the real command line, in 2d and in 3d_fullres.

One tiny 3D dataset (4 training and 2 test cases, a 2-fold ``splits_final.json``) and two tiny trainers
from a user's own ``nnUNet_extTrainer`` folder, two seeds. Per configuration:

1. ``--emit-slurm`` prepares the data and writes the job array of the 8 cross-validation trainings;
2. its tasks run here (``SLURM_ARRAY_TASK_ID=i bash FILE``, two at a time, as a cluster would run them),
   one of them stopping after its first epoch like a killed job;
3. the printed collect command (the same ``compare`` call) resumes that training with ``--c``, collects
   the validation predictions and ends with the verdict; the terminal shows steps, not nnU-Net's output;
4. the same call again has nothing to do and changes no file;
5. ``--test-set``: fold ``all`` per trainer and seed (a second job array), then ``imagesTs`` predicted
   with each seed's models (one ``topkdice predict`` per seed) and evaluated; in 2d only, since the
   pipeline has no step that depends on the configuration beyond the ``-c`` it passes on, which steps 1-4
   already check in 3d_fullres (and the four extra trainings would cost the suite about a minute).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from pipeline_fixtures import (
    CRASH_VAR,
    TOPKDICE,
    clean_environment,
    make_tiny_dataset,
    run,
    snapshot,
    write_two_fold_split,
    write_user_trainers,
)

DATASET_ID = 986
FIRST, SECOND = "nnUNetTrainerPipelineTestDiceCE", "nnUNetTrainerPipelineTestTopKDice"
NNUNET_BANNER = "Please cite the following paper"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("compare")
    raw, preprocessed, results = root / "raw", root / "preprocessed", root / "results"
    dataset = make_tiny_dataset(raw, DATASET_ID)
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (dataset / "labelsTr").iterdir())
    write_two_fold_split(preprocessed / dataset.name, cases)
    user_ext = write_user_trainers(root / "my_trainers", FIRST, SECOND)
    env = clean_environment(
        nnUNet_raw=str(raw), nnUNet_preprocessed=str(preprocessed), nnUNet_results=str(results),
        nnUNet_extTrainer=str(user_ext),
    )  # fmt: skip
    return {"root": root, "dataset": dataset, "results": results, "env": env, "cases": cases}


def _compare(data: dict, configuration: str, workdir: Path, *extra: str) -> list[str]:
    return [
        TOPKDICE, "compare", "-d", str(DATASET_ID), "-c", configuration, "--trainers", FIRST, SECOND,
        "--seeds", "0", "1", "--device", "cpu", "-np", "1", "-w", str(workdir), *extra,
    ]  # fmt: skip


def _run_dir(data: dict, configuration: str, trainer: str, seed: int, fold: str) -> Path:
    name = data["dataset"].name
    return data["results"] / f"seed_{seed}" / name / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"


def _run_array_locally(script: Path, n_tasks: int, env: dict[str, str]) -> list[int]:
    """Every task of the job array, two at a time; their exit codes."""
    codes: list[int] = []
    for start in range(0, n_tasks, 2):
        procs = [
            subprocess.Popen(
                ["bash", str(script)],
                env={**env, "SLURM_ARRAY_TASK_ID": str(i)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            for i in range(start, min(start + 2, n_tasks))
        ]
        codes += [p.wait(timeout=600) for p in procs]
    return codes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("configuration", "folds", "with_test_set"),
    [("2d", ["--folds", "0", "1"], True), ("3d_fullres", [], False)],
    ids=["2d", "3d_fullres"],
)
def test_compare_sweep_on_slurm_then_resume_then_test_set(
    data: dict, configuration: str, folds: list[str], with_test_set: bool
) -> None:
    work = data["root"] / f"work_{configuration}"
    crossval = _compare(data, configuration, work, *folds)

    # 1. The job array: the data is prepared here, every training is one task.
    script = work / "sweep.sh"
    emitted = run([*crossval, "--emit-slurm", script], data["env"])
    assert "Wrote" in emitted.stdout and "8 array task(s)" in emitted.stdout
    collect = emitted.stdout.splitlines()[-1].removeprefix("Then collect: ")
    assert collect.startswith("topkdice compare -d 986 -c") and "--emit-slurm" not in collect
    assert "#SBATCH --array=0-7" in script.read_text()

    # 2. The tasks, run here; the one of SECOND, seed 1, fold 1 is killed after its first epoch.
    crash_in = f"seed_1/{data['dataset'].name}/{SECOND}__nnUNetPlans__{configuration}/fold_1"
    codes = _run_array_locally(script, 8, {**data["env"], CRASH_VAR: crash_in})
    assert codes == [0, 0, 0, 0, 0, 0, 0, 75]  # task order: seed, trainer, fold
    interrupted = _run_dir(data, configuration, SECOND, 1, "1")
    assert (interrupted / "checkpoint_latest.pth").is_file() and not (interrupted / "checkpoint_final.pth").exists()
    untouched = (_run_dir(data, configuration, FIRST, 0, "0") / "checkpoint_final.pth").stat().st_mtime

    # 3. The collect command resumes the interrupted training and ends with the verdict.
    collected = run(crossval, data["env"])
    err, out = collected.stderr, collected.stdout
    assert err.count("skipped (already trained)") == 7
    assert f"topkdice train --seed 1 {DATASET_ID} {configuration} 1 -tr {SECOND} -device cpu --c" in err
    assert (interrupted / "epochs_started.txt").read_text().split() == ["0", "1"]
    assert (_run_dir(data, configuration, FIRST, 0, "0") / "checkpoint_final.pth").stat().st_mtime == untouched
    # the verdict, then how many seeds would settle it (2 seeds: exploratory, never "significant")
    lines = out.strip().splitlines()
    [verdict] = [line for line in lines if line.startswith(f"{SECOND} vs {FIRST}: ")]
    assert re.match(
        rf"{SECOND} vs {FIRST}: [+-]\d+\.\d\d mDice over 4 cases x 2 repeats \(per seed: .*\); for these trained "
        r"models: 95% CI .*; crossed .*: exploratory: two seeds cannot separate the loss from seed "
        "variability$", verdict
    )  # fmt: skip
    assert "significant" not in out
    assert lines[lines.index(verdict) + 1].startswith("Seeds needed: ")
    assert "warning: 2 seeds" in err
    # a quiet terminal: one line per step (and the resumed training's), nnU-Net's output only in the logs
    assert len((err + out).splitlines()) < 45
    assert NNUNET_BANNER not in err + out and "Epoch 0" not in err + out
    assert NNUNET_BANNER in (work / "logs" / f"train_{SECOND}_seed1_fold1.log").read_text()
    results = json.loads((work / "evaluation" / "crossval" / "results.json").read_text())
    assert results["comparisons"][0]["n_cases"] == 4 and results["comparisons"][0]["n_repeats"] == 2
    for seed in (0, 1):  # every training case once per seed, hard links to nnU-Net's validation output
        assert sorted(p.name for p in (work / "crossval" / SECOND / f"seed_{seed}").iterdir()) == [
            f"{case}.nii.gz" for case in data["cases"]
        ]

    # 4. Again: nothing to do, no file changes.
    before = snapshot(work)
    again = run(crossval, data["env"])
    assert "Nothing left to do" in again.stderr and "] $ " not in again.stderr
    assert again.stdout == out and snapshot(work) == before

    if not with_test_set:
        return
    # 5. The test set: fold all per trainer and seed (an array of 4 tasks, run here two at a time), then
    #    topkdice predict with each seed's models, one process per seed.
    test_set = _compare(data, configuration, work, "--test-set")
    run([*test_set, "--emit-slurm", work / "test_set.sh"], data["env"])
    assert _run_array_locally(work / "test_set.sh", 4, data["env"]) == [0, 0, 0, 0]
    tested = run(test_set, data["env"])
    assert tested.stderr.count("skipped (already trained)") == 4
    seed_root = data["results"] / "seed_1"
    assert f"$ nnUNet_results={seed_root} topkdice predict -i {data['dataset'] / 'imagesTs'}" in tested.stderr
    assert tested.stderr.count("topkdice predict -i") == 2
    [verdict] = [line for line in tested.stdout.splitlines() if line.startswith(f"{SECOND} vs {FIRST}: ")]
    assert "over 2 cases x 2 repeats" in verdict and verdict.endswith("exploratory: two seeds cannot separate the "
                                                                        "loss from seed variability")
    for seed in (0, 1):
        folder = work / "predictions" / "fold_all" / FIRST / f"seed_{seed}"
        assert sorted(p.name for p in folder.glob("*.nii.gz")) == ["case004.nii.gz", "case005.nii.gz"]
