"""The pipeline where users run it: a SLURM script written on a login node without a GPU, a bare shell
without nnU-Net's variables (the dataset in ``./nnUNet_raw``), and nnU-Net's own flag spellings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pipeline_fixtures import TOPKDICE, clean_environment, make_tiny_dataset, write_user_trainers

from nnunet_topkdice.cli import build_parser, main
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.ext import trainer_dir
from nnunet_topkdice.pipeline import cli as pipeline_cli
from nnunet_topkdice.pipeline import state
from nnunet_topkdice.pipeline.slurm import (
    CPU_VALIDATION_WORKERS,
    NNUNET_DEFAULT_N_PROC_DA,
    read_slurm_header,
    slurm_resources,
    task_summary,
)

DATASET = "Dataset004_Hippo"


@pytest.fixture
def bare_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shell in ``tmp_path`` without nnU-Net's variables, whose machine has no GPU (and is never asked)."""
    for var in (*state.NNUNET_FOLDER_VARIABLES, "nnUNet_n_proc_DA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)

    def no_questions() -> str:
        raise AssertionError("the device was decided from this machine")

    monkeypatch.setattr(pipeline_cli, "_default_device", no_questions)
    return tmp_path


def _prepared_dataset(raw_root: Path, preprocessed_root: Path) -> Path:
    """A raw dataset (2 training cases) that is already preprocessed for 2d, with a 2-fold split."""
    raw = raw_root / DATASET
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "a": 1}, "numTraining": 2, "file_ending": ".nii.gz", "channel_names": {"0": "x"}}
    ))  # fmt: skip
    data = preprocessed_root / DATASET / "nnUNetPlans_2d"
    data.mkdir(parents=True)
    (preprocessed_root / DATASET / "nnUNetPlans.json").write_text(
        json.dumps({"configurations": {"2d": {"data_identifier": "nnUNetPlans_2d"}}})
    )
    for case in ("c0", "c1"):
        (data / f"{case}.pkl").touch()
    (preprocessed_root / DATASET / "splits_final.json").write_text(
        json.dumps([{"train": ["c1"], "val": ["c0"]}, {"train": ["c0"], "val": ["c1"]}])
    )
    return raw


def _emit(
    bare_shell: Path, *extra: str, trainers: tuple[str, ...] = ("nnUNetTrainer", "nnUNetTrainerTopKDice")
) -> tuple[int, str]:
    work = bare_shell / "w"
    _prepared_dataset(bare_shell / "nnUNet_raw", work / "nnUNet_preprocessed")
    script = bare_shell / "sweep.sh"
    code = main(["compare", "-d", "4", "-c", "2d", "-tr", *trainers, "-w", str(work),
                 "--emit-slurm", str(script), *extra])  # fmt: skip
    return code, script.read_text() if script.is_file() else ""


# --- SLURM ---------------------------------------------------------------------------------------------


def test_slurm_script_trains_on_the_gpu_by_default(bare_shell: Path, capsys: pytest.CaptureFixture) -> None:
    code, text = _emit(bare_shell)
    assert code == 0
    assert "#SBATCH --array=0-3" in text and "#SBATCH --gres=gpu:1" in text
    assert f"#SBATCH --cpus-per-task={NNUNET_DEFAULT_N_PROC_DA + 1}" in text
    assert f"export nnUNet_n_proc_DA={NNUNET_DEFAULT_N_PROC_DA} " in text and "nnUNet_n_proc_DA=0" not in text
    assert text.count(" -device cuda) ;;") == 4 and "-device cpu" not in text and "nnUNet_def_n_proc" not in text
    assert "Each task trains with -device cuda (--gres=gpu:1, --cpus-per-task=13, nnUNet_n_proc_DA=12)" in (
        capsys.readouterr().out
    )


def test_slurm_script_follows_num_gpus_and_workers(bare_shell: Path) -> None:
    code, text = _emit(bare_shell, "--num-gpus", "2", "--n-proc-da", "5")
    assert code == 0
    assert "#SBATCH --gres=gpu:2" in text and "#SBATCH --cpus-per-task=12" in text  # 2 x (5 workers + 1)
    assert "export nnUNet_n_proc_DA=5 " in text and text.count(" -device cuda -num_gpus 2) ;;") == 4


def test_slurm_script_on_the_cpu(bare_shell: Path) -> None:
    code, text = _emit(bare_shell, "-device", "cpu")
    assert code == 0
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert not any("--gres" in line or "--cpus-per-task" in line for line in directives)
    assert "# Training on the CPU uses every core the task gets: ask for them with #SBATCH --cpus-per-task." in text
    assert text.count(" export nnUNet_n_proc_DA=0;") == 4 and text.count(" -device cpu) ;;") == 4
    assert "\n".join(CPU_VALIDATION_WORKERS) in text


@pytest.mark.skipif(shutil.which("taskset") is None, reason="no taskset (util-linux)")
@pytest.mark.parametrize(
    ("directive", "shown", "note"),
    [("-G 2", "--gpus=2", True), ("--gpus=a100:1", "--gpus=a100:1", False),
     ("--gpus-per-task=2", "--gpus-per-task=2", True), ("--gpus-per-node 4", "--gpus-per-node=4", False)],
    ids=["G", "gpus-typed", "per-task", "per-node"],
)  # fmt: skip
def test_slurm_header_other_gpu_options_replace_the_scripts_gres(
    bare_shell: Path, capsys: pytest.CaptureFixture, directive: str, shown: str, note: bool
) -> None:
    """sbatch's other ways of asking for GPUs: the script's --gres=gpu:1 would ask for GPUs a second time."""
    header = bare_shell / "gpus.sh"
    header.write_text(f"#SBATCH {directive}\n")
    code, text = _emit(bare_shell, "--slurm-header", str(header))
    assert code == 0
    assert "#SBATCH --gres" not in text and f"#SBATCH {directive}" in text
    out = capsys.readouterr().out
    assert f"Each task trains with -device cuda -num_gpus 1 ({shown} from --slurm-header, --cpus-per-task=13, " in out
    assert ("GPU(s) per task, but each training uses 1" in out) == note


@pytest.mark.parametrize(
    ("n_cores", "variables", "expected"),
    [(1, {}, "1"), (1, {"nnUNet_def_n_proc": "3"}, "3"), (2, {"OMP_NUM_THREADS": "1"}, "2")],
    ids=["one-core", "the-users-value", "not-openmps"],
)
def test_a_cpu_task_validates_with_its_own_cores(n_cores: int, variables: dict[str, str], expected: str) -> None:
    """nnU-Net's validation workers in a CPU task: its cores (here: taskset, as SLURM's affinity), unless set."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < n_cores:
        pytest.skip(f"needs {n_cores} cores")
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_def_n_proc", "OMP_NUM_THREADS")}
    script = "\n".join(["set -euo pipefail", *CPU_VALIDATION_WORKERS, 'echo "$nnUNet_def_n_proc"'])
    cores = ",".join(map(str, allowed[:n_cores]))
    proc = subprocess.run(["taskset", "-c", cores, "bash", "-c", script], env={**env, **variables},
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert proc.stdout.strip() == expected


def test_slurm_header_lines_are_kept_and_win(bare_shell: Path) -> None:
    header = bare_shell / "cluster.sh"
    header.write_text("#!/bin/bash\n#SBATCH --partition=gpu\n#SBATCH -c 8\n#SBATCH --time=1-00:00:00\n"
                      "module load cuda\n\n")  # fmt: skip
    code, text = _emit(bare_shell, "--slurm-header", str(header))
    assert code == 0
    lines = text.splitlines()
    assert lines.count("#!/bin/bash") == 1 and "#SBATCH --partition=gpu" in lines and "#SBATCH -c 8" in lines
    assert not any(line.startswith("#SBATCH --cpus-per-task") for line in lines)  # the user's -c 8 instead
    assert "export nnUNet_n_proc_DA=7  # data-augmentation workers per GPU" in lines  # 8 cores: 7 workers + 1
    # every directive before the first command (sbatch stops reading them there), module load before the tasks
    first_command = lines.index("module load cuda")
    assert max(i for i, line in enumerate(lines) if line.startswith("#SBATCH")) < first_command
    assert first_command < lines.index("set -euo pipefail")


@pytest.mark.parametrize(
    "spelling",
    ["-c4", "-c 4", "--cpus-per-task 4", "--cpus-per-task=4", "--cpus-per-task=4  # four cores"],
    ids=["short-glued", "short-spaced", "long-spaced", "long-equals", "trailing-comment"],
)
def test_slurm_header_cores_set_the_workers_in_every_spelling(
    bare_shell: Path, capsys: pytest.CaptureFixture, spelling: str
) -> None:
    """Every spelling sbatch accepts for 4 cores: 3 workers + 1 main process, and the summary says 4 cores."""
    header = bare_shell / "cores.sh"
    header.write_text(f"#SBATCH {spelling}\n")
    code, text = _emit(bare_shell, "--slurm-header", str(header))
    assert code == 0
    lines = text.splitlines()
    cores = [line for line in lines if line.startswith(("#SBATCH -c", "#SBATCH --cpus-per-task"))]
    assert cores == [f"#SBATCH {spelling}"]  # the header's line instead of the script's own
    assert "export nnUNet_n_proc_DA=3  # data-augmentation workers per GPU" in lines
    assert ("Each task trains with -device cuda (--gres=gpu:1, --cpus-per-task=4 from --slurm-header, "
            "nnUNet_n_proc_DA=3); change it with") in capsys.readouterr().out  # fmt: skip


def test_slurm_header_cores_last_one_wins_and_must_be_a_number(tmp_path: Path) -> None:
    # sbatch keeps the last value of an option given twice
    assert slurm_resources("cuda", 1, header=["#SBATCH -c 8", "#SBATCH -c4"], environ={}).n_proc_da == 3
    header = tmp_path / "h.sh"
    header.write_text("#SBATCH -c four\n")
    with pytest.raises(InputError, match=r"h.sh: '#SBATCH -c four': --cpus-per-task needs a whole number of "
                                         r"cores, got 'four'"):  # fmt: skip
        read_slurm_header(header)
    with pytest.raises(InputError, match="--cpus-per-task needs a whole number of cores, got None"):
        slurm_resources("cpu", 1, header=["#SBATCH --cpus-per-task"], environ={})


def test_slurm_header_gres_is_what_the_summary_says(bare_shell: Path, capsys: pytest.CaptureFixture) -> None:
    """A header's --gres replaces the script's line and is named in the summary; nnU-Net's -num_gpus stays."""
    header = bare_shell / "gpus.sh"
    header.write_text("#SBATCH --gres=gpu:a100:1\n")
    code, text = _emit(bare_shell, "--slurm-header", str(header))
    assert code == 0
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert [line for line in directives if line.startswith("#SBATCH --gres")] == ["#SBATCH --gres=gpu:a100:1"]
    assert capsys.readouterr().out.splitlines()[1] == (
        "Each task trains with -device cuda -num_gpus 1 (--gres=gpu:a100:1 from --slurm-header, "
        "--cpus-per-task=13, nnUNet_n_proc_DA=12); change it with --device, --num-gpus, --n-proc-da or "
        "--slurm-header."
    )


def test_slurm_header_with_more_gpus_than_num_gpus_says_so(bare_shell: Path, capsys: pytest.CaptureFixture) -> None:
    header = bare_shell / "gpus.sh"
    header.write_text("#SBATCH --gres=gpu:2\n")
    code, text = _emit(bare_shell, "--slurm-header", str(header))
    assert code == 0
    assert "#SBATCH --gres=gpu:2" in text and "#SBATCH --gres=gpu:1" not in text
    # nothing follows the header's GPUs: one training process, 12 workers, 13 cores
    assert text.count(" -device cuda) ;;") == 4 and "-num_gpus" not in text
    assert "#SBATCH --cpus-per-task=13" in text and "export nnUNet_n_proc_DA=12 " in text
    out = capsys.readouterr().out
    assert "Each task trains with -device cuda -num_gpus 1 (--gres=gpu:2 from --slurm-header, " in out
    assert ("--slurm-header asks for 2 GPU(s) per task, but each training uses 1 (nnU-Net's -num_gpus comes "
            "from --num-gpus, not from --gres).") in out  # fmt: skip


@pytest.mark.parametrize(
    ("gres", "num_gpus", "allocated"),
    [
        ("gpu:2", 2, None),
        ("gpu:a100:2", 1, 2),
        ("gpu", 2, 1),
        ("gpu:a100", 1, None),
        ("gpu:1,shard:4", 1, None),
        ("none", 1, 0),
        ("gpu:a100:x", 1, None),
    ],
    ids=["count", "type-and-count", "no-count", "type-no-count", "other-resource", "none", "unreadable"],
)
def test_task_summary_compares_the_headers_gpus_with_num_gpus(gres: str, num_gpus: int, allocated: int | None) -> None:
    resources = slurm_resources("cuda", num_gpus, header=[f"#SBATCH --gres={gres}"], environ={})
    summary = task_summary("cuda", resources)
    assert summary.startswith(f"Each task trains with -device cuda -num_gpus {num_gpus} (--gres={gres} from "
                              f"--slurm-header, --cpus-per-task={num_gpus * 13}, nnUNet_n_proc_DA=12)")  # fmt: skip
    note = f"--slurm-header asks for {allocated} GPU(s) per task, but each training uses {num_gpus} "
    assert (note in summary) == (allocated is not None)


def test_task_summary_on_the_cpu_names_only_the_headers_lines() -> None:
    assert task_summary("cpu", slurm_resources("cpu", 1, environ={})) == (
        "Each task trains with -device cpu; change it with --device, --num-gpus, --n-proc-da or --slurm-header."
    )
    header = ["#SBATCH --cpus-per-task 6", "#SBATCH --gres=gpu:1"]
    assert task_summary("cpu", slurm_resources("cpu", 1, header=header, environ={})).startswith(
        "Each task trains with -device cpu (--gres=gpu:1 from --slurm-header, --cpus-per-task=6 from --slurm-header);"
    )


@pytest.mark.parametrize(
    ("n_proc_da", "environ", "oversubscribed"),
    [(None, {}, False), (12, {}, True), (3, {}, False), (None, {"nnUNet_n_proc_DA": "8"}, True)],
    ids=["workers-follow-header", "n-proc-da-above", "n-proc-da-fits", "env-above"],
)
def test_task_summary_says_when_the_workers_outnumber_the_headers_cores(
    n_proc_da: int | None, environ: dict[str, str], oversubscribed: bool
) -> None:
    """A header's -c4 with --n-proc-da 12 (or nnUNet_n_proc_DA=8) starts 13 (9) processes on 4 cores."""
    resources = slurm_resources("cuda", 1, n_proc_da=n_proc_da, header=["#SBATCH -c4"], environ=environ)
    summary = task_summary("cuda", resources)
    processes = resources.n_proc_da + 1
    note = f"{processes} processes per task (nnUNet_n_proc_DA={resources.n_proc_da} workers and one main process"
    assert (note in summary) == oversubscribed
    assert ("share the header's 4 cores." in summary) == oversubscribed


def test_slurm_script_exports_the_users_trainer_folder_absolute(
    bare_shell: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`export nnUNet_extTrainer=mytr` (relative): the script and the by-hand line name /.../mytr, which a
    task submitted from another folder still finds, as they already do nnU-Net's folders."""
    mine = write_user_trainers(bare_shell / "mytr", "nnUNetTrainerEdgeMine", "nnUNetTrainerEdgeOther")
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join(["mytr", "./mytr/", "nested/../mytr"]))
    code, text = _emit(bare_shell, trainers=("nnUNetTrainer", "nnUNetTrainerEdgeMine"))
    assert code == 0
    expected = os.pathsep.join([str(mine.resolve()), str(trainer_dir())])  # the same folder once, then ours
    assert f"export nnUNet_extTrainer={expected}" in text.splitlines()
    assert _exports(capsys.readouterr().err)["nnUNet_extTrainer"] == expected


def test_slurm_header_refuses_array_and_slurm_only(tmp_path: Path) -> None:
    header = tmp_path / "h.sh"
    header.write_text("#SBATCH --array=0-9\n")
    with pytest.raises(InputError, match=r"h.sh: '#SBATCH --array=0-9': the script sets --array itself"):
        read_slurm_header(header)
    with pytest.raises(InputError, match="--slurm-header .*missing.sh: cannot read it"):
        read_slurm_header(tmp_path / "missing.sh")
    with pytest.raises(InputError, match="fewer than the 2 training process"):
        slurm_resources("cuda", 2, header=["#SBATCH --cpus-per-task=1"], environ={})
    args = build_parser().parse_args(["compare", "-d", "4", "-c", "2d", "-tr", "A", "--slurm-header", str(header)])
    with pytest.raises(InputError, match="--slurm-header is for --emit-slurm FILE"):
        pipeline_cli._invocation("compare", args, "cuda")


def test_slurm_resources_take_the_users_workers() -> None:
    assert slurm_resources("cuda", 1, environ={"nnUNet_n_proc_DA": "3"}).cpus_per_task == 4
    assert slurm_resources("cuda", 1, n_proc_da=0, environ={"nnUNet_n_proc_DA": "3"}).cpus_per_task == 1
    cpu = slurm_resources("cpu", 1, n_proc_da=4, environ={})
    assert (cpu.gpus_per_task, cpu.n_proc_da, cpu.cpus_per_task) == (0, None, None)


def test_slurm_task_runs_here_with_the_cpu(bare_shell: Path) -> None:
    """A task of the emitted script runs by hand as on a node: a finished training exits 0 at once."""
    code, text = _emit(bare_shell, "--device", "cpu", "--seeds", "3")
    assert code == 0
    run_dir = Path(re.search(r"run_dir='?([^';]+)'?;", text).group(1))
    (run_dir / "validation").mkdir(parents=True)
    (run_dir / "checkpoint_final.pth").touch()
    (run_dir / "validation" / "summary.json").touch()
    script = bare_shell / "sweep.sh"
    done = subprocess.run(["bash", str(script)], env={**clean_environment(), "SLURM_ARRAY_TASK_ID": "0"},
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == f"already trained: {run_dir}"
    beyond = subprocess.run(["bash", str(script)], env={**clean_environment(), "SLURM_ARRAY_TASK_ID": "9"},
                            capture_output=True, text=True)  # fmt: skip
    assert beyond.returncode == 2 and "no task 9 in this array (0-3)" in beyond.stderr


# --- a bare shell ----------------------------------------------------------------------------------------


def _exports(stderr: str) -> dict[str, str]:
    line = next(line for line in stderr.splitlines() if line.startswith("To run a command by hand, first: export"))
    return dict(part.split("=", 1) for part in line.removeprefix("To run a command by hand, first: export ").split())


def test_compare_uses_the_dataset_where_it_was_found(bare_shell: Path, capsys: pytest.CaptureFixture) -> None:
    work = bare_shell / "w"
    raw = _prepared_dataset(bare_shell / "nnUNet_raw", work / "nnUNet_preprocessed")
    assert main(["compare", "-d", "4", "-c", "2d", "-tr", "A", "-w", str(work), "-device", "cpu", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    exports = _exports(err)
    assert exports["nnUNet_raw"] == str(raw.parent.resolve())
    assert exports["nnUNet_preprocessed"] == str(work / "nnUNet_preprocessed")
    assert f"nnUNet_raw not set: using {raw.parent.resolve()} (where the dataset is)" in err
    assert f"validate, from {raw.resolve() / 'labelsTr'}" in out  # the evaluation reads the labels there too
    assert f"-r {(work / 'crossval' / 'reference').resolve()}" in out


def test_compare_finds_the_dataset_in_the_workdir(bare_shell: Path, capsys: pytest.CaptureFixture) -> None:
    work = bare_shell / "w"
    raw = _prepared_dataset(work / "nnUNet_raw", work / "nnUNet_preprocessed")
    assert main(["compare", "-d", DATASET, "-c", "2d", "-tr", "A", "-w", str(work), "--dry-run", "-device", "cpu"]) == 0
    assert _exports(capsys.readouterr().err)["nnUNet_raw"] == str(raw.parent)


def test_compare_says_where_to_put_the_dataset(bare_shell: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", "-d", "4", "-c", "2d", "-tr", "A", "--dry-run", "-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"no such dataset with a dataset.json in {bare_shell / 'nnUNet_raw'}" in err
    assert f"nnUNet_raw is not set: put the dataset in {bare_shell / 'nnUNet_raw'}/Dataset004_NAME" in err


def test_reproduce_uses_a_dataset_converted_into_the_current_folder(
    bare_shell: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = bare_shell / "nnUNet_raw" / "Dataset202_ACDC"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"numTraining": 2, "file_ending": ".nii.gz"}))
    argv = ["reproduce", "--dataset", "acdc", "-tr", "nnUNetTrainer", "-f", "0", "-w", str(bare_shell / "w"),
            "-device", "cpu", "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert _exports(err)["nnUNet_raw"] == str(bare_shell / "nnUNet_raw")
    assert "topkdice convert" not in out and f"-i {raw / 'imagesTs'}" in out


def test_demo_exports_the_folder_it_generates_into(bare_shell: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "-w", "d", "--dry-run", "-device", "cpu"]) == 0
    out, err = capsys.readouterr()
    exports = _exports(err)
    assert exports["nnUNet_raw"] == str(bare_shell / "d" / "nnUNet_raw")
    assert f"-o {bare_shell / 'd' / 'nnUNet_raw'} -d 990" in out  # converted into the folder that is exported
    assert f"nnUNet_raw not set: using {bare_shell / 'd' / 'nnUNet_raw'} (Dataset990_Synapse goes there)" in err


# --- nnU-Net's spellings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nnunet", "ours"),
    [
        (["-tr", "A", "B", "-f", "0", "1", "-device", "cpu"],
         ["--trainers", "A", "B", "--folds", "0", "1", "--device", "cpu"]),
    ],
    ids=["compare"],
)
def test_compare_accepts_nnunets_flags_and_the_long_ones(nnunet: list[str], ours: list[str]) -> None:
    parse = build_parser().parse_args
    a = parse(["compare", "-d", "4", "-c", "2d", *nnunet])
    b = parse(["compare", "-d", "4", "-c", "2d", *ours])
    assert (a.trainers, a.folds, a.device) == (b.trainers, b.folds, b.device) == (["A", "B"], ["0", "1"], "cpu")


def test_reproduce_accepts_nnunets_flags_and_the_long_ones() -> None:
    parse = build_parser().parse_args
    a = parse(["reproduce", "--dataset", "acdc", "-tr", "A", "-f", "all", "-device", "mps"])
    b = parse(["reproduce", "--dataset", "acdc", "--trainers", "A", "--fold", "all", "--device", "mps"])
    assert (a.trainers, a.fold, a.device) == (b.trainers, b.fold, b.device) == (["A"], "all", "mps")


# --- end to end ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compare_end_to_end_from_a_bare_shell(tmp_path: Path) -> None:
    """None of nnU-Net's folder variables set, the dataset in ./nnUNet_raw: preprocessing, a seeded training
    of a tiny trainer (a user's, from nnUNet_extTrainer: a few iterations, where nnU-Net's 1-epoch trainer
    runs 250), prediction of imagesTs and the evaluation all find it."""
    make_tiny_dataset(tmp_path / "nnUNet_raw", 985, n_train=2, n_test=1)
    trainers = write_user_trainers(tmp_path / "my_trainers", "nnUNetTrainerBareShellA", "nnUNetTrainerBareShellB")
    env = {k: v for k, v in clean_environment().items() if not k.startswith("nnUNet_")}  # not one of nnU-Net's
    env["nnUNet_extTrainer"] = str(trainers)  # where the trainer is, not where the data is
    argv = [TOPKDICE, "compare", "-d", "985", "-c", "2d", "-tr", "nnUNetTrainerBareShellA", "--test-set",
            "-device", "cpu", "-np", "1", "-w", "work"]  # fmt: skip
    proc = subprocess.run([str(a) for a in argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"nnUNet_raw not set: using {tmp_path / 'nnUNet_raw'}" in proc.stderr
    results = json.loads((tmp_path / "work" / "evaluation" / "fold_all" / "results.json").read_text())
    assert results["cases"] == ["case002"]
    assert results["reference_dir"] == str(tmp_path / "nnUNet_raw" / "Dataset985_PipelineTest" / "labelsTs")
    assert (tmp_path / "work" / "nnUNet_preprocessed" / "Dataset985_PipelineTest" / "nnUNetPlans.json").is_file()
    assert not (tmp_path / "work" / "nnUNet_raw").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [("{'file_ending': '.nii.gz'}", "cannot read it as JSON"), ('{"labels": {}}', "not an nnU-Net dataset.json")],
    ids=["not-json", "no-file-ending"],
)
def test_a_broken_dataset_json_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    raw = tmp_path / "nnUNet_raw" / "Dataset004_Hippo"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(content)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    argv = ["compare", "-d", "4", "-c", "2d", "-tr", "A", "--device", "cpu", "-w", str(tmp_path / "w"), "--dry-run"]
    assert main(argv) == 2
    assert f"{raw / 'dataset.json'}: {message}" in capsys.readouterr().err
