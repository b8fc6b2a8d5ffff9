"""``topkdice reproduce`` end to end on CPU, as a user runs it: interrupted, resumed, then run again.

A tiny synthetic dataset in Synapse's raw layout (30 cases of 5-7 slices of 32x32) goes through the real
converter, nnU-Net's planning, training and prediction, and ``topkdice evaluate``. Two test-only trainers
(a tiny version of the demo schedule, in an ``nnUNet_extTrainer`` folder of their own) keep it to minutes;
one of them can crash after its first epoch, like a killed job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnunet_topkdice.pipeline.synthetic import generate_synapse_like

BIN = Path(sys.executable).parent
DATASET_ID = 989
FIRST, SECOND = "nnUNetTrainerPipelineTestDiceCE", "nnUNetTrainerPipelineTestTopKDice"
CRASH_VAR = "TOPKDICE_PIPELINE_TEST_CRASH_AFTER_EPOCH"

TEST_EXT_MODULE = f"""
import os

from nnunet_topkdice.trainers import nnUNetTrainerDiceCEDemo, nnUNetTrainerTopKDiceDemo


class _Tiny:
    demo_num_epochs = 3
    demo_num_iterations_per_epoch = 2
    demo_num_val_iterations_per_epoch = 1


class {FIRST}(_Tiny, nnUNetTrainerDiceCEDemo):
    pass


class {SECOND}(_Tiny, nnUNetTrainerTopKDiceDemo):
    # Records each epoch it starts; {CRASH_VAR}=E exits after epoch E, once its checkpoint is written.
    def on_epoch_start(self):
        with open(os.path.join(self.output_folder, "epochs_started.txt"), "a") as f:
            f.write(f"{{self.current_epoch}}\\n")
        super().on_epoch_start()

    def on_epoch_end(self):
        super().on_epoch_end()  # saves checkpoint_latest.pth and advances current_epoch
        if os.environ.get("{CRASH_VAR}") == str(self.current_epoch - 1):
            raise SystemExit(75)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("pipeline")
    source = generate_synapse_like(root / "source", in_plane=32, num_slices=(5, 7))
    ext = root / "ext"
    ext.mkdir()
    (ext / "topkdice_pipeline_test_trainers.py").write_text(TEST_EXT_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}  # no nnU-Net folders set
    env.update(nnUNet_extTrainer=str(ext), nnUNet_def_n_proc="1", OMP_NUM_THREADS="1")
    return {"source": source, "work": root / "work", "env": env}


def _reproduce(setup: dict, **extra_env: str) -> tuple[subprocess.CompletedProcess, float]:
    argv = [
        str(BIN / "topkdice"), "reproduce", "--dataset", "synapse", "-i", str(setup["source"]),
        "-d", str(DATASET_ID), "--trainers", FIRST, SECOND, "--device", "cpu", "-w", str(setup["work"]),
        "-np", "1",
    ]  # fmt: skip
    start = time.monotonic()
    result = subprocess.run(argv, env={**setup["env"], **extra_env}, capture_output=True, text=True, timeout=900)
    return result, time.monotonic() - start


def _run_dir(work: Path, trainer: str) -> Path:
    return work / "nnUNet_results" / f"Dataset{DATASET_ID}_Synapse" / f"{trainer}__nnUNetPlans__2d" / "fold_all"


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_interrupted_then_resumed_then_nothing_to_do(setup: dict) -> None:
    work = setup["work"]

    # 1. The second training "crashes" after its first epoch: the run fails with that exit code.
    first, _ = _reproduce(setup, **{CRASH_VAR: "0"})
    assert first.returncode == 1, first.stderr[-3000:]
    assert "command failed with exit code 75" in first.stderr
    for step in ("[1/5] Converting", "[2/5] Planning", "[3/5] Training"):
        assert step in first.stderr
    assert "$ topkdice convert synapse -i" in first.stderr
    assert "$ nnUNetv2_plan_and_preprocess -d 989 -c 2d" in first.stderr
    assert (_run_dir(work, FIRST) / "checkpoint_final.pth").is_file()
    assert (_run_dir(work, SECOND) / "checkpoint_latest.pth").is_file()
    assert not (_run_dir(work, SECOND) / "checkpoint_final.pth").exists()
    first_model = (_run_dir(work, FIRST) / "checkpoint_final.pth").stat().st_mtime

    # 2. Run again: finished steps are skipped, the interrupted training resumes with --c at epoch 1.
    second, _ = _reproduce(setup)
    assert second.returncode == 0, second.stderr[-3000:]
    for skipped in ("already converted", "already preprocessed", f"already trained: {FIRST}"):
        assert f"skipped: {skipped}" in second.stderr
    assert f"$ nnUNetv2_train {DATASET_ID} 2d all -tr {SECOND} -device cpu --c" in second.stderr
    assert (_run_dir(work, SECOND) / "epochs_started.txt").read_text().split() == ["0", "1", "2"]
    assert (_run_dir(work, FIRST) / "checkpoint_final.pth").stat().st_mtime == first_model
    assert f"$ nnUNetv2_predict -i {work / 'nnUNet_raw'}" in second.stderr
    assert "$ topkdice evaluate -r" in second.stderr
    # stdout holds the table and where the files are, nothing of nnU-Net's chatter.
    assert second.stdout.startswith("## Paper-style evaluation: Dataset989_Synapse (12 test cases)")
    for trainer in (FIRST, SECOND):
        assert f"| evaluated | {trainer} |" in second.stdout
    assert "nnUNet_n_proc_DA" not in second.stdout and "Epoch" not in second.stdout
    evaluation = work / "evaluation" / "fold_all"
    assert f"Figure:      {evaluation / 'figure.png'}" in second.stdout
    for name in ("results.json", "table.md", "table.csv", "figure.png"):
        assert (evaluation / name).is_file()
    for trainer in (FIRST, SECOND):
        assert len(list((work / "predictions" / "fold_all" / trainer).glob("*.nii.gz"))) == 12

    # 3. A third run has nothing left to do and changes no file.
    before = _snapshot(work)
    third, seconds = _reproduce(setup)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "\n$ " not in third.stderr
    assert "Nothing left to do" in third.stderr
    assert third.stdout == second.stdout
    assert _snapshot(work) == before
    assert seconds < 60  # seconds on an idle machine; generous for a loaded CI runner
