"""``--cpu-jobs``: CPU trainings side by side, each giving torch its share of the cores.

The weights of trainings run side by side are compared with the same training run alone in
``tests/test_seeded_training.py``; here: the variable, the shares, the options and what the session
hands to the runner.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnunet_topkdice.cli import main
from nnunet_topkdice.cpu_threads import CPU_THREADS_VARIABLE, cpu_cores, cpu_threads, threads_per_job
from nnunet_topkdice.errors import InputError
from nnunet_topkdice.pipeline import session, state, warm
from nnunet_topkdice.pipeline.demo import demo_cpu_jobs
from nnunet_topkdice.pipeline.runner import RunReport
from nnunet_topkdice.pipeline.session import cpu_slots
from nnunet_topkdice.training.seeded import torch_device


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_names_the_variable(text: str) -> None:
    with pytest.raises(InputError, match=f"{CPU_THREADS_VARIABLE}='{text}': expected a positive number"):
        cpu_threads({CPU_THREADS_VARIABLE: text})


def test_threads_are_the_variable_or_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert cpu_threads({CPU_THREADS_VARIABLE: "3"}) == 3
    assert cpu_threads({}) == 6 and cpu_threads({CPU_THREADS_VARIABLE: ""}) == 6


def test_every_core_is_every_core_the_process_may_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # a SLURM task given 2 cores of a 64-core node: 2 threads, not nnU-Net's 64
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {10, 11}, raising=False)
    assert cpu_cores() == 2 and cpu_threads({}) == 2
    monkeypatch.delattr("os.sched_getaffinity", raising=False)  # no affinity (macOS, Windows): every core
    assert cpu_cores() == 64


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_process_pinned_to_one_core_gives_one_thread() -> None:
    # the real affinity, as taskset or a SLURM task sets it, seen by a fresh interpreter (torch_device hands
    # cpu_threads() to torch: test_torch_takes_the_threads_the_variable_gives)
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from nnunet_topkdice.cpu_threads import cpu_threads; print(cpu_threads({}))"
    )
    env = {k: v for k, v in os.environ.items() if k != CPU_THREADS_VARIABLE}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1"]


@pytest.mark.parametrize(
    ("jobs", "cores", "expected"), [(1, 8, 8), (2, 2, 1), (3, 8, 2), (4, 2, 1)], ids=["one", "half", "floor", "more"]
)
def test_each_job_gets_its_share_of_the_cores(jobs: int, cores: int, expected: int) -> None:
    assert threads_per_job(jobs, cores) == expected


def test_slots_give_each_job_its_share_and_one_job_every_core() -> None:
    assert cpu_slots(1, cores=8) == []  # no variable: torch takes every core, as in nnU-Net
    assert cpu_slots(2, cores=8) == [{CPU_THREADS_VARIABLE: "4"}, {CPU_THREADS_VARIABLE: "4"}]
    assert cpu_slots(3, cores=2) == [{CPU_THREADS_VARIABLE: "1"}] * 3
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        threads_per_job(0, 4)


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 2), (16, 2)])
def test_the_demo_runs_two_jobs_where_there_are_two_cores(cores: int, expected: int) -> None:
    assert demo_cpu_jobs(cores) == expected


def test_torch_takes_the_threads_the_variable_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(CPU_THREADS_VARIABLE, "1")
        assert torch_device("cpu") == torch.device("cpu") and torch.get_num_threads() == 1
        monkeypatch.setenv(CPU_THREADS_VARIABLE, "3")
        torch_device("cpu")
        assert torch.get_num_threads() == 3
        monkeypatch.setenv(CPU_THREADS_VARIABLE, "none")
        with pytest.raises(InputError, match=CPU_THREADS_VARIABLE):
            torch_device("cpu")
    finally:
        torch.set_num_threads(before)


class _Stop(Exception):
    pass


def _slots_of_the_comparison(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """The slots the session hands to the runner with the comparison's steps (nothing runs)."""
    monkeypatch.setattr(warm, "prestart", lambda: None)
    monkeypatch.setattr(session, "check_before_running", lambda *args, **kwargs: None)
    seen: list[list[dict[str, str]]] = []

    def record(steps, env, *, slots=(), **kwargs):
        if not any(step.parallel == "train" for step in steps):  # the demo's generation and conversion
            return RunReport()
        seen.append(list(slots))
        raise _Stop

    monkeypatch.setattr(session, "run_steps", record)
    with pytest.raises(_Stop):
        main(argv)
    return seen[0]


@pytest.mark.parametrize(
    ("extra", "jobs"), [([], 1), (["--cpu-jobs", "2"], 2), (["--cpu-jobs", "3"], 3)], ids=["default", "two", "three"]
)
def test_compare_runs_the_cpu_jobs_asked_for(
    a_dataset: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], jobs: int
) -> None:
    argv = ["compare", "-d", "4", "-c", "2d", "-tr", "nnUNetTrainer", "--device", "cpu", "-w", str(a_dataset), *extra]
    assert _slots_of_the_comparison(argv, monkeypatch) == cpu_slots(jobs)


def test_the_demo_runs_its_cpu_jobs_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in state.NNUNET_FOLDER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    argv = ["demo", "--device", "cpu", "-w", str(tmp_path)]
    assert _slots_of_the_comparison(argv, monkeypatch) == cpu_slots(demo_cpu_jobs())
    assert _slots_of_the_comparison([*argv, "--cpu-jobs", "1"], monkeypatch) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "cuda", "--cpu-jobs", "2"], "--cpu-jobs needs --device cpu, got --device cuda"),
        (["--device", "cpu", "--cpu-jobs", "2", "--emit-slurm", "s.sh"], "a SLURM script runs one per array task"),
    ],
    ids=["cuda", "slurm"],
)
def test_cpu_jobs_are_refused_where_they_cannot_apply(
    a_dataset: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["compare", "-d", "4", "-c", "2d", "-tr", "nnUNetTrainer", "-w", str(a_dataset), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cpu_jobs_must_be_positive(a_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["compare", "-d", "4", "-c", "2d", "-tr", "nnUNetTrainer", "--cpu-jobs", "0"])
    assert "--cpu-jobs" in capsys.readouterr().err
