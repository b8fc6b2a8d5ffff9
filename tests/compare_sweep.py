"""``topkdice compare`` through the real command line, as a cluster user runs it: steps 1-5 of
``tests/test_pipeline_e2e.py`` (its docstring), run once per configuration and test session (the
``compare_sweep_2d`` and ``compare_sweep_3d_fullres`` fixtures of ``conftest.py``), with what each step
printed and left behind. The tests assert on that record; ``tests/test_pipeline_predict.py`` also predicts
with the 2d sweep's fold ``all`` models of seed 0 (trainings are the expensive part of both tests).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class CompareData:
    """The tiny 3D dataset (4 training cases with a 2-fold ``splits_final.json``, 2 test cases), the user's
    trainers FIRST and SECOND in their own ``nnUNet_extTrainer`` folder, and nnU-Net's folders under ``root``."""

    root: Path
    dataset: Path  # nnUNet_raw/Dataset986_PipelineTest
    results: Path  # nnUNet_results (seeded runs go to results/seed_N)
    env: dict[str, str]
    cases: list[str]  # the training cases

    def run_dir(self, configuration: str, trainer: str, seed: int, fold: str) -> Path:
        """The fold folder of one seeded training."""
        plans = f"{trainer}__nnUNetPlans__{configuration}"
        return self.results / f"seed_{seed}" / self.dataset.name / plans / f"fold_{fold}"

    def split(self) -> list[dict]:
        """``splits_final.json``: per fold, its ``train`` and ``val`` cases."""
        return json.loads((Path(self.env["nnUNet_preprocessed"]) / self.dataset.name / "splits_final.json").read_text())

    def validation(self, fold: str) -> list[str]:
        """The validation cases of ``fold``."""
        return self.split()[int(fold)]["val"]


def make_compare_data(root: Path) -> CompareData:
    """Write the dataset, its split and the user's trainers under ``root``; nothing is preprocessed."""
    raw, preprocessed, results = root / "raw", root / "preprocessed", root / "results"
    dataset = make_tiny_dataset(raw, DATASET_ID)
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (dataset / "labelsTr").iterdir())
    write_two_fold_split(preprocessed / dataset.name, cases)
    user_ext = write_user_trainers(root / "my_trainers", FIRST, SECOND)
    env = clean_environment(
        nnUNet_raw=str(raw), nnUNet_preprocessed=str(preprocessed), nnUNet_results=str(results),
        nnUNet_extTrainer=str(user_ext),
    )  # fmt: skip
    return CompareData(root, dataset, results, env, cases)


def compare_argv(configuration: str, workdir: Path, *extra: str) -> list:
    """``topkdice compare`` of FIRST and SECOND, seeds 0 and 1, on the CPU, into ``workdir``."""
    return [
        TOPKDICE, "compare", "-d", str(DATASET_ID), "-c", configuration, "--trainers", FIRST, SECOND,
        "--seeds", "0", "1", "--device", "cpu", "-np", "1", "-w", str(workdir), *extra,
    ]  # fmt: skip


def run_array_locally(script: Path, n_tasks: int, env: dict[str, str], timeout: float = 600) -> list[int]:
    """Every task of the job array, two at a time (the next starts as soon as one ends, as a cluster
    with two free slots would); their exit codes in task order."""
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    codes: dict[int, int] = {}

    def reap() -> None:
        for i, (process, started) in list(running.items()):
            if process.poll() is not None:
                codes[i] = process.returncode
                del running[i]
            elif time.monotonic() - started > timeout:
                process.kill()
                raise TimeoutError(f"array task {i} of {script} ran over {timeout} s")

    for i in range(n_tasks):
        while len(running) == 2:
            reap()
            time.sleep(0.05)
        process = subprocess.Popen(
            ["bash", str(script)],
            env={**env, "SLURM_ARRAY_TASK_ID": str(i)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        running[i] = (process, time.monotonic())
    while running:
        reap()
        time.sleep(0.05)
    return [codes[i] for i in range(n_tasks)]


@dataclass(frozen=True)
class TestSetRun:
    """Step 5: ``--test-set``'s job array (run here) and its collect call."""

    __test__ = False  # not a test class, whatever its name

    emitted: subprocess.CompletedProcess
    codes: list[int]
    collected: subprocess.CompletedProcess


@dataclass(frozen=True)
class Sweep:
    """What steps 1-5 printed and left behind (the work directory itself is ``work``)."""

    data: CompareData
    configuration: str
    folds: tuple[str, ...]  # the cross-validation folds trained
    work: Path
    crossval: list  # the compare call of steps 1, 3 and 4 (without --emit-slurm)
    script: Path
    emitted: subprocess.CompletedProcess  # step 1
    script_text: str  # the job array as step 1 wrote it
    codes: list[int]  # step 2: exit codes in task order
    interrupted_files: frozenset[str] | None  # step 2: the killed training's checkpoint files (None: none killed)
    untouched_mtimes: tuple[float, float]  # checkpoint_final.pth of FIRST, seed 0, fold 0: before, after step 3
    collected: subprocess.CompletedProcess  # step 3
    before_again: dict[str, float]  # snapshot of ``work`` after step 3
    again: subprocess.CompletedProcess  # step 4
    after_again: dict[str, float]  # snapshot of ``work`` after step 4
    test_set: TestSetRun | None  # step 5

    @property
    def interrupted(self) -> Path:
        """The fold folder of the training that step 2 kills after its first epoch (if it kills one)."""
        return self.data.run_dir(self.configuration, SECOND, 1, self.folds[-1])


def run_sweep(
    data: CompareData, configuration: str, folds: tuple[str, ...] | None, *, kill_one: bool, with_test_set: bool
) -> Sweep:
    """Steps 1-4, and 5 with ``with_test_set``, in ``data.root / f"work_{configuration}"``.

    ``folds`` are given with ``--folds``; None trains every fold of ``splits_final.json``.
    ``kill_one``: the training of SECOND, seed 1, last fold stops after its first epoch in step 2.
    Every command must exit 0 (the killed task 75); the tests assert on the rest.
    """
    work = data.root / f"work_{configuration}"
    crossval = compare_argv(configuration, work, *(["--folds", *folds] if folds else []))
    folds = folds or tuple(str(fold) for fold in range(len(data.split())))
    script = work / "sweep.sh"
    emitted = run([*crossval, "--emit-slurm", script], data.env)
    script_text = script.read_text()

    sweep_env = dict(data.env)
    killed = data.run_dir(configuration, SECOND, 1, folds[-1])
    if kill_one:
        sweep_env[CRASH_VAR] = str(killed.relative_to(data.results))
    codes = run_array_locally(script, 2 * 2 * len(folds), sweep_env)
    interrupted_files = frozenset(p.name for p in killed.glob("checkpoint_*.pth")) if kill_one else None
    untouched = data.run_dir(configuration, FIRST, 0, "0") / "checkpoint_final.pth"
    untouched_before = untouched.stat().st_mtime

    collected = run(crossval, data.env)
    untouched_mtimes = (untouched_before, untouched.stat().st_mtime)
    before_again = snapshot(work)
    again = run(crossval, data.env)
    after_again = snapshot(work)

    test_set = None
    if with_test_set:
        test_set_argv = compare_argv(configuration, work, "--test-set")
        test_set_emitted = run([*test_set_argv, "--emit-slurm", work / "test_set.sh"], data.env)
        test_set_codes = run_array_locally(work / "test_set.sh", 4, data.env)
        test_set = TestSetRun(test_set_emitted, test_set_codes, run(test_set_argv, data.env))
    return Sweep(
        data, configuration, folds, work, crossval, script, emitted, script_text, codes, interrupted_files,
        untouched_mtimes, collected, before_again, again, after_again, test_set,
    )  # fmt: skip
